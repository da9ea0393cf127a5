//! Inference engines: run the backbone on a preprocessed image tensor and
//! return its patch-token grid.
//!
//! Every backend implements [`Engine`]; tract (pure Rust, any CPU) is always
//! built, ONNX Runtime (CPU/CUDA/TensorRT) with the `ort` feature.

#[cfg(feature = "ort")]
pub mod onnxruntime;
pub mod tract;

use std::path::PathBuf;

use ndarray::{Array3, Array4};

/// Errors while loading or running a backbone.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The file could not be loaded or optimised as a model.
    #[error("{path}: cannot load as a backbone: {reason}")]
    Load { path: String, reason: String },
    /// The network's output is not a `[1, tokens, dim]` patch-token tensor.
    #[error("{path}: output has shape {shape}, expected [1, {tokens}, {dim}] patch tokens (is this a ViT backbone cut at its final LayerNorm?)")]
    NotABackbone { path: String, shape: String, tokens: usize, dim: usize },
    /// Inference itself failed.
    #[error("inference failed: {0}")]
    Run(String),
}

/// What a backend is asked to build: the backbone file and its fixed input.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    /// The backbone ONNX file.
    pub path: PathBuf,
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// ViT patch size.
    pub patch_size: u32,
    /// Token feature dimension.
    pub feature_dim: usize,
}

impl EngineSpec {
    /// Patch grid (rows, columns) of the input.
    pub fn grid(&self) -> (usize, usize) {
        ((self.height / self.patch_size) as usize, (self.width / self.patch_size) as usize)
    }

    /// Checks a backend's output shape and reshapes the tokens into the
    /// `[rows, cols, dim]` patch grid.
    pub fn to_grid(&self, shape: &[usize], data: Vec<f32>) -> Result<Array3<f32>, EngineError> {
        let (rows, cols) = self.grid();
        if shape != [1, rows * cols, self.feature_dim] {
            return Err(EngineError::NotABackbone {
                path: self.path.display().to_string(),
                shape: format!("{shape:?}"),
                tokens: rows * cols,
                dim: self.feature_dim,
            });
        }
        Ok(Array3::from_shape_vec((rows, cols, self.feature_dim), data).expect("shape checked above"))
    }
}

/// A loaded backbone that turns `[1, 3, H, W]` normalised images into
/// `[H/p, W/p, D]` patch features.
pub trait Engine: Send {
    /// Backend name for logs and reports (e.g. "tract", "onnxruntime-cpu").
    fn backend(&self) -> String;
    /// Runs the backbone on one image tensor.
    fn features(&mut self, input: Array4<f32>) -> Result<Array3<f32>, EngineError>;
}

/// The backends a user can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
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

/// Loads `spec` with `backend`.
pub fn load(backend: Backend, spec: &EngineSpec) -> Result<Box<dyn Engine>, EngineError> {
    match backend {
        Backend::Tract => Ok(Box::new(tract::TractEngine::load(spec)?)),
        #[cfg(feature = "ort")]
        other => Ok(Box::new(onnxruntime::OrtEngine::load(spec, other)?)),
        #[cfg(not(feature = "ort"))]
        other => Err(EngineError::Load {
            path: spec.path.display().to_string(),
            reason: format!("backend {other:?} needs causeseg built with `--features ort`"),
        }),
    }
}
