//! `causeseg bench`: per-stage latency (median, p99) and peak RSS of the
//! single-frame pipeline, for one or more backends side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use causeseg::engine::Backend;
use causeseg::eval::list_images;
use causeseg::model::{Model, DEFAULT_MODEL_DIR};
use causeseg::pipeline::preprocess::decode_file;
use causeseg::pipeline::timing::{ms_since, peak_rss_bytes, summarize, StageTimes};
use causeseg::Segmenter;

/// Sample images shipped with the repository.
pub const SAMPLE_IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/images");

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Frames to time per backend (after warm-up).
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
    /// Model directory [default: models/camvid-cause].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Backends to compare, comma-separated (ort/cuda/tensorrt need --features ort).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tract")]
    backend: Vec<Backend>,
}

pub fn run(args: BenchArgs, cache: &Path) -> anyhow::Result<()> {
    let mut model = Model::load(args.model.as_deref().unwrap_or(Path::new(DEFAULT_MODEL_DIR)))?;
    if let Some((w, h)) = args.size {
        let p = model.manifest.backbone.patch_size;
        anyhow::ensure!(w % p == 0 && h % p == 0, "--size {w}x{h} is not a multiple of the patch size {p}");
        (model.manifest.input.width, model.manifest.input.height) = (w, h);
    }
    let dir = args.images.clone().unwrap_or_else(|| PathBuf::from(SAMPLE_IMAGES));
    let images = list_images(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    anyhow::ensure!(!images.is_empty(), "no JPEG or PNG images in {}", dir.display());
    let input = &model.manifest.input;
    println!("bench: {} frames at {}x{} from {} ({} images), {} cores", args.frames, input.width, input.height, dir.display(), images.len(), std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("{:<12} {:<12} {:>10} {:>10}", "backend", "stage", "p50 ms", "p99 ms");
    for backend in &args.backend {
        let load_start = Instant::now();
        let mut segmenter = Segmenter::new(model.clone(), *backend, cache)?;
        let load_ms = ms_since(load_start);
        let mut samples: Vec<StageTimes> = Vec::with_capacity(args.frames);
        for i in 0..args.warmup + args.frames {
            let path = &images[i % images.len()];
            let start = Instant::now();
            let image = decode_file(path)?;
            let decode_ms = ms_since(start);
            let mut times = segmenter.segment(&image, &path.display().to_string(), None)?.times;
            times.decode_ms = decode_ms;
            if i >= args.warmup {
                samples.push(times);
            }
        }
        let name = format!("{backend:?}").to_lowercase();
        for (index, stage) in ["decode", "preprocess", "backbone", "postprocess", "total"].iter().enumerate() {
            let values: Vec<f64> = samples
                .iter()
                .map(|t| if index < 4 { t.named()[index].1 } else { t.total_ms() })
                .collect();
            if let Some(s) = summarize(&values) {
                println!("{name:<12} {stage:<12} {:>10.2} {:>10.2}", s.p50, s.p99);
            }
        }
        println!("{name:<12} {:<12} {load_ms:>10.0}   (model load, once)", "load");
    }
    let rss = peak_rss_bytes().map_or("unknown".into(), |b| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0)));
    println!("peak RSS {rss}");
    Ok(())
}
