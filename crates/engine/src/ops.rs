//! Scalar numeric kernels of the forward pass (normalisation, RoPE, softmax, SiLU, GELU),
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

/// LayerNorm followed by the elementwise weight and bias:
/// `out = (x - mean) / sqrt(var + eps) * w + b`.
///
/// As ggml: the mean is an f64 sum rounded to f32 and divided in f32; the variance sums
/// the squared deviations 16 at a time (each group folded as `_mm512_reduce_add_ps`)
/// into f64, the leftover elements one by one; weight and bias are applied as two
/// separately rounded operations.
pub fn layer_norm(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let n = x.len();
    let mut sum = 0.0f64;
    for &v in x {
        sum += f64::from(v);
    }
    let mean = (sum as f32) / n as f32;
    let mut var = 0.0f64;
    let full = n - n % 16;
    for (chunk, o) in x[..full].chunks_exact(16).zip(out.chunks_exact_mut(16)) {
        let mut lanes = [0.0f32; 16];
        for ((l, &v), d) in lanes.iter_mut().zip(chunk).zip(o.iter_mut()) {
            *d = v - mean;
            *l = *d * *d;
        }
        var += f64::from(reduce16(&lanes));
    }
    for (d, &v) in out[full..n].iter_mut().zip(&x[full..]) {
        *d = v - mean;
        var += f64::from(*d * *d);
    }
    let var = (var / n as f64) as f32;
    let scale = 1.0f32 / libm::sqrtf(var + eps);
    for (o, &g) in out.iter_mut().zip(w) {
        *o = *o * scale * g;
    }
    if let Some(b) = b {
        for (o, &c) in out.iter_mut().zip(b) {
            *o += c;
        }
    }
}

/// GELU (tanh approximation) as ggml's CPU backend evaluates it: inputs at or below -10
/// give 0, at or above 10 pass through, and the rest are rounded to f16 and looked up in
/// a table of f16-rounded `0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))`, which
/// this computes on the fly.
#[inline]
pub fn gelu(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_of_f16(f16::from_f32(x)).to_f32()
    }
}

/// The f16-rounded tanh-GELU of an f16 value (the inner part of [`gelu`]).
fn gelu_of_f16(h: f16) -> f16 {
    let h = h.to_f32();
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    let inner = SQRT_2_OVER_PI * h * fma(COEF_A * h, h, 1.0);
    f16::from_f32(0.5 * h * (1.0 + tanh(inner)))
}

/// [`gelu`] of every f16 value (as f16 bits), computed once on first use: the function
/// rounds its input to f16 before anything else, so a lookup gives the same bits (ggml's
/// CPU backend uses such a table too). Building it costs about a millisecond.
static GELU_TABLE: spin::Once<alloc::boxed::Box<[u16]>> = spin::Once::new();

fn gelu_table() -> &'static [u16] {
    GELU_TABLE.call_once(|| {
        (0..=u16::MAX)
            .map(|b| gelu_of_f16(f16::from_bits(b)).to_bits())
            .collect()
    })
}

/// Builds the process-wide tables the engine otherwise makes on first use (today the
/// 128 KiB GELU table). A kernel calls this at boot so that loading and unloading a
/// model leaves its heap exactly as it found it; calling it again does nothing.
pub fn prepare_tables() {
    gelu_table();
}

/// [`gelu`] through the table (same bits).
#[inline]
pub fn gelu_fast(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let t = gelu_table();
        let b = f16::from_f32(x).to_bits() as usize;
        crate::f16table::f16_to_f32(t.get(b).copied().unwrap_or(0))
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
            // glibc's rounding, not the `libm` crate's: see `crate::trig`.
            cs[0] = crate::trig::cosf(angle);
            cs[1] = crate::trig::sinf(angle);
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

/// The constants of [`exp_ggml`] as bit patterns, for the SIMD version in `simd`.
pub(crate) mod exp_consts {
    pub const SHIFT: u32 = super::EXP_SHIFT;
    pub const LOG2E: u32 = super::EXP_LOG2E;
    pub const LN2_HI: u32 = super::EXP_LN2_HI;
    pub const LN2_LO: u32 = super::EXP_LN2_LO;
    pub const C5: u32 = super::EXP_C5;
    pub const C4: u32 = super::EXP_C4;
    pub const C3: u32 = super::EXP_C3;
    pub const C2: u32 = super::EXP_C2;
    pub const C1: u32 = super::EXP_C1;
}

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
    softmax_scaled_from(x, scale, 0);
}

/// [`softmax_scaled`] with the positions before `first` masked (a sliding window): they
/// get probability 0 but keep their place in the 16-element groups of the sum, as
/// llama.cpp's masked cache cells do.
pub fn softmax_scaled_from(x: &mut [f32], scale: f32, first: usize) {
    let mut max = f32::NEG_INFINITY;
    for (i, v) in x.iter_mut().enumerate() {
        *v *= scale;
        if i >= first && *v > max {
            max = *v;
        }
    }
    // Positions before the window are masked in llama.cpp and contribute exactly 0.
    let first = first.min(x.len());
    x[..first].fill(0.0);
    crate::simd::exp_sub(&mut x[first..], max, crate::simd::avx2_available());
    let mut sum = 0.0f64;
    for chunk in x.chunks(16) {
        // Positions past the end are masked in llama.cpp and contribute exactly 0.
        let mut lanes = [0.0f32; 16];
        lanes[..chunk.len()].copy_from_slice(chunk);
        sum += f64::from(reduce16(&lanes));
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// tanh in f32 the way the C library's `tanhf` (which ggml calls) evaluates it on the
/// reference machine (glibc 2.36): from `expm1(2|x|)` as `1 - 2 / (t + 2)` for
/// |x| >= 1, from `t = expm1(-2|x|)` as `-t / (t + 2)` below, `x (1 + x)` for tiny
/// inputs and +-1 from 22 on. Neither a correctly rounded tanh nor libm's `tanhf` agree
/// with it to the last bit (about 7% of inputs differ by an ulp).
pub fn tanh(x: f32) -> f32 {
    let a = libm::fabsf(x);
    if x.is_nan() {
        return x;
    }
    let z = if a >= 22.0 {
        1.0
    } else if a < f32::from_bits(0x2400_0000) {
        return x * (1.0 + x);
    } else if a >= 1.0 {
        let t = libm::expm1f(2.0 * a);
        1.0 - 2.0 / (t + 2.0)
    } else {
        let t = libm::expm1f(-2.0 * a);
        -t / (t + 2.0)
    };
    if x.is_sign_negative() {
        -z
    } else {
        z
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
    /// A batch of 8 or more tokens: as [`DotOrder::Batch`], except that K-quant weights
    /// go through ggml's tiled K-quant kernel, which folds each 256-element block to one
    /// exact integer before any float rounding (see [`crate::lanes::dot_q4_k_tiled`]).
    Tiled,
}

impl DotOrder {
    /// The order llama.cpp uses for a micro-batch of `n` tokens.
    pub fn for_batch(n: usize) -> Self {
        match n {
            0 | 1 => DotOrder::Single,
            2..=7 => DotOrder::Batch,
            _ => DotOrder::Tiled,
        }
    }
}

/// Dot product of two f16 vectors, each product exact in f32, accumulated in the order
/// of the llama.cpp kernel `mode` names. `x` may be shorter than `y` and vice versa: the
/// missing elements count as zeros (llama.cpp's masked, zero-weighted cache cells).
pub fn dot_f16(x: &[f16], y: &[f16], mode: DotOrder) -> f32 {
    let n = x.len().min(y.len());
    let cv = |v: f16| crate::f16table::f16_to_f32(v.to_bits());
    let prod = |i: usize| cv(x[i]) * cv(y[i]);
    match mode {
        DotOrder::Batch | DotOrder::Tiled => {
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
    fn gelu_follows_the_tanh_formula_to_f16_precision() {
        for x in [-12.0f32, -3.0, -0.5, 0.0, 0.3, 1.0, 2.5, 9.9, 11.0] {
            let want = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044715 * x * x)).tanh());
            let got = gelu(x);
            assert!(
                (got - want).abs() <= 2e-3 * (1.0 + want.abs()),
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(gelu(-10.0), 0.0);
        assert_eq!(gelu(10.5), 10.5);
    }

    #[test]
    fn gelu_table_gives_the_same_bits_for_every_f16_input() {
        for b in 0..=u16::MAX {
            let x = f16::from_bits(b).to_f32();
            let (want, got) = (gelu(x), gelu_fast(x));
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                "{x}: {got} vs {want}"
            );
        }
        for x in [-10.0f32, -9.999, 0.123_456_7, 3.333_333, 9.999, 10.0, 12.0] {
            assert_eq!(gelu(x).to_bits(), gelu_fast(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let x: [f32; 20] = core::array::from_fn(|i| i as f32 * 0.5 - 3.0);
        let w = [2.0f32; 20];
        let b = [1.0f32; 20];
        let mut out = [0.0f32; 20];
        layer_norm(&x, &w, Some(&b), 1e-5, &mut out);
        let mean: f32 = out.iter().sum::<f32>() / 20.0;
        let var: f32 = out.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 20.0;
        assert!((mean - 1.0).abs() < 1e-5, "{mean}");
        assert!((var - 4.0).abs() < 1e-3, "{var}");
    }

    #[test]
    fn masked_softmax_zeroes_the_window_prefix() {
        let mut x = [5.0f32, 1.0, 2.0, 3.0];
        softmax_scaled_from(&mut x, 1.0, 2);
        assert_eq!(&x[..2], &[0.0, 0.0]);
        assert!((x[2] + x[3] - 1.0).abs() < 1e-6 && x[3] > x[2]);
    }

    #[test]
    fn tanh_is_tanh() {
        for x in [-30.0f32, -3.0, -0.7, -1e-9, 0.0, 1e-9, 0.25, 1.0, 5.0, 25.0] {
            let want = libm::tanh(f64::from(x));
            assert!(
                (f64::from(tanh(x)) - want).abs() <= 2e-7 * (1.0 + want.abs()),
                "{x}"
            );
        }
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn silu_matches_definition() {
        for x in [-5.0f32, -0.5, 0.0, 0.7, 4.0] {
            let want = x / (1.0 + (-x).exp());
            assert!((silu(x) - want).abs() < 1e-6);
        }
    }
}
