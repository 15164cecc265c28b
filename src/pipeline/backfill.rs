//! Backfill: the streaming stages over Parquet in, Parquet out.
//!
//! Events are read, validated (bad rows -> `<output>.dead-letter.jsonl`),
//! sorted by event time (history is replayed in the order it happened) and
//! fed through the same `pipeline::Core` as the streaming job, in chunks,
//! with a progress bar on a terminal. One input partition, so the watermark
//! is simply the newest event time minus the allowed lateness, exactly as a
//! stream ends once all its partitions are idle: the same events give the
//! same windows and forecasts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::core::{Core, Totals};
use crate::config::PipelineConfig;
use crate::error::Result;
use crate::offsets::OffsetTracker;
use crate::sink::FileSink;
use crate::source::parquet::read_parquet_events;
use crate::window::bounded::{in_chunks, CHUNK};

/// What a backfill wrote.
#[derive(Debug, Clone)]
pub struct BackfillReport {
    pub totals: Totals,
    pub output: PathBuf,
    pub dead_letter_file: Option<PathBuf>,
    pub seconds: f64,
    /// Live accuracy of the backfill's forecasts (`score.enabled`).
    pub live_accuracy: Vec<crate::score::SummaryRow>,
}

/// Runs a backfill. Call from a plain thread (libtorch work), not a tokio worker.
pub fn backfill(cfg: &PipelineConfig, inputs: &[PathBuf], output: &Path) -> Result<BackfillReport> {
    let started = Instant::now();
    tch::set_num_threads(cfg.model.threads);
    let (events, rejected) = read_parquet_events(cfg, inputs)?;
    let mut core = Core::new(cfg, Arc::new(Mutex::new(OffsetTracker::new())))?;
    let mut sink = FileSink::create(output, core.model().schema(), "backfill")?;
    let n = events.num_rows();
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} backfill [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rejected = Some(rejected);
    if n == 0 {
        // Still write the rejected rows' dead letters.
        for o in core.on_events(&events, rejected.take().unwrap_or_default(), 0)? {
            sink.write(&o)?;
        }
    }
    in_chunks(&events, CHUNK, |chunk| {
        for o in core.on_events(chunk, rejected.take().unwrap_or_default(), 0)? {
            sink.write(&o)?;
        }
        bar.inc(chunk.num_rows() as u64);
        Ok::<(), crate::Error>(())
    })?;
    bar.finish_and_clear();
    let dead_file = (sink.dead_letters > 0).then(|| sink.dead_letter_path().to_path_buf());
    let output = sink.close()?;
    let report = BackfillReport {
        totals: core.totals(),
        output,
        dead_letter_file: dead_file,
        seconds: started.elapsed().as_secs_f64(),
        live_accuracy: core.scorer().map_or_else(Vec::new, |s| {
            s.lock().unwrap_or_else(|e| e.into_inner()).summary()
        }),
    };
    tracing::info!(
        events = report.totals.events,
        windows = report.totals.windows,
        dead_letters = report.totals.dead_letters,
        seconds = report.seconds,
        output = %report.output.display(),
        "backfill done"
    );
    Ok(report)
}
