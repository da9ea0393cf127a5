//! [`Segmenter`]: the library entry point that turns an RGB frame into a
//! concept label map, and [`PatchInference`], its preprocessing + engine
//! half, which training also uses on the bare backbone.

use std::path::Path;
use std::time::Instant;

use image::{GrayImage, RgbImage};
use ndarray::Array3;

use super::preprocess::{Placement, PreprocessError, Preprocessor};
use super::refine::{refined_labels, Refine};
use crate::model::manifest::ResizePolicy;
use crate::timing::{ms_since, StageTimes};
use crate::engine::{self, Engine, EngineConfig, EngineError, EngineSpec, Precision};
use crate::model::backbone::{self, BackboneError};
use crate::model::manifest::{BackboneRef, InputSpec};
use crate::model::{fused, Model, ModelError};

/// Anything that can go wrong between a model directory and a label map.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The model directory is unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The backbone could not be fetched or verified.
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    /// The graph could not be loaded or run.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The image is unusable (smaller than a patch).
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
}

/// Preprocessing plus one engine: RGB image → the graph's per-patch output
/// `[rows, cols, C]`: concept scores for a model's fused graph (what
/// [`Segmenter`] runs), patch features for a bare backbone (what training
/// runs).
pub struct PatchInference {
    engine: Box<dyn Engine>,
    preprocessor: Preprocessor,
    patch_size: u32,
}

impl PatchInference {
    /// Resolves (fetching if needed) and loads the bare backbone for `input`
    /// (tract runs its form, built beside it: `fused::tract_graph`).
    pub fn backbone(reference: &BackboneRef, input: &InputSpec, engine: &EngineConfig, cache: &Path) -> Result<Self, SegmentError> {
        let path = backbone::resolve(reference, cache)?;
        let tract_graph = Some(fused::tract_graph(&path, false)?);
        let spec = EngineSpec { path, tract_graph, width: input.width, height: input.height, patch_size: reference.patch_size, channels: reference.feature_dim };
        Self::load(spec, input, engine)
    }

    /// Loads any graph that maps the image tensor to a `[1, tokens, channels]`
    /// per-patch output (a backbone, or a fused graph's concept scores),
    /// preprocessing images as `input` says.
    pub fn load(spec: EngineSpec, input: &InputSpec, engine: &EngineConfig) -> Result<Self, SegmentError> {
        let engine = engine::load(engine, &spec)?;
        let preprocessor = Preprocessor::new(input.width, input.height, spec.patch_size, input.mean, input.std, input.resize);
        Ok(PatchInference { engine, preprocessor, patch_size: spec.patch_size })
    }

    /// Overrides the resize policy of the manifest.
    pub fn set_resize_policy(&mut self, policy: ResizePolicy, input: &InputSpec) {
        self.preprocessor = Preprocessor::new(input.width, input.height, self.patch_size, input.mean, input.std, policy);
    }

    /// The name of the engine that runs the graph (e.g. "tract").
    pub fn backend(&self) -> String {
        self.engine.backend()
    }

    /// The per-patch output `[rows, cols, C]` for `image`, where it landed
    /// in the input, and the preprocess/inference times. `what` names it in
    /// errors.
    pub fn run(&mut self, image: &RgbImage, what: &str) -> Result<(Array3<f32>, Placement, StageTimes), SegmentError> {
        let start = Instant::now();
        let (tensor, placement) = self.preprocessor.run(image, what)?;
        let preprocess_ms = ms_since(start);
        let start = Instant::now();
        let features = self.engine.run(tensor)?;
        let times = StageTimes { preprocess_ms, inference_ms: ms_since(start), ..Default::default() };
        Ok((features, placement, times))
    }
}

/// A label map and what it cost.
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// One concept id per pixel.
    pub labels: GrayImage,
    /// Per-stage times (decode is filled in by callers that decode).
    pub times: StageTimes,
}

/// Model directory + its fused graph (backbone → head → concept scores, see
/// [`crate::model::fused`]) on one engine: RGB frames in, concept label
/// maps out.
///
/// ```no_run
/// use causeseg::{EngineChoice, EngineConfig, Model, Segmenter};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = causeseg::model::backbone::cache_dir(None);
/// let model = Model::load(&causeseg::model::bundled::default_model_dir(&cache)?)?;
/// let mut segmenter = Segmenter::new(model, &EngineConfig::new(EngineChoice::Auto, &cache), &cache)?;
/// let frame = image::RgbImage::new(640, 480); // e.g. a camera frame
/// let result = segmenter.segment(&frame, "frame", None)?;
/// assert_eq!(result.labels.dimensions(), (640, 480));
/// println!("inference took {:.1} ms", result.times.inference_ms);
/// # Ok(()) }
/// ```
pub struct Segmenter {
    model: Model,
    inference: PatchInference,
    refine: Refine,
}

impl Segmenter {
    /// Loads the backbone named by `model` (fetching it into `cache` if it is
    /// the default one and missing), builds the model's fused graph (cached
    /// in `cache`; for an int8 model its QDQ graph, which TensorRT then
    /// builds in int8, and its integer form, which tract runs) and loads
    /// that on the engine `engine` picks.
    pub fn new(model: Model, engine: &EngineConfig, cache: &Path) -> Result<Self, SegmentError> {
        let backbone = &model.manifest.backbone;
        let spec = fused::engine_spec(&model, &backbone::resolve(backbone, cache)?, cache)?;
        let mut engine = engine.clone();
        if model.calibration.is_some() {
            engine.tensorrt.precision = Precision::Int8;
        }
        let inference = PatchInference::load(spec, &model.manifest.input, &engine)?;
        Ok(Segmenter { model, inference, refine: Refine::default() })
    }

    /// The loaded model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Chooses how scores become labels (default: [`Refine::Guided`]).
    pub fn set_refine(&mut self, refine: Refine) {
        self.refine = refine;
    }

    /// The preprocessing + engine half, e.g. to change the resize policy.
    pub fn inference_mut(&mut self) -> &mut PatchInference {
        &mut self.inference
    }

    /// Segments `image`; the label map has `out_size` (default: the image's
    /// own size). `what` names the image in errors.
    pub fn segment(&mut self, image: &RgbImage, what: &str, out_size: Option<(u32, u32)>) -> Result<Segmentation, SegmentError> {
        let (scores, placement, mut times) = self.inference.run(image, what)?;
        let start = Instant::now();
        let (w, h) = out_size.unwrap_or(image.dimensions());
        let patch = self.model.manifest.backbone.patch_size;
        let labels = refined_labels(&scores, &placement, patch, image, (w, h), self.refine);
        times.postprocess_ms = ms_since(start);
        Ok(Segmentation { labels, times })
    }
}
