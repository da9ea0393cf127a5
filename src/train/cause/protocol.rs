//! The leave-one-drive-out protocol: concepts must hold on footage the
//! training never saw. Labelled images are grouped by drive (the file-stem
//! prefix before the first `_`, e.g. CamVid's `0001TP`, `0006R0`,
//! `0016E5`); for every drive, each method is fitted on the other drives'
//! images (labels unused) and measured on the held-out drive's images, for
//! every seed. Every number it reports comes from images the fitted model
//! never trained on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use ndarray::Array2;
use serde::Serialize;

use super::evaluate::{evaluate, read_label, LabelledFeatures, Scoring};
use super::fit::{train, FitOptions, ViewsFor};
use super::probe::kmeans_probe_of;
use super::reference::{class_means_probe, patch_majority};
use super::self_training::{self_train_model, SelfTrainOptions};
use super::whiten::InputTransform;
use super::{Result, TrainError};
use crate::head::Head;
use crate::model::manifest::InputSpec;
use crate::pipeline::preprocess::Preprocessor;
use crate::pipeline::refine::Refine;
use crate::train::features::{FeatureSet, View};
use crate::train::Extraction;

/// A way of fitting concepts that the protocol compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Spherical k-means on the raw backbone tokens.
    Kmeans,
    /// Spherical k-means on the tokens whitened (or, with `whiten` 0, centred) as CAUSE's stage 0 does.
    KmeansWhitened,
    /// The CAUSE stages with the given settings.
    Cause,
    /// A supervised reference, not a method to ship: the mean whitened
    /// token of every class of the training drives' labels
    /// ([`super::reference`]); what a perfect clustering could reach.
    ClassMeans,
}

/// One fitted model measured on one held-out drive.
#[derive(Debug, Clone, Serialize)]
pub struct FoldResult {
    /// The method.
    pub method: Method,
    /// Whether its probe was self-trained on mask proposals.
    pub self_trained: bool,
    /// The learning rate its head's projection was self-trained at, if it was.
    pub self_train_head: Option<f64>,
    /// Whether its features were averaged with the mirrored image's.
    pub flip: bool,
    /// Whether its scores were averaged over the input sizes of
    /// [`Plan::other_scales`] and the measuring size.
    pub multi_scale: bool,
    /// Whether it also trained on the five crops of every image.
    pub five_crop: bool,
    /// Random training views per image it also trained on.
    pub augment: usize,
    /// Which stages saw those views.
    pub views_for: ViewsFor,
    /// The input size it was measured at (WIDTH, HEIGHT).
    pub eval_size: (u32, u32),
    /// How its scores became labels.
    pub refine: Refine,
    /// The held-out drive.
    pub drive: String,
    /// The seed.
    pub seed: u64,
    /// Training images (the other drives).
    pub train_images: usize,
    /// Held-out images measured.
    pub test_images: usize,
    /// Hungarian-matched mIoU, percent.
    pub miou: f64,
    /// Pixel accuracy, percent.
    pub pixel_accuracy: f64,
    /// IoU per class, percent (None: class absent and never predicted).
    pub per_class_iou: Vec<Option<f64>>,
    /// Concepts that win no pixel of the held-out drive.
    pub dead_concepts: usize,
    /// Seconds the fit took.
    pub fit_seconds: f64,
}

/// The drive of an image: its file stem up to the first `_`.
pub fn drive_of(path: &std::path::Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.split('_').next().unwrap_or_default().to_string()
}

/// Which runs the protocol makes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Methods compared.
    pub methods: Vec<Method>,
    /// Seeds of every method.
    pub seeds: Vec<u64>,
    /// Drives held out, one fold each (empty: every drive).
    pub hold_out: Vec<String>,
    /// Refinements each fitted model is measured with.
    pub refines: Vec<Refine>,
    /// Also measure every fitted model with its probe self-trained with
    /// these settings (seeded per run).
    pub self_train: Option<SelfTrainOptions>,
    /// Measure at this input (size) instead of the training input.
    pub eval_input: Option<InputSpec>,
    /// Also measure with flip averaging.
    pub flip: bool,
    /// Also measure with the scores averaged over the measuring size and
    /// these input sizes (multi-scale averaging).
    pub other_scales: Vec<InputSpec>,
}

/// Runs every method on every fold and seed of `plan`. `pairs` are (image,
/// label) files; as many concepts as `classes` are fitted (the unsupervised
/// protocol).
pub fn run_protocol(
    extraction: &Extraction,
    pairs: &[(PathBuf, PathBuf)],
    classes: usize,
    ignore: Option<u8>,
    plan: &Plan,
    options: &FitOptions,
    mut report: impl FnMut(&FoldResult),
) -> Result<Vec<FoldResult>> {
    let Plan { methods, seeds, hold_out, refines, self_train, eval_input, flip, other_scales } = plan;
    if methods.contains(&Method::Cause) {
        options.check_views_for()?;
    }
    let images: Vec<PathBuf> = pairs.iter().map(|(i, _)| i.clone()).collect();
    let full = extraction.features(&images, View::Full, "features")?;
    let measuring = Extraction { input: eval_input.clone().unwrap_or_else(|| extraction.input.clone()), ..extraction.clone() };
    let resized = measuring.input != extraction.input;
    // Extra training views (five crops, random views) of every image; the
    // held-out drive's are never read.
    let views = options.extra_views();
    let extra: Vec<FeatureSet> =
        views.iter().enumerate().map(|(i, view)| extraction.features(&full.paths, *view, &format!("view {}/{}", i + 1, views.len()))).collect::<Result<_>>()?;
    let mut by_drive: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, path) in full.paths.iter().enumerate() {
        by_drive.entry(drive_of(path)).or_default().push(i);
    }
    if by_drive.len() < 2 {
        return Err(TrainError::Invalid(format!("the images come from {} drive(s); leaving one out needs at least two", by_drive.len())));
    }
    if let Some(unknown) = hold_out.iter().find(|d| !by_drive.contains_key(*d)) {
        let known: Vec<&str> = by_drive.keys().map(String::as_str).collect();
        return Err(TrainError::Invalid(format!("no image of drive '{unknown}' to hold out; the drives are {}", known.join(", "))));
    }
    let subset = |set: &FeatureSet, indices: &[usize]| FeatureSet {
        grids: indices.iter().map(|&i| set.grids[i].clone()).collect(),
        paths: indices.iter().map(|&i| set.paths[i].clone()).collect(),
        skipped: 0,
    };
    let copy = |set: &FeatureSet| subset(set, &(0..set.len()).collect::<Vec<_>>());
    let label_of = |path: &PathBuf| pairs.iter().find(|(i, _)| i == path).expect("paired").1.clone();
    let patch = extraction.backbone.patch_size;
    let mut results = Vec::new();
    for (drive, test) in by_drive.iter().filter(|(d, _)| hold_out.is_empty() || hold_out.contains(d)) {
        let train_indices: Vec<usize> = (0..full.len()).filter(|i| !test.contains(i)).collect();
        let train_set = subset(&full, &train_indices);
        // The training images' extra views, and the images with them; the
        // whitening and the probes fit on the views when `views_for` says so
        // (self-training and the class-means reference use the images only).
        let mut views = FeatureSet::default();
        for view in &extra {
            views.append(subset(view, &train_indices));
        }
        let mut with_views = copy(&train_set);
        if options.views_for == ViewsFor::All {
            with_views.append(std::mem::take(&mut views));
        } else {
            with_views.append(copy(&views));
        }
        let whitening_set = if options.views_for.whitening() { &with_views } else { &train_set };
        let probe_set = if options.views_for.probe() { &with_views } else { &train_set };
        // Only the held-out images are measured: their features at the
        // measuring size (and mirrored) are computed here, once per fold.
        let test_set = subset(&full, test);
        let test_set = if resized { measuring.features(&test_set.paths, View::Full, "eval features")? } else { test_set };
        let mirrored = if *flip { Some(measuring.features(&test_set.paths, View::Mirrored, "mirrored")?) } else { None };
        let labels: Vec<PathBuf> = test_set.paths.iter().map(label_of).collect();
        let scales = other_scales
            .iter()
            .map(|input| {
                let at = Extraction { input: input.clone(), ..extraction.clone() };
                Ok((input.clone(), at.features(&test_set.paths, View::Full, &format!("features at {}x{}", input.width, input.height))?))
            })
            .collect::<Result<_>>()?;
        let data = LabelledFeatures::new(test_set, mirrored, &labels, classes, ignore)?.with_other_scales(scales)?;
        let flips: &[bool] = if *flip { &[false, true] } else { &[false] };
        let multi_scales: &[bool] = if other_scales.is_empty() { &[false] } else { &[false, true] };
        let mut scorings = Vec::new();
        for &flip in flips {
            for &multi_scale in multi_scales {
                scorings.extend(refines.iter().map(|&refine| Scoring { flip, multi_scale, refine }));
            }
        }
        // Only the class-means reference reads the training drives' labels.
        let training_majorities = || -> Result<Vec<Vec<Option<usize>>>> {
            let (rows, cols, _) = train_set.geometry()?;
            let preprocessor = Preprocessor::new(extraction.input.width, extraction.input.height, patch, extraction.input.mean, extraction.input.std, extraction.input.resize);
            train_set
                .paths
                .iter()
                .map(|image| {
                    let truth = read_label(&label_of(image))?;
                    let size = image::image_dimensions(image).map_err(|e| TrainError::Invalid(format!("{}: {e}", image.display())))?;
                    Ok(patch_majority(&truth, &preprocessor.placement(size), patch, rows, cols, classes))
                })
                .collect()
        };
        for &method in methods {
            for &seed in seeds {
                let started = Instant::now();
                let (head, probe): (Option<Head>, Array2<f32>) = match method {
                    Method::Kmeans => (None, kmeans_probe_of(options.stages.probe, probe_set, classes, seed)?),
                    Method::KmeansWhitened => {
                        let (transform, _) = InputTransform::fit(whitening_set, options.whiten)?;
                        let mut whitened = copy(probe_set);
                        transform.apply(&mut whitened);
                        (Some(transform.as_head()), kmeans_probe_of(options.stages.probe, &whitened, classes, seed)?)
                    }
                    Method::ClassMeans => {
                        let (transform, _) = InputTransform::fit(&train_set, options.whiten)?;
                        let mut whitened = copy(&train_set);
                        transform.apply(&mut whitened);
                        (Some(transform.as_head()), class_means_probe(&whitened, &training_majorities()?, classes))
                    }
                    Method::Cause => {
                        let seeded = FitOptions { stages: options.stages.with_seed(seed), ..options.clone() };
                        // Views every stage sees go in with the images; the others
                        // apart, for `train` to route.
                        let trained = if options.views_for == ViewsFor::All {
                            train(copy(&with_views), None, &seeded, classes, false, false)?
                        } else {
                            train(copy(&train_set), (!views.is_empty()).then(|| copy(&views)), &seeded, classes, false, false)?
                        };
                        let probe = trained.result.probe(seeded.stages.probe).expect("the chosen probe is fitted").clone();
                        (Some(trained.result.head), probe)
                    }
                };
                let mut models = vec![(false, head, probe, started.elapsed().as_secs_f64())];
                if let Some(options) = self_train.as_ref().filter(|_| method != Method::ClassMeans) {
                    let (head, trained, _) = self_train_model(&train_set, models[0].1.as_ref(), &models[0].2, &SelfTrainOptions { seed, ..*options })?;
                    models.push((true, head, trained, started.elapsed().as_secs_f64()));
                }
                for (self_trained, head, probe, fit_seconds) in &models {
                    for &scoring in &scorings {
                        let measured = evaluate(&data, head.as_ref(), probe, &measuring.input, patch, scoring)?;
                        let Scoring { flip, multi_scale, refine } = scoring;
                        let result = FoldResult {
                            method,
                            self_trained: *self_trained,
                            self_train_head: self_train.as_ref().and_then(|o| o.head_lr).filter(|_| *self_trained && head.is_some()),
                            flip,
                            multi_scale,
                            five_crop: options.five_crop,
                            augment: options.augment,
                            views_for: options.views_for,
                            eval_size: (measuring.input.width, measuring.input.height),
                            refine,
                            drive: drive.clone(),
                            seed,
                            train_images: train_indices.len(),
                            test_images: test.len(),
                            miou: measured.miou,
                            pixel_accuracy: measured.pixel_accuracy,
                            per_class_iou: measured.per_class_iou.clone(),
                            dead_concepts: measured.dead_clusters,
                            fit_seconds: *fit_seconds,
                        };
                        report(&result);
                        results.push(result);
                    }
                }
            }
        }
    }
    Ok(results)
}

/// Mean and sample standard deviation.
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// The results as a Markdown table: per method and refinement, mIoU / pixel accuracy per
/// held-out drive and over the folds, each as mean ± sd over seeds (the
/// fold mean is averaged per seed first, then over seeds).
pub fn table(results: &[FoldResult]) -> String {
    let mut methods: Vec<(Method, bool, bool, bool, Refine)> = Vec::new();
    let mut drives: Vec<String> = Vec::new();
    for r in results {
        let row = (r.method, r.self_trained, r.flip, r.multi_scale, r.refine);
        if !methods.contains(&row) {
            methods.push(row);
        }
        if !drives.contains(&r.drive) {
            drives.push(r.drive.clone());
        }
    }
    let cell = |miou: &[f64], acc: &[f64]| {
        let ((m, m_sd), (a, a_sd)) = (mean_sd(miou), mean_sd(acc));
        format!("{m:.1} ± {m_sd:.1} / {a:.1} ± {a_sd:.1}")
    };
    let mut out = String::from("| method (mIoU / pixel accuracy, %) |");
    for d in &drives {
        out += &format!(" held-out {d} |");
    }
    out += " mean of folds |\n|---|";
    out += &"---|".repeat(drives.len() + 1);
    out += "\n";
    for &(method, self_trained, flip, multi_scale, refine) in &methods {
        let of = |drive: Option<&str>, seed: Option<u64>| -> Vec<&FoldResult> {
            results.iter().filter(|r| (r.method, r.self_trained, r.flip, r.multi_scale, r.refine) == (method, self_trained, flip, multi_scale, refine) && drive.is_none_or(|d| r.drive == d) && seed.is_none_or(|s| r.seed == s)).collect()
        };
        let kebab = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let mut name = kebab(serde_json::to_value(method).expect("serialisable"));
        if self_trained {
            name += " + self-train";
            if of(None, None).iter().any(|r| r.self_train_head.is_some()) {
                name += " (head too)";
            }
        }
        if flip {
            name += " + flip";
        }
        if multi_scale {
            name += " + multi-scale";
        }
        match refine {
            Refine::None => out += &format!("| {name} |"),
            _ => out += &format!("| {name} + {} |", kebab(serde_json::to_value(refine).expect("serialisable"))),
        }
        for d in &drives {
            let rs = of(Some(d), None);
            let miou: Vec<f64> = rs.iter().map(|r| r.miou).collect();
            let acc: Vec<f64> = rs.iter().map(|r| r.pixel_accuracy).collect();
            out += &format!(" {} |", cell(&miou, &acc));
        }
        let mut seeds: Vec<u64> = of(None, None).iter().map(|r| r.seed).collect();
        seeds.sort();
        seeds.dedup();
        let per_seed = |f: fn(&FoldResult) -> f64| -> Vec<f64> {
            seeds.iter().map(|&s| mean_sd(&of(None, Some(s)).iter().map(|r| f(r)).collect::<Vec<_>>()).0).collect()
        };
        out += &format!(" {} |\n", cell(&per_seed(|r| r.miou), &per_seed(|r| r.pixel_accuracy)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(method: Method, drive: &str, seed: u64, miou: f64) -> FoldResult {
        FoldResult {
            method,
            self_trained: false,
            self_train_head: None,
            flip: false,
            multi_scale: false,
            five_crop: false,
            augment: 0,
            views_for: ViewsFor::All,
            eval_size: (448, 336),
            refine: Refine::None,
            drive: drive.into(),
            seed,
            train_images: 2,
            test_images: 1,
            miou,
            pixel_accuracy: 2.0 * miou,
            per_class_iou: vec![],
            dead_concepts: 0,
            fit_seconds: 0.0,
        }
    }

    #[test]
    fn drives_are_stem_prefixes() {
        assert_eq!(drive_of(std::path::Path::new("/x/0016E5_08159.jpg")), "0016E5");
        assert_eq!(drive_of(std::path::Path::new("plain.png")), "plain");
    }

    #[test]
    fn the_table_averages_folds_per_seed_then_seeds() {
        // Seed 0: folds 10 and 20 → 15; seed 1: folds 20 and 30 → 25.
        let results = [
            result(Method::Kmeans, "A", 0, 10.0),
            result(Method::Kmeans, "B", 0, 20.0),
            result(Method::Kmeans, "A", 1, 20.0),
            result(Method::Kmeans, "B", 1, 30.0),
        ];
        let table = table(&results);
        assert!(table.starts_with("| method (mIoU / pixel accuracy, %) | held-out A | held-out B | mean of folds |\n|---|---|---|---|\n"), "{table}");
        let row = table.lines().nth(2).unwrap();
        // Held-out A: 15 ± 7.1; mean of folds: 20 ± 7.1 (of 15 and 25).
        assert_eq!(row, "| kmeans | 15.0 ± 7.1 / 30.0 ± 14.1 | 25.0 ± 7.1 / 50.0 ± 14.1 | 20.0 ± 7.1 / 40.0 ± 14.1 |", "{table}");
    }

    #[test]
    fn refinements_and_self_training_get_rows_of_their_own() {
        let refined = FoldResult { refine: Refine::Guided, ..result(Method::Cause, "A", 0, 30.0) };
        let self_trained = FoldResult { self_trained: true, ..refined.clone() };
        let table = table(&[result(Method::Cause, "A", 0, 10.0), refined, self_trained]);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| cause | 10.0 ± 0.0 / 20.0 ± 0.0 | 10.0 ± 0.0 / 20.0 ± 0.0 |",
                "| cause + guided | 30.0 ± 0.0 / 60.0 ± 0.0 | 30.0 ± 0.0 / 60.0 ± 0.0 |",
                "| cause + self-train + guided | 30.0 ± 0.0 / 60.0 ± 0.0 | 30.0 ± 0.0 / 60.0 ± 0.0 |"
            ],
            "{table}"
        );
    }
}
