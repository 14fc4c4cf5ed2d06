//! RFC 3339 timestamps as the controller writes them: Go's `rfc3339NanoFixed`
//! (`2006-01-02T15:04:05.000000000Z07:00`, lib/controller/router/response.go), in UTC,
//! from nanoseconds since the epoch. Parsing accepts what clients send (`Z` or an
//! offset, `T` or a space, any number of fractional digits, or a bare date).

/// `ns` (nanoseconds since 1970, UTC) as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub(crate) fn format_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Parses an RFC 3339 / ISO 8601 timestamp into nanoseconds since 1970.
pub(crate) fn parse_ns(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, mo, d) * 86_400;
    let mut nanos = 0i64;
    let mut rest = &s[10..];
    if let Some(r) = rest.strip_prefix(['T', 't', ' ']) {
        let b = r.as_bytes();
        if b.len() < 8 || b[2] != b':' || b[5] != b':' {
            return None;
        }
        let field = |t: &str| -> Option<i64> {
            (t.len() == 2 && t.bytes().all(|c| c.is_ascii_digit()))
                .then(|| t.parse().ok())
                .flatten()
        };
        let (h, mi, se) = (field(&r[0..2])?, field(&r[3..5])?, field(&r[6..8])?);
        if h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + se;
        rest = &r[8..];
        if let Some(f) = rest.strip_prefix('.') {
            let digits = f.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let mut v: i64 = 0;
            for (i, c) in f[..digits].bytes().enumerate() {
                if i < 9 {
                    v = v * 10 + i64::from(c - b'0');
                }
            }
            for _ in digits..9 {
                v *= 10;
            }
            nanos = v;
            rest = &f[digits..];
        }
    }
    match rest {
        "" | "Z" | "z" => {}
        off => {
            let sign = match off.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = off[1..].replace(':', "");
            if o.len() != 4 || !o.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let mins = o[..2].parse::<i64>().ok()? * 60 + o[2..].parse::<i64>().ok()?;
            secs -= sign * mins * 60;
        }
    }
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(format_ns(0), "1970-01-01T00:00:00.000000000Z");
        let t = 1_735_689_600_123_456_000; // 2025-01-01T00:00:00.123456Z
        assert_eq!(format_ns(t), "2025-01-01T00:00:00.123456000Z");
        assert_eq!(parse_ns("2025-01-01T00:00:00.123456Z"), Some(t));
        assert_eq!(parse_ns("2025-01-01T01:00:00.123456+01:00"), Some(t));
        assert_eq!(parse_ns("2025-01-01 00:00:00.123456"), Some(t));
        assert_eq!(parse_ns("2024-02-29"), Some(1_709_164_800 * 1_000_000_000));
        assert_eq!(
            format_ns(1_709_164_800 * 1_000_000_000),
            "2024-02-29T00:00:00.000000000Z"
        );
        assert_eq!(parse_ns("yesterday"), None);
        assert_eq!(parse_ns("2025-13-01"), None);
    }
}
