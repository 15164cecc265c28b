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
//! Invariants: windows are taken in close order (the window stage emits a
//! batch sorted by window end), and a key's actual is scored before that
//! window's own forecast is registered. Memory per key: `horizon` pending
//! forecasts of `steps.len()` f32 values plus 16 bytes each, `season` f32
//! actuals, and 12 bytes per scored step. Scores are not part of durable
//! state: after a restart, forecasts published before it are not scored.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeListArray, Float64Array, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt32Type};

use crate::schema::{forecasts as fc, windows as wc};

// Series names: see `telemetry` for the catalogue.
use crate::telemetry::{
    LIVE_ABS_ERROR_SUM, LIVE_SCALED_ERROR_SUM, LIVE_SCALED_SCORED, LIVE_SCORED, LIVE_SMAPE_SUM,
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
}

#[derive(Debug, Default)]
struct KeyScore {
    /// Pending forecasts, oldest first: (origin window end, version index,
    /// source index); their values are in `values`, `steps.len()` each.
    pending: VecDeque<(i64, u16, u8)>,
    values: VecDeque<f32>,
    /// The last `season` actuals (for the seasonal scale).
    recent: VecDeque<f32>,
    scale_sum: f64,
    scale_n: u32,
    /// Per scored step: (abs sum, smape sum, scaled sum, n, n scaled).
    sums: Vec<(f64, f64, f64, u32, u32)>,
}

/// The live scorer (on the compute thread, beside the model).
pub struct Scorer {
    slide_ms: i64,
    horizon: usize,
    /// 1-based steps scored.
    steps: Vec<usize>,
    season: usize,
    keys: HashMap<Arc<str>, KeyScore>,
    versions: Vec<Arc<str>>,
    /// This batch's sums per (version, source, step), for the metrics.
    batch_sums: HashMap<(u16, u8, usize), BatchSums>,
    /// Since the start, per (source, step), all keys and versions.
    totals: std::collections::BTreeMap<(u8, usize), BatchSums>,
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
}

const SOURCES: [&str; 2] = ["model", "baseline"];

/// Sums of absolute errors, sMAPE terms, scaled errors; forecasts scored,
/// and those with a scale.
type BatchSums = (f64, f64, f64, u64, u64);

impl Scorer {
    /// `steps` are 1-based horizon steps (those beyond `horizon` ignored).
    pub fn new(slide_ms: i64, horizon: usize, steps: &[usize], season: usize) -> Self {
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
            keys: HashMap::new(),
            versions: Vec::new(),
            batch_sums: HashMap::new(),
            totals: std::collections::BTreeMap::new(),
        }
    }

    /// Scores the closed `windows` against earlier forecasts, then keeps
    /// `forecasts` (one row per window row, as the model stage makes them)
    /// for the windows to come.
    pub fn observe(&mut self, windows: &RecordBatch, forecasts: &RecordBatch) {
        let n = windows.num_rows();
        if n == 0 || forecasts.num_rows() != n || self.steps.is_empty() {
            return;
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
        let Some(lists) = forecasts
            .column(fc::FORECAST)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
        else {
            return;
        };
        let Some(flat) = lists.values().as_any().downcast_ref::<Float64Array>() else {
            return;
        };
        let width = lists.value_length() as usize;
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
            let source = u8::from(sources.value(i) != SOURCES[0]);
            let row = &flat.values()[i * width..(i + 1) * width];
            let st = key_state(&mut self.keys, key, self.steps.len());
            st.pending.push_back((end, version, source));
            st.values
                .extend(self.steps.iter().map(|&s| row[s - 1] as f32));
        }
        self.flush_metrics();
    }

    /// Live accuracy since the start per source and step, all keys.
    pub fn summary(&self) -> Vec<SummaryRow> {
        self.totals
            .iter()
            .map(|(&(source, step), a)| SummaryRow {
                source: SOURCES[usize::from(source)],
                step,
                scored: a.3,
                mae: a.0 / a.3.max(1) as f64,
                smape: a.1 / a.3.max(1) as f64,
                mase: (a.4 > 0).then(|| a.2 / a.4 as f64),
            })
            .collect()
    }

    /// One update per (version, source, step) and batch, not per forecast.
    fn flush_metrics(&mut self) {
        for ((version, source, step), a) in self.batch_sums.drain() {
            let t = self.totals.entry((source, step)).or_default();
            t.0 += a.0;
            t.1 += a.1;
            t.2 += a.2;
            t.3 += a.3;
            t.4 += a.4;
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
            metrics::counter!(LIVE_SCORED, &labels).increment(a.3);
            metrics::gauge!(LIVE_ABS_ERROR_SUM, &labels).increment(a.0);
            metrics::gauge!(LIVE_SMAPE_SUM, &labels).increment(a.1);
            if a.4 > 0 {
                metrics::counter!(LIVE_SCALED_SCORED, &labels).increment(a.4);
                metrics::gauge!(LIVE_SCALED_ERROR_SUM, &labels).increment(a.2);
            }
        }
    }

    /// A key's series ended (gap, TTL, eviction, revocation): forget it.
    pub fn end_keys(&mut self, keys: &[Arc<str>]) {
        for k in keys {
            self.keys.remove(k);
        }
    }

    /// Running means per scored step of `key` (empty when unknown).
    pub fn key_scores(&self, key: &str) -> Vec<StepScore> {
        let Some(st) = self.keys.get(key) else {
            return Vec::new();
        };
        self.steps
            .iter()
            .zip(&st.sums)
            .map(|(&step, &(abs, smape, scaled, n, ns))| StepScore {
                step,
                scored: n,
                mae: if n > 0 { abs / f64::from(n) } else { f64::NAN },
                smape: if n > 0 {
                    smape / f64::from(n)
                } else {
                    f64::NAN
                },
                mase: (ns > 0).then(|| scaled / f64::from(ns)),
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
        let (slide, w) = (self.slide_ms, self.steps.len());
        let st = key_state(&mut self.keys, key, w);
        let scale = (st.scale_n > 0)
            .then(|| st.scale_sum / f64::from(st.scale_n))
            .filter(|s| *s > 0.0);
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
            let smape = if denom > 0.0 {
                200.0 * err / denom
            } else {
                0.0
            };
            let scaled = scale.map(|sc| err / sc);
            let sums = &mut st.sums[s];
            sums.0 += err;
            sums.1 += smape;
            sums.3 += 1;
            let agg = self.batch_sums.entry((version, source, h)).or_default();
            agg.0 += err;
            agg.1 += smape;
            agg.3 += 1;
            if let Some(e) = scaled {
                sums.2 += e;
                sums.4 += 1;
                agg.2 += e;
                agg.4 += 1;
            }
        }
        let (horizon, season) = (self.horizon as i64, self.season);
        // Forecasts with no step left to score are done.
        while let Some(&(origin, _, _)) = st.pending.front() {
            if end - origin >= horizon * slide {
                st.pending.pop_front();
                st.values.drain(..w);
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

/// The key's score state, created on first use.
fn key_state<'a>(
    keys: &'a mut HashMap<Arc<str>, KeyScore>,
    key: &str,
    steps: usize,
) -> &'a mut KeyScore {
    if !keys.contains_key(key) {
        keys.insert(
            Arc::from(key),
            KeyScore {
                sums: vec![(0.0, 0.0, 0.0, 0, 0); steps],
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
        let mut s = Scorer::new(H, 2, &[1, 2], 1);
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
        s.observe(&windows(&[(H, 5.0)]), &forecasts(&[(H, [10.0, 20.0])]));
        assert_eq!(s.key_scores("k")[0].scored, 0, "nothing to score yet");
        s.observe(
            &windows(&[(2 * H, 12.0)]),
            &forecasts(&[(2 * H, [0.0, 0.0])]),
        );
        s.observe(
            &windows(&[(3 * H, 16.0)]),
            &forecasts(&[(3 * H, [0.0, 0.0])]),
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
}
