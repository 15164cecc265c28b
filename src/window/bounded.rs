//! The one driver for bounded input (files, test data, evaluation): feed a
//! finished events batch through a window stage in chunks, then end it the
//! way the caller's input ends.
//!
//! Backfill, training from events and offline evaluation all window their
//! input here, so they close exactly the windows the streaming job would.

use arrow::array::RecordBatch;

use super::{Closed, WindowSpec, WindowStage};

/// Rows per chunk fed to a stage (bounds the size of one closed batch).
pub const CHUNK: usize = 65_536;

/// How a bounded input ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Close only what the newest event allows (as a stream that goes on).
    AtNewestEvent,
    /// Then move the watermark to this time (ms): an input known to be
    /// complete up to it closes every window ending at or before it.
    Through(i64),
    /// Then let wall clock pass in idle-timeout steps until nothing more
    /// closes: every partition turns idle, as when a stream stops.
    Idle,
}

/// Calls `feed` with consecutive slices of `events` of at most `chunk` rows.
pub fn in_chunks<E>(
    events: &RecordBatch,
    chunk: usize,
    mut feed: impl FnMut(&RecordBatch) -> Result<(), E>,
) -> Result<(), E> {
    let n = events.num_rows();
    let chunk = chunk.max(1);
    let mut off = 0;
    while off < n {
        let len = chunk.min(n - off);
        feed(&events.slice(off, len))?;
        off += len;
    }
    Ok(())
}

/// Runs `events` through `stage` (`chunk` rows at a time, wall clock 0) and
/// ends the input as `end` says; `on_closed` sees every stage result in
/// order (including those that closed nothing but ended keys).
pub fn run_to_end(
    stage: &mut WindowStage,
    events: &RecordBatch,
    chunk: usize,
    end: End,
    mut on_closed: impl FnMut(Closed),
) {
    let _ = in_chunks(events, chunk, |c| {
        on_closed(stage.process(c, 0));
        Ok::<(), ()>(())
    });
    match end {
        End::AtNewestEvent => {}
        End::Through(watermark_ms) => on_closed(stage.finish(watermark_ms, 0)),
        End::Idle => {
            let idle = stage.spec().idle_partition_ms.max(1);
            let mut now = 0i64;
            // Bounded: each round either closes something or ends the loop.
            for _ in 0..100_000 {
                now += idle + 1;
                let closed = stage.tick(now);
                let progressed = closed.windows.is_some() || !closed.ended_keys.is_empty();
                on_closed(closed);
                if !progressed {
                    break;
                }
            }
        }
    }
}

/// The closed-window batches (archive schema) of a bounded events batch.
pub fn closed_windows(spec: WindowSpec, events: &RecordBatch, end: End) -> Vec<RecordBatch> {
    let mut stage = WindowStage::new(spec);
    let mut out = Vec::new();
    run_to_end(&mut stage, events, CHUNK, end, |c| out.extend(c.windows));
    out
}
