//! CAUSE's concept-wise contrastive loss and its concept bank.
//!
//! For an anchor (student projection, L2-normalised) and keys (teacher
//! projections, L2-normalised): `s = cos / temperature`. The concept
//! similarity of a pair is the cosine between their clusterbook vectors;
//! keys above `positive` are positives (the anchor's own teacher token
//! excluded), below `negative` negatives, the rest ignored. Each positive
//! contributes `-s_ap + log sum_{k in pos ∪ neg} exp(s_ak)` (InfoNCE with
//! several positives); a block of anchors (one image) averages over its
//! positives, and blocks without a positive contribute nothing (the
//! reference code divides by zero there and produces NaN).

use std::collections::VecDeque;

use candle_core::{Device, Tensor, D};
use rand::seq::SliceRandom;
use rand::Rng;

use super::normalize_rows;

/// Thresholds and temperature of the loss.
#[derive(Debug, Clone, Copy)]
pub struct ContrastiveOptions {
    /// Softmax temperature.
    pub temperature: f64,
    /// Concept similarity above which a key is a positive.
    pub positive: f32,
    /// Concept similarity below which a key is a negative.
    pub negative: f32,
}

impl Default for ContrastiveOptions {
    fn default() -> Self {
        ContrastiveOptions { temperature: 0.07, positive: 0.3, negative: 0.1 }
    }
}

/// The loss terms of one comparison: the sum of the per-block means and
/// how many blocks had a positive (callers average terms over all their
/// comparisons, as the reference does).
pub struct LossTerms {
    /// Sum over blocks with positives of each block's mean positive loss.
    pub sum: Tensor,
    /// Number of such blocks.
    pub count: usize,
}

/// Concept-wise InfoNCE of `anchors [M, P]` against `keys [T, P]` with
/// concept similarities `concept_sim` (row-major `[M, T]`). `own[i]`, when
/// given, is the key that is anchor `i`'s own teacher token (never a
/// positive). Anchors form `blocks` equal consecutive blocks. `None` when no
/// anchor has a positive.
pub fn concept_contrastive(
    anchors: &Tensor,
    keys: &Tensor,
    concept_sim: &[f32],
    own: Option<&[usize]>,
    blocks: usize,
    options: &ContrastiveOptions,
) -> candle_core::Result<Option<LossTerms>> {
    let (m, _) = anchors.dims2()?;
    let (t, _) = keys.dims2()?;
    assert_eq!(concept_sim.len(), m * t, "concept similarities must be [anchors, keys]");
    assert!(blocks > 0 && m % blocks == 0, "{m} anchors do not split into {blocks} blocks");
    let mut positive = vec![0f32; m * t];
    let mut valid = vec![0f32; m * t];
    for i in 0..m {
        for j in 0..t {
            let s = concept_sim[i * t + j];
            let is_own = own.is_some_and(|own| own[i] == j);
            let pos = s > options.positive && !is_own;
            let neg = s < options.negative;
            positive[i * t + j] = pos as u8 as f32;
            valid[i * t + j] = (pos || neg) as u8 as f32;
        }
    }
    let per_block = m / blocks;
    let counts: Vec<f32> = positive.chunks(per_block * t).map(|b| b.iter().sum()).collect();
    let with_positives = counts.iter().filter(|&&c| c > 0.0).count();
    if with_positives == 0 {
        return Ok(None);
    }
    let device = anchors.device();
    let positive = Tensor::from_vec(positive, (m, t), device)?;
    let valid = Tensor::from_vec(valid, (m, t), device)?;
    let s = normalize_rows(anchors)?.matmul(&normalize_rows(keys)?.t()?)?.affine(1.0 / options.temperature, 0.0)?;
    let shifted = s.broadcast_sub(&s.max_keepdim(D::Minus1)?.detach())?;
    // A row without any positive or negative has a zero sum: the floor
    // keeps its log finite, and it has no positive to be counted anyway.
    let log_denominator = (shifted.exp()? * &valid)?.sum_keepdim(D::Minus1)?.clamp(1e-30f32, f32::MAX)?.log()?;
    let per_pair = log_denominator.broadcast_sub(&shifted)?;
    let block_sums = (per_pair * positive)?.reshape((blocks, per_block * t))?.sum(D::Minus1)?;
    let weights: Vec<f32> = counts.iter().map(|&c| if c > 0.0 { 1.0 / c } else { 0.0 }).collect();
    let weights = Tensor::from_vec(weights, blocks, device)?;
    let sum = (block_sums * weights)?.sum_all()?;
    Ok(Some(LossTerms { sum, count: with_positives }))
}

/// Per concept, a FIFO of up to `capacity` past teacher projections.
pub struct ConceptBank {
    capacity: usize,
    dim: usize,
    queues: Vec<VecDeque<Vec<f32>>>,
}

impl ConceptBank {
    /// An empty bank for `concepts` concepts and projections of size `dim`.
    pub fn new(concepts: usize, dim: usize, capacity: usize) -> Self {
        ConceptBank { capacity, dim, queues: vec![VecDeque::new(); concepts] }
    }

    /// Appends `projection` to `concept`'s queue, dropping the oldest
    /// entries beyond the capacity.
    pub fn push(&mut self, concept: usize, projection: Vec<f32>) {
        assert_eq!(projection.len(), self.dim, "projection size");
        let queue = &mut self.queues[concept];
        queue.push_back(projection);
        while queue.len() > self.capacity {
            queue.pop_front();
        }
    }

    /// Adds a random `keep` fraction of each concept's new projections (the
    /// reference keeps 50 %), rows of `projections [n, dim]` with concepts
    /// `concepts[n]`.
    pub fn update(&mut self, concepts: &[usize], projections: &[f32], keep: f64, rng: &mut impl Rng) {
        let mut by_concept: Vec<(usize, usize)> = concepts.iter().copied().enumerate().map(|(i, c)| (c, i)).collect();
        by_concept.sort_unstable();
        for group in by_concept.chunk_by(|a, b| a.0 == b.0) {
            let mut rows: Vec<usize> = group.iter().map(|&(_, i)| i).collect();
            rows.shuffle(rng);
            let n = (rows.len() as f64 * keep) as usize;
            for &i in &rows[..n] {
                self.push(group[0].0, projections[i * self.dim..(i + 1) * self.dim].to_vec());
            }
        }
    }

    /// Entries stored for `concept`, oldest first.
    pub fn entries(&self, concept: usize) -> impl Iterator<Item = &Vec<f32>> {
        self.queues[concept].iter()
    }

    /// Total number of stored projections.
    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` stored projections (a uniform random subset when there
    /// are more) as `[T, dim]` and their concepts.
    pub fn sample(&self, limit: usize, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Option<(Tensor, Vec<usize>)>> {
        let all: Vec<(usize, &Vec<f32>)> = self.queues.iter().enumerate().flat_map(|(c, q)| q.iter().map(move |p| (c, p))).collect();
        if all.is_empty() {
            return Ok(None);
        }
        let picks: Vec<usize> = if all.len() > limit {
            let mut picks = rand::seq::index::sample(rng, all.len(), limit).into_vec();
            picks.sort_unstable();
            picks
        } else {
            (0..all.len()).collect()
        };
        let mut data = Vec::with_capacity(picks.len() * self.dim);
        let mut concepts = Vec::with_capacity(picks.len());
        for &i in &picks {
            concepts.push(all[i].0);
            data.extend_from_slice(all[i].1);
        }
        Ok(Some((Tensor::from_vec(data, (picks.len(), self.dim), device)?, concepts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn t(rows: &[&[f32]]) -> Tensor {
        let cols = rows[0].len();
        Tensor::from_vec(rows.iter().flat_map(|r| r.iter().copied()).collect::<Vec<_>>(), (rows.len(), cols), &Device::Cpu).unwrap()
    }

    fn value(terms: &LossTerms) -> f32 {
        terms.sum.to_scalar::<f32>().unwrap() / terms.count as f32
    }

    const UNIT: ContrastiveOptions = ContrastiveOptions { temperature: 1.0, positive: 0.3, negative: 0.1 };

    #[test]
    fn one_positive_one_negative_one_ignored() {
        // Anchor e1; keys e1 (positive), e2 (ignored: concept sim 0.2),
        // -e1 (negative). Loss = -1 + log(e^1 + e^-1) = log(1 + e^-2).
        let anchors = t(&[&[1.0, 0.0]]);
        let keys = t(&[&[1.0, 0.0], &[0.0, 1.0], &[-1.0, 0.0]]);
        let terms = concept_contrastive(&anchors, &keys, &[0.9, 0.2, -0.5], None, 1, &UNIT).unwrap().unwrap();
        let expected = (1.0 + (-2f32).exp()).ln();
        assert!((value(&terms) - expected).abs() < 1e-5, "{} vs {expected}", value(&terms));
    }

    #[test]
    fn several_positives_are_averaged_and_the_own_token_is_excluded() {
        // Keys: own token (e1, would be a positive), e2 (positive), -e1
        // (negative). Only e2 counts as a positive: -0 + log(e^0 + e^-1);
        // the own token is neither positive nor negative (not in the sum).
        let anchors = t(&[&[1.0, 0.0]]);
        let keys = t(&[&[1.0, 0.0], &[0.0, 1.0], &[-1.0, 0.0]]);
        let sim = [0.9, 0.8, 0.0];
        let terms = concept_contrastive(&anchors, &keys, &sim, Some(&[0]), 1, &UNIT).unwrap().unwrap();
        let expected = (1.0 + (-1f32).exp()).ln();
        assert!((value(&terms) - expected).abs() < 1e-5, "{} vs {expected}", value(&terms));
        // Without the exclusion both positives count: mean of the two terms.
        let terms = concept_contrastive(&anchors, &keys, &sim, None, 1, &UNIT).unwrap().unwrap();
        let denominator = (1f32.exp() + 1.0 + (-1f32).exp()).ln();
        let expected = ((denominator - 1.0) + denominator) / 2.0;
        assert!((value(&terms) - expected).abs() < 1e-5, "{} vs {expected}", value(&terms));
    }

    #[test]
    fn no_positive_gives_none_and_never_nan() {
        let anchors = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let keys = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        // Only own tokens are similar: after the exclusion nothing is positive.
        let sim = [1.0, 0.0, 0.0, 1.0];
        assert!(concept_contrastive(&anchors, &keys, &sim, Some(&[0, 1]), 2, &UNIT).unwrap().is_none());
        // Block 0 has a positive, block 1 has no valid key at all: finite,
        // and only block 0 counts.
        let sim = [0.5, 0.5, 0.2, 0.2];
        let terms = concept_contrastive(&anchors, &keys, &sim, None, 2, &UNIT).unwrap().unwrap();
        assert_eq!(terms.count, 1);
        let v = value(&terms);
        assert!(v.is_finite(), "{v}");
        let grads = terms.sum.backward().unwrap();
        assert!(grads.get(&anchors).is_none() || grads.get(&anchors).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().is_finite());
    }

    #[test]
    fn gradient_pulls_the_anchor_towards_its_positive() {
        let anchor = candle_core::Var::from_slice(&[1.0f32, 1.0], (1, 2), &Device::Cpu).unwrap();
        let keys = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let terms = concept_contrastive(anchor.as_tensor(), &keys, &[0.9, -0.9], None, 1, &UNIT).unwrap().unwrap();
        let g = terms.sum.backward().unwrap().get(anchor.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g[0] < 0.0 && g[1] > 0.0, "descent must move towards e1 and away from e2: {g:?}");
    }

    #[test]
    fn bank_is_a_fifo_per_concept() {
        let mut bank = ConceptBank::new(2, 1, 3);
        for v in 0..5 {
            bank.push(0, vec![v as f32]);
        }
        bank.push(1, vec![9.0]);
        let kept: Vec<f32> = bank.entries(0).map(|e| e[0]).collect();
        assert_eq!(kept, vec![2.0, 3.0, 4.0], "oldest dropped first");
        assert_eq!(bank.len(), 4);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (keys, concepts) = bank.sample(10, &mut rng, &Device::Cpu).unwrap().unwrap();
        assert_eq!(keys.dims2().unwrap(), (4, 1));
        assert_eq!(concepts, vec![0, 0, 0, 1]);
        let (keys, _) = bank.sample(2, &mut rng, &Device::Cpu).unwrap().unwrap();
        assert_eq!(keys.dims2().unwrap(), (2, 1));
    }

    #[test]
    fn bank_update_keeps_half_of_each_concept() {
        let mut bank = ConceptBank::new(2, 1, 100);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        bank.update(&[0, 0, 0, 0, 1, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.5, &mut rng);
        assert_eq!(bank.entries(0).count(), 2);
        assert_eq!(bank.entries(1).count(), 1);
        assert!(bank.entries(1).all(|e| e[0] >= 5.0));
    }
}
