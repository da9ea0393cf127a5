//! Inference engines: run one ONNX graph with a per-patch output (a
//! model's fused graph, or a bare backbone for training) on a preprocessed
//! image tensor and return the output as a patch grid.
//!
//! Every engine implements [`Engine`]; tract (pure Rust, any CPU) is always
//! built, ONNX Runtime (CPU/CUDA/TensorRT) with the `ort` feature, rten
//! (pure Rust, compared with tract) with the `rten` feature.
//! [`load`] picks one from an [`EngineConfig`]; `auto` takes the best
//! that loads here.

pub mod gpu;
#[cfg(feature = "ort")]
pub mod onnxruntime;
#[cfg(feature = "rten")]
pub mod rten;
pub mod tract;

use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4};

/// Errors while loading or running a graph.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The file could not be loaded or optimised.
    #[error("{path}: cannot load the ONNX graph: {reason}")]
    Load {
        /// The ONNX file.
        path: String,
        /// What the backend said.
        reason: String,
    },
    /// The graph's output is not one value vector per patch.
    #[error("{path}: output has shape {shape}, expected [1, {tokens}, {channels}] (one vector per patch; for a backbone: is it a ViT cut at its final LayerNorm?)")]
    NotPerPatch {
        /// The ONNX file.
        path: String,
        /// The shape it produced.
        shape: String,
        /// Patches of the input.
        tokens: usize,
        /// Values per patch expected.
        channels: usize,
    },
    /// Inference itself failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// The engine was left out of this build: (engine, the feature it needs).
    #[error("--engine {0} needs causeseg built with `--features {1}` (e.g. cargo build --release --features {1}), or use --engine tract")]
    NotBuilt(String, &'static str),
    /// The engine is built in but cannot run here (no library, no provider, no GPU).
    #[error("--engine {engine}: {reason}")]
    Unavailable {
        /// The engine asked for.
        engine: String,
        /// What is missing, and what to install or set.
        reason: String,
    },
}

/// What a backend is asked to build: the graph file and its fixed input.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    /// The ONNX file.
    pub path: PathBuf,
    /// The same graph in the form tract runs fastest, which tract loads
    /// instead of `path` (`model::fused::tract_graph`): LayerNorms folded
    /// into the products, and for an int8 model the integer form.
    pub tract_graph: Option<PathBuf>,
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// ViT patch size.
    pub patch_size: u32,
    /// Values per patch in the output (concepts for a fused graph, the
    /// feature size for a backbone).
    pub channels: usize,
}

impl EngineSpec {
    /// Patch grid (rows, columns) of the input.
    pub fn grid(&self) -> (usize, usize) {
        ((self.height / self.patch_size) as usize, (self.width / self.patch_size) as usize)
    }

    /// Checks a backend's output shape and reshapes it into the
    /// `[rows, cols, channels]` patch grid.
    pub fn to_grid(&self, shape: &[usize], data: Vec<f32>) -> Result<Array3<f32>, EngineError> {
        let (rows, cols) = self.grid();
        if shape != [1, rows * cols, self.channels] {
            return Err(EngineError::NotPerPatch {
                path: self.path.display().to_string(),
                shape: format!("{shape:?}"),
                tokens: rows * cols,
                channels: self.channels,
            });
        }
        Ok(Array3::from_shape_vec((rows, cols, self.channels), data).expect("shape checked above"))
    }
}

/// A loaded graph that turns `[1, 3, H, W]` normalised images into a
/// `[H/p, W/p, C]` patch grid.
pub trait Engine: Send {
    /// Backend name for logs and reports (e.g. "tract", "onnxruntime-cpu").
    fn backend(&self) -> String;
    /// Runs the graph on one image tensor.
    fn run(&mut self, input: Array4<f32>) -> Result<Array3<f32>, EngineError>;
}

/// The engines a user can pick (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum EngineChoice {
    /// The best one that loads: TensorRT, then CUDA, then tract; each
    /// fallback is logged with its reason.
    #[default]
    Auto,
    /// ONNX Runtime with the TensorRT execution provider (feature `ort`).
    Tensorrt,
    /// ONNX Runtime with the CUDA execution provider (feature `ort`).
    Cuda,
    /// ONNX Runtime on the CPU (feature `ort`).
    #[cfg_attr(feature = "cli", value(alias = "ort"))]
    OrtCpu,
    /// tract: pure Rust, any CPU, no system libraries.
    Tract,
    /// rten: pure Rust, any CPU (feature `rten`).
    Rten,
}

impl EngineChoice {
    /// The name as written on the command line (e.g. "ort-cpu").
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Tensorrt => "tensorrt",
            EngineChoice::Cuda => "cuda",
            EngineChoice::OrtCpu => "ort-cpu",
            EngineChoice::Tract => "tract",
            EngineChoice::Rten => "rten",
        }
    }

    /// Whether this engine runs in ONNX Runtime.
    pub fn is_onnxruntime(self) -> bool {
        matches!(self, EngineChoice::Tensorrt | EngineChoice::Cuda | EngineChoice::OrtCpu)
    }
}

/// Numeric precision TensorRT builds its engine in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Precision {
    /// 32-bit floats throughout.
    Fp32,
    /// Half precision where TensorRT finds it faster (LayerNorm kept in fp32).
    #[default]
    Fp16,
    /// An int8 model's QDQ graph: int8 where its Q/DQ nodes say (explicit
    /// quantization), fp16 elsewhere. Chosen for int8 models, not by a flag.
    #[cfg_attr(feature = "cli", value(skip))]
    Int8,
}

impl Precision {
    /// The name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

/// TensorRT's build settings and where its engines are cached.
#[derive(Debug, Clone)]
pub struct TensorrtOptions {
    /// Engine precision.
    pub precision: Precision,
    /// Engine and timing caches, one subdirectory per graph, GPU, TensorRT
    /// version and precision (`<cache>/trt` by default).
    pub cache_dir: PathBuf,
    /// Builder workspace limit in MiB (TensorRT's default: the GPU's memory).
    pub workspace_mib: Option<usize>,
    /// Run on this DLA core (Jetson Orin/Xavier), GPU fallback for layers it lacks.
    pub dla_core: Option<u32>,
}

/// Which engine to load and how: the `--engine` choice, where ONNX Runtime
/// is, and TensorRT's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The engine, or `auto`.
    pub choice: EngineChoice,
    /// libonnxruntime to load (`--ort-lib`); else `ORT_DYLIB_PATH`, else a
    /// pip-installed `onnxruntime-gpu`/`onnxruntime` of `python3`.
    pub ort_library: Option<PathBuf>,
    /// TensorRT settings.
    pub tensorrt: TensorrtOptions,
}

impl EngineConfig {
    /// `choice` with default settings, TensorRT caches under `cache/trt`.
    pub fn new(choice: EngineChoice, cache: &Path) -> Self {
        EngineConfig {
            choice,
            ort_library: None,
            tensorrt: TensorrtOptions { precision: Precision::default(), cache_dir: cache.join("trt"), workspace_mib: None, dla_core: None },
        }
    }
}

/// Fails, before any model is loaded, when `choice` is not in this build.
pub fn check_built(choice: EngineChoice) -> Result<(), EngineError> {
    if choice.is_onnxruntime() && !cfg!(feature = "ort") {
        return Err(EngineError::NotBuilt(choice.name().into(), "ort"));
    }
    if choice == EngineChoice::Rten && !cfg!(feature = "rten") {
        return Err(EngineError::NotBuilt(choice.name().into(), "rten"));
    }
    Ok(())
}

/// The ONNX Runtime engines `auto` tries, best first, before tract.
const AUTO_ORDER: [EngineChoice; 2] = [EngineChoice::Tensorrt, EngineChoice::Cuda];

/// Loads `spec` on the engine `config` asks for. `auto` tries TensorRT,
/// then CUDA, then tract, logging each fallback and its reason on one line.
pub fn load(config: &EngineConfig, spec: &EngineSpec) -> Result<Box<dyn Engine>, EngineError> {
    check_built(config.choice)?;
    match config.choice {
        EngineChoice::Tract => Ok(Box::new(tract::TractEngine::load(spec)?)),
        EngineChoice::Rten => load_rten(spec),
        EngineChoice::Auto => {
            if !cfg!(feature = "ort") {
                log::info!("--engine auto: tensorrt and cuda need causeseg built with `--features ort`; using tract");
            }
            for candidate in AUTO_ORDER.into_iter().filter(|_| cfg!(feature = "ort")) {
                match load_onnxruntime(candidate, config, spec) {
                    Ok(engine) => return Ok(engine),
                    Err(EngineError::Unavailable { reason, .. }) => log::info!("--engine auto: {} unavailable: {reason}", candidate.name()),
                    Err(e) => log::info!("--engine auto: {} unavailable: {e}", candidate.name()),
                }
            }
            log::info!("--engine auto: using tract");
            Ok(Box::new(tract::TractEngine::load(spec)?))
        }
        onnxruntime_choice => load_onnxruntime(onnxruntime_choice, config, spec),
    }
}

#[cfg(feature = "rten")]
fn load_rten(spec: &EngineSpec) -> Result<Box<dyn Engine>, EngineError> {
    Ok(Box::new(rten::RtenEngine::load(spec)?))
}

#[cfg(not(feature = "rten"))]
fn load_rten(_: &EngineSpec) -> Result<Box<dyn Engine>, EngineError> {
    Err(EngineError::NotBuilt(EngineChoice::Rten.name().into(), "rten"))
}

#[cfg(feature = "ort")]
fn load_onnxruntime(choice: EngineChoice, config: &EngineConfig, spec: &EngineSpec) -> Result<Box<dyn Engine>, EngineError> {
    Ok(Box::new(onnxruntime::OrtEngine::load(spec, choice, config)?))
}

#[cfg(not(feature = "ort"))]
fn load_onnxruntime(choice: EngineChoice, _: &EngineConfig, _: &EngineSpec) -> Result<Box<dyn Engine>, EngineError> {
    Err(EngineError::NotBuilt(choice.name().into(), "ort"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_left_out_of_the_build_is_an_error_that_leads_with_the_fix() {
        assert!(check_built(EngineChoice::Tract).is_ok());
        assert!(check_built(EngineChoice::Auto).is_ok());
        let built = cfg!(feature = "ort");
        match check_built(EngineChoice::OrtCpu) {
            Ok(()) => assert!(built),
            Err(e) => assert!(e.to_string().starts_with("--engine ort-cpu needs causeseg built with `--features ort`"), "{e}"),
        }
        let message = EngineError::NotBuilt("tensorrt".into(), "ort").to_string();
        assert!(message.starts_with("--engine tensorrt needs causeseg built with `--features ort`"), "{message}");
        let rten_built = cfg!(feature = "rten");
        match check_built(EngineChoice::Rten) {
            Ok(()) => assert!(rten_built),
            Err(e) => assert!(e.to_string().starts_with("--engine rten needs causeseg built with `--features rten`"), "{e}"),
        }
    }

    #[test]
    fn auto_tries_gpu_engines_best_first_and_every_choice_has_its_command_line_name() {
        assert_eq!(AUTO_ORDER, [EngineChoice::Tensorrt, EngineChoice::Cuda]);
        let names: Vec<_> = [EngineChoice::Auto, EngineChoice::Tensorrt, EngineChoice::Cuda, EngineChoice::OrtCpu, EngineChoice::Tract, EngineChoice::Rten].map(EngineChoice::name).into();
        assert_eq!(names, ["auto", "tensorrt", "cuda", "ort-cpu", "tract", "rten"]);
        assert!(!EngineChoice::Auto.is_onnxruntime() && !EngineChoice::Tract.is_onnxruntime());
        assert_eq!(EngineConfig::new(EngineChoice::Auto, Path::new("/c")).tensorrt.cache_dir, Path::new("/c/trt"));
    }
}
