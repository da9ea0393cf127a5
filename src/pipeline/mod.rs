//! The per-frame pipeline: preprocess → engine → postprocess, with timing,
//! and the threaded streaming loop around it.

pub mod head;
pub mod latest;
pub mod postprocess;
pub mod preprocess;
pub mod segmenter;
pub mod stream;
pub mod timing;
pub mod tr_head;

pub use segmenter::{FeatureExtractor, SegmentError, Segmentation, Segmenter};
