//! The forecast record as published (JSON, Kafka key = the entity key):
//!
//! ```json
//! {"key":"web-01","window_end":"2024-01-01T01:00:00Z","window_end_ms":1704070800000,
//!  "step_ms":3600000,"forecast":[12.1,12.7],"model_version":"...","source":"model"}
//! ```
//! `forecast[i]` is the value for the window ending `window_end_ms + (i+1)*step_ms`.
//! A duplicate (after a restart) has the same `(key, window_end, model_version)`.
//!
//! Two ways to the JSON: [`forecast_records`] builds owned records (for
//! printing and Avro), and [`ForecastJson`] writes a batch's rows straight
//! from its Arrow columns into a buffer the caller reuses, with no String or
//! Vec per record (the Kafka sink's path: 10,000 forecasts close at once).
//! Invariant: both give the same bytes as `serde_json` on a
//! [`ForecastRecord`] (same field order, same float and escape rules; a
//! test holds them together).

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::Float64Type;
use serde::ser::SerializeMap;

use crate::error::{Error, Result};
use crate::schema::forecasts;

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
    let keys = batch.column(forecasts::KEY).as_string::<i32>();
    let ends = batch
        .column(forecasts::WINDOW_END)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .map(|a| a.values().to_vec())
        .unwrap_or_default();
    let versions = batch.column(forecasts::MODEL_VERSION).as_string::<i32>();
    let sources = batch.column(forecasts::SOURCE).as_string::<i32>();
    let lists = batch.column(forecasts::FORECAST).as_fixed_size_list();
    let h = lists.value_length() as usize;
    let values = lists.values().as_primitive::<Float64Type>().values();
    // Optional quantiles column: `h` values per quantile, quantile-major.
    let quant = batch
        .schema()
        .index_of(forecasts::QUANTILES_NAME)
        .ok()
        .map(|ix| {
            let names: Vec<String> = batch
                .schema()
                .field(ix)
                .metadata()
                .get(forecasts::QUANTILES_NAME)
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
            window_end: crate::time::rfc3339_ms(ends[i]),
            window_end_ms: ends[i],
            step_ms,
            forecast: values[i * h..(i + 1) * h].to_vec(),
            model_version: versions.value(i).to_string(),
            source: sources.value(i).to_string(),
        })
        .collect()
}

/// Writes the published JSON of a forecasts batch's rows, one row at a
/// time, into a caller's buffer (see the module docs).
pub struct ForecastJson<'a> {
    keys: &'a StringArray,
    ends: &'a [i64],
    versions: &'a StringArray,
    sources: &'a StringArray,
    values: &'a [f64],
    h: usize,
    /// Quantile names sorted as a `BTreeMap` orders them, each with its
    /// position in the column (quantile-major, `h` values each).
    quantile_names: Vec<(String, usize)>,
    quantiles: &'a [f64],
    step_ms: i64,
    /// The last `window_end` formatted: a close's rows share one end.
    end: Option<(i64, String)>,
}

impl<'a> ForecastJson<'a> {
    pub fn new(batch: &'a RecordBatch, step_ms: i64) -> Result<Self> {
        let ends = batch
            .column(forecasts::WINDOW_END)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| Error::Model("forecasts: window_end is not a timestamp".into()))?
            .values();
        let lists = batch.column(forecasts::FORECAST).as_fixed_size_list();
        let (mut quantile_names, mut quantiles): (Vec<(String, usize)>, &[f64]) = (Vec::new(), &[]);
        if let Ok(ix) = batch.schema().index_of(forecasts::QUANTILES_NAME) {
            quantile_names = batch
                .schema()
                .field(ix)
                .metadata()
                .get(forecasts::QUANTILES_NAME)
                .map(|s| s.split(',').map(str::to_string).zip(0..).collect())
                .unwrap_or_default();
            // A name given twice: the last wins, as in `forecast_records`'
            // map.
            quantile_names.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            quantile_names.dedup_by(|a, b| a.0 == b.0);
            quantiles = batch
                .column(ix)
                .as_fixed_size_list()
                .values()
                .as_primitive::<Float64Type>()
                .values();
        }
        Ok(ForecastJson {
            keys: batch.column(forecasts::KEY).as_string::<i32>(),
            ends,
            versions: batch.column(forecasts::MODEL_VERSION).as_string::<i32>(),
            sources: batch.column(forecasts::SOURCE).as_string::<i32>(),
            values: lists.values().as_primitive::<Float64Type>().values(),
            h: lists.value_length() as usize,
            quantile_names,
            quantiles,
            step_ms,
            end: None,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Row `i`'s key (the Kafka key), borrowed from the batch.
    pub fn key(&self, i: usize) -> &'a str {
        self.keys.value(i)
    }

    /// Appends row `i`'s JSON to `out`.
    pub fn write(&mut self, i: usize, out: &mut Vec<u8>) -> Result<()> {
        let end_ms = self.ends[i];
        if self.end.as_ref().is_none_or(|(e, _)| *e != end_ms) {
            self.end = Some((end_ms, crate::time::rfc3339_ms(end_ms)));
        }
        let window_end = self.end.as_ref().map_or("", |(_, s)| s.as_str());
        let h = self.h;
        // Quantile-major values of this row: `h` per quantile.
        let w = h * self.quantile_names.len();
        let rec = Borrowed {
            key: self.keys.value(i),
            window_end,
            window_end_ms: end_ms,
            step_ms: self.step_ms,
            forecast: &self.values[i * h..(i + 1) * h],
            model_version: self.versions.value(i),
            source: self.sources.value(i),
            quantiles: QuantilesRef {
                names: &self.quantile_names,
                row: self.quantiles.get(i * w..(i + 1) * w).unwrap_or(&[]),
                h,
            },
        };
        serde_json::to_writer(out, &rec)
            .map_err(|e| Error::json(format!("serializing the forecast of {}", rec.key), e))
    }
}

/// [`ForecastRecord`] borrowed from the columns: the same fields in the
/// same order, so the same JSON.
#[derive(serde::Serialize)]
struct Borrowed<'a> {
    key: &'a str,
    window_end: &'a str,
    window_end_ms: i64,
    step_ms: i64,
    forecast: &'a [f64],
    model_version: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "QuantilesRef::is_empty")]
    quantiles: QuantilesRef<'a>,
}

struct QuantilesRef<'a> {
    names: &'a [(String, usize)],
    row: &'a [f64],
    h: usize,
}

impl QuantilesRef<'_> {
    fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl serde::Serialize for QuantilesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.names.len()))?;
        for (name, qi) in self.names {
            let v = self.row.get(qi * self.h..(qi + 1) * self.h).unwrap_or(&[]);
            m.serialize_entry(name, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::forecasts_schema;
    use arrow::array::TimestampMillisecondArray;
    use arrow::array::{FixedSizeListBuilder, Float64Builder, StringArray};
    use std::sync::Arc;

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

    /// The sink's writer and serde on the owned record give the same bytes,
    /// quantiles, non-finite values, escapes and two window ends included.
    #[test]
    fn the_buffer_writer_matches_serde_on_the_record() {
        let h = 2;
        // Deliberately not in map order: the writer must sort them.
        let qs = [0.9, 0.1, 0.5];
        let keys = ["a", "qu\"ote\n", "ünï", "d"];
        let mut fb = FixedSizeListBuilder::new(Float64Builder::new(), h as i32);
        let mut qb = FixedSizeListBuilder::new(Float64Builder::new(), (h * qs.len()) as i32);
        for (r, _) in keys.iter().enumerate() {
            let x = r as f64;
            fb.values()
                .append_slice(&[x + 0.1, if r == 2 { f64::NAN } else { -x / 3.0 }]);
            fb.append(true);
            for (qi, q) in qs.iter().enumerate() {
                qb.values()
                    .append_slice(&[x + q, x * 1e300 * (qi as f64 + 1.0)]);
            }
            qb.append(true);
        }
        let batch = RecordBatch::try_new(
            forecasts_schema(h as i64, &qs),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(
                    TimestampMillisecondArray::from(vec![
                        3_600_000, 3_600_000, 7_200_123, 7_200_123,
                    ])
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(vec!["v1", "v1", "v2", "v\u{1}"])),
                Arc::new(StringArray::from(vec![
                    "model", "baseline", "model", "model",
                ])),
                Arc::new(fb.finish()),
                Arc::new(qb.finish()),
            ],
        )
        .unwrap();
        let recs = forecast_records(&batch, 3_600_000);
        assert_eq!(recs[0].quantiles.len(), 3);
        let mut w = ForecastJson::new(&batch, 3_600_000).unwrap();
        assert_eq!(w.len(), keys.len());
        let mut buf = b"left over".to_vec();
        for (i, r) in recs.iter().enumerate() {
            buf.clear();
            w.write(i, &mut buf).unwrap();
            assert_eq!(
                String::from_utf8(buf.clone()).unwrap(),
                serde_json::to_string(r).unwrap(),
                "row {i}"
            );
            assert_eq!(w.key(i), keys[i]);
        }
        // Without quantiles the field is left out, as serde skips it.
        let plain = batch.project(&[0, 1, 2, 3, 4]).unwrap();
        let recs = forecast_records(&plain, 60_000);
        let mut w = ForecastJson::new(&plain, 60_000).unwrap();
        buf.clear();
        w.write(1, &mut buf).unwrap();
        assert_eq!(buf, serde_json::to_vec(&recs[1]).unwrap());
        assert!(!String::from_utf8(buf).unwrap().contains("quantiles"));
    }
}
