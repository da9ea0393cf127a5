//! Spherical k-means (cosine similarity) with k-means++ seeding, and
//! `fit --method kmeans`: the concept mapping that needs no training beyond
//! clustering backbone features. Deterministic for a given seed.

use ndarray::{Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::features::View;
use super::{Extraction, FitJob, Result, TrainError};
use crate::linalg::l2_normalize_rows;
use crate::model::{Manifest, ModelWriter};

/// Settings of a k-means run.
#[derive(Debug, Clone, Copy)]
pub struct KMeansOptions {
    /// Number of clusters.
    pub k: usize,
    /// Maximum Lloyd iterations per restart.
    pub max_iterations: usize,
    /// Independent restarts; the one with the highest objective is kept.
    pub restarts: usize,
    /// Random seed.
    pub seed: u64,
}

/// Result of spherical k-means.
#[derive(Debug, Clone)]
pub struct KMeans {
    /// Unit-norm centroids `[k, dim]`.
    pub centroids: Array2<f32>,
    /// Mean cosine between each point and its centroid (higher is better).
    pub objective: f64,
    /// Iterations of the kept restart.
    pub iterations: usize,
}

/// Clusters the rows of `points` (each already unit-norm) by cosine.
/// `points` must have at least `k` rows.
pub fn spherical_kmeans(points: ArrayView2<f32>, options: &KMeansOptions) -> KMeans {
    assert!(points.nrows() >= options.k && options.k > 0, "need at least k points");
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    (0..options.restarts.max(1))
        .map(|_| lloyd(points, kmeans_plus_plus(points, options.k, &mut rng), options.max_iterations))
        .max_by(|a, b| a.objective.total_cmp(&b.objective))
        .expect("at least one restart")
}

/// k-means++ seeding with the cosine distance 1 - cos.
fn kmeans_plus_plus(points: ArrayView2<f32>, k: usize, rng: &mut ChaCha8Rng) -> Array2<f32> {
    let n = points.nrows();
    let mut chosen = vec![rng.random_range(0..n)];
    let mut distance: Vec<f64> = vec![f64::INFINITY; n];
    while chosen.len() < k {
        let last = points.row(*chosen.last().expect("non-empty"));
        for (d, p) in distance.iter_mut().zip(points.axis_iter(Axis(0))) {
            *d = d.min((1.0 - p.dot(&last) as f64).max(0.0));
        }
        let total: f64 = distance.iter().sum();
        let next = if total <= 0.0 {
            rng.random_range(0..n)
        } else {
            let mut target = rng.random::<f64>() * total;
            distance.iter().position(|d| {
                target -= d;
                target <= 0.0
            })
            .unwrap_or(n - 1)
        };
        chosen.push(next);
    }
    points.select(Axis(0), &chosen)
}

/// Lloyd iterations from `centroids` until assignments stop changing.
fn lloyd(points: ArrayView2<f32>, mut centroids: Array2<f32>, max_iterations: usize) -> KMeans {
    let (n, k) = (points.nrows(), centroids.nrows());
    let mut assignment = vec![usize::MAX; n];
    let mut objective = 0.0;
    let mut iterations = 0;
    while iterations < max_iterations {
        iterations += 1;
        let similarity = points.dot(&centroids.t());
        let mut changed = 0;
        objective = 0.0;
        let mut worst = (f32::INFINITY, 0usize);
        for (i, row) in similarity.axis_iter(Axis(0)).enumerate() {
            let (best, value) = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |acc, (j, &v)| if v > acc.1 { (j, v) } else { acc });
            objective += value as f64;
            if value < worst.0 {
                worst = (value, i);
            }
            if assignment[i] != best {
                assignment[i] = best;
                changed += 1;
            }
        }
        objective /= n as f64;
        let mut sums = Array2::<f32>::zeros(centroids.dim());
        let mut counts = vec![0usize; k];
        for (i, &c) in assignment.iter().enumerate() {
            sums.row_mut(c).scaled_add(1.0, &points.row(i));
            counts[c] += 1;
        }
        for (c, count) in counts.iter().enumerate() {
            if *count == 0 {
                // An empty cluster restarts on the worst-fitting point.
                sums.row_mut(c).assign(&points.row(worst.1));
            }
        }
        centroids = l2_normalize_rows(sums);
        if changed == 0 {
            break;
        }
    }
    KMeans { centroids, objective, iterations }
}

/// `fit --method kmeans`: clusters the backbone tokens of `job.images` into
/// `job.concepts` concepts and writes the model directory `job.out`.
pub fn fit(extraction: &Extraction, job: &FitJob) -> Result<KMeans> {
    let set = extraction.features(&job.images, View::Full, "features")?;
    if set.is_empty() {
        return Err(TrainError::NoImages(format!("{} ({} files, none readable)", job.sources(), job.images.len())));
    }
    let tokens = set.unit_tokens();
    if tokens.nrows() < job.concepts {
        return Err(TrainError::TooLittleData(format!(
            "{} patch tokens from {} images is fewer than the {} clusters asked for",
            tokens.nrows(),
            set.len(),
            job.concepts
        )));
    }
    log::info!("clustering {} tokens from {} images into {} concepts", tokens.nrows(), set.len(), job.concepts);
    let options = KMeansOptions { k: job.concepts, max_iterations: 100, restarts: 3, seed: job.seed };
    let result = spherical_kmeans(tokens.view(), &options);
    log::info!("k-means: mean cosine {:.4} after {} iterations", result.objective, result.iterations);
    let input = &extraction.input;
    let description = format!(
        "spherical k-means, {} concepts, seed {}, on {} images from {} at {}x{}",
        job.concepts,
        job.seed,
        set.len(),
        job.sources(),
        input.width,
        input.height
    );
    let manifest = Manifest::for_concepts(&job.model_name(), extraction.backbone.clone(), input.clone(), job.concepts, description);
    let writer = ModelWriter::create(&job.out)?;
    writer.npy(&manifest.concepts.centroids, &result.centroids)?;
    writer.finish(Some(&manifest))?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_blobs() -> Array2<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let rows: Vec<f32> = (0..40)
            .flat_map(|i| {
                let centre = if i < 20 { [1.0, 0.0, 0.0] } else { [0.0, 0.0, 1.0] };
                centre.map(|c| c + rng.random_range(-0.1..0.1))
            })
            .collect();
        l2_normalize_rows(Array2::from_shape_vec((40, 3), rows).unwrap())
    }

    #[test]
    fn finds_two_directions() {
        let options = KMeansOptions { k: 2, max_iterations: 50, restarts: 2, seed: 7 };
        let result = spherical_kmeans(two_blobs().view(), &options);
        let mut firsts: Vec<f32> = result.centroids.column(0).to_vec();
        firsts.sort_by(f32::total_cmp);
        assert!(firsts[0] < 0.2 && firsts[1] > 0.95, "{:?}", result.centroids);
        assert!(result.objective > 0.95);
    }

    #[test]
    fn same_seed_same_result() {
        let options = KMeansOptions { k: 3, max_iterations: 50, restarts: 1, seed: 42 };
        let a = spherical_kmeans(two_blobs().view(), &options);
        let b = spherical_kmeans(two_blobs().view(), &options);
        assert_eq!(a.centroids, b.centroids);
    }
}
