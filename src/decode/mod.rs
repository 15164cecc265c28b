//! Decode stage: raw Kafka payloads -> one Arrow `RecordBatch` of events.
//!
//! This is the last place where work is done per event (`json` walks each
//! object once). Rooms: `json` (the walker), `avro` (Confluent wire-format
//! Avro, `decode.format = "avro"`, filling the same fields), `registry`
//! (the wire format and the schema registry client), `time` (event-time
//! formats), `dead_letter` (typed rejections and their published form).
//!
//! Invariant: every input message ends up either as exactly one row of the
//! events batch or as exactly one [`DeadLetter`] carrying a typed kind, the
//! reason and its source partition/offset. Nothing is dropped silently.
//!
//! Events schema: see `schema::events_schema`.

mod avro;
mod dead_letter;
mod json;
pub mod registry;
mod time;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde::de::DeserializeSeed;

pub use dead_letter::{DeadLetter, DeadLetterKind};
pub use time::{parse_time, RawTime, MAX_MS, MIN_MS};

use std::sync::Mutex;

use crate::config::{DecodeConfig, PayloadFormat, PipelineConfig, RegistryConfig, TimeFormat};
use crate::error::Result;
use crate::schema::{events_schema, EventsBuilder};
use crate::telemetry;
use dead_letter::{DeadLetterKind as Kind, Rejection};
use json::{Fields, ObjectSeed};

/// Sets `apache-avro`'s process-wide allocation limit to
/// 64 MiB (`avro::MAX_ALLOCATION_BYTES`; once: every Avro reader of the crate calls
/// it before its first read, as the crate keeps the first value it is given).
pub fn limit_avro_allocations() {
    avro::limit_allocations();
}

/// One message as it came from the source (payload copied out of librdkafka).
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub payload: Option<Vec<u8>>,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka message timestamp, if any (ms since epoch).
    pub timestamp_ms: Option<i64>,
}

/// The events batch and the dead letters of one decoded message batch.
#[derive(Debug)]
pub struct Decoded {
    pub events: RecordBatch,
    pub dead_letters: Vec<DeadLetter>,
}

/// Turns JSON or Avro payloads into events. Built once per pipeline.
pub struct Decoder {
    cfg: DecodeConfig,
    schema: SchemaRef,
    /// `decode.format = "avro"`: the registry and the writer schemas by id
    /// (behind a lock only so that `decode` takes `&self`; one thread uses it).
    avro: Option<Mutex<avro::AvroDecoder>>,
}

impl Decoder {
    /// The decoder of `cfg`. With `format = "avro"` and no registry every
    /// message is an `unknown_schema` dead letter: use
    /// [`Decoder::for_pipeline`] or [`Decoder::with_registry`].
    pub fn new(cfg: &DecodeConfig) -> Self {
        if cfg.format == PayloadFormat::Avro {
            limit_avro_allocations();
        }
        Decoder {
            schema: events_schema(&cfg.value_fields),
            cfg: cfg.clone(),
            avro: (cfg.format == PayloadFormat::Avro)
                .then(|| Mutex::new(avro::AvroDecoder::new(None))),
        }
    }

    /// The decoder of `cfg` whose Avro writer schemas come from `registry`.
    pub fn with_registry(cfg: &DecodeConfig, registry: &RegistryConfig) -> Result<Self> {
        let mut d = Decoder::new(cfg);
        if cfg.format == PayloadFormat::Avro {
            let client = registry::Blocking::new(registry::Registry::new(registry)?);
            d.avro = Some(Mutex::new(avro::AvroDecoder::new(Some(client))));
        }
        Ok(d)
    }

    /// Avro: `schema` (JSON text) taken as the writer schema of `id`
    /// without asking the registry (a schema known out of band; benches).
    /// No effect on a JSON decoder.
    pub fn add_schema(&self, id: u32, schema: &str) {
        if let Some(a) = &self.avro {
            a.lock()
                .unwrap_or_else(|e| e.into_inner())
                .know(&self.cfg, id, schema);
        }
    }

    /// The pipeline's decoder (its `[decode]` and `[registry]`).
    pub fn for_pipeline(cfg: &PipelineConfig) -> Result<Self> {
        Decoder::with_registry(&cfg.decode, &cfg.registry)
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Decodes a batch of messages. Never fails: bad records become dead letters.
    pub fn decode(&self, messages: &[RawMessage]) -> Decoded {
        let mut out = EventsBuilder::new(self.schema.clone(), messages.len());
        let mut dead_letters = Vec::new();
        let mut fields = Fields::new(self.cfg.value_fields.len());
        // Against the wall clock, not the watermark: the first event of a
        // partition has no watermark to compare with. Once per batch.
        let latest_ms = crate::time::now_ms().saturating_add(self.max_future_skew_ms());
        // Avro: the batch's new schema ids are looked up first (the only
        // wait on the registry), then every message decodes from the cache.
        let mut avro = self
            .avro
            .as_ref()
            .map(|a| a.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(a) = avro.as_mut() {
            a.prepare(
                &self.cfg,
                messages.iter().filter_map(|m| m.payload.as_deref()),
            );
        }
        let mut batch = avro.as_deref().map(avro::AvroDecoder::batch);
        for m in messages {
            match self.decode_one(m, &mut fields, latest_ms, batch.as_mut()) {
                Ok(ts_ms) => out.push(&fields.key, ts_ms, m.partition, m.offset, &fields.values),
                Err(r) => {
                    metrics::counter!(telemetry::DEAD_LETTERS, "kind" => r.kind.as_str())
                        .increment(1);
                    dead_letters.push(DeadLetter {
                        kind: r.kind,
                        reason: r.reason,
                        partition: m.partition,
                        offset: m.offset,
                        payload: m.payload.clone().unwrap_or_default(),
                    })
                }
            }
        }
        metrics::counter!(telemetry::EVENTS_DECODED)
            .increment((messages.len() - dead_letters.len()) as u64);
        Decoded {
            events: out.finish(),
            dead_letters,
        }
    }

    /// The skew bound in ms (durations are capped at 100 years by config).
    fn max_future_skew_ms(&self) -> i64 {
        i64::try_from(self.cfg.max_future_skew.as_millis()).unwrap_or(i64::MAX)
    }

    /// One message: its event time, or why it is refused. `latest_ms` is the
    /// latest event time accepted (wall clock + `max_future_skew`).
    fn decode_one(
        &self,
        m: &RawMessage,
        fields: &mut Fields,
        latest_ms: i64,
        avro: Option<&mut avro::Batch<'_>>,
    ) -> std::result::Result<i64, Rejection> {
        let payload = m
            .payload
            .as_deref()
            .ok_or_else(|| Rejection::new(Kind::Malformed, "malformed: empty payload"))?;
        if payload.len() > self.cfg.max_payload_bytes {
            return Err(Rejection::new(
                Kind::TooLarge,
                format!(
                    "payload of {} bytes is more than decode.max_payload_bytes ({})",
                    payload.len(),
                    self.cfg.max_payload_bytes
                ),
            ));
        }
        fields.reset();
        match avro {
            Some(a) => a.fill(&self.cfg, payload, fields)?,
            None => {
                let mut de = serde_json::Deserializer::from_slice(payload);
                ObjectSeed {
                    cfg: &self.cfg,
                    out: fields,
                }
                .deserialize(&mut de)
                .and_then(|()| de.end())
                .map_err(|e| match fields.failure.take() {
                    Some(f) => f,
                    // serde_json refuses 1e999 and friends before we see them.
                    None if e.to_string().contains("number out of range") => {
                        Rejection::new(Kind::BadValue, format!("non-finite value: {e}"))
                    }
                    None => Rejection::new(Kind::Malformed, format!("malformed JSON: {e}")),
                })?;
            }
        }
        if !fields.has_key {
            return Err(Rejection::missing(&self.cfg.key_field));
        }
        for (i, v) in fields.values.iter().enumerate() {
            if v.is_nan() && !fields.seen_value[i] {
                return Err(Rejection::missing(&self.cfg.value_fields[i]));
            }
        }
        let ts = match self.cfg.time_format {
            TimeFormat::Kafka => match m.timestamp_ms {
                None => Err(Rejection::new(
                    Kind::MissingField,
                    "missing timestamp: the Kafka message has none",
                )),
                Some(ms) => time::in_range(ms).map_err(|e| {
                    Rejection::new(
                        Kind::BadTimestamp,
                        format!("the Kafka message timestamp: {e}"),
                    )
                }),
            },
            fmt => match fields.ts.take() {
                None => Err(Rejection::missing(&self.cfg.time_field)),
                Some(raw) => parse_time(&raw, fmt).map_err(|e| {
                    Rejection::new(
                        Kind::BadTimestamp,
                        format!(
                            "unparsable timestamp in field `{}`: {e}",
                            self.cfg.time_field
                        ),
                    )
                }),
            },
        }?;
        if ts > latest_ms {
            return Err(Rejection::new(
                Kind::BadTimestamp,
                format!(
                    "event time {} is more than decode.max_future_skew ({}) ahead of the wall clock",
                    crate::time::rfc3339_ms(ts),
                    crate::time::format_duration_ms(self.max_future_skew_ms())
                ),
            ));
        }
        Ok(ts)
    }
}

#[cfg(test)]
mod tests;
