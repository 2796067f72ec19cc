//! AVX2 activation quantizers for Q8_0, Q8_1 and Q8_K, bit-identical with the scalar
//! twins for every input, NaN and infinity included: `legacy.rs` (which models llama.cpp's
//! AVX2 `quantize_row_q8_0`/`q8_1`) and `kquants.rs` (ggml's reference Q8_K).

use core::arch::x86_64::*;

use crate::bytes::{blocks_mut, f32_to_f16_bytes, groups, sub_mut};
use crate::kquants::{self, Q8_K_BYTES, QK_K};
use crate::legacy::{self as scalar, Q8_0_BYTES, Q8_1_BYTES, QK};

/// Safe entry points with the scalar fallback, as for the dot products.
macro_rules! act_entry {
    ($name:ident, $kernel:ident, $scalar:path) => {
        pub(crate) fn $name(x: &[f32], dst: &mut [u8]) {
            if !super::available() {
                return $scalar(x, dst);
            }
            // SAFETY: `available()` confirmed AVX2, FMA and F16C on this CPU and YMM state
            // support in the OS, the features `$kernel` is compiled for. The kernel
            // itself only touches whole blocks through checked slices.
            unsafe { $kernel(x, dst) }
        }
    };
}

act_entry!(quantize_act_q8_0, q8_0, scalar::quantize_act_q8_0);
act_entry!(quantize_act_q8_1, q8_1, scalar::quantize_act_q8_1);
act_entry!(quantize_act_q8_k, q8_k, kquants::quantize_act_q8_k);

/// Loads eight f32s.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load8(x: &[f32; 8]) -> __m256 {
    // SAFETY: `x` is exactly 8 readable f32s; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// Quantizes one 32-element group into `qs`; returns `d` and the wrapping sum of the
/// rounded (pre-saturation) integers.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_block(x: &[f32; QK], qs: &mut [u8; 32]) -> (f32, i32) {
    let mut v = [_mm256_setzero_ps(); 4];
    for (v, x) in v.iter_mut().zip(groups::<8>(x)) {
        *v = load8(x);
    }
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    // `max_ps(a, b)` returns `b` when either is NaN: with the accumulator second, NaN
    // lanes are dropped, as in the scalar fold (which starts at 0 and keeps the larger).
    let mut m = _mm256_setzero_ps();
    for v in v {
        m = _mm256_max_ps(_mm256_and_ps(v, abs_mask), m);
    }
    // No NaN is left, so the reduction order does not matter.
    let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mul = _mm256_set1_ps(id);
    // Round half to even, then convert (NaN and out-of-range give i32::MIN).
    let q = v.map(|v| {
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(_mm256_mul_ps(v, mul)))
    });
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s4 = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256::<1>(sum),
    );
    let s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b10_11_00_01>(s4));
    let total = _mm_cvtsi128_si32(s4);
    // Saturating packs clamp to -128..=127; they interleave 128-bit halves, which the
    // final permute undoes.
    let p01 = _mm256_packs_epi32(q[0], q[1]);
    let p23 = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(p01, p23);
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `qs` is exactly 32 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), bytes) };
    (d, total)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK>(x).zip(blocks_mut::<Q8_0_BYTES>(dst)) {
        if let Some(qs) = sub_mut::<32>(b, 2) {
            let (d, _) = q8_block(x, qs);
            b[..2].copy_from_slice(&f32_to_f16_bytes(d));
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_1(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK>(x).zip(blocks_mut::<Q8_1_BYTES>(dst)) {
        if let Some(qs) = sub_mut::<32>(b, 4) {
            let (d, sum) = q8_block(x, qs);
            b[..2].copy_from_slice(&f32_to_f16_bytes(d));
            // The sum uses the unrounded f32 `d`, as the scalar twin and llama.cpp do.
            b[2..4].copy_from_slice(&f32_to_f16_bytes(d * sum as f32));
        }
    }
}

/// Q8_K: the element of largest magnitude (the first one, on ties; NaNs never count) is
/// mapped to -127; values are rounded with ggml's `nearest_int` (add 1.5·2^23, keep the
/// low mantissa bits), capped at 127 and stored as their low byte; group sums of 16 follow.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_k(x: &[f32], dst: &mut [u8]) {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    for (x, b) in groups::<QK_K>(x).zip(blocks_mut::<Q8_K_BYTES>(dst)) {
        // Largest magnitude, NaN lanes dropped (the accumulator is `max_ps`'s second
        // operand), as in the scalar strict `>` fold from 0.
        let mut m = _mm256_setzero_ps();
        for v in groups::<8>(x) {
            m = _mm256_max_ps(_mm256_and_ps(load8(v), abs_mask), m);
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        if amax == 0.0 {
            b.fill(0);
            continue;
        }
        // The first element with that magnitude, with its sign.
        let target = _mm256_set1_ps(amax);
        let mut max = amax;
        for (k, v) in groups::<8>(x).enumerate() {
            let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_and_ps(load8(v), abs_mask), target);
            let bits = _mm256_movemask_ps(eq) as u32;
            if bits != 0 {
                max = x
                    .get(8 * k + bits.trailing_zeros() as usize)
                    .copied()
                    .unwrap_or(amax);
                break;
            }
        }
        let iscale = -127.0 / max;
        let mul = _mm256_set1_ps(iscale);
        let magic = _mm256_set1_ps(12_582_912.0);
        let mantissa = _mm256_set1_epi32(0x007F_FFFF);
        let bias = _mm256_set1_epi32(0x0040_0000);
        let cap = _mm256_set1_epi32(127);
        let low_byte = _mm256_set1_epi32(0xFF);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let flip = _mm256_set1_epi8(i8::MIN);
        let (head, rest) = b.split_at_mut(4);
        let (qs, bsums) = rest.split_at_mut(QK_K);
        for ((x, q), s) in groups::<32>(x)
            .zip(blocks_mut::<32>(qs))
            .zip(bsums.chunks_exact_mut(4))
        {
            let mut lanes = [_mm256_setzero_si256(); 4];
            for (l, v) in lanes.iter_mut().zip(groups::<8>(x)) {
                let t = _mm256_add_ps(_mm256_mul_ps(load8(v), mul), magic);
                let n = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(t), mantissa), bias);
                // `min(127)`, then the low byte (unsigned packs cannot saturate 0..=255).
                *l = _mm256_and_si256(_mm256_min_epi32(n, cap), low_byte);
            }
            let p01 = _mm256_packus_epi32(lanes[0], lanes[1]);
            let p23 = _mm256_packus_epi32(lanes[2], lanes[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p01, p23), order);
            // SAFETY: `q` is exactly 32 writable bytes; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), bytes) };
            // Group sums: bytes + 128 summed by eight with `sad`, minus 8·128 each.
            let sad = _mm256_sad_epu8(_mm256_xor_si256(bytes, flip), _mm256_setzero_si256());
            let pairs = _mm256_add_epi64(sad, _mm256_shuffle_epi32::<0b01_00_11_10>(sad));
            let g0 = _mm256_extract_epi64::<0>(pairs) as i32 - 16 * 128;
            let g1 = _mm256_extract_epi64::<2>(pairs) as i32 - 16 * 128;
            s[..2].copy_from_slice(&(g0 as i16).to_le_bytes());
            s[2..].copy_from_slice(&(g1 as i16).to_le_bytes());
        }
        head.copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}
