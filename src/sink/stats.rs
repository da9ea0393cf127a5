//! [`StatsSink`]: one JSON line per processed frame (`--stats FILE.jsonl`),
//! written and flushed as the frame leaves the pipeline:
//!
//! ```json
//! {"index":7,"name":"coffee","timestamp":1718000000.123,"width":400,"height":300,
//!  "latency_ms":{"decode":3.1,"queue":0.2,"preprocess":1.9,"inference":95.0,"postprocess":4.2,"end_to_end":120.5},
//!  "concept_fractions":[0.31,0.0,0.12]}
//! ```
//!
//! `name` is the source file's stem (null for cameras and pipelines),
//! `timestamp` the capture time in seconds since the Unix epoch,
//! `end_to_end` the time from capture until this line (sinks listed before
//! the stats sink included), and `concept_fractions[k]` the share of pixels
//! labelled with concept `k`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::Serialize;

use super::{FrameSink, SinkError};
use crate::pipeline::postprocess::concept_fractions;
use super::ProcessedFrame;
use crate::timing::ms_since;

/// Appends a JSON line per processed frame to a file.
pub struct StatsSink {
    path: PathBuf,
    file: BufWriter<File>,
    concepts: usize,
}

/// One processed frame's stats: a line of `--stats` (and the body of the
/// preview's `/stats`), serialised as in the module documentation.
#[derive(Debug, Serialize)]
pub struct FrameStats<'a> {
    /// The frame's position in the stream.
    pub index: u64,
    /// The source file's stem (`None` for cameras and pipelines).
    pub name: Option<&'a str>,
    /// Capture time, in seconds since the Unix epoch.
    pub timestamp: f64,
    /// Label map width in pixels.
    pub width: u32,
    /// Label map height in pixels.
    pub height: u32,
    /// Per-stage latency in milliseconds.
    pub latency_ms: Latency,
    /// Share of the pixels labelled with each concept.
    pub concept_fractions: Vec<f32>,
}

/// Per-stage latency of one frame, in milliseconds (rounded to microseconds).
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Decoding the encoded image.
    pub decode: f64,
    /// Waiting for the model.
    pub queue: f64,
    /// Resize and normalisation.
    pub preprocess: f64,
    /// The model's fused graph.
    pub inference: f64,
    /// Upsampling and argmax.
    pub postprocess: f64,
    /// From capture until the frame reached this sink.
    pub end_to_end: f64,
}

impl<'a> FrameStats<'a> {
    /// The stats of `processed` for a model of `concepts` concepts;
    /// `end_to_end_ms` is the time from capture until the frame reached the
    /// sink.
    pub fn new(processed: &'a ProcessedFrame, concepts: usize, end_to_end_ms: f64) -> Self {
        let (frame, t) = (&processed.frame, &processed.times);
        FrameStats {
            index: frame.index,
            name: frame.data.name.as_deref(),
            timestamp: frame.data.timestamp.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
            width: processed.labels.width(),
            height: processed.labels.height(),
            latency_ms: Latency {
                decode: round(t.decode_ms),
                queue: round(processed.queue_ms),
                preprocess: round(t.preprocess_ms),
                inference: round(t.inference_ms),
                postprocess: round(t.postprocess_ms),
                end_to_end: round(end_to_end_ms),
            },
            concept_fractions: concept_fractions(&processed.labels, concepts),
        }
    }
}

/// Rounds to microseconds, enough for milliseconds in a log.
fn round(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

impl StatsSink {
    /// Creates (truncates) `path`; `concepts` is the model's concept count.
    pub fn create(path: &Path, concepts: usize) -> Result<Self, SinkError> {
        let error = |e: std::io::Error| SinkError { path: path.into(), reason: e.to_string() };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(error)?;
        }
        let file = File::create(path).map_err(error)?;
        Ok(StatsSink { path: path.into(), file: BufWriter::new(file), concepts })
    }

    fn error(&self, e: impl ToString) -> SinkError {
        SinkError { path: self.path.clone(), reason: e.to_string() }
    }
}

impl FrameSink for StatsSink {
    fn write(&mut self, processed: &ProcessedFrame) -> Result<(), SinkError> {
        let line = FrameStats::new(processed, self.concepts, ms_since(processed.frame.captured));
        serde_json::to_writer(&mut self.file, &line).map_err(|e| self.error(e))?;
        self.file.write_all(b"\n").map_err(|e| self.error(e))?;
        self.file.flush().map_err(|e| self.error(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.file.flush().map_err(|e| self.error(e))?;
        self.file.get_ref().sync_all().map_err(|e| self.error(e))
    }
}
