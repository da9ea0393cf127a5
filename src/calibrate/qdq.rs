//! Which nodes are quantized ([`plan`]) and the QDQ graph ([`quantize`]),
//! following TensorRT's explicit-quantization rules: symmetric int8, zero
//! points 0; activations per tensor (QuantizeLinear → DequantizeLinear in
//! front of the consuming node); weights per output channel, narrow range
//! -127..127, stored as int8 initializers behind a DequantizeLinear with
//! `axis`. Q/DQ sit only on the inputs of MatMul, Gemm and Conv. A node
//! fed by a Softmax stays float (tract 0.23.9 turns Q/DQ around a Softmax
//! into a wrong lookup table), and LayerNorm, GELU and Softmax themselves
//! are never given Q/DQ inputs.

use std::collections::{HashMap, HashSet};

use super::table::CalibrationTable;
use crate::onnx::builder::int;
use crate::onnx::{float_values, pb};

/// Node types whose inputs are quantized.
pub const QUANTIZED_OPS: [&str; 3] = ["MatMul", "Gemm", "Conv"];
/// Node types whose outputs are never quantized.
const FLOAT_PRODUCERS: [&str; 1] = ["Softmax"];
/// The lowest default-domain opset with per-axis QuantizeLinear/DequantizeLinear.
const MIN_OPSET: i64 = 13;

/// A float initializer input of a quantized node.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightInput {
    /// Input slot of the node.
    pub slot: usize,
    /// Initializer name.
    pub name: String,
    /// Output-channel axis (None: one scale for the whole tensor).
    pub axis: Option<usize>,
}

/// One node that gets int8 inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantNode {
    /// Index in the graph's node list.
    pub index: usize,
    /// The node's name (its first output when it has none).
    pub name: String,
    /// Its first output tensor.
    pub output: String,
    /// Its type (MatMul, Gemm, Conv).
    pub op: String,
    /// Activation inputs: (slot, tensor name).
    pub activations: Vec<(usize, String)>,
    /// Weight inputs.
    pub weights: Vec<WeightInput>,
}

/// Which nodes are quantized and why the others of a quantizable type are not.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Nodes that get int8 inputs.
    pub nodes: Vec<QuantNode>,
    /// (node name, reason) of MatMul/Gemm/Conv nodes left in float.
    pub skipped: Vec<(String, String)>,
}

impl Plan {
    /// The activation tensors to calibrate, each once, in graph order.
    pub fn activation_tensors(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.nodes.iter().flat_map(|n| n.activations.iter().map(|(_, t)| t.clone())).filter(|t| seen.insert(t.clone())).collect()
    }
}

/// True when `name` matches an `--exclude` pattern (`*` matches any run of
/// characters, everything else itself).
pub fn excluded(name: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| wildcard_match(p, name))
}

/// Whether `text` matches `pattern`, whose `*` match any run of characters.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else { return rest.is_empty() };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The MatMul/Gemm/Conv nodes of `graph` to quantize; nodes whose name or
/// first output matches `exclude` stay float.
pub fn plan(graph: &pb::GraphProto, exclude: &[String]) -> Plan {
    let initializers: HashMap<&str, &pb::TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let producer: HashMap<&str, &str> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n.op_type.as_str()))).collect();
    let mut plan = Plan::default();
    for (index, node) in graph.node.iter().enumerate() {
        if !QUANTIZED_OPS.contains(&node.op_type.as_str()) {
            continue;
        }
        let output = node.output.first().cloned().unwrap_or_default();
        let name = if node.name.is_empty() { output.clone() } else { node.name.clone() };
        let mut skip = |reason: String| plan.skipped.push((name.clone(), reason));
        if excluded(&name, exclude) || excluded(&output, exclude) {
            skip("excluded".into());
            continue;
        }
        let mut quant = QuantNode { index, name: name.clone(), output, op: node.op_type.clone(), activations: vec![], weights: vec![] };
        let mut reason = None;
        for (slot, input) in node.input.iter().enumerate().take(2) {
            match initializers.get(input.as_str()) {
                Some(t) if t.data_type != pb::tensor_proto::DataType::Float as i32 => reason = Some(format!("input {input} is not float")),
                Some(t) => quant.weights.push(WeightInput { slot, name: input.clone(), axis: channel_axis(node, slot, t.dims.len()) }),
                None => match producer.get(input.as_str()) {
                    Some(op) if FLOAT_PRODUCERS.contains(op) => reason = Some(format!("input {input} comes from a {op}, which stays float")),
                    _ => quant.activations.push((slot, input.clone())),
                },
            }
        }
        match reason {
            Some(reason) => skip(reason),
            None if quant.activations.is_empty() => skip("no activation input".into()),
            None => plan.nodes.push(quant),
        }
    }
    plan
}

/// The output-channel axis of a weight in input `slot` of `node`, of rank `rank`.
fn channel_axis(node: &pb::NodeProto, slot: usize, rank: usize) -> Option<usize> {
    let attr = |name: &str| node.attribute.iter().find(|a| a.name == name).map_or(0, |a| a.i);
    match (node.op_type.as_str(), slot) {
        ("Conv", 1) => Some(0),
        ("MatMul", 1) if rank >= 2 => Some(rank - 1),
        ("MatMul", 0) if rank >= 2 => Some(rank - 2),
        ("Gemm", 1) => Some(if attr("transB") == 1 { 0 } else { 1 }),
        _ => None,
    }
}

/// Why a graph cannot be quantized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QdqError {
    /// Nothing in the graph (after exclusions and the table) can be quantized.
    #[error("nothing to quantize: no MatMul/Gemm/Conv node with a calibrated activation input ({0})")]
    NothingToQuantize(String),
    /// The graph's opset predates per-axis QuantizeLinear/DequantizeLinear.
    #[error("the graph's opset is {0}; per-channel QDQ needs opset {MIN_OPSET} or later")]
    Opset(i64),
}

/// `model`, smoothed by `table`'s SmoothQuant factors, with Q/DQ on the
/// inputs of every planned node whose activations `table` has scales for.
pub fn quantize(model: &pb::ModelProto, table: &CalibrationTable) -> Result<pb::ModelProto, QdqError> {
    let opset = model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(1, |o| o.version);
    if opset < MIN_OPSET {
        return Err(QdqError::Opset(opset));
    }
    let smoothed = super::smooth::apply(model, &table.smoothing);
    let model = &smoothed;
    let graph = model.graph.as_ref().expect("read_model checks the graph");
    let plan = plan(graph, &table.settings.exclude);
    let nodes: Vec<&QuantNode> = plan
        .nodes
        .iter()
        .filter(|n| {
            let missing: Vec<&str> = n.activations.iter().map(|(_, t)| t.as_str()).filter(|t| !table.activations.contains_key(*t)).collect();
            if !missing.is_empty() {
                log::warn!("{}: no calibrated scale for {}; left float", n.name, missing.join(", "));
            }
            missing.is_empty()
        })
        .collect();
    if nodes.is_empty() {
        let reason = if plan.nodes.is_empty() { format!("{} skipped or excluded", plan.skipped.len()) } else { "the table has none of their inputs".into() };
        return Err(QdqError::NothingToQuantize(reason));
    }
    let weights: HashMap<&str, &pb::TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut g = graph.clone();
    let mut before: HashMap<usize, Vec<pb::NodeProto>> = HashMap::new();
    let mut done: HashMap<String, String> = HashMap::new();
    for node in &nodes {
        let inserted = before.entry(node.index).or_default();
        for (slot, tensor) in &node.activations {
            let dq = done.entry(tensor.clone()).or_insert_with(|| {
                let scale = table.activations[tensor].scale;
                let (scale_name, zero_name) = (format!("{tensor}/scale"), format!("{tensor}/zero_point"));
                g.initializer.push(float_tensor(&scale_name, &[], &[scale]));
                g.initializer.push(int8_tensor(&zero_name, &[], &[0]));
                let (q, dq) = (format!("{tensor}/q"), format!("{tensor}/dq"));
                inserted.push(qdq_node("QuantizeLinear", &q, &[tensor, &scale_name, &zero_name], None));
                inserted.push(qdq_node("DequantizeLinear", &dq, &[&q, &scale_name, &zero_name], None));
                dq
            });
            g.node[node.index].input[*slot] = dq.clone();
        }
        for weight in &node.weights {
            let dq = done.entry(weight.name.clone()).or_insert_with(|| {
                let (values, scales, dims) = quantize_weight(weights[weight.name.as_str()], weight.axis);
                let (data, scale_name, zero_name) = (format!("{}/int8", weight.name), format!("{}/scale", weight.name), format!("{}/zero_point", weight.name));
                let channels = [scales.len() as i64];
                let scale_dims: &[i64] = if weight.axis.is_some() { &channels } else { &[] };
                g.initializer.push(int8_tensor(&data, &dims, &values));
                g.initializer.push(float_tensor(&scale_name, scale_dims, &scales));
                g.initializer.push(int8_tensor(&zero_name, scale_dims, &vec![0; scales.len()]));
                let dq = format!("{}/dq", weight.name);
                inserted.push(qdq_node("DequantizeLinear", &dq, &[&data, &scale_name, &zero_name], weight.axis));
                dq
            });
            g.node[node.index].input[weight.slot] = dq.clone();
        }
    }
    let old = std::mem::take(&mut g.node);
    for (i, node) in old.into_iter().enumerate() {
        g.node.extend(before.remove(&i).unwrap_or_default());
        g.node.push(node);
    }
    let used: HashSet<String> = g.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    let unused = |name: &str| weights.contains_key(name) && !used.contains(name);
    g.initializer.retain(|t| !unused(&t.name));
    g.input.retain(|i| !unused(&i.name));
    g.name = format!("{}_int8_qdq", graph.name);
    Ok(pb::ModelProto { graph: Some(g), ..model.clone() })
}

/// Symmetric narrow-range int8 values, scales and dims of a float weight,
/// per channel along `axis` (or per tensor). Rounds half to even, as
/// QuantizeLinear does.
fn quantize_weight(tensor: &pb::TensorProto, axis: Option<usize>) -> (Vec<i8>, Vec<f32>, Vec<i64>) {
    let values = float_values(tensor);
    let dims: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
    let (channels, inner) = match axis {
        Some(a) => (dims[a], dims[a + 1..].iter().product::<usize>()),
        None => (1, values.len().max(1)),
    };
    let channel_of = |i: usize| (i / inner) % channels;
    let mut amax = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = channel_of(i);
        amax[c] = amax[c].max(v.abs());
    }
    let scales: Vec<f32> = amax.iter().map(|&a| if a > 0.0 { a / 127.0 } else { 1.0 }).collect();
    let q = values.iter().enumerate().map(|(i, v)| (v / scales[channel_of(i)]).round_ties_even().clamp(-127.0, 127.0) as i8).collect();
    (q, scales, tensor.dims.clone())
}

/// A float32 initializer of shape `dims`.
pub(super) fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn int8_tensor(name: &str, dims: &[i64], values: &[i8]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Int8 as i32,
        raw_data: values.iter().map(|&v| v as u8).collect(),
        ..Default::default()
    }
}

fn qdq_node(op: &str, output: &str, inputs: &[&str], axis: Option<usize>) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        op_type: op.into(),
        attribute: axis.map(|a| int("axis", a as i64)).into_iter().collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusion_patterns() {
        let patterns = vec!["a/b".to_string(), "head_*".to_string()];
        assert!(excluded("a/b", &patterns) && excluded("head_q", &patterns) && excluded("head_", &patterns));
        assert!(!excluded("a/bc", &patterns) && !excluded("x_head_q", &patterns));
        let fc2 = vec!["*/mlp/fc2/MatMul".to_string()];
        assert!(excluded("/backbone/encoder/layer.3/mlp/fc2/MatMul", &fc2));
        assert!(!excluded("/backbone/encoder/layer.3/mlp/fc1/MatMul", &fc2) && !excluded("/x/mlp/fc2/MatMul_1", &fc2));
        let inner = vec!["/b/*/a*/M".to_string()];
        assert!(excluded("/b/layer.0/attn/M", &inner) && excluded("/b//a/M", &inner));
        assert!(!excluded("/b/layer.0/attn/M/x", &inner) && !excluded("/b/layer.0/xx/M", &inner));
        // The last literal part must not overlap the one before it.
        assert!(!excluded("ab", &["ab*b".to_string()]) && excluded("abb", &["ab*b".to_string()]));
        assert!(excluded("anything", &["*".to_string()]));
    }

    #[test]
    fn weights_are_per_channel_narrow_range() {
        let w = float_tensor("w", &[2, 3], &[1.0, -2.0, 0.5, 4.0, 0.0, -8.0]);
        let (q, scales, _) = quantize_weight(&w, Some(1));
        // Columns are the output channels of MatMul's B: amax 4, 2, 8.
        assert_eq!(scales, [4.0 / 127.0, 2.0 / 127.0, 8.0 / 127.0]);
        assert_eq!(q, [32, -127, 8, 127, 0, -127]);
        let (q, scales, _) = quantize_weight(&w, None);
        assert_eq!((scales.len(), q[5]), (1, -127));
    }
}
