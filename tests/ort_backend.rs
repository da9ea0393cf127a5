//! The same backbone file gives the same features in ONNX Runtime (through
//! the `ort` crate, library loaded from $ORT_DYLIB_PATH) as in tract and as
//! the golden reference.
#![cfg(feature = "ort")]

mod common;

use causeseg::engine::{self, EngineChoice, EngineConfig, EngineSpec};
use ndarray::{Array3, Array4, Axis};
use ndarray_npy::read_npy;

fn min_cosine(a: &Array3<f32>, b: &Array3<f32>) -> f32 {
    a.lanes(Axis(2))
        .into_iter()
        .zip(b.lanes(Axis(2)))
        .map(|(x, y)| x.dot(&y) / (x.dot(&x).sqrt() * y.dot(&y).sqrt()))
        .fold(f32::INFINITY, f32::min)
}

#[test]
fn onnxruntime_cpu_matches_tract_and_golden() {
    let Some(backbone) = common::backbone() else { return };
    let Some(reference) = common::require(common::shared_dir().join("reference"), "../shared/reference") else { return };
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        let message = "ORT_DYLIB_PATH is not set (tests/run.sh installs onnxruntime and sets it)";
        assert!(!common::strict(), "{message}");
        eprintln!("SKIPPED: {message}");
        return;
    }
    let spec = EngineSpec { path: backbone, tract_graph: None, width: 448, height: 336, patch_size: 14, channels: 384 };
    let input: Array4<f32> = read_npy(reference.join("camvid_val_0016E5_07959_input_448x336.npy")).unwrap();
    let golden: Array3<f32> = read_npy(reference.join("camvid_val_0016E5_07959_features_448x336.npy")).unwrap();

    let config = |choice| EngineConfig::new(choice, &common::cache_dir());
    let mut ort = engine::load(&config(EngineChoice::OrtCpu), &spec).unwrap();
    assert!(ort.backend().starts_with("onnxruntime"), "{}", ort.backend());
    let from_ort = ort.run(input.clone()).unwrap();
    let from_tract = engine::load(&config(EngineChoice::Tract), &spec).unwrap().run(input).unwrap();

    let max_abs = from_ort.iter().zip(&from_tract).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("ort vs tract: max abs {max_abs:.2e}, min cosine {:.6}; ort vs golden min cosine {:.6}", min_cosine(&from_ort, &from_tract), min_cosine(&from_ort, &golden));
    assert!(max_abs <= 1e-3, "max abs diff {max_abs}");
    assert!(min_cosine(&from_ort, &from_tract) >= 0.9999);
    assert!(min_cosine(&from_ort, &golden) >= 0.9999);
}

#[test]
fn asking_for_tensorrt_without_a_gpu_is_an_error_not_a_silent_cpu_run() {
    let Some(backbone) = common::backbone() else { return };
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        assert!(!common::strict(), "ORT_DYLIB_PATH is not set");
        return;
    }
    let spec = EngineSpec { path: backbone, tract_graph: None, width: 224, height: 224, patch_size: 14, channels: 384 };
    let trt_cache = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(EngineChoice::Tensorrt, &common::cache_dir());
    config.tensorrt.cache_dir = trt_cache.path().join("trt");
    let Err(err) = engine::load(&config, &spec) else {
        eprintln!("SKIPPED: TensorRT is available here; this test covers machines without it");
        return;
    };
    // The CPU-only wheel has no TensorRT provider; with onnxruntime-gpu on a
    // machine without a GPU, session creation fails instead.
    let message = err.to_string();
    assert!(message.starts_with("--engine tensorrt: the TensorRT execution provider is not in") || message.contains("cannot load the ONNX graph"), "{message}");
}
