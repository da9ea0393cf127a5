//! The ONNX Runtime engines (feature `ort`): CPU, CUDA or TensorRT execution
//! providers on the same graph file as tract.
//!
//! `libonnxruntime` is loaded at run time (`load-dynamic`) from where
//! [`library::locate`] finds it. Execution providers are registered with
//! `error_on_failure`, so asking for TensorRT where it cannot run is an
//! error (which `--engine auto` logs before falling back), never a silent
//! CPU run.

pub mod library;
pub mod tensorrt;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use ndarray::{Array3, Array4};
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::Tensor;

use super::{gpu, EngineChoice, EngineConfig, Engine, EngineError, EngineSpec};
use library::Located;

/// The loaded ONNX Runtime: where it came from, its version, its environment.
#[derive(Clone)]
pub struct Runtime {
    /// The library and how it was found.
    pub library: Located,
    /// Its version string, e.g. "1.32.0".
    pub version: String,
    environment: Environment,
}

impl Runtime {
    /// Whether this library was built with the TensorRT provider.
    pub fn has_tensorrt(&self) -> bool {
        ep::TensorRT::is_available().unwrap_or(false)
    }

    /// Whether this library was built with the CUDA provider.
    pub fn has_cuda(&self) -> bool {
        ep::CUDA::is_available().unwrap_or(false)
    }

    fn describe(&self) -> String {
        format!("{} (ONNX Runtime {}, from {})", self.library.path.display(), self.version, self.library.how)
    }
}

/// Finds and loads ONNX Runtime, once per process (the library cannot be
/// swapped once loaded: a later different `explicit` path is an error).
pub fn runtime(explicit: Option<&std::path::Path>) -> Result<Runtime, String> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    let wanted = library::locate(explicit)?;
    let runtime = RUNTIME.get_or_init(|| {
        let path = &wanted.path;
        let version = library::onnxruntime_version(path).map_err(|e| format!("cannot load ONNX Runtime from {} ({}): {e}", path.display(), wanted.how))?;
        let builder = ort::init_from(path).map_err(|e| format!("{e} (found through {})", wanted.how))?;
        let environment = builder.with_name("causeseg").build().map_err(|e| format!("{}: {e}", path.display()))?;
        log::debug!("ONNX Runtime {version} from {} ({})", path.display(), wanted.how);
        Ok(Runtime { library: wanted.clone(), version, environment })
    });
    let runtime = runtime.clone()?;
    if runtime.library.path != wanted.path {
        return Err(format!("ONNX Runtime is already loaded from {}; cannot switch to {} in the same process", runtime.library.path.display(), wanted.path.display()));
    }
    Ok(runtime)
}

/// A graph session on ONNX Runtime.
pub struct OrtEngine {
    spec: EngineSpec,
    session: Session,
    choice: EngineChoice,
}

impl OrtEngine {
    /// Creates a session for `spec` on the execution provider of `choice`
    /// (`ort-cpu`, `cuda` or `tensorrt`), set up as `config` says.
    pub fn load(spec: &EngineSpec, choice: EngineChoice, config: &EngineConfig) -> Result<Self, EngineError> {
        let unavailable = |reason: String| EngineError::Unavailable { engine: choice.name().into(), reason };
        let runtime = runtime(config.ort_library.as_deref()).map_err(unavailable)?;
        let mut tensorrt_cache = None;
        let providers = match choice {
            EngineChoice::Tensorrt => {
                tensorrt::prepare_cache(&config.tensorrt.cache_dir).map_err(unavailable)?;
                if !runtime.has_tensorrt() {
                    return Err(unavailable(format!(
                        "the TensorRT execution provider is not in {}: it is a build without it (e.g. the CPU-only `onnxruntime` wheel); \
                         install `onnxruntime-gpu` and `tensorrt-cu12-libs` (on a Jetson: the JetPack build of onnxruntime-gpu)",
                        runtime.describe()
                    )));
                }
                library::preload_nvidia_libraries();
                let gpu = gpu::gpus().into_iter().next();
                let dir = tensorrt::cache_dir(&config.tensorrt, &spec.path, gpu.as_ref(), library::tensorrt_version().as_deref()).map_err(unavailable)?;
                tensorrt::prepare_cache(&dir).map_err(unavailable)?;
                let providers = vec![tensorrt::provider(&config.tensorrt, &dir), ep::CUDA::default().build().error_on_failure()];
                tensorrt_cache = Some(dir);
                providers
            }
            EngineChoice::Cuda => {
                if !runtime.has_cuda() {
                    return Err(unavailable(format!(
                        "the CUDA execution provider is not in {}: it is a build without it (e.g. the CPU-only `onnxruntime` wheel); install `onnxruntime-gpu`",
                        runtime.describe()
                    )));
                }
                library::preload_nvidia_libraries();
                vec![ep::CUDA::default().build().error_on_failure()]
            }
            _ => vec![],
        };
        let create = || {
            let started = Instant::now();
            let session = create_session(spec, &runtime, providers.clone()).map_err(|e| match library::missing_library_hint(&e) {
                Some(hint) => format!("{hint} ({e})"),
                None => e,
            })?;
            if let Some(dir) = &tensorrt_cache {
                log::info!("TensorRT engine ready in {:.1} s (cache {})", started.elapsed().as_secs_f64(), dir.display());
            }
            Ok(session)
        };
        let session = match &tensorrt_cache {
            Some(dir) => tensorrt::with_cache_recovery(dir, create),
            None => create(),
        }
        .map_err(|reason| EngineError::Load { path: spec.path.display().to_string(), reason })?;
        Ok(OrtEngine { spec: spec.clone(), session, choice })
    }

    /// The TensorRT engine cache directory `load` would use for `spec`.
    pub fn tensorrt_cache_dir(spec: &EngineSpec, config: &EngineConfig) -> Result<PathBuf, String> {
        let gpu = gpu::gpus().into_iter().next();
        tensorrt::cache_dir(&config.tensorrt, &spec.path, gpu.as_ref(), library::tensorrt_version().as_deref())
    }
}

/// A session for `spec`'s fixed input size: the graph's symbolic input
/// dimensions (`batch`, `height`, `width`, as `onnx` writes them) are pinned,
/// so ONNX Runtime folds what depends only on the size (DINOv2's
/// positional-embedding interpolation: 13 % of a CPU run otherwise).
fn create_session(spec: &EngineSpec, runtime: &Runtime, providers: Vec<ep::ExecutionProviderDispatch>) -> Result<Session, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fixed = [("batch", 1), ("height", i64::from(spec.height)), ("width", i64::from(spec.width))];
    Session::builder(&runtime.environment)
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(Into::into))
        .and_then(|b| fixed.iter().try_fold(b, |b, &(name, size)| b.with_dimension_override(name, size).map_err(Into::into)))
        .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
        .and_then(|b| b.with_execution_providers(providers).map_err(Into::into))
        .and_then(|mut b| b.commit_from_file(&spec.path))
        .map_err(|e| e.to_string())
}

impl Engine for OrtEngine {
    fn backend(&self) -> String {
        match self.choice {
            EngineChoice::OrtCpu => "onnxruntime-cpu".into(),
            other => format!("onnxruntime-{}", other.name()),
        }
    }

    fn run(&mut self, input: Array4<f32>) -> Result<Array3<f32>, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run(e.to_string());
        let shape: Vec<usize> = input.shape().to_vec();
        let data = input.into_raw_vec_and_offset().0;
        let tensor = Tensor::from_array((shape, data.into_boxed_slice())).map_err(run_err)?;
        let outputs = self.session.run(ort::inputs![tensor]).map_err(run_err)?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(run_err)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        self.spec.to_grid(&shape, data.to_vec())
    }
}
