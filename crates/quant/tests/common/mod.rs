//! Shared test helpers: the golden-file reader, model lookup and a small deterministic PRNG.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use embodios_testkit::TestModel;

use embodios_quant::GgmlType;

/// One `case` record of a golden file: its `key=value` pairs and following fields.
#[derive(Debug)]
pub struct Case {
    pub kv: HashMap<String, String>,
    pub fields: Vec<(String, String)>,
}

impl Case {
    pub fn get(&self, key: &str) -> &str {
        self.kv
            .get(key)
            .unwrap_or_else(|| panic!("case lacks {key}: {:?}", self.kv))
    }

    pub fn num(&self, key: &str) -> usize {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number: {:?}", self.kv))
    }

    pub fn ty(&self, key: &str) -> GgmlType {
        parse_type(self.get(key))
    }

    pub fn field(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("case {:?} lacks field {name}", self.kv))
    }

    pub fn bytes(&self, name: &str) -> Vec<u8> {
        hex_bytes(self.field(name))
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        self.field(name)
            .split_ascii_whitespace()
            .map(|h| f32::from_bits(u32::from_str_radix(h, 16).expect("f32 hex")))
            .collect()
    }

    /// Short description for assertion messages.
    pub fn label(&self) -> String {
        let mut kv: Vec<_> = self.kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
        kv.sort();
        kv.join(" ")
    }
}

pub fn hex_bytes(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn parse_type(name: &str) -> GgmlType {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

/// Reads `tests/golden/<name>`; fails if the file is missing or has no cases.
pub fn golden(name: &str) -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden {}: {e}", path.display()));
    let mut cases: Vec<Case> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
        if head == "case" {
            let kv = rest
                .split_ascii_whitespace()
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("key=value");
                    (k.to_string(), v.to_string())
                })
                .collect();
            cases.push(Case {
                kv,
                fields: Vec::new(),
            });
        } else {
            let case = cases.last_mut().expect("field before first case");
            case.fields.push((head.to_string(), rest.to_string()));
        }
    }
    assert!(!cases.is_empty(), "golden {name} has no cases");
    cases
}

/// Path of a reference model by the key the goldens use (`smollm2`, `gemma3`).
pub fn model_path(key: &str) -> PathBuf {
    match key {
        "smollm2" => TestModel::SmolLm2.path(),
        "gemma3" => TestModel::Gemma3.path(),
        other => panic!("unknown model key {other}"),
    }
}

#[allow(unused_imports)] // not every test binary draws random data
pub use embodios_testkit::Rng;

/// Bitwise comparison of two f32 slices with a useful failure message. NaNs compare by
/// bits too.
pub fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i}: got {g:e} ({:08x}), want {w:e} ({:08x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// The legacy block formats (the ones with panel kernels for every batch).
pub const LEGACY: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// Whether this CPU has what the AVX2 kernel set needs (AVX2, FMA, F16C), by std's own
/// detection.
pub fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has what the AVX-512 kernels need (F, BW, VL, VNNI).
pub fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
