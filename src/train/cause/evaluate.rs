//! Measuring a head + probe on labelled images from cached features, the
//! same computation as the runtime (head → dot with the unit probe →
//! bilinear upsampling of the scores, or the guided refinement → argmax;
//! optional flip and multi-scale averaging),
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
use crate::pipeline::postprocess::{concept_scores, resample_scores, upsample_argmax};
use crate::pipeline::preprocess::Placement;
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
    /// Features of the same images at other input sizes (multi-scale
    /// averaging), same order.
    pub other_scales: Vec<(InputSpec, FeatureSet)>,
}

/// How a model's scores become labels when it is measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scoring {
    /// Average the head features with the mirrored image's.
    pub flip: bool,
    /// Average the scores of every input size (on the finest patch grid).
    pub multi_scale: bool,
    /// How the scores become labels at the label maps' size.
    pub refine: Refine,
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
        Ok(LabelledFeatures { set, flipped, labels, sizes, classes, ignore, other_scales: Vec::new() })
    }

    /// Adds the features of the same images at other input sizes, for
    /// [`Scoring::multi_scale`].
    pub fn with_other_scales(mut self, scales: Vec<(InputSpec, FeatureSet)>) -> Result<Self> {
        if scales.iter().any(|(_, set)| set.paths != self.set.paths) {
            return Err(TrainError::Invalid("features at another size do not match the images".into()));
        }
        self.other_scales = scales;
        Ok(self)
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

/// Per-patch features of grid `grid` the probe is applied to.
fn patch_features(grid: &Array3<f32>, flipped: Option<&Array3<f32>>, head: Option<&Head>) -> Result<Array3<f32>> {
    let apply = |g: &Array3<f32>| match head {
        Some(h) => h.apply(g.view()).map_err(|e| TrainError::Invalid(e.to_string())),
        None => Ok(g.clone()),
    };
    let features = apply(grid)?;
    Ok(match flipped {
        Some(f) => average_with_flipped(&features, &apply(f)?),
        None => features,
    })
}

/// Hungarian-matched metrics of `probe` (`[N, R]`) over the whole set (at
/// `input`, and with `scoring.multi_scale` at the other sizes too), the
/// scores turned into labels at the label maps' size as `scoring` says.
pub fn evaluate(data: &LabelledFeatures, head: Option<&Head>, probe: &Array2<f32>, input: &InputSpec, patch: u32, scoring: Scoring) -> Result<Metrics> {
    let (classes, ignore) = (data.classes, data.ignore);
    let probe = l2_normalize_rows(probe.clone());
    let preprocessor = |input: &InputSpec| Preprocessor::new(input.width, input.height, patch, input.mean, input.std, input.resize);
    let scales: Vec<(Preprocessor, &FeatureSet)> = std::iter::once((preprocessor(input), &data.set))
        .chain(data.other_scales.iter().filter(|_| scoring.multi_scale).map(|(input, set)| (preprocessor(input), set)))
        .collect();
    let mut confusion = Confusion::new(probe.nrows(), classes);
    for i in 0..data.set.len() {
        let flipped = data.flipped.as_ref().filter(|_| scoring.flip).map(|f| &f.grids[i]);
        let mut scored = vec![(concept_scores(patch_features(&data.set.grids[i], flipped, head)?.view(), &probe), scales[0].0.placement(data.sizes[i]))];
        for (preprocessor, set) in &scales[1..] {
            scored.push((concept_scores(patch_features(&set.grids[i], None, head)?.view(), &probe), preprocessor.placement(data.sizes[i])));
        }
        let (scores, placement) = average_scales(scored, patch);
        let truth = &data.labels[i];
        let predicted = match scoring.refine {
            Refine::None => upsample_argmax(&scores, &placement, patch, truth.width(), truth.height()),
            _ => {
                let image = crate::source::decode_file(&data.set.paths[i]).map_err(|e| TrainError::Invalid(e.to_string()))?;
                refined_labels(&scores, &placement, patch, &image, truth.dimensions(), scoring.refine)
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

/// The mean of score grids of one image at several input sizes, on the
/// finest grid (the others resampled bilinearly at its patch centres), with
/// that grid's placement.
fn average_scales(mut scored: Vec<(Array3<f32>, Placement)>, patch: u32) -> (Array3<f32>, Placement) {
    let finest = (0..scored.len()).max_by_key(|&i| scored[i].0.dim().0 * scored[i].0.dim().1).expect("at least one scale");
    let (mut sum, placement) = scored.swap_remove(finest);
    if scored.is_empty() {
        return (sum, placement);
    }
    let (rows, cols, _) = sum.dim();
    for (scores, placement) in &scored {
        sum += &resample_scores(scores, placement, patch, rows, cols);
    }
    sum /= (scored.len() + 1) as f32;
    (sum, placement)
}
