//! Fuzz target: whatever parses can be rewritten with `GgufWriter` and parses back to
//! the same metadata and tensors (compared bit for bit, so NaNs count as equal).
#![no_main]

use embodios_gguf::{GgufFile, GgufWriter, Value};
use libfuzzer_sys::fuzz_target;

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::parse(data) else {
        return;
    };
    let mut w = GgufWriter::new();
    w.set_version(file.version)
        .expect("parsed version is writable");
    for (key, value) in &file.metadata {
        // The writer only writes UTF-8 strings; skip files it cannot represent.
        let Some(owned) = value.to_owned_value() else {
            return;
        };
        w.add_metadata(key, owned)
            .expect("parsed metadata is writable");
    }
    for t in &file.tensors {
        w.add_tensor(t.name, &t.dims, t.ty, t.data.to_vec())
            .expect("parsed tensor is writable");
    }
    let bytes = w.finish();
    let again = GgufFile::parse(&bytes).expect("writer output parses");
    assert_eq!(again.version, file.version);
    assert_eq!(again.alignment, file.alignment);
    assert_eq!(again.metadata.len(), file.metadata.len());
    for ((k1, v1), (k2, v2)) in file.metadata.iter().zip(&again.metadata) {
        assert_eq!(k1, k2);
        assert!(same(v1, v2), "value of {k1} changed");
    }
    assert_eq!(again.tensors.len(), file.tensors.len());
    for (t1, t2) in file.tensors.iter().zip(&again.tensors) {
        assert_eq!(
            (t1.name, &t1.dims, t1.ty, t1.data),
            (t2.name, &t2.dims, t2.ty, t2.data)
        );
    }
});
