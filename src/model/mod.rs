//! Model directories: the manifest, the concept centroids, the head, and
//! the backbone they run on (fetched or imported into a cache, never stored
//! in the directory); the fused graph built from them; the atomic writer
//! every `fit` method uses; the default model bundled in the binary.

pub mod backbone;
pub mod bundled;
pub mod fused;
pub mod manifest;
pub mod writer;

use std::path::{Path, PathBuf};

use ndarray::Array2;
use ndarray_npy::ReadNpyExt;

use crate::calibrate::{CalibrationTable, TABLE_FILE};
use crate::head::{Head, HeadError};
use crate::linalg::l2_normalize_rows;
pub use manifest::Manifest;
pub use writer::ModelWriter;

/// Errors while loading or saving a model directory.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The directory or its manifest is missing.
    #[error("model directory {0} has no model.toml (expected a directory made by `causeseg fit`)")]
    MissingManifest(PathBuf),
    /// The manifest's format version is not the one this build reads.
    #[error("{path}: unsupported format_version {found}; this causeseg reads version {}", manifest::FORMAT_VERSION)]
    UnsupportedVersion {
        /// The manifest file.
        path: PathBuf,
        /// The version it declares.
        found: String,
    },
    /// The manifest does not parse or is inconsistent.
    #[error("{path}: invalid manifest: {reason}")]
    InvalidManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file named by the manifest is unreadable or has the wrong shape.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The input size asked for does not split into whole patches.
    #[error("--size {width}x{height} is not a multiple of the patch size {patch}")]
    InputSize {
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
        /// The backbone's patch size.
        patch: u32,
    },
    /// An environment variable that chooses how a model runs has a value
    /// causeseg does not know.
    #[error("{variable}={value}: expected {expected}")]
    Setting {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// The values it takes.
        expected: &'static str,
    },
    /// Building the fused inference graph failed.
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
}

/// A loaded model directory.
#[derive(Debug, Clone)]
pub struct Model {
    /// The directory the model was loaded from.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Concept centroids, `[K, feature_dim]` (or `[K, head output_dim]`
    /// with a head), each row L2-normalised.
    pub centroids: Array2<f32>,
    /// The trained head named by the manifest, if any.
    pub head: Option<Head>,
    /// The calibration table of an int8 model (checked against this
    /// model's float graph when loaded).
    pub calibration: Option<CalibrationTable>,
}

impl Model {
    /// Writes the manifest back to `dir/model.toml` atomically (a temporary
    /// file renamed over it), e.g. after renaming concepts.
    pub fn save_manifest(&self) -> Result<(), ModelError> {
        let path = self.dir.join("model.toml");
        let partial = self.dir.join(".model.toml.partial");
        std::fs::write(&partial, self.manifest.to_toml()).map_err(|source| ModelError::Io { path: partial.clone(), source })?;
        std::fs::rename(&partial, &path).map_err(|source| ModelError::Io { path, source })
    }

    /// Runs the model at `width` x `height` input pixels instead of its
    /// manifest's size (both multiples of the patch size).
    pub fn set_input_size(&mut self, width: u32, height: u32) -> Result<(), ModelError> {
        let patch = self.manifest.backbone.patch_size;
        if width == 0 || height == 0 || !width.is_multiple_of(patch) || !height.is_multiple_of(patch) {
            return Err(ModelError::InputSize { width, height, patch });
        }
        (self.manifest.input.width, self.manifest.input.height) = (width, height);
        Ok(())
    }

    /// Loads `dir/model.toml` and the centroids it names.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let manifest_path = dir.join("model.toml");
        if !manifest_path.is_file() {
            return Err(ModelError::MissingManifest(dir.into()));
        }
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|source| ModelError::Io { path: manifest_path.clone(), source })?;
        let manifest = Manifest::parse(&text, &manifest_path)?;
        let centroids_path = dir.join(&manifest.concepts.centroids);
        let bad = |reason: String| ModelError::BadFile { path: centroids_path.clone(), reason };
        let file = std::fs::File::open(&centroids_path).map_err(|e| bad(e.to_string()))?;
        let centroids = Array2::<f32>::read_npy(file).map_err(|e| bad(format!("not a float32 2-D .npy: {e}")))?;
        let head = match &manifest.head {
            None => None,
            Some(spec) => {
                let head_dir = dir.join(&spec.dir);
                let head = Head::load(spec.kind, &head_dir).map_err(|e| match e {
                    HeadError::BadFile { path, reason } => ModelError::BadFile { path, reason },
                })?;
                if head.input_dim() != manifest.backbone.feature_dim || head.output_dim() != spec.output_dim {
                    return Err(ModelError::BadFile {
                        path: head_dir,
                        reason: format!(
                            "head maps {} -> {} features, the manifest says {} -> {}",
                            head.input_dim(),
                            head.output_dim(),
                            manifest.backbone.feature_dim,
                            spec.output_dim
                        ),
                    });
                }
                Some(head)
            }
        };
        let dim = manifest.head.as_ref().map_or(manifest.backbone.feature_dim, |h| h.output_dim);
        let expected = (manifest.concepts.names.len(), dim);
        if centroids.dim() != expected {
            return Err(bad(format!("shape {:?}, expected {:?} (concepts x feature_dim)", centroids.dim(), expected)));
        }
        let mut model = Model { dir: dir.into(), manifest, centroids: l2_normalize_rows(centroids), head, calibration: None };
        if model.manifest.precision == manifest::ModelPrecision::Int8 {
            model.calibration = Some(CalibrationTable::load(&dir.join(TABLE_FILE), &fused::source_hash(&model)?)?);
        }
        Ok(model)
    }

    /// Number of concepts.
    pub fn num_concepts(&self) -> usize {
        self.centroids.nrows()
    }
}

/// A distinct display colour for concept `i` (a fixed, readable palette
/// first, then golden-angle hues).
pub fn default_color(i: usize) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 12] = [
        [70, 130, 180], [128, 64, 128], [220, 20, 60], [107, 142, 35], [250, 170, 30], [70, 70, 70],
        [0, 0, 142], [244, 35, 232], [153, 153, 153], [0, 180, 180], [190, 153, 153], [255, 255, 0],
    ];
    if let Some(c) = PALETTE.get(i) {
        return *c;
    }
    let hue = (i as f32 * 137.508) % 360.0;
    let x = 1.0 - ((hue / 60.0) % 2.0 - 1.0).abs();
    let (r, g, b) = match (hue / 60.0) as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    [(r * 220.0) as u8 + 20, (g * 220.0) as u8 + 20, (b * 220.0) as u8 + 20]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dir_says_what_was_expected() {
        let err = Model::load(Path::new("/nonexistent/model")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/model") && err.contains("model.toml"), "{err}");
    }

    #[test]
    fn colours_are_distinct() {
        let colours: std::collections::HashSet<_> = (0..64).map(default_color).collect();
        assert_eq!(colours.len(), 64);
    }
}
