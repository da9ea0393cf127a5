//! The latest processed frame and its JPEG encodings, shared by the sink,
//! the stream clients and the encoder thread under one lock:
//!
//! - the sink puts each frame in (an `Arc` swap: the pipeline never waits
//!   for a browser);
//! - a stream client asks for a rendering (view and alpha) newer than the
//!   one it sent last, and waits;
//! - the encoder thread encodes what clients wait for, from the newest
//!   frame only (latest-frame-wins), once for all clients of a rendering;
//!   frames nobody waits for are never encoded.
//!
//! Memory is bounded: one frame, and one JPEG per rendering some client
//! waits for (encodings nobody waits for are dropped with the next frame).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::concepts::Concepts;
use super::render::{encode, Rendering};
use crate::sink::ProcessedFrame;

/// A processed frame as the preview keeps it.
pub(super) struct Snapshot {
    /// The frame and its labels.
    pub(super) frame: ProcessedFrame,
    /// Capture until the frame reached the preview sink, in milliseconds.
    pub(super) end_to_end_ms: f64,
    /// The pipeline's recent frames per second.
    pub(super) fps: f64,
}

/// A JPEG of frame number `seq` (1 = the first frame the sink saw).
#[derive(Clone)]
pub(super) struct Encoded {
    pub(super) seq: u64,
    pub(super) jpeg: Arc<Vec<u8>>,
}

#[derive(Default)]
struct State {
    /// Frames put so far: the newest frame's number.
    seq: u64,
    latest: Option<Arc<Snapshot>>,
    /// Renderings some client waits for.
    wanted: HashSet<Rendering>,
    encoded: HashMap<Rendering, Encoded>,
    closed: bool,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Frames {
    state: Mutex<State>,
    changed: Condvar,
}

impl Frames {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking peer cannot leave the state inconsistent: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the latest frame.
    pub(super) fn put(&self, snapshot: Snapshot) {
        let mut state = self.lock();
        state.seq += 1;
        state.latest = Some(Arc::new(snapshot));
        let State { encoded, wanted, .. } = &mut *state;
        encoded.retain(|rendering, _| wanted.contains(rendering));
        drop(state);
        self.changed.notify_all();
    }

    /// The latest frame and its number, if any.
    pub(super) fn latest(&self) -> Option<(u64, Arc<Snapshot>)> {
        let state = self.lock();
        state.latest.clone().map(|s| (state.seq, s))
    }

    /// Waits for an encoding of `rendering` of a frame newer than frame
    /// `after`; `None` once closed.
    pub(super) fn next_jpeg(&self, rendering: Rendering, after: u64) -> Option<Encoded> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(encoded) = state.encoded.get(&rendering).filter(|e| e.seq > after) {
                return Some(encoded.clone());
            }
            if state.wanted.insert(rendering) {
                self.changed.notify_all();
            }
            state = self.wait(state);
        }
    }

    /// Ends every wait: clients and the encoder stop.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Encoder side: waits until a wanted rendering is older than the latest
    /// frame, and returns it with that frame; `None` once closed.
    fn next_job(&self) -> Option<(Rendering, u64, Arc<Snapshot>)> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(latest) = &state.latest {
                let stale = state.wanted.iter().find(|r| state.encoded.get(r).is_none_or(|e| e.seq < state.seq));
                if let Some(&rendering) = stale {
                    return Some((rendering, state.seq, latest.clone()));
                }
            }
            state = self.wait(state);
        }
    }

    /// Encoder side: publishes an encoding and wakes its clients.
    fn finish_job(&self, rendering: Rendering, encoded: Encoded) {
        let mut state = self.lock();
        state.wanted.remove(&rendering);
        state.encoded.insert(rendering, encoded);
        drop(state);
        self.changed.notify_all();
    }
}

/// Starts the encoder thread: renders with the concepts' current colours
/// (so renames show at the next frame), until `frames` is closed.
pub(super) fn spawn_encoder(frames: Arc<Frames>, concepts: Arc<Concepts>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("preview-encoder".into()).spawn(move || {
        while let Some((rendering, seq, snapshot)) = frames.next_job() {
            let jpeg = encode(&snapshot.frame, rendering, &concepts.colors());
            frames.finish_job(rendering, Encoded { seq, jpeg: Arc::new(jpeg) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::preview::render::View;
    use crate::source::{Frame, SourceFrame};
    use image::{GrayImage, RgbImage};
    use std::time::{Duration, Instant};

    fn snapshot(index: u64) -> Snapshot {
        let data = SourceFrame::now(RgbImage::new(4, 2), None, 0.0);
        let frame = ProcessedFrame { frame: Frame { index, captured: Instant::now(), data }, labels: GrayImage::new(4, 2), times: Default::default(), queue_ms: 0.0 };
        Snapshot { frame, end_to_end_ms: 0.0, fps: 0.0 }
    }

    const OVERLAY: Rendering = Rendering { view: View::Overlay, alpha: 50 };

    #[test]
    fn the_latest_frame_wins() {
        let frames = Frames::default();
        assert!(frames.latest().is_none());
        frames.put(snapshot(7));
        frames.put(snapshot(8));
        let (seq, latest) = frames.latest().unwrap();
        assert_eq!((seq, latest.frame.frame.index), (2, 8));
    }

    #[test]
    fn only_wanted_renderings_of_the_newest_frame_are_encoded() {
        let frames = Arc::new(Frames::default());
        frames.put(snapshot(0));
        frames.put(snapshot(1));
        // Nothing is wanted yet: no job.
        assert!(frames.lock().wanted.is_empty());
        let client = std::thread::spawn({
            let frames = frames.clone();
            move || frames.next_jpeg(OVERLAY, 0)
        });
        let (rendering, seq, latest) = frames.next_job().unwrap();
        assert_eq!((rendering, seq, latest.frame.frame.index), (OVERLAY, 2, 1));
        frames.finish_job(rendering, Encoded { seq, jpeg: Arc::new(vec![1, 2]) });
        let encoded = client.join().unwrap().unwrap();
        assert_eq!((encoded.seq, encoded.jpeg.as_slice()), (2, &[1u8, 2][..]));
        // Nobody waits: the next frame drops the encoding, and no job appears.
        frames.put(snapshot(2));
        assert!(frames.lock().encoded.is_empty() && frames.lock().wanted.is_empty());
    }

    #[test]
    fn a_client_waits_for_a_newer_frame_than_its_last() {
        let frames = Arc::new(Frames::default());
        frames.put(snapshot(0));
        let encoder = spawn_encoder(frames.clone(), Arc::new(Concepts::new("m".as_ref(), &["a".into()], &[[1, 2, 3]]))).unwrap();
        let first = frames.next_jpeg(OVERLAY, 0).unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(&first.jpeg[..2], &[0xff, 0xd8], "a JPEG");
        let waiting = std::thread::spawn({
            let frames = frames.clone();
            move || frames.next_jpeg(OVERLAY, 1).map(|e| e.seq)
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "no newer frame yet");
        frames.put(snapshot(1));
        assert_eq!(waiting.join().unwrap(), Some(2));
        frames.close();
        assert!(frames.next_jpeg(OVERLAY, 2).is_none());
        encoder.join().unwrap();
    }
}
