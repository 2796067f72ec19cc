//! SIMD versions of the engine's integer inner loops, each with a scalar twin that
//! defines the result. Only integer sums live here: they are exact in any order, so the
//! vector and scalar versions agree bit for bit by construction and the float rounding
//! (which must follow llama.cpp's order) stays in the callers.
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

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod x86 {
    use core::arch::x86_64::*;

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
