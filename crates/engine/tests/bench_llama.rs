//! The benchmark-scale random llama writer (`write_bench_llama`): a cut vocabulary stays a
//! consistent BPE tokenizer (every kept merge joins kept tokens into a kept token), the
//! file loads as a model whose tokenizer round-trips text, and a cut that would drop a
//! special token is refused.

use embodios_engine::testmodel::{
    write_bench_llama, BenchLlamaSpec, RandomLlamaSpec, TestModelError,
};
use embodios_engine::{Model, ModelOptions};
use embodios_gguf::{GgmlType, GgufFile};
use embodios_testkit::TestModel;
use embodios_tokenizer::Tokenizer;

fn small(vocab: Option<usize>) -> BenchLlamaSpec {
    BenchLlamaSpec {
        shape: RandomLlamaSpec::default(),
        weight_type: GgmlType::Q8_0,
        vocab,
    }
}

#[test]
fn a_cut_vocabulary_stays_consistent_and_loads() {
    let src_bytes = std::fs::read(TestModel::SmolLm2.path()).expect("read SmolLM2");
    let src = GgufFile::parse(&src_bytes).unwrap();
    let full_merges = src.get_array("tokenizer.ggml.merges").unwrap().len();
    let bytes = write_bench_llama(&small(Some(4000)), &src).expect("write");
    let file = GgufFile::parse(&bytes).expect("parses");

    let tokens: Vec<&str> = file
        .get_array("tokenizer.ggml.tokens")
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 4000);
    assert_eq!(file.get_u32("llama.vocab_size"), Some(4000));
    assert_eq!(
        file.get_array("tokenizer.ggml.token_type").unwrap().len(),
        4000
    );
    let merges = file.get_array("tokenizer.ggml.merges").unwrap();
    assert!(!merges.is_empty() && merges.len() < full_merges);
    let kept: std::collections::HashSet<&str> = tokens.iter().copied().collect();
    for m in merges {
        let (a, b) = m.as_str().unwrap().split_once(' ').unwrap();
        assert!(kept.contains(a) && kept.contains(b) && kept.contains(format!("{a}{b}").as_str()));
    }
    let emb = file.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![64, 4000]);
    assert_eq!(emb.ty, GgmlType::Q8_0);

    Model::load(&file, ModelOptions::default()).expect("the engine loads it");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer loads");
    let text = "The history of computing is a story of people.";
    let ids = tok.encode(text, false, false);
    assert!(ids.iter().all(|&i| (i as usize) < 4000));
    assert_eq!(tok.decode(&ids, false), text);
}

#[test]
fn a_cut_below_a_special_token_is_refused() {
    let src_bytes = std::fs::read(TestModel::SmolLm2.path()).expect("read SmolLM2");
    let src = GgufFile::parse(&src_bytes).unwrap();
    // SmolLM2's BOS/EOS are ids 1 and 2.
    match write_bench_llama(&small(Some(1)), &src) {
        Err(TestModelError::VocabTooSmall { vocab: 1, .. }) => {}
        other => panic!("expected VocabTooSmall, got {:?}", other.map(|b| b.len())),
    }
}
