//! Prophet-style model: gradient, changepoint grid, logistic growth,
//! intervals, and agreement with Python Prophet 1.5 on fixed series
//! (fixtures made by `scripts/fixtures/prophet.py`).

use super::*;
use crate::baselines::test_data::gauss as noise;

fn objective_for<'a>(
    t: &'a [f64],
    y: &'a [f64],
    x: &'a [f64],
    sigmas: &'a [f64],
    cps: &'a [f64],
    cap: Option<f64>,
) -> Objective<'a> {
    Objective {
        t,
        y,
        x,
        kcols: sigmas.len(),
        sigmas,
        tau: 0.05,
        cps,
        cp_start: cps.iter().map(|c| t.partition_point(|ti| ti < c)).collect(),
        cap,
        cache: RefCell::new(None),
        best: RefCell::new(None),
    }
}

/// The analytic gradient matches central differences (δ away from the
/// Laplace kink at 0), for linear and logistic trends.
#[test]
fn gradient_matches_finite_differences() {
    let n = 60;
    let t: Vec<f64> = (0..n).map(|i| i as f64 / (n - 1) as f64).collect();
    let e = noise(n, 3);
    let y: Vec<f64> = (0..n)
        .map(|i| 0.3 + 0.4 * t[i] + 0.1 * (i as f64 * 0.7).sin() + 0.02 * e[i])
        .collect();
    let design = Design {
        seasonalities: vec![Seasonality {
            name: "s".into(),
            period: 9.0,
            order: 2,
            prior_scale: 10.0,
        }],
        holidays: vec![Holiday {
            name: "h".into(),
            starts: vec![10.0, 40.0],
            duration: 3.0,
            prior_scale: 2.0,
        }],
    };
    let steps: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let x = design.matrix(&steps);
    let sigmas = design.prior_scales();
    let cps = changepoints(n, 5, 0.8);
    for cap in [None, Some(1.5)] {
        let obj = objective_for(&t, &y, &x, &sigmas, &cps, cap);
        let s = cps.len();
        let mut p = vec![0.0; 3 + s + sigmas.len()];
        p[0] = 0.8;
        p[1] = if cap.is_some() { 0.2 } else { 0.3 };
        for j in 0..s {
            p[2 + j] = 0.05 * (j as f64 + 1.0) * if j % 2 == 0 { 1.0 } else { -1.0 };
        }
        p[2 + s] = -1.0;
        for j in 0..sigmas.len() {
            p[3 + s + j] = 0.01 * j as f64;
        }
        let (_, g) = obj.compute(&p);
        for i in 0..p.len() {
            let h = 1e-6;
            let (mut a, mut b) = (p.clone(), p.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (obj.compute(&a).0 - obj.compute(&b).0) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "cap {cap:?} param {i}: analytic {} vs numeric {fd}",
                g[i]
            );
        }
    }
}

/// Prophet's grid: n = 100 -> hist 80, linspace(0, 79, 26) rounded (half to
/// even), first dropped; short histories get fewer; none -> dummy [0].
#[test]
fn changepoint_grid_is_prophets() {
    let c = changepoints(100, 25, 0.8);
    assert_eq!(c.len(), 25);
    let idx: Vec<usize> = c.iter().map(|v| (v * 99.0).round() as usize).collect();
    // numpy: np.linspace(0, 79, 26).round()[1:]
    assert_eq!(
        idx,
        vec![
            3, 6, 9, 13, 16, 19, 22, 25, 28, 32, 35, 38, 41, 44, 47, 51, 54, 57, 60, 63, 66, 70,
            73, 76, 79
        ]
    );
    // hist = 8 -> 7 changepoints at 1..=7.
    let c = changepoints(10, 25, 0.8);
    assert_eq!(c.len(), 7);
    assert_eq!((c[0] * 9.0).round(), 1.0);
    assert_eq!(changepoints(2, 25, 0.8), vec![0.0]);
    assert_eq!(round_half_even(2.5), 2.0);
    assert_eq!(round_half_even(3.5), 4.0);
    assert_eq!(round_half_even(-2.5), -2.0);
}

/// Logistic growth through the Rust API: a noisy logistic curve with known
/// capacity is recovered (forecast approaches the cap, stays below it),
/// while the linear trend extrapolates past it.
#[test]
fn logistic_growth_saturates_at_capacity() {
    let n = 200;
    let e = noise(n, 11);
    let cap = 100.0;
    let y: Vec<f64> = (0..n)
        .map(|i| cap / (1.0 + (-(i as f64 - 90.0) / 15.0).exp()) + 0.5 * e[i])
        .collect();
    let mut model = Prophet::new(1);
    model.growth = Growth::Logistic { cap };
    let fit = model.fit(&y).expect("fit");
    let f = fit.predict(100);
    assert!(f.iter().all(|v| v.is_finite() && *v <= cap), "{f:?}");
    assert!(f[99] > 97.0, "{}", f[99]);
    // In-sample fit is close to the truth.
    let steps: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let fitted = fit.yhat(&steps);
    let rmse = (fitted
        .iter()
        .enumerate()
        .map(|(i, v)| (v - cap / (1.0 + (-(i as f64 - 90.0) / 15.0).exp())).powi(2))
        .sum::<f64>()
        / n as f64)
        .sqrt();
    assert!(rmse < 1.0, "rmse {rmse}");
    let lin = Prophet::new(1).fit(&y).expect("fit").predict(100);
    assert!(lin[99] > cap, "{}", lin[99]);
    // Intervals exist for the logistic path too and bracket the point.
    let iv = model.forecast_interval(&y, 10, 0.8).expect("interval");
    for h in 0..10 {
        assert!(iv.lower[h] <= iv.point[h] + 1e-9 && iv.point[h] <= iv.upper[h] + 1e-9);
    }
    // A capacity below the data is refused (the baseline would fall back).
    model.growth = Growth::Logistic { cap: -1.0 };
    assert!(model.fit(&y).is_none());
}

/// ~80% intervals cover ~80% of future values on a series simulated from
/// the model's own assumptions (trend + daily seasonality + Gaussian noise),
/// over many origins.
#[test]
fn interval_80_covers_about_80_percent() {
    let m = 24;
    let (mut inside, mut total) = (0usize, 0usize);
    for rep in 0..12u64 {
        let n = 24 * 20 + 24;
        let e = noise(n, 100 + rep);
        let y: Vec<f64> = (0..n)
            .map(|i| {
                let x = i as f64;
                50.0 + 0.02 * x + 8.0 * (2.0 * std::f64::consts::PI * x / 24.0).sin() + 2.0 * e[i]
            })
            .collect();
        let (hist, fut) = y.split_at(n - 24);
        let mut model = Prophet::new(m);
        model.uncertainty_samples = 400;
        model.seed = rep;
        let iv = model.forecast_interval(hist, 24, 0.8).expect("interval");
        for ((y, lo), hi) in fut.iter().zip(&iv.lower).zip(&iv.upper) {
            total += 1;
            if y >= lo && y <= hi {
                inside += 1;
            }
        }
    }
    let cover = inside as f64 / total as f64;
    assert!((0.72..=0.9).contains(&cover), "coverage {cover}");
}

/// The registry form: deterministic, finite, right length, naive fallback
/// for one value, NaNs for none.
#[test]
fn baseline_contract() {
    let p = Prophet::new(24);
    assert_eq!(p.name(), "prophet");
    assert_eq!(p.forecast(&[5.0], 3), vec![5.0; 3]);
    assert!(p.forecast(&[], 2).iter().all(|v| v.is_nan()));
    let y: Vec<f64> = (0..100).map(|i| (i % 7) as f64).collect();
    let a = p.forecast(&y, 30);
    assert_eq!(a.len(), 30);
    assert!(a.iter().all(|v| v.is_finite()));
    assert_eq!(a, p.forecast(&y, 30));
    // Constant and all-zero histories stay flat.
    for c in [0.0, 7.0] {
        let f = p.forecast(&[c; 50], 5);
        assert!(f.iter().all(|v| (v - c).abs() < 1e-3 * (1.0 + c)), "{f:?}");
    }
    let named = crate::baselines::named("prophet", 24).expect("registered");
    assert_eq!(named.forecast(&y, 30), a);
}

/// Seasonalities derived from the season: daily once the history spans two
/// periods, weekly once it spans two weeks.
#[test]
fn automatic_seasonalities() {
    let p = Prophet::new(24);
    let names = |n| -> Vec<String> {
        p.seasonalities_for(n)
            .into_iter()
            .map(|s| format!("{}:{}:{}", s.name, s.period, s.order))
            .collect()
    };
    assert!(names(48).is_empty());
    assert_eq!(names(49), vec!["daily:24:4"]);
    assert_eq!(names(24 * 14), vec!["daily:24:4"]);
    assert_eq!(names(24 * 14 + 1), vec!["daily:24:4", "weekly:168:3"]);
    assert!(Prophet::new(1).seasonalities_for(10_000).is_empty());
}

// ------------------------------------------------ against Python Prophet

/// The first `n` values of M4 Hourly series `id` (read in place).
fn m4_series(id: &str, n: usize) -> Vec<f64> {
    crate::baselines::test_data::m4_series(id, Some(n))
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

struct Case {
    fx: serde_json::Value,
    y: Vec<f64>,
    model: Prophet,
}

fn case(text: &str) -> Case {
    let fx: serde_json::Value = serde_json::from_str(text).expect("fixture json");
    let y = if fx["y"].is_null() {
        let src = fx["source"].as_str().expect("source");
        let mut it = src.split(':');
        let (_, id, n) = (it.next(), it.next().expect("id"), it.next().expect("n"));
        m4_series(id, n.parse().expect("n"))
    } else {
        floats(&fx["y"])
    };
    let mut model = Prophet::new(fx["season"].as_u64().expect("season") as usize);
    if fx["growth"] == "logistic" {
        model.growth = Growth::Logistic {
            cap: fx["cap"].as_f64().expect("cap"),
        };
    }
    for h in fx["holidays"].as_array().expect("holidays") {
        model.holidays.push(Holiday {
            name: h["name"].as_str().expect("name").into(),
            starts: floats(&h["starts"]),
            duration: h["duration"].as_f64().expect("duration"),
            prior_scale: h["prior_scale"].as_f64().expect("prior_scale"),
        });
    }
    Case { fx, y, model }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// Same scaling and changepoints as Prophet; MAP optimum, fitted
/// components, 48-step forecast and 80% interval close to Prophet 1.5's.
fn check_against_prophet(text: &str) {
    let Case { fx, y, model } = case(text);
    let name = fx["case"].as_str().unwrap_or("?").to_string();
    assert_eq!(y.len() as u64, fx["n"].as_u64().expect("n"), "{name}");
    let fit = model.fit(&y).expect("fit");
    // Setup is exact.
    assert!((fit.y_scale - fx["y_scale"].as_f64().expect("y_scale")).abs() < 1e-9);
    let cps = floats(&fx["changepoints_t"]);
    assert_eq!(fit.changepoints.len(), cps.len(), "{name}");
    assert!(max_abs_diff(&fit.changepoints, &cps) < 1e-9, "{name}");
    let n = y.len();
    let steps: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let ys = fit.y_scale;
    // MAP objective vs Prophet's optimum, both evaluated by our objective
    // (Stan's log density): ours must not be worse by more than a hair.
    let fitted = &fx["fitted"];
    let trend_d = max_abs_diff(&fit.trend(&steps), &floats(&fitted["trend"])) / ys;
    let mut comp_d = 0.0f64;
    for (key, _) in fitted
        .as_object()
        .expect("fitted")
        .iter()
        .filter(|(k, _)| *k != "trend")
    {
        let ours = fit.component(key, &steps).expect("component");
        comp_d = comp_d.max(max_abs_diff(&ours, &floats(&fitted[key])) / ys);
    }
    let fc = &fx["forecast"];
    let h = 48;
    let iv = fit.interval(h, 0.8, 1000, 0);
    let want = floats(&fc["yhat"]);
    let rel = iv
        .point
        .iter()
        .zip(&want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() / b.abs().max(1e-9)));
    let (lo, hi) = (floats(&fc["lower"]), floats(&fc["upper"]));
    let width_ratio = {
        let ours: f64 = iv.upper.iter().zip(&iv.lower).map(|(u, l)| u - l).sum();
        let theirs: f64 = hi.iter().zip(&lo).map(|(u, l)| u - l).sum();
        ours / theirs
    };
    let sigma_ratio = fit.sigma_obs / fx["params"]["sigma_obs"][0].as_f64().expect("sigma");
    eprintln!(
        "{name}: trend {trend_d:.2e}, components {comp_d:.2e} (of y_scale); \
         48-step yhat max rel diff {rel:.2e}; sigma ratio {sigma_ratio:.4}; \
         80% width ratio {width_ratio:.3}; iterations {}",
        fit.iterations
    );
    assert!(
        trend_d < 0.01,
        "{name}: trend differs by {trend_d} of y_scale"
    );
    assert!(
        comp_d < 0.01,
        "{name}: components differ by {comp_d} of y_scale"
    );
    assert!(rel < 0.02, "{name}: forecast differs by {rel} (relative)");
    assert!(
        (sigma_ratio - 1.0).abs() < 0.02,
        "{name}: sigma ratio {sigma_ratio}"
    );
    assert!(
        (0.85..1.15).contains(&width_ratio),
        "{name}: width ratio {width_ratio}"
    );
}

#[test]
fn matches_prophet_sim_linear_with_holidays() {
    check_against_prophet(include_str!(
        "../../../tests/fixtures/prophet/sim_linear.json"
    ));
}

#[test]
fn matches_prophet_sim_logistic() {
    check_against_prophet(include_str!(
        "../../../tests/fixtures/prophet/sim_logistic.json"
    ));
}

#[test]
fn matches_prophet_m4_h1() {
    check_against_prophet(include_str!("../../../tests/fixtures/prophet/m4_H1.json"));
}

#[test]
fn matches_prophet_m4_h250() {
    check_against_prophet(include_str!("../../../tests/fixtures/prophet/m4_H250.json"));
}

/// Regression: on this series argmin's first L-BFGS run stopped after 4
/// iterations ("search direction must be a descent direction") and the
/// forecast was off by 20% of the series' scale; restarts fix it.
#[test]
fn matches_prophet_m4_h185_full_history() {
    check_against_prophet(include_str!("../../../tests/fixtures/prophet/m4_H185.json"));
}
