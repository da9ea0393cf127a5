//! [`Ros2Sink`] (feature `ros2`, `run --ros2`): publishes every processed
//! frame on ROS 2 topics (the table in [`crate::ros2`]): the label map
//! (`~/labels`, `mono8` concept ids, `mono16` beyond 256 concepts), its
//! colours (`~/color`, `rgb8`), optionally the overlay (`~/overlay`), and
//! per-frame timing on `/diagnostics`; the concept table once, at start,
//! as `vision_msgs/msg/LabelInfo` on `~/label_info` and as JSON with
//! colours on `~/concepts`, both transient local so that a subscriber
//! that joins later still gets them.
//!
//! `LabelInfo` because it is what ROS 2 segmentation users already read
//! class names from (vision_msgs 4, Isaac ROS segmentation: a latched
//! `label_info` beside a mono8 id image); it has no colours, hence the
//! JSON beside it (the same fields as the preview's `/concepts`).
//!
//! Publishing runs on the stream's output thread: converting and
//! serialising a frame costs about a millisecond at 448x336 (the RTPS
//! sending is RustDDS's own thread). A failed publish (a reliable
//! subscriber's window full) is logged and counted, and the run goes on.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

use image::{GrayImage, RgbImage};
use ros2_client::Publisher;
use serde::Serialize;

use super::stats::FrameStats;
use super::{FrameSink, ProcessedFrame, SinkError};
use crate::model::manifest::concept_entries;
use crate::pipeline::postprocess::{colorize, overlay};
use crate::ros2::msg::{DiagnosticArray, DiagnosticStatus, Header, Image, KeyValue, LabelInfo, StringMessage, Time, VisionClass};
use crate::ros2::{Node, Ros2Error};
use crate::timing::ms_since;

/// Frames the diagnostics' FPS is averaged over.
const FPS_WINDOW: usize = 30;

/// What the ROS 2 sink publishes.
#[derive(Debug, Clone)]
pub struct Ros2SinkConfig<'a> {
    /// Concept names, by id.
    pub names: &'a [String],
    /// Concept colours, by id.
    pub colors: &'a [[u8; 3]],
    /// Also publish `~/overlay`, with this mask opacity.
    pub overlay: Option<f32>,
    /// `header.frame_id` for frames whose source names none (all but ROS 2).
    pub frame_id: String,
}

/// Publishes processed frames on the node's topics.
pub struct Ros2Sink {
    node: Node,
    labels: Topic<Image>,
    color: Topic<Image>,
    overlay: Option<(Topic<Image>, f32)>,
    diagnostics: Topic<DiagnosticArray>,
    /// Kept for late subscribers (transient local), never written again.
    _label_info: Publisher<LabelInfo>,
    _concepts: Publisher<StringMessage>,
    colors: Vec<[u8; 3]>,
    concepts: usize,
    frame_id: String,
    recent: VecDeque<Instant>,
}

/// A publisher, its resolved topic name and its failure count.
struct Topic<M: Serialize> {
    publisher: Publisher<M>,
    name: String,
    failed: u64,
}

impl<M: Serialize> Topic<M> {
    fn new((publisher, name): (Publisher<M>, String)) -> Self {
        Topic { publisher, name, failed: 0 }
    }

    /// Publishes; a failure is logged (the first and every 100th) and counted.
    fn publish(&mut self, message: M) {
        if let Err(error) = self.publisher.publish(message) {
            self.failed += 1;
            if self.failed % 100 == 1 {
                log::warn!("{}: cannot publish ({} failed so far): {error}", self.name, self.failed);
            }
        }
    }
}

impl Ros2Sink {
    /// Creates the publishers on `node` and publishes the concept table.
    pub fn new(node: Node, config: Ros2SinkConfig) -> Result<Self, Ros2Error> {
        let image_qos = node.image_qos();
        let labels = Topic::new(node.publisher("~/labels", &image_qos)?);
        let color = Topic::new(node.publisher("~/color", &image_qos)?);
        let overlay = match config.overlay {
            Some(alpha) => Some((Topic::new(node.publisher("~/overlay", &image_qos)?), alpha)),
            None => None,
        };
        let diagnostics = Topic::new(node.publisher("/diagnostics", &Node::default_qos())?);
        let latched = Node::latched_qos();
        let (label_info, info_topic) = node.publisher::<LabelInfo>("~/label_info", &latched)?;
        let (concepts, concepts_topic) = node.publisher::<StringMessage>("~/concepts", &latched)?;
        let header = Header { stamp: Time::from_system(SystemTime::now()), frame_id: config.frame_id.clone() };
        let publish_error = |topic: &str, e: &dyn std::fmt::Display| Ros2Error::Create { what: format!("the concept table on {topic}"), reason: e.to_string() };
        label_info.publish(label_table(header, config.names)).map_err(|e| publish_error(&info_topic, &e))?;
        concepts.publish(concept_json(config.names, config.colors)).map_err(|e| publish_error(&concepts_topic, &e))?;
        log::info!(
            "publishing {}, {}{}, {}, {} and {info_topic}",
            labels.name,
            color.name,
            overlay.as_ref().map(|(t, _)| format!(", {}", t.name)).unwrap_or_default(),
            diagnostics.name,
            concepts_topic
        );
        Ok(Ros2Sink {
            node,
            labels,
            color,
            overlay,
            diagnostics,
            _label_info: label_info,
            _concepts: concepts,
            colors: config.colors.to_vec(),
            concepts: config.names.len(),
            frame_id: config.frame_id,
            recent: VecDeque::with_capacity(FPS_WINDOW + 1),
        })
    }

    /// Frames per second over the last [`FPS_WINDOW`] frames.
    fn fps(&mut self) -> f64 {
        self.recent.push_back(Instant::now());
        if self.recent.len() > FPS_WINDOW {
            self.recent.pop_front();
        }
        match (self.recent.front(), self.recent.back()) {
            (Some(first), Some(last)) if self.recent.len() > 1 && last > first => (self.recent.len() - 1) as f64 / (*last - *first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

impl FrameSink for Ros2Sink {
    fn write(&mut self, processed: &ProcessedFrame) -> Result<(), SinkError> {
        let data = &processed.frame.data;
        let frame_id = data.frame_id.clone().filter(|f| !f.is_empty()).unwrap_or_else(|| self.frame_id.clone());
        let header = Header { stamp: Time::from_system(data.timestamp), frame_id };
        self.labels.publish(label_image(header.clone(), &processed.labels, self.concepts));
        let mask = colorize(&processed.labels, &self.colors);
        if let Some((topic, alpha)) = &mut self.overlay {
            topic.publish(rgb_image(header.clone(), &overlay(&data.image, &mask, *alpha)));
        }
        self.color.publish(rgb_image(header.clone(), &mask));
        let fps = self.fps();
        let stats = FrameStats::new(processed, self.concepts, ms_since(processed.frame.captured));
        let hardware_id = self.node.names().fully_qualified();
        self.diagnostics.publish(diagnostics(header, &stats, fps, hardware_id));
        Ok(())
    }
}

/// The label map as an image message: `mono8`, or `mono16` (little-endian)
/// when there are more than 256 concepts.
pub fn label_image(header: Header, labels: &GrayImage, concepts: usize) -> Image {
    let (width, height) = labels.dimensions();
    let (encoding, step, data) = if concepts <= 256 {
        ("mono8", width, labels.as_raw().clone())
    } else {
        ("mono16", width * 2, labels.as_raw().iter().flat_map(|&id| u16::from(id).to_le_bytes()).collect())
    };
    Image { header, height, width, encoding: encoding.into(), is_bigendian: 0, step, data }
}

/// An RGB image as an `rgb8` image message.
pub fn rgb_image(header: Header, image: &RgbImage) -> Image {
    let (width, height) = image.dimensions();
    Image { header, height, width, encoding: "rgb8".into(), is_bigendian: 0, step: width * 3, data: image.as_raw().clone() }
}

/// The concept table as `vision_msgs/LabelInfo` (threshold 0: every pixel has a concept).
pub fn label_table(header: Header, names: &[String]) -> LabelInfo {
    let class_map = names.iter().enumerate().map(|(id, name)| VisionClass { class_id: id as u16, class_name: name.clone() }).collect();
    LabelInfo { header, class_map, threshold: 0.0 }
}

/// The concept table with colours, as JSON: `[{"id": 0, "name": "sky", "color": "#4682b4"}, …]`.
fn concept_json(names: &[String], colors: &[[u8; 3]]) -> StringMessage {
    StringMessage { data: serde_json::to_string(&concept_entries(names, colors)).expect("strings and numbers serialise") }
}

/// One frame's timing as a diagnostics message (level OK, values in ms).
fn diagnostics(header: Header, stats: &FrameStats, fps: f64, hardware_id: String) -> DiagnosticArray {
    let l = &stats.latency_ms;
    let value = |key: &str, value: String| KeyValue { key: key.into(), value };
    let values = vec![
        value("frame", stats.index.to_string()),
        value("fps", format!("{fps:.2}")),
        value("width", stats.width.to_string()),
        value("height", stats.height.to_string()),
        value("decode_ms", l.decode.to_string()),
        value("queue_ms", l.queue.to_string()),
        value("preprocess_ms", l.preprocess.to_string()),
        value("inference_ms", l.inference.to_string()),
        value("postprocess_ms", l.postprocess.to_string()),
        value("end_to_end_ms", l.end_to_end.to_string()),
    ];
    let message = format!("{fps:.1} fps, {:.0} ms end to end", l.end_to_end);
    let status = DiagnosticStatus { level: 0, name: "causeseg: segmentation".into(), message, hardware_id, values };
    DiagnosticArray { header, status: vec![status] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_maps_are_mono8_or_mono16() {
        let labels = GrayImage::from_raw(3, 2, vec![0, 1, 2, 3, 4, 5]).unwrap();
        let header = Header { stamp: Time { sec: 3, nanosec: 4 }, frame_id: "cam".into() };
        let mono8 = label_image(header.clone(), &labels, 27);
        assert_eq!((mono8.width, mono8.height, mono8.step, mono8.encoding.as_str()), (3, 2, 3, "mono8"));
        assert_eq!(mono8.data, labels.as_raw().clone());
        assert_eq!(mono8.header, header);
        let mono16 = label_image(header, &labels, 300);
        assert_eq!((mono16.step, mono16.encoding.as_str(), mono16.is_bigendian), (6, "mono16", 0));
        assert_eq!(&mono16.data[..4], &[0, 0, 1, 0]);
        let rgb = rgb_image(Header::default(), &RgbImage::new(5, 1));
        assert_eq!((rgb.step, rgb.data.len(), rgb.encoding.as_str()), (15, 15, "rgb8"));
    }

    #[test]
    fn concept_tables() {
        let names = ["sky".to_string(), "road".to_string()];
        let info = label_table(Header::default(), &names);
        assert_eq!(info.class_map[1], VisionClass { class_id: 1, class_name: "road".into() });
        let json = concept_json(&names, &[[70, 130, 180], [128, 64, 128]]);
        assert_eq!(json.data, r##"[{"id":0,"name":"sky","color":"#4682b4"},{"id":1,"name":"road","color":"#804080"}]"##);
    }
}
