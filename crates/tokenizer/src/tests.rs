//! Unit tests on small hand-built vocabularies, where the expected ids follow
//! directly from the rules (merge ranks, scores, special-token partition).

use crate::unicode::BYTE_TO_CHAR;
use crate::vocab::token_type as tt;
use crate::{Model, StreamDecoder, Tokenizer, TokenizerError, VocabData};
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

/// Byte-level text of a string.
fn bl(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    crate::bpe::byte_encode(s.as_bytes(), &mut out);
    out
}

/// A GPT-2 style vocabulary: two control tokens, one user-defined token, all
/// 256 byte characters, then the merge results.
fn bpe_data(merges: &[(&str, &str)]) -> VocabData {
    let mut tokens: Vec<Vec<u8>> = vec![
        b"<|im_start|>".to_vec(),
        b"<|im_end|>".to_vec(),
        b"<tool>".to_vec(),
    ];
    let mut types = vec![tt::CONTROL, tt::CONTROL, tt::USER_DEFINED];
    for c in BYTE_TO_CHAR {
        tokens.push(c.to_string().into_bytes());
        types.push(tt::NORMAL);
    }
    let mut merge_lines = Vec::new();
    for (l, r) in merges {
        let (l, r) = (bl(l), bl(r));
        let mut joined = l.clone();
        joined.extend_from_slice(&r);
        if !tokens.contains(&joined) {
            tokens.push(joined);
            types.push(tt::NORMAL);
        }
        let mut line = l;
        line.push(b' ');
        line.extend_from_slice(&r);
        merge_lines.push(line);
    }
    VocabData {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types: Some(types),
        merges: Some(merge_lines),
        ..VocabData::default()
    }
}

fn bpe(merges: &[(&str, &str)]) -> Tokenizer {
    Tokenizer::new(bpe_data(merges)).expect("valid vocabulary")
}

fn id(t: &Tokenizer, text: &str) -> u32 {
    t.token_id(core::str::from_utf8(&bl(text)).unwrap())
        .or_else(|| t.token_id(text))
        .unwrap_or_else(|| panic!("no token {text:?}"))
}

#[test]
fn bpe_merges_lowest_rank_first() {
    let t = bpe(&[("l", "l"), ("e", "l")]);
    assert_eq!(t.model(), Model::Bpe);
    assert_eq!(t.encode("ell", false, false), [id(&t, "e"), id(&t, "ll")]);
    let t = bpe(&[("e", "l"), ("l", "l")]);
    assert_eq!(t.encode("ell", false, false), [id(&t, "el"), id(&t, "l")]);
}

#[test]
fn bpe_merges_chain_within_words_only() {
    let t = bpe(&[
        ("h", "e"),
        ("l", "l"),
        ("he", "ll"),
        ("hell", "o"),
        (" ", "w"),
    ]);
    let hello = id(&t, "hello");
    assert_eq!(
        t.encode("hello world", false, false),
        [
            hello,
            id(&t, " w"),
            id(&t, "o"),
            id(&t, "r"),
            id(&t, "l"),
            id(&t, "d")
        ]
    );
    // Digits are isolated by the smollm splitter, so "1" "2" never merge.
    let t = bpe(&[("1", "2")]);
    assert_eq!(t.encode("12", false, false), [id(&t, "1"), id(&t, "2")]);
}

#[test]
fn bpe_round_trips_any_text() {
    let t = bpe(&[("h", "e")]);
    for s in ["", "hello\n\tworld  ", "héllo 😀 日本", "a\u{0}b"] {
        let ids = t.encode(s, true, true);
        assert_eq!(t.decode(&ids, true), s);
    }
}

#[test]
fn special_tokens_are_cut_out_only_when_asked() {
    let t = bpe(&[("h", "i")]);
    let text = "<|im_start|>hi<|im_end|>";
    assert_eq!(t.encode(text, false, true), [0, id(&t, "hi"), 1]);
    let plain = t.encode(text, false, false);
    assert!(!plain.contains(&0) && !plain.contains(&1));
    assert_eq!(t.decode(&plain, true), text);
    // User-defined tokens are matched even without parse_special.
    assert_eq!(
        t.encode("a<tool>b", false, false),
        [id(&t, "a"), 2, id(&t, "b")]
    );
    // Control tokens render only when asked.
    assert_eq!(t.token_to_piece(0, false), b"");
    assert_eq!(t.token_to_piece(0, true), b"<|im_start|>");
    assert_eq!(t.decode(&[0, id(&t, "hi")], false), "<|im_start|>hi");
    assert_eq!(t.decode(&[0, id(&t, "hi")], true), "hi");
}

#[test]
fn longer_special_tokens_win() {
    let mut d = bpe_data(&[]);
    for s in ["ab", "abc"] {
        d.tokens.push(s.as_bytes().to_vec());
        d.token_types.as_mut().unwrap().push(tt::USER_DEFINED);
    }
    let t = Tokenizer::new(d).unwrap();
    let (ab, abc) = (t.token_id("ab").unwrap(), t.token_id("abc").unwrap());
    assert_eq!(t.encode("abcab", false, false), [abc, ab]);
}

#[test]
fn eot_and_eog_found_by_text() {
    let t = bpe(&[]);
    assert_eq!(t.eot(), Some(1));
    assert!(t.is_eog(1));
    assert!(!t.is_eog(0));
    // BPE default BOS/EOS is id 11 (as llama.cpp), and the smollm splitter adds no BOS.
    assert_eq!(t.bos(), Some(11));
    assert!(!t.add_bos());
    assert_eq!(t.encode("x", true, true), [id(&t, "x")]);
}

/// A SentencePiece vocabulary: unk, bos, eos, 256 byte tokens, then pieces.
fn spm(pieces: &[(&str, f32)], add_space_prefix: bool) -> Tokenizer {
    let mut tokens: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
    let mut types = vec![tt::UNKNOWN, tt::CONTROL, tt::CONTROL];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(alloc::format!("<0x{b:02X}>").into_bytes());
        types.push(tt::BYTE);
        scores.push(0.0);
    }
    for (p, s) in pieces {
        tokens.push(p.replace(' ', "\u{2581}").into_bytes());
        types.push(tt::NORMAL);
        scores.push(*s);
    }
    Tokenizer::new(VocabData {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        add_space_prefix: Some(add_space_prefix),
        ..VocabData::default()
    })
    .unwrap()
}

fn sid(t: &Tokenizer, piece: &str) -> u32 {
    t.token_id(&piece.replace(' ', "\u{2581}")).unwrap()
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let pieces = [
        ("a", -1.0),
        ("b", -1.0),
        ("c", -1.0),
        ("ab", -2.0),
        ("bc", -3.0),
    ];
    let t = spm(&pieces, false);
    assert_eq!(t.encode("abc", false, false), [sid(&t, "ab"), sid(&t, "c")]);
    let pieces = [
        ("a", -1.0),
        ("b", -1.0),
        ("c", -1.0),
        ("ab", -3.0),
        ("bc", -2.0),
    ];
    let t = spm(&pieces, false);
    assert_eq!(t.encode("abc", false, false), [sid(&t, "a"), sid(&t, "bc")]);
    // "é" is no piece: its two UTF-8 bytes become byte tokens.
    assert_eq!(
        t.encode("é", false, false),
        [t.token_id("<0xC3>").unwrap(), t.token_id("<0xA9>").unwrap()]
    );
    assert_eq!(t.decode(&t.encode("aé", true, false), true), "aé");
}

#[test]
fn spm_space_prefix_and_bos() {
    let t = spm(
        &[
            ("h", -1.0),
            ("i", -1.0),
            (" ", -1.0),
            (" hi", -0.5),
            ("hi", -0.6),
        ],
        true,
    );
    assert!(t.add_bos());
    assert_eq!(t.encode("hi", true, false), [1, sid(&t, " hi")]);
    assert_eq!(t.encode("hi", false, false), [sid(&t, " hi")]);
    // The prefix space is removed again when decoding.
    assert_eq!(t.decode(&t.encode("hi", false, false), true), "hi");
    assert_eq!(t.encode("", true, false), [1]);
}

#[test]
fn stream_decoder_waits_for_whole_characters() {
    let t = spm(&[("a", -1.0)], false);
    let ids = t.encode("a😀a", false, false);
    assert_eq!(ids.len(), 6);
    let mut d = StreamDecoder::new(&t, false);
    let outs: Vec<String> = ids.iter().map(|&i| d.push(i)).collect();
    assert_eq!(outs, ["a", "", "", "", "😀", "a"]);
    // An invalid byte in the middle comes out as U+FFFD without blocking.
    let mut d = StreamDecoder::new(&t, false);
    assert_eq!(d.push(t.token_id("<0xFF>").unwrap()), "\u{FFFD}");
    assert_eq!(d.push(t.token_id("<0xF0>").unwrap()), "");
    assert_eq!(d.pending(), [0xF0]);
    assert_eq!(d.finish(), "\u{FFFD}");
}

#[test]
fn construction_errors_are_specific() {
    let e = |d: VocabData| Tokenizer::new(d).unwrap_err();
    let mut d = bpe_data(&[]);
    d.model = "xyz".into();
    assert_eq!(
        e(d),
        TokenizerError::UnknownModel {
            model: "xyz".into()
        }
    );
    let mut d = bpe_data(&[]);
    d.pre = Some("nope".into());
    assert_eq!(
        e(d),
        TokenizerError::UnknownPreTokenizer { pre: "nope".into() }
    );
    let mut d = bpe_data(&[]);
    d.scores = Some(vec![0.0; 3]);
    assert!(matches!(
        e(d),
        TokenizerError::LengthMismatch {
            key: "tokenizer.ggml.scores",
            found: 3,
            ..
        }
    ));
    let mut d = bpe_data(&[]);
    d.token_types.as_mut().unwrap().pop();
    assert!(matches!(
        e(d),
        TokenizerError::LengthMismatch {
            key: "tokenizer.ggml.token_type",
            ..
        }
    ));
    let mut d = bpe_data(&[]);
    d.merges = Some(vec![b"nospace".to_vec()]);
    assert!(matches!(
        e(d),
        TokenizerError::MalformedMerge { index: 0, .. }
    ));
    let mut d = bpe_data(&[("a", "b")]);
    d.merges.as_mut().unwrap().push(b"zz q".to_vec());
    assert_eq!(
        e(d),
        TokenizerError::MergeUnknownToken {
            index: 1,
            token: "zz".into()
        }
    );
    let mut d = bpe_data(&[]);
    d.merges = None;
    assert_eq!(e(d), TokenizerError::MissingMerges);
    let mut d = bpe_data(&[]);
    d.tokens.clear();
    d.token_types = None;
    assert_eq!(e(d), TokenizerError::EmptyVocab);
    let msg = TokenizerError::UnknownModel {
        model: "xyz".into(),
    }
    .to_string();
    assert!(msg.contains("\"xyz\""), "{msg}");
}

#[test]
fn phi3_special_tokens_strip_following_whitespace() {
    let build = |name: Option<&str>| {
        let mut tokens: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
        let mut types = vec![tt::UNKNOWN, tt::CONTROL, tt::CONTROL];
        for b in 0..=255u8 {
            tokens.push(alloc::format!("<0x{b:02X}>").into_bytes());
            types.push(tt::BYTE);
        }
        for (t, ty) in [
            ("<|user|>", tt::CONTROL),
            ("hi", tt::NORMAL),
            ("\u{2581}hi", tt::NORMAL),
        ] {
            tokens.push(t.as_bytes().to_vec());
            types.push(ty);
        }
        Tokenizer::new(VocabData {
            model: "llama".into(),
            tokens,
            token_types: Some(types),
            model_name: name.map(Into::into),
            ..VocabData::default()
        })
        .unwrap()
    };
    let phi = build(Some("Phi-3 Mini"));
    let user = phi.token_id("<|user|>").unwrap();
    let hi = phi.token_id("\u{2581}hi").unwrap();
    assert_eq!(phi.encode("<|user|>\n hi", false, true), [user, hi]);
    let other = build(Some("Other"));
    let b = |x: u8| other.token_id(&alloc::format!("<0x{x:02X}>")).unwrap();
    // Without the rule the newline stays: "\u{2581}\nhi" is two byte-fallback
    // characters and "hi".
    let hi2 = other.token_id("hi").unwrap();
    assert_eq!(
        other.encode("<|user|>\nhi", false, true),
        [user, b(0xE2), b(0x96), b(0x81), b(0x0A), hi2]
    );
}
