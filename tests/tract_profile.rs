//! tract's cost model and per-operation profile of a real graph (what
//! `causeseg bench` reports as GFLOP/s and `--profile`).

mod common;

use causeseg::engine::tract::TractEngine;
use causeseg::engine::EngineSpec;
use ndarray::Array4;

#[test]
fn flops_match_the_vit_arithmetic_and_the_profile_covers_the_run() {
    let Some(backbone) = common::backbone() else { return };
    let spec = EngineSpec { path: backbone, tract_graph: None, width: 224, height: 224, patch_size: 14, channels: 384 };
    let mut engine = TractEngine::load(&spec).unwrap();
    // DINOv2 ViT-S/14 at 224x224: 256 patches + the class token, width 384,
    // 12 blocks of attention (q, k, v, projection; scores and weighted sum)
    // and a 4x MLP, after a 14x14 patch embedding; 2 FLOPs per multiply-add.
    let (n, d, patches) = (257.0, 384.0, 256.0);
    let block = 2.0 * (4.0 * n * d * d + 2.0 * n * n * d + 2.0 * n * d * 4.0 * d);
    let expected = 12.0 * block + 2.0 * patches * 3.0 * 14.0 * 14.0 * d;
    let flops = engine.flops().unwrap() as f64;
    eprintln!("tract cost model: {:.3} GFLOP, ViT arithmetic {:.3} GFLOP", flops / 1e9, expected / 1e9);
    assert!((flops - expected).abs() / expected < 0.03, "{flops} vs {expected}");

    let profile = engine.profile(Array4::from_elem((1, 3, 224, 224), 0.1)).unwrap();
    assert!(profile.windows(2).all(|w| w[0].ms >= w[1].ms), "sorted longest first");
    let matmul_nodes: usize = profile.iter().filter(|t| t.op.contains("MatMul") && !t.op.contains("Pack")).map(|t| t.nodes).sum();
    // Six weight products (q, k, v, projection, two MLP layers) and two
    // attention products per block, however tract splits or fuses them.
    assert!(matmul_nodes >= 12 * 6, "{profile:?}");
    assert!(profile.iter().any(|t| t.op == "Softmax" && t.nodes >= 12), "{profile:?}");
}
