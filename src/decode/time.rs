//! Event time as the pipeline's `time_format` writes it -> ms since the
//! Unix epoch (UTC). Out-of-range times are refused, never wrapped.

use crate::config::TimeFormat;

/// A raw event-time value before it is interpreted by the time format.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTime {
    Number(f64),
    Text(String),
}

/// Event times must lie in years 0000..=9999 (UTC), whatever the format:
/// window arithmetic on them (panes, ends) cannot overflow, and every
/// accepted time can be written as RFC 3339 and read back.
pub const MIN_MS: i64 = -62_167_219_200_000;
/// See [`MIN_MS`]: 9999-12-31T23:59:59.999Z.
pub const MAX_MS: i64 = 253_402_300_799_999;

/// `ms` if it is a supported event time (see [`MIN_MS`]).
pub fn in_range(ms: i64) -> Result<i64, String> {
    if (MIN_MS..=MAX_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!("{ms} ms is out of range (years 0000 to 9999)"))
    }
}

/// Interprets an event time as milliseconds since the Unix epoch (UTC).
pub fn parse_time(raw: &RawTime, fmt: TimeFormat) -> Result<i64, String> {
    let ms = match (raw, fmt) {
        (RawTime::Number(n), TimeFormat::EpochS) => n * 1000.0,
        (RawTime::Number(n), TimeFormat::EpochMs) => *n,
        (RawTime::Text(s), TimeFormat::EpochS) => {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("{s:?} is not epoch seconds"))?
                * 1000.0
        }
        (RawTime::Text(s), TimeFormat::EpochMs) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not epoch milliseconds"))?,
        (RawTime::Text(s), _) => return crate::time::parse_rfc3339_ms(s).and_then(in_range),
        (RawTime::Number(n), _) => {
            return Err(format!("expected an RFC 3339 string, got the number {n}"))
        }
    };
    if !ms.is_finite() || ms < MIN_MS as f64 || ms > MAX_MS as f64 {
        return Err(format!("{ms} ms is out of range (years 0000 to 9999)"));
    }
    in_range(ms.round() as i64)
}
