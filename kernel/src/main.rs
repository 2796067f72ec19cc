//! EMBODIOS kernel entry: brings the machine up (console, memory, interrupts, time,
//! ACPI, SMP) and then runs either the in-kernel test table or the serial shell.

#![no_std]
#![no_main]
// `unsafe` is allowed only in `arch` and `drivers` (they opt back in), and every
// unsafe block there must say why it is sound.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

#[macro_use]
pub mod console;
pub mod arch;
pub mod cmdline;
pub mod drivers;
pub mod httpd;
pub mod infer;
pub mod ktest;
pub mod line_editor;
pub mod mem;
pub mod models;
pub mod net;
pub mod parallel;
pub mod shell;
pub mod storage;

use arch::x86_64 as cpu;

/// Kernel version shown by `version` and the banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Kernel main on the boot processor (called by the architecture's entry point, in long
/// mode with SSE/AVX on), with the multiboot2 magic and boot information address.
pub fn kmain(mb_magic: u32, mb_info: u32) -> ! {
    drivers::serial::init();
    println!();
    println!("EMBODIOS {VERSION} booting (x86_64)");
    let boot = cpu::boot::init(mb_magic, mb_info);
    let options = cmdline::Options::parse(boot.cmdline.as_str());
    ktest::set_test_mode(
        options.test || options.panic_test || options.fault_test || options.overflow_test,
    );
    cpu::init_bsp(&boot, !options.nosmp);
    if !options.quiet {
        println!(
            "memory: {} MiB usable, heap {} MiB, {} CPU(s) online, TSC {} MHz",
            mem::stats().usable_bytes >> 20,
            mem::stats().heap_total >> 20,
            cpu::smp::online_cpus(),
            cpu::time::tsc_khz() / 1000,
        );
    }
    if options.panic_test {
        ktest::deliberate_panic();
    }
    if options.fault_test {
        cpu::interrupts::write_to_code();
    }
    if options.overflow_test {
        println!("overflowing the stack: {}", ktest::deliberate_overflow(0));
    }
    if options.test {
        let ok = ktest::run_all();
        cpu::exit_qemu(ok);
    }
    // The engine's shared lookup tables are made now, not inside the first model load,
    // so that unloading a model gives back exactly the heap its load took.
    embodios_engine::ops::prepare_tables();
    net::init(boot.cmdline.as_str());
    storage::init(options.quiet);
    shell::run(&boot, &options)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cpu::interrupts::disable();
    console::force_unlock();
    println!();
    println!("KERNEL PANIC on cpu {}: {}", cpu::smp::current_cpu(), info);
    cpu::backtrace::print_current();
    if ktest::test_mode() {
        cpu::exit_qemu(false);
    }
    cpu::halt_forever()
}
