//! Fast exact f16 -> f32 conversion through a table built at compile time (`half`
//! converts in software on targets without F16C, which made the attention and block
//! scales the slowest part of a token).

/// Exact conversion of an IEEE binary16 bit pattern (no rounding is ever needed).
const fn convert(bits: u16) -> f32 {
    let sign = ((bits as u32) & 0x8000) << 16;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let man = (bits & 0x3ff) as u32;
    let out = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // Subnormal: normalise the mantissa.
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (man << 13)
    };
    f32::from_bits(out)
}

const fn build() -> [f32; 65536] {
    let mut t = [0.0f32; 65536];
    let mut i = 0;
    while i < 65536 {
        t[i] = convert(i as u16);
        i += 1;
    }
    t
}

static TABLE: [f32; 65536] = build();

/// The f32 value of an f16 bit pattern.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    TABLE[bits as usize]
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_matches_half_for_every_pattern() {
        for b in 0..=u16::MAX {
            let want = half::f16::from_bits(b).to_f32();
            let got = super::f16_to_f32(b);
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                "{b:#06x}: {want} vs {got}"
            );
        }
    }
}
