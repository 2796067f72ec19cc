//! Formatting Unix time as RFC 3339 UTC timestamps (`2026-11-27T04:08:00.123Z`), as
//! Ollama's `created_at` and `modified_at` fields carry, without an OS time library.

use alloc::format;
use alloc::string::String;

/// `unix_ms` milliseconds since 1970-01-01T00:00:00Z as RFC 3339 with milliseconds.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let ms = unix_ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
///
/// Works in 400-year eras (146 097 days each) counted from 0000-03-01, so that the leap
/// day is the last day of the shifted year and month lengths follow a fixed pattern.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 12:34:56.789 UTC (a leap day in a century leap year).
        assert_eq!(rfc3339_ms(951_827_696_789), "2000-02-29T12:34:56.789Z");
        // 2024-12-31 23:59:59 UTC.
        assert_eq!(rfc3339_ms(1_735_689_599_000), "2024-12-31T23:59:59.000Z");
        assert_eq!(rfc3339_ms(1_735_689_600_000), "2025-01-01T00:00:00.000Z");
    }
}
