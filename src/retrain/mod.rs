//! Retraining: the champion/challenger rule, and the background retrainer
//! (`background`).
//!
//! Rule: a challenger is promoted only if training did not diverge and its
//! validation loss is finite and lower than the champion's *on the same
//! holdout* (the champion is scored on the challenger's prepared data).
//! Otherwise it is kept in the registry (`model::registry`) with its
//! metrics and the champion stays.

mod background;

pub use background::{run_retrainer, RetrainSignals};

/// A model on its way from the retrainer to the compute thread: promoted
/// (swapped in at once) or, with its recorded decision, to run in shadow.
pub struct Promotion {
    pub net: Network,
    pub spec: ModelSpec,
    pub shadow: Option<Decision>,
}

use crate::config::{PipelineConfig, TrainConfig};
use crate::error::Result;
use crate::model::registry::{Decision, Registry};
use crate::model::{ModelSpec, Network};
use crate::train::{self, Prepared, Trained};

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
        live: None,
    }
}

/// Trains a challenger on `data`, scores the champion on the same holdout,
/// records both and returns the decision (and the challenger if promoted).
/// With `retrain.shadow_windows`, a challenger that wins offline is
/// recorded as *in shadow* (not champion yet) and returned all the same:
/// the live duel decides (see `pipeline::core`).
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
    let mut decision = decide(&trained, champion_val, &champion.1.version);
    if decision.promoted && cfg.retrain.shadow_windows > 0 {
        decision.promoted = false;
        decision.reason = format!(
            "in shadow ({}); replaces the champion if its live MASE beats the champion's over {} scored forecasts",
            decision.reason, cfg.retrain.shadow_windows
        );
        decision.live = Some(crate::model::registry::LiveDuel {
            scored: 0,
            challenger_mase: f64::NAN,
            champion_mase: f64::NAN,
            running: true,
        });
        registry.record(&trained.net, &trained.spec, &trained.report, &decision)?;
        tracing::info!(version = %decision.version, reason = %decision.reason, "challenger evaluated");
        return Ok((decision, Some(trained)));
    }
    registry.record(&trained.net, &trained.spec, &trained.report, &decision)?;
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

/// Trains a challenger and records it without promoting it (`streamcast
/// train` without `--promote`): the decision says how it compares with the
/// champion on the same holdout.
pub fn train_unpromoted(
    cfg: &PipelineConfig,
    t: &TrainConfig,
    data: &Prepared,
    champion: &(Network, ModelSpec),
    registry: &Registry,
) -> Result<Decision> {
    let trained = train::train_prepared(cfg, t, data, None)?;
    let champion_val = train::validation_loss(&champion.0, data, t);
    let mut d = decide(&trained, champion_val, &champion.1.version);
    d.promoted = false;
    d.reason = format!("not promoted (no --promote): {}", d.reason);
    registry.record(&trained.net, &trained.spec, &trained.report, &d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::TrainReport;

    fn trained(val: f64, diverged: bool) -> Trained {
        let cfg = crate::testkit::pipeline("");
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
                steps: 1,
                clipped_steps: 0,
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
        reg.record(&good.net, &good.spec, &good.report, &d).unwrap();
        let bad = trained(f64::NAN, false);
        let d2 = decide(&bad, 0.5, &good.spec.version);
        reg.record(&bad.net, &bad.spec, &bad.report, &d2).unwrap();
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
        let cfg = crate::testkit::pipeline(
            "[model]\nhidden = 8\nhorizon = 2\nseason_windows = 4\nwarmup_windows = 4\nlags = 4",
        );
        // A small regular series per key through the real window stage.
        let mut b = crate::schema::EventsBuilder::new(
            crate::schema::events_schema(&cfg.decode.value_fields),
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
        let spec = crate::window::WindowSpec::from_config(&cfg);
        let windows = crate::window::bounded::closed_windows(
            spec,
            &b.finish(),
            crate::window::bounded::End::AtNewestEvent,
        );
        let path = dir.path().join("w.parquet");
        crate::archive::write_windows_file(
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
        let champion = crate::model::registry::starting_model(&cfg).unwrap();
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
