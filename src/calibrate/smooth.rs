//! SmoothQuant (Xiao et al., 2023) on the activations that feed quantized
//! weight products: one int8 scale per activation tensor has to cover
//! every channel, and a tensor whose channels span very different ranges
//! (DINOv2's first MLP input: one LayerNorm channel reaches 150 where the
//! median channel stays under 7) leaves the small channels a few int8
//! steps. Dividing channel `j` by `s_j` and multiplying row `j` of each
//! reader's weight by `s_j` computes the same products:
//!
//! ```text
//! X·W = (X ⊘ s)·(diag(s)·W)
//! s_j = max|X_j|^α / max_k |W_jk|^(1−α)   (α: the migration strength, 0.5 by default)
//! ```
//!
//! so the float graph is unchanged up to rounding. Two kinds of tensor are
//! smoothed ([`Site`]): a LayerNorm's output, where `⊘ s` folds into the
//! LayerNorm's `γ` and `β` and nothing is added to the graph, and a GELU's
//! output (the MLP's second product), where it is one `Mul` by `1 / s`
//! after the GELU (TensorRT fuses it with the GELU). The factors are
//! stored in the calibration table ([`super::CalibrationTable::smoothing`])
//! and applied before the Q/DQ nodes are placed, so every int8 form is
//! built from the same smoothed graph.

use std::collections::{BTreeMap, HashMap};

use super::qdq::{float_tensor, Plan};
use crate::onnx::gelu::exact_gelu_input;
use crate::onnx::layer_norm::is_layer_norm;
use crate::onnx::{float_values, pb, GraphIndex};

/// A LayerNorm or GELU output that can be smoothed: every reader is a
/// MatMul that reads it as left operand with a `[channels, N]` float weight
/// of its own, and at least one of them is quantized.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// The LayerNorm's or GELU's output tensor.
    pub tensor: String,
    /// Its channel count (the last axis).
    pub channels: usize,
    /// The largest |w| of each weight row over all readers.
    pub weight_amax: Vec<f32>,
}

/// The smoothable LayerNorm and GELU outputs of `graph` among the
/// activation inputs of `plan`, in graph order.
pub fn sites(graph: &pb::GraphProto, plan: &Plan) -> Vec<Site> {
    let index = GraphIndex::new(graph);
    let quantized: Vec<&str> = plan.nodes.iter().flat_map(|n| n.activations.iter().map(|(_, t)| t.as_str())).collect();
    let float = pb::tensor_proto::DataType::Float as i32;
    graph
        .node
        .iter()
        .filter(|node| {
            node.output.first().is_some_and(|out| quantized.contains(&out.as_str()) && (is_layer_norm(&index, node) || exact_gelu_input(&index, graph, out).is_some()))
        })
        .filter_map(|node| {
            let tensor = node.output[0].as_str();
            let readers = index.readers.get(tensor)?;
            let mut weight_amax: Option<Vec<f32>> = None;
            for reader in readers {
                let weight = index.initializers.get(reader.input.get(1)?.as_str())?;
                let own = index.readers.get(weight.name.as_str()).map_or(0, Vec::len) == 1;
                if reader.op_type != "MatMul" || reader.input[0] != tensor || weight.dims.len() != 2 || weight.data_type != float || !own {
                    return None;
                }
                let rows = row_amax(weight);
                if weight_amax.as_ref().is_some_and(|a| a.len() != rows.len()) {
                    return None;
                }
                weight_amax = Some(match weight_amax {
                    Some(a) => a.iter().zip(&rows).map(|(a, b)| a.max(*b)).collect(),
                    None => rows,
                });
            }
            let outputs_tensor = graph.output.iter().any(|o| o.name == tensor);
            let weight_amax = weight_amax.filter(|_| !outputs_tensor)?;
            Some(Site { tensor: tensor.to_string(), channels: weight_amax.len(), weight_amax })
        })
        .collect()
}

/// The largest |w| of each row of a `[rows, cols]` weight.
fn row_amax(weight: &pb::TensorProto) -> Vec<f32> {
    let cols = weight.dims[1] as usize;
    float_values(weight).chunks(cols.max(1)).map(|row| row.iter().fold(0f32, |m, v| m.max(v.abs()))).collect()
}

/// The smoothing factors `s_j = a_j^α / w_j^(1−α)` of per-channel
/// activation ranges `activation_amax` and weight-row ranges
/// `weight_amax`; a channel that is zero on either side keeps `s_j = 1`.
pub fn factors(activation_amax: &[f32], weight_amax: &[f32], alpha: f32) -> Vec<f32> {
    activation_amax
        .iter()
        .zip(weight_amax)
        .map(|(&a, &w)| if a > 0.0 && w > 0.0 { a.powf(alpha) / w.powf(1.0 - alpha) } else { 1.0 })
        .collect()
}

/// `model` with each tensor named in `smoothing` divided by its factors
/// (in the LayerNorm's `γ` and `β`, or by a `Mul` after any other
/// producer, named `<tensor>/smoothed`) and each reader's weight rows
/// multiplied by them.
pub fn apply(model: &pb::ModelProto, smoothing: &BTreeMap<String, Vec<f32>>) -> pb::ModelProto {
    if smoothing.is_empty() {
        return model.clone();
    }
    let graph = model.graph.as_ref().expect("read_model checks the graph");
    let index = GraphIndex::new(graph);
    let position: HashMap<&str, usize> = graph.node.iter().enumerate().filter_map(|(i, n)| Some((n.output.first()?.as_str(), i))).collect();
    let mut g = graph.clone();
    // New nodes to insert after the node at an index.
    let mut after: HashMap<usize, pb::NodeProto> = HashMap::new();
    let mut scaled_weights: HashMap<String, Vec<f32>> = HashMap::new();
    for (tensor, s) in smoothing {
        let Some(&producer) = position.get(tensor.as_str()) else { continue };
        let inverse: Vec<f32> = s.iter().map(|s| 1.0 / s).collect();
        let layer_norm = is_layer_norm(&index, &graph.node[producer]);
        for reader in index.readers.get(tensor.as_str()).into_iter().flatten() {
            let Some(weight) = reader.input.get(1).and_then(|w| index.initializers.get(w.as_str())) else { continue };
            let values = float_values(weight);
            let rows = values.chunks(weight.dims[1] as usize).zip(s).flat_map(|(row, s)| row.iter().map(move |w| w * s)).collect();
            scaled_weights.insert(weight.name.clone(), rows);
            if !layer_norm {
                let reader = position[reader.output[0].as_str()];
                g.node[reader].input[0] = format!("{tensor}/smoothed");
            }
        }
        if layer_norm {
            // γ (in the Mul) and β (in the final Add) divided by s.
            let add = &graph.node[producer];
            let mul = add.input.iter().find_map(|i| index.producer(i, "Mul")).expect("a LayerNorm ends in Mul then Add");
            for node in [mul, add] {
                for (slot, input) in node.input.iter().enumerate() {
                    if let Some(values) = index.constant(input).filter(|v| v.len() == s.len()) {
                        let name = format!("{input}/smoothed");
                        let divided: Vec<f32> = values.iter().zip(&inverse).map(|(v, i)| v * i).collect();
                        g.initializer.push(float_tensor(&name, &[divided.len() as i64], &divided));
                        g.node[position[node.output[0].as_str()]].input[slot] = name;
                    }
                }
            }
        } else {
            let name = format!("{tensor}/inverse_smoothing");
            g.initializer.push(float_tensor(&name, &[inverse.len() as i64], &inverse));
            let smoothed = format!("{tensor}/smoothed");
            after.insert(producer, pb::NodeProto { input: vec![tensor.clone(), name], output: vec![smoothed.clone()], name: smoothed, op_type: "Mul".into(), ..Default::default() });
        }
    }
    for weight in &mut g.initializer {
        if let Some(values) = scaled_weights.remove(&weight.name) {
            weight.float_data.clear();
            weight.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        }
    }
    let old = std::mem::take(&mut g.node);
    for (i, node) in old.into_iter().enumerate() {
        g.node.push(node);
        g.node.extend(after.remove(&i));
    }
    crate::onnx::drop_unused(&mut g);
    pb::ModelProto { graph: Some(g), ..model.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::qdq;
    use crate::onnx::builder::Builder;
    use crate::onnx::layer_norm::tests::{layer_norm_graph, tokens};
    use ndarray::{array, Array3, ArrayD};
    use tract_onnx::prelude::*;

    /// `x [1, 4, 3]` → LayerNorm `ln` → `h = ln·w1 [3, 4]` → GELU `g` (as the
    /// backbone's export writes it) → `out = g·w2 [4, 2]`.
    fn mlp() -> pb::ModelProto {
        layer_norm_graph(
            |b: &mut Builder| {
                let w1 = b.initializer("w1", array![[1.0f32, -2.0, 0.3, 0.0], [0.5, 0.25, -1.0, 2.0], [-1.5, 3.0, 0.1, 0.7]].into_dyn().view());
                let w2 = b.initializer("w2", array![[0.3f32, 1.0], [1.1, -0.2], [0.0, 0.6], [-2.0, 0.5]].into_dyn().view());
                let root_two = b.initializer("root_two", ArrayD::from_elem(vec![], std::f32::consts::SQRT_2).view());
                let one = b.initializer("one", ArrayD::from_elem(vec![], 1.0f32).view());
                let half = b.initializer("half", ArrayD::from_elem(vec![], 0.5f32).view());
                b.node_named("MatMul", "h", &["ln", &w1], vec![]);
                b.node_named("Div", "h_scaled", &["h", &root_two], vec![]);
                b.node_named("Erf", "erf", &["h_scaled"], vec![]);
                b.node_named("Add", "erf_plus_one", &["erf", &one], vec![]);
                b.node_named("Mul", "h_erf", &["h", "erf_plus_one"], vec![]);
                b.node_named("Mul", "g", &["h_erf", &half], vec![]);
                b.node_named("MatMul", "out", &["g", &w2], vec![]);
            },
            &[("out", &[1, 4, 2])],
        )
    }

    fn run(model: &pb::ModelProto, x: &Array3<f32>) -> Vec<f32> {
        let bytes = prost::Message::encode_to_vec(model);
        let plan = tract_onnx::onnx().model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
        let outputs = plan.run(tvec!(Tensor::from(x.clone().into_dyn()).into_tvalue())).unwrap();
        outputs[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    fn initializer(model: &pb::ModelProto, name: &str) -> Vec<f32> {
        float_values(model.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == name).unwrap())
    }

    #[test]
    fn smoothing_keeps_the_products_and_moves_the_ranges_into_the_weights() {
        let model = mlp();
        let graph = model.graph.as_ref().unwrap();
        let sites = sites(graph, &qdq::plan(graph, &[]));
        let names: Vec<&str> = sites.iter().map(|s| s.tensor.as_str()).collect();
        assert_eq!(names, ["ln", "g"]);
        assert_eq!(sites[0].weight_amax, [2.0, 2.0, 3.0], "largest |w| per row of w1");
        assert_eq!(sites[1].weight_amax, [1.0, 1.1, 0.6, 2.0]);
        let smoothing: BTreeMap<String, Vec<f32>> = [("ln".to_string(), vec![4.0, 0.5, 2.0]), ("g".to_string(), vec![0.25, 2.0, 1.0, 8.0])].into_iter().collect();
        let smoothed = apply(&model, &smoothing);

        // The same outputs, up to float rounding.
        let (expected, got) = (run(&model, &tokens()), run(&smoothed, &tokens()));
        for (e, g) in expected.iter().zip(&got) {
            assert!((e - g).abs() < 1e-5 * e.abs().max(1.0), "{expected:?} vs {got:?}");
        }
        // Weight rows multiplied by s, γ and β divided by it.
        assert_eq!(initializer(&smoothed, "causeseg_w1")[..4], [4.0, -8.0, 1.2, 0.0]);
        assert_eq!(initializer(&smoothed, "causeseg_w2")[6..], [-16.0, 4.0]);
        assert_eq!(initializer(&smoothed, "causeseg_gamma/smoothed"), [0.125, 4.0, -0.5]);
        assert_eq!(initializer(&smoothed, "causeseg_beta/smoothed"), [0.025, -0.6, 0.35]);
        // The LayerNorm keeps its nodes; the GELU gets one Mul by 1 / s, which the second product reads.
        let ops = |m: &pb::ModelProto| m.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.clone()).collect::<Vec<_>>();
        let (before, after) = (ops(&model), ops(&smoothed));
        assert_eq!(after.len(), before.len() + 1, "{after:?}");
        let g = smoothed.graph.as_ref().unwrap();
        let mul = g.node.iter().find(|n| n.output[0] == "g/smoothed").unwrap();
        assert_eq!(mul.input, ["g", "g/inverse_smoothing"]);
        assert_eq!(initializer(&smoothed, "g/inverse_smoothing"), [4.0, 0.5, 1.0, 0.125]);
        assert_eq!(g.node.iter().find(|n| n.output[0] == "out").unwrap().input[0], "g/smoothed");
        // The planned activations of the smoothed graph are the new tensor and the LayerNorm's.
        assert_eq!(qdq::plan(g, &[]).activation_tensors(), ["ln", "g/smoothed"]);
    }

    #[test]
    fn an_excluded_product_is_no_site() {
        let model = mlp();
        let graph = model.graph.as_ref().unwrap();
        let names: Vec<String> = sites(graph, &qdq::plan(graph, &["out".into()])).into_iter().map(|s| s.tensor).collect();
        assert_eq!(names, ["ln"]);
        assert_eq!(apply(&model, &BTreeMap::new()), model);
    }

    #[test]
    fn factors_balance_activation_and_weight_ranges() {
        let s = factors(&[16.0, 1.0, 0.0], &[1.0, 4.0, 2.0], 0.5);
        assert_eq!(s, [4.0, 0.5, 1.0]);
        // After smoothing both sides of channel j have range sqrt(a_j * w_j).
        assert_eq!((16.0 / s[0], 1.0 * s[0]), (4.0, 4.0));
        assert_eq!((1.0 / s[1], 4.0 * s[1]), (2.0, 2.0));
        // α = 1 moves the whole activation range into the weights.
        assert_eq!(factors(&[8.0], &[3.0], 1.0), [8.0]);
    }
}
