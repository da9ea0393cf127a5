//! Sinks: where label maps go (image files, per-frame stats; ROS 2 topics
//! later). The streaming loop drives any number of [`FrameSink`]s.

pub mod files;
pub mod saver;
pub mod stats;

pub use files::{ImageSink, SinkError, Visualization};
pub use saver::FrameImages;
pub use stats::StatsSink;

use crate::pipeline::stream::ProcessedFrame;

/// A destination for processed frames in the streaming loop.
pub trait FrameSink: Send {
    /// Handles one processed frame.
    fn write(&mut self, frame: &ProcessedFrame) -> Result<(), SinkError>;

    /// Makes everything written so far durable (called once at the end).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
