//! The request router and per-connection state machine.
//!
//! A transport (std sockets on the host, smoltcp in the kernel) feeds received bytes to a
//! [`Connection`] and asks it for the next [`Event`]: answer these bytes now, wait for
//! more, or run a generation [`Job`]. Quick endpoints are answered inside the router;
//! generation needs the single inference slot, so the transport queues the job and then
//! calls [`Api::run_job`] with the backend and an [`Output`] to the client.
//!
//! Authentication: with an API key configured, every endpoint except `GET /` and
//! `GET /health` requires `Authorization: Bearer KEY` (liveness probes stay open).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use serde_json::{json, Value};

use crate::backend::{
    Backend, BackendError, Env, Finish, GenRequest, GenResult, ModelInfo, TokenSink,
};
use crate::http::{self, Framing, HttpError, Limits, Parsed, Request, Response};
use crate::metrics::{Endpoint, Metrics};
use crate::time::rfc3339_ms;
use crate::wire::{self, BadRequest};

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    pub limits: Limits,
    /// Reported by `GET /api/version`.
    pub version: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_key: None,
            limits: Limits::default(),
            version: String::from(env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Which API a generation answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    OllamaGenerate,
    OllamaChat,
    OpenAiCompletion,
    OpenAiChat,
}

impl Flavor {
    fn endpoint(self) -> Endpoint {
        match self {
            Flavor::OllamaGenerate => Endpoint::Generate,
            Flavor::OllamaChat => Endpoint::Chat,
            Flavor::OpenAiCompletion => Endpoint::OpenAiCompletions,
            Flavor::OpenAiChat => Endpoint::OpenAiChat,
        }
    }

    fn is_openai(self) -> bool {
        matches!(self, Flavor::OpenAiCompletion | Flavor::OpenAiChat)
    }
}

/// A validated generation waiting for the inference slot.
#[derive(Clone, Debug)]
pub struct Job {
    pub flavor: Flavor,
    pub request: GenRequest,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`: a last chunk with `usage`.
    pub include_usage: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    framing: Framing,
    started_ns: u64,
}

/// What the transport should do next on a connection.
#[derive(Debug)]
pub enum Event {
    /// Read more bytes (none of a request is waiting, or only part of one).
    NeedMore,
    /// Send `bytes`; then close the connection if `close`.
    Respond { bytes: Vec<u8>, close: bool },
    /// Run this generation when the inference slot is free (or answer
    /// [`Api::busy_response`] if the queue is full).
    Generate(Job),
}

/// Where a generation's response goes.
pub trait Output {
    /// Sends bytes to the client; `false` when the client is gone.
    fn send(&mut self, bytes: &[u8]) -> bool;

    /// Whether the client has closed the connection, checked without sending (a
    /// non-streamed generation asks once per token, so it stops for a client that left).
    fn client_gone(&mut self) -> bool {
        false
    }
}

/// How a job ended for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEnd {
    /// The response is complete; keep the connection if `keep_alive`.
    Done { keep_alive: bool },
    /// The client went away (the generation was stopped); close the connection.
    Disconnected,
}

/// The API: configuration, the models it serves and its counters. Shared (it is `Sync`)
/// by every connection.
pub struct Api {
    config: Config,
    models: Vec<ModelInfo>,
    env: Box<dyn Env + Send + Sync>,
    pub metrics: Metrics,
    next_id: AtomicU64,
}

/// The bytes of a request buffered on one connection.
#[derive(Debug, Default)]
pub struct Connection {
    buf: Vec<u8>,
    /// `100 Continue` was sent for the request being received.
    continued: bool,
}

impl Connection {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Part of a request has arrived (a timeout now deserves a 408, not a silent close).
    pub fn has_partial_request(&self) -> bool {
        self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }

    /// The next thing to do: call again after each `Respond`/`Generate` (another request
    /// may already be buffered, as with pipelining) until it says `NeedMore`.
    pub fn next_event(&mut self, api: &Api) -> Event {
        match http::parse_request(&self.buf, &api.config.limits) {
            Ok(Parsed::Incomplete) => Event::NeedMore,
            Ok(Parsed::AwaitingBody { expect_continue }) => {
                if expect_continue && !self.continued {
                    // The head passed every check (size limits included): invite the body.
                    self.continued = true;
                    Event::Respond {
                        bytes: b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                        close: false,
                    }
                } else {
                    Event::NeedMore
                }
            }
            Ok(Parsed::Complete(req, used)) => {
                self.buf.drain(..used);
                self.continued = false;
                api.handle(req)
            }
            Err(e) => {
                let openai = looks_like_openai(&self.buf);
                self.buf.clear();
                Event::Respond {
                    bytes: api.http_error(&e, openai),
                    close: true,
                }
            }
        }
    }
}

/// Whether a request that failed to parse was meant for the OpenAI API (its target
/// starts with `/v1/`), to answer in that API's error format.
fn looks_like_openai(buf: &[u8]) -> bool {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or(&[]);
    line.windows(5).position(|w| w == b" /v1/").is_some()
}

fn ollama_error(status: u16, message: &str) -> Response {
    Response::json(status, &json!({ "error": message }))
}

fn openai_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        404 => "not_found_error",
        413 | 400 | 405 | 422 | 431 => "invalid_request_error",
        503 => "server_overloaded",
        _ => "server_error",
    }
}

fn openai_error(status: u16, message: &str, code: Option<&str>) -> Response {
    Response::json(
        status,
        &json!({
            "error": {
                "message": message,
                "type": openai_error_type(status),
                "param": Value::Null,
                "code": code,
            }
        }),
    )
}

fn error_response(openai: bool, status: u16, message: &str) -> Response {
    if openai {
        let code = match status {
            404 => Some("model_not_found"),
            401 => Some("invalid_api_key"),
            _ => None,
        };
        openai_error(status, message, code)
    } else {
        ollama_error(status, message)
    }
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parameter_size(count: u64) -> String {
    if count >= 1_000_000_000 {
        format!("{:.2}B", count as f64 / 1e9)
    } else {
        format!("{:.2}M", count as f64 / 1e6)
    }
}

impl Api {
    pub fn new(config: Config, models: Vec<ModelInfo>, env: Box<dyn Env + Send + Sync>) -> Self {
        Self {
            config,
            models,
            env,
            metrics: Metrics::new(),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    fn find_model(&self, name: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|m| m.answers_to(name))
    }

    /// The answer to bytes that are not an acceptable request (the connection closes).
    pub fn http_error(&self, e: &HttpError, openai: bool) -> Vec<u8> {
        let status = e.status();
        self.metrics.count_request(Endpoint::Other, status);
        error_response(openai, status, &e.to_string()).to_bytes(false)
    }

    /// 408 for a client that started a request but did not finish it in time.
    pub fn timeout_response(&self) -> Vec<u8> {
        self.metrics.count_request(Endpoint::Other, 408);
        ollama_error(408, "timed out waiting for the request").to_bytes(false)
    }

    /// 503 for a job that found the queue full (the connection stays usable).
    pub fn busy_response(&self, job: &Job) -> Vec<u8> {
        self.metrics.count_request(job.flavor.endpoint(), 503);
        error_response(
            job.flavor.is_openai(),
            503,
            "server busy: too many requests are waiting; retry shortly",
        )
        .with_header("Retry-After", "1")
        .to_bytes(job.keep_alive)
    }

    /// 503 for a connection refused before any request was read (too many connections).
    pub fn overloaded_response(&self) -> Vec<u8> {
        self.metrics.count_request(Endpoint::Other, 503);
        ollama_error(503, "server busy: too many connections")
            .with_header("Retry-After", "1")
            .to_bytes(false)
    }

    fn respond(&self, endpoint: Endpoint, resp: Response, keep_alive: bool) -> Event {
        self.metrics.count_request(endpoint, resp.status);
        Event::Respond {
            bytes: resp.to_bytes(keep_alive),
            close: !keep_alive,
        }
    }

    /// Routes one request.
    pub fn handle(&self, req: Request) -> Event {
        let endpoint = Endpoint::from_path(&req.path);
        let openai = req.path.starts_with("/v1/") || req.path == "/v1";
        let keep_alive = req.keep_alive;
        let method = req.method.as_str();
        let err = |status: u16, msg: &str| error_response(openai, status, msg);

        let open = matches!(req.path.as_str(), "/" | "/health");
        if let (Some(key), false) = (&self.config.api_key, open) {
            let given = req
                .header("authorization")
                .and_then(|v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then_some(token.trim())
                })
                .unwrap_or("");
            if !same_secret(given.as_bytes(), key.as_bytes()) {
                let resp = err(
                    401,
                    "missing or invalid API key (send Authorization: Bearer KEY)",
                )
                .with_header("WWW-Authenticate", "Bearer");
                return self.respond(endpoint, resp, keep_alive);
            }
        }

        let allowed: &str = match req.path.as_str() {
            "/" => "GET, HEAD",
            "/health" | "/metrics" | "/api/version" | "/api/tags" | "/api/ps" | "/v1/models" => {
                "GET"
            }
            "/api/show"
            | "/api/generate"
            | "/api/chat"
            | "/v1/completions"
            | "/v1/chat/completions" => "POST",
            p if p.starts_with("/v1/models/") => "GET",
            _ => {
                let resp = err(404, &format!("no such endpoint: {}", req.path));
                return self.respond(endpoint, resp, keep_alive);
            }
        };
        if !allowed.split(", ").any(|m| m == method) {
            let resp = err(
                405,
                &format!(
                    "method {method} is not allowed on {} (use {allowed})",
                    req.path
                ),
            )
            .with_header("Allow", allowed);
            return self.respond(endpoint, resp, keep_alive);
        }

        let result: Result<Response, Response> = match req.path.as_str() {
            "/" => Ok(Response::new(
                200,
                http::TEXT,
                if method == "HEAD" {
                    Vec::new()
                } else {
                    b"EMBODIOS is running".to_vec()
                },
            )),
            "/health" => Ok(Response::json(
                200,
                &json!({ "status": "ok", "models": self.models.len() }),
            )),
            "/metrics" => Ok(Response::new(
                200,
                http::PROMETHEUS,
                self.metrics.render(self.env.memory_bytes()).into_bytes(),
            )),
            "/api/version" => Ok(Response::json(
                200,
                &json!({ "version": self.config.version }),
            )),
            "/api/tags" => Ok(self.tags()),
            "/api/ps" => Ok(self.ps()),
            "/api/show" => self.show(&req.body),
            "/v1/models" => Ok(self.openai_models()),
            p if p.starts_with("/v1/models/") => {
                let id = &p["/v1/models/".len()..];
                match self.find_model(id) {
                    Some(m) => Ok(Response::json(200, &self.openai_model(m))),
                    None => Err(err(404, &format!("model '{id}' not found"))),
                }
            }
            _ => match self.generation(&req, endpoint) {
                Ok(GenOrResponse::Job(job)) => return Event::Generate(job),
                Ok(GenOrResponse::Response(r)) => Ok(r),
                Err(r) => Err(r),
            },
        };
        let resp = result.unwrap_or_else(|e| e);
        self.respond(endpoint, resp, keep_alive)
    }

    fn details(m: &ModelInfo) -> Value {
        json!({
            "parent_model": "",
            "format": "gguf",
            "family": m.family,
            "families": [m.family],
            "parameter_size": parameter_size(m.parameter_count),
            "quantization_level": m.quantization,
        })
    }

    fn tags(&self) -> Response {
        let models: Vec<Value> = self
            .models
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "model": m.name,
                    "modified_at": rfc3339_ms(m.modified_unix_s.saturating_mul(1000)),
                    "size": m.size_bytes,
                    "digest": m.digest,
                    "details": Self::details(m),
                })
            })
            .collect();
        Response::json(200, &json!({ "models": models }))
    }

    fn ps(&self) -> Response {
        // Every served model stays loaded for the server's lifetime: expiry far ahead.
        let models: Vec<Value> = self
            .models
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "model": m.name,
                    "size": m.size_bytes,
                    "digest": m.digest,
                    "details": Self::details(m),
                    "expires_at": "2999-01-01T00:00:00Z",
                    "size_vram": 0,
                    "context_length": m.context_length,
                })
            })
            .collect();
        Response::json(200, &json!({ "models": models }))
    }

    fn show(&self, body: &[u8]) -> Result<Response, Response> {
        let req: wire::OllamaShow =
            wire::parse_body(body).map_err(|BadRequest(m)| ollama_error(400, &m))?;
        let Some(name) = req.model.or(req.name) else {
            return Err(ollama_error(400, "model is required"));
        };
        let m = self
            .find_model(&name)
            .ok_or_else(|| ollama_error(404, &format!("model '{name}' not found")))?;
        let arch = m.family.as_str();
        Ok(Response::json(
            200,
            &json!({
                "license": "",
                "modelfile": "",
                "parameters": "",
                "template": m.template,
                "details": Self::details(m),
                "model_info": {
                    "general.architecture": arch,
                    "general.parameter_count": m.parameter_count,
                    format!("{arch}.context_length"): m.context_length,
                },
                "capabilities": ["completion"],
                "modified_at": rfc3339_ms(m.modified_unix_s.saturating_mul(1000)),
            }),
        ))
    }

    fn openai_model(&self, m: &ModelInfo) -> Value {
        json!({
            "id": m.name,
            "object": "model",
            "created": m.modified_unix_s,
            "owned_by": "embodios",
        })
    }

    fn openai_models(&self) -> Response {
        let data: Vec<Value> = self.models.iter().map(|m| self.openai_model(m)).collect();
        Response::json(200, &json!({ "object": "list", "data": data }))
    }

    /// Validates a generation request: a job, or an immediate answer (Ollama's
    /// "load only" reply to an empty prompt), or an error response.
    fn generation(&self, req: &Request, endpoint: Endpoint) -> Result<GenOrResponse, Response> {
        let started_ns = self.env.monotonic_ns();
        let openai = endpoint.is_openai();
        let bad = |BadRequest(m): BadRequest| error_response(openai, 400, &m);
        let not_found =
            |name: &str| error_response(openai, 404, &format!("model '{name}' not found"));
        let (flavor, model_name, built, stream, include_usage) = match endpoint {
            Endpoint::Generate => {
                let r: wire::OllamaGenerate = wire::parse_body(&req.body).map_err(bad)?;
                let name = self
                    .find_model(&r.model)
                    .ok_or_else(|| not_found(&r.model))?
                    .name
                    .clone();
                let built = r.to_request(&name);
                (
                    Flavor::OllamaGenerate,
                    name,
                    built,
                    r.stream.unwrap_or(true),
                    false,
                )
            }
            Endpoint::Chat => {
                let r: wire::OllamaChat = wire::parse_body(&req.body).map_err(bad)?;
                let name = self
                    .find_model(&r.model)
                    .ok_or_else(|| not_found(&r.model))?
                    .name
                    .clone();
                let built = r.to_request(&name);
                (
                    Flavor::OllamaChat,
                    name,
                    built,
                    r.stream.unwrap_or(true),
                    false,
                )
            }
            Endpoint::OpenAiCompletions => {
                let r: wire::OpenAiCompletion = wire::parse_body(&req.body).map_err(bad)?;
                let name = self
                    .find_model(&r.model)
                    .ok_or_else(|| not_found(&r.model))?
                    .name
                    .clone();
                let built = r.to_request(&name).map_err(bad)?;
                let usage = r
                    .common
                    .stream_options
                    .as_ref()
                    .and_then(|o| o.include_usage);
                (
                    Flavor::OpenAiCompletion,
                    name,
                    Some(built),
                    r.common.stream.unwrap_or(false),
                    usage.unwrap_or(false),
                )
            }
            _ => {
                let r: wire::OpenAiChat = wire::parse_body(&req.body).map_err(bad)?;
                let name = self
                    .find_model(&r.model)
                    .ok_or_else(|| not_found(&r.model))?
                    .name
                    .clone();
                let built = r.to_request(&name).map_err(bad)?;
                let usage = r
                    .common
                    .stream_options
                    .as_ref()
                    .and_then(|o| o.include_usage);
                (
                    Flavor::OpenAiChat,
                    name,
                    Some(built),
                    r.common.stream.unwrap_or(false),
                    usage.unwrap_or(false),
                )
            }
        };
        let Some(request) = built else {
            // Ollama answers an empty prompt by loading the model: ours are loaded.
            let now = rfc3339_ms(self.env.unix_ms());
            let mut v = json!({
                "model": model_name,
                "created_at": now,
                "done": true,
                "done_reason": "load",
            });
            if flavor == Flavor::OllamaChat {
                v["message"] = json!({ "role": "assistant", "content": "" });
            } else {
                v["response"] = json!("");
            }
            return Ok(GenOrResponse::Response(Response::json(200, &v)));
        };
        Ok(GenOrResponse::Job(Job {
            flavor,
            request,
            stream,
            include_usage,
            keep_alive: req.keep_alive,
            framing: Framing::for_version(req.minor_version),
            started_ns,
        }))
    }

    /// Runs a job on `backend`, writing the response to `out`. Call it with the
    /// inference slot held.
    pub fn run_job(&self, job: Job, backend: &mut dyn Backend, out: &mut dyn Output) -> JobEnd {
        let endpoint = job.flavor.endpoint();
        let id = format!(
            "{}-{}",
            if job.flavor == Flavor::OpenAiChat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            self.next_id.fetch_add(1, Relaxed)
        );
        let created_s = self.env.unix_ms() / 1000;
        self.metrics.in_flight.fetch_add(1, Relaxed);
        let mut sink = Streamer {
            api: self,
            job: &job,
            out,
            id: &id,
            created_s,
            head_sent: false,
            alive: true,
        };
        let result = if job.stream {
            backend.generate(&job.request, &mut sink)
        } else {
            backend.generate(&job.request, &mut Collect(&mut *sink.out))
        };
        self.metrics.in_flight.fetch_sub(1, Relaxed);
        match result {
            Ok(r) => {
                self.record(&r);
                if job.stream {
                    sink.finish(&r)
                } else if r.finish == Some(Finish::Cancelled) {
                    // Nobody is left to answer.
                    self.metrics.count_request(endpoint, 200);
                    JobEnd::Disconnected
                } else {
                    let resp = Response::json(
                        200,
                        &self.final_object(&job, &r, &id, created_s, Some(&r.text)),
                    );
                    self.metrics.count_request(endpoint, 200);
                    if sink.out.send(&resp.to_bytes(job.keep_alive)) {
                        JobEnd::Done {
                            keep_alive: job.keep_alive,
                        }
                    } else {
                        JobEnd::Disconnected
                    }
                }
            }
            Err(e) => sink.fail(&e),
        }
    }

    fn record(&self, r: &GenResult) {
        let m = &self.metrics;
        m.generations.fetch_add(1, Relaxed);
        m.prompt_tokens.fetch_add(r.prompt_tokens, Relaxed);
        m.generated_tokens.fetch_add(r.completion_tokens, Relaxed);
        if r.finish == Some(Finish::Cancelled) {
            m.cancelled.fetch_add(1, Relaxed);
        }
        if r.eval_ns > 0 && r.completion_tokens > 1 {
            m.set_last_tok_per_s((r.completion_tokens - 1) as f64 * 1e9 / r.eval_ns as f64);
        }
    }

    /// The non-streamed response, or the last streamed object (`text` None: the
    /// pieces were already sent).
    fn final_object(
        &self,
        job: &Job,
        r: &GenResult,
        id: &str,
        created_s: u64,
        text: Option<&str>,
    ) -> Value {
        let model = job.request.model.as_str();
        let finish = match r.finish {
            Some(Finish::Length) => "length",
            _ => "stop",
        };
        let usage = json!({
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        });
        match job.flavor {
            Flavor::OllamaGenerate | Flavor::OllamaChat => {
                let total = self.env.monotonic_ns().saturating_sub(job.started_ns);
                let mut v = json!({
                    "model": model,
                    "created_at": rfc3339_ms(self.env.unix_ms()),
                    "done": true,
                    "done_reason": finish,
                    "total_duration": total,
                    "load_duration": r.load_ns,
                    "prompt_eval_count": r.prompt_tokens,
                    "prompt_eval_duration": r.prompt_eval_ns,
                    "eval_count": r.completion_tokens,
                    "eval_duration": r.eval_ns,
                });
                let text = text.unwrap_or("");
                if job.flavor == Flavor::OllamaChat {
                    v["message"] = json!({ "role": "assistant", "content": text });
                } else {
                    v["response"] = json!(text);
                }
                v
            }
            Flavor::OpenAiChat => {
                let choice = match text {
                    Some(t) => json!({
                        "index": 0,
                        "message": { "role": "assistant", "content": t },
                        "logprobs": Value::Null,
                        "finish_reason": finish,
                    }),
                    None => json!({
                        "index": 0,
                        "delta": {},
                        "logprobs": Value::Null,
                        "finish_reason": finish,
                    }),
                };
                let mut v = json!({
                    "id": id,
                    "object": if text.is_some() { "chat.completion" } else { "chat.completion.chunk" },
                    "created": created_s,
                    "model": model,
                    "choices": [choice],
                });
                if text.is_some() {
                    v["usage"] = usage;
                }
                v
            }
            Flavor::OpenAiCompletion => {
                let mut v = json!({
                    "id": id,
                    "object": "text_completion",
                    "created": created_s,
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "text": text.unwrap_or(""),
                        "logprobs": Value::Null,
                        "finish_reason": finish,
                    }],
                });
                if text.is_some() {
                    v["usage"] = usage;
                }
                v
            }
        }
    }
}

enum GenOrResponse {
    Job(Job),
    Response(Response),
}

/// The sink of a non-streamed generation: the backend keeps the text; this only
/// watches for the client leaving.
struct Collect<'a>(&'a mut dyn Output);

impl TokenSink for Collect<'_> {
    fn text(&mut self, _piece: &str) -> bool {
        !self.0.client_gone()
    }

    fn gone(&mut self) -> bool {
        self.0.client_gone()
    }
}

/// Writes a streamed response piece by piece: NDJSON lines for Ollama, server-sent
/// events for OpenAI.
struct Streamer<'a> {
    api: &'a Api,
    job: &'a Job,
    out: &'a mut dyn Output,
    id: &'a str,
    created_s: u64,
    head_sent: bool,
    alive: bool,
}

impl Streamer<'_> {
    fn send_framed(&mut self, data: &[u8]) {
        if self.alive {
            let framed = self.job.framing.chunk(data);
            self.alive = self.out.send(&framed);
        }
    }

    fn send_value(&mut self, v: &Value) {
        let text = v.to_string();
        let framed = if self.job.flavor.is_openai() {
            format!("data: {text}\n\n")
        } else {
            format!("{text}\n")
        };
        self.send_framed(framed.as_bytes());
    }

    /// The status line and headers, once, before the first piece; OpenAI chat streams
    /// open with a chunk that carries the assistant role.
    fn ensure_head(&mut self) {
        if self.head_sent {
            return;
        }
        self.head_sent = true;
        let ct = if self.job.flavor.is_openai() {
            http::SSE
        } else {
            http::NDJSON
        };
        let head = self.job.framing.head(200, ct, self.job.keep_alive);
        self.alive = self.out.send(&head);
        if self.job.flavor == Flavor::OpenAiChat {
            let v = self.chunk_value(None);
            self.send_value(&v);
        }
    }

    /// A per-piece object; `None` gives OpenAI chat's opening role chunk.
    fn chunk_value(&self, piece: Option<&str>) -> Value {
        let model = self.job.request.model.as_str();
        match self.job.flavor {
            Flavor::OllamaGenerate => json!({
                "model": model,
                "created_at": rfc3339_ms(self.api.env.unix_ms()),
                "response": piece.unwrap_or(""),
                "done": false,
            }),
            Flavor::OllamaChat => json!({
                "model": model,
                "created_at": rfc3339_ms(self.api.env.unix_ms()),
                "message": { "role": "assistant", "content": piece.unwrap_or("") },
                "done": false,
            }),
            Flavor::OpenAiChat => {
                let delta = match piece {
                    Some(p) => json!({ "content": p }),
                    None => json!({ "role": "assistant", "content": "" }),
                };
                json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created_s,
                    "model": model,
                    "choices": [{ "index": 0, "delta": delta, "logprobs": Value::Null, "finish_reason": Value::Null }],
                })
            }
            Flavor::OpenAiCompletion => json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created_s,
                "model": model,
                "choices": [{ "index": 0, "text": piece.unwrap_or(""), "logprobs": Value::Null, "finish_reason": Value::Null }],
            }),
        }
    }

    fn end_stream(&mut self) -> JobEnd {
        if self.alive {
            let end = self.job.framing.end();
            if !end.is_empty() {
                self.alive = self.out.send(end);
            }
        }
        if !self.alive {
            return JobEnd::Disconnected;
        }
        JobEnd::Done {
            keep_alive: self.job.keep_alive && self.job.framing == Framing::Chunked,
        }
    }

    fn finish(&mut self, r: &GenResult) -> JobEnd {
        let endpoint = self.job.flavor.endpoint();
        self.api.metrics.count_request(endpoint, 200);
        if !self.alive || r.finish == Some(Finish::Cancelled) {
            return JobEnd::Disconnected;
        }
        self.ensure_head();
        let last = self
            .api
            .final_object(self.job, r, self.id, self.created_s, None);
        self.send_value(&last);
        if self.job.flavor.is_openai() {
            if self.job.include_usage {
                let model = self.job.request.model.as_str();
                let object = if self.job.flavor == Flavor::OpenAiChat {
                    "chat.completion.chunk"
                } else {
                    "text_completion"
                };
                let v = json!({
                    "id": self.id,
                    "object": object,
                    "created": self.created_s,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                        "total_tokens": r.prompt_tokens + r.completion_tokens,
                    },
                });
                self.send_value(&v);
            }
            self.send_framed(b"data: [DONE]\n\n");
        }
        self.end_stream()
    }

    /// A failed generation: a proper error response if nothing was sent yet, else an
    /// error object inside the stream.
    fn fail(&mut self, e: &BackendError) -> JobEnd {
        let status = e.status();
        let openai = self.job.flavor.is_openai();
        self.api
            .metrics
            .count_request(self.job.flavor.endpoint(), status);
        let message = e.to_string();
        if !self.head_sent {
            let bytes = error_response(openai, status, &message).to_bytes(self.job.keep_alive);
            return if self.out.send(&bytes) {
                JobEnd::Done {
                    keep_alive: self.job.keep_alive,
                }
            } else {
                JobEnd::Disconnected
            };
        }
        let body = error_response(openai, status, &message).body;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.send_value(&v);
        self.end_stream()
    }
}

impl TokenSink for Streamer<'_> {
    fn text(&mut self, piece: &str) -> bool {
        self.ensure_head();
        let v = self.chunk_value(Some(piece));
        self.send_value(&v);
        self.alive
    }

    fn gone(&mut self) -> bool {
        if self.alive && self.out.client_gone() {
            self.alive = false;
        }
        !self.alive
    }
}
