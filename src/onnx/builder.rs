//! [`Builder`]: appends nodes and float32 initializers to an ONNX graph
//! (every name prefixed `causeseg_`), for the head's emission and the fused
//! graph.

use std::collections::HashMap;

use ndarray::ArrayViewD;

use super::{drop_unused, pb};

/// Appends nodes and initializers (names prefixed `causeseg_`) to a graph.
pub struct Builder<'a> {
    /// The graph being extended.
    pub graph: &'a mut pb::GraphProto,
}

impl Builder<'_> {
    /// A float32 initializer named `causeseg_<name>`; returns its name.
    pub fn initializer(&mut self, name: &str, values: ArrayViewD<f32>) -> String {
        let name = format!("causeseg_{name}");
        self.graph.initializer.push(pb::TensorProto {
            name: name.clone(),
            dims: values.shape().iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// A node whose output is `causeseg_<name>`.
    pub fn node(&mut self, op: &str, name: &str, inputs: &[&str], attribute: Vec<pb::AttributeProto>) -> String {
        self.node_named(op, &format!("causeseg_{name}"), inputs, attribute)
    }

    /// A node whose single output is exactly `output`.
    pub fn node_named(&mut self, op: &str, output: &str, inputs: &[&str], attribute: Vec<pb::AttributeProto>) -> String {
        self.graph.node.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: output.into(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        output.into()
    }

    /// A node of causeseg's own op `op` (domain [`CAUSESEG_DOMAIN`]) whose
    /// single output is exactly `output`.
    pub fn causeseg_node(&mut self, op: &str, output: &str, inputs: &[&str], attribute: Vec<pb::AttributeProto>) -> String {
        self.node_named(op, output, inputs, attribute);
        self.graph.node.last_mut().expect("just pushed").domain = CAUSESEG_DOMAIN.into();
        output.into()
    }
}

/// The ONNX domain of causeseg's own ops (`onnx::layer_norm`,
/// `onnx::gelu`, `onnx::linear`, `onnx::attention`), which only tract
/// reads (`engine::tract::int8_ops`, `engine::tract::float_ops`).
pub const CAUSESEG_DOMAIN: &str = "ai.causeseg";

/// Declares [`CAUSESEG_DOMAIN`] among `model`'s operator sets (once).
pub fn import_causeseg_domain(model: &mut pb::ModelProto) {
    if !model.opset_import.iter().any(|o| o.domain == CAUSESEG_DOMAIN) {
        model.opset_import.push(pb::OperatorSetIdProto { domain: CAUSESEG_DOMAIN.into(), version: 1 });
    }
}

/// `model` with each node whose first output is a key of `matches`
/// replaced by what `emit` appends for it (given that output's name), the
/// nodes and initializers nothing reads any more dropped and causeseg's
/// domain imported: the common end of the rewrites of tract's form.
pub fn replace_nodes<M>(model: &pb::ModelProto, matches: &HashMap<String, M>, mut emit: impl FnMut(&mut Builder, &str, &M)) -> pb::ModelProto {
    let mut model = model.clone();
    let graph = model.graph.as_mut().expect("read_model checks the graph");
    let old_nodes = std::mem::take(&mut graph.node);
    let mut b = Builder { graph };
    for node in old_nodes {
        match node.output.first().and_then(|out| matches.get(out).map(|m| (out, m))) {
            Some((out, m)) => emit(&mut b, out, m),
            None => b.graph.node.push(node),
        }
    }
    drop_unused(b.graph);
    import_causeseg_domain(&mut model);
    model
}

/// An integer node attribute.
pub fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), i: value, r#type: pb::attribute_proto::AttributeType::Int as i32, ..Default::default() }
}

/// A float node attribute.
pub fn float(name: &str, value: f32) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), f: value, r#type: pb::attribute_proto::AttributeType::Float as i32, ..Default::default() }
}

/// A string node attribute.
pub fn string(name: &str, value: &str) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), s: value.as_bytes().to_vec(), r#type: pb::attribute_proto::AttributeType::String as i32, ..Default::default() }
}

/// An integer-list node attribute.
pub fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), ints: values.to_vec(), r#type: pb::attribute_proto::AttributeType::Ints as i32, ..Default::default() }
}
