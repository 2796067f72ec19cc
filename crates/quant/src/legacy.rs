//! The 32-element block formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1: layouts,
//! dequantization, reference quantizers, activation quantizers and dot products.
//!
//! Layouts (all little-endian, f16 = IEEE binary16):
//! - Q4_0: `d: f16`, `qs: [u8; 16]`; element `j` (< 16) is the low nibble of `qs[j]`,
//!   element `j + 16` the high nibble; value = `(nibble - 8) * d`.
//! - Q4_1: `d: f16`, `m: f16`, `qs: [u8; 16]`; value = `nibble * d + m`.
//! - Q5_0: `d: f16`, `qh: u32`, `qs: [u8; 16]`; bit `i` of `qh` is bit 4 of element `i`;
//!   value = `(q - 16) * d`.
//! - Q5_1: `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]`; value = `q * d + m`.
//! - Q8_0: `d: f16`, `qs: [i8; 32]`; value = `q * d`.
//! - Q8_1: `d: f16`, `s: f16` (= `d * Σq`), `qs: [i8; 32]`; value = `q * d`.

use crate::bytes::{
    blocks, blocks_mut, f32_to_f16_bytes, groups, groups_mut, h2f, round_away, round_ne,
};
use half::f16;

/// Elements per block of every format in this module.
pub const QK: usize = 32;

pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;
pub const Q8_0_BYTES: usize = 34;
pub const Q8_1_BYTES: usize = 36;

/// A parsed Q4_0 block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_0<'a> {
    pub d: f16,
    pub qs: &'a [u8; 16],
}

impl<'a> BlockQ4_0<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q4_0_BYTES]) -> Self {
        let [d0, d1, qs @ ..] = b;
        Self {
            d: f16::from_le_bytes([*d0, *d1]),
            qs,
        }
    }
}

/// A parsed Q4_1 block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_1<'a> {
    pub d: f16,
    pub m: f16,
    pub qs: &'a [u8; 16],
}

impl<'a> BlockQ4_1<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q4_1_BYTES]) -> Self {
        let [d0, d1, m0, m1, qs @ ..] = b;
        Self {
            d: f16::from_le_bytes([*d0, *d1]),
            m: f16::from_le_bytes([*m0, *m1]),
            qs,
        }
    }
}

/// A parsed Q5_0 block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_0<'a> {
    pub d: f16,
    pub qh: u32,
    pub qs: &'a [u8; 16],
}

impl<'a> BlockQ5_0<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q5_0_BYTES]) -> Self {
        let [d0, d1, h0, h1, h2, h3, qs @ ..] = b;
        Self {
            d: f16::from_le_bytes([*d0, *d1]),
            qh: u32::from_le_bytes([*h0, *h1, *h2, *h3]),
            qs,
        }
    }
}

/// A parsed Q5_1 block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_1<'a> {
    pub d: f16,
    pub m: f16,
    pub qh: u32,
    pub qs: &'a [u8; 16],
}

impl<'a> BlockQ5_1<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q5_1_BYTES]) -> Self {
        let [d0, d1, m0, m1, h0, h1, h2, h3, qs @ ..] = b;
        Self {
            d: f16::from_le_bytes([*d0, *d1]),
            m: f16::from_le_bytes([*m0, *m1]),
            qh: u32::from_le_bytes([*h0, *h1, *h2, *h3]),
            qs,
        }
    }
}

/// A parsed Q8_0 block (`qs` holds two's-complement `i8`s).
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0<'a> {
    pub d: f16,
    pub qs: &'a [u8; 32],
}

impl<'a> BlockQ8_0<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q8_0_BYTES]) -> Self {
        let [d0, d1, qs @ ..] = b;
        Self {
            d: f16::from_le_bytes([*d0, *d1]),
            qs,
        }
    }
}

/// A parsed Q8_1 block (`qs` holds two's-complement `i8`s).
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_1<'a> {
    pub d: f16,
    pub s: f16,
    pub qs: &'a [u8; 32],
}

impl<'a> BlockQ8_1<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q8_1_BYTES]) -> Self {
        let [d0, d1, s0, s1, qs @ ..] = b;
        Self {
            d: f16::from_le_bytes([*d0, *d1]),
            s: f16::from_le_bytes([*s0, *s1]),
            qs,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Unpacking: each block's integer levels in element order (element `j < 16` from the low
// nibble of byte `j`, element `j + 16` from its high nibble; Q5's fifth bit of element
// `i` is bit `i` of `qh`).

#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [u8; QK] {
    let mut out = [0u8; QK];
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
        *l = b & 0x0F;
        *h = b >> 4;
    }
    out
}

#[inline(always)]
fn five_bits(qs: &[u8; 16], qh: u32) -> [u8; QK] {
    let mut out = nibbles(qs);
    for (i, v) in out.iter_mut().enumerate() {
        *v |= (((qh >> i) & 1) as u8) << 4;
    }
    out
}

impl BlockQ4_0<'_> {
    /// Signed levels, `nibble - 8`.
    #[inline(always)]
    pub fn levels(&self) -> [i8; QK] {
        nibbles(self.qs).map(|v| v as i8 - 8)
    }
}

impl BlockQ4_1<'_> {
    /// Levels 0..=15.
    #[inline(always)]
    pub fn levels(&self) -> [u8; QK] {
        nibbles(self.qs)
    }
}

impl BlockQ5_0<'_> {
    /// Signed levels, `q - 16`.
    #[inline(always)]
    pub fn levels(&self) -> [i8; QK] {
        five_bits(self.qs, self.qh).map(|v| v as i8 - 16)
    }
}

impl BlockQ5_1<'_> {
    /// Levels 0..=31.
    #[inline(always)]
    pub fn levels(&self) -> [u8; QK] {
        five_bits(self.qs, self.qh)
    }
}

// ---------------------------------------------------------------------------------------
// Dequantization (callers have checked lengths). Same f32 operations as ggml/gguf-py:
// `q * d` and `q * d + m`.

pub(crate) fn dequant_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q4_0_BYTES>(src).zip(groups_mut::<QK>(dst)) {
        let b = BlockQ4_0::parse(b);
        let d = h2f(b.d);
        for (o, q) in y.iter_mut().zip(b.levels()) {
            *o = q as f32 * d;
        }
    }
}

pub(crate) fn dequant_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q4_1_BYTES>(src).zip(groups_mut::<QK>(dst)) {
        let b = BlockQ4_1::parse(b);
        let (d, m) = (h2f(b.d), h2f(b.m));
        for (o, q) in y.iter_mut().zip(b.levels()) {
            *o = q as f32 * d + m;
        }
    }
}

pub(crate) fn dequant_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q5_0_BYTES>(src).zip(groups_mut::<QK>(dst)) {
        let b = BlockQ5_0::parse(b);
        let d = h2f(b.d);
        for (o, q) in y.iter_mut().zip(b.levels()) {
            *o = q as f32 * d;
        }
    }
}

pub(crate) fn dequant_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q5_1_BYTES>(src).zip(groups_mut::<QK>(dst)) {
        let b = BlockQ5_1::parse(b);
        let (d, m) = (h2f(b.d), h2f(b.m));
        for (o, q) in y.iter_mut().zip(b.levels()) {
            *o = q as f32 * d + m;
        }
    }
}

pub(crate) fn dequant_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q8_0_BYTES>(src).zip(groups_mut::<QK>(dst)) {
        let b = BlockQ8_0::parse(b);
        let d = h2f(b.d);
        for (o, &q) in y.iter_mut().zip(b.qs) {
            *o = q as i8 as f32 * d;
        }
    }
}

pub(crate) fn dequant_q8_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q8_1_BYTES>(src).zip(groups_mut::<QK>(dst)) {
        let b = BlockQ8_1::parse(b);
        let d = h2f(b.d);
        for (o, &q) in y.iter_mut().zip(b.qs) {
            *o = q as i8 as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reference quantizers. These reproduce ggml's `quantize_row_*_ref` arithmetic step by
// step (f32 operations in the same order, truncating casts, the same clamps), which is
// also what the `gguf` Python package implements, so the bytes are identical.

/// The element of largest magnitude, keeping its sign; the first one wins ties.
#[inline(always)]
fn signed_absmax(x: &[f32; QK]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline(always)]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `x as u8` of a non-negative float already bounded by the caller, then clamped.
/// The C code goes through `int8_t`, which is the same for the in-range values produced.
#[inline(always)]
fn trunc_clamp(v: f32, max: i32) -> u8 {
    (v as i32).clamp(0, max) as u8
}

pub(crate) fn quantize_q4_0(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK>(x).zip(blocks_mut::<Q4_0_BYTES>(dst)) {
        let max = signed_absmax(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let [d0, d1, qs @ ..] = b;
        [*d0, *d1] = f32_to_f16_bytes(d);
        for j in 0..16 {
            let lo = trunc_clamp(x[j] * id + 8.5, 15);
            let hi = trunc_clamp(x[j + 16] * id + 8.5, 15);
            qs[j] = lo | (hi << 4);
        }
    }
}

pub(crate) fn quantize_q4_1(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK>(x).zip(blocks_mut::<Q4_1_BYTES>(dst)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let [d0, d1, m0, m1, qs @ ..] = b;
        [*d0, *d1] = f32_to_f16_bytes(d);
        [*m0, *m1] = f32_to_f16_bytes(min);
        for j in 0..16 {
            let lo = trunc_clamp((x[j] - min) * id + 0.5, 15);
            let hi = trunc_clamp((x[j + 16] - min) * id + 0.5, 15);
            qs[j] = lo | (hi << 4);
        }
    }
}

pub(crate) fn quantize_q5_0(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK>(x).zip(blocks_mut::<Q5_0_BYTES>(dst)) {
        let max = signed_absmax(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let [d0, d1, h0, h1, h2, h3, qs @ ..] = b;
        [*d0, *d1] = f32_to_f16_bytes(d);
        let mut qh = 0u32;
        for j in 0..16 {
            let lo = trunc_clamp(x[j] * id + 16.5, 31);
            let hi = trunc_clamp(x[j + 16] * id + 16.5, 31);
            qs[j] = (lo & 0x0F) | ((hi & 0x0F) << 4);
            qh |= ((lo as u32 >> 4) & 1) << j;
            qh |= ((hi as u32 >> 4) & 1) << (j + 16);
        }
        [*h0, *h1, *h2, *h3] = qh.to_le_bytes();
    }
}

pub(crate) fn quantize_q5_1(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK>(x).zip(blocks_mut::<Q5_1_BYTES>(dst)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let [d0, d1, m0, m1, h0, h1, h2, h3, qs @ ..] = b;
        [*d0, *d1] = f32_to_f16_bytes(d);
        [*m0, *m1] = f32_to_f16_bytes(min);
        let mut qh = 0u32;
        for j in 0..16 {
            let lo = trunc_clamp((x[j] - min) * id + 0.5, 31);
            let hi = trunc_clamp((x[j + 16] - min) * id + 0.5, 31);
            qs[j] = (lo & 0x0F) | ((hi & 0x0F) << 4);
            qh |= ((lo as u32 >> 4) & 1) << j;
            qh |= ((hi as u32 >> 4) & 1) << (j + 16);
        }
        [*h0, *h1, *h2, *h3] = qh.to_le_bytes();
    }
}

/// Q8_0 as ggml's reference (`quantize_row_q8_0_ref`): `d = amax / 127`, values scaled
/// by `1 / d` and rounded half away from zero. Used for weights.
pub(crate) fn quantize_q8_0_ref(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK>(x).zip(blocks_mut::<Q8_0_BYTES>(dst)) {
        let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let [d0, d1, qs @ ..] = b;
        [*d0, *d1] = f32_to_f16_bytes(d);
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (round_away(v * id) as i32).clamp(-128, 127) as i8 as u8;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Activation quantizers, matching llama.cpp's x86 CPU backend built with AVX/AVX2 (also
// the path taken by AVX-512 builds). They differ from the reference in two ways: the
// multiplier is `127 / amax` (not `1 / d`), and rounding is to nearest *even*.

/// The AVX `round_ps(NEAREST)` + `cvtps_epi32` sequence: NaN and out-of-range values
/// become `i32::MIN`.
#[inline(always)]
fn avx_round_to_i32(v: f32) -> i32 {
    let r = round_ne(v);
    if (-2_147_483_648.0..2_147_483_648.0).contains(&r) {
        r as i32
    } else {
        i32::MIN
    }
}

/// Quantizes one 32-element group the AVX2 way; returns `d` (as f32) and `Σq`.
#[inline(always)]
fn q8_avx_block(x: &[f32; QK], qs: &mut [u8; 32]) -> (f32, i32) {
    let mut amax = 0.0f32;
    for &v in x {
        // `max_ps(acc, |v|)`: a NaN lane is dropped by keeping the accumulator.
        let a = v.abs();
        if a > amax {
            amax = a;
        }
    }
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        let i = avx_round_to_i32(v * id);
        // The kernel sums the 32-bit lanes before the saturating packs, with wrap-around
        // (which only matters when the multiplier overflowed to infinity).
        sum = sum.wrapping_add(i);
        *q = i.clamp(-128, 127) as i8 as u8;
    }
    (d, sum)
}

pub(crate) fn quantize_act_q8_0(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK>(x).zip(blocks_mut::<Q8_0_BYTES>(dst)) {
        let [d0, d1, qs @ ..] = b;
        let (d, _) = q8_avx_block(x, qs);
        [*d0, *d1] = f32_to_f16_bytes(d);
    }
}

pub(crate) fn quantize_act_q8_1(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK>(x).zip(blocks_mut::<Q8_1_BYTES>(dst)) {
        let [d0, d1, s0, s1, qs @ ..] = b;
        let (d, sum) = q8_avx_block(x, qs);
        [*d0, *d1] = f32_to_f16_bytes(d);
        // The sum uses the unrounded f32 `d`, as the kernel does.
        [*s0, *s1] = f32_to_f16_bytes(d * sum as f32);
    }
}

// ---------------------------------------------------------------------------------------
// Dot products of a weight row with an activation row in the paired format: an integer
// sum per block, then scaled and accumulated in f32 in block order, with the scale
// products grouped as in ggml's scalar kernels.

#[inline(always)]
fn dot_i8(v: &[i8; QK], q: &[u8; 32]) -> i32 {
    v.iter()
        .zip(q)
        .map(|(&a, &b)| a as i32 * b as i8 as i32)
        .sum()
}

#[inline(always)]
fn dot_u8(v: &[u8; QK], q: &[u8; 32]) -> i32 {
    v.iter()
        .zip(q)
        .map(|(&a, &b)| a as i32 * b as i8 as i32)
        .sum()
}

pub(crate) fn dot_q4_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q4_0_BYTES>(w).zip(blocks::<Q8_0_BYTES>(a)) {
        let (x, y) = (BlockQ4_0::parse(wb), BlockQ8_0::parse(ab));
        let sumi = dot_i8(&x.levels(), y.qs);
        sumf += sumi as f32 * h2f(x.d) * h2f(y.d);
    }
    sumf
}

/// Q4_1/Q5_1 with Q8_1: `d_x d_y Σ q_x q_y + m_x s_y`, where `s_y = d_y Σ q_y`.
pub(crate) fn dot_q4_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q4_1_BYTES>(w).zip(blocks::<Q8_1_BYTES>(a)) {
        let (x, y) = (BlockQ4_1::parse(wb), BlockQ8_1::parse(ab));
        let sumi = dot_u8(&x.levels(), y.qs);
        sumf += (h2f(x.d) * h2f(y.d)) * sumi as f32 + h2f(x.m) * h2f(y.s);
    }
    sumf
}

pub(crate) fn dot_q5_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q5_0_BYTES>(w).zip(blocks::<Q8_0_BYTES>(a)) {
        let (x, y) = (BlockQ5_0::parse(wb), BlockQ8_0::parse(ab));
        let sumi = dot_i8(&x.levels(), y.qs);
        sumf += (h2f(x.d) * h2f(y.d)) * sumi as f32;
    }
    sumf
}

pub(crate) fn dot_q5_1_q8_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q5_1_BYTES>(w).zip(blocks::<Q8_1_BYTES>(a)) {
        let (x, y) = (BlockQ5_1::parse(wb), BlockQ8_1::parse(ab));
        let sumi = dot_u8(&x.levels(), y.qs);
        sumf += (h2f(x.d) * h2f(y.d)) * sumi as f32 + h2f(x.m) * h2f(y.s);
    }
    sumf
}

pub(crate) fn dot_q8_0_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q8_0_BYTES>(w).zip(blocks::<Q8_0_BYTES>(a)) {
        let (x, y) = (BlockQ8_0::parse(wb), BlockQ8_0::parse(ab));
        let sumi: i32 =
            x.qs.iter()
                .zip(y.qs)
                .map(|(&p, &q)| p as i8 as i32 * q as i8 as i32)
                .sum();
        sumf += sumi as f32 * (h2f(x.d) * h2f(y.d));
    }
    sumf
}
