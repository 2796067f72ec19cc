//! Cutting special tokens (control, user-defined, unknown) out of the text before
//! the tokenizer proper runs, as llama.cpp's `tokenizer_st_partition` does.
//!
//! llama.cpp takes the special tokens longest first and, for each, splits every
//! remaining text fragment at all its occurrences, left to right. A prefix trie
//! finds which special tokens occur in the text at all, so that the exact
//! per-token procedure only runs for those few instead of for all 6,400 of
//! Gemma's special tokens.

use crate::vocab::attr;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// A piece of the input: raw text to tokenize, or a token already decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frag {
    /// Byte range of the input.
    Text(usize, usize),
    Token(u32),
}

const NONE: u32 = u32::MAX;

pub(crate) struct SpecialTokens {
    /// Special token ids, longest text first.
    order: Vec<u32>,
    /// Trie over the texts: child of the root per first byte.
    root: [u32; 256],
    /// `(node, byte) -> child`, sorted, for the deeper levels.
    edges: Vec<((u32, u8), u32)>,
    /// Per node: position in `order` of the token ending there, or `NONE`.
    terminal: Vec<u32>,
}

impl SpecialTokens {
    pub fn new(order: Vec<u32>, text: &[u8], spans: &[(u32, u32)]) -> Self {
        let mut root = [NONE; 256];
        let mut edges: BTreeMap<(u32, u8), u32> = BTreeMap::new();
        // Node 0 is the root itself.
        let mut terminal: Vec<u32> = alloc::vec![NONE];
        for (pos, &id) in order.iter().enumerate() {
            let Some(&(s, l)) = spans.get(id as usize) else {
                continue;
            };
            let Some(t) = text.get(s as usize..(s + l) as usize) else {
                continue;
            };
            let mut node = 0u32;
            for (k, &b) in t.iter().enumerate() {
                let next = if k == 0 {
                    root[b as usize]
                } else {
                    edges.get(&(node, b)).copied().unwrap_or(NONE)
                };
                node = if next == NONE {
                    let new = terminal.len() as u32;
                    terminal.push(NONE);
                    if k == 0 {
                        root[b as usize] = new;
                    } else {
                        edges.insert((node, b), new);
                    }
                    new
                } else {
                    next
                };
            }
            if node != 0 {
                if let Some(slot) = terminal.get_mut(node as usize) {
                    // Equal texts: the first in `order` is the one llama.cpp would cut.
                    if *slot == NONE {
                        *slot = pos as u32;
                    }
                }
            }
        }
        SpecialTokens {
            order,
            root,
            edges: edges.into_iter().collect(),
            terminal,
        }
    }

    fn child(&self, node: u32, b: u8) -> u32 {
        if node == 0 {
            return self.root[b as usize];
        }
        match self.edges.binary_search_by(|e| e.0.cmp(&(node, b))) {
            Ok(i) => self.edges.get(i).map_or(NONE, |e| e.1),
            Err(_) => NONE,
        }
    }

    /// Positions in `order` of the special tokens that occur in `text`, ascending.
    fn occurring(&self, text: &[u8]) -> Vec<u32> {
        let mut found = Vec::new();
        for start in 0..text.len() {
            let mut node = 0u32;
            for &b in text.get(start..).unwrap_or(&[]) {
                node = self.child(node, b);
                if node == NONE {
                    break;
                }
                let t = self.terminal.get(node as usize).copied().unwrap_or(NONE);
                if t != NONE {
                    found.push(t);
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Splits `text` into fragments. With `parse_special` false, control and
    /// unknown tokens stay text but user-defined tokens are still cut out.
    /// `token_text` gives a token's text, `attrs` the token attributes.
    pub fn partition<'t>(
        &self,
        text: &[u8],
        parse_special: bool,
        token_text: impl Fn(u32) -> &'t [u8],
        attrs: &[u16],
    ) -> Vec<Frag> {
        let mut frags: Vec<Frag> = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Frag::Text(0, text.len()));
        let mut next: Vec<Frag> = Vec::new();
        for pos in self.occurring(text) {
            let Some(&id) = self.order.get(pos as usize) else {
                continue;
            };
            let a = attrs.get(id as usize).copied().unwrap_or(0);
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = token_text(id);
            if needle.is_empty() {
                continue;
            }
            next.clear();
            for &f in &frags {
                let Frag::Text(mut start, end) = f else {
                    next.push(f);
                    continue;
                };
                loop {
                    let hay = text.get(start..end).unwrap_or(&[]);
                    let Some(at) = find(hay, needle) else {
                        if end > start {
                            next.push(Frag::Text(start, end));
                        }
                        break;
                    };
                    let m = start + at;
                    let mut left_end = m;
                    if a & attr::LSTRIP != 0 {
                        while left_end > start && is_c_space(text.get(left_end - 1)) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Frag::Text(start, left_end));
                    }
                    next.push(Frag::Token(id));
                    let mut right = m + needle.len();
                    if a & attr::RSTRIP != 0 {
                        while right < end && is_c_space(text.get(right)) {
                            right += 1;
                        }
                    }
                    start = right;
                    if start >= end {
                        break;
                    }
                }
            }
            core::mem::swap(&mut frags, &mut next);
        }
        frags
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: Option<&u8>) -> bool {
    matches!(b, Some(b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r'))
}

/// First occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay
            .get(i..)
            .and_then(|h| h.iter().position(|&b| b == first))
        {
            None => return None,
            Some(p) => {
                let at = i + p;
                if at + needle.len() > hay.len() {
                    return None;
                }
                if hay.get(at + 1..at + needle.len()) == Some(rest) {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_works() {
        assert_eq!(find(b"abcabc", b"ca"), Some(2));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(find(b"", b"a"), None);
    }
}
