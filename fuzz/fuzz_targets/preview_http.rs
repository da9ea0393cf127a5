//! The live preview's HTTP handling: any bytes as a request (head parsing
//! with its size limits, Content-Length bodies, query decoding, the token
//! check, routes, the rename endpoint's JSON), answered as the server would
//! (`causeseg::sink::preview::answer`). Every answer must be one complete
//! HTTP/1.1 response whose Content-Length matches its body.
//!
//! Input: 1 byte of settings (token or not, loopback or not), then the request.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;

use causeseg::sink::preview::{answer, PreviewConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&settings, request)) = data.split_first() else { return };
    let names = ["sky".to_string(), "road".to_string(), "car".to_string()];
    let colors = [[70, 130, 180], [128, 64, 128], [0, 0, 142]];
    // A model directory that does not exist: a rename that gets as far as
    // saving fails with 500, and nothing is written.
    let config = PreviewConfig {
        model_dir: Path::new("/nonexistent/causeseg-fuzz-model"),
        names: &names,
        colors: &colors,
        alpha: 0.5,
        token: (settings & 1 == 1).then(|| "s3cret".to_string()),
    };
    let addr: SocketAddr = if settings & 2 == 2 { "0.0.0.0:8080" } else { "127.0.0.1:8080" }.parse().unwrap();
    let response = answer(request, addr, config);
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = std::str::from_utf8(&response[..head_end]).expect("an ASCII head");
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    if let Some(length) = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")) {
        assert_eq!(length.parse::<usize>().unwrap(), response.len() - head_end, "{head}");
    } else {
        assert!(head.contains("multipart/x-mixed-replace"), "only the stream has no length: {head}");
    }
});
