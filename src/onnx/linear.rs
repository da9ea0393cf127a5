//! Float products with a constant weight, and the per-element work around
//! them, as one node for tract: `y = act((x·W) ⊙ r + c + s)`.
//!
//! tract's float matrix products run at 130-165 GFLOP/s on the backbone's
//! shapes on a 2-core Zen 4, the `gemm` crate's at about 220 (the speed of
//! OpenBLAS there); [`fuse_linear`] makes each `MatMul` with a `[K, N]`
//! float initializer one [`LINEAR`] node, which tract runs with `gemm`
//! (`engine::tract::float_ops`). The node also takes what follows the
//! product up to the next non-affine step: a per-token scale `r` (the
//! folded LayerNorm's, `onnx::layer_norm`), constant biases (added up into
//! `c`) and constant per-channel scales (LayerScale; multiplied into `W`
//! and `c`), then either the residual `s` the result is added to or the
//! exact GELU that reads it, so tract makes no extra pass over the product
//! for them (GELU was tract's single-threaded `GeluExact`, 13.5 ms per
//! 448x336 frame on a 2-core AVX2 Zen).

use std::collections::HashMap;

use ndarray::{Array1, Array2, Axis};

use super::builder::{replace_nodes, string};
use super::gelu::exact_gelu_input;
use super::{float_values, pb, GraphIndex};

/// Op type (domain `builder::CAUSESEG_DOMAIN`) of
/// `y = act((x·W) ⊙ r + c + s)`: inputs `x [.., M, K]`, `W` (a constant `[K, N]`), `c` (a
/// constant `[N]`) and, optionally, `r [.., M, 1]` (one scale per row of
/// `x`; an empty name when absent) and `s` (the residual, shaped like
/// `y`); attribute `activation`: `"gelu"` (exact, erf-based), or absent.
pub const LINEAR: &str = "Linear";

/// The [`LINEAR`] attribute value of the exact GELU.
pub const GELU: &str = "gelu";

/// One matched product and its epilogue, by the name of its last tensor.
struct Match {
    x: String,
    weight: Array2<f32>,
    bias: Array1<f32>,
    row_scale: Option<String>,
    residual: Option<String>,
    gelu: bool,
}

/// `model` with every float `MatMul` by a 2-D initializer (and the affine
/// steps after it whose intermediate values nothing else reads) replaced
/// by one [`LINEAR`] node; and how many were.
pub fn fuse_linear(model: &pb::ModelProto) -> (pb::ModelProto, usize) {
    let graph = model.graph.as_ref().expect("read_model checks the graph");
    let index = GraphIndex::new(graph);
    let first: Vec<(&pb::NodeProto, String, Match)> = graph.node.iter().filter_map(|n| matched(&index, graph, n, true).map(|(end, m)| (n, end, m))).collect();
    let mut claims: HashMap<String, usize> = HashMap::new();
    first.iter().for_each(|(_, end, _)| *claims.entry(end.clone()).or_default() += 1);
    // Two products added together would each take the other as its
    // residual: both end before the sum instead.
    let matches: HashMap<String, Match> =
        first.into_iter().filter_map(|(n, end, m)| if claims[&end] > 1 { matched(&index, graph, n, false) } else { Some((end, m)) }).collect();
    if matches.is_empty() {
        return (model.clone(), 0);
    }
    // The steps before each match's last node are read by nothing else,
    // so they go once it is replaced.
    let fused = replace_nodes(model, &matches, |b, end, m| {
        let weight = b.initializer(&format!("{end}/weight"), m.weight.view().into_dyn());
        let bias = b.initializer(&format!("{end}/bias"), m.bias.view().into_dyn());
        let mut inputs = vec![m.x.as_str(), &weight, &bias];
        match (&m.row_scale, &m.residual) {
            (Some(r), Some(s)) => inputs.extend([r.as_str(), s]),
            (Some(r), None) => inputs.push(r),
            (None, Some(s)) => inputs.extend(["", s.as_str()]),
            (None, None) => {}
        }
        b.causeseg_node(LINEAR, end, &inputs, if m.gelu { vec![string("activation", GELU)] } else { vec![] });
    });
    (fused, matches.len())
}

/// `node` as the product of a match: the name of the match's last tensor
/// and the match. With `residual`, a sum with a non-constant value (the
/// residual stream) may end the match.
fn matched(index: &GraphIndex, graph: &pb::GraphProto, node: &pb::NodeProto, residual: bool) -> Option<(String, Match)> {
    let float = pb::tensor_proto::DataType::Float as i32;
    let [x, w] = node.input.as_slice() else { return None };
    let tensor = index.initializers.get(w.as_str()).filter(|t| node.op_type == "MatMul" && t.data_type == float && t.dims.len() == 2)?;
    let (k, n) = (tensor.dims[0] as usize, tensor.dims[1] as usize);
    let mut m = Match { x: x.clone(), weight: Array2::from_shape_vec((k, n), float_values(tensor)).ok()?, bias: Array1::zeros(n), row_scale: None, residual: None, gelu: false };
    let mut steps = vec![node.output[0].clone()];
    let mut biased = false;
    loop {
        let end = steps.last().expect("the product").as_str();
        let next = match index.readers.get(end).map(Vec::as_slice) {
            Some([next]) if index.read_only_inside(graph, end, 1) => *next,
            _ => break,
        };
        match (next.op_type.as_str(), index.with_constant(next, &next.op_type)) {
            ("Add", Some((_, values))) if per_channel(index, next, values.len(), n) => {
                m.bias = &m.bias + &broadcast(&values, n);
                biased = true;
            }
            // Only sums may follow the residual.
            _ if m.residual.is_some() => break,
            // The residual stream (a value of y's shape, checked when tract
            // wires the node).
            ("Add", None) if residual && next.input.len() == 2 && next.input[0] != next.input[1] => {
                let other = next.input.iter().find(|i| *i != end)?;
                m.residual = Some(other.clone());
            }
            ("Mul", Some((_, values))) if per_channel(index, next, values.len(), n) => {
                let scale = broadcast(&values, n);
                m.weight *= &scale.view().insert_axis(Axis(0));
                m.bias *= &scale;
            }
            // A per-row scale commutes with the column scales but not with
            // the bias, so only before any bias.
            ("Mul", None) if !biased && m.row_scale.is_none() && next.input.len() == 2 => {
                let other = next.input.iter().find(|i| *i != end)?;
                m.row_scale = Some(other.clone());
            }
            _ => break,
        }
        steps.push(next.output[0].clone());
    }
    if m.residual.is_none() {
        if let Some(gelu) = gelu_reading(index, graph, steps.last().expect("the product")) {
            m.gelu = true;
            steps.push(gelu);
        }
    }
    Some((steps.pop().expect("the product"), m))
}

/// The end of the exact GELU reading `x` (`onnx::gelu`), when nothing
/// else reads `x`.
fn gelu_reading(index: &GraphIndex, graph: &pb::GraphProto, x: &str) -> Option<String> {
    let readers = index.readers.get(x).filter(|_| index.read_only_inside(graph, x, 2))?;
    readers.iter().filter(|n| n.op_type == "Mul").find_map(|product| {
        let [gelu] = index.readers.get(product.output[0].as_str())?.as_slice() else { return None };
        (exact_gelu_input(index, graph, &gelu.output[0]) == Some(x)).then(|| gelu.output[0].clone())
    })
}

/// Whether the constant operand of `node` (`len` values) broadcasts along
/// the last axis only: a scalar, or `[.., N]` with every other dimension 1.
fn per_channel(index: &GraphIndex, node: &pb::NodeProto, len: usize, n: usize) -> bool {
    let dims = node.input.iter().find_map(|i| index.constant_dims(i));
    let leading_ones = dims.is_some_and(|d| d.iter().rev().skip(1).all(|&v| v == 1));
    leading_ones && (len == 1 || len == n)
}

/// `values` (one, or `n`) as `n` values.
fn broadcast(values: &[f32], n: usize) -> Array1<f32> {
    if values.len() == 1 {
        Array1::from_elem(n, values[0])
    } else {
        Array1::from_vec(values.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::Builder;
    use crate::onnx::{float_value_info, Dim};
    use ndarray::{array, ArrayD, Dimension};
    use tract_onnx::prelude::*;

    /// `x [1, 4, 3]` and `r [1, 4, 1]` → `MatMul(x, W)` ⊙ r + b1 → ⊙ λ
    /// (LayerScale) + b2 as output `y` (with `bias_first`, + b1 before
    /// ⊙ r), plus `side = MatMul(x, W2)` read twice (by a `Relu` and the
    /// output), which must stay a product.
    fn graph(bias_first: bool) -> pb::ModelProto {
        let mut g = pb::GraphProto::default();
        let mut b = Builder { graph: &mut g };
        let w = b.initializer("w", array![[1.0f32, -2.0], [0.5, 0.25], [-1.5, 3.0]].into_dyn().view());
        let b1 = b.initializer("b1", array![0.2f32, -0.4].into_dyn().view());
        let lambda = b.initializer("lambda", array![[[0.5f32, 3.0]]].into_dyn().view());
        let b2 = b.initializer("b2", ArrayD::from_elem(vec![], 1.5f32).view());
        let w2 = b.initializer("w2", array![[0.3f32], [1.1], [-0.7]].into_dyn().view());
        b.node_named("MatMul", "p", &["x", &w], vec![]);
        if bias_first {
            b.node_named("Add", "biased", &[&b1, "p"], vec![]);
            b.node_named("Mul", "affine", &["r", "biased"], vec![]);
        } else {
            b.node_named("Mul", "scaled", &["r", "p"], vec![]);
            b.node_named("Add", "affine", &[&b1, "scaled"], vec![]);
        }
        b.node_named("Mul", "layer_scaled", &["affine", &lambda], vec![]);
        b.node_named("Add", "y", &["layer_scaled", &b2], vec![]);
        b.node_named("MatMul", "side", &["x", &w2], vec![]);
        b.node_named("Relu", "side_relu", &["side"], vec![]);
        let info = |name: &str, dims: &[i64]| float_value_info(name, &dims.iter().map(|&d| Dim::Value(d)).collect::<Vec<_>>());
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
            graph: Some(pb::GraphProto {
                input: vec![info("x", &[1, 4, 3]), info("r", &[1, 4, 1])],
                output: vec![info("y", &[1, 4, 2]), info("side", &[1, 4, 1]), info("side_relu", &[1, 4, 1])],
                ..g
            }),
            ..Default::default()
        }
    }

    /// An MLP: `x [1, 4, 3]` → `MatMul(x, W1) + b1` → GELU as the export
    /// writes it → `MatMul(·, W2) + b2` added to the residual `s [1, 4, 2]`
    /// as output `y`; and `z = MatMul(x, Wa) + MatMul(x, Wb)`, two products
    /// added together.
    fn mlp_graph() -> pb::ModelProto {
        let mut g = pb::GraphProto::default();
        let mut b = Builder { graph: &mut g };
        let w1 = b.initializer("w1", array![[1.0f32, -2.0, 0.3], [0.5, 0.25, -1.0], [-1.5, 3.0, 0.7]].into_dyn().view());
        let b1 = b.initializer("b1", array![0.2f32, -0.4, 0.1].into_dyn().view());
        let w2 = b.initializer("w2", array![[0.3f32, -0.2], [1.1, 0.4], [-0.7, 0.9]].into_dyn().view());
        let b2 = b.initializer("b2", array![0.05f32, -0.5].into_dyn().view());
        let scalar = |b: &mut Builder, name: &str, v: f32| b.initializer(name, ArrayD::from_elem(vec![], v).view());
        let (root_two, one, half) = (scalar(&mut b, "root_two", std::f32::consts::SQRT_2), scalar(&mut b, "one", 1.0), scalar(&mut b, "half", 0.5));
        b.node_named("MatMul", "h", &["x", &w1], vec![]);
        b.node_named("Add", "hb", &["h", &b1], vec![]);
        b.node_named("Div", "hd", &["hb", &root_two], vec![]);
        b.node_named("Erf", "he", &["hd"], vec![]);
        b.node_named("Add", "he1", &["he", &one], vec![]);
        b.node_named("Mul", "hm", &["hb", "he1"], vec![]);
        b.node_named("Mul", "g", &["hm", &half], vec![]);
        b.node_named("MatMul", "o", &["g", &w2], vec![]);
        b.node_named("Add", "ob", &["o", &b2], vec![]);
        b.node_named("Add", "y", &["s", "ob"], vec![]);
        let (wa, wb) = (b.initializer("wa", array![[1.0f32], [2.0], [3.0]].into_dyn().view()), b.initializer("wb", array![[-1.0f32], [0.5], [0.25]].into_dyn().view()));
        b.node_named("MatMul", "za", &["x", &wa], vec![]);
        b.node_named("MatMul", "zb", &["x", &wb], vec![]);
        b.node_named("Add", "z", &["za", "zb"], vec![]);
        let info = |name: &str, dims: &[i64]| float_value_info(name, &dims.iter().map(|&d| Dim::Value(d)).collect::<Vec<_>>());
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
            graph: Some(pb::GraphProto { input: vec![info("x", &[1, 4, 3]), info("s", &[1, 4, 2])], output: vec![info("y", &[1, 4, 2]), info("z", &[1, 4, 1])], ..g }),
            ..Default::default()
        }
    }

    #[test]
    fn the_product_takes_the_gelu_or_the_residual_after_it() {
        let (fused, count) = fuse_linear(&mlp_graph());
        assert_eq!(count, 4);
        let g = fused.graph.as_ref().unwrap();
        let ops: Vec<(&str, &str)> = g.node.iter().map(|n| (n.op_type.as_str(), n.output[0].as_str())).collect();
        // Two products added together both end before the sum.
        assert_eq!(ops, [(LINEAR, "g"), (LINEAR, "y"), (LINEAR, "za"), (LINEAR, "zb"), ("Add", "z")]);
        let activation = |n: &pb::NodeProto| n.attribute.iter().find(|a| a.name == "activation").map(|a| String::from_utf8(a.s.clone()).unwrap());
        assert_eq!((activation(&g.node[0]), g.node[0].input.len()), (Some(GELU.to_string()), 3));
        // No row scale (an empty name), then the residual.
        assert_eq!((activation(&g.node[1]), &g.node[1].input[3..]), (None, ["".to_string(), "s".to_string()].as_slice()));
    }

    #[test]
    fn the_product_takes_its_row_scale_biases_and_layer_scale() {
        let (fused, count) = fuse_linear(&graph(false));
        assert_eq!(count, 2);
        let g = fused.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, [LINEAR, LINEAR, "Relu"]);
        let y = &g.node[0];
        assert_eq!((y.output[0].as_str(), y.input.len(), y.input[3].as_str()), ("y", 4, "r"));
        let index = GraphIndex::new(g);
        // W·λ per column; c = b1·λ + b2.
        assert_eq!(index.constant(&y.input[1]).unwrap(), [0.5, -6.0, 0.25, 0.75, -0.75, 9.0]);
        assert_eq!(index.constant(&y.input[2]).unwrap(), [1.6, 0.29999995]);
        // The product read twice keeps its name and takes nothing after it.
        assert_eq!((g.node[1].output[0].as_str(), g.node[1].input.len()), ("side", 3));
        assert!(index.constant(&g.node[1].input[2]).unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_bias_before_the_row_scale_ends_the_match() {
        // (x·W + b1) ⊙ r is no `(x·W) ⊙ r + c`: the match ends at + b1.
        let (fused, _) = fuse_linear(&graph(true));
        let ops: Vec<&str> = fused.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, [LINEAR, "Mul", "Mul", "Add", LINEAR, "Relu"]);
        assert_eq!(fused.graph.as_ref().unwrap().node[0].output[0], "biased");
    }

    /// Both graphs' outputs in tract (with causeseg's ops), `inputs` of
    /// the given shapes filled with a fixed pattern.
    fn run_in_tract(model: &pb::ModelProto, inputs: &[&[usize]]) -> Vec<Vec<f32>> {
        let mut onnx = tract_onnx::onnx();
        crate::engine::tract::register_ops(&mut onnx);
        let bytes = prost::Message::encode_to_vec(model);
        let plan = onnx.model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
        let values = inputs.iter().enumerate().map(|(i, shape)| ArrayD::from_shape_fn(shape.to_vec(), |ix| (ix.as_array_view().iter().sum::<usize>() as f32 - 1.5) * (0.3 + i as f32) + ix[ix.ndim() - 1] as f32 * 0.7));
        let outputs = plan.run(values.map(|v| v.into_tensor().into_tvalue()).collect()).unwrap();
        outputs.iter().map(|o| o.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>()).collect()
    }

    fn assert_close(expected: &[Vec<f32>], got: &[Vec<f32>]) {
        assert_eq!(expected.len(), got.len());
        for (e, g) in expected.iter().zip(got) {
            assert_eq!(e.len(), g.len());
            for (a, b) in e.iter().zip(g) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{e:?} vs {g:?}");
            }
        }
    }

    /// The fused graphs in tract against the originals.
    #[test]
    fn tract_runs_it_like_the_separate_ops() {
        for bias_first in [false, true] {
            let inputs: [&[usize]; 2] = [&[1, 4, 3], &[1, 4, 1]];
            let expected = run_in_tract(&graph(bias_first), &inputs);
            assert_eq!(expected.len(), 3);
            assert_close(&expected, &run_in_tract(&fuse_linear(&graph(bias_first)).0, &inputs));
        }
        let inputs: [&[usize]; 2] = [&[1, 4, 3], &[1, 4, 2]];
        let expected = run_in_tract(&mlp_graph(), &inputs);
        assert_eq!(expected.len(), 2);
        assert_close(&expected, &run_in_tract(&fuse_linear(&mlp_graph()).0, &inputs));
    }
}
