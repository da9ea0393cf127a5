//! Float products with a constant weight, and the per-element work around
//! them, as one node for tract: `y = (x·W) ⊙ r + c`.
//!
//! tract's float matrix products run at 130-165 GFLOP/s on the backbone's
//! shapes on a 2-core Zen 4, the `gemm` crate's at about 220 (the speed of
//! OpenBLAS there); [`fuse_linear`] makes each `MatMul` with a `[K, N]`
//! float initializer one [`LINEAR`] node, which tract runs with `gemm`
//! (`engine::tract::float_ops`). The node also takes what follows the
//! product up to the next non-affine step: a per-token scale `r` (the
//! folded LayerNorm's, `onnx::layer_norm`), constant biases (added up into
//! `c`) and constant per-channel scales (LayerScale; multiplied into `W`
//! and `c`), so tract makes no extra pass over the product for them.

use std::collections::HashMap;

use ndarray::{Array1, Array2, Axis};

use super::builder::replace_nodes;
use super::{float_values, pb, GraphIndex};

/// Op type (domain `builder::CAUSESEG_DOMAIN`) of `y = (x·W) ⊙ r + c`:
/// inputs `x [.., M, K]`, `W` (a constant `[K, N]`), `c` (a constant
/// `[N]`) and, optionally, `r [.., M, 1]`, one scale per row of `x`.
pub const LINEAR: &str = "Linear";

/// One matched product and its epilogue, by the name of its last tensor.
struct Match {
    x: String,
    weight: Array2<f32>,
    bias: Array1<f32>,
    row_scale: Option<String>,
}

/// `model` with every float `MatMul` by a 2-D initializer (and the affine
/// steps after it whose intermediate values nothing else reads) replaced
/// by one [`LINEAR`] node; and how many were.
pub fn fuse_linear(model: &pb::ModelProto) -> (pb::ModelProto, usize) {
    let graph = model.graph.as_ref().expect("read_model checks the graph");
    let index = GraphIndex::new(graph);
    let matches: HashMap<String, Match> = graph.node.iter().filter_map(|node| matched(&index, graph, node)).collect();
    if matches.is_empty() {
        return (model.clone(), 0);
    }
    // The steps before each match's last node are read by nothing else,
    // so they go once it is replaced.
    let fused = replace_nodes(model, &matches, |b, end, m| {
        let weight = b.initializer(&format!("{end}/weight"), m.weight.view().into_dyn());
        let bias = b.initializer(&format!("{end}/bias"), m.bias.view().into_dyn());
        let mut inputs = vec![m.x.as_str(), &weight, &bias];
        inputs.extend(m.row_scale.as_deref());
        b.causeseg_node(LINEAR, end, &inputs, vec![]);
    });
    (fused, matches.len())
}

/// `node` as the product of a match: the name of the match's last tensor
/// and the match.
fn matched(index: &GraphIndex, graph: &pb::GraphProto, node: &pb::NodeProto) -> Option<(String, Match)> {
    let float = pb::tensor_proto::DataType::Float as i32;
    let [x, w] = node.input.as_slice() else { return None };
    let tensor = index.initializers.get(w.as_str()).filter(|t| node.op_type == "MatMul" && t.data_type == float && t.dims.len() == 2)?;
    let (k, n) = (tensor.dims[0] as usize, tensor.dims[1] as usize);
    let mut m = Match { x: x.clone(), weight: Array2::from_shape_vec((k, n), float_values(tensor)).ok()?, bias: Array1::zeros(n), row_scale: None };
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
    Some((steps.pop().expect("the product"), m))
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
    use ndarray::{array, Array3, ArrayD};
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

    /// The fused graph in tract (with causeseg's ops) against the original.
    #[test]
    fn tract_runs_it_like_the_separate_ops() {
        let x = Array3::from_shape_fn((1, 4, 3), |(_, t, c)| (t as f32 - 1.5) * (c as f32 + 0.3));
        let r = Array3::from_shape_fn((1, 4, 1), |(_, t, _)| 0.5 + t as f32);
        let run = |model: &pb::ModelProto| {
            let mut onnx = tract_onnx::onnx();
            crate::engine::tract::register_ops(&mut onnx);
            let bytes = prost::Message::encode_to_vec(model);
            let plan = onnx.model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
            let outputs = plan.run(tvec!(x.clone().into_dyn().into_tensor().into_tvalue(), r.clone().into_dyn().into_tensor().into_tvalue())).unwrap();
            outputs.iter().map(|o| o.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>()).collect::<Vec<_>>()
        };
        for bias_first in [false, true] {
            let (expected, got) = (run(&graph(bias_first)), run(&fuse_linear(&graph(bias_first)).0));
            assert_eq!(expected.len(), 3);
            for (e, g) in expected.iter().zip(&got) {
                assert_eq!(e.len(), g.len());
                for (a, b) in e.iter().zip(g) {
                    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{e:?} vs {g:?}");
                }
            }
        }
    }
}
