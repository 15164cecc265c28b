//! Durable per-key state: what lets a restart, a rebalance or another
//! instance continue exactly where the last owner of a partition stopped.
//!
//! The unit of state is the input partition (every key lives on one; see
//! `window`'s partition rule). Its state is kept on a compacted changelog
//! topic with the input's partition count; a key's records go to the
//! changelog partition of its input partition:
//!
//! | record key  | value                                         | changes when            |
//! |-------------|-----------------------------------------------|-------------------------|
//! | `w/<key>`   | [`WindowKeyState`]: open panes, fill state    | an event arrives        |
//! | `m/<key>`   | [`ModelKeyState`]: hidden state, scaler, rings | one of its windows closes |
//! | `p`         | [`PartitionState`]: the partition's clock     | its largest event time moves |
//!
//! A key whose series ends (gap, TTL, key cap) gets a tombstone for both.
//! Splitting window and model records keeps the changelog traffic of a
//! checkpoint proportional to what changed: events touch the small `w/`
//! record; the larger `m/` record is written only when a window closed.
//!
//! Invariant (checkpoint): the changelog records and the committed input
//! offsets describe the same moment. A [`Checkpoint`] carries both; the sink
//! publishes the records only after every output produced before it was
//! acknowledged, then commits the offsets (in one Kafka transaction in
//! exactly-once mode). Restoring a partition's records and reading its input
//! from the committed offset therefore recomputes exactly what the last
//! owner would have computed next.
//!
//! Values are `[FORMAT_VERSION, postcard bytes]`: compact, and a record
//! written by an incompatible future format is refused with a clear error
//! rather than misread.

pub mod changelog;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::offsets::Position;

/// The first byte of every changelog value.
pub const FORMAT_VERSION: u8 = 1;

/// One open pane of a key (see `window`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaneState {
    pub count: u32,
    pub last_ts: i64,
    pub acc: Vec<f64>,
}

/// A key's window state: everything but the delivery pins, which only
/// matter to the process that took the events in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowKeyState {
    pub next_win: i64,
    pub panes: Vec<PaneState>,
    pub emitted_any: bool,
    pub last_values: Vec<f64>,
    pub empty_run: u32,
    pub last_event_ts: i64,
}

/// A key's model state (one slot of `model::StateStore`), with the version
/// of the model whose hidden state it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelKeyState {
    pub version: String,
    pub seen: i64,
    /// The network's per-key state, row-major: `[layers, hidden]` for the
    /// recurrent cells, wider with attention or the transformer (whatever
    /// `Network::state_dims` says; the store checks the width on import).
    pub h: Vec<f32>,
    /// The LSTM's cell state, else empty.
    pub c: Vec<f32>,
    /// Online scaler per value field.
    pub n: Vec<f64>,
    pub mean: Vec<f64>,
    pub m2: Vec<f64>,
    /// The last `W` target values.
    pub ring: Vec<f64>,
    /// The last `W` network inputs without lags, `[W, n_in]` row-major.
    pub inputs: Vec<f32>,
    /// The last one-step output (output recurrence), 0 when unused.
    pub prev: f32,
}

/// A key's live-accuracy state beside its model state: the scorer's
/// (pending forecasts, running scores, calibration windows) and the
/// per-key chooser's, each when enabled. Plain data: `score` and `choose`
/// convert to and from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveKeyState {
    pub score: Option<ScoreKeyState>,
    pub choice: Option<ChoiceKeyState>,
}

/// A key's ES-hybrid smoothing state (`model::hybrid`, `[model.hybrid]`),
/// beside its model state and written with it (both change when a window
/// of the key closes). The smoothing parameters come from the pipeline,
/// not the record. A record of its own (`h/`), so changelogs written
/// before the hybrid existed restore unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HybridKeyState {
    /// Values buffered while the key warms up (`ready = false`).
    pub warming: Vec<f64>,
    pub ready: bool,
    /// Smoothed log level, log seasonal factors per period, windows seen.
    pub level: f64,
    pub seasons: Vec<Vec<f64>>,
    pub t: u64,
    /// The key's own (alpha, gammas) when they were fitted per key
    /// (`[model.hybrid] fit = "per_series"`); None = the pipeline's. Last,
    /// and optional on decode: records written before it restore (postcard
    /// is not self-describing, so `#[serde(default)]` alone would not do:
    /// see the `Deserialize` impl).
    pub coefficients: Option<(f64, Vec<f64>)>,
}

/// Field by field, so that a record without the trailing `coefficients`
/// (written before it existed) decodes with `None`: postcard reads struct
/// fields as a sequence and reports the end of the record as an error on
/// the next element, which for that one optional field means "absent".
impl<'de> Deserialize<'de> for HybridKeyState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        const FIELDS: &[&str] = &["warming", "ready", "level", "seasons", "t", "coefficients"];
        /// The same fields, for self-describing formats (maps).
        #[derive(Deserialize)]
        struct Named {
            warming: Vec<f64>,
            ready: bool,
            level: f64,
            seasons: Vec<Vec<f64>>,
            t: u64,
            #[serde(default)]
            coefficients: Option<(f64, Vec<f64>)>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HybridKeyState;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a hybrid key state")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<HybridKeyState, A::Error> {
                use serde::de::Error as _;
                let missing = |i: usize| A::Error::invalid_length(i, &"at least 5 fields");
                let warming = seq.next_element()?.ok_or_else(|| missing(0))?;
                let ready = seq.next_element()?.ok_or_else(|| missing(1))?;
                let level = seq.next_element()?.ok_or_else(|| missing(2))?;
                let seasons = seq.next_element()?.ok_or_else(|| missing(3))?;
                let t = seq.next_element()?.ok_or_else(|| missing(4))?;
                let coefficients = seq.next_element().ok().flatten().flatten();
                Ok(HybridKeyState {
                    warming,
                    ready,
                    level,
                    seasons,
                    t,
                    coefficients,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<HybridKeyState, A::Error> {
                let n = Named::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(HybridKeyState {
                    warming: n.warming,
                    ready: n.ready,
                    level: n.level,
                    seasons: n.seasons,
                    t: n.t,
                    coefficients: n.coefficients,
                })
            }
        }
        d.deserialize_struct("HybridKeyState", FIELDS, V)
    }
}

/// See `score::Scorer` (its per-key state, version indices as names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreKeyState {
    /// (origin window end, model version, source index) per pending forecast.
    pub pending: Vec<(i64, String, u8)>,
    pub values: Vec<f32>,
    pub qvalues: Vec<f32>,
    pub qraw: Vec<f32>,
    pub recent: Vec<f32>,
    pub scale_sum: f64,
    pub scale_n: u32,
    /// Per scored step: abs, smape, scaled, pinball sums; n, n scaled, covered.
    pub sums: Vec<(f64, f64, f64, f64, u64, u64, u64)>,
    pub conformity: Vec<Vec<f32>>,
    pub conformity_source: u8,
}

/// See `choose::Chooser` (its per-key state).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceKeyState {
    pub recent: Vec<f64>,
    pub level: Option<f64>,
    pub pending: Vec<(i64, Vec<f32>)>,
    pub err: Vec<f64>,
    pub weight: Vec<f64>,
    pub scored: u32,
    /// The serving candidate's name.
    pub serving: String,
}

/// A partition's clock: the largest event time it has delivered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    pub max_ts: Option<i64>,
}

/// One changelog record: `value = None` is a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRecord {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// What a checkpoint publishes: the changed state and, committed with it,
/// the input position it corresponds to.
#[derive(Debug)]
pub struct Checkpoint {
    /// Increasing from 1 within a run (the archive follows it).
    pub id: u64,
    pub records: Vec<StateRecord>,
    /// Next offset to read per partition (only partitions read since the
    /// last checkpoint).
    pub offsets: Vec<Position>,
    /// The assignment generation of each partition at the checkpoint: when
    /// one has moved since (a lost assignment), the sink aborts the whole
    /// checkpoint with everything since the previous one.
    pub epochs: Vec<(i32, u64)>,
    /// Told once the checkpoint is committed (a revocation waits on it).
    pub done: Option<std::sync::mpsc::SyncSender<()>>,
}

/// Record keys.
pub fn window_key(key: &str) -> Vec<u8> {
    [b"w/", key.as_bytes()].concat()
}

pub fn model_key(key: &str) -> Vec<u8> {
    [b"m/", key.as_bytes()].concat()
}

pub fn live_key(key: &str) -> Vec<u8> {
    [b"l/", key.as_bytes()].concat()
}

pub fn hybrid_key(key: &str) -> Vec<u8> {
    [b"h/", key.as_bytes()].concat()
}

pub const PARTITION_KEY: &[u8] = b"p";

/// Encodes a value: the format byte, then postcard.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_VERSION];
    postcard::to_io(v, &mut out)
        .map_err(|e| Error::State(format!("encoding a state record: {e}")))?;
    Ok(out)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => postcard::from_bytes(rest)
            .map_err(|e| Error::State(format!("decoding a state record: {e}"))),
        Some((v, _)) => Err(Error::State(format!(
            "state record format {v} is not known to this build (expects {FORMAT_VERSION}); \
             was the changelog written by a newer streamcast?"
        ))),
        None => Err(Error::State("empty state record".into())),
    }
}

/// Everything the changelog held for one partition.
#[derive(Debug, Default)]
pub struct RestoredPartition {
    pub partition: i32,
    pub clock: Option<i64>,
    pub windows: Vec<(Arc<str>, WindowKeyState)>,
    pub models: Vec<(Arc<str>, ModelKeyState)>,
    pub live: Vec<(Arc<str>, LiveKeyState)>,
    pub hybrid: Vec<(Arc<str>, HybridKeyState)>,
    /// Records read (tombstones and superseded ones included) and their bytes.
    pub records: u64,
    pub bytes: u64,
}

impl RestoredPartition {
    /// Folds the records of a partition, oldest first, into its latest
    /// state (what compaction will eventually leave).
    pub fn from_records<'a>(
        partition: i32,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<Self> {
        use std::collections::HashMap;
        let mut clock = None;
        let mut windows: HashMap<Arc<str>, WindowKeyState> = HashMap::new();
        let mut models: HashMap<Arc<str>, ModelKeyState> = HashMap::new();
        let mut live: HashMap<Arc<str>, LiveKeyState> = HashMap::new();
        let mut hybrid: HashMap<Arc<str>, HybridKeyState> = HashMap::new();
        let (mut n, mut bytes) = (0u64, 0u64);
        for (k, v) in records {
            n += 1;
            bytes += (k.len() + v.map_or(0, |v| v.len())) as u64;
            if k == PARTITION_KEY {
                if let Some(v) = v {
                    clock = decode::<PartitionState>(v)?.max_ts;
                }
                continue;
            }
            let (kind, name) = k.split_at(k.len().min(2));
            let name: Arc<str> = Arc::from(String::from_utf8_lossy(name).as_ref());
            match (kind, v) {
                (b"w/", Some(v)) => {
                    windows.insert(name, decode(v)?);
                }
                (b"w/", None) => {
                    windows.remove(&name);
                }
                (b"m/", Some(v)) => {
                    models.insert(name, decode(v)?);
                }
                (b"m/", None) => {
                    models.remove(&name);
                }
                (b"l/", Some(v)) => {
                    live.insert(name, decode(v)?);
                }
                (b"l/", None) => {
                    live.remove(&name);
                }
                (b"h/", Some(v)) => {
                    hybrid.insert(name, decode(v)?);
                }
                (b"h/", None) => {
                    hybrid.remove(&name);
                }
                _ => {
                    return Err(Error::State(format!(
                        "unknown record key {:?} on changelog partition {partition}",
                        String::from_utf8_lossy(k)
                    )))
                }
            }
        }
        let mut windows: Vec<_> = windows.into_iter().collect();
        let mut models: Vec<_> = models.into_iter().collect();
        let mut live: Vec<_> = live.into_iter().collect();
        let mut hybrid: Vec<_> = hybrid.into_iter().collect();
        // Deterministic restore order (slot allocation, eviction).
        windows.sort_by(|a, b| a.0.cmp(&b.0));
        models.sort_by(|a, b| a.0.cmp(&b.0));
        live.sort_by(|a, b| a.0.cmp(&b.0));
        hybrid.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(RestoredPartition {
            partition,
            clock,
            windows,
            models,
            live,
            hybrid,
            records: n,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(next_win: i64) -> WindowKeyState {
        WindowKeyState {
            next_win,
            panes: vec![PaneState {
                count: 2,
                last_ts: 7,
                acc: vec![1.5, f64::NAN],
            }],
            emitted_any: true,
            last_values: vec![1.0, 2.0],
            empty_run: 0,
            last_event_ts: 7,
        }
    }

    #[test]
    fn values_round_trip_and_unknown_formats_are_refused() {
        let w = ws(3);
        let bytes = encode(&w).unwrap();
        let back: WindowKeyState = decode(&bytes).unwrap();
        assert_eq!(back.next_win, 3);
        assert!(back.panes[0].acc[1].is_nan(), "NaN survives");
        let mut future = bytes.clone();
        future[0] = 99;
        let e = decode::<WindowKeyState>(&future).unwrap_err().to_string();
        assert!(e.contains("format 99"), "{e}");
    }

    #[test]
    fn the_latest_record_per_key_wins_and_tombstones_delete() {
        let a1 = encode(&ws(1)).unwrap();
        let a2 = encode(&ws(2)).unwrap();
        let b = encode(&ws(5)).unwrap();
        let clock = encode(&PartitionState { max_ts: Some(42) }).unwrap();
        let recs: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (window_key("a"), Some(a1)),
            (window_key("b"), Some(b)),
            (window_key("a"), Some(a2)),
            (window_key("b"), None),
            (PARTITION_KEY.to_vec(), Some(clock)),
        ];
        let r = RestoredPartition::from_records(
            0,
            recs.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
        )
        .unwrap();
        assert_eq!(r.clock, Some(42));
        assert_eq!(r.windows.len(), 1);
        assert_eq!(&*r.windows[0].0, "a");
        assert_eq!(r.windows[0].1.next_win, 2);
        assert_eq!(r.records, 5);
    }
}
