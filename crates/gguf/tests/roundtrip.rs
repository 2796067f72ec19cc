//! Files written by `GgufWriter` parse back to the same metadata and tensors, with the
//! layout the format requires; the writer refuses what the parser would refuse.

use embodios_gguf::{
    GgmlType, GgufFile, GgufWriter, OwnedValue, Value, ValueType, WriteError, MAX_ARRAY_DEPTH,
};

/// Deterministic pseudo-random bytes (64-bit LCG, high byte).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

/// One value of every type, extremes included, plus arrays of each and nested arrays.
fn every_value() -> Vec<(&'static str, OwnedValue)> {
    use OwnedValue::*;
    vec![
        ("t.u8", U8(u8::MAX)),
        ("t.i8", I8(i8::MIN)),
        ("t.u16", U16(u16::MAX)),
        ("t.i16", I16(i16::MIN)),
        ("t.u32", U32(u32::MAX)),
        ("t.i32", I32(i32::MIN)),
        ("t.f32", F32(-1.5e-7)),
        ("t.bool.true", Bool(true)),
        ("t.bool.false", Bool(false)),
        ("t.str", OwnedValue::str("héllo ✓ 日本")),
        ("t.str.empty", OwnedValue::str("")),
        ("t.u64", U64(u64::MAX)),
        ("t.i64", I64(i64::MIN)),
        ("t.f64", F64(core::f64::consts::PI)),
        ("a.u8", Array(vec![U8(0), U8(255)])),
        ("a.i8", Array(vec![I8(-1), I8(1)])),
        ("a.u16", Array(vec![U16(1), U16(65535)])),
        ("a.i16", Array(vec![I16(-300)])),
        ("a.u32", OwnedValue::u32_array(&[1, 2, 3])),
        ("a.i32", OwnedValue::i32_array(&[-7, 0, 7])),
        ("a.f32", OwnedValue::f32_array(&[0.5, -0.0, f32::INFINITY])),
        ("a.bool", Array(vec![Bool(true), Bool(false)])),
        ("a.str", OwnedValue::str_array(&["a", "", "<|im_start|>"])),
        ("a.u64", Array(vec![U64(u64::MAX)])),
        ("a.i64", Array(vec![I64(i64::MAX), I64(-1)])),
        ("a.f64", Array(vec![F64(1e300)])),
        ("a.empty", Array(vec![])),
        (
            "a.nested",
            Array(vec![
                OwnedValue::str_array(&["x", "y"]),
                OwnedValue::i32_array(&[1]),
                Array(vec![]),
            ]),
        ),
        (
            "a.nested3",
            Array(vec![Array(vec![OwnedValue::f32_array(&[2.0])])]),
        ),
    ]
}

#[test]
fn every_value_type_round_trips_in_versions_2_and_3() {
    for version in [2, 3] {
        let mut w = GgufWriter::new();
        w.set_version(version).unwrap();
        for (k, v) in every_value() {
            w.add_metadata(k, v).unwrap();
        }
        let bytes = w.finish();
        let file = GgufFile::parse(&bytes).unwrap();
        assert_eq!(file.version, version);
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), version);
        let expected = every_value();
        assert_eq!(file.metadata.len(), expected.len());
        for ((k, v), (ek, ev)) in file.metadata.iter().zip(&expected) {
            assert_eq!(k, ek);
            assert_eq!(*v, ev.as_value(), "{k}");
            assert_eq!(file.get(k), Some(v), "lookup {k}");
            assert_eq!(v.to_owned_value().as_ref(), Some(ev), "{k}");
        }
        assert!(file.tensors.is_empty());
        assert_eq!(file.alignment, 32);
    }
}

#[test]
fn nan_and_negative_zero_keep_their_bits() {
    let mut w = GgufWriter::new();
    let nan32 = f32::from_bits(0x7FC0_1234);
    let nan64 = f64::from_bits(0x7FF8_0000_0000_0042);
    w.add_metadata("nan32", OwnedValue::F32(nan32)).unwrap();
    w.add_metadata("nan64", OwnedValue::F64(nan64)).unwrap();
    w.add_metadata("negzero", OwnedValue::F32(-0.0)).unwrap();
    let bytes = w.finish();
    let file = GgufFile::parse(&bytes).unwrap();
    assert!(matches!(file.get("nan32"), Some(Value::F32(v)) if v.to_bits() == nan32.to_bits()));
    assert!(matches!(file.get("nan64"), Some(Value::F64(v)) if v.to_bits() == nan64.to_bits()));
    assert!(
        matches!(file.get("negzero"), Some(Value::F32(v)) if v.to_bits() == (-0.0f32).to_bits())
    );
}

/// Tensors of several types and shapes, with random contents.
fn sample_tensors() -> Vec<(String, Vec<u64>, GgmlType)> {
    vec![
        ("token_embd.weight".into(), vec![64, 10], GgmlType::Q8_0),
        ("blk.0.attn_norm.weight".into(), vec![64], GgmlType::F32),
        ("blk.0.ffn_up.weight".into(), vec![256, 3], GgmlType::Q4_K),
        ("blk.0.ffn_down.weight".into(), vec![256, 2], GgmlType::Q6_K),
        ("blk.0.attn_q.weight".into(), vec![32, 2, 3], GgmlType::Q4_1),
        ("four_d".into(), vec![2, 3, 1, 5], GgmlType::F16),
        ("odd_bytes".into(), vec![3], GgmlType::I8),
        ("mxfp4".into(), vec![32], GgmlType::MXFP4),
        ("empty_rows".into(), vec![32, 0], GgmlType::Q5_0),
        ("scalar".into(), vec![], GgmlType::F32),
    ]
}

fn write_sample(alignment: Option<u32>) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", OwnedValue::str("llama"))
        .unwrap();
    if let Some(a) = alignment {
        w.set_alignment(a).unwrap();
    }
    let mut datas = Vec::new();
    for (i, (name, dims, ty)) in sample_tensors().into_iter().enumerate() {
        let n: u64 = dims.iter().product();
        let data = noise(i as u64, ty.bytes_for(n).unwrap() as usize);
        datas.push(data.clone());
        w.add_tensor(&name, &dims, ty, data).unwrap();
    }
    (w.finish(), datas)
}

#[test]
fn tensors_round_trip_with_aligned_offsets() {
    let (bytes, datas) = write_sample(None);
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(file.get("general.alignment"), None);
    assert_eq!(file.data_offset % 32, 0);
    assert_eq!(bytes.len() % 32, 0, "every tensor padded, the last too");
    let expected = sample_tensors();
    assert_eq!(file.tensors.len(), expected.len());
    for ((t, (name, dims, ty)), data) in file.tensors.iter().zip(&expected).zip(&datas) {
        assert_eq!(t.name, name);
        assert_eq!(&t.dims, dims);
        assert_eq!(t.ty, *ty);
        assert_eq!(t.data, &data[..], "{name}");
        assert_eq!(t.offset % 32, 0, "{name}");
        assert_eq!(file.tensor(name), Some(t));
        let n: u64 = dims.iter().product();
        assert_eq!(t.n_elements(), n);
        assert_eq!(t.row_len() * t.n_rows(), n);
    }
    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.row_len(), q.n_rows(), q.row_bytes()), (32, 6, 20));
    let s = file.tensor("scalar").unwrap();
    assert_eq!((s.n_elements(), s.row_len(), s.n_rows()), (1, 1, 1));
    assert!(file.tensor("empty_rows").unwrap().data.is_empty());
    assert!(file.tensor("missing").is_none());
    assert!(file.tensor("").is_none());
    // The gap between the header and the data is zero padding.
    let first = file.tensors.iter().map(|t| t.offset).min().unwrap();
    assert_eq!(first, 0);
}

#[test]
fn custom_alignments_are_honoured() {
    for alignment in [1u32, 8, 64, 4096] {
        let (bytes, datas) = write_sample(Some(alignment));
        let file = GgufFile::parse(&bytes).unwrap();
        let a = u64::from(alignment);
        assert_eq!(file.alignment, a);
        assert_eq!(file.get_u32("general.alignment"), Some(alignment));
        assert_eq!(file.data_offset % a, 0);
        assert_eq!(bytes.len() as u64 % a, 0);
        for (t, d) in file.tensors.iter().zip(&datas) {
            assert_eq!(t.offset % a, 0);
            assert_eq!(t.data, &d[..]);
        }
        if alignment == 1 {
            // No padding at all: the data section is exactly the concatenated tensors.
            let total: usize = datas.iter().map(Vec::len).sum();
            assert_eq!(bytes.len() as u64, file.data_offset + total as u64);
        }
    }
    // Setting it twice replaces the stored value; adding it as metadata works too.
    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    w.set_alignment(16).unwrap();
    let bytes = w.finish();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.metadata.len(), 1);
    assert_eq!(file.alignment, 16);
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", OwnedValue::U32(128))
        .unwrap();
    w.add_tensor("x", &[4], GgmlType::F32, vec![0; 16]).unwrap();
    w.add_tensor("y", &[4], GgmlType::F32, vec![1; 16]).unwrap();
    let bytes = w.finish();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.alignment, 128);
    assert_eq!(file.tensor("y").unwrap().offset, 128);
}

#[test]
fn typed_getters_accept_every_integer_width_that_fits() {
    use OwnedValue::*;
    let mut w = GgufWriter::new();
    let items = [
        ("u8", U8(7)),
        ("i16", I16(300)),
        ("neg", I32(-5)),
        ("big", U64(u64::from(u32::MAX) + 1)),
        ("huge", U64(u64::MAX)),
        ("f64", F64(0.25)),
        ("f32", F32(2.5)),
        ("flag", Bool(true)),
        ("name", OwnedValue::str("gemma3")),
        ("list", OwnedValue::i32_array(&[4, 5])),
    ];
    for (k, v) in items {
        w.add_metadata(k, v).unwrap();
    }
    let bytes = w.finish();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.get_u32("u8"), Some(7));
    assert_eq!(f.get_u32("i16"), Some(300));
    assert_eq!(f.get_u32("neg"), None);
    assert_eq!(f.get_i64("neg"), Some(-5));
    assert_eq!(f.get_u64("neg"), None);
    assert_eq!(f.get_u32("big"), None);
    assert_eq!(f.get_u64("big"), Some(1 << 32));
    assert_eq!(f.get_i64("huge"), None);
    assert_eq!(f.get_u64("huge"), Some(u64::MAX));
    assert_eq!(f.get_f32("f64"), Some(0.25));
    assert_eq!(f.get_f32("f32"), Some(2.5));
    assert_eq!(f.get_f32("u8"), None);
    assert_eq!(f.get_u32("f32"), None);
    assert_eq!(f.get_bool("flag"), Some(true));
    assert_eq!(f.get_bool("u8"), None);
    assert_eq!(f.get_str("name"), Some("gemma3"));
    assert_eq!(f.get_str("u8"), None);
    assert_eq!(
        f.get("name").and_then(Value::as_bytes),
        Some(&b"gemma3"[..])
    );
    assert_eq!(
        f.get_array("list"),
        Some(&[Value::I32(4), Value::I32(5)][..])
    );
    assert_eq!(f.get_array("name"), None);
    assert_eq!(f.get_str("missing"), None);
    assert_eq!(f.architecture(), None);
    assert_eq!(f.get("list").map(Value::type_name), Some("array"));
    assert_eq!(f.get("f64").map(Value::type_name), Some("float64"));
}

#[test]
fn writer_refuses_what_the_parser_would_refuse() {
    let mut w = GgufWriter::new();
    assert_eq!(
        w.set_version(1),
        Err(WriteError::UnsupportedVersion { version: 1 })
    );
    assert_eq!(
        w.set_alignment(0),
        Err(WriteError::BadAlignment { alignment: 0 })
    );
    assert_eq!(
        w.set_alignment(48),
        Err(WriteError::BadAlignment { alignment: 48 })
    );
    assert_eq!(
        w.add_metadata("general.alignment", OwnedValue::U64(32)),
        Err(WriteError::AlignmentNotU32 { found: "uint64" })
    );
    assert_eq!(
        w.add_metadata("", OwnedValue::U8(0)),
        Err(WriteError::EmptyKey)
    );
    w.add_metadata("k", OwnedValue::U8(0)).unwrap();
    assert_eq!(
        w.add_metadata("k", OwnedValue::U8(1)),
        Err(WriteError::DuplicateKey { key: "k".into() })
    );
    assert_eq!(
        w.add_metadata(
            "mixed",
            OwnedValue::Array(vec![OwnedValue::U8(0), OwnedValue::I8(0)])
        ),
        Err(WriteError::MixedArray {
            key: "mixed".into()
        })
    );
    let mut deep = OwnedValue::U8(1);
    for _ in 0..MAX_ARRAY_DEPTH {
        deep = OwnedValue::Array(vec![deep]);
    }
    w.add_metadata("deep.ok", deep.clone()).unwrap();
    assert_eq!(
        w.add_metadata("deep", OwnedValue::Array(vec![deep])),
        Err(WriteError::NestingTooDeep { key: "deep".into() })
    );
    assert_eq!(
        w.add_tensor("t", &[32], GgmlType::Q8_0, vec![0; 33]),
        Err(WriteError::DataLength {
            name: "t".into(),
            expected: 34,
            actual: 33
        })
    );
    assert_eq!(
        w.add_tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4]),
        Err(WriteError::TooManyDims {
            name: "t".into(),
            n_dims: 5
        })
    );
    assert_eq!(
        w.add_tensor("t", &[16], GgmlType::Q4_0, vec![0; 9]),
        Err(WriteError::BadRowLength {
            name: "t".into(),
            ty: GgmlType::Q4_0,
            row_len: 16
        })
    );
    assert_eq!(
        w.add_tensor("t", &[1 << 32, 1 << 31], GgmlType::I8, vec![]),
        Err(WriteError::DimsOverflow { name: "t".into() })
    );
    w.add_tensor("t", &[1], GgmlType::F32, vec![0; 4]).unwrap();
    assert_eq!(
        w.add_tensor("t", &[1], GgmlType::F32, vec![0; 4]),
        Err(WriteError::DuplicateTensor { name: "t".into() })
    );
    // What was accepted still makes a valid file.
    let bytes = w.finish();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.metadata.len(), 2);
    assert_eq!(file.tensors.len(), 1);
    let depth = |mut v: &Value| {
        let mut d = 0;
        while let Some(a) = v.as_array() {
            d += 1;
            v = &a[0];
        }
        d
    };
    assert_eq!(depth(file.get("deep.ok").unwrap()), MAX_ARRAY_DEPTH);
}

#[test]
fn empty_arrays_are_written_with_a_known_element_type() {
    let mut w = GgufWriter::new();
    w.add_metadata("e", OwnedValue::Array(vec![])).unwrap();
    let bytes = w.finish();
    // magic, version, counts, key "e", type array, then the element type.
    let elem = u32::from_le_bytes(bytes[24 + 8 + 1 + 4..][..4].try_into().unwrap());
    assert_eq!(ValueType::from_id(elem), Some(ValueType::U8));
    assert_eq!(
        GgufFile::parse(&bytes).unwrap().get_array("e"),
        Some(&[][..])
    );
}
