//! [`MULTI_HEAD_ATTENTION`](super::MULTI_HEAD_ATTENTION): the head reshapes, the two batched products
//! and the softmax of an attention as one op (`onnx::attention`), on `gemm`.

use std::cell::RefCell;

use rayon::prelude::*;
use tract_hir::internal::*;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;

use super::{in_tract_pool, product, softmax, Matrix, SharedOutput};

/// Parses a [`MULTI_HEAD_ATTENTION`](super::MULTI_HEAD_ATTENTION) node.
pub(super) fn parse(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let heads = node.get_attr::<i64>("heads")?;
    ensure!(heads > 0, "{}: heads must be positive, got {heads}", node.name);
    let scale = node.get_attr::<f32>("scale")?;
    Ok((expand(MultiHeadAttentionF32 { heads: heads as usize, scale }), vec![]))
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
                softmax::exponentiate_rows(scores, keys, &mut inverse_sums);
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
            // One unit per piece of work that an idle thread can take
            // (`linear`'s `eval_panels` says why).
            _ => (0..units).into_par_iter().with_max_len(1).try_for_each(block),
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
