//! Inference state of one conversation (KV cache, position, scratch buffers) and the
//! llama forward pass that advances it.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embodios_gguf::GgmlType;
use half::f16;

use crate::kernels::{self, QuantError};
use crate::matmul::{matmul, matmul_ordered, matmul_set, Product};
use crate::model::{Model, WeightMatrix};
use crate::ops;
use crate::parallel::{split_range, Parallel};

/// Activation buffers: the most distinct formats one input feeds (Q, K, V).
const ACT_SLOTS: usize = 3;

/// llama.cpp's default micro-batch size (`n_ubatch`).
const UBATCH: usize = 512;

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
    /// `[layer][pos][kv_head * head_dim]`.
    k: Vec<f16>,
    /// Transposed: `[layer][kv_head][dim][pos]`, so a head's output element is one
    /// contiguous dot product over positions (llama.cpp also keeps V transposed when
    /// flash attention is off).
    v: Vec<f16>,
}

impl KvCache {
    fn new(n_layer: usize, n_head_kv: usize, head_dim: usize, capacity: usize) -> Self {
        let per_layer = n_head_kv * head_dim * capacity;
        Self {
            n_layer,
            n_head_kv,
            head_dim,
            capacity,
            k: vec![f16::ZERO; n_layer * per_layer],
            v: vec![f16::ZERO; n_layer * per_layer],
        }
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

    fn v_row(&self, layer: usize, head: usize, dim: usize) -> usize {
        ((layer * self.n_head_kv + head) * self.head_dim + dim) * self.capacity
    }
}

/// Scratch buffers reused by every forward pass.
#[derive(Clone, Debug)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Per-worker attention scratch (grown to the worker count on first use).
    heads: HeadScratches,
    rope: Vec<f32>,
    /// Quantised activations, one buffer per format in use at a time.
    act: [Vec<u8>; ACT_SLOTS],
    act_ty: [Option<GgmlType>; ACT_SLOTS],
    logits: Vec<f32>,
}

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
    pub trace: Option<fn(&str, usize, &[f32])>,
}

impl Session {
    /// A fresh session for `model`, holding up to `model.context_len()` tokens.
    pub fn new(model: &Model<'_>) -> Self {
        let c = &model.config;
        let capacity = model.context_len();
        let widest = c.n_embd.max(c.n_ff).max(c.q_dim());
        // The largest activation format: f32, 4 bytes per element.
        let act_cap = widest * 4 + 64;
        Self {
            cache: KvCache::new(c.n_layer, c.n_head_kv, c.head_dim, capacity),
            pos: 0,
            scratch: Scratch {
                x: vec![0.0; c.n_embd],
                xn: vec![0.0; c.n_embd],
                q: vec![0.0; c.q_dim()],
                k: vec![0.0; c.kv_dim()],
                v: vec![0.0; c.kv_dim()],
                attn: vec![0.0; c.q_dim()],
                proj: vec![0.0; c.n_embd],
                gate: vec![0.0; c.n_ff],
                up: vec![0.0; c.n_ff],
                heads: HeadScratches(vec![spin::Mutex::new(HeadScratch::new(
                    capacity, c.head_dim,
                ))]),
                rope: vec![0.0; c.rope_dims],
                act: [vec![0; act_cap], vec![0; act_cap], vec![0; act_cap]],
                act_ty: [None; ACT_SLOTS],
                logits: vec![0.0; c.vocab_size],
            },
            tokens: Vec::with_capacity(capacity),
            trace: None,
        }
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

    /// The logits of the last evaluated position (empty before the first `forward`).
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
    fn new(capacity: usize, head_dim: usize) -> Self {
        Self {
            scores: vec![0.0; capacity],
            probs16: vec![f16::ZERO; capacity],
            q16: vec![f16::ZERO; head_dim],
        }
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

/// Below this many (head, position) pairs attention stays on one thread.
const PARALLEL_ATTENTION_MIN: usize = 1024;

/// What every attention head of one layer and position shares.
struct HeadJob<'c> {
    cache: &'c KvCache,
    layer: usize,
    /// Query heads per KV head.
    group: usize,
    head_dim: usize,
    /// Positions attended to (the current one included).
    n_kv: usize,
    scale: f32,
    mode: ops::DotOrder,
    trace: fn(&str, usize, &[f32]),
}

impl HeadJob<'_> {
    /// Attention of query head `h` (`q`) over the cached positions, into `out`.
    fn head(&self, h: usize, q: &[f32], out: &mut [f32], s: &mut HeadScratch) {
        let (cache, l, hd, n_kv) = (self.cache, self.layer, self.head_dim, self.n_kv);
        let kvh = h / self.group;
        // llama.cpp multiplies an F16 K by Q converted to F16.
        for (d, &v) in s.q16.iter_mut().zip(q) {
            *d = f16::from_f32(v);
        }
        let scores = &mut s.scores[..n_kv];
        for (t, sc) in scores.iter_mut().enumerate() {
            let k0 = cache.k_at(l, t) + kvh * hd;
            *sc = ops::dot_f16(&s.q16, &cache.k[k0..k0 + hd], self.mode);
        }
        (self.trace)("kq", l * 100 + h, scores);
        ops::softmax_scaled(scores, self.scale);
        (self.trace)("kq_soft_max", l * 100 + h, scores);
        // The attention weights are converted to F16 before multiplying with V.
        for (d, &p) in s.probs16[..n_kv].iter_mut().zip(scores.iter()) {
            *d = f16::from_f32(p);
        }
        for (d, o) in out.iter_mut().enumerate() {
            let r = cache.v_row(l, kvh, d);
            *o = ops::dot_f16(&s.probs16[..n_kv], &cache.v[r..r + n_kv], self.mode);
        }
    }
}

/// Quantises `x` for `w` into one of the activation buffers unless one already holds
/// `x` in the right format (Q, K and V share their input, and so do gate and up), and
/// returns that buffer's index and the used length. Callers reset `act_ty` whenever the
/// input vector changes.
fn ensure_act(
    act: &mut [Vec<u8>; ACT_SLOTS],
    act_ty: &mut [Option<GgmlType>; ACT_SLOTS],
    w: &WeightMatrix<'_>,
    x: &[f32],
) -> Result<(usize, usize), QuantError> {
    let ty = kernels::act_type(w.ty)?;
    let n = kernels::act_bytes(ty, x.len());
    if let Some(slot) = act_ty.iter().position(|t| *t == Some(ty)) {
        return Ok((slot, n));
    }
    // Three products share an input at most, so a free slot always exists.
    let slot = act_ty
        .iter()
        .position(Option::is_none)
        .unwrap_or(ACT_SLOTS - 1);
    kernels::quantize_act(ty, x, &mut act[slot][..n])?;
    act_ty[slot] = Some(ty);
    Ok((slot, n))
}

impl Model<'_> {
    /// A new session for this model (see [`Session::new`]).
    pub fn new_session(&self) -> Session {
        Session::new(self)
    }

    /// Evaluates `tokens` at the session's next positions, appends them to its cache and
    /// returns the logits of the last one. Nothing is evaluated if any check fails.
    pub fn forward<'s>(
        &self,
        session: &'s mut Session,
        tokens: &[u32],
        par: &dyn Parallel,
    ) -> Result<&'s [f32], EngineError> {
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
        // differently) than a single token; follow the same split.
        for (c, chunk) in tokens.chunks(UBATCH).enumerate() {
            let batch = chunk.len() > 1;
            for (i, &tok) in chunk.iter().enumerate() {
                let last = c * UBATCH + i + 1 == tokens.len();
                self.step(session, tok, last, batch, par)?;
            }
        }
        Ok(&session.scratch.logits)
    }

    /// One token through every layer; the output projection only when `logits` is set.
    fn step(
        &self,
        session: &mut Session,
        token: u32,
        logits: bool,
        batch: bool,
        par: &dyn Parallel,
    ) -> Result<(), EngineError> {
        let c = &self.config;
        let pos = session.pos;
        let hd = c.head_dim;
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let mode = if batch {
            ops::DotOrder::Batch
        } else {
            ops::DotOrder::Single
        };
        let trace = session.trace.unwrap_or(|_, _, _| {});
        let cache = &mut session.cache;
        let s = &mut session.scratch;

        kernels::dequantize(
            self.token_embd.ty,
            self.token_embd.row(token as usize),
            &mut s.x,
        )?;
        self.rope.fill_cache(pos, &mut s.rope);

        for (l, layer) in self.layers.iter().enumerate() {
            // Attention.
            ops::rms_norm(&s.x, &layer.attn_norm, c.rms_eps, &mut s.xn);
            trace("attn_norm", l, &s.xn);
            s.act_ty = [None; ACT_SLOTS];
            let (aq, nq) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wq, &s.xn)?;
            let (ak, nk) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wk, &s.xn)?;
            let (av, nv) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wv, &s.xn)?;
            matmul_set(
                &mut [
                    Product {
                        w: &layer.wq,
                        x: &s.act[aq][..nq],
                        out: &mut s.q,
                    },
                    Product {
                        w: &layer.wk,
                        x: &s.act[ak][..nk],
                        out: &mut s.k,
                    },
                    Product {
                        w: &layer.wv,
                        x: &s.act[av][..nv],
                        out: &mut s.v,
                    },
                ],
                par,
                mode,
            )?;
            trace("Qpre", l, &s.q);
            trace("Kpre", l, &s.k);
            trace("Vcur", l, &s.v);

            for h in s.q.chunks_exact_mut(hd) {
                self.rope.apply(h, &s.rope);
            }
            for h in s.k.chunks_exact_mut(hd) {
                self.rope.apply(h, &s.rope);
            }
            trace("Kcur", l, &s.k);

            // Store K and V for this position, rounded to f16.
            let k0 = cache.k_at(l, pos);
            for (dst, &src) in cache.k[k0..k0 + c.kv_dim()].iter_mut().zip(&s.k) {
                *dst = f16::from_f32(src);
            }
            for kvh in 0..c.n_head_kv {
                for d in 0..hd {
                    let r = cache.v_row(l, kvh, d);
                    cache.v[r + pos] = f16::from_f32(s.v[kvh * hd + d]);
                }
            }

            let n_kv = pos + 1;
            let cache_r: &KvCache = cache;
            let job = HeadJob {
                cache: cache_r,
                layer: l,
                group,
                head_dim: hd,
                n_kv,
                scale,
                mode,
                trace,
            };
            let workers = par.threads().min(c.n_head);
            if workers > 1 && n_kv * c.n_head >= PARALLEL_ATTENTION_MIN {
                while s.heads.0.len() < workers {
                    s.heads
                        .0
                        .push(spin::Mutex::new(HeadScratch::new(cache_r.capacity, hd)));
                }
                // Contiguous head ranges per worker, each with its slice of the output.
                let mut parts: Vec<spin::Mutex<(usize, &mut [f32])>> = Vec::with_capacity(workers);
                let mut rest: &mut [f32] = &mut s.attn;
                for i in 0..workers {
                    let r = split_range(c.n_head, workers, i);
                    let (head, tail) = rest.split_at_mut(r.len() * hd);
                    parts.push(spin::Mutex::new((r.start, head)));
                    rest = tail;
                }
                let (q, heads) = (&s.q, &s.heads.0);
                par.run(&|i| {
                    if let (Some(part), Some(scratch)) = (parts.get(i), heads.get(i)) {
                        let mut part = part.lock();
                        let first = part.0;
                        let mut scratch = scratch.lock();
                        for (j, out) in part.1.chunks_exact_mut(hd).enumerate() {
                            let h = first + j;
                            job.head(h, &q[h * hd..(h + 1) * hd], out, &mut scratch);
                        }
                    }
                });
            } else {
                let mut scratch = s.heads.0[0].lock();
                for (h, out) in s.attn.chunks_exact_mut(hd).enumerate() {
                    job.head(h, &s.q[h * hd..(h + 1) * hd], out, &mut scratch);
                }
            }
            trace("kqv_out", l, &s.attn);
            s.act_ty = [None; ACT_SLOTS];
            let (a, n) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wo, &s.attn)?;
            matmul_ordered(&layer.wo, &s.act[a][..n], &mut s.proj, par, mode)?;
            trace("attn_out", l, &s.proj);
            for (x, &p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }

            // Feed-forward (SwiGLU).
            trace("ffn_inp", l, &s.x);
            ops::rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, &mut s.xn);
            trace("ffn_norm", l, &s.xn);
            s.act_ty = [None; ACT_SLOTS];
            let (ag, ng) = ensure_act(&mut s.act, &mut s.act_ty, &layer.w_gate, &s.xn)?;
            let (au, nu) = ensure_act(&mut s.act, &mut s.act_ty, &layer.w_up, &s.xn)?;
            matmul_set(
                &mut [
                    Product {
                        w: &layer.w_gate,
                        x: &s.act[ag][..ng],
                        out: &mut s.gate,
                    },
                    Product {
                        w: &layer.w_up,
                        x: &s.act[au][..nu],
                        out: &mut s.up,
                    },
                ],
                par,
                mode,
            )?;
            trace("ffn_gate", l, &s.gate);
            trace("ffn_up", l, &s.up);
            for (g, &u) in s.gate.iter_mut().zip(&s.up) {
                *g = ops::silu(*g) * u;
            }
            trace("ffn_swiglu", l, &s.gate);
            s.act_ty = [None; ACT_SLOTS];
            let (a, n) = ensure_act(&mut s.act, &mut s.act_ty, &layer.w_down, &s.gate)?;
            matmul_ordered(&layer.w_down, &s.act[a][..n], &mut s.proj, par, mode)?;
            trace("ffn_out", l, &s.proj);
            for (x, &p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
            trace("l_out", l, &s.x);
        }

        session.tokens.push(token);
        session.pos += 1;
        if logits {
            ops::rms_norm(&s.x, &self.output_norm, c.rms_eps, &mut s.xn);
            s.act_ty = [None; ACT_SLOTS];
            let (a, n) = ensure_act(&mut s.act, &mut s.act_ty, &self.output, &s.xn)?;
            // Only the last position's logits are computed, one row: single-token rounding.
            matmul(&self.output, &s.act[a][..n], &mut s.logits, par)?;
        }
        Ok(())
    }
}

impl core::error::Error for EngineError {}
