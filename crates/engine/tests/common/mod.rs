//! Shared helpers of the engine's integration tests: locating models, reading goldens,
//! and comparing a greedy continuation with llama.cpp's.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use embodios_engine::parallel::Parallel;
use embodios_engine::sampler::argmax;
use embodios_engine::{Model, Session};
use embodios_testkit::TestModel;
use embodios_tokenizer::Tokenizer;
use serde_json::Value;

/// Divergences from llama.cpp's greedy choice are tolerated only where llama.cpp's own
/// top-1/top-2 logit margin was below this (a near tie that rounding can flip).
pub const NEAR_TIE_MARGIN: f32 = 0.05;

pub fn smollm2_path() -> PathBuf {
    TestModel::SmolLm2.path()
}

pub fn gemma3_path() -> PathBuf {
    TestModel::Gemma3.path()
}

pub fn golden(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("cannot read golden {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad golden {}: {e}", p.display()))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array of floats")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

/// The full logit vector of a case, when the golden stores it.
pub fn full_logits(case: &Value) -> Option<Vec<f32>> {
    let b64 = case.get("last_logits_f32_b64")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 logits");
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Result of comparing one prompt with its golden.
#[derive(Debug, Default)]
pub struct CaseReport {
    pub prompt: String,
    /// Max |ours - llama.cpp| over the stored top-64 logits of the last prompt position.
    pub top_err: f32,
    /// Max |ours - llama.cpp| over the whole vector (when stored).
    pub full_err: Option<f32>,
    /// Max |ours - llama.cpp| over every `stride`-th logit (when stored).
    pub sampled_err: Option<f32>,
    /// Greedy tokens that matched before the end or an accepted near-tie divergence.
    pub matched: usize,
    pub expected: usize,
    /// Step, llama.cpp's token, ours and llama.cpp's margin, at an accepted divergence.
    pub near_tie: Option<(usize, u32, u32, f32)>,
    /// A divergence where llama.cpp's margin was not a near tie (a failure).
    pub hard_divergence: Option<(usize, u32, u32, f32)>,
    /// Max |ours - llama.cpp| over the stored top logits before each greedy step (when
    /// the golden stores them), and the first step where it exceeded 1e-3.
    pub step_err: Option<f32>,
    pub first_step_off: Option<(usize, f32)>,
}

/// Runs one golden case: prefill, logit comparison, then greedy decoding against
/// llama.cpp's tokens.
pub fn run_case(
    model: &Model<'_>,
    session: &mut Session,
    case: &Value,
    par: &dyn Parallel,
) -> CaseReport {
    session.reset();
    let prompt = ids(&case["prompt_ids"]);
    let mut rep = CaseReport {
        prompt: case["prompt"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(48)
            .collect(),
        ..CaseReport::default()
    };
    let logits = model
        .forward(session, &prompt, par)
        .expect("prefill")
        .to_vec();
    for pair in case["last_logits_top"].as_array().expect("top logits") {
        let id = pair[0].as_u64().unwrap() as usize;
        let want = pair[1].as_f64().unwrap() as f32;
        rep.top_err = rep.top_err.max((logits[id] - want).abs());
    }
    if let Some(full) = full_logits(case) {
        assert_eq!(
            full.len(),
            logits.len(),
            "vocab size differs from the golden"
        );
        rep.full_err = Some(
            full.iter()
                .zip(&logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max),
        );
    }
    if let (Some(stride), Some(sampled)) = (
        case.get("last_logits_stride").and_then(Value::as_u64),
        case.get("last_logits_sampled"),
    ) {
        let sampled = floats(sampled);
        rep.sampled_err = Some(
            sampled
                .iter()
                .enumerate()
                .map(|(i, &w)| (logits[i * stride as usize] - w).abs())
                .fold(0.0f32, f32::max),
        );
    }
    let want = ids(&case["greedy_ids"]);
    let margins = floats(&case["greedy_margins"]);
    rep.expected = want.len();
    let mut logits = logits;
    let step_tops = case.get("greedy_top").and_then(Value::as_array);
    for (step, (&w, &m)) in want.iter().zip(&margins).enumerate() {
        if let Some(top) = step_tops.and_then(|t| t.get(step)) {
            let err = top
                .as_array()
                .expect("top logits of a step")
                .iter()
                .map(|pair| {
                    let id = pair[0].as_u64().expect("id") as usize;
                    (logits[id] - pair[1].as_f64().expect("logit") as f32).abs()
                })
                .fold(0.0f32, f32::max);
            rep.step_err = Some(rep.step_err.unwrap_or(0.0).max(err));
            if err > 1e-3 && rep.first_step_off.is_none() {
                rep.first_step_off = Some((step, err));
            }
        }
        let ours = argmax(&logits).expect("logits") as u32;
        if ours != w {
            if m < NEAR_TIE_MARGIN {
                rep.near_tie = Some((step, w, ours, m));
            } else {
                rep.hard_divergence = Some((step, w, ours, m));
            }
            break;
        }
        rep.matched += 1;
        if step + 1 < want.len() {
            logits = model
                .forward(session, &[ours], par)
                .expect("decode")
                .to_vec();
        }
    }
    rep
}

/// Runs every golden case on one session, printing a line per prompt, and returns the
/// failures (hard greedy divergences and logit errors above `tolerance`) and the worst
/// logit error seen.
pub fn check_cases(
    model: &Model<'_>,
    cases: &[Value],
    par: &dyn Parallel,
    tolerance: f32,
) -> (Vec<String>, f32) {
    let mut session = model.new_session();
    let mut failures = Vec::new();
    let mut worst = 0.0f32;
    for case in cases {
        let rep = run_case(model, &mut session, case, par);
        println!(
            "{:?}: matched {}/{} greedy tokens, top-64 logit err {:.6}, full err {:?}, sampled err {:?}",
            rep.prompt, rep.matched, rep.expected, rep.top_err, rep.full_err, rep.sampled_err
        );
        if let Some(e) = rep.step_err {
            println!(
                "  per-step top logits: max err {e:.6}, first step above 1e-3: {:?}",
                rep.first_step_off
            );
        }
        if let Some((step, want, got, m)) = rep.near_tie {
            println!(
                "  near-tie divergence accepted at step {step}: llama.cpp {want}, ours {got}, \
                 llama.cpp margin {m:.4} < {NEAR_TIE_MARGIN}"
            );
        }
        if let Some((step, want, got, m)) = rep.hard_divergence {
            failures.push(format!(
                "{:?}: step {step}: llama.cpp chose {want}, we chose {got} (llama.cpp margin {m:.4})",
                rep.prompt
            ));
        }
        let err = [rep.full_err, rep.sampled_err]
            .into_iter()
            .flatten()
            .fold(rep.top_err, f32::max);
        worst = worst.max(err).max(rep.step_err.unwrap_or(0.0));
        if err > tolerance {
            failures.push(format!(
                "{:?}: last-position logit error {err} > {tolerance}",
                rep.prompt
            ));
        }
        if let Some(e) = rep.step_err.filter(|&e| e > tolerance) {
            failures.push(format!(
                "{:?}: logit error {e} > {tolerance} before a greedy step (first at {:?})",
                rep.prompt, rep.first_step_off
            ));
        }
    }
    println!("max logit error over all prompts: {worst:.6} (tolerance {tolerance})");
    (failures, worst)
}

/// Replays a golden multi-turn chat in separate calls (each turn's prompt as one batch
/// at the running position, then the reply token by token), checking our tokenization
/// of each turn and every greedy token against llama.cpp's. `bos_first` adds BOS to the
/// first turn's text only. Stops at an accepted near-tie divergence.
pub fn check_chat_turns(
    model: &Model<'_>,
    tok: &Tokenizer,
    turns: &[Value],
    par: &dyn Parallel,
    bos_first: bool,
) {
    let mut session = model.new_session();
    for (t, turn) in turns.iter().enumerate() {
        let prompt = ids(&turn["ids"]);
        assert_eq!(
            tok.encode(turn["text"].as_str().unwrap(), bos_first && t == 0, true),
            prompt,
            "turn {t}: tokenization differs from llama.cpp"
        );
        let want = ids(&turn["greedy_ids"]);
        let margins = floats(&turn["greedy_margins"]);
        let mut logits = model
            .forward(&mut session, &prompt, par)
            .expect("prompt")
            .to_vec();
        for (step, (&w, &m)) in want.iter().zip(&margins).enumerate() {
            let ours = argmax(&logits).expect("logits") as u32;
            if ours != w {
                assert!(
                    m < NEAR_TIE_MARGIN,
                    "turn {t} step {step}: llama.cpp {w}, ours {ours}, margin {m}"
                );
                println!("turn {t}: near-tie divergence at step {step} accepted (margin {m})");
                return;
            }
            logits = model
                .forward(&mut session, &[ours], par)
                .expect("decode")
                .to_vec();
        }
        println!(
            "turn {t}: matched {} tokens: {:?}",
            want.len(),
            turn["greedy_text"].as_str().unwrap_or("")
        );
    }
}
