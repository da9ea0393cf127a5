//! Shared helpers for integration tests: locating ../shared data and the
//! backbone cache, and skipping cleanly when they are absent.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// The backbone cache the tests use: `$CAUSESEG_CACHE` or the default.
pub fn cache_dir() -> PathBuf {
    causeseg::model::backbone::cache_dir(None)
}

/// True when missing resources must fail the test instead of skipping it
/// (`CAUSESEG_STRICT=1`, set by the README's test command).
pub fn strict() -> bool {
    std::env::var("CAUSESEG_STRICT").is_ok_and(|v| v == "1")
}

/// Returns `path` if it exists; otherwise skips (prints why) or, in strict
/// mode, fails.
pub fn require(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let message = format!("{what} not found at {}", path.display());
    assert!(!strict(), "{message} (CAUSESEG_STRICT=1)");
    eprintln!("SKIPPED: {message}");
    None
}

/// The default backbone file, if fetched (`causeseg models fetch`).
pub fn backbone() -> Option<PathBuf> {
    require(cache_dir().join(causeseg::model::backbone::DINOV2_VITS14.file), "backbone (run `causeseg models fetch`)")
}

/// Bundled sample images.
pub fn sample_images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images")
}

/// Runs the causeseg binary with `args`.
pub fn causeseg(args: &[&str]) -> Output {
    causeseg_with_env(args, &[])
}

/// Runs the causeseg binary with `args` and extra environment variables.
pub fn causeseg_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_causeseg"));
    command.args(args).env_remove("CAUSESEG_MODEL").env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("causeseg runs")
}

/// Asserts a failed run whose stderr ends in exactly one `error:` line
/// containing `needle`, and no panic.
pub fn assert_clean_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got success; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, stderr:\n{stderr}");
    assert!(errors[0].contains(needle), "error line lacks {needle:?}:\n{stderr}");
}
