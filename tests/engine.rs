//! `--engine` end to end: `auto` lands on tract here (no GPU) and says why
//! at each step; every way ONNX Runtime can be missing or unusable is one
//! error line that says what to install or set; `engine info` and
//! `engine build` on a machine without a GPU.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::assert_clean_error;

/// The bundled sample the runs segment.
fn sample() -> String {
    common::sample_images().join("chelsea.jpg").display().to_string()
}

/// `causeseg ARGS` with RUST_LOG=info, ORT_DYLIB_PATH as given (removed if
/// `None`) and, if given, PATH replaced (to hide python3).
fn run(args: &[&str], ort_dylib: Option<&str>, path: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_causeseg"));
    command.args(args).env_remove("CAUSESEG_MODEL").env("RUST_LOG", "info");
    match ort_dylib {
        Some(lib) => command.env("ORT_DYLIB_PATH", lib),
        None => command.env_remove("ORT_DYLIB_PATH"),
    };
    if let Some(path) = path {
        command.env("PATH", path);
    }
    command.output().expect("causeseg runs")
}

/// The CPU ONNX Runtime library tests/run.sh installs, when the build has `ort`.
fn cpu_library() -> Option<String> {
    if !cfg!(feature = "ort") {
        return None;
    }
    let lib = std::env::var("ORT_DYLIB_PATH").ok();
    if lib.is_none() {
        assert!(!common::strict(), "ORT_DYLIB_PATH is not set (tests/run.sh installs onnxruntime and sets it)");
        eprintln!("SKIPPED: ORT_DYLIB_PATH is not set");
    }
    lib
}

#[test]
fn auto_falls_back_to_tract_and_logs_each_reason_on_one_line() {
    if common::backbone().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let lib = cpu_library();
    let output = run(&["segment", &sample(), "--out", out.path().to_str().unwrap(), "--engine", "auto"], lib.as_deref(), None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(out.path().join("chelsea_labels.png").is_file());
    let fallbacks: Vec<&str> = stderr.lines().filter(|l| l.contains("--engine auto:")).collect();
    if cfg!(feature = "ort") && lib.is_some() {
        assert_eq!(fallbacks.len(), 3, "{stderr}");
        assert!(fallbacks[0].contains("--engine auto: tensorrt unavailable: the TensorRT execution provider is not in"), "{stderr}");
        assert!(fallbacks[0].contains("install `onnxruntime-gpu` and `tensorrt-cu12-libs`"), "{stderr}");
        assert!(fallbacks[1].contains("--engine auto: cuda unavailable: the CUDA execution provider is not in"), "{stderr}");
    } else if !cfg!(feature = "ort") {
        assert!(fallbacks[0].contains("need causeseg built with `--features ort`"), "{stderr}");
    }
    assert!(fallbacks.last().is_some_and(|l| l.ends_with("--engine auto: using tract")), "{stderr}");
}

#[test]
fn tensorrt_on_a_cpu_only_library_names_what_to_install() {
    let Some(lib) = cpu_library() else { return };
    if common::backbone().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let output = run(&["segment", &sample(), "--out", out.path().to_str().unwrap(), "--engine", "tensorrt"], Some(&lib), None);
    assert_clean_error(&output, "--engine tensorrt: the TensorRT execution provider is not in");
    assert_clean_error(&output, "install `onnxruntime-gpu` and `tensorrt-cu12-libs`");
    let output = run(&["segment", &sample(), "--out", out.path().to_str().unwrap(), "--engine", "cuda"], Some(&lib), None);
    assert_clean_error(&output, "--engine cuda: the CUDA execution provider is not in");
    assert!(!out.path().join("chelsea_labels.png").exists(), "nothing is written when the engine cannot load");
}

#[test]
fn no_library_anywhere_says_where_to_get_one() {
    if !cfg!(feature = "ort") || common::backbone().is_none() {
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // No ORT_DYLIB_PATH, no --ort-lib and no python3 on PATH.
    let output = run(&["segment", &sample(), "--out", out.path().to_str().unwrap(), "--engine", "ort-cpu"], None, Some(empty.path()));
    assert_clean_error(&output, "--engine ort-cpu: no ONNX Runtime library found: pass --ort-lib PATH or set ORT_DYLIB_PATH");
    assert_clean_error(&output, "`pip install onnxruntime-gpu` for CUDA/TensorRT");

    let missing = empty.path().join("libonnxruntime.so.1.32.0");
    let output = run(&["segment", &sample(), "--out", out.path().to_str().unwrap(), "--engine", "ort-cpu", "--ort-lib", missing.to_str().unwrap()], None, None);
    assert_clean_error(&output, &format!("--engine ort-cpu: cannot load ONNX Runtime from {} (--ort-lib)", missing.display()));
}

/// A shared library that says it is ONNX Runtime 1.10.0 (older than the
/// `ort` crate supports), compiled with the system C compiler.
fn old_onnxruntime(dir: &Path) -> Option<PathBuf> {
    let source = dir.join("old_ort.c");
    std::fs::write(
        &source,
        "#include <stddef.h>\n\
         typedef struct { const void *(*get_api)(unsigned); const char *(*get_version)(void); } ApiBase;\n\
         static const void *get_api(unsigned v) { (void)v; return NULL; }\n\
         static const char *get_version(void) { return \"1.10.0\"; }\n\
         static const ApiBase base = { get_api, get_version };\n\
         const ApiBase *OrtGetApiBase(void) { return &base; }\n",
    )
    .unwrap();
    let lib = dir.join("libonnxruntime.so.1.10.0");
    let built = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&source).status();
    match built {
        Ok(status) if status.success() => Some(lib),
        _ => {
            assert!(!common::strict(), "cc could not build the stand-in library");
            eprintln!("SKIPPED: no C compiler");
            None
        }
    }
}

#[test]
fn a_library_of_an_unsupported_version_is_named_with_the_version_needed() {
    if !cfg!(feature = "ort") || common::backbone().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(lib) = old_onnxruntime(dir.path()) else { return };
    let output = run(&["segment", &sample(), "--out", dir.path().join("out").to_str().unwrap(), "--engine", "ort-cpu"], Some(lib.to_str().unwrap()), None);
    assert_clean_error(&output, "is not compatible with the ONNX Runtime binary found at");
    assert_clean_error(&output, "but got '1.10.0' (found through ORT_DYLIB_PATH)");
}

#[test]
fn engine_info_reports_the_library_its_providers_and_no_gpu() {
    let lib = cpu_library();
    let cache = tempfile::tempdir().unwrap();
    let output = run(&["--cache-dir", cache.path().to_str().unwrap(), "engine", "info"], lib.as_deref(), None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    if let Some(lib) = &lib {
        assert!(stdout.contains(&format!(": {lib} (found through ORT_DYLIB_PATH)")), "{stdout}");
        assert!(stdout.contains("execution providers: TensorRT no, CUDA no, CPU yes"), "{stdout}");
    } else if !cfg!(feature = "ort") {
        assert!(stdout.contains("ONNX Runtime: not in this build"), "{stdout}");
    }
    if gpu_free_machine() {
        assert!(stdout.contains("GPUs: none found"), "{stdout}");
    }
    assert!(stdout.contains(&format!("TensorRT engine caches in {}: none", cache.path().join("trt").display())), "{stdout}");
}

/// No NVIDIA GPU tool on this machine (CI): GPU-specific expectations hold.
fn gpu_free_machine() -> bool {
    Command::new("nvidia-smi").output().is_err() && !Path::new("/proc/device-tree/model").exists()
}

#[test]
fn engine_build_without_tensorrt_and_into_an_unwritable_cache_are_errors() {
    let Some(lib) = cpu_library() else { return };
    if common::backbone().is_none() {
        return;
    }
    let output = run(&["engine", "build", "--size", "224x224"], Some(&lib), None);
    assert_clean_error(&output, "--engine tensorrt: the TensorRT execution provider is not in");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let cache = file.join("trt");
    let output = run(&["engine", "build", "--size", "224x224", "--trt-cache", cache.to_str().unwrap()], Some(&lib), None);
    assert_clean_error(&output, &format!("cannot write the TensorRT engine cache {}", cache.display()));
}
