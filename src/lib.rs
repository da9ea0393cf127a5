//! causeseg: CAUSE unsupervised semantic segmentation on robots.
//!
//! The module tree follows the data flow:
//!
//! ```text
//! source ──frames──> pipeline (preprocess → engine → postprocess) ──labels──> sink
//!    └──────────────── stream: the threaded real-time loop around them ────────┘
//! ```
//!
//! - [`source`]: image files, cameras, GStreamer; decoding.
//! - [`pipeline`]: [`Segmenter`] (preprocess, the model's fused graph on an
//!   [`engine`], upsampling and argmax).
//! - [`sink`]: image files, per-frame stats, the live preview, ROS 2 topics
//!   ([`ros2`]: messages, names, the node; feature `ros2`).
//! - [`stream`]: capture, inference and output threads ([`Stream`]).
//!
//! Below them, the model files: [`model`] (manifest, backbone cache, the
//! fused graph, the bundled default model), [`head`] (the CAUSE head: its
//! weights, forward pass, ONNX emission and training forward), [`onnx`]
//! (reading and editing graphs). Beside them, the offline tools: [`train`]
//! (`fit`: k-means and CAUSE), [`eval`] (Hungarian-matched metrics) and
//! [`calibrate`] (int8 models from calibration images).
//!
//! ```no_run
//! use causeseg::{EngineChoice, EngineConfig, Model, Segmenter};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = causeseg::model::backbone::cache_dir(None);
//! let model = Model::load(&causeseg::model::bundled::default_model_dir(&cache)?)?;
//! let mut segmenter = Segmenter::new(model, &EngineConfig::new(EngineChoice::Auto, &cache), &cache)?;
//! let labels = segmenter.segment(&image::RgbImage::new(640, 480), "frame", None)?.labels;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod calibrate;
pub mod engine;
pub mod errors;
pub mod eval;
pub mod head;
pub mod linalg;
pub mod model;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod ros2;
pub mod sink;
pub mod source;
pub mod stream;
pub mod timing;
pub mod train;

pub use engine::{EngineChoice, EngineConfig};
pub use model::Model;
pub use pipeline::{Segmentation, Segmenter};
pub use sink::{FrameImages, FrameSink, ImageSink, StatsSink};
pub use source::{FrameSource, ImageFiles, SourceOptions, SourceUri};
pub use stream::{Stream, StreamConfig, StreamReport};
