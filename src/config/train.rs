//! The `[train]` table: options of `streamcast train` and the retrainer.

use serde::{Deserialize, Serialize};

/// Training options (the `[train]` table of a pipeline file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training samples at most.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Samples per batch.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Adam learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Adam weight decay (L2).
    #[serde(default)]
    pub weight_decay: f64,
    /// Loss on the scaled targets (with `model.quantiles`, the pinball loss is used instead).
    #[serde(default)]
    pub loss: PointLoss,
    /// Point forecasts trained with the pinball loss at this quantile
    /// instead of `loss` (ES-RNN's trick: slightly below 0.5, e.g. 0.48,
    /// against sMAPE's penalty on over-forecasts). Ignored with
    /// `model.quantiles`. Absent = `loss`.
    #[serde(default)]
    pub point_tau: Option<f64>,
    /// Windows of context per sample.
    #[serde(default = "d_context")]
    pub context: i64,
    /// Origins between consecutive samples of a key.
    #[serde(default = "d_stride")]
    pub stride: i64,
    /// Truncation length of backpropagation through time, in windows.
    #[serde(default = "d_tbptt")]
    pub tbptt: i64,
    /// Clip the global gradient norm to this (0 = no clipping).
    #[serde(default = "d_clip")]
    pub clip_norm: f64,
    /// Steps at the start of each sample left out of the loss (cold state).
    #[serde(default = "d_burn")]
    pub burn_in: i64,
    /// Windows at the end of every key held out for validation (>= horizon).
    #[serde(default)]
    pub val_windows: Option<i64>,
    /// Stop after this many epochs without a better validation loss.
    #[serde(default = "d_patience")]
    pub patience: usize,
    /// Dropout between stacked layers during training.
    #[serde(default)]
    pub dropout: f64,
    /// Seed for initialisation and shuffling.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// libtorch threads while training (1 is fastest for small models on
    /// a shared machine; see BENCHMARKS.md).
    #[serde(default = "d_threads")]
    pub threads: i32,
    /// Stop after this many seconds (the best model so far is kept).
    #[serde(default)]
    pub max_seconds: Option<f64>,
    /// Write a vanishing/exploding-gradient report here (CSV): the norm of
    /// d loss / d h at every lag back from a sample's last step, before and
    /// after training (see `train::grad_decay`). Off by default (it costs
    /// a few step-by-step passes with full backpropagation).
    #[serde(default)]
    pub grad_report: Option<std::path::PathBuf>,
}

fn d_epochs() -> usize {
    20
}
fn d_batch() -> usize {
    128
}
fn d_lr() -> f64 {
    3e-3
}
fn d_context() -> i64 {
    96
}
fn d_stride() -> i64 {
    12
}
fn d_tbptt() -> i64 {
    48
}
fn d_clip() -> f64 {
    1.0
}
fn d_burn() -> i64 {
    24
}
fn d_patience() -> usize {
    4
}
fn d_seed() -> u64 {
    7
}
fn d_threads() -> i32 {
    // One: the ops of these small recurrent nets are too small to split, and
    // with two OpenMP threads on a busy 2-core machine every op's barrier
    // waits on a descheduled thread — measured 85x slower (BENCHMARKS.md).
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

/// The point-forecast loss on scaled targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PointLoss {
    /// Mean squared error.
    #[default]
    Mse,
    /// Mean absolute error (robust to spikes).
    Mae,
}
