//! Writes small valid GGUF files into a directory: fuzzing seeds, and files to check
//! the writer against other readers (e.g. gguf-py).
//!
//! `cargo run -p embodios-gguf --example write_samples -- fuzz/corpus/gguf_parse`

use embodios_gguf::{GgmlType, GgufWriter, OwnedValue, WriteError};

/// Deterministic pseudo-random bytes.
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

fn tensor(w: &mut GgufWriter, name: &str, dims: &[u64], ty: GgmlType) -> Result<(), WriteError> {
    let n: u64 = dims.iter().product();
    let len = ty.bytes_for(n).expect("whole blocks") as usize;
    w.add_tensor(name, dims, ty, noise(n ^ u64::from(ty.id()), len))
}

fn samples() -> Result<Vec<(&'static str, Vec<u8>)>, WriteError> {
    use OwnedValue::*;
    let mut out = Vec::new();

    out.push(("empty_v3.gguf", GgufWriter::new().finish()));

    let mut w = GgufWriter::new();
    w.set_version(2)?;
    w.add_metadata("general.architecture", OwnedValue::str("llama"))?;
    w.add_metadata("llama.block_count", U32(1))?;
    tensor(&mut w, "token_embd.weight", &[32, 4], GgmlType::Q8_0)?;
    out.push(("tiny_v2.gguf", w.finish()));

    let mut w = GgufWriter::new();
    for (k, v) in [
        ("u8", U8(1)),
        ("i8", I8(-1)),
        ("u16", U16(2)),
        ("i16", I16(-2)),
        ("u32", U32(3)),
        ("i32", I32(-3)),
        ("f32", F32(0.5)),
        ("bool", Bool(true)),
        ("str", OwnedValue::str("text")),
        ("u64", U64(4)),
        ("i64", I64(-4)),
        ("f64", F64(0.25)),
        ("tokens", OwnedValue::str_array(&["<s>", "</s>", "a"])),
        ("scores", OwnedValue::f32_array(&[0.0, -1.0, -2.0])),
        ("types", OwnedValue::i32_array(&[3, 3, 1])),
        ("flags", Array(vec![Bool(false), Bool(true)])),
        ("empty", Array(vec![])),
    ] {
        w.add_metadata(k, v)?;
    }
    out.push(("all_values.gguf", w.finish()));

    let mut w = GgufWriter::new();
    w.add_metadata(
        "nested",
        Array(vec![
            OwnedValue::str_array(&["x"]),
            Array(vec![OwnedValue::u32_array(&[1, 2])]),
        ]),
    )?;
    out.push(("nested.gguf", w.finish()));

    let mut w = GgufWriter::new();
    w.set_alignment(8)?;
    w.add_metadata("general.architecture", OwnedValue::str("gemma3"))?;
    tensor(&mut w, "a", &[32], GgmlType::Q4_0)?;
    tensor(&mut w, "b", &[256, 2], GgmlType::Q4_K)?;
    tensor(&mut w, "c", &[4, 2, 2], GgmlType::F32)?;
    tensor(&mut w, "d", &[2, 1, 1, 3], GgmlType::F16)?;
    tensor(&mut w, "e", &[32, 0], GgmlType::Q5_0)?;
    tensor(&mut w, "f", &[], GgmlType::I32)?;
    out.push(("tensors_align8.gguf", w.finish()));

    let mut w = GgufWriter::new();
    w.set_alignment(64)?;
    tensor(&mut w, "q6", &[256], GgmlType::Q6_K)?;
    tensor(&mut w, "q5_1", &[32, 2], GgmlType::Q5_1)?;
    tensor(&mut w, "bf16", &[3], GgmlType::BF16)?;
    out.push(("tensors_align64.gguf", w.finish()));

    Ok(out)
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus/gguf_parse".into());
    std::fs::create_dir_all(&dir).expect("create output directory");
    let samples = samples().unwrap_or_else(|e| panic!("sample is invalid: {e}"));
    for (name, bytes) in samples {
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, bytes).expect("write sample");
        println!("{}", path.display());
    }
}
