//! ROS 2 image messages (feature `ros2`): CDR bytes as a DDS sample of
//! `sensor_msgs/msg/Image` or `CompressedImage` (decoded as the subscription
//! does), and structured `Image` messages of any encoding, size, step and
//! data length (raw RGB, BGR, RGBA, mono and YUYV/UYVY buffers with any row
//! padding), through `image_to_rgb` / `compressed_to_rgb` to an RGB frame.
//!
//! Input: 1 byte of mode, then:
//! - mode 0: CDR (little-endian) of an `Image`;
//! - mode 1: CDR of a `CompressedImage`;
//! - otherwise: encoding (mode / 2 picks it), width (u16 LE), height (u16 LE),
//!   step (u16 LE), then the pixel bytes.
#![no_main]

use causeseg::ros2::msg::{CompressedImage, Image};
use causeseg::source::ros2::{compressed_to_rgb, image_to_rgb};
use libfuzzer_sys::fuzz_target;
use ros2_client::dds::rustdds::serialization::deserialize_from_cdr_with_rep_id;
use ros2_client::dds::rustdds::RepresentationIdentifier;

const ENCODINGS: [&str; 14] =
    ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3", "8UC4", "yuv422", "uyvy", "yuv422_yuy2", "yuyv", "mono16", ""];

fn check(message: &Image) {
    if let Ok(rgb) = image_to_rgb(message) {
        assert_eq!(rgb.dimensions(), (message.width, message.height));
        assert!(message.data.len() as u64 >= u64::from(message.step) * u64::from(message.height));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode {
        0 => {
            if let Ok((message, _)) = deserialize_from_cdr_with_rep_id::<Image>(rest, RepresentationIdentifier::CDR_LE) {
                check(&message);
            }
        }
        1 => {
            if let Ok((message, _)) = deserialize_from_cdr_with_rep_id::<CompressedImage>(rest, RepresentationIdentifier::CDR_LE) {
                let _ = compressed_to_rgb(&message);
            }
        }
        _ => {
            if rest.len() < 6 {
                return;
            }
            let field = |i: usize| u32::from(u16::from_le_bytes([rest[i], rest[i + 1]]));
            let message = Image {
                encoding: ENCODINGS[usize::from(mode / 2) % ENCODINGS.len()].into(),
                width: field(0),
                height: field(2),
                step: field(4),
                data: rest[6..].to_vec(),
                ..Default::default()
            };
            check(&message);
        }
    }
});
