//! Panel kernels of the 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): a run
//! of weight rows against a run of activation rows, in register tiles, for the batched
//! products of prefill ([`crate::PanelFn`]).
//!
//! Every (row, token) result goes through exactly the float steps of the single-row AVX2
//! kernels in `legacy_dot`: per block the eight exact i32 lane sums (lane `k` = the
//! products of bytes `4k..4k+4`), converted to f32, the scale `f32(d_w) * f32(d_a)`
//! rounded once, one `fma` into that pair's own eight-lane accumulator, blocks in order,
//! then the same horizontal sum (plus, for Q4_1/Q5_1, the `m_w * s_a` terms summed with
//! `fma` in block order and added last). Only the integer sums are computed differently,
//! and integers are exact, so the bits are the same.
//!
//! Two variants:
//! - AVX-512 (F, BW, VL, VNNI): one 512-bit register holds two (row, token) accumulators
//!   side by side (the weight block broadcast to both halves, two tokens' activation
//!   blocks next to each other), and `vpdpbusd` sums the four byte products of each lane
//!   exactly. It multiplies unsigned by signed bytes, so the weights enter as unsigned
//!   levels `u = x + off` (`off` = 8 for Q4_0, 16 for Q5_0, 128 for Q8_0, 0 for the
//!   formats with a min), and `off · Σy` per lane (computed once per token and block, and
//!   shared by all rows of the tile) is subtracted first: `Σ(u - off)·y` exactly, for
//!   every input, -128 activation bytes included.
//!   A row tile's weights are unpacked once (levels and f32 scales, into a stack buffer)
//!   and reused by every token tile.
//! - AVX2: one 256-bit accumulator per (row, token); `maddubs` + `madd` as in the
//!   single-row kernels, with each token's activation data loaded once per block for all
//!   rows of the tile, and the row tile's weights unpacked once as above.
//!
//! The file also holds AVX-512 forms of the four-row decode kernels
//! ([`crate::VecDotRows4Fn`]), two rows per 512-bit register against one broadcast
//! activation block.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::{hsum_ps, ld256, legacy_dot, prefetch_ahead, prefetch_far};
use crate::legacy::{Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q8_0_BYTES, Q8_1_BYTES};
use crate::GgmlType;

/// Format tags (const generic parameters of the kernels).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

/// Bytes of one weight block of format `k`.
const fn w_bytes(k: u8) -> usize {
    match k {
        Q4_0 => Q4_0_BYTES,
        Q4_1 => Q4_1_BYTES,
        Q5_0 => Q5_0_BYTES,
        Q5_1 => Q5_1_BYTES,
        _ => Q8_0_BYTES,
    }
}

/// Whether format `k` has a min (and pairs with Q8_1 activations).
const fn has_min(k: u8) -> bool {
    matches!(k, Q4_1 | Q5_1)
}

/// Bytes of one activation block paired with format `k`.
const fn a_bytes(k: u8) -> usize {
    if has_min(k) {
        Q8_1_BYTES
    } else {
        Q8_0_BYTES
    }
}

/// Where the 32 quants start in an activation block.
const fn a_qs(k: u8) -> usize {
    if has_min(k) {
        4
    } else {
        2
    }
}

/// The offset subtracted from the unsigned levels of format `k` (0: none).
const fn level_offset(k: u8) -> u8 {
    match k {
        Q4_0 => 8,
        Q5_0 => 16,
        Q8_0 => 128,
        _ => 0,
    }
}

/// The AVX-512 panel of `ty`, if it is a legacy block format.
pub(super) fn panel512(ty: GgmlType) -> Option<crate::PanelFn> {
    Some(match ty {
        GgmlType::Q4_0 => panel512_q4_0,
        GgmlType::Q4_1 => panel512_q4_1,
        GgmlType::Q5_0 => panel512_q5_0,
        GgmlType::Q5_1 => panel512_q5_1,
        GgmlType::Q8_0 => panel512_q8_0,
        _ => return None,
    })
}

/// The AVX2 panel of `ty`, if it is a legacy block format.
pub(super) fn panel256(ty: GgmlType) -> Option<crate::PanelFn> {
    Some(match ty {
        GgmlType::Q4_0 => panel256_q4_0,
        GgmlType::Q4_1 => panel256_q4_1,
        GgmlType::Q5_0 => panel256_q5_0,
        GgmlType::Q5_1 => panel256_q5_1,
        GgmlType::Q8_0 => panel256_q8_0,
        _ => return None,
    })
}

/// The single-row kernel every panel result must equal: the AVX2 kernel where the CPU
/// has it, else the scalar reference (only reached if a panel is called on a CPU without
/// the features, which the dispatch never does).
fn single_row(k: u8) -> crate::VecDotFn {
    match k {
        Q4_0 => legacy_dot::dot_q4_0_q8_0,
        Q4_1 => legacy_dot::dot_q4_1_q8_1,
        Q5_0 => legacy_dot::dot_q5_0_q8_0,
        Q5_1 => legacy_dot::dot_q5_1_q8_1,
        _ => legacy_dot::dot_q8_0_q8_0,
    }
}

/// The shapes a panel call gets, checked once: how many whole blocks each product uses
/// and how many rows and tokens have all their bytes present.
struct Shape {
    rows: usize,
    tokens: usize,
    blocks: usize,
}

/// Checks the panel's inputs for format `k`. `None` when the weights or activations are
/// shorter than the shapes promise (or `tokens` is 0): the caller then takes the
/// pair-by-pair path, which never reads out of bounds.
fn shape<const K: u8>(
    weights: &[u8],
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    tokens: usize,
    out: &[f32],
) -> Option<Shape> {
    let rows = out.len().checked_div(tokens)?;
    if rows * tokens != out.len()
        || weights.len() < rows.checked_mul(row_bytes)?
        || acts.len() < tokens.checked_mul(act_bytes)?
    {
        return None;
    }
    // `vec_dot` multiplies the whole blocks both rows hold.
    let blocks = (row_bytes / w_bytes(K)).min(act_bytes / a_bytes(K));
    Some(Shape {
        rows,
        tokens,
        blocks,
    })
}

/// Every (row, token) result through the single-row kernel, reading through checked
/// slices (a missing row or token gives NaN): the path for malformed shapes and CPUs
/// without the panel's features.
fn pairwise(
    dot: crate::VecDotFn,
    weights: &[u8],
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    tokens: usize,
    out: &mut [f32],
) {
    if tokens == 0 {
        return;
    }
    for (r, o) in out.chunks_mut(tokens).enumerate() {
        let w = weights.get(r * row_bytes..(r + 1) * row_bytes);
        for (t, v) in o.iter_mut().enumerate() {
            let a = acts.get(t * act_bytes..(t + 1) * act_bytes);
            *v = match (w, a) {
                (Some(w), Some(a)) => dot(w, a),
                _ => f32::NAN,
            };
        }
    }
}

/// Defines a safe [`crate::PanelFn`] entry for format `$k` running `$driver` under the
/// CPU check `$check`, else [`pairwise`] with the single-row kernel.
macro_rules! panel_entry {
    ($name:ident, $k:ident, $driver:ident, $check:path) => {
        fn $name(
            weights: &[u8],
            row_bytes: usize,
            acts: &[u8],
            act_bytes: usize,
            tokens: usize,
            out: &mut [f32],
        ) {
            let dot = single_row($k);
            match shape::<$k>(weights, row_bytes, acts, act_bytes, tokens, out) {
                Some(s) if $check() => {
                    // SAFETY: the CPU check confirmed the features the driver is compiled
                    // for; `shape` confirmed that `weights` holds `s.rows` rows of
                    // `row_bytes` and `acts` holds `s.tokens` rows of `act_bytes`, each
                    // with at least `s.blocks` whole blocks, which is all the driver reads.
                    unsafe { $driver::<$k>(weights, row_bytes, acts, act_bytes, &s, out) }
                }
                _ => pairwise(dot, weights, row_bytes, acts, act_bytes, tokens, out),
            }
        }
    };
}

panel_entry!(panel512_q4_0, Q4_0, drive512, super::avx512_available);
panel_entry!(panel512_q4_1, Q4_1, drive512, super::avx512_available);
panel_entry!(panel512_q5_0, Q5_0, drive512, super::avx512_available);
panel_entry!(panel512_q5_1, Q5_1, drive512, super::avx512_available);
panel_entry!(panel512_q8_0, Q8_0, drive512, super::avx512_available);
panel_entry!(panel256_q4_0, Q4_0, drive256, super::available);
panel_entry!(panel256_q4_1, Q4_1, drive256, super::available);
panel_entry!(panel256_q5_0, Q5_0, drive256, super::available);
panel_entry!(panel256_q5_1, Q5_1, drive256, super::available);
panel_entry!(panel256_q8_0, Q8_0, drive256, super::available);

// ---------------------------------------------------------------------------------------
// AVX-512

/// Rows per AVX-512 register tile.
const ROWS_512: usize = 4;
/// Token pairs per AVX-512 register tile (two tokens per 512-bit accumulator).
const PAIRS_512: usize = 4;

/// Most blocks per row for which a row tile's weights are unpacked once into a stack
/// buffer (levels and f32 scales) and reused by every token tile; longer rows (over
/// 8192 elements) unpack each block again per token tile.
const MAX_PACKED_BLOCKS: usize = 256;

/// A row tile's weights unpacked: block `b` of row `r` at `r * blocks + b` (room for
/// `ROWS_512 >= ROWS_256` rows, so both variants use it). Left uninitialized (40 KiB
/// would otherwise be cleared on every call): [`pack512`] / [`pack256`] write the slots
/// of a row tile before its tiles read them.
struct Packed {
    /// The 32 levels (see [`levels512`] / [`levels256`]).
    levels: [MaybeUninit<[u8; 32]>; ROWS_512 * MAX_PACKED_BLOCKS],
    /// `[d, m]` as f32 (`m` unused without a min).
    scales: [MaybeUninit<[f32; 2]>; ROWS_512 * MAX_PACKED_BLOCKS],
}

/// Runs the whole panel in `ROWS_512` x `2 * PAIRS_512` tiles, then the remainders.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `weights` holds `s.rows` rows
/// of `row_bytes` and `acts` `s.tokens` rows of `act_bytes`, each with at least
/// `s.blocks` whole blocks of format `K`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn drive512<const K: u8>(
    weights: &[u8],
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    s: &Shape,
    out: &mut [f32],
) {
    let mut packed = None;
    if s.blocks <= MAX_PACKED_BLOCKS && s.tokens > 2 {
        packed = Some(Packed {
            levels: [const { MaybeUninit::uninit() }; ROWS_512 * MAX_PACKED_BLOCKS],
            scales: [const { MaybeUninit::uninit() }; ROWS_512 * MAX_PACKED_BLOCKS],
        });
    }
    let mut r0 = 0;
    while r0 < s.rows {
        let w = weights.as_ptr().wrapping_add(r0 * row_bytes);
        let pk = packed.as_mut();
        // SAFETY: forwarded from this function's contract, for rows `r0..r0 + R`.
        unsafe {
            if s.rows - r0 >= ROWS_512 {
                rows512::<K, ROWS_512>(w, row_bytes, acts, act_bytes, s, r0, pk, out);
                r0 += ROWS_512;
            } else {
                rows512::<K, 1>(w, row_bytes, acts, act_bytes, s, r0, pk, out);
                r0 += 1;
            }
        }
    }
}

/// Unpacks rows `0..R` from `w` into `pk` (`s.blocks <= MAX_PACKED_BLOCKS`).
///
/// # Safety
/// As [`rows512`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pack512<const K: u8, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    pk: &mut Packed,
) {
    let slots = pk.levels.iter_mut().zip(pk.scales.iter_mut());
    for (i, (lv, sc)) in slots.take(R * blocks).enumerate() {
        let (r, b) = (i / blocks, i % blocks);
        // SAFETY: block `b < blocks` of row `r < R` is readable (the contract).
        unsafe {
            let x = w.add(r * row_bytes + b * w_bytes(K));
            prefetch_ahead(x, 64);
            let u = _mm512_castsi512_si256(levels512::<K>(x));
            _mm256_storeu_si256(lv.as_mut_ptr().cast(), u);
            let xs = _mm_cvtph_ps(_mm_cvtsi32_si128(rd32(x)));
            sc.write([_mm_cvtss_f32(xs), _mm_cvtss_f32(_mm_movehdup_ps(xs))]);
        }
    }
}

/// Rows `r0..r0 + R` (starting at `w`) against every token, through `pk` if given.
///
/// # Safety
/// As [`drive512`], and rows `r0..r0 + R` exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows512<const K: u8, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    s: &Shape,
    r0: usize,
    mut pk: Option<&mut Packed>,
    out: &mut [f32],
) {
    if let Some(pk) = pk.as_deref_mut() {
        // SAFETY: this function's contract; `drive512` packs only short enough rows.
        unsafe { pack512::<K, R>(w, row_bytes, s.blocks, pk) };
    }
    let pk = pk.as_deref();
    let a = acts.as_ptr();
    let tok = |t: usize| a.wrapping_add(t.min(s.tokens - 1) * act_bytes);
    let mut t0 = 0;
    let mut first = true;
    while t0 < s.tokens {
        let left = s.tokens - t0;
        // Pairs of this tile; an odd last token is paired with itself (its second
        // result is dropped).
        let pairs = left.div_ceil(2).min(PAIRS_512);
        let p = |i: usize| [tok(t0 + 2 * i), tok((t0 + 2 * i + 1).min(t0 + left - 1))];
        let wsrc = Weights {
            w,
            row_bytes,
            packed: pk,
            blocks: s.blocks,
            prefetch: first,
        };
        // SAFETY: the token pointers are rows `< s.tokens`; the rest is this function's
        // contract.
        let res: [[f32; 2 * PAIRS_512]; R] = unsafe {
            match (pairs, pk.is_some()) {
                (1, false) => widen(tile512::<K, R, 1, false>(&wsrc, [p(0)])),
                (2, false) => widen(tile512::<K, R, 2, false>(&wsrc, [p(0), p(1)])),
                (3, false) => widen(tile512::<K, R, 3, false>(&wsrc, [p(0), p(1), p(2)])),
                (_, false) => widen(tile512::<K, R, 4, false>(&wsrc, [p(0), p(1), p(2), p(3)])),
                (1, true) => widen(tile512::<K, R, 1, true>(&wsrc, [p(0)])),
                (2, true) => widen(tile512::<K, R, 2, true>(&wsrc, [p(0), p(1)])),
                (3, true) => widen(tile512::<K, R, 3, true>(&wsrc, [p(0), p(1), p(2)])),
                (_, true) => widen(tile512::<K, R, 4, true>(&wsrc, [p(0), p(1), p(2), p(3)])),
            }
        };
        let n = left.min(2 * PAIRS_512);
        for (i, res) in res.iter().enumerate() {
            let at = (r0 + i) * s.tokens + t0;
            if let Some(o) = out.get_mut(at..at + n) {
                o.copy_from_slice(&res[..n]);
            }
        }
        t0 += n;
        first = false;
    }
}

/// Where a tile reads its weight rows from.
struct Weights<'p> {
    /// Row 0 of the tile in the weight matrix; rows `row_bytes` apart.
    w: *const u8,
    row_bytes: usize,
    /// The tile's rows unpacked (tiles instantiated with `PACKED`).
    packed: Option<&'p Packed>,
    blocks: usize,
    /// Prefetch the weight stream (the first token tile of a row tile).
    prefetch: bool,
}

/// The results of a tile with `P` pairs as a full-width row of `2 * PAIRS_512` values.
#[inline(always)]
fn widen<const R: usize, const P: usize>(r: [[[f32; 2]; P]; R]) -> [[f32; 2 * PAIRS_512]; R] {
    r.map(|row| {
        let mut o = [0.0; 2 * PAIRS_512];
        for (o, v) in o.chunks_exact_mut(2).zip(row) {
            o.copy_from_slice(&v);
        }
        o
    })
}

/// Reads 4 bytes from `p` as a little-endian u32.
///
/// # Safety
/// `p..p + 4` is readable.
#[inline(always)]
unsafe fn rd32(p: *const u8) -> i32 {
    // SAFETY: the caller guarantees 4 readable bytes; `read_unaligned` has no alignment
    // needs.
    unsafe { p.cast::<i32>().read_unaligned() }
}

/// The 32 unsigned levels of the weight block at `x`, in element order, in both 256-bit
/// halves.
///
/// # Safety
/// `x` points at a whole block of format `K`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn levels512<const K: u8>(x: *const u8) -> __m512i {
    // SAFETY: every read lies inside the block (the caller's contract): Q8_0 quants at
    // 2..34, Q4 nibbles at 2..18 / 4..20, Q5 high bits and nibbles at 2..22 / 4..24.
    unsafe {
        if K == Q8_0 {
            let q = _mm512_broadcast_i64x4(ld256(x.add(2)));
            return _mm512_xor_si512(q, _mm512_set1_epi8(i8::MIN));
        }
        let qs_at = match K {
            Q4_0 => 2,
            Q4_1 => 4,
            Q5_0 => 6,
            _ => 8,
        };
        let v = _mm512_broadcast_i32x4(_mm_loadu_si128(x.add(qs_at).cast()));
        // Low nibbles (elements 0..16) in the lower 128 bits of each half, high nibbles
        // (16..32) in the upper.
        let both = _mm512_mask_blend_epi64(0b1100_1100, v, _mm512_srli_epi16::<4>(v));
        let nib = _mm512_and_si512(both, _mm512_set1_epi8(0x0F));
        if K == Q4_0 || K == Q4_1 {
            return nib;
        }
        // Five-bit formats: bit `k` of `qh` adds 16 to element `k` (in both halves).
        let qh = rd32(x.add(qs_at - 4)) as u32 as u64;
        let mask = _cvtu64_mask64(qh | (qh << 32));
        _mm512_mask_add_epi8(nib, mask, nib, _mm512_set1_epi8(16))
    }
}

/// One register tile: rows `0..R` of `src` against the `P` token pairs `a` (pointers to
/// the tokens' activation rows), over `src.blocks` blocks; with `PACKED` the weights come
/// from `src.packed` (which must then be `Some` and hold the tile's rows).
///
/// # Safety
/// As [`drive512`]: `src.w + r * src.row_bytes` holds `src.blocks` weight blocks for
/// `r < R`, every pointer in `a` holds `src.blocks` activation blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile512<const K: u8, const R: usize, const P: usize, const PACKED: bool>(
    src: &Weights<'_>,
    a: [[*const u8; 2]; P],
) -> [[[f32; 2]; P]; R] {
    let (w, row_bytes, blocks, prefetch) = (src.w, src.row_bytes, src.blocks, src.prefetch);
    // Slots written by `pack512` for this row tile (the only ones read).
    let (levels, scales): (*const [u8; 32], *const [f32; 2]) = match src.packed {
        Some(pk) if PACKED => (pk.levels.as_ptr().cast(), pk.scales.as_ptr().cast()),
        _ => (core::ptr::null(), core::ptr::null()),
    };
    let wb = w_bytes(K);
    let ab = a_bytes(K);
    let zero = _mm512_setzero_si512();
    let off = _mm512_set1_epi8(level_offset(K) as i8);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let mut mins = [_mm256_setzero_ps(); R];
    // Permutes picking token `2p`'s scale for lanes 0..8 and `2p + 1`'s for 8..16 out of
    // the converted headers (f16 lanes `2j` = d, `2j + 1` = s of token `j`).
    let pick = |p: usize| {
        let (lo, hi) = (4 * p as i32, 4 * p as i32 + 2);
        _mm512_setr_epi32(
            lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi,
        )
    };
    let picks: [__m512i; P] = core::array::from_fn(pick);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15);
    for b in 0..blocks {
        // SAFETY: block `b < blocks` of each token row and weight row is readable (the
        // contract); all offsets stay inside their block.
        unsafe {
            let mut y = [zero; P];
            let mut corr = [zero; P];
            let mut hdr = [0i32; 8];
            for (i, pair) in a.iter().enumerate() {
                let (pa, pb) = (pair[0].add(b * ab), pair[1].add(b * ab));
                let lo = _mm512_castsi256_si512(ld256(pa.add(a_qs(K))));
                y[i] = _mm512_inserti64x4::<1>(lo, ld256(pb.add(a_qs(K))));
                if level_offset(K) != 0 {
                    // -off · (sum of the lane's four activation bytes), exact.
                    corr[i] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, off, y[i]));
                }
                hdr[2 * i] = rd32(pa);
                hdr[2 * i + 1] = rd32(pb);
            }
            // [d_0, s_0, d_1, s_1, ...] (for Q8_0 the odd lanes are quant bytes, unused).
            let h = _mm512_cvtph_ps(_mm256_setr_epi32(
                hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7],
            ));
            let da: [__m512; P] = core::array::from_fn(|i| _mm512_permutexvar_ps(picks[i], h));
            let sa = _mm512_castps512_ps256(_mm512_permutexvar_ps(odd, h));
            for (r, (acc, mins)) in acc.iter_mut().zip(mins.iter_mut()).enumerate() {
                // The levels, and [d_w, m_w] exactly (F16C).
                let (u, dw, mw) = if PACKED && !levels.is_null() {
                    let at = r * blocks + b;
                    let [d, m] = *scales.add(at);
                    let u = _mm512_broadcast_i64x4(ld256(levels.add(at).cast()));
                    (u, _mm512_set1_ps(d), _mm256_set1_ps(m))
                } else {
                    let x = w.add(r * row_bytes + b * wb);
                    if prefetch {
                        prefetch_ahead(x, 64);
                    }
                    let xs = _mm_cvtph_ps(_mm_cvtsi32_si128(rd32(x)));
                    let m = _mm256_broadcastss_ps(_mm_movehdup_ps(xs));
                    (levels512::<K>(x), _mm512_broadcastss_ps(xs), m)
                };
                for i in 0..P {
                    let d = _mm512_mul_ps(dw, da[i]);
                    let q = _mm512_dpbusd_epi32(corr[i], u, y[i]);
                    acc[i] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(q), acc[i]);
                }
                if has_min(K) {
                    *mins = _mm256_fmadd_ps(mw, sa, *mins);
                }
            }
        }
    }
    let mut res = [[[0.0f32; 2]; P]; R];
    for ((res, acc), mins) in res.iter_mut().zip(&acc).zip(&mins) {
        let mut m = [0.0f32; 8];
        // SAFETY: `m` is 8 writable f32s; `storeu` has no alignment needs.
        unsafe { _mm256_storeu_ps(m.as_mut_ptr(), *mins) };
        for (i, (res, acc)) in res.iter_mut().zip(acc).enumerate() {
            let lo = _mm512_castps512_ps256(*acc);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*acc)));
            *res = if has_min(K) {
                [hsum_ps(lo) + m[2 * i], hsum_ps(hi) + m[2 * i + 1]]
            } else {
                [hsum_ps(lo), hsum_ps(hi)]
            };
        }
    }
    res
}

// ---------------------------------------------------------------------------------------
// AVX2

/// Rows per AVX2 register tile (at most `ROWS_512`: the tiles share [`Packed`]).
const ROWS_256: usize = 2;
const _: () = assert!(ROWS_256 <= ROWS_512);
/// Tokens per AVX2 register tile.
const TOKENS_256: usize = 4;

/// Runs the whole panel in `ROWS_256` x `TOKENS_256` tiles, then the remainders.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the slices hold what [`drive512`] asks for.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive256<const K: u8>(
    weights: &[u8],
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    s: &Shape,
    out: &mut [f32],
) {
    if K == Q8_0 && acts_have_min_byte(acts, act_bytes, s) {
        // The sign trick cannot negate -128 (see `legacy_dot::q8_0_q8_0`): the single-row
        // kernel checks block by block. Never the case for quantized activations.
        let a = acts.get(..s.tokens * act_bytes).unwrap_or(&[]);
        let w = weights.get(..s.rows * row_bytes).unwrap_or(&[]);
        pairwise(single_row(K), w, row_bytes, a, act_bytes, s.tokens, out);
        return;
    }
    // As in `drive512`: a row tile's weights unpacked once for all its token tiles.
    let mut packed = None;
    if s.blocks <= MAX_PACKED_BLOCKS && s.tokens > TOKENS_256 {
        packed = Some(Packed {
            levels: [const { MaybeUninit::uninit() }; ROWS_512 * MAX_PACKED_BLOCKS],
            scales: [const { MaybeUninit::uninit() }; ROWS_512 * MAX_PACKED_BLOCKS],
        });
    }
    let mut r0 = 0;
    while r0 < s.rows {
        let w = weights.as_ptr().wrapping_add(r0 * row_bytes);
        let pk = packed.as_mut();
        // SAFETY: forwarded from this function's contract, for rows `r0..r0 + R`.
        unsafe {
            if s.rows - r0 >= ROWS_256 {
                rows256::<K, ROWS_256>(w, row_bytes, acts, act_bytes, s, r0, pk, out);
                r0 += ROWS_256;
            } else {
                rows256::<K, 1>(w, row_bytes, acts, act_bytes, s, r0, pk, out);
                r0 += 1;
            }
        }
    }
}

/// Unpacks rows `0..R` from `w` into `pk` with AVX2 (`blocks <= MAX_PACKED_BLOCKS`,
/// `R <= ROWS_512`); levels as [`levels256`] gives them.
///
/// # Safety
/// As [`rows256`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack256<const K: u8, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    pk: &mut Packed,
) {
    let slots = pk.levels.iter_mut().zip(pk.scales.iter_mut());
    for (i, (lv, sc)) in slots.take(R * blocks).enumerate() {
        let (r, b) = (i / blocks, i % blocks);
        // SAFETY: block `b < blocks` of row `r < R` is readable (the contract).
        unsafe {
            let x = w.add(r * row_bytes + b * w_bytes(K));
            prefetch_ahead(x, 64);
            _mm256_storeu_si256(lv.as_mut_ptr().cast(), levels256::<K>(x));
            let xs = _mm_cvtph_ps(_mm_cvtsi32_si128(rd32(x)));
            sc.write([_mm_cvtss_f32(xs), _mm_cvtss_f32(_mm_movehdup_ps(xs))]);
        }
    }
}

/// Whether any quant byte of the Q8_0 activation rows is -128.
#[target_feature(enable = "avx2,fma,f16c")]
fn acts_have_min_byte(acts: &[u8], act_bytes: usize, s: &Shape) -> bool {
    let min = _mm256_set1_epi8(i8::MIN);
    let mut any = _mm256_setzero_si256();
    for t in 0..s.tokens {
        let Some(row) = acts.get(t * act_bytes..t * act_bytes + s.blocks * Q8_0_BYTES) else {
            return true;
        };
        for y in row.chunks_exact(Q8_0_BYTES) {
            let Some(q) = y.get(2..34) else { continue };
            // SAFETY: `q` is 32 readable bytes.
            let v = unsafe { ld256(q.as_ptr()) };
            any = _mm256_or_si256(any, _mm256_cmpeq_epi8(v, min));
        }
    }
    _mm256_testz_si256(any, any) == 0
}

/// Rows `r0..r0 + R` (starting at `w`) against every token.
///
/// # Safety
/// As [`drive256`], and rows `r0..r0 + R` exist.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows256<const K: u8, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    s: &Shape,
    r0: usize,
    mut pk: Option<&mut Packed>,
    out: &mut [f32],
) {
    if let Some(pk) = pk.as_deref_mut() {
        // SAFETY: this function's contract; `drive256` packs only short enough rows,
        // and `R <= ROWS_256 <= ROWS_512`.
        unsafe { pack256::<K, R>(w, row_bytes, s.blocks, pk) };
    }
    let pk = pk.as_deref();
    let a = acts.as_ptr();
    let tok = |t: usize| a.wrapping_add(t * act_bytes);
    let mut t0 = 0;
    let mut first = true;
    while t0 < s.tokens {
        let n = (s.tokens - t0).min(TOKENS_256);
        let p = |i: usize| tok(t0 + i);
        let src = Weights {
            w,
            row_bytes,
            packed: pk,
            blocks: s.blocks,
            prefetch: first,
        };
        // SAFETY: the token pointers are rows `< s.tokens`; the rest is this function's
        // contract.
        let res: [[f32; TOKENS_256]; R] = unsafe {
            match (n, pk.is_some()) {
                (1, false) => widen256(tile256::<K, R, 1, false>(&src, [p(0)])),
                (2, false) => widen256(tile256::<K, R, 2, false>(&src, [p(0), p(1)])),
                (3, false) => widen256(tile256::<K, R, 3, false>(&src, [p(0), p(1), p(2)])),
                (_, false) => widen256(tile256::<K, R, 4, false>(&src, [p(0), p(1), p(2), p(3)])),
                (1, true) => widen256(tile256::<K, R, 1, true>(&src, [p(0)])),
                (2, true) => widen256(tile256::<K, R, 2, true>(&src, [p(0), p(1)])),
                (3, true) => widen256(tile256::<K, R, 3, true>(&src, [p(0), p(1), p(2)])),
                (_, true) => widen256(tile256::<K, R, 4, true>(&src, [p(0), p(1), p(2), p(3)])),
            }
        };
        for (i, res) in res.iter().enumerate() {
            let at = (r0 + i) * s.tokens + t0;
            if let Some(o) = out.get_mut(at..at + n) {
                o.copy_from_slice(&res[..n]);
            }
        }
        t0 += n;
        first = false;
    }
}

/// The results of a tile with `T` tokens as a full-width row of `TOKENS_256` values.
#[inline(always)]
fn widen256<const R: usize, const T: usize>(r: [[f32; T]; R]) -> [[f32; TOKENS_256]; R] {
    r.map(|row| {
        let mut o = [0.0; TOKENS_256];
        o[..T].copy_from_slice(&row);
        o
    })
}

/// The 32 unsigned levels of the weight block at `x` in element order (for Q8_0: the
/// signed quants themselves).
///
/// # Safety
/// `x` points at a whole block of format `K`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn levels256<const K: u8>(x: *const u8) -> __m256i {
    // SAFETY: every read lies inside the block (the caller's contract).
    unsafe {
        if K == Q8_0 {
            return ld256(x.add(2));
        }
        let qs_at = match K {
            Q4_0 => 2,
            Q4_1 => 4,
            Q5_0 => 6,
            _ => 8,
        };
        let lo = _mm_loadu_si128(x.add(qs_at).cast());
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(lo), lo);
        let nib = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
        if K == Q4_0 || K == Q4_1 {
            return nib;
        }
        let high = _mm256_and_si256(
            super::bits_to_bytes(rd32(x.add(qs_at - 4)) as u32),
            _mm256_set1_epi8(0x10),
        );
        _mm256_or_si256(nib, high)
    }
}

/// One AVX2 register tile: rows `0..R` of `src` against the `T` tokens `a`; with
/// `PACKED` the weights come from `src.packed` (unpacked by [`pack256`]).
///
/// # Safety
/// As [`tile512`] (with AVX2, FMA and F16C), and for Q8_0 no activation quant is -128.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile256<const K: u8, const R: usize, const T: usize, const PACKED: bool>(
    src: &Weights<'_>,
    a: [*const u8; T],
) -> [[f32; T]; R] {
    let (w, row_bytes, blocks, prefetch) = (src.w, src.row_bytes, src.blocks, src.prefetch);
    // Slots written by `pack256` for this row tile (the only ones read).
    let (levels, scales): (*const [u8; 32], *const [f32; 2]) = match src.packed {
        Some(pk) if PACKED => (pk.levels.as_ptr().cast(), pk.scales.as_ptr().cast()),
        _ => (core::ptr::null(), core::ptr::null()),
    };
    let wb = w_bytes(K);
    let ab = a_bytes(K);
    let ones = _mm256_set1_epi16(1);
    let off = _mm256_set1_epi8(level_offset(K) as i8);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut mins = [_mm_setzero_ps(); R];
    for b in 0..blocks {
        // SAFETY: block `b < blocks` of each token row and weight row is readable (the
        // contract); all offsets stay inside their block.
        unsafe {
            let mut y = [_mm256_setzero_si256(); T];
            let mut corr = [_mm256_setzero_si256(); T];
            let mut hdr = [0i32; 4];
            let mut da = [_mm256_setzero_ps(); T];
            for (i, &p) in a.iter().enumerate() {
                let pa = p.add(b * ab);
                y[i] = ld256(pa.add(a_qs(K)));
                if K != Q8_0 && level_offset(K) != 0 {
                    // off · (pair sums of the activation bytes), in i16 as `maddubs`
                    // gives it (at most 2 · 16 · 128, no saturation).
                    corr[i] = _mm256_maddubs_epi16(off, y[i]);
                }
                let ys = _mm_cvtph_ps(_mm_cvtsi32_si128(rd32(pa)));
                da[i] = _mm256_broadcastss_ps(ys);
                if has_min(K) && i < 4 {
                    hdr[i] = rd32(pa);
                }
            }
            // For Q4_1/Q5_1: s_a of tokens 0..T in lanes 0..T.
            let sa = if has_min(K) {
                let h = _mm_cvtph_ps(_mm_setr_epi32(hdr[0], hdr[1], hdr[2], hdr[3]));
                let h2 = _mm_cvtph_ps(_mm_srli_si128::<8>(_mm_setr_epi32(
                    hdr[0], hdr[1], hdr[2], hdr[3],
                )));
                // h = [d0, s0, d1, s1], h2 = [d2, s2, d3, s3].
                _mm_shuffle_ps::<0b11_01_11_01>(h, h2)
            } else {
                _mm_setzero_ps()
            };
            for (r, (acc, mins)) in acc.iter_mut().zip(mins.iter_mut()).enumerate() {
                let (u, dw, mw) = if PACKED && !levels.is_null() {
                    let at = r * blocks + b;
                    let [d, m] = *scales.add(at);
                    (
                        ld256(levels.add(at).cast()),
                        _mm256_set1_ps(d),
                        _mm_set1_ps(m),
                    )
                } else {
                    let x = w.add(r * row_bytes + b * wb);
                    if prefetch {
                        prefetch_ahead(x, 64);
                    }
                    let xs = _mm_cvtph_ps(_mm_cvtsi32_si128(rd32(x)));
                    let m = _mm_broadcastss_ps(_mm_movehdup_ps(xs));
                    (levels256::<K>(x), _mm256_broadcastss_ps(xs), m)
                };
                let ax = if K == Q8_0 { _mm256_sign_epi8(u, u) } else { u };
                for i in 0..T {
                    let p = if K == Q8_0 {
                        _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y[i], u))
                    } else if level_offset(K) != 0 {
                        _mm256_sub_epi16(_mm256_maddubs_epi16(u, y[i]), corr[i])
                    } else {
                        _mm256_maddubs_epi16(u, y[i])
                    };
                    let q = _mm256_madd_epi16(p, ones);
                    let d = _mm256_mul_ps(dw, da[i]);
                    acc[i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), acc[i]);
                }
                if has_min(K) {
                    *mins = _mm_fmadd_ps(mw, sa, *mins);
                }
            }
        }
    }
    let mut res = [[0.0f32; T]; R];
    for ((res, acc), mins) in res.iter_mut().zip(&acc).zip(&mins) {
        let mut m = [0.0f32; 4];
        // SAFETY: `m` is 4 writable f32s; `storeu` has no alignment needs.
        unsafe { _mm_storeu_ps(m.as_mut_ptr(), *mins) };
        for (i, (res, acc)) in res.iter_mut().zip(acc).enumerate() {
            *res = if has_min(K) {
                hsum_ps(*acc) + m[i]
            } else {
                hsum_ps(*acc)
            };
        }
    }
    res
}

// ---------------------------------------------------------------------------------------
// AVX-512 four-row decode kernels ([`crate::VecDotRows4Fn`]): four weight rows against
// one activation row, two rows side by side per 512-bit register. Same per-row float
// steps as the single-row kernels, so the same bits.

/// The AVX-512 four-row kernel of `ty`, if it is a legacy block format.
pub(super) fn rows4_512(ty: GgmlType) -> Option<crate::VecDotRows4Fn> {
    Some(match ty {
        GgmlType::Q4_0 => rows4_512_q4_0,
        GgmlType::Q4_1 => rows4_512_q4_1,
        GgmlType::Q5_0 => rows4_512_q5_0,
        GgmlType::Q5_1 => rows4_512_q5_1,
        GgmlType::Q8_0 => rows4_512_q8_0,
        _ => return None,
    })
}

/// Defines the safe four-row entry for format `$k`: the AVX-512 kernel when the CPU has
/// it, else four single-row kernels.
macro_rules! rows4_entry {
    ($name:ident, $k:ident) => {
        fn $name(w: [&[u8]; 4], a: &[u8]) -> [f32; 4] {
            // The whole blocks every row and the activations hold (as `vec_dot`).
            let blocks = w
                .iter()
                .map(|r| r.len() / w_bytes($k))
                .fold(a.len() / a_bytes($k), usize::min);
            if !super::avx512_available() {
                return w.map(|w| single_row($k)(w, a));
            }
            let p = w.map(|r| r.as_ptr());
            // SAFETY: `avx512_available()` confirmed the features; every row holds
            // `blocks` weight blocks and `a` as many activation blocks.
            unsafe { rows4_kernel512::<$k>(p, a.as_ptr(), blocks) }
        }
    };
}

rows4_entry!(rows4_512_q4_0, Q4_0);
rows4_entry!(rows4_512_q4_1, Q4_1);
rows4_entry!(rows4_512_q5_0, Q5_0);
rows4_entry!(rows4_512_q5_1, Q5_1);
rows4_entry!(rows4_512_q8_0, Q8_0);

/// The levels of two weight blocks, `x0`'s in the lower 256 bits and `x1`'s in the
/// upper (each as in [`levels512`]).
///
/// # Safety
/// `x0` and `x1` point at whole blocks of format `K`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn levels_two512<const K: u8>(x0: *const u8, x1: *const u8) -> __m512i {
    // SAFETY: every read lies inside the two blocks (the caller's contract), at the
    // offsets `levels512` uses.
    unsafe {
        if K == Q8_0 {
            let lo = _mm512_castsi256_si512(ld256(x0.add(2)));
            let q = _mm512_inserti64x4::<1>(lo, ld256(x1.add(2)));
            return _mm512_xor_si512(q, _mm512_set1_epi8(i8::MIN));
        }
        let qs_at = match K {
            Q4_0 => 2,
            Q4_1 => 4,
            Q5_0 => 6,
            _ => 8,
        };
        let q0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(x0.add(qs_at).cast()));
        let q1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(x1.add(qs_at).cast()));
        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1);
        let both = _mm512_mask_blend_epi64(0b1100_1100, v, _mm512_srli_epi16::<4>(v));
        let nib = _mm512_and_si512(both, _mm512_set1_epi8(0x0F));
        if K == Q4_0 || K == Q4_1 {
            return nib;
        }
        let qh0 = rd32(x0.add(qs_at - 4)) as u32 as u64;
        let qh1 = rd32(x1.add(qs_at - 4)) as u32 as u64;
        let mask = _cvtu64_mask64(qh0 | (qh1 << 32));
        _mm512_mask_add_epi8(nib, mask, nib, _mm512_set1_epi8(16))
    }
}

/// Four weight rows (`w`) against the activation row `a`, over `blocks` blocks.
///
/// # Safety
/// The CPU has the features of [`drive512`]; each row holds `blocks` weight blocks of
/// format `K` and `a` as many activation blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows4_kernel512<const K: u8>(w: [*const u8; 4], a: *const u8, blocks: usize) -> [f32; 4] {
    let (wb, ab) = (w_bytes(K), a_bytes(K));
    let zero = _mm512_setzero_si512();
    let off = _mm512_set1_epi8(level_offset(K) as i8);
    // Lanes 0..8 from lane 0 ([d] of the first row), 8..16 from lane 2 (the second's).
    let pair_lanes = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut mins = _mm_setzero_ps();
    for b in 0..blocks {
        // SAFETY: block `b < blocks` of the activation row and of each weight row is
        // readable (the contract); all offsets stay inside their block.
        unsafe {
            let pa = a.add(b * ab);
            let y = _mm512_broadcast_i64x4(ld256(pa.add(a_qs(K))));
            let corr = if level_offset(K) != 0 {
                _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, off, y))
            } else {
                zero
            };
            let ys = _mm_cvtph_ps(_mm_cvtsi32_si128(rd32(pa)));
            let da = _mm512_broadcastss_ps(ys);
            let x = w.map(|r| r.add(b * wb));
            // [d_0, m_0, d_1, m_1, d_2, m_2, d_3, m_3].
            let h = _mm256_cvtph_ps(_mm_setr_epi32(
                rd32(x[0]),
                rd32(x[1]),
                rd32(x[2]),
                rd32(x[3]),
            ));
            for (j, acc) in acc.iter_mut().enumerate() {
                prefetch_far(x[2 * j], 64);
                prefetch_far(x[2 * j + 1], 64);
                let u = levels_two512::<K>(x[2 * j], x[2 * j + 1]);
                let hj = if j == 0 {
                    _mm256_castps256_ps128(h)
                } else {
                    _mm256_extractf128_ps::<1>(h)
                };
                let dw = _mm512_permutexvar_ps(pair_lanes, _mm512_castps128_ps512(hj));
                let d = _mm512_mul_ps(dw, da);
                let q = _mm512_dpbusd_epi32(corr, u, y);
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(q), *acc);
            }
            if has_min(K) {
                // [m_0, m_1, m_2, m_3] times s_a, one fused step per row as alone.
                let hl = _mm256_castps256_ps128(h);
                let hh = _mm256_extractf128_ps::<1>(h);
                let m = _mm_shuffle_ps::<0b11_01_11_01>(hl, hh);
                let sa = _mm_broadcastss_ps(_mm_movehdup_ps(ys));
                mins = _mm_fmadd_ps(m, sa, mins);
            }
        }
    }
    let mut m = [0.0f32; 4];
    // SAFETY: `m` is 4 writable f32s; `storeu` has no alignment needs.
    unsafe { _mm_storeu_ps(m.as_mut_ptr(), mins) };
    let half = |v: __m512, hi: bool| {
        if hi {
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
        } else {
            _mm512_castps512_ps256(v)
        }
    };
    let r = [
        hsum_ps(half(acc[0], false)),
        hsum_ps(half(acc[0], true)),
        hsum_ps(half(acc[1], false)),
        hsum_ps(half(acc[1], true)),
    ];
    if has_min(K) {
        [r[0] + m[0], r[1] + m[1], r[2] + m[2], r[3] + m[3]]
    } else {
        r
    }
}
