//! Live scoring: every published forecast is scored against the actual
//! window when it closes, per key, per horizon step, per model version and
//! source (`model` or `baseline`).
//!
//! A forecast made at the close of the window ending `o` predicts, at step
//! `h`, the window ending `o + h * slide`. When that window closes with a
//! real value `y` (windows filled for lack of events are not actuals and
//! are skipped), the forecast `f` is scored: absolute error `|y - f|`,
//! sMAPE term `200 |y - f| / (|y| + |f|)`, and the scaled error
//! `|y - f| / s`, where `s` is the key's mean absolute seasonal difference
//! (lag `season`) over its actuals so far (MASE's scale, from the key's own
//! history; no scaled error until it has one).
//!
//! Published: per (model version, source, step) cumulative sums as
//! Prometheus series (`streamcast_live_*`), so a rolling mean over any
//! horizon is `rate(sum[1h]) / rate(count[1h])`; per key the running means
//! per step for the API (`/accuracy/<key>`).
//!
//! With quantiles (`model.quantiles`), each scored step also gets the
//! pinball loss averaged over the quantiles and whether the actual fell in
//! the band from the lowest to the highest quantile (coverage; nominal
//! `q_max - q_min`, e.g. 80% for P10-P90).
//!
//! **Calibration** (`score.calibrate`, on by default with quantiles): the
//! quantiles a network learns offline are rarely right live (and the
//! cold-start baseline has no band at all), so each key calibrates its
//! bands online, conformal style (conformalized quantile regression,
//! Romano, Patterson and Candès 2019, over a rolling window): for every
//! pair of quantiles around the median (P10/P90, ...) and scored step it
//! keeps the conformity scores `max(lo - y, y - hi)` of its last
//! `calibration_window` *raw* bands (negative when the actual was inside),
//! and publishes `[lo - c, hi + c]` where `c` is their
//! `ceil(nominal * (n + 1))`-th smallest (no change while `n` is too small
//! for that rank). With exchangeable scores this covers at least the
//! nominal share (`q_hi - q_lo`) of actuals, and at most `1 / (n + 1)`
//! more; a band that was too wide shrinks, one too narrow widens. Steps
//! between the scored ones take linearly interpolated widenings.
//! Calibrated quantiles are clamped to their side of the median and sorted,
//! so they never cross; the point forecast (the median) is never moved.
//!
//! Invariants: windows are taken in close order (the window stage emits a
//! batch sorted by window end), and a key's actual is scored before that
//! window's own forecast is registered and calibrated. Memory per key:
//! `horizon` pending forecasts of `steps.len() x (1 + 2 quantiles)` f32
//! values plus 16 bytes each, `season` f32 actuals, 56 bytes per scored
//! step, and with calibration `calibration_window` f32 scores per scored
//! step and quantile pair (800 bytes for P10/P50/P90, 2 steps, 100
//! windows). With durable state, all of it is checkpointed with the key's
//! model state (`export` / `import`), so a restored key goes on scoring
//! and calibrating exactly as it would have.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt32Type};

use crate::schema::{f64_list_like, f64_list_values, forecasts as fc, windows as wc};
use crate::state::{ChoiceKeyState, ScoreKeyState, ScoreView};

// Series names: see `telemetry` for the catalogue.
use crate::telemetry::{
    LIVE_ABS_ERROR_SUM, LIVE_COVERED, LIVE_PINBALL_SUM, LIVE_SCALED_ERROR_SUM, LIVE_SCALED_SCORED,
    LIVE_SCORED, LIVE_SMAPE_SUM,
};

/// Running means of one step for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StepScore {
    /// 1-based horizon step.
    pub step: usize,
    pub scored: u32,
    pub mae: f64,
    pub smape: f64,
    /// Mean scaled error (MASE) over the forecasts scored with a scale.
    pub mase: Option<f64>,
    /// Share of actuals inside the lowest..highest quantile band (with quantiles).
    pub coverage: Option<f64>,
    /// Mean pinball loss over the quantiles (with quantiles).
    pub pinball: Option<f64>,
}

/// One key's scored window, as published on `sink.accuracy_topic`:
///
/// ```json
/// {"key":"web-01","window_end_ms":1704074400000,"actual":12.5,
///  "scored":[{"step":1,"origin_ms":1704070800000,"model_version":"...","source":"model",
///             "forecast":12.1,"abs_error":0.4,"scaled_error":0.21,"covered":true}]}
/// ```
/// `scaled_error` is absent until the key has a seasonal scale, `covered`
/// without quantiles. Forecast values are as kept while pending (f32).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccuracyRecord {
    pub key: Arc<str>,
    pub window_end_ms: i64,
    pub actual: f64,
    pub scored: Vec<ScoredStep>,
}

/// One forecast step scored against its actual (see [`AccuracyRecord`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoredStep {
    pub step: usize,
    /// The window end the forecast was made at.
    pub origin_ms: i64,
    pub model_version: Arc<str>,
    pub source: String,
    pub forecast: f64,
    pub abs_error: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled_error: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered: Option<bool>,
}

/// Sums over the forecasts scored at one step (per key, per batch, in total).
/// Serialized (in live records, see `state::ScoreView`) as the tuple
/// `ScoreKeyState::sums` holds: the same fields in the same order.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
struct Sums {
    abs: f64,
    smape: f64,
    scaled: f64,
    pinball: f64,
    n: u64,
    n_scaled: u64,
    covered: u64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.abs += o.abs;
        self.smape += o.smape;
        self.scaled += o.scaled;
        self.pinball += o.pinball;
        self.n += o.n;
        self.n_scaled += o.n_scaled;
        self.covered += o.covered;
    }
}

#[derive(Debug, Default)]
struct KeyScore {
    /// Pending forecasts, oldest first: (origin window end, version index,
    /// source index); their values are in `values`, `steps.len()` each,
    /// their published quantiles in `qvalues`, `steps.len() x Q` each
    /// (step-major), and the model's raw quantiles in `qraw`, likewise.
    pending: VecDeque<(i64, u16, u8)>,
    values: VecDeque<f32>,
    qvalues: VecDeque<f32>,
    qraw: VecDeque<f32>,
    /// The last `season` actuals (for the seasonal scale).
    recent: VecDeque<f32>,
    scale_sum: f64,
    scale_n: u32,
    /// Per scored step.
    sums: Vec<Sums>,
    /// Conformity scores of the raw bands per (scored step, quantile
    /// pair), step-major, the newest last (calibration), all of forecasts
    /// from `conformity_source`: when a key's source changes (the warm-up
    /// baseline hands over to the model), the old scores say nothing about
    /// the new bands and are dropped.
    conformity: Vec<VecDeque<f32>>,
    conformity_source: u8,
}

impl KeyScore {
    fn scale(&self) -> Option<f64> {
        (self.scale_n > 0)
            .then(|| self.scale_sum / f64::from(self.scale_n))
            .filter(|s| *s > 0.0 && s.is_finite())
    }
}

/// Quantile calibration settings (see the module header).
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// Conformity scores kept per key, scored step and quantile pair.
    pub window: usize,
}

/// The live scorer (on the compute thread, beside the model).
pub struct Scorer {
    slide_ms: i64,
    horizon: usize,
    /// 1-based steps scored.
    steps: Vec<usize>,
    season: usize,
    /// Quantile levels of the forecasts (increasing, with 0.5), or empty.
    quantiles: Vec<f64>,
    calibration: Option<Calibration>,
    keys: HashMap<Arc<str>, KeyScore>,
    versions: Vec<Arc<str>>,
    /// This batch's sums per (version, source, step), for the metrics.
    batch_sums: HashMap<(u16, u8, usize), Sums>,
    /// Since the start, per (source, step), all keys and versions.
    totals: std::collections::BTreeMap<(u8, usize), Sums>,
    /// Accuracy records of this batch, when asked for (`emit_records`).
    records: Option<Vec<AccuracyRecord>>,
}

/// Live accuracy of one source at one step, all keys (see [`Scorer::summary`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SummaryRow {
    pub source: &'static str,
    pub step: usize,
    pub scored: u64,
    pub mae: f64,
    pub smape: f64,
    /// Error over seasonal naive's mean absolute error on each key's
    /// history so far (M4's scale); below 1 beats it.
    pub mase: Option<f64>,
    /// Forecasts scored with a seasonal scale (the MASE's count).
    pub scored_scaled: u64,
    /// Share of actuals in the quantile band (with quantiles).
    pub coverage: Option<f64>,
    /// Nominal coverage of that band (`q_max - q_min`).
    pub nominal: Option<f64>,
}

/// Forecast sources: the network, its warm-up baseline, and the baselines
/// a key may be served by (see `choose`).
const SOURCES: [&str; 5] = ["model", "baseline", "naive", "snaive", "ses"];

fn source_index(s: &str) -> u8 {
    SOURCES.iter().position(|x| *x == s).unwrap_or(1) as u8
}

impl Scorer {
    /// `steps` are 1-based horizon steps (those beyond `horizon` ignored);
    /// `quantiles` the forecasts' quantile levels (empty: point only).
    pub fn new(
        slide_ms: i64,
        horizon: usize,
        steps: &[usize],
        season: usize,
        quantiles: &[f64],
        calibration: Option<Calibration>,
    ) -> Self {
        let mut steps: Vec<usize> = steps
            .iter()
            .copied()
            .filter(|s| (1..=horizon).contains(s))
            .collect();
        steps.sort_unstable();
        steps.dedup();
        Scorer {
            slide_ms,
            horizon,
            steps,
            season: season.max(1),
            quantiles: quantiles.to_vec(),
            calibration: calibration.filter(|c| c.window > 0 && quantiles.len() >= 3),
            keys: HashMap::new(),
            versions: Vec::new(),
            batch_sums: HashMap::new(),
            totals: std::collections::BTreeMap::new(),
            records: None,
        }
    }

    /// The scorer of a pipeline: its slide, horizon, season and
    /// `score.steps` (empty: the first and the last step).
    pub fn for_pipeline(
        cfg: &crate::config::PipelineConfig,
        quantiles: &[f64],
        calibration: Option<Calibration>,
    ) -> Self {
        let h = cfg.model.horizon as usize;
        let steps = if cfg.score.steps.is_empty() {
            vec![1, h]
        } else {
            cfg.score.steps.clone()
        };
        let season = cfg.model.season_windows as usize;
        Scorer::new(cfg.slide_ms(), h, &steps, season, quantiles, calibration)
    }

    /// Also keeps one [`AccuracyRecord`] per scored window, for
    /// [`Scorer::take_records`] (the accuracy topic).
    pub fn emit_records(mut self) -> Self {
        self.records = Some(Vec::new());
        self
    }

    /// The accuracy records since the last call (empty unless `emit_records`).
    pub fn take_records(&mut self) -> Vec<AccuracyRecord> {
        self.records
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Scores the closed `windows` against earlier forecasts, calibrates
    /// the quantiles of `forecasts` (one row per window row, as the model
    /// stage makes them) when calibration is on, and keeps them for the
    /// windows to come. Returns the forecasts to publish.
    pub fn observe(&mut self, windows: &RecordBatch, forecasts: RecordBatch) -> RecordBatch {
        let n = windows.num_rows();
        if n == 0 || forecasts.num_rows() != n || self.steps.is_empty() {
            return forecasts;
        }
        let keys = windows.column(wc::KEY).as_string::<i32>();
        let ends = windows
            .column(wc::WINDOW_END)
            .as_primitive::<TimestampMillisecondType>();
        let counts = windows.column(wc::COUNT).as_primitive::<UInt32Type>();
        let actual = windows.column(wc::FIRST_AGG).as_primitive::<Float64Type>();
        let f_keys = forecasts.column(fc::KEY).as_string::<i32>();
        let versions = forecasts.column(fc::MODEL_VERSION).as_string::<i32>();
        let sources = forecasts.column(fc::SOURCE).as_string::<i32>();
        let Some(flat) = f64_list_values(&forecasts, fc::FORECAST) else {
            return forecasts;
        };
        let width = self.horizon;
        let nq = self.quantiles.len();
        let qcol = forecasts.schema().index_of(fc::QUANTILES_NAME).ok();
        let mut qflat: Option<Vec<f64>> = qcol
            .and_then(|ix| f64_list_values(&forecasts, ix))
            .filter(|v| nq > 0 && v.len() == n * width * nq)
            .map(|v| v.to_vec());
        for i in 0..n {
            let key = keys.value(i);
            let end = ends.value(i);
            let y = (counts.value(i) > 0 && actual.is_valid(i))
                .then(|| actual.value(i))
                .filter(|y| y.is_finite());
            if let Some(y) = y {
                self.score(key, end, y);
            }
            if f_keys.value(i) != key {
                continue; // not the same row order: never mis-attribute
            }
            let version = self.version_index(versions.value(i));
            let source = source_index(sources.value(i));
            let row = &flat[i * width..(i + 1) * width];
            let (steps, quantiles, calibration) = (&self.steps, &self.quantiles, self.calibration);
            let st = key_state(&mut self.keys, key, steps.len(), nq);
            if source != st.conformity_source {
                st.conformity.iter_mut().for_each(VecDeque::clear);
                st.conformity_source = source;
            }
            st.pending.push_back((end, version, source));
            st.values.extend(steps.iter().map(|&s| row[s - 1] as f32));
            if let Some(q) = qflat.as_mut() {
                let qrow = &mut q[i * width * nq..(i + 1) * width * nq];
                let at_steps = |row: &[f64]| {
                    steps
                        .iter()
                        .flat_map(|&s| (0..nq).map(move |j| row[j * width + s - 1] as f32))
                        .collect::<Vec<f32>>()
                };
                if calibration.is_some() {
                    st.qraw.extend(at_steps(qrow));
                    calibrate(qrow, width, quantiles, steps, &st.conformity);
                }
                st.qvalues.extend(at_steps(qrow));
            }
        }
        self.flush_metrics();
        match (qcol, qflat) {
            (Some(ix), Some(q)) if self.calibration.is_some() => {
                with_quantiles(forecasts, ix, q, width * nq)
            }
            _ => forecasts,
        }
    }

    /// Live accuracy since the start per source and step, all keys.
    pub fn summary(&self) -> Vec<SummaryRow> {
        let nominal = self.nominal();
        self.totals
            .iter()
            .map(|(&(source, step), a)| SummaryRow {
                source: SOURCES[usize::from(source)],
                step,
                scored: a.n,
                mae: a.abs / a.n.max(1) as f64,
                smape: a.smape / a.n.max(1) as f64,
                mase: (a.n_scaled > 0).then(|| a.scaled / a.n_scaled as f64),
                scored_scaled: a.n_scaled,
                coverage: nominal.map(|_| a.covered as f64 / a.n.max(1) as f64),
                nominal,
            })
            .collect()
    }

    /// Nominal coverage of the lowest..highest quantile band.
    fn nominal(&self) -> Option<f64> {
        match (self.quantiles.first(), self.quantiles.last()) {
            (Some(lo), Some(hi)) if hi > lo => Some(hi - lo),
            _ => None,
        }
    }

    /// One update per (version, source, step) and batch, not per forecast.
    fn flush_metrics(&mut self) {
        let with_q = !self.quantiles.is_empty();
        for ((version, source, step), a) in self.batch_sums.drain() {
            self.totals.entry((source, step)).or_default().add(&a);
            let labels = [
                (
                    "model_version",
                    self.versions
                        .get(usize::from(version))
                        .map_or_else(String::new, |v| v.to_string()),
                ),
                ("source", SOURCES[usize::from(source)].to_string()),
                ("step", step.to_string()),
            ];
            metrics::counter!(LIVE_SCORED, &labels).increment(a.n);
            metrics::gauge!(LIVE_ABS_ERROR_SUM, &labels).increment(a.abs);
            metrics::gauge!(LIVE_SMAPE_SUM, &labels).increment(a.smape);
            if a.n_scaled > 0 {
                metrics::counter!(LIVE_SCALED_SCORED, &labels).increment(a.n_scaled);
                metrics::gauge!(LIVE_SCALED_ERROR_SUM, &labels).increment(a.scaled);
            }
            if with_q {
                metrics::counter!(LIVE_COVERED, &labels).increment(a.covered);
                metrics::gauge!(LIVE_PINBALL_SUM, &labels).increment(a.pinball);
            }
        }
    }

    /// A key's series ended (gap, TTL, eviction, revocation): forget it.
    pub fn end_keys(&mut self, keys: &[Arc<str>]) {
        for k in keys {
            self.keys.remove(k);
        }
    }

    /// `key`'s state for a checkpoint (none when the key has none).
    pub fn export(&self, key: &str) -> Option<ScoreKeyState> {
        let st = self.keys.get(key)?;
        Some(ScoreKeyState {
            pending: st
                .pending
                .iter()
                .map(|&(o, v, s)| {
                    let v = self.versions.get(usize::from(v));
                    (o, v.map_or_else(String::new, |v| v.to_string()), s)
                })
                .collect(),
            values: st.values.iter().copied().collect(),
            qvalues: st.qvalues.iter().copied().collect(),
            qraw: st.qraw.iter().copied().collect(),
            recent: st.recent.iter().copied().collect(),
            scale_sum: st.scale_sum,
            scale_n: st.scale_n,
            sums: st
                .sums
                .iter()
                .map(|a| {
                    (
                        a.abs, a.smape, a.scaled, a.pinball, a.n, a.n_scaled, a.covered,
                    )
                })
                .collect(),
            conformity: st
                .conformity
                .iter()
                .map(|r| r.iter().copied().collect())
                .collect(),
            conformity_source: st.conformity_source,
        })
    }

    /// `key`'s live record for a checkpoint (format 2, `state::encode_live`),
    /// with `choice` (the chooser's state of the key) beside it: encoded
    /// straight from the scorer's deques, byte for byte what
    /// `encode_live` writes for [`Scorer::export`]'s copy.
    pub fn encode_live(
        &self,
        key: &str,
        choice: Option<&ChoiceKeyState>,
    ) -> crate::error::Result<Vec<u8>> {
        let view = self.keys.get(key).map(|st| ScoreView {
            pending: &st.pending,
            versions: &self.versions,
            values: &st.values,
            qvalues: &st.qvalues,
            qraw: &st.qraw,
            recent: &st.recent,
            scale_sum: st.scale_sum,
            scale_n: st.scale_n,
            sums: &st.sums,
            conformity: &st.conformity,
            conformity_source: st.conformity_source,
        });
        crate::state::encode_live_view(view.as_ref(), choice)
    }

    /// Takes a restored key state in. A state of another shape (the scored
    /// steps or quantiles changed since it was written) is dropped: the key
    /// starts scoring afresh.
    pub fn import(&mut self, key: Arc<str>, s: &ScoreKeyState) {
        let (w, nq) = (self.steps.len(), self.quantiles.len());
        let n = s.pending.len();
        let fits = s.sums.len() == w
            && s.values.len() == n * w
            && (s.qvalues.is_empty() || s.qvalues.len() == n * w * nq)
            && (s.qraw.is_empty() || s.qraw.len() == n * w * nq)
            && (s.conformity.is_empty() || s.conformity.len() == w * (nq / 2));
        if !fits {
            return;
        }
        let pending = s
            .pending
            .iter()
            .map(|(o, v, src)| (*o, self.version_index(v), *src))
            .collect();
        let window = self.calibration.map_or(usize::MAX, |c| c.window);
        self.keys.insert(
            key,
            KeyScore {
                pending,
                values: s.values.iter().copied().collect(),
                qvalues: s.qvalues.iter().copied().collect(),
                qraw: s.qraw.iter().copied().collect(),
                recent: s.recent.iter().copied().take(self.season).collect(),
                scale_sum: s.scale_sum,
                scale_n: s.scale_n,
                sums: s
                    .sums
                    .iter()
                    .map(
                        |&(abs, smape, scaled, pinball, n, n_scaled, covered)| Sums {
                            abs,
                            smape,
                            scaled,
                            pinball,
                            n,
                            n_scaled,
                            covered,
                        },
                    )
                    .collect(),
                conformity: if s.conformity.is_empty() {
                    vec![VecDeque::new(); w * (nq / 2)]
                } else {
                    s.conformity
                        .iter()
                        .map(|r| {
                            r[r.len().saturating_sub(window)..]
                                .iter()
                                .copied()
                                .collect()
                        })
                        .collect()
                },
                conformity_source: s.conformity_source,
            },
        );
    }

    /// Running means per scored step of `key` (empty when unknown).
    pub fn key_scores(&self, key: &str) -> Vec<StepScore> {
        let Some(st) = self.keys.get(key) else {
            return Vec::new();
        };
        let with_q = !self.quantiles.is_empty();
        self.steps
            .iter()
            .zip(&st.sums)
            .map(|(&step, a)| {
                let n = a.n as f64;
                let mean = |v: f64| if a.n > 0 { v / n } else { f64::NAN };
                StepScore {
                    step,
                    scored: a.n as u32,
                    mae: mean(a.abs),
                    smape: mean(a.smape),
                    mase: (a.n_scaled > 0).then(|| a.scaled / a.n_scaled as f64),
                    coverage: (with_q && a.n > 0).then(|| a.covered as f64 / n),
                    pinball: (with_q && a.n > 0).then(|| a.pinball / n),
                }
            })
            .collect()
    }

    fn version_index(&mut self, v: &str) -> u16 {
        if let Some(i) = self.versions.iter().position(|x| &**x == v) {
            return i as u16;
        }
        if self.versions.len() >= u16::MAX as usize {
            self.versions.remove(0);
        }
        self.versions.push(Arc::from(v));
        (self.versions.len() - 1) as u16
    }

    fn score(&mut self, key: &str, end: i64, y: f64) {
        let (slide, w, nq) = (self.slide_ms, self.steps.len(), self.quantiles.len());
        let window = self.calibration.map_or(0, |c| c.window);
        let pairs = pairs(&self.quantiles);
        let st = key_state(&mut self.keys, key, w, nq);
        let scale = st.scale();
        let mut scored = Vec::new();
        for (j, &(origin, version, source)) in st.pending.iter().enumerate() {
            let ahead = end - origin;
            if ahead <= 0 || ahead % slide != 0 {
                continue;
            }
            let h = (ahead / slide) as usize;
            let Ok(s) = self.steps.binary_search(&h) else {
                continue;
            };
            let f = f64::from(st.values[j * w + s]);
            let err = (y - f).abs();
            let denom = y.abs() + f.abs();
            let mut one = Sums {
                abs: err,
                smape: if denom > 0.0 {
                    200.0 * err / denom
                } else {
                    0.0
                },
                n: 1,
                ..Sums::default()
            };
            if let Some(sc) = scale {
                one.scaled = err / sc;
                one.n_scaled = 1;
            }
            if nq > 0 && st.qvalues.len() >= (j + 1) * w * nq {
                let base = (j * w + s) * nq;
                let qf = |k: usize| f64::from(st.qvalues[base + k]);
                // In f32, as the band is kept: an actual equal to a bound
                // (a seasonal naive that was exact) counts as inside.
                let (lo, hi, y32) = (st.qvalues[base], st.qvalues[base + nq - 1], y as f32);
                one.covered = u64::from(lo <= y32 && y32 <= hi);
                one.pinball = (0..nq)
                    .map(|k| pinball(self.quantiles[k], y, qf(k)))
                    .sum::<f64>()
                    / nq as f64;
                if window > 0 && source == st.conformity_source && st.qraw.len() >= (j + 1) * w * nq
                {
                    // Conformity of the raw band (CQR): > 0 by how far
                    // outside, < 0 by how far inside.
                    for k in 0..pairs {
                        let lo = f64::from(st.qraw[base + k]);
                        let hi = f64::from(st.qraw[base + nq - 1 - k]);
                        let ring = &mut st.conformity[s * pairs + k];
                        if ring.len() == window {
                            ring.pop_front();
                        }
                        ring.push_back((lo - y).max(y - hi) as f32);
                    }
                }
            }
            if self.records.is_some() {
                scored.push(ScoredStep {
                    step: h,
                    origin_ms: origin,
                    model_version: self
                        .versions
                        .get(usize::from(version))
                        .cloned()
                        .unwrap_or_else(|| Arc::from("")),
                    source: SOURCES[usize::from(source)].to_string(),
                    forecast: f,
                    abs_error: err,
                    scaled_error: (one.n_scaled > 0).then_some(one.scaled),
                    covered: (nq > 0).then_some(one.covered > 0),
                });
            }
            st.sums[s].add(&one);
            self.batch_sums
                .entry((version, source, h))
                .or_default()
                .add(&one);
        }
        if let (Some(records), false) = (self.records.as_mut(), scored.is_empty()) {
            records.push(AccuracyRecord {
                key: Arc::from(key),
                window_end_ms: end,
                actual: y,
                scored,
            });
        }
        let (horizon, season) = (self.horizon as i64, self.season);
        // Forecasts with no step left to score are done.
        while let Some(&(origin, _, _)) = st.pending.front() {
            if end - origin >= horizon * slide {
                st.pending.pop_front();
                st.values.drain(..w);
                let qw = (w * nq).min(st.qvalues.len());
                st.qvalues.drain(..qw);
                let qw = (w * nq).min(st.qraw.len());
                st.qraw.drain(..qw);
            } else {
                break;
            }
        }
        // The seasonal scale learns from this actual after scoring with the
        // history before it.
        if st.recent.len() == season {
            if let Some(&old) = st.recent.front() {
                st.scale_sum += (y - f64::from(old)).abs();
                st.scale_n += 1;
            }
            st.recent.pop_front();
        }
        st.recent.push_back(y as f32);
    }
}

/// The live accuracy table a run or backfill prints at its end: every
/// published forecast scored against its actual window (empty: no rows).
pub fn summary_table(rows: &[SummaryRow]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if rows.is_empty() {
        return s;
    }
    s.push_str("\n== live accuracy (forecasts scored against their windows) ==\n");
    s.push_str("source    step    scored        MAE    sMAPE    MASE  coverage\n");
    for r in rows {
        let mase = r.mase.map_or("-".to_string(), |m| format!("{m:.3}"));
        let coverage = match (r.coverage, r.nominal) {
            (Some(c), Some(n)) => format!("{:.1}% of {:.0}%", 100.0 * c, 100.0 * n),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            s,
            "{:<8} {:>5} {:>9} {:>10.4} {:>8.2} {:>7}  {}",
            r.source, r.step, r.scored, r.mae, r.smape, mase, coverage
        );
    }
    s.push_str("MASE: error over seasonal naive's mean error on each key's history so far (M4's scale); below 1 beats it.\n");
    if rows.iter().any(|r| r.coverage.is_some()) {
        s.push_str("coverage: share of actuals inside the lowest..highest quantile band, against its nominal share.\n");
    }
    s
}

/// Pinball (quantile) loss of forecast `f` at level `q` for actual `y`.
fn pinball(q: f64, y: f64, f: f64) -> f64 {
    let d = y - f;
    if d >= 0.0 {
        q * d
    } else {
        (q - 1.0) * d
    }
}

/// Quantile pairs around the median: (k, Q - 1 - k) for k below it.
fn pairs(quantiles: &[f64]) -> usize {
    quantiles.len() / 2
}

/// The widening of one band from its conformity scores: the
/// `ceil(nominal * (n + 1))`-th smallest, or none while `n` is too small.
fn widening(scores: &VecDeque<f32>, nominal: f64) -> Option<f64> {
    let n = scores.len();
    let rank = (nominal * (n + 1) as f64).ceil() as usize;
    if n == 0 || rank == 0 || rank > n {
        return None;
    }
    let mut v: Vec<f32> = scores.iter().copied().collect();
    let (_, x, _) = v.select_nth_unstable_by(rank - 1, f32::total_cmp);
    Some(f64::from(*x))
}

/// Widens (or narrows) each quantile pair of one forecast row
/// (quantile-major, `width` steps each) by its conformal widening,
/// interpolated between scored steps, then keeps every quantile on its side
/// of the median and sorts them per step, so they never cross and the point
/// forecast is unchanged.
fn calibrate(
    row: &mut [f64],
    width: usize,
    quantiles: &[f64],
    steps: &[usize],
    conformity: &[VecDeque<f32>],
) {
    let nq = quantiles.len();
    let np = pairs(quantiles);
    if np == 0 || steps.is_empty() {
        return;
    }
    // Per (scored step, pair).
    let c: Vec<Option<f64>> = (0..steps.len() * np)
        .map(|i| {
            let k = i % np;
            widening(&conformity[i], quantiles[nq - 1 - k] - quantiles[k])
        })
        .collect();
    let mid = quantiles.iter().position(|q| *q == 0.5);
    let mut v = vec![0.0f64; nq];
    for h in 1..=width {
        // Interpolation between the scored steps around h.
        let hi = steps.partition_point(|&s| s < h).min(steps.len() - 1);
        let lo = if steps[hi] > h && hi > 0 { hi - 1 } else { hi };
        let t = if steps[hi] > steps[lo] {
            ((h as f64 - steps[lo] as f64) / (steps[hi] - steps[lo]) as f64).clamp(0.0, 1.0)
        } else {
            0.0
        };
        for (k, x) in v.iter_mut().enumerate() {
            *x = row[k * width + h - 1];
        }
        for k in 0..np {
            let w = match (c[lo * np + k], c[hi * np + k]) {
                (Some(a), Some(b)) => (1.0 - t) * a + t * b,
                _ => continue, // not enough scores yet: published raw
            };
            v[k] -= w;
            v[nq - 1 - k] += w;
        }
        if let Some(m) = mid {
            let med = row[m * width + h - 1];
            for (k, x) in v.iter_mut().enumerate() {
                *x = if k < m { x.min(med) } else { x.max(med) };
            }
        }
        v.sort_by(f64::total_cmp);
        for (k, x) in v.iter().enumerate() {
            row[k * width + h - 1] = *x;
        }
    }
}

/// `batch` with its quantiles column replaced by `values` (`width` per row).
fn with_quantiles(batch: RecordBatch, ix: usize, values: Vec<f64>, width: usize) -> RecordBatch {
    let Some(list) = f64_list_like(batch.column(ix), values, width) else {
        return batch;
    };
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols[ix] = list;
    RecordBatch::try_new(batch.schema(), cols).unwrap_or(batch)
}

/// The key's score state, created on first use.
fn key_state<'a>(
    keys: &'a mut HashMap<Arc<str>, KeyScore>,
    key: &str,
    steps: usize,
    quantiles: usize,
) -> &'a mut KeyScore {
    if !keys.contains_key(key) {
        keys.insert(
            Arc::from(key),
            KeyScore {
                sums: vec![Sums::default(); steps],
                conformity: vec![VecDeque::new(); steps * (quantiles / 2)],
                ..KeyScore::default()
            },
        );
    }
    keys.get_mut(key).expect("inserted above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::forecasts_schema;
    use crate::window::WindowsBuilder;

    const H: i64 = 3_600_000;

    /// Hand-computed: forecasts [10, 20] at the close of hour 1, actuals 12
    /// at hour 2 and 16 at hour 3 (step 1: |12-10| = 2; step 2: |16-20| = 4).
    #[test]
    fn forecasts_are_scored_against_later_actuals_by_step() {
        let mut s = Scorer::new(H, 2, &[1, 2], 1, &[], None);
        let spec = crate::window::WindowSpec::from_config(&crate::testkit::pipeline(
            "[model]\nhorizon = 2",
        ));
        let windows = |rows: &[(i64, f64)]| {
            let mut b = WindowsBuilder::with_schema(&spec, spec.windows_schema(), rows.len());
            for &(end, v) in rows {
                b.push("k", end - H, 1, false, &[v]);
            }
            b.finish()
        };
        let forecasts = |rows: &[(i64, [f64; 2])]| {
            use arrow::array::{
                FixedSizeListBuilder, Float64Builder, StringArray, TimestampMillisecondArray,
            };
            let schema = forecasts_schema(2, &[]);
            let item =
                arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Float64, true);
            let mut list =
                FixedSizeListBuilder::new(Float64Builder::new(), 2).with_field(Arc::new(item));
            for (_, f) in rows {
                list.values().append_slice(f);
                list.append(true);
            }
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec!["k"; rows.len()])),
                    Arc::new(
                        TimestampMillisecondArray::from(
                            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from(vec!["v1"; rows.len()])),
                    Arc::new(StringArray::from(vec!["model"; rows.len()])),
                    Arc::new(list.finish()),
                ],
            )
            .unwrap()
        };
        s.observe(&windows(&[(H, 5.0)]), forecasts(&[(H, [10.0, 20.0])]));
        assert_eq!(s.key_scores("k")[0].scored, 0, "nothing to score yet");
        s.observe(
            &windows(&[(2 * H, 12.0)]),
            forecasts(&[(2 * H, [0.0, 0.0])]),
        );
        s.observe(
            &windows(&[(3 * H, 16.0)]),
            forecasts(&[(3 * H, [0.0, 0.0])]),
        );
        let k = s.key_scores("k");
        // Step 1: |12-10| (origin 1h) and |16-0| (origin 2h); step 2: |16-20|.
        assert_eq!((k[0].step, k[0].scored, k[0].mae), (1, 2, 9.0));
        assert_eq!((k[1].step, k[1].scored, k[1].mae), (2, 1, 4.0));
        let smape1 = (200.0 * 2.0 / 22.0 + 200.0 * 16.0 / 16.0) / 2.0;
        assert!((k[0].smape - smape1).abs() < 1e-12);
        // Season 1: the scale after hours 1..2 is |12-5| = 7; at hour 3 the
        // step-1 error 16 scales to 16/7, step 2's 4 to 4/7; hour 2's was
        // scored before any scale existed.
        assert_eq!(k[0].mase, Some(16.0 / 7.0));
        assert_eq!(k[1].mase, Some(4.0 / 7.0));
        let all = s.summary();
        assert_eq!(
            (all[0].source, all[0].step, all[0].scored, all[0].mae),
            ("model", 1, 2, 9.0)
        );
        assert_eq!(
            (all[1].step, all[1].scored, all[1].mase),
            (2, 1, Some(4.0 / 7.0))
        );
        s.end_keys(&[Arc::from("k")]);
        assert!(s.key_scores("k").is_empty());
        assert_eq!(s.summary(), all, "the totals outlive the keys");
    }

    /// A one-key forecasts batch of horizon `h`, with quantiles when given.
    fn batch_with_quantiles(end: i64, point: &[f64], levels: &[f64], q: &[f64]) -> RecordBatch {
        batch_of_version(end, "v1", point, levels, q)
    }

    /// [`batch_with_quantiles`] of a given model version.
    fn batch_of_version(
        end: i64,
        version: &str,
        point: &[f64],
        levels: &[f64],
        q: &[f64],
    ) -> RecordBatch {
        use arrow::array::{
            FixedSizeListBuilder, Float64Builder, StringArray, TimestampMillisecondArray,
        };
        let h = point.len() as i32;
        let schema = forecasts_schema(h.into(), levels);
        let item = Arc::new(arrow::datatypes::Field::new(
            "item",
            arrow::datatypes::DataType::Float64,
            true,
        ));
        let mut list = FixedSizeListBuilder::new(Float64Builder::new(), h).with_field(item.clone());
        list.values().append_slice(point);
        list.append(true);
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["k"])),
            Arc::new(TimestampMillisecondArray::from(vec![end]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec![version])),
            Arc::new(StringArray::from(vec!["model"])),
            Arc::new(list.finish()),
        ];
        if !levels.is_empty() {
            let mut ql = FixedSizeListBuilder::new(Float64Builder::new(), h * levels.len() as i32)
                .with_field(item);
            ql.values().append_slice(q);
            ql.append(true);
            cols.push(Arc::new(ql.finish()));
        }
        RecordBatch::try_new(schema, cols).unwrap()
    }

    fn one_window(end: i64, v: f64) -> RecordBatch {
        let spec = crate::window::WindowSpec::from_config(&crate::testkit::pipeline(
            "[model]\nhorizon = 1",
        ));
        let mut b = WindowsBuilder::with_schema(&spec, spec.windows_schema(), 1);
        b.push("k", end - H, 1, false, &[v]);
        b.finish()
    }

    fn published(batch: &RecordBatch) -> Vec<f64> {
        f64_list_values(batch, batch.schema().index_of(fc::QUANTILES_NAME).unwrap())
            .unwrap()
            .to_vec()
    }

    /// Hand-computed conformal calibration, coverage and pinball (horizon
    /// 1, P10/P50/P90, a window of 4 scores). The model's raw band is
    /// always [-1, 1] around a median of 0.
    #[test]
    fn quantiles_are_calibrated_from_the_conformity_of_recent_bands() {
        let levels = [0.1, 0.5, 0.9];
        let mut s = Scorer::new(H, 1, &[1], 1, &levels, Some(Calibration { window: 4 }));
        let raw = [-1.0, 0.0, 1.0];
        let mut hour = |t: i64, y: f64| {
            published(&s.observe(
                &one_window(t * H, y),
                batch_with_quantiles(t * H, &[0.0], &levels, &raw),
            ))
        };
        // Scores max(lo - y, y - hi) of the previous hour's raw band: hour 2
        // (y = 3) 2; hour 3 (y = -0.5) -0.5; hour 4 (y = 1.5) 0.5. With
        // n < 4 scores the rank ceil(0.8 (n + 1)) exceeds n: raw bands.
        assert_eq!(hour(1, 0.0), raw);
        assert_eq!(hour(2, 3.0), raw);
        assert_eq!(hour(3, -0.5), raw);
        assert_eq!(hour(4, 1.5), raw);
        // Hour 5 (y = 0) adds -1: scores {2, -0.5, 0.5, -1}, rank 4 -> 2,
        // so the band is widened by 2 on each side.
        assert_eq!(hour(5, 0.0), vec![-3.0, 0.0, 3.0]);
        // Hour 6 (y = 0): -1 enters, 2 leaves: {-0.5, 0.5, -1, -1} -> 0.5.
        assert_eq!(hour(6, 0.0), vec![-1.5, 0.0, 1.5]);
        // Two more hours at the median: {-1, -1, -1, -1}... and hour 7's
        // window still holds 0.5: {0.5, -1, -1, -1} -> 0.5; hour 8 -> -1,
        // a band narrowed to nothing (clamped at the median).
        assert_eq!(hour(7, 0.0), vec![-1.5, 0.0, 1.5]);
        assert_eq!(hour(8, 0.0), vec![0.0, 0.0, 0.0]);
        // Coverage of the *published* bands: hour 2 (3 vs [-1, 1]) out,
        // 3 in, 4 (1.5) out, 5 in, 6 (0 vs [-3, 3]) in, 7 in, 8 in.
        let k = s.key_scores("k");
        assert_eq!(k[0].scored, 7);
        assert_eq!(k[0].coverage, Some(5.0 / 7.0));
        // Pinball over the published quantiles, mean over P10/P50/P90.
        let pin = |y: f64, q: [f64; 3]| {
            levels
                .iter()
                .zip(q)
                .map(|(&l, f)| pinball(l, y, f))
                .sum::<f64>()
                / 3.0
        };
        let want = [
            pin(3.0, [-1.0, 0.0, 1.0]),
            pin(-0.5, [-1.0, 0.0, 1.0]),
            pin(1.5, [-1.0, 0.0, 1.0]),
            pin(0.0, [-1.0, 0.0, 1.0]),
            pin(0.0, [-3.0, 0.0, 3.0]),
            pin(0.0, [-1.5, 0.0, 1.5]),
            pin(0.0, [-1.5, 0.0, 1.5]),
        ]
        .iter()
        .sum::<f64>()
            / 7.0;
        assert!((k[0].pinball.unwrap() - want).abs() < 1e-12);
        let sum = s.summary();
        assert_eq!(
            (sum[0].coverage, sum[0].nominal),
            (Some(5.0 / 7.0), Some(0.8))
        );
    }

    /// A model whose P10-P90 band is far too narrow covers ~4% of standard
    /// normal actuals, one far too wide ~100%; calibrated live, the
    /// published band covers close to 80% either way.
    /// Coverage is counted here from the published batches, independently
    /// of the scorer's own count.
    #[test]
    fn calibration_brings_a_wrong_band_to_its_nominal_coverage() {
        let levels = [0.1, 0.5, 0.9];
        // Standard normal-ish actuals (sum of 12 uniforms), fixed seed.
        let mut seed = 7u64;
        let mut u = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let ys: Vec<f64> = (0..4000)
            .map(|_| (0..12).map(|_| u()).sum::<f64>() - 6.0)
            .collect();
        // Coverage of the published bands over the second half.
        let run = |calibration: Option<Calibration>, half_width: f64| {
            let mut s = Scorer::new(H, 1, &[1], 1, &levels, calibration);
            let (mut inside, mut n) = (0, 0);
            let mut last: Option<Vec<f64>> = None;
            for (t, &y) in (1..=4000i64).zip(&ys) {
                if let (Some(q), true) = (&last, t > 2000) {
                    n += 1;
                    inside += usize::from(q[0] <= y && y <= q[2]);
                }
                let out = s.observe(
                    &one_window(t * H, y),
                    batch_with_quantiles(t * H, &[0.0], &levels, &[-half_width, 0.0, half_width]),
                );
                last = Some(published(&out));
            }
            let c = inside as f64 / n as f64;
            let scored = s.summary()[0].coverage.unwrap_or(f64::NAN);
            (c, scored)
        };
        let cal = Some(Calibration { window: 100 });
        let (narrow, _) = run(None, 0.05);
        let (wide, _) = run(None, 5.0);
        assert!(narrow < 0.1 && wide > 0.99, "raw coverage {narrow} {wide}");
        for half_width in [0.05, 5.0] {
            let (c, scored) = run(cal, half_width);
            assert!(
                (0.74..=0.86).contains(&c),
                "calibrated coverage {c} ({half_width})"
            );
            // The scorer's own count (all 4000 hours) agrees in range.
            assert!((0.7..=0.9).contains(&scored), "scored coverage {scored}");
        }
    }

    /// The live record encoded in place is the record of the exported
    /// copy, byte for byte, at every point of a key's life: pending
    /// forecasts of two model versions (interleaved, so the record's own
    /// version order differs from the scorer's table), quantiles,
    /// calibration windows filling, with and without a chooser's state, and
    /// a key the scorer does not know. It decodes to the exported state.
    #[test]
    fn a_live_record_encoded_in_place_is_the_exported_states_record() {
        use crate::state::{decode_live, encode_live, ChoiceKeyState, LiveKeyState};
        let levels = [0.1, 0.5, 0.9];
        let mut s = Scorer::new(
            H,
            3,
            &[1, 2, 3],
            2,
            &levels,
            Some(Calibration { window: 3 }),
        );
        // A version the key never uses first, so table indices and the
        // record's indices differ.
        s.version_index("unused");
        let choice = ChoiceKeyState {
            recent: vec![1.0, 2.5],
            level: Some(0.25),
            serving: "ets".into(),
            ..ChoiceKeyState::default()
        };
        let check = |s: &Scorer, at: i64| {
            for c in [None, Some(&choice)] {
                for key in ["k", "nope"] {
                    let want = encode_live(&LiveKeyState {
                        score: s.export(key),
                        choice: c.cloned(),
                    })
                    .unwrap();
                    let got = s.encode_live(key, c).unwrap();
                    assert_eq!(got, want, "hour {at}, key {key}, choice {}", c.is_some());
                    let back = decode_live(&got).unwrap();
                    assert_eq!(back.score, s.export(key), "hour {at}");
                    assert_eq!(back.choice.as_ref(), c, "hour {at}");
                }
            }
        };
        check(&s, 0);
        for t in 1..=12i64 {
            let version = if t % 3 == 0 { "v2" } else { "v1" };
            let y = (t as f64 * 0.7).sin() * 3.0;
            let point = [y + 0.5, y - 0.25, 1.0];
            let q = [
                y - 1.0,
                y + 0.5,
                y + 1.0,
                y - 2.0,
                y,
                y + 2.0,
                -1.0,
                1.0,
                3.0,
            ];
            s.observe(
                &one_window(t * H, y),
                batch_of_version(t * H, version, &point, &levels, &q),
            );
            check(&s, t);
        }
        let st = s.export("k").unwrap();
        // The record saw both versions pending and calibration scores.
        assert!(st.pending.iter().any(|p| p.1 == "v2"));
        assert!(st.pending.iter().any(|p| p.1 == "v1"));
        assert!(st.conformity.iter().any(|c| !c.is_empty()));
    }
}
