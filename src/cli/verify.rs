//! `streamcast verify`: proves (or disproves) the delivery guarantees of a
//! forecast topic against a reference (another topic, or a backfill's
//! output file) by `(key, window_end)`; see `streamcast::verify` for what
//! counts as missing, unexpected, duplicate and differing.
//!
//! Exit 0 when nothing is missing or differing (and, with
//! `--exactly-once`, nothing is duplicated); exit 1 otherwise (and on errors).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use streamcast::broker::Connection;
use streamcast::sink::ForecastRecord;
use streamcast::verify::{self, Example, Verdict};

/// Where the reference comes from.
pub enum Reference {
    Topic(String),
    File(PathBuf),
}

/// The parsed command line of `verify`.
pub struct Options {
    pub kafka: Connection,
    pub reference: Reference,
    pub topic: String,
    pub exactly_once: bool,
    pub tolerance: f64,
    pub json: bool,
    pub timeout: Duration,
}

/// `--json`: the verdict's fields at the top level, and where both sides came from.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    ok: bool,
    exactly_once: bool,
    reference_from: String,
    actual_from: String,
    #[serde(flatten)]
    verdict: &'a Verdict,
    unparsable: Unparsable,
    notes: Vec<String>,
}

#[derive(serde::Serialize)]
struct Unparsable {
    reference: u64,
    actual: u64,
    examples: Vec<String>,
}

/// One side as read.
struct Side {
    records: Vec<ForecastRecord>,
    from: String,
    unparsable: u64,
    examples: Vec<String>,
    notes: Vec<String>,
}

/// Where to read: `--pipeline`'s connection (brokers and `[kafka]`
/// settings), `--brokers` replacing its brokers; else `--brokers` alone
/// (default 127.0.0.1:9092).
pub fn connection(brokers: Option<String>, pipeline: Option<&Path>) -> anyhow::Result<Connection> {
    Ok(match pipeline {
        Some(p) => {
            let mut kafka = Connection::of(&streamcast::PipelineConfig::load(p)?);
            if let Some(b) = brokers {
                kafka.brokers = b;
            }
            kafka
        }
        None => Connection::plain(brokers.unwrap_or_else(|| "127.0.0.1:9092".into())),
    })
}

fn read_topic(o: &Options, topic: &str) -> anyhow::Result<Side> {
    let brokers = &o.kafka.brokers;
    let r = match verify::read_topic(&o.kafka, topic, o.timeout) {
        Err(streamcast::Error::Kafka(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ))) => anyhow::bail!("topic {topic} does not exist on {brokers}"),
        r => r.with_context(|| format!("reading topic {topic} from {brokers}"))?,
    };
    let notes = r
        .stopped_short
        .iter()
        .map(|(p, pos, high)| {
            format!(
                "{topic}/{p}: committed data ends at offset {pos}, before the high watermark \
                 {high} (an open transaction; its records are not counted)"
            )
        })
        .collect();
    Ok(Side {
        from: format!("topic {topic} ({} partitions)", r.partitions),
        unparsable: r.unparsable,
        examples: r
            .unparsable_examples
            .iter()
            .map(|e| format!("{topic}/{e}"))
            .collect(),
        records: r.records,
        notes,
    })
}

fn read_file(path: &Path) -> anyhow::Result<Side> {
    let records = verify::read_file(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Side {
        records,
        from: format!("file {}", path.display()),
        unparsable: 0,
        examples: Vec::new(),
        notes: Vec::new(),
    })
}

pub fn verify(o: Options) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        o.tolerance.is_finite() && o.tolerance >= 0.0,
        "--tolerance must be a finite number >= 0 (got {})",
        o.tolerance
    );
    let reference = match &o.reference {
        Reference::Topic(t) => read_topic(&o, t)?,
        Reference::File(f) => read_file(f)?,
    };
    let actual = read_topic(&o, &o.topic)?;
    let v = verify::compare(&reference.records, &actual.records, o.tolerance);
    let ok = v.passes(o.exactly_once);
    let notes: Vec<String> = reference.notes.into_iter().chain(actual.notes).collect();
    if o.json {
        let report = JsonReport {
            ok,
            exactly_once: o.exactly_once,
            reference_from: reference.from,
            actual_from: actual.from,
            verdict: &v,
            unparsable: Unparsable {
                reference: reference.unparsable,
                actual: actual.unparsable,
                examples: reference
                    .examples
                    .into_iter()
                    .chain(actual.examples)
                    .collect(),
            },
            notes,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("reference: {}", reference.from);
        println!("actual:    {}", actual.from);
        print_counts(&v, reference.unparsable, actual.unparsable);
        for e in reference.examples.iter().chain(&actual.examples) {
            println!("  unparsable: {e}");
        }
        for n in &notes {
            println!("note: {n}");
        }
        print_examples(&v);
        println!("{}", summary(&v, ok, o.exactly_once));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_counts(v: &Verdict, unparsable_ref: u64, unparsable_act: u64) {
    let row = |name: &str, n: u64, what: &str| println!("  {name:<21} {n:>9}  {what}");
    row(
        "reference",
        v.reference,
        &format!(
            "distinct (key, window_end) ({} extra copies ignored)",
            v.reference_duplicates
        ),
    );
    row("actual", v.actual, "records read, copies included");
    row("missing", v.missing, "in the reference, not in actual");
    row(
        "unexpected",
        v.unexpected,
        "in actual, not in the reference",
    );
    row(
        "duplicates",
        v.duplicates,
        "extra copies of a (key, window_end) in actual",
    );
    row(
        "duplicates_differing",
        v.duplicates_differing,
        "extra copies whose values differ from the first copy",
    );
    row(
        "differing",
        v.differing,
        &format!(
            "values differ from the reference by more than {:e} x max(1, |ref|)",
            v.tolerance
        ),
    );
    if unparsable_ref + unparsable_act > 0 {
        row(
            "unparsable",
            unparsable_ref + unparsable_act,
            &format!("not forecast records ({unparsable_ref} reference, {unparsable_act} actual)"),
        );
    }
    match &v.worst {
        Some(w) => println!(
            "  worst difference      {:.3e} relative ({:.6e} absolute) at {} {} {}: {} vs {}",
            w.relative, w.absolute, w.key, w.window_end, w.at, w.reference, w.actual
        ),
        None => println!("  worst difference      - (nothing compared)"),
    }
    let sources = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            "-".to_string()
        } else {
            m.iter()
                .map(|(s, n)| format!("{s}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    println!(
        "  by source             reference: {}; actual: {}",
        sources(&v.by_source.reference),
        sources(&v.by_source.actual)
    );
}

fn print_examples(v: &Verdict) {
    let e = &v.examples;
    let kinds: [(&str, u64, &Vec<Example>); 5] = [
        ("missing", v.missing, &e.missing),
        ("unexpected", v.unexpected, &e.unexpected),
        ("duplicates", v.duplicates, &e.duplicates),
        (
            "duplicates_differing",
            v.duplicates_differing,
            &e.duplicates_differing,
        ),
        ("differing", v.differing, &e.differing),
    ];
    let show = |r: &ForecastRecord| format!("{:?} ({} {})", r.forecast, r.source, r.model_version);
    for (name, n, list) in kinds {
        if list.is_empty() {
            continue;
        }
        println!("{name} ({n}; first {}):", list.len());
        for x in list {
            let mut line = format!("  {} {}", x.key, x.window_end);
            match (&x.expected, &x.got) {
                (Some(a), Some(b)) => line += &format!("  expected {}  got {}", show(a), show(b)),
                (Some(a), None) => line += &format!("  expected {}", show(a)),
                (None, Some(b)) => line += &format!("  got {}", show(b)),
                (None, None) => {}
            }
            if let Some(d) = x.difference {
                line += &format!("  relative difference {d:.3e}");
            }
            if let Some(n) = &x.note {
                line += &format!("  [{n}]");
            }
            println!("{line}");
        }
    }
}

fn summary(v: &Verdict, ok: bool, exactly_once: bool) -> String {
    let guarantee = if exactly_once {
        "exactly-once"
    } else {
        "at-least-once"
    };
    if ok {
        return format!("OK: {guarantee} holds (nothing missing or differing{})", {
            if exactly_once {
                ", no duplicates"
            } else {
                ""
            }
        });
    }
    let mut why = Vec::new();
    if v.missing > 0 {
        why.push(format!("{} missing", v.missing));
    }
    if v.differing > 0 {
        why.push(format!("{} differing", v.differing));
    }
    if exactly_once && v.duplicates > 0 {
        why.push(format!("{} duplicates", v.duplicates));
    }
    format!("FAIL: {guarantee} broken: {}", why.join(", "))
}
