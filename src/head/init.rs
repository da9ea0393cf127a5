//! Fresh head weights for training, with PyTorch's default initialisation,
//! named as the head's files (plus the training-only projection head
//! [`PROJECTION`]).

use ndarray::{Array, Array1, Array2, Dimension, IntoDimension};
use rand::Rng;

use super::{HeadKind, Weights};

/// Name prefix of the training-only projection head `Linear(R, P)` that
/// feeds the contrastive loss (never saved with the model).
pub const PROJECTION: &str = "projection";

/// FFN width of CAUSE's decoder layer.
pub const FFN_HIDDEN: usize = 2048;

/// Sizes of a head to train.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    /// Architecture.
    pub kind: HeadKind,
    /// Token size d the head takes (the clusterbook's width).
    pub dim: usize,
    /// Patch grid `(rows, cols)` of a TR head's positional embedding.
    pub grid: (usize, usize),
    /// Head output size R (90 in CAUSE).
    pub reduced: usize,
    /// Projection size P (2048 in CAUSE).
    pub projection: usize,
}

fn uniform<D: Dimension>(shape: impl IntoDimension<Dim = D>, bound: f32, rng: &mut impl Rng) -> Array<f32, D> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-bound..bound))
}

/// `nn.Linear(fan_in, fan_out)`: weight and bias uniform in `±1/sqrt(fan_in)`.
fn linear(w: &mut Weights, name: &str, fan_in: usize, fan_out: usize, rng: &mut impl Rng) {
    let bound = 1.0 / (fan_in as f32).sqrt();
    w.insert(format!("{name}_weight"), uniform((fan_out, fan_in), bound, rng));
    w.insert(format!("{name}_bias"), uniform(fan_out, bound, rng));
}

/// Every trainable weight of a `shape` head and its projection (a TR head's
/// clusterbook `codes` is fixed and added by the caller). TR: attention
/// input projections Xavier-uniform with zero biases, output projections
/// uniform `±1/sqrt(d)` with zero biases (`nn.MultiheadAttention`), FFN as
/// `nn.Linear`, LayerNorms 1 and 0, the positional embedding uniform with
/// standard deviation 0.02; then the `f1 + f2` projection and the
/// projection head as `nn.Linear`.
pub fn init(shape: HeadShape, rng: &mut impl Rng) -> Weights {
    let HeadShape { kind, dim: d, grid: (rows, cols), reduced, projection } = shape;
    let mut w = Weights::default();
    let prefix = match kind {
        HeadKind::Mlp => "",
        HeadKind::Tr => {
            // PyTorch initialises the stacked [3d, d] in-projection as one matrix.
            let xavier = (6.0 / (4 * d) as f32).sqrt();
            for attn in ["self_attn", "cross_attn"] {
                for part in ["q", "k", "v"] {
                    w.insert(format!("{attn}_{part}_weight"), uniform((d, d), xavier, rng));
                    w.insert(format!("{attn}_{part}_bias"), Array1::<f32>::zeros(d));
                }
                w.insert(format!("{attn}_out_weight"), uniform((d, d), 1.0 / (d as f32).sqrt(), rng));
                w.insert(format!("{attn}_out_bias"), Array1::<f32>::zeros(d));
            }
            linear(&mut w, "ffn1", d, FFN_HIDDEN, rng);
            linear(&mut w, "ffn2", FFN_HIDDEN, d, rng);
            for norm in ["norm1", "norm2", "norm3"] {
                w.insert(format!("{norm}_gamma"), Array1::<f32>::ones(d));
                w.insert(format!("{norm}_beta"), Array1::<f32>::zeros(d));
            }
            let pos: Array2<f32> = uniform((rows * cols, d), 0.02 * 3f32.sqrt(), rng);
            w.insert("pos", pos.into_shape_with_order((rows, cols, d)).expect("rows * cols rows"));
            "mlp/"
        }
    };
    linear(&mut w, &format!("{prefix}f1"), d, reduced, rng);
    linear(&mut w, &format!("{prefix}f2a"), d, d, rng);
    linear(&mut w, &format!("{prefix}f2b"), d, reduced, rng);
    linear(&mut w, PROJECTION, reduced, projection, rng);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Head;
    use ndarray::Array2;
    use rand::SeedableRng;

    #[test]
    fn initialised_heads_fit_their_layout() {
        let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for kind in [HeadKind::Mlp, HeadKind::Tr] {
            let mut w = init(HeadShape { kind, dim: 4, grid: (2, 3), reduced: 3, projection: 5 }, rng);
            assert_eq!(w.matrix("projection_weight").dim(), (5, 3));
            w.remove("projection_weight");
            w.remove("projection_bias");
            if kind == HeadKind::Tr {
                assert_eq!(w.vector("norm1_gamma").to_vec(), [1.0; 4]);
                w.insert("codes", Array2::<f32>::eye(4));
            }
            let head = Head::new(kind, w).unwrap();
            assert_eq!((head.input_dim(), head.output_dim()), (4, 3));
        }
    }
}
