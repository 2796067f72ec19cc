//! Inference state of one conversation (KV cache, position, scratch buffers) and the
//! forward pass that advances it: one block shape per family (see [`crate::families`])
//! assembled from the shared layers here (norms, projections with optional biases,
//! attention with optional sliding window, gated or plain feed-forward).

use alloc::collections::TryReserveError;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embodios_gguf::GgmlType;
use half::f16;
use half::vec::HalfBitsVecExt;

use crate::families::{FfnKind, NormKind};
use crate::kernels::{self, QuantError};
use crate::matmul::{matmul, matmul_set, Product};
use crate::model::{Linear, Model, Norm, WeightMatrix};
use crate::ops;
use crate::parallel::Parallel;

/// Activation buffers: the most distinct formats one input feeds (Q, K, V).
const ACT_SLOTS: usize = 3;

/// Below this many elements the feed-forward's activation step stays on one thread.
const ACTIVATION_PARALLEL_MIN: usize = 4096;

/// llama.cpp's default micro-batch size (`n_ubatch`).
pub(crate) const UBATCH: usize = 512;

/// Why a forward pass failed. The session is unchanged when `forward` returns an error
/// before processing any token (overflow, bad token, empty input).
#[derive(Clone, Debug, PartialEq)]
pub enum EngineError {
    /// `forward` was called with no tokens.
    EmptyInput,
    /// The tokens would not fit in the session's context.
    ContextOverflow {
        /// Tokens already in the cache.
        pos: usize,
        /// Tokens in this call.
        requested: usize,
        /// Context length of the session.
        capacity: usize,
    },
    /// A token id is outside the vocabulary.
    TokenOutOfRange { token: u32, vocab_size: usize },
    /// The session was created for a model of a different shape.
    SessionMismatch,
    /// A quantisation kernel rejected its input (cannot happen for a model that loaded).
    Kernel(QuantError),
    /// The session's batch buffers could not grow to this many bytes for a larger batch
    /// (nothing was evaluated).
    OutOfMemory { bytes: usize },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::EmptyInput => f.write_str("no tokens to evaluate"),
            EngineError::ContextOverflow {
                pos,
                requested,
                capacity,
            } => write!(
                f,
                "context overflow: {pos} tokens in context + {requested} new > {capacity} \
                 (raise the context limit or reset the session)"
            ),
            EngineError::TokenOutOfRange { token, vocab_size } => write!(
                f,
                "token id {token} is outside the vocabulary (size {vocab_size})"
            ),
            EngineError::SessionMismatch => {
                f.write_str("the session was created for a different model")
            }
            EngineError::Kernel(e) => write!(f, "kernel error: {e}"),
            EngineError::OutOfMemory { bytes } => write!(
                f,
                "out of memory: the batch buffers need {bytes} more bytes (evaluate the \
                 prompt in smaller pieces)"
            ),
        }
    }
}

impl From<QuantError> for EngineError {
    fn from(e: QuantError) -> Self {
        EngineError::Kernel(e)
    }
}

/// Keys and values of every layer, stored as f16 as llama.cpp's default cache does.
#[derive(Clone, Debug)]
pub struct KvCache {
    n_layer: usize,
    n_head_kv: usize,
    head_dim: usize,
    capacity: usize,
    /// Elements from one V row to the next (see [`v_stride`]).
    v_stride: usize,
    /// `[layer][pos][kv_head * head_dim]`.
    k: Vec<f16>,
    /// Transposed: `[layer][kv_head][dim][pos]`, so a head's output element is one
    /// contiguous dot product over positions (llama.cpp also keeps V transposed when
    /// flash attention is off). Rows are `v_stride` apart.
    v: Vec<f16>,
}

/// Distance in elements between two V rows of a cache holding `capacity` positions:
/// the capacity rounded up to a cache line plus one more line. Storing one position
/// writes one element of every row; with rows a power-of-two bytes apart (a 4096-token
/// context: 8 KiB) those writes all fall in the same few cache sets, evicting each
/// other, and storing V took a few percent of a decoded token on one thread while the
/// others waited. The extra line spreads the rows over every set.
fn v_stride(capacity: usize) -> usize {
    const LINE: usize = 32; // f16 elements per 64-byte line
    capacity.next_multiple_of(LINE) + LINE
}

impl KvCache {
    /// A zeroed cache; `fallible` reserves with `try_reserve` (and writes the zeros)
    /// instead of asking the allocator for zeroed memory, which cannot fail softly.
    fn new(
        n_layer: usize,
        n_head_kv: usize,
        head_dim: usize,
        capacity: usize,
        fallible: bool,
    ) -> Result<Self, TryReserveError> {
        let v_stride = v_stride(capacity);
        let zeroed = |n: usize| -> Result<Vec<u16>, TryReserveError> {
            if fallible {
                filled(n, 0u16)
            } else {
                // Zeroed through the integer type, which the allocator can hand out as
                // untouched zero pages: a long context costs memory only once it is used.
                Ok(vec![0u16; n])
            }
        };
        Ok(Self {
            n_layer,
            n_head_kv,
            head_dim,
            capacity,
            v_stride,
            k: zeroed(n_layer * n_head_kv * head_dim * capacity)?.reinterpret_into(),
            v: zeroed(n_layer * n_head_kv * head_dim * v_stride)?.reinterpret_into(),
        })
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of memory the cache uses.
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 2
    }

    fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    fn k_at(&self, layer: usize, pos: usize) -> usize {
        (layer * self.capacity + pos) * self.kv_dim()
    }

    /// Prefetches the cache lines that storing position `pos` of `layer` will write:
    /// one line of every V row (and the K row). Every one of them misses the cache
    /// otherwise (a token's weights have streamed through it since the line was last
    /// used), and the stores, one after the other on one thread while the other
    /// workers waited, took about 2% of a decoded token. Issued before the layer's Q/K/V
    /// product, the lines have arrived by the time that product's results are stored.
    fn prefetch_pos(&self, layer: usize, pos: usize) {
        let k0 = self.k_at(layer, pos);
        for x in self.k.iter().skip(k0).take(self.kv_dim()).step_by(32) {
            crate::simd::prefetch(x);
        }
        for r in 0..self.kv_dim() {
            if let Some(x) = self.v.get(self.v_row(layer, 0, r) + pos) {
                crate::simd::prefetch(x);
            }
        }
    }

    fn v_row(&self, layer: usize, head: usize, dim: usize) -> usize {
        ((layer * self.n_head_kv + head) * self.head_dim + dim) * self.v_stride
    }
}

/// Scratch buffers reused by every forward pass. The per-token buffers hold `cap`
/// tokens one after the other (a prompt is evaluated as a batch); they grow when a
/// larger batch comes and are never shrunk, so decoding allocates nothing.
#[derive(Clone, Debug)]
struct Scratch {
    /// Tokens the per-token buffers have room for.
    cap: usize,
    /// The widest activation vector in bytes, in its widest format.
    act_width: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    /// Feed-forward output (kept apart from `proj` for parallel blocks).
    ffn: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Row-major results of a batched product before they are spread to the tokens.
    tmp: Vec<f32>,
    /// Per-worker attention scratch (grown to the worker count on first use).
    heads: HeadScratches,
    rope: Vec<f32>,
    /// RoPE cache of the sliding-window layers (their own base).
    rope_swa: Vec<f32>,
    /// Quantised activations, one buffer per format in use at a time.
    act: [Vec<u8>; ACT_SLOTS],
    act_ty: [Option<GgmlType>; ACT_SLOTS],
    logits: Vec<f32>,
}

impl Scratch {
    /// Buffers for batches of `batch` tokens and attention scratch for `workers`
    /// workers (attention never uses more workers than it has scratch for).
    fn new(
        c: &crate::model::Config,
        capacity: usize,
        workers: usize,
        batch: usize,
    ) -> Result<Self, TryReserveError> {
        let widest = c.n_embd.max(c.n_ff).max(c.q_dim());
        let mut heads = Vec::new();
        heads.try_reserve_exact(workers.max(1))?;
        for _ in 0..workers.max(1) {
            heads.push(spin::Mutex::new(HeadScratch::new(capacity, c.head_dim)?));
        }
        let mut s = Self {
            cap: 0,
            // The largest activation format: f32, 4 bytes per element.
            act_width: widest * 4 + 64,
            x: Vec::new(),
            xn: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            attn: Vec::new(),
            proj: Vec::new(),
            ffn: Vec::new(),
            gate: Vec::new(),
            up: Vec::new(),
            tmp: Vec::new(),
            heads: HeadScratches(heads),
            rope: Vec::new(),
            rope_swa: Vec::new(),
            act: [Vec::new(), Vec::new(), Vec::new()],
            act_ty: [None; ACT_SLOTS],
            logits: filled(c.vocab_size, 0.0)?,
        };
        s.reserve(c, batch.max(1))?;
        Ok(s)
    }

    /// Makes room for `tokens` tokens at once (on failure the buffers keep their size
    /// or grow only partly, and `cap` is unchanged).
    fn reserve(&mut self, c: &crate::model::Config, tokens: usize) -> Result<(), TryReserveError> {
        if tokens <= self.cap {
            return Ok(());
        }
        let n = tokens;
        fn grow<T: Clone>(v: &mut Vec<T>, len: usize, zero: T) -> Result<(), TryReserveError> {
            v.try_reserve_exact(len.saturating_sub(v.len()))?;
            v.resize(len.max(v.len()), zero);
            Ok(())
        }
        grow(&mut self.x, c.n_embd * n, 0.0)?;
        grow(&mut self.xn, c.n_embd * n, 0.0)?;
        grow(&mut self.q, c.q_dim() * n, 0.0)?;
        grow(&mut self.k, c.kv_dim() * n, 0.0)?;
        grow(&mut self.v, c.kv_dim() * n, 0.0)?;
        grow(&mut self.attn, c.q_dim() * n, 0.0)?;
        grow(&mut self.proj, c.n_embd * n, 0.0)?;
        grow(&mut self.ffn, c.n_embd * n, 0.0)?;
        grow(&mut self.gate, c.n_ff * n, 0.0)?;
        grow(&mut self.up, c.n_ff * n, 0.0)?;
        let widest_set = (c.q_dim() + 2 * c.kv_dim()).max(2 * c.n_ff).max(c.n_embd);
        if n > 1 {
            grow(&mut self.tmp, widest_set * n, 0.0)?;
        }
        grow(&mut self.rope, c.rope_dims * n, 0.0)?;
        grow(&mut self.rope_swa, c.rope_dims * n, 0.0)?;
        let act = self.act_width * n;
        for a in self.act.iter_mut() {
            grow(a, act, 0)?;
        }
        self.cap = n;
        Ok(())
    }

    /// Bytes of the per-token buffers for `tokens` tokens (what [`Scratch::reserve`]
    /// allocates).
    fn bytes_for(c: &crate::model::Config, tokens: usize) -> usize {
        let widest = c.n_embd.max(c.n_ff).max(c.q_dim());
        let widest_set = (c.q_dim() + 2 * c.kv_dim()).max(2 * c.n_ff).max(c.n_embd);
        let floats = 4 * c.n_embd
            + 2 * c.q_dim()
            + 2 * c.kv_dim()
            + 2 * c.n_ff
            + if tokens > 1 { widest_set } else { 0 }
            + 2 * c.rope_dims;
        tokens * (4 * floats + ACT_SLOTS * (widest * 4 + 64))
    }
}

/// A vector of `n` copies of `value`, reserved with `try_reserve` (fails instead of
/// aborting when memory is short).
fn filled<T: Clone>(n: usize, value: T) -> Result<Vec<T>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)?;
    v.resize(n, value);
    Ok(v)
}

/// How to size a session's buffers up front (see [`Model::try_new_session`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// Workers that will share one position's attention (the `Parallel`'s threads);
    /// attention uses at most this many (and at most one per head).
    pub workers: usize,
    /// The largest batch of tokens one `forward` call will evaluate; a larger call
    /// grows the batch buffers then.
    pub max_batch: usize,
}

/// What a session takes from the heap, part by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionBytes {
    /// The KV cache.
    pub kv_cache: usize,
    /// Batch buffers, logits, attention scratch of every worker, the token list.
    pub buffers: usize,
}

impl SessionBytes {
    /// Both parts.
    pub fn total(&self) -> usize {
        self.kv_cache.saturating_add(self.buffers)
    }
}

/// Why a session could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// An allocation failed; `needed` is what the whole session takes.
    OutOfMemory {
        /// The buffer whose allocation failed.
        part: &'static str,
        needed: SessionBytes,
    },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::OutOfMemory { part, needed } => write!(
                f,
                "out of memory allocating the {part}: the session needs {} KiB (KV cache {} \
                 KiB, buffers {} KiB)",
                needed.total().div_ceil(1024),
                needed.kv_cache.div_ceil(1024),
                needed.buffers.div_ceil(1024)
            ),
        }
    }
}

impl core::error::Error for SessionError {}

/// One conversation's state: its KV cache, position and scratch space.
#[derive(Clone, Debug)]
pub struct Session {
    cache: KvCache,
    pos: usize,
    scratch: Scratch,
    /// Tokens evaluated so far (for repetition penalties and prompt reuse).
    tokens: Vec<u32>,
    /// Debugging hook: receives named intermediate vectors of every evaluated token
    /// (`"attn_norm"`, `"Kcur"`, `"ffn_out"`, `"l_out"`, ... with the layer number; for
    /// the per-head `"kq"` and `"kq_soft_max"` the number is `layer * 100 + head`), to
    /// compare with the tensors llama.cpp's graph callback sees under the same names.
    /// A prompt is evaluated layer by layer for all its tokens, so the calls for one
    /// layer come for each token in turn.
    pub trace: Option<fn(&str, usize, &[f32])>,
}

impl Session {
    /// A fresh session for `model`, holding up to `model.context_len()` tokens, with
    /// attention scratch for as many workers as attention can use (one per head).
    /// Aborts if memory is short; [`Model::try_new_session`] fails softly instead.
    pub fn new(model: &Model<'_>) -> Self {
        let options = SessionOptions {
            workers: MAX_ATTENTION_WORKERS,
            max_batch: 1,
        };
        match Self::build(model, options, false) {
            Ok(s) => s,
            Err(_) => alloc::alloc::handle_alloc_error(core::alloc::Layout::new::<Session>()),
        }
    }

    fn build(
        model: &Model<'_>,
        options: SessionOptions,
        fallible: bool,
    ) -> Result<Self, SessionError> {
        let c = &model.config;
        let capacity = model.context_len();
        let workers = options
            .workers
            .clamp(1, c.n_head.clamp(1, MAX_ATTENTION_WORKERS));
        let oom = |part| SessionError::OutOfMemory {
            part,
            needed: model.session_bytes(options),
        };
        let cache = KvCache::new(c.n_layer, c.n_head_kv, c.head_dim, capacity, fallible)
            .map_err(|_| oom("KV cache"))?;
        let scratch = Scratch::new(c, capacity, workers, options.max_batch)
            .map_err(|_| oom("session buffers"))?;
        let mut tokens = Vec::new();
        tokens
            .try_reserve_exact(capacity)
            .map_err(|_| oom("token list"))?;
        Ok(Self {
            cache,
            pos: 0,
            scratch,
            tokens,
            trace: None,
        })
    }

    /// Tokens currently in the context (the position the next token gets).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Context length of this session.
    pub fn capacity(&self) -> usize {
        self.cache.capacity
    }

    /// The tokens evaluated so far, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets the whole context.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.tokens.clear();
    }

    /// Drops every token from position `pos` on (keeps a shared prompt prefix).
    pub fn truncate(&mut self, pos: usize) {
        if pos < self.pos {
            self.pos = pos;
            self.tokens.truncate(pos);
        }
    }

    /// Prepares the session to evaluate the prompt `ids`: keeps the cached positions that
    /// `ids` starts with (but never all of `ids`, so the last token is evaluated again and
    /// the session has fresh logits), drops the rest, and returns how many are kept.
    /// The caller then evaluates `ids[kept..]`.
    pub fn reuse_prefix(&mut self, ids: &[u32]) -> usize {
        let shared = self
            .tokens
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len().saturating_sub(1));
        self.truncate(shared);
        shared
    }

    /// The logits of the last evaluated position (empty before the first `forward`).
    /// [`Model::evaluate`] without logits leaves those of an earlier position here.
    pub fn logits(&self) -> &[f32] {
        if self.pos == 0 {
            &[]
        } else {
            &self.scratch.logits
        }
    }

    /// The KV cache.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
}

/// Attention scratch of one worker.
#[derive(Debug)]
struct HeadScratch {
    scores: Vec<f32>,
    probs16: Vec<f16>,
    q16: Vec<f16>,
}

impl HeadScratch {
    fn new(capacity: usize, head_dim: usize) -> Result<Self, TryReserveError> {
        Ok(Self {
            scores: filled(capacity, 0.0)?,
            probs16: filled(capacity, f16::ZERO)?,
            q16: filled(head_dim, f16::ZERO)?,
        })
    }
}

impl Clone for HeadScratch {
    fn clone(&self) -> Self {
        Self {
            scores: self.scores.clone(),
            probs16: self.probs16.clone(),
            q16: self.q16.clone(),
        }
    }
}

/// The workers' attention scratch buffers.
#[derive(Debug)]
struct HeadScratches(Vec<spin::Mutex<HeadScratch>>);

impl Clone for HeadScratches {
    fn clone(&self) -> Self {
        Self(
            self.0
                .iter()
                .map(|m| spin::Mutex::new(m.lock().clone()))
                .collect(),
        )
    }
}

/// Below this many (head, position) pairs per worker attention stays on one thread
/// (a fork/join costs about as much as this much attention).
const PARALLEL_ATTENTION_MIN: usize = 128;

/// What every attention head of one layer and position shares.
struct HeadJob<'c> {
    cache: &'c KvCache,
    layer: usize,
    /// Query heads per KV head.
    group: usize,
    head_dim: usize,
    /// The batch's first position.
    pos0: usize,
    /// Sliding-window length (0: every position is attended to).
    window: usize,
    scale: f32,
    mode: ops::DotOrder,
    trace: fn(&str, usize, &[f32]),
}

impl HeadJob<'_> {
    /// Positions token `t` of the batch attends to (itself included), and the first of
    /// them inside the sliding window (0 without one).
    fn span(&self, t: usize) -> (usize, usize) {
        let n_kv = self.pos0 + t + 1;
        let first = if self.window > 0 {
            n_kv.saturating_sub(self.window)
        } else {
            0
        };
        (n_kv, first)
    }

    /// Attention of query head `h` (`q`) of batch token `t` over the cached positions,
    /// into `out`.
    fn head(&self, t: usize, h: usize, q: &[f32], out: &mut [f32], s: &mut HeadScratch) {
        let (cache, l, hd) = (self.cache, self.layer, self.head_dim);
        let (n_kv, first) = self.span(t);
        let kvh = h / self.group;
        let avx2 = crate::simd::avx2_available();
        // llama.cpp multiplies an F16 K by Q converted to F16.
        for (d, &v) in s.q16.iter_mut().zip(q) {
            *d = f16::from_f32(v);
        }
        let scores = &mut s.scores[..n_kv];
        for (t, sc) in scores.iter_mut().enumerate() {
            let k0 = cache.k_at(l, t) + kvh * hd;
            *sc = crate::simd::dot_f16(&s.q16, &cache.k[k0..k0 + hd], self.mode, avx2);
        }
        (self.trace)("kq", l * 100 + h, scores);
        ops::softmax_scaled_from(scores, self.scale, first);
        (self.trace)("kq_soft_max", l * 100 + h, scores);
        // The attention weights are converted to F16 before multiplying with V.
        for (d, &p) in s.probs16[..n_kv].iter_mut().zip(scores.iter()) {
            *d = f16::from_f32(p);
        }
        for (d, o) in out.iter_mut().enumerate() {
            let r = cache.v_row(l, kvh, d);
            *o = crate::simd::dot_f16(&s.probs16[..n_kv], &cache.v[r..r + n_kv], self.mode, avx2);
        }
    }
}

/// Quantises the `tokens` vectors of `x` (one after the other) for `w` into one of the
/// activation buffers unless one already holds `x` in the right format (Q, K and V
/// share their input, and so do gate and up), and returns that buffer's index and the
/// bytes of one token's activations. Callers reset `act_ty` whenever the input changes.
fn ensure_act(
    act: &mut [Vec<u8>; ACT_SLOTS],
    act_ty: &mut [Option<GgmlType>; ACT_SLOTS],
    w: &WeightMatrix<'_>,
    x: &[f32],
    tokens: usize,
) -> Result<(usize, usize), QuantError> {
    let ty = kernels::act_type(w.ty)?;
    let width = x.len() / tokens.max(1);
    let n = kernels::act_bytes(ty, width);
    if let Some(slot) = act_ty.iter().position(|t| *t == Some(ty)) {
        return Ok((slot, n));
    }
    // Three products share an input at most, so a free slot always exists.
    let slot = act_ty
        .iter()
        .position(Option::is_none)
        .unwrap_or(ACT_SLOTS - 1);
    let have = act[slot].len();
    let buf = act[slot]
        .get_mut(..n * tokens)
        .ok_or(QuantError::BadLength {
            expected: n * tokens,
            got: have,
        })?;
    for (xt, out) in x
        .chunks_exact(width.max(1))
        .zip(buf.chunks_exact_mut(n.max(1)))
    {
        kernels::quantize_act(ty, xt, out)?;
    }
    act_ty[slot] = Some(ty);
    Ok((slot, n))
}

/// Calls `trace` once per token with that token's piece of `v`.
fn trace_each(trace: fn(&str, usize, &[f32]), name: &str, l: usize, v: &[f32], tokens: usize) {
    let width = v.len() / tokens.max(1);
    for t in v.chunks_exact(width.max(1)).take(tokens) {
        trace(name, l, t);
    }
}

impl Model<'_> {
    /// A new session for this model (see [`Session::new`]).
    pub fn new_session(&self) -> Session {
        Session::new(self)
    }

    /// A new session with every buffer sized up front for `options` (so neither a
    /// prefill in batches of up to `options.max_batch` tokens nor decoding allocates),
    /// each allocation reserved with `try_reserve`: memory that is short gives
    /// [`SessionError::OutOfMemory`] instead of an abort, and nothing stays allocated.
    pub fn try_new_session(&self, options: SessionOptions) -> Result<Session, SessionError> {
        Session::build(self, options, true)
    }

    /// What [`Model::try_new_session`] allocates for `options`.
    pub fn session_bytes(&self, options: SessionOptions) -> SessionBytes {
        let c = &self.config;
        let ctx = self.context_len();
        let workers = options
            .workers
            .clamp(1, c.n_head.clamp(1, MAX_ATTENTION_WORKERS));
        let kv_cache = c.n_layer * c.kv_dim() * (ctx + v_stride(ctx)) * 2;
        let heads = workers * (ctx * 6 + c.head_dim * 2);
        let buffers =
            Scratch::bytes_for(c, options.max_batch.max(1)) + c.vocab_size * 4 + heads + ctx * 4;
        SessionBytes { kv_cache, buffers }
    }

    /// Evaluates `tokens` at the session's next positions, appends them to its cache and
    /// returns the logits of the last one. Nothing is evaluated if any check fails.
    pub fn forward<'s>(
        &self,
        session: &'s mut Session,
        tokens: &[u32],
        par: &dyn Parallel,
    ) -> Result<&'s [f32], EngineError> {
        self.evaluate(session, tokens, true, par)?;
        Ok(&session.scratch.logits)
    }

    /// [`Model::forward`] that computes the last token's logits only when `logits` is
    /// set (a prefill piece that is not the last skips the vocabulary product; the
    /// session's logits then still belong to the position before `tokens`).
    pub fn evaluate(
        &self,
        session: &mut Session,
        tokens: &[u32],
        logits: bool,
        par: &dyn Parallel,
    ) -> Result<(), EngineError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        if session.scratch.logits.len() != c.vocab_size
            || session.cache.n_layer != c.n_layer
            || session.cache.kv_dim() != c.kv_dim()
        {
            return Err(EngineError::SessionMismatch);
        }
        if session.pos + tokens.len() > session.cache.capacity {
            return Err(EngineError::ContextOverflow {
                pos: session.pos,
                requested: tokens.len(),
                capacity: session.cache.capacity,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(EngineError::TokenOutOfRange {
                token: bad,
                vocab_size: c.vocab_size,
            });
        }
        // llama.cpp evaluates a call in micro-batches of up to 512 tokens, and a batch of
        // two or more runs its float products through a different kernel (rounding
        // differently) than a single token, and from eight tokens on its K-quant products
        // too; follow the same split. Each micro-batch goes through the layers together.
        let chunks = tokens.len().div_ceil(UBATCH);
        for (i, chunk) in tokens.chunks(UBATCH).enumerate() {
            self.step(session, chunk, logits && i + 1 == chunks, par)?;
        }
        Ok(())
    }

    /// A batch of tokens through every layer; the output projection of the last one
    /// only when `logits` is set.
    fn step(
        &self,
        session: &mut Session,
        batch: &[u32],
        logits: bool,
        par: &dyn Parallel,
    ) -> Result<(), EngineError> {
        let c = &self.config;
        let shape = &self.shape;
        let b = batch.len();
        let pos0 = session.pos;
        let mode = ops::DotOrder::for_batch(b);
        let trace = session.trace.unwrap_or(|_, _, _| {});
        session
            .scratch
            .reserve(c, b)
            .map_err(|_| EngineError::OutOfMemory {
                bytes: Scratch::bytes_for(c, b)
                    .saturating_sub(Scratch::bytes_for(c, session.scratch.cap)),
            })?;
        let cache = &mut session.cache;
        let s = &mut session.scratch;
        let (e, qd, kvd, rd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.rope_dims);
        let x = &mut s.x[..b * e];

        for (t, &token) in batch.iter().enumerate() {
            let xt = &mut x[t * e..(t + 1) * e];
            kernels::dequantize(self.token_embd.ty, self.token_embd.row(token as usize), xt)?;
            if c.embd_scale != 1.0 {
                for v in xt.iter_mut() {
                    *v *= c.embd_scale;
                }
            }
            self.rope
                .fill_cache(pos0 + t, &mut s.rope[t * rd..(t + 1) * rd]);
            if c.sliding_window > 0 {
                self.rope_swa
                    .fill_cache(pos0 + t, &mut s.rope_swa[t * rd..(t + 1) * rd]);
            }
        }

        for (l, layer) in self.layers.iter().enumerate() {
            let swa = c.is_swa(l);
            let (x, xn) = (&mut s.x[..b * e], &mut s.xn[..b * e]);
            let (q, k, v) = (&mut s.q[..b * qd], &mut s.k[..b * kvd], &mut s.v[..b * kvd]);
            if b == 1 {
                cache.prefetch_pos(l, pos0);
            }
            // Attention.
            self.norm_each(&layer.attn_norm, x, xn, e);
            trace_each(trace, "attn_norm", l, xn, b);
            s.act_ty = [None; ACT_SLOTS];
            let (aq, nq) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wq.w, xn, b)?;
            let (ak, nk) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wk.w, xn, b)?;
            let (av, nv) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wv.w, xn, b)?;
            matmul_set(
                &mut [
                    Product {
                        w: &layer.wq.w,
                        x: &s.act[aq][..nq * b],
                        out: q,
                    },
                    Product {
                        w: &layer.wk.w,
                        x: &s.act[ak][..nk * b],
                        out: k,
                    },
                    Product {
                        w: &layer.wv.w,
                        x: &s.act[av][..nv * b],
                        out: v,
                    },
                ],
                b,
                &mut s.tmp,
                par,
                mode,
            )?;
            add_bias(q, &layer.wq);
            add_bias(k, &layer.wk);
            add_bias(v, &layer.wv);
            trace_each(trace, "Qpre", l, q, b);
            trace_each(trace, "Kpre", l, k, b);
            trace_each(trace, "Vcur", l, v, b);

            let (rope, rope_cache) = if swa {
                (&self.rope_swa, &s.rope_swa)
            } else {
                (&self.rope, &s.rope)
            };
            head_norm(q, layer.q_norm.as_deref(), c.head_dim, c.rms_eps);
            head_norm(k, layer.k_norm.as_deref(), c.head_dim, c.rms_eps);
            for t in 0..b {
                let rc = &rope_cache[t * rd..(t + 1) * rd];
                for h in q[t * qd..(t + 1) * qd].chunks_exact_mut(c.head_dim) {
                    rope.apply(h, rc);
                }
                for h in k[t * kvd..(t + 1) * kvd].chunks_exact_mut(c.head_dim) {
                    rope.apply(h, rc);
                }
            }
            if c.q_scale != 1.0 {
                for v in q.iter_mut() {
                    *v *= c.q_scale;
                }
            }
            trace_each(trace, "Kcur", l, k, b);

            // Every token sees the cache up to and including itself.
            self.attention(
                cache,
                AttnIo {
                    q,
                    k,
                    v,
                    out: &mut s.attn[..b * qd],
                    heads: &mut s.heads,
                },
                l,
                pos0,
                if swa { c.sliding_window } else { 0 },
                mode,
                session.trace.is_some().then_some(trace),
                par,
            );
            let attn = &s.attn[..b * qd];
            trace_each(trace, "kqv_out", l, attn, b);
            let proj = &mut s.proj[..b * e];
            s.act_ty = [None; ACT_SLOTS];
            let (a, n) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wo.w, attn, b)?;
            matmul_set(
                &mut [Product {
                    w: &layer.wo.w,
                    x: &s.act[a][..n * b],
                    out: proj,
                }],
                b,
                &mut s.tmp,
                par,
                mode,
            )?;
            add_bias(proj, &layer.wo);
            trace_each(trace, "attn_out", l, proj, b);
            if let Some(post) = &layer.attn_post_norm {
                self.norm_each_in_place(post, proj, xn, e);
            }

            if shape.parallel {
                // The feed-forward reads the same normalised input as attention (`xn`
                // may have served as scratch since, so it is recomputed), and llama.cpp
                // adds (attention + feed-forward) to the residual.
                self.norm_each(&layer.attn_norm, x, xn, e);
                self.ffn(layer, s, b, mode, par)?;
                let (x, proj, ffn) = (&mut s.x[..b * e], &s.proj[..b * e], &s.ffn[..b * e]);
                trace_each(trace, "ffn_out", l, ffn, b);
                for ((x, &p), &f) in x.iter_mut().zip(proj).zip(ffn) {
                    *x += p + f;
                }
            } else {
                for (x, &p) in x.iter_mut().zip(proj.iter()) {
                    *x += p;
                }
                trace_each(trace, "ffn_inp", l, x, b);
                if let Some(n) = &layer.ffn_norm {
                    self.norm_each(n, x, xn, e);
                }
                trace_each(trace, "ffn_norm", l, xn, b);
                self.ffn(layer, s, b, mode, par)?;
                let (x, xn, ffn) = (&mut s.x[..b * e], &mut s.xn[..b * e], &mut s.ffn[..b * e]);
                trace_each(trace, "ffn_out", l, ffn, b);
                if let Some(post) = &layer.ffn_post_norm {
                    self.norm_each_in_place(post, ffn, xn, e);
                }
                for (x, &p) in x.iter_mut().zip(ffn.iter()) {
                    *x += p;
                }
            }
            trace_each(trace, "l_out", l, &s.x[..b * e], b);
        }

        session.tokens.extend_from_slice(batch);
        session.pos += b;
        if logits {
            let last = &s.x[(b - 1) * e..b * e];
            let xn = &mut s.xn[..e];
            self.norm(&self.output_norm, last, xn);
            s.act_ty = [None; ACT_SLOTS];
            let (a, n) = ensure_act(&mut s.act, &mut s.act_ty, &self.output, xn, 1)?;
            // Only the last position's logits are computed, one row: single-token rounding.
            matmul(&self.output, &s.act[a][..n], &mut s.logits, par)?;
            if let Some(b) = &self.output_bias {
                for (o, &v) in s.logits.iter_mut().zip(b) {
                    *o += v;
                }
            }
            if c.logit_softcap != 0.0 {
                let cap = c.logit_softcap;
                let inv = 1.0 / cap;
                for o in s.logits.iter_mut() {
                    *o = ops::tanh(*o * inv) * cap;
                }
            }
        }
        Ok(())
    }

    /// The family's norm of `x` into `out`.
    fn norm(&self, n: &Norm, x: &[f32], out: &mut [f32]) {
        match self.shape.norm {
            NormKind::Rms => ops::rms_norm(x, &n.weight, self.config.rms_eps, out),
            NormKind::Layer => {
                ops::layer_norm(x, &n.weight, n.bias.as_deref(), self.config.rms_eps, out)
            }
        }
    }

    /// The family's norm of each `width`-long vector of `x` into `out`.
    fn norm_each(&self, n: &Norm, x: &[f32], out: &mut [f32], width: usize) {
        for (xt, ot) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            self.norm(n, xt, ot);
        }
    }

    /// [`Model::norm_each`] in place (`tmp` is scratch of the same length).
    fn norm_each_in_place(&self, n: &Norm, x: &mut [f32], tmp: &mut [f32], width: usize) {
        self.norm_each(n, x, tmp, width);
        x.copy_from_slice(tmp);
    }

    /// The feed-forward of `layer` on the `b` tokens of `s.xn`, into `s.ffn`.
    fn ffn(
        &self,
        layer: &crate::model::Layer<'_>,
        s: &mut Scratch,
        b: usize,
        mode: ops::DotOrder,
        par: &dyn Parallel,
    ) -> Result<(), EngineError> {
        let c = &self.config;
        let xn = &s.xn[..b * c.n_embd];
        let gate_out = &mut s.gate[..b * c.n_ff];
        let up_out = &mut s.up[..b * c.n_ff];
        s.act_ty = [None; ACT_SLOTS];
        match (&layer.w_gate, self.shape.ffn) {
            (Some(gate), FfnKind::SwiGlu | FfnKind::GeGlu) => {
                let (ag, ng) = ensure_act(&mut s.act, &mut s.act_ty, &gate.w, xn, b)?;
                let (au, nu) = ensure_act(&mut s.act, &mut s.act_ty, &layer.w_up.w, xn, b)?;
                matmul_set(
                    &mut [
                        Product {
                            w: &gate.w,
                            x: &s.act[ag][..ng * b],
                            out: gate_out,
                        },
                        Product {
                            w: &layer.w_up.w,
                            x: &s.act[au][..nu * b],
                            out: up_out,
                        },
                    ],
                    b,
                    &mut s.tmp,
                    par,
                    mode,
                )?;
                add_bias(gate_out, gate);
                add_bias(up_out, &layer.w_up);
                // Element-wise, so cut over the workers for a batch (one token's worth
                // is too little to share).
                let avx2 = crate::simd::avx2_available();
                let swiglu = self.shape.ffn == FfnKind::SwiGlu;
                crate::parallel::zip_chunks(
                    par,
                    gate_out,
                    up_out,
                    64,
                    ACTIVATION_PARALLEL_MIN,
                    &|g, u| {
                        if swiglu {
                            crate::simd::silu_mul(g, u, avx2);
                        } else {
                            for (g, &u) in g.iter_mut().zip(u) {
                                *g = ops::gelu_fast(*g) * u;
                            }
                        }
                    },
                );
            }
            _ => {
                let (au, nu) = ensure_act(&mut s.act, &mut s.act_ty, &layer.w_up.w, xn, b)?;
                matmul_set(
                    &mut [Product {
                        w: &layer.w_up.w,
                        x: &s.act[au][..nu * b],
                        out: gate_out,
                    }],
                    b,
                    &mut s.tmp,
                    par,
                    mode,
                )?;
                add_bias(gate_out, &layer.w_up);
                for g in gate_out.iter_mut() {
                    *g = ops::gelu_fast(*g);
                }
            }
        }
        s.act_ty = [None; ACT_SLOTS];
        let (a, n) = ensure_act(&mut s.act, &mut s.act_ty, &layer.w_down.w, gate_out, b)?;
        matmul_set(
            &mut [Product {
                w: &layer.w_down.w,
                x: &s.act[a][..n * b],
                out: &mut s.ffn[..b * c.n_embd],
            }],
            b,
            &mut s.tmp,
            par,
            mode,
        )?;
        add_bias(&mut s.ffn[..b * c.n_embd], &layer.w_down);
        Ok(())
    }

    /// Stores the batch's K and V (rounded to f16) at positions `pos0..` and computes
    /// every head's attention of every token over the positions up to its own (the last
    /// `window` of them when `window` is non-zero) into `io.out`. The (token, head)
    /// pairs are spread over the workers in one fork/join, cut where the cumulative
    /// work (positions attended to) reaches each worker's share, so that all finish
    /// together. With a `trace` hook everything runs in order on the calling thread.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        cache: &mut KvCache,
        io: AttnIo<'_>,
        l: usize,
        pos0: usize,
        window: usize,
        mode: ops::DotOrder,
        trace: Option<fn(&str, usize, &[f32])>,
        par: &dyn Parallel,
    ) {
        let c = &self.config;
        let (hd, kvd, qd) = (c.head_dim, c.kv_dim(), c.q_dim());
        let tokens = io.q.len() / qd.max(1);
        for t in 0..tokens {
            let k0 = cache.k_at(l, pos0 + t);
            for (dst, &src) in cache.k[k0..k0 + kvd].iter_mut().zip(&io.k[t * kvd..]) {
                *dst = f16::from_f32(src);
            }
        }
        // Row by row, so a batch's positions go into each V row side by side.
        for kvh in 0..c.n_head_kv {
            for d in 0..hd {
                let r = cache.v_row(l, kvh, d) + pos0;
                let src = io.v.iter().skip(kvh * hd + d).step_by(kvd);
                for (dst, &x) in cache.v[r..r + tokens].iter_mut().zip(src) {
                    *dst = f16::from_f32(x);
                }
            }
        }

        let cache_r: &KvCache = cache;
        let job = HeadJob {
            cache: cache_r,
            layer: l,
            group: c.n_head / c.n_head_kv,
            head_dim: hd,
            pos0,
            window,
            scale: c.kq_scale,
            mode,
            trace: trace.unwrap_or(|_, _, _| {}),
        };
        let nh = c.n_head;
        let items = tokens * nh;
        // Work of token t's heads: the positions attended to (plus a constant for the
        // per-head fixed costs).
        let cost = |t: usize| (job.span(t).0 - job.span(t).1 + 8) * nh;
        let total: usize = (0..tokens).map(cost).sum();
        let workers = par
            .threads()
            .min(items)
            .min(MAX_ATTENTION_WORKERS)
            .min(total / PARALLEL_ATTENTION_MIN)
            // The session sized its attention scratch for its workers up front, so
            // nothing is allocated here.
            .min(io.heads.0.len())
            .max(1);
        if workers > 1 && trace.is_none() {
            // Contiguous runs of (token, head) items per worker, each with its slice of
            // the output (item i's output is `out[i * hd..][..hd]`); on the stack, so
            // nothing is allocated per token.
            let parts: [spin::Mutex<(usize, &mut [f32])>; MAX_ATTENTION_WORKERS] =
                core::array::from_fn(|_| spin::Mutex::new((0, &mut [][..])));
            let mut rest: &mut [f32] = io.out;
            let (mut start, mut done_cost, mut w) = (0usize, 0usize, 0usize);
            for i in 0..=items {
                // Close worker w's run before item i once its share is reached (or at the
                // end); the last worker takes whatever remains.
                let share = total * (w + 1) / workers;
                let end_here = i == items || (w + 1 < workers && done_cost >= share);
                if end_here && i > start {
                    let (head, tail) = core::mem::take(&mut rest).split_at_mut((i - start) * hd);
                    if let Some(p) = parts.get(w) {
                        *p.lock() = (start, head);
                    }
                    rest = tail;
                    start = i;
                    w += 1;
                }
                if i < items {
                    done_cost += cost(i / nh) / nh;
                }
            }
            let (q, heads) = (io.q, &io.heads.0);
            // Parts are claimed, not assigned by worker index: whoever is free takes
            // the next one (a late worker's share is not left waiting), and every part
            // is done even if fewer workers than planned take part. Part `i` uses
            // scratch `i`, so no two threads share one.
            let next = core::sync::atomic::AtomicUsize::new(0);
            par.run(&|_| loop {
                let i = next.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                if i >= workers {
                    break;
                }
                if let (Some(part), Some(scratch)) = (parts.get(i), heads.get(i)) {
                    let mut part = part.lock();
                    let first = part.0;
                    let mut scratch = scratch.lock();
                    for (j, out) in part.1.chunks_exact_mut(hd).enumerate() {
                        let (t, h) = ((first + j) / nh, (first + j) % nh);
                        let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
                        job.head(t, h, qh, out, &mut scratch);
                    }
                }
            });
        } else {
            let mut scratch = io.heads.0[0].lock();
            for (i, out) in io.out.chunks_exact_mut(hd).enumerate() {
                let (t, h) = (i / nh, i % nh);
                let qh = &io.q[t * qd + h * hd..t * qd + (h + 1) * hd];
                job.head(t, h, qh, out, &mut scratch);
            }
        }
    }
}

/// Most workers one position's attention is split over (the split is on the stack).
const MAX_ATTENTION_WORKERS: usize = 64;

/// One token's inputs and output for [`Model::attention`].
struct AttnIo<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: &'a mut [f32],
    heads: &'a mut HeadScratches,
}

/// Adds a projection's bias to each token's output, if it has one (a separate
/// rounding, as ggml's add).
fn add_bias(out: &mut [f32], lin: &Linear<'_>) {
    if let Some(b) = lin.bias.as_deref().filter(|b| !b.is_empty()) {
        for o in out.chunks_exact_mut(b.len()) {
            for (o, &v) in o.iter_mut().zip(b) {
                *o += v;
            }
        }
    }
}

/// Per-head RMS norm (Gemma 3's Q/K norms) when the layer has one.
fn head_norm(x: &mut [f32], w: Option<&[f32]>, head_dim: usize, eps: f32) {
    if let Some(w) = w {
        let mut tmp = [0.0f32; 512];
        for h in x.chunks_exact_mut(head_dim) {
            if head_dim <= tmp.len() {
                let t = &mut tmp[..head_dim];
                ops::rms_norm(h, w, eps, t);
                h.copy_from_slice(t);
            } else {
                let mut t = vec![0.0f32; head_dim];
                ops::rms_norm(h, w, eps, &mut t);
                h.copy_from_slice(&t);
            }
        }
    }
}

impl core::error::Error for EngineError {}
