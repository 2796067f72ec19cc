//! ggml's quantized tensor formats: block layouts, dequantization, reference quantizers,
//! llama.cpp-exact activation quantization, and dot-product kernels (scalar references
//! plus an AVX2+FMA set on x86_64).
//!
//! The entry points take a [`GgmlType`] and byte/f32 slices, validate lengths and return
//! a typed [`QuantError`]; they never panic. Hot loops can fetch a type's [`Kernels`]
//! once (validated up front) and call the function pointers directly.
//!
//! Kernel sets: [`kernels`] returns the AVX2+FMA table (SIMD `vec_dot`s, detected once at
//! run time with CPUID/XGETBV: AVX2, FMA, F16C and OS support for YMM state) when
//! available, else the scalar table; [`active_kernel_set`] names the choice,
//! [`scalar_kernels`]/[`simd_kernels`] give either table explicitly (the scalar functions
//! are the reference twins the SIMD ones are tested against), and [`force_scalar`] (or
//! building with the environment variable `EMBODIOS_FORCE_SCALAR` set) pins the scalar
//! set. The AVX2 dot products reproduce llama.cpp's AVX2 kernels bit for bit on
//! well-formed activations; [`quantize_activations`] gives identical bytes on either set.
//! The SIMD code is compiled only for x86_64 targets with SSE registers (not the
//! soft-float `x86_64-unknown-none`, where LLVM cannot lower it).
//!
//! Batched products (prefill) of the legacy block formats go through panel kernels
//! ([`panel_kernel`], [`PanelFn`]): a run of weight rows against a run of tokens in
//! register tiles, with AVX-512 F/BW/VL/VNNI where the CPU and the OS (ZMM state in
//! XCR0) support it ([`active_panel_set`]), else AVX2; each result has the bits of the
//! type's single-row SIMD kernel.
//!
//! Matrix-vector products follow llama.cpp's CPU backend: the activation row is first
//! quantized to [`vec_dot_type`] of the weight type with [`quantize_activations`]
//! (producing the bytes llama.cpp's x86 AVX2 build produces), then [`vec_dot`] combines
//! integer sums per block with the block scales.
#![no_std]
#![deny(unsafe_code)]

mod bytes;
pub mod float;
mod kfit;
pub mod kquants;
pub mod legacy;
// The only module allowed `unsafe` (target-feature calls and vector loads).
#[allow(unsafe_code)]
mod simd;

use core::fmt;

pub use embodios_gguf::GgmlType;
pub use float::dot_f32;

/// Why a quantization routine refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantError {
    /// The type (or, for activations, the activation format) has no kernels here.
    Unsupported(GgmlType),
    /// A byte or element buffer has the wrong length.
    BadLength { expected: usize, got: usize },
    /// The element count is not a whole number of the type's blocks.
    NotBlockMultiple { ty: GgmlType, elems: usize },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::Unsupported(ty) => write!(f, "tensor type {ty} is not supported"),
            QuantError::BadLength { expected, got } => {
                write!(f, "buffer has length {got}, expected {expected}")
            }
            QuantError::NotBlockMultiple { ty, elems } => write!(
                f,
                "{elems} elements is not a whole number of {ty} blocks of {}",
                ty.block_elems()
            ),
        }
    }
}

impl core::error::Error for QuantError {}

/// Dequantizes whole blocks of `src` into `dst` (lengths pre-checked).
pub type DequantizeFn = fn(src: &[u8], dst: &mut [f32]);
/// Quantizes whole blocks of `src` into `dst` (lengths pre-checked).
pub type QuantizeFn = fn(src: &[f32], dst: &mut [u8]);
/// Dot product of a weight row with an activation row of the paired format, over the
/// whole blocks both hold (lengths pre-checked).
pub type VecDotFn = fn(weights: &[u8], activations: &[u8]) -> f32;

/// One weight row against four activation rows: the four results of the type's
/// [`Kernels::vec_dot`], bit for bit, with the weight row unpacked once.
pub type VecDot4Fn = fn(weights: &[u8], activations: [&[u8]; 4]) -> [f32; 4];

/// Two weight rows against four activation rows (a register tile of the batched
/// product): `out[r][t]` is the type's tiled-order kernel of row `r` and activation row
/// `t`, bit for bit, each activation block loaded once for both rows.
pub type VecDotTileFn = fn(weights: [&[u8]; 2], activations: [&[u8]; 4]) -> [[f32; 4]; 2];

/// Four weight rows against one activation row: the four results of the type's
/// [`Kernels::vec_dot`], bit for bit, with each activation block loaded once and four
/// independent accumulation chains (the matrix-vector product of decoding).
pub type VecDotRows4Fn = fn(weights: [&[u8]; 4], activations: &[u8]) -> [f32; 4];

/// `rows = out.len() / tokens` consecutive weight rows (`row_bytes` each, from the start of `weights`)
/// against `tokens` consecutive activation rows (`act_bytes` each, from the start of `acts`, in the
/// type's activation format): `out[r * tokens + t]` = the product of row r and activation t, bit for bit
/// what the engine's batched path computes for that type today.
pub type PanelFn = fn(
    weights: &[u8],
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    tokens: usize,
    out: &mut [f32],
);

/// The kernels of one weight type.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    pub ty: GgmlType,
    /// The activation format [`Kernels::vec_dot`] expects.
    pub vec_dot_type: GgmlType,
    pub dequantize: DequantizeFn,
    /// Reference quantizer for weights of this type.
    pub quantize: QuantizeFn,
    pub vec_dot: VecDotFn,
}

macro_rules! kernels {
    ($ty:ident, $act:ident, $deq:path, $q:path, $dot:path) => {
        Kernels {
            ty: GgmlType::$ty,
            vec_dot_type: GgmlType::$act,
            dequantize: $deq,
            quantize: $q,
            vec_dot: $dot,
        }
    };
}

pub(crate) static F32: Kernels = kernels!(
    F32,
    F32,
    float::dequant_f32,
    float::quantize_f32,
    float::dot_f32_bytes
);
pub(crate) static F16: Kernels = kernels!(
    F16,
    F16,
    float::dequant_f16,
    float::quantize_f16,
    float::dot_f16_bytes
);
pub(crate) static BF16: Kernels = kernels!(
    BF16,
    BF16,
    float::dequant_bf16,
    float::quantize_bf16,
    float::dot_bf16_bytes
);
pub(crate) static Q4_0: Kernels = kernels!(
    Q4_0,
    Q8_0,
    legacy::dequant_q4_0,
    legacy::quantize_q4_0,
    legacy::dot_q4_0_q8_0
);
pub(crate) static Q4_1: Kernels = kernels!(
    Q4_1,
    Q8_1,
    legacy::dequant_q4_1,
    legacy::quantize_q4_1,
    legacy::dot_q4_1_q8_1
);
pub(crate) static Q5_0: Kernels = kernels!(
    Q5_0,
    Q8_0,
    legacy::dequant_q5_0,
    legacy::quantize_q5_0,
    legacy::dot_q5_0_q8_0
);
pub(crate) static Q5_1: Kernels = kernels!(
    Q5_1,
    Q8_1,
    legacy::dequant_q5_1,
    legacy::quantize_q5_1,
    legacy::dot_q5_1_q8_1
);
pub(crate) static Q8_0: Kernels = kernels!(
    Q8_0,
    Q8_0,
    legacy::dequant_q8_0,
    legacy::quantize_q8_0_ref,
    legacy::dot_q8_0_q8_0
);
pub(crate) static Q2_K: Kernels = kernels!(
    Q2_K,
    Q8_K,
    kquants::dequant_q2_k,
    kfit::quantize_q2_k,
    kquants::dot_q2_k_q8_k
);
pub(crate) static Q3_K: Kernels = kernels!(
    Q3_K,
    Q8_K,
    kquants::dequant_q3_k,
    kfit::quantize_q3_k,
    kquants::dot_q3_k_q8_k
);
pub(crate) static Q4_K: Kernels = kernels!(
    Q4_K,
    Q8_K,
    kquants::dequant_q4_k,
    kfit::quantize_q4_k,
    kquants::dot_q4_k_q8_k
);
pub(crate) static Q5_K: Kernels = kernels!(
    Q5_K,
    Q8_K,
    kquants::dequant_q5_k,
    kfit::quantize_q5_k,
    kquants::dot_q5_k_q8_k
);
pub(crate) static Q6_K: Kernels = kernels!(
    Q6_K,
    Q8_K,
    kquants::dequant_q6_k,
    kfit::quantize_q6_k,
    kquants::dot_q6_k_q8_k
);

/// The kernels of weight type `ty`, or [`QuantError::Unsupported`]: the SIMD set when
/// the CPU supports it (see [`active_kernel_set`]), else the scalar reference set.
pub fn kernels(ty: GgmlType) -> Result<&'static Kernels, QuantError> {
    let scalar = scalar_kernels(ty)?;
    Ok(simd::kernels(ty).unwrap_or(scalar))
}

/// The name of the kernel set [`kernels`] hands out: `"avx2+fma"` or `"scalar"`.
pub fn active_kernel_set() -> &'static str {
    simd::active_set()
}

/// Makes [`kernels`] (and so [`vec_dot`]) use the scalar set even where a SIMD set is
/// available (`true`), or go back to the automatic choice (`false`). For benchmarks and
/// debugging; process-wide. Tables fetched earlier keep the functions they hold.
pub fn force_scalar(on: bool) {
    simd::set_force_scalar(on);
}

/// The four-row form of `kernels(ty)?.vec_dot` where the active kernel set has one (AVX2
/// kernels for Q4_1, Q5_0 and Q8_0 so far); `None` otherwise, and under [`force_scalar`].
pub fn vec_dot4(ty: GgmlType) -> Option<VecDot4Fn> {
    simd::vec_dot4(ty)
}

/// SIMD kernels (one and four activation rows) for `ty` against Q8_K in the order of
/// ggml's tiled K-quant batch kernel: each 256-element super-block folded to the exact
/// integers `s1 = Σ scale·dot` (and `s2 = Σ min·bsum`), then `r = s1·d`,
/// `r = fma(-dmin, s2, r)`, `acc = fma(r, d8, acc)`, the fused steps rounded once from
/// f64. Q4_K and Q6_K so far, while the SIMD set is active; `None` otherwise.
pub fn tiled_kernels(ty: GgmlType) -> Option<(VecDotFn, VecDot4Fn)> {
    simd::tiled(ty)
}

/// The two-row by four-token SIMD tile of `ty` in the order of [`tiled_kernels`] (Q4_K
/// so far), while the SIMD set is active; `None` otherwise.
pub fn tile_kernel(ty: GgmlType) -> Option<VecDotTileFn> {
    simd::tile(ty)
}

/// The four-weight-row form of `kernels(ty)?.vec_dot` where the active kernel set has
/// one (AVX2 kernels for Q4_0, Q4_1, Q5_0 and Q8_0; with AVX-512 F/BW/VL/VNNI, kernels
/// holding two rows per 512-bit register for those and Q5_1); `None` otherwise, and
/// under [`force_scalar`].
pub fn vec_dot_rows4(ty: GgmlType) -> Option<VecDotRows4Fn> {
    simd::vec_dot_rows4(ty)
}

/// The panel kernel of `ty` ([`PanelFn`]: a run of weight rows against a run of
/// tokens in register tiles) while the SIMD set is active and has one: the legacy block
/// formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, with AVX-512 F/BW/VL/VNNI where the CPU and
/// OS support it (see [`active_panel_set`]), else AVX2; and Q4_K, Q5_K and Q6_K in the
/// tiled order of [`tiled_kernels`] (AVX-512 VNNI, else AVX-VNNI, else AVX2). `None`
/// otherwise, and under [`force_scalar`]. Each result has the bits of the type's
/// single-row SIMD kernel (the tiled-order one for the K-quants).
pub fn panel_kernel(ty: GgmlType) -> Option<PanelFn> {
    simd::panel(ty)
}

/// Every SIMD panel kernel variant of `ty` this CPU can run, `[AVX2, AVX-512]` (each
/// `None` where absent), regardless of [`force_scalar`]: lets tests check the AVX2
/// variant on an AVX-512 machine too.
pub fn simd_panel_kernels(ty: GgmlType) -> [Option<PanelFn>; 2] {
    simd::panel_variants(ty)
}

/// Makes [`panel_kernel`] hand out nothing (`true`), so that callers take their
/// per-row kernels, or go back to the automatic choice (`false`). For A/B benchmarks in
/// one process; process-wide, like [`force_scalar`].
pub fn disable_panels(off: bool) {
    simd::set_no_panels(off);
}

/// Which panel kernels [`panel_kernel`] hands out: `"avx512-vnni"`, `"avx2"`, or
/// `"none"` (scalar set active).
pub fn active_panel_set() -> &'static str {
    simd::panel_set()
}

/// The SIMD kernels of `ty` if this CPU has a SIMD set covering it, regardless of
/// [`force_scalar`]; `None` otherwise. Lets tests and benchmarks compare both sets.
pub fn simd_kernels(ty: GgmlType) -> Option<&'static Kernels> {
    simd::simd_kernels(ty)
}

/// The scalar reference kernels of weight type `ty`, or [`QuantError::Unsupported`].
pub fn scalar_kernels(ty: GgmlType) -> Result<&'static Kernels, QuantError> {
    use GgmlType as T;
    Ok(match ty {
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
        _ => return Err(QuantError::Unsupported(ty)),
    })
}

/// Whether weights of type `ty` can be dequantized, quantized and used in dot products.
/// (Q8_1 and Q8_K are activation-only formats: see [`quantize_activations`].)
pub fn is_supported(ty: GgmlType) -> bool {
    kernels(ty).is_ok()
}

/// Every weight type this crate dequantizes, quantizes and multiplies (the types for
/// which [`is_supported`] is true).
pub const WEIGHT_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The activation format llama.cpp's CPU backend pairs with weight type `ty`
/// (`vec_dot_type` in ggml-cpu's type traits): F32/F16/BF16 pair with themselves,
/// Q4_0/Q5_0/Q8_0 with Q8_0, Q4_1/Q5_1 with Q8_1, the K-quants with Q8_K.
pub fn vec_dot_type(ty: GgmlType) -> Result<GgmlType, QuantError> {
    kernels(ty).map(|k| k.vec_dot_type)
}

/// Bytes taken by `elems` elements of type `ty`.
pub fn row_bytes(ty: GgmlType, elems: usize) -> Result<usize, QuantError> {
    let be = ty.block_elems();
    if !elems.is_multiple_of(be) {
        return Err(QuantError::NotBlockMultiple { ty, elems });
    }
    (elems / be)
        .checked_mul(ty.block_bytes())
        .ok_or(QuantError::BadLength {
            expected: usize::MAX,
            got: elems,
        })
}

/// Checks that `bytes` holds exactly `elems` elements of `ty`.
fn check(ty: GgmlType, elems: usize, bytes: usize) -> Result<(), QuantError> {
    let expected = row_bytes(ty, elems)?;
    if bytes != expected {
        return Err(QuantError::BadLength {
            expected,
            got: bytes,
        });
    }
    Ok(())
}

/// Dequantizes `dst.len()` elements of type `ty` from `src`, which must hold exactly
/// that many. Besides the weight types, accepts the activation formats Q8_1 and Q8_K.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let f: DequantizeFn = match ty {
        GgmlType::Q8_1 => legacy::dequant_q8_1,
        GgmlType::Q8_K => kquants::dequant_q8_k,
        _ => kernels(ty)?.dequantize,
    };
    check(ty, dst.len(), src.len())?;
    f(src, dst);
    Ok(())
}

/// Quantizes `src` into `dst` as weights of type `ty` (ggml's reference rounding for
/// Q4_0..Q8_0, this crate's own quantizer for the K-quants). `dst` must be exactly
/// [`row_bytes`]`(ty, src.len())` long.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let k = kernels(ty)?;
    check(ty, src.len(), dst.len())?;
    (k.quantize)(src, dst);
    Ok(())
}

/// Quantizes an activation row into format `act_ty` exactly as llama.cpp's x86 CPU
/// backend does (`from_float` of the `vec_dot_type`): F32 copied, F16/BF16 rounded to
/// nearest even, Q8_0/Q8_1 by the AVX2 kernels, Q8_K by ggml's reference.
///
/// Q8_0, Q8_1 and Q8_K use AVX2 where available ([`simd_activation_quantizer`]), with the same
/// bytes as the scalar twin ([`scalar_activation_quantizer`]).
pub fn quantize_activations(act_ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    let scalar = scalar_activation_quantizer(act_ty)?;
    let f = simd::act_quantizer(act_ty).unwrap_or(scalar);
    check(act_ty, x.len(), out.len())?;
    f(x, out);
    Ok(())
}

/// The scalar activation quantizer for format `act_ty` (whole blocks, lengths pre-checked
/// by the caller, as for [`Kernels`]), or [`QuantError::Unsupported`].
pub fn scalar_activation_quantizer(act_ty: GgmlType) -> Result<QuantizeFn, QuantError> {
    Ok(match act_ty {
        GgmlType::F32 => float::quantize_f32,
        GgmlType::F16 => float::quantize_f16,
        GgmlType::BF16 => float::quantize_bf16,
        GgmlType::Q8_0 => legacy::quantize_act_q8_0,
        GgmlType::Q8_1 => legacy::quantize_act_q8_1,
        GgmlType::Q8_K => kquants::quantize_act_q8_k,
        _ => return Err(QuantError::Unsupported(act_ty)),
    })
}

/// The SIMD activation quantizer for format `act_ty` if this CPU has one (regardless of
/// [`force_scalar`]); `None` otherwise. Q8_0, Q8_1 and Q8_K have one on AVX2 CPUs.
pub fn simd_activation_quantizer(act_ty: GgmlType) -> Option<QuantizeFn> {
    simd::simd_act_quantizer(act_ty)
}

/// Dot product of `n` elements: a weight row of type `ty` with an activation row already
/// in [`vec_dot_type`]`(ty)` format.
pub fn vec_dot(ty: GgmlType, w_row: &[u8], act_row: &[u8], n: usize) -> Result<f32, QuantError> {
    let k = kernels(ty)?;
    check(ty, n, w_row.len())?;
    check(k.vec_dot_type, n, act_row.len())?;
    Ok((k.vec_dot)(w_row, act_row))
}
