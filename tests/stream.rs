//! `causeseg run` end to end: a directory source, a GStreamer source
//! (feature `gstreamer`), Ctrl-C (SIGINT) handling, and its error messages.
//! Runs that need the backbone skip when it has not been fetched.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_clean_error, backbone, causeseg, require, sample_images};
use serde_json::Value;

/// Model input size for test runs: small, so that they are quick.
const SIZE: &str = "224x168";

/// The model the streaming tests run: the k-means model (no head, so the
/// quickest at any size).
const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/camvid-kmeans");

/// The test model's directory, if it is there.
fn model_dir() -> Option<PathBuf> {
    require(Path::new(MODEL).join("model.toml"), "k-means model").map(|p| p.parent().unwrap().to_path_buf())
}

/// Number of concepts of the test model.
fn num_concepts() -> usize {
    causeseg::model::Model::load(&model_dir().unwrap()).unwrap().num_concepts()
}

/// A gradient image of the given size.
fn write_image(path: &Path, width: u32, height: u32) {
    image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 90])).save(path).unwrap();
}

/// File names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// The JSONL file's lines, parsed (a line that does not parse fails).
fn stats_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "last stats line is truncated");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))).collect()
}

/// Checks one stats line's fields against the frame's size and the model.
fn check_stats_line(line: &Value, width: u32, height: u32, concepts: usize) {
    assert!(line["index"].is_u64(), "{line}");
    assert!(line["timestamp"].as_f64().unwrap() > 1.6e9, "{line}");
    assert_eq!((line["width"].as_u64().unwrap(), line["height"].as_u64().unwrap()), (width as u64, height as u64), "{line}");
    for stage in ["decode", "queue", "preprocess", "inference", "postprocess", "end_to_end"] {
        assert!(line["latency_ms"][stage].as_f64().unwrap() >= 0.0, "{stage}: {line}");
    }
    let fractions: Vec<f64> = line["concept_fractions"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(fractions.len(), concepts);
    assert!((fractions.iter().sum::<f64>() - 1.0).abs() < 1e-3, "{line}");
}

/// Checks a saved label map: a mono8 PNG of the frame's size with valid ids.
fn check_labels(path: &Path, width: u32, height: u32, concepts: usize) {
    let image = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(image.color(), image::ColorType::L8, "{}", path.display());
    let labels = image.into_luma8();
    assert_eq!(labels.dimensions(), (width, height), "{}", path.display());
    assert!(labels.pixels().all(|p| (p.0[0] as usize) < concepts), "{}", path.display());
}

#[test]
fn directory_source() {
    if backbone().is_none() || model_dir().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let sizes = [("a", 96, 64), ("b", 130, 70), ("d", 70, 90)];
    for (name, w, h) in sizes {
        write_image(&input.join(format!("{name}.png")), w, h);
    }
    std::fs::write(input.join("c.png"), b"not a PNG").unwrap();
    let (out, stats) = (dir.path().join("out"), dir.path().join("stats.jsonl"));
    let output = causeseg(&[
        "run", "--source", input.to_str().unwrap(), "--loop", "--max-frames", "5", "--model", MODEL, "--size", SIZE,
        "--save", out.to_str().unwrap(), "--every", "2", "--stats", stats.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    // a b (c is corrupt) d a b: five frames, indices 0..5, one corrupt skipped.
    assert!(stdout.contains("frames: 5 processed, 5 captured, 0 dropped, 1 corrupt"), "{stdout}");
    assert!(stdout.contains("sustained:") && stdout.contains("end-to-end") && stdout.contains("peak"), "{stdout}");
    assert!(stdout.contains(&format!("saved: {}", out.display())), "the run says where its files went: {stdout}");
    let expected: Vec<String> = ["000000", "000002", "000004"]
        .iter()
        .flat_map(|f| ["labels", "mask", "overlay"].map(|k| format!("{f}_{k}.png")))
        .chain(["legend.png".to_string()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names(&out), expected);
    let concepts = num_concepts();
    let order = ["a", "b", "d", "a", "b"];
    let size_of = |name: &str| sizes.iter().find(|s| s.0 == name).map(|s| (s.1, s.2)).unwrap();
    for index in [0, 2, 4] {
        let (w, h) = size_of(order[index]);
        check_labels(&out.join(format!("{index:06}_labels.png")), w, h, concepts);
        let overlay = image::open(out.join(format!("{index:06}_overlay.png"))).unwrap();
        assert_eq!((overlay.width(), overlay.height()), (w, h));
    }
    let lines = stats_lines(&stats);
    assert_eq!(lines.len(), 5);
    for (index, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], index as u64);
        assert_eq!(line["name"], order[index]);
        let (w, h) = size_of(order[index]);
        check_stats_line(line, w, h, concepts);
    }
}

#[cfg(feature = "gstreamer")]
#[test]
fn gstreamer_videotestsrc_source() {
    if backbone().is_none() || model_dir().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, stats) = (dir.path().join("out"), dir.path().join("stats.jsonl"));
    let output = causeseg(&[
        "run", "--source", "gst://videotestsrc num-buffers=6 pattern=smpte ! video/x-raw,width=160,height=120",
        "--model", MODEL, "--size", SIZE, "--save", out.to_str().unwrap(), "--visualize", "labels", "--stats", stats.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("frames: 6 processed, 6 captured, 0 dropped, 0 corrupt"), "{stdout}");
    let mut expected: Vec<String> = (0..6).map(|i| format!("{i:06}_labels.png")).collect();
    expected.push("legend.png".into());
    assert_eq!(names(&out), expected);
    let concepts = num_concepts();
    for i in 0..6 {
        check_labels(&out.join(format!("{i:06}_labels.png")), 160, 120, concepts);
    }
    let lines = stats_lines(&stats);
    assert_eq!(lines.len(), 6);
    for (index, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], index as u64);
        assert!(line["name"].is_null());
        check_stats_line(line, 160, 120, concepts);
    }
}

#[test]
fn sigint_drains_flushes_and_exits_0_within_a_second() {
    stop_signal_drains_flushes_and_exits_0_within_a_second("INT");
}

/// SIGTERM, what `ros2 launch` and systemd send, stops a run like Ctrl-C.
#[test]
fn sigterm_drains_flushes_and_exits_0_within_a_second() {
    stop_signal_drains_flushes_and_exits_0_within_a_second("TERM");
}

fn stop_signal_drains_flushes_and_exits_0_within_a_second(signal: &str) {
    if backbone().is_none() || model_dir().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, stats) = (dir.path().join("out"), dir.path().join("stats.jsonl"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_causeseg"))
        .args(["run", "--source", sample_images().to_str().unwrap(), "--loop", "--model", MODEL, "--size", SIZE, "--visualize", "labels,overlay"])
        .args(["--save", out.to_str().unwrap(), "--stats", stats.to_str().unwrap()])
        .env_remove("CAUSESEG_MODEL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = Instant::now();
    while std::fs::read_to_string(&stats).map_or(0, |s| s.lines().count()) < 3 {
        assert!(child.try_wait().unwrap().is_none(), "causeseg run exited early");
        assert!(ready.elapsed() < Duration::from_secs(300), "no frames after 300 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Instant::now();
    let kill = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(10), "still running 10 s after SIG{signal}");
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = signalled.elapsed();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(took < Duration::from_secs(1), "exited {took:?} after SIG{signal}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("processed"));

    let lines = stats_lines(&stats);
    let logged: BTreeSet<u64> = lines.iter().map(|l| l["index"].as_u64().unwrap()).collect();
    assert_eq!(logged.len(), lines.len());
    let concepts = num_concepts();
    let mut saved = 0;
    for name in names(&out).iter().filter(|n| n.ends_with("_labels.png")) {
        let index: u64 = name.trim_end_matches("_labels.png").parse().unwrap();
        assert!(logged.contains(&index), "{name} has no stats line");
        let line = lines.iter().find(|l| l["index"] == index).unwrap();
        let (w, h) = (line["width"].as_u64().unwrap() as u32, line["height"].as_u64().unwrap() as u32);
        check_labels(&out.join(name), w, h, concepts);
        image::open(out.join(format!("{index:06}_overlay.png"))).expect("overlay complete");
        saved += 1;
    }
    assert_eq!(saved, lines.len(), "every processed frame is saved (--every 1)");
}

#[test]
fn unknown_source_uri() {
    assert_clean_error(&causeseg(&["run", "--source", "foo://bar"]), "unknown source 'foo://bar'");
}

#[test]
fn missing_source_directory() {
    assert_clean_error(&causeseg(&["run", "--source", "/nonexistent/frames"]), "/nonexistent/frames: no such file or directory");
    assert_clean_error(&causeseg(&["run", "--source", "/nonexistent/frames/*.png"]), "/nonexistent/frames: no such file or directory");
}

#[test]
fn source_directory_without_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    assert_clean_error(&causeseg(&["run", "--source", path]), &format!("{path}: no JPEG or PNG images"));
}

#[test]
fn a_source_without_a_decodable_frame_is_an_error() {
    if backbone().is_none() || model_dir().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.png"), "a text file, not a PNG").unwrap();
    let path = dir.path().to_str().unwrap();
    let output = causeseg(&["run", "--source", path, "--model", MODEL, "--size", SIZE]);
    assert_clean_error(&output, "no frame could be processed from");
    assert!(String::from_utf8_lossy(&output.stderr).contains(path), "the error names the source");
}

#[test]
fn one_frame_reports_no_fps() {
    if backbone().is_none() || model_dir().is_none() {
        return;
    }
    let image = sample_images().join("chelsea.jpg");
    let output = causeseg(&["run", "--source", image.to_str().unwrap(), "--model", MODEL, "--size", SIZE]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("frames: 1 processed") && stdout.contains("sustained: n/a (fps needs at least two frames)"), "{stdout}");
}

#[test]
fn bad_option_values() {
    let samples = sample_images();
    let source = samples.to_str().unwrap();
    assert_clean_error(&causeseg(&["run", "--source", source, "--every", "0"]), "--every");
    assert_clean_error(&causeseg(&["run", "--source", source, "--alpha", "1.5"]), "'1.5' is not an opacity between 0 and 1");
    assert_clean_error(&causeseg(&["run", "--source", source, "--duration", "0"]), "not a positive number of seconds");
    assert_clean_error(&causeseg(&["run", "--source", source, "--max-frames", "0"]), "--max-frames");
    if model_dir().is_some() {
        assert_clean_error(&causeseg(&["run", "--source", source, "--size", "100x100"]), "--size 100x100 is not a multiple of the patch size 14");
    }
}

#[cfg(feature = "camera")]
#[test]
fn no_such_camera() {
    assert_clean_error(&causeseg(&["run", "--source", "/dev/video63"]), "/dev/video63: no such camera");
    assert_clean_error(&causeseg(&["run", "--source", "v4l2:///dev/video63"]), "/dev/video63: no such camera");
}

#[cfg(not(feature = "camera"))]
#[test]
fn camera_without_the_camera_feature() {
    assert_clean_error(&causeseg(&["run", "--source", "/dev/video0"]), "/dev/video0: this build has no camera support");
}

#[cfg(feature = "gstreamer")]
#[test]
fn broken_gstreamer_pipeline() {
    assert_clean_error(&causeseg(&["run", "--source", "gst://nosuchelement"]), "gst://nosuchelement: cannot open");
}

#[cfg(not(feature = "gstreamer"))]
#[test]
fn gstreamer_without_the_gstreamer_feature() {
    assert_clean_error(&causeseg(&["run", "--source", "csi://0"]), "csi://0: this build has no gstreamer support");
}

/// An installed or copied binary needs no repository: the default model and
/// the sample images are inside it. Runs a copy of the binary from `/` with
/// the default model and `--source auto` (no camera here: the samples).
#[test]
fn a_copied_binary_runs_the_bundled_model_on_the_bundled_samples() {
    if backbone().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("causeseg");
    std::fs::copy(env!("CARGO_BIN_EXE_causeseg"), &binary).unwrap();
    let out = dir.path().join("out");
    let output = Command::new(&binary)
        .current_dir("/")
        .args(["run", "--source", "auto", "--max-frames", "3", "--save", out.to_str().unwrap(), "--visualize", "labels"])
        .env_remove("CAUSESEG_MODEL")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("bundled sample images"), "{stderr}");
    assert!(stderr.contains("model camvid-cause"), "{stderr}");
    assert_eq!(names(&out), ["000000_labels.png", "000001_labels.png", "000002_labels.png", "legend.png"]);
}
