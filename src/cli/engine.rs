//! Engine selection shared by every command that runs a model
//! (`--engine`, `--ort-lib`, TensorRT settings), and `causeseg engine`:
//! `build` makes the TensorRT engine ahead of time, `info` says what this
//! machine has.

use std::path::{Path, PathBuf};
use std::time::Instant;

use causeseg::engine::{gpu, EngineChoice, EngineConfig, Precision};

/// Where ONNX Runtime is and how TensorRT builds its engines.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Engine set-up")]
pub struct EngineSetupArgs {
    /// libonnxruntime.so to load [default: $ORT_DYLIB_PATH, else the
    /// onnxruntime-gpu / onnxruntime wheel of python3].
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// TensorRT engine precision for float models (an int8 model from
    /// `calibrate` is always built in INT8).
    #[arg(long, value_enum, default_value_t = Precision::Fp16)]
    precision: Precision,
    /// TensorRT engine and timing cache directory [default: CACHE_DIR/trt].
    #[arg(long)]
    trt_cache: Option<PathBuf>,
    /// TensorRT builder workspace limit in MiB [default: TensorRT's].
    #[arg(long)]
    trt_workspace_mib: Option<usize>,
    /// Run TensorRT on this DLA core (Jetson Orin/Xavier; GPU fallback for
    /// layers the DLA lacks).
    #[arg(long)]
    dla_core: Option<u32>,
}

impl EngineSetupArgs {
    /// The engine configuration for `choice`.
    pub fn config(&self, choice: EngineChoice, cache: &Path) -> EngineConfig {
        let mut config = EngineConfig::new(choice, cache);
        config.ort_library = self.ort_lib.clone();
        config.tensorrt.precision = self.precision;
        config.tensorrt.workspace_mib = self.trt_workspace_mib;
        config.tensorrt.dla_core = self.dla_core;
        if let Some(dir) = &self.trt_cache {
            config.tensorrt.cache_dir = dir.clone();
        }
        config
    }
}

/// `--engine` plus its set-up, for commands that run one engine.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Inference engine: `auto` takes TensorRT, else CUDA, else tract, and
    /// logs why it passed one over (all but tract need --features ort).
    #[arg(long, value_enum, alias = "backend", default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
    #[command(flatten)]
    setup: EngineSetupArgs,
}

impl EngineArgs {
    /// The engine configuration, after checking the engine is in this build.
    pub fn config(&self, cache: &Path) -> anyhow::Result<EngineConfig> {
        causeseg::engine::check_built(self.engine)?;
        Ok(self.setup.config(self.engine, cache))
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum EngineCommand {
    /// Build a model's TensorRT engine ahead of time (minutes), so the
    /// first frame of a run does not wait for it.
    Build(BuildArgs),
    /// What this machine has: ONNX Runtime and its execution providers,
    /// GPUs, TensorRT, and the engine caches.
    Info(InfoArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Model directory [default: the bundled camvid-cause model].
    #[arg(long, env = "CAUSESEG_MODEL")]
    model: Option<PathBuf>,
    /// Model input size WIDTHxHEIGHT [default: the model's]; an engine is
    /// built for one size.
    #[arg(long, value_parser = super::parse_size)]
    size: Option<(u32, u32)>,
    #[command(flatten)]
    setup: EngineSetupArgs,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    setup: EngineSetupArgs,
}

pub fn run(command: EngineCommand, cache: &Path) -> anyhow::Result<()> {
    match command {
        EngineCommand::Build(args) => build(args, cache),
        EngineCommand::Info(args) => info(args, cache),
    }
}

fn build(args: BuildArgs, cache: &Path) -> anyhow::Result<()> {
    causeseg::engine::check_built(EngineChoice::Tensorrt)?;
    let config = args.setup.config(EngineChoice::Tensorrt, cache);
    let model = super::load_model(args.model.as_deref(), args.size, cache)?;
    let input = model.manifest.input.clone();
    let name = model.manifest.name.clone();
    // An int8 model is built in INT8 whatever --precision says (Segmenter::new).
    let precision = if model.calibration.is_some() { Precision::Int8 } else { config.tensorrt.precision };
    let spinner = causeseg::progress::spinner(&format!("building the TensorRT engine of {name} at {}x{}, {} (minutes on first build)", input.width, input.height, precision.name()));
    let started = Instant::now();
    let segmenter = causeseg::Segmenter::new(model, &config, cache);
    spinner.finish_and_clear();
    let mut segmenter = segmenter?;
    println!(
        "TensorRT engine of {name} at {}x{}, {}: ready in {:.1} s ({}), cached under {}",
        input.width,
        input.height,
        precision.name(),
        started.elapsed().as_secs_f64(),
        segmenter.inference_mut().backend(),
        config.tensorrt.cache_dir.display()
    );
    Ok(())
}

fn info(args: InfoArgs, cache: &Path) -> anyhow::Result<()> {
    let config = args.setup.config(EngineChoice::Auto, cache);
    println!("causeseg {} (features: {})", env!("CARGO_PKG_VERSION"), built_features());
    print_onnxruntime(&config);
    let gpus = gpu::gpus();
    if gpus.is_empty() {
        println!("GPUs: none found (no nvidia-smi, not a Jetson)");
    }
    for (index, gpu) in gpus.iter().enumerate() {
        let memory = gpu.memory_mib.map_or("memory unknown".into(), |m| format!("{m} MiB"));
        let cc = gpu.compute_capability.as_deref().unwrap_or("unknown");
        let driver = gpu.driver.as_deref().unwrap_or("unknown");
        println!("GPU {index}: {}, {memory}, compute capability {cc}, driver {driver}", gpu.name);
    }
    print_engine_caches(&config.tensorrt.cache_dir);
    Ok(())
}

fn built_features() -> String {
    let features = [("ort", cfg!(feature = "ort")), ("camera", cfg!(feature = "camera")), ("gstreamer", cfg!(feature = "gstreamer")), ("train", cfg!(feature = "train")), ("ros2", cfg!(feature = "ros2"))];
    let on: Vec<&str> = features.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
    if on.is_empty() { "none".into() } else { on.join(", ") }
}

#[cfg(feature = "ort")]
fn print_onnxruntime(config: &EngineConfig) {
    use causeseg::engine::onnxruntime::{library, runtime};
    match runtime(config.ort_library.as_deref()) {
        Err(e) => println!("ONNX Runtime: {e}"),
        Ok(runtime) => {
            let yes_no = |b: bool| if b { "yes" } else { "no" };
            println!("ONNX Runtime {}: {} (found through {})", runtime.version, runtime.library.path.display(), runtime.library.how);
            println!("  execution providers: TensorRT {}, CUDA {}, CPU yes", yes_no(runtime.has_tensorrt()), yes_no(runtime.has_cuda()));
        }
    }
    let wheels = library::nvidia_lib_dirs(library::python_paths());
    if wheels.is_empty() {
        println!("NVIDIA pip wheels (CUDA, cuDNN, TensorRT libraries): none for python3");
    } else {
        println!("NVIDIA pip wheels: {}", wheels.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "));
        library::preload_nvidia_libraries();
    }
    match library::tensorrt_version() {
        Some(version) => println!("TensorRT {version}"),
        None => println!("TensorRT: libnvinfer not found (pip install tensorrt-cu12-libs, or JetPack)"),
    }
}

#[cfg(not(feature = "ort"))]
fn print_onnxruntime(_: &EngineConfig) {
    println!("ONNX Runtime: not in this build (rebuild with --features ort for CUDA, TensorRT and ONNX Runtime CPU)");
}

fn print_engine_caches(dir: &Path) {
    let mut entries: Vec<(String, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let size = std::fs::read_dir(e.path()).into_iter().flatten().flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect();
    entries.sort();
    if entries.is_empty() {
        println!("TensorRT engine caches in {}: none", dir.display());
    } else {
        println!("TensorRT engine caches in {}:", dir.display());
        for (name, size) in entries {
            println!("  {name} ({:.1} MiB)", size as f64 / (1024.0 * 1024.0));
        }
    }
}
