use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, OpState};
use tract_onnx::tract_core::plan::eval;

#[test]
fn zz_nodes() {
    let path = std::env::var("ZZ_GRAPH").unwrap();
    tract_linalg::multithread::set_default_executor(tract_linalg::multithread::Executor::multithread(2));
    let mut onnx = tract_onnx::onnx();
    causeseg::engine::tract::register_ops(&mut onnx);
    let model = onnx.model_for_path(&path).unwrap().with_input_fact(0, f32::fact([1, 3, 336, 448]).into()).unwrap().into_optimized().unwrap();
    let plan = model.into_runnable().unwrap();
    let mut state = plan.spawn().unwrap();
    let input = Tensor::from(tract_ndarray::Array4::<f32>::from_shape_fn((1, 3, 336, 448), |(_, c, y, x)| ((c * 7 + y * 3 + x) % 11) as f32 / 11.0 - 0.5));
    let mut times: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    for _ in 0..6 {
        let timed = |ctx: &EvalContext<'_>, st: Option<&mut (dyn OpState + 'static)>, node: &TypedNode, inputs: TVec<TValue>| {
            let shapes: Vec<String> = inputs.iter().map(|i| format!("{:?}", i.shape())).collect();
            let start = std::time::Instant::now();
            let outputs = eval(ctx, st, node, inputs);
            let key = format!("{} {}", node.op.name(), shapes.join("x"));
            let e = times.entry(key).or_default();
            e.0 += 1;
            e.1 += start.elapsed().as_secs_f64() * 1000.0;
            outputs
        };
        state.run_plan_with_eval(tvec!(input.clone().into_tvalue()), timed).unwrap();
    }
    let mut v: Vec<_> = times.into_iter().collect();
    v.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    for (k, (n, ms)) in v.iter().take(25) {
        eprintln!("{:9.2} ms/frame {:4} calls/frame  {k}", ms / 6.0, n / 6);
    }
}
