//! [`Capture`]: numbers the frames of a [`FrameSource`], skips corrupt ones
//! and reopens a live source that fails, with exponential [`Backoff`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Frame, FrameSource, SourceError};

/// Exponential backoff: `first`, doubling, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff that starts at `first` and doubles up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max, next: first }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Starts again from `first` (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// What a capture has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureCounts {
    /// Frames delivered.
    pub frames: u64,
    /// Corrupt frames skipped.
    pub corrupt: u64,
    /// Successful reopens after a failure.
    pub reopens: u64,
}

/// A source plus numbering, skipping and reopening.
pub struct Capture {
    source: Box<dyn FrameSource>,
    backoff: Backoff,
    stop: Arc<AtomicBool>,
    counts: CaptureCounts,
}

impl Capture {
    /// Wraps `source`; setting `stop` ends [`Capture::next_frame`] (also during a
    /// backoff wait).
    pub fn new(source: Box<dyn FrameSource>, stop: Arc<AtomicBool>) -> Self {
        Capture { source, backoff: Backoff::default(), stop, counts: CaptureCounts::default() }
    }

    /// Replaces the default backoff (100 ms doubling to 5 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The wrapped source.
    pub fn source(&self) -> &dyn FrameSource {
        self.source.as_ref()
    }

    /// Counts so far.
    pub fn counts(&self) -> CaptureCounts {
        self.counts
    }

    /// The next good frame, numbered; `Ok(None)` at the end of the stream or
    /// once stopped. Errors only for a non-live source that fails.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        while !self.stopped() {
            match self.source.next_frame() {
                Ok(Some(data)) => {
                    self.backoff.reset();
                    // Latency starts when the source had the frame, before decoding it.
                    let now = Instant::now();
                    let captured = now.checked_sub(Duration::from_secs_f64(data.decode_ms.max(0.0) / 1e3)).unwrap_or(now);
                    let frame = Frame { index: self.counts.frames, captured, data };
                    self.counts.frames += 1;
                    return Ok(Some(frame));
                }
                Ok(None) => return Ok(None),
                Err(SourceError::Corrupt(reason)) => {
                    self.counts.corrupt += 1;
                    log::warn!("corrupt frame skipped: {reason}");
                }
                Err(error) if self.source.is_live() => {
                    log::warn!("{error}");
                    self.reopen();
                }
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    /// Reopens the source, waiting with backoff between attempts, until it
    /// works or the capture is stopped.
    fn reopen(&mut self) {
        loop {
            let delay = self.backoff.next_delay();
            log::info!("reopening {} in {} ms", self.source.describe(), delay.as_millis());
            if !self.sleep(delay) {
                return;
            }
            match self.source.reopen() {
                Ok(()) => {
                    self.counts.reopens += 1;
                    log::info!("reopened {}", self.source.describe());
                    return;
                }
                Err(error) => log::warn!("{error}"),
            }
        }
    }

    /// Sleeps `delay` in short slices; false if stopped meanwhile.
    fn sleep(&self, delay: Duration) -> bool {
        let end = Instant::now() + delay;
        while !self.stopped() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
        false
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::SourceFrame;
    use image::RgbImage;
    use std::sync::Mutex;

    /// What the fake camera does at each call of `next_frame`.
    #[derive(Debug, Clone, Copy)]
    pub enum Step {
        /// Delivers a frame of this width.
        Frame(u32),
        /// Delivers a corrupt frame.
        Corrupt,
        /// Fails: the device is gone.
        Fail,
    }

    /// A live source that replays a script, and fails `bad_reopens` reopen
    /// attempts after each failure before coming back.
    pub struct FakeCamera {
        pub script: std::vec::IntoIter<Step>,
        pub bad_reopens: u32,
        pub failing: u32,
        pub reopen_times: Arc<Mutex<Vec<Instant>>>,
    }

    impl FakeCamera {
        pub fn new(script: Vec<Step>, bad_reopens: u32) -> Self {
            FakeCamera { script: script.into_iter(), bad_reopens, failing: 0, reopen_times: Arc::default() }
        }
    }

    impl FrameSource for FakeCamera {
        fn describe(&self) -> String {
            "fake camera".into()
        }
        fn is_live(&self) -> bool {
            true
        }
        fn next_frame(&mut self) -> Result<Option<SourceFrame>, SourceError> {
            assert_eq!(self.failing, 0, "read from a camera that was not reopened");
            match self.script.next() {
                None => Ok(None),
                Some(Step::Frame(width)) => Ok(Some(SourceFrame::now(RgbImage::new(width, 14), None, 0.0))),
                Some(Step::Corrupt) => Err(SourceError::Corrupt("fake camera: bad JPEG".into())),
                Some(Step::Fail) => {
                    self.failing = self.bad_reopens + 1;
                    Err(SourceError::Lost { device: "fake camera".into(), reason: "unplugged".into() })
                }
            }
        }
        fn reopen(&mut self) -> Result<(), SourceError> {
            self.reopen_times.lock().unwrap().push(Instant::now());
            self.failing -= 1;
            if self.failing > 0 {
                return Err(SourceError::Open { device: "fake camera".into(), reason: "no such device".into() });
            }
            Ok(())
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn a_camera_that_fails_mid_stream_is_reopened_and_counting_continues() {
        use Step::*;
        let camera = FakeCamera::new(vec![Frame(14), Frame(15), Corrupt, Frame(16), Fail, Frame(17), Frame(18)], 2);
        let reopen_times = camera.reopen_times.clone();
        let backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(70));
        let mut capture = Capture::new(Box::new(camera), Arc::default()).with_backoff(backoff);
        let start = Instant::now();
        let mut frames = Vec::new();
        while let Some(frame) = capture.next_frame().unwrap() {
            frames.push((frame.index, frame.data.image.width()));
        }
        assert_eq!(frames, [(0, 14), (1, 15), (2, 16), (3, 17), (4, 18)]);
        assert_eq!(capture.counts(), CaptureCounts { frames: 5, corrupt: 1, reopens: 1 });
        // Three attempts (two fail) after 20, 40 and 70 (capped) ms.
        let offsets: Vec<u128> = reopen_times.lock().unwrap().iter().map(|t| (*t - start).as_millis()).collect();
        assert_eq!(offsets.len(), 3);
        let gaps = [offsets[0], offsets[1] - offsets[0], offsets[2] - offsets[1]];
        for (gap, expected) in gaps.iter().zip([20, 40, 70]) {
            assert!(*gap >= expected && *gap < expected + 200, "backoff gaps {gaps:?}");
        }
    }

    #[test]
    fn stop_interrupts_a_backoff_wait() {
        let camera = FakeCamera::new(vec![Step::Fail], 1000);
        let stop = Arc::new(AtomicBool::new(false));
        let mut capture = Capture::new(Box::new(camera), stop.clone()).with_backoff(Backoff::new(Duration::from_secs(10), Duration::from_secs(10)));
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::Relaxed);
        });
        let start = Instant::now();
        assert!(capture.next_frame().unwrap().is_none());
        assert!(start.elapsed() < Duration::from_secs(1));
        stopper.join().unwrap();
    }
}
