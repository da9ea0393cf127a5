//! The CAUSE stages in order on one feature set: clusterbook (trained or
//! reused) → head (trained or reused) → optional output centring → probe.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;
use ndarray_npy::read_npy;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::head_training::{train_head, HeadOptions, HeadReport};
use super::modularity::{init_from_tokens, train_modularity, ModularityOptions, ModularityReport};
use super::probe::{head_features, kmeans_probe_of, modularity_probe, ProbeKind};
use super::{Result, TrainError};
use crate::head::{Head, HeadKind};
use crate::train::features::FeatureSet;

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
    /// Probe method written into the model.
    pub probe: ProbeKind,
    /// Modularity-probe settings (`codes` is overridden by `concepts`).
    pub probe_modularity: ModularityOptions,
    /// Centre the head's output on the training set's mean (folded into
    /// the f1 bias, so free at run time) before fitting the probe.
    pub center: bool,
}

impl CauseOptions {
    /// The same settings with every stage seeded by `seed`.
    pub fn with_seed(&self, seed: u64) -> Self {
        let mut options = self.clone();
        options.clusterbook.seed = seed;
        options.head.seed = seed;
        options.probe_modularity.seed = seed;
        options
    }
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

/// Runs every stage that is not reused, with a probe of `concepts`
/// concepts; `probe_views` (extra views of the images) are seen by the
/// probe only, on top of `set`; `compare_probes` also fits the probe that
/// is not written, to measure both.
pub fn run(set: &FeatureSet, probe_views: Option<&FeatureSet>, options: &CauseOptions, concepts: usize, compare_probes: bool) -> Result<CauseResult> {
    set.geometry()?;
    let mut seconds = Vec::new();
    let start = Instant::now();
    let (head, head_report, clusterbook, clusterbook_report) = if let Some(dir) = &options.head_from {
        let model = crate::model::Model::load(dir)?;
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
        let (head, head_report) = train_head(set, &clusterbook, options.arch, &options.head)?;
        seconds.push(("head", start.elapsed().as_secs_f64()));
        (head, Some(head_report), clusterbook, report)
    };
    let mut head = head;
    let mut features = head_features(set, &head)?;
    if let Some(views) = probe_views {
        features.append(head_features(views, &head)?);
    }
    if options.center {
        let mean = mean_token(&features);
        head.center_output(&mean);
        for grid in &mut features.grids {
            *grid -= &mean;
        }
    }
    let start = Instant::now();
    let mut probes = Vec::new();
    let mut probe_report = None;
    let mut kinds = vec![options.probe];
    if compare_probes {
        kinds.extend([ProbeKind::Kmeans, ProbeKind::Modularity].into_iter().filter(|k| *k != options.probe));
    }
    for kind in kinds {
        if kind == ProbeKind::Modularity {
            let probe_options = ModularityOptions { codes: concepts, ..options.probe_modularity };
            let (p, r) = modularity_probe(&features, &probe_options)?;
            log::info!("modularity probe: {} of {concepts} concepts used", r.used_codes);
            probes.push((ProbeKind::Modularity, p));
            probe_report = Some(r);
        } else {
            probes.push((kind, kmeans_probe_of(kind, &features, concepts, options.head.seed)?));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::l2_normalize_rows;
    use crate::train::features::blob_set;

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
