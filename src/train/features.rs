//! Training data: backbone feature grids of every readable image, read from
//! the feature cache (the backbone only runs for images not cached yet), and
//! CAUSE's grid sampling of one token per window.

use std::path::{Path, PathBuf};

use image::RgbImage;
use ndarray::{Array2, Array3, ArrayView2, Axis};
use rand::Rng;

use super::augment;
use super::feature_cache::FeatureCache;
use super::{Result, TrainError};
use crate::pipeline::{PatchInference, SegmentError};
use crate::linalg::l2_normalize_rows;
use crate::progress::Progress;
use crate::source::decode_file;

/// Which view of an image the backbone sees: the whole image, its mirror,
/// one of CAUSE's five crops (four corners and the centre, each half the
/// width and height, resized to the model input like the whole image, so
/// the backbone sees the scene at twice the resolution), or a random
/// training view (crop, mirror and photometric jitter: [`augment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The image as it is.
    Full,
    /// Mirrored left to right (flip averaging at evaluation).
    Mirrored,
    /// Five-crop `0..5`: top-left, top-right, bottom-left, bottom-right, centre.
    Crop(usize),
    /// Random training view `i` ([`augment::random_view`]).
    Augmented(usize),
}

impl View {
    /// The whole image and its five crops.
    pub const FULL_AND_FIVE_CROPS: [View; 6] = [View::Full, View::Crop(0), View::Crop(1), View::Crop(2), View::Crop(3), View::Crop(4)];

    /// The sub-directory of the feature cache holding this view's features.
    pub fn cache_root(self, cache: &Path) -> PathBuf {
        match self {
            View::Full => cache.to_path_buf(),
            View::Mirrored => cache.join("mirrored"),
            View::Crop(i) => cache.join(format!("crop{i}")),
            View::Augmented(i) => cache.join(format!("augmented-v{}-{i}", augment::AUGMENT_VERSION)),
        }
    }

    /// This view of `image`.
    pub fn apply(self, mut image: RgbImage) -> RgbImage {
        match self {
            View::Full => image,
            View::Mirrored => {
                image::imageops::flip_horizontal_in_place(&mut image);
                image
            }
            View::Crop(i) => {
                let (w, h) = image.dimensions();
                let (cw, ch) = ((w / 2).max(1), (h / 2).max(1));
                let (x, y) = match i {
                    0 => (0, 0),
                    1 => (w - cw, 0),
                    2 => (0, h - ch),
                    3 => (w - cw, h - ch),
                    _ => ((w - cw) / 2, (h - ch) / 2),
                };
                image::imageops::crop_imm(&image, x, y, cw, ch).to_image()
            }
            View::Augmented(i) => augment::random_view(&image, i),
        }
    }
}

/// Feature grids `[rows, cols, D]` of a set of images, all of one geometry.
#[derive(Default)]
pub struct FeatureSet {
    /// One grid per usable image.
    pub grids: Vec<Array3<f32>>,
    /// The image each grid came from.
    pub paths: Vec<PathBuf>,
    /// Images that could not be read and were skipped.
    pub skipped: usize,
}

impl FeatureSet {
    /// Features of `images` from `cache`, computing missing ones with the
    /// backbone that `make_inference` loads on first need. Unreadable
    /// images are skipped with a warning and counted; none readable is an
    /// error naming how many were tried. `view` picks the whole images,
    /// their mirrors or one of the five crops (give each view its own
    /// cache, see [`View::cache_root`]).
    pub fn load(
        images: &[PathBuf],
        cache: &FeatureCache,
        view: View,
        mut make_inference: impl FnMut() -> std::result::Result<PatchInference, SegmentError>,
        what: &str,
    ) -> Result<Self> {
        /// Why one image gave no features.
        enum Failure {
            /// The image is unusable: skip it.
            Image(String),
            /// The backbone failed: stop.
            Backbone(SegmentError),
        }
        let mut inference: Option<PatchInference> = None;
        let mut bar = Progress::new(images.len(), what);
        let mut set = FeatureSet { grids: Vec::new(), paths: Vec::new(), skipped: 0 };
        for path in images {
            let result = cache.get_or_compute(path, || {
                let image = view.apply(decode_file(path).map_err(|e| Failure::Image(e.to_string()))?);
                if inference.is_none() {
                    inference = Some(make_inference().map_err(Failure::Backbone)?);
                }
                let inference = inference.as_mut().expect("just built");
                match inference.run(&image, &path.display().to_string()) {
                    Ok((grid, _, _)) => Ok(grid),
                    Err(SegmentError::Preprocess(e)) => Err(Failure::Image(e.to_string())),
                    Err(e) => Err(Failure::Backbone(e)),
                }
            });
            match result {
                Ok(grid) => {
                    set.grids.push(grid);
                    set.paths.push(path.clone());
                }
                Err(Failure::Image(e)) => {
                    bar.suspend(|| log::warn!("skipped: {e}"));
                    set.skipped += 1;
                }
                Err(Failure::Backbone(e)) => return Err(e.into()),
            }
            bar.inc();
        }
        bar.finish();
        if set.skipped > 0 {
            log::warn!("{} of {} images could not be read and were skipped", set.skipped, images.len());
        }
        Ok(set)
    }

    /// Builds a set from grids already in memory (tests, tools).
    pub fn from_grids(grids: Vec<Array3<f32>>) -> Self {
        let paths = (0..grids.len()).map(|i| PathBuf::from(format!("grid{i}"))).collect();
        FeatureSet { grids, paths, skipped: 0 }
    }

    /// Checks that there is data and that every grid has the same shape;
    /// returns `(rows, cols, D)`.
    pub fn geometry(&self) -> Result<(usize, usize, usize)> {
        let first = self.grids.first().ok_or_else(|| TrainError::TooLittleData("no readable images".into()))?.dim();
        if let Some((i, g)) = self.grids.iter().enumerate().find(|(_, g)| g.dim() != first) {
            return Err(TrainError::Invalid(format!(
                "{}: feature grid {:?} differs from {:?} of the first image (all images must be resized to one input size)",
                self.paths[i].display(),
                g.dim(),
                first
            )));
        }
        Ok(first)
    }

    /// Adds the grids of `other` (e.g. another view of the same images).
    pub fn append(&mut self, other: FeatureSet) {
        self.grids.extend(other.grids);
        self.paths.extend(other.paths);
        self.skipped += other.skipped;
    }

    /// Splits off the grids from index `at` on (undoes an [`append`](Self::append)).
    pub fn split_off(&mut self, at: usize) -> FeatureSet {
        FeatureSet { grids: self.grids.split_off(at), paths: self.paths.split_off(at), skipped: 0 }
    }

    /// Number of grids (images, or image views).
    pub fn len(&self) -> usize {
        self.grids.len()
    }

    /// True when no image is usable.
    pub fn is_empty(&self) -> bool {
        self.grids.is_empty()
    }

    /// Every token of every grid, `[tokens, D]`, each row scaled to unit norm.
    pub fn unit_tokens(&self) -> Array2<f32> {
        let views: Vec<_> = (0..self.len()).map(|i| self.tokens(i)).collect();
        l2_normalize_rows(ndarray::concatenate(Axis(0), &views).expect("same width"))
    }

    /// All tokens of image `i` as `[rows * cols, D]`.
    pub fn tokens(&self, i: usize) -> ArrayView2<'_, f32> {
        let (rows, cols, dim) = self.grids[i].dim();
        self.grids[i].view().into_shape_with_order((rows * cols, dim)).expect("standard layout")
    }
}

/// CAUSE's stochastic grid sampling: one token from every `window` x `window`
/// block of the patch grid, at a random position inside the block (blocks
/// that do not fit at the right/bottom edge are dropped). Returns the
/// tokens `[blocks, D]` and their flat grid indices.
pub fn grid_sample(grid: &Array3<f32>, window: usize, rng: &mut impl Rng) -> (Array2<f32>, Vec<usize>) {
    let (rows, cols, _) = grid.dim();
    let window = window.max(1);
    let (br, bc) = ((rows / window).max(1), (cols / window).max(1));
    let (wr, wc) = (window.min(rows), window.min(cols));
    let mut indices = Vec::with_capacity(br * bc);
    for r in 0..br {
        for c in 0..bc {
            let y = r * wr + rng.random_range(0..wr);
            let x = c * wc + rng.random_range(0..wc);
            indices.push(y * cols + x);
        }
    }
    let (rows_, cols_, dim) = grid.dim();
    let flat = grid.view().into_shape_with_order((rows_ * cols_, dim)).expect("standard layout");
    (flat.select(Axis(0), &indices), indices)
}

/// Test data: `images` grids `side x side` of 4-d tokens in three noisy
/// blobs (top rows, bottom-left, bottom-right), the split row random.
#[cfg(all(test, feature = "train"))]
pub(crate) fn blob_set(images: usize, side: usize, seed: u64) -> FeatureSet {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let centres = [[1.0f32, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]];
    let grids = (0..images)
        .map(|_| {
            let split = rng.random_range(1..side - 1);
            Array3::from_shape_fn((side, side, 4), |(r, c, d)| {
                let which = if r < split { 0 } else if c < side / 2 { 1 } else { 2 };
                centres[which][d] + rng.random_range(-0.2..0.2)
            })
        })
        .collect();
    FeatureSet::from_grids(grids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn one_token_per_window() {
        let grid = Array3::from_shape_fn((8, 12, 1), |(r, c, _)| (r * 12 + c) as f32);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (tokens, indices) = grid_sample(&grid, 4, &mut rng);
        assert_eq!(tokens.dim(), (6, 1));
        for (b, &i) in indices.iter().enumerate() {
            let (r, c) = (i / 12, i % 12);
            assert_eq!((r / 4, c / 4), (b / 3, b % 3), "token {b} from block of ({r}, {c})");
            assert_eq!(tokens[[b, 0]], i as f32);
        }
    }

    #[test]
    fn five_crops_cover_the_corners_and_the_centre() {
        let image = RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let corner = |v: View| {
            let c = v.apply(image.clone());
            (c.dimensions(), c.get_pixel(0, 0).0[..2].to_vec())
        };
        assert_eq!(corner(View::Crop(0)), ((4, 3), vec![0, 0]));
        assert_eq!(corner(View::Crop(1)), ((4, 3), vec![4, 0]));
        assert_eq!(corner(View::Crop(2)), ((4, 3), vec![0, 3]));
        assert_eq!(corner(View::Crop(3)), ((4, 3), vec![4, 3]));
        assert_eq!(corner(View::Crop(4)), ((4, 3), vec![2, 1]));
        assert_eq!(View::Mirrored.apply(image.clone()).get_pixel(0, 0).0[0], 7);
        assert_eq!(View::Full.apply(image.clone()), image);
    }

    #[test]
    fn mixed_geometries_are_refused() {
        let set = FeatureSet::from_grids(vec![Array3::zeros((2, 2, 3)), Array3::zeros((2, 3, 3))]);
        let err = set.geometry().unwrap_err().to_string();
        assert!(err.contains("grid1") && err.contains("differs"), "{err}");
        assert!(FeatureSet::from_grids(vec![]).geometry().is_err());
    }
}
