//! The model room: closed windows -> one forecast per key per window, from a
//! stacked recurrent network whose hidden state per key is carried from
//! window to window.
//!
//! - `cells`: the recurrent cell equations (hand-checked in tests).
//! - `attention`: the transformer cell and temporal attention (band-masked
//!   attention over a key's last `attention_window` windows).
//! - `network`: stacked cells, heads, seq2seq decoder; `step` and `forward_seq`.
//! - `store`: every key's state in contiguous tensors, with a key -> slot map.
//! - `forecast`: the stage itself ([`ForecastStage`]): scaling, cold start,
//!   batched step, hot swap.
//! - `hybrid`: ES-RNN-style per-key exponential smoothing (level and
//!   multiplicative seasonality) around the network.
//! - `artifact`: a trained model on disk (`model.safetensors` + `model.json`).
//! - `registry`: the versions of a pipeline's model and its champion.
//!
//! Layout (see `store`): the states of all keys live in a few contiguous
//! tensors `[layers, slots, hidden]` (plus the LSTM cell state) with a
//! key -> slot map and a free list. One batch of closed windows is one
//! gather -> step -> scatter; there are no per-key tensors and no per-key
//! libtorch calls. When a key closes several windows in one batch, the batch
//! is stepped in *waves* (each key's first window, then its second, ...), so
//! a key's windows are always applied in time order.
//!
//! Per-key scaling is online (Welford mean and variance per key and field,
//! kept in `[slots, fields]` tensors), applied before the network and
//! inverted after it. Until a key has seen `warmup_windows` windows its
//! forecast comes from seasonal naive over the key's recent history (a ring
//! buffer `[slots, W]`) and is marked `source = "baseline"`.
//!
//! Invariant: everything here runs on the pipeline's compute thread, never
//! on a tokio worker.

pub mod artifact;
pub mod attention;
pub mod cells;
pub mod forecast;
pub mod hybrid;
pub mod network;
pub mod registry;
pub mod store;

pub use artifact::ModelSpec;
pub use cells::{CellShape, LayerWeights};
pub use forecast::{ForecastStage, SwapReport};
pub use network::{device_for, first_output, network_input, seed_global, Network};
pub use registry::Registry;

use crate::config::PipelineConfig;

/// The names of the model's input features for a pipeline, in order: the
/// scaled value fields, the target's missing flag, the calendar covariates,
/// then the target's lags 1..=lags (scaled with the current scaler).
pub fn feature_names(cfg: &PipelineConfig) -> Vec<String> {
    let spec = crate::window::WindowSpec::from_config(cfg);
    let target = &cfg.decode.value_fields[0];
    let mut v: Vec<String> = cfg
        .decode
        .value_fields
        .iter()
        .map(|f| format!("{f}_scaled"))
        .collect();
    v.push(format!("{target}_missing"));
    v.extend(spec.covariate_names());
    v.extend((1..=cfg.lags()).map(|j| format!("{target}_lag{j}")));
    if cfg.model.output_recurrence.enabled() {
        v.push(PREV_OUTPUT.into());
    }
    v
}

/// The feature name of the fed-back previous output (output recurrence).
pub const PREV_OUTPUT: &str = "prev_output";

/// Scaled inputs (and training targets) are clamped to this many scale units:
/// a key that sat flat and then moves would otherwise feed the network (or
/// the loss) values in the millions. Training and the live stage apply the
/// same clamp.
pub const SCALED_CLAMP: f64 = 10.0;

/// Windows of history kept per key: enough for seasonal naive, warm-up and
/// a hot-swap replay long enough for the state to forget its start.
pub fn replay_windows(spec: &ModelSpec, warmup: u32) -> i64 {
    (spec.season).max(warmup as i64).max(48)
}

#[cfg(test)]
mod tests;
