//! `causeseg fit`: learn concepts from unlabelled images.

use std::path::{Path, PathBuf};

use causeseg::model::backbone::{self, DINOV2_VITS14};
use causeseg::model::manifest::{InputSpec, ResizePolicy, IMAGENET_MEAN, IMAGENET_STD};
use causeseg::train::{collect_images, kmeans, Extraction, FitJob};

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
    #[command(flatten)]
    engine: super::engine::EngineArgs,
    #[command(flatten)]
    cause: cause::CauseArgs,
    #[command(flatten)]
    validation: cause::ValidationArgs,
}

pub fn run(args: FitArgs, cache: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.clusters >= 1 && args.clusters <= 255, "--clusters must be between 1 and 255, got {}", args.clusters);
    let backbone = backbone::reference(&args.backbone, cache)?;
    let (width, height) = args.size;
    let p = backbone.patch_size;
    anyhow::ensure!(width % p == 0 && height % p == 0, "--size {width}x{height} is not a multiple of the backbone's patch size {p}");
    let input = InputSpec { width, height, mean: IMAGENET_MEAN, std: IMAGENET_STD, resize: args.resize };
    let images = collect_images(&args.images)?;
    log::info!("fitting {} concepts on {} images at {width}x{height}", args.clusters, images.len());
    let extraction = Extraction { backbone, input, engine: args.engine.config(cache)?, cache: cache.to_path_buf() };
    let job = FitJob { image_dirs: args.images, images, concepts: args.clusters, seed: args.seed, out: args.out };
    match args.method {
        Method::Kmeans => {
            kmeans::fit(&extraction, &job)?;
        }
        Method::Cause => cause::run(&args.cause, &args.validation, &extraction, &job)?,
    }
    println!("{}", job.out.display());
    Ok(())
}

/// `--method cause`: options, and the run (with the `train` feature).
pub mod cause {
    use std::path::PathBuf;

    use causeseg::train::{Extraction, FitJob};

    /// Options of `--method cause` (ignored by `--method kmeans`).
    #[derive(Debug, Clone, clap::Args)]
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    #[command(next_help_heading = "CAUSE (--method cause)")]
    pub struct CauseArgs {
        /// Segmentation head architecture (the default model's: tr).
        #[arg(long, value_enum, default_value = "tr")]
        pub head: HeadArch,
        /// CAUSE's five crops of every image (corners and centre at half
        /// size, resized to the input) as extra training views, for the
        /// stages --views-for names. On by default when the input whitening
        /// is fitted (the default model's setting: the crops shape the
        /// whitening only); otherwise only with this flag.
        #[arg(long, overrides_with = "no_five_crop")]
        pub five_crop: bool,
        /// No five crops, also where they are on by default.
        #[arg(long)]
        pub no_five_crop: bool,
        /// Also train on N random views of every image: a crop of 60-100 %
        /// of each side, mirrored half of the time, with brightness,
        /// contrast, saturation, white balance and gamma jitter (N+1 times
        /// the features; each view's features are cached).
        #[arg(long, default_value_t = 0, value_name = "N")]
        pub augment: usize,
        /// Which stages train on the views of --five-crop and --augment:
        /// all of them; only the final cluster probe (the whitening,
        /// clusterbook and head train on the images alone, so the head's
        /// training time stays that of the images); or only the input
        /// whitening (its statistics; every later stage trains on the
        /// images alone). Default: whitening when the input whitening (or
        /// centring) is fitted, else all.
        #[arg(long, value_enum)]
        pub views_for: Option<ViewsForArg>,
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
        /// for every stage (0: off; 64, the default model's, measured best
        /// on CamVid drives the training never saw). Folded
        /// into the head like --center-input; clusterbook.npy is then in the
        /// whitened space (input_mean.npy and input_projection.npy say how
        /// to get there).
        #[arg(long, default_value_t = 64)]
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
        /// Add a last stage that self-trains the probe on principal mask
        /// proposals of the training images (PriMaPs-EM; label-free: each
        /// mask takes the concept its tokens vote for, and the probe learns
        /// to give it to all of them). Off by default: it lowered the
        /// default settings' mIoU on CamVid drives the training never saw.
        /// With it, `protocol` measures every method with and without it.
        #[arg(long)]
        pub self_train: bool,
        /// Self-training passes over the images.
        #[arg(long, default_value_t = 10, requires = "self_train")]
        pub self_train_epochs: usize,
        /// Cosine similarity to a mask's anchor token a token needs to join
        /// the mask (self-training; 0.7 measured best of 0.5, 0.7, 0.8 on
        /// the held-out CamVid drive 0006R0).
        #[arg(long, default_value_t = 0.7, requires = "self_train")]
        pub mask_similarity: f32,
        /// Self-train the head's final projection with the probe (its ReLU
        /// branch widened to 128 units; for whitened k-means the whitening
        /// itself), at this Adam learning rate, e.g. 1e-4. The runtime
        /// runs the result as any head of its kind.
        #[arg(long, value_name = "LR", requires = "self_train")]
        pub self_train_head: Option<f64>,
    }

    /// Measurement after `fit --method cause` (never used for training).
    #[derive(Debug, Clone, clap::Args)]
    #[command(next_help_heading = "Measurement (--method cause)")]
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    pub struct ValidationArgs {
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
        /// CAUSE-TR (one transformer decoder layer; its positional
        /// embedding is interpolated for other input sizes).
        Tr,
    }

    /// Which stages see the extra training views.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum ViewsForArg {
        /// Every stage: whitening, clusterbook, head and probe.
        All,
        /// The final cluster probe only.
        Probe,
        /// The input whitening only.
        Whitening,
    }

    /// Probe choices.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum ProbeArg {
        /// Spherical k-means on head features.
        Kmeans,
        /// Spherical k-means with 3x the clusters, merged down by Ward linkage.
        KmeansMerged,
        /// Modularity loss on head features.
        Modularity,
        /// Full-covariance Gaussian mixture (EM from the k-means clusters) on head features; concepts are the mean directions of the tokens each component wins.
        GaussianMixture,
    }

    #[cfg(not(feature = "train"))]
    pub fn run(_: &CauseArgs, _: &ValidationArgs, _: &Extraction, _: &FitJob) -> anyhow::Result<()> {
        anyhow::bail!("--method cause needs a build with the `train` feature: cargo build --features train")
    }

    /// Maps the arguments onto the library's settings and fits.
    #[cfg(feature = "train")]
    pub fn run(args: &CauseArgs, val: &ValidationArgs, extraction: &Extraction, job: &FitJob) -> anyhow::Result<()> {
        use causeseg::train::cause::fit::{fit, Validation};
        let validation = match (&val.val_images, &val.val_labels) {
            (Some(images), Some(labels)) => Some(Validation {
                images: images.clone(),
                labels: labels.clone(),
                classes: val.val_classes,
                ignore: val.val_ignore,
                flip: val.val_flip,
                baseline: val.val_baseline,
            }),
            _ => None,
        };
        Ok(fit(extraction, job, &args.options(job.seed, validation))?)
    }

    #[cfg(feature = "train")]
    impl CauseArgs {
        /// The library's settings for these arguments, every stage seeded by `seed`.
        pub fn options(&self, seed: u64, validation: Option<causeseg::train::cause::fit::Validation>) -> causeseg::train::cause::fit::FitOptions {
            use causeseg::head::HeadKind;
            use causeseg::train::cause::fit::{FitOptions, ViewsFor};
            use causeseg::train::cause::head_training::HeadOptions;
            use causeseg::train::cause::modularity::ModularityOptions;
            use causeseg::train::cause::probe::ProbeKind;
            use causeseg::train::cause::run::CauseOptions;
            use causeseg::train::cause::self_training::SelfTrainOptions;
            let args = self;
            let clusterbook = ModularityOptions {
                codes: args.clusterbook_size,
                epochs: args.clusterbook_epochs,
                batch: args.batch,
                lr: args.clusterbook_lr,
                tau: 0.1,
                window: 4,
                restart_dead: args.restart_dead_codes,
                seed,
            };
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
                seed,
                ..HeadOptions::default()
            };
            let stages = CauseOptions {
                clusterbook,
                clusterbook_file: args.clusterbook.clone(),
                head,
                head_from: args.head_from.clone(),
                arch: match args.head {
                    HeadArch::Mlp => HeadKind::Mlp,
                    HeadArch::Tr => HeadKind::Tr,
                },
                probe: match args.probe {
                    ProbeArg::Kmeans => ProbeKind::Kmeans,
                    ProbeArg::KmeansMerged => ProbeKind::KmeansMerged,
                    ProbeArg::Modularity => ProbeKind::Modularity,
                    ProbeArg::GaussianMixture => ProbeKind::GaussianMixture,
                },
                probe_modularity: ModularityOptions { epochs: args.probe_epochs, lr: args.probe_lr, ..clusterbook },
                center: args.center,
            };
            let mut options = FitOptions {
                stages,
                five_crop: false,
                views_for: ViewsFor::All,
                augment: args.augment,
                whiten: args.whiten,
                center_input: args.center_input,
                clusterbook_only: args.clusterbook_only,
                self_train: args.self_train.then(|| SelfTrainOptions {
                    epochs: args.self_train_epochs,
                    similarity: args.mask_similarity,
                    seed,
                    head_lr: args.self_train_head,
                    ..Default::default()
                }),
                validation,
            };
            let views_for = args.views_for.map(|v| match v {
                ViewsForArg::All => ViewsFor::All,
                ViewsForArg::Probe => ViewsFor::Probe,
                ViewsForArg::Whitening => ViewsFor::Whitening,
            });
            let five_crop = if args.no_five_crop { Some(false) } else { args.five_crop.then_some(true) };
            options.choose_views(views_for, five_crop);
            options
        }
    }
}
