//! HTTP/1.1 framing without sockets: parsing a request out of a byte buffer (with size
//! limits), and producing response bytes, either whole (`Content-Length`) or as a stream
//! (chunked transfer encoding, or close-delimited for HTTP/1.0 clients).
//!
//! Request bodies come with `Content-Length` or `Transfer-Encoding: chunked` (decoded
//! here; chunk extensions and trailers are skipped). Other transfer codings get 501, and
//! a request with both headers gets 400: that ambiguity is how requests are smuggled
//! past proxies.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Most header lines httparse is given room for; `Limits::max_headers` may lower it.
pub const HEADER_SLOTS: usize = 64;

/// Size limits for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, bytes (beyond: 431).
    pub max_header_bytes: usize,
    /// Header lines (beyond: 431); at most [`HEADER_SLOTS`].
    pub max_headers: usize,
    /// Body bytes (beyond: 413).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: HEADER_SLOTS,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// One parsed request, owning its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor_version: u8,
    /// Header names lower-cased, values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Whether the connection may stay open after the response.
    pub keep_alive: bool,
}

impl Request {
    /// The first header called `name` (lower-case), as text if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| core::str::from_utf8(v).ok())
    }
}

/// Why bytes are not a request we accept. Each maps to a status code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP (bad request line, bad header syntax, bad bytes).
    Malformed(String),
    /// Request line and headers exceed `max_header_bytes`.
    HeadersTooLarge,
    /// More header lines than `max_headers`.
    TooManyHeaders,
    /// `Content-Length` above `max_body_bytes`.
    BodyTooLarge { length: u64, limit: usize },
    /// `Content-Length` is not a number, or several disagree.
    BadContentLength,
    /// A transfer coding other than plain `chunked`.
    TransferEncoding,
    /// Both `Transfer-Encoding` and `Content-Length`.
    AmbiguousLength,
    /// A chunked body that breaks the chunk syntax.
    BadChunk,
    /// Neither HTTP/1.0 nor HTTP/1.1.
    Version,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_)
            | HttpError::BadContentLength
            | HttpError::AmbiguousLength
            | HttpError::BadChunk => 400,
            HttpError::HeadersTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::TransferEncoding => 501,
            HttpError::Version => 505,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Malformed(what) => write!(f, "malformed HTTP request: {what}"),
            HttpError::HeadersTooLarge => f.write_str("request headers are too large"),
            HttpError::TooManyHeaders => f.write_str("too many request headers"),
            HttpError::BodyTooLarge { length, limit } => {
                write!(
                    f,
                    "request body of {length} bytes exceeds the limit of {limit} bytes"
                )
            }
            HttpError::BadContentLength => f.write_str("invalid Content-Length header"),
            HttpError::TransferEncoding => {
                f.write_str("only the chunked transfer coding is supported for request bodies")
            }
            HttpError::AmbiguousLength => {
                f.write_str("a request must not have both Transfer-Encoding and Content-Length")
            }
            HttpError::BadChunk => f.write_str("malformed chunked request body"),
            HttpError::Version => f.write_str("only HTTP/1.0 and HTTP/1.1 are supported"),
        }
    }
}

/// The outcome of looking for a request at the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// The head is complete and acceptable but the body has not all arrived; the client
    /// asked (`Expect: 100-continue`) to be told to send it.
    AwaitingBody { expect_continue: bool },
    /// A whole request and how many bytes of the buffer it used.
    Complete(Request, usize),
}

/// Parses one request from the start of `buf`.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let n_slots = limits.max_headers.clamp(1, HEADER_SLOTS);
    let mut req = httparse::Request::new(&mut slots[..n_slots]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(Parsed::Incomplete);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HttpError::Version),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > limits.max_header_bytes {
        return Err(HttpError::HeadersTooLarge);
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let minor_version = req.version.unwrap_or(1);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<u64> = None;
    let mut connection_close = minor_version == 0;
    let mut expect_continue = false;
    let mut chunked = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                let v = core::str::from_utf8(h.value)
                    .ok()
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(HttpError::BadContentLength)?;
                if content_length.is_some_and(|old| old != v) {
                    return Err(HttpError::BadContentLength);
                }
                content_length = Some(v);
            }
            "transfer-encoding" => {
                let v = core::str::from_utf8(h.value).unwrap_or("");
                if chunked || !v.trim().eq_ignore_ascii_case("chunked") {
                    return Err(HttpError::TransferEncoding);
                }
                chunked = true;
            }
            "expect" => {
                expect_continue = minor_version >= 1
                    && core::str::from_utf8(h.value)
                        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
            }
            "connection" => {
                let v = core::str::from_utf8(h.value).unwrap_or("");
                for token in v.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        connection_close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        connection_close = false;
                    }
                }
            }
            _ => {}
        }
        headers.push((name, h.value.to_vec()));
    }
    if chunked {
        if content_length.is_some() {
            return Err(HttpError::AmbiguousLength);
        }
        return Ok(match dechunk(&buf[head_len..], limits)? {
            None => Parsed::AwaitingBody { expect_continue },
            Some((body, used)) => Parsed::Complete(
                Request {
                    method,
                    path,
                    query,
                    minor_version,
                    headers,
                    body,
                    keep_alive: !connection_close,
                },
                head_len + used,
            ),
        });
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body_bytes as u64 {
        return Err(HttpError::BodyTooLarge {
            length: body_len,
            limit: limits.max_body_bytes,
        });
    }
    // Fits in usize: bounded by max_body_bytes above.
    let body_len = body_len as usize;
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(Parsed::AwaitingBody { expect_continue });
    }
    Ok(Parsed::Complete(
        Request {
            method,
            path,
            query,
            minor_version,
            headers,
            body: buf[head_len..total].to_vec(),
            keep_alive: !connection_close,
        },
        total,
    ))
}

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// The index of the CR ending the line that starts at `from`, if it has arrived.
fn line_end(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

/// Decodes a chunked body at the start of `data`: `None` until all of it (up to the
/// blank line after the trailers) has arrived, then the body and the bytes used.
fn dechunk(data: &[u8], limits: &Limits) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(end) = line_end(data, pos) else {
            if data.len() - pos > MAX_CHUNK_LINE {
                return Err(HttpError::BadChunk);
            }
            return Ok(None);
        };
        if end - pos > MAX_CHUNK_LINE {
            return Err(HttpError::BadChunk);
        }
        let line = core::str::from_utf8(&data[pos..end]).map_err(|_| HttpError::BadChunk)?;
        // Chunk extensions (`;name=value`) carry nothing we use.
        let digits = line.split(';').next().unwrap_or("").trim();
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(HttpError::BadChunk);
        }
        let size = usize::from_str_radix(digits, 16).map_err(|_| HttpError::BadChunk)?;
        if body.len().saturating_add(size) > limits.max_body_bytes {
            return Err(HttpError::BodyTooLarge {
                length: body.len().saturating_add(size) as u64,
                limit: limits.max_body_bytes,
            });
        }
        pos = end + 2;
        if size == 0 {
            // Trailer lines, then a blank line, end the body.
            let trailers_start = pos;
            loop {
                let Some(end) = line_end(data, pos) else {
                    if data.len() - trailers_start > limits.max_header_bytes {
                        return Err(HttpError::HeadersTooLarge);
                    }
                    return Ok(None);
                };
                if end - trailers_start > limits.max_header_bytes {
                    return Err(HttpError::HeadersTooLarge);
                }
                let blank = end == pos;
                pos = end + 2;
                if blank {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[pos..pos + size]);
        if &data[pos + size..pos + size + 2] != b"\r\n" {
            return Err(HttpError::BadChunk);
        }
        pos += size + 2;
    }
}

/// The reason phrase of the status codes this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A whole response, written with `Content-Length`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers (name, value).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

pub const JSON: &str = "application/json; charset=utf-8";
pub const TEXT: &str = "text/plain; charset=utf-8";
pub const NDJSON: &str = "application/x-ndjson";
pub const SSE: &str = "text/event-stream";
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        // Serialising our own types to a Vec cannot fail (no maps with non-string keys).
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self::new(status, JSON, body)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire; `keep_alive` false adds `Connection: close`.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = head(self.status, self.content_type, &self.headers, keep_alive);
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

fn head(
    status: u16,
    content_type: &str,
    headers: &[(&'static str, String)],
    keep_alive: bool,
) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 {status} {}\r\nServer: embodios\r\nContent-Type: {content_type}\r\n",
        reason(status)
    );
    for (name, value) in headers {
        s.push_str(name);
        s.push_str(": ");
        s.push_str(value);
        s.push_str("\r\n");
    }
    if !keep_alive {
        s.push_str("Connection: close\r\n");
    }
    s.into_bytes()
}

/// How a streamed body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked` (HTTP/1.1): the connection can be reused.
    Chunked,
    /// Raw bytes until the connection closes (HTTP/1.0 has no chunked encoding).
    UntilClose,
}

impl Framing {
    pub fn for_version(minor_version: u8) -> Self {
        if minor_version == 0 {
            Framing::UntilClose
        } else {
            Framing::Chunked
        }
    }

    /// The status line and headers of a streamed response.
    pub fn head(self, status: u16, content_type: &str, keep_alive: bool) -> Vec<u8> {
        let mut out = match self {
            Framing::Chunked => {
                let mut h = head(status, content_type, &[], keep_alive);
                h.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                h
            }
            Framing::UntilClose => head(status, content_type, &[], false),
        };
        if content_type == SSE {
            // Proxies must not buffer or cache an event stream.
            out.extend_from_slice(b"Cache-Control: no-cache\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// One piece of the body, framed. Empty data gives nothing (an empty chunk would
    /// end a chunked body).
    pub fn chunk(self, data: &[u8]) -> Vec<u8> {
        match self {
            Framing::UntilClose => data.to_vec(),
            Framing::Chunked if data.is_empty() => Vec::new(),
            Framing::Chunked => {
                let mut out = format!("{:x}\r\n", data.len()).into_bytes();
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
                out
            }
        }
    }

    /// The end of the body.
    pub fn end(self) -> &'static [u8] {
        match self {
            Framing::Chunked => b"0\r\n\r\n",
            Framing::UntilClose => b"",
        }
    }
}
