//! Learning concepts offline (`causeseg fit`): backbone features of
//! unlabelled images and of random training views of them ([`features`],
//! [`augment`], cached by [`feature_cache`]), then
//! spherical k-means ([`kmeans`]) or the CAUSE stages ([`cause`], feature
//! `train`); every method writes its model through
//! [`ModelWriter`](crate::model::ModelWriter).

pub mod augment;
#[cfg(feature = "train")]
pub mod cause;
pub mod feature_cache;
pub mod features;
pub mod kmeans;

use std::path::PathBuf;

use crate::engine::EngineConfig;
use crate::model::manifest::{BackboneRef, InputSpec};
use crate::model::ModelError;
use crate::pipeline::{PatchInference, SegmentError};
use crate::source::list_images;
use feature_cache::FeatureCache;
use features::{FeatureSet, View};

/// Errors of a fit run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An image directory could not be listed.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// No usable image was found.
    #[error("no JPEG or PNG images in {0}")]
    NoImages(String),
    /// Too little data for what was asked.
    #[error("{0}")]
    TooLittleData(String),
    /// Inputs or settings that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The loss or its gradient became NaN or infinite: training stops,
    /// nothing is written.
    #[error("{stage}: the loss or its gradient became {value} at step {step}; training stopped (check the features, try a lower learning rate); no model was written")]
    NonFinite {
        /// The training stage.
        stage: &'static str,
        /// The step it happened at.
        step: usize,
        /// The value.
        value: f32,
    },
    /// A tensor operation failed (shape bug or allocation failure).
    #[cfg(feature = "train")]
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The backbone could not be fetched, loaded or run.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// Reading or writing a model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, TrainError>;

/// All JPEG/PNG files directly inside each of `dirs`.
pub fn collect_images(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for dir in dirs {
        images.extend(list_images(dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?);
    }
    if images.is_empty() {
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(TrainError::NoImages(names.join(", ")));
    }
    Ok(images)
}

/// The backbone, input geometry and caches a fit run extracts features with.
#[derive(Debug, Clone)]
pub struct Extraction {
    /// The backbone (in the cache).
    pub backbone: BackboneRef,
    /// Model input size and normalisation.
    pub input: InputSpec,
    /// Engine that runs the backbone for images not cached yet.
    pub engine: EngineConfig,
    /// Backbone and feature cache directory.
    pub cache: PathBuf,
}

impl Extraction {
    /// Backbone features of `view` of every readable image of `images`,
    /// from the feature cache where present; `what` labels the progress bar.
    pub fn features(&self, images: &[PathBuf], view: View, what: &str) -> Result<FeatureSet> {
        let cache = FeatureCache::new(&view.cache_root(&self.cache), &self.backbone, &self.input);
        let inference = || PatchInference::backbone(&self.backbone, &self.input, &self.engine, &self.cache);
        FeatureSet::load(images, &cache, view, inference, what)
    }
}

/// What every fit method is asked: which images, how many concepts, where
/// the model goes.
#[derive(Debug, Clone)]
pub struct FitJob {
    /// The directories the images came from (named in the description).
    pub image_dirs: Vec<PathBuf>,
    /// The training images.
    pub images: Vec<PathBuf>,
    /// Number of concepts.
    pub concepts: usize,
    /// Random seed.
    pub seed: u64,
    /// The model directory to write.
    pub out: PathBuf,
}

impl FitJob {
    /// The model's name: the output directory's name.
    pub fn model_name(&self) -> String {
        self.out.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned())
    }

    /// The image directories, comma-separated, for descriptions and errors.
    pub fn sources(&self) -> String {
        self.image_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}
