//! Live browser preview (`causeseg run --serve ADDR`): an HTTP server inside
//! the run process that shows the stream, its concepts and its timings, and
//! lets a person name the concepts.
//!
//! | path | what |
//! | --- | --- |
//! | `/` | the page: live stream, legend with live pixel fractions, FPS and per-stage latency; click a concept to rename it or change its colour |
//! | `/stream.mjpg?view=overlay\|input\|mask\|labels&alpha=0..1` | the stream as MJPEG (`multipart/x-mixed-replace`) |
//! | `/stats` | the latest frame's `--stats` line (JSON) plus `fps` and `frames` |
//! | `/concepts` | GET: `[{"id", "name", "color": "#rrggbb"}]`; POST or PUT `{"id", "name", "color"}`: rename (written to `model.toml`) |
//! | `/healthz` | `ok` |
//!
//! The pipeline never waits for a browser: [`PreviewSink::write`] only
//! swaps the newest frame into a slot; one encoder thread renders and
//! JPEG-encodes a frame only when a stream client is waiting for it, once
//! per view for all clients; each client has its own thread that sends the
//! newest encoding (latest-frame-wins), so a slow or stalled client skips
//! frames or blocks only itself, and is dropped when a write times out.
//!
//! Files: `server` (connections, limits, routes), `http` (request
//! parsing and responses), `frames` (the latest-frame slot and the encoder
//! thread), `render` (views and JPEG), `concepts` (names, colours and the
//! rename endpoint), `page` (the embedded page).

mod concepts;
mod frames;
mod http;
mod page;
mod render;
mod server;

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use concepts::Concepts;
use frames::{Frames, Snapshot};
use server::Shared;

use super::{FrameSink, ProcessedFrame, SinkError};
use crate::timing::ms_since;

/// Errors while starting the preview server.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The address cannot be listened on (in use, not on this machine, or
    /// a privileged port).
    #[error("{addr}: {}", bind_reason(.error))]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        error: io::Error,
    },
    /// A server thread could not start.
    #[error("cannot start the preview's {0} thread: {1}")]
    Spawn(&'static str, io::Error),
}

fn bind_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::AddrInUse => "address in use".into(),
        io::ErrorKind::AddrNotAvailable => "address not available on this machine".into(),
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)".into(),
        _ => error.to_string(),
    }
}

/// Parses `--serve`: `PORT` (on loopback, 127.0.0.1) or `HOST:PORT`.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok((Ipv4Addr::LOCALHOST, port).into());
    }
    let usage = || format!("'{text}' is not PORT or HOST:PORT (e.g. 8080 or 0.0.0.0:8080)");
    text.to_socket_addrs().map_err(|_| usage())?.next().ok_or_else(usage)
}

/// What the preview shows and may change.
#[derive(Debug, Clone)]
pub struct PreviewConfig<'a> {
    /// The model directory whose `model.toml` renames are written to.
    pub model_dir: &'a Path,
    /// Concept display names, by id.
    pub names: &'a [String],
    /// Concept display colours, by id.
    pub colors: &'a [[u8; 3]],
    /// Default mask opacity of the overlay view, 0..=1.
    pub alpha: f32,
    /// When set, every request must carry it (`?token=` or
    /// `Authorization: Bearer`).
    pub token: Option<String>,
}

/// A running preview server; dropping it stops it.
pub struct Preview {
    shared: Arc<Shared>,
}

impl Preview {
    /// Listens on `addr` (port 0: any free port) and starts the server and
    /// encoder threads. Warns when the address is not loopback and no token
    /// protects it.
    pub fn start(addr: SocketAddr, config: PreviewConfig<'_>) -> Result<Preview, PreviewError> {
        let listener = TcpListener::bind(addr).map_err(|error| PreviewError::Bind { addr, error })?;
        let local = listener.local_addr().map_err(|error| PreviewError::Bind { addr, error })?;
        if !local.ip().is_loopback() && config.token.is_none() {
            log::warn!("the preview on {local} is open to the network without --serve-token; renaming concepts is off");
        }
        let frames = Arc::new(Frames::default());
        let concepts = Arc::new(Concepts::new(config.model_dir, config.names, config.colors));
        let shared = Arc::new(Shared::new(local, frames.clone(), concepts.clone(), config.alpha.clamp(0.0, 1.0), config.token));
        frames::spawn_encoder(frames, concepts).map_err(|e| PreviewError::Spawn("encoder", e))?;
        std::thread::Builder::new()
            .name("preview-accept".into())
            .spawn({
                let shared = shared.clone();
                move || server::accept_loop(listener, &shared)
            })
            .map_err(|e| PreviewError::Spawn("accept", e))?;
        Ok(Preview { shared })
    }

    /// The address the server listens on (with the port chosen for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A sink that hands each processed frame to the preview.
    pub fn sink(&self) -> PreviewSink {
        PreviewSink { frames: self.shared.frames.clone(), arrivals: VecDeque::new() }
    }
}

impl Drop for Preview {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.frames.close();
        // Wake the accept loop, blocked in accept(), so that it sees the stop.
        let mut wake = self.shared.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect(wake);
    }
}

/// The bytes the preview server would answer to the raw request `request`
/// arriving on `addr`, with no frame processed yet: the same parsing, size
/// limits, token check and routes as a live server, without a socket or
/// threads (a `/stream.mjpg` request gets the stream's response head only).
/// Renames are written to `config.model_dir`'s `model.toml`. For tests and
/// fuzzing (`fuzz/fuzz_targets/preview_http.rs`).
pub fn answer(request: &[u8], addr: SocketAddr, config: PreviewConfig<'_>) -> Vec<u8> {
    let concepts = Arc::new(Concepts::new(config.model_dir, config.names, config.colors));
    let shared = Shared::new(addr, Arc::new(Frames::default()), concepts, config.alpha.clamp(0.0, 1.0), config.token);
    server::answer(request, &shared)
}

/// Frames whose arrival times give the preview's FPS figure.
const FPS_WINDOW: usize = 10;

/// The [`FrameSink`] of a [`Preview`]: keeps only the newest frame.
pub struct PreviewSink {
    frames: Arc<Frames>,
    arrivals: VecDeque<Instant>,
}

impl PreviewSink {
    /// Frames per second over the last [`FPS_WINDOW`] arrivals (0 before two).
    fn fps(&self) -> f64 {
        match (self.arrivals.front(), self.arrivals.back()) {
            (Some(first), Some(last)) if last > first => (self.arrivals.len() - 1) as f64 / (*last - *first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

impl FrameSink for PreviewSink {
    fn write(&mut self, processed: &ProcessedFrame) -> Result<(), SinkError> {
        let end_to_end_ms = ms_since(processed.frame.captured);
        if self.arrivals.len() == FPS_WINDOW {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(Instant::now());
        self.frames.put(Snapshot { frame: processed.clone(), end_to_end_ms, fps: self.fps() });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(parse_addr("0.0.0.0:8080").unwrap(), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(parse_addr("[::1]:9000").unwrap(), "[::1]:9000".parse().unwrap());
        assert_eq!(parse_addr("80800").unwrap_err(), "'80800' is not PORT or HOST:PORT (e.g. 8080 or 0.0.0.0:8080)");
        assert!(parse_addr("no port").is_err());
    }

    #[test]
    fn a_port_in_use_is_named() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = holder.local_addr().unwrap();
        let config = PreviewConfig { model_dir: Path::new("m"), names: &[], colors: &[], alpha: 0.5, token: None };
        let error = Preview::start(taken, config).err().unwrap().to_string();
        assert_eq!(error, format!("{taken}: address in use"));
    }
}
