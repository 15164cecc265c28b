//! Avro input (`decode.format = "avro"`): Confluent wire-format messages
//! (see `registry`) -> the same [`Fields`] the JSON walker fills, so both
//! formats share every rule after it (missing fields, key and value
//! limits, event-time formats and skew).
//!
//! Writer schemas are fetched from the registry by the id in each message,
//! once per id (an id the registry did not have is asked again with the
//! next batch that holds it) ([`AvroDecoder::prepare`] resolves a batch's unknown ids
//! before it is decoded, on the compute thread). Each schema is checked
//! once against the configured fields: a record schema holding the key,
//! time and value fields with types that can hold them. The field positions
//! found there are where each decoded record's values are read.
//!
//! Invariant (with `decode`): every message is one row or one dead letter.
//! The kinds of this stage: `bad_wire_format` (no magic byte 0 or a short
//! header), `unknown_schema` (the registry has no such id, or it is not an
//! Avro schema), `incompatible_schema` (the writer schema lacks a
//! configured field or types it as something it cannot be), `bad_avro`
//! (the datum does not decode with its writer schema, or leaves bytes over).
//! Record-level problems (a null or empty key, a null value) are the JSON
//! kinds (`bad_key`, `bad_value`, ...). A registry that cannot be reached
//! is waited for (retried with backoff), never a dead letter: the messages
//! are fine, the registry is away.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::Schema;

use super::dead_letter::{DeadLetterKind as Kind, Rejection};
use super::json::Fields;
use super::registry::{backoff, unframe, Blocking, Lookup};
use super::time::RawTime;
use crate::config::{DecodeConfig, TimeFormat};

/// A writer schema checked against the configured fields.
#[derive(Debug)]
pub(super) struct Writer {
    schema: Schema,
    key: usize,
    time: Option<usize>,
    values: Vec<usize>,
}

/// What is known about one schema id.
#[derive(Debug, Clone)]
enum Known {
    Usable(Arc<Writer>),
    /// Every message with this id is a dead letter of this kind and reason
    /// (the schema is what it is: ids never change).
    Refused(Rejection),
    /// The registry had no such id: its messages are dead letters, and the
    /// id is asked again with the next batch that holds it.
    Missing(Rejection),
}

/// The Avro side of the decoder: the registry and the schemas by id.
#[derive(Debug)]
pub(super) struct AvroDecoder {
    registry: Option<Blocking>,
    /// Ids are immutable in a Confluent registry: a found schema is kept
    /// for the job's life. An unknown id is asked again with the next batch
    /// that holds it (it may have been registered since).
    known: HashMap<u32, Known>,
}

impl AvroDecoder {
    pub(super) fn new(registry: Option<Blocking>) -> Self {
        AvroDecoder {
            registry,
            known: HashMap::new(),
        }
    }

    /// Looks up the ids of `payloads` not known yet. Blocking: waits for
    /// the registry (retrying with backoff) while it cannot be reached.
    pub(super) fn prepare<'a>(
        &mut self,
        cfg: &DecodeConfig,
        payloads: impl Iterator<Item = &'a [u8]>,
    ) {
        let mut wanted: Vec<u32> = payloads
            .filter_map(|p| unframe(p).ok().map(|(id, _)| id))
            .filter(|id| matches!(self.known.get(id), None | Some(Known::Missing(_))))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        for id in wanted {
            let known = self.fetch(cfg, id);
            self.known.insert(id, known);
        }
    }

    fn fetch(&mut self, cfg: &DecodeConfig, id: u32) -> Known {
        let Some(registry) = self.registry.as_mut() else {
            return Known::Missing(Rejection::new(
                Kind::UnknownSchema,
                format!("schema id {id}: no schema registry is configured (registry.url)"),
            ));
        };
        let mut attempt = 0;
        let lookup = loop {
            match registry.schema_by_id(id) {
                Ok(l) => break l,
                Err(e) => {
                    metrics::counter!(crate::telemetry::REGISTRY_RETRIES).increment(1);
                    tracing::warn!(error = %e, id, "schema registry request failed; retrying (decoding waits)");
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
            }
        };
        match lookup {
            Lookup::NotFound => Known::Missing(Rejection::new(
                Kind::UnknownSchema,
                format!(
                    "unknown schema id {id}: the registry at {} has no such schema",
                    registry.registry().url()
                ),
            )),
            Lookup::NotAvro(kind) => Known::Refused(Rejection::new(
                Kind::UnknownSchema,
                format!("schema id {id} is a {kind} schema, not Avro"),
            )),
            Lookup::Found(text) => match Schema::parse_str(&text) {
                Err(e) => Known::Refused(Rejection::new(
                    Kind::UnknownSchema,
                    format!("schema id {id} is not a valid Avro schema: {e}"),
                )),
                Ok(schema) => match check(cfg, schema) {
                    Ok(w) => Known::Usable(Arc::new(w)),
                    Err(why) => Known::Refused(Rejection::new(
                        Kind::IncompatibleSchema,
                        format!("incompatible schema id {id}: {why}"),
                    )),
                },
            },
        }
    }

    /// The decoder of one batch (after [`Self::prepare`]).
    pub(super) fn batch(&self) -> Batch<'_> {
        Batch {
            dec: self,
            readers: HashMap::new(),
        }
    }
}

/// One batch's decoding: a datum reader per schema id, built on the id's
/// first message (building one resolves the schema's names, which is worth
/// doing once per batch, not per message).
pub(super) struct Batch<'a> {
    dec: &'a AvroDecoder,
    readers: HashMap<u32, GenericDatumReader<'a>>,
}

impl Batch<'_> {
    /// Reads one wire-format payload into `out` (already reset), or says
    /// why it cannot be an event. Its id must have been prepared.
    pub(super) fn fill(
        &mut self,
        cfg: &DecodeConfig,
        payload: &[u8],
        out: &mut Fields,
    ) -> Result<(), Rejection> {
        let (id, mut datum) =
            unframe(payload).map_err(|e| Rejection::new(Kind::BadWireFormat, e))?;
        let writer = match self.dec.known.get(&id) {
            Some(Known::Usable(w)) => w,
            Some(Known::Refused(r) | Known::Missing(r)) => return Err(r.clone()),
            None => {
                return Err(Rejection::new(
                    Kind::UnknownSchema,
                    format!("schema id {id} was not looked up"),
                ))
            }
        };
        let len = datum.len();
        let bad = |e: apache_avro::Error| {
            Rejection::new(
                Kind::BadAvro,
                format!("the datum does not decode with schema id {id}: {e}"),
            )
        };
        let reader = match self.readers.entry(id) {
            std::collections::hash_map::Entry::Occupied(r) => r.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                GenericDatumReader::builder(&writer.schema)
                    .build()
                    .map_err(bad)?,
            ),
        };
        let value = reader.read_value(&mut datum).map_err(bad)?;
        if !datum.is_empty() {
            return Err(Rejection::new(
                Kind::BadAvro,
                format!(
                    "the datum does not match schema id {id}: {} of its {len} bytes are left over after the record",
                    datum.len()
                ),
            ));
        }
        let Value::Record(fields) = value else {
            return Err(Rejection::new(
                Kind::BadAvro,
                format!("schema id {id} did not decode to a record"),
            ));
        };
        let field = |i: usize| fields.get(i).map(|(_, v)| unwrap_union(v));
        // Key.
        match field(writer.key) {
            Some(Value::String(s)) if s.is_empty() => {
                return Err(Rejection::new(
                    Kind::BadKey,
                    format!("bad key: field `{}` is empty", cfg.key_field),
                ))
            }
            Some(Value::String(s)) if s.len() > cfg.max_key_bytes => {
                return Err(Rejection::new(
                    Kind::BadKey,
                    format!(
                        "bad key: field `{}` is {} bytes, more than decode.max_key_bytes ({})",
                        cfg.key_field,
                        s.len(),
                        cfg.max_key_bytes
                    ),
                ))
            }
            Some(Value::String(s)) => out.key.push_str(s),
            // The JSON key rule: an integer key is its decimal digits.
            Some(Value::Int(n)) => {
                let _ = write!(out.key, "{n}");
            }
            Some(Value::Long(n)) => {
                let _ = write!(out.key, "{n}");
            }
            other => {
                return Err(Rejection::new(
                    Kind::BadKey,
                    format!(
                        "bad key: field `{}` is {}, expected a string or an integer",
                        cfg.key_field,
                        describe(other)
                    ),
                ))
            }
        }
        out.has_key = true;
        // Time (absent for time_format = "kafka").
        if let Some(t) = writer.time {
            out.ts = Some(match field(t) {
                Some(Value::String(s)) => RawTime::Text(s.clone()),
                Some(Value::Int(n)) => RawTime::Number(f64::from(*n)),
                Some(Value::Long(n)) => RawTime::Number(*n as f64),
                Some(Value::Float(n)) => RawTime::Number(f64::from(*n)),
                Some(Value::Double(n)) => RawTime::Number(*n),
                // A logical timestamp is unambiguous whatever the format:
                // it is given to the format's reader in the format's unit.
                Some(Value::TimestampMillis(ms)) | Some(Value::LocalTimestampMillis(ms)) => {
                    logical_time(*ms as f64, cfg.time_format)
                }
                Some(Value::TimestampMicros(us)) | Some(Value::LocalTimestampMicros(us)) => {
                    logical_time(*us as f64 / 1e3, cfg.time_format)
                }
                Some(Value::TimestampNanos(ns)) | Some(Value::LocalTimestampNanos(ns)) => {
                    logical_time(*ns as f64 / 1e6, cfg.time_format)
                }
                other => {
                    return Err(Rejection::new(
                        Kind::BadTimestamp,
                        format!(
                            "unparsable timestamp in field `{}`: got {}",
                            cfg.time_field,
                            describe(other)
                        ),
                    ))
                }
            });
        }
        // Values.
        for (i, &pos) in writer.values.iter().enumerate() {
            let name = &cfg.value_fields[i];
            let n = match field(pos) {
                Some(Value::Int(n)) => f64::from(*n),
                Some(Value::Long(n)) => *n as f64,
                Some(Value::Float(n)) => f64::from(*n),
                Some(Value::Double(n)) => *n,
                other => {
                    return Err(Rejection::new(
                        Kind::BadValue,
                        format!("non-numeric value in field `{name}`: {}", describe(other)),
                    ))
                }
            };
            if !n.is_finite() {
                return Err(Rejection::new(
                    Kind::BadValue,
                    format!("non-finite value {n} in field `{name}`"),
                ));
            }
            if n.abs() > cfg.max_abs_value {
                return Err(Rejection::new(
                    Kind::BadValue,
                    format!(
                        "value {n:e} in field `{name}` is beyond decode.max_abs_value ({:e})",
                        cfg.max_abs_value
                    ),
                ));
            }
            out.values[i] = n;
            out.seen_value[i] = true;
        }
        Ok(())
    }
}

/// The most `apache-avro` allocates for one decoded item (a string, bytes,
/// an array or map's items): a hostile datum of a few bytes that declares a
/// 500 MB string is refused before the allocation instead of after it. A
/// payload is at most `decode.max_payload_bytes` (1 MiB by default); 64 MiB
/// leaves room for arrays of small items, each a `Value` of tens of bytes.
/// The crate keeps one process-wide limit, set once (the first decoder).
pub const MAX_ALLOCATION_BYTES: usize = 64 << 20;

pub(super) fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
}

/// A logical timestamp in ms, as the configured format reads it.
fn logical_time(ms: f64, fmt: TimeFormat) -> RawTime {
    match fmt {
        TimeFormat::EpochS => RawTime::Number(ms / 1e3),
        TimeFormat::EpochMs | TimeFormat::Kafka => RawTime::Number(ms),
        TimeFormat::Rfc3339 => RawTime::Text(crate::time::rfc3339_ms(
            ms.clamp(i64::MIN as f64, i64::MAX as f64) as i64,
        )),
    }
}

fn unwrap_union(v: &Value) -> &Value {
    match v {
        Value::Union(_, inner) => unwrap_union(inner),
        v => v,
    }
}

/// A decoded value's kind, for reasons.
fn describe(v: Option<&Value>) -> &'static str {
    match v {
        None => "absent",
        Some(Value::Null) => "null",
        Some(Value::Boolean(_)) => "a boolean",
        Some(Value::String(_)) => "a string",
        Some(Value::Bytes(_)) | Some(Value::Fixed(..)) => "bytes",
        Some(Value::Array(_)) => "an array",
        Some(Value::Map(_)) | Some(Value::Record(_)) => "an object",
        Some(Value::Enum(..)) => "an enum symbol",
        Some(_) => "a value of another logical type",
    }
}

/// What a configured field must be able to hold.
#[derive(Clone, Copy)]
enum Role {
    Key,
    Time,
    Value,
}

/// Whether `s` (or, for a union, one of its branches) can hold `role`.
fn can_hold(s: &Schema, role: Role) -> bool {
    match s {
        Schema::Union(u) => u.variants().iter().any(|v| can_hold(v, role)),
        Schema::String => matches!(role, Role::Key | Role::Time),
        Schema::Int | Schema::Long => true,
        Schema::Float | Schema::Double => matches!(role, Role::Value | Role::Time),
        Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => matches!(role, Role::Time),
        _ => false,
    }
}

/// The positions of the configured fields in `schema`'s record, or why the
/// schema cannot carry the pipeline's events.
fn check(cfg: &DecodeConfig, schema: Schema) -> Result<Writer, String> {
    let Schema::Record(rec) = &schema else {
        return Err("its top level is not a record".into());
    };
    let find = |name: &str, role: Role, what: &str| -> Result<usize, String> {
        let (i, f) = rec
            .fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == name)
            .ok_or_else(|| format!("record `{}` has no field `{name}` ({what})", rec.name))?;
        if can_hold(&f.schema, role) {
            Ok(i)
        } else {
            let expected = match role {
                Role::Key => "a string or an integer",
                Role::Time => "a string, a number or a timestamp",
                Role::Value => "int, long, float or double",
            };
            Err(format!(
                "field `{name}` ({what}) has type {}, expected {expected}",
                serde_json::to_string(&f.schema).unwrap_or_else(|_| "?".into())
            ))
        }
    };
    let key = find(&cfg.key_field, Role::Key, "decode.key_field")?;
    let time = match cfg.time_format {
        TimeFormat::Kafka => None,
        _ => Some(find(&cfg.time_field, Role::Time, "decode.time_field")?),
    };
    let values = cfg
        .value_fields
        .iter()
        .map(|v| find(v, Role::Value, "decode.value_fields"))
        .collect::<Result<_, _>>()?;
    Ok(Writer {
        schema,
        key,
        time,
        values,
    })
}

impl AvroDecoder {
    /// `text` known as schema `id`, as if the registry had answered (a
    /// schema known out of band; tests and benches).
    pub(super) fn know(&mut self, cfg: &DecodeConfig, id: u32, text: &str) {
        let known = match Schema::parse_str(text) {
            Err(e) => Known::Refused(Rejection::new(Kind::UnknownSchema, e.to_string())),
            Ok(schema) => match check(cfg, schema) {
                Ok(w) => Known::Usable(Arc::new(w)),
                Err(why) => Known::Refused(Rejection::new(
                    Kind::IncompatibleSchema,
                    format!("incompatible schema id {id}: {why}"),
                )),
            },
        };
        self.known.insert(id, known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::registry::frame;
    use crate::decode::{Decoder, RawMessage};
    use apache_avro::writer::datum::GenericDatumWriter;

    const EVENT: &str = r#"{"type":"record","name":"Event","fields":[
        {"name":"key","type":"string"},
        {"name":"ts","type":"string"},
        {"name":"value","type":["null","double"]},
        {"name":"extra","type":{"type":"array","items":"int"}}]}"#;

    fn writer(cfg: &DecodeConfig, text: &str) -> Result<Writer, String> {
        check(cfg, Schema::parse_str(text).unwrap())
    }

    #[test]
    fn a_schema_is_checked_once_against_the_configured_fields() {
        let cfg = DecodeConfig::default();
        let w = writer(&cfg, EVENT).unwrap();
        assert_eq!((w.key, w.time, w.values.clone()), (0, Some(1), vec![2]));
        let missing =
            writer(&cfg, &EVENT.replace(r#""name":"value""#, r#""name":"v""#)).unwrap_err();
        assert!(missing.contains("no field `value`"), "{missing}");
        let typed =
            writer(&cfg, &EVENT.replace(r#"["null","double"]"#, r#""string""#)).unwrap_err();
        assert!(
            typed.contains("field `value`") && typed.contains("expected int, long"),
            "{typed}"
        );
        let key = writer(
            &cfg,
            &EVENT.replace(
                r#"{"name":"key","type":"string"}"#,
                r#"{"name":"key","type":"boolean"}"#,
            ),
        )
        .unwrap_err();
        assert!(key.contains("field `key`"), "{key}");
        assert!(writer(&cfg, r#""string""#)
            .unwrap_err()
            .contains("not a record"));
        // The Kafka timestamp needs no time field.
        let kafka = DecodeConfig {
            time_format: TimeFormat::Kafka,
            ..DecodeConfig::default()
        };
        let no_ts = EVENT.replace(r#"{"name":"ts","type":"string"},"#, "");
        assert_eq!(writer(&kafka, &no_ts).unwrap().time, None);
    }

    fn avro_decoder(cfg: &DecodeConfig, schemas: &[(u32, &str)]) -> Decoder {
        let cfg = DecodeConfig {
            format: crate::config::PayloadFormat::Avro,
            ..cfg.clone()
        };
        let d = Decoder::new(&cfg);
        if let Some(a) = &d.avro {
            let mut a = a.lock().unwrap();
            for (id, text) in schemas {
                a.know(&cfg, *id, text);
            }
        }
        d
    }

    fn datum(text: &str, fields: Vec<(&str, Value)>) -> Vec<u8> {
        let schema = Schema::parse_str(text).unwrap();
        let rec = Value::Record(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        );
        GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(rec)
            .unwrap()
    }

    fn event(key: Value, ts: &str, value: Value) -> Vec<u8> {
        datum(
            EVENT,
            vec![
                ("key", key),
                ("ts", Value::String(ts.into())),
                ("value", value),
                ("extra", Value::Array(vec![Value::Int(1)])),
            ],
        )
    }

    fn msg(offset: i64, payload: Vec<u8>) -> RawMessage {
        RawMessage {
            payload: Some(payload),
            partition: 0,
            offset,
            timestamp_ms: Some(1_000),
        }
    }

    fn some(v: f64) -> Value {
        Value::Union(1, Box::new(Value::Double(v)))
    }

    #[test]
    fn wire_format_records_become_rows() {
        let d = avro_decoder(&DecodeConfig::default(), &[(3, EVENT)]);
        let out = d.decode(&[
            msg(
                0,
                frame(
                    3,
                    &event(Value::String("a".into()), "2024-01-01T00:00:00Z", some(1.5)),
                ),
            ),
            msg(
                1,
                frame(
                    3,
                    &event(
                        Value::String("b".into()),
                        "2024-01-01T00:01:00Z",
                        some(-2.0),
                    ),
                ),
            ),
        ]);
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        assert_eq!(out.events.num_rows(), 2);
        use arrow::array::AsArray;
        let keys = out.events.column(0).as_string::<i32>();
        assert_eq!((keys.value(0), keys.value(1)), ("a", "b"));
        let ts = out
            .events
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(ts.value(1), 1_704_067_260_000);
        let v = out
            .events
            .column(4)
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!((v.value(0), v.value(1)), (1.5, -2.0));
    }

    #[test]
    fn integer_keys_and_logical_timestamps_follow_the_json_rules() {
        let text = r#"{"type":"record","name":"E","fields":[
            {"name":"key","type":"long"},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"value","type":"int"}]}"#;
        for fmt in [TimeFormat::Rfc3339, TimeFormat::EpochMs, TimeFormat::EpochS] {
            let cfg = DecodeConfig {
                time_format: fmt,
                ..DecodeConfig::default()
            };
            let d = avro_decoder(&cfg, &[(1, text)]);
            let p = datum(
                text,
                vec![
                    ("key", Value::Long(12_345_678_901)),
                    ("ts", Value::TimestampMillis(1_704_067_200_000)),
                    ("value", Value::Int(7)),
                ],
            );
            let out = d.decode(&[msg(0, frame(1, &p))]);
            assert!(
                out.dead_letters.is_empty(),
                "{fmt:?}: {:?}",
                out.dead_letters
            );
            use arrow::array::AsArray;
            assert_eq!(
                out.events.column(0).as_string::<i32>().value(0),
                "12345678901"
            );
            let ts = out
                .events
                .column(1)
                .as_primitive::<arrow::datatypes::Int64Type>();
            assert_eq!(ts.value(0), 1_704_067_200_000, "{fmt:?}");
        }
    }

    /// Every dead-letter kind of the Avro stage, each with its reason; and
    /// still one row or one dead letter per message.
    #[test]
    fn every_bad_message_is_a_typed_dead_letter_with_the_reason() {
        let incompatible = EVENT.replace(r#""name":"value""#, r#""name":"amount""#);
        let d = avro_decoder(&DecodeConfig::default(), &[(3, EVENT), (4, &incompatible)]);
        let good = event(Value::String("a".into()), "2024-01-01T00:00:00Z", some(1.0));
        let cases: Vec<(Vec<u8>, Kind, &str)> = vec![
            (
                br#"{"key":"a"}"#.to_vec(),
                Kind::BadWireFormat,
                "magic byte is 0x7b",
            ),
            (vec![0, 0, 0], Kind::BadWireFormat, "shorter than"),
            (frame(99, &good), Kind::UnknownSchema, "schema id 99"),
            (
                frame(4, &good),
                Kind::IncompatibleSchema,
                "no field `value`",
            ),
            (
                frame(3, &good[..good.len() - 3]),
                Kind::BadAvro,
                "does not decode with schema id 3",
            ),
            (
                frame(3, &[good.as_slice(), &[2, 2]].concat()),
                Kind::BadAvro,
                "2 of its",
            ),
            (
                frame(
                    3,
                    &event(
                        Value::String("a".into()),
                        "2024-01-01T00:00:00Z",
                        Value::Union(0, Box::new(Value::Null)),
                    ),
                ),
                Kind::BadValue,
                "non-numeric value in field `value`: null",
            ),
            (
                frame(
                    3,
                    &event(
                        Value::String(String::new()),
                        "2024-01-01T00:00:00Z",
                        some(1.0),
                    ),
                ),
                Kind::BadKey,
                "is empty",
            ),
            (
                frame(
                    3,
                    &event(
                        Value::String("a".into()),
                        "2024-01-01T00:00:00Z",
                        some(1e300),
                    ),
                ),
                Kind::BadValue,
                "beyond decode.max_abs_value",
            ),
            (
                frame(3, &event(Value::String("a".into()), "yesterday", some(1.0))),
                Kind::BadTimestamp,
                "unparsable timestamp",
            ),
        ];
        let mut messages: Vec<RawMessage> = cases
            .iter()
            .enumerate()
            .map(|(i, (p, _, _))| msg(i as i64, p.clone()))
            .collect();
        messages.push(msg(100, frame(3, &good)));
        let out = d.decode(&messages);
        assert_eq!(out.events.num_rows(), 1, "{:?}", out.dead_letters);
        assert_eq!(out.dead_letters.len(), cases.len());
        for ((_, kind, reason), dl) in cases.iter().zip(&out.dead_letters) {
            assert_eq!(dl.kind, *kind, "{}", dl.reason);
            assert!(dl.reason.contains(reason), "{:?}: {}", kind, dl.reason);
        }
        // Offsets say which message each letter is.
        let offsets: Vec<i64> = out.dead_letters.iter().map(|d| d.offset).collect();
        assert_eq!(offsets, (0..cases.len() as i64).collect::<Vec<_>>());
    }

    /// A few bytes declaring a huge string are a dead letter, refused
    /// before anything that size is allocated.
    #[test]
    fn a_datum_declaring_a_huge_string_is_bad_avro() {
        let d = avro_decoder(&DecodeConfig::default(), &[(3, EVENT)]);
        // The key's length: 200,000,000 (under the crate's default limit
        // of 512 MiB, over ours), as a zigzag varint.
        let mut datum = Vec::new();
        let mut n: u64 = 200_000_000 << 1;
        while n >= 0x80 {
            datum.push((n as u8) | 0x80);
            n >>= 7;
        }
        datum.push(n as u8);
        datum.extend_from_slice(b"abc");
        let out = d.decode(&[msg(0, frame(3, &datum))]);
        assert_eq!(out.dead_letters.len(), 1);
        assert_eq!(out.dead_letters[0].kind, Kind::BadAvro);
        let reason = &out.dead_letters[0].reason;
        assert!(
            reason.contains("schema id 3") && reason.contains(&MAX_ALLOCATION_BYTES.to_string()),
            "refused before allocating: {reason}"
        );
    }

    #[test]
    fn without_a_registry_every_id_is_unknown_with_the_reason() {
        let d = avro_decoder(&DecodeConfig::default(), &[]);
        let good = event(Value::String("a".into()), "2024-01-01T00:00:00Z", some(1.0));
        let out = d.decode(&[msg(0, frame(5, &good))]);
        assert_eq!(out.dead_letters.len(), 1);
        assert_eq!(out.dead_letters[0].kind, Kind::UnknownSchema);
        assert!(
            out.dead_letters[0].reason.contains("registry.url"),
            "{}",
            out.dead_letters[0].reason
        );
    }
}
