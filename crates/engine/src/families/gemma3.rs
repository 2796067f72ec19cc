//! The Gemma 3 family (`gemma3`): embeddings scaled by sqrt(width), RMS norms before and
//! after attention and feed-forward (the converter already stores norm weights as
//! `1 + w`), per-head Q/K RMS norms, GELU-gated feed-forward, NeoX RoPE, and local
//! sliding-window layers (RoPE base 10000 unless `rope.freq_base_swa` says otherwise)
//! interleaved with global ones (every sixth layer unless the file gives a pattern).

use crate::families::{check_window, swa_pattern, BlockShape, FfnKind, Keys, NormKind};
use crate::model::{Config, LoadError};
use crate::ops::RopeStyle;

pub const SHAPE: BlockShape = BlockShape {
    norm: NormKind::Rms,
    ffn: FfnKind::GeGlu,
    rope: RopeStyle::Neox,
    parallel: false,
    post_norms: true,
    qk_norm: true,
    qkv_bias: false,
    other_biases: false,
    output_bias: false,
};

/// Local/global period of Gemma 3 when the file gives none.
const SWA_PERIOD: usize = 6;

/// Local-layer RoPE base when the file gives none.
const SWA_FREQ_BASE: f32 = 10000.0;

pub(crate) fn hparams(k: &Keys<'_, '_>, c: &mut Config) -> Result<(), LoadError> {
    c.rms_eps = k.f32_or("attention.layer_norm_rms_epsilon", None)?;
    c.embd_scale = libm::sqrtf(c.n_embd as f32);
    let window = k.u32_or("attention.sliding_window", 0)?;
    if window > 0 {
        check_window(window)?;
        c.sliding_window = window;
        c.swa_layers = swa_pattern(k, c.n_layer, SWA_PERIOD)?;
        c.rope_freq_base_swa = k.f32_or("rope.freq_base_swa", Some(SWA_FREQ_BASE))?;
    }
    c.logit_softcap = k.f32_or("final_logit_softcapping", Some(0.0))?;
    // Q is scaled by 1/sqrt(head size) (query_pre_attn_scalar) before the product with K,
    // except in the 27B model (62 layers), which uses width / heads.
    let denom = if c.n_layer == 62 {
        (c.n_embd / c.n_head) as f32
    } else {
        c.head_dim as f32
    };
    c.q_scale = 1.0 / libm::sqrtf(denom);
    c.kq_scale = 1.0;
    Ok(())
}
