//! Fuzz target: parsing arbitrary bytes never panics, and a successful parse hands out
//! only consistent, readable metadata and tensor slices.
#![no_main]

use embodios_gguf::{GgufFile, Value};
use libfuzzer_sys::fuzz_target;

/// Reads every part of a value, so that a bad slice would be touched.
fn touch(v: &Value, acc: &mut u64) {
    *acc = acc.wrapping_add(v.type_name().len() as u64);
    match v {
        Value::Str(b) => *acc = b.iter().fold(*acc, |a, &x| a.wrapping_add(u64::from(x))),
        Value::Array(items) => items.iter().for_each(|i| touch(i, acc)),
        other => {
            *acc = acc
                .wrapping_add(other.as_u64().unwrap_or(0))
                .wrapping_add(other.as_f32().map_or(0, |f| u64::from(f.to_bits())))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::parse(data) else {
        return;
    };
    let mut acc = 0u64;
    for (key, value) in &file.metadata {
        touch(value, &mut acc);
        assert!(file.get(key).is_some(), "lookup of an existing key failed");
    }
    assert!(file.alignment.is_power_of_two());
    assert_eq!(file.data_offset % file.alignment, 0);
    for t in &file.tensors {
        assert!(t.dims.len() <= embodios_gguf::MAX_DIMS);
        assert_eq!(t.offset % file.alignment, 0);
        assert_eq!(
            Some(t.data.len() as u64),
            t.ty.bytes_for(t.n_elements()),
            "slice length disagrees with dims"
        );
        let start = (file.data_offset + t.offset) as usize;
        assert_eq!(&data[start..start + t.data.len()], t.data);
        acc = t
            .data
            .iter()
            .fold(acc, |a, &x| a.wrapping_add(u64::from(x)));
        assert_eq!(t.row_len() * t.n_rows(), t.n_elements());
        assert!(core::ptr::eq(file.tensor(t.name).unwrap(), t));
    }
    std::hint::black_box(acc);
});
