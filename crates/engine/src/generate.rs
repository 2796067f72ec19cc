//! The generation loop: prefill a prompt, then sample and evaluate tokens one at a time,
//! streaming text out and stopping on end-of-generation tokens, a token budget or stop
//! strings, while recording timings through a caller-supplied [`Clock`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::model::Model;
use crate::parallel::Parallel;
use crate::sampler::Sampler;
use crate::session::{EngineError, Session};

/// A monotonic clock in microseconds (the engine has no `std::time`).
pub trait Clock {
    fn now_us(&self) -> u64;
}

/// A clock that always reads 0, for callers that do not care about timings.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoClock;

impl Clock for NoClock {
    fn now_us(&self) -> u64 {
        0
    }
}

/// What the generator needs from a tokenizer: token bytes and end-of-generation ids.
pub trait Detokenize {
    /// Appends the bytes token `id` stands for (as generated text, without special
    /// handling of the leading space) to `out`.
    fn token_bytes(&self, id: u32, out: &mut Vec<u8>);
    /// `id` ends generation (EOS, EOT, `<|im_end|>`, ...).
    fn is_eog(&self, id: u32) -> bool;
}

impl Detokenize for embodios_tokenizer::Tokenizer {
    fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        // As llama.cpp's examples print tokens: control tokens render as nothing.
        out.extend_from_slice(self.token_to_piece(id, false));
    }

    fn is_eog(&self, id: u32) -> bool {
        embodios_tokenizer::Tokenizer::is_eog(self, id)
    }
}

/// Why generation stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (not streamed).
    EndOfGeneration(u32),
    /// `max_tokens` tokens were generated.
    MaxTokens,
    /// The text contained `stop[index]` (the stop string and what follows is not streamed).
    StopString(usize),
    /// The callback asked to stop.
    Cancelled,
    /// The session's context is full.
    ContextFull,
}

/// Why generation failed.
#[derive(Clone, Debug, PartialEq)]
pub enum GenerateError {
    /// The prompt was empty and the session has no logits to continue from.
    EmptyPrompt,
    /// The prompt does not fit in the remaining context.
    PromptTooLong {
        prompt: usize,
        pos: usize,
        capacity: usize,
    },
    Engine(EngineError),
    /// The sampler got no usable logits (all NaN).
    NoCandidates,
}

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenerateError::EmptyPrompt => f.write_str("the prompt is empty"),
            GenerateError::PromptTooLong {
                prompt,
                pos,
                capacity,
            } => write!(
                f,
                "prompt of {prompt} tokens does not fit: {pos} of {capacity} context positions \
                 are used"
            ),
            GenerateError::Engine(e) => write!(f, "{e}"),
            GenerateError::NoCandidates => {
                f.write_str("the model produced no usable logits (all NaN)")
            }
        }
    }
}

impl core::error::Error for GenerateError {}

impl From<EngineError> for GenerateError {
    fn from(e: EngineError) -> Self {
        GenerateError::Engine(e)
    }
}

/// Timings and counts of one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prefill time (prompt evaluation), microseconds.
    pub prefill_us: u64,
    /// From the start to the first sampled token, microseconds.
    pub ttft_us: u64,
    /// Time spent after the first token (evaluating and sampling the rest).
    pub decode_us: u64,
    /// Per generated token after the first: the time from the previous token.
    pub token_latencies_us: Vec<u64>,
}

impl GenerationStats {
    /// Prompt tokens per second during prefill.
    pub fn prefill_tok_per_s(&self) -> f64 {
        per_second(self.prompt_tokens, self.prefill_us)
    }

    /// Generated tokens per second after the first one.
    pub fn decode_tok_per_s(&self) -> f64 {
        per_second(self.token_latencies_us.len(), self.decode_us)
    }
}

fn per_second(n: usize, us: u64) -> f64 {
    if us == 0 {
        0.0
    } else {
        n as f64 * 1e6 / us as f64
    }
}

/// The outcome of [`Generator::run`].
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Sampled tokens, including a final end-of-generation token if there was one.
    pub tokens: Vec<u32>,
    /// The streamed text.
    pub text: String,
    pub stop: StopReason,
    pub stats: GenerationStats,
}

/// Generation settings plus the sampler.
#[derive(Clone, Debug)]
pub struct Generator {
    pub sampler: Sampler,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Text that ends generation when it appears in the output.
    pub stop: Vec<String>,
}

/// Turns token bytes into text: emits whole UTF-8 characters, keeps an incomplete
/// trailing sequence for the next token, and replaces invalid bytes with U+FFFD.
#[derive(Clone, Debug, Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8], out: &mut String) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            match core::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let good = start + e.valid_up_to();
                    // The prefix is valid by construction.
                    out.push_str(core::str::from_utf8(&self.pending[start..good]).unwrap_or(""));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start = good + bad;
                        }
                        None => {
                            start = good;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
    }

    fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            out.push('\u{FFFD}');
            self.pending.clear();
        }
    }
}

/// Holds back text that could be the start of a stop string.
struct StopFilter<'s> {
    stops: &'s [String],
    held: String,
}

impl StopFilter<'_> {
    /// Adds text; returns the text that is safe to emit and whether (and which) stop
    /// string was found (the text before it is emitted, the rest dropped).
    fn push(&mut self, text: &str, emit: &mut String) -> Option<usize> {
        self.held.push_str(text);
        let mut first: Option<(usize, usize)> = None;
        for (i, s) in self.stops.iter().enumerate() {
            if s.is_empty() {
                continue;
            }
            if let Some(at) = self.held.find(s.as_str()) {
                if first.is_none_or(|(a, _)| at < a) {
                    first = Some((at, i));
                }
            }
        }
        if let Some((at, i)) = first {
            emit.push_str(&self.held[..at]);
            self.held.clear();
            return Some(i);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in self.stops {
            let max = s.len().saturating_sub(1).min(self.held.len());
            for k in (keep + 1..=max).rev() {
                let tail_start = self.held.len() - k;
                if self.held.is_char_boundary(tail_start) && s.starts_with(&self.held[tail_start..])
                {
                    keep = k;
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        emit.push_str(&self.held[..cut]);
        self.held.drain(..cut);
        None
    }
}

impl Generator {
    pub fn new(sampler: Sampler, max_tokens: usize) -> Self {
        Self {
            sampler,
            max_tokens,
            stop: Vec::new(),
        }
    }

    /// Evaluates `prompt` (appended to whatever the session holds), then generates.
    /// `on_text` receives each piece of text as it becomes final and returns `false`
    /// to stop. The last sampled token is not evaluated into the session (as in
    /// llama.cpp); `session.tokens()` shows what the cache holds.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        model: &Model<'_>,
        session: &mut Session,
        detok: &dyn Detokenize,
        prompt: &[u32],
        par: &dyn Parallel,
        clock: &dyn Clock,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation, GenerateError> {
        let t0 = clock.now_us();
        if prompt.is_empty() && session.pos() == 0 {
            return Err(GenerateError::EmptyPrompt);
        }
        if session.pos() + prompt.len() > session.capacity() {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt.len(),
                pos: session.pos(),
                capacity: session.capacity(),
            });
        }
        let mut stats = GenerationStats {
            prompt_tokens: prompt.len(),
            ..GenerationStats::default()
        };
        if !prompt.is_empty() {
            model.forward(session, prompt, par)?;
        }
        stats.prefill_us = clock.now_us().saturating_sub(t0);

        let mut out = Generation {
            tokens: Vec::new(),
            text: String::new(),
            stop: StopReason::MaxTokens,
            stats: GenerationStats::default(),
        };
        let mut utf8 = Utf8Stream::default();
        let mut filter = StopFilter {
            stops: &self.stop,
            held: String::new(),
        };
        let mut bytes = Vec::new();
        let mut piece = String::new();
        let mut emit = String::new();
        let mut last = clock.now_us();
        let mut first_token_at = None;

        let stop = loop {
            if out.tokens.len() >= self.max_tokens {
                break StopReason::MaxTokens;
            }
            let token = self
                .sampler
                .sample(session.logits(), session.tokens())
                .ok_or(GenerateError::NoCandidates)?;
            let now = clock.now_us();
            if first_token_at.is_none() {
                first_token_at = Some(now);
                stats.ttft_us = now.saturating_sub(t0);
            } else {
                stats.token_latencies_us.push(now.saturating_sub(last));
            }
            last = now;
            out.tokens.push(token);
            if detok.is_eog(token) {
                break StopReason::EndOfGeneration(token);
            }
            bytes.clear();
            detok.token_bytes(token, &mut bytes);
            piece.clear();
            utf8.push(&bytes, &mut piece);
            emit.clear();
            let hit = filter.push(&piece, &mut emit);
            if !emit.is_empty() {
                out.text.push_str(&emit);
                if !on_text(&emit) {
                    break StopReason::Cancelled;
                }
            }
            if let Some(i) = hit {
                break StopReason::StopString(i);
            }
            if out.tokens.len() >= self.max_tokens {
                break StopReason::MaxTokens;
            }
            if session.pos() >= session.capacity() {
                break StopReason::ContextFull;
            }
            model.forward(session, &[token], par)?;
        };
        // Flush what was held back unless a stop string cut it off.
        if !matches!(stop, StopReason::StopString(_) | StopReason::Cancelled) {
            piece.clear();
            utf8.finish(&mut piece);
            emit.clear();
            let hit = filter.push(&piece, &mut emit);
            if hit.is_none() {
                emit.push_str(&filter.held);
            }
            if !emit.is_empty() {
                out.text.push_str(&emit);
                on_text(&emit);
            }
        }
        if let Some(t) = first_token_at {
            stats.decode_us = last.saturating_sub(t);
        }
        stats.generated_tokens = out.tokens.len();
        out.stop = stop;
        out.stats = stats;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn utf8_stream_joins_split_characters() {
        let mut u = Utf8Stream::default();
        let mut s = String::new();
        let e = "é".as_bytes();
        u.push(&e[..1], &mut s);
        assert_eq!(s, "");
        u.push(&e[1..], &mut s);
        assert_eq!(s, "é");
        u.push(&[0xff, b'a'], &mut s);
        assert_eq!(s, "é\u{FFFD}a");
    }

    #[test]
    fn stop_filter_holds_back_possible_prefixes() {
        let stops = vec!["<|im_end|>".to_string(), "\n\n".to_string()];
        let mut f = StopFilter {
            stops: &stops,
            held: String::new(),
        };
        let mut e = String::new();
        assert_eq!(f.push("Hello <|im", &mut e), None);
        assert_eq!(e, "Hello ");
        e.clear();
        assert_eq!(f.push("_e", &mut e), None);
        assert_eq!(e, "");
        assert_eq!(f.push("nd|> tail", &mut e), Some(0));
        assert_eq!(e, "");
        let mut f = StopFilter {
            stops: &stops,
            held: String::new(),
        };
        e.clear();
        assert_eq!(f.push("a\n", &mut e), None);
        assert_eq!(e, "a");
        assert_eq!(f.push("b", &mut e), None);
        assert_eq!(e, "a\nb");
        assert_eq!(f.push("\n\nc", &mut e), Some(1));
        assert_eq!(e, "a\nb");
    }
}
