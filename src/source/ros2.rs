//! `ros2:///TOPIC` (feature `ros2`): camera images from a ROS 2 topic,
//! `sensor_msgs/msg/Image` (`rgb8`, `bgr8`, `rgba8`, `bgra8`, `mono8`,
//! `yuv422`/`uyvy`, `yuv422_yuy2`/`yuyv`) or, for a topic ending in
//! `/compressed` (or with `--ros2-compressed`),
//! `sensor_msgs/msg/CompressedImage` (JPEG, PNG).
//!
//! A live source: the subscription keeps only the newest message (keep
//! last 1) and the stream only the newest frame. A message that cannot be a
//! frame (unknown encoding, a step shorter than a row, fewer bytes than
//! `step * height`, a corrupt JPEG) is a [`SourceError::Corrupt`]: logged
//! with its reason and counted by [`super::Capture`], never fatal. DDS
//! matches publishers as they come and go, so a camera driver that
//! restarts is picked up again without reopening anything. The frame's
//! timestamp and frame id are the message header's.

use std::time::{Duration, Instant};

use image::RgbImage;
use ros2_client::dds::rustdds::mio1::{Events, Interest, Poll, Token};
use ros2_client::Subscription;

use super::decode::decode_bytes;
use super::{FrameSource, SourceError, SourceFrame};
use crate::ros2::msg::{CompressedImage, Header, Image};
use crate::ros2::Node;
use crate::timing::ms_since;

/// How long one wait for a message lasts before the stop flag is checked again.
const WAIT: Duration = Duration::from_millis(50);

/// Frames from a ROS 2 image topic.
pub struct Ros2Source {
    node: Node,
    uri: String,
    topic: String,
    subscription: Incoming,
    poll: Poll,
    events: Events,
}

/// The subscription, by message type.
enum Incoming {
    Raw(Subscription<Image>),
    Compressed(Subscription<CompressedImage>),
}

impl Ros2Source {
    /// Subscribes `node` to `topic` (`/camera/image_raw`, `image`,
    /// `~/image`; resolved and remapped), `CompressedImage` when
    /// `compressed`.
    pub fn open(node: Node, topic: &str, compressed: bool) -> Result<Self, SourceError> {
        let uri = format!("ros2://{topic}");
        let fail = |reason: String| SourceError::Open { device: uri.clone(), reason };
        let qos = node.image_qos();
        let (mut subscription, resolved) = if compressed {
            node.subscription::<CompressedImage>(topic, &qos).map(|(s, t)| (Incoming::Compressed(s), t))
        } else {
            node.subscription::<Image>(topic, &qos).map(|(s, t)| (Incoming::Raw(s), t))
        }
        .map_err(|e| fail(e.to_string()))?;
        let poll = Poll::new().map_err(|e| fail(e.to_string()))?;
        let registry = poll.registry();
        match &mut subscription {
            Incoming::Raw(s) => registry.register(s, Token(0), Interest::READABLE),
            Incoming::Compressed(s) => registry.register(s, Token(0), Interest::READABLE),
        }
        .map_err(|e| fail(e.to_string()))?;
        log::info!("subscribed to {resolved} ({})", if compressed { "sensor_msgs/msg/CompressedImage" } else { "sensor_msgs/msg/Image" });
        Ok(Ros2Source { node, uri, topic: resolved, subscription, poll, events: Events::with_capacity(4) })
    }

    /// Takes the newest message, if any, and turns it into a frame.
    fn take(&mut self) -> Option<Result<SourceFrame, SourceError>> {
        let corrupt = |topic: &str, reason: String| SourceError::Corrupt(format!("{topic}: {reason}"));
        let taken = match &self.subscription {
            Incoming::Raw(s) => s.take().map(|m| m.map(|(image, _)| {
                let start = Instant::now();
                image_to_rgb(&image).map(|rgb| frame(rgb, image.header, start))
            })),
            Incoming::Compressed(s) => s.take().map(|m| m.map(|(image, _)| {
                let start = Instant::now();
                compressed_to_rgb(&image).map(|rgb| frame(rgb, image.header, start))
            })),
        };
        match taken {
            Ok(None) => None,
            Ok(Some(result)) => Some(result.map_err(|reason| corrupt(&self.topic, reason))),
            Err(error) => Some(Err(corrupt(&self.topic, format!("cannot read the message: {error}")))),
        }
    }
}

fn frame(image: RgbImage, header: Header, start: Instant) -> SourceFrame {
    SourceFrame { image, timestamp: header.stamp.to_system(), name: None, decode_ms: ms_since(start), frame_id: Some(header.frame_id) }
}

impl FrameSource for Ros2Source {
    fn describe(&self) -> String {
        format!("{} ({})", self.uri, self.topic)
    }

    fn is_live(&self) -> bool {
        true
    }

    /// Waits for the next message; `None` once the node's stop flag is set.
    fn next_frame(&mut self) -> Result<Option<SourceFrame>, SourceError> {
        while !self.node.stopped() {
            if let Some(frame) = self.take() {
                return frame.map(Some);
            }
            self.poll
                .poll(&mut self.events, Some(WAIT))
                .map_err(|e| SourceError::Lost { device: self.uri.clone(), reason: e.to_string() })?;
        }
        Ok(None)
    }
}

/// Bytes per pixel of the uncompressed encodings we read (REP 104 names;
/// 4:2:2 YUV is 2 bytes per pixel, pixel pairs share U and V).
fn bytes_per_pixel(encoding: &str) -> Option<u32> {
    match encoding {
        "mono8" | "8UC1" => Some(1),
        "yuv422" | "uyvy" | "yuv422_yuy2" | "yuyv" => Some(2),
        "rgb8" | "bgr8" | "8UC3" => Some(3),
        "rgba8" | "bgra8" | "8UC4" => Some(4),
        _ => None,
    }
}

/// Converts a `sensor_msgs/Image` to RGB after checking its size fields;
/// the error says what is wrong with the message.
pub fn image_to_rgb(message: &Image) -> Result<RgbImage, String> {
    let (width, height, step) = (message.width, message.height, message.step);
    let encoding = message.encoding.as_str();
    let bpp = bytes_per_pixel(encoding).ok_or_else(|| {
        format!("unsupported encoding '{encoding}' (rgb8, bgr8, rgba8, bgra8, mono8, yuv422/uyvy, yuv422_yuy2/yuyv; or a /compressed topic)")
    })?;
    if width == 0 || height == 0 {
        return Err(format!("empty image ({width}x{height})"));
    }
    let row = u64::from(width) * u64::from(bpp);
    if u64::from(step) < row {
        return Err(format!("inconsistent step: {step} bytes per row, but {width} {encoding} pixels need {row}"));
    }
    if bpp == 2 && width % 2 == 1 {
        return Err(format!("{encoding} needs an even width, got {width}"));
    }
    let needed = u64::from(step) * u64::from(height);
    if (message.data.len() as u64) < needed {
        return Err(format!("truncated data: {} bytes, but step {step} x height {height} needs {needed}", message.data.len()));
    }
    let (w, step) = (width as usize, step as usize);
    let mut rgb = Vec::with_capacity(w * height as usize * 3);
    for line in message.data.chunks_exact(step).take(height as usize) {
        let line = &line[..w * bpp as usize];
        match encoding {
            "mono8" | "8UC1" => rgb.extend(line.iter().flat_map(|&v| [v, v, v])),
            "rgb8" | "8UC3" => rgb.extend_from_slice(line),
            "bgr8" => rgb.extend(line.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]])),
            "rgba8" | "8UC4" => rgb.extend(line.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]])),
            "bgra8" => rgb.extend(line.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0]])),
            // U Y0 V Y1
            "yuv422" | "uyvy" => line.chunks_exact(4).for_each(|q| yuv_pair(&mut rgb, q[1], q[3], q[0], q[2])),
            // Y0 U Y1 V
            _ => line.chunks_exact(4).for_each(|q| yuv_pair(&mut rgb, q[0], q[2], q[1], q[3])),
        }
    }
    Ok(RgbImage::from_raw(width, height, rgb).expect("one RGB triple per pixel"))
}

/// Appends two RGB pixels from luma `y0`, `y1` and their shared chroma (BT.601, limited range).
fn yuv_pair(rgb: &mut Vec<u8>, y0: u8, y1: u8, u: u8, v: u8) {
    let (d, e) = (f32::from(u) - 128.0, f32::from(v) - 128.0);
    for y in [y0, y1] {
        let c = 1.164 * (f32::from(y) - 16.0);
        let clamp = |x: f32| x.round().clamp(0.0, 255.0) as u8;
        rgb.extend([clamp(c + 1.596 * e), clamp(c - 0.392 * d - 0.813 * e), clamp(c + 2.017 * d)]);
    }
}

/// Decodes a `sensor_msgs/CompressedImage` (JPEG or PNG, sniffed from the
/// bytes; the `format` field only has to name one of them).
pub fn compressed_to_rgb(message: &CompressedImage) -> Result<RgbImage, String> {
    let format = message.format.to_ascii_lowercase();
    if !format.is_empty() && !["jpeg", "jpg", "png"].iter().any(|f| format.contains(f)) {
        return Err(format!("unsupported format '{}' (jpeg or png)", message.format));
    }
    decode_bytes(&message.data, "compressed image").map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(encoding: &str, width: u32, height: u32, step: u32, data: Vec<u8>) -> Image {
        Image { encoding: encoding.into(), width, height, step, data, ..Default::default() }
    }

    #[test]
    fn encodings_convert_to_rgb() {
        // Two pixels per row, padded rows (step 8 for 6 bytes of rgb8).
        let rgb = image_to_rgb(&image("rgb8", 2, 1, 8, vec![1, 2, 3, 4, 5, 6, 0, 0])).unwrap();
        assert_eq!(rgb.as_raw(), &[1, 2, 3, 4, 5, 6]);
        let bgr = image_to_rgb(&image("bgr8", 1, 2, 3, vec![1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(bgr.as_raw(), &[3, 2, 1, 6, 5, 4]);
        assert_eq!(image_to_rgb(&image("mono8", 2, 1, 2, vec![7, 9])).unwrap().as_raw(), &[7, 7, 7, 9, 9, 9]);
        assert_eq!(image_to_rgb(&image("bgra8", 1, 1, 4, vec![1, 2, 3, 255])).unwrap().as_raw(), &[3, 2, 1]);
        // Grey in YUV (Y 128, U = V = 128) is grey in RGB, in both byte orders.
        let grey = [130u8, 130, 130];
        let uyvy = image_to_rgb(&image("yuv422", 2, 1, 4, vec![128, 128, 128, 128])).unwrap();
        let yuyv = image_to_rgb(&image("yuyv", 2, 1, 4, vec![128, 128, 128, 128])).unwrap();
        assert_eq!(uyvy.as_raw(), &[grey, grey].concat());
        assert_eq!(yuyv, uyvy);
        // Y0 differs from Y1: order matters.
        let yuyv = image_to_rgb(&image("yuv422_yuy2", 2, 1, 4, vec![16, 128, 235, 128])).unwrap();
        assert_eq!((yuyv.get_pixel(0, 0).0, yuyv.get_pixel(1, 0).0), ([0, 0, 0], [255, 255, 255]));
    }

    #[test]
    fn bad_messages_are_rejected_with_the_reason() {
        let error = |m: Image| image_to_rgb(&m).unwrap_err();
        assert_eq!(
            error(image("16UC1", 2, 2, 4, vec![0; 8])),
            "unsupported encoding '16UC1' (rgb8, bgr8, rgba8, bgra8, mono8, yuv422/uyvy, yuv422_yuy2/yuyv; or a /compressed topic)"
        );
        assert_eq!(error(image("rgb8", 4, 2, 10, vec![0; 24])), "inconsistent step: 10 bytes per row, but 4 rgb8 pixels need 12");
        assert_eq!(error(image("rgb8", 4, 2, 12, vec![0; 20])), "truncated data: 20 bytes, but step 12 x height 2 needs 24");
        assert_eq!(error(image("mono8", 0, 2, 0, vec![])), "empty image (0x2)");
        assert_eq!(error(image("yuyv", 3, 1, 6, vec![0; 6])), "yuyv needs an even width, got 3");
        // A huge claimed size with little data is rejected before any allocation.
        assert!(error(image("rgb8", 100_000, 100_000, 300_000, vec![0; 10])).starts_with("truncated data"));
    }

    #[test]
    fn compressed_images_decode_or_say_why_not() {
        let mut png = Vec::new();
        RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30])).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let message = CompressedImage { format: "png".into(), data: png, ..Default::default() };
        assert_eq!(compressed_to_rgb(&message).unwrap().dimensions(), (3, 2));
        let h264 = CompressedImage { format: "h264".into(), data: vec![0; 4], ..Default::default() };
        assert_eq!(compressed_to_rgb(&h264).unwrap_err(), "unsupported format 'h264' (jpeg or png)");
        let garbage = CompressedImage { format: "jpeg".into(), data: vec![1, 2, 3], ..Default::default() };
        assert_eq!(compressed_to_rgb(&garbage).unwrap_err(), "compressed image: cannot decode image: not a JPEG or PNG file");
    }
}
