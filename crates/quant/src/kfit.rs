//! Quantizers for the K-quant weight formats (Q2_K..Q6_K), of this crate's own design.
//!
//! They are not bit-identical to llama.cpp's; they only need to be sound, because they
//! write test fixtures and tiny models, never the real models compared against llama.cpp.
//!
//! Method, per super-block:
//! 1. For each sub-block, search a small grid of candidate scales; for each candidate,
//!    round the values to the integer grid and then solve the least-squares problem for the
//!    best scale (and offset, for the formats with a min) given those integers. Keep the
//!    candidate with the smallest squared error.
//! 2. Quantize the sub-block scales (and mins) against one f16 super-block scale each.
//! 3. Re-round every value against the scale/min actually stored, so the stored integers
//!    are the best ones for the stored scales.

use crate::bytes::{blocks_mut, f32_to_f16_bytes, groups, round_away, sub_mut};
use crate::kquants::{Q2_K_BYTES, Q3_K_BYTES, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K};
use half::f16;

/// Number of candidate scales tried on each side of the plain range-based one.
const STEPS: i32 = 12;
/// Relative spacing of the candidates, in units of one quantization level.
const STEP: f32 = 0.08;

/// Fits `x ≈ scale * q - offset` with integer `q` in `0..=nmax` and `offset >= 0`
/// (the formats can only shift values down). Returns `(scale, offset)`.
fn fit_affine(x: &[f32], nmax: i32) -> (f32, f32) {
    let mut lo = 0.0f32;
    let mut hi = f32::MIN;
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi.partial_cmp(&lo) != Some(core::cmp::Ordering::Greater) {
        // Constant (or NaN) sub-block: everything is the offset.
        return (0.0, -lo.min(0.0));
    }
    let n = x.len() as f32;
    let sum_x: f32 = x.iter().sum();
    let mut best = (f32::INFINITY, (hi - lo) / nmax as f32, -lo);
    for t in -STEPS..=STEPS {
        let iscale = (nmax as f32 + STEP * t as f32) / (hi - lo);
        if iscale <= 0.0 {
            continue;
        }
        let (mut sq, mut sqq, mut sqx) = (0.0f32, 0.0f32, 0.0f32);
        for &v in x {
            let q = round_away((v - lo) * iscale).clamp(0.0, nmax as f32);
            sq += q;
            sqq += q * q;
            sqx += q * v;
        }
        // Least squares for x ≈ a*q + b.
        let det = n * sqq - sq * sq;
        if det <= 0.0 {
            continue;
        }
        let mut a = (n * sqx - sq * sum_x) / det;
        let mut b = (sum_x - a * sq) / n;
        if b > 0.0 {
            // The offset must be a subtraction; refit the scale alone.
            b = 0.0;
            a = if sqq > 0.0 { sqx / sqq } else { 0.0 };
        }
        if a <= 0.0 {
            continue;
        }
        let err = affine_error(x, a, -b, nmax);
        if err < best.0 {
            best = (err, a, -b);
        }
    }
    (best.1, best.2)
}

/// Squared error of re-rounding `x` against `scale`/`offset`.
fn affine_error(x: &[f32], scale: f32, offset: f32, nmax: i32) -> f32 {
    let inv = 1.0 / scale;
    x.iter()
        .map(|&v| {
            let q = round_away((v + offset) * inv).clamp(0.0, nmax as f32);
            let e = scale * q - offset - v;
            e * e
        })
        .sum()
}

/// Fits `x ≈ scale * q` with integer `q` in `-nneg..=nneg-1`. The scale may be negative,
/// which lets the value of largest magnitude use the extra negative level.
fn fit_symmetric(x: &[f32], nneg: i32) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        return 0.0;
    }
    let (lo, hi) = (-nneg as f32, (nneg - 1) as f32);
    let mut best = (f32::INFINITY, max / -(nneg as f32));
    // Candidates map the extreme value to about -nneg or about +(nneg - 1).
    for target in [-(nneg as f32), (nneg - 1) as f32] {
        for t in -STEPS..=STEPS {
            let iscale = (target + STEP * t as f32 * target.signum()) / max;
            let (mut sqq, mut sqx) = (0.0f32, 0.0f32);
            for &v in x {
                let q = round_away(v * iscale).clamp(lo, hi);
                sqq += q * q;
                sqx += q * v;
            }
            if sqq <= 0.0 {
                continue;
            }
            let a = sqx / sqq;
            let err = symmetric_error(x, a, nneg);
            if err < best.0 {
                best = (err, a);
            }
        }
    }
    best.1
}

fn symmetric_error(x: &[f32], scale: f32, nneg: i32) -> f32 {
    if scale == 0.0 {
        return x.iter().map(|v| v * v).sum();
    }
    let inv = 1.0 / scale;
    x.iter()
        .map(|&v| {
            let q = round_away(v * inv).clamp(-nneg as f32, (nneg - 1) as f32);
            let e = scale * q - v;
            e * e
        })
        .sum()
}

/// Quantizes non-negative per-sub-block values (scales or mins) to `0..=max_code`
/// against one f16 super-scale. Returns the super-scale as stored and the codes.
fn quantize_unsigned<const N: usize>(vals: &[f32; N], max_code: i32) -> (f16, [u8; N]) {
    let vmax = vals.iter().fold(0.0f32, |a, &v| a.max(v));
    let d = f16::from_f32(vmax / max_code as f32);
    let df = d.to_f32();
    let mut codes = [0u8; N];
    if df > 0.0 {
        for (c, &v) in codes.iter_mut().zip(vals) {
            *c = (round_away(v / df) as i32).clamp(0, max_code) as u8;
        }
    }
    (d, codes)
}

/// Quantizes signed per-sub-block scales to `-nneg..=nneg-1` against one f16 super-scale.
fn quantize_signed<const N: usize>(vals: &[f32; N], nneg: i32) -> (f16, [i8; N]) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in vals {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = f16::from_f32(max / -(nneg as f32));
    let df = d.to_f32();
    let mut codes = [0i8; N];
    if df != 0.0 && df.is_finite() {
        for (c, &v) in codes.iter_mut().zip(vals) {
            *c = (round_away(v / df) as i32).clamp(-nneg, nneg - 1) as i8;
        }
    }
    (d, codes)
}

/// Rounds `v` against a stored affine scale/offset into `0..=nmax`.
#[inline(always)]
fn level_affine(v: f32, scale: f32, offset: f32, nmax: i32) -> u8 {
    if scale == 0.0 {
        return 0;
    }
    (round_away((v + offset) / scale) as i32).clamp(0, nmax) as u8
}

/// Rounds `v` against a stored symmetric scale into `-nneg..=nneg-1`.
#[inline(always)]
fn level_symmetric(v: f32, scale: f32, nneg: i32) -> i8 {
    if scale == 0.0 {
        return 0;
    }
    (round_away(v / scale) as i32).clamp(-nneg, nneg - 1) as i8
}

pub(crate) fn quantize_q2_k(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK_K>(x).zip(blocks_mut::<Q2_K_BYTES>(dst)) {
        let mut sc = [0.0f32; 16];
        let mut mn = [0.0f32; 16];
        for (j, g) in x.chunks_exact(16).enumerate() {
            (sc[j], mn[j]) = fit_affine(g, 3);
        }
        let (d, scq) = quantize_unsigned(&sc, 15);
        let (dmin, mnq) = quantize_unsigned(&mn, 15);
        let (df, dminf) = (d.to_f32(), dmin.to_f32());
        b.fill(0);
        for (j, s) in b[..16].iter_mut().enumerate() {
            *s = scq[j] | (mnq[j] << 4);
        }
        for (i, &v) in x.iter().enumerate() {
            let j = i / 16;
            let q = level_affine(v, df * scq[j] as f32, dminf * mnq[j] as f32, 3);
            let (half, k, l) = (i / 128, (i / 32) % 4, i % 32);
            b[16 + 32 * half + l] |= q << (2 * k);
        }
        if let Some(t) = sub_mut::<4>(b, 80) {
            let [a0, a1] = d.to_le_bytes();
            let [m0, m1] = dmin.to_le_bytes();
            *t = [a0, a1, m0, m1];
        }
    }
}

pub(crate) fn quantize_q3_k(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK_K>(x).zip(blocks_mut::<Q3_K_BYTES>(dst)) {
        let mut sc = [0.0f32; 16];
        for (j, g) in x.chunks_exact(16).enumerate() {
            sc[j] = fit_symmetric(g, 4);
        }
        let (d, scq) = quantize_signed(&sc, 32);
        let df = d.to_f32();
        b.fill(0);
        for (i, &v) in x.iter().enumerate() {
            let j = i / 16;
            let q = level_symmetric(v, df * scq[j] as f32, 4);
            let stored = (q + 4) as u8; // 0..8: low two bits + the "no -4" bit
            let (half, k, l) = (i / 128, (i / 32) % 4, i % 32);
            b[32 + 32 * half + l] |= (stored & 3) << (2 * k);
            if stored >= 4 {
                b[l] |= 1 << (4 * half + k);
            }
        }
        // Scales: stored value s = code + 32 in 0..64, split 4 + 2 bits.
        for (j, &c) in scq.iter().enumerate() {
            let s = (c as i32 + 32) as u8;
            if j < 8 {
                b[96 + j] |= s & 0x0F;
            } else {
                b[96 + j - 8] |= (s & 0x0F) << 4;
            }
            b[96 + 8 + j % 4] |= (s >> 4) << (2 * (j / 4));
        }
        if let Some(t) = sub_mut::<2>(b, 108) {
            *t = f32_to_f16_bytes(df);
        }
    }
}

/// Packs eight 6-bit scales and mins the Q4_K/Q5_K way (inverse of `unpack_k4_scales`).
fn pack_k4_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
    }
    s
}

/// Shared by Q4_K (`nmax = 15`) and Q5_K (`nmax = 31`): returns d, dmin, packed scales
/// and the per-element levels.
fn fit_k4(x: &[f32; QK_K], nmax: i32) -> (f16, f16, [u8; 12], [u8; QK_K]) {
    let mut sc = [0.0f32; 8];
    let mut mn = [0.0f32; 8];
    for (j, g) in x.chunks_exact(32).enumerate() {
        (sc[j], mn[j]) = fit_affine(g, nmax);
    }
    let (d, scq) = quantize_unsigned(&sc, 63);
    let (dmin, mnq) = quantize_unsigned(&mn, 63);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let mut levels = [0u8; QK_K];
    for (i, (l, &v)) in levels.iter_mut().zip(x).enumerate() {
        let j = i / 32;
        *l = level_affine(v, df * scq[j] as f32, dminf * mnq[j] as f32, nmax);
    }
    (d, dmin, pack_k4_scales(&scq, &mnq), levels)
}

pub(crate) fn quantize_q4_k(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK_K>(x).zip(blocks_mut::<Q4_K_BYTES>(dst)) {
        let (d, dmin, scales, levels) = fit_k4(x, 15);
        b.fill(0);
        b[0..2].copy_from_slice(&d.to_le_bytes());
        b[2..4].copy_from_slice(&dmin.to_le_bytes());
        b[4..16].copy_from_slice(&scales);
        for (i, &q) in levels.iter().enumerate() {
            let (quarter, second, l) = (i / 64, (i / 32) % 2, i % 32);
            b[16 + 32 * quarter + l] |= q << (4 * second);
        }
    }
}

pub(crate) fn quantize_q5_k(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK_K>(x).zip(blocks_mut::<Q5_K_BYTES>(dst)) {
        let (d, dmin, scales, levels) = fit_k4(x, 31);
        b.fill(0);
        b[0..2].copy_from_slice(&d.to_le_bytes());
        b[2..4].copy_from_slice(&dmin.to_le_bytes());
        b[4..16].copy_from_slice(&scales);
        for (i, &q) in levels.iter().enumerate() {
            let (quarter, second, l) = (i / 64, (i / 32) % 2, i % 32);
            b[48 + 32 * quarter + l] |= (q & 0x0F) << (4 * second);
            b[16 + l] |= (q >> 4) << (i / 32);
        }
    }
}

pub(crate) fn quantize_q6_k(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK_K>(x).zip(blocks_mut::<Q6_K_BYTES>(dst)) {
        let mut sc = [0.0f32; 16];
        for (j, g) in x.chunks_exact(16).enumerate() {
            sc[j] = fit_symmetric(g, 32);
        }
        let (d, scq) = quantize_signed(&sc, 128);
        let df = d.to_f32();
        b.fill(0);
        for (i, &v) in x.iter().enumerate() {
            let j = i / 16;
            let q = (level_symmetric(v, df * scq[j] as f32, 32) + 32) as u8; // 0..64
            let (half, k, l) = (i / 128, (i / 32) % 4, i % 32);
            let lo_idx = 64 * half + 32 * (k % 2) + l;
            b[lo_idx] |= (q & 0x0F) << (4 * (k / 2));
            b[128 + 32 * half + l] |= (q >> 4) << (2 * k);
        }
        for (j, &c) in scq.iter().enumerate() {
            b[192 + j] = c as u8;
        }
        b[208..210].copy_from_slice(&d.to_le_bytes());
    }
}
