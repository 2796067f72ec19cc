//! Local APIC (x2APIC when the CPU has it, xAPIC MMIO otherwise), its timer, IPIs, the
//! I/O APIC routing of ISA interrupts, and masking of the legacy 8259 PICs.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::interrupts::{SPURIOUS_VECTOR, TIMER_VECTOR};
use super::io::{mmio_read32, mmio_write32, outb, rdmsr, wrmsr};

const IA32_APIC_BASE: u32 = 0x1b;
const REG_ID: u32 = 0x20;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INIT: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0xfee0_0000);
static TIMER_COUNT_PER_MS: AtomicU32 = AtomicU32::new(0);

/// True when the local APICs run in x2APIC mode.
pub fn is_x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

fn read(reg: u32) -> u32 {
    if is_x2apic() {
        rdmsr(0x800 + (reg >> 4)) as u32
    } else {
        mmio_read32(XAPIC_BASE.load(Ordering::Relaxed) + u64::from(reg))
    }
}

fn write(reg: u32, v: u32) {
    if is_x2apic() {
        wrmsr(0x800 + (reg >> 4), u64::from(v));
    } else {
        mmio_write32(XAPIC_BASE.load(Ordering::Relaxed) + u64::from(reg), v);
    }
}

/// Remaps the legacy PICs away from the exception vectors and masks them.
pub fn disable_pic() {
    for (cmd, data, base, cascade) in [(0x20u16, 0x21u16, 0x70u8, 4u8), (0xa0, 0xa1, 0x78, 2)] {
        outb(cmd, 0x11);
        outb(data, base);
        outb(data, cascade);
        outb(data, 0x01);
        outb(data, 0xff);
    }
}

/// Enables the local APIC of the calling CPU (x2APIC when available).
pub fn enable_local() {
    let x2 = raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_x2apic());
    let mut base = rdmsr(IA32_APIC_BASE);
    base |= 1 << 11;
    if x2 {
        base |= 1 << 10;
    }
    wrmsr(IA32_APIC_BASE, base);
    X2APIC.store(x2, Ordering::Relaxed);
    if !x2 {
        XAPIC_BASE.store(base & 0x000f_ffff_ffff_f000, Ordering::Relaxed);
    }
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_LVT_TIMER, 1 << 16); // masked until the timer is started
}

/// APIC ID of the calling CPU.
pub fn id() -> u32 {
    if is_x2apic() {
        read(REG_ID)
    } else {
        read(REG_ID) >> 24
    }
}

/// Signals end of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

fn send_icr(dest: u32, low: u32) {
    if is_x2apic() {
        wrmsr(0x830, (u64::from(dest) << 32) | u64::from(low));
    } else {
        write(REG_ICR_HIGH, dest << 24);
        write(REG_ICR_LOW, low);
        while read(REG_ICR_LOW) & (1 << 12) != 0 {
            core::hint::spin_loop();
        }
    }
}

/// Sends INIT to a CPU.
pub fn send_init(dest: u32) {
    send_icr(dest, 0x4500);
}

/// Sends a startup IPI: the CPU starts in real mode at `page * 4096`.
pub fn send_sipi(dest: u32, page: u8) {
    send_icr(dest, 0x4600 | u32::from(page));
}

/// Sends a fixed interrupt `vector` to a CPU.
pub fn send_ipi(dest: u32, vector: u8) {
    send_icr(dest, 0x4000 | u32::from(vector));
}

/// Measures the APIC timer rate against the (calibrated) TSC.
pub fn calibrate_timer() {
    write(REG_TIMER_DIVIDE, 0x3); // divide by 16
    write(REG_LVT_TIMER, 1 << 16);
    write(REG_TIMER_INIT, u32::MAX);
    super::time::delay_us(10_000);
    let elapsed = u32::MAX - read(REG_TIMER_CURRENT);
    write(REG_TIMER_INIT, 0);
    TIMER_COUNT_PER_MS.store((elapsed / 10).max(1), Ordering::Relaxed);
}

/// Starts the periodic timer interrupt at `hz` on the calling CPU.
pub fn start_timer(hz: u32) {
    let per_ms = TIMER_COUNT_PER_MS.load(Ordering::Relaxed);
    write(REG_TIMER_DIVIDE, 0x3);
    write(REG_LVT_TIMER, (1 << 17) | u32::from(TIMER_VECTOR));
    write(REG_TIMER_INIT, (per_ms * 1000 / hz).max(1));
}

/// Routes ISA interrupt `irq` (after MADT overrides) to `vector` on APIC `dest`
/// through the I/O APIC at `ioapic` whose first GSI is `gsi_base`.
pub fn ioapic_route(ioapic: u64, gsi_base: u32, gsi: u32, vector: u8, dest: u32, flags: u16) {
    let pin = gsi - gsi_base;
    let mut low = u32::from(vector);
    if flags & 0x3 == 0x3 {
        low |= 1 << 13; // active low
    }
    if (flags >> 2) & 0x3 == 0x3 {
        low |= 1 << 15; // level triggered
    }
    let reg = 0x10 + 2 * pin;
    mmio_write32(ioapic, reg + 1);
    mmio_write32(ioapic + 0x10, dest << 24);
    mmio_write32(ioapic, reg);
    mmio_write32(ioapic + 0x10, low);
}

/// Number of redirection entries of an I/O APIC.
pub fn ioapic_pins(ioapic: u64) -> u32 {
    mmio_write32(ioapic, 1);
    ((mmio_read32(ioapic + 0x10) >> 16) & 0xff) + 1
}

/// Masks every redirection entry of an I/O APIC.
pub fn ioapic_mask_all(ioapic: u64) {
    for pin in 0..ioapic_pins(ioapic) {
        mmio_write32(ioapic, 0x10 + 2 * pin);
        mmio_write32(ioapic + 0x10, 1 << 16);
    }
}
