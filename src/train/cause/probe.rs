//! The cluster probe: N concept vectors in the head's output space, by
//! spherical k-means (the default), a Gaussian mixture or the modularity
//! loss.

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::mixture::{fit_mixture, MixtureOptions};
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
    /// Spherical k-means with [`OVERCLUSTER`] times as many clusters, merged
    /// down to N by Ward linkage (label-free).
    KmeansMerged,
    /// CAUSE's modularity loss on grid-sampled head features.
    Modularity,
    /// A full-covariance Gaussian mixture started from the k-means
    /// clusters ([`super::mixture`]); the concepts are the mean directions
    /// of the tokens each component wins.
    GaussianMixture,
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
    kmeans_on_tokens(features.unit_tokens().view(), k, seed)
}

/// Spherical k-means with `k` concepts on unit `tokens`.
fn kmeans_on_tokens(tokens: ArrayView2<f32>, k: usize, seed: u64) -> Result<Array2<f32>> {
    if tokens.nrows() < k {
        return Err(TrainError::TooLittleData(format!("{} tokens for {k} concepts", tokens.nrows())));
    }
    let options = KMeansOptions { k, max_iterations: 100, restarts: 3, seed };
    Ok(spherical_kmeans(tokens, &options).centroids)
}

/// Clusters fitted per concept before [`merged_kmeans_probe`] merges them.
pub const OVERCLUSTER: usize = 3;

/// The probe of `kind` (k-means, merged k-means or the Gaussian mixture)
/// with `k` concepts on the tokens of `features`.
pub fn kmeans_probe_of(kind: ProbeKind, features: &FeatureSet, k: usize, seed: u64) -> Result<Array2<f32>> {
    match kind {
        ProbeKind::KmeansMerged => merged_kmeans_probe(features, k, seed),
        ProbeKind::GaussianMixture => {
            let tokens = features.unit_tokens();
            let init = kmeans_on_tokens(tokens.view(), k, seed)?;
            let mixture = fit_mixture(tokens.view(), &init, &MixtureOptions { seed, ..MixtureOptions::default() });
            let weights: Vec<String> = mixture.weights.iter().map(|w| format!("{w:.3}")).collect();
            log::info!("Gaussian mixture: {} EM iterations, log-likelihood {:.3} per token, weights {}", mixture.iterations, mixture.log_likelihood, weights.join(" "));
            Ok(mixture.concepts)
        }
        _ => kmeans_probe(features, k, seed),
    }
}

/// Overclustering then merging: spherical k-means with `OVERCLUSTER * k`
/// clusters, then the pair of clusters whose merge adds the least
/// within-cluster variance (Ward linkage on the tokens' cluster sums) is
/// merged until `k` are left; the concepts are the merged clusters' mean
/// directions. Fine clusters follow the data's shape better than k coarse
/// ones, and merging them by size-aware linkage keeps large regions (road,
/// sky) whole.
pub fn merged_kmeans_probe(features: &FeatureSet, k: usize, seed: u64) -> Result<Array2<f32>> {
    let tokens = features.unit_tokens();
    let fine = kmeans_probe(features, (OVERCLUSTER * k).min(tokens.nrows()), seed)?;
    let dim = tokens.ncols();
    let mut sums = Array2::<f64>::zeros((fine.nrows(), dim));
    let mut counts = vec![0f64; fine.nrows()];
    for (token, scores) in tokens.rows().into_iter().zip(tokens.dot(&fine.t()).rows()) {
        let best = crate::linalg::argmax(scores);
        counts[best] += 1.0;
        sums.row_mut(best).zip_mut_with(&token, |s, &t| *s += t as f64);
    }
    let mut clusters: Vec<(ndarray::Array1<f64>, f64)> = sums.rows().into_iter().zip(counts).filter(|(_, n)| *n > 0.0).map(|(s, n)| (s.to_owned(), n)).collect();
    while clusters.len() > k {
        let ward = |(sa, na): &(ndarray::Array1<f64>, f64), (sb, nb): &(ndarray::Array1<f64>, f64)| {
            let diff = sa / *na - sb / *nb;
            na * nb / (na + nb) * diff.dot(&diff)
        };
        let (mut best, mut pair) = (f64::INFINITY, (0, 1));
        for a in 0..clusters.len() {
            for b in a + 1..clusters.len() {
                let cost = ward(&clusters[a], &clusters[b]);
                if cost < best {
                    (best, pair) = (cost, (a, b));
                }
            }
        }
        let (sb, nb) = clusters.swap_remove(pair.1);
        clusters[pair.0].0 += &sb;
        clusters[pair.0].1 += nb;
    }
    if clusters.len() < k {
        return Err(TrainError::TooLittleData(format!("{} non-empty clusters for {k} concepts", clusters.len())));
    }
    let mut probe = Array2::<f32>::zeros((k, dim));
    for (mut row, (sum, _)) in probe.rows_mut().into_iter().zip(&clusters) {
        row.assign(&sum.mapv(|v| v as f32));
    }
    Ok(crate::linalg::l2_normalize_rows(probe))
}

/// Modularity probe with `options.codes` concepts on the tokens of
/// `features`, started from sampled tokens.
pub fn modularity_probe(features: &FeatureSet, options: &ModularityOptions) -> Result<(Array2<f32>, ModularityReport)> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x9e37_79b9);
    let init = init_from_tokens(features, options.codes, &mut rng)?;
    train_modularity(features, &|x| x.clone(), init, options, "probe")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::features::blob_set;

    #[test]
    fn merged_probe_recovers_three_blobs_from_nine_clusters() {
        let set = blob_set(6, 8, 4);
        let probe = merged_kmeans_probe(&set, 3, 0).unwrap();
        assert_eq!(probe.dim(), (3, 4));
        for axis in 0..3 {
            let best = probe.column(axis).iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert!(best > 0.95, "no concept points at blob {axis}: {probe}");
        }
    }
}
