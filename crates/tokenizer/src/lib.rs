//! Tokenizers for GGUF vocabularies, giving the same token ids as llama.cpp:
//! GPT-2 byte-level BPE (`tokenizer.ggml.model = "gpt2"`, e.g. SmolLM2) and
//! SentencePiece-style (`"llama"`, e.g. Gemma 3).
//!
//! Build a [`Tokenizer`] with [`Tokenizer::from_gguf`] or from plain
//! [`VocabData`] with [`Tokenizer::new`]; then [`Tokenizer::encode`] text and
//! [`Tokenizer::decode`] ids, or decode a generated stream with [`StreamDecoder`].
//! The crate is `no_std` (it needs `alloc`) and never panics on input.
//!
//! BPE pre-tokenizers (`tokenizer.ggml.pre`): `smollm` and the names llama.cpp
//! groups with it (`starcoder`, `refact`, `command-r`, ...), `default`/absent,
//! the GPT-2 group (`gpt-2`, `mpt`, `olmo`, ...), the Llama 3 group
//! (`llama-bpe`, `llama3`, ...) and the Qwen 2 group (`qwen2`, `stablelm2`,
//! ...); other names are refused with [`TokenizerError::UnknownPreTokenizer`].
//!
//! Known differences from llama.cpp:
//! - When a file names no end-of-turn token, llama.cpp takes the first
//!   candidate text its hash map happens to yield (for SmolLM2 that is
//!   `<|endoftext|>`); here the candidates are tried in a fixed order starting
//!   with `<|im_end|>` and `<end_of_turn>`. The end-of-generation set is the same.
//!   The same fixed order picks fill-in-the-middle tokens.
//! - A SentencePiece vocabulary lacking a byte token falls back to `<unk>`
//!   where llama.cpp would fail.
//! - Special-token ties are ordered as GNU libstdc++'s `std::sort` orders them
//!   (llama.cpp builds with libc++ may order them differently).
//! - Construction is stricter: scores/token types must have exactly one entry
//!   per token and every merge must name two vocabulary tokens.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod bpe;
mod bytemap;
mod cxxsort;
mod decode;
mod error;
mod gguf;
mod pretok;
mod special;
mod spm;
mod unicode;
mod vocab;

pub use decode::StreamDecoder;
pub use error::TokenizerError;
pub use gguf::vocab_data;
pub use vocab::{token_type, SpecialIds, VocabData};

use alloc::string::String;
use alloc::vec::Vec;
use bytemap::ByteMap;
use special::{Frag, SpecialTokens};
use vocab::attr;

/// Which tokenizer algorithm a vocabulary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// GPT-2 byte-level BPE with merge ranks (`"gpt2"`).
    Bpe,
    /// SentencePiece-style merging by score with byte fallback (`"llama"`).
    Spm,
}

/// A tokenizer for one vocabulary.
pub struct Tokenizer {
    model: Model,
    pre: Option<pretok::PreConfig>,
    /// All token texts, back to back; `spans[id]` = (start, len).
    text: Vec<u8>,
    spans: Vec<(u32, u32)>,
    attrs: Vec<u16>,
    scores: Vec<f32>,
    token_to_id: ByteMap,
    bpe: Option<bpe::BpeTables>,
    /// SPM: the `<0xXX>` token of each byte. BPE: the token whose text is the
    /// single byte, if any. `u32::MAX` where there is none.
    byte_tokens: [u32; 256],
    special: SpecialTokens,
    /// Piece of each token as `token_to_piece(id, special = true)` gives it.
    pieces: Vec<u8>,
    piece_spans: Vec<(u32, u32)>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    /// Sorted end-of-generation ids.
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    ignore_merges: bool,
}

impl core::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("vocab_size", &self.spans.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// U+2581, SentencePiece's visible space.
const SPM_SPACE: &[u8] = "\u{2581}".as_bytes();

impl Tokenizer {
    /// Text to token ids, as `llama_tokenize(vocab, text, add_special, parse_special)`:
    /// `add_special` adds BOS/EOS where the vocabulary asks for them;
    /// `parse_special` turns the text of control tokens (`<|im_start|>`,
    /// `<start_of_turn>`, ...) into those tokens instead of tokenizing it as text.
    /// User-defined tokens are always matched, as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let bytes = text.as_bytes();
        let frags = self.special.partition(
            bytes,
            parse_special,
            |id| self.token_text(id).unwrap_or(&[]),
            &self.attrs,
        );
        let mut out = Vec::with_capacity(bytes.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match self.model {
            Model::Spm => {
                let mut scratch = spm::SpmScratch::default();
                let mut buf = Vec::new();
                // A space is put before the first text and before text that
                // follows a special token, when the vocabulary wants a prefix.
                let mut prev_special = true;
                for f in frags {
                    match f {
                        Frag::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Frag::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.extend_from_slice(SPM_SPACE);
                            }
                            for &c in bytes.get(a..b).unwrap_or(&[]) {
                                if c == b' ' {
                                    buf.extend_from_slice(SPM_SPACE);
                                } else {
                                    buf.push(c);
                                }
                            }
                            self.spm_text(&buf, &mut scratch, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
            Model::Bpe => {
                let mut scratch = bpe::BpeScratch::default();
                let stages = self.pre.map_or(&[][..], |p| p.stages);
                for f in frags {
                    match f {
                        Frag::Token(id) => out.push(id),
                        Frag::Text(a, b) => {
                            let part = bytes.get(a..b).unwrap_or(&[]);
                            // A fragment is valid UTF-8 unless a special token's
                            // text ended inside a character.
                            let part: alloc::borrow::Cow<'_, str> = String::from_utf8_lossy(part);
                            let Some(tables) = &self.bpe else { continue };
                            for (wa, wb) in pretok::split(&part, stages) {
                                let word = part.as_bytes().get(wa..wb).unwrap_or(&[]);
                                self.bpe_word(tables, word, &mut scratch, &mut out);
                            }
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// The algorithm of this vocabulary.
    pub fn model(&self) -> Model {
        self.model
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.spans.len()
    }

    /// The stored text of a token (byte-level characters for GPT-2 vocabularies,
    /// U+2581 for spaces in SentencePiece ones).
    pub fn token_text(&self, id: u32) -> Option<&[u8]> {
        let &(s, l) = self.spans.get(id as usize)?;
        self.text.get(s as usize..(s + l) as usize)
    }

    /// The id of the token whose stored text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text.as_bytes())
    }

    /// The merge priority score of a token (0 for BPE vocabularies).
    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token: the file's `tokenizer.ggml.eot_token_id`, otherwise the
    /// first of `<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, `<|end|>`,
    /// `<|endoftext|>`, ... in the vocabulary.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// End-of-message token (`<|eom_id|>`).
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether a space is put before the text (SentencePiece vocabularies).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Whether generating `id` ends generation (EOS, EOT, and the other
    /// end-of-generation tokens llama.cpp recognises).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation tokens, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` is a control token (rendered only when asked for).
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & attr::CONTROL != 0)
    }
}

#[cfg(test)]
mod tests;
