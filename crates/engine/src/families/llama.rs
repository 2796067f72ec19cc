//! The llama family (`llama`: Llama 1-3, SmolLM, TinyLlama, Mistral): RMS norms, SwiGLU
//! feed-forward, adjacent-pair RoPE (the converter permutes Q/K for it), no biases.

use crate::families::{BlockShape, FfnKind, Keys, NormKind};
use crate::model::{Config, LoadError};
use crate::ops::RopeStyle;

pub const SHAPE: BlockShape = BlockShape {
    norm: NormKind::Rms,
    ffn: FfnKind::SwiGlu,
    rope: RopeStyle::Normal,
    parallel: false,
    post_norms: false,
    qk_norm: false,
    qkv_bias: false,
    other_biases: false,
    output_bias: false,
};

pub(crate) fn hparams(k: &Keys<'_, '_>, c: &mut Config) -> Result<(), LoadError> {
    c.rms_eps = k.f32_or("attention.layer_norm_rms_epsilon", None)?;
    // llama.cpp's llama graph reads no sliding window, even when a Mistral file declares
    // one; following it keeps the tokens identical (every layer attends to the whole
    // context).
    Ok(())
}
