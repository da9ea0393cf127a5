//! Frame sources: where frames come from, by URI (in the style of
//! jetson-inference):
//!
//! | URI | source | feature |
//! | --- | --- | --- |
//! | `auto` (default) | the first V4L2 camera, else the bundled sample images in a loop | (`camera`) |
//! | `/dev/video0`, `v4l2:///dev/video0` | USB/V4L2 camera through nokhwa | `camera` |
//! | `csi://0` | Jetson CSI camera (`nvarguscamerasrc`) | `gstreamer` |
//! | `gst://PIPELINE` | any GStreamer pipeline (an appsink is appended if it has none) | `gstreamer` |
//! | `rtsp://…`, `http(s)://…` | network stream through `uridecodebin` | `gstreamer` |
//! | `clip.mp4` (video extensions) | video file through `decodebin` | `gstreamer` |
//! | `img.jpg`, `dir/`, `dir/*.png` | image file, directory or glob (wildcards in the file name) | always |
//! | `ros2:///camera/image_raw` | ROS 2 `sensor_msgs/msg/Image` topic (`CompressedImage` for `…/compressed`) | `ros2` |
//!
//! Every source implements [`FrameSource`]; [`Capture`] wraps one, numbers
//! its frames, skips (and counts) corrupt ones, and reopens a live source that
//! fails mid-stream with exponential backoff.

#[cfg(feature = "camera")]
pub mod camera;
pub mod capture;
pub mod decode;
pub mod files;
#[cfg(feature = "gstreamer")]
pub mod gst;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod uri;

use std::time::{Instant, SystemTime};

use image::RgbImage;

pub use capture::{Backoff, Capture, CaptureCounts};
pub use decode::{decode_bytes, decode_file, list_images, DecodeError};
pub use files::ImageFiles;
pub use uri::SourceUri;

/// Errors of frame sources; each names the file, device or URI concerned.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The URI matches no known kind of source.
    #[error("unknown source '{0}': expected auto, /dev/videoN, v4l2:///dev/videoN, csi://N, gst://PIPELINE, rtsp://URL, ros2:///TOPIC, a video file, or an image file, directory or glob")]
    UnknownUri(String),
    /// A file or directory that does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A directory or glob without usable images.
    #[error("{0}: no JPEG or PNG images")]
    NoImages(String),
    /// The source needs a cargo feature this build lacks.
    #[error("{uri}: this build has no {feature} support (rebuild with `cargo build --release --features {feature}`)")]
    FeatureMissing {
        /// The source URI.
        uri: String,
        /// The cargo feature it needs.
        feature: &'static str,
    },
    /// The camera device does not exist.
    #[error("{device}: no such camera (found {found} V4L2 camera(s))")]
    NoCamera {
        /// The device asked for.
        device: String,
        /// How many cameras were found.
        found: usize,
    },
    /// The device, file or pipeline could not be opened or started.
    #[error("{device}: cannot open: {reason}")]
    Open {
        /// What was opened.
        device: String,
        /// Why it failed.
        reason: String,
    },
    /// One frame could not be decoded; the stream goes on without it.
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    /// The stream failed (device unplugged, pipeline error): a live source
    /// is reopened.
    #[error("{device}: stream failed: {reason}")]
    Lost {
        /// The failed source.
        device: String,
        /// Why.
        reason: String,
    },
}

/// A frame as a source delivers it, before [`Capture`] numbers it.
#[derive(Debug, Clone)]
pub struct SourceFrame {
    /// The decoded picture.
    pub image: RgbImage,
    /// When the source captured or read it (wall clock).
    pub timestamp: SystemTime,
    /// The file stem for file sources, `None` for streams.
    pub name: Option<String>,
    /// Time spent decoding it (JPEG, YUYV conversion), in milliseconds.
    pub decode_ms: f64,
    /// The coordinate frame the source names (a ROS 2 message's
    /// `header.frame_id`), `None` for sources without one.
    pub frame_id: Option<String>,
}

impl SourceFrame {
    /// A frame captured now.
    pub fn now(image: RgbImage, name: Option<String>, decode_ms: f64) -> Self {
        SourceFrame { image, timestamp: SystemTime::now(), name, decode_ms, frame_id: None }
    }
}

/// A numbered frame, as [`Capture`] hands it to the pipeline.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Position in the stream, from 0; it keeps counting across reopens and
    /// loops (corrupt frames take no number).
    pub index: u64,
    /// Monotonic capture time (when the source had the frame, before
    /// decoding it): the start of end-to-end latency.
    pub captured: Instant,
    /// The frame itself.
    pub data: SourceFrame,
}

/// Something that yields RGB frames: files, cameras, pipelines.
pub trait FrameSource: Send {
    /// What this source is, for logs ("/dev/video0", "examples/images (4 images)").
    fn describe(&self) -> String;

    /// Live sources (cameras, network streams) run at their own pace, so the
    /// stream drops frames it cannot keep up with; other sources (files) are
    /// read only as fast as they are consumed, and nothing is dropped.
    fn is_live(&self) -> bool {
        false
    }

    /// Blocks for the next frame; `Ok(None)` at the end of the stream.
    /// [`SourceError::Corrupt`] skips one frame; other errors end a file
    /// source and make [`Capture`] reopen a live one.
    fn next_frame(&mut self) -> Result<Option<SourceFrame>, SourceError>;

    /// Closes and opens the device or pipeline again after a failure.
    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// How to open a source.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// Start image files (and video files) again at the end.
    pub looping: bool,
    /// Camera capture settings (V4L2 and CSI).
    pub camera: CameraOptions,
    /// The ROS 2 node `ros2://` sources subscribe with (shared with the
    /// ROS 2 sink); `None` makes one from the environment
    /// ([`crate::ros2::NodeConfig::from_env`]) whose source never stops by itself.
    #[cfg(feature = "ros2")]
    pub ros2: Option<crate::ros2::Node>,
}

/// Capture settings for cameras; `None` lets the device choose.
#[derive(Debug, Clone, Copy, Default)]
pub struct CameraOptions {
    /// Width and height in pixels.
    pub resolution: Option<(u32, u32)>,
    /// Frames per second.
    pub fps: Option<u32>,
    /// Pixel format on the wire (V4L2 only).
    pub format: Option<PixelFormat>,
}

/// Camera pixel formats that can be requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum PixelFormat {
    /// Motion JPEG: compressed, high resolutions at full frame rate.
    Mjpeg,
    /// YUYV 4:2:2: uncompressed, no decode cost, USB bandwidth-bound.
    Yuyv,
}

/// Opens the source `uri` names. `auto` picks the first camera (with the
/// `camera` feature) or else loops over the bundled sample images
/// ([`ImageFiles::samples`]), and logs which.
pub fn open(uri: &SourceUri, options: &SourceOptions) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(match uri {
        SourceUri::Auto => return open_auto(options),
        SourceUri::Images(pattern) => Box::new(ImageFiles::open(pattern, options.looping)?),
        #[cfg(feature = "camera")]
        SourceUri::Camera { index } => Box::new(camera::V4l2Camera::open(*index, &options.camera)?),
        #[cfg(feature = "gstreamer")]
        SourceUri::Csi(_) | SourceUri::Gst(_) | SourceUri::Url(_) | SourceUri::Video(_) => {
            Box::new(gst::GstSource::open(uri, options)?)
        }
        #[cfg(feature = "ros2")]
        SourceUri::Ros2 { topic, compressed } => {
            let node = match &options.ros2 {
                Some(node) => node.clone(),
                None => crate::ros2::NodeConfig::from_env()
                    .and_then(|config| crate::ros2::Node::new(&config, Default::default()))
                    .map_err(|e| SourceError::Open { device: uri.to_string(), reason: e.to_string() })?,
            };
            Box::new(ros2::Ros2Source::open(node, topic, *compressed)?)
        }
        #[cfg(not(feature = "ros2"))]
        SourceUri::Ros2 { .. } => return Err(SourceError::FeatureMissing { uri: uri.to_string(), feature: "ros2" }),
        #[cfg(not(feature = "camera"))]
        SourceUri::Camera { .. } => return Err(SourceError::FeatureMissing { uri: uri.to_string(), feature: "camera" }),
        #[cfg(not(feature = "gstreamer"))]
        SourceUri::Csi(_) | SourceUri::Gst(_) | SourceUri::Url(_) | SourceUri::Video(_) => {
            return Err(SourceError::FeatureMissing { uri: uri.to_string(), feature: "gstreamer" })
        }
    })
}

#[cfg_attr(not(feature = "camera"), allow(unused_variables))]
fn open_auto(options: &SourceOptions) -> Result<Box<dyn FrameSource>, SourceError> {
    #[cfg(feature = "camera")]
    {
        if let Some(index) = camera::list()?.first().map(|(index, _)| *index) {
            let source = camera::V4l2Camera::open(index, &options.camera)?;
            log::info!("source auto: camera {}", source.describe());
            return Ok(Box::new(source));
        }
        log::info!("source auto: no camera found; looping over the bundled sample images");
    }
    #[cfg(not(feature = "camera"))]
    log::info!("source auto: built without the camera feature; looping over the bundled sample images");
    Ok(Box::new(ImageFiles::samples(true)))
}
