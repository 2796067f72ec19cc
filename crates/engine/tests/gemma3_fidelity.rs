//! Fidelity against llama.cpp on Gemma 3 270M Q4_K_M (gemma3 architecture: scaled
//! embeddings, pre/post norms, Q/K norms, GELU-gated feed-forward, local/global
//! attention layers with two RoPE bases, 262k SentencePiece vocabulary): greedy
//! continuations of six prompts must match token for token for 32 tokens (a divergence
//! is accepted only where llama.cpp's own top-2 margin is a near tie), and last-position
//! logits must agree within a tolerance.
//!
//! Goldens: `scripts/golden/model_goldens.py gemma3` (llama-cpp-python, 2 threads,
//! n_ctx 256, f16 KV cache; the top 64 logits and every 1024th logit are stored, as the
//! whole vector is 1 MiB).

mod common;

use common::*;
use embodios_engine::{Model, ModelOptions};
use embodios_gguf::GgufFile;
use embodios_host::ThreadPool;
use embodios_tokenizer::Tokenizer;

/// Max |logit difference| accepted at the last prompt position (see the report printed
/// by the test for the measured value).
const LOGIT_TOLERANCE: f32 = 1e-3;

#[test]
fn gemma3_greedy_matches_llama_cpp() {
    let bytes = std::fs::read(gemma3_path()).expect("read model");
    let file = GgufFile::parse(&bytes).expect("parse model");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(256),
        },
    )
    .expect("load model");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let golden = golden("gemma3_270m_greedy.json");
    let pool = ThreadPool::new(2).expect("thread pool");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5, "the golden needs at least 5 prompts");
    for case in cases {
        // The prompt ids come from llama.cpp; our tokenizer must agree.
        let text = case["prompt"].as_str().expect("prompt");
        assert_eq!(
            tok.encode(text, true, false),
            ids(&case["prompt_ids"]),
            "tokenization of {text:?} differs from llama.cpp"
        );
    }
    let (failures, _) = check_cases(&model, cases, &pool, LOGIT_TOLERANCE);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A two-turn Gemma chat in separate calls (BOS + first turn as one batch, the reply
/// token by token, then the second turn's batch at a non-zero position), with the turn
/// text rendered by the engine's template for the file (which has none of its own, so
/// the Gemma turn format is chosen from the architecture).
#[test]
fn gemma3_two_turn_chat_matches_llama_cpp() {
    use embodios_engine::{ChatTemplate, Message};
    let bytes = std::fs::read(gemma3_path()).expect("read model");
    let file = GgufFile::parse(&bytes).expect("parse model");
    let template = ChatTemplate::from_gguf(&file).expect("chat template");
    assert_eq!(template, ChatTemplate::Gemma);
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(256),
        },
    )
    .expect("load model");
    let golden = golden("gemma3_chat.json");
    let turns = golden["turns"].as_array().expect("turns");
    let first = template
        .render(&[Message::user("What is the capital of France?")], true)
        .expect("render");
    assert_eq!(first, turns[0]["text"].as_str().unwrap());
    let pool = ThreadPool::new(2).expect("thread pool");
    check_chat_turns(&model, &tok, turns, &pool, true);
}
