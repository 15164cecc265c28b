//! Sinks: where the compute core's [`Output`]s go.
//!
//! - `kafka`: forecasts, dead letters and accuracy records to their topics
//!   (streaming); a ticket is released only when every record of its
//!   output is acked.
//! - `file`: forecasts to Parquet, dead letters to JSON lines (backfill).
//! - `records`: the published forecast record and its JSON form.
//! - `avro`: the same record as Avro in Confluent's wire format
//!   (`sink.format = "avro"`), its schema registered in `[registry]`.

pub mod avro;
pub mod file;
pub mod kafka;
pub mod records;

use std::time::Instant;

use arrow::array::RecordBatch;

use crate::decode::DeadLetter;
use crate::offsets::Ticket;
use crate::score::AccuracyRecord;
use crate::state::Checkpoint;

pub use file::FileSink;
pub use kafka::{Delivered, KafkaSink};
pub use records::{forecast_records, ForecastRecord};

/// What the core hands to a sink.
#[derive(Debug)]
pub enum Output {
    /// Forecasts (schema `schema::forecasts_schema`) and the closed windows
    /// they were made from (for the archive).
    Forecasts {
        forecasts: RecordBatch,
        windows: RecordBatch,
        ticket: Ticket,
        /// When the window stage closed these windows (the watermark passed
        /// their end): the start of the close -> ack latency.
        closed_at: Instant,
    },
    /// Records that could not be used, with reasons.
    DeadLetters {
        letters: Vec<DeadLetter>,
        ticket: Ticket,
    },
    /// Live accuracy records (`sink.accuracy_topic`): nothing is pinned on
    /// them; with exactly once they commit with the forecasts.
    Accuracy(Vec<AccuracyRecord>),
    /// A commit point of durable state (streaming with `state.enabled`):
    /// a barrier, published after every output before it is acknowledged.
    Checkpoint(Checkpoint),
    /// The assignment was lost: everything since the last checkpoint is
    /// abandoned (the open transaction is aborted) and redone by the
    /// partitions' next owner from the committed state.
    Abandon,
}

impl Output {
    /// Roughly the memory this output holds until it is acknowledged (what
    /// `sink.max_in_flight_bytes` bounds).
    pub fn bytes(&self) -> usize {
        match self {
            Output::Forecasts {
                forecasts, windows, ..
            } => forecasts.get_array_memory_size() + windows.get_array_memory_size(),
            Output::DeadLetters { letters, .. } => letters
                .iter()
                .map(|d| d.payload.len() + d.reason.len() + 64)
                .sum(),
            Output::Accuracy(records) => records.iter().map(|r| 96 + 96 * r.scored.len()).sum(),
            Output::Checkpoint(_) | Output::Abandon => 0,
        }
    }

    /// The pins this output releases once acknowledged (none for a checkpoint).
    pub fn ticket(&self) -> Option<&Ticket> {
        match self {
            Output::Forecasts { ticket, .. } | Output::DeadLetters { ticket, .. } => Some(ticket),
            Output::Accuracy(_) | Output::Checkpoint(_) | Output::Abandon => None,
        }
    }
}
