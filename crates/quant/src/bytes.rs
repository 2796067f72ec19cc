//! Little-endian field readers and writers for fixed-size block byte arrays.
//!
//! Blocks are handed around as `&[u8; N]` so that field offsets are checked against the
//! block size once, by the type system, instead of on every element access.

use half::{bf16, f16};

/// The `LEN` bytes of `b` starting at `at`.
///
/// Callers use constant offsets inside fixed-size blocks, so the fallback (an all-zero
/// array) is unreachable; it exists so that this helper has no panic path at all.
#[inline(always)]
pub(crate) fn sub<const LEN: usize>(b: &[u8], at: usize) -> &[u8; LEN] {
    match b.get(at..at + LEN).and_then(|s| s.try_into().ok()) {
        Some(a) => a,
        None => &[0; LEN],
    }
}

/// Mutable counterpart of [`sub`]; on the (unreachable) miss it returns `None`.
#[inline(always)]
pub(crate) fn sub_mut<const LEN: usize>(b: &mut [u8], at: usize) -> Option<&mut [u8; LEN]> {
    b.get_mut(at..at + LEN).and_then(|s| s.try_into().ok())
}

/// Iterates over the whole `N`-byte blocks of `src` (a trailing partial block is ignored;
/// public entry points reject such inputs before getting here).
#[inline(always)]
pub(crate) fn blocks<const N: usize>(src: &[u8]) -> impl Iterator<Item = &[u8; N]> {
    src.chunks_exact(N).filter_map(|c| c.try_into().ok())
}

/// Mutable counterpart of [`blocks`].
#[inline(always)]
pub(crate) fn blocks_mut<const N: usize>(dst: &mut [u8]) -> impl Iterator<Item = &mut [u8; N]> {
    dst.chunks_exact_mut(N).filter_map(|c| c.try_into().ok())
}

/// Iterates over whole `N`-element groups of `x`.
#[inline(always)]
pub(crate) fn groups<const N: usize>(x: &[f32]) -> impl Iterator<Item = &[f32; N]> {
    x.chunks_exact(N).filter_map(|c| c.try_into().ok())
}

/// Mutable counterpart of [`groups`].
#[inline(always)]
pub(crate) fn groups_mut<const N: usize>(x: &mut [f32]) -> impl Iterator<Item = &mut [f32; N]> {
    x.chunks_exact_mut(N).filter_map(|c| c.try_into().ok())
}

#[inline(always)]
pub(crate) fn f16_to_f32(b: [u8; 2]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes(b))
}

/// Widens an f16 to f32 exactly (every f16 is an f32), without the branches and table
/// lookups of a generic converter: the exponent is rebiased by an integer add, and the
/// subnormal case is normalized by one f32 subtraction.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    const EXP_MASK: u32 = 0x7C00 << 13; // f16 exponent field, moved to f32 position
    let mut o = ((h & 0x7FFF) as u32) << 13;
    let exp = o & EXP_MASK;
    o += (127 - 15) << 23; // rebias
    if exp == EXP_MASK {
        o += (128 - 16) << 23; // inf/NaN: exponent all ones
        if o & 0x007F_FFFF != 0 {
            // NaNs come out quiet, as from F16C's vcvtph2ps.
            o |= 0x0040_0000;
        }
    } else if exp == 0 {
        // Zero/subnormal: treat the mantissa as 2^-14 * (1 + m) and subtract 2^-14.
        o += 1 << 23;
        o = (f32::from_bits(o) - f32::from_bits(113 << 23)).to_bits();
    }
    f32::from_bits(o | (((h & 0x8000) as u32) << 16))
}

/// [`f16_bits_to_f32`] of a parsed half.
#[inline(always)]
pub(crate) fn h2f(h: f16) -> f32 {
    f16_bits_to_f32(h.to_bits())
}

#[inline(always)]
pub(crate) fn f32_to_f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

#[inline(always)]
pub(crate) fn bf16_to_f32(b: [u8; 2]) -> f32 {
    // bf16 is the top half of an f32, so widening is exact.
    f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
}

#[inline(always)]
pub(crate) fn f32_to_bf16_bytes(x: f32) -> [u8; 2] {
    bf16::from_f32(x).to_bits().to_le_bytes()
}

/// Round half to even, as SSE/AVX `round_ps(_, NEAREST)` and the magic-number trick do.
#[inline(always)]
pub(crate) fn round_ne(v: f32) -> f32 {
    const TWO23: f32 = 8_388_608.0;
    let a = v.abs();
    if a < TWO23 {
        // Adding 2^23 leaves no fraction bits, so the FPU's default rounding (to nearest
        // even) does the work; subtracting it back is exact.
        let r = (a + TWO23) - TWO23;
        libm::copysignf(r, v)
    } else {
        // Already an integer (or NaN/inf).
        v
    }
}

/// Round half away from zero (C `roundf`).
#[inline(always)]
pub(crate) fn round_away(v: f32) -> f32 {
    libm::roundf(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening_is_exact_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            // Bit-exact, NaN payloads and signs included.
            assert_eq!(got.to_bits(), want.to_bits(), "{h:04x}");
        }
    }

    #[test]
    fn round_half_even() {
        for (v, r) in [
            (0.5f32, 0.0f32),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, -0.0),
            (-1.5, -2.0),
            (126.5, 126.0),
            (0.49999997, 0.0),
            (3e9, 3e9),
        ] {
            assert_eq!(round_ne(v).to_bits(), r.to_bits(), "{v}");
        }
        assert!(round_ne(f32::NAN).is_nan());
    }
}
