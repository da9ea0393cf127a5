//! Label-free input whitening of the backbone tokens, the first CAUSE
//! stage here: centre the tokens on their training mean and project them
//! onto their top principal directions, each scaled to unit variance.
//!
//! Why: this backbone's tokens share one dominant direction (the top
//! principal component carries about 58 % of the variance on CamVid), so
//! cosines between raw tokens are all high and clusters follow that
//! direction rather than the scene's semantics. Every later stage
//! (clusterbook, head, probe) works in the whitened space; the transform is
//! linear, so it is folded into the head's first layers and the runtime
//! still takes raw backbone tokens.

use nalgebra::{DMatrix, SymmetricEigen};
use ndarray::{Array1, Array2, Axis};
use serde::Serialize;

use super::{Result, TrainError};
use crate::head::{Head, HeadKind, Weights};
use crate::linalg::rows_to_grid;
use crate::train::features::FeatureSet;

/// `z = (x - mean) · projection`: centring, then an optional projection.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTransform {
    /// Mean token `[D]`.
    pub mean: Array1<f32>,
    /// `[D, d]` projection onto the top `d` principal directions scaled by
    /// `1/sqrt(eigenvalue)`; `None` for centring only.
    pub projection: Option<Array2<f32>>,
}

/// What [`InputTransform::fit`] found, for the training report.
#[derive(Debug, Clone, Serialize)]
pub struct WhiteningReport {
    /// Output dimension d (D when only centring).
    pub dims: usize,
    /// Share of the centred variance kept by the `d` directions.
    pub kept_variance: f64,
    /// Share of the centred variance along the top direction.
    pub top_direction_variance: f64,
}

impl InputTransform {
    /// Fits the mean and, with `dims > 0`, the whitening projection to
    /// `dims` dimensions on every token of `set`.
    pub fn fit(set: &FeatureSet, dims: usize) -> Result<(Self, WhiteningReport)> {
        let (_, _, dim) = set.geometry()?;
        if dims > dim {
            return Err(TrainError::Invalid(format!("--whiten {dims} exceeds the feature dimension {dim}")));
        }
        let mut sum = Array1::<f64>::zeros(dim);
        let mut count = 0usize;
        for i in 0..set.len() {
            let tokens = set.tokens(i);
            sum += &tokens.sum_axis(Axis(0)).mapv(f64::from);
            count += tokens.nrows();
        }
        let mean = (sum / count as f64).mapv(|v| v as f32);
        // Covariance, accumulated per image with a BLAS-style product.
        let mut cov = Array2::<f64>::zeros((dim, dim));
        for i in 0..set.len() {
            let centred = &set.tokens(i) - &mean;
            cov += &centred.t().dot(&centred).mapv(f64::from);
        }
        cov /= count.max(2) as f64 - 1.0;
        let eigen = SymmetricEigen::new(DMatrix::from_fn(dim, dim, |r, c| cov[[r, c]]));
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        let total: f64 = eigen.eigenvalues.iter().map(|v| v.max(0.0)).sum();
        let share = |n: usize| order[..n].iter().map(|&i| eigen.eigenvalues[i].max(0.0)).sum::<f64>() / total.max(f64::MIN_POSITIVE);
        let report = WhiteningReport { dims: if dims == 0 { dim } else { dims }, kept_variance: share(if dims == 0 { dim } else { dims }), top_direction_variance: share(1) };
        let projection = (dims > 0).then(|| {
            Array2::from_shape_fn((dim, dims), |(r, c)| {
                let i = order[c];
                (eigen.eigenvectors[(r, i)] / eigen.eigenvalues[i].max(1e-12).sqrt()) as f32
            })
        });
        Ok((InputTransform { mean, projection }, report))
    }

    /// Output dimension for `input` dimensions in.
    pub fn output_dim(&self) -> usize {
        self.projection.as_ref().map_or(self.mean.len(), |p| p.ncols())
    }

    /// Transforms every grid of `set` in place.
    pub fn apply(&self, set: &mut FeatureSet) {
        for grid in &mut set.grids {
            let (rows, cols, dim) = grid.dim();
            let centred = grid.view().into_shape_with_order((rows * cols, dim)).expect("standard layout").to_owned() - &self.mean;
            let out = match &self.projection {
                Some(p) => centred.dot(p),
                None => centred,
            };
            *grid = rows_to_grid(out, rows, cols);
        }
    }

    /// The transform as one linear layer `Linear(D, d)`: `(weight, bias)`.
    pub fn as_linear(&self) -> (Array2<f32>, Array1<f32>) {
        let weight = match &self.projection {
            Some(p) => p.t().to_owned(),
            None => Array2::eye(self.mean.len()),
        };
        let bias = -weight.dot(&self.mean);
        (weight, bias)
    }

    /// The transform itself as an MLP head whose second branch is zero, so
    /// the runtime and the evaluation can apply it unchanged (a k-means
    /// probe on transformed tokens then runs like any CAUSE model).
    pub fn as_head(&self) -> Head {
        let (dim, d) = (self.mean.len(), self.output_dim());
        let (weight, bias) = self.as_linear();
        let mut weights = Weights::default();
        weights.insert("f1_weight", weight);
        weights.insert("f1_bias", bias);
        weights.insert("f2a_weight", Array2::<f32>::zeros((1, dim)));
        weights.insert("f2a_bias", Array1::<f32>::zeros(1));
        weights.insert("f2b_weight", Array2::<f32>::zeros((d, 1)));
        weights.insert("f2b_bias", Array1::<f32>::zeros(d));
        Head::new(HeadKind::Mlp, weights).expect("an MLP layout")
    }

    /// Makes `head`, trained on transformed tokens, accept raw tokens: an
    /// MLP head's first layers (`f1`, `f2a`) absorb the projection and the
    /// mean; a TR head gets the transform as its `input` layer.
    pub fn fold_into_head(&self, head: &mut Head) {
        let kind = head.kind();
        let weights = head.weights_mut();
        match kind {
            HeadKind::Mlp => {
                for layer in ["f1", "f2a"] {
                    let mut weight = weights.matrix(&format!("{layer}_weight")).to_owned();
                    if let Some(p) = &self.projection {
                        weight = weight.dot(&p.t());
                    }
                    let bias = &weights.vector(&format!("{layer}_bias")) - &weight.dot(&self.mean);
                    weights.insert(format!("{layer}_weight"), weight);
                    weights.insert(format!("{layer}_bias"), bias);
                }
            }
            HeadKind::Tr => {
                let (weight, bias) = self.as_linear();
                weights.insert("input_weight", weight);
                weights.insert("input_bias", bias);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Tokens with a strong shared offset and axis-aligned variances 9, 4, 1.
    fn anisotropic_set() -> FeatureSet {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let grids = (0..4)
            .map(|_| Array3::from_shape_fn((10, 10, 3), |(_, _, d)| 5.0 + [3.0f32, 2.0, 1.0][d] * rng.random_range(-1.732..1.732)))
            .collect();
        FeatureSet::from_grids(grids)
    }

    #[test]
    fn whitened_tokens_have_zero_mean_and_unit_variance() {
        let mut set = anisotropic_set();
        let (transform, report) = InputTransform::fit(&set, 2).unwrap();
        assert_eq!(transform.output_dim(), 2);
        // Variances 9 : 4 : 1 → the top two keep 13/14 and the top one 9/14.
        assert!((report.kept_variance - 13.0 / 14.0).abs() < 0.03, "{report:?}");
        assert!((report.top_direction_variance - 9.0 / 14.0).abs() < 0.05, "{report:?}");
        transform.apply(&mut set);
        let all: Vec<_> = (0..set.len()).map(|i| set.tokens(i).to_owned()).collect();
        let views: Vec<_> = all.iter().map(|a| a.view()).collect();
        let z = ndarray::concatenate(Axis(0), &views).unwrap();
        let mean = z.mean_axis(Axis(0)).unwrap();
        let cov = (&z - &mean).t().dot(&(&z - &mean)) / (z.nrows() as f32 - 1.0);
        assert!(mean.iter().all(|v| v.abs() < 1e-3), "{mean}");
        for r in 0..2 {
            for c in 0..2 {
                let expected = if r == c { 1.0 } else { 0.0 };
                assert!((cov[[r, c]] - expected).abs() < 1e-3, "{cov}");
            }
        }
    }

    #[test]
    fn folded_head_on_raw_tokens_equals_head_on_whitened_tokens() {
        let set = anisotropic_set();
        let (transform, _) = InputTransform::fit(&set, 2).unwrap();
        let weights: Weights = [
            ("f1_weight", array![[1.0f32, -2.0]].into_dyn()),
            ("f1_bias", array![0.5f32].into_dyn()),
            ("f2a_weight", array![[0.5f32, 1.0], [-1.0, 0.25]].into_dyn()),
            ("f2a_bias", array![0.1f32, -0.2].into_dyn()),
            ("f2b_weight", array![[2.0f32, -1.0]].into_dyn()),
            ("f2b_bias", array![0.3f32].into_dyn()),
        ]
        .into_iter()
        .collect();
        let head = Head::new(HeadKind::Mlp, weights).unwrap();
        let mut whitened = FeatureSet::from_grids(set.grids.clone());
        transform.apply(&mut whitened);
        let mut folded = head.clone();
        transform.fold_into_head(&mut folded);
        let a = head.forward(whitened.tokens(0)).unwrap();
        let b = folded.forward(set.tokens(0)).unwrap();
        assert!(a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() < 1e-3), "{a} vs {b}");
    }

    #[test]
    fn the_transform_as_a_head_equals_applying_it() {
        let set = anisotropic_set();
        let (transform, _) = InputTransform::fit(&set, 2).unwrap();
        let mut whitened = FeatureSet::from_grids(set.grids.clone());
        transform.apply(&mut whitened);
        let via_head = transform.as_head().apply(set.grids[1].view()).unwrap();
        assert!(via_head.iter().zip(whitened.grids[1].iter()).all(|(a, b)| (a - b).abs() < 1e-4));
    }

    #[test]
    fn a_tr_head_takes_the_transform_as_its_input_layer() {
        let set = anisotropic_set();
        let (transform, _) = InputTransform::fit(&set, 2).unwrap();
        let head = crate::head::testing::random_tr(None, 2, 3, (10, 10), 5, 2, 4);
        let mut whitened = FeatureSet::from_grids(set.grids.clone());
        transform.apply(&mut whitened);
        let mut folded = head.clone();
        transform.fold_into_head(&mut folded);
        let folded = Head::new(HeadKind::Tr, folded.weights().clone()).unwrap();
        assert_eq!(folded.input_dim(), 3);
        let a = head.forward(whitened.tokens(0)).unwrap();
        let b = folded.forward(set.tokens(0)).unwrap();
        assert!(a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() < 1e-3), "{a} vs {b}");
    }

    #[test]
    fn centring_only_keeps_the_dimension() {
        let mut set = anisotropic_set();
        let (transform, report) = InputTransform::fit(&set, 0).unwrap();
        assert!(transform.projection.is_none() && report.dims == 3);
        transform.apply(&mut set);
        assert_eq!(set.grids[0].dim(), (10, 10, 3));
        assert!(InputTransform::fit(&set, 4).unwrap_err().to_string().contains("exceeds"));
    }
}
