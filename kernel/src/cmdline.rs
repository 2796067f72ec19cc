//! Kernel command line options (from GRUB's `multiboot2` line), e.g. `test`,
//! `panic-test`, `quiet`.

/// Options the kernel understands; unknown words are ignored (and listed at boot).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Options {
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
}

impl Options {
    /// Parses a space-separated command line.
    pub fn parse(line: &str) -> Self {
        let mut o = Options::default();
        for word in line.split_ascii_whitespace() {
            match word {
                "test" => o.test = true,
                "panic-test" => o.panic_test = true,
                "nosmp" => o.nosmp = true,
                "fault-test" => o.fault_test = true,
                "overflow-test" => o.overflow_test = true,
                _ => {}
            }
        }
        o
    }
}
