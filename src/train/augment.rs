//! Random training views of an image: the light and framing of another
//! drive. A view is a crop of 60-100 % of each side at a random place,
//! mirrored half of the time, then jittered in brightness, contrast,
//! saturation, white balance and gamma. The randomness is seeded by the
//! view's index and the image's pixels, so view `i` of an image is always
//! the same picture and its features can be cached.

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Bumped whenever the distribution of views changes, so that feature
/// caches of older views are not mixed with new ones.
pub const AUGMENT_VERSION: u32 = 1;

/// The photometric part of a view: every factor 1 (and no gain) leaves the
/// image as it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    /// Multiplies every channel.
    pub brightness: f32,
    /// Scales the distance of every value from the image's mean grey.
    pub contrast: f32,
    /// Scales the distance of every channel from the pixel's grey.
    pub saturation: f32,
    /// Per-channel gains (the colour of the light).
    pub gains: [f32; 3],
    /// Applied last, to values in 0..1: `v^gamma`.
    pub gamma: f32,
}

impl Jitter {
    /// The identity.
    pub const NONE: Jitter = Jitter { brightness: 1.0, contrast: 1.0, saturation: 1.0, gains: [1.0; 3], gamma: 1.0 };

    /// A random jitter: brightness, contrast and saturation in 0.7..1.3,
    /// gains in 0.9..1.1, gamma in 0.7..1.4.
    pub fn sample(rng: &mut impl Rng) -> Self {
        Jitter {
            brightness: rng.random_range(0.7..1.3),
            contrast: rng.random_range(0.7..1.3),
            saturation: rng.random_range(0.7..1.3),
            gains: [rng.random_range(0.9..1.1), rng.random_range(0.9..1.1), rng.random_range(0.9..1.1)],
            gamma: rng.random_range(0.7..1.4),
        }
    }

    /// The jittered image.
    pub fn apply(&self, image: &RgbImage) -> RgbImage {
        let grey = |p: &Rgb<u8>| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
        let pixels = (image.width() as f32 * image.height() as f32).max(1.0);
        let mean_grey = image.pixels().map(grey).sum::<f32>() / pixels;
        let mut out = image.clone();
        for p in out.pixels_mut() {
            let g = grey(p);
            for c in 0..3 {
                let saturated = g + (p[c] as f32 - g) * self.saturation;
                let contrasted = mean_grey + (saturated - mean_grey) * self.contrast;
                let lit = (contrasted * self.brightness * self.gains[c] / 255.0).clamp(0.0, 1.0);
                p[c] = (255.0 * lit.powf(self.gamma)).round() as u8;
            }
        }
        out
    }
}

/// Random view `index` of `image` (see the module docs).
pub fn random_view(image: &RgbImage, index: usize) -> RgbImage {
    let mut hasher = Sha256::new();
    hasher.update(AUGMENT_VERSION.to_le_bytes());
    hasher.update((index as u64).to_le_bytes());
    hasher.update(image.width().to_le_bytes());
    hasher.update(image.as_raw());
    let mut rng = ChaCha8Rng::from_seed(hasher.finalize().into());
    let (w, h) = image.dimensions();
    let side: f32 = rng.random_range(0.6..=1.0);
    let (cw, ch) = (((w as f32 * side).round() as u32).clamp(1, w.max(1)), ((h as f32 * side).round() as u32).clamp(1, h.max(1)));
    let (x, y) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
    let mut view = image::imageops::crop_imm(image, x, y, cw, ch).to_image();
    if rng.random_bool(0.5) {
        image::imageops::flip_horizontal_in_place(&mut view);
    }
    Jitter::sample(&mut rng).apply(&view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(40, 30, |x, y| Rgb([(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8]))
    }

    #[test]
    fn no_jitter_is_the_identity() {
        let image = gradient();
        assert_eq!(Jitter::NONE.apply(&image), image);
    }

    #[test]
    fn each_factor_moves_the_values_the_right_way() {
        let image = RgbImage::from_fn(2, 1, |x, _| if x == 0 { Rgb([60, 100, 140]) } else { Rgb([180, 160, 140]) });
        let brighter = Jitter { brightness: 1.2, ..Jitter::NONE }.apply(&image);
        assert!(image.pixels().zip(brighter.pixels()).all(|(a, b)| (0..3).all(|c| b[c] >= a[c])));
        // Gamma above 1 darkens mid-tones, keeps black and white.
        let darker = Jitter { gamma: 1.4, ..Jitter::NONE }.apply(&image);
        assert!(darker.get_pixel(0, 0)[1] < 100);
        // Saturation 0 makes every pixel grey.
        let grey = Jitter { saturation: 0.0, ..Jitter::NONE }.apply(&image);
        assert!(grey.pixels().all(|p| p[0].abs_diff(p[1]) <= 1 && p[1].abs_diff(p[2]) <= 1));
        // Contrast 0 makes the image its mean grey.
        let flat = Jitter { contrast: 0.0, saturation: 0.0, ..Jitter::NONE }.apply(&image);
        assert_eq!(flat.get_pixel(0, 0), flat.get_pixel(1, 0));
    }

    #[test]
    fn views_are_seeded_by_index_and_pixels() {
        let image = gradient();
        let first = random_view(&image, 0);
        assert_eq!(random_view(&image, 0), first, "the same view twice");
        assert_ne!(random_view(&image, 1), first, "another index, another view");
        for i in 0..8 {
            let (w, h) = random_view(&image, i).dimensions();
            assert!((24..=40).contains(&w) && (18..=30).contains(&h), "view {i}: {w}x{h}");
        }
    }
}
