//! The command line's handling of bad configuration and an absent broker.

use std::process::Command;

use crate::common::*;

const GOOD: &str = r#"
name = "cli"
[source]
topic = "cli.in"
connect_attempts = 2
[window]
size = "5m"
[sink]
topic = "cli.out"
dead_letter_topic = "cli.dlq"
"#;

fn run_with(body: &str, envs: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(dir.path(), "p", body);
    let out = Command::new(streamcast_bin())
        .arg("run")
        .arg(&p)
        // A pipeline wrongly accepted then ends (and the test fails)
        // instead of running forever.
        .args(["--exit-when-idle", "5s"])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_pipeline_files_fail_at_start_naming_file_and_field() {
    let cases = [
        (
            GOOD.replace("size = \"5m\"", "size = \"5m\"\nwindow_size = 3"),
            "window_size",
        ),
        (GOOD.replace("size = \"5m\"", "size = 5m"), "<toml>"),
        (
            GOOD.replace("size = \"5m\"", "size = \"five minutes\""),
            "window.size",
        ),
        (GOOD.replace("topic = \"cli.out\"\n", ""), "sink"),
        (
            GOOD.replace("[sink]", "[model]\ncell = \"mamba\"\n[sink]"),
            "model.cell",
        ),
    ];
    for (body, field) in cases {
        let (ok, err) = run_with(&body, &[]);
        assert!(!ok, "a bad pipeline must fail: {body}");
        assert!(err.contains("p.toml"), "names the file: {err}");
        assert!(err.contains(field), "names the field {field}: {err}");
        assert!(!err.contains("panicked"), "no panic: {err}");
    }
}

#[test]
fn unreachable_broker_is_a_clear_error_not_a_panic() {
    // Port 1 on loopback: nothing listens there.
    let (ok, err) = run_with(GOOD, &[("STREAMCAST_BROKERS", "127.0.0.1:1")]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach Kafka brokers at 127.0.0.1:1 after 2 attempts"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
