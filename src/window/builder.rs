//! Builds closed-windows batches (the schema of
//! [`WindowSpec::windows_schema`]) row by row: the window stage emits
//! through it, and anything else that hands windows to the forecast stage
//! (evaluation, tests, benches) builds them the same way, covariates
//! included.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder,
};
use arrow::datatypes::SchemaRef;

use super::{covariates, WindowSpec};

/// Column builders of one closed-windows batch.
pub struct WindowsBuilder<'a> {
    spec: &'a WindowSpec,
    schema: SchemaRef,
    key: StringBuilder,
    start: TimestampMillisecondBuilder,
    end: TimestampMillisecondBuilder,
    count: UInt32Builder,
    filled: BooleanBuilder,
    values: Vec<Float64Builder>,
    starts: Vec<i64>,
}

impl<'a> WindowsBuilder<'a> {
    pub fn new(spec: &'a WindowSpec, capacity: usize) -> Self {
        Self::with_schema(spec, spec.windows_schema(), capacity)
    }

    /// As `new`, with the spec's schema already built (the window stage
    /// keeps one rather than rebuilding it for every batch).
    pub fn with_schema(spec: &'a WindowSpec, schema: SchemaRef, capacity: usize) -> Self {
        let ts = || TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC");
        WindowsBuilder {
            key: StringBuilder::with_capacity(capacity, capacity * 16),
            start: ts(),
            end: ts(),
            count: UInt32Builder::with_capacity(capacity),
            filled: BooleanBuilder::with_capacity(capacity),
            values: spec
                .value_fields
                .iter()
                .map(|_| Float64Builder::with_capacity(capacity))
                .collect(),
            starts: Vec::with_capacity(capacity),
            spec,
            schema,
        }
    }

    /// One window of `key` starting at `start_ms` (it ends `size` later):
    /// `count` events, `filled` when it had none, one aggregate per value
    /// field (NaN for a missing one).
    pub fn push(&mut self, key: &str, start_ms: i64, count: u32, filled: bool, values: &[f64]) {
        self.key.append_value(key);
        self.start.append_value(start_ms);
        self.end.append_value(start_ms + self.spec.size_ms);
        self.count.append_value(count);
        self.filled.append_value(filled);
        for (b, v) in self.values.iter_mut().zip(values) {
            b.append_value(*v);
        }
        self.starts.push(start_ms);
    }

    pub fn finish(mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.end.finish()),
            Arc::new(self.count.finish()),
            Arc::new(self.filled.finish()),
        ];
        cols.extend(
            self.values
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        cols.extend(covariates(&self.spec.covariates, &self.starts));
        // Built column by column from the same rows: matches the schema.
        RecordBatch::try_new(self.schema, cols).expect("windows columns match their schema")
    }
}
