//! INT8 calibration (`causeseg calibrate`, `causeseg-calibrate`): run a
//! model's float fused graph in tract over calibration images, preprocessed
//! exactly as at run time, even out the channels of the LayerNorm and GELU
//! outputs that feed quantized products ([`smooth`], SmoothQuant), record
//! the inputs of every MatMul/Gemm/Conv
//! ([`stats`]), choose one scale per activation tensor ([`table`]), and
//! build the QDQ graph from the float graph and that table ([`qdq`]), and
//! from that the integer form tract runs ([`integer`]). An int8 model
//! directory stores only the table: its graphs are rebuilt into the cache
//! like the float fused graph (`model::fused`). [`report`]
//! measures the int8 graph against the float one.

#[cfg(feature = "cli")]
pub mod command;
pub mod integer;
pub mod probe;
pub mod qdq;
pub mod report;
pub mod smooth;
pub mod stats;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use rayon::prelude::*;

pub use qdq::{Plan, QdqError};
pub use stats::{Method, TensorStats};
pub use table::{ActivationScale, CalibrationTable, Settings, TABLE_FILE};

use crate::engine::EngineError;
use crate::model::backbone::BackboneError;
use crate::model::manifest::ModelPrecision;
use crate::model::{fused, Model, ModelError};
use crate::pipeline::preprocess::{PreprocessError, Preprocessor};
use crate::pipeline::SegmentError;
use crate::progress::Progress;
use crate::source::{decode_file, list_images};

/// Errors of a calibration run.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// The image directory holds no JPEG or PNG file.
    #[error("{0}: no JPEG or PNG images to calibrate on")]
    NoImages(PathBuf),
    /// Every image of the directory failed to decode.
    #[error("{dir}: none of the {tried} images could be decoded (e.g. {first})")]
    NoDecodableImages {
        /// The image directory.
        dir: PathBuf,
        /// Files tried.
        tried: usize,
        /// The first decoding error.
        first: String,
    },
    /// A directory could not be listed.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The model directory is unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The backbone could not be fetched or verified.
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    /// A graph could not be loaded or run.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The graph cannot be quantized.
    #[error(transparent)]
    Qdq(#[from] QdqError),
    /// Running the float or int8 model failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// An image is unusable.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
}

/// The outcome of [`calibrate`]: the table and what it was made from.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// The calibration table.
    pub table: CalibrationTable,
    /// Which nodes are quantized.
    pub plan: Plan,
    /// Statistics of each calibrated tensor (in `plan.activation_tensors()` order).
    pub stats: Vec<(String, TensorStats)>,
    /// Image files read (decoded or not), in name order.
    pub files_read: usize,
    /// Images that failed to decode and were skipped.
    pub skipped_images: usize,
    /// Wall time of the statistics passes (smoothing ranges, then scales), seconds.
    pub seconds: f64,
}

/// The JPEG/PNG files of `dir`, in name order; an empty directory is an error.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, CalibrationError> {
    let files = list_images(dir).map_err(|source| CalibrationError::Io { path: dir.into(), source })?;
    if files.is_empty() {
        return Err(CalibrationError::NoImages(dir.into()));
    }
    Ok(files)
}

/// Decodes `files` in order and calls `f` on each image until `limit`
/// decoded, with a progress bar named `what`; undecodable files are skipped
/// (logged and counted). Returns (files read, decoded, skipped); none
/// decoded is an error naming `dir`.
pub fn for_each_image(
    dir: &Path,
    files: &[PathBuf],
    limit: usize,
    what: &str,
    mut f: impl FnMut(&Path, &RgbImage) -> Result<(), CalibrationError>,
) -> Result<(usize, usize, usize), CalibrationError> {
    let mut bar = Progress::new(limit.min(files.len()), what);
    let (mut read, mut decoded, mut skipped, mut first) = (0, 0, 0, None);
    for path in files {
        if decoded == limit {
            break;
        }
        read += 1;
        match decode_file(path) {
            Ok(image) => {
                f(path, &image)?;
                decoded += 1;
                bar.inc();
            }
            Err(e) => {
                bar.suspend(|| log::warn!("{e}; skipped"));
                first.get_or_insert_with(|| e.to_string());
                skipped += 1;
            }
        }
    }
    bar.finish();
    if decoded == 0 {
        return Err(CalibrationError::NoDecodableImages { dir: dir.into(), tried: read, first: first.unwrap_or_default() });
    }
    if skipped > 0 {
        log::warn!("{what}: {skipped} of {read} images in {} could not be decoded and were skipped", dir.display());
    }
    Ok((read, decoded, skipped))
}

/// The preprocessing `model` runs with.
pub fn preprocessor(model: &Model) -> Preprocessor {
    let input = &model.manifest.input;
    Preprocessor::new(input.width, input.height, model.manifest.backbone.patch_size, input.mean, input.std, input.resize)
}

/// Calibrates `model` (on the backbone file `backbone`) over the first
/// `settings.images` decodable images of `dir` (`files`: its
/// [`image_files`]). The returned table's `settings.images` is the number
/// actually used.
pub fn calibrate(model: &Model, backbone: &Path, dir: &Path, files: &[PathBuf], settings: &Settings) -> Result<Calibration, CalibrationError> {
    let float = fused::float_graph(model, backbone)?;
    let graph = float.graph.as_ref().expect("fused graphs have a graph");
    let plan = qdq::plan(graph, &settings.exclude);
    if plan.nodes.is_empty() {
        return Err(QdqError::NothingToQuantize(format!("{} MatMul/Gemm/Conv nodes, all skipped or excluded", plan.skipped.len())).into());
    }
    let images = Images { model, dir, files, limit: settings.images };
    let start = Instant::now();
    let smoothing = match settings.smooth {
        Some(alpha) => smoothing_factors(&float, &plan, alpha, &images)?,
        None => BTreeMap::new(),
    };
    let smoothed = smooth::apply(&float, &smoothing);
    // Smoothing a GELU output gives its readers a new input tensor.
    let plan = qdq::plan(smoothed.graph.as_ref().expect("fused graphs have a graph"), &settings.exclude);
    let tensors = plan.activation_tensors();
    log::info!("calibrating {} inputs of {} nodes ({} left float)", tensors.len(), plan.nodes.len(), plan.skipped.len());
    let mut stats = vec![TensorStats::default(); tensors.len()];
    let (files_read, used, skipped_images) = images.probe(&smoothed, &tensors, "calibrate", |outputs| {
        stats.par_iter_mut().zip(outputs.par_iter()).for_each(|(s, values)| s.add(values));
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let activations = tensors
        .iter()
        .zip(&stats)
        .map(|(name, s)| (name.clone(), ActivationScale::from_amax(s.amax(settings.method, settings.percentile))))
        .collect();
    let table = CalibrationTable {
        format_version: table::TABLE_VERSION,
        float_graph_sha256: fused::source_hash(model)?,
        settings: Settings { images: used, ..settings.clone() },
        activations,
        smoothing,
    };
    Ok(Calibration { table, plan, stats: tensors.into_iter().zip(stats).collect(), files_read, skipped_images, seconds })
}

/// The calibration images of one run: the first `limit` decodable `files`
/// of `dir`, preprocessed as `model` runs.
struct Images<'a> {
    model: &'a Model,
    dir: &'a Path,
    files: &'a [PathBuf],
    limit: usize,
}

impl Images<'_> {
    /// Runs `graph` in tract over the images with `tensors` as its outputs
    /// and calls `f` with them per image, with a progress bar named `what`;
    /// returns [`for_each_image`]'s counts.
    fn probe(
        &self,
        graph: &crate::onnx::pb::ModelProto,
        tensors: &[String],
        what: &str,
        mut f: impl FnMut(Vec<Vec<f32>>),
    ) -> Result<(usize, usize, usize), CalibrationError> {
        let input = &self.model.manifest.input;
        let mut probe = probe::Probe::load(graph, tensors, input.width, input.height)?;
        let mut preprocessor = preprocessor(self.model);
        for_each_image(self.dir, self.files, self.limit, what, |path, image| {
            let (tensor, _) = preprocessor.run(image, &path.display().to_string())?;
            f(probe.run(tensor)?);
            Ok(())
        })
    }
}

/// SmoothQuant's factors ([`smooth`]) for the smoothable LayerNorm and GELU
/// outputs of `float` under `plan`, from their per-channel ranges over the
/// calibration images (a first pass; the scales are then measured on the
/// smoothed graph).
fn smoothing_factors(float: &crate::onnx::pb::ModelProto, plan: &Plan, alpha: f32, images: &Images) -> Result<BTreeMap<String, Vec<f32>>, CalibrationError> {
    let sites = smooth::sites(float.graph.as_ref().expect("fused graphs have a graph"), plan);
    if sites.is_empty() {
        log::warn!("--smooth: no LayerNorm or GELU feeds a quantized product; nothing smoothed");
        return Ok(BTreeMap::new());
    }
    log::info!("smoothing {} LayerNorm and GELU outputs (α = {alpha})", sites.len());
    let names: Vec<String> = sites.iter().map(|s| s.tensor.clone()).collect();
    let mut amax: Vec<Vec<f32>> = sites.iter().map(|s| vec![0f32; s.channels]).collect();
    images.probe(float, &names, "smoothing ranges", |outputs| {
        amax.par_iter_mut().zip(outputs.par_iter()).for_each(|(amax, values)| {
            for row in values.chunks(amax.len()) {
                amax.iter_mut().zip(row).for_each(|(m, v)| *m = m.max(v.abs()));
            }
        });
    })?;
    Ok(sites.iter().zip(&amax).map(|(site, amax)| (site.tensor.clone(), smooth::factors(amax, &site.weight_amax, alpha))).collect())
}

/// `float` as an int8 model with `table` (in memory: its directory is still
/// the float one's).
pub fn int8_model(float: &Model, table: CalibrationTable) -> Model {
    let mut model = float.clone();
    model.manifest.precision = ModelPrecision::Int8;
    model.calibration = Some(table);
    model
}
