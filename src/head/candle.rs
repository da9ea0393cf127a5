//! The head's forward pass in candle, for training: the same layers as
//! [`super::layers`], looking the same weight names up in [`Params`].

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, D};
use ndarray::ArrayD;

use super::layers::LAYER_NORM_EPS;
use super::{HeadKind, Weights};

/// Head weights as candle tensors, by the names of [`Weights`].
#[derive(Debug, Clone)]
pub struct Params(pub BTreeMap<String, Tensor>);

impl Params {
    /// The tensors of `weights` on `device`.
    pub fn from_weights(weights: &Weights, device: &Device) -> candle_core::Result<Self> {
        let tensors = weights
            .iter()
            .map(|(name, values)| Ok((name.to_string(), Tensor::from_vec(values.iter().copied().collect(), values.shape(), device)?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Params(tensors))
    }

    /// The tensors as named ndarray weights.
    pub fn to_weights(&self) -> candle_core::Result<Weights> {
        let mut weights = Weights::default();
        for (name, tensor) in &self.0 {
            let values = tensor.flatten_all()?.to_vec1::<f32>()?;
            weights.insert(name.clone(), ArrayD::from_shape_vec(tensor.dims(), values).expect("dims match the values"));
        }
        Ok(weights)
    }

    /// The tensor `name` (panics when absent: the layout check guarantees it).
    pub fn get(&self, name: &str) -> &Tensor {
        self.0.get(name).unwrap_or_else(|| panic!("head parameter {name} is missing"))
    }
}

/// `x [.., in] · {name}_weightᵀ + {name}_bias` as one 2-D product.
pub fn linear(p: &Params, name: &str, x: &Tensor) -> candle_core::Result<Tensor> {
    let (w, b) = (p.get(&format!("{name}_weight")), p.get(&format!("{name}_bias")));
    let mut dims = x.dims().to_vec();
    let input = *dims.last().expect("at least one axis");
    let y = x.reshape((x.elem_count() / input, input))?.matmul(&w.t()?)?.broadcast_add(b)?;
    *dims.last_mut().expect("at least one axis") = w.dim(0)?;
    y.reshape(dims)
}

/// Single-head attention of `query [B, T, d]` over `key`, `value
/// [B, M, d]`; a numerically stable softmax (the row maximum is
/// subtracted, detached).
fn attention(p: &Params, name: &str, query: &Tensor, key: &Tensor, value: &Tensor) -> candle_core::Result<Tensor> {
    let q = linear(p, &format!("{name}_q"), query)?;
    let k = linear(p, &format!("{name}_k"), key)?;
    let v = linear(p, &format!("{name}_v"), value)?;
    let scores = q.matmul(&k.t()?)?.affine(1.0 / (q.dim(D::Minus1)? as f64).sqrt(), 0.0)?;
    let e = scores.broadcast_sub(&scores.max_keepdim(D::Minus1)?.detach())?.exp()?;
    let weights = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    linear(p, &format!("{name}_out"), &weights.matmul(&v)?)
}

fn layer_norm(p: &Params, name: &str, x: &Tensor) -> candle_core::Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let std = centred.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, LAYER_NORM_EPS as f64)?.sqrt()?;
    centred.broadcast_div(&std)?.broadcast_mul(p.get(&format!("{name}_gamma")))?.broadcast_add(p.get(&format!("{name}_beta")))
}

/// The projection `{p}f1(x) + {p}f2b(relu({p}f2a(x)))` of `x [n, d]`;
/// `drop` holds the dropout masks of the two branches' inputs (the
/// reference applies dropout separately to each branch).
fn mlp(p: &Params, prefix: &str, x: &Tensor, drop: Option<(&Tensor, &Tensor)>) -> candle_core::Result<Tensor> {
    let (x1, x2) = match drop {
        Some((m1, m2)) => ((x * m1)?, (x * m2)?),
        None => (x.clone(), x.clone()),
    };
    let f1 = linear(p, &format!("{prefix}f1"), &x1)?;
    let hidden = linear(p, &format!("{prefix}f2a"), &x2)?.relu()?;
    f1 + linear(p, &format!("{prefix}f2b"), &hidden)?
}

/// Head features `[B * T, R]` (image-major rows) of tokens `x [B, T, d]`.
/// A TR head takes whole images, with `queries [B, T, d]`: each token's
/// nearest clusterbook vector; an MLP head any tokens (`T` = 1 is fine).
/// `drop` holds the dropout masks `[B * T, d]` of the projection's branches.
pub fn forward(kind: HeadKind, p: &Params, x: &Tensor, queries: Option<&Tensor>, drop: Option<(&Tensor, &Tensor)>) -> candle_core::Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    if kind == HeadKind::Mlp {
        return mlp(p, "", &x.reshape((b * t, d))?, drop);
    }
    let queries = queries.expect("a TR head needs its queries");
    let pos = p.get("pos").reshape((t, d))?;
    let with_pos = queries.broadcast_add(&pos)?;
    let attended = attention(p, "self_attn", &with_pos, &with_pos, queries)?;
    let tgt = layer_norm(p, "norm1", &(queries + attended)?)?;
    let attended = attention(p, "cross_attn", &tgt.broadcast_add(&pos)?, x, x)?;
    let tgt = layer_norm(p, "norm2", &(tgt + attended)?)?;
    let hidden = linear(p, "ffn1", &tgt)?.relu()?;
    let tgt = layer_norm(p, "norm3", &(&tgt + linear(p, "ffn2", &hidden)?)?)?;
    let out = (x + tgt)?.reshape((b * t, d))?;
    mlp(p, "mlp/", &out, drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::layers::nearest_codes;
    use crate::head::testing::{random_head, random_tr};
    use crate::head::Head;
    use ndarray::{Array2, Array3, Axis};

    fn tensor(a: &ndarray::ArrayViewD<f32>) -> Tensor {
        Tensor::from_vec(a.iter().copied().collect(), a.shape(), &Device::Cpu).unwrap()
    }

    /// Runs the candle forward over a batch and compares each image with
    /// the ndarray forward.
    fn assert_matches(head: &Head, x: &Array3<f32>) {
        let params = Params::from_weights(head.weights(), &Device::Cpu).unwrap();
        let queries = (head.kind() == HeadKind::Tr).then(|| {
            let codes = head.weights().matrix("codes");
            let picked: Vec<Array2<f32>> = x.outer_iter().map(|img| codes.select(Axis(0), &nearest_codes(img, codes))).collect();
            let views: Vec<_> = picked.iter().map(|p| p.view()).collect();
            tensor(&ndarray::stack(Axis(0), &views).unwrap().into_dyn().view())
        });
        let out = forward(head.kind(), &params, &tensor(&x.view().into_dyn()), queries.as_ref(), None).unwrap();
        let out = out.to_vec2::<f32>().unwrap();
        let t = x.dim().1;
        for (b, image) in x.outer_iter().enumerate() {
            let expected = head.forward(image).unwrap();
            for (row, want) in out[b * t..(b + 1) * t].iter().zip(expected.rows()) {
                for (a, w) in row.iter().zip(want) {
                    assert!((a - w).abs() < 1e-4, "image {b}: {row:?} vs {want}");
                }
            }
        }
    }

    #[test]
    fn candle_forward_matches_the_ndarray_forward() {
        let x = Array3::from_shape_fn((2, 6, 4), |(b, t, d)| ((b * 7 + t * 3 + d * 5) % 11) as f32 / 5.0 - 1.0);
        assert_matches(&random_tr(None, 4, 5, (2, 3), 5, 3, 1), &x);
        assert_matches(&random_head(HeadKind::Mlp, &[("R", 3), ("D", 4), ("H", 6)], None, 2), &x);
    }

    #[test]
    fn weights_survive_the_round_trip() {
        let head = random_tr(Some(5), 4, 3, (2, 3), 7, 2, 0);
        let back = Params::from_weights(head.weights(), &Device::Cpu).unwrap().to_weights().unwrap();
        assert_eq!(&back, head.weights());
    }
}
