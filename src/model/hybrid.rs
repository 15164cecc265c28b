//! The ES-RNN-style hybrid (Smyl 2020, the M4 winner) as a per-key
//! transform around the global network: exponential smoothing keeps a
//! per-key level and multiplicative seasonalities (one or two periods, e.g.
//! daily 24 and weekly 168 for hourly data), the network sees the series
//! divided by the seasonal factors (and, in `relative` mode, by the level),
//! in log space, and its forecast is re-seasonalized (and re-leveled).
//!
//! Smoothing is done on `x = ln y` (multiplicative in `y` is additive in
//! `x`), in error-correction form (double-seasonal Holt-Winters, Taylor
//! 2003, without trend):
//!
//! ```text
//! pred_t = l_{t-1} + s1[t mod m1] + s2[t mod m2]     (before seeing x_t)
//! e_t    = x_t - pred_t
//! l_t    = l_{t-1} + alpha * e_t
//! s1[t mod m1] += gamma1 * e_t ;  s2[t mod m2] += gamma2 * e_t
//! ```
//!
//! Invariants:
//! - the transform is causal: the value handed to the network for window
//!   `t` uses only the state *before* `x_t` (then the state is updated), so
//!   the same recursion run over a history in training ([`EsState::transform_series`])
//!   and window by window live ([`EsState::push`]) gives bit-identical inputs;
//! - seasonal factors are kept centred (each period's factors sum to 0 in
//!   log space) at initialisation; updates move one factor at a time, as
//!   Holt-Winters does, and the level absorbs the rest;
//! - a non-positive or non-finite value is not in log space: it is passed
//!   through as missing (NaN) to the network and does not update the state
//!   (the network already handles missing windows);
//! - memory per key: `2 + m1 + m2` f64 plus the step counter (24 + 168 periods:
//!   1.6 KiB), beside the network's hidden state.
//!
//! Coefficients are global (the config's `alpha`, `gammas`) or fitted per
//! series ([`fit`], a small grid on the error `k` steps ahead) rather than
//! learned jointly with the network: the grid is cheap and deterministic.
//! Live, a key's coefficients (`fit = "per_series"`, [`FitSpec`]) are fitted
//! once from its first [`EsParams::ready_len`] values, the buffer it keeps
//! while warming up, and are part of its durable state from then on;
//! `train::prep` fits each key on the same first values, so both run the
//! same recursion with the same coefficients ([`EsParams::for_key`]).

use serde::{Deserialize, Serialize};

pub use crate::config::{HybridConfig, HybridMode};

/// Per-key fitting of the coefficients (`[model.hybrid] fit = "per_series"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FitSpec {
    /// A key's first values the fit reads (>= [`EsState::init_len`] + the
    /// longest period, so that some one-step errors are scored).
    pub windows: usize,
    /// The error minimised is this many steps ahead.
    pub steps: u64,
}

/// Smoothing coefficients and periods of one key, or (with `fit`) the
/// template every key's own coefficients are fitted from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EsParams {
    /// Seasonal periods in windows (0, 1 or 2 of them).
    pub periods: Vec<usize>,
    /// Level smoothing.
    pub alpha: f64,
    /// Seasonal smoothing per period.
    pub gammas: Vec<f64>,
    /// Fit per key (the coefficients above then only serve a key's warm-up
    /// and keys too short to fit); None = these coefficients for every key.
    #[serde(default)]
    pub fit: Option<FitSpec>,
}

impl EsParams {
    pub fn new(periods: Vec<usize>, alpha: f64, gammas: Vec<f64>) -> Self {
        EsParams {
            periods,
            alpha,
            gammas,
            fit: None,
        }
    }

    /// These coefficients, without the per-key fit.
    pub fn without_fit(&self) -> Self {
        EsParams {
            fit: None,
            ..self.clone()
        }
    }

    /// Values a key needs before its state is initialised (and, with a
    /// per-key fit, its coefficients fitted): the live stage's warm-up
    /// buffer.
    pub fn ready_len(&self) -> usize {
        let init = EsState::init_len(self);
        match self.fit {
            Some(f) => f.windows.max(init + init / 2),
            None => init,
        }
    }

    /// The coefficients of a key whose series starts with `first`: fitted
    /// on its first [`EsParams::ready_len`] values when this is a per-key
    /// template and there are that many, else these. Deterministic, and a
    /// function of those first values only, so the live stage (at the
    /// moment the key becomes ready) and training (on the key's history)
    /// get the same.
    pub fn for_key(&self, first: &[f64]) -> EsParams {
        let n = self.ready_len();
        match self.fit {
            Some(f) if first.len() >= n => {
                let p = fit(&self.periods, &first[..n], f.steps);
                // Nothing scored (too few positive values to have an error
                // at all): the grid's first point means nothing, keep these.
                if es_error(&p, &first[..n], f.steps).is_finite() {
                    p
                } else {
                    self.without_fit()
                }
            }
            _ => self.without_fit(),
        }
    }
}

/// One key's smoothing state.
#[derive(Debug, Clone, PartialEq)]
pub struct EsState {
    pub params: EsParams,
    /// Smoothed log level (NaN until initialised).
    pub level: f64,
    /// Log seasonal factors per period.
    pub seasons: Vec<Vec<f64>>,
    /// Windows seen (the phase of the next window is `t mod m`).
    pub t: u64,
}

fn ln_or_nan(y: f64) -> f64 {
    if y > 0.0 && y.is_finite() {
        y.ln()
    } else {
        f64::NAN
    }
}

impl EsState {
    /// A state initialised from the first values of a series (`init` in
    /// log space: the level is their mean, the factors their centred
    /// per-phase means). With too few values for a period, its factors stay 0.
    pub fn init(params: EsParams, first: &[f64]) -> Self {
        let x: Vec<f64> = first.iter().map(|&y| ln_or_nan(y)).collect();
        let finite: Vec<f64> = x.iter().copied().filter(|v| v.is_finite()).collect();
        let level = if finite.is_empty() {
            f64::NAN
        } else {
            finite.iter().sum::<f64>() / finite.len() as f64
        };
        let mut resid: Vec<f64> = x.iter().map(|v| v - level).collect();
        let mut seasons = Vec::with_capacity(params.periods.len());
        for &m in &params.periods {
            let mut s = vec![0.0; m.max(1)];
            if m >= 2 && x.len() >= m {
                let mut sum = vec![0.0; m];
                let mut cnt = vec![0usize; m];
                for (i, r) in resid.iter().enumerate() {
                    if r.is_finite() {
                        sum[i % m] += r;
                        cnt[i % m] += 1;
                    }
                }
                for p in 0..m {
                    if cnt[p] > 0 {
                        s[p] = sum[p] / cnt[p] as f64;
                    }
                }
                let mean = s.iter().sum::<f64>() / m as f64;
                s.iter_mut().for_each(|v| *v -= mean);
                for (i, r) in resid.iter_mut().enumerate() {
                    *r -= s[i % m];
                }
            }
            seasons.push(s);
        }
        EsState {
            params,
            level,
            seasons,
            t: 0,
        }
    }

    /// Values [`EsState::init`] wants: two cycles of the longest period (at
    /// least 2 windows).
    pub fn init_len(params: &EsParams) -> usize {
        params.periods.iter().copied().max().unwrap_or(1).max(1) * 2
    }

    /// Sum of the log seasonal factors at step `t`.
    pub fn seasonal_at(&self, t: u64) -> f64 {
        self.seasons
            .iter()
            .map(|s| s[(t % s.len() as u64) as usize])
            .sum()
    }

    /// What the network sees for the next value `y` (see [`HybridMode`]),
    /// then the state is updated with it.
    pub fn push(&mut self, y: f64, mode: HybridMode) -> f64 {
        let x = ln_or_nan(y);
        let s = self.seasonal_at(self.t);
        let z = match mode {
            HybridMode::Deseason => x - s,
            HybridMode::Relative => x - s - self.level,
        };
        if x.is_finite() {
            if self.level.is_finite() {
                let e = x - self.level - s;
                self.level += self.params.alpha * e;
                let t = self.t;
                for (season, g) in self.seasons.iter_mut().zip(&self.params.gammas) {
                    let m = season.len() as u64;
                    season[(t % m) as usize] += g * e;
                }
            } else {
                self.level = x - s;
            }
        }
        self.t += 1;
        z
    }

    /// Back from the network's units for the value `h >= 1` steps after the
    /// last pushed one.
    pub fn invert(&self, z: f64, h: u64, mode: HybridMode) -> f64 {
        // `t` already counts the last pushed value: step h is at t + h - 1.
        let s = self.seasonal_at(self.t + h - 1);
        let x = match mode {
            HybridMode::Deseason => z + s,
            HybridMode::Relative => z + s + self.level,
        };
        x.exp()
    }

    /// The pure smoothing forecast `h` steps ahead (level + seasonality).
    pub fn es_forecast(&self, h: u64) -> f64 {
        (self.level + self.seasonal_at(self.t + h - 1)).exp()
    }

    /// Runs a whole series through a freshly initialised state: the
    /// network's inputs (one per value) and the state after the last one.
    pub fn transform_series(params: &EsParams, y: &[f64], mode: HybridMode) -> (Vec<f64>, Self) {
        let n0 = Self::init_len(params).min(y.len());
        let mut st = Self::init(params.clone(), &y[..n0]);
        let z = y.iter().map(|&v| st.push(v, mode)).collect();
        (z, st)
    }
}

/// Mean absolute log error of the pure smoothing forecast `k` steps ahead
/// over a series (after the initialisation values), and the level's
/// wiggliness: the mean absolute second difference of the smoothed log
/// level. Lower is better for both.
pub fn es_error_wiggle(params: &EsParams, y: &[f64], k: u64) -> (f64, f64) {
    let n0 = EsState::init_len(params).min(y.len());
    let mut st = EsState::init(params.clone(), &y[..n0]);
    let k = k.max(1) as usize;
    // preds[i % k] = forecast made k steps before value i.
    let mut preds = vec![f64::NAN; k];
    let (mut sum, mut n) = (0.0, 0usize);
    let (mut wig, mut nw) = (0.0, 0usize);
    let (mut l1, mut l2) = (f64::NAN, f64::NAN);
    for (i, &v) in y.iter().enumerate() {
        let slot = i % k;
        if i >= n0 + k {
            let x = ln_or_nan(v);
            let p = preds[slot];
            if x.is_finite() && p.is_finite() {
                sum += (x - p).abs();
                n += 1;
            }
        }
        st.push(v, HybridMode::Deseason);
        preds[slot] = st.level + st.seasonal_at(st.t + k as u64 - 1);
        if i >= n0 {
            let d2 = st.level - 2.0 * l1 + l2;
            if d2.is_finite() {
                wig += d2.abs();
                nw += 1;
            }
        }
        (l2, l1) = (l1, st.level);
    }
    let err = if n == 0 {
        f64::INFINITY
    } else {
        sum / n as f64
    };
    (err, if nw == 0 { 0.0 } else { wig / nw as f64 })
}

/// [`es_error_wiggle`]'s error alone.
pub fn es_error(params: &EsParams, y: &[f64], k: u64) -> f64 {
    es_error_wiggle(params, y, k).0
}

/// Grids the coefficients are chosen from by [`fit`].
pub const ALPHAS: [f64; 5] = [0.005, 0.02, 0.05, 0.1, 0.3];
pub const GAMMAS: [f64; 4] = [0.0, 0.02, 0.05, 0.15];

/// Fits the coefficients of one series on a grid (alpha x gamma per
/// period), minimising [`es_error`] `k` steps ahead. Series whose values are
/// not all positive get the first grid point (their log is partly missing;
/// the caller decides whether to use the hybrid for them at all).
pub fn fit(periods: &[usize], y: &[f64], k: u64) -> EsParams {
    fit_penalized(periods, y, k, 0.0)
}

/// [`fit`] with ES-RNN's level-wiggliness penalty: minimises
/// `error + lambda * wiggliness` (see [`es_error_wiggle`]), which favours
/// smooth levels (small alpha) unless they cost accuracy.
pub fn fit_penalized(periods: &[usize], y: &[f64], k: u64, lambda: f64) -> EsParams {
    let np = periods.len();
    let mut best = EsParams::new(periods.to_vec(), ALPHAS[0], vec![GAMMAS[0]; np]);
    let mut best_err = f64::INFINITY;
    let combos = GAMMAS.len().pow(np as u32);
    for &a in &ALPHAS {
        for c in 0..combos {
            let mut gammas = Vec::with_capacity(np);
            let mut r = c;
            for _ in 0..np {
                gammas.push(GAMMAS[r % GAMMAS.len()]);
                r /= GAMMAS.len();
            }
            let p = EsParams::new(periods.to_vec(), a, gammas);
            let (e, w) = es_error_wiggle(&p, y, k);
            let e = e + lambda * w;
            if e < best_err {
                best_err = e;
                best = p;
            }
        }
    }
    best
}

/// The coefficients of a `[model.hybrid]` table (a gamma not given is
/// 0.02), with its per-key fit (`fit = "per_series"`: `fit_windows` 0 is
/// 4 x the longest period).
pub fn params_of(cfg: &HybridConfig) -> EsParams {
    let periods: Vec<usize> = cfg.periods.iter().map(|&m| m.max(1) as usize).collect();
    let gammas = (0..periods.len())
        .map(|i| cfg.gammas.get(i).copied().unwrap_or(0.02))
        .collect();
    let mut p = EsParams::new(periods, cfg.alpha, gammas);
    if cfg.fit == crate::config::HybridFit::PerSeries {
        let windows = match cfg.fit_windows {
            0 => 2 * EsState::init_len(&p),
            w => w as usize,
        };
        p.fit = Some(FitSpec {
            windows,
            steps: u64::from(cfg.fit_steps.max(1)),
        });
    }
    p
}

/// One key's smoothing in the live stage: values are buffered until there
/// are [`EsParams::ready_len`] of them (the network then sees them through a
/// provisional state initialised from what is there so far, during its
/// warm-up), then the key's coefficients are chosen ([`EsParams::for_key`]),
/// the state is initialised from the buffer and the buffer replayed through
/// it, which is exactly what training's [`EsState::transform_series`]
/// computes from the same values.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyEs {
    Warming(Vec<f64>),
    Ready(EsState),
}

/// Every live key's smoothing state (the forecast stage owns it, beside
/// the network's per-key state; a hot swap leaves it alone: it does not
/// depend on the network, and the store replays the history it kept, which
/// is in the network's units already).
#[derive(Debug, Clone)]
pub struct HybridKeys {
    pub params: EsParams,
    pub mode: HybridMode,
    keys: std::collections::HashMap<std::sync::Arc<str>, KeyEs>,
}

impl HybridKeys {
    pub fn new(params: EsParams, mode: HybridMode) -> Self {
        HybridKeys {
            params,
            mode,
            keys: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&KeyEs> {
        self.keys.get(key)
    }

    pub fn end_keys(&mut self, keys: &[std::sync::Arc<str>]) {
        for k in keys {
            self.keys.remove(k);
        }
    }

    /// `key`'s state as a changelog record (see `state::HybridKeyState`).
    pub fn export(&self, key: &str) -> Option<crate::state::HybridKeyState> {
        Some(match self.keys.get(key)? {
            KeyEs::Warming(buf) => crate::state::HybridKeyState {
                warming: buf.clone(),
                ..Default::default()
            },
            KeyEs::Ready(st) => crate::state::HybridKeyState {
                warming: Vec::new(),
                ready: true,
                level: st.level,
                seasons: st.seasons.clone(),
                t: st.t,
                // A key's own coefficients are durable: its warm-up buffer,
                // which they were fitted from, is gone.
                coefficients: self
                    .params
                    .fit
                    .is_some()
                    .then(|| (st.params.alpha, st.params.gammas.clone())),
            },
        })
    }

    /// Brings back a key's state written by [`HybridKeys::export`] (with
    /// this stage's periods, and its coefficients unless the record has
    /// the key's own for as many periods).
    pub fn import(&mut self, key: std::sync::Arc<str>, st: &crate::state::HybridKeyState) {
        let es = if st.ready {
            let params = match &st.coefficients {
                Some((alpha, gammas)) if gammas.len() == self.params.periods.len() => {
                    EsParams::new(self.params.periods.clone(), *alpha, gammas.clone())
                }
                _ => self.params.without_fit(),
            };
            KeyEs::Ready(EsState {
                params,
                level: st.level,
                seasons: st.seasons.clone(),
                t: st.t,
            })
        } else {
            KeyEs::Warming(st.warming.clone())
        };
        self.keys.insert(key, es);
    }

    /// The next value of `key` in the network's units; fills `inv[h-1]`
    /// with what [`HybridKeys::invert`] adds back for step `h` of the
    /// forecast made at this value.
    pub fn push(&mut self, key: &str, y: f64, inv: &mut [f64]) -> f64 {
        let (params, mode) = (&self.params, self.mode);
        if !self.keys.contains_key(key) {
            self.keys
                .insert(std::sync::Arc::from(key), KeyEs::Warming(Vec::new()));
        }
        let Some(entry) = self.keys.get_mut(key) else {
            return f64::NAN;
        };
        let need = params.ready_len();
        let (z, st) = match entry {
            KeyEs::Ready(st) => (st.push(y, mode), st.clone()),
            KeyEs::Warming(buf) => {
                buf.push(y);
                if buf.len() >= need {
                    // The key's coefficients (fitted once, here, with a
                    // per-key fit), then the buffer replayed with them.
                    let p = params.for_key(buf);
                    let (z, st) = EsState::transform_series(&p, buf, mode);
                    let last = z.last().copied().unwrap_or(f64::NAN);
                    *entry = KeyEs::Ready(st.clone());
                    (last, st)
                } else {
                    // Provisional, with the template's coefficients.
                    let params = params.without_fit();
                    let mut p = EsState::init(params.clone(), &buf[..buf.len() - 1]);
                    if !p.level.is_finite() {
                        p = EsState::init(params, buf);
                    }
                    p.t = buf.len() as u64 - 1;
                    (p.push(y, mode), p)
                }
            }
        };
        for (i, o) in inv.iter_mut().enumerate() {
            let s = st.seasonal_at(st.t + i as u64);
            *o = match mode {
                HybridMode::Deseason => s,
                HybridMode::Relative => s + st.level,
            };
        }
        z
    }

    /// Back to the series' units: `exp(z + inv)`.
    pub fn invert(z: f64, inv: f64) -> f64 {
        (z + inv).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seasonal(n: usize, level: f64, growth: f64) -> Vec<f64> {
        (0..n)
            .map(|t| {
                let d = 1.0 + 0.3 * (t as f64 * std::f64::consts::TAU / 24.0).sin();
                let w = if (t / 24) % 7 >= 5 { 0.7 } else { 1.0 };
                level * (1.0 + growth).powi(t as i32) * d * w
            })
            .collect()
    }

    #[test]
    fn a_pure_multiplicative_season_is_removed_and_restored() {
        let y = seasonal(24 * 7 * 6, 100.0, 0.0);
        let p = EsParams::new(vec![24, 168], 0.05, vec![0.05, 0.05]);
        let (z, st) = EsState::transform_series(&p, &y, HybridMode::Deseason);
        // After initialisation the deseasonalized log series is flat at ln 100
        // up to the weekly factor's estimate (exact for a noiseless series).
        let tail = &z[z.len() - 168..];
        let (lo, hi) = tail
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(hi - lo < 0.05, "deseasonalized range {lo}..{hi}");
        // Inverting the last level forecasts the next week closely.
        let next = seasonal(y.len() + 48, 100.0, 0.0);
        for h in 1..=48u64 {
            let f = st.es_forecast(h);
            let truth = next[y.len() + h as usize - 1];
            assert!((f / truth - 1.0).abs() < 0.05, "h={h}: {f} vs {truth}");
            let back = st.invert(st.level, h, HybridMode::Deseason);
            assert!((back / f - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn push_and_transform_series_agree_and_invert_is_the_inverse() {
        let y = seasonal(500, 20.0, 0.001);
        let p = EsParams::new(vec![24], 0.1, vec![0.05]);
        for mode in [HybridMode::Deseason, HybridMode::Relative] {
            let (z, st) = EsState::transform_series(&p, &y, mode);
            let n0 = EsState::init_len(&p);
            let mut live = EsState::init(p.clone(), &y[..n0]);
            for (i, &v) in y.iter().enumerate() {
                let before = live.clone();
                let zi = live.push(v, mode);
                assert_eq!(zi.to_bits(), z[i].to_bits(), "step {i}");
                // The network's input for y maps back to y from the state before it.
                let back = before.invert(zi, 1, mode);
                assert!((back / v - 1.0).abs() < 1e-9, "{back} vs {v}");
            }
            assert_eq!(live, st);
        }
    }

    #[test]
    fn the_live_keys_match_training_once_warm_and_invert_their_forecasts() {
        let y = seasonal(24 * 7 * 4, 30.0, 0.0005);
        let p = EsParams::new(vec![24, 168], 0.05, vec![0.05, 0.02]);
        let need = EsState::init_len(&p);
        for mode in [HybridMode::Deseason, HybridMode::Relative] {
            let (z, st) = EsState::transform_series(&p, &y, mode);
            let mut live = HybridKeys::new(p.clone(), mode);
            let mut inv = vec![0.0; 3];
            for (i, &v) in y.iter().enumerate() {
                let zi = live.push("k", v, &mut inv);
                assert!(zi.is_finite(), "step {i}");
                if i + 1 >= need {
                    assert_eq!(zi.to_bits(), z[i].to_bits(), "step {i}");
                }
            }
            assert_eq!(live.get("k"), Some(&KeyEs::Ready(st.clone())));
            // Inverse offsets turn the network's units into the ES forecast.
            let base = match mode {
                HybridMode::Deseason => st.level,
                HybridMode::Relative => 0.0,
            };
            for h in 1..=3u64 {
                let f = HybridKeys::invert(base, inv[h as usize - 1]);
                let es = st.es_forecast(h);
                assert!((f / es - 1.0).abs() < 1e-12, "h={h}: {f} vs {es}");
            }
            live.end_keys(&[std::sync::Arc::from("k")]);
            assert!(live.is_empty());
        }
    }

    #[test]
    fn non_positive_values_are_missing_and_leave_the_state_alone() {
        let p = EsParams::new(vec![24], 0.1, vec![0.1]);
        let mut st = EsState::init(p, &seasonal(48, 10.0, 0.0));
        let before = st.clone();
        assert!(st.push(0.0, HybridMode::Deseason).is_nan());
        assert!(st.push(f64::NAN, HybridMode::Relative).is_nan());
        assert_eq!(st.level, before.level);
        assert_eq!(st.seasons, before.seasons);
        assert_eq!(st.t, 2);
    }

    #[test]
    fn fit_prefers_smooth_coefficients_on_a_stable_season_and_fast_ones_on_a_shift() {
        // A daily season only (the weekly factor would look like level
        // shifts to a daily-only model), with pseudo-random noise.
        let mut r: u64 = 12345;
        let noisy: Vec<f64> = (0..24 * 7 * 5)
            .map(|t| {
                r = r
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (r >> 11) as f64 / (1u64 << 53) as f64;
                50.0 * (1.0 + 0.3 * (t as f64 * std::f64::consts::TAU / 24.0).sin())
                    * (1.0 + 0.2 * (u - 0.5))
            })
            .collect();
        let p = fit(&[24], &noisy, 24);
        assert!(p.alpha <= 0.1, "{p:?}");
        // A level that triples half way: a larger alpha tracks it.
        let shifted: Vec<f64> = noisy
            .iter()
            .enumerate()
            .map(|(i, v)| if i > 400 { v * 3.0 } else { *v })
            .collect();
        let q = fit(&[24], &shifted, 24);
        assert!(q.alpha > p.alpha, "{q:?} vs {p:?}");
        assert!(es_error(&q, &shifted, 24) <= es_error(&p, &shifted, 24));
        // The wiggliness penalty pulls alpha down (never up).
        let w = fit_penalized(&[24], &shifted, 24, 100.0);
        assert!(w.alpha < q.alpha, "{w:?} vs {q:?}");
    }

    /// Per-key coefficients live: fitted once from the warm-up buffer
    /// (each key its own: a level shift in the buffer gets a faster level),
    /// durable through a changelog record (a stage restored from the
    /// exported records continues bit for bit like the original, which it
    /// does not with the pipeline's coefficients instead).
    #[test]
    fn per_key_coefficients_are_fitted_once_and_restored_with_the_state() {
        let cfg = HybridConfig {
            periods: vec![24],
            fit: crate::config::HybridFit::PerSeries,
            ..Default::default()
        };
        let p = params_of(&cfg);
        assert_eq!(p.ready_len(), 96);
        let mode = HybridMode::Deseason;
        // A daily season with a little deterministic noise (no weekly
        // factor: a daily-only model would see it as level shifts).
        let steady: Vec<f64> = (0..300)
            .map(|t| {
                let noise = ((t * 7919) % 13) as f64 / 13.0 - 0.5;
                50.0 * (1.0 + 0.3 * (t as f64 * std::f64::consts::TAU / 24.0).sin())
                    * (1.0 + 0.05 * noise)
            })
            .collect();
        let shifted: Vec<f64> = steady
            .iter()
            .enumerate()
            .map(|(i, v)| if i >= 60 { v * 3.0 } else { *v })
            .collect();
        let mut live = HybridKeys::new(p.clone(), mode);
        let mut inv = vec![0.0; 2];
        for i in 0..120 {
            live.push("steady", steady[i], &mut inv);
            live.push("shifted", shifted[i], &mut inv);
        }
        let own = |h: &HybridKeys, k: &str| match h.get(k) {
            Some(KeyEs::Ready(st)) => st.params.clone(),
            other => panic!("{k}: {other:?}"),
        };
        let (a, b) = (own(&live, "steady"), own(&live, "shifted"));
        assert_eq!(a, p.for_key(&steady));
        assert_eq!(b, p.for_key(&shifted));
        assert!(b.alpha > a.alpha, "{a:?} vs {b:?}");
        // A buffer with nothing to score (all non-positive) keeps the
        // table's coefficients rather than the grid's first point.
        assert_eq!(p.for_key(&[0.0; 96]), p.without_fit());
        // Through the changelog's encoding, into a fresh stage.
        let mut restored = HybridKeys::new(p.clone(), mode);
        let mut global = HybridKeys::new(p.clone(), mode);
        for k in ["steady", "shifted"] {
            let rec = live.export(k).unwrap();
            assert_eq!(
                rec.coefficients,
                Some((own(&live, k).alpha, own(&live, k).gammas))
            );
            let back: crate::state::HybridKeyState =
                crate::state::decode(&crate::state::encode(&rec).unwrap()).unwrap();
            assert_eq!(back, rec);
            restored.import(std::sync::Arc::from(k), &back);
            let without = crate::state::HybridKeyState {
                coefficients: None,
                ..back.clone()
            };
            global.import(std::sync::Arc::from(k), &without);
        }
        let (mut i1, mut i2, mut i3) = (vec![0.0; 2], vec![0.0; 2], vec![0.0; 2]);
        let mut differs = false;
        for i in 120..300 {
            for (k, y) in [("steady", steady[i]), ("shifted", shifted[i])] {
                let z = live.push(k, y, &mut i1);
                let r = restored.push(k, y, &mut i2);
                assert_eq!(z.to_bits(), r.to_bits(), "{k} {i}");
                assert_eq!(i1, i2);
                differs |= global.push(k, y, &mut i3).to_bits() != z.to_bits();
            }
        }
        assert!(differs, "the record's coefficients made no difference");
    }

    /// A record written before per-key coefficients existed (five fields)
    /// still decodes, with the pipeline's coefficients.
    #[test]
    fn an_older_hybrid_record_restores() {
        #[derive(Serialize)]
        struct Before {
            warming: Vec<f64>,
            ready: bool,
            level: f64,
            seasons: Vec<Vec<f64>>,
            t: u64,
        }
        let old = Before {
            warming: Vec::new(),
            ready: true,
            level: 1.5,
            seasons: vec![vec![0.1, -0.1]],
            t: 7,
        };
        let st: crate::state::HybridKeyState =
            crate::state::decode(&crate::state::encode(&old).unwrap()).unwrap();
        assert_eq!(
            (
                st.ready,
                st.level,
                st.seasons.clone(),
                st.t,
                st.coefficients.clone()
            ),
            (true, 1.5, old.seasons.clone(), 7, None)
        );
        let mut h = HybridKeys::new(EsParams::new(vec![2], 0.2, vec![0.1]), HybridMode::Deseason);
        h.import(std::sync::Arc::from("k"), &st);
        let Some(KeyEs::Ready(es)) = h.get("k") else {
            panic!("not ready")
        };
        assert_eq!(es.params, EsParams::new(vec![2], 0.2, vec![0.1]));
        // A truncated record is still an error.
        let bytes = crate::state::encode(&old).unwrap();
        assert!(
            crate::state::decode::<crate::state::HybridKeyState>(&bytes[..bytes.len() - 3])
                .is_err()
        );
    }

    /// The stage with `[model.hybrid]`: forecasts come back in the series'
    /// units, the smoothing state advances per key, a hot swap to the same
    /// network leaves both the state and the next forecasts unchanged, and
    /// an ended key's state is freed.
    #[test]
    fn the_stage_smooths_online_and_a_hot_swap_keeps_it() {
        use crate::model::ForecastStage;
        use arrow::array::AsArray;
        use arrow::datatypes::Float64Type;
        let cfg = crate::testkit::pipeline(
            "[model]\ncell = \"gru\"\nhidden = 8\nhorizon = 4\nseason_windows = 24\nwarmup_windows = 24\n\
             [model.hybrid]\nperiods = [24]\nalpha = 0.1\ngammas = [0.1]\n",
        );
        let spec = crate::window::WindowSpec::from_config(&cfg);
        let step = |stage: &mut ForecastStage, t: usize| -> Vec<f64> {
            let mut b = crate::window::WindowsBuilder::new(&spec, 2);
            for (k, lvl) in [("a", 10.0), ("b", 1000.0)] {
                let y = lvl * (1.0 + 0.3 * (t as f64 * std::f64::consts::TAU / 24.0).sin());
                b.push(
                    k,
                    1_600_000_000_000 + t as i64 * spec.size_ms,
                    1,
                    false,
                    &[y],
                );
            }
            let f = stage.forecast(&b.finish()).unwrap();
            let l = f
                .column(crate::schema::forecasts::FORECAST)
                .as_fixed_size_list();
            l.values().as_primitive::<Float64Type>().values().to_vec()
        };
        let mut stage = ForecastStage::from_config(&cfg).unwrap();
        for t in 0..60 {
            let f = step(&mut stage, t);
            // Key a's forecasts near 10, key b's near 1000 (untrained net:
            // the residual head gives about the smoothing's own forecast).
            assert!(
                f[..4].iter().all(|v| *v > 1.0 && *v < 100.0),
                "t={t}: {f:?}"
            );
            assert!(
                f[4..].iter().all(|v| *v > 100.0 && *v < 10_000.0),
                "t={t}: {f:?}"
            );
        }
        let h = stage.hybrid().unwrap();
        let Some(KeyEs::Ready(a)) = h.get("a") else {
            panic!("key a still warming after 60 windows");
        };
        assert_eq!(a.t, 60);
        let before = h.clone();
        let mut twin = ForecastStage::from_config(&cfg).unwrap();
        for t in 0..60 {
            step(&mut twin, t);
        }
        let net = crate::model::Network::for_spec(
            stage.spec(),
            stage.network().vs.device(),
            stage.spec().seed,
        );
        let mut net = net;
        net.vs.copy(&stage.network().vs).unwrap();
        let sp = stage.spec().clone();
        stage.swap(net, sp).unwrap();
        assert_eq!(stage.hybrid().unwrap().get("a"), before.get("a"));
        let (x, y) = (step(&mut stage, 60), step(&mut twin, 60));
        for (p, q) in x.iter().zip(&y) {
            assert!((p / q - 1.0).abs() < 1e-4, "{x:?} vs {y:?}");
        }
        stage.end_keys(&[std::sync::Arc::from("a")]);
        assert!(stage.hybrid().unwrap().get("a").is_none());
        assert!(stage.hybrid().unwrap().get("b").is_some());
    }
}
