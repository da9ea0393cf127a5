//! Reading, editing and writing ONNX graphs.
//!
//! The project edits graphs itself (no Python at run time): cutting a
//! backbone out of a larger network, dropping the CLS token, making the
//! spatial input dimensions symbolic so one file runs at any input size, and
//! appending nodes ([`builder`]) for the head and the concept scores. The
//! protobuf types are tract-onnx's own (`tract_onnx::pb`), encoded with
//! prost.

pub mod attention;
pub mod builder;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub mod unpacked;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message;
pub use tract_onnx::pb;

/// Errors while reading, editing or writing an ONNX file.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX ModelProto.
    #[error("{path} is not an ONNX model ({reason})")]
    NotOnnx {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The requested tensor is produced by no node of the graph.
    #[error("tensor '{name}' is not produced by any node of the graph; tensors near the end are: {candidates}")]
    TensorNotFound {
        /// The tensor asked for.
        name: String,
        /// Tensors near the end of the graph, comma-separated.
        candidates: String,
    },
    /// The graph does not have the single image input a backbone needs.
    #[error("expected one image input of shape [N, 3, H, W], found {0}")]
    BadInput(String),
    /// The graph does not have the single patch-token output a backbone has.
    #[error("expected one patch-token output [N, T, D], found {0}")]
    BadOutput(String),
}

/// Reads an ONNX model from `path`.
pub fn read_model(path: &Path) -> Result<pb::ModelProto, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io { path: path.into(), source })?;
    parse_model(&bytes, path)
}

/// Decodes an ONNX model held in memory (what [`read_model`] does after
/// reading the file); `path` only names it in errors. A model without graph
/// nodes is an error.
pub fn parse_model(bytes: &[u8], path: &Path) -> Result<pb::ModelProto, OnnxError> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| OnnxError::NotOnnx { path: path.into(), reason: e.to_string() })?;
    if model.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        return Err(OnnxError::NotOnnx { path: path.into(), reason: "it has no graph nodes".into() });
    }
    Ok(model)
}

/// Writes `model` to `path` (atomically: a temporary file, unique to this
/// process and call, renamed into place, so concurrent writers of the same
/// graph never expose a half-written file).
pub fn write_model(model: &pb::ModelProto, path: &Path) -> Result<(), OnnxError> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let io = |source| OnnxError::Io { path: path.into(), source };
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("onnx.partial-{}-{call}", std::process::id()));
    std::fs::write(&tmp, model.encode_to_vec()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Cuts `model` so that its only output is the patch tokens of `tensor`.
///
/// `tensor` is a `[N, prefix + tokens, D]` activation (e.g. the final
/// LayerNorm of a ViT); the first `prefix_tokens` tokens (CLS, registers)
/// are sliced off. Nodes not needed for `tensor` are dropped with their
/// initializers, the image input's H and W become symbolic, and stale shape
/// annotations are removed so the file runs at any size the network accepts.
pub fn extract_backbone(
    model: &pb::ModelProto,
    tensor: &str,
    prefix_tokens: usize,
    output_name: &str,
) -> Result<pb::ModelProto, OnnxError> {
    let graph = model.graph.as_ref().expect("read_model checks the graph");
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    if !producer.contains_key(tensor) {
        let candidates = graph.node.iter().rev().take(8).flat_map(|n| n.output.clone()).collect::<Vec<_>>();
        return Err(OnnxError::TensorNotFound { name: tensor.into(), candidates: candidates.join(", ") });
    }

    let mut keep = HashSet::new();
    let mut stack = vec![tensor.to_string()];
    let mut used_names = HashSet::new();
    while let Some(name) = stack.pop() {
        if !used_names.insert(name.clone()) {
            continue;
        }
        if let Some(&i) = producer.get(name.as_str()) {
            if keep.insert(i) {
                stack.extend(graph.node[i].input.iter().filter(|s| !s.is_empty()).cloned());
            }
        }
    }
    let initializer_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let image_inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| used_names.contains(&i.name) && !initializer_names.contains(i.name.as_str()))
        .collect();
    let [image] = image_inputs.as_slice() else {
        let names: Vec<&str> = image_inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(OnnxError::BadInput(format!("{} inputs ({})", names.len(), names.join(", "))));
    };

    let mut nodes: Vec<pb::NodeProto> =
        graph.node.iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, n)| n.clone()).collect();
    let mut initializers: Vec<pb::TensorProto> =
        graph.initializer.iter().filter(|t| used_names.contains(&t.name)).cloned().collect();
    let (starts, ends, axes) = ("causeseg_slice_starts", "causeseg_slice_ends", "causeseg_slice_axes");
    initializers.push(int64_tensor(starts, &[prefix_tokens as i64]));
    initializers.push(int64_tensor(ends, &[i64::MAX]));
    initializers.push(int64_tensor(axes, &[1]));
    nodes.push(pb::NodeProto {
        input: vec![tensor.into(), starts.into(), ends.into(), axes.into()],
        output: vec![output_name.into()],
        name: "causeseg_drop_prefix_tokens".into(),
        op_type: "Slice".into(),
        ..Default::default()
    });

    let new_graph = pb::GraphProto {
        node: nodes,
        name: "causeseg_backbone".into(),
        initializer: initializers,
        input: vec![float_value_info(&image.name, &[Dim::Param("batch"), Dim::Value(3), Dim::Param("height"), Dim::Param("width")])],
        output: vec![float_value_info(output_name, &[Dim::Param("batch"), Dim::Param("tokens"), Dim::Param("dim")])],
        ..Default::default()
    };
    Ok(pb::ModelProto {
        graph: Some(new_graph),
        producer_name: "causeseg".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        metadata_props: vec![],
        ..model.clone()
    })
}

/// Lookups over a graph, for matching node patterns: its initializers, the
/// node producing each tensor and the nodes reading it, by name.
pub struct GraphIndex<'a> {
    /// Initializers by name.
    pub initializers: HashMap<&'a str, &'a pb::TensorProto>,
    /// The node producing each tensor.
    pub producers: HashMap<&'a str, &'a pb::NodeProto>,
    /// The nodes reading each tensor.
    pub readers: HashMap<&'a str, Vec<&'a pb::NodeProto>>,
}

impl<'a> GraphIndex<'a> {
    /// Indexes `graph`.
    pub fn new(graph: &'a pb::GraphProto) -> Self {
        let mut readers: HashMap<&str, Vec<&pb::NodeProto>> = HashMap::new();
        for node in &graph.node {
            for input in &node.input {
                readers.entry(input.as_str()).or_default().push(node);
            }
        }
        GraphIndex {
            initializers: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
            producers: graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect(),
            readers,
        }
    }

    /// The node producing `tensor` when it is an `op` node.
    pub fn producer(&self, tensor: &str, op: &str) -> Option<&'a pb::NodeProto> {
        self.producers.get(tensor).copied().filter(|n| n.op_type == op)
    }

    /// The float values of `tensor` when it is a float initializer or a
    /// `Constant` node's float output.
    pub fn constant(&self, tensor: &str) -> Option<Vec<f32>> {
        let float = pb::tensor_proto::DataType::Float as i32;
        if let Some(t) = self.initializers.get(tensor) {
            return (t.data_type == float).then(|| float_values(t));
        }
        let node = self.producer(tensor, "Constant")?;
        let value = node.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
        (value.data_type == float).then(|| float_values(value))
    }

    /// The dimensions of `tensor` when it is an initializer or a `Constant`
    /// node's output.
    pub fn constant_dims(&self, tensor: &str) -> Option<&'a [i64]> {
        if let Some(t) = self.initializers.get(tensor) {
            return Some(&t.dims);
        }
        let node = self.producer(tensor, "Constant")?;
        Some(&node.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?.dims)
    }

    /// The values of `tensor` when it is an int64 initializer or a
    /// `Constant` node's int64 output.
    pub fn int64_constant(&self, tensor: &str) -> Option<Vec<i64>> {
        let int64 = pb::tensor_proto::DataType::Int64 as i32;
        let t = match self.initializers.get(tensor) {
            Some(t) => *t,
            None => self.producer(tensor, "Constant")?.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?,
        };
        if t.data_type != int64 {
            return None;
        }
        Some(if t.raw_data.is_empty() { t.int64_data.clone() } else { t.raw_data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect() })
    }

    /// The non-constant input and the constant values of `node` when it is
    /// a two-input `op` node with one constant operand.
    pub fn with_constant<'n>(&self, node: &'n pb::NodeProto, op: &str) -> Option<(&'n str, Vec<f32>)> {
        let [a, b] = node.input.as_slice() else { return None };
        if node.op_type != op {
            return None;
        }
        match (self.constant(a), self.constant(b)) {
            (None, Some(values)) => Some((a, values)),
            (Some(values), None) => Some((b, values)),
            _ => None,
        }
    }

    /// The input and scale of `node` when it is a `QuantizeLinear` to int8
    /// with a scalar constant scale and zero point 0 (without a zero point
    /// it would give uint8).
    pub fn int8_quantize<'n>(&self, node: &'n pb::NodeProto) -> Option<(&'n str, &'n str)> {
        let int8 = pb::tensor_proto::DataType::Int8 as i32;
        let [x, scale, zero] = node.input.as_slice() else { return None };
        let scalar_scale = self.constant(scale).is_some_and(|s| s.len() == 1);
        let zero = self.initializers.get(zero.as_str()).is_some_and(|t| t.data_type == int8 && t.raw_data.iter().all(|&v| v == 0) && t.int32_data.iter().all(|&v| v == 0));
        (node.op_type == "QuantizeLinear" && scalar_scale && zero).then_some((x.as_str(), scale.as_str()))
    }

    /// Whether `tensor` is read by exactly `count` nodes and is no graph
    /// output of `graph`.
    pub fn read_only_inside(&self, graph: &pb::GraphProto, tensor: &str, count: usize) -> bool {
        self.readers.get(tensor).map_or(0, Vec::len) == count && graph.output.iter().all(|o| o.name != tensor)
    }
}

/// The values of a float32 tensor, stored raw or as `float_data`.
pub fn float_values(tensor: &pb::TensorProto) -> Vec<f32> {
    if tensor.raw_data.is_empty() {
        tensor.float_data.clone()
    } else {
        tensor.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

/// Removes nodes whose outputs nothing reads and initializers no node reads.
pub fn drop_unused(graph: &mut pb::GraphProto) {
    loop {
        let read: HashSet<&str> = graph.node.iter().flat_map(|n| n.input.iter()).chain(graph.output.iter().map(|o| &o.name)).map(String::as_str).collect();
        let unread: Vec<usize> = (0..graph.node.len()).filter(|&i| graph.node[i].output.iter().all(|o| !read.contains(o.as_str()))).collect();
        if unread.is_empty() {
            break;
        }
        for i in unread.into_iter().rev() {
            graph.node.remove(i);
        }
    }
    let read: HashSet<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    graph.initializer.retain(|t| read.contains(&t.name));
}

/// One dimension of a declared tensor shape.
pub enum Dim {
    /// A fixed size.
    Value(i64),
    /// A symbolic size (e.g. "batch").
    Param(&'static str),
}

/// The declaration of a float32 graph input or output of shape `dims`.
pub fn float_value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Value(v) => Value::DimValue(*v),
                Dim::Param(p) => Value::DimParam(p.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The declaration of an int64 graph output of shape `dims`.
pub fn int64_value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    let mut info = float_value_info(name, dims);
    if let Some(pb::type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.elem_type = pb::tensor_proto::DataType::Int64 as i32;
    }
    info
}

fn int64_tensor(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            op_type: op.into(),
            ..Default::default()
        }
    }

    fn toy_model() -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 7,
            graph: Some(pb::GraphProto {
                node: vec![
                    node("Relu", &["image"], "a"),
                    node("Sigmoid", &["a"], "tokens"),
                    node("Neg", &["tokens", "w_head"], "head_out"),
                ],
                initializer: vec![int64_tensor("w_head", &[1])],
                input: vec![float_value_info("image", &[Dim::Value(1)])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cut_keeps_only_the_needed_nodes_and_adds_the_slice() {
        let cut = extract_backbone(&toy_model(), "tokens", 1, "patch_tokens").unwrap();
        let g = cut.graph.unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Relu", "Sigmoid", "Slice"]);
        assert!(g.initializer.iter().all(|t| t.name != "w_head"), "unused initializer kept");
        assert_eq!(g.output[0].name, "patch_tokens");
        let starts = g.initializer.iter().find(|t| t.name == "causeseg_slice_starts").unwrap();
        assert_eq!(starts.int64_data, [1]);
    }

    #[test]
    fn unknown_tensor_names_the_candidates() {
        let err = extract_backbone(&toy_model(), "nope", 1, "x").unwrap_err().to_string();
        assert!(err.contains("'nope'") && err.contains("head_out"), "{err}");
    }

    #[test]
    fn garbage_bytes_are_not_onnx() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.onnx");
        std::fs::write(&path, b"definitely not protobuf \xff\xff\xff").unwrap();
        let err = read_model(&path).unwrap_err().to_string();
        assert!(err.contains("is not an ONNX model"), "{err}");
    }
}
