//! The forecast record as published (JSON, Kafka key = the entity key):
//!
//! ```json
//! {"key":"web-01","window_end":"2024-01-01T01:00:00Z","window_end_ms":1704070800000,
//!  "step_ms":3600000,"forecast":[12.1,12.7],"model_version":"...","source":"model"}
//! ```
//! `forecast[i]` is the value for the window ending `window_end_ms + (i+1)*step_ms`.
//! A duplicate (after a restart) has the same `(key, window_end, model_version)`.

use arrow::array::{Array, AsArray, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::Float64Type;

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
}
