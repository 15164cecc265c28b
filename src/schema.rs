//! The contracts between stages: the Arrow schemas of events, closed
//! windows and forecasts, with their columns named.
//!
//! Every stage reads another stage's batch through these names (e.g.
//! `batch.column(windows::WINDOW_END)`), never through a bare position, so
//! a change of layout is made here once. Fixed columns come first; the
//! per-pipeline columns (value fields, covariates) follow in config order.
//!
//! ```text
//! events:    key, ts_ms, partition, offset, <value fields...>
//! windows:   key, window_start, window_end, count, filled, <aggregates...>, <covariates...>
//! forecasts: key, window_end, model_version, source, forecast[h] (, quantiles[h*q])
//! ```

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Column positions of an events batch (see [`events_schema`]).
pub mod events {
    pub const KEY: usize = 0;
    pub const TS_MS: usize = 1;
    pub const PARTITION: usize = 2;
    pub const OFFSET: usize = 3;
    /// The first value field; the others follow in config order.
    pub const FIRST_VALUE: usize = 4;
}

/// Column positions of a closed-windows batch (see [`windows_schema`]).
pub mod windows {
    pub const KEY: usize = 0;
    pub const WINDOW_START: usize = 1;
    pub const WINDOW_END: usize = 2;
    pub const COUNT: usize = 3;
    pub const FILLED: usize = 4;
    /// The first value field's aggregate; the others, then the covariates, follow.
    pub const FIRST_AGG: usize = 5;
    /// Column names (the archive's Parquet files and polars read these).
    pub const WINDOW_END_NAME: &str = "window_end";
}

/// Column positions of a forecasts batch (see [`forecasts_schema`]).
pub mod forecasts {
    pub const KEY: usize = 0;
    pub const WINDOW_END: usize = 1;
    pub const MODEL_VERSION: usize = 2;
    pub const SOURCE: usize = 3;
    pub const FORECAST: usize = 4;
    /// Optional, after `forecast`; its field metadata `quantiles` lists them.
    pub const QUANTILES_NAME: &str = "quantiles";
}

fn utc_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
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
        let n_values = schema.fields().len() - events::FIRST_VALUE;
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

/// Schema of a closed-windows batch: one aggregate per value field
/// (nullable: `fill = "missing"`), then the calendar covariates.
pub fn windows_schema(value_fields: &[String], covariate_names: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("window_start", utc_ms(), false),
        Field::new(windows::WINDOW_END_NAME, utc_ms(), false),
        Field::new("count", DataType::UInt32, false),
        Field::new("filled", DataType::Boolean, false),
    ];
    fields.extend(
        value_fields
            .iter()
            .map(|f| Field::new(f, DataType::Float64, true)),
    );
    fields.extend(
        covariate_names
            .iter()
            .map(|f| Field::new(f, DataType::Float64, false)),
    );
    Arc::new(Schema::new(fields))
}

/// Schema of the forecasts batch; with quantiles, a `quantiles` column
/// holds `horizon` values per quantile, quantile-major.
pub fn forecasts_schema(horizon: i64, quantiles: &[f64]) -> SchemaRef {
    let list = |len: i32| {
        DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float64, true)), len)
    };
    let mut fields = vec![
        Field::new("key", DataType::Utf8, false),
        Field::new(windows::WINDOW_END_NAME, utc_ms(), false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("forecast", list(horizon as i32), false),
    ];
    if !quantiles.is_empty() {
        let q: Vec<String> = quantiles.iter().map(|q| q.to_string()).collect();
        let meta =
            std::collections::HashMap::from([(forecasts::QUANTILES_NAME.to_string(), q.join(","))]);
        fields.push(
            Field::new(
                forecasts::QUANTILES_NAME,
                list((horizon as usize * quantiles.len()) as i32),
                false,
            )
            .with_metadata(meta),
        );
    }
    Arc::new(Schema::new(fields))
}

/// The values of a `FixedSizeList<Float64>` column (the forecasts'
/// `forecast` and `quantiles`), flat; none if the column is not one.
pub fn f64_list_values(batch: &RecordBatch, ix: usize) -> Option<&[f64]> {
    let lists = batch
        .column(ix)
        .as_any()
        .downcast_ref::<arrow::array::FixedSizeListArray>()?;
    let flat = lists
        .values()
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()?;
    Some(flat.values())
}

/// A `FixedSizeList<Float64>` column of `width` with `values` (flat), of
/// the same item field as `like`; none if `like` is not such a column or
/// the values do not fill whole rows.
pub fn f64_list_like(like: &ArrayRef, values: Vec<f64>, width: usize) -> Option<ArrayRef> {
    let DataType::FixedSizeList(field, _) = like.data_type() else {
        return None;
    };
    arrow::array::FixedSizeListArray::try_new(
        field.clone(),
        i32::try_from(width).ok()?,
        Arc::new(arrow::array::Float64Array::from(values)),
        None,
    )
    .ok()
    .map(|a| Arc::new(a) as ArrayRef)
}
