//! Finding the libraries ONNX Runtime needs: `libonnxruntime` itself
//! (`--ort-lib`, `ORT_DYLIB_PATH`, or the `onnxruntime-gpu`/`onnxruntime`
//! wheel of `python3`), and for CUDA and TensorRT NVIDIA's libraries from
//! their pip wheels (`nvidia-*-cu12`, `tensorrt-cu12-libs`), loaded up front
//! so the execution providers find them without `LD_LIBRARY_PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// A libonnxruntime file and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The shared library.
    pub path: PathBuf,
    /// Where the path came from: "--ort-lib", "ORT_DYLIB_PATH" or "python3".
    pub how: &'static str,
}

/// The libonnxruntime to load: `explicit` (`--ort-lib`), else
/// `$ORT_DYLIB_PATH`, else the one in a pip wheel on `python3`'s path.
pub fn locate(explicit: Option<&Path>) -> Result<Located, String> {
    if let Some(path) = explicit {
        return Ok(Located { path: path.to_path_buf(), how: "--ort-lib" });
    }
    if let Some(path) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        return Ok(Located { path: PathBuf::from(path), how: DYLIB_ENV });
    }
    python_paths()
        .iter()
        .find_map(|dir| onnxruntime_in(dir))
        .map(|path| Located { path, how: "python3" })
        .ok_or_else(|| {
            format!(
                "no ONNX Runtime library found: pass --ort-lib PATH or set {DYLIB_ENV} to libonnxruntime.so, \
                 or install it for python3 (`pip install onnxruntime-gpu` for CUDA/TensorRT, `pip install onnxruntime` for the CPU)"
            )
        })
}

/// `python3`'s module search path (empty without a `python3`), asked once.
pub fn python_paths() -> &'static [PathBuf] {
    static PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let output = Command::new("python3").args(["-c", "import sys; print('\\n'.join(p for p in sys.path if p))"]).output();
        match output {
            Ok(output) if output.status.success() => {
                String::from_utf8_lossy(&output.stdout).lines().map(PathBuf::from).filter(|p| p.is_dir()).collect()
            }
            _ => Vec::new(),
        }
    })
}

/// The libonnxruntime of an `onnxruntime`/`onnxruntime-gpu` wheel installed in `site_packages`.
pub fn onnxruntime_in(site_packages: &Path) -> Option<PathBuf> {
    let capi = site_packages.join("onnxruntime").join("capi");
    let mut found: Vec<PathBuf> = std::fs::read_dir(capi)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    // `libonnxruntime.so.1.32.0` sorts after a plain `libonnxruntime.so`.
    found.sort();
    found.pop()
}

/// NVIDIA's library directories in the pip wheels under `site_packages`:
/// `tensorrt_libs/` and every `nvidia/*/lib/`.
pub fn nvidia_lib_dirs(site_packages: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in site_packages {
        let tensorrt = root.join("tensorrt_libs");
        if tensorrt.is_dir() {
            dirs.push(tensorrt);
        }
        if let Ok(entries) = std::fs::read_dir(root.join("nvidia")) {
            let mut libs: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("lib")).filter(|p| p.is_dir()).collect();
            libs.sort();
            dirs.extend(libs);
        }
    }
    dirs
}

/// The libraries the CUDA and TensorRT providers open, by file-name prefix,
/// roughly in dependency order (what is left is retried until nothing loads).
const PROVIDER_LIBRARIES: &[&str] = &[
    "libcudart.so",
    "libnvJitLink.so",
    "libnvrtc.so",
    "libcublasLt.so",
    "libcublas.so",
    "libcufft.so",
    "libcurand.so",
    "libcudnn",
    "libnvinfer.so",
    "libnvinfer_plugin.so",
    "libnvonnxparser.so",
];

/// The provider libraries in `dirs`, in `PROVIDER_LIBRARIES` order.
pub fn provider_libraries(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|path| rank(path).is_some())
        .collect();
    files.sort_by_key(|path| (rank(path), path.clone()));
    files
}

fn rank(path: &Path) -> Option<usize> {
    let name = path.file_name()?.to_str()?;
    name.contains(".so.").then_some(())?;
    PROVIDER_LIBRARIES.iter().position(|prefix| name.starts_with(prefix))
}

/// Loads NVIDIA's pip libraries (once per process) so that the CUDA and
/// TensorRT providers find them by name; returns the files loaded.
pub fn preload_nvidia_libraries() -> &'static [PathBuf] {
    static LOADED: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let mut pending = provider_libraries(&nvidia_lib_dirs(python_paths()));
        let mut loaded = Vec::new();
        // A library whose dependency is not loaded yet fails; retry the rest
        // until a pass loads nothing.
        loop {
            let before = pending.len();
            pending.retain(|path| match ort::util::preload_dylib(path.display().to_string()) {
                Ok(()) => {
                    loaded.push(path.clone());
                    false
                }
                Err(_) => true,
            });
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        for path in &pending {
            log::debug!("could not preload {}", path.display());
        }
        if !loaded.is_empty() {
            log::debug!("preloaded {} NVIDIA libraries from pip wheels", loaded.len());
        }
        loaded
    })
}

/// For a provider error naming a library the loader could not find, what
/// to install or set.
pub fn missing_library_hint(error: &str) -> Option<String> {
    const PACKAGES: &[(&str, &str)] = &[
        ("libnvinfer", "tensorrt-cu12-libs"),
        ("libnvonnxparser", "tensorrt-cu12-libs"),
        ("libcudnn", "nvidia-cudnn-cu12"),
        ("libcublas", "nvidia-cublas-cu12"),
        ("libcudart", "nvidia-cuda-runtime-cu12"),
        ("libcufft", "nvidia-cufft-cu12"),
        ("libcurand", "nvidia-curand-cu12"),
        ("libnvJitLink", "nvidia-nvjitlink-cu12"),
    ];
    let at = error.find("cannot open shared object file")?;
    let before = &error[..at];
    let start = before.rfind("lib")?;
    let library = before[start..].trim_end_matches([':', ' ']);
    let package = PACKAGES.iter().find(|(prefix, _)| library.starts_with(prefix)).map(|(_, package)| *package);
    Some(match package {
        Some(package) => format!("{library} was not found: `pip install {package}` for python3, or add the directory holding {library} to LD_LIBRARY_PATH"),
        None => format!("{library} was not found: add the directory holding it to LD_LIBRARY_PATH"),
    })
}

/// The version string ("1.32.0") of the libonnxruntime at `path`.
pub fn onnxruntime_version(path: &Path) -> Result<String, String> {
    // SAFETY: loading runs the library's initialisers, as ort's own loader does
    // for this same file; the function pointer types are ONNX Runtime's C API.
    unsafe {
        let library = libloading::Library::new(path.display().to_string()).map_err(|e| e.to_string())?;
        let get_base = library
            .get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase")
            .map_err(|_| format!("{} is not ONNX Runtime (no OrtGetApiBase)", path.display()))?;
        let base = get_base();
        if base.is_null() {
            return Err(format!("{}: OrtGetApiBase returned nothing", path.display()));
        }
        let version = std::ffi::CStr::from_ptr(((*base).GetVersionString)());
        Ok(version.to_string_lossy().into_owned())
    }
}

/// TensorRT's version ("10.9.0") from the `libnvinfer` the loader finds
/// (preloaded from pip or installed, e.g. by JetPack), if any.
pub fn tensorrt_version() -> Option<String> {
    ["libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so.8"].iter().find_map(|name| {
        // SAFETY: as above; getInferLibVersion is `int32_t getInferLibVersion()`.
        unsafe {
            let library = libloading::Library::new(*name).ok()?;
            let version = library.get::<unsafe extern "C" fn() -> i32>(b"getInferLibVersion").ok()?;
            Some(decode_tensorrt_version(version()))
        }
    })
}

/// TensorRT's packed version number: major·10000 + minor·100 + patch since
/// TensorRT 10, major·1000 + minor·100 + patch before.
pub fn decode_tensorrt_version(packed: i32) -> String {
    let (major, rest) = if packed >= 100_000 { (packed / 10_000, packed % 10_000) } else { (packed / 1000, packed % 1000) };
    format!("{major}.{}.{}", rest / 100, rest % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_library_wins_and_a_wheel_is_found_in_site_packages() {
        let explicit = locate(Some(Path::new("/opt/ort/libonnxruntime.so"))).unwrap();
        assert_eq!(explicit, Located { path: "/opt/ort/libonnxruntime.so".into(), how: "--ort-lib" });

        let site = tempfile::tempdir().unwrap();
        assert_eq!(onnxruntime_in(site.path()), None);
        let capi = site.path().join("onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        for name in ["libonnxruntime_providers_shared.so", "libonnxruntime.so.1.32.0", "onnxruntime_pybind11_state.so"] {
            std::fs::write(capi.join(name), b"").unwrap();
        }
        assert_eq!(onnxruntime_in(site.path()), Some(capi.join("libonnxruntime.so.1.32.0")));
    }

    #[test]
    fn nvidia_wheels_are_found_and_ordered_dependencies_first() {
        let site = tempfile::tempdir().unwrap();
        let files = [
            "tensorrt_libs/libnvinfer.so.10",
            "tensorrt_libs/libnvonnxparser.so.10",
            "nvidia/cudnn/lib/libcudnn.so.9",
            "nvidia/cublas/lib/libcublas.so.12",
            "nvidia/cublas/lib/libcublasLt.so.12",
            "nvidia/cuda_runtime/lib/libcudart.so.12",
            "nvidia/cuda_runtime/lib/README.txt",
        ];
        for file in files {
            let path = site.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        let dirs = nvidia_lib_dirs(&[site.path().to_path_buf()]);
        assert_eq!(dirs.len(), 4, "{dirs:?}");
        let names: Vec<String> =
            provider_libraries(&dirs).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["libcudart.so.12", "libcublasLt.so.12", "libcublas.so.12", "libcudnn.so.9", "libnvinfer.so.10", "libnvonnxparser.so.10"]);
    }

    #[test]
    fn a_missing_nvidia_library_names_the_wheel_to_install() {
        let error = "Failed to load library libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot open shared object file: No such file or directory";
        let hint = missing_library_hint(error).unwrap();
        assert!(hint.starts_with("libnvinfer.so.10 was not found: `pip install tensorrt-cu12-libs`"), "{hint}");
        let hint = missing_library_hint("libcudnn.so.9: cannot open shared object file").unwrap();
        assert!(hint.contains("nvidia-cudnn-cu12"), "{hint}");
        assert_eq!(missing_library_hint("CUDA failure 100: no CUDA-capable device is detected"), None);
    }

    #[test]
    fn tensorrt_versions_decode_in_both_packings() {
        assert_eq!(decode_tensorrt_version(100_900), "10.9.0");
        assert_eq!(decode_tensorrt_version(110_001), "11.0.1");
        assert_eq!(decode_tensorrt_version(8_601), "8.6.1");
    }
}
