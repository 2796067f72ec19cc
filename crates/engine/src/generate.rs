//! The generation loop: prefill a prompt (in pieces, so that it can be cancelled),
//! then sample and evaluate tokens one at a time, streaming text out and stopping on
//! end-of-generation tokens, a token budget, stop strings or the caller's cancel check,
//! while recording timings through a caller-supplied [`Clock`]. After its first tokens
//! a generation allocates nothing per decoded token: its buffers are sized up front.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::model::Model;
use crate::ops::DotOrder;
use crate::parallel::Parallel;
use crate::sampler::Sampler;
use crate::session::{EngineError, Session, UBATCH};

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
    /// The text callback or the cancel check asked to stop. When that happened during
    /// the prompt, no token was generated and the session is back where it was before
    /// the call.
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
    /// The generation's buffers (token list, sampler candidates) could not be
    /// allocated; nothing was evaluated.
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
    },
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
            GenerateError::OutOfMemory { bytes } => write!(
                f,
                "out of memory: the generation's buffers need {bytes} bytes"
            ),
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
    /// Prompt tokens evaluated (fewer than the prompt's when it was cancelled).
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

/// Where a generation is when it polls its cancel check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    /// Before evaluating the next piece of the prompt: `evaluated` of `total` tokens
    /// are done.
    Prefill { evaluated: usize, total: usize },
    /// Before evaluating the `generated`-th sampled token (its text is streamed).
    Decode { generated: usize },
}

/// Prompt tokens per prefill piece by default: the cancel check runs between pieces,
/// and the session's batch buffers are sized for one piece.
pub const DEFAULT_PREFILL_PIECE: usize = 64;

/// The pieces (`start..end`) [`Generator`] evaluates a prompt of `n` tokens in, about
/// `piece` tokens each. [`Model::forward`] splits one call into micro-batches of 512
/// tokens and rounds a batch according to its size ([`DotOrder::for_batch`]), so the
/// pieces never straddle a micro-batch and every piece is in the same rounding class
/// as its micro-batch: a remainder of another class joins the piece before it, and a
/// micro-batch that a piece of `piece` tokens would round differently stays whole.
/// The logits and the cache are then bit for bit those of one call over the prompt.
pub fn prefill_pieces(n: usize, piece: usize) -> impl Iterator<Item = core::ops::Range<usize>> {
    let piece = piece.max(1);
    let (mut at, mut ub_start, mut ub_end) = (0, 0, 0);
    core::iter::from_fn(move || {
        if at >= n {
            return None;
        }
        if at >= ub_end {
            ub_start = at;
            ub_end = (at + UBATCH).min(n);
        }
        let class = DotOrder::for_batch(ub_end - ub_start);
        let mut end = (at + piece).min(ub_end);
        if DotOrder::for_batch(end - at) != class
            || (end < ub_end && DotOrder::for_batch(ub_end - end) != class)
        {
            end = ub_end;
        }
        let r = at..end;
        at = end;
        Some(r)
    })
}

/// The longest piece [`prefill_pieces`] cuts with `piece` (what a session's batch
/// buffers need room for, see [`crate::session::SessionOptions::max_batch`]).
pub fn largest_prefill_piece(piece: usize) -> usize {
    (1..=UBATCH)
        .flat_map(|n| prefill_pieces(n, piece))
        .map(|r| r.len())
        .max()
        .unwrap_or(1)
}

/// Generation settings plus the sampler.
#[derive(Clone, Debug)]
pub struct Generator {
    pub sampler: Sampler,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Text that ends generation when it appears in the output.
    pub stop: Vec<String>,
    /// Prompt tokens per prefill piece (see [`prefill_pieces`]; fewer than 8 makes a
    /// micro-batch of 8 or more one piece).
    pub prefill_piece: usize,
    /// Go on past end-of-generation tokens (streamed as their text), as a benchmark
    /// does.
    pub ignore_eog: bool,
}

/// Turns token bytes into text: emits whole UTF-8 characters, keeps an incomplete
/// trailing sequence for the next token, and replaces invalid bytes with U+FFFD (what
/// [`Generator`] streams).
#[derive(Clone, Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Appends the text `bytes` complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
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

    /// Ends the stream: an unfinished sequence becomes U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
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

/// Bytes the text buffers start with (a token longer than that grows them once).
const TEXT_BUFFER: usize = 256;

/// A token's bytes to streamed text: UTF-8 assembly, then the stop-string filter. The
/// buffers are reused from token to token.
struct TextStream<'s> {
    utf8: Utf8Stream,
    filter: StopFilter<'s>,
    bytes: Vec<u8>,
    piece: String,
    emit: String,
}

/// What one token's text did.
enum Fed {
    Go,
    /// The sink asked to stop.
    Cancelled,
    /// `stop[i]` appeared.
    StopString(usize),
}

impl<'s> TextStream<'s> {
    fn new(stops: &'s [String]) -> Result<Self, GenerateError> {
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        let oom = |_| GenerateError::OutOfMemory {
            bytes: 4 * TEXT_BUFFER + longest,
        };
        let mut t = Self {
            utf8: Utf8Stream::default(),
            filter: StopFilter {
                stops,
                held: String::new(),
            },
            bytes: Vec::new(),
            piece: String::new(),
            emit: String::new(),
        };
        t.utf8.pending.try_reserve(TEXT_BUFFER).map_err(oom)?;
        t.filter
            .held
            .try_reserve(TEXT_BUFFER + longest)
            .map_err(oom)?;
        t.bytes.try_reserve(TEXT_BUFFER).map_err(oom)?;
        t.piece.try_reserve(TEXT_BUFFER).map_err(oom)?;
        t.emit.try_reserve(TEXT_BUFFER + longest).map_err(oom)?;
        Ok(t)
    }

    /// Streams `token`'s text to `sink`.
    fn feed(
        &mut self,
        detok: &dyn Detokenize,
        token: u32,
        sink: &mut dyn FnMut(&str) -> bool,
    ) -> Fed {
        self.bytes.clear();
        detok.token_bytes(token, &mut self.bytes);
        self.piece.clear();
        self.utf8.push(&self.bytes, &mut self.piece);
        self.emit.clear();
        let hit = self.filter.push(&self.piece, &mut self.emit);
        if !self.emit.is_empty() && !sink(&self.emit) {
            return Fed::Cancelled;
        }
        match hit {
            Some(i) => Fed::StopString(i),
            None => Fed::Go,
        }
    }

    /// Streams what was held back (an unfinished character, a possible stop prefix).
    fn finish(&mut self, sink: &mut dyn FnMut(&str) -> bool) {
        self.piece.clear();
        self.utf8.finish(&mut self.piece);
        self.emit.clear();
        let hit = self.filter.push(&self.piece, &mut self.emit);
        if hit.is_none() {
            self.emit.push_str(&self.filter.held);
        }
        if !self.emit.is_empty() {
            sink(&self.emit);
        }
    }
}

impl Generator {
    pub fn new(sampler: Sampler, max_tokens: usize) -> Self {
        Self {
            sampler,
            max_tokens,
            stop: Vec::new(),
            prefill_piece: DEFAULT_PREFILL_PIECE,
            ignore_eog: false,
        }
    }

    /// [`Generator::run_with`] without a cancel check (`on_text` can still stop it).
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
        self.run_with(
            model,
            session,
            detok,
            prompt,
            par,
            clock,
            on_text,
            &mut |_| false,
        )
    }

    /// Evaluates `prompt` (appended to whatever the session holds) in
    /// [`prefill_pieces`], then generates. `on_text` receives each piece of text as it
    /// becomes final and returns `false` to stop; `cancel` is polled before every
    /// prefill piece and before evaluating every sampled token, and returns `true` to
    /// stop. A prompt stopped part way is taken back out of the session (which then
    /// holds what it held before the call, logits included), so the next call works.
    /// The last sampled token is not evaluated into the session (as in llama.cpp);
    /// `session.tokens()` shows what the cache holds.
    ///
    /// Every buffer the loop needs is sized before the prompt is evaluated (the token
    /// and latency lists for the most tokens the budget and context allow, the
    /// sampler's candidates, the text buffers), and the returned text is put together
    /// after the loop from the tokens, so decoding a token allocates nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with(
        &mut self,
        model: &Model<'_>,
        session: &mut Session,
        detok: &dyn Detokenize,
        prompt: &[u32],
        par: &dyn Parallel,
        clock: &dyn Clock,
        on_text: &mut dyn FnMut(&str) -> bool,
        cancel: &mut dyn FnMut(Checkpoint) -> bool,
    ) -> Result<Generation, GenerateError> {
        let t0 = clock.now_us();
        let start = session.pos();
        if prompt.is_empty() && start == 0 {
            return Err(GenerateError::EmptyPrompt);
        }
        if start + prompt.len() > session.capacity() {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt.len(),
                pos: start,
                capacity: session.capacity(),
            });
        }
        // Every sampled token but the last takes a position.
        let budget = self
            .max_tokens
            .min(session.capacity() - start - prompt.len() + 1);
        let mut tokens: Vec<u32> = Vec::new();
        let mut latencies: Vec<u64> = Vec::new();
        let vocab = model.config.vocab_size;
        let oom = |bytes: usize| move |_| GenerateError::OutOfMemory { bytes };
        tokens.try_reserve_exact(budget).map_err(oom(budget * 4))?;
        latencies
            .try_reserve_exact(budget)
            .map_err(oom(budget * 8))?;
        self.sampler
            .reserve(vocab, session.capacity())
            .map_err(oom(self.sampler.reserved_bytes(vocab, session.capacity())))?;
        let mut text = TextStream::new(&self.stop)?;

        let mut stats = GenerationStats::default();
        let mut cancelled = false;
        for r in prefill_pieces(prompt.len(), self.prefill_piece) {
            if cancel(Checkpoint::Prefill {
                evaluated: r.start,
                total: prompt.len(),
            }) {
                cancelled = true;
                break;
            }
            // Only the last piece needs the vocabulary's logits.
            let last = r.end == prompt.len();
            if let Err(e) = model.evaluate(session, &prompt[r.clone()], last, par) {
                session.truncate(start);
                return Err(e.into());
            }
            stats.prompt_tokens = r.end;
        }
        stats.prefill_us = clock.now_us().saturating_sub(t0);
        if cancelled {
            // The pieces evaluated so far are valid, but the session's logits are still
            // those of `start` (no piece computed any): go back there.
            session.truncate(start);
            return Ok(Generation {
                tokens,
                text: String::new(),
                stop: StopReason::Cancelled,
                stats,
            });
        }

        let mut last = clock.now_us();
        let mut first_token_at = None;
        let stop = loop {
            if tokens.len() >= self.max_tokens {
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
                latencies.push(now.saturating_sub(last));
            }
            last = now;
            tokens.push(token);
            if !self.ignore_eog && detok.is_eog(token) {
                break StopReason::EndOfGeneration(token);
            }
            match text.feed(detok, token, on_text) {
                Fed::Go => {}
                Fed::Cancelled => break StopReason::Cancelled,
                Fed::StopString(i) => break StopReason::StopString(i),
            }
            if tokens.len() >= self.max_tokens {
                break StopReason::MaxTokens;
            }
            if session.pos() >= session.capacity() {
                break StopReason::ContextFull;
            }
            if cancel(Checkpoint::Decode {
                generated: tokens.len(),
            }) {
                break StopReason::Cancelled;
            }
            model.forward(session, &[token], par)?;
        };
        // Flush what was held back unless a stop string or the caller cut it off.
        let flush = !matches!(stop, StopReason::StopString(_) | StopReason::Cancelled);
        if flush {
            text.finish(on_text);
        }
        if let Some(t) = first_token_at {
            stats.decode_us = last.saturating_sub(t);
        }
        stats.generated_tokens = tokens.len();
        stats.token_latencies_us = latencies;
        // The streamed text, put together again from the same tokens through the same
        // steps (deterministic, so it is exactly what `on_text` received) now that
        // allocating does not matter.
        let mut all = String::new();
        let mut again = TextStream::new(&self.stop)?;
        let mut collect = |s: &str| {
            all.push_str(s);
            true
        };
        for &t in &tokens {
            if !self.ignore_eog && detok.is_eog(t) {
                break;
            }
            if let Fed::StopString(_) = again.feed(detok, t, &mut collect) {
                break;
            }
        }
        if flush {
            again.finish(&mut collect);
        }
        Ok(Generation {
            tokens,
            text: all,
            stop,
            stats,
        })
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
