//! x86_64 support: boot, CPU setup, memory, interrupts, APIC, time, ACPI and SMP.

pub mod acpi;
pub mod apic;
pub mod backtrace;
pub mod boot;
pub mod gdt;
pub mod interrupts;
pub mod io;
pub mod memory;
pub mod paging;
pub mod simd;
pub mod smp;
pub mod symbols;
pub mod time;

use core::arch::global_asm;
use core::sync::atomic::Ordering;

global_asm!(include_str!("boot.S"), options(att_syntax));

/// Entry from boot.S on the boot processor.
#[no_mangle]
extern "C" fn kmain_entry(mb_magic: u32, mb_info: u32) -> ! {
    crate::kmain(mb_magic, mb_info)
}

/// Timer interrupt rate.
pub const TIMER_HZ: u32 = 100;

/// Exit code `isa-debug-exit` turns into QEMU status 33 ((0x10 << 1) | 1): success.
pub const QEMU_EXIT_SUCCESS: u32 = 0x10;
/// Exit code for failure (QEMU status 35).
pub const QEMU_EXIT_FAILURE: u32 = 0x11;

/// Brings up the boot processor: memory, descriptor tables, interrupts, APIC, time,
/// ACPI, then the other CPUs (unless `nosmp`).
pub fn init_bsp(boot: &boot::BootInfo, start_smp: bool) {
    time::mark_boot();
    smp::init_bsp_percpu();
    interrupts::init_idt();
    interrupts::load_idt();
    memory::init(boot);
    gdt::init_cpu();
    if let Some(fb) = boot.framebuffer {
        if let Some((red, green, blue)) = fb.rgb {
            let format = crate::drivers::framebuffer::PixelFormat { red, green, blue };
            crate::drivers::framebuffer::init(
                fb.addr, fb.pitch, fb.width, fb.height, fb.bpp, format,
            );
        }
    }
    crate::drivers::keyboard::init();
    let xsave = raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_oxsave());
    interrupts::USE_XSAVE.store(xsave, Ordering::SeqCst);
    interrupts::fit_vector_state();
    let acpi = acpi::init(boot.acpi_root);
    apic::disable_pic();
    apic::enable_local();
    time::calibrate();
    apic::calibrate_timer();
    if let Some((ioapic, gsi_base)) = acpi.ioapic {
        apic::ioapic_mask_all(ioapic);
        let bsp = apic::id();
        for (irq, vector) in [
            (4u8, interrupts::SERIAL_VECTOR),
            (1, interrupts::KEYBOARD_VECTOR),
        ] {
            let (gsi, flags) = acpi.isa_irq(irq);
            if gsi >= gsi_base && gsi - gsi_base < apic::ioapic_pins(ioapic) {
                apic::ioapic_route(ioapic, gsi_base, gsi, vector, bsp, flags);
            }
        }
    }
    apic::start_timer(TIMER_HZ);
    interrupts::enable();
    if start_smp {
        smp::start_aps(acpi.cpus());
    }
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops this CPU.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Exits QEMU through `isa-debug-exit` (port 0xf4) with success or failure; on other
/// machines (no such device) the CPU halts.
pub fn exit_qemu(success: bool) -> ! {
    io::outl(
        0xf4,
        if success {
            QEMU_EXIT_SUCCESS
        } else {
            QEMU_EXIT_FAILURE
        },
    );
    halt_forever()
}

/// Resets the CPU by loading an empty IDT and raising an exception.
pub fn triple_fault() -> ! {
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately unrecoverable: with a zero-length IDT the breakpoint causes a
    // triple fault, which resets the machine.
    unsafe { core::arch::asm!("lidt [{}]", "int3", in(reg) &idtr, options(nostack)) };
    halt_forever()
}
