//! SIMD versions of the engine's inner loops, each with a scalar twin that defines the
//! result. The integer sums are exact in any order, so vector and scalar agree bit for
//! bit by construction; the f16 attention dot products keep the scalar twin's lanes and
//! fold order exactly (each f16 x f16 product is exact in f32, so only the additions
//! round, and they are the same additions in the same order).
//!
//! This is the one module of the engine allowed `unsafe`: calling a function compiled
//! for AVX2 after checking that the CPU has it. Soft-float x86-64 targets (no SSE2, as
//! `x86_64-unknown-none`) get only the scalar versions.
#![allow(unsafe_code)]

/// Elements per group in [`group_dots`].
pub const GROUP: usize = 32;

/// Whether the AVX2 versions may run: the quantisation crate has detected AVX2 and FMA
/// (and is not forced to its scalar set).
#[inline]
pub fn avx2_available() -> bool {
    cfg!(all(target_arch = "x86_64", target_feature = "sse2"))
        && embodios_quant::active_kernel_set() == "avx2+fma"
}

/// The exact integer dot products of each 32-element group of unsigned levels `w`
/// (each at most 127) with the two's-complement bytes `a`.
#[inline]
pub fn group_dots(w: &[u8; 256], a: &[u8; 256], avx2: bool) -> [i32; 8] {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if avx2 {
        // SAFETY: `avx2` is only true when `avx2_available` found AVX2 on this CPU.
        return unsafe { x86::group_dots(w, a) };
    }
    let _ = avx2;
    group_dots_scalar(w, a)
}

/// Scalar twin of [`group_dots`].
pub fn group_dots_scalar(w: &[u8; 256], a: &[u8; 256]) -> [i32; 8] {
    let mut out = [0i32; 8];
    for ((o, wg), ag) in out
        .iter_mut()
        .zip(w.chunks_exact(GROUP))
        .zip(a.chunks_exact(GROUP))
    {
        *o = wg
            .iter()
            .zip(ag)
            .map(|(&w, &a)| i32::from(w) * i32::from(a as i8))
            .sum();
    }
    out
}

/// [`crate::ops::dot_f16`] (same bits), with AVX2+F16C when `avx2` is set.
#[inline]
pub fn dot_f16(x: &[half::f16], y: &[half::f16], mode: crate::ops::DotOrder, avx2: bool) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if avx2 {
        // SAFETY: `avx2` is only true when `avx2_available` found AVX2, FMA and F16C.
        return unsafe {
            match mode {
                crate::ops::DotOrder::Single => x86::dot_f16_single(x, y),
                _ => x86::dot_f16_batch(x, y),
            }
        };
    }
    let _ = avx2;
    crate::ops::dot_f16(x, y, mode)
}

/// `g[i] = silu(g[i]) * u[i]` ([`crate::ops::silu`], same bits), eight at a time with
/// AVX2 when `avx2` is set.
pub fn silu_mul(g: &mut [f32], u: &[f32], avx2: bool) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if avx2 {
        // SAFETY: `avx2` is only true when `avx2_available` found AVX2, FMA and F16C.
        unsafe { x86::silu_mul(g, u) };
        return;
    }
    let _ = avx2;
    for (g, &u) in g.iter_mut().zip(u) {
        *g = crate::ops::silu(*g) * u;
    }
}

/// `x[i] = exp_ggml(x[i] - max)` ([`crate::ops::exp_ggml`], same bits), eight at a time
/// with AVX2 when `avx2` is set.
pub fn exp_sub(x: &mut [f32], max: f32, avx2: bool) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if avx2 {
        // SAFETY: `avx2` is only true when `avx2_available` found AVX2, FMA and F16C.
        unsafe { x86::exp_sub(x, max) };
        return;
    }
    let _ = avx2;
    for v in x.iter_mut() {
        *v = crate::ops::exp_ggml(*v - max);
    }
}

/// Asks the CPU to bring the cache line holding `x` close (into L1) ahead of a use;
/// only a hint (nothing happens where there is no prefetch instruction), it never
/// changes a result.
#[inline(always)]
pub fn prefetch<T>(x: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch never faults or writes; the pointer comes from a reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast::<i8>()) };
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    let _ = x;
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod x86 {
    use core::arch::x86_64::*;
    use half::f16;

    /// `a * b + c` per lane, rounded once from f64 as `ops::fma` does (the product of
    /// two f32 is exact in f64, so this is the f64 sum rounded to f32).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn fma_f64(a: __m256, b: __m256, c: __m256) -> __m256 {
        let half = |v: __m256, hi: bool| {
            if hi {
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v))
            } else {
                _mm256_cvtps_pd(_mm256_castps256_ps128(v))
            }
        };
        let lo = _mm256_add_pd(
            _mm256_mul_pd(half(a, false), half(b, false)),
            half(c, false),
        );
        let hi = _mm256_add_pd(_mm256_mul_pd(half(a, true), half(b, true)), half(c, true));
        _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo))
    }

    /// 2^k per lane for integers `k` in -126..=127 (exact).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn pow2(k: __m256i) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            k,
            _mm256_set1_epi32(127),
        )))
    }

    /// `ops::exp_ggml` of eight values, step for step: the same constants, the same
    /// f64-rounded fused steps, and `scalbnf` as two multiplies of which only the last
    /// can round (the first scales by 2^k1, k1 = clamp(k, -100, 127), exactly), so
    /// subnormal and overflowing results round once, as `scalbnf` does.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn exp8(x: __m256) -> __m256 {
        use crate::ops::exp_consts as e;
        let c = |b: u32| _mm256_set1_ps(f32::from_bits(b));
        let r = c(e::SHIFT);
        let z = fma_f64(x, c(e::LOG2E), r);
        let n = _mm256_sub_ps(z, r);
        let neg_n = _mm256_xor_ps(n, _mm256_set1_ps(-0.0));
        let b = fma_f64(neg_n, c(e::LN2_LO), fma_f64(neg_n, c(e::LN2_HI), x));
        let u = _mm256_mul_ps(b, b);
        let j = fma_f64(
            fma_f64(
                fma_f64(c(e::C5), b, c(e::C4)),
                u,
                fma_f64(c(e::C3), b, c(e::C2)),
            ),
            u,
            fma_f64(c(e::C1), b, _mm256_set1_ps(1.0)),
        );
        // `n as i32`: n is integral here (or NaN, where j is NaN too and any scale
        // keeps it NaN).
        let k = _mm256_cvttps_epi32(n);
        let k1 = _mm256_min_epi32(
            _mm256_max_epi32(k, _mm256_set1_epi32(-100)),
            _mm256_set1_epi32(127),
        );
        let k2 = _mm256_sub_epi32(k, k1);
        // For |n| <= 192, k2 is in -92..=65: both powers are normal numbers.
        let k2 = _mm256_min_epi32(
            _mm256_max_epi32(k2, _mm256_set1_epi32(-126)),
            _mm256_set1_epi32(127),
        );
        let scaled = _mm256_mul_ps(_mm256_mul_ps(j, pow2(k1)), pow2(k2));
        // Out of range: 0 or infinity, as the scalar version.
        let abs_n = _mm256_and_ps(n, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF)));
        let out = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
        let nonpos = _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps());
        let sub = _mm256_blendv_ps(_mm256_set1_ps(f32::INFINITY), _mm256_setzero_ps(), nonpos);
        _mm256_blendv_ps(scaled, sub, out)
    }

    /// Eight f32s from `x[at..at + 8]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn load_ps(x: &[f32; 8]) -> __m256 {
        // SAFETY: `x` is 8 readable f32s; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_ps(x.as_ptr()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn store_ps(out: &mut [f32; 8], v: __m256) {
        // SAFETY: `out` is 8 writable f32s; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) }
    }

    /// AVX2 [`super::silu_mul`]: `g / (1 + exp(-g)) * u` with the same operations.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
        let n = g.len().min(u.len()) & !7;
        let (gv, gt) = g.split_at_mut(n);
        let (uv, ut) = u.split_at(n);
        for (g8, u8) in gv.chunks_exact_mut(8).zip(uv.chunks_exact(8)) {
            let (Ok(g8), Ok(u8)) = (<&mut [f32; 8]>::try_from(g8), <&[f32; 8]>::try_from(u8))
            else {
                continue;
            };
            let x = load_ps(g8);
            let e = exp8(_mm256_xor_ps(x, _mm256_set1_ps(-0.0)));
            let s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            store_ps(g8, _mm256_mul_ps(s, load_ps(u8)));
        }
        for (g, &u) in gt.iter_mut().zip(ut) {
            *g = crate::ops::silu(*g) * u;
        }
    }

    /// AVX2 [`super::exp_sub`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn exp_sub(x: &mut [f32], max: f32) {
        let n = x.len() & !7;
        let (xv, xt) = x.split_at_mut(n);
        let m = _mm256_set1_ps(max);
        for x8 in xv.chunks_exact_mut(8) {
            let Ok(x8) = <&mut [f32; 8]>::try_from(x8) else {
                continue;
            };
            let v = exp8(_mm256_sub_ps(load_ps(x8), m));
            store_ps(x8, v);
        }
        for v in xt.iter_mut() {
            *v = crate::ops::exp_ggml(*v - max);
        }
    }

    /// Eight f16 values from `p[at..at + 8]` as f32 (exact).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn load8(p: &[u16], at: usize) -> __m256 {
        let Some(s) = p.get(at..at + 8) else {
            return _mm256_setzero_ps();
        };
        // SAFETY: `s` is 8 readable u16s (16 bytes); `loadu` has no alignment requirement.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(s.as_ptr().cast()) })
    }

    /// The bits of an f16 slice (`f16` is a transparent wrapper of `u16`).
    #[inline]
    fn bits(x: &[f16]) -> &[u16] {
        // SAFETY: `half::f16` is `#[repr(transparent)]` over `u16`, so the slices have
        // the same layout, length and lifetime.
        unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<u16>(), x.len()) }
    }

    /// ggml's 16-lane fold of `lo` (lanes 0..8) and `hi` (8..16), as `ops::reduce16`:
    /// the halves, then the 4-lane halves, then {0,2} and {1,3}, then the pair.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn reduce16(lo: __m256, hi: __m256) -> f32 {
        let a = _mm256_add_ps(hi, lo);
        let b = _mm_add_ps(_mm256_extractf128_ps::<1>(a), _mm256_castps256_ps128(a));
        let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)))
    }

    /// The single-token order of `ops::dot_f16`: four 16-lane accumulators over steps of
    /// 64 elements (ymm `k` holding elements `8k..8k+8` of a step), a partial last step
    /// padded with zeros (adding an exact +0 product changes no lane: lanes start at +0
    /// and never become -0), folded `(a0 + a2) + (a1 + a3)` and then by [`reduce16`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_single(x: &[f16], y: &[f16]) -> f32 {
        let n = x.len().min(y.len());
        let (x, y) = (&bits(x)[..n], &bits(y)[..n]);
        let mut acc = [_mm256_setzero_ps(); 8];
        let full = n & !63;
        let mut base = 0;
        while base < full {
            for (k, a) in acc.iter_mut().enumerate() {
                let at = base + 8 * k;
                *a = _mm256_fmadd_ps(load8(x, at), load8(y, at), *a);
            }
            base += 64;
        }
        if full < n {
            let (mut px, mut py) = ([0u16; 64], [0u16; 64]);
            px[..n - full].copy_from_slice(&x[full..]);
            py[..n - full].copy_from_slice(&y[full..]);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(load8(&px, 8 * k), load8(&py, 8 * k), *a);
            }
        }
        // Accumulator j is (ymm 2j, ymm 2j+1).
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        reduce16(lo, hi)
    }

    /// The batch order of `ops::dot_f16`: element `i` into lane `i % 16`, then
    /// [`reduce16`]; the partial last group is padded with zeros.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_batch(x: &[f16], y: &[f16]) -> f32 {
        let n = x.len().min(y.len());
        let (x, y) = (&bits(x)[..n], &bits(y)[..n]);
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let full = n & !15;
        let mut base = 0;
        while base < full {
            lo = _mm256_fmadd_ps(load8(x, base), load8(y, base), lo);
            hi = _mm256_fmadd_ps(load8(x, base + 8), load8(y, base + 8), hi);
            base += 16;
        }
        if full < n {
            let (mut px, mut py) = ([0u16; 16], [0u16; 16]);
            px[..n - full].copy_from_slice(&x[full..]);
            py[..n - full].copy_from_slice(&y[full..]);
            lo = _mm256_fmadd_ps(load8(&px, 0), load8(&py, 0), lo);
            hi = _mm256_fmadd_ps(load8(&px, 8), load8(&py, 8), hi);
        }
        reduce16(lo, hi)
    }

    /// AVX2 [`super::group_dots`]: unsigned-by-signed byte products summed in pairs to
    /// 16 bits (at most 2 * 127 * 128, no saturation), then to 32 bits, then across.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn group_dots(w: &[u8; 256], a: &[u8; 256]) -> [i32; 8] {
        let mut out = [0i32; 8];
        let ones = _mm256_set1_epi16(1);
        for (g, o) in out.iter_mut().enumerate() {
            // SAFETY: both arrays hold 256 bytes, so bytes 32g..32g+32 are in bounds for
            // g < 8; unaligned loads have no alignment requirement.
            let (wv, av) = unsafe {
                (
                    _mm256_loadu_si256(w.as_ptr().add(32 * g).cast()),
                    _mm256_loadu_si256(a.as_ptr().add(32 * g).cast()),
                )
            };
            let p16 = _mm256_maddubs_epi16(wv, av);
            let p32 = _mm256_madd_epi16(p16, ones);
            let lo = _mm256_castsi256_si128(p32);
            let hi = _mm256_extracti128_si256::<1>(p32);
            let s4 = _mm_add_epi32(lo, hi);
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b01>(s2));
            *o = _mm_cvtsi128_si32(s1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Rng;

    #[test]
    fn f16_dots_match_the_scalar_twin_bit_for_bit() {
        use crate::ops::DotOrder;
        use half::f16;
        let mut rng = Rng::new(21);
        let avx2 = avx2_available();
        for trial in 0..400 {
            let n = [1usize, 7, 15, 16, 17, 63, 64, 65, 100, 128, 200, 256, 513][trial % 13];
            let m = if trial % 5 == 0 { n + 3 } else { n };
            // Scores-like (wide range, both signs) and probability-like values, plus
            // subnormals and zeros now and then.
            let mut val = |i: usize| -> f16 {
                let r = rng.next_f64();
                match (trial + i) % 7 {
                    0 => f16::from_f32(0.0),
                    1 => f16::from_bits((rng.next_u64() % 1024) as u16),
                    _ => f16::from_f64((r * 2.0 - 1.0) * 40.0),
                }
            };
            let x: alloc::vec::Vec<f16> = (0..n).map(&mut val).collect();
            let y: alloc::vec::Vec<f16> = (0..m).map(&mut val).collect();
            for mode in [DotOrder::Single, DotOrder::Batch, DotOrder::Tiled] {
                let want = crate::ops::dot_f16(&x, &y, mode);
                let got = dot_f16(&x, &y, mode, avx2);
                assert_eq!(got.to_bits(), want.to_bits(), "n={n} {mode:?}");
                assert_eq!(dot_f16(&x, &y, mode, false).to_bits(), want.to_bits());
            }
        }
    }

    #[test]
    fn silu_and_exp_match_the_scalar_twins_bit_for_bit() {
        let mut rng = Rng::new(31);
        let avx2 = avx2_available();
        let mut xs: alloc::vec::Vec<f32> = (0..20_000)
            .map(|i| {
                let r = rng.next_f64() as f32 * 2.0 - 1.0;
                match i % 4 {
                    0 => r * 120.0,
                    1 => r * 8.0,
                    2 => r * 0.01,
                    _ => f32::from_bits(rng.next_u64() as u32),
                }
            })
            .collect();
        xs.extend([0.0, -0.0, 88.7, -87.3, -103.9, -150.0, 133.0, 200.0, -200.0]);
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40, -1e-40]);
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        let us: alloc::vec::Vec<f32> = xs.iter().map(|_| rng.next_f64() as f32 * 3.0).collect();
        let mut got = xs.clone();
        silu_mul(&mut got, &us, avx2);
        for ((&x, &u), &g) in xs.iter().zip(&us).zip(&got) {
            let want = crate::ops::silu(x) * u;
            assert!(same(g, want), "silu({x:e}) * {u}: {g:e} vs {want:e}");
        }
        for max in [0.0f32, 3.5, -20.0] {
            let mut got = xs.clone();
            exp_sub(&mut got, max, avx2);
            for (&x, &g) in xs.iter().zip(&got) {
                let want = crate::ops::exp_ggml(x - max);
                assert!(same(g, want), "exp({x:e} - {max}): {g:e} vs {want:e}");
            }
        }
    }

    #[test]
    fn group_dots_match_the_scalar_twin() {
        let mut rng = Rng::new(3);
        let avx2 = avx2_available();
        for trial in 0..300 {
            let mut w = [0u8; 256];
            let mut a = [0u8; 256];
            // Levels up to 15, 31 and 127; activations over the whole byte range.
            let top = [16u64, 32, 128][trial % 3];
            for (w, a) in w.iter_mut().zip(a.iter_mut()) {
                *w = (rng.next_u64() % top) as u8;
                *a = rng.next_u64() as u8;
            }
            if trial == 0 {
                w = [127; 256];
                a = [0x80; 256];
            }
            let want = group_dots_scalar(&w, &a);
            assert_eq!(group_dots(&w, &a, avx2), want, "trial {trial}");
            assert_eq!(group_dots(&w, &a, false), want);
        }
    }
}
