//! The engine's thin adapter over `embodios-quant`: every call into the quantisation
//! crate goes through here, so a change in that crate's API touches one file.

use embodios_gguf::GgmlType;
pub use embodios_quant::QuantError;

/// The weight type can be used in a matmul (dot products against its activation type).
pub fn matmul_supported(ty: GgmlType) -> bool {
    embodios_quant::kernels(ty).is_ok()
}

/// The type can be converted to f32 (embedding rows, norm weights).
pub fn dequantize_supported(ty: GgmlType) -> bool {
    embodios_quant::is_supported(ty)
}

/// The format llama.cpp quantises activations to before a dot product with `ty` rows.
pub fn act_type(ty: GgmlType) -> Result<GgmlType, QuantError> {
    embodios_quant::vec_dot_type(ty)
}

/// The validated kernel table of a weight type (looked up once per matmul).
pub fn table(ty: GgmlType) -> Result<&'static embodios_quant::Kernels, QuantError> {
    embodios_quant::kernels(ty)
}

/// Bytes one activation vector of `n` elements takes in `act_ty`.
pub fn act_bytes(act_ty: GgmlType, n: usize) -> usize {
    act_ty.bytes_for(n as u64).unwrap_or(0) as usize
}

/// Quantises `x` into `out` (exactly [`act_bytes`] long) as llama.cpp would.
pub fn quantize_act(act_ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    embodios_quant::quantize_activations(act_ty, x, out)
}

/// Dot product of one weight row with a quantised activation vector of `n` elements.
#[inline]
pub fn dot(ty: GgmlType, w_row: &[u8], act: &[u8], n: usize) -> Result<f32, QuantError> {
    embodios_quant::vec_dot(ty, w_row, act, n)
}

/// Converts one row of `ty` to f32.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    embodios_quant::dequantize_row(ty, src, dst)
}

/// Quantises f32 weights to `ty` with the reference quantiser (for test fixtures).
pub fn quantize_weights(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    embodios_quant::quantize_row(ty, src, dst)
}
