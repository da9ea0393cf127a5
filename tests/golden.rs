//! Golden tests: the tract backbone against features computed by an
//! independent implementation (Hugging Face Dinov2Model), ../shared/reference.

mod common;

use std::path::{Path, PathBuf};

use causeseg::engine::{tract::TractEngine, Engine, EngineSpec};
use causeseg::model::manifest::{IMAGENET_MEAN, IMAGENET_STD};
use causeseg::model::manifest::ResizePolicy;
use causeseg::pipeline::preprocess::Preprocessor;
use causeseg::source::decode_file;
use ndarray::{Array3, Array4};
use ndarray_npy::read_npy;

struct Case {
    name: &'static str,
    source: &'static str,
    width: u32,
    height: u32,
}

const CASES: [Case; 2] = [
    Case { name: "camvid_val_0016E5_07959", source: "data/camvid/val/images/0016E5_07959.jpg", width: 448, height: 336 },
    Case { name: "coco_000000000139", source: "data/cocostuff-samples/images/000000000139.jpg", width: 224, height: 224 },
];

/// (max abs difference, minimum per-token cosine) between two feature grids.
fn compare(ours: &Array3<f32>, golden: &Array3<f32>) -> (f32, f32) {
    assert_eq!(ours.dim(), golden.dim());
    let max_abs = ours.iter().zip(golden).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let mut min_cos = f32::INFINITY;
    for (a, b) in ours.lanes(ndarray::Axis(2)).into_iter().zip(golden.lanes(ndarray::Axis(2))) {
        min_cos = min_cos.min(a.dot(&b) / (a.dot(&a).sqrt() * b.dot(&b).sqrt()));
    }
    (max_abs, min_cos)
}

/// tract on the backbone file, or on `tract_graph` (tract's form of it)
/// when given.
fn engine(backbone: &Path, tract_graph: Option<PathBuf>, case: &Case) -> TractEngine {
    let spec = EngineSpec { path: backbone.into(), tract_graph, width: case.width, height: case.height, patch_size: 14, channels: 384 };
    TractEngine::load(&spec).unwrap()
}

#[test]
fn tract_backbone_matches_golden_features() {
    let (Some(backbone), Some(reference)) = (common::backbone(), common::require(common::shared_dir().join("reference"), "../shared/reference")) else { return };
    // The backbone file itself, and tract's form of it (LayerNorms folded
    // into the weights), which training runs to extract features.
    let tract_form = causeseg::model::fused::tract_graph(&backbone, false).unwrap();
    for form in [None, Some(tract_form)] {
        for case in &CASES {
            let input: Array4<f32> = read_npy(reference.join(format!("{}_input_{}x{}.npy", case.name, case.width, case.height))).unwrap();
            let golden: Array3<f32> = read_npy(reference.join(format!("{}_features_{}x{}.npy", case.name, case.width, case.height))).unwrap();
            let ours = engine(&backbone, form.clone(), case).run(input).unwrap();
            let (max_abs, min_cos) = compare(&ours, &golden);
            eprintln!("{} ({form:?}): max abs diff {max_abs:.2e}, min token cosine {min_cos:.6}", case.name);
            assert!(max_abs <= 1e-3, "{}: max abs diff {max_abs}", case.name);
            assert!(min_cos >= 0.9999, "{}: min cosine {min_cos}", case.name);
        }
    }
}

#[test]
fn own_preprocessing_keeps_features_close_to_golden() {
    let (Some(backbone), Some(shared)) = (common::backbone(), common::require(common::shared_dir().join("reference"), "../shared/reference")) else { return };
    let shared = shared.parent().unwrap().to_path_buf();
    for case in &CASES {
        let golden: Array3<f32> = read_npy(shared.join(format!("reference/{}_features_{}x{}.npy", case.name, case.width, case.height))).unwrap();
        let image = decode_file(&shared.join(case.source)).unwrap();
        let mut pre = Preprocessor::new(case.width, case.height, 14, IMAGENET_MEAN, IMAGENET_STD, ResizePolicy::Stretch);
        let (tensor, _) = pre.run(&image, case.source).unwrap();
        let ours = engine(&backbone, None, case).run(tensor).unwrap();
        let (_, min_cos) = compare(&ours, &golden);
        eprintln!("{}: own resize, min token cosine {min_cos:.5}", case.name);
        assert!(min_cos >= 0.99, "{}: min cosine {min_cos}", case.name);
    }
}
