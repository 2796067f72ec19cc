//! Fidelity against llama.cpp on tiny random-weight models of the Gemma 3, Qwen2 and
//! Phi-2 families (and a llama declaring a sliding window, as Mistral files could) that the test builds in memory (`write_random_model`, deterministic):
//! last-position logits (top 64 and a strided sample) and 32-token greedy continuations
//! of four prompts, one of about 300 tokens (past Gemma's 64-token test window and one
//! 256-cell block of llama.cpp's KV cache), with 2 threads and sequentially.
//!
//! Goldens: `scripts/golden/model_goldens.py random-<arch> FILE` run on the bytes that
//! `cargo run -p embodios-engine --example write_random_llama -- --arch <arch> FILE` writes.

mod common;

use common::*;
use embodios_engine::testmodel::{write_random_model, RandomModelSpec};
use embodios_engine::{Family, Model, ModelOptions, Sequential};
use embodios_gguf::GgufFile;
use embodios_host::ThreadPool;

/// Max |logit difference| accepted at the last prompt position (measured: 0 for every
/// family; not 0 only so that a one-ulp libm change does not fail the suite).
const LOGIT_TOLERANCE: f32 = 1e-3;

fn build_spec(spec: &RandomModelSpec) -> Vec<u8> {
    let src_path = if spec.family == Family::Gemma3 {
        gemma3_path()
    } else {
        smollm2_path()
    };
    let src = std::fs::read(src_path).expect("read the tokenizer source model");
    let src = GgufFile::parse(&src).expect("parse the tokenizer source model");
    write_random_model(spec, &src).expect("write random model")
}

fn build(family: Family) -> Vec<u8> {
    build_spec(&RandomModelSpec::for_family(family))
}

fn check(family: Family) {
    check_spec(
        &RandomModelSpec::for_family(family),
        &format!("random_{}_greedy.json", family.arch()),
    );
}

fn check_spec(spec: &RandomModelSpec, golden_name: &str) {
    let family = spec.family;
    let bytes = build_spec(spec);
    assert!(
        bytes == build_spec(spec),
        "two builds with the same seed differ"
    );
    let golden = golden(golden_name);
    assert_eq!(
        golden["model_bytes"].as_u64(),
        Some(bytes.len() as u64),
        "the golden was recorded on a different random model; rerun the golden script"
    );
    let file = GgufFile::parse(&bytes).expect("parse random model");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(512),
        },
    )
    .expect("load random model");
    assert_eq!(model.config.family, family);
    let pool = ThreadPool::new(2).expect("thread pool");
    let mut session = model.new_session();
    let mut failures = Vec::new();
    for case in golden["cases"].as_array().expect("cases") {
        for (label, par) in [
            ("2 threads", &pool as &dyn embodios_engine::Parallel),
            ("sequential", &Sequential),
        ] {
            let rep = run_case(&model, &mut session, case, par);
            println!(
                "{} [{label}] {:?}: matched {}/{} greedy tokens, top-64 logit err {:.6}, \
                 sampled err {:?}",
                family.arch(),
                rep.prompt,
                rep.matched,
                rep.expected,
                rep.top_err,
                rep.sampled_err
            );
            if let Some((step, want, got, m)) = rep.near_tie {
                println!(
                    "  near-tie divergence accepted at step {step}: llama.cpp {want}, ours {got}, \
                     margin {m:.4}"
                );
            }
            if let Some((step, want, got, m)) = rep.hard_divergence {
                failures.push(format!(
                    "[{label}] {:?}: step {step}: llama.cpp chose {want}, we chose {got} (margin {m:.4})",
                    rep.prompt
                ));
            }
            let err = rep.sampled_err.unwrap_or(0.0).max(rep.top_err);
            if err > LOGIT_TOLERANCE {
                failures.push(format!(
                    "[{label}] {:?}: logit error {err} > {LOGIT_TOLERANCE}",
                    rep.prompt
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn random_gemma3_matches_llama_cpp() {
    check(Family::Gemma3);
}

#[test]
fn random_qwen2_matches_llama_cpp() {
    check(Family::Qwen2);
}

#[test]
fn random_phi2_matches_llama_cpp() {
    check(Family::Phi2);
}

/// A llama-architecture file declaring a 64-token sliding window (as a Mistral file
/// could): llama.cpp's llama graph ignores the key, so the engine must too, including
/// on the prompt that reaches past the window.
#[test]
fn random_mistral_declared_window_matches_llama_cpp() {
    check_spec(
        &RandomModelSpec::mistral_like(),
        "random_mistral_greedy.json",
    );
}

/// The long prompt reaches past the random Gemma's 64-token window, so the window must
/// matter: without it the logits move away from llama.cpp's.
#[test]
fn random_gemma3_window_is_exercised() {
    let bytes = build(Family::Gemma3);
    let file = GgufFile::parse(&bytes).expect("parse random model");
    let mut model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(512),
        },
    )
    .expect("load random model");
    assert_eq!(model.config.sliding_window, 64);
    assert_eq!(
        model.config.swa_layers,
        vec![true, true, true, true, true, false],
        "every sixth layer is global"
    );
    model.config.sliding_window = 0;
    let golden = golden("random_gemma3_greedy.json");
    let long = golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["prompt_ids"].as_array().map_or(0, Vec::len) > 128)
        .expect("a long prompt");
    let mut session = model.new_session();
    let rep = run_case(&model, &mut session, long, &Sequential);
    assert!(
        rep.top_err > 1e-3,
        "ignoring the window changed nothing (err {})",
        rep.top_err
    );
}
