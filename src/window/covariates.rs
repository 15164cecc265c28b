//! Calendar covariates of a window's start time (UTC): Fourier terms of the
//! hour of day, day of week and day of year, and a holiday flag: the
//! seasonal s(t) and holiday h(t) terms of Prophet's y = g(t) + s(t) + h(t),
//! as inputs the network can use.

use std::f64::consts::PI;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array};

use crate::config::CovariatesConfig;

/// Calendar covariate columns for window starts (ms since epoch, UTC).
pub fn covariates(c: &CovariatesConfig, starts: &[i64]) -> Vec<ArrayRef> {
    const DAY: f64 = 86_400_000.0;
    let mut cols: Vec<ArrayRef> = Vec::new();
    // Day-of-week phase: 1970-01-01 was a Thursday; shift so Monday 00:00 = 0.
    let cycles: [(u32, f64, f64); 3] = [
        (c.hour_of_day, DAY, 0.0),
        (c.day_of_week, 7.0 * DAY, 3.0 * DAY),
        (c.day_of_year, 365.25 * DAY, 0.0),
    ];
    for (order, period, shift) in cycles {
        for j in 1..=order {
            let w = 2.0 * PI * j as f64 / period;
            let sin: Float64Array = starts
                .iter()
                .map(|&t| (w * (t as f64 + shift)).sin())
                .collect();
            let cos: Float64Array = starts
                .iter()
                .map(|&t| (w * (t as f64 + shift)).cos())
                .collect();
            cols.push(Arc::new(sin));
            cols.push(Arc::new(cos));
        }
    }
    if !c.holidays.is_empty() {
        let days: std::collections::HashSet<i64> = c
            .holidays
            .iter()
            .map(|d| {
                d.and_hms_opt(0, 0, 0)
                    .map_or(0, |t| t.and_utc().timestamp_millis())
                    / DAY as i64
            })
            .collect();
        let col: Float64Array = starts
            .iter()
            .map(|&t| {
                if days.contains(&t.div_euclid(DAY as i64)) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        cols.push(Arc::new(col));
    }
    cols
}
