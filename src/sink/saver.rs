//! [`FrameImages`]: the streaming adapter of [`ImageSink`]: saves every N-th
//! processed frame as `<index>_labels.png`, `<index>_mask.png`,
//! `<index>_overlay.png`, where `<index>` is the frame index zero-padded to
//! six digits (`000042_labels.png`). Indices, unlike file stems, stay unique
//! when a source loops and exist for cameras too; the stats sink's JSONL
//! line carries the same index and the source file's stem.

use super::{FrameSink, ImageSink, SinkError};
use super::ProcessedFrame;

/// Saves the visualisations of every `every`-th processed frame.
pub struct FrameImages {
    sink: ImageSink,
    every: u64,
    seen: u64,
}

impl FrameImages {
    /// Saves the 1st, `every + 1`-th, … processed frame through `sink`
    /// (`every` 0 counts as 1).
    pub fn new(sink: ImageSink, every: u64) -> Self {
        FrameImages { sink, every: every.max(1), seen: 0 }
    }
}

/// The file-name stem of frame `index`.
pub fn frame_stem(index: u64) -> String {
    format!("{index:06}")
}

impl FrameSink for FrameImages {
    fn write(&mut self, processed: &ProcessedFrame) -> Result<(), SinkError> {
        let due = self.seen.is_multiple_of(self.every);
        self.seen += 1;
        if due {
            self.sink.write(&frame_stem(processed.frame.index), &processed.frame.data.image, &processed.labels)?;
        }
        Ok(())
    }
}
