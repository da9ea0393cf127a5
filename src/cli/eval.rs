//! `causeseg eval`: Hungarian-matched mIoU and pixel accuracy.

use std::path::{Path, PathBuf};

use causeseg::eval::{confusion_for, pair_by_stem, plot::confusion_image, Confusion, EvalReport};
use causeseg::progress::Progress;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: super::ModelArgs,
    /// Directory of images.
    #[arg(long)]
    images: PathBuf,
    /// Directory of single-channel class-id PNGs, matched to images by file stem.
    #[arg(long)]
    labels: PathBuf,
    /// Number of ground-truth classes (ids 0..N-1).
    #[arg(long)]
    classes: usize,
    /// Label id to ignore (e.g. 11 for CamVid, 255 for COCO-Stuff).
    #[arg(long)]
    ignore: Option<u8>,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Write the confusion matrix as a PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn run(args: EvalArgs, cache: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.classes >= 1, "--classes must be at least 1");
    let pairs = pair_by_stem(&args.images, &args.labels)?;
    let mut segmenter = args.model.load(cache)?;
    let mut total = Confusion::new(segmenter.model().num_concepts(), args.classes);
    let mut bar = Progress::new(pairs.len(), "eval");
    for (image, label) in &pairs {
        total.merge(&confusion_for(&mut segmenter, image, label, args.classes, args.ignore)?);
        bar.inc();
    }
    bar.finish();
    let metrics = total.metrics();
    let input = &segmenter.model().manifest.input;
    let report = EvalReport {
        model: segmenter.model().manifest.name.clone(),
        input_size: format!("{}x{}", input.width, input.height),
        backend: segmenter.inference_mut().backend(),
        images: pairs.len(),
        clusters: total.clusters(),
        classes: total.classes(),
        miou: metrics.miou,
        pixel_accuracy: metrics.pixel_accuracy,
        per_class_iou: metrics.per_class_iou,
        assignment: metrics.assignment,
    };
    if let Some(path) = &args.plot {
        confusion_image(&total, &report.assignment).save(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("model {} at {} on {} images: mIoU {:.2} %, pixel accuracy {:.2} %", report.model, report.input_size, report.images, report.miou, report.pixel_accuracy);
        for (class, iou) in report.per_class_iou.iter().enumerate() {
            let cluster = report.assignment.iter().position(|a| *a == Some(class));
            let iou = iou.map_or("-".into(), |v| format!("{v:.2}"));
            let cluster = cluster.map_or("-".into(), |k| k.to_string());
            println!("  class {class:>3}  IoU {iou:>6}  cluster {cluster}");
        }
    }
    Ok(())
}
