//! Per-stage timing: what each frame spent where, and summaries over many
//! frames (median, p99) for logs, benchmarks and stats sinks.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Time spent in each pipeline stage for one frame, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimes {
    /// Decoding the encoded image (file or camera frame).
    pub decode_ms: f64,
    /// Resize and normalisation.
    pub preprocess_ms: f64,
    /// The model's fused graph (backbone, head and concept scores) on the engine.
    pub inference_ms: f64,
    /// Upsampling the concept scores and the per-pixel argmax.
    pub postprocess_ms: f64,
}

impl StageTimes {
    /// Sum of all stages.
    pub fn total_ms(&self) -> f64 {
        self.decode_ms + self.preprocess_ms + self.inference_ms + self.postprocess_ms
    }

    /// Stage names paired with their values, in pipeline order.
    pub fn named(&self) -> [(&'static str, f64); 4] {
        [
            ("decode", self.decode_ms),
            ("preprocess", self.preprocess_ms),
            ("inference", self.inference_ms),
            ("postprocess", self.postprocess_ms),
        ]
    }
}

/// Milliseconds since `start`.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Runs `f` and returns its result with its duration in milliseconds.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let value = f();
    (value, ms_since(start))
}

/// Summary of a set of latency samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

/// Summarises `samples` (nearest-rank percentiles); `None` when empty.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Some(Summary {
        count: sorted.len(),
        p50: rank(0.5),
        p99: rank(0.99),
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
    })
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Current resident set size of this process in bytes (Linux `VmRSS`), if known.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Formats a duration as fractional milliseconds.
pub fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&samples).unwrap();
        assert_eq!((s.p50, s.p99, s.mean), (50.0, 99.0, 50.5));
        assert_eq!(summarize(&[7.0]).unwrap().p99, 7.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn rss_is_readable_on_linux() {
        assert!(peak_rss_bytes().unwrap() >= rss_bytes().unwrap());
    }
}
