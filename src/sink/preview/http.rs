//! The small part of HTTP/1.1 the preview speaks: one request per
//! connection (`Connection: close`), its head parsed by `httparse` within
//! size limits, a `Content-Length` body, plain responses, and MJPEG
//! (`multipart/x-mixed-replace`) parts.

use std::io::{self, Read, Write};

use serde::Serialize;

/// Largest request head (request line and headers).
pub(super) const MAX_HEAD: usize = 8 * 1024;
/// Largest request body (a rename request is well under 200 bytes).
pub(super) const MAX_BODY: usize = 4 * 1024;
/// Most request headers.
const MAX_HEADERS: usize = 32;
/// The MJPEG part boundary.
const BOUNDARY: &str = "causeseg-frame";

/// A parsed request.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) method: String,
    /// The path, without the query.
    pub(super) path: String,
    /// Query parameters, percent-decoded.
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Request {
    /// The first value of query parameter `key`.
    pub(super) fn query(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of header `name` (case-insensitive).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A complete response.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    content_type: &'static str,
    pub(super) body: Vec<u8>,
}

impl Response {
    /// A UTF-8 text response (errors carry their reason this way).
    pub(super) fn text(status: u16, text: impl Into<String>) -> Self {
        let mut body = text.into().into_bytes();
        body.push(b'\n');
        Response { status, content_type: "text/plain; charset=utf-8", body }
    }

    /// A JSON response.
    pub(super) fn json(status: u16, value: &impl Serialize) -> Self {
        Response { status, content_type: "application/json", body: serde_json::to_vec(value).expect("plain data serialises") }
    }

    /// A static asset.
    pub(super) fn asset(content_type: &'static str, body: &[u8]) -> Self {
        Response { status: 200, content_type, body: body.to_vec() }
    }

    /// Writes the response and flushes.
    pub(super) fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        )?;
        out.write_all(&self.body)?;
        out.flush()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Reads one request; on a malformed, oversized or unfinished one, the
/// error response to send.
pub(super) fn read_request(input: &mut impl Read) -> Result<Request, Response> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => return Err(Response::text(400, "incomplete request head")),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(Response::text(408, "the request head did not arrive in time"))
            }
            Err(e) => return Err(Response::text(400, format!("cannot read the request: {e}"))),
        };
        buffer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) if head_len <= MAX_HEAD => return finish(&parsed, buffer[head_len..].to_vec(), input),
            Ok(httparse::Status::Partial) if buffer.len() <= MAX_HEAD => {}
            Ok(_) => return Err(Response::text(431, format!("request head over {MAX_HEAD} bytes"))),
            Err(httparse::Error::TooManyHeaders) => return Err(Response::text(431, format!("more than {MAX_HEADERS} request headers"))),
            Err(e) => return Err(Response::text(400, format!("malformed HTTP request: {e}"))),
        }
    }
}

/// Builds the request from its parsed head and reads the rest of its body.
fn finish(head: &httparse::Request, mut body: Vec<u8>, input: &mut impl Read) -> Result<Request, Response> {
    let headers: Vec<(String, String)> =
        head.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());
    if header("transfer-encoding").is_some() {
        return Err(Response::text(411, "chunked request bodies are not supported: send Content-Length"));
    }
    let length = match header("content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(length)) if length <= MAX_BODY => length,
        Some(Ok(length)) => return Err(Response::text(413, format!("request body of {length} bytes; at most {MAX_BODY}"))),
        Some(Err(_)) => return Err(Response::text(400, "malformed Content-Length")),
    };
    // Bytes past the body (a pipelined request) are ignored: one request
    // per connection.
    let received = body.len().min(length);
    body.resize(length, 0);
    input.read_exact(&mut body[received..]).map_err(|_| Response::text(400, "incomplete request body"))?;
    let target = head.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: head.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.split('&').filter(|p| !p.is_empty()).map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        }).collect(),
        headers,
        body,
    })
}

/// Decodes `%XX` escapes and `+` (a space) in a query component; a
/// malformed escape stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 3).filter(|h| bytes[i] == b'%' && h.iter().all(u8::is_ascii_hexdigit));
        match (escape, bytes[i]) {
            (Some(hex), _) => {
                out.push(u8::from_str_radix(std::str::from_utf8(hex).expect("hex digits"), 16).expect("hex digits"));
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The response head of an MJPEG stream; parts follow ([`write_part`]).
pub(super) fn write_mjpeg_head(out: &mut impl Write) -> io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    )?;
    out.flush()
}

/// Writes one JPEG as an MJPEG part and flushes.
pub(super) fn write_part(out: &mut impl Write, jpeg: &[u8]) -> io::Result<()> {
    write!(out, "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", jpeg.len())?;
    out.write_all(jpeg)?;
    out.write_all(b"\r\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Request, (u16, String)> {
        read_request(&mut &bytes[..]).map_err(|r| (r.status, String::from_utf8(r.body).unwrap()))
    }

    #[test]
    fn parses_a_request_with_query_and_body() {
        let request = read(b"POST /concepts?token=a%20b+c&x HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\n\r\nhello").unwrap();
        assert_eq!((request.method.as_str(), request.path.as_str(), request.body.as_slice()), ("POST", "/concepts", &b"hello"[..]));
        assert_eq!((request.query("token"), request.query("x"), request.query("y")), (Some("a b c"), Some(""), None));
        assert_eq!(request.header("Content-Length"), Some("5"));
    }

    #[test]
    fn bad_requests_get_a_status_and_a_reason() {
        let cases: [(&[u8], u16, &str); 7] = [
            (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
            (b"GET / HTTP/1.1\r\nHost", 400, "incomplete request head"),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "malformed HTTP request"),
            (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort", 400, "incomplete request body"),
            (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, "malformed Content-Length"),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", 413, "request body of 99999 bytes; at most 4096"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "send Content-Length"),
        ];
        for (bytes, status, needle) in cases {
            let (got, reason) = read(bytes).unwrap_err();
            assert!(got == status && reason.contains(needle), "{:?}: {got} {reason}", String::from_utf8_lossy(bytes));
        }
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(read(long.as_bytes()).unwrap_err().0, 431);
        let many: String = (0..40).map(|i| format!("X{i}: y\r\n")).collect();
        assert_eq!(read(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err(), (431, "more than 32 request headers\n".into()));
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("%41%zz%4"), "A%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%+1"), "% 1");
    }

    #[test]
    fn responses_and_mjpeg_parts_are_framed() {
        let mut out = Vec::new();
        Response::text(404, "no such page").write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n") && text.contains("Content-Length: 13\r\n") && text.ends_with("\r\n\r\nno such page\n"), "{text}");

        let mut out = Vec::new();
        write_mjpeg_head(&mut out).unwrap();
        write_part(&mut out, &[0xff, 0xd8, 0xff, 0xd9]).unwrap();
        write_part(&mut out, b"second").unwrap();
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = std::str::from_utf8(&out[..head_end]).unwrap();
        assert!(head.contains(&format!("Content-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\n")), "{head}");
        let mut rest = &out[head_end..];
        for body in [&[0xff, 0xd8, 0xff, 0xd9][..], b"second"] {
            let part_head = format!("--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", body.len());
            assert!(rest.starts_with(part_head.as_bytes()));
            rest = &rest[part_head.len()..];
            assert_eq!(&rest[..body.len()], body);
            assert_eq!(&rest[body.len()..body.len() + 2], b"\r\n");
            rest = &rest[body.len() + 2..];
        }
        assert!(rest.is_empty());
    }
}
