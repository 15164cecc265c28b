//! streamcast: online per-key time-series forecasting for Kafka streams.
//!
//! Data flows one way through one module per stage:
//!
//! ```text
//! source (kafka | parquet) -> decode -> window -> model -> sink (kafka | parquet)
//!                                          \-> archive (parquet, the training buffer)
//! ```
//!
//! The unit between stages after `decode` is an Arrow `RecordBatch`; the
//! model stage steps all keys of a batch with one batched libtorch call.
//! `pipeline` holds the compute core shared by the streaming job (`run`) and
//! `backfill`, so both run the very same stages. `offsets` keeps the
//! delivery contract (commit only what has been forecast and acknowledged).

pub mod accuracy;
pub mod archive;
pub mod backfill;
pub mod baseline;
pub mod config;
pub mod decode;
pub mod error;
pub mod eval;
pub mod eval_rnn;
pub mod generate;
pub mod model;
pub mod offsets;
pub mod pipeline;
pub mod retrain;
pub mod run;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod train;
pub mod window;

pub use config::PipelineConfig;
pub use error::{Error, Result};
