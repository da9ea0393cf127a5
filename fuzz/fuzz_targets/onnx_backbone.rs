//! The ONNX reader and the backbone import checks: any bytes through
//! `onnx::parse_model`; a graph that decodes is cut at a tensor the input
//! picks (`onnx::extract_backbone`, as `models import` does), written, and
//! probed by tract at 224x224 (`backbone::describe`, which must reject
//! anything but a `[1, tokens, dim]` square token grid); a backbone that
//! passes gets the concept scores fused onto it.
//!
//! Input: 1 byte (which node output to cut at, prefix tokens), then the
//! ONNX bytes.
#![no_main]

use std::path::Path;

use causeseg::model::backbone::{describe, OUTPUT_NAME};
use causeseg::model::fused::fuse;
use causeseg::onnx::{extract_backbone, parse_model, write_model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let Ok(model) = parse_model(bytes, Path::new("fuzz.onnx")) else { return };
    let outputs: Vec<String> = model.graph.as_ref().unwrap().node.iter().flat_map(|n| n.output.clone()).collect();
    if outputs.is_empty() {
        return;
    }
    // The low bits pick a tensor counted from the end (the usual cut point is
    // the last LayerNorm); bit 7 drops one prefix (CLS) token.
    let tensor = &outputs[outputs.len() - 1 - usize::from(pick & 0x7f) % outputs.len()];
    let Ok(backbone) = extract_backbone(&model, tensor, usize::from(pick >> 7), OUTPUT_NAME) else { return };
    let path = std::env::temp_dir().join(format!("causeseg-fuzz-{}.onnx", std::process::id()));
    write_model(&backbone, &path).expect("the temporary directory is writable");
    if let Ok(reference) = describe(&path) {
        assert!(reference.patch_size > 0 && 224 % reference.patch_size == 0, "{reference:?}");
        let concepts = ndarray::Array2::<f32>::ones((3, reference.feature_dim));
        fuse(&backbone, None, &concepts).expect("a described backbone fuses");
    }
});
