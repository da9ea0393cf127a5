//! Multi-head self-attention as one node, for tract.
//!
//! The backbone's export writes each attention as head reshapes and
//! transposes of the query, key and value, a batched `MatMul` for the
//! scores, `Softmax` and a second batched `MatMul`, transposed and reshaped
//! back. tract runs the two products at about 80 GFLOP/s on a 2-core Zen 4
//! (5-6 ms per block for the scores at 448x336, ONNX Runtime 2.5);
//! [`fuse_attention`] makes the whole pattern one [`MULTI_HEAD_ATTENTION`]
//! node, which tract runs head by head and block of queries by block, with
//! the `gemm` crate reading the heads in place (`engine::tract::float_ops`).

use std::collections::HashMap;

use super::builder::{float, import_causeseg_domain, int, Builder};
use super::{drop_unused, pb, GraphIndex};

/// Op type (domain `builder::CAUSESEG_DOMAIN`) of
/// `concat_h(softmax(scale · Q_h·K_hᵀ)·V_h)`: inputs `q`, `k`, `v`, each
/// `[B, N, D]` with head `h` in channels `h·D/H .. (h+1)·D/H`; attributes
/// `heads` (H) and `scale`; output `[B, N, D]`.
pub const MULTI_HEAD_ATTENTION: &str = "MultiHeadAttention";

/// One matched attention, by its output's name.
struct Match {
    q: String,
    k: String,
    v: String,
    heads: i64,
    scale: f32,
}

/// `model` with every attention written as the backbone's export writes it
/// (see the module doc) replaced by one [`MULTI_HEAD_ATTENTION`] node; and
/// how many were.
pub fn fuse_attention(model: &pb::ModelProto) -> (pb::ModelProto, usize) {
    let mut model = model.clone();
    let graph = model.graph.as_mut().expect("read_model checks the graph");
    let matches: HashMap<String, Match> = {
        let index = GraphIndex::new(graph);
        graph.node.iter().filter_map(|node| Some((node.output.first()?.clone(), matched(&index, graph, node)?))).collect()
    };
    if matches.is_empty() {
        return (model, 0);
    }
    let old_nodes = std::mem::take(&mut graph.node);
    let mut b = Builder { graph };
    for node in old_nodes {
        match node.output.first().and_then(|out| matches.get(out)) {
            Some(m) => {
                let attributes = vec![int("heads", m.heads), float("scale", m.scale)];
                b.causeseg_node(MULTI_HEAD_ATTENTION, &node.output[0], &[&m.q, &m.k, &m.v], attributes);
            }
            None => b.graph.node.push(node),
        }
    }
    drop_unused(b.graph);
    import_causeseg_domain(&mut model);
    (model, matches.len())
}

/// `reshape` as the end of an attention, every value inside read only
/// inside it.
fn matched(index: &GraphIndex, graph: &pb::GraphProto, reshape: &pb::NodeProto) -> Option<Match> {
    if reshape.op_type != "Reshape" {
        return None;
    }
    let inside = |tensor: &str| index.read_only_inside(graph, tensor, 1);
    let merged = transposed(index, &reshape.input[0], &[0, 2, 1, 3])?;
    let values_product = index.producer(merged, "MatMul").filter(|_| inside(merged))?;
    let [probabilities, values] = values_product.input.as_slice() else { return None };
    let softmax = index.producer(probabilities, "Softmax").filter(|s| inside(probabilities) && last_axis(s))?;
    let (mut scores, mut scale) = (softmax.input[0].as_str(), 1.0);
    if let Some((unscaled, factor)) = scalar_scale(index, scores) {
        (scores, scale) = (unscaled, factor);
    }
    let scores_product = index.producer(scores, "MatMul").filter(|_| inside(scores))?;
    let (mut query, mut key) = (scores_product.input[0].as_str(), scores_product.input[1].as_str());
    for operand in [&mut query, &mut key] {
        if let Some((unscaled, factor)) = scalar_scale(index, operand) {
            (*operand, scale) = (unscaled, scale * factor);
        }
    }
    let (q, heads) = split_heads(index, graph, transposed(index, query, &[0, 2, 1, 3])?)?;
    let (k, key_heads) = split_heads(index, graph, transposed(index, key, &[0, 2, 3, 1])?)?;
    let (v, value_heads) = split_heads(index, graph, transposed(index, values, &[0, 2, 1, 3])?)?;
    let each_once = [query, key, values.as_str()].iter().all(|t| inside(t));
    (each_once && heads == key_heads && heads == value_heads).then(|| Match { q: q.into(), k: k.into(), v: v.into(), heads, scale })
}

/// The input of the `Transpose` producing `tensor` when its permutation is
/// `perm`.
fn transposed<'a>(index: &GraphIndex<'a>, tensor: &str, perm: &[i64]) -> Option<&'a str> {
    let node = index.producer(tensor, "Transpose")?;
    let same = node.attribute.iter().any(|a| a.name == "perm" && a.ints == perm);
    same.then_some(node.input[0].as_str())
}

/// Whether `softmax` normalises over the last of four axes.
fn last_axis(softmax: &pb::NodeProto) -> bool {
    softmax.attribute.iter().find(|a| a.name == "axis").is_none_or(|a| a.i == -1 || a.i == 3)
}

/// The unscaled input and the factor of `tensor` when it is a `Mul` or
/// `Div` by a scalar constant, read only once.
fn scalar_scale<'a>(index: &GraphIndex<'a>, tensor: &str) -> Option<(&'a str, f32)> {
    let node = *index.producers.get(tensor)?;
    let (x, value) = match index.with_constant(node, &node.op_type)? {
        (x, value) if value.len() == 1 && node.op_type == "Mul" => (x, value[0]),
        (x, value) if value.len() == 1 && node.op_type == "Div" && node.input[0] == x => (x, 1.0 / value[0]),
        _ => return None,
    };
    (index.readers.get(tensor).map_or(0, Vec::len) == 1).then_some((x, value))
}

/// The `[B, N, D]` input of the head split `Reshape` producing `tensor`
/// (to `[B, N, H, D/H]`) and its number of heads `H`: from a constant
/// shape, or from a shape built by `Concat` with `H` a constant.
fn split_heads<'a>(index: &GraphIndex<'a>, graph: &pb::GraphProto, tensor: &str) -> Option<(&'a str, i64)> {
    let reshape = index.producer(tensor, "Reshape").filter(|_| index.read_only_inside(graph, tensor, 1))?;
    let shape = &reshape.input[1];
    let heads = match index.int64_constant(shape) {
        Some(dims) => *dims.get(2).filter(|_| dims.len() == 4)?,
        None => {
            let concat = index.producer(shape, "Concat").filter(|c| c.input.len() == 4)?;
            *index.int64_constant(&concat.input[2])?.first()?
        }
    };
    (heads > 0).then_some((reshape.input[0].as_str(), heads))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::onnx::builder::ints;
    use crate::onnx::{float_value_info, Dim};
    use ndarray::{arr0, Array3};
    use tract_onnx::prelude::*;

    /// Inputs `q`, `k`, `v` `[1, tokens, 4·heads]` through the attention as
    /// the DINOv2 export writes it (each operand of the scores scaled by
    /// 0.35, the export's `d^-1/4` for d = 67), output `y`.
    pub(crate) fn attention_graph(tokens: i64, heads: i64) -> pb::ModelProto {
        let dim = 4 * heads;
        let mut g = pb::GraphProto::default();
        let mut b = Builder { graph: &mut g };
        let shape = |name: &str, dims: &[i64]| pb::TensorProto { name: name.into(), dims: vec![dims.len() as i64], data_type: pb::tensor_proto::DataType::Int64 as i32, int64_data: dims.to_vec(), ..Default::default() };
        b.graph.initializer.push(shape("split", &[1, tokens, heads, 4]));
        b.graph.initializer.push(shape("merge", &[1, tokens, dim]));
        let factor = b.initializer("factor", arr0(0.35f32).view().into_dyn());
        for (x, perm) in [("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])] {
            b.node_named("Reshape", &format!("{x}_split"), &[x, "split"], vec![]);
            b.node_named("Transpose", &format!("{x}_heads"), &[&format!("{x}_split")], vec![ints("perm", &perm)]);
        }
        b.node_named("Mul", "q_scaled", &["q_heads", &factor], vec![]);
        b.node_named("Mul", "k_scaled", &["k_heads", &factor], vec![]);
        b.node_named("MatMul", "scores", &["q_scaled", "k_scaled"], vec![]);
        b.node_named("Softmax", "probabilities", &["scores"], vec![int("axis", -1)]);
        b.node_named("MatMul", "mixed", &["probabilities", "v_heads"], vec![]);
        b.node_named("Transpose", "merged", &["mixed"], vec![ints("perm", &[0, 2, 1, 3])]);
        b.node_named("Reshape", "y", &["merged", "merge"], vec![]);
        let info = |name: &str| float_value_info(name, &[Dim::Value(1), Dim::Value(tokens), Dim::Value(dim)]);
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
            graph: Some(pb::GraphProto { input: vec![info("q"), info("k"), info("v")], output: vec![info("y")], ..g }),
            ..Default::default()
        }
    }

    #[test]
    fn the_pattern_becomes_one_node() {
        let (fused, count) = fuse_attention(&attention_graph(5, 3));
        assert_eq!(count, 1);
        let g = fused.graph.as_ref().unwrap();
        assert_eq!(g.node.len(), 1);
        let node = &g.node[0];
        assert_eq!((node.op_type.as_str(), node.input.as_slice(), node.output[0].as_str()), (MULTI_HEAD_ATTENTION, ["q", "k", "v"].map(String::from).as_slice(), "y"));
        let heads = node.attribute.iter().find(|a| a.name == "heads").unwrap().i;
        let scale = node.attribute.iter().find(|a| a.name == "scale").unwrap().f;
        assert_eq!((heads, scale), (3, 0.35 * 0.35));
        assert!(g.initializer.is_empty(), "shapes and factors left: {:?}", g.initializer.iter().map(|t| &t.name).collect::<Vec<_>>());
    }

    #[test]
    fn scores_read_elsewhere_keep_the_pattern() {
        let mut model = attention_graph(5, 3);
        let g = model.graph.as_mut().unwrap();
        g.output.push(float_value_info("scores", &[Dim::Value(1), Dim::Value(3), Dim::Value(5), Dim::Value(5)]));
        assert_eq!(fuse_attention(&model).1, 0);
    }

    /// The fused node in tract against tract's run of the pattern, on
    /// 150 tokens (more than one block of queries, no multiple of 4).
    #[test]
    fn tract_runs_it_like_the_pattern() {
        let (tokens, heads) = (150usize, 3);
        let input = |seed: usize| Array3::from_shape_fn((1, tokens, 4 * heads), |(_, t, c)| ((t * 31 + c * 17 + seed * 7) % 23) as f32 / 7.0 - 1.5).into_dyn();
        let run = |model: &pb::ModelProto| {
            let mut onnx = tract_onnx::onnx();
            crate::engine::tract::register_ops(&mut onnx);
            let bytes = prost::Message::encode_to_vec(model);
            let plan = onnx.model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
            let inputs = (0..3).map(|s| input(s).into_tensor().into_tvalue()).collect();
            let outputs = plan.run(inputs).unwrap();
            outputs[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>()
        };
        let model = attention_graph(tokens as i64, heads as i64);
        let (expected, got) = (run(&model), run(&fuse_attention(&model).0));
        assert_eq!(expected.len(), got.len());
        let max_diff = expected.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "max diff {max_diff}");
    }
}
