//! The 256-element "K-quant" super-block formats Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the
//! Q8_K activation format: layouts, dequantization, Q8_K quantization and dot products.
//!
//! Layouts (little-endian; a super-block holds 256 elements in sub-blocks):
//! - Q2_K (84 B): `scales: [u8; 16]` (low nibble scale, high nibble min of each
//!   16-element sub-block), `qs: [u8; 64]` (2-bit values), `d: f16`, `dmin: f16`;
//!   value = `d * sc * q - dmin * m`.
//! - Q3_K (110 B): `hmask: [u8; 32]`, `qs: [u8; 64]` (low 2 bits), `scales: [u8; 12]`
//!   (sixteen 6-bit scales, stored +32), `d: f16`; value = `d * (sc - 32) * q`, with
//!   `q = low2 - 4` when the element's `hmask` bit is clear and `low2` when set.
//! - Q4_K (144 B): `d: f16`, `dmin: f16`, `scales: [u8; 12]` (eight 6-bit scale/min
//!   pairs for 32-element sub-blocks), `qs: [u8; 128]`; value = `d * sc * q - dmin * m`.
//! - Q5_K (176 B): as Q4_K with `qh: [u8; 32]` (bit 4 of each value) before `qs`.
//! - Q6_K (210 B): `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits),
//!   `scales: [i8; 16]`, `d: f16`; value = `d * sc * (q - 32)`.
//! - Q8_K (292 B): `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]` (sum of each group of
//!   16 `qs`); value = `d * q`.
//!
//! Element order inside the packed arrays: values are processed in 128-element halves
//! (64-element quarters for Q4_K/Q5_K); within a half, the `k`-th group of 32 elements
//! takes bits `2k..2k+2` of the same 32 bytes (2-bit fields) or the low/high nibble
//! (4-bit fields).

use crate::bytes::{blocks, groups, groups_mut, h2f, sub};
use half::f16;

/// Elements per super-block.
pub const QK_K: usize = 256;

pub const Q2_K_BYTES: usize = 84;
pub const Q3_K_BYTES: usize = 110;
pub const Q4_K_BYTES: usize = 144;
pub const Q5_K_BYTES: usize = 176;
pub const Q6_K_BYTES: usize = 210;
pub const Q8_K_BYTES: usize = 292;

/// A parsed Q2_K block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2K<'a> {
    pub scales: &'a [u8; 16],
    pub qs: &'a [u8; 64],
    pub d: f16,
    pub dmin: f16,
}

impl<'a> BlockQ2K<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q2_K_BYTES]) -> Self {
        Self {
            scales: sub(b, 0),
            qs: sub(b, 16),
            d: f16::from_le_bytes(*sub(b, 80)),
            dmin: f16::from_le_bytes(*sub(b, 82)),
        }
    }
}

/// A parsed Q3_K block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3K<'a> {
    pub hmask: &'a [u8; 32],
    pub qs: &'a [u8; 64],
    pub scales: &'a [u8; 12],
    pub d: f16,
}

impl<'a> BlockQ3K<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q3_K_BYTES]) -> Self {
        Self {
            hmask: sub(b, 0),
            qs: sub(b, 32),
            scales: sub(b, 96),
            d: f16::from_le_bytes(*sub(b, 108)),
        }
    }

    /// The sixteen signed sub-block scales (already minus 32).
    #[inline(always)]
    pub fn unpacked_scales(&self) -> [i8; 16] {
        unpack_q3k_scales(self.scales)
    }
}

/// A parsed Q4_K block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K<'a> {
    pub d: f16,
    pub dmin: f16,
    pub scales: &'a [u8; 12],
    pub qs: &'a [u8; 128],
}

impl<'a> BlockQ4K<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q4_K_BYTES]) -> Self {
        Self {
            d: f16::from_le_bytes(*sub(b, 0)),
            dmin: f16::from_le_bytes(*sub(b, 2)),
            scales: sub(b, 4),
            qs: sub(b, 16),
        }
    }
}

/// A parsed Q5_K block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5K<'a> {
    pub d: f16,
    pub dmin: f16,
    pub scales: &'a [u8; 12],
    pub qh: &'a [u8; 32],
    pub qs: &'a [u8; 128],
}

impl<'a> BlockQ5K<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q5_K_BYTES]) -> Self {
        Self {
            d: f16::from_le_bytes(*sub(b, 0)),
            dmin: f16::from_le_bytes(*sub(b, 2)),
            scales: sub(b, 4),
            qh: sub(b, 16),
            qs: sub(b, 48),
        }
    }
}

/// A parsed Q6_K block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K<'a> {
    pub ql: &'a [u8; 128],
    pub qh: &'a [u8; 64],
    /// Two's-complement `i8` scales.
    pub scales: &'a [u8; 16],
    pub d: f16,
}

impl<'a> BlockQ6K<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q6_K_BYTES]) -> Self {
        Self {
            ql: sub(b, 0),
            qh: sub(b, 128),
            scales: sub(b, 192),
            d: f16::from_le_bytes(*sub(b, 208)),
        }
    }
}

/// A parsed Q8_K block.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K<'a> {
    pub d: f32,
    /// Two's-complement `i8` values.
    pub qs: &'a [u8; 256],
    pub bsums: [i16; 16],
}

impl<'a> BlockQ8K<'a> {
    #[inline(always)]
    pub fn parse(b: &'a [u8; Q8_K_BYTES]) -> Self {
        let raw: &[u8; 32] = sub(b, 260);
        let mut bsums = [0i16; 16];
        for (s, p) in bsums.iter_mut().zip(raw.chunks_exact(2)) {
            *s = i16::from_le_bytes([p[0], p[1]]);
        }
        Self {
            d: f32::from_le_bytes(*sub(b, 0)),
            qs: sub(b, 4),
            bsums,
        }
    }
}

/// Unpacks Q3_K's twelve scale bytes: the low 4 bits of scale `j` are a nibble of byte
/// `j % 8` (low nibble for `j < 8`), the high 2 bits are bits `2*(j/4)..` of byte
/// `8 + j % 4`; the stored value is offset by 32.
#[inline(always)]
pub fn unpack_q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i32 - 32) as i8;
    }
    out
}

/// Unpacks Q4_K/Q5_K's twelve scale bytes into eight 6-bit scales and eight 6-bit mins.
/// Pairs 0..4 sit in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins); pairs 4..8
/// keep their low 4 bits in the nibbles of bytes 8..12 and their high 2 bits in the top
/// bits of bytes 0..4 (scales) and 4..8 (mins).
#[inline(always)]
pub fn unpack_k4_scales(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

// ---------------------------------------------------------------------------------------
// Unpacking: every block's integer levels, in element order. Dequantization and the dot
// products both start from these, so the bit layouts are written down once.

impl BlockQ2K<'_> {
    /// The 2-bit levels (0..=3).
    #[inline(always)]
    pub fn levels(&self) -> [u8; QK_K] {
        let mut out = [0u8; QK_K];
        for (half, o) in out.chunks_exact_mut(128).enumerate() {
            let qs = sub::<32>(self.qs, 32 * half);
            for (k, g) in o.chunks_exact_mut(32).enumerate() {
                for (v, &q) in g.iter_mut().zip(qs) {
                    *v = (q >> (2 * k)) & 3;
                }
            }
        }
        out
    }
}

impl BlockQ3K<'_> {
    /// The signed 3-bit levels (-4..=3): low two bits from `qs`, minus 4 unless the
    /// element's `hmask` bit is set.
    #[inline(always)]
    pub fn levels(&self) -> [i8; QK_K] {
        let mut out = [0i8; QK_K];
        for (half, o) in out.chunks_exact_mut(128).enumerate() {
            let qs = sub::<32>(self.qs, 32 * half);
            for (k, g) in o.chunks_exact_mut(32).enumerate() {
                let bit = 4 * half + k;
                for ((v, &q), &h) in g.iter_mut().zip(qs).zip(self.hmask) {
                    let low = ((q >> (2 * k)) & 3) as i8;
                    let high = ((h >> bit) & 1) as i8;
                    *v = low - 4 + 4 * high;
                }
            }
        }
        out
    }
}

/// The 4-bit levels of a Q4_K/Q5_K `qs` array: each 64-element quarter takes the low
/// nibbles of its 32 bytes, then the high nibbles.
#[inline(always)]
fn k4_nibbles(qs: &[u8; 128]) -> [u8; QK_K] {
    let mut out = [0u8; QK_K];
    for (quarter, o) in out.chunks_exact_mut(64).enumerate() {
        let q = sub::<32>(qs, 32 * quarter);
        let (lo, hi) = o.split_at_mut(32);
        for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
            *l = b & 0x0F;
            *h = b >> 4;
        }
    }
    out
}

impl BlockQ4K<'_> {
    /// The 4-bit levels (0..=15).
    #[inline(always)]
    pub fn levels(&self) -> [u8; QK_K] {
        k4_nibbles(self.qs)
    }
}

impl BlockQ5K<'_> {
    /// The 5-bit levels (0..=31): bit 4 of element `i` is bit `i / 32` of `qh[i % 32]`.
    #[inline(always)]
    pub fn levels(&self) -> [u8; QK_K] {
        let mut out = k4_nibbles(self.qs);
        for (s, g) in out.chunks_exact_mut(32).enumerate() {
            for (v, &h) in g.iter_mut().zip(self.qh) {
                *v |= ((h >> s) & 1) << 4;
            }
        }
        out
    }
}

impl BlockQ6K<'_> {
    /// The signed 6-bit levels (-32..=31). In each 128-element half, groups 0 and 2 use
    /// `ql` bytes 0..32 (low, high nibble), groups 1 and 3 bytes 32..64; group `k` takes
    /// bits `2k..2k+2` of the half's 32 `qh` bytes.
    #[inline(always)]
    pub fn levels(&self) -> [i8; QK_K] {
        let mut out = [0i8; QK_K];
        for (half, o) in out.chunks_exact_mut(128).enumerate() {
            let ql = sub::<64>(self.ql, 64 * half);
            let qh = sub::<32>(self.qh, 32 * half);
            let (o01, o23) = o.split_at_mut(64);
            let (o0, o1) = o01.split_at_mut(32);
            let (o2, o3) = o23.split_at_mut(32);
            for l in 0..32 {
                let (h, lo, hi) = (qh[l], ql[l], ql[l + 32]);
                o0[l] = ((lo & 0x0F) | ((h & 3) << 4)) as i8 - 32;
                o1[l] = ((hi & 0x0F) | (((h >> 2) & 3) << 4)) as i8 - 32;
                o2[l] = ((lo >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
                o3[l] = ((hi >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Dequantization. The f32 expressions keep ggml's (and gguf-py's) operation order:
// `(d * sc) * q - (dmin * m)`, so results are bit-identical.

pub(crate) fn dequant_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q2_K_BYTES>(src).zip(groups_mut::<QK_K>(dst)) {
        let b = BlockQ2K::parse(b);
        let (d, dmin) = (h2f(b.d), h2f(b.dmin));
        let levels = b.levels();
        for ((out, q), &sc) in y
            .chunks_exact_mut(16)
            .zip(levels.chunks_exact(16))
            .zip(b.scales)
        {
            let dl = d * (sc & 0x0F) as f32;
            let ml = dmin * (sc >> 4) as f32;
            for (o, &q) in out.iter_mut().zip(q) {
                *o = dl * q as f32 - ml;
            }
        }
    }
}

pub(crate) fn dequant_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q3_K_BYTES>(src).zip(groups_mut::<QK_K>(dst)) {
        let b = BlockQ3K::parse(b);
        let d = h2f(b.d);
        let levels = b.levels();
        let scales = b.unpacked_scales();
        for ((out, q), &sc) in y
            .chunks_exact_mut(16)
            .zip(levels.chunks_exact(16))
            .zip(&scales)
        {
            let dl = d * sc as f32;
            for (o, &q) in out.iter_mut().zip(q) {
                *o = dl * q as f32;
            }
        }
    }
}

/// Q4_K/Q5_K: 32-element sub-blocks with a 6-bit scale and min each.
#[inline(always)]
fn dequant_k4(d: f16, dmin: f16, scales: &[u8; 12], levels: &[u8; QK_K], y: &mut [f32; QK_K]) {
    let (d, dmin) = (h2f(d), h2f(dmin));
    let (sc, mn) = unpack_k4_scales(scales);
    for (s, (out, q)) in y
        .chunks_exact_mut(32)
        .zip(levels.chunks_exact(32))
        .enumerate()
    {
        let d1 = d * sc[s] as f32;
        let m1 = dmin * mn[s] as f32;
        for (o, &q) in out.iter_mut().zip(q) {
            *o = d1 * q as f32 - m1;
        }
    }
}

pub(crate) fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q4_K_BYTES>(src).zip(groups_mut::<QK_K>(dst)) {
        let b = BlockQ4K::parse(b);
        dequant_k4(b.d, b.dmin, b.scales, &b.levels(), y);
    }
}

pub(crate) fn dequant_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q5_K_BYTES>(src).zip(groups_mut::<QK_K>(dst)) {
        let b = BlockQ5K::parse(b);
        dequant_k4(b.d, b.dmin, b.scales, &b.levels(), y);
    }
}

pub(crate) fn dequant_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q6_K_BYTES>(src).zip(groups_mut::<QK_K>(dst)) {
        let b = BlockQ6K::parse(b);
        let d = h2f(b.d);
        let levels = b.levels();
        for ((out, q), &sc) in y
            .chunks_exact_mut(16)
            .zip(levels.chunks_exact(16))
            .zip(b.scales)
        {
            let ds = d * sc as i8 as f32;
            for (o, &q) in out.iter_mut().zip(q) {
                *o = ds * q as f32;
            }
        }
    }
}

pub(crate) fn dequant_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<Q8_K_BYTES>(src).zip(groups_mut::<QK_K>(dst)) {
        let b = BlockQ8K::parse(b);
        for (out, &q) in y.iter_mut().zip(b.qs) {
            *out = b.d * q as i8 as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Q8_K activation quantization: ggml's reference (which the x86 backend uses as is).
// The scale maps the signed element of largest magnitude to -127; rounding is ggml's
// `nearest_int` (add 1.5 * 2^23), i.e. half to even.

/// ggml's `nearest_int`: adding 1.5 * 2^23 leaves the rounded (half to even) integer in
/// the low mantissa bits. Exact for |f| < 2^22; for other inputs (inf, NaN) it yields what
/// the bit pattern gives, as in ggml.
#[inline(always)]
fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0;
    (v.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

pub(crate) fn quantize_act_q8_k(x: &[f32], dst: &mut [u8]) {
    for (x, b) in groups::<QK_K>(x).zip(dst.chunks_exact_mut(Q8_K_BYTES)) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let (head, rest) = b.split_at_mut(4);
        let (qs, bsums) = rest.split_at_mut(QK_K);
        if amax == 0.0 {
            // ggml leaves the group sums unwritten here; zero is what they would hold.
            head.fill(0);
            qs.fill(0);
            bsums.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in qs.iter_mut().zip(x) {
            // ggml stores `min(127, v)` into an int8, i.e. keeps the low byte; that only
            // differs from a clamp for the non-finite products of a subnormal maximum.
            *q = nearest_int(iscale * v).min(127) as u8;
        }
        for (g, s) in qs.chunks_exact(16).zip(bsums.chunks_exact_mut(2)) {
            let sum: i32 = g.iter().map(|&q| q as i8 as i32).sum();
            s.copy_from_slice(&(sum as i16).to_le_bytes());
        }
        head.copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// Dot products with Q8_K activations: per sub-block integer sums, weighted by the integer
// sub-block scales, scaled once per super-block by `d_w * d_a`; the min terms use the
// activation's precomputed group sums (as ggml's kernels do).

/// Integer dot product of unsigned levels with Q8_K's signed bytes.
#[inline(always)]
fn dot_u8(v: &[u8], q: &[u8]) -> i32 {
    v.iter()
        .zip(q)
        .map(|(&a, &b)| a as i32 * b as i8 as i32)
        .sum()
}

/// Integer dot product of signed levels with Q8_K's signed bytes.
#[inline(always)]
fn dot_i8(v: &[i8], q: &[u8]) -> i32 {
    v.iter()
        .zip(q)
        .map(|(&a, &b)| a as i32 * b as i8 as i32)
        .sum()
}

/// `Σ bsums[j] * mins[j / 2]`: the min term of the 32-element sub-block formats.
#[inline(always)]
fn k4_min_sum(bsums: &[i16; 16], mins: &[u8; 8]) -> i32 {
    bsums
        .iter()
        .enumerate()
        .map(|(j, &s)| s as i32 * mins[j / 2] as i32)
        .sum()
}

pub(crate) fn dot_q2_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q2_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        let (x, y) = (BlockQ2K::parse(wb), BlockQ8K::parse(ab));
        let summs: i32 = y
            .bsums
            .iter()
            .zip(x.scales)
            .map(|(&s, &sc)| s as i32 * (sc >> 4) as i32)
            .sum();
        let levels = x.levels();
        let mut isum = 0i32;
        for ((v, q), &sc) in levels
            .chunks_exact(16)
            .zip(y.qs.chunks_exact(16))
            .zip(x.scales)
        {
            isum += (sc & 0x0F) as i32 * dot_u8(v, q);
        }
        let dall = y.d * h2f(x.d);
        let dmin = y.d * h2f(x.dmin);
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

pub(crate) fn dot_q3_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q3_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        let (x, y) = (BlockQ3K::parse(wb), BlockQ8K::parse(ab));
        let levels = x.levels();
        let scales = x.unpacked_scales();
        let mut isum = 0i32;
        for ((v, q), &sc) in levels
            .chunks_exact(16)
            .zip(y.qs.chunks_exact(16))
            .zip(&scales)
        {
            isum += sc as i32 * dot_i8(v, q);
        }
        sumf += (h2f(x.d) * y.d) * isum as f32;
    }
    sumf
}

/// Q4_K/Q5_K with Q8_K: `d * Σ sc_j (q·a)_j - dmin * Σ m_j bsum_j`.
#[inline(always)]
fn dot_k4(d: f16, dmin: f16, scales: &[u8; 12], levels: &[u8; QK_K], y: &BlockQ8K<'_>) -> f32 {
    let (sc, mn) = unpack_k4_scales(scales);
    let mut isum = 0i32;
    for ((v, q), &s) in levels.chunks_exact(32).zip(y.qs.chunks_exact(32)).zip(&sc) {
        isum += s as i32 * dot_u8(v, q);
    }
    let summs = k4_min_sum(&y.bsums, &mn);
    let d = h2f(d) * y.d;
    let dmin = h2f(dmin) * y.d;
    d * isum as f32 - dmin * summs as f32
}

pub(crate) fn dot_q4_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q4_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        let (x, y) = (BlockQ4K::parse(wb), BlockQ8K::parse(ab));
        sumf += dot_k4(x.d, x.dmin, x.scales, &x.levels(), &y);
    }
    sumf
}

pub(crate) fn dot_q5_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q5_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        let (x, y) = (BlockQ5K::parse(wb), BlockQ8K::parse(ab));
        sumf += dot_k4(x.d, x.dmin, x.scales, &x.levels(), &y);
    }
    sumf
}

pub(crate) fn dot_q6_k_q8_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (wb, ab) in blocks::<Q6_K_BYTES>(w).zip(blocks::<Q8_K_BYTES>(a)) {
        let (x, y) = (BlockQ6K::parse(wb), BlockQ8K::parse(ab));
        let levels = x.levels();
        let mut isum = 0i32;
        for ((v, q), &sc) in levels
            .chunks_exact(16)
            .zip(y.qs.chunks_exact(16))
            .zip(x.scales)
        {
            isum += sc as i8 as i32 * dot_i8(v, q);
        }
        sumf += (h2f(x.d) * y.d) * isum as f32;
    }
    sumf
}
