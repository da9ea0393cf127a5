//! Dense CRF refinement (Krähenbühl & Koltun, 2011), as CAUSE and STEGO
//! post-process their predictions: mean-field inference over a fully
//! connected CRF whose pairwise terms are a Gaussian kernel on pixel
//! position and a bilateral kernel on position and colour, both Potts. The
//! filtering in each iteration uses the permutohedral lattice (Adams, Baek
//! & Davis, 2010), so its cost grows with the pixels, not their square.
//!
//! The unary term is `-log softmax(scale * s / |s|)` of the bilinearly
//! upsampled concept scores `s` of each pixel: the scores are dot products
//! of an un-normalised feature with unit concept vectors, so dividing by
//! their norm gives cosine-like values in [-1, 1] whatever the feature's
//! length (CAUSE applies the CRF to `softmax(2 * cosine)`).

use std::collections::HashMap;

use image::{GrayImage, RgbImage};
use ndarray::Array3;
use rayon::prelude::*;

use super::postprocess::ScoreSampler;
use super::preprocess::Placement;

/// Parameters of the dense CRF; the defaults are CAUSE's (and STEGO's):
/// 10 iterations, Gaussian kernel σ 1 px weight 3, bilateral kernel σ 67 px
/// and 3 colour levels (of 255) weight 4, unary from `softmax(2 * cosine)`.
#[derive(Debug, Clone, Copy)]
pub struct DenseCrf {
    /// Mean-field iterations.
    pub iterations: usize,
    /// Spatial standard deviation of the Gaussian (smoothness) kernel, pixels.
    pub gaussian_xy: f32,
    /// Weight of the Gaussian kernel.
    pub gaussian_weight: f32,
    /// Spatial standard deviation of the bilateral (appearance) kernel, pixels.
    pub bilateral_xy: f32,
    /// Colour standard deviation of the bilateral kernel, in 0..255 levels.
    pub bilateral_rgb: f32,
    /// Weight of the bilateral kernel.
    pub bilateral_weight: f32,
    /// Multiplies the normalised scores before the softmax of the unary term.
    pub score_scale: f32,
}

impl Default for DenseCrf {
    fn default() -> Self {
        DenseCrf { iterations: 10, gaussian_xy: 1.0, gaussian_weight: 3.0, bilateral_xy: 67.0, bilateral_rgb: 3.0, bilateral_weight: 4.0, score_scale: 2.0 }
    }
}

impl DenseCrf {
    /// Refined label map at the size of `image`.
    pub fn labels(&self, scores: &Array3<f32>, placement: &Placement, patch: u32, image: &RgbImage) -> GrayImage {
        let (w, h) = image.dimensions();
        let k = scores.dim().2;
        let unary = self.unary(scores, placement, patch, w, h);
        let positions = |sigma: f32| -> Vec<[f32; 2]> { (0..h).flat_map(|y| (0..w).map(move |x| [x as f32 / sigma, y as f32 / sigma])).collect() };
        let smoothness = Kernel::new(Lattice::new(&positions(self.gaussian_xy)), self.gaussian_weight);
        let appearance: Vec<[f32; 5]> = image
            .enumerate_pixels()
            .map(|(x, y, p)| {
                let [r, g, b] = p.0.map(|v| v as f32 / self.bilateral_rgb);
                [x as f32 / self.bilateral_xy, y as f32 / self.bilateral_xy, r, g, b]
            })
            .collect();
        let appearance = Kernel::new(Lattice::new(&appearance), self.bilateral_weight);

        let mut q = unary.iter().map(|u| -u).collect::<Vec<f32>>();
        softmax_rows(&mut q, k);
        for _ in 0..self.iterations {
            let mut logits: Vec<f32> = unary.iter().map(|u| -u).collect();
            for kernel in [&smoothness, &appearance] {
                let message = kernel.apply(&q, k);
                logits.par_iter_mut().zip(message.par_iter()).for_each(|(l, m)| *l += kernel.weight * m);
            }
            softmax_rows(&mut logits, k);
            q = logits;
        }
        let labels = q.par_chunks(k).map(|p| crate::linalg::argmax(p) as u8).collect();
        GrayImage::from_raw(w, h, labels).expect("buffer sized to the image")
    }

    /// `-log softmax(scale * s / |s|)` per pixel of the `w` x `h` output,
    /// `s` the bilinearly upsampled scores; `[pixel][concept]`, flattened.
    fn unary(&self, scores: &Array3<f32>, placement: &Placement, patch: u32, w: u32, h: u32) -> Vec<f32> {
        let sampler = ScoreSampler::new(scores, placement, patch, w, h);
        let k = sampler.k;
        let mut unary = vec![0f32; (w * h) as usize * k];
        unary.par_chunks_mut(w as usize * k).zip(sampler.ys.par_iter()).for_each(|(row, &y)| {
            for (px, &x) in row.chunks_mut(k).zip(&sampler.xs) {
                sampler.sample(y, x, px);
                let norm = px.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                px.iter_mut().for_each(|v| *v *= self.score_scale / norm);
                softmax(px);
                px.iter_mut().for_each(|v| *v = -v.max(1e-10).ln());
            }
        });
        unary
    }
}

/// Softmax of every row of `k` values of `x`, in place.
fn softmax_rows(x: &mut [f32], k: usize) {
    x.par_chunks_mut(k).for_each(softmax);
}

/// Softmax of `row`, in place.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

/// One Potts pairwise term: a lattice and its weight, normalised
/// symmetrically (as the reference implementation's default) so that every
/// pixel's kernel weights sum to about one.
struct Kernel {
    lattice: Box<dyn Filter>,
    norm: Vec<f32>,
    weight: f32,
}

impl Kernel {
    fn new(lattice: impl Filter + 'static, weight: f32) -> Self {
        let ones = vec![1f32; lattice.points()];
        let norm = lattice.filter(&ones, 1).into_iter().map(|n| 1.0 / (n + 1e-20).sqrt()).collect();
        Kernel { lattice: Box::new(lattice), norm, weight }
    }

    /// `norm * filter(q * norm)` for every concept channel.
    fn apply(&self, q: &[f32], k: usize) -> Vec<f32> {
        let scaled: Vec<f32> = q.par_chunks(k).zip(self.norm.par_iter()).flat_map_iter(|(p, n)| p.iter().map(move |v| v * n)).collect();
        let mut out = self.lattice.filter(&scaled, k);
        out.par_chunks_mut(k).zip(self.norm.par_iter()).for_each(|(p, n)| p.iter_mut().for_each(|v| *v *= n));
        out
    }
}

/// A Gaussian filter over the points a lattice was built from.
trait Filter: Send + Sync {
    /// Number of points.
    fn points(&self) -> usize;
    /// Gaussian-weighted sums of `values` (`k` per point) at every point.
    fn filter(&self, values: &[f32], k: usize) -> Vec<f32>;
}

/// The permutohedral lattice of `D`-dimensional features (each already
/// divided by its standard deviation): every point is splatted onto the
/// `D + 1` vertices of its enclosing simplex with barycentric weights,
/// the lattice is blurred along each of its `D + 1` axes with a [1 2 1]
/// kernel, and the result is sliced back at the points.
struct Lattice<const D: usize> {
    /// Per point, its `D + 1` vertices (lattice point indices).
    vertices: Vec<u32>,
    /// Per point, the barycentric weight of each vertex.
    weights: Vec<f32>,
    /// Per axis and lattice point, its two neighbours along that axis
    /// (`u32::MAX` where the neighbour holds no point).
    neighbours: Vec<[u32; 2]>,
    /// Lattice points.
    size: usize,
}

impl<const D: usize> Lattice<D> {
    fn new(features: &[[f32; D]]) -> Self {
        let d = D as i32;
        // Scales each coordinate so that the blur's variance matches a unit
        // Gaussian in feature space (Adams et al., section 3.1).
        let scale: [f32; D] = std::array::from_fn(|i| (d as f32 + 1.0) * (2.0f32 / 3.0).sqrt() / (((i + 1) * (i + 2)) as f32).sqrt());
        let mut index: HashMap<[i16; D], u32> = HashMap::with_capacity(features.len());
        let mut keys: Vec<[i16; D]> = Vec::new();
        let mut vertices = Vec::with_capacity(features.len() * (D + 1));
        let mut weights = Vec::with_capacity(features.len() * (D + 1));
        let mut elevated = vec![0f32; D + 1];
        let mut nearest = vec![0i32; D + 1];
        let mut rank = vec![0i32; D + 1];
        let mut barycentric = vec![0f32; D + 2];
        for f in features {
            // Elevate onto the hyperplane x·1 = 0 of R^(D+1).
            let mut sum = 0.0;
            for j in (1..=D).rev() {
                let cf = f[j - 1] * scale[j - 1];
                elevated[j] = sum - j as f32 * cf;
                sum += cf;
            }
            elevated[0] = sum;
            // The nearest remainder-0 lattice point, and the order of the
            // differences (which simplex the point is in).
            let mut total = 0;
            for i in 0..=D {
                let rounded = (elevated[i] / (d + 1) as f32).round() as i32;
                nearest[i] = rounded * (d + 1);
                total += rounded;
            }
            rank.iter_mut().for_each(|r| *r = 0);
            for i in 0..D {
                for j in i + 1..=D {
                    if elevated[i] - (nearest[i] as f32) < elevated[j] - (nearest[j] as f32) {
                        rank[i] += 1;
                    } else {
                        rank[j] += 1;
                    }
                }
            }
            for i in 0..=D {
                rank[i] += total;
                if rank[i] < 0 {
                    rank[i] += d + 1;
                    nearest[i] += d + 1;
                } else if rank[i] > d {
                    rank[i] -= d + 1;
                    nearest[i] -= d + 1;
                }
            }
            barycentric.iter_mut().for_each(|b| *b = 0.0);
            for i in 0..=D {
                let v = (elevated[i] - nearest[i] as f32) / (d + 1) as f32;
                barycentric[(d - rank[i]) as usize] += v;
                barycentric[(d - rank[i] + 1) as usize] -= v;
            }
            barycentric[0] += 1.0 + barycentric[D + 1];
            // The simplex's vertices: the remainder-0 point moved by the
            // canonical simplex's vertex for each remainder.
            for remainder in 0..=d {
                let key: [i16; D] = std::array::from_fn(|i| {
                    let canonical = if rank[i] <= d - remainder { remainder } else { remainder - (d + 1) };
                    (nearest[i] + canonical) as i16
                });
                let id = *index.entry(key).or_insert_with(|| {
                    keys.push(key);
                    (keys.len() - 1) as u32
                });
                vertices.push(id);
                weights.push(barycentric[remainder as usize]);
            }
        }
        // Neighbours along axis j: +1 on every coordinate but j, -D on j
        // (and the opposite); the last axis moves every stored coordinate.
        let neighbours = (0..=D)
            .flat_map(|axis| {
                let (keys, index) = (&keys, &index);
                keys.iter().map(move |key| {
                    let step = |sign: i16| -> [i16; D] { std::array::from_fn(|i| if i == axis { key[i] - sign * d as i16 } else { key[i] + sign }) };
                    [1, -1].map(|sign| index.get(&step(sign)).copied().unwrap_or(u32::MAX))
                })
            })
            .collect();
        Lattice { vertices, weights, neighbours, size: keys.len() }
    }
}

impl<const D: usize> Filter for Lattice<D> {
    fn points(&self) -> usize {
        self.vertices.len() / (D + 1)
    }

    fn filter(&self, values: &[f32], k: usize) -> Vec<f32> {
        let mut lattice = vec![0f32; self.size * k];
        for (point, value) in values.chunks(k).enumerate() {
            for v in 0..=D {
                let (id, w) = (self.vertices[point * (D + 1) + v] as usize, self.weights[point * (D + 1) + v]);
                for (l, x) in lattice[id * k..(id + 1) * k].iter_mut().zip(value) {
                    *l += w * x;
                }
            }
        }
        let mut blurred = vec![0f32; self.size * k];
        for axis in 0..=D {
            let neighbours = &self.neighbours[axis * self.size..(axis + 1) * self.size];
            let source = &lattice;
            blurred.par_chunks_mut(k).zip(neighbours.par_iter()).enumerate().for_each(|(id, (out, pair))| {
                let at = |n: u32| (n != u32::MAX).then(|| &source[n as usize * k..(n as usize + 1) * k]);
                let (a, b) = (at(pair[0]), at(pair[1]));
                for c in 0..k {
                    out[c] = source[id * k + c] + 0.5 * (a.map_or(0.0, |a| a[c]) + b.map_or(0.0, |b| b[c]));
                }
            });
            std::mem::swap(&mut lattice, &mut blurred);
        }
        let alpha = 1.0 / (1.0 + 2f32.powi(-(D as i32)));
        let mut out = vec![0f32; values.len()];
        out.par_chunks_mut(k).enumerate().for_each(|(point, o)| {
            for v in 0..=D {
                let (id, w) = (self.vertices[point * (D + 1) + v] as usize, self.weights[point * (D + 1) + v]);
                for (x, l) in o.iter_mut().zip(&lattice[id * k..(id + 1) * k]) {
                    *x += alpha * w * l;
                }
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Barycentric weights are a partition of unity.
    #[test]
    fn every_point_splats_with_weights_that_sum_to_one() {
        let features: Vec<[f32; 3]> = (0..50).map(|i| [i as f32 * 0.37, (i * i) as f32 * 0.011, -(i as f32) * 0.2]).collect();
        let lattice = Lattice::new(&features);
        for w in lattice.weights.chunks(4) {
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{w:?}");
            assert!(w.iter().all(|&x| x >= -1e-6), "{w:?}");
        }
    }

    /// The lattice approximates a Gaussian: far points do not reach each
    /// other, near ones do, and closer means more.
    #[test]
    fn the_filter_weighs_near_points_more_than_far_ones() {
        let features: Vec<[f32; 1]> = vec![[0.0], [0.5], [2.0], [20.0]];
        let lattice = Lattice::new(&features);
        let at = |source: usize| {
            let mut values = vec![0f32; 4];
            values[source] = 1.0;
            lattice.filter(&values, 1)
        };
        let from_first = at(0);
        assert!(from_first[0] > from_first[1] && from_first[1] > from_first[2], "{from_first:?}");
        assert!(from_first[2] > 0.0);
        assert_eq!(from_first[3], 0.0, "a point 20 standard deviations away gets nothing");
        let from_second = at(1);
        assert!((from_first[1] - from_second[0]).abs() < 0.05 * from_first[1], "symmetric: {} vs {}", from_first[1], from_second[0]);
    }
}
