//! `fit --method cause` end to end: backbone features of the training
//! images (and their five crops or random views), the input transform, the stages of
//! [`super::run::run`], an optional measurement on labelled images,
//! and the model directory.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::evaluate::{evaluate, LabelledFeatures, Scoring};
use crate::pipeline::refine::Refine;
use super::probe::kmeans_probe;
use super::run::{run, train_clusterbook, CauseOptions, CauseResult};
use super::self_training::{self_train_model, SelfTrainOptions};
use super::whiten::{InputTransform, WhiteningReport};
use super::{Result, TrainError};
use crate::eval::pair_by_stem;
use crate::head::{Head, HeadSpec};
use crate::train::features::FeatureSet;
use ndarray::Array2;
use crate::model::{Manifest, ModelWriter};
use crate::train::features::View;
use crate::train::{Extraction, FitJob};

/// Settings of `fit --method cause` around the stages.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// The stages' settings.
    pub stages: CauseOptions,
    /// Also train on CAUSE's five crops of every image.
    pub five_crop: bool,
    /// Also train on this many random views of every image (crop, mirror,
    /// photometric jitter: [`crate::train::augment`]).
    pub augment: usize,
    /// Which stages see those extra views.
    pub views_for: ViewsFor,
    /// Centre and PCA-whiten the tokens to this many dimensions (0: off).
    pub whiten: usize,
    /// With `whiten` 0: centre the tokens on their training mean.
    pub center_input: bool,
    /// Only train the clusterbook: the output gets `clusterbook.npy`, no model.
    pub clusterbook_only: bool,
    /// Self-train the written probe on principal mask proposals of the
    /// training images (whole views only) after the stages.
    pub self_train: Option<SelfTrainOptions>,
    /// Labelled images to measure on after training (labels never reach a
    /// training stage).
    pub validation: Option<Validation>,
}

impl FitOptions {
    /// Whether `fit` fits an input transform (centring or whitening): not
    /// when a head is reused, which carries its own.
    pub fn fits_transform(&self) -> bool {
        self.stages.head_from.is_none() && (self.center_input || self.whiten > 0)
    }

    /// Sets `views_for` and `five_crop` from the user's choices, `None`
    /// meaning "not given": by default the five crops shape the input
    /// whitening, as for the default model, when there is a transform to
    /// fit; without one there are no default crops, and given crops train
    /// every stage.
    pub fn choose_views(&mut self, views_for: Option<ViewsFor>, five_crop: Option<bool>) {
        let fits_transform = self.fits_transform();
        self.five_crop = five_crop.unwrap_or(views_for.is_none() && fits_transform);
        self.views_for = views_for.unwrap_or(if fits_transform { ViewsFor::Whitening } else { ViewsFor::All });
    }

    /// An error when the extra views would reach no stage: `--views-for
    /// whitening` without an input transform to fit.
    pub fn check_views_for(&self) -> Result<()> {
        if self.views_for == ViewsFor::Whitening && !self.fits_transform() {
            return Err(TrainError::Invalid("--views-for whitening needs an input transform to fit (--whiten D or --center-input, without --head-from)".into()));
        }
        Ok(())
    }

    /// The views of every training image that the stages see besides the
    /// image itself: the five crops, then the random views. The self-training
    /// stage and the measurements use whole images only.
    pub fn extra_views(&self) -> Vec<View> {
        let crops = if self.five_crop { &View::FULL_AND_FIVE_CROPS[1..] } else { &[][..] };
        crops.iter().copied().chain((0..self.augment).map(View::Augmented)).collect()
    }
}

/// " with five crops and 2 random views per image for the whitening only"
/// (empty without extra views), for the model's description.
fn views_description(options: &FitOptions) -> String {
    let n = options.augment;
    let views: Vec<String> = options
        .five_crop
        .then(|| "five crops".to_string())
        .into_iter()
        .chain((n > 0).then(|| format!("{n} random view{}", if n == 1 { "" } else { "s" })))
        .collect();
    match (views.is_empty(), options.views_for) {
        (true, _) => String::new(),
        (false, ViewsFor::All) => format!(" with {} per image", views.join(" and ")),
        (false, only) => format!(" with {} per image for the {} only", views.join(" and "), only.name()),
    }
}

/// Which stages train on the extra views of `--five-crop` and `--augment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewsFor {
    /// Every stage: input whitening, clusterbook, head and probe.
    #[default]
    All,
    /// Only the final cluster probe: the whitening, clusterbook and head
    /// train on the images alone (the head's training time stays that of
    /// the images), the probe clusters the head's outputs of the images and
    /// the views.
    Probe,
    /// Only the input whitening: its mean and principal directions come
    /// from the images and the views, every later stage trains on the
    /// images alone (needs an input transform).
    Whitening,
}

impl ViewsFor {
    /// The name `--views-for` and `training.json` use.
    pub fn name(self) -> &'static str {
        match self {
            ViewsFor::All => "all",
            ViewsFor::Probe => "probe",
            ViewsFor::Whitening => "whitening",
        }
    }

    /// Whether the input whitening is fitted on the extra views too.
    pub fn whitening(self) -> bool {
        matches!(self, ViewsFor::All | ViewsFor::Whitening)
    }

    /// Whether the final cluster probe is fitted on the extra views too.
    pub fn probe(self) -> bool {
        matches!(self, ViewsFor::All | ViewsFor::Probe)
    }
}

/// Labelled images to measure a fitted model on.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Image directory.
    pub images: PathBuf,
    /// Label PNGs (class ids) matching the images by file stem.
    pub labels: PathBuf,
    /// Number of classes in the labels.
    pub classes: usize,
    /// Label value left out of the metrics.
    pub ignore: Option<u8>,
    /// Also measure with flip averaging.
    pub flip: bool,
    /// Also measure the k-means baselines on raw and transformed tokens.
    pub baseline: bool,
}

/// Trains a CAUSE model on `job.images` and writes it to `job.out`.
pub fn fit(extraction: &Extraction, job: &FitJob, options: &FitOptions) -> Result<()> {
    if options.stages.head.batch == 0 {
        return Err(TrainError::Invalid("--batch must be at least 1".into()));
    }
    options.check_views_for()?;
    let started = Instant::now();
    let mut set = extraction.features(&job.images, View::Full, "features")?;
    let images_used = set.len();
    let whole_views = options.self_train.map(|_| FeatureSet { grids: set.grids.clone(), paths: set.paths.clone(), skipped: 0 });
    let paths = set.paths.clone();
    let views = options.extra_views();
    // Views every stage sees join the images; the others stay apart for
    // [`train`] to route.
    let mut held_views = FeatureSet::default();
    for (i, view) in views.iter().enumerate() {
        let features = extraction.features(&paths, *view, &format!("view {}/{}", i + 1, views.len()))?;
        match options.views_for {
            ViewsFor::All => set.append(features),
            ViewsFor::Probe | ViewsFor::Whitening => held_views.append(features),
        }
    }
    if set.is_empty() {
        return Err(TrainError::NoImages(format!("{} ({} files, none readable)", job.sources(), job.images.len())));
    }
    let (rows, cols, dim) = set.geometry()?;
    let held = match held_views.len() {
        0 => String::new(),
        n => format!(" (and {n} views for the {} only)", options.views_for.name()),
    };
    log::info!("{images_used} images ({} skipped), {} grids of {rows}x{cols} patches of {dim} features{held}", set.skipped, set.len());
    let baseline = options.validation.as_ref().is_some_and(|v| v.baseline);
    let raw_baseline = if baseline { Some(kmeans_probe(&set, job.concepts, job.seed)?) } else { None };
    let (skipped, grids) = (set.skipped, set.len() + held_views.len());
    let held_views = (!held_views.is_empty()).then_some(held_views);
    if options.clusterbook_only {
        let set = transform_input(set, held_views, options)?.set;
        let (codes, report) = train_clusterbook(&set, &options.stages.clusterbook)?;
        log::info!("clusterbook: loss {:.4}, {} codes used", report.final_loss, report.used_codes);
        let writer = ModelWriter::create(&job.out)?;
        writer.npy("clusterbook.npy", &codes)?;
        return Ok(writer.finish(None)?);
    }
    let mut trained = train(set, held_views, options, job.concepts, options.validation.is_some(), baseline)?;
    let mut self_train_report = None;
    if let (Some(self_train), Some(whole)) = (&options.self_train, &whole_views) {
        let started = Instant::now();
        let result = &mut trained.result;
        let kind = options.stages.probe;
        let probe = result.probe(kind).expect("the chosen probe is always fitted");
        let (head, probe, report) = self_train_model(whole, Some(&result.head), probe, self_train)?;
        result.head = head.expect("self-training keeps the head");
        result.probes.retain(|(k, _)| *k != kind);
        result.probes.push((kind, probe));
        result.seconds.push(("self-training", started.elapsed().as_secs_f64()));
        self_train_report = Some(report);
    }
    let Trained { result, transform, transformed_baseline } = &trained;
    for (stage, s) in &result.seconds {
        log::info!("{stage}: {s:.1} s");
    }

    // Measurement on labelled images (never used for training).
    let mut measured = Vec::new();
    if let Some(validation) = &options.validation {
        let pairs = pair_by_stem(&validation.images, &validation.labels).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let paths: Vec<PathBuf> = pairs.iter().map(|(i, _)| i.clone()).collect();
        let val = extraction.features(&paths, View::Full, "val features")?;
        let flipped = if validation.flip { Some(extraction.features(&val.paths, View::Mirrored, "mirrored val")?) } else { None };
        let labels: Vec<PathBuf> = val.paths.iter().map(|p| pairs.iter().find(|(i, _)| i == p).expect("paired").1.clone()).collect();
        let data = LabelledFeatures::new(val, flipped, &labels, validation.classes, validation.ignore)?;
        let patch = extraction.backbone.patch_size;
        let flips: &[bool] = if validation.flip { &[false, true] } else { &[false] };
        let probes = raw_baseline
            .iter()
            .map(|p| ("baseline-kmeans-raw".to_string(), None, p))
            .chain(transformed_baseline.iter().map(|(h, p)| ("baseline-kmeans-transformed".to_string(), Some(h), p)))
            .chain(result.probes.iter().map(|(kind, p)| (format!("{kind:?}").to_lowercase(), Some(&result.head), p)));
        for (name, head, probe) in probes {
            for &flip in flips {
                let m = evaluate(&data, head, probe, &extraction.input, patch, Scoring { flip, multi_scale: false, refine: Refine::None })?;
                log::info!("val: probe {name}, flip {flip}: mIoU {:.2} %, pixel accuracy {:.2} %", m.miou, m.pixel_accuracy);
                measured.push(json!({"probe": name, "flip": flip, "miou": m.miou, "pixel_accuracy": m.pixel_accuracy, "per_class_iou": m.per_class_iou}));
            }
        }
    }

    let probe_kind = options.stages.probe;
    let probe = result.probe(probe_kind).expect("the chosen probe is always fitted");
    let input = &extraction.input;
    let description = format!(
        "CAUSE-{}{}{}: clusterbook {} x {}, head {} -> {}, {:?} probe{} with {} concepts, seed {}, on {} images from {} at {}x{}",
        format!("{:?}", result.head.kind()).to_uppercase(),
        match transform {
            Some((t, r)) if t.projection.is_some() => format!(" on tokens whitened to {} dims", r.dims),
            Some(_) => " on centred tokens".to_string(),
            None => String::new(),
        },
        views_description(options),
        result.clusterbook.nrows(),
        result.clusterbook.ncols(),
        dim,
        result.head.output_dim(),
        probe_kind,
        if options.self_train.is_some() { " self-trained on mask proposals" } else { "" },
        job.concepts,
        job.seed,
        images_used,
        job.sources(),
        input.width,
        input.height
    );
    let mut manifest = Manifest::for_concepts(&job.model_name(), extraction.backbone.clone(), input.clone(), job.concepts, description);
    manifest.head = Some(HeadSpec {
        kind: result.head.kind(),
        dir: "head".into(),
        output_dim: result.head.output_dim(),
        clusterbook: Some("clusterbook.npy".into()),
    });
    let report = json!({
        "images": images_used,
        "five_crop": options.five_crop,
        "augment": options.augment,
        "views_for": options.views_for,
        "skipped": skipped,
        "training_grids": grids,
        "seconds": result.seconds.iter().map(|(s, t)| json!({"stage": s, "seconds": t})).collect::<Vec<_>>(),
        "total_seconds": started.elapsed().as_secs_f64(),
        "clusterbook": result.clusterbook_report.as_ref().map(|r| json!({"final_loss": r.final_loss, "used_codes": r.used_codes, "restarted": r.restarted})),
        "head": result.head_report,
        "head_options": options.stages.head,
        "probe": probe_kind,
        "self_training": self_train_report,
        "self_training_options": options.self_train,
        "input_transform": transform.as_ref().map(|(_, r)| r),
        "center_output": options.stages.center,
        "modularity_probe": result.probe_report.as_ref().map(|r| json!({"final_loss": r.final_loss, "used_codes": r.used_codes})),
        "validation": measured,
    });
    let writer = ModelWriter::create(&job.out)?;
    writer.npy(&manifest.concepts.centroids, probe)?;
    writer.npy("clusterbook.npy", &result.clusterbook)?;
    if let Some((t, _)) = transform {
        // The clusterbook lives in the transformed space: (x - mean) · projection.
        writer.npy("input_mean.npy", &t.mean)?;
        if let Some(p) = &t.projection {
            writer.npy("input_projection.npy", p)?;
        }
    }
    writer.head("head", &result.head)?;
    writer.text("training.json", &serde_json::to_string_pretty(&report).expect("json"))?;
    writer.finish(Some(&manifest))?;
    log::info!("trained in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A trained CAUSE model, before it is written.
pub struct Trained {
    /// The stages' output; the head already takes raw backbone tokens (the
    /// input transform is folded in).
    pub result: CauseResult,
    /// The input transform the stages ran in, and its report.
    pub transform: Option<(InputTransform, WhiteningReport)>,
    /// With `baselines`: k-means on the transformed tokens, as a head (the
    /// transform) and its probe.
    pub transformed_baseline: Option<(Head, Array2<f32>)>,
}

/// Centres / whitens the tokens of `set` as `options` ask (not when a head
/// is reused: it carries its own transform). With `ViewsFor::Whitening`
/// the transform is fitted on `set` and `views` together and the views are
/// dropped; otherwise `views` are transformed like `set` and returned.
fn transform_input(mut set: FeatureSet, views: Option<FeatureSet>, options: &FitOptions) -> Result<TransformedInput> {
    if !options.fits_transform() {
        return Ok(TransformedInput { set, probe_views: views, transform: None });
    }
    let (transform, report, mut views) = match views {
        Some(views) if options.views_for == ViewsFor::Whitening => {
            let images = set.len();
            set.append(views);
            let (transform, report) = InputTransform::fit(&set, options.whiten)?;
            drop(set.split_off(images));
            (transform, report, None)
        }
        views => {
            let (transform, report) = InputTransform::fit(&set, options.whiten)?;
            (transform, report, views)
        }
    };
    log::info!(
        "input transform: {} dims keep {:.1} % of the variance (top direction {:.1} %)",
        report.dims,
        100.0 * report.kept_variance,
        100.0 * report.top_direction_variance
    );
    transform.apply(&mut set);
    if let Some(views) = &mut views {
        transform.apply(views);
    }
    Ok(TransformedInput { set, probe_views: views, transform: Some((transform, report)) })
}

/// What [`transform_input`] returns.
struct TransformedInput {
    /// The training tokens, transformed.
    set: FeatureSet,
    /// The views for the probe only, transformed likewise.
    probe_views: Option<FeatureSet>,
    /// The fitted transform and its report (`None`: no transform fitted).
    transform: Option<(InputTransform, WhiteningReport)>,
}

/// Stage 0 (the input transform) and the stages of [`run`] on the backbone
/// features `set` (with the extra views that every stage sees appended),
/// label-free; `views` are the extra views that only some stages see, as
/// `options.views_for` says (the whitening, or the probe). The transform is
/// folded into the head. `compare_probes` also fits the probe that is not
/// written; `baselines` also fits k-means on the transformed tokens.
pub fn train(set: FeatureSet, views: Option<FeatureSet>, options: &FitOptions, concepts: usize, compare_probes: bool, baselines: bool) -> Result<Trained> {
    let TransformedInput { set, probe_views, transform } = transform_input(set, views, options)?;
    let transformed_baseline = match (&transform, baselines) {
        (Some((t, _)), true) => Some((t.as_head(), kmeans_probe(&set, concepts, options.stages.head.seed)?)),
        _ => None,
    };
    let mut result = run(&set, probe_views.as_ref(), &options.stages, concepts, compare_probes)?;
    if let Some((t, _)) = &transform {
        t.fold_into_head(&mut result.head);
    }
    Ok(Trained { result, transform, transformed_baseline })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::HeadKind;
    use crate::train::cause::probe::ProbeKind;
    use crate::train::features::blob_set;

    fn options(views_for: ViewsFor, whiten: usize) -> FitOptions {
        let stages = CauseOptions {
            clusterbook: Default::default(),
            clusterbook_file: None,
            head: Default::default(),
            head_from: None,
            arch: HeadKind::Mlp,
            probe: ProbeKind::Kmeans,
            probe_modularity: Default::default(),
            center: false,
        };
        FitOptions { stages, five_crop: true, augment: 0, views_for, whiten, center_input: false, clusterbook_only: false, self_train: None, validation: None }
    }

    /// The views shape the whitening only under `ViewsFor::Whitening`, and
    /// reach the probe (transformed like the images) only under `Probe`.
    #[test]
    fn the_input_transform_routes_the_views_as_views_for_says() {
        let (images, views) = (blob_set(3, 6, 1), blob_set(2, 6, 2));
        let mut together = blob_set(3, 6, 1);
        together.append(blob_set(2, 6, 2));
        let (on_images, _) = InputTransform::fit(&images, 3).unwrap();
        let (on_both, _) = InputTransform::fit(&together, 3).unwrap();
        assert_ne!(on_images.mean, on_both.mean, "the views must move the statistics for this test to mean anything");

        let TransformedInput { set, probe_views: rest, transform } = transform_input(blob_set(3, 6, 1), Some(blob_set(2, 6, 2)), &options(ViewsFor::Whitening, 3)).unwrap();
        let (transform, _) = transform.unwrap();
        assert_eq!((set.len(), rest.is_none()), (3, true), "the views are dropped after the whitening");
        assert_eq!((&transform.mean, &transform.projection), (&on_both.mean, &on_both.projection));
        let mut expected = blob_set(3, 6, 1);
        on_both.apply(&mut expected);
        assert_eq!(set.grids, expected.grids);

        let TransformedInput { set, probe_views: rest, transform } = transform_input(images, Some(views), &options(ViewsFor::Probe, 3)).unwrap();
        let (transform, _) = transform.unwrap();
        assert_eq!((&transform.mean, &transform.projection), (&on_images.mean, &on_images.projection));
        let (mut expected_views, rest) = (blob_set(2, 6, 2), rest.expect("the probe's views come back"));
        on_images.apply(&mut expected_views);
        assert_eq!((set.len(), &rest.grids), (3, &expected_views.grids));
    }

    #[test]
    fn views_for_whitening_without_a_transform_is_an_error() {
        let err = options(ViewsFor::Whitening, 0).check_views_for().unwrap_err().to_string();
        assert!(err.contains("--views-for whitening needs an input transform"), "{err}");
        assert!(options(ViewsFor::Whitening, 64).check_views_for().is_ok());
        assert!(options(ViewsFor::Probe, 0).check_views_for().is_ok());
    }

    /// Nothing given: the crops shape the whitening when one is fitted, and
    /// there are no crops without one; given choices are kept as they are.
    #[test]
    fn the_default_views_are_the_crops_for_the_whitening() {
        let chosen = |whiten, head_from: Option<&str>, views_for, five_crop| {
            let mut o = options(ViewsFor::All, whiten);
            o.five_crop = false;
            o.stages.head_from = head_from.map(Into::into);
            o.choose_views(views_for, five_crop);
            (o.views_for, o.five_crop, views_description(&o))
        };
        assert_eq!(chosen(64, None, None, None), (ViewsFor::Whitening, true, " with five crops per image for the whitening only".into()));
        assert_eq!(chosen(0, None, None, None), (ViewsFor::All, false, String::new()));
        assert_eq!(chosen(64, Some("m"), None, None), (ViewsFor::All, false, String::new()));
        assert_eq!(chosen(64, None, None, Some(false)), (ViewsFor::Whitening, false, String::new()));
        assert_eq!(chosen(0, None, None, Some(true)), (ViewsFor::All, true, " with five crops per image".into()));
        assert_eq!(chosen(64, None, Some(ViewsFor::Probe), None), (ViewsFor::Probe, false, String::new()));
        assert_eq!(chosen(64, None, Some(ViewsFor::All), Some(true)), (ViewsFor::All, true, " with five crops per image".into()));
        let mut o = options(ViewsFor::Probe, 64);
        o.augment = 2;
        assert_eq!(views_description(&o), " with five crops and 2 random views per image for the probe only");
    }
}
