//! Reading the `tokenizer.ggml.*` metadata of a GGUF file into [`VocabData`].

use crate::error::TokenizerError;
use crate::vocab::{SpecialIds, VocabData};
use crate::Tokenizer;
use alloc::string::String;
use alloc::vec::Vec;
use embodios_gguf::{GgufFile, Value};

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const SCORES: &str = "tokenizer.ggml.scores";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";

fn string<'a>(key: &'static str, v: &Value<'a>) -> Result<&'a [u8], TokenizerError> {
    v.as_bytes().ok_or(TokenizerError::WrongType {
        key,
        expected: "a string",
        found: v.type_name(),
    })
}

fn array<'v, 'a>(key: &'static str, v: &'v Value<'a>) -> Result<&'v [Value<'a>], TokenizerError> {
    v.as_array().ok_or(TokenizerError::WrongType {
        key,
        expected: "an array",
        found: v.type_name(),
    })
}

fn element_error(
    key: &'static str,
    index: usize,
    expected: &'static str,
    v: &Value<'_>,
) -> TokenizerError {
    TokenizerError::WrongElementType {
        key,
        index,
        expected,
        found: v.type_name(),
    }
}

fn string_array(key: &'static str, v: &Value<'_>) -> Result<Vec<Vec<u8>>, TokenizerError> {
    array(key, v)?
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.as_bytes()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| element_error(key, i, "a string", e))
        })
        .collect()
}

fn utf8(key: &'static str, b: &[u8]) -> Result<String, TokenizerError> {
    core::str::from_utf8(b)
        .map(String::from)
        .map_err(|_| TokenizerError::WrongType {
            key,
            expected: "a UTF-8 string",
            found: "invalid UTF-8",
        })
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*` keys).
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::new(vocab_data(file)?)
    }
}

/// The vocabulary data of a GGUF file, with each key's type checked.
pub fn vocab_data(file: &GgufFile<'_>) -> Result<VocabData, TokenizerError> {
    let model = file
        .get(MODEL)
        .ok_or(TokenizerError::MissingKey { key: MODEL })?;
    let model = utf8(MODEL, string(MODEL, model)?)?;
    let pre = match file.get(PRE) {
        Some(v) => Some(utf8(PRE, string(PRE, v)?)?),
        None => None,
    };
    let tokens = file
        .get(TOKENS)
        .ok_or(TokenizerError::MissingKey { key: TOKENS })?;
    let tokens = string_array(TOKENS, tokens)?;
    let scores = match file.get(SCORES) {
        Some(v) => Some(
            array(SCORES, v)?
                .iter()
                .enumerate()
                .map(|(i, e)| match *e {
                    Value::F32(x) => Ok(x),
                    // llama.cpp also accepts integer scores.
                    Value::I32(x) => Ok(x as f32),
                    _ => Err(element_error(SCORES, i, "a float32 or int32", e)),
                })
                .collect::<Result<Vec<f32>, _>>()?,
        ),
        None => None,
    };
    let token_types = match file.get(TOKEN_TYPE) {
        Some(v) => Some(
            array(TOKEN_TYPE, v)?
                .iter()
                .enumerate()
                .map(|(i, e)| match *e {
                    Value::I32(x) => Ok(x),
                    _ => Err(element_error(TOKEN_TYPE, i, "an int32", e)),
                })
                .collect::<Result<Vec<i32>, _>>()?,
        ),
        None => None,
    };
    let merges = match file.get(MERGES) {
        Some(v) => Some(string_array(MERGES, v)?),
        None => None,
    };

    let id = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                // A negative id (-1) means "none".
                Some(x) if x < 0 => Ok(None),
                Some(x) => Ok(Some(u32::try_from(x).unwrap_or(u32::MAX))),
                None => Err(TokenizerError::WrongType {
                    key,
                    expected: "an integer",
                    found: v.type_name(),
                }),
            },
        }
    };
    let flag = |key: &'static str| -> Result<Option<bool>, TokenizerError> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or(TokenizerError::WrongType {
                key,
                expected: "a bool",
                found: v.type_name(),
            }),
        }
    };
    // The deprecated prefix/suffix/middle keys fill the FIM slots when the
    // current ones are absent.
    let special = SpecialIds {
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        eom: id("tokenizer.ggml.eom_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        sep: id("tokenizer.ggml.seperator_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        mask: id("tokenizer.ggml.mask_token_id")?,
        fim_pre: id("tokenizer.ggml.prefix_token_id")?.or(id("tokenizer.ggml.fim_pre_token_id")?),
        fim_suf: id("tokenizer.ggml.suffix_token_id")?.or(id("tokenizer.ggml.fim_suf_token_id")?),
        fim_mid: id("tokenizer.ggml.middle_token_id")?.or(id("tokenizer.ggml.fim_mid_token_id")?),
        fim_pad: id("tokenizer.ggml.fim_pad_token_id")?,
        fim_rep: id("tokenizer.ggml.fim_rep_token_id")?,
        fim_sep: id("tokenizer.ggml.fim_sep_token_id")?,
    };
    Ok(VocabData {
        model,
        pre,
        tokens,
        scores,
        token_types,
        merges,
        special,
        add_bos: flag("tokenizer.ggml.add_bos_token")?,
        add_eos: flag("tokenizer.ggml.add_eos_token")?,
        add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?,
        // A name that is not a string is no reason to refuse the vocabulary.
        model_name: file
            .get("general.name")
            .and_then(|v| v.as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned()),
    })
}
