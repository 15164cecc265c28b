//! Sinks: forecasts and dead letters to Kafka (streaming) or to files
//! (backfill).
//!
//! Forecast record (JSON, Kafka key = the entity key):
//! ```json
//! {"key":"web-01","window_end":"2024-01-01T01:00:00Z","window_end_ms":1704070800000,
//!  "step_ms":3600000,"forecast":[12.1,12.7],"model_version":"...","source":"model"}
//! ```
//! `forecast[i]` is the value for the window ending `window_end_ms + (i+1)*step_ms`.
//! A duplicate (after a restart) has the same `(key, window_end, model_version)`.
//!
//! Invariant: a ticket is released only after *every* record of its batch
//! was acknowledged by the broker. A failed delivery is retried (with
//! backoff) rather than dropped: losing it would lose a forecast.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::Float64Type;
use parquet::arrow::ArrowWriter;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::decode::DeadLetter;
use crate::error::{Error, Result};
use crate::offsets::OffsetTracker;
use crate::pipeline::Output;

/// One forecast as published.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ForecastRecord {
    pub key: String,
    pub window_end: String,
    pub window_end_ms: i64,
    pub step_ms: i64,
    pub forecast: Vec<f64>,
    pub model_version: String,
    pub source: String,
    /// Quantile forecasts by quantile (e.g. `"0.1"`), when the model has them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub quantiles: std::collections::BTreeMap<String, Vec<f64>>,
}

/// Turns a forecasts batch into records.
pub fn forecast_records(batch: &RecordBatch, step_ms: i64) -> Vec<ForecastRecord> {
    let keys = batch.column(0).as_string::<i32>();
    let ends = batch
        .column(1)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .map(|a| a.values().to_vec())
        .unwrap_or_default();
    let versions = batch.column(2).as_string::<i32>();
    let sources = batch.column(3).as_string::<i32>();
    let lists = batch.column(4).as_fixed_size_list();
    let h = lists.value_length() as usize;
    let values = lists.values().as_primitive::<Float64Type>().values();
    // Optional quantiles column: `h` values per quantile, quantile-major.
    let quant = batch.schema().index_of("quantiles").ok().map(|ix| {
        let names: Vec<String> = batch
            .schema()
            .field(ix)
            .metadata()
            .get("quantiles")
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let col = batch.column(ix).as_fixed_size_list();
        (
            names,
            col.values().as_primitive::<Float64Type>().values().to_vec(),
        )
    });
    (0..batch.num_rows())
        .map(|i| ForecastRecord {
            quantiles: quant
                .as_ref()
                .map(|(names, v)| {
                    let w = h * names.len();
                    names
                        .iter()
                        .enumerate()
                        .map(|(qi, n)| {
                            (n.clone(), v[i * w + qi * h..i * w + (qi + 1) * h].to_vec())
                        })
                        .collect()
                })
                .unwrap_or_default(),
            key: keys.value(i).to_string(),
            window_end: rfc3339_ms(ends[i]),
            window_end_ms: ends[i],
            step_ms,
            forecast: values[i * h..(i + 1) * h].to_vec(),
            model_version: versions.value(i).to_string(),
            source: sources.value(i).to_string(),
        })
        .collect()
}

pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Publishes outputs to Kafka and releases their tickets once acknowledged.
#[derive(Clone)]
pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    dead_letter_topic: String,
    source_topic: String,
    step_ms: i64,
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl KafkaSink {
    pub fn new(
        producer: FutureProducer,
        topic: String,
        dead_letter_topic: String,
        source_topic: String,
        step_ms: i64,
        tracker: Arc<Mutex<OffsetTracker>>,
    ) -> Self {
        KafkaSink {
            producer,
            topic,
            dead_letter_topic,
            source_topic,
            step_ms,
            tracker,
        }
    }

    /// Sends every record of `output`, waits for all acknowledgements, then
    /// releases the ticket. Returns the forecast records (for printing).
    pub async fn deliver(&self, output: Output) -> Vec<ForecastRecord> {
        let (topic, records, printed): (&str, Vec<(String, String)>, Vec<ForecastRecord>) =
            match &output {
                Output::Forecasts { forecasts, .. } => {
                    let recs = forecast_records(forecasts, self.step_ms);
                    let payloads = recs
                        .iter()
                        .map(|r| (r.key.clone(), serde_json::to_string(r).unwrap_or_default()))
                        .collect();
                    (&self.topic, payloads, recs)
                }
                Output::DeadLetters { letters, .. } => (
                    &self.dead_letter_topic,
                    letters
                        .iter()
                        .map(|d| {
                            (
                                dead_letter_key(d),
                                d.to_json(&self.source_topic).to_string(),
                            )
                        })
                        .collect(),
                    Vec::new(),
                ),
            };
        let sends = records
            .iter()
            .map(|(k, v)| self.send_until_acked(topic, k, v));
        futures::future::join_all(sends).await;
        let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        t.release(output.ticket());
        metrics::counter!("streamcast_records_published_total", "topic" => topic.to_string())
            .increment(records.len() as u64);
        printed
    }

    async fn send_until_acked(&self, topic: &str, key: &str, payload: &str) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let rec = FutureRecord::to(topic).key(key).payload(payload);
            match self.producer.send(rec, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((e, _)) => {
                    metrics::counter!("streamcast_delivery_retries_total").increment(1);
                    tracing::warn!(error = %e, topic, "delivery failed; retrying (the forecast is kept)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

fn dead_letter_key(d: &DeadLetter) -> String {
    format!("{}:{}", d.partition, d.offset)
}

/// Writes forecasts to Parquet and dead letters to JSON lines (backfill).
pub struct FileSink {
    writer: ArrowWriter<File>,
    path: PathBuf,
    dead_path: PathBuf,
    dead: Option<BufWriter<File>>,
    source: String,
    pub forecasts: u64,
    pub dead_letters: u64,
}

impl FileSink {
    /// Forecasts go to `path`; dead letters to `path` + `.dead-letter.jsonl`
    /// (created only when there is one).
    pub fn create(path: &Path, schema: arrow::datatypes::SchemaRef, source: &str) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let file =
            File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let writer = ArrowWriter::try_new(file, schema, None)?;
        let mut dead_path = path.as_os_str().to_owned();
        dead_path.push(".dead-letter.jsonl");
        Ok(FileSink {
            writer,
            path: path.to_path_buf(),
            dead_path: dead_path.into(),
            dead: None,
            source: source.to_string(),
            forecasts: 0,
            dead_letters: 0,
        })
    }

    pub fn dead_letter_path(&self) -> &Path {
        &self.dead_path
    }

    pub fn write(&mut self, output: &Output) -> Result<()> {
        match output {
            Output::Forecasts { forecasts, .. } => {
                self.forecasts += forecasts.num_rows() as u64;
                self.writer.write(forecasts)?;
            }
            Output::DeadLetters { letters, .. } => {
                if self.dead.is_none() {
                    let f = File::create(&self.dead_path).map_err(|e| {
                        Error::io(format!("creating {}", self.dead_path.display()), e)
                    })?;
                    self.dead = Some(BufWriter::new(f));
                }
                if let Some(w) = self.dead.as_mut() {
                    for d in letters {
                        writeln!(w, "{}", d.to_json(&self.source)).map_err(|e| {
                            Error::io(format!("writing {}", self.dead_path.display()), e)
                        })?;
                    }
                }
                self.dead_letters += letters.len() as u64;
            }
        }
        Ok(())
    }

    pub fn close(self) -> Result<PathBuf> {
        self.writer.close()?;
        if let Some(mut w) = self.dead {
            w.flush()
                .map_err(|e| Error::io(format!("writing {}", self.dead_path.display()), e))?;
        }
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::forecasts_schema;
    use arrow::array::{FixedSizeListBuilder, Float64Builder, StringArray};

    #[test]
    fn records_carry_key_end_horizon_and_version() {
        let mut fb = FixedSizeListBuilder::new(Float64Builder::new(), 2);
        fb.values().append_slice(&[1.0, 2.0]);
        fb.append(true);
        let batch = RecordBatch::try_new(
            forecasts_schema(2, &[]),
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(TimestampMillisecondArray::from(vec![3_600_000]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec!["v1"])),
                Arc::new(StringArray::from(vec!["model"])),
                Arc::new(fb.finish()),
            ],
        )
        .unwrap();
        let recs = forecast_records(&batch, 60_000);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].key, "a");
        assert_eq!(recs[0].window_end, "1970-01-01T01:00:00Z");
        assert_eq!(recs[0].forecast, vec![1.0, 2.0]);
        assert_eq!(recs[0].model_version, "v1");
        assert_eq!(recs[0].step_ms, 60_000);
    }
}
