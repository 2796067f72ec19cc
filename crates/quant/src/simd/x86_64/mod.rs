//! The x86_64 AVX2+FMA kernel set: CPU/OS feature detection, shared vector helpers and
//! the kernel tables (the scalar tables with `vec_dot` replaced).
//!
//! The dot products keep llama.cpp's AVX2 accumulation structure (one 8-lane f32
//! accumulator fed per block with `fma`, each lane holding the integer sum of the same
//! four byte positions, the same final horizontal sum), so for well-formed activation
//! rows they give the bits llama.cpp's AVX2 build gives. The integer parts are exact
//! for every input: no step can saturate (see each kernel).

use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::{GgmlType, Kernels, QuantizeFn};

mod act_quant;
mod float_dot;
mod kquant_dot;
mod kquant_panel;
mod legacy_dot;
mod legacy_panel;

pub(super) const SET_NAME: &str = "avx2+fma";

const UNKNOWN: u8 = 0;
const ABSENT: u8 = 1;
const PRESENT: u8 = 2;

/// Cached results of [`probe`], [`probe_avx512`] and [`probe_avx_vnni`].
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static STATE_512: AtomicU8 = AtomicU8::new(UNKNOWN);
static STATE_VNNI: AtomicU8 = AtomicU8::new(UNKNOWN);

/// `probe()`'s answer, computed once and kept in `state`; a race between first callers
/// only repeats the (idempotent) probe.
#[inline]
fn cached(state: &AtomicU8, probe: fn() -> bool) -> bool {
    match state.load(Ordering::Relaxed) {
        PRESENT => true,
        ABSENT => false,
        _ => {
            let ok = probe();
            state.store(if ok { PRESENT } else { ABSENT }, Ordering::Relaxed);
            ok
        }
    }
}

/// Whether the CPU has AVX2, FMA and F16C and the OS saves YMM state.
#[inline]
pub(super) fn available() -> bool {
    cached(&STATE, probe)
}

/// Whether, on top of [`available`], the CPU has AVX-512 F, BW, VL and VNNI and the OS
/// saves the AVX-512 state (opmask and all 512-bit registers). Kernels compiled for these
/// features may be chosen only when this is true (the EMBODIOS kernel enables that state
/// where the CPU has it; elsewhere this is false and the AVX2 set runs).
#[inline]
pub(super) fn avx512_available() -> bool {
    cached(&STATE_512, || available() && probe_avx512())
}

/// Whether, on top of [`available`], the CPU has AVX-VNNI (the VEX-encoded
/// `vpdpbusd`/`vpdpwssd` on YMM registers, which need no AVX-512 state: also usable where
/// the OS leaves that off).
#[inline]
pub(super) fn avx_vnni_available() -> bool {
    cached(&STATE_VNNI, || available() && probe_avx_vnni())
}

fn probe() -> bool {
    // Leaf 0 gives the highest standard leaf; AVX2 is reported in leaf 7.
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let l1 = __cpuid(1);
    let bit = |reg: u32, n: u32| (reg >> n) & 1 == 1;
    let fma = bit(l1.ecx, 12);
    let osxsave = bit(l1.ecx, 27);
    let avx = bit(l1.ecx, 28);
    let f16c = bit(l1.ecx, 29);
    if !(fma && osxsave && avx && f16c) {
        return false;
    }
    // SAFETY: OSXSAVE (CPUID.1:ECX bit 27) is set, so the OS has enabled XSAVE and the
    // XGETBV instruction exists.
    let xcr0 = unsafe { xcr0() };
    // Bits 1 and 2: the OS saves SSE (XMM) and AVX (upper YMM) state on context switches.
    if xcr0 & 0b110 != 0b110 {
        return false;
    }
    // CPUID.(EAX=7, ECX=0):EBX bit 5.
    bit(__cpuid_count(7, 0).ebx, 5)
}

fn probe_avx512() -> bool {
    let bit = |reg: u32, n: u32| (reg >> n) & 1 == 1;
    // `available()` has checked OSXSAVE and that leaf 7 exists.
    // SAFETY: OSXSAVE is set (checked by `available`), so XGETBV exists.
    let xcr0 = unsafe { xcr0() };
    // Bits 5, 6 and 7: opmask, upper halves of ZMM0-15, and ZMM16-31.
    if xcr0 & 0b1110_0000 != 0b1110_0000 {
        return false;
    }
    let l7 = __cpuid_count(7, 0);
    // EBX 16: AVX512F, 30: AVX512BW, 31: AVX512VL; ECX 11: AVX512_VNNI.
    bit(l7.ebx, 16) && bit(l7.ebx, 30) && bit(l7.ebx, 31) && bit(l7.ecx, 11)
}

fn probe_avx_vnni() -> bool {
    // `available()` has checked that leaf 7 exists; sub-leaf 1 exists when sub-leaf 0's
    // EAX (the highest sub-leaf) is at least 1. CPUID.(7, 1):EAX bit 4 is AVX-VNNI.
    __cpuid_count(7, 0).eax >= 1 && (__cpuid_count(7, 1).eax >> 4) & 1 == 1
}

/// Reads XCR0. Callers must have checked CPUID's OSXSAVE bit.
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    _xgetbv(0)
}

// ---------------------------------------------------------------------------------------
// Kernel tables. Dequantization and the weight quantizers stay scalar (they are not in the
// per-token hot loop); `vec_dot` comes from this module.

/// A table: the scalar table of the same type (crate root) with `vec_dot` replaced.
macro_rules! table {
    ($name:ident, $dot:path) => {
        static $name: Kernels = Kernels {
            vec_dot: $dot,
            ..crate::$name
        };
    };
}

table!(F32, float_dot::dot_f32);
table!(F16, float_dot::dot_f16);
table!(BF16, float_dot::dot_bf16);
table!(Q4_0, legacy_dot::dot_q4_0_q8_0);
table!(Q4_1, legacy_dot::dot_q4_1_q8_1);
table!(Q5_0, legacy_dot::dot_q5_0_q8_0);
table!(Q5_1, legacy_dot::dot_q5_1_q8_1);
table!(Q8_0, legacy_dot::dot_q8_0_q8_0);
table!(Q2_K, kquant_dot::dot_q2_k_q8_k);
table!(Q3_K, kquant_dot::dot_q3_k_q8_k);
table!(Q4_K, kquant_dot::dot_q4_k_q8_k);
table!(Q5_K, kquant_dot::dot_q5_k_q8_k);
table!(Q6_K, kquant_dot::dot_q6_k_q8_k);

/// The AVX2 four-row kernel of `ty`, where there is one. Callers check [`available`].
pub(super) fn vec_dot4(ty: GgmlType) -> Option<crate::VecDot4Fn> {
    match ty {
        GgmlType::Q4_1 => Some(legacy_dot::dot4_q4_1_q8_1),
        GgmlType::Q5_0 => Some(legacy_dot::dot4_q5_0_q8_0),
        GgmlType::Q8_0 => Some(legacy_dot::dot4_q8_0_q8_0),
        _ => None,
    }
}

/// The AVX2 kernels of `ty` in the order of ggml's tiled K-quant batch kernel (one and
/// four activation rows), where there are some. Callers check [`available`] first.
pub(super) fn tiled(ty: GgmlType) -> Option<(crate::VecDotFn, crate::VecDot4Fn)> {
    match ty {
        GgmlType::Q4_K => Some((kquant_dot::dot_q4_k_tiled, kquant_dot::dot4_q4_k_tiled)),
        GgmlType::Q6_K => Some((kquant_dot::dot_q6_k_tiled, kquant_dot::dot4_q6_k_tiled)),
        _ => None,
    }
}

/// The AVX2 two-weight-row by four-token register tile of `ty` in the tiled K-quant
/// order, where there is one. Callers check [`available`].
pub(super) fn tile(ty: GgmlType) -> Option<crate::VecDotTileFn> {
    match ty {
        GgmlType::Q4_K => Some(kquant_dot::tile_q4_k_tiled),
        _ => None,
    }
}

/// The AVX2 four-weight-row kernel of `ty`, where there is one. Callers check
/// [`available`].
pub(super) fn vec_dot_rows4(ty: GgmlType) -> Option<crate::VecDotRows4Fn> {
    if avx512_available() {
        if let Some(k) = legacy_panel::rows4_512(ty) {
            return Some(k);
        }
    }
    match ty {
        GgmlType::Q4_0 => Some(legacy_dot::rows4_q4_0_q8_0),
        GgmlType::Q4_1 => Some(legacy_dot::rows4_q4_1_q8_1),
        GgmlType::Q5_0 => Some(legacy_dot::rows4_q5_0_q8_0),
        GgmlType::Q8_0 => Some(legacy_dot::rows4_q8_0_q8_0),
        _ => None,
    }
}

/// The panel kernel of `ty` (a run of weight rows against a run of tokens), where there
/// is one: the AVX-512 variant when [`avx512_available`], else the AVX2 one. Callers check
/// [`available`].
pub(super) fn panel(ty: GgmlType) -> Option<crate::PanelFn> {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
            if avx512_available() {
                legacy_panel::panel512(ty)
            } else {
                legacy_panel::panel256(ty)
            }
        }
        // Q4_K, Q5_K, Q6_K (tiled order); the module picks AVX-512, AVX-VNNI or AVX2.
        _ => kquant_panel::panel(ty),
    }
}

/// Both variants of the legacy-format panel kernels, `[AVX2, AVX-512]`, each only where
/// this CPU can run it (for tests and benchmarks).
pub(super) fn panel_variants(ty: GgmlType) -> [Option<crate::PanelFn>; 2] {
    [
        legacy_panel::panel256(ty).filter(|_| available()),
        legacy_panel::panel512(ty).filter(|_| avx512_available()),
    ]
}

/// The name of the panel set [`panel`] hands out.
pub(super) fn panel_set_name() -> &'static str {
    if avx512_available() {
        "avx512-vnni"
    } else {
        "avx2"
    }
}

/// The AVX2 kernels of `ty`. Callers check [`available`] first.
pub(super) fn kernels(ty: GgmlType) -> Option<&'static Kernels> {
    use GgmlType as T;
    Some(match ty {
        T::F32 => &F32,
        T::F16 => &F16,
        T::BF16 => &BF16,
        T::Q4_0 => &Q4_0,
        T::Q4_1 => &Q4_1,
        T::Q5_0 => &Q5_0,
        T::Q5_1 => &Q5_1,
        T::Q8_0 => &Q8_0,
        T::Q2_K => &Q2_K,
        T::Q3_K => &Q3_K,
        T::Q4_K => &Q4_K,
        T::Q5_K => &Q5_K,
        T::Q6_K => &Q6_K,
        _ => return None,
    })
}

/// The AVX2 activation quantizer for format `ty`, where there is one (Q8_0, Q8_1, Q8_K).
/// Callers check [`available`] first.
pub(super) fn act_quantizer(ty: GgmlType) -> Option<QuantizeFn> {
    match ty {
        GgmlType::Q8_0 => Some(act_quant::quantize_act_q8_0),
        GgmlType::Q8_1 => Some(act_quant::quantize_act_q8_1),
        GgmlType::Q8_K => Some(act_quant::quantize_act_q8_k),
        _ => None,
    }
}

/// Defines the safe, table-compatible entry point `$name` for the target-feature kernel
/// `$kernel`, falling back to the scalar twin `$scalar` if the CPU lacks the features
/// (so the function is sound even if reached without going through the table).
macro_rules! entry {
    ($name:ident, $kernel:ident, $scalar:path) => {
        pub(crate) fn $name(w: &[u8], a: &[u8]) -> f32 {
            if !super::available() {
                return $scalar(w, a);
            }
            // SAFETY: `available()` confirmed AVX2, FMA and F16C on this CPU and YMM state
            // support in the OS, the features `$kernel` is compiled for. The kernel
            // itself only reads whole blocks through checked slices.
            unsafe { $kernel(w, a) }
        }
    };
}
use entry;

// ---------------------------------------------------------------------------------------
// Shared helpers. They are `#[inline]` target-feature functions: inlined into the kernels,
// which have the same features.

/// Loads 32 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load256(b: &[u8; 32]) -> __m256i {
    // SAFETY: `b` is exactly 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// Loads 16 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load128(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` is exactly 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// Loads 16 bytes at `p` (the panel kernels, which walk raw block pointers).
///
/// # Safety
/// `p..p + 16` is readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld128(p: *const u8) -> __m128i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`; `loadu` is unaligned.
    unsafe { _mm_loadu_si128(p.cast()) }
}

/// Loads 32 bytes at `p`.
///
/// # Safety
/// `p..p + 32` is readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld256(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes at `p`; `loadu` is unaligned.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// Widens one little-endian f16 exactly (F16C).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_to_f32(b: [u8; 2]) -> f32 {
    let h = u16::from_le_bytes(b);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// Widens the two little-endian f16s in `b` exactly (F16C): lanes 0 and 1 (2 and 3 are
/// zero). Loading from memory (rather than inserting into a register) keeps successive
/// blocks' conversions independent of each other.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_pair(b: &[u8; 4]) -> __m128 {
    // SAFETY: `b` is exactly 4 readable bytes; `loadu_si32` reads 4 bytes, unaligned.
    let v = unsafe { _mm_loadu_si32(b.as_ptr()) };
    _mm_cvtph_ps(v)
}

/// Lane 0 of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lane0(v: __m128) -> f32 {
    _mm_cvtss_f32(v)
}

/// Lane 1 of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lane1(v: __m128) -> f32 {
    _mm_cvtss_f32(_mm_movehdup_ps(v))
}

/// How far ahead of the block being multiplied the weight stream is prefetched, in
/// bytes. A matrix-vector product reads its weight rows once, one after the other, and
/// the hardware prefetchers stop at every 4 KiB page boundary of the (memory-mapped)
/// file; asking for the data a few kilobytes ahead keeps the loads from waiting on
/// memory (measured on SmolLM2 Q4_1, one thread: 25% less CPU time per token with 2 KiB,
/// no further gain at 4 KiB).
const PREFETCH_AHEAD: usize = 2048;

/// Prefetches the cache lines of the `len` bytes from `p` into the cache level `HINT`
/// names. Only a hint: an address past the end of the data is never read.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_lines<const HINT: i32>(p: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        // A prefetch never faults and reads nothing architecturally, so any address is
        // allowed; `wrapping_add` keeps the address computation itself sound.
        _mm_prefetch::<HINT>(p.wrapping_add(off).cast());
        off += 64;
    }
}

/// Prefetches the cache lines of the `len` bytes that start [`PREFETCH_AHEAD`] bytes
/// after `p` into L1.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_ahead(p: *const u8, len: usize) {
    prefetch_lines::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD), len);
}

/// How far ahead [`prefetch_far`] asks for the weight stream, in bytes.
const PREFETCH_FAR: usize = 8192;

/// [`prefetch_ahead`] for the AVX-512 four-row decode kernels, which consume a row about
/// twice as fast as the AVX2 ones: the lines [`PREFETCH_FAR`] bytes ahead, into L2 (more
/// misses in flight than L1 takes, and four rows' streams 8 KiB ahead would crowd L1).
/// Measured on SmolLM2 decode (Q8_0, one thread: 82 -> 97 tok/s; two threads: 127 ->
/// 170; Q4_1 two threads: 183 -> 215); the AVX2 K-quant kernels were slower with it, so
/// they keep [`prefetch_ahead`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_far(p: *const u8, len: usize) {
    prefetch_lines::<_MM_HINT_T1>(p.wrapping_add(PREFETCH_FAR), len);
}

/// Horizontal sum of 8 lanes in llama.cpp's order: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_ps(v: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// `a * b + c` with a single rounding.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fma_ss(a: f32, b: f32, c: f32) -> f32 {
    _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)))
}

/// Sum of four i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_epi32_128(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Sums adjacent i16 pairs into i32 lanes (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pairs_to_i32(v: __m256i) -> __m256i {
    _mm256_madd_epi16(v, _mm256_set1_epi16(1))
}

/// The 32 nibbles of a legacy block's 16 bytes, in element order: low nibbles (elements
/// 0..16) in the lower 128 bits, high nibbles (16..32) in the upper.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles32(qs: &[u8; 16]) -> __m256i {
    let lo = load128(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(lo), lo);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Byte `k` is 0xFF where bit `k` of `bits` is set, else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bits_to_bytes(bits: u32) -> __m256i {
    // Byte k takes byte k / 8 of `bits` (shuffles act within 128-bit halves, and every
    // 32-bit lane of the source holds all four bytes).
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    // Then tests bit k % 8 of it.
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
}

/// An i16 vector whose lanes 0..8 hold `scales[2k]` and lanes 8..16 hold `scales[2k+1]`
/// (bytes of `scales` taken as signed): the weights of one 32-byte chunk of 16-element
/// sub-blocks, lined up with `maddubs` output.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pair_scales(scales: __m128i, k: usize) -> __m256i {
    const ONES: i64 = 0x0101_0101_0101_0101;
    let k = (k & 7) as i64;
    let idx = _mm_set_epi64x((2 * k + 1) * ONES, 2 * k * ONES);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, idx))
}
