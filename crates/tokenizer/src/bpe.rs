//! Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = "gpt2"`): each word from
//! the pre-tokenizer is turned into one symbol per byte and adjacent symbols are
//! merged by merge rank, lowest rank first (ties: leftmost first), as llama.cpp's
//! `llm_tokenizer_bpe_session` does.
//!
//! Symbols are identified by interned ids rather than strings: a vocabulary id
//! when the symbol's text is a token, otherwise an id past the vocabulary for
//! the few merge results that are not tokens. Merge rules are keyed by the pair
//! of ids, so the merge loop does no string work at all.

use crate::bytemap::ByteMap;
use crate::error::TokenizerError;
use crate::unicode::BYTE_TO_CHAR;
use crate::Tokenizer;
use alloc::collections::BinaryHeap;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;
use hashbrown::HashMap;

const NONE: u32 = u32::MAX;

pub(crate) struct BpeTables {
    /// `(left, right)` symbol ids -> `(rank, merged symbol id)`.
    merges: HashMap<u64, (u32, u32)>,
    /// Symbol id of the character standing for each byte.
    byte_sym: [u32; 256],
}

fn pair(l: u32, r: u32) -> u64 {
    (u64::from(l) << 32) | u64::from(r)
}

/// The byte-level text of raw bytes (each byte becomes its stand-in character).
pub(crate) fn byte_encode(raw: &[u8], out: &mut Vec<u8>) {
    for &b in raw {
        let mut buf = [0u8; 4];
        out.extend_from_slice(BYTE_TO_CHAR[b as usize].encode_utf8(&mut buf).as_bytes());
    }
}

impl BpeTables {
    pub fn new(tok: &Tokenizer, merges: &[Vec<u8>]) -> Result<Self, TokenizerError> {
        let n_vocab = tok.spans.len() as u32;
        let mut extra = ByteMap::with_capacity(64, 1024);
        let mut map: HashMap<u64, (u32, u32)> = HashMap::with_capacity(merges.len());
        let mut joined: Vec<u8> = Vec::new();
        for (rank, m) in merges.iter().enumerate() {
            // The separator is the first space after the first byte, so that a
            // left side may itself be a space.
            let sep = m
                .iter()
                .skip(1)
                .position(|&b| b == b' ')
                .map(|p| p + 1)
                .ok_or_else(|| TokenizerError::MalformedMerge {
                    index: rank,
                    merge: String::from_utf8_lossy(m).into_owned(),
                })?;
            let (left, right) = (&m[..sep], &m[sep + 1..]);
            let id = |s: &[u8]| {
                tok.token_to_id
                    .get(s)
                    .ok_or_else(|| TokenizerError::MergeUnknownToken {
                        index: rank,
                        token: String::from_utf8_lossy(s).into_owned(),
                    })
            };
            let (l, r) = (id(left)?, id(right)?);
            joined.clear();
            joined.extend_from_slice(left);
            joined.extend_from_slice(right);
            let merged = match tok.token_to_id.get(&joined) {
                Some(id) => id,
                None => match extra.get(&joined) {
                    Some(id) => id,
                    None => {
                        let id = n_vocab + extra.len() as u32;
                        extra.insert(&joined, id);
                        id
                    }
                },
            };
            // An earlier (better) rule for the same pair wins.
            map.entry(pair(l, r)).or_insert((rank as u32, merged));
        }
        let mut byte_sym = [NONE; 256];
        let mut buf = Vec::new();
        for b in 0..=255u8 {
            buf.clear();
            byte_encode(&[b], &mut buf);
            byte_sym[b as usize] = tok.token_to_id.get(&buf).unwrap_or(NONE);
        }
        Ok(BpeTables {
            merges: map,
            byte_sym,
        })
    }
}

#[derive(Clone, Copy)]
struct Sym {
    /// Byte range in the word.
    start: u32,
    len: u32,
    id: u32,
    prev: u32,
    next: u32,
}

/// Reusable buffers for encoding many words.
#[derive(Default)]
pub(crate) struct BpeScratch {
    syms: Vec<Sym>,
    /// `Reverse((rank, left, right, size))`: the lowest rank, then the leftmost.
    heap: BinaryHeap<Reverse<(u32, u32, u32, u32)>>,
    encoded: Vec<u8>,
}

impl Tokenizer {
    /// Tokenizes one pre-tokenized word given as raw bytes.
    pub(crate) fn bpe_word(
        &self,
        tables: &BpeTables,
        word: &[u8],
        s: &mut BpeScratch,
        out: &mut Vec<u32>,
    ) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges {
            s.encoded.clear();
            byte_encode(word, &mut s.encoded);
            if let Some(id) = self.token_to_id.get(&s.encoded) {
                out.push(id);
                return;
            }
        }
        s.syms.clear();
        s.heap.clear();
        let n = word.len() as u32;
        for (i, &b) in word.iter().enumerate() {
            let i = i as u32;
            s.syms.push(Sym {
                start: i,
                len: 1,
                id: tables.byte_sym[b as usize],
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            });
        }
        let add =
            |syms: &[Sym], heap: &mut BinaryHeap<Reverse<(u32, u32, u32, u32)>>, l: u32, r: u32| {
                if l == NONE || r == NONE {
                    return;
                }
                let (Some(ls), Some(rs)) = (syms.get(l as usize), syms.get(r as usize)) else {
                    return;
                };
                if ls.id == NONE || rs.id == NONE {
                    return;
                }
                if let Some(&(rank, _)) = tables.merges.get(&pair(ls.id, rs.id)) {
                    heap.push(Reverse((rank, l, r, ls.len + rs.len)));
                }
            };
        for i in 1..n {
            add(&s.syms, &mut s.heap, i - 1, i);
        }
        while let Some(Reverse((_, l, r, size))) = s.heap.pop() {
            let (Some(&ls), Some(&rs)) = (s.syms.get(l as usize), s.syms.get(r as usize)) else {
                continue;
            };
            // Stale entry: one side has been merged away or has grown since.
            if ls.len == 0 || rs.len == 0 || ls.len + rs.len != size {
                continue;
            }
            let merged = tables
                .merges
                .get(&pair(ls.id, rs.id))
                .map_or(NONE, |&(_, m)| m);
            if let Some(x) = s.syms.get_mut(l as usize) {
                x.len += rs.len;
                x.id = merged;
                x.next = rs.next;
            }
            if let Some(x) = s.syms.get_mut(r as usize) {
                x.len = 0;
            }
            if rs.next != NONE {
                if let Some(x) = s.syms.get_mut(rs.next as usize) {
                    x.prev = l;
                }
            }
            add(&s.syms, &mut s.heap, ls.prev, l);
            add(&s.syms, &mut s.heap, l, rs.next);
        }
        let n_vocab = self.spans.len() as u32;
        let mut i = 0u32;
        while let Some(sym) = s.syms.get(i as usize) {
            if sym.id < n_vocab {
                out.push(sym.id);
            } else {
                // No token for the symbol: llama.cpp looks up each byte of its
                // byte-level text on its own and drops those that are no token.
                s.encoded.clear();
                let raw = word
                    .get(sym.start as usize..(sym.start + sym.len) as usize)
                    .unwrap_or(&[]);
                byte_encode(raw, &mut s.encoded);
                for &b in &s.encoded {
                    let t = self.byte_tokens[b as usize];
                    if t != NONE {
                        out.push(t);
                    }
                }
            }
            i = sym.next;
        }
    }
}
