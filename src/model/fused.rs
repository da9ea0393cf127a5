//! The fused inference graph of a model directory: backbone → head →
//! concept scores → argmax as one ONNX file, so TensorRT (or any ONNX
//! runtime) runs a whole frame as one engine and tract and ONNX Runtime
//! execute exactly the same maths. Built from the cached backbone the first
//! time a model runs and kept in the cache.
//!
//! Appended after the backbone's patch tokens `[N, T, D]`:
//! - the head ([`Head::emit`]), when the model has one;
//! - `concept_scores = features · unit(concepts)ᵀ`, `[N, T, K]`: the
//!   per-patch logits (dot products with the L2-normalised concept vectors;
//!   their argmax is the cosine argmax);
//! - `concept_ids = ArgMax(concept_scores, axis -1)`, int64 `[N, T]`.
//!
//! Pixel-level labels come from upsampling `concept_scores` bilinearly and
//! taking the argmax per pixel (see `pipeline::postprocess`).

use std::path::{Path, PathBuf};

use ndarray::Array2;
use sha2::{Digest, Sha256};

use super::{Model, ModelError};
use crate::calibrate::{integer, qdq, TABLE_FILE};
use crate::engine::{tract, EngineSpec};
use crate::head::Head;
use crate::onnx::builder::{int, Builder};
use crate::onnx::{self, attention, float_value_info, gelu, int64_value_info, layer_norm, linear, pb, Dim, OnnxError};

/// Version of the fused graph's layout; part of the cache key of built
/// graphs, so a change here never reuses a graph built by older code.
pub const LAYOUT_VERSION: u32 = 1;
/// Version of tract's form of the fused graph ([`tract_graph`]), part of
/// its file name, so a change to the rewrites never reuses an older file.
pub const TRACT_FORM_VERSION: u32 = 7;
/// Name of the fused graph's per-patch score output `[N, T, K]`.
pub const SCORES_OUTPUT: &str = "concept_scores";
/// Name of the fused graph's per-patch argmax output, int64 `[N, T]`.
pub const IDS_OUTPUT: &str = "concept_ids";

/// The fused graph of `model` on the backbone file `backbone`: read from
/// `<cache>/fused/` when an identical one was built before, else built
/// and stored there. The file name carries a hash of the backbone and every
/// trained tensor, so retraining a model never picks up a stale graph.
///
/// An int8 model's graph is the float one with Q/DQ from its calibration
/// table (`calibrate::qdq`); its key also hashes the table.
pub fn fused_graph(model: &Model, backbone: &Path, cache: &Path) -> Result<PathBuf, ModelError> {
    let dir = cache.join("fused");
    let mut key = content_hash(model)?;
    let mut suffix = "";
    if let Some(table) = &model.calibration {
        key = format!("{:x}", Sha256::new().chain_update(&key).chain_update(table.to_json()).finalize());
        suffix = "-int8";
    }
    let path = dir.join(format!("{}-{}{suffix}.onnx", model.manifest.name, &key[..16]));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|source| ModelError::Io { path: dir.clone(), source })?;
    export(model, backbone, &path)?;
    log::info!("built the fused graph {}", path.display());
    Ok(path)
}

/// What an engine is asked to run for `model` on the backbone file
/// `backbone`: its fused graph (built into `cache` if needed, see
/// [`fused_graph`]) and the same graph in tract's form (see
/// [`tract_graph`]), at the model's input size.
pub fn engine_spec(model: &Model, backbone: &Path, cache: &Path) -> Result<EngineSpec, ModelError> {
    let path = fused_graph(model, backbone, cache)?;
    let tract_graph = Some(tract_graph(&path, model.calibration.is_some())?);
    let input = &model.manifest.input;
    Ok(EngineSpec { path, tract_graph, width: input.width, height: input.height, patch_size: model.manifest.backbone.patch_size, channels: model.num_concepts() })
}

/// The graph at `graph` (a fused graph as [`fused_graph`] returned it, or
/// a bare backbone) in the form tract runs fastest, with the same outputs:
/// an `int8` QDQ graph as its integer form (`calibrate::integer`) with each
/// LayerNorm, and each MLP's rescale + GELU, and the quantization of its
/// output as one node (`onnx::layer_norm`, `onnx::gelu`) — or, on a CPU
/// without int8 dot-product instructions (see
/// [`tract::has_int8_dot_product`]; [`tract::INT8_FORM_ENV`] overrides),
/// as a float graph with its int8 weights dequantized; LayerNorms folded into the products that read them
/// (`onnx::layer_norm`); each float product with a constant weight, with
/// its affine epilogue, GELU or residual sum, as one node (`onnx::linear`)
/// and each attention as one node, its three products as one
/// (`onnx::attention`), both run on the `gemm` crate
/// (`engine::tract::float_ops`). Read from beside `graph`
/// (`<name>.tract<version>.onnx`, `.tract<version>.dequantized.onnx`) when
/// built before, else built and stored there.
pub fn tract_graph(graph: &Path, int8: bool) -> Result<PathBuf, ModelError> {
    let integer = int8
        && tract::runs_int8_as_integer().map_err(|value| ModelError::Setting { variable: tract::INT8_FORM_ENV, value, expected: "integer, dequantized or auto" })?;
    let dequantized = if int8 && !integer { ".dequantized" } else { "" };
    let path = graph.with_extension(format!("tract{TRACT_FORM_VERSION}{dequantized}.onnx"));
    static WARNED: std::sync::Once = std::sync::Once::new();
    if int8 && !tract::has_int8_dot_product() {
        WARNED.call_once(|| {
            let form = match integer {
                true => format!("the integer form runs as {} asks, several times slower than float", tract::INT8_FORM_ENV),
                false => "tract runs this int8 model's weights dequantized, in float".to_string(),
            };
            log::warn!("this CPU has no int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI; ARM dotprod), on which tract's int8 products are slower than its float ones: {form}")
        });
    }
    if !path.is_file() {
        let mut form = onnx::read_model(graph)?;
        let (mut products, mut quantized, mut gelus) = (0, 0, 0);
        if integer {
            (form, products) = integer::integer_form(&form);
            (form, quantized) = layer_norm::fuse_quantize(&form);
            (form, gelus) = gelu::fuse_gelu_quantize(&form);
        } else if int8 {
            form = integer::dequantized_form(&form);
        }
        let (form, folded) = layer_norm::fold_layer_norms(&form);
        let (form, linears) = linear::fuse_linear(&form);
        let (form, attentions) = attention::fuse_attention(&form);
        onnx::write_model(&form, &path)?;
        log::info!(
            "built tract's form {} ({products} int8 weight products, {quantized} LayerNorms and {gelus} GELUs fused with their quantization, {folded} LayerNorms folded, {linears} float products on gemm, {attentions} attentions as one node each)",
            path.display()
        );
    }
    Ok(path)
}

/// The model's head for the patch grid of its input size (a TR head's
/// positional embedding resampled, see [`Head::at_grid`]).
fn head_at_input_size(model: &Model) -> Option<Head> {
    let (rows, cols) = input_grid(model);
    model.head.as_ref().map(|head| head.at_grid(rows, cols))
}

/// Patch rows and columns of the model's input.
fn input_grid(model: &Model) -> (usize, usize) {
    let input = &model.manifest.input;
    let patch = model.manifest.backbone.patch_size;
    ((input.height / patch) as usize, (input.width / patch) as usize)
}

/// Writes the fused graph of `model` on `backbone` to `out` (for an int8
/// model, the QDQ graph built from its calibration table).
pub fn export(model: &Model, backbone: &Path, out: &Path) -> Result<(), ModelError> {
    let mut fused = float_graph(model, backbone)?;
    if let Some(table) = &model.calibration {
        fused = qdq::quantize(&fused, table)
            .map_err(|e| ModelError::BadFile { path: model.dir.join(TABLE_FILE), reason: e.to_string() })?;
    }
    onnx::write_model(&fused, out)?;
    Ok(())
}

/// The float fused graph of `model` on `backbone`, in memory.
pub fn float_graph(model: &Model, backbone: &Path) -> Result<pb::ModelProto, ModelError> {
    let graph = onnx::read_model(backbone)?;
    Ok(fuse(&graph, head_at_input_size(model).as_ref(), &model.centroids)?)
}

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
        Some(head) => head.emit(&mut builder, &tokens.name),
    };
    let concepts_t = builder.initializer("concepts_t", concepts.t().into_dyn());
    let scores = builder.node_named("MatMul", SCORES_OUTPUT, &[&features, &concepts_t], vec![]);
    builder.node_named("ArgMax", IDS_OUTPUT, &[&scores], vec![int("axis", -1), int("keepdims", 0)]);
    g.output = vec![
        float_value_info(SCORES_OUTPUT, &[Dim::Param("batch"), Dim::Param("tokens"), Dim::Value(concepts.nrows() as i64)]),
        int64_value_info(IDS_OUTPUT, &[Dim::Param("batch"), Dim::Param("tokens")]),
    ];
    g.name = "causeseg_fused".into();
    Ok(pb::ModelProto { graph: Some(g), ..backbone.clone() })
}

/// The cache key of the float fused graph: [`source_hash`] plus, for a
/// head with a patch grid, the grid of the input size.
fn content_hash(model: &Model) -> Result<String, ModelError> {
    hash_sources(model, model.head.as_ref().and_then(Head::grid).is_some())
}

/// sha256 over the fused layout version, the backbone's hash and every
/// file of the model directory that the float graph is built from (the
/// concept vectors and the head's weight files): what a calibration table
/// belongs to, at any input size.
pub fn source_hash(model: &Model) -> Result<String, ModelError> {
    hash_sources(model, false)
}

/// [`source_hash`], with the input's patch grid hashed in when `with_grid`.
fn hash_sources(model: &Model, with_grid: bool) -> Result<String, ModelError> {
    let mut hasher = Sha256::new();
    hasher.update(LAYOUT_VERSION.to_le_bytes());
    hasher.update(model.manifest.backbone.sha256.as_bytes());
    if with_grid {
        let (rows, cols) = input_grid(model);
        hasher.update(format!("grid {rows}x{cols}").as_bytes());
    }
    let mut files = vec![model.dir.join(&model.manifest.concepts.centroids)];
    if let Some(spec) = &model.manifest.head {
        let mut head_files = Vec::new();
        collect_files(&model.dir.join(&spec.dir), &mut head_files)?;
        head_files.sort();
        files.extend(head_files);
    }
    for path in files {
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Every file under `dir`, recursively.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io { path: dir.into(), source })?;
    for entry in entries {
        let path = entry.map_err(|source| ModelError::Io { path: dir.into(), source })?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{HeadKind, Weights};
    use crate::onnx::{float_value_info, Dim};
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
        let weights: Weights = [
            ("f1_weight", array![[1.0f32, 0.0], [0.0, 1.0]].into_dyn()),
            ("f1_bias", array![0.5f32, 0.0].into_dyn()),
            ("f2a_weight", array![[1.0f32, 0.0], [0.0, -1.0]].into_dyn()),
            ("f2a_bias", array![0.0f32, 0.0].into_dyn()),
            ("f2b_weight", array![[2.0f32, 3.0], [0.0, 1.0]].into_dyn()),
            ("f2b_bias", array![-1.0f32, 0.0].into_dyn()),
        ]
        .into_iter()
        .collect();
        let head = Head::new(HeadKind::Mlp, weights).unwrap();
        let concepts = crate::linalg::l2_normalize_rows(array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]);
        let fused = fuse(&identity_backbone(), Some(&head), &concepts).unwrap();
        let x = array![[[2.0f32, 1.0], [-1.0, -3.0]]];
        let (scores, ids) = run(&fused, x.clone());
        let expected = head.forward(x.index_axis(ndarray::Axis(0), 0)).unwrap().dot(&concepts.t());
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
