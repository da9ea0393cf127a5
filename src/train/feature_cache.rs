//! On-disk cache of backbone features, so that refitting (another seed,
//! another K) or an interrupted run never recomputes the backbone.
//!
//! One `.npy` (float32 `[rows, cols, D]`) per image under
//! `<cache>/features/<backbone sha>-<W>x<H>-<resize>/`, keyed by a SHA-256 of
//! the image file's bytes: a copied, moved or re-extracted data set (new
//! paths, new modification times) still hits the cache, an edited image
//! does not. Files are written atomically, so a run killed half-way resumes
//! with the images it finished.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use ndarray_npy::{read_npy, write_npy};
use sha2::{Digest, Sha256};

use crate::model::manifest::{BackboneRef, InputSpec};

/// A directory of cached feature grids for one backbone and input geometry.
pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    /// The cache for `backbone` at `input`'s size and resize policy, under `root`.
    pub fn new(root: &Path, backbone: &BackboneRef, input: &InputSpec) -> Self {
        let resize = format!("{:?}", input.resize).to_lowercase();
        let name = format!("{}-{}x{}-{resize}", &backbone.sha256[..backbone.sha256.len().min(12)], input.width, input.height);
        FeatureCache { dir: root.join("features").join(name) }
    }

    /// Cached features of `image`, or `compute` them and store the result.
    /// Cache I/O problems only cost a recomputation (logged), never fail.
    pub fn get_or_compute<E>(&self, image: &Path, compute: impl FnOnce() -> Result<Array3<f32>, E>) -> Result<Array3<f32>, E> {
        let Some(path) = self.entry(image) else { return compute() };
        if let Ok(features) = read_npy::<_, Array3<f32>>(&path) {
            return Ok(features);
        }
        let features = compute()?;
        let partial = path.with_extension("npy.partial");
        let stored = std::fs::create_dir_all(&self.dir)
            .map_err(|e| e.to_string())
            .and_then(|_| write_npy(&partial, &features).map_err(|e| e.to_string()))
            .and_then(|_| std::fs::rename(&partial, &path).map_err(|e| e.to_string()));
        if let Err(e) = stored {
            log::debug!("feature cache: cannot store {}: {e}", path.display());
        }
        Ok(features)
    }

    fn entry(&self, image: &Path) -> Option<PathBuf> {
        let bytes = std::fs::read(image).ok()?;
        let stem = image.file_stem()?.to_string_lossy();
        Some(self.dir.join(format!("{stem}-{:.16x}.npy", Sha256::digest(&bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::{IMAGENET_MEAN, IMAGENET_STD};
    use crate::pipeline::preprocess::ResizePolicy;

    fn test_cache(root: &Path) -> FeatureCache {
        let backbone = BackboneRef { file: "b".into(), sha256: "0123456789abcdef".into(), patch_size: 14, feature_dim: 2 };
        let input = InputSpec { width: 28, height: 14, mean: IMAGENET_MEAN, std: IMAGENET_STD, resize: ResizePolicy::Stretch };
        FeatureCache::new(root, &backbone, &input)
    }

    #[test]
    fn second_lookup_reads_the_stored_features() {
        let root = tempfile::tempdir().unwrap();
        let image = root.path().join("a.jpg");
        std::fs::write(&image, b"x").unwrap();
        let cache = test_cache(root.path());
        let features = Array3::from_shape_fn((1, 2, 2), |(_, c, d)| (c * 2 + d) as f32);
        let first: Result<_, ()> = cache.get_or_compute(&image, || Ok(features.clone()));
        assert_eq!(first.unwrap(), features);
        let second: Result<_, ()> = cache.get_or_compute(&image, || panic!("must come from the cache"));
        assert_eq!(second.unwrap(), features);
    }

    #[test]
    fn entries_follow_the_image_content_not_its_path_or_time() {
        let root = tempfile::tempdir().unwrap();
        let cache = test_cache(root.path());
        let original = root.path().join("a.jpg");
        std::fs::write(&original, b"pixels").unwrap();
        let features = Array3::from_elem((1, 1, 2), 1.0f32);
        let _: Result<_, ()> = cache.get_or_compute(&original, || Ok(features.clone()));
        let copy_dir = root.path().join("copy");
        std::fs::create_dir(&copy_dir).unwrap();
        let copy = copy_dir.join("a.jpg");
        std::fs::copy(&original, &copy).unwrap();
        let hit: Result<_, ()> = cache.get_or_compute(&copy, || panic!("a copy must hit the cache"));
        assert_eq!(hit.unwrap(), features);
        std::fs::write(&copy, b"edited").unwrap();
        let mut recomputed = false;
        let _: Result<_, ()> = cache.get_or_compute(&copy, || {
            recomputed = true;
            Ok(features.clone())
        });
        assert!(recomputed, "an edited image must be recomputed");
    }
}
