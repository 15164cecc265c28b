//! Decode stage: raw Kafka payloads -> one Arrow `RecordBatch` of events.
//!
//! This is the last place where work is done per event. Each JSON object is
//! walked once with a serde visitor that looks only at the configured fields
//! (others are skipped without being built), so decoding allocates nothing
//! per event beyond the key string.
//!
//! Invariant: every input message ends up either as exactly one row of the
//! events batch or as exactly one [`DeadLetter`] carrying the reason and its
//! source partition/offset. Nothing is dropped silently.
//!
//! Events schema (see [`events_schema`]): `key: Utf8, ts_ms: Int64,
//! partition: Int32, offset: Int64`, then one `Float64` column per value field.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::config::{DecodeConfig, TimeFormat};

/// One message as it came from the source (payload copied out of librdkafka).
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub payload: Option<Vec<u8>>,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka message timestamp, if any (ms since epoch).
    pub timestamp_ms: Option<i64>,
}

/// A record that could not be used, with why and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub reason: String,
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// The short machine-readable class of the reason (the metric label).
    pub fn kind(&self) -> &'static str {
        let r = self.reason.as_str();
        if r.starts_with("malformed") {
            "malformed"
        } else if r.starts_with("missing") {
            "missing_field"
        } else if r.starts_with("late") {
            "late"
        } else if r.contains("timestamp") {
            "bad_timestamp"
        } else {
            "bad_value"
        }
    }

    /// The JSON document published to the dead-letter destination.
    pub fn to_json(&self, source_topic: &str) -> serde_json::Value {
        serde_json::json!({
            "reason": self.reason,
            "kind": self.kind(),
            "topic": source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "payload": String::from_utf8_lossy(&self.payload),
        })
    }
}

/// The events batch and the dead letters of one decoded message batch.
#[derive(Debug)]
pub struct Decoded {
    pub events: RecordBatch,
    pub dead_letters: Vec<DeadLetter>,
}

/// The Arrow schema of decoded events for these value fields.
pub fn events_schema(value_fields: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("ts_ms", DataType::Int64, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
    ];
    fields.extend(
        value_fields
            .iter()
            .map(|f| Field::new(f, DataType::Float64, false)),
    );
    Arc::new(Schema::new(fields))
}

/// Column index of the first value field in an events batch.
pub const FIRST_VALUE_COLUMN: usize = 4;

/// Builds events batches column by column.
pub struct EventsBuilder {
    schema: SchemaRef,
    key: StringBuilder,
    ts: Int64Builder,
    partition: Int32Builder,
    offset: Int64Builder,
    values: Vec<Float64Builder>,
}

impl EventsBuilder {
    pub fn new(schema: SchemaRef, capacity: usize) -> Self {
        let n_values = schema.fields().len() - FIRST_VALUE_COLUMN;
        EventsBuilder {
            key: StringBuilder::with_capacity(capacity, capacity * 16),
            ts: Int64Builder::with_capacity(capacity),
            partition: Int32Builder::with_capacity(capacity),
            offset: Int64Builder::with_capacity(capacity),
            values: (0..n_values)
                .map(|_| Float64Builder::with_capacity(capacity))
                .collect(),
            schema,
        }
    }

    pub fn push(&mut self, key: &str, ts_ms: i64, partition: i32, offset: i64, values: &[f64]) {
        self.key.append_value(key);
        self.ts.append_value(ts_ms);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        for (b, v) in self.values.iter_mut().zip(values) {
            b.append_value(*v);
        }
    }

    pub fn finish(mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
        ];
        cols.extend(
            self.values
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        // Columns are built together, one value per row each: lengths and
        // types match the schema by construction.
        RecordBatch::try_new(self.schema, cols).expect("events columns match their schema")
    }
}

/// Turns JSON payloads into events. Built once per pipeline.
pub struct Decoder {
    cfg: DecodeConfig,
    schema: SchemaRef,
}

impl Decoder {
    pub fn new(cfg: &DecodeConfig) -> Self {
        Decoder {
            schema: events_schema(&cfg.value_fields),
            cfg: cfg.clone(),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Decodes a batch of messages. Never fails: bad records become dead letters.
    pub fn decode(&self, messages: &[RawMessage]) -> Decoded {
        let mut out = EventsBuilder::new(self.schema.clone(), messages.len());
        let mut dead_letters = Vec::new();
        let mut fields = Fields::new(self.cfg.value_fields.len());
        for m in messages {
            match self.decode_one(m, &mut fields) {
                Ok(ts_ms) => out.push(&fields.key, ts_ms, m.partition, m.offset, &fields.values),
                Err(reason) => {
                    metrics::counter!("streamcast_dead_letters_total", "kind" => kind_of(&reason))
                        .increment(1);
                    dead_letters.push(DeadLetter {
                        reason,
                        partition: m.partition,
                        offset: m.offset,
                        payload: m.payload.clone().unwrap_or_default(),
                    })
                }
            }
        }
        metrics::counter!("streamcast_events_decoded_total")
            .increment((messages.len() - dead_letters.len()) as u64);
        Decoded {
            events: out.finish(),
            dead_letters,
        }
    }

    fn decode_one(&self, m: &RawMessage, fields: &mut Fields) -> Result<i64, String> {
        let payload = m
            .payload
            .as_deref()
            .ok_or_else(|| "malformed: empty payload".to_string())?;
        fields.reset();
        let mut de = serde_json::Deserializer::from_slice(payload);
        ObjectSeed {
            cfg: &self.cfg,
            out: fields,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| {
            if fields.failure.is_some() {
                String::new()
            } else if e.to_string().contains("number out of range") {
                // serde_json refuses 1e999 and friends before we see them.
                format!("non-finite value: {e}")
            } else {
                format!("malformed JSON: {e}")
            }
        })
        .or_else(|e| match fields.failure.take() {
            Some(f) => Err(f),
            None => Err(e),
        })?;
        if !fields.has_key {
            return Err(format!("missing field `{}`", self.cfg.key_field));
        }
        for (i, v) in fields.values.iter().enumerate() {
            if v.is_nan() && !fields.seen_value[i] {
                return Err(format!("missing field `{}`", self.cfg.value_fields[i]));
            }
        }
        match self.cfg.time_format {
            TimeFormat::Kafka => m
                .timestamp_ms
                .ok_or_else(|| "missing timestamp: the Kafka message has none".to_string()),
            fmt => match fields.ts.take() {
                None => Err(format!("missing field `{}`", self.cfg.time_field)),
                Some(raw) => parse_time(&raw, fmt).map_err(|e| {
                    format!(
                        "unparsable timestamp in field `{}`: {e}",
                        self.cfg.time_field
                    )
                }),
            },
        }
    }
}

fn kind_of(reason: &str) -> &'static str {
    DeadLetter {
        reason: reason.to_string(),
        partition: 0,
        offset: 0,
        payload: Vec::new(),
    }
    .kind()
}

/// A raw event-time value before it is interpreted by the time format.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTime {
    Number(f64),
    Text(String),
}

/// Interprets an event time as milliseconds since the Unix epoch (UTC).
pub fn parse_time(raw: &RawTime, fmt: TimeFormat) -> Result<i64, String> {
    let ms = match (raw, fmt) {
        (RawTime::Number(n), TimeFormat::EpochS) => n * 1000.0,
        (RawTime::Number(n), TimeFormat::EpochMs) => *n,
        (RawTime::Text(s), TimeFormat::EpochS) => {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("{s:?} is not epoch seconds"))?
                * 1000.0
        }
        (RawTime::Text(s), TimeFormat::EpochMs) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not epoch milliseconds"))?,
        (RawTime::Text(s), _) => return parse_rfc3339_ms(s),
        (RawTime::Number(n), _) => {
            return Err(format!("expected an RFC 3339 string, got the number {n}"))
        }
    };
    if !ms.is_finite() || ms.abs() > 8.0e15 {
        return Err(format!("{ms} ms is out of range"));
    }
    Ok(ms.round() as i64)
}

/// RFC 3339 with zone; a naive `YYYY-MM-DD[ T]HH:MM:SS[.fff]` is taken as UTC.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    Err(format!("{s:?} is not an RFC 3339 / ISO 8601 time"))
}

/// The configured fields of one event, reused across events.
struct Fields {
    key: String,
    has_key: bool,
    ts: Option<RawTime>,
    values: Vec<f64>,
    seen_value: Vec<bool>,
    /// A field-level problem found while walking (e.g. a string value):
    /// reported instead of serde's generic message.
    failure: Option<String>,
}

impl Fields {
    fn new(n: usize) -> Self {
        Fields {
            key: String::new(),
            has_key: false,
            ts: None,
            values: vec![f64::NAN; n],
            seen_value: vec![false; n],
            failure: None,
        }
    }
    fn reset(&mut self) {
        self.key.clear();
        self.has_key = false;
        self.ts = None;
        self.values.iter_mut().for_each(|v| *v = f64::NAN);
        self.seen_value.iter_mut().for_each(|v| *v = false);
        self.failure = None;
    }
}

/// A JSON scalar, classified without building a `serde_json::Value`.
enum Scalar<'de> {
    Num(f64),
    Str(Cow<'de, str>),
    Other(&'static str),
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v as f64))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_string())))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other("a boolean"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an object"))
    }
}

struct ScalarSeed;
impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// Which configured field a JSON key is.
enum Which {
    Key,
    Time,
    Value(usize),
    Other,
}

struct KeySeed<'c> {
    cfg: &'c DecodeConfig,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Which;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Which, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Which;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, k: &str) -> Result<Which, E> {
        Ok(if k == self.cfg.key_field {
            Which::Key
        } else if k == self.cfg.time_field && self.cfg.time_format != TimeFormat::Kafka {
            Which::Time
        } else if let Some(i) = self.cfg.value_fields.iter().position(|f| f == k) {
            Which::Value(i)
        } else {
            Which::Other
        })
    }
}

struct ObjectSeed<'a> {
    cfg: &'a DecodeConfig,
    out: &'a mut Fields,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        let cfg = self.cfg;
        let out = self.out;
        while let Some(which) = map.next_key_seed(KeySeed { cfg })? {
            match which {
                Which::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Which::Key => match map.next_value_seed(ScalarSeed)? {
                    Scalar::Str(s) => {
                        out.key.push_str(&s);
                        out.has_key = true;
                    }
                    Scalar::Num(n) => {
                        use std::fmt::Write;
                        let _ = write!(out.key, "{n}");
                        out.has_key = true;
                    }
                    Scalar::Other(what) => {
                        out.failure = Some(format!(
                            "bad key: field `{}` is {what}, expected a string or number",
                            cfg.key_field
                        ));
                        return Err(A::Error::custom("bad key"));
                    }
                },
                Which::Time => {
                    out.ts = match map.next_value_seed(ScalarSeed)? {
                        Scalar::Num(n) => Some(RawTime::Number(n)),
                        Scalar::Str(s) => Some(RawTime::Text(s.into_owned())),
                        Scalar::Other(what) => {
                            out.failure = Some(format!(
                                "unparsable timestamp in field `{}`: got {what}",
                                cfg.time_field
                            ));
                            return Err(A::Error::custom("bad time"));
                        }
                    }
                }
                Which::Value(i) => {
                    let name = &cfg.value_fields[i];
                    match map.next_value_seed(ScalarSeed)? {
                        Scalar::Num(n) if n.is_finite() => {
                            out.values[i] = n;
                            out.seen_value[i] = true;
                        }
                        Scalar::Num(n) => {
                            out.failure = Some(format!("non-finite value {n} in field `{name}`"));
                            return Err(A::Error::custom("bad value"));
                        }
                        Scalar::Str(s) => {
                            out.failure =
                                Some(format!("non-numeric value in field `{name}`: {s:?}"));
                            return Err(A::Error::custom("bad value"));
                        }
                        Scalar::Other(what) => {
                            out.failure =
                                Some(format!("non-numeric value in field `{name}`: {what}"));
                            return Err(A::Error::custom("bad value"));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Float64Array, Int64Array};
    use arrow::datatypes::Int64Type;

    fn msg(offset: i64, s: &str) -> RawMessage {
        RawMessage {
            payload: Some(s.as_bytes().to_vec()),
            partition: 2,
            offset,
            timestamp_ms: Some(1_000),
        }
    }

    fn decoder(fmt: TimeFormat, fields: &[&str]) -> Decoder {
        Decoder::new(&DecodeConfig {
            time_format: fmt,
            value_fields: fields.iter().map(|s| s.to_string()).collect(),
            ..DecodeConfig::default()
        })
    }

    #[test]
    fn good_events_become_rows() {
        let d = decoder(TimeFormat::Rfc3339, &["value", "temp"]);
        let out = d.decode(&[
            msg(0, r#"{"key":"a","ts":"2024-01-01T00:00:00Z","value":1.5,"temp":3,"extra":{"x":[1,2]}}"#),
            msg(1, r#"{"ts":"2024-01-01 00:05:00","key":42,"temp":-1e3,"value":2}"#),
        ]);
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        let b = &out.events;
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.column(0).as_string::<i32>().value(1), "42");
        let ts = b.column(1).as_primitive::<Int64Type>();
        assert_eq!(ts.value(0), 1_704_067_200_000);
        assert_eq!(ts.value(1), 1_704_067_500_000);
        let temp = b.column(5).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(temp.value(1), -1000.0);
        let off = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(off.values(), &[0, 1]);
    }

    #[test]
    fn each_bad_record_is_a_dead_letter_with_reason_and_position() {
        let d = decoder(TimeFormat::EpochS, &["value"]);
        let cases = [
            (r#"{"key":"a","ts":10,"value":1"#, "malformed JSON"),
            (r#"[1,2,3]"#, "malformed JSON"),
            (r#"{"ts":10,"value":1}"#, "missing field `key`"),
            (r#"{"key":"a","value":1}"#, "missing field `ts`"),
            (r#"{"key":"a","ts":10}"#, "missing field `value`"),
            (
                r#"{"key":"a","ts":10,"value":"high"}"#,
                "non-numeric value in field `value`",
            ),
            (
                r#"{"key":"a","ts":10,"value":null}"#,
                "non-numeric value in field `value`: null",
            ),
            (r#"{"key":"a","ts":10,"value":1e999}"#, "non-finite value"),
            (
                r#"{"key":"a","ts":"yesterday","value":1}"#,
                "unparsable timestamp",
            ),
            (r#"{"key":[1],"ts":10,"value":1}"#, "bad key"),
        ];
        let msgs: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, (s, _))| msg(100 + i as i64, s))
            .collect();
        let out = d.decode(&msgs);
        assert_eq!(out.events.num_rows(), 0);
        assert_eq!(out.dead_letters.len(), cases.len());
        for (i, (dl, (_, want))) in out.dead_letters.iter().zip(cases).enumerate() {
            assert!(
                dl.reason.contains(want),
                "case {i}: {:?} should contain {want:?}",
                dl.reason
            );
            assert_eq!(dl.offset, 100 + i as i64);
            assert_eq!(dl.partition, 2);
        }
    }

    #[test]
    fn good_records_around_bad_ones_survive() {
        let d = decoder(TimeFormat::EpochMs, &["value"]);
        let out = d.decode(&[
            msg(0, r#"{"key":"a","ts":1000,"value":1}"#),
            msg(1, "not json"),
            msg(2, r#"{"key":"b","ts":2000,"value":2}"#),
        ]);
        assert_eq!(out.events.num_rows(), 2);
        assert_eq!(out.dead_letters.len(), 1);
        assert_eq!(out.dead_letters[0].offset, 1);
    }

    #[test]
    fn kafka_timestamp_mode_uses_message_time() {
        let d = decoder(TimeFormat::Kafka, &["value"]);
        let out = d.decode(&[msg(0, r#"{"key":"a","value":1,"ts":"ignored"}"#)]);
        assert_eq!(
            out.events.column(1).as_primitive::<Int64Type>().value(0),
            1_000
        );
    }

    #[test]
    fn time_formats() {
        assert_eq!(
            parse_time(&RawTime::Number(1.5), TimeFormat::EpochS),
            Ok(1500)
        );
        assert_eq!(
            parse_time(&RawTime::Number(1500.0), TimeFormat::EpochMs),
            Ok(1500)
        );
        assert_eq!(
            parse_time(
                &RawTime::Text("2024-01-01T01:00:00+01:00".into()),
                TimeFormat::Rfc3339
            ),
            Ok(1_704_067_200_000)
        );
        assert!(parse_time(&RawTime::Number(1.0), TimeFormat::Rfc3339).is_err());
        assert!(parse_time(&RawTime::Number(f64::INFINITY), TimeFormat::EpochS).is_err());
    }
}
