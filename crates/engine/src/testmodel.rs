//! Deterministic random-weight GGUF models (llama, and every other supported family) for
//! fidelity tests: small enough to build in memory quickly, real enough for llama.cpp to
//! load (they borrow a real model's tokenizer metadata), with a mix of weight types so
//! every matmul path is exercised.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embodios_gguf::{GgmlType, GgufFile, GgufWriter, OwnedValue, WriteError};

use crate::families::{Family, FfnKind, NormKind};
use crate::kernels::{self, QuantError};
use crate::sampler::Rng;

/// Shape and seed of the random model.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomLlamaSpec {
    pub seed: u64,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub context_length: u32,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
}

impl Default for RandomLlamaSpec {
    fn default() -> Self {
        Self {
            seed: 20_261_127,
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            context_length: 2048,
            rope_freq_base: 10000.0,
            rms_eps: 1e-5,
        }
    }
}

/// Why the random model could not be written.
#[derive(Clone, Debug, PartialEq)]
pub enum TestModelError {
    /// The tokenizer source has no `tokenizer.ggml.tokens` array.
    NoVocabulary,
    Write(WriteError),
    Quant(QuantError),
    /// A cut vocabulary would lose a special token the tokenizer metadata names.
    VocabTooSmall {
        key: String,
        id: u64,
        vocab: usize,
    },
}

impl fmt::Display for TestModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestModelError::NoVocabulary => {
                f.write_str("the tokenizer source file has no tokenizer.ggml.tokens array")
            }
            TestModelError::Write(e) => write!(f, "writing the GGUF failed: {e}"),
            TestModelError::Quant(e) => write!(f, "quantising a weight failed: {e}"),
            TestModelError::VocabTooSmall { key, id, vocab } => write!(
                f,
                "{key} is {id}, outside a vocabulary cut to {vocab} tokens"
            ),
        }
    }
}

impl core::error::Error for TestModelError {}

impl From<WriteError> for TestModelError {
    fn from(e: WriteError) -> Self {
        TestModelError::Write(e)
    }
}

impl From<QuantError> for TestModelError {
    fn from(e: QuantError) -> Self {
        TestModelError::Quant(e)
    }
}

/// Standard normal samples by Box-Muller over the engine's seeded PRNG.
struct Normal {
    rng: Rng,
    spare: Option<f32>,
}

impl Normal {
    fn next(&mut self) -> f32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = self.rng.next_f64().max(1e-300);
        let u2 = self.rng.next_f64();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let t = 2.0 * core::f64::consts::PI * u2;
        self.spare = Some((r * libm::sin(t)) as f32);
        (r * libm::cos(t)) as f32
    }

    fn fill(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..n).map(|_| mean + std * self.next()).collect()
    }
}

/// Adds tensor `name` of shape `dims` and type `ty`, filled with normal values of the
/// given (mean, standard deviation).
fn add_random(
    w: &mut GgufWriter,
    rng: &mut Normal,
    name: &str,
    dims: &[u64],
    ty: GgmlType,
    (mean, std): (f32, f32),
) -> Result<(), TestModelError> {
    let n = dims.iter().product::<u64>() as usize;
    let values = rng.fill(n, mean, std);
    w.add_tensor(name, dims, ty, encode(ty, &values)?)?;
    Ok(())
}

fn encode(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, TestModelError> {
    if ty == GgmlType::F32 {
        return Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let n = ty.bytes_for(values.len() as u64).unwrap_or(0) as usize;
    let mut out = vec![0u8; n];
    kernels::quantize_weights(ty, values, &mut out)?;
    Ok(out)
}

/// Writes the random llama described by `spec`, taking every `tokenizer.*` key (the
/// vocabulary defines the embedding height) from `tokenizer_source`. The same spec and
/// source always give the same bytes.
pub fn write_random_llama(
    spec: &RandomLlamaSpec,
    tokenizer_source: &GgufFile<'_>,
) -> Result<Vec<u8>, TestModelError> {
    let vocab = tokenizer_source
        .get_array("tokenizer.ggml.tokens")
        .map(|a| a.len())
        .filter(|&n| n > 0)
        .ok_or(TestModelError::NoVocabulary)?;
    let mut w = GgufWriter::new();
    let arch = "llama";
    let key = |s: &str| format!("{arch}.{s}");
    w.add_metadata("general.architecture", OwnedValue::str(arch))?;
    w.add_metadata("general.name", OwnedValue::str("embodios-random-llama"))?;
    w.add_metadata(&key("block_count"), OwnedValue::U32(spec.n_layer as u32))?;
    w.add_metadata(&key("context_length"), OwnedValue::U32(spec.context_length))?;
    w.add_metadata(
        &key("embedding_length"),
        OwnedValue::U32(spec.n_embd as u32),
    )?;
    w.add_metadata(
        &key("feed_forward_length"),
        OwnedValue::U32(spec.n_ff as u32),
    )?;
    w.add_metadata(
        &key("attention.head_count"),
        OwnedValue::U32(spec.n_head as u32),
    )?;
    w.add_metadata(
        &key("attention.head_count_kv"),
        OwnedValue::U32(spec.n_head_kv as u32),
    )?;
    w.add_metadata(
        &key("attention.layer_norm_rms_epsilon"),
        OwnedValue::F32(spec.rms_eps),
    )?;
    w.add_metadata(&key("rope.freq_base"), OwnedValue::F32(spec.rope_freq_base))?;
    let head_dim = spec.n_embd / spec.n_head;
    w.add_metadata(
        &key("rope.dimension_count"),
        OwnedValue::U32(head_dim as u32),
    )?;
    w.add_metadata(&key("vocab_size"), OwnedValue::U32(vocab as u32))?;
    for (k, v) in &tokenizer_source.metadata {
        if k.starts_with("tokenizer.") {
            if let Some(owned) = v.to_owned_value() {
                w.add_metadata(k, owned)?;
            }
        }
    }

    let mut rng = Normal {
        rng: Rng::new(spec.seed),
        spare: None,
    };
    let (e, ff) = (spec.n_embd as u64, spec.n_ff as u64);
    let kv = (spec.n_head_kv * head_dim) as u64;
    let mut add = |w: &mut GgufWriter, name: &str, dims: &[u64], ty, mean, std| {
        add_random(w, &mut rng, name, dims, ty, (mean, std))
    };
    use GgmlType::*;
    add(
        &mut w,
        "token_embd.weight",
        &[e, vocab as u64],
        Q8_0,
        0.0,
        0.5,
    )?;
    // Layers alternate type mixes so every supported pairing is used somewhere.
    let mixes = [
        [Q4_1, Q8_0, F32, Q4_1, Q8_0, Q4_0, F16],
        [Q8_0, Q4_1, F16, F32, Q4_0, Q8_0, Q4_1],
    ];
    for l in 0..spec.n_layer {
        let m = mixes[l % mixes.len()];
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        add(&mut w, &n("attn_norm"), &[e], F32, 1.0, 0.1)?;
        add(&mut w, &n("attn_q"), &[e, e], m[0], 0.0, 0.15)?;
        add(&mut w, &n("attn_k"), &[e, kv], m[1], 0.0, 0.15)?;
        add(&mut w, &n("attn_v"), &[e, kv], m[2], 0.0, 0.15)?;
        add(&mut w, &n("attn_output"), &[e, e], m[3], 0.0, 0.1)?;
        add(&mut w, &n("ffn_norm"), &[e], F32, 1.0, 0.1)?;
        add(&mut w, &n("ffn_gate"), &[e, ff], m[4], 0.0, 0.1)?;
        add(&mut w, &n("ffn_up"), &[e, ff], m[5], 0.0, 0.1)?;
        add(&mut w, &n("ffn_down"), &[ff, e], m[6], 0.0, 0.1)?;
    }
    add(&mut w, "output_norm.weight", &[e], F32, 1.0, 0.1)?;
    add(&mut w, "output.weight", &[e, vocab as u64], Q4_1, 0.0, 0.3)?;
    Ok(w.finish())
}

/// A short description for logs.
pub fn describe(spec: &RandomLlamaSpec) -> String {
    format!(
        "random llama: {} layers, width {}, {} heads ({} KV), ffn {}, seed {}",
        spec.n_layer, spec.n_embd, spec.n_head, spec.n_head_kv, spec.n_ff, spec.seed
    )
}

/// Shape and seed of a random model of any supported family (the llama one keeps its
/// own writer, [`write_random_llama`], whose bytes the committed goldens pin down).
#[derive(Clone, Debug, PartialEq)]
pub struct RandomModelSpec {
    pub family: Family,
    pub seed: u64,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Head size (written as `attention.key_length` when it is not `n_embd / n_head`).
    pub head_dim: usize,
    /// Rotated dimensions per head (Phi-2 rotates part of each head).
    pub rope_dims: usize,
    pub n_ff: usize,
    pub context_length: u32,
    pub rope_freq_base: f32,
    pub norm_eps: f32,
    /// Sliding window of the local layers (0: none).
    pub sliding_window: u32,
    /// Q, K and V as one `attn_qkv` tensor (as Phi-2 files have them).
    pub fused_qkv: bool,
    /// Final logit soft-capping (`final_logit_softcapping`; 0: not written).
    pub logit_softcap: f32,
}

impl RandomModelSpec {
    /// A small model of `family` exercising its particular features: Gemma 3 gets a head
    /// size unrelated to the width, six layers (five local with a 64-token window, one
    /// global), K-quant weights and logit soft-capping; Phi-2 rotates half of each head
    /// and has a fused Q/K/V tensor.
    pub fn for_family(family: Family) -> Self {
        let base = Self {
            family,
            seed: 20_261_127,
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 16,
            rope_dims: 16,
            n_ff: 128,
            context_length: 2048,
            rope_freq_base: 10000.0,
            norm_eps: 1e-5,
            sliding_window: 0,
            fused_qkv: false,
            logit_softcap: 0.0,
        };
        match family {
            Family::Llama | Family::Qwen2 => base,
            Family::Phi2 => Self {
                n_head_kv: 4,
                rope_dims: 8,
                fused_qkv: true,
                ..base
            },
            Family::Gemma3 => Self {
                n_layer: 6,
                n_embd: 128,
                n_head: 4,
                n_head_kv: 1,
                head_dim: 64,
                rope_dims: 64,
                n_ff: 256,
                rope_freq_base: 1_000_000.0,
                norm_eps: 1e-6,
                sliding_window: 64,
                logit_softcap: 30.0,
                ..base
            },
        }
    }
}

impl RandomModelSpec {
    /// A random llama-architecture model that declares a 64-token sliding window, as a
    /// Mistral file could: llama.cpp's llama graph ignores the key, and so does the
    /// engine (see [`crate::families::llama`]).
    pub fn mistral_like() -> Self {
        Self {
            sliding_window: 64,
            ..Self::for_family(Family::Llama)
        }
    }
}

/// Writes the random model described by `spec`, taking every `tokenizer.*` key from
/// `tokenizer_source`. The same spec and source always give the same bytes.
pub fn write_random_model(
    spec: &RandomModelSpec,
    tokenizer_source: &GgufFile<'_>,
) -> Result<Vec<u8>, TestModelError> {
    let vocab = tokenizer_source
        .get_array("tokenizer.ggml.tokens")
        .map(|a| a.len())
        .filter(|&n| n > 0)
        .ok_or(TestModelError::NoVocabulary)?;
    let family = spec.family;
    let shape = family.shape();
    let arch = family.arch();
    let mut w = GgufWriter::new();
    let key = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| OwnedValue::U32(v as u32);
    w.add_metadata("general.architecture", OwnedValue::str(arch))?;
    w.add_metadata(
        "general.name",
        OwnedValue::str(&format!("embodios-random-{arch}")),
    )?;
    w.add_metadata(&key("block_count"), u(spec.n_layer))?;
    w.add_metadata(&key("context_length"), OwnedValue::U32(spec.context_length))?;
    w.add_metadata(&key("embedding_length"), u(spec.n_embd))?;
    w.add_metadata(&key("feed_forward_length"), u(spec.n_ff))?;
    w.add_metadata(&key("attention.head_count"), u(spec.n_head))?;
    w.add_metadata(&key("attention.head_count_kv"), u(spec.n_head_kv))?;
    let eps_key = if shape.norm == NormKind::Layer {
        "attention.layer_norm_epsilon"
    } else {
        "attention.layer_norm_rms_epsilon"
    };
    w.add_metadata(&key(eps_key), OwnedValue::F32(spec.norm_eps))?;
    w.add_metadata(&key("rope.freq_base"), OwnedValue::F32(spec.rope_freq_base))?;
    w.add_metadata(&key("rope.dimension_count"), u(spec.rope_dims))?;
    if spec.head_dim * spec.n_head != spec.n_embd {
        w.add_metadata(&key("attention.key_length"), u(spec.head_dim))?;
        w.add_metadata(&key("attention.value_length"), u(spec.head_dim))?;
    }
    if spec.sliding_window > 0 {
        w.add_metadata(
            &key("attention.sliding_window"),
            OwnedValue::U32(spec.sliding_window),
        )?;
    }
    if spec.logit_softcap != 0.0 {
        w.add_metadata(
            &key("final_logit_softcapping"),
            OwnedValue::F32(spec.logit_softcap),
        )?;
    }
    w.add_metadata(&key("vocab_size"), u(vocab))?;
    for (k, v) in &tokenizer_source.metadata {
        if k.starts_with("tokenizer.") {
            if let Some(owned) = v.to_owned_value() {
                w.add_metadata(k, owned)?;
            }
        }
    }

    let mut rng = Normal {
        rng: Rng::new(spec.seed),
        spare: None,
    };
    let (e, ff, hd) = (spec.n_embd as u64, spec.n_ff as u64, spec.head_dim as u64);
    let q = spec.n_head as u64 * hd;
    let kv = spec.n_head_kv as u64 * hd;
    let mut add = |w: &mut GgufWriter, name: &str, dims: &[u64], ty, mean, std| {
        add_random(w, &mut rng, name, dims, ty, (mean, std))
    };
    use GgmlType::*;
    add(
        &mut w,
        "token_embd.weight",
        &[e, vocab as u64],
        Q8_0,
        0.0,
        0.5,
    )?;
    // Weight types per layer: q, k, v, o, gate, up, down. Gemma's mix follows the real
    // model (Q5_0/Q8_0 projections, K-quant output and down projections, so that the
    // tiled batch kernel is exercised); the others mix the legacy and float types.
    let mixes: [[GgmlType; 7]; 2] = if family == Family::Gemma3 {
        [
            [Q5_0, Q5_0, Q8_0, Q4_K, Q5_0, Q5_0, Q6_K],
            [Q8_0, Q5_0, Q5_0, Q6_K, Q4_0, Q8_0, Q4_K],
        ]
    } else {
        [
            [Q4_1, Q8_0, F32, Q4_1, Q8_0, Q4_0, F16],
            [Q8_0, Q4_1, F16, F32, Q4_0, Q8_0, Q4_1],
        ]
    };
    let norm_bias = shape.norm == NormKind::Layer;
    for l in 0..spec.n_layer {
        let m = mixes[l % mixes.len()];
        let n = |s: &str| format!("blk.{l}.{s}");
        add(&mut w, &n("attn_norm.weight"), &[e], F32, 1.0, 0.1)?;
        if norm_bias {
            add(&mut w, &n("attn_norm.bias"), &[e], F32, 0.0, 0.1)?;
        }
        if spec.fused_qkv {
            add(
                &mut w,
                &n("attn_qkv.weight"),
                &[e, q + 2 * kv],
                m[0],
                0.0,
                0.15,
            )?;
            if shape.qkv_bias {
                add(&mut w, &n("attn_qkv.bias"), &[q + 2 * kv], F32, 0.0, 0.1)?;
            }
        } else {
            add(&mut w, &n("attn_q.weight"), &[e, q], m[0], 0.0, 0.15)?;
            add(&mut w, &n("attn_k.weight"), &[e, kv], m[1], 0.0, 0.15)?;
            add(&mut w, &n("attn_v.weight"), &[e, kv], m[2], 0.0, 0.15)?;
        }
        if shape.qkv_bias && !spec.fused_qkv {
            add(&mut w, &n("attn_q.bias"), &[q], F32, 0.0, 0.1)?;
            add(&mut w, &n("attn_k.bias"), &[kv], F32, 0.0, 0.1)?;
            add(&mut w, &n("attn_v.bias"), &[kv], F32, 0.0, 0.1)?;
        }
        if shape.qk_norm {
            add(&mut w, &n("attn_q_norm.weight"), &[hd], F32, 1.0, 0.1)?;
            add(&mut w, &n("attn_k_norm.weight"), &[hd], F32, 1.0, 0.1)?;
        }
        add(&mut w, &n("attn_output.weight"), &[q, e], m[3], 0.0, 0.1)?;
        if shape.other_biases {
            add(&mut w, &n("attn_output.bias"), &[e], F32, 0.0, 0.1)?;
        }
        if shape.post_norms {
            add(
                &mut w,
                &n("post_attention_norm.weight"),
                &[e],
                F32,
                1.0,
                0.1,
            )?;
        }
        if !shape.parallel {
            add(&mut w, &n("ffn_norm.weight"), &[e], F32, 1.0, 0.1)?;
        }
        if shape.ffn != FfnKind::Gelu {
            add(&mut w, &n("ffn_gate.weight"), &[e, ff], m[4], 0.0, 0.1)?;
        }
        add(&mut w, &n("ffn_up.weight"), &[e, ff], m[5], 0.0, 0.1)?;
        if shape.other_biases {
            add(&mut w, &n("ffn_up.bias"), &[ff], F32, 0.0, 0.1)?;
        }
        add(&mut w, &n("ffn_down.weight"), &[ff, e], m[6], 0.0, 0.1)?;
        if shape.other_biases {
            add(&mut w, &n("ffn_down.bias"), &[e], F32, 0.0, 0.1)?;
        }
        if shape.post_norms {
            add(&mut w, &n("post_ffw_norm.weight"), &[e], F32, 1.0, 0.1)?;
        }
    }
    add(&mut w, "output_norm.weight", &[e], F32, 1.0, 0.1)?;
    if norm_bias {
        add(&mut w, "output_norm.bias", &[e], F32, 0.0, 0.1)?;
    }
    // Gemma ties the output to the embedding; the others get their own.
    if family != Family::Gemma3 {
        add(&mut w, "output.weight", &[e, vocab as u64], Q4_1, 0.0, 0.3)?;
    }
    if shape.output_bias {
        add(&mut w, "output.bias", &[vocab as u64], F32, 0.0, 0.1)?;
    }
    Ok(w.finish())
}

/// A short description of a [`RandomModelSpec`] for logs.
pub fn describe_model(spec: &RandomModelSpec) -> String {
    format!(
        "random {}: {} layers, width {}, {} heads ({} KV) of {}, ffn {}, window {}, seed {}",
        spec.family.arch(),
        spec.n_layer,
        spec.n_embd,
        spec.n_head,
        spec.n_head_kv,
        spec.head_dim,
        spec.n_ff,
        spec.sliding_window,
        spec.seed
    )
}

/// A random llama at benchmark scale: the shape of a real model, one weight type for every
/// matrix (F32 norms), and optionally a vocabulary cut to a real model's size.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchLlamaSpec {
    pub shape: RandomLlamaSpec,
    /// The type of every 2-D weight (quantize the file afterwards for a mix).
    pub weight_type: GgmlType,
    /// Keep only the first `vocab` tokens of the tokenizer source (None: all of them).
    pub vocab: Option<usize>,
}

impl BenchLlamaSpec {
    /// TinyLlama-1.1B's shape: 22 layers, width 2048, 32 heads (4 KV), feed-forward 5632,
    /// vocabulary 32000.
    pub fn tinyllama_1_1b(weight_type: GgmlType) -> Self {
        Self {
            shape: RandomLlamaSpec {
                n_layer: 22,
                n_embd: 2048,
                n_head: 32,
                n_head_kv: 4,
                n_ff: 5632,
                context_length: 2048,
                ..RandomLlamaSpec::default()
            },
            weight_type,
            vocab: Some(32000),
        }
    }
}

/// The `tokenizer.*` metadata of `src`, with the vocabulary cut to its first `vocab`
/// tokens: per-token arrays truncated, and only the BPE merges kept whose two parts and
/// result all remain, so the cut tokenizer is self-consistent.
fn tokenizer_metadata(
    src: &GgufFile<'_>,
    vocab: Option<usize>,
) -> Result<(Vec<(String, OwnedValue)>, usize), TestModelError> {
    let tokens = src
        .get_array("tokenizer.ggml.tokens")
        .filter(|a| !a.is_empty())
        .ok_or(TestModelError::NoVocabulary)?;
    let n = vocab.unwrap_or(tokens.len()).min(tokens.len());
    let kept: BTreeSet<&str> = tokens[..n].iter().filter_map(|t| t.as_str()).collect();
    let mut out = Vec::new();
    for (k, v) in &src.metadata {
        if !k.starts_with("tokenizer.") {
            continue;
        }
        let Some(owned) = v.to_owned_value() else {
            continue;
        };
        let owned = match (k, owned) {
            (
                &("tokenizer.ggml.tokens" | "tokenizer.ggml.scores" | "tokenizer.ggml.token_type"),
                OwnedValue::Array(mut items),
            ) => {
                items.truncate(n);
                OwnedValue::Array(items)
            }
            (&"tokenizer.ggml.merges", OwnedValue::Array(items)) => OwnedValue::Array(
                items
                    .into_iter()
                    .filter(|m| match m {
                        OwnedValue::Str(pair) => pair.split_once(' ').is_some_and(|(a, b)| {
                            kept.contains(a)
                                && kept.contains(b)
                                && kept.contains(format!("{a}{b}").as_str())
                        }),
                        _ => false,
                    })
                    .collect(),
            ),
            (key, value) => {
                if key.ends_with("_token_id") {
                    if let Some(id) = value.as_value().as_u64() {
                        if id as usize >= n {
                            return Err(TestModelError::VocabTooSmall {
                                key: String::from(*key),
                                id,
                                vocab: n,
                            });
                        }
                    }
                }
                value
            }
        };
        out.push((String::from(*k), owned));
    }
    Ok((out, n))
}

/// Writes the benchmark-scale random llama described by `spec`, the tokenizer taken from
/// `tokenizer_source` (cut to `spec.vocab`). The same spec and source give the same bytes.
pub fn write_bench_llama(
    spec: &BenchLlamaSpec,
    tokenizer_source: &GgufFile<'_>,
) -> Result<Vec<u8>, TestModelError> {
    let (tokenizer, vocab) = tokenizer_metadata(tokenizer_source, spec.vocab)?;
    let s = &spec.shape;
    let mut w = GgufWriter::new();
    let arch = "llama";
    let key = |k: &str| format!("{arch}.{k}");
    let u = |v: usize| OwnedValue::U32(v as u32);
    w.add_metadata("general.architecture", OwnedValue::str(arch))?;
    w.add_metadata(
        "general.name",
        OwnedValue::str(&format!("embodios-random-llama-{}x{}", s.n_layer, s.n_embd)),
    )?;
    w.add_metadata(&key("block_count"), u(s.n_layer))?;
    w.add_metadata(&key("context_length"), OwnedValue::U32(s.context_length))?;
    w.add_metadata(&key("embedding_length"), u(s.n_embd))?;
    w.add_metadata(&key("feed_forward_length"), u(s.n_ff))?;
    w.add_metadata(&key("attention.head_count"), u(s.n_head))?;
    w.add_metadata(&key("attention.head_count_kv"), u(s.n_head_kv))?;
    w.add_metadata(
        &key("attention.layer_norm_rms_epsilon"),
        OwnedValue::F32(s.rms_eps),
    )?;
    w.add_metadata(&key("rope.freq_base"), OwnedValue::F32(s.rope_freq_base))?;
    let head_dim = s.n_embd / s.n_head;
    w.add_metadata(&key("rope.dimension_count"), u(head_dim))?;
    w.add_metadata(&key("vocab_size"), u(vocab))?;
    for (k, v) in tokenizer {
        w.add_metadata(&k, v)?;
    }

    let mut rng = Normal {
        rng: Rng::new(s.seed),
        spare: None,
    };
    let (e, ff) = (s.n_embd as u64, s.n_ff as u64);
    let kv = (s.n_head_kv * head_dim) as u64;
    let ty = spec.weight_type;
    // Standard deviations of about 1/sqrt(fan-in) keep activations in range through
    // many layers, so the generated text is noise but the arithmetic stays finite.
    let std_in = |fan_in: u64| 1.0 / libm::sqrtf(fan_in as f32);
    let mut add = |w: &mut GgufWriter, name: &str, dims: &[u64], ty, mean, std| {
        add_random(w, &mut rng, name, dims, ty, (mean, std))
    };
    use GgmlType::F32;
    add(
        &mut w,
        "token_embd.weight",
        &[e, vocab as u64],
        ty,
        0.0,
        0.5,
    )?;
    for l in 0..s.n_layer {
        let n = |k: &str| format!("blk.{l}.{k}.weight");
        add(&mut w, &n("attn_norm"), &[e], F32, 1.0, 0.1)?;
        add(&mut w, &n("attn_q"), &[e, e], ty, 0.0, std_in(e))?;
        add(&mut w, &n("attn_k"), &[e, kv], ty, 0.0, std_in(e))?;
        add(&mut w, &n("attn_v"), &[e, kv], ty, 0.0, std_in(e))?;
        add(&mut w, &n("attn_output"), &[e, e], ty, 0.0, std_in(e))?;
        add(&mut w, &n("ffn_norm"), &[e], F32, 1.0, 0.1)?;
        add(&mut w, &n("ffn_gate"), &[e, ff], ty, 0.0, std_in(e))?;
        add(&mut w, &n("ffn_up"), &[e, ff], ty, 0.0, std_in(e))?;
        add(&mut w, &n("ffn_down"), &[ff, e], ty, 0.0, std_in(ff))?;
    }
    add(&mut w, "output_norm.weight", &[e], F32, 1.0, 0.1)?;
    add(
        &mut w,
        "output.weight",
        &[e, vocab as u64],
        ty,
        0.0,
        std_in(e),
    )?;
    Ok(w.finish())
}
