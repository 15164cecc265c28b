//! Avro end to end against the real broker and a real Confluent-compatible
//! schema registry (`scripts/registry up`; URL from
//! `STREAMCAST_SCHEMA_REGISTRY`, default the one `scripts/registry` serves):
//! events written in Confluent's wire format with a registered schema,
//! forecasts read back in the wire format and decoded with the schema the
//! registry holds for `<forecast topic>-value`, and the dead letters of a bad
//! schema id, an incompatible record, a non-wire-format payload and a
//! broken datum, each with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use streamcast::decode::registry::{frame, Lookup, Registry};
use streamcast::sink::avro::{decode_forecast, FORECAST_SCHEMA};

use crate::common::*;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

const EVENT_SCHEMA: &str = r#"{"type":"record","name":"Event","namespace":"it.avro","fields":[
    {"name":"key","type":"string"},
    {"name":"ts","type":"string"},
    {"name":"value","type":"double"},
    {"name":"host","type":["null","string"],"default":null}]}"#;

/// A record without the pipeline's value field.
const INCOMPATIBLE_SCHEMA: &str = r#"{"type":"record","name":"Reading","namespace":"it.avro","fields":[
    {"name":"key","type":"string"},
    {"name":"ts","type":"string"},
    {"name":"amount","type":"double"}]}"#;

fn registry_url() -> String {
    std::env::var("STREAMCAST_SCHEMA_REGISTRY")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| {
            let port = std::env::var("REGISTRY_PORT").unwrap_or_else(|_| "8081".into());
            format!("http://127.0.0.1:{port}/apis/ccompat/v7")
        })
}

fn registry(rt: &tokio::runtime::Runtime) -> Registry {
    let r = Registry::new(&streamcast::config::RegistryConfig {
        url: Some(registry_url()),
        ..Default::default()
    })
    .unwrap();
    rt.block_on(r.ping()).unwrap_or_else(|e| {
        panic!("the schema registry does not answer (scripts/registry up): {e}")
    });
    r
}

fn event_datum(key: &str, ts_ms: i64, value: f64) -> Vec<u8> {
    let schema = Schema::parse_str(EVENT_SCHEMA).unwrap();
    let rec = Value::Record(vec![
        ("key".into(), Value::String(key.into())),
        (
            "ts".into(),
            Value::String(streamcast::time::rfc3339_ms(ts_ms)),
        ),
        ("value".into(), Value::Double(value)),
        (
            "host".into(),
            Value::Union(1, Box::new(Value::String("h1".into()))),
        ),
    ]);
    GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(rec)
        .unwrap()
}

fn produce_bytes(rt: &tokio::runtime::Runtime, topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    rt.block_on(async {
        for (k, v) in records {
            producer
                .send(
                    FutureRecord::to(topic)
                        .key(k.as_bytes())
                        .payload(v.as_slice()),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("producing a test event");
        }
    });
}

#[test]
fn avro_events_in_avro_forecasts_out_and_bad_records_are_dead_letters_with_reasons() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = registry(&rt);
    let s = rand_suffix();
    let name = format!("it-avro-{s}");
    let (input, dlq) = (format!("it.avro.in.{s}"), format!("it.avro.dlq.{s}"));
    let output = format!("{name}-out");
    create_topics(&[(&input, 2), (&output, 2), (&dlq, 1)]);

    // The producers' schemas, registered as a Confluent serializer would.
    let event_id = rt
        .block_on(reg.register(&format!("{input}-value"), EVENT_SCHEMA))
        .unwrap();
    let other_id = rt
        .block_on(reg.register(&format!("{input}-reading-value"), INCOMPATIBLE_SCHEMA))
        .unwrap();
    assert_ne!(event_id, other_id);
    let mut unknown_id = 900_000 + (std::process::id() % 1000);
    while rt.block_on(reg.schema_by_id(unknown_id)).unwrap() != Lookup::NotFound {
        unknown_id += 1;
    }

    // Two keys, 12 hourly events each (values a slow ramp).
    let keys = ["web-01", "db-02"];
    let hours = 12i64;
    let mut records = Vec::new();
    for h in 0..hours {
        for (i, k) in keys.iter().enumerate() {
            let ts = T0 + h * HOUR + 30 * 60_000;
            let v = 10.0 * (i + 1) as f64 + h as f64;
            records.push((k.to_string(), frame(event_id, &event_datum(k, ts, v))));
        }
    }
    let good = event_datum("web-01", T0 + HOUR, 1.0);
    let bad: Vec<(String, Vec<u8>, &str, String)> = vec![
        (
            "bad-id".into(),
            frame(unknown_id, &good),
            "unknown_schema",
            format!("unknown schema id {unknown_id}"),
        ),
        (
            "incompatible".into(),
            frame(other_id, &good),
            "incompatible_schema",
            "no field `value`".into(),
        ),
        (
            "json".into(),
            br#"{"key":"web-01","ts":"2024-01-01T01:00:00Z","value":1}"#.to_vec(),
            "bad_wire_format",
            "magic byte is 0x7b".into(),
        ),
        (
            "cut".into(),
            // Cut inside `value` (apache-avro reads a datum that ends
            // exactly before a union as that union's null, so the cut must
            // fall before the last union).
            frame(event_id, &good[..good.len() - 8]),
            "bad_avro",
            format!("does not decode with schema id {event_id}"),
        ),
    ];
    records.extend(bad.iter().map(|(k, p, _, _)| (k.clone(), p.clone())));
    produce_bytes(&rt, &input, &records);

    let dir = tempfile::tempdir().unwrap();
    let pipeline = job_pipeline(
        dir.path(),
        &name,
        &input,
        2,
        &dlq,
        &format!(
            r#"
[decode]
format = "avro"
[window]
allowed_lateness = "0s"
max_gap_windows = 0
[model]
cell = "gru"
hidden = 8
horizon = 2
warmup_windows = 3
season_windows = 24
[sink]
format = "avro"
[registry]
url = "{}"
"#,
            registry_url()
        ),
    );
    let status = Command::new(streamcast_bin())
        .args(["run", pipeline.to_str().unwrap(), "--exit-when-idle", "4s"])
        .env("RUST_LOG", "warn")
        .env_remove("STREAMCAST_SCHEMA_REGISTRY")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("running streamcast");
    assert!(status.success(), "streamcast run failed: {status}");

    // Forecasts: every closed window of each key (all but the last hour,
    // whose window the final watermark does not pass), in the wire format
    // with the id the registry gives the forecast schema for the subject.
    let forecast_id = rt
        .block_on(reg.register(&format!("{output}-value"), FORECAST_SCHEMA))
        .unwrap();
    let Lookup::Found(text) = rt.block_on(reg.schema_by_id(forecast_id)).unwrap() else {
        panic!("the registry lost schema {forecast_id}");
    };
    let schema = Schema::parse_str(&text).unwrap();
    let expected: BTreeSet<(String, i64)> = keys
        .iter()
        .flat_map(|k| (1..hours).map(move |h| (k.to_string(), T0 + h * HOUR)))
        .collect();
    let raw = read_topic_bytes(
        &output,
        Duration::from_secs(1),
        Duration::from_secs(60),
        |r| r.len() >= expected.len(),
    );
    let mut got = BTreeMap::new();
    for (k, payload) in &raw {
        let (id, f) = decode_forecast(&schema, payload).unwrap();
        assert_eq!(id, forecast_id, "forecasts carry the registered schema id");
        assert_eq!(&f.key, k, "the Kafka key is the entity key");
        assert_eq!(f.forecast.len(), 2);
        assert!(f.forecast.iter().all(|x| x.is_finite()), "{f:?}");
        assert_eq!(f.step_ms, HOUR);
        assert_eq!(f.window_end, streamcast::time::rfc3339_ms(f.window_end_ms));
        *got.entry((f.key.clone(), f.window_end_ms)).or_insert(0) += 1;
    }
    let windows: BTreeSet<_> = got.keys().cloned().collect();
    assert_eq!(windows, expected, "forecast windows");
    assert!(
        got.values().all(|&n| n == 1),
        "a window forecast twice: {got:?}"
    );

    // Dead letters: each bad record once, with its kind and reason.
    let dl = read_topic(&dlq, Duration::from_secs(1), Duration::from_secs(30), |r| {
        r.len() >= bad.len()
    });
    assert_eq!(dl.len(), bad.len(), "{dl:?}");
    for (key, _, kind, reason) in &bad {
        let letter = dl
            .iter()
            .map(|(_, v)| serde_json::from_str::<serde_json::Value>(v).unwrap())
            .find(|v| v["kind"] == *kind)
            .unwrap_or_else(|| panic!("no {kind} dead letter (record {key}): {dl:?}"));
        let r = letter["reason"].as_str().unwrap();
        assert!(r.contains(reason.as_str()), "{kind}: {r}");
        assert_eq!(letter["topic"], input.as_str());
    }
}
