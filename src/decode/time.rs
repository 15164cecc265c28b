//! Event time as the pipeline's `time_format` writes it -> ms since the
//! Unix epoch (UTC). Out-of-range times are refused, never wrapped.

use crate::config::TimeFormat;

/// A raw event-time value before it is interpreted by the time format.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTime {
    Number(f64),
    Text(String),
}

/// Event times beyond +-this many ms (about 250,000 years) are refused, so
/// that window arithmetic on them (panes, ends) cannot overflow.
pub const MAX_ABS_MS: i64 = 8_000_000_000_000_000;

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
        (RawTime::Text(s), _) => return crate::time::parse_rfc3339_ms(s),
        (RawTime::Number(n), _) => {
            return Err(format!("expected an RFC 3339 string, got the number {n}"))
        }
    };
    if !ms.is_finite() || ms.abs() > MAX_ABS_MS as f64 {
        return Err(format!("{ms} ms is out of range"));
    }
    Ok(ms.round() as i64)
}
