//! Connections and routes. A small server on `std::net` rather than a
//! framework: axum/hyper bring tokio (a long build on a robot's CPU for a
//! handful of requests a second), and tiny_http 0.12 can neither set socket
//! timeouts (a stalled viewer would hold its thread and slot for ever) nor
//! limit the request head (a client could grow memory without bound).
//! Here every connection gets a thread, read and write timeouts, a head and
//! body size limit (`http`), and counts against a cap; stream clients have
//! a lower cap of their own. `httparse` parses request heads.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::concepts::Concepts;
use super::frames::Frames;
use super::http::{read_request, write_mjpeg_head, write_part, Request, Response};
use super::page;
use super::render::Rendering;
use crate::sink::stats::FrameStats;

/// Most simultaneous connections (each has a thread).
const MAX_CONNECTIONS: usize = 64;
/// Most simultaneous stream viewers.
pub(super) const MAX_STREAM_CLIENTS: usize = 16;
/// How long a request head and body may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may block before a stalled client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server threads share.
pub(super) struct Shared {
    /// The address listened on.
    pub(super) addr: SocketAddr,
    pub(super) frames: Arc<Frames>,
    concepts: Arc<Concepts>,
    /// The overlay's default mask opacity.
    alpha: f32,
    token: Option<String>,
    connections: Arc<AtomicUsize>,
    stream_clients: Arc<AtomicUsize>,
    /// Set when the preview is dropped.
    pub(super) stop: AtomicBool,
}

impl Shared {
    pub(super) fn new(addr: SocketAddr, frames: Arc<Frames>, concepts: Arc<Concepts>, alpha: f32, token: Option<String>) -> Self {
        Shared { addr, frames, concepts, alpha, token, connections: Arc::default(), stream_clients: Arc::default(), stop: AtomicBool::new(false) }
    }
}

/// One unit of a capped counter, given back on drop.
struct Permit(Arc<AtomicUsize>);

impl Permit {
    fn acquire(counter: &Arc<AtomicUsize>, cap: usize) -> Option<Self> {
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).ok().map(|_| Permit(counter.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until the preview stops; each gets its own thread.
pub(super) fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    for connection in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let mut stream = match connection {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before
                // accept: wait a little, then go on.
                log::warn!("preview: cannot accept a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stream.set_read_timeout(Some(READ_TIMEOUT)).and(stream.set_write_timeout(Some(WRITE_TIMEOUT))).is_err() {
            continue;
        }
        let Some(permit) = Permit::acquire(&shared.connections, MAX_CONNECTIONS) else {
            let _ = Response::text(503, format!("more than {MAX_CONNECTIONS} connections; try again later")).write_to(&mut stream);
            continue;
        };
        let shared = shared.clone();
        let spawned = std::thread::Builder::new().name("preview-client".into()).spawn(move || {
            let _permit = permit;
            handle(stream, &shared);
        });
        if let Err(e) = spawned {
            log::warn!("preview: cannot start a client thread: {e}");
        }
    }
}

/// Serves one connection: one request, then close.
fn handle(mut stream: TcpStream, shared: &Shared) {
    let response = match respond(&mut stream, shared) {
        Route::Reply(response) => response,
        Route::Stream(rendering) => return stream_mjpeg(stream, rendering, shared),
    };
    // The client may be gone already: nothing to do about it.
    let _ = response.write_to(&mut stream);
    linger(stream);
}

/// Reads one request from `input` and routes it: the response, or the
/// stream rendering asked for; a malformed request gets its error response.
fn respond(input: &mut impl std::io::Read, shared: &Shared) -> Route {
    match read_request(input) {
        Ok(request) => route(&request, shared),
        Err(response) => Route::Reply(response),
    }
}

/// The bytes the server sends for the request `bytes`, as [`handle`] would
/// send them, but without a socket: a stream request gets the MJPEG head only.
pub(super) fn answer(mut bytes: &[u8], shared: &Shared) -> Vec<u8> {
    let mut out = Vec::new();
    let written = match respond(&mut bytes, shared) {
        Route::Reply(response) => response.write_to(&mut out),
        Route::Stream(_) => write_mjpeg_head(&mut out),
    };
    written.expect("writing to memory cannot fail");
    out
}

/// Closes after the client has read the response: closing a socket with
/// unread request bytes (an oversized head or body) would reset the
/// connection and lose the response. Reads at most 64 KiB, for a second.
fn linger(mut stream: TcpStream) {
    use std::io::Read;
    if stream.shutdown(std::net::Shutdown::Write).is_ok() && stream.set_read_timeout(Some(Duration::from_secs(1))).is_ok() {
        let _ = std::io::copy(&mut (&mut stream).take(64 * 1024), &mut std::io::sink());
    }
}

/// What a request gets.
enum Route {
    Reply(Response),
    Stream(Rendering),
}

/// The latest `--stats` line plus the pipeline's FPS and frame count.
#[derive(Serialize)]
struct LiveStats<'a> {
    #[serde(flatten)]
    frame: FrameStats<'a>,
    fps: f64,
    frames: u64,
}

fn route(request: &Request, shared: &Shared) -> Route {
    let reply = |response| Route::Reply(response);
    if let Some(token) = &shared.token {
        let bearer = request.header("authorization").and_then(|h| h.strip_prefix("Bearer "));
        if request.query("token").or(bearer) != Some(token.as_str()) {
            return reply(Response::text(401, "this preview needs its token: open it as http://HOST:PORT/?token=TOKEN (the --serve-token value)"));
        }
    }
    let method = request.method.as_str();
    let allowed = match request.path.as_str() {
        "/concepts" => "GET, POST, PUT",
        "/" | "/index.html" | "/healthz" | "/stats" | "/stream.mjpg" => "GET",
        _ => return reply(Response::text(404, format!("no such page: {}", request.path))),
    };
    if !allowed.split(", ").any(|m| m == method) {
        return reply(Response::text(405, format!("{} takes {allowed}, not {method}", request.path)));
    }
    reply(match (method, request.path.as_str()) {
        ("GET", "/" | "/index.html") => Response::asset("text/html; charset=utf-8", page::index(shared.alpha).as_bytes()),
        ("GET", "/healthz") => Response::text(200, "ok"),
        ("GET", "/stats") => match shared.frames.latest() {
            None => Response::text(503, "no frame processed yet"),
            Some((frames, latest)) => {
                let count = shared.concepts.list().len();
                let frame = FrameStats::new(&latest.frame, count, latest.end_to_end_ms);
                Response::json(200, &LiveStats { frame, fps: latest.fps, frames })
            }
        },
        ("GET", "/concepts") => Response::json(200, &shared.concepts.list()),
        (_, "/concepts") if !shared.addr.ip().is_loopback() && shared.token.is_none() => {
            Response::text(403, format!("renaming is off: this preview listens on {} without --serve-token", shared.addr))
        }
        (_, "/concepts") => shared.concepts.rename(&request.body),
        _ => match Rendering::parse(request.query("view"), request.query("alpha"), shared.alpha) {
            Ok(rendering) => return Route::Stream(rendering),
            Err(reason) => Response::text(400, reason),
        },
    })
}

/// Sends the newest encoding of `rendering` whenever there is a newer one,
/// until the client goes (or a write times out) or the preview stops.
fn stream_mjpeg(mut stream: TcpStream, rendering: Rendering, shared: &Shared) {
    let Some(_permit) = Permit::acquire(&shared.stream_clients, MAX_STREAM_CLIENTS) else {
        let busy = Response::text(503, format!("already {MAX_STREAM_CLIENTS} stream viewers; close one and reload"));
        let _ = busy.write_to(&mut stream);
        return;
    };
    let _ = stream.set_nodelay(true);
    if write_mjpeg_head(&mut stream).is_err() {
        return;
    }
    let mut sent = 0;
    while let Some(encoded) = shared.frames.next_jpeg(rendering, sent) {
        if let Err(e) = write_part(&mut stream, &encoded.jpeg) {
            log::debug!("preview: stream client {:?} gone: {e}", stream.peer_addr());
            return;
        }
        sent = encoded.seq;
    }
}
