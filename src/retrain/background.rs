//! The background retrainer: its own thread (libtorch and polars never run
//! on a tokio worker) that wakes every `retrain.every` or after
//! `every_windows` closed windows, trains a challenger on the archive, and
//! hands a promoted model to the compute thread over a channel; the compute
//! thread hot-swaps it between batches (replaying each key's recent
//! windows), so ingestion and forecasting never wait for training. With
//! `retrain.shadow_windows` a challenger that wins offline goes to the
//! compute thread to run in shadow instead, and the live duel decides.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{challenge, Promotion};
use crate::config::PipelineConfig;
use crate::model::registry::{starting_model, Registry};
use crate::telemetry;
use crate::train;

/// Shared counters between the compute thread and the retrainer.
#[derive(Default)]
pub struct RetrainSignals {
    /// Closed windows so far (the compute thread adds).
    pub windows: AtomicU64,
    /// Set to stop the retrainer.
    pub stop: AtomicBool,
}

/// Runs the retrainer loop until `signals.stop`. Promoted models go to
/// `swap_tx` (the compute thread swaps them in).
pub fn run_retrainer(
    cfg: PipelineConfig,
    signals: Arc<RetrainSignals>,
    swap_tx: SyncSender<Promotion>,
) {
    let registry = Registry::new(cfg.models_dir());
    let mut champion = match starting_model(&cfg) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "retrainer cannot load the starting model; retraining is off");
            return;
        }
    };
    let mut last_at = Instant::now();
    let mut last_windows = 0u64;
    let mut waiting_for_archive = false;
    while !signals.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        let windows = signals.windows.load(Ordering::Relaxed);
        let due = windows.saturating_sub(last_windows) >= cfg.retrain.every_windows
            || last_at.elapsed() >= cfg.retrain.every;
        if !due {
            continue;
        }
        last_at = Instant::now();
        last_windows = windows;
        let files = match crate::archive::list_files(&cfg.archive_dir()) {
            Ok(f) if !f.is_empty() => {
                waiting_for_archive = false;
                f
            }
            Ok(_) => {
                // Said once, not at every poll while waiting for the file.
                if !waiting_for_archive {
                    tracing::info!(dir = %cfg.archive_dir().display(), "retrain due but the archive has no completed file yet; waiting for one");
                    waiting_for_archive = true;
                }
                // Try again at the next poll rather than a full period later.
                last_windows = 0;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "retrainer cannot list the archive");
                continue;
            }
        };
        let all = files.len();
        let files = crate::archive::newest_within(&files, cfg.retrain.max_archive_bytes);
        tracing::info!(
            windows,
            files = files.len(),
            of = all,
            "retraining a challenger on the newest archive files"
        );
        let t = cfg.train.clone();
        if cfg.retrain.shadow_windows > 0 {
            // With shadow runs the champion changes on the compute thread
            // (a live duel won): take it from the registry each round.
            match starting_model(&cfg) {
                Ok(m) => champion = m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload the champion; challenging the last one known")
                }
            }
        }
        // A panic in preparation or training (polars, libtorch, a bug) must
        // not end retraining silently for the rest of the job's life: it is
        // caught, logged with its message, counted, and the next round runs.
        let round = guarded(|| {
            train::prepare(&files, &train::prep_spec(&cfg, &t))
                .and_then(|data| challenge(&cfg, &t, &data, &champion, &registry))
        });
        let outcome = match round {
            Ok(o) => o,
            Err(what) => {
                metrics::counter!(telemetry::RETRAIN_RUNS, "outcome" => "panicked").increment(1);
                tracing::error!(panic = %what, "the retraining round panicked; the champion stays and the next round runs as scheduled");
                continue;
            }
        };
        let label = match &outcome {
            Ok((d, Some(_))) if d.live.is_some() => "shadow",
            Ok((_, Some(_))) => "promoted",
            Ok((_, None)) => "kept",
            Err(_) => "failed",
        };
        metrics::counter!(telemetry::RETRAIN_RUNS, "outcome" => label).increment(1);
        match outcome {
            Ok((decision, Some(trained))) => {
                let shadow = decision.live.is_some().then_some(decision);
                if shadow.is_none() {
                    // Keep a copy as the new champion for the next round.
                    if let Ok(copy) = trained.net.copy_for(&trained.spec) {
                        champion = (copy, trained.spec.clone());
                    }
                }
                let p = Promotion {
                    net: trained.net,
                    spec: trained.spec,
                    shadow,
                };
                if swap_tx.send(p).is_err() {
                    return;
                }
            }
            Ok((_, None)) => {}
            Err(e) => tracing::warn!(error = %e, "retraining failed; the champion stays"),
        }
    }
}

/// Runs one round, turning a panic into its message.
fn guarded<T>(round: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(round))
        .map_err(|panic| panic_message(panic.as_ref()))
}

/// The message of a caught panic (`panic!` with a string or a format).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::guarded;

    #[test]
    fn a_panicking_round_is_reported_and_the_next_one_runs() {
        let mut rounds = Vec::new();
        for i in 0..3 {
            rounds.push(guarded(|| {
                if i == 1 {
                    let shape: Vec<usize> = Vec::new();
                    panic!("bad shape {shape:?} in round {i}");
                }
                i
            }));
        }
        assert_eq!(
            rounds,
            [Ok(0), Err("bad shape [] in round 1".to_string()), Ok(2)]
        );
    }
}
