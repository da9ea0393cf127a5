//! Preprocessing: RGB frame → model-sized, normalised `[1, 3, H, W]`
//! tensor, plus the geometry needed to map results back.
//!
//! Resize policy ([`ResizePolicy`], for images whose aspect ratio differs
//! from the model input):
//! - `stretch` (default): scale each axis independently to fill the input;
//!   every image pixel is seen, objects are distorted. CAUSE trains and
//!   evaluates this way.
//! - `letterbox`: keep the aspect ratio, fit inside, pad with the mean colour.
//! - `center-crop`: keep the aspect ratio, fill the input, cut the overflow;
//!   pixels outside the crop get the label of the nearest crop border.
//!
//! Resizing uses `fast_image_resize` (SIMD) with an antialiased bilinear
//! convolution, close to PIL's bilinear resize that the reference uses.

use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use ndarray::Array4;

pub use crate::model::manifest::ResizePolicy;

/// An image the model cannot take.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The image is smaller than one patch.
    #[error("{what}: image is {width}x{height}, smaller than one {patch}x{patch} patch")]
    TooSmall {
        /// The image, as named by the caller.
        what: String,
        /// Its width in pixels.
        width: u32,
        /// Its height in pixels.
        height: u32,
        /// The model's patch size.
        patch: u32,
    },
}

/// Where an image landed in the model input: `input = image * scale + offset`
/// per axis, in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Source image size (width, height).
    pub image_size: (u32, u32),
    /// Scale from image to input pixels (x, y).
    pub scale: (f32, f32),
    /// Offset of the scaled image inside the input, in input pixels (x, y).
    pub offset: (f32, f32),
}

/// Resizes and normalises images for one model input; reuses its buffers.
pub struct Preprocessor {
    width: u32,
    height: u32,
    patch: u32,
    mean: [f32; 3],
    std: [f32; 3],
    policy: ResizePolicy,
    resizer: Resizer,
}

impl Preprocessor {
    /// A preprocessor for a `width` x `height` input with the given normalisation.
    pub fn new(width: u32, height: u32, patch: u32, mean: [f32; 3], std: [f32; 3], policy: ResizePolicy) -> Self {
        Preprocessor { width, height, patch, mean, std, policy, resizer: Resizer::new() }
    }

    /// Where an image of `size` lands in the input under this policy.
    pub fn placement(&self, (w, h): (u32, u32)) -> Placement {
        let (tw, th) = (self.width as f32, self.height as f32);
        let (sx, sy) = (tw / w as f32, th / h as f32);
        let uniform = match self.policy {
            ResizePolicy::Stretch => return Placement { image_size: (w, h), scale: (sx, sy), offset: (0.0, 0.0) },
            ResizePolicy::Letterbox => sx.min(sy),
            ResizePolicy::CenterCrop => sx.max(sy),
        };
        let (sw, sh) = self.scaled_size((w, h), uniform);
        Placement {
            image_size: (w, h),
            scale: (sw as f32 / w as f32, sh as f32 / h as f32),
            offset: (((tw - sw as f32) / 2.0).trunc(), ((th - sh as f32) / 2.0).trunc()),
        }
    }

    fn scaled_size(&self, (w, h): (u32, u32), scale: f32) -> (u32, u32) {
        (((w as f32 * scale).round() as u32).max(1), ((h as f32 * scale).round() as u32).max(1))
    }

    /// Resizes `image` to the model input and normalises it to `[1, 3, H, W]`.
    /// `what` names the image in errors.
    pub fn run(&mut self, image: &RgbImage, what: &str) -> Result<(Array4<f32>, Placement), PreprocessError> {
        let (w, h) = image.dimensions();
        if w < self.patch || h < self.patch {
            return Err(PreprocessError::TooSmall { what: what.into(), width: w, height: h, patch: self.patch });
        }
        let placement = self.placement((w, h));
        let scaled = (
            (w as f32 * placement.scale.0).round() as u32,
            (h as f32 * placement.scale.1).round() as u32,
        );
        let src = Image::from_vec_u8(w, h, image.as_raw().clone(), PixelType::U8x3).expect("RGB buffer matches its size");
        let mut dst = Image::new(scaled.0, scaled.1, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        self.resizer.resize(&src, &mut dst, &options).expect("same pixel type on both sides");

        let (tw, th) = (self.width as usize, self.height as usize);
        let mut tensor = Array4::<f32>::zeros((1, 3, th, tw));
        let (ox, oy) = (placement.offset.0 as i64, placement.offset.1 as i64);
        let pixels = dst.buffer();
        for y in 0..th {
            let sy = y as i64 - oy;
            if sy < 0 || sy >= scaled.1 as i64 {
                continue; // letterbox padding: the mean colour, 0 after normalisation
            }
            for x in 0..tw {
                let sx = x as i64 - ox;
                if sx < 0 || sx >= scaled.0 as i64 {
                    continue;
                }
                let base = (sy as usize * scaled.0 as usize + sx as usize) * 3;
                for c in 0..3 {
                    tensor[[0, c, y, x]] = (pixels[base + c] as f32 / 255.0 - self.mean[c]) / self.std[c];
                }
            }
        }
        Ok((tensor, placement))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(policy: ResizePolicy) -> Preprocessor {
        Preprocessor::new(448, 336, 14, [0.5; 3], [0.25; 3], policy)
    }

    #[test]
    fn stretch_fills_both_axes() {
        let p = prep(ResizePolicy::Stretch).placement((480, 360));
        assert_eq!(p.offset, (0.0, 0.0));
        assert!((p.scale.0 - 448.0 / 480.0).abs() < 1e-6 && (p.scale.1 - 336.0 / 360.0).abs() < 1e-6);
    }

    #[test]
    fn letterbox_keeps_aspect_and_centres() {
        let p = prep(ResizePolicy::Letterbox).placement((200, 100));
        assert_eq!(p.scale, (2.24, 2.24));
        assert_eq!(p.offset, (0.0, 56.0));
    }

    #[test]
    fn center_crop_overflows_symmetrically() {
        let p = prep(ResizePolicy::CenterCrop).placement((200, 100));
        assert_eq!(p.scale, (3.36, 3.36));
        assert_eq!(p.offset, (-112.0, 0.0));
    }

    #[test]
    fn normalisation_and_padding() {
        let image = RgbImage::from_pixel(200, 100, image::Rgb([255, 0, 128]));
        let (t, _) = prep(ResizePolicy::Letterbox).run(&image, "x").unwrap();
        assert_eq!(t.dim(), (1, 3, 336, 448));
        assert!((t[[0, 0, 168, 224]] - 2.0).abs() < 1e-5); // (1 - 0.5) / 0.25
        assert!((t[[0, 1, 168, 224]] + 2.0).abs() < 1e-5);
        assert_eq!(t[[0, 0, 10, 224]], 0.0); // padding row
    }

    #[test]
    fn smaller_than_a_patch_is_an_error() {
        let err = prep(ResizePolicy::Stretch).run(&RgbImage::new(10, 30), "tiny.png").unwrap_err().to_string();
        assert_eq!(err, "tiny.png: image is 10x30, smaller than one 14x14 patch");
    }
}
