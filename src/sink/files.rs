//! Writes label maps and their visualisations as PNG files:
//! `<stem>_labels.png` (mono8 concept ids), `<stem>_mask.png` (colours),
//! `<stem>_overlay.png` (mask blended over the input), and once per output
//! directory `legend.png`. Each file is encoded in memory, written under a
//! temporary name (every write error reported) and renamed into place, so a
//! reader (or a full disk) never sees a truncated PNG.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{GrayImage, ImageFormat, ImageResult, RgbImage};

use crate::pipeline::postprocess::{colorize, legend, overlay};

/// One kind of output image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Visualization {
    /// Concept ids as a mono8 PNG.
    Labels,
    /// Concept colours.
    Mask,
    /// Concept colours blended over the input image.
    Overlay,
}

/// Errors while writing output images.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot write: {reason}")]
pub struct SinkError {
    /// The file that could not be written.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Writes the selected visualisations of each frame into a directory.
pub struct ImageSink {
    dir: PathBuf,
    kinds: Vec<Visualization>,
    alpha: f32,
    colors: Vec<[u8; 3]>,
}

impl ImageSink {
    /// Creates `dir` and writes the legend of the model's concepts into it.
    pub fn new(dir: &Path, kinds: &[Visualization], alpha: f32, names: &[String], colors: &[[u8; 3]]) -> Result<Self, SinkError> {
        std::fs::create_dir_all(dir).map_err(|e| SinkError { path: dir.into(), reason: e.to_string() })?;
        let sink = ImageSink { dir: dir.into(), kinds: kinds.to_vec(), alpha, colors: colors.to_vec() };
        sink.save_rgb(&legend(names, colors), "legend.png")?;
        Ok(sink)
    }

    /// Writes the visualisations of one frame named `stem`.
    pub fn write(&self, stem: &str, image: &RgbImage, labels: &GrayImage) -> Result<(), SinkError> {
        let mask = || colorize(labels, &self.colors);
        for kind in &self.kinds {
            match kind {
                Visualization::Labels => save_atomically(&self.dir.join(format!("{stem}_labels.png")), |out| labels.write_to(out, ImageFormat::Png))?,
                Visualization::Mask => self.save_rgb(&mask(), &format!("{stem}_mask.png"))?,
                Visualization::Overlay => self.save_rgb(&overlay(image, &mask(), self.alpha), &format!("{stem}_overlay.png"))?,
            }
        }
        Ok(())
    }

    fn save_rgb(&self, image: &RgbImage, name: &str) -> Result<(), SinkError> {
        save_atomically(&self.dir.join(name), |out| image.write_to(out, ImageFormat::Png))
    }
}

/// Encodes `path`'s contents in memory through `encode`, writes them into
/// `.<name>.tmp` beside it, then renames that into place; on failure the
/// temporary file is removed and `path` is left as it was.
///
/// Encoding to memory first matters: `image`'s file savers write the PNG's
/// end (the IEND chunk, the last buffered bytes) when they are dropped and
/// ignore errors there, so a disk that fills up at that moment would leave
/// a truncated PNG that looked saved. `std::fs::write` reports every error.
fn save_atomically(path: &Path, encode: impl FnOnce(&mut Cursor<Vec<u8>>) -> ImageResult<()>) -> Result<(), SinkError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut encoded = Cursor::new(Vec::new());
    encode(&mut encoded).map_err(|e| SinkError { path: path.into(), reason: e.to_string() })?;
    let written = std::fs::write(&tmp, encoded.into_inner()).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| e.to_string());
    written.map_err(|reason| {
        let _ = std::fs::remove_file(&tmp);
        SinkError { path: path.into(), reason }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_selected_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ImageSink::new(dir.path(), &[Visualization::Labels, Visualization::Overlay], 0.5, &["a".into(), "b".into()], &[[255, 0, 0], [0, 255, 0]]).unwrap();
        let labels = GrayImage::from_raw(2, 1, vec![0, 1]).unwrap();
        sink.write("f", &RgbImage::new(2, 1), &labels).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["f_labels.png", "f_overlay.png", "legend.png"]);
        let back = image::open(dir.path().join("f_labels.png")).unwrap().into_luma8();
        assert_eq!(back.as_raw(), &vec![0, 1]);
    }

    #[test]
    fn a_failed_encoding_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f_labels.png");
        let err = save_atomically(&path, |out| {
            std::io::Write::write_all(out, b"\x89PNG half")?;
            Err(std::io::Error::other("encoder failed").into())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), format!("{}: cannot write: encoder failed", path.display()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "neither the file nor its temporary copy is left");
    }

    /// Regression (issue 15's fault injection): a disk that is full when a
    /// small PNG is written. `image`'s `save_with_format` put the whole file
    /// in its write buffer, flushed it on drop, ignored the error and
    /// reported success, and the empty temporary file was renamed into place.
    /// The temporary file is pointed at /dev/full, where every write fails
    /// with "No space left on device".
    #[test]
    fn a_full_disk_at_the_last_write_is_an_error_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f_labels.png");
        std::os::unix::fs::symlink("/dev/full", dir.path().join(".f_labels.png.tmp")).unwrap();
        let labels = GrayImage::from_raw(2, 1, vec![0, 1]).unwrap();
        let err = save_atomically(&path, |out| labels.write_to(out, ImageFormat::Png)).unwrap_err();
        assert!(err.to_string().starts_with(&format!("{}: cannot write: No space left on device", path.display())), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "neither the file nor its temporary copy is left");
    }
}
