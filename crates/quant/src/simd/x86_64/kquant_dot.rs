//! AVX2 dot products of the K-quant super-block formats with Q8_K activations.
//!
//! Per super-block the integer work happens in eight i32 lanes (lane `k` holding bytes
//! `4k..4k+4` of every 32-byte chunk), weighted by the integer sub-block scales with
//! `madd`, then scaled once by `d_w * d_a` with an `fma` into an f32 accumulator, as in
//! llama.cpp's AVX2 kernels. `maddubs` takes unsigned levels (< 64) times signed bytes, so
//! a pair sum is at most 2·63·128 < 2^15: nothing saturates. Level offsets (Q3_K's `-4`,
//! Q6_K's `-32`) and the min terms are subtracted separately; the Q6_K offset and the
//! min terms use the activation block's group sums (`bsums`), as the scalar kernels'
//! min terms do, so they assume a well-formed Q8_K row (what `quantize_activations`
//! writes).

use core::arch::x86_64::*;

use super::{
    entry, f16_pair, fma_ss, hsum_epi32_128, hsum_ps, lane0, lane1, load128, load256, pair_scales,
    prefetch_ahead,
};
use crate::bytes::{blocks, sub};
use crate::kquants::{
    self as scalar, Q2_K_BYTES, Q3_K_BYTES, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_K_BYTES,
};

entry!(dot_q2_k_q8_k, q2_k_q8_k, scalar::dot_q2_k_q8_k);
entry!(dot_q3_k_q8_k, q3_k_q8_k, scalar::dot_q3_k_q8_k);
entry!(dot_q4_k_q8_k, q4_k_q8_k, scalar::dot_q4_k_q8_k);
entry!(dot_q5_k_q8_k, q5_k_q8_k, scalar::dot_q5_k_q8_k);
entry!(dot_q6_k_q8_k, q6_k_q8_k, scalar::dot_q6_k_q8_k);

/// Q8_K field offsets.
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;

#[inline(always)]
fn q8k_d(y: &[u8; Q8_K_BYTES]) -> f32 {
    f32::from_le_bytes(*sub(y, 0))
}

/// The `c`-th 32-byte chunk of a Q8_K block's values.
#[inline(always)]
fn q8k_chunk(y: &[u8; Q8_K_BYTES], c: usize) -> &[u8; 32] {
    sub(y, Q8K_QS + 32 * c)
}

/// `Σ u·y` per pair of bytes, as i16 (u < 64).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pair_dot(u: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(u, y)
}

/// The 2-bit field `shift..shift+2` of every byte.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn two_bits(v: __m256i, shift: i32) -> __m256i {
    let s = _mm_cvtsi32_si128(shift);
    _mm256_and_si256(_mm256_srl_epi16(v, s), _mm256_set1_epi8(3))
}

/// 0xFF in bytes whose bit `bit` is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bit_set(v: __m256i, bit: usize) -> __m256i {
    let m = _mm256_set1_epi8((1u8 << (bit & 7)) as i8);
    _mm256_cmpeq_epi8(_mm256_and_si256(v, m), m)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q2_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let low4 = _mm_set1_epi8(0x0F);
    for (x, y) in blocks::<Q2_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), Q2_K_BYTES);
        let yd = q8k_d(y);
        let dm = f16_pair(sub(x, 80));
        let d = yd * lane0(dm);
        let dmin = -yd * lane1(dm);
        let raw = load128(sub(x, 0));
        let scales = _mm_and_si128(raw, low4);
        let mins = _mm_and_si128(_mm_srli_epi16::<4>(raw), low4);
        // Σ m_j · bsum_j in eight lanes (two groups each), the lanes llama.cpp uses.
        let bsums = load256(sub(y, Q8K_BSUMS));
        let prod = _mm256_madd_epi16(_mm256_cvtepi8_epi16(mins), bsums);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), acc);

        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let q2 = load256(sub(x, 16 + 32 * half));
            for k in 0..4 {
                let c = 4 * half + k;
                let u = two_bits(q2, 2 * k as i32);
                let p = pair_dot(u, load256(q8k_chunk(y, c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pair_scales(scales, c), p));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// Q3_K's sixteen 6-bit scales minus 32, as signed bytes (the layout of
/// [`crate::kquants::unpack_q3k_scales`], unpacked four at a time): scale `j` has its low
/// nibble in byte `j % 8` (low nibble for `j < 8`, high for the rest) and its top two bits
/// at bits `2 (j / 4)` of byte `8 + j % 4`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q3k_scales(s: &[u8; 12]) -> __m128i {
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    let a0 = u32::from_le_bytes(*sub(s, 0));
    let a1 = u32::from_le_bytes(*sub(s, 4));
    let a2 = u32::from_le_bytes(*sub(s, 8));
    let word = |low: u32, shift: u32| (low & LOW4) | (((a2 >> shift) & LOW2) << 4);
    let v = _mm_set_epi32(
        word(a1 >> 4, 6) as i32,
        word(a0 >> 4, 4) as i32,
        word(a1, 2) as i32,
        word(a0, 0) as i32,
    );
    _mm_sub_epi8(v, _mm_set1_epi8(32))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q3_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let four = _mm256_set1_epi8(4);
    for (x, y) in blocks::<Q3_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), Q3_K_BYTES);
        // `d` is the last field: lane 1 of the pair ending the block.
        let d = q8k_d(y) * lane1(f16_pair(sub(x, 106)));
        let scales = q3k_scales(sub(x, 96));
        let hmask = load256(sub(x, 0));
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let q3 = load256(sub(x, 32 + 32 * half));
            for k in 0..4 {
                let c = 4 * half + k;
                let low = two_bits(q3, 2 * k as i32);
                // Level = low - 4 where the hmask bit is clear: subtract 4·y there.
                let minus4 = _mm256_andnot_si256(bit_set(hmask, c), four);
                let yv = load256(q8k_chunk(y, c));
                // |pair sums| <= 2·3·128 and 2·4·128: the difference fits in i16.
                let p = _mm256_sub_epi16(pair_dot(low, yv), pair_dot(minus4, yv));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pair_scales(scales, c), p));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// Q4_K/Q5_K's eight 6-bit scales and eight 6-bit mins as i16 lanes (the layout of
/// [`crate::kquants::unpack_k4_scales`], unpacked four at a time): pairs 0..4 are the low
/// six bits of bytes 0..4 (scales) and 4..8 (mins); pairs 4..8 have their low nibble in
/// bytes 8..12 (scales low, mins high nibble) and their top two bits in the top bits of
/// bytes 0..4 (scales) and 4..8 (mins).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn k4_scales_mins(s: &[u8; 12]) -> (__m128i, __m128i) {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    let a0 = u32::from_le_bytes(*sub(s, 0));
    let a1 = u32::from_le_bytes(*sub(s, 4));
    let a2 = u32::from_le_bytes(*sub(s, 8));
    let sc_lo = a0 & LOW6;
    let mn_lo = a1 & LOW6;
    let sc_hi = (a2 & LOW4) | (((a0 >> 6) & LOW2) << 4);
    let mn_hi = ((a2 >> 4) & LOW4) | (((a1 >> 6) & LOW2) << 4);
    let bytes = _mm_set_epi32(mn_hi as i32, mn_lo as i32, sc_hi as i32, sc_lo as i32);
    let scales = _mm_cvtepu8_epi16(bytes);
    let mins = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(bytes, bytes));
    (scales, mins)
}

/// The Q4_K/Q5_K min term in four lanes: lane `j` = `m_2j (b_4j + b_4j+1) + m_2j+1
/// (b_4j+2 + b_4j+3)` over the activation's sixteen group sums `b`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn k4_min_lanes(mins: __m128i, y: &[u8; Q8_K_BYTES]) -> __m128i {
    let bsums = load256(sub(y, Q8K_BSUMS));
    let pairs = _mm_hadd_epi16(
        _mm256_castsi256_si128(bsums),
        _mm256_extracti128_si256::<1>(bsums),
    );
    _mm_madd_epi16(mins, pairs)
}

/// Lane `i` of eight i16 lanes (held in both 128-bit halves of `v`), in every lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn broadcast_i16(v: __m256i, i: usize) -> __m256i {
    let i = (i & 7) as i16;
    _mm256_shuffle_epi8(v, _mm256_set1_epi16(((2 * i + 1) << 8) | (2 * i)))
}

/// The scale-weighted integer sums of a Q4_K/Q5_K super-block: `levels(q)` gives the
/// unsigned levels (< 32) of 64-element quarter `q` as (first 32, second 32).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn k4_sumi(
    scales: __m128i,
    y: &[u8; Q8_K_BYTES],
    mut levels: impl FnMut(usize) -> (__m256i, __m256i),
) -> __m256i {
    let scales = _mm256_set_m128i(scales, scales);
    let mut sumi = _mm256_setzero_si256();
    for q in 0..4 {
        let (lo, hi) = levels(q);
        let pl = pair_dot(lo, load256(q8k_chunk(y, 2 * q)));
        let ph = pair_dot(hi, load256(q8k_chunk(y, 2 * q + 1)));
        let pl = _mm256_madd_epi16(broadcast_i16(scales, 2 * q), pl);
        let ph = _mm256_madd_epi16(broadcast_i16(scales, 2 * q + 1), ph);
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
    }
    sumi
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    let low4 = _mm256_set1_epi8(0x0F);
    for (x, y) in blocks::<Q4_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), Q4_K_BYTES);
        let yd = q8k_d(y);
        let dm = f16_pair(sub(x, 0));
        let d = yd * lane0(dm);
        let dmin = -yd * lane1(dm);
        let (sc, mn) = k4_scales_mins(sub(x, 4));
        let prod = k4_min_lanes(mn, y);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
        let sumi = k4_sumi(sc, y, |q| {
            let bits = load256(sub(x, 16 + 32 * (q & 3)));
            let lo = _mm256_and_si256(bits, low4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
            (lo, hi)
        });
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    // Four min lanes summed as (m0 + m2) + (m1 + m3).
    let m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
    hsum_ps(acc) + _mm_cvtss_f32(m)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    let low4 = _mm256_set1_epi8(0x0F);
    let sixteen = _mm256_set1_epi8(0x10);
    for (x, y) in blocks::<Q5_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), Q5_K_BYTES);
        let yd = q8k_d(y);
        let dm = f16_pair(sub(x, 0));
        let d = yd * lane0(dm);
        let dmin = -yd * lane1(dm);
        let (sc, mn) = k4_scales_mins(sub(x, 4));
        // Here llama.cpp sums the min lanes as an integer and accumulates in f32 per
        // super-block; its C compiler contracts that multiply-add into one fused
        // operation, which is what gives the same bits.
        let m = hsum_epi32_128(k4_min_lanes(mn, y)) as f32;
        summs = fma_ss(dmin, m, summs);
        let qh = load256(sub(x, 16));
        let sumi = k4_sumi(sc, y, |q| {
            let bits = load256(sub(x, 48 + 32 * (q & 3)));
            let lo = _mm256_and_si256(bits, low4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
            let lo = _mm256_or_si256(lo, _mm256_and_si256(bit_set(qh, 2 * q), sixteen));
            let hi = _mm256_or_si256(hi, _mm256_and_si256(bit_set(qh, 2 * q + 1), sixteen));
            (lo, hi)
        });
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let low4 = _mm256_set1_epi8(0x0F);
    for (x, y) in blocks::<Q6_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), Q6_K_BYTES);
        let d = q8k_d(y) * lane1(f16_pair(sub(x, 206)));
        let scales = load128(sub(x, 192));
        // The -32 level offset: 32 · Σ sc_j · bsum_j, in the lanes llama.cpp uses
        // (lane k holds groups 2k and 2k+1).
        let bsums = load256(sub(y, Q8K_BSUMS));
        let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, _mm256_cvtepi8_epi16(scales)));
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let ql0 = load256(sub(x, 64 * half));
            let ql1 = load256(sub(x, 64 * half + 32));
            let qh = load256(sub(x, 128 + 32 * half));
            // The high two bits of group k are bits 2k..2k+2 of `qh`, moved to bits 4..6
            // (masked first, so no bits cross into the neighbouring byte).
            let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)));
            let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)));
            let h2 = _mm256_and_si256(qh, _mm256_set1_epi8(0x30));
            let h3 = _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8)));
            let u = [
                _mm256_or_si256(_mm256_and_si256(ql0, low4), h0),
                _mm256_or_si256(_mm256_and_si256(ql1, low4), h1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4), h2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4), h3),
            ];
            for (k, u) in u.into_iter().enumerate() {
                let c = 4 * half + k;
                let p = pair_dot(u, load256(q8k_chunk(y, c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pair_scales(scales, c), p));
            }
        }
        let sumi = _mm256_sub_epi32(sumi, offset);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

// ---------------------------------------------------------------------------------------
// The order of ggml's tiled K-quant batch kernel (llama.cpp uses it for batches of eight
// or more tokens): each super-block is first folded to exact integers, then
//   r = s1 · d  (one rounding),  r = fma(-dmin, s2, r),  acc = fma(r, d8, acc).
// The fused steps are computed in f64 and rounded once to f32, exactly as the engine's
// scalar twins (`embodios_engine::lanes::dot_q4_k_tiled`, `dot_q6_k_tiled`) compute
// them, so these give the same bits.

/// `a · b + c` rounded once from f64 (the product of two f32 is exact in f64).
#[inline(always)]
fn fma_f64(a: f32, b: f32, c: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(c)) as f32
}

/// One super-block's float steps of the tiled order (see above).
#[inline(always)]
fn tiled_step(acc: f32, s1: i32, d: f32, min: Option<(f32, i32)>, d8: f32) -> f32 {
    let mut r = s1 as f32 * d;
    if let Some((dmin, s2)) = min {
        r = fma_f64(-dmin, s2 as f32, r);
    }
    fma_f64(r, d8, acc)
}

/// Sum of eight i32 lanes (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_epi32_256(v: __m256i) -> i32 {
    hsum_epi32_128(_mm_add_epi32(
        _mm256_castsi256_si128(v),
        _mm256_extracti128_si256::<1>(v),
    ))
}

/// The eight Q4_K mins as sixteen i16 `[m0, m0, m1, m1, ...]`: `madd` with a Q8_K
/// block's sixteen group sums gives lane `s` = `m_s · (bsum_2s + bsum_2s+1)` (exact,
/// below 2^31).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn min_pairs(mn: [u8; 8]) -> __m256i {
    let m32 = _mm256_cvtepu16_epi32(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(mn))));
    _mm256_or_si256(m32, _mm256_slli_epi32::<16>(m32))
}

/// The lane sums of `a` and of `b` (exact integer sums, so the same values as two
/// separate horizontal sums), with one shared reduction.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_pair_epi32(a: __m256i, b: __m256i) -> (i32, i32) {
    // Per 128-bit half: [a0+a1, a2+a3, b0+b1, b2+b3].
    let h = _mm256_hadd_epi32(a, b);
    let t = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let t = _mm_hadd_epi32(t, t);
    (_mm_cvtsi128_si32(t), _mm_extract_epi32::<1>(t))
}

/// Q4_K weights against `N` Q8_K activation rows in the tiled order: the block's levels
/// and scales are unpacked once, then for each row `s1 = Σ_s sc_s · dot_s` (i16 pair
/// products `maddubs` of levels < 16 and bytes, weighted with `madd` by scales < 64:
/// exact) and `s2 = Σ_s m_s · (bsum_2s + bsum_2s+1)`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_tiled_n<const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
    let mut acc = [0.0f32; N];
    let low4 = _mm256_set1_epi8(0x0F);
    let mut ys = a.map(blocks::<Q8_K_BYTES>);
    for x in blocks::<Q4_K_BYTES>(w) {
        prefetch_ahead(x.as_ptr(), Q4_K_BYTES);
        let dm = f16_pair(sub(x, 0));
        let (d, dmin) = (lane0(dm), lane1(dm));
        let (sc, mn) = scalar::unpack_k4_scales(sub(x, 4));
        let mut lv = [_mm256_setzero_si256(); 8];
        for q in 0..4 {
            let bits = load256(sub(x, 16 + 32 * q));
            lv[2 * q] = _mm256_and_si256(bits, low4);
            lv[2 * q + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
        }
        let scv = sc.map(|s| _mm256_set1_epi16(i16::from(s)));
        let mnv = min_pairs(mn);
        for (it, acc) in ys.iter_mut().zip(acc.iter_mut()) {
            let Some(y) = it.next() else {
                *acc = f32::NAN;
                continue;
            };
            let mut sumi = _mm256_setzero_si256();
            for c in 0..8 {
                let p = pair_dot(lv[c], load256(q8k_chunk(y, c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv[c]));
            }
            let s2v = _mm256_madd_epi16(load256(sub(y, Q8K_BSUMS)), mnv);
            let (s1, s2) = hsum_pair_epi32(sumi, s2v);
            *acc = tiled_step(*acc, s1, d, Some((dmin, s2)), q8k_d(y));
        }
    }
    acc
}

/// Two Q4_K weight rows against four Q8_K activation rows in the tiled order: a register
/// tile that loads each activation chunk once for both rows (halving the activation
/// traffic of one-row kernels, which for wide prompts comes from L2). Each (row, token)
/// pair goes through exactly the operations of [`q4_k_tiled_n`] (the same exact
/// integers `s1`, `s2`, the same float steps in the same order), so every result has
/// its bits. Rows or activations of unequal block counts take the one-row kernel.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_tiled_2x4(w: [&[u8]; 2], a: [&[u8]; 4]) -> [[f32; 4]; 2] {
    let nb = w[0].len() / Q4_K_BYTES;
    if w.iter().any(|r| r.len() / Q4_K_BYTES != nb) || a.iter().any(|r| r.len() / Q8_K_BYTES != nb)
    {
        return w.map(|r| q4_k_tiled_n::<4>(r, a));
    }
    // The four tokens' accumulators of each row, as lanes.
    let mut acc = [_mm_setzero_ps(); 2];
    let low4 = _mm256_set1_epi8(0x0F);
    for b in 0..nb {
        let mut d = [0.0f32; 2];
        let mut dmin = [0.0f32; 2];
        let mut lv = [[_mm256_setzero_si256(); 8]; 2];
        let mut scv = [[_mm256_setzero_si256(); 8]; 2];
        let mut mnv = [_mm256_setzero_si256(); 2];
        for r in 0..2 {
            let x: &[u8; Q4_K_BYTES] = sub(w[r], b * Q4_K_BYTES);
            prefetch_ahead(x.as_ptr(), Q4_K_BYTES);
            let dm = f16_pair(sub(x, 0));
            (d[r], dmin[r]) = (lane0(dm), lane1(dm));
            let (sc, mn) = scalar::unpack_k4_scales(sub(x, 4));
            for q in 0..4 {
                let bits = load256(sub(x, 16 + 32 * q));
                lv[r][2 * q] = _mm256_and_si256(bits, low4);
                lv[r][2 * q + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
            }
            scv[r] = sc.map(|s| _mm256_set1_epi16(i16::from(s)));
            mnv[r] = min_pairs(mn);
        }
        let mut s1 = [[_mm256_setzero_si256(); 4]; 2];
        let mut s2 = [[_mm256_setzero_si256(); 4]; 2];
        let mut d8 = [0.0f32; 4];
        for t in 0..4 {
            let y: &[u8; Q8_K_BYTES] = sub(a[t], b * Q8_K_BYTES);
            d8[t] = q8k_d(y);
            for c in 0..8 {
                let yv = load256(q8k_chunk(y, c));
                for r in 0..2 {
                    let p = pair_dot(lv[r][c], yv);
                    s1[r][t] = _mm256_add_epi32(s1[r][t], _mm256_madd_epi16(p, scv[r][c]));
                }
            }
            let bsums = load256(sub(y, Q8K_BSUMS));
            for r in 0..2 {
                s2[r][t] = _mm256_madd_epi16(bsums, mnv[r]);
            }
        }
        // The float steps of `tiled_step` for the four tokens at once, lane by lane the
        // same operations: `s1 as f32 * d` (one f32 rounding), then the two f64 steps
        // (products of two f32 are exact in f64, so each step rounds once, to f32).
        let d8 = _mm256_cvtps_pd(_mm_setr_ps(d8[0], d8[1], d8[2], d8[3]));
        for r in 0..2 {
            let s1 = _mm_cvtepi32_ps(hsum4_epi32(s1[r]));
            let s2 = _mm256_cvtps_pd(_mm_cvtepi32_ps(hsum4_epi32(s2[r])));
            let x = _mm_mul_ps(s1, _mm_set1_ps(d[r]));
            let m = _mm256_mul_pd(_mm256_set1_pd(f64::from(-dmin[r])), s2);
            let x = _mm256_cvtpd_ps(_mm256_add_pd(m, _mm256_cvtps_pd(x)));
            let p = _mm256_mul_pd(_mm256_cvtps_pd(x), d8);
            acc[r] = _mm256_cvtpd_ps(_mm256_add_pd(p, _mm256_cvtps_pd(acc[r])));
        }
    }
    acc.map(|v| {
        [
            _mm_cvtss_f32(v),
            _mm_cvtss_f32(_mm_shuffle_ps::<1>(v, v)),
            _mm_cvtss_f32(_mm_shuffle_ps::<2>(v, v)),
            _mm_cvtss_f32(_mm_shuffle_ps::<3>(v, v)),
        ]
    })
}

/// The lane sums of four vectors as the four lanes of one (exact integer sums).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum4_epi32(v: [__m256i; 4]) -> __m128i {
    // Per 128-bit half, after the two rounds: [Σv0, Σv1, Σv2, Σv3] of that half.
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// Safe entry of [`q4_k_tiled_2x4`] (NaN without AVX2, like the other tiled entries:
/// it is only handed out when the SIMD set is active).
pub(crate) fn tile_q4_k_tiled(w: [&[u8]; 2], a: [&[u8]; 4]) -> [[f32; 4]; 2] {
    if !super::available() {
        return [[f32::NAN; 4]; 2];
    }
    // SAFETY: `available()` confirmed AVX2, FMA and F16C on this CPU and YMM state
    // support in the OS; the kernel reads only through checked slices.
    unsafe { q4_k_tiled_2x4(w, a) }
}

/// Q6_K weights against `N` Q8_K activation rows in the tiled order: `s1 = Σ_s sc_s ·
/// Σ (u - 32) · y` over the sixteen 16-element groups, from the unsigned levels `u`
/// (< 64) with the offset subtracted through the group sums, all exact in i32.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_tiled_n<const N: usize>(w: &[u8], a: [&[u8]; N]) -> [f32; N] {
    let mut acc = [0.0f32; N];
    let low4 = _mm256_set1_epi8(0x0F);
    let mut ys = a.map(blocks::<Q8_K_BYTES>);
    for x in blocks::<Q6_K_BYTES>(w) {
        prefetch_ahead(x.as_ptr(), Q6_K_BYTES);
        let d = lane1(f16_pair(sub(x, 206)));
        let scales = load128(sub(x, 192));
        let sc16 = _mm256_cvtepi8_epi16(scales);
        let mut u = [_mm256_setzero_si256(); 8];
        for half in 0..2 {
            let ql0 = load256(sub(x, 64 * half));
            let ql1 = load256(sub(x, 64 * half + 32));
            let qh = load256(sub(x, 128 + 32 * half));
            let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)));
            let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)));
            let h2 = _mm256_and_si256(qh, _mm256_set1_epi8(0x30));
            let h3 = _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8)));
            u[4 * half] = _mm256_or_si256(_mm256_and_si256(ql0, low4), h0);
            u[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(ql1, low4), h1);
            u[4 * half + 2] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4), h2);
            u[4 * half + 3] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4), h3);
        }
        let pscales: [__m256i; 8] = core::array::from_fn(|c| pair_scales(scales, c));
        for (it, acc) in ys.iter_mut().zip(acc.iter_mut()) {
            let Some(y) = it.next() else {
                *acc = f32::NAN;
                continue;
            };
            let bsums = load256(sub(y, Q8K_BSUMS));
            let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, sc16));
            let mut sumi = _mm256_setzero_si256();
            for c in 0..8 {
                let p = pair_dot(u[c], load256(q8k_chunk(y, c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pscales[c], p));
            }
            let s1 = hsum_epi32_256(_mm256_sub_epi32(sumi, offset));
            *acc = tiled_step(*acc, s1, d, None, q8k_d(y));
        }
    }
    acc
}

/// Safe entries of the tiled kernels (scalar fallbacks never run: the table is only
/// handed out when [`super::available`] holds, and these re-check it).
macro_rules! tiled_entry {
    ($one:ident, $four:ident, $kernel:ident) => {
        pub(crate) fn $one(w: &[u8], a: &[u8]) -> f32 {
            if !super::available() {
                return f32::NAN;
            }
            // SAFETY: `available()` confirmed AVX2, FMA and F16C on this CPU and YMM
            // state support in the OS; the kernel reads only through checked slices.
            let [r] = unsafe { $kernel::<1>(w, [a]) };
            r
        }

        pub(crate) fn $four(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            if !super::available() {
                return [f32::NAN; 4];
            }
            // SAFETY: as above.
            unsafe { $kernel::<4>(w, a) }
        }
    };
}

tiled_entry!(dot_q4_k_tiled, dot4_q4_k_tiled, q4_k_tiled_n);
tiled_entry!(dot_q6_k_tiled, dot4_q6_k_tiled, q6_k_tiled_n);
