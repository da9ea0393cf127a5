//! The CAUSE-TR head as ONNX nodes (opset 14; only ops that tract-onnx and
//! ONNX Runtime both run there), appended by the fused-graph builder. The
//! maths is [`TrHead::forward`]'s, op for op: nearest code by
//! `ArgMax(x · unit(codes)ᵀ)` and `Gather`, single-head attention as
//! MatMul/Transpose/Softmax, LayerNorm spelled out with ReduceMean (axes as
//! an attribute, as opset 14 wants).
//!
//! The positional embedding is a constant `[T, d]`, so the appended graph
//! only runs on the `T = rows * cols` tokens of the grid the head was
//! trained on.

use ndarray::array;

use super::fuse::Builder;
use super::pb;
use crate::model::l2_normalize_rows;
use crate::pipeline::tr_head::{Attention, LayerNorm, TrHead, LAYER_NORM_EPS};

fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), i: value, r#type: pb::attribute_proto::AttributeType::Int as i32, ..Default::default() }
}

fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), ints: values.to_vec(), r#type: pb::attribute_proto::AttributeType::Ints as i32, ..Default::default() }
}

/// `out(softmax(q(query) k(key)ᵀ / sqrt(d)) v(value))` on `[1, n, d]` tensors.
fn attention(b: &mut Builder, name: &str, layer: &Attention, query: &str, key: &str, value: &str) -> String {
    let q = b.linear(&format!("{name}_q"), query, &layer.q);
    let k = b.linear(&format!("{name}_k"), key, &layer.k);
    let v = b.linear(&format!("{name}_v"), value, &layer.v);
    let k_t = b.node("Transpose", &format!("{name}_k_t"), &[&k], vec![ints("perm", &[0, 2, 1])]);
    let scores = b.node("MatMul", &format!("{name}_scores"), &[&q, &k_t], vec![]);
    let scale = b.bias(&format!("{name}_scale"), &array![1.0 / (layer.q.weight.nrows() as f32).sqrt()]);
    let scaled = b.node("Mul", &format!("{name}_scaled"), &[&scores, &scale], vec![]);
    let weights = b.node("Softmax", &format!("{name}_weights"), &[&scaled], vec![int("axis", -1)]);
    let mixed = b.node("MatMul", &format!("{name}_mixed"), &[&weights, &v], vec![]);
    b.linear(&format!("{name}_out"), &mixed, &layer.out)
}

/// LayerNorm over the last axis, eps [`LAYER_NORM_EPS`].
fn layer_norm(b: &mut Builder, name: &str, norm: &LayerNorm, x: &str) -> String {
    let last = || vec![ints("axes", &[-1]), int("keepdims", 1)];
    let mean = b.node("ReduceMean", &format!("{name}_mean"), &[x], last());
    let centred = b.node("Sub", &format!("{name}_centred"), &[x, &mean], vec![]);
    let squared = b.node("Mul", &format!("{name}_squared"), &[&centred, &centred], vec![]);
    let var = b.node("ReduceMean", &format!("{name}_var"), &[&squared], last());
    let eps = b.bias(&format!("{name}_eps"), &array![LAYER_NORM_EPS]);
    let var = b.node("Add", &format!("{name}_var_eps"), &[&var, &eps], vec![]);
    let std = b.node("Sqrt", &format!("{name}_std"), &[&var], vec![]);
    let normed = b.node("Div", &format!("{name}_normed"), &[&centred, &std], vec![]);
    let gamma = b.bias(&format!("{name}_gamma"), &norm.gamma);
    let scaled = b.node("Mul", &format!("{name}_scaled"), &[&normed, &gamma], vec![]);
    let beta = b.bias(&format!("{name}_beta"), &norm.beta);
    b.node("Add", name, &[&scaled, &beta], vec![])
}

/// Appends `head` after the `[1, T, D]` token tensor `tokens` and returns
/// the name of its `[1, T, R]` head-feature tensor (nodes and initializers
/// named `causeseg_tr_*`).
pub(crate) fn append_tr_head(builder: &mut Builder, tokens: &str, head: &TrHead) -> String {
    let b = builder;
    let x = match &head.input {
        Some(layer) => b.linear("tr_input", tokens, layer),
        None => tokens.to_string(),
    };
    let unit_t = b.initializer("tr_codes_unit_t", l2_normalize_rows(head.codes.clone()).t().to_owned());
    let code_scores = b.node("MatMul", "tr_code_scores", &[&x, &unit_t], vec![]);
    let ids = b.node("ArgMax", "tr_code_ids", &[&code_scores], vec![int("axis", -1), int("keepdims", 0)]);
    let codes = b.initializer("tr_codes", head.codes.clone());
    let queries = b.node("Gather", "tr_queries", &[&codes, &ids], vec![int("axis", 0)]);
    let pos = b.initializer("tr_pos", head.pos.clone());

    let with_pos = b.node("Add", "tr_queries_pos", &[&queries, &pos], vec![]);
    let attended = attention(b, "tr_self_attn", &head.self_attn, &with_pos, &with_pos, &queries);
    let sum = b.node("Add", "tr_self_residual", &[&queries, &attended], vec![]);
    let tgt = layer_norm(b, "tr_norm1", &head.norm1, &sum);

    let with_pos = b.node("Add", "tr_tgt_pos", &[&tgt, &pos], vec![]);
    let attended = attention(b, "tr_cross_attn", &head.cross_attn, &with_pos, &x, &x);
    let sum = b.node("Add", "tr_cross_residual", &[&tgt, &attended], vec![]);
    let tgt = layer_norm(b, "tr_norm2", &head.norm2, &sum);

    let hidden = b.linear("tr_ffn1", &tgt, &head.ffn1);
    let hidden = b.node("Relu", "tr_ffn_relu", &[&hidden], vec![]);
    let ffn = b.linear("tr_ffn2", &hidden, &head.ffn2);
    let sum = b.node("Add", "tr_ffn_residual", &[&tgt, &ffn], vec![]);
    let tgt = layer_norm(b, "tr_norm3", &head.norm3, &sum);
    let out = b.node("Add", "tr_out", &[&x, &tgt], vec![]);

    b.mlp("tr", &out, &head.mlp)
}

#[cfg(test)]
mod tests {
    use super::super::{float_value_info, Dim};
    use super::*;
    use crate::pipeline::tr_head::{nearest_codes, random_head};
    use ndarray::{Array2, Array3, Axis};
    use tract_onnx::prelude::*;

    /// Runs the TR head appended to an Identity "backbone" over `[1, T, D]`.
    fn run_appended(head: &TrHead, x: &Array3<f32>) -> Vec<f32> {
        let (_, t, d) = x.dim();
        let dims = |last: usize| [Dim::Value(1), Dim::Value(t as i64), Dim::Value(last as i64)];
        let mut graph = pb::GraphProto {
            node: vec![pb::NodeProto { input: vec!["x".into()], output: vec!["tokens".into()], op_type: "Identity".into(), ..Default::default() }],
            input: vec![float_value_info("x", &dims(d))],
            ..Default::default()
        };
        let features = append_tr_head(&mut Builder { graph: &mut graph }, "tokens", head);
        graph.output = vec![float_value_info(&features, &dims(head.output_dim()))];
        let model = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
            graph: Some(graph),
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&model);
        let plan = tract_onnx::onnx().model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
        let out = plan.run(tvec!(Tensor::from(x.clone().into_dyn()).into_tvalue())).unwrap();
        out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    #[test]
    fn appended_graph_matches_the_runtime_head() {
        for input in [None, Some(5)] {
            let head = random_head(input, 4, 3, (2, 3), 7, 2, 11);
            let x = Array2::from_shape_fn((6, head.input_dim()), |(t, j)| ((t * 5 + j * 3) % 7) as f32 / 3.0 - 1.0);
            let x_head = head.input.as_ref().map_or(x.clone(), |l| l.forward(x.view()));
            let ids = nearest_codes(x_head.view(), head.codes.view());
            assert!(ids.iter().any(|&i| i != ids[0]), "the test must pick several codes: {ids:?}");
            let expected = head.forward(x.view()).unwrap();
            let onnx = run_appended(&head, &x.clone().insert_axis(Axis(0)));
            assert_eq!(onnx.len(), expected.len());
            for (a, b) in onnx.iter().zip(expected.iter()) {
                assert!((a - b).abs() < 1e-4, "input {input:?}: {onnx:?} vs {expected}");
            }
        }
    }
}
