//! The fused graph (backbone → head → concept scores → argmax) that the
//! runtime executes, against the model computed piece by piece: backbone
//! features from the plain backbone file, then the head in candle (the
//! training framework) or in ndarray (the runtime head), then the cosine
//! argmax. Checked on CamVid val images.

mod common;

use std::path::{Path, PathBuf};

use causeseg::model::{backbone, fused, Model};
use causeseg::pipeline::PatchInference;
use causeseg::source::{decode_file, list_images};
use causeseg::{EngineChoice, EngineConfig};
use ndarray::{Array2, Array3};

/// Val images used (a fixed, spread-out subset keeps the test short).
const IMAGES: usize = 12;

fn argmax_rows(scores: &Array2<f32>) -> Vec<usize> {
    scores
        .rows()
        .into_iter()
        .map(|r| r.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0)
        .collect()
}

fn val_images() -> Option<Vec<PathBuf>> {
    let dir = common::require(common::shared_dir().join("data/camvid/val/images"), "CamVid val images")?;
    let mut all = list_images(&dir).unwrap();
    all.sort();
    let step = (all.len() / IMAGES).max(1);
    Some(all.into_iter().step_by(step).take(IMAGES).collect())
}

/// Head features `[rows * cols, R]` of a backbone feature grid, computed
/// piece by piece.
type HeadFn<'a> = dyn Fn(&Model, &Array3<f32>) -> Array2<f32> + 'a;

/// A grid `[rows, cols, C]` as rows of tokens `[rows * cols, C]`.
fn flat(grid: Array3<f32>) -> Array2<f32> {
    let (rows, cols, c) = grid.dim();
    grid.into_shape_with_order((rows * cols, c)).unwrap()
}

/// Another input size than the default model's 448x336 (a 24x18 patch
/// grid instead of 32x24): its TR head's positional embedding is
/// interpolated.
const OTHER_SIZE: (u32, u32) = (336, 252);

/// The model in `dir`, at input `size` when given.
fn load_at(dir: &Path, size: Option<(u32, u32)>) -> Model {
    let mut model = Model::load(dir).unwrap();
    if let Some((w, h)) = size {
        model.set_input_size(w, h).unwrap();
    }
    model
}

/// Patch argmax agreement between the fused graph and `head` + probe, at
/// input `size` (default: the model's).
fn agreement(model_dir: &Path, head: &HeadFn<'_>, size: Option<(u32, u32)>) -> Option<f64> {
    common::backbone()?;
    let images = val_images()?;
    let cache = common::cache_dir();
    let model = load_at(model_dir, size);
    let input = &model.manifest.input;
    let reference = &model.manifest.backbone;
    let mut plain = PatchInference::backbone(reference, input, &EngineConfig::new(EngineChoice::Tract, &cache), &cache).unwrap();
    let spec = fused::engine_spec(&model, &backbone::resolve(reference, &cache).unwrap(), &cache).unwrap();
    let mut fused = PatchInference::load(spec, input, &EngineConfig::new(EngineChoice::Tract, &cache)).unwrap();
    let (mut same, mut total) = (0usize, 0usize);
    for path in &images {
        let image = decode_file(path).unwrap();
        let (features, ..) = plain.run(&image, "val").unwrap();
        let expected = argmax_rows(&head(&model, &features).dot(&model.centroids.t()));
        let (scores, ..) = fused.run(&image, "val").unwrap();
        let got = argmax_rows(&flat(scores));
        same += expected.iter().zip(&got).filter(|(a, b)| a == b).count();
        total += expected.len();
    }
    let fraction = same as f64 / total as f64;
    eprintln!("{}: {same} of {total} patches agree ({:.3} %)", model_dir.display(), 100.0 * fraction);
    Some(fraction)
}

fn default_cause_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-cause")
}

#[test]
fn fused_graph_agrees_with_the_runtime_head() {
    let runtime_head = |model: &Model, grid: &Array3<f32>| flat(model.head.as_ref().expect("CAUSE model").apply(grid.view()).unwrap());
    if let Some(fraction) = agreement(&default_cause_model(), &runtime_head, None) {
        assert!(fraction >= 0.999, "only {:.3} % of patches agree", 100.0 * fraction);
    }
}

/// At another input size the fused graph carries the TR head's positional
/// embedding resampled to the new grid, as the runtime head does.
#[test]
fn fused_graph_at_another_size_agrees_with_the_runtime_head() {
    let runtime_head = |model: &Model, grid: &Array3<f32>| {
        let head = model.head.as_ref().expect("CAUSE model");
        assert_ne!(head.grid(), Some((grid.dim().0, grid.dim().1)), "the test must run off the training grid");
        flat(head.apply(grid.view()).unwrap())
    };
    if let Some(fraction) = agreement(&default_cause_model(), &runtime_head, Some(OTHER_SIZE)) {
        assert!(fraction >= 0.999, "only {:.3} % of patches agree", 100.0 * fraction);
    }
}

#[test]
fn fused_graph_agrees_with_raw_kmeans_scoring() {
    let no_head = |_: &Model, grid: &Array3<f32>| flat(grid.clone());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-kmeans");
    if let Some(fraction) = agreement(&dir, &no_head, None) {
        assert!(fraction >= 0.999, "only {:.3} % of patches agree", 100.0 * fraction);
    }
}

/// The head exactly as training runs it: candle's forward on the trained
/// parameters (the whitening, folded into the saved head, applied first).
#[cfg(feature = "train")]
#[test]
fn fused_graph_agrees_with_the_candle_head() {
    use candle_core::{Device, Tensor};
    use causeseg::head::candle::{forward, linear, Params};
    use causeseg::head::layers::nearest_codes;
    use causeseg::head::HeadKind;
    let device = Device::Cpu;
    let tensor = |a: &Array2<f32>| Tensor::from_vec(a.iter().copied().collect(), a.dim(), &device).unwrap();
    let candle_head = |model: &Model, grid: &Array3<f32>| {
        let head = model.head.as_ref().expect("CAUSE model");
        let params = Params::from_weights(head.weights(), &device).unwrap();
        let tokens = tensor(&flat(grid.clone())).unsqueeze(0).unwrap();
        let out = match head.kind() {
            HeadKind::Mlp => forward(HeadKind::Mlp, &params, &tokens, None, None).unwrap(),
            HeadKind::Tr => {
                let x = if head.weights().contains("input_weight") { linear(&params, "input", &tokens).unwrap() } else { tokens };
                let x_rows = Array2::from_shape_vec(x.dims3().map(|(_, t, d)| (t, d)).unwrap(), x.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
                let codes = head.weights().matrix("codes");
                let queries = tensor(&codes.select(ndarray::Axis(0), &nearest_codes(x_rows.view(), codes))).unsqueeze(0).unwrap();
                forward(HeadKind::Tr, &params, &x, Some(&queries), None).unwrap()
            }
        };
        let (n, r) = out.dims2().unwrap();
        Array2::from_shape_vec((n, r), out.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap()
    };
    if let Some(fraction) = agreement(&default_cause_model(), &candle_head, None) {
        assert!(fraction >= 0.999, "only {:.3} % of patches agree", 100.0 * fraction);
    }
}

/// tract's form of the fused graph (LayerNorms folded into the weights,
/// `onnx::layer_norm`) gives the scores of the fused graph itself within
/// 1e-3 and the same patch labels, at the model's size and another.
#[test]
fn tracts_form_runs_like_the_fused_graph() {
    if common::backbone().is_none() {
        return;
    }
    let Some(images) = val_images() else { return };
    let cache = common::cache_dir();
    for size in [None, Some(OTHER_SIZE)] {
        let model = load_at(&default_cause_model(), size);
        let input = &model.manifest.input;
        let spec = fused::engine_spec(&model, &backbone::resolve(&model.manifest.backbone, &cache).unwrap(), &cache).unwrap();
        let tract_form = spec.tract_graph.clone().expect("tract runs its own form");
        // Both LayerNorms of each of the 12 blocks fold (the backbone's last,
        // read by the token slice, does not), and nothing is left to fold.
        let folds = |path: &Path| causeseg::onnx::layer_norm::fold_layer_norms(&causeseg::onnx::read_model(path).unwrap()).1;
        assert_eq!((folds(&spec.path), folds(&tract_form)), (24, 0));
        // Each block's attention and the TR head's two (one head each) are
        // one node, every float product with a constant weight (4 per block
        // plus the head's) one Linear node, with the GELU after each
        // block's first MLP product and the residual sum after its last.
        let (graph, form) = (causeseg::onnx::read_model(&spec.path).unwrap(), causeseg::onnx::read_model(&tract_form).unwrap());
        let count = |model: &causeseg::onnx::pb::ModelProto, op: &str| model.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == op).count();
        assert_eq!(count(&form, causeseg::onnx::attention::MULTI_HEAD_ATTENTION), 14);
        assert_eq!((count(&form, "Softmax"), count(&graph, "Softmax")), (0, 14));
        let linears: Vec<&causeseg::onnx::pb::NodeProto> = form.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == causeseg::onnx::linear::LINEAR).collect();
        assert!(linears.len() >= 48, "{} Linear nodes", linears.len());
        assert_eq!((count(&form, "Erf"), linears.iter().filter(|n| n.attribute.iter().any(|a| a.name == "activation")).count()), (0, 12));
        assert!(linears.iter().filter(|n| n.input.len() == 5).count() >= 24, "every block's two residual sums on their products");
        let engine = EngineConfig::new(EngineChoice::Tract, &cache);
        let mut folded = PatchInference::load(spec.clone(), input, &engine).unwrap();
        let mut plain = PatchInference::load(causeseg::engine::EngineSpec { tract_graph: None, ..spec }, input, &engine).unwrap();
        let (mut same, mut total, mut max_abs) = (0usize, 0usize, 0f32);
        for path in images.iter().take(4) {
            let image = decode_file(path).unwrap();
            let (a, ..) = plain.run(&image, "val").unwrap();
            let (b, ..) = folded.run(&image, "val").unwrap();
            max_abs = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(max_abs, f32::max);
            let (a, b) = (argmax_rows(&flat(a)), argmax_rows(&flat(b)));
            same += a.iter().zip(&b).filter(|(x, y)| x == y).count();
            total += a.len();
        }
        eprintln!("tract's form vs the fused graph at {size:?}: {same} of {total} patch labels agree, max abs score diff {max_abs:.2e}");
        assert!(same as f64 >= 0.999 * total as f64, "{same} of {total}");
        assert!(max_abs <= 1e-3, "max abs score diff {max_abs}");
    }
}

/// ONNX Runtime runs the same fused file to the same labels as tract, at
/// the model's size and at another one.
#[cfg(feature = "ort")]
#[test]
fn onnxruntime_runs_the_fused_graph_like_tract() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        let message = "ORT_DYLIB_PATH is not set (tests/run.sh installs onnxruntime and sets it)";
        assert!(!common::strict(), "{message}");
        eprintln!("SKIPPED: {message}");
        return;
    }
    for size in [None, Some(OTHER_SIZE)] {
        agrees_with_tract(EngineChoice::OrtCpu, size);
    }
}

/// rten runs the same fused file (pinned to the input size, re-encoded
/// unpacked) to the same labels as tract, at the model's size and another.
#[cfg(feature = "rten")]
#[test]
fn rten_runs_the_fused_graph_like_tract() {
    for size in [None, Some(OTHER_SIZE)] {
        agrees_with_tract(EngineChoice::Rten, size);
    }
}

/// Scores of `choice` within a cosine of 0.9999 of tract's for every patch,
/// and >= 99.9 % of pixel labels (upsampled, refined) the same, on 4 val images.
#[cfg(any(feature = "ort", feature = "rten"))]
fn agrees_with_tract(choice: EngineChoice, size: Option<(u32, u32)>) {
    if common::backbone().is_none() {
        return;
    }
    let Some(images) = val_images() else { return };
    let cache = common::cache_dir();
    let model = load_at(&default_cause_model(), size);
    let load = |choice| causeseg::Segmenter::new(model.clone(), &EngineConfig::new(choice, &cache), &cache).unwrap();
    let (mut tract, mut other) = (load(EngineChoice::Tract), load(choice));
    let (mut same, mut total, mut max_abs, mut min_cosine) = (0usize, 0usize, 0f32, f32::INFINITY);
    for path in images.iter().take(4) {
        let image = decode_file(path).unwrap();
        let (a, ..) = tract.inference_mut().run(&image, "val").unwrap();
        let (b, ..) = other.inference_mut().run(&image, "val").unwrap();
        max_abs = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(max_abs, f32::max);
        for (x, y) in flat(a).rows().into_iter().zip(flat(b).rows()) {
            min_cosine = min_cosine.min(x.dot(&y) / (x.dot(&x).sqrt() * y.dot(&y).sqrt()));
        }
        // Pixel labels after upsampling and the guided refinement.
        let a = tract.segment(&image, "val", None).unwrap().labels;
        let b = other.segment(&image, "val", None).unwrap().labels;
        same += a.pixels().zip(b.pixels()).filter(|(x, y)| x == y).count();
        total += a.len();
    }
    eprintln!("{} vs tract on the fused graph at {size:?}: {same} of {total} pixel labels agree, max abs score diff {max_abs:.2e}, min score cosine {min_cosine:.6}", choice.name());
    assert!(same as f64 >= 0.999 * total as f64, "{same} of {total}");
    assert!(min_cosine >= 0.9999, "min score cosine {min_cosine}");
}

/// Both kernels of tract's float products (`CAUSESEG_TRACT_PRODUCTS`):
/// causeseg's own panels (AVX2 CPUs without AVX-512) and `gemm` give the
/// same pixel labels on >= 99.9 % of pixels of val images; asking for the
/// panels where they do not run, or for an unknown kernel, is a clean
/// error.
#[test]
fn both_product_kernels_segment_alike() {
    use causeseg::engine::tract::float_ops::PRODUCT_KERNEL_ENV;
    if common::backbone().is_none() {
        return;
    }
    let Some(images) = val_images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let inputs: Vec<&str> = images.iter().take(2).map(|p| p.to_str().unwrap()).collect();
    let segment = |kernel: &str| {
        let out = dir.path().join(kernel);
        let mut args = vec!["segment", "--engine", "tract", "--out", out.to_str().unwrap()];
        args.extend(&inputs);
        (common::causeseg_with_env(&args, &[(PRODUCT_KERNEL_ENV, kernel)]), out)
    };
    let labels = |out: &Path| {
        images.iter().take(2).map(|p| image::open(out.join(format!("{}_labels.png", p.file_stem().unwrap().to_string_lossy()))).unwrap().into_luma8()).collect::<Vec<_>>()
    };
    let (gemm, gemm_out) = segment("gemm");
    assert!(gemm.status.success(), "{}", String::from_utf8_lossy(&gemm.stderr));
    let (panels, panels_out) = segment("panels");
    #[cfg(target_arch = "x86_64")]
    let runs_panels = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && !is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let runs_panels = false;
    if runs_panels {
        assert!(panels.status.success(), "{}", String::from_utf8_lossy(&panels.stderr));
        let (a, b) = (labels(&gemm_out), labels(&panels_out));
        let same: usize = a.iter().zip(&b).map(|(a, b)| a.pixels().zip(b.pixels()).filter(|(x, y)| x == y).count()).sum();
        let total: usize = a.iter().map(|l| l.len()).sum();
        eprintln!("panels vs gemm: {same} of {total} pixel labels agree");
        assert!(same as f64 >= 0.999 * total as f64, "{same} of {total}");
    } else {
        common::assert_clean_error(&panels, "CAUSESEG_TRACT_PRODUCTS=panels: this CPU lacks AVX2 + FMA (or has AVX-512, where gemm runs)");
    }
    let (unknown, _) = segment("fast");
    common::assert_clean_error(&unknown, "CAUSESEG_TRACT_PRODUCTS=fast: expected panels, gemm or auto");
}
