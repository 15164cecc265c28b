//! ARIMA family checks: the filter against a plain Kalman filter, the
//! polynomial helpers against hand-worked cases, fixed-order fits against
//! statsmodels' SARIMAX (exact MLE), the order tests against statsmodels,
//! and the automatic search against statsforecast's AutoARIMA
//! (fixtures from scripts/fixtures/arima.py; real series are read from the
//! shared data, simulated ones are embedded).

use super::*;
use crate::baselines::test_data::gauss;
use crate::baselines::Baseline;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let text = match name {
        "sarimax" => include_str!("../../../tests/fixtures/arima/sarimax.json"),
        "auto" => include_str!("../../../tests/fixtures/arima/auto.json"),
        "tests" => include_str!("../../../tests/fixtures/arima/tests.json"),
        _ => unreachable!(),
    };
    serde_json::from_str(text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn order_of(v: &Value) -> Order {
    let o: Vec<usize> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    Order::seasonal(o[0], o[1], o[2], o[3], o[4], o[5], o[6])
}

/// ARMA simulation with a burn-in: `y_t = Σφ y + e_t + Σθ e`.
fn simulate(phi: &[f64], theta: &[f64], n: usize, seed: u64) -> Vec<f64> {
    let burn = 300;
    let e = gauss(n + burn, seed);
    let mut y = vec![0.0; n + burn];
    for t in 0..n + burn {
        let mut v = e[t];
        for (i, p) in phi.iter().enumerate() {
            if t > i {
                v += p * y[t - i - 1];
            }
        }
        for (j, th) in theta.iter().enumerate() {
            if t > j {
                v += th * e[t - j - 1];
            }
        }
        y[t] = v;
    }
    y[burn..].to_vec()
}

/// The plain Kalman filter (full Riccati update, dense matrices) on the same
/// state-space form: `(Σ ln F_t, standardised innovations)`.
fn dense_filter(phi: &[f64], theta: &[f64], y: &[f64]) -> (f64, Vec<f64>) {
    let r = phi.len().max(theta.len() + 1);
    let mut t = vec![0.0; r * r];
    for i in 0..r {
        if i < phi.len() {
            t[i * r] = phi[i];
        }
        if i + 1 < r {
            t[i * r + i + 1] = 1.0;
        }
    }
    let mut rv = vec![0.0; r];
    rv[0] = 1.0;
    for j in 1..r {
        if j <= theta.len() {
            rv[j] = theta[j - 1];
        }
    }
    let mut p = kalman::stationary_cov(phi, theta).unwrap();
    let mut a = vec![0.0; r];
    let (mut sumlog, mut out) = (0.0, Vec::new());
    for &yt in y {
        let f = p[0];
        let v = yt - a[0];
        sumlog += f.ln();
        out.push(v / f.sqrt());
        let m: Vec<f64> = (0..r).map(|i| p[i * r]).collect();
        let af: Vec<f64> = (0..r).map(|i| a[i] + m[i] * v / f).collect();
        let mut pf = p.clone();
        for i in 0..r {
            for j in 0..r {
                pf[i * r + j] -= m[i] * m[j] / f;
            }
        }
        a = (0..r)
            .map(|i| (0..r).map(|k| t[i * r + k] * af[k]).sum())
            .collect();
        let mut tp = vec![0.0; r * r];
        for i in 0..r {
            for j in 0..r {
                tp[i * r + j] = (0..r).map(|k| t[i * r + k] * pf[k * r + j]).sum();
            }
        }
        for i in 0..r {
            for j in 0..r {
                p[i * r + j] =
                    (0..r).map(|k| tp[i * r + k] * t[j * r + k]).sum::<f64>() + rv[i] * rv[j];
            }
        }
    }
    (sumlog, out)
}

#[test]
fn stationary_covariance_solves_the_lyapunov_equation() {
    // Σ = TΣT' + RR' for an ARMA(2,3) and a seasonal expansion.
    for (phi, theta) in [
        (vec![0.5, -0.3], vec![0.4, 0.2, -0.1]),
        (
            poly::expand(&[0.4, 0.3, 0.5], &Order::seasonal(1, 0, 1, 1, 0, 0, 4)).0,
            vec![0.3],
        ),
        (vec![], vec![0.6]),
        (vec![0.9], vec![]),
    ] {
        let r = phi.len().max(theta.len() + 1);
        let s = kalman::stationary_cov(&phi, &theta).unwrap();
        let ph = |k: usize| if k < phi.len() { phi[k] } else { 0.0 };
        let rv = |k: usize| {
            if k == 0 {
                1.0
            } else if k <= theta.len() {
                theta[k - 1]
            } else {
                0.0
            }
        };
        for i in 0..r {
            for j in 0..r {
                // (TΣT')[i][j] = φ_iφ_jΣ00 + φ_iΣ[0][j+1] + φ_jΣ[i+1][0] + Σ[i+1][j+1]
                let g = |a: usize, b: usize| if a < r && b < r { s[a * r + b] } else { 0.0 };
                let v = ph(i) * ph(j) * g(0, 0)
                    + ph(i) * g(0, j + 1)
                    + ph(j) * g(i + 1, 0)
                    + g(i + 1, j + 1)
                    + rv(i) * rv(j);
                assert!(
                    (v - s[i * r + j]).abs() < 1e-10,
                    "{phi:?} {theta:?} ({i},{j}): {v} vs {}",
                    s[i * r + j]
                );
            }
        }
    }
    // AR(1): γ0 = 1/(1−φ²).
    let s = kalman::stationary_cov(&[0.9], &[]).unwrap();
    assert!((s[0] - 1.0 / (1.0 - 0.81)).abs() < 1e-12);
}

#[test]
fn chandrasekhar_filter_matches_the_plain_kalman_filter() {
    let cases: Vec<(Vec<f64>, Vec<f64>)> = vec![
        (vec![0.5, -0.3], vec![0.4]),
        (vec![], vec![-0.8, 0.2]),
        (vec![0.95], vec![]),
        (
            poly::expand(
                &[0.3, -0.4, 0.5, -0.6],
                &Order::seasonal(1, 0, 1, 1, 0, 1, 6),
            )
            .0,
            poly::expand(
                &[0.3, -0.4, 0.5, -0.6],
                &Order::seasonal(1, 0, 1, 1, 0, 1, 6),
            )
            .1,
        ),
        (vec![], vec![1.5]), // non-invertible MA: the filter must stay exact
    ];
    for (k, (phi, theta)) in cases.iter().enumerate() {
        let y = simulate(phi, theta, 200, 7 + k as u64);
        let sup: Vec<usize> = (0..phi.len()).collect();
        let f = kalman::filter(phi, theta, &sup, &[&y]).unwrap();
        let (sl, innov) = dense_filter(phi, theta, &y);
        assert!(
            (f.sumlog - sl).abs() < 1e-8 * (1.0 + sl.abs()),
            "case {k}: {} vs {sl}",
            f.sumlog
        );
        for (a, b) in f.std_innov[0].iter().zip(&innov) {
            assert!((a - b).abs() < 1e-8, "case {k}: {a} vs {b}");
        }
    }
}

#[test]
fn polynomial_helpers() {
    // partrans/invpartrans round trip; partrans of tanh⁻¹(0.5) alone is 0.5.
    let raw = [0.3, -1.2, 0.7];
    let back = poly::invpartrans(&poly::partrans(&raw));
    for (a, b) in raw.iter().zip(&back) {
        assert!((a - b).abs() < 1e-10);
    }
    assert!((poly::partrans(&[0.5f64.atanh()])[0] - 0.5).abs() < 1e-15);
    // (1 − 0.5B)(1 − 0.8B^4) = 1 − 0.5B − 0.8B^4 + 0.4B^5.
    let (phi, theta) = poly::expand(
        &[0.5, 0.3, 0.8, -0.2],
        &Order::seasonal(1, 0, 1, 1, 0, 1, 4),
    );
    assert_eq!(phi, vec![0.5, 0.0, 0.0, 0.8, -0.4]);
    // (1 + 0.3B)(1 − 0.2B^4) = 1 + 0.3B − 0.2B^4 − 0.06B^5.
    assert!((theta[4] + 0.06).abs() < 1e-15 && theta[3] == -0.2 && theta[0] == 0.3);
    assert_eq!(
        poly::support(&Order::seasonal(1, 0, 1, 1, 0, 1, 4)).0,
        vec![0, 3, 4]
    );
    // Roots: 1 − 0.5z has root 2; 1 − 1.01z root 0.99 (inside).
    assert!(poly::roots_outside(&[0.5], 1.0));
    assert!(!poly::roots_outside(&[1.01], 1.0));
    // Root 1/0.995 = 1.005 is outside |z| = 1 but inside 1.01 (R rejects).
    assert!(poly::roots_outside(&[0.995], 1.0) && !poly::roots_outside(&[0.995], 1.01));
    // 1 − 1.2z + 0.35z² = (1 − 0.5z)(1 − 0.7z): roots 2 and 1.43.
    assert!(poly::roots_outside(&[1.2, -0.35], 1.01));
    assert!(!poly::roots_outside(&[1.2, -0.35], 1.5));
    // maInvert: MA(1) θ = 2 -> 0.5; (1 + 2.5z + z²) = (1 + 2z)(1 + 0.5z)
    // -> (1 + 0.5z)(1 + 0.5z) = 1 + z + 0.25z².
    assert_eq!(poly::ma_invert(&[2.0, 0.0]), vec![0.5, 0.0]);
    let inv = poly::ma_invert(&[2.5, 1.0]);
    assert!(
        (inv[0] - 1.0).abs() < 1e-10 && (inv[1] - 0.25).abs() < 1e-10,
        "{inv:?}"
    );
    assert_eq!(poly::ma_invert(&[0.4, 0.1]), vec![0.4, 0.1]);
    // (1−B)(1−B^4) = 1 − B − B^4 + B^5 -> δ = [1, 0, 0, 1, −1].
    assert_eq!(poly::delta(1, 1, 4), vec![1.0, 0.0, 0.0, 1.0, -1.0]);
    assert_eq!(
        poly::difference(&[1.0, 3.0, 6.0, 10.0], 2, 0, 1),
        vec![1.0, 1.0]
    );
}

fn close_rel(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn order_tests_match_statsmodels() {
    for c in fixture("tests")["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let y = crate::baselines::test_data::case_series(c);
        let m = c["m"].as_u64().unwrap() as usize;
        let lags = c["kpss_lags"].as_u64().unwrap() as usize;
        let k = kpss_stat(&y, lags);
        assert!(
            close_rel(k, c["kpss"].as_f64().unwrap(), 1e-9),
            "{name} kpss {k}"
        );
        let dy: Vec<f64> = y.windows(2).map(|p| p[1] - p[0]).collect();
        let lags_d = (3.0 * (dy.len() as f64).sqrt() / 13.0).floor() as usize;
        assert!(
            close_rel(
                kpss_stat(&dy, lags_d),
                c["kpss_diff"].as_f64().unwrap(),
                1e-9
            ),
            "{name}"
        );
        assert_eq!(
            ndiffs(&y, 2),
            c["ndiffs"].as_u64().unwrap() as usize,
            "{name} ndiffs"
        );
        if m > 1 {
            let (s, t) = stl(&y, m, 11);
            for (a, b) in s.iter().zip(floats(&c["seasonal"])) {
                assert!(
                    (a - b).abs() < 1e-8 * (1.0 + b.abs()),
                    "{name} seasonal {a} {b}"
                );
            }
            for (a, b) in t.iter().zip(floats(&c["trend"])) {
                assert!(
                    (a - b).abs() < 1e-8 * (1.0 + b.abs()),
                    "{name} trend {a} {b}"
                );
            }
            let st = seasonal_strength(&y, m);
            assert!(
                (st - c["strength"].as_f64().unwrap()).abs() < 1e-9,
                "{name} strength {st}"
            );
            assert_eq!(
                nsdiffs(&y, m),
                c["nsdiffs"].as_u64().unwrap() as usize,
                "{name} nsdiffs"
            );
        }
    }
}

/// Largest absolute difference.
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn fixed_orders_match_statsmodels_sarimax() {
    // `exact`: statsmodels' MLE of the differenced series (the likelihood
    // computed here): ARMA estimates to 5e-4 (the flattest case differs by
    // 1.1e-4 with log-likelihoods 3e-6 apart), log-likelihood to 1e-4,
    // forecasts and regression coefficients to 1e-4 of the series' scale.
    // `default`: SARIMAX's usual approximate diffuse start, which moves
    // estimates by up to ~2e-3.
    for c in fixture("sarimax")["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let y = crate::baselines::test_data::case_series(c);
        let o = order_of(&c["order"]);
        let constant = c["constant"].as_bool().unwrap();
        let h = c["h"].as_u64().unwrap() as usize;
        let xreg: Vec<Vec<f64>> = c["xreg"].as_array().unwrap().iter().map(floats).collect();
        let xf: Vec<Vec<f64>> = c["xreg_future"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let f = fit_arima(&y, &xreg, o, constant, Method::CssMl, None).unwrap();
        assert!(f.converged, "{name}");
        let fc = f.forecast(h, &xf).unwrap();
        let scale = y.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let ex = &c["exact"];
        assert!(
            max_abs_diff(&f.coef, &floats(&ex["coef"])) < 5e-4,
            "{name}: {:?} vs {}",
            f.coef,
            ex["coef"]
        );
        assert!(
            (f.loglik - ex["loglik"].as_f64().unwrap()).abs() < 1e-4,
            "{name}: loglik {} vs {}",
            f.loglik,
            ex["loglik"]
        );
        assert!(
            close_rel(f.sigma2, ex["sigma2"].as_f64().unwrap(), 1e-4),
            "{name}: sigma2 {}",
            f.sigma2
        );
        assert!(
            max_abs_diff(&fc, &floats(&ex["forecast"])) < 1e-4 * scale,
            "{name}: {fc:?} vs {}",
            ex["forecast"]
        );
        assert!(
            max_abs_diff(&f.xreg_coef, &floats(&ex["xreg_coef"])) < 1e-4 * scale,
            "{name}: {:?} vs {}",
            f.xreg_coef,
            ex["xreg_coef"]
        );
        match f.constant {
            Constant::Intercept(v) => assert!(
                (v - ex["intercept"].as_f64().unwrap()).abs() < 1e-4 * scale,
                "{name}: {v}"
            ),
            other => assert!(!constant && other == Constant::None, "{name}"),
        }
        let de = &c["default"];
        assert!(
            max_abs_diff(&f.coef, &floats(&de["coef"])) < 5e-3,
            "{name}: {:?} vs {}",
            f.coef,
            de["coef"]
        );
        assert!(
            max_abs_diff(&fc, &floats(&de["forecast"])) < 2e-3 * scale,
            "{name}"
        );
    }
}

/// statsforecast's coefficient vector: ARMA parts then mean/drift.
fn sf_coef(c: &Value) -> Vec<f64> {
    floats(&c["css_coef"])
}

#[test]
fn auto_matches_statsforecast() {
    // statsforecast 2.1.1's CSS-ML stage returned its CSS estimates
    // unchanged in six of these eight cases (`ml_moved` false: scipy's BFGS
    // stops at the start), where this implementation (like R) reaches the
    // ML optimum. So where the orders agree: our AICc is at most theirs;
    // forecasts agree to 1e-4 of the scale when their ML moved, else to 3%;
    // and our CSS fit of the order reproduces their (CSS) estimates.
    // Two cases differ in the order, for documented reasons (below).
    for c in fixture("auto")["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let y = crate::baselines::test_data::case_series(c);
        let m = c["m"].as_u64().unwrap() as usize;
        let h = c["h"].as_u64().unwrap() as usize;
        let opts = AutoOptions {
            period: m,
            ..AutoOptions::default()
        };
        let a = auto_arima(&y, &[], &opts).unwrap();
        let fc = a.forecast(h, &[]).unwrap();
        let want = order_of(&c["order"]);
        let want_const = c["constant"].as_bool().unwrap();
        let scale = y.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let fc_err = max_abs_diff(&fc, &floats(&c["forecast"])) / scale;
        match name {
            // statsforecast skips the root check when only the first
            // coefficient is non-zero: its (3,1,1)(1,0,0) has an MA(1) root
            // inside 1.01 (θ ≈ −1, over-differenced), which R rejects.
            "sim_sar_12" => {
                assert_eq!(a.fit.order, Order::seasonal(5, 1, 1, 1, 0, 0, 12), "{name}");
                let f = fit_arima(&y, &[], want, true, Method::Css, None).unwrap();
                assert!(f.coef[3].abs() > 1.0 / 1.01, "{name}: {:?}", f.coef);
            }
            // Their (2,0,2)(1,1,1) kept the CSS estimates (Θ = −0.72); its ML
            // optimum has Θ = −0.90, whose 24 roots lie inside |z| = 1.01
            // (R's rule on the expanded polynomial), so it is rejected here.
            "m4_H1" => {
                assert_eq!(a.fit.order, Order::seasonal(2, 0, 2, 2, 1, 0, 24), "{name}");
                let f = fit_arima(&y, &[], want, true, Method::CssMl, None).unwrap();
                assert!(f.coef[5].abs() > 1.01f64.powi(-24), "{name}: {:?}", f.coef);
            }
            _ => {
                assert_eq!((a.fit.order, a.constant), (want, want_const), "{name}");
                assert!(
                    a.ic <= c["aicc"].as_f64().unwrap() + 1e-3,
                    "{name}: aicc {} vs {}",
                    a.ic,
                    c["aicc"]
                );
                if c["ml_moved"].as_bool().unwrap() {
                    assert!(fc_err < 1e-4, "{name}: forecast error {fc_err}");
                } else {
                    assert!(fc_err < 0.03, "{name}: forecast error {fc_err}");
                    let f = fit_arima(&y, &[], want, want_const, Method::Css, None).unwrap();
                    let mut ours = f.coef.clone();
                    match f.constant {
                        Constant::Intercept(v) | Constant::Drift(v) => ours.push(v),
                        Constant::None => {}
                    }
                    let theirs = sf_coef(c);
                    assert!(
                        max_abs_diff(&ours, &theirs) < 2e-3,
                        "{name}: CSS {ours:?} vs {theirs:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn search_is_bounded_and_recorded() {
    // Every model the search fitted is recorded once; never more than
    // nmodels; the approximation is on for m > 12.
    let auto = fixture("auto");
    let y = crate::baselines::test_data::case_series(&auto["cases"][2]);
    let opts = AutoOptions {
        period: 24,
        nmodels: 10,
        ..AutoOptions::default()
    };
    let a = auto_arima(&y, &[], &opts).unwrap();
    assert!(a.tried.len() <= 10);
    for (i, t) in a.tried.iter().enumerate() {
        assert!(!a.tried[..i]
            .iter()
            .any(|u| u.order == t.order && u.constant == t.constant));
    }
    assert_eq!(a.fit.method, Method::CssMl);
}

#[test]
fn baselines_keep_the_contract() {
    let seasonal: Vec<f64> = (0..200)
        .map(|t| 10.0 + (t % 24) as f64 + 0.01 * t as f64)
        .collect();
    let noisy: Vec<f64> = simulate(&[0.7], &[0.2], 80, 3)
        .iter()
        .map(|v| v + 50.0)
        .collect();
    let models: Vec<Box<dyn Baseline>> = vec![
        Box::new(AutoArima { period: 12 }),
        Box::new(HarmonicArima {
            period: 12,
            k_max: 2,
        }),
        Box::new(Arimax {
            period: 12,
            k_day: 2,
            k_week: 1,
        }),
    ];
    for b in &models {
        for x in [
            &[][..],
            &[5.0][..],
            &[5.0, 6.0][..],
            &[3.0; 30][..],
            &seasonal[..],
            &noisy[..],
        ] {
            let f = b.forecast(x, 7);
            assert_eq!(f.len(), 7, "{}", b.name());
            if x.is_empty() {
                assert!(f.iter().all(|v| v.is_nan()));
            } else {
                assert!(
                    f.iter().all(|v| v.is_finite()),
                    "{} {:?}",
                    b.name(),
                    &x[..x.len().min(3)]
                );
                // Deterministic: same history, same forecast.
                assert_eq!(f, b.forecast(x, 7), "{}", b.name());
            }
        }
        // A constant history forecasts the constant.
        assert!(
            b.forecast(&[3.0; 30], 3)
                .iter()
                .all(|v| (v - 3.0).abs() < 1e-9),
            "{}",
            b.name()
        );
        // Non-finite history: the naive fallback (its last value).
        let mut bad = noisy.clone();
        bad[10] = f64::NAN;
        assert_eq!(
            b.forecast(&bad, 2),
            vec![*bad.last().unwrap(); 2],
            "{}",
            b.name()
        );
    }
    // Seasonal + linear trend without noise continues exactly: D = 1 and
    // the seasonal difference is the constant 0.24 (R's drift case).
    let f = AutoArima { period: 24 }.forecast(&seasonal, 30);
    for (h, v) in f.iter().enumerate() {
        let t = 200 + h;
        let want = 10.0 + (t % 24) as f64 + 0.01 * t as f64;
        assert!((v - want).abs() < 1e-8, "h={h}: {v} vs {want}");
    }
}

#[test]
fn regression_api_recovers_known_regressors() {
    // y = 5 + 3·x1 − 2·x2 + AR(1) errors (φ = 0.6): the fixed-order fit
    // recovers β; forecasts use the regressors' future values.
    let n = 400;
    let e = simulate(&[0.6], &[], n + 10, 11);
    let x1: Vec<f64> = (0..n + 10).map(|t| ((t * 7) % 13) as f64 / 13.0).collect();
    let x2: Vec<f64> = (0..n + 10)
        .map(|t| if t % 5 == 0 { 1.0 } else { 0.0 })
        .collect();
    let y: Vec<f64> = (0..n + 10)
        .map(|t| 5.0 + 3.0 * x1[t] - 2.0 * x2[t] + e[t])
        .collect();
    let model = RegArima {
        errors: ErrorModel::Fixed {
            order: Order::new(1, 0, 0),
            constant: true,
            method: Method::CssMl,
        },
    };
    let xr = vec![x1[..n].to_vec(), x2[..n].to_vec()];
    let fit = model.fit(&y[..n], &xr).unwrap();
    let a = fit.arima();
    assert!((a.coef[0] - 0.6).abs() < 0.1, "{:?}", a.coef);
    assert!(
        (a.xreg_coef[0] - 3.0).abs() < 0.3 && (a.xreg_coef[1] + 2.0).abs() < 0.2,
        "{:?}",
        a.xreg_coef
    );
    let xf = vec![x1[n..].to_vec(), x2[n..].to_vec()];
    let fc = fit.forecast(10, &xf).unwrap();
    // Far ahead the AR part has decayed: mean + regression.
    let Constant::Intercept(c0) = a.constant else {
        panic!("{:?}", a.constant)
    };
    let want = c0 + a.xreg_coef[0] * x1[n + 9] + a.xreg_coef[1] * x2[n + 9];
    assert!((fc[9] - want).abs() < 0.05, "{} vs {want}", fc[9]);
    // Wrong number of future columns is an error, not a panic.
    assert!(matches!(
        fit.forecast(10, &xf[..1]),
        Err(ArimaError::XregShape { .. })
    ));
    // The automatic search takes regressors too.
    let auto = RegArima {
        errors: ErrorModel::Auto(AutoOptions::default()),
    };
    let fit = auto.fit(&y[..n], &xr).unwrap();
    assert!(
        (fit.arima().xreg_coef[0] - 3.0).abs() < 0.3,
        "{:?}",
        fit.arima()
    );
    assert_eq!(fit.forecast(10, &xf).unwrap().len(), 10);
}

#[test]
fn fourier_terms() {
    // Period 4, K = 2: sin(πt/2), cos(πt/2), cos(πt) (sin(πt) ≡ 0 dropped).
    let f = fourier(1, 3, 4.0, 2);
    assert_eq!(f.len(), 3);
    let want = [[1.0, 0.0, -1.0], [0.0, -1.0, 0.0], [-1.0, 1.0, -1.0]];
    for (c, w) in f.iter().zip(want) {
        for (a, b) in c.iter().zip(w) {
            assert!((a - b).abs() < 1e-12, "{f:?}");
        }
    }
    // Calendar: weekly harmonics only when asked.
    assert_eq!(calendar(0, 10, 24, 3, false, 2).len(), 6);
    assert_eq!(calendar(0, 10, 24, 3, true, 2).len(), 10);
    assert!(!Arimax {
        period: 24,
        k_day: 5,
        k_week: 3
    }
    .weekly(335));
    assert!(Arimax {
        period: 24,
        k_day: 5,
        k_week: 3
    }
    .weekly(336));
}
