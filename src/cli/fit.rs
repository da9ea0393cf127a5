//! `causeseg fit`: learn concepts from unlabelled images.

use std::path::{Path, PathBuf};

use causeseg::fit::{collect_images, feature_cache::FeatureCache, fit_kmeans, kmeans::KMeansOptions, kmeans_manifest};
use causeseg::model::backbone::{self, DINOV2_VITS14};
use causeseg::model::manifest::{InputSpec, IMAGENET_MEAN, IMAGENET_STD};
use causeseg::pipeline::preprocess::ResizePolicy;
use causeseg::engine::Backend;
use causeseg::pipeline::FeatureExtractor;

/// How concepts are learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Spherical k-means over backbone patch features.
    Kmeans,
    /// CAUSE: concept clusterbook, concept-wise contrastive head, cluster
    /// probe (needs a build with `--features train`).
    Cause,
}

#[derive(Debug, clap::Args)]
pub struct FitArgs {
    /// Learning method.
    #[arg(long, value_enum, default_value = "kmeans")]
    method: Method,
    /// Number of concepts.
    #[arg(long)]
    clusters: usize,
    /// Directory of unlabelled training images (repeatable).
    #[arg(long, required = true)]
    images: Vec<PathBuf>,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model input size, WIDTHxHEIGHT (multiples of the patch size).
    #[arg(long, value_parser = super::parse_size, default_value = "448x336")]
    size: (u32, u32),
    /// How images are fitted to the input size.
    #[arg(long, value_enum, default_value_t = ResizePolicy::Stretch)]
    resize: ResizePolicy,
    /// Backbone file in the cache (the default one, or one added by `models import`).
    #[arg(long, default_value = DINOV2_VITS14.file)]
    backbone: String,
    /// Inference backend for feature extraction.
    #[arg(long, value_enum, default_value_t = Backend::Tract)]
    backend: Backend,
    #[command(flatten)]
    cause: cause::CauseArgs,
}

pub fn run(args: FitArgs, cache: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.clusters >= 1 && args.clusters <= 255, "--clusters must be between 1 and 255, got {}", args.clusters);
    let reference = backbone::reference(&args.backbone, cache)?;
    let (width, height) = args.size;
    let p = reference.patch_size;
    anyhow::ensure!(width % p == 0 && height % p == 0, "--size {width}x{height} is not a multiple of the backbone's patch size {p}");
    let input = InputSpec { width, height, mean: IMAGENET_MEAN, std: IMAGENET_STD, resize: args.resize };
    let images = collect_images(&args.images)?;
    log::info!("fitting {} concepts on {} images at {width}x{height}", args.clusters, images.len());
    if args.method == Method::Cause {
        let context = cause::Context {
            clusters: args.clusters,
            sources: &args.images,
            out: &args.out,
            seed: args.seed,
            reference: &reference,
            input: &input,
            backend: args.backend,
            cache,
        };
        return cause::run(&args.cause, &images, context);
    }
    let mut extractor = FeatureExtractor::new(&reference, &input, args.backend, cache)?;
    let options = KMeansOptions { k: args.clusters, max_iterations: 100, restarts: 3, seed: args.seed };
    let name = args.out.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let sources: Vec<String> = args.images.iter().map(|d| d.display().to_string()).collect();
    let manifest_for = |used: usize| {
        let description = format!(
            "spherical k-means, {} concepts, seed {}, on {used} images from {} at {width}x{height}",
            args.clusters,
            args.seed,
            sources.join(", ")
        );
        kmeans_manifest(&name, reference.clone(), input.clone(), args.clusters, description)
    };
    let feature_cache = FeatureCache::new(cache, &reference, &input);
    fit_kmeans(&mut extractor, &images, manifest_for, &options, &feature_cache, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}

/// `--method cause`: options, and the run (with the `train` feature).
mod cause {
    use std::path::{Path, PathBuf};

    use causeseg::engine::Backend;
    use causeseg::model::manifest::{BackboneRef, InputSpec};

    /// Options of `--method cause` (ignored by `--method kmeans`).
    #[derive(Debug, Clone, clap::Args)]
    #[command(next_help_heading = "CAUSE (--method cause)")]
    pub struct CauseArgs {
        /// Segmentation head architecture.
        #[arg(long, value_enum, default_value = "mlp")]
        pub head: HeadArch,
        /// Also train on CAUSE's five crops of every image (corners and
        /// centre at half size, resized to the input): 6x the features.
        #[arg(long)]
        pub five_crop: bool,
        /// Concept clusterbook size K.
        #[arg(long, default_value_t = 2048)]
        pub clusterbook_size: usize,
        /// Passes over the images for the clusterbook (CAUSE: one).
        #[arg(long, default_value_t = 1)]
        pub clusterbook_epochs: usize,
        /// Clusterbook learning rate (Adam).
        #[arg(long, default_value_t = 1e-3)]
        pub clusterbook_lr: f64,
        /// Re-seed clusterbook codes no token uses after each epoch.
        #[arg(long)]
        pub restart_dead_codes: bool,
        /// Reuse this clusterbook (.npy float32 [K, D], e.g. from an earlier
        /// model dir or CAUSE's modular.npy) instead of training one.
        #[arg(long)]
        pub clusterbook: Option<PathBuf>,
        /// Only train the clusterbook: OUT gets clusterbook.npy, no model.
        #[arg(long)]
        pub clusterbook_only: bool,
        /// Reuse the head (and clusterbook) of this CAUSE model directory;
        /// only the probe is fitted.
        #[arg(long)]
        pub head_from: Option<PathBuf>,
        /// Passes over the images for the head (more epochs measured no
        /// better on CamVid: see training notes).
        #[arg(long, default_value_t = 3)]
        pub head_epochs: usize,
        /// Head learning rate (Adam).
        #[arg(long, default_value_t = 1e-3)]
        pub head_lr: f64,
        /// Images per step.
        #[arg(long, default_value_t = 16)]
        pub batch: usize,
        /// Concept-similarity threshold for positives.
        #[arg(long, default_value_t = 0.3)]
        pub positive: f32,
        /// Concept-similarity threshold for negatives.
        #[arg(long, default_value_t = 0.1)]
        pub negative: f32,
        /// Contrastive temperature.
        #[arg(long, default_value_t = 0.07)]
        pub temperature: f64,
        /// Teacher EMA decay per step.
        #[arg(long, default_value_t = 0.99)]
        pub ema: f64,
        /// Dropout on the head input while training.
        #[arg(long, default_value_t = 0.1)]
        pub dropout: f64,
        /// Concept bank: past teacher projections kept per concept (0: off).
        #[arg(long, default_value_t = 100)]
        pub bank: usize,
        /// Bank entries compared per step (random subset).
        #[arg(long, default_value_t = 4096)]
        pub bank_sample: usize,
        /// Head output size.
        #[arg(long, default_value_t = 90)]
        pub reduced_dim: usize,
        /// Projection head size.
        #[arg(long, default_value_t = 2048)]
        pub projection_dim: usize,
        /// Cluster probe written into the model.
        #[arg(long, value_enum, default_value = "kmeans")]
        pub probe: ProbeArg,
        /// With --whiten 0: centre the backbone tokens on their training mean
        /// for every stage (folded into the head's first biases, so the
        /// runtime takes raw features; the stored clusterbook lives in the
        /// centred space).
        #[arg(long)]
        pub center_input: bool,
        /// Centre and PCA-whiten the backbone tokens to this many dimensions
        /// for every stage (0: off; measured best on CamVid: 32). Folded
        /// into the head like --center-input; clusterbook.npy is then in the
        /// whitened space (input_mean.npy and input_projection.npy say how
        /// to get there).
        #[arg(long, default_value_t = 32)]
        pub whiten: usize,
        /// Centre head features on their training mean before the probe
        /// (folded into the head's bias).
        #[arg(long)]
        pub center: bool,
        /// Passes over the images for the modularity probe.
        #[arg(long, default_value_t = 5)]
        pub probe_epochs: usize,
        /// Modularity-probe learning rate.
        #[arg(long, default_value_t = 1e-3)]
        pub probe_lr: f64,
        /// Measurement only: labelled images to report mIoU on after
        /// training (labels never reach any training stage).
        #[arg(long, requires = "val_labels")]
        pub val_images: Option<PathBuf>,
        /// Label PNGs (class ids) matching --val-images by file stem.
        #[arg(long, requires = "val_images")]
        pub val_labels: Option<PathBuf>,
        /// Number of classes in --val-labels.
        #[arg(long, default_value_t = 11)]
        pub val_classes: usize,
        /// Label value ignored in the metrics.
        #[arg(long)]
        pub val_ignore: Option<u8>,
        /// Also measure with flip averaging (computes mirrored val features).
        #[arg(long)]
        pub val_flip: bool,
        /// Also measure the k-means baseline on raw backbone features.
        #[arg(long)]
        pub val_baseline: bool,
    }

    /// Head architectures.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum HeadArch {
        /// CAUSE-MLP.
        Mlp,
        /// CAUSE-TR (one transformer decoder layer; runs only at the
        /// training input size).
        Tr,
    }

    /// Probe choices.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum ProbeArg {
        /// Spherical k-means on head features.
        Kmeans,
        /// Modularity loss on head features.
        Modularity,
    }

    /// What the run needs from the common fit arguments.
    pub struct Context<'a> {
        pub clusters: usize,
        pub sources: &'a [PathBuf],
        pub out: &'a Path,
        pub seed: u64,
        pub reference: &'a BackboneRef,
        pub input: &'a InputSpec,
        pub backend: Backend,
        pub cache: &'a Path,
    }

    #[cfg(not(feature = "train"))]
    pub fn run(_: &CauseArgs, _: &[PathBuf], _: Context) -> anyhow::Result<()> {
        anyhow::bail!("--method cause needs a build with the `train` feature: cargo build --features train")
    }

    #[cfg(feature = "train")]
    pub fn run(args: &CauseArgs, images: &[PathBuf], cx: Context) -> anyhow::Result<()> {
        trained::run(args, images, cx)
    }

    #[cfg(feature = "train")]
    mod trained {
        use std::path::PathBuf;
        use std::time::Instant;

        use anyhow::Context as _;
        use causeseg::fit::feature_cache::FeatureCache;
        use causeseg::fit::kmeans_manifest;
        use causeseg::pipeline::head::{HeadKind, HeadSpec};
        use causeseg::pipeline::FeatureExtractor;
        use causeseg::train::data::{FeatureSet, View};
        use causeseg::train::evaluate::{evaluate, LabelledFeatures};
        use causeseg::train::modularity::ModularityOptions;
        use causeseg::train::pipeline::{self as cause, save_npy, write_atomically, CauseOptions, HeadOptions};
        use causeseg::train::probe::ProbeKind;
        use causeseg::train::whiten::InputTransform;
        use serde_json::json;

        use super::{CauseArgs, Context, HeadArch, ProbeArg};

        pub fn run(args: &CauseArgs, images: &[PathBuf], cx: Context) -> anyhow::Result<()> {
            anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
            let started = Instant::now();
            let cache_for = |view: View| FeatureCache::new(&view.cache_root(cx.cache), cx.reference, cx.input);
            let feature_cache = cache_for(View::Full);
            let extractor = || FeatureExtractor::new(cx.reference, cx.input, cx.backend, cx.cache);
            let mut set = FeatureSet::load(images, &feature_cache, View::Full, extractor, "features")?;
            let images_used = set.len();
            if args.five_crop {
                let paths = set.paths.clone();
                for (i, view) in View::FULL_AND_FIVE_CROPS[1..].iter().enumerate() {
                    let extractor = || FeatureExtractor::new(cx.reference, cx.input, cx.backend, cx.cache);
                    set.append(FeatureSet::load(&paths, &cache_for(*view), *view, extractor, &format!("crop {}/5", i + 1))?);
                }
            }
            anyhow::ensure!(
                !set.is_empty(),
                "none of the {} images in {} could be read",
                images.len(),
                cx.sources.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            );
            let (rows, cols, dim) = set.geometry()?;
            let baseline = if args.val_baseline && args.val_images.is_some() {
                Some(causeseg::train::probe::kmeans_probe(&set, cx.clusters, cx.seed)?)
            } else {
                None
            };
            // Stage 0: centring / whitening (its own space for every later stage).
            let transform = if args.head_from.is_none() && (args.center_input || args.whiten > 0) {
                let (transform, report) = InputTransform::fit(&set, args.whiten)?;
                log::info!(
                    "input transform: {} dims keep {:.1} % of the variance (top direction {:.1} %)",
                    report.dims,
                    100.0 * report.kept_variance,
                    100.0 * report.top_direction_variance
                );
                transform.apply(&mut set);
                Some((transform, report))
            } else {
                None
            };
            let transformed_baseline = match (&transform, args.val_baseline && args.val_images.is_some()) {
                (Some((t, _)), true) => Some((t.as_head(), causeseg::train::probe::kmeans_probe(&set, cx.clusters, cx.seed)?)),
                _ => None,
            };
            log::info!("{images_used} images ({} skipped), {} grids of {rows}x{cols} patches of {dim} features", set.skipped, set.len());
            let clusterbook = ModularityOptions {
                codes: args.clusterbook_size,
                epochs: args.clusterbook_epochs,
                batch: args.batch,
                lr: args.clusterbook_lr,
                tau: 0.1,
                window: 4,
                restart_dead: args.restart_dead_codes,
                seed: cx.seed,
            };
            if args.clusterbook_only {
                let (codes, report) = cause::train_clusterbook(&set, &clusterbook)?;
                log::info!("clusterbook: loss {:.4}, {} codes used", report.final_loss, report.used_codes);
                write_atomically(cx.out, |dir| save_npy(&dir.join("clusterbook.npy"), &codes)).map_err(anyhow::Error::msg)?;
                println!("{}", cx.out.join("clusterbook.npy").display());
                return Ok(());
            }
            let head = HeadOptions {
                epochs: args.head_epochs,
                batch: args.batch,
                lr: args.head_lr,
                temperature: args.temperature,
                positive: args.positive,
                negative: args.negative,
                ema: args.ema,
                dropout: args.dropout,
                bank_per_concept: args.bank,
                bank_sample: args.bank_sample,
                reduced_dim: args.reduced_dim,
                projection_dim: args.projection_dim,
                seed: cx.seed,
                ..HeadOptions::default()
            };
            let probe_kind = match args.probe {
                ProbeArg::Kmeans => ProbeKind::Kmeans,
                ProbeArg::Modularity => ProbeKind::Modularity,
            };
            let options = CauseOptions {
                clusterbook,
                clusterbook_file: args.clusterbook.clone(),
                head,
                head_from: args.head_from.clone(),
                arch: match args.head {
                    HeadArch::Mlp => HeadKind::Mlp,
                    HeadArch::Tr => HeadKind::Tr,
                },
                concepts: cx.clusters,
                probe: probe_kind,
                probe_modularity: ModularityOptions { epochs: args.probe_epochs, lr: args.probe_lr, ..clusterbook },
                center: args.center,
            };
            let compare = args.val_images.is_some();
            let mut result = cause::run(&set, &options, compare)?;
            if let Some((t, _)) = &transform {
                t.fold_into_head(&mut result.head);
            }
            for (stage, s) in &result.seconds {
                log::info!("{stage}: {s:.1} s");
            }

            // Measurement on labelled images (never used for training).
            let mut measured = Vec::new();
            if let (Some(val_images), Some(val_labels)) = (&args.val_images, &args.val_labels) {
                let pairs = causeseg::eval::pair_by_stem(val_images, val_labels)?;
                let paths: Vec<PathBuf> = pairs.iter().map(|(i, _)| i.clone()).collect();
                let extractor = || FeatureExtractor::new(cx.reference, cx.input, cx.backend, cx.cache);
                let val = FeatureSet::load(&paths, &feature_cache, View::Full, extractor, "val features")?;
                let flipped = if args.val_flip {
                    let extractor = || FeatureExtractor::new(cx.reference, cx.input, cx.backend, cx.cache);
                    Some(FeatureSet::load(&val.paths, &cache_for(View::Mirrored), View::Mirrored, extractor, "mirrored val")?)
                } else {
                    None
                };
                let labels: Vec<PathBuf> =
                    val.paths.iter().map(|p| pairs.iter().find(|(i, _)| i == p).expect("paired").1.clone()).collect();
                let data = LabelledFeatures::new(val, flipped, &labels, args.val_classes, args.val_ignore)?;
                let patch = cx.reference.patch_size;
                let flips: &[bool] = if args.val_flip { &[false, true] } else { &[false] };
                if let Some(probe) = &baseline {
                    for &flip in flips {
                        let m = evaluate(&data, None, probe, flip, cx.input, patch)?;
                        log::info!("val: raw-feature k-means baseline, flip {flip}: mIoU {:.2} %, pixel accuracy {:.2} %", m.miou, m.pixel_accuracy);
                        measured.push(json!({"probe": "baseline-kmeans-raw", "flip": flip, "miou": m.miou, "pixel_accuracy": m.pixel_accuracy}));
                    }
                }
                if let Some((head, probe)) = &transformed_baseline {
                    for &flip in flips {
                        let m = evaluate(&data, Some(head), probe, flip, cx.input, patch)?;
                        log::info!("val: k-means on transformed features, flip {flip}: mIoU {:.2} %, pixel accuracy {:.2} %", m.miou, m.pixel_accuracy);
                        measured.push(json!({"probe": "baseline-kmeans-transformed", "flip": flip, "miou": m.miou, "pixel_accuracy": m.pixel_accuracy}));
                    }
                }
                for (kind, probe) in &result.probes {
                    for &flip in flips {
                        let m = evaluate(&data, Some(&result.head), probe, flip, cx.input, patch)?;
                        log::info!("val: probe {kind:?}, flip {flip}: mIoU {:.2} %, pixel accuracy {:.2} %", m.miou, m.pixel_accuracy);
                        measured.push(json!({"probe": kind, "flip": flip, "miou": m.miou, "pixel_accuracy": m.pixel_accuracy, "per_class_iou": m.per_class_iou}));
                    }
                }
            }

            let probe = result.probe(probe_kind).context("probe fitted")?.clone();
            let (width, height) = (cx.input.width, cx.input.height);
            let sources: Vec<String> = cx.sources.iter().map(|d| d.display().to_string()).collect();
            let description = format!(
                "CAUSE-{}{}{}: clusterbook {} x {}, head {} -> {}, {:?} probe with {} concepts, seed {}, on {} images from {} at {width}x{height}",
                format!("{:?}", result.head.kind()).to_uppercase(),
                match &transform {
                    Some((t, r)) if t.projection.is_some() => format!(" on tokens whitened to {} dims", r.dims),
                    Some(_) => " on centred tokens".to_string(),
                    None => String::new(),
                },
                if args.five_crop { " with five-crop training" } else { "" },
                result.clusterbook.nrows(),
                result.clusterbook.ncols(),
                dim,
                args.reduced_dim,
                probe_kind,
                cx.clusters,
                cx.seed,
                images_used,
                sources.join(", ")
            );
            let name = cx.out.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
            let mut manifest = kmeans_manifest(&name, cx.reference.clone(), cx.input.clone(), cx.clusters, description);
            manifest.head = Some(HeadSpec {
                kind: result.head.kind(),
                dir: "head".into(),
                output_dim: result.head.output_dim(),
                clusterbook: Some("clusterbook.npy".into()),
            });
            let text = manifest.to_toml();
            let report = json!({
                "images": images_used,
                "five_crop": args.five_crop,
                "skipped": set.skipped,
                "seconds": result.seconds.iter().map(|(s, t)| json!({"stage": s, "seconds": t})).collect::<Vec<_>>(),
                "total_seconds": started.elapsed().as_secs_f64(),
                "clusterbook": result.clusterbook_report.as_ref().map(|r| json!({"final_loss": r.final_loss, "used_codes": r.used_codes, "restarted": r.restarted})),
                "head": result.head_report,
                "head_options": options.head,
                "probe": probe_kind,
                "input_transform": transform.as_ref().map(|(_, r)| r),
                "center_output": args.center,
                "modularity_probe": result.probe_report.as_ref().map(|r| json!({"final_loss": r.final_loss, "used_codes": r.used_codes})),
                "validation": measured,
            });
            write_atomically(cx.out, |dir| {
                save_npy(&dir.join("centroids.npy"), &probe)?;
                save_npy(&dir.join("clusterbook.npy"), &result.clusterbook)?;
                if let Some((t, _)) = &transform {
                    // The clusterbook lives in the transformed space: (x - mean) · projection.
                    ndarray_npy::write_npy(dir.join("input_mean.npy"), &t.mean).map_err(|e| e.to_string())?;
                    if let Some(p) = &t.projection {
                        save_npy(&dir.join("input_projection.npy"), p)?;
                    }
                }
                result.head.save(&dir.join("head")).map_err(|e| e.to_string())?;
                std::fs::write(dir.join("model.toml"), &text).map_err(|e| e.to_string())?;
                std::fs::write(dir.join("training.json"), serde_json::to_string_pretty(&report).expect("json")).map_err(|e| e.to_string())
            })
            .map_err(anyhow::Error::msg)?;
            log::info!("trained in {:.0} s", started.elapsed().as_secs_f64());
            println!("{}", cx.out.display());
            Ok(())
        }
    }
}
