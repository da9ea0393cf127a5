//! The ROS 2 message types causeseg sends and receives, as plain serde
//! structs whose fields are in the order of their `.msg` definitions: that
//! order is the CDR wire layout, so no generated code and no ROS install is
//! needed. `uint8[]` fields are (de)serialised as one byte block
//! ([`bytes`]), not element by element.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A ROS 2 message type: its package and name (`sensor_msgs`, `Image`),
/// which make the DDS type name `sensor_msgs::msg::dds_::Image_`.
pub trait RosMessage: Serialize + for<'de> Deserialize<'de> + Send + 'static {
    /// The package (`sensor_msgs`).
    const PACKAGE: &'static str;
    /// The message name (`Image`).
    const NAME: &'static str;
}

macro_rules! ros_message {
    ($type:ty, $package:literal, $name:literal) => {
        impl RosMessage for $type {
            const PACKAGE: &'static str = $package;
            const NAME: &'static str = $name;
        }
    };
}

/// `builtin_interfaces/msg/Time`: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Time {
    /// Whole seconds.
    pub sec: i32,
    /// Nanoseconds, below 10⁹.
    pub nanosec: u32,
}

impl Time {
    /// The stamp of a wall-clock time (before 1970 or after 2038: saturated).
    pub fn from_system(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        match i32::try_from(since.as_secs()) {
            Ok(sec) => Time { sec, nanosec: since.subsec_nanos() },
            Err(_) => Time { sec: i32::MAX, nanosec: 999_999_999 },
        }
    }

    /// The wall-clock time of a stamp (negative stamps: the epoch).
    pub fn to_system(self) -> SystemTime {
        let sec = u64::try_from(self.sec).unwrap_or(0);
        UNIX_EPOCH + Duration::new(sec, self.nanosec.min(999_999_999))
    }
}

/// `std_msgs/msg/Header`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// When the data was captured.
    pub stamp: Time,
    /// The coordinate frame of the data.
    pub frame_id: String,
}

/// `sensor_msgs/msg/Image`: an uncompressed image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Capture time and camera frame.
    pub header: Header,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Pixel layout: `rgb8`, `bgr8`, `mono8`, `mono16`, `yuv422`, … (REP 104 names).
    pub encoding: String,
    /// 1 if multi-byte pixels are big-endian.
    pub is_bigendian: u8,
    /// Bytes per row, padding included.
    pub step: u32,
    /// `step * height` bytes.
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
}
ros_message!(Image, "sensor_msgs", "Image");

/// `sensor_msgs/msg/CompressedImage`: a JPEG or PNG image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedImage {
    /// Capture time and camera frame.
    pub header: Header,
    /// `jpeg`, `png`, or image_transport's `bgr8; jpeg compressed bgr8`.
    pub format: String,
    /// The encoded image.
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
}
ros_message!(CompressedImage, "sensor_msgs", "CompressedImage");

/// `vision_msgs/msg/VisionClass`: one class id and its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisionClass {
    /// The id, as the label image's pixels carry it.
    pub class_id: u16,
    /// Its name.
    pub class_name: String,
}

/// `vision_msgs/msg/LabelInfo`: what the ids of a segmentation (or
/// detection) output mean; published once, transient local.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelInfo {
    /// When the table was made.
    pub header: Header,
    /// Id → name.
    pub class_map: Vec<VisionClass>,
    /// The score below which a pixel is unlabelled (causeseg labels every pixel: 0).
    pub threshold: f32,
}
ros_message!(LabelInfo, "vision_msgs", "LabelInfo");

/// `diagnostic_msgs/msg/KeyValue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The value's name.
    pub key: String,
    /// The value, as text.
    pub value: String,
}

/// `diagnostic_msgs/msg/DiagnosticStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticStatus {
    /// 0 OK, 1 WARN, 2 ERROR, 3 STALE.
    pub level: u8,
    /// What is reported on (`causeseg: segmentation`).
    pub name: String,
    /// A one-line summary.
    pub message: String,
    /// The reporting node.
    pub hardware_id: String,
    /// The values.
    pub values: Vec<KeyValue>,
}

/// `diagnostic_msgs/msg/DiagnosticArray`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticArray {
    /// When.
    pub header: Header,
    /// One status per component.
    pub status: Vec<DiagnosticStatus>,
}
ros_message!(DiagnosticArray, "diagnostic_msgs", "DiagnosticArray");

/// `std_msgs/msg/String`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringMessage {
    /// The text.
    pub data: String,
}
ros_message!(StringMessage, "std_msgs", "String");

/// `uint8[]` as one CDR byte block (length, then the bytes).
pub mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Serializer;

    /// Writes the bytes as one block.
    pub fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(data)
    }

    /// Reads a byte block (or a sequence of bytes).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte array")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 24));
                while let Some(b) = seq.next_element()? {
                    bytes.push(b);
                }
                Ok(bytes)
            }
        }
        deserializer.deserialize_byte_buf(Bytes)
    }
}

#[cfg(all(test, feature = "ros2"))]
mod tests {
    use super::*;
    use ros2_client::dds::rustdds::serialization::{deserialize_from_cdr_with_rep_id, to_writer_with_rep_id};
    use ros2_client::dds::rustdds::RepresentationIdentifier;

    fn cdr<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        to_writer_with_rep_id(&mut out, value, RepresentationIdentifier::CDR_LE).unwrap();
        out
    }

    fn back<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> T {
        deserialize_from_cdr_with_rep_id(bytes, RepresentationIdentifier::CDR_LE).unwrap().0
    }

    #[test]
    fn image_has_the_cdr_layout_of_sensor_msgs_image() {
        let image = Image {
            header: Header { stamp: Time { sec: 7, nanosec: 9 }, frame_id: "cam".into() },
            height: 1,
            width: 3,
            encoding: "mono8".into(),
            is_bigendian: 0,
            step: 3,
            data: vec![1, 2, 3],
        };
        let mut expected = Vec::new();
        expected.extend(7i32.to_le_bytes());
        expected.extend(9u32.to_le_bytes());
        expected.extend(4u32.to_le_bytes()); // "cam" + NUL
        expected.extend(b"cam\0");
        expected.extend(1u32.to_le_bytes());
        expected.extend(3u32.to_le_bytes());
        expected.extend(6u32.to_le_bytes());
        expected.extend(b"mono8\0");
        expected.push(0); // is_bigendian at offset 34, then one byte of padding to align step to 4
        expected.push(0);
        expected.extend(3u32.to_le_bytes());
        expected.extend(3u32.to_le_bytes());
        expected.extend([1, 2, 3]);
        assert_eq!(cdr(&image), expected);
        assert_eq!(back::<Image>(&expected), image);
    }

    #[test]
    fn label_info_and_diagnostics_round_trip() {
        let info = LabelInfo {
            header: Header { stamp: Time { sec: 1, nanosec: 2 }, frame_id: String::new() },
            class_map: vec![VisionClass { class_id: 0, class_name: "sky".into() }, VisionClass { class_id: 1, class_name: "road".into() }],
            threshold: 0.0,
        };
        let bytes = cdr(&info);
        // Header (8 + 4 + 1 → 16 aligned), 2 classes: u16 id, padding, string.
        assert_eq!(&bytes[16..20], &2u32.to_le_bytes());
        assert_eq!(back::<LabelInfo>(&bytes), info);
        let diagnostics = DiagnosticArray {
            header: Header::default(),
            status: vec![DiagnosticStatus {
                level: 0,
                name: "causeseg: segmentation".into(),
                message: "3.1 fps".into(),
                hardware_id: "/causeseg".into(),
                values: vec![KeyValue { key: "fps".into(), value: "3.1".into() }],
            }],
        };
        assert_eq!(back::<DiagnosticArray>(&cdr(&diagnostics)), diagnostics);
        let compressed = CompressedImage { header: Header::default(), format: "jpeg".into(), data: vec![0xff, 0xd8] };
        assert_eq!(back::<CompressedImage>(&cdr(&compressed)), compressed);
    }

    #[test]
    fn stamps_convert_to_and_from_wall_clock_time() {
        let time = UNIX_EPOCH + Duration::new(1_718_000_000, 123_456_789);
        assert_eq!(Time::from_system(time), Time { sec: 1_718_000_000, nanosec: 123_456_789 });
        assert_eq!(Time::from_system(time).to_system(), time);
        assert_eq!(Time { sec: -5, nanosec: 0 }.to_system(), UNIX_EPOCH);
    }
}
