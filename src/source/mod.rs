//! Sources: where events come from.
//!
//! - `kafka`: the streaming consumer (bytes only; decoding is the next stage's).
//! - `parquet`: typed events from files, for backfill, training and evaluation.
//! - `generator`: realistic seasonal multi-key events for demos, tests and
//!   benchmarks.

pub mod generator;
pub mod kafka;
pub mod parquet;
