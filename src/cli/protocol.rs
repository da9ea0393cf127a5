//! `causeseg protocol`: the leave-one-drive-out quality protocol (fit on
//! every drive but one, measure on that one), for several methods and seeds.

#[cfg(feature = "train")]
use std::io::Write;
use std::path::{Path, PathBuf};

#[cfg(feature = "train")]
use causeseg::model::backbone;
use causeseg::model::backbone::DINOV2_VITS14;
#[cfg(feature = "train")]
use causeseg::model::manifest::{InputSpec, ResizePolicy, IMAGENET_MEAN, IMAGENET_STD};

/// Options of `causeseg protocol`.
#[derive(Debug, clap::Args)]
pub struct ProtocolArgs {
    /// Directory of labelled images (repeatable); the drive of an image is
    /// its file-stem prefix before the first `_` (CamVid: 0001TP, ...).
    #[arg(long, required = true)]
    images: Vec<PathBuf>,
    /// Label directory of each --images directory, in the same order
    /// (class-id PNGs matched by file stem).
    #[arg(long, required = true)]
    labels: Vec<PathBuf>,
    /// Number of classes; as many concepts are fitted.
    #[arg(long)]
    classes: usize,
    /// Label id left out of the metrics (11 for CamVid).
    #[arg(long)]
    ignore: Option<u8>,
    /// Hold out only these drives (repeatable; default: every drive in
    /// turn), e.g. `--hold-out 0006R0` for a quick one-fold ablation.
    #[arg(long)]
    hold_out: Vec<String>,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Methods, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kmeans,kmeans-whitened,cause")]
    methods: Vec<MethodArg>,
    /// Model input size, WIDTHxHEIGHT.
    #[arg(long, value_parser = super::parse_size, default_value = "448x336")]
    size: (u32, u32),
    /// Measure at this input size, WIDTHxHEIGHT (default: --size); the
    /// models are still trained at --size.
    #[arg(long, value_parser = super::parse_size)]
    eval_size: Option<(u32, u32)>,
    /// Also measure every model with multi-scale averaging: the scores at
    /// the measuring size and at these sizes (WIDTHxHEIGHT, comma-separated)
    /// averaged on the finest patch grid; each size adds its backbone time.
    #[arg(long, value_parser = super::parse_size, value_delimiter = ',')]
    eval_scales: Vec<(u32, u32)>,
    /// Also measure every model with flip averaging (features of the image
    /// and of its mirror averaged; twice the backbone time at run time).
    #[arg(long)]
    flip: bool,
    /// Backbone file in the cache.
    #[arg(long, default_value = DINOV2_VITS14.file)]
    backbone: String,
    #[command(flatten)]
    engine: super::engine::EngineArgs,
    /// Refinements every fitted model is measured with, comma-separated
    /// (each gets its own row).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "none,guided")]
    refine: Vec<causeseg::pipeline::refine::Refine>,
    /// Append one JSON line per fold, method, seed and refinement to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    cause: super::fit::cause::CauseArgs,
}

/// The methods compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[cfg_attr(not(feature = "train"), allow(dead_code))]
enum MethodArg {
    /// Spherical k-means on the raw backbone tokens.
    Kmeans,
    /// Spherical k-means on the tokens whitened to --whiten dimensions.
    KmeansWhitened,
    /// CAUSE with the --head, --whiten, ... settings.
    Cause,
    /// Supervised reference (reads the training drives' labels): the mean
    /// token of every class, whitened to --whiten dimensions.
    ClassMeans,
}

#[cfg(not(feature = "train"))]
pub fn run(_: ProtocolArgs, _: &Path) -> anyhow::Result<()> {
    anyhow::bail!("protocol needs a build with the `train` feature: cargo build --features train")
}

/// Pairs the images with their labels, runs the protocol, prints the table.
#[cfg(feature = "train")]
pub fn run(args: ProtocolArgs, cache: &Path) -> anyhow::Result<()> {
    use causeseg::train::cause::protocol::{run_protocol, table, Method, Plan};
    use causeseg::train::Extraction;

    anyhow::ensure!(args.images.len() == args.labels.len(), "give one --labels directory per --images directory ({} and {})", args.images.len(), args.labels.len());
    anyhow::ensure!(args.classes >= 1 && args.classes <= 255, "--classes must be between 1 and 255, got {}", args.classes);
    let mut pairs = Vec::new();
    for (images, labels) in args.images.iter().zip(&args.labels) {
        pairs.extend(causeseg::eval::pair_by_stem(images, labels)?);
    }
    let backbone = backbone::reference(&args.backbone, cache)?;
    let (width, height) = args.size;
    let input = InputSpec { width, height, mean: IMAGENET_MEAN, std: IMAGENET_STD, resize: ResizePolicy::Stretch };
    let extraction = Extraction { backbone, input, engine: args.engine.config(cache)?, cache: cache.to_path_buf() };
    let methods: Vec<Method> = args
        .methods
        .iter()
        .map(|m| match m {
            MethodArg::Kmeans => Method::Kmeans,
            MethodArg::KmeansWhitened => Method::KmeansWhitened,
            MethodArg::Cause => Method::Cause,
            MethodArg::ClassMeans => Method::ClassMeans,
        })
        .collect();
    let mut json = match &args.json {
        Some(path) => Some(std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?),
        None => None,
    };
    let mut options = args.cause.options(0, None);
    let eval_input = args.eval_size.map(|(width, height)| InputSpec { width, height, ..extraction.input.clone() });
    let p = extraction.backbone.patch_size;
    for (option, &(width, height)) in args.eval_size.iter().map(|s| ("--eval-size", s)).chain(args.eval_scales.iter().map(|s| ("--eval-scales", s))) {
        anyhow::ensure!(width % p == 0 && height % p == 0, "{option} {width}x{height} is not a multiple of the patch size {p}");
    }
    let other_scales = args.eval_scales.iter().map(|&(width, height)| InputSpec { width, height, ..extraction.input.clone() }).collect();
    let plan = Plan {
        methods,
        seeds: args.seeds,
        hold_out: args.hold_out,
        refines: args.refine,
        self_train: options.self_train.take(),
        eval_input,
        flip: args.flip,
        other_scales,
    };
    let results = run_protocol(&extraction, &pairs, args.classes, args.ignore, &plan, &options, |r| {
        log::info!(
            "{:?}{}{}{} ({:?}) held-out {} seed {}: mIoU {:.2} %, pixel accuracy {:.2} %, {} dead concepts ({} train / {} test images, fit {:.0} s)",
            r.method,
            if r.self_trained { " self-trained" } else { "" },
            if r.flip { " flip-averaged" } else { "" },
            if r.multi_scale { " multi-scale" } else { "" },
            r.refine,
            r.drive,
            r.seed,
            r.miou,
            r.pixel_accuracy,
            r.dead_concepts,
            r.train_images,
            r.test_images,
            r.fit_seconds
        );
        if let Some(file) = json.as_mut() {
            let _ = writeln!(file, "{}", serde_json::to_string(r).expect("serialisable"));
        }
    })?;
    print!("{}", table(&results));
    Ok(())
}
