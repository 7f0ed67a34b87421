//! Time as the agent uses it: seconds since the epoch, ISO 8601 for people and JSON,
//! and the device-local time of day for windows.

/// Seconds since the epoch (0 if the clock is before it).
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since the epoch as an ISO 8601 UTC time.
pub(crate) fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An ISO 8601 UTC time as `format_time` writes it (`2026-11-18T11:06:40Z`) in seconds
/// since the epoch; None for anything else.
pub(crate) fn parse_time(iso: &str) -> Option<u64> {
    let b = iso.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| iso.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (proleptic Gregorian), Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Minutes after local midnight (TZ, /etc/localtime), UTC if the C library cannot say.
pub(crate) fn local_minutes(now: u64) -> u16 {
    let t = now as nix::libc::time_t;
    // SAFETY: a zeroed `tm` is a valid value; localtime_r only writes into it.
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let ok = unsafe { !nix::libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        (tm.tm_hour * 60 + tm.tm_min) as u16
    } else {
        (now % 86_400 / 60) as u16
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc_iso8601() {
        assert_eq!(super::format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_time(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn iso8601_times_parse_back() {
        for t in [0, 951_782_400, 1_795_000_000, 4_107_542_399] {
            assert_eq!(super::parse_time(&super::format_time(t)), Some(t));
        }
        assert_eq!(super::parse_time("2026-13-01T00:00:00Z"), None);
        assert_eq!(super::parse_time("yesterday"), None);
    }
}
