//! `causeseg bench`: per-stage latency (median, p99) and peak RSS of the
//! single-frame pipeline, for one or more engines and models side by side
//! (each frame goes through every one in turn).

use std::path::{Path, PathBuf};
use std::time::Instant;

use causeseg::engine::tract::{OpTime, TractEngine};
use causeseg::engine::{EngineChoice, EngineSpec};
use causeseg::model::manifest::InputSpec;
use causeseg::model::{backbone, fused};
use causeseg::pipeline::preprocess::Preprocessor;
use causeseg::pipeline::refine::Refine;
use causeseg::source::{FrameSource, ImageFiles};
use causeseg::timing::{ms_since, peak_rss_bytes, summarize, StageTimes};
use causeseg::{Model, Segmenter};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Frames to time per engine (after warm-up).
    #[arg(long, default_value_t = 50)]
    frames: usize,
    /// Untimed warm-up frames.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Model input size WIDTHxHEIGHT [default: the model's].
    #[arg(long, value_parser = super::parse_size)]
    size: Option<(u32, u32)>,
    /// Images to cycle through [default: the bundled samples].
    #[arg(long)]
    images: Option<PathBuf>,
    /// Model directories to compare, comma-separated, e.g. a float model
    /// and its int8 calibration [default: the bundled camvid-cause model].
    #[arg(long, value_delimiter = ',')]
    model: Vec<PathBuf>,
    /// Engines to compare, comma-separated, e.g. tract,ort-cpu (all but
    /// tract need --features ort).
    #[arg(long, value_enum, value_delimiter = ',', alias = "backend", default_value = "auto")]
    engine: Vec<EngineChoice>,
    #[command(flatten)]
    setup: super::engine::EngineSetupArgs,
    /// Refinement timed in the postprocess stage.
    #[arg(long, value_enum, default_value_t = Refine::Guided)]
    refine: Refine,
    /// Also time every operation of the (first model's) fused graph in tract over the
    /// timed frames and print where the inference time goes, per kind of
    /// operation; with rten among the engines, also rten's own
    /// per-operation table of one frame (not in --json).
    #[arg(long)]
    profile: bool,
    /// Print exactly one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs, cache: &Path) -> anyhow::Result<()> {
    for choice in &args.engine {
        causeseg::engine::check_built(*choice)?;
    }
    let model_dirs: Vec<Option<&Path>> = if args.model.is_empty() { vec![None] } else { args.model.iter().map(|m| Some(m.as_path())).collect() };
    let mut models = Vec::new();
    for dir in model_dirs {
        let model = super::load_model(dir, args.size, cache)?;
        let spec = fused::engine_spec(&model, &backbone::resolve(&model.manifest.backbone, cache)?, cache)?;
        let gflop = TractEngine::load(&spec)?.flops()? as f64 / 1e9;
        models.push((model, spec, gflop));
    }
    let (model, spec, gflop) = &models[0];
    let input = &model.manifest.input;
    let open_images = || -> anyhow::Result<ImageFiles> {
        Ok(match &args.images {
            Some(dir) => ImageFiles::open(&dir.display().to_string(), true)?,
            None => ImageFiles::samples(true),
        })
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut report = Report {
        frames: args.frames,
        width: input.width,
        height: input.height,
        source: open_images()?.describe(),
        cores,
        gflop_per_frame: *gflop,
        engines: Vec::new(),
        profile: None,
        peak_rss_mib: None,
    };
    let mut runs = Vec::new();
    for (model, _, gflop) in &models {
        for choice in &args.engine {
            runs.push(EngineRun::load(&args, model, *gflop, *choice, cache)?);
        }
    }
    // Round-robin, frame by frame: a slower or busier stretch of the run
    // falls on every engine alike.
    let mut images = open_images()?;
    let runs_len = runs.len();
    for i in 0..args.warmup + args.frames {
        let frame = images.next_frame()?.expect("a looping source never ends");
        let what = frame.name.clone().unwrap_or_else(|| format!("frame {i}"));
        for run in &mut runs {
            if runs_len > 1 {
                std::thread::sleep(SETTLE);
            }
            let mut times = run.segmenter.segment(&frame.image, &what, None)?.times;
            times.decode_ms = frame.decode_ms;
            if i >= args.warmup {
                run.samples.push(times);
            }
        }
    }
    report.engines = runs.into_iter().map(EngineRun::report).collect();
    if args.profile {
        report.profile = Some(profile(spec, input, args.warmup, args.frames, open_images()?)?);
    }
    report.peak_rss_mib = peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
    }
    #[cfg(feature = "rten")]
    if args.profile && args.engine.contains(&EngineChoice::Rten) {
        if args.json {
            log::warn!("--profile --json: rten's own profile is a table rten prints itself, left out of the JSON");
        } else {
            print_rten_profile(spec, input, args.warmup, open_images()?)?;
        }
    }
    Ok(())
}

/// Pause before each engine's turn when several take turns: ONNX Runtime's
/// worker threads keep spinning for a while after a run, and took the
/// cores from the engine that ran next (tract's fused graph 303.5 ms after
/// ONNX Runtime's turn, 275.3 alone, same build and hour).
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// One model on one engine, loaded, and the times of its frames.
struct EngineRun {
    segmenter: Segmenter,
    label: String,
    gflop: f64,
    load_ms: f64,
    samples: Vec<StageTimes>,
}

impl EngineRun {
    /// Loads `model` (of `gflop` per frame) on the engine `choice`, timed.
    fn load(args: &BenchArgs, model: &Model, gflop: f64, choice: EngineChoice, cache: &Path) -> anyhow::Result<Self> {
        let load_start = Instant::now();
        let mut segmenter = Segmenter::new(model.clone(), &args.setup.config(choice, cache), cache)?;
        segmenter.set_refine(args.refine);
        let load_ms = ms_since(load_start);
        let precision = if model.calibration.is_some() { "int8" } else { "float" };
        let label = format!("{} {precision}", model.manifest.name);
        Ok(EngineRun { segmenter, label, gflop, load_ms, samples: Vec::with_capacity(args.frames) })
    }

    /// Median and p99 per stage of the timed frames.
    fn report(mut self) -> EngineReport {
        let mut stages = Vec::new();
        for (index, stage) in STAGES.iter().enumerate() {
            let values: Vec<f64> = self.samples.iter().map(|t| if index < 4 { t.named()[index].1 } else { t.total_ms() }).collect();
            if let Some(s) = summarize(&values) {
                stages.push(StageReport { stage, p50_ms: s.p50, p99_ms: s.p99 });
            }
        }
        let inference_p50 = stages.iter().find(|s| s.stage == "inference").map_or(f64::NAN, |s| s.p50_ms);
        EngineReport {
            name: self.segmenter.inference_mut().backend(),
            model: self.label,
            load_ms: self.load_ms,
            gflop_per_s: self.gflop / (inference_p50 / 1000.0),
            stages,
        }
    }
}

/// The stages timed per frame, as [`StageTimes::named`] lists them, then the sum.
const STAGES: [&str; 5] = ["decode", "preprocess", "inference", "postprocess", "total"];

/// Everything one bench run measured (printed as a table, or as JSON with `--json`).
#[derive(Debug, serde::Serialize)]
struct Report {
    frames: usize,
    width: u32,
    height: u32,
    source: String,
    cores: usize,
    gflop_per_frame: f64,
    engines: Vec<EngineReport>,
    profile: Option<Vec<OpTime>>,
    peak_rss_mib: Option<f64>,
}

#[derive(Debug, serde::Serialize)]
struct EngineReport {
    name: String,
    /// The model's name and precision ("camvid-cause int8").
    model: String,
    load_ms: f64,
    /// Fused-graph FLOPs over the inference median.
    gflop_per_s: f64,
    stages: Vec<StageReport>,
}

#[derive(Debug, serde::Serialize)]
struct StageReport {
    stage: &'static str,
    p50_ms: f64,
    p99_ms: f64,
}

impl Report {
    fn print(&self) {
        println!(
            "bench: {} frames at {}x{} from {}, {} cores; fused graph {:.1} GFLOP per frame",
            self.frames, self.width, self.height, self.source, self.cores, self.gflop_per_frame
        );
        let models: std::collections::HashSet<&str> = self.engines.iter().map(|e| e.model.as_str()).collect();
        let label = |e: &EngineReport| if models.len() > 1 { format!("{} ({})", e.name, e.model) } else { e.name.clone() };
        let width = self.engines.iter().map(|e| label(e).len()).max().unwrap_or(0).max(16);
        println!("{:<width$} {:<12} {:>10} {:>10}", "engine", "stage", "p50 ms", "p99 ms");
        for engine in &self.engines {
            let name = label(engine);
            for s in &engine.stages {
                let rate = if s.stage == "inference" { format!("   {:.0} GFLOP/s at p50", engine.gflop_per_s) } else { String::new() };
                println!("{name:<width$} {:<12} {:>10.2} {:>10.2}{rate}", s.stage, s.p50_ms, s.p99_ms);
            }
            println!("{name:<width$} {:<12} {:>10.0}   (model load, once)", "load", engine.load_ms);
        }
        if let Some(profile) = &self.profile {
            let sum: f64 = profile.iter().map(|t| t.ms).sum();
            println!("tract profile of the (first model's) fused graph, mean of {} frames: {sum:.1} ms per frame", self.frames);
            println!("{:<28} {:>6} {:>12} {:>7}", "operation", "nodes", "ms/frame", "share");
            for op in profile {
                println!("{:<28} {:>6} {:>12.2} {:>6.1}%", op.op, op.nodes, op.ms, 100.0 * op.ms / sum);
            }
        }
        println!("peak RSS {}", self.peak_rss_mib.map_or("unknown".into(), |m| format!("{m:.0} MiB")));
    }
}

/// tract's time per kind of operation of the fused graph in ms per frame,
/// averaged over `frames` frames after `warmup`, longest first.
fn profile(spec: &EngineSpec, input: &InputSpec, warmup: usize, frames: usize, mut images: ImageFiles) -> anyhow::Result<Vec<OpTime>> {
    let mut engine = TractEngine::load(spec)?;
    let mut preprocessor = preprocessor(spec, input);
    let mut totals: Vec<OpTime> = Vec::new();
    for i in 0..warmup + frames {
        let profile = engine.profile(next_tensor(&mut images, &mut preprocessor)?)?;
        if i < warmup {
            continue;
        }
        for op in profile {
            match totals.iter_mut().find(|t| t.op == op.op) {
                Some(total) => total.ms += op.ms,
                None => totals.push(op),
            }
        }
    }
    for op in &mut totals {
        op.ms /= frames as f64;
    }
    totals.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(totals)
}

/// rten's own per-operation report of one frame after `warmup` frames,
/// which rten prints itself (its format, to stdout).
#[cfg(feature = "rten")]
fn print_rten_profile(spec: &EngineSpec, input: &InputSpec, warmup: usize, mut images: ImageFiles) -> anyhow::Result<()> {
    use causeseg::engine::Engine;
    let mut engine = causeseg::engine::rten::RtenEngine::load(spec)?;
    let mut preprocessor = preprocessor(spec, input);
    for _ in 0..warmup {
        engine.run(next_tensor(&mut images, &mut preprocessor)?)?;
    }
    println!("rten's own profile of the fused graph, one frame:");
    engine.print_profile(next_tensor(&mut images, &mut preprocessor)?)?;
    Ok(())
}

/// The run-time preprocessing of `spec`'s graph.
fn preprocessor(spec: &EngineSpec, input: &InputSpec) -> Preprocessor {
    Preprocessor::new(input.width, input.height, spec.patch_size, input.mean, input.std, input.resize)
}

/// The next frame of `images`, preprocessed into the engine's input.
fn next_tensor(images: &mut ImageFiles, preprocessor: &mut Preprocessor) -> anyhow::Result<ndarray::Array4<f32>> {
    let frame = images.next_frame()?.expect("a looping source never ends");
    Ok(preprocessor.run(&frame.image, "frame")?.0)
}
