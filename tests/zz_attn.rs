use tract_onnx::prelude::*;

#[test]
fn zz_attn() {
    tract_linalg::multithread::set_default_executor(tract_linalg::multithread::Executor::multithread(2));
    let path = std::env::var("ZZ_GRAPH").unwrap();
    let mut onnx = tract_onnx::onnx();
    causeseg::engine::tract::register_ops(&mut onnx);
    let model = onnx.model_for_path(&path).unwrap().with_input_fact(0, f32::fact([1, 3, 336, 448]).into()).unwrap().into_optimized().unwrap();
    let node = model.nodes().iter().find(|n| n.op.name() == "MultiHeadAttentionF32").unwrap().clone();
    let input = Tensor::from(tract_ndarray::Array3::<f32>::from_shape_fn((1, 769, 1152), |(_, t, c)| ((t * 31 + c * 17) % 23) as f32 / 7.0 - 1.5));
    let mut m = TypedModel::default();
    let src = m.add_source("x", f32::fact([1, 769, 1152])).unwrap();
    let out = m.wire_node("att", node.op.clone(), &[src]).unwrap();
    m.select_output_outlets(&out).unwrap();
    let plan = m.into_runnable().unwrap();
    let mut res: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let settings: Vec<String> = std::env::var("ZZ_QBS").unwrap().split(',').map(String::from).collect();
    for _ in 0..15 {
        for qb in &settings {
            unsafe { std::env::set_var("ZZ_QB", qb) };
            let t = std::time::Instant::now();
            for _ in 0..4 {
                plan.run(tvec!(input.clone().into_tvalue())).unwrap();
            }
            res.entry(qb.clone()).or_default().push(t.elapsed().as_secs_f64() * 250.0);
        }
    }
    for (k, mut v) in res {
        v.sort_by(f64::total_cmp);
        eprintln!("QB {k}: min {:.3} median {:.3} ms", v[0], v[v.len() / 2]);
    }
}
