//! Measuring a head + probe on labelled images from cached features, the
//! same computation as the runtime (head → dot with the unit probe →
//! bilinear upsampling of the scores, or the guided refinement → argmax;
//! optional flip averaging),
//! without re-running the backbone per experiment. Labels are read here
//! only; no training stage sees them.

use std::path::{Path, PathBuf};

use image::GrayImage;
use ndarray::{Array2, Array3};

use super::{Result, TrainError};
use crate::eval::metrics::{Confusion, Metrics};
use crate::head::{average_with_flipped, Head};
use crate::linalg::l2_normalize_rows;
use crate::model::manifest::InputSpec;
use crate::pipeline::postprocess::{concept_scores, upsample_argmax};
use crate::pipeline::preprocess::Preprocessor;
use crate::pipeline::refine::{refined_labels, Refine};
use crate::train::features::FeatureSet;

/// Features (and optionally those of the mirrored images) with labels.
pub struct LabelledFeatures {
    /// Features of the images.
    pub set: FeatureSet,
    /// Features of the horizontally mirrored images, same order.
    pub flipped: Option<FeatureSet>,
    /// Label maps, same order.
    pub labels: Vec<GrayImage>,
    /// Source image sizes, same order.
    pub sizes: Vec<(u32, u32)>,
    /// Number of classes in the labels.
    pub classes: usize,
    /// Label value left out of the metrics.
    pub ignore: Option<u8>,
}

impl LabelledFeatures {
    /// Pairs feature sets with label files (`labels[i]` for `set.paths[i]`)
    /// holding `classes` class ids, `ignore` left out of the metrics.
    pub fn new(set: FeatureSet, flipped: Option<FeatureSet>, label_paths: &[PathBuf], classes: usize, ignore: Option<u8>) -> Result<Self> {
        let mut labels = Vec::new();
        let mut sizes = Vec::new();
        for (image, label) in set.paths.iter().zip(label_paths) {
            labels.push(read_label(label)?);
            sizes.push(image::image_dimensions(image).map_err(|e| TrainError::Invalid(format!("{}: {e}", image.display())))?);
        }
        if let Some(f) = &flipped {
            if f.len() != set.len() {
                return Err(TrainError::Invalid("mirrored features do not match the images".into()));
            }
        }
        Ok(LabelledFeatures { set, flipped, labels, sizes, classes, ignore })
    }
}

/// A label map: a single-channel PNG of class ids.
pub fn read_label(path: &Path) -> Result<GrayImage> {
    let truth = image::open(path).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    if truth.color().channel_count() != 1 {
        return Err(TrainError::Invalid(format!("{}: expected a single-channel class-id PNG", path.display())));
    }
    Ok(truth.into_luma8())
}

/// Per-patch features the probe is applied to.
fn patch_features(data: &LabelledFeatures, i: usize, head: Option<&Head>, flip: bool) -> Result<Array3<f32>> {
    let apply = |g: &Array3<f32>| match head {
        Some(h) => h.apply(g.view()).map_err(|e| TrainError::Invalid(e.to_string())),
        None => Ok(g.clone()),
    };
    let features = apply(&data.set.grids[i])?;
    Ok(match (&data.flipped, flip) {
        (Some(f), true) => average_with_flipped(&features, &apply(&f.grids[i])?),
        _ => features,
    })
}

/// Hungarian-matched metrics of `probe` (`[N, R]`) over the whole set, the
/// scores turned into labels at the label maps' size as `refine` says.
pub fn evaluate(
    data: &LabelledFeatures,
    head: Option<&Head>,
    probe: &Array2<f32>,
    flip: bool,
    input: &InputSpec,
    patch: u32,
    refine: Refine,
) -> Result<Metrics> {
    let (classes, ignore) = (data.classes, data.ignore);
    let probe = l2_normalize_rows(probe.clone());
    let preprocessor = Preprocessor::new(input.width, input.height, patch, input.mean, input.std, input.resize);
    let mut confusion = Confusion::new(probe.nrows(), classes);
    for i in 0..data.set.len() {
        let features = patch_features(data, i, head, flip)?;
        let scores = concept_scores(features.view(), &probe);
        let truth = &data.labels[i];
        let placement = preprocessor.placement(data.sizes[i]);
        let predicted = match refine {
            Refine::None => upsample_argmax(&scores, &placement, patch, truth.width(), truth.height()),
            _ => {
                let image = crate::source::decode_file(&data.set.paths[i]).map_err(|e| TrainError::Invalid(e.to_string()))?;
                refined_labels(&scores, &placement, patch, &image, truth.dimensions(), refine)
            }
        };
        for (&p, &t) in predicted.as_raw().iter().zip(truth.as_raw()) {
            if Some(t) == ignore {
                continue;
            }
            if t as usize >= classes {
                return Err(TrainError::Invalid(format!("{}: label {t} is not below --classes {classes}", data.set.paths[i].display())));
            }
            confusion.add(p as usize, t as usize);
        }
    }
    Ok(confusion.metrics())
}
