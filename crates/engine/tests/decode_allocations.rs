//! Decoding a token must not touch the heap once a session is warm: a counting global
//! allocator wraps the system one and the test asserts that `Model::forward` on one
//! token makes no allocation at all, on SmolLM2 and on small random models of every
//! family, sequentially and with a thread pool (the pool's workers count too), and
//! that the whole `Generator` loop (sampling with repetition penalties and top-k/top-p,
//! streaming text, timing) allocates nothing per token either, over positions where
//! attention spreads over the workers.
//!
//! This file holds a single test so that no other test allocates while it counts.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use embodios_engine::families::Family;
use embodios_engine::generate::Checkpoint;
use embodios_engine::sampler::{Sampler, SamplerConfig};
use embodios_engine::testmodel::{write_random_model, RandomModelSpec};
use embodios_engine::{Generator, Model, ModelOptions, Parallel, Sequential};
use embodios_gguf::GgufFile;
use embodios_host::{StdClock, ThreadPool};
use embodios_tokenizer::Tokenizer;

/// Counts every allocation and reallocation made by any thread.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is
// added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tokens decoded (and counted) after the warm-up.
const COUNTED: usize = 8;

/// Prefills `prompt_len` tokens, decodes two tokens to warm up, then returns the
/// allocations made while decoding [`COUNTED`] more, one call per token.
fn allocations_per_decode(model: &Model<'_>, prompt_len: usize, par: &dyn Parallel) -> usize {
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 7 + 3) % vocab)
        .collect();
    let mut session = model.new_session();
    let next = |logits: &[f32]| embodios_engine::sampler::argmax(logits).unwrap_or(0) as u32;
    let mut tok = next(model.forward(&mut session, &prompt, par).expect("prefill"));
    for _ in 0..2 {
        tok = next(model.forward(&mut session, &[tok], par).expect("warm-up"));
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for _ in 0..COUNTED {
        let logits = model.forward(&mut session, &[tok], par).expect("decode");
        tok = next(logits);
    }
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

/// Runs the generator (sampling `config`, end-of-generation ignored) for `tokens`
/// tokens after a `prompt_len`-token prompt on a fresh session, and returns the
/// allocations made from its 3rd decoded token to its last (counted at the cancel
/// checkpoints, which come once per token) and how many tokens that spans.
fn allocations_per_generated(
    model: &Model<'_>,
    detok: &Tokenizer,
    config: SamplerConfig,
    prompt_len: usize,
    tokens: usize,
    par: &dyn Parallel,
) -> (usize, usize) {
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 7 + 3) % vocab)
        .collect();
    let mut session = model.new_session();
    let mut generator = Generator::new(Sampler::new(config), tokens);
    generator.ignore_eog = true;
    // A stop string that never appears keeps the stop filter busy.
    generator.stop = vec!["\u{1}never\u{1}".to_string()];
    let (mut first, mut last, mut counted) = (None, 0, 0);
    let mut streamed = 0usize;
    let out = generator
        .run_with(
            model,
            &mut session,
            detok,
            &prompt,
            par,
            &StdClock::new(),
            &mut |t| {
                streamed += t.len();
                true
            },
            &mut |c| {
                if let Checkpoint::Decode { generated } = c {
                    let now = ALLOCATIONS.load(Ordering::SeqCst);
                    if generated == 3 {
                        first = Some(now);
                    } else if generated > 3 {
                        counted += 1;
                    }
                    last = now;
                }
                false
            },
        )
        .expect("generate");
    assert_eq!(out.tokens.len(), tokens, "stopped early: {:?}", out.stop);
    assert!(streamed > 0, "nothing streamed");
    (last - first.expect("fewer than 3 tokens"), counted)
}

#[test]
fn decoding_a_token_allocates_nothing_after_warm_up() {
    // The counter must see allocations at all, or a zero below would prove nothing.
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    drop(std::hint::black_box(vec![1u8; 64]));
    assert!(
        ALLOCATIONS.load(Ordering::SeqCst) > before,
        "the counting allocator is not installed"
    );

    let bytes = std::fs::read(smollm2_path()).unwrap_or_else(|e| {
        panic!(
            "model not found: run `cargo xtask fetch-model` ({}: {e})",
            smollm2_path().display()
        )
    });
    let file = GgufFile::parse(&bytes).expect("parse SmolLM2");
    let pool = ThreadPool::new(2).expect("thread pool");
    let mut report = Vec::new();

    let smollm2 = Model::load(
        &file,
        ModelOptions {
            max_context: Some(512),
        },
    )
    .expect("load SmolLM2");
    // 9 heads x 120+ positions passes the parallel-attention threshold.
    for (label, par) in [
        ("2 threads", &pool as &dyn Parallel),
        ("sequential", &Sequential),
    ] {
        report.push((
            format!("SmolLM2, {label}"),
            allocations_per_decode(&smollm2, 120, par),
            COUNTED,
        ));
    }

    for family in [Family::Llama, Family::Gemma3, Family::Qwen2, Family::Phi2] {
        let spec = RandomModelSpec::for_family(family);
        let random = write_random_model(&spec, &file).expect("write random model");
        let random_file = GgufFile::parse(&random).expect("parse random model");
        let model = Model::load(
            &random_file,
            ModelOptions {
                max_context: Some(400),
            },
        )
        .expect("load random model");
        for (label, par) in [
            ("2 threads", &pool as &dyn Parallel),
            ("sequential", &Sequential),
        ] {
            let n = allocations_per_decode(&model, 300, par);
            report.push((format!("random {family:?}, {label}"), n, COUNTED));
        }
    }

    // The generator over positions 100..160 of SmolLM2 (attention goes parallel at
    // 9 heads x 114 positions), with repetition penalties and the sampling chain.
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let penalties = SamplerConfig {
        repeat_penalty: 1.3,
        frequency_penalty: 0.1,
        presence_penalty: 0.1,
        ..SamplerConfig::default()
    };
    let whole_vocab = SamplerConfig {
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.1,
        ..SamplerConfig::default()
    };
    for (label, config) in [
        ("greedy", SamplerConfig::greedy()),
        ("repeat penalties, top-k/top-p/min-p", penalties),
        ("repeat penalty, whole vocabulary", whole_vocab),
    ] {
        for (threads, par) in [
            ("2 threads", &pool as &dyn Parallel),
            ("sequential", &Sequential),
        ] {
            let (n, tokens) =
                allocations_per_generated(&smollm2, &tok, config.clone(), 100, 60, par);
            report.push((
                format!("Generator on SmolLM2, {label}, {threads}"),
                n,
                tokens,
            ));
        }
    }

    for (what, n, tokens) in &report {
        println!("{what}: {n} allocations in {tokens} decoded tokens");
    }
    let bad: Vec<_> = report.iter().filter(|(_, n, _)| *n != 0).collect();
    assert!(bad.is_empty(), "decoding allocated: {bad:?}");
}
