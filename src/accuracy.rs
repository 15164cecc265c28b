//! Point-forecast accuracy metrics, following the M4 competition definitions.
//!
//! Purpose: score a forecast against the realised values so that model output
//! can be compared with the published M4 results (sMAPE, MASE, OWA against
//! Naive2), plus plain MAE / RMSE for diagnostics.
//!
//! Definitions (per series, `y` = actual out-of-sample values, `f` = forecast,
//! `H` = horizon = `y.len()`):
//! * `mae   = (1/H) Σ |y_h − f_h|`
//! * `rmse  = sqrt((1/H) Σ (y_h − f_h)²)`
//! * `smape = (1/H) Σ 200·|y_h − f_h| / (|y_h| + |f_h|)`, a `0/0` term counts as 0
//!   (M4's own code would yield NaN there; M4 data are strictly positive).
//! * `mase  = mae / scale`, `scale = mean_{t=m..n-1} |x_t − x_{t−m}|` over the
//!   in-sample series `x` of length `n` (the seasonal-naive in-sample MAE).
//! * `owa   = ½ (sMAPE / sMAPE_Naive2 + MASE / MASE_Naive2)`; M4 applies it to
//!   the *means over all series* of sMAPE and MASE (see [`mean_scores`]).
//!
//! Invariants and conventions:
//! * All functions are pure, take `f64` slices and never panic.
//! * `actual` and `forecast` must have the same, non-zero length, otherwise a
//!   [`MetricError`] is returned. `m == 0` in [`mase`] is an error too.
//! * MASE extension (not in M4, where it cannot occur): if the in-sample has
//!   `≤ m` points the scale falls back to lag 1. If the scale is still
//!   undefined (fewer than 2 in-sample points) or equals 0 (constant
//!   in-sample), `mase` returns `Ok(f64::NAN)`, which propagates into any
//!   aggregate; filter with [`Scores::is_finite`] if that is not wanted.
//! * Non-finite inputs are not rejected; they propagate as NaN/inf.
//! * Nothing in this module allocates.

use std::fmt;

/// Published M4 Naive2 sMAPE on the 414 hourly series (M4 results table).
pub const M4_HOURLY_NAIVE2_SMAPE: f64 = 18.383;
/// Published M4 Naive2 MASE on the 414 hourly series (M4 results table).
pub const M4_HOURLY_NAIVE2_MASE: f64 = 2.395;

/// Errors for malformed metric inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricError {
    /// `actual` and `forecast` have different lengths.
    LengthMismatch {
        /// Length of the actual (observed) values.
        actual: usize,
        /// Length of the forecast.
        forecast: usize,
    },
    /// `actual`/`forecast` are empty: a mean over zero steps is undefined.
    Empty,
    /// Seasonal period `m == 0` passed to [`mase`] / [`score`].
    ZeroPeriod,
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricError::LengthMismatch { actual, forecast } => write!(
                f,
                "length mismatch: {actual} actual values vs {forecast} forecast values"
            ),
            MetricError::Empty => write!(f, "empty actual/forecast slices"),
            MetricError::ZeroPeriod => write!(f, "seasonal period m must be >= 1"),
        }
    }
}

impl std::error::Error for MetricError {}

fn check(y: &[f64], f: &[f64]) -> Result<(), MetricError> {
    if y.len() != f.len() {
        return Err(MetricError::LengthMismatch {
            actual: y.len(),
            forecast: f.len(),
        });
    }
    if y.is_empty() {
        return Err(MetricError::Empty);
    }
    Ok(())
}

/// Mean absolute error `(1/H) Σ |y − f|`.
pub fn mae(y: &[f64], f: &[f64]) -> Result<f64, MetricError> {
    check(y, f)?;
    let s: f64 = y.iter().zip(f).map(|(a, b)| (a - b).abs()).sum();
    Ok(s / y.len() as f64)
}

/// Root mean squared error `sqrt((1/H) Σ (y − f)²)`.
pub fn rmse(y: &[f64], f: &[f64]) -> Result<f64, MetricError> {
    check(y, f)?;
    let s: f64 = y.iter().zip(f).map(|(a, b)| (a - b) * (a - b)).sum();
    Ok((s / y.len() as f64).sqrt())
}

/// M4 symmetric MAPE in percent: `(1/H) Σ 200·|y − f| / (|y| + |f|)`.
///
/// A step with `|y| + |f| == 0` (both zero) contributes 0. Range is `[0, 200]`.
pub fn smape(y: &[f64], f: &[f64]) -> Result<f64, MetricError> {
    check(y, f)?;
    let s: f64 = y
        .iter()
        .zip(f)
        .map(|(a, b)| {
            let den = a.abs() + b.abs();
            if den == 0.0 {
                0.0
            } else {
                200.0 * (a - b).abs() / den
            }
        })
        .sum();
    Ok(s / y.len() as f64)
}

/// In-sample MASE scale: `mean_{t=m..n-1} |x_t − x_{t−m}|`, with lag 1 when
/// `n ≤ m`. Returns NaN when undefined (`n < 2`); may return 0.
fn mase_scale(insample: &[f64], m: usize) -> f64 {
    let n = insample.len();
    let lag = if n > m { m } else { 1 };
    if n <= lag {
        return f64::NAN;
    }
    let s: f64 = insample
        .iter()
        .skip(lag)
        .zip(insample)
        .map(|(a, b)| (a - b).abs())
        .sum();
    s / (n - lag) as f64
}

/// M4 mean absolute scaled error: `mae(y, f) / scale(insample, m)`.
///
/// `insample` is the history the forecast was made from, `m` the seasonal
/// period (24 for hourly data). If `insample.len() ≤ m` the scale uses lag 1.
/// Returns `Ok(f64::NAN)` if the scale is 0 or undefined (see module docs).
pub fn mase(insample: &[f64], y: &[f64], f: &[f64], m: usize) -> Result<f64, MetricError> {
    if m == 0 {
        return Err(MetricError::ZeroPeriod);
    }
    let err = mae(y, f)?;
    let scale = mase_scale(insample, m);
    if scale == 0.0 || !scale.is_finite() {
        return Ok(f64::NAN);
    }
    Ok(err / scale)
}

/// M4 overall weighted average relative to Naive2:
/// `½ (smape / naive2_smape + mase / naive2_mase)`.
///
/// Pass *aggregate* (mean over series) values, e.g. from [`mean_scores`], and
/// the Naive2 aggregates (e.g. [`M4_HOURLY_NAIVE2_SMAPE`],
/// [`M4_HOURLY_NAIVE2_MASE`]). OWA < 1 means better than Naive2.
pub fn owa(smape: f64, mase: f64, naive2_smape: f64, naive2_mase: f64) -> f64 {
    0.5 * (smape / naive2_smape + mase / naive2_mase)
}

/// The per-series scores used for M4-style evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    /// sMAPE in percent (0..=200).
    pub smape: f64,
    /// MASE (NaN if the in-sample scale is 0 or undefined).
    pub mase: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// Root mean squared error.
    pub rmse: f64,
}

impl Scores {
    /// True when all four fields are finite.
    pub fn is_finite(&self) -> bool {
        self.smape.is_finite()
            && self.mase.is_finite()
            && self.mae.is_finite()
            && self.rmse.is_finite()
    }

    /// OWA of these (normally aggregated) scores against the given Naive2 values.
    pub fn owa(&self, naive2_smape: f64, naive2_mase: f64) -> f64 {
        owa(self.smape, self.mase, naive2_smape, naive2_mase)
    }

    /// OWA against the published M4 hourly Naive2 results.
    pub fn owa_m4_hourly(&self) -> f64 {
        self.owa(M4_HOURLY_NAIVE2_SMAPE, M4_HOURLY_NAIVE2_MASE)
    }
}

/// Score one series: all metrics of `forecast` against `actual`, MASE scaled
/// by `insample` with seasonal period `m`.
pub fn score(
    insample: &[f64],
    actual: &[f64],
    forecast: &[f64],
    m: usize,
) -> Result<Scores, MetricError> {
    Ok(Scores {
        smape: smape(actual, forecast)?,
        mase: mase(insample, actual, forecast, m)?,
        mae: mae(actual, forecast)?,
        rmse: rmse(actual, forecast)?,
    })
}

/// Field-wise arithmetic mean over series (M4 averages per-series sMAPE and
/// MASE over all series). `None` for an empty slice. NaN fields propagate.
pub fn mean_scores(scores: &[Scores]) -> Option<Scores> {
    if scores.is_empty() {
        return None;
    }
    let n = scores.len() as f64;
    let mut acc = Scores {
        smape: 0.0,
        mase: 0.0,
        mae: 0.0,
        rmse: 0.0,
    };
    for s in scores {
        acc.smape += s.smape;
        acc.mase += s.mase;
        acc.mae += s.mae;
        acc.rmse += s.rmse;
    }
    Some(Scores {
        smape: acc.smape / n,
        mase: acc.mase / n,
        mae: acc.mae / n,
        rmse: acc.rmse / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + b.abs())
    }

    #[test]
    fn mae_rmse_hand_values() {
        // y=[1,2,3], f=[1,2,4]: errors 0,0,1 -> MAE 1/3, RMSE sqrt(1/3).
        let y = [1.0, 2.0, 3.0];
        let f = [1.0, 2.0, 4.0];
        assert!(close(mae(&y, &f).unwrap(), 1.0 / 3.0));
        assert!(close(rmse(&y, &f).unwrap(), (1.0f64 / 3.0).sqrt()));
        // y=[2,4], f=[5,0]: errors 3,4 -> MAE 3.5, RMSE sqrt(12.5).
        assert!(close(mae(&[2.0, 4.0], &[5.0, 0.0]).unwrap(), 3.5));
        assert!(close(
            rmse(&[2.0, 4.0], &[5.0, 0.0]).unwrap(),
            12.5f64.sqrt()
        ));
    }

    #[test]
    fn smape_hand_values() {
        // Only step 3 contributes: 200*|3-4|/(3+4) = 200/7; mean over 3 steps.
        let s = smape(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]).unwrap();
        assert!(close(s, 200.0 / 7.0 / 3.0)); // 9.5238...
                                              // 0/0 term is 0; y=0,f=1 gives 200; mean = 100.
        assert!(close(smape(&[0.0, 0.0], &[0.0, 1.0]).unwrap(), 100.0));
        // sign-symmetric magnitude: y=-2,f=2 -> 200*4/4 = 200.
        assert!(close(smape(&[-2.0], &[2.0]).unwrap(), 200.0));
    }

    #[test]
    fn mase_hand_values() {
        // insample [1,3,2,5], m=2: |2-1|=1, |5-3|=2 -> scale 1.5.
        // y=[4,6], f=[5,3]: MAE (1+3)/2 = 2 -> MASE 2/1.5 = 4/3.
        let m = mase(&[1.0, 3.0, 2.0, 5.0], &[4.0, 6.0], &[5.0, 3.0], 2).unwrap();
        assert!(close(m, 4.0 / 3.0));
        // m=1: diffs 2,1,3 -> scale 2 -> MASE 1.
        let m1 = mase(&[1.0, 3.0, 2.0, 5.0], &[4.0, 6.0], &[5.0, 3.0], 1).unwrap();
        assert!(close(m1, 1.0));
        // insample of 3 points with m=24 falls back to lag 1: [0,2,6] diffs 2,4 -> 3.
        let fb = mase(&[0.0, 2.0, 6.0], &[1.0], &[4.0], 24).unwrap();
        assert!(close(fb, 1.0));
    }

    #[test]
    fn mase_degenerate_scale_is_nan() {
        assert!(mase(&[5.0, 5.0, 5.0], &[1.0], &[2.0], 1).unwrap().is_nan());
        assert!(mase(&[5.0], &[1.0], &[2.0], 1).unwrap().is_nan());
        assert!(mase(&[], &[1.0], &[2.0], 1).unwrap().is_nan());
    }

    #[test]
    fn errors() {
        assert_eq!(
            mae(&[1.0, 2.0], &[1.0]),
            Err(MetricError::LengthMismatch {
                actual: 2,
                forecast: 1
            })
        );
        assert_eq!(smape(&[], &[]), Err(MetricError::Empty));
        assert_eq!(
            mase(&[1.0, 2.0], &[1.0], &[1.0], 0),
            Err(MetricError::ZeroPeriod)
        );
        assert_eq!(
            score(&[1.0, 2.0], &[1.0], &[1.0, 2.0], 1),
            Err(MetricError::LengthMismatch {
                actual: 1,
                forecast: 2
            })
        );
        let msg = MetricError::LengthMismatch {
            actual: 3,
            forecast: 2,
        }
        .to_string();
        assert!(msg.contains('3') && msg.contains('2'));
        let _: &dyn std::error::Error = &MetricError::Empty;
    }

    #[test]
    fn owa_hand_values() {
        // Equal to Naive2 -> 1; half of both -> 0.5; (2x sMAPE, equal MASE) -> 1.5.
        assert!(close(owa(10.0, 2.0, 10.0, 2.0), 1.0));
        assert!(close(owa(5.0, 1.0, 10.0, 2.0), 0.5));
        assert!(close(owa(20.0, 2.0, 10.0, 2.0), 1.5));
        let s = Scores {
            smape: M4_HOURLY_NAIVE2_SMAPE,
            mase: M4_HOURLY_NAIVE2_MASE,
            mae: 0.0,
            rmse: 0.0,
        };
        assert!(close(s.owa_m4_hourly(), 1.0));
    }

    #[test]
    fn score_and_mean() {
        // Series A: insample [1,2,3] (m=1 scale 1), y=[1,2,3], f=[1,2,4]
        //   sMAPE 200/21, MASE 1/3, MAE 1/3, RMSE sqrt(1/3).
        let a = score(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0], 1).unwrap();
        assert!(close(a.smape, 200.0 / 21.0));
        assert!(close(a.mase, 1.0 / 3.0));
        assert!(close(a.mae, 1.0 / 3.0));
        assert!(close(a.rmse, (1.0f64 / 3.0).sqrt()));
        // Series B: insample [0,4] (scale 4), y=[2], f=[6]:
        //   sMAPE 200*4/8 = 100, MAE 4, MASE 1, RMSE 4.
        let b = score(&[0.0, 4.0], &[2.0], &[6.0], 1).unwrap();
        assert_eq!(
            b,
            Scores {
                smape: 100.0,
                mase: 1.0,
                mae: 4.0,
                rmse: 4.0
            }
        );
        let mean = mean_scores(&[a, b]).unwrap();
        assert!(close(mean.smape, (200.0 / 21.0 + 100.0) / 2.0));
        assert!(close(mean.mase, (1.0 / 3.0 + 1.0) / 2.0));
        assert!(close(mean.mae, (1.0 / 3.0 + 4.0) / 2.0));
        assert!(close(mean.rmse, ((1.0f64 / 3.0).sqrt() + 4.0) / 2.0));
        assert!(mean_scores(&[]).is_none());
        // NaN MASE propagates into the mean and is detectable.
        let c = score(&[1.0, 1.0], &[2.0], &[2.0], 1).unwrap();
        assert!(!c.is_finite());
        assert!(mean_scores(&[a, c]).unwrap().mase.is_nan());
    }
}
