//! TensorRT through ONNX Runtime: the execution provider's settings, and its
//! engine cache. Building an engine takes minutes, so engines (and the
//! timing cache) are kept in one directory per graph, GPU, TensorRT version
//! and precision: an engine from another GPU or TensorRT version is never
//! offered to this one (it is rebuilt in its own directory), and a cache
//! that fails to load is cleared and rebuilt once, with a warning.

use std::path::{Path, PathBuf};

use ort::ep::{self, ExecutionProviderDispatch};

use crate::engine::gpu::Gpu;
use crate::engine::{Precision, TensorrtOptions};
use crate::model::backbone::sha256_file;

/// The engine cache directory for `graph` on `gpu` with TensorRT
/// `tensorrt_version` and `options`.
pub fn cache_dir(options: &TensorrtOptions, graph: &Path, gpu: Option<&Gpu>, tensorrt_version: Option<&str>) -> Result<PathBuf, String> {
    let hash = sha256_file(graph).map_err(|e| e.to_string())?;
    let stem = graph.file_stem().map_or("graph".into(), |s| s.to_string_lossy().into_owned());
    let mut key = format!(
        "{stem}-{}-{}-trt{}-{}",
        &hash[..12],
        gpu.map_or("gpu-unknown".into(), Gpu::cache_key),
        tensorrt_version.unwrap_or("-unknown"),
        options.precision.name()
    );
    if let Some(core) = options.dla_core {
        key.push_str(&format!("-dla{core}"));
    }
    Ok(options.cache_dir.join(key))
}

/// Creates `dir` and checks that files can be written in it.
pub fn prepare_cache(dir: &Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write the TensorRT engine cache {}: {e} (choose another with --trt-cache DIR)", dir.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(probe).map_err(fail)
}

/// Whether `dir` holds anything TensorRT wrote.
fn has_cached_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|entries| entries.flatten().next().is_some()).unwrap_or(false)
}

/// Runs `create` (a session with the engine cache in `dir`); when it fails
/// and the cache holds files (a corrupt or truncated engine), clears the
/// cache with a warning and tries once more.
pub fn with_cache_recovery<T>(dir: &Path, mut create: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    match create() {
        Ok(value) => Ok(value),
        Err(first) if has_cached_files(dir) => {
            log::warn!("TensorRT engine cache {} could not be used ({first}); rebuilding it", dir.display());
            std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear the TensorRT engine cache {}: {e}", dir.display()))?;
            prepare_cache(dir)?;
            create()
        }
        Err(first) => Err(first),
    }
}

/// The TensorRT execution provider for `options` with its caches in `dir`.
pub fn provider(options: &TensorrtOptions, dir: &Path) -> ExecutionProviderDispatch {
    let dir = dir.display().to_string();
    let mut tensorrt = ep::TensorRT::default()
        .with_fp16(matches!(options.precision, Precision::Fp16 | Precision::Int8))
        .with_int8(options.precision == Precision::Int8)
        .with_layer_norm_fp32_fallback(true)
        .with_engine_cache(true)
        .with_engine_cache_path(&dir)
        .with_timing_cache(true)
        .with_timing_cache_path(&dir);
    if let Some(mib) = options.workspace_mib {
        tensorrt = tensorrt.with_max_workspace_size(mib << 20);
    }
    if let Some(core) = options.dla_core {
        tensorrt = tensorrt.with_dla(true).with_dla_core(core);
    }
    tensorrt.build().error_on_failure()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(root: &Path) -> TensorrtOptions {
        TensorrtOptions { precision: Precision::Fp16, cache_dir: root.to_path_buf(), workspace_mib: None, dla_core: None }
    }

    #[test]
    fn engines_of_another_gpu_tensorrt_version_precision_or_graph_live_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let graph = tmp.path().join("model-abc.onnx");
        std::fs::write(&graph, b"graph one").unwrap();
        let h200 = Gpu { name: "NVIDIA H200".into(), memory_mib: None, compute_capability: Some("9.0".into()), driver: None };
        let orin = Gpu { name: "Orin".into(), memory_mib: None, compute_capability: Some("8.7".into()), driver: None };
        let opts = options(tmp.path());
        let base = cache_dir(&opts, &graph, Some(&h200), Some("10.9.0")).unwrap();
        assert!(base.starts_with(tmp.path()));
        assert!(base.file_name().unwrap().to_str().unwrap().starts_with("model-abc-"), "{base:?}");
        assert!(base.to_str().unwrap().ends_with("-NVIDIA-H200-sm90-trt10.9.0-fp16"), "{base:?}");
        assert_ne!(base, cache_dir(&opts, &graph, Some(&orin), Some("10.9.0")).unwrap());
        assert_ne!(base, cache_dir(&opts, &graph, Some(&h200), Some("10.3.0")).unwrap());
        let fp32 = TensorrtOptions { precision: Precision::Fp32, ..opts.clone() };
        assert_ne!(base, cache_dir(&fp32, &graph, Some(&h200), Some("10.9.0")).unwrap());
        let dla = TensorrtOptions { dla_core: Some(1), ..opts.clone() };
        assert!(cache_dir(&dla, &graph, Some(&orin), None).unwrap().to_str().unwrap().ends_with("-trt-unknown-fp16-dla1"));
        std::fs::write(&graph, b"graph two").unwrap();
        assert_ne!(base, cache_dir(&opts, &graph, Some(&h200), Some("10.9.0")).unwrap());
    }

    #[test]
    fn an_unwritable_cache_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let error = prepare_cache(&file.join("trt")).unwrap_err();
        assert!(error.starts_with(&format!("cannot write the TensorRT engine cache {}", file.join("trt").display())), "{error}");
        assert!(error.ends_with("(choose another with --trt-cache DIR)"), "{error}");
    }

    #[test]
    fn a_cache_that_fails_to_load_is_cleared_and_rebuilt_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("key");
        prepare_cache(&dir).unwrap();
        std::fs::write(dir.join("graph.engine"), b"truncated").unwrap();
        // A stand-in for session creation: fails while the corrupt engine is there.
        let mut attempts = 0;
        let engine = with_cache_recovery(&dir, || {
            attempts += 1;
            match std::fs::read(dir.join("graph.engine")) {
                Ok(bytes) if bytes == b"truncated" => Err("could not deserialize engine".to_string()),
                _ => Ok("built"),
            }
        });
        assert_eq!(engine, Ok("built"));
        assert_eq!(attempts, 2);
        assert!(dir.is_dir() && !dir.join("graph.engine").exists());

        // With nothing cached there is nothing to clear: the error stands.
        let mut attempts = 0;
        let error = with_cache_recovery(&dir, || -> Result<(), String> {
            attempts += 1;
            Err("no GPU".into())
        });
        assert_eq!((error, attempts), (Err("no GPU".to_string()), 1));
    }
}
