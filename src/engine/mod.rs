//! Inference engines: run one ONNX graph with a per-patch output (a
//! model's fused graph, or a bare backbone for training) on a preprocessed
//! image tensor and return the output as a patch grid.
//!
//! Every backend implements [`Engine`]; tract (pure Rust, any CPU) is always
//! built, ONNX Runtime (CPU/CUDA/TensorRT) with the `ort` feature.

#[cfg(feature = "ort")]
pub mod onnxruntime;
pub mod tract;

use std::path::PathBuf;

use ndarray::{Array3, Array4};

/// Errors while loading or running a graph.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The file could not be loaded or optimised.
    #[error("{path}: cannot load the ONNX graph: {reason}")]
    Load {
        /// The ONNX file.
        path: String,
        /// What the backend said.
        reason: String,
    },
    /// The graph's output is not one value vector per patch.
    #[error("{path}: output has shape {shape}, expected [1, {tokens}, {channels}] (one vector per patch; for a backbone: is it a ViT cut at its final LayerNorm?)")]
    NotPerPatch {
        /// The ONNX file.
        path: String,
        /// The shape it produced.
        shape: String,
        /// Patches of the input.
        tokens: usize,
        /// Values per patch expected.
        channels: usize,
    },
    /// Inference itself failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// The backend was left out of this build.
    #[error("backend {0} needs causeseg built with `--features ort` (e.g. cargo build --release --features ort), or use --backend tract")]
    NotBuilt(String),
}

/// What a backend is asked to build: the graph file and its fixed input.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    /// The ONNX file.
    pub path: PathBuf,
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// ViT patch size.
    pub patch_size: u32,
    /// Values per patch in the output (concepts for a fused graph, the
    /// feature size for a backbone).
    pub channels: usize,
}

impl EngineSpec {
    /// Patch grid (rows, columns) of the input.
    pub fn grid(&self) -> (usize, usize) {
        ((self.height / self.patch_size) as usize, (self.width / self.patch_size) as usize)
    }

    /// Checks a backend's output shape and reshapes it into the
    /// `[rows, cols, channels]` patch grid.
    pub fn to_grid(&self, shape: &[usize], data: Vec<f32>) -> Result<Array3<f32>, EngineError> {
        let (rows, cols) = self.grid();
        if shape != [1, rows * cols, self.channels] {
            return Err(EngineError::NotPerPatch {
                path: self.path.display().to_string(),
                shape: format!("{shape:?}"),
                tokens: rows * cols,
                channels: self.channels,
            });
        }
        Ok(Array3::from_shape_vec((rows, cols, self.channels), data).expect("shape checked above"))
    }
}

/// A loaded graph that turns `[1, 3, H, W]` normalised images into a
/// `[H/p, W/p, C]` patch grid.
pub trait Engine: Send {
    /// Backend name for logs and reports (e.g. "tract", "onnxruntime-cpu").
    fn backend(&self) -> String;
    /// Runs the graph on one image tensor.
    fn run(&mut self, input: Array4<f32>) -> Result<Array3<f32>, EngineError>;
}

/// The backends a user can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Backend {
    /// tract: pure Rust, any CPU, no system libraries.
    #[default]
    Tract,
    /// ONNX Runtime on CPU (feature `ort`).
    Ort,
    /// ONNX Runtime with the CUDA execution provider (feature `ort`).
    Cuda,
    /// ONNX Runtime with the TensorRT execution provider, FP16 (feature `ort`).
    Tensorrt,
}

/// Fails, before any model is loaded, when `backend` is not in this build.
pub fn check_built(backend: Backend) -> Result<(), EngineError> {
    match backend {
        Backend::Tract => Ok(()),
        _ if cfg!(feature = "ort") => Ok(()),
        other => Err(EngineError::NotBuilt(format!("{other:?}").to_lowercase())),
    }
}

/// Loads `spec` with `backend`.
pub fn load(backend: Backend, spec: &EngineSpec) -> Result<Box<dyn Engine>, EngineError> {
    check_built(backend)?;
    match backend {
        Backend::Tract => Ok(Box::new(tract::TractEngine::load(spec)?)),
        #[cfg(feature = "ort")]
        other => Ok(Box::new(onnxruntime::OrtEngine::load(spec, other)?)),
        #[cfg(not(feature = "ort"))]
        other => Err(EngineError::NotBuilt(format!("{other:?}").to_lowercase())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_left_out_of_the_build_is_an_error_that_leads_with_the_fix() {
        assert!(check_built(Backend::Tract).is_ok());
        let built = cfg!(feature = "ort");
        match check_built(Backend::Ort) {
            Ok(()) => assert!(built),
            Err(e) => assert!(e.to_string().starts_with("backend ort needs causeseg built with `--features ort`"), "{e}"),
        }
        let message = EngineError::NotBuilt("tensorrt".into()).to_string();
        assert!(message.starts_with("backend tensorrt needs causeseg built with `--features ort`"), "{message}");
    }
}
