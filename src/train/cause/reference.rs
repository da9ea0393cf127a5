//! A supervised reference for the protocol, never a model to ship: the
//! probe a perfect clustering could at best find. Each training patch takes
//! the majority label of its pixels; the concept of a class is the mean
//! direction of its patches' (whitened, unit) tokens. Measured on the
//! held-out drive like any probe, it says how far a cosine probe on these
//! tokens can go, so the unsupervised rows can be read against it. It reads
//! the training drives' labels, which no unsupervised method does.

use image::GrayImage;
use ndarray::Array2;

use crate::linalg::l2_normalize_rows;
use crate::pipeline::preprocess::Placement;
use crate::train::features::FeatureSet;

/// The majority class of every patch (`rows * cols`, row-major) of a label
/// map placed in the model input by `placement`, with `patch`-pixel
/// patches; `None` where no pixel of a class below `classes` falls (all
/// ignored, or outside the image).
pub fn patch_majority(truth: &GrayImage, placement: &Placement, patch: u32, rows: usize, cols: usize, classes: usize) -> Vec<Option<usize>> {
    let mut counts = vec![0u32; rows * cols * classes];
    // Label maps may differ in size from the image the placement is for.
    let (iw, ih) = placement.image_size;
    let (sx, sy) = (iw as f32 / truth.width() as f32, ih as f32 / truth.height() as f32);
    for (x, y, value) in truth.enumerate_pixels() {
        let class = value.0[0] as usize;
        if class >= classes {
            continue;
        }
        let input_x = (x as f32 + 0.5) * sx * placement.scale.0 + placement.offset.0;
        let input_y = (y as f32 + 0.5) * sy * placement.scale.1 + placement.offset.1;
        let (col, row) = ((input_x / patch as f32).floor(), (input_y / patch as f32).floor());
        if col < 0.0 || row < 0.0 || col as usize >= cols || row as usize >= rows {
            continue;
        }
        counts[(row as usize * cols + col as usize) * classes + class] += 1;
    }
    counts
        .chunks(classes)
        .map(|cell| {
            let best = (0..classes).max_by_key(|&c| (cell[c], std::cmp::Reverse(c)))?;
            (cell[best] > 0).then_some(best)
        })
        .collect()
}

/// The class-means probe `[classes, D]`: row `c` is the unit mean of the
/// unit tokens of `set` whose patch majority (`majorities[i]` for image
/// `i`, from [`patch_majority`]) is `c`; zero for a class no patch has.
pub fn class_means_probe(set: &FeatureSet, majorities: &[Vec<Option<usize>>], classes: usize) -> Array2<f32> {
    let dim = set.grids.first().map_or(0, |g| g.dim().2);
    let mut sums = Array2::<f32>::zeros((classes, dim));
    for (i, labels) in majorities.iter().enumerate() {
        let tokens = l2_normalize_rows(set.tokens(i).to_owned());
        for (token, label) in tokens.rows().into_iter().zip(labels) {
            if let Some(c) = label {
                let mut row = sums.row_mut(*c);
                row += &token;
            }
        }
    }
    l2_normalize_rows(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn stretch(w: u32, h: u32, scale: f32) -> Placement {
        Placement { image_size: (w, h), scale: (scale, scale), offset: (0.0, 0.0) }
    }

    #[test]
    fn each_patch_takes_its_pixels_majority_and_ignored_pixels_vote_for_nothing() {
        // A 4x2 label map, patches of 2 pixels at scale 1: two patches.
        // Left patch: three pixels of class 1, one of class 0. Right patch:
        // only the ignore value 9.
        let truth = GrayImage::from_raw(4, 2, vec![1, 1, 9, 9, 0, 1, 9, 9]).unwrap();
        assert_eq!(patch_majority(&truth, &stretch(4, 2, 1.0), 2, 1, 2, 3), vec![Some(1), None]);
    }

    #[test]
    fn label_maps_of_another_size_are_mapped_through_the_image_size() {
        // The image is 4x2 and scaled by 0.5 into a 2x1 input of 1-pixel
        // patches; the label map is 8x4 (twice the image). Left half class
        // 0, right half class 2.
        let raw: Vec<u8> = (0..4).flat_map(|_| [0, 0, 0, 0, 2, 2, 2, 2]).collect();
        let truth = GrayImage::from_raw(8, 4, raw).unwrap();
        assert_eq!(patch_majority(&truth, &stretch(4, 2, 0.5), 1, 1, 2, 3), vec![Some(0), Some(2)]);
    }

    #[test]
    fn class_means_are_the_unit_mean_direction_of_each_class() {
        // One image, 1x3 tokens: two of class 0 along x and y, one of class 1 along -x.
        let grid = Array3::from_shape_vec((1, 3, 2), vec![2.0, 0.0, 0.0, 3.0, -1.0, 0.0]).unwrap();
        let set = FeatureSet { grids: vec![grid], paths: vec!["a.png".into()], skipped: 0 };
        let probe = class_means_probe(&set, &[vec![Some(0), Some(0), Some(1)]], 3);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((probe[[0, 0]] - h).abs() < 1e-6 && (probe[[0, 1]] - h).abs() < 1e-6, "{probe}");
        assert_eq!(probe.row(1).to_vec(), vec![-1.0, 0.0]);
        assert_eq!(probe.row(2).to_vec(), vec![0.0, 0.0], "a class without patches has no direction");
    }
}
