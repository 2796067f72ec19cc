//! Loading a model of any supported family from a GGUF file: hyperparameters, and
//! weights borrowed zero-copy from the file's bytes, every tensor checked for presence,
//! shape and type. What differs between families lives in [`crate::families`].

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embodios_gguf::{GgmlType, GgufFile, TensorInfo};

use crate::families::{BlockShape, Family, FfnKind, Keys, NormKind};
use crate::kernels;
use crate::ops::{Rope, RopeStyle};

/// Why a model could not be loaded.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadError {
    /// The file has no `general.architecture`.
    MissingArchitecture,
    /// The architecture is not one this engine runs.
    UnsupportedArchitecture(String),
    /// A required metadata key is absent.
    MissingKey(String),
    /// A metadata key has a value of the wrong type or an impossible value.
    BadKey { key: String, reason: String },
    /// The hyperparameters contradict each other.
    BadHyperparameters(String),
    /// A required tensor is absent.
    MissingTensor(String),
    /// A tensor has a shape other than the hyperparameters imply (dims `ne0` first).
    TensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    /// A tensor has a type the engine cannot compute with.
    UnsupportedTensorType { name: String, ty: GgmlType },
    /// A tensor's data is shorter than its shape and type require.
    TensorData { name: String },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::MissingArchitecture => {
                f.write_str("the file has no `general.architecture` key")
            }
            LoadError::UnsupportedArchitecture(a) => write!(
                f,
                "architecture `{a}` is not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
            LoadError::MissingKey(k) => write!(f, "required metadata key `{k}` is missing"),
            LoadError::BadKey { key, reason } => write!(f, "metadata key `{key}`: {reason}"),
            LoadError::BadHyperparameters(r) => write!(f, "inconsistent hyperparameters: {r}"),
            LoadError::MissingTensor(n) => write!(f, "required tensor `{n}` is missing"),
            LoadError::TensorShape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, expected {expected:?}"
            ),
            LoadError::UnsupportedTensorType { name, ty } => {
                write!(f, "tensor `{name}` has type {ty}, which is not supported")
            }
            LoadError::TensorData { name } => {
                write!(f, "tensor `{name}` has less data than its shape requires")
            }
        }
    }
}

pub use crate::families::SUPPORTED_ARCHITECTURES;

/// Hyperparameters of a loaded model.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub architecture: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Epsilon of the family's norm (RMS norm, or LayerNorm for Phi-2).
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    pub rope_freq_scale: f32,
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    /// Context length the model was trained with.
    pub context_length: usize,
    pub vocab_size: usize,
    /// The output projection is the token embedding (no `output.weight`).
    pub tied_output: bool,
    /// The family (from `general.architecture`).
    pub family: Family,
    /// Factor applied to token embeddings (Gemma: sqrt(width); otherwise 1).
    pub embd_scale: f32,
    /// Factor applied to Q before the product with K (1 when the softmax scales instead).
    pub q_scale: f32,
    /// Factor applied to the attention scores in the softmax.
    pub kq_scale: f32,
    /// Sliding-window length of the local layers; 0 when every layer is global.
    pub sliding_window: usize,
    /// Per layer: whether it attends only to the last `sliding_window` positions.
    pub swa_layers: Vec<bool>,
    /// RoPE base of the sliding-window layers.
    pub rope_freq_base_swa: f32,
    /// Final logit soft-capping `c * tanh(logit / c)`; 0 when off.
    pub logit_softcap: f32,
}

impl Config {
    /// Width of the K (and V) projections: KV heads times head size.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the Q projection.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Whether layer `l` uses sliding-window attention.
    pub fn is_swa(&self, l: usize) -> bool {
        self.sliding_window > 0 && self.swa_layers.get(l).copied().unwrap_or(false)
    }
}

/// Options for [`Model::load`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Cap on the context (KV cache) length; `None` uses the model's trained length.
    pub max_context: Option<usize>,
}

/// A 2-D weight tensor borrowed from the file: `rows` rows of `cols` elements of `ty`.
#[derive(Clone, Debug)]
pub struct WeightMatrix<'a> {
    pub name: String,
    pub ty: GgmlType,
    /// Elements per row (ggml's `ne0`: the input width of a projection).
    pub cols: usize,
    /// Rows (`ne1`: the output width).
    pub rows: usize,
    /// Bytes of one row.
    pub row_bytes: usize,
    pub data: &'a [u8],
}

impl<'a> WeightMatrix<'a> {
    /// Row `r`'s bytes.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

/// A norm's weight and, for LayerNorm, its bias.
#[derive(Clone, Debug, PartialEq)]
pub struct Norm {
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// A projection: weight matrix and optional bias.
#[derive(Clone, Debug)]
pub struct Linear<'a> {
    pub w: WeightMatrix<'a>,
    pub bias: Option<Vec<f32>>,
}

/// Weights of one transformer block; which optional parts are present follows the
/// family's [`BlockShape`].
#[derive(Clone, Debug)]
pub struct Layer<'a> {
    pub attn_norm: Norm,
    pub wq: Linear<'a>,
    pub wk: Linear<'a>,
    pub wv: Linear<'a>,
    pub wo: Linear<'a>,
    /// Per-head RMS norm weights of Q and K (Gemma 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// Norm of the attention output before the residual add (Gemma 3).
    pub attn_post_norm: Option<Norm>,
    /// Absent when the feed-forward shares the attention norm (Phi-2).
    pub ffn_norm: Option<Norm>,
    /// Absent for ungated feed-forwards (Phi-2).
    pub w_gate: Option<Linear<'a>>,
    pub w_up: Linear<'a>,
    pub w_down: Linear<'a>,
    /// Norm of the feed-forward output before the residual add (Gemma 3).
    pub ffn_post_norm: Option<Norm>,
}

/// A loaded model: hyperparameters plus weights that borrow the file's bytes.
#[derive(Clone, Debug)]
pub struct Model<'a> {
    pub config: Config,
    pub options: ModelOptions,
    pub token_embd: WeightMatrix<'a>,
    pub layers: Vec<Layer<'a>>,
    pub output_norm: Norm,
    pub output: WeightMatrix<'a>,
    pub output_bias: Option<Vec<f32>>,
    /// RoPE of the global layers.
    pub rope: Rope,
    /// RoPE of the sliding-window layers (their own base; same as `rope` otherwise).
    pub rope_swa: Rope,
    /// The family's block shape.
    pub shape: BlockShape,
}

fn tensor<'f, 'a>(file: &'f GgufFile<'a>, name: &str) -> Result<&'f TensorInfo<'a>, LoadError> {
    file.tensor(name)
        .ok_or_else(|| LoadError::MissingTensor(name.to_string()))
}

fn check_shape(t: &TensorInfo<'_>, expected: &[u64]) -> Result<(), LoadError> {
    // ggml drops trailing 1-dims inconsistently across writers; compare padded shapes.
    let norm = |d: &[u64]| {
        let mut v = d.to_vec();
        while v.len() > 1 && v.last() == Some(&1) {
            v.pop();
        }
        v
    };
    if norm(&t.dims) != norm(expected) {
        return Err(LoadError::TensorShape {
            name: t.name.to_string(),
            expected: expected.to_vec(),
            found: t.dims.clone(),
        });
    }
    Ok(())
}

fn check_data(t: &TensorInfo<'_>) -> Result<usize, LoadError> {
    let need =
        t.ty.bytes_for(t.n_elements())
            .filter(|&n| n <= t.data.len() as u64)
            .ok_or_else(|| LoadError::TensorData {
                name: t.name.to_string(),
            })?;
    Ok(need as usize)
}

/// A matrix of `rows` x `cols` whose type the matmul kernel supports.
fn matrix<'a>(
    file: &GgufFile<'a>,
    name: &str,
    cols: usize,
    rows: usize,
) -> Result<WeightMatrix<'a>, LoadError> {
    let t = tensor(file, name)?;
    check_shape(t, &[cols as u64, rows as u64])?;
    if !kernels::matmul_supported(t.ty) || !cols.is_multiple_of(t.ty.block_elems()) {
        return Err(LoadError::UnsupportedTensorType {
            name: name.to_string(),
            ty: t.ty,
        });
    }
    let len = check_data(t)?;
    Ok(WeightMatrix {
        name: name.to_string(),
        ty: t.ty,
        cols,
        rows,
        row_bytes: len / rows.max(1),
        data: &t.data[..len],
    })
}

/// A vector of `n` elements, converted to f32 (norm weights are small; owning them
/// keeps the hot loop free of type dispatch).
fn vector(file: &GgufFile<'_>, name: &str, n: usize) -> Result<Vec<f32>, LoadError> {
    let t = tensor(file, name)?;
    check_shape(t, &[n as u64])?;
    if !kernels::dequantize_supported(t.ty) || !n.is_multiple_of(t.ty.block_elems()) {
        return Err(LoadError::UnsupportedTensorType {
            name: name.to_string(),
            ty: t.ty,
        });
    }
    let len = check_data(t)?;
    let mut out = vec![0.0f32; n];
    kernels::dequantize(t.ty, &t.data[..len], &mut out).map_err(|_| {
        LoadError::UnsupportedTensorType {
            name: name.to_string(),
            ty: t.ty,
        }
    })?;
    Ok(out)
}

/// Loads an optional vector: `None` when the tensor is absent, an error when it is
/// present but wrong.
fn opt_vector(file: &GgufFile<'_>, name: &str, n: usize) -> Result<Option<Vec<f32>>, LoadError> {
    if file.tensor(name).is_some() {
        vector(file, name, n).map(Some)
    } else {
        Ok(None)
    }
}

/// A vector that `shape` requires (`need`) or that is optional.
fn part(
    file: &GgufFile<'_>,
    name: &str,
    n: usize,
    need: bool,
) -> Result<Option<Vec<f32>>, LoadError> {
    if need {
        vector(file, name, n).map(Some)
    } else {
        opt_vector(file, name, n)
    }
}

fn norm(file: &GgufFile<'_>, stem: &str, n: usize, shape: &BlockShape) -> Result<Norm, LoadError> {
    Ok(Norm {
        weight: vector(file, &format!("{stem}.weight"), n)?,
        bias: part(
            file,
            &format!("{stem}.bias"),
            n,
            shape.norm == NormKind::Layer,
        )?,
    })
}

fn linear<'a>(
    file: &GgufFile<'a>,
    stem: &str,
    cols: usize,
    rows: usize,
    need_bias: bool,
) -> Result<Linear<'a>, LoadError> {
    Ok(Linear {
        w: matrix(file, &format!("{stem}.weight"), cols, rows)?,
        bias: part(file, &format!("{stem}.bias"), rows, need_bias)?,
    })
}

/// A fused Q/K/V projection (`attn_qkv`, as Phi-2 files have it) split into three
/// zero-copy row ranges: each output row is its own dot product, so the split computes
/// exactly what the fused product does.
fn fused_qkv<'a>(
    file: &GgufFile<'a>,
    stem: &str,
    e: usize,
    q: usize,
    kv: usize,
    need_bias: bool,
) -> Result<(Linear<'a>, Linear<'a>, Linear<'a>), LoadError> {
    let all = matrix(file, &format!("{stem}.weight"), e, q + 2 * kv)?;
    let bias = part(file, &format!("{stem}.bias"), q + 2 * kv, need_bias)?;
    let rows = |first: usize, n: usize| WeightMatrix {
        name: format!("{}[{first}..{}]", all.name, first + n),
        ty: all.ty,
        cols: all.cols,
        rows: n,
        row_bytes: all.row_bytes,
        data: &all.data[first * all.row_bytes..(first + n) * all.row_bytes],
    };
    let b = |first: usize, n: usize| bias.as_ref().map(|v| v[first..first + n].to_vec());
    Ok((
        Linear {
            w: rows(0, q),
            bias: b(0, q),
        },
        Linear {
            w: rows(q, kv),
            bias: b(q, kv),
        },
        Linear {
            w: rows(q + kv, kv),
            bias: b(q + kv, kv),
        },
    ))
}

/// One block's tensors (`blk.{i}.*`) as `shape` requires them.
fn load_layer<'a>(
    file: &GgufFile<'a>,
    i: usize,
    c: &Config,
    shape: &BlockShape,
) -> Result<Layer<'a>, LoadError> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let (e, q, kv, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
    let qkv_b = shape.qkv_bias;
    let other_b = shape.other_biases;
    let post = |stem: &str| -> Result<Option<Norm>, LoadError> {
        if shape.post_norms {
            norm(file, &n(stem), e, shape).map(Some)
        } else {
            Ok(None)
        }
    };
    let qk = |stem: &str| -> Result<Option<Vec<f32>>, LoadError> {
        if shape.qk_norm {
            vector(file, &n(stem), c.head_dim).map(Some)
        } else {
            Ok(None)
        }
    };
    let (wq, wk, wv) = if file.tensor(&n("attn_qkv.weight")).is_some() {
        fused_qkv(file, &n("attn_qkv"), e, q, kv, qkv_b)?
    } else {
        (
            linear(file, &n("attn_q"), e, q, qkv_b)?,
            linear(file, &n("attn_k"), e, kv, qkv_b)?,
            linear(file, &n("attn_v"), e, kv, qkv_b)?,
        )
    };
    Ok(Layer {
        attn_norm: norm(file, &n("attn_norm"), e, shape)?,
        wq,
        wk,
        wv,
        wo: linear(file, &n("attn_output"), q, e, other_b)?,
        q_norm: qk("attn_q_norm.weight")?,
        k_norm: qk("attn_k_norm.weight")?,
        attn_post_norm: post("post_attention_norm")?,
        ffn_norm: if shape.parallel {
            None
        } else {
            Some(norm(file, &n("ffn_norm"), e, shape)?)
        },
        w_gate: if shape.ffn == FfnKind::Gelu {
            None
        } else {
            Some(linear(file, &n("ffn_gate"), e, ff, false)?)
        },
        w_up: linear(file, &n("ffn_up"), e, ff, other_b)?,
        w_down: linear(file, &n("ffn_down"), ff, e, other_b)?,
        ffn_post_norm: post("post_ffw_norm")?,
    })
}

impl<'a> Model<'a> {
    /// Reads hyperparameters and borrows weights from a parsed GGUF file.
    pub fn load(file: &GgufFile<'a>, options: ModelOptions) -> Result<Self, LoadError> {
        let arch = file.architecture().ok_or(LoadError::MissingArchitecture)?;
        let family = Family::from_arch(arch)
            .ok_or_else(|| LoadError::UnsupportedArchitecture(arch.to_string()))?;
        let shape = family.shape();
        let k = Keys { file, arch };

        let n_layer = k.u32("block_count")?;
        let n_embd = k.u32("embedding_length")?;
        let n_ff = k.u32("feed_forward_length")?;
        let n_head = k.u32("attention.head_count")?;
        let n_head_kv = k.u32_or("attention.head_count_kv", n_head)?;
        let context_length = k.u32("context_length")?;
        let rope_freq_base = k.f32_or("rope.freq_base", Some(10000.0))?;
        let rope_scale = k.f32_or("rope.scaling.factor", Some(0.0))?;
        let rope_freq_scale = if rope_scale == 0.0 {
            1.0
        } else {
            1.0 / rope_scale
        };

        if n_layer == 0 || n_embd == 0 || n_ff == 0 || n_head == 0 || n_head_kv == 0 {
            return Err(LoadError::BadHyperparameters(format!(
                "block_count {n_layer}, embedding_length {n_embd}, feed_forward_length {n_ff}, \
                 head_count {n_head} and head_count_kv {n_head_kv} must all be non-zero"
            )));
        }
        if n_head % n_head_kv != 0 {
            return Err(LoadError::BadHyperparameters(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        let default_head = n_embd / n_head;
        let head_dim = k.u32_or("attention.key_length", default_head)?;
        let v_dim = k.u32_or("attention.value_length", head_dim)?;
        if head_dim == 0 || (!k.has("attention.key_length") && n_embd % n_head != 0) {
            return Err(LoadError::BadHyperparameters(format!(
                "embedding_length {n_embd} is not a multiple of head_count {n_head}"
            )));
        }
        if v_dim != head_dim {
            return Err(LoadError::BadHyperparameters(format!(
                "key_length {head_dim} differs from value_length {v_dim}"
            )));
        }
        let rope_dims = k.u32_or("rope.dimension_count", head_dim)?;
        if rope_dims > head_dim || rope_dims == 0 || rope_dims % 2 != 0 {
            return Err(LoadError::BadHyperparameters(format!(
                "rope.dimension_count {rope_dims} must be even, non-zero and at most the \
                 head size {head_dim}"
            )));
        }
        if context_length == 0 {
            return Err(LoadError::BadHyperparameters(
                "context_length is 0".to_string(),
            ));
        }

        let embd = tensor(file, "token_embd.weight")?;
        let vocab_size = embd.dims.get(1).copied().unwrap_or(0) as usize;
        if vocab_size == 0 {
            return Err(LoadError::TensorShape {
                name: "token_embd.weight".to_string(),
                expected: vec![n_embd as u64, 0],
                found: embd.dims.clone(),
            });
        }
        let mut config = Config {
            architecture: arch.to_string(),
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps: 0.0,
            rope_freq_base,
            rope_freq_scale,
            rope_dims,
            rope_style: shape.rope,
            context_length,
            vocab_size,
            tied_output: false,
            family,
            embd_scale: 1.0,
            q_scale: 1.0,
            kq_scale: 1.0 / libm::sqrtf(head_dim as f32),
            sliding_window: 0,
            swa_layers: vec![false; n_layer],
            rope_freq_base_swa: rope_freq_base,
            logit_softcap: 0.0,
        };
        family.hparams(&k, &mut config)?;

        let token_embd = matrix(file, "token_embd.weight", n_embd, vocab_size)?;
        if !kernels::dequantize_supported(token_embd.ty) {
            return Err(LoadError::UnsupportedTensorType {
                name: token_embd.name.clone(),
                ty: token_embd.ty,
            });
        }
        config.tied_output = file.tensor("output.weight").is_none();
        let output = if config.tied_output {
            token_embd.clone()
        } else {
            matrix(file, "output.weight", n_embd, vocab_size)?
        };
        let output_norm = norm(file, "output_norm", n_embd, &shape)?;
        let output_bias = part(file, "output.bias", vocab_size, shape.output_bias)?;

        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            layers.push(load_layer(file, i, &config, &shape)?);
        }

        let mut rope = Rope::new(shape.rope, rope_dims, rope_freq_base, rope_freq_scale);
        if file.tensor("rope_freqs.weight").is_some() {
            rope.freq_factors = Some(vector(file, "rope_freqs.weight", rope_dims / 2)?);
        }
        // The sliding-window layers' RoPE has its own base and no scaling.
        let rope_swa = if config.sliding_window > 0 {
            Rope::new(shape.rope, rope_dims, config.rope_freq_base_swa, 1.0)
        } else {
            rope.clone()
        };

        if let Some(0) = options.max_context {
            return Err(LoadError::BadHyperparameters(
                "max_context must be at least 1".to_string(),
            ));
        }

        Ok(Model {
            config,
            options,
            token_embd,
            layers,
            output_norm,
            output,
            output_bias,
            rope,
            rope_swa,
            shape,
        })
    }

    /// The context length sessions get: the trained length, capped by
    /// [`ModelOptions::max_context`].
    pub fn context_len(&self) -> usize {
        match self.options.max_context {
            Some(m) => m.min(self.config.context_length),
            None => self.config.context_length,
        }
    }
}

impl core::error::Error for LoadError {}
