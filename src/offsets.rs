//! The delivery contract's bookkeeping: which input offsets may be committed.
//!
//! An input offset may be committed only when every forecast that depends on
//! it has been acknowledged by the sink (see DESIGN.md, "Delivery"). Stages
//! express dependencies as *pins*: a pin on `(partition, offset)` says "do not
//! commit at or past this offset yet". Pins are counted, so several holders
//! (an open pane, a ticket in flight, a key's continuation) can share one.
//!
//! Invariant: the commit point of a partition is the lowest pinned offset, or
//! the offset after the last consumed message when nothing is pinned. It
//! never passes an unacknowledged forecast's input, so after a crash the
//! consumer resumes early enough to recompute every forecast that was owed.
//! Duplicates are the price (at-least-once), never loss.

use std::collections::{BTreeMap, HashMap};

/// A `(partition, offset)` position in the input topic.
pub type Position = (i32, i64);

/// Pins to release once a batch of forecasts (or dead letters) is acknowledged.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ticket {
    pub pins: Vec<Position>,
}

/// Pin counts per partition and the consumption frontier.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    pins: HashMap<i32, BTreeMap<i64, u32>>,
    next: HashMap<i32, i64>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn pin(&mut self, (p, o): Position) {
        *self.pins.entry(p).or_default().entry(o).or_insert(0) += 1;
    }

    /// Releases one hold on a position. Releasing a position that is not
    /// pinned is a bug in the caller; it is logged, not a crash.
    pub fn unpin(&mut self, (p, o): Position) {
        let Some(m) = self.pins.get_mut(&p) else {
            tracing::error!(
                partition = p,
                offset = o,
                "unpin of an unpinned partition (bug)"
            );
            return;
        };
        match m.get_mut(&o) {
            Some(c) if *c > 1 => *c -= 1,
            Some(_) => {
                m.remove(&o);
            }
            None => tracing::error!(
                partition = p,
                offset = o,
                "unpin of an unpinned offset (bug)"
            ),
        }
    }

    pub fn release(&mut self, t: &Ticket) {
        t.pins.iter().for_each(|p| self.unpin(*p));
    }

    /// Records that the message at `(p, o)` has been fully taken in (its
    /// events pinned where they are needed).
    pub fn consumed(&mut self, (p, o): Position) {
        let n = self.next.entry(p).or_insert(o + 1);
        *n = (*n).max(o + 1);
    }

    /// Forgets a partition (revoked in a rebalance).
    pub fn forget(&mut self, p: i32) {
        self.pins.remove(&p);
        self.next.remove(&p);
    }

    /// The offset each partition may be committed at (the next one to read).
    pub fn commit_points(&self) -> Vec<Position> {
        let mut v: Vec<Position> = self
            .next
            .iter()
            .map(|(&p, &next)| {
                let low = self
                    .pins
                    .get(&p)
                    .and_then(|m| m.keys().next().copied())
                    .unwrap_or(next);
                (p, low.min(next))
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Number of distinct pinned positions (for tests and metrics).
    pub fn pinned(&self) -> usize {
        self.pins.values().map(|m| m.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_is_lowest_pin_or_frontier() {
        let mut t = OffsetTracker::new();
        for o in 0..10 {
            t.consumed((0, o));
        }
        assert_eq!(t.commit_points(), vec![(0, 10)]);
        t.pin((0, 3));
        t.pin((0, 3));
        t.pin((0, 7));
        assert_eq!(t.commit_points(), vec![(0, 3)]);
        t.unpin((0, 3));
        assert_eq!(
            t.commit_points(),
            vec![(0, 3)],
            "counted: one holder remains"
        );
        t.release(&Ticket { pins: vec![(0, 3)] });
        assert_eq!(t.commit_points(), vec![(0, 7)]);
        t.unpin((0, 7));
        assert_eq!(t.commit_points(), vec![(0, 10)]);
        assert_eq!(t.pinned(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.consumed((0, 5));
        t.consumed((1, 50));
        t.pin((1, 20));
        assert_eq!(t.commit_points(), vec![(0, 6), (1, 20)]);
        t.forget(1);
        assert_eq!(t.commit_points(), vec![(0, 6)]);
    }
}
