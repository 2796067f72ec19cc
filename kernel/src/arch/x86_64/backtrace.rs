//! Stack backtraces by walking frame pointers (the kernel is built with
//! `-C force-frame-pointers=yes`). Prints return addresses; `cargo xtask` symbolizes
//! them against the kernel ELF.

use super::paging;

const MAX_FRAMES: usize = 32;

fn readable(addr: u64) -> bool {
    addr.is_multiple_of(8) && addr >= 4096 && paging::readable(addr) && paging::readable(addr + 8)
}

/// Prints the backtrace of the caller.
#[inline(never)]
pub fn print_current() {
    let rbp: u64;
    // SAFETY: reads the frame pointer register.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags))
    };
    print_from(0, rbp);
}

/// Prints a backtrace starting at instruction `rip` (0: none) with frame pointer `rbp`.
pub fn print_from(rip: u64, rbp: u64) {
    println!("backtrace:");
    let mut n = 0;
    if rip != 0 {
        print_frame(n, rip, rip);
        n += 1;
    }
    let mut fp = rbp;
    while n < MAX_FRAMES && readable(fp) {
        // SAFETY: `fp` and `fp + 8` are mapped and aligned (checked above); a frame
        // record is [saved rbp, return address].
        let (next, ret) = unsafe { (*(fp as *const u64), *((fp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        // A return address points after the call; look up the call itself.
        print_frame(n, ret, ret - 1);
        n += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    println!("end of backtrace");
}

fn print_frame(n: usize, addr: u64, lookup_addr: u64) {
    match super::symbols::lookup(lookup_addr) {
        Some((name, off)) => println!(
            "  #{n:<2} {addr:#018x} {name}+{:#x}",
            off + addr - lookup_addr
        ),
        None => println!("  #{n:<2} {addr:#018x}"),
    }
}
