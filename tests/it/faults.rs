//! Permanent faults end the job with a clear error instead of a silent
//! hang, and lose nothing: what could not be published is re-read and
//! published by the next run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// Regression (hardening): a record the producer can never send (here a
/// dead letter larger than the producer's `message.max.bytes`) was retried
/// forever: the partition's commits froze and the job never finished. Now
/// the job stops with a non-zero exit naming the record; its input is not
/// committed, so a run with a sane limit publishes it.
#[test]
fn an_unpublishable_record_stops_the_job_and_is_published_by_the_next_run() {
    let s = rand_suffix();
    let (topic, dlq) = (format!("faults-in-{s}"), format!("faults-dlq-{s}"));
    create_topics(&[(topic.as_str(), 1)]);
    let t0 = 1_767_571_200_000i64; // 2026-01-05T00:00:00Z
    let mut records: Vec<(String, String)> = (0..30)
        .map(|m| {
            let ts = streamcast::time::rfc3339_ms(t0 + m * 60_000);
            (
                "a".to_string(),
                format!(r#"{{"key":"a","ts":"{ts}","value":{m}}}"#),
            )
        })
        .collect();
    // Not JSON, 5,000 bytes: its dead letter is over a 1,000-byte limit.
    records.insert(10, ("a".to_string(), "x".repeat(5000)));
    produce(&topic, records);

    let dir = tempfile::tempdir().unwrap();
    let file =
        |limit: &str| job_pipeline(dir.path(), &format!("faults-{s}"), &topic, 1, &dlq, limit);
    let run = |pipeline: &std::path::Path| {
        let started = Instant::now();
        let out = Command::new("timeout")
            .args(["120", streamcast_bin(), "run"])
            .arg(pipeline)
            .args(["--exit-when-idle", "2s"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        (out, started.elapsed())
    };

    let (out, took) = run(&file("[sink.librdkafka]\n\"message.max.bytes\" = \"1000\""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit 1 with an error, not a hang (124):\n{stderr}"
    );
    assert!(took < Duration::from_secs(100), "{took:?}");
    assert!(
        stderr.contains("cannot publish") && stderr.contains(&dlq),
        "the error names the record's topic:\n{stderr}"
    );

    // Nothing past it was committed: the next run re-reads and publishes it.
    let (out, _) = run(&file(""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let letters = read_topic(&dlq, Duration::from_secs(2), Duration::from_secs(30), |r| {
        !r.is_empty()
    });
    assert_eq!(letters.len(), 1, "{letters:?}");
    let v: serde_json::Value = serde_json::from_str(&letters[0].1).unwrap();
    assert_eq!(v["kind"], "malformed", "{v}");
    assert_eq!(v["offset"], 10, "{v}");
    assert_eq!(v["payload_bytes"], 5000, "{v}");
}

/// Resumes a SIGSTOPped broker when dropped (also when the test fails).
struct Frozen(String);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

/// SIGTERM while the broker does not answer (frozen with SIGSTOP): the job
/// gives up draining after `sink.shutdown_timeout` and exits 1 saying so,
/// instead of hanging; once the broker is back, the next run redoes what
/// was not committed and nothing is missing (checked against a reference).
#[test]
fn shutdown_with_the_broker_away_is_bounded_and_loses_nothing() {
    use crate::durable::{events, n, pipeline_with, sigterm, spawn, verify, wait_ok, PARTITIONS};
    let pidfile = Path::new(env!("CARGO_MANIFEST_DIR")).join(".state/kafka/kafka.pid");
    let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .map(|p| p.trim().to_string())
    else {
        eprintln!(
            "skipped: the broker is not the one scripts/kafka runs ({} absent)",
            pidfile.display()
        );
        return;
    };
    let s = rand_suffix();
    let dir = tempfile::tempdir().unwrap();
    let input = format!("it.faults.away.in.{s}");
    create_topics(&[(input.as_str(), PARTITIONS)]);
    produce(&input, events(0, 20));
    // Only the final checkpoint commits (a long interval), so shutdown has
    // state to write to the frozen broker.
    let extra = "[state]\ncommit_interval = \"1h\"\n[sink]\nshutdown_timeout = \"3s\"\n";
    let name = format!("away-{s}");
    let p = pipeline_with(dir.path(), &name, &input, "at_least_once", extra);
    let mut job = std::process::Command::new(streamcast_bin())
        .arg("run")
        .arg(&p)
        .args(["--instance", "a"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = format!("{name}-out");
    // The job creates its output topic once it runs: read again until then.
    let mut got = 0;
    let t = Instant::now();
    while got < 12 * 10 && t.elapsed() < Duration::from_secs(90) {
        got = read_topic(
            &out,
            Duration::from_millis(300),
            Duration::from_secs(10),
            |r| r.len() >= 12 * 10,
        )
        .len();
    }
    assert!(
        got >= 12 * 10,
        "the job forecasts before the broker goes away ({got})"
    );
    let frozen = Frozen(pid.clone());
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    sigterm(&job);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = job.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "shutdown hung with the broker away"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = t0.elapsed();
    drop(frozen); // the broker is back
    let mut stderr = String::new();
    use std::io::Read;
    job.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "exit 1: {stderr}");
    assert!(
        stderr.contains("shutdown took longer than sink.shutdown_timeout"),
        "{stderr}"
    );
    eprintln!("shutdown with the broker away took {took:?}");
    // The next run redoes the rest; a reference run reads the same input.
    let mut again = spawn(&p, "a", &["--exit-when-idle", "2s"]);
    wait_ok(&mut again, Duration::from_secs(120));
    let rname = format!("away-ref-{s}");
    let rp = pipeline_with(dir.path(), &rname, &input, "at_least_once", "");
    let mut r = spawn(&rp, "ref", &["--exit-when-idle", "2s"]);
    wait_ok(&mut r, Duration::from_secs(120));
    let v = verify(&out, &format!("{rname}-out"), false);
    assert_eq!(n(&v, "missing"), 0, "{v}");
    assert_eq!(n(&v, "differing"), 0, "{v}");
}
