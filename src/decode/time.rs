//! Event time as the pipeline's `time_format` writes it -> ms since the
//! Unix epoch (UTC). Out-of-range times are refused, never wrapped.

use crate::config::TimeFormat;

/// A raw event-time value before it is interpreted by the time format.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTime {
    Number(f64),
    Text(String),
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
        (RawTime::Text(s), _) => return crate::time::parse_rfc3339_ms(s),
        (RawTime::Number(n), _) => {
            return Err(format!("expected an RFC 3339 string, got the number {n}"))
        }
    };
    if !ms.is_finite() || ms.abs() > 8.0e15 {
        return Err(format!("{ms} ms is out of range"));
    }
    Ok(ms.round() as i64)
}
