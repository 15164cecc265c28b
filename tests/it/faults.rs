//! Permanent faults end the job with a clear error instead of a silent
//! hang, and lose nothing: what could not be published is re-read and
//! published by the next run.

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
