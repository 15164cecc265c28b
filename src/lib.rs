//! streamcast: online per-key time-series forecasting for Kafka streams.
//!
//! Data flows one way through one room per stage (see ARCHITECTURE.md):
//!
//! ```text
//! source (kafka | parquet | generator) -> decode -> window -> model -> sink (kafka | file)
//!                                                      \-> archive (parquet) -> retrain -> model
//! ```
//!
//! The unit between stages after `decode` is an Arrow `RecordBatch` whose
//! columns `schema` names; the model stage steps all keys of a batch with
//! one batched libtorch call. `pipeline` wires the stages (the streaming job
//! and the backfill run the same `pipeline::Core`); `offsets` keeps the
//! delivery contract (commit only what has been forecast and acknowledged).
//! Offline evaluation (`eval`, behind the default `eval` feature) sits
//! beside the streaming core and is never imported by it.

// Tests may unwrap: a failing unwrap is a failing test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

// Shared foundations.
pub mod config;
pub mod error;
pub mod schema;
pub mod secrets;
pub mod telemetry;
pub mod time;

// The stages, in the order data flows.
pub mod decode;
pub mod model;
pub mod sink;
pub mod source;
pub mod window;

// Around the stages.
pub mod archive;
pub mod broker;
pub mod offsets;
pub mod pipeline;
pub mod retrain;
pub mod state;
pub mod train;
pub mod verify;
// The HTTP query and health API of a running job.
pub mod api;

// Forecasters and metrics shared by the live path and evaluation.
pub mod accuracy;
pub mod baselines;
/// Per-key model choice on live errors.
pub mod choose;
pub mod score;

#[cfg(feature = "eval")]
pub mod eval;

#[doc(hidden)]
pub mod testkit;

pub use config::PipelineConfig;
pub use error::{Error, Result};
