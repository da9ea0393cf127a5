//! The rten backend (feature `rten`): pure Rust like tract, with its own
//! matrix-product kernels. It runs the same fused graph, read by the
//! project's ONNX code, its input size pinned (rten folds the graph's shape
//! arithmetic only when the input dims are concrete) and written in the
//! unpacked form rten's reader takes. rten 0.27 runs a cubic Resize as a
//! linear one; the backbone's only one (the positional embedding resized to
//! the patch grid) depends on the input size alone, so tract computes it
//! once and it goes in as a constant.

use ndarray::{Array3, Array4};
use rten::{Model, RunOptions};
use tract_onnx::prelude::{Datum, Framework, InferenceFact, InferenceModelExt, OutletId, TractResult};
use tract_onnx::tract_hir::infer::Factoid;
use rten_tensor::prelude::*;
use rten_tensor::{NdTensor, Tensor};

use super::{Engine, EngineError, EngineSpec};
use crate::onnx::unpacked::encode_unpacked;
use crate::onnx::{float_value_info, pb, read_model, Dim};

/// The graph loaded and optimised by rten for one input size.
pub struct RtenEngine {
    spec: EngineSpec,
    model: Model,
}

impl RtenEngine {
    /// Reads the graph, pins its input to `spec`'s size and loads it.
    pub fn load(spec: &EngineSpec) -> Result<Self, EngineError> {
        let path = spec.path.display().to_string();
        let load_err = |reason: String| EngineError::Load { path: path.clone(), reason };
        let mut graph = read_model(&spec.path).map_err(|e| load_err(e.to_string()))?;
        let input = graph.graph.as_mut().and_then(|g| g.input.first_mut()).ok_or_else(|| load_err("the graph has no input".into()))?;
        let dims = [1, 3, i64::from(spec.height), i64::from(spec.width)].map(Dim::Value);
        *input = float_value_info(&input.name, &dims);
        fold_cubic_resizes(&mut graph, spec).map_err(|e| load_err(format!("cannot fold its cubic Resize for rten: {e:#}")))?;
        let model = Model::load(encode_unpacked(&graph)).map_err(|e| load_err(e.to_string()))?;
        Ok(RtenEngine { spec: spec.clone(), model })
    }

    /// Runs the graph once with rten's own timing on: rten prints its
    /// per-operation table (its format, to stdout) when the run ends.
    /// `bench --profile` uses it to show where rten's time goes.
    pub fn print_profile(&mut self, input: Array4<f32>) -> Result<(), EngineError> {
        self.run_with(input, Some(RunOptions::default().with_timing(true))).map(drop)
    }

    fn run_with(&mut self, input: Array4<f32>, options: Option<RunOptions>) -> Result<Array3<f32>, EngineError> {
        let shape: [usize; 4] = input.dim().into();
        let data = input.as_standard_layout().iter().copied().collect::<Vec<f32>>();
        let tensor = NdTensor::from_data(shape, data);
        let output = self.model.run_one(tensor.view().into(), options).map_err(|e| EngineError::Run(e.to_string()))?;
        let output: Tensor<f32> = output.try_into().map_err(|e: rten::TryFromValueError| EngineError::Run(e.to_string()))?;
        self.spec.to_grid(output.shape(), output.to_vec())
    }
}

/// Replaces every cubic Resize of `graph` (input already pinned to
/// `spec`'s size) by its value, computed by tract; an error if one depends
/// on the image.
fn fold_cubic_resizes(graph: &mut pb::ModelProto, spec: &EngineSpec) -> TractResult<()> {
    let is_cubic = |node: &pb::NodeProto| node.op_type == "Resize" && node.attribute.iter().any(|a| a.name == "mode" && a.s == b"cubic");
    let body = graph.graph.as_ref().expect("checked by the caller");
    if !body.node.iter().any(is_cubic) {
        return Ok(());
    }
    let fact = InferenceFact::dt_shape(f32::datum_type(), [1, 3, spec.height as usize, spec.width as usize]);
    let mut model = tract_onnx::onnx().model_for_proto_model(graph)?.with_input_fact(0, fact)?;
    model.analyse(false)?;
    let mut values = Vec::new();
    for node in body.node.iter().filter(|n| is_cubic(n)) {
        let id = model.node_by_name(&node.name)?.id;
        let value = model.outlet_fact(OutletId::new(id, 0))?.value.concretize();
        let value = value.ok_or_else(|| anyhow::anyhow!("Resize {} depends on the image", node.name))?;
        let shape = value.shape().iter().map(|&d| d as i64).collect();
        let data = value.to_plain_array_view::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
        values.push(pb::TensorProto { name: node.output[0].clone(), dims: shape, data_type: pb::tensor_proto::DataType::Float as i32, raw_data: data, ..Default::default() });
    }
    let body = graph.graph.as_mut().expect("checked by the caller");
    body.node.retain(|n| !is_cubic(n));
    body.initializer.extend(values);
    Ok(())
}

impl Engine for RtenEngine {
    fn backend(&self) -> String {
        "rten".into()
    }

    fn run(&mut self, input: Array4<f32>) -> Result<Array3<f32>, EngineError> {
        self.run_with(input, None)
    }
}
