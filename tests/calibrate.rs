//! INT8 calibration: the QDQ graph against fake-quant arithmetic computed
//! here, TensorRT's structural rules on the default model's QDQ graph, an
//! int8 model directory end to end, and every bad input as one clean error
//! with nothing half-written.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use causeseg::calibrate::{integer, qdq, smooth, ActivationScale, CalibrationTable, Method, Settings};
use causeseg::onnx::builder::{int, ints, Builder};
use causeseg::onnx::{float_value_info, pb, Dim};
use causeseg::engine::tract::INT8_FORM_ENV;
use causeseg::model::fused::TRACT_FORM_VERSION;
use common::{assert_clean_error, causeseg, causeseg_with_env};
use ndarray::{Array, Array2, Array3, ArrayD, Axis};
use tract_onnx::prelude::*;

fn initializer(name: &str, values: &Array2<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: values.shape().iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// Deterministic values in [-scale, scale).
fn values(shape: &[usize], seed: u32, scale: f32) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) % 10007) as f32 / 10007.0 * 2.0 * scale - scale);
    Array::from_shape_vec(shape, data.collect()).unwrap()
}

/// `x [1,4,8]`: `y = MatMul(Softmax(MatMul(x, w1)), w2)` and an attention
/// product of two activations, `a = MatMul(x, Transpose(x))`.
fn toy_graph(w1: &Array2<f32>, w2: &Array2<f32>) -> pb::ModelProto {
    let mut graph = pb::GraphProto {
        name: "toy".into(),
        initializer: vec![initializer("w1", w1), initializer("w2", w2)],
        input: vec![float_value_info("x", &[Dim::Value(1), Dim::Value(4), Dim::Value(8)])],
        output: vec![
            float_value_info("y", &[Dim::Value(1), Dim::Value(4), Dim::Value(5)]),
            float_value_info("a", &[Dim::Value(1), Dim::Value(4), Dim::Value(4)]),
        ],
        ..Default::default()
    };
    let mut b = Builder { graph: &mut graph };
    b.node_named("MatMul", "h", &["x", "w1"], vec![]);
    b.node_named("Softmax", "s", &["h"], vec![int("axis", -1)]);
    b.node_named("MatMul", "y", &["s", "w2"], vec![]);
    b.node_named("Transpose", "x_t", &["x"], vec![ints("perm", &[0, 2, 1])]);
    b.node_named("MatMul", "a", &["x", "x_t"], vec![]);
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
        graph: Some(graph),
        ..Default::default()
    }
}

fn run_tract(model: &pb::ModelProto, x: &Array3<f32>) -> Vec<ArrayD<f32>> {
    let bytes = prost::Message::encode_to_vec(model);
    let plan = tract_onnx::onnx().model_for_read(&mut bytes.as_slice()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
    let out = plan.run(tvec!(Tensor::from(x.clone().into_dyn()).into_tvalue())).unwrap();
    out.iter().map(|o| o.to_plain_array_view::<f32>().unwrap().to_owned()).collect()
}

fn table(scales: &[(&str, f32)], exclude: Vec<String>) -> CalibrationTable {
    CalibrationTable {
        format_version: causeseg::calibrate::table::TABLE_VERSION,
        float_graph_sha256: "test".into(),
        settings: Settings { method: Method::MinMax, percentile: 99.99, exclude, images: 1, smooth: None },
        activations: scales.iter().map(|(n, amax)| (n.to_string(), ActivationScale::from_amax(*amax))).collect(),
        smoothing: BTreeMap::new(),
    }
}

/// Per-tensor int8 fake quantization, as QuantizeLinear→DequantizeLinear
/// define it: round half to even, saturate to -128..127.
fn fake_quant(x: &ArrayD<f32>, scale: f32) -> ArrayD<f32> {
    x.mapv(|v| (v / scale).round_ties_even().clamp(-128.0, 127.0) * scale)
}

/// Per-column narrow-range weight fake quantization (MatMul's output channels).
fn fake_quant_columns(w: &Array2<f32>) -> Array2<f32> {
    let mut out = w.clone();
    for mut column in out.columns_mut() {
        let scale = column.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        column.mapv_inplace(|v| (v / scale).round_ties_even().clamp(-127.0, 127.0) * scale);
    }
    out
}

fn softmax_rows(x: &Array2<f32>) -> Array2<f32> {
    let mut out = x.clone();
    for mut row in out.rows_mut() {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    out
}

fn assert_close(actual: &ArrayD<f32>, expected: &ArrayD<f32>, what: &str) {
    let worst = actual.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "{what}: max difference {worst}\n{actual}\nvs\n{expected}");
}

/// The toy graph's weights `w1 [8, 6]` and `w2 [6, 5]`, an input `x [1,
/// 4, 8]` of values up to 2.0, and the graph.
fn toy_case() -> (Array2<f32>, Array2<f32>, Array3<f32>, pb::ModelProto) {
    let w1 = values(&[8, 6], 1, 1.5).into_dimensionality().unwrap();
    let w2 = values(&[6, 5], 2, 0.7).into_dimensionality().unwrap();
    let x = values(&[1, 4, 8], 3, 2.0).into_dimensionality().unwrap();
    let model = toy_graph(&w1, &w2);
    (w1, w2, x, model)
}

#[test]
fn qdq_graph_computes_fake_quant_arithmetic() {
    let (w1, w2, x, model) = toy_case();

    let plan = qdq::plan(model.graph.as_ref().unwrap(), &[]);
    assert_eq!(plan.activation_tensors(), ["x", "x_t"]);
    assert_eq!(plan.skipped.len(), 1, "{:?}", plan.skipped);
    assert!(plan.skipped[0].1.contains("Softmax"), "{:?}", plan.skipped);

    // amax below max|x| (2.0), so clipping is exercised too.
    let (amax_x, amax_xt) = (1.6f32, 1.9f32);
    let quantized = qdq::quantize(&model, &table(&[("x", amax_x), ("x_t", amax_xt)], vec![])).unwrap();
    let out = run_tract(&quantized, &x);

    let x2: Array2<f32> = x.index_axis(Axis(0), 0).to_owned();
    let xq = fake_quant(&x2.clone().into_dyn(), amax_x / 127.0).into_dimensionality::<ndarray::Ix2>().unwrap();
    let xtq = fake_quant(&x2.t().to_owned().into_dyn(), amax_xt / 127.0).into_dimensionality::<ndarray::Ix2>().unwrap();
    let y = softmax_rows(&xq.dot(&fake_quant_columns(&w1))).dot(&w2);
    let a = xq.dot(&xtq);
    assert_close(&out[0], &y.insert_axis(Axis(0)).into_dyn(), "y");
    assert_close(&out[1], &a.insert_axis(Axis(0)).into_dyn(), "a");

    // Quantization did change the result (the comparison above is not vacuous).
    let float = run_tract(&model, &x);
    let change = float[1].iter().zip(&out[1]).map(|(f, q)| (f - q).abs()).fold(0f32, f32::max);
    assert!(change > 1e-3, "int8 output equals float: {change}");
}

/// The integer form: the weight product x·w1 becomes MatMulInteger on the
/// QDQ graph's own int8 tensors and gives the same numbers as the QDQ
/// graph (and as fake-quant arithmetic); the product of two activations
/// gets its float inputs back, and no Q/DQ pair is left.
#[test]
fn the_integer_form_agrees_with_the_qdq_form() {
    let (w1, w2, x, model) = toy_case();
    let amax_x = 1.6f32;
    let quantized = qdq::quantize(&model, &table(&[("x", amax_x), ("x_t", 1.9)], vec![])).unwrap();
    let (integer, products) = integer::integer_form(&quantized);
    assert_eq!(products, 1, "only x·w1 is a weight product behind Q/DQ");
    let ops: Vec<&str> = integer.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops.iter().filter(|&&op| op == "MatMulInteger").count(), 1, "{ops:?}");
    assert!(!ops.contains(&"DequantizeLinear"), "{ops:?}");
    assert_eq!(ops.iter().filter(|&&op| op == "QuantizeLinear").count(), 1, "only x is quantized: {ops:?}");

    let qdq_out = run_tract(&quantized, &x);
    let out = run_tract(&integer, &x);
    assert_close(&out[0], &qdq_out[0], "y, integer form vs QDQ");
    let x2: Array2<f32> = x.index_axis(Axis(0), 0).to_owned();
    let xq = fake_quant(&x2.clone().into_dyn(), amax_x / 127.0).into_dimensionality::<ndarray::Ix2>().unwrap();
    let y = softmax_rows(&xq.dot(&fake_quant_columns(&w1))).dot(&w2);
    assert_close(&out[0], &y.insert_axis(Axis(0)).into_dyn(), "y, integer form vs fake quantization");
    let a = x2.dot(&x2.t());
    assert_close(&out[1], &a.insert_axis(Axis(0)).into_dyn(), "a, the activation product, in float");
}

/// The dequantized form (tract's form of an int8 model on CPUs without
/// int8 dot products): no Q/DQ left, no integer product, and the int8
/// weights in float: x·fq(w1) with x itself unquantized.
#[test]
fn the_dequantized_form_is_float_with_the_int8_weights() {
    let (w1, w2, x, model) = toy_case();
    let quantized = qdq::quantize(&model, &table(&[("x", 1.6), ("x_t", 1.9)], vec![])).unwrap();
    let dequantized = integer::dequantized_form(&quantized);
    let ops: Vec<&str> = dequantized.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(ops.iter().all(|op| !["QuantizeLinear", "DequantizeLinear", "MatMulInteger"].contains(op)), "{ops:?}");
    let out = run_tract(&dequantized, &x);
    let x2: Array2<f32> = x.index_axis(Axis(0), 0).to_owned();
    let y = softmax_rows(&x2.dot(&fake_quant_columns(&w1))).dot(&w2);
    assert_close(&out[0], &y.insert_axis(Axis(0)).into_dyn(), "y, dequantized form vs x·fq(w1)");
    // The weights are the int8 ones (not the float model's).
    let float = run_tract(&model, &x);
    let change = float[0].iter().zip(&out[0]).map(|(f, q)| (f - q).abs()).fold(0f32, f32::max);
    assert!(change > 1e-6, "dequantized output equals float: {change}");
}

#[test]
fn excluded_nodes_stay_float_and_excluding_all_is_an_error() {
    let w = values(&[8, 6], 1, 1.0).into_dimensionality().unwrap();
    let model = toy_graph(&w, &values(&[6, 5], 2, 1.0).into_dimensionality().unwrap());
    let quantized = qdq::quantize(&model, &table(&[("x", 1.0), ("x_t", 1.0)], vec!["a".into()])).unwrap();
    let g = quantized.graph.unwrap();
    let a = g.node.iter().find(|n| n.output[0] == "a").unwrap();
    assert_eq!(a.input, ["x", "x_t"], "excluded by its output name");
    let h = g.node.iter().find(|n| n.output[0] == "h").unwrap();
    assert_eq!(h.input, ["x/dq", "w1/dq"]);
    let err = qdq::quantize(&model, &table(&[("x", 1.0)], vec!["*".into()])).unwrap_err().to_string();
    assert!(err.starts_with("nothing to quantize"), "{err}");
}

/// TensorRT's explicit-quantization rules and the ones tract needs.
fn check_qdq_rules(model: &pb::ModelProto) -> usize {
    let g = model.graph.as_ref().unwrap();
    let causeseg::onnx::GraphIndex { initializers: init, producers: producer, readers: consumers } = causeseg::onnx::GraphIndex::new(g);
    let int8 = pb::tensor_proto::DataType::Int8 as i32;
    let mut weights = 0;
    for n in g.node.iter().filter(|n| n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear") {
        let zero = init[n.input[2].as_str()];
        assert_eq!(zero.data_type, int8, "{}: int8 zero point", n.name);
        assert!(zero.raw_data.iter().all(|&b| b == 0), "{}: zero point not 0", n.name);
        let scale = init[n.input[1].as_str()];
        let axis = n.attribute.iter().find(|a| a.name == "axis").map(|a| a.i);
        if n.op_type == "QuantizeLinear" {
            assert!(scale.dims.is_empty() && axis.is_none(), "{}: activations are per tensor", n.name);
            let from = producer.get(n.input[0].as_str()).map(|p| p.op_type.as_str());
            assert_ne!(from, Some("Softmax"), "{}: Q/DQ after a Softmax", n.name);
        } else if let Some(w) = init.get(n.input[0].as_str()) {
            weights += 1;
            let axis = axis.unwrap_or_else(|| panic!("{}: weight DequantizeLinear without axis", n.name)) as usize;
            assert_eq!(scale.dims, [w.dims[axis]], "{}: one scale per output channel", n.name);
            assert_eq!(w.data_type, int8);
            assert!(w.raw_data.iter().all(|&b| b as i8 != -128), "{}: weights are narrow range -127..127", n.name);
        }
        if n.op_type == "DequantizeLinear" {
            for c in consumers.get(n.output[0].as_str()).into_iter().flatten() {
                assert!(qdq::QUANTIZED_OPS.contains(&c.op_type.as_str()), "{}: DequantizeLinear feeds a {}", n.name, c.op_type);
            }
        }
    }
    for n in g.node.iter().filter(|n| qdq::QUANTIZED_OPS.contains(&n.op_type.as_str())) {
        let from_dq = n.input.iter().take(2).filter(|i| producer.get(i.as_str()).is_some_and(|p| p.op_type == "DequantizeLinear")).count();
        assert!(from_dq == 0 || from_dq == 2, "{}: only {from_dq} of 2 inputs quantized", n.name);
    }
    weights
}

#[test]
fn the_toy_qdq_graph_follows_the_rules() {
    let w1 = values(&[8, 6], 1, 1.5).into_dimensionality().unwrap();
    let model = toy_graph(&w1, &values(&[6, 5], 2, 1.0).into_dimensionality().unwrap());
    let quantized = qdq::quantize(&model, &table(&[("x", 1.0), ("x_t", 1.0)], vec![])).unwrap();
    assert_eq!(check_qdq_rules(&quantized), 1);
    let names: Vec<&str> = quantized.graph.as_ref().unwrap().initializer.iter().map(|t| t.name.as_str()).collect();
    assert!(!names.contains(&"w1") && names.contains(&"w2"), "the float copy of a quantized weight is dropped: {names:?}");
}

#[test]
fn the_default_model_qdq_graph_follows_the_rules() {
    let Some(backbone) = common::backbone() else { return };
    let model = causeseg::Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-cause")).unwrap();
    let float = causeseg::model::fused::float_graph(&model, &backbone).unwrap();
    let plan = qdq::plan(float.graph.as_ref().unwrap(), &[]);
    let scales: BTreeMap<String, ActivationScale> = plan.activation_tensors().into_iter().map(|t| (t, ActivationScale::from_amax(4.0))).collect();
    let table = CalibrationTable { activations: scales, ..table(&[], vec![]) };
    let quantized = qdq::quantize(&float, &table).unwrap();
    let weights = check_qdq_rules(&quantized);
    // ViT-S/14: patch embedding, 12 x (q, k, v, out, fc1, fc2), plus the head's.
    assert!(weights >= 73, "{weights} quantized weights");
    let g = quantized.graph.as_ref().unwrap();
    for n in g.node.iter().filter(|n| matches!(n.op_type.as_str(), "Softmax" | "LayerNormalization" | "Erf" | "ReduceMean")) {
        for i in &n.input {
            assert!(!i.ends_with("/dq"), "{} ({}) reads a dequantized tensor", n.name, n.op_type);
        }
    }
    // Its integer form: every quantized MatMul weight runs as MatMulInteger
    // (all but the patch Conv's).
    let (integer, products) = integer::integer_form(&quantized);
    assert_eq!(products, weights - 1, "every MatMul weight product is rewritten");
    assert!(!integer.graph.as_ref().unwrap().node.iter().any(|n| n.op_type == "DequantizeLinear"));
    // tract's form: both LayerNorms of each of the 12 blocks run fused with
    // the quantization of their output,
    let (integer, fused) = causeseg::onnx::layer_norm::fuse_quantize(&integer);
    assert_eq!(fused, 24);
    // and each block's MLP rescale + GELU with the quantization of its output.
    let (_, gelus) = causeseg::onnx::gelu::fuse_gelu_quantize(&integer);
    assert_eq!(gelus, 12);

    // Smoothed (SmoothQuant): both LayerNorms and the GELU of each block.
    let sites = smooth::sites(float.graph.as_ref().unwrap(), &plan);
    assert_eq!(sites.len(), 36, "{:?}", sites.iter().map(|s| &s.tensor).collect::<Vec<_>>());
    let smoothing: BTreeMap<String, Vec<f32>> = sites.iter().map(|s| (s.tensor.clone(), vec![1.5; s.channels])).collect();
    let smoothed_plan = qdq::plan(smooth::apply(&float, &smoothing).graph.as_ref().unwrap(), &[]);
    assert_eq!(smoothed_plan.nodes.len(), plan.nodes.len(), "smoothing quantizes the same products");
    let scales = smoothed_plan.activation_tensors().into_iter().map(|t| (t, ActivationScale::from_amax(4.0))).collect();
    let smoothed_table = CalibrationTable { activations: scales, smoothing, ..table.clone() };
    let smoothed = qdq::quantize(&float, &smoothed_table).unwrap();
    assert_eq!(check_qdq_rules(&smoothed), weights);
    let (integer, products) = integer::integer_form(&smoothed);
    assert_eq!(products, weights - 1);
    // The LayerNorms still fuse with their quantization, and each GELU
    // with its smoothing Mul and quantization.
    let (integer, fused) = causeseg::onnx::layer_norm::fuse_quantize(&integer);
    assert_eq!(fused, 24);
    assert_eq!(causeseg::onnx::gelu::fuse_gelu_quantize(&integer).1, 12);
}

fn write_garbage_images(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for name in names {
        std::fs::write(dir.join(name), b"not an image at all").unwrap();
    }
}

/// Nothing named like `out` (finished or partial) is left in its parent.
fn assert_nothing_written(out: &Path) {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(out.parent().unwrap()) else { return };
    let left: Vec<String> = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains(&name)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn calibrate_args<'a>(model: &'a str, images: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["calibrate", "--model", model, "--images", images, "--out", out, "--calibration-images", "1", "--report-images", "0"]
}

fn default_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-cause").display().to_string()
}

#[test]
fn no_images_is_one_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (images, out) = (dir.path().join("empty"), dir.path().join("int8"));
    std::fs::create_dir_all(&images).unwrap();
    let output = causeseg(&calibrate_args(&default_model(), images.to_str().unwrap(), out.to_str().unwrap()));
    assert_clean_error(&output, "no JPEG or PNG images to calibrate on");
    assert_nothing_written(&out);
}

#[test]
fn a_smoothing_strength_outside_0_1_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8");
    let (images, model) = (common::sample_images(), default_model());
    let mut args = calibrate_args(&model, images.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--smooth", "1.5"]);
    assert_clean_error(&causeseg(&args), "--smooth must be in [0, 1] (0: off), got 1.5");
    assert_nothing_written(&out);
}

#[test]
fn undecodable_images_are_skipped_and_none_left_is_an_error() {
    if common::backbone().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (images, out) = (dir.path().join("bad"), dir.path().join("int8"));
    write_garbage_images(&images, &["a.jpg", "b.png"]);
    let output = causeseg(&calibrate_args(&default_model(), images.to_str().unwrap(), out.to_str().unwrap()));
    assert_clean_error(&output, "none of the 2 images could be decoded");
    assert_nothing_written(&out);
}

#[test]
fn a_model_with_nothing_to_quantize_is_an_error() {
    if common::backbone().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8");
    let (images, model) = (common::sample_images(), default_model());
    let mut args = calibrate_args(&model, images.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--exclude", "*"]);
    assert_clean_error(&causeseg(&args), "nothing to quantize");
    assert_nothing_written(&out);
}

#[test]
fn an_unwritable_output_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("int8");
    let images = common::sample_images();
    let output = causeseg(&calibrate_args(&default_model(), images.to_str().unwrap(), out.to_str().unwrap()));
    assert_clean_error(&output, "cannot write the int8 model to");
}

/// Calibrates the default model on one sample image (and one that does not
/// decode): the int8 directory runs `segment` and exports its QDQ graph; a
/// table that belongs to another model is refused.
#[test]
fn an_int8_model_directory_end_to_end() {
    let Some(_) = common::backbone() else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    write_garbage_images(&images, &["0-broken.jpg"]);
    let sample = std::fs::read_dir(common::sample_images()).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png")).unwrap();
    std::fs::copy(&sample, images.join(format!("1.{}", sample.extension().unwrap().to_string_lossy()))).unwrap();
    let out = dir.path().join("int8");
    let output = causeseg(&calibrate_args(&default_model(), images.to_str().unwrap(), out.to_str().unwrap()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest = std::fs::read_to_string(out.join("model.toml")).unwrap();
    assert!(manifest.contains("precision = \"int8\""), "{manifest}");
    let table: CalibrationTable = serde_json::from_str(&std::fs::read_to_string(out.join("calibration.json")).unwrap()).unwrap();
    assert_eq!(table.settings.images, 1, "the broken image is skipped");
    assert_eq!(table.settings.smooth, Some(0.5), "SmoothQuant is on by default");
    assert_eq!(table.smoothing.len(), 36, "the two LayerNorms and the GELU of each of the 12 blocks are smoothed");
    assert!(!out.join("calibration.cache").exists(), "no implicit-quantization cache for a smoothed table");
    assert!(!std::fs::read_dir(&out).unwrap().any(|e| e.unwrap().path().extension().is_some_and(|x| x == "onnx")), "no weights in the model directory");

    let onnx = dir.path().join("int8.onnx");
    let exported = causeseg(&["models", "export", "--model", out.to_str().unwrap(), "--out", onnx.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let graph = causeseg::onnx::read_model(&onnx).unwrap();
    assert!(check_qdq_rules(&graph) > 0);

    let labels = dir.path().join("labels");
    let seg = causeseg(&["segment", "--engine", "tract", "--model", out.to_str().unwrap(), "--out", labels.to_str().unwrap(), sample.to_str().unwrap()]);
    assert!(seg.status.success(), "{}", String::from_utf8_lossy(&seg.stderr));
    let int8_model = causeseg::Model::load(&out).unwrap();
    let backbone = common::backbone().unwrap();
    let spec = causeseg::model::fused::engine_spec(&int8_model, &backbone, &common::cache_dir()).unwrap();
    let tract_graph = spec.tract_graph.expect("tract runs its own form");
    let ops: Vec<String> = causeseg::onnx::read_model(&tract_graph).unwrap().graph.unwrap().node.into_iter().map(|n| n.op_type).collect();
    if causeseg::engine::tract::has_int8_dot_product() {
        assert!(ops.iter().any(|op| op == "MatMulInteger"));
        assert!(ops.iter().any(|op| op == causeseg::onnx::layer_norm::LAYER_NORM_QUANTIZE));
        assert!(ops.iter().any(|op| op == causeseg::onnx::gelu::DEQUANTIZE_GELU_QUANTIZE));
    } else {
        // No int8 dot products on this CPU: the weights run dequantized.
        assert!(tract_graph.to_string_lossy().ends_with(".dequantized.onnx"), "{}", tract_graph.display());
        assert!(ops.iter().all(|op| !["MatMulInteger", "QuantizeLinear", "DequantizeLinear"].contains(&op.as_str())), "{ops:?}");
        assert!(ops.iter().any(|op| op == causeseg::onnx::linear::LINEAR));
    }
    // Either form on any CPU when CAUSESEG_TRACT_INT8 asks for it (the
    // integer form slowly without int8 dot products): the integer products
    // give the labels of the dequantized weights on nearly every pixel.
    let out_dir = out.to_str().unwrap();
    let stem = sample.file_stem().unwrap().to_string_lossy();
    let form_file = |form: &str| spec.path.with_extension(format!("tract{TRACT_FORM_VERSION}{form}.onnx"));
    let (integer_file, dequantized_file) = (form_file(""), form_file(".dequantized"));
    for file in [&integer_file, &dequantized_file] {
        let _ = std::fs::remove_file(file);
    }
    let labels_in = |form: &str| {
        let out = dir.path().join(form);
        let seg = causeseg_with_env(&["segment", "--engine", "tract", "--model", out_dir, "--out", out.to_str().unwrap(), sample.to_str().unwrap()], &[(INT8_FORM_ENV, form)]);
        assert!(seg.status.success(), "{form}: {}", String::from_utf8_lossy(&seg.stderr));
        image::open(out.join(format!("{stem}_labels.png"))).unwrap().into_luma8()
    };
    let (integer, dequantized) = (labels_in("integer"), labels_in("dequantized"));
    let same = integer.pixels().zip(dequantized.pixels()).filter(|(a, b)| a == b).count() as f64 / integer.len() as f64;
    assert!(same > 0.9, "integer and dequantized forms agree on {:.1} % of pixels", same * 100.0);
    let ops_of = |file: &Path| causeseg::onnx::read_model(file).unwrap().graph.unwrap().node.into_iter().map(|n| n.op_type).collect::<Vec<_>>();
    assert!(ops_of(&integer_file).iter().any(|op| op == "MatMulInteger"), "the integer form built");
    assert!(!ops_of(&dequantized_file).iter().any(|op| op == "MatMulInteger"), "the dequantized form built");
    let unknown = causeseg_with_env(&["segment", "--engine", "tract", "--model", out_dir, "--out", labels.to_str().unwrap(), sample.to_str().unwrap()], &[(INT8_FORM_ENV, "fast")]);
    assert_clean_error(&unknown, "CAUSESEG_TRACT_INT8=fast: expected integer, dequantized or auto");

    // bench compares the float model and its int8 calibration side by side.
    let models = format!("{},{}", default_model(), out.display());
    let bench = causeseg(&["bench", "--model", &models, "--engine", "tract", "--frames", "1", "--warmup", "0", "--size", "224x224", "--json"]);
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("one JSON object");
    let compared: Vec<&str> = report["engines"].as_array().unwrap().iter().map(|e| e["model"].as_str().unwrap()).collect();
    assert_eq!(compared, ["camvid-cause float", "camvid-cause int8"]);

    // Without SmoothQuant: no factors, and TensorRT's legacy cache beside the table.
    let plain = dir.path().join("int8-plain");
    let model = default_model();
    let mut args = calibrate_args(&model, images.to_str().unwrap(), plain.to_str().unwrap());
    args.extend(["--smooth", "0"]);
    let output = causeseg(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table: CalibrationTable = serde_json::from_str(&std::fs::read_to_string(plain.join("calibration.json")).unwrap()).unwrap();
    assert!(table.smoothing.is_empty() && table.settings.smooth.is_none());
    let cache = std::fs::read_to_string(plain.join("calibration.cache")).unwrap();
    assert!(cache.starts_with("TRT-8601-EntropyCalibration2\n") && cache.lines().count() == table.activations.len() + 1, "{cache}");

    // Another model's concepts: the table no longer matches.
    let centroids = out.join("centroids.npy");
    let mut bytes = std::fs::read(&centroids).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&centroids, bytes).unwrap();
    let seg = causeseg(&["segment", "--engine", "tract", "--model", out.to_str().unwrap(), "--out", labels.to_str().unwrap(), sample.to_str().unwrap()]);
    assert_clean_error(&seg, "calibration table of another model");
}
