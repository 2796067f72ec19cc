//! `embodios tokenize`: text to token ids with the model's own vocabulary, and back.

use crate::args::{Args, Spec};
use crate::loaded;
use embodios_tokenizer::Tokenizer;

const SPEC: Spec = Spec {
    valued: &[&[("--model", Some("-m"))]],
    switches: &["--json", "--decode", "--no-bos", "--no-special"],
    max_positional: 1,
};

pub fn main(raw: &[String]) -> Result<(), String> {
    let a = Args::parse(&SPEC, raw).map_err(|e| e.to_string())?;
    let path = a.required("--model").map_err(|e| e.to_string())?;
    let text = a
        .positional
        .first()
        .ok_or("missing the text to tokenize (or the ids to decode with --decode)")?;
    let bytes = loaded::read_file(path)?;
    let file = loaded::parse(path, &bytes)?;
    let tok = Tokenizer::from_gguf(&file)
        .map_err(|e| format!("`{path}`: cannot build the tokenizer: {e}"))?;

    if a.flag("--decode") {
        let ids = parse_ids(text, tok.vocab_size())?;
        let decoded = tok.decode(&ids, false);
        if a.flag("--json") {
            println!("{}", serde_json::Value::String(decoded));
        } else {
            println!("{decoded}");
        }
        return Ok(());
    }

    let ids = tok.encode(text, !a.flag("--no-bos"), !a.flag("--no-special"));
    if a.flag("--json") {
        println!("{}", serde_json::json!(ids));
    } else {
        for id in &ids {
            let piece = String::from_utf8_lossy(tok.token_to_piece(*id, true));
            println!("{id:>7} {piece:?}");
        }
    }
    Ok(())
}

/// Ids separated by commas, spaces or both, optionally in JSON brackets.
fn parse_ids(text: &str, vocab_size: usize) -> Result<Vec<u32>, String> {
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let id: u32 = w.parse().map_err(|_| format!("`{w}` is not a token id"))?;
            if (id as usize) < vocab_size {
                Ok(id)
            } else {
                Err(format!(
                    "token id {id} is outside the vocabulary (size {vocab_size})"
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_ids;

    #[test]
    fn ids_parse_in_several_spellings() {
        assert_eq!(parse_ids("[1, 2,3]", 10).unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_ids(" 4 5 ", 10).unwrap(), vec![4, 5]);
        assert_eq!(parse_ids("x", 10).unwrap_err(), "`x` is not a token id");
        assert_eq!(
            parse_ids("10", 10).unwrap_err(),
            "token id 10 is outside the vocabulary (size 10)"
        );
    }
}
