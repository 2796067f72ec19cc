//! Loading a llama-family model from a GGUF file: hyperparameters, and weights borrowed
//! zero-copy from the file's bytes, every tensor checked for presence, shape and type.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embodios_gguf::{GgmlType, GgufFile, TensorInfo};

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

/// Architectures [`Model::load`] accepts.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

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

/// Weights of one transformer block.
#[derive(Clone, Debug)]
pub struct Layer<'a> {
    pub attn_norm: Vec<f32>,
    pub wq: WeightMatrix<'a>,
    pub wk: WeightMatrix<'a>,
    pub wv: WeightMatrix<'a>,
    pub wo: WeightMatrix<'a>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: WeightMatrix<'a>,
    pub w_up: WeightMatrix<'a>,
    pub w_down: WeightMatrix<'a>,
}

/// A loaded model: hyperparameters plus weights that borrow the file's bytes.
#[derive(Clone, Debug)]
pub struct Model<'a> {
    pub config: Config,
    pub options: ModelOptions,
    pub token_embd: WeightMatrix<'a>,
    pub layers: Vec<Layer<'a>>,
    pub output_norm: Vec<f32>,
    pub output: WeightMatrix<'a>,
    pub rope: Rope,
}

fn key_u32(file: &GgufFile<'_>, key: &str) -> Result<usize, LoadError> {
    match file.get(key) {
        None => Err(LoadError::MissingKey(key.to_string())),
        Some(v) => v
            .as_u32()
            .map(|x| x as usize)
            .ok_or_else(|| LoadError::BadKey {
                key: key.to_string(),
                reason: format!(
                    "expected an unsigned 32-bit integer, found {}",
                    v.type_name()
                ),
            }),
    }
}

fn key_u32_or(file: &GgufFile<'_>, key: &str, default: usize) -> Result<usize, LoadError> {
    if file.get(key).is_none() {
        Ok(default)
    } else {
        key_u32(file, key)
    }
}

fn key_f32_or(file: &GgufFile<'_>, key: &str, default: Option<f32>) -> Result<f32, LoadError> {
    match (file.get(key), default) {
        (None, Some(d)) => Ok(d),
        (None, None) => Err(LoadError::MissingKey(key.to_string())),
        (Some(v), _) => v.as_f32().ok_or_else(|| LoadError::BadKey {
            key: key.to_string(),
            reason: format!("expected a float, found {}", v.type_name()),
        }),
    }
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

impl<'a> Model<'a> {
    /// Reads hyperparameters and borrows weights from a parsed GGUF file.
    pub fn load(file: &GgufFile<'a>, options: ModelOptions) -> Result<Self, LoadError> {
        let arch = file.architecture().ok_or(LoadError::MissingArchitecture)?;
        let rope_style = match arch {
            "llama" => RopeStyle::Normal,
            other => return Err(LoadError::UnsupportedArchitecture(other.to_string())),
        };
        let k = |s: &str| format!("{arch}.{s}");

        let n_layer = key_u32(file, &k("block_count"))?;
        let n_embd = key_u32(file, &k("embedding_length"))?;
        let n_ff = key_u32(file, &k("feed_forward_length"))?;
        let n_head = key_u32(file, &k("attention.head_count"))?;
        let n_head_kv = key_u32_or(file, &k("attention.head_count_kv"), n_head)?;
        let context_length = key_u32(file, &k("context_length"))?;
        let rms_eps = key_f32_or(file, &k("attention.layer_norm_rms_epsilon"), None)?;
        let rope_freq_base = key_f32_or(file, &k("rope.freq_base"), Some(10000.0))?;
        let rope_scale = key_f32_or(file, &k("rope.scaling.factor"), Some(0.0))?;
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
        if n_embd % n_head != 0 {
            return Err(LoadError::BadHyperparameters(format!(
                "embedding_length {n_embd} is not a multiple of head_count {n_head}"
            )));
        }
        if n_head % n_head_kv != 0 {
            return Err(LoadError::BadHyperparameters(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = key_u32_or(file, &k("attention.key_length"), n_embd / n_head)?;
        let v_dim = key_u32_or(file, &k("attention.value_length"), n_embd / n_head)?;
        if v_dim != head_dim {
            return Err(LoadError::BadHyperparameters(format!(
                "key_length {head_dim} differs from value_length {v_dim}"
            )));
        }
        let rope_dims = key_u32_or(file, &k("rope.dimension_count"), head_dim)?;
        if rope_dims != head_dim || head_dim % 2 != 0 {
            return Err(LoadError::BadHyperparameters(format!(
                "rope.dimension_count {rope_dims} must equal the (even) head size {head_dim}"
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
        let token_embd = matrix(file, "token_embd.weight", n_embd, vocab_size)?;
        if !kernels::dequantize_supported(token_embd.ty) {
            return Err(LoadError::UnsupportedTensorType {
                name: token_embd.name.clone(),
                ty: token_embd.ty,
            });
        }
        let tied_output = file.tensor("output.weight").is_none();
        let output = if tied_output {
            token_embd.clone()
        } else {
            matrix(file, "output.weight", n_embd, vocab_size)?
        };
        let output_norm = vector(file, "output_norm.weight", n_embd)?;

        let q_dim = n_head * head_dim;
        let kv_dim = n_head_kv * head_dim;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(file, &n("attn_norm"), n_embd)?,
                wq: matrix(file, &n("attn_q"), n_embd, q_dim)?,
                wk: matrix(file, &n("attn_k"), n_embd, kv_dim)?,
                wv: matrix(file, &n("attn_v"), n_embd, kv_dim)?,
                wo: matrix(file, &n("attn_output"), q_dim, n_embd)?,
                ffn_norm: vector(file, &n("ffn_norm"), n_embd)?,
                w_gate: matrix(file, &n("ffn_gate"), n_embd, n_ff)?,
                w_up: matrix(file, &n("ffn_up"), n_embd, n_ff)?,
                w_down: matrix(file, &n("ffn_down"), n_ff, n_embd)?,
            });
        }

        let mut rope = Rope::new(rope_style, rope_dims, rope_freq_base, rope_freq_scale);
        if file.tensor("rope_freqs.weight").is_some() {
            rope.freq_factors = Some(vector(file, "rope_freqs.weight", rope_dims / 2)?);
        }

        if let Some(0) = options.max_context {
            return Err(LoadError::BadHyperparameters(
                "max_context must be at least 1".to_string(),
            ));
        }

        Ok(Model {
            config: Config {
                architecture: arch.to_string(),
                n_layer,
                n_embd,
                n_ff,
                n_head,
                n_head_kv,
                head_dim,
                rms_eps,
                rope_freq_base,
                rope_freq_scale,
                rope_dims,
                rope_style,
                context_length,
                vocab_size,
                tied_output,
            },
            options,
            token_embd,
            layers,
            output_norm,
            output,
            rope,
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
