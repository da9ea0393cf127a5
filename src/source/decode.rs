//! Reading images: listing image files and decoding JPEG/PNG bytes to RGB,
//! for every source and offline tool.

use std::path::{Path, PathBuf};

use image::RgbImage;

/// An image that cannot be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be opened.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The bytes are not a supported image, or are corrupt or truncated.
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The file or frame, as named by the caller.
        path: String,
        /// What the decoder said.
        reason: String,
    },
}

/// Decodes an image file (format sniffed from its bytes, not its name) to RGB.
pub fn decode_file(path: &Path) -> Result<RgbImage, DecodeError> {
    let bytes = std::fs::read(path).map_err(|source| DecodeError::Io { path: path.display().to_string(), source })?;
    decode_bytes(&bytes, &path.display().to_string())
}

/// Decodes an encoded image (JPEG, PNG) held in memory; `what` names it in errors.
pub fn decode_bytes(bytes: &[u8], what: &str) -> Result<RgbImage, DecodeError> {
    let decode_err = |reason: String| DecodeError::Decode { path: what.into(), reason };
    let format = image::guess_format(bytes).map_err(|_| decode_err("not a JPEG or PNG file".into()))?;
    // The JPEG decoder fills a truncated scan with grey instead of failing;
    // a complete JPEG ends with the end-of-image marker (maybe zero-padded).
    let unpadded = bytes.iter().rposition(|&b| b != 0).map_or(&bytes[..0], |end| &bytes[..=end]);
    if format == image::ImageFormat::Jpeg && !unpadded.ends_with(&[0xFF, 0xD9]) {
        return Err(decode_err("truncated JPEG (no end-of-image marker)".into()));
    }
    let image = image::load_from_memory_with_format(bytes, format).map_err(|e| decode_err(e.to_string()))?;
    Ok(image.into_rgb8())
}

/// Image files (JPEG/PNG by extension) directly inside `dir`, sorted.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_jpeg_is_an_error() {
        let mut jpeg = Vec::new();
        RgbImage::new(32, 32).write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        assert!(decode_bytes(&jpeg, "whole.jpg").is_ok());
        let err = decode_bytes(&jpeg[..jpeg.len() - 10], "cut.jpg").unwrap_err().to_string();
        assert_eq!(err, "cut.jpg: cannot decode image: truncated JPEG (no end-of-image marker)");
    }

    #[test]
    fn text_is_not_an_image() {
        let err = decode_bytes(b"hello, I am text", "fake.jpg").unwrap_err().to_string();
        assert_eq!(err, "fake.jpg: cannot decode image: not a JPEG or PNG file");
    }

    #[test]
    fn only_images_are_listed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.PNG", "a.jpg", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let names: Vec<_> = list_images(dir.path()).unwrap().iter().map(|p| p.file_name().unwrap().to_owned()).collect();
        assert_eq!(names, ["a.jpg", "b.PNG"]);
    }
}
