//! Per-key model choice: each key is served by whichever candidate has had
//! the lowest recent live error on it, the network or a cheap baseline.
//!
//! One global network is not the best forecaster for every key: on short,
//! spiky series a smoother or a naive forecast often wins (on the shared AWS
//! CloudWatch streams the network's 12-step MASE is 1.94, simple exponential
//! smoothing's 1.19). The chooser runs after the forecast stage, on the
//! closed-windows batch and the forecasts made from it, and keeps per key:
//! - the state of the baselines it computes itself from the key's window
//!   values (filled windows included, as the network sees them): `naive`
//!   (the last value), `snaive` (the value a season ago), `ses` (simple
//!   exponential smoothing, `alpha` fixed);
//! - every candidate's pending forecasts at the scored steps (the first and
//!   the last of the horizon), scored against real actuals as their
//!   windows close (filled windows are not actuals);
//! - an exponentially weighted mean of each candidate's absolute error
//!   (half-life `choice.half_life` scored windows);
//! - the candidate serving the key. It changes only when another one's
//!   error is below the serving one's by more than `choice.margin`
//!   (hysteresis, so a key does not flap between two close candidates), and
//!   not before `choice.min_scored` windows have been scored.
//!
//! A forecast served by a baseline says so (`source = "naive"`, `"snaive"`
//! or `"ses"`); its quantiles, if any, are its point forecast, and the
//! live calibration (see `score`) gives it a band from its own errors.
//! Candidates are scored whether they serve or not (shadow forecasts), so a
//! key moves back to the network when the network gets better.
//!
//! Invariants: windows are taken in close order, a key's actual is scored
//! before its new forecasts are registered; the network's own forecast is
//! passed through unchanged while it serves. Memory per key: `season` f64
//! values, `horizon` pending forecasts of `4 x 2` f32 values plus 8 bytes,
//! 4 errors and a few counters (~0.7 KB at season 24, horizon 12). With
//! durable state it is checkpointed with the key's model state (`export` /
//! `import`): a restored key keeps its candidate and errors.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt32Type};

use crate::schema::{f64_list_like, f64_list_values, forecasts as fc, windows as wc};
use crate::state::ChoiceKeyState;

/// A forecaster a key may be served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// The forecast stage's output (the network, or its warm-up baseline).
    Network,
    Naive,
    SeasonalNaive,
    Ses,
}

impl Candidate {
    pub const ALL: [Candidate; 4] = [
        Candidate::Network,
        Candidate::Naive,
        Candidate::SeasonalNaive,
        Candidate::Ses,
    ];

    /// The name in pipeline files and in a served forecast's `source`.
    pub fn name(self) -> &'static str {
        match self {
            Candidate::Network => "network",
            Candidate::Naive => "naive",
            Candidate::SeasonalNaive => "snaive",
            Candidate::Ses => "ses",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
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
        }
    }
}

#[derive(Debug, Default)]
struct KeyChoice {
    /// The last `season` window values, oldest first.
    recent: VecDeque<f64>,
    level: Option<f64>,
    /// Pending forecasts: origin window end, and per candidate the values
    /// at the scored steps (candidate-major; NaN = unavailable).
    pending: VecDeque<(i64, Vec<f32>)>,
    /// Weighted mean absolute error per candidate, and its weight.
    err: Vec<f64>,
    weight: Vec<f64>,
    scored: u32,
    serving: usize,
}

/// The per-key chooser (on the compute thread, after the forecast stage).
pub struct Chooser {
    spec: ChoiceSpec,
    slide_ms: i64,
    horizon: usize,
    season: usize,
    /// 1-based horizon steps the candidates are scored at.
    steps: Vec<usize>,
    decay: f64,
    keys: HashMap<Arc<str>, KeyChoice>,
}

impl Chooser {
    pub fn new(spec: ChoiceSpec, slide_ms: i64, horizon: usize, season: usize) -> Self {
        let mut steps = vec![1, horizon.max(1)];
        steps.dedup();
        let decay = 0.5f64.powf(1.0 / spec.half_life.max(1.0));
        Chooser {
            spec,
            slide_ms,
            horizon: horizon.max(1),
            season: season.max(1),
            steps,
            decay,
            keys: HashMap::new(),
        }
    }

    /// Scores the candidates on the closed `windows`, then serves each row
    /// of `forecasts` (one per window row, as the forecast stage makes
    /// them) by its key's candidate. Returns the forecasts to publish.
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
        let mut out_sources: Vec<String> = (0..n).map(|i| sources.value(i).to_string()).collect();
        let mut served_by_baseline = vec![false; n];
        let nc = self.spec.candidates.len();
        // Keys start on the network.
        let start = self
            .spec
            .candidates
            .iter()
            .position(|c| *c == Candidate::Network)
            .unwrap_or(0);
        for i in 0..n {
            let key = keys.value(i);
            if f_keys.value(i) != key {
                continue; // not the same row order: leave the forecast alone
            }
            let end = ends.value(i);
            let v = (values.is_valid(i) && values.value(i).is_finite()).then(|| values.value(i));
            let actual = v.filter(|_| counts.value(i) > 0);
            // A key's `Arc` is made once, when it is first seen.
            if !self.keys.contains_key(key) {
                let fresh = KeyChoice {
                    err: vec![0.0; nc],
                    weight: vec![0.0; nc],
                    serving: start,
                    ..KeyChoice::default()
                };
                self.keys.insert(Arc::from(key), fresh);
            }
            let Some(st) = self.keys.get_mut(key) else {
                continue;
            };
            if let Some(y) = actual {
                score(st, &self.steps, self.slide_ms, self.decay, end, y);
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
            if let Some(v) = v {
                if st.recent.len() == self.season {
                    st.recent.pop_front();
                }
                st.recent.push_back(v);
                let a = self.spec.ses_alpha;
                st.level = Some(st.level.map_or(v, |l| a * v + (1.0 - a) * l));
            }
            // Every candidate's forecast from this origin.
            let network = &out[i * h..(i + 1) * h];
            let mut cand = vec![f64::NAN; nc * h];
            for (c, which) in self.spec.candidates.iter().enumerate() {
                let row = &mut cand[c * h..(c + 1) * h];
                match which {
                    Candidate::Network => row.copy_from_slice(network),
                    Candidate::Naive => {
                        if let Some(&last) = st.recent.back() {
                            row.fill(last);
                        }
                    }
                    Candidate::SeasonalNaive => {
                        if st.recent.len() == self.season {
                            for (j, x) in row.iter_mut().enumerate() {
                                *x = st.recent[j % self.season];
                            }
                        }
                    }
                    Candidate::Ses => {
                        if let Some(l) = st.level {
                            row.fill(l);
                        }
                    }
                }
            }
            // The serving candidate changes with hysteresis.
            if st.scored >= self.spec.min_scored {
                let best = (0..nc)
                    .filter(|&c| st.weight[c] > 0.0)
                    .min_by(|&a, &b| mean(st, a).total_cmp(&mean(st, b)));
                if let Some(b) = best {
                    if mean(st, b) < (1.0 - self.spec.margin) * mean(st, st.serving) {
                        st.serving = b;
                    }
                }
            }
            let serving = st.serving;
            let served = &cand[serving * h..(serving + 1) * h];
            if self.spec.candidates[serving] != Candidate::Network
                && served.iter().all(|x| x.is_finite())
            {
                out[i * h..(i + 1) * h].copy_from_slice(served);
                out_sources[i] = self.spec.candidates[serving].name().to_string();
                served_by_baseline[i] = true;
            }
            let at_steps: Vec<f32> = (0..nc)
                .flat_map(|c| self.steps.iter().map(move |&s| (c, s)))
                .map(|(c, s)| cand[c * h + s - 1] as f32)
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

    /// `key`'s state for a checkpoint (none when the key has none).
    pub fn export(&self, key: &str) -> Option<ChoiceKeyState> {
        let st = self.keys.get(key)?;
        Some(ChoiceKeyState {
            recent: st.recent.iter().copied().collect(),
            level: st.level,
            pending: st.pending.iter().cloned().collect(),
            err: st.err.clone(),
            weight: st.weight.clone(),
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
    /// dropped (the key starts on the network again).
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
        self.keys.insert(
            key,
            KeyChoice {
                recent: s.recent.iter().copied().take(self.season).collect(),
                level: s.level,
                pending: s.pending.iter().cloned().collect(),
                err: s.err.clone(),
                weight: s.weight.clone(),
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

/// A candidate's weighted mean error (infinite before its first score).
fn mean(st: &KeyChoice, c: usize) -> f64 {
    if st.weight[c] > 0.0 {
        st.err[c] / st.weight[c]
    } else {
        f64::INFINITY
    }
}

/// Scores every candidate's pending forecasts for the window ending `end`.
fn score(st: &mut KeyChoice, steps: &[usize], slide: i64, decay: f64, end: i64, y: f64) {
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
                st.err[c] = decay * st.err[c] + (y - f).abs();
                st.weight[c] = decay * st.weight[c] + 1.0;
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
        }
    }

    /// One window of key "k" ending at hour `t` with value `y`, and the
    /// network's forecast `f` (horizon 2) made from it.
    fn step(c: &mut Chooser, t: i64, y: f64, f: [f64; 2]) -> (String, Vec<f64>) {
        let ws = crate::window::WindowSpec::from_config(&crate::testkit::pipeline(
            "[model]\nhorizon = 2",
        ));
        let mut b = WindowsBuilder::with_schema(&ws, ws.windows_schema(), 1);
        b.push("k", t * H - H, 1, false, &[y]);
        let windows = b.finish();
        let item = Arc::new(arrow::datatypes::Field::new(
            "item",
            arrow::datatypes::DataType::Float64,
            true,
        ));
        let mut list = FixedSizeListBuilder::new(Float64Builder::new(), 2).with_field(item);
        list.values().append_slice(&f);
        list.append(true);
        let forecasts = RecordBatch::try_new(
            forecasts_schema(2, &[]),
            vec![
                Arc::new(StringArray::from(vec!["k"])),
                Arc::new(TimestampMillisecondArray::from(vec![t * H]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec!["v1"])),
                Arc::new(StringArray::from(vec!["model"])),
                Arc::new(list.finish()),
            ],
        )
        .unwrap();
        let out = c.choose(&windows, forecasts);
        (
            out.column(fc::SOURCE)
                .as_string::<i32>()
                .value(0)
                .to_string(),
            f64_list_values(&out, fc::FORECAST).unwrap().to_vec(),
        )
    }

    /// The config accepts exactly the candidates the chooser knows.
    #[test]
    fn candidate_names_match_the_config() {
        let names: Vec<&str> = Candidate::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names, crate::config::CHOICE_CANDIDATES);
    }

    /// A flat series the network gets badly wrong moves to `naive` once
    /// enough windows are scored; when the series becomes a ramp the
    /// network forecasts exactly, the key moves back to the network.
    #[test]
    fn a_key_moves_to_the_candidate_with_the_lowest_recent_error_and_back() {
        let mut c = Chooser::new(spec(&Candidate::ALL, 0.1), H, 2, 2);
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
}
