//! Tokenizes the whole corpus (`tests/corpus.json`) with the real SmolLM2 and
//! Gemma 3 vocabularies and compares ids, detokenized text, token pieces and
//! special ids with what llama.cpp gave (`tests/golden/*.json`, written by
//! `scripts/golden/tokenizer_goldens.py`).

use std::path::PathBuf;
use std::time::Instant;

use embodios_gguf::GgufFile;
use embodios_testkit::TestModel;
use embodios_tokenizer::{StreamDecoder, Tokenizer};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn smollm2_path() -> PathBuf {
    TestModel::SmolLm2.path()
}

fn gemma3_path() -> PathBuf {
    TestModel::Gemma3.path()
}

fn load(path: PathBuf) -> Tokenizer {
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let file = GgufFile::parse(&bytes).expect("model parses");
    Tokenizer::from_gguf(&file).expect("tokenizer builds")
}

fn golden(name: &str) -> Json {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden {}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden is valid JSON")
}

fn corpus() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus.json");
    let text = std::fs::read_to_string(&path).expect("corpus readable");
    serde_json::from_str(&text).expect("corpus is a JSON list of strings")
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// A golden byte string: a JSON string, or `{"hex": ...}` for invalid UTF-8.
fn bytes_of(v: &Json) -> Vec<u8> {
    if let Some(s) = v.as_str() {
        return s.as_bytes().to_vec();
    }
    let hex = v["hex"].as_str().expect("string or hex");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn opt_id(v: &Json) -> Option<u32> {
    v.as_u64().map(|x| x as u32)
}

/// Compares every corpus string; returns the number of cases.
fn check_corpus(tok: &Tokenizer, g: &Json) -> usize {
    let corpus = corpus();
    let cases = g["cases"].as_array().expect("cases");
    assert_eq!(
        cases.len(),
        corpus.len(),
        "golden is out of date with corpus.json: rerun scripts/golden/tokenizer_goldens.py"
    );
    let mut failures = Vec::new();
    let mut roundtrips = 0;
    for (case, text) in cases.iter().zip(&corpus) {
        assert_eq!(
            case["text"].as_str(),
            Some(text.as_str()),
            "golden is out of date with corpus.json"
        );
        let want = ids(&case["ids"]);
        let got = tok.encode(text, true, true);
        if got != want {
            failures.push(format!(
                "ids {text:?}:\n  llama.cpp {want:?}\n  ours      {got:?}"
            ));
        }
        let want_plain = ids(&case["ids_plain"]);
        let got_plain = tok.encode(text, true, false);
        if got_plain != want_plain {
            failures.push(format!(
                "ids (parse_special=false) {text:?}:\n  llama.cpp {want_plain:?}\n  ours      {got_plain:?}"
            ));
        }
        let detok = tok.detokenize(&want, true, true);
        if detok != bytes_of(&case["detok"]) {
            failures.push(format!(
                "detokenize {text:?}: llama.cpp {:?}, ours {:?}",
                String::from_utf8_lossy(&bytes_of(&case["detok"])),
                String::from_utf8_lossy(&detok)
            ));
        }
        let detok_plain = tok.detokenize(&want_plain, false, false);
        if detok_plain != bytes_of(&case["detok_plain"]) {
            failures.push(format!(
                "detokenize (plain) {text:?}: llama.cpp {:?}, ours {:?}",
                String::from_utf8_lossy(&bytes_of(&case["detok_plain"])),
                String::from_utf8_lossy(&detok_plain)
            ));
        }
        if case["roundtrip"].as_bool() == Some(true) {
            roundtrips += 1;
            let back = tok.decode(&got, true);
            if back != *text {
                failures.push(format!("decode(encode({text:?})) gave {back:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} checks differ from llama.cpp:\n{}",
        failures.len(),
        cases.len() * 5,
        failures.join("\n")
    );
    assert!(
        roundtrips > cases.len() / 2,
        "too few round-trip cases: {roundtrips}"
    );
    cases.len()
}

/// Compares the random strings of the golden; returns their number.
fn check_fuzz(tok: &Tokenizer, g: &Json) -> usize {
    let cases = g["fuzz"].as_array().expect("fuzz cases");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        for (key, parse_special) in [("ids", true), ("ids_plain", false)] {
            let want = ids(&case[key]);
            let got = tok.encode(text, true, parse_special);
            if got != want {
                failures.push(format!(
                    "{key} {text:?}:\n  llama.cpp {want:?}\n  ours      {got:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} random strings differ from llama.cpp:\n{}",
        failures.len(),
        cases.len() * 2,
        failures.join("\n")
    );
    assert!(cases.len() >= 100, "too few random cases");
    cases.len()
}

fn check_facts(tok: &Tokenizer, g: &Json) {
    assert_eq!(tok.vocab_size() as u64, g["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.bos(), opt_id(&g["bos"]), "bos");
    assert_eq!(tok.eos(), opt_id(&g["eos"]), "eos");
    assert_eq!(tok.add_bos(), g["add_bos"].as_bool().unwrap(), "add_bos");
    assert_eq!(tok.add_eos(), g["add_eos"].as_bool().unwrap(), "add_eos");
    assert_eq!(
        tok.eog_ids(),
        ids(&g["eog"]).as_slice(),
        "end-of-generation set"
    );
    for &id in tok.eog_ids() {
        assert!(tok.is_eog(id));
    }
    for special in [true, false] {
        let mut h = Sha256::new();
        for id in 0..tok.vocab_size() as u32 {
            let p = tok.token_to_piece(id, special);
            h.update((p.len() as u32).to_le_bytes());
            h.update(p);
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let key = if special { "special" } else { "plain" };
        assert_eq!(
            got,
            g["pieces_sha256"][key].as_str().unwrap(),
            "token pieces (special={special}) differ from llama.cpp"
        );
    }
}

#[test]
fn smollm2_matches_llama_cpp() {
    let tok = load(smollm2_path());
    let g = golden("smollm2");
    check_facts(&tok, &g);
    let n = check_corpus(&tok, &g);
    let f = check_fuzz(&tok, &g);
    eprintln!("smollm2: {n}/{n} corpus and {f}/{f} random strings identical to llama.cpp");
    // llama.cpp picks its end-of-turn token by hash-map order (here
    // <|endoftext|>); ours prefers ChatML's <|im_end|>. Both end generation.
    assert_eq!(tok.eot(), tok.token_id("<|im_end|>"));
    assert!(tok.is_eog(tok.eot().unwrap()));
    assert!(tok.is_eog(opt_id(&g["eot"]).unwrap()));
}

#[test]
fn gemma3_matches_llama_cpp() {
    let tok = load(gemma3_path());
    let g = golden("gemma3");
    check_facts(&tok, &g);
    assert_eq!(tok.eot(), opt_id(&g["eot"]), "eot");
    assert_eq!(tok.eot(), tok.token_id("<end_of_turn>"));
    let n = check_corpus(&tok, &g);
    let f = check_fuzz(&tok, &g);
    eprintln!("gemma3: {n}/{n} corpus and {f}/{f} random strings identical to llama.cpp");
}

/// The other BPE pre-tokenizers (`default`, `gpt-2`, `llama-bpe`, `qwen2`),
/// checked on the SmolLM2 vocabulary with its `tokenizer.ggml.pre` replaced, as
/// the golden script did for llama.cpp.
#[test]
fn other_bpe_pre_tokenizers_match_llama_cpp() {
    let bytes = std::fs::read(smollm2_path()).expect("model readable");
    let file = GgufFile::parse(&bytes).expect("model parses");
    let base = embodios_tokenizer::vocab_data(&file).expect("vocabulary data");
    let g = golden("smollm2_pre_variants");
    let texts: Vec<&str> = g["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let variants = g["variants"].as_object().unwrap();
    assert_eq!(variants.len(), 4);
    let mut failures = Vec::new();
    for (pre, rows) in variants {
        let mut data = base.clone();
        data.pre = if pre.is_empty() {
            None
        } else {
            Some(pre.clone())
        };
        let tok = Tokenizer::new(data).expect("tokenizer builds");
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), texts.len());
        for (row, text) in rows.iter().zip(&texts) {
            let want = ids(&row["ids"]);
            let got = tok.encode(text, true, true);
            if got != want {
                failures.push(format!(
                    "pre {pre:?} {text:?}:\n  llama.cpp {want:?}\n  ours      {got:?}"
                ));
            }
            let detok = tok.detokenize(&want, false, false);
            if detok != bytes_of(&row["detok_plain"]) {
                failures.push(format!(
                    "pre {pre:?} detokenize {text:?}: llama.cpp {:?}, ours {:?}",
                    String::from_utf8_lossy(&bytes_of(&row["detok_plain"])),
                    String::from_utf8_lossy(&detok)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} checks differ from llama.cpp:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// llama.cpp makes the special tokens of a model named Phi-3 strip the
/// whitespace after them; the golden script checked that on the Gemma 3
/// vocabulary renamed (with one unused token renamed `<|endoftext|>`).
#[test]
fn phi3_rule_matches_llama_cpp() {
    let bytes = std::fs::read(gemma3_path()).expect("model readable");
    let file = GgufFile::parse(&bytes).expect("model parses");
    let mut data = embodios_tokenizer::vocab_data(&file).expect("vocabulary data");
    let g = golden("gemma3_phi3_name");
    data.model_name = Some(g["name"].as_str().unwrap().into());
    for (id, text) in g["rename"].as_object().unwrap() {
        let id: usize = id.parse().unwrap();
        data.tokens[id] = text.as_str().unwrap().as_bytes().to_vec();
    }
    let tok = Tokenizer::new(data).expect("tokenizer builds");
    let plain = load(gemma3_path());
    let mut failures = Vec::new();
    let mut differs = 0;
    let texts = g["texts"].as_array().unwrap();
    for (i, text) in texts.iter().enumerate() {
        let text = text.as_str().unwrap();
        for (key, parse_special) in [("ids", true), ("ids_plain", false)] {
            let want = ids(&g[key][i]);
            let got = tok.encode(text, true, parse_special);
            if got != want {
                failures.push(format!(
                    "{key} {text:?}:\n  llama.cpp {want:?}\n  ours      {got:?}"
                ));
            }
            if plain.encode(text, true, parse_special) != want {
                differs += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} checks differ from llama.cpp:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        differs > 10,
        "the Phi-3 rule changed only {differs} results"
    );
}

/// A ZWJ emoji sequence spans several tokens whose pieces end inside
/// characters: the stream decoder must hold those bytes back.
#[test]
fn stream_decoder_holds_back_partial_characters() {
    for path in [smollm2_path(), gemma3_path()] {
        let tok = load(path);
        let text = "Family: 👨‍👩‍👧‍👦 and flag 🇯🇵, café, 🦩 𓀀 ꙮ";
        let ids = tok.encode(text, false, false);
        let mut dec = StreamDecoder::new(&tok, false);
        let mut out = String::new();
        let mut held = 0;
        for &id in &ids {
            let piece = tok.token_to_piece(id, false);
            let chunk = dec.push(id);
            if std::str::from_utf8(piece).is_err() {
                held += 1;
            }
            assert!(!chunk.contains('\u{FFFD}'), "replacement char in {chunk:?}");
            out.push_str(&chunk);
        }
        assert!(dec.finish().is_empty());
        assert_eq!(out, text);
        assert!(
            held > 0,
            "no token split a character; the test proves nothing"
        );
    }
}

#[test]
fn encoding_a_2kb_prompt_is_fast() {
    let para = "The history of computing is long and varied. Early mechanical calculators, \
                such as those built by Pascal and Leibniz in the 17th century, laid the \
                groundwork; in 1837 Charles Babbage proposed the Analytical Engine. 😀 \n";
    let mut prompt = String::from("<|im_start|>user\n");
    while prompt.len() < 2048 {
        prompt.push_str(para);
    }
    for path in [smollm2_path(), gemma3_path()] {
        let tok = load(path);
        let _ = tok.encode(&prompt, true, true);
        let t = Instant::now();
        let reps = 20;
        let mut n = 0;
        for _ in 0..reps {
            n = tok.encode(&prompt, true, true).len();
        }
        let per = t.elapsed() / reps;
        eprintln!(
            "{:?}: {} bytes -> {n} tokens in {per:?}",
            tok.model(),
            prompt.len()
        );
        assert!(per.as_millis() < 20, "encoding 2 KB took {per:?}");
    }
}
