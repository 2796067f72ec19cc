//! `Tokenizer::from_gguf` on small GGUF files with missing or malformed
//! tokenizer metadata: each gives its own typed error, never a panic.

use embodios_gguf::{GgufFile, GgufWriter, OwnedValue};
use embodios_tokenizer::{Tokenizer, TokenizerError};

/// A valid minimal SentencePiece vocabulary, with `edit` applied to the keys.
fn build(
    edit: impl FnOnce(&mut Vec<(&'static str, OwnedValue)>),
) -> Result<Tokenizer, TokenizerError> {
    let tokens = ["<unk>", "<s>", "</s>", "\u{2581}a", "a"];
    let mut kv: Vec<(&'static str, OwnedValue)> = vec![
        ("tokenizer.ggml.model", OwnedValue::str("llama")),
        ("tokenizer.ggml.tokens", OwnedValue::str_array(&tokens)),
        (
            "tokenizer.ggml.scores",
            OwnedValue::f32_array(&[0.0, 0.0, 0.0, -1.0, -2.0]),
        ),
        (
            "tokenizer.ggml.token_type",
            OwnedValue::i32_array(&[2, 3, 3, 1, 1]),
        ),
        ("tokenizer.ggml.bos_token_id", OwnedValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", OwnedValue::U32(2)),
    ];
    edit(&mut kv);
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.add_metadata(k, v).expect("writer accepts the key");
    }
    let bytes = w.finish();
    let file = GgufFile::parse(&bytes).expect("file parses");
    Tokenizer::from_gguf(&file)
}

fn set(kv: &mut Vec<(&'static str, OwnedValue)>, key: &'static str, v: OwnedValue) {
    kv.retain(|(k, _)| *k != key);
    kv.push((key, v));
}

#[test]
fn minimal_vocabulary_works() {
    let t = build(|_| {}).unwrap();
    assert_eq!(t.vocab_size(), 5);
    assert_eq!(t.encode("a", true, false), [1, 3]);
    // The prefix space goes when there is no BOS in front; like llama.cpp, a
    // removed BOS keeps it.
    assert_eq!(t.decode(&[3], true), "a");
    assert_eq!(t.decode(&[1, 3], true), " a");
}

#[test]
fn unknown_model() {
    let e = build(|kv| set(kv, "tokenizer.ggml.model", OwnedValue::str("xyz"))).unwrap_err();
    assert_eq!(
        e,
        TokenizerError::UnknownModel {
            model: "xyz".into()
        }
    );
    assert!(
        e.to_string().contains("unknown tokenizer model \"xyz\""),
        "{e}"
    );
}

#[test]
fn missing_keys() {
    let e = build(|kv| kv.retain(|(k, _)| *k != "tokenizer.ggml.model")).unwrap_err();
    assert_eq!(
        e,
        TokenizerError::MissingKey {
            key: "tokenizer.ggml.model"
        }
    );
    let e = build(|kv| kv.retain(|(k, _)| *k != "tokenizer.ggml.tokens")).unwrap_err();
    assert_eq!(
        e,
        TokenizerError::MissingKey {
            key: "tokenizer.ggml.tokens"
        }
    );
    assert!(e.to_string().contains("tokenizer.ggml.tokens"));
}

#[test]
fn scores_length_differs_from_tokens() {
    let e = build(|kv| {
        set(
            kv,
            "tokenizer.ggml.scores",
            OwnedValue::f32_array(&[0.0; 4]),
        )
    })
    .unwrap_err();
    assert_eq!(
        e,
        TokenizerError::LengthMismatch {
            key: "tokenizer.ggml.scores",
            tokens: 5,
            found: 4
        }
    );
    assert!(e.to_string().contains("4 entries"), "{e}");
}

#[test]
fn wrong_types() {
    let e =
        build(|kv| set(kv, "tokenizer.ggml.tokens", OwnedValue::u32_array(&[1, 2]))).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::WrongElementType {
                key: "tokenizer.ggml.tokens",
                index: 0,
                ..
            }
        ),
        "{e:?}"
    );
    let e = build(|kv| set(kv, "tokenizer.ggml.model", OwnedValue::U32(7))).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::WrongType {
                key: "tokenizer.ggml.model",
                ..
            }
        ),
        "{e:?}"
    );
    let e = build(|kv| {
        set(
            kv,
            "tokenizer.ggml.token_type",
            OwnedValue::f32_array(&[1.0; 5]),
        )
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::WrongElementType {
                key: "tokenizer.ggml.token_type",
                ..
            }
        ),
        "{e:?}"
    );
    let e = build(|kv| set(kv, "tokenizer.ggml.add_bos_token", OwnedValue::U32(1))).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::WrongType {
                key: "tokenizer.ggml.add_bos_token",
                ..
            }
        ),
        "{e:?}"
    );
    let e = build(|kv| set(kv, "tokenizer.ggml.bos_token_id", OwnedValue::str("1"))).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::WrongType {
                key: "tokenizer.ggml.bos_token_id",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bpe_merge_problems() {
    let bpe = |merges: &[&str]| {
        let merges: Vec<String> = merges.iter().map(|s| s.to_string()).collect();
        build(move |kv| {
            set(kv, "tokenizer.ggml.model", OwnedValue::str("gpt2"));
            set(kv, "tokenizer.ggml.pre", OwnedValue::str("smollm"));
            kv.retain(|(k, _)| *k != "tokenizer.ggml.scores");
            if !merges.is_empty() {
                set(kv, "tokenizer.ggml.merges", OwnedValue::str_array(&merges));
            }
        })
    };
    assert_eq!(bpe(&[]).unwrap_err(), TokenizerError::MissingMerges);
    let e = bpe(&["a"]).unwrap_err();
    assert!(
        matches!(e, TokenizerError::MalformedMerge { index: 0, .. }),
        "{e:?}"
    );
    let e = bpe(&["a a", "a q"]).unwrap_err();
    assert_eq!(
        e,
        TokenizerError::MergeUnknownToken {
            index: 1,
            token: "q".into()
        }
    );
    assert!(e.to_string().contains("merge 1"), "{e}");
    let e = build(|kv| {
        set(kv, "tokenizer.ggml.model", OwnedValue::str("gpt2"));
        set(kv, "tokenizer.ggml.pre", OwnedValue::str("mystery"));
        set(kv, "tokenizer.ggml.merges", OwnedValue::str_array(&["a a"]));
    })
    .unwrap_err();
    assert_eq!(
        e,
        TokenizerError::UnknownPreTokenizer {
            pre: "mystery".into()
        }
    );
}
