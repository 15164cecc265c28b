//! Per-key model choice: each key is served by whichever candidate has had
//! the lowest recent live error on it, the network or a classical
//! forecaster.
//!
//! One global network is not the best forecaster for every key: on short,
//! spiky series a smoother or a naive forecast often wins (on the shared AWS
//! CloudWatch streams the network's 12-step MASE is 1.94, simple exponential
//! smoothing's 1.19). The chooser runs after the forecast stage, on the
//! closed-windows batch and the forecasts made from it, and keeps per key:
//! - the key's last window values (filled windows included, as the network
//!   sees them): `season` of them, or `choice.history` when a classical
//!   candidate is configured;
//! - the state of the cheap candidates it updates itself: `naive` (the last
//!   value), `snaive` (the value a season ago), `smedian` (the median of
//!   the values one, two and three seasons ago: a seasonal naive forecast
//!   that does not repeat a one-off spike or a shifted peak the next day,
//!   which is where `snaive` lost to `ses_sa` on the NAB AWS keys; a key
//!   keeps at least three seasons of values with it), `ses` (simple
//!   exponential smoothing, `alpha` fixed);
//! - per classical candidate (any forecaster of `baselines::named`:
//!   `ses_sa`, `damped_sa`, `naive2`, `hw_add`, `arima`, `prophet`, `rf`,
//!   ...) its last fit: the forecaster is run on the key's recent values
//!   every `choice.refit_every` windows for `horizon + refit_every - 1`
//!   steps, and the windows in between are served that fit further ahead.
//!   A batch's fits run in parallel (rayon, off the tokio workers as all
//!   compute-thread work);
//! - `median`: the step-wise median of the other candidates' forecasts
//!   (the combination that won offline, see BENCHMARKS.md "combinations");
//!   `weighted`: their mean weighted by inverse recent error (a
//!   combination rather than a selection; on the NAB validation origins
//!   it lost to selecting, BENCHMARKS.md "Combination instead of
//!   selection");
//! - every candidate's pending forecasts at the scored steps (the first and
//!   the last of the horizon, or every step with `choice.score_all_steps`),
//!   scored against real actuals as their windows close (filled windows
//!   are not actuals);
//! - an exponentially weighted mean of each candidate's absolute error
//!   (half-life `choice.half_life` scored windows); with the regime-change
//!   guard a second, fast one (half-life `choice.fast_half_life`);
//! - the candidate serving the key. It changes only when another one's
//!   error is below the serving one's by more than `choice.margin`
//!   (hysteresis, so a key does not flap between two close candidates), and
//!   not before `choice.min_scored` windows have been scored. A new key
//!   starts on `choice.start` (the network by default); only the
//!   candidates in `choice.serve` (default all) may serve.
//!
//! The regime-change guard (`choice.fast_half_life > 0`; off by default,
//! it did not win on the validation origins: BENCHMARKS.md "Regime-change
//! guard and the seasonal median"). The long-run error (half-life 168 windows) is what chooses well
//! on a steady key, but after a change it keeps a candidate that used to
//! be good for days. The guard does not replace it; it only rules
//! candidates out: one whose fast error is above `choice.guard_ratio`
//! times the best fast error (of the candidates that may serve) is not
//! switched to (admitting takes the margin below the ratio, so a
//! candidate at the threshold does not flap), and the serving one is
//! replaced at once when it is that far behind, by `choice.guard_to` if
//! set and not ruled out, else by the remaining candidate with the lowest
//! long-run error. Why this rule and not "serve the best fast error": that
//! is plain selection with a short half-life, which chases noise on spiky
//! keys (half-life 48 lost to 168 on validation); the ratio makes the
//! guard act only on a gap a regime change makes, and the long-run error
//! still picks among the candidates left. Cost: one more multiply-add per
//! candidate and scored step, and one pass over the candidates per window.
//!
//! A forecast served by another candidate says so (`source = "naive"`,
//! `"ses_sa"`, `"median"`, ...); its quantiles, if any, are its point
//! forecast, and the live calibration (see `score`) gives it a band from
//! its own errors. Candidates are scored whether they serve or not (shadow
//! forecasts), so a key moves back to the network when the network gets
//! better.
//!
//! Invariants: windows are taken in close order, a key's actual is scored
//! before its new forecasts are registered; several windows of a key in
//! one batch are chosen as if they came one batch each (test
//! `one_batch_of_many_windows_equals_one_window_per_batch`); the network's
//! own forecast is passed through unchanged while it serves. Memory per
//! key: the recent values (8 bytes each), `horizon` pending forecasts of
//! `candidates x 2` f32 values (`candidates x horizon` when every step is
//! scored) plus 8 bytes, an error and a weight per
//! candidate (two of each with the guard), and per classical candidate its last fit
//! (`horizon + refit_every - 1` f64); ~0.7 KB with the four cheap
//! candidates at season 24, horizon 12, ~3 KB with two classical
//! candidates and the default 288 values. With durable state it is
//! checkpointed with the key's model state (`export` / `import`): a
//! restored key keeps its values, candidate and errors (the guard's fast
//! ones too; a record from before the guard restores with them empty and
//! the guard waits for new scores), and refits its classical candidates
//! at its next window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt32Type};
use rayon::prelude::*;

use crate::baselines;
use crate::schema::{f64_list_like, f64_list_values, forecasts as fc, windows as wc};
use crate::state::ChoiceKeyState;

/// A forecaster a key may be served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// The forecast stage's output (the network, or its warm-up baseline).
    Network,
    Naive,
    SeasonalNaive,
    /// The step-wise median of the values one, two and three seasons
    /// before each step (of those the key has): a seasonal naive forecast
    /// that does not repeat a one-off spike or a shifted peak a day later.
    SeasonalMedian,
    Ses,
    /// The step-wise median of the other candidates' forecasts that are
    /// available at this origin (the network's included; `weighted` not).
    Median,
    /// The step-wise mean of the other candidates' forecasts (neither
    /// `median` nor itself), weighted by the inverse of each one's recent
    /// error on the key to the power `choice.weight_power`; equal weights
    /// until one of them has been scored. A combination, not a selection:
    /// it moves towards the candidates that have done well without
    /// dropping the others, so one lucky window does not decide.
    Weighted,
    /// A classical forecaster of `baselines::named` (`ses_sa`, `damped_sa`,
    /// `theta`-like smoothers, `arima`, `prophet`, `rf`, ...), refitted on
    /// the key's last `choice.history` window values every
    /// `choice.refit_every` windows.
    Classical(&'static str),
}

impl Candidate {
    /// The candidates the chooser computes itself, incrementally.
    pub const BUILTIN: [Candidate; 7] = [
        Candidate::Network,
        Candidate::Naive,
        Candidate::SeasonalNaive,
        Candidate::SeasonalMedian,
        Candidate::Ses,
        Candidate::Median,
        Candidate::Weighted,
    ];

    /// The name in pipeline files and in a served forecast's `source`.
    pub fn name(self) -> &'static str {
        match self {
            Candidate::Network => "network",
            Candidate::Naive => "naive",
            Candidate::SeasonalNaive => "snaive",
            Candidate::SeasonalMedian => "smedian",
            Candidate::Ses => "ses",
            Candidate::Median => "median",
            Candidate::Weighted => "weighted",
            Candidate::Classical(name) => name,
        }
    }

    /// A built-in name first (`naive`, `snaive` and `ses` are the cheap
    /// incremental ones), else any name of `baselines::NAMES`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::BUILTIN
            .into_iter()
            .find(|c| c.name() == s)
            .or_else(|| {
                baselines::NAMES
                    .iter()
                    .find(|n| **n == s)
                    .map(|n| Candidate::Classical(n))
            })
    }
}

/// Settings (from `[choice]`).
#[derive(Debug, Clone)]
pub struct ChoiceSpec {
    pub candidates: Vec<Candidate>,
    pub half_life: f64,
    pub margin: f64,
    pub min_scored: u32,
    pub ses_alpha: f64,
    /// Window values kept per key for the classical candidates (0: the
    /// default, see [`Chooser::new`]).
    pub history: usize,
    /// Windows between two fits of a key's classical candidates.
    pub refit_every: usize,
    /// The candidate a new key is served by until another one has been
    /// better by `margin` on `min_scored` scored windows.
    pub start: Candidate,
    /// The `weighted` candidate's weights: inverse recent error to this
    /// power (0: the plain mean).
    pub weight_power: f64,
    /// The candidates that may serve a key (empty: all). The others are
    /// still scored and feed `median` / `weighted`.
    pub serve: Vec<Candidate>,
    /// Score every step of the horizon (the pooled H-step MASE averages
    /// them) instead of the first and the last; the half-life stays in
    /// scored windows.
    pub score_all_steps: bool,
    /// The regime-change guard's fast error half-life, in scored windows
    /// (0: no guard).
    pub fast_half_life: f64,
    /// A candidate whose fast error is above this many times the best
    /// fast error is ruled out (the serving one is replaced at once).
    pub guard_ratio: f64,
    /// Where the guard sends a key when it is not ruled out itself (None:
    /// the candidate with the lowest long-run error among those left).
    pub guard_to: Option<Candidate>,
}

impl ChoiceSpec {
    /// The chooser's settings (candidate names validated with the config).
    pub fn from_config(c: &crate::config::ChoiceConfig) -> Self {
        ChoiceSpec {
            candidates: c
                .candidates
                .iter()
                .filter_map(|c| Candidate::parse(c))
                .collect(),
            half_life: c.half_life,
            margin: c.margin,
            min_scored: c.min_scored,
            ses_alpha: c.ses_alpha,
            history: c.history,
            refit_every: c.refit_every,
            start: Candidate::parse(&c.start).unwrap_or(Candidate::Network),
            weight_power: c.weight_power,
            serve: c.serve.iter().filter_map(|c| Candidate::parse(c)).collect(),
            score_all_steps: c.score_all_steps,
            fast_half_life: c.fast_half_life,
            guard_ratio: c.guard_ratio,
            guard_to: Candidate::parse(&c.guard_to),
        }
    }
}

/// A key's last fit of one classical candidate, made at window end
/// `origin`: the parameters (forecasters with reusable parameters), or
/// `horizon + refit_every - 1` forecast values (the others); or the index
/// of the refit job making it in the current batch.
#[derive(Debug, Clone)]
enum Fit {
    Params(i64, Arc<[f64]>),
    Forecast(i64, Arc<[f64]>),
    Job(i64, usize),
}

impl Fit {
    fn origin(&self) -> i64 {
        match self {
            Fit::Params(o, _) | Fit::Forecast(o, _) | Fit::Job(o, _) => *o,
        }
    }
}

#[derive(Debug, Default)]
struct KeyChoice {
    /// The last `history` window values, oldest first.
    recent: VecDeque<f64>,
    level: Option<f64>,
    /// Per candidate: its last fit (classical candidates only).
    fits: Vec<Option<Fit>>,
    /// Pending forecasts: origin window end, and per candidate the values
    /// at the scored steps (candidate-major; NaN = unavailable).
    pending: VecDeque<(i64, Vec<f32>)>,
    /// Weighted mean absolute error per candidate, and its weight.
    err: Vec<f64>,
    weight: Vec<f64>,
    /// The same with the guard's fast half-life (empty without the guard).
    fast_err: Vec<f64>,
    fast_weight: Vec<f64>,
    scored: u32,
    serving: usize,
}

/// Where a row's classical forecast comes from: a refit job of this batch,
/// a forecast job (kept parameters on the newest values), or an earlier
/// forecast, each with how many windows after its origin the row is.
enum FitRef {
    None,
    Refit(usize, usize),
    Forecast(usize),
    Done(Arc<[f64]>, usize),
}

/// A refit job's parameters (empty for forecasters that keep none) and
/// forecast (`horizon` values, or `horizon + refit_every - 1` without
/// parameters).
type Refitted = (Arc<[f64]>, Arc<[f64]>);

/// Parameters for a forecast job: kept, or from a refit job of this batch.
enum ParamsRef {
    Done(Arc<[f64]>),
    Refit(usize),
}

/// The per-key chooser (on the compute thread, after the forecast stage).
pub struct Chooser {
    spec: ChoiceSpec,
    slide_ms: i64,
    horizon: usize,
    season: usize,
    /// Window values kept per key (>= `season`).
    history: usize,
    /// The classical candidates' forecasters, by candidate index, and
    /// whether each keeps its parameters apart (refits them every
    /// `refit_every` windows, forecasts from the newest values at every
    /// window) or not (refits and forecasts every `refit_every` windows).
    fitters: Vec<Option<Box<dyn baselines::Baseline + Send + Sync>>>,
    reusable: Vec<bool>,
    /// 1-based horizon steps the candidates are scored at.
    steps: Vec<usize>,
    decay: f64,
    /// The guard's decay per scored step (None: no guard).
    fast_decay: Option<f64>,
    /// The guard's target's candidate index.
    guard_to: Option<usize>,
    /// Per candidate: whether it may serve (`choice.serve`).
    may_serve: Vec<bool>,
    keys: HashMap<Arc<str>, KeyChoice>,
}

impl Chooser {
    /// With classical candidates a key keeps `spec.history` window values,
    /// by default 12 seasons (288 hourly windows, 2.3 KB per key): the M4
    /// seasonality test that `ses_sa` / `damped_sa` apply needs
    /// `10 log10(n) >= season`, i.e. n >= 251 for a daily season of 24.
    pub fn new(spec: ChoiceSpec, slide_ms: i64, horizon: usize, season: usize) -> Self {
        let mut steps = if spec.score_all_steps {
            (1..=horizon.max(1)).collect()
        } else {
            vec![1, horizon.max(1)]
        };
        steps.dedup();
        // The error means decay once per scored step; with more than two
        // steps a window adds `steps / 2` times as many, so the decay per
        // step is milder and the half-life stays in windows.
        let per_window = steps.len().max(2) as f64 / 2.0;
        let decay = 0.5f64.powf(1.0 / (spec.half_life.max(1.0) * per_window));
        let fast_decay = (spec.fast_half_life > 0.0)
            .then(|| 0.5f64.powf(1.0 / (spec.fast_half_life.max(1.0) * per_window)));
        let guard_to = spec
            .guard_to
            .and_then(|g| spec.candidates.iter().position(|c| *c == g));
        let may_serve = spec
            .candidates
            .iter()
            .map(|c| spec.serve.is_empty() || spec.serve.contains(c))
            .collect();
        let season = season.max(1);
        let fitters: Vec<_> = spec
            .candidates
            .iter()
            .map(|c| match c {
                Candidate::Classical(name) => baselines::named(name, season),
                _ => None,
            })
            .collect();
        let reusable = fitters
            .iter()
            .map(|f| f.as_ref().is_some_and(|f| f.reusable_params()))
            .collect();
        let history = match (fitters.iter().any(Option::is_some), spec.history) {
            (false, _) => season,
            (true, 0) => 12 * season,
            (true, n) => n.max(season),
        };
        let history = if spec.candidates.contains(&Candidate::SeasonalMedian) {
            history.max(3 * season)
        } else {
            history
        };
        Chooser {
            spec,
            slide_ms,
            horizon: horizon.max(1),
            season,
            history,
            fitters,
            reusable,
            steps,
            decay,
            fast_decay,
            guard_to,
            may_serve,
            keys: HashMap::new(),
        }
    }

    /// Scores the candidates on the closed `windows`, then serves each row
    /// of `forecasts` (one per window row, as the forecast stage makes
    /// them) by its key's candidate. Returns the forecasts to publish.
    ///
    /// Three passes: (1) per row in order, the keys' value rings and the
    /// cheap candidates, and a fit job for each classical candidate whose
    /// last fit is `refit_every` windows old; (2) the fit jobs, in
    /// parallel (rayon; per-series fits are independent); (3) per row in
    /// order, scoring, the median, the choice and the pending forecasts.
    pub fn choose(&mut self, windows: &RecordBatch, forecasts: RecordBatch) -> RecordBatch {
        let n = windows.num_rows();
        if n == 0 || forecasts.num_rows() != n {
            return forecasts;
        }
        let keys = windows.column(wc::KEY).as_string::<i32>();
        let ends = windows
            .column(wc::WINDOW_END)
            .as_primitive::<TimestampMillisecondType>();
        let counts = windows.column(wc::COUNT).as_primitive::<UInt32Type>();
        let values = windows.column(wc::FIRST_AGG).as_primitive::<Float64Type>();
        let f_keys = forecasts.column(fc::KEY).as_string::<i32>();
        let h = self.horizon;
        let Some(point) = f64_list_values(&forecasts, fc::FORECAST).map(<[f64]>::to_vec) else {
            return forecasts;
        };
        if point.len() != n * h {
            return forecasts;
        }
        let mut out = point;
        let sources = forecasts.column(fc::SOURCE).as_string::<i32>();
        let nc = self.spec.candidates.len();
        // Keys start on `choice.start` (the network unless set).
        let start = self
            .spec
            .candidates
            .iter()
            .position(|c| *c == self.spec.start)
            .or_else(|| {
                self.spec
                    .candidates
                    .iter()
                    .position(|c| *c == Candidate::Network)
            })
            .unwrap_or(0);
        let refit_every = self.spec.refit_every.max(1);
        let fit_len = h + refit_every - 1;

        // (1) Value rings, cheap candidates, fit jobs.
        let mut cand = vec![f64::NAN; n * nc * h];
        let mut refs: Vec<FitRef> = Vec::new();
        // Refit jobs (recent values, candidate, row) and forecast jobs with
        // kept parameters (recent values, candidate, parameters).
        let mut refits: Vec<(Vec<f64>, usize, usize)> = Vec::new();
        let mut forecast_jobs: Vec<(Vec<f64>, usize, ParamsRef)> = Vec::new();
        for i in 0..n {
            let key = keys.value(i);
            if f_keys.value(i) != key {
                continue; // not the same row order: leave the forecast alone
            }
            // A key's `Arc` is made once, when it is first seen.
            if !self.keys.contains_key(key) {
                let nf = if self.fast_decay.is_some() { nc } else { 0 };
                let fresh = KeyChoice {
                    err: vec![0.0; nc],
                    weight: vec![0.0; nc],
                    fast_err: vec![0.0; nf],
                    fast_weight: vec![0.0; nf],
                    fits: vec![None; nc],
                    serving: start,
                    ..KeyChoice::default()
                };
                self.keys.insert(Arc::from(key), fresh);
            }
            let Some(st) = self.keys.get_mut(key) else {
                continue;
            };
            let end = ends.value(i);
            let v = (values.is_valid(i) && values.value(i).is_finite()).then(|| values.value(i));
            if let Some(v) = v {
                if st.recent.len() == self.history {
                    st.recent.pop_front();
                }
                st.recent.push_back(v);
                let a = self.spec.ses_alpha;
                st.level = Some(st.level.map_or(v, |l| a * v + (1.0 - a) * l));
            }
            let row = &mut cand[i * nc * h..(i + 1) * nc * h];
            for (c, which) in self.spec.candidates.iter().enumerate() {
                let row = &mut row[c * h..(c + 1) * h];
                match which {
                    Candidate::Naive => {
                        if let Some(&last) = st.recent.back() {
                            row.fill(last);
                        }
                    }
                    Candidate::SeasonalNaive => {
                        let len = st.recent.len();
                        if len >= self.season {
                            let base = len - self.season;
                            for (j, x) in row.iter_mut().enumerate() {
                                *x = st.recent[base + j % self.season];
                            }
                        }
                    }
                    Candidate::SeasonalMedian => {
                        let len = st.recent.len();
                        let seasons = (len / self.season).min(3);
                        for (j, x) in row.iter_mut().enumerate().take(h) {
                            let k = j % self.season;
                            let at = |s: usize| st.recent[len - s * self.season + k];
                            *x = match seasons {
                                0 => f64::NAN,
                                1 => at(1),
                                2 => 0.5 * (at(1) + at(2)),
                                _ => {
                                    let (a, b, c) = (at(1), at(2), at(3));
                                    a.max(b).min(a.min(b).max(c))
                                }
                            };
                        }
                    }
                    Candidate::Ses => {
                        if let Some(l) = st.level {
                            row.fill(l);
                        }
                    }
                    Candidate::Classical(_) => {
                        let age = |o: i64| ((end - o) / self.slide_ms.max(1)) as usize;
                        let fresh = st.fits[c]
                            .as_ref()
                            .is_some_and(|f| end >= f.origin() && age(f.origin()) < refit_every);
                        let r = if st.recent.is_empty() {
                            FitRef::None
                        } else if !fresh {
                            refits.push((st.recent.iter().copied().collect(), c, i));
                            let j = refits.len() - 1;
                            st.fits[c] = Some(Fit::Job(end, j));
                            FitRef::Refit(j, 0)
                        } else {
                            match &st.fits[c] {
                                Some(Fit::Forecast(o, f)) => FitRef::Done(f.clone(), age(*o)),
                                Some(Fit::Job(o, j)) if !self.reusable[c] => {
                                    FitRef::Refit(*j, age(*o))
                                }
                                Some(Fit::Job(_, j)) => {
                                    let p = ParamsRef::Refit(*j);
                                    forecast_jobs.push((st.recent.iter().copied().collect(), c, p));
                                    FitRef::Forecast(forecast_jobs.len() - 1)
                                }
                                Some(Fit::Params(_, p)) => {
                                    let p = ParamsRef::Done(p.clone());
                                    forecast_jobs.push((st.recent.iter().copied().collect(), c, p));
                                    FitRef::Forecast(forecast_jobs.len() - 1)
                                }
                                None => FitRef::None,
                            }
                        };
                        refs.push(r);
                    }
                    Candidate::Network | Candidate::Median | Candidate::Weighted => {}
                }
            }
        }

        // (2) The fits: refits first (their parameters feed the forecast
        // jobs of later windows in this batch), then the forecasts.
        let fitters = &self.fitters;
        let reusable = &self.reusable;
        let refitted: Vec<Refitted> = refits
            .par_iter()
            .map(|(history, c, _)| match &fitters[*c] {
                Some(f) if reusable[*c] => {
                    let p = f.fit_params(history);
                    let out = f.forecast_with(&p, history, h);
                    (Arc::from(p), Arc::from(out))
                }
                Some(f) => (
                    Arc::from(Vec::new()),
                    Arc::from(f.forecast(history, fit_len)),
                ),
                None => (Arc::from(Vec::new()), Arc::from(vec![f64::NAN; fit_len])),
            })
            .collect();
        let forecast: Vec<Vec<f64>> = forecast_jobs
            .par_iter()
            .map(|(history, c, p)| {
                let p = match p {
                    ParamsRef::Done(p) => p,
                    ParamsRef::Refit(j) => &refitted[*j].0,
                };
                match &fitters[*c] {
                    Some(f) => f.forecast_with(p, history, h),
                    None => vec![f64::NAN; h],
                }
            })
            .collect();
        for (j, (_, c, i)) in refits.iter().enumerate() {
            if let Some(st) = self.keys.get_mut(keys.value(*i)) {
                if let Some(Fit::Job(o, jj)) = st.fits[*c] {
                    if jj == j {
                        let (p, f) = &refitted[j];
                        st.fits[*c] = Some(if self.reusable[*c] {
                            Fit::Params(o, p.clone())
                        } else {
                            Fit::Forecast(o, f.clone())
                        });
                    }
                }
            }
        }

        // (3) Scoring, the median, the choice.
        let mut out_sources: Vec<String> = (0..n).map(|i| sources.value(i).to_string()).collect();
        let mut served_by_baseline = vec![false; n];
        let mut refs = refs.into_iter();
        let mut column = Vec::with_capacity(nc);
        for i in 0..n {
            let key = keys.value(i);
            if f_keys.value(i) != key {
                continue;
            }
            let Some(st) = self.keys.get_mut(key) else {
                continue;
            };
            let end = ends.value(i);
            let v = (values.is_valid(i) && values.value(i).is_finite()).then(|| values.value(i));
            if let Some(y) = v.filter(|_| counts.value(i) > 0) {
                score(
                    st,
                    &self.steps,
                    self.slide_ms,
                    (self.decay, self.fast_decay),
                    end,
                    y,
                );
            }
            // Forecasts from each origin are done once no step is left.
            let last = self.steps.last().copied().unwrap_or(1) as i64;
            while st
                .pending
                .front()
                .is_some_and(|(o, _)| end - o >= last * self.slide_ms)
            {
                st.pending.pop_front();
            }
            let row = &mut cand[i * nc * h..(i + 1) * nc * h];
            let mut median = None;
            let mut weighted = None;
            for (c, which) in self.spec.candidates.iter().enumerate() {
                let dst = &mut row[c * h..(c + 1) * h];
                match which {
                    Candidate::Network => dst.copy_from_slice(&out[i * h..(i + 1) * h]),
                    Candidate::Classical(_) => {
                        let r = refs.next();
                        let made = match &r {
                            Some(FitRef::Done(f, k)) => f.get(*k..*k + h),
                            Some(FitRef::Refit(j, k)) => refitted[*j].1.get(*k..*k + h),
                            Some(FitRef::Forecast(j)) => forecast.get(*j).map(Vec::as_slice),
                            _ => None,
                        };
                        if let Some(f) = made.filter(|f| f.len() == h) {
                            dst.copy_from_slice(f);
                        }
                    }
                    Candidate::Median => median = Some(c),
                    Candidate::Weighted => weighted = Some(c),
                    _ => {}
                }
            }
            if let Some(m) = median {
                for j in 0..h {
                    column.clear();
                    column.extend(
                        (0..nc)
                            .filter(|&c| c != m && Some(c) != weighted)
                            .map(|c| row[c * h + j])
                            .filter(|x| x.is_finite()),
                    );
                    row[m * h + j] = median_of(&mut column);
                }
            }
            if let Some(wc) = weighted {
                weigh(st, row, h, wc, median, self.spec.weight_power);
            }
            // The serving candidate changes with hysteresis.
            if st.scored >= self.spec.min_scored {
                let guard = self.fast_decay.is_some();
                st.serving = next_serving(&self.spec, &self.may_serve, guard, self.guard_to, st);
            }
            let serving = st.serving;
            let served = &row[serving * h..(serving + 1) * h];
            if self.spec.candidates[serving] != Candidate::Network
                && served.iter().all(|x| x.is_finite())
            {
                out[i * h..(i + 1) * h].copy_from_slice(served);
                out_sources[i] = self.spec.candidates[serving].name().to_string();
                served_by_baseline[i] = true;
            }
            let at_steps: Vec<f32> = (0..nc)
                .flat_map(|c| self.steps.iter().map(move |&s| (c, s)))
                .map(|(c, s)| row[c * h + s - 1] as f32)
                .collect();
            st.pending.push_back((end, at_steps));
        }
        if !served_by_baseline.iter().any(|&b| b) {
            return forecasts;
        }
        replace(forecasts, out, out_sources, &served_by_baseline, h)
    }

    /// A key's series ended (gap, TTL, eviction, revocation): forget it.
    pub fn end_keys(&mut self, keys: &[Arc<str>]) {
        for k in keys {
            self.keys.remove(k);
        }
    }

    /// `key`'s state for a checkpoint (none when the key has none). The
    /// classical candidates' last fits are not written: a restored key
    /// refits at its next window (the same forecasts with `refit_every =
    /// 1`, the default).
    pub fn export(&self, key: &str) -> Option<ChoiceKeyState> {
        let st = self.keys.get(key)?;
        Some(ChoiceKeyState {
            recent: st.recent.iter().copied().collect(),
            level: st.level,
            pending: st.pending.iter().cloned().collect(),
            err: st.err.clone(),
            weight: st.weight.clone(),
            fast_err: st.fast_err.clone(),
            fast_weight: st.fast_weight.clone(),
            scored: st.scored,
            serving: self
                .spec
                .candidates
                .get(st.serving)
                .map_or("network", |c| c.name())
                .to_string(),
        })
    }

    /// Takes a restored key state in; one written with other candidates is
    /// dropped (the key starts on the network again). Fast errors that do
    /// not fit (a record from before the guard, or written with it off)
    /// start from nothing: the guard waits for new scores.
    pub fn import(&mut self, key: Arc<str>, s: &ChoiceKeyState) {
        let nc = self.spec.candidates.len();
        let w = self.steps.len();
        let serving = Candidate::parse(&s.serving)
            .and_then(|c| self.spec.candidates.iter().position(|x| *x == c));
        let fits = s.err.len() == nc
            && s.weight.len() == nc
            && s.pending.iter().all(|(_, v)| v.len() == nc * w);
        let (true, Some(serving)) = (fits, serving) else {
            return;
        };
        let skip = s.recent.len().saturating_sub(self.history);
        let nf = if self.fast_decay.is_some() { nc } else { 0 };
        let (fast_err, fast_weight) = if s.fast_err.len() == nf && s.fast_weight.len() == nf {
            (s.fast_err.clone(), s.fast_weight.clone())
        } else {
            (vec![0.0; nf], vec![0.0; nf])
        };
        self.keys.insert(
            key,
            KeyChoice {
                recent: s.recent.iter().copied().skip(skip).collect(),
                level: s.level,
                fits: vec![None; nc],
                pending: s.pending.iter().cloned().collect(),
                err: s.err.clone(),
                weight: s.weight.clone(),
                fast_err,
                fast_weight,
                scored: s.scored,
                serving,
            },
        );
    }

    /// The candidate serving `key`, if it is known.
    pub fn serving(&self, key: &str) -> Option<Candidate> {
        self.keys
            .get(key)
            .and_then(|st| self.spec.candidates.get(st.serving).copied())
    }
}

/// The median of `xs` (NaN when empty); reorders `xs`.
fn median_of(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        0.5 * (xs[m - 1] + xs[m])
    }
}

/// A candidate's weighted mean error (infinite before its first score).
fn mean(st: &KeyChoice, c: usize) -> f64 {
    if st.weight[c] > 0.0 {
        st.err[c] / st.weight[c]
    } else {
        f64::INFINITY
    }
}

/// The candidate to serve `st` from now on. Without the guard: the one
/// with the lowest long-run error if it is below the serving one's by
/// more than `margin`. With it, only candidates whose fast error is
/// within `guard_ratio x (1 - margin)` of the best fast error may be
/// switched to, and a serving candidate whose fast error is above
/// `guard_ratio` times the best is replaced whatever its long-run
/// error: by `guard_to` when that one may be switched to, else by the
/// allowed candidate with the lowest long-run error.
fn next_serving(
    spec: &ChoiceSpec,
    may_serve: &[bool],
    guard: bool,
    guard_to: Option<usize>,
    st: &KeyChoice,
) -> usize {
    let nc = st.err.len();
    let serving = st.serving;
    let margin = spec.margin;
    // The best fast error of the candidates that may serve (infinite
    // without the guard or before any is scored: no guard then).
    let best_fast = match guard {
        true if st.fast_err.len() == nc => (0..nc)
            .filter(|&c| may_serve[c])
            .map(|c| fast_mean(st, c))
            .fold(f64::INFINITY, f64::min),
        _ => f64::INFINITY,
    };
    let guarded = best_fast.is_finite();
    let ratio = spec.guard_ratio;
    let failing = guarded && fast_mean(st, serving) > ratio * best_fast;
    // Admitting takes a margin below the ratio that rules out, so a
    // candidate at the threshold does not go back and forth.
    let admit = (ratio * (1.0 - margin)).max(1.0) * best_fast;
    let allowed = |c: usize| may_serve[c] && (!guarded || fast_mean(st, c) <= admit);
    if failing {
        if let Some(g) = guard_to.filter(|&g| g != serving && allowed(g)) {
            return g;
        }
    }
    let best = (0..nc)
        .filter(|&c| st.weight[c] > 0.0 && allowed(c))
        .min_by(|&a, &b| mean(st, a).total_cmp(&mean(st, b)));
    match best {
        Some(b) if failing || mean(st, b) < (1.0 - margin) * mean(st, serving) => b,
        _ => serving,
    }
}

/// A candidate's fast (guard) mean error (infinite before its first score
/// or without the guard).
fn fast_mean(st: &KeyChoice, c: usize) -> f64 {
    match (st.fast_err.get(c), st.fast_weight.get(c)) {
        (Some(&e), Some(&w)) if w > 0.0 => e / w,
        _ => f64::INFINITY,
    }
}

/// The `weighted` candidate (index `wc`) of one row (`candidates x h`
/// values): per step, the mean of the other finite forecasts (not the
/// median's), weighted by `mean error ^ -power`. Candidates not yet scored
/// are left out once any is scored (their error is unknown, not zero);
/// before that all count equally. A zero error is floored at a millionth
/// of the largest, so a perfect candidate dominates without dividing by 0.
fn weigh(st: &KeyChoice, row: &mut [f64], h: usize, wc: usize, median: Option<usize>, power: f64) {
    let nc = st.err.len();
    let members = || (0..nc).filter(|&c| c != wc && Some(c) != median);
    let errs: Vec<f64> = members().map(|c| mean(st, c)).collect();
    let any_scored = errs.iter().any(|e| e.is_finite());
    let top = errs
        .iter()
        .copied()
        .filter(|e| e.is_finite())
        .fold(0.0f64, f64::max);
    let floor = (top * 1e-6).max(f64::MIN_POSITIVE);
    let weights: Vec<f64> = errs
        .iter()
        .map(|&e| match (any_scored, e.is_finite()) {
            (false, _) => 1.0,
            (true, false) => 0.0,
            (true, true) => e.max(floor).powf(-power),
        })
        .collect();
    for j in 0..h {
        let (mut sum, mut total) = (0.0, 0.0);
        for (k, c) in members().enumerate() {
            let x = row[c * h + j];
            if x.is_finite() && weights[k] > 0.0 {
                sum += weights[k] * x;
                total += weights[k];
            }
        }
        row[wc * h + j] = if total > 0.0 { sum / total } else { f64::NAN };
    }
}

/// Scores every candidate's pending forecasts for the window ending `end`
/// into the long-run error means (`decay.0`) and, with the guard, the fast
/// ones (`decay.1`).
fn score(
    st: &mut KeyChoice,
    steps: &[usize],
    slide: i64,
    decay: (f64, Option<f64>),
    end: i64,
    y: f64,
) {
    let (decay, fast) = decay;
    let fast = fast.filter(|_| st.fast_err.len() == st.err.len());
    let w = steps.len();
    let nc = st.err.len();
    let mut any = false;
    for (origin, vals) in &st.pending {
        let ahead = end - origin;
        if ahead <= 0 || ahead % slide != 0 {
            continue;
        }
        let Ok(s) = steps.binary_search(&((ahead / slide) as usize)) else {
            continue;
        };
        any = true;
        for c in 0..nc {
            let f = f64::from(vals[c * w + s]);
            if f.is_finite() {
                let e = (y - f).abs();
                st.err[c] = decay * st.err[c] + e;
                st.weight[c] = decay * st.weight[c] + 1.0;
                if let Some(d) = fast {
                    st.fast_err[c] = d * st.fast_err[c] + e;
                    st.fast_weight[c] = d * st.fast_weight[c] + 1.0;
                }
            }
        }
    }
    if any {
        st.scored += 1;
    }
}

/// `batch` with new point forecasts and sources; the quantiles of rows
/// served by a baseline become its point forecast.
fn replace(
    batch: RecordBatch,
    point: Vec<f64>,
    sources: Vec<String>,
    by_baseline: &[bool],
    h: usize,
) -> RecordBatch {
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    let quantiles = batch.schema().index_of(fc::QUANTILES_NAME).ok();
    if let Some(ix) = quantiles {
        let Some(q) = f64_list_values(&batch, ix).map(<[f64]>::to_vec) else {
            return batch;
        };
        let n = by_baseline.len();
        let nq = q.len() / (n * h).max(1);
        let mut q = q;
        for (i, _) in by_baseline.iter().enumerate().filter(|(_, b)| **b) {
            for k in 0..nq {
                let at = i * h * nq + k * h;
                q[at..at + h].copy_from_slice(&point[i * h..(i + 1) * h]);
            }
        }
        match f64_list_like(&cols[ix], q, h * nq) {
            Some(a) => cols[ix] = a,
            None => return batch,
        }
    }
    match f64_list_like(&cols[fc::FORECAST], point, h) {
        Some(a) => cols[fc::FORECAST] = a,
        None => return batch,
    }
    cols[fc::SOURCE] = Arc::new(StringArray::from(sources));
    RecordBatch::try_new(batch.schema(), cols).unwrap_or(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::forecasts_schema;
    use crate::window::WindowsBuilder;
    use arrow::array::{FixedSizeListBuilder, Float64Builder, TimestampMillisecondArray};

    const H: i64 = 3_600_000;

    fn spec(candidates: &[Candidate], margin: f64) -> ChoiceSpec {
        ChoiceSpec {
            candidates: candidates.to_vec(),
            half_life: 4.0,
            margin,
            min_scored: 3,
            ses_alpha: 0.5,
            history: 0,
            refit_every: 1,
            start: Candidate::Network,
            weight_power: 1.0,
            serve: Vec::new(),
            score_all_steps: false,
            fast_half_life: 0.0,
            guard_ratio: 2.0,
            guard_to: None,
        }
    }

    const FOUR: [Candidate; 4] = [
        Candidate::Network,
        Candidate::Naive,
        Candidate::SeasonalNaive,
        Candidate::Ses,
    ];

    /// Windows `(key, hour t, value y)` ending at hour `t`, and the
    /// network's forecasts `f` (horizon 2) made from them, as one batch.
    fn batch(c: &mut Chooser, rows: &[(&str, i64, f64, [f64; 2])]) -> Vec<(String, Vec<f64>)> {
        let ws = crate::window::WindowSpec::from_config(&crate::testkit::pipeline(
            "[model]\nhorizon = 2",
        ));
        let mut b = WindowsBuilder::with_schema(&ws, ws.windows_schema(), rows.len());
        for (k, t, y, _) in rows {
            b.push(k, t * H - H, 1, false, &[*y]);
        }
        let windows = b.finish();
        let item = Arc::new(arrow::datatypes::Field::new(
            "item",
            arrow::datatypes::DataType::Float64,
            true,
        ));
        let mut list = FixedSizeListBuilder::new(Float64Builder::new(), 2).with_field(item);
        for (_, _, _, f) in rows {
            list.values().append_slice(f);
            list.append(true);
        }
        let n = rows.len();
        let forecasts = RecordBatch::try_new(
            forecasts_schema(2, &[]),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(
                    TimestampMillisecondArray::from(
                        rows.iter().map(|r| r.1 * H).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(vec!["v1"; n])),
                Arc::new(StringArray::from(vec!["model"; n])),
                Arc::new(list.finish()),
            ],
        )
        .unwrap();
        let out = c.choose(&windows, forecasts);
        let point = f64_list_values(&out, fc::FORECAST).unwrap().to_vec();
        (0..n)
            .map(|i| {
                (
                    out.column(fc::SOURCE)
                        .as_string::<i32>()
                        .value(i)
                        .to_string(),
                    point[2 * i..2 * i + 2].to_vec(),
                )
            })
            .collect()
    }

    /// One window of key "k" ending at hour `t` with value `y`, and the
    /// network's forecast `f` (horizon 2) made from it.
    fn step(c: &mut Chooser, t: i64, y: f64, f: [f64; 2]) -> (String, Vec<f64>) {
        batch(c, &[("k", t, y, f)]).remove(0)
    }

    /// A noisy daily-seasonal series (season 4 windows here).
    fn series(t: i64) -> f64 {
        let s = [1.0, 3.0, 2.0, 5.0][(t % 4) as usize];
        10.0 + s + ((t * 7919) % 13) as f64 / 13.0
    }

    /// The config accepts exactly the candidates the chooser knows.
    #[test]
    fn candidate_names_match_the_config() {
        let names: Vec<&str> = Candidate::BUILTIN.iter().map(|c| c.name()).collect();
        assert_eq!(names, crate::config::CHOICE_BUILTIN);
        for n in crate::baselines::NAMES {
            assert_eq!(Candidate::parse(n).map(|c| c.name()), Some(*n));
        }
    }

    /// A flat series the network gets badly wrong moves to `naive` once
    /// enough windows are scored; when the series becomes a ramp the
    /// network forecasts exactly, the key moves back to the network.
    #[test]
    fn a_key_moves_to_the_candidate_with_the_lowest_recent_error_and_back() {
        let mut c = Chooser::new(spec(&FOUR, 0.1), H, 2, 2);
        let mut served = Vec::new();
        for t in 1..=10 {
            served.push(step(&mut c, t, 10.0, [0.0, 0.0]));
        }
        // Scores start at hour 2; at least 3 scored windows before a change.
        assert_eq!(served[2].0, "model", "too few scores at hour 3");
        assert_eq!(served[9], ("naive".to_string(), vec![10.0, 10.0]));
        assert_eq!(c.serving("k"), Some(Candidate::Naive));
        // A ramp of 5 per hour: the network forecasts it exactly, naive is
        // 5 and 10 off, snaive 10 and 10, ses more.
        let mut last = (String::new(), Vec::new());
        for t in 11..=40 {
            let y = 5.0 * t as f64;
            last = step(&mut c, t, y, [y + 5.0, y + 10.0]);
        }
        assert_eq!(last.0, "model");
        assert_eq!(last.1, vec![205.0, 210.0], "the network's own forecast");
    }

    /// Hysteresis: naive 4% better than the network does not take over
    /// with a 10% margin; 29% better does.
    #[test]
    fn a_close_candidate_does_not_take_over() {
        let run = |network: f64| {
            let mut c = Chooser::new(spec(&[Candidate::Network, Candidate::Naive], 0.1), H, 2, 2);
            let mut last = String::new();
            for t in 1..=60 {
                // 9.5, 10.5, ...: naive is off by 1 at step 1, 0 at step 2
                // (mean 0.5); a constant network forecast c in
                // [10.5, 11.5] is off by (c - 9.5 + c - 10.5) / 2 = c - 10.
                let y = if t % 2 == 0 { 10.5 } else { 9.5 };
                last = step(&mut c, t, y, [network, network]).0;
            }
            last
        };
        assert_eq!(run(10.52), "model", "naive 0.5 vs network 0.52");
        assert_eq!(run(10.7), "naive", "naive 0.5 vs network 0.7");
    }

    /// A classical candidate serves exactly what its forecaster makes from
    /// the key's last `history` values. With `refit_every = 3`, one that
    /// keeps its parameters (`holt`) forecasts from the newest values at
    /// every window with the parameters of its last fit; one that does not
    /// (`naive2`) serves the last fit's forecast further ahead.
    #[test]
    fn a_classical_candidate_serves_its_forecasters_fit_of_the_recent_values() {
        for name in ["holt", "naive2"] {
            let cands = [Candidate::Network, Candidate::parse(name).unwrap()];
            let f = crate::baselines::named(name, 4).unwrap();
            assert_eq!(f.reusable_params(), name == "holt");
            for refit in [1usize, 3] {
                let mut sp = spec(&cands, 0.1);
                sp.history = 6;
                sp.refit_every = refit;
                let mut c = Chooser::new(sp, H, 2, 4);
                let mut ys = Vec::new();
                // (origin hour, parameters, forecast) of the last fit.
                let mut fit: Option<(i64, Vec<f64>, Vec<f64>)> = None;
                for t in 1..=30 {
                    let y = series(t);
                    ys.push(y);
                    // The network is far off: the candidate serves after
                    // 3 scores.
                    let (src, served) = step(&mut c, t, y, [-100.0, -100.0]);
                    let recent = &ys[ys.len().saturating_sub(6)..];
                    if fit.as_ref().is_none_or(|(o, _, _)| t - o >= refit as i64) {
                        let p = f.fit_params(recent);
                        fit = Some((t, p, f.forecast(recent, 2 + refit - 1)));
                    }
                    let (o, p, old) = fit.as_ref().unwrap();
                    let want = if f.reusable_params() {
                        f.forecast_with(p, recent, 2)
                    } else {
                        let k = (t - o) as usize;
                        old[k..k + 2].to_vec()
                    };
                    if t > 5 {
                        assert_eq!(src, name, "hour {t}");
                        assert_eq!(served, want, "{name}, hour {t}, refit {refit}");
                    }
                }
            }
        }
    }

    /// `median` is the step-wise median of the other candidates (its
    /// pending values hold every step at horizon 2), and serves a key
    /// where it is best: a series alternating around a level, forecast
    /// too high by the network and too extreme by naive.
    #[test]
    fn the_median_candidate_is_the_median_of_the_others() {
        let cands = [
            Candidate::Network,
            Candidate::Naive,
            Candidate::Ses,
            Candidate::Median,
        ];
        let mut c = Chooser::new(spec(&cands, 0.0), H, 2, 2);
        let mut served = Vec::new();
        for t in 1..=40 {
            let y = if t % 2 == 0 { 12.0 } else { 8.0 };
            served.push(step(&mut c, t, y, [14.0, 14.0]).0);
            let (_, p) = c.keys["k"].pending.back().unwrap();
            for s in 0..2 {
                let mut others = [p[s], p[2 + s], p[4 + s]];
                others.sort_by(f32::total_cmp);
                assert_eq!(p[6 + s], others[1], "hour {t}, step {s}");
            }
        }
        assert_eq!(served.last().unwrap(), "median");
    }

    /// `weighted` is the mean of the other candidates (not the median)
    /// weighted by their recent error ^ -power, read back from the key's
    /// exported errors: the plain mean at power 0, and nearer the better
    /// candidate (naive, 1 off at every step) than the network (3 off)
    /// the larger the power.
    #[test]
    fn the_weighted_candidate_weighs_by_inverse_recent_error() {
        let cands = [
            Candidate::Network,
            Candidate::Naive,
            Candidate::Median,
            Candidate::Weighted,
        ];
        let mut at_last = Vec::new();
        for power in [0.0, 1.0, 2.0] {
            let mut sp = spec(&cands, 0.1);
            sp.weight_power = power;
            let mut c = Chooser::new(sp, H, 2, 2);
            for t in 1..=30 {
                // y = t: naive (t) is 1 and 2 off, the network (t + 4) 3 and 2.
                let y = t as f64;
                step(&mut c, t, y, [y + 4.0, y + 4.0]);
                let st = c.export("k").unwrap();
                let (_, p) = st.pending.last().unwrap();
                let m = |i: usize| st.err[i] / st.weight[i];
                let (wn, wv) = if st.weight[0] > 0.0 {
                    (m(0).powf(-power), m(1).powf(-power))
                } else {
                    (1.0, 1.0)
                };
                for s in 0..2 {
                    let want = (wn * f64::from(p[s]) + wv * f64::from(p[2 + s])) / (wn + wv);
                    assert!(
                        (f64::from(p[6 + s]) - want).abs() < 1e-3,
                        "power {power}, hour {t}, step {s}: {} vs {want}",
                        p[6 + s]
                    );
                }
                if t == 30 {
                    at_last.push(p[6]);
                }
            }
        }
        // y = 30: the network says 34, naive 30.
        assert_eq!(at_last[0], 32.0, "the plain mean");
        assert!(at_last[1] < 32.0 && at_last[2] < at_last[1], "{at_last:?}");
    }

    /// `start` serves a new key from its first window; a candidate left
    /// out of `serve` never serves even when it is best, but still feeds
    /// the median.
    #[test]
    fn start_and_serve_restrict_who_serves() {
        let cands = [
            Candidate::Network,
            Candidate::Naive,
            Candidate::Ses,
            Candidate::Median,
        ];
        let mut sp = spec(&cands, 0.0);
        sp.start = Candidate::Median;
        let mut c = Chooser::new(sp.clone(), H, 2, 2);
        assert_eq!(step(&mut c, 1, 10.0, [0.0, 0.0]).0, "median");
        // A flat series: naive, ses and the median are exact, the network
        // 10 off; ties go to the first candidate.
        sp.start = Candidate::Network;
        let run = |sp: ChoiceSpec| {
            let mut c = Chooser::new(sp, H, 2, 2);
            (1..=30)
                .map(|t| step(&mut c, t, 10.0, [0.0, 0.0]).0)
                .last()
                .unwrap()
        };
        assert_eq!(run(sp.clone()), "naive");
        sp.serve = vec![Candidate::Network, Candidate::Ses, Candidate::Median];
        assert_eq!(run(sp), "ses");
    }

    /// Several windows of a key in one batch (a backlog) are chosen as
    /// when they come one batch each; keys interleave.
    #[test]
    fn one_batch_of_many_windows_equals_one_window_per_batch() {
        let cands = [
            Candidate::Network,
            Candidate::Naive,
            Candidate::Classical("ses_sa"),
            Candidate::Classical("damped_sa"),
            Candidate::Median,
        ];
        let rows: Vec<(&str, i64, f64, [f64; 2])> = (1..=40)
            .flat_map(|t| {
                let y = series(t);
                [("a", t, y, [y + 2.0, y - 1.0]), ("b", t, 2.0 * y, [y, y])]
            })
            .collect();
        for refit in [1usize, 4] {
            let mut sp = spec(&cands, 0.05);
            sp.refit_every = refit;
            let mut one = Chooser::new(sp.clone(), H, 2, 4);
            let each: Vec<_> = rows
                .iter()
                .map(|r| batch(&mut one, &[*r]).remove(0))
                .collect();
            let mut all = Chooser::new(sp.clone(), H, 2, 4);
            let mut together = batch(&mut all, &rows[..30]);
            together.extend(batch(&mut all, &rows[30..]));
            assert_eq!(each, together, "refit {refit}");
            assert!(
                each.iter().any(|(s, _)| s != "model"),
                "some baseline serves"
            );
        }
    }

    /// A chooser restored from a key's exported state chooses as the
    /// original does from then on (`refit_every = 1`: the fits are redone).
    #[test]
    fn a_restored_key_chooses_as_the_original() {
        let cands = [
            Candidate::Network,
            Candidate::Classical("ses_sa"),
            Candidate::Median,
        ];
        let mut sp = spec(&cands, 0.05);
        sp.history = 20;
        let mut a = Chooser::new(sp.clone(), H, 2, 4);
        for t in 1..=30 {
            step(&mut a, t, series(t), [series(t) + 3.0, 0.0]);
        }
        let mut b = Chooser::new(sp, H, 2, 4);
        b.import(Arc::from("k"), &a.export("k").unwrap());
        for t in 31..=50 {
            let f = [series(t) + 3.0, 0.0];
            assert_eq!(
                step(&mut a, t, series(t), f),
                step(&mut b, t, series(t), f),
                "hour {t}"
            );
        }
    }

    /// A key served by `snaive` on an exactly seasonal series (snaive
    /// exact, naive ~2 off, the network 40 off) whose regime changes at
    /// hour 200 to a ramp of 5 per hour (snaive 20 off at both steps,
    /// naive 5 and 10). Returns the sources served from hour 190 on.
    fn regime_change(sp: ChoiceSpec) -> (Chooser, Vec<String>) {
        let mut c = Chooser::new(sp, H, 2, 4);
        let mut served = Vec::new();
        for t in 1..=260 {
            let y = regime_y(t);
            let s = step(&mut c, t, y, [50.0, 50.0]).0;
            if t >= 190 {
                served.push(s);
            }
        }
        (c, served)
    }

    fn regime_y(t: i64) -> f64 {
        if t <= 200 {
            10.0 + [1.0, 3.0, 2.0, 5.0][(t % 4) as usize]
        } else {
            10.0 + 5.0 * (t - 200) as f64
        }
    }

    fn guard_spec(fast_half_life: f64) -> ChoiceSpec {
        let mut sp = spec(
            &[
                Candidate::Network,
                Candidate::Naive,
                Candidate::SeasonalNaive,
                Candidate::Ses,
            ],
            0.1,
        );
        sp.half_life = 100.0;
        sp.fast_half_life = fast_half_life;
        sp
    }

    /// The guard moves the key off `snaive` within 8 windows of the
    /// change, and not back while the ramp lasts, though snaive's
    /// long-run error stays lower for ~20 windows; without the guard the
    /// key is still on snaive 8 windows after the change. Before the
    /// change both serve snaive: a steady key is left alone. With
    /// `guard_to` the guard sends the key there instead.
    #[test]
    fn the_guard_leaves_a_candidate_whose_regime_changed() {
        let at = |h: i64| (h - 190) as usize;
        let (_, without) = regime_change(guard_spec(0.0));
        let (_, with) = regime_change(guard_spec(3.0));
        for t in 190..=200 {
            assert_eq!(without[at(t)], "snaive", "hour {t}");
            assert_eq!(with[at(t)], "snaive", "hour {t}");
        }
        assert_eq!(without[at(208)], "snaive");
        let first = (201..=260).find(|&t| with[at(t)] != "snaive").unwrap();
        assert!(first <= 208, "the guard switched at hour {first}");
        // To the lowest long-run error of those left (ses: ~1.5 off
        // before the change, naive ~2), never back to snaive, and on to
        // naive once its long-run error is 10% below ses's.
        assert_eq!(with[at(first)], "ses");
        for t in first..=260 {
            assert_ne!(with[at(t)], "snaive", "hour {t}");
        }
        assert_eq!(with[at(260)], "naive");
        let mut sp = guard_spec(3.0);
        sp.guard_to = Some(Candidate::Naive);
        let (_, to_naive) = regime_change(sp);
        assert_eq!(to_naive[at(first)], "naive", "guard_to");
        // A ratio no candidate reaches leaves the key on snaive.
        let mut sp = guard_spec(3.0);
        sp.guard_ratio = 1e9;
        assert_eq!(regime_change(sp).1[at(208)], "snaive");
    }

    /// A key with the guard on, restored mid-change from its live record
    /// (through the changelog encoding), chooses as the original from then
    /// on and exports the same state; restored from a record without fast
    /// errors (written before the guard, or with it off) it keeps its
    /// candidate and long-run errors and starts the fast ones afresh.
    #[test]
    fn the_guards_fast_errors_survive_a_restore() {
        use crate::state::{decode_live, encode_live, LiveKeyState};
        let sp = guard_spec(3.0);
        let mut a = Chooser::new(sp.clone(), H, 2, 4);
        for t in 1..=202 {
            step(&mut a, t, regime_y(t), [50.0, 50.0]);
        }
        let st = a.export("k").unwrap();
        assert_eq!(st.fast_err.len(), 4);
        assert!(st.fast_weight.iter().all(|w| *w > 0.0));
        let live = LiveKeyState {
            score: None,
            choice: Some(st.clone()),
        };
        let back = decode_live(&encode_live(&live).unwrap())
            .unwrap()
            .choice
            .unwrap();
        assert_eq!(back, st);
        let mut b = Chooser::new(sp.clone(), H, 2, 4);
        b.import(Arc::from("k"), &back);
        // Without the fast errors.
        let mut old = back.clone();
        old.fast_err.clear();
        old.fast_weight.clear();
        let mut c = Chooser::new(sp.clone(), H, 2, 4);
        c.import(Arc::from("k"), &old);
        let cs = c.export("k").unwrap();
        assert_eq!(c.serving("k"), Some(Candidate::SeasonalNaive));
        assert_eq!((cs.err, cs.scored), (st.err.clone(), st.scored));
        assert_eq!(cs.fast_weight, vec![0.0; 4]);
        let mut switched = false;
        for t in 203..=240 {
            let y = regime_y(t);
            let sa = step(&mut a, t, y, [50.0, 50.0]);
            assert_eq!(sa, step(&mut b, t, y, [50.0, 50.0]), "hour {t}");
            switched |= sa.0 != "snaive";
            step(&mut c, t, y, [50.0, 50.0]);
        }
        assert!(switched, "the guard acted after the restore");
        assert_eq!(a.export("k"), b.export("k"));
        assert!(c.export("k").unwrap().fast_weight[0] > 0.0);
        // Without the guard a key writes no fast errors.
        let mut d = Chooser::new(guard_spec(0.0), H, 2, 4);
        d.import(Arc::from("k"), &back);
        let ds = d.export("k").unwrap();
        assert!(ds.fast_err.is_empty() && ds.fast_weight.is_empty());
    }

    /// `smedian` forecasts the median of the values one, two and three
    /// seasons before each step (fewer while the key has fewer whole
    /// seasons):
    /// a one-off spike is not repeated a season later, as `snaive` does.
    #[test]
    fn the_seasonal_median_does_not_repeat_a_one_off_spike() {
        let cands = [
            Candidate::Network,
            Candidate::SeasonalNaive,
            Candidate::SeasonalMedian,
        ];
        let mut c = Chooser::new(spec(&cands, 0.1), H, 2, 4);
        let mut ys = Vec::new();
        for t in 1..=24 {
            // Season 4, a spike of 100 at hour 14 only.
            let y = if t == 14 { 100.0 } else { series(t) };
            ys.push(y);
            step(&mut c, t, y, [0.0, 0.0]);
            let (_, p) = c.keys["k"].pending.back().unwrap();
            for (s, ahead) in [(0usize, 1usize), (1, 2)] {
                // Hour t + ahead: the values 4, 8, 12 hours before it.
                // As many seasons as the key has whole (at most 3).
                let back: Vec<f64> = (1..=(t / 4).min(3))
                    .map(|k| ys[(t + ahead as i64 - 4 * k) as usize - 1])
                    .collect();
                let mut sorted = back.clone();
                sorted.sort_by(f64::total_cmp);
                let want = match sorted.len() {
                    0 => f64::NAN,
                    1 => sorted[0],
                    2 => 0.5 * (sorted[0] + sorted[1]),
                    _ => sorted[1],
                };
                let got = f64::from(p[4 + s]);
                assert!(
                    (got - want).abs() < 1e-4 || (got.is_nan() && want.is_nan()),
                    "hour {t}, step {ahead}: {got} vs {want}"
                );
                if t + ahead as i64 == 18 {
                    assert_eq!(f64::from(p[2 + s]), 100.0, "snaive repeats the spike");
                    assert!(got < 20.0, "smedian does not: {got}");
                }
            }
        }
    }
}
