//! Dot products that round like llama.cpp's x86 (AVX2/AVX-512) kernels.
//!
//! The integer part of a quantised dot product is exact in any order, but the f32
//! accumulation of the per-block results is not. llama.cpp keeps eight f32 lanes, lane
//! `j` taking the integer sum of elements `4j..4j+4` of every block with a fused
//! multiply-add, and adds the lanes pairwise at the end. Activation quantisation then
//! turns last-bit differences into whole quantisation steps, so matching that order
//! is what keeps the logits within a few thousandths of llama.cpp's instead of tenths.
//!
//! Formats without a lane kernel here fall back to `embodios-quant`'s scalar kernels.

use embodios_gguf::GgmlType;

use crate::ops::DotOrder;

use crate::ops::fma;

/// ggml's `hsum_float_8`: halves added, then pairs, then the last two.
#[inline(always)]
fn hsum8(l: &[f32; 8]) -> f32 {
    let q = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let p0 = q[0] + q[2];
    let p1 = q[1] + q[3];
    p0 + p1
}

#[inline(always)]
fn h(b0: u8, b1: u8) -> f32 {
    crate::f16table::f16_to_f32(u16::from_le_bytes([b0, b1]))
}

/// The eight lane sums of one block: lane `j` is the exact integer dot product of
/// elements `4j..4j+4`.
///
/// Written as 16-bit multiplies summed in pairs into 32 bits, a shape compilers map to
/// a single multiply-add instruction even on baseline x86-64 (weights fit in 8 bits
/// and activations in 8 bits, so no product or pair sum overflows).
#[inline(always)]
fn lane_sums(w: &[i16; 32], a: &[u8; 32]) -> [i32; 8] {
    let mut y = [0i16; 32];
    for i in 0..32 {
        y[i] = i16::from(a[i] as i8);
    }
    let mut pairs = [0i32; 16];
    for k in 0..16 {
        pairs[k] = i32::from(w[2 * k]) * i32::from(y[2 * k])
            + i32::from(w[2 * k + 1]) * i32::from(y[2 * k + 1]);
    }
    let mut s = [0i32; 8];
    for j in 0..8 {
        s[j] = pairs[2 * j] + pairs[2 * j + 1];
    }
    s
}

#[inline(always)]
fn accumulate(acc: &mut [f32; 8], d: f32, s: &[i32; 8]) {
    for j in 0..8 {
        acc[j] = fma(d, s[j] as f32, acc[j]);
    }
}

#[inline(always)]
fn arr32(b: &[u8]) -> &[u8; 32] {
    // Callers pass exactly 32 bytes; an empty array would only come from a length bug.
    b.try_into().unwrap_or(&[0; 32])
}

#[inline(always)]
fn arr16(b: &[u8]) -> &[u8; 16] {
    b.try_into().unwrap_or(&[0; 16])
}

/// Unpacks 16 bytes of nibbles: low nibbles are elements 0..16, high ones 16..32.
#[inline(always)]
fn nibbles(q: &[u8; 16], offset: i16) -> [i16; 32] {
    let mut v = [0i16; 32];
    for i in 0..16 {
        v[i] = i16::from(q[i] & 0x0f) - offset;
        v[i + 16] = i16::from(q[i] >> 4) - offset;
    }
    v
}

/// Q8_0 weights with Q8_0 activations (34-byte blocks: f16 scale, 32 signed bytes).
pub fn dot_q8_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        let d = h(x[0], x[1]) * h(y[0], y[1]);
        let xq = arr32(&x[2..34]);
        let mut wv = [0i16; 32];
        for i in 0..32 {
            wv[i] = i16::from(xq[i] as i8);
        }
        accumulate(&mut acc, d, &lane_sums(&wv, arr32(&y[2..34])));
    }
    hsum8(&acc)
}

/// Q4_1 weights (f16 d, f16 min, 16 bytes of nibbles) with Q8_1 activations (f16 d,
/// f16 d*sum, 32 signed bytes). The min terms are summed separately, fused, in block
/// order, and added last.
pub fn dot_q4_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut mins = 0.0f32;
    for (x, y) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
        let d = h(x[0], x[1]) * h(y[0], y[1]);
        mins = fma(h(x[2], x[3]), h(y[2], y[3]), mins);
        let wv = nibbles(arr16(&x[4..20]), 0);
        accumulate(&mut acc, d, &lane_sums(&wv, arr32(&y[4..36])));
    }
    hsum8(&acc) + mins
}

/// Q4_0 weights (f16 d, nibbles minus 8) with Q8_0 activations.
pub fn dot_q4_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let d = h(x[0], x[1]) * h(y[0], y[1]);
        let wv = nibbles(arr16(&x[2..18]), 8);
        accumulate(&mut acc, d, &lane_sums(&wv, arr32(&y[2..34])));
    }
    hsum8(&acc)
}

#[inline(always)]
fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    h(b[2 * i], b[2 * i + 1])
}

/// A float dot product as ggml's single-token kernels compute it: four 16-lane
/// accumulators over steps of 64 elements, folded pairwise, then a sequential tail.
/// With `f64_tail` the tail is summed in f64 (ggml's f16 kernel) instead of with f32
/// fused multiply-adds (its f32 kernel).
#[inline(always)]
fn dot_single(n: usize, f64_tail: bool, prod: impl Fn(usize) -> (f32, f32)) -> f32 {
    let mut acc = [[0.0f32; 16]; 4];
    let full = n & !63;
    for base in (0..full).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, lane) in a.iter_mut().enumerate() {
                let (x, y) = prod(base + 16 * j + l);
                *lane = fma(x, y, *lane);
            }
        }
    }
    let [a0, a1, a2, a3] = acc;
    let mut r = [0.0f32; 16];
    for l in 0..16 {
        r[l] = (a0[l] + a2[l]) + (a1[l] + a3[l]);
    }
    let sum = crate::ops::reduce16(&r);
    if f64_tail {
        let mut wide = f64::from(sum);
        for i in full..n {
            let (x, y) = prod(i);
            wide += f64::from(x * y);
        }
        wide as f32
    } else {
        let mut sum = sum;
        for i in full..n {
            let (x, y) = prod(i);
            sum = fma(x, y, sum);
        }
        sum
    }
}

/// A float dot product as tinyBLAS computes it for a batch: one 16-lane accumulator.
#[inline(always)]
fn dot_batch(n: usize, prod: impl Fn(usize) -> (f32, f32)) -> f32 {
    let mut lanes = [0.0f32; 16];
    for i in 0..n {
        let (x, y) = prod(i);
        lanes[i % 16] = fma(x, y, lanes[i % 16]);
    }
    crate::ops::reduce16(&lanes)
}

/// F32 weights with F32 activations, one token.
pub fn dot_f32_single(w: &[u8], a: &[u8]) -> f32 {
    dot_single(w.len() / 4, false, |i| (f32_at(w, i), f32_at(a, i)))
}

/// F32 weights with F32 activations, in a batch.
pub fn dot_f32_batch(w: &[u8], a: &[u8]) -> f32 {
    dot_batch(w.len() / 4, |i| (f32_at(w, i), f32_at(a, i)))
}

/// F16 weights with F16 activations, one token.
pub fn dot_f16_single(w: &[u8], a: &[u8]) -> f32 {
    dot_single(w.len() / 2, true, |i| (f16_at(w, i), f16_at(a, i)))
}

/// F16 weights with F16 activations, in a batch.
pub fn dot_f16_batch(w: &[u8], a: &[u8]) -> f32 {
    dot_batch(w.len() / 2, |i| (f16_at(w, i), f16_at(a, i)))
}

/// The tiled K-quant kernel's last steps for one 256-element block: the block's integer
/// sums as f32, the weight scale(s) applied (`s1 * d - dmin * s2`, the second fused),
/// then the activation scale, accumulated across blocks in order.
#[inline(always)]
fn tiled_block(acc: f32, s1: i32, d: f32, min_term: Option<(f32, i32)>, d8: f32) -> f32 {
    let mut r = s1 as f32 * d;
    if let Some((dmin, s2)) = min_term {
        r = fma(-dmin, s2 as f32, r);
    }
    fma(r, d8, acc)
}

/// Q4_K/Q5_K (6-bit scales and mins per 32 elements) against Q8_K the way ggml's tiled
/// kernel computes a batch of 8 or more tokens: per block the exact integers
/// `sum_s scale_s * dot_s` and `sum_s min_s * bsum_s`, then [`tiled_block`].
fn dot_k4_tiled(
    w: &[u8],
    a: &[u8],
    block_bytes: usize,
    levels: impl Fn(&[u8]) -> ([u8; 256], f32, f32, [u8; 12]),
) -> f32 {
    let [r] = dot_k4_tiled_n(w, [a], block_bytes, levels);
    r
}

/// [`dot_k4_tiled`] of one weight row with `N` activation rows: each block's levels and
/// scales are unpacked once, then every row goes through the same steps as alone.
fn dot_k4_tiled_n<const N: usize>(
    w: &[u8],
    a: [&[u8]; N],
    block_bytes: usize,
    levels: impl Fn(&[u8]) -> ([u8; 256], f32, f32, [u8; 12]),
) -> [f32; N] {
    use embodios_quant::kquants::{unpack_k4_scales, BlockQ8K, Q8_K_BYTES};
    let avx2 = crate::simd::avx2_available();
    let mut acc = [0.0f32; N];
    for (b, x) in w.chunks_exact(block_bytes).enumerate() {
        let (q, d, dmin, scales) = levels(x);
        let (sc, mn) = unpack_k4_scales(&scales);
        for (acc, a) in acc.iter_mut().zip(a) {
            let Some(yb) = a
                .get(b * Q8_K_BYTES..(b + 1) * Q8_K_BYTES)
                .and_then(|y| <&[u8; Q8_K_BYTES]>::try_from(y).ok())
            else {
                *acc = f32::NAN;
                continue;
            };
            let y = BlockQ8K::parse(yb);
            let dots = crate::simd::group_dots(&q, y.qs, avx2);
            let (mut s1, mut s2) = (0i32, 0i32);
            for (s, &dot) in dots.iter().enumerate() {
                s1 += i32::from(sc[s]) * dot;
                s2 +=
                    i32::from(mn[s]) * (i32::from(y.bsums[2 * s]) + i32::from(y.bsums[2 * s + 1]));
            }
            *acc = tiled_block(*acc, s1, d, Some((dmin, s2)), y.d);
        }
    }
    acc
}

/// Q4_K levels, scales and mins of one block (zeros for a short block).
fn q4_k_parts(x: &[u8]) -> ([u8; 256], f32, f32, [u8; 12]) {
    use embodios_quant::kquants::{BlockQ4K, Q4_K_BYTES};
    let Ok(b) = <&[u8; Q4_K_BYTES]>::try_from(x) else {
        return ([0; 256], 0.0, 0.0, [0; 12]);
    };
    let b = BlockQ4K::parse(b);
    (b.levels(), b.d.to_f32(), b.dmin.to_f32(), *b.scales)
}

/// Q5_K levels, scales and mins of one block (zeros for a short block).
fn q5_k_parts(x: &[u8]) -> ([u8; 256], f32, f32, [u8; 12]) {
    use embodios_quant::kquants::{BlockQ5K, Q5_K_BYTES};
    let Ok(b) = <&[u8; Q5_K_BYTES]>::try_from(x) else {
        return ([0; 256], 0.0, 0.0, [0; 12]);
    };
    let b = BlockQ5K::parse(b);
    (b.levels(), b.d.to_f32(), b.dmin.to_f32(), *b.scales)
}

/// [`dot_q4_k_tiled`] for four activation rows (same bits as four calls).
pub fn dot4_q4_k_tiled(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    dot_k4_tiled_n(w, a, embodios_quant::kquants::Q4_K_BYTES, q4_k_parts)
}

/// [`dot_q5_k_tiled`] for four activation rows (same bits as four calls).
pub fn dot4_q5_k_tiled(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    dot_k4_tiled_n(w, a, embodios_quant::kquants::Q5_K_BYTES, q5_k_parts)
}

/// Q4_K weights against Q8_K in ggml's tiled batch kernel order (see [`dot_k4_tiled`]).
pub fn dot_q4_k_tiled(w: &[u8], a: &[u8]) -> f32 {
    dot_k4_tiled(w, a, embodios_quant::kquants::Q4_K_BYTES, q4_k_parts)
}

/// Q5_K weights against Q8_K in ggml's tiled batch kernel order (see [`dot_k4_tiled`]).
pub fn dot_q5_k_tiled(w: &[u8], a: &[u8]) -> f32 {
    dot_k4_tiled(w, a, embodios_quant::kquants::Q5_K_BYTES, q5_k_parts)
}

/// Q6_K weights (signed 8-bit scales per 16 elements) against Q8_K in ggml's tiled batch
/// kernel order: per block the exact `sum_s scale_s * dot_s`, then [`tiled_block`].
pub fn dot_q6_k_tiled(w: &[u8], a: &[u8]) -> f32 {
    use embodios_quant::kquants::{BlockQ6K, BlockQ8K, Q6_K_BYTES, Q8_K_BYTES};
    let mut acc = 0.0f32;
    for (x, y) in w.chunks_exact(Q6_K_BYTES).zip(a.chunks_exact(Q8_K_BYTES)) {
        let (Ok(xb), Ok(yb)) = (
            <&[u8; Q6_K_BYTES]>::try_from(x),
            <&[u8; Q8_K_BYTES]>::try_from(y),
        ) else {
            return f32::NAN;
        };
        let (b, y) = (BlockQ6K::parse(xb), BlockQ8K::parse(yb));
        let q = b.levels();
        let mut s1 = 0i32;
        for (s, &sc) in b.scales.iter().enumerate() {
            let r = 16 * s..16 * s + 16;
            let dot: i32 = q[r.clone()]
                .iter()
                .zip(&y.qs[r])
                .map(|(&w, &a)| i32::from(w) * i32::from(a as i8))
                .sum();
            s1 += i32::from(sc as i8) * dot;
        }
        acc = tiled_block(acc, s1, b.d.to_f32(), None, y.d);
    }
    acc
}

/// A dot product of a weight row with an activation row (both as bytes).
pub type LaneDot = fn(&[u8], &[u8]) -> f32;

/// The lane kernel for a weight type in a given evaluation mode, if there is one.
/// The quantised kernels accumulate alike for one token and for a batch; the float
/// ones do not (and tinyBLAS only takes rows that are a multiple of 16 long).
pub fn lane_dot(ty: GgmlType, order: DotOrder, cols: usize) -> Option<LaneDot> {
    let batch = order != DotOrder::Single && cols.is_multiple_of(16);
    if order == DotOrder::Tiled {
        // `embodios-quant`'s AVX2 tiled kernels compute these same steps (the test
        // `simd_tiled_kernels_match_the_lane_kernels` checks the bits).
        if let Some((one, _)) = embodios_quant::tiled_kernels(ty) {
            return Some(one);
        }
        match ty {
            GgmlType::Q4_K => return Some(dot_q4_k_tiled),
            GgmlType::Q5_K => return Some(dot_q5_k_tiled),
            GgmlType::Q6_K => return Some(dot_q6_k_tiled),
            _ => {}
        }
    }
    // `embodios-quant`'s AVX2 kernels for the legacy block formats keep the same eight
    // lanes and final fold as llama.cpp, so they give the same bits, faster (the
    // fidelity tests and `simd_legacy_kernels_match_the_lane_kernels` check this).
    // `embodios_quant::force_scalar(true)` turns this off (for benchmarks).
    if matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_1 | GgmlType::Q4_0)
        && embodios_quant::active_kernel_set() != "scalar"
    {
        if let Some(k) = embodios_quant::simd_kernels(ty) {
            return Some(k.vec_dot);
        }
    }
    match ty {
        GgmlType::Q8_0 => Some(dot_q8_0_q8_0),
        GgmlType::Q4_1 => Some(dot_q4_1_q8_1),
        GgmlType::Q4_0 => Some(dot_q4_0_q8_0),
        GgmlType::F32 if batch => Some(dot_f32_batch),
        GgmlType::F32 => Some(dot_f32_single),
        GgmlType::F16 if batch => Some(dot_f16_batch),
        GgmlType::F16 => Some(dot_f16_single),
        _ => None,
    }
}

/// A four-activation-row kernel with the same bits as [`lane_dot`]'s (or, where that has
/// none, the active kernel table's) single-row kernel for `ty` in `order`, if one exists.
pub fn lane_dot4(ty: GgmlType, order: DotOrder) -> Option<embodios_quant::VecDot4Fn> {
    if order == DotOrder::Tiled {
        if let Some((_, four)) = embodios_quant::tiled_kernels(ty) {
            return Some(four);
        }
    }
    match (order, ty) {
        (DotOrder::Tiled, GgmlType::Q4_K) => Some(dot4_q4_k_tiled),
        (DotOrder::Tiled, GgmlType::Q5_K) => Some(dot4_q5_k_tiled),
        // `embodios-quant` has four-row forms of some SIMD kernels (Q4_1, Q5_0, Q8_0), only
        // while its SIMD set is active, which is exactly when `lane_dot` and the kernel
        // table hand out those SIMD kernels; none of these types has an order variant.
        _ => embodios_quant::vec_dot4(ty),
    }
}

/// A two-row by four-token tile with the same bits as [`lane_dot`] in `order` (the tiled
/// K-quant order of batches), if one exists: Q4_K while `embodios-quant`'s SIMD set is
/// active.
pub fn lane_tile(ty: GgmlType, order: DotOrder) -> Option<embodios_quant::VecDotTileFn> {
    match (order, ty) {
        (DotOrder::Tiled, GgmlType::Q4_K) => embodios_quant::tile_kernel(ty),
        _ => None,
    }
}

/// A four-weight-row kernel with the same bits as the single-row kernel
/// [`lane_dot`] (or the kernel table) hands out for `ty`, if one exists: the legacy
/// block formats, whose quantised kernels are the same in every order, while
/// `embodios-quant`'s SIMD set (the one `lane_dot` then uses) is active.
pub fn lane_rows4(ty: GgmlType, order: DotOrder) -> Option<embodios_quant::VecDotRows4Fn> {
    let _ = order;
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
            embodios_quant::vec_dot_rows4(ty)
        }
        _ => None,
    }
}

/// A panel kernel (a chunk of weight rows against all tokens of a batch per call) with
/// the same bits as the single-row kernel [`lane_dot`] (or the kernel table) hands out
/// for `ty`, if one exists: the legacy block formats, whose quantised kernels are the
/// same in every order, and the K-quants in the tiled order, while `embodios-quant`'s
/// SIMD set (the one `lane_dot` then uses) is active.
pub fn lane_panel(ty: GgmlType, order: DotOrder) -> Option<embodios_quant::PanelFn> {
    match (ty, order) {
        (GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0, _) => {
            embodios_quant::panel_kernel(ty)
        }
        // The K-quant panels compute the tiled order only (batches of eight or more).
        (GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K, DotOrder::Tiled) => {
            embodios_quant::panel_kernel(ty)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Rng;
    use alloc::vec;
    use alloc::vec::Vec;

    fn random_row(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale)
            .collect()
    }

    fn encode(ty: GgmlType, x: &[f32], act: bool) -> Vec<u8> {
        let mut out = vec![0u8; ty.bytes_for(x.len() as u64).unwrap() as usize];
        if act {
            embodios_quant::quantize_activations(ty, x, &mut out).unwrap();
        } else {
            embodios_quant::quantize_row(ty, x, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn simd_legacy_kernels_match_the_lane_kernels() {
        let mut rng = Rng::new(5);
        let lane: [(GgmlType, LaneDot); 3] = [
            (GgmlType::Q8_0, dot_q8_0_q8_0),
            (GgmlType::Q4_1, dot_q4_1_q8_1),
            (GgmlType::Q4_0, dot_q4_0_q8_0),
        ];
        for (ty, lane_fn) in lane {
            let act_ty = embodios_quant::vec_dot_type(ty).unwrap();
            let chosen = lane_dot(ty, DotOrder::Single, 576).unwrap();
            for trial in 0..200 {
                let n = 32 * (1 + trial % 24);
                let w = encode(ty, &random_row(&mut rng, n, 0.1), false);
                let a = encode(act_ty, &random_row(&mut rng, n, 3.0), true);
                let want = lane_fn(&w, &a);
                assert_eq!(chosen(&w, &a).to_bits(), want.to_bits(), "{ty} n={n}");
                if let Some(k) = embodios_quant::simd_kernels(ty) {
                    assert_eq!((k.vec_dot)(&w, &a).to_bits(), want.to_bits(), "{ty} n={n}");
                }
                // And the lane order is a real reordering of the exact dot product.
                let (mut wf, mut af) = (vec![0.0f32; n], vec![0.0f32; n]);
                embodios_quant::dequantize_row(ty, &w, &mut wf).unwrap();
                embodios_quant::dequantize_row(act_ty, &a, &mut af).unwrap();
                let exact: f64 = wf
                    .iter()
                    .zip(&af)
                    .map(|(x, y)| f64::from(*x) * f64::from(*y))
                    .sum();
                let tol =
                    1e-3 * (1.0 + exact.abs()) + if ty == GgmlType::Q4_1 { 0.05 } else { 0.0 };
                assert!(
                    (f64::from(want) - exact).abs() < tol,
                    "{ty}: {want} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn four_token_kernels_match_the_single_token_kernels() {
        let mut rng = Rng::new(8);
        // Q4_1 against its lane kernel (the order llama.cpp's build uses); Q5_0 against
        // the single-row SIMD kernel the engine uses for it (bit-identical to llama.cpp's
        // AVX2 kernel, see `embodios-quant`'s tests).
        let single: [(GgmlType, Option<LaneDot>); 3] = [
            (GgmlType::Q4_1, Some(dot_q4_1_q8_1)),
            (GgmlType::Q8_0, Some(dot_q8_0_q8_0)),
            (
                GgmlType::Q5_0,
                embodios_quant::simd_kernels(GgmlType::Q5_0).map(|k| k.vec_dot),
            ),
        ];
        for (ty, one) in single {
            let act_ty = embodios_quant::vec_dot_type(ty).unwrap();
            let (Some(dot4), Some(one)) = (embodios_quant::vec_dot4(ty), one) else {
                // Without AVX2 there is no four-token kernel, and the matmul uses none.
                assert_ne!(embodios_quant::active_kernel_set(), "avx2+fma");
                assert!(embodios_quant::vec_dot4(ty).is_none());
                continue;
            };
            for trial in 0..100 {
                let n = 32 * (1 + trial % 24);
                let w = encode(ty, &random_row(&mut rng, n, 0.1), false);
                let mut a: Vec<Vec<u8>> = (0..4)
                    .map(|_| encode(act_ty, &random_row(&mut rng, n, 3.0), true))
                    .collect();
                if ty == GgmlType::Q8_0 && trial % 5 == 0 {
                    // A -128 activation byte takes the widening path in one row only.
                    a[trial % 4][2 + trial % 32] = 0x80;
                }
                let got = dot4(&w, [&a[0], &a[1], &a[2], &a[3]]);
                for (g, a) in got.iter().zip(&a) {
                    assert_eq!(g.to_bits(), one(&w, a).to_bits(), "{ty} n={n}");
                }
            }
        }
    }

    #[test]
    fn four_weight_row_kernels_match_the_single_row_kernels() {
        let mut rng = Rng::new(17);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
        ] {
            let Some(rows4) = lane_rows4(ty, DotOrder::Single) else {
                assert_ne!(embodios_quant::active_kernel_set(), "avx2+fma");
                continue;
            };
            let one = lane_dot(ty, DotOrder::Single, 64)
                .unwrap_or(embodios_quant::kernels(ty).unwrap().vec_dot);
            let act_ty = embodios_quant::vec_dot_type(ty).unwrap();
            for trial in 0..100 {
                let n = 32 * (1 + trial % 24);
                let w: Vec<Vec<u8>> = (0..4)
                    .map(|_| encode(ty, &random_row(&mut rng, n, 0.1), false))
                    .collect();
                let mut a = encode(act_ty, &random_row(&mut rng, n, 3.0), true);
                if ty == GgmlType::Q8_0 && trial % 7 == 0 {
                    // A -128 activation byte takes the widening path.
                    a[2 + trial % 32] = 0x80;
                }
                let got = rows4([&w[0], &w[1], &w[2], &w[3]], &a);
                for (g, w) in got.iter().zip(&w) {
                    assert_eq!(g.to_bits(), one(w, &a).to_bits(), "{ty} n={n}");
                    // And the engine's scalar lane twin, where there is one.
                    let twin: Option<LaneDot> = match ty {
                        GgmlType::Q4_0 => Some(dot_q4_0_q8_0),
                        GgmlType::Q4_1 => Some(dot_q4_1_q8_1),
                        GgmlType::Q8_0 => Some(dot_q8_0_q8_0),
                        _ => None,
                    };
                    if let Some(twin) = twin {
                        assert_eq!(g.to_bits(), twin(w, &a).to_bits(), "{ty} n={n} twin");
                    }
                }
            }
        }
    }

    #[test]
    fn four_row_tiled_kernels_match_the_single_row_ones() {
        let mut rng = Rng::new(12);
        let pairs: [(GgmlType, LaneDot, embodios_quant::VecDot4Fn); 2] = [
            (GgmlType::Q4_K, dot_q4_k_tiled, dot4_q4_k_tiled),
            (GgmlType::Q5_K, dot_q5_k_tiled, dot4_q5_k_tiled),
        ];
        for (ty, one, four) in pairs {
            assert!(lane_dot4(ty, DotOrder::Tiled).is_some());
            for trial in 0..30 {
                let n = 256 * (1 + trial % 3);
                let w = encode(ty, &random_row(&mut rng, n, 0.2), false);
                let a: Vec<Vec<u8>> = (0..4)
                    .map(|_| encode(GgmlType::Q8_K, &random_row(&mut rng, n, 2.0), true))
                    .collect();
                let got = four(&w, [&a[0], &a[1], &a[2], &a[3]]);
                for (g, a) in got.iter().zip(&a) {
                    assert_eq!(g.to_bits(), one(&w, a).to_bits(), "{ty} n={n}");
                }
            }
        }
    }

    #[test]
    fn two_row_tiles_match_the_lane_kernels() {
        let mut rng = Rng::new(21);
        for (ty, twin) in [(GgmlType::Q4_K, dot_q4_k_tiled as LaneDot)] {
            assert!(lane_tile(ty, DotOrder::Single).is_none());
            let Some(tile) = lane_tile(ty, DotOrder::Tiled) else {
                assert_ne!(embodios_quant::active_kernel_set(), "avx2+fma");
                continue;
            };
            for trial in 0..60 {
                let n = 256 * (1 + trial % 3);
                let scale = [0.01f32, 0.2, 3.0][trial % 3];
                let w: Vec<Vec<u8>> = (0..2)
                    .map(|_| encode(ty, &random_row(&mut rng, n, scale), false))
                    .collect();
                let a: Vec<Vec<u8>> = (0..4)
                    .map(|_| encode(GgmlType::Q8_K, &random_row(&mut rng, n, 2.0), true))
                    .collect();
                let got = tile([&w[0], &w[1]], [&a[0], &a[1], &a[2], &a[3]]);
                for (g, w) in got.iter().zip(&w) {
                    for (g, a) in g.iter().zip(&a) {
                        assert_eq!(g.to_bits(), twin(w, a).to_bits(), "{ty} n={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn simd_tiled_kernels_match_the_lane_kernels() {
        let mut rng = Rng::new(13);
        let pairs: [(GgmlType, LaneDot); 2] = [
            (GgmlType::Q4_K, dot_q4_k_tiled),
            (GgmlType::Q6_K, dot_q6_k_tiled),
        ];
        for (ty, twin) in pairs {
            let Some((one, four)) = embodios_quant::tiled_kernels(ty) else {
                // Without AVX2 the engine uses the lane kernels themselves.
                assert_ne!(embodios_quant::active_kernel_set(), "avx2+fma");
                continue;
            };
            for trial in 0..60 {
                let n = 256 * (1 + trial % 3);
                let scale = [0.01f32, 0.2, 3.0][trial % 3];
                let w = encode(ty, &random_row(&mut rng, n, scale), false);
                let a: Vec<Vec<u8>> = (0..4)
                    .map(|_| encode(GgmlType::Q8_K, &random_row(&mut rng, n, 2.0), true))
                    .collect();
                let got4 = four(&w, [&a[0], &a[1], &a[2], &a[3]]);
                for (g, a) in got4.iter().zip(&a) {
                    let want = twin(&w, a);
                    assert_eq!(g.to_bits(), want.to_bits(), "{ty} n={n} (four rows)");
                    assert_eq!(one(&w, a).to_bits(), want.to_bits(), "{ty} n={n}");
                }
            }
        }
    }

    #[test]
    fn tiled_k_quant_kernels_are_reorderings_of_the_same_dot_product() {
        let mut rng = Rng::new(11);
        let tiled: [(GgmlType, LaneDot); 3] = [
            (GgmlType::Q4_K, dot_q4_k_tiled),
            (GgmlType::Q5_K, dot_q5_k_tiled),
            (GgmlType::Q6_K, dot_q6_k_tiled),
        ];
        for (ty, f) in tiled {
            assert!(lane_dot(ty, DotOrder::Tiled, 512).is_some());
            assert!(lane_dot(ty, DotOrder::Single, 512).is_none());
            let k = embodios_quant::kernels(ty).unwrap();
            for trial in 0..50 {
                let n = 256 * (1 + trial % 3);
                let w = encode(ty, &random_row(&mut rng, n, 0.2), false);
                let a = encode(GgmlType::Q8_K, &random_row(&mut rng, n, 2.0), true);
                let reference = (k.vec_dot)(&w, &a);
                let got = f(&w, &a);
                assert!(
                    (got - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                    "{ty} n={n}: tiled {got} vs vec_dot {reference}"
                );
            }
        }
    }

    #[test]
    fn float_kernels_follow_their_accumulation_orders() {
        let mut rng = Rng::new(9);
        for n in [16usize, 64, 80, 128, 576] {
            let w = random_row(&mut rng, n, 1.0);
            let a = random_row(&mut rng, n, 1.0);
            let wb: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let ab: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
            let exact: f64 = w
                .iter()
                .zip(&a)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let single = dot_f32_single(&wb, &ab);
            let batch = dot_f32_batch(&wb, &ab);
            assert!((f64::from(single) - exact).abs() < 1e-4, "n={n}");
            assert!((f64::from(batch) - exact).abs() < 1e-4, "n={n}");
            // Up to 16 elements both orders are the same sums of single products.
            if n == 16 {
                let mut lanes = [0.0f32; 16];
                for i in 0..16 {
                    lanes[i] = w[i] * a[i];
                }
                assert_eq!(batch, crate::ops::reduce16(&lanes));
            }
        }
    }
}
