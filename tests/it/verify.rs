//! `streamcast verify` against the real broker: hand-made forecast records
//! in fresh topics, with a known number of missing and duplicate records.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;
use streamcast::sink::ForecastRecord;

use crate::common::*;

const HOUR: i64 = 3_600_000;

/// Six forecasts: three keys, two windows each, both sources.
fn records() -> Vec<ForecastRecord> {
    let mut out = Vec::new();
    for (i, key) in ["web-01", "web-02", "db-01"].iter().enumerate() {
        for w in 1..=2i64 {
            let end = 1_704_067_200_000 + w * HOUR;
            out.push(ForecastRecord {
                key: key.to_string(),
                window_end: streamcast::time::rfc3339_ms(end),
                window_end_ms: end,
                step_ms: HOUR,
                forecast: vec![10.0 * i as f64 + w as f64, 0.5 + w as f64],
                model_version: "v-test".into(),
                source: if i == 2 { "baseline" } else { "model" }.into(),
                quantiles: BTreeMap::new(),
            });
        }
    }
    out
}

fn payloads(recs: &[ForecastRecord]) -> Vec<(String, String)> {
    recs.iter()
        .map(|r| (r.key.clone(), serde_json::to_string(r).unwrap()))
        .collect()
}

/// Fresh topics (two partitions each), named `verify-<name>-<random>`.
fn topics(names: &[&str]) -> Vec<String> {
    let s = rand_suffix();
    let ts: Vec<String> = names.iter().map(|n| format!("verify-{n}-{s}")).collect();
    let specs: Vec<(&str, i32)> = ts.iter().map(|t| (t.as_str(), 2)).collect();
    create_topics(&specs);
    ts
}

/// Runs `streamcast verify --json ARGS`; returns the exit code and the report.
fn verify(args: &[&str]) -> (i32, Value) {
    let out = Command::new(streamcast_bin())
        .args([
            "verify",
            "--json",
            "--brokers",
            &brokers(),
            "--timeout",
            "30s",
        ])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "verify {args:?}: not JSON ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

fn counts(r: &Value) -> [u64; 7] {
    [
        "reference",
        "actual",
        "missing",
        "unexpected",
        "duplicates",
        "duplicates_differing",
        "differing",
    ]
    .map(|k| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r:#}")))
}

#[test]
fn verify_reports_a_missing_and_a_duplicate_record_and_exits_1() {
    let t = topics(&["ref", "act"]);
    let all = records();
    produce(&t[0], payloads(&all));
    // Actual: the third record lost, the fifth delivered twice.
    let mut actual: Vec<ForecastRecord> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, r)| r.clone())
        .collect();
    actual.push(all[4].clone());
    produce(&t[1], payloads(&actual));

    let (code, r) = verify(&["--reference-topic", &t[0], "--topic", &t[1]]);
    assert_eq!(code, 1, "{r:#}");
    // reference, actual, missing, unexpected, duplicates, dup. differing, differing
    assert_eq!(counts(&r), [6, 6, 1, 0, 1, 0, 0], "{r:#}");
    assert_eq!(r["ok"], false);
    let missing = &r["examples"]["missing"][0];
    assert_eq!(missing["key"], "web-02");
    assert_eq!(missing["window_end_ms"], all[2].window_end_ms);
    assert_eq!(r["examples"]["duplicates"][0]["key"], "db-01");
    assert_eq!(r["by_source"]["reference"]["baseline"], 2);
    assert_eq!(r["by_source"]["actual"]["baseline"], 3);
    assert_eq!(r["worst"]["relative"], 0.0);

    // The text report says the same.
    let out = Command::new(streamcast_bin())
        .args([
            "verify",
            "--brokers",
            &brokers(),
            "--reference-topic",
            &t[0],
        ])
        .args(["--topic", &t[1]])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL: at-least-once broken: 1 missing"),
        "{text}"
    );
}

#[test]
fn verify_passes_identical_topics_and_fails_duplicates_only_exactly_once() {
    let t = topics(&["ref", "same", "dup"]);
    let all = records();
    produce(&t[0], payloads(&all));
    produce(&t[1], payloads(&all));
    let mut dup = all.clone();
    dup.push(all[0].clone());
    produce(&t[2], payloads(&dup));

    let (code, r) = verify(&[
        "--reference-topic",
        &t[0],
        "--topic",
        &t[1],
        "--exactly-once",
    ]);
    assert_eq!((code, counts(&r)), (0, [6, 6, 0, 0, 0, 0, 0]), "{r:#}");
    assert_eq!(r["ok"], true);

    // The same reference as a JSON-lines file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reference.jsonl");
    let lines: Vec<String> = payloads(&all).into_iter().map(|(_, p)| p).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code, r) = verify(&["--reference-file", file.to_str().unwrap(), "--topic", &t[1]]);
    assert_eq!((code, counts(&r)), (0, [6, 6, 0, 0, 0, 0, 0]), "{r:#}");

    // A duplicate keeps at-least-once but breaks exactly-once.
    let (code, r) = verify(&["--reference-topic", &t[0], "--topic", &t[2]]);
    assert_eq!((code, counts(&r)), (0, [6, 7, 0, 0, 1, 0, 0]), "{r:#}");
    let (code, _) = verify(&[
        "--reference-topic",
        &t[0],
        "--topic",
        &t[2],
        "--exactly-once",
    ]);
    assert_eq!(code, 1);
}

#[test]
fn verify_counts_only_committed_transactions_and_terminates_after_an_abort() {
    let t = topics(&["ref", "txn"]);
    let all = records();
    produce(&t[0], payloads(&all));

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", format!("verify-it-{}", rand_suffix()))
        .create()
        .unwrap();
    let send = |recs: &[ForecastRecord]| {
        for (k, p) in payloads(recs) {
            producer
                .send(BaseRecord::to(&t[1]).key(&k).payload(&p))
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    let secs = Duration::from_secs(30);
    producer.init_transactions(secs).unwrap();
    producer.begin_transaction().unwrap();
    send(&all);
    producer.commit_transaction(secs).unwrap();
    // Aborted: a duplicate and a record the reference does not have. The
    // topic then ends in records and a marker no read_committed reader sees.
    let mut stray = all[1].clone();
    stray.key = "stray".into();
    producer.begin_transaction().unwrap();
    send(&[all[0].clone(), stray]);
    producer.abort_transaction(secs).unwrap();

    let (code, r) = verify(&[
        "--reference-topic",
        &t[0],
        "--topic",
        &t[1],
        "--exactly-once",
    ]);
    assert_eq!((code, counts(&r)), (0, [6, 6, 0, 0, 0, 0, 0]), "{r:#}");
}
