//! The CAUSE-TR segmentation head at run time, in plain ndarray.
//!
//! One post-norm transformer decoder layer (single head, as in the official
//! CAUSE `TRDecoder`) whose queries are the tokens' nearest clusterbook
//! vectors, followed by the MLP head's `f1 + f2` projection. For one image's
//! tokens `x [T, D]` (row-major over the fixed patch grid the head was
//! trained on):
//!
//! ```text
//! x    = input(x)                        (optional linear input transform)
//! tgt  = codes[argmax_k cos(x, codes_k)] (the raw code vectors)
//! tgt  = norm1(tgt + SelfAttn(q = k = tgt + pos, v = tgt))
//! tgt  = norm2(tgt + CrossAttn(q = tgt + pos, k = v = x))
//! out  = x + norm3(tgt + ffn2(relu(ffn1(tgt))))
//! head = f1(out) + f2b(relu(f2a(out)))   [T, R]
//! ```
//!
//! with `Attn(q, k, v) = out(softmax(Q(q) K(k)ᵀ / sqrt(d)) V(v))`. The
//! positional embedding enters the queries and keys only and `norm3` is the
//! output LayerNorm, exactly as in the reference, so the official CAUSE TR
//! weights map one to one onto these fields. Weights are float32 `.npy`
//! files in PyTorch layout (see [`TrHead::save`]).

use std::path::Path;

use ndarray::{Array, Array1, Array2, Array3, ArrayBase, ArrayView2, ArrayView3, Axis, Data, Dimension, Ix1, Ix2, Ix3};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use super::head::{HeadError, Linear, MlpHead};

/// Epsilon of every LayerNorm (PyTorch's default).
pub const LAYER_NORM_EPS: f32 = 1e-5;
/// Subdirectory of a TR head directory holding the `f1`/`f2` projection's
/// files (as written by [`MlpHead::save`]).
pub const MLP_SUBDIR: &str = "mlp";

/// A LayerNorm over the last axis.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    /// Scale `[d]`.
    pub gamma: Array1<f32>,
    /// Shift `[d]`.
    pub beta: Array1<f32>,
}

impl LayerNorm {
    /// Normalises each row of `x [n, d]` to zero mean and unit variance
    /// (biased, eps [`LAYER_NORM_EPS`]), then scales and shifts it.
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut y = x.to_owned();
        for mut row in y.rows_mut() {
            let mean = row.mean().unwrap_or(0.0);
            row -= mean;
            let var = row.mapv(|v| v * v).mean().unwrap_or(0.0);
            row /= (var + LAYER_NORM_EPS).sqrt();
        }
        y *= &self.gamma;
        y += &self.beta;
        y
    }
}

/// Single-head scaled dot-product attention with its four projections.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    /// Query projection `Linear(d, d)`.
    pub q: Linear,
    /// Key projection `Linear(d, d)`.
    pub k: Linear,
    /// Value projection `Linear(d, d)`.
    pub v: Linear,
    /// Output projection `Linear(d, d)`.
    pub out: Linear,
}

impl Attention {
    /// `out(softmax(q(query) k(key)ᵀ / sqrt(d)) v(value))`: `query [n, d]`,
    /// `key`, `value [m, d]` → `[n, d]`.
    pub fn forward(&self, query: ArrayView2<f32>, key: ArrayView2<f32>, value: ArrayView2<f32>) -> Array2<f32> {
        let q = self.q.forward(query);
        let k = self.k.forward(key);
        let v = self.v.forward(value);
        let mut scores = q.dot(&k.t()) / (q.ncols() as f32).sqrt();
        for mut row in scores.rows_mut() {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row /= sum;
        }
        self.out.forward(scores.dot(&v).view())
    }

    /// The four projections in file order (q, k, v, out).
    fn layers(&self) -> [(&'static str, &Linear); 4] {
        [("q", &self.q), ("k", &self.k), ("v", &self.v), ("out", &self.out)]
    }
}

/// Tokens that do not fit the patch grid a TR head was trained on (its
/// positional embedding is learned per grid position).
#[derive(Debug, thiserror::Error)]
#[error(
    "the TR head takes the {rows}x{cols} patch grid it was trained on ({} tokens of {dim} values) but got {found_tokens} tokens of {found_dim} values; run the model at its training input size",
    rows * cols
)]
pub struct GridMismatch {
    /// Grid rows the head expects.
    pub rows: usize,
    /// Grid columns the head expects.
    pub cols: usize,
    /// Token size the head expects (D).
    pub dim: usize,
    /// Tokens given.
    pub found_tokens: usize,
    /// Token size given.
    pub found_dim: usize,
}

/// The CAUSE-TR head's weights (see the module docs for the forward pass).
#[derive(Debug, Clone, PartialEq)]
pub struct TrHead {
    /// Optional input transform `Linear(D, d)` applied first (a folded
    /// whitening); `None` = identity (d = D).
    pub input: Option<Linear>,
    /// Clusterbook `[K, d]` in the head's input space (fixed in training).
    pub codes: Array2<f32>,
    /// Learned positional embedding `[rows * cols, d]`, row-major.
    pub pos: Array2<f32>,
    /// The patch grid `(rows, cols)` the head was trained on.
    pub grid: (usize, usize),
    /// Self-attention among the queries.
    pub self_attn: Attention,
    /// Cross-attention from the queries to the tokens.
    pub cross_attn: Attention,
    /// After the self-attention residual.
    pub norm1: LayerNorm,
    /// After the cross-attention residual.
    pub norm2: LayerNorm,
    /// After the FFN residual; its output is added to the tokens.
    pub norm3: LayerNorm,
    /// FFN `Linear(d, hidden)` (hidden = 2048 in CAUSE).
    pub ffn1: Linear,
    /// FFN `Linear(hidden, d)`.
    pub ffn2: Linear,
    /// The `f1 + f2` projection to the R-d head features.
    pub mlp: MlpHead,
}

/// Index of the nearest row of `codes [K, d]` by cosine for each row of
/// `x [n, d]` (the first one on ties, like ONNX ArgMax): the query selection
/// of the TR head, shared by training and inference.
pub fn nearest_codes(x: ArrayView2<f32>, codes: ArrayView2<f32>) -> Vec<usize> {
    let unit = crate::model::l2_normalize_rows(codes.to_owned());
    // Row norms of x do not change a row's argmax.
    x.dot(&unit.t())
        .rows()
        .into_iter()
        .map(|row| row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (k, &v)| if v > best.1 { (k, v) } else { best }).0)
        .collect()
}

impl TrHead {
    /// Backbone feature size D the head takes.
    pub fn input_dim(&self) -> usize {
        self.input.as_ref().map_or(self.codes.ncols(), |l| l.weight.ncols())
    }

    /// Output feature size R.
    pub fn output_dim(&self) -> usize {
        self.mlp.output_dim()
    }

    /// Head features of one image's tokens `x [rows * cols, D]` (row-major
    /// over the grid) → `[rows * cols, R]`.
    pub fn forward(&self, tokens: ArrayView2<f32>) -> Result<Array2<f32>, GridMismatch> {
        let (rows, cols) = self.grid;
        if tokens.dim() != (rows * cols, self.input_dim()) {
            return Err(GridMismatch { rows, cols, dim: self.input_dim(), found_tokens: tokens.nrows(), found_dim: tokens.ncols() });
        }
        let x = match &self.input {
            Some(layer) => layer.forward(tokens),
            None => tokens.to_owned(),
        };
        let tgt = self.codes.select(Axis(0), &nearest_codes(x.view(), self.codes.view()));
        let with_pos = &tgt + &self.pos;
        let tgt = self.norm1.forward((&tgt + &self.self_attn.forward(with_pos.view(), with_pos.view(), tgt.view())).view());
        let with_pos = &tgt + &self.pos;
        let tgt = self.norm2.forward((&tgt + &self.cross_attn.forward(with_pos.view(), x.view(), x.view())).view());
        let mut hidden = self.ffn1.forward(tgt.view());
        hidden.mapv_inplace(|v| v.max(0.0));
        let out = x + self.norm3.forward((tgt + self.ffn2.forward(hidden.view())).view());
        Ok(self.mlp.forward(out.view()))
    }

    /// Head features of a patch grid `[rows, cols, D]` → `[rows, cols, R]`.
    pub fn apply(&self, features: ArrayView3<f32>) -> Result<Array3<f32>, GridMismatch> {
        let (rows, cols, dim) = features.dim();
        let flat = features.to_shape((rows * cols, dim)).expect("contiguous features");
        let out = self.forward(flat.view())?;
        Ok(super::head::rows_to_grid(out, rows, cols))
    }

    /// Loads a head written by [`TrHead::save`], checking every file's shape
    /// against the clusterbook's width d (errors name the file).
    pub fn load(dir: &Path) -> Result<Self, HeadError> {
        let codes = read::<Ix2>(dir, "codes.npy", &[None, None])?;
        let d = Some(codes.ncols());
        let pos = read::<Ix3>(dir, "pos.npy", &[None, None, d])?;
        let (rows, cols, dim) = pos.dim();
        let input = if dir.join("input_weight.npy").exists() { Some(read_linear(dir, "input", d, None)?) } else { None };
        let attention = |name: &str| -> Result<Attention, HeadError> {
            let part = |p: &str| read_linear(dir, &format!("{name}_{p}"), d, d);
            Ok(Attention { q: part("q")?, k: part("k")?, v: part("v")?, out: part("out")? })
        };
        let norm = |name: &str| -> Result<LayerNorm, HeadError> {
            Ok(LayerNorm { gamma: read::<Ix1>(dir, &format!("{name}_gamma.npy"), &[d])?, beta: read::<Ix1>(dir, &format!("{name}_beta.npy"), &[d])? })
        };
        let ffn1 = read_linear(dir, "ffn1", None, d)?;
        let ffn2 = read_linear(dir, "ffn2", d, Some(ffn1.weight.nrows()))?;
        let mlp_dir = dir.join(MLP_SUBDIR);
        let mlp = MlpHead::load(&mlp_dir)?;
        if mlp.input_dim() != dim {
            return Err(HeadError::BadFile {
                path: mlp_dir.join(super::head::MLP_FILES[0]),
                reason: format!("takes {} values but the TR head's width is {dim}", mlp.input_dim()),
            });
        }
        Ok(TrHead {
            input,
            codes,
            pos: pos.into_shape_with_order((rows * cols, dim)).expect("same element count"),
            grid: (rows, cols),
            self_attn: attention("self_attn")?,
            cross_attn: attention("cross_attn")?,
            norm1: norm("norm1")?,
            norm2: norm("norm2")?,
            norm3: norm("norm3")?,
            ffn1,
            ffn2,
            mlp,
        })
    }

    /// Writes the head into `dir` (created if needed): `codes.npy [K, d]`,
    /// `pos.npy [rows, cols, d]` (which also records the grid),
    /// `{self_attn,cross_attn}_{q,k,v,out}_{weight,bias}.npy`,
    /// `norm{1,2,3}_{gamma,beta}.npy`, `ffn{1,2}_{weight,bias}.npy`,
    /// `input_{weight,bias}.npy` only with an input transform, and the
    /// projection's files in [`MLP_SUBDIR`].
    pub fn save(&self, dir: &Path) -> Result<(), HeadError> {
        std::fs::create_dir_all(dir).map_err(|e| HeadError::BadFile { path: dir.into(), reason: e.to_string() })?;
        write(dir, "codes.npy", &self.codes)?;
        let (rows, cols) = self.grid;
        write(dir, "pos.npy", &self.pos.to_shape((rows, cols, self.pos.ncols())).expect("pos has rows * cols rows"))?;
        if let Some(input) = &self.input {
            write_linear(dir, "input", input)?;
        }
        for (name, attention) in [("self_attn", &self.self_attn), ("cross_attn", &self.cross_attn)] {
            for (part, layer) in attention.layers() {
                write_linear(dir, &format!("{name}_{part}"), layer)?;
            }
        }
        for (name, norm) in [("norm1", &self.norm1), ("norm2", &self.norm2), ("norm3", &self.norm3)] {
            write(dir, &format!("{name}_gamma.npy"), &norm.gamma)?;
            write(dir, &format!("{name}_beta.npy"), &norm.beta)?;
        }
        write_linear(dir, "ffn1", &self.ffn1)?;
        write_linear(dir, "ffn2", &self.ffn2)?;
        self.mlp.save(&dir.join(MLP_SUBDIR))
    }
}

/// Reads a float32 `.npy` whose shape must match `expected` (None: any).
fn read<D: Dimension>(dir: &Path, name: &str, expected: &[Option<usize>]) -> Result<Array<f32, D>, HeadError> {
    let path = dir.join(name);
    let bad = |reason: String| HeadError::BadFile { path: path.clone(), reason };
    let file = std::fs::File::open(&path).map_err(|e| bad(e.to_string()))?;
    let array = Array::<f32, D>::read_npy(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a float32 {}-D .npy: {e}", expected.len())))?;
    if array.shape().iter().zip(expected).any(|(&found, e)| e.is_some_and(|e| e != found)) {
        let want: Vec<String> = expected.iter().map(|e| e.map_or("any".into(), |v| v.to_string())).collect();
        return Err(bad(format!("shape {:?} does not match the TR head's layout (expected [{}])", array.shape(), want.join(", "))));
    }
    Ok(array)
}

/// Reads `{prefix}_weight.npy [out, in]` and `{prefix}_bias.npy [out]`.
fn read_linear(dir: &Path, prefix: &str, out: Option<usize>, input: Option<usize>) -> Result<Linear, HeadError> {
    let weight = read::<Ix2>(dir, &format!("{prefix}_weight.npy"), &[out, input])?;
    let bias = read::<Ix1>(dir, &format!("{prefix}_bias.npy"), &[Some(weight.nrows())])?;
    Ok(Linear { weight, bias })
}

fn write<S: Data<Elem = f32>, D: Dimension>(dir: &Path, name: &str, array: &ArrayBase<S, D>) -> Result<(), HeadError> {
    let path = dir.join(name);
    let bad = |reason: String| HeadError::BadFile { path: path.clone(), reason };
    let file = std::fs::File::create(&path).map_err(|e| bad(e.to_string()))?;
    array.write_npy(std::io::BufWriter::new(file)).map_err(|e| bad(e.to_string()))
}

fn write_linear(dir: &Path, prefix: &str, layer: &Linear) -> Result<(), HeadError> {
    write(dir, &format!("{prefix}_weight.npy"), &layer.weight)?;
    write(dir, &format!("{prefix}_bias.npy"), &layer.bias)
}

/// A TR head with seeded random weights (for tests elsewhere in the crate):
/// input transform from `input` values when given, width `d`, `k` codes,
/// FFN width `hidden`, `r` outputs.
#[cfg(test)]
pub(crate) fn random_head(input: Option<usize>, d: usize, k: usize, grid: (usize, usize), hidden: usize, r: usize, seed: u64) -> TrHead {
    use rand::{Rng, SeedableRng};
    fn vector(rng: &mut impl Rng, n: usize) -> Array1<f32> {
        Array1::from_shape_fn(n, |_| rng.random_range(-0.5f32..0.5))
    }
    fn linear(rng: &mut impl Rng, out: usize, inp: usize) -> Linear {
        Linear { weight: vector(rng, out * inp).into_shape_with_order((out, inp)).expect("out * inp values"), bias: vector(rng, out) }
    }
    fn attention(rng: &mut impl Rng, d: usize) -> Attention {
        Attention { q: linear(rng, d, d), k: linear(rng, d, d), v: linear(rng, d, d), out: linear(rng, d, d) }
    }
    fn norm(rng: &mut impl Rng, d: usize) -> LayerNorm {
        LayerNorm { gamma: vector(rng, d) + 1.0, beta: vector(rng, d) }
    }
    let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    TrHead {
        input: input.map(|big| linear(rng, d, big)),
        codes: linear(rng, k, d).weight,
        pos: linear(rng, grid.0 * grid.1, d).weight,
        grid,
        self_attn: attention(rng, d),
        cross_attn: attention(rng, d),
        norm1: norm(rng, d),
        norm2: norm(rng, d),
        norm3: norm(rng, d),
        ffn1: linear(rng, hidden, d),
        ffn2: linear(rng, d, hidden),
        mlp: MlpHead { f1: linear(rng, r, d), f2a: linear(rng, d, d), f2b: linear(rng, r, d) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn identity(d: usize) -> Linear {
        Linear { weight: Array2::eye(d), bias: Array1::zeros(d) }
    }

    fn zero(d: usize) -> Linear {
        Linear { weight: Array2::zeros((d, d)), bias: Array1::zeros(d) }
    }

    fn plain_norm(d: usize) -> LayerNorm {
        LayerNorm { gamma: Array1::ones(d), beta: Array1::zeros(d) }
    }

    #[test]
    fn attention_matches_hand_computation() {
        let attention = Attention { q: identity(2), k: identity(2), v: identity(2), out: identity(2) };
        // Scores I/√2: each row weights its own token by p = σ(1/√2).
        let x = array![[1.0f32, 0.0], [0.0, 1.0]];
        let out = attention.forward(x.view(), x.view(), x.view());
        let p = 1.0 / (1.0 + (-1.0f32 / 2f32.sqrt()).exp());
        let expected = array![[p, 1.0 - p], [1.0 - p, p]];
        assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6), "{out} vs {expected}");
        // One key: the output is its value whatever the query.
        let out = attention.forward(array![[5.0f32, -3.0]].view(), array![[1.0f32, 2.0]].view(), array![[7.0f32, 8.0]].view());
        assert_eq!(out, array![[7.0, 8.0]]);
    }

    #[test]
    fn layer_norm_matches_hand_computation() {
        // (1, 3): mean 2, biased variance 1 → (-1, 1) / sqrt(1 + eps).
        let norm = LayerNorm { gamma: array![2.0, 1.0], beta: array![0.0, 0.5] };
        let out = norm.forward(array![[1.0f32, 3.0]].view());
        let s = (1.0 + LAYER_NORM_EPS).sqrt();
        assert!((out[[0, 0]] + 2.0 / s).abs() < 1e-6 && (out[[0, 1]] - (1.0 / s + 0.5)).abs() < 1e-6, "{out}");
    }

    /// Attention and FFN outputs zeroed: the head adds LN(nearest code) to
    /// each token, and the MLP is the identity.
    fn residual_only() -> TrHead {
        let d = 2;
        let silent = || Attention { q: identity(d), k: identity(d), v: identity(d), out: zero(d) };
        TrHead {
            input: None,
            codes: array![[1.0, 0.0], [0.0, 3.0]],
            pos: array![[0.1, 0.2], [0.3, -0.4]],
            grid: (1, 2),
            self_attn: silent(),
            cross_attn: silent(),
            norm1: plain_norm(d),
            norm2: plain_norm(d),
            norm3: plain_norm(d),
            ffn1: Linear { weight: Array2::ones((3, d)), bias: Array1::zeros(3) },
            ffn2: Linear { weight: Array2::zeros((d, 3)), bias: Array1::zeros(d) },
            mlp: MlpHead { f1: identity(d), f2a: identity(d), f2b: zero(d) },
        }
    }

    #[test]
    fn head_adds_the_normalised_nearest_code() {
        // Token (2, 1) is nearest (cosine) to code (1, 0), token (-1, 3) to
        // code (0, 3); LN of either code is ±(1, -1) up to eps.
        let out = residual_only().forward(array![[2.0f32, 1.0], [-1.0, 3.0]].view()).unwrap();
        let expected = array![[3.0, 0.0], [-2.0, 4.0]];
        assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-4), "{out}");
    }

    #[test]
    fn input_transform_runs_first_and_the_grid_is_checked() {
        let mut head = residual_only();
        head.input = Some(Linear { weight: array![[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], bias: array![0.0, 1.0] });
        assert_eq!(head.input_dim(), 3);
        // (1, 0, 9) → (2, 1) and (-0.5, 2, 9) → (-1, 3): the case above.
        let out = head.forward(array![[1.0f32, 0.0, 9.0], [-0.5, 2.0, 9.0]].view()).unwrap();
        assert!((out[[0, 0]] - 3.0).abs() < 1e-4 && (out[[1, 1]] - 4.0).abs() < 1e-4, "{out}");
        let err = head.forward(array![[1.0f32, 0.0, 9.0]].view()).unwrap_err().to_string();
        assert!(err.contains("1x2 patch grid") && err.contains("got 1 tokens"), "{err}");
    }

    #[test]
    fn weights_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let head = random_head(Some(5), 4, 3, (2, 3), 7, 2, 0);
        head.save(dir.path()).unwrap();
        let loaded = TrHead::load(dir.path()).unwrap();
        assert_eq!(loaded, head);
        let x = Array2::from_shape_fn((6, 5), |(i, j)| (i as f32 - j as f32) / 3.0);
        assert_eq!(loaded.forward(x.view()).unwrap(), head.forward(x.view()).unwrap());

        let no_input = TrHead { input: None, ..head };
        let dir = tempfile::tempdir().unwrap();
        no_input.save(dir.path()).unwrap();
        assert!(!dir.path().join("input_weight.npy").exists());
        assert_eq!(TrHead::load(dir.path()).unwrap(), no_input);

        array![1.0f32, 2.0].write_npy(std::fs::File::create(dir.path().join("norm2_beta.npy")).unwrap()).unwrap();
        let err = TrHead::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("norm2_beta.npy") && err.contains("shape"), "{err}");
        std::fs::remove_file(dir.path().join("cross_attn_v_weight.npy")).unwrap();
        let err = TrHead::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cross_attn_v_weight.npy"), "{err}");
    }
}
