//! LayerNorms folded into the weight products that read them (the form of
//! a float graph that tract runs fastest), or fused with the int8
//! quantization of their output (an int8 graph's).
//!
//! tract runs a decomposed LayerNorm (`ReduceMean`, `Sub`, `Pow`,
//! `ReduceMean`, `Add`, `Sqrt`, `Div`, `Mul`, `Add`, as the backbone's
//! export writes it) as several passes over the tokens; the broadcast
//! subtraction and the normalisation cost about 1 ms each per LayerNorm
//! at 448x336, a fifth of the fused graph's time. When every reader of a
//! LayerNorm is a product with a constant weight `W` (the attention's
//! query/key/value, the MLP's first layer), the centring and the affine
//! parameters `γ`, `β` move into the weight:
//!
//! ```text
//! LN(x)·W = r ⊙ (x·W') + β·W    W' = (I − 11ᵀ/D)·diag(γ)·W
//! r = 1 / sqrt(max(0, mean(x²) − mean(x)²) + ε)   (one value per token)
//! ```
//!
//! Each product then reads `x` itself and is rescaled per token (inside the
//! product: `onnx::linear`); what is left of the LayerNorm is `r`, one
//! [`LAYER_NORM_SCALE`] node, a single pass over the tokens in tract
//! (`engine::tract::float_ops`). The outputs are the same up to
//! float rounding (the variance is computed as `mean(x²) − mean(x)²`).
//! LayerNorms read by anything else (the backbone's last one, read by the
//! token slice) are left as they are. In an int8 integer graph the
//! products read the quantized LayerNorm output instead; there
//! [`fuse_quantize`] makes each LayerNorm and its quantization one node,
//! which tract runs as one op (`engine::tract::int8_ops`).

use std::collections::{HashMap, HashSet};

use ndarray::{Array1, Array2, Axis};

use super::builder::{float, import_causeseg_domain, replace_nodes, Builder};
use super::{drop_unused, float_values, pb, GraphIndex};

/// A decomposed LayerNorm over the last axis, as matched in a graph.
struct LayerNorm {
    /// Its input.
    x: String,
    gamma: Array1<f64>,
    beta: Array1<f64>,
    epsilon: f32,
}

/// `model` with every foldable LayerNorm folded into the products that
/// read it (see the module doc), and how many were folded.
pub fn fold_layer_norms(model: &pb::ModelProto) -> (pb::ModelProto, usize) {
    let mut model = model.clone();
    let graph = model.graph.as_mut().expect("read_model checks the graph");
    let (folds, mut products) = foldable(graph);
    let old_nodes = std::mem::take(&mut graph.node);
    let mut b = Builder { graph };
    let mut scales: HashMap<String, String> = HashMap::new();
    for node in old_nodes {
        if let Some(ln) = node.output.first().and_then(|out| folds.get(out)) {
            scales.insert(node.output[0].clone(), emit_scale(&mut b, ln, &node.output[0]));
            continue;
        }
        if let Some(scale) = scales.get(node.input.first().map_or("", String::as_str)).filter(|_| node.op_type == "MatMul") {
            let ln = &folds[&node.input[0]];
            let out = &node.output[0];
            let (weight, offset) = products.remove(out).expect("every reader of a folded LayerNorm has its folded weight");
            let weight = b.initializer(&format!("{out}/folded_weight"), weight.view().into_dyn());
            let offset = b.initializer(&format!("{out}/folded_offset"), offset.view().into_dyn());
            let product = b.node("MatMul", &format!("{out}/folded"), &[&ln.x, &weight], vec![]);
            let scaled = b.node("Mul", &format!("{out}/folded_scaled"), &[&product, scale], vec![]);
            b.node_named("Add", out, &[&scaled, &offset], vec![]);
            continue;
        }
        b.graph.node.push(node);
    }
    drop_unused(b.graph);
    if !folds.is_empty() {
        import_causeseg_domain(&mut model);
    }
    (model, folds.len())
}

/// Op type of a LayerNorm fused with the int8 quantization of its output
/// (domain `builder::CAUSESEG_DOMAIN`): inputs `x`, `gamma`, `beta`,
/// `y_scale`, attribute `epsilon`. Only tract reads it (`engine::tract`).
pub const LAYER_NORM_QUANTIZE: &str = "LayerNormQuantizeLinear";

/// `model` (an int8 integer form) with every LayerNorm read only by one
/// zero-point-0 int8 `QuantizeLinear` replaced, with that quantization, by
/// one [`LAYER_NORM_QUANTIZE`] node; and how many were.
pub fn fuse_quantize(model: &pb::ModelProto) -> (pb::ModelProto, usize) {
    let fusions = quantized(model.graph.as_ref().expect("read_model checks the graph"));
    if fusions.is_empty() {
        return (model.clone(), 0);
    }
    let fused = replace_nodes(model, &fusions, |b, out, (ln, scale)| {
        let gamma = b.initializer(&format!("{out}/gamma"), ln.gamma.mapv(|v| v as f32).view().into_dyn());
        let beta = b.initializer(&format!("{out}/beta"), ln.beta.mapv(|v| v as f32).view().into_dyn());
        b.causeseg_node(LAYER_NORM_QUANTIZE, out, &[&ln.x, &gamma, &beta, scale], vec![float("epsilon", ln.epsilon)]);
    });
    (fused, fusions.len())
}

/// The LayerNorms of `graph` whose only reader is an int8 `QuantizeLinear`
/// with a scalar scale and zero point 0, by that node's output: the
/// LayerNorm and the scale's name.
fn quantized(graph: &pb::GraphProto) -> HashMap<String, (LayerNorm, String)> {
    let index = GraphIndex::new(graph);
    let mut fusions = HashMap::new();
    for node in &graph.node {
        let Some(ln) = layer_norm(&index, node) else { continue };
        let out = node.output[0].as_str();
        let Some([q]) = index.readers.get(out).map(Vec::as_slice) else { continue };
        if let Some((_, scale)) = index.int8_quantize(q).filter(|(x, _)| *x == out && index.read_only_inside(graph, out, 1)) {
            fusions.insert(q.output[0].clone(), (ln, scale.to_string()));
        }
    }
    fusions
}

/// A product's folded weight and offset, by the product's output name.
type FoldedProducts = HashMap<String, (Array2<f32>, Array1<f32>)>;

/// The LayerNorms of `graph` that fold, by output name (every reader a
/// `MatMul` with the LayerNorm as left operand and a `[D, N]` float
/// initializer as right one, and not a graph output), and their readers'
/// folded weights.
fn foldable(graph: &pb::GraphProto) -> (HashMap<String, LayerNorm>, FoldedProducts) {
    let index = GraphIndex::new(graph);
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let (mut folds, mut products) = (HashMap::new(), HashMap::new());
    for node in &graph.node {
        let Some(ln) = layer_norm(&index, node) else { continue };
        let out = node.output[0].as_str();
        let is_weight = |name: &str| {
            index.initializers.get(name).is_some_and(|w| {
                w.dims.len() == 2 && w.dims[0] as usize == ln.gamma.len() && w.data_type == pb::tensor_proto::DataType::Float as i32
            })
        };
        let Some(readers) = index.readers.get(out) else { continue };
        let all_products = readers.iter().all(|r| r.op_type == "MatMul" && r.input[0] == out && r.input[1] != out && is_weight(&r.input[1]));
        if all_products && !outputs.contains(out) {
            for r in readers {
                products.insert(r.output[0].clone(), folded_weight(&ln, &weight_matrix(index.initializers[r.input[1].as_str()])));
            }
            folds.insert(out.to_string(), ln);
        }
    }
    (folds, products)
}

/// Whether `node` is the final `Add` of a decomposed LayerNorm over the
/// last axis (see `layer_norm`'s pattern).
pub fn is_layer_norm(index: &GraphIndex, node: &pb::NodeProto) -> bool {
    layer_norm(index, node).is_some()
}

/// `node` (an `Add`) as the end of a decomposed LayerNorm over the last
/// axis: `Add(Mul(Div(Sub(x, m), Sqrt(Add(ReduceMean(Pow(Sub(x, m), 2)), ε))), γ), β)`
/// with `m = ReduceMean(x)`; `γ`, `β` constant vectors, in either operand
/// order of the `Add` and the `Mul`.
fn layer_norm(index: &GraphIndex, node: &pb::NodeProto) -> Option<LayerNorm> {
    let (scaled, beta) = index.with_constant(node, "Add")?;
    let (normalised, gamma) = index.with_constant(index.producer(scaled, "Mul")?, "Mul")?;
    let div = index.producer(normalised, "Div")?;
    let centred = index.producer(&div.input[0], "Sub")?;
    last_axis_mean(index, &centred.input[1], &centred.input[0])?;
    let (variance, epsilon) = index.with_constant(index.producer(&index.producer(&div.input[1], "Sqrt")?.input[0], "Add")?, "Add")?;
    let square = index.producer(&last_axis_mean(index, variance, "")?.input[0], "Pow")?;
    let is_square_of_centred = square.input[0] == centred.output[0] && index.constant(&square.input[1]).is_some_and(|e| e == [2.0]);
    (is_square_of_centred && gamma.len() == beta.len() && epsilon.len() == 1).then(|| LayerNorm {
        x: centred.input[0].clone(),
        gamma: gamma.iter().map(|&v| v as f64).collect(),
        beta: beta.iter().map(|&v| v as f64).collect(),
        epsilon: epsilon[0],
    })
}

/// The `ReduceMean` node producing `tensor` over the last axis with kept
/// dimensions (of `input`, when not empty).
fn last_axis_mean<'a>(index: &GraphIndex<'a>, tensor: &str, input: &str) -> Option<&'a pb::NodeProto> {
    let mean = index.producer(tensor, "ReduceMean")?;
    let attribute = |name: &str| mean.attribute.iter().find(|a| a.name == name);
    let last_axis = attribute("axes").is_some_and(|a| a.ints == [-1]);
    let keeps_dims = attribute("keepdims").is_none_or(|a| a.i == 1);
    (last_axis && keeps_dims && mean.input.len() == 1 && (input.is_empty() || mean.input[0] == input)).then_some(mean)
}

/// Op type (domain `builder::CAUSESEG_DOMAIN`) of the per-token scale of
/// a folded LayerNorm, `r = 1 / sqrt(max(0, mean(x²) − mean(x)²) + ε)` over
/// the last axis: input `x`, attribute `epsilon`; output `x`'s shape with
/// a last axis of 1.
pub const LAYER_NORM_SCALE: &str = "LayerNormScale";

/// Emits the per-token scale `r` of `ln` (output `ln_output`); returns its
/// name.
fn emit_scale(b: &mut Builder, ln: &LayerNorm, ln_output: &str) -> String {
    b.causeseg_node(LAYER_NORM_SCALE, &format!("causeseg_{ln_output}/folded_scale"), &[&ln.x], vec![float("epsilon", ln.epsilon)])
}

/// A `[D, N]` float initializer as a matrix.
fn weight_matrix(tensor: &pb::TensorProto) -> Array2<f64> {
    let (rows, cols) = (tensor.dims[0] as usize, tensor.dims[1] as usize);
    Array2::from_shape_vec((rows, cols), float_values(tensor).into_iter().map(f64::from).collect()).expect("a [D, N] weight")
}

/// The folded weight `W' = (I − 11ᵀ/D)·diag(γ)·W` and offset `β·W` of a
/// product `LN(x)·W`.
fn folded_weight(ln: &LayerNorm, weight: &Array2<f64>) -> (Array2<f32>, Array1<f32>) {
    let scaled = weight * &ln.gamma.view().insert_axis(Axis(1));
    let centred = &scaled - &scaled.mean_axis(Axis(0)).expect("D > 0");
    (centred.mapv(|v| v as f32), ln.beta.dot(weight).mapv(|v| v as f32))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::onnx::builder::ints;
    use crate::onnx::{float_value_info, Dim};
    use ndarray::{array, Array3, ArrayD};
    use tract_onnx::prelude::*;

    /// A graph on `x [1, 4, 3]`: a LayerNorm decomposed as the DINOv2
    /// export writes it (ε from a Constant node; output `ln`), then what
    /// `readers` appends; `outputs` are the graph's float outputs and shapes.
    pub(crate) fn layer_norm_graph(readers: impl FnOnce(&mut Builder), outputs: &[(&str, &[i64])]) -> pb::ModelProto {
        let epsilon = pb::AttributeProto {
            name: "value".into(),
            t: Some(pb::TensorProto { data_type: pb::tensor_proto::DataType::Float as i32, float_data: vec![1e-6], ..Default::default() }),
            r#type: pb::attribute_proto::AttributeType::Tensor as i32,
            ..Default::default()
        };
        let last = || vec![ints("axes", &[-1])];
        let mut g = pb::GraphProto::default();
        let mut b = Builder { graph: &mut g };
        let two = b.initializer("two", ArrayD::from_elem(vec![], 2.0).view());
        let gamma = b.initializer("gamma", array![0.5f32, 2.0, -1.0].into_dyn().view());
        let beta = b.initializer("beta", array![0.1f32, -0.3, 0.7].into_dyn().view());
        b.node_named("ReduceMean", "mean", &["x"], last());
        b.node_named("Sub", "centred", &["x", "mean"], vec![]);
        b.node_named("Pow", "square", &["centred", &two], vec![]);
        b.node_named("ReduceMean", "variance", &["square"], last());
        b.node_named("Constant", "epsilon", &[], vec![epsilon]);
        b.node_named("Add", "variance_epsilon", &["variance", "epsilon"], vec![]);
        b.node_named("Sqrt", "deviation", &["variance_epsilon"], vec![]);
        b.node_named("Div", "normalised", &["centred", "deviation"], vec![]);
        b.node_named("Mul", "scaled", &["normalised", &gamma], vec![]);
        b.node_named("Add", "ln", &[&beta, "scaled"], vec![]);
        readers(&mut b);
        let info = |name: &str, dims: &[i64]| float_value_info(name, &dims.iter().map(|&d| Dim::Value(d)).collect::<Vec<_>>());
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
            graph: Some(pb::GraphProto { input: vec![info("x", &[1, 4, 3])], output: outputs.iter().map(|(name, dims)| info(name, dims)).collect(), ..g }),
            ..Default::default()
        }
    }

    /// The LayerNorm → two products with weights and a bias; `ln` also a
    /// graph output when `ln_is_output`.
    fn graph(ln_is_output: bool) -> pb::ModelProto {
        let products = |b: &mut Builder| {
            let w1 = b.initializer("w1", array![[1.0f32, -2.0], [0.5, 0.25], [-1.5, 3.0]].into_dyn().view());
            let bias1 = b.initializer("bias1", array![0.2f32, -0.4].into_dyn().view());
            let w2 = b.initializer("w2", array![[0.3f32, 1.0, -0.7, 0.0, 2.0], [1.1, -0.2, 0.4, 1.0, -1.0], [0.0, 0.6, 0.9, -2.0, 0.5]].into_dyn().view());
            b.node_named("MatMul", "product1", &["ln", &w1], vec![]);
            b.node_named("Add", "out1", &[&bias1, "product1"], vec![]);
            b.node_named("MatMul", "out2", &["ln", &w2], vec![]);
        };
        let mut outputs: Vec<(&str, &[i64])> = vec![("out1", &[1, 4, 2]), ("out2", &[1, 4, 5])];
        if ln_is_output {
            outputs.push(("ln", &[1, 4, 3]));
        }
        layer_norm_graph(products, &outputs)
    }

    fn run(model: &pb::ModelProto, x: &Array3<f32>) -> Vec<Vec<f32>> {
        let bytes = prost::Message::encode_to_vec(model);
        let mut onnx = tract_onnx::onnx();
        crate::engine::tract::register_ops(&mut onnx);
        let plan = onnx.model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
        let outputs = plan.run(tvec!(Tensor::from(x.clone().into_dyn()).into_tvalue())).unwrap();
        outputs.iter().map(|o| o.to_plain_array_view::<f32>().unwrap().iter().copied().collect()).collect()
    }

    /// Tokens with a large mean against their spread, as a residual stream
    /// has them, and one constant token (variance 0, only ε left): the
    /// cases where `mean(x²) − mean(x)²` and the centred weights lose
    /// digits (here up to 8e-4 of a value of 1.4).
    pub(crate) fn tokens() -> Array3<f32> {
        array![[[3.0, -1.0, 0.5], [40.0, 41.5, 39.0], [-2.0, 7.0, 1.0], [5.0, 5.0, 5.0]]]
    }

    #[test]
    fn a_layer_norm_read_by_products_folds_into_their_weights() {
        let model = graph(false);
        let (folded, count) = fold_layer_norms(&model);
        assert_eq!(count, 1);
        let ops: Vec<&str> = folded.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        for gone in ["Pow", "Div", "Constant"] {
            assert!(!ops.contains(&gone), "{gone} left in {ops:?}");
        }
        assert_eq!(ops.iter().filter(|&&op| op == "MatMul").count(), 2, "{ops:?}");
        let (expected, got) = (run(&model, &tokens()), run(&folded, &tokens()));
        for (e, g) in expected.iter().flatten().zip(got.iter().flatten()) {
            assert!((e - g).abs() < 1e-3 * e.abs().max(1.0), "{expected:?} vs {got:?}");
        }
    }

    #[test]
    fn a_layer_norm_read_by_anything_else_stays() {
        let model = graph(true);
        let (folded, count) = fold_layer_norms(&model);
        assert_eq!(count, 0);
        assert_eq!(folded, model);
    }
}
