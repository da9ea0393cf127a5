//! The per-frame pipeline: preprocess → engine → postprocess, with timing.

pub mod postprocess;
pub mod preprocess;
pub mod segmenter;
pub mod timing;

pub use segmenter::{FeatureExtractor, SegmentError, Segmentation, Segmenter};
