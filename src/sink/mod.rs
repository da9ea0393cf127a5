//! Sinks: where label maps go (image files now; ROS 2 topics later).

pub mod files;

pub use files::{ImageSink, Visualization};
