//! The CMOS real-time clock (ports 0x70/0x71), read once at boot so the HTTP API can
//! give wall-clock timestamps: Unix time at boot plus the TSC uptime.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::x86_64::io::{inb, outb};
use crate::arch::x86_64::time;

/// Unix time in milliseconds when uptime was 0 (0 = unknown).
static BOOT_UNIX_MS: AtomicU64 = AtomicU64::new(0);

fn read(reg: u8) -> u8 {
    // Bit 7 of the index port keeps NMIs masked as they were at boot.
    outb(0x70, 0x80 | reg);
    inb(0x71)
}

fn updating() -> bool {
    read(0x0a) & 0x80 != 0
}

/// One snapshot of (second, minute, hour, day, month, year, century) in raw form.
fn snapshot() -> [u8; 7] {
    let mut spins = 0;
    while updating() && spins < 100_000 {
        spins += 1;
    }
    [
        read(0x00),
        read(0x02),
        read(0x04),
        read(0x07),
        read(0x08),
        read(0x09),
        read(0x32),
    ]
}

fn bcd(v: u8) -> u8 {
    (v & 0x0f) + (v >> 4) * 10
}

/// Days from 1970-01-01 to `y-m-d` (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads the clock (boot processor, once). Two equal snapshots in a row avoid a
/// torn read across an update.
pub fn init() {
    let mut a = snapshot();
    for _ in 0..5 {
        let b = snapshot();
        if a == b {
            break;
        }
        a = b;
    }
    let status_b = read(0x0b);
    let binary = status_b & 0x04 != 0;
    let h24 = status_b & 0x02 != 0;
    let conv = |v: u8| if binary { v } else { bcd(v) };
    let pm = a[2] & 0x80 != 0;
    let mut hour = conv(a[2] & 0x7f);
    if !h24 {
        hour %= 12;
        if pm {
            hour += 12;
        }
    }
    let (sec, min, day, month) = (conv(a[0]), conv(a[1]), conv(a[3]), conv(a[4]));
    let century = match conv(a[6]) {
        c @ 19..=21 => u32::from(c),
        _ => 20,
    };
    let year = century * 100 + u32::from(conv(a[5]));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return;
    }
    let days = days_from_civil(i64::from(year), u32::from(month), u32::from(day));
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec);
    if secs > 0 {
        let ms = (secs as u64) * 1000;
        BOOT_UNIX_MS.store(ms.saturating_sub(time::uptime_ms()), Ordering::Relaxed);
    }
}

/// Wall-clock time in milliseconds since the Unix epoch (uptime if the RTC was
/// unreadable).
pub fn unix_ms() -> u64 {
    BOOT_UNIX_MS.load(Ordering::Relaxed) + time::uptime_ms()
}
