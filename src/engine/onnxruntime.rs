//! The ONNX Runtime backend (feature `ort`): CPU, CUDA or TensorRT execution
//! providers on the same graph file as tract.
//!
//! `libonnxruntime` is loaded at run time (`load-dynamic`): set
//! `ORT_DYLIB_PATH` to it (a pip `onnxruntime`/`onnxruntime-gpu` wheel has it
//! under `onnxruntime/capi/`; on Jetson use the JetPack-matched build).
//! Execution providers are registered with `error_on_failure`, so asking for
//! TensorRT on a machine without it is an error instead of a silent CPU run.

use std::sync::OnceLock;

use ndarray::{Array3, Array4};
use ort::environment::Environment;
use ort::ep;
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::Tensor;

use super::{Backend, Engine, EngineError, EngineSpec};

/// Environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// A graph session on ONNX Runtime.
pub struct OrtEngine {
    spec: EngineSpec,
    session: Session,
    backend: Backend,
}

/// Loads libonnxruntime and creates the ONNX Runtime environment, once per process.
fn environment() -> Result<Environment, String> {
    static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let path = std::env::var(DYLIB_ENV).map_err(|_| {
                format!("set {DYLIB_ENV} to libonnxruntime.so (e.g. from `pip install onnxruntime`: site-packages/onnxruntime/capi/libonnxruntime.so.*)")
            })?;
            let builder = ort::init_from(&path).map_err(|e| format!("{DYLIB_ENV}={path}: {e}"))?;
            builder.with_name("causeseg").build().map_err(|e| format!("{DYLIB_ENV}={path}: {e}"))
        })
        .clone()
}

impl OrtEngine {
    /// Creates a session for `spec` with the execution provider of `backend`.
    pub fn load(spec: &EngineSpec, backend: Backend) -> Result<Self, EngineError> {
        let load_err = |reason: String| EngineError::Load { path: spec.path.display().to_string(), reason };
        let environment = environment().map_err(load_err)?;
        let providers = match backend {
            Backend::Tract | Backend::Ort => vec![],
            Backend::Cuda => vec![ep::CUDA::default().build().error_on_failure()],
            Backend::Tensorrt => {
                let cache = spec.path.with_extension("trt-cache");
                vec![
                    ep::TensorRT::default()
                        .with_fp16(true)
                        .with_engine_cache(true)
                        .with_engine_cache_path(cache.display())
                        .with_timing_cache(true)
                        .with_timing_cache_path(cache.display())
                        .build()
                        .error_on_failure(),
                    ep::CUDA::default().build().error_on_failure(),
                ]
            }
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let session = Session::builder(&environment)
            .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(Into::into))
            .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
            .and_then(|b| b.with_execution_providers(providers).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(&spec.path))
            .map_err(|e| load_err(e.to_string()))?;
        Ok(OrtEngine { spec: spec.clone(), session, backend })
    }
}

impl Engine for OrtEngine {
    fn backend(&self) -> String {
        format!("onnxruntime-{}", format!("{:?}", self.backend).to_lowercase())
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
