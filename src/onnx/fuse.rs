//! The fused inference graph: backbone → (head) → concept scores → argmax,
//! as one ONNX file, so TensorRT (or any ONNX runtime) runs a whole frame as
//! one engine and tract and ONNX Runtime execute exactly the same maths.
//!
//! Appended after the backbone's patch tokens `[N, T, D]`:
//! - the CAUSE-MLP head, `f1(x) + f2b(relu(f2a(x)))`, as MatMul/Add/Relu
//!   with the weights stored transposed (`[in, out]`), when the model has one;
//! - `concept_scores = features · unit(concepts)ᵀ`, `[N, T, K]`: the
//!   per-patch logits (dot products with the L2-normalised concept vectors;
//!   their argmax is the cosine argmax);
//! - `concept_ids = ArgMax(concept_scores, axis -1)`, int64 `[N, T]`.
//!
//! Pixel-level labels come from upsampling `concept_scores` bilinearly and
//! taking the argmax per pixel (see `pipeline::postprocess`).

use ndarray::{Array1, Array2};

use super::{float_value_info, pb, Dim, OnnxError};
use crate::pipeline::head::{Head, Linear, MlpHead};

/// Version of the fused graph's layout; part of the cache key of built
/// graphs, so a change here never reuses a graph built by older code.
pub const LAYOUT_VERSION: u32 = 1;
/// Name of the fused graph's per-patch score output `[N, T, K]`.
pub const SCORES_OUTPUT: &str = "concept_scores";
/// Name of the fused graph's per-patch argmax output, int64 `[N, T]`.
pub const IDS_OUTPUT: &str = "concept_ids";

/// Appends `head` (if any) and the concept scoring to `backbone`, whose
/// single output must be the `[N, T, D]` patch tokens. `concepts` are the
/// model's L2-normalised concept vectors `[K, R]` (R = D without a head).
pub fn fuse(backbone: &pb::ModelProto, head: Option<&Head>, concepts: &Array2<f32>) -> Result<pb::ModelProto, OnnxError> {
    let graph = backbone.graph.as_ref().expect("read_model checks the graph");
    let [tokens] = graph.output.as_slice() else {
        return Err(OnnxError::BadOutput(format!("{} outputs, expected one patch-token output", graph.output.len())));
    };
    let mut g = graph.clone();
    let mut builder = Builder { graph: &mut g };
    let features = match head {
        None => tokens.name.clone(),
        Some(Head::Mlp(head)) => builder.mlp("head", &tokens.name, head),
        Some(Head::Tr(head)) => super::tr::append_tr_head(&mut builder, &tokens.name, head),
    };
    let concepts_t = builder.initializer("concepts_t", concepts.t().to_owned());
    let scores = builder.node_named("MatMul", SCORES_OUTPUT, &[&features, &concepts_t], vec![]);
    let axis = pb::AttributeProto { name: "axis".into(), i: -1, r#type: pb::attribute_proto::AttributeType::Int as i32, ..Default::default() };
    let keepdims = pb::AttributeProto { name: "keepdims".into(), i: 0, r#type: pb::attribute_proto::AttributeType::Int as i32, ..Default::default() };
    builder.node_named("ArgMax", IDS_OUTPUT, &[&scores], vec![axis, keepdims]);
    g.output = vec![
        float_value_info(SCORES_OUTPUT, &[Dim::Param("batch"), Dim::Param("tokens"), Dim::Value(concepts.nrows() as i64)]),
        int64_value_info(IDS_OUTPUT, &[Dim::Param("batch"), Dim::Param("tokens")]),
    ];
    g.name = "causeseg_fused".into();
    Ok(pb::ModelProto { graph: Some(g), ..backbone.clone() })
}

/// Appends nodes and initializers (names prefixed `causeseg_`) to a graph.
pub(crate) struct Builder<'a> {
    /// The graph being extended.
    pub graph: &'a mut pb::GraphProto,
}

impl Builder<'_> {
    /// A float32 initializer named `causeseg_<name>`; returns its name.
    pub(crate) fn initializer(&mut self, name: &str, values: Array2<f32>) -> String {
        let name = format!("causeseg_{name}");
        self.graph.initializer.push(float_tensor(&name, values.shape(), values.iter().copied().collect()));
        name
    }

    /// A float32 vector initializer named `causeseg_<name>`; returns its name.
    pub(crate) fn bias(&mut self, name: &str, values: &Array1<f32>) -> String {
        let name = format!("causeseg_{name}");
        self.graph.initializer.push(float_tensor(&name, &[values.len()], values.to_vec()));
        name
    }

    /// A node whose output is `causeseg_<name>`.
    pub(crate) fn node(&mut self, op: &str, name: &str, inputs: &[&str], attribute: Vec<pb::AttributeProto>) -> String {
        self.node_named(op, &format!("causeseg_{name}"), inputs, attribute)
    }

    /// A node whose single output is exactly `output`.
    pub(crate) fn node_named(&mut self, op: &str, output: &str, inputs: &[&str], attribute: Vec<pb::AttributeProto>) -> String {
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

    /// The CAUSE-MLP projection `f1(x) + f2b(relu(f2a(x)))` of `x`.
    pub(crate) fn mlp(&mut self, name: &str, x: &str, head: &MlpHead) -> String {
        let f1 = self.linear(&format!("{name}_f1"), x, &head.f1);
        let hidden = self.linear(&format!("{name}_f2a"), x, &head.f2a);
        let hidden = self.node("Relu", &format!("{name}_relu"), &[&hidden], vec![]);
        let f2 = self.linear(&format!("{name}_f2b"), &hidden, &head.f2b);
        self.node("Add", &format!("{name}_features"), &[&f1, &f2], vec![])
    }

    /// `x · weightᵀ + bias` for a PyTorch-layout linear layer.
    pub(crate) fn linear(&mut self, name: &str, x: &str, layer: &Linear) -> String {
        let weight = self.initializer(&format!("{name}_weight_t"), layer.weight.t().to_owned());
        let bias = self.bias(&format!("{name}_bias"), &layer.bias);
        let product = self.node("MatMul", &format!("{name}_matmul"), &[x, &weight], vec![]);
        self.node("Add", name, &[&product, &bias], vec![])
    }
}

fn float_tensor(name: &str, dims: &[usize], values: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn int64_value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    let mut info = float_value_info(name, dims);
    if let Some(pb::type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.elem_type = pb::tensor_proto::DataType::Int64 as i32;
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};
    use tract_onnx::prelude::*;

    /// A "backbone" that passes its `[1, T, 2]` input through Identity.
    fn identity_backbone() -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
            graph: Some(pb::GraphProto {
                node: vec![pb::NodeProto {
                    input: vec!["x".into()],
                    output: vec!["tokens".into()],
                    op_type: "Identity".into(),
                    ..Default::default()
                }],
                input: vec![float_value_info("x", &[Dim::Value(1), Dim::Value(2), Dim::Value(2)])],
                output: vec![float_value_info("tokens", &[Dim::Value(1), Dim::Value(2), Dim::Value(2)])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn run(model: &pb::ModelProto, x: Array3<f32>) -> (Vec<f32>, Vec<i64>) {
        let bytes = prost::Message::encode_to_vec(model);
        let plan = tract_onnx::onnx().model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
        let out = plan.run(tvec!(Tensor::from(x.into_dyn()).into_tvalue())).unwrap();
        (out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect(), out[1].to_plain_array_view::<i64>().unwrap().iter().copied().collect())
    }

    #[test]
    fn fused_head_and_scores_match_the_runtime_head() {
        let head = MlpHead {
            f1: Linear { weight: array![[1.0, 0.0], [0.0, 1.0]], bias: array![0.5, 0.0] },
            f2a: Linear { weight: array![[1.0, 0.0], [0.0, -1.0]], bias: array![0.0, 0.0] },
            f2b: Linear { weight: array![[2.0, 3.0], [0.0, 1.0]], bias: array![-1.0, 0.0] },
        };
        let concepts = crate::model::l2_normalize_rows(array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]);
        let fused = fuse(&identity_backbone(), Some(&Head::Mlp(head.clone())), &concepts).unwrap();
        let x = array![[[2.0f32, 1.0], [-1.0, -3.0]]];
        let (scores, ids) = run(&fused, x.clone());
        let expected = head.forward(x.index_axis(ndarray::Axis(0), 0)).dot(&concepts.t());
        for (a, b) in scores.iter().zip(expected.iter()) {
            assert!((a - b).abs() < 1e-5, "{scores:?} vs {expected}");
        }
        // By hand: token 0 → features (5.5, 1), token 1 → (7.5, 0); both
        // score highest on concept 0 (5.5 > 6.5/√2, 7.5 > 7.5/√2).
        assert_eq!(ids, [0, 0]);
    }

    #[test]
    fn without_a_head_the_scores_are_dot_products_with_the_concepts() {
        let concepts = array![[1.0f32, 0.0], [0.0, 1.0]];
        let fused = fuse(&identity_backbone(), None, &concepts).unwrap();
        let (scores, ids) = run(&fused, array![[[0.2f32, 0.9], [3.0, -1.0]]]);
        assert_eq!(scores, [0.2, 0.9, 3.0, -1.0]);
        assert_eq!(ids, [1, 0]);
    }
}
