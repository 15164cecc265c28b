//! The HTTP API of a running job, over real HTTP against the real broker:
//! health, readiness, the latest forecast of a key (equal to the last one
//! on the output topic), keys, models and Prometheus metrics, and the
//! Grafana dashboard checked against the live scrape.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::durable::{events, pipeline_with, sigterm, spawn, wait_ok, PARTITIONS};

/// `GET path` with a fresh connection: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Polls `path` until `ok(status, body)` or `limit`; returns the last answer.
fn until(port: u16, path: &str, limit: Duration, ok: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let start = Instant::now();
    loop {
        let got = get(port, path);
        if let Some((code, body)) = &got {
            if ok(*code, body) || start.elapsed() > limit {
                return (*code, body.clone());
            }
        } else if start.elapsed() > limit {
            panic!("no answer on {path} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn the_api_serves_health_latest_forecasts_keys_models_and_metrics() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let s = rand_suffix();
    let dir = tempfile::tempdir().unwrap();
    let input = format!("it.api.in.{s}");
    create_topics(&[(input.as_str(), PARTITIONS)]);
    let name = format!("api-{s}");
    // With quantiles, so live coverage of the calibrated bands is checked
    // too, and accuracy records on their own topic.
    let extra = format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\n[model]\nquantiles = [0.1, 0.5, 0.9]\n\
         [sink]\naccuracy_topic = \"{name}-accuracy\"\n"
    );
    let p = pipeline_with(dir.path(), &name, &input, "exactly_once", &extra);
    produce(&input, events(0, 12));
    // Killed if the test fails half-way (it would keep the harness's
    // stderr open, and the run waiting, forever).
    let mut job = KillOnDrop(spawn(&p, "a", &[]));
    let limit = Duration::from_secs(90);

    let (code, body) = until(port, "/health/live", limit, |c, _| c == 200);
    assert_eq!(code, 200, "{body}");
    let (code, body) = until(port, "/health/ready", limit, |c, _| c == 200);
    assert_eq!(
        code, 200,
        "ready once assigned, restored and caught up: {body}"
    );
    assert_eq!(
        json(&body)["partitions"].as_array().map(Vec::len),
        Some(PARTITIONS as usize)
    );

    // Every key gets forecasts; the API's latest for k0 is the newest one
    // on the output topic.
    let (_, body) = until(port, "/keys", limit, |_, b| json(b)["count"] == 12);
    assert_eq!(json(&body)["count"], 12, "{body}");
    let (_, body) = until(port, "/keys?prefix=k1&limit=2", limit, |c, _| c == 200);
    assert_eq!(json(&body)["count"], 3, "k1, k10, k11: {body}");
    assert_eq!(json(&body)["keys"], serde_json::json!(["k1", "k10"]));
    let out = read_topic(&format!("{name}-out"), Duration::from_secs(3), limit, |r| {
        r.iter().filter(|(k, _)| k == "k0").count() >= 8
    });
    // Settle: the API may still be a commit behind the topic's reader.
    std::thread::sleep(Duration::from_secs(2));
    let newest = out
        .iter()
        .filter(|(k, _)| k == "k0")
        .map(|(_, v)| json(v))
        .max_by_key(|v| v["window_end_ms"].as_i64())
        .unwrap();
    let (code, body) = get(port, "/forecast/k0").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body),
        newest,
        "the API's latest is the topic's newest"
    );

    live_scores_equal_the_offline_scores_of_the_same_forecasts(port, &out);
    accuracy_records_agree_with_the_live_scores(port, &format!("{name}-accuracy"));

    let (code, body) = get(port, "/forecast/no-such-key").unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, _) = get(port, "/forecast/%ZZ").unwrap();
    assert_eq!(code, 400);
    let (code, body) = get(port, "/nowhere").unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("/forecast/<key>"), "{body}");

    let (code, body) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "streamcast_windows_closed_total",
        "streamcast_checkpoints_total",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }
    dashboard_queries_exist_in(&body);
    let (code, body) = get(port, "/models").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["models"].is_array(), "{body}");

    sigterm(&job.0);
    wait_ok(&mut job.0, Duration::from_secs(60));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The provisioned Grafana dashboard parses, and every metric its queries
/// name is in a live scrape of the job (so no panel is silently empty
/// because of a renamed metric).
fn dashboard_queries_exist_in(scrape: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/grafana/dashboards/streamcast.json");
    let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has its panels: {exprs:?}");
    let exported: std::collections::HashSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for e in &exprs {
        let names = e.match_indices("streamcast_").map(|(i, _)| {
            e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        });
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "dashboard query {e:?} names {name}, which the job does not export"
            );
        }
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The API's live scores of k0 equal scores computed here, offline, from
/// the forecasts on the output topic and the values the test produced.
fn live_scores_equal_the_offline_scores_of_the_same_forecasts(port: u16, out: &[(String, String)]) {
    const HOUR: i64 = 3_600_000;
    let t0 = 1_700_000_000_000i64 - 1_700_000_000_000 % HOUR;
    // The value `events` gives key 0 in hour h (one event per window, so
    // the window's mean), rounded as it was written.
    let actual = |end_ms: i64| {
        let h = (end_ms - t0) / HOUR - 1;
        let v = 50.0 + 10.0 * ((h as f64) * std::f64::consts::TAU / 6.0).sin();
        format!("{v:.4}").parse::<f64>().unwrap()
    };
    let forecasts: Vec<serde_json::Value> = out
        .iter()
        .filter(|(k, _)| k == "k0")
        .map(|(_, v)| json(v))
        .collect();
    let last_closed = forecasts
        .iter()
        .filter_map(|f| f["window_end_ms"].as_i64())
        .max()
        .unwrap();
    let (code, body) = get(port, "/accuracy/k0").unwrap();
    assert_eq!(code, 200, "{body}");
    let live = json(&body);
    let steps = live["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "steps 1 and the horizon by default: {body}");
    for s in steps {
        let step = s["step"].as_i64().unwrap();
        let i = (step - 1) as usize;
        let scored: Vec<(f64, bool)> = forecasts
            .iter()
            .filter_map(|f| {
                let target = f["window_end_ms"].as_i64()? + step * HOUR;
                let value = f["forecast"][i].as_f64()?;
                let (lo, hi) = (
                    f["quantiles"]["0.1"][i].as_f64()?,
                    f["quantiles"]["0.9"][i].as_f64()?,
                );
                let y = actual(target);
                (target <= last_closed).then(|| ((y - value).abs(), lo <= y && y <= hi))
            })
            .collect();
        let errors: Vec<f64> = scored.iter().map(|e| e.0).collect();
        let covered = scored.iter().filter(|e| e.1).count() as f64 / scored.len().max(1) as f64;
        assert!(!errors.is_empty(), "step {step} has scored forecasts");
        let mae = errors.iter().sum::<f64>() / errors.len() as f64;
        assert_eq!(
            s["scored"].as_u64(),
            Some(errors.len() as u64),
            "step {step}: {body}"
        );
        let live_mae = s["mae"].as_f64().unwrap();
        // Forecasts are kept as f32 while pending.
        assert!(
            (live_mae - mae).abs() < 1e-4 * mae.max(1.0),
            "step {step}: live {live_mae} vs offline {mae}"
        );
        let live_coverage = s["coverage"].as_f64().unwrap();
        assert!(
            (live_coverage - covered).abs() < 1e-9,
            "step {step}: live coverage {live_coverage} vs offline {covered}"
        );
    }
}

/// The accuracy topic has one record per scored window of k0, whose
/// per-step errors add up to the API's running means (read after the
/// scores: the topic may hold a commit more than the API had then, so only
/// the first `scored` of each step are compared).
fn accuracy_records_agree_with_the_live_scores(port: u16, topic: &str) {
    let (_, body) = get(port, "/accuracy/k0").unwrap();
    let live = json(&body);
    let want: Vec<(i64, u64, f64)> = live["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_i64().unwrap(),
                s["scored"].as_u64().unwrap(),
                s["mae"].as_f64().unwrap(),
            )
        })
        .collect();
    let step1 = want[0].1 as usize;
    let recs = read_topic(
        topic,
        Duration::from_secs(3),
        Duration::from_secs(60),
        |r| r.iter().filter(|(k, _)| k == "k0").count() >= step1,
    );
    let recs: Vec<streamcast::score::AccuracyRecord> = recs
        .iter()
        .filter(|(k, _)| k == "k0")
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect();
    // Scored windows are distinct and each names its actual.
    let mut ends: Vec<i64> = recs.iter().map(|r| r.window_end_ms).collect();
    ends.dedup();
    assert_eq!(ends.len(), recs.len(), "one record per scored window");
    for (step, scored, mae) in want {
        let errors: Vec<f64> = recs
            .iter()
            .flat_map(|r| &r.scored)
            .filter(|s| s.step as i64 == step)
            .map(|s| s.abs_error)
            .take(scored as usize)
            .collect();
        assert_eq!(errors.len() as u64, scored, "step {step}");
        let m = errors.iter().sum::<f64>() / errors.len() as f64;
        assert!(
            (m - mae).abs() < 1e-9 * mae.max(1.0),
            "step {step}: topic {m} vs API {mae}"
        );
        for r in &recs {
            for s in r.scored.iter().filter(|s| s.step as i64 == step) {
                assert_eq!(s.origin_ms + step * 3_600_000, r.window_end_ms);
                assert!(s.covered.is_some(), "with quantiles, coverage is recorded");
            }
        }
    }
}
