//! A secured cluster: the local broker's SASL_SSL listener (TLS with the CA
//! that `scripts/kafka` generates, SASL SCRAM-SHA-512, user `streamcast`,
//! default 127.0.0.1:9094), with the password handed to the job through
//! `${ENV}` in the pipeline file, never written in it. Also: the configured
//! replication factor reaches every topic the job creates.
//!
//! Where: `KAFKA_STATE_DIR` (default `<project>/.state/kafka`) holds
//! `secrets/`; the listener is `STREAMCAST_SECURE_BROKERS`, else
//! 127.0.0.1:`KAFKA_SASL_PORT` (default `KAFKA_PORT` + 2 = 9094).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::types::RDKafkaErrorCode;
use streamcast::broker::Connection;

use crate::common::*;

const HOUR: i64 = 3_600_000;
/// The variable the pipeline file names for the password.
const PASSWORD_VAR: &str = "STREAMCAST_IT_SASL_PASSWORD";

/// The secured listener and what a client needs to reach it.
struct Secured {
    brokers: String,
    ca: PathBuf,
    password: String,
}

fn secured() -> Secured {
    let state = std::env::var("KAFKA_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".state/kafka"));
    let secrets = state.join("secrets");
    let port = std::env::var("KAFKA_SASL_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .or_else(|| {
            let plain = std::env::var("KAFKA_PORT").ok()?.parse::<u16>().ok()?;
            plain.checked_add(2)
        })
        .unwrap_or(9094);
    let brokers =
        std::env::var("STREAMCAST_SECURE_BROKERS").unwrap_or_else(|_| format!("127.0.0.1:{port}"));
    assert!(
        std::net::TcpStream::connect_timeout(
            &brokers.parse().expect("host:port"),
            Duration::from_secs(2)
        )
        .is_ok(),
        "nothing listens on {brokers}: start the broker with scripts/kafka up; one started \
         by an older scripts/kafka has no SASL_SSL listener, scripts/kafka restart adds it"
    );
    let password = std::fs::read_to_string(secrets.join("streamcast.password"))
        .unwrap_or_else(|e| {
            panic!(
                "no SCRAM password in {} ({e}): is KAFKA_STATE_DIR the broker's state dir?",
                secrets.display()
            )
        })
        .trim()
        .to_string();
    let ca = secrets.join("ca.pem");
    assert!(ca.is_file(), "no CA at {}", ca.display());
    Secured {
        brokers,
        ca,
        password,
    }
}

/// The `[kafka.librdkafka]` table of the secured listener, the password
/// written as `${PASSWORD_VAR}`.
fn security_toml(s: &Secured) -> String {
    format!(
        r#"
[kafka.librdkafka]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "streamcast"
"sasl.password" = "${{{PASSWORD_VAR}}}"
"ssl.ca.location" = "{ca}"
[source]
brokers = "{brokers}"
"#,
        ca = s.ca.display(),
        brokers = s.brokers
    )
}

/// The test's own clients: the same settings, with the password itself.
fn connection(s: &Secured) -> Connection {
    let mut c = Connection::plain(s.brokers.clone());
    c.options = [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "streamcast"),
        ("sasl.password", s.password.as_str()),
        ("ssl.ca.location", &s.ca.to_string_lossy()),
    ]
    .into_iter()
    .collect();
    c
}

/// Runs a streamcast subcommand with the password in the environment (and
/// no `STREAMCAST_BROKERS`, so the file's secured brokers count).
fn streamcast(dir: &Path, password: &str, args: &[&str]) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg("90")
        .arg(streamcast_bin())
        .args(args)
        .env(PASSWORD_VAR, password)
        .env_remove("STREAMCAST_BROKERS")
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .output()
        .unwrap();
    (out, started.elapsed())
}

#[test]
fn a_job_runs_over_sasl_ssl_with_the_password_from_the_environment() {
    let sec = secured();
    let kafka = connection(&sec);
    let s = rand_suffix();
    let (input, dlq) = (format!("secure-in-{s}"), format!("secure-dlq-{s}"));
    let name = format!("secure-{s}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(streamcast::broker::create_topics(
        &kafka,
        &[(input.as_str(), 1)],
        5,
    ))
    .expect("creating the input topic over SASL_SSL");

    // Two keys, an event every 10 minutes for 6 hours.
    let t0 = 1_767_571_200_000i64; // 2026-01-05T00:00:00Z
    let events: Vec<(String, i64)> = (0..=36)
        .flat_map(|m| ["a", "b"].map(|k| (k.to_string(), t0 + m * 600_000)))
        .collect();
    let records = events.iter().map(|(k, ts)| {
        let ts = streamcast::time::rfc3339_ms(*ts);
        (
            k.clone(),
            format!(r#"{{"key":"{k}","ts":"{ts}","value":1.5}}"#),
        )
    });
    let sent = rt
        .block_on(streamcast::broker::produce(&kafka, &input, records))
        .expect("producing over SASL_SSL");
    assert_eq!(sent, events.len() as u64);
    let newest = events.iter().map(|(_, ts)| *ts).max().unwrap();
    let expected: BTreeSet<(String, i64)> = events
        .iter()
        .map(|(k, ts)| (k.clone(), ts.div_euclid(HOUR) * HOUR + HOUR))
        .filter(|(_, end)| *end <= newest)
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let pipeline = job_pipeline(dir.path(), &name, &input, 1, &dlq, &security_toml(&sec));
    let text = std::fs::read_to_string(&pipeline).unwrap();
    assert!(
        !text.contains(&sec.password),
        "the secret stays out of the file"
    );
    let p = pipeline.to_str().unwrap();

    // `check` prints the effective config with the secret redacted.
    let (out, _) = streamcast(dir.path(), &sec.password, &["check", p]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains(r#""sasl.password" = "***""#), "{printed}");
    assert!(!printed.contains(&sec.password), "{printed}");

    // The whole job over the secured listener: topic admin, the state
    // topic and its restore, consumer, producers, offset lookups.
    let (out, took) = streamcast(
        dir.path(),
        &sec.password,
        &["run", p, "--exit-when-idle", "2s"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "streamcast run failed:\n{stderr}");
    assert!(
        !stderr.contains(&sec.password),
        "the secret stays out of the logs"
    );

    let read =
        streamcast::verify::read_topic(&kafka, &format!("{name}-out"), Duration::from_secs(30))
            .expect("reading the forecasts over SASL_SSL");
    let got: BTreeSet<(String, i64)> = read
        .records
        .iter()
        .map(|r| (r.key.clone(), r.window_end_ms))
        .collect();
    assert_eq!(
        got, expected,
        "every closed window forecast, over TLS + SCRAM"
    );
    eprintln!(
        "secure run: {} forecasts in {took:?} over {}",
        read.records.len(),
        sec.brokers
    );
}

#[test]
fn a_wrong_password_is_a_clear_error_and_exit_1_not_a_hang() {
    let sec = secured();
    let s = rand_suffix();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = job_pipeline(
        dir.path(),
        &format!("secure-bad-{s}"),
        &format!("secure-bad-in-{s}"),
        1,
        &format!("secure-bad-dlq-{s}"),
        &security_toml(&sec),
    );
    let wrong = "not-the-password";
    let (out, took) = streamcast(
        dir.path(),
        wrong,
        &["run", pipeline.to_str().unwrap(), "--exit-when-idle", "2s"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit 1, not a hang (124):\n{stderr}"
    );
    assert!(took < Duration::from_secs(45), "took {took:?}");
    assert!(
        stderr.contains("refused the connection") && stderr.contains("SASL authentication"),
        "the error says authentication failed:\n{stderr}"
    );
    assert!(
        !stderr.contains(wrong),
        "the password is not printed:\n{stderr}"
    );
}

/// A client speaking plaintext to the TLS listener is not "broker
/// unreachable, retrying": librdkafka only sees the connection drop, but the listener
/// closes every connection at the first request, which an unreachable
/// broker does not do: the job stops after a second look, exit 1, naming
/// security.protocol.
#[test]
fn a_wrong_security_protocol_is_a_clear_error_not_a_retry_loop() {
    let sec = secured();
    let s = rand_suffix();
    let dir = tempfile::tempdir().unwrap();
    let plaintext = security_toml(&sec).replace(
        "\"security.protocol\" = \"SASL_SSL\"",
        "\"security.protocol\" = \"PLAINTEXT\"",
    );
    assert!(plaintext.contains("PLAINTEXT"));
    let pipeline = job_pipeline(
        dir.path(),
        &format!("secure-proto-{s}"),
        &format!("secure-proto-in-{s}"),
        1,
        &format!("secure-proto-dlq-{s}"),
        &plaintext,
    );
    let (out, _) = streamcast(
        dir.path(),
        &sec.password,
        &["run", pipeline.to_str().unwrap(), "--exit-when-idle", "2s"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit 1, not a hang:\n{stderr}");
    assert!(
        stderr.contains("refused the connection") && stderr.contains("security.protocol"),
        "the error names the protocol:\n{stderr}"
    );
    // One retry (a broker that is starting may close a connection early
    // once), not the unreachable broker's whole series.
    assert!(
        stderr.matches("Kafka not reachable yet; retrying").count() <= 1,
        "not retried like an unreachable broker:\n{stderr}"
    );
}

/// A single broker cannot hold two replicas, so it refuses a topic asked
/// for with replication factor 2: proof the factor reaches the request,
/// for the pipeline's topics and for the state changelog.
#[test]
fn the_replication_factor_reaches_every_topic_the_job_creates() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rand_suffix();
    let input = format!("secure-rf-in-{s}");
    let cfg = streamcast::testkit::pipeline(&format!(
        "name = \"rf-{s}\"\n[kafka]\nreplication_factor = 2\n[source]\nbrokers = \"{}\"\n\
         topic = \"{input}\"\npartitions = 1\nconnect_attempts = 2\n[sink]\n\
         topic = \"secure-rf-out-{s}\"\ndead_letter_topic = \"secure-rf-dlq-{s}\"\n",
        brokers()
    ));
    let refused = |e: streamcast::Error, topic: &str| match e {
        streamcast::Error::TopicAdmin { topic: t, code } => {
            assert_eq!(code, RDKafkaErrorCode::InvalidReplicationFactor);
            assert_eq!(t, topic);
        }
        e => panic!("expected the broker to refuse 2 replicas of {topic}, got: {e}"),
    };
    let err = rt
        .block_on(streamcast::broker::ensure_topics(&cfg))
        .unwrap_err();
    refused(err, &input);

    // The input exists (one replica): the changelog is still asked for with 2.
    create_topics(&[(input.as_str(), 1)]);
    let err = rt
        .block_on(streamcast::state::changelog::ensure_topic(&cfg))
        .unwrap_err();
    refused(err, &cfg.state_topic());
}
