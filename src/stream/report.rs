//! What a stream measures: counters shared by its threads, latency windows,
//! the periodic log line and the final [`StreamReport`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::source::CaptureCounts;
use crate::timing::{rss_bytes, summarize, Summary};

/// Latency percentiles cover at most this many recent frames (bounded memory).
const WINDOW: usize = 10_000;

/// Counters shared by the three threads.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) captured: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) corrupt: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) reopens: AtomicU64,
    pub(crate) processed: AtomicU64,
}

impl Counters {
    pub(crate) fn record_capture(&self, counts: CaptureCounts) {
        self.captured.store(counts.frames, Ordering::Relaxed);
        self.corrupt.store(counts.corrupt, Ordering::Relaxed);
        self.reopens.store(counts.reopens, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Frames and timings of a finished stream.
#[derive(Debug, Clone)]
pub struct StreamReport {
    /// The source, as it describes itself.
    pub source: String,
    /// The warm-up inference, in milliseconds.
    pub warmup_ms: f64,
    /// Frames the source delivered.
    pub captured: u64,
    /// Frames that went through every stage.
    pub processed: u64,
    /// Frames replaced by newer ones before the model got to them, or left
    /// waiting at stop.
    pub dropped: u64,
    /// Corrupt frames skipped (undecodable, or rejected by the model).
    pub corrupt: u64,
    /// Times a failed source was reopened.
    pub reopens: u64,
    /// Time from the end of the warm-up to the end of the stream.
    pub elapsed: Duration,
    /// Sustained throughput: frames per second between the first and the
    /// last frame out of the pipeline.
    pub fps: f64,
    /// Per-stage latency (decode, queue, preprocess, inference, postprocess,
    /// sinks) and end to end (capture to sinks done), in milliseconds.
    pub latency: Vec<(&'static str, Summary)>,
    /// Resident memory once the first frame is out (everything allocated).
    pub rss_after_warmup: Option<u64>,
    /// Resident memory at the end.
    pub rss_end: Option<u64>,
    /// Peak resident memory of the process.
    pub peak_rss: Option<u64>,
}

impl fmt::Display for StreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "source: {}", self.source)?;
        writeln!(
            f,
            "frames: {} processed, {} captured, {} dropped, {} corrupt, {} reopen(s) in {:.1} s (after a {:.0} ms warm-up)",
            self.processed,
            self.captured,
            self.dropped,
            self.corrupt,
            self.reopens,
            self.elapsed.as_secs_f64(),
            self.warmup_ms
        )?;
        if self.processed >= 2 {
            writeln!(f, "sustained: {:.2} fps", self.fps)?;
        } else {
            writeln!(f, "sustained: n/a (fps needs at least two frames)")?;
        }
        if !self.latency.is_empty() {
            let count = self.latency[0].1.count;
            writeln!(f, "latency over the last {count} frames (ms):   p50      p99")?;
        }
        for (stage, s) in &self.latency {
            writeln!(f, "  {stage:<34} {:>8.2} {:>8.2}", s.p50, s.p99)?;
        }
        let mib = |b: Option<u64>| b.map_or("unknown".into(), |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)));
        let growth = match (self.rss_after_warmup, self.rss_end) {
            (Some(a), Some(b)) if a > 0 => format!(" ({:+.1} %)", (b as f64 - a as f64) / a as f64 * 100.0),
            _ => String::new(),
        };
        write!(
            f,
            "memory: RSS {} after warm-up (first frame out), {} at the end{growth}, peak {}",
            mib(self.rss_after_warmup),
            mib(self.rss_end),
            mib(self.peak_rss)
        )
    }
}

/// The most recent `WINDOW` samples of one measurement.
#[derive(Default)]
struct Window {
    values: Vec<f64>,
    next: usize,
}

impl Window {
    fn push(&mut self, value: f64) {
        if self.values.len() < WINDOW {
            self.values.push(value);
        } else {
            self.values[self.next] = value;
            self.next = (self.next + 1) % WINDOW;
        }
    }
}

/// Measurement names, in pipeline order, then end to end.
pub(crate) const MEASURES: [&str; 7] = ["decode", "queue", "preprocess", "inference", "postprocess", "sinks", "end-to-end (capture to sinks done)"];

/// What the output thread measured.
#[derive(Default)]
pub(crate) struct OutputStats {
    windows: [Window; 7],
    first_out: Option<Instant>,
    last_out: Option<Instant>,
    count: u64,
    pub(crate) rss_first: Option<u64>,
}

impl OutputStats {
    pub(crate) fn record(&mut self, values: [f64; 7]) {
        for (window, value) in self.windows.iter_mut().zip(values) {
            window.push(value);
        }
        let now = Instant::now();
        self.first_out.get_or_insert(now);
        self.last_out = Some(now);
        self.count += 1;
        if self.count == 1 {
            self.rss_first = rss_bytes();
        }
    }

    pub(crate) fn fps(&self) -> f64 {
        match (self.first_out, self.last_out) {
            (Some(first), Some(last)) if self.count > 1 && last > first => (self.count - 1) as f64 / (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }

    pub(crate) fn summaries(&self) -> Vec<(&'static str, Summary)> {
        MEASURES.iter().zip(&self.windows).filter_map(|(name, w)| Some((*name, summarize(&w.values)?))).collect()
    }
}

/// The periodic log line: FPS and mean stage latencies since the last one.
pub(crate) struct Ticker {
    every: Duration,
    since: Instant,
    frames: u64,
    sums: [f64; 7],
}

impl Ticker {
    pub(crate) fn new(every: Duration) -> Self {
        Ticker { every, since: Instant::now(), frames: 0, sums: [0.0; 7] }
    }

    pub(crate) fn tick(&mut self, values: [f64; 7], counters: &Counters) {
        self.frames += 1;
        for (sum, value) in self.sums.iter_mut().zip(values) {
            *sum += value;
        }
        let elapsed = self.since.elapsed();
        if elapsed < self.every {
            return;
        }
        let mean = |i: usize| self.sums[i] / self.frames as f64;
        log::info!(
            "{:.1} fps | decode {:.1} queue {:.1} preprocess {:.1} inference {:.1} postprocess {:.1} sinks {:.1} | end-to-end {:.1} ms | {} processed, {} dropped, {} corrupt",
            self.frames as f64 / elapsed.as_secs_f64(),
            mean(0),
            mean(1),
            mean(2),
            mean(3),
            mean(4),
            mean(5),
            mean(6),
            Counters::get(&counters.processed),
            Counters::get(&counters.dropped),
            Counters::get(&counters.corrupt) + Counters::get(&counters.rejected),
        );
        *self = Ticker::new(self.every);
    }
}

