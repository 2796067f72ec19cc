//! Kernel command line options (from GRUB's `multiboot2` line), e.g. `test`, `quiet`,
//! `model=NAME`, `threads=N`, `ctx=N`, `exec="cmd; cmd"`.

/// Options the kernel understands; unknown words are ignored. Values borrow from the
/// command line (no allocation: the flags are needed before the heap exists).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Options<'a> {
    /// Run the in-kernel test table and exit QEMU with the result.
    pub test: bool,
    /// Panic on purpose after boot (checks the panic path and backtrace).
    pub panic_test: bool,
    /// Do not start application processors.
    pub nosmp: bool,
    /// Write to kernel code on purpose (checks the exception report).
    pub fault_test: bool,
    /// Overflow the stack on purpose (checks the guard page and the double-fault stack).
    pub overflow_test: bool,
    /// Fewer boot messages.
    pub quiet: bool,
    /// Model to load and make active at boot (`model=NAME`).
    pub model: Option<&'a str>,
    /// Worker limit for inference (`threads=N`; None when absent or not a number).
    pub threads: Option<usize>,
    /// The text of `threads=` when it is not a positive number (reported at boot).
    pub bad_threads: Option<&'a str>,
    /// Shell commands to run at boot, separated by `;` (`exec="cmd; cmd"`).
    pub exec: Option<&'a str>,
    /// Context positions `load` gives a model by default (`ctx=N`).
    pub context: Option<usize>,
}

/// Splits a command line into words at spaces outside double quotes. GRUB quotes a
/// whole argument that contains spaces (`"exec=a; b"`), a hand-written line may quote
/// only the value (`exec="a; b"`); both keep their spaces.
pub fn words(line: &str) -> impl Iterator<Item = &str> {
    let mut rest = line;
    core::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '"' => quoted = !quoted,
                c if c.is_ascii_whitespace() && !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let (word, tail) = rest.split_at(end);
        rest = tail;
        Some(word)
    })
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

impl<'a> Options<'a> {
    /// Parses a command line.
    pub fn parse(line: &'a str) -> Self {
        let mut o = Options::default();
        for word in words(line) {
            let word = unquote(word);
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(unquote(v))),
                None => (word, None),
            };
            match (key, value) {
                ("test", None) => o.test = true,
                ("panic-test", None) => o.panic_test = true,
                ("nosmp", None) => o.nosmp = true,
                ("fault-test", None) => o.fault_test = true,
                ("overflow-test", None) => o.overflow_test = true,
                ("quiet", None) => o.quiet = true,
                ("model", Some(v)) if !v.is_empty() => o.model = Some(v),
                ("threads", Some(v)) => match v.parse::<usize>() {
                    Ok(n) if n > 0 => o.threads = Some(n),
                    _ => o.bad_threads = Some(v),
                },
                ("exec", Some(v)) => o.exec = Some(v),
                ("ctx", Some(v)) => o.context = v.parse::<usize>().ok().filter(|&n| n > 0),
                _ => {}
            }
        }
        o
    }
}
