//! `causeseg fit`: learn a concept mapping from unlabelled images.
//!
//! `--method kmeans`: spherical k-means over the backbone's patch features;
//! the centroids become the model's concepts.

pub mod feature_cache;
pub mod kmeans;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Axis};

use crate::eval::list_images;
use crate::model::manifest::{BackboneRef, ConceptSpec, InputSpec, Manifest, FORMAT_VERSION};
use crate::model::{default_color, l2_normalize_rows, Model, ModelError};
use crate::pipeline::preprocess::decode_file;
use crate::pipeline::{FeatureExtractor, SegmentError};
use crate::progress::Progress;
use feature_cache::FeatureCache;

/// Errors of a fit run.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// An image directory could not be listed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// No usable image was found.
    #[error("no JPEG or PNG images in {0}")]
    NoImages(String),
    /// Fewer patch tokens than clusters.
    #[error("{tokens} patch tokens from {images} images is fewer than the {clusters} clusters asked for")]
    TooFewTokens { tokens: usize, images: usize, clusters: usize },
    /// Backbone or model problems.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// Writing the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// All JPEG/PNG files directly inside each of `dirs`.
pub fn collect_images(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, FitError> {
    let mut images = Vec::new();
    for dir in dirs {
        images.extend(list_images(dir).map_err(|source| FitError::Io { path: dir.clone(), source })?);
    }
    if images.is_empty() {
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(FitError::NoImages(names.join(", ")));
    }
    Ok(images)
}

/// Unit-norm patch features of every readable image, one token per row,
/// read from `cache` when present there. Unreadable images are skipped with
/// a warning; returns the rows and the number of images used.
pub fn extract_tokens(extractor: &mut FeatureExtractor, images: &[PathBuf], cache: &FeatureCache) -> Result<(Array2<f32>, usize), FitError> {
    let mut bar = Progress::new(images.len(), "features");
    let mut grids = Vec::new();
    let mut skipped = 0;
    for path in images {
        let result = cache.get_or_compute(path, || {
            let image = decode_file(path)?;
            Ok::<_, SegmentError>(extractor.features(&image, &path.display().to_string())?.0)
        });
        match result {
            Ok(features) => {
                let (rows, cols, dim) = features.dim();
                grids.push(features.into_shape_with_order((rows * cols, dim)).expect("contiguous"));
            }
            Err(SegmentError::Preprocess(e)) => {
                bar.suspend(|| log::warn!("skipped: {e}"));
                skipped += 1;
            }
            Err(e) => return Err(e.into()),
        }
        bar.inc();
    }
    bar.finish();
    if skipped > 0 {
        log::warn!("{skipped} of {} images could not be read and were skipped", images.len());
    }
    if grids.is_empty() {
        return Err(FitError::NoImages(format!("{} files, none readable", images.len())));
    }
    let views: Vec<_> = grids.iter().map(|g| g.view()).collect();
    let tokens = ndarray::concatenate(Axis(0), &views).expect("same feature dim");
    Ok((l2_normalize_rows(tokens), grids.len()))
}

/// Builds the manifest of a k-means model.
pub fn kmeans_manifest(name: &str, backbone: BackboneRef, input: InputSpec, clusters: usize, description: String) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        name: name.into(),
        description,
        backbone,
        input,
        concepts: ConceptSpec {
            centroids: "centroids.npy".into(),
            names: (0..clusters).map(|i| format!("concept {i}")).collect(),
            colors: (0..clusters).map(default_color).collect(),
        },
        head: None,
    }
}

/// Clusters the tokens of `images` into `options.k` concepts and writes a
/// complete model directory to `out`.
pub fn fit_kmeans(
    extractor: &mut FeatureExtractor,
    images: &[PathBuf],
    manifest_for: impl FnOnce(usize) -> Manifest,
    options: &kmeans::KMeansOptions,
    cache: &FeatureCache,
    out: &Path,
) -> Result<kmeans::KMeans, FitError> {
    let (tokens, used) = extract_tokens(extractor, images, cache)?;
    if tokens.nrows() < options.k {
        return Err(FitError::TooFewTokens { tokens: tokens.nrows(), images: used, clusters: options.k });
    }
    log::info!("clustering {} tokens from {used} images into {} concepts", tokens.nrows(), options.k);
    let result = kmeans::spherical_kmeans(tokens.view(), options);
    log::info!("k-means: mean cosine {:.4} after {} iterations", result.objective, result.iterations);
    Model::save(out, &manifest_for(used), &result.centroids)?;
    Ok(result)
}
