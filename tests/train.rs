//! `causeseg fit --method cause`: a whole (tiny) CAUSE run from the command
//! line, the model it writes, and the bad-input cases.

mod common;

use std::path::Path;

use common::causeseg;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The committed default CAUSE model loads with the runtime (no `train`
/// feature needed): TR head 384 -> 90 on 64-d whitened tokens, 11 concepts
/// in the head's space.
#[test]
fn committed_cause_model_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-cause");
    let model = causeseg::model::Model::load(&dir).unwrap();
    let head = model.head.as_ref().expect("a CAUSE model has a head");
    assert_eq!((head.kind(), head.input_dim(), head.output_dim()), (causeseg::head::HeadKind::Tr, 384, 90));
    assert_eq!(model.centroids.dim(), (11, 90));
    let clusterbook: ndarray::Array2<f32> = ndarray_npy::read_npy(dir.join("clusterbook.npy")).unwrap();
    assert_eq!(clusterbook.dim(), (2048, 64));
}

#[cfg(not(feature = "train"))]
#[test]
fn cause_needs_the_train_feature() {
    let dir = tempfile::tempdir().unwrap();
    let images = common::sample_images();
    let out = dir.path().join("m");
    let output = causeseg(&["fit", "--method", "cause", "--clusters", "3", "--images", images.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("`train` feature"), "{}", stderr(&output));
    assert!(!out.exists());
}

#[cfg(feature = "train")]
mod trained {
    use super::*;

    /// Tiny but complete settings: every stage runs in seconds.
    const TINY: &[&str] = &[
        "--size", "224x168", "--clusterbook-size", "32", "--clusterbook-epochs", "1", "--head-epochs", "2", "--batch", "2",
        "--projection-dim", "64", "--probe-epochs", "1",
    ];

    fn fit(images: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
        fit_with_env(images, out, extra, &[])
    }

    fn fit_with_env(images: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut args = vec!["fit", "--method", "cause", "--clusters", "3", "--images", images.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend_from_slice(TINY);
        args.extend_from_slice(extra);
        common::causeseg_with_env(&args, env)
    }

    #[test]
    fn writes_a_model_the_runtime_uses_and_is_seeded() {
        if common::backbone().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let images = common::sample_images();
        let model = dir.path().join("cause");
        let output = fit(&images, &model, &["--seed", "3", "--head", "mlp"]);
        assert!(output.status.success(), "{}", stderr(&output));
        for file in ["model.toml", "centroids.npy", "clusterbook.npy", "training.json", "head/f1_weight.npy", "head/f2b_bias.npy"] {
            assert!(model.join(file).is_file(), "{file} missing");
        }
        let probe: ndarray::Array2<f32> = ndarray_npy::read_npy(model.join("centroids.npy")).unwrap();
        assert_eq!(probe.dim(), (3, 90), "probe lives in the head's 90-d space");
        let clusterbook: ndarray::Array2<f32> = ndarray_npy::read_npy(model.join("clusterbook.npy")).unwrap();
        assert_eq!(clusterbook.dim(), (32, 64), "the clusterbook lives in the space whitened to 64 dims (the default)");
        let loaded = causeseg::model::Model::load(&model).expect("the runtime loads a CAUSE model");
        assert!(loaded.head.is_some());

        // Same seed, same model.
        let again = dir.path().join("again");
        assert!(fit(&images, &again, &["--seed", "3", "--head", "mlp"]).status.success());
        for file in ["centroids.npy", "clusterbook.npy", "head/f2a_weight.npy"] {
            assert_eq!(std::fs::read(model.join(file)).unwrap(), std::fs::read(again.join(file)).unwrap(), "{file}");
        }

        // Stages alone: a new head on the stored clusterbook; a probe on the stored head.
        let cb = model.join("clusterbook.npy");
        let reuse = dir.path().join("reuse");
        let output = fit(&images, &reuse, &["--seed", "3", "--head", "mlp", "--clusterbook", cb.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(std::fs::read(&cb).unwrap(), std::fs::read(reuse.join("clusterbook.npy")).unwrap());
        let probe_only = dir.path().join("probe_only");
        let output = fit(&images, &probe_only, &["--head", "mlp", "--head-from", model.to_str().unwrap(), "--probe", "modularity"]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(std::fs::read(model.join("head/f1_weight.npy")).unwrap(), std::fs::read(probe_only.join("head/f1_weight.npy")).unwrap());

        // The runtime segments with it.
        let out = dir.path().join("out");
        let image = images.join("coffee.jpg");
        let output = causeseg(&["segment", image.to_str().unwrap(), "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--visualize", "labels"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let labels = image::open(out.join("coffee_labels.png")).unwrap().into_luma8();
        assert!(labels.pixels().all(|p| p.0[0] < 3));
    }

    /// Fits the sample images twice, with the `first` flags and with the
    /// `second`: the temporary directory and the two models.
    fn fit_twice(first_flags: &[&str], second_flags: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let images = common::sample_images();
        let (first, second) = (dir.path().join("first"), dir.path().join("second"));
        let output = fit(&images, &first, first_flags);
        assert!(output.status.success(), "{}", stderr(&output));
        let output = fit(&images, &second, second_flags);
        assert!(output.status.success(), "{}", stderr(&output));
        (dir, first, second)
    }

    /// `--views-for probe`: the five crops reach the probe only, so the
    /// whitening, clusterbook and head are those of a fit on the images
    /// alone (same seed), and the probe differs.
    #[test]
    fn views_for_probe_trains_every_other_stage_on_the_images_alone() {
        if common::backbone().is_none() {
            return;
        }
        let plain = ["--head", "mlp", "--seed", "2", "--no-five-crop"];
        // The later of --no-five-crop and --five-crop wins.
        let (_dir, plain, probe_views) = fit_twice(&plain, &[&plain[..], &["--five-crop", "--views-for", "probe"]].concat());
        for file in ["input_projection.npy", "clusterbook.npy", "head/f1_weight.npy", "head/f2a_weight.npy"] {
            assert_eq!(std::fs::read(plain.join(file)).unwrap(), std::fs::read(probe_views.join(file)).unwrap(), "{file}");
        }
        assert_ne!(std::fs::read(plain.join("centroids.npy")).unwrap(), std::fs::read(probe_views.join("centroids.npy")).unwrap());
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(probe_views.join("training.json")).unwrap()).unwrap();
        assert_eq!(report["views_for"], "probe");
        assert_eq!(report["training_grids"], 6 * report["images"].as_u64().unwrap(), "{report}");
    }

    /// By default (`--views-for whitening` with the five crops) the crops
    /// shape the input whitening exactly as when every stage sees them, and
    /// nothing else; without a whitening to fit it is a clear error.
    #[test]
    fn views_for_whitening_fits_the_whitening_on_the_views() {
        if common::backbone().is_none() {
            return;
        }
        let settings = ["--head", "mlp", "--seed", "2"];
        let (dir, all, whitening) = fit_twice(&[&settings[..], &["--five-crop", "--views-for", "all"]].concat(), &settings);
        for file in ["input_mean.npy", "input_projection.npy"] {
            assert_eq!(std::fs::read(all.join(file)).unwrap(), std::fs::read(whitening.join(file)).unwrap(), "{file}");
        }
        assert_ne!(std::fs::read(all.join("clusterbook.npy")).unwrap(), std::fs::read(whitening.join("clusterbook.npy")).unwrap());
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(whitening.join("training.json")).unwrap()).unwrap();
        assert_eq!((&report["views_for"], &report["five_crop"], &report["self_training"]), (&"whitening".into(), &true.into(), &serde_json::Value::Null), "{report}");
        let manifest = std::fs::read_to_string(whitening.join("model.toml")).unwrap();
        assert!(manifest.contains("with five crops per image for the whitening only"), "{manifest}");

        let output = fit(&common::sample_images(), &dir.path().join("none"), &[&settings[..], &["--views-for", "whitening", "--whiten", "0"]].concat());
        assert!(!output.status.success());
        assert!(stderr(&output).contains("--views-for whitening needs an input transform to fit (--whiten D or --center-input"), "{}", stderr(&output));
        assert!(!dir.path().join("none").exists(), "nothing written");
    }

    /// Three CamVid images of each of two drives, with their labels, copied
    /// into a temporary directory (never into the repository).
    fn two_drives(dir: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        let camvid = common::require(common::shared_dir().join("data/camvid/train"), "CamVid train")?;
        let (images, labels) = (dir.join("images"), dir.join("labels"));
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&labels).unwrap();
        let all = causeseg::source::list_images(&camvid.join("images")).unwrap();
        for drive in ["0001TP", "0006R0"] {
            for image in all.iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(drive)).take(3) {
                let stem = image.file_stem().unwrap().to_string_lossy().into_owned();
                std::fs::copy(image, images.join(image.file_name().unwrap())).unwrap();
                std::fs::copy(camvid.join("labels").join(format!("{stem}.png")), labels.join(format!("{stem}.png"))).unwrap();
            }
        }
        Some((images, labels))
    }

    #[test]
    fn protocol_holds_each_drive_out() {
        if common::backbone().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let Some((images, labels)) = two_drives(dir.path()) else { return };
        let json = dir.path().join("folds.jsonl");
        let mut args = vec![
            "protocol", "--images", images.to_str().unwrap(), "--labels", labels.to_str().unwrap(), "--classes", "11", "--ignore", "11",
            "--seeds", "0,1", "--methods", "kmeans,kmeans-whitened,cause", "--head", "tr", "--json", json.to_str().unwrap(),
        ];
        args.extend_from_slice(TINY);
        let output = causeseg(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2 * 3 * 2 * 2, "2 drives x 3 methods x 2 seeds x refinements none and guided (the default)");
        let refines: std::collections::BTreeSet<&str> = lines.iter().map(|l| l["refine"].as_str().unwrap()).collect();
        assert_eq!(refines.into_iter().collect::<Vec<_>>(), ["guided", "none"]);
        for line in &lines {
            // Trained on the other drive's 3 images, measured on the held-out 3.
            assert_eq!((line["train_images"].as_u64(), line["test_images"].as_u64()), (Some(3), Some(3)), "{line}");
            assert!((0.0..=100.0).contains(&line["miou"].as_f64().unwrap()), "{line}");
        }
        let table = String::from_utf8_lossy(&output.stdout);
        for needle in ["held-out 0001TP", "held-out 0006R0", "mean of folds", "kmeans-whitened", "cause", "cause + guided"] {
            assert!(table.contains(needle), "{needle} missing from:\n{table}");
        }

        // One fold only, with and without self-training (--self-train).
        let base = ["protocol", "--images", images.to_str().unwrap(), "--labels", labels.to_str().unwrap(), "--classes", "11", "--ignore", "11", "--size", "224x168", "--methods", "kmeans", "--seeds", "0"];
        // Measured at another size than trained, with flip and multi-scale
        // averaging, trained with a random view of every image too.
        let json = dir.path().join("one-fold.jsonl");
        let extra = [
            "--hold-out", "0006R0", "--refine", "none", "--self-train", "--self-train-epochs", "2", "--flip", "--eval-size", "252x182", "--eval-scales", "224x168",
            "--augment", "1", "--json", json.to_str().unwrap(),
        ];
        let output = causeseg(&[&base[..], &extra].concat());
        assert!(output.status.success(), "{}", stderr(&output));
        let table = String::from_utf8_lossy(&output.stdout);
        assert!(table.contains("held-out 0006R0") && !table.contains("held-out 0001TP"), "{table}");
        let rows: Vec<&str> = table.lines().skip(2).map(|l| l.split(" |").next().unwrap()).collect();
        let expected = ["", " + multi-scale", " + flip", " + flip + multi-scale"];
        let expected: Vec<String> = ["| kmeans", "| kmeans + self-train"].iter().flat_map(|m| expected.iter().map(move |e| format!("{m}{e}"))).collect();
        assert_eq!(rows, expected, "{table}");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!((lines[0]["eval_size"].clone(), lines[0]["augment"].clone()), (serde_json::json!([252, 182]), serde_json::json!(1)), "{}", lines[0]);
        // Multi-scale averaging changes the scores (the pixel counts stay).
        let (single, multi) = (&lines[0], &lines[1]);
        assert_eq!((single["multi_scale"].as_bool(), multi["multi_scale"].as_bool()), (Some(false), Some(true)));
        assert_ne!(single["per_class_iou"], multi["per_class_iou"], "{single}\n{multi}");
        // The supervised reference is measured as it is: never self-trained.
        let reference = [&base[..9], &["--size", "224x168", "--methods", "class-means", "--seeds", "0", "--hold-out", "0006R0", "--refine", "none"]].concat();
        let output = causeseg(&reference);
        assert!(output.status.success(), "{}", stderr(&output));
        let table = String::from_utf8_lossy(&output.stdout);
        let rows: Vec<&str> = table.lines().skip(2).map(|l| l.split(" |").next().unwrap()).collect();
        assert_eq!(rows, ["| class-means"], "{table}");
        let output = causeseg(&[&base[..], &["--eval-size", "100x100"]].concat());
        common::assert_clean_error(&output, "--eval-size 100x100 is not a multiple of the patch size 14");
        let output = causeseg(&[&base[..], &["--eval-scales", "448x336,100x98"]].concat());
        common::assert_clean_error(&output, "--eval-scales 100x98 is not a multiple of the patch size 14");
        let output = causeseg(&[&base[..], &["--hold-out", "9999XX"]].concat());
        common::assert_clean_error(&output, "no image of drive '9999XX' to hold out; the drives are 0001TP, 0006R0");
    }

    #[test]
    fn protocol_needs_two_drives_and_matching_label_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let Some((images, labels)) = two_drives(dir.path()) else { return };
        let output = causeseg(&["protocol", "--images", images.to_str().unwrap(), "--classes", "11", "--labels", labels.to_str().unwrap(), "--labels", labels.to_str().unwrap()]);
        common::assert_clean_error(&output, "one --labels directory per --images directory");
        if common::backbone().is_none() {
            return;
        }
        for file in std::fs::read_dir(&images).unwrap() {
            let path = file.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with("0006R0") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let output = causeseg(&["protocol", "--images", images.to_str().unwrap(), "--labels", labels.to_str().unwrap(), "--classes", "11", "--size", "224x168"]);
        common::assert_clean_error(&output, "come from 1 drive(s); leaving one out needs at least two");
    }

    #[test]
    fn empty_directory_is_a_clear_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let out = dir.path().join("model");
        let output = fit(&empty, &out, &[]);
        assert!(!output.status.success());
        assert!(stderr(&output).contains("no JPEG or PNG images") && stderr(&output).contains("empty"), "{}", stderr(&output));
        assert!(!out.exists());
    }

    #[test]
    fn unreadable_images_are_skipped_and_counted() {
        if common::backbone().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        for name in ["chelsea.jpg", "coffee.jpg"] {
            std::fs::copy(common::sample_images().join(name), images.join(name)).unwrap();
        }
        std::fs::write(images.join("broken.jpg"), b"not a jpeg").unwrap();
        let out = dir.path().join("model");
        let output = fit_with_env(&images, &out, &[], &[("RUST_LOG", "info")]);
        assert!(output.status.success(), "{}", stderr(&output));
        let log = stderr(&output);
        assert!(log.contains("broken.jpg") && log.contains("1 of 3 images could not be read"), "{log}");
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("training.json")).unwrap()).unwrap();
        assert_eq!(report["skipped"], 1);
        assert_eq!(report["images"], 2);
    }

    #[test]
    fn nan_loss_stops_without_a_model() {
        if common::backbone().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        // An absurd learning rate overflows the head's weights within a few steps.
        let output = fit(&common::sample_images(), &out, &["--head", "mlp", "--head-lr", "1e35"]);
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(err.contains("NaN") && err.contains("no model was written"), "{err}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no partial directory left");
    }

    #[test]
    fn non_finite_clusterbook_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let nan = dir.path().join("nan.npy");
        ndarray_npy::write_npy(&nan, &ndarray::Array2::<f32>::from_elem((32, 384), f32::NAN)).unwrap();
        let out = dir.path().join("model");
        let output = fit(&common::sample_images(), &out, &["--clusterbook", nan.to_str().unwrap()]);
        assert!(!output.status.success());
        assert!(stderr(&output).contains("nan.npy") && stderr(&output).contains("not finite"), "{}", stderr(&output));
        assert!(!out.exists());
    }

    /// Self-training is label-free: it runs on a directory of images with
    /// no label directory anywhere beside it, and records what it did.
    #[test]
    fn self_training_runs_without_any_labels() {
        if common::backbone().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let Some(camvid) = common::require(common::shared_dir().join("data/camvid/train/images"), "CamVid train") else { return };
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        for image in causeseg::source::list_images(&camvid).unwrap().iter().take(4) {
            std::fs::copy(image, images.join(image.file_name().unwrap())).unwrap();
        }
        assert!(!dir.path().join("labels").exists());
        let model = dir.path().join("model");
        let output = fit(&images, &model, &["--head", "mlp", "--self-train", "--self-train-epochs", "3"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("training.json")).unwrap()).unwrap();
        let covered = report["self_training"]["covered"].as_f64().unwrap();
        assert!(covered > 0.5 && covered <= 1.0, "{report}");
        assert!(report["self_training"]["masks_per_image"].as_f64().unwrap() >= 1.0, "{report}");
        assert_eq!(report["self_training_options"]["epochs"], 3);
        let manifest = std::fs::read_to_string(model.join("model.toml")).unwrap();
        assert!(manifest.contains("self-trained on mask proposals"), "{manifest}");
        assert!(causeseg::model::Model::load(&model).is_ok());

        // Without --self-train there is no such stage. With --augment 1
        // --views-for all the stages see every image twice: as it is and
        // as one random view.
        let plain = dir.path().join("plain");
        let output = fit(&images, &plain, &["--head", "mlp", "--no-five-crop", "--augment", "1", "--views-for", "all"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(plain.join("training.json")).unwrap()).unwrap();
        assert!(report["self_training"].is_null(), "{report}");
        assert_eq!(report["augment"], 1, "{report}");
        let samples = report["images"].as_u64().unwrap();
        assert_eq!(report["training_grids"].as_u64(), Some(2 * samples), "{report}");
        let manifest = std::fs::read_to_string(plain.join("model.toml")).unwrap();
        assert!(manifest.contains("with 1 random view per image"), "{manifest}");

        // Self-training settings without the stage are refused.
        let output = fit(&images, &dir.path().join("refused"), &["--self-train-epochs", "3"]);
        common::assert_clean_error(&output, "the following required arguments were not provided");
        assert!(stderr(&output).contains("\n  --self-train\n"), "{}", stderr(&output));
        assert!(!dir.path().join("refused").exists());
    }

    /// CAUSE-TR on whitened tokens with the five crops for the whitening
    /// (the default), on the sample
    /// images (of several different sizes): the model directory, the
    /// runtime's fused graph, and `models export`.
    #[test]
    fn tr_head_with_whitening_and_five_crops() {
        if common::backbone().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let images = common::sample_images();
        let model = dir.path().join("tr");
        let output = fit(&images, &model, &["--head", "tr", "--whiten", "8", "--seed", "1", "--self-train", "--self-train-head", "1e-3"]);
        assert!(output.status.success(), "{}", stderr(&output));
        // The self-trained projection's ReLU branch is widened to 128 units.
        let f2a: ndarray::Array2<f32> = ndarray_npy::read_npy(model.join("head/mlp/f2a_weight.npy")).unwrap();
        assert_eq!(f2a.nrows(), 128);
        for file in ["head/codes.npy", "head/pos.npy", "head/input_weight.npy", "head/mlp/f1_weight.npy", "input_mean.npy", "input_projection.npy"] {
            assert!(model.join(file).is_file(), "{file} missing");
        }
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("training.json")).unwrap()).unwrap();
        assert_eq!((&report["five_crop"], &report["views_for"]), (&true.into(), &"whitening".into()), "{report}");
        assert_eq!(report["self_training_options"]["head_lr"], 1e-3, "{report}");
        let samples = std::fs::read_dir(&images).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "jpg")).count();
        assert_eq!(report["images"], samples);
        assert_eq!(report["input_transform"]["dims"], 8);
        let clusterbook: ndarray::Array2<f32> = ndarray_npy::read_npy(model.join("clusterbook.npy")).unwrap();
        assert_eq!(clusterbook.dim(), (32, 8), "the clusterbook lives in the whitened space");
        let loaded = causeseg::model::Model::load(&model).unwrap();
        assert_eq!(loaded.head.as_ref().map(|h| (h.kind(), h.input_dim())), Some((causeseg::head::HeadKind::Tr, 384)));

        let out = dir.path().join("out");
        let image = images.join("rocket.jpg");
        let output = causeseg(&["segment", image.to_str().unwrap(), "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--visualize", "labels"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let labels = image::open(out.join("rocket_labels.png")).unwrap().into_luma8();
        assert_eq!(labels.dimensions(), image::image_dimensions(&image).unwrap(), "labels at the image's own size");
        assert!(labels.pixels().all(|p| p.0[0] < 3));

        let onnx = dir.path().join("fused.onnx");
        let output = causeseg(&["models", "export", "--model", model.to_str().unwrap(), "--out", onnx.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
        let graph = causeseg::onnx::read_model(&onnx).unwrap().graph.unwrap();
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["concept_scores", "concept_ids"]);

        // At another input size the TR head's positional embedding is interpolated.
        let source = images.to_str().unwrap();
        let saved = dir.path().join("larger");
        let output = causeseg(&["run", "--model", model.to_str().unwrap(), "--source", source, "--max-frames", "1", "--size", "336x252", "--save", saved.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(saved.join("000000_labels.png").is_file(), "a frame was segmented at 336x252");

        let output = fit(&images, &dir.path().join("bad"), &["--whiten", "999"]);
        assert!(!output.status.success());
        assert!(stderr(&output).contains("--whiten 999 exceeds the feature dimension 384"), "{}", stderr(&output));
    }
}
