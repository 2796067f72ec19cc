//! Parses the two real test models and compares every metadata key and tensor with
//! what the reference reader (gguf-py) recorded in `tests/golden/*.json`
//! (written by `scripts/golden/gguf_facts.py`).

use std::path::PathBuf;

use embodios_gguf::{GgmlType, GgufFile, Value};
use embodios_testkit::TestModel;
use serde_json::Value as Json;

fn golden(name: &str) -> Json {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden {}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden is valid JSON")
}

/// sum((i + 1) * byte[i]) mod 2^64, as the golden script computes it.
fn checksum(data: &[u8]) -> u64 {
    data.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_add((i as u64 + 1).wrapping_mul(u64::from(b)))
    })
}

/// Asserts a parsed value equals a JSON scalar recorded by gguf-py.
fn assert_scalar(key: &str, v: &Value, j: &Json) {
    match v {
        Value::Str(_) => assert_eq!(v.as_str(), j.as_str(), "{key}"),
        Value::Bool(b) => assert_eq!(Some(*b), j.as_bool(), "{key}"),
        Value::F32(f) => assert_eq!(Some(f64::from(*f)), j.as_f64(), "{key}"),
        Value::F64(f) => assert_eq!(Some(*f), j.as_f64(), "{key}"),
        Value::Array(_) => panic!("{key}: nested array not expected in the models"),
        _ => {
            if let Some(u) = j.as_u64() {
                assert_eq!(v.as_u64(), Some(u), "{key}");
            } else {
                assert_eq!(v.as_i64(), j.as_i64(), "{key}");
            }
        }
    }
}

/// Checks the parse of `bytes` against the golden facts, key by key and tensor by tensor.
fn check_against_golden(file: &GgufFile, bytes: &[u8], g: &Json) {
    assert_eq!(bytes.len() as u64, g["file_len"].as_u64().unwrap());
    assert_eq!(u64::from(file.version), g["version"].as_u64().unwrap());
    assert_eq!(file.alignment, g["alignment"].as_u64().unwrap());
    assert_eq!(file.data_offset, g["data_offset"].as_u64().unwrap());

    let meta = g["metadata"].as_array().unwrap();
    assert_eq!(file.metadata.len(), meta.len());
    for (i, m) in meta.iter().enumerate() {
        let key = m["key"].as_str().unwrap();
        assert_eq!(file.metadata[i].0, key, "metadata order");
        let v = file.get(key).unwrap_or_else(|| panic!("missing key {key}"));
        assert_eq!(v.type_name(), m["type"].as_str().unwrap(), "{key}");
        if let Some(items) = v.as_array() {
            assert_eq!(items.len() as u64, m["len"].as_u64().unwrap(), "{key}");
            if let Some(first) = items.first() {
                assert_eq!(first.type_name(), m["elem_type"].as_str().unwrap(), "{key}");
                assert_scalar(key, items.last().unwrap(), &m["last"]);
            }
            for (item, j) in items.iter().zip(m["head"].as_array().unwrap()) {
                assert_scalar(key, item, j);
            }
        } else {
            assert_scalar(key, v, &m["value"]);
        }
    }

    let tensors = g["tensors"].as_array().unwrap();
    assert_eq!(file.tensors.len(), tensors.len());
    for (t, j) in file.tensors.iter().zip(tensors) {
        let name = j["name"].as_str().unwrap();
        assert_eq!(t.name, name, "tensor order");
        assert_eq!(
            file.tensor(name).map(|found| found.name),
            Some(name),
            "lookup"
        );
        assert_eq!(
            u64::from(t.ty.id()),
            j["type_id"].as_u64().unwrap(),
            "{name}"
        );
        let dims: Vec<u64> = j["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, dims, "{name}");
        assert_eq!(t.offset, j["offset"].as_u64().unwrap(), "{name}");
        assert_eq!(
            t.data.len() as u64,
            j["n_bytes"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            checksum(t.data),
            j["checksum"].as_u64().unwrap(),
            "{name} bytes"
        );
        // The slice is the one at data_offset + offset in the file.
        let start = (file.data_offset + t.offset) as usize;
        assert!(
            std::ptr::eq(t.data.as_ptr(), bytes[start..].as_ptr()),
            "{name}"
        );
    }
}

#[test]
fn smollm2_matches_the_reference_reader() {
    let path = TestModel::SmolLm2.path();
    let bytes = std::fs::read(&path).unwrap();
    let file = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    check_against_golden(&file, &bytes, &golden("smollm2-135m"));

    // Facts the engine relies on, spelled out.
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(file.get_u32("llama.block_count"), Some(30));
    assert_eq!(file.get_u32("llama.embedding_length"), Some(576));
    assert_eq!(file.get_u32("llama.attention.head_count"), Some(9));
    assert_eq!(file.get_u32("llama.attention.head_count_kv"), Some(3));
    assert_eq!(file.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(file.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(file.get_bool("tokenizer.ggml.add_bos_token"), Some(false));
    assert_eq!(
        file.get_array("tokenizer.ggml.tokens").map(<[_]>::len),
        Some(49152)
    );
    assert!(file
        .get_str("tokenizer.chat_template")
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(file.tensors.len(), 272);
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.ty, GgmlType::Q8_0);
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!((embd.row_len(), embd.n_rows()), (576, 49152));
    assert_eq!(embd.n_elements(), 576 * 49152);
    assert_eq!(embd.data.len(), 49152 * 576 / 32 * 34);
    // Tied output: no separate output matrix.
    assert!(file.tensor("output.weight").is_none());
    let count = |ty| file.tensors.iter().filter(|t| t.ty == ty).count();
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::F32),
            count(GgmlType::Q8_0)
        ),
        (210, 61, 1)
    );
}

#[test]
fn gemma3_matches_the_reference_reader() {
    let path = TestModel::Gemma3.path();
    let bytes = std::fs::read(&path).unwrap();
    let file = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    check_against_golden(&file, &bytes, &golden("gemma3-270m"));

    assert_eq!(file.architecture(), Some("gemma3"));
    assert_eq!(file.get_u32("gemma3.block_count"), Some(18));
    assert_eq!(file.get_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(file.get_bool("tokenizer.ggml.add_bos_token"), Some(true));
    let tokens = file.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 262144);
    assert_eq!(tokens[2].as_str(), Some("<bos>"));
    let scores = file.get_array("tokenizer.ggml.scores").unwrap();
    assert_eq!(scores.len(), 262144);
    assert!(scores.iter().all(|s| s.as_f32().is_some()));
    assert_eq!(file.tensors.len(), 236);
    let types: std::collections::BTreeSet<GgmlType> = file.tensors.iter().map(|t| t.ty).collect();
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        [
            GgmlType::F32,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K
        ]
    );
}
