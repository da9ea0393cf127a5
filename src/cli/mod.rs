//! Argument definitions and dispatch; each subcommand lives in its own file.

mod bench;
mod engine;
mod eval;
mod fit;
mod models;
mod protocol;
mod run;
mod segment;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use causeseg::model::{backbone, bundled, Model};
use causeseg::pipeline::refine::Refine;
use causeseg::Segmenter;

/// Unsupervised semantic segmentation (CAUSE) for robots: tract on any CPU,
/// ONNX Runtime / TensorRT on GPUs.
#[derive(Debug, Parser)]
#[command(name = "causeseg", version, about)]
pub struct Cli {
    /// Backbone cache directory [default: $CAUSESEG_CACHE or ~/.cache/causeseg].
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Debug logging (or set RUST_LOG).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch or import backbones.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Learn concepts from unlabelled images and write a model directory.
    Fit(fit::FitArgs),
    /// Segment image files into label maps and visualisations.
    Segment(segment::SegmentArgs),
    /// Score a model against labelled images (Hungarian-matched mIoU).
    Eval(eval::EvalArgs),
    /// Leave-one-drive-out quality protocol: fit on all drives but one,
    /// measure on that one, for every drive, method and seed.
    Protocol(protocol::ProtocolArgs),
    /// Measure per-stage latency and peak memory.
    Bench(bench::BenchArgs),
    /// Inference engines: build the TensorRT engine ahead of time, or show
    /// what this machine has (ONNX Runtime, GPUs, TensorRT, caches).
    #[command(subcommand)]
    Engine(engine::EngineCommand),
    /// Stream frames from a camera, GStreamer pipeline or image files
    /// through the model, in real time.
    Run(run::RunArgs),
    /// Make an int8 model from calibration images (QDQ graph for TensorRT
    /// and ONNX Runtime), with a report of its accuracy against float.
    Calibrate(causeseg::calibrate::command::CalibrateArgs),
}

/// Options shared by every command that runs a model.
#[derive(Debug, clap::Args)]
struct ModelArgs {
    /// Model directory [default: the bundled camvid-cause model, unpacked into the cache].
    #[arg(long, env = "CAUSESEG_MODEL")]
    model: Option<PathBuf>,
    #[command(flatten)]
    engine: engine::EngineArgs,
    /// How concept scores become labels: `guided` snaps boundaries to the
    /// image's edges (a guided filter at output resolution), `crf` runs
    /// CAUSE's dense CRF (seconds per frame), `none` is plain bilinear
    /// upsampling.
    #[arg(long, value_enum, default_value_t = Refine::Guided)]
    refine: Refine,
    /// Model input size WIDTHxHEIGHT, multiples of the patch size (a TR
    /// head's positional embedding is interpolated) [default: the model's].
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,
}

/// `--model DIR`, or the bundled default model unpacked into `cache`.
fn model_dir(model: Option<&Path>, cache: &Path) -> anyhow::Result<PathBuf> {
    Ok(match model {
        Some(dir) => dir.to_path_buf(),
        None => bundled::default_model_dir(cache)?,
    })
}

impl ModelArgs {
    fn load(&self, cache_dir: &Path) -> anyhow::Result<Segmenter> {
        let config = self.engine.config(cache_dir)?;
        let model = load_model(self.model.as_deref(), self.size, cache_dir)?;
        let dir = model.dir.clone();
        let mut segmenter = Segmenter::new(model, &config, cache_dir)
            .with_context(|| format!("loading the model {}", dir.display()))?;
        segmenter.set_refine(self.refine);
        Ok(segmenter)
    }
}

/// The model at `model` (default: the bundled one), at input `size` if given.
fn load_model(model: Option<&Path>, size: Option<(u32, u32)>, cache_dir: &Path) -> anyhow::Result<Model> {
    let dir = model_dir(model, cache_dir)?;
    let mut model = Model::load(&dir)?;
    if let Some((width, height)) = size {
        model.set_input_size(width, height)?;
    }
    let input = &model.manifest.input;
    log::info!("model {} ({} concepts, input {}x{}) from {}", model.manifest.name, model.num_concepts(), input.width, input.height, dir.display());
    Ok(model)
}

/// Parses "WxH" (e.g. "448x336").
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(|| format!("'{text}' is not WIDTHxHEIGHT, e.g. 448x336"))?;
    let parse = |s: &str| s.trim().parse::<u32>().map_err(|_| format!("'{text}' is not WIDTHxHEIGHT, e.g. 448x336"));
    let size = (parse(w)?, parse(h)?);
    if size.0 == 0 || size.1 == 0 {
        return Err(format!("'{text}': width and height must be positive"));
    }
    Ok(size)
}

/// Runs the parsed command.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let cache = backbone::cache_dir(cli.cache_dir.as_deref());
    match cli.command {
        Command::Models(command) => models::run(command, &cache),
        Command::Fit(args) => fit::run(args, &cache),
        Command::Segment(args) => segment::run(args, &cache),
        Command::Eval(args) => eval::run(args, &cache),
        Command::Protocol(args) => protocol::run(args, &cache),
        Command::Bench(args) => bench::run(args, &cache),
        Command::Engine(command) => engine::run(command, &cache),
        Command::Run(args) => run::run(args, &cache),
        Command::Calibrate(args) => causeseg::calibrate::command::run(args, &cache),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("448x336"), Ok((448, 336)));
        assert!(parse_size("448").unwrap_err().contains("WIDTHxHEIGHT"));
        assert!(parse_size("0x5").is_err());
    }
}
