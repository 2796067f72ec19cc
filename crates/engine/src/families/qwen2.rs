//! The Qwen2 family (`qwen2`): the llama block with biases on Q, K and V and NeoX-style
//! (split-half) RoPE.

use crate::families::{BlockShape, FfnKind, Keys, NormKind};
use crate::model::{Config, LoadError};
use crate::ops::RopeStyle;

pub const SHAPE: BlockShape = BlockShape {
    norm: NormKind::Rms,
    ffn: FfnKind::SwiGlu,
    rope: RopeStyle::Neox,
    parallel: false,
    post_norms: false,
    qk_norm: false,
    qkv_bias: true,
    other_biases: false,
    output_bias: false,
};

pub(crate) fn hparams(k: &Keys<'_, '_>, c: &mut Config) -> Result<(), LoadError> {
    c.rms_eps = k.f32_or("attention.layer_norm_rms_epsilon", None)?;
    Ok(())
}
