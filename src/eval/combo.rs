//! Combination forecaster `combo`: fits several member models, chooses how
//! to combine them on a **validation tail held out from the history it is
//! given**, refits the members on the whole history and combines their
//! forecasts.
//!
//! Spec (a `--models` name): `combo` (the default members and rule,
//! [`DEFAULT_MEMBERS`], [`DEFAULT_RULE`]), `combo:rf+gbm+snaive` (those
//! members, default rule), `combo_<rule>` or `combo_<rule>:a+b` (a rule of
//! [`Rule::ALL`]). Members are any batch model name (`rf`, `rnn`,
//! `rf_global`, ...) in `eval m4`; in `eval stream` only per-series
//! baselines (the stream harness feeds keys one at a time).
//!
//! Invariants:
//! * Nothing is chosen on anything at or after the origin: the validation
//!   tail is the last `v` values of each *history* (`v` = the forecast
//!   horizon), the members forecast it from the values before it, and the
//!   weights come from those errors only. The batch harness's leak check
//!   covers the combination like any model (it runs when every member's
//!   `leak_check()` is true).
//! * A series whose history is too short for a validation tail (fewer than
//!   `max(v, 2·season)` values before it) gets the plain mean of the members
//!   under the weighting rules (`median` stays the median).
//! * Deterministic when the members are; every combined value is finite
//!   when the members' are (weights are finite, non-negative and sum to 1;
//!   `median` takes one of the members' values or the mean of two).
//! * The rules (see [`Rule`]) are per series (`mean`, `median`, `inv`,
//!   `best`) or pooled over all series of the batch (`global`, `ginv`,
//!   `sel`); `mean` and `median` read no validation tail, so their members
//!   are fitted once;
//!   pooled rules see one series at a time in the stream harness, where
//!   they act per series.
//!
//! [`study`] scores every rule and member subset at once from one set of
//! member forecasts (three origins per series), choosing on a validation
//! tail and reporting the held-out tail beside it; it is how the default
//! was picked (BENCHMARKS.md, "Accuracy: combinations").

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::backtest::StreamModel;
use super::forecast_cache;
use super::harness::Model;
use super::{model_by_name, ModelContext};
use crate::accuracy::{self, Scores};
use crate::baselines::{self, Baseline};
use crate::error::Result;

/// The combination's model name.
pub const COMBO: &str = "combo";

/// Members of a bare `combo`, the `eval m4` default. First chosen by
/// [`study`] on the M4 Hourly validation tail (the 48 values before the
/// scored 48), where rf+gbm led every subset (OWA 0.375-0.376 by every
/// weighting rule; BENCHMARKS.md, "Accuracy: combinations"); then the
/// ES-RNN-style `hybrid` joined: the median of rf, gbm and hybrid scored
/// validation OWA 0.363 against rf+gbm's 0.376 (tail 0.415 vs 0.426;
/// BENCHMARKS.md, "Accuracy: the ES-RNN-style hybrid"). The hybrid trains
/// one network (`hybrid@1`: before, the bare `hybrid` here took
/// `--rnn-ensemble`, 3 by default, so the default trained three; a 3-seed
/// member tied one network on validation, 0.368 vs 0.369, for three times
/// the training: "Ensembles of the hybrid"). Then the hybrid whose
/// smoothing coefficients are learned jointly with its network
/// (`hybrid_joint`) replaced it: validation OWA 0.355 vs 0.363 for
/// `hybrid@1` in the same run (holdout 0.410 vs 0.415; BENCHMARKS.md,
/// "Coefficients learned jointly with the network vs fitted first"). It
/// trains until its early stopping (~4-5 min here), bounded by a 360 s
/// cap, and opts out of the harness's leak-check rerun, so the default
/// combination does too.
pub const DEFAULT_MEMBERS: &[&str] = &["rf", "gbm", "hybrid_joint"];

/// Rule of a bare `combo`: the median of three (it needs no validation
/// fits; for rf+gbm alone `inv`/`ginv`/`mean` tied within 0.001, and with a
/// network member the median was the rule that did not lose to rf+gbm).
pub const DEFAULT_RULE: Rule = Rule::Median;

/// The `eval stream` default combination, chosen on validation origins of
/// the NAB CloudWatch streams (`eval stream --drop-last 0.2`): the median
/// of the trees and three smoothers beat every single baseline and every
/// other rule tried there (12-step MASE 1.912 against 1.947-2.121).
pub const STREAM_DEFAULT: &str = "combo_median:rf+gbm+snaive+ses_sa+damped_sa";

/// How member forecasts are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Equal weights.
    Mean,
    /// Per step, the median of the members.
    Median,
    /// Per series, weights proportional to 1 / validation MAE.
    Inverse,
    /// Per series, the member with the lowest validation MAE.
    Best,
    /// One member for all series: the lowest pooled validation error
    /// (mean sMAPE and mean MASE, each relative to the members' average).
    Global,
    /// One set of weights for all series, proportional to 1 / the pooled
    /// validation error of `Global`.
    GlobalInverse,
    /// One set of weights for all series by forward selection with
    /// replacement on the pooled validation error (see [`select`]).
    Select,
}

impl Rule {
    pub const ALL: &'static [Rule] = &[
        Rule::Mean,
        Rule::Median,
        Rule::Inverse,
        Rule::Best,
        Rule::Global,
        Rule::GlobalInverse,
        Rule::Select,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Mean => "mean",
            Rule::Median => "median",
            Rule::Inverse => "inv",
            Rule::Best => "best",
            Rule::Global => "global",
            Rule::GlobalInverse => "ginv",
            Rule::Select => "sel",
        }
    }

    /// Whether the rule reads the validation tail (mean and median do not,
    /// so their members are fitted once).
    pub fn uses_validation(self) -> bool {
        !matches!(self, Rule::Mean | Rule::Median)
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.name() == s)
    }
}

/// A parsed `combo` spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ComboSpec {
    pub rule: Rule,
    pub members: Vec<String>,
}

/// Parses a `combo` spec; `None` when `name` is not one, an error when it is
/// one but malformed.
pub fn parse_spec(name: &str) -> Option<Result<ComboSpec>> {
    let rest = name.strip_prefix(COMBO)?;
    let (rule_part, members_part) = match rest.split_once(':') {
        Some((r, m)) => (r, Some(m)),
        None => (rest, None),
    };
    let rule = match rule_part {
        "" => DEFAULT_RULE,
        r => match r.strip_prefix('_').and_then(Rule::parse) {
            Some(rule) => rule,
            None if r.starts_with('_') => {
                let known: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
                return Some(Err(eval_error!(
                    "`{name}`: unknown combination rule `{}` (known: {})",
                    &r[1..],
                    known.join(", ")
                )));
            }
            // Some other name that merely starts with "combo".
            None => return None,
        },
    };
    let members: Vec<String> = match members_part {
        None => DEFAULT_MEMBERS.iter().map(|s| s.to_string()).collect(),
        Some(m) => m.split('+').map(|s| s.trim().to_string()).collect(),
    };
    if members.is_empty() || members.iter().any(|m| m.is_empty()) {
        return Some(Err(eval_error!(
            "`{name}`: list the members as `combo:a+b+c`"
        )));
    }
    if let Some(m) = members.iter().find(|m| m.starts_with(COMBO)) {
        return Some(Err(eval_error!(
            "`{name}`: a combination cannot contain another (`{m}`)"
        )));
    }
    Some(Ok(ComboSpec { rule, members }))
}

/// The history length below which a series gets no validation tail.
fn min_fit(v: usize, season: usize) -> usize {
    v.max(2 * season.max(1))
}

/// One series' validation tail: every member's forecast of it and scores.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Per member.
    pub scores: Vec<Scores>,
    /// The history before the tail (MASE scale), the tail, and each
    /// member's forecast of it (used by `sel`, which scores combinations).
    pub fit: Vec<f64>,
    pub actual: Vec<f64>,
    pub forecasts: Vec<Vec<f64>>,
    pub season: usize,
}

/// Validation of every member on one series (`None`: too short).
type SeriesVal = Option<Validation>;

/// Pooled validation error of a set of per-series scores: mean sMAPE over
/// `ref_s` plus mean finite MASE over `ref_m` (OWA-like; the references are
/// the members' averages, so no Naive2 is needed).
fn pooled_error(scores: &[Scores], ref_s: f64, ref_m: f64) -> f64 {
    let n = scores.len().max(1) as f64;
    let sm = scores.iter().map(|s| s.smape).sum::<f64>() / n;
    let ms: Vec<f64> = scores
        .iter()
        .map(|s| s.mase)
        .filter(|x| x.is_finite())
        .collect();
    let part = |x: f64, r: f64| if x.is_finite() && r > 0.0 { x / r } else { 0.0 };
    let mm = if ms.is_empty() {
        f64::NAN
    } else {
        ms.iter().sum::<f64>() / ms.len() as f64
    };
    part(sm, ref_s) + part(mm, ref_m)
}

/// Forward selection with replacement (Caruana et al. 2004) on the pooled
/// validation error: ten rounds, each adding one copy of the member that
/// lowers the error of the equal-weight mean of the copies most; the best
/// weights seen win. `None` without any validation tail.
fn select(rows: &[&Validation], k: usize, ref_s: f64, ref_m: f64) -> Option<Vec<f64>> {
    if rows.is_empty() {
        return None;
    }
    let error_of = |w: &[f64]| {
        let scores: Vec<Scores> = rows
            .iter()
            .filter_map(|r| {
                let f: Vec<f64> = (0..r.actual.len())
                    .map(|t| {
                        (0..k)
                            .filter(|&j| w[j] > 0.0)
                            .map(|j| w[j] * r.forecasts[j][t])
                            .sum()
                    })
                    .collect();
                accuracy::score(&r.fit, &r.actual, &f, r.season.max(1)).ok()
            })
            .collect();
        pooled_error(&scores, ref_s, ref_m)
    };
    let mut counts = vec![0usize; k];
    let mut best: Option<(f64, Vec<f64>)> = None;
    for round in 1..=10 {
        let mut pick: Option<(f64, usize, Vec<f64>)> = None;
        for j in 0..k {
            let w: Vec<f64> = (0..k)
                .map(|i| (counts[i] + usize::from(i == j)) as f64 / round as f64)
                .collect();
            let e = error_of(&w);
            if pick.as_ref().is_none_or(|p| e < p.0) {
                pick = Some((e, j, w));
            }
        }
        let (e, j, w) = pick?;
        counts[j] += 1;
        if best.as_ref().is_none_or(|b| e < b.0) {
            best = Some((e, w));
        }
    }
    best.map(|b| b.1)
}

/// Weights (summing to 1) of `k` members for every series (not used by the
/// median rule). `val[i]` is series `i`'s validation.
fn weights(rule: Rule, val: &[SeriesVal], k: usize) -> Vec<Vec<f64>> {
    let equal = vec![1.0 / k as f64; k];
    let normalise = |w: Vec<f64>| {
        let s: f64 = w.iter().sum();
        if s.is_finite() && s > 0.0 {
            w.into_iter().map(|x| x / s).collect()
        } else {
            vec![1.0 / k as f64; k]
        }
    };
    // Pooled error per member: mean sMAPE and mean finite MASE, each
    // relative to the members' average (OWA-like, but needs no reference).
    let rows: Vec<&Validation> = val.iter().flatten().collect();
    let refs = || -> Option<(Vec<f64>, Vec<f64>, f64, f64)> {
        if rows.is_empty() {
            return None;
        }
        let mean_of = |j: usize, f: fn(&Scores) -> f64| {
            let xs: Vec<f64> = rows
                .iter()
                .map(|r| f(&r.scores[j]))
                .filter(|x| x.is_finite())
                .collect();
            if xs.is_empty() {
                f64::NAN
            } else {
                xs.iter().sum::<f64>() / xs.len() as f64
            }
        };
        let sm: Vec<f64> = (0..k).map(|j| mean_of(j, |s| s.smape)).collect();
        let ms: Vec<f64> = (0..k).map(|j| mean_of(j, |s| s.mase)).collect();
        let avg = |xs: &[f64]| {
            let f: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
            f.iter().sum::<f64>() / f.len().max(1) as f64
        };
        let (a_s, a_m) = (avg(&sm), avg(&ms));
        Some((sm, ms, a_s, a_m))
    };
    let pooled = || -> Option<Vec<f64>> {
        let (sm, ms, a_s, a_m) = refs()?;
        let part = |x: f64, a: f64| if x.is_finite() && a > 0.0 { x / a } else { 0.0 };
        Some(
            (0..k)
                .map(|j| part(sm[j], a_s) + part(ms[j], a_m))
                .collect(),
        )
    };
    let argmin = |e: &[f64]| {
        e.iter()
            .enumerate()
            .filter(|(_, x)| x.is_finite())
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(j, _)| j)
    };
    let one_hot = |j: Option<usize>| match j {
        Some(j) => (0..k).map(|i| if i == j { 1.0 } else { 0.0 }).collect(),
        None => vec![1.0 / k as f64; k],
    };
    let inverse = |e: &[f64]| {
        // Members with zero error share all the weight (1/0 has no weight).
        if e.contains(&0.0) {
            return normalise(
                e.iter()
                    .map(|&x| if x == 0.0 { 1.0 } else { 0.0 })
                    .collect(),
            );
        }
        normalise(
            e.iter()
                .map(|&x| {
                    if x.is_finite() && x > 0.0 {
                        1.0 / x
                    } else {
                        0.0
                    }
                })
                .collect(),
        )
    };
    let global = match rule {
        Rule::Global => Some(one_hot(pooled().and_then(|p| argmin(&p)))),
        Rule::GlobalInverse => Some(pooled().map_or(equal.clone(), |p| inverse(&p))),
        Rule::Select => Some(
            refs()
                .and_then(|(_, _, a_s, a_m)| select(&rows, k, a_s, a_m))
                .unwrap_or_else(|| equal.clone()),
        ),
        _ => None,
    };
    val.iter()
        .map(|sv| match (sv, &global) {
            (None, _) => equal.clone(),
            (Some(_), Some(g)) => g.clone(),
            (Some(s), None) => {
                let mae: Vec<f64> = s.scores.iter().map(|x| x.mae).collect();
                match rule {
                    Rule::Inverse => inverse(&mae),
                    Rule::Best => one_hot(argmin(&mae)),
                    _ => equal.clone(),
                }
            }
        })
        .collect()
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Combines `fc[member][series][step]` by `rule`, weights from `val`.
pub fn combine(rule: Rule, val: &[SeriesVal], fc: &[Vec<Vec<f64>>]) -> Vec<Vec<f64>> {
    let k = fc.len();
    let n = val.len();
    if rule == Rule::Median {
        return (0..n)
            .map(|i| {
                let h = fc.first().map_or(0, |m| m[i].len());
                (0..h)
                    .map(|t| median(&mut fc.iter().map(|m| m[i][t]).collect::<Vec<_>>()))
                    .collect()
            })
            .collect();
    }
    let w = weights(rule, val, k);
    (0..n)
        .map(|i| {
            let h = fc.first().map_or(0, |m| m[i].len());
            (0..h)
                .map(|t| {
                    (0..k)
                        .filter(|&j| w[i][j] > 0.0)
                        .map(|j| w[i][j] * fc[j][i][t])
                        .sum()
                })
                .collect()
        })
        .collect()
}

/// Validation histories (the last `v` values cut off; a series too short
/// keeps at most its first value so members still get a history) and,
/// per series, whether it has a usable validation tail.
fn validation_split<'a>(
    histories: &[&'a [f64]],
    v: usize,
    season: usize,
) -> (Vec<&'a [f64]>, Vec<bool>) {
    histories
        .iter()
        .map(|h| {
            let n = h.len();
            let ok = n >= v + min_fit(v, season);
            let cut = if ok { n - v } else { n.min(1) };
            (&h[..cut], ok)
        })
        .unzip()
}

/// Scores of each member's validation forecast (`vf[member][series]`).
fn validation_scores(
    histories: &[&[f64]],
    usable: &[bool],
    vf: &[Vec<Vec<f64>>],
    v: usize,
    season: usize,
) -> Vec<SeriesVal> {
    histories
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if !usable[i] {
                return None;
            }
            let (fit, actual) = h.split_at(h.len() - v);
            let scores = vf
                .iter()
                .map(|m| accuracy::score(fit, actual, &m[i], season.max(1)).ok())
                .collect::<Option<Vec<Scores>>>()?;
            Some(Validation {
                scores,
                fit: fit.to_vec(),
                actual: actual.to_vec(),
                forecasts: vf.iter().map(|m| m[i].clone()).collect(),
                season,
            })
        })
        .collect()
}

/// The combination as a batch [`Model`] (`eval m4`): any batch members.
pub struct Combo {
    name: String,
    spec: ComboSpec,
    ctx: ModelContext,
}

impl Combo {
    /// Checks that every member can be built.
    pub fn new(name: &str, spec: ComboSpec, ctx: &ModelContext) -> Result<Self> {
        for m in &spec.members {
            model_by_name(m, ctx)?;
        }
        Ok(Combo {
            name: name.to_string(),
            spec,
            ctx: ctx.clone(),
        })
    }
}

impl Combo {
    /// One member's forecasts; with `ctx.net_cache`, a deterministic member
    /// (one the leak check covers) is kept there and reused by the next
    /// combination of the same histories (networks keep their own forecasts
    /// there, per network).
    fn member(&self, name: &str, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let mut m = model_by_name(name, &self.ctx)?;
        let path = match &self.ctx.net_cache {
            Some(dir) if m.leak_check() => Some(forecast_cache::file(
                dir,
                "member",
                &format!("{name} season {}", self.ctx.season),
                histories,
                horizon,
            )),
            _ => None,
        };
        if let Some(f) = path
            .as_deref()
            .and_then(|p| forecast_cache::read(p, histories.len(), horizon))
        {
            return Ok(f);
        }
        let f = m.fit_forecast(histories, horizon)?;
        if let Some(p) = &path {
            forecast_cache::write(p, &f)?;
        }
        Ok(f)
    }
}

impl Model for Combo {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// Only as checkable as its members: a member that opts out (the `rnn`
    /// trains for minutes) makes the whole combination opt out.
    /// With `net_cache`, members' forecasts may come from the cache, which
    /// the perturbed rerun cannot reach: no check is claimed then.
    fn leak_check(&self) -> bool {
        self.ctx.net_cache.is_none()
            && self
                .spec
                .members
                .iter()
                .all(|m| model_by_name(m, &self.ctx).is_ok_and(|m| m.leak_check()))
    }

    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let v = horizon.max(1);
        let season = self.ctx.season;
        let (vh, mut usable) = validation_split(histories, v, season);
        if !self.spec.rule.uses_validation() {
            usable.iter_mut().for_each(|u| *u = false);
        }
        let mut vf = Vec::with_capacity(self.spec.members.len());
        let mut fc = Vec::with_capacity(self.spec.members.len());
        for name in &self.spec.members {
            // A fresh model per fit: members keep nothing between calls.
            let started = std::time::Instant::now();
            // Mean and median need no validation forecasts: skip the fit.
            vf.push(if usable.iter().any(|&u| u) {
                self.member(name, &vh, v)?
            } else {
                vec![Vec::new(); histories.len()]
            });
            fc.push(self.member(name, histories, horizon)?);
            tracing::info!(combo = %self.name, member = %name, seconds = started.elapsed().as_secs_f64(), "member fitted twice");
        }
        let val = validation_scores(histories, &usable, &vf, v, season);
        Ok(combine(self.spec.rule, &val, &fc))
    }
}

/// The combination as a per-series [`Baseline`] (members are baselines):
/// what `eval stream` refits at every origin.
pub struct ComboBaseline {
    rule: Rule,
    season: usize,
    members: Vec<Box<dyn Baseline + Send + Sync>>,
}

impl ComboBaseline {
    pub fn new(spec: &ComboSpec, season: usize) -> Result<Self> {
        let members = spec
            .members
            .iter()
            .map(|m| {
                baselines::named(m, season).ok_or_else(|| {
                    eval_error!(
                        "combination member `{m}`: a stream backtest combines per-series baselines only (known: {})",
                        baselines::NAMES.join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(ComboBaseline {
            rule: spec.rule,
            season,
            members,
        })
    }
}

impl Baseline for ComboBaseline {
    fn name(&self) -> &str {
        COMBO
    }

    fn forecast(&self, history: &[f64], horizon: usize) -> Vec<f64> {
        let v = horizon.max(1);
        let hs = [history];
        let (vh, mut usable) = validation_split(&hs, v, self.season);
        usable[0] &= self.rule.uses_validation();
        let vf: Vec<Vec<Vec<f64>>> = self
            .members
            .iter()
            .map(|m| {
                vec![if usable[0] {
                    m.forecast(vh[0], v)
                } else {
                    Vec::new()
                }]
            })
            .collect();
        let fc: Vec<Vec<Vec<f64>>> = self
            .members
            .iter()
            .map(|m| vec![m.forecast(history, horizon)])
            .collect();
        let val = validation_scores(&hs, &usable, &vf, v, self.season);
        combine(self.rule, &val, &fc).pop().unwrap_or_default()
    }
}

/// A stream model for a combo spec: [`ComboBaseline`] refitted at every origin.
pub fn stream_model(name: &str, spec: &ComboSpec, season: usize) -> Result<Box<dyn StreamModel>> {
    Ok(Box::new(super::backtest::RefitBaseline::new(
        name,
        Box::new(ComboBaseline::new(spec, season)?),
    )))
}

// ------------------------------------------------------------------ study

/// Mean scores of forecasts `fc[series]` against `data[i][o_i..o_i + h]`
/// (MASE scale from the values before `o_i`).
fn mean_at(
    data: &[&[f64]],
    origin_back: usize,
    h: usize,
    fc: &[Vec<f64>],
    season: usize,
) -> Result<Scores> {
    let mut s = Vec::with_capacity(data.len());
    for (x, f) in data.iter().zip(fc) {
        let o = x.len() - origin_back;
        s.push(
            accuracy::score(&x[..o], &x[o..o + h], f, season.max(1))
                .map_err(|e| eval_error!("scoring the study: {e}"))?,
        );
    }
    accuracy::mean_scores(&s).ok_or_else(|| eval_error!("no series to score"))
}

/// Scores every rule on every member subset of size ≥ 2 (and every member
/// alone) at two origins per series, from member forecasts at three origins
/// (`n − 3h`, `n − 2h`, `n − h`):
/// * **validation**: weights from the forecasts at `n − 3h`, combined
///   forecasts at `n − 2h`, scored on `n − 2h .. n − h` (what chooses);
/// * **tail**: weights from `n − 2h`, combined at `n − h`, scored on the
///   last `h` values (reported only; exactly what `combo` does on an
///   `eval m4 --holdout h`).
///
/// Returns Markdown sorted by validation OWA (vs the published M4 Hourly
/// Naive2; only the ranking matters for other data).
fn cache_path(
    dir: &Path,
    member: &str,
    ctx: &ModelContext,
    h: usize,
    back: usize,
    n: usize,
) -> PathBuf {
    let safe: String = member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let e = if member.contains(super::RNN) {
        format!("-e{}", ctx.rnn_ensemble)
    } else {
        String::new()
    };
    dir.join(format!(
        "{safe}{e}-m{}-h{h}-back{back}-n{n}.csv",
        ctx.season
    ))
}

/// With `cache`, member forecasts are stored there (one CSV per member and
/// origin, named after the member, season, h, origin and series count) and
/// reused by later studies of the same data: delete it when the data or a
/// member change.
pub fn study(
    data: &[(String, Vec<f64>)],
    members: &[String],
    ctx: &ModelContext,
    h: usize,
    cache: Option<&Path>,
) -> Result<String> {
    let season = ctx.season;
    let h = h.max(1);
    let too_short = data
        .iter()
        .filter(|(_, v)| v.len() < 3 * h + min_fit(h, season))
        .count();
    if too_short > 0 {
        bail!(
            "{too_short} series are too short for the study (need 3·{h} + {} values)",
            min_fit(h, season)
        );
    }
    let vals: Vec<&[f64]> = data.iter().map(|(_, v)| v.as_slice()).collect();
    // fcs[origin][member][series], origin 0..3 = n−3h, n−2h, n−h.
    let mut fcs: Vec<Vec<Vec<Vec<f64>>>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut secs = Vec::new();
    for name in members {
        let started = std::time::Instant::now();
        for (k, back) in [3 * h, 2 * h, h].into_iter().enumerate() {
            let hist: Vec<&[f64]> = vals.iter().map(|x| &x[..x.len() - back]).collect();
            let path = cache.map(|d| cache_path(d, name, ctx, h, back, hist.len()));
            let f = match path
                .as_deref()
                .and_then(|p| forecast_cache::read(p, hist.len(), h))
            {
                Some(f) => f,
                None => {
                    let f = model_by_name(name, ctx)?.fit_forecast(&hist, h)?;
                    if let Some(p) = &path {
                        forecast_cache::write(p, &f)?;
                    }
                    f
                }
            };
            if f.len() != hist.len()
                || f.iter()
                    .any(|x| x.len() != h || x.iter().any(|v| !v.is_finite()))
            {
                bail!("member `{name}` returned malformed forecasts in the study");
            }
            fcs[k].push(f);
        }
        secs.push(started.elapsed().as_secs_f64());
        tracing::info!(member = %name, seconds = secs[secs.len() - 1], "study: member forecast at 3 origins");
    }
    let hist_at =
        |back: usize| -> Vec<&[f64]> { vals.iter().map(|x| &x[..x.len() - back]).collect() };
    let usable = vec![true; vals.len()];
    let k = members.len();
    let mut rows: Vec<(String, String, Scores, Scores)> = Vec::new();
    for mask in 1u32..(1 << k) {
        let idx: Vec<usize> = (0..k).filter(|j| mask & (1 << j) != 0).collect();
        let subset = idx
            .iter()
            .map(|&j| members[j].as_str())
            .collect::<Vec<_>>()
            .join("+");
        let pick =
            |o: usize| -> Vec<Vec<Vec<f64>>> { idx.iter().map(|&j| fcs[o][j].clone()).collect() };
        let rules: &[Rule] = if idx.len() == 1 {
            &[Rule::Mean]
        } else {
            Rule::ALL
        };
        for &rule in rules {
            // Validation: weights at n−3h (scored on n−3h..n−2h with the
            // history before n−3h), combination at n−2h.
            let w_val = validation_scores(&hist_at(2 * h), &usable, &pick(0), h, season);
            let c_val = combine(rule, &w_val, &pick(1));
            let s_val = mean_at(&vals, 2 * h, h, &c_val, season)?;
            let w_tail = validation_scores(&hist_at(h), &usable, &pick(1), h, season);
            let c_tail = combine(rule, &w_tail, &pick(2));
            let s_tail = mean_at(&vals, h, h, &c_tail, season)?;
            let rname = if idx.len() == 1 {
                "—".to_string()
            } else {
                rule.name().to_string()
            };
            rows.push((subset.clone(), rname, s_val, s_tail));
        }
    }
    rows.sort_by(|a, b| a.2.owa_m4_hourly().total_cmp(&b.2.owa_m4_hourly()));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Combination study: {} series, h = {h}; member forecasts at n−3h, n−2h, n−h ({}). \
         Validation: weights from n−3h, scored on n−2h..n−h (chooses). Tail: weights from n−2h, scored on the last h (reported).\n",
        vals.len(),
        members
            .iter()
            .zip(&secs)
            .map(|(m, t)| format!("{m} {t:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s.push_str("| members | rule | validation sMAPE | validation MASE | validation OWA | tail sMAPE | tail MASE | tail OWA |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (sub, rule, v, t) in &rows {
        let _ = writeln!(
            s,
            "| {sub} | {rule} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            v.smape,
            v.mase,
            v.owa_m4_hourly(),
            t.smape,
            t.mase,
            t.owa_m4_hourly()
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A validation with scores only (rules other than `sel`).
    fn v(scores: Vec<Scores>) -> Option<Validation> {
        Some(Validation {
            scores,
            fit: Vec::new(),
            actual: Vec::new(),
            forecasts: Vec::new(),
            season: 1,
        })
    }

    fn sc(mae: f64, smape: f64, mase: f64) -> Scores {
        Scores {
            smape,
            mase,
            mae,
            rmse: mae,
        }
    }

    /// `sel` finds the even mix of two members biased in opposite
    /// directions (their mean is exact), where `global` must pick one.
    #[test]
    fn select_finds_the_mix() {
        let actual = vec![10.0, 20.0, 10.0, 20.0];
        let fit: Vec<f64> = (0..40)
            .map(|t| if t % 2 == 0 { 10.0 } else { 20.0 })
            .collect();
        let hi: Vec<f64> = actual.iter().map(|a| a + 2.0).collect();
        let lo: Vec<f64> = actual.iter().map(|a| a - 2.0).collect();
        let mk = |f: &[Vec<f64>]| {
            let scores = f
                .iter()
                .map(|x| accuracy::score(&fit, &actual, x, 2).unwrap())
                .collect();
            Some(Validation {
                scores,
                fit: fit.clone(),
                actual: actual.clone(),
                forecasts: f.to_vec(),
                season: 2,
            })
        };
        let val = vec![mk(&[
            hi.clone(),
            lo.clone(),
            hi.iter().map(|x| x + 5.0).collect(),
        ])];
        let w = weights(Rule::Select, &val, 3);
        assert_eq!(w[0], vec![0.5, 0.5, 0.0]);
        let g = weights(Rule::Global, &val, 3);
        assert_eq!(g[0].iter().filter(|&&x| x == 1.0).count(), 1);
    }

    #[test]
    fn specs_parse() {
        let s = parse_spec("combo").unwrap().unwrap();
        assert_eq!(s.rule, DEFAULT_RULE);
        assert_eq!(s.members, DEFAULT_MEMBERS);
        let s = parse_spec("combo_median:rf+snaive").unwrap().unwrap();
        assert_eq!(
            (s.rule, s.members.as_slice()),
            (Rule::Median, &["rf".to_string(), "snaive".to_string()][..])
        );
        assert!(parse_spec("combo_nope:rf").unwrap().is_err());
        assert!(parse_spec("combo:rf+").unwrap().is_err());
        assert!(parse_spec("combo:rf+combo").unwrap().is_err());
        // The stream default (spelled out in the CLI's --models default)
        // builds as a per-series combination.
        let s = parse_spec(STREAM_DEFAULT).unwrap().unwrap();
        assert_eq!(s.rule, Rule::Median);
        assert!(ComboBaseline::new(&s, 24).is_ok());
        assert!(parse_spec("rf").is_none());
        assert!(parse_spec("combos").is_none());
    }

    #[test]
    fn rules_weight_as_documented() {
        // Two series, two members; member 0 better on series 0, member 1
        // much better on series 1; pooled, member 1 is better.
        let val = vec![
            v(vec![sc(1.0, 10.0, 1.0), sc(3.0, 30.0, 3.0)]),
            v(vec![sc(8.0, 40.0, 8.0), sc(1.0, 5.0, 1.0)]),
            None,
        ];
        let fc = vec![
            vec![vec![0.0, 0.0], vec![0.0], vec![2.0]],
            vec![vec![4.0, 8.0], vec![8.0], vec![4.0]],
        ];
        let c = |r| combine(r, &val, &fc);
        assert_eq!(c(Rule::Mean), vec![vec![2.0, 4.0], vec![4.0], vec![3.0]]);
        assert_eq!(c(Rule::Median), vec![vec![2.0, 4.0], vec![4.0], vec![3.0]]);
        assert_eq!(c(Rule::Best), vec![vec![0.0, 0.0], vec![8.0], vec![3.0]]);
        // 1/1 and 1/3 -> weights 3/4, 1/4.
        assert_eq!(c(Rule::Inverse)[0], vec![1.0, 2.0]);
        // 1/8 and 1/1 -> weights 1/9, 8/9.
        assert!((c(Rule::Inverse)[1][0] - 64.0 / 9.0).abs() < 1e-12);
        // Pooled: member 1 wins everywhere it has a validation tail; the
        // series without one keeps the mean.
        assert_eq!(c(Rule::Global), vec![vec![4.0, 8.0], vec![8.0], vec![3.0]]);
        let g = c(Rule::GlobalInverse);
        assert!(g[0][0] > 2.0 && g[0][0] < 4.0, "{g:?}");
        assert_eq!(g[2], vec![3.0]);
        // A member without error takes all the weight.
        let val0 = vec![v(vec![sc(0.0, 0.0, 0.0), sc(2.0, 1.0, 1.0)])];
        let fc0 = vec![vec![vec![1.0]], vec![vec![5.0]]];
        assert_eq!(combine(Rule::Inverse, &val0, &fc0), vec![vec![1.0]]);
    }

    /// The combination chooses on the validation tail only: on series whose
    /// last values (the tail) favour the other member, `best` still follows
    /// the validation tail, and the harness's leak check accepts it.
    #[test]
    fn combo_goes_through_the_harness() {
        use crate::eval::{run_checked, Panel, Series};
        let ctx = ModelContext {
            season: 4,
            rnn_pipeline: None,
            rnn_ensemble: 1,
            net_cache: None,
        };
        let series: Vec<Series> = (0..5)
            .map(|i| {
                let values: Vec<f64> = (0..80)
                    .map(|t| 10.0 + i as f64 + [0.0, 3.0, -1.0, 2.0][t % 4] + 0.05 * t as f64)
                    .collect();
                Series {
                    id: format!("s{i}"),
                    origin: 72,
                    values,
                }
            })
            .collect();
        let panel = Panel::new(series);
        for name in [
            "combo_best:snaive+naive",
            "combo_mean:snaive+naive",
            "combo_ginv:snaive+naive+ses_sa",
        ] {
            let c = run_checked(
                &panel,
                &mut || {
                    Ok(
                        Box::new(Combo::new(name, parse_spec(name).unwrap()?, &ctx)?)
                            as Box<dyn Model>,
                    )
                },
                8,
            )
            .expect("accepted");
            assert!(c.leak_checked);
            assert_eq!(c.forecasts.len(), 5);
            let g = panel.read();
            for (s, f) in g.iter().zip(&c.forecasts) {
                let h = s.history();
                let snaive: Vec<f64> = (0..8).map(|t| h[h.len() - 4 + t % 4]).collect();
                let naive = vec![h[h.len() - 1]; 8];
                if name.starts_with("combo_best") {
                    // Seasonal data: seasonal naive wins the validation tail.
                    assert_eq!(f, &snaive);
                }
                if name.starts_with("combo_mean") {
                    let mean: Vec<f64> = snaive
                        .iter()
                        .zip(&naive)
                        .map(|(a, b)| 0.5 * a + 0.5 * b)
                        .collect();
                    assert!(f.iter().zip(&mean).all(|(a, b)| (a - b).abs() < 1e-9));
                }
            }
        }
        // The per-series form gives the same forecasts as the batch form.
        let spec = parse_spec("combo_inv:snaive+naive+ses_sa")
            .unwrap()
            .unwrap();
        let b = ComboBaseline::new(&spec, 4).unwrap();
        let mut batch = Combo::new("x", spec, &ctx).unwrap();
        let g = panel.read();
        let hs: Vec<&[f64]> = g.iter().map(|s| s.history()).collect();
        let fb = batch.fit_forecast(&hs, 8).unwrap();
        for (h, f) in hs.iter().zip(&fb) {
            assert_eq!(&b.forecast(h, 8), f);
        }
    }

    #[test]
    fn short_series_get_the_mean_and_stream_members_must_be_baselines() {
        let spec = parse_spec("combo_best:snaive+naive").unwrap().unwrap();
        let b = ComboBaseline::new(&spec, 24).unwrap();
        let h: Vec<f64> = (0..30).map(|t| t as f64).collect();
        // 30 < 12 + 48: no validation tail, plain mean of snaive and naive.
        let f = b.forecast(&h, 12);
        let want: Vec<f64> = (0..12).map(|t| 0.5 * (h[6 + t % 24] + 29.0)).collect();
        assert_eq!(f, want);
        let e = ComboBaseline::new(&parse_spec("combo:rnn+snaive").unwrap().unwrap(), 24)
            .err()
            .unwrap();
        assert!(e.to_string().contains("per-series baselines"), "{e}");
    }
}
