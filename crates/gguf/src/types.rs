//! The ggml tensor element types a GGUF file can name: ids, names and block geometry.
//!
//! Every type stores its elements in fixed-size blocks; a tensor row of `n` elements
//! of type `t` takes `n / t.block_elems() * t.block_bytes()` bytes. The geometry of
//! every type ever assigned an id is known here, so that a file can be parsed and
//! bounds-checked even when the engine cannot compute with some of its tensors.

use core::fmt;

/// A ggml tensor type, by its on-disk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
}

/// Elements per block for the K-quant family.
pub const QK_K: usize = 256;

impl GgmlType {
    /// Every known type, in id order.
    pub const ALL: [GgmlType; 32] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::IQ2_XXS,
        Self::IQ2_XS,
        Self::IQ3_XXS,
        Self::IQ1_S,
        Self::IQ4_NL,
        Self::IQ3_S,
        Self::IQ2_S,
        Self::IQ4_XS,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F64,
        Self::IQ1_M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4,
    ];

    /// The type with on-disk id `id`, or `None` for an id no ggml version assigned
    /// (or one that was assigned and later withdrawn).
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Elements in one block.
    pub fn block_elems(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            _ => QK_K,
        }
    }

    /// Bytes in one block.
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 | F64 => 8,
            // f16 scale + 32 four-bit values
            Q4_0 | IQ4_NL => 2 + 16,
            // f16 scale and min + 32 four-bit values
            Q4_1 => 4 + 16,
            // f16 scale + 32 high bits + 32 four-bit values
            Q5_0 => 2 + 4 + 16,
            // f16 scale and min + 32 high bits + 32 four-bit values
            Q5_1 => 4 + 4 + 16,
            // f16 scale + 32 signed bytes
            Q8_0 => 2 + 32,
            // f16 scale, f16 scaled sum + 32 signed bytes
            Q8_1 => 4 + 32,
            // shared e8m0 exponent + 32 four-bit values
            MXFP4 => 1 + 16,
            // 16 packed 4-bit scale/min pairs, 2-bit values, f16 d and dmin
            Q2_K => QK_K / 16 + QK_K / 4 + 4,
            // high-bit mask, 2-bit low values, 12 bytes of 6-bit scales, f16 d
            Q3_K => QK_K / 8 + QK_K / 4 + 12 + 2,
            // f16 d and dmin, 12 bytes of 6-bit scales/mins, 4-bit values
            Q4_K => 4 + 12 + QK_K / 2,
            // as Q4_K plus one high bit per value
            Q5_K => 4 + 12 + QK_K / 8 + QK_K / 2,
            // 4 low bits, 2 high bits, 16 signed 8-bit scales, f16 d
            Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
            // f32 d, 256 signed bytes, 16 i16 group sums
            Q8_K => 4 + QK_K + QK_K / 16 * 2,
            IQ2_XXS => 2 + QK_K / 8 * 2,
            IQ2_XS => 2 + QK_K / 8 * 2 + QK_K / 32,
            IQ3_XXS => 2 + 3 * QK_K / 8,
            IQ1_S => 2 + QK_K / 8 + QK_K / 32 * 2,
            IQ3_S => 2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64,
            IQ2_S => 2 + QK_K / 4 + QK_K / 32 + QK_K / 32,
            IQ4_XS => 2 + 2 + QK_K / 64 + QK_K / 2,
            IQ1_M => QK_K / 8 + QK_K / 16 + QK_K / 32,
            TQ1_0 => (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2,
            TQ2_0 => QK_K / 4 + 2,
        }
    }

    /// Bytes taken by `elems` elements, or `None` when `elems` is not a whole number
    /// of blocks or the size overflows.
    pub fn bytes_for(self, elems: u64) -> Option<u64> {
        let be = self.block_elems() as u64;
        if !elems.is_multiple_of(be) {
            return None;
        }
        (elems / be).checked_mul(self.block_bytes() as u64)
    }

    /// The name ggml uses (`"Q4_K"`, `"F16"`, …).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_withdrawn_ids_are_unknown() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        for withdrawn in [4, 5, 31, 32, 33, 36, 37, 38, 40, 1000] {
            assert_eq!(GgmlType::from_id(withdrawn), None);
        }
    }

    #[test]
    fn block_geometry_matches_the_published_layouts() {
        let expected = [
            (GgmlType::Q4_0, 18),
            (GgmlType::Q4_1, 20),
            (GgmlType::Q5_0, 22),
            (GgmlType::Q5_1, 24),
            (GgmlType::Q8_0, 34),
            (GgmlType::Q8_1, 36),
            (GgmlType::Q2_K, 84),
            (GgmlType::Q3_K, 110),
            (GgmlType::Q4_K, 144),
            (GgmlType::Q5_K, 176),
            (GgmlType::Q6_K, 210),
            (GgmlType::Q8_K, 292),
            (GgmlType::IQ4_XS, 136),
            (GgmlType::TQ1_0, 54),
            (GgmlType::MXFP4, 17),
        ];
        for (t, bytes) in expected {
            assert_eq!(t.block_bytes(), bytes, "{t}");
        }
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    }
}
