//! The cluster probe: N concept vectors in the head's output space, by
//! spherical k-means (the default) or by the modularity loss.

use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::modularity::{init_from_tokens, train_modularity, ModularityOptions, ModularityReport};
use super::{Result, TrainError};
use crate::head::Head;
use crate::train::features::FeatureSet;
use crate::train::kmeans::{spherical_kmeans, KMeansOptions};

/// How the probe is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// Spherical k-means on the head features of every training token.
    Kmeans,
    /// CAUSE's modularity loss on grid-sampled head features.
    Modularity,
}

/// The head features `[rows, cols, R]` of every grid of `set` (the
/// probes are fitted on these).
pub fn head_features(set: &FeatureSet, head: &Head) -> Result<FeatureSet> {
    let grids = set.grids.iter().map(|g| head.apply(g.view())).collect::<std::result::Result<Vec<_>, _>>();
    let grids = grids.map_err(|e| TrainError::Invalid(e.to_string()))?;
    Ok(FeatureSet { grids, paths: set.paths.clone(), skipped: set.skipped })
}

/// Spherical k-means probe with `k` concepts on the tokens of `features`
/// (head features, or backbone features for the k-means baseline).
pub fn kmeans_probe(features: &FeatureSet, k: usize, seed: u64) -> Result<Array2<f32>> {
    let tokens = features.unit_tokens();
    if tokens.nrows() < k {
        return Err(TrainError::TooLittleData(format!("{} tokens for {k} concepts", tokens.nrows())));
    }
    let options = KMeansOptions { k, max_iterations: 100, restarts: 3, seed };
    Ok(spherical_kmeans(tokens.view(), &options).centroids)
}

/// Modularity probe with `options.codes` concepts on the tokens of
/// `features`, started from sampled tokens.
pub fn modularity_probe(features: &FeatureSet, options: &ModularityOptions) -> Result<(Array2<f32>, ModularityReport)> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x9e37_79b9);
    let init = init_from_tokens(features, options.codes, &mut rng)?;
    train_modularity(features, &|x| x.clone(), init, options, "probe")
}
