//! Label-free self-training of the probe on principal mask proposals
//! (PriMaPs-EM, Hahn et al. 2024), an optional last stage of `fit`.
//!
//! Every training image is cut into masks once, in the probe's feature
//! space (cutting them in the raw backbone space, as PriMaPs does, gave
//! coarse masks that mixed classes and measured worse on CamVid): the
//! first principal direction of its remaining tokens picks an anchor token
//! (the token most aligned with it), the mask is every remaining token at
//! least `similarity` cosine-close to the anchor, and the next mask is
//! sought among the tokens left over. Then, for `epochs` passes over the images,
//! each mask takes the concept its tokens vote for under the EMA teacher
//! probe (E-step), and the student probe is trained with the focal loss to
//! give all of the mask's tokens that concept (M-step); the teacher follows
//! the student by EMA and is the result. A mask's tokens are labelled as
//! one, so the probe learns boundaries that respect image regions instead
//! of the token-by-token noise of k-means. Only features are read, never
//! a label.

use std::borrow::Cow;

use candle_core::{Device, Tensor, Var, D};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::adam::{Adam, AdamConfig};
use super::ema::{Student, Teacher};
use super::{check_finite, normalize_rows, Result, TrainError};
use super::probe::head_features;
use crate::head::candle::Params;
use crate::head::{Head, HeadKind, Weights};
use crate::linalg::{argmax, l2_normalize_rows};
use crate::progress::Progress;
use crate::train::features::FeatureSet;

/// Settings of the self-training stage.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SelfTrainOptions {
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Adam learning rate of the student probe.
    pub lr: f64,
    /// EMA decay of the teacher per step.
    pub momentum: f64,
    /// Cosine similarity to the anchor a token needs to join its mask.
    pub similarity: f32,
    /// Softmax temperature of the probe's cosine scores.
    pub temperature: f64,
    /// Focal-loss exponent (0: cross-entropy).
    pub focal_gamma: f64,
    /// Mask search stops once fewer than this fraction of an image's tokens is left.
    pub leftover: f32,
    /// Seed of the image order.
    pub seed: u64,
    /// Also train the head's final projection (widened to [`HEAD_HIDDEN`]
    /// hidden units) jointly with the probe, at this Adam learning rate
    /// (None: only the probe).
    pub head_lr: Option<f64>,
}

impl Default for SelfTrainOptions {
    fn default() -> Self {
        SelfTrainOptions { epochs: 10, batch: 8, lr: 0.005, momentum: 0.98, similarity: 0.7, temperature: 0.1, focal_gamma: 2.0, leftover: 0.05, seed: 0, head_lr: None }
    }
}

/// What self-training did.
#[derive(Debug, Clone, Serialize)]
pub struct SelfTrainReport {
    /// Mean masks per image.
    pub masks_per_image: f64,
    /// Fraction of tokens covered by a mask (the rest get no pseudo-label).
    pub covered: f64,
    /// Focal loss of the last epoch.
    pub final_loss: f32,
    /// Fraction of training tokens whose concept the stage changed.
    pub changed: f64,
}

/// Principal mask proposals of one image's unit tokens `[n, D]`: disjoint
/// lists of token indices, largest structure first.
pub fn principal_masks(tokens: ArrayView2<f32>, similarity: f32, leftover: f32) -> Vec<Vec<usize>> {
    let n = tokens.nrows();
    let mut remaining: Vec<usize> = (0..n).collect();
    let mut masks = Vec::new();
    let stop = ((n as f32 * leftover).ceil() as usize).max(1);
    while remaining.len() >= stop {
        let x = tokens.select(Axis(0), &remaining);
        let direction = principal_direction(x.view());
        let alignment = x.dot(&direction);
        let anchor = argmax(&alignment);
        let closeness = x.dot(&x.row(anchor));
        let joins = |k: usize| closeness[k] >= similarity || k == anchor;
        masks.push((0..remaining.len()).filter(|&k| joins(k)).map(|k| remaining[k]).collect());
        remaining = (0..remaining.len()).filter(|&k| !joins(k)).map(|k| remaining[k]).collect();
    }
    masks
}

/// The first principal direction of the rows of `x` (uncentred: the top
/// eigenvector of `xᵀx`), by power iteration, signed towards the rows' mean.
fn principal_direction(x: ArrayView2<f32>) -> Array1<f32> {
    let mean = x.mean_axis(Axis(0)).expect("non-empty");
    let mut v = if mean.dot(&mean) > 1e-12 { mean.clone() } else { Array1::from_elem(x.ncols(), 1.0) };
    for _ in 0..30 {
        let next = x.t().dot(&x.dot(&v));
        let norm = next.dot(&next).sqrt();
        if norm < 1e-12 {
            break;
        }
        v = next / norm;
    }
    if v.dot(&mean) < 0.0 {
        v.mapv_inplace(|a| -a);
    }
    v
}

/// The concept each mask's tokens vote for under `probe` (unit rows):
/// the largest summed cosine score.
fn vote(tokens: ArrayView2<f32>, masks: &[Vec<usize>], probe: &Array2<f32>) -> Vec<u32> {
    masks
        .iter()
        .map(|mask| {
            let sum = tokens.select(Axis(0), mask).sum_axis(Axis(0));
            argmax(&probe.dot(&sum)) as u32
        })
        .collect()
}

/// Each token's best concept under `probe` (unit rows).
fn assign(tokens: ArrayView2<f32>, probe: &Array2<f32>) -> Vec<usize> {
    tokens.dot(&probe.t()).rows().into_iter().map(argmax).collect()
}

/// Mean focal loss of cosine scores `tokens · unit(weights)ᵀ / temperature`
/// against `labels`.
fn focal_loss(tokens: &Tensor, weights: &Tensor, labels: &Tensor, options: &SelfTrainOptions) -> candle_core::Result<Tensor> {
    let logits = tokens.matmul(&normalize_rows(weights)?.t()?)?.affine(1.0 / options.temperature, 0.0)?;
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
    let log_p = shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?;
    let log_p_true = log_p.gather(labels, D::Minus1)?;
    let weight = log_p_true.exp()?.affine(-1.0, 1.0)?.clamp(0f32, 1f32)?.powf(options.focal_gamma)?;
    (weight * log_p_true)?.mean_all()?.neg()
}

/// Hidden units of the projection's ReLU branch when the head is
/// self-trained (a narrower branch, such as the whitened k-means head's
/// empty one, is widened to this, its new outputs starting at zero).
pub const HEAD_HIDDEN: usize = 128;

/// Self-trains the probe of a fitted model on the backbone features `set`
/// (the probe lives in the output space of `head`; None: in the
/// backbone's), and with [`SelfTrainOptions::head_lr`] also the head's
/// final projection. Returns the head (changed only then) and the probe.
pub fn self_train_model(set: &FeatureSet, head: Option<&Head>, probe: &Array2<f32>, options: &SelfTrainOptions) -> Result<(Option<Head>, Array2<f32>, SelfTrainReport)> {
    match (head, options.head_lr) {
        (Some(head), Some(_)) => {
            let grids = set.grids.iter().map(|g| head.apply_trunk(g.view())).collect::<std::result::Result<Vec<_>, _>>();
            let trunk = FeatureSet { grids: grids.map_err(|e| TrainError::Invalid(e.to_string()))?, paths: set.paths.clone(), skipped: set.skipped };
            let start = widened(head.projection(), HEAD_HIDDEN, options.seed);
            let (projection, probe, report) = self_train(&trunk, Some(start), probe, options)?;
            let head = head.with_projection(&projection.expect("trained with a projection")).map_err(|e| TrainError::Invalid(e.to_string()))?;
            Ok((Some(head), probe, report))
        }
        (Some(head), None) => {
            let (_, probe, report) = self_train(&head_features(set, head)?, None, probe, options)?;
            Ok((Some(head.clone()), probe, report))
        }
        (None, _) => {
            let (_, probe, report) = self_train(set, None, probe, options)?;
            Ok((None, probe, report))
        }
    }
}

/// Self-trains `probe` (`[N, R]`) on the probe-space features `set`
/// (`[rows, cols, R]` grids: the head's output, or the tokens a k-means
/// probe was fitted on); returns the teacher probe (unit rows).
pub fn self_train_probe(set: &FeatureSet, probe: &Array2<f32>, options: &SelfTrainOptions) -> Result<(Array2<f32>, SelfTrainReport)> {
    let (_, probe, report) = self_train(set, None, probe, options)?;
    Ok((probe, report))
}

/// `projection` with its ReLU branch at least `hidden` wide: new hidden
/// units read random mixtures of the `f1` outputs (so they see the
/// features at the scale the probe does) and write nothing yet (zero
/// `f2b` columns), so the projection's output is unchanged.
fn widened(mut projection: Weights, hidden: usize, seed: u64) -> Weights {
    let (f1_weight, f1_bias) = (projection.matrix("f1_weight").to_owned(), projection.vector("f1_bias").to_owned());
    let (f2a_weight, f2a_bias, f2b_weight) = (projection.matrix("f2a_weight").to_owned(), projection.vector("f2a_bias").to_owned(), projection.matrix("f2b_weight").to_owned());
    let extra = hidden.saturating_sub(f2a_weight.nrows());
    if extra == 0 {
        return projection;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0004_1de2);
    let r = f1_weight.nrows();
    // Uniform with variance 1/r: unit-variance mixtures of unit-variance features.
    let bound = (3.0 / r as f32).sqrt();
    let mix = Array2::from_shape_fn((extra, r), |_| rng.random_range(-bound..bound));
    projection.insert("f2a_weight", ndarray::concatenate![Axis(0), f2a_weight, mix.dot(&f1_weight)]);
    projection.insert("f2a_bias", ndarray::concatenate![Axis(0), f2a_bias, mix.dot(&f1_bias)]);
    projection.insert("f2b_weight", ndarray::concatenate![Axis(1), f2b_weight, Array2::zeros((r, extra))]);
    projection
}

/// Unit probe-space features of one image's rows `x`: `x` itself without a
/// projection, else the projection's output.
fn probe_space(x: &Array2<f32>, projection: Option<&Params>) -> Result<Array2<f32>> {
    let Some(params) = projection else { return Ok(l2_normalize_rows(x.clone())) };
    let device = Device::Cpu;
    let input = Tensor::from_slice(x.as_slice().expect("standard layout"), (1, x.nrows(), x.ncols()), &device)?;
    let out = crate::head::candle::forward(HeadKind::Mlp, params, &input, None, None)?;
    let (n, r) = out.dims2()?;
    Ok(l2_normalize_rows(Array2::from_shape_vec((n, r), out.flatten_all()?.to_vec1::<f32>()?).expect("dims match")))
}

/// The stage itself: masks cut once in the starting probe space, then
/// teacher votes and student steps; with `projection` (weights `f1_*`,
/// `f2a_*`, `f2b_*` reading the grids of `set`) that projection is trained
/// too, at its own learning rate. Returns the teacher projection and probe.
fn self_train(set: &FeatureSet, projection: Option<Weights>, probe: &Array2<f32>, options: &SelfTrainOptions) -> Result<(Option<Weights>, Array2<f32>, SelfTrainReport)> {
    if options.batch == 0 || options.epochs == 0 {
        return Err(TrainError::Invalid("self-training needs at least one epoch and one image per step".into()));
    }
    let (_, _, dim) = set.geometry()?;
    let probe_dim = projection.as_ref().map_or(dim, |p| p.matrix("f1_weight").nrows());
    if probe.ncols() != probe_dim {
        return Err(TrainError::Invalid(format!("the probe has {} features, the training features {probe_dim}", probe.ncols())));
    }
    let device = Device::Cpu;
    let initial = l2_normalize_rows(probe.clone());
    let inputs: Vec<Array2<f32>> = match projection {
        Some(_) => (0..set.len()).map(|i| set.tokens(i).to_owned()).collect(),
        None => (0..set.len()).map(|i| l2_normalize_rows(set.tokens(i).to_owned())).collect(),
    };
    let student_projection = projection.as_ref().map(|w| Student::new(w, &device)).transpose()?;
    let mut teacher_projection = student_projection.as_ref().map(Teacher::from_student).transpose()?;
    let start: Vec<Array2<f32>> = inputs.iter().map(|x| probe_space(x, teacher_projection.as_ref().map(|t| &t.params))).collect::<Result<_>>()?;
    let mut bar = Progress::new(inputs.len(), "masks");
    let masks: Vec<Vec<Vec<usize>>> = start
        .iter()
        .map(|tokens| {
            let m = principal_masks(tokens.view(), options.similarity, options.leftover);
            bar.inc();
            m
        })
        .collect();
    bar.finish();
    let total: usize = inputs.iter().map(|t| t.nrows()).sum();
    let covered: usize = masks.iter().flatten().map(Vec::len).sum();
    let masks_per_image = masks.iter().map(Vec::len).sum::<usize>() as f64 / inputs.len() as f64;
    log::info!("self-training: {masks_per_image:.1} masks per image cover {:.1} % of the tokens", 100.0 * covered as f64 / total as f64);

    let student = Var::from_slice(initial.as_slice().expect("standard layout"), initial.dim(), &device)?;
    let mut adam = Adam::new(vec![student.clone()], AdamConfig { lr: options.lr, ..Default::default() })?;
    let mut projection_adam = match (&student_projection, options.head_lr) {
        (Some(s), Some(lr)) => Some(Adam::new(s.variables(), AdamConfig { lr, ..Default::default() })?),
        _ => None,
    };
    let mut teacher = initial.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5e1f_7a11);
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    let mut bar = Progress::new(options.epochs, "self-train");
    let mut final_loss = f32::NAN;
    let mut step = 0;
    for _ in 0..options.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut batches) = (0f32, 0usize);
        for chunk in order.chunks(options.batch) {
            let (mut rows, mut labels) = (Vec::new(), Vec::new());
            for &i in chunk {
                let voters = match &teacher_projection {
                    Some(t) => Cow::Owned(probe_space(&inputs[i], Some(&t.params))?),
                    None => Cow::Borrowed(&inputs[i]),
                };
                for (mask, label) in masks[i].iter().zip(vote(voters.view(), &masks[i], &teacher)) {
                    rows.extend(mask.iter().map(|&t| inputs[i].row(t)));
                    labels.extend(std::iter::repeat_n(label, mask.len()));
                }
            }
            if rows.is_empty() {
                continue;
            }
            let x = ndarray::stack(Axis(0), &rows).expect("same width");
            let x = Tensor::from_slice(x.as_slice().expect("standard layout"), x.dim(), &device)?;
            let features = match &student_projection {
                Some(s) => normalize_rows(&crate::head::candle::forward(HeadKind::Mlp, &s.params(), &x.unsqueeze(0)?, None, None)?)?,
                None => x,
            };
            let y = Tensor::from_vec(labels, (features.dim(0)?, 1), &device)?;
            let loss = focal_loss(&features, student.as_tensor(), &y, options)?;
            let value = check_finite("self-training", step, loss.to_scalar::<f32>()?)?;
            let grads = loss.backward()?;
            adam.step(&grads)?;
            if let (Some(adam), Some(s), Some(t)) = (projection_adam.as_mut(), &student_projection, teacher_projection.as_mut()) {
                adam.step(&grads)?;
                t.update(s, options.momentum)?;
            }
            let current = l2_normalize_rows(Array2::from_shape_vec(initial.dim(), student.as_tensor().flatten_all()?.to_vec1::<f32>()?).expect("probe shape"));
            teacher = l2_normalize_rows(teacher * options.momentum as f32 + current * (1.0 - options.momentum) as f32);
            loss_sum += value;
            batches += 1;
            step += 1;
        }
        final_loss = loss_sum / batches.max(1) as f32;
        bar.inc();
    }
    bar.finish();
    let mut changed = 0;
    for (x, before) in inputs.iter().zip(&start) {
        let after = match &teacher_projection {
            Some(t) => Cow::Owned(probe_space(x, Some(&t.params))?),
            None => Cow::Borrowed(x),
        };
        changed += assign(before.view(), &initial).iter().zip(assign(after.view(), &teacher)).filter(|(a, b)| **a != *b).count();
    }
    let trained_projection = teacher_projection.map(|t| t.params.to_weights()).transpose()?;
    let report = SelfTrainReport { masks_per_image, covered: covered as f64 / total as f64, final_loss, changed: changed as f64 / total as f64 };
    log::info!("self-training: focal loss {final_loss:.4}, {:.1} % of the tokens changed concept", 100.0 * report.changed);
    Ok((trained_projection, teacher, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn masks_split_two_directions_and_cover_every_token() {
        // Six tokens near x, three near y: two masks, largest first.
        let tokens = l2_normalize_rows(array![[1.0, 0.1], [1.0, -0.1], [1.0, 0.0], [1.0, 0.2], [1.0, 0.05], [1.0, -0.2], [0.1, 1.0], [0.0, 1.0], [-0.1, 1.0]]);
        let masks = principal_masks(tokens.view(), 0.8, 0.05);
        assert_eq!(masks, vec![vec![0, 1, 2, 3, 4, 5], vec![6, 7, 8]]);
    }

    #[test]
    fn a_mask_takes_the_concept_most_of_its_tokens_vote_for() {
        let tokens = l2_normalize_rows(array![[1.0, 0.0], [1.0, 0.1], [0.2, 1.0]]);
        let probe = array![[1.0, 0.0], [0.0, 1.0]];
        assert_eq!(vote(tokens.view(), &[vec![0, 1, 2], vec![2]], &probe), vec![0, 1]);
    }

    #[test]
    fn self_training_moves_a_misplaced_concept_onto_a_region() {
        // Every image: 12 tokens of region A (around x) and 12 of region B
        // (around y, with a spread along z). The start probe puts concept 1
        // between A and B, so it takes region A's tokens that lean towards
        // B; region A's mask votes for concept 0 as a whole, which pulls
        // concept 1 onto region B.
        let set = two_region_images();
        let probe = l2_normalize_rows(array![[1.0, -0.1, 0.0], [1.0, 0.5, 0.0]]);
        let before = assign(set.tokens(0), &probe);
        assert!(before[12..].iter().all(|&k| k == 1) && before[..12].contains(&1), "the start probe gives region A to both concepts: {before:?}");
        let options = SelfTrainOptions { epochs: 20, batch: 2, momentum: 0.9, lr: 0.05, similarity: 0.8, ..Default::default() };
        let (trained, report) = self_train_probe(&set, &probe, &options).unwrap();
        let after = assign(set.tokens(0), &trained);
        assert_eq!(after, [vec![0; 12], vec![1; 12]].concat(), "concept 0 = region A, concept 1 = region B");
        assert!(report.changed > 0.0 && report.covered > 0.9, "{report:?}");
    }

    /// Six images: 12 tokens of region A (around x) and 12 of region B
    /// (around y, with a spread along z) each.
    fn two_region_images() -> FeatureSet {
        let mut grids = Vec::new();
        for image in 0..6 {
            let mut tokens = Vec::new();
            for t in 0..12 {
                let wobble = ((t + image) % 5) as f32 * 0.15 - 0.3;
                tokens.extend([1.0, wobble, 0.0]);
            }
            for t in 0..12 {
                let spread = ((t * 7 + image) % 6) as f32 * 0.08 - 0.2;
                tokens.extend([0.0, 1.0, spread]);
            }
            grids.push(ndarray::Array3::from_shape_vec((4, 6, 3), tokens).unwrap());
        }
        FeatureSet::from_grids(grids)
    }

    /// A linear head `3 -> 3` (identity, empty ReLU branch).
    fn identity_head() -> Head {
        let mut weights = Weights::default();
        weights.insert("f1_weight", Array2::<f32>::eye(3));
        weights.insert("f1_bias", Array1::<f32>::zeros(3));
        weights.insert("f2a_weight", Array2::<f32>::zeros((1, 3)));
        weights.insert("f2a_bias", Array1::<f32>::zeros(1));
        weights.insert("f2b_weight", Array2::<f32>::zeros((3, 1)));
        weights.insert("f2b_bias", Array1::<f32>::zeros(3));
        Head::new(HeadKind::Mlp, weights).unwrap()
    }

    #[test]
    fn widening_the_projection_keeps_its_output() {
        let head = identity_head();
        let widened = head.with_projection(&widened(head.projection(), 16, 7)).unwrap();
        assert_eq!(widened.weights().matrix("f2a_weight").nrows(), 16);
        let x = array![[0.3f32, -1.0, 2.0], [1.0, 0.5, -0.2]];
        assert_eq!(widened.forward(x.view()).unwrap(), head.forward(x.view()).unwrap());
    }

    #[test]
    fn the_head_can_be_self_trained_with_the_probe() {
        let set = two_region_images();
        let probe = l2_normalize_rows(array![[1.0, -0.1, 0.0], [1.0, 0.5, 0.0]]);
        let head = identity_head();
        let options = SelfTrainOptions { epochs: 20, batch: 2, momentum: 0.9, lr: 0.05, similarity: 0.8, head_lr: Some(0.01), ..Default::default() };
        let (trained_head, trained, report) = self_train_model(&set, Some(&head), &probe, &options).unwrap();
        let trained_head = trained_head.unwrap();
        assert_eq!(trained_head.weights().matrix("f2a_weight").nrows(), HEAD_HIDDEN, "the ReLU branch is widened");
        assert_ne!(trained_head.projection().matrix("f1_weight"), head.projection().matrix("f1_weight"), "the projection was trained");
        let features = trained_head.forward(set.tokens(0)).unwrap();
        let after = assign(l2_normalize_rows(features).view(), &trained);
        assert_eq!(after, [vec![0; 12], vec![1; 12]].concat(), "concept 0 = region A, concept 1 = region B");
        assert!(report.changed > 0.0, "{report:?}");
    }

    #[test]
    fn zero_epochs_is_an_error() {
        let set = FeatureSet::from_grids(vec![ndarray::Array3::ones((2, 2, 3))]);
        let err = self_train_probe(&set, &Array2::ones((2, 3)), &SelfTrainOptions { epochs: 0, ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("at least one epoch"), "{err}");
    }
}
