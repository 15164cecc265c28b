//! Lag features of a series, normalised so one tree shape serves every
//! scale and level.
//!
//! Two normalisations, one per series and one per row:
//! * per series, `z = x / S` with `S` the mean |x| of the history's last
//!   season (else of the whole history; 1 if that is 0), and with
//!   [`Transform::Log`] `z = ln(x / S)` (only when every value is > 0);
//! * per target time `t`, the local level `ℓ_t` = mean of `z` over the
//!   `window` values before `t` is subtracted from the target and from every
//!   lag, so trees (which cannot extrapolate) see shapes, not levels.
//!
//! Row for target `t` (everything strictly before `t`):
//! `[z_{t−k} − ℓ_t for k in lags] ++ [ℓ_t, sd_t, t mod m, (t div m) mod 7]`,
//! `sd_t` the standard deviation over the same window, the last two
//! (hour of day, day of week for hourly data) only when `m ≥ 2`. Positions
//! count from `history[0]`: the trait carries no timestamps, so "hour 0" is
//! the first value's position in the cycle, not midnight; keep the window
//! start aligned if positions must mean the same thing across calls.
//! Target: `z_t − ℓ_t`.

/// Value transform applied per series before the lag features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// `z = x / S`.
    Scale,
    /// `z = ln(x / S)` when every history value is > 0, else as `Scale`.
    Log,
}

/// Which features a model uses (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    /// Seasonal period `m` (≥ 1).
    pub season: usize,
    /// Lags, ascending, all ≥ 1.
    pub lags: Vec<usize>,
    /// Window of the local level and standard deviation.
    pub window: usize,
}

impl FeatureSpec {
    /// The richest spec a history of `n` values supports with at least
    /// `min_rows` training rows: lags `1..=2m` (at least 1..=4) plus `7m`
    /// (a week of hourly data) when that leaves two weeks (`14m`) of rows —
    /// fewer cannot teach a weekly pattern; failing that, lags `1..=2m`,
    /// then `1..=m`; `None` when even that leaves too few rows.
    pub fn for_history(n: usize, season: usize, min_rows: usize) -> Option<FeatureSpec> {
        let m = season.max(1);
        let window = m.max(4);
        let base = (2 * m).max(4);
        let week = 7 * m;
        let mut candidates: Vec<Vec<usize>> = Vec::new();
        if m >= 2 {
            candidates.push((1..=base).chain([week]).collect());
        }
        candidates.push((1..=base).collect());
        candidates.push((1..=m.max(4)).collect());
        candidates.into_iter().find_map(|lags| {
            let rows = if lags.last() == Some(&week) && m >= 2 {
                min_rows.max(2 * week)
            } else {
                min_rows
            };
            let spec = FeatureSpec {
                season: m,
                lags,
                window,
            };
            (n >= spec.first_target() + rows).then_some(spec)
        })
    }

    /// The first target time with a complete row.
    pub fn first_target(&self) -> usize {
        self.lags.last().copied().unwrap_or(0).max(self.window)
    }

    pub fn width(&self) -> usize {
        self.lags.len() + 2 + if self.season >= 2 { 2 } else { 0 }
    }

    /// Appends the row for target time `t` (needs `first_target() ≤ t ≤
    /// z.len()`) to `out`; returns the local level `ℓ_t`.
    pub fn row(&self, z: &[f64], t: usize, out: &mut Vec<f64>) -> f64 {
        let w = &z[t - self.window..t];
        let level = w.iter().sum::<f64>() / w.len() as f64;
        let var = w.iter().map(|v| (v - level) * (v - level)).sum::<f64>() / w.len() as f64;
        out.extend(self.lags.iter().map(|&k| z[t - k] - level));
        out.push(level);
        out.push(var.sqrt());
        if self.season >= 2 {
            out.push((t % self.season) as f64);
            out.push(((t / self.season) % 7) as f64);
        }
        level
    }
}

/// A history mapped to `z` (see the module docs), and the way back.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub z: Vec<f64>,
    scale: f64,
    log: bool,
}

impl Normalized {
    pub fn new(history: &[f64], season: usize, transform: Transform) -> Normalized {
        let n = history.len();
        let mean_abs = |s: &[f64]| s.iter().map(|v| v.abs()).sum::<f64>() / s.len().max(1) as f64;
        let mut scale = mean_abs(&history[n.saturating_sub(season.max(1))..]);
        if !(scale > 0.0 && scale.is_finite()) {
            scale = mean_abs(history);
        }
        if !(scale > 0.0 && scale.is_finite()) {
            scale = 1.0;
        }
        let log = transform == Transform::Log && history.iter().all(|&v| v > 0.0);
        let z = history
            .iter()
            .map(|&v| if log { (v / scale).ln() } else { v / scale })
            .collect();
        Normalized { z, scale, log }
    }

    /// The original-scale value of a `z` value.
    pub fn back(&self, z: f64) -> f64 {
        if self.log {
            // Keep a forecast from overflowing when a model runs away.
            z.min(700.0).exp() * self.scale
        } else {
            z * self.scale
        }
    }
}
