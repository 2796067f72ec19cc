//! Dequantization must match `gguf.quants.dequantize` (and ggml) bit for bit, on real
//! tensors of both reference models and on synthetic blocks of every supported type.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{assert_bits_eq, golden, model_path};
use embodios_gguf::GgufFile;
use embodios_quant::{dequantize_row, GgmlType};

#[test]
fn synthetic_blocks_dequantize_exactly() {
    let cases = golden("dequant_synthetic.txt");
    let mut types = BTreeSet::new();
    for case in &cases {
        let ty = case.ty("type");
        types.insert(ty.name());
        let bytes = case.bytes("bytes");
        let want = case.f32s("values_f32");
        assert_eq!(want.len(), case.num("count"));
        let mut got = vec![0.0f32; want.len()];
        dequantize_row(ty, &bytes, &mut got).unwrap_or_else(|e| panic!("{}: {e}", case.label()));
        assert_bits_eq(&got, &want, &case.label());
    }
    for needed in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K",
    ] {
        assert!(types.contains(needed), "no synthetic golden for {needed}");
    }
}

#[test]
fn real_model_tensors_dequantize_exactly() {
    let cases = golden("dequant_models.txt");
    let mut by_model: HashMap<&str, Vec<&common::Case>> = HashMap::new();
    for case in &cases {
        by_model.entry(case.get("model")).or_default().push(case);
    }
    assert!(by_model.contains_key("smollm2") && by_model.contains_key("gemma3"));
    for (model, cases) in by_model {
        let path = model_path(model);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = GgufFile::parse(&bytes)
            .unwrap_or_else(|e| panic!("{}: cannot parse: {e:?}", path.display()));
        let mut types = BTreeSet::new();
        for case in cases {
            let name = case.get("tensor");
            let tensor = file
                .tensor(name)
                .unwrap_or_else(|| panic!("{model}: no tensor {name}"));
            let ty = case.ty("type");
            assert_eq!(tensor.ty, ty, "{model} {name}: type");
            types.insert(ty);
            let (off, len) = (case.num("tensor_offset"), case.num("nbytes"));
            let data = &tensor.data[off..off + len];
            // The parser's view must be the bytes the Python reader saw at that file offset.
            let file_off = case.num("file_offset");
            assert_eq!(
                data,
                &bytes[file_off..file_off + len],
                "{model} {name}: data offset"
            );
            let want = case.f32s("values_f32");
            assert_eq!(want.len(), case.num("count"));
            let mut got = vec![0.0f32; want.len()];
            dequantize_row(ty, data, &mut got).unwrap_or_else(|e| panic!("{}: {e}", case.label()));
            assert_bits_eq(&got, &want, &case.label());
        }
        // Every tensor type of the model is covered.
        let present: BTreeSet<GgmlType> = file.tensors.iter().map(|t| t.ty).collect();
        assert_eq!(types, present, "{model}: goldens cover every tensor type");
    }
}
