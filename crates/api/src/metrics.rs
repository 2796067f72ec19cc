//! Server counters kept in atomics (so connection threads and the inference thread can
//! update them without a lock) and rendered as Prometheus text for `GET /metrics`.

use alloc::format;
use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The endpoints counted separately; anything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Root,
    Health,
    Metrics,
    Version,
    Tags,
    Show,
    Ps,
    Generate,
    Chat,
    OpenAiModels,
    OpenAiCompletions,
    OpenAiChat,
    Other,
}

const ENDPOINTS: [(Endpoint, &str); 13] = [
    (Endpoint::Root, "/"),
    (Endpoint::Health, "/health"),
    (Endpoint::Metrics, "/metrics"),
    (Endpoint::Version, "/api/version"),
    (Endpoint::Tags, "/api/tags"),
    (Endpoint::Show, "/api/show"),
    (Endpoint::Ps, "/api/ps"),
    (Endpoint::Generate, "/api/generate"),
    (Endpoint::Chat, "/api/chat"),
    (Endpoint::OpenAiModels, "/v1/models"),
    (Endpoint::OpenAiCompletions, "/v1/completions"),
    (Endpoint::OpenAiChat, "/v1/chat/completions"),
    (Endpoint::Other, "other"),
];

/// Status codes counted separately; anything else counts under the last slot as `other`.
const STATUSES: [u16; 14] = [
    200, 400, 401, 404, 405, 408, 413, 422, 431, 500, 501, 503, 505, 0,
];

impl Endpoint {
    pub fn from_path(path: &str) -> Self {
        ENDPOINTS
            .iter()
            .find(|(_, p)| *p == path)
            .map_or(Endpoint::Other, |(e, _)| *e)
    }

    fn index(self) -> usize {
        ENDPOINTS.iter().position(|(e, _)| *e == self).unwrap_or(12)
    }

    /// Whether errors on this endpoint use OpenAI's error format.
    pub fn is_openai(self) -> bool {
        matches!(
            self,
            Endpoint::OpenAiModels | Endpoint::OpenAiCompletions | Endpoint::OpenAiChat
        )
    }
}

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len() - 1)
}

/// The counters.
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; ENDPOINTS.len()],
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub generations: AtomicU64,
    pub cancelled: AtomicU64,
    /// Decode speed of the last generation, as `f64` bits.
    last_tok_per_s: AtomicU64,
    /// Requests waiting for the inference slot (set by the host).
    pub queue_depth: AtomicU64,
    /// Generations running now (0 or 1 with one slot).
    pub in_flight: AtomicU64,
    /// Open connections (set by the host).
    pub connections: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            requests: core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0))),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            last_tok_per_s: AtomicU64::new(0f64.to_bits()),
            queue_depth: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    pub fn count_request(&self, endpoint: Endpoint, status: u16) {
        self.requests[endpoint.index()][status_index(status)].fetch_add(1, Relaxed);
    }

    /// Requests answered so far on `endpoint` with `status`.
    pub fn requests(&self, endpoint: Endpoint, status: u16) -> u64 {
        self.requests[endpoint.index()][status_index(status)].load(Relaxed)
    }

    /// Requests answered so far by status class: index 2 counts 2xx, ..., 5 counts 5xx;
    /// index 0 the statuses not counted separately (no class known).
    pub fn requests_by_class(&self) -> [u64; 6] {
        let mut classes = [0u64; 6];
        for row in &self.requests {
            for (status, n) in STATUSES.iter().zip(row) {
                let class = usize::from(*status / 100).min(5);
                classes[class] += n.load(Relaxed);
            }
        }
        classes
    }

    pub fn set_last_tok_per_s(&self, v: f64) {
        self.last_tok_per_s.store(v.to_bits(), Relaxed);
    }

    pub fn last_tok_per_s(&self) -> f64 {
        f64::from_bits(self.last_tok_per_s.load(Relaxed))
    }

    /// Prometheus text exposition format.
    pub fn render(&self, memory_bytes: Option<u64>) -> String {
        let mut s = String::new();
        s.push_str(
            "# HELP embodios_http_requests_total HTTP requests answered, by endpoint and status.\n",
        );
        s.push_str("# TYPE embodios_http_requests_total counter\n");
        for (ei, (_, path)) in ENDPOINTS.iter().enumerate() {
            for (si, status) in STATUSES.iter().enumerate() {
                let n = self.requests[ei][si].load(Relaxed);
                if n > 0 {
                    let code = if *status == 0 {
                        String::from("other")
                    } else {
                        format!("{status}")
                    };
                    let _ = writeln!(
                        s,
                        "embodios_http_requests_total{{endpoint=\"{path}\",status=\"{code}\"}} {n}"
                    );
                }
            }
        }
        let mut gauge = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            "embodios_prompt_tokens_total",
            "counter",
            "Prompt tokens evaluated.",
            format!("{}", self.prompt_tokens.load(Relaxed)),
        );
        gauge(
            "embodios_generated_tokens_total",
            "counter",
            "Tokens generated.",
            format!("{}", self.generated_tokens.load(Relaxed)),
        );
        gauge(
            "embodios_generations_total",
            "counter",
            "Generations finished (including cancelled ones).",
            format!("{}", self.generations.load(Relaxed)),
        );
        gauge(
            "embodios_generations_cancelled_total",
            "counter",
            "Generations stopped because the client disconnected.",
            format!("{}", self.cancelled.load(Relaxed)),
        );
        gauge(
            "embodios_last_decode_tokens_per_second",
            "gauge",
            "Decode speed of the last generation.",
            format!("{:.3}", self.last_tok_per_s()),
        );
        gauge(
            "embodios_queue_depth",
            "gauge",
            "Requests waiting for the inference slot.",
            format!("{}", self.queue_depth.load(Relaxed)),
        );
        gauge(
            "embodios_inflight_generations",
            "gauge",
            "Generations running now.",
            format!("{}", self.in_flight.load(Relaxed)),
        );
        gauge(
            "embodios_open_connections",
            "gauge",
            "Client connections open now.",
            format!("{}", self.connections.load(Relaxed)),
        );
        if let Some(bytes) = memory_bytes {
            gauge(
                "embodios_memory_bytes",
                "gauge",
                "Memory in use as the platform reports it.",
                format!("{bytes}"),
            );
        }
        s
    }
}
