//! Baseline checks against hand-computed values and invariants.

use super::*;

/// Holt's linear trend (no damping) with the given or fitted parameters.
fn holt(alpha: Option<f64>, beta: Option<f64>) -> Holt {
    Holt {
        alpha,
        beta,
        damped: None,
    }
}

fn assert_close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "length {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

/// Deterministic pseudo-noise in [-0.5, 0.5) (LCG), for fitting tests.
fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect()
}

#[test]
fn naive_and_snaive() {
    assert_eq!(Naive.forecast(&[3.0, 1.0, 4.0], 3), vec![4.0; 3]);
    // Last season of [1..=6] with m=4 is [3,4,5,6]; horizon 6 wraps.
    let sn = SeasonalNaive { period: 4 };
    assert_eq!(
        sn.forecast(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 6),
        vec![3.0, 4.0, 5.0, 6.0, 3.0, 4.0]
    );
    // Shorter than a period -> naive.
    assert_eq!(sn.forecast(&[1.0, 2.0, 7.0], 2), vec![7.0, 7.0]);
    assert!(Naive.forecast(&[], 2).iter().all(|v| v.is_nan()));
    assert_eq!(Naive.forecast(&[], 2).len(), 2);
}

#[test]
fn moving_average() {
    // mean(4,6,8) = 6
    assert_eq!(
        MovingAverage { window: 3 }.forecast(&[100.0, 4.0, 6.0, 8.0], 2),
        vec![6.0, 6.0]
    );
    // window larger than history -> mean of all = 2
    assert_eq!(
        MovingAverage { window: 10 }.forecast(&[1.0, 3.0], 1),
        vec![2.0]
    );
}

fn pattern(cycles: usize) -> Vec<f64> {
    // level 10 times indices [0.5, 1.5, 1.0, 1.0]
    (0..4 * cycles)
        .map(|t| 10.0 * [0.5, 1.5, 1.0, 1.0][t % 4])
        .collect()
}

#[test]
fn seasonality_test_hand_case() {
    // pattern(5): mean 10, deviations [-5,5,0,0]; Σd² = 250.
    // r1 = -125/250 = -0.5, r2 = 0, r3 = -100/250 = -0.4, r4 = 200/250 = 0.8.
    // limit = 1.645*sqrt((1 + 2*(0.25+0+0.16))/20) = 0.4962 < 0.8 -> seasonal.
    assert!(seasonality_test(&pattern(5), 4));
    // n < 3m -> false
    assert!(!seasonality_test(&pattern(2), 4));
    // constant -> false; m < 2 -> false
    assert!(!seasonality_test(&[1.0; 40], 4));
    assert!(!seasonality_test(&pattern(5), 1));
    // R lag.max quirk: m=24 needs n >= 252 (floor(10*log10(251)) = 23).
    let daily: Vec<f64> = (0..251).map(|t| 10.0 + (t % 24) as f64).collect();
    assert!(!seasonality_test(&daily, 24));
    let daily: Vec<f64> = (0..252).map(|t| 10.0 + (t % 24) as f64).collect();
    assert!(seasonality_test(&daily, 24));
}

#[test]
fn seasonality_test_white_noise() {
    // x = [3,1,4,1,5,9,2,6,5,3,5,8], m=4, n=12: mean 52/12 = 4.3333,
    // Σd² = 296 - 52²/12 = 70.667; Σ d_t d_{t-4} (t=4..11) = -22.444 ->
    // r4 = -0.3176. r1 = -0.0770, r2 = -0.0881, r3 = 0.2736 ->
    // limit = 1.645*sqrt((1+2*0.0885)/12) = 0.5152 > 0.3176 -> not seasonal.
    let x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0];
    assert!(!seasonality_test(&x, 4));
    // Longer pseudo-noise is not seasonal either.
    assert!(!seasonality_test(&noise(200, 7), 12));
}

#[test]
fn seasonality_test_boundary_pins_r_formula() {
    // x = [4,3,5,1,8,9,9,9,1,3,3,0], m=4, n=12, mean 55/12:
    // r1 = 0.32216, r2 = 0.12597, r3 = -0.12492, r4 = -0.55593.
    // R/M4 limit 1.645*sqrt((1+2*(r1²+r2²+r3²))/12) = 0.53526 < 0.55593 -> seasonal.
    // (Python port with unsquared r1 would give 0.62048 -> not seasonal;
    //  z = 1.96 would give 0.63776 -> not seasonal.)
    let x = [4.0, 3.0, 5.0, 1.0, 8.0, 9.0, 9.0, 9.0, 1.0, 3.0, 3.0, 0.0];
    assert!(seasonality_test(&x, 4));
}

#[test]
fn naive2_exact_multiplicative_pattern() {
    // Ratios to the 2x4 MA are exactly the indices, deseasonalised series is
    // 10 everywhere; n = 20 so the next position is 0.
    let f = Naive2 { period: 4 }.forecast(&pattern(5), 6);
    assert_close(&f, &[5.0, 15.0, 10.0, 10.0, 5.0, 15.0], 1e-12);
    assert_close(
        &seasonal_indices(&pattern(5), 4).unwrap(),
        &[0.5, 1.5, 1.0, 1.0],
        1e-12,
    );
    // Not seasonal (period 1) -> naive.
    assert_eq!(
        Naive2 { period: 1 }.forecast(&pattern(5), 2),
        vec![10.0, 10.0]
    );
}

#[test]
fn naive2_perturbed_last_value() {
    // pattern(5) with x_19 = 12 (position 3). Only trend_17 changes:
    // (0.5*10 + 5 + 15 + 10 + 0.5*12)/4 = 10.25, so the raw position-1 index is
    // (3*1.5 + 15/10.25)/4; raw indices for positions 0,2,3 stay 0.5, 1, 1.
    // Forecast = x_19 / s_3 * s_p = 12 * raw_p / raw_3 (normalisation cancels).
    let mut x = pattern(5);
    x[19] = 12.0;
    assert!(seasonality_test(&x, 4));
    let raw1 = (4.5 + 15.0 / 10.25) / 4.0; // 1.49085366
    let f = Naive2 { period: 4 }.forecast(&x, 5);
    assert_close(&f, &[6.0, 12.0 * raw1, 12.0, 12.0, 6.0], 1e-12);
}

#[test]
fn seasonally_adjusted_wrapper() {
    let mut x = pattern(5);
    x[19] = 12.0;
    let n2 = Naive2 { period: 4 }.forecast(&x, 7);
    assert_eq!(
        SeasonallyAdjusted {
            inner: Naive,
            period: 4
        }
        .forecast(&x, 7),
        n2
    );
    let ses1 = SeasonallyAdjusted {
        inner: SimpleExpSmoothing { alpha: Some(1.0) },
        period: 4,
    };
    assert_close(&ses1.forecast(&x, 7), &n2, 1e-12);
    // Non-seasonal input: inner model on raw data.
    let w = SeasonallyAdjusted {
        inner: MovingAverage { window: 2 },
        period: 4,
    };
    assert_eq!(w.forecast(&[1.0, 2.0, 4.0], 2), vec![3.0, 3.0]);
}

#[test]
fn seasonal_indices_odd_period() {
    // m=3, indices [0.5, 1.0, 1.5] (mean 1) at level 4, 3 cycles:
    // 3-term MA is 4 everywhere it exists -> exact indices.
    let x: Vec<f64> = (0..9).map(|t| 4.0 * [0.5, 1.0, 1.5][t % 3]).collect();
    assert_close(&seasonal_indices(&x, 3).unwrap(), &[0.5, 1.0, 1.5], 1e-12);
    // Zero data -> ratios undefined -> None.
    assert!(seasonal_indices(&[0.0; 9], 3).is_none());
}

#[test]
fn ses_hand_values() {
    // alpha = 1 is naive.
    assert_eq!(
        SimpleExpSmoothing { alpha: Some(1.0) }.forecast(&[1.0, 5.0, 2.0], 2),
        vec![2.0, 2.0]
    );
    // alpha = 0.5 on [1,2,3]: 1 -> 1.5 -> 2.25.
    assert_close(
        &SimpleExpSmoothing { alpha: Some(0.5) }.forecast(&[1.0, 2.0, 3.0], 2),
        &[2.25, 2.25],
        1e-12,
    );
    // alpha = 0.1 on [10, 20]: 10 + 0.1*10 = 11.
    assert_close(
        &SimpleExpSmoothing { alpha: Some(0.1) }.forecast(&[10.0, 20.0], 1),
        &[11.0],
        1e-12,
    );
}

#[test]
fn ses_fit_matches_brute_force() {
    // Random walk + noise; fitted SSE must match a 10^4-point grid minimum.
    let e = noise(300, 3);
    let mut x = vec![50.0];
    for t in 1..300 {
        let prev = x[t - 1];
        x.push(prev + e[t] + 0.8 * e[(t * 7) % 300]);
    }
    let a = fit_ses_alpha(&x);
    let fitted = ses_run(&x, a).0;
    let brute = (0..=10_000)
        .map(|k| ses_run(&x, k as f64 / 10_000.0).0)
        .fold(f64::INFINITY, f64::min);
    assert!(
        fitted <= brute * (1.0 + 1e-6),
        "fitted {fitted} brute {brute} alpha {a}"
    );
    assert!(a > 0.0 && a <= 1.0);
}

#[test]
fn holt_linear_series() {
    // x_t = 2 + 3t, t = 0..9: the line is reproduced for any parameters.
    let x: Vec<f64> = (0..10).map(|t| 2.0 + 3.0 * t as f64).collect();
    let want = [32.0, 35.0, 38.0];
    assert_close(&holt(None, None).forecast(&x, 3), &want, 1e-9);
    assert_close(&holt(Some(0.2), Some(0.1)).forecast(&x, 3), &want, 1e-9);
    // Two points -> still the line through them.
    assert_close(
        &holt(None, None).forecast(&[1.0, 2.0], 2),
        &[3.0, 4.0],
        1e-9,
    );
    assert_eq!(
        Holt {
            alpha: None,
            beta: None,
            damped: None
        }
        .forecast(&[7.0], 2),
        vec![7.0, 7.0]
    );
}

#[test]
fn holt_hand_values() {
    // [0,1,3], α = β = 0.5: l0 = 0, b0 = 1.
    // t=1: ŷ = 1, e = 0 -> l = 1, b = 1.
    // t=2: ŷ = 2, e = 1 -> l = 2.5, b = 0.5*(2.5-1) + 0.5*1 = 1.25.
    // Forecast 2.5 + 1.25h = [3.75, 5.0].
    let h = holt(Some(0.5), Some(0.5));
    assert_close(&h.forecast(&[0.0, 1.0, 3.0], 2), &[3.75, 5.0], 1e-12);
}

#[test]
fn damped_flattens() {
    // alpha = beta = 1: l_t = x_t, b_t = x_t - x_{t-1} = 1 at the end.
    // phi = 0.5: 3 + 0.5 = 3.5, + 0.25 = 3.75, + 0.125 = 3.875, limit 4.
    let x = [0.0, 1.0, 2.0, 3.0];
    let d = Holt {
        alpha: Some(1.0),
        beta: Some(1.0),
        damped: Some(Damping::Fixed(0.5)),
    };
    assert_close(&d.forecast(&x, 3), &[3.5, 3.75, 3.875], 1e-12);
    // Fitted damped on a line: increments shrink (phi <= 0.98 < 1).
    let line: Vec<f64> = (0..30).map(|t| t as f64).collect();
    let f = Holt {
        alpha: None,
        beta: None,
        damped: Some(Damping::Fitted),
    }
    .forecast(&line, 40);
    let steps: Vec<f64> = f.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(steps.windows(2).all(|w| w[1] < w[0]));
    assert!(f[39] < 29.0 + 40.0 - 5.0);
    assert_eq!(d.name(), "damped");
}

#[test]
fn holt_fit_not_worse_than_grid() {
    let e = noise(200, 11);
    let x: Vec<f64> = (0..200)
        .map(|t| 100.0 + 0.5 * t as f64 + 5.0 * e[t] + 3.0 * (t as f64 / 15.0).sin())
        .collect();
    let sse = |p: &[f64]| holt_run(&x, p[0], p[1], p[2]).0;
    let p = fit(
        &[None, None, Some(1.0)],
        &[1e-4, 0.0, 0.0],
        &[1.0, 1.0, 1.0],
        &[0.3, 0.05, 0.95],
        &sse,
        300,
    );
    let fitted = sse(&p);
    let mut grid = f64::INFINITY;
    for i in 1..=20 {
        for j in 0..=20 {
            grid = grid.min(sse(&[i as f64 / 20.0, j as f64 / 20.0, 1.0]));
        }
    }
    assert!(
        fitted <= grid * (1.0 + 1e-9),
        "fitted {fitted} grid {grid} p {p:?}"
    );
}

fn trend_season(n: usize) -> Vec<f64> {
    // 5 + 0.5 t + s_{t mod 4}, s = [-3, 2, 0, 1] (sum 0).
    (0..n)
        .map(|t| 5.0 + 0.5 * t as f64 + [-3.0, 2.0, 0.0, 1.0][t % 4])
        .collect()
}

#[test]
fn hw_additive_exact() {
    // History t = 0..15, forecast t = 16..21 continues the pattern exactly.
    let x = trend_season(16);
    let want = &trend_season(22)[16..];
    let fitted = HoltWinters {
        period: 4,
        seasonal: Seasonal::Additive,
        params: None,
    };
    assert_close(&fitted.forecast(&x, 6), want, 1e-6);
    let fixed = HoltWinters {
        period: 4,
        seasonal: Seasonal::Additive,
        params: Some((0.4, 0.2, 0.3)),
    };
    assert_close(&fixed.forecast(&x, 6), want, 1e-9);
}

#[test]
fn hw_multiplicative_exact_and_fallbacks() {
    let hw = HoltWinters {
        period: 4,
        seasonal: Seasonal::Multiplicative,
        params: None,
    };
    assert_close(
        &hw.forecast(&pattern(5), 5),
        &[5.0, 15.0, 10.0, 10.0, 5.0],
        1e-6,
    );
    // Non-positive data -> additive.
    let mut x = trend_season(16);
    x[2] = 0.0;
    let add = HoltWinters {
        period: 4,
        seasonal: Seasonal::Additive,
        params: Some((0.3, 0.1, 0.2)),
    };
    let mul = HoltWinters {
        period: 4,
        seasonal: Seasonal::Multiplicative,
        params: Some((0.3, 0.1, 0.2)),
    };
    assert_eq!(mul.forecast(&x, 4), add.forecast(&x, 4));
    // Fewer than two seasons -> fitted SES.
    let short = [1.0, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(
        hw.forecast(&short, 3),
        SimpleExpSmoothing { alpha: None }.forecast(&short, 3)
    );
}

#[test]
fn hw_fit_not_worse_than_grid() {
    let e = noise(240, 5);
    let x: Vec<f64> = (0..240)
        .map(|t| {
            50.0 + 0.1 * t as f64
                + 8.0 * (2.0 * std::f64::consts::PI * t as f64 / 24.0).sin()
                + 3.0 * e[t]
        })
        .collect();
    let init = hw_init(&x, 24, false).unwrap();
    let sse = |p: &[f64]| hw_run(&x, 24, false, &init, p).0;
    let p = fit(
        &[None, None, None],
        &[1e-4, 0.0, 0.0],
        &[1.0; 3],
        &[0.3, 0.05, 0.1],
        &sse,
        300,
    );
    let fitted = sse(&p);
    let mut grid = f64::INFINITY;
    for i in 1..=10 {
        for j in 0..=10 {
            for k in 0..=10 {
                grid = grid.min(sse(&[i as f64 / 10.0, j as f64 / 10.0, k as f64 / 10.0]));
            }
        }
    }
    assert!(
        fitted <= grid * (1.0 + 1e-9),
        "fitted {fitted} grid {grid} p {p:?}"
    );
}

#[test]
fn every_forecaster_returns_horizon_finite_values() {
    let series: Vec<Vec<f64>> = vec![
        vec![1.0],
        vec![2.0, 3.0],
        (0..30).map(|t| (t % 5) as f64).collect(), // contains zeros
        noise(100, 1).iter().map(|v| v * 1e6).collect(), // mixed signs
        (0..300)
            .map(|t| 1.0 + (t % 24) as f64 + 1e-3 * t as f64)
            .collect(),
        vec![0.0; 60],
    ];
    for name in ALL {
        let f = by_name(name, 24).unwrap();
        assert_eq!(f.name(), *name);
        assert_eq!(f.min_history(), 1);
        for s in &series {
            let out = f.forecast(s, 48);
            assert_eq!(out.len(), 48, "{name}");
            assert!(out.iter().all(|v| v.is_finite()), "{name} on {s:?}");
        }
        assert!(f.forecast(&[1.0, 2.0], 0).is_empty());
        assert!(f.forecast(&[], 3).iter().all(|v| v.is_nan()));
    }
    assert!(by_name("arima", 24).is_none());
}

/// Forecasters with reusable parameters forecast the same from their
/// kept parameters as from a fresh fit (`forecast_with(fit_params(x), x)`
/// is `forecast(x)`, bit for bit), on seasonal and non-seasonal series,
/// short ones included; and reusing an old fit on a longer history
/// differs from refitting it (the parameters are really kept).
#[test]
fn kept_parameters_forecast_as_a_fresh_fit() {
    let seasonal: Vec<f64> = noise(300, 7)
        .iter()
        .enumerate()
        .map(|(t, e)| 20.0 + 6.0 * ((t % 24) as f64 / 4.0).sin() + 0.05 * t as f64 + 3.0 * e)
        .collect();
    let flat: Vec<f64> = noise(120, 3).iter().map(|e| 5.0 + e).collect();
    let names = ["ses", "holt", "damped", "ses_sa", "holt_sa", "damped_sa"];
    for name in names {
        let f = named(name, 24).unwrap();
        assert!(f.reusable_params(), "{name}");
        for x in [
            &seasonal[..],
            &flat[..],
            &seasonal[..1],
            &seasonal[..2],
            &seasonal[..0],
        ] {
            let p = f.fit_params(x);
            let (a, b) = (f.forecast_with(&p, x, 12), f.forecast(x, 12));
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "{name}, n = {}",
                x.len()
            );
        }
        let old = f.fit_params(&flat);
        assert_ne!(
            f.forecast_with(&old, &seasonal, 12),
            f.forecast(&seasonal, 12),
            "{name}: an old fit is not a refit"
        );
    }
    assert!(!named("arima", 24).unwrap().reusable_params());
}
