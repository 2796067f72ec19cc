//! The generator's prefill in pieces: the pieces' shape, logits and cache bit for bit
//! equal to one `forward` call over the prompt (random models of every family, SmolLM2
//! and Gemma 3), cancelling during the prompt and during the reply (the session stays
//! usable and the next turn gives what it gives without the cancel), and the fallible
//! session constructor.

mod common;

use common::*;
use embodios_engine::families::Family;
use embodios_engine::generate::{largest_prefill_piece, prefill_pieces, Checkpoint};
use embodios_engine::sampler::{Sampler, SamplerConfig};
use embodios_engine::testmodel::{write_random_model, RandomModelSpec};
use embodios_engine::{
    GenerateError, Generator, Model, ModelOptions, NoClock, Parallel, Sequential, SessionError,
    SessionOptions, StopReason,
};
use embodios_gguf::GgufFile;
use embodios_host::ThreadPool;
use embodios_tokenizer::Tokenizer;

#[test]
fn pieces_cover_the_prompt_within_micro_batches_and_rounding_classes() {
    let class = |n: usize| match n {
        0 | 1 => 0,
        2..=7 => 1,
        _ => 2,
    };
    for piece in [1, 5, 8, 16, 64, 100, 512, 600] {
        let mut longest = 0;
        for n in (0..1100)
            .step_by(7)
            .chain([1, 2, 8, 15, 16, 17, 23, 24, 512, 513, 519, 520, 1024, 1031])
        {
            let mut next = 0;
            for r in prefill_pieces(n, piece) {
                let ub = r.start / 512;
                let ub_len = (n - ub * 512).min(512);
                assert_eq!(r.start, next, "n {n} piece {piece}: gap before {r:?}");
                assert!(!r.is_empty(), "n {n} piece {piece}: empty piece");
                assert_eq!(
                    (r.end - 1) / 512,
                    ub,
                    "n {n} piece {piece}: {r:?} straddles"
                );
                assert_eq!(
                    class(r.len()),
                    class(ub_len),
                    "n {n} piece {piece}: {r:?} rounds unlike its micro-batch of {ub_len}"
                );
                if piece >= 8 && ub_len >= 8 {
                    assert!(r.len() < piece + 8, "n {n} piece {piece}: {r:?} too long");
                }
                longest = longest.max(r.len());
                next = r.end;
            }
            assert_eq!(next, n, "n {n} piece {piece}: ends at {next}");
        }
        assert!(
            largest_prefill_piece(piece) >= longest,
            "piece {piece}: largest {} < seen {longest}",
            largest_prefill_piece(piece)
        );
    }
    assert_eq!(largest_prefill_piece(16), 23);
}

/// Logits after evaluating `prompt` in one call and in `piece`-token pieces (logits
/// only for the last piece), then after one more token, compared bit for bit.
fn check_pieces_equal_one_call(
    what: &str,
    model: &Model<'_>,
    prompt: &[u32],
    piece: usize,
    par: &dyn Parallel,
) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut whole = model.new_session();
    let a = bits(model.forward(&mut whole, prompt, par).expect("one call"));
    let mut pieces = model.new_session();
    let mut n = 0;
    for r in prefill_pieces(prompt.len(), piece) {
        let last = r.end == prompt.len();
        model
            .evaluate(&mut pieces, &prompt[r.clone()], last, par)
            .expect("piece");
        n += 1;
    }
    assert!(n > 1 || prompt.len() < 8, "{what}: one piece only");
    assert_eq!(bits(pieces.logits()), a, "{what}: logits after the prompt");
    assert_eq!(pieces.tokens(), whole.tokens());
    let next = [prompt[0]];
    let a = bits(model.forward(&mut whole, &next, par).expect("decode"));
    let b = bits(model.forward(&mut pieces, &next, par).expect("decode"));
    assert_eq!(a, b, "{what}: logits of the next token (the caches differ)");
}

fn prompt_of(len: usize, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 31 + 7) % vocab as u32)
        .collect()
}

#[test]
fn pieces_give_the_logits_of_one_call_bit_for_bit() {
    let smol = std::fs::read(smollm2_path()).unwrap_or_else(|e| {
        panic!(
            "model not found: run `cargo xtask fetch-model` ({}: {e})",
            smollm2_path().display()
        )
    });
    let smol_file = GgufFile::parse(&smol).expect("parse SmolLM2");
    let pool = ThreadPool::new(2).expect("pool");
    for family in [Family::Llama, Family::Gemma3, Family::Qwen2, Family::Phi2] {
        let bytes = write_random_model(&RandomModelSpec::for_family(family), &smol_file)
            .expect("random model");
        let file = GgufFile::parse(&bytes).expect("parse random model");
        let model = Model::load(
            &file,
            ModelOptions {
                max_context: Some(1100),
            },
        )
        .expect("load");
        let vocab = model.config.vocab_size;
        // 600 tokens: a full micro-batch of 512 and 88 more; 37 and 3: remainders that
        // join the piece before them or stay whole.
        for (len, piece) in [(600, 64), (600, 16), (37, 16), (3, 16)] {
            check_pieces_equal_one_call(
                &format!("random {family:?}, {len} tokens in pieces of {piece}"),
                &model,
                &prompt_of(len, vocab),
                piece,
                &pool,
            );
        }
    }
    let model = Model::load(
        &smol_file,
        ModelOptions {
            max_context: Some(256),
        },
    )
    .expect("load SmolLM2");
    check_pieces_equal_one_call(
        "SmolLM2, 45 tokens in pieces of 16",
        &model,
        &prompt_of(45, model.config.vocab_size),
        16,
        &pool,
    );
    let gemma = std::fs::read(gemma3_path()).unwrap_or_else(|e| {
        panic!(
            "model not found: run `cargo xtask fetch-model gemma3-270m` ({}: {e})",
            gemma3_path().display()
        )
    });
    let gemma_file = GgufFile::parse(&gemma).expect("parse Gemma 3");
    let model = Model::load(
        &gemma_file,
        ModelOptions {
            max_context: Some(256),
        },
    )
    .expect("load Gemma 3");
    // Gemma 3's K-quant weights round 2-7 and 8+ token batches differently.
    check_pieces_equal_one_call(
        "Gemma 3, 37 tokens in pieces of 16",
        &model,
        &prompt_of(37, model.config.vocab_size),
        16,
        &pool,
    );
}

#[test]
fn cancelling_the_prompt_or_the_reply_leaves_a_usable_session() {
    let smol = std::fs::read(smollm2_path()).unwrap_or_else(|e| {
        panic!(
            "model not found: run `cargo xtask fetch-model` ({}: {e})",
            smollm2_path().display()
        )
    });
    let file = GgufFile::parse(&smol).expect("parse SmolLM2");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(256),
        },
    )
    .expect("load");
    let turn1 = tok.encode("The capital of France is", true, false);
    let turn2 = tok.encode(
        " and the capital of Italy, a country with a long history of city states, \
         republics and kingdoms, is",
        false,
        false,
    );
    assert!(turn2.len() > 16, "the second turn must span several pieces");
    let generator = || {
        let mut g = Generator::new(Sampler::new(SamplerConfig::greedy()), 6);
        g.prefill_piece = 8;
        g
    };
    let run = |session: &mut embodios_engine::Session,
               prompt: &[u32],
               cancel: &mut dyn FnMut(Checkpoint) -> bool| {
        generator().run_with(
            &model,
            session,
            &tok,
            prompt,
            &Sequential,
            &NoClock,
            &mut |_| true,
            cancel,
        )
    };

    // Reference: both turns without a cancel.
    let mut reference = model.new_session();
    let first = run(&mut reference, &turn1, &mut |_| false).expect("turn 1");
    let second = run(&mut reference, &turn2, &mut |_| false).expect("turn 2");
    assert_eq!(second.tokens.len(), 6);

    // The second turn's prompt cancelled after one piece: nothing generated, the
    // session back where the first turn left it; then the turn again as if nothing
    // had happened.
    let mut session = model.new_session();
    run(&mut session, &turn1, &mut |_| false).expect("turn 1");
    let (pos, tokens) = (session.pos(), session.tokens().to_vec());
    let logits: Vec<u32> = session.logits().iter().map(|x| x.to_bits()).collect();
    let mut polls = Vec::new();
    let cancelled = run(&mut session, &turn2, &mut |c| {
        polls.push(c);
        matches!(c, Checkpoint::Prefill { evaluated, .. } if evaluated > 0)
    })
    .expect("cancelled turn");
    assert_eq!(cancelled.stop, StopReason::Cancelled);
    assert!(cancelled.tokens.is_empty() && cancelled.text.is_empty());
    assert_eq!(cancelled.stats.prompt_tokens, 8);
    assert_eq!(
        polls,
        [0, 8].map(|evaluated| Checkpoint::Prefill {
            evaluated,
            total: turn2.len()
        })
    );
    assert_eq!(session.pos(), pos);
    assert_eq!(session.tokens(), tokens);
    let after: Vec<u32> = session.logits().iter().map(|x| x.to_bits()).collect();
    assert_eq!(after, logits, "the logits of the first turn are gone");
    let again = run(&mut session, &turn2, &mut |_| false).expect("turn 2 again");
    assert_eq!(again.tokens, second.tokens);
    assert_eq!(again.text, second.text);

    // Cancelled while decoding: the text so far, the session holds what was evaluated.
    let mut session = model.new_session();
    let mut streamed = String::new();
    let out = generator()
        .run_with(
            &model,
            &mut session,
            &tok,
            &turn1,
            &Sequential,
            &NoClock,
            &mut |t| {
                streamed.push_str(t);
                true
            },
            &mut |c| c == Checkpoint::Decode { generated: 3 },
        )
        .expect("cancelled reply");
    assert_eq!(out.stop, StopReason::Cancelled);
    assert_eq!(out.tokens, first.tokens[..3]);
    assert_eq!(out.text, streamed);
    assert!(first.text.starts_with(&out.text) && !out.text.is_empty());
    assert_eq!(session.pos(), turn1.len() + 2);
}

#[test]
fn try_new_session_sizes_everything_up_front_or_fails_with_the_sizes() {
    let smol = std::fs::read(smollm2_path()).unwrap_or_else(|e| {
        panic!(
            "model not found: run `cargo xtask fetch-model` ({}: {e})",
            smollm2_path().display()
        )
    });
    let smol_file = GgufFile::parse(&smol).expect("parse SmolLM2");
    let model = Model::load(
        &smol_file,
        ModelOptions {
            max_context: Some(512),
        },
    )
    .expect("load");
    let options = SessionOptions {
        workers: 4,
        max_batch: largest_prefill_piece(16),
    };
    let session = model.try_new_session(options).expect("fits");
    let bytes = model.session_bytes(options);
    assert_eq!(bytes.kv_cache, session.cache().bytes());
    assert!(bytes.buffers > model.config.vocab_size * 4);

    // A context no machine holds: the KV cache cannot be reserved.
    let mut spec = RandomModelSpec::for_family(Family::Llama);
    spec.context_length = u32::MAX;
    let huge = write_random_model(&spec, &smol_file).expect("random model");
    let huge_file = GgufFile::parse(&huge).expect("parse");
    let model = Model::load(&huge_file, ModelOptions { max_context: None }).expect("load");
    match model.try_new_session(options) {
        Err(SessionError::OutOfMemory { part, needed }) => {
            assert_eq!(part, "KV cache");
            assert_eq!(needed, model.session_bytes(options));
            assert!(needed.kv_cache > 1 << 39, "{needed:?}");
        }
        Ok(s) => panic!("a KV cache of {} bytes was allocated", s.cache().bytes()),
    }
    // The generator sizes its lists for what the context allows, not for a boundless
    // budget or penalty window.
    let model = Model::load(
        &huge_file,
        ModelOptions {
            max_context: Some(64),
        },
    )
    .expect("load");
    let mut session = model.try_new_session(options).expect("small context");
    let tok = Tokenizer::from_gguf(&smol_file).expect("tokenizer");
    let mut sampler = SamplerConfig::greedy();
    sampler.repeat_last_n = usize::MAX;
    let mut g = Generator::new(Sampler::new(sampler), usize::MAX);
    let out = g.run(
        &model,
        &mut session,
        &tok,
        &[1, 2, 3],
        &Sequential,
        &NoClock,
        &mut |_| true,
    );
    match out {
        Ok(g) => assert_eq!(g.stop, StopReason::ContextFull),
        Err(e @ GenerateError::OutOfMemory { .. }) => panic!("budget not capped: {e}"),
        Err(e) => panic!("{e}"),
    }
}
