//! causeseg's own int8 ops for tract: the per-element passes around an
//! int8 graph's products fused into one pass per token row. tract runs a
//! decomposed LayerNorm as separate passes (the broadcast subtraction
//! alone about 0.8 ms per LayerNorm at 448x336) and quantizes its output in
//! another; the MLP's first layer takes four (cast, rescale and bias,
//! GELU, quantize). tract's form of an int8 graph carries them as
//! [`LAYER_NORM_QUANTIZE`] nodes (`onnx::layer_norm`) and
//! [`DEQUANTIZE_GELU_QUANTIZE`] nodes (`onnx::gelu`), which [`register`]
//! teaches tract-onnx to read.

use tract_hir::internal::*;
use tract_linalg::routines::Func;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::Onnx;

pub use crate::onnx::gelu::DEQUANTIZE_GELU_QUANTIZE;
pub use crate::onnx::layer_norm::LAYER_NORM_QUANTIZE;

use super::constant_input;
use super::quantize::quantize_into;

/// Teaches `onnx` both nodes. [`LAYER_NORM_QUANTIZE`]: inputs `x`, `gamma`,
/// `beta` (constants `[D]`) and `y_scale` (a constant scalar), attribute
/// `epsilon`; output `int8(round((LayerNorm(x)·γ + β) / y_scale))`,
/// saturated, zero point 0. [`DEQUANTIZE_GELU_QUANTIZE`]: inputs an int32
/// product, `scale` and `bias` (constants, one per channel), `y_scale` and
/// optionally `m` (a constant per channel, SmoothQuant's `1 / s`); output
/// `int8(round(GELU(x·scale + bias)·m / y_scale))`.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert(LAYER_NORM_QUANTIZE, parse_layer_norm);
    onnx.op_register.insert(DEQUANTIZE_GELU_QUANTIZE, parse_gelu);
}

fn parse_layer_norm(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let epsilon = node.get_attr_opt::<f32>("epsilon")?.context("epsilon attribute")?;
    Ok((expand(Int8RowNode { kind: RowKind::LayerNorm { epsilon } }), vec![]))
}

fn parse_gelu(_ctx: &ParsingContext, _node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(Int8RowNode { kind: RowKind::Gelu }), vec![]))
}

/// Which of the two ops a node is, with its attributes.
#[derive(Debug, Clone, Copy)]
enum RowKind {
    LayerNorm { epsilon: f32 },
    Gelu,
}

/// Either ONNX node, before its constant inputs are known: one input
/// tensor, three constants, an int8 output of the input's shape.
#[derive(Debug, Clone)]
struct Int8RowNode {
    kind: RowKind,
}

impl Expansion for Int8RowNode {
    fn name(&self) -> StaticName {
        match self.kind {
            RowKind::LayerNorm { .. } => "LayerNormQuantizeI8".into(),
            RowKind::Gelu => "DequantizeGeluQuantizeI8".into(),
        }
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        let smoothed_gelu = matches!(self.kind, RowKind::Gelu) && inputs.len() == 5;
        check_input_arity(inputs, if smoothed_gelu { 5 } else { 4 })?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::I8)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let constant = |ix: usize| constant_input(model, inputs, ix, &self.name());
        let (a, b) = (constant(1)?, constant(2)?);
        let inverse_scale = 1.0 / constant(3)?.cast_to_scalar::<f32>()?;
        match self.kind {
            RowKind::LayerNorm { epsilon } => model.wire_node(prefix, LayerNormQuantizeI8 { epsilon, gamma: a, beta: b, inverse_scale }, &inputs[..1]),
            RowKind::Gelu => {
                // One scale per channel, also when the weight had one.
                let scale = if a.len() == 1 { tensor1(&vec![a.cast_to_scalar::<f32>()?; b.len()]).into_arc_tensor() } else { a };
                let multiplier = if inputs.len() == 5 { constant(4)? } else { tensor1(&vec![1f32; b.len()]).into_arc_tensor() };
                model.wire_node(prefix, DequantizeGeluQuantizeI8 { scale, bias: b, multiplier, inverse_scale }, &inputs[..1])
            }
        }
    }
}

/// Applies `row` to each row of `input` (rows of its last axis, `width`
/// values), in parallel on tract's executor: an int8 tensor of its shape.
/// `row` also gets a scratch buffer of `2·width` floats, reused across rows.
fn int8_rows<T: Datum>(input: &TValue, width: usize, row: impl Fn(&[T], &mut [i8], &mut [f32]) + Sync + Send) -> TractResult<TValue> {
    let input_view = input.try_as_plain_ram()?;
    let xs = input_view.as_slice::<T>()?;
    ensure!(width > 0 && input.shape().last() == Some(&width), "last axis {:?}, {width} parameters", input.shape());
    // SAFETY: every row of the output is written below.
    let mut output = unsafe { Tensor::uninitialized::<i8>(input.shape())? };
    {
        let mut output_view = output.try_as_plain_ram_mut()?;
        let ys = output_view.as_slice_mut::<i8>()?;
        tract_linalg::multithread::par_chunks_mut(ys, width, xs.len(), |first_row, chunk| {
            let mut scratch = vec![0f32; 2 * width];
            for (i, out) in chunk.chunks_mut(width).enumerate() {
                row(&xs[(first_row + i) * width..][..width], out, &mut scratch);
            }
            Ok(())
        })?;
    }
    Ok(output.into_tvalue())
}

/// The sum of `values` in 16 interleaved partial sums, which the compiler
/// vectorises (a plain float sum keeps its sequential order: one add
/// latency per value, most of this op's time when it did).
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + rest
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
        let (gamma_view, beta_view) = (self.gamma.try_as_plain_ram()?, self.beta.try_as_plain_ram()?);
        let (gamma, beta) = (gamma_view.as_slice::<f32>()?, beta_view.as_slice::<f32>()?);
        let width = gamma.len();
        let output = int8_rows::<f32>(&input, width, |x, out, scratch| {
            let row = &mut scratch[..width];
            let mean = lane_sum(x) / width as f32;
            for (y, &v) in row.iter_mut().zip(x) {
                *y = (v - mean) * (v - mean);
            }
            let r = 1.0 / (lane_sum(row) / width as f32 + self.epsilon).sqrt();
            for (((y, &v), &g), &b) in row.iter_mut().zip(x).zip(gamma).zip(beta) {
                *y = (v - mean) * r * g + b;
            }
            quantize_into(self.inverse_scale, 0, row, out);
        })?;
        Ok(tvec!(output))
    }
}

impl TypedOp for LayerNormQuantizeI8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(i8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}


/// `GELU(x·scale + bias)·multiplier` of an int32 product (scale, bias and
/// multiplier per output channel), quantized to int8 by `inverse_scale`
/// (zero point 0); GELU with tract's own erf kernel, as tract's GeluExact
/// computes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DequantizeGeluQuantizeI8 {
    scale: Arc<Tensor>,
    bias: Arc<Tensor>,
    multiplier: Arc<Tensor>,
    inverse_scale: f32,
}

impl Eq for DequantizeGeluQuantizeI8 {}

impl Op for DequantizeGeluQuantizeI8 {
    fn name(&self) -> StaticName {
        "DequantizeGeluQuantizeI8".into()
    }
    op_as_typed_op!();
}

impl EvalOp for DequantizeGeluQuantizeI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let (scale_view, bias_view, multiplier_view) = (self.scale.try_as_plain_ram()?, self.bias.try_as_plain_ram()?, self.multiplier.try_as_plain_ram()?);
        let (scale, bias, multiplier) = (scale_view.as_slice::<f32>()?, bias_view.as_slice::<f32>()?, multiplier_view.as_slice::<f32>()?);
        let erf = Func::Erf.ew_f32()?;
        let inverse_sqrt_2 = std::f32::consts::FRAC_1_SQRT_2;
        let output = int8_rows::<i32>(&input, bias.len(), |x, out, scratch| {
            let (values, erfs) = scratch.split_at_mut(bias.len());
            for ((((v, e), &i), &s), &b) in values.iter_mut().zip(erfs.iter_mut()).zip(x).zip(scale).zip(bias) {
                *v = i as f32 * s + b;
                *e = *v * inverse_sqrt_2;
            }
            erf.run(erfs).expect("tract's erf kernel runs on any f32 slice");
            for ((v, e), m) in values.iter_mut().zip(erfs.iter()).zip(multiplier) {
                *v = (*v * 0.5) * (e + 1.0) * m;
            }
            quantize_into(self.inverse_scale, 0, values, out);
        })?;
        Ok(tvec!(output))
    }
}

impl TypedOp for DequantizeGeluQuantizeI8 {
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
    use ndarray::arr0;

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

    fn run(model: &pb::ModelProto, x: impl Into<Tensor>) -> Vec<i8> {
        let mut onnx = tract_onnx::onnx();
        register(&mut onnx);
        let bytes = prost::Message::encode_to_vec(model);
        let plan = onnx.model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
        let outputs = plan.run(tvec!(x.into().into_tvalue())).unwrap();
        outputs[0].to_plain_array_view::<i8>().unwrap().iter().copied().collect()
    }

    /// `x` (int8 `[1, 4, 3]`) → MatMulInteger with an int8 `[3, 5]` weight →
    /// Cast, rescale per channel, bias → GELU as the export writes it →
    /// QuantizeLinear (scale 0.008, int8 zero point 0) as the output `q`.
    fn quantized_gelu(multiplier: Option<ndarray::Array1<f32>>) -> pb::ModelProto {
        let mut g = pb::GraphProto::default();
        let mut b = Builder { graph: &mut g };
        let int8 = |name: &str, dims: Vec<i64>, values: Vec<i8>| pb::TensorProto { name: name.into(), dims, data_type: pb::tensor_proto::DataType::Int8 as i32, raw_data: values.into_iter().map(|v| v as u8).collect(), ..Default::default() };
        b.graph.initializer.push(int8("w", vec![3, 5], vec![12, -40, 7, 127, -127, 0, 33, -90, 64, 5, -18, 77, 21, -3, 99]));
        b.graph.initializer.push(int8("zero", vec![], vec![0]));
        let scale = b.initializer("scale", ndarray::array![1e-4f32, 2e-4, 5e-5, 1.5e-4, 1e-4].into_dyn().view());
        let bias = b.initializer("bias", ndarray::array![0.3f32, -0.5, 0.0, 1.0, -2.0].into_dyn().view());
        let constant = |b: &mut Builder, name: &str, v: f32| b.initializer(name, arr0(v).view().into_dyn());
        let (root_two, one, half, y_scale) = (constant(&mut b, "root_two", std::f32::consts::SQRT_2), constant(&mut b, "one", 1.0), constant(&mut b, "half", 0.5), constant(&mut b, "y_scale", 0.008));
        b.node_named("MatMulInteger", "product", &["x", "w"], vec![]);
        b.node_named("Cast", "sum", &["product"], vec![int("to", pb::tensor_proto::DataType::Float as i64)]);
        b.node_named("Mul", "rescaled", &["sum", &scale], vec![]);
        b.node_named("Add", "v", &[&bias, "rescaled"], vec![]);
        b.node_named("Div", "divided", &["v", &root_two], vec![]);
        b.node_named("Erf", "erf", &["divided"], vec![]);
        b.node_named("Add", "erf_plus_one", &["erf", &one], vec![]);
        b.node_named("Mul", "gelu_twice", &["v", "erf_plus_one"], vec![]);
        b.node_named("Mul", "gelu", &["gelu_twice", &half], vec![]);
        let quantized = match multiplier {
            Some(m) => {
                let m = b.initializer("multiplier", m.into_dyn().view());
                b.node_named("Mul", "gelu_smoothed", &["gelu", &m], vec![])
            }
            None => "gelu".to_string(),
        };
        b.node_named("QuantizeLinear", "q", &[&quantized, &y_scale, "zero"], vec![]);
        let info = |name: &str, dims: &[i64], elem: pb::tensor_proto::DataType| {
            let mut info = crate::onnx::float_value_info(name, &dims.iter().map(|&d| crate::onnx::Dim::Value(d)).collect::<Vec<_>>());
            if let Some(pb::type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
                t.elem_type = elem as i32;
            }
            info
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
            graph: Some(pb::GraphProto { input: vec![info("x", &[1, 4, 3], pb::tensor_proto::DataType::Int8)], output: vec![info("q", &[1, 4, 5], pb::tensor_proto::DataType::Int8)], ..g }),
            ..Default::default()
        }
    }

    #[test]
    fn fused_gelu_quantizes_like_the_separate_ops() {
        // Plain, and smoothed (a Mul by SmoothQuant's 1 / s between the GELU and its quantization).
        for multiplier in [None, Some(ndarray::array![0.5f32, 2.0, 1.0, 0.25, 4.0])] {
            let model = quantized_gelu(multiplier.clone());
            let (fused, count) = crate::onnx::gelu::fuse_gelu_quantize(&model);
            assert_eq!(count, 1, "{multiplier:?}");
            let ops: Vec<&str> = fused.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
            assert_eq!(ops, ["MatMulInteger", DEQUANTIZE_GELU_QUANTIZE]);
            let x = ndarray::Array3::from_shape_fn((1, 4, 3), |(_, t, c)| ((t as i32 * 37 + c as i32 * 53) % 255 - 127) as i8);
            let (expected, got) = (run(&model, x.clone().into_dyn()), run(&fused, x.into_dyn()));
            assert_eq!(expected, got, "{multiplier:?}");
            assert!(got.contains(&127) && got.iter().any(|&v| v < 0), "saturation and GELU's negative dip in {got:?}");
        }
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
