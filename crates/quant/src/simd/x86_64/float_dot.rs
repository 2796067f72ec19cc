//! AVX2 dot products of F32, F16 and BF16 rows (weights and activations in the same
//! format), widened to f32 and accumulated with `fma` in four 8-lane accumulators.

use core::arch::x86_64::*;

use super::{entry, hsum_ps, load128};
use crate::bytes::blocks;
use crate::float as scalar;

entry!(dot_f32, f32_f32, scalar::dot_f32_bytes);
entry!(dot_f16, f16_f16, scalar::dot_f16_bytes);
entry!(dot_bf16, bf16_bf16, scalar::dot_bf16_bytes);

/// Loads eight little-endian f32s.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_ps(b: &[u8; 32]) -> __m256 {
    // SAFETY: `b` is exactly 32 readable bytes; `loadu` has no alignment requirement and
    // x86 is little-endian, so the lanes are the stored f32s.
    unsafe { _mm256_loadu_ps(b.as_ptr().cast()) }
}

/// Eight f16s widened exactly (F16C).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_f16(b: &[u8; 16]) -> __m256 {
    _mm256_cvtph_ps(load128(b))
}

/// Eight bf16s widened exactly (a bf16 is the top half of an f32).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_bf16(b: &[u8; 16]) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load128(b))))
}

/// Dot product of two rows of `E`-byte elements, `B = 8 * E` bytes per vector, loaded
/// with `load`; `conv` widens one element for the tail that fills no whole vector.
/// 32 elements per step in four independent accumulators hide the `fma` latency.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_rows<const E: usize, const B: usize>(
    w: &[u8],
    a: &[u8],
    load: impl Fn(&[u8; B]) -> __m256,
    conv: impl Fn([u8; E]) -> f32,
) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wc, ac) = (w.chunks_exact(4 * B), a.chunks_exact(4 * B));
    let (wr, ar) = (wc.remainder(), ac.remainder());
    for (wg, ag) in wc.zip(ac) {
        for ((acc, wv), av) in acc.iter_mut().zip(blocks::<B>(wg)).zip(blocks::<B>(ag)) {
            *acc = _mm256_fmadd_ps(load(wv), load(av), *acc);
        }
    }
    // Whole vectors of the remainder go to the first accumulator.
    let (wv, av) = (wr.chunks_exact(B), ar.chunks_exact(B));
    let (wt, at) = (wv.remainder(), av.remainder());
    for (wb, ab) in blocks::<B>(wr).zip(blocks::<B>(ar)) {
        acc[0] = _mm256_fmadd_ps(load(wb), load(ab), acc[0]);
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    let mut tail = 0.0f32;
    for (we, ae) in blocks::<E>(wt).zip(blocks::<E>(at)) {
        tail += conv(*we) * conv(*ae);
    }
    hsum_ps(sum) + tail
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f32_f32(w: &[u8], a: &[u8]) -> f32 {
    dot_rows::<4, 32>(w, a, |b| load_ps(b), f32::from_le_bytes)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_f16(w: &[u8], a: &[u8]) -> f32 {
    dot_rows::<2, 16>(w, a, |b| load_f16(b), |b| super::f16_to_f32(b))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_bf16(w: &[u8], a: &[u8]) -> f32 {
    dot_rows::<2, 16>(
        w,
        a,
        |b| load_bf16(b),
        |b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16),
    )
}
