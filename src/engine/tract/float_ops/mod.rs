//! causeseg's own float ops for tract: [`LINEAR`] (a product with a
//! constant weight and its affine epilogue, `onnx::linear`; `linear`), on
//! causeseg's own AVX2 kernel (`panels`) or the `gemm` crate, and
//! [`MULTI_HEAD_ATTENTION`] (`onnx::attention`; `attention`) on `gemm`.
//! On the backbone's shapes `gemm` runs at about 220 GFLOP/s on a 2-core
//! Zen 4 where tract's own products run at 80-165 (`causeseg bench
//! --profile`); both ops run inside tract's thread pool. Beside them
//! [`LAYER_NORM_SCALE`], what is left of a LayerNorm folded into its
//! products (`onnx::layer_norm`), in one pass (`layer_norm_scale`).

use tract_hir::internal::*;
use tract_linalg::multithread::{current_tract_executor, Executor};
use tract_onnx::Onnx;

pub use crate::onnx::attention::MULTI_HEAD_ATTENTION;
pub use crate::onnx::layer_norm::LAYER_NORM_SCALE;
pub use crate::onnx::linear::LINEAR;
pub use linear::PRODUCT_KERNEL_ENV;

mod attention;
mod layer_norm_scale;
mod linear;
mod panels;
mod softmax;

/// Teaches `onnx` the three nodes. [`LAYER_NORM_SCALE`]: input `x`,
/// attribute `epsilon`; output `1 / sqrt(max(0, mean(x²) − mean(x)²) + ε)`
/// per row of the last axis, shape `[.., 1]`. [`LINEAR`]: inputs `x [.., M, K]`, `W` (a
/// constant `[K, N]`), `c` (a constant `[N]`), optionally `r [.., M,
/// 1]` (or an empty name) and the residual `s`, attribute `activation`
/// (`"gelu"` or absent); output `act((x·W) ⊙ r + c + s)`. [`MULTI_HEAD_ATTENTION`]: inputs `q`, `k`,
/// `v` `[B, N, D]` (or one `[B, N, 3·D]` holding them side by side),
/// attributes `heads` and `scale`; output `[B, N, D]`.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert(LINEAR, linear::parse);
    onnx.op_register.insert(MULTI_HEAD_ATTENTION, attention::parse);
    onnx.op_register.insert(LAYER_NORM_SCALE, layer_norm_scale::parse);
}

/// Shape rules of an op mapping each row of `input`'s last axis to a row
/// of `output`'s: a float output of the same rank and leading dimensions.
fn rows_of<'r, 'p: 'r>(s: &mut Solver<'r>, input: &'p TensorProxy, output: &'p TensorProxy) -> InferenceResult {
    s.equals(&output.datum_type, DatumType::F32)?;
    s.equals(&output.rank, &input.rank)?;
    s.given(&input.rank, move |s, rank| (0..rank as usize - 1).try_for_each(|axis| s.equals(&output.shape[axis], &input.shape[axis])))
}

/// A matrix inside a slice: element `(i, j)` at `i·row_stride + j·col_stride`.
struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// `rows × cols`, row-major, rows `row_stride` apart.
    fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Matrix { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// Whether every element lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// An output's address, shared by the units of parallel work that write
/// disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32);
// SAFETY: each unit writes its own part (the callers' contract).
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The address `offset` values in.
    ///
    /// # Safety
    /// `offset` must lie inside the output.
    unsafe fn add(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `dst = scale · lhs·rhs` (plus `dst` when `accumulate`), `dst` row-major
/// with rows `dst_row_stride` apart, by the `gemm` crate.
///
/// # Safety
/// `dst` must be valid for writes of `lhs.rows` rows of `rhs.cols` values
/// at that stride and alias neither operand.
unsafe fn product(lhs: Matrix, rhs: Matrix, dst: *mut f32, dst_row_stride: usize, accumulate: bool, scale: f32, parallelism: gemm::Parallelism) {
    assert!(lhs.cols == rhs.rows && lhs.fits() && rhs.fits(), "operands [{}, {}] x [{}, {}]", lhs.rows, lhs.cols, rhs.rows, rhs.cols);
    let stride = |s: usize| s as isize;
    gemm::gemm(
        lhs.rows,
        rhs.cols,
        lhs.cols,
        dst,
        1,
        stride(dst_row_stride),
        accumulate,
        lhs.data.as_ptr(),
        stride(lhs.col_stride),
        stride(lhs.row_stride),
        rhs.data.as_ptr(),
        stride(rhs.col_stride),
        stride(rhs.row_stride),
        1.0,
        scale,
        false,
        false,
        false,
        parallelism,
    )
}

/// Runs `f` inside tract's thread pool (where its own products run), with
/// the `gemm` parallelism that uses it.
fn in_tract_pool<R: Send>(f: impl FnOnce(gemm::Parallelism) -> R + Send) -> R {
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 => pool.install(|| f(gemm::Parallelism::Rayon(0))),
        _ => f(gemm::Parallelism::None),
    }
}
