//! The streaming job: Kafka in, forecasts out, at least once.
//!
//! Threads and tasks (data flows one way, every channel bounded):
//!
//! ```text
//! consumer task (tokio) --raw batches--> compute thread (std) --outputs--> sink task (tokio)
//!        ^                                 decode/window/model                 | acks release
//!        +----- committer task stores the tracker's commit points <-- tickets -+
//! ```
//!
//! - The consumer task only moves bytes. libtorch runs on the compute
//!   thread, never on a tokio worker.
//! - Offsets are stored only from `OffsetTracker::commit_points`, i.e. after
//!   every forecast depending on them was acknowledged (see `offsets`).
//! - SIGINT/SIGTERM: stop consuming, let the compute thread finish what it
//!   was given, wait for every delivery, commit, exit 0. Windows still open
//!   stay uncommitted and are rebuilt from Kafka on the next start.

use std::sync::mpsc::{sync_channel, RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::PipelineConfig;
use crate::decode::RawMessage;
use crate::error::{Error, Result};
use crate::offsets::OffsetTracker;
use crate::pipeline::{Core, Output, Totals};
use crate::sink::{ForecastRecord, KafkaSink};
use crate::source;

/// Options of `streamcast run` beyond the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop (gracefully) after no input for this long and nothing in flight.
    pub exit_when_idle: Option<Duration>,
    /// Print forecasts to stdout as they are acknowledged.
    pub print_forecasts: bool,
}

enum Input {
    /// Messages (possibly none: then it is a heartbeat carrying the
    /// partition state), the assigned partitions and those with a backlog.
    Batch {
        messages: Vec<RawMessage>,
        partitions: Vec<i32>,
        backlogged: Vec<i32>,
    },
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs a pipeline until a signal (or idleness, if asked). Returns totals.
pub async fn run(cfg: PipelineConfig, opts: RunOptions) -> Result<Totals> {
    let started = Instant::now();
    crate::telemetry::serve_prometheus(&cfg.telemetry)?;
    source::ensure_topics(&cfg).await?;
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let consumer = Arc::new(source::create_consumer(&cfg)?);
    let producer = source::create_producer(&cfg)?;
    let sink = KafkaSink::new(
        producer,
        cfg.sink.topic.clone(),
        cfg.sink.dead_letter_topic.clone(),
        cfg.source.topic.clone(),
        cfg.slide_ms(),
        tracker.clone(),
    );

    // Archive writer and retrainer (optional), each on its own thread.
    let archive = if cfg.archive.enabled {
        let schema = crate::window::WindowSpec::from_config(&cfg).windows_schema();
        Some(crate::archive::ArchiveHandle::spawn(
            cfg.archive_dir(),
            schema,
            cfg.archive.clone(),
        )?)
    } else {
        None
    };
    let signals = Arc::new(crate::retrain::RetrainSignals::default());
    let (swap_tx, swap_rx) = sync_channel::<(crate::model::Network, crate::model::ModelSpec)>(1);
    let retrainer = if cfg.retrain.enabled {
        let (c, s) = (cfg.clone(), signals.clone());
        Some(
            std::thread::Builder::new()
                .name("streamcast-retrain".into())
                .spawn(move || crate::retrain::run_retrainer(c, s, swap_tx))
                .map_err(|e| Error::io("starting the retrainer", e))?,
        )
    } else {
        drop(swap_tx);
        None
    };

    // Compute thread: owns decode, window and model state.
    let (in_tx, in_rx) = sync_channel::<Input>(4);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Output>(16);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<String>>();
    let compute_cfg = cfg.clone();
    let compute_tracker = tracker.clone();
    let compute_signals = signals.clone();
    let compute = std::thread::Builder::new()
        .name("streamcast-compute".into())
        .spawn(move || -> Result<Totals> {
            tch::set_num_threads(compute_cfg.model.threads);
            let mut core = match Core::new(&compute_cfg, compute_tracker) {
                Ok(c) => {
                    let _ = ready_tx.send(Ok(c.model().version().to_string()));
                    c
                }
                Err(e) => {
                    let msg = e.to_string();
                    let _ = ready_tx.send(Err(e));
                    return Err(Error::Model(msg));
                }
            };
            let mut assigned: Vec<i32> = Vec::new();
            loop {
                // A promoted model is swapped in between batches.
                if let Ok((net, spec)) = swap_rx.try_recv() {
                    match core.swap(net, spec) {
                        Ok(r) => tracing::info!(
                            keys = r.keys,
                            replayed = r.replayed_windows,
                            pause_ms = r.pause_ms,
                            "model swapped"
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "model swap refused; the champion stays")
                        }
                    }
                }
                let outputs = match in_rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(Input::Batch {
                        messages,
                        partitions,
                        backlogged,
                    }) => {
                        if partitions != assigned && !partitions.is_empty() {
                            core.assign(&partitions, now_ms());
                            assigned = partitions;
                        }
                        core.set_backlogged(&backlogged);
                        if messages.is_empty() {
                            core.tick(now_ms())?
                        } else {
                            core.on_messages(&messages, now_ms())?
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => core.tick(now_ms())?,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                for o in outputs {
                    if let Output::Forecasts { windows, .. } = &o {
                        compute_signals.windows.fetch_add(
                            windows.num_rows() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        if let Some(a) = &archive {
                            a.offer(windows.clone());
                        }
                    }
                    if out_tx.blocking_send(o).is_err() {
                        return Err(Error::StageStopped("sink"));
                    }
                }
            }
            if let Some(a) = archive {
                a.close();
            }
            Ok(core.totals())
        })
        .map_err(|e| Error::io("starting the compute thread", e))?;
    let version = ready_rx
        .await
        .map_err(|_| Error::StageStopped("compute"))??;
    tracing::info!(pipeline = %cfg.name, model_version = %version, topic = %cfg.source.topic, "running");

    // Sink task: deliveries run concurrently; each releases its own ticket.
    let print = opts.print_forecasts;
    let sink_task = tokio::spawn(async move {
        let mut inflight = FuturesUnordered::new();
        let mut printed = Printer::default();
        loop {
            tokio::select! {
                o = out_rx.recv() => match o {
                    Some(o) => inflight.push(sink.deliver(o)),
                    None => break,
                },
                Some(recs) = inflight.next(), if !inflight.is_empty() => if print { printed.print(&recs) },
            }
        }
        while let Some(recs) = inflight.next().await {
            if print {
                printed.print(&recs)
            }
        }
    });

    // Committer task.
    let commit_consumer = consumer.clone();
    let commit_tracker = tracker.clone();
    let topic = cfg.source.topic.clone();
    let committer = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            every.tick().await;
            store_offsets(&commit_consumer, &commit_tracker, &topic);
        }
    });

    // Consumer loop.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let mut last_input = Instant::now();
    let mut next_offsets: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    let stop_reason;
    loop {
        let batch = tokio::select! {
            _ = tokio::signal::ctrl_c() => { stop_reason = "SIGINT"; break }
            _ = sigterm.recv() => { stop_reason = "SIGTERM"; break }
            b = source::next_batch(&consumer, cfg.source.max_batch, cfg.source.batch_wait, Duration::from_millis(500)) => b,
        };
        let messages = match batch {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error; continuing");
                continue;
            }
        };
        for m in &messages {
            let n = next_offsets.entry(m.partition).or_insert(0);
            *n = (*n).max(m.offset + 1);
        }
        let idle_now = messages.is_empty();
        if idle_now {
            // Idle partitions close their last windows only after
            // `idle_partition_timeout`: never stop before that has passed.
            let min_idle = cfg.window.idle_partition_timeout + Duration::from_secs(2);
            if let Some(idle) = opts.exit_when_idle.map(|d| d.max(min_idle)) {
                // Idle means quiet *and* caught up: a consumer still waiting
                // for its assignment, or behind, is not done.
                if last_input.elapsed() >= idle {
                    let (c, t, n) = (
                        consumer.clone(),
                        cfg.source.topic.clone(),
                        next_offsets.clone(),
                    );
                    if tokio::task::spawn_blocking(move || source::caught_up(&c, &t, &n))
                        .await
                        .unwrap_or(false)
                    {
                        stop_reason = "idle";
                        break;
                    }
                }
            }
        } else {
            last_input = Instant::now();
        }
        let partitions = source::assigned_partitions(&consumer, &cfg.source.topic);
        next_offsets.retain(|p, _| partitions.contains(p));
        let backlogged = source::backlogged_partitions(&consumer, &cfg.source.topic, &next_offsets);
        let mut item = Input::Batch {
            messages,
            partitions,
            backlogged,
        };
        // Bounded hand-off: when the compute thread is behind, wait here
        // (backpressure) instead of buffering without limit.
        loop {
            match in_tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    item = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => {
                    committer.abort();
                    return Err(join_compute(compute)
                        .err()
                        .unwrap_or(Error::StageStopped("compute")));
                }
            }
        }
    }
    tracing::info!(reason = stop_reason, "stopping: draining in-flight work");
    drop(in_tx);
    let totals = tokio::task::spawn_blocking(move || join_compute(compute))
        .await
        .map_err(|_| Error::StageStopped("compute"))??;
    let _ = sink_task.await;
    committer.abort();
    // Stop the retrainer: a training in progress is cancelled at its next
    // batch (never promoted), and we wait for the thread, because libtorch
    // must not be computing on another thread while the process exits.
    signals
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    crate::train::request_cancel();
    if let Some(r) = retrainer {
        let _ = tokio::task::spawn_blocking(move || r.join()).await;
    }
    store_offsets(&consumer, &tracker, &cfg.source.topic);
    let points = commit_list(&tracker, &cfg.source.topic);
    if points.count() > 0 {
        if let Err(e) = consumer.commit(&points, CommitMode::Sync) {
            tracing::warn!(error = %e, "final commit failed; the next start re-reads from the last commit");
        }
    }
    print_summary(&totals, started.elapsed());
    Ok(totals)
}

fn join_compute(h: std::thread::JoinHandle<Result<Totals>>) -> Result<Totals> {
    h.join()
        .map_err(|_| Error::Model("the compute thread panicked".into()))?
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

fn store_offsets(
    consumer: &rdkafka::consumer::StreamConsumer,
    tracker: &Mutex<OffsetTracker>,
    topic: &str,
) {
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
            if self.n <= Self::FULL || self.n % Self::EVERY == 0 {
                let vals: Vec<String> = r.forecast.iter().map(|v| format!("{v:.2}")).collect();
                println!(
                    "#{:<6} {:<22} {}  [{:<8}] {}",
                    self.n,
                    r.key,
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

fn print_summary(t: &Totals, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
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
    println!("elapsed              {:>9.1}s", secs);
}
