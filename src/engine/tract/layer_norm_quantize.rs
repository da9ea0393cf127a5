//! A LayerNorm and the int8 quantization of its output as one tract op, for
//! int8 graphs. tract runs a decomposed LayerNorm as separate passes (the
//! broadcast subtraction alone about 0.8 ms per LayerNorm at 448x336) and
//! then quantizes the result in another; this op normalises each token and
//! quantizes it in one pass over the row. tract's form of an int8 graph
//! carries it as a [`LAYER_NORM_QUANTIZE`] node (`onnx::layer_norm`), which
//! [`register`] teaches tract-onnx to read.

use tract_hir::internal::*;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::Onnx;

pub use crate::onnx::layer_norm::LAYER_NORM_QUANTIZE;

use super::quantize::quantize_into;

/// Teaches `onnx` the [`LAYER_NORM_QUANTIZE`] node: inputs `x`, `gamma`,
/// `beta` (constants `[D]`) and `y_scale` (a constant scalar), attribute
/// `epsilon`; output `int8(round(LayerNorm(x)·γ + β) / y_scale)`, saturated,
/// zero point 0.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert(LAYER_NORM_QUANTIZE, parse);
}

fn parse(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let epsilon = node.get_attr_opt::<f32>("epsilon")?.context("epsilon attribute")?;
    Ok((expand(LayerNormQuantizeNode { epsilon }), vec![]))
}

/// The ONNX node, before its constant inputs are known.
#[derive(Debug, Clone)]
struct LayerNormQuantizeNode {
    epsilon: f32,
}

impl Expansion for LayerNormQuantizeNode {
    fn name(&self) -> StaticName {
        "LayerNormQuantizeI8".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 4)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::I8)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let constant = |ix: usize| -> TractResult<Arc<Tensor>> {
            model.outlet_fact(inputs[ix])?.konst.clone().with_context(|| format!("{LAYER_NORM_QUANTIZE}: input {ix} is not a constant"))
        };
        let (gamma, beta, scale) = (constant(1)?, constant(2)?, constant(3)?);
        let op = LayerNormQuantizeI8 {
            epsilon: self.epsilon,
            gamma: gamma.cast_to::<f32>()?.into_owned().into_arc_tensor(),
            beta: beta.cast_to::<f32>()?.into_owned().into_arc_tensor(),
            inverse_scale: 1.0 / scale.cast_to_scalar::<f32>()?,
        };
        model.wire_node(prefix, op, &inputs[..1])
    }
}

/// LayerNorm over the last axis, affine `gamma`/`beta`, then quantized to
/// int8 by `inverse_scale` (zero point 0), one token row at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormQuantizeI8 {
    epsilon: f32,
    gamma: Arc<Tensor>,
    beta: Arc<Tensor>,
    inverse_scale: f32,
}

impl Eq for LayerNormQuantizeI8 {}

impl Op for LayerNormQuantizeI8 {
    fn name(&self) -> StaticName {
        "LayerNormQuantizeI8".into()
    }
    op_as_typed_op!();
}

impl EvalOp for LayerNormQuantizeI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let input_view = input.try_as_plain_ram()?;
        let xs = input_view.as_slice::<f32>()?;
        let (gamma_view, beta_view) = (self.gamma.try_as_plain_ram()?, self.beta.try_as_plain_ram()?);
        let (gamma, beta) = (gamma_view.as_slice::<f32>()?, beta_view.as_slice::<f32>()?);
        let width = gamma.len();
        ensure!(width > 0 && input.shape().last() == Some(&width), "{LAYER_NORM_QUANTIZE}: last axis {:?}, gamma {width}", input.shape());
        // SAFETY: every row of the output is written below.
        let mut output = unsafe { Tensor::uninitialized::<i8>(input.shape())? };
        {
            let mut output_view = output.try_as_plain_ram_mut()?;
            let ys = output_view.as_slice_mut::<i8>()?;
            tract_linalg::multithread::par_chunks_mut(ys, width, xs.len(), |first_row, chunk| {
                let mut row = vec![0f32; width];
                for (i, out) in chunk.chunks_mut(width).enumerate() {
                    let x = &xs[(first_row + i) * width..][..width];
                    let mean = x.iter().sum::<f32>() / width as f32;
                    let variance = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
                    let r = 1.0 / (variance + self.epsilon).sqrt();
                    for (((y, &v), &g), &b) in row.iter_mut().zip(x).zip(gamma).zip(beta) {
                        *y = (v - mean) * r * g + b;
                    }
                    quantize_into(self.inverse_scale, 0, &row, out);
                }
                Ok(())
            })?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for LayerNormQuantizeI8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(i8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::{int, Builder};
    use crate::onnx::layer_norm::fuse_quantize;
    use crate::onnx::layer_norm::tests::{layer_norm_graph, tokens};
    use crate::onnx::pb;
    use ndarray::{arr0, ArrayD};

    /// The LayerNorm → QuantizeLinear (scale 0.015, int8 zero point 0) as the
    /// graph's int8 output `q`.
    fn quantized_layer_norm() -> pb::ModelProto {
        let quantize = |b: &mut Builder| {
            let scale = b.initializer("scale", arr0(0.015f32).view().into_dyn());
            b.graph.initializer.push(pb::TensorProto { name: "zero".into(), data_type: pb::tensor_proto::DataType::Int8 as i32, raw_data: vec![0], ..Default::default() });
            b.node_named("QuantizeLinear", "q", &["ln", &scale, "zero"], vec![int("axis", 1)]);
        };
        let mut model = layer_norm_graph(quantize, &[("q", &[1, 4, 3])]);
        let output = model.graph.as_mut().unwrap().output[0].r#type.as_mut().and_then(|t| t.value.as_mut());
        if let Some(pb::type_proto::Value::TensorType(t)) = output {
            t.elem_type = pb::tensor_proto::DataType::Int8 as i32;
        }
        model
    }

    fn run(model: &pb::ModelProto, x: ArrayD<f32>) -> Vec<i8> {
        let mut onnx = tract_onnx::onnx();
        register(&mut onnx);
        let bytes = prost::Message::encode_to_vec(model);
        let plan = onnx.model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
        let outputs = plan.run(tvec!(Tensor::from(x).into_tvalue())).unwrap();
        outputs[0].to_plain_array_view::<i8>().unwrap().iter().copied().collect()
    }

    #[test]
    fn fused_layer_norm_quantizes_like_the_two_ops() {
        let model = quantized_layer_norm();
        let (fused, count) = fuse_quantize(&model);
        assert_eq!(count, 1);
        let ops: Vec<&str> = fused.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, [LAYER_NORM_QUANTIZE]);
        // The hand-picked tokens and a ramp; γ = 2 takes some values past
        // 127 · 0.015 = 1.9, so both saturate somewhere.
        let mut inputs = vec![tokens().into_dyn()];
        inputs.push(ndarray::Array3::from_shape_fn((1, 4, 3), |(_, t, c)| (t as f32 - 1.5) * (c as f32 + 0.3)).into_dyn());
        for x in inputs {
            let (expected, got) = (run(&model, x.clone()), run(&fused, x));
            assert_eq!(expected, got);
            assert!(got.iter().any(|&v| v == 127 || v == -127 || v == -128), "no saturated value in {got:?}");
        }
    }
}
