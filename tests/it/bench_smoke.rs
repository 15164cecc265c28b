//! A short smoke run of the end-to-end benchmark's runners (the full run is
//! `scripts/bench_e2e`): `streamcast run` reports its close -> ack latency
//! and read/ack times, and the Python peer closes and publishes the same
//! windows on the same topic.

use std::process::Command;

use crate::common::*;

const KEYS: usize = 20;
const MINUTES: usize = 130;

/// 20 keys, one event a minute for 130 minutes from an hour boundary:
/// hours 0 and 1 close, hour 2 stays open -> 40 windows owed.
fn events() -> Vec<(String, String)> {
    let t0 = 1_767_571_200_000i64; // 2026-01-05T00:00:00Z
    (0..MINUTES)
        .flat_map(|m| {
            (0..KEYS).map(move |k| {
                let key = format!("k{k:03}");
                let ts = streamcast::time::rfc3339_ms(t0 + m as i64 * 60_000);
                let v = 10.0 + k as f64 + (m % 7) as f64;
                (
                    key.clone(),
                    format!(r#"{{"key":"{key}","ts":"{ts}","value":{v}}}"#),
                )
            })
        })
        .collect()
}

/// Runs a command to its end; its stdout, or a failure showing both streams.
fn stdout_of(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn summary_number(out: &str, label: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"));
    line[label.len()..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number on `{line}`"))
}

#[test]
fn streamcast_and_the_python_peer_forecast_the_same_windows() {
    let s = rand_suffix();
    let topic = format!("smoke-in-{s}");
    create_topics(&[(topic.as_str(), 2)]);
    produce(&topic, events());
    let owed = (KEYS * 2) as f64;

    let dir = tempfile::tempdir().unwrap();
    let pipeline = job_pipeline(
        dir.path(),
        &format!("smoke-{s}"),
        &topic,
        2,
        &format!("smoke-dlq-{s}"),
        "",
    );
    let mut run = Command::new(streamcast_bin());
    run.args(["run", pipeline.to_str().unwrap(), "--exit-when-idle", "2s"])
        .current_dir(dir.path());
    let stdout = stdout_of(run);
    assert_eq!(summary_number(&stdout, "windows closed"), owed, "{stdout}");
    let p50 = summary_number(&stdout, "close -> ack (ms)    p50");
    assert!(p50.is_finite() && p50 >= 0.0, "{stdout}");
    let first = summary_number(&stdout, "first message read");
    let last_read = summary_number(&stdout, "last message read");
    let last_ack = summary_number(&stdout, "last forecast acked");
    assert!(first <= last_read && first <= last_ack, "{stdout}");

    // The peer, from the project's virtualenv (scripts/setup installs
    // confluent-kafka there).
    let venv = std::env::var("STREAMCAST_VENV").expect("STREAMCAST_VENV (source scripts/env)");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_e2e_peer.py");
    let mut peer = Command::new(std::path::Path::new(&venv).join("bin/python"));
    peer.arg(script)
        .args(["--brokers", &brokers(), "--topic", &topic])
        .args(["--out-topic", &format!("smoke-peer-out-{s}")])
        .args(["--window", "3600", "--idle-exit", "2"]);
    let stdout = stdout_of(peer);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line from the peer:\n{stdout}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        v["events"].as_f64(),
        Some((KEYS * MINUTES) as f64),
        "{line}"
    );
    assert_eq!(v["windows_closed"].as_f64(), Some(owed), "{line}");
    assert_eq!(v["forecasts_acked"].as_f64(), Some(owed), "{line}");
}
