//! Typed errors for building a tokenizer from GGUF metadata or plain vocabulary data.

use alloc::string::String;
use core::fmt;

/// Why a tokenizer could not be built. Encoding and decoding never fail; only
/// construction does, when the vocabulary metadata is missing or inconsistent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerError {
    /// A required metadata key is absent.
    MissingKey { key: &'static str },
    /// A metadata key holds a value of the wrong type.
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    /// One element of an array key has the wrong type.
    WrongElementType {
        key: &'static str,
        index: usize,
        expected: &'static str,
        found: &'static str,
    },
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    UnknownModel { model: String },
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    UnknownPreTokenizer { pre: String },
    /// The vocabulary has no tokens.
    EmptyVocab,
    /// More tokens than fit a `u32` id.
    TooManyTokens { count: usize },
    /// A per-token array (scores, token types) does not have one entry per token.
    LengthMismatch {
        key: &'static str,
        tokens: usize,
        found: usize,
    },
    /// A BPE vocabulary has no merges list.
    MissingMerges,
    /// A merge rule is not of the form `"left right"`.
    MalformedMerge { index: usize, merge: String },
    /// A merge rule refers to a string that is not a token of the vocabulary.
    MergeUnknownToken { index: usize, token: String },
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::MissingKey { key } => {
                write!(f, "missing tokenizer metadata key `{key}`")
            }
            TokenizerError::WrongType {
                key,
                expected,
                found,
            } => write!(
                f,
                "metadata key `{key}` should be {expected}, found {found}"
            ),
            TokenizerError::WrongElementType {
                key,
                index,
                expected,
                found,
            } => write!(
                f,
                "element {index} of metadata key `{key}` should be {expected}, found {found}"
            ),
            TokenizerError::UnknownModel { model } => {
                write!(
                    f,
                    "unknown tokenizer model \"{model}\" (supported: \"gpt2\", \"llama\")"
                )
            }
            TokenizerError::UnknownPreTokenizer { pre } => {
                write!(f, "unknown pre-tokenizer \"{pre}\"")
            }
            TokenizerError::EmptyVocab => write!(f, "the vocabulary has no tokens"),
            TokenizerError::TooManyTokens { count } => {
                write!(
                    f,
                    "the vocabulary has {count} tokens, more than a u32 id can hold"
                )
            }
            TokenizerError::LengthMismatch { key, tokens, found } => write!(
                f,
                "metadata key `{key}` has {found} entries but the vocabulary has {tokens} tokens"
            ),
            TokenizerError::MissingMerges => {
                write!(f, "BPE vocabulary without `tokenizer.ggml.merges`")
            }
            TokenizerError::MalformedMerge { index, merge } => {
                write!(
                    f,
                    "merge {index} ({merge:?}) is not of the form \"left right\""
                )
            }
            TokenizerError::MergeUnknownToken { index, token } => {
                write!(
                    f,
                    "merge {index} refers to {token:?}, which is not in the vocabulary"
                )
            }
        }
    }
}

impl core::error::Error for TokenizerError {}
