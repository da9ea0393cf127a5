//! Postprocessing: per-patch concept scores → bilinear upsampling to the
//! output resolution → argmax label map, and the visualisations built from
//! it (colour mask, overlay, legend).
//!
//! Scoring the un-normalised patch features against the L2-normalised
//! concept vectors (done inside the fused graph) and upsampling the K score
//! maps gives the same argmax as upsampling the features and taking
//! cosines, at a fraction of the cost (K maps instead of D): upsampling is
//! linear and a pixel's feature norm does not change its argmax.

use image::{GrayImage, Luma, Rgb, RgbImage};
use ndarray::{Array2, Array3, ArrayView3};
use rayon::prelude::*;

use super::preprocess::Placement;

/// Per-patch concept scores `[rows, cols, K]`: dot products of each patch
/// feature with each (unit-norm) concept vector.
pub fn concept_scores(features: ArrayView3<f32>, concepts: &Array2<f32>) -> Array3<f32> {
    let (rows, cols, dim) = features.dim();
    let flat = features.to_shape((rows * cols, dim)).expect("contiguous features");
    let scores = flat.dot(&concepts.t());
    crate::linalg::rows_to_grid(scores, rows, cols)
}

/// One axis of the bilinear sampling grid: for each output coordinate, the
/// two neighbouring patch indices and the weight of the second.
pub(super) fn sample_axis(out_len: u32, image_len: u32, scale: f32, offset: f32, patch: u32, grid_len: usize) -> Vec<(usize, usize, f32)> {
    (0..out_len)
        .map(|o| {
            let image_pos = (o as f32 + 0.5) * image_len as f32 / out_len as f32;
            let input_pos = image_pos * scale + offset;
            let g = (input_pos / patch as f32 - 0.5).clamp(0.0, (grid_len - 1) as f32);
            let g0 = g.floor() as usize;
            (g0, (g0 + 1).min(grid_len - 1), g - g0 as f32)
        })
        .collect()
}

/// Bilinear sampling of per-patch scores at the pixels of an output map:
/// the patch pairs and weights of every output row and column.
pub(super) struct ScoreSampler<'a> {
    scores: &'a [f32],
    cols: usize,
    /// Concepts per patch.
    pub k: usize,
    /// Per output column: left and right patch column, weight of the right.
    pub xs: Vec<(usize, usize, f32)>,
    /// Per output row: upper and lower patch row, weight of the lower.
    pub ys: Vec<(usize, usize, f32)>,
}

impl<'a> ScoreSampler<'a> {
    /// Sampling of `scores` (`[rows, cols, K]`, placed in the input as
    /// `placement` says) at an `out_w` x `out_h` map of the source image.
    pub fn new(scores: &'a Array3<f32>, placement: &Placement, patch: u32, out_w: u32, out_h: u32) -> Self {
        let (rows, cols, k) = scores.dim();
        let (iw, ih) = placement.image_size;
        ScoreSampler {
            scores: scores.as_slice().expect("standard layout"),
            cols,
            k,
            xs: sample_axis(out_w, iw, placement.scale.0, placement.offset.0, patch, cols),
            ys: sample_axis(out_h, ih, placement.scale.1, placement.offset.1, patch, rows),
        }
    }

    /// Writes the `K` interpolated scores at output row `y`, column `x`.
    pub fn sample(&self, (y0, y1, wy): (usize, usize, f32), (x0, x1, wx): (usize, usize, f32), out: &mut [f32]) {
        let at = |r: usize, c: usize| &self.scores[(r * self.cols + c) * self.k..(r * self.cols + c + 1) * self.k];
        let (a, b, c, d) = (at(y0, x0), at(y0, x1), at(y1, x0), at(y1, x1));
        let (wa, wb, wc, wd) = ((1.0 - wy) * (1.0 - wx), (1.0 - wy) * wx, wy * (1.0 - wx), wy * wx);
        for (i, v) in out.iter_mut().enumerate() {
            *v = wa * a[i] + wb * b[i] + wc * c[i] + wd * d[i];
        }
    }
}

/// Upsamples per-patch `scores` bilinearly to an `out_w` x `out_h` map of the
/// source image and takes the per-pixel argmax (concept id).
pub fn upsample_argmax(scores: &Array3<f32>, placement: &Placement, patch: u32, out_w: u32, out_h: u32) -> GrayImage {
    let sampler = ScoreSampler::new(scores, placement, patch, out_w, out_h);
    let mut labels = vec![0u8; (out_w * out_h) as usize];
    labels.par_chunks_mut(out_w as usize).zip(sampler.ys.par_iter()).for_each(|(row, &y)| {
        let mut values = vec![0f32; sampler.k];
        for (px, &x) in row.iter_mut().zip(&sampler.xs) {
            sampler.sample(y, x, &mut values);
            *px = crate::linalg::argmax(&values) as u8;
        }
    });
    GrayImage::from_raw(out_w, out_h, labels).expect("buffer sized to the image")
}

/// Per-patch `scores` (placed in the input as `placement` says) sampled
/// bilinearly at the centres of a `rows` x `cols` grid of cells spread
/// evenly over the source image: the patch centres of a stretch-resized
/// input at another size (multi-scale averaging).
pub fn resample_scores(scores: &Array3<f32>, placement: &Placement, patch: u32, rows: usize, cols: usize) -> Array3<f32> {
    let sampler = ScoreSampler::new(scores, placement, patch, cols as u32, rows as u32);
    let mut out = Array3::zeros((rows, cols, sampler.k));
    for (r, &y) in sampler.ys.iter().enumerate() {
        for (c, &x) in sampler.xs.iter().enumerate() {
            sampler.sample(y, x, out.slice_mut(ndarray::s![r, c, ..]).as_slice_mut().expect("standard layout"));
        }
    }
    out
}

/// Fraction of pixels assigned to each of `k` concepts.
pub fn concept_fractions(labels: &GrayImage, k: usize) -> Vec<f32> {
    let mut counts = vec![0u64; k];
    for p in labels.as_raw() {
        if let Some(c) = counts.get_mut(*p as usize) {
            *c += 1;
        }
    }
    let total = labels.as_raw().len().max(1) as f32;
    counts.into_iter().map(|c| c as f32 / total).collect()
}

/// Paints each concept id with its colour.
pub fn colorize(labels: &GrayImage, colors: &[[u8; 3]]) -> RgbImage {
    RgbImage::from_fn(labels.width(), labels.height(), |x, y| {
        let Luma([id]) = *labels.get_pixel(x, y);
        Rgb(colors.get(id as usize).copied().unwrap_or([0, 0, 0]))
    })
}

/// Alpha-blends `mask` over `image` (`alpha` = mask opacity, 0..=1); the
/// mask is resized (nearest) if its size differs.
pub fn overlay(image: &RgbImage, mask: &RgbImage, alpha: f32) -> RgbImage {
    let alpha = alpha.clamp(0.0, 1.0);
    let (w, h) = image.dimensions();
    let (mw, mh) = mask.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let m = mask.get_pixel(x * mw / w, y * mh / h);
        let p = image.get_pixel(x, y);
        Rgb(std::array::from_fn(|c| (p[c] as f32 * (1.0 - alpha) + m[c] as f32 * alpha).round() as u8))
    })
}

/// Draws `text` with the 8x8 bitmap font at (x, y), `scale` pixels per dot.
pub fn draw_text(image: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32, color: [u8; 3]) {
    use font8x8::UnicodeFonts;
    for (i, ch) in text.chars().enumerate() {
        let Some(glyph) = font8x8::BASIC_FONTS.get(ch) else { continue };
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..8u32 {
                if bits & (1 << gx) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = x + (i as u32 * 8 + gx) * scale + dx;
                        let py = y + gy as u32 * scale + dy;
                        if px < image.width() && py < image.height() {
                            image.put_pixel(px, py, Rgb(color));
                        }
                    }
                }
            }
        }
    }
}

/// A legend image: one row per concept, colour swatch then "id name".
pub fn legend(names: &[String], colors: &[[u8; 3]]) -> RgbImage {
    const ROW: u32 = 24;
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0) as u32 + 4;
    let mut image = RgbImage::from_pixel(40 + longest * 16, ROW * names.len().max(1) as u32, Rgb([255, 255, 255]));
    for (i, (name, color)) in names.iter().zip(colors).enumerate() {
        let top = i as u32 * ROW;
        for y in top + 2..top + ROW - 2 {
            for x in 4..32 {
                image.put_pixel(x, y, Rgb(*color));
            }
        }
        draw_text(&mut image, &format!("{i:>2} {name}"), 40, top + 4, 2, [0, 0, 0]);
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn identity_placement(w: u32, h: u32) -> Placement {
        Placement { image_size: (w, h), scale: (1.0, 1.0), offset: (0.0, 0.0) }
    }

    #[test]
    fn resampling_follows_the_patch_centres() {
        // A 56x28 image as a 4x2 grid of 14-pixel patches; score = column.
        let scores = Array3::from_shape_fn((2, 4, 1), |(_, c, _)| c as f32);
        let placement = identity_placement(56, 28);
        assert_eq!(resample_scores(&scores, &placement, 14, 2, 4), scores, "the same grid");
        // Eight columns of 7 pixels: centres at 3.5, 10.5, ... = patch coordinates j/2 - 0.25.
        let finer = resample_scores(&scores, &placement, 14, 3, 8);
        for c in 0..8 {
            let expected = (c as f32 / 2.0 - 0.25).clamp(0.0, 3.0);
            assert!((0..3).all(|r| (finer[[r, c, 0]] - expected).abs() < 1e-6), "column {c}: {} vs {expected}", finer[[0, c, 0]]);
        }
    }

    #[test]
    fn scores_are_dot_products() {
        let features = Array3::from_shape_vec((1, 2, 2), vec![1.0, 0.0, 0.0, 2.0]).unwrap();
        let concepts = array![[1.0, 0.0], [0.0, 1.0]];
        let s = concept_scores(features.view(), &concepts);
        assert_eq!(s.into_raw_vec_and_offset().0, vec![1.0, 0.0, 0.0, 2.0]);
    }

    #[test]
    fn upsampling_splits_between_patches() {
        // Two patches side by side (patch 2): left says concept 0, right concept 1.
        let scores = Array3::from_shape_vec((1, 2, 2), vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let labels = upsample_argmax(&scores, &identity_placement(4, 2), 2, 4, 2);
        assert_eq!(labels.as_raw(), &vec![0, 0, 1, 1, 0, 0, 1, 1]);
        // At double resolution the boundary stays in the middle.
        let labels = upsample_argmax(&scores, &identity_placement(4, 2), 2, 8, 4);
        assert_eq!(&labels.as_raw()[..8], &[0, 0, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn fractions_sum_to_one() {
        let labels = GrayImage::from_raw(2, 2, vec![0, 1, 1, 1]).unwrap();
        assert_eq!(concept_fractions(&labels, 3), vec![0.25, 0.75, 0.0]);
    }

    #[test]
    fn overlay_blends() {
        let image = RgbImage::from_pixel(2, 2, Rgb([0, 0, 0]));
        let mask = RgbImage::from_pixel(1, 1, Rgb([200, 100, 0]));
        assert_eq!(overlay(&image, &mask, 0.5).get_pixel(1, 1), &Rgb([100, 50, 0]));
    }

    #[test]
    fn legend_has_a_row_per_concept() {
        let l = legend(&["sky".into(), "road".into()], &[[1, 2, 3], [4, 5, 6]]);
        assert_eq!(l.height(), 48);
        assert_eq!(l.get_pixel(10, 30), &Rgb([4, 5, 6]));
    }
}
