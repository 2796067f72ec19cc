//! Inference state of one conversation (KV cache, position, scratch buffers) and the
//! forward pass that advances it: one block shape per family (see [`crate::families`])
//! assembled from the shared layers here (norms, projections with optional biases,
//! attention with optional sliding window, gated or plain feed-forward).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embodios_gguf::GgmlType;
use half::f16;

use crate::families::{FfnKind, NormKind};
use crate::kernels::{self, QuantError};
use crate::matmul::{matmul, matmul_ordered, matmul_set, Product};
use crate::model::{Linear, Model, Norm, WeightMatrix};
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
    /// Feed-forward output (kept apart from `proj` for parallel blocks).
    ffn: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
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
                ffn: vec![0.0; c.n_embd],
                gate: vec![0.0; c.n_ff],
                up: vec![0.0; c.n_ff],
                heads: HeadScratches(vec![spin::Mutex::new(HeadScratch::new(
                    capacity, c.head_dim,
                ))]),
                rope: vec![0.0; c.rope_dims],
                rope_swa: vec![0.0; c.rope_dims],
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
    /// First position inside the sliding window (0 without one).
    first: usize,
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
        ops::softmax_scaled_from(scores, self.scale, self.first);
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
        // differently) than a single token, and from eight tokens on its K-quant products
        // too; follow the same split.
        for (c, chunk) in tokens.chunks(UBATCH).enumerate() {
            let batch = chunk.len();
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
        batch: usize,
        par: &dyn Parallel,
    ) -> Result<(), EngineError> {
        let c = &self.config;
        let shape = &self.shape;
        let pos = session.pos;
        let mode = ops::DotOrder::for_batch(batch);
        let trace = session.trace.unwrap_or(|_, _, _| {});
        let cache = &mut session.cache;
        let s = &mut session.scratch;

        kernels::dequantize(
            self.token_embd.ty,
            self.token_embd.row(token as usize),
            &mut s.x,
        )?;
        if c.embd_scale != 1.0 {
            for v in s.x.iter_mut() {
                *v *= c.embd_scale;
            }
        }
        self.rope.fill_cache(pos, &mut s.rope);
        if c.sliding_window > 0 {
            self.rope_swa.fill_cache(pos, &mut s.rope_swa);
        }

        for (l, layer) in self.layers.iter().enumerate() {
            let swa = c.is_swa(l);
            // Attention.
            self.norm(&layer.attn_norm, &s.x, &mut s.xn);
            trace("attn_norm", l, &s.xn);
            s.act_ty = [None; ACT_SLOTS];
            let (aq, nq) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wq.w, &s.xn)?;
            let (ak, nk) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wk.w, &s.xn)?;
            let (av, nv) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wv.w, &s.xn)?;
            matmul_set(
                &mut [
                    Product {
                        w: &layer.wq.w,
                        x: &s.act[aq][..nq],
                        out: &mut s.q,
                    },
                    Product {
                        w: &layer.wk.w,
                        x: &s.act[ak][..nk],
                        out: &mut s.k,
                    },
                    Product {
                        w: &layer.wv.w,
                        x: &s.act[av][..nv],
                        out: &mut s.v,
                    },
                ],
                par,
                mode,
            )?;
            add_bias(&mut s.q, &layer.wq);
            add_bias(&mut s.k, &layer.wk);
            add_bias(&mut s.v, &layer.wv);
            trace("Qpre", l, &s.q);
            trace("Kpre", l, &s.k);
            trace("Vcur", l, &s.v);

            let (rope, rope_cache) = if swa {
                (&self.rope_swa, &s.rope_swa)
            } else {
                (&self.rope, &s.rope)
            };
            head_norm(&mut s.q, layer.q_norm.as_deref(), c.head_dim, c.rms_eps);
            head_norm(&mut s.k, layer.k_norm.as_deref(), c.head_dim, c.rms_eps);
            for h in s.q.chunks_exact_mut(c.head_dim) {
                rope.apply(h, rope_cache);
            }
            for h in s.k.chunks_exact_mut(c.head_dim) {
                rope.apply(h, rope_cache);
            }
            if c.q_scale != 1.0 {
                for v in s.q.iter_mut() {
                    *v *= c.q_scale;
                }
            }
            trace("Kcur", l, &s.k);

            let first = if swa {
                (pos + 1).saturating_sub(c.sliding_window)
            } else {
                0
            };
            self.attention(cache, s, l, pos, first, mode, trace, par);
            trace("kqv_out", l, &s.attn);
            s.act_ty = [None; ACT_SLOTS];
            let (a, n) = ensure_act(&mut s.act, &mut s.act_ty, &layer.wo.w, &s.attn)?;
            matmul_ordered(&layer.wo.w, &s.act[a][..n], &mut s.proj, par, mode)?;
            add_bias(&mut s.proj, &layer.wo);
            trace("attn_out", l, &s.proj);
            if let Some(post) = &layer.attn_post_norm {
                self.norm_in_place(post, &mut s.proj, &mut s.xn);
            }

            if shape.parallel {
                // The feed-forward reads the same normalised input as attention (`xn`
                // may have served as scratch since, so it is recomputed), and llama.cpp
                // adds (attention + feed-forward) to the residual.
                self.norm(&layer.attn_norm, &s.x, &mut s.xn);
                self.ffn(layer, s, mode, par)?;
                trace("ffn_out", l, &s.ffn);
                for ((x, &p), &f) in s.x.iter_mut().zip(&s.proj).zip(&s.ffn) {
                    *x += p + f;
                }
            } else {
                for (x, &p) in s.x.iter_mut().zip(&s.proj) {
                    *x += p;
                }
                trace("ffn_inp", l, &s.x);
                if let Some(n) = &layer.ffn_norm {
                    self.norm(n, &s.x, &mut s.xn);
                }
                trace("ffn_norm", l, &s.xn);
                self.ffn(layer, s, mode, par)?;
                trace("ffn_out", l, &s.ffn);
                if let Some(post) = &layer.ffn_post_norm {
                    self.norm_in_place(post, &mut s.ffn, &mut s.xn);
                }
                for (x, &p) in s.x.iter_mut().zip(&s.ffn) {
                    *x += p;
                }
            }
            trace("l_out", l, &s.x);
        }

        session.tokens.push(token);
        session.pos += 1;
        if logits {
            self.norm(&self.output_norm, &s.x, &mut s.xn);
            s.act_ty = [None; ACT_SLOTS];
            let (a, n) = ensure_act(&mut s.act, &mut s.act_ty, &self.output, &s.xn)?;
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

    /// The family's norm of `x` in place (`tmp` is scratch of the same length).
    fn norm_in_place(&self, n: &Norm, x: &mut [f32], tmp: &mut [f32]) {
        self.norm(n, x, tmp);
        x.copy_from_slice(tmp);
    }

    /// The feed-forward of `layer` on `s.xn`, into `s.ffn`.
    fn ffn(
        &self,
        layer: &crate::model::Layer<'_>,
        s: &mut Scratch,
        mode: ops::DotOrder,
        par: &dyn Parallel,
    ) -> Result<(), EngineError> {
        s.act_ty = [None; ACT_SLOTS];
        match (&layer.w_gate, self.shape.ffn) {
            (Some(gate), FfnKind::SwiGlu | FfnKind::GeGlu) => {
                let (ag, ng) = ensure_act(&mut s.act, &mut s.act_ty, &gate.w, &s.xn)?;
                let (au, nu) = ensure_act(&mut s.act, &mut s.act_ty, &layer.w_up.w, &s.xn)?;
                matmul_set(
                    &mut [
                        Product {
                            w: &gate.w,
                            x: &s.act[ag][..ng],
                            out: &mut s.gate,
                        },
                        Product {
                            w: &layer.w_up.w,
                            x: &s.act[au][..nu],
                            out: &mut s.up,
                        },
                    ],
                    par,
                    mode,
                )?;
                add_bias(&mut s.gate, gate);
                add_bias(&mut s.up, &layer.w_up);
                if self.shape.ffn == FfnKind::SwiGlu {
                    for (g, &u) in s.gate.iter_mut().zip(&s.up) {
                        *g = ops::silu(*g) * u;
                    }
                } else {
                    for (g, &u) in s.gate.iter_mut().zip(&s.up) {
                        *g = ops::gelu(*g) * u;
                    }
                }
            }
            _ => {
                let (au, nu) = ensure_act(&mut s.act, &mut s.act_ty, &layer.w_up.w, &s.xn)?;
                matmul_ordered(&layer.w_up.w, &s.act[au][..nu], &mut s.gate, par, mode)?;
                add_bias(&mut s.gate, &layer.w_up);
                for g in s.gate.iter_mut() {
                    *g = ops::gelu(*g);
                }
            }
        }
        s.act_ty = [None; ACT_SLOTS];
        let (a, n) = ensure_act(&mut s.act, &mut s.act_ty, &layer.w_down.w, &s.gate)?;
        matmul_ordered(&layer.w_down.w, &s.act[a][..n], &mut s.ffn, par, mode)?;
        add_bias(&mut s.ffn, &layer.w_down);
        Ok(())
    }

    /// Stores this position's K and V (rounded to f16) and computes every head's
    /// attention over positions `first..=pos` into `s.attn`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        cache: &mut KvCache,
        s: &mut Scratch,
        l: usize,
        pos: usize,
        first: usize,
        mode: ops::DotOrder,
        trace: fn(&str, usize, &[f32]),
        par: &dyn Parallel,
    ) {
        let c = &self.config;
        let hd = c.head_dim;
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
            group: c.n_head / c.n_head_kv,
            head_dim: hd,
            n_kv,
            first,
            scale: c.kq_scale,
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
    }
}

/// Adds a projection's bias, if it has one (a separate rounding, as ggml's add).
fn add_bias(out: &mut [f32], lin: &Linear<'_>) {
    if let Some(b) = &lin.bias {
        for (o, &v) in out.iter_mut().zip(b) {
            *o += v;
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
