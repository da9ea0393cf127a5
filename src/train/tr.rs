//! The CAUSE-TR head in candle: parameters, the batched forward pass, the
//! export to the runtime's [`TrHead`], and its training with the same
//! concept-wise contrastive loss, EMA teacher and concept bank as the MLP
//! head ([`train_head`](super::pipeline::train_head)).
//!
//! The decoder layer attends over every token of an image, so each step
//! runs the head over whole images; the loss then uses one grid-sampled
//! token per window, as for the MLP head. The clusterbook is fixed: it
//! picks each token's query (nearest code by cosine) and the concept
//! similarities of the loss.

use candle_core::{Device, Tensor, D};
use ndarray::{Array1, Array2};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::data::{grid_sample, FeatureSet};
use super::head::{self, dropout_mask, head_forward, project, HeadShape, Student, Teacher};
use super::pipeline::{ConceptObjective, HeadOptions, HeadReport, Projections};
use super::{normalize_rows, Result, TrainError};
use crate::pipeline::head::Linear;
use crate::pipeline::tr_head::{nearest_codes, Attention, LayerNorm, TrHead, LAYER_NORM_EPS};
use crate::progress::Progress;

/// Index of the self-attention's parameters (q, k, v, out; weight then
/// bias each).
const SELF_ATTN: usize = 0;
/// Index of the cross-attention's parameters (same layout).
const CROSS_ATTN: usize = 8;
/// Index of ffn1 (weight, bias) and ffn2 (weight, bias).
const FFN: usize = 16;
/// Index of norm1, norm2, norm3 (gamma, beta each).
const NORMS: usize = 20;
/// Index of the positional embedding `[T, d]`.
const POS: usize = 26;
/// Index of the MLP head and projection, in [`head::PARAMETERS`] order, so
/// `&params[MLP..]` works with [`head_forward`] and [`project`].
pub const MLP: usize = 27;
/// Number of parameters of a TR head with its projection.
pub const PARAMETERS: usize = MLP + head::PARAMETERS;

/// FFN width of CAUSE's decoder layer.
pub const FFN_HIDDEN: usize = 2048;

/// Sizes of the TR head.
#[derive(Debug, Clone, Copy)]
pub struct TrShape {
    /// Token (and clusterbook) size d.
    pub dim: usize,
    /// Tokens per image T (the patch grid's size).
    pub tokens: usize,
    /// FFN width ([`FFN_HIDDEN`] in CAUSE).
    pub hidden: usize,
    /// Head output size R.
    pub reduced: usize,
    /// Projection size.
    pub projection: usize,
}

fn uniform(shape: (usize, usize), bound: f32, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random_range(-bound..bound)).collect();
    Tensor::from_vec(values, shape, device)
}

/// Freshly initialised parameters with PyTorch's defaults: attention input
/// projections Xavier-uniform with zero biases and output projections
/// uniform `±1/sqrt(d)` with zero biases (`nn.MultiheadAttention`), FFN
/// layers uniform `±1/sqrt(fan_in)` (`nn.Linear`), LayerNorms 1 and 0, the
/// positional embedding uniform with standard deviation 0.02, then the MLP
/// head and projection as [`head::init`].
pub fn init(shape: TrShape, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Vec<Tensor>> {
    let TrShape { dim: d, tokens, hidden, reduced, projection } = shape;
    let zeros = |n: usize| Tensor::zeros(n, candle_core::DType::F32, device);
    let mut out = Vec::with_capacity(PARAMETERS);
    // PyTorch initialises the stacked [3d, d] in-projection as one matrix.
    let xavier = (6.0 / (4 * d) as f32).sqrt();
    let fan_in = |n: usize| 1.0 / (n as f32).sqrt();
    for _ in 0..2 {
        for _ in 0..3 {
            out.push(uniform((d, d), xavier, rng, device)?);
            out.push(zeros(d)?);
        }
        out.push(uniform((d, d), fan_in(d), rng, device)?);
        out.push(zeros(d)?);
    }
    out.push(uniform((hidden, d), fan_in(d), rng, device)?);
    out.push(uniform((1, hidden), fan_in(d), rng, device)?.flatten_all()?);
    out.push(uniform((d, hidden), fan_in(hidden), rng, device)?);
    out.push(uniform((1, d), fan_in(hidden), rng, device)?.flatten_all()?);
    for _ in 0..3 {
        out.push(Tensor::ones(d, candle_core::DType::F32, device)?);
        out.push(zeros(d)?);
    }
    out.push(uniform((tokens, d), 0.02 * 3f32.sqrt(), rng, device)?);
    out.extend(head::init(HeadShape { input: d, reduced, projection }, rng, device)?);
    Ok(out)
}

/// `x [.., in] · wᵀ + b` as one 2-D product.
fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let input = *dims.last().expect("at least one axis");
    let y = x.reshape((x.elem_count() / input, input))?.matmul(&w.t()?)?.broadcast_add(b)?;
    *dims.last_mut().expect("at least one axis") = w.dim(0)?;
    y.reshape(dims)
}

/// Single-head attention (`p` = q, k, v, out weights and biases) of
/// `query [B, T, d]` over `key`, `value [B, M, d]`; a numerically stable
/// softmax (the row maximum is subtracted, detached).
fn attention(p: &[Tensor], query: &Tensor, key: &Tensor, value: &Tensor) -> candle_core::Result<Tensor> {
    let q = linear(query, &p[0], &p[1])?;
    let k = linear(key, &p[2], &p[3])?;
    let v = linear(value, &p[4], &p[5])?;
    let scores = q.matmul(&k.t()?)?.affine(1.0 / (q.dim(D::Minus1)? as f64).sqrt(), 0.0)?;
    let e = scores.broadcast_sub(&scores.max_keepdim(D::Minus1)?.detach())?.exp()?;
    let weights = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    linear(&weights.matmul(&v)?, &p[6], &p[7])
}

fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> candle_core::Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let std = centred.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, LAYER_NORM_EPS as f64)?.sqrt()?;
    centred.broadcast_div(&std)?.broadcast_mul(gamma)?.broadcast_add(beta)
}

/// Head features `[B * T, R]` (image-major rows) of whole images' tokens
/// `x [B, T, d]`, whose queries are the clusterbook rows `codes [K, d]`
/// picked by `ids` (u32 `[B * T]`, see [`nearest_codes`]). `drop` holds the
/// dropout masks `[B * T, d]` of the projection's two branches, as in
/// [`head_forward`] (the reference drops the `f1`/`f2` input).
pub fn tr_forward(params: &[Tensor], codes: &Tensor, x: &Tensor, ids: &Tensor, drop: Option<(&Tensor, &Tensor)>) -> candle_core::Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let p = params;
    let pos = &p[POS];
    let queries = codes.index_select(ids, 0)?.reshape((b, t, d))?;
    let with_pos = queries.broadcast_add(pos)?;
    let attended = attention(&p[SELF_ATTN..SELF_ATTN + 8], &with_pos, &with_pos, &queries)?;
    let tgt = layer_norm(&(queries + attended)?, &p[NORMS], &p[NORMS + 1])?;
    let attended = attention(&p[CROSS_ATTN..CROSS_ATTN + 8], &tgt.broadcast_add(pos)?, x, x)?;
    let tgt = layer_norm(&(tgt + attended)?, &p[NORMS + 2], &p[NORMS + 3])?;
    let hidden = linear(&tgt, &p[FFN], &p[FFN + 1])?.relu()?;
    let tgt = layer_norm(&(&tgt + linear(&hidden, &p[FFN + 2], &p[FFN + 3])?)?, &p[NORMS + 4], &p[NORMS + 5])?;
    let out = (x + tgt)?.reshape((b * t, d))?;
    head_forward(&params[MLP..], &out, drop)
}

fn array2(t: &Tensor) -> candle_core::Result<Array2<f32>> {
    let (r, c) = t.dims2()?;
    Ok(Array2::from_shape_vec((r, c), t.flatten_all()?.to_vec1::<f32>()?).expect("r*c values"))
}

fn linear_at(params: &[Tensor], i: usize) -> candle_core::Result<Linear> {
    Ok(Linear { weight: array2(&params[i])?, bias: Array1::from(params[i + 1].to_vec1::<f32>()?) })
}

/// The runtime head (no input transform; the projection is training-only)
/// with clusterbook `codes [K, d]` on a `grid` of `(rows, cols)` tokens.
pub fn to_runtime(params: &[Tensor], codes: &Array2<f32>, grid: (usize, usize)) -> candle_core::Result<TrHead> {
    let attention = |at: usize| -> candle_core::Result<Attention> {
        Ok(Attention { q: linear_at(params, at)?, k: linear_at(params, at + 2)?, v: linear_at(params, at + 4)?, out: linear_at(params, at + 6)? })
    };
    let norm = |i: usize| -> candle_core::Result<LayerNorm> {
        let at = NORMS + 2 * i;
        Ok(LayerNorm { gamma: Array1::from(params[at].to_vec1::<f32>()?), beta: Array1::from(params[at + 1].to_vec1::<f32>()?) })
    };
    Ok(TrHead {
        input: None,
        codes: codes.clone(),
        pos: array2(&params[POS])?,
        grid,
        self_attn: attention(SELF_ATTN)?,
        cross_attn: attention(CROSS_ATTN)?,
        norm1: norm(0)?,
        norm2: norm(1)?,
        norm3: norm(2)?,
        ffn1: linear_at(params, FFN)?,
        ffn2: linear_at(params, FFN + 2)?,
        mlp: head::to_runtime(&params[MLP..])?,
    })
}

/// The parameters of a runtime TR head as tensors, in [`init`]'s order
/// without the projection (enough for [`tr_forward`]); its input
/// transform, if any, is not included: apply it to the tokens first.
pub fn from_runtime(head: &TrHead, device: &Device) -> candle_core::Result<Vec<Tensor>> {
    let matrix = |a: &Array2<f32>| Tensor::from_vec(a.iter().copied().collect(), a.dim(), device);
    let vector = |a: &Array1<f32>| Tensor::from_vec(a.to_vec(), a.len(), device);
    let mut out = Vec::with_capacity(PARAMETERS);
    for attention in [&head.self_attn, &head.cross_attn] {
        for layer in [&attention.q, &attention.k, &attention.v, &attention.out] {
            out.push(matrix(&layer.weight)?);
            out.push(vector(&layer.bias)?);
        }
    }
    for layer in [&head.ffn1, &head.ffn2] {
        out.push(matrix(&layer.weight)?);
        out.push(vector(&layer.bias)?);
    }
    for norm in [&head.norm1, &head.norm2, &head.norm3] {
        out.push(vector(&norm.gamma)?);
        out.push(vector(&norm.beta)?);
    }
    out.push(matrix(&head.pos)?);
    out.extend(head::from_runtime(&head.mlp, device)?);
    Ok(out)
}

/// Trains the TR head on `set` (whole images of one grid) with the fixed
/// `clusterbook [K, D]`, exactly as [`train_head`](super::pipeline::train_head)
/// trains the MLP head (same options, loss, bank, EMA teacher and report),
/// except that the head runs over every token of each image and the loss
/// uses the grid-sampled rows of its output. Returns the teacher (used at
/// inference, as in the reference), seeded and deterministic.
pub fn train_tr_head(set: &FeatureSet, clusterbook: &Array2<f32>, options: &HeadOptions) -> Result<(TrHead, HeadReport)> {
    let (rows, cols, dim) = set.geometry()?;
    if clusterbook.ncols() != dim {
        return Err(TrainError::Invalid(format!("clusterbook vectors have {} values, the features {dim}", clusterbook.ncols())));
    }
    let tokens = rows * cols;
    let device = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let shape = TrShape { dim, tokens, hidden: FFN_HIDDEN, reduced: options.reduced_dim, projection: options.projection_dim };
    let student = Student::new(&init(shape, &mut rng, &device)?)?;
    let mut teacher = Teacher::from_student(&student)?;
    let mut objective = ConceptObjective::new(&student, clusterbook, options, "TR head")?;
    let k = clusterbook.nrows();
    let codes = Tensor::from_vec(clusterbook.iter().copied().collect(), (k, dim), &device)?;
    // Codes and tokens are fixed: every token's concept is too.
    let concepts: Vec<Vec<usize>> = (0..set.len()).map(|i| nearest_codes(set.tokens(i), clusterbook.view())).collect();

    let mut order: Vec<usize> = (0..set.len()).collect();
    let batch_size = options.batch.max(1);
    let mut bar = Progress::new(options.epochs * set.len().div_ceil(batch_size), "TR head");
    for epoch in 0..options.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(batch_size) {
            let views: Vec<_> = batch.iter().map(|&i| set.tokens(i)).collect();
            let all = ndarray::concatenate(ndarray::Axis(0), &views).expect("same width");
            let x = Tensor::from_vec(all.into_raw_vec_and_offset().0, (batch.len(), tokens, dim), &device)?;
            let ids: Vec<u32> = batch.iter().flat_map(|&i| concepts[i].iter().map(|&c| c as u32)).collect();
            let ids = Tensor::from_vec(ids, batch.len() * tokens, &device)?;
            // One token per window of each image, the same for student and teacher.
            let mut picked = Vec::new();
            let mut picked_concepts = Vec::new();
            for (b, &i) in batch.iter().enumerate() {
                for t in grid_sample(&set.grids[i], options.window, &mut rng).1 {
                    picked.push((b * tokens + t) as u32);
                    picked_concepts.push(concepts[i][t]);
                }
            }
            let n = picked.len();
            let picked = Tensor::from_vec(picked, n, &device)?;

            let all_tokens = batch.len() * tokens;
            let masks = |rng: &mut ChaCha8Rng| -> candle_core::Result<(Tensor, Tensor)> {
                Ok((dropout_mask(all_tokens, dim, options.dropout, rng, &device)?, dropout_mask(all_tokens, dim, options.dropout, rng, &device)?))
            };
            let (t1, t2) = masks(&mut rng)?;
            let teacher_out = tr_forward(&teacher.params, &codes, &x, &ids, Some((&t1, &t2)))?.index_select(&picked, 0)?;
            let teacher_proj = normalize_rows(&project(&teacher.params[MLP..], &teacher_out)?)?;
            let (s1, s2) = masks(&mut rng)?;
            let params = student.tensors();
            let student_out = tr_forward(&params, &codes, &x, &ids, Some((&s1, &s2)))?.index_select(&picked, 0)?;
            let student_proj = project(&params[MLP..], &student_out)?;

            let projections = Projections { student: &student_proj, teacher: &teacher_proj, concepts: &picked_concepts, images: batch.len() };
            objective.step(&student, &mut teacher, projections, &mut rng)?;
            bar.inc();
        }
        objective.end_epoch(epoch, &bar);
    }
    bar.finish();
    Ok((to_runtime(&teacher.params, clusterbook, (rows, cols))?, objective.report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data::blob_set;
    use crate::model::l2_normalize_rows;
    use ndarray::Array3;

    fn shape() -> TrShape {
        TrShape { dim: 4, tokens: 6, hidden: 5, reduced: 3, projection: 7 }
    }

    /// Parameters of [`shape`] with every value random (so biases, norms
    /// and the embedding all matter), and a clusterbook.
    fn random_params(seed: u64) -> (Vec<Tensor>, Array2<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let params = init(shape(), &mut rng, &Device::Cpu).unwrap();
        let params = params
            .iter()
            .map(|p| {
                let values: Vec<f32> = (0..p.elem_count()).map(|_| rng.random_range(-0.6f32..0.6)).collect();
                Tensor::from_vec(values, p.shape(), &Device::Cpu).unwrap()
            })
            .collect();
        let codes = Array2::from_shape_fn((5, 4), |_| rng.random_range(-1.0f32..1.0));
        (params, codes)
    }

    #[test]
    fn candle_forward_matches_the_runtime_head() {
        let (params, codes) = random_params(1);
        let head = to_runtime(&params, &codes, (2, 3)).unwrap();
        let codes_t = Tensor::from_vec(codes.iter().copied().collect(), (5, 4), &Device::Cpu).unwrap();
        // Two images in one batch: each must equal its own runtime forward.
        let x = Array3::from_shape_fn((2, 6, 4), |(b, t, d)| ((b * 7 + t * 3 + d * 5) % 11) as f32 / 5.0 - 1.0);
        let ids: Vec<u32> =
            (0..2).flat_map(|b| nearest_codes(x.index_axis(ndarray::Axis(0), b), codes.view())).map(|c| c as u32).collect();
        let x_t = Tensor::from_vec(x.iter().copied().collect(), (2, 6, 4), &Device::Cpu).unwrap();
        let ids = Tensor::from_vec(ids, 12, &Device::Cpu).unwrap();
        let candle = array2(&tr_forward(&params, &codes_t, &x_t, &ids, None).unwrap()).unwrap();
        for b in 0..2 {
            let runtime = head.forward(x.index_axis(ndarray::Axis(0), b)).unwrap();
            let rows = candle.slice(ndarray::s![b * 6..(b + 1) * 6, ..]);
            for (a, r) in rows.iter().zip(runtime.iter()) {
                assert!((a - r).abs() < 1e-4, "image {b}: {rows} vs {runtime}");
            }
        }
    }

    #[test]
    fn init_has_the_documented_layout() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let params = init(shape(), &mut rng, &Device::Cpu).unwrap();
        assert_eq!(params.len(), PARAMETERS);
        assert_eq!(params[POS].dims(), [6, 4]);
        assert_eq!(params[FFN].dims(), [5, 4]);
        assert_eq!(params[NORMS].to_vec1::<f32>().unwrap(), [1.0; 4]);
        assert_eq!(params[MLP + 6].dims(), [7, 3], "projection last");
    }

    #[test]
    fn training_runs_and_is_seeded() {
        let set = blob_set(6, 6, 3);
        let clusterbook = l2_normalize_rows(ndarray::array![[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]);
        let options = HeadOptions { epochs: 2, batch: 3, reduced_dim: 3, projection_dim: 8, window: 2, bank_sample: 64, ..Default::default() };
        let (a, report) = train_tr_head(&set, &clusterbook, &options).unwrap();
        assert_eq!(report.epoch_losses.len(), 2);
        assert!(report.epoch_losses.iter().all(|l| l.is_finite()), "{:?}", report.epoch_losses);
        assert!(report.bank_entries > 0);
        assert_eq!((a.grid, a.output_dim(), a.input_dim()), ((6, 6), 3, 4));
        let (b, _) = train_tr_head(&set, &clusterbook, &options).unwrap();
        assert_eq!(a, b, "same seed, same head");
        let (c, _) = train_tr_head(&set, &clusterbook, &HeadOptions { seed: 9, ..options }).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn nan_features_stop_training_with_a_clear_error() {
        let mut set = blob_set(2, 6, 4);
        set.grids[0][[0, 0, 0]] = f32::NAN;
        let clusterbook = l2_normalize_rows(ndarray::array![[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]);
        let options = HeadOptions { epochs: 1, batch: 2, reduced_dim: 3, projection_dim: 8, window: 2, ..Default::default() };
        let err = train_tr_head(&set, &clusterbook, &options).unwrap_err();
        assert!(matches!(err, TrainError::NonFinite { stage: "TR head", .. }), "{err}");
    }
}
