//! The fused graph (backbone → head → concept scores → argmax) that the
//! runtime executes, against the model computed piece by piece: backbone
//! features from the plain backbone file, then the head in candle (the
//! training framework) or in ndarray (the runtime head), then the cosine
//! argmax. Checked on CamVid val images.

mod common;

use std::path::{Path, PathBuf};

use causeseg::engine::Backend;
use causeseg::model::{backbone, fused, Model};
use causeseg::pipeline::preprocess::decode_file;
use causeseg::pipeline::FeatureExtractor;
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
    let mut all = causeseg::eval::list_images(&dir).unwrap();
    all.sort();
    let step = (all.len() / IMAGES).max(1);
    Some(all.into_iter().step_by(step).take(IMAGES).collect())
}

/// Head features `[rows * cols, R]` of a backbone feature grid, computed
/// piece by piece.
type HeadFn = dyn Fn(&Model, &Array3<f32>) -> Array2<f32>;

/// A grid `[rows, cols, C]` as rows of tokens `[rows * cols, C]`.
fn flat(grid: Array3<f32>) -> Array2<f32> {
    let (rows, cols, c) = grid.dim();
    grid.into_shape_with_order((rows * cols, c)).unwrap()
}

/// Patch argmax agreement between the fused graph and `head` + probe.
fn agreement(model_dir: &Path, head: &HeadFn) -> Option<f64> {
    common::backbone()?;
    let images = val_images()?;
    let cache = common::cache_dir();
    let model = Model::load(model_dir).unwrap();
    let input = &model.manifest.input;
    let reference = &model.manifest.backbone;
    let mut plain = FeatureExtractor::new(reference, input, Backend::Tract, &cache).unwrap();
    let graph = fused::fused_graph(&model, &backbone::resolve(reference, &cache).unwrap(), &cache).unwrap();
    let mut fused = FeatureExtractor::load(graph, model.num_concepts(), reference.patch_size, input, Backend::Tract).unwrap();
    let (mut same, mut total) = (0usize, 0usize);
    for path in &images {
        let image = decode_file(path).unwrap();
        let (features, ..) = plain.features(&image, "val").unwrap();
        let expected = argmax_rows(&head(&model, &features).dot(&model.centroids.t()));
        let (scores, ..) = fused.features(&image, "val").unwrap();
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
    if let Some(fraction) = agreement(&default_cause_model(), &runtime_head) {
        assert!(fraction >= 0.999, "only {:.3} % of patches agree", 100.0 * fraction);
    }
}

#[test]
fn fused_graph_agrees_with_raw_kmeans_scoring() {
    let no_head = |_: &Model, grid: &Array3<f32>| flat(grid.clone());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-kmeans");
    if let Some(fraction) = agreement(&dir, &no_head) {
        assert!(fraction >= 0.999, "only {:.3} % of patches agree", 100.0 * fraction);
    }
}

#[cfg(feature = "train")]
#[test]
fn fused_graph_agrees_with_the_candle_head() {
    use candle_core::{Device, Tensor};
    use causeseg::pipeline::head::Head;
    let candle_head = |model: &Model, grid: &Array3<f32>| {
        let Some(Head::Mlp(mlp)) = model.head.as_ref() else { panic!("the default CAUSE model has an MLP head") };
        let params = causeseg::train::head::from_runtime(mlp, &Device::Cpu).unwrap();
        let tokens = flat(grid.clone());
        let x = Tensor::from_vec(tokens.iter().copied().collect(), tokens.dim(), &Device::Cpu).unwrap();
        let out = causeseg::train::head::head_forward(&params, &x, None).unwrap();
        let (n, r) = out.dims2().unwrap();
        Array2::from_shape_vec((n, r), out.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap()
    };
    if let Some(fraction) = agreement(&default_cause_model(), &candle_head) {
        assert!(fraction >= 0.999, "only {:.3} % of patches agree", 100.0 * fraction);
    }
}

/// ONNX Runtime runs the same fused file to the same labels as tract.
#[cfg(feature = "ort")]
#[test]
fn onnxruntime_runs_the_fused_graph_like_tract() {
    if common::backbone().is_none() {
        return;
    }
    let Some(images) = val_images() else { return };
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        let message = "ORT_DYLIB_PATH is not set (tests/run.sh installs onnxruntime and sets it)";
        assert!(!common::strict(), "{message}");
        eprintln!("SKIPPED: {message}");
        return;
    }
    let cache = common::cache_dir();
    let model = Model::load(&default_cause_model()).unwrap();
    let reference = &model.manifest.backbone;
    let graph = fused::fused_graph(&model, &backbone::resolve(reference, &cache).unwrap(), &cache).unwrap();
    let load = |backend| FeatureExtractor::load(graph.clone(), model.num_concepts(), reference.patch_size, &model.manifest.input, backend).unwrap();
    let (mut tract, mut ort) = (load(Backend::Tract), load(Backend::Ort));
    let (mut same, mut total, mut max_abs) = (0usize, 0usize, 0f32);
    for path in images.iter().take(4) {
        let image = decode_file(path).unwrap();
        let (a, ..) = tract.features(&image, "val").unwrap();
        let (b, ..) = ort.features(&image, "val").unwrap();
        max_abs = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(max_abs, f32::max);
        let (a, b) = (argmax_rows(&flat(a)), argmax_rows(&flat(b)));
        same += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        total += a.len();
    }
    eprintln!("onnxruntime vs tract on the fused graph: {same} of {total} patch labels agree, max abs score diff {max_abs:.2e}");
    assert!(same as f64 >= 0.999 * total as f64, "{same} of {total}");
}
