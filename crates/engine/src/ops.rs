//! Scalar numeric kernels of the forward pass (normalisation, RoPE, softmax, SiLU),
//! written to round the way ggml's CPU backend does so logits match llama.cpp.

use half::f16;

/// RMS normalisation followed by the elementwise norm weight: `out = x / rms(x) * w`.
///
/// ggml accumulates the sum of squares in f64 (each square is rounded to f32 first),
/// then forms the mean and the scale in f32; the product is `(x * scale) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut sum = 0.0f64;
    for &v in x {
        sum += f64::from(v * v);
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / libm::sqrtf(mean + eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])` (llama.cpp's `LLAMA_ROPE_TYPE_NORM`, used by the
    /// llama architecture, whose converter permutes Q/K to suit it).
    Normal,
    /// Pairs `(x[i], x[i + n/2])` (`LLAMA_ROPE_TYPE_NEOX`: Gemma, Qwen, Phi-3, ...).
    Neox,
}

/// Precomputed RoPE parameters of a model.
#[derive(Clone, Debug)]
pub struct Rope {
    pub style: RopeStyle,
    /// Rotated dimensions per head (`rope.dimension_count`); the rest pass through.
    pub dims: usize,
    /// `freq_base^(-2/dims)`, the per-pair frequency ratio.
    pub theta_scale: f32,
    /// Linear position scaling (1 / rope scale factor).
    pub freq_scale: f32,
    /// Optional per-pair frequency divisors (`rope_freqs.weight`, Llama 3.1).
    pub freq_factors: Option<alloc::vec::Vec<f32>>,
}

impl Rope {
    pub fn new(style: RopeStyle, dims: usize, freq_base: f32, freq_scale: f32) -> Self {
        Self {
            style,
            dims,
            theta_scale: libm::powf(freq_base, -2.0 / dims as f32),
            freq_scale,
            freq_factors: None,
        }
    }

    /// Fills `cache` (length `dims`) with interleaved `cos, sin` of each pair's angle at
    /// position `pos`. As in ggml the angle is advanced by repeated f32 multiplication,
    /// starting from the position itself, rather than with `powf` per pair.
    pub fn fill_cache(&self, pos: usize, cache: &mut [f32]) {
        let mut theta = pos as f32;
        for (pair, cs) in cache.chunks_exact_mut(2).enumerate() {
            let ff = self
                .freq_factors
                .as_ref()
                .and_then(|f| f.get(pair).copied())
                .unwrap_or(1.0);
            let angle = self.freq_scale * (theta / ff);
            cs[0] = libm::cosf(angle);
            cs[1] = libm::sinf(angle);
            theta *= self.theta_scale;
        }
    }

    /// Rotates one head vector in place using a cache from [`Rope::fill_cache`].
    /// The first product of each output is fused with the sum, as GCC contracts ggml's
    /// rotation (the results then agree with llama.cpp bit for bit).
    pub fn apply(&self, head: &mut [f32], cache: &[f32]) {
        let n = self.dims;
        match self.style {
            RopeStyle::Normal => {
                for (pair, cs) in cache[..n].chunks_exact(2).enumerate() {
                    let (c, s) = (cs[0], cs[1]);
                    let x0 = head[2 * pair];
                    let x1 = head[2 * pair + 1];
                    head[2 * pair] = fma(x0, c, -(x1 * s));
                    head[2 * pair + 1] = fma(x0, s, x1 * c);
                }
            }
            RopeStyle::Neox => {
                let half = n / 2;
                for (pair, cs) in cache[..n].chunks_exact(2).enumerate() {
                    let (c, s) = (cs[0], cs[1]);
                    let x0 = head[pair];
                    let x1 = head[pair + half];
                    head[pair] = fma(x0, c, -(x1 * s));
                    head[pair + half] = fma(x0, s, x1 * c);
                }
            }
        }
    }
}

/// `a * b + c` with a single rounding. The f64 product of two f32 values is exact; the
/// f64 sum differs from a true fused multiply-add only when it lands exactly on an f32
/// rounding tie, which is rare enough to ignore, and it needs no hardware FMA.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(c)) as f32
}

/// Sum of 16 lanes in the pairing of `_mm512_reduce_add_ps` as GCC expands it: the two
/// 8-lane halves, then the two 4-lane halves, then lanes {0,2} and {1,3}, then the pair.
#[inline(always)]
pub fn reduce16(l: &[f32; 16]) -> f32 {
    let mut a = [0.0f32; 8];
    for i in 0..8 {
        a[i] = l[i + 8] + l[i];
    }
    let b = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (b[0] + b[2]) + (b[1] + b[3])
}

// Constants of ggml's vectorised expf (a Cody-Waite range reduction and a degree-5
// polynomial), as bit patterns.
const EXP_SHIFT: u32 = 0x4b40_0000; // 1.5 * 2^23: rounds to an integer when added
const EXP_LOG2E: u32 = 0x3fb8_aa3b;
const EXP_LN2_HI: u32 = 0x3f31_7200;
const EXP_LN2_LO: u32 = 0x35bf_be8e;
const EXP_C5: u32 = 0x3c07_2010;
const EXP_C4: u32 = 0x3d2b_9f17;
const EXP_C3: u32 = 0x3e2a_af33;
const EXP_C2: u32 = 0x3eff_fedb;
const EXP_C1: u32 = 0x3f7f_fff6;

/// e^x computed the way ggml's AVX-512 `ggml_v_expf` does (softmax and SiLU use it), so
/// the results agree to the last bit rather than to an ulp or two.
pub fn exp_ggml(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(EXP_SHIFT);
    let z = fma(x, c(EXP_LOG2E), r);
    let n = z - r;
    // b = x - n*ln2 in two steps (fnmadd: c - a*b).
    let b = fma(-n, c(EXP_LN2_LO), fma(-n, c(EXP_LN2_HI), x));
    let u = b * b;
    let j = fma(
        fma(
            fma(c(EXP_C5), b, c(EXP_C4)),
            u,
            fma(c(EXP_C3), b, c(EXP_C2)),
        ),
        u,
        fma(c(EXP_C1), b, 1.0),
    );
    if libm::fabsf(n) > 192.0 {
        // Out of range: the kernel substitutes 0 or infinity.
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    libm::scalbnf(j, n as i32)
}

/// In-place softmax of `x * scale` as ggml computes it (`soft_max_ext` without mask or
/// ALiBi; masked positions are simply absent from `x`): exponentials by [`exp_ggml`],
/// summed 16 at a time with [`reduce16`] into an f64 total, then scaled by its f32
/// reciprocal.
pub fn softmax_scaled(x: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for v in x.iter_mut() {
        *v *= scale;
        if *v > max {
            max = *v;
        }
    }
    let mut sum = 0.0f64;
    for chunk in x.chunks_mut(16) {
        // Positions past the end are masked in llama.cpp and contribute exactly 0.
        let mut lanes = [0.0f32; 16];
        for (l, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *v = exp_ggml(*v - max);
            *l = *v;
        }
        sum += f64::from(reduce16(&lanes));
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SiLU, `x / (1 + e^-x)`, with ggml's vectorised exponential.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_ggml(-x))
}

/// Which of llama.cpp's two float dot-product kernels a product goes through: it
/// evaluates a single token with ggml's vector dot products and a batch of tokens with
/// llamafile's tinyBLAS, and the two accumulate (so round) differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotOrder {
    /// One token (decode): ggml's `vec_dot_f16`, four 16-lane accumulators over steps of
    /// 64 elements, folded pairwise, with any tail added in f64.
    Single,
    /// A batch of tokens (prefill): llamafile's tinyBLAS, one 16-lane accumulator.
    Batch,
}

/// Dot product of two f16 vectors, each product exact in f32, accumulated in the order
/// of the llama.cpp kernel `mode` names. `x` may be shorter than `y` and vice versa: the
/// missing elements count as zeros (llama.cpp's masked, zero-weighted cache cells).
pub fn dot_f16(x: &[f16], y: &[f16], mode: DotOrder) -> f32 {
    let n = x.len().min(y.len());
    let cv = |v: f16| crate::f16table::f16_to_f32(v.to_bits());
    let prod = |i: usize| cv(x[i]) * cv(y[i]);
    match mode {
        DotOrder::Batch => {
            let mut lanes = [0.0f32; 16];
            for (i, lane) in (0..n).zip((0..16).cycle()) {
                lanes[lane] += prod(i);
            }
            reduce16(&lanes)
        }
        DotOrder::Single => {
            let mut acc = [[0.0f32; 16]; 4];
            let full = n & !63;
            for base in (0..full).step_by(64) {
                for (j, a) in acc.iter_mut().enumerate() {
                    for (l, lane) in a.iter_mut().enumerate() {
                        *lane += prod(base + 16 * j + l);
                    }
                }
            }
            // The llama.cpp cache is padded to a multiple of 256 cells with zeros, so a
            // partial step here is a full step there.
            if full < n {
                for (j, a) in acc.iter_mut().enumerate() {
                    for (l, lane) in a.iter_mut().enumerate() {
                        let i = full + 16 * j + l;
                        if i < n {
                            *lane += prod(i);
                        }
                    }
                }
            }
            let [a0, a1, a2, a3] = acc;
            let mut r = [0.0f32; 16];
            for l in 0..16 {
                r[l] = (a0[l] + a2[l]) + (a1[l] + a3[l]);
            }
            reduce16(&r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_gives_unit_rms() {
        let x = [1.0f32, -2.0, 3.0, -4.0];
        let w = [1.0f32; 4];
        let mut out = [0.0f32; 4];
        rms_norm(&x, &w, 0.0, &mut out);
        let rms: f32 = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6, "{rms}");
        assert!(out[0] > 0.0 && out[1] < 0.0);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = [1.0f32, 3.0, 2.0, -1.0];
        softmax_scaled(&mut x, 0.5);
        let s: f32 = x.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(x[1] > x[2] && x[2] > x[0] && x[0] > x[3]);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let rope = Rope::new(style, 8, 10000.0, 1.0);
            let mut cache = [0.0f32; 8];
            rope.fill_cache(0, &mut cache);
            let orig = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
            let mut h = orig;
            rope.apply(&mut h, &cache);
            assert_eq!(h, orig);
            rope.fill_cache(17, &mut cache);
            rope.apply(&mut h, &cache);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = h.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
            assert_ne!(h, orig);
        }
    }

    #[test]
    fn rope_normal_rotates_adjacent_pairs_by_position() {
        let rope = Rope::new(RopeStyle::Normal, 4, 10000.0, 1.0);
        let mut cache = [0.0f32; 4];
        rope.fill_cache(1, &mut cache);
        let mut h = [1.0f32, 0.0, 0.0, 0.0];
        rope.apply(&mut h, &cache);
        // First pair rotates by exactly 1 radian at position 1.
        assert!((h[0] - 1.0f32.cos()).abs() < 1e-6 && (h[1] - 1.0f32.sin()).abs() < 1e-6);
        assert_eq!(&h[2..], &[0.0, 0.0]);
    }

    #[test]
    fn silu_matches_definition() {
        for x in [-5.0f32, -0.5, 0.0, 0.7, 4.0] {
            let want = x / (1.0 + (-x).exp());
            assert!((silu(x) - want).abs() < 1e-6);
        }
    }
}
