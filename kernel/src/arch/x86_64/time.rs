//! Time: the TSC calibrated against the PIT (or CPUID leaf 0x15 when it states the
//! frequency), giving microseconds and milliseconds since boot.

use core::sync::atomic::{AtomicU64, Ordering};

use super::io::{inb, outb, rdtsc};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

/// PIT input clock in Hz.
const PIT_HZ: u64 = 1_193_182;

/// Records the boot time stamp (first thing in `kmain`).
pub fn mark_boot() {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
}

/// Measures TSC ticks over `ms` milliseconds of PIT channel 2 (gate via port 0x61).
/// None when the PIT never signals the end of the count (some newer PCs gate it off).
fn pit_measure(ms: u64) -> Option<u64> {
    let count = PIT_HZ * ms / 1000;
    let gate = inb(0x61);
    outb(0x61, (gate & !0x02) | 0x01); // speaker off, gate on
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    // Restart the count with a low-to-high gate edge.
    let g = inb(0x61) & !0x01;
    outb(0x61, g);
    outb(0x61, g | 0x01);
    let start = rdtsc();
    let mut spins = 0u64;
    while inb(0x61) & 0x20 == 0 {
        spins += 1;
        if spins > 50_000_000 {
            outb(0x61, gate);
            return None;
        }
    }
    let end = rdtsc();
    outb(0x61, gate);
    Some(end - start)
}

/// Calibrates the TSC. Returns kHz.
pub fn calibrate() -> u64 {
    let cpuid = raw_cpuid::CpuId::new();
    let from_cpuid = cpuid
        .get_tsc_info()
        .and_then(|t| t.tsc_frequency())
        .map(|hz| hz / 1000);
    let khz = match from_cpuid {
        Some(k) if k > 0 => k,
        _ => {
            // Five 10 ms windows; the shortest is the one least disturbed (a delay in
            // noticing the end of the count only ever lengthens a window).
            let mut shortest: Option<u64> = None;
            for _ in 0..5 {
                match pit_measure(10) {
                    Some(t) => shortest = Some(shortest.map_or(t, |s| s.min(t))),
                    None => {
                        shortest = None;
                        break;
                    }
                }
            }
            match shortest {
                Some(t) => t / 10,
                // No PIT: CPUID leaf 0x16 states the nominal (base) frequency.
                None => cpuid
                    .get_processor_frequency_info()
                    .map(|f| u64::from(f.processor_base_frequency()) * 1000)
                    .filter(|&k| k > 0)
                    .unwrap_or(1_000_000),
            }
        }
    };
    TSC_KHZ.store(khz.max(1), Ordering::Relaxed);
    khz
}

/// TSC frequency in kHz (0 before calibration).
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Microseconds since boot.
pub fn uptime_us() -> u64 {
    let ticks = rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    (u128::from(ticks) * 1000 / u128::from(tsc_khz().max(1))) as u64
}

/// Milliseconds since boot.
pub fn uptime_ms() -> u64 {
    uptime_us() / 1000
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    let end = rdtsc() + us * tsc_khz().max(1) / 1000;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}
