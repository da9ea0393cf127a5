//! Image files as a frame source: one file, a directory (its JPEG and PNG
//! files in name order) or a glob (`*` and `?` in the file-name part), or
//! the sample images bundled in the binary.

use std::path::{Path, PathBuf};
use std::time::Instant;

use include_dir::{include_dir, Dir};

use super::decode::{decode_bytes, decode_file, list_images};
use super::uri::has_wildcard;
use super::{FrameSource, SourceError, SourceFrame};
use crate::timing::ms_since;

/// The sample images of `examples/images` (public domain, CC0,
/// Apache-2.0; see their README), embedded so that `--source auto` and `bench` work from an
/// installed binary.
static SAMPLE_IMAGES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/examples/images");

/// One image of an [`ImageFiles`] source.
#[derive(Debug, Clone)]
enum Entry {
    /// A file on disk.
    File(PathBuf),
    /// A bundled sample: its file name and encoded bytes.
    Bundled(&'static Path, &'static [u8]),
}

impl Entry {
    fn path(&self) -> &Path {
        match self {
            Entry::File(path) => path,
            Entry::Bundled(path, _) => path,
        }
    }
}

/// Image files read in order, optionally in a loop.
#[derive(Debug)]
pub struct ImageFiles {
    pattern: String,
    entries: Vec<Entry>,
    next: usize,
    looping: bool,
    decoded_this_pass: bool,
}

impl ImageFiles {
    /// Lists the images `pattern` (file, directory or glob) names.
    pub fn open(pattern: &str, looping: bool) -> Result<Self, SourceError> {
        let path = Path::new(pattern);
        let paths = if path.is_dir() {
            list_images(path).map_err(|e| SourceError::Open { device: pattern.into(), reason: e.to_string() })?
        } else if path.is_file() {
            vec![path.to_path_buf()]
        } else if has_wildcard(pattern) {
            glob(path)?
        } else {
            return Err(SourceError::NotFound(pattern.into()));
        };
        if paths.is_empty() {
            return Err(SourceError::NoImages(pattern.into()));
        }
        let entries = paths.into_iter().map(Entry::File).collect();
        Ok(ImageFiles { pattern: pattern.into(), entries, next: 0, looping, decoded_this_pass: false })
    }

    /// The sample images bundled in the binary, in name order.
    pub fn samples(looping: bool) -> Self {
        let mut entries: Vec<Entry> = SAMPLE_IMAGES
            .files()
            .filter(|f| f.path().extension().is_some_and(|e| e == "jpg" || e == "png"))
            .map(|f| Entry::Bundled(f.path(), f.contents()))
            .collect();
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        ImageFiles { pattern: "bundled sample images".into(), entries, next: 0, looping, decoded_this_pass: false }
    }
}

impl FrameSource for ImageFiles {
    fn describe(&self) -> String {
        let looping = if self.looping { ", looping" } else { "" };
        format!("{} ({} image(s){looping})", self.pattern, self.entries.len())
    }

    fn next_frame(&mut self) -> Result<Option<SourceFrame>, SourceError> {
        if self.next == self.entries.len() {
            if !self.looping {
                return Ok(None);
            }
            if !self.decoded_this_pass {
                return Err(SourceError::NoImages(format!("{} (none of them decodes)", self.pattern)));
            }
            (self.next, self.decoded_this_pass) = (0, false);
        }
        let entry = &self.entries[self.next];
        self.next += 1;
        let start = Instant::now();
        let image = match entry {
            Entry::File(path) => decode_file(path),
            Entry::Bundled(path, bytes) => decode_bytes(bytes, &path.display().to_string()),
        };
        let image = image.map_err(|e| SourceError::Corrupt(e.to_string()))?;
        self.decoded_this_pass = true;
        let name = entry.path().file_stem().map(|s| s.to_string_lossy().into_owned());
        Ok(Some(SourceFrame::now(image, name, ms_since(start))))
    }
}

/// The files matching `pattern`, sorted; wildcards only in the file name.
fn glob(pattern: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let shown = pattern.display().to_string();
    let dir = match pattern.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(SourceError::NotFound(shown)),
    };
    if has_wildcard(&dir.to_string_lossy()) {
        return Err(SourceError::Open { device: shown, reason: "wildcards are supported in the file name only".into() });
    }
    let name_pattern = pattern.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SourceError::NotFound(dir.display().to_string()),
        _ => SourceError::Open { device: dir.display().to_string(), reason: e.to_string() },
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| wildcard_match(&name_pattern, &n.to_string_lossy())))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Matches `name` against `pattern` with `*` (any run) and `?` (one character).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            (pi, ni) = (pi + 1, ni + 1);
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            (pi, ni) = (sp + 1, sn + 1);
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32) {
        image::RgbImage::new(width, 20).save(path).unwrap();
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.png", "a.png"));
        assert!(wildcard_match("f??_*.jpg", "f01_x.jpg"));
        assert!(!wildcard_match("*.png", "a.jpg"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("a*b", "ab_"));
    }

    #[test]
    fn directory_in_order_then_loop() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("b.png"), 30);
        write_png(&dir.path().join("a.png"), 20);
        let mut files = ImageFiles::open(dir.path().to_str().unwrap(), true).unwrap();
        let names: Vec<String> = (0..3).map(|_| files.next_frame().unwrap().unwrap().name.unwrap()).collect();
        assert_eq!(names, ["a", "b", "a"]);
    }

    #[test]
    fn glob_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("x1.png"), 20);
        std::fs::write(dir.path().join("x2.png"), b"not a png").unwrap();
        std::fs::write(dir.path().join("y.png"), b"not matched").unwrap();
        let pattern = dir.path().join("x*.png");
        let mut files = ImageFiles::open(pattern.to_str().unwrap(), false).unwrap();
        assert_eq!(files.next_frame().unwrap().unwrap().image.width(), 20);
        assert!(matches!(files.next_frame(), Err(SourceError::Corrupt(m)) if m.contains("x2.png")));
        assert!(files.next_frame().unwrap().is_none());
    }

    #[test]
    fn a_loop_of_only_corrupt_files_ends() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.png"), b"nope").unwrap();
        let mut files = ImageFiles::open(dir.path().to_str().unwrap(), true).unwrap();
        assert!(matches!(files.next_frame(), Err(SourceError::Corrupt(_))));
        assert!(matches!(files.next_frame(), Err(SourceError::NoImages(_))));
    }

    #[test]
    fn bundled_samples_decode() {
        let mut samples = ImageFiles::samples(false);
        let mut names = Vec::new();
        while let Some(frame) = samples.next_frame().unwrap() {
            assert!(frame.image.width() > 0);
            names.push(frame.name.unwrap());
        }
        assert_eq!(names, ["astronaut", "chelsea", "coffee", "leuvenA", "leuvenB", "rocket"]);
    }

    #[test]
    fn empty_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(ImageFiles::open(dir.path().to_str().unwrap(), false), Err(SourceError::NoImages(_))));
        let missing = dir.path().join("nope/*.png");
        assert!(matches!(ImageFiles::open(missing.to_str().unwrap(), false), Err(SourceError::NotFound(_))));
    }
}
