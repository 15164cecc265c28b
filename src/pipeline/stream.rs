//! The streaming job: Kafka in, forecasts out, at least once.
//!
//! Threads and tasks (data flows one way, every channel bounded):
//!
//! ```text
//! consumer task (tokio) --raw batches--> compute thread (std) --outputs--> sink task (tokio)
//!        ^                           decode/window/model on its shards         | acks release
//!        +----- committer task stores the tracker's commit points <-- tickets -+
//!                                           \--> archive thread, retrainer thread (optional)
//! ```
//!
//! `run` reads as the job's life: start the rooms (`spawn_*`), consume
//! until a signal or idleness (`consume`), then drain and commit (`drain`).
//!
//! - The consumer task only moves bytes. libtorch runs on the compute
//!   thread (and its shard threads, `compute.shards`, see `shards`), never
//!   on a tokio worker.
//! - Offsets are stored only from `OffsetTracker::commit_points`, i.e. after
//!   every forecast depending on them was acknowledged (see `offsets`).
//! - Durable state (`state.enabled`, the default): every
//!   `state.commit_interval` (up to `state.backlog_commit_interval` while
//!   far behind, see `checkpoint_due`) the compute thread emits a
//!   checkpoint (see `state`) after its outputs; the sink publishes it once everything
//!   before it is acknowledged and commits the input offsets with it (in one
//!   transaction when `delivery = "exactly_once"`). Only checkpoints commit.
//!   At least once, outputs after a checkpoint keep flowing while it waits
//!   and commits; exactly once, it is a barrier (later outputs must not
//!   join its transaction).
//!   A partition newly assigned is restored from the changelog before its
//!   first message is processed; a revoked one is checkpointed (the
//!   consumer's rebalance callback waits for it) and then dropped.
//! - Without durable state, offsets are stored from `OffsetTracker`'s
//!   commit points by the committer task; a restart rebuilds open windows
//!   from Kafka and warms keys up again.
//! - SIGINT/SIGTERM: stop consuming, let the compute thread finish what it
//!   was given (and checkpoint), wait for every delivery, commit, exit 0.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle as TaskHandle;

use super::core::Totals;
use super::shards::Shards;
use crate::api::ApiState;
use crate::archive::ArchiveHandle;
use crate::broker::blocking;
use crate::config::PipelineConfig;
use crate::decode::RawMessage;
use crate::error::{Error, Result};
use crate::offsets::OffsetTracker;
use crate::retrain::RetrainSignals;
use crate::sink::{Delivered, ForecastRecord, KafkaSink, Output};
use crate::source::kafka::{self as source, Assignment, OnRevoke, Source};
use crate::state::Checkpoint;
use crate::time::now_ms;
use crate::window::WindowSpec;

/// Options of `streamcast run` beyond the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop (gracefully) after no input for this long and nothing in flight.
    pub exit_when_idle: Option<Duration>,
    /// Print forecasts to stdout as they are acknowledged.
    pub print_forecasts: bool,
}

/// What the compute thread is handed.
enum Input {
    Batch(Batch),
    /// These partitions are revoked: checkpoint now, say so on the channel
    /// once it is committed (the revocation waits for it), then drop their
    /// state, so that nothing later (a tick closing their windows) produces
    /// output for partitions whose offsets this instance can no longer
    /// commit.
    Revoke(Vec<i32>, SyncSender<()>),
    /// These partitions' assignment was lost: drop their state and abandon
    /// everything since the last checkpoint.
    Lost(Vec<i32>),
}

/// Messages (possibly none: then it is a heartbeat carrying the partition
/// state), the owned partitions with the generation each was assigned in,
/// and those with a backlog, and how many messages of the owned partitions
/// were unread on the broker when the batch was taken (`lag`).
struct Batch {
    messages: Vec<RawMessage>,
    partitions: BTreeMap<i32, u64>,
    backlogged: Vec<i32>,
    lag: u64,
}

/// A promoted model on its way from the retrainer to the compute thread.
type Swap = crate::retrain::Promotion;

/// Runs a pipeline until a signal (or idleness, if asked). Returns totals.
pub async fn run(cfg: PipelineConfig, opts: RunOptions) -> Result<Totals> {
    let started = Instant::now();
    let metrics = crate::telemetry::install_metrics(&cfg.telemetry, cfg.api.listen.is_some())?;
    crate::broker::ensure_topics(&cfg).await?;
    let durable = cfg.state.enabled;
    if durable {
        crate::state::changelog::ensure_topic(&cfg).await?;
    }
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let (consumer, assignment) = source::create_consumer(&cfg)?;
    let consumer = Arc::new(consumer);
    let api = match &cfg.api.listen {
        Some(addr) => {
            let state = ApiState::new(&cfg, (consumer.clone(), assignment.clone()), metrics);
            crate::api::serve(addr, state.clone()).await?;
            Some(state)
        }
        None => None,
    };
    let sink = KafkaSink::from_config(&cfg, tracker.clone())?;
    // Avro forecasts: their schema is registered before anything is read.
    sink.prepare().await?;
    if durable {
        let s = sink.clone();
        tokio::task::spawn_blocking(move || s.begin())
            .await
            .map_err(|_| Error::Panicked("transactions"))??;
        tracing::info!(
            transactional_id = %crate::sink::kafka::transactional_id(&cfg),
            delivery = ?cfg.delivery,
            "checkpoints are transactional"
        );
    }
    // The newest committed checkpoint: the sink sets it, the archive follows.
    let commit_points = crate::archive::CommitPoints::default();
    let archive = if durable && cfg.archive.enabled {
        let c = cfg.clone();
        let committed = tokio::task::spawn_blocking(move || source::committed_offsets(&c))
            .await
            .map_err(|_| Error::Panicked("committed offsets"))??;
        spawn_archive(&cfg, Some((commit_points.clone(), committed)))?
    } else {
        spawn_archive(&cfg, None)?
    };
    // Following commit points, a checkpoint commits only after the archive
    // journalled its windows.
    let archived = archive.as_ref().filter(|_| durable).map(|a| a.acks());
    let signals = Arc::new(RetrainSignals::default());
    let (swap_tx, swap_rx) = sync_channel::<Swap>(1);
    let retrainer = spawn_retrainer(&cfg, signals.clone(), swap_tx)?;
    let scorer = Arc::new(std::sync::OnceLock::new());
    let compute = spawn_compute(
        &cfg,
        tracker.clone(),
        archive,
        swap_rx,
        (signals.clone(), api.clone(), scorer.clone()),
    )
    .await?;
    let sink_failed = Arc::new(tokio::sync::Notify::new());
    let sink_task = spawn_sink(
        sink,
        compute.outputs,
        opts.print_forecasts,
        sink_failed.clone(),
        (consumer.clone(), assignment.clone()),
        (commit_points, archived, api),
        cfg.delivery == crate::config::Delivery::ExactlyOnce,
    );
    let committer = if durable {
        assignment.set_on_revoke(Some(checkpoint_on_revoke(compute.inputs.clone())));
        None
    } else {
        Some(spawn_committer(
            consumer.clone(),
            tracker.clone(),
            cfg.source.topic.clone(),
        ))
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let mut reads = ReadTimes::default();
    let stop_reason = match consume(
        &cfg,
        &opts,
        (&consumer, &assignment),
        &compute.inputs,
        &mut sigterm,
        &mut reads,
        &sink_failed,
    )
    .await
    {
        Ok(reason) => reason,
        Err(Stop::ComputeGone) => "the compute thread stopped",
        Err(Stop::SinkFailed) => "a record cannot be published",
    };
    tracing::info!(reason = stop_reason, "stopping: draining in-flight work");
    // The revocation hook holds a sender too: the compute thread sees the
    // end of its input only when both are gone.
    assignment.set_on_revoke(None);
    drop(compute.inputs);
    let drain = async {
        let totals = tokio::task::spawn_blocking(move || join_compute(compute.thread))
            .await
            .map_err(|_| Error::Panicked("compute"))?;
        let delivered = sink_task.await.map_err(|_| Error::Panicked("sink"))?;
        Ok::<_, Error>((totals, delivered))
    };
    let (totals, delivered) = match tokio::time::timeout(cfg.sink.shutdown_timeout, drain).await {
        Ok(r) => r?,
        Err(_) => {
            // The broker is away (or too slow): what was not committed is
            // redone by the next start from the last committed checkpoint.
            signals.stop.store(true, Ordering::Relaxed);
            crate::train::request_cancel();
            return Err(Error::Unreachable(format!(
                "shutdown took longer than sink.shutdown_timeout ({:?}): exiting without committing the rest; \
                 the next start resumes from the last committed checkpoint",
                cfg.sink.shutdown_timeout
            )));
        }
    };
    if let Some(c) = committer {
        c.abort();
        // Commits only what was delivered: a failed output's ticket stays pinned.
        commit_final(&consumer, &tracker, &cfg.source.topic);
    }
    stop_retrainer(&signals, retrainer).await;
    // The sink's error first: when it stops, the compute thread stops too
    // (its outputs have nowhere to go), and that is only the consequence.
    let deliveries = delivered?;
    let totals = totals?;
    print_summary(&totals, &deliveries, started, &reads);
    if let Some(s) = scorer.get() {
        print!(
            "{}",
            crate::score::summary_table(&s.lock().unwrap_or_else(|e| e.into_inner()).summary())
        );
    }
    Ok(totals)
}

/// Why the consumer loop stopped early.
enum Stop {
    /// The compute thread is gone (its error says why).
    ComputeGone,
    /// The sink met a record it can never publish.
    SinkFailed,
}

/// What a revocation asks of the compute thread: a checkpoint, committed
/// before the partitions go (the rebalance waits, bounded).
fn checkpoint_on_revoke(inputs: SyncSender<Input>) -> OnRevoke {
    Box::new(move |partitions: &[i32], lost: bool| {
        if lost {
            // Nothing can be committed for them any more; the compute
            // thread drops their state, the sink aborts the transaction.
            let _ = blocking(|| inputs.send(Input::Lost(partitions.to_vec())));
            return;
        }
        let (done_tx, done_rx) = sync_channel(1);
        let wait = || {
            if inputs
                .send(Input::Revoke(partitions.to_vec(), done_tx))
                .is_err()
            {
                return; // shutting down: the final checkpoint covers them
            }
            match done_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(()) => tracing::info!(?partitions, "checkpointed before revocation"),
                Err(_) => tracing::warn!(?partitions, "no checkpoint within 60 s of a revocation; the next owner resumes from the previous one"),
            }
        };
        blocking(wait)
    })
}

/// The archive writer thread, when `archive.enabled`.
fn spawn_archive(
    cfg: &PipelineConfig,
    follow: Option<(crate::archive::CommitPoints, BTreeMap<i32, i64>)>,
) -> Result<Option<ArchiveHandle>> {
    if !cfg.archive.enabled {
        return Ok(None);
    }
    let schema = WindowSpec::from_config(cfg).windows_schema();
    ArchiveHandle::spawn(cfg.archive_dir(), schema, cfg.archive.clone(), follow).map(Some)
}

/// The retrainer thread, when `retrain.enabled`; promoted models go to `swap_tx`.
fn spawn_retrainer(
    cfg: &PipelineConfig,
    signals: Arc<RetrainSignals>,
    swap_tx: SyncSender<Swap>,
) -> Result<Option<JoinHandle<()>>> {
    if !cfg.retrain.enabled {
        return Ok(None);
    }
    let c = cfg.clone();
    std::thread::Builder::new()
        .name("streamcast-retrain".into())
        .spawn(move || crate::retrain::run_retrainer(c, signals, swap_tx))
        .map(Some)
        .map_err(|e| Error::io("starting the retrainer", e))
}

/// Stops the retrainer: a training in progress is cancelled at its next
/// batch (never promoted), and we wait for the thread, because libtorch
/// must not be computing on another thread while the process exits.
async fn stop_retrainer(signals: &RetrainSignals, retrainer: Option<JoinHandle<()>>) {
    signals.stop.store(true, Ordering::Relaxed);
    crate::train::request_cancel();
    if let Some(r) = retrainer {
        let _ = tokio::task::spawn_blocking(move || r.join()).await;
    }
}

/// The compute thread and its two channels.
struct Compute {
    thread: JoinHandle<Result<Totals>>,
    inputs: SyncSender<Input>,
    outputs: tokio::sync::mpsc::Receiver<Output>,
}

/// Starts the compute thread (it owns decode, window and model state) and
/// waits until its model is loaded, so a bad model fails the start.
async fn spawn_compute(
    cfg: &PipelineConfig,
    tracker: Arc<Mutex<OffsetTracker>>,
    archive: Option<ArchiveHandle>,
    swaps: Receiver<Swap>,
    (signals, api, scorer): (Arc<RetrainSignals>, Option<Arc<ApiState>>, ScorerSlot),
) -> Result<Compute> {
    let (in_tx, in_rx) = sync_channel::<Input>(4);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Output>(16);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<String>>();
    let (name, topic) = (cfg.name.clone(), cfg.source.topic.clone());
    let cfg = cfg.clone();
    let thread = std::thread::Builder::new()
        .name("streamcast-compute".into())
        .spawn(move || -> Result<Totals> {
            tch::set_num_threads(cfg.model.threads);
            let core = match Shards::new(&cfg, tracker) {
                Ok(c) => {
                    if let Some(s) = c.scorer() {
                        if let Some(api) = &api {
                            api.set_scorer(s.clone());
                        }
                        let _ = scorer.set(s);
                    }
                    let _ = ready_tx.send(Ok(c.version().to_string()));
                    c
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Err(Error::StageStopped("compute"));
                }
            };
            compute_loop(
                core,
                &cfg,
                in_rx,
                out_tx,
                archive,
                swaps,
                (&signals, api.as_deref()),
            )
        })
        .map_err(|e| Error::io("starting the compute thread", e))?;
    let version = ready_rx
        .await
        .map_err(|_| Error::StageStopped("compute"))??;
    tracing::info!(pipeline = %name, model_version = %version, %topic, "running");
    Ok(Compute {
        thread,
        inputs: in_tx,
        outputs: out_rx,
    })
}

/// The compute thread's life: swap in promoted models between batches,
/// follow the assignment (restore, revoke), run each input through the core
/// (or tick the clock when none comes), hand outputs to the sink and closed
/// windows to the archive, and checkpoint every `state.commit_interval`.
fn compute_loop(
    mut core: Shards,
    cfg: &PipelineConfig,
    inputs: Receiver<Input>,
    outputs: tokio::sync::mpsc::Sender<Output>,
    archive: Option<ArchiveHandle>,
    swaps: Receiver<Swap>,
    (signals, api): (&RetrainSignals, Option<&ApiState>),
) -> Result<Totals> {
    let durable = cfg.state.enabled;
    if durable {
        core.enable_state_tracking();
    }
    let mut owned: BTreeMap<i32, u64> = BTreeMap::new();
    // Input offsets of the last checkpoint, all owned partitions (the archive
    // records them in the files it seals).
    let mut through: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_checkpoint = Instant::now();
    // Messages read since the last checkpoint, and the input still unread
    // on the broker as of the latest batch (see `checkpoint_due`).
    let (mut read_since, mut lag) = (0u64, 0u64);
    let emit = |outs: Vec<Output>| -> Result<()> {
        for o in outs {
            if let Output::Forecasts { windows, .. } = &o {
                signals
                    .windows
                    .fetch_add(windows.num_rows() as u64, Ordering::Relaxed);
                if let Some(a) = &archive {
                    a.offer(windows.clone());
                }
            }
            if outputs.blocking_send(o).is_err() {
                return Err(Error::StageStopped("sink"));
            }
        }
        Ok(())
    };
    // A checkpoint to the sink, and its mark to the archive.
    let mut checkpoint = |core: &mut Shards, owned: &BTreeMap<i32, u64>, done| -> Result<()> {
        let mut cp = core.checkpoint(owned.iter().map(|(&p, &g)| (p, g)).collect())?;
        cp.done = done;
        let id = cp.id;
        through.retain(|p, _| owned.contains_key(p));
        through.extend(cp.offsets.iter().copied());
        // The mark first: the sink commits only once the archive has
        // journalled every window before it (see `archive`).
        if let Some(a) = &archive {
            a.mark(id, through.iter().map(|(&p, &o)| (p, o)).collect());
        }
        emit(vec![Output::Checkpoint(cp)])?;
        Ok(())
    };
    loop {
        if let Ok(p) = swaps.try_recv() {
            let shadow = p.shadow.is_some();
            let swapped = match p.shadow {
                Some(decision) => core.start_shadow(p.net, p.spec, decision, cfg),
                None => core.swap(p.net, p.spec),
            };
            match swapped {
                Ok(r) => tracing::info!(
                    keys = r.keys,
                    replayed = r.replayed_windows,
                    pause_ms = r.pause_ms,
                    shadow,
                    "model swapped in"
                ),
                Err(e) => tracing::error!(error = %e, "model swap refused; the champion stays"),
            }
        }
        let mut asked = None;
        let mut revoked = Vec::new();
        let outs = match inputs.recv_timeout(Duration::from_millis(200)) {
            Ok(Input::Batch(mut b)) => {
                if b.partitions != owned {
                    if durable {
                        follow_assignment(&mut core, cfg, &owned, &b.partitions)?;
                    }
                    let parts: Vec<i32> = b.partitions.keys().copied().collect();
                    if !parts.is_empty() {
                        core.assign(&parts, now_ms());
                    }
                    owned = b.partitions;
                    if let Some(api) = api {
                        api.restored(&owned);
                    }
                }
                if durable {
                    // Read before a rebalance and already handed over: the
                    // owner reads them again.
                    b.messages.retain(|m| owned.contains_key(&m.partition));
                }
                core.set_backlogged(&b.backlogged);
                read_since += b.messages.len() as u64;
                lag = b.lag;
                if b.messages.is_empty() {
                    core.tick(now_ms())?
                } else {
                    core.on_messages(b.messages, now_ms())?
                }
            }
            Ok(Input::Revoke(parts, done)) => {
                asked = Some(done);
                revoked = parts;
                Vec::new()
            }
            Ok(Input::Lost(parts)) => {
                // Every output since the last checkpoint is abandoned with
                // the transaction, so every partition restarts from its
                // committed state: drop them all; the next batch restores
                // those still (or again) owned.
                if parts.len() != owned.len() {
                    tracing::warn!(lost = ?parts, owned = ?owned.keys().collect::<Vec<_>>(), "a lost assignment that is not the whole assignment: restarting every partition from its checkpoint");
                }
                for (&p, _) in owned.iter() {
                    core.revoke(p);
                }
                owned.clear();
                if let Some(api) = api {
                    api.restored(&owned);
                }
                if let Some(a) = &archive {
                    a.abandon();
                }
                vec![Output::Abandon]
            }
            Err(RecvTimeoutError::Timeout) => core.tick(now_ms())?,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        emit(outs)?;
        if durable
            && (asked.is_some()
                || checkpoint_due(last_checkpoint.elapsed(), read_since, lag, &cfg.state))
        {
            checkpoint(&mut core, &owned, asked)?;
            last_checkpoint = Instant::now();
            read_since = 0;
        }
        if !revoked.is_empty() {
            for p in revoked {
                if owned.remove(&p).is_some() {
                    core.revoke(p);
                }
            }
            if let Some(api) = api {
                api.restored(&owned);
            }
        }
    }
    if durable {
        checkpoint(&mut core, &owned, None)?;
    }
    if let Some(a) = archive {
        a.close();
    }
    Ok(core.totals())
}

/// Whether the periodic checkpoint is due, `elapsed` after the last one,
/// having read `read_since` messages since, with `lag` messages still
/// unread on the broker.
///
/// Every `state.commit_interval`, except while the job is far behind: when
/// more input waits than was read since the last checkpoint (more than
/// `elapsed` of work left at the current rate), the checkpoint waits, up
/// to `state.backlog_commit_interval`. Catching up through a backlog, each
/// checkpoint rewrites the `w/` record of every key touched since the
/// previous one: at 100k keys that is 100k records a second of backlog,
/// most of them superseded a second later. The replay after a crash (and,
/// exactly once, the wait until forecasts become visible) is then bounded
/// by `backlog_commit_interval` of input instead of `commit_interval`; once
/// the backlog is within `elapsed` of work, the cadence is back to
/// `commit_interval`.
fn checkpoint_due(
    elapsed: Duration,
    read_since: u64,
    lag: u64,
    cfg: &crate::config::StateConfig,
) -> bool {
    if elapsed < cfg.commit_interval {
        return false;
    }
    elapsed >= cfg.backlog_commit_interval || lag <= read_since
}

/// Brings the core in step with a new assignment: partitions gone, or
/// assigned again since (a generation change), are dropped; new ones are
/// restored from the changelog before any of their messages is processed.
fn follow_assignment(
    core: &mut Shards,
    cfg: &PipelineConfig,
    was: &BTreeMap<i32, u64>,
    now: &BTreeMap<i32, u64>,
) -> Result<()> {
    for (&p, g) in was {
        if now.get(&p) != Some(g) {
            core.revoke(p);
        }
    }
    for (&p, g) in now {
        if was.get(&p) != Some(g) {
            let t0 = Instant::now();
            let r = crate::state::changelog::restore(cfg, p)?;
            let keys = core.restore(&r, now_ms())?;
            tracing::info!(
                partition = p,
                keys = r.windows.len(),
                model_keys = keys,
                ms = t0.elapsed().as_millis() as u64,
                "partition restored"
            );
        }
    }
    Ok(())
}

/// The sink task: deliveries run concurrently; each releases its own ticket.
/// On a permanent failure it stops at once and says so on `failed`: the
/// failed output's ticket stays pinned (nothing past it is committed), the
/// outputs still in flight are abandoned unacknowledged (re-read after a
/// restart), and the job exits with the error.
fn spawn_sink(
    sink: KafkaSink,
    mut outputs: tokio::sync::mpsc::Receiver<Output>,
    print: bool,
    failed: Arc<tokio::sync::Notify>,
    (consumer, assignment): (Arc<Source>, Arc<Assignment>),
    (commit_points, archived, api): (
        crate::archive::CommitPoints,
        Option<tokio::sync::watch::Receiver<u64>>,
        Option<Arc<ApiState>>,
    ),
    exactly_once: bool,
) -> TaskHandle<Result<Deliveries>> {
    tokio::spawn(async move {
        let mut inflight = FuturesUnordered::new();
        let mut printer = Printer::default();
        let stats = Mutex::new(Deliveries::default());
        // Exactly once: a forecast is visible (read_committed) only at its
        // transaction's commit, so its latency is measured to the commit.
        let uncommitted = Mutex::new(Vec::<(Instant, usize)>::new());
        // For the API likewise: exactly once, its latest forecasts change at
        // the commit (an aborted forecast is never shown).
        let unpublished = Mutex::new(Vec::<(String, Arc<str>)>::new());
        let mut delivered = |r: Result<Delivered>| -> Result<()> {
            let d = r?;
            if let Some(api) = &api {
                if exactly_once {
                    lock(&unpublished).extend(d.published.iter().cloned());
                } else {
                    api.published(&d.published);
                }
            }
            if let Some(l) = d.latency {
                if exactly_once {
                    let closed = Instant::now().checked_sub(l).unwrap_or_else(Instant::now);
                    lock(&uncommitted).push((closed, d.forecasts.len()));
                } else {
                    lock(&stats).record(l, d.forecasts.len());
                }
            }
            if print {
                printer.print(&d.forecasts.records())
            }
            Ok(())
        };
        let outcome: Result<()> = async {
            // Outputs awaiting acknowledgement, with their bytes: past
            // `sink.max_in_flight_bytes` no more are taken from the channel,
            // so a stalled broker holds the compute thread back instead of
            // growing memory.
            let max_bytes = sink.max_in_flight_bytes();
            let mut in_flight_bytes = 0usize;
            let sink = &sink;
            // At least once, checkpoints do not stop the flow: outputs taken
            // after a checkpoint are sent while it waits for those before it
            // and while it commits (they go through the plain producer, the
            // checkpoint through the transactional one). A checkpoint waits
            // in `waiting` with the number of outputs taken before it, and
            // commits once none of those is in flight; one commit at a time,
            // in order. Exactly once, a checkpoint is a barrier: outputs
            // after it must not join its transaction.
            let mut taken = 0u64;
            let mut unacked = std::collections::BTreeSet::<u64>::new();
            let mut waiting = std::collections::VecDeque::<(u64, Checkpoint)>::new();
            let mut committing: Option<CommitFuture<'_>> = None;
            let commit = |cp: Checkpoint| -> CommitFuture<'_> {
                let archived = archived.clone();
                let (consumer, assignment) = (consumer.clone(), assignment.clone());
                Box::pin(async move {
                    let id = cp.id;
                    if let Some(mut acks) = archived {
                        // An error: the archive writer has stopped;
                        // commits go on without it.
                        let _ = acks.wait_for(|&a| a >= id).await;
                    }
                    Ok((id, sink.commit(cp, &consumer, &assignment).await?))
                })
            };
            let committed = |(id, ok): (u64, bool)| {
                if ok {
                    commit_points.fetch_max(id, Ordering::SeqCst);
                    let done: Vec<_> = lock(&uncommitted).drain(..).collect();
                    for (closed, n) in done {
                        lock(&stats).record(closed.elapsed(), n);
                    }
                    let visible: Vec<_> = lock(&unpublished).drain(..).collect();
                    if let Some(api) = &api {
                        api.published(&visible);
                    }
                } else {
                    lock(&uncommitted).clear();
                    lock(&unpublished).clear();
                }
            };
            loop {
                // Start the next checkpoint's commit once everything taken
                // before it is acknowledged.
                if committing.is_none() {
                    let ready = waiting
                        .front()
                        .is_some_and(|(before, _)| unacked.first().is_none_or(|&s| s >= *before));
                    if ready {
                        if let Some((_, cp)) = waiting.pop_front() {
                            committing = Some(commit(cp));
                        }
                    }
                }
                tokio::select! {
                    o = outputs.recv(), if in_flight_bytes < max_bytes => match o {
                        Some(Output::Checkpoint(cp)) if !exactly_once => waiting.push_back((taken, cp)),
                        // A barrier: everything before it acknowledged first.
                        Some(Output::Checkpoint(cp)) => {
                            while let Some((_, _, r)) = inflight.next().await {
                                delivered(r)?;
                            }
                            unacked.clear();
                            in_flight_bytes = 0;
                            committed(commit(cp).await?);
                        }
                        Some(Output::Abandon) => {
                            // Everything before it settles first, checkpoints
                            // included (one of a lost generation aborts).
                            while let Some((_, _, r)) = inflight.next().await {
                                delivered(r)?;
                            }
                            unacked.clear();
                            in_flight_bytes = 0;
                            if let Some(c) = committing.take() {
                                committed(c.await?);
                            }
                            while let Some((_, cp)) = waiting.pop_front() {
                                committed(commit(cp).await?);
                            }
                            sink.abandon()?;
                            lock(&uncommitted).clear();
                            lock(&unpublished).clear();
                        }
                        Some(o) => {
                            if let Output::Forecasts { closed_at, forecasts, .. } = &o {
                                lock(&stats).handoff.push((closed_at.elapsed(), forecasts.num_rows() as u64));
                            }
                            let bytes = o.bytes();
                            in_flight_bytes += bytes;
                            metrics::gauge!(crate::telemetry::IN_FLIGHT_BYTES).set(in_flight_bytes as f64);
                            let n = taken;
                            taken += 1;
                            unacked.insert(n);
                            inflight.push(async move { (n, bytes, sink.deliver(o).await) });
                        }
                        None => break,
                    },
                    Some((n, bytes, r)) = inflight.next(), if !inflight.is_empty() => {
                        in_flight_bytes -= bytes;
                        unacked.remove(&n);
                        delivered(r)?;
                    }
                    r = async {
                        match committing.as_mut() {
                            Some(c) => c.await,
                            None => std::future::pending().await,
                        }
                    }, if committing.is_some() => {
                        committing = None;
                        committed(r?);
                    }
                }
            }
            while let Some((_, _, r)) = inflight.next().await {
                delivered(r)?;
            }
            if let Some(c) = committing.take() {
                committed(c.await?);
            }
            while let Some((_, cp)) = waiting.pop_front() {
                committed(commit(cp).await?);
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            tracing::error!(error = %e, "stopping: a record cannot be published");
            failed.notify_one();
            return Err(e);
        }
        Ok(stats.into_inner().unwrap_or_else(|e| e.into_inner()))
    })
}

/// A checkpoint's commit in progress: its id, and whether it committed.
type CommitFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u64, bool)>> + Send + 'a>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// When the consumer loop handed its first and last messages on.
#[derive(Debug, Default)]
struct ReadTimes {
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Forecast deliveries of a run: when the last was acknowledged, and the
/// close -> ack latency of every forecast (one sample per delivered batch,
/// weighted by its forecasts).
#[derive(Debug, Default)]
pub struct Deliveries {
    samples: Vec<(Duration, u64)>,
    /// Close -> taken by the sink (before serializing and sending), the
    /// compute thread's and the channel's part of the latency.
    handoff: Vec<(Duration, u64)>,
    /// When the last forecast was acknowledged.
    pub last_ack: Option<Instant>,
}

impl Deliveries {
    fn record(&mut self, latency: Duration, forecasts: usize) {
        if forecasts > 0 {
            self.samples.push((latency, forecasts as u64));
            self.last_ack = Some(Instant::now());
        }
    }

    /// The `q`-quantile (0..=1) of the close -> ack latency over forecasts.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        weighted_quantile(&self.samples, q)
    }

    /// The `q`-quantile of close -> taken by the sink.
    pub fn handoff_quantile(&self, q: f64) -> Option<Duration> {
        weighted_quantile(&self.handoff, q)
    }
}

/// The `q`-quantile of samples weighted by their counts.
fn weighted_quantile(samples: &[(Duration, u64)], q: f64) -> Option<Duration> {
    let mut s = samples.to_vec();
    s.sort_unstable();
    let total: u64 = s.iter().map(|(_, n)| n).sum();
    let want = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    s.into_iter().find_map(|(l, n)| {
        seen += n;
        (seen >= want).then_some(l)
    })
}

/// The committer task: stores the tracker's commit points every 500 ms
/// (librdkafka's auto-commit sends them).
fn spawn_committer(
    consumer: Arc<Source>,
    tracker: Arc<Mutex<OffsetTracker>>,
    topic: String,
) -> TaskHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            every.tick().await;
            store_offsets(&consumer, &tracker, &topic);
        }
    })
}

/// The consumer loop: batches of messages to the compute thread until a
/// signal or idleness. Returns why it stopped; `Err` when the compute
/// thread is gone.
async fn consume(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    (consumer, assignment): (&Arc<Source>, &Arc<Assignment>),
    to_compute: &SyncSender<Input>,
    sigterm: &mut tokio::signal::unix::Signal,
    reads: &mut ReadTimes,
    sink_failed: &tokio::sync::Notify,
) -> std::result::Result<&'static str, Stop> {
    let mut last_input = Instant::now();
    let mut next_offsets: HashMap<i32, i64> = HashMap::new();
    loop {
        let batch = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok("SIGINT"),
            _ = sigterm.recv() => return Ok("SIGTERM"),
            _ = sink_failed.notified() => return Err(Stop::SinkFailed),
            b = source::next_batch(consumer, assignment, cfg.source.max_batch, cfg.source.batch_wait, Duration::from_millis(500)) => b,
        };
        let messages = match batch {
            Ok(m) => m,
            Err(e) => {
                if let Some(suppressed) = CONSUMER_ERRORS.pass() {
                    tracing::warn!(error = %e, suppressed, "consumer error; retrying (the broker may be away)");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for m in &messages {
            let n = next_offsets.entry(m.partition).or_insert(0);
            *n = (*n).max(m.offset + 1);
        }
        if !messages.is_empty() {
            last_input = Instant::now();
            reads.first.get_or_insert(last_input);
            reads.last = Some(last_input);
        } else if idle_and_caught_up(cfg, opts, consumer, last_input, &next_offsets).await {
            return Ok("idle");
        }
        let partitions = assignment.owned();
        next_offsets.retain(|p, _| partitions.contains_key(p));
        let backlogged = source::backlogged_partitions(consumer, &cfg.source.topic, &next_offsets);
        let mut lag = 0u64;
        for (&p, &next) in &next_offsets {
            if let Some(high) = source::cached_high_watermark(consumer, &cfg.source.topic, p) {
                let behind = high.saturating_sub(next).max(0);
                lag += behind as u64;
                metrics::gauge!(crate::telemetry::PARTITION_LAG, "partition" => p.to_string())
                    .set(behind as f64);
            }
        }
        let mut item = Input::Batch(Batch {
            messages,
            partitions,
            backlogged,
            lag,
        });
        // Bounded hand-off: when the compute thread is behind, wait here
        // (backpressure) instead of buffering without limit.
        loop {
            match to_compute.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    item = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(Stop::ComputeGone),
            }
        }
    }
}

static CONSUMER_ERRORS: crate::telemetry::Throttle =
    crate::telemetry::Throttle::new(Duration::from_secs(10));

/// `--exit-when-idle`: quiet for long enough *and* caught up. A consumer
/// still waiting for its assignment, or behind, is not done; idle
/// partitions close their last windows only after `idle_partition_timeout`,
/// so never stop before that has passed.
async fn idle_and_caught_up(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    consumer: &Arc<Source>,
    last_input: Instant,
    next_offsets: &HashMap<i32, i64>,
) -> bool {
    let min_idle = cfg.window.idle_partition_timeout + Duration::from_secs(2);
    let Some(idle) = opts.exit_when_idle.map(|d| d.max(min_idle)) else {
        return false;
    };
    if last_input.elapsed() < idle {
        return false;
    }
    let (c, t, n) = (
        consumer.clone(),
        cfg.source.topic.clone(),
        next_offsets.clone(),
    );
    tokio::task::spawn_blocking(move || source::caught_up(&c, &t, &n))
        .await
        .unwrap_or(false)
}

/// Stores and synchronously commits the last commit points.
fn commit_final(consumer: &Source, tracker: &Mutex<OffsetTracker>, topic: &str) {
    store_offsets(consumer, tracker, topic);
    let points = commit_list(tracker, topic);
    if points.count() > 0 {
        if let Err(e) = consumer.commit(&points, CommitMode::Sync) {
            tracing::warn!(error = %e, "final commit failed; the next start re-reads from the last commit");
        }
    }
}

fn join_compute(h: JoinHandle<Result<Totals>>) -> Result<Totals> {
    h.join().map_err(|_| Error::Panicked("compute"))?
}

fn commit_list(tracker: &Mutex<OffsetTracker>, topic: &str) -> TopicPartitionList {
    let points = tracker
        .lock()
        .map(|t| t.commit_points())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    for (p, o) in points {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
    }
    tpl
}

fn store_offsets(consumer: &Source, tracker: &Mutex<OffsetTracker>, topic: &str) {
    let tpl = commit_list(tracker, topic);
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // E.g. a partition revoked a moment ago: harmless, the next round retries.
        tracing::debug!(error = %e, "store_offsets");
    }
}

#[derive(Default)]
struct Printer {
    n: u64,
}

impl Printer {
    const FULL: u64 = 60;
    const EVERY: u64 = 250;

    fn print(&mut self, recs: &[ForecastRecord]) {
        for r in recs {
            self.n += 1;
            if self.n <= Self::FULL || self.n.is_multiple_of(Self::EVERY) {
                let vals: Vec<String> = r.forecast.iter().map(|v| format!("{v:.2}")).collect();
                // Keys are user data: escape control characters so a key
                // cannot drive the operator's terminal.
                println!(
                    "#{:<6} {:<22} {}  [{:<8}] {}",
                    self.n,
                    r.key.escape_debug().to_string(),
                    r.window_end,
                    r.source,
                    vals.join(" ")
                );
            }
            if self.n == Self::FULL {
                println!(
                    "... (from here on every {}th forecast is printed)",
                    Self::EVERY
                );
            }
        }
    }
}

/// Where the compute thread puts its live scorer, for the final summary.
type ScorerSlot = Arc<std::sync::OnceLock<Arc<Mutex<crate::score::Scorer>>>>;

fn print_summary(t: &Totals, d: &Deliveries, started: Instant, reads: &ReadTimes) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!("\n== streamcast summary ==");
    println!("messages read        {:>10}", t.messages);
    println!(
        "events windowed      {:>10}  ({:.0}/s)",
        t.events,
        t.events as f64 / secs
    );
    println!("dead letters         {:>10}", t.dead_letters);
    println!("windows closed       {:>10}", t.windows);
    println!("forecasts (model)    {:>10}", t.forecasts_from_model);
    println!("forecasts (baseline) {:>10}", t.forecasts_from_baseline);
    let fmt = |l: Option<Duration>| {
        l.map_or("-".to_string(), |l| format!("{:.1}", l.as_secs_f64() * 1e3))
    };
    let ms = |q: f64| fmt(d.latency_quantile(q));
    println!(
        "close -> ack (ms)    p50 {}  p99 {}  max {}",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    let ms = |q: f64| fmt(d.handoff_quantile(q));
    println!(
        "close -> sink (ms)   p50 {}  p99 {}  max {}",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    let since_start = |t: Instant| t.duration_since(started).as_secs_f64();
    if let (Some(first), Some(last)) = (reads.first, reads.last) {
        println!(
            "first message read   {:>9.2}s after start",
            since_start(first)
        );
        println!(
            "last message read    {:>9.2}s after start",
            since_start(last)
        );
    }
    if let Some(last) = d.last_ack {
        println!(
            "last forecast acked  {:>9.2}s after start",
            since_start(last)
        );
    }
    println!("elapsed              {:>9.1}s", secs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StateConfig;

    fn cfg(commit_ms: u64, backlog_ms: u64) -> StateConfig {
        StateConfig {
            commit_interval: Duration::from_millis(commit_ms),
            backlog_commit_interval: Duration::from_millis(backlog_ms),
            ..StateConfig::default()
        }
    }

    #[test]
    fn checkpoints_stretch_only_while_far_behind_and_never_past_the_backlog_interval() {
        let c = cfg(1000, 5000);
        let ms = Duration::from_millis;
        // Never before the commit interval, however little is left.
        assert!(!checkpoint_due(ms(999), 10, 0, &c));
        // Caught up (or behind by less than was read since): every interval.
        assert!(checkpoint_due(ms(1000), 10, 0, &c));
        assert!(checkpoint_due(ms(1000), 500, 500, &c));
        // Far behind: more waits than was read since the last checkpoint.
        assert!(!checkpoint_due(ms(1000), 500, 501, &c));
        assert!(!checkpoint_due(ms(4999), 500, 1_000_000, &c));
        // The bound on replay holds however far behind.
        assert!(checkpoint_due(ms(5000), 500, 1_000_000, &c));
        // A backlog interval below the commit interval disables stretching.
        let off = cfg(1000, 500);
        assert!(checkpoint_due(ms(1000), 0, 1_000_000, &off));
        assert!(!checkpoint_due(ms(999), 0, 1_000_000, &off));
    }
}
