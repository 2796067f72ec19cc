//! EMBODIOS's network API: an HTTP/1.1 server core with Ollama- and OpenAI-compatible
//! endpoints, shared by the kernel (over smoltcp) and the host (`embodios serve`).
//!
//! # Design
//! The crate never touches sockets. A transport feeds the bytes it receives to a
//! [`Connection`] (one per client), which parses requests ([`http`]) and routes them
//! through the shared [`Api`] (`Sync`: configuration, the model list, atomic
//! [`Metrics`]). [`Connection::next_event`] answers with an [`Event`]:
//! - `Respond { bytes, close }`: quick endpoints and every error, ready to send;
//! - `Generate(job)`: a validated generation. Inference runs one at a time, so the
//!   transport queues the [`Job`] (bounded; when full it sends [`Api::busy_response`],
//!   a 503) and later calls [`Api::run_job`] with the [`Backend`] and an [`Output`] to
//!   the client. Streams are written piece by piece as the backend reports text to its
//!   [`TokenSink`]; a failed send (client gone) makes the sink return `false`, which
//!   stops the generation and frees the slot.
//! - `NeedMore`: read more bytes (call `next_event` again after each answer, as a
//!   buffer may hold pipelined requests).
//!
//! Time and memory come from the platform through [`Env`].
//!
//! # HTTP
//! HTTP/1.1 and 1.0, keep-alive (1.1 default; `Connection: close` honoured), pipelining,
//! `Expect: 100-continue`. Request bodies come with `Content-Length` or chunked (other
//! transfer codings get 501; both headers at once get 400). Limits ([`Limits`]): 16 KiB of request line and headers and at most
//! 64 header lines (431), 1 MiB of body (413, decided from the header before the body
//! is read). Malformed requests get 400 (505 for other HTTP versions) and the connection
//! closes; errors in a well-formed request (404, 405 with `Allow`, 400 for bad JSON,
//! wrong field types or missing fields, 401) keep it open. Streams use chunked transfer
//! encoding (HTTP/1.1) or end with the connection (HTTP/1.0). Timeouts for slow clients
//! are the transport's (it knows the clock); [`Connection::has_partial_request`] tells
//! it whether to answer [`Api::timeout_response`] (408) or just close an idle connection.
//!
//! # Endpoints
//! `GET /` and `GET /health` (liveness, never behind the API key), `GET /metrics`
//! (Prometheus text). Ollama: `GET /api/version`, `GET /api/tags`, `GET /api/ps`,
//! `POST /api/show`, `POST /api/generate`, `POST /api/chat` (`stream` defaults to true:
//! NDJSON lines, the last with `done: true`, `done_reason` and the timing fields in
//! nanoseconds). OpenAI: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (`stream` defaults to false: server-sent events ending
//! with `data: [DONE]`; `stream_options.include_usage` adds a usage chunk).
//!
//! Errors use each API's own format: `{"error": "..."}` for Ollama's paths and anything
//! outside `/v1/`, `{"error": {"message", "type", "param", "code"}}` under `/v1/`.
//! With [`Config::api_key`] set, every endpoint but `/` and `/health` needs
//! `Authorization: Bearer KEY` (401 otherwise, compared in constant time).
//!
//! Differences from Ollama: `/api/generate` completes the prompt raw (no chat template,
//! `system`/`template`/`format`/`images` are ignored) and returns no `context`;
//! unknown `options` are ignored; `num_predict` < 0 means "until the model stops or the
//! context is full". From OpenAI: only `n = 1`, text content parts only, no logprobs.
//! Sampling fields that are absent take the backend's defaults (llama.cpp's).

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backend;
pub mod http;
pub mod metrics;
pub mod server;
pub mod time;
pub mod wire;

pub use backend::{
    Backend, BackendError, ChatMessage, Env, Finish, GenRequest, GenResult, ModelInfo, Prompt,
    Sampling, TokenSink,
};
pub use http::{HttpError, Limits, Request, Response};
pub use metrics::{Endpoint, Metrics};
pub use server::{Api, Config, Connection, Event, Flavor, Job, JobEnd, Output};
