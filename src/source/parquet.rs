//! Parquet source (backfill, training, evaluation): typed columns mapped
//! onto the events schema (key, time, values) with the same validation as
//! the decoder: a row with a null key, a bad time or a non-finite value
//! becomes a typed dead letter, not an error.

use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast, concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::config::{PipelineConfig, TimeFormat};
use crate::decode::{parse_time, DeadLetter, DeadLetterKind, RawTime};
use crate::error::{Error, Result};
use crate::schema::{events, events_schema, EventsBuilder};

/// Reads events from Parquet files into one events batch sorted by event
/// time (a backfill replays history in time order, as it happened), plus the
/// rows that could not be used. Offsets are row numbers across the files.
pub fn read_parquet_events(
    cfg: &PipelineConfig,
    paths: &[impl AsRef<Path>],
) -> Result<(RecordBatch, Vec<DeadLetter>)> {
    let d = &cfg.decode;
    let schema = events_schema(&d.value_fields);
    let mut parts = Vec::new();
    let mut dead = Vec::new();
    let mut row_base = 0i64;
    for path in paths {
        let path = path.as_ref();
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
            .with_batch_size(65_536)
            .build()?;
        for batch in reader {
            let batch = batch?;
            let (events, mut bad) = typed_events(cfg, &batch, row_base, path)?;
            row_base += batch.num_rows() as i64;
            parts.push(events);
            dead.append(&mut bad);
        }
    }
    let all = concat_batches(&schema, &parts)?;
    let order = sort_to_indices(all.column(events::TS_MS), None, None)?;
    Ok((take_record_batch(&all, &order)?, dead))
}

fn typed_events(
    cfg: &PipelineConfig,
    batch: &RecordBatch,
    row_base: i64,
    path: &Path,
) -> Result<(RecordBatch, Vec<DeadLetter>)> {
    let d = &cfg.decode;
    let col = |name: &str| -> Result<ArrayRef> {
        batch.column_by_name(name).cloned().ok_or_else(|| {
            Error::config(
                path,
                name,
                format!("column `{name}` is missing from the Parquet file"),
            )
        })
    };
    let key = cast(&col(&d.key_field)?, &DataType::Utf8)?;
    let key = key.as_string::<i32>();
    let ts = time_column(&col(&d.time_field)?, d.time_format)?;
    let values: Vec<ArrayRef> = d
        .value_fields
        .iter()
        .map(|f| Ok(cast(&col(f)?, &DataType::Float64)?))
        .collect::<Result<_>>()?;
    let values: Vec<_> = values
        .iter()
        .map(|v| v.as_primitive::<Float64Type>())
        .collect();
    let mut out = EventsBuilder::new(events_schema(&d.value_fields), batch.num_rows());
    let mut dead = Vec::new();
    let mut row = vec![0.0; values.len()];
    for (i, time) in ts.iter().enumerate() {
        let offset = row_base + i as i64;
        let reason = if key.is_null(i) {
            Some((
                DeadLetterKind::MissingField,
                format!("missing field `{}`", d.key_field),
            ))
        } else if let Err(e) = time {
            Some((
                DeadLetterKind::BadTimestamp,
                format!("unparsable timestamp in field `{}`: {e}", d.time_field),
            ))
        } else {
            let mut r = None;
            for (j, v) in values.iter().enumerate() {
                if v.is_null(i) {
                    r = Some((
                        DeadLetterKind::MissingField,
                        format!("missing field `{}`", d.value_fields[j]),
                    ));
                    break;
                }
                row[j] = v.value(i);
                if !row[j].is_finite() {
                    r = Some((
                        DeadLetterKind::BadValue,
                        format!(
                            "non-finite value {} in field `{}`",
                            row[j], d.value_fields[j]
                        ),
                    ));
                    break;
                }
            }
            r
        };
        match (reason, time) {
            (None, Ok(t)) => out.push(key.value(i), *t, 0, offset, &row),
            (reason, _) => dead.push(DeadLetter {
                kind: reason.as_ref().map_or(DeadLetterKind::BadValue, |r| r.0),
                reason: reason.map(|r| r.1).unwrap_or_default(),
                partition: 0,
                offset,
                payload: format!("{}:row {offset}", path.display()).into_bytes(),
            }),
        }
    }
    Ok((out.finish(), dead))
}

/// Event times of a Parquet column in ms; per-row errors kept for dead letters.
fn time_column(a: &ArrayRef, fmt: TimeFormat) -> Result<Vec<std::result::Result<i64, String>>> {
    let n = a.len();
    let nulls = |i: usize| a.is_null(i);
    Ok(match a.data_type() {
        DataType::Timestamp(unit, _) => {
            let v = cast(a, &DataType::Int64)?;
            let v = v.as_primitive::<Int64Type>();
            let div = match unit {
                TimeUnit::Second => -1000,
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 1000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            (0..n)
                .map(|i| {
                    if nulls(i) {
                        Err("null".to_string())
                    } else if div < 0 {
                        Ok(v.value(i) * 1000)
                    } else {
                        Ok(v.value(i).div_euclid(div))
                    }
                })
                .collect()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let v = cast(a, &DataType::Utf8)?;
            let v = v.as_string::<i32>();
            (0..n)
                .map(|i| {
                    if nulls(i) {
                        Err("null".to_string())
                    } else {
                        parse_time(&RawTime::Text(v.value(i).to_string()), fmt)
                    }
                })
                .collect()
        }
        _ => {
            let v = cast(a, &DataType::Float64)?;
            let v = v.as_primitive::<Float64Type>();
            (0..n)
                .map(|i| {
                    if nulls(i) {
                        Err("null".to_string())
                    } else {
                        parse_time(&RawTime::Number(v.value(i)), fmt)
                    }
                })
                .collect()
        }
    })
}

/// True when a Parquet file has a column of this name (e.g. archived
/// windows have `window_end`, events do not).
pub fn has_column(path: &Path, name: &str) -> Result<bool> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(f)?;
    Ok(b.schema().field_with_name(name).is_ok())
}
