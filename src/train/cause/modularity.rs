//! The modularity loss of CAUSE and the concept clusterbook trained with it.
//!
//! For the tokens `x` of one image: affinity `A = max(cos(x_i, x_j), 0)` with
//! a zero diagonal, degrees `d = A 1`, `e = 1' A 1`, modularity matrix
//! `W = A - d d' / e`; soft assignment `C_ik = max(cos(x_i, c_k), 0)`;
//! same-community indicator `delta_ij = max_k tanh(C_ik C_jk / tau)`;
//! loss `-(1/e) sum_ij W_ij delta_ij`. Only the codes `c` get gradients.
//! Since tanh is increasing and `C >= 0`, `delta = tanh(max_k C_ik C_jk / tau)`,
//! which is what is computed (same value and gradient, N² instead of N²K tanh).

use candle_core::{Device, Tensor, Var, D};
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::adam::{Adam, AdamConfig};
use crate::train::features::{grid_sample, FeatureSet};
use super::{check_finite, normalize_rows, Result, TrainError};
use crate::linalg::l2_normalize_rows;
use crate::progress::Progress;

/// `W / e` of the tokens `x [N, D]` (constant: `x` is detached) and `e`.
pub fn modularity_matrix(x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let x = normalize_rows(&x.detach())?;
    let n = x.dim(0)?;
    let off_diagonal = (Tensor::ones((n, n), x.dtype(), x.device())? - Tensor::eye(n, x.dtype(), x.device())?)?;
    let a = (x.matmul(&x.t()?)?.relu()? * off_diagonal)?;
    let d = a.sum_keepdim(1)?;
    let e = a.sum_all()?.clamp(1e-12f32, f32::MAX)?;
    let w = (&a - d.matmul(&d.t()?)?.broadcast_div(&e)?)?;
    Ok((w.broadcast_div(&e)?, e))
}

/// The modularity loss of tokens `x [N, D]` against codes `[K, D]` (see the
/// module docs); differentiable with respect to `codes`.
pub fn modularity_loss(x: &Tensor, codes: &Tensor, tau: f64) -> candle_core::Result<Tensor> {
    let (w, _) = modularity_matrix(x)?;
    modularity_loss_with(&w, &normalize_rows(&x.detach())?, codes, tau)
}

/// [`modularity_loss`] with `W / e` precomputed and `x` already unit-norm.
pub fn modularity_loss_with(w_over_e: &Tensor, x_unit: &Tensor, codes: &Tensor, tau: f64) -> candle_core::Result<Tensor> {
    let c = x_unit.matmul(&normalize_rows(codes)?.t()?)?.relu()?; // [N, K]
    let pairs = c.unsqueeze(1)?.broadcast_mul(&c.unsqueeze(0)?)?; // [N, N, K]
    let delta = pairs.max(D::Minus1)?.affine(1.0 / tau, 0.0)?.tanh()?;
    (w_over_e * delta)?.sum_all()?.neg()
}

/// `k` distinct tokens drawn at random from the set, unit-norm: the
/// clusterbook's initialisation (the reference code's tiny uniform one
/// collapses: the loss only moves the codes that win the max, and a quick
/// prototype on this backbone kept 7 of 2048 codes alive).
pub fn init_from_tokens(set: &FeatureSet, k: usize, rng: &mut ChaCha8Rng) -> Result<Array2<f32>> {
    let (rows, cols, dim) = set.geometry()?;
    let total = set.len() * rows * cols;
    if total < k {
        return Err(TrainError::TooLittleData(format!("{total} tokens from {} images is fewer than the {k} codes asked for", set.len())));
    }
    let picks = rand::seq::index::sample(rng, total, k);
    let mut out = Array2::zeros((k, dim));
    for (row, flat) in picks.iter().enumerate() {
        let (image, token) = (flat / (rows * cols), flat % (rows * cols));
        out.row_mut(row).assign(&set.tokens(image).row(token));
    }
    Ok(l2_normalize_rows(out))
}

/// Settings of a modularity run (clusterbook or probe).
#[derive(Debug, Clone, Copy)]
pub struct ModularityOptions {
    /// Number of codes.
    pub codes: usize,
    /// Passes over the images.
    pub epochs: usize,
    /// Images per optimiser step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// tanh temperature.
    pub tau: f64,
    /// Grid-sampling window (one token per window x window patches).
    pub window: usize,
    /// Re-seed codes that no token chose during an epoch with random tokens.
    pub restart_dead: bool,
    /// Random seed.
    pub seed: u64,
}

impl Default for ModularityOptions {
    fn default() -> Self {
        ModularityOptions { codes: 2048, epochs: 1, batch: 16, lr: 1e-3, tau: 0.1, window: 4, restart_dead: false, seed: 0 }
    }
}

/// What a modularity run did.
#[derive(Debug, Clone)]
pub struct ModularityReport {
    /// Mean loss of the last epoch.
    pub final_loss: f32,
    /// Codes chosen (nearest by cosine) by at least one sampled token in the last epoch.
    pub used_codes: usize,
    /// Dead codes re-seeded over the run.
    pub restarted: usize,
}

/// Trains `options.codes` vectors on the tokens of `set` (mapped by
/// `transform` first, e.g. a head; identity for the clusterbook) by
/// maximising modularity, from `init` (`[codes, D']`).
pub fn train_modularity(
    set: &FeatureSet,
    transform: &dyn Fn(&Array2<f32>) -> Array2<f32>,
    init: Array2<f32>,
    options: &ModularityOptions,
    stage: &'static str,
) -> Result<(Array2<f32>, ModularityReport)> {
    set.geometry()?;
    let device = Device::Cpu;
    let (k, dim) = init.dim();
    let codes = Var::from_vec(init.into_raw_vec_and_offset().0, (k, dim), &device)?;
    let mut adam = Adam::new(vec![codes.clone()], AdamConfig { lr: options.lr, ..Default::default() })?;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut order: Vec<usize> = (0..set.len()).collect();
    let batches_per_epoch = set.len().div_ceil(options.batch.max(1));
    let mut bar = Progress::new(options.epochs * batches_per_epoch, stage);
    let mut report = ModularityReport { final_loss: 0.0, used_codes: 0, restarted: 0 };
    let mut step = 0;
    for epoch in 0..options.epochs {
        order.shuffle(&mut rng);
        let mut usage = vec![0usize; k];
        let mut epoch_loss = 0f64;
        let mut sampled: Vec<Array2<f32>> = Vec::new();
        for batch in order.chunks(options.batch.max(1)) {
            let mut grad: Option<Tensor> = None;
            let mut batch_loss = 0f32;
            for &i in batch {
                let (tokens, _) = grid_sample(&set.grids[i], options.window, &mut rng);
                let tokens = transform(&tokens);
                if options.restart_dead && sampled.len() < 64 {
                    sampled.push(l2_normalize_rows(tokens.clone()));
                }
                let n = tokens.nrows();
                let x = Tensor::from_vec(tokens.into_raw_vec_and_offset().0, (n, tokens_dim(&codes)?), &device)?;
                let x_unit = normalize_rows(&x)?;
                let (w, _) = modularity_matrix(&x_unit)?;
                let loss = modularity_loss_with(&w, &x_unit, codes.as_tensor(), options.tau)?;
                batch_loss += loss.to_scalar::<f32>()?;
                let grads = loss.backward()?;
                if let Some(g) = grads.get(codes.as_tensor()) {
                    grad = Some(match grad {
                        Some(sum) => (sum + g)?,
                        None => g.clone(),
                    });
                }
                let nearest = x_unit.matmul(&normalize_rows(codes.as_tensor())?.t()?)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
                for c in nearest {
                    usage[c as usize] += 1;
                }
            }
            let mean_loss = batch_loss / batch.len() as f32;
            check_finite(stage, step, mean_loss)?;
            epoch_loss += mean_loss as f64 * batch.len() as f64;
            if let Some(g) = grad {
                let mut store = candle_core::backprop::GradStore::default();
                store.insert(codes.as_tensor(), g.affine(1.0 / batch.len() as f64, 0.0)?);
                let norm = adam.step(&store)?;
                check_finite(stage, step, norm as f32)?;
            }
            step += 1;
            bar.inc();
        }
        report.final_loss = (epoch_loss / set.len() as f64) as f32;
        report.used_codes = usage.iter().filter(|&&u| u > 0).count();
        bar.suspend(|| log::info!("{stage}: epoch {}: loss {:.4}, {} of {k} codes used", epoch + 1, report.final_loss, report.used_codes));
        if options.restart_dead && epoch + 1 < options.epochs && !sampled.is_empty() {
            let pool = ndarray::concatenate(Axis(0), &sampled.iter().map(|a| a.view()).collect::<Vec<_>>()).expect("same width");
            let mut current = codes_to_array(&codes)?;
            let mut restarted = 0;
            for (c, &u) in usage.iter().enumerate() {
                if u == 0 {
                    let pick = rng.random_range(0..pool.nrows());
                    current.row_mut(c).assign(&pool.row(pick));
                    restarted += 1;
                }
            }
            report.restarted += restarted;
            codes.set(&Tensor::from_vec(current.into_raw_vec_and_offset().0, (k, dim), &device)?)?;
        }
    }
    bar.finish();
    Ok((codes_to_array(&codes)?, report))
}

fn tokens_dim(codes: &Var) -> candle_core::Result<usize> {
    codes.as_tensor().dim(1)
}

/// A `[K, D]` tensor as an ndarray.
pub fn codes_to_array(codes: &Tensor) -> candle_core::Result<Array2<f32>> {
    let (k, d) = codes.dims2()?;
    Ok(Array2::from_shape_vec((k, d), codes.flatten_all()?.to_vec1::<f32>()?).expect("k*d values"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        Tensor::from_vec(rows.iter().flatten().copied().collect::<Vec<_>>(), (rows.len(), 2), &Device::Cpu).unwrap()
    }

    /// Two communities: tokens 0-2 along e1, tokens 3-5 along e2 (orthogonal,
    /// so A is block-diagonal with blocks of ones).
    fn two_communities() -> Tensor {
        t(&[[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 0.2]])
    }

    #[test]
    fn modularity_of_two_known_communities() {
        // A: two 3x3 blocks of ones minus the diagonal, so d = 2 for all,
        // e = 12, W_ij = A_ij - 4/12. With codes = the two directions and
        // C in {0, 1}, delta is the same-community indicator (tanh(10) on
        // blocks, 0 elsewhere). Sum over blocks of W (incl. diagonal):
        // 2 blocks * (6 * (1 - 1/3) + 3 * (0 - 1/3)) = 6; loss = -6/12 * tanh(10).
        let codes = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let loss = modularity_loss(&two_communities(), &codes, 0.1).unwrap().to_scalar::<f32>().unwrap();
        let expected = -0.5 * 10f32.tanh();
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        // One code for everything: C = 1/sqrt2 for every token, so delta is
        // tanh(5) for every pair and the loss is -tanh(5)/e times the sum
        // of all of W, which is 0 (sum A - (sum d)^2 / e = e - e).
        let one = t(&[[1.0, 1.0]]);
        let merged = modularity_loss(&two_communities(), &one, 0.1).unwrap().to_scalar::<f32>().unwrap();
        assert!(merged.abs() < 1e-5, "{merged}");
        assert!(loss < merged - 0.4, "the true partition must score better: {loss} vs {merged}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x = t(&[[1.0, 0.2], [0.9, 0.4], [0.1, 1.0], [0.3, 0.8], [0.7, 0.7]]);
        let codes = Var::from_vec(vec![0.9f32, 0.3, 0.2, 0.8, 0.6, 0.5], (3, 2), &Device::Cpu).unwrap();
        let tau = 0.5;
        let loss = modularity_loss(&x, codes.as_tensor(), tau).unwrap();
        let grad = loss.backward().unwrap().get(codes.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base: Vec<f32> = codes.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let eval = |v: &[f32]| -> f64 {
            let c = Tensor::from_vec(v.iter().map(|&f| f as f64).collect::<Vec<_>>(), (3, 2), &Device::Cpu).unwrap();
            let x64 = x.to_dtype(candle_core::DType::F64).unwrap();
            modularity_loss(&x64, &c, tau).unwrap().to_scalar::<f64>().unwrap()
        };
        let h = 1e-4;
        for i in 0..base.len() {
            let (mut plus, mut minus) = (base.clone(), base.clone());
            plus[i] += h as f32;
            minus[i] -= h as f32;
            let numeric = (eval(&plus) - eval(&minus)) / (2.0 * h);
            assert!((numeric - grad[i] as f64).abs() < 2e-3, "d/dc[{i}]: analytic {} numeric {numeric}", grad[i]);
        }
    }

    #[test]
    fn training_separates_two_blobs() {
        // Images whose tokens come from two directions; two codes started
        // from tokens of one blob must end up one per blob.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let grids: Vec<ndarray::Array3<f32>> = (0..8)
            .map(|_| {
                ndarray::Array3::from_shape_fn((4, 4, 3), |(r, _, d)| {
                    let centre = if r < 2 { [1.0, 0.0, 0.0] } else { [0.0, 1.0, 0.0] };
                    centre[d] + rng.random_range(-0.1..0.1)
                })
            })
            .collect();
        let set = FeatureSet::from_grids(grids);
        let init = l2_normalize_rows(ndarray::array![[1.0, 0.2, 0.0], [1.0, -0.2, 0.1]]);
        let options = ModularityOptions { codes: 2, epochs: 60, batch: 4, lr: 0.05, tau: 0.1, window: 1, restart_dead: false, seed: 1 };
        let (codes, report) = train_modularity(&set, &|x| x.clone(), init, &options, "test").unwrap();
        assert_eq!(report.used_codes, 2, "{codes:?}");
        let second: Vec<f32> = codes.column(1).to_vec();
        assert!(second.iter().any(|&v| v > 0.5), "{codes:?}");
    }
}
