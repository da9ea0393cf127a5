//! End-to-end CLI runs: segment, fit and eval as a user types them.

mod common;

use std::path::Path;

use common::causeseg;

fn ok(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "command failed:\n{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn segment_writes_labels_mask_overlay_and_legend() {
    if common::backbone().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let image = common::sample_images().join("chelsea.jpg");
    ok(&causeseg(&["segment", image.to_str().unwrap(), "--out", out.path().to_str().unwrap(), "--alpha", "0.4"]));
    let (w, h) = image::image_dimensions(&image).unwrap();
    let labels = image::open(out.path().join("chelsea_labels.png")).unwrap();
    assert_eq!(labels.color(), image::ColorType::L8, "labels are mono8");
    assert_eq!((labels.width(), labels.height()), (w, h), "labels at the image's own resolution");
    let concepts = causeseg::model::Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-cause")).unwrap().num_concepts();
    let labels = labels.into_luma8();
    assert!(labels.pixels().all(|p| (p.0[0] as usize) < concepts));
    let distinct: std::collections::HashSet<u8> = labels.pixels().map(|p| p.0[0]).collect();
    assert!(distinct.len() >= 2, "a real photo splits into several concepts");
    for name in ["chelsea_mask.png", "chelsea_overlay.png", "legend.png"] {
        assert!(image::open(out.path().join(name)).is_ok(), "{name}");
    }
}

/// `--refine guided` moves label boundaries to the image's edges: the
/// labels stay mostly those of plain upsampling, with boundary pixels changed.
#[test]
fn segment_refine_guided_moves_boundaries_only() {
    if common::backbone().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let image = common::sample_images().join("chelsea.jpg");
    let labels = |refine: &str| {
        let dir = out.path().join(refine);
        ok(&causeseg(&["segment", image.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--visualize", "labels", "--refine", refine]));
        image::open(dir.join("chelsea_labels.png")).unwrap().into_luma8()
    };
    let (plain, refined) = (labels("none"), labels("guided"));
    assert_eq!(plain.dimensions(), refined.dimensions());
    let changed = plain.pixels().zip(refined.pixels()).filter(|(a, b)| a != b).count();
    let fraction = changed as f64 / plain.len() as f64;
    assert!(changed > 0 && fraction < 0.2, "{changed} pixels ({:.1} %) changed", 100.0 * fraction);
}

#[test]
fn fit_kmeans_writes_a_model_that_segment_can_use() {
    if common::backbone().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mini");
    let images = common::sample_images();
    let fit = |seed: &str, out: &Path| {
        ok(&causeseg(&["fit", "--method", "kmeans", "--clusters", "3", "--images", images.to_str().unwrap(), "--out", out.to_str().unwrap(), "--size", "224x168", "--seed", seed]))
    };
    fit("5", &model);
    let manifest = std::fs::read_to_string(model.join("model.toml")).unwrap();
    assert!(manifest.contains("width = 224") && manifest.contains("height = 168"), "{manifest}");
    let centroids: ndarray::Array2<f32> = ndarray_npy::read_npy(model.join("centroids.npy")).unwrap();
    assert_eq!(centroids.dim(), (3, 384));

    // Same seed, same model.
    let again = dir.path().join("again");
    fit("5", &again);
    assert_eq!(std::fs::read(model.join("centroids.npy")).unwrap(), std::fs::read(again.join("centroids.npy")).unwrap());

    let out = dir.path().join("out");
    let image = images.join("coffee.jpg");
    ok(&causeseg(&["segment", image.to_str().unwrap(), "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--visualize", "labels"]));
    let labels = image::open(out.join("coffee_labels.png")).unwrap().into_luma8();
    assert!(labels.pixels().all(|p| p.0[0] < 3));
    assert!(!out.join("coffee_mask.png").exists(), "only the asked-for visualisation is written");
}

/// Links the first `n` CamVid val pairs into a temporary split.
fn camvid_subset(n: usize) -> Option<tempfile::TempDir> {
    let val = common::require(common::shared_dir().join("data/camvid/val"), "CamVid val")?;
    let dir = tempfile::tempdir().unwrap();
    for sub in ["images", "labels"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let mut images = causeseg::source::list_images(&val.join("images")).unwrap();
    images.truncate(n);
    for image in images {
        let stem = image.file_stem().unwrap().to_str().unwrap().to_string();
        std::os::unix::fs::symlink(&image, dir.path().join(format!("images/{stem}.jpg"))).unwrap();
        std::os::unix::fs::symlink(val.join(format!("labels/{stem}.png")), dir.path().join(format!("labels/{stem}.png"))).unwrap();
    }
    Some(dir)
}

#[test]
fn eval_json_reports_hungarian_metrics() {
    if common::backbone().is_none() {
        return;
    }
    let Some(split) = camvid_subset(4) else { return };
    let plot = split.path().join("confusion.png");
    let stdout = ok(&causeseg(&[
        "eval", "--images", split.path().join("images").to_str().unwrap(), "--labels", split.path().join("labels").to_str().unwrap(),
        "--classes", "11", "--ignore", "11", "--json", "--plot", plot.to_str().unwrap(),
    ]));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("exactly one JSON object on stdout");
    assert_eq!(report["images"], 4);
    let miou = report["miou"].as_f64().unwrap();
    let accuracy = report["pixel_accuracy"].as_f64().unwrap();
    assert!(miou > 5.0 && miou <= 100.0 && accuracy > 20.0 && accuracy <= 100.0, "{report}");
    assert_eq!(report["per_class_iou"].as_array().unwrap().len(), 11);
    let assignment: Vec<i64> = report["assignment"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let mut sorted = assignment.clone();
    sorted.sort();
    assert_eq!(sorted, (0..11).collect::<Vec<_>>(), "one-to-one matching");
    assert!(image::open(&plot).is_ok());
}

#[test]
fn import_a_vit_export_and_fit_on_it() {
    // The fetched backbone still contains the final LayerNorm tensor, so it
    // stands in for a user's own DINOv2 export here.
    let Some(backbone) = common::backbone() else { return };
    let cache = tempfile::tempdir().unwrap();
    let stdout = ok(&causeseg(&[
        "--cache-dir", cache.path().to_str().unwrap(), "models", "import", "--onnx", backbone.to_str().unwrap(),
        "--output", "/backbone/layernorm/Add_1_output_0", "--name", "my_vit.onnx",
    ]));
    let table: toml::Table = toml::from_str(&stdout).expect("prints a [backbone] table");
    let reference = &table["backbone"];
    assert_eq!(reference["patch_size"].as_integer(), Some(14));
    assert_eq!(reference["feature_dim"].as_integer(), Some(384));
    assert_eq!(reference["file"].as_str(), Some("my_vit.onnx"));

    let model = cache.path().join("model");
    let images = common::sample_images();
    ok(&causeseg(&[
        "--cache-dir", cache.path().to_str().unwrap(), "fit", "--clusters", "2", "--images", images.to_str().unwrap(),
        "--out", model.to_str().unwrap(), "--size", "112x112", "--backbone", "my_vit.onnx",
    ]));
    assert!(std::fs::read_to_string(model.join("model.toml")).unwrap().contains("my_vit.onnx"));
}

#[test]
fn models_rename_names_concepts_in_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir(&model).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-kmeans");
    for file in ["model.toml", "centroids.npy"] {
        std::fs::copy(source.join(file), model.join(file)).unwrap();
    }
    let stdout = ok(&causeseg(&["models", "rename", "--model", model.to_str().unwrap(), "3=road:#804080", "0=sky"]));
    assert!(stdout.contains("  3 road #804080"), "{stdout}");
    let manifest = causeseg::model::Model::load(&model).unwrap().manifest;
    assert_eq!((manifest.concepts.names[0].as_str(), manifest.concepts.names[3].as_str()), ("sky", "road"));
    assert_eq!(manifest.concepts.colors[3], [0x80, 0x40, 0x80]);
    common::assert_clean_error(&causeseg(&["models", "rename", "--model", model.to_str().unwrap(), "99=road"]), "concept 99 does not exist: the model has concepts 0 to 10");
    common::assert_clean_error(&causeseg(&["models", "rename", "--model", model.to_str().unwrap(), "road"]), "'road' is not ID=NAME");
}

#[test]
fn bench_json_is_one_object_with_every_stage_per_engine_and_the_profile() {
    if common::backbone().is_none() {
        return;
    }
    let stdout = ok(&causeseg(&["bench", "--frames", "2", "--warmup", "1", "--size", "224x224", "--engine", "tract", "--profile", "--json"]));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("exactly one JSON object on stdout");
    let gflop = report["gflop_per_frame"].as_f64().unwrap();
    assert!(gflop > 1.0, "{report}");
    let engines = report["engines"].as_array().unwrap();
    assert_eq!(engines.len(), 1);
    assert_eq!(engines[0]["name"], "tract");
    let stages: Vec<&str> = engines[0]["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["decode", "preprocess", "inference", "postprocess", "total"]);
    let inference = &engines[0]["stages"][2];
    let (p50, p99) = (inference["p50_ms"].as_f64().unwrap(), inference["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50, "{inference}");
    let rate = engines[0]["gflop_per_s"].as_f64().unwrap();
    assert!((rate - gflop / (p50 / 1000.0)).abs() < 1e-6 * rate, "GFLOP/s is the graph's FLOPs over the inference median");
    let profile = report["profile"].as_array().unwrap();
    assert!(profile.iter().any(|op| op["op"].as_str().unwrap().contains("MatMul")), "{report}");
}

#[cfg(feature = "rten")]
#[test]
fn bench_profile_with_rten_adds_rten_s_own_table_but_keeps_json_to_one_object() {
    if common::backbone().is_none() {
        return;
    }
    let args = ["bench", "--frames", "1", "--warmup", "0", "--size", "224x224", "--engine", "rten", "--profile"];
    let stdout = ok(&causeseg(&args));
    let table = stdout.split("rten's own profile of the fused graph, one frame:").nth(1).unwrap_or_else(|| panic!("no rten profile: {stdout}"));
    assert!(table.contains("ops evaluated in") && table.contains("MatMul") && table.contains("Softmax"), "{table}");
    let stdout = ok(&causeseg(&[&args[..], &["--json"]].concat()));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("exactly one JSON object on stdout");
    assert_eq!(report["engines"][0]["name"], "rten");
}
