//! Rolling-origin backtests on timestamped streams: read NAB-style CSV or
//! events Parquet, window it with the pipeline's own window stage, then feed
//! every key's windows to stream models one at a time, asking for a
//! forecast at each origin before the origin's window is fed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMillisecondType};

use super::m4::csv_rows;
use crate::accuracy::{self, Scores};
use crate::baselines::Baseline;
use crate::config::PipelineConfig;
use crate::decode::{parse_time, RawTime};
use crate::error::{Error, Result};
use crate::schema::{events_schema, windows, EventsBuilder};
use crate::window::bounded::{run_to_end, End};
use crate::window::{WindowSpec, WindowStage};

/// One key's regular series of window aggregates (the first value field).
#[derive(Debug, Clone, PartialEq)]
pub struct KeySeries {
    /// The key; a key whose series was reset by a long gap contributes one
    /// series per segment, named `key`, `key#2`, ...
    pub key: String,
    /// Window start times (ms since epoch, UTC), one per window.
    pub start_ms: Vec<i64>,
    pub values: Vec<f64>,
    /// Windows without events, filled by the pipeline's fill policy.
    pub filled: usize,
}

/// Reads a NAB-style CSV (`timestamp,value`; key = the file stem) into an
/// events batch (schema of `schema::events_schema`, partition 0, offset = line
/// number). Times are parsed with the pipeline's time format; the value goes
/// to the first value field (the pipeline must have exactly one).
pub fn read_nab_csv(cfg: &PipelineConfig, path: &Path) -> Result<RecordBatch> {
    let fields = &cfg.decode.value_fields;
    if fields.len() != 1 {
        bail!(
            "{}: a `timestamp,value` CSV feeds exactly one value field, the pipeline has {}",
            path.display(),
            fields.len()
        );
    }
    let key = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| eval_error!("{}: no usable file stem for the key", path.display()))?
        .to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut b = EventsBuilder::new(events_schema(fields), text.len() / 24 + 1);
    for (lineno, cells) in csv_rows(&text) {
        let (Some(&t), Some(&v)) = (cells.first(), cells.get(1)) else {
            bail!(
                "{}: line {lineno}: expected `timestamp,value`, got {:?}",
                path.display(),
                cells.join(",")
            );
        };
        if lineno == 1 && t.eq_ignore_ascii_case("timestamp") {
            continue;
        }
        let ts = parse_time(&RawTime::Text(t.to_string()), cfg.decode.time_format)
            .map_err(|e| eval_error!("{}: line {lineno}: bad timestamp: {e}", path.display()))?;
        let value: f64 = v.parse().map_err(|_| {
            eval_error!(
                "{}: line {lineno}: value {v:?} is not a number",
                path.display()
            )
        })?;
        if !value.is_finite() {
            bail!(
                "{}: line {lineno}: value {v:?} is not finite",
                path.display()
            );
        }
        b.push(&key, ts, 0, lineno as i64, &[value]);
    }
    Ok(b.finish())
}

/// Reads every input (`.parquet` as written by `generate::write_parquet` or
/// any Parquet with the pipeline's columns; anything else as a NAB CSV) into
/// one events batch. Unusable Parquet rows are skipped with a warning.
pub fn read_stream_inputs(cfg: &PipelineConfig, inputs: &[PathBuf]) -> Result<RecordBatch> {
    let schema = events_schema(&cfg.decode.value_fields);
    let mut parts = Vec::with_capacity(inputs.len());
    for p in inputs {
        let is_parquet = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        if is_parquet {
            let (events, dead) =
                crate::source::parquet::read_parquet_events(cfg, std::slice::from_ref(p))
                    .map_err(|e| eval_error!("reading {}: {e}", p.display()))?;
            if !dead.is_empty() {
                tracing::warn!(file = %p.display(), rows = dead.len(), first = %dead[0].reason, "skipped unusable rows");
            }
            parts.push(events);
        } else {
            parts.push(read_nab_csv(cfg, p)?);
        }
    }
    Ok(arrow::compute::concat_batches(&schema, &parts)?)
}

/// Aggregates events onto the pipeline's window grid with the library's own
/// [`WindowStage`] (one batch, partition 0, then ticks past the idle timeout
/// until nothing more closes), giving one regular series per key (per
/// segment when a long gap reset the key). Windows filled after a key's last
/// event (before the gap rule ends it) are trimmed. The final, still-open
/// window of the stream never closes, as in the streaming job. Series come
/// out sorted by key.
pub fn window_series(cfg: &PipelineConfig, events: &RecordBatch) -> Result<Vec<KeySeries>> {
    let mut stage = WindowStage::new(WindowSpec::from_config(cfg));
    // Per key: index into `out` of its current segment, and whether the
    // next window starts a new one.
    let mut current: HashMap<String, (usize, bool)> = HashMap::new();
    let mut segments_of: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(KeySeries, Vec<bool>)> = Vec::new();
    // One batch (the files are concatenated, not merged in time order), then
    // idle ticks until nothing more closes.
    run_to_end(&mut stage, events, usize::MAX, End::Idle, |closed| {
        if let Some(w) = &closed.windows {
            let keys = w.column(windows::KEY).as_string::<i32>();
            let starts = w
                .column(windows::WINDOW_START)
                .as_primitive::<TimestampMillisecondType>();
            let filled = w.column(windows::FILLED).as_boolean();
            let vals = w.column(windows::FIRST_AGG).as_primitive::<Float64Type>();
            for i in 0..w.num_rows() {
                let key = keys.value(i);
                let entry = current.entry(key.to_string()).or_insert((usize::MAX, true));
                if entry.1 {
                    let n = segments_of.entry(key.to_string()).or_insert(0);
                    *n += 1;
                    let name = if *n == 1 {
                        key.to_string()
                    } else {
                        format!("{key}#{n}")
                    };
                    out.push((
                        KeySeries {
                            key: name,
                            start_ms: Vec::new(),
                            values: Vec::new(),
                            filled: 0,
                        },
                        Vec::new(),
                    ));
                    *entry = (out.len() - 1, false);
                }
                let (ks, fl) = &mut out[entry.0];
                let v = if vals.is_null(i) {
                    f64::NAN
                } else {
                    vals.value(i)
                };
                ks.start_ms.push(starts.value(i));
                ks.values.push(v);
                fl.push(filled.value(i));
            }
        }
        for k in &closed.ended_keys {
            if let Some(e) = current.get_mut(k.as_ref()) {
                e.1 = true;
            }
        }
    });
    let mut series = Vec::with_capacity(out.len());
    for (mut ks, fl) in out {
        let keep = fl.iter().rposition(|f| !f).map_or(0, |p| p + 1);
        ks.start_ms.truncate(keep);
        ks.values.truncate(keep);
        ks.filled = fl[..keep].iter().filter(|f| **f).count();
        if let Some(i) = ks.values.iter().position(|v| !v.is_finite()) {
            bail!(
                "key `{}`: window {} has no finite value (fill = \"missing\"?); evaluate with window.fill = \"ffill\" or \"zero\"",
                ks.key,
                crate::time::rfc3339_ms(ks.start_ms[i])
            );
        }
        if !ks.values.is_empty() {
            series.push(ks);
        }
    }
    series.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(series)
}

/// A model that consumes a key's windows one at a time, in time order, and
/// can forecast the next `horizon` windows after any of them. The online
/// recurrent model fits this shape directly (its carried state is its
/// history); batch forecasters are adapted by [`RefitBaseline`].
pub trait StreamModel {
    /// Name shown in reports.
    fn name(&self) -> String;
    /// Start a new series (a new key or a key's new segment): forget state.
    fn reset(&mut self, key: &str) -> Result<()>;
    /// Take the next window (its start time and aggregate).
    fn observe(&mut self, window_start_ms: i64, value: f64) -> Result<()>;
    /// Forecast the `horizon` windows after the last observed one. Called by
    /// the harness only at origins; an online model may compute it in
    /// `observe` and return it here. Must return `horizon` finite values.
    fn forecast(&mut self, horizon: usize) -> Result<Vec<f64>>;
}

/// A [`Baseline`] as a [`StreamModel`]: keeps the windows seen so far and
/// refits on all of them at every forecast.
pub struct RefitBaseline {
    name: String,
    inner: Box<dyn Baseline + Send + Sync>,
    history: Vec<f64>,
}

impl RefitBaseline {
    pub fn new(name: &str, inner: Box<dyn Baseline + Send + Sync>) -> Self {
        RefitBaseline {
            name: name.to_string(),
            inner,
            history: Vec::new(),
        }
    }
}

impl StreamModel for RefitBaseline {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn reset(&mut self, _key: &str) -> Result<()> {
        self.history.clear();
        Ok(())
    }
    fn observe(&mut self, _window_start_ms: i64, value: f64) -> Result<()> {
        self.history.push(value);
        Ok(())
    }
    fn forecast(&mut self, horizon: usize) -> Result<Vec<f64>> {
        Ok(self.inner.forecast(&self.history, horizon))
    }
}

/// Settings of a rolling-origin backtest.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Windows ahead to forecast (and score) at every origin.
    pub horizon: usize,
    /// Seasonal period in windows (MASE scale).
    pub season: usize,
    /// At most this many origins per series.
    pub max_origins: usize,
    /// Origins lie in the last `tail_fraction` of each series (0.2).
    pub tail_fraction: f64,
}

/// Origins of a series of `n` windows: from `ceil((1 − tail)·n)` (at least 1)
/// to `n − horizon`, every `step` windows, `step` the smallest spacing that
/// keeps at most `max_origins`. Empty when the series is too short.
pub fn rolling_origins(
    n: usize,
    horizon: usize,
    max_origins: usize,
    tail_fraction: f64,
) -> Vec<usize> {
    let tail = tail_fraction.clamp(0.0, 1.0);
    let first = ((n as f64) * (1.0 - tail)).ceil().max(1.0) as usize;
    if max_origins == 0 || n < horizon.max(1) || first > n - horizon.max(1) {
        return Vec::new();
    }
    let last = n - horizon.max(1);
    let count = last - first + 1;
    let step = count.div_ceil(max_origins).max(1);
    (first..=last).step_by(step).collect()
}

/// Pooled error statistics (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Agg {
    /// Forecasts scored ((key, origin) pairs).
    pub n: usize,
    pub mae: f64,
    pub rmse: f64,
    pub smape: f64,
    /// Mean over the forecasts whose MASE scale is defined and non-zero.
    pub mase: f64,
    /// Forecasts left out of `mase` (constant history: scale 0).
    pub mase_undefined: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    n: usize,
    mae: f64,
    mse: f64,
    smape: f64,
    mase: f64,
    mase_n: usize,
}

impl Acc {
    fn add(&mut self, s: &Scores) {
        self.n += 1;
        self.mae += s.mae;
        self.mse += s.rmse * s.rmse;
        self.smape += s.smape;
        if s.mase.is_finite() {
            self.mase += s.mase;
            self.mase_n += 1;
        }
    }
    fn merge(&mut self, o: &Acc) {
        self.n += o.n;
        self.mae += o.mae;
        self.mse += o.mse;
        self.smape += o.smape;
        self.mase += o.mase;
        self.mase_n += o.mase_n;
    }
    fn finish(&self) -> Agg {
        let n = self.n.max(1) as f64;
        Agg {
            n: self.n,
            mae: self.mae / n,
            rmse: (self.mse / n).sqrt(),
            smape: self.smape / n,
            mase: if self.mase_n > 0 {
                self.mase / self.mase_n as f64
            } else {
                f64::NAN
            },
            mase_undefined: self.n - self.mase_n,
        }
    }
}

/// One model on one key.
#[derive(Debug, Clone)]
pub struct KeyModelResult {
    pub model: String,
    /// Forecast at each origin (same order as [`KeyResult::origins`]).
    pub forecasts: Vec<Vec<f64>>,
    pub one_step: Agg,
    pub h_step: Agg,
}

/// All models on one key.
#[derive(Debug, Clone)]
pub struct KeyResult {
    pub key: String,
    pub windows: usize,
    pub origins: Vec<usize>,
    pub models: Vec<KeyModelResult>,
}

/// One model over all keys (a row of the printed table).
#[derive(Debug, Clone)]
pub struct StreamRow {
    pub model: String,
    pub keys: usize,
    pub one_step: Agg,
    pub h_step: Agg,
    pub seconds: f64,
}

/// Result of [`backtest_stream`]: a row per model, details per key.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub horizon: usize,
    pub season: usize,
    pub rows: Vec<StreamRow>,
    pub keys: Vec<KeyResult>,
    /// Series too short for a single origin, with their length.
    pub skipped: Vec<(String, usize)>,
}

/// Rolling-origin backtest of every model on every series. For each series
/// and model: `reset`, then for `t = 0..=last origin`: at an origin ask for
/// the forecast (the model has observed exactly windows `0..t`), then feed
/// window `t`. Windows after the last origin are never fed.
pub fn backtest_stream(
    series: &[KeySeries],
    models: &mut [Box<dyn StreamModel>],
    opts: &StreamOptions,
) -> Result<StreamReport> {
    let h = opts.horizon.max(1);
    let m = opts.season.max(1);
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    let mut totals: Vec<(Acc, Acc, f64)> =
        vec![(Acc::default(), Acc::default(), 0.0); models.len()];
    for s in series {
        let origins = rolling_origins(s.values.len(), h, opts.max_origins, opts.tail_fraction);
        if origins.is_empty() {
            skipped.push((s.key.clone(), s.values.len()));
            continue;
        }
        let last = *origins.last().expect("non-empty");
        let mut kr = KeyResult {
            key: s.key.clone(),
            windows: s.values.len(),
            origins: origins.clone(),
            models: Vec::new(),
        };
        for (mi, model) in models.iter_mut().enumerate() {
            let started = Instant::now();
            let name = model.name();
            model.reset(&s.key)?;
            let mut forecasts = Vec::with_capacity(origins.len());
            let mut next = origins.iter().peekable();
            for t in 0..=last {
                if next.peek() == Some(&&t) {
                    next.next();
                    let f = model.forecast(h)?;
                    if f.len() != h {
                        bail!("stream model `{name}`: key `{}`: origin {t}: expected {h} values, got {}", s.key, f.len());
                    }
                    if let Some((i, v)) = f.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                        bail!("stream model `{name}`: key `{}`: origin {t}: step {} is not finite ({v})", s.key, i + 1);
                    }
                    forecasts.push(f);
                }
                if t < last {
                    model.observe(s.start_ms[t], s.values[t])?;
                }
            }
            let (mut one, mut multi) = (Acc::default(), Acc::default());
            for (&o, f) in origins.iter().zip(&forecasts) {
                let hist = &s.values[..o];
                let actual = &s.values[o..o + h];
                let score = |a: &[f64], f: &[f64]| {
                    accuracy::score(hist, a, f, m)
                        .map_err(|e| eval_error!("key `{}`: origin {o}: {e}", s.key))
                };
                one.add(&score(&actual[..1], &f[..1])?);
                multi.add(&score(actual, f)?);
            }
            let t = &mut totals[mi];
            t.0.merge(&one);
            t.1.merge(&multi);
            t.2 += started.elapsed().as_secs_f64();
            kr.models.push(KeyModelResult {
                model: name,
                forecasts,
                one_step: one.finish(),
                h_step: multi.finish(),
            });
        }
        keys.push(kr);
    }
    let rows = models
        .iter()
        .zip(&totals)
        .map(|(mdl, (one, multi, secs))| StreamRow {
            model: mdl.name(),
            keys: keys.len(),
            one_step: one.finish(),
            h_step: multi.finish(),
            seconds: *secs,
        })
        .collect();
    Ok(StreamReport {
        horizon: h,
        season: m,
        rows,
        keys,
        skipped,
    })
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 1e5 {
        format!("{v:.4e}")
    } else {
        format!("{v:.3}")
    }
}

impl StreamReport {
    /// The per-model table (pooled over keys and origins) as Markdown.
    pub fn to_markdown(&self) -> String {
        let origins: usize = self.keys.iter().map(|k| k.origins.len()).sum();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} series, {} origins in all, horizon {} windows, MASE season {} windows; pooled over keys and origins \
             (MAE/RMSE are in the data's units: with keys of different scales they are dominated by the largest).\n",
            self.keys.len(),
            origins,
            self.horizon,
            self.season
        );
        let _ = writeln!(
            s,
            "| model | 1-step MAE | 1-step RMSE | 1-step sMAPE | 1-step MASE | {h}-step MAE | {h}-step RMSE | {h}-step sMAPE | {h}-step MASE | seconds |",
            h = self.horizon
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
                r.model,
                fmt_num(r.one_step.mae),
                fmt_num(r.one_step.rmse),
                fmt_num(r.one_step.smape),
                fmt_num(r.one_step.mase),
                fmt_num(r.h_step.mae),
                fmt_num(r.h_step.rmse),
                fmt_num(r.h_step.smape),
                fmt_num(r.h_step.mase),
                r.seconds
            );
        }
        let undefined: usize = self
            .rows
            .iter()
            .map(|r| r.h_step.mase_undefined)
            .max()
            .unwrap_or(0);
        if undefined > 0 {
            let _ = writeln!(s, "\nMASE leaves out {undefined} forecasts whose history had a zero seasonal-difference scale.");
        }
        if !self.skipped.is_empty() {
            let list: Vec<String> = self
                .skipped
                .iter()
                .map(|(k, n)| format!("{k} ({n} windows)"))
                .collect();
            let _ = writeln!(
                s,
                "\nSkipped (too short for one origin): {}",
                list.join(", ")
            );
        }
        s
    }

    /// `horizon`-step MASE per key and model, as Markdown.
    pub fn per_key_markdown(&self) -> String {
        let mut s = String::new();
        let names: Vec<String> = self.rows.iter().map(|r| r.model.clone()).collect();
        let _ = writeln!(
            s,
            "| key | windows | origins | {} |",
            names
                .iter()
                .map(|n| format!("{n} {}-step MASE", self.horizon))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|---|---:|---:|{}", "---:|".repeat(names.len()));
        for k in &self.keys {
            let cells: Vec<String> = k.models.iter().map(|m| fmt_num(m.h_step.mase)).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                k.key,
                k.windows,
                k.origins.len(),
                cells.join(" | ")
            );
        }
        s
    }
}
