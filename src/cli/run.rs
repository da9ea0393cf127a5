//! `causeseg run`: frames from a camera, a GStreamer pipeline or image files
//! through the model in real time, into image files, per-frame stats and a
//! live browser preview.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use causeseg::sink::preview::{self, Preview, PreviewConfig};
use causeseg::sink::{FrameImages, ImageSink, StatsSink, Visualization};
use causeseg::source::{self, CameraOptions, PixelFormat, SourceOptions, SourceUri};
use causeseg::stream::{Stream, StreamConfig};

/// Options of `causeseg run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Frame source: auto (first camera, else the bundled sample images),
    /// /dev/videoN, v4l2:///dev/videoN, csi://N, gst://PIPELINE, rtsp://URL,
    /// a video file, or an image file, directory or glob (quoted: 'frames/*.png').
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
    let uri = SourceUri::parse(&args.source)?;
    let camera = CameraOptions { resolution: args.resolution, fps: args.fps, format: args.pixel_format };
    let source = source::open(&uri, &SourceOptions { looping: args.looping, camera })?;
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
    if let Some(dir) = &args.save {
        let sink = ImageSink::new(dir, &args.visualize, args.alpha, &concepts.names, &concepts.colors)?;
        stream.add_sink(Box::new(FrameImages::new(sink, args.every)));
    }
    if let Some(path) = &args.stats {
        stream.add_sink(Box::new(StatsSink::create(path, concepts.names.len())?));
    }
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone())?;
    let report = stream.run(source, stop)?;
    println!("{report}");
    anyhow::ensure!(
        report.processed > 0,
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

/// First Ctrl-C (SIGINT), SIGTERM or SIGHUP: stop capture, drain and flush.
/// Second: exit at once.
fn stop_on_signals(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let presses = AtomicU32::new(0);
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::Relaxed) > 0 {
            std::process::exit(130);
        }
        log::info!("stopping: draining frames in flight (Ctrl-C again to abort)");
        stop.store(true, Ordering::Relaxed);
    })
    .context("installing the Ctrl-C handler")
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
