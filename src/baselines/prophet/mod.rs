//! Prophet-style additive model: `y(t) = g(t) + s(t) + h(t) + e`, fitted by
//! MAP on Prophet's scaled problem (Taylor & Letham 2018; the model of
//! Prophet 1.x's `prophet.stan`, additive mode).
//!
//! Purpose: a decomposable trend + Fourier seasonality + holiday baseline
//! (`prophet` in the registry) next to the exponential-smoothing family, with
//! Prophet's simulated uncertainty intervals in the Rust API.
//!
//! The model, as in Prophet (all in scaled units: `y / max|y|`, time scaled
//! to `[0, 1]` over the history):
//! * trend `g`: piecewise linear `(k + a(t)·δ) t + (m - a(t)·(c∘δ))` with
//!   `n_changepoints` (25) candidate changepoints evenly over the first
//!   `changepoint_range` (80%) of the history (Prophet's index rounding), or
//!   piecewise logistic `C / (1 + exp(-(k + a(t)·δ)(t - (m + a(t)·γ))))`
//!   with a capacity `C` ([`Growth::Logistic`]; γ keeps it continuous);
//! * seasonalities: Fourier terms `sin/cos(2π j x / P)`, `j = 1..order`,
//!   where `x` is the step index (history[0] is step 0) and `P` a period in
//!   steps; automatic ones derive from `season` (steps per day-like cycle):
//!   period `season` with order 4 once the history spans 2 periods, period
//!   `7·season` with order 3 once it spans 2 weeks, `365.25·season` with
//!   order 10 once it spans 2 years (Prophet's auto rules and orders);
//! * holidays: one indicator column per [`Holiday`] (1 on
//!   `[start, start + duration)` steps), with its own prior scale;
//! * priors: `k, m ~ N(0, 5)`, `δ ~ Laplace(0, changepoint_prior_scale)`,
//!   `β ~ N(0, prior_scale)`, `σ ~ N⁺(0, 0.5)`; likelihood `N(g + Xβ, σ)`.
//!   The MAP objective is Stan's (constants dropped, no Jacobian for `σ`,
//!   which is optimised as `log σ` like Stan's unconstrained parameter),
//!   started from Prophet's initial values (line through first and last
//!   point, `δ = β = 0`, `σ = 1`).
//!
//! Optimiser: L-BFGS from the `argmin` crate (history 5, as Stan's default;
//! More–Thuente line search). The `augurs-prophet` crate was evaluated first:
//! it ports Prophet's preprocessing to Rust but delegates the fit to Stan,
//! either a `cmdstan` binary (downloaded separately, run as a subprocess per
//! fit) or the `wasmstan` feature, which builds offline but pulls wasmtime and
//! Cranelift (87 crates this project does not have) to JIT a WASM build of
//! Stan. Neither fits a per-key baseline that must build in CI and stay a pure
//! function; the model is small enough to write with its gradient by hand.
//! The objective has Laplace kinks at `δ = 0` which Stan's L-BFGS also treats
//! with the sign subgradient; optima therefore agree with Prophet's closely but
//! not bit for bit (see `tests.rs` for the tolerances against Prophet 1.5).
//!
//! Uncertainty ([`Prophet::forecast_interval`]): Prophet's MAP-mode
//! simulation — future trend rate changes occur at each future step with
//! probability `S·Δt` (S changepoints, Δt one step in scaled time) with
//! Laplace(0, mean|δ|) sizes (Prophet's vectorised sampler, including its
//! averaging of adjacent shifts), plus Gaussian noise `σ`; the interval is the
//! empirical quantile pair of `uncertainty_samples` (1000) paths. The random
//! stream is seeded from [`Prophet::seed`], so intervals are deterministic.
//!
//! Invariants: [`Baseline::forecast`] is a pure function of the history; it
//! returns `horizon` values, all finite for a finite non-empty history (a
//! history of one value, a failed fit or a non-finite forecast gives the
//! naive forecast). Cost: O(n·K) per objective evaluation (K Fourier and
//! holiday columns, 14 for hourly data spanning two weeks); M4 Hourly fits
//! take 200-3,000 L-BFGS iterations, ~45 ms for n ≈ 900 in a release build.

use std::cell::RefCell;

use argmin::core::{CostFunction, Executor, Gradient, State, TerminationReason, TerminationStatus};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{finite_or_naive, Baseline};

/// Trend shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Growth {
    /// Piecewise linear (the registry's choice).
    Linear,
    /// Piecewise logistic saturating at `cap` (data units, constant in
    /// time; the floor is 0 as in Prophet without a `floor` column).
    Logistic {
        /// Carrying capacity `C`; must exceed every history value.
        cap: f64,
    },
}

/// One Fourier seasonality.
#[derive(Debug, Clone, PartialEq)]
pub struct Seasonality {
    /// Name (for [`ProphetFit::component`]).
    pub name: String,
    /// Period in steps.
    pub period: f64,
    /// Number of sin/cos pairs.
    pub order: usize,
    /// Normal prior scale of its coefficients (scaled units).
    pub prior_scale: f64,
}

/// A holiday: one indicator regressor, 1 on `[start, start + duration)` for
/// each start (in steps; history[0] is step 0, the forecast's first value is
/// step `history.len()`). For hourly data a day-level holiday at midnight is
/// `duration = 24`, which is how Prophet matches hourly stamps to a date.
#[derive(Debug, Clone, PartialEq)]
pub struct Holiday {
    /// Name (for [`ProphetFit::component`]).
    pub name: String,
    /// First step of each occurrence (past and future).
    pub starts: Vec<f64>,
    /// Length of each occurrence in steps.
    pub duration: f64,
    /// Normal prior scale of its coefficient (Prophet's default is 10).
    pub prior_scale: f64,
}

/// Point forecast with a central prediction interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// Point forecast (the MAP model's `yhat`).
    pub point: Vec<f64>,
    /// Lower quantile `(1 - level) / 2` of the simulated paths.
    pub lower: Vec<f64>,
    /// Upper quantile `(1 + level) / 2`.
    pub upper: Vec<f64>,
}

/// The model's configuration (Prophet's defaults from [`Prophet::new`]).
#[derive(Debug, Clone)]
pub struct Prophet {
    /// Trend shape.
    pub growth: Growth,
    /// Candidate changepoints (Prophet: 25).
    pub n_changepoints: usize,
    /// Share of the history they are spread over (Prophet: 0.8).
    pub changepoint_range: f64,
    /// Laplace scale of the rate changes (Prophet: 0.05).
    pub changepoint_prior_scale: f64,
    /// Steps per day-like cycle (24 for hourly data); drives the automatic
    /// seasonalities. 0 or 1: none.
    pub season: usize,
    /// Fourier orders of the automatic seasonalities (Prophet: 4, 3, 10).
    pub daily_order: usize,
    /// See `daily_order`.
    pub weekly_order: usize,
    /// See `daily_order`.
    pub yearly_order: usize,
    /// Prior scale of the automatic seasonalities (Prophet: 10).
    pub seasonality_prior_scale: f64,
    /// Explicit seasonalities; `None` derives them from `season`.
    pub seasonalities: Option<Vec<Seasonality>>,
    /// Holiday regressors (none in the registry form).
    pub holidays: Vec<Holiday>,
    /// Simulated paths behind an interval (Prophet: 1000).
    pub uncertainty_samples: usize,
    /// Seed of the interval simulation.
    pub seed: u64,
    /// L-BFGS iteration cap (Prophet passes 10,000 to Stan).
    pub max_iters: u64,
}

impl Prophet {
    /// Prophet's defaults with linear growth, seasonalities from `season`.
    pub fn new(season: usize) -> Self {
        Prophet {
            growth: Growth::Linear,
            n_changepoints: 25,
            changepoint_range: 0.8,
            changepoint_prior_scale: 0.05,
            season,
            daily_order: 4,
            weekly_order: 3,
            yearly_order: 10,
            seasonality_prior_scale: 10.0,
            seasonalities: None,
            holidays: Vec::new(),
            uncertainty_samples: 1000,
            seed: 0x5eed,
            max_iters: 10_000,
        }
    }

    /// The seasonalities used for a history of `n` values.
    pub fn seasonalities_for(&self, n: usize) -> Vec<Seasonality> {
        if let Some(s) = &self.seasonalities {
            return s.clone();
        }
        let m = self.season as f64;
        let span = n.saturating_sub(1) as f64;
        let mut out = Vec::new();
        if self.season <= 1 {
            return out;
        }
        let mut add = |name: &str, period: f64, order: usize| {
            if order > 0 && span >= 2.0 * period {
                out.push(Seasonality {
                    name: name.into(),
                    period,
                    order,
                    prior_scale: self.seasonality_prior_scale,
                });
            }
        };
        add("daily", m, self.daily_order);
        add("weekly", 7.0 * m, self.weekly_order);
        add("yearly", 365.25 * m, self.yearly_order);
        out
    }

    /// Fits the model to `history` (step `i` is `history[i]`). `None` for
    /// fewer than 2 values, a non-finite value, or a logistic capacity not
    /// above the data.
    pub fn fit(&self, history: &[f64]) -> Option<ProphetFit> {
        let n = history.len();
        if n < 2 || history.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut y_scale = history.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        if y_scale == 0.0 {
            y_scale = 1.0;
        }
        let y: Vec<f64> = history.iter().map(|v| v / y_scale).collect();
        let t_scale = (n - 1) as f64;
        let t: Vec<f64> = (0..n).map(|i| i as f64 / t_scale).collect();
        let cap = match self.growth {
            Growth::Linear => None,
            Growth::Logistic { cap } => {
                let c = cap / y_scale;
                if !(c.is_finite() && c > 0.0) {
                    return None;
                }
                Some(c)
            }
        };
        let changepoints = changepoints(n, self.n_changepoints, self.changepoint_range);
        let design = Design {
            seasonalities: self.seasonalities_for(n),
            holidays: self.holidays.clone(),
        };
        let steps: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let x = design.matrix(&steps);
        let sigmas = design.prior_scales();
        let kcols = sigmas.len();
        let s = changepoints.len();
        let (k0, m0) = match cap {
            None => (y[n - 1] - y[0], y[0]),
            Some(c) => logistic_init(y[0], y[n - 1], c),
        };
        let mut x0 = vec![0.0; 3 + s + kcols];
        x0[0] = k0;
        x0[1] = m0;
        let obj = Objective {
            t: &t,
            y: &y,
            x: &x,
            kcols,
            sigmas: &sigmas,
            tau: self.changepoint_prior_scale,
            cps: &changepoints,
            cp_start: changepoints
                .iter()
                .map(|c| t.partition_point(|ti| ti < c))
                .collect(),
            cap,
            cache: RefCell::new(None),
            best: RefCell::new(None),
        };
        let (p, objective, iterations) = minimize(&obj, x0, self.max_iters)?;
        Some(ProphetFit {
            k: p[0],
            m: p[1],
            delta: p[2..2 + s].to_vec(),
            sigma_obs: p[2 + s].exp(),
            beta: p[3 + s..].to_vec(),
            y_scale,
            cap,
            changepoints,
            t_scale,
            n,
            design,
            objective,
            iterations,
        })
    }

    /// `horizon` point forecasts with a central `level` interval (e.g. 0.8)
    /// from Prophet's simulation (see the module header). `None` where
    /// [`Prophet::fit`] fails.
    pub fn forecast_interval(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Option<Interval> {
        let fit = self.fit(history)?;
        Some(fit.interval(horizon, level, self.uncertainty_samples, self.seed))
    }
}

impl Baseline for Prophet {
    fn name(&self) -> &str {
        "prophet"
    }
    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(&last) = history.last() else {
            return vec![f64::NAN; horizon];
        };
        match self.fit(history) {
            Some(fit) => finite_or_naive(fit.predict(horizon), last),
            None => vec![last; horizon],
        }
    }
}

/// A fitted model: MAP parameters in Prophet's scaled units.
#[derive(Debug, Clone)]
pub struct ProphetFit {
    /// Base growth rate.
    pub k: f64,
    /// Offset.
    pub m: f64,
    /// Rate changes at [`ProphetFit::changepoints`].
    pub delta: Vec<f64>,
    /// Observation noise (scaled).
    pub sigma_obs: f64,
    /// Seasonality and holiday coefficients, in column order (per
    /// seasonality sin/cos pairs of increasing order, then holidays).
    pub beta: Vec<f64>,
    /// `max |y|` (1 for an all-zero history).
    pub y_scale: f64,
    /// Scaled capacity (logistic growth).
    pub cap: Option<f64>,
    /// Changepoint times in scaled time (`[0]`, a dummy, when there are none).
    pub changepoints: Vec<f64>,
    /// Steps per unit of scaled time (`n - 1`).
    pub t_scale: f64,
    n: usize,
    design: Design,
    /// Final MAP objective (negative log posterior, Stan's constants dropped).
    pub objective: f64,
    /// L-BFGS iterations taken.
    pub iterations: u64,
}

impl ProphetFit {
    /// Steps `n .. n + horizon` (the forecast's).
    fn future_steps(&self, horizon: usize) -> Vec<f64> {
        (self.n..self.n + horizon).map(|i| i as f64).collect()
    }

    /// The trend at `steps` (data units).
    pub fn trend(&self, steps: &[f64]) -> Vec<f64> {
        let t: Vec<f64> = steps.iter().map(|x| x / self.t_scale).collect();
        trend(
            self.k,
            self.m,
            &self.delta,
            &self.changepoints,
            &t,
            self.cap,
        )
        .into_iter()
        .map(|v| v * self.y_scale)
        .collect()
    }

    /// One named seasonality or holiday at `steps` (data units); `None` for
    /// an unknown name.
    pub fn component(&self, name: &str, steps: &[f64]) -> Option<Vec<f64>> {
        let (from, to) = self.design.columns_of(name)?;
        let x = self.design.matrix(steps);
        let kc = self.beta.len();
        Some(
            (0..steps.len())
                .map(|i| {
                    (from..to)
                        .map(|j| x[i * kc + j] * self.beta[j])
                        .sum::<f64>()
                        * self.y_scale
                })
                .collect(),
        )
    }

    /// All seasonalities and holidays at `steps` (data units).
    pub fn additive_terms(&self, steps: &[f64]) -> Vec<f64> {
        let x = self.design.matrix(steps);
        let kc = self.beta.len();
        (0..steps.len())
            .map(|i| dot(&x[i * kc..(i + 1) * kc], &self.beta) * self.y_scale)
            .collect()
    }

    /// The model's value (`yhat`) at `steps`.
    pub fn yhat(&self, steps: &[f64]) -> Vec<f64> {
        let g = self.trend(steps);
        let s = self.additive_terms(steps);
        g.iter().zip(&s).map(|(a, b)| a + b).collect()
    }

    /// `horizon` point forecasts after the history.
    pub fn predict(&self, horizon: usize) -> Vec<f64> {
        self.yhat(&self.future_steps(horizon))
    }

    /// Point forecast and central `level` interval from `samples` simulated
    /// paths (seeded by `seed`).
    pub fn interval(&self, horizon: usize, level: f64, samples: usize, seed: u64) -> Interval {
        let steps = self.future_steps(horizon);
        let point = self.yhat(&steps);
        if horizon == 0 {
            return Interval {
                point,
                lower: Vec::new(),
                upper: Vec::new(),
            };
        }
        let level = if level.is_nan() {
            0.8
        } else {
            level.clamp(0.0, 1.0)
        };
        let samples = samples.max(1);
        let t: Vec<f64> = steps.iter().map(|x| x / self.t_scale).collect();
        let expected = trend(
            self.k,
            self.m,
            &self.delta,
            &self.changepoints,
            &t,
            self.cap,
        );
        let seasonal = self.additive_terms(&steps);
        // Prophet: likelihood of a rate change per future step = S * Δt, its
        // size Laplace(0, mean |δ| + 1e-8).
        let dt = 1.0 / self.t_scale;
        let likelihood = self.changepoints.len() as f64 * dt;
        let mean_delta =
            self.delta.iter().map(|d| d.abs()).sum::<f64>() / self.delta.len().max(1) as f64 + 1e-8;
        let mut rng = StdRng::seed_from_u64(seed);
        // paths[h]: the simulated values at step h.
        let mut paths = vec![Vec::with_capacity(samples); horizon];
        let mut shifts = vec![0.0; horizon];
        for _ in 0..samples {
            for v in shifts.iter_mut() {
                let change = rng.random::<f64>() < likelihood;
                let size = laplace(&mut rng, mean_delta);
                *v = if change { size } else { 0.0 };
            }
            let sim_trend: Vec<f64> = match self.cap {
                None => {
                    // Prophet's vectorised sampler: shifts averaged with
                    // the previous step's, then integrated twice.
                    let (mut rate, mut level_, mut prev) = (0.0, 0.0, 0.0);
                    shifts
                        .iter()
                        .zip(&expected)
                        .map(|(&d, e)| {
                            rate += (prev + d) / 2.0;
                            prev = d;
                            level_ += rate;
                            e + level_ * dt
                        })
                        .collect()
                }
                Some(_) => {
                    // Logistic: the new rate changes become changepoints at
                    // their steps (the continuity offsets follow), as in
                    // Prophet's per-path sampler.
                    let mut cps = self.changepoints.clone();
                    let mut deltas = self.delta.clone();
                    for (d, ti) in shifts.iter().zip(&t) {
                        if *d != 0.0 {
                            cps.push(*ti);
                            deltas.push(*d);
                        }
                    }
                    trend(self.k, self.m, &deltas, &cps, &t, self.cap)
                }
            };
            for ((p, g), seas) in paths.iter_mut().zip(&sim_trend).zip(&seasonal) {
                let noise = normal(&mut rng) * self.sigma_obs;
                p.push((g + noise) * self.y_scale + seas);
            }
        }
        let (qlo, qhi) = ((1.0 - level) / 2.0, (1.0 + level) / 2.0);
        let mut lower = Vec::with_capacity(horizon);
        let mut upper = Vec::with_capacity(horizon);
        for p in paths.iter_mut() {
            p.sort_by(f64::total_cmp);
            lower.push(quantile(p, qlo));
            upper.push(quantile(p, qhi));
        }
        Interval {
            point,
            lower,
            upper,
        }
    }
}

// ------------------------------------------------------------ the design

/// The seasonal and holiday regressors (the columns of `X`).
#[derive(Debug, Clone)]
struct Design {
    seasonalities: Vec<Seasonality>,
    holidays: Vec<Holiday>,
}

impl Design {
    fn prior_scales(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for s in &self.seasonalities {
            out.extend(std::iter::repeat_n(s.prior_scale, 2 * s.order));
        }
        out.extend(self.holidays.iter().map(|h| h.prior_scale));
        out
    }

    /// Column range `[from, to)` of a named component.
    fn columns_of(&self, name: &str) -> Option<(usize, usize)> {
        let mut at = 0;
        for s in &self.seasonalities {
            if s.name == name {
                return Some((at, at + 2 * s.order));
            }
            at += 2 * s.order;
        }
        for h in &self.holidays {
            if h.name == name {
                return Some((at, at + 1));
            }
            at += 1;
        }
        None
    }

    /// Row-major `steps.len() x K` matrix at the given steps.
    fn matrix(&self, steps: &[f64]) -> Vec<f64> {
        let k: usize = self
            .seasonalities
            .iter()
            .map(|s| 2 * s.order)
            .sum::<usize>()
            + self.holidays.len();
        let mut x = Vec::with_capacity(steps.len() * k);
        for &step in steps {
            for s in &self.seasonalities {
                let base = 2.0 * std::f64::consts::PI * step / s.period;
                for j in 1..=s.order {
                    let (sin, cos) = (j as f64 * base).sin_cos();
                    x.push(sin);
                    x.push(cos);
                }
            }
            for h in &self.holidays {
                let on = h
                    .starts
                    .iter()
                    .any(|&s0| step >= s0 && step < s0 + h.duration);
                x.push(if on { 1.0 } else { 0.0 });
            }
        }
        x
    }
}

/// Prophet's changepoint grid in scaled time: `n_changepoints + 1` indices
/// `linspace(0, hist - 1)` rounded half to even (numpy), the first dropped,
/// `hist = floor(n * range)`; fewer when the history is short; `[0]` (a dummy
/// whose rate change acts as a second base rate) when none remain.
pub fn changepoints(n: usize, n_changepoints: usize, range: f64) -> Vec<f64> {
    let hist = (n as f64 * range.clamp(0.0, 1.0)).floor() as usize;
    let count = if n_changepoints + 1 > hist {
        hist.saturating_sub(1)
    } else {
        n_changepoints
    };
    if count == 0 || n < 2 {
        return vec![0.0];
    }
    let t_scale = (n - 1) as f64;
    let last = (hist - 1) as f64;
    (1..=count)
        .map(|i| {
            // numpy's linspace: start + i * step, the last point exact.
            let v = if i == count {
                last
            } else {
                i as f64 * (last / count as f64)
            };
            round_half_even(v) / t_scale
        })
        .collect()
}

fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

/// Prophet's `logistic_growth_init` for a constant capacity.
fn logistic_init(y0: f64, y1: f64, cap: f64) -> (f64, f64) {
    let y0 = (0.01 * cap).max((0.99 * cap).min(y0));
    let y1 = (0.01 * cap).max((0.99 * cap).min(y1));
    let mut r0 = cap / y0;
    let r1 = cap / y1;
    if (r0 - r1).abs() <= 0.01 {
        r0 *= 1.05;
    }
    let (l0, l1) = ((r0 - 1.0).ln(), (r1 - 1.0).ln());
    // T = 1 in scaled time.
    (l0 - l1, l0 / (l0 - l1))
}

/// Logistic continuity offsets γ (Stan's `logistic_gamma`) and the rates
/// `k_s` of each segment (`S + 1` of them).
fn logistic_gamma(k: f64, m: f64, delta: &[f64], cps: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut ks = Vec::with_capacity(delta.len() + 1);
    ks.push(k);
    for d in delta {
        let last = ks[ks.len() - 1];
        ks.push(last + d);
    }
    let mut gamma = Vec::with_capacity(delta.len());
    let mut m_pr = m;
    for i in 0..delta.len() {
        let g = (cps[i] - m_pr) * (1.0 - ks[i] / ks[i + 1]);
        gamma.push(g);
        m_pr += g;
    }
    (gamma, ks)
}

/// Trend at scaled times `t` (any order), scaled units.
fn trend(k: f64, m: f64, delta: &[f64], cps: &[f64], t: &[f64], cap: Option<f64>) -> Vec<f64> {
    // Changepoints may come unsorted (simulated ones are appended), so
    // sort (time, δ) pairs once.
    let mut order: Vec<usize> = (0..cps.len()).collect();
    order.sort_by(|&a, &b| cps[a].total_cmp(&cps[b]));
    let cps: Vec<f64> = order.iter().map(|&i| cps[i]).collect();
    let delta: Vec<f64> = order.iter().map(|&i| delta[i]).collect();
    match cap {
        None => t
            .iter()
            .map(|&ti| {
                let (mut rate, mut off) = (k, m);
                for (c, d) in cps.iter().zip(&delta) {
                    if ti >= *c {
                        rate += d;
                        off -= c * d;
                    }
                }
                rate * ti + off
            })
            .collect(),
        Some(c) => {
            let (gamma, _) = logistic_gamma(k, m, &delta, &cps);
            t.iter()
                .map(|&ti| {
                    let (mut rate, mut off) = (k, m);
                    for ((cp, d), g) in cps.iter().zip(&delta).zip(&gamma) {
                        if ti >= *cp {
                            rate += d;
                            off += g;
                        }
                    }
                    c * sigmoid(rate * (ti - off))
                })
                .collect()
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// numpy's default (linear) percentile of sorted values, `q` in [0, 1].
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn laplace(rng: &mut StdRng, scale: f64) -> f64 {
    // Inverse CDF; u in (-0.5, 0.5).
    let u = rng.random::<f64>() - 0.5;
    -scale * u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln()
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

// ------------------------------------------------------------ the MAP fit

/// A point, the objective there and its gradient.
type Evaluation = (Vec<f64>, f64, Vec<f64>);

/// Negative log posterior of Prophet's Stan model (additive features) in the
/// parameters `[k, m, δ (S), log σ, β (K)]`.
struct Objective<'a> {
    t: &'a [f64],
    y: &'a [f64],
    /// Row-major n x K.
    x: &'a [f64],
    kcols: usize,
    sigmas: &'a [f64],
    tau: f64,
    cps: &'a [f64],
    /// First index `i` with `t[i] >= cps[j]`.
    cp_start: Vec<usize>,
    cap: Option<f64>,
    /// The last evaluation (argmin asks for cost and gradient separately).
    cache: RefCell<Option<Evaluation>>,
    /// The best point evaluated (kept if the solver stops with an error).
    best: RefCell<Option<(f64, Vec<f64>)>>,
}

impl Objective<'_> {
    fn eval(&self, p: &[f64]) -> (f64, Vec<f64>) {
        if let Some((q, f, g)) = &*self.cache.borrow() {
            if q.as_slice() == p {
                return (*f, g.clone());
            }
        }
        let (f, g) = self.compute(p);
        if f.is_finite() {
            let mut best = self.best.borrow_mut();
            if best.as_ref().is_none_or(|(bf, _)| f < *bf) {
                *best = Some((f, p.to_vec()));
            }
        }
        *self.cache.borrow_mut() = Some((p.to_vec(), f, g.clone()));
        (f, g)
    }

    fn compute(&self, p: &[f64]) -> (f64, Vec<f64>) {
        let n = self.t.len();
        let s = self.cps.len();
        let kc = self.kcols;
        let (k, m) = (p[0], p[1]);
        let delta = &p[2..2 + s];
        let u = p[2 + s];
        let beta = &p[3 + s..3 + s + kc];
        let sigma2 = (2.0 * u).exp();
        let mut grad = vec![0.0; p.len()];

        // Trend and, for the logistic, its local derivative pieces.
        let mut tr = vec![0.0; n];
        let mut seg = vec![0usize; n];
        let logistic = self.cap.map(|c| (c, logistic_gamma(k, m, delta, self.cps)));
        {
            let (mut j, mut rate, mut off) = (0usize, k, m);
            for i in 0..n {
                while j < s && self.t[i] >= self.cps[j] {
                    rate += delta[j];
                    off += match &logistic {
                        None => -self.cps[j] * delta[j],
                        Some((_, (gamma, _))) => gamma[j],
                    };
                    j += 1;
                }
                seg[i] = j;
                tr[i] = match &logistic {
                    None => rate * self.t[i] + off,
                    Some((c, _)) => c * sigmoid(rate * (self.t[i] - off)),
                };
            }
        }
        // Residuals and dF/dtrend = -r / σ².
        let mut sse = 0.0;
        let mut gt = vec![0.0; n];
        for i in 0..n {
            let row = &self.x[i * kc..(i + 1) * kc];
            let r = self.y[i] - tr[i] - dot(row, beta);
            sse += r * r;
            let w = r / sigma2;
            gt[i] = -w;
            for (gb, xij) in grad[3 + s..].iter_mut().zip(row) {
                *gb -= w * xij;
            }
        }
        let mut f = n as f64 * u + sse / (2.0 * sigma2);
        // Priors.
        f += (k * k + m * m) / 50.0;
        grad[0] += k / 25.0;
        grad[1] += m / 25.0;
        for (j, d) in delta.iter().enumerate() {
            f += d.abs() / self.tau;
            grad[2 + j] += if *d > 0.0 {
                1.0 / self.tau
            } else if *d < 0.0 {
                -1.0 / self.tau
            } else {
                0.0
            };
        }
        f += 2.0 * sigma2;
        grad[2 + s] += n as f64 - sse / sigma2 + 4.0 * sigma2;
        for (j, b) in beta.iter().enumerate() {
            let v = self.sigmas[j] * self.sigmas[j];
            f += b * b / (2.0 * v);
            grad[3 + s + j] += b / v;
        }

        // Trend gradient.
        match &logistic {
            None => {
                // dF/dk = Σ g t, dF/dm = Σ g, dF/dδ_j = Σ_{i ≥ start_j} g (t - c_j)
                // via suffix sums.
                let mut sg = vec![0.0; n + 1];
                let mut stg = vec![0.0; n + 1];
                for i in (0..n).rev() {
                    sg[i] = sg[i + 1] + gt[i];
                    stg[i] = stg[i + 1] + gt[i] * self.t[i];
                }
                grad[0] += stg[0];
                grad[1] += sg[0];
                for j in 0..s {
                    let a = self.cp_start[j];
                    grad[2 + j] += stg[a] - self.cps[j] * sg[a];
                }
            }
            Some((c, (gamma, ks))) => {
                // Per-segment adjoints of the rate k_s and offset m_s, then
                // back through the γ recursion.
                let mut ms = Vec::with_capacity(s + 1);
                ms.push(m);
                for g in gamma {
                    let last = ms[ms.len() - 1];
                    ms.push(last + g);
                }
                let mut ak = vec![0.0; s + 1];
                let mut am = vec![0.0; s + 1];
                for i in 0..n {
                    let sg_ = seg[i];
                    let z = ks[sg_] * (self.t[i] - ms[sg_]);
                    let sz = sigmoid(z);
                    let q = gt[i] * c * sz * (1.0 - sz);
                    ak[sg_] += q * (self.t[i] - ms[sg_]);
                    am[sg_] -= q * ks[sg_];
                }
                for j in (1..=s).rev() {
                    // m_j = m_{j-1} + γ_j, γ_j = (c_j - m_{j-1})(1 - k_{j-1}/k_j).
                    let a_gamma = am[j];
                    let ratio = ks[j - 1] / ks[j];
                    let base = self.cps[j - 1] - ms[j - 1];
                    am[j - 1] += am[j] - a_gamma * (1.0 - ratio);
                    ak[j - 1] -= a_gamma * base / ks[j];
                    ak[j] += a_gamma * base * ks[j - 1] / (ks[j] * ks[j]);
                }
                // k_s = k + Σ_{l<s} δ_l.
                let mut suffix = 0.0;
                for sidx in (1..=s).rev() {
                    suffix += ak[sidx];
                    grad[2 + sidx - 1] += suffix;
                }
                grad[0] += suffix + ak[0];
                grad[1] += am[0];
            }
        }
        if !f.is_finite() {
            return (f64::INFINITY, grad);
        }
        (f, grad)
    }
}

/// argmin's view of the objective, in `z = c·p`: a uniform rescaling that
/// makes L-BFGS's first step (along `-∇`, unit length, before any curvature
/// is known) move the parameters by at most about 1. Unscaled, that step
/// sends `log σ` to about `-n` on the first trial, `σ²` underflows and the
/// More–Thuente search stops on the infinite objective (Stan instead starts
/// with a step of 1e-3).
struct Problem<'a, 'b> {
    obj: &'b Objective<'a>,
    c: f64,
}

impl Problem<'_, '_> {
    fn unscale(&self, z: &[f64]) -> Vec<f64> {
        z.iter().map(|v| v / self.c).collect()
    }
}

impl CostFunction for Problem<'_, '_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, z: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok(self.obj.eval(&self.unscale(z)).0)
    }
}

impl Gradient for Problem<'_, '_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, z: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        let g = self.obj.eval(&self.unscale(z)).1;
        Ok(g.into_iter().map(|v| v / self.c).collect())
    }
}

/// L-BFGS from `x0`: best point, its objective and the iterations taken.
///
/// argmin's L-BFGS stops with an error when the line search meets a
/// non-finite objective or when its direction is not a descent direction,
/// which the Laplace kinks (gradient pairs across a sign change of a δ) can
/// cause after a few iterations: on 7 of the 414 M4 Hourly series the first
/// run stopped after 4-6 iterations, far from the optimum. So a stop on an
/// error restarts from the best point evaluated, with a fresh memory and
/// rescaling, until a run converges, one makes no progress, or the
/// iteration budget is spent.
fn minimize(obj: &Objective<'_>, x0: Vec<f64>, max_iters: u64) -> Option<(Vec<f64>, f64, u64)> {
    const MAX_RUNS: usize = 50;
    let mut x = x0;
    let mut iters = 0u64;
    for _ in 0..MAX_RUNS {
        let (f0, g0) = obj.eval(&x);
        if !f0.is_finite() || iters >= max_iters {
            break;
        }
        let gmax = g0.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let c = gmax.max(1.0).sqrt();
        // Stan's defaults: history 5; stop on a relative objective change of
        // 1e4·ε or a tiny gradient.
        let tol_cost = 1e4 * f64::EPSILON * f0.abs().max(1.0);
        let solver = LBFGS::new(MoreThuenteLineSearch::new(), 5)
            .with_tolerance_grad(1e-8)
            .ok()?
            .with_tolerance_cost(tol_cost)
            .ok()?;
        let z0: Vec<f64> = x.iter().map(|v| v * c).collect();
        let run = Executor::new(Problem { obj, c }, solver)
            .configure(|st| st.param(z0).max_iters(max_iters - iters))
            .timer(false)
            .run();
        let stopped_on_error = match &run {
            Ok(r) => {
                iters += r.state().get_iter().max(1);
                matches!(
                    r.state().get_termination_status(),
                    TerminationStatus::Terminated(TerminationReason::SolverExit(_))
                )
            }
            Err(_) => {
                iters += 1;
                true
            }
        };
        let (fb, xb) = obj.best.borrow().clone()?;
        if !stopped_on_error || f0 - fb <= tol_cost {
            break;
        }
        x = xb;
    }
    let (f, p) = obj.best.borrow().clone()?;
    Some((p, f, iters))
}

#[cfg(test)]
mod tests;
