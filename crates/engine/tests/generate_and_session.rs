//! The generation loop, sessions and load-time validation, on the random test llama
//! (fast) and on SmolLM2 end to end (tokenizer + engine + generator against llama.cpp).

mod common;

use std::cell::Cell;

use common::*;
use embodios_engine::generate::{Clock, Detokenize, Generator, StopReason};
use embodios_engine::sampler::{Sampler, SamplerConfig};
use embodios_engine::testmodel::{write_random_llama, RandomLlamaSpec};
use embodios_engine::{EngineError, LoadError, Model, ModelOptions, Sequential};
use embodios_gguf::{GgmlType, GgufFile, GgufWriter, OwnedValue};
use embodios_host::ThreadPool;
use embodios_tokenizer::Tokenizer;

fn smollm2_bytes() -> Vec<u8> {
    std::fs::read(smollm2_path()).expect("read SmolLM2")
}

fn random_llama(src: &[u8]) -> Vec<u8> {
    let src = GgufFile::parse(src).expect("parse SmolLM2");
    write_random_llama(&RandomLlamaSpec::default(), &src).expect("write random llama")
}

/// A clock that advances 1 ms per reading.
struct TickClock(Cell<u64>);

impl Clock for TickClock {
    fn now_us(&self) -> u64 {
        let t = self.0.get();
        self.0.set(t + 1000);
        t
    }
}

/// The real tokenizer, with one extra token treated as end-of-generation.
struct EogAt<'a>(&'a Tokenizer, u32);

impl Detokenize for EogAt<'_> {
    fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        self.0.token_bytes(id, out);
    }
    fn is_eog(&self, id: u32) -> bool {
        id == self.1 || self.0.is_eog(id)
    }
}

#[test]
fn smollm2_end_to_end_prints_what_llama_cpp_prints() {
    let bytes = smollm2_bytes();
    let file = GgufFile::parse(&bytes).expect("parse");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(256),
        },
    )
    .expect("load");
    let g = golden("smollm2_greedy.json");
    let case = &g["cases"][0];
    let prompt = tok.encode(case["prompt"].as_str().unwrap(), true, false);
    assert_eq!(
        prompt,
        ids(&case["prompt_ids"]),
        "tokenization differs from llama.cpp"
    );
    let want = ids(&case["greedy_ids"]);
    let pool = ThreadPool::new(2).expect("pool");
    let mut session = model.new_session();
    let mut gen = Generator::new(Sampler::new(SamplerConfig::greedy()), want.len());
    let mut streamed = String::new();
    let out = gen
        .run(
            &model,
            &mut session,
            &tok,
            &prompt,
            &pool,
            &TickClock(Cell::new(0)),
            &mut |t| {
                streamed.push_str(t);
                true
            },
        )
        .expect("generate");
    assert_eq!(out.tokens, want);
    assert_eq!(out.stop, StopReason::MaxTokens);
    assert_eq!(streamed, out.text);
    assert_eq!(out.text, case["greedy_text"].as_str().unwrap());
    // The last sampled token is not evaluated.
    assert_eq!(session.pos(), prompt.len() + want.len() - 1);
}

#[test]
fn generator_stops_on_eog_stop_strings_and_token_budget_with_stats() {
    let smol = smollm2_bytes();
    let tok = Tokenizer::from_gguf(&GgufFile::parse(&smol).unwrap()).expect("tokenizer");
    let bytes = random_llama(&smol);
    let file = GgufFile::parse(&bytes).expect("parse");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(128),
        },
    )
    .expect("load");
    let g = golden("random_llama_greedy.json");
    let case = &g["cases"][0];
    let prompt = ids(&case["prompt_ids"]);
    let want = ids(&case["greedy_ids"]);
    let clock = TickClock(Cell::new(0));
    let greedy = || Generator::new(Sampler::new(SamplerConfig::greedy()), 32);

    // Budget: exactly llama.cpp's greedy tokens, with timings from the clock.
    let mut session = model.new_session();
    let out = greedy()
        .run(
            &model,
            &mut session,
            &tok,
            &prompt,
            &Sequential,
            &clock,
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(out.tokens, want);
    assert_eq!(out.stats.prompt_tokens, prompt.len());
    assert_eq!(out.stats.generated_tokens, 32);
    assert_eq!(out.stats.token_latencies_us.len(), 31);
    assert!(out.stats.ttft_us > 0 && out.stats.decode_us > 0);
    assert!(out.stats.decode_tok_per_s() > 0.0 && out.stats.prefill_tok_per_s() > 0.0);
    let full_text = out.text.clone();

    // End of generation at the 6th token: five tokens of text, the sixth not streamed.
    let mut session = model.new_session();
    let out = greedy()
        .run(
            &model,
            &mut session,
            &EogAt(&tok, want[5]),
            &prompt,
            &Sequential,
            &clock,
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(out.stop, StopReason::EndOfGeneration(want[5]));
    assert_eq!(out.tokens, want[..6]);
    let five = String::from_utf8_lossy(&tok.detokenize(&want[..5], false, false)).into_owned();
    assert_eq!(out.text, five);

    // A stop string from the middle of the text: everything before it, nothing after.
    let cut = full_text
        .char_indices()
        .nth(full_text.chars().count() / 2)
        .unwrap()
        .0;
    let stop: String = full_text[cut..].chars().take(6).collect();
    let expected_text = &full_text[..full_text.find(&stop).unwrap()];
    let mut gen = greedy();
    gen.stop = vec!["never appears \u{1}".into(), stop.clone()];
    let mut streamed = String::new();
    let mut session = model.new_session();
    let out = gen
        .run(
            &model,
            &mut session,
            &tok,
            &prompt,
            &Sequential,
            &clock,
            &mut |t| {
                streamed.push_str(t);
                true
            },
        )
        .unwrap();
    assert_eq!(out.stop, StopReason::StopString(1), "stop {stop:?}");
    assert_eq!(out.text, expected_text);
    assert_eq!(streamed, expected_text);

    // Cancelling from the callback.
    let mut session = model.new_session();
    let out = greedy()
        .run(
            &model,
            &mut session,
            &tok,
            &prompt,
            &Sequential,
            &clock,
            &mut |_| false,
        )
        .unwrap();
    assert_eq!(out.stop, StopReason::Cancelled);
}

#[test]
fn sessions_keep_context_across_calls_and_report_overflow() {
    let smol = smollm2_bytes();
    let bytes = random_llama(&smol);
    let file = GgufFile::parse(&bytes).expect("parse");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(8),
        },
    )
    .expect("load");
    assert_eq!(model.context_len(), 8);
    let mut s = model.new_session();
    let first = model
        .forward(&mut s, &[10, 20, 30], &Sequential)
        .unwrap()
        .to_vec();
    assert_eq!(s.pos(), 3);
    let next = model.forward(&mut s, &[40], &Sequential).unwrap().to_vec();
    assert_eq!(s.pos(), 4);
    assert_eq!(s.tokens(), &[10, 20, 30, 40]);
    assert_ne!(first, next);

    // Reset gives the same logits again.
    s.reset();
    assert_eq!(s.pos(), 0);
    assert_eq!(
        model.forward(&mut s, &[10, 20, 30], &Sequential).unwrap(),
        &first[..]
    );

    // Overflow and bad tokens are errors that leave the session as it was.
    let err = model
        .forward(&mut s, &[1, 2, 3, 4, 5, 6], &Sequential)
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::ContextOverflow {
            pos: 3,
            requested: 6,
            capacity: 8
        }
    );
    assert!(err.to_string().contains("context overflow"));
    let vocab = model.config.vocab_size;
    assert_eq!(
        model
            .forward(&mut s, &[vocab as u32], &Sequential)
            .unwrap_err(),
        EngineError::TokenOutOfRange {
            token: vocab as u32,
            vocab_size: vocab
        }
    );
    assert_eq!(
        model.forward(&mut s, &[], &Sequential).unwrap_err(),
        EngineError::EmptyInput
    );
    assert_eq!(s.pos(), 3);

    // Threads do not change results.
    let pool = ThreadPool::new(2).unwrap();
    let mut t = model.new_session();
    assert_eq!(
        model.forward(&mut t, &[10, 20, 30], &pool).unwrap(),
        &first[..]
    );
}

/// Rewrites a GGUF file: `meta` may replace a value (`Some(Some(v))`) or drop the key
/// (`Some(None)`); `tensor` may replace or (returning `None`) drop a tensor.
fn rewrite(
    src: &GgufFile<'_>,
    meta: impl Fn(&str) -> Option<Option<OwnedValue>>,
    tensor: impl Fn(&str, &[u64], GgmlType, &[u8]) -> Option<(Vec<u64>, GgmlType, Vec<u8>)>,
) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in &src.metadata {
        let v = match meta(k) {
            Some(replaced) => replaced,
            None => v.to_owned_value(),
        };
        if let Some(v) = v {
            w.add_metadata(k, v).unwrap();
        }
    }
    for t in &src.tensors {
        if let Some((dims, ty, data)) = tensor(t.name, &t.dims, t.ty, t.data) {
            w.add_tensor(t.name, &dims, ty, data).unwrap();
        }
    }
    w.finish()
}

fn keep(_: &str, d: &[u64], ty: GgmlType, data: &[u8]) -> Option<(Vec<u64>, GgmlType, Vec<u8>)> {
    Some((d.to_vec(), ty, data.to_vec()))
}

fn load(b: &[u8]) -> Result<embodios_engine::Config, LoadError> {
    Model::load(&GgufFile::parse(b).unwrap(), ModelOptions::default()).map(|m| m.config)
}

#[test]
fn loading_rejects_bad_models_with_specific_errors() {
    let smol = smollm2_bytes();
    let bytes = random_llama(&smol);
    let file = GgufFile::parse(&bytes).expect("parse");
    assert!(load(&rewrite(&file, |_| None, keep)).is_ok());

    let other = rewrite(
        &file,
        |k| (k == "general.architecture").then(|| Some(OwnedValue::str("mamba"))),
        keep,
    );
    let err = load(&other).unwrap_err();
    assert_eq!(err, LoadError::UnsupportedArchitecture("mamba".into()));
    assert!(err.to_string().contains("`mamba` is not supported"));

    let no_ctx = rewrite(
        &file,
        |k| (k == "llama.context_length").then_some(None),
        keep,
    );
    assert_eq!(
        load(&no_ctx).unwrap_err(),
        LoadError::MissingKey("llama.context_length".into())
    );

    let bad_key = rewrite(
        &file,
        |k| (k == "llama.block_count").then(|| Some(OwnedValue::str("two"))),
        keep,
    );
    assert!(
        matches!(load(&bad_key).unwrap_err(), LoadError::BadKey { key, .. } if key == "llama.block_count")
    );

    let missing = rewrite(
        &file,
        |_| None,
        |n, d, ty, data| (n != "blk.1.ffn_up.weight").then(|| (d.to_vec(), ty, data.to_vec())),
    );
    assert_eq!(
        load(&missing).unwrap_err(),
        LoadError::MissingTensor("blk.1.ffn_up.weight".into())
    );

    // Half the rows of ffn_gate: a shape error naming the tensor and both shapes.
    let short = rewrite(
        &file,
        |_| None,
        |n, d, ty, data| {
            if n == "blk.0.ffn_gate.weight" {
                Some((vec![d[0], d[1] / 2], ty, data[..data.len() / 2].to_vec()))
            } else {
                Some((d.to_vec(), ty, data.to_vec()))
            }
        },
    );
    assert_eq!(
        load(&short).unwrap_err(),
        LoadError::TensorShape {
            name: "blk.0.ffn_gate.weight".into(),
            expected: vec![64, 128],
            found: vec![64, 64]
        }
    );

    // A type the engine cannot compute with needs rows of whole 256-element blocks:
    // use a random model 256 wide.
    let spec = RandomLlamaSpec {
        n_embd: 256,
        ..RandomLlamaSpec::default()
    };
    let wide = write_random_llama(&spec, &GgufFile::parse(&smol).unwrap()).unwrap();
    let wide_file = GgufFile::parse(&wide).unwrap();
    let iq = rewrite(
        &wide_file,
        |_| None,
        |n, d, ty, data| {
            if n == "blk.1.attn_q.weight" {
                let bytes = GgmlType::IQ2_XXS.bytes_for(d.iter().product()).unwrap() as usize;
                Some((d.to_vec(), GgmlType::IQ2_XXS, vec![0; bytes]))
            } else {
                Some((d.to_vec(), ty, data.to_vec()))
            }
        },
    );
    let err = load(&iq).unwrap_err();
    assert_eq!(
        err,
        LoadError::UnsupportedTensorType {
            name: "blk.1.attn_q.weight".into(),
            ty: GgmlType::IQ2_XXS
        }
    );
    assert_eq!(
        err.to_string(),
        "tensor `blk.1.attn_q.weight` has type IQ2_XXS, which is not supported"
    );
}

#[test]
fn threads_give_identical_results_for_long_contexts() {
    // Long enough (4 heads x 300 positions) for attention to be spread over threads too.
    let smol = smollm2_bytes();
    let bytes = random_llama(&smol);
    let file = GgufFile::parse(&bytes).expect("parse");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(512),
        },
    )
    .expect("load");
    let prompt: Vec<u32> = (0..300u32).map(|i| (i * 7919) % 49152).collect();
    let pool = ThreadPool::new(2).unwrap();
    let mut a = model.new_session();
    let mut b = model.new_session();
    let la = model
        .forward(&mut a, &prompt, &Sequential)
        .unwrap()
        .to_vec();
    let lb = model.forward(&mut b, &prompt, &pool).unwrap().to_vec();
    assert_eq!(la, lb);
    for t in [5u32, 77, 1234] {
        let la = model.forward(&mut a, &[t], &Sequential).unwrap().to_vec();
        let lb = model.forward(&mut b, &[t], &pool).unwrap().to_vec();
        assert_eq!(la, lb);
    }
    assert_eq!(a.pos(), 303);
}

#[test]
fn reuse_prefix_keeps_the_shared_cache_but_reevaluates_the_last_token() {
    let smol = smollm2_bytes();
    let bytes = random_llama(&smol);
    let file = GgufFile::parse(&bytes).expect("parse");
    let model = Model::load(&file, ModelOptions::default()).expect("load");
    let mut s = model.new_session();
    model.forward(&mut s, &[1, 2, 3, 4], &Sequential).unwrap();
    // A new prompt sharing the first two tokens keeps them.
    assert_eq!(s.reuse_prefix(&[1, 2, 9, 9]), 2);
    assert_eq!(s.tokens(), &[1, 2]);
    model.forward(&mut s, &[9, 9], &Sequential).unwrap();
    // The same prompt again: everything but the last token is reused.
    assert_eq!(s.reuse_prefix(&[1, 2, 9, 9]), 3);
    assert_eq!(s.tokens(), &[1, 2, 9]);
    // Nothing shared, and an empty prompt, keep nothing.
    assert_eq!(s.reuse_prefix(&[7]), 0);
    assert_eq!(s.pos(), 0);
    assert_eq!(s.reuse_prefix(&[]), 0);
}
