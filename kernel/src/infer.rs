//! Running the active model from the console: sampling settings (`set`/`get`),
//! `generate`, the `talk` chat loop, `bench`, and the timing figures `perf` shows.
//! Generation streams text as it comes and stops early on Ctrl-C.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use embodios_engine::generate::{Checkpoint, Utf8Stream};
use embodios_engine::{
    Generation, GenerationStats, Generator, Message, Sampler, SamplerConfig, StopReason,
};

use crate::models::{Loaded, Registry};
use crate::parallel::{self, CpuPool, TscClock};

/// The keys `set` and `get` accept, in the order `get` lists them.
pub const KEYS: &[&str] = &[
    "temp",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "seed",
    "max_tokens",
    "threads",
];

/// Sampling and generation settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sampler settings (temperature, top-k, ...), llama.cpp's defaults to start with.
    pub sampler: SamplerConfig,
    /// Most tokens one `generate` or `talk` reply produces.
    pub max_tokens: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sampler: SamplerConfig::default(),
            max_tokens: 128,
        }
    }
}

/// Why `set` refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// Not one of [`KEYS`].
    UnknownKey(String),
    /// The value does not parse or is out of range.
    BadValue {
        key: &'static str,
        value: String,
        want: &'static str,
    },
}

impl core::fmt::Display for SetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetError::UnknownKey(k) => {
                write!(f, "unknown setting `{k}`; valid keys: {}", KEYS.join(", "))
            }
            SetError::BadValue { key, value, want } => write!(
                f,
                "bad value `{value}` for {key}: expected {want} (valid keys: {})",
                KEYS.join(", ")
            ),
        }
    }
}

impl Settings {
    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SetError> {
        let Some(&k) = KEYS.iter().find(|&&k| k == key) else {
            return Err(SetError::UnknownKey(key.to_string()));
        };
        let bad = |want| SetError::BadValue {
            key: k,
            value: value.to_string(),
            want,
        };
        let float = |lo: f32, hi: f32, want| {
            value
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && *v >= lo && *v <= hi)
                .ok_or_else(|| bad(want))
        };
        match k {
            "temp" => self.sampler.temperature = float(0.0, 100.0, "a number from 0 to 100")?,
            "top_p" => self.sampler.top_p = float(0.0, 1.0, "a number from 0 to 1")?,
            "min_p" => self.sampler.min_p = float(0.0, 1.0, "a number from 0 to 1")?,
            "repeat_penalty" => {
                self.sampler.repeat_penalty = float(0.01, 100.0, "a number from 0.01 to 100")?
            }
            "top_k" => {
                self.sampler.top_k = value
                    .parse()
                    .map_err(|_| bad("a whole number (0 disables)"))?
            }
            "seed" => {
                self.sampler.seed = value.parse().map_err(|_| bad("a whole number (64-bit)"))?
            }
            "max_tokens" => {
                self.max_tokens = value
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| (1..=crate::models::CONTEXT).contains(&n))
                    .ok_or_else(|| bad("a whole number from 1 to 2048"))?
            }
            _ => {
                let online = crate::arch::x86_64::smp::online_cpus();
                let n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| (1..=online).contains(&n))
                    .ok_or_else(|| bad("a number of cores from 1 to the cores online"))?;
                parallel::set_thread_limit(n);
            }
        }
        Ok(())
    }

    /// The value of `key` as text (None for an unknown key).
    pub fn get(&self, key: &str) -> Option<String> {
        let s = &self.sampler;
        Some(match key {
            "temp" => format!("{}", s.temperature),
            "top_k" => format!("{}", s.top_k),
            "top_p" => format!("{}", s.top_p),
            "min_p" => format!("{}", s.min_p),
            "repeat_penalty" => format!("{}", s.repeat_penalty),
            "seed" => format!("{}", s.seed),
            "max_tokens" => format!("{}", self.max_tokens),
            "threads" => format!("{}", parallel::threads()),
            _ => return None,
        })
    }
}

/// Summary figures of one generation.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Model name.
    pub model: String,
    /// Workers used.
    pub threads: usize,
    /// Prompt tokens evaluated (not counting those reused from the cache).
    pub prompt_tokens: usize,
    /// Tokens sampled.
    pub gen_tokens: usize,
    /// Time to first token, ms.
    pub ttft_ms: f64,
    /// Prompt evaluation speed.
    pub prefill_tok_s: f64,
    /// Generation speed after the first token.
    pub decode_tok_s: f64,
    /// Inter-token latency percentiles and spread, ms.
    pub itl_p50_ms: f64,
    /// 99th percentile.
    pub itl_p99_ms: f64,
    /// Largest.
    pub itl_max_ms: f64,
    /// Sample standard deviation.
    pub itl_stddev_ms: f64,
}

/// Nearest-rank quantile of sorted values (0 for none).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = libm::ceil(q * sorted.len() as f64) as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sample standard deviation (0 for fewer than two values).
pub fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (v.len() - 1) as f64;
    libm::sqrt(var)
}

impl Figures {
    /// Figures from the engine's statistics.
    pub fn new(model: &str, threads: usize, s: &GenerationStats) -> Self {
        let itl: Vec<f64> = s
            .token_latencies_us
            .iter()
            .map(|&us| us as f64 / 1e3)
            .collect();
        let mut sorted = itl.clone();
        sorted.sort_by(f64::total_cmp);
        Figures {
            model: model.to_string(),
            threads,
            prompt_tokens: s.prompt_tokens,
            gen_tokens: s.generated_tokens,
            ttft_ms: s.ttft_us as f64 / 1e3,
            prefill_tok_s: s.prefill_tok_per_s(),
            decode_tok_s: s.decode_tok_per_s(),
            itl_p50_ms: percentile(&sorted, 0.50),
            itl_p99_ms: percentile(&sorted, 0.99),
            itl_max_ms: sorted.last().copied().unwrap_or(0.0),
            itl_stddev_ms: stddev(&itl),
        }
    }

    /// One line for `status` and after each generation.
    pub fn line(&self) -> String {
        format!(
            "{}: {} prompt tokens, {} generated; ttft {:.1} ms; prefill {:.2} tok/s; \
             decode {:.2} tok/s; {} cores",
            self.model,
            self.prompt_tokens,
            self.gen_tokens,
            self.ttft_ms,
            self.prefill_tok_s,
            self.decode_tok_s,
            self.threads
        )
    }

    /// The `bench --json` line.
    pub fn json(&self) -> String {
        let mut name = String::new();
        for c in self.model.chars() {
            match c {
                '"' => name.push_str("\\\""),
                '\\' => name.push_str("\\\\"),
                c if (c as u32) < 0x20 => name.push_str(&format!("\\u{:04x}", c as u32)),
                c => name.push(c),
            }
        }
        format!(
            "{{\"model\":\"{name}\",\"threads\":{},\"prompt_tokens\":{},\"gen_tokens\":{},\
             \"ttft_ms\":{:.3},\"prefill_tok_s\":{:.3},\"decode_tok_s\":{:.3},\
             \"itl_p50_ms\":{:.3},\"itl_p99_ms\":{:.3},\"itl_stddev_ms\":{:.3}}}",
            self.threads,
            self.prompt_tokens,
            self.gen_tokens,
            self.ttft_ms,
            self.prefill_tok_s,
            self.decode_tok_s,
            self.itl_p50_ms,
            self.itl_p99_ms,
            self.itl_stddev_ms
        )
    }
}

/// The last generation and totals since boot.
#[derive(Debug, Clone, Default)]
pub struct Perf {
    /// The last generation, if any.
    pub last: Option<Figures>,
    /// Generations since boot.
    pub generations: usize,
    /// Prompt tokens evaluated since boot.
    pub prompt_tokens: usize,
    /// Tokens generated since boot.
    pub gen_tokens: usize,
    /// Time spent in prefill, µs.
    pub prefill_us: u64,
    /// Time spent decoding after first tokens, µs.
    pub decode_us: u64,
    /// Tokens decoded after first tokens.
    pub decoded: usize,
    /// Allocations counted in the last generation's decode loop.
    pub last_allocs: AllocCount,
    /// Allocations counted in every decode loop since boot.
    pub allocs: AllocCount,
}

impl Perf {
    fn record(&mut self, f: Figures, s: &GenerationStats, allocs: AllocCount) {
        self.generations += 1;
        self.last_allocs = allocs;
        self.allocs.tokens += allocs.tokens;
        self.allocs.allocations += allocs.allocations;
        self.prompt_tokens += s.prompt_tokens;
        self.gen_tokens += s.generated_tokens;
        self.prefill_us += s.prefill_us;
        self.decode_us += s.decode_us;
        self.decoded += s.token_latencies_us.len();
        // The record outlives the generation: keep its name in one buffer, sized once,
        // so that a generation leaves the heap as it found it (unloading a model then
        // gives back exactly what loading it took).
        let mut name = match self.last.take() {
            Some(last) => last.model,
            None => String::with_capacity(64),
        };
        name.clear();
        name.push_str(&f.model);
        self.last = Some(Figures { model: name, ..f });
    }

    /// Prints the `perf` report.
    pub fn print(&self) {
        match &self.last {
            None => println!("no generation yet"),
            Some(f) => {
                println!("last generation ({}):", f.model);
                println!("  prompt tokens:    {}", f.prompt_tokens);
                println!("  generated tokens: {}", f.gen_tokens);
                println!("  time to first:    {:.1} ms", f.ttft_ms);
                println!("  prefill:          {:.2} tok/s", f.prefill_tok_s);
                println!("  decode:           {:.2} tok/s", f.decode_tok_s);
                println!(
                    "  inter-token:      p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, stddev {:.1} ms",
                    f.itl_p50_ms, f.itl_p99_ms, f.itl_max_ms, f.itl_stddev_ms
                );
                println!("  cores used:       {}", f.threads);
                println!(
                    "  heap allocations: {} in {} decoded tokens after the first {WARM_UP_TOKENS} ({} per token)",
                    self.last_allocs.allocations,
                    self.last_allocs.tokens,
                    per_token(self.last_allocs)
                );
            }
        }
        let rate = |n: usize, us: u64| {
            if us == 0 {
                0.0
            } else {
                n as f64 * 1e6 / us as f64
            }
        };
        println!(
            "session: {} generations, {} prompt tokens, {} generated; prefill {:.2} tok/s, \
             decode {:.2} tok/s",
            self.generations,
            self.prompt_tokens,
            self.gen_tokens,
            rate(self.prompt_tokens, self.prefill_us),
            rate(self.decoded, self.decode_us)
        );
        println!(
            "session heap allocations while decoding: {} in {} tokens ({} per token)",
            self.allocs.allocations,
            self.allocs.tokens,
            per_token(self.allocs)
        );
    }
}

/// Allocations per token as text (`0`, `0.25`, or `-` when nothing was counted).
fn per_token(a: AllocCount) -> String {
    if a.tokens == 0 {
        "-".to_string()
    } else if a.allocations == 0 {
        "0".to_string()
    } else {
        format!("{:.2}", a.allocations as f64 / a.tokens as f64)
    }
}

/// Input that arrived while a generation ran (other than Ctrl-C); the shell reads it
/// next.
static PENDING: spin::Mutex<Vec<u8>> = spin::Mutex::new(Vec::new());

/// Takes the bytes typed during a generation.
pub fn take_pending() -> Vec<u8> {
    core::mem::take(&mut *PENDING.lock())
}

/// Reads serial and keyboard input; true when Ctrl-C was pressed (the rest is kept).
/// Allocates only when input arrived.
fn interrupted() -> bool {
    let mut input = Vec::new();
    while let Some(b) = crate::drivers::serial::read_byte() {
        input.push(b);
    }
    crate::drivers::keyboard::poll(&mut input);
    if input.is_empty() {
        return false;
    }
    let stop = input.contains(&0x03);
    input.retain(|&b| b != 0x03);
    PENDING.lock().extend_from_slice(&input);
    stop
}

/// Prompt tokens per prefill piece (the engine's [`Generator`] cuts the pieces so that
/// the logits are bit for bit those of one call). Input is polled between pieces, so
/// Ctrl-C stops a prompt within one piece, and the session's batch buffers, sized for
/// the largest piece at `load`, stay small (about 58 KiB per token for SmolLM2).
pub const PREFILL_PIECE: usize = 16;

/// The text `pieces` of token bytes stream as (the engine's UTF-8 assembly, for the
/// in-kernel tests).
pub fn stream_utf8(pieces: &[&[u8]]) -> String {
    let mut stream = Utf8Stream::default();
    let mut text = String::new();
    for p in pieces {
        stream.push(p, &mut text);
    }
    stream.finish(&mut text);
    text
}

/// Heap allocations seen while decoding (after the warm-up tokens).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllocCount {
    /// Decoded tokens counted.
    pub tokens: usize,
    /// Allocations (and reallocations) made meanwhile, on every CPU.
    pub allocations: u64,
}

/// Decoded tokens not counted at the start of a generation (the buffers are sized up
/// front, so this is a margin, not a need).
const WARM_UP_TOKENS: usize = 2;

#[allow(clippy::too_many_arguments)]
/// Runs `prompt` (appended to what `m`'s session holds) through the engine's
/// [`Generator`] and generates up to `max_tokens`, streaming to the console unless
/// `bench` (which also goes on past end-of-generation tokens). The prompt is evaluated
/// in pieces of [`PREFILL_PIECE`] tokens and input is polled between pieces and between
/// tokens (the generator's cancel check), so Ctrl-C stops both the prefill and the
/// decode. The generator allocates nothing per decoded token; the cancel check, which
/// runs once per token, counts the heap's allocations to prove it.
fn run(
    name: &str,
    m: &mut Loaded,
    sampler: SamplerConfig,
    max_tokens: usize,
    prompt: &[u32],
    bench: bool,
    perf: &mut Perf,
) -> Result<Generation, String> {
    let threads = parallel::threads();
    let _hot = parallel::HotPool::new();
    let heap_before = crate::mem::stats().heap_used;
    crate::mem::reset_peak();
    let mut generator = Generator::new(Sampler::new(sampler), max_tokens);
    generator.prefill_piece = PREFILL_PIECE;
    generator.ignore_eog = bench;
    let mut allocs = AllocCount::default();
    let mut allocs_at = 0u64;
    let g = generator
        .run_with(
            &m.model,
            &mut m.session,
            &m.tokenizer,
            prompt,
            &CpuPool,
            &TscClock,
            &mut |s| {
                if !bench {
                    print!("{s}");
                }
                true
            },
            &mut |c| {
                if let Checkpoint::Decode { generated } = c {
                    // Allocations since the previous checkpoint: one decoded token's
                    // forward pass and the next token's sampling and streaming, counted
                    // once the first WARM_UP_TOKENS tokens are out.
                    let count = crate::mem::allocations();
                    if generated > WARM_UP_TOKENS {
                        allocs.tokens += 1;
                        allocs.allocations += count - allocs_at;
                    }
                    allocs_at = count;
                }
                interrupted()
            },
        )
        .map_err(|e| e.to_string())?;
    let peak = crate::mem::peak_bytes().saturating_sub(heap_before);
    m.peak_generation_bytes = m.peak_generation_bytes.max(peak);
    perf.record(Figures::new(name, threads, &g.stats), &g.stats, allocs);
    Ok(g)
}

fn stop_text(s: &StopReason) -> &'static str {
    match s {
        StopReason::EndOfGeneration(_) => "end of generation",
        StopReason::MaxTokens => "max tokens",
        StopReason::StopString(_) => "stop string",
        StopReason::Cancelled => "interrupted (Ctrl-C)",
        StopReason::ContextFull => "context full",
    }
}

fn no_active() -> String {
    "no active model: `models` lists them, `load NAME` loads one".to_string()
}

/// `generate PROMPT`: a raw completion (no chat template) on a fresh context.
pub fn generate(reg: &mut Registry, settings: &Settings, perf: &mut Perf, prompt: &str) {
    let Some((name, m)) = reg.active() else {
        println!("{}", no_active());
        return;
    };
    if prompt.is_empty() {
        println!("usage: generate PROMPT");
        return;
    }
    let name = name.to_string();
    m.session.reset();
    m.history.clear();
    let ids = m.tokenizer.encode(prompt, true, true);
    let r = run(
        &name,
        m,
        settings.sampler.clone(),
        settings.max_tokens,
        &ids,
        false,
        perf,
    );
    match r {
        Ok(g) => {
            println!();
            let f = Figures::new(&name, parallel::threads(), &g.stats);
            println!(
                "[generate: stopped on {}; {}]",
                stop_text(&g.stop),
                f.line()
            );
        }
        Err(e) => println!("\ngenerate failed: {e}"),
    }
}

/// The fixed benchmark: 64 prompt tokens, 128 generated, greedy, on a fresh context.
pub fn bench(reg: &mut Registry, perf: &mut Perf, json: bool) {
    const PROMPT_TOKENS: usize = 64;
    const GEN_TOKENS: usize = 128;
    let Some((name, m)) = reg.active() else {
        println!("{}", no_active());
        return;
    };
    let name = name.to_string();
    let text = "The history of computing is a story of machines that grew smaller, faster \
                and cheaper, while the programs they ran grew larger and more capable. ";
    let unit = m.tokenizer.encode(text, false, false);
    if unit.is_empty() {
        println!("bench: the tokenizer produced no tokens for the benchmark text");
        return;
    }
    let mut ids = m.tokenizer.encode("", true, false);
    while ids.len() < PROMPT_TOKENS {
        ids.extend_from_slice(&unit);
    }
    ids.truncate(PROMPT_TOKENS);
    if m.session.capacity() < PROMPT_TOKENS + GEN_TOKENS {
        println!(
            "bench: the context ({} tokens) is shorter than the benchmark needs",
            m.session.capacity()
        );
        return;
    }
    m.session.reset();
    m.history.clear();
    if !json {
        println!(
            "bench: {name}, {PROMPT_TOKENS} prompt tokens, {GEN_TOKENS} generated, greedy, {} cores",
            parallel::threads()
        );
    }
    match run(
        &name,
        m,
        SamplerConfig::greedy(),
        GEN_TOKENS,
        &ids,
        true,
        perf,
    ) {
        Ok(g) => {
            let f = Figures::new(&name, parallel::threads(), &g.stats);
            if json {
                println!("{}", f.json());
            } else {
                println!("{}", f.line());
                println!(
                    "inter-token: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, stddev {:.1} ms",
                    f.itl_p50_ms, f.itl_p99_ms, f.itl_max_ms, f.itl_stddev_ms
                );
            }
        }
        Err(e) => println!("bench failed: {e}"),
    }
}

/// One `talk` turn: renders the whole conversation with the chat template, evaluates
/// only what the KV cache does not already hold, streams the reply.
pub fn talk_turn(reg: &mut Registry, settings: &Settings, perf: &mut Perf, text: &str) {
    let Some((name, m)) = reg.active() else {
        println!("{}", no_active());
        return;
    };
    let name = name.to_string();
    let template = match &m.template {
        Ok(t) => *t,
        Err(e) => {
            println!("`{name}` has no usable chat template: {e}");
            return;
        }
    };
    m.history.push(("user".to_string(), text.to_string()));
    let messages: Vec<Message<'_>> = m.history.iter().map(|(r, c)| Message::new(r, c)).collect();
    let prompt = match template.render(&messages, true) {
        Ok(p) => p,
        Err(e) => {
            m.history.pop();
            println!("chat template: {e}");
            return;
        }
    };
    let ids = m.tokenizer.encode(&prompt, true, true);
    let shared = m.session.reuse_prefix(&ids);
    let r = run(
        &name,
        m,
        settings.sampler.clone(),
        settings.max_tokens,
        &ids[shared..],
        false,
        perf,
    );
    println!();
    match r {
        Ok(g) => {
            let f = Figures::new(&name, parallel::threads(), &g.stats);
            println!(
                "[turn: {} new prompt tokens, {shared} reused from the cache; {} generated; \
                 stopped on {}; decode {:.2} tok/s]",
                f.prompt_tokens,
                f.gen_tokens,
                stop_text(&g.stop),
                f.decode_tok_s
            );
            if g.tokens.is_empty() {
                // Stopped during the prompt: the model never answered this turn.
                m.history.pop();
            } else {
                m.history.push(("assistant".to_string(), g.text));
            }
        }
        Err(e) => {
            m.history.pop();
            println!("talk: {e}");
        }
    }
}

/// `/reset` in `talk`: forget the conversation and its cache.
pub fn talk_reset(reg: &mut Registry) {
    if let Some((_, m)) = reg.active() {
        m.history.clear();
        m.session.reset();
    }
}

/// Gives back input a line reader read past the end of its line.
pub fn push_pending(bytes: &[u8]) {
    if !bytes.is_empty() {
        PENDING.lock().extend_from_slice(bytes);
    }
}
