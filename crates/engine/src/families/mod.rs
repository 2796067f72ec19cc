//! Model families: what sets each supported architecture apart (its hyperparameter
//! keys, its optional tensors and the shape of its transformer block), described as data
//! over the layers every family shares (see [`crate::session`] for the forward pass).

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

use embodios_gguf::GgufFile;

use crate::model::{Config, LoadError};
use crate::ops::RopeStyle;

pub mod gemma3;
pub mod llama;
pub mod phi2;
pub mod qwen2;

/// A supported architecture (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `llama` (also Mistral, SmolLM, TinyLlama: the same graph).
    Llama,
    /// `gemma3`.
    Gemma3,
    /// `qwen2`.
    Qwen2,
    /// `phi2`.
    Phi2,
}

/// Normalisation layer of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `x / rms(x) * w`.
    Rms,
    /// `(x - mean) / std * w + b`.
    Layer,
}

/// Feed-forward network of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnKind {
    /// `down(silu(gate(x)) * up(x))`.
    SwiGlu,
    /// `down(gelu(gate(x)) * up(x))`.
    GeGlu,
    /// `down(gelu(up(x)))`, no gate.
    Gelu,
}

/// How a family's block is assembled from the shared layers, and which optional
/// tensors it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    pub norm: NormKind,
    pub ffn: FfnKind,
    pub rope: RopeStyle,
    /// Attention and feed-forward both read the block's normalised input and their sum
    /// is added to the residual (Phi-2); otherwise the feed-forward follows attention.
    pub parallel: bool,
    /// Extra norms on the attention and feed-forward outputs before the residual add.
    pub post_norms: bool,
    /// Per-head RMS norms of Q and K before RoPE.
    pub qk_norm: bool,
    /// Biases on the Q, K and V projections.
    pub qkv_bias: bool,
    /// Biases on the attention output, feed-forward up/down projections and the norms.
    pub other_biases: bool,
    /// A bias on the output projection.
    pub output_bias: bool,
}

/// Architectures [`crate::Model::load`] accepts.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3", "qwen2", "phi2"];

impl Family {
    /// The family of an architecture name, if supported.
    pub fn from_arch(arch: &str) -> Option<Self> {
        match arch {
            "llama" => Some(Family::Llama),
            "gemma3" => Some(Family::Gemma3),
            "qwen2" => Some(Family::Qwen2),
            "phi2" => Some(Family::Phi2),
            _ => None,
        }
    }

    /// The architecture name as GGUF files spell it.
    pub fn arch(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Gemma3 => "gemma3",
            Family::Qwen2 => "qwen2",
            Family::Phi2 => "phi2",
        }
    }

    /// The block shape of the family.
    pub fn shape(self) -> BlockShape {
        match self {
            Family::Llama => llama::SHAPE,
            Family::Gemma3 => gemma3::SHAPE,
            Family::Qwen2 => qwen2::SHAPE,
            Family::Phi2 => phi2::SHAPE,
        }
    }

    /// Reads the family's own hyperparameters into `c`, whose common ones are set.
    pub(crate) fn hparams(self, k: &Keys<'_, '_>, c: &mut Config) -> Result<(), LoadError> {
        match self {
            Family::Llama => llama::hparams(k, c),
            Family::Gemma3 => gemma3::hparams(k, c),
            Family::Qwen2 => qwen2::hparams(k, c),
            Family::Phi2 => phi2::hparams(k, c),
        }
    }
}

/// Typed access to one architecture's metadata keys (`<arch>.<name>`).
pub struct Keys<'f, 'a> {
    pub file: &'f GgufFile<'a>,
    pub arch: &'f str,
}

impl Keys<'_, '_> {
    fn full(&self, name: &str) -> alloc::string::String {
        format!("{}.{name}", self.arch)
    }

    /// Whether `<arch>.<name>` is present.
    pub fn has(&self, name: &str) -> bool {
        self.file.get(&self.full(name)).is_some()
    }

    /// A required unsigned integer.
    pub fn u32(&self, name: &str) -> Result<usize, LoadError> {
        let key = self.full(name);
        match self.file.get(&key) {
            None => Err(LoadError::MissingKey(key)),
            Some(v) => v
                .as_u32()
                .map(|x| x as usize)
                .ok_or_else(|| LoadError::BadKey {
                    reason: format!(
                        "expected an unsigned 32-bit integer, found {}",
                        v.type_name()
                    ),
                    key,
                }),
        }
    }

    /// An optional unsigned integer.
    pub fn u32_or(&self, name: &str, default: usize) -> Result<usize, LoadError> {
        if self.has(name) {
            self.u32(name)
        } else {
            Ok(default)
        }
    }

    /// A float, required when `default` is `None`.
    pub fn f32_or(&self, name: &str, default: Option<f32>) -> Result<f32, LoadError> {
        let key = self.full(name);
        match (self.file.get(&key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(LoadError::MissingKey(key)),
            (Some(v), _) => v.as_f32().ok_or_else(|| LoadError::BadKey {
                reason: format!("expected a float, found {}", v.type_name()),
                key,
            }),
        }
    }
}

/// Marks the layers that use sliding-window attention: layer `i` is local unless
/// `i % period == period - 1` (every `period`-th layer, counting from 1, is global).
/// A period of 0 makes every layer local. `sliding_window_pattern` in the file overrides
/// the period.
pub(crate) fn swa_pattern(
    k: &Keys<'_, '_>,
    n_layer: usize,
    default_period: usize,
) -> Result<Vec<bool>, LoadError> {
    let period = k.u32_or("attention.sliding_window_pattern", default_period)?;
    Ok((0..n_layer)
        .map(|i| period == 0 || i % period < period - 1)
        .collect())
}

/// Checks that a sliding window, when declared, is usable.
pub(crate) fn check_window(window: usize) -> Result<(), LoadError> {
    if window == 0 {
        return Err(LoadError::BadHyperparameters(
            "attention.sliding_window is 0".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_name_round_trips() {
        for &name in SUPPORTED_ARCHITECTURES {
            let f = Family::from_arch(name).expect(name);
            assert_eq!(f.arch(), name);
        }
        assert_eq!(Family::from_arch("mamba"), None);
    }

    #[test]
    fn shapes_differ_where_the_families_do() {
        let (l, g, q, p) = (
            Family::Llama.shape(),
            Family::Gemma3.shape(),
            Family::Qwen2.shape(),
            Family::Phi2.shape(),
        );
        assert_eq!(l.rope, RopeStyle::Normal);
        assert_eq!(q.rope, RopeStyle::Neox);
        assert!(q.qkv_bias && !l.qkv_bias);
        assert!(g.post_norms && g.qk_norm && g.ffn == FfnKind::GeGlu);
        assert!(p.parallel && p.norm == NormKind::Layer && p.output_bias);
    }
}
