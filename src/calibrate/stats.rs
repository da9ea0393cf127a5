//! Per-tensor activation statistics and the three ways of turning them into
//! a clipping threshold (`amax`, the largest magnitude int8 represents):
//! min-max, a percentile of |x|, and the KL-divergence (entropy) search of
//! TensorRT's `EntropyCalibration2` over a 2048-bin histogram of |x|.

use serde::{Deserialize, Serialize};

/// Bins of every activation histogram (TensorRT's count).
pub const HISTOGRAM_BINS: usize = 2048;
/// Quantized bins the entropy search compares against: the 128 magnitudes
/// of a symmetric int8 value.
const QUANTIZED_BINS: usize = 128;

/// How activation ranges are chosen (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The largest |x| seen: nothing is clipped, small values lose
    /// resolution. The default: the most accurate on the default model
    /// (DINOv2's few huge activations matter; clipping them costs more).
    #[default]
    #[cfg_attr(feature = "cli", value(name = "minmax"))]
    MinMax,
    /// The given percentile of |x| (default 99.99): rare outliers are clipped.
    Percentile,
    /// TensorRT's entropy calibration: the threshold whose int8 histogram
    /// is closest (KL divergence) to the float one.
    Entropy,
}

impl Method {
    /// The name as written on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile => "percentile",
            Method::Entropy => "entropy",
        }
    }
}

/// A histogram of |x| over `[0, bins * width)` whose range doubles (merging
/// neighbouring bins) whenever a larger value arrives, so one pass over the
/// images suffices.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Counts per bin.
    pub bins: Vec<u64>,
    /// Bin width; 0 until a non-zero value was seen (zeros then count in bin 0).
    pub width: f32,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { bins: vec![0; HISTOGRAM_BINS], width: 0.0 }
    }
}

impl Histogram {
    /// Counts `values`, whose largest magnitude is `amax`.
    pub fn add(&mut self, values: &[f32], amax: f32) {
        if self.width == 0.0 {
            if amax == 0.0 {
                self.bins[0] += values.len() as u64;
                return;
            }
            self.width = amax / HISTOGRAM_BINS as f32;
        }
        while amax > self.width * HISTOGRAM_BINS as f32 {
            for i in 0..HISTOGRAM_BINS / 2 {
                self.bins[i] = self.bins[2 * i] + self.bins[2 * i + 1];
            }
            self.bins[HISTOGRAM_BINS / 2..].fill(0);
            self.width *= 2.0;
        }
        let last = HISTOGRAM_BINS - 1;
        for v in values {
            self.bins[((v.abs() / self.width) as usize).min(last)] += 1;
        }
    }

    /// The upper edge of the bin where the count of |x| reaches `percentile`
    /// percent of all values.
    pub fn percentile(&self, percentile: f64) -> f32 {
        let total: u64 = self.bins.iter().sum();
        let wanted = (percentile / 100.0 * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &count) in self.bins.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return (i + 1) as f32 * self.width;
            }
        }
        self.bins.len() as f32 * self.width
    }

    /// The entropy threshold: the upper edge of the first `i` bins (i from
    /// 128 to all) whose clipped distribution P (values beyond added to the
    /// last bin) is closest in KL divergence to Q, P merged into 128
    /// quantization levels and spread back over the non-empty bins.
    /// TensorRT's `EntropyCalibration2` (Migacz, "8-bit inference with
    /// TensorRT", 2017); empty bins are smoothed as in MXNet and ONNX
    /// Runtime so an isolated outlier does not make every clip infinitely
    /// bad. Ties go to the larger threshold.
    pub fn entropy(&self) -> f32 {
        let n = self.bins.len();
        if n <= QUANTIZED_BINS {
            return n as f32 * self.width;
        }
        let mut best = (f64::INFINITY, n);
        let mut p = vec![0f64; n];
        let mut q = vec![0f64; n];
        for i in QUANTIZED_BINS..=n {
            let sliced = &self.bins[..i];
            p[..i].iter_mut().zip(sliced).for_each(|(p, &c)| *p = c as f64);
            p[i - 1] += self.bins[i..].iter().sum::<u64>() as f64;
            q[..i].fill(0.0);
            let mut start = 0;
            for level in 0..QUANTIZED_BINS {
                let end = (level + 1) * i / QUANTIZED_BINS;
                let group = &sliced[start..end];
                let nonzero = group.iter().filter(|&&c| c > 0).count();
                if nonzero > 0 {
                    let mean = group.iter().sum::<u64>() as f64 / nonzero as f64;
                    for (q, &c) in q[start..end].iter_mut().zip(group) {
                        if c > 0 {
                            *q = mean;
                        }
                    }
                }
                start = end;
            }
            let divergence = kl_divergence(&mut p[..i], &mut q[..i]);
            if divergence <= best.0 {
                best = (divergence, i);
            }
        }
        best.1 as f32 * self.width
    }
}

/// KL(P ‖ Q) of two count vectors, each normalised and smoothed (empty bins
/// get a small mass taken evenly from the others).
fn kl_divergence(p: &mut [f64], q: &mut [f64]) -> f64 {
    if !smooth(p) || !smooth(q) {
        return f64::INFINITY;
    }
    p.iter().zip(q.iter()).filter(|(p, _)| **p > 0.0).map(|(p, q)| p * (p / q).ln()).sum()
}

/// Normalises `counts` to a distribution and gives each empty bin 1e-4 of
/// mass, taken evenly from the non-empty ones; false when that is not
/// possible (all empty, or too few non-empty bins to give from).
fn smooth(counts: &mut [f64]) -> bool {
    const EPS: f64 = 1e-4;
    let total: f64 = counts.iter().sum();
    let nonzero = counts.iter().filter(|&&c| c > 0.0).count();
    let zeros = counts.len() - nonzero;
    if total == 0.0 {
        return false;
    }
    let take = EPS * zeros as f64 / nonzero as f64;
    for c in counts.iter_mut() {
        *c = if *c > 0.0 { *c / total - take } else { EPS };
        if *c <= 0.0 {
            return false;
        }
    }
    true
}

/// Everything recorded about one activation tensor.
#[derive(Debug, Clone, Default)]
pub struct TensorStats {
    /// Smallest value seen.
    pub min: f32,
    /// Largest value seen.
    pub max: f32,
    /// Values seen.
    pub count: u64,
    /// Histogram of |x|.
    pub histogram: Histogram,
}

impl TensorStats {
    /// Adds one batch of values.
    pub fn add(&mut self, values: &[f32]) {
        if values.is_empty() {
            return;
        }
        let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        (self.min, self.max) = if self.count == 0 { (lo, hi) } else { (self.min.min(lo), self.max.max(hi)) };
        self.count += values.len() as u64;
        self.histogram.add(values, lo.abs().max(hi.abs()));
    }

    /// The largest magnitude seen.
    pub fn absmax(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    /// The clipping threshold `method` picks (never beyond [`absmax`](Self::absmax)).
    pub fn amax(&self, method: Method, percentile: f64) -> f32 {
        let absmax = self.absmax();
        match method {
            Method::MinMax => absmax,
            Method::Percentile => self.histogram.percentile(percentile).min(absmax),
            Method::Entropy => self.histogram.entropy().min(absmax),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Standard normal samples (Box-Muller), seeded.
    fn normal(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }

    #[test]
    fn growing_the_range_keeps_every_count() {
        let mut h = Histogram::default();
        h.add(&[0.5, -1.0], 1.0);
        h.add(&[3.9, 0.1], 3.9);
        assert_eq!(h.bins.iter().sum::<u64>(), 4);
        assert!(h.width * HISTOGRAM_BINS as f32 >= 3.9 && h.width == 4.0 / HISTOGRAM_BINS as f32, "{}", h.width);
        // 0.1, 0.5 and 1.0 (the old range's top bin) land in the first
        // quarter of the range after two doublings.
        assert_eq!(h.bins[..512].iter().sum::<u64>(), 3);
        assert_eq!(h.bins[512..].iter().sum::<u64>(), 1);
    }

    #[test]
    fn zeros_before_any_value_are_kept() {
        let mut s = TensorStats::default();
        s.add(&[0.0; 10]);
        s.add(&[2.0, -2.0]);
        assert_eq!((s.min, s.max, s.count), (-2.0, 2.0, 12));
        assert_eq!(s.histogram.bins[0], 10);
    }

    #[test]
    fn percentile_of_a_uniform_distribution() {
        let values: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0).collect();
        let mut s = TensorStats::default();
        s.add(&values);
        let p90 = s.amax(Method::Percentile, 90.0);
        assert!((p90 - 0.9).abs() < 2.0 / HISTOGRAM_BINS as f32, "{p90}");
        assert_eq!(s.amax(Method::MinMax, 0.0), values[99_999]);
    }

    #[test]
    fn entropy_keeps_the_whole_range_of_a_uniform_distribution() {
        // A flat histogram merges into 128 levels without loss: no clip is better.
        let values: Vec<f32> = (0..204_800).map(|i| (i as f32 + 0.5) / 204_800.0).collect();
        let mut s = TensorStats::default();
        s.add(&values);
        let amax = s.amax(Method::Entropy, 0.0);
        assert!(amax > 0.99, "{amax}");
    }

    #[test]
    fn entropy_clips_a_gaussian_with_rare_outliers() {
        // N(0, 1) plus 0.001 % of values at ±40: min-max keeps 40 (6 of 127
        // levels would cover the bulk); entropy clips to the bulk's tail,
        // a few standard deviations, as TensorRT does.
        let mut values = normal(1_000_000, 7);
        for i in 0..10 {
            values[i * 1000] = if i % 2 == 0 { 40.0 } else { -40.0 };
        }
        let mut s = TensorStats::default();
        for chunk in values.chunks(100_000) {
            s.add(chunk);
        }
        assert_eq!(s.amax(Method::MinMax, 0.0), 40.0);
        let entropy = s.amax(Method::Entropy, 0.0);
        // (2.5 = 128 of 2048 bins of [0, 40] is the smallest candidate.)
        assert!((2.6..6.0).contains(&entropy), "entropy threshold {entropy}");
        let p = s.amax(Method::Percentile, 99.99);
        assert!((3.5..4.5).contains(&p), "99.99th percentile {p}");
    }
}
