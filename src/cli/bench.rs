//! `causeseg bench`: per-stage latency (median, p99) and peak RSS of the
//! single-frame pipeline, for one or more engines side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use causeseg::engine::EngineChoice;
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
}

pub fn run(args: BenchArgs, cache: &Path) -> anyhow::Result<()> {
    for choice in &args.engine {
        causeseg::engine::check_built(*choice)?;
    }
    let model = super::load_model(args.model.as_deref(), args.size, cache)?;
    let open_images = || -> anyhow::Result<ImageFiles> {
        Ok(match &args.images {
            Some(dir) => ImageFiles::open(&dir.display().to_string(), true)?,
            None => ImageFiles::samples(true),
        })
    };
    let input = &model.manifest.input;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("bench: {} frames at {}x{} from {}, {cores} cores", args.frames, input.width, input.height, open_images()?.describe());
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
                println!("{name:<16} {stage:<12} {:>10.2} {:>10.2}", s.p50, s.p99);
            }
        }
        println!("{name:<16} {:<12} {load_ms:>10.0}   (model load, once)", "load");
    }
    let rss = peak_rss_bytes().map_or("unknown".into(), |b| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0)));
    println!("peak RSS {rss}");
    Ok(())
}
