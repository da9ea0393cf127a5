//! The per-frame pipeline: preprocess → engine → postprocess, timed, behind
//! [`Segmenter`].

pub mod crf;
pub mod postprocess;
pub mod preprocess;
pub mod refine;
pub mod segmenter;

pub use segmenter::{PatchInference, SegmentError, Segmentation, Segmenter};
