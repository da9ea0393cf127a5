//! The head's layers in ndarray, each reading its weights by name from
//! [`Weights`]: `linear("ffn1")` uses `ffn1_weight` and `ffn1_bias`.

use ndarray::{Array2, ArrayView2};

use super::Weights;
use crate::linalg::l2_normalize_rows;

/// Epsilon of every LayerNorm (PyTorch's default).
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// `x [n, in] · {name}_weightᵀ + {name}_bias` → `[n, out]`.
pub fn linear(w: &Weights, name: &str, x: ArrayView2<f32>) -> Array2<f32> {
    let mut y = x.dot(&w.matrix(&format!("{name}_weight")).t());
    y += &w.vector(&format!("{name}_bias"));
    y
}

/// Each row of `x [n, d]` normalised to zero mean and unit (biased)
/// variance, then scaled by `{name}_gamma` and shifted by `{name}_beta`.
pub fn layer_norm(w: &Weights, name: &str, x: ArrayView2<f32>) -> Array2<f32> {
    let mut y = x.to_owned();
    for mut row in y.rows_mut() {
        let mean = row.mean().unwrap_or(0.0);
        row -= mean;
        let var = row.mapv(|v| v * v).mean().unwrap_or(0.0);
        row /= (var + LAYER_NORM_EPS).sqrt();
    }
    y *= &w.vector(&format!("{name}_gamma"));
    y += &w.vector(&format!("{name}_beta"));
    y
}

/// Single-head attention `{name}_out(softmax(q kᵀ / sqrt(d)) v)` with
/// `q = {name}_q(query)`, `k = {name}_k(key)`, `v = {name}_v(value)`:
/// `query [n, d]`, `key`, `value [m, d]` → `[n, d]`.
pub fn attention(w: &Weights, name: &str, query: ArrayView2<f32>, key: ArrayView2<f32>, value: ArrayView2<f32>) -> Array2<f32> {
    let q = linear(w, &format!("{name}_q"), query);
    let k = linear(w, &format!("{name}_k"), key);
    let v = linear(w, &format!("{name}_v"), value);
    let mut scores = q.dot(&k.t()) / (q.ncols() as f32).sqrt();
    for mut row in scores.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row /= sum;
    }
    linear(w, &format!("{name}_out"), scores.dot(&v).view())
}

/// The CAUSE projection `{p}f1(x) + {p}f2b(relu({p}f2a(x)))`, `p` = `prefix`.
pub fn mlp(w: &Weights, prefix: &str, x: ArrayView2<f32>) -> Array2<f32> {
    let hidden = linear(w, &format!("{prefix}f2a"), x).mapv(|v| v.max(0.0));
    let mut out = linear(w, &format!("{prefix}f2b"), hidden.view());
    out += &linear(w, &format!("{prefix}f1"), x);
    out
}

/// Index of the nearest row of `codes [K, d]` by cosine for each row of
/// `x [n, d]` (the first one on ties, like ONNX ArgMax): the TR head's query
/// selection, shared by training and inference.
pub fn nearest_codes(x: ArrayView2<f32>, codes: ArrayView2<f32>) -> Vec<usize> {
    let unit = l2_normalize_rows(codes.to_owned());
    // Row norms of x do not change a row's argmax.
    x.dot(&unit.t())
        .rows()
        .into_iter()
        .map(|row| row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (k, &v)| if v > best.1 { (k, v) } else { best }).0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1};

    fn identity_attention() -> Weights {
        let mut w = Weights::default();
        for part in ["q", "k", "v", "out"] {
            w.insert(format!("a_{part}_weight"), Array2::<f32>::eye(2));
            w.insert(format!("a_{part}_bias"), Array1::<f32>::zeros(2));
        }
        w
    }

    #[test]
    fn attention_matches_hand_computation() {
        let w = identity_attention();
        // Scores I/√2: each row weights its own token by p = σ(1/√2).
        let x = array![[1.0f32, 0.0], [0.0, 1.0]];
        let out = attention(&w, "a", x.view(), x.view(), x.view());
        let p = 1.0 / (1.0 + (-1.0f32 / 2f32.sqrt()).exp());
        let expected = array![[p, 1.0 - p], [1.0 - p, p]];
        assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6), "{out} vs {expected}");
        // One key: the output is its value whatever the query.
        let out = attention(&w, "a", array![[5.0f32, -3.0]].view(), array![[1.0f32, 2.0]].view(), array![[7.0f32, 8.0]].view());
        assert_eq!(out, array![[7.0, 8.0]]);
    }

    #[test]
    fn layer_norm_matches_hand_computation() {
        // (1, 3): mean 2, biased variance 1 → (-1, 1) / sqrt(1 + eps).
        let mut w = Weights::default();
        w.insert("n_gamma", array![2.0f32, 1.0]);
        w.insert("n_beta", array![0.0f32, 0.5]);
        let out = layer_norm(&w, "n", array![[1.0f32, 3.0]].view());
        let s = (1.0 + LAYER_NORM_EPS).sqrt();
        assert!((out[[0, 0]] + 2.0 / s).abs() < 1e-6 && (out[[0, 1]] - (1.0 / s + 0.5)).abs() < 1e-6, "{out}");
    }

    #[test]
    fn nearest_code_is_by_cosine() {
        // (1, 1) is closer to the direction (10, 9) than to (1, 0), whatever the norms.
        assert_eq!(nearest_codes(array![[1.0f32, 1.0], [1.0, 0.0]].view(), array![[1.0f32, 0.0], [10.0, 9.0]].view()), [1, 0]);
    }
}
