//! The API crate driven with raw bytes against a fake backend: every error path, the
//! streaming framings (chunked NDJSON, SSE, close-delimited), pipelining, auth, metrics,
//! client disconnects, and random bytes that must never panic.

use embodios_api::{
    Api, Backend, BackendError, Config, Connection, Env, Event, Finish, GenRequest, GenResult,
    JobEnd, ModelInfo, Output, Prompt, TokenSink,
};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Fixed wall clock; a monotonic clock that advances 1 ms per reading.
struct FakeEnv {
    ticks: Mutex<u64>,
}

impl Env for FakeEnv {
    fn unix_ms(&self) -> u64 {
        1_735_689_600_000
    }
    fn monotonic_ns(&self) -> u64 {
        let mut t = self.ticks.lock().unwrap();
        *t += 1_000_000;
        *t
    }
    fn memory_bytes(&self) -> Option<u64> {
        Some(12345)
    }
}

/// Generates the words of the prompt (or of the last chat message) back, one piece per
/// word, so tests know exactly what a generation produces.
#[derive(Default)]
struct EchoBackend {
    last: Option<GenRequest>,
    /// Pieces the sink accepted in the last generation.
    sent: usize,
}

fn model_info(name: &str) -> ModelInfo {
    ModelInfo {
        name: name.into(),
        aliases: vec!["Echo Model".into()],
        family: "llama".into(),
        parameter_count: 134_515_008,
        quantization: "Q4_1".into(),
        size_bytes: 1000,
        context_length: 2048,
        digest: "abc".into(),
        template: "{{chatml}}".into(),
        modified_unix_s: 0,
    }
}

impl Backend for EchoBackend {
    fn models(&self) -> Vec<ModelInfo> {
        vec![model_info("echo")]
    }

    fn generate(
        &mut self,
        req: &GenRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenResult, BackendError> {
        self.last = Some(req.clone());
        self.sent = 0;
        let source = match &req.prompt {
            Prompt::Raw(p) => p.clone(),
            Prompt::Chat(m) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
        };
        if source.contains("FAIL") {
            return Err(BackendError::Invalid("prompt too long".into()));
        }
        let words: Vec<&str> = source.split_whitespace().collect();
        let max = req.max_tokens.map_or(usize::MAX, |m| m as usize);
        let mut r = GenResult {
            prompt_tokens: words.len() as u64,
            prompt_eval_ns: 5,
            eval_ns: 7,
            finish: Some(Finish::Stop),
            ..GenResult::default()
        };
        for (i, w) in words.iter().enumerate() {
            if i >= max {
                r.finish = Some(Finish::Length);
                break;
            }
            let piece = format!(" {w}");
            r.completion_tokens += 1;
            if !sink.text(&piece) {
                r.finish = Some(Finish::Cancelled);
                break;
            }
            self.sent += 1;
            r.text.push_str(&piece);
        }
        Ok(r)
    }
}

fn api_with(config: Config) -> Api {
    Api::new(
        config,
        EchoBackend::default().models(),
        Box::new(FakeEnv {
            ticks: Mutex::new(0),
        }),
    )
}

fn api() -> Api {
    api_with(Config::default())
}

/// Collects what the server sends; fails every send after `fail_after` sends.
#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
    sends: usize,
    fail_after: Option<usize>,
}

impl Output for Wire {
    fn send(&mut self, bytes: &[u8]) -> bool {
        if self.fail_after.is_some_and(|n| self.sends >= n) {
            return false;
        }
        self.sends += 1;
        self.bytes.extend_from_slice(bytes);
        true
    }
}

/// Feeds `input` to a fresh connection and drives it until it needs more bytes or
/// closes; returns everything sent and whether the server closed.
fn exchange(api: &Api, backend: &mut EchoBackend, input: &[u8]) -> (Vec<u8>, bool) {
    let mut conn = Connection::new();
    conn.feed(input);
    let mut wire = Wire::default();
    for _ in 0..100 {
        match conn.next_event(api) {
            Event::NeedMore => return (wire.bytes, false),
            Event::Respond { bytes, close } => {
                wire.send(&bytes);
                if close {
                    return (wire.bytes, true);
                }
            }
            Event::Generate(job) => match api.run_job(job, backend, &mut wire) {
                JobEnd::Done { keep_alive: true } => {}
                JobEnd::Done { keep_alive: false } | JobEnd::Disconnected => {
                    return (wire.bytes, true)
                }
            },
        }
    }
    panic!("connection did not settle");
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Splits a byte stream into responses (Content-Length, chunked, or until the end).
fn replies(mut data: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response head ends with a blank line");
        let head = std::str::from_utf8(&data[..end]).expect("head is text");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").expect("header line");
                (n.to_string(), v.to_string())
            })
            .collect();
        let mut rest = &data[end + 4..];
        let find = |n: &str| {
            headers
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let body;
        if let Some(len) = find("content-length") {
            let len: usize = len.parse().unwrap();
            body = rest[..len].to_vec();
            rest = &rest[len..];
        } else if find("transfer-encoding").as_deref() == Some("chunked") {
            let mut b = Vec::new();
            loop {
                let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                let size =
                    usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap(), 16).unwrap();
                rest = &rest[nl + 2..];
                if size == 0 {
                    assert_eq!(&rest[..2], b"\r\n", "chunked body ends with an empty line");
                    rest = &rest[2..];
                    break;
                }
                b.extend_from_slice(&rest[..size]);
                assert_eq!(&rest[size..size + 2], b"\r\n", "chunk data ends with CRLF");
                rest = &rest[size + 2..];
            }
            body = b;
        } else {
            body = rest.to_vec();
            rest = &[];
        }
        out.push(Reply {
            status,
            headers,
            body,
        });
        data = rest;
    }
    out
}

fn one(api: &Api, input: &[u8]) -> (Reply, bool) {
    let mut backend = EchoBackend::default();
    let (bytes, closed) = exchange(api, &mut backend, input);
    let mut r = replies(&bytes);
    assert_eq!(
        r.len(),
        1,
        "one response to {:?}",
        String::from_utf8_lossy(input)
    );
    (r.remove(0), closed)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

/// Ollama's error body: `{"error": "<text>"}`.
fn ollama_error(r: &Reply) -> String {
    r.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("Ollama error body: {:?}", r.json()))
        .to_string()
}

/// OpenAI's error body: `{"error": {"message", "type", "code"}}`.
fn openai_error(r: &Reply) -> Value {
    let e = r.json()["error"].clone();
    assert!(e["message"].is_string(), "OpenAI error body: {e}");
    assert!(e["type"].is_string(), "OpenAI error body: {e}");
    assert!(e.get("code").is_some(), "OpenAI error body: {e}");
    e
}

#[test]
fn garbage_bytes_get_400_and_close() {
    let (r, closed) = one(&api(), b"\x00\x01\x02garbage\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(closed);
    assert!(ollama_error(&r).contains("malformed"));
    let (r, _) = one(&api(), b"GET / HTTP/9.9\r\n\r\n");
    assert_eq!(r.status, 505);
}

#[test]
fn size_limits() {
    let api = api();
    // Body over 1 MiB: refused from the header alone, before the body arrives.
    let big = b"POST /api/generate HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n";
    let (r, closed) = one(&api, big);
    assert_eq!(r.status, 413);
    assert!(closed);
    assert!(ollama_error(&r).contains("2000000"));
    // The same on the OpenAI API uses its error format.
    let big = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n";
    let (r, _) = one(&api, big);
    assert_eq!(r.status, 413);
    openai_error(&r);
    // Too many header lines.
    let mut many = b"GET /health HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(one(&api, &many).0.status, 431);
    // One huge header, never finished.
    let mut huge = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert_eq!(one(&api, &huge).0.status, 431);
    // Bad Content-Length and chunked bodies.
    let (r, _) = one(
        &api,
        b"POST /api/chat HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    // Transfer codings other than chunked, and both length headers at once.
    let (r, _) = one(
        &api,
        b"POST /api/chat HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    );
    assert_eq!(r.status, 501);
    assert!(ollama_error(&r).contains("chunked"));
    let (r, closed) = one(
        &api,
        b"POST /api/chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    assert!(closed);
}

/// `body` as a chunked request body, in pieces of `piece` bytes with an extension and
/// a trailer thrown in.
fn chunked_post(path: &str, body: &str, piece: usize) -> Vec<u8> {
    let mut out =
        format!("POST {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for part in body.as_bytes().chunks(piece) {
        out.extend_from_slice(format!("{:X};ext=1\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    out
}

#[test]
fn chunked_request_bodies() {
    let api = api();
    let body = r#"{"model":"echo","prompt":"chunked works","stream":false}"#;
    let input = chunked_post("/api/generate", body, 7);
    let (r, closed) = one(&api, &input);
    assert_eq!(r.status, 200);
    assert!(!closed);
    assert_eq!(r.json()["response"], " chunked works");
    // Pipelined after a chunked request, fed one byte at a time.
    let mut both = input.clone();
    both.extend(get("/api/version"));
    let mut conn = Connection::new();
    let mut events = Vec::new();
    for b in &both {
        conn.feed(&[*b]);
        loop {
            match conn.next_event(&api) {
                Event::NeedMore => break,
                Event::Generate(_) => events.push("generate"),
                Event::Respond { bytes, .. } => {
                    assert!(bytes.starts_with(b"HTTP/1.1 200"));
                    events.push("respond");
                }
            }
        }
    }
    assert_eq!(events, ["generate", "respond"]);
    // Broken chunk syntax.
    for bad in [
        &b"POST /api/chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"POST /api/chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n",
        b"POST /api/chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
    ] {
        let (r, closed) = one(&api, bad);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(bad));
        assert!(closed);
    }
    // Chunks adding up to more than the body limit.
    let mut big = b"POST /api/chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let chunk = vec![b' '; 600_000];
    for _ in 0..2 {
        big.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        big.extend_from_slice(&chunk);
        big.extend_from_slice(b"\r\n");
    }
    assert_eq!(one(&api, &big).0.status, 413);
}

#[test]
fn bad_json_wrong_types_and_missing_fields_are_400() {
    let api = api();
    let cases: &[(&str, &str, &str)] = &[
        ("/api/generate", "{not json", "invalid JSON"),
        ("/api/generate", "", "missing request body"),
        (
            "/api/generate",
            r#"{"prompt":"hi"}"#,
            "missing field `model`",
        ),
        (
            "/api/generate",
            r#"{"model":5,"prompt":"hi"}"#,
            "invalid type",
        ),
        (
            "/api/generate",
            r#"{"model":"echo","prompt":"hi","options":{"temperature":"hot"}}"#,
            "invalid type",
        ),
        (
            "/api/chat",
            r#"{"model":"echo","messages":"hi"}"#,
            "invalid type",
        ),
        (
            "/api/chat",
            r#"{"model":"echo","messages":[{"content":"x"}]}"#,
            "missing field `role`",
        ),
        (
            "/api/chat",
            r#"{"model":"echo","stream":"yes","messages":[]}"#,
            "invalid type",
        ),
        ("/api/show", r#"{}"#, "model is required"),
        ("/api/show", "[1,2", "invalid JSON"),
    ];
    for (path, body, needle) in cases {
        let (r, closed) = one(&api, &post(path, body));
        assert_eq!(r.status, 400, "{path} {body}");
        assert!(!closed, "a 400 on a good HTTP request keeps the connection");
        let e = ollama_error(&r);
        assert!(e.contains(needle), "{path} {body}: {e}");
    }
    let cases: &[(&str, &str)] = &[
        ("/v1/chat/completions", "{"),
        ("/v1/chat/completions", r#"{"model":"echo"}"#),
        ("/v1/chat/completions", r#"{"model":"echo","messages":[]}"#),
        (
            "/v1/chat/completions",
            r#"{"model":"echo","messages":[{"role":"user","content":1}]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"echo","messages":[{"role":"user","content":"x"}],"max_tokens":"8"}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"echo","messages":[{"role":"user","content":"x"}],"stop":[1]}"#,
        ),
        ("/v1/completions", r#"{"model":"echo","prompt":{"a":1}}"#),
        (
            "/v1/completions",
            r#"{"model":"echo","prompt":"x","temperature":[]}"#,
        ),
        ("/v1/completions", r#"{"model":"echo","prompt":"x","n":3}"#),
    ];
    for (path, body) in cases {
        let (r, _) = one(&api, &post(path, body));
        assert_eq!(r.status, 400, "{path} {body}");
        assert_eq!(
            openai_error(&r)["type"],
            "invalid_request_error",
            "{path} {body}"
        );
    }
}

#[test]
fn methods_paths_and_unknown_models() {
    let api = api();
    let (r, _) = one(&api, &get("/api/generate"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    ollama_error(&r);
    let (r, _) = one(&api, &post("/api/tags", "{}"));
    assert_eq!(r.status, 405);
    let (r, _) = one(&api, b"BREW /v1/models HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 405);
    openai_error(&r);
    let (r, _) = one(&api, &get("/nope"));
    assert_eq!(r.status, 404);
    ollama_error(&r);
    let (r, _) = one(&api, &get("/v1/nope"));
    assert_eq!(r.status, 404);
    openai_error(&r);

    let (r, _) = one(
        &api,
        &post("/api/generate", r#"{"model":"ghost","prompt":"hi"}"#),
    );
    assert_eq!(r.status, 404);
    assert!(ollama_error(&r).contains("ghost"));
    let (r, _) = one(&api, &post("/api/show", r#"{"model":"ghost"}"#));
    assert_eq!(r.status, 404);
    let body = r#"{"model":"ghost","messages":[{"role":"user","content":"hi"}]}"#;
    let (r, _) = one(&api, &post("/v1/chat/completions", body));
    assert_eq!(r.status, 404);
    assert_eq!(openai_error(&r)["code"], "model_not_found");
    let (r, _) = one(&api, &get("/v1/models/ghost"));
    assert_eq!(r.status, 404);
    // Aliases and the :latest tag select the model.
    for name in ["echo", "echo:latest", "Echo Model"] {
        let body = format!(r#"{{"model":"{name}","prompt":"a b","stream":false}}"#);
        let (r, _) = one(&api, &post("/api/generate", &body));
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.json()["model"], "echo");
    }
}

#[test]
fn listing_endpoints() {
    let api = api();
    let (r, _) = one(&api, &get("/api/version"));
    assert_eq!(r.status, 200);
    assert!(r.json()["version"].is_string());
    let (r, _) = one(&api, &get("/api/tags"));
    let tags = r.json();
    assert_eq!(tags["models"][0]["name"], "echo");
    assert_eq!(tags["models"][0]["details"]["quantization_level"], "Q4_1");
    assert_eq!(tags["models"][0]["details"]["parameter_size"], "134.52M");
    assert_eq!(tags["models"][0]["modified_at"], "1970-01-01T00:00:00.000Z");
    let (r, _) = one(&api, &get("/api/ps"));
    assert_eq!(r.json()["models"][0]["context_length"], 2048);
    let (r, _) = one(&api, &post("/api/show", r#"{"model":"echo"}"#));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model_info"]["llama.context_length"], 2048);
    assert_eq!(r.json()["template"], "{{chatml}}");
    let (r, _) = one(&api, &post("/api/show", r#"{"name":"echo"}"#));
    assert_eq!(r.status, 200);
    let (r, _) = one(&api, &get("/v1/models"));
    assert_eq!(r.json()["object"], "list");
    assert_eq!(r.json()["data"][0]["id"], "echo");
    let (r, _) = one(&api, &get("/v1/models/echo"));
    assert_eq!(r.json()["id"], "echo");
    let (r, _) = one(&api, &get("/health"));
    assert_eq!(r.json()["status"], "ok");
    let (r, _) = one(&api, &get("/?x=1"));
    assert_eq!(r.body, b"EMBODIOS is running");
}

#[test]
fn ollama_generate_non_stream_passes_options_and_reports_timings() {
    let api = api();
    let mut backend = EchoBackend::default();
    let body = r#"{"model":"echo","prompt":"one two three","stream":false,
        "options":{"temperature":0,"top_k":5,"top_p":0.5,"min_p":0.1,"repeat_penalty":1.1,
                   "seed":42,"num_predict":2,"stop":["x"],"num_ctx":99}}"#;
    let (bytes, _) = exchange(&api, &mut backend, &post("/api/generate", body));
    let r = &replies(&bytes)[0];
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let v = r.json();
    assert_eq!(v["response"], " one two");
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["model"], "echo");
    assert_eq!(v["created_at"], "2025-01-01T00:00:00.000Z");
    assert_eq!(v["eval_count"], 2);
    assert_eq!(v["prompt_eval_count"], 3);
    assert_eq!(v["eval_duration"], 7);
    assert_eq!(v["prompt_eval_duration"], 5);
    assert!(v["total_duration"].as_u64().unwrap() > 0);
    assert!(v["load_duration"].is_u64());
    let req = backend.last.unwrap();
    assert_eq!(req.max_tokens, Some(2));
    assert_eq!(req.stop, vec!["x".to_string()]);
    assert_eq!(req.prompt, Prompt::Raw("one two three".into()));
    let s = &req.sampling;
    assert_eq!(s.temperature, Some(0.0));
    assert_eq!(s.top_k, Some(5));
    assert_eq!(s.top_p, Some(0.5));
    assert_eq!(s.min_p, Some(0.1));
    assert_eq!(s.repeat_penalty, Some(1.1));
    assert_eq!(s.seed, Some(42));
}

#[test]
fn ollama_empty_prompt_only_loads() {
    let (r, _) = one(&api(), &post("/api/generate", r#"{"model":"echo"}"#));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["done_reason"], "load");
    let (r, _) = one(
        &api(),
        &post("/api/chat", r#"{"model":"echo","messages":[]}"#),
    );
    assert_eq!(r.json()["done_reason"], "load");
    assert_eq!(r.json()["message"]["role"], "assistant");
}

#[test]
fn ollama_streams_are_chunked_ndjson_by_default() {
    let api = api();
    let mut backend = EchoBackend::default();
    let body = r#"{"model":"echo","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"a b c"}]}"#;
    let (bytes, closed) = exchange(&api, &mut backend, &post("/api/chat", body));
    assert!(!closed, "keep-alive after a chunked stream");
    let r = &replies(&bytes)[0];
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let pieces: String = lines[..3]
        .iter()
        .map(|l| {
            assert_eq!(l["done"], false);
            assert_eq!(l["message"]["role"], "assistant");
            l["message"]["content"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(pieces, " a b c");
    let last = &lines[3];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["eval_count"], 3);
    match &backend.last.unwrap().prompt {
        Prompt::Chat(m) => {
            assert_eq!(m.len(), 2);
            assert_eq!(m[0].role, "system");
            assert_eq!(m[1].content, "a b c");
        }
        p => panic!("chat prompt expected, got {p:?}"),
    }
}

#[test]
fn openai_chat_non_stream_and_stream_agree() {
    let api = api();
    let body = r#"{"model":"echo","messages":[{"role":"developer","content":"sys"},{"role":"user","content":[{"type":"text","text":"x y"}]}],"max_tokens":8,"temperature":0,"seed":3,"stop":"zz"}"#;
    let mut backend = EchoBackend::default();
    let (bytes, _) = exchange(&api, &mut backend, &post("/v1/chat/completions", body));
    let v = replies(&bytes)[0].json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], " x y");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(v["usage"]["total_tokens"], 4);
    let req = backend.last.take().unwrap();
    assert_eq!(req.stop, vec!["zz".to_string()]);
    assert_eq!(req.max_tokens, Some(8));
    assert_eq!(req.sampling.seed, Some(3));
    match &req.prompt {
        Prompt::Chat(m) => assert_eq!(m[0].role, "system"),
        p => panic!("{p:?}"),
    }

    let stream_body = body.replace(
        "\"seed\":3",
        "\"seed\":3,\"stream\":true,\"stream_options\":{\"include_usage\":true}",
    );
    let (bytes, closed) = exchange(
        &api,
        &mut backend,
        &post("/v1/chat/completions", &stream_body),
    );
    assert!(!closed);
    let r = &replies(&bytes)[0];
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("SSE data line")).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, " x y");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 2);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
}

#[test]
fn openai_completions() {
    let api = api();
    // Without max_tokens OpenAI's legacy default of 16 applies.
    let mut backend = EchoBackend::default();
    let (bytes, _) = exchange(
        &api,
        &mut backend,
        &post(
            "/v1/completions",
            r#"{"model":"echo","prompt":["p q"],"stop":["a","b"]}"#,
        ),
    );
    let v = replies(&bytes)[0].json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], " p q");
    let req = backend.last.unwrap();
    assert_eq!(req.max_tokens, Some(16));
    assert_eq!(req.stop.len(), 2);
    let (bytes, _) = exchange(
        &api,
        &mut EchoBackend::default(),
        &post(
            "/v1/completions",
            r#"{"model":"echo","prompt":"p q r","stream":true,"max_tokens":2}"#,
        ),
    );
    let text = String::from_utf8(replies(&bytes)[0].body.clone()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let n_chunks = text.matches("data: {").count();
    assert_eq!(n_chunks, 3, "two pieces and the finish chunk: {text}");
    assert!(text.contains("\"finish_reason\":\"length\""));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let api = api();
    let mut input = get("/api/version");
    input.extend(post(
        "/api/generate",
        r#"{"model":"echo","prompt":"hi there","stream":false}"#,
    ));
    input.extend(get("/v1/models"));
    let (bytes, closed) = exchange(&api, &mut EchoBackend::default(), &input);
    assert!(!closed);
    let r = replies(&bytes);
    assert_eq!(r.len(), 3);
    assert!(r[0].json()["version"].is_string());
    assert_eq!(r[1].json()["response"], " hi there");
    assert_eq!(r[2].json()["object"], "list");
}

#[test]
fn connection_close_and_http_1_0() {
    let api = api();
    let req = b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\nGET /health HTTP/1.1\r\n\r\n";
    let (bytes, closed) = exchange(&api, &mut EchoBackend::default(), req);
    assert!(closed);
    let r = replies(&bytes);
    assert_eq!(r.len(), 1, "nothing after Connection: close");
    assert_eq!(r[0].header("connection"), Some("close"));
    // HTTP/1.0 has no chunked encoding: the stream is delimited by closing.
    let body = r#"{"model":"echo","prompt":"a b"}"#;
    let req = format!(
        "POST /api/generate HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (bytes, closed) = exchange(&api, &mut EchoBackend::default(), req.as_bytes());
    assert!(closed);
    let r = replies(&bytes);
    assert_eq!(r[0].header("transfer-encoding"), None);
    assert_eq!(String::from_utf8_lossy(&r[0].body).lines().count(), 3);
}

#[test]
fn bearer_token() {
    let api = api_with(Config {
        api_key: Some("s3cret".into()),
        ..Config::default()
    });
    let (r, closed) = one(&api, &get("/api/tags"));
    assert_eq!(r.status, 401);
    assert!(!closed);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    ollama_error(&r);
    let (r, _) = one(&api, &get("/v1/models"));
    assert_eq!(r.status, 401);
    assert_eq!(openai_error(&r)["code"], "invalid_api_key");
    let wrong = b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer s3cre7\r\n\r\n";
    assert_eq!(one(&api, wrong).0.status, 401);
    let right = b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n";
    assert_eq!(one(&api, right).0.status, 200);
    let right = b"GET /api/tags HTTP/1.1\r\nauthorization: bearer  s3cret \r\n\r\n";
    assert_eq!(one(&api, right).0.status, 200);
    // Liveness stays open.
    assert_eq!(one(&api, &get("/health")).0.status, 200);
    assert_eq!(one(&api, &get("/metrics")).0.status, 401);
}

#[test]
fn client_disconnect_stops_generation() {
    let api = api();
    let mut backend = EchoBackend::default();
    let mut conn = Connection::new();
    conn.feed(&post(
        "/api/generate",
        r#"{"model":"echo","prompt":"a b c d e f g h"}"#,
    ));
    let Event::Generate(job) = conn.next_event(&api) else {
        panic!("a generation job")
    };
    // Head and two pieces get through, then the client is gone.
    let mut wire = Wire {
        fail_after: Some(3),
        ..Wire::default()
    };
    assert_eq!(
        api.run_job(job, &mut backend, &mut wire),
        JobEnd::Disconnected
    );
    assert_eq!(
        backend.sent, 2,
        "generation stopped at the first failed send"
    );
    let m = api.metrics.render(None);
    assert!(m.contains("embodios_generations_cancelled_total 1"), "{m}");
}

#[test]
fn backend_errors_use_the_api_format() {
    let api = api();
    let (r, closed) = one(
        &api,
        &post(
            "/api/generate",
            r#"{"model":"echo","prompt":"FAIL","stream":false}"#,
        ),
    );
    assert_eq!(r.status, 400);
    assert!(!closed);
    assert_eq!(ollama_error(&r), "prompt too long");
    // Streaming, but the failure comes before any text: still a plain error response.
    let body = r#"{"model":"echo","messages":[{"role":"user","content":"FAIL"}],"stream":true}"#;
    let (r, _) = one(&api, &post("/v1/chat/completions", body));
    assert_eq!(r.status, 400);
    openai_error(&r);
}

#[test]
fn busy_timeout_and_overload_responses() {
    let api = api();
    let mut conn = Connection::new();
    conn.feed(&post("/v1/completions", r#"{"model":"echo","prompt":"a"}"#));
    let Event::Generate(job) = conn.next_event(&api) else {
        panic!("a generation job")
    };
    let r = &replies(&api.busy_response(&job))[0];
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    openai_error(r);

    let mut conn = Connection::new();
    assert!(!conn.has_partial_request());
    conn.feed(b"GET /health HT");
    assert!(matches!(conn.next_event(&api), Event::NeedMore));
    assert!(conn.has_partial_request());
    let r = &replies(&api.timeout_response())[0];
    assert_eq!(r.status, 408);
    assert_eq!(r.header("connection"), Some("close"));
    let r = &replies(&api.overloaded_response())[0];
    assert_eq!(r.status, 503);
}

#[test]
fn metrics_count_requests_tokens_and_memory() {
    let api = api();
    one(&api, &get("/nope"));
    one(
        &api,
        &post(
            "/api/generate",
            r#"{"model":"echo","prompt":"a b c","stream":false}"#,
        ),
    );
    let (r, _) = one(&api, &get("/metrics"));
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(
        text.contains("embodios_http_requests_total{endpoint=\"other\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("embodios_http_requests_total{endpoint=\"/api/generate\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("embodios_generated_tokens_total 3"), "{text}");
    assert!(text.contains("embodios_prompt_tokens_total 3"), "{text}");
    assert!(text.contains("embodios_memory_bytes 12345"), "{text}");
    assert!(text.contains("embodios_queue_depth 0"), "{text}");
    assert!(
        text.contains("embodios_last_decode_tokens_per_second"),
        "{text}"
    );
    // By class (the kernel's `status` line): the generation and /metrics, the 404,
    // and a refused connection's 503.
    api.overloaded_response();
    let c = api.metrics.requests_by_class();
    assert_eq!((c[0], c[1], c[2], c[3], c[4], c[5]), (0, 0, 2, 0, 1, 1));
}

#[test]
fn random_bytes_never_panic_and_the_api_keeps_serving() {
    let api = api();
    let mut backend = EchoBackend::default();
    // A small LCG: deterministic "random" inputs, some starting like real requests.
    let mut state: u64 = 0x1234_5678;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u32
    };
    let prefixes: [&[u8]; 4] = [
        b"",
        b"GET /api/tags HTTP/1.1\r\n",
        b"POST /api/chat HTTP/1.1\r\nContent-Length: 40\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"model\":",
    ];
    for i in 0..2000 {
        let mut input = prefixes[i % prefixes.len()].to_vec();
        let len = next() % 300;
        for _ in 0..len {
            let b = next() as u8;
            // Bias towards HTTP-ish bytes so parsing gets past the first line sometimes.
            input.push(match b % 4 {
                0 => b"\r\n :/{}\"aPOSTGET"[(b as usize / 4) % 16],
                _ => b,
            });
        }
        let (bytes, _) = exchange(&api, &mut backend, &input);
        if !bytes.is_empty() {
            for r in replies(&bytes) {
                assert!(
                    r.status == 200 || (400..=505).contains(&r.status),
                    "{}",
                    r.status
                );
            }
        }
    }
    let (r, _) = one(
        &api,
        &post(
            "/api/generate",
            r#"{"model":"echo","prompt":"still here","stream":false}"#,
        ),
    );
    assert_eq!(r.json()["response"], " still here");
}

#[test]
fn api_is_shareable_between_threads() {
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<Api>();
    let api = Arc::new(api());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let api = Arc::clone(&api);
            std::thread::spawn(move || one(&api, &get("/health")).0.status)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
}

#[test]
fn expect_100_continue_invites_the_body_once() {
    let api = api();
    let body = r#"{"model":"echo","prompt":"go on","stream":false}"#;
    let head = format!(
        "POST /api/generate HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut conn = Connection::new();
    conn.feed(head.as_bytes());
    match conn.next_event(&api) {
        Event::Respond { bytes, close } => {
            assert_eq!(bytes, b"HTTP/1.1 100 Continue\r\n\r\n");
            assert!(!close);
        }
        e => panic!("100 Continue expected, got {e:?}"),
    }
    assert!(matches!(conn.next_event(&api), Event::NeedMore));
    conn.feed(&body.as_bytes()[..5]);
    assert!(matches!(conn.next_event(&api), Event::NeedMore));
    conn.feed(&body.as_bytes()[5..]);
    let Event::Generate(job) = conn.next_event(&api) else {
        panic!("the whole request makes a job")
    };
    let mut wire = Wire::default();
    api.run_job(job, &mut EchoBackend::default(), &mut wire);
    assert_eq!(replies(&wire.bytes)[0].json()["response"], " go on");
    // An oversized body is refused instead of invited.
    let mut conn = Connection::new();
    conn.feed(
        b"POST /api/chat HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n",
    );
    match conn.next_event(&api) {
        Event::Respond { bytes, close } => {
            assert!(bytes.starts_with(b"HTTP/1.1 413 "));
            assert!(close);
        }
        e => panic!("413 expected, got {e:?}"),
    }
}

#[test]
fn requests_split_into_single_bytes_parse_the_same() {
    let api = api();
    let input = post(
        "/api/generate",
        r#"{"model":"echo","prompt":"a b","stream":false}"#,
    );
    let mut conn = Connection::new();
    let mut job = None;
    for (i, b) in input.iter().enumerate() {
        conn.feed(&[*b]);
        match conn.next_event(&api) {
            Event::NeedMore => assert!(i + 1 < input.len(), "complete request still waiting"),
            Event::Generate(j) => {
                assert_eq!(i + 1, input.len(), "job before the last byte");
                job = Some(j);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    let mut wire = Wire::default();
    api.run_job(job.expect("a job"), &mut EchoBackend::default(), &mut wire);
    assert_eq!(replies(&wire.bytes)[0].json()["response"], " a b");
}
