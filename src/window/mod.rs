//! Window stage: events batches -> per-key event-time windows, as Arrow.
//!
//! Windows are aligned to the Unix epoch: window `k` covers
//! `[k*slide, k*slide + size)`. Internally every key keeps *panes* of length
//! `slide` (each event lands in exactly one pane, whatever the overlap), and
//! a window is combined from its `size/slide` panes when it closes. This is
//! the classic pane technique: per-event cost does not grow with overlap.
//!
//! Time and closing:
//! - Each partition tracks its largest event time. The watermark is the
//!   minimum over *active* partitions (those with an event within
//!   `idle_partition_timeout` of wall clock) of that maximum, minus
//!   `allowed_lateness`; when every partition is idle it is the maximum over
//!   them, so the end of a stream still closes its windows. Assigned
//!   partitions that have sent nothing hold the watermark until they turn
//!   idle. A partition with unread messages on the broker (`set_backlogged`)
//!   is behind, never idle. The watermark never goes back.
//! - With durable state (`enable_state_tracking`) time is kept per input
//!   partition instead, as Kafka Streams keeps stream time per task: an
//!   active partition's watermark is its own largest event time minus
//!   `allowed_lateness`, and its keys close and judge lateness by it; an
//!   idle one follows the instance-wide watermark above. So what a key
//!   computes does not depend on which other partitions its owner holds:
//!   a partition that moves to another instance (whose other partitions
//!   may be far ahead) continues exactly as it would have.
//! - A window closes when `end <= watermark`. All keys share the grid, so
//!   windows close only when the watermark crosses a pane boundary; only then
//!   are keys visited.
//! - An event whose last window (the one starting in its pane) has closed is
//!   late: dropped with a counter or sent to the dead letters, per policy.
//!
//! A key's series starts at the pane of its earliest event (as polars'
//! `group_by_dynamic` starts at the first point truncated to `every`) and is
//! then regular: an empty window is filled (ffill / zero / NaN) and flagged.
//! More than `max_gap_windows` empty windows in a row end the series (the
//! key is dropped; if it returns it starts afresh and the model is told to
//! reset). Keys idle past `key_ttl` (event time) or beyond `max_keys`
//! (least recently seen first) are evicted the same way, counted.
//!
//! Partitions and durable state: a key belongs to the input partition of its
//! first event. With `enable_state_tracking` (durable state), an event of
//! the key from another partition is dead-lettered (`partition_conflict`,
//! counted): merging it would split the key's state between owners once
//! partitions move between instances. (Without durable state one process
//! owns everything and merging is harmless.) The stage also remembers which keys changed since the
//! last `take_changes` (events, closed windows, ended series), so a
//! checkpoint writes only those (see `state`); `restore_partition` and
//! `drop_partition` bring a partition's keys in and out on assignment.
//!
//! Delivery bookkeeping (see `offsets`): a pane pins the first offset it
//! holds from each partition. When its last window is emitted the pins move
//! to the output's ticket (released once the forecasts are acked), and the
//! key keeps the pins of its last non-empty pane as its *continuation*, so a
//! restart replays far enough to rebuild every live key and re-emit any
//! window owed.
//!
//! Memory: per live key about 200 bytes plus the key string, plus per open
//! pane `48 + 8 * value_fields` bytes plus its pins (one per partition seen
//! in that pane); a key holds `size/slide` open panes plus those within the
//! allowed lateness. Measured figures are in BENCHMARKS.md.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, SchemaRef};

use crate::config::{Aggregation, CovariatesConfig, FillPolicy, LatePolicy, PipelineConfig};
use crate::decode::{DeadLetter, DeadLetterKind};
use crate::offsets::Position;
use crate::schema::events;
use crate::state::{PaneState, RestoredPartition, WindowKeyState};
use crate::telemetry;

/// Everything the window stage needs, validated (from `PipelineConfig`).
#[derive(Debug, Clone)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub slide_ms: i64,
    pub lateness_ms: i64,
    pub aggregation: Aggregation,
    pub fill: FillPolicy,
    pub late_policy: LatePolicy,
    pub max_gap_windows: u32,
    pub idle_partition_ms: i64,
    pub key_ttl_ms: i64,
    pub max_keys: usize,
    pub max_open_panes: u32,
    pub value_fields: Vec<String>,
    pub covariates: CovariatesConfig,
}

impl WindowSpec {
    pub fn from_config(cfg: &PipelineConfig) -> Self {
        let w = &cfg.window;
        WindowSpec {
            size_ms: cfg.size_ms(),
            slide_ms: cfg.slide_ms(),
            lateness_ms: w.allowed_lateness.as_millis() as i64,
            aggregation: w.aggregation,
            fill: w.fill,
            late_policy: w.late_policy,
            max_gap_windows: w.max_gap_windows,
            idle_partition_ms: w.idle_partition_timeout.as_millis() as i64,
            key_ttl_ms: w.key_ttl.as_millis() as i64,
            max_keys: w.max_keys,
            max_open_panes: w.max_open_panes,
            value_fields: cfg.decode.value_fields.clone(),
            covariates: w.covariates.clone(),
        }
    }

    /// Panes per window.
    fn panes_per_window(&self) -> i64 {
        self.size_ms / self.slide_ms
    }

    /// Names of the covariate columns, in order.
    pub fn covariate_names(&self) -> Vec<String> {
        let c = &self.covariates;
        let mut v = Vec::new();
        for (name, order) in [
            ("hod", c.hour_of_day),
            ("dow", c.day_of_week),
            ("doy", c.day_of_year),
        ] {
            for j in 1..=order {
                v.push(format!("{name}_sin{j}"));
                v.push(format!("{name}_cos{j}"));
            }
        }
        if !c.holidays.is_empty() {
            v.push("holiday".into());
        }
        v
    }

    /// Schema of the closed-windows batch (see `schema::windows_schema`).
    pub fn windows_schema(&self) -> SchemaRef {
        crate::schema::windows_schema(&self.value_fields, &self.covariate_names())
    }
}

/// Why a key's series ended (the `reason` label of `keys_ended_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesEnd {
    /// More than `max_gap_windows` empty windows in a row.
    Gap,
    /// No event for `key_ttl` (event time).
    Ttl,
    /// Evicted, least recently seen first, to stay within `max_keys`.
    Capacity,
}

impl SeriesEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            SeriesEnd::Gap => "gap",
            SeriesEnd::Ttl => "ttl",
            SeriesEnd::Capacity => "capacity",
        }
    }
}

/// What one call to the window stage produced.
#[derive(Debug)]
pub struct Closed {
    /// Every window that closed, all keys, sorted by (window_end, key).
    /// `None` when nothing closed.
    pub windows: Option<RecordBatch>,
    /// Keys whose series ended (gap, TTL, key cap): the model frees their state.
    pub ended_keys: Vec<Arc<str>>,
    /// Late events under `late_policy = "dead_letter"`, and (durable state)
    /// events of a key that arrived on another partition than its own.
    pub late: Vec<DeadLetter>,
    /// Positions to pin now.
    pub pin: Vec<Position>,
    /// Positions to unpin now.
    pub unpin: Vec<Position>,
    /// Positions to unpin once `windows`' forecasts are acknowledged.
    pub ticket: Vec<Position>,
    /// The watermark after this call (ms since epoch; `i64::MIN` = none yet).
    pub watermark: i64,
}

#[derive(Debug)]
struct Pane {
    count: u32,
    /// Largest event time in the pane (decides `last`).
    last_ts: i64,
    /// One accumulator per value field (sum, min, max or last by aggregation).
    acc: Box<[f64]>,
    pins: Vec<Position>,
}

impl Pane {
    fn new(n: usize, agg: Aggregation) -> Self {
        let init = match agg {
            Aggregation::Min => f64::INFINITY,
            Aggregation::Max => f64::NEG_INFINITY,
            _ => 0.0,
        };
        Pane {
            count: 0,
            last_ts: i64::MIN,
            acc: vec![init; n].into_boxed_slice(),
            pins: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct KeyState {
    key: Arc<str>,
    /// Index of the next window to emit; also the pane index of `panes[0]`.
    next_win: i64,
    panes: VecDeque<Pane>,
    emitted_any: bool,
    /// Aggregates of the last non-empty window (forward fill).
    last_values: Box<[f64]>,
    empty_run: u32,
    last_event_ts: i64,
    last_seen_seq: u64,
    /// Pins of the last non-empty emitted pane (see module docs).
    continuation: Vec<Position>,
    /// The input partition the key belongs to.
    partition: i32,
    /// Changed since the last `take_changes` (listed in `WindowStage::dirty`).
    dirty: bool,
}

impl KeyState {
    fn snapshot(&self) -> WindowKeyState {
        WindowKeyState {
            next_win: self.next_win,
            panes: self
                .panes
                .iter()
                .map(|p| PaneState {
                    count: p.count,
                    last_ts: p.last_ts,
                    acc: p.acc.to_vec(),
                })
                .collect(),
            emitted_any: self.emitted_any,
            last_values: self.last_values.to_vec(),
            empty_run: self.empty_run,
            last_event_ts: self.last_event_ts,
        }
    }
}

/// What changed since the last [`WindowStage::take_changes`].
#[derive(Debug, Default)]
pub struct WindowChanges {
    /// Live keys that changed: (partition, key, state).
    pub keys: Vec<(i32, Arc<str>, WindowKeyState)>,
    /// Keys whose series ended and that are not live again: (partition, key).
    pub ended: Vec<(i32, Arc<str>)>,
    /// Partitions whose clock moved: (partition, largest event time).
    pub clocks: Vec<(i32, Option<i64>)>,
}

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    max_ts: Option<i64>,
    last_active_ms: i64,
    /// Unread messages wait on the broker: never idle while this holds.
    backlogged: bool,
    /// Per-partition time (durable state): this partition's watermark and
    /// the last window index closed for its keys.
    watermark: i64,
    closed_through: i64,
}

impl PartitionClock {
    fn new(now_ms: i64) -> Self {
        PartitionClock {
            max_ts: None,
            last_active_ms: now_ms,
            backlogged: false,
            watermark: i64::MIN,
            closed_through: i64::MIN,
        }
    }
}

/// Rows of closed windows, gathered before sorting and building Arrow.
#[derive(Default)]
struct Rows {
    key: Vec<Arc<str>>,
    win: Vec<i64>,
    count: Vec<u32>,
    filled: Vec<bool>,
    /// Row-major aggregates, `value_fields` per row.
    values: Vec<f64>,
}

/// The window stage. Single-threaded; owned by the pipeline's compute thread.
pub struct WindowStage {
    spec: WindowSpec,
    schema: SchemaRef,
    index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    slots: Vec<Option<KeyState>>,
    free: Vec<usize>,
    live: usize,
    partitions: BTreeMap<i32, PartitionClock>,
    watermark: i64,
    /// Windows with index <= this have been closed for every key.
    closed_through: i64,
    seq: u64,
    /// Durable state: remember what changed (see module docs).
    track: bool,
    dirty: Vec<usize>,
    ended_since: Vec<(i32, Arc<str>)>,
    clocks_written: HashMap<i32, Option<i64>>,
}

impl WindowStage {
    pub fn new(spec: WindowSpec) -> Self {
        WindowStage {
            schema: spec.windows_schema(),
            spec,
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            partitions: BTreeMap::new(),
            watermark: i64::MIN,
            closed_through: i64::MIN,
            seq: 0,
            track: false,
            dirty: Vec::new(),
            ended_since: Vec::new(),
            clocks_written: HashMap::new(),
        }
    }

    /// Starts remembering which keys change, for checkpoints.
    pub fn enable_state_tracking(&mut self) {
        self.track = true;
    }

    /// The keys (and partition clocks) that changed since the last call.
    pub fn take_changes(&mut self) -> WindowChanges {
        let mut out = WindowChanges::default();
        for slot in std::mem::take(&mut self.dirty) {
            if let Some(st) = self.slots[slot].as_mut().filter(|st| st.dirty) {
                st.dirty = false;
                out.keys.push((st.partition, st.key.clone(), st.snapshot()));
            }
        }
        for (p, key) in std::mem::take(&mut self.ended_since) {
            let live_here = self
                .index
                .get(&key)
                .and_then(|&s| self.slots[s].as_ref())
                .is_some_and(|st| st.partition == p);
            if !live_here {
                out.ended.push((p, key));
            }
        }
        for (&p, c) in &self.partitions {
            if self.clocks_written.get(&p) != Some(&c.max_ts) {
                self.clocks_written.insert(p, c.max_ts);
                out.clocks.push((p, c.max_ts));
            }
        }
        out
    }

    /// The input partition `key` belongs to, if it is live.
    pub fn partition_of(&self, key: &str) -> Option<i32> {
        self.index
            .get(key)
            .and_then(|&s| self.slots[s].as_ref())
            .map(|st| st.partition)
    }

    /// Brings a partition's restored keys and clock in (on assignment).
    /// Returns keys evicted to stay within `max_keys` (the model frees them).
    pub fn restore_partition(&mut self, r: &RestoredPartition, now_ms: i64) -> Vec<Arc<str>> {
        let mut out = self.empty_closed();
        let clock = self
            .partitions
            .entry(r.partition)
            .or_insert(PartitionClock::new(now_ms));
        clock.max_ts = match (clock.max_ts, r.clock) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(m) = clock.max_ts {
            clock.watermark = clock.watermark.max(m.saturating_sub(self.spec.lateness_ms));
        }
        // Visit the restored keys at the next advance (windows owed close).
        clock.closed_through = i64::MIN;
        self.clocks_written.insert(r.partition, clock.max_ts);
        let nf = self.spec.value_fields.len();
        for (key, w) in &r.windows {
            if self.index.contains_key(key) {
                tracing::warn!(key = %key.escape_debug(), partition = r.partition, "restored key is already live on another partition; keeping the live one");
                continue;
            }
            let slot = self.insert_key(key, w.next_win, r.partition, &mut out);
            let Some(st) = self.slots[slot].as_mut() else {
                continue;
            };
            st.panes = w
                .panes
                .iter()
                .map(|p| Pane {
                    count: p.count,
                    last_ts: p.last_ts,
                    acc: fit(&p.acc, nf, f64::NAN),
                    pins: Vec::new(),
                })
                .collect();
            st.emitted_any = w.emitted_any;
            st.last_values = fit(&w.last_values, nf, f64::NAN);
            st.empty_run = w.empty_run;
            st.last_event_ts = w.last_event_ts;
            if self.closed_through != i64::MIN {
                // Windows owed before the stage's closing point close at
                // the next advance.
                self.closed_through = self.closed_through.min(w.next_win - 1);
            }
        }
        out.ended_keys
    }

    /// Drops every key of a revoked partition, without ending their series
    /// (their state stays on the changelog for the next owner). Returns the
    /// dropped keys (the model frees them) and the pins to release.
    pub fn drop_partition(&mut self, partition: i32) -> (Vec<Arc<str>>, Vec<Position>) {
        let (mut keys, mut unpin) = (Vec::new(), Vec::new());
        for slot in 0..self.slots.len() {
            if self.slots[slot]
                .as_ref()
                .is_some_and(|st| st.partition == partition)
            {
                if let Some(st) = self.slots[slot].take() {
                    for pn in &st.panes {
                        unpin.extend_from_slice(&pn.pins);
                    }
                    unpin.extend_from_slice(&st.continuation);
                    self.index.remove(&st.key);
                    keys.push(st.key);
                    self.free.push(slot);
                    self.live -= 1;
                }
            }
        }
        self.partitions.remove(&partition);
        self.clocks_written.remove(&partition);
        self.ended_since.retain(|(p, _)| *p != partition);
        (keys, unpin)
    }

    fn empty_closed(&self) -> Closed {
        Closed {
            windows: None,
            ended_keys: Vec::new(),
            late: Vec::new(),
            pin: Vec::new(),
            unpin: Vec::new(),
            ticket: Vec::new(),
            watermark: self.watermark,
        }
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn live_keys(&self) -> usize {
        self.live
    }

    /// Sets the assigned partitions. New ones hold the watermark until they
    /// send an event or turn idle; revoked ones stop counting.
    pub fn assign(&mut self, partitions: &[i32], now_ms: i64) {
        self.partitions.retain(|p, _| partitions.contains(p));
        for &p in partitions {
            self.partitions
                .entry(p)
                .or_insert(PartitionClock::new(now_ms));
        }
    }

    /// Marks which partitions still have unread messages on the broker. A
    /// backlogged partition is behind, not idle: it keeps holding the
    /// watermark however long since its last event, so a consumer working
    /// through a backlog one partition at a time never makes the others'
    /// events late.
    pub fn set_backlogged(&mut self, backlogged: &[i32]) {
        for (p, c) in self.partitions.iter_mut() {
            c.backlogged = backlogged.contains(p);
        }
    }

    /// Takes one events batch (schema of `schema::events_schema`) and closes
    /// whatever windows the new watermark allows. `now_ms` is the wall clock,
    /// used only for partition idleness.
    pub fn process(&mut self, events: &RecordBatch, now_ms: i64) -> Closed {
        let mut out = self.empty_closed();
        self.ingest(events, now_ms, &mut out);
        self.advance(now_ms, &mut out);
        out
    }

    /// Advances the watermark by wall clock alone (idle partitions) and closes
    /// what it can. Call it when no events arrived for a while.
    pub fn tick(&mut self, now_ms: i64) -> Closed {
        let empty = RecordBatch::new_empty(crate::schema::events_schema(&self.spec.value_fields));
        self.process(&empty, now_ms)
    }

    /// Ends a bounded input: moves the watermark to `watermark_ms` (e.g. the
    /// end of the last window of a finished file) and closes what it allows,
    /// as a stream processor does with its final watermark at end of input.
    pub fn finish(&mut self, watermark_ms: i64, now_ms: i64) -> Closed {
        self.watermark = self.watermark.max(watermark_ms);
        for c in self.partitions.values_mut() {
            c.watermark = c.watermark.max(watermark_ms);
        }
        self.tick(now_ms)
    }

    fn ingest(&mut self, batch: &RecordBatch, now_ms: i64, out: &mut Closed) {
        let n = batch.num_rows();
        if n == 0 {
            return;
        }
        let keys = batch.column(events::KEY).as_string::<i32>();
        let ts = batch
            .column(events::TS_MS)
            .as_primitive::<Int64Type>()
            .values();
        let part = batch
            .column(events::PARTITION)
            .as_primitive::<Int32Type>()
            .values();
        let off = batch
            .column(events::OFFSET)
            .as_primitive::<Int64Type>()
            .values();
        let nf = self.spec.value_fields.len();
        let vals: Vec<&[f64]> = (0..nf)
            .map(|i| {
                batch
                    .column(events::FIRST_VALUE + i)
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .values()
                    .as_ref()
            })
            .collect();
        let slide = self.spec.slide_ms;
        let r = self.spec.panes_per_window();
        let agg = self.spec.aggregation;
        let mut late = 0u64;
        let mut conflicts = 0u64;
        let mut spans = 0u64;
        let mut row_vals = vec![0.0; nf];
        for i in 0..n {
            let t = ts[i];
            let pane = t.div_euclid(slide);
            let (p, o) = (part[i], off[i]);
            let clock = self
                .partitions
                .entry(p)
                .or_insert(PartitionClock::new(now_ms));
            let clock_before = clock.max_ts;
            clock.max_ts = Some(clock.max_ts.map_or(t, |m| m.max(t)));
            clock.last_active_ms = now_ms;
            let wm = if self.track {
                clock.watermark
            } else {
                self.watermark
            };
            // Late: the last window holding this pane has closed.
            let window_closed = (pane + r).saturating_mul(slide) <= wm;
            let key = keys.value(i);
            let slot = match self.index.get(key) {
                Some(&s) => Some(s),
                None if window_closed => None,
                None => Some(self.insert_key(key, pane, p, out)),
            };
            let st = slot.and_then(|s| self.slots[s].as_mut());
            let Some(st) =
                st.filter(|st| !window_closed && (pane >= st.next_win || !st.emitted_any))
            else {
                late += 1;
                if self.spec.late_policy == LatePolicy::DeadLetter {
                    for (j, v) in row_vals.iter_mut().enumerate() {
                        *v = vals[j][i];
                    }
                    out.late.push(late_letter(
                        key,
                        t,
                        &self.spec.value_fields,
                        &row_vals,
                        p,
                        o,
                        wm,
                    ));
                }
                continue;
            };
            if self.track && st.partition != p {
                conflicts += 1;
                for (j, v) in row_vals.iter_mut().enumerate() {
                    *v = vals[j][i];
                }
                out.late.push(conflict_letter(
                    key,
                    t,
                    &self.spec.value_fields,
                    &row_vals,
                    (p, o),
                    st.partition,
                ));
                continue;
            }
            // The span of the key's open panes with this event in them.
            let newest = (st.next_win + st.panes.len() as i64 - 1).max(pane);
            let span = newest - st.next_win.min(pane) + 1;
            if span > i64::from(self.spec.max_open_panes) {
                spans += 1;
                for (j, v) in row_vals.iter_mut().enumerate() {
                    *v = vals[j][i];
                }
                out.late.push(span_letter(
                    key,
                    t,
                    &self.spec.value_fields,
                    &row_vals,
                    (p, o),
                    (st.next_win * slide, span, self.spec.max_open_panes),
                ));
                if let Some(c) = self.partitions.get_mut(&p) {
                    c.max_ts = clock_before;
                }
                continue;
            }
            if self.track && !st.dirty {
                st.dirty = true;
                if let Some(s) = slot {
                    self.dirty.push(s);
                }
            }
            self.seq += 1;
            st.last_seen_seq = self.seq;
            st.last_event_ts = st.last_event_ts.max(t);
            if pane < st.next_win {
                // Out of order, before anything of this key was emitted: the
                // series starts earlier than first thought.
                for _ in pane..st.next_win {
                    st.panes.push_front(Pane::new(nf, agg));
                }
                st.next_win = pane;
            }
            let idx = (pane - st.next_win) as usize;
            while st.panes.len() <= idx {
                st.panes.push_back(Pane::new(nf, agg));
            }
            let pn = &mut st.panes[idx];
            if !pn.pins.iter().any(|&(pp, _)| pp == p) {
                pn.pins.push((p, o));
                out.pin.push((p, o));
            }
            pn.count += 1;
            let is_last = t >= pn.last_ts;
            pn.last_ts = pn.last_ts.max(t);
            for (j, a) in pn.acc.iter_mut().enumerate() {
                let v = vals[j][i];
                match agg {
                    Aggregation::Mean | Aggregation::Sum => *a += v,
                    Aggregation::Min => *a = a.min(v),
                    Aggregation::Max => *a = a.max(v),
                    Aggregation::Last if is_last => *a = v,
                    Aggregation::Last | Aggregation::Count => {}
                }
            }
        }
        if late > 0 {
            metrics::counter!(telemetry::LATE_EVENTS).increment(late);
        }
        if conflicts > 0 {
            metrics::counter!(telemetry::PARTITION_CONFLICTS).increment(conflicts);
        }
        if spans > 0 {
            metrics::counter!(telemetry::DEAD_LETTERS, "kind" => DeadLetterKind::BadTimestamp.as_str())
                .increment(spans);
        }
    }

    fn insert_key(&mut self, key: &str, pane: i64, partition: i32, out: &mut Closed) -> usize {
        if self.live >= self.spec.max_keys {
            self.evict_least_recent(out);
        }
        let nf = self.spec.value_fields.len();
        let st = KeyState {
            key: Arc::from(key),
            next_win: pane,
            panes: VecDeque::new(),
            emitted_any: false,
            last_values: vec![f64::NAN; nf].into_boxed_slice(),
            empty_run: 0,
            last_event_ts: i64::MIN,
            last_seen_seq: self.seq,
            continuation: Vec::new(),
            partition,
            dirty: self.track,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(st);
                s
            }
            None => {
                self.slots.push(Some(st));
                self.slots.len() - 1
            }
        };
        self.index.insert(Arc::from(key), slot);
        self.live += 1;
        if self.track {
            self.dirty.push(slot);
        }
        slot
    }

    /// Evicts the least recently seen 1% of keys (at least one): amortised
    /// O(1) per new key, where an exact LRU would cost a heap op per event.
    fn evict_least_recent(&mut self, out: &mut Closed) {
        let mut seqs: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (s.last_seen_seq, i)))
            .collect();
        let k = (seqs.len() / 100).max(1).min(seqs.len());
        if k == 0 {
            return;
        }
        seqs.select_nth_unstable(k - 1);
        for &(_, slot) in &seqs[..k] {
            if let Some(letter) = self.slots[slot]
                .as_ref()
                .and_then(|st| evicted_letter(st, &self.spec))
            {
                out.late.push(letter);
            }
            self.end_key(slot, SeriesEnd::Capacity, out);
        }
    }

    fn end_key(&mut self, slot: usize, reason: SeriesEnd, out: &mut Closed) {
        if let Some(st) = self.slots[slot].take() {
            for pn in &st.panes {
                out.unpin.extend_from_slice(&pn.pins);
            }
            out.unpin.extend_from_slice(&st.continuation);
            self.index.remove(&st.key);
            if self.track {
                self.ended_since.push((st.partition, st.key.clone()));
            }
            out.ended_keys.push(st.key);
            self.free.push(slot);
            self.live -= 1;
            metrics::counter!(telemetry::KEYS_ENDED, "reason" => reason.as_str()).increment(1);
        }
    }

    fn compute_watermark(&self, now_ms: i64) -> Option<i64> {
        let idle = self.spec.idle_partition_ms;
        let mut active_min: Option<i64> = None;
        let mut any_active = false;
        let mut active_unknown = false;
        let mut all_max: Option<i64> = None;
        for c in self.partitions.values() {
            if let Some(m) = c.max_ts {
                all_max = Some(all_max.map_or(m, |a| a.max(m)));
            }
            if c.backlogged || now_ms - c.last_active_ms < idle {
                any_active = true;
                match c.max_ts {
                    Some(m) => active_min = Some(active_min.map_or(m, |a| a.min(m))),
                    None => active_unknown = true,
                }
            }
        }
        let base = if any_active {
            if active_unknown {
                return None;
            }
            active_min
        } else {
            all_max
        };
        base.map(|b| b.saturating_sub(self.spec.lateness_ms))
    }

    /// Per-partition time: each partition's watermark (see module docs).
    fn advance_partitions(&mut self, now_ms: i64) {
        let idle = self.spec.idle_partition_ms;
        let global = self.watermark;
        for c in self.partitions.values_mut() {
            let active = c.backlogged || now_ms - c.last_active_ms < idle;
            let own = c.max_ts.map(|m| m.saturating_sub(self.spec.lateness_ms));
            let base = if active { own } else { own.max(Some(global)) };
            if let Some(b) = base {
                c.watermark = c.watermark.max(b);
            }
        }
    }

    /// The last window index each partition may close, and whether any
    /// partition moved past what it closed (per-partition time).
    fn partition_closing_points(&mut self) -> (HashMap<i32, i64>, bool) {
        let r = self.spec.panes_per_window();
        let slide = self.spec.slide_ms;
        let mut moved = false;
        let mut last = HashMap::with_capacity(self.partitions.len());
        for (&p, c) in self.partitions.iter_mut() {
            if c.watermark == i64::MIN {
                continue;
            }
            let l = c.watermark.div_euclid(slide) - r;
            if c.closed_through == i64::MIN || l > c.closed_through {
                moved = true;
                c.closed_through = l;
            }
            last.insert(p, l);
        }
        (last, moved)
    }

    fn advance(&mut self, now_ms: i64, out: &mut Closed) {
        if let Some(wm) = self.compute_watermark(now_ms) {
            self.watermark = self.watermark.max(wm);
        }
        out.watermark = self.watermark;
        if self.watermark != i64::MIN {
            metrics::gauge!(telemetry::WATERMARK_DELAY)
                .set(crate::time::now_ms().saturating_sub(self.watermark) as f64 / 1000.0);
        }
        let per_partition = if self.track {
            self.advance_partitions(now_ms);
            let (last, moved) = self.partition_closing_points();
            if !moved {
                return;
            }
            Some(last)
        } else {
            None
        };
        if per_partition.is_none() && self.watermark == i64::MIN {
            return;
        }
        let r = self.spec.panes_per_window();
        // Last window index with end <= watermark.
        let global_last = self.watermark.div_euclid(self.spec.slide_ms) - r;
        if per_partition.is_none() {
            if global_last <= self.closed_through && self.closed_through != i64::MIN {
                return;
            }
            self.closed_through = global_last;
        }
        let mut rows = Rows::default();
        let ttl = self.spec.key_ttl_ms;
        let mut ended: Vec<(usize, SeriesEnd)> = Vec::new();
        for slot in 0..self.slots.len() {
            let Some(st) = self.slots[slot].as_mut() else {
                continue;
            };
            let (last, wm) = match &per_partition {
                Some(points) => match (
                    points.get(&st.partition),
                    self.partitions.get(&st.partition),
                ) {
                    (Some(&l), Some(c)) => (l, c.watermark),
                    _ => continue, // its partition has no time yet
                },
                None => (global_last, self.watermark),
            };
            if self.track && !st.dirty && st.next_win <= last {
                st.dirty = true;
                self.dirty.push(slot);
            }
            if let Some(reason) = close_key(st, last, &self.spec, &mut rows, out) {
                ended.push((slot, reason));
            } else if st.last_event_ts != i64::MIN && wm.saturating_sub(st.last_event_ts) > ttl {
                ended.push((slot, SeriesEnd::Ttl));
            }
        }
        for (slot, reason) in ended {
            // Events past a gap may already sit in the key's panes (they came
            // before the watermark closed the gap): they start the key's new
            // series rather than vanish with the old one.
            let rest = match (reason, self.slots[slot].as_mut()) {
                (SeriesEnd::Gap, Some(st)) => {
                    st.panes.iter().position(|pn| pn.count > 0).map(|i| {
                        (
                            st.partition,
                            st.key.clone(),
                            st.next_win + i as i64,
                            st.panes.split_off(i),
                            st.last_event_ts,
                            st.last_seen_seq,
                        )
                    })
                }
                _ => None,
            };
            self.end_key(slot, reason, out);
            if let Some((partition, key, next_win, panes, last_event_ts, last_seen_seq)) = rest {
                let s = self.insert_key(&key, next_win, partition, out);
                if let Some(st) = self.slots[s].as_mut() {
                    st.panes = panes;
                    st.last_event_ts = last_event_ts;
                    st.last_seen_seq = last_seen_seq;
                }
                // Windows of the new series that could close now are emitted
                // by the next call, not with this output, which ends the key.
                self.closed_through = self.closed_through.min(next_win - 1);
                if let Some(c) = self.partitions.get_mut(&partition) {
                    c.closed_through = c.closed_through.min(next_win - 1);
                }
            }
        }
        if !rows.key.is_empty() {
            metrics::counter!(telemetry::WINDOWS_CLOSED).increment(rows.key.len() as u64);
            out.windows = Some(self.build(rows));
        }
        metrics::gauge!(telemetry::LIVE_KEYS).set(self.live as f64);
    }

    fn build(&self, rows: Rows) -> RecordBatch {
        let n = rows.key.len();
        let nf = self.spec.value_fields.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_unstable_by(|&a, &b| {
            rows.win[a]
                .cmp(&rows.win[b])
                .then_with(|| rows.key[a].cmp(&rows.key[b]))
        });
        let mut b = WindowsBuilder::with_schema(&self.spec, self.schema.clone(), n);
        for &i in &order {
            b.push(
                &rows.key[i],
                rows.win[i] * self.spec.slide_ms,
                rows.count[i],
                rows.filled[i],
                &rows.values[i * nf..(i + 1) * nf],
            );
        }
        b.finish()
    }
}

/// Emits every window of `st` with index <= `last`. Returns why the key's
/// series ended, if it did.
fn close_key(
    st: &mut KeyState,
    last: i64,
    spec: &WindowSpec,
    rows: &mut Rows,
    out: &mut Closed,
) -> Option<SeriesEnd> {
    let r = spec.panes_per_window() as usize;
    let nf = spec.value_fields.len();
    let agg = spec.aggregation;
    let mut combined = vec![0.0; nf];
    while st.next_win <= last {
        // Combine panes next_win .. next_win + r - 1 (those that exist).
        let mut count = 0u32;
        let mut last_ts = i64::MIN;
        for (j, c) in combined.iter_mut().enumerate() {
            *c = match agg {
                Aggregation::Min => f64::INFINITY,
                Aggregation::Max => f64::NEG_INFINITY,
                _ => 0.0,
            };
            let _ = j;
        }
        for pn in st.panes.iter().take(r) {
            if pn.count == 0 {
                continue;
            }
            count += pn.count;
            let newer = pn.last_ts >= last_ts;
            last_ts = last_ts.max(pn.last_ts);
            for (c, a) in combined.iter_mut().zip(pn.acc.iter()) {
                match agg {
                    Aggregation::Mean | Aggregation::Sum => *c += a,
                    Aggregation::Min => *c = c.min(*a),
                    Aggregation::Max => *c = c.max(*a),
                    Aggregation::Last if newer => *c = *a,
                    Aggregation::Last | Aggregation::Count => {}
                }
            }
        }
        let filled = count == 0;
        if filled {
            st.empty_run += 1;
            if st.empty_run > spec.max_gap_windows || !st.emitted_any {
                return Some(SeriesEnd::Gap);
            }
            match spec.fill {
                FillPolicy::Ffill => combined.copy_from_slice(&st.last_values),
                FillPolicy::Zero => combined.iter_mut().for_each(|c| *c = 0.0),
                FillPolicy::Missing => combined.iter_mut().for_each(|c| *c = f64::NAN),
            }
        } else {
            st.empty_run = 0;
            match agg {
                Aggregation::Mean => combined.iter_mut().for_each(|c| *c /= count as f64),
                Aggregation::Count => combined.iter_mut().for_each(|c| *c = count as f64),
                _ => {}
            }
            st.last_values.copy_from_slice(&combined);
        }
        rows.key.push(st.key.clone());
        rows.win.push(st.next_win);
        rows.count.push(count);
        rows.filled.push(filled);
        rows.values.extend_from_slice(&combined);
        st.emitted_any = true;
        // Pane `next_win` has now been in its last window: hand its pins to
        // the ticket, and keep them as the key's continuation if it had data.
        if let Some(pn) = st.panes.pop_front() {
            if pn.count > 0 {
                out.unpin.append(&mut st.continuation);
                out.pin.extend_from_slice(&pn.pins);
                st.continuation = pn.pins.clone();
            }
            out.ticket.extend(pn.pins);
        }
        st.next_win += 1;
    }
    None
}

/// `v` resized to `n` (a pipeline whose value fields changed), padded with `pad`.
fn fit(v: &[f64], n: usize, pad: f64) -> Box<[f64]> {
    (0..n).map(|i| v.get(i).copied().unwrap_or(pad)).collect()
}

fn conflict_letter(
    key: &str,
    ts: i64,
    fields: &[String],
    vals: &[f64],
    (p, o): Position,
    home: i32,
) -> DeadLetter {
    let reason = format!(
        "key {:?} belongs to input partition {home} (its first event came there) but this event came on partition {p}; \
         produce each key to one partition (use the key as the message key)",
        key.escape_debug().take(64).collect::<String>()
    );
    event_letter(
        DeadLetterKind::PartitionConflict,
        reason,
        key,
        ts,
        fields,
        vals,
        (p, o),
    )
}

/// An event that would stretch its key's open panes past
/// `window.max_open_panes`; `open` is (start of the key's oldest open
/// window, the span it would have, the limit).
fn span_letter(
    key: &str,
    ts: i64,
    fields: &[String],
    vals: &[f64],
    at: Position,
    (oldest_ms, span, limit): (i64, i64, u32),
) -> DeadLetter {
    let reason = format!(
        "event time {} is too far from its key's open windows (oldest {}): it would open {span} panes, more than window.max_open_panes ({limit})",
        crate::time::rfc3339_ms(ts),
        crate::time::rfc3339_ms(oldest_ms),
    );
    event_letter(
        DeadLetterKind::BadTimestamp,
        reason,
        key,
        ts,
        fields,
        vals,
        at,
    )
}

/// The events still in an evicted key's open panes, as one dead letter
/// (`evicted`): they will never be in a window, and the individual records
/// are no longer held, so the letter says how many there were, where the
/// first came from, and each open pane's count and aggregates.
fn evicted_letter(st: &KeyState, spec: &WindowSpec) -> Option<DeadLetter> {
    let open: Vec<(i64, &Pane)> = st
        .panes
        .iter()
        .enumerate()
        .filter(|(_, pn)| pn.count > 0)
        .map(|(i, pn)| (st.next_win + i as i64, pn))
        .collect();
    let &(_, first) = open.first()?;
    let &(partition, offset) = first.pins.first()?;
    let events: u64 = open.iter().map(|(_, pn)| u64::from(pn.count)).sum();
    let panes: Vec<serde_json::Value> = open
        .iter()
        .map(|(i, pn)| {
            serde_json::json!({
                "pane_start_ms": i.saturating_mul(spec.slide_ms),
                "events": pn.count,
                "accumulators": spec.value_fields.iter().zip(pn.acc.iter())
                    .map(|(f, a)| (f.clone(), serde_json::json!(a)))
                    .collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    let payload = serde_json::json!({"key": &*st.key, "events": events, "panes": panes});
    Some(DeadLetter {
        kind: DeadLetterKind::Evicted,
        reason: format!(
            "evicted: key {:?} had {events} events in open windows when window.max_keys ({}) was reached; the least recently seen keys are evicted",
            st.key.escape_debug().take(64).collect::<String>(),
            spec.max_keys
        ),
        partition,
        offset,
        payload: payload.to_string().into_bytes(),
    })
}

fn late_letter(
    key: &str,
    ts: i64,
    fields: &[String],
    vals: &[f64],
    p: i32,
    o: i64,
    wm: i64,
) -> DeadLetter {
    let reason = format!(
        "late: event time {ts} ms is behind the watermark {wm} ms and its window has closed"
    );
    event_letter(DeadLetterKind::Late, reason, key, ts, fields, vals, (p, o))
}

/// A dead letter for a decoded event (its JSON rebuilt from the event).
fn event_letter(
    kind: DeadLetterKind,
    reason: String,
    key: &str,
    ts: i64,
    fields: &[String],
    vals: &[f64],
    (p, o): Position,
) -> DeadLetter {
    let mut obj = serde_json::Map::new();
    obj.insert("key".into(), key.into());
    obj.insert("ts_ms".into(), ts.into());
    for (f, v) in fields.iter().zip(vals) {
        obj.insert(f.clone(), (*v).into());
    }
    DeadLetter {
        kind,
        reason,
        partition: p,
        offset: o,
        payload: serde_json::Value::Object(obj).to_string().into_bytes(),
    }
}

pub mod bounded;
mod builder;
mod covariates;
pub use builder::WindowsBuilder;
pub use covariates::covariates;

#[cfg(test)]
mod tests;
