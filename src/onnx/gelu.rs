//! The MLP's middle in an int8 integer graph as one node, for tract: the
//! first layer's int32 product rescaled to float with its bias, GELU, and
//! the int8 quantization of the result. tract runs these as four passes
//! over the `[tokens, 4·D]` activation (cast, rescale and bias, GELU,
//! quantize); [`fuse_gelu_quantize`] makes them one
//! [`DEQUANTIZE_GELU_QUANTIZE`] node that tract runs as one op
//! (`engine::tract::int8_ops`).

use std::collections::HashMap;

use super::builder::replace_nodes;
use super::{pb, GraphIndex};

/// Op type (domain `builder::CAUSESEG_DOMAIN`) of `int8(GELU(int32 · scale + bias) · m)`:
/// inputs the int32 product, `scale` (one per output channel, or one),
/// `bias` (one per output channel), the output's `y_scale` and, optionally,
/// `m` (one per channel: SmoothQuant's `1 / s`, `calibrate::smooth`); zero point 0.
pub const DEQUANTIZE_GELU_QUANTIZE: &str = "DequantizeGeluQuantizeLinear";

/// One match: the int32 product, the rescale and the bias, by the
/// quantization's output name.
struct Match {
    product: String,
    scale: Vec<f32>,
    bias: Vec<f32>,
    y_scale: String,
    /// SmoothQuant's per-channel multiplier between the GELU and the quantization.
    multiplier: Option<Vec<f32>>,
}

/// `model` (an int8 integer form) with every `QuantizeLinear(GELU(Add(b,
/// Mul(Cast(MatMulInteger), s))))`, or `QuantizeLinear(Mul(GELU(…), m))`
/// with a constant `m` per channel (a smoothed GELU), whose intermediate
/// values nothing else reads replaced by one [`DEQUANTIZE_GELU_QUANTIZE`]
/// node; and how many were. GELU as the backbone's export writes it: `x · (Erf(x / √2) + 1) ·
/// 0.5`.
pub fn fuse_gelu_quantize(model: &pb::ModelProto) -> (pb::ModelProto, usize) {
    let graph = model.graph.as_ref().expect("read_model checks the graph");
    let index = GraphIndex::new(graph);
    let matches: HashMap<String, Match> = graph.node.iter().filter_map(|q| Some((q.output.first()?.clone(), matched(&index, graph, q)?))).collect();
    if matches.is_empty() {
        return (model.clone(), 0);
    }
    let fused = replace_nodes(model, &matches, |b, out, m| {
        let scale = b.initializer(&format!("{out}/dequantize_scale"), ndarray::ArrayD::from_shape_vec(vec![m.scale.len()], m.scale.clone()).expect("1-D").view());
        let bias = b.initializer(&format!("{out}/bias"), ndarray::ArrayD::from_shape_vec(vec![m.bias.len()], m.bias.clone()).expect("1-D").view());
        let mut inputs = vec![m.product.clone(), scale, bias, m.y_scale.clone()];
        if let Some(multiplier) = &m.multiplier {
            inputs.push(b.initializer(&format!("{out}/multiplier"), ndarray::ArrayD::from_shape_vec(vec![multiplier.len()], multiplier.clone()).expect("1-D").view()));
        }
        b.causeseg_node(DEQUANTIZE_GELU_QUANTIZE, out, &inputs.iter().map(String::as_str).collect::<Vec<_>>(), vec![]);
    });
    (fused, matches.len())
}

/// `q` as the end of the pattern, every value inside read only inside it.
fn matched(index: &GraphIndex, graph: &pb::GraphProto, q: &pb::NodeProto) -> Option<Match> {
    let (quantized, y_scale) = index.int8_quantize(q)?;
    // A smoothed GELU: Mul(GELU, m) with m constant (GELU's own last node
    // is a Mul by 0.5, whose input is no GELU output).
    let smoothed = index.producer(quantized, "Mul").and_then(|mul| index.with_constant(mul, "Mul")).filter(|(gelu, _)| exact_gelu_input(index, graph, gelu).is_some());
    let (gelu, multiplier) = match smoothed {
        Some((gelu, m)) if index.read_only_inside(graph, gelu, 1) && index.read_only_inside(graph, quantized, 1) => (gelu, Some(m)),
        _ => (quantized, None),
    };
    let biased = index.producer(exact_gelu_input(index, graph, gelu)?, "Add")?;
    let (rescaled, bias) = index.with_constant(biased, "Add")?;
    let (cast, scale) = index.with_constant(index.producer(rescaled, "Mul")?, "Mul")?;
    let cast_node = index.producer(cast, "Cast")?;
    let product_int32 = index.producer(&cast_node.input[0], "MatMulInteger")?;
    let per_channel = (scale.len() == 1 || scale.len() == bias.len()) && multiplier.as_ref().is_none_or(|m| m.len() == bias.len());
    let inside = [(cast, 1), (rescaled, 1), (&biased.output[0], 2), (gelu, 1), (&product_int32.output[0], 1)]
        .iter()
        .all(|&(tensor, readers)| index.read_only_inside(graph, tensor, readers));
    (per_channel && inside).then(|| Match { product: product_int32.output[0].clone(), scale, bias, y_scale: y_scale.to_string(), multiplier })
}

/// The input `x` of `gelu` when it is the end of GELU as the backbone's
/// export writes it, `x · (Erf(x / √2) + 1) · 0.5`, with the values
/// between `x` and `gelu` read only inside it (`x` itself and `gelu` may
/// be read elsewhere).
pub fn exact_gelu_input<'g>(index: &GraphIndex<'g>, graph: &pb::GraphProto, gelu: &str) -> Option<&'g str> {
    let (product, half) = index.with_constant(index.producer(gelu, "Mul")?, "Mul")?;
    let product_node = index.producer(product, "Mul")?;
    let [p0, p1] = product_node.input.as_slice() else { return None };
    // x · (Erf(x / √2) + 1), in either order.
    let (x, erf_plus_one) = [(p0, p1), (p1, p0)].into_iter().find(|(_, e)| index.producer(e, "Add").is_some())?;
    let (erf, one) = index.with_constant(index.producer(erf_plus_one, "Add")?, "Add")?;
    let erf_node = index.producer(erf, "Erf")?;
    let (divided, root_two) = index.with_constant(index.producer(&erf_node.input[0], "Div")?, "Div")?;
    let is_gelu = divided == x && half == [0.5] && one == [1.0] && root_two.len() == 1 && (root_two[0] - std::f32::consts::SQRT_2).abs() < 1e-6;
    let inside = [product, erf, erf_plus_one.as_str(), erf_node.input[0].as_str()].iter().all(|t| index.read_only_inside(graph, t, 1));
    (is_gelu && inside).then_some(x.as_str())
}
