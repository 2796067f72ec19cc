//! Token ids back to text: per-token pieces as llama.cpp's `llama_token_to_piece`
//! gives them, whole-sequence detokenizing as `llama_detokenize`, and a streaming
//! decoder that only hands out complete UTF-8.

use crate::unicode::char_to_byte;
use crate::vocab::attr;
use crate::{Model, Tokenizer};
use alloc::string::String;
use alloc::vec::Vec;

/// Appends `bytes` decoded as llama.cpp decodes UTF-8: each byte that does not
/// start a valid sequence becomes U+FFFD on its own.
fn for_each_char(bytes: &[u8], mut f: impl FnMut(char)) {
    for chunk in bytes.utf8_chunks() {
        chunk.valid().chars().for_each(&mut f);
        for _ in chunk.invalid() {
            f('\u{FFFD}');
        }
    }
}

/// Value of up to two hex digits after `<0x` (C's `strtol` on them: stops at the
/// first non-digit, 0 if none).
fn byte_token_value(text: &[u8]) -> u8 {
    let mut v: u32 = 0;
    for &c in text.get(3..).unwrap_or(&[]).iter().take(2) {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => break,
        };
        v = v * 16 + u32::from(d);
    }
    v as u8
}

impl Tokenizer {
    /// Fills the piece cache (pieces as rendered with `special = true`).
    pub(crate) fn build_pieces(&mut self) {
        let n = self.spans.len();
        let mut pieces = Vec::with_capacity(self.text.len());
        let mut spans = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let start = pieces.len();
            let text = self.token_text(id).unwrap_or(&[]);
            let a = self.attrs.get(id as usize).copied().unwrap_or(0);
            if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
                pieces.extend_from_slice(text);
            } else if a & attr::NORMAL != 0 {
                match self.model {
                    Model::Spm => {
                        let mut rest = text;
                        while let Some(pos) = find_spm_space(rest) {
                            pieces.extend_from_slice(&rest[..pos]);
                            pieces.push(b' ');
                            rest = &rest[pos + 3..];
                        }
                        pieces.extend_from_slice(rest);
                    }
                    Model::Bpe => decode_byte_level(text, &mut pieces),
                }
            } else if a & attr::BYTE != 0 {
                pieces.push(byte_token_value(text));
            }
            spans.push((start as u32, (pieces.len() - start) as u32));
        }
        self.pieces = pieces;
        self.piece_spans = spans;
    }

    /// The bytes a token stands for, as `llama_token_to_piece(.., lstrip = 0, special)`:
    /// control and unknown tokens give nothing unless `special` is true. Unknown
    /// ids give nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> &[u8] {
        let a = self.attrs.get(id as usize).copied().unwrap_or(0);
        if !special && a & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return &[];
        }
        self.piece_spans
            .get(id as usize)
            .and_then(|&(s, l)| self.pieces.get(s as usize..(s + l) as usize))
            .unwrap_or(&[])
    }

    /// Ids to bytes, as `llama_detokenize(.., remove_special, unparse_special)`:
    /// `remove_special` drops a leading BOS / trailing EOS where the vocabulary
    /// adds them; `unparse_special` renders control tokens as their text. The
    /// leading space a SentencePiece vocabulary adds is removed, and for
    /// vocabularies that ask for it the spaces before `?!.,` and some
    /// apostrophes are cleaned up.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), self.bos) {
                if first == bos {
                    remove_space = false;
                    ids = &ids[1..];
                }
            }
        }
        if remove_special && self.add_eos {
            if let (Some(&last), Some(eos)) = (ids.last(), self.eos) {
                if last == eos {
                    ids = &ids[..ids.len() - 1];
                }
            }
        }
        let mut out = Vec::new();
        for &id in ids {
            let mut piece = self.token_to_piece(id, unparse_special);
            if remove_space {
                if let Some(rest) = piece.strip_prefix(b" ") {
                    piece = rest;
                }
            }
            remove_space = false;
            out.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut out);
        }
        out
    }

    /// Ids to text: `detokenize(ids, skip_special, !skip_special)`, with invalid
    /// UTF-8 replaced by U+FFFD (only the bytes that are invalid in the whole
    /// output; pieces that split a character are joined first).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let bytes = self.detokenize(ids, skip_special, !skip_special);
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

fn find_spm_space(s: &[u8]) -> Option<usize> {
    s.windows(3).position(|w| w == "\u{2581}".as_bytes())
}

/// GPT-2 byte-level text back to bytes. A character outside the byte alphabet
/// becomes `[UNK_BYTE_0x<hex><token text>]`, as llama.cpp writes it.
fn decode_byte_level(text: &[u8], out: &mut Vec<u8>) {
    for_each_char(text, |c| match char_to_byte(c) {
        Some(b) => out.push(b),
        None => {
            out.extend_from_slice(b"[UNK_BYTE_0x");
            let mut buf = [0u8; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
            out.extend_from_slice(text);
            out.push(b']');
        }
    });
}

/// llama.cpp's `clean_spaces` passes over the detokenized bytes: drop the space
/// before `?!.,`, around a lone `'`, and before `'s`, `'m`, `'re`, `'ve`.
fn clean_up_spaces(t: &mut Vec<u8>) {
    // Pass 1: " ?", " !", " .", " ,".
    let mut w = usize::from(!t.is_empty());
    for i in 1..t.len() {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            w -= 1;
        }
        t[w] = x;
        w += 1;
    }
    t.truncate(w);
    // Pass 2: " ' " -> "'" .
    let n = t.len();
    let mut w = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            w -= 1;
            t[i + 1] = 0;
            t[w] = x;
            w += 1;
            // The space after is dropped by skipping it.
            i += 2;
            continue;
        }
        t[w] = x;
        w += 1;
        i += 1;
    }
    t.truncate(w);
    // Pass 3: " 's", " 'm", " 're", " 've".
    let n = t.len();
    let mut w = usize::from(n > 0);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            if x1 == b's' || x1 == b'm' {
                w -= 1;
            } else if x1 != b't' && x1 != b'd' && i + 2 < n {
                let x2 = t[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    w -= 1;
                }
            }
        }
        t[w] = x;
        w += 1;
    }
    t.truncate(w);
}

/// Decodes ids one at a time (as they are generated) into text, holding back
/// the bytes of a character whose remaining bytes come with later tokens.
/// Pieces are taken as [`Tokenizer::token_to_piece`] gives them; nothing is
/// stripped or cleaned.
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    special: bool,
    pending: Vec<u8>,
}

impl<'t> StreamDecoder<'t> {
    /// `special`: render control tokens as their text.
    pub fn new(tok: &'t Tokenizer, special: bool) -> Self {
        StreamDecoder {
            tok,
            special,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text that is now complete (maybe empty).
    /// Bytes that can never become valid UTF-8 come out as U+FFFD.
    pub fn push(&mut self, id: u32) -> String {
        self.pending
            .extend_from_slice(self.tok.token_to_piece(id, self.special));
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match core::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(core::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = bad.get(n..).unwrap_or(&[]);
                        }
                        // An incomplete character at the end: wait for more.
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drop = self.pending.len() - keep;
        self.pending.drain(..drop);
        out
    }

    /// Bytes held back for an unfinished character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: whatever is held back comes out, U+FFFD for an
    /// incomplete character.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_spaces_passes() {
        let mut t = b"Hello , world ! it 's a ' b ' c don 't".to_vec();
        clean_up_spaces(&mut t);
        assert_eq!(t, b"Hello, world! it's a'b'c don 't".to_vec());
    }

    #[test]
    fn byte_token_values() {
        assert_eq!(byte_token_value(b"<0x0A>"), 10);
        assert_eq!(byte_token_value(b"<0xFF>"), 255);
        assert_eq!(byte_token_value(b"<0x"), 0);
    }
}
