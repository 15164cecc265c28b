//! Delivery verification: compares the forecasts a job published (the
//! *actual* topic) with a *reference* (another forecast topic, or the
//! output of `streamcast backfill`) and counts what the delivery contract
//! forbids. `streamcast verify` is its command line.
//!
//! Records are identified by `(key, window_end)` (`window_end_ms`). What
//! counts as what:
//!
//! - `reference`: distinct `(key, window_end)` in the reference; further
//!   copies there are ignored (the first wins) and counted in
//!   `reference_duplicates`.
//! - `actual`: records read from the actual topic, copies included.
//! - `missing`: a `(key, window_end)` of the reference absent from actual
//!   (at-least-once is broken).
//! - `unexpected`: a `(key, window_end)` of actual absent from the reference.
//! - `duplicates`: copies of a `(key, window_end)` in actual beyond its first
//!   (exactly-once is broken; at-least-once allows them).
//! - `duplicates_differing`: those copies whose values differ from the first
//!   copy's (a recomputation that did not reproduce the forecast).
//! - `differing`: a `(key, window_end)` in both where some copy's values
//!   differ from the reference's.
//!
//! Values are `forecast` and `quantiles`; two values `a`, `r` (`r` the
//! reference, or the first copy) differ when `|a - r| > tolerance *
//! max(1, |r|)` (default tolerance [`DEFAULT_TOLERANCE`]); different
//! horizons, quantile sets or a NaN/infinity on one side only always differ.
//! `model_version` and `source` are not compared (they are counted per
//! `source`). So `actual = (reference - missing) + unexpected + duplicates`.
//!
//! Topics are read with `isolation.level=read_committed` (records of
//! aborted or open transactions never count), every partition from its
//! beginning up to the high watermark it had when reading started, so a
//! read terminates even while a producer keeps writing.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Schema, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::broker::{client_config, Connection};
use crate::error::{Error, Result};
use crate::schema::forecasts;
use crate::sink::records::{forecast_records, ForecastRecord};

/// Relative tolerance of a value against its reference (of `max(1, |ref|)`).
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

/// At most this many examples of each kind are kept.
pub const MAX_EXAMPLES: usize = 5;

/// The outcome of [`compare`]; see the module docs for what counts as what.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub reference: u64,
    pub reference_duplicates: u64,
    pub actual: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub duplicates: u64,
    pub duplicates_differing: u64,
    pub differing: u64,
    pub tolerance: f64,
    /// The largest finite difference of any actual value from its
    /// reference value (within tolerance or not); `None` when nothing
    /// could be compared.
    pub worst: Option<WorstDifference>,
    /// Records per `source` value (`model`, `baseline`, ...), copies included.
    pub by_source: BySource,
    pub examples: Examples,
}

impl Verdict {
    /// Nothing missing, nothing differing and, when `exactly_once`, no duplicates.
    pub fn passes(&self, exactly_once: bool) -> bool {
        self.missing == 0 && self.differing == 0 && (!exactly_once || self.duplicates == 0)
    }
}

/// Records per `source` field value on each side.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BySource {
    pub reference: BTreeMap<String, u64>,
    pub actual: BTreeMap<String, u64>,
}

/// Up to [`MAX_EXAMPLES`] of each kind, in `(key, window_end)` order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Examples {
    pub missing: Vec<Example>,
    pub unexpected: Vec<Example>,
    pub duplicates: Vec<Example>,
    pub duplicates_differing: Vec<Example>,
    pub differing: Vec<Example>,
}

/// One finding. `expected` is the reference record (for duplicates: the
/// first copy), `got` the actual record (for duplicates: the extra copy).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Example {
    pub key: String,
    pub window_end: String,
    pub window_end_ms: i64,
    pub expected: Option<ForecastRecord>,
    pub got: Option<ForecastRecord>,
    /// The largest relative difference, `|a - r| / max(1, |r|)`, when finite.
    pub difference: Option<f64>,
    /// What differs when it is not a number (shape, NaN), or which copy.
    pub note: Option<String>,
}

/// Where the largest difference from the reference was.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorstDifference {
    pub key: String,
    pub window_end: String,
    /// `forecast[i]` or `quantiles[q][i]`.
    pub at: String,
    pub reference: f64,
    pub actual: f64,
    pub absolute: f64,
    /// `absolute / max(1, |reference|)`, the number the tolerance bounds.
    pub relative: f64,
}

/// How far one record's values are from another's.
#[derive(Debug, Default)]
struct ValueDiff {
    /// Largest finite relative difference, with where and the two values.
    worst: Option<(f64, String, f64, f64)>,
    /// A difference no tolerance covers (shape, non-finite on one side).
    mismatch: Option<String>,
}

impl ValueDiff {
    fn relative(&self) -> f64 {
        self.worst.as_ref().map_or(0.0, |w| w.0)
    }

    fn differs(&self, tolerance: f64) -> bool {
        self.mismatch.is_some() || self.relative() > tolerance
    }

    fn note(&mut self, what: String) {
        self.mismatch.get_or_insert(what);
    }

    /// Compares `a` with `r` element by element; `label` names the list.
    fn values(&mut self, label: &str, r: &[f64], a: &[f64]) {
        if r.len() != a.len() {
            self.note(format!("{label}: {} values vs {}", r.len(), a.len()));
            return;
        }
        for (i, (&r, &a)) in r.iter().zip(a).enumerate() {
            if r.is_finite() && a.is_finite() {
                let rel = (a - r).abs() / r.abs().max(1.0);
                if self.worst.as_ref().is_none_or(|w| rel > w.0) {
                    self.worst = Some((rel, format!("{label}[{i}]"), r, a));
                }
            } else if !(r == a || (r.is_nan() && a.is_nan())) {
                self.note(format!("{label}[{i}]: {r} vs {a}"));
            }
        }
    }
}

/// Compares `actual`'s values with `reference`'s (`forecast`, then quantiles).
fn value_diff(reference: &ForecastRecord, actual: &ForecastRecord) -> ValueDiff {
    let mut d = ValueDiff::default();
    d.values("forecast", &reference.forecast, &actual.forecast);
    let (rq, aq) = (&reference.quantiles, &actual.quantiles);
    if rq.keys().ne(aq.keys()) {
        d.note(format!(
            "quantiles {:?} vs {:?}",
            rq.keys().collect::<Vec<_>>(),
            aq.keys().collect::<Vec<_>>()
        ));
        return d;
    }
    for (q, r) in rq {
        d.values(&format!("quantiles[{q}]"), r, &aq[q]);
    }
    d
}

fn example(
    id: &(String, i64),
    expected: Option<&ForecastRecord>,
    got: Option<&ForecastRecord>,
    diff: Option<&ValueDiff>,
    note: Option<String>,
) -> Example {
    let window_end = expected
        .or(got)
        .map_or_else(|| crate::time::rfc3339_ms(id.1), |r| r.window_end.clone());
    Example {
        key: id.0.clone(),
        window_end,
        window_end_ms: id.1,
        expected: expected.cloned(),
        got: got.cloned(),
        difference: diff.and_then(|d| d.worst.as_ref().map(|w| w.0)),
        note: diff.and_then(|d| d.mismatch.clone()).or(note),
    }
}

fn push(list: &mut Vec<Example>, ex: impl FnOnce() -> Example) {
    if list.len() < MAX_EXAMPLES {
        list.push(ex());
    }
}

/// Compares the records of `actual` with those of `reference` by
/// `(key, window_end)`; `tolerance` is relative (see the module docs).
/// Pure: the order of `actual` decides which copy is "first".
pub fn compare(reference: &[ForecastRecord], actual: &[ForecastRecord], tolerance: f64) -> Verdict {
    let id = |r: &ForecastRecord| (r.key.clone(), r.window_end_ms);
    let mut by_source = BySource::default();
    let mut refs: BTreeMap<(String, i64), &ForecastRecord> = BTreeMap::new();
    let mut reference_duplicates = 0;
    for r in reference {
        *by_source.reference.entry(r.source.clone()).or_default() += 1;
        match refs.entry(id(r)) {
            Entry::Vacant(e) => {
                e.insert(r);
            }
            Entry::Occupied(_) => reference_duplicates += 1,
        }
    }
    let mut acts: BTreeMap<(String, i64), Vec<&ForecastRecord>> = BTreeMap::new();
    for a in actual {
        *by_source.actual.entry(a.source.clone()).or_default() += 1;
        acts.entry(id(a)).or_default().push(a);
    }

    let mut v = Verdict {
        reference: refs.len() as u64,
        reference_duplicates,
        actual: actual.len() as u64,
        missing: 0,
        unexpected: 0,
        duplicates: 0,
        duplicates_differing: 0,
        differing: 0,
        tolerance,
        worst: None,
        by_source,
        examples: Examples::default(),
    };
    for (k, r) in &refs {
        if !acts.contains_key(k) {
            v.missing += 1;
            push(&mut v.examples.missing, || {
                example(k, Some(r), None, None, None)
            });
        }
    }
    for (k, copies) in &acts {
        let first = copies[0];
        let n = copies.len();
        for (i, copy) in copies.iter().enumerate().skip(1) {
            v.duplicates += 1;
            let d = value_diff(first, copy);
            let note = format!("copy {} of {n}", i + 1);
            push(&mut v.examples.duplicates, || {
                example(k, Some(first), Some(copy), None, Some(note.clone()))
            });
            if d.differs(tolerance) {
                v.duplicates_differing += 1;
                push(&mut v.examples.duplicates_differing, || {
                    example(k, Some(first), Some(copy), Some(&d), Some(note))
                });
            }
        }
        let Some(r) = refs.get(k) else {
            v.unexpected += 1;
            push(&mut v.examples.unexpected, || {
                example(k, None, Some(first), None, None)
            });
            continue;
        };
        let mut first_differing: Option<(&ForecastRecord, ValueDiff)> = None;
        for copy in copies {
            let d = value_diff(r, copy);
            if let Some((rel, at, rv, av)) = &d.worst {
                if v.worst.as_ref().is_none_or(|w| *rel > w.relative) {
                    v.worst = Some(WorstDifference {
                        key: k.0.clone(),
                        window_end: r.window_end.clone(),
                        at: at.clone(),
                        reference: *rv,
                        actual: *av,
                        absolute: (av - rv).abs(),
                        relative: *rel,
                    });
                }
            }
            if first_differing.is_none() && d.differs(tolerance) {
                first_differing = Some((copy, d));
            }
        }
        if let Some((copy, d)) = first_differing {
            v.differing += 1;
            push(&mut v.examples.differing, || {
                example(k, Some(r), Some(copy), Some(&d), None)
            });
        }
    }
    v
}

/// What [`read_topic`] read.
#[derive(Debug, Default)]
pub struct TopicRead {
    pub records: Vec<ForecastRecord>,
    pub partitions: usize,
    /// Messages that are not a forecast record (counted, not compared).
    pub unparsable: u64,
    /// The first few of them: `partition:offset: error`.
    pub unparsable_examples: Vec<String>,
    /// Partitions whose committed data ended before the high watermark
    /// (an open transaction): `(partition, position, high watermark)`.
    pub stopped_short: Vec<(i32, i64, i64)>,
}

/// The reader's client context: librdkafka's error events (a partition's
/// end included) also come back from `poll`, which handles them, so they
/// are not logged a second time as errors here.
struct ReadContext;

impl ClientContext for ReadContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka event");
    }
}

impl ConsumerContext for ReadContext {}

/// Reads every committed forecast record of `topic`: each partition from
/// its beginning up to the high watermark it has now, with
/// `isolation.level=read_committed`. Fails when the topic does not exist,
/// or when the partitions were not read to their end within `timeout`.
pub fn read_topic(
    kafka: impl Into<Connection>,
    topic: &str,
    timeout: Duration,
) -> Result<TopicRead> {
    let group = format!("streamcast-verify-{}", std::process::id());
    let consumer: BaseConsumer<ReadContext> = client_config(
        &kafka.into(),
        &[
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
            ("auto.offset.reset", "earliest"),
        ],
        &BTreeMap::new(),
    )
    .create_with_context(ReadContext)?;
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let md = consumer.fetch_metadata(Some(topic), left())?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition).into());
    };
    if let Some(e) = t.error() {
        return Err(KafkaError::MetadataFetch(e.into()).into());
    }
    if t.partitions().is_empty() {
        return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition).into());
    }
    let mut out = TopicRead {
        partitions: t.partitions().len(),
        ..TopicRead::default()
    };
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut pending: BTreeSet<i32> = BTreeSet::new();
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), left())?;
        ends.insert(p.id(), high);
        if high > low {
            pending.insert(p.id());
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    if pending.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let mut last_error = String::new();
    while !pending.is_empty() {
        if left().is_zero() {
            return Err(Error::Unreachable(format!(
                "reading {topic}: partitions {pending:?} did not reach their high watermarks \
                 ({ends:?}) within {timeout:?}{}",
                if last_error.is_empty() {
                    String::new()
                } else {
                    format!(" (last error: {last_error})")
                }
            )));
        }
        match consumer.poll(left().min(Duration::from_millis(500))) {
            None => {}
            Some(Ok(m)) => {
                let (p, off) = (m.partition(), m.offset());
                let end = ends.get(&p).copied().unwrap_or(0);
                if !pending.contains(&p) || off >= end {
                    // Written after reading started: not part of this read.
                    pending.remove(&p);
                    continue;
                }
                if off + 1 >= end {
                    pending.remove(&p);
                }
                match m
                    .payload()
                    .ok_or_else(|| "no payload".to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<ForecastRecord>(b).map_err(|e| e.to_string())
                    }) {
                    Ok(r) => out.records.push(r),
                    Err(e) => {
                        out.unparsable += 1;
                        if out.unparsable_examples.len() < MAX_EXAMPLES {
                            out.unparsable_examples.push(format!("{p}:{off}: {e}"));
                        }
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // The end of what is committed: the high watermark, or the
                // last stable offset before an open transaction.
                if !pending.remove(&p) {
                    continue;
                }
                let end = ends.get(&p).copied().unwrap_or(0);
                let pos = consumer
                    .position()
                    .ok()
                    .and_then(|l| l.find_partition(topic, p).map(|e| e.offset()));
                if let Some(Offset::Offset(pos)) = pos {
                    if pos < end {
                        out.stopped_short.push((p, pos, end));
                    }
                }
            }
            Some(Err(e)) => {
                // Transient (a broker away) until the deadline says otherwise.
                tracing::warn!(topic, error = %e, "reading forecasts; retrying");
                last_error = e.to_string();
            }
        }
    }
    Ok(out)
}

/// Reads a reference file: a forecasts Parquet file as `streamcast
/// backfill --output` writes it, or JSON lines of forecast records (the
/// Kafka payload format). Parquet is recognised by its magic bytes. The
/// Parquet file does not store the window step, so `step_ms` is 0 there.
pub fn read_file(path: &Path) -> Result<Vec<ForecastRecord>> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut f = File::open(path).map_err(|e| Error::io(ctx("opening"), e))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .map_err(|e| Error::io(ctx("reading"), e))?;
    let f = File::open(path).map_err(|e| Error::io(ctx("opening"), e))?;
    if n == 4 && &magic == b"PAR1" {
        return read_parquet(path, f);
    }
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Error::io(ctx("reading"), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str(&line).map_err(|e| {
            Error::json(
                format!("{}: line {}: not a forecast record", path.display(), i + 1),
                e,
            )
        })?;
        out.push(r);
    }
    Ok(out)
}

fn read_parquet(path: &Path, f: File) -> Result<Vec<ForecastRecord>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)?;
    check_forecasts_schema(reader.schema(), path)?;
    let mut out = Vec::new();
    for batch in reader.build()? {
        out.extend(forecast_records(&batch?, 0));
    }
    Ok(out)
}

/// Refuses a Parquet file whose columns are not a forecasts batch's (see
/// `schema::forecasts_schema`), so reading it cannot panic.
fn check_forecasts_schema(schema: &Schema, path: &Path) -> Result<()> {
    let bad = |what: String| {
        Err(Error::Arrow(arrow::error::ArrowError::SchemaError(
            format!("{}: not a forecasts file: {what}", path.display()),
        )))
    };
    let f64_list = |t: &DataType| match t {
        DataType::FixedSizeList(item, n) if *item.data_type() == DataType::Float64 => {
            Some(*n as usize)
        }
        _ => None,
    };
    let fields = schema.fields();
    let want = [
        (forecasts::KEY, "key"),
        (forecasts::WINDOW_END, "window_end"),
        (forecasts::MODEL_VERSION, "model_version"),
        (forecasts::SOURCE, "source"),
        (forecasts::FORECAST, "forecast"),
    ];
    for (ix, name) in want {
        let Some(field) = fields.get(ix) else {
            return bad(format!("no column {ix} (`{name}`)"));
        };
        let ok = match ix {
            forecasts::WINDOW_END => matches!(
                field.data_type(),
                DataType::Timestamp(TimeUnit::Millisecond, _)
            ),
            forecasts::FORECAST => f64_list(field.data_type()).is_some(),
            _ => *field.data_type() == DataType::Utf8,
        };
        if field.name() != name || !ok {
            return bad(format!(
                "column {ix} is `{}` ({}), expected `{name}`",
                field.name(),
                field.data_type()
            ));
        }
    }
    let h = f64_list(fields[forecasts::FORECAST].data_type()).unwrap_or(0);
    if let Ok(ix) = schema.index_of(forecasts::QUANTILES_NAME) {
        let q = &fields[ix];
        let names = q
            .metadata()
            .get(forecasts::QUANTILES_NAME)
            .map_or(0, |s| s.split(',').count());
        if f64_list(q.data_type()) != Some(h * names) {
            return bad(format!(
                "column `quantiles` ({}) does not hold {h} values for each of {names} quantiles",
                q.data_type()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, end_ms: i64, forecast: &[f64]) -> ForecastRecord {
        ForecastRecord {
            key: key.to_string(),
            window_end: crate::time::rfc3339_ms(end_ms),
            window_end_ms: end_ms,
            step_ms: 3_600_000,
            forecast: forecast.to_vec(),
            model_version: "v1".to_string(),
            source: "model".to_string(),
            quantiles: BTreeMap::new(),
        }
    }

    fn base() -> Vec<ForecastRecord> {
        vec![
            rec("a", 3_600_000, &[1.0, 2.0]),
            rec("a", 7_200_000, &[3.0, 4.0]),
            rec("b", 3_600_000, &[100.0, 200.0]),
        ]
    }

    #[test]
    fn identical_inputs_pass_even_exactly_once() {
        let v = compare(&base(), &base(), DEFAULT_TOLERANCE);
        assert_eq!((v.reference, v.actual), (3, 3));
        assert_eq!(
            (v.missing, v.unexpected, v.duplicates, v.differing),
            (0, 0, 0, 0)
        );
        assert!(v.passes(true));
        assert_eq!(v.worst.as_ref().unwrap().relative, 0.0);
        assert_eq!(v.by_source.actual["model"], 3);
        assert_eq!(v.examples, Examples::default());
    }

    #[test]
    fn a_missing_record_fails() {
        let actual = vec![base()[0].clone(), base()[2].clone()];
        let v = compare(&base(), &actual, DEFAULT_TOLERANCE);
        assert_eq!(v.missing, 1);
        assert!(!v.passes(false));
        let ex = &v.examples.missing[0];
        assert_eq!((ex.key.as_str(), ex.window_end_ms), ("a", 7_200_000));
        assert_eq!(ex.window_end, "1970-01-01T02:00:00Z");
        assert!(ex.got.is_none());
        assert_eq!(v.actual + v.missing, v.reference);
    }

    #[test]
    fn an_equal_duplicate_fails_only_exactly_once() {
        let mut actual = base();
        actual.push(base()[1].clone());
        let v = compare(&base(), &actual, DEFAULT_TOLERANCE);
        assert_eq!(
            (v.duplicates, v.duplicates_differing, v.differing),
            (1, 0, 0)
        );
        assert_eq!(v.actual, 4);
        assert!(v.passes(false));
        assert!(!v.passes(true));
        assert_eq!(
            v.examples.duplicates[0].note.as_deref(),
            Some("copy 2 of 2")
        );
    }

    #[test]
    fn a_differing_duplicate_is_counted_and_differs_from_the_reference() {
        let mut actual = base();
        actual.push(rec("b", 3_600_000, &[100.0, 201.0]));
        let v = compare(&base(), &actual, DEFAULT_TOLERANCE);
        assert_eq!((v.duplicates, v.duplicates_differing), (1, 1));
        // The second copy also differs from the reference: one (key, window_end).
        assert_eq!(v.differing, 1);
        assert!(!v.passes(false));
        let ex = &v.examples.duplicates_differing[0];
        assert_eq!(ex.key, "b");
        assert_eq!(ex.got.as_ref().unwrap().forecast, vec![100.0, 201.0]);
        assert!((ex.difference.unwrap() - 1.0 / 200.0).abs() < 1e-12);
        let w = v.worst.unwrap();
        assert_eq!(
            (w.at.as_str(), w.reference, w.actual),
            ("forecast[1]", 200.0, 201.0)
        );
        assert_eq!(w.absolute, 1.0);
    }

    #[test]
    fn tolerance_is_relative_to_max_one_and_the_reference() {
        // 1e-7 absolute near 0 is within 1e-6 * max(1, 0); 2e-4 on 100 is 2e-6 relative.
        let actual = vec![
            rec("a", 3_600_000, &[1.0 + 1e-7, 2.0]),
            rec("a", 7_200_000, &[3.0, 4.0]),
            rec("b", 3_600_000, &[100.0002, 200.0]),
        ];
        let v = compare(&base(), &actual, DEFAULT_TOLERANCE);
        assert_eq!(v.differing, 1);
        assert_eq!(v.examples.differing[0].key, "b");
        let v = compare(&base(), &actual, 1e-5);
        assert_eq!(v.differing, 0);
        assert!(v.worst.unwrap().relative > 1e-6);
    }

    #[test]
    fn unexpected_records_and_shape_mismatches() {
        let mut actual = base();
        actual[0] = rec("a", 3_600_000, &[1.0]);
        actual[1].forecast[0] = f64::NAN;
        actual.push(rec("c", 3_600_000, &[0.0, 0.0]));
        let v = compare(&base(), &actual, DEFAULT_TOLERANCE);
        assert_eq!((v.unexpected, v.differing, v.missing), (1, 2, 0));
        assert_eq!(v.examples.unexpected[0].key, "c");
        let notes: Vec<_> = v
            .examples
            .differing
            .iter()
            .map(|e| e.note.clone().unwrap())
            .collect();
        assert_eq!(notes, ["forecast: 2 values vs 1", "forecast[0]: 3 vs NaN"]);
        // reference - missing + unexpected + duplicates = actual
        assert_eq!(
            v.reference - v.missing + v.unexpected + v.duplicates,
            v.actual
        );
    }

    #[test]
    fn quantiles_are_compared_and_reference_copies_ignored() {
        let mut r = base();
        r[0].quantiles.insert("0.1".into(), vec![0.5, 1.5]);
        let mut a = r.clone();
        r.push(r[2].clone());
        a[0].quantiles.insert("0.1".into(), vec![0.5, 1.6]);
        let v = compare(&r, &a, DEFAULT_TOLERANCE);
        assert_eq!((v.reference, v.reference_duplicates), (3, 1));
        assert_eq!(v.differing, 1);
        assert_eq!(v.worst.unwrap().at, "quantiles[0.1][1]");
        a[0].quantiles.clear();
        let v = compare(&r, &a, DEFAULT_TOLERANCE);
        assert!(v.examples.differing[0]
            .note
            .as_deref()
            .unwrap()
            .starts_with("quantiles"));
    }

    #[test]
    fn examples_are_capped() {
        let r: Vec<_> = (0..20).map(|i| rec("k", i * 1000, &[1.0])).collect();
        let v = compare(&r, &[], DEFAULT_TOLERANCE);
        assert_eq!(v.missing, 20);
        assert_eq!(v.examples.missing.len(), MAX_EXAMPLES);
        assert!(v.worst.is_none());
    }

    #[test]
    fn reference_files_read_backfill_parquet() {
        use arrow::array::{FixedSizeListBuilder, Float64Builder, StringArray};
        use arrow::array::{RecordBatch, TimestampMillisecondArray};
        use std::sync::Arc;
        let list = |vals: &[f64], n: i32| {
            let mut b = FixedSizeListBuilder::new(Float64Builder::new(), n);
            for chunk in vals.chunks(n as usize) {
                b.values().append_slice(chunk);
                b.append(true);
            }
            Arc::new(b.finish())
        };
        let schema = crate::schema::forecasts_schema(2, &[0.1, 0.9]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(
                    TimestampMillisecondArray::from(vec![3_600_000, 7_200_000])
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(vec!["v1", "v1"])),
                Arc::new(StringArray::from(vec!["model", "baseline"])),
                list(&[1.0, 2.0, 3.0, 4.0], 2),
                list(&[0.5, 1.5, 2.5, 3.5, 2.5, 3.5, 4.5, 5.5], 4),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("forecasts.parquet");
        let mut w =
            parquet::arrow::ArrowWriter::try_new(File::create(&p).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let recs = read_file(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[1].key.as_str(), recs[1].window_end_ms),
            ("b", 7_200_000)
        );
        assert_eq!(recs[1].window_end, "1970-01-01T02:00:00Z");
        assert_eq!(recs[1].forecast, vec![3.0, 4.0]);
        assert_eq!(recs[1].source, "baseline");
        assert_eq!(recs[1].quantiles["0.9"], vec![4.5, 5.5]);
    }

    #[test]
    fn reference_files_read_json_lines_and_refuse_other_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ref.jsonl");
        let lines: Vec<String> = base()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        std::fs::write(&p, lines.join("\n") + "\n\n").unwrap();
        assert_eq!(read_file(&p).unwrap(), base());
        std::fs::write(&p, "{\"key\":1}\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");

        let events = dir.path().join("events.parquet");
        let schema = crate::schema::events_schema(&["value".into()]);
        let f = File::create(&events).unwrap();
        let w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.close().unwrap();
        let e = read_file(&events).unwrap_err().to_string();
        assert!(e.contains("not a forecasts file"), "{e}");
    }
}
