//! Sinks: where label maps go (image files, per-frame stats, the live
//! browser preview, ROS 2 topics with feature `ros2`). The streaming loop drives any number of [`FrameSink`]s.

pub mod files;
pub mod preview;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod saver;
pub mod stats;

pub use files::{ImageSink, SinkError, Visualization};
pub use preview::{Preview, PreviewConfig, PreviewSink};
pub use saver::FrameImages;
pub use stats::StatsSink;

use image::GrayImage;

use crate::source::Frame;
use crate::timing::StageTimes;

/// A segmented frame on its way to the sinks.
#[derive(Debug, Clone)]
pub struct ProcessedFrame {
    /// The captured frame.
    pub frame: Frame,
    /// One concept id per pixel, at the frame's size.
    pub labels: GrayImage,
    /// Decode, preprocess, inference and postprocess times.
    pub times: StageTimes,
    /// Time the decoded frame waited for the model, in milliseconds.
    pub queue_ms: f64,
}


/// A destination for processed frames in the streaming loop.
pub trait FrameSink: Send {
    /// Handles one processed frame.
    fn write(&mut self, frame: &ProcessedFrame) -> Result<(), SinkError>;

    /// Makes everything written so far durable (called once at the end).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
