//! [`ModelWriter`]: the one way a model directory is written. Files go into
//! a hidden sibling directory that replaces the target only when
//! [`ModelWriter::finish`] is called, so a failed or interrupted `fit` never
//! leaves a directory that looks finished.

use std::path::{Path, PathBuf};

use ndarray::{Array, Dimension};
use ndarray_npy::WriteNpyExt;

use super::{Manifest, ModelError};
use crate::head::{Head, HeadError};

/// An open, not yet visible model directory.
#[derive(Debug)]
pub struct ModelWriter {
    out: PathBuf,
    tmp: PathBuf,
    finished: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.into(), source }
}

impl ModelWriter {
    /// Starts writing the model directory `out` (its parent is created; an
    /// existing `out` stays untouched until [`finish`](Self::finish)).
    pub fn create(out: &Path) -> Result<Self, ModelError> {
        let name = out.file_name().ok_or_else(|| ModelError::BadFile { path: out.into(), reason: "not a directory name".into() })?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let tmp = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        Ok(ModelWriter { out: out.into(), tmp, finished: false })
    }

    /// Writes a float32 `.npy` file `name` (relative to the model directory).
    pub fn npy<D: Dimension>(&self, name: &str, array: &Array<f32, D>) -> Result<(), ModelError> {
        let path = self.tmp.join(name);
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        array.write_npy(std::io::BufWriter::new(file)).map_err(|e| ModelError::BadFile { path: self.out.join(name), reason: e.to_string() })
    }

    /// Writes the head's weight files into the sub-directory `dir`.
    pub fn head(&self, dir: &str, head: &Head) -> Result<(), ModelError> {
        head.save(&self.tmp.join(dir)).map_err(|HeadError::BadFile { path, reason }| ModelError::BadFile { path, reason })
    }

    /// Writes a text file `name` (e.g. a training report).
    pub fn text(&self, name: &str, text: &str) -> Result<(), ModelError> {
        self.bytes(name, text.as_bytes())
    }

    /// Writes a file `name` with `bytes`.
    pub fn bytes(&self, name: &str, bytes: &[u8]) -> Result<(), ModelError> {
        let path = self.tmp.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))
    }

    /// Creates the sub-directory `name`.
    pub fn make_dir(&self, name: &str) -> Result<(), ModelError> {
        let path = self.tmp.join(name);
        std::fs::create_dir_all(&path).map_err(io(&path))
    }

    /// Writes `model.toml`, then moves the directory into place (replacing
    /// an existing one). A clusterbook-only run finishes without a manifest.
    pub fn finish(mut self, manifest: Option<&Manifest>) -> Result<(), ModelError> {
        if let Some(manifest) = manifest {
            self.text("model.toml", &manifest.to_toml())?;
        }
        let old = self.tmp.with_file_name(format!(".{}.old-{}", self.out.file_name().expect("checked").to_string_lossy(), std::process::id()));
        let had_old = self.out.exists();
        if had_old {
            std::fs::rename(&self.out, &old).map_err(io(&self.out))?;
        }
        std::fs::rename(&self.tmp, &self.out).map_err(io(&self.out))?;
        self.finished = true;
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

impl Drop for ModelWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_visible_until_finished() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("model");
        let writer = ModelWriter::create(&out).unwrap();
        writer.npy("half.npy", &ndarray::array![1.0f32]).unwrap();
        drop(writer); // e.g. the loss became NaN
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "no partial directory left");

        let writer = ModelWriter::create(&out).unwrap();
        writer.text("a.txt", "1").unwrap();
        writer.finish(None).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "1");
        // Replacing an existing model keeps only the new files.
        let writer = ModelWriter::create(&out).unwrap();
        writer.text("b.txt", "2").unwrap();
        writer.finish(None).unwrap();
        assert!(!out.join("a.txt").exists() && out.join("b.txt").exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
