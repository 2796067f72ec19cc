//! Every parse error provoked by a crafted byte string, with the offset it must name;
//! truncation at every byte gives an error, never a panic.

use embodios_gguf::{
    GgmlType, GgufError, GgufFile, GgufWriter, OwnedValue, MAX_ARRAY_DEPTH, MAX_DIMS,
};

/// Builds raw GGUF bytes by hand, so that files the writer refuses can be made.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    /// Magic, version and the two counts.
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    /// A tensor info.
    fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(type_id).u64(offset)
    }
    /// Pads to `align` and appends `n` data bytes.
    fn data(&mut self, align: usize, n: usize) -> &mut Self {
        let len = self.0.len().div_ceil(align) * align;
        self.0.resize(len + n, 0xAB);
        self
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn parse(&self) -> Result<GgufFile<'_>, GgufError> {
        GgufFile::parse(&self.0)
    }
}

fn err(r: &Raw) -> GgufError {
    match r.parse() {
        Ok(_) => panic!("parse accepted a bad file"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("offset {}: ", e.offset())),
                "{msg}"
            );
            e
        }
    }
}

/// A small valid file with every value type and a few tensors.
fn small_valid_file() -> Vec<u8> {
    use OwnedValue::*;
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", OwnedValue::str("llama"))
        .unwrap();
    for (k, v) in [
        ("a", U8(1)),
        ("b", I8(-1)),
        ("c", U16(2)),
        ("d", I16(-2)),
        ("e", U32(3)),
        ("f", I32(-3)),
        ("g", F32(0.5)),
        ("h", Bool(true)),
        ("i", U64(4)),
        ("j", I64(-4)),
        ("k", F64(0.25)),
        ("l", OwnedValue::str_array(&["x", "yz"])),
        (
            "m",
            Array(vec![OwnedValue::f32_array(&[1.0]), Array(vec![])]),
        ),
    ] {
        w.add_metadata(k, v).unwrap();
    }
    w.add_tensor("w", &[32, 2], GgmlType::Q8_0, vec![7; 68])
        .unwrap();
    w.add_tensor("n", &[3], GgmlType::F32, vec![9; 12]).unwrap();
    w.finish()
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let bytes = small_valid_file();
    let file = GgufFile::parse(&bytes).unwrap();
    // The last tensor's data ends before the final padding; cutting only padding
    // still leaves a complete file.
    let end = file
        .tensors
        .iter()
        .map(|t| file.data_offset + t.offset + t.data.len() as u64)
        .max()
        .unwrap() as usize;
    assert!(end < bytes.len());
    for n in 0..bytes.len() {
        match GgufFile::parse(&bytes[..n]) {
            Ok(_) => assert!(n >= end, "cut at {n} of {} parsed", bytes.len()),
            Err(e) => {
                assert!(n < end, "cut at {n} failed: {e}");
                assert!(
                    matches!(
                        e,
                        GgufError::Truncated { .. }
                            | GgufError::CountTooLarge { .. }
                            | GgufError::ArrayTooLong { .. }
                            | GgufError::TensorOutOfBounds { .. }
                    ),
                    "cut at {n}: {e}"
                );
                assert!(e.offset() <= bytes.len() as u64, "cut at {n}: {e}");
            }
        }
    }
}

#[test]
fn every_single_byte_flip_is_handled() {
    // Not an error each time (a flipped data byte is still a valid file), but never a
    // panic, and a successful parse still has in-bounds tensor slices.
    let bytes = small_valid_file();
    for i in 0..bytes.len() {
        for flip in [0x01, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            if let Ok(f) = GgufFile::parse(&b) {
                for t in &f.tensors {
                    assert_eq!(t.data.len() as u64, t.ty.bytes_for(t.n_elements()).unwrap());
                }
            }
        }
    }
}

#[test]
fn wrong_magic() {
    let mut r = Raw::header(3, 0, 0);
    r.0[..4].copy_from_slice(b"GGML");
    assert_eq!(err(&r), GgufError::BadMagic { found: *b"GGML" });
    assert!(matches!(
        err(&Raw(b"GG".to_vec())),
        GgufError::Truncated {
            offset: 0,
            needed: 4,
            what: "magic"
        }
    ));
}

#[test]
fn version_1_and_others_are_refused() {
    let e = err(&Raw::header(1, 0, 0));
    assert_eq!(
        e,
        GgufError::UnsupportedVersion {
            offset: 4,
            version: 1
        }
    );
    assert!(e.to_string().contains("version 1"), "{e}");
    assert!(matches!(
        err(&Raw::header(4, 0, 0)),
        GgufError::UnsupportedVersion { version: 4, .. }
    ));
    // A big-endian version 3 file, read as little-endian.
    let e = err(&Raw::header(3u32.swap_bytes(), 0, 0));
    assert!(e.to_string().contains("big-endian"), "{e}");
    // Versions 2 and 3 with nothing in them are fine.
    for v in [2, 3] {
        let r = Raw::header(v, 0, 0);
        let f = r.parse().unwrap();
        assert_eq!((f.version, f.data_offset), (v, 32));
    }
}

#[test]
fn huge_string_length() {
    let mut r = Raw::header(3, 0, 1);
    r.u64(1 << 63).u8(b'k').u32(0).u8(0);
    assert_eq!(
        err(&r),
        GgufError::Truncated {
            offset: 32,
            needed: 1 << 63,
            what: "metadata key"
        }
    );
    // A string value too.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(u64::MAX);
    assert!(matches!(
        err(&r),
        GgufError::Truncated {
            offset: 45,
            needed: u64::MAX,
            what: "string value"
        }
    ));
}

#[test]
fn huge_counts_are_bounded_by_the_bytes_left() {
    // 2^60 uint8 array elements in a 50-byte file: refused before allocating.
    let mut r = Raw::header(3, 0, 1);
    r.str("arr").u32(9).u32(0).u64(1 << 60).u8(1);
    assert_eq!(
        err(&r),
        GgufError::ArrayTooLong {
            offset: 43,
            key: "arr".into(),
            count: 1 << 60,
            max: 1
        }
    );
    // Nested arrays count 12 bytes each at least.
    let mut r = Raw::header(3, 0, 1);
    r.str("arr").u32(9).u32(9).u64(2).u32(0).u64(0);
    assert!(matches!(err(&r), GgufError::ArrayTooLong { max: 1, .. }));
    let mut r = Raw::header(3, 1 << 62, 0);
    r.u64(0);
    assert_eq!(
        err(&r),
        GgufError::CountTooLarge {
            offset: 8,
            what: "tensor count",
            count: 1 << 62,
            max: 0
        }
    );
    assert!(matches!(
        err(&Raw::header(3, 0, u64::MAX)),
        GgufError::CountTooLarge {
            offset: 16,
            what: "metadata count",
            ..
        }
    ));
}

#[test]
fn too_many_dims() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t5", &[1; MAX_DIMS + 1], 0, 0).data(32, 4);
    assert_eq!(
        err(&r),
        GgufError::TooManyDims {
            offset: 34,
            tensor: "t5".into(),
            n_dims: 5
        }
    );
}

#[test]
fn unknown_type_ids_name_the_key_or_tensor() {
    let mut r = Raw::header(3, 0, 1);
    r.str("general.x").u32(13).u8(0);
    let e = err(&r);
    assert_eq!(
        e,
        GgufError::UnknownValueType {
            offset: 41,
            key: "general.x".into(),
            type_id: 13
        }
    );
    assert_eq!(
        e.to_string(),
        "offset 41: key `general.x` has unknown value type id 13"
    );
    // Inside an array.
    let mut r = Raw::header(3, 0, 1);
    r.str("a").u32(9).u32(77).u64(0);
    assert!(matches!(
        err(&r),
        GgufError::UnknownValueType {
            offset: 37,
            type_id: 77,
            ..
        }
    ));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("blk.0.attn_q.weight", &[32], 99, 0).data(32, 128);
    let e = err(&r);
    let at = 24 + 8 + 19 + 4 + 8;
    assert_eq!(
        e,
        GgufError::UnknownTensorType {
            offset: at,
            tensor: "blk.0.attn_q.weight".into(),
            type_id: 99
        }
    );
    assert_eq!(
        e.to_string(),
        format!("offset {at}: tensor `blk.0.attn_q.weight` has unknown type id 99")
    );
    // Withdrawn ids (Q4_2 = 4) are unknown too.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("old", &[32], 4, 0).data(32, 128);
    assert!(matches!(
        err(&r),
        GgufError::UnknownTensorType { type_id: 4, .. }
    ));
}

#[test]
fn tensor_data_out_of_bounds() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4], 0, 0).data(32, 15);
    let data_offset = r.len() - 15;
    assert_eq!(
        err(&r),
        GgufError::TensorOutOfBounds {
            offset: 24 + 9 + 4 + 8 + 4,
            tensor: "t".into(),
            start: data_offset,
            size: 16,
            file_len: r.len()
        }
    );
    // Offset past the end, and one so large that adding it overflows.
    for offset in [64, u64::MAX - 31] {
        let mut r = Raw::header(3, 1, 0);
        r.tensor("t", &[4], 0, offset).data(32, 16);
        assert!(matches!(err(&r), GgufError::TensorOutOfBounds { .. }));
    }
    // Exactly fitting is fine.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4], 0, 0).data(32, 16);
    assert_eq!(r.parse().unwrap().tensors[0].data, &[0xAB; 16]);
}

#[test]
fn misaligned_tensor_offset() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4], 0, 16).data(32, 64);
    assert_eq!(
        err(&r),
        GgufError::MisalignedTensor {
            offset: 49,
            tensor: "t".into(),
            data_offset: 16,
            alignment: 32
        }
    );
}

#[test]
fn overflowing_dims() {
    for dims in [
        &[1 << 32, 1 << 32][..],
        &[1 << 63],
        &[u64::MAX],
        &[1 << 31, 1 << 31, 2],
        &[0, u64::MAX],
    ] {
        let mut r = Raw::header(3, 1, 0);
        r.tensor("t", dims, 24, 0).data(32, 64);
        assert_eq!(
            err(&r),
            GgufError::DimsOverflow {
                offset: 24 + 9 + 4,
                tensor: "t".into(),
                dims: dims.to_vec()
            },
            "{dims:?}"
        );
    }
    // The element count fits in an i64 but its size in bytes (8 per F64) does not.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("f64", &[1 << 62], GgmlType::F64.id(), 0)
        .data(32, 64);
    assert_eq!(
        err(&r),
        GgufError::SizeOverflow {
            offset: 24 + 11 + 4 + 8,
            what: "tensor byte size"
        }
    );
    // Fits in i64 but the bytes do not exist: out of bounds, not overflow.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1 << 31, 1 << 31], 24, 0).data(32, 64);
    assert!(matches!(err(&r), GgufError::TensorOutOfBounds { .. }));
}

#[test]
fn row_length_must_be_whole_blocks() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("q", &[33, 2], GgmlType::Q4_0.id(), 0).data(32, 64);
    assert_eq!(
        err(&r),
        GgufError::BadRowLength {
            offset: 24 + 9 + 4,
            tensor: "q".into(),
            ty: GgmlType::Q4_0,
            row_len: 33
        }
    );
}

#[test]
fn zero_sized_and_scalar_tensors_are_accepted() {
    let mut r = Raw::header(3, 2, 0);
    r.tensor("empty", &[256, 0], GgmlType::Q4_K.id(), 0)
        .tensor("scalar", &[], 0, 0)
        .data(32, 4);
    let f = r.parse().unwrap();
    assert!(f.tensor("empty").unwrap().data.is_empty());
    assert_eq!(f.tensor("scalar").unwrap().data.len(), 4);
}

#[test]
fn bool_must_be_0_or_1() {
    let mut r = Raw::header(3, 0, 1);
    r.str("flag").u32(7).u8(2);
    assert_eq!(
        err(&r),
        GgufError::BadBool {
            offset: 40,
            key: "flag".into(),
            byte: 2
        }
    );
}

#[test]
fn duplicate_keys_and_tensor_names() {
    let mut r = Raw::header(3, 0, 3);
    r.str("a").u32(0).u8(1);
    r.str("b").u32(0).u8(1);
    let second_a = r.len();
    r.str("a").u32(0).u8(2);
    assert_eq!(
        err(&r),
        GgufError::DuplicateKey {
            offset: second_a,
            key: "a".into()
        }
    );
    let mut r = Raw::header(3, 2, 0);
    r.tensor("t", &[1], 0, 0);
    let second = r.len();
    r.tensor("t", &[1], 0, 32).data(32, 64);
    assert_eq!(
        err(&r),
        GgufError::DuplicateTensor {
            offset: second,
            tensor: "t".into()
        }
    );
}

#[test]
fn empty_key_and_invalid_utf8() {
    let mut r = Raw::header(3, 0, 1);
    r.str("").u32(0).u8(0);
    assert_eq!(err(&r), GgufError::EmptyKey { offset: 24 });
    let mut r = Raw::header(3, 0, 1);
    r.bytes(b"k\xff").u32(0).u8(0);
    assert_eq!(
        err(&r),
        GgufError::InvalidUtf8 {
            offset: 32,
            what: "metadata key"
        }
    );
    let mut r = Raw::header(3, 1, 0);
    r.bytes(b"\xc3(").u32(1).u64(1).u32(0).u64(0).data(32, 4);
    assert_eq!(
        err(&r),
        GgufError::InvalidUtf8 {
            offset: 32,
            what: "tensor name"
        }
    );
    // String values are not validated: they are bytes until asked for as text.
    let mut r = Raw::header(3, 0, 1);
    r.str("s").u32(8).bytes(b"\xff\xfe");
    let f = r.parse().unwrap();
    assert_eq!(f.get_str("s"), None);
    assert_eq!(f.get("s").unwrap().as_bytes(), Some(&b"\xff\xfe"[..]));
    assert_eq!(f.get("s").unwrap().to_owned_value(), None);
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u64(10).u64(32);
    assert_eq!(
        err(&r),
        GgufError::AlignmentNotU32 {
            offset: 49,
            found: "uint64"
        }
    );
    for bad in [0, 3, 48] {
        let mut r = Raw::header(3, 0, 1);
        r.str("general.alignment").u32(4).u32(bad);
        assert_eq!(
            err(&r),
            GgufError::BadAlignment {
                offset: 53,
                alignment: bad.into()
            }
        );
    }
    let mut r = Raw::header(3, 1, 1);
    r.str("general.alignment").u32(4).u32(8);
    r.tensor("t", &[1], 0, 8).data(8, 12);
    let f = r.parse().unwrap();
    assert_eq!(f.alignment, 8);
    assert_eq!(f.data_offset % 8, 0);
    assert_eq!(f.tensors[0].data.len(), 4);
}

#[test]
fn nesting_is_bounded_without_exhausting_the_stack() {
    // MAX_ARRAY_DEPTH levels parse; one more is refused.
    let nested = |levels: usize| {
        let mut r = Raw::header(3, 0, 1);
        r.str("n").u32(9);
        for _ in 1..levels {
            r.u32(9).u64(1);
        }
        r.u32(0).u64(1).u8(5);
        r
    };
    assert!(nested(MAX_ARRAY_DEPTH).parse().is_ok());
    assert!(matches!(
        err(&nested(MAX_ARRAY_DEPTH + 1)),
        GgufError::NestingTooDeep { .. }
    ));
    // A million levels: refused at the limit, not by overflowing the stack.
    assert!(matches!(
        err(&nested(1_000_000)),
        GgufError::NestingTooDeep { .. }
    ));
}

#[test]
fn display_messages_are_specific() {
    let e = GgufError::TensorOutOfBounds {
        offset: 1234,
        tensor: "output.weight".into(),
        start: 100,
        size: 50,
        file_len: 120,
    };
    assert_eq!(
        e.to_string(),
        "offset 1234: tensor `output.weight` needs bytes 100..150 but the file is 120 bytes long"
    );
    let e = GgufError::Truncated {
        offset: 7,
        needed: 8,
        what: "tensor count",
    };
    assert_eq!(
        e.to_string(),
        "offset 7: file ends while reading tensor count (8 bytes needed)"
    );
}
