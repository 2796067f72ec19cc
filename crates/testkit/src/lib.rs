//! Shared helpers for EMBODIOS's tests (std, never linked into the engine): where the
//! fetched models are, and a small deterministic random source for test data.

use std::path::PathBuf;

/// A model that `cargo xtask fetch-model` provides and the tests use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestModel {
    /// SmolLM2-135M-Instruct, Q4_1 (the default model).
    SmolLm2,
    /// Gemma 3 270M, Q4_K_M.
    Gemma3,
}

impl TestModel {
    /// The variable `cargo xtask test` sets to the model's path.
    pub fn env_var(self) -> &'static str {
        match self {
            TestModel::SmolLm2 => "EMBODIOS_MODEL_SMOLLM2_135M",
            TestModel::Gemma3 => "EMBODIOS_MODEL_GEMMA3_270M",
        }
    }

    /// The file name in the model cache.
    pub fn file_name(self) -> &'static str {
        match self {
            TestModel::SmolLm2 => "SmolLM2-135M-Instruct.Q4_1.gguf",
            TestModel::Gemma3 => "gemma-3-270m-q4_k_m.gguf",
        }
    }

    /// The command that fetches it.
    pub fn fetch_command(self) -> &'static str {
        match self {
            TestModel::SmolLm2 => "cargo xtask fetch-model",
            TestModel::Gemma3 => "cargo xtask fetch-model gemma3-270m",
        }
    }

    /// The model's path: `$<env_var>`, else `$EMBODIOS_CACHE/models/<file>`, else
    /// `~/.cache/embodios/models/<file>`. Panics, saying how to fetch it, when none of
    /// them exists: a test that needs a model fails without it, never skips.
    pub fn path(self) -> PathBuf {
        let mut candidates = Vec::new();
        if let Some(p) = std::env::var_os(self.env_var()) {
            candidates.push(PathBuf::from(p));
        }
        if let Some(c) = std::env::var_os("EMBODIOS_CACHE") {
            candidates.push(PathBuf::from(c).join("models").join(self.file_name()));
        }
        if let Some(h) = std::env::var_os("HOME") {
            candidates.push(
                PathBuf::from(h)
                    .join(".cache/embodios/models")
                    .join(self.file_name()),
            );
        }
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "model not found: run `{}` (looked in {candidates:?})",
                    self.fetch_command()
                )
            })
    }

    /// The whole file.
    pub fn bytes(self) -> Vec<u8> {
        let path = self.path();
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }
}

/// xorshift64*: deterministic test data without a `rand` dependency.
#[derive(Clone, Debug)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let x = a.unit();
            assert_eq!(x, b.unit());
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn missing_model_panics_with_the_fetch_command() {
        std::env::set_var("EMBODIOS_MODEL_GEMMA3_270M", "/nonexistent/x.gguf");
        std::env::set_var("EMBODIOS_CACHE", "/nonexistent");
        std::env::set_var("HOME", "/nonexistent");
        let err = std::panic::catch_unwind(|| TestModel::Gemma3.path()).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.starts_with("model not found: run `cargo xtask fetch-model gemma3-270m`"));
    }
}
