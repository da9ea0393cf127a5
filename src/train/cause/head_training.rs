//! Stage 2: the segmentation head (either architecture), trained with the
//! concept-wise contrastive loss of student projections against EMA-teacher
//! projections (in-batch and from the concept bank). One loop for both
//! heads: the MLP head sees the grid-sampled tokens only, the TR head whole
//! images (its decoder attends over every token), and the loss uses the
//! same grid-sampled tokens of either.

use candle_core::{Device, Tensor};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::adam::{Adam, AdamConfig};
use super::contrastive::{concept_contrastive, ConceptBank, ContrastiveOptions};
use super::ema::{dropout_mask, Student, Teacher};
use super::{check_finite, normalize_rows, Result, TrainError};
use crate::head::candle::{forward, linear, Params};
use crate::head::init::{init, HeadShape, PROJECTION};
use crate::head::layers::nearest_codes;
use crate::head::{Head, HeadKind};
use crate::linalg::l2_normalize_rows;
use crate::progress::Progress;
use crate::train::features::{grid_sample, FeatureSet};

/// Settings of the head stage (CAUSE's defaults).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HeadOptions {
    /// Passes over the images.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub clip_norm: f64,
    /// EMA decay of the teacher per step.
    pub ema: f64,
    /// Dropout on the head input.
    pub dropout: f64,
    /// Grid-sampling window.
    pub window: usize,
    /// Head output size R.
    pub reduced_dim: usize,
    /// Projection size.
    pub projection_dim: usize,
    /// Contrastive temperature.
    pub temperature: f64,
    /// Concept similarity above which a pair is positive.
    pub positive: f32,
    /// Concept similarity below which a pair is negative.
    pub negative: f32,
    /// Per-concept FIFO length of the concept bank (0: no bank).
    pub bank_per_concept: usize,
    /// Bank entries compared per step (a random subset when the bank holds
    /// more; bounds the cost on a CPU).
    pub bank_sample: usize,
    /// Random seed.
    pub seed: u64,
}

impl Default for HeadOptions {
    fn default() -> Self {
        HeadOptions {
            epochs: 3,
            batch: 16,
            lr: 1e-3,
            weight_decay: 1e-4,
            clip_norm: 1.0,
            ema: 0.99,
            dropout: 0.1,
            window: 4,
            reduced_dim: 90,
            projection_dim: 2048,
            temperature: 0.07,
            positive: 0.3,
            negative: 0.1,
            bank_per_concept: 100,
            bank_sample: 4096,
            seed: 0,
        }
    }
}

/// What the head stage did.
#[derive(Debug, Clone, Serialize)]
pub struct HeadReport {
    /// Mean loss per epoch.
    pub epoch_losses: Vec<f32>,
    /// Steps skipped because no anchor had a positive.
    pub empty_steps: usize,
    /// Projections in the bank at the end.
    pub bank_entries: usize,
}

/// The projections of one step's sampled tokens.
struct Projections<'a> {
    /// Student projections `[n, P]`, un-normalised.
    pub student: &'a Tensor,
    /// Teacher projections `[n, P]`, unit rows.
    pub teacher: &'a Tensor,
    /// Clusterbook concept of each of the `n` tokens.
    pub concepts: &'a [usize],
    /// Images the tokens came from.
    pub images: usize,
}

/// The optimisation shared by both head architectures: the concept-wise
/// contrastive loss of student projections against teacher projections
/// (in-batch and from the concept bank), the Adam step, the EMA update of
/// the teacher and the bank update, with the per-epoch bookkeeping.
struct ConceptObjective {
    adam: Adam,
    bank: ConceptBank,
    /// Cosines between the unit clusterbook vectors, `[K, K]` row-major.
    gram: Vec<f32>,
    concepts: usize,
    contrastive: ContrastiveOptions,
    options: HeadOptions,
    stage: &'static str,
    step: usize,
    epoch_loss: f64,
    epoch_steps: usize,
    /// What the run did so far.
    pub report: HeadReport,
}

impl ConceptObjective {
    /// An objective for `student` against `clusterbook`; `stage` names the
    /// head in errors and logs.
    fn new(student: &Student, clusterbook: &Array2<f32>, options: &HeadOptions, stage: &'static str) -> Result<Self> {
        let config = AdamConfig { lr: options.lr, weight_decay: options.weight_decay, clip_norm: Some(options.clip_norm), ..Default::default() };
        let codes_unit = l2_normalize_rows(clusterbook.clone());
        let gram = codes_unit.dot(&codes_unit.t()).as_standard_layout().iter().copied().collect();
        Ok(ConceptObjective {
            adam: Adam::new(student.variables(), config)?,
            bank: ConceptBank::new(clusterbook.nrows(), options.projection_dim, options.bank_per_concept),
            gram,
            concepts: clusterbook.nrows(),
            contrastive: ContrastiveOptions { temperature: options.temperature, positive: options.positive, negative: options.negative },
            options: *options,
            stage,
            step: 0,
            epoch_loss: 0.0,
            epoch_steps: 0,
            report: HeadReport { epoch_losses: Vec::new(), empty_steps: 0, bank_entries: 0 },
        })
    }

    /// One step on `batch`, then the EMA update of `teacher`.
    fn step(&mut self, student: &Student, teacher: &mut Teacher, batch: Projections, rng: &mut ChaCha8Rng) -> Result<()> {
        let Projections { student: student_proj, teacher: teacher_proj, concepts, images } = batch;
        let (n, k) = (concepts.len(), self.concepts);
        let gram = &self.gram;
        let mut sim = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                sim[i * n + j] = gram[concepts[i] * k + concepts[j]];
            }
        }
        let own: Vec<usize> = (0..n).collect();
        let mut terms = Vec::new();
        if let Some(t) = concept_contrastive(student_proj, teacher_proj, &sim, Some(&own), images, &self.contrastive)? {
            terms.push(t);
        }
        if self.options.bank_per_concept > 0 {
            if let Some((keys, key_concepts)) = self.bank.sample(self.options.bank_sample, rng, &Device::Cpu)? {
                let t_len = key_concepts.len();
                let mut sim = vec![0f32; n * t_len];
                for i in 0..n {
                    let row = &gram[concepts[i] * k..(concepts[i] + 1) * k];
                    for (j, &c) in key_concepts.iter().enumerate() {
                        sim[i * t_len + j] = row[c];
                    }
                }
                if let Some(t) = concept_contrastive(student_proj, &keys, &sim, None, images, &self.contrastive)? {
                    terms.push(t);
                }
            }
        }
        let count: usize = terms.iter().map(|t| t.count).sum();
        if count > 0 {
            let mut total = terms[0].sum.clone();
            for t in &terms[1..] {
                total = (total + &t.sum)?;
            }
            let loss = total.affine(1.0 / count as f64, 0.0)?;
            let value = check_finite(self.stage, self.step, loss.to_scalar::<f32>()?)?;
            let norm = self.adam.step(&loss.backward()?)?;
            check_finite(self.stage, self.step, norm as f32)?;
            teacher.update(student, self.options.ema)?;
            self.epoch_loss += value as f64;
            self.epoch_steps += 1;
        } else {
            self.report.empty_steps += 1;
        }
        if self.options.bank_per_concept > 0 {
            let projections = teacher_proj.flatten_all()?.to_vec1::<f32>()?;
            self.bank.update(concepts, &projections, 0.5, rng);
        }
        self.step += 1;
        Ok(())
    }

    /// Closes an epoch: records and logs its mean loss.
    fn end_epoch(&mut self, epoch: usize, bar: &Progress) {
        let mean = if self.epoch_steps > 0 { (self.epoch_loss / self.epoch_steps as f64) as f32 } else { f32::NAN };
        self.report.epoch_losses.push(mean);
        self.report.bank_entries = self.bank.len();
        let (stage, entries) = (self.stage, self.bank.len());
        bar.suspend(|| log::info!("{stage}: epoch {}: contrastive loss {mean:.4}, bank {entries} entries", epoch + 1));
        (self.epoch_loss, self.epoch_steps) = (0.0, 0);
    }
}

/// Trains a `kind` head on `set` (whole images of one grid) with the fixed
/// `clusterbook [K, D]`, which picks each token's concept (and a TR head's
/// queries). Returns the teacher (used at inference, as in the reference),
/// seeded and deterministic.
pub fn train_head(set: &FeatureSet, clusterbook: &Array2<f32>, kind: HeadKind, options: &HeadOptions) -> Result<(Head, HeadReport)> {
    let (rows, cols, dim) = set.geometry()?;
    if clusterbook.ncols() != dim {
        return Err(TrainError::Invalid(format!("clusterbook vectors have {} values, the features {dim}", clusterbook.ncols())));
    }
    let device = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let shape = HeadShape { kind, dim, grid: (rows, cols), reduced: options.reduced_dim, projection: options.projection_dim };
    let student = Student::new(&init(shape, &mut rng), &device)?;
    let mut teacher = Teacher::from_student(&student)?;
    let stage = match kind {
        HeadKind::Mlp => "head",
        HeadKind::Tr => "TR head",
    };
    let mut objective = ConceptObjective::new(&student, clusterbook, options, stage)?;
    let codes = Tensor::from_vec(clusterbook.iter().copied().collect(), clusterbook.dim(), &device)?;
    // Codes and tokens are fixed: every token's concept is too.
    let concepts: Vec<Vec<usize>> = (0..set.len()).map(|i| nearest_codes(set.tokens(i), clusterbook.view())).collect();

    let mut order: Vec<usize> = (0..set.len()).collect();
    let batch_size = options.batch.max(1);
    let mut bar = Progress::new(options.epochs * set.len().div_ceil(batch_size), stage);
    for epoch in 0..options.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(batch_size) {
            // One token per window of each image, the same for student and teacher.
            let mut picked = Vec::new();
            let mut picked_concepts = Vec::new();
            for (b, &i) in batch.iter().enumerate() {
                for t in grid_sample(&set.grids[i], options.window, &mut rng).1 {
                    picked.push((b, i, t));
                    picked_concepts.push(concepts[i][t]);
                }
            }
            let batch_input = match kind {
                HeadKind::Mlp => mlp_input(set, &picked, dim, &device)?,
                HeadKind::Tr => tr_input(set, batch, &picked, &concepts, &codes, &device)?,
            };
            let n = batch_input.x.dims3().map(|(b, t, _)| b * t)?;
            let masks = |rng: &mut ChaCha8Rng| -> candle_core::Result<(Tensor, Tensor)> {
                Ok((dropout_mask(n, dim, options.dropout, rng, &device)?, dropout_mask(n, dim, options.dropout, rng, &device)?))
            };
            let (t1, t2) = masks(&mut rng)?;
            let teacher_proj = normalize_rows(&batch_input.projection(kind, &teacher.params, (&t1, &t2))?)?;
            let (s1, s2) = masks(&mut rng)?;
            let student_proj = batch_input.projection(kind, &student.params(), (&s1, &s2))?;
            let projections = Projections { student: &student_proj, teacher: &teacher_proj, concepts: &picked_concepts, images: batch.len() };
            objective.step(&student, &mut teacher, projections, &mut rng)?;
            bar.inc();
        }
        objective.end_epoch(epoch, &bar);
    }
    bar.finish();
    let mut weights = teacher.params.to_weights()?;
    weights.remove(&format!("{PROJECTION}_weight"));
    weights.remove(&format!("{PROJECTION}_bias"));
    if kind == HeadKind::Tr {
        weights.insert("codes", clusterbook.clone());
    }
    let head = Head::new(kind, weights).map_err(|e| TrainError::Invalid(e.to_string()))?;
    Ok((head, objective.report))
}

/// What one step feeds the head: tokens `x [B, T, d]`, a TR head's queries,
/// and which output rows are the grid-sampled tokens (None: all of them).
struct BatchInput {
    x: Tensor,
    queries: Option<Tensor>,
    picked: Option<Tensor>,
}

impl BatchInput {
    /// The projection-head output `[n, P]` of the sampled tokens.
    fn projection(&self, kind: HeadKind, params: &Params, drop: (&Tensor, &Tensor)) -> candle_core::Result<Tensor> {
        let mut out = forward(kind, params, &self.x, self.queries.as_ref(), Some(drop))?;
        if let Some(picked) = &self.picked {
            out = out.index_select(picked, 0)?;
        }
        linear(params, PROJECTION, &out)
    }
}

/// The MLP head sees only the sampled tokens, as one `[1, n, d]` batch.
fn mlp_input(set: &FeatureSet, picked: &[(usize, usize, usize)], dim: usize, device: &Device) -> candle_core::Result<BatchInput> {
    let values: Vec<f32> = picked.iter().flat_map(|&(_, i, t)| set.tokens(i).row(t).to_vec()).collect();
    Ok(BatchInput { x: Tensor::from_vec(values, (1, picked.len(), dim), device)?, queries: None, picked: None })
}

/// The TR head sees whole images, each token queried by its nearest code.
fn tr_input(
    set: &FeatureSet,
    batch: &[usize],
    picked: &[(usize, usize, usize)],
    concepts: &[Vec<usize>],
    codes: &Tensor,
    device: &Device,
) -> candle_core::Result<BatchInput> {
    let (rows, cols, dim) = set.grids[batch[0]].dim();
    let tokens = rows * cols;
    let views: Vec<_> = batch.iter().map(|&i| set.tokens(i)).collect();
    let all = ndarray::concatenate(ndarray::Axis(0), &views).expect("same width");
    let x = Tensor::from_vec(all.into_raw_vec_and_offset().0, (batch.len(), tokens, dim), device)?;
    let ids: Vec<u32> = batch.iter().flat_map(|&i| concepts[i].iter().map(|&c| c as u32)).collect();
    let queries = codes.index_select(&Tensor::from_vec(ids, batch.len() * tokens, device)?, 0)?.reshape((batch.len(), tokens, dim))?;
    let rows_picked: Vec<u32> = picked.iter().map(|&(b, _, t)| (b * tokens + t) as u32).collect();
    let n = rows_picked.len();
    Ok(BatchInput { x, queries: Some(queries), picked: Some(Tensor::from_vec(rows_picked, n, device)?) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::features::blob_set;

    fn clusterbook() -> Array2<f32> {
        l2_normalize_rows(ndarray::array![[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    }

    #[test]
    fn training_runs_and_is_seeded_for_both_heads() {
        for (kind, side) in [(HeadKind::Mlp, 8), (HeadKind::Tr, 6)] {
            let set = blob_set(6, side, 3);
            let options = HeadOptions { epochs: 2, batch: 3, reduced_dim: 3, projection_dim: 8, window: 2, bank_sample: 64, ..Default::default() };
            let (a, report) = train_head(&set, &clusterbook(), kind, &options).unwrap();
            assert_eq!(report.epoch_losses.len(), 2);
            assert!(report.epoch_losses.iter().all(|l| l.is_finite()), "{kind:?}: {:?}", report.epoch_losses);
            assert!(report.bank_entries > 0);
            assert_eq!((a.kind(), a.output_dim(), a.input_dim()), (kind, 3, 4));
            let (b, _) = train_head(&set, &clusterbook(), kind, &options).unwrap();
            assert_eq!(a, b, "same seed, same head");
            let (c, _) = train_head(&set, &clusterbook(), kind, &HeadOptions { seed: 9, ..options }).unwrap();
            assert_ne!(a, c);
        }
    }

    #[test]
    fn nan_features_stop_training_with_a_clear_error() {
        let mut set = blob_set(2, 6, 4);
        set.grids[0][[0, 0, 0]] = f32::NAN;
        let options = HeadOptions { epochs: 1, batch: 2, reduced_dim: 3, projection_dim: 8, window: 2, ..Default::default() };
        let err = train_head(&set, &clusterbook(), HeadKind::Tr, &options).unwrap_err();
        assert!(matches!(err, TrainError::NonFinite { stage: "TR head", .. }), "{err}");
    }
}
