//! Pre-tokenizers for byte-level BPE: hand-written scanners that split text into
//! the words BPE merges within, giving the same splits as llama.cpp's regex lists
//! for each `tokenizer.ggml.pre` value.
//!
//! llama.cpp applies a list of patterns one after another; each pattern splits
//! every piece left by the previous one, never across. A piece's ends act as the
//! text's ends for look-aheads such as `\s+(?!\S)`. The same staging is kept here:
//! [`Stage`] is one pattern and a pre-tokenizer is a short list of stages.

use crate::unicode::{flags, Flags};
use alloc::vec::Vec;

/// One splitting pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Each codepoint of category N is its own piece (`\p{N}`).
    EachNumber,
    /// Runs of category N are pieces (`\p{N}+`).
    NumberRuns,
    /// Runs of punctuation, or of the ASCII symbols `$+<=>^~|`, are pieces
    /// (`[\p{P}\$\+<=>\^~\|]+`).
    PunctuationRuns,
    /// Groups of three ASCII digits, from the left (`[0-9][0-9][0-9]`).
    AsciiDigitTriples,
    /// GPT-2's pattern: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Llama 3's pattern (`\p{N}{1,3}`) when the value is 3, Qwen 2's (`\p{N}`)
    /// when it is 1: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,n}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Llama3 { max_digits: usize },
}

/// What a `tokenizer.ggml.pre` value means for a BPE vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PreConfig {
    pub stages: &'static [Stage],
    /// Undo the spaces before punctuation when decoding (`clean_spaces`).
    pub clean_spaces: bool,
    /// A word that is itself a token is taken whole, without merging.
    pub ignore_merges: bool,
    /// Default for `add_bos` when the file does not say.
    pub add_bos: bool,
}

const DEFAULT: &[Stage] = &[
    Stage::PunctuationRuns,
    Stage::Gpt2,
    Stage::NumberRuns,
    Stage::AsciiDigitTriples,
];
const GPT2: &[Stage] = &[Stage::Gpt2];
const DIGITS_GPT2: &[Stage] = &[Stage::EachNumber, Stage::Gpt2];
const LLAMA3: &[Stage] = &[Stage::Llama3 { max_digits: 3 }];
const QWEN2: &[Stage] = &[Stage::Llama3 { max_digits: 1 }];

/// The pre-tokenizer for `name` (`""` when the file has no `tokenizer.ggml.pre`).
/// Names are grouped as in llama.cpp; a name not listed gives `None`.
pub(crate) fn lookup(name: &str) -> Option<PreConfig> {
    let cfg = |stages, clean_spaces, ignore_merges, add_bos| PreConfig {
        stages,
        clean_spaces,
        ignore_merges,
        add_bos,
    };
    Some(match name {
        "" | "default" => cfg(DEFAULT, true, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => cfg(LLAMA3, true, true, true),
        "dbrx" | "smaug-bpe" => cfg(LLAMA3, true, false, false),
        "mpt" | "olmo" | "jais" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat"
        | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" => {
            cfg(GPT2, true, false, false)
        }
        "trillion" | "granite-docling" => cfg(GPT2, false, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            cfg(DIGITS_GPT2, true, false, false)
        }
        "smollm" | "command-r" => cfg(DIGITS_GPT2, false, false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
            cfg(QWEN2, false, false, false)
        }
        "stablelm2" | "megrez" => cfg(QWEN2, true, false, false),
        _ => return None,
    })
}

/// Splits `text` into words; returns byte ranges into `text`, in order, covering it.
pub(crate) fn split(text: &str, stages: &[Stage]) -> Vec<(usize, usize)> {
    let mut cpts: Vec<char> = Vec::with_capacity(text.len());
    let mut offs: Vec<usize> = Vec::with_capacity(text.len() + 1);
    for (i, c) in text.char_indices() {
        cpts.push(c);
        offs.push(i);
    }
    offs.push(text.len());
    let fl: Vec<Flags> = cpts.iter().map(|&c| flags(c)).collect();

    let mut pieces: Vec<(usize, usize)> = Vec::new();
    if !cpts.is_empty() {
        pieces.push((0, cpts.len()));
    }
    let mut next: Vec<(usize, usize)> = Vec::with_capacity(cpts.len() / 2 + 1);
    for stage in stages {
        next.clear();
        for &(ini, end) in &pieces {
            let mut s = Scanner {
                cpts: &cpts,
                fl: &fl,
                ini,
                end,
                prev: ini,
                out: &mut next,
            };
            s.run(*stage);
        }
        core::mem::swap(&mut pieces, &mut next);
    }
    pieces
        .iter()
        .map(|&(a, b)| {
            (
                offs.get(a).copied().unwrap_or(0),
                offs.get(b).copied().unwrap_or(0),
            )
        })
        .collect()
}

/// One stage applied to one piece `[ini, end)` of the codepoints.
struct Scanner<'a> {
    cpts: &'a [char],
    fl: &'a [Flags],
    ini: usize,
    end: usize,
    /// End of the last emitted word.
    prev: usize,
    out: &'a mut Vec<(usize, usize)>,
}

impl Scanner<'_> {
    /// The codepoint at `pos`, or `None` outside the piece.
    #[inline]
    fn cpt(&self, pos: usize) -> Option<char> {
        if pos >= self.ini && pos < self.end {
            self.cpts.get(pos).copied()
        } else {
            None
        }
    }

    #[inline]
    fn flags(&self, pos: usize) -> Flags {
        if pos >= self.ini && pos < self.end {
            self.fl.get(pos).copied().unwrap_or(Flags::NONE)
        } else {
            Flags::NONE
        }
    }

    /// Emits the word from the previous end up to `end` (nothing if empty).
    #[inline]
    fn emit(&mut self, end: usize) {
        if end > self.prev {
            self.out.push((self.prev, end));
        }
        self.prev = end;
    }

    fn run(&mut self, stage: Stage) {
        match stage {
            Stage::EachNumber => self.isolate(|_, f| f.is_number(), false),
            Stage::NumberRuns => self.isolate(|_, f| f.is_number(), true),
            Stage::PunctuationRuns => self.isolate(
                |c, f| {
                    if (c as u32) < 0x80 {
                        // ASCII punctuation and symbols except '`', as in llama.cpp's class.
                        c.is_ascii_punctuation() && c != '`'
                    } else {
                        f.is_punctuation() && !f.is_whitespace()
                    }
                },
                true,
            ),
            Stage::AsciiDigitTriples => self.digit_triples(),
            Stage::Gpt2 => self.gpt2(),
            Stage::Llama3 { max_digits } => self.llama3(max_digits),
        }
        self.emit(self.end);
    }

    /// Matches of a one-codepoint class (or runs of it) become words; the text
    /// between matches forms words too.
    fn isolate(&mut self, class: impl Fn(char, Flags) -> bool, runs: bool) {
        let mut pos = self.ini;
        while pos < self.end {
            let c = self.cpts.get(pos).copied().unwrap_or('\0');
            if class(c, self.flags(pos)) {
                self.emit(pos);
                pos += 1;
                if runs {
                    while pos < self.end
                        && class(self.cpts.get(pos).copied().unwrap_or('\0'), self.flags(pos))
                    {
                        pos += 1;
                    }
                }
                self.emit(pos);
            } else {
                pos += 1;
            }
        }
    }

    fn digit_triples(&mut self) {
        let is_digit = |s: &Self, p: usize| s.cpt(p).is_some_and(|c| c.is_ascii_digit());
        let mut pos = self.ini;
        while pos < self.end {
            if is_digit(self, pos) && is_digit(self, pos + 1) && is_digit(self, pos + 2) {
                self.emit(pos);
                pos += 3;
                self.emit(pos);
            } else {
                pos += 1;
            }
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` (lower case only when `fold` is false).
    /// Returns the length of the contraction at `pos`, if any.
    fn contraction(&self, pos: usize, fold: bool) -> Option<usize> {
        if self.cpt(pos) != Some('\'') || pos + 1 >= self.end {
            return None;
        }
        let low = |c: Option<char>| c.map(|c| if fold { c.to_ascii_lowercase() } else { c });
        let n1 = low(self.cpt(pos + 1));
        if matches!(n1, Some('s' | 't' | 'm' | 'd')) {
            return Some(2);
        }
        if pos + 2 < self.end {
            let n2 = low(self.cpt(pos + 2));
            if matches!(
                (n1, n2),
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
            ) {
                return Some(3);
            }
        }
        None
    }

    /// Length of the whitespace run at `pos`.
    fn whitespace_run(&self, pos: usize) -> usize {
        let mut n = 0;
        while self.flags(pos + n).is_whitespace() {
            n += 1;
        }
        n
    }

    fn gpt2(&mut self) {
        let mut pos = self.ini;
        while pos < self.end {
            let c = self.cpt(pos);
            let f = self.flags(pos);
            if let Some(n) = self.contraction(pos, false) {
                pos += n;
                self.emit(pos);
                continue;
            }
            let space = c == Some(' ');
            // An optional leading space joins the run that follows it.
            let f2 = if space { self.flags(pos + 1) } else { f };
            let other =
                |f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.is_some();
            if f2.is_letter() || f2.is_number() || other(f2) {
                let class = |g: Flags| {
                    if f2.is_letter() {
                        g.is_letter()
                    } else if f2.is_number() {
                        g.is_number()
                    } else {
                        other(g)
                    }
                };
                pos += usize::from(space);
                let mut g = f2;
                while class(g) {
                    pos += 1;
                    g = self.flags(pos);
                }
                self.emit(pos);
                continue;
            }
            let nws = self.whitespace_run(pos);
            // `\s+(?!\S)`: leave the last space for the word that follows.
            if nws > 1 && self.cpt(pos + nws).is_some() {
                pos += nws - 1;
                self.emit(pos);
                continue;
            }
            if nws > 0 {
                pos += nws;
                self.emit(pos);
                continue;
            }
            pos += 1;
            self.emit(pos);
        }
    }

    fn llama3(&mut self, max_digits: usize) {
        let mut pos = self.ini;
        while pos < self.end {
            let c = self.cpt(pos);
            let f = self.flags(pos);
            if let Some(n) = self.contraction(pos, true) {
                pos += n;
                self.emit(pos);
                continue;
            }
            // `[^\r\n\p{L}\p{N}]?\p{L}+`
            if !(c == Some('\r') || c == Some('\n') || f.is_number())
                && (f.is_letter() || self.flags(pos + 1).is_letter())
            {
                pos += 1;
                while self.flags(pos).is_letter() {
                    pos += 1;
                }
                self.emit(pos);
                continue;
            }
            // `\p{N}{1,n}`
            if f.is_number() {
                let mut ini = pos;
                while self.flags(pos).is_number() {
                    pos += 1;
                    if pos - ini >= max_digits {
                        self.emit(pos);
                        ini = pos;
                    }
                }
                self.emit(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            let mut f2 = if c == Some(' ') {
                self.flags(pos + 1)
            } else {
                f
            };
            if !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f.is_some() {
                pos += usize::from(c == Some(' '));
                while !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f2.is_some() {
                    pos += 1;
                    f2 = self.flags(pos);
                }
                while matches!(self.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                self.emit(pos);
                continue;
            }
            let mut nws = 0;
            let mut last_nl_end = 0;
            while self.flags(pos + nws).is_whitespace() {
                if matches!(self.cpt(pos + nws), Some('\r' | '\n')) {
                    last_nl_end = pos + nws + 1;
                }
                nws += 1;
            }
            // `\s*[\r\n]+`
            if last_nl_end > 0 {
                pos = last_nl_end;
                self.emit(pos);
                continue;
            }
            // `\s+(?!\S)`
            if nws > 1 && self.cpt(pos + nws).is_some() {
                pos += nws - 1;
                self.emit(pos);
                continue;
            }
            if nws > 0 {
                pos += nws;
                self.emit(pos);
                continue;
            }
            pos += 1;
            self.emit(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn words<'a>(text: &'a str, stages: &[Stage]) -> Vec<&'a str> {
        split(text, stages)
            .iter()
            .map(|&(a, b)| &text[a..b])
            .collect()
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words("Hello world's  end 42!!", GPT2),
            ["Hello", " world", "'s", " ", " end", " 42", "!!"]
        );
        assert_eq!(words("a   ", GPT2), ["a", "   "]);
        assert_eq!(words("", GPT2), Vec::<&str>::new());
    }

    #[test]
    fn smollm_isolates_digits() {
        assert_eq!(words("x 123", DIGITS_GPT2), ["x", " ", "1", "2", "3"]);
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            words("I'LL 12345\n\n x", LLAMA3),
            ["I", "'LL", " ", "123", "45", "\n\n", " x"]
        );
    }

    #[test]
    fn default_words() {
        assert_eq!(
            words("a+b 1234567", DEFAULT),
            ["a", "+", "b", " ", "123", "456", "7"]
        );
    }
}
