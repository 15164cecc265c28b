//! Retraining while running, against the real broker: closed windows are
//! archived as Parquet, the background retrainer trains a challenger from
//! the archive, promotes it over the untrained champion, and the running
//! job hot-swaps it: later forecasts carry the new model version.
//!
//! The data are the built-in generator's seasonal streams, which a small
//! model learns in seconds, so the promotion this test needs is reliable;
//! whether a challenger *should* win on real data is the rule's business
//! (unit-tested in `retrain`), not this test's.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn archive_retrain_promote_and_hot_swap_while_running() {
    let events: Vec<NabEvent> =
        streamcast::source::generator::generate(&streamcast::source::generator::GenSpec {
            keys: 8,
            points_per_key: 12 * 24 * 14,
            step_ms: 300_000,
            start_ms: 1_700_006_400_000,
            seed: 5,
        })
        .into_iter()
        .map(|e| NabEvent {
            ts_text: streamcast::time::rfc3339_ms(e.ts_ms),
            key: e.key,
            ts_ms: e.ts_ms,
            value: e.value,
        })
        .collect();
    let s = rand_suffix();
    let dir = tempfile::tempdir().unwrap();
    let (input, output, dlq) = (
        format!("it.rt.in.{s}"),
        format!("it.rt.out.{s}"),
        format!("it.rt.dlq.{s}"),
    );
    let archive = dir.path().join("archive");
    let models = dir.path().join("models");
    let body = format!(
        r#"
name = "it-retrain-{s}"
[source]
brokers = "{brokers}"
topic = "{input}"
partitions = 2
[window]
size = "1h"
max_gap_windows = 1000
idle_partition_timeout = "3s"
[model]
cell = "gru"
hidden = 8
horizon = 3
season_windows = 24
warmup_windows = 24
[train]
epochs = 6
lr = 0.01
context = 48
stride = 12
tbptt = 24
burn_in = 12
val_windows = 12
[archive]
enabled = true
dir = "{archive}"
roll_interval = "1s"
[retrain]
enabled = true
every_windows = 1000
every = "1h"
models_dir = "{models}"
[sink]
topic = "{output}"
dead_letter_topic = "{dlq}"
"#,
        brokers = brokers(),
        archive = archive.display(),
        models = models.display(),
    );
    let pipeline = pipeline_file(dir.path(), "retrain", &body);
    create_topics(&[(&input, 2), (&output, 2), (&dlq, 2)]);

    // First half of the history; wait for the retrainer to record a version.
    let half = events.len() / 2;
    let json = |e: &NabEvent| (e.key.clone(), event_json(e));
    produce(&input, events[..half].iter().map(json).collect());
    let mut child = std::process::Command::new(streamcast_bin())
        .arg("run")
        .arg(&pipeline)
        .env(
            "RUST_LOG",
            std::env::var("IT_RETRAIN_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let registry = streamcast::model::Registry::new(models.clone());
    let start = Instant::now();
    let champion = loop {
        if let Some(v) = registry.champion_version() {
            break v;
        }
        if start.elapsed() > Duration::from_secs(300) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("no model was promoted within 300s (or streamcast exited)");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let files = streamcast::archive::list_files(&archive).unwrap();
    assert!(
        !files.is_empty(),
        "the archive holds completed Parquet files"
    );

    // Second half: forecasts made after the swap carry the new version.
    produce(&input, events[half..].iter().map(json).collect());
    let raw = read_topic(
        &output,
        Duration::from_secs(1),
        Duration::from_secs(300),
        |r| {
            r.iter()
                .any(|(_, v)| v.contains(&format!("\"model_version\":\"{champion}\"")))
        },
    );
    // SIGTERM: drain, commit, exit 0.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = {
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("streamcast did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(status.success(), "SIGTERM ends the job cleanly: {status}");
    let versions: BTreeSet<String> = raw
        .iter()
        .map(|(_, v)| {
            serde_json::from_str::<streamcast::sink::ForecastRecord>(v)
                .unwrap()
                .model_version
        })
        .collect();
    assert!(
        versions.len() >= 2,
        "untrained and promoted versions both appear: {versions:?}"
    );
    assert!(
        versions.contains(&champion),
        "forecasts after the swap carry {champion}: {versions:?}"
    );
    let list = registry.list().unwrap();
    let promoted = list.iter().find(|v| v.version == champion).unwrap();
    let d = promoted.status.as_ref().unwrap();
    assert!(
        d.promoted && d.challenger_val_loss < d.champion_val_loss,
        "{d:?}"
    );
}
