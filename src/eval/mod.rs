//! `causeseg eval`: score a model against labelled images with the
//! unsupervised protocol (Hungarian matching over the whole split).

pub mod metrics;
pub mod plot;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use metrics::{Confusion, Metrics};

use crate::pipeline::{SegmentError, Segmenter};
use crate::source::{decode_file, list_images, DecodeError};

/// Errors of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A directory could not be listed.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// No image has a label with the same file stem.
    #[error("no label in {labels} matches an image in {images} (labels are matched to images by file stem, e.g. a.jpg ↔ a.png)")]
    NoPairs {
        /// The image directory.
        images: PathBuf,
        /// The label directory.
        labels: PathBuf,
    },
    /// A label file is unreadable.
    #[error("{path}: cannot read label image: {reason}")]
    BadLabel {
        /// The label file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A label holds a class id outside `0..classes` that is not the ignore id.
    #[error("{path}: label value {value} is not below --classes {classes} and is not the ignore id")]
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// The offending value.
        value: u8,
        /// The number of classes.
        classes: usize,
    },
    /// An image could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Segmenting an image failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// Pairs each image in `images` with the label in `labels` of the same stem.
/// Images without a label are left out (and logged).
pub fn pair_by_stem(images: &Path, labels: &Path) -> Result<Vec<(PathBuf, PathBuf)>, EvalError> {
    let list = |dir: &Path| list_images(dir).map_err(|source| EvalError::Io { path: dir.into(), source });
    let label_files = list(labels)?;
    let mut pairs = Vec::new();
    for image in list(images)? {
        let stem = image.file_stem();
        match label_files.iter().find(|l| l.file_stem() == stem) {
            Some(label) => pairs.push((image, label.clone())),
            None => log::warn!("{}: no label with the same stem, skipped", image.display()),
        }
    }
    if pairs.is_empty() {
        return Err(EvalError::NoPairs { images: images.into(), labels: labels.into() });
    }
    Ok(pairs)
}

/// Segments one image at its label's resolution and counts it into a
/// confusion matrix (pixels labelled `ignore` are skipped).
pub fn confusion_for(segmenter: &mut Segmenter, image: &Path, label: &Path, classes: usize, ignore: Option<u8>) -> Result<Confusion, EvalError> {
    let bad_label = |reason: String| EvalError::BadLabel { path: label.into(), reason };
    let truth = image::open(label).map_err(|e| bad_label(e.to_string()))?;
    if truth.color().channel_count() != 1 {
        return Err(bad_label(format!("expected a single-channel class-id PNG, found {:?}", truth.color())));
    }
    let truth = truth.into_luma8();
    let rgb = decode_file(image)?;
    let predicted = segmenter.segment(&rgb, &image.display().to_string(), Some(truth.dimensions()))?;
    let mut confusion = Confusion::new(segmenter.model().num_concepts(), classes);
    for (&p, &t) in predicted.labels.as_raw().iter().zip(truth.as_raw()) {
        if Some(t) == ignore {
            continue;
        }
        if t as usize >= classes {
            return Err(EvalError::LabelOutOfRange { path: label.into(), value: t, classes });
        }
        confusion.add(p as usize, t as usize);
    }
    Ok(confusion)
}

/// What `causeseg eval --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Model name from the manifest.
    pub model: String,
    /// Model input size, "WxH".
    pub input_size: String,
    /// Backend that ran the backbone.
    pub backend: String,
    /// Images evaluated.
    pub images: usize,
    /// Number of predicted clusters.
    pub clusters: usize,
    /// Number of ground-truth classes.
    pub classes: usize,
    /// Mean IoU, percent.
    pub miou: f64,
    /// Pixel accuracy, percent.
    pub pixel_accuracy: f64,
    /// IoU per class, percent (`null`: class absent).
    pub per_class_iou: Vec<Option<f64>>,
    /// Class matched to each cluster (`null`: unmatched).
    pub assignment: Vec<Option<usize>>,
}
