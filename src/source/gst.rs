//! GStreamer sources (feature `gstreamer`): `gst://PIPELINE`, Jetson CSI
//! cameras (`csi://N` → `nvarguscamerasrc`), network streams
//! (`uridecodebin`) and video files (`decodebin`). Frames are pulled as RGB
//! from an appsink; one is appended (after `videoconvert`) when the pipeline
//! has none.
//!
//! A pipeline is live when starting it reports no preroll (cameras,
//! network streams): its appsink then keeps only the newest frame, and an
//! error or the end of its stream makes [`Capture`](super::Capture) reopen
//! it. Other pipelines (files, `videotestsrc`) are read only as fast as
//! frames are consumed, and `--loop` restarts them at their end.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app::AppSink;

use super::{CameraOptions, FrameSource, SourceError, SourceFrame, SourceOptions, SourceUri};

/// Without a frame for this long, a running pipeline counts as failed.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a pipeline to start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// CSI capture mode when none is given.
const CSI_DEFAULT: ((u32, u32), u32) = ((1280, 720), 30);

/// A running GStreamer pipeline that ends in an RGB appsink.
pub struct GstSource {
    uri: String,
    description: String,
    looping: bool,
    live: bool,
    pipeline: gst::Pipeline,
    appsink: AppSink,
}

impl GstSource {
    /// Builds and starts the pipeline for `uri` (a CSI, gst, URL or video
    /// source); errors name the URI and GStreamer's reason.
    pub fn open(uri: &SourceUri, options: &SourceOptions) -> Result<Self, SourceError> {
        let description = match uri {
            SourceUri::Csi(id) => csi_pipeline(*id, &options.camera),
            SourceUri::Gst(pipeline) if pipeline.contains("appsink") => pipeline.clone(),
            SourceUri::Gst(pipeline) => format!("{pipeline} ! {SINK}"),
            SourceUri::Url(url) => format!("uridecodebin uri={} ! {SINK}", quote(url)),
            SourceUri::Video(path) => format!("filesrc location={} ! decodebin ! {SINK}", quote(&path.display().to_string())),
            other => return Err(SourceError::UnknownUri(other.to_string())),
        };
        let uri = uri.to_string();
        let (pipeline, appsink, live) = start(&uri, &description)?;
        log::debug!("{uri}: pipeline `{description}` ({})", if live { "live" } else { "not live" });
        Ok(GstSource { uri, description, looping: options.looping, live, pipeline, appsink })
    }

    fn lost(&self, reason: String) -> SourceError {
        SourceError::Lost { device: self.uri.clone(), reason }
    }

    fn restart(&mut self) -> Result<(), SourceError> {
        // Stopping a failed pipeline can fail too; the new one replaces it anyway.
        let _ = self.pipeline.set_state(gst::State::Null);
        (self.pipeline, self.appsink, self.live) = start(&self.uri, &self.description)?;
        Ok(())
    }
}

impl FrameSource for GstSource {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn is_live(&self) -> bool {
        self.live
    }

    fn next_frame(&mut self) -> Result<Option<SourceFrame>, SourceError> {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            if let Some(sample) = self.appsink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                return to_frame(&sample, &self.uri).map(Some);
            }
            if let Some(reason) = bus_error(&self.pipeline) {
                return Err(self.lost(reason));
            }
            if self.appsink.is_eos() {
                if self.live {
                    // A camera or network stream that ends has gone away.
                    return Err(self.lost("end of stream".into()));
                }
                if !self.looping {
                    return Ok(None);
                }
                self.restart()?;
            } else if Instant::now() > deadline {
                return Err(self.lost(format!("no frame for {} s", FRAME_TIMEOUT.as_secs())));
            }
        }
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        self.restart()
    }
}

impl Drop for GstSource {
    fn drop(&mut self) {
        // Nothing useful can be done if shutting down fails.
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The tail appended to pipelines without an appsink.
const SINK: &str = "videoconvert ! appsink name=causeseg";

/// The `nvarguscamerasrc` pipeline of Jetson CSI sensor `id`.
fn csi_pipeline(id: u32, camera: &CameraOptions) -> String {
    let ((width, height), fps) = (camera.resolution.unwrap_or(CSI_DEFAULT.0), camera.fps.unwrap_or(CSI_DEFAULT.1));
    format!(
        "nvarguscamerasrc sensor-id={id} ! video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 \
         ! nvvidconv ! video/x-raw,format=BGRx ! {SINK}"
    )
}

/// A double-quoted pipeline string value.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Parses and starts `description`: the pipeline, its appsink, and whether
/// it is live.
fn start(uri: &str, description: &str) -> Result<(gst::Pipeline, AppSink, bool), SourceError> {
    let open_error = |reason: String| SourceError::Open { device: uri.into(), reason };
    gst::init().map_err(|e| open_error(format!("GStreamer does not initialise: {e}")))?;
    let element = gst::parse::launch(description).map_err(|e| open_error(e.to_string()))?;
    let pipeline = element
        .downcast::<gst::Pipeline>()
        .map_err(|_| open_error("a pipeline needs a source and an appsink, e.g. gst://videotestsrc".into()))?;
    let appsink = pipeline
        .iterate_recurse()
        .find(|e| e.is::<AppSink>())
        .and_then(|e| e.downcast::<AppSink>().ok())
        .ok_or_else(|| open_error("the pipeline has no appsink".into()))?;
    appsink.set_caps(Some(&gst::Caps::builder("video/x-raw").field("format", "RGB").build()));
    appsink.set_max_buffers(1);
    appsink.set_sync(false);
    let fail = |pipeline: &gst::Pipeline| {
        let _ = pipeline.set_state(gst::State::Null);
        open_error(bus_error(pipeline).unwrap_or_else(|| "the pipeline does not start".into()))
    };
    // Going to PAUSED tells live pipelines (no preroll) from the others.
    let live = match pipeline.set_state(gst::State::Paused) {
        Ok(gst::StateChangeSuccess::NoPreroll) => true,
        Ok(_) => match pipeline.state(gst::ClockTime::from_seconds(START_TIMEOUT.as_secs())).0 {
            Ok(gst::StateChangeSuccess::NoPreroll) => true,
            Ok(_) => false,
            Err(_) => return Err(fail(&pipeline)),
        },
        Err(_) => return Err(fail(&pipeline)),
    };
    appsink.set_drop(live);
    if pipeline.set_state(gst::State::Playing).is_err() {
        return Err(fail(&pipeline));
    }
    Ok((pipeline, appsink, live))
}

/// The first error message waiting on the pipeline's bus, with its details.
fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let message = pipeline.bus()?.pop_filtered(&[gst::MessageType::Error])?;
    match message.view() {
        gst::MessageView::Error(error) => Some(match error.debug() {
            Some(debug) => format!("{} ({debug})", error.error()),
            None => error.error().to_string(),
        }),
        _ => None,
    }
}

/// Copies an RGB sample (rows padded to 4 bytes, GStreamer's default
/// stride) into an image.
fn to_frame(sample: &gst::Sample, uri: &str) -> Result<SourceFrame, SourceError> {
    let start = Instant::now();
    let corrupt = |reason: &str| SourceError::Corrupt(format!("{uri}: {reason}"));
    let structure = sample.caps().and_then(|c| c.structure(0)).ok_or_else(|| corrupt("sample without caps"))?;
    let size = |field: &str| structure.get::<i32>(field).ok().and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
    let (Some(width), Some(height)) = (size("width"), size("height")) else {
        return Err(corrupt("caps without a frame size"));
    };
    let buffer = sample.buffer().ok_or_else(|| corrupt("sample without a buffer"))?;
    let map = buffer.map_readable().map_err(|_| corrupt("buffer not readable"))?;
    let row = width as usize * 3;
    let stride = row.next_multiple_of(4);
    if map.len() < stride * (height as usize - 1) + row {
        return Err(corrupt(&format!("{} bytes for a {width}x{height} RGB frame", map.len())));
    }
    let mut pixels = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        pixels.extend_from_slice(&map[y * stride..y * stride + row]);
    }
    let image = image::RgbImage::from_raw(width, height, pixels).ok_or_else(|| corrupt("frame size mismatch"))?;
    Ok(SourceFrame::now(image, None, crate::timing::ms_since(start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(text: &str, looping: bool) -> Result<GstSource, SourceError> {
        GstSource::open(&SourceUri::parse(text).unwrap(), &SourceOptions { looping, ..Default::default() })
    }

    #[test]
    fn videotestsrc_frames_have_the_caps_size_and_end() {
        let mut source = open("gst://videotestsrc num-buffers=3 ! video/x-raw,width=50,height=30", false).unwrap();
        assert!(!source.is_live());
        for _ in 0..3 {
            let frame = source.next_frame().unwrap().unwrap();
            assert_eq!(frame.image.dimensions(), (50, 30)); // 150-byte rows: padded to 152
        }
        assert!(source.next_frame().unwrap().is_none());
    }

    #[test]
    fn looping_restarts_at_the_end() {
        let mut source = open("gst://videotestsrc num-buffers=2 ! video/x-raw,width=16,height=16", true).unwrap();
        for _ in 0..5 {
            assert!(source.next_frame().unwrap().is_some());
        }
    }

    #[test]
    fn a_live_stream_that_ends_is_reopened_and_counting_continues() {
        use crate::source::{Backoff, Capture};
        let source = open("gst://videotestsrc is-live=true num-buffers=2 ! video/x-raw,width=16,height=16,framerate=30/1", false).unwrap();
        assert!(source.is_live());
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
        let mut capture = Capture::new(Box::new(source), Default::default()).with_backoff(backoff);
        let indices: Vec<u64> = (0..5).map(|_| capture.next_frame().unwrap().unwrap().index).collect();
        assert_eq!(indices, [0, 1, 2, 3, 4]);
        // Two frames per run (fewer if the newest-frame appsink dropped one).
        assert!(capture.counts().reopens >= 2);
    }

    #[test]
    fn errors_name_the_pipeline_and_the_reason() {
        let error = open("gst://nosuchelement ! fakesink", false).err().unwrap().to_string();
        assert!(error.starts_with("gst://nosuchelement ! fakesink: cannot open:") && error.contains("nosuchelement"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("broken.mp4");
        std::fs::write(&clip, b"not a video").unwrap();
        let error = open(clip.to_str().unwrap(), false).err().unwrap().to_string();
        assert!(error.contains("broken.mp4: cannot open:"), "{error}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
