//! `causeseg fit`: learn concepts from unlabelled images.

use std::path::{Path, PathBuf};

use causeseg::fit::{collect_images, feature_cache::FeatureCache, fit_kmeans, kmeans::KMeansOptions, kmeans_manifest};
use causeseg::model::backbone::{self, DINOV2_VITS14};
use causeseg::model::manifest::{InputSpec, IMAGENET_MEAN, IMAGENET_STD};
use causeseg::pipeline::preprocess::ResizePolicy;
use causeseg::engine::Backend;
use causeseg::pipeline::FeatureExtractor;

/// How concepts are learnt.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Method {
    /// Spherical k-means over backbone patch features.
    Kmeans,
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
    let mut extractor = FeatureExtractor::new(&reference, &input, args.backend, cache)?;
    let Method::Kmeans = args.method;
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
