//! AVX2 dot products of the 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
//! with their Q8_0/Q8_1 activations.
//!
//! Each block's integer products end up as eight i32 lanes, lane `k` holding the sum over
//! bytes `4k..4k+4`; the lanes are scaled by `d_w * d_a` and accumulated with one `fma`
//! per block. The usual signed product `maddubs(|x|, sign(y, x))` goes wrong when `y`
//! holds -128 (which `sign` cannot negate), so Q4_0/Q5_0 multiply their unsigned levels
//! and subtract the level offset with a second `maddubs`, and Q8_0 checks each block's
//! activations for -128 (see [`q8_0_q8_0`]): results are exact for every input.

use core::arch::x86_64::*;

use super::{
    bits_to_bytes, entry, f16_pair, hsum_ps, lane0, lane1, load128, load256, nibbles32,
    pairs_to_i32, prefetch_ahead,
};
use crate::bytes::{blocks, sub};
use crate::legacy::{
    self as scalar, Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q8_0_BYTES, Q8_1_BYTES,
};

entry!(dot_q4_0_q8_0, q4_0_q8_0, scalar::dot_q4_0_q8_0);
entry!(dot_q4_1_q8_1, q4_1_q8_1, scalar::dot_q4_1_q8_1);
entry!(dot_q5_0_q8_0, q5_0_q8_0, scalar::dot_q5_0_q8_0);
entry!(dot_q5_1_q8_1, q5_1_q8_1, scalar::dot_q5_1_q8_1);
entry!(dot_q8_0_q8_0, q8_0_q8_0, scalar::dot_q8_0_q8_0);

/// `Σ (u - off) · y` per 4-byte lane for unsigned levels `u` (< 32) and a level offset
/// `off`. Each `maddubs` pair sum is at most 2·31·128 = 7936 in magnitude, and so is the
/// difference, so nothing saturates.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn offset_dot(u: __m256i, y: __m256i, off: i8) -> __m256i {
    let p = _mm256_maddubs_epi16(u, y);
    let o = _mm256_maddubs_epi16(_mm256_set1_epi8(off), y);
    pairs_to_i32(_mm256_sub_epi16(p, o))
}

/// `Σ u · y` per 4-byte lane for unsigned levels `u` (< 32): pair sums stay below 2^15.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn unsigned_dot(u: __m256i, y: __m256i) -> __m256i {
    pairs_to_i32(_mm256_maddubs_epi16(u, y))
}

/// The five-bit levels of a Q5 block: nibbles plus 16 where the `qh` bit is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn five_bit_levels(qs: &[u8; 16], qh: &[u8; 4]) -> __m256i {
    let high = _mm256_and_si256(
        bits_to_bytes(u32::from_le_bytes(*qh)),
        _mm256_set1_epi8(0x10),
    );
    _mm256_or_si256(nibbles32(qs), high)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in blocks::<Q4_0_BYTES>(w).zip(blocks::<Q8_0_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), 64);
        let d = lane0(_mm_mul_ps(f16_pair(sub(x, 0)), f16_pair(sub(y, 0))));
        let q = offset_dot(nibbles32(sub(x, 2)), load256(sub(y, 2)), 8);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    // The `m · s` terms (lane 1), summed in block order as llama.cpp does.
    let mut summs = _mm_setzero_ps();
    for (x, y) in blocks::<Q4_1_BYTES>(w).zip(blocks::<Q8_1_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), 64);
        // Lanes [d_x, m_x] and [d_y, s_y]: lane 0 of the product is the block scale,
        // lane 1 of `summs` accumulates m_x · s_y (fused, as llama.cpp's build does).
        let (xs, ys) = (f16_pair(sub(x, 0)), f16_pair(sub(y, 0)));
        let d = lane0(_mm_mul_ps(xs, ys));
        summs = _mm_fmadd_ps(xs, ys, summs);
        let q = unsigned_dot(nibbles32(sub(x, 4)), load256(sub(y, 4)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), acc);
    }
    hsum_ps(acc) + lane1(summs)
}

/// [`q4_1_q8_1`] of one weight row with four activation rows: each block is unpacked
/// once and the four rows go through exactly the operations `q4_1_q8_1` applies, in the
/// same order, so every result has the same bits as four separate calls.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_q8_1_x4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut summs = [_mm_setzero_ps(); 4];
    let mut ys = a.map(blocks::<Q8_1_BYTES>);
    for x in blocks::<Q4_1_BYTES>(w) {
        prefetch_ahead(x.as_ptr(), 64);
        let xs = f16_pair(sub(x, 0));
        let nib = nibbles32(sub(x, 4));
        for ((it, acc), summs) in ys.iter_mut().zip(acc.iter_mut()).zip(summs.iter_mut()) {
            let Some(y) = it.next() else { continue };
            let ys = f16_pair(sub(y, 0));
            let d = lane0(_mm_mul_ps(xs, ys));
            *summs = _mm_fmadd_ps(xs, ys, *summs);
            let q = unsigned_dot(nib, load256(sub(y, 4)));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), *acc);
        }
    }
    [0, 1, 2, 3].map(|t| hsum_ps(acc[t]) + lane1(summs[t]))
}

/// Safe entry of [`q4_1_q8_1_x4`] (four scalar calls without AVX2).
pub(crate) fn dot4_q4_1_q8_1(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    if !super::available() {
        return a.map(|a| scalar::dot_q4_1_q8_1(w, a));
    }
    // SAFETY: `available()` confirmed AVX2, FMA and F16C on this CPU and YMM state support
    // in the OS, the features the kernel is compiled for; it reads only through checked
    // slices.
    unsafe { q4_1_q8_1_x4(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in blocks::<Q5_0_BYTES>(w).zip(blocks::<Q8_0_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), 64);
        let d = lane0(_mm_mul_ps(f16_pair(sub(x, 0)), f16_pair(sub(y, 0))));
        let u = five_bit_levels(sub(x, 6), sub(x, 2));
        let q = offset_dot(u, load256(sub(y, 2)), 16);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), acc);
    }
    hsum_ps(acc)
}

/// [`q5_0_q8_0`] of one weight row with four activation rows, each going through the
/// same operations in the same order (see [`q4_1_q8_1_x4`]).
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_q8_0_x4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut ys = a.map(blocks::<Q8_0_BYTES>);
    for x in blocks::<Q5_0_BYTES>(w) {
        prefetch_ahead(x.as_ptr(), 64);
        let xd = f16_pair(sub(x, 0));
        let u = five_bit_levels(sub(x, 6), sub(x, 2));
        for (it, acc) in ys.iter_mut().zip(acc.iter_mut()) {
            let Some(y) = it.next() else { continue };
            let d = lane0(_mm_mul_ps(xd, f16_pair(sub(y, 0))));
            let q = offset_dot(u, load256(sub(y, 2)), 16);
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), *acc);
        }
    }
    acc.map(|v| hsum_ps(v))
}

/// Safe entry of [`q5_0_q8_0_x4`] (four scalar calls without AVX2).
pub(crate) fn dot4_q5_0_q8_0(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    if !super::available() {
        return a.map(|a| scalar::dot_q5_0_q8_0(w, a));
    }
    // SAFETY: as in `dot4_q4_1_q8_1`.
    unsafe { q5_0_q8_0_x4(w, a) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = _mm_setzero_ps();
    for (x, y) in blocks::<Q5_1_BYTES>(w).zip(blocks::<Q8_1_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), 64);
        // Lanes [d_x, m_x] and [d_y, s_y]: lane 0 of the product is the block scale,
        // lane 1 of `summs` accumulates m_x · s_y (fused, as llama.cpp's build does).
        let (xs, ys) = (f16_pair(sub(x, 0)), f16_pair(sub(y, 0)));
        let d = lane0(_mm_mul_ps(xs, ys));
        summs = _mm_fmadd_ps(xs, ys, summs);
        let u = five_bit_levels(sub(x, 8), sub(x, 4));
        let q = unsigned_dot(u, load256(sub(y, 4)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(d), acc);
    }
    hsum_ps(acc) + lane1(summs)
}

/// Both operands are signed bytes. The usual AVX2 product `maddubs(|x|, sign(y, x))` is
/// exact unless `y` holds -128: `sign` cannot negate it, and `|x| = 128` times 128 twice
/// overflows an i16 pair sum (|x| <= 128 times |y| <= 127 twice stays below 2^15). Activation
/// rows from `quantize_activations` never hold -128, so that is the fast path; a block
/// with -128 in `y` takes an exact widening path instead. Both give lane `k` = the sum
/// over bytes `4k..4k+4`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let min = _mm256_set1_epi8(i8::MIN);
    for (x, y) in blocks::<Q8_0_BYTES>(w).zip(blocks::<Q8_0_BYTES>(a)) {
        prefetch_ahead(x.as_ptr(), 64);
        let d = lane0(_mm_mul_ps(f16_pair(sub(x, 0)), f16_pair(sub(y, 0))));
        let (xv, yv) = (load256(sub(x, 2)), load256(sub(y, 2)));
        let has_min = _mm256_cmpeq_epi8(yv, min);
        let q = if _mm256_testz_si256(has_min, has_min) == 1 {
            let ax = _mm256_sign_epi8(xv, xv);
            let sy = _mm256_sign_epi8(yv, xv);
            pairs_to_i32(_mm256_maddubs_epi16(ax, sy))
        } else {
            widened_dot(x, y)
        };
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), acc);
    }
    hsum_ps(acc)
}

/// [`q8_0_q8_0`] of one weight row with four activation rows: each weight block is
/// loaded, its scale converted and its absolute values taken once; every row then goes
/// through the operations of `q8_0_q8_0` (same products, same `fma` into its own
/// accumulator), so every result has the same bits as four separate calls. The -128 test
/// is made once per activation row instead of once per block: both integer paths give
/// the same exact lane sums, so where the widening path is taken does not change a bit.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_q8_0_x4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    if a.iter().any(|r| has_min_byte(r)) {
        return a.map(|a| q8_0_q8_0(w, a));
    }
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut ys = a.map(blocks::<Q8_0_BYTES>);
    for x in blocks::<Q8_0_BYTES>(w) {
        prefetch_ahead(x.as_ptr(), 64);
        let xd = f16_pair(sub(x, 0));
        let xv = load256(sub(x, 2));
        let ax = _mm256_sign_epi8(xv, xv);
        for (it, acc) in ys.iter_mut().zip(acc.iter_mut()) {
            let Some(y) = it.next() else { continue };
            let d = lane0(_mm_mul_ps(xd, f16_pair(sub(y, 0))));
            let sy = _mm256_sign_epi8(load256(sub(y, 2)), xv);
            let q = pairs_to_i32(_mm256_maddubs_epi16(ax, sy));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), *acc);
        }
    }
    acc.map(|v| hsum_ps(v))
}

/// Whether any quant byte of the Q8_0 row `a` is -128 (scale bytes are not looked at).
#[target_feature(enable = "avx2,fma,f16c")]
fn has_min_byte(a: &[u8]) -> bool {
    let min = _mm256_set1_epi8(i8::MIN);
    let mut any = _mm256_setzero_si256();
    for y in blocks::<Q8_0_BYTES>(a) {
        any = _mm256_or_si256(any, _mm256_cmpeq_epi8(load256(sub(y, 2)), min));
    }
    _mm256_testz_si256(any, any) == 0
}

/// Safe entry of [`q8_0_q8_0_x4`] (four scalar calls without AVX2).
pub(crate) fn dot4_q8_0_q8_0(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    if !super::available() {
        return a.map(|a| scalar::dot_q8_0_q8_0(w, a));
    }
    // SAFETY: as in `dot4_q4_1_q8_1`.
    unsafe { q8_0_q8_0_x4(w, a) }
}

/// Exact Q8_0 block product by widening both operands to i16 (`madd` of i16 products
/// cannot overflow), with the pair sums regrouped into 4-byte lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
fn widened_dot(x: &[u8; Q8_0_BYTES], y: &[u8; Q8_0_BYTES]) -> __m256i {
    let (xl, xh) = (load128(sub(x, 2)), load128(sub(x, 18)));
    let (yl, yh) = (load128(sub(y, 2)), load128(sub(y, 18)));
    // Pair sums of bytes 0..16 and of bytes 16..32.
    let pl = _mm256_madd_epi16(_mm256_cvtepi8_epi16(xl), _mm256_cvtepi8_epi16(yl));
    let ph = _mm256_madd_epi16(_mm256_cvtepi8_epi16(xh), _mm256_cvtepi8_epi16(yh));
    // hadd works per 128-bit half: quads [0, 1, 4, 5 | 2, 3, 6, 7] (in units of 4 bytes);
    // the 64-bit permute puts them in order.
    let quads = _mm256_hadd_epi32(pl, ph);
    _mm256_permute4x64_epi64::<0b11_01_10_00>(quads)
}

// ---------------------------------------------------------------------------------------
// Four weight rows against one activation row (decode's matrix-vector product): the
// activation block is loaded and widened once, and the four rows' accumulators are
// independent chains the core overlaps. Each row goes through exactly the operations of
// the single-row kernel, in the same order, so each result has the same bits.

/// Safe entry for a four-row kernel (four single-row scalar calls without AVX2).
macro_rules! rows4_entry {
    ($name:ident, $kernel:ident, $scalar:path) => {
        pub(crate) fn $name(w: [&[u8]; 4], a: &[u8]) -> [f32; 4] {
            if !super::available() {
                return w.map(|w| $scalar(w, a));
            }
            // SAFETY: `available()` confirmed AVX2, FMA and F16C on this CPU and YMM
            // state support in the OS; the kernel reads only through checked slices.
            unsafe { $kernel(w, a) }
        }
    };
}

rows4_entry!(rows4_q4_0_q8_0, q4_0_q8_0_rows4, scalar::dot_q4_0_q8_0);
rows4_entry!(rows4_q4_1_q8_1, q4_1_q8_1_rows4, scalar::dot_q4_1_q8_1);
rows4_entry!(rows4_q5_0_q8_0, q5_0_q8_0_rows4, scalar::dot_q5_0_q8_0);
rows4_entry!(rows4_q8_0_q8_0, q8_0_q8_0_rows4, scalar::dot_q8_0_q8_0);

/// The `b`-th block of each row, if all four rows have it.
#[inline(always)]
fn block4<'a, const N: usize>(w: &[&'a [u8]; 4], b: usize) -> Option<[&'a [u8; N]; 4]> {
    let one = |r: &'a [u8]| -> Option<&'a [u8; N]> { r.get(b * N..(b + 1) * N)?.try_into().ok() };
    Some([one(w[0])?, one(w[1])?, one(w[2])?, one(w[3])?])
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_q8_0_rows4(w: [&[u8]; 4], a: &[u8]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, y) in blocks::<Q8_0_BYTES>(a).enumerate() {
        let Some(xs) = block4::<Q4_0_BYTES>(&w, b) else {
            break;
        };
        let yd = f16_pair(sub(y, 0));
        let yv = load256(sub(y, 2));
        for (&x, acc) in xs.iter().zip(acc.iter_mut()) {
            prefetch_ahead(x.as_ptr(), 64);
            let d = lane0(_mm_mul_ps(f16_pair(sub(x, 0)), yd));
            let q = offset_dot(nibbles32(sub(x, 2)), yv, 8);
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), *acc);
        }
    }
    acc.map(|v| hsum_ps(v))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_q8_1_rows4(w: [&[u8]; 4], a: &[u8]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut summs = [_mm_setzero_ps(); 4];
    for (b, y) in blocks::<Q8_1_BYTES>(a).enumerate() {
        let Some(xs) = block4::<Q4_1_BYTES>(&w, b) else {
            break;
        };
        let ys = f16_pair(sub(y, 0));
        let yv = load256(sub(y, 4));
        for ((&x, acc), summs) in xs.iter().zip(acc.iter_mut()).zip(summs.iter_mut()) {
            prefetch_ahead(x.as_ptr(), 64);
            let xs = f16_pair(sub(x, 0));
            let d = lane0(_mm_mul_ps(xs, ys));
            *summs = _mm_fmadd_ps(xs, ys, *summs);
            let q = unsigned_dot(nibbles32(sub(x, 4)), yv);
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), *acc);
        }
    }
    [0, 1, 2, 3].map(|r| hsum_ps(acc[r]) + lane1(summs[r]))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_q8_0_rows4(w: [&[u8]; 4], a: &[u8]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, y) in blocks::<Q8_0_BYTES>(a).enumerate() {
        let Some(xs) = block4::<Q5_0_BYTES>(&w, b) else {
            break;
        };
        let yd = f16_pair(sub(y, 0));
        let yv = load256(sub(y, 2));
        for (&x, acc) in xs.iter().zip(acc.iter_mut()) {
            prefetch_ahead(x.as_ptr(), 64);
            let d = lane0(_mm_mul_ps(f16_pair(sub(x, 0)), yd));
            let u = five_bit_levels(sub(x, 6), sub(x, 2));
            let q = offset_dot(u, yv, 16);
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), *acc);
        }
    }
    acc.map(|v| hsum_ps(v))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_q8_0_rows4(w: [&[u8]; 4], a: &[u8]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let min = _mm256_set1_epi8(i8::MIN);
    for (b, y) in blocks::<Q8_0_BYTES>(a).enumerate() {
        let Some(xs) = block4::<Q8_0_BYTES>(&w, b) else {
            break;
        };
        let yd = f16_pair(sub(y, 0));
        let yv = load256(sub(y, 2));
        let has_min = _mm256_cmpeq_epi8(yv, min);
        let plain = _mm256_testz_si256(has_min, has_min) == 1;
        for (&x, acc) in xs.iter().zip(acc.iter_mut()) {
            prefetch_ahead(x.as_ptr(), 64);
            let d = lane0(_mm_mul_ps(f16_pair(sub(x, 0)), yd));
            let q = if plain {
                let xv = load256(sub(x, 2));
                let ax = _mm256_sign_epi8(xv, xv);
                let sy = _mm256_sign_epi8(yv, xv);
                pairs_to_i32(_mm256_maddubs_epi16(ax, sy))
            } else {
                widened_dot(x, y)
            };
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q), *acc);
        }
    }
    acc.map(|v| hsum_ps(v))
}
