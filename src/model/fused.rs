//! The fused inference graph of a model directory (backbone → head →
//! concept scores → argmax, see [`crate::onnx::fuse`]), built from the
//! cached backbone the first time a model runs and kept in the cache.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Model, ModelError};
use crate::onnx;
use crate::pipeline::head::Head;

/// The fused graph of `model` on the backbone file `backbone`: read from
/// `<cache>/fused/` when an identical one was built before, else built
/// and stored there. The file name carries a hash of the backbone and every
/// trained tensor, so retraining a model never picks up a stale graph.
pub fn fused_graph(model: &Model, backbone: &Path, cache: &Path) -> Result<PathBuf, ModelError> {
    check_input_size(model)?;
    let dir = cache.join("fused");
    let path = dir.join(format!("{}-{}.onnx", model.manifest.name, &content_hash(model)?[..16]));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|source| ModelError::Io { path: dir.clone(), source })?;
    export(model, backbone, &path)?;
    log::info!("built the fused graph {}", path.display());
    Ok(path)
}

/// Fails when the model's input size does not give the patch grid a TR
/// head was trained on (its positional embedding is one vector per patch).
fn check_input_size(model: &Model) -> Result<(), ModelError> {
    let Some(Head::Tr(head)) = &model.head else { return Ok(()) };
    let input = &model.manifest.input;
    let patch = model.manifest.backbone.patch_size;
    let (rows, cols) = head.grid;
    if ((input.height / patch) as usize, (input.width / patch) as usize) == (rows, cols) {
        return Ok(());
    }
    Err(ModelError::FixedInputSize {
        name: model.manifest.name.clone(),
        rows,
        cols,
        width: cols * patch as usize,
        height: rows * patch as usize,
        asked_width: input.width,
        asked_height: input.height,
    })
}

/// Writes the fused graph of `model` on `backbone` to `out`.
pub fn export(model: &Model, backbone: &Path, out: &Path) -> Result<(), ModelError> {
    check_input_size(model)?;
    let graph = onnx::read_model(backbone)?;
    let fused = onnx::fuse::fuse(&graph, model.head.as_ref(), &model.centroids)?;
    onnx::write_model(&fused, out)?;
    Ok(())
}

/// sha256 over the fused layout version, the backbone's hash and every
/// file of the model directory that the graph is built from (the concept
/// vectors and the head's weight files).
fn content_hash(model: &Model) -> Result<String, ModelError> {
    let mut hasher = Sha256::new();
    hasher.update(onnx::fuse::LAYOUT_VERSION.to_le_bytes());
    hasher.update(model.manifest.backbone.sha256.as_bytes());
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
