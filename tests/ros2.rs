//! `causeseg run` as a ROS 2 node (feature `ros2`), over DDS on this
//! machine: the label topics against the PNG sink, a test publisher feeding
//! `--source ros2://…` (frames, header stamps, bad messages, a publisher
//! that goes away and comes back), SIGINT/SIGTERM, the transient-local
//! concept table for a late subscriber, interoperability with Eclipse
//! Cyclone DDS (PyPI `cyclonedds`, installed by tests/run.sh; skipped
//! without it unless CAUSESEG_STRICT=1), and the error messages.
//!
//! Each test uses its own DDS domain (from the process id), so parallel
//! tests and other runs on this machine do not see each other.

#![cfg(feature = "ros2")]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use causeseg::ros2::msg::{DiagnosticArray, Header, Image, LabelInfo, RosMessage, StringMessage, Time};
use causeseg::ros2::{Node, NodeConfig, NodeNames, Subscription};
use common::{assert_clean_error, backbone, causeseg_with_env, require};
use serde_json::Value;

/// The quickest model (no head), at a small input size, as tests/stream.rs runs it.
const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/camvid-kmeans");
const SIZE: &str = "224x168";
/// Where tests/run.sh installs Cyclone DDS's Python binding.
const CYCLONEDDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/cyclonedds-11.0.1");
/// Long enough for a model load and warm-up on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(300);

/// Whether the backbone and the test model are there (else skipped).
fn have_model() -> bool {
    backbone().is_some() && require(Path::new(MODEL).join("model.toml"), "k-means model").is_some()
}

/// A DDS domain of its own for test `k` (0..5).
fn domain(k: u16) -> u16 {
    10 + (std::process::id() % 40) as u16 * 5 + k
}

/// A ROS 2 node in the test process.
fn test_node(name: &str, domain_id: u16) -> Node {
    let config = NodeConfig { names: NodeNames::new(name, "/", &[]).unwrap(), reliable: false, domain_id };
    Node::new(&config, Arc::default()).unwrap()
}

/// Starts causeseg with `args` in `domain_id`; its stderr lines arrive on
/// the receiver (and are kept for the failure message).
fn spawn(args: &[&str], domain_id: u16) -> (Child, Receiver<String>, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_causeseg"))
        .args(args)
        .env_remove("CAUSESEG_MODEL")
        .env("ROS_DOMAIN_ID", domain_id.to_string())
        .env("RUST_LOG", "warn,causeseg=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, receiver) = channel();
    let all = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let kept = all.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            kept.lock().unwrap().push(line.clone());
            let _ = sender.send(line);
        }
    });
    (child, receiver, all)
}

/// Waits for a stderr line containing `needle`.
fn wait_for_line(lines: &Receiver<String>, needle: &str, child: &mut Child) {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < PATIENCE, "no '{needle}' after {PATIENCE:?}");
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(_) => assert!(child.try_wait().unwrap().is_none(), "causeseg exited before '{needle}'"),
        }
    }
}

/// Waits for the child to exit (at most `PATIENCE`); its stdout.
fn finish(mut child: Child) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < PATIENCE, "causeseg still running after {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = child.wait_with_output().unwrap();
    (status, String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A gradient rgb8 image message.
fn rgb8(width: u32, height: u32, stamp: Time, frame_id: &str) -> Image {
    let data = (0..height).flat_map(|y| (0..width).flat_map(move |x| [(x * 255 / width) as u8, (y * 255 / height) as u8, 90])).collect();
    Image { header: Header { stamp, frame_id: frame_id.into() }, height, width, encoding: "rgb8".into(), is_bigendian: 0, step: width * 3, data }
}

/// Writes a gradient PNG.
fn write_image(path: &Path, width: u32, height: u32) {
    image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 90])).save(path).unwrap();
}

/// The `--stats` lines.
fn stats_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Seconds since the epoch of a stamp.
fn seconds(stamp: Time) -> f64 {
    stamp.to_system().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The stats line whose timestamp is `stamp`.
fn line_at(lines: &[Value], stamp: Time) -> Option<&Value> {
    lines.iter().find(|l| (l["timestamp"].as_f64().unwrap() - seconds(stamp)).abs() < 1e-5)
}

/// Takes every message waiting on a subscription.
fn drain<M: RosMessage>(subscription: &Subscription<M>, into: &mut Vec<M>) {
    while let Ok(Some((message, _))) = subscription.take() {
        into.push(message);
    }
}

/// The model's concept names.
fn concept_names() -> Vec<String> {
    causeseg::model::Model::load(Path::new(MODEL)).unwrap().manifest.concepts.names
}

#[test]
fn labels_on_ros2_match_the_png_sink() {
    if !have_model() {
        return;
    }
    let domain_id = domain(0);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    write_image(&input.join("a.png"), 160, 120);
    let (out, stats) = (dir.path().join("out"), dir.path().join("stats.jsonl"));
    let listener = test_node("listener", domain_id);
    let (labels, _) = listener.subscription::<Image>("/causeseg/labels", &listener.image_qos()).unwrap();
    let (colors, _) = listener.subscription::<Image>("/causeseg/color", &listener.image_qos()).unwrap();
    let (diagnostics, _) = listener.subscription::<DiagnosticArray>("/diagnostics", &Node::default_qos()).unwrap();
    let (child, _, stderr) = spawn(
        &[
            "run", "--source", input.to_str().unwrap(), "--loop", "--max-frames", "6", "--model", MODEL, "--size", SIZE,
            "--ros2", "--save", out.to_str().unwrap(), "--visualize", "labels", "--stats", stats.to_str().unwrap(),
        ],
        domain_id,
    );
    let (mut got_labels, mut got_colors, mut got_diagnostics) = (Vec::new(), Vec::new(), Vec::new());
    let mut child = child;
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < PATIENCE {
        drain(&labels, &mut got_labels);
        drain(&colors, &mut got_colors);
        drain(&diagnostics, &mut got_diagnostics);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    drain(&labels, &mut got_labels);
    let (status, stdout) = finish(child);
    assert!(status.success(), "stderr:\n{}", stderr.lock().unwrap().join("\n"));
    assert!(stdout.contains("frames: 6 processed"), "{stdout}");
    let lines = stats_lines(&stats);
    assert!(!got_labels.is_empty(), "no ~/labels message received");
    for message in &got_labels {
        assert_eq!((message.width, message.height, message.step), (160, 120, 160));
        assert_eq!((message.encoding.as_str(), message.is_bigendian, message.data.len()), ("mono8", 0, 160 * 120));
        assert_eq!(message.header.frame_id, "camera");
        let line = line_at(&lines, message.header.stamp).expect("the stamp of a processed frame");
        let index = line["index"].as_u64().unwrap();
        let png = image::open(out.join(format!("{index:06}_labels.png"))).unwrap().into_luma8();
        assert_eq!(&message.data, png.as_raw(), "frame {index}: ~/labels differs from the PNG sink");
    }
    let color = got_colors.first().expect("a ~/color message");
    assert_eq!((color.encoding.as_str(), color.step, color.data.len()), ("rgb8", 480, 160 * 120 * 3));
    let status = &got_diagnostics.first().expect("a /diagnostics message").status[0];
    assert_eq!(status.name, "causeseg: segmentation");
    assert_eq!(status.hardware_id, "/causeseg");
    let keys: Vec<&str> = status.values.iter().map(|v| v.key.as_str()).collect();
    for key in ["frame", "fps", "inference_ms", "end_to_end_ms"] {
        assert!(keys.contains(&key), "{keys:?}");
    }
    eprintln!("received {} of 6 label maps, {} colour masks, {} diagnostics", got_labels.len(), got_colors.len(), got_diagnostics.len());
}

#[test]
fn ros2_source_carries_frames_and_stamps_rejects_bad_messages_and_survives_a_restarting_publisher() {
    if !have_model() {
        return;
    }
    let domain_id = domain(1);
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.jsonl");
    let listener = test_node("listener", domain_id);
    let (labels, _) = listener.subscription::<Image>("/causeseg/labels", &listener.image_qos()).unwrap();
    // The camera first: by the time the model is loaded, discovery has
    // matched it with causeseg's subscription (best effort loses what is
    // sent before that).
    let camera = test_node("camera", domain_id);
    let (publisher, _) = camera.publisher::<Image>("/test/image", &camera.image_qos()).unwrap();
    let (mut child, lines, stderr) = spawn(
        &["run", "--source", "ros2:///test/image", "--max-frames", "4", "--model", MODEL, "--size", SIZE, "--ros2", "--stats", stats.to_str().unwrap()],
        domain_id,
    );
    wait_for_line(&lines, "streaming from", &mut child);
    // Three bad messages, each given time to be read before the next.
    let stamp = Time { sec: 500, nanosec: 0 };
    let mut bad = vec![Image { encoding: "16UC1".into(), ..rgb8(8, 8, stamp, "test_cam") }, Image { step: 10, ..rgb8(8, 8, stamp, "test_cam") }];
    let mut truncated = rgb8(8, 8, stamp, "test_cam");
    truncated.data.truncate(100);
    bad.push(truncated);
    for message in bad {
        publisher.publish(message).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    // The first camera until two frames are through, then a second one.
    let mut sent = BTreeSet::new();
    let mut got_labels = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while stats_lines(&stats).len() < 2 {
        assert!(start.elapsed() < PATIENCE && child.try_wait().unwrap().is_none(), "no frames from the first publisher");
        let through = stats_lines(&stats).len();
        let stamp = Time { sec: 1000 + i, nanosec: 250 };
        publisher.publish(rgb8(96, 64, stamp, "test_cam")).unwrap();
        sent.insert(stamp);
        i += 1;
        // Lock-step: the next frame once this one is through (or after 2 s,
        // if best effort lost it), so no queue of first-camera frames is
        // still being processed when the second camera starts.
        let published = Instant::now();
        while stats_lines(&stats).len() == through && published.elapsed() < Duration::from_secs(2) && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(50));
            drain(&labels, &mut got_labels);
        }
    }
    drop(publisher);
    drop(camera);
    std::thread::sleep(Duration::from_millis(500));
    let camera = test_node("camera", domain_id);
    let (publisher, _) = camera.publisher::<Image>("/test/image", &camera.image_qos()).unwrap();
    let mut i = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < PATIENCE, "no frames from the second publisher");
        let stamp = Time { sec: 2000 + i, nanosec: 250 };
        publisher.publish(rgb8(96, 64, stamp, "test_cam")).unwrap();
        sent.insert(stamp);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
        drain(&labels, &mut got_labels);
    }
    let (status, stdout) = finish(child);
    let stderr = stderr.lock().unwrap().join("\n");
    assert!(status.success(), "stderr:\n{stderr}");
    assert!(stdout.contains("frames: 4 processed"), "{stdout}");
    for reason in [
        "/test/image: unsupported encoding '16UC1'",
        "/test/image: inconsistent step: 10 bytes per row, but 8 rgb8 pixels need 24",
        "/test/image: truncated data: 100 bytes, but step 24 x height 8 needs 192",
    ] {
        assert!(stderr.contains(&format!("corrupt frame skipped: {reason}")), "no '{reason}' in stderr:\n{stderr}");
    }
    let corrupt: u64 = stdout.split(" corrupt").next().and_then(|s| s.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(corrupt >= 3, "{stdout}");
    let stamps: Vec<f64> = stats_lines(&stats).iter().map(|l| l["timestamp"].as_f64().unwrap()).collect();
    assert_eq!(stamps.len(), 4);
    for stamp in &stamps {
        assert!(sent.iter().any(|s| (seconds(*s) - stamp).abs() < 1e-5), "stamp {stamp} was never sent");
    }
    assert!(stamps.iter().any(|s| *s < 2000.0) && stamps.iter().any(|s| *s >= 2000.0), "frames from both publishers: {stamps:?}");
    assert!(!got_labels.is_empty(), "no ~/labels message received");
    for message in &got_labels {
        assert_eq!(message.header.frame_id, "test_cam");
        assert!(sent.contains(&message.header.stamp), "{:?} was never sent", message.header.stamp);
        assert_eq!((message.width, message.height), (96, 64));
    }
}

#[test]
fn sigint_stops_a_ros2_node_with_exit_0() {
    stop_a_ros2_node("INT", 2);
}

/// SIGTERM is what `ros2 launch` sends after SIGINT.
#[test]
fn sigterm_stops_a_ros2_node_with_exit_0() {
    stop_a_ros2_node("TERM", 3);
}

/// Runs causeseg on a ROS 2 camera until a few label maps arrived, checks
/// that a late subscriber still gets the concept table, then stops it with
/// SIG`signal`.
fn stop_a_ros2_node(signal: &str, k: u16) {
    if !have_model() {
        return;
    }
    let domain_id = domain(k);
    let camera = test_node("camera", domain_id);
    let (publisher, _) = camera.publisher::<Image>("/test/image", &camera.image_qos()).unwrap();
    let publishing = Arc::new(AtomicBool::new(true));
    let feeder = {
        let publishing = publishing.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while publishing.load(Ordering::Relaxed) {
                publisher.publish(rgb8(64, 48, Time { sec: 1000 + i, nanosec: 0 }, "test_cam")).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let listener = test_node("listener", domain_id);
    let (labels, _) = listener.subscription::<Image>("/my/seg/labels", &listener.image_qos()).unwrap();
    let (mut child, _, stderr) = spawn(
        &[
            "run", "--source", "ros2:///test/image", "--model", MODEL, "--size", SIZE, "--ros2", "--node-name", "seg", "--namespace", "/my",
        ],
        domain_id,
    );
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 2 {
        assert!(start.elapsed() < PATIENCE && child.try_wait().unwrap().is_none(), "no label maps; stderr:\n{}", stderr.lock().unwrap().join("\n"));
        drain(&labels, &mut got);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Subscribed long after the table was published: transient local.
    let (label_info, _) = listener.subscription::<LabelInfo>("/my/seg/label_info", &Node::latched_qos()).unwrap();
    let (concepts, _) = listener.subscription::<StringMessage>("/my/seg/concepts", &Node::latched_qos()).unwrap();
    let (mut tables, mut jsons) = (Vec::new(), Vec::new());
    while tables.is_empty() || jsons.is_empty() {
        assert!(start.elapsed() < PATIENCE, "no concept table for a late subscriber");
        drain(&label_info, &mut tables);
        drain(&concepts, &mut jsons);
        std::thread::sleep(Duration::from_millis(10));
    }
    let names: Vec<String> = tables[0].class_map.iter().map(|c| c.class_name.clone()).collect();
    assert_eq!(names, concept_names());
    assert!(tables[0].class_map.iter().enumerate().all(|(i, c)| c.class_id as usize == i));
    let json: Vec<Value> = serde_json::from_str(&jsons[0].data).unwrap();
    assert_eq!(json.len(), names.len());
    assert!(json[0]["color"].as_str().unwrap().starts_with('#'));

    let signalled = Instant::now();
    assert!(Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap().success());
    let (status, stdout) = finish(child);
    let took = signalled.elapsed();
    publishing.store(false, Ordering::Relaxed);
    feeder.join().unwrap();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", stderr.lock().unwrap().join("\n"));
    assert!(stdout.contains("processed"), "{stdout}");
    eprintln!("SIG{signal}: exited {} ms after the signal", took.as_millis());
}

/// Cyclone DDS's Python binding, if installed (else skipped, or failed when strict).
fn cyclonedds() -> Option<PathBuf> {
    require(
        Path::new(CYCLONEDDS).join("cyclonedds"),
        "cyclonedds (tests/run.sh installs it: python3 -m pip install --no-deps --target target/cyclonedds-11.0.1 cyclonedds==11.0.1)",
    )
    .map(|_| PathBuf::from(CYCLONEDDS))
}

/// A helper process, killed when the test ends (also when it fails).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts tests/ros2_cyclone.py with `args`; its stdout lines arrive on the receiver.
fn cyclone(args: &[&str]) -> (KillOnDrop, Receiver<String>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ros2_cyclone.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", CYCLONEDDS)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    let (sender, receiver) = channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    (KillOnDrop(child), receiver)
}

#[test]
fn cyclone_dds_receives_the_labels() {
    if !have_model() || cyclonedds().is_none() {
        return;
    }
    let domain_id = domain(4);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let received = dir.path().join("received");
    std::fs::create_dir(&input).unwrap();
    std::fs::create_dir(&received).unwrap();
    write_image(&input.join("a.png"), 160, 120);
    let (out, stats) = (dir.path().join("out"), dir.path().join("stats.jsonl"));
    let (mut subscriber, lines) = cyclone(&["subscribe", &domain_id.to_string(), "/causeseg/labels", received.to_str().unwrap(), "3", "300"]);
    assert_eq!(lines.recv_timeout(Duration::from_secs(60)).as_deref(), Ok("ready"), "the Cyclone DDS subscriber did not start");
    let (child, _, stderr) = spawn(
        &[
            "run", "--source", input.to_str().unwrap(), "--loop", "--max-frames", "12", "--model", MODEL, "--size", SIZE,
            "--ros2", "--save", out.to_str().unwrap(), "--visualize", "labels", "--stats", stats.to_str().unwrap(),
        ],
        domain_id,
    );
    let (status, _) = finish(child);
    assert!(status.success(), "stderr:\n{}", stderr.lock().unwrap().join("\n"));
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = subscriber.0.try_wait().unwrap() {
            break Some(exit);
        }
        if start.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.is_some_and(|e| e.success()), "Cyclone DDS received fewer than 3 label maps from causeseg");
    let lines = stats_lines(&stats);
    for n in 0..3 {
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(received.join(format!("{n}.json"))).unwrap()).unwrap();
        assert_eq!((meta["width"].as_u64(), meta["height"].as_u64(), meta["step"].as_u64()), (Some(160), Some(120), Some(160)), "{meta}");
        assert_eq!((meta["encoding"].as_str(), meta["frame_id"].as_str()), (Some("mono8"), Some("camera")), "{meta}");
        let stamp = Time { sec: meta["sec"].as_i64().unwrap() as i32, nanosec: meta["nanosec"].as_u64().unwrap() as u32 };
        let index = line_at(&lines, stamp).expect("the stamp of a processed frame")["index"].as_u64().unwrap();
        let png = image::open(out.join(format!("{index:06}_labels.png"))).unwrap().into_luma8();
        assert_eq!(&std::fs::read(received.join(format!("{n}.bin"))).unwrap(), png.as_raw(), "frame {index}");
    }
}

#[test]
fn cyclone_dds_publishes_into_the_source() {
    if !have_model() || cyclonedds().is_none() {
        return;
    }
    let domain_id = domain(5);
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.jsonl");
    let (publisher, sent) = cyclone(&["publish", &domain_id.to_string(), "/cyclone/image", "160", "120", "0.2", "300"]);
    let (child, _, stderr) = spawn(
        &["run", "--source", "ros2:///cyclone/image", "--max-frames", "3", "--model", MODEL, "--size", SIZE, "--stats", stats.to_str().unwrap()],
        domain_id,
    );
    let (status, stdout) = finish(child);
    drop(publisher);
    assert!(status.success(), "stderr:\n{}", stderr.lock().unwrap().join("\n"));
    assert!(stdout.contains("frames: 3 processed"), "{stdout}");
    let sent: Vec<String> = sent.try_iter().filter_map(|l| l.strip_prefix("sent ").map(String::from)).collect();
    let lines = stats_lines(&stats);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!((line["width"].as_u64(), line["height"].as_u64()), (Some(160), Some(120)));
        let stamp = line["timestamp"].as_f64().unwrap();
        assert!(sent.iter().any(|s| (s.parse::<f64>().unwrap() - stamp).abs() < 1e-5), "stamp {stamp} not among those Cyclone DDS sent: {sent:?}");
    }
}

#[test]
fn ros2_errors_name_the_flag_or_name() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        causeseg_with_env(&all, env)
    };
    assert_clean_error(&run(&["--ros2", "--node-name", "2seg"], &[]), "node name '2seg': '2seg' starts with a digit");
    assert_clean_error(&run(&["--ros2", "--namespace", "/a//b"], &[]), "namespace '/a//b': has an empty part (a leading, trailing or double /)");
    assert_clean_error(&run(&["--ros2", "--remap", "labels=/x"], &[]), "invalid value 'labels=/x' for '--remap <FROM:=TO>': expected FROM:=TO");
    assert_clean_error(&run(&["--ros2", "--remap", "~/lab-els:=/x"], &[]), "topic name '~/lab-els': '-' is not allowed (letters, digits, _ and / only)");
    assert_clean_error(&run(&["--ros2"], &[("ROS_DOMAIN_ID", "300")]), "ROS_DOMAIN_ID='300': not a DDS domain id (0 to 232)");
    assert_clean_error(&run(&["--ros2-overlay"], &[]), "the following required arguments were not provided");
    assert_clean_error(&run(&["--source", "ros2://"], &[]), "unknown source 'ros2://'");
    let domain_id = domain(0).to_string();
    assert_clean_error(
        &run(&["--source", "ros2:///cam//image"], &[("ROS_DOMAIN_ID", &domain_id)]),
        "ros2:///cam//image: cannot open: topic name '/cam//image': has an empty part (a leading, trailing or double /)",
    );
}
