//! Retraining while running: a registry of model versions, the
//! champion/challenger rule, and the background retrainer.
//!
//! Registry layout (`retrain.models_dir`, default `.state/models/<pipeline>`):
//! `<version>/model.safetensors`, `<version>/model.json`,
//! `<version>/train_report.json`, `<version>/status.json` (promoted or
//! rejected, with both validation losses), and a `champion` file naming the
//! active version.
//!
//! Rule: a challenger is promoted only if training did not diverge and its
//! validation loss is finite and lower than the champion's *on the same
//! holdout* (the champion is scored on the challenger's prepared data).
//! Otherwise it is kept on disk with its metrics and the champion stays.
//!
//! The retrainer runs on its own thread (libtorch and polars never run on a
//! tokio worker), wakes every `retrain.every` or after `every_windows`
//! closed windows, and hands a promoted model to the compute thread over a
//! channel; the compute thread hot-swaps it between batches (replaying each
//! key's recent windows), so ingestion and forecasting never wait for
//! training.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::model::{artifact, ModelSpec, Network};
use crate::train::{self, Prepared, TrainConfig, Trained};

/// What happened to a challenger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub version: String,
    pub promoted: bool,
    #[serde(with = "nan_as_null")]
    pub challenger_val_loss: f64,
    #[serde(with = "nan_as_null")]
    pub champion_val_loss: f64,
    pub champion_version: String,
    pub reason: String,
}

/// JSON has no NaN: write a non-finite loss as `null`, read `null` as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// The champion/challenger rule.
pub fn decide(challenger: &Trained, champion_val: f64, champion_version: &str) -> Decision {
    let c = challenger.report.best_val_loss;
    let (promoted, reason) = if challenger.report.cancelled {
        (false, "training was cancelled (shutdown)".to_string())
    } else if challenger.report.diverged {
        (false, "training diverged".to_string())
    } else if !c.is_finite() {
        (false, format!("challenger validation loss is {c}"))
    } else if champion_val.is_finite() && c >= champion_val {
        (
            false,
            format!("validation loss {c:.6} does not beat the champion's {champion_val:.6}"),
        )
    } else {
        (
            true,
            format!("validation loss {c:.6} beats the champion's {champion_val:.6}"),
        )
    };
    Decision {
        version: challenger.spec.version.clone(),
        promoted,
        challenger_val_loss: c,
        champion_val_loss: champion_val,
        champion_version: champion_version.to_string(),
        reason,
    }
}

/// The model versions of one pipeline.
pub struct Registry {
    dir: PathBuf,
}

/// One row of `streamcast models list`.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    pub version: String,
    pub spec: ModelSpec,
    pub status: Option<Decision>,
    pub active: bool,
}

impl Registry {
    pub fn new(dir: PathBuf) -> Self {
        Registry { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn champion_version(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("champion"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    pub fn champion_dir(&self) -> Option<PathBuf> {
        self.champion_version()
            .map(|v| self.dir.join(v))
            .filter(|d| d.join("model.json").exists())
    }

    /// Saves a challenger with its decision; makes it champion if promoted.
    pub fn record(&self, trained: &Trained, decision: &Decision) -> Result<PathBuf> {
        let dir = train::save(trained, &self.dir)?;
        let status =
            serde_json::to_string_pretty(decision).map_err(|e| Error::Model(e.to_string()))?;
        std::fs::write(dir.join("status.json"), status)
            .map_err(|e| Error::io(format!("writing {}", dir.display()), e))?;
        if decision.promoted {
            self.set_champion(&decision.version)?;
        }
        Ok(dir)
    }

    pub fn set_champion(&self, version: &str) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let tmp = self.dir.join("champion.tmp");
        std::fs::write(&tmp, version)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, self.dir.join("champion"))
            .map_err(|e| Error::io("promoting the champion", e))
    }

    /// Every version, newest first.
    pub fn list(&self) -> Result<Vec<VersionInfo>> {
        let mut out = Vec::new();
        if !self.dir.exists() {
            return Ok(out);
        }
        let active = self.champion_version();
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("reading {}", self.dir.display()), e))?;
        for d in rd.flatten() {
            let p = d.path();
            let Ok(text) = std::fs::read_to_string(p.join("model.json")) else {
                continue;
            };
            let Ok(spec) = serde_json::from_str::<ModelSpec>(&text) else {
                continue;
            };
            let status = std::fs::read_to_string(p.join("status.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            out.push(VersionInfo {
                active: active.as_deref() == Some(spec.version.as_str()),
                version: spec.version.clone(),
                spec,
                status,
            });
        }
        out.sort_by(|a, b| b.version.cmp(&a.version));
        Ok(out)
    }
}

/// Loads the model a pipeline should start with: `model.artifact` if set,
/// else the registry's champion, else a fresh untrained network.
pub fn starting_model(cfg: &PipelineConfig) -> Result<(Network, ModelSpec)> {
    let device = crate::model::device_for(&cfg.model.device);
    let want = ModelSpec::expected(cfg);
    if let Some(dir) = &cfg.model.artifact {
        return artifact::load(dir, &want, device);
    }
    if let Some(dir) = Registry::new(cfg.models_dir()).champion_dir() {
        match artifact::load(&dir, &want, device) {
            Ok(m) => return Ok(m),
            Err(e) => {
                tracing::warn!(error = %e, "the registry's champion does not fit this pipeline; starting untrained")
            }
        }
    }
    let spec = ModelSpec::untrained(cfg);
    Ok((Network::for_spec(&spec, device, spec.seed), spec))
}

/// Trains a challenger on `data`, scores the champion on the same holdout,
/// records both and returns the decision (and the challenger if promoted).
pub fn challenge(
    cfg: &PipelineConfig,
    t: &TrainConfig,
    data: &Prepared,
    champion: &(Network, ModelSpec),
    registry: &Registry,
) -> Result<(Decision, Option<Trained>)> {
    let init = cfg.retrain.from_champion.then_some(&champion.0);
    let trained = train::train_prepared(cfg, t, data, init)?;
    let champion_val = train::validation_loss(&champion.0, data, t);
    let decision = decide(&trained, champion_val, &champion.1.version);
    registry.record(&trained, &decision)?;
    tracing::info!(
        version = %decision.version,
        promoted = decision.promoted,
        challenger = decision.challenger_val_loss,
        champion = decision.champion_val_loss,
        reason = %decision.reason,
        "challenger evaluated"
    );
    Ok((decision.clone(), decision.promoted.then_some(trained)))
}

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
    swap_tx: SyncSender<(Network, ModelSpec)>,
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
            Ok(f) if !f.is_empty() => f,
            Ok(_) => {
                tracing::info!(dir = %cfg.archive_dir().display(), "retrain due but the archive has no completed file yet");
                // Try again at the next poll rather than a full period later.
                last_windows = 0;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "retrainer cannot list the archive");
                continue;
            }
        };
        tracing::info!(windows, files = files.len(), "retraining a challenger");
        let t = cfg.train.clone();
        let outcome = train::prepare(&files, &train::prep_spec(&cfg, &t))
            .and_then(|data| challenge(&cfg, &t, &data, &champion, &registry));
        match outcome {
            Ok((_, Some(trained))) => {
                // Keep a copy as the new champion for the next round.
                let device = trained.net.vs.device();
                let mut copy = Network::for_spec(&trained.spec, device, trained.spec.seed);
                if copy.vs.copy(&trained.net.vs).is_ok() {
                    champion = (copy, trained.spec.clone());
                }
                if swap_tx.send((trained.net, trained.spec)).is_err() {
                    return;
                }
            }
            Ok((_, None)) => {}
            Err(e) => tracing::warn!(error = %e, "retraining failed; the champion stays"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::TrainReport;

    fn trained(val: f64, diverged: bool) -> Trained {
        let cfg = PipelineConfig::parse(
            "name='t'\n[source]\ntopic='i'\n[window]\nsize='1h'\n[sink]\ntopic='o'\ndead_letter_topic='d'\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let spec = ModelSpec::untrained(&cfg);
        Trained {
            net: Network::new(spec.shape, spec.horizon, tch::Device::Cpu, 1),
            spec: ModelSpec {
                version: format!("v-{val}"),
                ..spec
            },
            report: TrainReport {
                cancelled: false,
                epochs: 1,
                best_epoch: 1,
                train_loss: vec![val],
                val_loss: vec![val],
                baseline_val_loss: 1.0,
                best_val_loss: val,
                max_grad_norm: 1.0,
                max_clipped_norm: 1.0,
                samples_per_sec: 1.0,
                seconds: 1.0,
                diverged,
            },
        }
    }

    #[test]
    fn promotes_only_a_finite_better_non_diverged_challenger() {
        assert!(decide(&trained(0.5, false), 0.6, "c").promoted);
        assert!(
            !decide(&trained(0.6, false), 0.6, "c").promoted,
            "a tie keeps the champion"
        );
        assert!(!decide(&trained(0.7, false), 0.6, "c").promoted);
        assert!(
            !decide(&trained(f64::NAN, false), 0.6, "c").promoted,
            "NaN never replaces the champion"
        );
        assert!(
            !decide(&trained(0.1, true), 0.6, "c").promoted,
            "a diverged run never replaces the champion"
        );
        assert!(
            decide(&trained(0.5, false), f64::NAN, "c").promoted,
            "any finite model beats a NaN champion"
        );
    }

    #[test]
    fn registry_keeps_rejected_versions_and_tracks_the_champion() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path().to_path_buf());
        let good = trained(0.5, false);
        let d = decide(&good, 0.6, "untrained");
        reg.record(&good, &d).unwrap();
        let bad = trained(f64::NAN, false);
        let d2 = decide(&bad, 0.5, &good.spec.version);
        reg.record(&bad, &d2).unwrap();
        assert_eq!(reg.champion_version().as_deref(), Some("v-0.5"));
        let list = reg.list().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().any(|v| v.active && v.version == "v-0.5"));
        let rejected = list.iter().find(|v| v.version == "v-NaN").unwrap();
        assert!(!rejected.active);
        assert!(!rejected.status.as_ref().unwrap().promoted);
    }
}

#[cfg(test)]
mod nan_tests {
    //! A forced NaN loss (an absurd learning rate blows the weights up) must
    //! leave the champion in place, end to end through `challenge`.
    use super::*;

    #[test]
    fn a_forced_nan_loss_leaves_the_champion_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PipelineConfig::parse(
            "name='t'\n[source]\ntopic='i'\n[window]\nsize='1h'\n[model]\nhidden=8\nhorizon=2\nseason_windows=4\nwarmup_windows=4\nlags=4\n[sink]\ntopic='o'\ndead_letter_topic='d'\n",
            Path::new("t.toml"),
        )
        .unwrap();
        // A small regular series per key through the real window stage.
        let mut b = crate::decode::EventsBuilder::new(
            crate::decode::events_schema(&cfg.decode.value_fields),
            800,
        );
        for t in 0..200i64 {
            for k in 0..4 {
                b.push(
                    &format!("k{k}"),
                    t * 3_600_000 + 60_000,
                    0,
                    t * 4 + k,
                    &[(t % 4) as f64 + k as f64],
                );
            }
        }
        let windows = train::windows_from_events(&cfg, &b.finish());
        let path = dir.path().join("w.parquet");
        train::write_windows(
            &windows,
            crate::window::WindowSpec::from_config(&cfg).windows_schema(),
            &path,
        )
        .unwrap();
        let mut t = TrainConfig {
            epochs: 2,
            context: 16,
            stride: 4,
            tbptt: 8,
            burn_in: 2,
            val_windows: Some(4),
            ..TrainConfig::default()
        };
        let data = train::prepare(&[path], &train::prep_spec(&cfg, &t)).unwrap();
        let registry = Registry::new(dir.path().join("models"));
        let champion = starting_model(&cfg).unwrap();
        registry.set_champion(&champion.1.version).unwrap();
        // libtorch refuses a NaN learning rate; an absurd one blows the
        // weights up to inf/NaN within a step or two.
        t.lr = 1e30;
        t.clip_norm = 0.0;
        let (d, promoted) = challenge(&cfg, &t, &data, &champion, &registry).unwrap();
        assert!(!d.promoted, "{d:?}");
        assert!(promoted.is_none());
        assert_eq!(
            registry.champion_version().as_deref(),
            Some(champion.1.version.as_str())
        );
        // A sane learning rate on the same data is promoted over the untrained champion.
        t.lr = 1e-2;
        t.clip_norm = 1.0;
        let (d, _) = challenge(&cfg, &t, &data, &champion, &registry).unwrap();
        assert!(d.promoted, "{d:?}");
        assert_eq!(
            registry.champion_version().as_deref(),
            Some(d.version.as_str())
        );
    }
}
