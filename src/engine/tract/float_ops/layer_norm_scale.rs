//! [`LAYER_NORM_SCALE`](super::LAYER_NORM_SCALE): the per-row scale left of a LayerNorm folded
//! into its products (`onnx::layer_norm`), in one pass.

use tract_hir::internal::*;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;

use super::rows_of;
use crate::engine::tract::wide;

/// Parses a [`LAYER_NORM_SCALE`](super::LAYER_NORM_SCALE) node.
pub(super) fn parse(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let epsilon = node.get_attr::<f32>("epsilon")?;
    Ok((expand(LayerNormScaleF32 { epsilon }), vec![]))
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
            wide::vectorised(|| {
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
