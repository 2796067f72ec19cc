//! Console output: `print!`/`println!` macros writing to the serial port (COM1).

use core::fmt::{self, Write};

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!($($arg)*)) };
}

/// Prints to the console with a trailing CR LF.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\r\n") };
    ($($arg:tt)*) => {{ $crate::console::print_fmt(format_args!($($arg)*)); $crate::print!("\r\n"); }};
}

/// Writes formatted text; `\n` becomes CR LF so terminals start a new line.
pub fn print_fmt(args: fmt::Arguments) {
    crate::drivers::serial::with_port(|w| {
        let mut w = CrLf(w);
        let _ = w.write_fmt(args);
    });
}

/// Writes raw bytes (used by the line editor for escape sequences).
pub fn write_bytes(bytes: &[u8]) {
    crate::drivers::serial::with_port(|w| w.write_bytes(bytes));
}

/// Breaks the console locks if a CPU died holding them (only used by the panic path).
pub fn force_unlock() {
    crate::drivers::serial::force_unlock();
    crate::drivers::framebuffer::force_unlock();
}

struct CrLf<'a>(&'a mut crate::drivers::serial::Serial);

impl Write for CrLf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s.as_bytes();
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(pos);
            self.0.write_bytes(line);
            if !(line.last() == Some(&b'\r')) {
                self.0.write_bytes(b"\r");
            }
            self.0.write_bytes(b"\n");
            rest = &tail[1..];
        }
        self.0.write_bytes(rest);
        Ok(())
    }
}
