//! What the API needs from an inference engine: the [`Backend`] trait a host (the
//! `embodios serve` command, or the kernel) implements, the request it receives and the
//! result it returns, plus the [`Env`] trait for clocks and memory figures.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use embodios_engine::{Generation, SamplerConfig, StopReason};

/// A loaded model as the listing endpoints describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name clients use (`model` in requests).
    pub name: String,
    /// Other names that select this model (for example `general.name`).
    pub aliases: Vec<String>,
    /// Architecture / family, as in `general.architecture` (`llama`, `gemma3`).
    pub family: String,
    /// Total parameters, when known.
    pub parameter_count: u64,
    /// Quantization label, for example `Q4_1`.
    pub quantization: String,
    /// File size in bytes.
    pub size_bytes: u64,
    /// Context positions the model is run with.
    pub context_length: u64,
    /// A stable identifier of the weights (hex), as Ollama's `digest`.
    pub digest: String,
    /// The chat template source text (may be empty).
    pub template: String,
    /// Seconds since the Unix epoch the file was last modified (0 if unknown).
    pub modified_unix_s: u64,
}

impl ModelInfo {
    /// Whether a request's `model` names this model: the name or an alias, with or
    /// without Ollama's default `:latest` tag.
    pub fn answers_to(&self, requested: &str) -> bool {
        let wanted = requested.strip_suffix(":latest").unwrap_or(requested);
        core::iter::once(&self.name)
            .chain(self.aliases.iter())
            .any(|n| n == wanted || n.strip_suffix(":latest") == Some(wanted))
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What to run: a raw completion or a chat through the model's template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Text completed as is (no template).
    Raw(String),
    /// A conversation; the backend renders it with the model's chat template and opens
    /// an assistant turn.
    Chat(Vec<ChatMessage>),
}

impl Prompt {
    /// The text to tokenize: a raw prompt as is, a chat rendered with `template` (the
    /// model's, or why it has none) with an assistant turn opened.
    pub fn render(
        &self,
        template: &Result<embodios_engine::ChatTemplate, String>,
    ) -> Result<String, BackendError> {
        match self {
            Prompt::Raw(p) => Ok(p.clone()),
            Prompt::Chat(messages) => {
                let template = template.as_ref().map_err(|e| {
                    BackendError::Invalid(alloc::format!("model has no usable chat template: {e}"))
                })?;
                let msgs: Vec<embodios_engine::Message<'_>> = messages
                    .iter()
                    .map(|x| embodios_engine::Message::new(&x.role, &x.content))
                    .collect();
                template
                    .render(&msgs, true)
                    .map_err(|e| BackendError::Invalid(alloc::format!("chat template: {e}")))
            }
        }
    }
}

/// Sampling settings; `None` means the backend's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl Sampling {
    /// These settings over `base`: each one the request gave replaces base's value.
    pub fn apply(&self, base: SamplerConfig) -> SamplerConfig {
        let mut c = base;
        if let Some(v) = self.temperature {
            c.temperature = v;
        }
        if let Some(v) = self.top_k {
            c.top_k = v as usize;
        }
        if let Some(v) = self.top_p {
            c.top_p = v;
        }
        if let Some(v) = self.min_p {
            c.min_p = v;
        }
        if let Some(v) = self.repeat_penalty {
            c.repeat_penalty = v;
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        c
    }
}

/// A generation request after the API layer has validated it.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    /// The canonical [`ModelInfo::name`] of a loaded model.
    pub model: String,
    pub prompt: Prompt,
    /// Most tokens to generate; `None` means until the model stops or the context is full.
    pub max_tokens: Option<u32>,
    /// Text that ends generation (not included in the output).
    pub stop: Vec<String>,
    pub sampling: Sampling,
}

/// Where generated text goes while it is produced.
pub trait TokenSink {
    /// Receives the next piece of final text. Returns `false` when the client is gone:
    /// the backend must stop generating and return promptly.
    fn text(&mut self, piece: &str) -> bool;

    /// Whether the client is gone, checked without sending anything; a backend asks
    /// between pieces of the prompt and between tokens, and stops when it is.
    fn gone(&mut self) -> bool {
        false
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token or a stop string.
    Stop,
    /// The token budget or the context ran out.
    Length,
    /// The sink asked to stop (client disconnected).
    Cancelled,
}

/// The outcome of a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenResult {
    /// Everything that was sent to the sink.
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub finish: Option<Finish>,
    /// Time spent preparing the model for this request (nanoseconds).
    pub load_ns: u64,
    /// Prompt evaluation time (nanoseconds).
    pub prompt_eval_ns: u64,
    /// Generation time after the prompt (nanoseconds).
    pub eval_ns: u64,
}

impl GenResult {
    /// The result of an engine generation over a prompt of `prompt_tokens` tokens, after
    /// `load_us` microseconds spent preparing the model for it.
    pub fn from_generation(g: &Generation, prompt_tokens: usize, load_us: u64) -> Self {
        let st = &g.stats;
        let finish = match g.stop {
            StopReason::EndOfGeneration(_) | StopReason::StopString(_) => Finish::Stop,
            StopReason::MaxTokens | StopReason::ContextFull => Finish::Length,
            StopReason::Cancelled => Finish::Cancelled,
        };
        GenResult {
            text: g.text.clone(),
            prompt_tokens: prompt_tokens as u64,
            completion_tokens: st.generated_tokens as u64,
            finish: Some(finish),
            load_ns: load_us * 1000,
            prompt_eval_ns: st.prefill_us * 1000,
            eval_ns: (st.ttft_us.saturating_sub(st.prefill_us) + st.decode_us) * 1000,
        }
    }
}

/// Why a generation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// No loaded model has that name.
    UnknownModel(String),
    /// The request cannot be served as given (prompt too long, no chat template...).
    Invalid(String),
    /// The engine failed.
    Internal(String),
}

impl BackendError {
    pub fn status(&self) -> u16 {
        match self {
            BackendError::UnknownModel(_) => 404,
            BackendError::Invalid(_) => 400,
            BackendError::Internal(_) => 500,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::UnknownModel(m) => write!(f, "model '{m}' not found"),
            BackendError::Invalid(m) | BackendError::Internal(m) => f.write_str(m),
        }
    }
}

/// An inference engine behind the API. One generation runs at a time per backend (the
/// host serialises access to it).
pub trait Backend {
    /// The loaded models (read once when the API is built).
    fn models(&self) -> Vec<ModelInfo>;
    /// Runs `req`, sending text to `sink` as it becomes final.
    fn generate(
        &mut self,
        req: &GenRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<GenResult, BackendError>;
}

/// Time and memory as the platform reports them.
pub trait Env {
    /// Wall-clock time, milliseconds since the Unix epoch (for `created_at`).
    fn unix_ms(&self) -> u64;
    /// A monotonic clock in nanoseconds (for durations).
    fn monotonic_ns(&self) -> u64;
    /// Memory in use by the process or kernel, bytes, if known.
    fn memory_bytes(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_overrides_only_what_the_request_gave() {
        let base = SamplerConfig::default();
        let s = Sampling {
            temperature: Some(0.0),
            top_k: Some(5),
            seed: Some(42),
            ..Sampling::default()
        };
        let c = s.apply(base.clone());
        assert_eq!((c.temperature, c.top_k, c.seed), (0.0, 5, 42));
        assert_eq!(
            (c.top_p, c.min_p, c.repeat_penalty),
            (base.top_p, base.min_p, base.repeat_penalty)
        );
        assert_eq!(Sampling::default().apply(base.clone()), base);
    }
}
