//! The compute core shared by the streaming job and the backfill:
//! decode -> window -> model, on one thread that owns all their state.
//!
//! It never touches the network: it takes batches of raw messages (or of
//! already-typed events, for Parquet input) and returns [`Output`]s for a
//! sink, each with the [`Ticket`] of input positions to release once the sink
//! has them acknowledged. Because streaming and backfill call the same
//! `Core`, the same events give the same windows and the same forecasts.
//!
//! Durable state (streaming with `state.enabled`): `checkpoint` gathers
//! what changed since the last one (window and model state of the changed
//! keys, tombstones of ended ones, partition clocks) with the input position
//! it corresponds to; `restore` and `revoke` bring a partition's keys in and
//! out on assignment. Between two checkpoints the core is deterministic in
//! its input, so replaying from a checkpoint recomputes the same forecasts.
//!
//! Invariant (delivery): for each input batch, pins are taken *before* the
//! batch's messages are marked consumed, under one lock of the tracker, so
//! the commit point can never pass an event whose window is still open or
//! whose forecast is unacknowledged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;

use crate::choose::Chooser;
use crate::config::PipelineConfig;
use crate::decode::{DeadLetter, Decoder, RawMessage};
use crate::error::Result;
use crate::model::registry::{Decision, Registry};
use crate::model::{ForecastStage, ModelSpec, Network, SwapReport};
use crate::offsets::{OffsetTracker, Position, Ticket};
use crate::schema::forecasts;
use crate::score::{Calibration, Scorer};
use crate::sink::Output;
use crate::state::{
    self, Checkpoint, LiveKeyState, PartitionState, RestoredPartition, StateRecord,
};
use crate::window::{Closed, WindowSpec, WindowStage};

/// Running totals, for the summary a job prints at the end.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub messages: u64,
    pub events: u64,
    pub dead_letters: u64,
    pub windows: u64,
    pub forecasts_from_model: u64,
    pub forecasts_from_baseline: u64,
}

pub struct Core {
    decoder: Decoder,
    window: WindowStage,
    model: ForecastStage,
    tracker: Arc<Mutex<OffsetTracker>>,
    totals: Totals,
    /// Next offset to read per partition, since the last checkpoint.
    frontier: BTreeMap<i32, i64>,
    checkpoints: u64,
    /// Live scoring (`score.enabled`); shared with the HTTP API.
    scorer: Option<Arc<Mutex<Scorer>>>,
    /// Per-key model choice (`choice.enabled`).
    chooser: Option<Chooser>,
    /// A challenger running in shadow (`retrain.shadow_windows`).
    shadow: Option<Shadow>,
    models_dir: std::path::PathBuf,
}

/// A challenger in shadow: its own forecast stage, started from the
/// champion's key states (replayed through the challenger), forecasting
/// every window and publishing nothing; both models scored on the same
/// windows until `needed` forecasts of each were scored with a scale.
struct Shadow {
    stage: ForecastStage,
    /// A copy of the challenger, to swap in if it wins.
    promote: (Network, ModelSpec),
    champion: Scorer,
    challenger: Scorer,
    decision: Decision,
    needed: u64,
}

impl Core {
    pub fn new(cfg: &PipelineConfig, tracker: Arc<Mutex<OffsetTracker>>) -> Result<Self> {
        Ok(Core {
            decoder: Decoder::for_pipeline(cfg)?,
            window: WindowStage::new(WindowSpec::from_config(cfg)),
            model: ForecastStage::from_config(cfg)?,
            tracker,
            totals: Totals::default(),
            frontier: BTreeMap::new(),
            checkpoints: 0,
            shadow: None,
            models_dir: cfg.models_dir(),
            chooser: cfg.choice.enabled.then(|| {
                Chooser::new(
                    crate::choose::ChoiceSpec::from_config(&cfg.choice),
                    cfg.slide_ms(),
                    cfg.model.horizon as usize,
                    cfg.model.season_windows as usize,
                )
            }),
            scorer: cfg.score.enabled.then(|| {
                let calibration = cfg.score.calibrate.then_some(Calibration {
                    window: cfg.score.calibration_window,
                });
                let scorer = Scorer::for_pipeline(cfg, &cfg.model.quantiles, calibration);
                let scorer = if cfg.sink.accuracy_topic.is_some() {
                    scorer.emit_records()
                } else {
                    scorer
                };
                Arc::new(Mutex::new(scorer))
            }),
        })
    }

    /// The live scorer, when `score.enabled` (the API reads it).
    pub fn scorer(&self) -> Option<Arc<Mutex<Scorer>>> {
        self.scorer.clone()
    }

    /// Uses another core's live scorer instead of its own (compute shards
    /// share one, see `shards`).
    pub fn share_scorer(&mut self, scorer: Option<Arc<Mutex<Scorer>>>) {
        self.scorer = scorer;
    }

    /// Starts remembering what changes, for checkpoints (durable state).
    pub fn enable_state_tracking(&mut self) {
        self.window.enable_state_tracking();
        self.model.enable_state_tracking();
    }

    /// What changed since the last checkpoint, and the input position it
    /// corresponds to. `epochs` are the partitions' assignment generations.
    pub fn checkpoint(&mut self, epochs: Vec<(i32, u64)>) -> Result<Checkpoint> {
        let w = self.window.take_changes();
        let models = self.model.take_changes()?;
        let mut records = Vec::with_capacity(2 * w.ended.len() + w.keys.len() + models.len());
        let live = self.scorer.is_some() || self.chooser.is_some();
        let hybrid = self.model.hybrid();
        for (p, key) in &w.ended {
            let live_key = live.then(|| state::live_key(key));
            let hybrid_key = hybrid.is_some().then(|| state::hybrid_key(key));
            for k in [state::window_key(key), state::model_key(key)]
                .into_iter()
                .chain(live_key)
                .chain(hybrid_key)
            {
                records.push(StateRecord {
                    partition: *p,
                    key: k,
                    value: None,
                });
            }
        }
        for (p, key, st) in &w.keys {
            records.push(StateRecord {
                partition: *p,
                key: state::window_key(key),
                value: Some(state::encode(st)?),
            });
        }
        // Scores, calibration and choice change exactly when the model
        // state does (a window of the key closed): they go with it.
        let scorer = self
            .scorer
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()));
        for (key, st) in models {
            if let Some(p) = self.window.partition_of(&key) {
                records.push(StateRecord {
                    partition: p,
                    key: state::model_key(&key),
                    value: Some(st),
                });
                // The hybrid's smoothing state moves with the model's.
                if let Some(h) = hybrid.and_then(|h| h.export(&key)) {
                    records.push(StateRecord {
                        partition: p,
                        key: state::hybrid_key(&key),
                        value: Some(state::encode(&h)?),
                    });
                }
                if live {
                    let choice = self.chooser.as_ref().and_then(|c| c.export(&key));
                    // The scorer encodes its deques in place (no copy of
                    // the key's state first).
                    let value = match scorer.as_ref() {
                        Some(s) => s.encode_live(&key, choice.as_ref())?,
                        None => state::encode_live(&LiveKeyState {
                            score: None,
                            choice,
                        })?,
                    };
                    records.push(StateRecord {
                        partition: p,
                        key: state::live_key(&key),
                        value: Some(value),
                    });
                }
            }
        }
        drop(scorer);
        for (p, max_ts) in w.clocks {
            records.push(StateRecord {
                partition: p,
                key: state::PARTITION_KEY.to_vec(),
                value: Some(state::encode(&PartitionState { max_ts })?),
            });
        }
        self.checkpoints += 1;
        Ok(Checkpoint {
            id: self.checkpoints,
            records,
            offsets: std::mem::take(&mut self.frontier).into_iter().collect(),
            epochs,
            done: None,
        })
    }

    /// Brings a newly assigned partition's state in.
    pub fn restore(&mut self, r: &RestoredPartition, now_ms: i64) -> Result<usize> {
        let evicted = self.window.restore_partition(r, now_ms);
        self.end_keys(&evicted);
        let models: Vec<_> = r
            .models
            .iter()
            .filter(|(k, _)| self.window.partition_of(k) == Some(r.partition))
            .cloned()
            .collect();
        self.frontier.remove(&r.partition);
        let restored = self.model.restore(&models)?;
        let mine = |k: &str| self.window.partition_of(k) == Some(r.partition);
        if let Some(h) = self.model.hybrid_mut() {
            for (k, st) in r.hybrid.iter().filter(|(k, _)| mine(k)) {
                h.import(k.clone(), st);
            }
        }
        if let Some(s) = &self.scorer {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            for (k, l) in r.live.iter().filter(|(k, _)| mine(k)) {
                if let Some(st) = &l.score {
                    s.import(k.clone(), st);
                }
            }
        }
        if let Some(c) = self.chooser.as_mut() {
            for (k, l) in r.live.iter().filter(|(k, _)| mine(k)) {
                if let Some(st) = &l.choice {
                    c.import(k.clone(), st);
                }
            }
        }
        Ok(restored)
    }

    /// Lets a revoked partition go: its keys leave memory (their state is on
    /// the changelog), its pins are released.
    pub fn revoke(&mut self, partition: i32) {
        let (keys, unpin) = self.window.drop_partition(partition);
        self.end_keys(&keys);
        let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        unpin.iter().for_each(|p| t.unpin(*p));
        t.forget(partition);
        self.frontier.remove(&partition);
    }

    /// Frees ended keys' state in every stage that keeps any.
    fn end_keys(&mut self, keys: &[Arc<str>]) {
        self.model.end_keys(keys);
        if let Some(c) = self.chooser.as_mut() {
            c.end_keys(keys);
        }
        if let Some(sh) = self.shadow.as_mut() {
            sh.stage.end_keys(keys);
            sh.champion.end_keys(keys);
            sh.challenger.end_keys(keys);
        }
        if let Some(s) = &self.scorer {
            s.lock().unwrap_or_else(|e| e.into_inner()).end_keys(keys);
        }
    }

    pub fn model(&self) -> &ForecastStage {
        &self.model
    }

    pub fn window(&self) -> &WindowStage {
        &self.window
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn tracker(&self) -> Arc<Mutex<OffsetTracker>> {
        self.tracker.clone()
    }

    /// Tells the window stage which partitions this consumer owns.
    pub fn assign(&mut self, partitions: &[i32], now_ms: i64) {
        self.window.assign(partitions, now_ms);
    }

    /// Hot-swaps the model (see `ForecastStage::swap`).
    pub fn swap(&mut self, net: Network, spec: ModelSpec) -> Result<SwapReport> {
        self.model.swap(net, spec)
    }

    /// Starts running a challenger in shadow (replacing one already in
    /// shadow): a second forecast stage with every live key's state
    /// replayed through the challenger. `decision` is its recorded one.
    pub fn start_shadow(
        &mut self,
        net: Network,
        spec: ModelSpec,
        decision: Decision,
        cfg: &PipelineConfig,
    ) -> Result<SwapReport> {
        let t0 = std::time::Instant::now();
        let fits = spec.features == self.model.spec().features
            && spec.horizon == self.model.spec().horizon
            && spec.season == self.model.spec().season;
        if !fits {
            return Err(crate::Error::Model(format!(
                "cannot run {} in shadow: its features/horizon/season differ from the running model's",
                spec.version
            )));
        }
        if let Some(old) = self.shadow.take() {
            self.end_duel(old, "superseded by a newer challenger", false)?;
        }
        let copy = net.copy_for(&spec)?;
        let keys: Vec<Arc<str>> = self.model.store().keys().cloned().collect();
        let states = self.model.store().export(&keys, self.model.version())?;
        let mut stage = ForecastStage::new(
            net,
            spec.clone(),
            cfg.decode.value_fields.len(),
            cfg.model.warmup_windows,
        );
        let restored = stage.restore(&states)?;
        // The hybrid's smoothing state goes with the network state: the
        // challenger sees the same per-key inputs the champion does.
        if let Some(h) = self.model.hybrid() {
            stage.set_hybrid(h.clone());
        }
        // Point forecasts only: the duel compares MASE.
        let scorer = || Scorer::for_pipeline(cfg, &[], None);
        tracing::info!(version = %spec.version, keys = restored, needed = cfg.retrain.shadow_windows, "challenger running in shadow");
        self.shadow = Some(Shadow {
            stage,
            promote: (copy, spec),
            champion: scorer(),
            challenger: scorer(),
            decision,
            needed: cfg.retrain.shadow_windows,
        });
        Ok(SwapReport {
            keys: restored,
            replayed_windows: 0,
            pause_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// The version running in shadow, if any.
    pub fn shadow_version(&self) -> Option<&str> {
        self.shadow.as_ref().map(|s| s.stage.version())
    }

    /// Scores the shadow and the champion on the same windows; once enough
    /// forecasts are scored, decides the duel.
    fn shadow_step(&mut self, windows: &RecordBatch, champion: &RecordBatch) -> Result<()> {
        let Some(sh) = self.shadow.as_mut() else {
            return Ok(());
        };
        let theirs = sh.stage.forecast(windows)?;
        sh.challenger.observe(windows, theirs);
        sh.champion.observe(windows, champion.clone());
        let (chall, champ) = (pooled_mase(&sh.challenger), pooled_mase(&sh.champion));
        if chall.1 < sh.needed || champ.1 < sh.needed {
            return Ok(());
        }
        let Some(sh) = self.shadow.take() else {
            return Ok(());
        };
        let promoted = chall.0 < champ.0;
        let why = if promoted {
            format!(
                "live MASE {:.4} beats the champion's {:.4}",
                chall.0, champ.0
            )
        } else {
            format!(
                "live MASE {:.4} does not beat the champion's {:.4}",
                chall.0, champ.0
            )
        };
        self.end_duel(sh, &why, promoted)
    }

    /// Records a duel's outcome; swaps the challenger in if it won.
    fn end_duel(&mut self, sh: Shadow, why: &str, promoted: bool) -> Result<()> {
        let (chall, champ) = (pooled_mase(&sh.challenger), pooled_mase(&sh.champion));
        let mut d = sh.decision;
        d.promoted = promoted;
        d.champion_version = self.model.version().to_string();
        d.reason = format!(
            "shadow run over {} scored forecasts: {why}",
            chall.1.min(champ.1)
        );
        d.live = Some(crate::model::registry::LiveDuel {
            scored: chall.1.min(champ.1),
            challenger_mase: chall.0,
            champion_mase: champ.0,
            running: false,
        });
        tracing::info!(version = %d.version, promoted, reason = %d.reason, "shadow duel decided");
        Registry::new(self.models_dir.clone()).update_decision(&d)?;
        if promoted {
            let (net, spec) = sh.promote;
            let r = self.model.swap(net, spec)?;
            tracing::info!(
                keys = r.keys,
                pause_ms = r.pause_ms,
                "challenger promoted from shadow"
            );
        }
        Ok(())
    }

    /// Tells the window stage which partitions still have unread messages.
    pub fn set_backlogged(&mut self, partitions: &[i32]) {
        self.window.set_backlogged(partitions);
    }

    /// Decodes, windows and forecasts one batch of raw messages.
    pub fn on_messages(&mut self, messages: &[RawMessage], now_ms: i64) -> Result<Vec<Output>> {
        let decoded = self.decoder.decode(messages);
        self.totals.messages += messages.len() as u64;
        let closed = self.window.process(&decoded.events, now_ms);
        let consumed: Vec<Position> = messages.iter().map(|m| (m.partition, m.offset)).collect();
        for &(p, o) in &consumed {
            let next = self.frontier.entry(p).or_insert(o + 1);
            *next = (*next).max(o + 1);
        }
        self.finish(
            decoded.events.num_rows(),
            decoded.dead_letters,
            closed,
            &consumed,
        )
    }

    /// Windows and forecasts an already-typed events batch (Parquet input).
    pub fn on_events(
        &mut self,
        events: &RecordBatch,
        rejected: Vec<DeadLetter>,
        now_ms: i64,
    ) -> Result<Vec<Output>> {
        self.totals.messages += (events.num_rows() + rejected.len()) as u64;
        let closed = self.window.process(events, now_ms);
        self.finish(events.num_rows(), rejected, closed, &[])
    }

    /// Lets the watermark move on wall clock alone (idle partitions).
    pub fn tick(&mut self, now_ms: i64) -> Result<Vec<Output>> {
        let closed = self.window.tick(now_ms);
        self.finish(0, Vec::new(), closed, &[])
    }

    fn finish(
        &mut self,
        events: usize,
        mut dead: Vec<DeadLetter>,
        mut closed: Closed,
        consumed: &[Position],
    ) -> Result<Vec<Output>> {
        self.totals.events += events as u64;
        dead.append(&mut closed.late);
        self.totals.dead_letters += dead.len() as u64;
        let dead_ticket = Ticket {
            pins: dead.iter().map(|d| (d.partition, d.offset)).collect(),
        };
        {
            // One lock: pins before "consumed", then the releases.
            let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            closed
                .pin
                .iter()
                .chain(&dead_ticket.pins)
                .for_each(|p| t.pin(*p));
            consumed.iter().for_each(|p| t.consumed(*p));
            closed.unpin.iter().for_each(|p| t.unpin(*p));
        }
        let mut out = Vec::new();
        if !dead.is_empty() {
            out.push(Output::DeadLetters {
                letters: dead,
                ticket: dead_ticket,
            });
        }
        if let Some(windows) = closed.windows {
            let closed_at = std::time::Instant::now();
            // Forecast before ending keys: a key whose series ends in this
            // batch still gets forecasts for the windows it closed.
            let mut forecasts = self.model.forecast(&windows)?;
            self.shadow_step(&windows, &forecasts)?;
            if let Some(c) = self.chooser.as_mut() {
                forecasts = c.choose(&windows, forecasts);
            }
            let mut accuracy = Vec::new();
            if let Some(s) = &self.scorer {
                let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                forecasts = s.observe(&windows, forecasts);
                accuracy = s.take_records();
            }
            self.totals.windows += windows.num_rows() as u64;
            let from_model = count_source(&forecasts, "model");
            self.totals.forecasts_from_model += from_model;
            self.totals.forecasts_from_baseline += forecasts.num_rows() as u64 - from_model;
            out.push(Output::Forecasts {
                forecasts,
                windows,
                ticket: Ticket {
                    pins: closed.ticket,
                },
                closed_at,
            });
            if !accuracy.is_empty() {
                out.push(Output::Accuracy(accuracy));
            }
        } else if !closed.ticket.is_empty() {
            // Cannot happen (a ticket comes from emitted windows), but never
            // leak a pin: release it now.
            let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            closed.ticket.iter().for_each(|p| t.unpin(*p));
        }
        self.end_keys(&closed.ended_keys);
        Ok(out)
    }
}

/// Pooled live MASE of a duel scorer (all steps and sources), and how
/// many forecasts it is over.
fn pooled_mase(s: &Scorer) -> (f64, u64) {
    let rows = s.summary();
    let n: u64 = rows
        .iter()
        .filter(|r| r.mase.is_some())
        .map(|r| r.scored_scaled)
        .sum();
    let sum: f64 = rows
        .iter()
        .filter_map(|r| r.mase.map(|m| m * r.scored_scaled as f64))
        .sum();
    (if n > 0 { sum / n as f64 } else { f64::NAN }, n)
}

fn count_source(batch: &RecordBatch, source: &str) -> u64 {
    use arrow::array::AsArray;
    let col = batch.column(forecasts::SOURCE).as_string::<i32>();
    col.iter().filter(|s| *s == Some(source)).count() as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema::forecasts as fc;
    use arrow::array::{AsArray, FixedSizeListArray};
    use arrow::datatypes::{Float64Type, TimestampMillisecondType};

    /// Hourly events of `keys` keys over `partitions` partitions (key k on
    /// k % partitions), as the consumer would hand them over, in time order.
    pub(crate) fn messages(keys: usize, hours: i64, partitions: usize) -> Vec<RawMessage> {
        let t0 = 1_700_000_000_000i64 - 1_700_000_000_000 % 3_600_000;
        let mut next = vec![0i64; partitions];
        let mut out = Vec::new();
        for h in 0..hours {
            for k in 0..keys {
                let p = (k % partitions) as i32;
                let v = 100.0 + 10.0 * ((h as f64 + k as f64) * 0.7).sin() + k as f64;
                let payload = format!(
                    r#"{{"key":"k{k}","ts":{},"value":{v}}}"#,
                    t0 + h * 3_600_000 + 60_000
                );
                out.push(RawMessage {
                    payload: Some(payload.into_bytes()),
                    partition: p,
                    offset: next[p as usize],
                    timestamp_ms: None,
                });
                next[p as usize] += 1;
            }
        }
        out
    }

    /// (key, window end, forecast, source).
    pub(crate) type Forecast = (String, i64, Vec<f64>, String);

    /// The forecasts of some outputs, sorted by (window end, key).
    pub(crate) fn forecasts_of(outs: &[Output]) -> Vec<Forecast> {
        let mut v = Vec::new();
        for o in outs {
            if let Output::Forecasts { forecasts, .. } = o {
                let keys = forecasts.column(fc::KEY).as_string::<i32>();
                let ends = forecasts
                    .column(fc::WINDOW_END)
                    .as_primitive::<TimestampMillisecondType>();
                let src = forecasts.column(fc::SOURCE).as_string::<i32>();
                let vals = forecasts
                    .column(fc::FORECAST)
                    .as_any()
                    .downcast_ref::<FixedSizeListArray>()
                    .unwrap();
                for i in 0..forecasts.num_rows() {
                    let f = vals.value(i);
                    let f = f.as_primitive::<Float64Type>().values().to_vec();
                    v.push((
                        keys.value(i).to_string(),
                        ends.value(i),
                        f,
                        src.value(i).to_string(),
                    ));
                }
            }
        }
        v.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        v
    }

    /// Equal forecasts: same keys, windows and sources, values within 1e-6
    /// (relative; float rounding of the network's products).
    pub(crate) fn assert_close(a: &[Forecast], b: &[Forecast], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!((&x.0, x.1, &x.3), (&y.0, y.1, &y.3), "{what}");
            for (u, v) in x.2.iter().zip(&y.2) {
                assert!(
                    (u - v).abs() <= 1e-6 * u.abs().max(1.0),
                    "{what} {} {}: {u} vs {v}",
                    x.0,
                    x.1
                );
            }
        }
    }

    /// Every quantile value of the forecasts, in (window end, key) order.
    fn quantiles_of(outs: &[Output]) -> Vec<f64> {
        let mut rows: Vec<(i64, String, Vec<f64>)> = Vec::new();
        for o in outs {
            if let Output::Forecasts { forecasts, .. } = o {
                let Ok(ix) = forecasts.schema().index_of(fc::QUANTILES_NAME) else {
                    continue;
                };
                let keys = forecasts.column(fc::KEY).as_string::<i32>();
                let ends = forecasts
                    .column(fc::WINDOW_END)
                    .as_primitive::<TimestampMillisecondType>();
                let q = forecasts.column(ix).as_fixed_size_list();
                for i in 0..forecasts.num_rows() {
                    let v = q.value(i);
                    rows.push((
                        ends.value(i),
                        keys.value(i).to_string(),
                        v.as_primitive::<Float64Type>().values().to_vec(),
                    ));
                }
            }
        }
        rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        rows.into_iter().flat_map(|r| r.2).collect()
    }

    fn core(cfg: &PipelineConfig) -> Core {
        let mut c = Core::new(cfg, Arc::new(Mutex::new(OffsetTracker::new()))).unwrap();
        c.enable_state_tracking();
        c.assign(&[0, 1], 0);
        c
    }

    fn changelog(cp: &Checkpoint, log: &mut Vec<StateRecord>) {
        log.extend(cp.records.iter().cloned());
    }

    fn restored(log: &[StateRecord], p: i32) -> RestoredPartition {
        RestoredPartition::from_records(
            p,
            log.iter()
                .filter(|r| r.partition == p)
                .map(|r| (r.key.as_slice(), r.value.as_deref())),
        )
        .unwrap()
    }

    /// The durable-state promise at the core: a core restored from the
    /// changelog at a checkpoint, fed the input from the checkpoint's
    /// offsets, publishes the same forecasts (model ones included, no
    /// warm-up again) as the core that never stopped.
    #[test]
    fn a_core_restored_at_a_checkpoint_forecasts_like_the_original() {
        // The third run adds calibrated quantiles and per-key choice, whose
        // per-key state is checkpointed with the model's.
        let live = "quantiles = [0.1, 0.5, 0.9]\n[choice]\nenabled = true\nmin_scored = 2\nhalf_life = 2.0\n\
                    [score]\ncalibration_window = 10";
        // The fourth adds the ES hybrid, whose smoothing state is too.
        let hybrid = "[model.hybrid]\nperiods = [4]\nalpha = 0.2";
        for (kind, extra) in [("gru", ""), ("lstm", ""), ("lstm", live), ("gru", hybrid)] {
            let cfg = crate::testkit::pipeline(&format!(
                "[decode]\ntime_format = \"epoch_ms\"\n[window]\nsize = \"1h\"\nallowed_lateness = \"0s\"\n\
                 [model]\ncell = \"{kind}\"\nhidden = 8\nwarmup_windows = 3\nseason_windows = 4\n{extra}"
            ));
            let with_live = extra == live;
            let msgs = messages(6, 40, 2);
            let cut = msgs.len() / 2 + 3; // mid-window
            let mut orig = core(&cfg);
            let mut log = Vec::new();
            let mut offsets = BTreeMap::new();
            for chunk in msgs[..cut].chunks(7) {
                orig.on_messages(chunk, 0).unwrap();
                let cp = orig.checkpoint(vec![(0, 1), (1, 1)]).unwrap();
                changelog(&cp, &mut log);
                offsets.extend(cp.offsets);
            }
            let mut back = core(&cfg);
            for p in [0, 1] {
                back.restore(&restored(&log, p), 0).unwrap();
            }
            let rest: Vec<RawMessage> = msgs[cut..].to_vec();
            assert!(
                rest.iter().all(|m| m.offset >= offsets[&m.partition]),
                "offsets are the next to read"
            );
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for chunk in rest.chunks(5) {
                a.extend(orig.on_messages(chunk, 0).unwrap());
                b.extend(back.on_messages(chunk, 0).unwrap());
            }
            let (qa, qb) = (quantiles_of(&a), quantiles_of(&b));
            let (a, b) = (forecasts_of(&a), forecasts_of(&b));
            assert!(a.len() > 50, "{kind}: enough forecasts to compare");
            if with_live {
                // Per-key choice moved some keys to a baseline, and back
                // after the restore they are served alike (checked below).
                assert!(
                    a.iter().any(|f| f.3 != "model"),
                    "{kind}: some key chose a baseline"
                );
                assert_eq!(qa.len(), qb.len());
                for (x, y) in qa.iter().zip(&qb) {
                    assert!(
                        (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                        "calibrated quantiles {x} vs {y}"
                    );
                }
                assert!(!qa.is_empty());
            } else {
                assert!(
                    a.iter().all(|f| f.3 == "model"),
                    "{kind}: warm keys stay warm"
                );
            }
            assert_close(&a, &b, kind);
        }
    }

    /// Model records keep what a hot swap replays: a core restored from
    /// the changelog and then swapped to another network forecasts like
    /// the original swapped to the same network. Cut while the keys' rings
    /// are partly filled (20 windows of 48) and after they wrapped (60).
    #[test]
    fn a_hot_swap_after_a_restore_replays_like_the_original() {
        let cfg = crate::testkit::pipeline(
            "[decode]\ntime_format = \"epoch_ms\"\n[window]\nsize = \"1h\"\nallowed_lateness = \"0s\"\n\
             [model]\ncell = \"lstm\"\nhidden = 8\nwarmup_windows = 3\nseason_windows = 4",
        );
        for hours in [40, 120] {
            let msgs = messages(6, hours, 2);
            let cut = msgs.len() / 2 + 3;
            let mut orig = core(&cfg);
            let mut log = Vec::new();
            for chunk in msgs[..cut].chunks(7) {
                orig.on_messages(chunk, 0).unwrap();
                changelog(&orig.checkpoint(vec![(0, 1), (1, 1)]).unwrap(), &mut log);
            }
            let mut back = core(&cfg);
            for p in [0, 1] {
                back.restore(&restored(&log, p), 0).unwrap();
            }
            let (n1, s1, _) = challenger(&cfg, "swapped", 0.7);
            let (n2, s2, _) = challenger(&cfg, "swapped", 0.7);
            let ra = orig.swap(n1, s1).unwrap();
            let rb = back.swap(n2, s2).unwrap();
            assert_eq!(ra.keys, rb.keys);
            assert_eq!(ra.replayed_windows, rb.replayed_windows, "{hours}h");
            assert!(ra.replayed_windows > 0);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for chunk in msgs[cut..].chunks(5) {
                a.extend(orig.on_messages(chunk, 0).unwrap());
                b.extend(back.on_messages(chunk, 0).unwrap());
            }
            let (a, b) = (forecasts_of(&a), forecasts_of(&b));
            assert!(a.len() > 30, "{hours}h: enough forecasts");
            assert!(a.iter().any(|f| f.3 == "model"));
            assert_close(&a, &b, &format!("{hours}h"));
        }
    }

    #[test]
    fn a_revoked_partition_leaves_memory_and_checkpoints_write_only_changes() {
        let cfg = crate::testkit::pipeline("[decode]\ntime_format = \"epoch_ms\"\n[model]\nhidden = 4\n[window]\nsize = \"1h\"\nallowed_lateness = \"0s\"");
        let mut c = core(&cfg);
        let msgs = messages(4, 3, 2);
        c.on_messages(&msgs, 0).unwrap();
        let first = c.checkpoint(vec![(0, 1), (1, 1)]).unwrap();
        assert!(
            first.records.iter().any(|r| r.key.starts_with(b"m/")),
            "closed windows write model state"
        );
        assert_eq!(first.offsets, vec![(0, 6), (1, 6)]);
        let again = c.checkpoint(vec![(0, 1), (1, 1)]).unwrap();
        assert!(
            again.records.is_empty() && again.offsets.is_empty(),
            "nothing changed"
        );
        c.revoke(1);
        assert_eq!(c.window().live_keys(), 2);
        assert_eq!(c.model().live_keys(), 2);
    }

    /// A network like the pipeline's, its weights scaled by `factor`
    /// (0: a residual head that adds nothing to seasonal naive; 100: wild
    /// corrections), recorded in the registry as `version`.
    fn challenger(
        cfg: &PipelineConfig,
        version: &str,
        factor: f64,
    ) -> (Network, ModelSpec, Decision) {
        let spec = ModelSpec {
            version: version.to_string(),
            ..ModelSpec::untrained(cfg)
        };
        let net = Network::for_spec(&spec, tch::Device::Cpu, 7);
        tch::no_grad(|| {
            for (_, mut t) in net.vs.variables() {
                let scaled = &t * factor;
                t.copy_(&scaled);
            }
        });
        let d = Decision {
            version: version.to_string(),
            promoted: false,
            challenger_val_loss: 0.1,
            champion_val_loss: 0.2,
            champion_version: String::new(),
            reason: "in shadow".into(),
            live: None,
        };
        Registry::new(cfg.models_dir())
            .record(&net, &spec, &serde_json::json!({}), &d)
            .unwrap();
        (net, spec, d)
    }

    /// A challenger in shadow is scored beside the champion on the same
    /// windows and replaces it only if its live MASE is lower: a wild one
    /// is rejected (the champion keeps serving), a sane one against a wild
    /// champion is promoted; both outcomes are recorded with their scores.
    #[test]
    fn a_shadow_challenger_replaces_the_champion_only_if_it_wins_live() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::testkit::pipeline(&format!(
            "[decode]\ntime_format = \"epoch_ms\"\n[window]\nsize = \"1h\"\nallowed_lateness = \"0s\"\n\
             [model]\nhidden = 8\nhorizon = 2\nseason_windows = 4\nwarmup_windows = 2\n\
             [retrain]\nshadow_windows = 40\nmodels_dir = {:?}\n",
            dir.path().join("models")
        ));
        let registry = Registry::new(cfg.models_dir());
        let msgs = messages(4, 60, 2);
        let mut c = core(&cfg);
        let champion = c.model().version().to_string();
        c.on_messages(&msgs[..40], 0).unwrap();
        let (net, spec, d) = challenger(&cfg, "wild", 100.0);
        c.start_shadow(net, spec, d, &cfg).unwrap();
        assert_eq!(c.shadow_version(), Some("wild"));
        // 4 keys x 2 steps per window: 40 scored forecasts take ~6 hours.
        let mut published = Vec::new();
        for chunk in msgs[40..120].chunks(4) {
            published.extend(forecasts_of(&c.on_messages(chunk, 0).unwrap()));
        }
        assert_eq!(c.shadow_version(), None, "the duel is decided");
        assert_eq!(c.model().version(), champion, "the champion stays");
        assert!(
            published.iter().all(|f| f.2.iter().all(|x| x.abs() < 1e3)),
            "nothing the wild challenger forecast was published"
        );
        let wild = registry.list().unwrap();
        let wild = wild.iter().find(|v| v.version == "wild").unwrap();
        let d = wild.status.as_ref().unwrap();
        let live = d.live.as_ref().unwrap();
        assert!(!d.promoted && !live.running, "{d:?}");
        assert!(live.scored >= 40, "{live:?}");
        assert!(live.challenger_mase > live.champion_mase, "{live:?}");

        // Now a wild champion and a sane challenger (zero weights: exactly
        // seasonal naive once warm).
        let (net, spec, _) = challenger(&cfg, "wild-champion", 100.0);
        c.swap(net, spec).unwrap();
        let (net, spec, d) = challenger(&cfg, "sane", 0.0);
        c.start_shadow(net, spec, d, &cfg).unwrap();
        for chunk in msgs[120..].chunks(4) {
            c.on_messages(chunk, 0).unwrap();
        }
        assert_eq!(c.shadow_version(), None);
        assert_eq!(c.model().version(), "sane", "the challenger won live");
        assert_eq!(registry.champion_version().as_deref(), Some("sane"));
        let list = registry.list().unwrap();
        let sane = list.iter().find(|v| v.version == "sane").unwrap();
        let live = sane.status.as_ref().unwrap().live.as_ref().unwrap();
        assert!(sane.status.as_ref().unwrap().promoted);
        assert!(live.challenger_mase < live.champion_mase, "{live:?}");
    }
}
