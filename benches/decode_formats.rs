//! Decode throughput by payload format: the same events as JSON and as
//! Avro in Confluent's wire format, through `decode::Decoder::decode` in
//! batches of 10,000 (the job's default `source.max_batch` order), one value
//! field, 1,000 keys. The Avro writer schema is preloaded
//! (`Decoder::add_schema`): the registry is asked once per id and job, so
//! it is no part of the steady state measured here. JSON and Avro runs
//! alternate, REPS each; median and range of events/s are printed.
//!
//!   cargo bench --bench decode_formats

// Bench code may unwrap: a failing unwrap is a failing run.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use streamcast::config::{DecodeConfig, PayloadFormat};
use streamcast::decode::registry::frame;
use streamcast::decode::{Decoder, RawMessage};

const N: usize = 400_000;
const BATCH: usize = 10_000;
const KEYS: usize = 1_000;
const REPS: usize = 5;
const SCHEMA: &str = r#"{"type":"record","name":"Event","fields":[
    {"name":"key","type":"string"},
    {"name":"ts","type":"string"},
    {"name":"value","type":"double"}]}"#;

fn messages(payloads: Vec<Vec<u8>>) -> Vec<RawMessage> {
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| RawMessage {
            payload: Some(p),
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
        })
        .collect()
}

fn run(d: &Decoder, msgs: &[RawMessage]) -> f64 {
    let start = Instant::now();
    let mut rows = 0;
    for chunk in msgs.chunks(BATCH) {
        let out = d.decode(chunk);
        assert!(out.dead_letters.is_empty(), "{:?}", &out.dead_letters[..1]);
        rows += out.events.num_rows();
    }
    assert_eq!(rows, msgs.len());
    msgs.len() as f64 / start.elapsed().as_secs_f64()
}

fn summary(name: &str, mut v: Vec<f64>, bytes: usize) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:5} {:>6.2} M events/s (median; range {:.2}..{:.2}), {:.1} bytes/event",
        v[v.len() / 2] / 1e6,
        v[0] / 1e6,
        v[v.len() - 1] / 1e6,
        bytes as f64 / N as f64
    );
}

fn main() {
    let schema = Schema::parse_str(SCHEMA).unwrap();
    let writer = GenericDatumWriter::builder(&schema).build().unwrap();
    let (mut json, mut avro) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for i in 0..N {
        let key = format!("host-{:04}", i % KEYS);
        let ts = streamcast::time::rfc3339_ms(1_704_067_200_000 + (i / KEYS) as i64 * 60_000);
        let value = (i % 977) as f64 * 0.25;
        json.push(
            serde_json::json!({"key": key, "ts": ts, "value": value})
                .to_string()
                .into_bytes(),
        );
        let rec = Value::Record(vec![
            ("key".into(), Value::String(key)),
            ("ts".into(), Value::String(ts)),
            ("value".into(), Value::Double(value)),
        ]);
        avro.push(frame(1, &writer.write_value_to_vec(rec).unwrap()));
    }
    let (jb, ab) = (
        json.iter().map(Vec::len).sum::<usize>(),
        avro.iter().map(Vec::len).sum::<usize>(),
    );
    let (json, avro) = (messages(json), messages(avro));
    let cfg = DecodeConfig {
        // Events of 2024: far in the past, never "ahead of the clock".
        ..DecodeConfig::default()
    };
    let jd = Decoder::new(&cfg);
    let ad = Decoder::new(&DecodeConfig {
        format: PayloadFormat::Avro,
        ..cfg
    });
    ad.add_schema(1, SCHEMA);
    let (mut jr, mut ar) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        jr.push(run(&jd, &json));
        ar.push(run(&ad, &avro));
    }
    println!(
        "decode of {N} events, batches of {BATCH}, {KEYS} keys, {REPS} runs each (alternating)"
    );
    summary("json", jr, jb);
    summary("avro", ar, ab);
}
