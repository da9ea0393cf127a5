//! Model directories: the manifest, the concept centroids, and the backbone
//! they run on (fetched or imported into a cache, never stored here).

pub mod backbone;
pub mod fused;
pub mod manifest;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Axis};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

pub use manifest::Manifest;

/// The model directory used when no `--model` is given: the default model
/// shipped in this repository's `models/`.
pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/camvid-cause");

/// Errors while loading or saving a model directory.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The directory or its manifest is missing.
    #[error("model directory {0} has no model.toml (expected a directory made by `causeseg fit`)")]
    MissingManifest(PathBuf),
    /// The manifest's format version is not the one this build reads.
    #[error("{path}: unsupported format_version {found}; this causeseg reads version {}", manifest::FORMAT_VERSION)]
    UnsupportedVersion { path: PathBuf, found: String },
    /// The manifest does not parse or is inconsistent.
    #[error("{path}: invalid manifest: {reason}")]
    InvalidManifest { path: PathBuf, reason: String },
    /// A file named by the manifest is unreadable or has the wrong shape.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A TR head's positional embedding fixes the input size.
    #[error("model {name} has a TR head trained on a {rows}x{cols} patch grid ({width}x{height} pixels); it cannot run at {asked_width}x{asked_height} (drop --size, or use an MLP-head model)")]
    FixedInputSize { name: String, rows: usize, cols: usize, width: usize, height: usize, asked_width: u32, asked_height: u32 },
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
    pub head: Option<crate::pipeline::head::Head>,
}

impl Model {
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
                let head = crate::pipeline::head::Head::load(spec.kind, &head_dir).map_err(|e| match e {
                    crate::pipeline::head::HeadError::BadFile { path, reason } => ModelError::BadFile { path, reason },
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
        Ok(Model { dir: dir.into(), manifest, centroids: l2_normalize_rows(centroids), head })
    }

    /// Writes the manifest and centroids into `dir` (created if needed).
    pub fn save(dir: &Path, manifest: &Manifest, centroids: &Array2<f32>) -> Result<(), ModelError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let centroids_path = dir.join(&manifest.concepts.centroids);
        let file = std::fs::File::create(&centroids_path).map_err(io(&centroids_path))?;
        centroids
            .write_npy(std::io::BufWriter::new(file))
            .map_err(|e| ModelError::BadFile { path: centroids_path.clone(), reason: e.to_string() })?;
        let manifest_path = dir.join("model.toml");
        std::fs::write(&manifest_path, manifest.to_toml()).map_err(io(&manifest_path))
    }

    /// Number of concepts.
    pub fn num_concepts(&self) -> usize {
        self.centroids.nrows()
    }
}

/// Scales every row to unit L2 norm (rows of zeros stay zero).
pub fn l2_normalize_rows(mut rows: Array2<f32>) -> Array2<f32> {
    for mut row in rows.axis_iter_mut(Axis(0)) {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row /= norm;
        }
    }
    rows
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
    fn rows_are_normalised() {
        let m = l2_normalize_rows(ndarray::array![[3.0, 4.0], [0.0, 0.0]]);
        assert_eq!(m, ndarray::array![[0.6, 0.8], [0.0, 0.0]]);
    }

    #[test]
    fn colours_are_distinct() {
        let colours: std::collections::HashSet<_> = (0..64).map(default_color).collect();
        assert_eq!(colours.len(), 64);
    }
}
