//! The compute core shared by the streaming job and the backfill:
//! decode -> window -> model, on one thread that owns all their state.
//!
//! It never touches the network: it takes batches of raw messages (or of
//! already-typed events, for Parquet input) and returns [`Output`]s for a
//! sink, each with the [`Ticket`] of input positions to release once the sink
//! has them acknowledged. Because streaming and backfill call the same
//! `Core`, the same events give the same windows and the same forecasts.
//!
//! Invariant (delivery): for each input batch, pins are taken *before* the
//! batch's messages are marked consumed, under one lock of the tracker, so
//! the commit point can never pass an event whose window is still open or
//! whose forecast is unacknowledged.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;

use crate::config::PipelineConfig;
use crate::decode::{DeadLetter, Decoder, RawMessage};
use crate::error::Result;
use crate::model::{ForecastStage, ModelSpec, Network, SwapReport};
use crate::offsets::{OffsetTracker, Position, Ticket};
use crate::schema::forecasts;
use crate::sink::Output;
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
}

impl Core {
    pub fn new(cfg: &PipelineConfig, tracker: Arc<Mutex<OffsetTracker>>) -> Result<Self> {
        Ok(Core {
            decoder: Decoder::new(&cfg.decode),
            window: WindowStage::new(WindowSpec::from_config(cfg)),
            model: ForecastStage::from_config(cfg)?,
            tracker,
            totals: Totals::default(),
        })
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
            let forecasts = self.model.forecast(&windows)?;
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
        } else if !closed.ticket.is_empty() {
            // Cannot happen (a ticket comes from emitted windows), but never
            // leak a pin: release it now.
            let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            closed.ticket.iter().for_each(|p| t.unpin(*p));
        }
        self.model.end_keys(&closed.ended_keys);
        Ok(out)
    }
}

fn count_source(batch: &RecordBatch, source: &str) -> u64 {
    use arrow::array::AsArray;
    let col = batch.column(forecasts::SOURCE).as_string::<i32>();
    col.iter().filter(|s| *s == Some(source)).count() as u64
}
