//! `hybrid_joint` / `hybrid_fixed`: the ES-RNN-style hybrid with its
//! smoothing coefficients learned by gradient jointly with a global
//! network (`hybrid_joint`), against the same code with the coefficients
//! frozen at the per-series grid fit (`hybrid_fixed`, the fitted-first
//! control). `hybrid_joint_w` adds ES-RNN's level-wiggliness penalty.
//! Experiment for issue 13; `eval m4` only (BENCHMARKS.md, hybrid section).
//!
//! The smoothing is `model::hybrid`'s recursion (log space, level plus
//! multiplicative daily and weekly factors, error-correction form, no
//! trend) written in libtorch and vectorised over series: `[n_series]`
//! tensors, a loop over time, so gradients reach every series' alpha,
//! gammas (sigmoids of logits) and, in `hybrid_joint`, its initial
//! seasonal factors. Both variants start from the same per-series grid fit
//! (`model::hybrid::fit`, clamped into (0.001, 0.999) so a logit exists)
//! and the same `EsState::init` state; they differ only in whether those
//! are trainable.
//!
//! The network is a small MLP over windows of `lags` deseasonalised log
//! values minus the window's last level (ES-RNN's normalisation), with a
//! linear skip, predicting the `horizon` values ahead in the same units.
//! Its error in those units is the log forecast's error (level and factors
//! cancel), so the loss (MAE) is comparable across coefficient values.
//! Every Adam step re-runs the recursion over all series (with gradient
//! in `hybrid_joint`; once, without, in `hybrid_fixed`) and draws
//! `windows_per_series` training windows from every series.
//!
//! Invariants:
//! - causal: a window ending at `t` reads values and states up to `t`
//!   only; its target's factors are those known at `t` (the ring of the
//!   state after `t`, as `EsState::invert` reads it);
//! - training targets end before the last `horizon` values of each
//!   history; those are the early-stopping tail (one window per series),
//!   scored before every step, and the best step's weights and
//!   coefficients forecast;
//! - series of different lengths are aligned at their ends and padded at
//!   the start with masked steps, which leave the state unchanged; the
//!   initial factors are rotated so each series keeps its own phase
//!   (`t mod m` counted from its first value, as `model::hybrid` does);
//! - libtorch runs on the calling thread with 1 intra-op thread; seeded
//!   (network init and window draws), so deterministic unless the
//!   `max_seconds` cap cuts training.
// `a = a + b` on purpose throughout: tch's `a += b` is an in-place `add_`,
// which autograd refuses (or gets wrong) on tensors saved for the backward
// pass, such as the smoothing recursion's level and factors.
#![allow(clippy::assign_op_pattern)]

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::harness::Model;
use crate::error::Result;
use crate::model::hybrid::{fit, EsState};

/// The names this file answers to in `--models`.
pub const NAMES: [&str; 3] = ["hybrid_joint", "hybrid_fixed", "hybrid_joint_w"];

/// Settings of one run (defaults sized for 414 series on 1 core).
#[derive(Debug, Clone)]
pub struct JointOptions {
    pub name: String,
    pub periods: Vec<usize>,
    /// Learn alpha, gammas and initial factors (false: frozen at the grid).
    pub learn: bool,
    pub lags: usize,
    pub hidden: i64,
    pub max_steps: usize,
    /// Steps without a better early-stopping loss before stopping.
    pub patience: usize,
    pub windows_per_series: usize,
    pub lr_net: f64,
    pub lr_es: f64,
    pub clip: f64,
    /// ES-RNN's level-wiggliness penalty (mean squared second difference
    /// of the log level over the training part), 0 = none.
    pub wiggle: f64,
    pub max_seconds: f64,
    pub seed: u64,
}

impl JointOptions {
    pub fn new(name: &str, season: usize) -> Self {
        let season = season.max(1);
        JointOptions {
            name: name.to_string(),
            periods: if season < 2 {
                vec![season]
            } else {
                vec![season, 7 * season]
            },
            learn: name != "hybrid_fixed",
            lags: 7 * season,
            hidden: 128,
            max_steps: 1500,
            patience: 300,
            windows_per_series: 8,
            lr_net: 1e-3,
            lr_es: 1e-2,
            clip: 1.0,
            wiggle: if name.ends_with("_w") { 1.0 } else { 0.0 },
            max_seconds: 360.0,
            seed: 42,
        }
    }
}

/// `Some(model)` when `name` is one of [`NAMES`], optionally with a seed
/// suffix `.sN` (seed 42 + N; `.s0` is the plain name's seed), so a second
/// seed of any variant can be measured beside the first in one run.
pub fn by_name(name: &str, season: usize) -> Option<Box<dyn Model>> {
    let (base, offset) = match name.rsplit_once(".s") {
        Some((base, n)) => (base, n.parse::<u64>().ok()?),
        None => (name, 0),
    };
    if !NAMES.contains(&base) {
        return None;
    }
    let mut o = JointOptions::new(base, season);
    o.name = name.to_string();
    o.seed += offset;
    Some(Box::new(JointHybrid::new(o)))
}

/// Per-series smoothing coefficients and initial state as tensors
/// (`[n]` or `[n, m]`, f64).
pub struct EsTensors {
    pub alpha: Tensor,
    pub gammas: Vec<Tensor>,
    pub level0: Tensor,
    pub season0: Vec<Tensor>,
}

/// The recursion run over a padded panel.
pub struct EsPath {
    /// `x_t - s_t` (the state's factors before `x_t`), 0 where masked: `[n, T]`.
    pub deseason: Tensor,
    /// The level after `x_t`: `[n, T]`.
    pub level: Tensor,
    /// Per period, the factor for each step: `[n, T + m]`; entry `t < T` is
    /// the one `x_t` is predicted with, entry `t + m` the same phase
    /// after `x_t`'s update.
    pub seasons: Vec<Tensor>,
}

/// The recursion of `model::hybrid` (`EsState::push`, deseason mode) over
/// `x` (`[n, T]` log values, anything where `mask` is 0): per step
/// `e = x_t - l - s1_t - s2_t`, `l += alpha e`, `s_{t+m} = s_t + gamma e`.
pub fn run_es(x: &Tensor, mask: &Tensor, es: &EsTensors) -> EsPath {
    let xs = x.unbind(1);
    let ms = mask.unbind(1);
    let t_len = xs.len();
    let mut lists: Vec<Vec<Tensor>> = es.season0.iter().map(|s| s.unbind(1)).collect();
    for l in lists.iter_mut() {
        l.reserve(t_len);
    }
    let mut level = es.level0.shallow_clone();
    let mut levels = Vec::with_capacity(t_len);
    let mut des = Vec::with_capacity(t_len);
    for t in 0..t_len {
        let mut s = lists[0][t].shallow_clone();
        for l in &lists[1..] {
            s = s + &l[t];
        }
        let d = (&xs[t] - &s) * &ms[t];
        let e = (&d - &level) * &ms[t];
        level = level + &es.alpha * &e;
        for (l, g) in lists.iter_mut().zip(&es.gammas) {
            let next = &l[t] + g * &e;
            l.push(next);
        }
        des.push(d);
        levels.push(level.shallow_clone());
    }
    EsPath {
        deseason: Tensor::stack(&des, 1),
        level: Tensor::stack(&levels, 1),
        seasons: lists.iter().map(|l| Tensor::stack(l, 1)).collect(),
    }
}

/// The series as a padded panel: log values, mask, each series' start.
struct PanelTensors {
    x: Tensor,
    mask: Tensor,
    offsets: Vec<usize>,
    t_len: usize,
}

fn panel_tensors(histories: &[&[f64]]) -> PanelTensors {
    let t_len = histories.iter().map(|h| h.len()).max().unwrap_or(0);
    let n = histories.len();
    let mut x = vec![0.0f64; n * t_len];
    let mut m = vec![0.0f64; n * t_len];
    let mut offsets = Vec::with_capacity(n);
    for (i, h) in histories.iter().enumerate() {
        let o = t_len - h.len();
        offsets.push(o);
        for (k, &y) in h.iter().enumerate() {
            if y > 0.0 && y.is_finite() {
                x[i * t_len + o + k] = y.ln();
                m[i * t_len + o + k] = 1.0;
            }
        }
    }
    let shape = [n as i64, t_len as i64];
    PanelTensors {
        x: Tensor::from_slice(&x).view(shape),
        mask: Tensor::from_slice(&m).view(shape),
        offsets,
        t_len,
    }
}

/// Starting coefficients and state of every series (the grid fit and
/// `EsState::init`), the factors rotated to the padded clock.
struct Start {
    alpha: Vec<f64>,
    gammas: Vec<Vec<f64>>,
    level0: Vec<f64>,
    season0: Vec<Vec<f64>>,
}

fn clamp_coef(v: f64) -> f64 {
    v.clamp(1e-3, 1.0 - 1e-3)
}

fn logit(v: f64) -> f64 {
    (v / (1.0 - v)).ln()
}

fn start_state(periods: &[usize], histories: &[&[f64]], offsets: &[usize], k: u64) -> Start {
    let np = periods.len();
    let mut s = Start {
        alpha: Vec::new(),
        gammas: vec![Vec::new(); np],
        level0: Vec::new(),
        season0: vec![Vec::new(); np],
    };
    for (h, &o) in histories.iter().zip(offsets) {
        let p = fit(periods, h, k);
        let n0 = EsState::init_len(&p).min(h.len());
        let st = EsState::init(p.clone(), &h[..n0]);
        s.alpha.push(clamp_coef(p.alpha));
        s.level0
            .push(if st.level.is_finite() { st.level } else { 0.0 });
        for (j, &m) in periods.iter().enumerate() {
            s.gammas[j].push(clamp_coef(p.gammas.get(j).copied().unwrap_or(0.0)));
            let ring = &st.seasons[j];
            let m = m.max(1);
            // Padded step q is the series' step q - o: phase (q - o) mod m.
            s.season0[j].extend((0..m).map(|q| ring[(q + m - o % m) % m]));
        }
    }
    s
}

/// The global network: MLP with a linear skip, f32.
fn network(p: &nn::Path, lags: i64, hidden: i64, horizon: i64) -> impl Module {
    let mlp = nn::seq()
        .add(nn::linear(p / "l1", lags, hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "l2", hidden, hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "l3", hidden, horizon, Default::default()));
    let skip = nn::linear(p / "skip", lags, horizon, Default::default());
    nn::func(move |x| mlp.forward(x) + skip.forward(x))
}

/// Inputs `[B, lags]`, targets `[B, H]` and target mask of the windows
/// ending at padded steps `ends[b]` of series `rows[b]` (targets read from
/// `x`; at the end of the data they are zeros with a zero mask).
fn windows(
    path: &EsPath,
    pt: &PanelTensors,
    periods: &[usize],
    rows: &[i64],
    ends: &[i64],
    lags: i64,
    horizon: i64,
) -> (Tensor, Tensor, Tensor) {
    let tl = pt.t_len as i64;
    let opts = (Kind::Int64, Device::Cpu);
    let b = rows.len() as i64;
    let row = Tensor::from_slice(rows).view([b, 1]);
    let end = Tensor::from_slice(ends).view([b, 1]);
    let last = &row * tl + &end;
    let level = path.level.flatten(0, 1).take(&last);
    let lag_idx = (&end - (lags - 1) + Tensor::arange(lags, opts).view([1, lags])).clamp_min(0);
    let inputs = path.deseason.flatten(0, 1).take(&(&row * tl + lag_idx)) - &level;
    let h = Tensor::arange(horizon, opts).view([1, horizon]);
    let fut = &end + 1 + &h;
    let inside = fut.lt(tl);
    let fut_c = fut.clamp_max(tl - 1);
    let xf = pt.x.flatten(0, 1).take(&(&row * tl + &fut_c));
    let mf = pt.mask.flatten(0, 1).take(&(&row * tl + &fut_c)) * inside.to_kind(Kind::Double);
    let mut season = Tensor::zeros([b, horizon], (Kind::Double, Device::Cpu));
    for (s, &m) in path.seasons.iter().zip(periods) {
        let m = m.max(1) as i64;
        let width = tl + m;
        let idx = &row * width + &end + 1 + h.remainder(m);
        season = season + s.flatten(0, 1).take(&idx);
    }
    let target = (xf - season - &level) * &mf;
    (inputs, target, mf)
}

fn masked_mae(out: &Tensor, target: &Tensor, mask: &Tensor) -> Tensor {
    ((out - target).abs() * mask).sum(Kind::Double) / mask.sum(Kind::Double).clamp_min(1.0)
}

pub struct JointHybrid {
    pub opts: JointOptions,
}

impl JointHybrid {
    pub fn new(opts: JointOptions) -> Self {
        JointHybrid { opts }
    }
}

/// The trainable (or frozen) coefficients and their optimiser.
struct Coefs {
    vs: nn::VarStore,
    alpha: Tensor,
    gammas: Vec<Tensor>,
    level0: Tensor,
    season0: Vec<Tensor>,
}

impl Coefs {
    fn new(start: &Start, n: i64, learn: bool) -> Self {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let lg = |v: &[f64]| Tensor::from_slice(&v.iter().map(|&a| logit(a)).collect::<Vec<_>>());
        let (alpha, gammas, season0) = {
            let root = vs.root();
            let mk = |name: &str, t: Tensor| {
                if learn {
                    root.var_copy(name, &t)
                } else {
                    t
                }
            };
            let alpha = mk("alpha", lg(&start.alpha));
            let gammas: Vec<Tensor> = start
                .gammas
                .iter()
                .enumerate()
                .map(|(j, g)| mk(&format!("gamma{j}"), lg(g)))
                .collect();
            let season0: Vec<Tensor> = start
                .season0
                .iter()
                .enumerate()
                .map(|(j, s)| mk(&format!("season{j}"), Tensor::from_slice(s).view([n, -1])))
                .collect();
            (alpha, gammas, season0)
        };
        // `var_copy` makes f32 variables; the recursion runs in f64
        // (`set_data` keeps the handles above valid).
        vs.double();
        Coefs {
            vs,
            alpha,
            gammas,
            level0: Tensor::from_slice(&start.level0),
            season0,
        }
    }

    fn tensors(&self) -> EsTensors {
        EsTensors {
            alpha: self.alpha.sigmoid(),
            gammas: self.gammas.iter().map(|g| g.sigmoid()).collect(),
            level0: self.level0.shallow_clone(),
            season0: self.season0.iter().map(|s| s.shallow_clone()).collect(),
        }
    }
}

fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

fn restore(vs: &nn::VarStore, w: &[(String, Tensor)]) {
    tch::no_grad(|| {
        let vars = vs.variables();
        for (k, src) in w {
            if let Some(v) = vars.get(k) {
                v.shallow_clone().copy_(src);
            }
        }
    });
}

fn mean_of(t: &Tensor) -> f64 {
    t.mean(Kind::Double).double_value(&[])
}

impl Model for JointHybrid {
    fn name(&self) -> String {
        self.opts.name.clone()
    }

    /// Trains for minutes, like `hybrid`.
    fn leak_check(&self) -> bool {
        false
    }

    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        tch::set_num_threads(1);
        let o = self.opts.clone();
        let started = Instant::now();
        let n = histories.len();
        let pt = panel_tensors(histories);
        let tl = pt.t_len;
        let (lags, hz) = (o.lags as i64, horizon as i64);
        let start = start_state(&o.periods, histories, &pt.offsets, horizon as u64);
        let coefs = Coefs::new(&start, n as i64, o.learn);
        let net_vs = nn::VarStore::new(Device::Cpu);
        let net = {
            let _g = crate::model::seed_global(o.seed as i64);
            network(&net_vs.root(), lags, o.hidden, hz)
        };
        let mut opt_net = nn::Adam::default().build(&net_vs, o.lr_net)?;
        let mut opt_es = nn::Adam::default().build(&coefs.vs, o.lr_es)?;

        // Training window ends (padded clock): the whole input inside the
        // series, the target before the early-stopping tail.
        let ranges: Vec<(usize, usize)> = pt
            .offsets
            .iter()
            .map(|&off| (off + o.lags - 1, tl.saturating_sub(2 * horizon)))
            .collect();
        let val_rows: Vec<i64> = (0..n)
            .filter(|&i| pt.offsets[i] + o.lags + horizon <= tl)
            .map(|i| i as i64)
            .collect();
        let val_ends = vec![(tl - 1 - horizon) as i64; val_rows.len()];
        // The level's second differences scored by the penalty (training part).
        let wig_mask = pt.mask.narrow(1, 2, tl as i64 - 2)
            * pt.mask.narrow(1, 1, tl as i64 - 2)
            * pt.mask.narrow(1, 0, tl as i64 - 2);
        let wig_mask = wig_mask.narrow(1, 0, (tl - 2).saturating_sub(horizon) as i64);

        let fixed_path = if o.learn {
            None
        } else {
            Some(tch::no_grad(|| run_es(&pt.x, &pt.mask, &coefs.tensors())))
        };
        let alpha_before = mean_of(&coefs.alpha.sigmoid());
        let mut rng = StdRng::seed_from_u64(o.seed);
        let mut best = f64::INFINITY;
        let mut best_step = 0;
        let mut best_net = snapshot(&net_vs);
        let mut best_es = snapshot(&coefs.vs);
        let mut steps = 0;
        let mut capped = false;
        for step in 1..=o.max_steps {
            let path = match &fixed_path {
                Some(p) => EsPath {
                    deseason: p.deseason.shallow_clone(),
                    level: p.level.shallow_clone(),
                    seasons: p.seasons.iter().map(|s| s.shallow_clone()).collect(),
                },
                None => run_es(&pt.x, &pt.mask, &coefs.tensors()),
            };
            // The early-stopping loss of the weights before this step.
            let val = tch::no_grad(|| {
                let (xi, yt, ym) = windows(&path, &pt, &o.periods, &val_rows, &val_ends, lags, hz);
                let out = net.forward(&xi.to_kind(Kind::Float)).to_kind(Kind::Double);
                masked_mae(&out, &yt, &ym).double_value(&[])
            });
            if val < best {
                best = val;
                best_step = step - 1;
                best_net = snapshot(&net_vs);
                best_es = snapshot(&coefs.vs);
            } else if step - 1 - best_step >= o.patience {
                break;
            }
            let (mut rows, mut ends) = (Vec::new(), Vec::new());
            for (i, &(a, b)) in ranges.iter().enumerate() {
                if a < b {
                    for _ in 0..o.windows_per_series {
                        rows.push(i as i64);
                        ends.push(rng.random_range(a..b) as i64);
                    }
                }
            }
            if rows.is_empty() {
                break;
            }
            let (xi, yt, ym) = windows(&path, &pt, &o.periods, &rows, &ends, lags, hz);
            let out = net.forward(&xi.to_kind(Kind::Float)).to_kind(Kind::Double);
            let mut loss = masked_mae(&out, &yt, &ym);
            if o.learn && o.wiggle > 0.0 && wig_mask.size()[1] > 0 {
                let l = &path.level;
                let w = wig_mask.size()[1];
                let d2 = l.narrow(1, 2, w) - l.narrow(1, 1, w) * 2.0 + l.narrow(1, 0, w);
                let pen = (d2.square() * &wig_mask).sum(Kind::Double)
                    / wig_mask.sum(Kind::Double).clamp_min(1.0);
                loss = loss + pen * o.wiggle;
            }
            if !loss.double_value(&[]).is_finite() {
                tracing::warn!(step, "hybrid_joint: non-finite loss; keeping the best step");
                break;
            }
            opt_net.zero_grad();
            opt_es.zero_grad();
            loss.backward();
            opt_net.clip_grad_norm(o.clip);
            opt_net.step();
            if o.learn {
                opt_es.clip_grad_norm(o.clip);
                opt_es.step();
            }
            steps = step;
            if started.elapsed().as_secs_f64() > o.max_seconds {
                capped = true;
                break;
            }
        }
        restore(&net_vs, &best_net);
        restore(&coefs.vs, &best_es);
        let alpha_after = mean_of(&coefs.alpha.sigmoid());
        let gammas_after: Vec<f64> = coefs.gammas.iter().map(|g| mean_of(&g.sigmoid())).collect();
        tracing::info!(
            model = %o.name, steps, best_step, best_val_mae_log = best, capped,
            alpha_mean_before = alpha_before, alpha_mean_after = alpha_after,
            gammas_mean_after = ?gammas_after,
            seconds = started.elapsed().as_secs_f64(),
            "hybrid_joint trained"
        );

        // Forecast from the state after each series' last value.
        let fc = tch::no_grad(|| {
            let path = run_es(&pt.x, &pt.mask, &coefs.tensors());
            let rows: Vec<i64> = (0..n as i64).collect();
            let ends = vec![tl as i64 - 1; n];
            let (xi, _, _) = windows(&path, &pt, &o.periods, &rows, &ends, lags, hz);
            let out = net.forward(&xi.to_kind(Kind::Float)).to_kind(Kind::Double);
            let last = Tensor::from_slice(&rows).view([n as i64, 1]) * tl as i64 + (tl as i64 - 1);
            let level = path.level.flatten(0, 1).take(&last);
            let h = Tensor::arange(hz, (Kind::Int64, Device::Cpu)).view([1, hz]);
            let mut season = Tensor::zeros([n as i64, hz], (Kind::Double, Device::Cpu));
            for (s, &m) in path.seasons.iter().zip(&o.periods) {
                let m = m.max(1) as i64;
                let idx = Tensor::from_slice(&rows).view([n as i64, 1]) * (tl as i64 + m)
                    + tl as i64
                    + h.remainder(m);
                season = season + s.flatten(0, 1).take(&idx);
            }
            let es = (&level + &season).exp();
            let hy = (out + level + season).exp();
            (
                Vec::<f64>::try_from(hy.flatten(0, 1)),
                Vec::<f64>::try_from(es.flatten(0, 1)),
            )
        });
        let (hy, es) = (fc.0?, fc.1?);
        Ok((0..n)
            .map(|i| {
                let last = histories[i].last().copied().unwrap_or(0.0);
                (0..horizon)
                    .map(|j| {
                        let (a, b) = (hy[i * horizon + j], es[i * horizon + j]);
                        if a.is_finite() {
                            a
                        } else if b.is_finite() {
                            b
                        } else {
                            last
                        }
                    })
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hybrid::{EsParams, HybridMode};

    fn series(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|t| {
                let d = 1.0 + 0.3 * (t as f64 * std::f64::consts::TAU / 24.0).sin();
                let w = if (t / 24) % 7 >= 5 { 0.7 } else { 1.0 };
                (20.0 + 0.01 * t as f64) * d * w * (1.0 + 0.1 * rng.random::<f64>())
            })
            .collect()
    }

    fn tensors_of(params: &[EsParams], hs: &[&[f64]], offsets: &[usize]) -> EsTensors {
        let n = hs.len() as i64;
        let periods = &params[0].periods;
        let mut level0 = Vec::new();
        let mut season0 = vec![Vec::new(); periods.len()];
        for ((p, h), &o) in params.iter().zip(hs).zip(offsets) {
            let st = EsState::init(p.clone(), &h[..EsState::init_len(p).min(h.len())]);
            level0.push(st.level);
            for (j, &m) in periods.iter().enumerate() {
                season0[j].extend((0..m).map(|q| st.seasons[j][(q + m - o % m) % m]));
            }
        }
        EsTensors {
            alpha: Tensor::from_slice(&params.iter().map(|p| p.alpha).collect::<Vec<_>>()),
            gammas: (0..periods.len())
                .map(|j| {
                    Tensor::from_slice(&params.iter().map(|p| p.gammas[j]).collect::<Vec<_>>())
                })
                .collect(),
            level0: Tensor::from_slice(&level0),
            season0: season0
                .iter()
                .map(|s| Tensor::from_slice(s).view([n, -1]))
                .collect(),
        }
    }

    /// The tensor recursion gives `EsState::push`'s inputs, levels, final
    /// factors and smoothing forecasts, for series of different lengths
    /// (padding and phase rotation) and different coefficients.
    #[test]
    fn tensor_recursion_matches_the_scalar_one() {
        let periods = vec![24, 168];
        let a = series(700, 1);
        let mut b = series(500, 2);
        b[400] = -1.0; // a missing value: no update
        let hs: Vec<&[f64]> = vec![&a, &b];
        let params = vec![
            EsParams::new(periods.clone(), 0.05, vec![0.02, 0.15]),
            EsParams::new(periods.clone(), 0.3, vec![0.1, 0.01]),
        ];
        let pt = panel_tensors(&hs);
        let es = tensors_of(&params, &hs, &pt.offsets);
        let path = run_es(&pt.x, &pt.mask, &es);
        let tl = pt.t_len;
        for (i, (p, h)) in params.iter().zip(&hs).enumerate() {
            let o = pt.offsets[i];
            let n0 = EsState::init_len(p).min(h.len());
            let mut st = EsState::init(p.clone(), &h[..n0]);
            for (k, &y) in h.iter().enumerate() {
                let z = st.push(y, HybridMode::Deseason);
                let t = (o + k) as i64;
                let lv = path.level.double_value(&[i as i64, t]);
                assert!(
                    (lv - st.level).abs() < 1e-9,
                    "level {i} {k}: {lv} vs {}",
                    st.level
                );
                if z.is_finite() {
                    let d = path.deseason.double_value(&[i as i64, t]);
                    assert!((d - z).abs() < 1e-9, "input {i} {k}: {d} vs {z}");
                }
            }
            for (j, &m) in periods.iter().enumerate() {
                for q in 0..m {
                    // Phase q of the series is padded step q + o.
                    let idx = tl + ((q + o) % m + m - tl % m) % m;
                    let v = path.seasons[j].double_value(&[i as i64, idx as i64]);
                    assert!((v - st.seasons[j][q]).abs() < 1e-9, "season {j} {q}");
                }
            }
            // The forecast the model makes with a zero network output.
            let (_, tgt, _) = windows(&path, &pt, &periods, &[i as i64], &[tl as i64 - 1], 168, 48);
            assert_eq!(tgt.size(), vec![1, 48]);
            let rows = Tensor::from_slice(&[i as i64]).view([1, 1]);
            for hh in 1..=48u64 {
                let mut s = 0.0;
                for (j, &m) in periods.iter().enumerate() {
                    let idx = &rows * (tl + m) as i64 + tl as i64 + ((hh - 1) % m as u64) as i64;
                    s += path.seasons[j]
                        .flatten(0, 1)
                        .take(&idx)
                        .double_value(&[0, 0]);
                }
                let f = (path.level.double_value(&[i as i64, tl as i64 - 1]) + s).exp();
                let want = st.es_forecast(hh);
                assert!(
                    (f / want - 1.0).abs() < 1e-9,
                    "forecast {i} {hh}: {f} vs {want}"
                );
            }
        }
    }

    /// A scalar loss of a tiny series' path: d loss / d logit by autograd
    /// matches central finite differences, and is not zero.
    #[test]
    fn gradients_reach_the_coefficients() {
        let y: Vec<f64> = (0..40)
            .map(|t| 10.0 + 3.0 * ((t % 4) as f64) + (t as f64 * 0.7).sin())
            .collect();
        let pt = panel_tensors(&[&y]);
        let base = [logit(0.2), logit(0.1)];
        let s0 = [0.1, -0.2, 0.05, 0.05];
        let loss = |a: &Tensor, g: &Tensor, s: &Tensor| {
            let es = EsTensors {
                alpha: a.sigmoid(),
                gammas: vec![g.sigmoid()],
                level0: Tensor::from_slice(&[2.5f64]),
                season0: vec![s.view([1, 4])],
            };
            let p = run_es(&pt.x, &pt.mask, &es);
            // Something a forecast would depend on: levels, inputs, factors.
            p.level.sin().sum(Kind::Double)
                + p.deseason.square().sum(Kind::Double) * 0.1
                + p.seasons[0].narrow(1, 40, 4).sum(Kind::Double)
        };
        let loss_of = |a: &Tensor, g: &Tensor, s: &Tensor| loss(a, g, s).double_value(&[]);
        let a = Tensor::from_slice(&[base[0]]).set_requires_grad(true);
        let g = Tensor::from_slice(&[base[1]]).set_requires_grad(true);
        let s = Tensor::from_slice(&s0).set_requires_grad(true);
        loss(&a, &g, &s).backward();
        let eps = 1e-6;
        let c = |v: f64| Tensor::from_slice(&[v]);
        let st = Tensor::from_slice(&s0);
        let fd_a = (loss_of(&c(base[0] + eps), &c(base[1]), &st)
            - loss_of(&c(base[0] - eps), &c(base[1]), &st))
            / (2.0 * eps);
        let fd_g = (loss_of(&c(base[0]), &c(base[1] + eps), &st)
            - loss_of(&c(base[0]), &c(base[1] - eps), &st))
            / (2.0 * eps);
        let mut s_plus = s0;
        s_plus[1] += eps;
        let mut s_minus = s0;
        s_minus[1] -= eps;
        let fd_s = (loss_of(&c(base[0]), &c(base[1]), &Tensor::from_slice(&s_plus))
            - loss_of(&c(base[0]), &c(base[1]), &Tensor::from_slice(&s_minus)))
            / (2.0 * eps);
        let ga = a.grad().double_value(&[0]);
        let gg = g.grad().double_value(&[0]);
        let gs = s.grad().double_value(&[1]);
        for (name, got, want) in [
            ("alpha", ga, fd_a),
            ("gamma", gg, fd_g),
            ("season", gs, fd_s),
        ] {
            assert!(want.abs() > 1e-3, "{name}: finite difference {want} ~ 0");
            assert!(
                (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                "{name}: autograd {got} vs finite difference {want}"
            );
        }
    }

    /// End to end on a short synthetic panel: both variants train, return
    /// finite forecasts close to a clean double season.
    #[test]
    fn joint_and_fixed_forecast_a_double_season() {
        let data: Vec<Vec<f64>> = (0..4)
            .map(|i| series(24 * 7 * 4 + 24 * i, i as u64))
            .collect();
        let hs: Vec<&[f64]> = data.iter().map(|v| &v[..v.len() - 48]).collect();
        for name in ["hybrid_fixed", "hybrid_joint"] {
            let mut o = JointOptions::new(name, 24);
            o.max_steps = 30;
            o.hidden = 16;
            let mut m = JointHybrid::new(o);
            let f = m.fit_forecast(&hs, 48).unwrap();
            for (fc, full) in f.iter().zip(&data) {
                let truth = &full[full.len() - 48..];
                let mape: f64 = fc
                    .iter()
                    .zip(truth)
                    .map(|(a, b)| (a / b - 1.0).abs())
                    .sum::<f64>()
                    / 48.0;
                assert!(mape < 0.25, "{name}: mape {mape}");
            }
        }
    }

    /// A seed suffix names another seed of a known variant; anything else
    /// is not this file's.
    #[test]
    fn seed_suffixes_name_other_seeds_of_known_variants_only() {
        for name in [
            "hybrid_joint",
            "hybrid_joint.s2",
            "hybrid_fixed.s0",
            "hybrid_joint_w.s11",
        ] {
            let m = by_name(name, 24).unwrap_or_else(|| panic!("{name} refused"));
            assert_eq!(m.name(), name);
        }
        for name in [
            "hybrid_joint.s",
            "hybrid_joint.sx",
            "hybrid_other.s1",
            "hybrid_joint_x",
        ] {
            assert!(by_name(name, 24).is_none(), "{name} accepted");
        }
    }
}
