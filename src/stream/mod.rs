//! The real-time frame loop behind `causeseg run`: capture, inference and
//! output on three threads.
//!
//! ```text
//! capture ──Latest (1 frame)──> inference ──bounded channel (2)──> output (sinks, log)
//! ```
//!
//! - Live sources (cameras, network streams) are read as fast as they
//!   deliver; a frame the model has not started on is replaced by a newer one
//!   (latest-frame-wins) and counted as dropped. Other sources (files, video
//!   files) are read when the model asks for the next frame, so none is
//!   dropped and none waits in a queue.
//! - The model is loaded once by the caller; [`Stream::run`] first runs one
//!   warm-up inference, timed separately.
//! - Setting the stop flag (Ctrl-C) ends capture at once; the frame being
//!   segmented and those already segmented still reach the sinks, which are
//!   then flushed. A frame still waiting for the model is dropped.
//! - A periodic log line gives FPS and per-stage latency; [`StreamReport`]
//!   sums the run up.
//!
//! ```no_run
//! use std::sync::{atomic::AtomicBool, Arc};
//! use causeseg::{source, EngineChoice, EngineConfig, Model, Segmenter, StatsSink, Stream, StreamConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = causeseg::model::backbone::cache_dir(None);
//! let model = Model::load(&causeseg::model::bundled::default_model_dir(&cache)?)?;
//! let concepts = model.num_concepts();
//! let segmenter = Segmenter::new(model, &EngineConfig::new(EngineChoice::Auto, &cache), &cache)?;
//! let source = source::open(&source::SourceUri::parse("examples/images")?, &Default::default())?;
//! let config = StreamConfig { max_frames: Some(10), ..Default::default() };
//! let mut stream = Stream::new(segmenter, config);
//! stream.add_sink(Box::new(StatsSink::create("stats.jsonl".as_ref(), concepts)?));
//! let report = stream.run(source, Arc::new(AtomicBool::new(false)))?;
//! println!("{report}");
//! # Ok(()) }
//! ```


use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};

pub mod latest;
pub mod report;

use latest::Latest;
use report::{Counters, OutputStats, Ticker};
pub use report::StreamReport;
use crate::pipeline::{SegmentError, Segmentation, Segmenter};
use crate::sink::{FrameSink, ProcessedFrame, SinkError};
use crate::timing::{ms_since, peak_rss_bytes, rss_bytes, timed};
use crate::source::{Backoff, Capture, Frame, FrameSource, SourceError};

/// How long a finished stream waits for a capture thread blocked in its source.
const CAPTURE_JOIN: Duration = Duration::from_millis(250);

/// Limits and logging of a stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Stop after this many processed frames.
    pub max_frames: Option<u64>,
    /// Stop after this long (warm-up not included).
    pub duration: Option<Duration>,
    /// Interval of the FPS / latency log line.
    pub log_every: Duration,
    /// Reopening schedule of a failed live source.
    pub backoff: Backoff,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig { max_frames: None, duration: None, log_every: Duration::from_secs(5), backoff: Backoff::default() }
    }
}

/// What the inference thread runs: [`Segmenter`], or a stand-in in tests.
pub trait FrameSegmenter: Send {
    /// The model input (width, height), for the warm-up frame.
    fn input_size(&self) -> (u32, u32);
    /// Segments one RGB frame; `what` names it in errors.
    fn segment_frame(&mut self, image: &RgbImage, what: &str) -> Result<Segmentation, SegmentError>;
}

impl FrameSegmenter for Segmenter {
    fn input_size(&self) -> (u32, u32) {
        let input = &self.model().manifest.input;
        (input.width, input.height)
    }

    fn segment_frame(&mut self, image: &RgbImage, what: &str) -> Result<Segmentation, SegmentError> {
        self.segment(image, what, None)
    }
}

/// Why a stream stopped early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A (non-live) source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The model failed on a frame (other than rejecting the frame itself).
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A sink could not write.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A pipeline thread could not start.
    #[error("cannot start the {0} thread: {1}")]
    Spawn(&'static str, std::io::Error),
    /// A pipeline thread panicked.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// A segmenter, its sinks and limits: call [`Stream::run`] with a source.
pub struct Stream<S> {
    segmenter: S,
    sinks: Vec<Box<dyn FrameSink>>,
    config: StreamConfig,
}

impl<S: FrameSegmenter + 'static> Stream<S> {
    /// A stream without sinks yet.
    pub fn new(segmenter: S, config: StreamConfig) -> Self {
        Stream { segmenter, sinks: Vec::new(), config }
    }

    /// Adds a sink; sinks see each frame in the order they were added.
    pub fn add_sink(&mut self, sink: Box<dyn FrameSink>) {
        self.sinks.push(sink);
    }

    /// Warms the model up, then streams `source` until it ends, a limit is
    /// reached or `stop` is set (the stream also sets it when it ends).
    pub fn run(self, source: Box<dyn FrameSource>, stop: Arc<AtomicBool>) -> Result<StreamReport, StreamError> {
        let Stream { mut segmenter, sinks, config } = self;
        let (width, height) = segmenter.input_size();
        let warmup_frame = RgbImage::from_pixel(width, height, Rgb([124, 116, 104]));
        let (warmup, warmup_ms) = timed(|| segmenter.segment_frame(&warmup_frame, "warm-up frame"));
        warmup?;
        log::info!("warm-up inference: {warmup_ms:.0} ms");

        let description = source.describe();
        log::info!("streaming from {description}");
        let start = Instant::now();
        let slot = Arc::new(Latest::<Frame>::default());
        let counters = Arc::new(Counters::default());
        let capture = Capture::new(source, stop.clone()).with_backoff(config.backoff.clone());
        let capture_thread = spawn("capture", {
            let (slot, counters, stop) = (slot.clone(), counters.clone(), stop.clone());
            move || capture_loop(capture, &slot, config.max_frames, &stop, &counters)
        })?;
        let (sender, receiver) = sync_channel(2);
        let inference_thread = spawn("inference", {
            let (slot, counters, stop) = (slot.clone(), counters.clone(), stop.clone());
            move || inference_loop(segmenter, &slot, sender, config.max_frames, &stop, &counters)
        })?;
        let output_thread = spawn("output", {
            let (counters, stop) = (counters.clone(), stop.clone());
            move || output_loop(sinks, receiver, config.log_every, &stop, &counters)
        })?;

        let deadline = config.duration.map(|d| start + d);
        while !output_thread.is_finished() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                stop.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let output = output_thread.join().map_err(|_| StreamError::Panicked("output"))?;
        let inference = inference_thread.join().map_err(|_| StreamError::Panicked("inference"))?;
        stop.store(true, Ordering::Relaxed);
        let capture_end = Instant::now() + CAPTURE_JOIN;
        while !capture_thread.is_finished() && Instant::now() < capture_end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let captured = if capture_thread.is_finished() {
            capture_thread.join().map_err(|_| StreamError::Panicked("capture"))?
        } else {
            log::debug!("the capture thread is blocked in {description}; leaving it");
            Ok(())
        };
        let output = output?;
        inference?;
        captured?;
        if slot.take_left().is_some() {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(StreamReport {
            source: description,
            warmup_ms,
            captured: Counters::get(&counters.captured),
            processed: Counters::get(&counters.processed),
            dropped: Counters::get(&counters.dropped),
            corrupt: Counters::get(&counters.corrupt) + Counters::get(&counters.rejected),
            reopens: Counters::get(&counters.reopens),
            elapsed: start.elapsed(),
            fps: output.fps(),
            latency: output.summaries(),
            rss_after_warmup: output.rss_first,
            rss_end: rss_bytes(),
            peak_rss: peak_rss_bytes(),
        })
    }
}

fn spawn<T: Send + 'static>(name: &'static str, f: impl FnOnce() -> T + Send + 'static) -> Result<JoinHandle<T>, StreamError> {
    std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| StreamError::Spawn(name, e))
}

/// Capture thread: source → slot. A non-live source is read only when the
/// inference thread asks (nothing dropped) and stops after `max_frames`.
fn capture_loop(
    mut capture: Capture,
    slot: &Latest<Frame>,
    max_frames: Option<u64>,
    stop: &AtomicBool,
    counters: &Counters,
) -> Result<(), SourceError> {
    let result = loop {
        if !capture.source().is_live()
            && (!slot.wait_for_taker(stop) || max_frames.is_some_and(|m| capture.counts().frames >= m))
        {
            break Ok(());
        }
        match capture.next_frame() {
            Ok(Some(frame)) => {
                if slot.put(frame).is_some() {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
        counters.record_capture(capture.counts());
    };
    counters.record_capture(capture.counts());
    slot.close();
    result
}

/// Inference thread: slot → segmenter → output channel.
fn inference_loop<S: FrameSegmenter>(
    mut segmenter: S,
    slot: &Latest<Frame>,
    sender: SyncSender<ProcessedFrame>,
    max_frames: Option<u64>,
    stop: &AtomicBool,
    counters: &Counters,
) -> Result<(), SegmentError> {
    let mut processed = 0u64;
    while let Some(frame) = slot.take(stop) {
        let queue_ms = (ms_since(frame.captured) - frame.data.decode_ms).max(0.0);
        let what = frame.data.name.clone().unwrap_or_else(|| format!("frame {}", frame.index));
        match segmenter.segment_frame(&frame.data.image, &what) {
            Ok(Segmentation { labels, mut times }) => {
                times.decode_ms = frame.data.decode_ms;
                if sender.send(ProcessedFrame { frame, labels, times, queue_ms }).is_err() {
                    break; // the output thread has stopped
                }
                processed += 1;
                if max_frames.is_some_and(|m| processed >= m) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            Err(SegmentError::Preprocess(error)) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                log::warn!("{error}; frame skipped");
            }
            Err(error) => {
                stop.store(true, Ordering::Relaxed);
                return Err(error);
            }
        }
    }
    Ok(())
}

/// Output thread: channel → sinks, stats and the periodic log; flushes the
/// sinks at the end.
fn output_loop(
    mut sinks: Vec<Box<dyn FrameSink>>,
    receiver: Receiver<ProcessedFrame>,
    log_every: Duration,
    stop: &AtomicBool,
    counters: &Counters,
) -> Result<OutputStats, SinkError> {
    let mut stats = OutputStats::default();
    let mut ticker = Ticker::new(log_every);
    for processed in receiver {
        let (written, sink_ms) = timed(|| sinks.iter_mut().try_for_each(|sink| sink.write(&processed)));
        if let Err(error) = written {
            stop.store(true, Ordering::Relaxed);
            return Err(error);
        }
        counters.processed.fetch_add(1, Ordering::Relaxed);
        let t = processed.times;
        let values = [t.decode_ms, processed.queue_ms, t.preprocess_ms, t.inference_ms, t.postprocess_ms, sink_ms, ms_since(processed.frame.captured)];
        stats.record(values);
        ticker.tick(values, counters);
    }
    sinks.iter_mut().try_for_each(|sink| sink.flush())?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::StageTimes;
    use image::GrayImage;
    use crate::source::capture::tests::{FakeCamera, Step};
    use crate::source::{ImageFiles, SourceFrame};
    use std::sync::Mutex;

    /// A model stand-in: sleeps, then labels every pixel with concept 1.
    struct SlowModel(Duration);

    impl FrameSegmenter for SlowModel {
        fn input_size(&self) -> (u32, u32) {
            (28, 28)
        }
        fn segment_frame(&mut self, image: &RgbImage, _: &str) -> Result<Segmentation, SegmentError> {
            std::thread::sleep(self.0);
            let (w, h) = image.dimensions();
            Ok(Segmentation { labels: GrayImage::from_pixel(w, h, image::Luma([1])), times: StageTimes::default() })
        }
    }

    /// A sink that records frame indices and whether it was flushed.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u64>, bool)>>);

    impl FrameSink for Recorder {
        fn write(&mut self, frame: &ProcessedFrame) -> Result<(), SinkError> {
            self.0.lock().unwrap().0.push(frame.frame.index);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            self.0.lock().unwrap().1 = true;
            Ok(())
        }
    }

    /// An endless live source, one frame every 2 ms.
    struct Ticking;

    impl FrameSource for Ticking {
        fn describe(&self) -> String {
            "ticking".into()
        }
        fn is_live(&self) -> bool {
            true
        }
        fn next_frame(&mut self) -> Result<Option<SourceFrame>, SourceError> {
            std::thread::sleep(Duration::from_millis(2));
            Ok(Some(SourceFrame::now(RgbImage::new(16, 16), None, 0.0)))
        }
    }

    fn stream(model_ms: u64, config: StreamConfig) -> (Stream<SlowModel>, Recorder) {
        let recorder = Recorder::default();
        let mut stream = Stream::new(SlowModel(Duration::from_millis(model_ms)), config);
        stream.add_sink(Box::new(recorder.clone()));
        (stream, recorder)
    }

    #[test]
    fn a_slow_model_drops_old_frames_of_a_live_source() {
        let (stream, recorder) = stream(20, StreamConfig { max_frames: Some(5), ..Default::default() });
        let report = stream.run(Box::new(Ticking), Arc::default()).unwrap();
        assert_eq!(report.processed, 5);
        assert!(report.dropped > 0, "{report}");
        assert!(report.captured >= report.processed + report.dropped, "{report}");
        let seen = recorder.0.lock().unwrap().0.clone();
        assert_eq!(seen.len(), 5);
        assert!(seen.windows(2).all(|w| w[1] > w[0] + 1), "only the newest frames: {seen:?}");
    }

    #[test]
    fn files_are_not_dropped_and_max_frames_holds() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.png", "b.png"] {
            RgbImage::new(20, 20).save(dir.path().join(name)).unwrap();
        }
        let source = ImageFiles::open(dir.path().to_str().unwrap(), true).unwrap();
        let (stream, recorder) = stream(5, StreamConfig { max_frames: Some(7), ..Default::default() });
        let report = stream.run(Box::new(source), Arc::default()).unwrap();
        assert_eq!((report.processed, report.captured, report.dropped), (7, 7, 0));
        assert_eq!(recorder.0.lock().unwrap().0, (0..7).collect::<Vec<u64>>());
        assert_eq!(report.latency.len(), report::MEASURES.len());
    }

    #[test]
    fn a_source_that_fails_mid_stream_comes_back_and_counting_continues() {
        use Step::*;
        let camera = FakeCamera::new(vec![Frame(20), Frame(20), Fail, Frame(20), Corrupt, Frame(20)], 2);
        let config = StreamConfig { backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(20)), ..Default::default() };
        // A fast model keeps up with the fake camera's pace (nothing dropped).
        let (stream, recorder) = stream(0, config);
        let report = stream.run(Box::new(camera), Arc::default()).unwrap();
        assert_eq!((report.captured, report.reopens, report.corrupt), (4, 1, 1), "{report}");
        let seen = recorder.0.lock().unwrap().0.clone();
        assert_eq!(seen.len() as u64 + report.dropped, 4);
        assert!(seen.windows(2).all(|w| w[1] > w[0]) && seen.last() == Some(&3), "{seen:?}");
    }

    #[test]
    fn stop_drains_flushes_and_returns_promptly() {
        let (stream, recorder) = stream(50, StreamConfig::default());
        let stop = Arc::new(AtomicBool::new(false));
        let setter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::Relaxed);
                Instant::now()
            })
        };
        let report = stream.run(Box::new(Ticking), stop).unwrap();
        let stopped_at = setter.join().unwrap();
        assert!(stopped_at.elapsed() < Duration::from_millis(500), "took {:?} after stop", stopped_at.elapsed());
        let (seen, flushed) = recorder.0.lock().unwrap().clone();
        assert!(flushed);
        assert!(report.processed >= 2);
        assert_eq!(seen.len() as u64, report.processed);
    }

    #[test]
    fn duration_limits_a_run() {
        let config = StreamConfig { duration: Some(Duration::from_millis(200)), ..Default::default() };
        let (stream, _) = stream(10, config);
        let start = Instant::now();
        let report = stream.run(Box::new(Ticking), Arc::default()).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(report.processed > 0 && report.fps > 0.0, "{report}");
    }
}
