//! Unicode facts the tokenizers need: per-codepoint category flags as llama.cpp
//! uses them in its pre-tokenizers, and the GPT-2 byte <-> character mapping.
//!
//! Categories come from the `unicode-general-category` crate (Unicode 16.0).
//! llama.cpp's own tables were generated from Unicode 15.1, so the characters
//! first assigned in Unicode 16.0 are "undefined" there but letters, numbers,
//! marks or symbols here. For the pre-tokenizers an undefined character behaves
//! like punctuation, so only text in the scripts new in 16.0 (Garay, Todhri,
//! Kirat Rai, ...) could split differently; [`UNICODE16_NEW`] lists those ranges
//! and maps them back to "undefined". With that, [`flags`] was compared with
//! llama.cpp's table (`unicode-data.cpp`, categories plus its whitespace set) for
//! every codepoint: no differences.

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// Category and helper bits of one codepoint. Within a text every codepoint has
/// at least one bit set; [`Flags::NONE`] stands for "outside the text".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    pub const NONE: Flags = Flags(0);
    const UNDEFINED: u16 = 1 << 0;
    const NUMBER: u16 = 1 << 1;
    const LETTER: u16 = 1 << 2;
    const SEPARATOR: u16 = 1 << 3;
    const MARK: u16 = 1 << 4;
    const PUNCTUATION: u16 = 1 << 5;
    const SYMBOL: u16 = 1 << 6;
    const CONTROL: u16 = 1 << 7;
    const WHITESPACE: u16 = 1 << 8;

    #[inline]
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    #[inline]
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    #[inline]
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    #[inline]
    pub fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }
    #[inline]
    #[allow(dead_code)] // for pre-tokenizers whose letter runs take marks (qwen35)
    pub fn is_mark(self) -> bool {
        self.0 & Self::MARK != 0
    }
    /// True for every codepoint inside the text (some category bit is set).
    #[inline]
    pub fn is_some(self) -> bool {
        self.0 != 0
    }
}

/// The `White_Space` property: llama.cpp's `\s` for its scanners. Note that
/// U+001C..U+001F are not in it (Python's `str.isspace` would say yes).
fn is_white_space(c: u32) -> bool {
    matches!(
        c,
        0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000
    )
}

/// Ranges (inclusive) of codepoints first assigned in Unicode 16.0; llama.cpp's
/// Unicode 15.1 tables call them undefined.
pub(crate) const UNICODE16_NEW: &[(u32, u32)] = &[
    (0x0897, 0x0897),
    (0x1B4E, 0x1B4F),
    (0x1B7F, 0x1B7F),
    (0x1C89, 0x1C8A),
    (0x2427, 0x2429),
    (0x31E4, 0x31E5),
    (0xA7CB, 0xA7CD),
    (0xA7DA, 0xA7DC),
    (0x105C0, 0x105F3),
    (0x10D40, 0x10D65),
    (0x10D69, 0x10D85),
    (0x10D8E, 0x10D8F),
    (0x10EC2, 0x10EC4),
    (0x10EFC, 0x10EFC),
    (0x11380, 0x11389),
    (0x1138B, 0x1138B),
    (0x1138E, 0x1138E),
    (0x11390, 0x113B5),
    (0x113B7, 0x113C0),
    (0x113C2, 0x113C2),
    (0x113C5, 0x113C5),
    (0x113C7, 0x113CA),
    (0x113CC, 0x113D5),
    (0x113D7, 0x113D8),
    (0x113E1, 0x113E2),
    (0x116D0, 0x116E3),
    (0x11BC0, 0x11BE1),
    (0x11BF0, 0x11BF9),
    (0x11F5A, 0x11F5A),
    (0x13460, 0x143FA),
    (0x16100, 0x16139),
    (0x16D40, 0x16D79),
    (0x18CFF, 0x18CFF),
    (0x1CC00, 0x1CCF9),
    (0x1CD00, 0x1CEB3),
    (0x1E5D0, 0x1E5FA),
    (0x1E5FF, 0x1E5FF),
    (0x1F8B2, 0x1F8BB),
    (0x1F8C0, 0x1F8C1),
    (0x1FA89, 0x1FA89),
    (0x1FA8F, 0x1FA8F),
    (0x1FABE, 0x1FABE),
    (0x1FAC6, 0x1FAC6),
    (0x1FADC, 0x1FADC),
    (0x1FADF, 0x1FADF),
    (0x1FAE9, 0x1FAE9),
    (0x1FBCB, 0x1FBEF),
];

fn is_unicode16_new(c: u32) -> bool {
    UNICODE16_NEW
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                core::cmp::Ordering::Less
            } else if lo > c {
                core::cmp::Ordering::Greater
            } else {
                core::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Flags of one codepoint, as llama.cpp's pre-tokenizers see it.
pub(crate) fn flags(c: char) -> Flags {
    let cp = c as u32;
    let ws = if is_white_space(cp) {
        Flags::WHITESPACE
    } else {
        0
    };
    if cp < 0x80 {
        // ASCII fast path: the categories of ASCII are stable across versions.
        let b = cp as u8;
        let cat = match b {
            b'0'..=b'9' => Flags::NUMBER,
            b'A'..=b'Z' | b'a'..=b'z' => Flags::LETTER,
            b' ' => Flags::SEPARATOR,
            b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~' => Flags::SYMBOL,
            0x00..=0x1F | 0x7F => Flags::CONTROL,
            _ => Flags::PUNCTUATION,
        };
        return Flags(cat | ws);
    }
    if is_unicode16_new(cp) {
        return Flags(Flags::UNDEFINED | ws);
    }
    let cat = match get_general_category(c) {
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => Flags::LETTER,
        G::NonspacingMark | G::SpacingMark | G::EnclosingMark => Flags::MARK,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Flags::NUMBER,
        G::ConnectorPunctuation
        | G::DashPunctuation
        | G::OpenPunctuation
        | G::ClosePunctuation
        | G::InitialPunctuation
        | G::FinalPunctuation
        | G::OtherPunctuation => Flags::PUNCTUATION,
        G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol => Flags::SYMBOL,
        G::SpaceSeparator | G::LineSeparator | G::ParagraphSeparator => Flags::SEPARATOR,
        G::Control | G::Format | G::Surrogate | G::PrivateUse => Flags::CONTROL,
        // Unassigned, and any category a later crate version might add.
        _ => Flags::UNDEFINED,
    };
    Flags(cat | ws)
}

/// Character standing for `byte` in GPT-2's byte-level vocabularies: printable
/// Latin-1 bytes stand for themselves, the other 68 bytes are moved in order to
/// U+0100 onwards.
pub(crate) const BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

const fn byte_is_printable(b: usize) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 0x100u32;
    let mut b = 0;
    while b < 256 {
        let cp = if byte_is_printable(b) {
            b as u32
        } else {
            let c = next;
            next += 1;
            c
        };
        out[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    out
}

/// Inverse of [`BYTE_TO_CHAR`].
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        if byte_is_printable(cp as usize) {
            return Some(cp as u8);
        }
        return None;
    }
    if cp < 0x100 + 68 {
        // The moved bytes keep their order, so the n-th moved byte is found by counting.
        let n = cp - 0x100;
        let mut seen = 0;
        let mut b = 0usize;
        while b < 256 {
            if !byte_is_printable(b) {
                if seen == n {
                    return Some(b as u8);
                }
                seen += 1;
            }
            b += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], '\u{120}');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], '\u{10A}');
        assert_eq!(BYTE_TO_CHAR[b'A' as usize], 'A');
        assert_eq!(char_to_byte('\u{144}'), None);
    }

    #[test]
    fn flags_basics() {
        assert!(flags('a').is_letter());
        assert!(flags('é').is_letter());
        assert!(flags('٣').is_number());
        assert!(flags('\u{3000}').is_whitespace());
        assert!(!flags('\u{1C}').is_whitespace());
        assert!(flags('\u{200B}').is_some() && !flags('\u{200B}').is_whitespace());
        // A Todhri letter (new in Unicode 16) is undefined, as in llama.cpp.
        assert!(!flags('\u{105C0}').is_letter());
    }
}
