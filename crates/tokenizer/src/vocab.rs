//! Plain vocabulary data (what a GGUF file's `tokenizer.ggml.*` keys hold) and
//! the construction of a [`Tokenizer`] from it, including the defaults and the
//! special-token fix-ups llama.cpp applies when it loads a vocabulary.

use crate::bytemap::ByteMap;
use crate::error::TokenizerError;
use crate::pretok::{self, PreConfig};
use crate::{Model, Tokenizer};
use alloc::string::String;
use alloc::vec::Vec;

/// Token types as stored in `tokenizer.ggml.token_type`.
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Attribute bits of a token (llama.cpp's `llama_token_attr`).
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

fn attr_of_type(t: i32) -> u16 {
    match t {
        token_type::NORMAL => attr::NORMAL,
        token_type::UNKNOWN => attr::UNKNOWN,
        token_type::CONTROL => attr::CONTROL,
        token_type::USER_DEFINED => attr::USER_DEFINED,
        token_type::UNUSED => attr::UNUSED,
        token_type::BYTE => attr::BYTE,
        _ => 0,
    }
}

/// Special token ids as a file states them; `None` where a key is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End of turn (`<|im_end|>`, `<end_of_turn>`, ...).
    pub eot: Option<u32>,
    /// End of message (`<|eom_id|>`).
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// Everything a tokenizer is built from, in plain form.
#[derive(Clone, Debug, Default)]
pub struct VocabData {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`; `None` when absent (BPE then uses the default splitter).
    pub pre: Option<String>,
    /// Token texts, indexed by id.
    pub tokens: Vec<Vec<u8>>,
    /// One score per token (SentencePiece merge priorities).
    pub scores: Option<Vec<f32>>,
    /// One [`token_type`] per token; all tokens are normal when absent.
    pub token_types: Option<Vec<i32>>,
    /// BPE merge rules `"left right"`, highest priority first.
    pub merges: Option<Vec<Vec<u8>>>,
    pub special: SpecialIds,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    /// `general.name`; only used to recognise Phi-3, whose special tokens
    /// strip the whitespace after them.
    pub model_name: Option<String>,
}

/// Texts llama.cpp recognises as end-of-turn tokens when the file names none,
/// in the order of preference used here.
const EOT_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Texts that end generation wherever they are in the vocabulary.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Rejects ids outside the vocabulary.
fn in_range(id: Option<u32>, n: usize) -> Option<u32> {
    id.filter(|&i| (i as usize) < n)
}

impl Tokenizer {
    /// Builds a tokenizer from plain vocabulary data.
    pub fn new(data: VocabData) -> Result<Tokenizer, TokenizerError> {
        let model = match data.model.as_str() {
            "gpt2" => Model::Bpe,
            "llama" => Model::Spm,
            other => {
                return Err(TokenizerError::UnknownModel {
                    model: other.into(),
                })
            }
        };
        let pre_name = data.pre.as_deref().unwrap_or("");
        let pre: Option<PreConfig> = match model {
            Model::Bpe => Some(pretok::lookup(pre_name).ok_or_else(|| {
                TokenizerError::UnknownPreTokenizer {
                    pre: pre_name.into(),
                }
            })?),
            Model::Spm => None,
        };

        let n = data.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if u32::try_from(n).is_err() || n == u32::MAX as usize {
            return Err(TokenizerError::TooManyTokens { count: n });
        }
        if let Some(s) = &data.scores {
            if s.len() != n {
                return Err(TokenizerError::LengthMismatch {
                    key: "tokenizer.ggml.scores",
                    tokens: n,
                    found: s.len(),
                });
            }
        }
        if let Some(t) = &data.token_types {
            if t.len() != n {
                return Err(TokenizerError::LengthMismatch {
                    key: "tokenizer.ggml.token_type",
                    tokens: n,
                    found: t.len(),
                });
            }
        }

        // Token texts (an empty text gets a placeholder, as llama.cpp does, so
        // that it cannot match anything) and the text -> id map.
        let total: usize = data.tokens.iter().map(|t| t.len().max(16)).sum();
        let mut text = Vec::with_capacity(total);
        let mut spans = Vec::with_capacity(n);
        let mut token_to_id = ByteMap::with_capacity(n, total);
        for (i, t) in data.tokens.iter().enumerate() {
            let start = text.len();
            if t.is_empty() {
                text.extend_from_slice(alloc::format!("[EMPTY_{i}]").as_bytes());
            } else {
                text.extend_from_slice(t);
            }
            let end = text.len();
            spans.push((start as u32, (end - start) as u32));
            token_to_id.insert(&text[start..end], i as u32);
        }
        let scores = data.scores.unwrap_or_else(|| alloc::vec![0.0; n]);
        let mut attrs: Vec<u16> = match &data.token_types {
            Some(t) => t.iter().map(|&t| attr_of_type(t)).collect(),
            None => alloc::vec![attr::NORMAL; n],
        };

        // Defaults per model, then the file's values.
        let (mut bos, mut eos, mut unk) = match model {
            Model::Spm => (Some(1), Some(2), Some(0)),
            Model::Bpe => (Some(11), Some(11), None),
        };
        bos = in_range(bos, n);
        eos = in_range(eos, n);
        unk = in_range(unk, n);
        let pick = |given: Option<u32>, default: Option<u32>| in_range(given, n).or(default);
        let s = &data.special;
        let bos = pick(s.bos, bos);
        let eos = pick(s.eos, eos);
        let unk = pick(s.unk, unk);
        let pad = pick(s.pad, None);
        let mut eot = pick(s.eot, None);
        let mut eom = pick(s.eom, None);
        let mut fim = [
            pick(s.fim_pre, None),
            pick(s.fim_suf, None),
            pick(s.fim_mid, None),
            pick(s.fim_pad, None),
            pick(s.fim_rep, None),
            pick(s.fim_sep, None),
        ];

        let (add_bos_default, add_space_prefix_default, clean_spaces, ignore_merges) = match pre {
            Some(p) => (p.add_bos, false, p.clean_spaces, p.ignore_merges),
            None => (true, true, false, false),
        };
        let add_bos = data.add_bos.unwrap_or(add_bos_default);
        let add_eos = data.add_eos.unwrap_or(false);
        let add_space_prefix = data.add_space_prefix.unwrap_or(add_space_prefix_default);

        // Find the end-of-turn, end-of-message and fill-in-the-middle tokens by
        // their text when the file does not name them; such a token is then a
        // control token even if the file typed it otherwise.
        let find = |slot: &mut Option<u32>, texts: &[&str], attrs: &mut [u16]| {
            if slot.is_some() {
                return;
            }
            for t in texts {
                if let Some(id) = token_to_id.get(t.as_bytes()) {
                    *slot = Some(id);
                    if let Some(a) = attrs.get_mut(id as usize) {
                        *a |= attr::CONTROL;
                    }
                    return;
                }
            }
        };
        find(&mut eot, EOT_TEXTS, &mut attrs);
        find(&mut eom, EOM_TEXTS, &mut attrs);
        let fim_texts = [
            FIM_PRE_TEXTS,
            FIM_SUF_TEXTS,
            FIM_MID_TEXTS,
            FIM_PAD_TEXTS,
            FIM_REP_TEXTS,
            FIM_SEP_TEXTS,
        ];
        for (slot, texts) in fim.iter_mut().zip(fim_texts) {
            find(slot, texts, &mut attrs);
        }

        // The end-of-generation set.
        let mut eog: Vec<u32> = Vec::new();
        eog.extend(fim[3..].iter().flatten());
        for t in EOG_TEXTS {
            if let Some(id) = token_to_id.get(t.as_bytes()) {
                eog.push(id);
                if let Some(a) = attrs.get_mut(id as usize) {
                    *a |= attr::CONTROL;
                }
            }
        }
        // gpt-oss: these must always be rendered.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = token_to_id.get(t.as_bytes()) {
                if let Some(a) = attrs.get_mut(id as usize) {
                    *a = attr::USER_DEFINED;
                }
            }
        }
        eog.extend([eos, eot, eom].iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        let text_of = |id: u32| -> &[u8] {
            spans
                .get(id as usize)
                .and_then(|&(s, l)| text.get(s as usize..(s + l) as usize))
                .unwrap_or(&[])
        };
        // Harmony / solar-open vocabularies: `<|end|>` ends a message, not generation.
        {
            let has = |eog: &[u32], t: &str| eog.iter().any(|&id| text_of(id) == t.as_bytes());
            let end_id = eog.iter().copied().find(|&id| text_of(id) == b"<|end|>");
            if let Some(end_id) = end_id {
                let call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
                if call && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
                    eog.retain(|&id| id != end_id);
                    if let Some(a) = attrs.get_mut(end_id as usize) {
                        *a = attr::USER_DEFINED;
                    }
                }
            }
            // Where `</s>` is an ordinary token (Gemma 4, PLaMo), it does not end generation.
            let s_id = eog.iter().copied().find(|&id| text_of(id) == b"</s>");
            if let Some(s_id) = s_id {
                if has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>") {
                    eog.retain(|&id| id != s_id);
                    if let Some(a) = attrs.get_mut(s_id as usize) {
                        *a = attr::NORMAL;
                    }
                }
            }
        }

        // Tokens cut out of the text before tokenizing, longest first.
        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                attrs
                    .get(id as usize)
                    .is_some_and(|a| a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
            })
            .collect();
        // llama.cpp sorts with `std::sort`; equal lengths keep its order.
        crate::cxxsort::sort(&mut special, &|&a: &u32, &b: &u32| {
            text_of(a).len() > text_of(b).len()
        });

        // Phi-3 (found by model name, as llama.cpp does): text right after a
        // special token loses its leading whitespace, except after <unk>, <s>
        // and <|endoftext|>.
        let name = data
            .model_name
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &special {
                if let Some(a) = attrs.get_mut(id as usize) {
                    *a |= attr::RSTRIP;
                }
            }
            for (t, on) in [
                ("</s>", true),
                ("<unk>", false),
                ("<s>", false),
                ("<|endoftext|>", false),
            ] {
                if let Some(a) = token_to_id
                    .get(t.as_bytes())
                    .and_then(|id| attrs.get_mut(id as usize))
                {
                    if on {
                        *a |= attr::RSTRIP;
                    } else {
                        *a &= !attr::RSTRIP;
                    }
                }
            }
        }
        let special = crate::special::SpecialTokens::new(special, &text, &spans);

        let mut tok = Tokenizer {
            model,
            pre,
            text,
            spans,
            attrs,
            scores,
            token_to_id,
            bpe: None,
            byte_tokens: [u32::MAX; 256],
            special,
            pieces: Vec::new(),
            piece_spans: Vec::new(),
            bos,
            eos,
            eot,
            eom,
            unk,
            pad,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            ignore_merges,
        };

        match model {
            Model::Bpe => {
                let merges = data
                    .merges
                    .as_deref()
                    .ok_or(TokenizerError::MissingMerges)?;
                tok.bpe = Some(crate::bpe::BpeTables::new(&tok, merges)?);
            }
            Model::Spm => {
                for b in 0..=255u8 {
                    let name = alloc::format!("<0x{b:02X}>");
                    let id = tok
                        .token_to_id
                        .get(name.as_bytes())
                        .or_else(|| tok.token_to_id.get(&[b]));
                    tok.byte_tokens[b as usize] = id.unwrap_or(u32::MAX);
                }
            }
        }
        if model == Model::Bpe {
            // Single raw bytes, for the rare word whose merged symbol is no token.
            for b in 0..=255u8 {
                if let Some(id) = tok.token_to_id.get(&[b]) {
                    tok.byte_tokens[b as usize] = id;
                }
            }
        }
        tok.build_pieces();
        Ok(tok)
    }
}
