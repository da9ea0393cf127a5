//! The trained CAUSE segmentation head at run time, in plain ndarray (no
//! training framework needed on the robot).
//!
//! MLP head (CAUSE-MLP): `out = f1(x) + f2b(relu(f2a(x)))` per patch, with
//! `f1 = Linear(D, R)`, `f2a = Linear(D, H)`, `f2b = Linear(H, R)` (R = 90 by
//! default; H = D in CAUSE, the whitened width when training whitened the
//! input, see `train::whiten`). Weights are stored as float32 `.npy` files in PyTorch layout
//! (`weight [out, in]`, `bias [out]`) inside the model directory, so a head
//! exported from the official CAUSE code can be imported by converting its
//! state dict to these files.
//!
//! The concept vectors (cluster probe) then live in the head's output space:
//! the model's `centroids` are `[K, R]`.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Array3, ArrayView2, ArrayView3, Axis};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use serde::{Deserialize, Serialize};

use super::tr_head::{GridMismatch, TrHead};

/// File names of the MLP head's tensors inside [`HeadSpec::dir`].
pub const MLP_FILES: [&str; 6] = ["f1_weight.npy", "f1_bias.npy", "f2a_weight.npy", "f2a_bias.npy", "f2b_weight.npy", "f2b_bias.npy"];

/// Which head architecture a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// CAUSE-MLP: linear + two-layer MLP branch.
    Mlp,
    /// CAUSE-TR: one transformer decoder layer queried by the clusterbook,
    /// then the MLP projection (see [`super::tr_head`]).
    Tr,
}

/// A trained segmentation head of either architecture.
// One head per model: the variants' size difference (array headers only,
// the weights live on the heap) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    /// CAUSE-MLP.
    Mlp(MlpHead),
    /// CAUSE-TR.
    Tr(TrHead),
}

impl Head {
    /// Reads the weights of a `kind` head from `dir`.
    pub fn load(kind: HeadKind, dir: &Path) -> Result<Self, HeadError> {
        Ok(match kind {
            HeadKind::Mlp => Head::Mlp(MlpHead::load(dir)?),
            HeadKind::Tr => Head::Tr(TrHead::load(dir)?),
        })
    }

    /// Writes the weights into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), HeadError> {
        match self {
            Head::Mlp(h) => h.save(dir),
            Head::Tr(h) => h.save(dir),
        }
    }

    /// The architecture.
    pub fn kind(&self) -> HeadKind {
        match self {
            Head::Mlp(_) => HeadKind::Mlp,
            Head::Tr(_) => HeadKind::Tr,
        }
    }

    /// Backbone feature size D.
    pub fn input_dim(&self) -> usize {
        match self {
            Head::Mlp(h) => h.input_dim(),
            Head::Tr(h) => h.input_dim(),
        }
    }

    /// Output feature size R.
    pub fn output_dim(&self) -> usize {
        match self {
            Head::Mlp(h) => h.output_dim(),
            Head::Tr(h) => h.output_dim(),
        }
    }

    /// Head features of a patch grid `[rows, cols, D]` → `[rows, cols, R]`
    /// (a TR head only takes the grid it was trained on).
    pub fn apply(&self, features: ArrayView3<f32>) -> Result<Array3<f32>, GridMismatch> {
        match self {
            Head::Mlp(h) => Ok(h.apply(features)),
            Head::Tr(h) => h.apply(features),
        }
    }

    /// The final `f1 + f2` projection, whose output bias takes a folded
    /// output centring.
    pub fn projection_mut(&mut self) -> &mut MlpHead {
        match self {
            Head::Mlp(h) => h,
            Head::Tr(h) => &mut h.mlp,
        }
    }
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
    BadFile { path: PathBuf, reason: String },
}

/// One linear layer, PyTorch layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Array2<f32>,
    /// `[out]`.
    pub bias: Array1<f32>,
}

impl Linear {
    /// `x [n, in]` → `[n, out]`.
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut y = x.dot(&self.weight.t());
        y += &self.bias;
        y
    }
}

/// The MLP head's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpHead {
    /// `Linear(D, R)`.
    pub f1: Linear,
    /// `Linear(D, H)` before the ReLU.
    pub f2a: Linear,
    /// `Linear(H, R)` after the ReLU.
    pub f2b: Linear,
}

impl MlpHead {
    /// Backbone feature size D.
    pub fn input_dim(&self) -> usize {
        self.f1.weight.ncols()
    }

    /// Output feature size R.
    pub fn output_dim(&self) -> usize {
        self.f1.weight.nrows()
    }

    /// Head features of tokens `x [n, D]` → `[n, R]`.
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut hidden = self.f2a.forward(x);
        hidden.mapv_inplace(|v| v.max(0.0));
        let mut out = self.f2b.forward(hidden.view());
        out += &self.f1.forward(x);
        out
    }

    /// Head features of a patch grid `[rows, cols, D]` → `[rows, cols, R]`.
    pub fn apply(&self, features: ArrayView3<f32>) -> Array3<f32> {
        let (rows, cols, dim) = features.dim();
        let flat = features.to_shape((rows * cols, dim)).expect("contiguous features");
        let out = self.forward(flat.view());
        rows_to_grid(out, rows, cols)
    }

    /// Loads the six weight files from `dir` and checks their shapes.
    pub fn load(dir: &Path) -> Result<Self, HeadError> {
        let read2 = |name: &str| -> Result<Array2<f32>, HeadError> {
            let path = dir.join(name);
            let bad = |reason: String| HeadError::BadFile { path: path.clone(), reason };
            let file = std::fs::File::open(&path).map_err(|e| bad(e.to_string()))?;
            Array2::<f32>::read_npy(std::io::BufReader::new(file)).map_err(|e| bad(format!("not a float32 2-D .npy: {e}")))
        };
        let read1 = |name: &str| -> Result<Array1<f32>, HeadError> {
            let path = dir.join(name);
            let bad = |reason: String| HeadError::BadFile { path: path.clone(), reason };
            let file = std::fs::File::open(&path).map_err(|e| bad(e.to_string()))?;
            Array1::<f32>::read_npy(std::io::BufReader::new(file)).map_err(|e| bad(format!("not a float32 1-D .npy: {e}")))
        };
        let head = MlpHead {
            f1: Linear { weight: read2(MLP_FILES[0])?, bias: read1(MLP_FILES[1])? },
            f2a: Linear { weight: read2(MLP_FILES[2])?, bias: read1(MLP_FILES[3])? },
            f2b: Linear { weight: read2(MLP_FILES[4])?, bias: read1(MLP_FILES[5])? },
        };
        let (r, d) = head.f1.weight.dim();
        let h = head.f2a.weight.nrows();
        let expected = [(r, d), (r, 1), (h, d), (h, 1), (r, h), (r, 1)];
        let found = [
            head.f1.weight.dim(),
            (head.f1.bias.len(), 1),
            head.f2a.weight.dim(),
            (head.f2a.bias.len(), 1),
            head.f2b.weight.dim(),
            (head.f2b.bias.len(), 1),
        ];
        for ((name, e), f) in MLP_FILES.iter().zip(expected).zip(found) {
            if e != f {
                return Err(HeadError::BadFile {
                    path: dir.join(name),
                    reason: format!("shape {f:?} does not match the head's layout {d} -> {h} -> {r} (expected {e:?})"),
                });
            }
        }
        Ok(head)
    }

    /// Writes the six weight files into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<(), HeadError> {
        std::fs::create_dir_all(dir).map_err(|e| HeadError::BadFile { path: dir.into(), reason: e.to_string() })?;
        let write = |name: &str, result: &dyn Fn(std::io::BufWriter<std::fs::File>) -> Result<(), ndarray_npy::WriteNpyError>| {
            let path = dir.join(name);
            let bad = |reason: String| HeadError::BadFile { path: path.clone(), reason };
            let file = std::fs::File::create(&path).map_err(|e| bad(e.to_string()))?;
            result(std::io::BufWriter::new(file)).map_err(|e| bad(e.to_string()))
        };
        let layers = [&self.f1, &self.f2a, &self.f2b];
        for (i, layer) in layers.iter().enumerate() {
            write(MLP_FILES[2 * i], &|w| layer.weight.write_npy(w))?;
            write(MLP_FILES[2 * i + 1], &|w| layer.bias.write_npy(w))?;
        }
        Ok(())
    }
}

/// Per-token rows `[rows * cols, C]` (any memory layout, e.g. a matrix
/// product's) as a standard-layout grid `[rows, cols, C]`.
pub fn rows_to_grid(tokens: Array2<f32>, rows: usize, cols: usize) -> Array3<f32> {
    let channels = tokens.ncols();
    tokens.as_standard_layout().into_owned().into_shape_with_order((rows, cols, channels)).expect("rows * cols tokens")
}

/// Averages head features of an image and of its horizontal mirror (whose
/// grid is un-flipped first): the flip-averaging of CAUSE's inference.
pub fn average_with_flipped(features: &Array3<f32>, flipped: &Array3<f32>) -> Array3<f32> {
    let mut mirrored = flipped.clone();
    mirrored.invert_axis(Axis(1));
    (features + &mirrored) * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn toy() -> MlpHead {
        MlpHead {
            f1: Linear { weight: array![[1.0, 0.0]], bias: array![0.5] },
            f2a: Linear { weight: array![[1.0, 0.0], [0.0, -1.0]], bias: array![0.0, 0.0] },
            f2b: Linear { weight: array![[2.0, 3.0]], bias: array![-1.0] },
        }
    }

    #[test]
    fn mlp_matches_hand_computation() {
        // x = (2, 1): f1 = 2 + 0.5; hidden = relu(2, -1) = (2, 0); f2 = 4 - 1.
        let out = toy().forward(array![[2.0f32, 1.0]].view());
        assert_eq!(out, array![[5.5]]);
        // x = (-1, -3): f1 = -0.5; hidden = relu(-1, 3) = (0, 3); f2 = 9 - 1.
        let out = toy().forward(array![[-1.0f32, -3.0]].view());
        assert_eq!(out, array![[7.5]]);
    }

    #[test]
    fn grid_application_keeps_the_layout() {
        let grid = Array3::from_shape_vec((1, 2, 2), vec![2.0, 1.0, -1.0, -3.0]).unwrap();
        let out = toy().apply(grid.view());
        assert_eq!(out.dim(), (1, 2, 1));
        assert_eq!(out.into_raw_vec_and_offset().0, vec![5.5, 7.5]);
    }

    #[test]
    fn weights_round_trip_and_bad_shapes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        toy().save(dir.path()).unwrap();
        assert_eq!(MlpHead::load(dir.path()).unwrap(), toy());
        array![1.0f32, 2.0, 3.0].write_npy(std::fs::File::create(dir.path().join("f2a_bias.npy")).unwrap()).unwrap();
        let err = MlpHead::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("f2a_bias.npy") && err.contains("shape"), "{err}");
        std::fs::remove_file(dir.path().join("f1_weight.npy")).unwrap();
        let err = MlpHead::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("f1_weight.npy"), "{err}");
    }

    #[test]
    fn flip_average_unmirrors_columns() {
        let a = Array3::from_shape_vec((1, 2, 1), vec![1.0, 3.0]).unwrap();
        let flipped = Array3::from_shape_vec((1, 2, 1), vec![5.0, 7.0]).unwrap();
        // Column 0 of the mirror image is column 1 of the original.
        assert_eq!(average_with_flipped(&a, &flipped).into_raw_vec_and_offset().0, vec![4.0, 4.0]);
    }
}
