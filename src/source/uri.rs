//! Source URIs: the `--source` text, classified (see the table in the
//! parent module).

use std::fmt;
use std::path::{Path, PathBuf};

use super::SourceError;

/// File extensions opened as video through GStreamer.
const VIDEO_EXTENSIONS: &[&str] = &["mp4", "m4v", "mkv", "webm", "avi", "mov", "mpg", "mpeg", "ts", "flv", "ogv", "h264", "h265", "264", "265"];

/// A classified `--source` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUri {
    /// The first camera, else the bundled sample images.
    Auto,
    /// V4L2 camera `/dev/video<index>`.
    Camera {
        /// The N of `/dev/videoN`.
        index: u32,
    },
    /// Jetson CSI camera (sensor id).
    Csi(u32),
    /// A GStreamer pipeline description.
    Gst(String),
    /// A network stream URL (rtsp, http, https).
    Url(String),
    /// A video file.
    Video(PathBuf),
    /// An image file, a directory of images, or a glob.
    Images(String),
    /// A ROS 2 image topic (`ros2:///camera/image_raw`: the topic is what
    /// follows `ros2://`, so `ros2://image` is the relative name `image`).
    Ros2 {
        /// The topic name, absolute (`/camera/image_raw`), relative or `~/…`.
        topic: String,
        /// `sensor_msgs/msg/CompressedImage` instead of `Image`: a topic
        /// ending in `/compressed`, or `--ros2-compressed`.
        compressed: bool,
    },
}

impl SourceUri {
    /// Classifies `text`. Paths are checked against the file system: a path
    /// that does not exist (and has no wildcard) is an error here.
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let unknown = || SourceError::UnknownUri(text.into());
        if text == "auto" {
            return Ok(SourceUri::Auto);
        }
        if let Some(device) = text.strip_prefix("v4l2://") {
            return camera_index(device).map(|index| SourceUri::Camera { index }).ok_or_else(unknown);
        }
        if let Some(index) = camera_index(text) {
            return Ok(SourceUri::Camera { index });
        }
        if let Some(id) = text.strip_prefix("csi://") {
            return id.parse().map(SourceUri::Csi).map_err(|_| unknown());
        }
        if let Some(pipeline) = text.strip_prefix("gst://") {
            return if pipeline.trim().is_empty() { Err(unknown()) } else { Ok(SourceUri::Gst(pipeline.into())) };
        }
        if let Some(topic) = text.strip_prefix("ros2://") {
            let topic = topic.trim();
            if topic.is_empty() || topic == "/" {
                return Err(unknown());
            }
            return Ok(SourceUri::Ros2 { topic: topic.into(), compressed: topic.ends_with("/compressed") });
        }
        if ["rtsp://", "rtsps://", "http://", "https://"].iter().any(|s| text.starts_with(s)) {
            return Ok(SourceUri::Url(text.into()));
        }
        let path = text.strip_prefix("file://").unwrap_or(text);
        if path.contains("://") || path.is_empty() {
            return Err(unknown());
        }
        if has_wildcard(path) || Path::new(path).is_dir() {
            return Ok(SourceUri::Images(path.into()));
        }
        if !Path::new(path).exists() {
            return Err(SourceError::NotFound(path.into()));
        }
        let extension = Path::new(path).extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if extension.is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.as_str())) {
            return Ok(SourceUri::Video(path.into()));
        }
        Ok(SourceUri::Images(path.into()))
    }
}

impl fmt::Display for SourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceUri::Auto => write!(f, "auto"),
            SourceUri::Camera { index } => write!(f, "/dev/video{index}"),
            SourceUri::Csi(id) => write!(f, "csi://{id}"),
            SourceUri::Gst(pipeline) => write!(f, "gst://{pipeline}"),
            SourceUri::Url(url) | SourceUri::Images(url) => write!(f, "{url}"),
            SourceUri::Video(path) => write!(f, "{}", path.display()),
            SourceUri::Ros2 { topic, .. } => write!(f, "ros2://{topic}"),
        }
    }
}

/// N of `/dev/videoN`.
fn camera_index(device: &str) -> Option<u32> {
    let digits = device.strip_prefix("/dev/video")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a path has `*` or `?` wildcards.
pub fn has_wildcard(path: &str) -> bool {
    path.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_classified() {
        assert_eq!(SourceUri::parse("auto").unwrap(), SourceUri::Auto);
        assert_eq!(SourceUri::parse("/dev/video2").unwrap(), SourceUri::Camera { index: 2 });
        assert_eq!(SourceUri::parse("v4l2:///dev/video0").unwrap(), SourceUri::Camera { index: 0 });
        assert_eq!(SourceUri::parse("csi://1").unwrap(), SourceUri::Csi(1));
        assert_eq!(SourceUri::parse("gst://videotestsrc").unwrap(), SourceUri::Gst("videotestsrc".into()));
        assert_eq!(SourceUri::parse("rtsp://cam/stream").unwrap(), SourceUri::Url("rtsp://cam/stream".into()));
        assert_eq!(SourceUri::parse("frames/*.png").unwrap(), SourceUri::Images("frames/*.png".into()));
        let raw = SourceUri::parse("ros2:///camera/image_raw").unwrap();
        assert_eq!(raw, SourceUri::Ros2 { topic: "/camera/image_raw".into(), compressed: false });
        assert_eq!(raw.to_string(), "ros2:///camera/image_raw");
        assert_eq!(SourceUri::parse("ros2://image/compressed").unwrap(), SourceUri::Ros2 { topic: "image/compressed".into(), compressed: true });
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("clip.MP4");
        std::fs::write(&clip, b"").unwrap();
        assert_eq!(SourceUri::parse(clip.to_str().unwrap()).unwrap(), SourceUri::Video(clip.clone()));
        let d = dir.path().to_str().unwrap();
        assert_eq!(SourceUri::parse(&format!("file://{d}")).unwrap(), SourceUri::Images(d.into()));
    }

    #[test]
    fn bad_uris_are_errors() {
        for text in ["ftp://x", "v4l2://cam", "csi://left", "gst://", "", "ros2://", "ros2:///"] {
            assert!(matches!(SourceUri::parse(text), Err(SourceError::UnknownUri(_))), "{text}");
        }
        assert_eq!(SourceUri::parse("/no/such/dir").unwrap_err().to_string(), "/no/such/dir: no such file or directory");
    }
}
