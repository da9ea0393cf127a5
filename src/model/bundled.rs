//! The default model, `models/camvid-cause`, embedded in the binary so that
//! an installed or copied `causeseg` runs without the repository: its small
//! files (manifest, head, concepts; about 1.5 MB) are written once into the
//! cache, under a name that carries their hash, and loaded from there.

use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir, DirEntry};
use sha2::{Digest, Sha256};

use super::ModelError;

/// The name of the default model.
pub const DEFAULT_MODEL: &str = "camvid-cause";

static DEFAULT_MODEL_FILES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/models/camvid-cause");

/// The embedded files of the default model, with paths relative to its directory.
fn files() -> Vec<(&'static Path, &'static [u8])> {
    fn walk(dir: &'static Dir<'static>, out: &mut Vec<(&'static Path, &'static [u8])>) {
        for entry in dir.entries() {
            match entry {
                // A local feature or graph cache is not part of the model.
                DirEntry::Dir(d) if d.path().file_name().is_some_and(|n| n == "cache") => {}
                DirEntry::Dir(d) => walk(d, out),
                DirEntry::File(f) => out.push((f.path(), f.contents())),
            }
        }
    }
    let mut out = Vec::new();
    walk(&DEFAULT_MODEL_FILES, &mut out);
    out.sort();
    out
}

/// The directory of the default model in `cache`, written there from the
/// binary the first time (atomically: a complete directory or none).
pub fn default_model_dir(cache: &Path) -> Result<PathBuf, ModelError> {
    let files = files();
    let mut hasher = Sha256::new();
    for (path, bytes) in &files {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let dir = cache.join("models").join(format!("{DEFAULT_MODEL}-{}", &format!("{:x}", hasher.finalize())[..16]));
    if dir.join("model.toml").is_file() {
        return Ok(dir);
    }
    let writer = super::ModelWriter::create(&dir)?;
    for (path, bytes) in &files {
        let name = path.to_string_lossy();
        if let Some(parent) = Path::new(name.as_ref()).parent().filter(|p| !p.as_os_str().is_empty()) {
            writer.make_dir(&parent.to_string_lossy())?;
        }
        writer.bytes(&name, bytes)?;
    }
    writer.finish(None)?;
    log::info!("default model {DEFAULT_MODEL} unpacked into {}", dir.display());
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_unpacks_and_loads() {
        let cache = tempfile::tempdir().unwrap();
        let dir = default_model_dir(cache.path()).unwrap();
        let model = super::super::Model::load(&dir).unwrap();
        assert_eq!(model.manifest.name, DEFAULT_MODEL);
        assert!(model.head.is_some());
        // A second call reuses the directory.
        assert_eq!(default_model_dir(cache.path()).unwrap(), dir);
    }
}
