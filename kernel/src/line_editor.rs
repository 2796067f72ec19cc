//! Line editor for the serial console: insert/delete with cursor movement (arrow keys,
//! Home/End, Delete), history (up/down), tab completion, Ctrl-C, and Enter as CR, LF
//! or CR LF.

use alloc::string::String;
use alloc::vec::Vec;

/// What a key press produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Nothing to act on yet.
    None,
    /// A complete line (Enter).
    Line(String),
    /// The line was abandoned (Ctrl-C).
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Started,
    Csi(u8),
}

/// Editor state; output (echo, redraws) goes to the `out` callback.
pub struct LineEditor {
    prompt: &'static str,
    buf: Vec<u8>,
    cursor: usize,
    history: Vec<String>,
    hist_pos: usize,
    esc: Esc,
    after_cr: bool,
    completions: &'static [&'static str],
}

const HISTORY_MAX: usize = 64;

impl LineEditor {
    /// A new editor showing `prompt` and completing words from `completions`.
    pub fn new(prompt: &'static str, completions: &'static [&'static str]) -> Self {
        LineEditor {
            prompt,
            buf: Vec::new(),
            cursor: 0,
            history: Vec::new(),
            hist_pos: 0,
            esc: Esc::None,
            after_cr: false,
            completions,
        }
    }

    /// Prints the prompt (start of a new line).
    pub fn start(&mut self, out: &mut dyn FnMut(&[u8])) {
        self.buf.clear();
        self.cursor = 0;
        self.hist_pos = self.history.len();
        out(self.prompt.as_bytes());
    }

    fn redraw(&self, out: &mut dyn FnMut(&[u8])) {
        out(b"\r");
        out(self.prompt.as_bytes());
        out(&self.buf);
        out(b"\x1b[K");
        let back = self.buf.len() - self.cursor;
        if back > 0 {
            let mut s = String::new();
            let _ = core::fmt::write(&mut s, format_args!("\x1b[{back}D"));
            out(s.as_bytes());
        }
    }

    fn set_line(&mut self, line: &str, out: &mut dyn FnMut(&[u8])) {
        self.buf.clear();
        self.buf.extend_from_slice(line.as_bytes());
        self.cursor = self.buf.len();
        self.redraw(out);
    }

    /// Feeds one input byte.
    pub fn feed(&mut self, b: u8, out: &mut dyn FnMut(&[u8])) -> Event {
        let after_cr = core::mem::replace(&mut self.after_cr, false);
        match self.esc {
            Esc::Started => {
                self.esc = if b == b'[' || b == b'O' {
                    Esc::Csi(0)
                } else {
                    Esc::None
                };
                return Event::None;
            }
            Esc::Csi(param) => {
                if b.is_ascii_digit() {
                    self.esc = Esc::Csi(param.saturating_mul(10).saturating_add(b - b'0'));
                    return Event::None;
                }
                self.esc = Esc::None;
                self.csi(b, param, out);
                return Event::None;
            }
            Esc::None => {}
        }
        match b {
            b'\r' | b'\n' => {
                if b == b'\n' && after_cr {
                    return Event::None; // the LF of a CR LF pair
                }
                self.after_cr = b == b'\r';
                out(b"\r\n");
                let line = String::from_utf8_lossy(&core::mem::take(&mut self.buf)).into_owned();
                self.cursor = 0;
                let trimmed = line.trim();
                if !trimmed.is_empty() && self.history.last().map(String::as_str) != Some(trimmed) {
                    if self.history.len() == HISTORY_MAX {
                        self.history.remove(0);
                    }
                    self.history.push(String::from(trimmed));
                }
                self.hist_pos = self.history.len();
                Event::Line(line)
            }
            0x03 => {
                self.buf.clear();
                self.cursor = 0;
                self.hist_pos = self.history.len();
                out(b"^C\r\n");
                Event::Cancel
            }
            0x1b => {
                self.esc = Esc::Started;
                Event::None
            }
            0x7f | 0x08 => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.buf.remove(self.cursor);
                    if self.cursor == self.buf.len() {
                        out(b"\x08 \x08");
                    } else {
                        self.redraw(out);
                    }
                }
                Event::None
            }
            b'\t' => {
                self.complete(out);
                Event::None
            }
            0x01 => {
                self.cursor = 0;
                self.redraw(out);
                Event::None
            }
            0x05 => {
                self.cursor = self.buf.len();
                self.redraw(out);
                Event::None
            }
            0x20..=0x7e => {
                self.buf.insert(self.cursor, b);
                self.cursor += 1;
                if self.cursor == self.buf.len() {
                    out(&[b]);
                } else {
                    self.redraw(out);
                }
                Event::None
            }
            _ => Event::None,
        }
    }

    fn csi(&mut self, b: u8, param: u8, out: &mut dyn FnMut(&[u8])) {
        match b {
            b'A' => {
                if self.hist_pos > 0 {
                    self.hist_pos -= 1;
                    let line = self.history[self.hist_pos].clone();
                    self.set_line(&line, out);
                }
            }
            b'B' => {
                if self.hist_pos < self.history.len() {
                    self.hist_pos += 1;
                    let line = self.history.get(self.hist_pos).cloned().unwrap_or_default();
                    self.set_line(&line, out);
                }
            }
            b'C' if self.cursor < self.buf.len() => {
                self.cursor += 1;
                out(b"\x1b[C");
            }
            b'D' if self.cursor > 0 => {
                self.cursor -= 1;
                out(b"\x1b[D");
            }
            b'H' => {
                self.cursor = 0;
                self.redraw(out);
            }
            b'F' => {
                self.cursor = self.buf.len();
                self.redraw(out);
            }
            b'~' if param == 3 && self.cursor < self.buf.len() => {
                self.buf.remove(self.cursor);
                self.redraw(out);
            }
            _ => {}
        }
    }

    fn complete(&mut self, out: &mut dyn FnMut(&[u8])) {
        // Only the first word (the command) is completed.
        if self.buf.contains(&b' ') {
            return;
        }
        let prefix = String::from_utf8_lossy(&self.buf).into_owned();
        let matches: Vec<&str> = self
            .completions
            .iter()
            .copied()
            .filter(|c| c.starts_with(prefix.as_str()))
            .collect();
        match matches.as_slice() {
            [] => {}
            [one] => {
                let mut line = String::from(*one);
                line.push(' ');
                self.set_line(&line, out);
            }
            many => {
                // Extend to the longest common prefix, or list the candidates.
                let first = many[0];
                let common = (prefix.len()..=first.len())
                    .rev()
                    .find(|&l| many.iter().all(|m| m.len() >= l && m[..l] == first[..l]))
                    .unwrap_or(prefix.len());
                if common > prefix.len() {
                    self.set_line(&first[..common], out);
                } else {
                    out(b"\r\n");
                    for m in many {
                        out(m.as_bytes());
                        out(b"  ");
                    }
                    out(b"\r\n");
                    self.redraw(out);
                }
            }
        }
    }
}

/// Levenshtein edit distance between two short ASCII words.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = alloc::vec![0; b.len() + 1];
    for (i, ca) in a.bytes().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        core::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}
