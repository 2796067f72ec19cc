//! Fidelity against llama.cpp on SmolLM2-135M-Instruct Q4_1: greedy continuations must
//! match token for token and last-position logits must agree within a tolerance.
//!
//! Goldens: `scripts/golden/model_goldens.py smollm2` (llama-cpp-python, 2 threads,
//! n_ctx 256, flash attention off, f16 KV cache).

mod common;

use common::*;
use embodios_engine::{Model, ModelOptions};
use embodios_gguf::GgufFile;
use embodios_host::ThreadPool;

/// Max |logit difference| accepted at the last prompt position. Measured: 0 (the
/// engine reproduces llama.cpp's AVX-512 CPU build bit for bit, and the goldens store
/// f32 values exactly). The tolerance is not 0 only so that a one-ulp change in a
/// libm function does not fail the suite; anything real shows up far above it.
const LOGIT_TOLERANCE: f32 = 1e-3;

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    let bytes = std::fs::read(smollm2_path()).expect("read model");
    let file = GgufFile::parse(&bytes).expect("parse model");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(256),
        },
    )
    .expect("load model");
    let golden = golden("smollm2_greedy.json");
    let pool = ThreadPool::new(2).expect("thread pool");
    let cases = golden["cases"].as_array().expect("cases");
    let (failures, _) = check_cases(&model, cases, &pool, LOGIT_TOLERANCE);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Two chat turns in separate calls (prompt batch, token-by-token reply, then the next
/// turn's batch at a non-zero position), as `embodios chat` drives the engine.
#[test]
fn smollm2_two_turn_chat_matches_llama_cpp() {
    let bytes = std::fs::read(smollm2_path()).expect("read model");
    let file = GgufFile::parse(&bytes).expect("parse model");
    let tok = embodios_tokenizer::Tokenizer::from_gguf(&file).expect("tokenizer");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(256),
        },
    )
    .expect("load model");
    let golden = golden("smollm2_chat.json");
    let pool = ThreadPool::new(2).expect("thread pool");
    let turns = golden["turns"].as_array().expect("turns");
    check_chat_turns(&model, &tok, turns, &pool, false);
}
