//! The CAUSE segmentation head: one home for its weights (named as their
//! `.npy` files, see [`Weights`]), its forward pass in plain ndarray (the
//! reference that training evaluation and tests use), its ONNX emission
//! ([`onnx`], used by the fused graph) and its candle forward for training
//! (`candle`, feature `train`).
//!
//! CAUSE-MLP: `head = f1(x) + f2b(relu(f2a(x)))` per token, with
//! `f1 = Linear(D, R)`, `f2a = Linear(D, H)`, `f2b = Linear(H, R)` (R = 90;
//! H = D, or the whitened width when training whitened the input).
//!
//! CAUSE-TR: one post-norm transformer decoder layer (single head, as the
//! official `TRDecoder`) whose queries are the tokens' nearest clusterbook
//! vectors, then the same projection (files under `mlp/`). For one image's
//! tokens `x [T, D]`, row-major over the patch grid the head was trained on:
//!
//! ```text
//! x    = input(x)                        (optional; a folded whitening)
//! tgt  = codes[argmax_k cos(x, codes_k)] (the raw code vectors)
//! tgt  = norm1(tgt + self_attn(q = k = tgt + pos, v = tgt))
//! tgt  = norm2(tgt + cross_attn(q = tgt + pos, k = v = x))
//! out  = x + norm3(tgt + ffn2(relu(ffn1(tgt))))
//! head = mlp/f1(out) + mlp/f2b(relu(mlp/f2a(out)))   [T, R]
//! ```
//!
//! with `attn(q, k, v) = out(softmax(q(q) k(k)ᵀ / sqrt(d)) v(v))`. Weights are
//! in PyTorch layout (`weight [out, in]`), so the official CAUSE weights map
//! one to one onto these files. The model's concept vectors live in the
//! head's output space (`[K, R]`).

#[cfg(feature = "train")]
pub mod candle;
#[cfg(feature = "train")]
pub mod init;
pub mod layers;
pub mod onnx;
pub mod weights;

use std::path::{Path, PathBuf};

use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, Axis};
use serde::{Deserialize, Serialize};

use crate::linalg::rows_to_grid;
use layers::{attention, layer_norm, linear, mlp, nearest_codes};
pub use weights::{LayoutEntry, Weights};

/// Which head architecture a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// CAUSE-MLP: linear + two-layer MLP branch.
    Mlp,
    /// CAUSE-TR: one transformer decoder layer queried by the clusterbook,
    /// then the MLP projection.
    Tr,
}

/// The `[head]` section of a model manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// Architecture.
    pub kind: HeadKind,
    /// Directory (relative to the model directory) holding the weight files.
    pub dir: String,
    /// Output feature size R of the head (the concept vectors' length).
    pub output_dim: usize,
    /// The concept clusterbook the head was trained with (`.npy` float32
    /// `[K, D]`); informational at run time, reused by `fit --clusterbook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusterbook: Option<String>,
}

/// Errors while loading or saving head weights.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// A weight file is missing, unreadable or has the wrong shape.
    #[error("{path}: {reason}")]
    BadFile {
        /// The weight file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Tokens that do not fit the patch grid a TR head was trained on (its
/// positional embedding is learned per grid position).
#[derive(Debug, thiserror::Error)]
#[error(
    "the TR head takes the {rows}x{cols} patch grid it was trained on ({} tokens of {dim} values) but got {found_tokens} tokens of {found_dim} values (Head::at_grid makes a head for another grid)",
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

/// The CAUSE-MLP files: R outputs, D inputs, H hidden units.
pub const MLP_LAYOUT: &[LayoutEntry] = &[
    ("f1_weight", &["R", "D"]),
    ("f1_bias", &["R"]),
    ("f2a_weight", &["H", "D"]),
    ("f2a_bias", &["H"]),
    ("f2b_weight", &["R", "H"]),
    ("f2b_bias", &["R"]),
];

/// The CAUSE-TR files: K codes of width d on a rows x cols grid, FFN width
/// F, then the projection under `mlp/`.
pub const TR_LAYOUT: &[LayoutEntry] = &[
    ("codes", &["K", "d"]),
    ("pos", &["rows", "cols", "d"]),
    ("self_attn_q_weight", &["d", "d"]),
    ("self_attn_q_bias", &["d"]),
    ("self_attn_k_weight", &["d", "d"]),
    ("self_attn_k_bias", &["d"]),
    ("self_attn_v_weight", &["d", "d"]),
    ("self_attn_v_bias", &["d"]),
    ("self_attn_out_weight", &["d", "d"]),
    ("self_attn_out_bias", &["d"]),
    ("cross_attn_q_weight", &["d", "d"]),
    ("cross_attn_q_bias", &["d"]),
    ("cross_attn_k_weight", &["d", "d"]),
    ("cross_attn_k_bias", &["d"]),
    ("cross_attn_v_weight", &["d", "d"]),
    ("cross_attn_v_bias", &["d"]),
    ("cross_attn_out_weight", &["d", "d"]),
    ("cross_attn_out_bias", &["d"]),
    ("norm1_gamma", &["d"]),
    ("norm1_beta", &["d"]),
    ("norm2_gamma", &["d"]),
    ("norm2_beta", &["d"]),
    ("norm3_gamma", &["d"]),
    ("norm3_beta", &["d"]),
    ("ffn1_weight", &["F", "d"]),
    ("ffn1_bias", &["F"]),
    ("ffn2_weight", &["d", "F"]),
    ("ffn2_bias", &["d"]),
    ("mlp/f1_weight", &["R", "d"]),
    ("mlp/f1_bias", &["R"]),
    ("mlp/f2a_weight", &["H", "d"]),
    ("mlp/f2a_bias", &["H"]),
    ("mlp/f2b_weight", &["R", "H"]),
    ("mlp/f2b_bias", &["R"]),
];

/// The TR head's optional input transform `Linear(D, d)` (a folded whitening).
pub const TR_INPUT_LAYOUT: &[LayoutEntry] = &[("input_weight", &["d", "D"]), ("input_bias", &["d"])];

/// A trained segmentation head of either architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    kind: HeadKind,
    weights: Weights,
}

impl Head {
    /// A head of `kind` from named weights, checked against its layout.
    pub fn new(kind: HeadKind, weights: Weights) -> Result<Self, HeadError> {
        let mut layout = Self::layout(kind).to_vec();
        if kind == HeadKind::Tr && weights.contains("input_weight") {
            layout.extend_from_slice(TR_INPUT_LAYOUT);
        }
        weights.check(Path::new(""), &layout)?;
        Ok(Head { kind, weights })
    }

    /// The files of a `kind` head.
    pub fn layout(kind: HeadKind) -> &'static [LayoutEntry] {
        match kind {
            HeadKind::Mlp => MLP_LAYOUT,
            HeadKind::Tr => TR_LAYOUT,
        }
    }

    /// Reads the weights of a `kind` head from `dir`, checking every shape.
    pub fn load(kind: HeadKind, dir: &Path) -> Result<Self, HeadError> {
        let optional: &[LayoutEntry] = if kind == HeadKind::Tr { TR_INPUT_LAYOUT } else { &[] };
        let (weights, _) = Weights::read(dir, Self::layout(kind), optional)?;
        Ok(Head { kind, weights })
    }

    /// Writes the weights into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<(), HeadError> {
        self.weights.write(dir)
    }

    /// The architecture.
    pub fn kind(&self) -> HeadKind {
        self.kind
    }

    /// The named weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The named weights, mutable (folding a transform into the head).
    pub fn weights_mut(&mut self) -> &mut Weights {
        &mut self.weights
    }

    /// Prefix of the final `f1 + f2` projection's files.
    pub fn projection_prefix(&self) -> &'static str {
        match self.kind {
            HeadKind::Mlp => "",
            HeadKind::Tr => "mlp/",
        }
    }

    /// Backbone feature size D.
    pub fn input_dim(&self) -> usize {
        let w = &self.weights;
        match self.kind {
            HeadKind::Mlp => w.matrix("f1_weight").ncols(),
            HeadKind::Tr if w.contains("input_weight") => w.matrix("input_weight").ncols(),
            HeadKind::Tr => w.matrix("codes").ncols(),
        }
    }

    /// Output feature size R.
    pub fn output_dim(&self) -> usize {
        self.weights.matrix(&format!("{}f1_weight", self.projection_prefix())).nrows()
    }

    /// The patch grid `(rows, cols)` a TR head was trained on (None: any grid).
    pub fn grid(&self) -> Option<(usize, usize)> {
        let pos = self.weights.get("pos")?;
        Some((pos.shape()[0], pos.shape()[1]))
    }

    /// The head for a `rows` x `cols` patch grid: a TR head's positional
    /// embedding resampled bilinearly (pixel centres aligned, as
    /// `F.interpolate(align_corners=False)`; the identity at the training
    /// grid), so a model runs at any input size. An MLP head is unchanged.
    pub fn at_grid(&self, rows: usize, cols: usize) -> Head {
        let mut head = self.clone();
        if let Some(pos) = self.weights.get("pos") {
            let pos = pos.into_dimensionality::<ndarray::Ix3>().expect("pos is rows x cols x d");
            head.weights.insert("pos", resample_bilinear(pos, rows, cols));
        }
        head
    }

    /// Subtracts `mean` from the head's output (folded into the output bias).
    pub fn center_output(&mut self, mean: &ndarray::Array1<f32>) {
        let name = format!("{}f1_bias", self.projection_prefix());
        let mut bias = self.weights.vector_mut(&name);
        bias -= mean;
    }

    /// Head features of one image's tokens `[T, D]` (row-major over the
    /// grid) → `[T, R]`; a TR head only takes the grid it was trained on.
    pub fn forward(&self, tokens: ArrayView2<f32>) -> Result<Array2<f32>, GridMismatch> {
        let trunk = self.trunk(tokens)?;
        Ok(mlp(&self.weights, self.projection_prefix(), trunk.view()))
    }

    /// The final projection's weights (`f1_*`, `f2a_*`, `f2b_*`, without
    /// the head's prefix): a CAUSE-MLP head itself, a TR head's `mlp/`.
    pub fn projection(&self) -> Weights {
        let prefix = self.projection_prefix();
        let mut projection = Weights::default();
        for (name, _) in MLP_LAYOUT {
            projection.insert(*name, self.weights.get(&format!("{prefix}{name}")).expect("checked layout").to_owned());
        }
        projection
    }

    /// The head with its final projection replaced (its hidden width may
    /// differ); fails when the shapes do not fit the rest of the head.
    pub fn with_projection(&self, projection: &Weights) -> Result<Head, HeadError> {
        let mut weights = self.weights.clone();
        for (name, values) in projection.iter() {
            weights.insert(format!("{}{name}", self.projection_prefix()), values.to_owned());
        }
        Head::new(self.kind, weights)
    }

    /// What the final projection reads, `[T, d]`: the tokens themselves
    /// for an MLP head, the decoder layer's output (with the residual) for
    /// a TR head, which only takes the grid it was trained on.
    pub fn trunk(&self, tokens: ArrayView2<f32>) -> Result<Array2<f32>, GridMismatch> {
        let w = &self.weights;
        if self.kind == HeadKind::Mlp {
            return Ok(tokens.to_owned());
        }
        let (rows, cols) = self.grid().expect("a TR head has a positional embedding");
        if tokens.dim() != (rows * cols, self.input_dim()) {
            return Err(GridMismatch { rows, cols, dim: self.input_dim(), found_tokens: tokens.nrows(), found_dim: tokens.ncols() });
        }
        let x = if w.contains("input_weight") { linear(w, "input", tokens) } else { tokens.to_owned() };
        let codes = w.matrix("codes");
        let pos = w.get("pos").expect("checked").into_shape_with_order((rows * cols, codes.ncols())).expect("rows x cols x d");
        let tgt = codes.select(Axis(0), &nearest_codes(x.view(), codes));
        let with_pos = &tgt + &pos;
        let tgt = layer_norm(w, "norm1", (&tgt + &attention(w, "self_attn", with_pos.view(), with_pos.view(), tgt.view())).view());
        let with_pos = &tgt + &pos;
        let tgt = layer_norm(w, "norm2", (&tgt + &attention(w, "cross_attn", with_pos.view(), x.view(), x.view())).view());
        let hidden = linear(w, "ffn1", tgt.view()).mapv(|v| v.max(0.0));
        Ok(x + layer_norm(w, "norm3", (tgt + linear(w, "ffn2", hidden.view())).view()))
    }

    /// Head features of a patch grid `[rows, cols, D]` → `[rows, cols, R]`,
    /// on any grid (see [`Head::at_grid`]).
    pub fn apply(&self, features: ArrayView3<f32>) -> Result<Array3<f32>, GridMismatch> {
        self.on_grid(features, Head::forward)
    }

    /// [`Head::trunk`] of a patch grid, on any grid.
    pub fn apply_trunk(&self, features: ArrayView3<f32>) -> Result<Array3<f32>, GridMismatch> {
        self.on_grid(features, Head::trunk)
    }

    /// `f` of the grid's tokens, by the head resampled to the grid.
    fn on_grid(&self, features: ArrayView3<f32>, f: fn(&Head, ArrayView2<f32>) -> Result<Array2<f32>, GridMismatch>) -> Result<Array3<f32>, GridMismatch> {
        let (rows, cols, dim) = features.dim();
        let flat = features.to_shape((rows * cols, dim)).expect("contiguous features");
        let out = match self.grid() {
            Some(grid) if grid != (rows, cols) => f(&self.at_grid(rows, cols), flat.view())?,
            _ => f(self, flat.view())?,
        };
        Ok(rows_to_grid(out, rows, cols))
    }
}

/// Bilinear resampling of a `[rows, cols, d]` grid to `rows` x `cols`, with
/// pixel centres aligned and the borders clamped.
fn resample_bilinear(grid: ArrayView3<f32>, rows: usize, cols: usize) -> Array3<f32> {
    let (from_rows, from_cols, d) = grid.dim();
    let axis = |to: usize, from: usize| -> Vec<(usize, usize, f32)> {
        (0..to)
            .map(|o| {
                let g = ((o as f32 + 0.5) * from as f32 / to as f32 - 0.5).clamp(0.0, (from - 1) as f32);
                let g0 = g.floor() as usize;
                (g0, (g0 + 1).min(from - 1), g - g0 as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(rows, from_rows), axis(cols, from_cols));
    let mut out = Array3::zeros((rows, cols, d));
    for (r, &(y0, y1, wy)) in ys.iter().enumerate() {
        for (c, &(x0, x1, wx)) in xs.iter().enumerate() {
            let top = &grid.slice(s![y0, x0, ..]) * (1.0 - wx) + &grid.slice(s![y0, x1, ..]) * wx;
            let bottom = &grid.slice(s![y1, x0, ..]) * (1.0 - wx) + &grid.slice(s![y1, x1, ..]) * wx;
            out.slice_mut(s![r, c, ..]).assign(&(top * (1.0 - wy) + bottom * wy));
        }
    }
    out
}

/// Averages head features of an image and of its horizontal mirror (whose
/// grid is un-flipped first): the flip averaging of CAUSE's inference.
pub fn average_with_flipped(features: &Array3<f32>, flipped: &Array3<f32>) -> Array3<f32> {
    let mut mirrored = flipped.clone();
    mirrored.invert_axis(Axis(1));
    (features + &mirrored) * 0.5
}

/// Heads with seeded random weights, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod testing {
    use ndarray::{Array, IxDyn};
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A head of `kind` whose every weight is uniform in ±0.5 (norm gains
    /// around 1), with the sizes `sizes` gives each layout symbol; a TR head
    /// gets an input transform from `input` values when given.
    pub(crate) fn random_head(kind: HeadKind, sizes: &[(&str, usize)], input: Option<usize>, seed: u64) -> Head {
        let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let size = |symbol: &str| sizes.iter().find(|(s, _)| *s == symbol).unwrap_or_else(|| panic!("no size for {symbol}")).1;
        let mut layout = Head::layout(kind).to_vec();
        if input.is_some() {
            layout.extend_from_slice(TR_INPUT_LAYOUT);
        }
        let mut weights = Weights::default();
        for (name, symbols) in layout {
            let shape: Vec<usize> = symbols.iter().map(|s| if *s == "D" && kind == HeadKind::Tr { input.expect("D") } else { size(s) }).collect();
            let offset = if name.ends_with("gamma") { 1.0 } else { 0.0 };
            weights.insert(name, Array::from_shape_fn(IxDyn(&shape), |_| rng.random_range(-0.5f32..0.5) + offset));
        }
        Head::new(kind, weights).expect("layout-conform")
    }

    /// A TR head: width `d`, `k` codes, `grid`, FFN width `hidden`, `r` outputs.
    pub(crate) fn random_tr(input: Option<usize>, d: usize, k: usize, grid: (usize, usize), hidden: usize, r: usize, seed: u64) -> Head {
        let sizes = [("d", d), ("K", k), ("rows", grid.0), ("cols", grid.1), ("F", hidden), ("R", r), ("H", d)];
        random_head(HeadKind::Tr, &sizes, input, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1};

    fn toy_mlp() -> Head {
        let weights: Weights = [
            ("f1_weight", array![[1.0f32, 0.0]].into_dyn()),
            ("f1_bias", array![0.5f32].into_dyn()),
            ("f2a_weight", array![[1.0f32, 0.0], [0.0, -1.0]].into_dyn()),
            ("f2a_bias", array![0.0f32, 0.0].into_dyn()),
            ("f2b_weight", array![[2.0f32, 3.0]].into_dyn()),
            ("f2b_bias", array![-1.0f32].into_dyn()),
        ]
        .into_iter()
        .collect();
        Head::new(HeadKind::Mlp, weights).unwrap()
    }

    #[test]
    fn mlp_matches_hand_computation() {
        // x = (2, 1): f1 = 2 + 0.5; hidden = relu(2, -1) = (2, 0); f2 = 4 - 1.
        assert_eq!(toy_mlp().forward(array![[2.0f32, 1.0]].view()).unwrap(), array![[5.5]]);
        // x = (-1, -3): f1 = -0.5; hidden = relu(-1, 3) = (0, 3); f2 = 9 - 1.
        assert_eq!(toy_mlp().forward(array![[-1.0f32, -3.0]].view()).unwrap(), array![[7.5]]);
    }

    #[test]
    fn grid_application_keeps_the_layout() {
        let grid = Array3::from_shape_vec((1, 2, 2), vec![2.0, 1.0, -1.0, -3.0]).unwrap();
        let out = toy_mlp().apply(grid.view()).unwrap();
        assert_eq!(out.dim(), (1, 2, 1));
        assert_eq!(out.into_raw_vec_and_offset().0, vec![5.5, 7.5]);
    }

    #[test]
    fn mlp_weights_round_trip_and_bad_shapes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        toy_mlp().save(dir.path()).unwrap();
        assert_eq!(Head::load(HeadKind::Mlp, dir.path()).unwrap(), toy_mlp());
        use ndarray_npy::WriteNpyExt;
        array![1.0f32, 2.0, 3.0].write_npy(std::fs::File::create(dir.path().join("f2a_bias.npy")).unwrap()).unwrap();
        let err = Head::load(HeadKind::Mlp, dir.path()).unwrap_err().to_string();
        assert!(err.contains("f2a_bias.npy") && err.contains("shape"), "{err}");
        std::fs::remove_file(dir.path().join("f1_weight.npy")).unwrap();
        let err = Head::load(HeadKind::Mlp, dir.path()).unwrap_err().to_string();
        assert!(err.contains("f1_weight.npy"), "{err}");
    }

    #[test]
    fn flip_average_unmirrors_columns() {
        let a = Array3::from_shape_vec((1, 2, 1), vec![1.0, 3.0]).unwrap();
        let flipped = Array3::from_shape_vec((1, 2, 1), vec![5.0, 7.0]).unwrap();
        // Column 0 of the mirror image is column 1 of the original.
        assert_eq!(average_with_flipped(&a, &flipped).into_raw_vec_and_offset().0, vec![4.0, 4.0]);
    }

    /// Attention and FFN outputs zeroed and the projection the identity: the
    /// TR head adds LN(nearest code) to each token.
    fn residual_only() -> Head {
        let eye = || Array2::<f32>::eye(2).into_dyn();
        let zeros = |shape: &[usize]| ndarray::ArrayD::<f32>::zeros(shape);
        let mut weights = Weights::default();
        weights.insert("codes", array![[1.0f32, 0.0], [0.0, 3.0]]);
        weights.insert("pos", array![[[0.1f32, 0.2], [0.3, -0.4]]]);
        for attn in ["self_attn", "cross_attn"] {
            for part in ["q", "k", "v"] {
                weights.insert(format!("{attn}_{part}_weight"), eye());
                weights.insert(format!("{attn}_{part}_bias"), zeros(&[2]));
            }
            weights.insert(format!("{attn}_out_weight"), zeros(&[2, 2]));
            weights.insert(format!("{attn}_out_bias"), zeros(&[2]));
        }
        for norm in ["norm1", "norm2", "norm3"] {
            weights.insert(format!("{norm}_gamma"), Array1::<f32>::ones(2));
            weights.insert(format!("{norm}_beta"), zeros(&[2]));
        }
        weights.insert("ffn1_weight", Array2::<f32>::ones((3, 2)));
        weights.insert("ffn1_bias", zeros(&[3]));
        weights.insert("ffn2_weight", zeros(&[2, 3]));
        weights.insert("ffn2_bias", zeros(&[2]));
        for (name, values) in [("f1", eye()), ("f2a", eye()), ("f2b", zeros(&[2, 2]))] {
            weights.insert(format!("mlp/{name}_weight"), values);
            weights.insert(format!("mlp/{name}_bias"), zeros(&[2]));
        }
        Head::new(HeadKind::Tr, weights).unwrap()
    }

    #[test]
    fn tr_head_adds_the_normalised_nearest_code() {
        // Token (2, 1) is nearest (cosine) to code (1, 0), token (-1, 3) to
        // code (0, 3); LN of either code is ±(1, -1) up to eps.
        let out = residual_only().forward(array![[2.0f32, 1.0], [-1.0, 3.0]].view()).unwrap();
        let expected = array![[3.0, 0.0], [-2.0, 4.0]];
        assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-4), "{out}");
    }

    #[test]
    fn tr_input_transform_runs_first_and_the_grid_is_checked() {
        let mut head = residual_only();
        head.weights_mut().insert("input_weight", array![[2.0f32, 0.0, 0.0], [0.0, 1.0, 0.0]]);
        head.weights_mut().insert("input_bias", array![0.0f32, 1.0]);
        let head = Head::new(HeadKind::Tr, head.weights().clone()).unwrap();
        assert_eq!(head.input_dim(), 3);
        // (1, 0, 9) → (2, 1) and (-0.5, 2, 9) → (-1, 3): the case above.
        let out = head.forward(array![[1.0f32, 0.0, 9.0], [-0.5, 2.0, 9.0]].view()).unwrap();
        assert!((out[[0, 0]] - 3.0).abs() < 1e-4 && (out[[1, 1]] - 4.0).abs() < 1e-4, "{out}");
        let err = head.forward(array![[1.0f32, 0.0, 9.0]].view()).unwrap_err().to_string();
        assert!(err.contains("1x2 patch grid") && err.contains("got 1 tokens"), "{err}");
    }

    #[test]
    fn tr_weights_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let head = testing::random_tr(Some(5), 4, 3, (2, 3), 7, 2, 0);
        head.save(dir.path()).unwrap();
        let loaded = Head::load(HeadKind::Tr, dir.path()).unwrap();
        assert_eq!(loaded, head);
        assert_eq!((loaded.grid(), loaded.input_dim(), loaded.output_dim()), (Some((2, 3)), 5, 2));

        let mut no_input = head.clone();
        no_input.weights_mut().remove("input_weight");
        no_input.weights_mut().remove("input_bias");
        let dir = tempfile::tempdir().unwrap();
        no_input.save(dir.path()).unwrap();
        assert!(!dir.path().join("input_weight.npy").exists());
        assert_eq!(Head::load(HeadKind::Tr, dir.path()).unwrap(), no_input);

        use ndarray_npy::WriteNpyExt;
        array![1.0f32, 2.0].write_npy(std::fs::File::create(dir.path().join("norm2_beta.npy")).unwrap()).unwrap();
        let err = Head::load(HeadKind::Tr, dir.path()).unwrap_err().to_string();
        assert!(err.contains("norm2_beta.npy") && err.contains("shape"), "{err}");
        std::fs::remove_file(dir.path().join("cross_attn_v_weight.npy")).unwrap();
        let err = Head::load(HeadKind::Tr, dir.path()).unwrap_err().to_string();
        assert!(err.contains("cross_attn_v_weight.npy"), "{err}");
    }

    #[test]
    fn positional_embedding_interpolation_is_the_identity_at_the_training_grid() {
        let head = testing::random_tr(None, 4, 3, (2, 3), 7, 2, 5);
        assert_eq!(head.at_grid(2, 3), head);
    }

    #[test]
    fn positional_embedding_is_resampled_between_pixel_centres() {
        // A 1x2 grid [0, 1] at 1x4: centres at 1/8, 3/8, 5/8, 7/8 of the row.
        let grid = Array3::from_shape_vec((1, 2, 1), vec![0.0f32, 1.0]).unwrap();
        let wide = resample_bilinear(grid.view(), 1, 4);
        assert_eq!(wide.into_raw_vec_and_offset().0, vec![0.0, 0.25, 0.75, 1.0]);
        let head = testing::random_tr(None, 4, 3, (2, 3), 7, 2, 5);
        let larger = head.at_grid(4, 5);
        assert_eq!(larger.grid(), Some((4, 5)));
        let features = Array3::from_shape_fn((4, 5, 4), |(r, c, j)| ((r * 7 + c * 3 + j) % 5) as f32 / 2.0 - 1.0);
        assert_eq!(head.apply(features.view()).unwrap().dim(), (4, 5, 2), "apply takes any grid");
    }
}
