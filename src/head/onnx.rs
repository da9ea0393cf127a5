//! The head as ONNX nodes (opset 14; only ops that tract-onnx and ONNX
//! Runtime both run there), appended by the fused-graph builder. The maths
//! is [`Head::forward`]'s, op for op, with the weights looked up by the same
//! names: nearest code by `ArgMax(x · unit(codes)ᵀ)` and `Gather`,
//! single-head attention as MatMul/Transpose/Softmax, LayerNorm spelled out
//! with ReduceMean (axes as an attribute, as opset 14 wants).
//!
//! A TR head's positional embedding is a constant `[T, d]`, so its graph
//! only runs on the `T = rows * cols` tokens of the grid it was trained on.

use ndarray::{arr1, Array2};

use super::layers::LAYER_NORM_EPS;
use super::{Head, HeadKind, Weights};
use crate::linalg::l2_normalize_rows;
use crate::onnx::builder::{int, ints, Builder};

impl Head {
    /// Appends the head after the `[1, T, D]` token tensor `tokens` and
    /// returns the name of its `[1, T, R]` feature tensor.
    pub fn emit(&self, b: &mut Builder, tokens: &str) -> String {
        let w = self.weights();
        if self.kind() == HeadKind::Mlp {
            return mlp(b, w, "head", "", tokens);
        }
        let x = if w.contains("input_weight") { linear(b, w, "input", "tr_input", tokens) } else { tokens.to_string() };
        let codes = w.matrix("codes");
        let unit_t = l2_normalize_rows(codes.to_owned()).t().to_owned();
        let unit_t = b.initializer("tr_codes_unit_t", unit_t.view().into_dyn());
        let code_scores = b.node("MatMul", "tr_code_scores", &[&x, &unit_t], vec![]);
        let ids = b.node("ArgMax", "tr_code_ids", &[&code_scores], vec![int("axis", -1), int("keepdims", 0)]);
        let codes = b.initializer("tr_codes", codes.into_dyn());
        let queries = b.node("Gather", "tr_queries", &[&codes, &ids], vec![int("axis", 0)]);
        let (rows, cols) = self.grid().expect("a TR head has a positional embedding");
        let pos: Array2<f32> = w.get("pos").expect("checked").to_shape((rows * cols, codes_width(w))).expect("rows x cols x d").to_owned();
        let pos = b.initializer("tr_pos", pos.view().into_dyn());

        let with_pos = b.node("Add", "tr_queries_pos", &[&queries, &pos], vec![]);
        let attended = attention(b, w, "self_attn", &with_pos, &with_pos, &queries);
        let sum = b.node("Add", "tr_self_residual", &[&queries, &attended], vec![]);
        let tgt = layer_norm(b, w, "norm1", &sum);

        let with_pos = b.node("Add", "tr_tgt_pos", &[&tgt, &pos], vec![]);
        let attended = attention(b, w, "cross_attn", &with_pos, &x, &x);
        let sum = b.node("Add", "tr_cross_residual", &[&tgt, &attended], vec![]);
        let tgt = layer_norm(b, w, "norm2", &sum);

        let hidden = linear(b, w, "ffn1", "tr_ffn1", &tgt);
        let hidden = b.node("Relu", "tr_ffn_relu", &[&hidden], vec![]);
        let ffn = linear(b, w, "ffn2", "tr_ffn2", &hidden);
        let sum = b.node("Add", "tr_ffn_residual", &[&tgt, &ffn], vec![]);
        let tgt = layer_norm(b, w, "norm3", &sum);
        let out = b.node("Add", "tr_out", &[&x, &tgt], vec![]);
        mlp(b, w, "tr", "mlp/", &out)
    }
}

fn codes_width(w: &Weights) -> usize {
    w.matrix("codes").ncols()
}

/// `x · {file}_weightᵀ + {file}_bias`, nodes named `node`.
fn linear(b: &mut Builder, w: &Weights, file: &str, node: &str, x: &str) -> String {
    let weight_t = w.matrix(&format!("{file}_weight")).t().to_owned();
    let weight = b.initializer(&format!("{node}_weight_t"), weight_t.view().into_dyn());
    let bias = b.initializer(&format!("{node}_bias"), w.vector(&format!("{file}_bias")).into_dyn());
    let product = b.node("MatMul", &format!("{node}_matmul"), &[x, &weight], vec![]);
    b.node("Add", node, &[&product, &bias], vec![])
}

/// The projection `{p}f1(x) + {p}f2b(relu({p}f2a(x)))` (`p` = `files`),
/// nodes named `{node}_*`.
fn mlp(b: &mut Builder, w: &Weights, node: &str, files: &str, x: &str) -> String {
    let f1 = linear(b, w, &format!("{files}f1"), &format!("{node}_f1"), x);
    let hidden = linear(b, w, &format!("{files}f2a"), &format!("{node}_f2a"), x);
    let hidden = b.node("Relu", &format!("{node}_relu"), &[&hidden], vec![]);
    let f2 = linear(b, w, &format!("{files}f2b"), &format!("{node}_f2b"), &hidden);
    b.node("Add", &format!("{node}_features"), &[&f1, &f2], vec![])
}

/// Single-head attention `{name}_out(softmax(q kᵀ / sqrt(d)) v)` on `[1, n, d]`.
fn attention(b: &mut Builder, w: &Weights, name: &str, query: &str, key: &str, value: &str) -> String {
    let node = format!("tr_{name}");
    let q = linear(b, w, &format!("{name}_q"), &format!("{node}_q"), query);
    let k = linear(b, w, &format!("{name}_k"), &format!("{node}_k"), key);
    let v = linear(b, w, &format!("{name}_v"), &format!("{node}_v"), value);
    let k_t = b.node("Transpose", &format!("{node}_k_t"), &[&k], vec![ints("perm", &[0, 2, 1])]);
    let scores = b.node("MatMul", &format!("{node}_scores"), &[&q, &k_t], vec![]);
    let width = w.matrix(&format!("{name}_q_weight")).nrows() as f32;
    let scale = b.initializer(&format!("{node}_scale"), arr1(&[1.0 / width.sqrt()]).view().into_dyn());
    let scaled = b.node("Mul", &format!("{node}_scaled"), &[&scores, &scale], vec![]);
    let weights = b.node("Softmax", &format!("{node}_weights"), &[&scaled], vec![int("axis", -1)]);
    let mixed = b.node("MatMul", &format!("{node}_mixed"), &[&weights, &v], vec![]);
    linear(b, w, &format!("{name}_out"), &format!("{node}_out"), &mixed)
}

/// LayerNorm over the last axis with `{name}_gamma` and `{name}_beta`.
fn layer_norm(b: &mut Builder, w: &Weights, name: &str, x: &str) -> String {
    let node = format!("tr_{name}");
    let last = || vec![ints("axes", &[-1]), int("keepdims", 1)];
    let mean = b.node("ReduceMean", &format!("{node}_mean"), &[x], last());
    let centred = b.node("Sub", &format!("{node}_centred"), &[x, &mean], vec![]);
    let squared = b.node("Mul", &format!("{node}_squared"), &[&centred, &centred], vec![]);
    let var = b.node("ReduceMean", &format!("{node}_var"), &[&squared], last());
    let eps = b.initializer(&format!("{node}_eps"), arr1(&[LAYER_NORM_EPS]).view().into_dyn());
    let var = b.node("Add", &format!("{node}_var_eps"), &[&var, &eps], vec![]);
    let std = b.node("Sqrt", &format!("{node}_std"), &[&var], vec![]);
    let normed = b.node("Div", &format!("{node}_normed"), &[&centred, &std], vec![]);
    let gamma = b.initializer(&format!("{node}_gamma"), w.vector(&format!("{name}_gamma")).into_dyn());
    let scaled = b.node("Mul", &format!("{node}_scaled"), &[&normed, &gamma], vec![]);
    let beta = b.initializer(&format!("{node}_beta"), w.vector(&format!("{name}_beta")).into_dyn());
    b.node("Add", &node, &[&scaled, &beta], vec![])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::layers::nearest_codes;
    use crate::head::testing::{random_head, random_tr};
    use crate::onnx::{float_value_info, pb, Dim};
    use ndarray::{Array3, Axis};
    use tract_onnx::prelude::*;

    /// Runs `head` appended to an Identity "backbone" over `[1, T, D]`.
    fn run_appended(head: &Head, x: &Array3<f32>) -> Vec<f32> {
        let (_, t, d) = x.dim();
        let dims = |last: usize| [Dim::Value(1), Dim::Value(t as i64), Dim::Value(last as i64)];
        let mut graph = pb::GraphProto {
            node: vec![pb::NodeProto { input: vec!["x".into()], output: vec!["tokens".into()], op_type: "Identity".into(), ..Default::default() }],
            input: vec![float_value_info("x", &dims(d))],
            ..Default::default()
        };
        let features = head.emit(&mut Builder { graph: &mut graph }, "tokens");
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

    fn assert_emission_matches(head: &Head, x: &Array2<f32>) {
        let expected = head.forward(x.view()).unwrap();
        let onnx = run_appended(head, &x.clone().insert_axis(Axis(0)));
        assert_eq!(onnx.len(), expected.len());
        for (a, b) in onnx.iter().zip(expected.iter()) {
            assert!((a - b).abs() < 1e-4, "{onnx:?} vs {expected}");
        }
    }

    #[test]
    fn emitted_tr_head_matches_the_ndarray_forward() {
        for input in [None, Some(5)] {
            let head = random_tr(input, 4, 3, (2, 3), 7, 2, 11);
            let x = Array2::from_shape_fn((6, head.input_dim()), |(t, j)| ((t * 5 + j * 3) % 7) as f32 / 3.0 - 1.0);
            let x_head = if input.is_some() { crate::head::layers::linear(head.weights(), "input", x.view()) } else { x.clone() };
            let ids = nearest_codes(x_head.view(), head.weights().matrix("codes"));
            assert!(ids.iter().any(|&i| i != ids[0]), "the test must pick several codes: {ids:?}");
            assert_emission_matches(&head, &x);
        }
    }

    #[test]
    fn emitted_mlp_head_matches_the_ndarray_forward() {
        let head = random_head(HeadKind::Mlp, &[("R", 3), ("D", 4), ("H", 5)], None, 3);
        let x = Array2::from_shape_fn((6, 4), |(t, j)| ((t * 5 + j * 3) % 7) as f32 / 3.0 - 1.0);
        assert_emission_matches(&head, &x);
    }
}
