//! The cluster probe: N concept vectors in the head's output space, by
//! spherical k-means (the default) or by the modularity loss.

use ndarray::{Array2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::data::FeatureSet;
use super::modularity::{init_from_tokens, train_modularity, ModularityOptions, ModularityReport};
use super::{Result, TrainError};
use crate::fit::kmeans::{spherical_kmeans, KMeansOptions};
use crate::model::l2_normalize_rows;
use crate::pipeline::head::MlpHead;

/// How the probe is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// Spherical k-means on the head features of every training token.
    Kmeans,
    /// CAUSE's modularity loss on grid-sampled head features.
    Modularity,
}

/// Head features (or raw features without a head) of every token of
/// every image, `[tokens, R]`, unit-norm rows.
pub fn all_features(set: &FeatureSet, head: Option<&MlpHead>) -> Array2<f32> {
    let parts: Vec<Array2<f32>> = (0..set.len())
        .map(|i| match head {
            Some(h) => h.forward(set.tokens(i)),
            None => set.tokens(i).to_owned(),
        })
        .collect();
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    l2_normalize_rows(ndarray::concatenate(Axis(0), &views).expect("same width"))
}

/// Spherical k-means probe with `k` concepts.
pub fn kmeans_probe(set: &FeatureSet, head: Option<&MlpHead>, k: usize, seed: u64) -> Result<Array2<f32>> {
    let features = all_features(set, head);
    if features.nrows() < k {
        return Err(TrainError::TooLittleData(format!("{} tokens for {k} concepts", features.nrows())));
    }
    let options = KMeansOptions { k, max_iterations: 100, restarts: 3, seed };
    Ok(spherical_kmeans(features.view(), &options).centroids)
}

/// Modularity probe with `options.codes` concepts, started from sampled head
/// features.
pub fn modularity_probe(set: &FeatureSet, head: Option<&MlpHead>, options: &ModularityOptions) -> Result<(Array2<f32>, ModularityReport)> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x9e37_79b9);
    let transform = |x: &Array2<f32>| match head {
        Some(h) => h.forward(x.view()),
        None => x.clone(),
    };
    // Sample initial vectors among head features of the images.
    let mapped = match head {
        Some(h) => FeatureSet::from_grids(
            set.grids
                .iter()
                .map(|g| {
                    let (r, c, _) = g.dim();
                    h.apply(g.view()).into_shape_with_order((r, c, h.output_dim())).expect("same count")
                })
                .collect(),
        ),
        None => FeatureSet::from_grids(set.grids.clone()),
    };
    let init = init_from_tokens(&mapped, options.codes, &mut rng)?;
    drop(mapped);
    train_modularity(set, &transform, init, options, "probe")
}
