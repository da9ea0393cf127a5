//! causeseg: CAUSE unsupervised semantic segmentation on robots.
//!
//! Data flow (one module per stage):
//! `source` (images, cameras) → `pipeline::preprocess` → `engine` (tract,
//! ONNX Runtime) → `pipeline::postprocess` → `sink` (files, stats), driven by
//! `pipeline::Segmenter`. Offline tools: `model` (manifests, backbone fetch
//! and import), `onnx` (graph editing), `fit` (learning concepts from
//! unlabelled images), `eval` (unsupervised segmentation metrics).

pub mod engine;
pub mod eval;
pub mod fit;
pub mod model;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod sink;
#[cfg(feature = "train")]
pub mod train;
pub mod source;

pub use pipeline::{Segmentation, Segmenter};
