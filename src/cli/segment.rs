//! `causeseg segment`: image files in, label maps and visualisations out.

use std::path::{Path, PathBuf};

use anyhow::Context;

use causeseg::model::manifest::ResizePolicy;
use causeseg::source::decode_file;
use causeseg::sink::{ImageSink, Visualization};

#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: super::ModelArgs,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Which images to write, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "labels,mask,overlay")]
    visualize: Vec<Visualization>,
    /// Mask opacity in overlays, 0..1.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Override the model's resize policy.
    #[arg(long, value_enum)]
    resize: Option<ResizePolicy>,
}

pub fn run(args: SegmentArgs, cache: &Path) -> anyhow::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&args.alpha), "--alpha must be between 0 and 1, got {}", args.alpha);
    let mut segmenter = args.model.load(cache)?;
    if let Some(policy) = args.resize {
        let input = segmenter.model().manifest.input.clone();
        segmenter.inference_mut().set_resize_policy(policy, &input);
    }
    let concepts = &segmenter.model().manifest.concepts;
    let sink = ImageSink::new(&args.out, &args.visualize, args.alpha, &concepts.names, &concepts.colors)?;
    for path in &args.images {
        let image = decode_file(path)?;
        let result = segmenter.segment(&image, &path.display().to_string(), None)?;
        let stem = path.file_stem().context("image path has no file name")?.to_string_lossy();
        sink.write(&stem, &image, &result.labels)?;
        let t = result.times;
        log::info!("{}: preprocess {:.1} ms, inference {:.1} ms, postprocess {:.1} ms", path.display(), t.preprocess_ms, t.inference_ms, t.postprocess_ms);
    }
    println!("{}", args.out.display());
    Ok(())
}
