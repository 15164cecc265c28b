//! The many-keys soak: millions of distinct keys through the whole compute
//! core (decode, windows, model), with `window.max_keys` far below the key
//! count, to show that memory stays bounded by the live keys and that
//! every event is accounted for: in a window, or a dead letter (an evicted
//! key's open events become one `evicted` letter per key, with the count).
//! `scripts/bench_soak` runs 10M keys (figures in BENCHMARKS.md); a unit
//! test runs a small one.
//!
//! Events: key `k<i>` sends two events one minute apart (1-minute tumbling
//! windows), keys arrive in order over ten minutes of event time (a tenth
//! of them new each minute, at least 1,000), in batches of 10,000 messages on one partition. Resident memory is read
//! from `/proc/self/status` after every batch.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::decode::{DeadLetterKind, RawMessage};
use crate::error::Result;
use crate::offsets::OffsetTracker;
use crate::pipeline::Core;
use crate::sink::Output;

/// What a soak run saw.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub keys: u64,
    pub events: u64,
    /// Events in closed windows (the windows' counts summed).
    pub events_in_windows: u64,
    /// Events still in open windows at the end.
    pub events_open: u64,
    /// Dead letters by kind, and the events the `evicted` ones stand for.
    pub evicted_letters: u64,
    pub evicted_events: u64,
    pub other_letters: u64,
    pub windows: u64,
    pub forecasts: u64,
    pub live_keys_max: usize,
    pub rss_start_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
    pub seconds: f64,
}

/// VmRSS of this process in MiB (0 where /proc is absent).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `keys` distinct keys through a core built from `overrides` (TOML
/// merged into the minimal pipeline; set `window.max_keys` there).
pub fn run(keys: u64, overrides: &str) -> Result<SoakReport> {
    let cfg = super::pipeline(&super::merge_toml(
        "[decode]\ntime_format = \"epoch_ms\"\n[window]\nsize = \"1m\"\nmax_gap_windows = 2\n[model]\nhidden = 8\nhorizon = 4\nwarmup_windows = 1\nseason_windows = 4\n",
        overrides,
    ));
    let mut core = Core::new(&cfg, Arc::new(Mutex::new(OffsetTracker::new())))?;
    let t0 = Instant::now();
    let mut r = SoakReport {
        keys,
        rss_start_mib: rss_mib(),
        ..SoakReport::default()
    };
    const MINUTE: i64 = 60_000;
    let per_minute = (keys / 10).max(1_000);
    const BATCH: usize = 10_000;
    let base = 1_700_000_040_000i64 - 1_700_000_040_000 % MINUTE;
    // Events in time order: at minute m, keys first seen at m (first event)
    // and those first seen at m-1 (second event).
    let minutes = keys.div_ceil(per_minute) + 1;
    let mut batch = Vec::with_capacity(BATCH);
    let mut offset = 0i64;
    let absorb = |outs: Vec<Output>, r: &mut SoakReport| {
        for o in outs {
            match o {
                Output::Forecasts {
                    forecasts, windows, ..
                } => {
                    r.windows += windows.num_rows() as u64;
                    r.forecasts += forecasts.num_rows() as u64;
                    let count = windows
                        .column_by_name("count")
                        .and_then(|c| {
                            c.as_any()
                                .downcast_ref::<arrow::array::UInt32Array>()
                                .map(|a| a.values().iter().map(|&v| u64::from(v)).sum::<u64>())
                        })
                        .unwrap_or(0);
                    r.events_in_windows += count;
                }
                Output::DeadLetters { letters, .. } => {
                    for d in letters {
                        if d.kind == DeadLetterKind::Evicted {
                            r.evicted_letters += 1;
                            r.evicted_events +=
                                serde_json::from_slice::<serde_json::Value>(&d.payload)
                                    .ok()
                                    .and_then(|v| v["events"].as_u64())
                                    .unwrap_or(0);
                        } else {
                            r.other_letters += 1;
                        }
                    }
                }
                Output::Accuracy(_) | Output::Checkpoint(_) | Output::Abandon => {}
            }
        }
    };
    for m in 0..minutes {
        let ts = base + m as i64 * MINUTE + 1;
        let firsts = (m * per_minute)..((m + 1) * per_minute).min(keys);
        let seconds = (m.saturating_sub(1) * per_minute)..(m * per_minute).min(keys);
        let seconds = if m == 0 { 0..0 } else { seconds };
        for i in seconds.chain(firsts) {
            offset += 1;
            batch.push(RawMessage {
                payload: Some(
                    format!(r#"{{"key":"k{i}","ts":{ts},"value":{}}}"#, i % 97).into_bytes(),
                ),
                partition: 0,
                offset,
                timestamp_ms: None,
            });
            if batch.len() == BATCH {
                let outs = core.on_messages(&batch, 0)?;
                r.events += batch.len() as u64;
                batch.clear();
                absorb(outs, &mut r);
                r.live_keys_max = r.live_keys_max.max(core.window().live_keys());
                r.rss_peak_mib = r.rss_peak_mib.max(rss_mib());
            }
        }
    }
    if !batch.is_empty() {
        r.events += batch.len() as u64;
        let outs = core.on_messages(&batch, 0)?;
        absorb(outs, &mut r);
    }
    r.events_open = r.events - r.events_in_windows - r.evicted_events - r.other_letters;
    r.rss_end_mib = rss_mib();
    r.rss_peak_mib = r.rss_peak_mib.max(r.rss_end_mib);
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

#[cfg(test)]
mod tests {
    /// `scripts/bench_soak`: `STREAMCAST_SOAK_KEYS` keys with
    /// `window.max_keys = STREAMCAST_SOAK_MAX_KEYS`.
    #[test]
    #[ignore = "long; run by scripts/bench_soak"]
    fn soak_long() {
        let env = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let keys = env("STREAMCAST_SOAK_KEYS", 10_000_000);
        let max_keys = env("STREAMCAST_SOAK_MAX_KEYS", 1_000_000);
        let r = super::run(keys, &format!("[window]\nmax_keys = {max_keys}")).unwrap();
        println!("{r:#?}");
        println!(
            "events/s {:.0}; every event accounted for: {} in windows + {} evicted + {} open = {}",
            r.events as f64 / r.seconds,
            r.events_in_windows,
            r.evicted_events,
            r.events_open,
            r.events
        );
    }

    /// A small soak: 30,000 keys through a core that holds at most 5,000.
    /// Every event is in a window, in an `evicted` letter, or in a window
    /// still open at the end (at most the last two minutes' keys, 3,000 a
    /// minute).
    #[test]
    fn soak_smoke_accounts_for_every_event() {
        let r = super::run(30_000, "[window]\nmax_keys = 5000").unwrap();
        assert_eq!(r.events, 60_000);
        assert!(r.live_keys_max <= 5_000, "{r:?}");
        assert_eq!(r.other_letters, 0, "{r:?}");
        assert!(r.evicted_letters > 0, "the bound was reached: {r:?}");
        assert!(r.events_open <= 2 * 2 * 3_000, "{r:?}");
        assert!(r.forecasts > 0 && r.windows == r.forecasts, "{r:?}");
    }
}
