//! Panel kernels of the K-quant weight formats (Q4_K, Q5_K, Q6_K) against Q8_K activations:
//! many weight rows times many tokens in one call, in the order of ggml's tiled K-quant
//! batch kernel (see [`crate::tiled_kernels`]), so every result has the bits of the
//! engine's tiled-order scalar twins.
//!
//! Per 256-element super-block the integer sums `s1 = Σ_s sc_s · dot_s` (and, for Q4_K and
//! Q5_K, `s2 = Σ_s m_s · (bsum_2s + bsum_2s+1)`) are exact whatever instructions compute
//! them; the float steps that follow (`r = s1 · d`, `r = fma(-dmin, s2, r)`,
//! `acc = fma(r, d8, acc)`, the fused steps rounded once from f64) are done lane by lane
//! with exactly those roundings.
//!
//! The AVX-512 (F, BW, VL, VNNI) kernels work on four weight rows at once, one row per
//! 128-bit lane: sixteen bytes of each of four rows fill one register and meet the same
//! sixteen activation bytes (broadcast to all four lanes) in `vpdpbusd`, so a row's sums
//! stay in its own lane and only four lanes per row are left to add up per super-block.
//! Two sub-blocks' sums (each below 2^15 in magnitude) are packed to i16 and weighted by
//! their scales in one `vpdpwssd`. The weights of a super-block are unpacked once per row
//! quad and reused for up to [`CHUNK`] tokens, eight tokens per pass over the levels; the
//! float steps of a block run after the integer sums of all its token groups.
//!
//! Without AVX-512 (or where the OS leaves its register state off) the same scheme runs
//! on YMM registers, two rows per register: with AVX-VNNI's `vpdpbusd`/`vpdpwssd` where
//! the CPU has them, else with AVX2's `maddubs` + `madd`.

use core::arch::x86_64::*;

use super::{ld128, ld256};
use crate::kquants::{Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_K_BYTES};
use crate::GgmlType;

/// The panel kernel of `ty` (AVX-512 where [`super::avx512_available`], else AVX-VNNI or
/// AVX2, chosen per call), where there is one. Callers check [`super::available`] first.
pub(super) fn panel(ty: GgmlType) -> Option<crate::PanelFn> {
    match ty {
        GgmlType::Q4_K => Some(panel_q4_k),
        GgmlType::Q5_K => Some(panel_q5_k),
        GgmlType::Q6_K => Some(panel_q6_k),
        _ => None,
    }
}

/// Groups of four tokens one group call takes on AVX-512 (measured on a Sapphire Rapids
/// class Xeon, Q4_K 2048 x 5632 x 64: one group 7.4 ms, two 5.7 ms, four 6.8 ms).
const GROUPS_512: usize = 2;

/// Groups of four tokens one group call takes on AVX2 and AVX-VNNI.
const GROUPS_256: usize = 2;

/// Most tokens one group call takes.
const MAXT: usize = 4 * if GROUPS_512 > GROUPS_256 {
    GROUPS_512
} else {
    GROUPS_256
};

/// Q8_K field offsets.
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;

/// Most tokens whose accumulators one pass over a row quad keeps (on the stack: about
/// 6 KiB with the unpacked block and the integer sums on AVX-512, 3 KiB on AVX2); the
/// unpacked weights of each super-block are reused for all of them.
const CHUNK: usize = 64;

/// A validated panel call: `rows` weight rows of `nb` super-blocks each.
#[derive(Clone, Copy)]
struct Shape {
    rows: usize,
    nb: usize,
}

/// The shape of a panel call, if every buffer holds what the call asks for: whole
/// super-blocks per weight row, activation rows at least as long as the weight rows'
/// Q8_K counterpart, and `out.len()` a multiple of `tokens`.
fn shape(
    block: usize,
    weights: &[u8],
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    tokens: usize,
    out_len: usize,
) -> Option<Shape> {
    if tokens == 0 || row_bytes == 0 || !row_bytes.is_multiple_of(block) {
        return None;
    }
    let nb = row_bytes / block;
    let rows = out_len / tokens;
    if rows * tokens != out_len || act_bytes < nb.checked_mul(Q8_K_BYTES)? {
        return None;
    }
    if weights.len() < rows.checked_mul(row_bytes)? || acts.len() < tokens.checked_mul(act_bytes)? {
        return None;
    }
    Some(Shape { rows, nb })
}

/// Which kernel family a panel call takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Isa {
    Avx512,
    /// AVX2 with AVX-VNNI.
    AvxVnni,
    Avx2,
}

/// The widest instruction set available right now, if any.
fn best_isa() -> Option<Isa> {
    if super::avx512_available() {
        Some(Isa::Avx512)
    } else if super::avx_vnni_available() {
        Some(Isa::AvxVnni)
    } else if super::available() {
        Some(Isa::Avx2)
    } else {
        None
    }
}

/// The kind of K-quant weight block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Q4K,
    Q5K,
    Q6K,
}

impl Kind {
    fn block(self) -> usize {
        match self {
            Kind::Q4K => Q4_K_BYTES,
            Kind::Q5K => Q5_K_BYTES,
            Kind::Q6K => Q6_K_BYTES,
        }
    }
}

fn panel_q4_k(w: &[u8], rb: usize, a: &[u8], ab: usize, tokens: usize, out: &mut [f32]) {
    run(Kind::Q4K, best_isa(), w, rb, a, ab, tokens, out);
}

fn panel_q5_k(w: &[u8], rb: usize, a: &[u8], ab: usize, tokens: usize, out: &mut [f32]) {
    run(Kind::Q5K, best_isa(), w, rb, a, ab, tokens, out);
}

fn panel_q6_k(w: &[u8], rb: usize, a: &[u8], ab: usize, tokens: usize, out: &mut [f32]) {
    run(Kind::Q6K, best_isa(), w, rb, a, ab, tokens, out);
}

/// Validates a panel call and runs it on `isa` (NaN outputs where the buffers do not
/// hold the call or the instruction set is missing: the kernels are only handed out
/// when the SIMD set is active and the engine validates shapes first, so neither
/// happens in practice, and a NaN is louder than a wrong number).
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    kind: Kind,
    isa: Option<Isa>,
    w: &[u8],
    rb: usize,
    a: &[u8],
    ab: usize,
    tokens: usize,
    out: &mut [f32],
) {
    if out.is_empty() {
        return;
    }
    let Some(s) = shape(kind.block(), w, rb, a, ab, tokens, out.len()) else {
        out.fill(f32::NAN);
        return;
    };
    let p = Panel {
        w: w.as_ptr(),
        rb,
        a: a.as_ptr(),
        ab,
        tokens,
        rows: s.rows,
        nb: s.nb,
    };
    match isa {
        Some(Isa::Avx512) if super::avx512_available() => {
            // SAFETY: `avx512_available()` confirmed AVX-512 F/BW/VL/VNNI, AVX2, FMA and
            // F16C on this CPU and OS support for their state; `shape` checked that the
            // buffers hold `rows` weight rows of `nb` blocks and `tokens` activation rows
            // of at least `nb` Q8_K blocks, which is all the kernels read, and `out` has
            // `rows * tokens` elements.
            unsafe {
                match kind {
                    Kind::Q4K => k4_panel_512::<false, GROUPS_512>(&p, out),
                    Kind::Q5K => k4_panel_512::<true, GROUPS_512>(&p, out),
                    Kind::Q6K => q6_panel_512::<GROUPS_512>(&p, out),
                }
            }
        }
        Some(Isa::AvxVnni) if super::avx_vnni_available() => {
            // SAFETY: `super::avx_vnni_available()` confirmed AVX2, FMA, F16C, AVX-VNNI and YMM
            // state support; the buffers are as for the AVX-512 kernels above.
            unsafe {
                match kind {
                    Kind::Q4K => k4_panel_vnni::<false>(&p, out),
                    Kind::Q5K => k4_panel_vnni::<true>(&p, out),
                    Kind::Q6K => q6_panel_vnni(&p, out),
                }
            }
        }
        Some(Isa::Avx2) if super::available() => {
            // SAFETY: `available()` confirmed AVX2, FMA and F16C and YMM state support;
            // the buffers are as for the AVX-512 kernels above.
            unsafe {
                match kind {
                    Kind::Q4K => k4_panel_avx2::<false>(&p, out),
                    Kind::Q5K => k4_panel_avx2::<true>(&p, out),
                    Kind::Q6K => q6_panel_avx2(&p, out),
                }
            }
        }
        _ => out.fill(f32::NAN),
    }
}

/// A validated panel call as raw parts (see [`shape`]).
struct Panel {
    w: *const u8,
    rb: usize,
    a: *const u8,
    ab: usize,
    tokens: usize,
    rows: usize,
    nb: usize,
}

// ---------------------------------------------------------------------------------------
// AVX-512 helpers. Lane layout: 128-bit lane `r` of a register belongs to weight row `r`
// of the quad; after the reduction, f32 lane `4r + t` holds row `r`, token `t` of a group
// of four tokens.

/// The 16 bytes at `p` in all four 128-bit lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn bcast128(p: *const u8) -> __m512i {
    // SAFETY: forwarded to the caller.
    _mm512_broadcast_i32x4(unsafe { ld128(p) })
}

/// Bytes `off..off + 16` and `off + 16..off + 32` of four rows: lane `r` of the first
/// result holds row `r`'s first sixteen bytes, of the second its next sixteen.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn gather32(x: &[*const u8; 4], off: usize) -> (__m512i, __m512i) {
    // SAFETY: the caller guarantees 32 readable bytes at `off` in each row.
    let (r0, r1, r2, r3) = unsafe {
        (
            ld256(x[0].add(off)),
            ld256(x[1].add(off)),
            ld256(x[2].add(off)),
            ld256(x[3].add(off)),
        )
    };
    // Lanes [r0 lo, r0 hi, r1 lo, r1 hi] and [r2 lo, r2 hi, r3 lo, r3 hi].
    let a = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(r0), r1);
    let b = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(r2), r3);
    (
        _mm512_shuffle_i64x2::<0b10_00_10_00>(a, b),
        _mm512_shuffle_i64x2::<0b11_01_11_01>(a, b),
    )
}

/// The 16 bytes at `off` of each of four rows, row `r` in lane `r`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn gather16(x: &[*const u8; 4], off: usize) -> __m512i {
    // SAFETY: the caller guarantees 16 readable bytes at `off` in each row.
    unsafe {
        let v = _mm512_castsi128_si512(ld128(x[0].add(off)));
        let v = _mm512_inserti32x4::<1>(v, ld128(x[1].add(off)));
        let v = _mm512_inserti32x4::<2>(v, ld128(x[2].add(off)));
        _mm512_inserti32x4::<3>(v, ld128(x[3].add(off)))
    }
}

/// The i16 elements `s` and `u` (0..8) of each 128-bit lane of `v`, `s` in the low and
/// `u` in the high four i16 of the lane: the weights `vpdpwssd` applies to
/// `packs_epi32(a, b)` to give `sc_s · Σ a + sc_u · Σ b` per lane (the packing is exact
/// when every lane of `a` and `b` fits in i16).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn pick_pair(v: __m512i, s: usize, u: usize) -> __m512i {
    let word = |s: usize| {
        let lo = (2 * (s & 7)) as i64;
        let w = lo | ((lo + 1) << 8);
        w | (w << 16) | (w << 32) | (w << 48)
    };
    let (ws, wu) = (word(s), word(u));
    _mm512_shuffle_epi8(v, _mm512_set_epi64(wu, ws, wu, ws, wu, ws, wu, ws))
}

/// Lane `i` of `v` in lanes `4i..4i+4` (`i` < 4), from the low four lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn spread4(v: __m512, stride: i32, first: i32) -> __m512 {
    let i = |r: i32| first + stride * r;
    let idx = _mm512_setr_epi32(
        i(0),
        i(0),
        i(0),
        i(0),
        i(1),
        i(1),
        i(1),
        i(1),
        i(2),
        i(2),
        i(2),
        i(2),
        i(3),
        i(3),
        i(3),
        i(3),
    );
    _mm512_permutexvar_ps(idx, v)
}

/// Per 128-bit lane `r`: the lane sums of `v[0..4]` as lanes `4r..4r+4` (exact).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn reduce4(v: [__m512i; 4]) -> __m512i {
    // [v0 j0+j2, v1 j0+j2, v0 j1+j3, v1 j1+j3] per lane, and the same for v2, v3.
    let s01 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(v[0], v[1]),
        _mm512_unpackhi_epi32(v[0], v[1]),
    );
    let s23 = _mm512_add_epi32(
        _mm512_unpacklo_epi32(v[2], v[3]),
        _mm512_unpackhi_epi32(v[2], v[3]),
    );
    _mm512_add_epi32(
        _mm512_unpacklo_epi64(s01, s23),
        _mm512_unpackhi_epi64(s01, s23),
    )
}

/// Sixteen f32 lanes as two halves of f64 lanes (exact).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn widen(v: __m512) -> [__m512d; 2] {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    [
        _mm512_cvtps_pd(_mm512_castps512_ps256(v)),
        _mm512_cvtps_pd(hi),
    ]
}

/// `v` rounded to f32 (and held as f64 again).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn round_f32(v: __m512d) -> __m512d {
    _mm512_cvtps_pd(_mm512_cvtpd_ps(v))
}

/// Accumulators of sixteen (row, token) lanes: two halves of f64 lanes, each value an
/// f32 (every step ends rounded to f32), so the next step needs no conversion.
type Acc512 = [__m512d; 2];

/// One super-block's float steps of the tiled order for sixteen (row, token) lanes:
/// `r = s1 · d` in f32, then `r = fma(-dmin, s2, r)` and `acc = fma(r, d8, acc)` each
/// fused in f64 and rounded to f32 (the product of two f32 is exact in f64, so the
/// fused f64 step rounds where the twin's `a * b + c` in f64 does). `ndmin` and `d8` come
/// as f64 halves (`d8` the same for both: lane `i` of a half is token `i % 4`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn tiled_step(
    acc: Acc512,
    s1: __m512i,
    d: __m512,
    min: Option<([__m512d; 2], __m512i)>,
    d8: __m512d,
) -> Acc512 {
    let mut r = widen(_mm512_mul_ps(_mm512_cvtepi32_ps(s1), d));
    if let Some((ndmin, s2)) = min {
        let s2 = widen(_mm512_cvtepi32_ps(s2));
        for h in 0..2 {
            r[h] = round_f32(_mm512_fmadd_pd(ndmin[h], s2[h], r[h]));
        }
    }
    [
        round_f32(_mm512_fmadd_pd(r[0], d8, acc[0])),
        round_f32(_mm512_fmadd_pd(r[1], d8, acc[1])),
    ]
}

/// The activation scales of a group of four tokens as f64, token `t` in lanes `t` and
/// `4 + t`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn d8_lanes(y: &[*const u8; 4]) -> __m512d {
    // SAFETY: the caller guarantees a Q8_K block at each `y[t]`; `d` is its first field.
    let d = y.map(|p| unsafe { p.cast::<f32>().read_unaligned() });
    _mm512_broadcast_f64x4(_mm256_cvtps_pd(_mm_setr_ps(d[0], d[1], d[2], d[3])))
}

/// Flips the sign of every lane (exact, as scalar negation).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn negate(v: __m512) -> __m512 {
    _mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(v),
        _mm512_set1_epi32(i32::MIN),
    ))
}

/// The sixteen lanes of `v`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn lanes_512(v: Acc512) -> [f32; 16] {
    let mut out = [0.0f32; 16];
    // SAFETY: `out` is 16 writable f32, eight per half.
    unsafe {
        _mm256_storeu_ps(out.as_mut_ptr(), _mm512_cvtpd_ps(v[0]));
        _mm256_storeu_ps(out.as_mut_ptr().add(8), _mm512_cvtpd_ps(v[1]));
    }
    out
}

/// The eight lanes of `v` (then zeros).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lanes_256(v: __m256) -> [f32; 16] {
    let mut out = [0.0f32; 16];
    // SAFETY: `out` has at least 8 writable f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// Walks a panel in groups of `$rows` rows (the last padded by repeating its last row) and
/// chunks of up to [`CHUNK`] tokens (groups of four, the last padded by repeating its
/// last token): per super-block, `$prep` unpacks the rows' blocks, `$group` computes
/// the reduced integer sums of `$groups` groups of four tokens (or one), and `$step`
/// applies one group's float steps to its accumulators (lane `4r + t`). A macro, so
/// that all three are called directly from the target-feature function it expands in
/// (and inlined there). Expands to unsafe code: the caller guarantees what `run`
/// validated.
macro_rules! walk {
    ($p:expr, $block:expr, $out:expr, $prep:path, $group:ident, $step:path, $groups:expr, $rows:literal, $zero:expr, $izero:expr, $lanes:path) => {{
        let p: &Panel = $p;
        let out: &mut [f32] = $out;
        let mut r0 = 0;
        while r0 < p.rows {
            let nr = (p.rows - r0).min($rows);
            // Row indices stay below `rows` and token indices below `tokens`, and `run`
            // checked that the buffers hold all of them.
            let rows: [*const u8; $rows] = core::array::from_fn(|i| {
                // SAFETY: row `r0 + i.min(nr - 1)` < `rows` starts inside `w`.
                unsafe { p.w.add((r0 + i.min(nr - 1)) * p.rb) }
            });
            let mut t0 = 0;
            while t0 < p.tokens {
                let nt = (p.tokens - t0).min(CHUNK);
                let groups = nt.div_ceil(4);
                let mut acc = [$zero; CHUNK / 4];
                let mut sums = [[$izero; 2]; CHUNK / 4];
                for b in 0..p.nb {
                    // SAFETY: block `b` < `nb` of each row is inside `w`.
                    let x = rows.map(|r| unsafe { r.add(b * $block) });
                    // SAFETY: a whole block at each `x[r]`, and the target features of
                    // the expanding function (checked by `run`).
                    let w = unsafe { $prep(&x) };
                    // The weights come from memory once per panel: ask for the next
                    // block of each row (or, after the last, the first block of the
                    // next rows) while this one is multiplied.
                    for (i, r) in rows.iter().enumerate() {
                        let next = if b + 1 < p.nb {
                            r.wrapping_add((b + 1) * $block)
                        } else {
                            p.w.wrapping_add((r0 + $rows + i) * p.rb)
                        };
                        super::prefetch_lines::<_MM_HINT_T0>(next, $block);
                    }
                    // `4 · $groups` tokens per call while that many groups remain,
                    // then four at a time.
                    let mut g = 0;
                    while g < groups {
                        let y: [*const u8; MAXT] = core::array::from_fn(|i| {
                            // SAFETY: token `t0 + (4g + i).min(nt - 1)` < `tokens`, and
                            // its block `b` < `nb` is inside `a`.
                            unsafe {
                                p.a.add((t0 + (4 * g + i).min(nt - 1)) * p.ab + b * Q8_K_BYTES)
                            }
                        });
                        let rest = sums.get_mut(g..groups).unwrap_or(&mut []);
                        if $groups > 1 && g + $groups <= groups {
                            // SAFETY: whole Q8_K blocks at each `y[t]`, and the target
                            // features of the expanding function.
                            unsafe { $group::<$groups>(&w, &y, rest) };
                            g += $groups;
                        } else {
                            // SAFETY: as above.
                            unsafe { $group::<1>(&w, &y, rest) };
                            g += 1;
                        }
                    }
                    // The float steps of all groups together, after their integer
                    // sums: independent of each other, they overlap in the pipeline
                    // rather than each waiting at the end of its group's sums.
                    for (g, (acc, sums)) in acc.iter_mut().zip(&sums).enumerate().take(groups) {
                        let y: [*const u8; 4] = core::array::from_fn(|i| {
                            // SAFETY: as for the group calls above.
                            unsafe {
                                p.a.add((t0 + (4 * g + i).min(nt - 1)) * p.ab + b * Q8_K_BYTES)
                            }
                        });
                        // SAFETY: whole Q8_K blocks at each `y[t]`, and the target
                        // features of the expanding function.
                        *acc = unsafe { $step(&w, *acc, *sums, &y) };
                    }
                }
                for (g, acc) in acc.iter().enumerate().take(groups) {
                    let v: [f32; 16] = $lanes(*acc);
                    for r in 0..nr {
                        for t in 0..4 {
                            let tok = 4 * g + t;
                            if tok < nt {
                                if let Some(o) = out.get_mut((r0 + r) * p.tokens + t0 + tok) {
                                    *o = v[4 * r + t];
                                }
                            }
                        }
                    }
                }
                t0 += nt;
            }
            r0 += nr;
        }
    }};
}

/// One Q4_K/Q5_K super-block of a row quad, unpacked: `l[2s + h]` holds the levels of
/// half `h` (16 elements) of sub-block `s` of every row (row `r` in lane `r`), `sc[q]`
/// the rows' scales of sub-blocks `2q` and `2q + 1` (see [`pick_pair`]), `mn` the rows'
/// mins `[m0, m0, m1, m1, .., m3, m3]` and `[m4, m4, .., m7, m7]` as i16 per lane (against
/// the sixteen group sums), and `d`, `ndmin` the rows' `d` and `-dmin` in lanes
/// `4r..4r+4`.
struct K4Prep {
    l: [__m512i; 16],
    sc: [__m512i; 4],
    mn: [__m512i; 2],
    d: __m512,
    ndmin: [__m512d; 2],
}

/// Unpacks one Q4_K (`Q5 = false`) or Q5_K super-block of each row of a quad.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn k4_prep<const Q5: bool>(x: &[*const u8; 4]) -> K4Prep {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    let mut scw = [0u64; 4];
    let mut mnw = [0u64; 4];
    let mut dm = [0u32; 4];
    for r in 0..4 {
        // SAFETY: the caller guarantees a whole block at each `x[r]`: the f16 pair at 0
        // and the twelve scale bytes at 4.
        let (d, a0, a1, a2) = unsafe {
            let p = x[r];
            (
                p.cast::<u32>().read_unaligned(),
                p.add(4).cast::<u32>().read_unaligned(),
                p.add(8).cast::<u32>().read_unaligned(),
                p.add(12).cast::<u32>().read_unaligned(),
            )
        };
        let (a0, a1, a2) = (u32::from_le(a0), u32::from_le(a1), u32::from_le(a2));
        // The layout of `kquants::unpack_k4_scales`, four bytes at a time.
        let sc_lo = a0 & LOW6;
        let mn_lo = a1 & LOW6;
        let sc_hi = (a2 & LOW4) | (((a0 >> 6) & LOW2) << 4);
        let mn_hi = ((a2 >> 4) & LOW4) | (((a1 >> 6) & LOW2) << 4);
        scw[r] = u64::from(sc_lo) | (u64::from(sc_hi) << 32);
        mnw[r] = u64::from(mn_lo) | (u64::from(mn_hi) << 32);
        dm[r] = u32::from_le(d);
    }
    // SAFETY: the arrays are 32 and 16 readable bytes.
    let (sc16, mn16, dm) = unsafe {
        (
            _mm512_cvtepu8_epi16(ld256(scw.as_ptr().cast())),
            _mm512_cvtepu8_epi16(ld256(mnw.as_ptr().cast())),
            _mm256_cvtph_ps(ld128(dm.as_ptr().cast())),
        )
    };
    // [d0, dmin0, d1, dmin1, ...] spread to the rows' lanes.
    let dm = _mm512_castps256_ps512(dm);
    let d = spread4(dm, 2, 0);
    let ndmin = widen(negate(spread4(dm, 2, 1)));
    let sc = core::array::from_fn(|q| pick_pair(sc16, 2 * q, 2 * q + 1));
    let mn = [
        _mm512_unpacklo_epi16(mn16, mn16),
        _mm512_unpackhi_epi16(mn16, mn16),
    ];

    let low4 = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    let qs_off = if Q5 { 48 } else { 16 };
    let qh = if Q5 {
        // SAFETY: Q5_K's 32 high-bit bytes are at 16.
        unsafe { gather32(x, 16) }
    } else {
        (_mm512_setzero_si512(), _mm512_setzero_si512())
    };
    let mut l = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        // SAFETY: the 128 level bytes are at `qs_off`.
        let (p0, p1) = unsafe { gather32(x, qs_off + 32 * q) };
        let mut v = [
            _mm512_and_si512(p0, low4),
            _mm512_and_si512(p1, low4),
            _mm512_and_si512(_mm512_srli_epi16::<4>(p0), low4),
            _mm512_and_si512(_mm512_srli_epi16::<4>(p1), low4),
        ];
        if Q5 {
            // Bit `s` of each high-bit byte is bit 4 of element level in sub-block `s`.
            for (k, v) in v.iter_mut().enumerate() {
                let s = 2 * q + k / 2;
                let h = if k % 2 == 0 { qh.0 } else { qh.1 };
                let moved = if s <= 4 {
                    _mm512_sll_epi16(h, _mm_cvtsi32_si128(4 - s as i32))
                } else {
                    _mm512_srl_epi16(h, _mm_cvtsi32_si128(s as i32 - 4))
                };
                *v = _mm512_or_si512(*v, _mm512_and_si512(moved, bit4));
            }
        }
        l[4 * q..4 * q + 4].copy_from_slice(&v);
    }
    K4Prep {
        l,
        sc,
        mn,
        d,
        ndmin,
    }
}

/// Adds one Q4_K/Q5_K super-block for four tokens (Q8_K blocks at `y`) to `acc`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn k4_group<const G: usize>(w: &K4Prep, y: &[*const u8; MAXT], sums: &mut [[__m512i; 2]]) {
    let zero = _mm512_setzero_si512();
    let n = 4 * G;
    let mut s1 = [zero; MAXT];
    // Sub-block pairs outer, tokens inner: each pair's levels are loaded once for all
    // the tokens.
    for q in 0..4 {
        for t in 0..n {
            // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
            let yv = unsafe {
                let yq = y[t].add(Q8K_QS + 64 * q);
                [
                    bcast128(yq),
                    bcast128(yq.add(16)),
                    bcast128(yq.add(32)),
                    bcast128(yq.add(48)),
                ]
            };
            let lo = _mm512_dpbusd_epi32(
                _mm512_dpbusd_epi32(zero, w.l[4 * q], yv[0]),
                w.l[4 * q + 1],
                yv[1],
            );
            let hi = _mm512_dpbusd_epi32(
                _mm512_dpbusd_epi32(zero, w.l[4 * q + 2], yv[2]),
                w.l[4 * q + 3],
                yv[3],
            );
            // Per lane at most 8 · 31 · 128 < 2^15 in magnitude: packing the two
            // sub-blocks' sums to i16 is exact, and `vpdpwssd` weights each with its
            // scale.
            s1[t] = _mm512_dpwssd_epi32(s1[t], _mm512_packs_epi32(lo, hi), w.sc[q]);
        }
    }
    for g in 0..G {
        let mut s2 = [zero; 4];
        for (i, s2) in s2.iter_mut().enumerate() {
            // SAFETY: as above; the sixteen group sums are at `Q8K_BSUMS`.
            let (b0, b1) = unsafe {
                let yq = y[4 * g + i];
                (
                    bcast128(yq.add(Q8K_BSUMS)),
                    bcast128(yq.add(Q8K_BSUMS + 16)),
                )
            };
            *s2 = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(zero, w.mn[0], b0), w.mn[1], b1);
        }
        let s1 = reduce4([s1[4 * g], s1[4 * g + 1], s1[4 * g + 2], s1[4 * g + 3]]);
        if let Some(o) = sums.get_mut(g) {
            *o = [s1, reduce4(s2)];
        }
    }
}

/// The float steps of one Q4_K/Q5_K super-block for a group of four tokens (Q8_K blocks
/// at `y`), from its integer sums `[s1, s2]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn k4_step(w: &K4Prep, acc: Acc512, sums: [__m512i; 2], y: &[*const u8; 4]) -> Acc512 {
    // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
    let d8 = unsafe { d8_lanes(y) };
    tiled_step(acc, sums[0], w.d, Some((w.ndmin, sums[1])), d8)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn k4_panel_512<const Q5: bool, const G: usize>(p: &Panel, out: &mut [f32]) {
    let block = if Q5 { Q5_K_BYTES } else { Q4_K_BYTES };
    walk!(
        p,
        block,
        out,
        k4_prep::<Q5>,
        k4_group,
        k4_step,
        G,
        4,
        [_mm512_setzero_pd(); 2],
        _mm512_setzero_si512(),
        lanes_512
    );
}

/// One Q6_K super-block of a row quad, unpacked: `l[s]` holds the unsigned levels
/// (`u = level + 32` < 64) of sub-block `s` (16 elements) of every row, `sc[k]` the
/// scales of sub-blocks `2k` and `2k + 1` (see [`pick_pair`]), `nsc` the rows' scales
/// times -32 as i16 (sub-blocks 0..8 and 8..16), `d` the rows' `d` in lanes `4r..4r+4`.
struct Q6Prep {
    l: [__m512i; 16],
    sc: [__m512i; 8],
    nsc: [__m512i; 2],
    d: __m512,
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q6_prep(x: &[*const u8; 4]) -> Q6Prep {
    // SAFETY: the caller guarantees a whole block at each `x[r]`: `d` at 208.
    let dh = x.map(|p| unsafe { p.add(208).cast::<u16>().read_unaligned() });
    let dh = u64::from(dh[0])
        | (u64::from(dh[1]) << 16)
        | (u64::from(dh[2]) << 32)
        | (u64::from(dh[3]) << 48);
    let d = spread4(
        _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128(dh as i64))),
        1,
        0,
    );
    // SAFETY: the sixteen i8 scales are at 192.
    let raw = unsafe { gather16(x, 192) };
    // Sign-extended to i16: each byte paired with itself, then shifted down.
    let scw = [
        _mm512_srai_epi16::<8>(_mm512_unpacklo_epi8(raw, raw)),
        _mm512_srai_epi16::<8>(_mm512_unpackhi_epi8(raw, raw)),
    ];
    let sc = core::array::from_fn(|k| pick_pair(scw[k / 4], 2 * (k % 4), 2 * (k % 4) + 1));
    let nsc = scw.map(|v| _mm512_slli_epi16::<5>(_mm512_sub_epi16(_mm512_setzero_si512(), v)));

    let low4 = _mm512_set1_epi8(0x0F);
    let m03 = _mm512_set1_epi8(0x03);
    let m0c = _mm512_set1_epi8(0x0C);
    let m30 = _mm512_set1_epi8(0x30);
    let mut l = [_mm512_setzero_si512(); 16];
    for half in 0..2 {
        // SAFETY: `ql` is at 0 (128 bytes), `qh` at 128 (64 bytes).
        let (ql0, ql1, qh) = unsafe {
            (
                gather32(x, 64 * half),
                gather32(x, 64 * half + 32),
                gather32(x, 128 + 32 * half),
            )
        };
        for (piece, (ql0, ql1, qh)) in [(ql0.0, ql1.0, qh.0), (ql0.1, ql1.1, qh.1)]
            .into_iter()
            .enumerate()
        {
            // Elements 32k + 16·piece.. of the half: sub-block 8·half + 2k + piece. The
            // high-bit fields are masked before shifting, so no bits cross bytes.
            let s = 8 * half + piece;
            // (a & low4) | c
            const OR_LOW: i32 = 0xEA;
            l[s] = _mm512_ternarylogic_epi32::<OR_LOW>(
                ql0,
                low4,
                _mm512_slli_epi16::<4>(_mm512_and_si512(qh, m03)),
            );
            l[s + 2] = _mm512_ternarylogic_epi32::<OR_LOW>(
                ql1,
                low4,
                _mm512_slli_epi16::<2>(_mm512_and_si512(qh, m0c)),
            );
            l[s + 4] = _mm512_ternarylogic_epi32::<OR_LOW>(
                _mm512_srli_epi16::<4>(ql0),
                low4,
                _mm512_and_si512(qh, m30),
            );
            l[s + 6] = _mm512_ternarylogic_epi32::<OR_LOW>(
                _mm512_srli_epi16::<4>(ql1),
                low4,
                _mm512_and_si512(_mm512_srli_epi16::<2>(qh), m30),
            );
        }
    }
    Q6Prep { l, sc, nsc, d }
}

/// Adds one Q6_K super-block for four tokens (Q8_K blocks at `y`) to `acc`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q6_group<const G: usize>(w: &Q6Prep, y: &[*const u8; MAXT], sums: &mut [[__m512i; 2]]) {
    let zero = _mm512_setzero_si512();
    let n = 4 * G;
    let mut s1 = [zero; MAXT];
    for (t, s1) in s1.iter_mut().enumerate().take(n) {
        // The -32 level offset first: -32 · Σ_s sc_s · bsum_s (the group sums of a
        // well-formed Q8_K block, as the AVX2 kernels use them).
        // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
        let (b0, b1) = unsafe {
            (
                bcast128(y[t].add(Q8K_BSUMS)),
                bcast128(y[t].add(Q8K_BSUMS + 16)),
            )
        };
        *s1 = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(zero, w.nsc[0], b0), w.nsc[1], b1);
    }
    // Sub-block pairs outer, tokens inner (see `k4_group`).
    for k in 0..8 {
        for t in 0..n {
            // SAFETY: as above.
            let (y0, y1) = unsafe {
                let yq = y[t].add(Q8K_QS + 32 * k);
                (bcast128(yq), bcast128(yq.add(16)))
            };
            // Per lane at most 4 · 63 · 128 < 2^15 in magnitude: packing two
            // sub-blocks' sums to i16 is exact (see `k4_group`).
            let p = _mm512_packs_epi32(
                _mm512_dpbusd_epi32(zero, w.l[2 * k], y0),
                _mm512_dpbusd_epi32(zero, w.l[2 * k + 1], y1),
            );
            s1[t] = _mm512_dpwssd_epi32(s1[t], p, w.sc[k]);
        }
    }
    for g in 0..G {
        let s1 = reduce4([s1[4 * g], s1[4 * g + 1], s1[4 * g + 2], s1[4 * g + 3]]);
        if let Some(o) = sums.get_mut(g) {
            *o = [s1, zero];
        }
    }
}

/// The float steps of one Q6_K super-block for a group of four tokens (see [`k4_step`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q6_step(w: &Q6Prep, acc: Acc512, sums: [__m512i; 2], y: &[*const u8; 4]) -> Acc512 {
    // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
    let d8 = unsafe { d8_lanes(y) };
    tiled_step(acc, sums[0], w.d, None, d8)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_panel_512<const G: usize>(p: &Panel, out: &mut [f32]) {
    walk!(
        p,
        Q6_K_BYTES,
        out,
        q6_prep,
        q6_group,
        q6_step,
        G,
        4,
        [_mm512_setzero_pd(); 2],
        _mm512_setzero_si512(),
        lanes_512
    );
}

// ---------------------------------------------------------------------------------------
// AVX2: the same scheme with two weight rows per register (row `r` in 128-bit lane `r`)
// and `maddubs` + `madd` in place of the VNNI instructions; after the reduction, f32 lane
// `4r + t` holds row `r`, token `t` of a group of four tokens.

/// The 16 bytes at `p` in both 128-bit lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bcast128_2(p: *const u8) -> __m256i {
    // SAFETY: forwarded to the caller.
    _mm256_broadcastsi128_si256(unsafe { ld128(p) })
}

/// Bytes `off..off + 16` and `off + 16..off + 32` of two rows: lane `r` of the first
/// result holds row `r`'s first sixteen bytes, of the second its next sixteen.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn gather32_2(x: &[*const u8; 2], off: usize) -> (__m256i, __m256i) {
    // SAFETY: the caller guarantees 32 readable bytes at `off` in each row.
    let (a, b) = unsafe {
        (
            _mm256_loadu_si256(x[0].add(off).cast()),
            _mm256_loadu_si256(x[1].add(off).cast()),
        )
    };
    (
        _mm256_permute2x128_si256::<0x20>(a, b),
        _mm256_permute2x128_si256::<0x31>(a, b),
    )
}

/// Shuffle control putting i16 element `s` (0..8) of each 128-bit lane in all eight.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bcast_i16(v: __m256i, s: usize) -> __m256i {
    let lo = (2 * (s & 7)) as i16;
    _mm256_shuffle_epi8(v, _mm256_set1_epi16(lo | ((lo + 1) << 8)))
}

/// Per 128-bit lane `r`: the lane sums of `v[0..4]` as lanes `4r..4r+4` (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn reduce4_2(v: [__m256i; 4]) -> __m256i {
    let s01 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(v[0], v[1]),
        _mm256_unpackhi_epi32(v[0], v[1]),
    );
    let s23 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(v[2], v[3]),
        _mm256_unpackhi_epi32(v[2], v[3]),
    );
    _mm256_add_epi32(
        _mm256_unpacklo_epi64(s01, s23),
        _mm256_unpackhi_epi64(s01, s23),
    )
}

/// `a · b + c` for eight lanes, rounded once from f64 to f32 (see [`tiled_step`]).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fma_f64_2(a: __m256, b: __m256, c: __m256) -> __m256 {
    let lo = _mm256_cvtpd_ps(_mm256_fmadd_pd(
        _mm256_cvtps_pd(_mm256_castps256_ps128(a)),
        _mm256_cvtps_pd(_mm256_castps256_ps128(b)),
        _mm256_cvtps_pd(_mm256_castps256_ps128(c)),
    ));
    let hi = _mm256_cvtpd_ps(_mm256_fmadd_pd(
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(a)),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(b)),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(c)),
    ));
    _mm256_set_m128(hi, lo)
}

/// [`tiled_step`] for eight (row, token) lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tiled_step_2(
    acc: __m256,
    s1: __m256i,
    d: __m256,
    min: Option<(__m256, __m256i)>,
    d8: __m256,
) -> __m256 {
    let mut r = _mm256_mul_ps(_mm256_cvtepi32_ps(s1), d);
    if let Some((ndmin, s2)) = min {
        r = fma_f64_2(ndmin, _mm256_cvtepi32_ps(s2), r);
    }
    fma_f64_2(r, d8, acc)
}

/// The activation scales of a group of four tokens, token `t` in lanes `t` and `4 + t`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn d8_lanes_2(y: &[*const u8; 4]) -> __m256 {
    // SAFETY: the caller guarantees a Q8_K block at each `y[t]`; `d` is its first field.
    let d = y.map(|p| unsafe { p.cast::<f32>().read_unaligned() });
    let v = _mm_setr_ps(d[0], d[1], d[2], d[3]);
    _mm256_set_m128(v, v)
}

/// Per-row values in lanes `4r..4r+4`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn per_row_2(v0: f32, v1: f32) -> __m256 {
    _mm256_set_m128(_mm_set1_ps(v1), _mm_set1_ps(v0))
}

/// [`K4Prep`] for a row pair: `l[2s + h]` the levels of half `h` of sub-block `s`,
/// `sc[s]` the rows' scale of sub-block `s` in every i16 of their lane, `mn` as in
/// [`K4Prep`].
struct K4Prep2 {
    l: [__m256i; 16],
    sc: [__m256i; 8],
    mn: [__m256i; 2],
    d: __m256,
    ndmin: __m256,
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_prep_2<const Q5: bool>(x: &[*const u8; 2]) -> K4Prep2 {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    let mut scw = [0u64; 2];
    let mut mnw = [0u64; 2];
    let mut d = [0.0f32; 2];
    let mut dmin = [0.0f32; 2];
    for r in 0..2 {
        // SAFETY: the caller guarantees a whole block at each `x[r]`: the f16 pair at 0
        // and the twelve scale bytes at 4.
        let (dm, a0, a1, a2) = unsafe {
            let p = x[r];
            (
                _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())),
                u32::from_le(p.add(4).cast::<u32>().read_unaligned()),
                u32::from_le(p.add(8).cast::<u32>().read_unaligned()),
                u32::from_le(p.add(12).cast::<u32>().read_unaligned()),
            )
        };
        d[r] = _mm_cvtss_f32(dm);
        dmin[r] = _mm_cvtss_f32(_mm_movehdup_ps(dm));
        let sc_lo = a0 & LOW6;
        let mn_lo = a1 & LOW6;
        let sc_hi = (a2 & LOW4) | (((a0 >> 6) & LOW2) << 4);
        let mn_hi = ((a2 >> 4) & LOW4) | (((a1 >> 6) & LOW2) << 4);
        scw[r] = u64::from(sc_lo) | (u64::from(sc_hi) << 32);
        mnw[r] = u64::from(mn_lo) | (u64::from(mn_hi) << 32);
    }
    // SAFETY: the arrays are 16 readable bytes each.
    let (sc16, mn16) = unsafe {
        (
            _mm256_cvtepu8_epi16(ld128(scw.as_ptr().cast())),
            _mm256_cvtepu8_epi16(ld128(mnw.as_ptr().cast())),
        )
    };
    let sc = core::array::from_fn(|s| bcast_i16(sc16, s));
    let mn = [
        _mm256_unpacklo_epi16(mn16, mn16),
        _mm256_unpackhi_epi16(mn16, mn16),
    ];
    let low4 = _mm256_set1_epi8(0x0F);
    let bit4 = _mm256_set1_epi8(0x10);
    let qs_off = if Q5 { 48 } else { 16 };
    let qh = if Q5 {
        // SAFETY: Q5_K's 32 high-bit bytes are at 16.
        unsafe { gather32_2(x, 16) }
    } else {
        (_mm256_setzero_si256(), _mm256_setzero_si256())
    };
    let mut l = [_mm256_setzero_si256(); 16];
    for q in 0..4 {
        // SAFETY: the 128 level bytes are at `qs_off`.
        let (p0, p1) = unsafe { gather32_2(x, qs_off + 32 * q) };
        let mut v = [
            _mm256_and_si256(p0, low4),
            _mm256_and_si256(p1, low4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(p0), low4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(p1), low4),
        ];
        if Q5 {
            for (k, v) in v.iter_mut().enumerate() {
                let s = 2 * q + k / 2;
                let h = if k % 2 == 0 { qh.0 } else { qh.1 };
                let moved = if s <= 4 {
                    _mm256_sll_epi16(h, _mm_cvtsi32_si128(4 - s as i32))
                } else {
                    _mm256_srl_epi16(h, _mm_cvtsi32_si128(s as i32 - 4))
                };
                *v = _mm256_or_si256(*v, _mm256_and_si256(moved, bit4));
            }
        }
        l[4 * q..4 * q + 4].copy_from_slice(&v);
    }
    K4Prep2 {
        l,
        sc,
        mn,
        d: per_row_2(d[0], d[1]),
        ndmin: per_row_2(-dmin[0], -dmin[1]),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_group_2<const G: usize>(
    w: &K4Prep2,
    y: &[*const u8; MAXT],
    sums: &mut [[__m256i; 2]],
) {
    let zero = _mm256_setzero_si256();
    let n = 4 * G;
    let mut s1 = [zero; MAXT];
    // Sub-blocks outer, tokens inner (see `k4_group`).
    for s in 0..8 {
        for t in 0..n {
            // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
            let (y0, y1) = unsafe {
                let yq = y[t].add(Q8K_QS + 32 * s);
                (bcast128_2(yq), bcast128_2(yq.add(16)))
            };
            // Pair sums below 2 · 31 · 128 each, four of them below 2^15: the i16 adds
            // are exact, and `madd` weights them with the scale (< 64) exactly.
            let p = _mm256_add_epi16(
                _mm256_maddubs_epi16(w.l[2 * s], y0),
                _mm256_maddubs_epi16(w.l[2 * s + 1], y1),
            );
            s1[t] = _mm256_add_epi32(s1[t], _mm256_madd_epi16(p, w.sc[s]));
        }
    }
    for g in 0..G {
        let mut s2 = [zero; 4];
        for (i, s2) in s2.iter_mut().enumerate() {
            // SAFETY: as above; the sixteen group sums are at `Q8K_BSUMS`.
            let (b0, b1) = unsafe {
                let yq = y[4 * g + i];
                (
                    bcast128_2(yq.add(Q8K_BSUMS)),
                    bcast128_2(yq.add(Q8K_BSUMS + 16)),
                )
            };
            *s2 = _mm256_add_epi32(
                _mm256_madd_epi16(w.mn[0], b0),
                _mm256_madd_epi16(w.mn[1], b1),
            );
        }
        let s1 = reduce4_2([s1[4 * g], s1[4 * g + 1], s1[4 * g + 2], s1[4 * g + 3]]);
        if let Some(o) = sums.get_mut(g) {
            *o = [s1, reduce4_2(s2)];
        }
    }
}

/// [`k4_step`] for a row pair.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_step_2(w: &K4Prep2, acc: __m256, sums: [__m256i; 2], y: &[*const u8; 4]) -> __m256 {
    // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
    let d8 = unsafe { d8_lanes_2(y) };
    tiled_step_2(acc, sums[0], w.d, Some((w.ndmin, sums[1])), d8)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_panel_avx2<const Q5: bool>(p: &Panel, out: &mut [f32]) {
    let block = if Q5 { Q5_K_BYTES } else { Q4_K_BYTES };
    walk!(
        p,
        block,
        out,
        k4_prep_2::<Q5>,
        k4_group_2,
        k4_step_2,
        GROUPS_256,
        2,
        _mm256_setzero_ps(),
        _mm256_setzero_si256(),
        lanes_256
    );
}

/// [`Q6Prep`] for a row pair: `sc[s]` the rows' scale of sub-block `s` in every i16 of
/// their lane.
struct Q6Prep2 {
    l: [__m256i; 16],
    sc: [__m256i; 16],
    nsc: [__m256i; 2],
    d: __m256,
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6_prep_2(x: &[*const u8; 2]) -> Q6Prep2 {
    // SAFETY: the caller guarantees a whole block at each `x[r]`: `d` at 208, the
    // sixteen i8 scales at 192.
    let (dh, raw) = unsafe {
        (
            x.map(|p| p.add(208).cast::<u16>().read_unaligned()),
            _mm256_set_m128i(ld128(x[1].add(192)), ld128(x[0].add(192))),
        )
    };
    let dv = _mm_cvtph_ps(_mm_cvtsi32_si128(
        (u32::from(u16::from_le(dh[0])) | (u32::from(u16::from_le(dh[1])) << 16)) as i32,
    ));
    let d = per_row_2(_mm_cvtss_f32(dv), _mm_cvtss_f32(_mm_movehdup_ps(dv)));
    let scw = [
        _mm256_srai_epi16::<8>(_mm256_unpacklo_epi8(raw, raw)),
        _mm256_srai_epi16::<8>(_mm256_unpackhi_epi8(raw, raw)),
    ];
    let sc = core::array::from_fn(|s| bcast_i16(scw[s / 8], s % 8));
    let nsc = scw.map(|v| _mm256_slli_epi16::<5>(_mm256_sub_epi16(_mm256_setzero_si256(), v)));
    let low4 = _mm256_set1_epi8(0x0F);
    let m03 = _mm256_set1_epi8(0x03);
    let m0c = _mm256_set1_epi8(0x0C);
    let m30 = _mm256_set1_epi8(0x30);
    let mut l = [_mm256_setzero_si256(); 16];
    for half in 0..2 {
        // SAFETY: `ql` is at 0 (128 bytes), `qh` at 128 (64 bytes).
        let (ql0, ql1, qh) = unsafe {
            (
                gather32_2(x, 64 * half),
                gather32_2(x, 64 * half + 32),
                gather32_2(x, 128 + 32 * half),
            )
        };
        for (piece, (ql0, ql1, qh)) in [(ql0.0, ql1.0, qh.0), (ql0.1, ql1.1, qh.1)]
            .into_iter()
            .enumerate()
        {
            let s = 8 * half + piece;
            let or = |a: __m256i, c: __m256i| _mm256_or_si256(_mm256_and_si256(a, low4), c);
            l[s] = or(ql0, _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m03)));
            l[s + 2] = or(ql1, _mm256_slli_epi16::<2>(_mm256_and_si256(qh, m0c)));
            l[s + 4] = or(_mm256_srli_epi16::<4>(ql0), _mm256_and_si256(qh, m30));
            l[s + 6] = or(
                _mm256_srli_epi16::<4>(ql1),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
            );
        }
    }
    Q6Prep2 { l, sc, nsc, d }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6_group_2<const G: usize>(
    w: &Q6Prep2,
    y: &[*const u8; MAXT],
    sums: &mut [[__m256i; 2]],
) {
    let zero = _mm256_setzero_si256();
    let n = 4 * G;
    let mut s1 = [zero; MAXT];
    for (t, s1) in s1.iter_mut().enumerate().take(n) {
        // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
        let (b0, b1) = unsafe {
            (
                bcast128_2(y[t].add(Q8K_BSUMS)),
                bcast128_2(y[t].add(Q8K_BSUMS + 16)),
            )
        };
        *s1 = _mm256_add_epi32(
            _mm256_madd_epi16(w.nsc[0], b0),
            _mm256_madd_epi16(w.nsc[1], b1),
        );
    }
    // Sub-blocks outer, tokens inner (see `k4_group`).
    for s in 0..16 {
        for t in 0..n {
            // SAFETY: as above.
            let ys = unsafe { bcast128_2(y[t].add(Q8K_QS + 16 * s)) };
            // Pair sums below 2 · 63 · 128 < 2^15: `maddubs` does not saturate.
            let p = _mm256_maddubs_epi16(w.l[s], ys);
            s1[t] = _mm256_add_epi32(s1[t], _mm256_madd_epi16(p, w.sc[s]));
        }
    }
    for g in 0..G {
        let s1 = reduce4_2([s1[4 * g], s1[4 * g + 1], s1[4 * g + 2], s1[4 * g + 3]]);
        if let Some(o) = sums.get_mut(g) {
            *o = [s1, zero];
        }
    }
}

/// [`q6_step`] for a row pair.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6_step_2(w: &Q6Prep2, acc: __m256, sums: [__m256i; 2], y: &[*const u8; 4]) -> __m256 {
    // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
    let d8 = unsafe { d8_lanes_2(y) };
    tiled_step_2(acc, sums[0], w.d, None, d8)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_panel_avx2(p: &Panel, out: &mut [f32]) {
    walk!(
        p,
        Q6_K_BYTES,
        out,
        q6_prep_2,
        q6_group_2,
        q6_step_2,
        GROUPS_256,
        2,
        _mm256_setzero_ps(),
        _mm256_setzero_si256(),
        lanes_256
    );
}

// ---------------------------------------------------------------------------------------
// AVX2 with AVX-VNNI: the AVX-512 scheme on YMM registers (two rows per register), with
// the AVX2 kernels' unpacking and float steps.

/// The scales of sub-blocks `s` and `u` in the low and high four i16 of each row's lane
/// (from the broadcast scales of [`K4Prep2`] or [`Q6Prep2`]): the weights `vpdpwssd`
/// applies to `packs_epi32(a, b)` (see [`pick_pair`]).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[inline]
fn pair_2(sc_s: __m256i, sc_u: __m256i) -> __m256i {
    _mm256_blend_epi16::<0xF0>(sc_s, sc_u)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[inline]
unsafe fn k4_group_vnni<const G: usize>(
    w: &K4Prep2,
    y: &[*const u8; MAXT],
    sums: &mut [[__m256i; 2]],
) {
    let zero = _mm256_setzero_si256();
    let n = 4 * G;
    let mut s1 = [zero; MAXT];
    for q in 0..4 {
        let sc = pair_2(w.sc[2 * q], w.sc[2 * q + 1]);
        for t in 0..n {
            // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
            let yv = unsafe {
                let yq = y[t].add(Q8K_QS + 64 * q);
                [
                    bcast128_2(yq),
                    bcast128_2(yq.add(16)),
                    bcast128_2(yq.add(32)),
                    bcast128_2(yq.add(48)),
                ]
            };
            let lo = _mm256_dpbusd_avx_epi32(
                _mm256_dpbusd_avx_epi32(zero, w.l[4 * q], yv[0]),
                w.l[4 * q + 1],
                yv[1],
            );
            let hi = _mm256_dpbusd_avx_epi32(
                _mm256_dpbusd_avx_epi32(zero, w.l[4 * q + 2], yv[2]),
                w.l[4 * q + 3],
                yv[3],
            );
            // As in `k4_group`: each lane below 2^15 in magnitude, so packing is exact.
            s1[t] = _mm256_dpwssd_avx_epi32(s1[t], _mm256_packs_epi32(lo, hi), sc);
        }
    }
    for g in 0..G {
        let mut s2 = [zero; 4];
        for (i, s2) in s2.iter_mut().enumerate() {
            // SAFETY: as above; the sixteen group sums are at `Q8K_BSUMS`.
            let (b0, b1) = unsafe {
                let yq = y[4 * g + i];
                (
                    bcast128_2(yq.add(Q8K_BSUMS)),
                    bcast128_2(yq.add(Q8K_BSUMS + 16)),
                )
            };
            *s2 = _mm256_dpwssd_avx_epi32(_mm256_dpwssd_avx_epi32(zero, w.mn[0], b0), w.mn[1], b1);
        }
        let s1 = reduce4_2([s1[4 * g], s1[4 * g + 1], s1[4 * g + 2], s1[4 * g + 3]]);
        if let Some(o) = sums.get_mut(g) {
            *o = [s1, reduce4_2(s2)];
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn k4_panel_vnni<const Q5: bool>(p: &Panel, out: &mut [f32]) {
    let block = if Q5 { Q5_K_BYTES } else { Q4_K_BYTES };
    walk!(
        p,
        block,
        out,
        k4_prep_2::<Q5>,
        k4_group_vnni,
        k4_step_2,
        GROUPS_256,
        2,
        _mm256_setzero_ps(),
        _mm256_setzero_si256(),
        lanes_256
    );
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[inline]
unsafe fn q6_group_vnni<const G: usize>(
    w: &Q6Prep2,
    y: &[*const u8; MAXT],
    sums: &mut [[__m256i; 2]],
) {
    let zero = _mm256_setzero_si256();
    let n = 4 * G;
    let mut s1 = [zero; MAXT];
    for (t, s1) in s1.iter_mut().enumerate().take(n) {
        // SAFETY: the caller guarantees whole Q8_K blocks at `y[t]`.
        let (b0, b1) = unsafe {
            (
                bcast128_2(y[t].add(Q8K_BSUMS)),
                bcast128_2(y[t].add(Q8K_BSUMS + 16)),
            )
        };
        *s1 = _mm256_dpwssd_avx_epi32(_mm256_dpwssd_avx_epi32(zero, w.nsc[0], b0), w.nsc[1], b1);
    }
    for k in 0..8 {
        let sc = pair_2(w.sc[2 * k], w.sc[2 * k + 1]);
        for t in 0..n {
            // SAFETY: as above.
            let (y0, y1) = unsafe {
                let yq = y[t].add(Q8K_QS + 32 * k);
                (bcast128_2(yq), bcast128_2(yq.add(16)))
            };
            // As in `q6_group`: each lane below 2^15 in magnitude.
            let p = _mm256_packs_epi32(
                _mm256_dpbusd_avx_epi32(zero, w.l[2 * k], y0),
                _mm256_dpbusd_avx_epi32(zero, w.l[2 * k + 1], y1),
            );
            s1[t] = _mm256_dpwssd_avx_epi32(s1[t], p, sc);
        }
    }
    for g in 0..G {
        let s1 = reduce4_2([s1[4 * g], s1[4 * g + 1], s1[4 * g + 2], s1[4 * g + 3]]);
        if let Some(o) = sums.get_mut(g) {
            *o = [s1, zero];
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn q6_panel_vnni(p: &Panel, out: &mut [f32]) {
    walk!(
        p,
        Q6_K_BYTES,
        out,
        q6_prep_2,
        q6_group_vnni,
        q6_step_2,
        GROUPS_256,
        2,
        _mm256_setzero_ps(),
        _mm256_setzero_si256(),
        lanes_256
    );
}

#[cfg(test)]
mod tests {
    //! Each panel variant against a scalar twin of the tiled order, bit for bit, on
    //! random, adversarial and real (Gemma 3) blocks over many shapes.
    extern crate std;

    use super::*;
    use crate::kquants::{unpack_k4_scales, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
    use embodios_testkit::{Rng, TestModel};
    use std::vec::Vec;
    use std::{format, vec};

    /// `a · b + c` rounded once from f64, as the engine's `ops::fma`.
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        (f64::from(a) * f64::from(b) + f64::from(c)) as f32
    }

    /// The tiled-order product of one weight row with one Q8_K row, written from the
    /// block definitions (the order of the engine's `lanes::dot_q4_k_tiled` etc.).
    fn twin(kind: Kind, w: &[u8], a: &[u8]) -> f32 {
        let mut acc = 0.0f32;
        for (x, y) in w.chunks_exact(kind.block()).zip(a.chunks_exact(Q8_K_BYTES)) {
            let y = BlockQ8K::parse(y.try_into().unwrap());
            let yv = |i: usize| i32::from(y.qs[i] as i8);
            let r = match kind {
                Kind::Q4K | Kind::Q5K => {
                    let (lv, d, dmin, scales) = if kind == Kind::Q4K {
                        let b = BlockQ4K::parse(x.try_into().unwrap());
                        (b.levels(), b.d.to_f32(), b.dmin.to_f32(), b.scales)
                    } else {
                        let b = BlockQ5K::parse(x.try_into().unwrap());
                        (b.levels(), b.d.to_f32(), b.dmin.to_f32(), b.scales)
                    };
                    let (sc, mn) = unpack_k4_scales(scales);
                    let (mut s1, mut s2) = (0i32, 0i32);
                    for s in 0..8 {
                        let dot: i32 = (32 * s..32 * s + 32)
                            .map(|i| i32::from(lv[i]) * yv(i))
                            .sum();
                        s1 += i32::from(sc[s]) * dot;
                        s2 += i32::from(mn[s])
                            * (i32::from(y.bsums[2 * s]) + i32::from(y.bsums[2 * s + 1]));
                    }
                    fma(-dmin, s2 as f32, s1 as f32 * d)
                }
                Kind::Q6K => {
                    let b = BlockQ6K::parse(x.try_into().unwrap());
                    let lv = b.levels();
                    let mut s1 = 0i32;
                    for s in 0..16 {
                        let dot: i32 = (16 * s..16 * s + 16)
                            .map(|i| i32::from(lv[i]) * yv(i))
                            .sum();
                        s1 += i32::from(b.scales[s] as i8) * dot;
                    }
                    s1 as f32 * b.d.to_f32()
                }
            };
            acc = fma(r, y.d, acc);
        }
        acc
    }

    /// Every panel variant this machine can run. AVX2 is required (it is the floor of
    /// the SIMD set); a variant the CPU lacks cannot be chosen on it either, so it is
    /// named on stderr as not exercised here rather than counted as tested.
    fn isas() -> Vec<Isa> {
        assert!(
            super::super::available(),
            "these tests need an AVX2+FMA+F16C CPU"
        );
        let mut v = Vec::new();
        if super::super::avx512_available() {
            v.push(Isa::Avx512);
        } else {
            std::eprintln!(
                "note: no AVX-512 F/BW/VL/VNNI here: the AVX-512 K-quant panels are not exercised"
            );
        }
        if super::super::avx_vnni_available() {
            v.push(Isa::AvxVnni);
        } else {
            std::eprintln!("note: no AVX-VNNI here: the AVX-VNNI K-quant panels are not exercised");
        }
        v.push(Isa::Avx2);
        v
    }

    /// A finite f16 (often small or large), as bytes.
    fn f16_bytes(rng: &mut Rng) -> [u8; 2] {
        let v = rng.normal() * 2f32.powi((rng.next_u64() % 20) as i32 - 12);
        half::f16::from_f32(v).to_bits().to_le_bytes()
    }

    /// Weight rows of random bytes with finite scales; `fill` forces every level byte.
    fn garbage_rows(
        rng: &mut Rng,
        kind: Kind,
        rows: usize,
        nb: usize,
        fill: Option<u8>,
    ) -> Vec<u8> {
        let mut w: Vec<u8> = (0..rows * nb * kind.block())
            .map(|_| rng.next_u64() as u8)
            .collect();
        for b in w.chunks_exact_mut(kind.block()) {
            let (levels, scales) = match kind {
                Kind::Q4K => (16..144, [0usize, 2].as_slice()),
                Kind::Q5K => (16..176, [0usize, 2].as_slice()),
                Kind::Q6K => (0..192, [208usize].as_slice()),
            };
            if let Some(v) = fill {
                b[levels].fill(v);
            }
            for &o in scales {
                b[o..o + 2].copy_from_slice(&f16_bytes(rng));
            }
        }
        w
    }

    /// Q8_K rows of random values (or all `fill`) with consistent group sums.
    fn garbage_acts(
        rng: &mut Rng,
        tokens: usize,
        nb: usize,
        stride: usize,
        fill: Option<u8>,
    ) -> Vec<u8> {
        let mut a = vec![0u8; tokens * stride];
        for row in a.chunks_exact_mut(stride) {
            for blk in row[..nb * Q8_K_BYTES].chunks_exact_mut(Q8_K_BYTES) {
                let d = rng.uniform(1e-4, 2.0);
                blk[..4].copy_from_slice(&d.to_le_bytes());
                for v in &mut blk[4..260] {
                    *v = fill.unwrap_or(rng.next_u64() as u8);
                }
                for g in 0..16 {
                    let s: i32 = blk[4 + 16 * g..20 + 16 * g]
                        .iter()
                        .map(|&q| i32::from(q as i8))
                        .sum();
                    blk[260 + 2 * g..262 + 2 * g].copy_from_slice(&(s as i16).to_le_bytes());
                }
            }
        }
        a
    }

    /// Quantized activations of random values (what the engine feeds the panels).
    fn real_acts(rng: &mut Rng, tokens: usize, nb: usize) -> Vec<u8> {
        let mut a = vec![0u8; tokens * nb * Q8_K_BYTES];
        for row in a.chunks_exact_mut(nb * Q8_K_BYTES) {
            let x = rng.vec_normal(nb * 256, 1.5);
            crate::kquants::quantize_act_q8_k(&x, row);
        }
        a
    }

    /// Runs `isa`'s panel and checks every output against the twin.
    #[allow(clippy::too_many_arguments)]
    fn check(
        kind: Kind,
        isa: Isa,
        w: &[u8],
        rb: usize,
        a: &[u8],
        ab: usize,
        tokens: usize,
        rows: usize,
        what: &str,
    ) {
        let mut out = vec![f32::NAN; rows * tokens];
        run(kind, Some(isa), w, rb, a, ab, tokens, &mut out);
        for r in 0..rows {
            let wr = &w[r * rb..(r + 1) * rb];
            for t in 0..tokens {
                let want = twin(
                    kind,
                    wr,
                    &a[t * ab..t * ab + rb / kind.block() * Q8_K_BYTES],
                );
                let got = out[r * tokens + t];
                assert!(
                    got.to_bits() == want.to_bits(),
                    "{kind:?} {isa:?} {what}: rows {rows} tokens {tokens} row {r} token {t}: got {got:e}, want {want:e}"
                );
            }
        }
    }

    #[test]
    fn panels_match_the_twin_on_every_shape() {
        let mut rng = Rng::new(5);
        for kind in [Kind::Q4K, Kind::Q5K, Kind::Q6K] {
            for isa in isas() {
                for rows in 1..=13 {
                    for tokens in 1..=17 {
                        let nb = 1 + (rows + tokens) % 3;
                        let rb = nb * kind.block();
                        let w = garbage_rows(&mut rng, kind, rows, nb, None);
                        // Every other shape with a padded activation stride.
                        let ab = nb * Q8_K_BYTES + if tokens % 2 == 0 { 0 } else { 64 };
                        let a = garbage_acts(&mut rng, tokens, nb, ab, None);
                        check(kind, isa, &w, rb, &a, ab, tokens, rows, "random bytes");
                    }
                }
                // More tokens than one pass keeps, and real quantized data.
                for (rows, tokens) in [(5, 70), (8, 64), (3, 129)] {
                    let nb = 2;
                    let rb = nb * kind.block();
                    let x = rng.vec_normal(rows * nb * 256, 0.3);
                    let mut w = vec![0u8; rows * rb];
                    let quantize = match kind {
                        Kind::Q4K => crate::kfit::quantize_q4_k,
                        Kind::Q5K => crate::kfit::quantize_q5_k,
                        Kind::Q6K => crate::kfit::quantize_q6_k,
                    };
                    quantize(&x, &mut w);
                    let a = real_acts(&mut rng, tokens, nb);
                    check(
                        kind,
                        isa,
                        &w,
                        rb,
                        &a,
                        nb * Q8_K_BYTES,
                        tokens,
                        rows,
                        "quantized",
                    );
                }
            }
        }
    }

    #[test]
    fn panels_match_the_twin_at_the_extremes() {
        // Largest levels against -128 and 127 everywhere: the i16 bounds of the
        // `vpdpwssd` operands and of `maddubs` are reached.
        let mut rng = Rng::new(6);
        for kind in [Kind::Q4K, Kind::Q5K, Kind::Q6K] {
            for isa in isas() {
                for (wf, af) in [(0xFF, 0x80), (0xFF, 0x7F), (0x00, 0x80), (0x88, 0x81)] {
                    let (rows, tokens, nb) = (6, 9, 2);
                    let rb = nb * kind.block();
                    let w = garbage_rows(&mut rng, kind, rows, nb, Some(wf));
                    let a = garbage_acts(&mut rng, tokens, nb, nb * Q8_K_BYTES, Some(af));
                    check(
                        kind,
                        isa,
                        &w,
                        rb,
                        &a,
                        nb * Q8_K_BYTES,
                        tokens,
                        rows,
                        &format!("extreme {wf:02x}/{af:02x}"),
                    );
                }
            }
        }
    }

    #[test]
    fn twin_matches_the_avx2_tiled_kernels() {
        // Ties the twin to the kernels the engine already checks against its own twins.
        let mut rng = Rng::new(8);
        for kind in [Kind::Q4K, Kind::Q6K] {
            for _ in 0..20 {
                let nb = 3;
                let w = garbage_rows(&mut rng, kind, 1, nb, None);
                let a = garbage_acts(&mut rng, 1, nb, nb * Q8_K_BYTES, None);
                let got = match kind {
                    Kind::Q6K => super::super::kquant_dot::dot_q6_k_tiled(&w, &a),
                    _ => super::super::kquant_dot::dot_q4_k_tiled(&w, &a),
                };
                assert_eq!(got.to_bits(), twin(kind, &w, &a).to_bits(), "{kind:?}");
            }
        }
    }

    #[test]
    fn panels_match_the_twin_on_gemma3_tensors() {
        let bytes = TestModel::Gemma3.bytes();
        let file = embodios_gguf::GgufFile::parse(&bytes).expect("gemma3 parses");
        let mut rng = Rng::new(9);
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        for t in &file.tensors {
            let kind = match t.ty {
                GgmlType::Q4_K => Kind::Q4K,
                GgmlType::Q5_K => Kind::Q5K,
                GgmlType::Q6_K => Kind::Q6K,
                _ => continue,
            };
            let count = seen.entry(t.ty.name()).or_default();
            if *count >= 4 {
                continue;
            }
            *count += 1;
            let rb = t.row_bytes() as usize;
            let nb = rb / kind.block();
            let n_rows = t.n_rows() as usize;
            for (first, rows, tokens) in [(0, 13, 17), (n_rows - 7, 7, 9)] {
                let w = &t.data[first * rb..(first + rows) * rb];
                let a = real_acts(&mut rng, tokens, nb);
                for isa in isas() {
                    check(kind, isa, w, rb, &a, nb * Q8_K_BYTES, tokens, rows, t.name);
                }
            }
        }
        assert!(
            seen.get("Q4_K").is_some_and(|&n| n > 0),
            "no Q4_K tensor checked: {seen:?}"
        );
        assert!(
            seen.get("Q6_K").is_some_and(|&n| n > 0),
            "no Q6_K tensor checked: {seen:?}"
        );
    }

    /// CPU time of this thread so far, in ns (the scheduler's own count).
    fn cpu_ns() -> u64 {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("schedstat field")
    }

    /// Not a check: CPU time of each variant on one 2048 x 5632 x 64 product, against
    /// the AVX2 tiles the engine used before (`cargo test --release -p embodios-quant --lib
    /// panel_timing -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn panel_timing() {
        let (rows, cols, tokens) = (5632, 2048, 64);
        isas();
        let mut rng = Rng::new(1);
        let nb = cols / 256;
        let ab = nb * Q8_K_BYTES;
        let a = real_acts(&mut rng, tokens, nb);
        for kind in [Kind::Q4K, Kind::Q5K, Kind::Q6K] {
            let rb = nb * kind.block();
            let x = rng.vec_normal(rows * cols, 0.3);
            let mut w = vec![0u8; rows * rb];
            match kind {
                Kind::Q4K => crate::kfit::quantize_q4_k(&x, &mut w),
                Kind::Q5K => crate::kfit::quantize_q5_k(&x, &mut w),
                Kind::Q6K => crate::kfit::quantize_q6_k(&x, &mut w),
            }
            let mut out = vec![0.0f32; rows * tokens];
            // The scheduler's count may advance in whole ticks: time `REPS` calls.
            const REPS: u64 = 12;
            let mut best = [u64::MAX; 5];
            for _ in 0..5 {
                let p = Panel {
                    w: w.as_ptr(),
                    rb,
                    a: a.as_ptr(),
                    ab,
                    tokens,
                    rows,
                    nb,
                };
                let t0 = cpu_ns();
                for _ in 0..REPS {
                    // SAFETY: `isas` checked AVX-512; the buffers hold the shapes.
                    unsafe {
                        match kind {
                            Kind::Q6K => q6_panel_512::<1>(&p, &mut out),
                            Kind::Q5K => k4_panel_512::<true, 1>(&p, &mut out),
                            Kind::Q4K => k4_panel_512::<false, 1>(&p, &mut out),
                        }
                    }
                }
                best[3] = best[3].min((cpu_ns() - t0) / REPS);
                for (i, isa) in [(0, Isa::Avx512), (1, Isa::Avx2), (4, Isa::AvxVnni)] {
                    let t0 = cpu_ns();
                    for _ in 0..REPS {
                        run(kind, Some(isa), &w, rb, &a, ab, tokens, &mut out);
                    }
                    best[i] = best[i].min((cpu_ns() - t0) / REPS);
                }
                let t0 = cpu_ns();
                let toks: Vec<&[u8]> = a.chunks_exact(ab).collect();
                for r in (0..rows * REPS as usize).step_by(2).map(|r| r % rows) {
                    let (r0, r1) = (&w[r * rb..(r + 1) * rb], &w[(r + 1) * rb..(r + 2) * rb]);
                    for q in toks.chunks_exact(4) {
                        let y = [q[0], q[1], q[2], q[3]];
                        let v = match kind {
                            Kind::Q4K => super::super::kquant_dot::tile_q4_k_tiled([r0, r1], y),
                            Kind::Q6K => [
                                super::super::kquant_dot::dot4_q6_k_tiled(r0, y),
                                super::super::kquant_dot::dot4_q6_k_tiled(r1, y),
                            ],
                            Kind::Q5K => [[0.0; 4]; 2],
                        };
                        out[r] = v[0][0] + v[1][3];
                    }
                }
                best[2] = best[2].min((cpu_ns() - t0) / REPS);
            }
            let ms = |ns: u64| ns as f64 / 1e6;
            std::println!(
                "{kind:?}: avx512 panel {:.2} ms (4 tokens per pass {:.2}), avx-vnni panel {:.2} ms, avx2 panel {:.2} ms, avx2 tiles {:.2} ms",
                ms(best[0]),
                ms(best[3]),
                ms(best[4]),
                ms(best[1]),
                ms(best[2])
            );
        }
    }

    #[test]
    fn bad_shapes_give_nan_not_a_panic() {
        let w = vec![0u8; 2 * Q4_K_BYTES];
        let a = vec![0u8; 3 * Q8_K_BYTES];
        for (rb, ab, tokens, n) in [
            (Q4_K_BYTES + 1, Q8_K_BYTES, 3, 6),
            (Q4_K_BYTES, Q8_K_BYTES - 1, 3, 6),
            (Q4_K_BYTES, Q8_K_BYTES, 3, 7),
            (Q4_K_BYTES, Q8_K_BYTES, 3, 9),
            (Q4_K_BYTES, Q8_K_BYTES, 0, 6),
        ] {
            for isa in isas() {
                let mut out = vec![0.0f32; n];
                run(Kind::Q4K, Some(isa), &w, rb, &a, ab, tokens, &mut out);
                assert!(out.iter().all(|v| v.is_nan()), "{rb} {ab} {tokens} {n}");
            }
        }
        assert!(panel(GgmlType::Q4_0).is_none());
        assert!(panel(GgmlType::Q4_K).is_some());
    }
}
