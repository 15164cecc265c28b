//! The pipeline: the stages wired together.
//!
//! - `core`: decode -> window -> model on one thread that owns their state;
//!   never touches the network. Streaming and backfill both run it, so the
//!   same events give the same windows and forecasts.
//! - `shards`: the streaming job's cores, one per `compute.shards`, each
//!   owning the keys of its input partitions; batches are split by
//!   partition and processed in parallel, checkpoints merged.
//! - `stream`: the streaming job (`streamcast run`): Kafka consumer,
//!   compute thread, sink, committer, archive and retrainer.
//! - `backfill`: the same core over Parquet in, Parquet out.

pub mod backfill;
pub mod core;
pub mod shards;
pub mod stream;

pub use self::core::{Core, Totals};
pub use backfill::{backfill, BackfillReport};
pub use stream::{run, RunOptions};
