//! SentencePiece-style tokenizer (`tokenizer.ggml.model = "llama"`), matching
//! llama.cpp's `llm_tokenizer_spm_session`: the text (spaces already turned into
//! U+2581) starts as one symbol per UTF-8 character; the adjacent pair whose
//! concatenation is the token with the highest score is merged first (ties: the
//! leftmost), until no pair forms a token. Symbols that are not tokens fall back
//! to `<0xXX>` byte tokens.

use crate::Tokenizer;
use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Ordering;

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Greater = popped first: higher score, then smaller left index. Scores are
    /// compared with `<` both ways (as llama.cpp does), so -0.0 ties with 0.0.
    fn cmp(&self, other: &Self) -> Ordering {
        if self.score < other.score {
            Ordering::Less
        } else if other.score < self.score {
            Ordering::Greater
        } else {
            other.left.cmp(&self.left)
        }
    }
}

/// Length of the UTF-8 sequence a lead byte announces (1 for stray bytes).
fn utf8_len(b: u8) -> usize {
    match b >> 4 {
        0xC | 0xD => 2,
        0xE => 3,
        0xF => 4,
        _ => 1,
    }
}

#[derive(Default)]
pub(crate) struct SpmScratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
}

impl Tokenizer {
    /// Tokenizes `text`, which already has its spaces escaped.
    pub(crate) fn spm_text(&self, text: &[u8], s: &mut SpmScratch, out: &mut Vec<u32>) {
        s.syms.clear();
        s.heap.clear();
        let mut off = 0usize;
        while off < text.len() {
            let len = utf8_len(text[off]).min(text.len() - off);
            let idx = s.syms.len() as u32;
            s.syms.push(Sym {
                start: off as u32,
                len: len as u32,
                prev: if idx == 0 { NONE } else { idx - 1 },
                next: if off + len == text.len() {
                    NONE
                } else {
                    idx + 1
                },
            });
            off += len;
        }
        let try_add = |syms: &[Sym], heap: &mut BinaryHeap<Bigram>, l: u32, r: u32| {
            if l == NONE || r == NONE {
                return;
            }
            let (Some(ls), Some(rs)) = (syms.get(l as usize), syms.get(r as usize)) else {
                return;
            };
            let start = ls.start as usize;
            let size = (ls.len + rs.len) as usize;
            let Some(piece) = text.get(start..start + size) else {
                return;
            };
            if let Some(id) = self.token_to_id.get(piece) {
                let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
                heap.push(Bigram {
                    score,
                    left: l,
                    right: r,
                    size: size as u32,
                });
            }
        };
        for i in 1..s.syms.len() as u32 {
            try_add(&s.syms, &mut s.heap, i - 1, i);
        }
        while let Some(b) = s.heap.pop() {
            let (Some(&ls), Some(&rs)) =
                (s.syms.get(b.left as usize), s.syms.get(b.right as usize))
            else {
                continue;
            };
            if ls.len == 0 || rs.len == 0 || ls.len + rs.len != b.size {
                continue;
            }
            if let Some(x) = s.syms.get_mut(b.left as usize) {
                x.len += rs.len;
                x.next = rs.next;
            }
            if let Some(x) = s.syms.get_mut(b.right as usize) {
                x.len = 0;
            }
            if rs.next != NONE {
                if let Some(x) = s.syms.get_mut(rs.next as usize) {
                    x.prev = b.left;
                }
            }
            try_add(&s.syms, &mut s.heap, ls.prev, b.left);
            try_add(&s.syms, &mut s.heap, b.left, rs.next);
        }
        let mut i = if s.syms.is_empty() { NONE } else { 0 };
        while let Some(sym) = s.syms.get(i as usize) {
            let piece = text
                .get(sym.start as usize..(sym.start + sym.len) as usize)
                .unwrap_or(&[]);
            match self.token_to_id.get(piece) {
                Some(id) => out.push(id),
                None => {
                    // Every merged symbol is a token, so this is one character
                    // the vocabulary lacks: emit its bytes.
                    for &byte in piece {
                        let t = self.byte_tokens[byte as usize];
                        if t != NONE {
                            out.push(t);
                        } else if let Some(unk) = self.unk {
                            out.push(unk);
                        }
                    }
                }
            }
            i = sym.next;
        }
    }
}
