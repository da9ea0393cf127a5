//! The tract backend: pure Rust, optimised for one fixed input shape,
//! matrix products spread over all cores.

use std::sync::Once;

use ndarray::{Array3, Array4};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{Cost, EvalContext, OpState};
use tract_onnx::tract_core::plan::eval;

use super::{Engine, EngineError, EngineSpec};

pub mod float_ops;
pub mod int8_ops;
mod quantize;
mod wide;

/// The graph as an optimised tract plan plus its reusable state.
pub struct TractEngine {
    spec: EngineSpec,
    state: TypedSimpleState,
}

/// Turns on tract's multithreaded matrix multiply (once per process).
pub(crate) fn enable_multithreading() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        tract_linalg::multithread::set_default_executor(tract_linalg::multithread::Executor::multithread(threads));
        log::debug!("tract: multithreaded matmul on {threads} threads");
    });
}

/// The environment variable that overrides the form tract runs int8 models
/// in: `integer` (tract's int8 kernels) or `dequantized` (the int8 weights
/// in float); unset or `auto`: integer where [`has_int8_dot_product`].
/// `integer` on a CPU without those instructions runs the same integer
/// products, slowly: for measuring the integer form's accuracy there.
pub const INT8_FORM_ENV: &str = "CAUSESEG_TRACT_INT8";

/// Whether tract runs int8 models in their integer form ([`INT8_FORM_ENV`],
/// else [`has_int8_dot_product`]); `Err` holds an unknown value of the
/// variable.
pub fn runs_int8_as_integer() -> Result<bool, String> {
    match std::env::var(INT8_FORM_ENV).as_deref() {
        Err(_) | Ok("" | "auto") => Ok(has_int8_dot_product()),
        Ok("integer") => Ok(true),
        Ok("dequantized") => Ok(false),
        Ok(other) => Err(other.to_string()),
    }
}

/// Whether this CPU has the int8 dot-product instructions tract's int8
/// matrix products run on (AVX-512 VNNI or AVX-VNNI on x86-64, dotprod on
/// ARM64). Without them its int8 products are slower than its float ones
/// (the default model's int8 calibration: 2180 ms per 448x336 frame
/// against 761 in float on a 2-core AVX2 Zen), so int8 models run
/// dequantized there (`model::fused::tract_graph`).
pub fn has_int8_dot_product() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512vnni") || std::arch::is_x86_feature_detected!("avxvnni");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("dotprod");
    #[allow(unreachable_code)]
    false
}

impl TractEngine {
    /// Loads, types and optimises the graph for `spec`'s input size (its
    /// tract form when `spec` has one; activation quantization vectorised:
    /// `quantize`).
    pub fn load(spec: &EngineSpec) -> Result<Self, EngineError> {
        enable_multithreading();
        let graph = spec.tract_graph.as_ref().unwrap_or(&spec.path);
        let path = graph.display().to_string();
        let load_err = |e: TractError| EngineError::Load { path: path.clone(), reason: format!("{e:#}") };
        let fact = f32::fact([1, 3, spec.height as usize, spec.width as usize]);
        let mut onnx = tract_onnx::onnx();
        register_ops(&mut onnx);
        let mut model = onnx
            .model_for_path(graph)
            .and_then(|m| m.with_input_fact(0, fact.into()))
            .and_then(|m| m.into_typed())
            .and_then(|m| m.into_decluttered())
            .map_err(load_err)?;
        quantize::vectorise(&mut model);
        model.optimize().map_err(load_err)?;
        let plan = model.into_runnable().map_err(load_err)?;
        let state = plan.spawn().map_err(load_err)?;
        Ok(TractEngine { spec: spec.clone(), state })
    }
}

/// Teaches `onnx` causeseg's own ops (domain `ai.causeseg`), which tract's
/// form of a graph (`model::fused::tract_graph`) holds.
pub fn register_ops(onnx: &mut tract_onnx::Onnx) {
    float_ops::register(onnx);
    int8_ops::register(onnx);
}

/// Input `ix` of a node being wired into `model`, which must be a
/// constant, as f32 (for causeseg's ops, whose weights are constants);
/// `node` names the node in the error.
pub(crate) fn constant_input(model: &TypedModel, inputs: &[OutletId], ix: usize, node: &str) -> TractResult<Arc<Tensor>> {
    let konst = model.outlet_fact(inputs[ix])?.konst.clone().ok_or_else(|| tract_onnx::tract_core::internal::format_err!("{node}: input {ix} is not a constant"))?;
    Ok(konst.cast_to::<f32>()?.into_owned().into_arc_tensor())
}

/// Time one kind of operation took in a profiled run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    /// tract's operation name (e.g. "OptMatMul", "Softmax").
    pub op: String,
    /// Nodes of that kind in the plan.
    pub nodes: usize,
    /// Milliseconds spent in them.
    pub ms: f64,
}

impl TractEngine {
    /// Floating-point operations of one run (two per multiply-add, plus
    /// divisions), from tract's cost model of the optimised graph.
    pub fn flops(&self) -> Result<u64, EngineError> {
        let model = self.state.model();
        let mut flops = 0u64;
        for node in model.nodes() {
            let facts = model.node_input_facts(node.id).map_err(|e| EngineError::Run(format!("{e:#}")))?;
            for (cost, count) in node.op.cost(&facts).map_err(|e| EngineError::Run(format!("{e:#}")))? {
                let count = count.to_i64().unwrap_or(0).max(0) as u64;
                flops += match cost {
                    Cost::FMA(_) => 2 * count,
                    Cost::Div(_) => count,
                    _ => 0,
                };
            }
        }
        Ok(flops)
    }

    /// Runs `input` once, timing every node; the time per kind of
    /// operation, longest first (where the inference time goes).
    pub fn profile(&mut self, input: Array4<f32>) -> Result<Vec<OpTime>, EngineError> {
        let mut times: std::collections::HashMap<String, (usize, f64)> = Default::default();
        let timed = |ctx: &EvalContext<'_>,
                     state: Option<&mut (dyn OpState + 'static)>,
                     node: &TypedNode,
                     inputs: TVec<TValue>| {
            let start = std::time::Instant::now();
            let outputs = eval(ctx, state, node, inputs);
            let entry = times.entry(node.op.name().to_string()).or_default();
            entry.0 += 1;
            entry.1 += start.elapsed().as_secs_f64() * 1000.0;
            outputs
        };
        self.state
            .run_plan_with_eval(tvec!(Tensor::from(input.into_dyn()).into_tvalue()), timed)
            .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        let mut profile: Vec<OpTime> = times.into_iter().map(|(op, (nodes, ms))| OpTime { op, nodes, ms }).collect();
        profile.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(profile)
    }
}

impl Engine for TractEngine {
    fn backend(&self) -> String {
        "tract".into()
    }

    fn run(&mut self, input: Array4<f32>) -> Result<Array3<f32>, EngineError> {
        let run_err = |e: TractError| EngineError::Run(format!("{e:#}"));
        let outputs = self.state.run(tvec!(Tensor::from(input.into_dyn()).into_tvalue())).map_err(run_err)?;
        let view = outputs[0].to_plain_array_view::<f32>().map_err(run_err)?;
        let shape = view.shape().to_vec();
        self.spec.to_grid(&shape, view.iter().copied().collect())
    }
}

/// The output shape of the ONNX file at `path` for a `[1, 3, height, width]`
/// input, by shape inference only (nothing runs). Used to validate imports.
pub fn output_shape(path: &std::path::Path, width: u32, height: u32) -> Result<Vec<usize>, EngineError> {
    let load_err = |e: TractError| EngineError::Load { path: path.display().to_string(), reason: format!("{e:#}") };
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, height as usize, width as usize]).into()))
        .and_then(|m| m.into_typed())
        .map_err(load_err)?;
    let fact = model.output_fact(0).map_err(load_err)?;
    let shape = fact.shape.as_concrete().ok_or_else(|| EngineError::Load {
        path: path.display().to_string(),
        reason: format!("output shape {:?} is not concrete", fact.shape),
    })?;
    Ok(shape.to_vec())
}
