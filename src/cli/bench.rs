//! `causeseg bench`: per-stage latency (median, p99) and peak RSS of the
//! single-frame pipeline, for one or more engines side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use causeseg::engine::tract::{OpTime, TractEngine};
use causeseg::engine::{EngineChoice, EngineSpec};
use causeseg::model::manifest::InputSpec;
use causeseg::model::{backbone, fused};
use causeseg::pipeline::preprocess::Preprocessor;
use causeseg::pipeline::refine::Refine;
use causeseg::source::{FrameSource, ImageFiles};
use causeseg::timing::{ms_since, peak_rss_bytes, summarize, StageTimes};
use causeseg::Segmenter;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Frames to time per engine (after warm-up).
    #[arg(long, default_value_t = 50)]
    frames: usize,
    /// Untimed warm-up frames.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Model input size WIDTHxHEIGHT [default: the model's].
    #[arg(long, value_parser = super::parse_size)]
    size: Option<(u32, u32)>,
    /// Images to cycle through [default: the bundled samples].
    #[arg(long)]
    images: Option<PathBuf>,
    /// Model directory [default: the bundled camvid-cause model].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Engines to compare, comma-separated, e.g. tract,ort-cpu (all but
    /// tract need --features ort).
    #[arg(long, value_enum, value_delimiter = ',', alias = "backend", default_value = "auto")]
    engine: Vec<EngineChoice>,
    #[command(flatten)]
    setup: super::engine::EngineSetupArgs,
    /// Refinement timed in the postprocess stage.
    #[arg(long, value_enum, default_value_t = Refine::Guided)]
    refine: Refine,
    /// Also time every operation of the fused graph in tract over the
    /// timed frames and print where the inference time goes, per kind of
    /// operation.
    #[arg(long)]
    profile: bool,
}

pub fn run(args: BenchArgs, cache: &Path) -> anyhow::Result<()> {
    for choice in &args.engine {
        causeseg::engine::check_built(*choice)?;
    }
    let model = super::load_model(args.model.as_deref(), args.size, cache)?;
    let graph = fused::fused_graph(&model, &backbone::resolve(&model.manifest.backbone, cache)?, cache)?;
    let input = &model.manifest.input;
    let spec = EngineSpec { path: graph, width: input.width, height: input.height, patch_size: model.manifest.backbone.patch_size, channels: model.num_concepts() };
    let gflop = TractEngine::load(&spec)?.flops()? as f64 / 1e9;
    let open_images = || -> anyhow::Result<ImageFiles> {
        Ok(match &args.images {
            Some(dir) => ImageFiles::open(&dir.display().to_string(), true)?,
            None => ImageFiles::samples(true),
        })
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("bench: {} frames at {}x{} from {}, {cores} cores; fused graph {gflop:.1} GFLOP per frame", args.frames, input.width, input.height, open_images()?.describe());
    println!("{:<16} {:<12} {:>10} {:>10}", "engine", "stage", "p50 ms", "p99 ms");
    for choice in &args.engine {
        let load_start = Instant::now();
        let mut segmenter = Segmenter::new(model.clone(), &args.setup.config(*choice, cache), cache)?;
        segmenter.set_refine(args.refine);
        let load_ms = ms_since(load_start);
        let mut samples: Vec<StageTimes> = Vec::with_capacity(args.frames);
        let mut images = open_images()?;
        for i in 0..args.warmup + args.frames {
            let frame = images.next_frame()?.expect("a looping source never ends");
            let what = frame.name.unwrap_or_else(|| format!("frame {i}"));
            let mut times = segmenter.segment(&frame.image, &what, None)?.times;
            times.decode_ms = frame.decode_ms;
            if i >= args.warmup {
                samples.push(times);
            }
        }
        let name = segmenter.inference_mut().backend();
        for (index, stage) in ["decode", "preprocess", "inference", "postprocess", "total"].iter().enumerate() {
            let values: Vec<f64> = samples
                .iter()
                .map(|t| if index < 4 { t.named()[index].1 } else { t.total_ms() })
                .collect();
            if let Some(s) = summarize(&values) {
                let rate = if *stage == "inference" { format!("   {:.0} GFLOP/s at p50", gflop / (s.p50 / 1000.0)) } else { String::new() };
                println!("{name:<16} {stage:<12} {:>10.2} {:>10.2}{rate}", s.p50, s.p99);
            }
        }
        println!("{name:<16} {:<12} {load_ms:>10.0}   (model load, once)", "load");
    }
    if args.profile {
        print_profile(&spec, &model.manifest.input, args.warmup, args.frames, open_images()?)?;
    }
    let rss = peak_rss_bytes().map_or("unknown".into(), |b| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0)));
    println!("peak RSS {rss}");
    Ok(())
}

/// tract's time per kind of operation of the fused graph, averaged over
/// `frames` frames after `warmup`.
fn print_profile(spec: &EngineSpec, input: &InputSpec, warmup: usize, frames: usize, mut images: ImageFiles) -> anyhow::Result<()> {
    let mut engine = TractEngine::load(spec)?;
    let mut preprocessor = Preprocessor::new(input.width, input.height, spec.patch_size, input.mean, input.std, input.resize);
    let mut totals: Vec<OpTime> = Vec::new();
    for i in 0..warmup + frames {
        let frame = images.next_frame()?.expect("a looping source never ends");
        let (tensor, _) = preprocessor.run(&frame.image, "frame")?;
        let profile = engine.profile(tensor)?;
        if i < warmup {
            continue;
        }
        for op in profile {
            match totals.iter_mut().find(|t| t.op == op.op) {
                Some(total) => total.ms += op.ms,
                None => totals.push(op),
            }
        }
    }
    totals.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let sum: f64 = totals.iter().map(|t| t.ms).sum();
    println!("tract profile of the fused graph, mean of {frames} frames: {:.1} ms per frame", sum / frames as f64);
    println!("{:<28} {:>6} {:>12} {:>7}", "operation", "nodes", "ms/frame", "share");
    for op in &totals {
        println!("{:<28} {:>6} {:>12.2} {:>6.1}%", op.op, op.nodes, op.ms / frames as f64, 100.0 * op.ms / sum);
    }
    Ok(())
}
