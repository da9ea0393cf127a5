//! The head-training stage and the whole CAUSE run: clusterbook → head →
//! probe → a complete model directory, written atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use ndarray::Array2;
use ndarray_npy::{read_npy, write_npy};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::adam::{Adam, AdamConfig};
use super::contrastive::{concept_contrastive, ConceptBank, ContrastiveOptions};
use super::data::{grid_sample, FeatureSet};
use super::head::{dropout_mask, head_forward, init, project, HeadShape, Student, Teacher};
use super::modularity::{init_from_tokens, train_modularity, ModularityOptions, ModularityReport};
use super::probe::{head_features, kmeans_probe, modularity_probe, ProbeKind};
use super::{check_finite, normalize_rows, Result, TrainError};
use crate::model::l2_normalize_rows;
use crate::pipeline::head::{Head, HeadKind, MlpHead};
use crate::pipeline::tr_head::nearest_codes;
use crate::progress::Progress;

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
pub(crate) struct Projections<'a> {
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
pub(crate) struct ConceptObjective {
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
    pub(crate) fn new(student: &Student, clusterbook: &Array2<f32>, options: &HeadOptions, stage: &'static str) -> Result<Self> {
        let config = AdamConfig { lr: options.lr, weight_decay: options.weight_decay, clip_norm: Some(options.clip_norm), ..Default::default() };
        let codes_unit = l2_normalize_rows(clusterbook.clone());
        let gram = codes_unit.dot(&codes_unit.t()).as_standard_layout().iter().copied().collect();
        Ok(ConceptObjective {
            adam: Adam::new(student.vars.clone(), config)?,
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
    pub(crate) fn step(&mut self, student: &Student, teacher: &mut Teacher, batch: Projections, rng: &mut ChaCha8Rng) -> Result<()> {
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
    pub(crate) fn end_epoch(&mut self, epoch: usize, bar: &Progress) {
        let mean = if self.epoch_steps > 0 { (self.epoch_loss / self.epoch_steps as f64) as f32 } else { f32::NAN };
        self.report.epoch_losses.push(mean);
        self.report.bank_entries = self.bank.len();
        let (stage, entries) = (self.stage, self.bank.len());
        bar.suspend(|| log::info!("{stage}: epoch {}: contrastive loss {mean:.4}, bank {entries} entries", epoch + 1));
        (self.epoch_loss, self.epoch_steps) = (0.0, 0);
    }
}

/// Trains the MLP head with the concept-wise contrastive loss against the
/// EMA teacher and the concept bank; returns the teacher (used at inference,
/// as in the reference).
pub fn train_head(set: &FeatureSet, clusterbook: &Array2<f32>, options: &HeadOptions) -> Result<(MlpHead, HeadReport)> {
    let (_, _, dim) = set.geometry()?;
    if clusterbook.ncols() != dim {
        return Err(TrainError::Invalid(format!("clusterbook vectors have {} values, the features {dim}", clusterbook.ncols())));
    }
    let device = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let shape = HeadShape { input: dim, reduced: options.reduced_dim, projection: options.projection_dim };
    let student = Student::new(&init(shape, &mut rng, &device)?)?;
    let mut teacher = Teacher::from_student(&student)?;
    let mut objective = ConceptObjective::new(&student, clusterbook, options, "head")?;

    let mut order: Vec<usize> = (0..set.len()).collect();
    let batch_size = options.batch.max(1);
    let mut bar = Progress::new(options.epochs * set.len().div_ceil(batch_size), "head");
    for epoch in 0..options.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(batch_size) {
            // Same number of tokens per image, so blocks are equal.
            let samples: Vec<Array2<f32>> = batch.iter().map(|&i| grid_sample(&set.grids[i], options.window, &mut rng).0).collect();
            let views: Vec<_> = samples.iter().map(|s| s.view()).collect();
            let tokens = ndarray::concatenate(ndarray::Axis(0), &views).expect("same width");
            let n = tokens.nrows();
            let concepts = nearest_codes(tokens.view(), clusterbook.view());
            let x = Tensor::from_vec(tokens.into_raw_vec_and_offset().0, (n, dim), &device)?;

            let masks = |rng: &mut ChaCha8Rng| -> candle_core::Result<(Tensor, Tensor)> {
                Ok((dropout_mask(n, dim, options.dropout, rng, &device)?, dropout_mask(n, dim, options.dropout, rng, &device)?))
            };
            let (t1, t2) = masks(&mut rng)?;
            let teacher_proj = normalize_rows(&project(&teacher.params, &head_forward(&teacher.params, &x, Some((&t1, &t2)))?)?)?;
            let (s1, s2) = masks(&mut rng)?;
            let params = student.tensors();
            let student_proj = project(&params, &head_forward(&params, &x, Some((&s1, &s2)))?)?;
            let projections = Projections { student: &student_proj, teacher: &teacher_proj, concepts: &concepts, images: batch.len() };
            objective.step(&student, &mut teacher, projections, &mut rng)?;
            bar.inc();
        }
        objective.end_epoch(epoch, &bar);
    }
    bar.finish();
    Ok((super::head::to_runtime(&teacher.params)?, objective.report))
}

/// Settings of a whole CAUSE run.
#[derive(Debug, Clone)]
pub struct CauseOptions {
    /// Clusterbook stage (`codes` = K).
    pub clusterbook: ModularityOptions,
    /// Use this clusterbook (`.npy` `[K, D]`) instead of training one.
    pub clusterbook_file: Option<PathBuf>,
    /// Head stage.
    pub head: HeadOptions,
    /// Reuse the head of this CAUSE model directory instead of training one.
    pub head_from: Option<PathBuf>,
    /// Head architecture to train.
    pub arch: HeadKind,
    /// Number of concepts of the probe.
    pub concepts: usize,
    /// Probe method written into the model.
    pub probe: ProbeKind,
    /// Modularity-probe settings (`codes` is overridden by `concepts`).
    pub probe_modularity: ModularityOptions,
    /// Centre the head's output on the training set's mean (folded into
    /// the f1 bias, so free at run time) before fitting the probe.
    pub center: bool,
}

/// Everything a run produced.
pub struct CauseResult {
    /// `[K, D]` clusterbook.
    pub clusterbook: Array2<f32>,
    /// The trained (or reused) head.
    pub head: Head,
    /// Head stage report (None when reused).
    pub head_report: Option<HeadReport>,
    /// Clusterbook stage report (None when reused).
    pub clusterbook_report: Option<ModularityReport>,
    /// The probes that were fitted (k-means always; modularity when chosen
    /// or asked for comparison).
    pub probes: Vec<(ProbeKind, Array2<f32>)>,
    /// Modularity-probe report, when fitted.
    pub probe_report: Option<ModularityReport>,
    /// Seconds per stage.
    pub seconds: Vec<(&'static str, f64)>,
}

impl CauseResult {
    /// The probe of `kind`.
    pub fn probe(&self, kind: ProbeKind) -> Option<&Array2<f32>> {
        self.probes.iter().find(|(k, _)| *k == kind).map(|(_, p)| p)
    }
}

/// Reads a clusterbook `.npy` (float32 `[K, D]`, e.g. CAUSE's `modular.npy`).
pub fn read_clusterbook(path: &Path) -> Result<Array2<f32>> {
    let codes = read_npy::<_, Array2<f32>>(path).map_err(|e| TrainError::Invalid(format!("{}: not a float32 [K, D] .npy: {e}", path.display())))?;
    if codes.iter().any(|v| !v.is_finite()) {
        return Err(TrainError::Invalid(format!("{}: clusterbook values are not finite (NaN or infinite)", path.display())));
    }
    if codes.nrows() == 0 {
        return Err(TrainError::Invalid(format!("{}: empty clusterbook", path.display())));
    }
    Ok(codes)
}

/// Trains the clusterbook alone.
pub fn train_clusterbook(set: &FeatureSet, options: &ModularityOptions) -> Result<(Array2<f32>, ModularityReport)> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let init = init_from_tokens(set, options.codes, &mut rng)?;
    train_modularity(set, &|x| x.clone(), init, options, "clusterbook")
}

/// Runs every stage that is not reused; `compare_probes` also fits the
/// probe that is not written, to measure both.
pub fn run(set: &FeatureSet, options: &CauseOptions, compare_probes: bool) -> Result<CauseResult> {
    set.geometry()?;
    let mut seconds = Vec::new();
    let start = Instant::now();
    let (head, head_report, clusterbook, clusterbook_report) = if let Some(dir) = &options.head_from {
        let model = crate::model::Model::load(dir).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let head = model.head.ok_or_else(|| TrainError::Invalid(format!("{}: not a CAUSE model (it has no head)", dir.display())))?;
        let clusterbook = read_clusterbook(&dir.join("clusterbook.npy"))?;
        (head, None, clusterbook, None)
    } else {
        let (clusterbook, report) = match &options.clusterbook_file {
            Some(path) => (read_clusterbook(path)?, None),
            None => {
                let (c, r) = train_clusterbook(set, &options.clusterbook)?;
                (c, Some(r))
            }
        };
        seconds.push(("clusterbook", start.elapsed().as_secs_f64()));
        let start = Instant::now();
        let (head, head_report) = match options.arch {
            HeadKind::Mlp => {
                let (head, report) = train_head(set, &clusterbook, &options.head)?;
                (Head::Mlp(head), report)
            }
            HeadKind::Tr => {
                let (head, report) = super::tr::train_tr_head(set, &clusterbook, &options.head)?;
                (Head::Tr(head), report)
            }
        };
        seconds.push(("head", start.elapsed().as_secs_f64()));
        (head, Some(head_report), clusterbook, report)
    };
    let mut head = head;
    let mut features = head_features(set, &head)?;
    if options.center {
        let mean = mean_token(&features);
        head.projection_mut().f1.bias -= &mean;
        for grid in &mut features.grids {
            *grid -= &mean;
        }
    }
    let start = Instant::now();
    let mut probes = Vec::new();
    let mut probe_report = None;
    if options.probe == ProbeKind::Kmeans || compare_probes {
        probes.push((ProbeKind::Kmeans, kmeans_probe(&features, options.concepts, options.head.seed)?));
    }
    if options.probe == ProbeKind::Modularity || compare_probes {
        let probe_options = ModularityOptions { codes: options.concepts, ..options.probe_modularity };
        let (p, r) = modularity_probe(&features, &probe_options)?;
        log::info!("modularity probe: {} of {} concepts used", r.used_codes, options.concepts);
        probes.push((ProbeKind::Modularity, p));
        probe_report = Some(r);
    }
    seconds.push(("probe", start.elapsed().as_secs_f64()));
    Ok(CauseResult { clusterbook, head, head_report, clusterbook_report, probes, probe_report, seconds })
}

/// Mean token over every grid of `features`.
fn mean_token(features: &FeatureSet) -> ndarray::Array1<f32> {
    let mut sum = ndarray::Array1::<f64>::zeros(features.grids.first().map_or(0, |g| g.dim().2));
    let mut count = 0usize;
    for i in 0..features.len() {
        sum += &features.tokens(i).sum_axis(ndarray::Axis(0)).mapv(f64::from);
        count += features.tokens(i).nrows();
    }
    (sum / count.max(1) as f64).mapv(|v| v as f32)
}

/// Writes `write(tmp)` into a fresh sibling directory of `out` and moves it
/// into place only when complete (a failed or interrupted run leaves no
/// `out` that looks finished; an existing `out` is replaced).
pub fn write_atomically(out: &Path, write: impl FnOnce(&Path) -> std::result::Result<(), String>) -> std::result::Result<(), String> {
    let name = out.file_name().ok_or_else(|| format!("{}: not a directory name", out.display()))?.to_string_lossy().into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Writes a float32 `.npy`.
pub fn save_npy(path: &Path, array: &Array2<f32>) -> std::result::Result<(), String> {
    write_npy(path, array).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data::blob_set;

    #[test]
    fn atomic_write_leaves_nothing_on_failure() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("model");
        let err = write_atomically(&out, |dir| {
            std::fs::write(dir.join("half.npy"), b"x").unwrap();
            Err("loss became NaN".into())
        });
        assert!(err.is_err());
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "no partial directory left");
        write_atomically(&out, |dir| std::fs::write(dir.join("model.toml"), b"ok").map_err(|e| e.to_string())).unwrap();
        assert_eq!(std::fs::read(out.join("model.toml")).unwrap(), b"ok");
        // Replacing an existing model keeps only the new files.
        write_atomically(&out, |dir| std::fs::write(dir.join("other"), b"2").map_err(|e| e.to_string())).unwrap();
        assert!(!out.join("model.toml").exists() && out.join("other").exists());
    }

    #[test]
    fn head_training_runs_and_is_seeded() {
        let set = blob_set(6, 8, 3);
        let clusterbook = l2_normalize_rows(ndarray::array![[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]);
        let options = HeadOptions { epochs: 2, batch: 3, reduced_dim: 3, projection_dim: 8, window: 2, bank_sample: 64, ..Default::default() };
        let (a, report) = train_head(&set, &clusterbook, &options).unwrap();
        assert_eq!(report.epoch_losses.len(), 2);
        assert!(report.epoch_losses.iter().all(|l| l.is_finite()), "{:?}", report.epoch_losses);
        assert!(report.bank_entries > 0);
        let (b, _) = train_head(&set, &clusterbook, &options).unwrap();
        assert_eq!(a, b, "same seed, same head");
        let (c, _) = train_head(&set, &clusterbook, &HeadOptions { seed: 9, ..options }).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn nan_loss_is_a_clear_error() {
        let mut set = blob_set(2, 8, 4);
        set.grids[0][[0, 0, 0]] = f32::NAN;
        let clusterbook = l2_normalize_rows(ndarray::array![[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]);
        let options = ModularityOptions { codes: 2, epochs: 1, batch: 2, window: 1, ..Default::default() };
        let err = train_modularity(&set, &|x| x.clone(), clusterbook, &options, "clusterbook").unwrap_err().to_string();
        assert!(err.contains("clusterbook") && err.contains("NaN") && err.contains("no model was written"), "{err}");
    }
}
