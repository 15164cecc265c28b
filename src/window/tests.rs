//! Tests of the window stage (unit tests and property tests against polars).
//!
//! Layout:
//! - helpers: spec/event builders, a `Run` harness that feeds the stage,
//!   collects rows and keeps a pin ledger (checked after every call against
//!   the pins the live state and outstanding tickets hold);
//! - unit tests, grouped by topic (closing, aggregation, watermark, lateness,
//!   fill/gap, eviction, covariates, offset pins);
//! - property tests: the stage against polars `group_by_dynamic`, and
//!   "no event is lost" across gap resets.
use super::*;

use std::collections::BTreeMap;
use std::f64::consts::PI;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt32Type};
use proptest::prelude::*;

use crate::decode::DeadLetter;
use crate::offsets::{OffsetTracker, Position, Ticket};
use crate::schema::{events_schema, windows::FIRST_AGG as FIRST_AGG_COLUMN, EventsBuilder};

// ---------------------------------------------------------------- helpers

/// Wall-clock idle timeout used by most tests: far beyond any `now_ms` they
/// pass, so every partition stays active unless a test says otherwise.
const IDLE: i64 = 1_000_000;
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

fn spec(size: i64, slide: i64, lateness: i64, agg: Aggregation) -> WindowSpec {
    WindowSpec {
        size_ms: size,
        slide_ms: slide,
        lateness_ms: lateness,
        aggregation: agg,
        fill: FillPolicy::Ffill,
        late_policy: LatePolicy::DeadLetter,
        max_gap_windows: 1000,
        idle_partition_ms: IDLE,
        key_ttl_ms: i64::MAX / 4,
        max_keys: 1_000_000,
        max_open_panes: 100_000,
        value_fields: vec!["value".into()],
        covariates: CovariatesConfig::default(),
    }
}

fn fields(n: usize) -> Vec<String> {
    (0..n).map(|j| format!("v{j}")).collect()
}

#[derive(Debug, Clone)]
struct Ev {
    key: String,
    ts: i64,
    part: i32,
    off: i64,
    vals: Vec<f64>,
}

fn ev(key: &str, ts: i64, part: i32, off: i64, vals: &[f64]) -> Ev {
    Ev {
        key: key.into(),
        ts,
        part,
        off,
        vals: vals.to_vec(),
    }
}

fn batch(value_fields: &[String], evs: &[Ev]) -> RecordBatch {
    let mut b = EventsBuilder::new(events_schema(value_fields), evs.len());
    for e in evs {
        assert_eq!(
            e.vals.len(),
            value_fields.len(),
            "test event has the wrong number of values"
        );
        b.push(&e.key, e.ts, e.part, e.off, &e.vals);
    }
    b.finish()
}

/// One closed window, read back from the Arrow batch.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    key: String,
    start: i64,
    end: i64,
    count: u32,
    filled: bool,
    vals: Vec<f64>,
    /// Covariate columns, in schema order.
    covs: Vec<f64>,
}

fn rows_of(b: &RecordBatch, nf: usize) -> Vec<Row> {
    let key = b.column(0).as_string::<i32>();
    let start = b.column(1).as_primitive::<TimestampMillisecondType>();
    let end = b.column(2).as_primitive::<TimestampMillisecondType>();
    let count = b.column(3).as_primitive::<UInt32Type>();
    let filled = b.column(4).as_boolean();
    let ncov = b.num_columns() - FIRST_AGG_COLUMN - nf;
    (0..b.num_rows())
        .map(|i| Row {
            key: key.value(i).to_string(),
            start: start.value(i),
            end: end.value(i),
            count: count.value(i),
            filled: filled.value(i),
            vals: (0..nf)
                .map(|j| {
                    b.column(FIRST_AGG_COLUMN + j)
                        .as_primitive::<Float64Type>()
                        .value(i)
                })
                .collect(),
            covs: (0..ncov)
                .map(|j| {
                    b.column(FIRST_AGG_COLUMN + nf + j)
                        .as_primitive::<Float64Type>()
                        .value(i)
                })
                .collect(),
        })
        .collect()
}

/// What one call produced, in plain values.
#[derive(Debug, Default)]
struct Step {
    rows: Vec<Row>,
    ended: Vec<String>,
    late: Vec<DeadLetter>,
    pin: Vec<Position>,
    unpin: Vec<Position>,
    ticket: Vec<Position>,
    watermark: i64,
}

/// Drives a stage like the pipeline does and keeps a pin ledger: for each
/// call, pins are applied, then unpins, then (unless held) the ticket is
/// released. After every call the ledger must equal exactly the pins held by
/// live keys (open panes + continuations) plus the held tickets.
struct Run {
    stage: WindowStage,
    nf: usize,
    rows: Vec<Row>,
    ended: Vec<String>,
    late: Vec<DeadLetter>,
    ledger: BTreeMap<Position, i64>,
    tracker: OffsetTracker,
    hold_tickets: bool,
    held: Vec<Ticket>,
}

impl Run {
    fn new(spec: WindowSpec) -> Self {
        let nf = spec.value_fields.len();
        Run {
            stage: WindowStage::new(spec),
            nf,
            rows: Vec::new(),
            ended: Vec::new(),
            late: Vec::new(),
            ledger: BTreeMap::new(),
            tracker: OffsetTracker::new(),
            hold_tickets: false,
            held: Vec::new(),
        }
    }

    fn feed(&mut self, evs: &[Ev], now: i64) -> Step {
        let b = batch(&self.stage.spec().value_fields.clone(), evs);
        let c = self.stage.process(&b, now);
        self.absorb(c)
    }

    fn tick(&mut self, now: i64) -> Step {
        let c = self.stage.tick(now);
        self.absorb(c)
    }

    fn absorb(&mut self, c: Closed) -> Step {
        let step = Step {
            rows: c
                .windows
                .as_ref()
                .map(|b| rows_of(b, self.nf))
                .unwrap_or_default(),
            ended: c.ended_keys.iter().map(|k| k.to_string()).collect(),
            late: c.late.clone(),
            pin: c.pin.clone(),
            unpin: c.unpin.clone(),
            ticket: c.ticket.clone(),
            watermark: c.watermark,
        };
        if c.windows.is_none() {
            assert!(c.ticket.is_empty(), "a ticket without windows");
        }
        for &p in &c.pin {
            *self.ledger.entry(p).or_insert(0) += 1;
            self.tracker.pin(p);
        }
        for &p in &c.unpin {
            let n = self.ledger.entry(p).or_insert(0);
            *n -= 1;
            assert!(*n >= 0, "unpin of {p:?} that is not pinned");
            self.tracker.unpin(p);
        }
        let t = Ticket { pins: c.ticket };
        for p in &t.pins {
            assert!(
                self.ledger.get(p).copied().unwrap_or(0) > 0,
                "ticket holds {p:?} that is not pinned"
            );
        }
        if self.hold_tickets {
            self.held.push(t);
        } else {
            self.release(&t);
        }
        self.check_ledger();
        self.rows.extend(step.rows.iter().cloned());
        self.ended.extend(step.ended.iter().cloned());
        self.late.extend(step.late.iter().cloned());
        step
    }

    fn release(&mut self, t: &Ticket) {
        for &p in &t.pins {
            let n = self.ledger.entry(p).or_insert(0);
            *n -= 1;
            assert!(*n >= 0, "ticket releases {p:?} that is not pinned");
        }
        self.tracker.release(t);
    }

    fn release_held(&mut self) {
        for t in std::mem::take(&mut self.held) {
            self.release(&t);
        }
        self.check_ledger();
    }

    /// Pins the live state of the stage accounts for (+ held tickets).
    fn expected_pins(&self) -> BTreeMap<Position, i64> {
        let mut m = BTreeMap::new();
        for st in self.stage.slots.iter().flatten() {
            for pn in &st.panes {
                for &p in &pn.pins {
                    *m.entry(p).or_insert(0) += 1;
                }
            }
            for &p in &st.continuation {
                *m.entry(p).or_insert(0) += 1;
            }
        }
        for t in &self.held {
            for &p in &t.pins {
                *m.entry(p).or_insert(0) += 1;
            }
        }
        m
    }

    fn check_ledger(&mut self) {
        self.ledger.retain(|_, n| *n != 0);
        assert_eq!(
            self.ledger,
            self.expected_pins(),
            "pin ledger != pins held by live keys + tickets"
        );
        assert_eq!(self.tracker.pinned(), self.ledger.len());
    }

    /// Rows of one key, in emission order.
    fn key_rows(&self, key: &str) -> Vec<Row> {
        self.rows.iter().filter(|r| r.key == key).cloned().collect()
    }
}

fn starts(rows: &[Row]) -> Vec<i64> {
    rows.iter().map(|r| r.start).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

// ------------------------------------------------------- closing windows

/// Tumbling: a window [s, e) closes at the first watermark >= e, not before.
#[test]
fn tumbling_window_closes_exactly_when_watermark_reaches_end() {
    let mut run = Run::new(spec(10, 10, 0, Aggregation::Mean));
    let s = run.feed(&[ev("a", 1, 0, 0, &[1.0]), ev("a", 5, 0, 1, &[3.0])], 0);
    assert_eq!(s.watermark, 5);
    assert!(s.rows.is_empty());
    let s = run.feed(&[ev("a", 9, 0, 2, &[5.0])], 0);
    assert_eq!(s.watermark, 9);
    assert!(s.rows.is_empty(), "watermark 9 < end 10: still open");
    // Another key moves the watermark to exactly the end.
    let s = run.feed(&[ev("b", 10, 0, 3, &[100.0])], 0);
    assert_eq!(s.watermark, 10);
    assert_eq!(
        s.rows,
        vec![Row {
            key: "a".into(),
            start: 0,
            end: 10,
            count: 3,
            filled: false,
            vals: vec![3.0],
            covs: vec![],
        }]
    );
    // Window [10, 20) of b stays open until 20.
    assert!(run.feed(&[ev("b", 19, 0, 4, &[0.0])], 0).rows.is_empty());
    let s = run.feed(&[ev("b", 20, 0, 5, &[0.0])], 0);
    let got: Vec<(String, i64, u32)> = s
        .rows
        .iter()
        .map(|r| (r.key.clone(), r.start, r.count))
        .collect();
    // a's [10, 20) is an empty window (ffill), b's holds two events.
    assert_eq!(got, vec![("a".into(), 10, 0), ("b".into(), 10, 2)]);
    assert!(s.rows[0].filled && s.rows[0].vals == vec![3.0]);
    assert_eq!(s.rows[1].vals, vec![50.0]);
}

/// Hopping (size = 3 * slide): each window combines its three panes; the
/// series starts at the first event's pane (no window starting earlier).
#[test]
fn hopping_windows_combine_overlapping_panes() {
    let mut run = Run::new(spec(30, 10, 0, Aggregation::Sum));
    run.feed(
        &[
            ev("a", 5, 0, 0, &[1.0]),
            ev("a", 15, 0, 1, &[2.0]),
            ev("a", 25, 0, 2, &[4.0]),
            ev("a", 35, 0, 3, &[8.0]),
        ],
        0,
    );
    // wm 35: only [0, 30) has ended.
    assert_eq!(starts(&run.key_rows("a")), vec![0]);
    let s = run.feed(&[ev("z", 60, 0, 4, &[0.0])], 0);
    assert_eq!(s.watermark, 60);
    let a = run.key_rows("a");
    let got: Vec<(i64, i64, u32, f64, bool)> = a
        .iter()
        .map(|r| (r.start, r.end, r.count, r.vals[0], r.filled))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 30, 3, 7.0, false),
            (10, 40, 3, 14.0, false),
            (20, 50, 2, 12.0, false),
            (30, 60, 1, 8.0, false),
        ]
    );
    // Next window [40, 70) is empty and ends at 70.
    let s = run.feed(&[ev("z", 70, 0, 5, &[0.0])], 0);
    let a: Vec<&Row> = s.rows.iter().filter(|r| r.key == "a").collect();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].start, a[0].count, a[0].filled, a[0].vals[0]),
        (40, 0, true, 8.0)
    );
}

/// The rows of one call are sorted by (window_end, key).
#[test]
fn rows_are_sorted_by_end_then_key() {
    let mut run = Run::new(spec(10, 10, 0, Aggregation::Sum));
    run.feed(
        &[
            ev("c", 1, 0, 0, &[1.0]),
            ev("a", 2, 0, 1, &[1.0]),
            ev("b", 15, 0, 2, &[1.0]),
        ],
        0,
    );
    run.feed(&[ev("a", 12, 0, 3, &[1.0]), ev("z", 30, 0, 4, &[1.0])], 0);
    let got: Vec<(i64, String)> = run.rows.iter().map(|r| (r.end, r.key.clone())).collect();
    let want: Vec<(i64, String)> = [
        (10, "a"),
        (10, "c"),
        (20, "a"),
        (20, "b"),
        (20, "c"),
        (30, "a"),
        (30, "b"),
        (30, "c"),
    ]
    .iter()
    .map(|&(e, k)| (e, k.to_string()))
    .collect();
    assert_eq!(got, want);
}

// ------------------------------------------------------------ aggregation

/// Events of one window, two value fields; two events share the largest
/// time (4): `last` takes the later arrival; the event at 2 arrives last but
/// is not the latest in event time.
fn agg_events() -> Vec<Ev> {
    vec![
        ev("a", 1, 0, 0, &[3.0, -1.0]),
        ev("a", 4, 0, 1, &[1.0, 10.0]),
        ev("a", 4, 0, 2, &[7.0, 2.0]),
        ev("a", 2, 0, 3, &[5.0, 0.0]),
    ]
}

fn agg_of(agg: Aggregation) -> Row {
    let mut sp = spec(10, 10, 0, agg);
    sp.value_fields = fields(2);
    let mut run = Run::new(sp);
    run.feed(&agg_events(), 0);
    run.feed(&[ev("z", 10, 0, 9, &[0.0, 0.0])], 0);
    let a = run.key_rows("a");
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].start, a[0].count, a[0].filled), (0, 4, false));
    a[0].clone()
}

#[test]
fn every_aggregation_on_two_fields() {
    assert_eq!(agg_of(Aggregation::Mean).vals, vec![4.0, 2.75]);
    assert_eq!(agg_of(Aggregation::Sum).vals, vec![16.0, 11.0]);
    assert_eq!(agg_of(Aggregation::Min).vals, vec![1.0, -1.0]);
    assert_eq!(agg_of(Aggregation::Max).vals, vec![7.0, 10.0]);
    assert_eq!(agg_of(Aggregation::Last).vals, vec![7.0, 2.0]);
    assert_eq!(agg_of(Aggregation::Count).vals, vec![4.0, 4.0]);
}

/// `last` across panes of a hopping window: the pane with the latest event
/// wins even when an earlier pane's event arrived later.
#[test]
fn last_across_panes_uses_event_time() {
    let mut run = Run::new(spec(20, 10, 10, Aggregation::Last));
    run.feed(
        &[
            ev("a", 12, 0, 0, &[2.0]),
            ev("a", 5, 0, 1, &[1.0]),
            ev("a", 15, 0, 2, &[3.0]),
        ],
        0,
    );
    run.feed(&[ev("a", 14, 0, 3, &[4.0])], 0); // arrives last, not latest
    run.feed(&[ev("z", 50, 0, 4, &[0.0])], 0); // wm 40
    let got: Vec<(i64, u32, f64)> = run
        .key_rows("a")
        .iter()
        .map(|r| (r.start, r.count, r.vals[0]))
        .collect();
    assert_eq!(got, vec![(0, 4, 3.0), (10, 3, 3.0), (20, 0, 3.0)]);
}

/// Min/max/mean of negative values and a single event.
#[test]
fn min_max_of_negative_values() {
    for (agg, want) in [
        (Aggregation::Min, -7.5),
        (Aggregation::Max, -0.5),
        (Aggregation::Mean, -4.0),
    ] {
        let mut run = Run::new(spec(10, 10, 0, agg));
        run.feed(&[ev("a", 0, 0, 0, &[-0.5]), ev("a", 9, 0, 1, &[-7.5])], 0);
        run.feed(&[ev("b", 3, 0, 2, &[-2.0])], 0);
        run.feed(&[ev("z", 10, 0, 3, &[0.0])], 0);
        assert_eq!(run.key_rows("a")[0].vals, vec![want], "{agg:?}");
        assert_eq!(run.key_rows("b")[0].vals, vec![-2.0], "{agg:?}");
    }
}

// -------------------------------------------------------------- watermark

/// Watermark = min over active partitions of their max event time, minus
/// the lateness: a slow partition holds every key's windows open.
#[test]
fn slow_partition_holds_the_watermark() {
    let mut run = Run::new(spec(10, 10, 5, Aggregation::Sum));
    let s = run.feed(
        &[
            ev("a", 3, 0, 0, &[1.0]),
            ev("a", 13, 0, 1, &[1.0]),
            ev("a", 23, 0, 2, &[1.0]),
            ev("a", 100, 0, 3, &[1.0]),
            ev("b", 20, 1, 0, &[1.0]),
        ],
        0,
    );
    assert_eq!(s.watermark, 15, "min(100, 20) - 5");
    assert_eq!(starts(&run.key_rows("a")), vec![0]);
    assert!(run.key_rows("b").is_empty());
    // Partition 0 racing ahead changes nothing.
    let s = run.feed(&[ev("a", 200, 0, 4, &[1.0])], 0);
    assert_eq!(s.watermark, 15);
    assert!(s.rows.is_empty());
    // Partition 1 catches up to 40: wm 35.
    let s = run.feed(&[ev("b", 40, 1, 1, &[1.0])], 0);
    assert_eq!(s.watermark, 35);
    assert_eq!(starts(&run.key_rows("a")), vec![0, 10, 20]);
    assert_eq!(starts(&run.key_rows("b")), vec![20]);
}

/// An assigned partition that never sends holds the watermark until it has
/// been idle (wall clock) for `idle_partition_timeout`.
#[test]
fn silent_assigned_partition_holds_until_idle() {
    let mut sp = spec(10, 10, 0, Aggregation::Sum);
    sp.idle_partition_ms = 1000;
    let mut run = Run::new(sp);
    run.stage.assign(&[0, 1], 0);
    let s = run.feed(&[ev("a", 5, 0, 0, &[1.0]), ev("a", 100, 0, 1, &[1.0])], 500);
    assert_eq!(
        s.watermark,
        i64::MIN,
        "partition 1 has sent nothing and is not idle yet"
    );
    assert!(s.rows.is_empty());
    assert_eq!(
        run.tick(999).watermark,
        i64::MIN,
        "999 ms after assignment: still active"
    );
    let s = run.tick(1000);
    assert_eq!(
        s.watermark, 100,
        "partition 1 idle: only partition 0 counts"
    );
    assert_eq!(
        run.key_rows("a").first().map(|r| (r.start, r.count)),
        Some((0, 1))
    );
    // Once it sends, partition 1 counts again (and may hold further closing).
    let s = run.feed(
        &[ev("b", 150, 1, 0, &[1.0]), ev("a", 300, 0, 2, &[1.0])],
        1100,
    );
    assert_eq!(s.watermark, 150);
}

/// When every partition is idle the watermark is the max over them.
#[test]
fn all_idle_partitions_use_the_max() {
    let mut sp = spec(10, 10, 3, Aggregation::Sum);
    sp.idle_partition_ms = 1000;
    let mut run = Run::new(sp);
    let s = run.feed(&[ev("a", 100, 0, 0, &[1.0]), ev("b", 50, 1, 0, &[1.0])], 0);
    assert_eq!(s.watermark, 47);
    assert_eq!(run.tick(999).watermark, 47);
    // Partition 1 sent at 500: idle at 1500; partition 0 (sent at 0) at 1000.
    run.feed(&[ev("b", 51, 1, 1, &[1.0])], 500);
    assert_eq!(
        run.tick(1000).watermark,
        48,
        "partition 0 idle, partition 1 active (51 - 3)"
    );
    assert_eq!(run.tick(1500).watermark, 97, "all idle: max(100, 51) - 3");
}

/// The watermark never goes back: not for a new slow partition, nor for a
/// new assignment.
#[test]
fn watermark_never_goes_back() {
    let mut run = Run::new(spec(10, 10, 0, Aggregation::Sum));
    assert_eq!(run.stage.watermark(), i64::MIN);
    assert_eq!(run.feed(&[ev("a", 100, 0, 0, &[1.0])], 0).watermark, 100);
    assert_eq!(
        run.feed(&[ev("a", 105, 1, 0, &[1.0]), ev("b", 20, 2, 0, &[1.0])], 0)
            .watermark,
        100
    );
    run.stage.assign(&[0, 1, 2, 3], 0);
    assert_eq!(run.tick(10).watermark, 100);
    assert_eq!(run.stage.watermark(), 100);
}

// ---------------------------------------------------------------- lateness

/// Out-of-order events within the lateness land in their own window, also
/// when one precedes the key's first event (the series starts earlier).
#[test]
fn out_of_order_within_lateness_lands_in_its_window() {
    let mut run = Run::new(spec(10, 10, 10, Aggregation::Sum));
    run.feed(&[ev("a", 1, 0, 0, &[1.0]), ev("a", 15, 0, 1, &[10.0])], 0);
    run.feed(&[ev("a", 12, 0, 2, &[20.0]), ev("a", 8, 0, 3, &[2.0])], 0); // wm 5
    run.feed(&[ev("b", 17, 0, 4, &[1.0]), ev("b", 4, 0, 5, &[2.0])], 0); // b starts at 17, then 4
    let s = run.feed(&[ev("a", 25, 0, 6, &[100.0])], 0); // wm 15
    assert_eq!(s.watermark, 15);
    let got: Vec<(String, i64, u32, f64)> = s
        .rows
        .iter()
        .map(|r| (r.key.clone(), r.start, r.count, r.vals[0]))
        .collect();
    assert_eq!(got, vec![("a".into(), 0, 2, 3.0), ("b".into(), 0, 1, 2.0)]);
    run.feed(&[ev("a", 18, 0, 7, &[40.0]), ev("a", 35, 0, 8, &[0.0])], 0); // wm 25
    assert_eq!(run.key_rows("a")[1].start, 10);
    assert_eq!(
        (run.key_rows("a")[1].count, run.key_rows("a")[1].vals[0]),
        (3, 70.0)
    );
    assert_eq!(
        (run.key_rows("b")[1].count, run.key_rows("b")[1].vals[0]),
        (1, 1.0)
    );
    assert!(run.late.is_empty());
}

fn late_setup(policy: LatePolicy) -> (Run, Step) {
    let mut sp = spec(10, 10, 2, Aggregation::Sum);
    sp.late_policy = policy;
    let mut run = Run::new(sp);
    run.feed(&[ev("a", 1, 0, 0, &[1.0]), ev("a", 22, 0, 1, &[1.0])], 0); // wm 20
    assert_eq!(starts(&run.key_rows("a")), vec![0, 10]);
    let n = run.rows.len();
    // Late: a's window [0,10) has closed; c is a new key in a closed window;
    // a at 19 (window [10,20) closed too). b at 21 is fine.
    let s = run.feed(
        &[
            ev("a", 9, 3, 40, &[5.0]),
            ev("c", 3, 0, 2, &[6.0]),
            ev("a", 19, 0, 3, &[7.0]),
            ev("b", 21, 0, 4, &[8.0]),
        ],
        0,
    );
    assert_eq!(run.rows.len(), n, "no window reopened");
    assert_eq!(run.stage.live_keys(), 2, "a and b, not c");
    (run, s)
}

/// `Drop`: late events vanish — no window, no dead letter.
#[test]
fn late_events_dropped() {
    let (mut run, s) = late_setup(LatePolicy::Drop);
    assert!(s.late.is_empty());
    assert_eq!(s.pin, vec![(0, 4)], "only b's new pane is pinned");
    // Partition 3 (the late event's) is slow; let it go idle.
    run.feed(&[ev("z", 40, 0, 5, &[0.0])], IDLE);
    assert!(run.key_rows("c").is_empty());
    let a: Vec<(i64, u32)> = run
        .key_rows("a")
        .iter()
        .map(|r| (r.start, r.count))
        .collect();
    assert_eq!(a, vec![(0, 1), (10, 0), (20, 1)]);
    assert_eq!(run.key_rows("b").iter().map(|r| r.count).sum::<u32>(), 1);
}

/// `DeadLetter`: late events come back with reason "late…" and position.
#[test]
fn late_events_dead_lettered() {
    let (_, s) = late_setup(LatePolicy::DeadLetter);
    let got: Vec<(i32, i64)> = s.late.iter().map(|d| (d.partition, d.offset)).collect();
    assert_eq!(got, vec![(3, 40), (0, 2), (0, 3)]);
    for d in &s.late {
        assert!(d.reason.starts_with("late"), "{}", d.reason);
        assert_eq!(d.kind, crate::decode::DeadLetterKind::Late);
    }
    let p: serde_json::Value = serde_json::from_slice(&s.late[0].payload).unwrap();
    assert_eq!(p["key"], "a");
    assert_eq!(p["ts_ms"], 9);
    assert_eq!(p["value"], 5.0);
}

// ------------------------------------------------------------ fill and gap

fn fill_rows(fill: FillPolicy) -> Vec<Row> {
    let mut sp = spec(10, 10, 0, Aggregation::Mean);
    sp.fill = fill;
    sp.max_gap_windows = 5;
    let mut run = Run::new(sp);
    run.feed(&[ev("a", 1, 0, 0, &[4.0]), ev("a", 2, 0, 1, &[6.0])], 0);
    run.feed(&[ev("a", 35, 0, 2, &[9.0])], 0);
    run.key_rows("a")
}

/// Empty windows inside a live series: filled = true, count = 0, values per
/// policy.
#[test]
fn fill_policies() {
    for (fill, want) in [
        (FillPolicy::Ffill, 5.0),
        (FillPolicy::Zero, 0.0),
        (FillPolicy::Missing, f64::NAN),
    ] {
        let r = fill_rows(fill);
        assert_eq!(starts(&r), vec![0, 10, 20], "{fill:?}");
        assert_eq!((r[0].count, r[0].filled, r[0].vals[0]), (2, false, 5.0));
        for f in &r[1..] {
            assert_eq!((f.count, f.filled), (0, true), "{fill:?}");
            assert!(close(f.vals[0], want), "{fill:?}: {} != {want}", f.vals[0]);
        }
    }
}

/// More than `max_gap_windows` empty windows end the series (ended_keys);
/// when the key returns its series starts afresh (no fill from before).
#[test]
fn gap_ends_key_and_return_restarts() {
    let mut sp = spec(10, 10, 0, Aggregation::Sum);
    sp.max_gap_windows = 2;
    let mut run = Run::new(sp);
    run.feed(&[ev("a", 1, 0, 0, &[1.0])], 0);
    let s = run.feed(&[ev("b", 30, 0, 1, &[1.0])], 0); // windows 0..2 of a close
    assert!(s.ended.is_empty(), "two empty windows are allowed");
    assert_eq!(run.stage.live_keys(), 2);
    let s = run.feed(&[ev("b", 40, 0, 2, &[1.0])], 0); // a's third empty window
    assert_eq!(s.ended, vec!["a".to_string()]);
    assert_eq!(run.stage.live_keys(), 1);
    assert_eq!(
        starts(&run.key_rows("a")),
        vec![0, 10, 20],
        "the window that breaks the gap is not emitted"
    );
    // a returns: starts at its pane, the first window is not a fill.
    run.feed(&[ev("a", 75, 0, 3, &[5.0])], 0);
    run.feed(&[ev("b", 90, 0, 4, &[1.0])], 0);
    let a = run.key_rows("a");
    let got: Vec<(i64, u32, bool, f64)> = a[3..]
        .iter()
        .map(|r| (r.start, r.count, r.filled, r.vals[0]))
        .collect();
    assert_eq!(got, vec![(70, 1, false, 5.0), (80, 0, true, 5.0)]);
}

/// The key's return arrives before the watermark closes the gap (it sits in
/// the same batch that moves the watermark past it). Its events must start
/// the new series, not vanish with the old one.
#[test]
fn gap_return_in_the_same_batch_is_not_lost() {
    let mut sp = spec(10, 10, 0, Aggregation::Sum);
    sp.max_gap_windows = 2;
    let mut run = Run::new(sp);
    run.feed(&[ev("a", 1, 0, 0, &[1.0])], 0);
    let s = run.feed(&[ev("a", 105, 0, 1, &[7.0]), ev("a", 106, 0, 2, &[1.0])], 0);
    assert_eq!(
        s.ended,
        vec!["a".to_string()],
        "old series ended by the gap"
    );
    assert_eq!(starts(&s.rows), vec![0, 10, 20]);
    assert_eq!(run.stage.live_keys(), 1, "a lives on with its new events");
    run.feed(&[ev("b", 120, 0, 3, &[0.0])], 0);
    // Drain any window owed to the restarted series.
    run.tick(0);
    let a = run.key_rows("a");
    let got: Vec<(i64, u32, bool, f64)> = a[3..]
        .iter()
        .map(|r| (r.start, r.count, r.filled, r.vals[0]))
        .collect();
    assert_eq!(got, vec![(100, 2, false, 8.0), (110, 0, true, 8.0)]);
    assert_eq!(
        a.iter().map(|r| r.count).sum::<u32>(),
        3,
        "every event counted"
    );
}

/// Same, but the batch also moves the watermark past the returned events'
/// window: that window is owed to the new series and comes with the next
/// call (never in the output that ends the old series, since the model
/// frees a key's state after forecasting that output).
#[test]
fn gap_return_window_owed_comes_with_next_call() {
    let mut sp = spec(10, 10, 0, Aggregation::Sum);
    sp.max_gap_windows = 2;
    let mut run = Run::new(sp);
    run.feed(&[ev("a", 1, 0, 0, &[1.0])], 0);
    let s = run.feed(&[ev("a", 105, 0, 1, &[7.0]), ev("b", 125, 0, 2, &[0.0])], 0);
    assert_eq!(s.ended, vec!["a".to_string()]);
    assert_eq!(
        s.rows
            .iter()
            .filter(|r| r.key == "a")
            .map(|r| r.start)
            .collect::<Vec<_>>(),
        vec![0, 10, 20]
    );
    let s = run.tick(0);
    assert_eq!(s.watermark, 125);
    let got: Vec<(String, i64, u32, bool)> = s
        .rows
        .iter()
        .map(|r| (r.key.clone(), r.start, r.count, r.filled))
        .collect();
    assert_eq!(
        got,
        vec![("a".into(), 100, 1, false), ("a".into(), 110, 0, true)]
    );
    assert!(s.ended.is_empty());
    assert!(run.tick(0).rows.is_empty(), "owed once, emitted once");
}

// ---------------------------------------------------------------- eviction

/// Keys idle past `key_ttl` (event time, against the watermark) end "ttl".
#[test]
fn ttl_evicts_idle_keys() {
    let mut sp = spec(10, 10, 0, Aggregation::Sum);
    sp.key_ttl_ms = 50;
    let mut run = Run::new(sp);
    run.feed(&[ev("a", 5, 0, 0, &[1.0]), ev("b", 6, 0, 1, &[1.0])], 0);
    let s = run.feed(&[ev("b", 55, 0, 2, &[1.0])], 0);
    assert!(s.ended.is_empty(), "55 - 5 = 50 is not past the TTL");
    let s = run.feed(&[ev("b", 60, 0, 3, &[1.0])], 0);
    assert_eq!(s.ended, vec!["a".to_string()]);
    assert_eq!(run.stage.live_keys(), 1);
    // a's windows close first (through [50, 60)), then the TTL ends it.
    assert_eq!(starts(&run.key_rows("a")), vec![0, 10, 20, 30, 40, 50]);
    run.feed(&[ev("b", 90, 0, 4, &[1.0])], 0);
    assert_eq!(run.key_rows("a").len(), 6);
    assert!(run.ended.iter().all(|k| k == "a"));
}

/// Beyond `max_keys`, the least recently seen key is evicted ("capacity"),
/// its open panes' pins released.
#[test]
fn max_keys_evicts_least_recently_seen() {
    let mut sp = spec(10, 10, 0, Aggregation::Sum);
    sp.max_keys = 2;
    let mut run = Run::new(sp);
    run.feed(&[ev("a", 1, 0, 0, &[1.0]), ev("b", 2, 0, 1, &[1.0])], 0);
    let s = run.feed(&[ev("c", 3, 0, 2, &[1.0])], 0);
    assert_eq!(s.ended, vec!["a".to_string()]);
    assert_eq!(s.unpin, vec![(0, 0)], "a's pane pin released");
    assert_eq!(run.stage.live_keys(), 2);
    let s = run.feed(&[ev("b", 4, 0, 3, &[1.0]), ev("d", 5, 0, 4, &[1.0])], 0);
    assert_eq!(s.ended, vec!["c".to_string()], "b was seen after c");
    run.feed(&[ev("z", 10, 0, 5, &[1.0])], 0); // evicts b (d seen later)
    let keys: Vec<String> = run.rows.iter().map(|r| r.key.clone()).collect();
    assert_eq!(
        keys,
        vec!["d".to_string()],
        "only d's window was still open"
    );
    assert_eq!(run.ended, vec!["a", "c", "b"]);
    // Their open events were not dropped silently: one `evicted` dead
    // letter per key, at its first pinned offset, with the count.
    let letters: Vec<(i64, DeadLetterKind)> = run.late.iter().map(|d| (d.offset, d.kind)).collect();
    use crate::decode::DeadLetterKind;
    assert_eq!(
        letters,
        [
            (0, DeadLetterKind::Evicted),
            (2, DeadLetterKind::Evicted),
            (1, DeadLetterKind::Evicted)
        ]
    );
    let b: serde_json::Value = serde_json::from_slice(&run.late[2].payload).unwrap();
    assert_eq!(
        (b["key"].as_str(), b["events"].as_u64()),
        (Some("b"), Some(2))
    );
    assert_eq!(b["panes"][0]["accumulators"]["value"], 2.0);
    assert!(
        run.late[0].reason.contains("window.max_keys (2)"),
        "{}",
        run.late[0].reason
    );
}

// -------------------------------------------------------------- covariates

/// Covariates at known instants: 1970-01-05 is a Monday (dow phase 0),
/// 06:00 is a quarter day (hod_sin1 = 1), holiday flag by UTC date.
#[test]
fn covariates_at_known_instants() {
    let mut sp = spec(6 * HOUR, 6 * HOUR, 0, Aggregation::Sum);
    sp.covariates = CovariatesConfig {
        hour_of_day: 1,
        day_of_week: 1,
        day_of_year: 0,
        holidays: vec![chrono::NaiveDate::from_ymd_opt(1970, 1, 5).unwrap()],
    };
    assert_eq!(
        sp.covariate_names(),
        vec!["hod_sin1", "hod_cos1", "dow_sin1", "dow_cos1", "holiday"]
    );
    let mut run = Run::new(sp);
    let mon = 4 * DAY;
    run.feed(
        &[
            ev("a", mon + 1, 0, 0, &[1.0]),
            ev("a", mon + 6 * HOUR + 1, 0, 1, &[1.0]),
        ],
        0,
    );
    run.feed(
        &[
            ev("a", mon + DAY + 1, 0, 2, &[1.0]),
            ev("z", mon + 2 * DAY, 0, 3, &[1.0]),
        ],
        0,
    );
    let a = run.key_rows("a");
    let at = |t: i64| a.iter().find(|r| r.start == t).unwrap().covs.clone();
    let approx = |got: Vec<f64>, want: [f64; 5]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} != {want:?}");
        }
    };
    let q = 2.0 * PI * 0.25 / 7.0; // a quarter day into the week
    approx(at(mon), [0.0, 1.0, 0.0, 1.0, 1.0]);
    approx(at(mon + 6 * HOUR), [1.0, 0.0, q.sin(), q.cos(), 1.0]);
    approx(
        at(mon + 12 * HOUR),
        [0.0, -1.0, (2.0 * q).sin(), (2.0 * q).cos(), 1.0],
    );
    let tue = 2.0 * PI / 7.0;
    approx(at(mon + DAY), [0.0, 1.0, tue.sin(), tue.cos(), 0.0]);
}

/// The covariate function directly: Thursday 1970-01-01 has dow phase 3/7;
/// day-of-year is a 365.25-day cycle from the epoch; order 2 doubles phase.
#[test]
fn covariate_function_orders_and_phases() {
    let c = CovariatesConfig {
        hour_of_day: 2,
        day_of_week: 1,
        day_of_year: 1,
        holidays: vec![],
    };
    let starts = [0i64, 3 * HOUR, (365.25 * DAY as f64 / 4.0) as i64];
    let cols = covariates(&c, &starts);
    assert_eq!(
        cols.len(),
        8,
        "hod 2 pairs, dow 1 pair, doy 1 pair; no holiday column"
    );
    let v = |i: usize, row: usize| cols[i].as_primitive::<Float64Type>().value(row);
    let eps = 1e-9;
    // hod_sin2 at 03:00 = sin(2 * 2pi/8) = 1
    assert!((v(2, 1) - 1.0).abs() < eps);
    assert!((v(0, 1) - (PI / 4.0).sin()).abs() < eps);
    // dow at Thursday 00:00: phase 3/7
    assert!((v(4, 0) - (2.0 * PI * 3.0 / 7.0).sin()).abs() < eps);
    assert!((v(5, 0) - (2.0 * PI * 3.0 / 7.0).cos()).abs() < eps);
    // doy: a quarter year in, sin = 1
    assert!((v(6, 0) - 0.0).abs() < eps && (v(7, 0) - 1.0).abs() < eps);
    assert!((v(6, 2) - 1.0).abs() < eps);
}

// ------------------------------------------------------------- offset pins

/// Each pane pins the first offset it holds per partition; when the pane's
/// last window closes those pins go to the ticket, and the key keeps them as
/// its continuation (pinned again) until a later non-empty pane replaces it.
#[test]
fn pane_pins_move_to_ticket_and_continuation() {
    let mut run = Run::new(spec(10, 10, 0, Aggregation::Sum));
    run.hold_tickets = true;
    let s = run.feed(
        &[
            ev("a", 1, 0, 100, &[1.0]),
            ev("a", 2, 0, 101, &[1.0]),
            ev("b", 3, 0, 102, &[1.0]),
            ev("a", 4, 1, 7, &[1.0]),
        ],
        0,
    );
    assert_eq!(
        s.pin,
        vec![(0, 100), (0, 102), (1, 7)],
        "first offset per partition per pane"
    );
    assert!(s.ticket.is_empty());
    let s = run.feed(&[ev("a", 12, 0, 103, &[1.0]), ev("b", 10, 1, 8, &[1.0])], 0); // wm 10: window 0 closes
    let mut t = s.ticket.clone();
    t.sort();
    assert_eq!(t, vec![(0, 100), (0, 102), (1, 7)]);
    let mut p = s.pin.clone();
    p.sort();
    // New panes (0,103),(1,8) + continuations (0,100),(1,7) of a and (0,102) of b.
    assert_eq!(p, vec![(0, 100), (0, 102), (0, 103), (1, 7), (1, 8)]);
    run.tracker.consumed((0, 103));
    run.tracker.consumed((1, 8));
    assert_eq!(run.tracker.commit_points(), vec![(0, 100), (1, 7)]);
    run.release_held();
    // Continuations still hold the first window's inputs.
    assert_eq!(run.tracker.commit_points(), vec![(0, 100), (1, 7)]);
    // a's next non-empty pane replaces its continuation; b's window [10,20)
    // also closes.
    let s = run.feed(&[ev("z", 20, 0, 104, &[1.0]), ev("y", 20, 1, 9, &[1.0])], 0);
    let mut u = s.unpin.clone();
    u.sort();
    assert_eq!(u, vec![(0, 100), (0, 102), (1, 7)]);
    run.release_held();
    assert_eq!(run.tracker.commit_points(), vec![(0, 103), (1, 8)]);
}

/// Pins and unpins balance: once every ticket is released and the keys
/// have ended by gap, only the live sentinel's pane pin remains.
#[test]
fn pins_balance_after_keys_end_by_gap() {
    let mut sp = spec(20, 10, 5, Aggregation::Mean);
    sp.max_gap_windows = 1;
    let mut run = Run::new(sp);
    run.hold_tickets = true;
    let mut off = [0i64; 3];
    let mut evs = Vec::new();
    for i in 0..60i64 {
        let p = (i % 3) as i32;
        off[p as usize] += 1;
        evs.push(ev(
            ["a", "b", "c", "d"][(i % 4) as usize],
            i * 3 + (i % 5),
            p,
            off[p as usize],
            &[i as f64],
        ));
    }
    for chunk in evs.chunks(7) {
        run.feed(chunk, 0);
        assert!(run.tracker.pinned() > 0);
    }
    // Sentinel far ahead on its own partition, after the others went idle.
    let s = run.feed(&[ev("zz", 10_000, 9, 1, &[0.0])], IDLE);
    assert_eq!(s.watermark, 10_000 - 5);
    let mut ended = run.ended.clone();
    ended.sort();
    assert_eq!(ended, vec!["a", "b", "c", "d"]);
    assert_eq!(run.stage.live_keys(), 1);
    assert!(run.tracker.pinned() > 0, "tickets still held");
    run.release_held();
    assert_eq!(run.tracker.pinned(), 1);
    assert_eq!(run.ledger.keys().copied().collect::<Vec<_>>(), vec![(9, 1)]);
}

// ------------------------------------------------------ property: polars

const AGGS: [Aggregation; 6] = [
    Aggregation::Mean,
    Aggregation::Sum,
    Aggregation::Min,
    Aggregation::Max,
    Aggregation::Last,
    Aggregation::Count,
];

/// Epoch-ms base of generated times (a multiple of every slide used but 7,
/// so grid alignment to the epoch is exercised too).
const T0: i64 = 1_700_000_000_000;

/// Raw generated event: key, ts offset, two values (multiples of 1/8, so
/// sums are exact in any order), partition, jitter (per mille of D).
type RawEv = (u8, i64, i32, i32, i32, u32);

fn raw_events(n: std::ops::Range<usize>, ts_max: i64) -> impl Strategy<Value = Vec<RawEv>> {
    prop::collection::vec(
        (
            0u8..5,
            // Half the events on a coarse grid of times: many exact duplicates.
            prop_oneof![0..ts_max, (0..ts_max / 20).prop_map(|t| t * 20)],
            -800i32..800,
            -800i32..800,
            0i32..3,
            0u32..=1000,
        ),
        n,
    )
}

/// Arrival order: sort by ts + jitter (jitter in [0, d]) — an event arrives
/// after events at most `d` ms later than itself, so every event is within
/// any lateness >= d. Offsets increase per partition in arrival order.
fn arrival(raw: &[RawEv], d: i64, nf: usize) -> Vec<Ev> {
    let mut order: Vec<(i64, usize)> = raw
        .iter()
        .enumerate()
        .map(|(i, r)| (r.1 + (r.5 as i64 * d) / 1000, i))
        .collect();
    order.sort();
    let mut off = [0i64; 3];
    order
        .iter()
        .map(|&(_, i)| {
            let r = raw[i];
            off[r.4 as usize] += 1;
            let vals = [r.2 as f64 / 8.0, r.3 as f64 / 8.0];
            ev(
                &format!("k{}", r.0),
                T0 + r.1,
                r.4,
                off[r.4 as usize],
                &vals[..nf],
            )
        })
        .collect()
}

fn batches(evs: &[Ev], sizes: &[usize]) -> Vec<Vec<Ev>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut j = 0;
    while i < evs.len() {
        let n = sizes[j % sizes.len()].min(evs.len() - i);
        out.push(evs[i..i + n].to_vec());
        i += n;
        j += 1;
    }
    out
}

/// Feeds all batches at wall clock 0, then closes everything: a `tick` past
/// the idle timeout turns every partition idle (watermark = max - lateness,
/// checked), then a sentinel key on its own partition far in the future is
/// the only active partition, so the watermark passes every window's end.
/// Returns the final watermark.
fn run_to_end(run: &mut Run, evs: &[Ev], sizes: &[usize], lateness: i64) -> i64 {
    for b in batches(evs, sizes) {
        run.feed(&b, 0);
    }
    let max = evs.iter().map(|e| e.ts).max().unwrap();
    assert_eq!(run.tick(IDLE).watermark, max - lateness);
    let sp = run.stage.spec().clone();
    let far = max + sp.size_ms + sp.slide_ms + lateness;
    let s = run.feed(&[ev("~sentinel", far, 99, 0, &vec![0.0; run.nf])], IDLE);
    assert_eq!(s.watermark, far - lateness);
    // A restarted series (gap) may owe windows to the next call.
    for _ in 0..64 {
        let s = run.tick(IDLE);
        if s.rows.is_empty() && s.ended.is_empty() {
            break;
        }
    }
    far - lateness
}

/// What polars computes: (key, window_start) -> (count, aggregates).
fn polars_windows(
    evs: &[Ev],
    slide: i64,
    size: i64,
    agg: Aggregation,
    nf: usize,
) -> BTreeMap<(String, i64), (u32, Vec<f64>)> {
    use polars::prelude as pl;
    use polars::prelude::IntoLazy;
    let n = evs.len();
    let mut cols = vec![
        pl::Column::new(
            "key".into(),
            evs.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ),
        pl::Column::new("ts".into(), evs.iter().map(|e| e.ts).collect::<Vec<i64>>()),
        // Arrival order: breaks ties in time for `last`, as the stage does.
        pl::Column::new("seq".into(), (0..n as i64).collect::<Vec<i64>>()),
    ];
    for j in 0..nf {
        cols.push(pl::Column::new(
            format!("v{j}").into(),
            evs.iter().map(|e| e.vals[j]).collect::<Vec<f64>>(),
        ));
    }
    let df = pl::DataFrame::new(n, cols).unwrap();
    let opts = pl::DynamicGroupOptions {
        every: pl::Duration::parse(&format!("{slide}i")),
        period: pl::Duration::parse(&format!("{size}i")),
        offset: pl::Duration::new(0),
        closed_window: pl::ClosedWindow::Left,
        label: pl::Label::Left,
        include_boundaries: false,
        start_by: pl::StartBy::WindowBound,
        ..Default::default()
    };
    let mut aggs = vec![pl::len().cast(pl::DataType::Int64).alias("n")];
    for j in 0..nf {
        let c = pl::col(format!("v{j}"));
        let e = match agg {
            Aggregation::Mean => c.mean(),
            Aggregation::Sum => c.sum(),
            Aggregation::Min => c.min(),
            Aggregation::Max => c.max(),
            Aggregation::Last => c.last(),
            Aggregation::Count => c.count(),
        };
        aggs.push(e.cast(pl::DataType::Float64).alias(format!("v{j}")));
    }
    let out = df
        .lazy()
        .sort(["key", "ts", "seq"], Default::default())
        .group_by_dynamic(pl::col("ts"), [pl::col("key")], opts)
        .agg(aggs)
        .collect()
        .unwrap();
    let key = out.column("key").unwrap().str().unwrap().clone();
    let ts = out.column("ts").unwrap().i64().unwrap().clone();
    let cnt = out.column("n").unwrap().i64().unwrap().clone();
    let vals: Vec<_> = (0..nf)
        .map(|j| out.column(&format!("v{j}")).unwrap().f64().unwrap().clone())
        .collect();
    let mut m = BTreeMap::new();
    for i in 0..out.height() {
        let k = (key.get(i).unwrap().to_string(), ts.get(i).unwrap());
        let v = vals.iter().map(|c| c.get(i).unwrap_or(f64::NAN)).collect();
        let prev = m.insert(k.clone(), (cnt.get(i).unwrap() as u32, v));
        assert!(prev.is_none(), "polars emitted {k:?} twice");
    }
    m
}

/// Pins polars' own semantics that the comparison relies on: each key's
/// windows start at its first point truncated to `every` — the hopping
/// windows [0, 30) and [10, 40) also contain 25 but are not emitted — and
/// empty windows ([30, 60) .. [60, 90)) are skipped.
#[test]
fn polars_window_bound_starts_at_first_point_truncated() {
    let evs = vec![
        ev("a", 25, 0, 0, &[1.0]),
        ev("a", 27, 0, 1, &[2.0]),
        ev("a", 95, 0, 2, &[4.0]),
        ev("b", 3, 0, 3, &[8.0]),
    ];
    let m = polars_windows(&evs, 10, 30, Aggregation::Sum, 1);
    let got: Vec<(&str, i64, u32, f64)> = m
        .iter()
        .map(|((k, s), (n, v))| (k.as_str(), *s, *n, v[0]))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a", 20, 2, 3.0),
            ("a", 70, 1, 4.0),
            ("a", 80, 1, 4.0),
            ("a", 90, 1, 4.0),
            ("b", 0, 1, 8.0),
        ]
    );
}

#[allow(clippy::too_many_arguments)]
fn check_against_polars(
    slide: i64,
    k: i64,
    agg: Aggregation,
    nf: usize,
    d: i64,
    extra_lateness: i64,
    raw: &[RawEv],
    sizes: &[usize],
) -> Result<(), TestCaseError> {
    let size = k * slide;
    let lateness = d + extra_lateness;
    let mut sp = spec(size, slide, lateness, agg);
    sp.value_fields = fields(nf);
    sp.max_gap_windows = 100_000; // no series reset inside the stream
    let mut run = Run::new(sp);
    let evs = arrival(raw, d, nf);
    let final_wm = run_to_end(&mut run, &evs, sizes, lateness);
    prop_assert!(
        run.late.is_empty(),
        "an in-lateness event was judged late: {:?}",
        run.late.first()
    );

    // Stage: each key's series is regular from floor(min ts / slide) on,
    // every window once.
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in run.rows.iter().filter(|r| r.key != "~sentinel") {
        prop_assert!(r.end <= final_wm && r.end - r.start == size);
        by_key.entry(r.key.clone()).or_default().push(r.start);
    }
    for (key, st) in &by_key {
        let first = evs
            .iter()
            .filter(|e| &e.key == key)
            .map(|e| e.ts)
            .min()
            .unwrap();
        prop_assert_eq!(
            st[0],
            first.div_euclid(slide) * slide,
            "series start of {}",
            key
        );
        for w in st.windows(2) {
            prop_assert_eq!(w[1], w[0] + slide, "series of {} not regular", key);
        }
    }

    let ours: BTreeMap<(String, i64), (u32, Vec<f64>)> = run
        .rows
        .iter()
        .filter(|r| r.key != "~sentinel" && r.count > 0)
        .map(|r| ((r.key.clone(), r.start), (r.count, r.vals.clone())))
        .collect();
    let theirs: BTreeMap<(String, i64), (u32, Vec<f64>)> =
        polars_windows(&evs, slide, size, agg, nf)
            .into_iter()
            .filter(|((_, s), _)| s + size <= final_wm)
            .collect();
    let ok: Vec<_> = ours.keys().collect();
    let tk: Vec<_> = theirs.keys().collect();
    prop_assert_eq!(ok, tk, "window sets differ");
    for (k, (n, v)) in &ours {
        let (pn, pv) = &theirs[k];
        prop_assert_eq!(n, pn, "count of {:?}", k);
        for (a, b) in v.iter().zip(pv) {
            prop_assert!(close(*a, *b), "{:?} {:?}: {} vs polars {}", agg, k, a, b);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Tumbling and hopping windows over shuffled (within lateness) streams
    /// in random batches equal polars `group_by_dynamic` on the same events.
    #[test]
    fn windows_match_polars(
        slide in prop::sample::select(vec![5i64, 7, 10, 25]),
        k in 1i64..=4,
        agg in prop::sample::select(AGGS.to_vec()),
        nf in 1usize..=2,
        d in 0i64..60,
        extra in 0i64..15,
        raw in raw_events(1..120, 400),
        sizes in prop::collection::vec(1usize..25, 1..12),
    ) {
        check_against_polars(slide, k, agg, nf, d, extra, &raw, &sizes)?;
    }

    /// No event is lost (tumbling): with small gap limits (series ending and
    /// restarting, also when the return arrives before the gap closes) and
    /// in-lateness shuffles, the counts of all windows sum to the events.
    #[test]
    fn no_event_lost_across_gap_resets(
        max_gap in 0u32..4,
        d in 0i64..40,
        raw in raw_events(1..60, 2000),
        sizes in prop::collection::vec(1usize..10, 1..8),
    ) {
        let mut sp = spec(10, 10, d, Aggregation::Count);
        sp.max_gap_windows = max_gap;
        let mut run = Run::new(sp);
        let evs = arrival(&raw, d, 1);
        run_to_end(&mut run, &evs, &sizes, d);
        prop_assert!(run.late.is_empty());
        let counted: u64 = run.rows.iter().filter(|r| r.key != "~sentinel").map(|r| r.count as u64).sum();
        prop_assert_eq!(counted, evs.len() as u64);
        // Per key too, and no window of a key emitted twice.
        let mut seen = std::collections::HashSet::new();
        for r in run.rows.iter().filter(|r| r.key != "~sentinel") {
            prop_assert!(seen.insert((r.key.clone(), r.start)), "window {:?} twice", (&r.key, r.start));
        }
        for key in evs.iter().map(|e| e.key.clone()).collect::<std::collections::BTreeSet<_>>() {
            let n = evs.iter().filter(|e| e.key == key).count() as u64;
            let c: u64 = run.rows.iter().filter(|r| r.key == key).map(|r| r.count as u64).sum();
            prop_assert_eq!(c, n, "key {}", key);
        }
    }
}

// ------------------------------------------------------- durable state

/// The changes of `stage` as the changelog would hold them, per partition.
/// (partition, record key, value) as on the changelog.
type LogRecord = (i32, Vec<u8>, Option<Vec<u8>>);

fn changelog_of(stage: &mut WindowStage, log: &mut Vec<LogRecord>) {
    use crate::state::{encode, window_key, PartitionState, PARTITION_KEY};
    let ch = stage.take_changes();
    for (p, k) in ch.ended {
        log.push((p, window_key(&k), None));
    }
    for (p, k, st) in ch.keys {
        log.push((p, window_key(&k), Some(encode(&st).unwrap())));
    }
    for (p, max_ts) in ch.clocks {
        log.push((
            p,
            PARTITION_KEY.to_vec(),
            Some(encode(&PartitionState { max_ts }).unwrap()),
        ));
    }
}

fn restored(log: &[LogRecord], p: i32) -> crate::state::RestoredPartition {
    crate::state::RestoredPartition::from_records(
        p,
        log.iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, k, v)| (k.as_slice(), v.as_deref())),
    )
    .unwrap()
}

/// A stage restored from the changelog at a checkpoint closes the same
/// windows afterwards as the stage that never stopped (hopping windows,
/// open panes, a gap, two partitions, checkpoints at several moments).
#[test]
fn a_restored_stage_continues_like_the_original() {
    let sp = spec(30, 10, 5, Aggregation::Mean);
    let evs: Vec<Ev> = (0..120)
        .filter(|i| i % 17 != 3)
        .map(|i| {
            let key = ["a", "b", "c"][i as usize % 3];
            let part = (i % 3 == 2) as i32; // c on partition 1
            ev(key, i * 2 + (i % 5 == 0) as i64 * 40, part, i, &[i as f64])
        })
        .collect();
    for cut in [7usize, 40, 95] {
        let mut orig = WindowStage::new(sp.clone());
        orig.enable_state_tracking();
        orig.assign(&[0, 1], 0);
        let mut log = Vec::new();
        let mut before = Vec::new();
        for chunk in evs[..cut].chunks(5) {
            if let Some(w) = orig.process(&batch(&sp.value_fields, chunk), 0).windows {
                before.extend(rows_of(&w, 1));
            }
            changelog_of(&mut orig, &mut log);
        }
        let mut back = WindowStage::new(sp.clone());
        back.enable_state_tracking();
        for p in [0, 1] {
            back.restore_partition(&restored(&log, p), 0);
        }
        back.assign(&[0, 1], 0);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for chunk in evs[cut..].chunks(5) {
            let bt = batch(&sp.value_fields, chunk);
            let o = orig.process(&bt, 0);
            if let Some(w) = o.windows {
                a.extend(rows_of(&w, 1));
            }
            let out = back.process(&bt, 0);
            let at = |l: &[DeadLetter]| -> Vec<(i32, i64)> {
                l.iter().map(|d| (d.partition, d.offset)).collect()
            };
            assert_eq!(
                at(&out.late),
                at(&o.late),
                "cut {cut}: the same events are late"
            );
            if let Some(w) = out.windows {
                b.extend(rows_of(&w, 1));
            }
        }
        if let Some(w) = orig.finish(10_000, 0).windows {
            a.extend(rows_of(&w, 1));
        }
        if let Some(w) = back.finish(10_000, 0).windows {
            b.extend(rows_of(&w, 1));
        }
        assert!(!a.is_empty());
        assert_eq!(a, b, "cut at event {cut}");
    }
}

#[test]
fn only_changed_keys_are_written_and_ended_keys_get_tombstones() {
    let mut sp = spec(10, 10, 0, Aggregation::Sum);
    sp.max_gap_windows = 1;
    let mut s = WindowStage::new(sp.clone());
    s.enable_state_tracking();
    s.assign(&[0], 0);
    s.process(
        &batch(
            &sp.value_fields,
            &[ev("a", 1, 0, 0, &[1.0]), ev("b", 2, 0, 1, &[1.0])],
        ),
        0,
    );
    let ch = s.take_changes();
    assert_eq!(ch.keys.len(), 2);
    assert_eq!(ch.clocks, vec![(0, Some(2))]);
    // Only b gets an event; nothing closes (watermark 5 < 10).
    s.process(&batch(&sp.value_fields, &[ev("b", 5, 0, 2, &[1.0])]), 0);
    let ch = s.take_changes();
    let keys: Vec<&str> = ch.keys.iter().map(|(_, k, _)| &**k).collect();
    assert_eq!(keys, vec!["b"]);
    assert!(s.take_changes().keys.is_empty(), "nothing changed since");
    // b goes on; a's series ends by gap -> a tombstone for a.
    s.process(&batch(&sp.value_fields, &[ev("b", 45, 0, 3, &[1.0])]), 0);
    let ch = s.take_changes();
    assert!(
        ch.ended.iter().any(|(p, k)| *p == 0 && &**k == "a"),
        "{:?}",
        ch.ended
    );
}

#[test]
fn with_durable_state_a_key_on_a_second_partition_is_dead_lettered() {
    let sp = spec(10, 10, 0, Aggregation::Sum);
    let mut s = WindowStage::new(sp.clone());
    s.enable_state_tracking();
    s.assign(&[0, 1], 0);
    let out = s.process(
        &batch(
            &sp.value_fields,
            &[ev("a", 1, 0, 0, &[1.0]), ev("a", 2, 1, 0, &[5.0])],
        ),
        0,
    );
    assert_eq!(out.late.len(), 1);
    assert_eq!(out.late[0].kind, DeadLetterKind::PartitionConflict);
    assert_eq!((out.late[0].partition, out.late[0].offset), (1, 0));
    // The key's own partition is unaffected, and a dropped partition takes
    // its keys with it.
    let (keys, _) = s.drop_partition(0);
    assert_eq!(keys.len(), 1);
    assert_eq!(s.live_keys(), 0);
}

/// The scale-out case: a partition moves to an instance whose own
/// partition is far ahead in event time. With durable state each
/// partition keeps its own time, so the moved partition's next events are
/// on time and its windows close as they would have at the old owner.
#[test]
fn a_moved_partition_keeps_its_own_time() {
    let sp = spec(10, 10, 0, Aggregation::Sum);
    // The old owner: partition 1 alone, up to t = 25.
    let mut old = WindowStage::new(sp.clone());
    old.enable_state_tracking();
    old.assign(&[1], 0);
    let evs: Vec<Ev> = (0..6).map(|i| ev("b", i * 5, 1, i, &[1.0])).collect();
    old.process(&batch(&sp.value_fields, &evs), 0);
    let mut log = Vec::new();
    changelog_of(&mut old, &mut log);
    // The new owner already runs partition 0 at t = 1000.
    let mut new = WindowStage::new(sp.clone());
    new.enable_state_tracking();
    new.assign(&[0], 0);
    new.process(&batch(&sp.value_fields, &[ev("a", 1000, 0, 0, &[1.0])]), 0);
    new.restore_partition(&restored(&log, 1), 0);
    new.assign(&[0, 1], 0);
    let out = new.process(
        &batch(
            &sp.value_fields,
            &[ev("b", 28, 1, 6, &[1.0]), ev("b", 31, 1, 7, &[1.0])],
        ),
        0,
    );
    assert!(out.late.is_empty(), "{:?}", out.late.first());
    let rows = rows_of(&out.windows.expect("b's [20, 30) closes at 31"), 1);
    let b: Vec<(i64, u32)> = rows
        .iter()
        .filter(|r| r.key == "b")
        .map(|r| (r.start, r.count))
        .collect();
    assert_eq!(
        b,
        vec![(20, 3)],
        "t = 20, 25 from before the move, 28 after it"
    );
}

/// A timestamp years away from its key's other events (a broken producer
/// clock inside `decode.max_future_skew`, or an ancient one) would allocate
/// one pane per slide in between: it is a `bad_timestamp` dead letter
/// instead, the key keeps its windows, and its partition's clock does not
/// jump (the watermark would otherwise make every later event late).
#[test]
fn an_event_too_far_from_its_key_is_refused_without_moving_the_clock() {
    let mut sp = spec(10, 10, 0, Aggregation::Sum);
    sp.max_open_panes = 1_000;
    let mut run = Run::new(sp.clone());
    run.feed(&[ev("a", 5, 0, 0, &[1.0]), ev("b", 5, 0, 1, &[1.0])], 0);
    // Pane 10_000 against a's pane 0.
    let s = run.feed(&[ev("a", 100_005, 0, 2, &[1.0])], 0);
    let got: Vec<_> = s.late.iter().map(|d| (d.offset, d.kind)).collect();
    use crate::decode::DeadLetterKind as K;
    assert_eq!(got, [(2, K::BadTimestamp)]);
    assert!(
        s.late[0].reason.contains("window.max_open_panes (1000)"),
        "{}",
        s.late[0].reason
    );
    // Within the bound a later event is still accepted, and windows close
    // as if the refused event had never come.
    let s = run.feed(
        &[ev("a", 9_995, 0, 3, &[2.0]), ev("b", 25, 0, 4, &[1.0])],
        0,
    );
    assert!(s.late.is_empty(), "{:?}", s.late);
    assert_eq!(run.stage.watermark(), 9_995);
    let a = run.key_rows("a");
    assert_eq!(a.first().map(|r| (r.start, r.vals[0])), Some((0, 1.0)));
    // Behind: a key's first event at pane 5_000, then (same batch, no
    // watermark yet) one at pane 0.
    let mut run = Run::new(sp);
    let s = run.feed(
        &[ev("c", 50_005, 0, 0, &[1.0]), ev("c", 5, 0, 1, &[1.0])],
        0,
    );
    let got: Vec<_> = s.late.iter().map(|d| (d.offset, d.kind)).collect();
    assert_eq!(got, [(1, K::BadTimestamp)]);
}
