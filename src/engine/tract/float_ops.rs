//! causeseg's own float ops for tract, on the `gemm` crate's matrix
//! products: [`LINEAR`] (a product with a constant weight and its affine
//! epilogue, `onnx::linear`) and [`MULTI_HEAD_ATTENTION`]
//! (`onnx::attention`). On the backbone's shapes `gemm` runs at about 220
//! GFLOP/s on a 2-core Zen 4 where tract's own products run at 80-165
//! (`causeseg bench --profile`); both ops run inside tract's thread pool.
//! Beside them [`LAYER_NORM_SCALE`], what is left of a LayerNorm folded
//! into its products (`onnx::layer_norm`), in one pass.

use std::cell::RefCell;

use rayon::prelude::*;
use tract_hir::internal::*;
use tract_linalg::multithread::{current_tract_executor, Executor};
use tract_linalg::routines::Func;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_onnx::tract_core::ops::math::{add, mul};
use tract_onnx::tract_core::ops::nn::gelu_exact::gelu_exact;
use tract_onnx::Onnx;

use super::{constant_input, wide};

pub use crate::onnx::attention::MULTI_HEAD_ATTENTION;
pub use crate::onnx::layer_norm::LAYER_NORM_SCALE;
pub use crate::onnx::linear::LINEAR;
use crate::onnx::linear::GELU;

/// Teaches `onnx` the three nodes. [`LAYER_NORM_SCALE`]: input `x`,
/// attribute `epsilon`; output `1 / sqrt(max(0, mean(x²) − mean(x)²) + ε)`
/// per row of the last axis, shape `[.., 1]`. [`LINEAR`]: inputs `x [.., M, K]`, `W` (a
/// constant `[K, N]`), `c` (a constant `[N]`), optionally `r [.., M,
/// 1]` (or an empty name) and the residual `s`, attribute `activation`
/// (`"gelu"` or absent); output `act((x·W) ⊙ r + c + s)`. [`MULTI_HEAD_ATTENTION`]: inputs `q`, `k`,
/// `v` `[B, N, D]` (or one `[B, N, 3·D]` holding them side by side),
/// attributes `heads` and `scale`; output `[B, N, D]`.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert(LINEAR, parse_linear);
    onnx.op_register.insert(MULTI_HEAD_ATTENTION, parse_attention);
    onnx.op_register.insert(LAYER_NORM_SCALE, parse_layer_norm_scale);
}

fn parse_layer_norm_scale(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let epsilon = node.get_attr::<f32>("epsilon")?;
    Ok((expand(LayerNormScaleF32 { epsilon }), vec![]))
}

fn parse_linear(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    ensure!((3..=5).contains(&node.input.len()), "{LINEAR} takes 3 to 5 inputs, {} has {}", node.name, node.input.len());
    let present = |i: usize| node.input.get(i).is_some_and(|name| !name.is_empty());
    let gelu = match node.get_attr_opt::<String>("activation")? {
        None => false,
        Some(a) if a == GELU => true,
        Some(other) => bail!("{}: unknown activation {other:?} (known: {GELU:?})", node.name),
    };
    Ok((expand(LinearNode { row_scale: present(3), residual: present(4), gelu }), vec![]))
}

fn parse_attention(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let heads = node.get_attr::<i64>("heads")?;
    ensure!(heads > 0, "{}: heads must be positive, got {heads}", node.name);
    let scale = node.get_attr::<f32>("scale")?;
    Ok((expand(MultiHeadAttentionF32 { heads: heads as usize, scale }), vec![]))
}

/// A [`LINEAR`] node before its constants are known: which of the
/// optional inputs and the activation it has.
#[derive(Debug, Clone)]
struct LinearNode {
    row_scale: bool,
    residual: bool,
    gelu: bool,
}

impl Expansion for LinearNode {
    fn name(&self) -> StaticName {
        "Linear".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 3 + self.row_scale as usize + self.residual as usize)?;
        check_output_arity(outputs, 1)?;
        rows_of(s, &inputs[0], &outputs[0])?;
        s.given(&inputs[0].rank, move |s, rank| s.equals(&outputs[0].shape[rank as usize - 1], &inputs[1].shape[1]))
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let (weight, bias) = (constant_input(model, inputs, 1, prefix)?, constant_input(model, inputs, 2, prefix)?);
        ensure!(weight.rank() == 2 && bias.len() == weight.shape()[1], "{prefix}: weight {:?}, bias {:?}", weight.shape(), bias.shape());
        let row_scale = self.row_scale.then(|| inputs[3]);
        let residual = self.residual.then(|| inputs[3 + self.row_scale as usize]);
        let x = model.outlet_fact(inputs[0])?.shape.clone();
        let mut y = x.to_tvec();
        *y.last_mut().context("Linear of a scalar")? = weight.shape()[1].into();
        let per_row = match row_scale {
            Some(r) => {
                let r = &model.outlet_fact(r)?.shape;
                r.rank() == x.rank() && r.last() == Some(&1.into()) && r.iter().zip(x.iter()).rev().skip(1).all(|(a, b)| a == b)
            }
            None => true,
        };
        let same_shape = residual.map_or(Ok(true), |s| Ok::<_, TractError>(*model.outlet_fact(s)?.shape == *y))?;
        if per_row && same_shape {
            let op = LinearF32::new(weight, Some(bias), row_scale.is_some(), residual.is_some(), self.gelu)?;
            let op_inputs: TVec<OutletId> = std::iter::once(inputs[0]).chain(row_scale).chain(residual).collect();
            return model.wire_node(prefix, op, &op_inputs);
        }
        // Another broadcast of the scale or the residual: tract's own ops
        // after the product.
        let mut y = model.wire_node(format!("{prefix}.product"), LinearF32::new(weight, None, false, false, false)?, &inputs[..1])?[0];
        if let Some(r) = row_scale {
            y = wire_with_rank_broadcast(format!("{prefix}.scale"), model, mul(), &[y, r])?[0];
        }
        y = wire_with_rank_broadcast(format!("{prefix}.bias"), model, add(), &[y, inputs[2]])?[0];
        if let Some(s) = residual {
            y = wire_with_rank_broadcast(format!("{prefix}.residual"), model, add(), &[y, s])?[0];
        }
        if self.gelu {
            y = model.wire_node(format!("{prefix}.gelu"), gelu_exact(), &[y])?[0];
        }
        Ok(tvec!(y))
    }
}

/// Shape rules of an op mapping each row of `input`'s last axis to a row
/// of `output`'s: a float output of the same rank and leading dimensions.
fn rows_of<'r, 'p: 'r>(s: &mut Solver<'r>, input: &'p TensorProxy, output: &'p TensorProxy) -> InferenceResult {
    s.equals(&output.datum_type, DatumType::F32)?;
    s.equals(&output.rank, &input.rank)?;
    s.given(&input.rank, move |s, rank| (0..rank as usize - 1).try_for_each(|axis| s.equals(&output.shape[axis], &input.shape[axis])))
}

/// `act((x·W) ⊙ r + c + s)` (`r` when `row_scale`, the residual `s` when
/// `residual`, act GELU when `gelu`). With `r`, the rows of `x` are scaled
/// before the product, each followed by a 1 that takes the bias from an
/// extra last row of the weight; without, the product is added to rows of
/// the bias. The residual is copied into the output first and the product
/// added to it; the GELU runs over the output's rows in parallel.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearF32 {
    /// `[K, N]`, or `[K + 1, N]` (the bias last) with `row_scale`.
    weight: Arc<Tensor>,
    /// The bias (`[N]`) the product is added to, without `row_scale` (none:
    /// the plain product, or the residual alone).
    bias: Option<Arc<Tensor>>,
    row_scale: bool,
    residual: bool,
    gelu: bool,
}

impl LinearF32 {
    /// The op for a `[K, N]` `weight` and a `[N]` `bias` (none: the plain
    /// product); its inputs are `x`, then `r` with `row_scale`, then `s`
    /// with `residual`.
    fn new(weight: Arc<Tensor>, bias: Option<Arc<Tensor>>, row_scale: bool, residual: bool, gelu: bool) -> TractResult<Self> {
        if !row_scale {
            return Ok(LinearF32 { weight, bias, row_scale, residual, gelu });
        }
        let n = weight.shape()[1];
        let bias = match bias {
            Some(bias) => bias.into_tensor().into_shape(&[1, n])?,
            None => Tensor::zero::<f32>(&[1, n])?,
        };
        let weight = Tensor::stack_tensors(0, &[weight.into_tensor(), bias])?;
        Ok(LinearF32 { weight: weight.into_arc_tensor(), bias: None, row_scale, residual, gelu })
    }
}

impl Eq for LinearF32 {}

impl Op for LinearF32 {
    fn name(&self) -> StaticName {
        "LinearF32".into()
    }
    op_as_typed_op!();
}

impl EvalOp for LinearF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (k, n) = (self.weight.shape()[0], self.weight.shape()[1]);
        let x_view = inputs[0].try_as_plain_ram()?;
        let x = x_view.as_slice::<f32>()?;
        let width = k - self.row_scale as usize;
        ensure!(inputs[0].shape().last() == Some(&width), "input {:?} for a [{k}, {n}] weight", inputs[0].shape());
        let m = x.len() / width;
        let mut scaled: Vec<f32> = vec![];
        let lhs = if self.row_scale {
            let r_view = inputs[1].try_as_plain_ram()?;
            let r = r_view.as_slice::<f32>()?;
            ensure!(r.len() == m, "{} row scales for {m} rows", r.len());
            scaled.resize(m * k, 0.0);
            tract_linalg::multithread::par_chunks_mut(&mut scaled, k, m * k, |first_row, chunk| {
                for (i, out) in chunk.chunks_exact_mut(k).enumerate() {
                    let (row, s) = (&x[(first_row + i) * width..][..width], r[first_row + i]);
                    out[..width].iter_mut().zip(row).for_each(|(o, v)| *o = v * s);
                    out[width] = 1.0;
                }
                Ok(())
            })?;
            &scaled[..]
        } else {
            x
        };
        let mut shape: TVec<usize> = inputs[0].shape().into();
        *shape.last_mut().expect("rank checked by the rules") = n;
        let residual_view = self.residual.then(|| inputs[inputs.len() - 1].try_as_plain_ram()).transpose()?;
        let residual = residual_view.as_ref().map(|v| v.as_slice::<f32>()).transpose()?;
        ensure!(residual.is_none_or(|s| s.len() == m * n), "residual {:?} for a [{m}, {n}] output", inputs[inputs.len() - 1].shape());
        let bias_view = self.bias.as_ref().map(|b| b.try_as_plain_ram()).transpose()?;
        let bias = bias_view.as_ref().map(|v| v.as_slice::<f32>()).transpose()?;
        // SAFETY: every value is written below (the rows the product is
        // added to, or the product).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        {
            let mut y_view = output.try_as_plain_ram_mut()?;
            let y = y_view.as_slice_mut::<f32>()?;
            let accumulate = residual.is_some() || bias.is_some();
            if accumulate {
                tract_linalg::multithread::par_chunks_mut(y, n, m * n, |first_row, chunk| {
                    for (i, row) in chunk.chunks_exact_mut(n).enumerate() {
                        match (residual.map(|s| &s[(first_row + i) * n..][..n]), bias) {
                            (Some(s), Some(b)) => row.iter_mut().zip(s.iter().zip(b)).for_each(|(o, (s, b))| *o = s + b),
                            (Some(s), None) => row.copy_from_slice(s),
                            (None, Some(b)) => row.copy_from_slice(b),
                            (None, None) => unreachable!("accumulating onto something"),
                        }
                    }
                    Ok(())
                })?;
            }
            let w_view = self.weight.try_as_plain_ram()?;
            let w = w_view.as_slice::<f32>()?;
            in_tract_pool(|parallelism| {
                // SAFETY: the three buffers are row-major with the sizes
                // and strides given (checked above), `y` not aliased.
                unsafe { product(Matrix::rows(lhs, m, k, k), Matrix::rows(w, k, n, n), y.as_mut_ptr(), n, accumulate, 1.0, parallelism) }
            });
            if self.gelu {
                exact_gelu(y, n)?;
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

/// `y ← y · (erf(y / √2) + 1) / 2`, rows of `n` values spread over tract's
/// threads, erf by tract's own kernel (as its `GeluExact` does on one
/// thread).
fn exact_gelu(y: &mut [f32], n: usize) -> TractResult<()> {
    let erf = Func::Erf.ew_f32()?;
    tract_linalg::multithread::par_chunks_mut(y, n, y.len(), |_, chunk| {
        let mut scratch = vec![0f32; n];
        wide::vectorised(|| {
            for row in chunk.chunks_exact_mut(n) {
                scratch.iter_mut().zip(row.iter()).for_each(|(s, v)| *s = v * std::f32::consts::FRAC_1_SQRT_2);
                erf.run(&mut scratch)?;
                row.iter_mut().zip(&scratch).for_each(|(v, e)| *v *= 0.5 * (e + 1.0));
            }
            Ok(())
        })
    })
}

impl TypedOp for LinearF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        *shape.last_mut().context("Linear of a scalar")? = self.weight.shape()[1].into();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        // The product's own multiply-adds (not the bias row's).
        let values: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(DatumType::F32), values * self.weight.shape()[1])))
    }

    as_op!();
}

/// Query rows per unit of parallel work of [`MultiHeadAttentionF32`]: 24
/// units per block at 448x336 for the cores to share; 128 to all 769 rows
/// ran within 5 % of each other on 2 cores (5.3-5.6 ms per block).
const QUERY_BLOCK: usize = 256;

/// `concat_h(softmax(scale · Q_h·K_hᵀ)·V_h)` over `[B, N, D]` inputs (or
/// one `[B, N, 3·D]` input holding them side by side), one
/// block of at most [`QUERY_BLOCK`] queries of one head at a time; the softmax's
/// division moved after the second product (on `D/H` values per row
/// instead of `N`).
#[derive(Debug, Clone, PartialEq)]
pub struct MultiHeadAttentionF32 {
    heads: usize,
    scale: f32,
}

impl Eq for MultiHeadAttentionF32 {}

impl Expansion for MultiHeadAttentionF32 {
    fn name(&self) -> StaticName {
        "MultiHeadAttention".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&inputs[0].rank, 3)?;
        s.equals(&outputs[0].rank, 3)?;
        if inputs.len() == 1 {
            s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
            s.equals(&outputs[0].shape[1], &inputs[0].shape[1])?;
            return s.given(&inputs[0].shape[2], move |s, packed| s.equals(&outputs[0].shape[2], packed / 3));
        }
        check_input_arity(inputs, 3)?;
        s.equals(&inputs[1].rank, 3)?;
        s.equals(&inputs[1].shape, &inputs[2].shape)?;
        s.equals(&inputs[0].shape[0], &inputs[1].shape[0])?;
        s.equals(&inputs[0].shape[2], &inputs[1].shape[2])?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for MultiHeadAttentionF32 {
    fn name(&self) -> StaticName {
        "MultiHeadAttentionF32".into()
    }
    op_as_typed_op!();
}

thread_local! {
    /// One block's scores, reused by the thread across blocks and runs.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The output's address, shared by the blocks that write disjoint parts.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32);
// SAFETY: every block writes its own rows of its own head's channels.
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

impl EvalOp for MultiHeadAttentionF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let &[batch, tokens, width] = inputs[0].shape() else { bail!("attention input {:?} is not [B, N, D]", inputs[0].shape()) };
        // Three inputs [B, N, D] (the keys' and values' N may differ from
        // the queries'), or one packed [B, N, 3·D].
        let (dim, keys) = match inputs.len() {
            1 => (width / 3, tokens),
            _ => (width, inputs[1].shape()[1]),
        };
        ensure!(dim % self.heads == 0, "{dim} channels do not split into {} heads", self.heads);
        let head_dim = dim / self.heads;
        let views = inputs.iter().map(|i| i.try_as_plain_ram()).collect::<TractResult<Vec<_>>>()?;
        let slices = views.iter().map(|v| v.as_slice::<f32>()).collect::<TractResult<Vec<_>>>()?;
        // Each operand's values, the column of its first channel and its tokens.
        let [q, k, v] = match slices.as_slice() {
            [qkv] => [(*qkv, 0, tokens), (*qkv, dim, tokens), (*qkv, 2 * dim, tokens)],
            [q, k, v] => [(*q, 0, tokens), (*k, 0, keys), (*v, 0, keys)],
            _ => bail!("attention takes 1 or 3 inputs, got {}", slices.len()),
        };
        let (max, exp_sum) = (Func::ReduceMax.reduce_f32()?, Func::Softmax2.map_reduce_f32()?);
        // SAFETY: every block writes its rows of its head's channels.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[batch, tokens, dim])? };
        let out = SharedOutput(output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?.as_mut_ptr());
        // Blocks of equal size, at most QUERY_BLOCK rows (257 tokens: 129 + 128, not 256 + 1).
        let blocks = tokens.div_ceil(QUERY_BLOCK);
        let block_rows = tokens.div_ceil(blocks);
        let block = |unit: usize| -> TractResult<()> {
            let (b, h, first) = (unit / (self.heads * blocks), unit / blocks % self.heads, unit % blocks * block_rows);
            let rows = block_rows.min(tokens - first);
            // Where head h's values of token `row` start, in an operand
            // and in the output.
            let operand_at = |(_, column, tokens): (&[f32], usize, usize), row: usize| (b * tokens + row) * width + column + h * head_dim;
            let out_at = |row: usize| (b * tokens + row) * dim + h * head_dim;
            SCORES.with_borrow_mut(|scores| {
                scores.resize(rows * keys, 0.0);
                // K_hᵀ read in place: column j of it is token j's key.
                let key_matrix = Matrix { data: &k.0[operand_at(k, 0)..], rows: head_dim, cols: keys, row_stride: 1, col_stride: width };
                // SAFETY: the views lie inside q, k, v and `scores`; the
                // output block (rows × head_dim at stride dim) is this
                // unit's alone.
                unsafe {
                    product(Matrix::rows(&q.0[operand_at(q, first)..], rows, head_dim, width), key_matrix, scores.as_mut_ptr(), keys, false, self.scale, gemm::Parallelism::None);
                }
                let mut inverse_sums = [0f32; QUERY_BLOCK];
                for (row, inverse) in scores.chunks_exact_mut(keys).zip(&mut inverse_sums) {
                    let row_max = max.run(row)?;
                    *inverse = 1.0 / exp_sum.run_with_params(row, row_max)?;
                }
                let destination = unsafe { out.add(out_at(first)) };
                unsafe {
                    product(Matrix::rows(scores, rows, keys, keys), Matrix::rows(&v.0[operand_at(v, 0)..], keys, head_dim, width), destination, dim, false, 1.0, gemm::Parallelism::None);
                    for (row, inverse) in inverse_sums[..rows].iter().enumerate() {
                        std::slice::from_raw_parts_mut(destination.add(row * dim), head_dim).iter_mut().for_each(|o| *o *= inverse);
                    }
                }
                Ok(())
            })
        };
        let units = batch * self.heads * blocks;
        in_tract_pool(|parallelism| match parallelism {
            gemm::Parallelism::None => (0..units).try_for_each(block),
            _ => (0..units).into_par_iter().try_for_each(block),
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MultiHeadAttentionF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        if inputs.len() == 1 {
            shape[2] = shape[2].clone() / 3;
        }
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        // Two products of N·M·D multiply-adds per batch item (N queries, M keys).
        let shape = self.output_facts(inputs)?.remove(0).shape;
        let keys = inputs.get(1).map_or(shape[1].clone(), |k| k.shape[1].clone());
        Ok(tvec!((Cost::FMA(DatumType::F32), shape[0].clone() * shape[1].clone() * keys * shape[2].clone() * 2)))
    }

    as_op!();
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

/// The per-row scale of a folded LayerNorm (`onnx::layer_norm`), both
/// moments in one pass over each row: tract ran them as two reductions
/// (0.41 ms per LayerNorm at 448x336, release).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormScaleF32 {
    epsilon: f32,
}

impl Eq for LayerNormScaleF32 {}

impl Expansion for LayerNormScaleF32 {
    fn name(&self) -> StaticName {
        "LayerNormScale".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        rows_of(s, &inputs[0], &outputs[0])?;
        s.given(&inputs[0].rank, move |s, rank| s.equals(&outputs[0].shape[rank as usize - 1], TDim::from(1)))
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for LayerNormScaleF32 {
    fn name(&self) -> StaticName {
        "LayerNormScaleF32".into()
    }
    op_as_typed_op!();
}

impl EvalOp for LayerNormScaleF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x_view = inputs[0].try_as_plain_ram()?;
        let x = x_view.as_slice::<f32>()?;
        let width = *inputs[0].shape().last().context("LayerNormScale of a scalar")?;
        ensure!(width > 0, "LayerNormScale over an empty axis");
        let mut shape: TVec<usize> = inputs[0].shape().into();
        *shape.last_mut().expect("checked above") = 1;
        let mut scales = vec![0f32; x.len() / width];
        let rows = scales.len();
        tract_linalg::multithread::par_chunks_mut(&mut scales, 1, rows * width, |first_row, chunk| {
            super::wide::vectorised(|| {
                for (i, scale) in chunk.iter_mut().enumerate() {
                    let (sum, sum_of_squares) = lane_moments(&x[(first_row + i) * width..][..width]);
                    let mean = sum / width as f32;
                    let variance = (sum_of_squares / width as f32 - mean * mean).max(0.0);
                    *scale = 1.0 / (variance + self.epsilon).sqrt();
                }
            });
            Ok(())
        })?;
        Ok(tvec!(Tensor::from_shape(&shape, &scales)?.into_tvalue()))
    }
}

impl TypedOp for LayerNormScaleF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        *shape.last_mut().context("LayerNormScale of a scalar")? = 1.into();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// The sum and the sum of squares of `values`, in 16 interleaved partial
/// sums each, which the compiler vectorises.
#[inline(always)]
fn lane_moments(values: &[f32]) -> (f32, f32) {
    let (mut sums, mut squares) = ([0f32; 16], [0f32; 16]);
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for ((sum, square), v) in sums.iter_mut().zip(squares.iter_mut()).zip(chunk) {
            *sum += v;
            *square += v * v;
        }
    }
    let tail = (rest.iter().sum::<f32>(), rest.iter().map(|v| v * v).sum::<f32>());
    (sums.iter().sum::<f32>() + tail.0, squares.iter().sum::<f32>() + tail.1)
}
