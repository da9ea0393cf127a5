//! The integer form of a QDQ graph, the int8 form tract runs. tract
//! evaluates a QDQ graph in float (dequantised weights plus the Q/DQ
//! arithmetic), slower than the float graph; a `MatMulInteger` runs on its
//! int8 kernels (AVX-512 VNNI on x86, dot-product instructions on ARM).
//!
//! Each weight product of the QDQ graph, `MatMul(DQ(Q(x, sx)), DQ(w, sw))`
//! with `w` an int8 initializer scaled per output channel (or per tensor),
//! becomes `Mul(Cast(MatMulInteger(Q(x, sx), w)), sx·sw)`: the same
//! products, summed exactly in int32, then rescaled. Every other input
//! behind a DequantizeLinear (the attention products of two activations,
//! the patch Conv) gets its float value back: the activation itself, or
//! the dequantised weight. Those products stay float because rescaling
//! their large outputs costs tract more than the int8 product saves.

use std::collections::HashMap;

use crate::onnx::builder::{int, Builder};
use crate::onnx::{drop_unused, float_values, pb};

/// `qdq` with its weight products as `MatMulInteger` and the rest of its
/// Q/DQ pairs removed, and how many products were rewritten (0: `qdq` has
/// no weight product behind Q/DQ, and the graph is only stripped of Q/DQ).
pub fn integer_form(qdq: &pb::ModelProto) -> (pb::ModelProto, usize) {
    without_qdq(qdq, true)
}

/// `qdq` with every Q/DQ pair removed and its int8 weights dequantized: a
/// float graph with the int8 model's weights, for CPUs on which tract's
/// int8 products are slower than its float ones (no int8 dot-product
/// instructions: 2.9x slower than float on an AVX2 Zen).
pub fn dequantized_form(qdq: &pb::ModelProto) -> pb::ModelProto {
    without_qdq(qdq, false).0
}

/// `qdq` stripped of its Q/DQ pairs, each weight product as a
/// `MatMulInteger` when `integer_products`; and how many were.
fn without_qdq(qdq: &pb::ModelProto, integer_products: bool) -> (pb::ModelProto, usize) {
    let mut model = qdq.clone();
    let graph = model.graph.as_mut().expect("read_model checks the graph");
    let initializers: HashMap<String, pb::TensorProto> = graph.initializer.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let producers: HashMap<String, pb::NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.clone(), n.clone()))).collect();
    let dequantize = |tensor: &str| producers.get(tensor).filter(|n| n.op_type == "DequantizeLinear");
    let quantized_input = |dq: &pb::NodeProto| producers.get(&dq.input[0]).filter(|n| n.op_type == "QuantizeLinear");

    let old_nodes = std::mem::take(&mut graph.node);
    let mut rewritten = 0;
    let mut dequantized: HashMap<String, String> = HashMap::new();
    let mut b = Builder { graph };
    for mut node in old_nodes {
        if node.op_type == "MatMul" && integer_products {
            if let Some(product) = weight_product(&node, &dequantize, &quantized_input, &initializers) {
                let name = node.output[0].clone();
                let scale = b.initializer(&format!("{name}/int8_scale"), product.scale.view().into_dyn());
                let sum = b.node("MatMulInteger", &format!("{name}/int8"), &[&product.x_int8, &product.w_int8], vec![]);
                let sum = b.node("Cast", &format!("{name}/int8_sum"), &[&sum], vec![int("to", pb::tensor_proto::DataType::Float as i64)]);
                b.node_named("Mul", &name, &[&sum, &scale], vec![]);
                rewritten += 1;
                continue;
            }
        }
        if !matches!(node.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear") {
            for input in &mut node.input {
                if let Some(dq) = dequantize(input) {
                    *input = match quantized_input(dq) {
                        Some(q) => q.input[0].clone(),
                        None => dequantized.entry(dq.input[0].clone()).or_insert_with(|| dequantized_weight(&mut b, dq, &initializers)).clone(),
                    };
                }
            }
        }
        b.graph.node.push(node);
    }
    drop_unused(b.graph);
    (model, rewritten)
}

/// What a weight product needs: the int8 activation and weight tensors and
/// the output scale `sx·sw` (one value, or one per output channel).
struct WeightProduct {
    x_int8: String,
    w_int8: String,
    scale: ndarray::Array1<f32>,
}

/// `node` as a weight product when its inputs are `DQ(Q(x))` and a 2-D
/// int8 initializer behind a DQ scaled per column or per tensor, all zero
/// points 0 (as causeseg's QDQ graphs have them).
fn weight_product<'a>(
    node: &pb::NodeProto,
    dequantize: &impl Fn(&str) -> Option<&'a pb::NodeProto>,
    quantized_input: &impl Fn(&pb::NodeProto) -> Option<&'a pb::NodeProto>,
    initializers: &HashMap<String, pb::TensorProto>,
) -> Option<WeightProduct> {
    let (x_dq, w_dq) = (dequantize(&node.input[0])?, dequantize(&node.input[1])?);
    quantized_input(x_dq)?;
    let weight = initializers.get(&w_dq.input[0]).filter(|w| w.dims.len() == 2 && w.data_type == pb::tensor_proto::DataType::Int8 as i32)?;
    let x_scale = float_values(initializers.get(&x_dq.input[1])?);
    let w_scale = float_values(initializers.get(&w_dq.input[1])?);
    let axis = w_dq.attribute.iter().find(|a| a.name == "axis").map_or(1, |a| a.i);
    let per_column = w_scale.len() == weight.dims[1] as usize && (axis == 1 || axis == -1);
    let zero_points_are_zero = [x_dq, w_dq].iter().all(|dq| dq.input.get(2).is_none_or(|z| initializers.get(z).is_some_and(|t| t.raw_data.iter().all(|&b| b == 0) && t.int32_data.iter().all(|&v| v == 0))));
    if x_scale.len() != 1 || !(per_column || w_scale.len() == 1) || !zero_points_are_zero {
        return None;
    }
    Some(WeightProduct { x_int8: x_dq.input[0].clone(), w_int8: weight.name.clone(), scale: w_scale.iter().map(|s| s * x_scale[0]).collect() })
}

/// A float initializer with the values of the weight behind `dq`, for a
/// consumer that is not rewritten; returns its name.
fn dequantized_weight(b: &mut Builder, dq: &pb::NodeProto, initializers: &HashMap<String, pb::TensorProto>) -> String {
    let weight = &initializers[&dq.input[0]];
    let scales = float_values(&initializers[&dq.input[1]]);
    let dims: Vec<usize> = weight.dims.iter().map(|&d| d as usize).collect();
    let axis = dq.attribute.iter().find(|a| a.name == "axis").map_or(1, |a| a.i);
    let axis = if axis < 0 { axis + dims.len() as i64 } else { axis } as usize;
    let int8 = ndarray::ArrayD::from_shape_vec(dims, weight.raw_data.iter().map(|&v| v as i8 as f32).collect()).expect("dims match the data");
    let values = if scales.len() == 1 {
        int8 * scales[0]
    } else {
        let mut shape = vec![1; int8.ndim()];
        shape[axis] = scales.len();
        int8 * ndarray::ArrayD::from_shape_vec(shape, scales).expect("one scale per channel")
    };
    b.initializer(&format!("{}/dequantized", dq.input[0]), values.view())
}
