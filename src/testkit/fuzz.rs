//! Structured fuzzing on stable Rust: generators of near-valid inputs (and
//! raw bytes) for the places where untrusted input enters, and the
//! invariants each must keep. cargo-fuzz needs a nightly compiler and
//! sanitizers; these targets run on the toolchain the project builds with,
//! at length by `scripts/fuzz` (an ignored unit test, so it reuses the
//! test build: millions of inputs, figures in BENCHMARKS.md) and as a short
//! smoke run in the unit tests.
//!
//! Targets and invariants:
//! - `decode`: JSON payloads (valid events, events with one field replaced
//!   by a hostile token, duplicated or missing fields, truncated, bytes
//!   flipped, raw bytes) in every time format, then the window stage. No
//!   panic; every message is exactly one event row or one dead letter of
//!   its own offset; accepted events have a non-empty key within
//!   `max_key_bytes`, a time within years 0000..=9999 and finite values
//!   within `max_abs_value`; the window stage takes them without panicking
//!   and its watermark never goes back.
//! - `time`: `parse_time` on numbers (extremes, NaN, infinities) and on
//!   near-RFC 3339 text. No panic; an accepted time is within years
//!   0000..=9999, and an RFC 3339 time written back parses to itself.
//! - `pipeline`: pipeline files with settings replaced by hostile values
//!   (absurd durations, wrong types, huge numbers) and byte mutations. No
//!   panic; an accepted file builds a window spec and a decoder.
//!
//! A panic is caught and reported with the input that caused it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{DecodeConfig, PipelineConfig, TimeFormat};
use crate::decode::{parse_time, Decoder, RawMessage, RawTime};
use crate::window::{WindowSpec, WindowStage};

/// What a target did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: &'static str,
    pub inputs: u64,
    /// Inputs accepted (event rows, parsed times, valid pipelines).
    pub accepted: u64,
    /// Inputs refused with an error (dead letters, parse errors).
    pub refused: u64,
    pub seconds: f64,
}

/// A broken invariant: which, and the input (lossy UTF-8, cut) that broke it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub target: &'static str,
    pub what: String,
    pub input: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (input: {:?})",
            self.target, self.what, self.input
        )
    }
}

/// The targets by name, as `scripts/fuzz` lists them.
pub const TARGETS: &[&str] = &["decode", "time", "pipeline"];

/// Runs target `name` on `n` generated inputs from `seed`.
pub fn run(name: &str, seed: u64, n: u64) -> Result<Report, Failure> {
    match name {
        "decode" => decode_target(seed, n),
        "time" => time_target(seed, n),
        "pipeline" => pipeline_target(seed, n),
        other => Err(Failure {
            target: "fuzz",
            what: format!("unknown target {other:?}; known: {TARGETS:?}"),
            input: String::new(),
        }),
    }
}

// ------------------------------------------------------------------ tokens

/// Values that have broken parsers before: extremes, wrong types, escapes.
const HOSTILE: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "1.0",
    "1e3",
    "1e308",
    "-1e308",
    "1e309",
    "1e999",
    "-1e999",
    "4.9e-324",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999999",
    "NaN",
    "Infinity",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "[1,2]",
    "{\"a\":1}",
    "\"\"",
    "\"a\"",
    "\"1\"",
    "\"1e3\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\u001b[31m\"",
    "\"\\\"\"",
    "\"2024-01-01T00:00:00Z\"",
    "\"2024-02-30T00:00:00Z\"",
    "\"9999-12-31T23:59:59Z\"",
    "\"0000-01-01T00:00:00Z\"",
    "\"2024-01-01T00:00:00+25:00\"",
    "\"2024-01-01 00:00:00\"",
    "\"yesterday\"",
    "1700000000000",
    "1700000000",
    "-1700000000000",
    "8e15",
    "8.1e15",
];

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random()).collect()
}

fn random_text(rng: &mut StdRng, max: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789-+:.TZtz eE\"\\{}[],";
    let n = rng.random_range(0..=max);
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

// ------------------------------------------------------------------ decode

const FORMATS: [TimeFormat; 4] = [
    TimeFormat::EpochMs,
    TimeFormat::EpochS,
    TimeFormat::Rfc3339,
    TimeFormat::Kafka,
];

/// A plausible event time for `fmt`, as JSON.
fn good_time(rng: &mut StdRng, fmt: TimeFormat) -> String {
    let ms = 1_700_000_000_000i64 + rng.random_range(0..10_000_000_000i64);
    match fmt {
        TimeFormat::EpochMs | TimeFormat::Kafka => ms.to_string(),
        TimeFormat::EpochS => format!("{}", ms as f64 / 1000.0),
        TimeFormat::Rfc3339 => format!("\"{}\"", crate::time::rfc3339_ms(ms)),
    }
}

/// One payload: mostly near-valid events, some mangled, some raw bytes.
fn payload(rng: &mut StdRng, fmt: TimeFormat) -> Vec<u8> {
    let key = match rng.random_range(0..4) {
        0 => format!("{}", rng.random_range(0..1000)),
        _ => format!("\"k{}\"", rng.random_range(0..200)),
    };
    let mut fields = vec![
        ("key", key),
        ("ts", good_time(rng, fmt)),
        ("value", format!("{}", rng.random_range(-1e3..1e3))),
    ];
    let mode = rng.random_range(0..10);
    if mode == 1 || mode == 2 {
        let i = rng.random_range(0..fields.len());
        fields[i].1 = pick(rng, HOSTILE).to_string();
    }
    if mode == 3 {
        let i = rng.random_range(0..fields.len());
        fields.remove(i);
    }
    if mode == 4 {
        let i = rng.random_range(0..fields.len());
        let dup = (fields[i].0, pick(rng, HOSTILE).to_string());
        fields.push(dup);
    }
    if mode == 5 {
        fields.push(("extra", pick(rng, HOSTILE).to_string()));
        fields.swap(0, 3);
    }
    let mut text = format!(
        "{{{}}}",
        fields
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
    )
    .into_bytes();
    match mode {
        6 => {
            let cut = rng.random_range(0..=text.len());
            text.truncate(cut);
        }
        7 => {
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..text.len());
                text[i] = rng.random();
            }
        }
        8 => text = random_bytes(rng, 64),
        9 if rng.random_range(0..50) == 0 => {
            // Sometimes huge: a whole document in the key field.
            let big = "x".repeat(rng.random_range(1_000..5_000));
            text = format!(
                "{{\"key\":\"{big}\",\"ts\":{},\"value\":1}}",
                good_time(rng, fmt)
            )
            .into_bytes();
        }
        _ => {}
    }
    text
}

fn kafka_timestamp(rng: &mut StdRng) -> Option<i64> {
    match rng.random_range(0..8) {
        0 => None,
        1 => Some(-1),
        2 => Some(i64::MAX),
        3 => Some(i64::MIN),
        _ => Some(1_700_000_000_000 + rng.random_range(0..10_000_000_000i64)),
    }
}

fn decode_target(seed: u64, n: u64) -> Result<Report, Failure> {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report {
        target: "decode",
        ..Report::default()
    };
    let fail = |what: String, input: &[u8]| Failure {
        target: "decode",
        what,
        input: lossy(input),
    };
    const BATCH: u64 = 256;
    let mut offset = 0i64;
    for (round, fmt) in (0..n.div_ceil(BATCH)).zip(FORMATS.iter().cycle()) {
        let cfg = DecodeConfig {
            time_format: *fmt,
            max_key_bytes: 256,
            ..DecodeConfig::default()
        };
        let decoder = Decoder::new(&cfg);
        let size = BATCH.min(n - round * BATCH) as usize;
        let messages: Vec<RawMessage> = (0..size)
            .map(|_| {
                offset += 1;
                RawMessage {
                    payload: (rng.random_range(0..100) > 0).then(|| payload(&mut rng, *fmt)),
                    partition: 0,
                    offset,
                    timestamp_ms: kafka_timestamp(&mut rng),
                }
            })
            .collect();
        let first = messages[0].payload.clone().unwrap_or_default();
        let decoded = catch_unwind(AssertUnwindSafe(|| decoder.decode(&messages)))
            .map_err(|_| fail("decode panicked on a batch starting with".into(), &first))?;
        let rows = decoded.events.num_rows();
        if rows + decoded.dead_letters.len() != messages.len() {
            return Err(fail(
                format!(
                    "{} messages became {rows} rows and {} dead letters",
                    messages.len(),
                    decoded.dead_letters.len()
                ),
                &first,
            ));
        }
        check_events(&decoded.events, &cfg, &messages)
            .map_err(|(what, i)| fail(what, messages[i].payload.as_deref().unwrap_or_default()))?;
        report.accepted += rows as u64;
        report.refused += decoded.dead_letters.len() as u64;
        report.inputs += messages.len() as u64;
        window_step(&decoded.events).map_err(|what| fail(what, &first))?;
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The accepted rows keep the decoder's promises. Returns the broken one
/// and the index of its message.
fn check_events(
    events: &arrow::array::RecordBatch,
    cfg: &DecodeConfig,
    messages: &[RawMessage],
) -> Result<(), (String, usize)> {
    use arrow::array::{AsArray, Float64Array, Int64Array};
    use arrow::datatypes::Int64Type;
    let keys = events.column(0).as_string::<i32>();
    let ts = events.column(1).as_primitive::<Int64Type>();
    let offsets = events
        .column(crate::schema::events::OFFSET)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or(("the offset column is not Int64".to_string(), 0))?;
    let values = events
        .column(crate::schema::events::FIRST_VALUE)
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or(("the value column is not Float64".to_string(), 0))?;
    let first = messages.first().map_or(0, |m| m.offset);
    for i in 0..events.num_rows() {
        let at = (offsets.value(i) - first) as usize;
        let key = keys.value(i);
        if key.is_empty() || key.len() > cfg.max_key_bytes {
            return Err((format!("accepted a key of {} bytes", key.len()), at));
        }
        if !(crate::decode::MIN_MS..=crate::decode::MAX_MS).contains(&ts.value(i)) {
            return Err((format!("accepted the time {} ms", ts.value(i)), at));
        }
        let v = values.value(i);
        if !v.is_finite() || v.abs() > cfg.max_abs_value {
            return Err((format!("accepted the value {v}"), at));
        }
    }
    Ok(())
}

/// The decoded events through a small window stage: no panic, and the
/// watermark never goes back.
fn window_step(events: &arrow::array::RecordBatch) -> Result<(), String> {
    thread_local! {
        static STAGE: std::cell::RefCell<WindowStage> = std::cell::RefCell::new(
            WindowStage::new(WindowSpec::from_config(&crate::testkit::pipeline(
                "[window]\nsize = \"1m\"\nmax_open_panes = 10000\nmax_keys = 1000",
            ))),
        );
    }
    STAGE.with(|s| {
        let mut stage = s.borrow_mut();
        let before = stage.watermark();
        catch_unwind(AssertUnwindSafe(|| {
            stage.process(events, 0);
        }))
        .map_err(|_| "the window stage panicked".to_string())?;
        if stage.watermark() < before {
            return Err(format!(
                "the watermark went back from {before} to {}",
                stage.watermark()
            ));
        }
        Ok(())
    })
}

// ------------------------------------------------------------------ time

fn time_target(seed: u64, n: u64) -> Result<Report, Failure> {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report {
        target: "time",
        ..Report::default()
    };
    const NUMBERS: [f64; 10] = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN,
        8e15,
        -8e15,
        8.000000000000001e15,
        9.3e18,
        -9.3e18,
    ];
    for i in 0..n {
        let fmt = FORMATS[(i % 3) as usize];
        let raw = match rng.random_range(0..6) {
            0 => RawTime::Number(NUMBERS[rng.random_range(0..NUMBERS.len())]),
            1 => RawTime::Number(match fmt {
                TimeFormat::EpochS => rng.random_range(-7e10..3e11),
                _ => rng.random_range(-7e13..3e14),
            }),
            2 if rng.random_range(0..4) == 0 => RawTime::Number(rng.random_range(-1e19..1e19)),
            2 => RawTime::Text(random_text(&mut rng, 40)),
            3 => {
                let mut s = crate::time::rfc3339_ms(rng.random_range(-1e14 as i64..1e14 as i64))
                    .into_bytes();
                let at = rng.random_range(0..s.len());
                s[at] = b"0123456789-:TZ+. "[rng.random_range(0..17)];
                RawTime::Text(String::from_utf8_lossy(&s).into_owned())
            }
            _ => RawTime::Text(crate::time::rfc3339_ms(
                rng.random_range(crate::decode::MIN_MS - 1000..=crate::decode::MAX_MS + 1000),
            )),
        };
        let input = format!("{raw:?} as {fmt:?}");
        let fail = |what: String| Failure {
            target: "time",
            what,
            input: input.clone(),
        };
        let parsed = catch_unwind(|| parse_time(&raw, fmt))
            .map_err(|_| fail("parse_time panicked".into()))?;
        report.inputs += 1;
        match parsed {
            Ok(ms) => {
                report.accepted += 1;
                if !(crate::decode::MIN_MS..=crate::decode::MAX_MS).contains(&ms) {
                    return Err(fail(format!("accepted {ms} ms")));
                }
                if fmt == TimeFormat::Rfc3339 {
                    let back = parse_time(&RawTime::Text(crate::time::rfc3339_ms(ms)), fmt);
                    if back != Ok(ms) {
                        return Err(fail(format!("{ms} ms written back reads {back:?}")));
                    }
                }
            }
            Err(_) => report.refused += 1,
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

// ------------------------------------------------------------------ pipeline

/// Settings and hostile values for them.
const SETTINGS: &[(&str, &str)] = &[
    ("window", "size"),
    ("window", "slide"),
    ("window", "allowed_lateness"),
    ("window", "max_gap_windows"),
    ("window", "key_ttl"),
    ("window", "max_keys"),
    ("window", "max_open_panes"),
    ("window", "idle_partition_timeout"),
    ("decode", "max_future_skew"),
    ("decode", "max_key_bytes"),
    ("decode", "max_abs_value"),
    ("decode", "value_fields"),
    ("decode", "time_format"),
    ("model", "hidden"),
    ("model", "layers"),
    ("model", "horizon"),
    ("model", "season_windows"),
    ("model", "warmup_windows"),
    ("model", "quantiles"),
    ("model", "cell"),
    ("state", "commit_interval"),
    ("sink", "shutdown_timeout"),
    ("source", "topic"),
];

const VALUES: &[&str] = &[
    "\"1h\"",
    "\"0s\"",
    "\"-5m\"",
    "\"1e30s\"",
    "\"1e-30s\"",
    "\"NaNs\"",
    "\"infs\"",
    "\"100000y\"",
    "\"1h1h\"",
    "\"\"",
    "\"h\"",
    "\"99999999999999999999ms\"",
    "0",
    "-1",
    "1",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "nan",
    "inf",
    "true",
    "[]",
    "[0.1, 0.9]",
    "[1.5]",
    "[\"value\", \"value\"]",
    "{}",
    "\"lstm\"",
    "\"nope\"",
    "\"epoch_ms\"",
    "4294967296",
];

fn pipeline_target(seed: u64, n: u64) -> Result<Report, Failure> {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report {
        target: "pipeline",
        ..Report::default()
    };
    let path = Path::new("fuzz.toml");
    for _ in 0..n {
        let mut text = super::MINIMAL.to_string();
        for _ in 0..rng.random_range(1..4) {
            let (table, key) = SETTINGS[rng.random_range(0..SETTINGS.len())];
            text.push_str(&format!("[{table}]\n{key} = {}\n", pick(&mut rng, VALUES)));
        }
        let mut bytes = text.into_bytes();
        if rng.random_range(0..4) == 0 {
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let fail = |what: &str| Failure {
            target: "pipeline",
            what: what.to_string(),
            input: text.clone(),
        };
        let parsed = catch_unwind(|| PipelineConfig::parse(&text, path))
            .map_err(|_| fail("parsing panicked"))?;
        report.inputs += 1;
        match parsed {
            Ok(cfg) => {
                report.accepted += 1;
                catch_unwind(AssertUnwindSafe(|| {
                    let spec = WindowSpec::from_config(&cfg);
                    let _ = WindowStage::new(spec);
                    let _ = Decoder::new(&cfg.decode);
                }))
                .map_err(|_| fail("an accepted pipeline's stages panicked"))?;
            }
            Err(_) => report.refused += 1,
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    /// The long run (`scripts/fuzz`): `STREAMCAST_FUZZ_INPUTS` inputs per
    /// target (default 1,000,000) from `STREAMCAST_FUZZ_SEED` (default 1),
    /// a table on stdout.
    #[test]
    #[ignore = "long; run by scripts/fuzz"]
    fn fuzz_long() {
        let env = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let n = env("STREAMCAST_FUZZ_INPUTS", 1_000_000);
        let seed = env("STREAMCAST_FUZZ_SEED", 1);
        println!("| target | inputs | accepted | refused | seconds | inputs/s |");
        println!("|---|---|---|---|---|---|");
        for target in super::TARGETS {
            let r = super::run(target, seed, n).unwrap_or_else(|f| panic!("{f}"));
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.0} |",
                r.target,
                r.inputs,
                r.accepted,
                r.refused,
                r.seconds,
                r.inputs as f64 / r.seconds
            );
        }
    }

    /// A short run of every target (the long runs are `scripts/fuzz`).
    #[test]
    fn fuzz_smoke() {
        for target in super::TARGETS {
            let r = super::run(target, 7, 3_000).unwrap_or_else(|f| panic!("{f}"));
            assert_eq!(r.inputs, 3_000);
            // The generators reach both sides of every target.
            assert!(r.accepted > 0 && r.refused > 0, "{r:?}");
        }
    }
}
