//! Shared test helpers: the golden-file reader, model lookup and a small deterministic PRNG.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

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

/// Path of a reference model: the env variable, else `$EMBODIOS_CACHE/models/<file>`,
/// else `~/.cache/embodios/models/<file>`. Panics when none exists.
pub fn model_path(key: &str) -> PathBuf {
    let (env, file, fetch) = match key {
        "smollm2" => (
            "EMBODIOS_MODEL_SMOLLM2_135M",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "",
        ),
        "gemma3" => (
            "EMBODIOS_MODEL_GEMMA3_270M",
            "gemma-3-270m-q4_k_m.gguf",
            " gemma3-270m",
        ),
        other => panic!("unknown model key {other}"),
    };
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os(env) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(c) = std::env::var_os("EMBODIOS_CACHE") {
        candidates.push(PathBuf::from(c).join("models").join(file));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cache/embodios/models").join(file));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("model not found: run `cargo xtask fetch-model{fetch}`"))
}

/// xorshift64* — deterministic test data without a `rand` dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Approximately normal (sum of four uniforms, scaled to unit variance).
    pub fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
        s * 3.0f32.sqrt()
    }

    pub fn vec_normal(&mut self, n: usize, sigma: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * sigma).collect()
    }
}

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
