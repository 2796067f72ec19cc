//! Port I/O and MSR helpers for drivers in this architecture module.

use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    // SAFETY: callers in this module only pass ports of devices they drive.
    unsafe { Port::<u8>::new(port).read() }
}

/// Writes a byte to an I/O port.
pub fn outb(port: u16, v: u8) {
    // SAFETY: as for `inb`.
    unsafe { Port::<u8>::new(port).write(v) }
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, v: u16) {
    // SAFETY: as for `inb`.
    unsafe { Port::<u16>::new(port).write(v) }
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, v: u32) {
    // SAFETY: as for `inb`.
    unsafe { Port::<u32>::new(port).write(v) }
}

/// Reads a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    // SAFETY: as for `inb`.
    unsafe { Port::<u32>::new(port).read() }
}

/// Reads a model-specific register.
pub fn rdmsr(msr: u32) -> u64 {
    // SAFETY: callers only read architectural MSRs the CPU reports (APIC base, x2APIC).
    unsafe { Msr::new(msr).read() }
}

/// Writes a model-specific register.
pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: callers only write architectural MSRs with values valid for them.
    unsafe { Msr::new(msr).write(v) }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is available on every x86_64 CPU and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads a 32-bit MMIO register.
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: callers pass device register addresses inside uncached identity mappings.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Writes a 32-bit MMIO register.
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Reads `len` bytes of physical memory (firmware tables) into a slice view.
pub fn phys_bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: callers pass ranges of firmware tables inside RAM or reserved regions,
    // which the kernel maps (identity) and never writes.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}
