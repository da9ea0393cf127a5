//! The views of a frame the stream offers, and their JPEG encoding.

use image::codecs::jpeg::JpegEncoder;
use image::{GrayImage, Luma};

use crate::pipeline::postprocess::{colorize, overlay};
use crate::sink::ProcessedFrame;

/// JPEG quality of the stream: sharp enough for labels, small on the wire.
const QUALITY: u8 = 80;

/// What the stream shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum View {
    /// Concept colours blended over the input.
    Overlay,
    /// The input frame.
    Input,
    /// Concept colours.
    Mask,
    /// Concept ids as grey levels, spread over 0..255 so they are visible.
    Labels,
}

impl View {
    fn parse(text: &str) -> Result<View, String> {
        Ok(match text {
            "overlay" => View::Overlay,
            "input" => View::Input,
            "mask" => View::Mask,
            "labels" => View::Labels,
            _ => return Err(format!("unknown view '{text}': expected overlay, input, mask or labels")),
        })
    }
}

/// A view and the overlay's mask opacity in percent (0 for other views, so
/// that all their clients share one encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Rendering {
    pub(super) view: View,
    pub(super) alpha: u8,
}

impl Rendering {
    /// From the stream's `view` and `alpha` query parameters (defaults:
    /// overlay, `default_alpha`).
    pub(super) fn parse(view: Option<&str>, alpha: Option<&str>, default_alpha: f32) -> Result<Rendering, String> {
        let view = view.map_or(Ok(View::Overlay), View::parse)?;
        let alpha = match alpha {
            None => default_alpha,
            Some(text) => match text.parse::<f32>() {
                Ok(a) if (0.0..=1.0).contains(&a) => a,
                _ => return Err(format!("alpha '{text}' is not an opacity between 0 and 1")),
            },
        };
        let alpha = if view == View::Overlay { (alpha * 100.0).round() as u8 } else { 0 };
        Ok(Rendering { view, alpha })
    }
}

/// Renders `rendering` of a frame with the concept `colors` and encodes it
/// as JPEG.
pub(super) fn encode(processed: &ProcessedFrame, rendering: Rendering, colors: &[[u8; 3]]) -> Vec<u8> {
    let mut jpeg = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut jpeg, QUALITY);
    let (image, labels) = (&processed.frame.data.image, &processed.labels);
    let encoded = match rendering.view {
        View::Input => encoder.encode_image(image),
        View::Mask => encoder.encode_image(&colorize(labels, colors)),
        View::Overlay => encoder.encode_image(&overlay(image, &colorize(labels, colors), rendering.alpha as f32 / 100.0)),
        View::Labels => {
            let step = 255 / colors.len().saturating_sub(1).max(1) as u32;
            let grey = GrayImage::from_fn(labels.width(), labels.height(), |x, y| Luma([(labels.get_pixel(x, y)[0] as u32 * step).min(255) as u8]));
            encoder.encode_image(&grey)
        }
    };
    encoded.expect("JPEG encoding of an 8-bit image (frames are under 65536 pixels a side) into memory");
    jpeg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Frame, SourceFrame};
    use image::{Rgb, RgbImage};
    use std::time::Instant;

    #[test]
    fn query_parameters() {
        assert_eq!(Rendering::parse(None, None, 0.5), Ok(Rendering { view: View::Overlay, alpha: 50 }));
        assert_eq!(Rendering::parse(Some("mask"), Some("0.3"), 0.5), Ok(Rendering { view: View::Mask, alpha: 0 }));
        assert_eq!(Rendering::parse(Some("overlay"), Some("1"), 0.5), Ok(Rendering { view: View::Overlay, alpha: 100 }));
        assert_eq!(Rendering::parse(Some("depth"), None, 0.5).unwrap_err(), "unknown view 'depth': expected overlay, input, mask or labels");
        assert_eq!(Rendering::parse(None, Some("2"), 0.5).unwrap_err(), "alpha '2' is not an opacity between 0 and 1");
        assert!(Rendering::parse(None, Some("NaN"), 0.5).is_err());
    }

    #[test]
    fn views_encode_what_they_show() {
        let data = SourceFrame::now(RgbImage::from_pixel(16, 16, Rgb([0, 0, 255])), None, 0.0);
        let labels = GrayImage::from_fn(16, 16, |x, _| Luma([(x >= 8) as u8]));
        let frame = ProcessedFrame { frame: Frame { index: 0, captured: Instant::now(), data }, labels, times: Default::default(), queue_ms: 0.0 };
        let colors = [[255, 0, 0], [0, 255, 0]];
        let decode = |view, alpha| image::load_from_memory(&encode(&frame, Rendering { view, alpha }, &colors)).unwrap().into_rgb8();
        let near = |p: &Rgb<u8>, want: [u8; 3]| p.0.iter().zip(want).all(|(a, b)| a.abs_diff(b) < 40);
        let mask = decode(View::Mask, 0);
        assert!(near(mask.get_pixel(2, 8), [255, 0, 0]) && near(mask.get_pixel(13, 8), [0, 255, 0]));
        assert!(near(decode(View::Input, 0).get_pixel(2, 8), [0, 0, 255]));
        assert!(near(decode(View::Overlay, 50).get_pixel(2, 8), [128, 0, 128]));
        let labels = decode(View::Labels, 0);
        assert!(near(labels.get_pixel(2, 8), [0, 0, 0]) && near(labels.get_pixel(13, 8), [255, 255, 255]));
    }
}
