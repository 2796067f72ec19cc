//! End-to-end tests of `embodios serve` with SmolLM2 over real loopback HTTP: the
//! listing endpoints, greedy text identical to `embodios run`, NDJSON and SSE streams,
//! errors in each API's format, garbage, pipelining, a client leaving mid-stream, the
//! bounded queue and the bearer token.

use embodios_testkit::TestModel;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_embodios");
/// Generous bounds: the machine may be shared and the test binary unoptimised.
const STARTUP: Duration = Duration::from_secs(120);
const IO_TIMEOUT: Duration = Duration::from_secs(300);

fn smollm2() -> PathBuf {
    TestModel::SmolLm2.path()
}

/// The model's name in the API: the file stem.
const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// A running server, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let model = smollm2();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "-m",
            model.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(["--threads", "2"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("embodios serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("embodios serve: listening on http://") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = match rx.recv_timeout(STARTUP) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("embodios serve did not report its address within {STARTUP:?}");
        }
    };
    Server { child, addr }
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
    fn has_header(&self, line: &str) -> bool {
        self.head.lines().any(|l| l.eq_ignore_ascii_case(line))
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the server");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Reads one response (Content-Length or chunked) from `r`.
fn read_reply(r: &mut BufReader<&TcpStream>) -> Reply {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read response head");
        assert!(
            n > 0,
            "connection closed before a full response head: {head:?}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head[9..12].parse().expect("status code");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        body.resize(len.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            assert_eq!(&chunk[n..], b"\r\n", "chunk ends with CRLF");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Reply { status, head, body }
}

/// Sends raw bytes on a new connection and reads `count` responses.
fn raw(addr: &str, bytes: &[u8], count: usize) -> Vec<Reply> {
    let s = connect(addr);
    (&s).write_all(bytes).unwrap();
    let mut r = BufReader::new(&s);
    (0..count).map(|_| read_reply(&mut r)).collect()
}

fn get(addr: &str, path: &str) -> Reply {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    raw(addr, req.as_bytes(), 1).remove(0)
}

fn post_bytes(path: &str, body: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn post(addr: &str, path: &str, body: &str) -> Reply {
    raw(addr, &post_bytes(path, body, ""), 1).remove(0)
}

/// `embodios run` with greedy sampling: the reference text.
fn run_greedy(prompt: &str, n: usize) -> String {
    let model = smollm2();
    let n = n.to_string();
    let out = Command::new(BIN)
        .args(["run", "-m", model.to_str().unwrap(), "-p", prompt, "-n", &n])
        .args(["--temp", "0", "--threads", "2", "--json"])
        .output()
        .expect("embodios run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    json["text"].as_str().unwrap().to_string()
}

fn metric(addr: &str, name: &str) -> f64 {
    let text = get(addr, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

#[test]
fn serve_speaks_ollama_and_openai() {
    let server = start(&[]);
    let addr = server.addr.as_str();

    let r = get(addr, "/api/version");
    assert_eq!(r.status, 200);
    assert!(r.json()["version"].is_string());
    let tags = get(addr, "/api/tags").json();
    assert_eq!(tags["models"][0]["name"], MODEL, "{tags}");
    assert_eq!(tags["models"][0]["details"]["family"], "llama");
    assert_eq!(get(addr, "/v1/models").json()["data"][0]["id"], MODEL);
    assert_eq!(get(addr, "/health").status, 200);

    // Greedy raw completion equals the CLI's.
    let prompt = "The capital of France is";
    let reference = run_greedy(prompt, 8);
    let body = format!(
        r#"{{"model":"{MODEL}","prompt":"{prompt}","stream":false,"options":{{"temperature":0,"num_predict":8}}}}"#
    );
    let r = post(addr, "/api/generate", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["response"], reference.as_str(), "{v}");
    assert_eq!(v["done"], true);
    assert_eq!(v["prompt_eval_count"], 5);
    for field in [
        "total_duration",
        "prompt_eval_duration",
        "eval_duration",
        "eval_count",
    ] {
        assert!(v[field].as_u64().is_some_and(|x| x > 0), "{field} in {v}");
    }

    // The same request streamed (by default): NDJSON, one JSON object per line, the
    // pieces adding up to the same text.
    let body = format!(
        r#"{{"model":"{MODEL}","prompt":"{prompt}","options":{{"temperature":0,"num_predict":8}}}}"#
    );
    let r = post(addr, "/api/generate", &body);
    assert_eq!(r.status, 200);
    assert!(
        r.has_header("content-type: application/x-ndjson"),
        "{}",
        r.head
    );
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each NDJSON line is JSON"))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert!(last["eval_count"].as_u64().unwrap() > 0);
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));
    let streamed: String = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, reference);

    // OpenAI chat, whole and streamed, agree.
    let chat = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"What is 2+2?"}}],"max_tokens":8,"temperature":0}}"#
    );
    let r = post(addr, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let whole = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!whole.is_empty());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat.replace("\"temperature\":0", "\"temperature\":0,\"stream\":true"),
    );
    assert_eq!(r.status, 200);
    let text = r.text();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]", "{text}");
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(streamed, whole);

    // Errors, each in its API's format.
    let r = post(addr, "/api/generate", r#"{"model":"nope","prompt":"x"}"#);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"));
    let r = post(
        addr,
        "/v1/chat/completions",
        r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
    );
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    let r = post(addr, "/api/chat", "{bad json");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    let r = post(addr, "/v1/completions", r#"{"model":1}"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(get(addr, "/api/chat").status, 405);
    assert_eq!(get(addr, "/missing").status, 404);

    // Garbage gets a 400 and the server keeps serving.
    let r = raw(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 1).remove(0);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    assert_eq!(get(addr, "/api/version").status, 200);

    // Two pipelined requests on one connection, answered in order.
    let two =
        b"GET /api/version HTTP/1.1\r\nHost: t\r\n\r\nGET /api/ps HTTP/1.1\r\nHost: t\r\n\r\n";
    let r = raw(addr, two, 2);
    assert!(r[0].json()["version"].is_string());
    assert_eq!(r[1].json()["models"][0]["name"], MODEL);

    let served = metric(addr, "embodios_generated_tokens_total");
    assert!(served >= 16.0, "tokens generated: {served}");
}

#[test]
fn serve_frees_the_slot_when_a_client_leaves_and_bounds_the_queue() {
    let server = start(&["--queue", "1"]);
    let addr = server.addr.clone();

    // Leave mid-stream: read the head and one line, then close.
    let long = format!(
        r#"{{"model":"{MODEL}","prompt":"Count from one to one thousand: one, two,","options":{{"temperature":0,"num_predict":400}}}}"#
    );
    {
        let s = connect(&addr);
        (&s).write_all(&post_bytes("/api/generate", &long, ""))
            .unwrap();
        let mut r = BufReader::new(&s);
        let mut line = String::new();
        while line != "\r\n" {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0);
        }
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&addr, "embodios_generations_cancelled_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "generation not cancelled after the client left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&addr, "embodios_generated_tokens_total") < 400.0);

    // One running, one waiting (queue of 1): of four clients at once, some get 503
    // quickly, and every one gets an answer.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            let body = format!(
                r#"{{"model":"{MODEL}","prompt":"Once upon a time","stream":false,"options":{{"num_predict":24}}}}"#
            );
            std::thread::spawn(move || post(&addr, "/api/generate", &body).status)
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&503),
        "queue of 1 never full: {statuses:?}"
    );
    let busy = statuses.iter().filter(|s| **s == 503).count() as f64;
    let counted = metric(
        &addr,
        "embodios_http_requests_total{endpoint=\"/api/generate\",status=\"503\"}",
    );
    assert_eq!(counted, busy, "503s counted in /metrics");
}

#[test]
fn serve_enforces_the_bearer_token() {
    let server = start(&["--api-key", "k3y"]);
    let addr = server.addr.as_str();
    let r = get(addr, "/api/tags");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    let r = get(addr, "/v1/models");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"].is_string());
    let ok = raw(
        addr,
        b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer k3y\r\n\r\n",
        1,
    );
    assert_eq!(ok[0].status, 200);
    assert_eq!(get(addr, "/health").status, 200);
}

#[test]
fn serve_answers_16_concurrent_clients_in_full() {
    let server = start(&[]);
    let addr = server.addr.clone();
    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"Say hello."}}],"options":{{"temperature":0,"num_predict":4}}}}"#
    );
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let addr = addr.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                let r = post(&addr, "/api/chat", &body);
                assert_eq!(r.status, 200, "{}", r.text());
                let lines: Vec<Value> = r
                    .text()
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("NDJSON line"))
                    .collect();
                assert_eq!(lines.last().unwrap()["done"], true);
                lines
                    .iter()
                    .map(|l| l["message"]["content"].as_str().unwrap().to_string())
                    .collect::<String>()
            })
        })
        .collect();
    let texts: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(!texts[0].is_empty());
    assert!(
        texts.iter().all(|t| *t == texts[0]),
        "greedy replies differ: {texts:?}"
    );
    let ok = metric(
        &addr,
        "embodios_http_requests_total{endpoint=\"/api/chat\",status=\"200\"}",
    );
    assert_eq!(ok, 16.0);
}

#[test]
fn serve_times_out_half_sent_requests_and_keeps_serving() {
    let server = start(&[]);
    let addr = server.addr.as_str();
    // One client connects and says nothing; another sends half a request.
    let idle = connect(addr);
    let slow = connect(addr);
    let started = Instant::now();
    (&slow)
        .write_all(b"POST /api/chat HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"model\"")
        .unwrap();
    // Everyone else is still served meanwhile.
    assert_eq!(get(addr, "/health").status, 200);
    let r = read_reply(&mut BufReader::new(&slow));
    let waited = started.elapsed();
    assert_eq!(r.status, 408, "{}", r.head);
    assert!(r.json()["error"].is_string());
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(60),
        "408 after {waited:?}"
    );
    assert_eq!(get(addr, "/api/version").status, 200);
    drop(idle);
}
