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
//! When the query, key and value are [`LINEAR`] nodes on the same input
//! (`onnx::linear`, run before), they become one product whose output
//! holds the three side by side: the input is read, and rescaled, once.
//! The segmentation head's attentions (one head on `[B, N, D]` operands:
//! `softmax(s · q·kᵀ)·v`, the key transposed) become the same node with
//! one head.

use std::collections::HashMap;

use ndarray::{concatenate, Array1, Array2, Axis};

use super::builder::{float, int, replace_nodes, Builder};
use super::linear::LINEAR;
use super::{drop_unused, pb, GraphIndex};

/// Op type (domain `builder::CAUSESEG_DOMAIN`) of
/// `concat_h(softmax(scale · Q_h·K_hᵀ)·V_h)`: inputs `q`, `k`, `v`, each
/// `[B, N, D]` with head `h` in channels `h·D/H .. (h+1)·D/H` (`k`, `v`
/// may have another number of tokens than `q`); attributes `heads` (H) and
/// `scale`; output `[B, N, D]`, `N` the queries'.
pub const MULTI_HEAD_ATTENTION: &str = "MultiHeadAttention";

/// One matched attention, by its output's name.
struct Match {
    q: String,
    k: String,
    v: String,
    heads: i64,
    scale: f32,
}

/// The query, key and value products of one input as one [`LINEAR`]
/// product: their weights and biases side by side.
struct PackedProduct {
    x: String,
    weight: Array2<f32>,
    bias: Array1<f32>,
    row_scale: Option<String>,
}

/// `model` with every attention written as the backbone's export or the
/// head writes it (see the module doc) replaced by one [`MULTI_HEAD_ATTENTION`] node; and
/// how many were.
pub fn fuse_attention(model: &pb::ModelProto) -> (pb::ModelProto, usize) {
    let graph = model.graph.as_ref().expect("read_model checks the graph");
    let index = GraphIndex::new(graph);
    let matches: HashMap<String, Match> = graph.node.iter().filter_map(|node| Some((node.output.first()?.clone(), matched(&index, graph, node)?))).collect();
    if matches.is_empty() {
        return (model.clone(), 0);
    }
    let mut fused = replace_nodes(model, &matches, |b, out, m| {
        let attributes = vec![int("heads", m.heads), float("scale", m.scale)];
        b.causeseg_node(MULTI_HEAD_ATTENTION, out, &[&m.q, &m.k, &m.v], attributes);
    });
    // The shape computations of the head split are gone now, so the three
    // products may be read by the attention alone.
    pack_products(fused.graph.as_mut().expect("read_model checks the graph"));
    (fused, matches.len())
}

/// Each attention node's query, key and value [`LINEAR`] products as one
/// (see [`packed_product`]), the attention reading its output.
fn pack_products(graph: &mut pb::GraphProto) {
    let packs: HashMap<String, PackedProduct> = {
        let index = GraphIndex::new(graph);
        let attentions = graph.node.iter().filter(|n| n.op_type == MULTI_HEAD_ATTENTION && n.input.len() == 3);
        attentions.filter_map(|n| Some((n.output[0].clone(), packed_product(&index, graph, [&n.input[0], &n.input[1], &n.input[2]])?))).collect()
    };
    let old_nodes = std::mem::take(&mut graph.node);
    let mut b = Builder { graph };
    for mut node in old_nodes {
        if let Some(p) = node.output.first().and_then(|out| packs.get(out)) {
            let out = &node.output[0];
            let weight = b.initializer(&format!("{out}/qkv_weight"), p.weight.view().into_dyn());
            let bias = b.initializer(&format!("{out}/qkv_bias"), p.bias.view().into_dyn());
            let mut inputs = vec![p.x.as_str(), &weight, &bias];
            inputs.extend(p.row_scale.as_deref());
            node.input = vec![b.causeseg_node(LINEAR, &format!("{out}/qkv"), &inputs, vec![])];
        }
        b.graph.node.push(node);
    }
    drop_unused(b.graph);
}

/// `end` as the end of an attention, every value inside read only
/// inside it: the backbone's (several heads, ending in the `Reshape` that
/// merges them) or the head's (one head of `[B, N, D]` operands, ending in
/// the values' `MatMul`).
fn matched(index: &GraphIndex, graph: &pb::GraphProto, end: &pb::NodeProto) -> Option<Match> {
    let inside = |tensor: &str| index.read_only_inside(graph, tensor, 1);
    let (values_product, rank) = match end.op_type.as_str() {
        "Reshape" => {
            let merged = transposed(index, &end.input[0], &[0, 2, 1, 3])?;
            (index.producer(merged, "MatMul").filter(|_| inside(merged))?, 4)
        }
        "MatMul" => (end, 3),
        _ => return None,
    };
    let [probabilities, values] = values_product.input.as_slice() else { return None };
    let softmax = index.producer(probabilities, "Softmax").filter(|s| inside(probabilities) && last_axis(s, rank))?;
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
    if rank == 3 {
        let k = transposed(index, key, &[0, 2, 1]).filter(|_| inside(key))?;
        return Some(Match { q: query.into(), k: k.into(), v: values.clone(), heads: 1, scale });
    }
    let (q, heads) = split_heads(index, graph, transposed(index, query, &[0, 2, 1, 3])?)?;
    let (k, key_heads) = split_heads(index, graph, transposed(index, key, &[0, 2, 3, 1])?)?;
    let (v, value_heads) = split_heads(index, graph, transposed(index, values, &[0, 2, 1, 3])?)?;
    let each_once = [query, key, values.as_str()].iter().all(|t| inside(t));
    (each_once && heads == key_heads && heads == value_heads).then(|| Match { q: q.into(), k: k.into(), v: v.into(), heads, scale })
}

/// The [`LINEAR`] nodes producing `operands` as one product, when they
/// read the same input with the same row scale and nothing else reads
/// their outputs.
fn packed_product(index: &GraphIndex, graph: &pb::GraphProto, operands: [&str; 3]) -> Option<PackedProduct> {
    let products = operands.map(|t| index.producer(t, LINEAR).filter(|_| index.read_only_inside(graph, t, 1)));
    let [Some(first), Some(_), Some(_)] = products else { return None };
    let same_inputs = products.iter().flatten().all(|p| p.input[0] == first.input[0] && p.input.get(3) == first.input.get(3));
    let weights: Option<Vec<Array2<f32>>> = products
        .iter()
        .flatten()
        .map(|p| {
            let dims = index.constant_dims(&p.input[1])?;
            Array2::from_shape_vec((dims[0] as usize, dims[1] as usize), index.constant(&p.input[1])?).ok()
        })
        .collect();
    let biases: Option<Vec<Array1<f32>>> = products.iter().flatten().map(|p| Some(Array1::from_vec(index.constant(&p.input[2])?))).collect();
    let (weights, biases) = (weights?, biases?);
    Some(PackedProduct {
        x: first.input[0].clone(),
        weight: concatenate(Axis(1), &weights.iter().map(|a| a.view()).collect::<Vec<_>>()).ok()?,
        bias: concatenate(Axis(0), &biases.iter().map(|a| a.view()).collect::<Vec<_>>()).ok()?,
        row_scale: first.input.get(3).cloned(),
    })
    .filter(|_| same_inputs)
}

/// The input of the `Transpose` producing `tensor` when its permutation is
/// `perm`.
fn transposed<'a>(index: &GraphIndex<'a>, tensor: &str, perm: &[i64]) -> Option<&'a str> {
    let node = index.producer(tensor, "Transpose")?;
    let same = node.attribute.iter().any(|a| a.name == "perm" && a.ints == perm);
    same.then_some(node.input[0].as_str())
}

/// Whether `softmax` normalises over the last of `rank` axes.
fn last_axis(softmax: &pb::NodeProto, rank: i64) -> bool {
    softmax.attribute.iter().find(|a| a.name == "axis").is_none_or(|a| a.i == -1 || a.i == rank - 1)
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

    /// Inputs `q`, `k`, `v` `[1, tokens, 4·heads]` (with `projected`, the
    /// products of one input `x` of 5 channels) through the attention as
    /// the DINOv2 export writes it (each operand of the scores scaled by
    /// 0.35, the export's `d^-1/4` for d = 67), output `y`.
    pub(crate) fn attention_graph(tokens: i64, heads: i64, projected: bool) -> pb::ModelProto {
        let dim = 4 * heads;
        let mut g = pb::GraphProto::default();
        let mut b = Builder { graph: &mut g };
        if projected {
            for (i, x) in ["q", "k", "v"].into_iter().enumerate() {
                let weight = ndarray::Array2::from_shape_fn((5, dim as usize), |(r, c)| ((r * 7 + c * 3 + i * 5) % 11) as f32 / 5.0 - 1.0);
                let weight = b.initializer(&format!("w{x}"), weight.into_dyn().view());
                b.node_named("MatMul", x, &["x", &weight], vec![]);
            }
        }
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
            graph: Some(pb::GraphProto {
                input: if projected { vec![float_value_info("x", &[Dim::Value(1), Dim::Value(tokens), Dim::Value(5)])] } else { vec![info("q"), info("k"), info("v")] },
                output: vec![info("y")],
                ..g
            }),
            ..Default::default()
        }
    }

    /// The head's attention: `q [1, queries, 8]`, `k`, `v` `[1, keys, 8]`,
    /// `y = Softmax(MatMul(q, Transpose(k)) · 0.125) · v`.
    fn single_head_graph(queries: i64, keys: i64) -> pb::ModelProto {
        let mut g = pb::GraphProto::default();
        let mut b = Builder { graph: &mut g };
        let factor = b.initializer("factor", arr0(0.125f32).view().into_dyn());
        b.node_named("Transpose", "k_t", &["k"], vec![ints("perm", &[0, 2, 1])]);
        b.node_named("MatMul", "scores", &["q", "k_t"], vec![]);
        b.node_named("Mul", "scaled", &["scores", &factor], vec![]);
        b.node_named("Softmax", "weights", &["scaled"], vec![int("axis", -1)]);
        b.node_named("MatMul", "y", &["weights", "v"], vec![]);
        let info = |name: &str, tokens: i64| float_value_info(name, &[Dim::Value(1), Dim::Value(tokens), Dim::Value(8)]);
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
            graph: Some(pb::GraphProto { input: vec![info("q", queries), info("k", keys), info("v", keys)], output: vec![info("y", queries)], ..g }),
            ..Default::default()
        }
    }

    #[test]
    fn the_heads_single_head_attention_becomes_one_node() {
        let (fused, count) = fuse_attention(&single_head_graph(7, 300));
        assert_eq!(count, 1);
        let g = fused.graph.as_ref().unwrap();
        let node = &g.node[..];
        assert_eq!((node.len(), node[0].op_type.as_str(), node[0].input.as_slice()), (1, MULTI_HEAD_ATTENTION, ["q", "k", "v"].map(String::from).as_slice()));
        let attribute = |name: &str| node[0].attribute.iter().find(|a| a.name == name).cloned().unwrap();
        assert_eq!((attribute("heads").i, attribute("scale").f), (1, 0.125));
    }

    #[test]
    fn the_pattern_becomes_one_node() {
        let (fused, count) = fuse_attention(&attention_graph(5, 3, false));
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
        let mut model = attention_graph(5, 3, false);
        let g = model.graph.as_mut().unwrap();
        g.output.push(float_value_info("scores", &[Dim::Value(1), Dim::Value(3), Dim::Value(5), Dim::Value(5)]));
        assert_eq!(fuse_attention(&model).1, 0);
    }

    #[test]
    fn products_of_one_input_are_packed() {
        let (products, _) = crate::onnx::linear::fuse_linear(&attention_graph(5, 3, true));
        let (fused, count) = fuse_attention(&products);
        assert_eq!(count, 1);
        let g = fused.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, [LINEAR, MULTI_HEAD_ATTENTION]);
        assert_eq!((g.node[0].input[0].as_str(), g.node[1].input.len()), ("x", 1));
        let index = GraphIndex::new(g);
        assert_eq!(index.constant_dims(&g.node[0].input[1]).unwrap(), [5, 36]);
    }

    /// The fused node in tract against tract's run of the pattern, on
    /// 301 tokens (two blocks of queries, 151 + 150; no multiple of 4), with
    /// three inputs and with the products packed; and the head's single
    /// head with 300 queries and 257 keys.
    #[test]
    fn tract_runs_it_like_the_pattern() {
        let run = |model: &pb::ModelProto, inputs: &[(usize, usize)]| {
            let mut onnx = tract_onnx::onnx();
            crate::engine::tract::register_ops(&mut onnx);
            let bytes = prost::Message::encode_to_vec(model);
            let plan = onnx.model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
            let input = |seed: usize, (tokens, width): (usize, usize)| Array3::from_shape_fn((1, tokens, width), |(_, t, c)| ((t * 31 + c * 17 + seed * 7) % 23) as f32 / 7.0 - 1.5).into_dyn();
            let outputs = plan.run(inputs.iter().enumerate().map(|(s, &shape)| input(s, shape).into_tensor().into_tvalue()).collect()).unwrap();
            outputs[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>()
        };
        let (tokens, heads) = (301usize, 3);
        let cases = [
            (attention_graph(tokens as i64, heads as i64, false), vec![(tokens, 4 * heads); 3]),
            (attention_graph(tokens as i64, heads as i64, true), vec![(tokens, 5)]),
            (single_head_graph(300, 257), vec![(300, 8), (257, 8), (257, 8)]),
        ];
        for (model, inputs) in cases {
            let fused = fuse_attention(&crate::onnx::linear::fuse_linear(&model).0).0;
            assert!(fused.graph.as_ref().unwrap().node.iter().any(|n| n.op_type == MULTI_HEAD_ATTENTION));
            let (expected, got) = (run(&model, &inputs), run(&fused, &inputs));
            assert_eq!(expected.len(), got.len());
            let max_diff = expected.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max_diff < 1e-5, "max diff {max_diff} (inputs {inputs:?})");
        }
    }
}
