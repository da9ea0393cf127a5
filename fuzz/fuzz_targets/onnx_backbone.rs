//! The ONNX reader and the backbone import checks: any bytes through
//! `onnx::parse_model`; a graph that decodes is cut at a tensor the input
//! picks (`onnx::extract_backbone`, as `models import` does), written, and
//! probed by tract at 224x224 (`backbone::describe_within`, which must reject
//! anything but a `[1, tokens, dim]` square token grid); a backbone that
//! passes gets the concept scores fused onto it.
//!
//! Input: 1 byte (which node output to cut at, prefix tokens), then the
//! ONNX bytes.
//!
//! tract itself panics on some malformed graphs (tract-onnx 0.23.9: a
//! `Transpose` whose `perm` names a missing axis). `describe` runs tract on
//! its own `onnx-probe` thread and turns such a panic into an import error,
//! so the harness does the same: a panic on that thread is not a crash
//! (libFuzzer's hook would abort on any panic); every other panic still is.
#![no_main]

use std::path::Path;

use causeseg::model::backbone::{describe_within, OUTPUT_NAME};
use causeseg::model::fused::fuse;
use causeseg::onnx::{extract_backbone, parse_model, write_model};
use libfuzzer_sys::fuzz_target;

/// Keeps libFuzzer's aborting panic hook for every thread but the probe's.
fn contain_probe_panics() {
    let aborting = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some("onnx-probe") {
            aborting(info);
        }
    }));
}

fuzz_target!(init: contain_probe_panics(), |data: &[u8]| {
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
    // tract can also loop for ever (a LayerNormalization axis below -rank);
    // `describe` gives up after a limit: here 3 s, below libFuzzer's 10 s.
    if let Ok(reference) = describe_within(&path, std::time::Duration::from_secs(3)) {
        assert!(reference.patch_size > 0 && 224 % reference.patch_size == 0, "{reference:?}");
        let concepts = ndarray::Array2::<f32>::ones((3, reference.feature_dim));
        fuse(&backbone, None, &concepts).expect("a described backbone fuses");
    }
});
