//! `causeseg run`: frames from a camera, a GStreamer pipeline, image files
//! or a ROS 2 topic through the model in real time, into image files,
//! per-frame stats, a live browser preview and ROS 2 topics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use causeseg::ros2::{Remap, Ros2Error};
use causeseg::sink::preview::{self, Preview, PreviewConfig};
use causeseg::sink::{FrameImages, ImageSink, StatsSink, Visualization};
use causeseg::source::{self, CameraOptions, PixelFormat, SourceOptions, SourceUri};
use causeseg::stream::{Stream, StreamConfig};
#[cfg(feature = "ros2")]
use causeseg::{
    ros2::{Node, NodeConfig, NodeNames},
    sink::ros2::{Ros2Sink, Ros2SinkConfig},
};

/// Options of `causeseg run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Frame source: auto (first camera, else the bundled sample images),
    /// /dev/videoN, v4l2:///dev/videoN, csi://N, gst://PIPELINE, rtsp://URL,
    /// ros2:///TOPIC (sensor_msgs/Image; CompressedImage for TOPIC ending in
    /// /compressed), a video file, or an image file, directory or glob
    /// (quoted: 'frames/*.png').
    #[arg(long, default_value = "auto")]
    source: String,
    #[command(flatten)]
    model: super::ModelArgs,
    /// Start image and video files again at their end.
    #[arg(long = "loop")]
    looping: bool,
    /// Stop after this many processed frames.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_frames: Option<u64>,
    /// Stop after this many seconds (warm-up not included).
    #[arg(long, value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Save visualisations here: FRAME_labels.png (mono8 concept ids),
    /// FRAME_mask.png, FRAME_overlay.png, FRAME = 6-digit frame index.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Which images --save writes, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "labels,mask,overlay")]
    visualize: Vec<Visualization>,
    /// Mask opacity in overlays, 0..1.
    #[arg(long, default_value_t = 0.5, value_parser = parse_alpha)]
    alpha: f32,
    /// Save every N-th processed frame.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Append one JSON line per processed frame to this file (index, source
    /// timestamp, per-stage latency, concept pixel fractions).
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Serve a live preview on ADDR: PORT (on loopback) or HOST:PORT (e.g.
    /// 0.0.0.0:8080 for the network). The page shows the stream (overlay,
    /// input, mask or labels), the legend with pixel shares, FPS and
    /// latency, and renames concepts in the model's model.toml; also
    /// /stream.mjpg, /stats, /concepts, /healthz.
    #[arg(long, value_name = "ADDR", value_parser = preview::parse_addr)]
    serve: Option<SocketAddr>,
    /// With --serve: every request must carry this token (?token=TOKEN or
    /// `Authorization: Bearer TOKEN`); without one, renaming is refused
    /// unless the preview listens on loopback.
    #[arg(long, env = "CAUSESEG_SERVE_TOKEN", hide_env_values = true)]
    serve_token: Option<String>,
    /// Camera resolution WIDTHxHEIGHT (V4L2 default 640x480, CSI 1280x720).
    #[arg(long, value_parser = super::parse_size)]
    resolution: Option<(u32, u32)>,
    /// Camera frame rate [default: the highest at that resolution; CSI 30].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    fps: Option<u32>,
    /// Camera pixel format (V4L2) [default: any].
    #[arg(long, value_enum)]
    pixel_format: Option<PixelFormat>,
    /// Publish on ROS 2 (feature ros2): ~/labels (mono8 concept ids), ~/color
    /// (rgb8), ~/label_info (vision_msgs/LabelInfo) and ~/concepts (JSON,
    /// both transient local), /diagnostics (per-frame FPS and latency).
    #[arg(long, help_heading = "ROS 2 (feature ros2)")]
    ros2: bool,
    /// With --ros2: also publish ~/overlay (rgb8, mask opacity --alpha).
    #[arg(long, requires = "ros2", help_heading = "ROS 2 (feature ros2)")]
    ros2_overlay: bool,
    /// Reliable image topics (source and --ros2) instead of best effort
    /// (the sensor-data profile, keep last 1).
    #[arg(long, help_heading = "ROS 2 (feature ros2)")]
    ros2_reliable: bool,
    /// Subscribe to sensor_msgs/CompressedImage (JPEG/PNG) instead of Image;
    /// implied by a ros2:// topic ending in /compressed.
    #[arg(long, help_heading = "ROS 2 (feature ros2)")]
    ros2_compressed: bool,
    /// ROS 2 node name.
    #[arg(long, default_value = "causeseg", help_heading = "ROS 2 (feature ros2)")]
    node_name: String,
    /// ROS 2 namespace of the node and its relative topics.
    #[arg(long, default_value = "/", help_heading = "ROS 2 (feature ros2)")]
    namespace: String,
    /// ROS 2 remapping rule, repeatable: a topic (~/labels:=/seg/labels,
    /// image:=/cam/image_raw), __node:=NAME or __ns:=/NS. The DDS domain
    /// comes from ROS_DOMAIN_ID.
    #[arg(long, value_name = "FROM:=TO", value_parser = parse_remap, help_heading = "ROS 2 (feature ros2)")]
    remap: Vec<Remap>,
    /// header.frame_id of published images when the source has none (all
    /// but ros2://, whose messages' headers are copied).
    #[arg(long, default_value = "camera", help_heading = "ROS 2 (feature ros2)")]
    frame_id: String,
    /// Seconds between FPS / latency log lines.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    log_every: Duration,
}

/// A positive, finite number of seconds.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("'{text}' is not a positive number of seconds")),
    }
}

/// A ROS 2 remapping rule FROM:=TO.
fn parse_remap(text: &str) -> Result<Remap, String> {
    Remap::parse(text).map_err(|e| match e {
        Ros2Error::Remap { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// An opacity between 0 and 1.
fn parse_alpha(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(a) if (0.0..=1.0).contains(&a) => Ok(a),
        _ => Err(format!("'{text}' is not an opacity between 0 and 1")),
    }
}

/// Opens the source, loads the model once, streams until the source ends, a
/// limit is reached or Ctrl-C, then prints the summary.
pub fn run(args: RunArgs, cache: &Path) -> anyhow::Result<()> {
    let mut uri = SourceUri::parse(&args.source)?;
    if let SourceUri::Ros2 { compressed, .. } = &mut uri {
        *compressed |= args.ros2_compressed;
    }
    let stop = Arc::new(AtomicBool::new(false));
    #[cfg(feature = "ros2")]
    let ros2 = ros2_node(&args, &uri, &stop)?;
    #[cfg(not(feature = "ros2"))]
    anyhow::ensure!(!args.ros2, "--ros2: this build has no ros2 support (rebuild with `cargo build --release --features ros2`)");
    let camera = CameraOptions { resolution: args.resolution, fps: args.fps, format: args.pixel_format };
    let options = SourceOptions {
        looping: args.looping,
        camera,
        #[cfg(feature = "ros2")]
        ros2: ros2.clone(),
    };
    let source = source::open(&uri, &options)?;
    let segmenter = args.model.load(cache)?;
    let concepts = segmenter.model().manifest.concepts.clone();
    let config = StreamConfig {
        max_frames: args.max_frames,
        duration: args.duration,
        log_every: args.log_every,
        ..Default::default()
    };
    let model_dir = segmenter.model().dir.clone();
    let mut stream = Stream::new(segmenter, config);
    // Kept until the end of the run: dropping it stops the server.
    let _preview = match args.serve {
        Some(addr) => {
            let config = PreviewConfig { model_dir: &model_dir, names: &concepts.names, colors: &concepts.colors, alpha: args.alpha, token: args.serve_token.clone() };
            let preview = Preview::start(addr, config).map_err(|e| anyhow::anyhow!("--serve {e}"))?;
            eprintln!("preview: http://{}/", preview.addr());
            stream.add_sink(Box::new(preview.sink()));
            Some(preview)
        }
        None => None,
    };
    #[cfg(feature = "ros2")]
    if let Some(node) = ros2.filter(|_| args.ros2) {
        let config = Ros2SinkConfig {
            names: &concepts.names,
            colors: &concepts.colors,
            overlay: args.ros2_overlay.then_some(args.alpha),
            frame_id: args.frame_id.clone(),
        };
        stream.add_sink(Box::new(Ros2Sink::new(node, config)?));
    }
    if let Some(dir) = &args.save {
        let sink = ImageSink::new(dir, &args.visualize, args.alpha, &concepts.names, &concepts.colors)?;
        stream.add_sink(Box::new(FrameImages::new(sink, args.every)));
    }
    if let Some(path) = &args.stats {
        stream.add_sink(Box::new(StatsSink::create(path, concepts.names.len())?));
    }
    let signalled = stop_on_signals(stop.clone())?;
    let report = stream.run(source, stop)?;
    println!("{report}");
    // Stopped by a signal before the first frame (a ROS 2 camera that never
    // published, say): what was asked for, not an error.
    anyhow::ensure!(
        report.processed > 0 || signalled.load(Ordering::Relaxed),
        "no frame could be processed from {} ({} captured, {} corrupt)",
        report.source,
        report.captured,
        report.corrupt
    );
    if let Some(dir) = &args.save {
        println!("saved: {}", dir.display());
    }
    Ok(())
}

/// The ROS 2 node, when the source or `--ros2` needs one; its sources end
/// when `stop` is set.
#[cfg(feature = "ros2")]
fn ros2_node(args: &RunArgs, uri: &SourceUri, stop: &Arc<AtomicBool>) -> anyhow::Result<Option<Node>> {
    if !args.ros2 && !matches!(uri, SourceUri::Ros2 { .. }) {
        return Ok(None);
    }
    let names = NodeNames::new(&args.node_name, &args.namespace, &args.remap)?;
    let config = NodeConfig { names, reliable: args.ros2_reliable, domain_id: causeseg::ros2::domain_id_from_env()? };
    Ok(Some(Node::new(&config, stop.clone())?))
}

/// First Ctrl-C (SIGINT), SIGTERM or SIGHUP: stop capture, drain and flush.
/// Second: exit at once. The flag returned tells whether a signal came.
fn stop_on_signals(stop: Arc<AtomicBool>) -> anyhow::Result<Arc<AtomicBool>> {
    let presses = AtomicU32::new(0);
    let signalled = Arc::new(AtomicBool::new(false));
    let seen = signalled.clone();
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::Relaxed) > 0 {
            std::process::exit(130);
        }
        log::info!("stopping: draining frames in flight (Ctrl-C again to abort)");
        seen.store(true, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
    })
    .context("installing the Ctrl-C handler")?;
    Ok(signalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err() && parse_seconds("inf").is_err() && parse_seconds("x").is_err());
        assert_eq!(parse_alpha("0.25"), Ok(0.25));
        assert!(parse_alpha("1.5").unwrap_err().contains("between 0 and 1"));
    }
}
