//! Model directory loading: a fuzzed directory (`model.toml`, the centroid
//! `.npy`, head weight files of any dtype, shape or order) through
//! `Model::load`; a model that loads must have consistent shapes, and its
//! fused graph (head and concept scores appended to a backbone) must build.
//!
//! Input: records `[name length: u8][name][data length: u16 LE][data]`, each
//! one file of the directory (names with `..`, absolute names or odd
//! characters are skipped).
#![no_main]

use std::path::{Path, PathBuf};

use causeseg::model::fused::fuse;
use causeseg::model::Model;
use causeseg::onnx::{float_value_info, pb, Dim};
use libfuzzer_sys::fuzz_target;

fn files(mut data: &[u8]) -> Vec<(String, &[u8])> {
    let mut files = Vec::new();
    while let Some((&n, rest)) = data.split_first() {
        let (name, rest) = rest.split_at(usize::from(n).min(rest.len()));
        if rest.len() < 2 {
            break;
        }
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (body, rest) = rest[2..].split_at(len);
        data = rest;
        let Ok(name) = std::str::from_utf8(name) else { continue };
        let safe = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b))
            && !name.starts_with('/')
            && !name.split('/').any(|part| part.is_empty() || part == "." || part == "..");
        if safe && files.len() < 48 {
            files.push((name.to_string(), body));
        }
    }
    files
}

/// A fresh, empty directory for this process.
fn scratch() -> PathBuf {
    let base = std::env::temp_dir().join(format!("causeseg-fuzz-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    base
}

/// A backbone graph that passes its input through as patch tokens.
fn identity_backbone() -> pb::ModelProto {
    let graph = pb::GraphProto {
        node: vec![pb::NodeProto { input: vec!["x".into()], output: vec!["patch_tokens".into()], op_type: "Identity".into(), ..Default::default() }],
        input: vec![float_value_info("x", &[Dim::Param("batch"), Dim::Param("tokens"), Dim::Param("dim")])],
        output: vec![float_value_info("patch_tokens", &[Dim::Param("batch"), Dim::Param("tokens"), Dim::Param("dim")])],
        ..Default::default()
    };
    pb::ModelProto { graph: Some(graph), ir_version: 8, ..Default::default() }
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    for (name, body) in files(data) {
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            if std::fs::create_dir_all(parent).is_err() {
                continue; // a file where a directory should be
            }
        }
        let _ = std::fs::write(&path, body);
    }
    if let Ok(model) = Model::load(Path::new(&dir)) {
        let manifest = &model.manifest;
        let dim = manifest.head.as_ref().map_or(manifest.backbone.feature_dim, |h| h.output_dim);
        assert_eq!(model.centroids.dim(), (manifest.concepts.names.len(), dim));
        assert_eq!(model.num_concepts(), manifest.concepts.colors.len());
        if let Some(head) = &model.head {
            assert_eq!((head.input_dim(), head.output_dim()), (manifest.backbone.feature_dim, dim));
        }
        fuse(&identity_backbone(), model.head.as_ref(), &model.centroids).expect("a loaded model fuses");
    }
});
