//! Frame decoding and preprocessing: any bytes as an encoded frame (JPEG,
//! PNG, or anything else) through `decode_bytes`, then, when it decodes, the
//! preprocessing of every source frame (resize policy and model input size
//! chosen by the first byte) to a `[1, 3, H, W]` tensor.
//!
//! Input: 1 byte of settings, then the encoded image.
#![no_main]

use causeseg::model::manifest::{ResizePolicy, IMAGENET_MEAN, IMAGENET_STD};
use causeseg::pipeline::preprocess::Preprocessor;
use causeseg::source::decode_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&settings, encoded)) = data.split_first() else { return };
    let Ok(image) = decode_bytes(encoded, "fuzz frame") else { return };
    let (w, h) = image.dimensions();
    assert!(w > 0 && h > 0, "a decoded frame has pixels");
    let policy = [ResizePolicy::Stretch, ResizePolicy::Letterbox, ResizePolicy::CenterCrop][usize::from(settings % 3)];
    // Model inputs of 1 to 4 patches a side (kept small: the fuzzer's speed
    // comes from small inputs; the resize code is the same at any size).
    let patch = 14;
    let (tw, th) = (patch * (1 + u32::from(settings >> 2 & 3)), patch * (1 + u32::from(settings >> 4 & 3)));
    let mut preprocessor = Preprocessor::new(tw, th, patch, IMAGENET_MEAN, IMAGENET_STD, policy);
    match preprocessor.run(&image, "fuzz frame") {
        Ok((tensor, placement)) => {
            assert_eq!(tensor.dim(), (1, 3, th as usize, tw as usize));
            assert!(tensor.iter().all(|v| v.is_finite()), "normalised values are finite");
            assert_eq!(placement.image_size, (w, h));
        }
        Err(_) => assert!(w < patch || h < patch, "only frames smaller than a patch are rejected"),
    }
});
