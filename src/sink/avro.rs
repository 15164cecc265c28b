//! Avro forecasts (`sink.format = "avro"`): the forecast record of
//! `records` with the same fields, as an Avro record in Confluent's wire
//! format (magic byte 0, the schema's registry id, the datum).
//!
//! The schema ([`FORECAST_SCHEMA`]) is registered under `<sink.topic>-value`
//! (the Confluent default subject name) once per job, before the first
//! forecast is published ([`ForecastAvro::id`]; the job calls it at start, so
//! a missing or refusing registry stops it there). Registering the same
//! schema again returns the same id, so restarts and several instances agree.
//!
//! Invariant: a forecast that cannot be encoded is an error, never an empty
//! or JSON payload on an Avro topic.

use std::collections::{BTreeMap, HashMap};

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use super::records::ForecastRecord;
use crate::config::{PayloadFormat, PipelineConfig};
use crate::decode::registry::{frame, unframe, Registry};
use crate::error::{Error, Result};

/// The forecast record's Avro schema: the JSON record's fields, in order.
/// `quantiles` maps a quantile (e.g. `"0.1"`) to its values; empty when the
/// model has none.
pub const FORECAST_SCHEMA: &str = r#"{
  "type": "record",
  "name": "Forecast",
  "namespace": "dev.streamcast",
  "doc": "A streamcast forecast: forecast[i] is the value of the window ending window_end_ms + (i+1)*step_ms.",
  "fields": [
    {"name": "key", "type": "string"},
    {"name": "window_end", "type": "string"},
    {"name": "window_end_ms", "type": "long"},
    {"name": "step_ms", "type": "long"},
    {"name": "forecast", "type": {"type": "array", "items": "double"}},
    {"name": "model_version", "type": "string"},
    {"name": "source", "type": "string"},
    {"name": "quantiles", "type": {"type": "map", "values": {"type": "array", "items": "double"}}, "default": {}}
  ]
}"#;

/// The parsed [`FORECAST_SCHEMA`].
pub fn forecast_schema() -> Result<Schema> {
    Schema::parse_str(FORECAST_SCHEMA)
        .map_err(|e| Error::Registry(format!("the forecast schema does not parse: {e}")))
}

/// The subject the forecast schema is registered under.
pub fn subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// A forecast record as an Avro value of [`FORECAST_SCHEMA`].
pub fn forecast_value(r: &ForecastRecord) -> Value {
    let doubles = |v: &[f64]| Value::Array(v.iter().map(|x| Value::Double(*x)).collect());
    Value::Record(vec![
        ("key".into(), Value::String(r.key.clone())),
        ("window_end".into(), Value::String(r.window_end.clone())),
        ("window_end_ms".into(), Value::Long(r.window_end_ms)),
        ("step_ms".into(), Value::Long(r.step_ms)),
        ("forecast".into(), doubles(&r.forecast)),
        (
            "model_version".into(),
            Value::String(r.model_version.clone()),
        ),
        ("source".into(), Value::String(r.source.clone())),
        (
            "quantiles".into(),
            Value::Map(
                r.quantiles
                    .iter()
                    .map(|(q, v)| (q.clone(), doubles(v)))
                    .collect::<HashMap<_, _>>(),
            ),
        ),
    ])
}

/// `r` as an Avro datum of `schema` (no wire-format header).
pub fn encode_datum(schema: &Schema, r: &ForecastRecord) -> Result<Vec<u8>> {
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(forecast_value(r)))
        .map_err(|e| Error::Registry(format!("encoding the forecast of {} as Avro: {e}", r.key)))
}

/// Reads a wire-format forecast back with its writer schema (tests, tools).
pub fn decode_forecast(schema: &Schema, payload: &[u8]) -> Result<(u32, ForecastRecord)> {
    crate::decode::limit_avro_allocations();
    let (id, mut datum) = unframe(payload).map_err(Error::Registry)?;
    let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .and_then(|r| r.read_value(&mut datum))
        .map_err(|e| Error::Registry(format!("decoding a forecast: {e}")))?;
    let bad = |what: &str| Error::Registry(format!("a forecast record without {what}"));
    let Value::Record(fields) = value else {
        return Err(bad("a record"));
    };
    let get = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let string = |name: &str| match get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(bad(name)),
    };
    let long = |name: &str| match get(name) {
        Some(Value::Long(n)) => Ok(*n),
        _ => Err(bad(name)),
    };
    let doubles = |v: &Value| match v {
        Value::Array(items) => items
            .iter()
            .map(|x| match x {
                Value::Double(d) => Ok(*d),
                _ => Err(bad("doubles")),
            })
            .collect::<Result<Vec<f64>>>(),
        _ => Err(bad("an array")),
    };
    let quantiles = match get("quantiles") {
        Some(Value::Map(m)) => m
            .iter()
            .map(|(q, v)| Ok((q.clone(), doubles(v)?)))
            .collect::<Result<BTreeMap<_, _>>>()?,
        _ => BTreeMap::new(),
    };
    Ok((
        id,
        ForecastRecord {
            key: string("key")?,
            window_end: string("window_end")?,
            window_end_ms: long("window_end_ms")?,
            step_ms: long("step_ms")?,
            forecast: doubles(get("forecast").ok_or_else(|| bad("forecast"))?)?,
            model_version: string("model_version")?,
            source: string("source")?,
            quantiles,
        },
    ))
}

/// The sink's Avro side: the schema, the registry and the registered id.
#[derive(Debug)]
pub struct ForecastAvro {
    schema: Schema,
    registry: Registry,
    subject: String,
    id: tokio::sync::OnceCell<u32>,
}

impl ForecastAvro {
    /// `Some` when `sink.format = "avro"`.
    pub fn from_config(cfg: &PipelineConfig) -> Result<Option<Self>> {
        if cfg.sink.format != PayloadFormat::Avro {
            return Ok(None);
        }
        Ok(Some(ForecastAvro {
            schema: forecast_schema()?,
            registry: Registry::new(&cfg.registry)?,
            subject: subject(&cfg.sink.topic),
            id: tokio::sync::OnceCell::new(),
        }))
    }

    /// The schema's registry id, registering it on the first call.
    pub async fn id(&self) -> Result<u32> {
        self.id
            .get_or_try_init(|| async {
                let id = self.registry.register(&self.subject, FORECAST_SCHEMA).await?;
                tracing::info!(subject = %self.subject, id, registry = %self.registry.url(), "forecast schema registered");
                Ok(id)
            })
            .await
            .copied()
    }

    /// `r` in the wire format with schema id `id`.
    pub fn encode(&self, id: u32, r: &ForecastRecord) -> Result<Vec<u8>> {
        Ok(frame(id, &encode_datum(&self.schema, r)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(quantiles: bool) -> ForecastRecord {
        ForecastRecord {
            key: "web-01".into(),
            window_end: "2024-01-01T01:00:00Z".into(),
            window_end_ms: 1_704_070_800_000,
            step_ms: 3_600_000,
            forecast: vec![12.1, -0.5, 1e300],
            model_version: "v7".into(),
            source: "model".into(),
            quantiles: if quantiles {
                [("0.1".to_string(), vec![1.0, 2.0, 3.0])]
                    .into_iter()
                    .collect()
            } else {
                BTreeMap::new()
            },
        }
    }

    #[test]
    fn a_forecast_round_trips_through_the_wire_format() {
        let schema = forecast_schema().unwrap();
        for q in [false, true] {
            let r = record(q);
            let payload = frame(42, &encode_datum(&schema, &r).unwrap());
            assert_eq!(payload[0], 0, "magic byte");
            assert_eq!(&payload[1..5], &42u32.to_be_bytes());
            let (id, back) = decode_forecast(&schema, &payload).unwrap();
            assert_eq!((id, back), (42, r));
        }
    }

    #[test]
    fn the_datum_is_avro_binary_in_field_order() {
        // Avro strings are a zigzag length then the bytes: "web-01" is
        // 0x0c then the text, first in the record.
        let d = encode_datum(&forecast_schema().unwrap(), &record(false)).unwrap();
        assert_eq!(&d[..7], b"\x0cweb-01");
    }

    #[test]
    fn the_subject_follows_the_topic_name_strategy() {
        assert_eq!(subject("forecasts"), "forecasts-value");
    }
}
