//! Time helpers shared by every stage: durations as users write them,
//! RFC 3339 in and out, milliseconds since the Unix epoch (UTC) throughout.
//!
//! Invariant: nothing here panics on user input; a bad value is an `Err`
//! with a message that says what was expected.

use std::time::Duration;

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"7d"` (and a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a duration like \"30s\", \"5m\", \"1h\", got {s:?}"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?} (use ms, s, m, h, d)"
            ))
        }
    };
    duration_from_secs(secs, s)
}

/// The longest duration a pipeline may set: 100 years. Longer ones are
/// mistakes (and would overflow the millisecond arithmetic downstream).
pub const MAX_DURATION_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// `secs` as a `Duration`, refusing negative, non-finite and absurdly long
/// values with a message that quotes `written` (never a panic).
pub fn duration_from_secs(secs: f64, written: &str) -> Result<Duration, String> {
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("duration must be non-negative, got {written:?}"));
    }
    if secs > MAX_DURATION_SECS {
        return Err(format!(
            "duration {written:?} is longer than 100 years; expected something like \"30s\", \"5m\", \"1h\", \"7d\""
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// "30m", "1h", "1d", "90s": a whole-unit label for a length in ms.
pub fn format_duration_ms(ms: i64) -> String {
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= len && ms % len == 0 {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

/// RFC 3339 with zone; a naive `YYYY-MM-DD[ T]HH:MM:SS[.fff]` is taken as UTC.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    Err(format!("{s:?} is not an RFC 3339 / ISO 8601 time"))
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2024-01-01T01:00:00Z`);
/// the bare number when it is outside chrono's range.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Wall clock, ms since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
        // Regression (hardening): these panicked in Duration::from_secs_f64.
        assert!(parse_duration("99999999999999999999999d").is_err());
        assert!(duration_from_secs(1e30, "1e30").is_err());
        assert!(duration_from_secs(f64::NAN, "nan").is_err());
    }

    #[test]
    fn rfc3339_round_trips_and_labels_read_well() {
        assert_eq!(rfc3339_ms(3_600_000), "1970-01-01T01:00:00Z");
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00Z"), Ok(3_600_000));
        assert_eq!(parse_rfc3339_ms("1970-01-01 01:00:00"), Ok(3_600_000));
        assert!(parse_rfc3339_ms("yesterday").is_err());
        assert_eq!(format_duration_ms(3_600_000), "1h");
        assert_eq!(format_duration_ms(90_000), "90s");
        assert_eq!(format_duration_ms(1500), "1500ms");
    }
}
