//! End to end against the real broker, with real NAB CloudWatch series
//! (one key per file): forecasts, dead letters, crash recovery, backfill.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, TimestampMillisecondArray};
use arrow::datatypes::Float64Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use streamcast::sink::ForecastRecord;

use crate::common::*;

const HOUR: i64 = 3_600_000;
const HORIZON: usize = 4;

struct Setup {
    dir: tempfile::TempDir,
    pipeline: std::path::PathBuf,
    input: String,
    output: String,
    dlq: String,
}

fn setup(name: &str) -> Setup {
    let s = rand_suffix();
    let dir = tempfile::tempdir().unwrap();
    let (input, output, dlq) = (
        format!("it.{name}.in.{s}"),
        format!("it.{name}.out.{s}"),
        format!("it.{name}.dlq.{s}"),
    );
    let body = format!(
        r#"
name = "it-{name}-{s}"
[source]
brokers = "{brokers}"
topic = "{input}"
partitions = 3
connect_attempts = 5
[window]
size = "1h"
allowed_lateness = "0s"
# A window with no events ends the key's series: the emitted windows are then
# exactly the non-empty ones, which the test computes on its own.
max_gap_windows = 0
idle_partition_timeout = "3s"
[model]
cell = "gru"
hidden = 16
horizon = {HORIZON}
warmup_windows = 6
season_windows = 24
[sink]
topic = "{output}"
dead_letter_topic = "{dlq}"
"#,
        brokers = brokers()
    );
    let pipeline = pipeline_file(dir.path(), name, &body);
    Setup {
        dir,
        pipeline,
        input,
        output,
        dlq,
    }
}

/// The windows a correct pipeline must forecast: every (key, hour) holding an
/// event, whose end is at or before the final watermark (the newest event
/// time, lateness 0). Computed here without the window module.
fn expected_windows(events: &[NabEvent]) -> BTreeSet<(String, i64)> {
    let wm = events.iter().map(|e| e.ts_ms).max().unwrap();
    events
        .iter()
        .map(|e| (e.key.clone(), e.ts_ms.div_euclid(HOUR) * HOUR + HOUR))
        .filter(|(_, end)| *end <= wm)
        .collect()
}

fn parse_forecasts(raw: &[(String, String)]) -> Vec<ForecastRecord> {
    raw.iter()
        .map(|(k, v)| {
            let r: ForecastRecord =
                serde_json::from_str(v).unwrap_or_else(|e| panic!("bad forecast record {v}: {e}"));
            assert_eq!(&r.key, k, "Kafka key is the entity key");
            r
        })
        .collect()
}

fn spawn_run(pipeline: &Path, extra: &[&str]) -> Child {
    Command::new(streamcast_bin())
        .arg("run")
        .arg(pipeline)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting streamcast")
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("streamcast did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn missing(
    expected: &BTreeSet<(String, i64)>,
    got: &BTreeSet<(String, i64)>,
) -> Vec<(String, i64)> {
    expected.difference(got).take(10).cloned().collect()
}

/// Bad records of every kind, each with the reason text it must come back with.
fn bad_records() -> Vec<(String, &'static str)> {
    vec![
        (
            r#"{"key":"ec2_cpu_utilization_24ae8d","ts":"2014-02-14 14:30:00","value":1.0"#.into(),
            "malformed JSON",
        ),
        ("not json at all".into(), "malformed JSON"),
        (
            r#"{"ts":"2014-02-14 14:30:00","value":1.0}"#.into(),
            "missing field `key`",
        ),
        (
            r#"{"key":"ec2_cpu_utilization_24ae8d","value":1.0}"#.into(),
            "missing field `ts`",
        ),
        (
            r#"{"key":"ec2_cpu_utilization_24ae8d","ts":"2014-02-14 14:30:00"}"#.into(),
            "missing field `value`",
        ),
        (
            r#"{"key":"ec2_cpu_utilization_24ae8d","ts":"2014-02-14 14:30:00","value":"high"}"#
                .into(),
            "non-numeric value",
        ),
        (
            r#"{"key":"ec2_cpu_utilization_24ae8d","ts":"2014-02-14 14:30:00","value":1e999}"#
                .into(),
            "non-finite value",
        ),
        (
            r#"{"key":"ec2_cpu_utilization_24ae8d","ts":"Feb 14th","value":1.0}"#.into(),
            "unparsable timestamp",
        ),
    ]
}

#[test]
fn forecasts_every_closed_window_once_dead_letters_bad_records_and_matches_backfill() {
    let events = nab_events(&data_dir().join("nab/realAWSCloudwatch"));
    let keys: BTreeSet<&str> = events.iter().map(|e| e.key.as_str()).collect();
    assert!(
        keys.len() >= 10,
        "expected the CloudWatch files, found {} keys",
        keys.len()
    );
    let expected = expected_windows(&events);
    let st = setup("e2e");
    create_topics(&[(&st.input, 3), (&st.output, 3), (&st.dlq, 3)]);

    // Good events in time order, with bad records spread among them.
    let bad = bad_records();
    let mut records: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.key.clone(), event_json(e)))
        .collect();
    let step = records.len() / (bad.len() + 1);
    for (i, (payload, _)) in bad.iter().enumerate().rev() {
        records.insert(
            (i + 1) * step,
            ("ec2_cpu_utilization_24ae8d".into(), payload.clone()),
        );
    }
    produce(&st.input, records);

    let mut child = spawn_run(&st.pipeline, &["--exit-when-idle", "6s"]);
    let status = wait_exit(&mut child, Duration::from_secs(600));
    assert!(status.success(), "streamcast run exited with {status}");

    let raw = read_topic(
        &st.output,
        Duration::from_secs(2),
        Duration::from_secs(60),
        |r| r.len() >= expected.len(),
    );
    let recs = parse_forecasts(&raw);
    let counts = histogram(recs.iter().map(|r| (r.key.clone(), r.window_end_ms)));
    let got: BTreeSet<(String, i64)> = counts.keys().cloned().collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "missing windows e.g. {:?}",
        missing(&expected, &got)
    );
    assert_eq!(
        got,
        expected,
        "spurious windows e.g. {:?}",
        got.difference(&expected).take(10).collect::<Vec<_>>()
    );
    let dups: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(
        dups.is_empty(),
        "a run without a crash forecasts each window once: {dups:?}"
    );
    for r in &recs {
        assert_eq!(r.forecast.len(), HORIZON);
        assert!(
            r.forecast.iter().all(|v| v.is_finite()),
            "non-finite forecast {r:?}"
        );
        assert!(!r.model_version.is_empty());
        assert_eq!(r.step_ms, HOUR);
        assert!(r.source == "model" || r.source == "baseline");
    }
    assert!(
        recs.iter().any(|r| r.source == "model"),
        "after warm-up the model forecasts"
    );

    // Dead letters: every bad record, with its reason and source position.
    let dlq = read_topic(
        &st.dlq,
        Duration::from_secs(2),
        Duration::from_secs(30),
        |r| r.len() >= bad.len(),
    );
    assert_eq!(dlq.len(), bad.len(), "dead letters: {dlq:?}");
    let letters: Vec<serde_json::Value> = dlq
        .iter()
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect();
    for (_, want) in &bad {
        assert!(
            letters
                .iter()
                .any(|l| l["reason"].as_str().unwrap_or("").contains(want)),
            "no dead letter with reason {want:?} in {letters:?}"
        );
    }
    for l in &letters {
        assert_eq!(l["topic"], st.input.as_str());
        assert!(
            l["partition"].as_i64().is_some() && l["offset"].as_i64().is_some(),
            "{l}"
        );
        assert!(l["payload"].as_str().is_some_and(|p| !p.is_empty()));
    }

    // Backfill over the same (good) events as Parquet: same windows, same forecasts.
    let cfg = streamcast::PipelineConfig::load(&st.pipeline).unwrap();
    let gen: Vec<streamcast::source::generator::GenEvent> = events
        .iter()
        .map(|e| streamcast::source::generator::GenEvent {
            key: e.key.clone(),
            ts_ms: e.ts_ms,
            value: e.value,
        })
        .collect();
    let input = st.dir.path().join("events.parquet");
    let output = st.dir.path().join("forecasts.parquet");
    streamcast::source::generator::write_parquet(&gen, &input, "key", "ts", "value").unwrap();
    let report = streamcast::pipeline::backfill(&cfg, &[input], &output).unwrap();
    assert_eq!(report.totals.dead_letters, 0);
    let back = read_forecasts_parquet(&output);
    let back_set: BTreeSet<(String, i64)> = back.keys().cloned().collect();
    assert_eq!(back_set, expected, "backfill window set differs");
    let mut max_rel = 0.0f64;
    for r in &recs {
        let b = &back[&(r.key.clone(), r.window_end_ms)];
        for (x, y) in r.forecast.iter().zip(b) {
            max_rel = max_rel.max((x - y).abs() / (1.0 + x.abs().max(y.abs())));
        }
    }
    assert!(
        max_rel < 1e-4,
        "stream and backfill forecasts differ by {max_rel} (relative)"
    );
}

fn read_forecasts_parquet(path: &Path) -> BTreeMap<(String, i64), Vec<f64>> {
    let f = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut out = BTreeMap::new();
    for b in reader {
        let b = b.unwrap();
        let keys = b.column(0).as_string::<i32>();
        let ends = b
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        let lists = b.column(4).as_fixed_size_list();
        let h = lists.value_length() as usize;
        let vals = lists.values().as_primitive::<Float64Type>().values();
        for i in 0..b.num_rows() {
            let prev = out.insert(
                (keys.value(i).to_string(), ends.value(i)),
                vals[i * h..(i + 1) * h].to_vec(),
            );
            assert!(prev.is_none(), "backfill wrote a window twice");
        }
    }
    out
}

#[test]
fn sigkill_mid_stream_and_restart_loses_no_forecast() {
    let events = nab_events(&data_dir().join("nab/realAWSCloudwatch"));
    let expected = expected_windows(&events);
    let st = setup("crash");
    create_topics(&[(&st.input, 3), (&st.output, 3), (&st.dlq, 3)]);
    produce(
        &st.input,
        events
            .iter()
            .map(|e| (e.key.clone(), event_json(e)))
            .collect(),
    );

    // First life: killed (SIGKILL, no chance to clean up) once some forecasts are out.
    let mut child = spawn_run(&st.pipeline, &[]);
    let quarter = expected.len() / 4;
    let early = read_topic(&st.output, Duration::ZERO, Duration::from_secs(300), |r| {
        r.len() >= quarter
    });
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(
        early.len() >= quarter,
        "only {} forecasts before the kill",
        early.len()
    );
    let before = early.len();

    // Second life: must complete every window.
    let mut child = spawn_run(&st.pipeline, &["--exit-when-idle", "6s"]);
    let status = wait_exit(&mut child, Duration::from_secs(600));
    assert!(
        status.success(),
        "restarted streamcast exited with {status}"
    );

    // The job has exited: read everything it wrote (a quiet period could
    // end early on a loaded machine and look like a loss).
    let raw = read_topic_to_end(&st.output, Duration::from_secs(120));
    let recs = parse_forecasts(&raw);
    let got: BTreeSet<(String, i64)> = recs
        .iter()
        .map(|r| (r.key.clone(), r.window_end_ms))
        .collect();
    let lost = missing(&expected, &got);
    assert!(
        lost.is_empty(),
        "forecasts lost across the crash, e.g. {lost:?}"
    );
    assert!(
        got.is_subset(&expected),
        "spurious windows: {:?}",
        got.difference(&expected).take(5).collect::<Vec<_>>()
    );
    // Duplicates are allowed and identifiable by (key, window_end, model_version).
    let versions: BTreeSet<&str> = recs.iter().map(|r| r.model_version.as_str()).collect();
    assert_eq!(versions.len(), 1, "one model version: {versions:?}");
    eprintln!(
        "crash test: {} forecasts before the kill, {} in all for {} windows ({} duplicates)",
        before,
        recs.len(),
        expected.len(),
        recs.len() - got.len()
    );
}
