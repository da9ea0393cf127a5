//! `causeseg calibrate` and `causeseg-calibrate` (the same arguments and
//! code, feature `cli`): calibrate a model and write its int8 model
//! directory with the table and the report.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::report::{accuracy, layer_errors, Report};
use super::table::TENSORRT_CACHE_FILE;
use super::{calibrate, image_files, int8_model, qdq, Method, Settings, TABLE_FILE};
use crate::engine::{EngineChoice, EngineConfig};
use crate::model::manifest::ModelPrecision;
use crate::model::{backbone, bundled, fused, Model, ModelWriter};

/// Report files written into the int8 model directory.
const REPORT: &str = "calibration_report";
/// Held-out images the per-layer error is measured on (two graphs with
/// every quantized node's output exposed: slow).
const LAYER_IMAGES: usize = 4;

/// Arguments of `causeseg calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// Float model directory [default: the bundled camvid-cause model].
    #[arg(long, env = "CAUSESEG_MODEL")]
    model: Option<PathBuf>,
    /// Directory of calibration images (JPEG/PNG, e.g. frames from your robot).
    #[arg(long)]
    images: PathBuf,
    /// The int8 model directory to write (a copy of the float one with
    /// `precision = "int8"`, the calibration table and the report).
    #[arg(long)]
    out: PathBuf,
    /// How activation ranges are chosen.
    #[arg(long, value_enum, default_value_t = Method::MinMax)]
    method: Method,
    /// Percentile of |x| for `--method percentile`.
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// Nodes to leave in float: node or output names, `*` matching any
    /// run of characters (e.g. `'*/mlp/fc2/MatMul'`; the report lists the
    /// node names).
    #[arg(long, num_args = 1..)]
    exclude: Vec<String>,
    /// SmoothQuant's migration strength α (0 < α ≤ 1) for the LayerNorms
    /// that feed quantized products: their channels' ranges move into the
    /// weights (the float graph computes the same values); 0 turns it off.
    #[arg(long, default_value_t = 0.5)]
    smooth: f32,
    /// Calibration images to use (the first N that decode, in name order).
    #[arg(long, default_value_t = 64)]
    calibration_images: usize,
    /// Held-out images to measure int8 against float on [default: the
    /// images of --images after the calibration ones].
    #[arg(long)]
    report: Option<PathBuf>,
    /// How many held-out images to compare on.
    #[arg(long, default_value_t = 16)]
    report_images: usize,
    /// Engines of the held-out comparison, comma-separated (ort-cpu needs
    /// --features ort and ORT_DYLIB_PATH or a pip-installed onnxruntime).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tract")]
    engine: Vec<EngineChoice>,
}

/// Runs `causeseg calibrate` with backbone cache `cache`.
pub fn run(args: CalibrateArgs, cache: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.percentile > 0.0 && args.percentile <= 100.0, "--percentile must be in (0, 100], got {}", args.percentile);
    anyhow::ensure!(args.calibration_images >= 1, "--calibration-images must be at least 1");
    anyhow::ensure!((0.0..=1.0).contains(&args.smooth), "--smooth must be in [0, 1] (0: off), got {}", args.smooth);
    for &engine in &args.engine {
        crate::engine::check_built(engine)?;
    }
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None => bundled::default_model_dir(cache)?,
    };
    let mut float = Model::load(&dir)?;
    float.manifest.precision = ModelPrecision::Float;
    float.calibration = None;
    let writer = ModelWriter::create(&args.out).with_context(|| format!("cannot write the int8 model to {}", args.out.display()))?;
    let files = image_files(&args.images)?;
    let backbone_path = backbone::resolve(&float.manifest.backbone, cache)?;
    let settings = Settings { method: args.method, percentile: args.percentile, exclude: args.exclude.clone(), images: args.calibration_images, smooth: (args.smooth > 0.0).then_some(args.smooth) };
    let calibration = calibrate(&float, &backbone_path, &args.images, &files, &settings)?;
    let int8 = int8_model(&float, calibration.table.clone());
    let graph = fused::fused_graph(&int8, &backbone_path, cache)?;
    log::info!("int8 graph: {}", graph.display());

    let mut report = Report::new(&float, &calibration);
    let (held_dir, held_files) = match &args.report {
        Some(dir) => (dir.clone(), image_files(dir)?),
        None => (args.images.clone(), files[calibration.files_read..].to_vec()),
    };
    if held_files.is_empty() || args.report_images == 0 {
        log::warn!("no held-out images (all of --images went into calibration; pass --report DIR): accuracy not measured");
    } else {
        for &engine in &args.engine {
            let engine = EngineConfig::new(engine, cache);
            report.accuracy.push(accuracy(&float, &int8, &engine, cache, &held_dir, &held_files, args.report_images)?);
        }
        let float_graph = fused::float_graph(&float, &backbone_path)?;
        let int8_graph = qdq::quantize(&float_graph, &calibration.table)?;
        let limit = LAYER_IMAGES.min(args.report_images);
        report.layers = layer_errors(&float, &float_graph, &int8_graph, &calibration, &held_dir, &held_files, limit)?;
    }

    copy_model_files(&float.dir, Path::new(""), &writer)?;
    writer.text(TABLE_FILE, &calibration.table.to_json())?;
    if calibration.table.smoothing.is_empty() {
        writer.text(TENSORRT_CACHE_FILE, &calibration.table.tensorrt_cache())?;
    } else {
        // Implicit quantization reads the unsmoothed float graph, which these scales do not fit.
        log::info!("no {TENSORRT_CACHE_FILE} (TensorRT's implicit-quantization cache): its scales would not fit the float graph after SmoothQuant; calibrate with --smooth 0 for one");
    }
    writer.text(&format!("{REPORT}.md"), &report.to_markdown())?;
    writer.text(&format!("{REPORT}.json"), &serde_json::to_string_pretty(&report)?)?;
    if let Some(chart) = report.chart() {
        let mut png = Vec::new();
        chart.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        writer.bytes(&format!("{REPORT}.png"), &png)?;
    }
    writer.finish(Some(&int8.manifest))?;
    println!("{}: int8 ({}, {} nodes quantized, {} left float)", args.out.display(), args.method.name(), report.quantized_nodes, report.float_nodes.len());
    for a in &report.accuracy {
        println!(
            "  vs float on {} held-out images ({}): label agreement {:.2} % of pixels, score cosine {:.4}",
            a.images, a.engine, a.pixel_agreement, a.score_cosine
        );
    }
    Ok(())
}

/// Copies the files of the float model directory `root` (below `rel`) into
/// `writer`, except its manifest and any earlier calibration output.
fn copy_model_files(root: &Path, rel: &Path, writer: &ModelWriter) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir).with_context(|| dir.display().to_string())?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let name = path.file_name().expect("directory entries have names").to_string_lossy().into_owned();
        let target = rel.join(&name);
        if path.is_dir() {
            writer.make_dir(&target.to_string_lossy())?;
            copy_model_files(root, &target, writer)?;
        } else if !(rel.as_os_str().is_empty() && (name == "model.toml" || name == TABLE_FILE || name == TENSORRT_CACHE_FILE || name.starts_with(REPORT) || name.starts_with('.'))) {
            let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
            writer.bytes(&target.to_string_lossy(), &bytes)?;
        }
    }
    Ok(())
}
