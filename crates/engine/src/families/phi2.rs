//! The Phi-2 family (`phi2`): LayerNorm with bias, attention and a GELU feed-forward in
//! parallel on the same normalised input, partial NeoX RoPE (`rope.dimension_count`),
//! biases on every projection including the output, and Q scaled before attention.

use crate::families::{BlockShape, FfnKind, Keys, NormKind};
use crate::model::{Config, LoadError};
use crate::ops::RopeStyle;

pub const SHAPE: BlockShape = BlockShape {
    norm: NormKind::Layer,
    ffn: FfnKind::Gelu,
    rope: RopeStyle::Neox,
    parallel: true,
    post_norms: false,
    qk_norm: false,
    qkv_bias: true,
    other_biases: true,
    output_bias: true,
};

pub(crate) fn hparams(k: &Keys<'_, '_>, c: &mut Config) -> Result<(), LoadError> {
    c.rms_eps = k.f32_or("attention.layer_norm_epsilon", None)?;
    // llama.cpp scales Q in f32 before the product with K (to keep f16 in range) and
    // then applies no softmax scale.
    c.q_scale = 1.0 / libm::sqrtf(c.head_dim as f32);
    c.kq_scale = 1.0;
    Ok(())
}
