//! Compute shards: the streaming job's compute split by input partition
//! over `compute.shards` threads, so that decode, windowing and the model
//! step scale with cores.
//!
//! Each shard is a [`Core`] that owns some input partitions: their keys'
//! window, model, choice and hybrid state. A partition is placed on the
//! shard with the fewest partitions when it is first seen (restored or
//! assigned) and stays there until it is revoked, so its state never moves
//! between threads; an instance owning partitions 0..P in order gets
//! `p % shards`, and one given a scattered subset by a rebalance still
//! spreads them evenly.
//! With durable state (required for more than one shard) a key is bound to
//! the partition of its first event, so every key lives in exactly one
//! shard and a shard computes for its keys exactly what the single core
//! would (each partition keeps its own event time; see `window`).
//!
//! Fork-join, one batch at a time: the compute thread splits a batch by
//! partition, every shard processes its part on a pool thread (a shard with
//! no message ticks its clock, as the single core does on an empty batch),
//! and the outputs are concatenated in shard order. Checkpoints are taken by
//! all shards at the same point of the input and merged into one, so the
//! sink, the transaction and the archive see a single checkpoint stream
//! as before: exactly once holds unchanged. The cost is that a batch waits
//! for its slowest shard.
//!
//! Shared across shards: the offset tracker (per partition inside), and the
//! live scorer (one per job, so its summary, the HTTP API and the accuracy
//! records cover every key). With one shard there is no pool and no
//! splitting: it is the single compute thread of before.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::core::{Core, Totals};
use crate::config::PipelineConfig;
use crate::decode::RawMessage;
use crate::error::{Error, Result};
use crate::model::registry::Decision;
use crate::model::{ModelSpec, Network, SwapReport};
use crate::offsets::OffsetTracker;
use crate::score::Scorer;
use crate::sink::Output;
use crate::state::{Checkpoint, RestoredPartition};

pub struct Shards {
    cores: Vec<Core>,
    /// The shard of each partition seen since it was last revoked.
    placement: std::collections::BTreeMap<i32, usize>,
    /// One thread per shard; `None` with one shard.
    pool: Option<rayon::ThreadPool>,
}

impl Shards {
    /// `compute.shards` cores (each loads the same model), sharing the
    /// tracker and the live scorer.
    pub fn new(cfg: &PipelineConfig, tracker: Arc<Mutex<OffsetTracker>>) -> Result<Self> {
        let n = cfg.compute.shards.max(1);
        let mut cores = Vec::with_capacity(n);
        for _ in 0..n {
            cores.push(Core::new(cfg, tracker.clone())?);
        }
        let scorer = cores[0].scorer();
        for c in &mut cores[1..] {
            c.share_scorer(scorer.clone());
        }
        let pool = if n > 1 {
            let threads = cfg.model.threads;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("streamcast-shard-{i}"))
                // libtorch's intra-op setting, as on the compute thread.
                .start_handler(move |_| tch::set_num_threads(threads))
                .build()
                .map_err(|e| Error::Model(format!("starting {n} compute shards: {e}")))?;
            Some(pool)
        } else {
            None
        };
        Ok(Shards {
            cores,
            placement: Default::default(),
            pool,
        })
    }

    /// The shard owning partition `p`; a partition not seen before goes
    /// to the shard with the fewest partitions (the first of those).
    pub fn of(&mut self, p: i32) -> usize {
        if let Some(&i) = self.placement.get(&p) {
            return i;
        }
        let mut load = vec![0usize; self.cores.len()];
        for &i in self.placement.values() {
            load[i] += 1;
        }
        let i = (0..load.len()).min_by_key(|&i| (load[i], i)).unwrap_or(0);
        self.placement.insert(p, i);
        i
    }

    /// Runs `f` on every shard with its part, in parallel when sharded;
    /// results in shard order.
    fn each<P: Send, R: Send>(
        &mut self,
        parts: Vec<P>,
        f: impl Fn(&mut Core, P) -> R + Sync + Send,
    ) -> Vec<R> {
        match &self.pool {
            None => self
                .cores
                .iter_mut()
                .zip(parts)
                .map(|(c, p)| f(c, p))
                .collect(),
            Some(pool) => pool.install(|| {
                self.cores
                    .par_iter_mut()
                    .zip(parts.into_par_iter())
                    .map(|(c, p)| f(c, p))
                    .collect()
            }),
        }
    }

    /// The live scorer, when `score.enabled` (shared by every shard).
    pub fn scorer(&self) -> Option<Arc<Mutex<Scorer>>> {
        self.cores[0].scorer()
    }

    pub fn version(&self) -> &str {
        self.cores[0].model().version()
    }

    pub fn enable_state_tracking(&mut self) {
        self.cores.iter_mut().for_each(Core::enable_state_tracking);
    }

    /// Splits the partitions by owner shard.
    fn split_partitions(&mut self, partitions: &[i32]) -> Vec<Vec<i32>> {
        let mut parts = vec![Vec::new(); self.cores.len()];
        for &p in partitions {
            parts[self.of(p)].push(p);
        }
        parts
    }

    pub fn assign(&mut self, partitions: &[i32], now_ms: i64) {
        let parts = self.split_partitions(partitions);
        for (c, p) in self.cores.iter_mut().zip(parts) {
            if !p.is_empty() {
                c.assign(&p, now_ms);
            }
        }
    }

    pub fn set_backlogged(&mut self, partitions: &[i32]) {
        let parts = self.split_partitions(partitions);
        for (c, p) in self.cores.iter_mut().zip(parts) {
            c.set_backlogged(&p);
        }
    }

    pub fn restore(&mut self, r: &RestoredPartition, now_ms: i64) -> Result<usize> {
        let i = self.of(r.partition);
        self.cores[i].restore(r, now_ms)
    }

    /// Lets a revoked partition go (a partition never seen has nothing to
    /// let go of); it may be placed elsewhere if it comes back.
    pub fn revoke(&mut self, partition: i32) {
        if let Some(i) = self.placement.remove(&partition) {
            self.cores[i].revoke(partition);
        }
    }

    /// Decodes, windows and forecasts one batch: each shard its partitions'
    /// messages (a shard without any ticks).
    pub fn on_messages(&mut self, messages: Vec<RawMessage>, now_ms: i64) -> Result<Vec<Output>> {
        if self.cores.len() == 1 {
            return self.cores[0].on_messages(&messages, now_ms);
        }
        let mut parts: Vec<Vec<RawMessage>> = vec![Vec::new(); self.cores.len()];
        for m in messages {
            let i = self.of(m.partition);
            parts[i].push(m);
        }
        let outs = self.each(parts, |c, msgs| {
            if msgs.is_empty() {
                c.tick(now_ms)
            } else {
                c.on_messages(&msgs, now_ms)
            }
        });
        concat(outs)
    }

    /// Lets the watermark move on wall clock alone, in every shard.
    pub fn tick(&mut self, now_ms: i64) -> Result<Vec<Output>> {
        let n = self.cores.len();
        concat(self.each(vec![(); n], |c, ()| c.tick(now_ms)))
    }

    /// One checkpoint of every shard at this point of the input, merged:
    /// each shard's records, offsets and epochs are its own partitions'.
    pub fn checkpoint(&mut self, epochs: Vec<(i32, u64)>) -> Result<Checkpoint> {
        let parts: Vec<Vec<(i32, u64)>> = {
            let mut parts = vec![Vec::new(); self.cores.len()];
            for e in epochs {
                parts[self.of(e.0)].push(e);
            }
            parts
        };
        let mut merged: Option<Checkpoint> = None;
        for cp in self.each(parts, |c, e| c.checkpoint(e)) {
            let cp = cp?;
            match merged.as_mut() {
                None => merged = Some(cp),
                Some(m) => {
                    // Every shard checkpoints every time: their counters agree.
                    debug_assert_eq!(m.id, cp.id);
                    m.records.extend(cp.records);
                    m.offsets.extend(cp.offsets);
                    m.epochs.extend(cp.epochs);
                }
            }
        }
        merged.ok_or(Error::StageStopped("compute"))
    }

    /// Hot-swaps the model in every shard (a copy of the network each).
    pub fn swap(&mut self, net: Network, spec: ModelSpec) -> Result<SwapReport> {
        let mut nets = Vec::with_capacity(self.cores.len());
        for _ in 1..self.cores.len() {
            nets.push(net.copy_for(&spec)?);
        }
        nets.insert(0, net);
        let mut total = SwapReport {
            keys: 0,
            replayed_windows: 0,
            pause_ms: 0.0,
        };
        let reports = self.each(nets, |c, n| c.swap(n, spec.clone()));
        for r in reports {
            let r = r?;
            total.keys += r.keys;
            total.replayed_windows += r.replayed_windows;
            total.pause_ms = total.pause_ms.max(r.pause_ms);
        }
        Ok(total)
    }

    /// Starts a shadow duel; only with one shard (the config refuses more).
    pub fn start_shadow(
        &mut self,
        net: Network,
        spec: ModelSpec,
        decision: Decision,
        cfg: &PipelineConfig,
    ) -> Result<SwapReport> {
        if self.cores.len() > 1 {
            return Err(Error::Model(
                "a shadow duel runs on one compute shard (compute.shards = 1)".into(),
            ));
        }
        self.cores[0].start_shadow(net, spec, decision, cfg)
    }

    /// Totals of every shard.
    pub fn totals(&self) -> Totals {
        self.cores
            .iter()
            .map(Core::totals)
            .fold(Totals::default(), |a, t| Totals {
                messages: a.messages + t.messages,
                events: a.events + t.events,
                dead_letters: a.dead_letters + t.dead_letters,
                windows: a.windows + t.windows,
                forecasts_from_model: a.forecasts_from_model + t.forecasts_from_model,
                forecasts_from_baseline: a.forecasts_from_baseline + t.forecasts_from_baseline,
            })
    }
}

fn concat(outs: Vec<Result<Vec<Output>>>) -> Result<Vec<Output>> {
    let mut all = Vec::new();
    for o in outs {
        all.extend(o?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::core::tests::{assert_close, forecasts_of, messages};
    use crate::state::StateRecord;

    fn shards(cfg: &PipelineConfig) -> Shards {
        let mut s = Shards::new(cfg, Arc::new(Mutex::new(OffsetTracker::new()))).unwrap();
        s.enable_state_tracking();
        s.assign(&[0, 1, 2, 3], 0);
        s
    }

    fn cfg(n: usize) -> PipelineConfig {
        crate::testkit::pipeline(&format!(
            "[decode]\ntime_format = \"epoch_ms\"\n[window]\nsize = \"1h\"\nallowed_lateness = \"0s\"\n\
             [model]\ncell = \"gru\"\nhidden = 8\nwarmup_windows = 3\nseason_windows = 4\n\
             quantiles = [0.1, 0.5, 0.9]\n[compute]\nshards = {n}"
        ))
    }

    /// Records sorted, with only the window state's values (`w/`) and
    /// partition clocks kept: libtorch's matrix products round differently
    /// for different batch sizes (a shard steps fewer keys at once), so the
    /// recurrent state and the scores derived from forecasts (`m/`, `l/`)
    /// agree to float rounding, not bit for bit; the forecasts are compared
    /// with a tolerance instead.
    fn sorted(records: &[StateRecord]) -> Vec<(i32, Vec<u8>, Option<Vec<u8>>)> {
        let mut v: Vec<_> = records
            .iter()
            .map(|r| {
                let exact = r.key.starts_with(b"w/") || r.key == crate::state::PARTITION_KEY;
                let value = match exact {
                    true => r.value.clone(),
                    false => r.value.as_ref().map(|_| Vec::new()),
                };
                (r.partition, r.key.clone(), value)
            })
            .collect();
        v.sort();
        v
    }

    /// Sharding changes where a key is computed, not what: two and three
    /// shards publish the forecasts of one (to float rounding), and their
    /// merged checkpoints hold the same records (window state bit for bit)
    /// and offsets.
    #[test]
    fn shards_compute_what_one_core_computes() {
        let msgs = messages(12, 30, 4);
        let mut one = shards(&cfg(1));
        let (mut a, mut cps_a) = (Vec::new(), Vec::new());
        for chunk in msgs.chunks(17) {
            a.extend(one.on_messages(chunk.to_vec(), 0).unwrap());
            cps_a.push(
                one.checkpoint(vec![(0, 1), (1, 1), (2, 1), (3, 1)])
                    .unwrap(),
            );
        }
        let a = forecasts_of(&a);
        assert!(
            a.iter().filter(|f| f.3 == "model").count() > 100,
            "model forecasts to compare"
        );
        for n in [2, 3] {
            let mut many = shards(&cfg(n));
            assert_eq!(many.cores.len(), n);
            let mut b = Vec::new();
            for (chunk, cp_a) in msgs.chunks(17).zip(&cps_a) {
                b.extend(many.on_messages(chunk.to_vec(), 0).unwrap());
                let mut cp = many
                    .checkpoint(vec![(0, 1), (1, 1), (2, 1), (3, 1)])
                    .unwrap();
                cp.offsets.sort();
                cp.epochs.sort();
                assert_eq!(cp.id, cp_a.id);
                assert_eq!(cp.offsets, cp_a.offsets, "{n} shards");
                assert_eq!(cp.epochs, cp_a.epochs, "{n} shards");
                assert_eq!(sorted(&cp.records), sorted(&cp_a.records), "{n} shards");
            }
            assert_close(&forecasts_of(&b), &a, &format!("{n} shards"));
            assert_eq!(many.totals().windows, one.totals().windows);
            assert_eq!(many.totals().events, one.totals().events);
        }
    }

    /// The changelog does not know about shards: state checkpointed by two
    /// shards restores into one core (and back), which then forecasts as
    /// the job that never stopped.
    #[test]
    fn a_changelog_written_by_shards_restores_into_any_shard_count() {
        let msgs = messages(8, 40, 4);
        let cut = msgs.len() / 2 + 5;
        let mut orig = shards(&cfg(2));
        let mut log: Vec<StateRecord> = Vec::new();
        for chunk in msgs[..cut].chunks(9) {
            orig.on_messages(chunk.to_vec(), 0).unwrap();
            let cp = orig
                .checkpoint(vec![(0, 1), (1, 1), (2, 1), (3, 1)])
                .unwrap();
            log.extend(cp.records);
        }
        let restore = |n: usize| {
            let mut s = shards(&cfg(n));
            for p in 0..4 {
                let r = RestoredPartition::from_records(
                    p,
                    log.iter()
                        .filter(|r| r.partition == p)
                        .map(|r| (r.key.as_slice(), r.value.as_deref())),
                )
                .unwrap();
                s.restore(&r, 0).unwrap();
            }
            s
        };
        let (mut one, mut three) = (restore(1), restore(3));
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in msgs[cut..].chunks(11) {
            a.extend(orig.on_messages(chunk.to_vec(), 0).unwrap());
            b.extend(one.on_messages(chunk.to_vec(), 0).unwrap());
            c.extend(three.on_messages(chunk.to_vec(), 0).unwrap());
        }
        let a = forecasts_of(&a);
        assert!(a.iter().all(|f| f.3 == "model"), "warm keys stay warm");
        assert!(a.len() > 50);
        assert_close(&forecasts_of(&b), &a, "restored into one");
        assert_close(&forecasts_of(&c), &a, "restored into three");
    }

    /// Partitions are spread by placement, not by number: the odd ones a
    /// rebalance left this instance land on different shards, keep their
    /// shard while owned, and a revoked one frees its place.
    #[test]
    fn partitions_are_placed_evenly_and_stay_until_revoked() {
        let mut s = shards(&cfg(2));
        s.revoke(0);
        s.revoke(1);
        s.revoke(2);
        s.revoke(3);
        assert_eq!((s.of(1), s.of(3)), (0, 1));
        assert_eq!((s.of(3), s.of(1)), (1, 0), "placement is kept");
        assert_eq!(s.of(5), 0, "ties go to the first shard");
        s.revoke(3);
        assert_eq!(s.of(7), 1, "shard 1 had the fewest after the revocation");
    }

    #[test]
    fn more_shards_than_one_need_durable_state_and_no_shadow() {
        let base = "[decode]\ntime_format = \"epoch_ms\"\n[window]\nsize = \"1h\"\n";
        let parse = |extra: &str| {
            let text = crate::testkit::pipeline_toml(&format!("{base}{extra}"));
            PipelineConfig::parse(&text, std::path::Path::new("pipelines/t.toml"))
        };
        let err = parse("[compute]\nshards = 2\n[state]\nenabled = false")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("compute.shards") && err.contains("durable state"),
            "{err}"
        );
        let err = parse("[compute]\nshards = 2\n[retrain]\nshadow_windows = 10")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shadow"), "{err}");
        let err = parse("[compute]\nshards = 0").unwrap_err().to_string();
        assert!(err.contains("compute.shards"), "{err}");
        assert!(parse("[compute]\nshards = 2").is_ok());
    }
}
