//! [`Probe`]: a graph in tract with chosen inner tensors as its outputs,
//! to read activations (calibration statistics, per-layer error).

use ndarray::Array4;
use tract_onnx::prelude::*;

use crate::engine::EngineError;
use crate::onnx::pb;

/// An optimised tract plan whose outputs are the named tensors.
pub struct Probe {
    state: TypedSimpleState,
}

impl Probe {
    /// Loads `model` for a `[1, 3, height, width]` input with `outputs` (tensor
    /// names) as its outputs, in that order.
    pub fn load(model: &pb::ModelProto, outputs: &[String], width: u32, height: u32) -> Result<Self, EngineError> {
        crate::engine::tract::enable_multithreading();
        let load_err = |e: TractError| EngineError::Load { path: format!("graph {}", model.graph.as_ref().map_or("", |g| g.name.as_str())), reason: format!("{e:#}") };
        let bytes = prost::Message::encode_to_vec(model);
        let fact = f32::fact([1, 3, height as usize, width as usize]);
        let plan = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .and_then(|m| m.with_input_fact(0, fact.into()))
            .and_then(|m| m.with_outputs_by_name(outputs))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(load_err)?;
        Ok(Probe { state: plan.spawn().map_err(load_err)? })
    }

    /// Runs one image tensor; the outputs as flat float32 vectors.
    pub fn run(&mut self, input: Array4<f32>) -> Result<Vec<Vec<f32>>, EngineError> {
        let run_err = |e: TractError| EngineError::Run(format!("{e:#}"));
        let outputs = self.state.run(tvec!(Tensor::from(input.into_dyn()).into_tvalue())).map_err(run_err)?;
        outputs.iter().map(|o| Ok(o.to_plain_array_view::<f32>().map_err(run_err)?.iter().copied().collect())).collect()
    }
}
