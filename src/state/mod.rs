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
//! Values are `[format byte, postcard bytes]`: compact, and a record
//! written by an incompatible future format is refused with a clear error
//! rather than misread. `w/`, `h/` and `p` records are format
//! [`FORMAT_VERSION`] (1). `m/` records are written in format
//! [`MODEL_FORMAT`] (2, see [`ModelEncoder`]): the rings hold only the
//! windows the key has had (a key in its first `W` windows writes `seen`
//! entries, not `W`), and the input ring leaves out the target-missing
//! column, which is the ring's NaNs. `l/` records are written in format
//! [`LIVE_FORMAT`] (2, [`encode_live`]): each model version named by the
//! pending forecasts once. Format 1 `m/` and `l/` records (the plain
//! structs) still restore.
//!
//! Invariant (model records): `decode_model(encode_model(s)) == s`, bit for
//! bit, for every state the store can hold; the encoder checks each
//! shortcut (unwritten ring entries are zero, the missing column is the
//! ring's NaNs) per key and writes the full ring when one does not hold.

pub mod changelog;

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::offsets::Position;

/// The first byte of every changelog value but the model's.
pub const FORMAT_VERSION: u8 = 1;

/// The first byte of a model (`m/`) record written by this build.
pub const MODEL_FORMAT: u8 = 2;

/// The first byte of a live-accuracy (`l/`) record written by this build:
/// [`LiveKeyState`] with each model version its pending forecasts name
/// written once (format 1 repeated it per pending forecast).
pub const LIVE_FORMAT: u8 = 2;

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

/// `Deserialize` for a persisted per-key state whose last fields were added
/// later: a record written before them (no trailing fields) decodes with
/// them at their `Default`. postcard is not self-describing and reads a
/// struct's fields as a sequence, reporting the end of the record as an
/// error on the next element, so `#[serde(default)]` alone would not do:
/// an error (or end) on the *first* trailing field means "an older
/// record"; once it is present, the later trailing fields are required.
/// Maps (self-describing formats) take the derived path with
/// `#[serde(default)]` on the trailing fields. This works only for a
/// struct that is the last thing in its record (nothing follows it).
macro_rules! deserialize_with_trailing_defaults {
    ($ty:ident, $what:literal, [$($req:ident: $rt:ty),+ $(,)?], [$($opt:ident: $ot:ty),+ $(,)?]) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                const FIELDS: &[&str] = &[$(stringify!($req),)+ $(stringify!($opt),)+];
                const REQUIRED: usize = [$(stringify!($req),)+].len();
                /// The same fields, for self-describing formats (maps).
                #[derive(Deserialize)]
                struct Named {
                    $($req: $rt,)+
                    $(#[serde(default)] $opt: $ot,)+
                }
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> std::result::Result<$ty, A::Error> {
                        use serde::de::Error as _;
                        let missing = |i: usize| {
                            A::Error::invalid_length(i, &concat!($what, " with every field before the trailing ones"))
                        };
                        let mut i = 0usize;
                        $(
                            let $req: $rt = seq.next_element()?.ok_or_else(|| missing(i))?;
                            i += 1;
                        )+
                        let mut older = false;
                        $(
                            let $opt: $ot = if older {
                                Default::default()
                            } else {
                                match seq.next_element::<$ot>() {
                                    Ok(Some(v)) => v,
                                    Ok(None) | Err(_) if i == REQUIRED => {
                                        older = true;
                                        Default::default()
                                    }
                                    Ok(None) => return Err(missing(i)),
                                    Err(e) => return Err(e),
                                }
                            };
                            i += 1;
                        )+
                        let _ = (i, older);
                        Ok($ty { $($req,)+ $($opt,)+ })
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> std::result::Result<$ty, A::Error> {
                        let n = Named::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                        Ok($ty { $($req: n.$req,)+ $($opt: n.$opt,)+ })
                    }
                }
                d.deserialize_struct(stringify!($ty), FIELDS, V)
            }
        }
    };
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

deserialize_with_trailing_defaults!(
    HybridKeyState,
    "a hybrid key state",
    [warming: Vec<f64>, ready: bool, level: f64, seasons: Vec<Vec<f64>>, t: u64],
    [coefficients: Option<(f64, Vec<f64>)>]
);

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
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChoiceKeyState {
    pub recent: Vec<f64>,
    pub level: Option<f64>,
    pub pending: Vec<(i64, Vec<f32>)>,
    pub err: Vec<f64>,
    pub weight: Vec<f64>,
    pub scored: u32,
    /// The serving candidate's name.
    pub serving: String,
    /// The regime-change guard's fast error means per candidate (empty
    /// without the guard). Last, and optional on decode: a record written
    /// before they existed restores with both empty (see the
    /// `Deserialize` impl). This works because the chooser's state is the
    /// last field of a live record (both formats): nothing follows it.
    pub fast_err: Vec<f64>,
    pub fast_weight: Vec<f64>,
}

deserialize_with_trailing_defaults!(
    ChoiceKeyState,
    "a choice key state",
    [
        recent: Vec<f64>,
        level: Option<f64>,
        pending: Vec<(i64, Vec<f32>)>,
        err: Vec<f64>,
        weight: Vec<f64>,
        scored: u32,
        serving: String
    ],
    [fast_err: Vec<f64>, fast_weight: Vec<f64>]
);

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
    SCRATCH.with(|s| encode_with(FORMAT_VERSION, v, &mut s.borrow_mut()))
}

thread_local! {
    /// Where records are serialized before their one exact-size copy (a
    /// checkpoint encodes ~100k small records on the compute thread; growing
    /// each from empty cost several reallocations apiece).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `[format, postcard(v)]`, serialized into `scratch` (grown as needed and
/// kept) and copied out once.
fn encode_with<T: Serialize + ?Sized>(format: u8, v: &T, scratch: &mut Vec<u8>) -> Result<Vec<u8>> {
    if scratch.len() < 256 {
        scratch.resize(256, 0);
    }
    loop {
        match postcard::to_slice(v, &mut scratch[..]) {
            Ok(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 1);
                out.push(format);
                out.extend_from_slice(bytes);
                return Ok(out);
            }
            Err(postcard::Error::SerializeBufferFull) => {
                let n = scratch.len() * 2;
                scratch.resize(n, 0);
            }
            Err(e) => return Err(Error::State(format!("encoding a state record: {e}"))),
        }
    }
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

/// A key's model state as the store holds it, borrowed (one slot's rows
/// of the export's bulk buffers): what [`ModelEncoder`] writes.
#[derive(Debug, Clone, Copy)]
pub struct ModelParts<'a> {
    pub version: &'a str,
    pub seen: i64,
    pub h: &'a [f32],
    pub c: &'a [f32],
    pub n: &'a [f64],
    pub mean: &'a [f64],
    pub m2: &'a [f64],
    /// `[W]`, by ring position (window `i` of the key at `i mod W`).
    pub ring: &'a [f64],
    /// `[W, n_in]`, by ring position; column `n.len()` is the target-missing
    /// flag (see `model::network_input`).
    pub inputs: &'a [f32],
    pub prev: f32,
}

impl ModelKeyState {
    pub fn parts(&self) -> ModelParts<'_> {
        ModelParts {
            version: &self.version,
            seen: self.seen,
            h: &self.h,
            c: &self.c,
            n: &self.n,
            mean: &self.mean,
            m2: &self.m2,
            ring: &self.ring,
            inputs: &self.inputs,
            prev: self.prev,
        }
    }
}

/// Format 2 of a model record. Field order is the wire order (postcard).
#[derive(Serialize)]
struct ModelWire<'a> {
    version: &'a str,
    seen: i64,
    /// `W`, and the width of a live input row.
    ring_len: u32,
    n_in: u32,
    /// Whether the input rows leave out column `n.len()` (the target-missing
    /// flag: 1 where the ring's value is NaN, else 0).
    flag_dropped: bool,
    h: &'a [f32],
    c: &'a [f32],
    n: &'a [f64],
    mean: &'a [f64],
    m2: &'a [f64],
    /// The last `k` values, oldest first (window `seen - k + j` at `j`); the
    /// ring's other `W - k` entries are zero.
    ring: &'a [f64],
    /// The same `k` windows' input rows, `[k, n_in - flag_dropped]`.
    inputs: &'a [f32],
    prev: f32,
}

/// [`ModelWire`], owned, for decoding.
#[derive(Deserialize)]
struct ModelWireOwned {
    version: String,
    seen: i64,
    ring_len: u32,
    n_in: u32,
    flag_dropped: bool,
    h: Vec<f32>,
    c: Vec<f32>,
    n: Vec<f64>,
    mean: Vec<f64>,
    m2: Vec<f64>,
    ring: Vec<f64>,
    inputs: Vec<f32>,
    prev: f32,
}

/// Ring position of the `j`-th of the last `k` windows of a key that has
/// had `seen`.
fn ring_pos(seen: i64, k: usize, j: usize, w: usize) -> usize {
    (seen - k as i64 + j as i64).rem_euclid(w.max(1) as i64) as usize
}

/// Writes model records in format 2, reusing its buffers from key to key
/// (one allocation per record: the record itself).
#[derive(Debug, Default)]
pub struct ModelEncoder {
    ring: Vec<f64>,
    inputs: Vec<f32>,
    scratch: Vec<u8>,
}

impl ModelEncoder {
    pub fn encode(&mut self, p: &ModelParts<'_>) -> Result<Vec<u8>> {
        let w = p.ring.len();
        let n_in = p.inputs.len().checked_div(w).unwrap_or(0);
        if p.inputs.len() != w * n_in {
            return Err(Error::State(format!(
                "model state: {} inputs do not fill a ring of {w}",
                p.inputs.len()
            )));
        }
        let zero64 = |v: &f64| v.to_bits() == 0;
        let zero32 = |v: &f32| v.to_bits() == 0;
        // Windows the ring holds; a key in its first W windows has written
        // positions 0..seen only, the rest still zero (checked, else all).
        let mut k = usize::try_from(p.seen.max(0)).unwrap_or(usize::MAX).min(w);
        if k < w && !(p.ring[k..].iter().all(zero64) && p.inputs[k * n_in..].iter().all(zero32)) {
            k = w;
        }
        // The target-missing column is the ring's NaNs (checked per row).
        let fld = p.n.len();
        let flag = |v: f64| if v.is_nan() { 1.0f32 } else { 0.0f32 };
        let drop = fld < n_in
            && (0..k).all(|j| {
                let i = ring_pos(p.seen, k, j, w);
                p.inputs[i * n_in + fld].to_bits() == flag(p.ring[i]).to_bits()
            });
        self.ring.clear();
        self.inputs.clear();
        for j in 0..k {
            let i = ring_pos(p.seen, k, j, w);
            self.ring.push(p.ring[i]);
            let row = &p.inputs[i * n_in..(i + 1) * n_in];
            if drop {
                self.inputs.extend_from_slice(&row[..fld]);
                self.inputs.extend_from_slice(&row[fld + 1..]);
            } else {
                self.inputs.extend_from_slice(row);
            }
        }
        let wire = ModelWire {
            version: p.version,
            seen: p.seen,
            ring_len: u32::try_from(w).map_err(|_| Error::State("model ring too long".into()))?,
            n_in: u32::try_from(n_in).map_err(|_| Error::State("model input too wide".into()))?,
            flag_dropped: drop,
            h: p.h,
            c: p.c,
            n: p.n,
            mean: p.mean,
            m2: p.m2,
            ring: &self.ring,
            inputs: &self.inputs,
            prev: p.prev,
        };
        encode_with(MODEL_FORMAT, &wire, &mut self.scratch)
    }
}

/// Encodes a model record (format [`MODEL_FORMAT`]).
pub fn encode_model(st: &ModelKeyState) -> Result<Vec<u8>> {
    ModelEncoder::default().encode(&st.parts())
}

/// Decodes a model record of format 2 or 1.
pub fn decode_model(bytes: &[u8]) -> Result<ModelKeyState> {
    let bad = |what: &str| Error::State(format!("decoding a model state record: {what}"));
    let rest = match bytes.split_first() {
        Some((&MODEL_FORMAT, rest)) => rest,
        Some((&FORMAT_VERSION, _)) => return decode(bytes),
        Some((v, _)) => {
            return Err(Error::State(format!(
                "model state record format {v} is not known to this build (expects {MODEL_FORMAT} \
                 or {FORMAT_VERSION}); was the changelog written by a newer streamcast?"
            )))
        }
        None => return Err(Error::State("empty state record".into())),
    };
    let r: ModelWireOwned = postcard::from_bytes(rest)
        .map_err(|e| Error::State(format!("decoding a model state record: {e}")))?;
    let (w, n_in, k) = (r.ring_len as usize, r.n_in as usize, r.ring.len());
    // A corrupt record must not allocate without bound.
    if w.saturating_mul(n_in.max(1)) > 1 << 26 {
        return Err(bad("its ring is implausibly large"));
    }
    let fld = r.n.len();
    let width = n_in - usize::from(r.flag_dropped && fld < n_in);
    if k > w || r.inputs.len() != k * width || (r.flag_dropped && fld >= n_in) {
        return Err(bad("its rings do not match their shape"));
    }
    let mut ring = vec![0.0f64; w];
    let mut inputs = vec![0.0f32; w * n_in];
    for j in 0..k {
        let i = ring_pos(r.seen, k, j, w);
        ring[i] = r.ring[j];
        let src = &r.inputs[j * width..(j + 1) * width];
        let dst = &mut inputs[i * n_in..(i + 1) * n_in];
        if r.flag_dropped {
            dst[..fld].copy_from_slice(&src[..fld]);
            dst[fld] = if r.ring[j].is_nan() { 1.0 } else { 0.0 };
            dst[fld + 1..].copy_from_slice(&src[fld..]);
        } else {
            dst.copy_from_slice(src);
        }
    }
    Ok(ModelKeyState {
        version: r.version,
        seen: r.seen,
        h: r.h,
        c: r.c,
        n: r.n,
        mean: r.mean,
        m2: r.m2,
        ring,
        inputs,
        prev: r.prev,
    })
}

/// Format 2 of a live record: [`ScoreKeyState`] with its pending
/// forecasts' versions as indices into `versions`.
#[derive(Serialize)]
struct LiveWire<'a> {
    versions: Vec<&'a str>,
    score: Option<ScoreWire<'a>>,
    choice: Option<&'a ChoiceKeyState>,
}

#[derive(Serialize)]
struct ScoreWire<'a> {
    /// (origin window end, index into `versions`, source index).
    pending: Vec<(i64, u32, u8)>,
    values: &'a [f32],
    qvalues: &'a [f32],
    qraw: &'a [f32],
    recent: &'a [f32],
    scale_sum: f64,
    scale_n: u32,
    sums: &'a [(f64, f64, f64, f64, u64, u64, u64)],
    conformity: &'a [Vec<f32>],
    conformity_source: u8,
}

#[derive(Deserialize)]
struct LiveWireOwned {
    versions: Vec<String>,
    score: Option<ScoreWireOwned>,
    choice: Option<ChoiceKeyState>,
}

#[derive(Deserialize)]
struct ScoreWireOwned {
    pending: Vec<(i64, u32, u8)>,
    values: Vec<f32>,
    qvalues: Vec<f32>,
    qraw: Vec<f32>,
    recent: Vec<f32>,
    scale_sum: f64,
    scale_n: u32,
    sums: Vec<(f64, f64, f64, f64, u64, u64, u64)>,
    conformity: Vec<Vec<f32>>,
    conformity_source: u8,
}

/// Encodes a live record (format [`LIVE_FORMAT`]).
pub fn encode_live(l: &LiveKeyState) -> Result<Vec<u8>> {
    let mut versions: Vec<&str> = Vec::new();
    let score = l.score.as_ref().map(|s| ScoreWire {
        pending: s
            .pending
            .iter()
            .map(|(end, v, src)| {
                let i = match versions.iter().position(|x| *x == v.as_str()) {
                    Some(i) => i,
                    None => {
                        versions.push(v);
                        versions.len() - 1
                    }
                };
                (*end, i as u32, *src)
            })
            .collect(),
        values: &s.values,
        qvalues: &s.qvalues,
        qraw: &s.qraw,
        recent: &s.recent,
        scale_sum: s.scale_sum,
        scale_n: s.scale_n,
        sums: &s.sums,
        conformity: &s.conformity,
        conformity_source: s.conformity_source,
    });
    let wire = LiveWire {
        versions,
        score,
        choice: l.choice.as_ref(),
    };
    SCRATCH.with(|b| encode_with(LIVE_FORMAT, &wire, &mut b.borrow_mut()))
}

/// A scorer's per-key state as it lies in memory (deques; pending
/// forecasts' versions as indices into the scorer's table `versions`), for
/// encoding a live record without first copying it into a
/// [`ScoreKeyState`] (`Scorer::export` did that for every key of every
/// closing checkpoint: ~0.25 s per 100k keys, BENCHMARKS.md).
/// `S` must serialize like the `sums` tuple of [`ScoreKeyState`] (postcard
/// writes a struct of the same fields in the same order identically).
pub struct ScoreView<'a, S: Serialize> {
    pub pending: &'a VecDeque<(i64, u16, u8)>,
    pub versions: &'a [Arc<str>],
    pub values: &'a VecDeque<f32>,
    pub qvalues: &'a VecDeque<f32>,
    pub qraw: &'a VecDeque<f32>,
    pub recent: &'a VecDeque<f32>,
    pub scale_sum: f64,
    pub scale_n: u32,
    pub sums: &'a [S],
    pub conformity: &'a [VecDeque<f32>],
    pub conformity_source: u8,
}

impl<S: Serialize> ScoreView<'_, S> {
    /// A pending forecast's version name ("" for an index the table no
    /// longer has, as `Scorer::export` wrote it).
    fn version(&self, i: u16) -> &str {
        self.versions.get(usize::from(i)).map_or("", |v| v)
    }
}

/// The view's pending forecasts with their versions as indices into the
/// record's own version list (`names`, in order of first use).
struct PendingWire<'a, 'b, S: Serialize> {
    view: &'b ScoreView<'a, S>,
    names: &'b [&'b str],
}

impl<S: Serialize> Serialize for PendingWire<'_, '_, S> {
    fn serialize<Z: serde::Serializer>(&self, z: Z) -> std::result::Result<Z::Ok, Z::Error> {
        use serde::ser::{Error as _, SerializeSeq};
        let mut seq = z.serialize_seq(Some(self.view.pending.len()))?;
        for &(end, v, src) in self.view.pending {
            let name = self.view.version(v);
            let i = self
                .names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| Z::Error::custom("a pending version missing from the record"))?;
            seq.serialize_element(&(end, i as u32, src))?;
        }
        seq.end()
    }
}

/// Format 2 of a live record from a [`ScoreView`]: the same bytes as
/// [`LiveWire`] of the equal [`ScoreKeyState`].
#[derive(Serialize)]
struct LiveViewWire<'a, 'b, S: Serialize> {
    versions: &'b [&'b str],
    score: Option<ScoreViewWire<'a, 'b, S>>,
    choice: Option<&'b ChoiceKeyState>,
}

#[derive(Serialize)]
struct ScoreViewWire<'a, 'b, S: Serialize> {
    pending: PendingWire<'a, 'b, S>,
    values: &'a VecDeque<f32>,
    qvalues: &'a VecDeque<f32>,
    qraw: &'a VecDeque<f32>,
    recent: &'a VecDeque<f32>,
    scale_sum: f64,
    scale_n: u32,
    sums: &'a [S],
    conformity: &'a [VecDeque<f32>],
    conformity_source: u8,
}

/// Encodes a live record (format [`LIVE_FORMAT`]) from the scorer's
/// in-memory state and the chooser's exported one: byte for byte what
/// [`encode_live`] writes for the same state.
pub fn encode_live_view<S: Serialize>(
    score: Option<&ScoreView<'_, S>>,
    choice: Option<&ChoiceKeyState>,
) -> Result<Vec<u8>> {
    let mut names: Vec<&str> = Vec::new();
    if let Some(v) = score {
        for &(_, i, _) in v.pending {
            let name = v.version(i);
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let wire = LiveViewWire {
        versions: &names,
        score: score.map(|v| ScoreViewWire {
            pending: PendingWire {
                view: v,
                names: &names,
            },
            values: v.values,
            qvalues: v.qvalues,
            qraw: v.qraw,
            recent: v.recent,
            scale_sum: v.scale_sum,
            scale_n: v.scale_n,
            sums: v.sums,
            conformity: v.conformity,
            conformity_source: v.conformity_source,
        }),
        choice,
    };
    SCRATCH.with(|b| encode_with(LIVE_FORMAT, &wire, &mut b.borrow_mut()))
}

/// Decodes a live record of format 2 or 1.
pub fn decode_live(bytes: &[u8]) -> Result<LiveKeyState> {
    let rest = match bytes.split_first() {
        Some((&LIVE_FORMAT, rest)) => rest,
        Some((&FORMAT_VERSION, _)) => return decode(bytes),
        Some((v, _)) => {
            return Err(Error::State(format!(
                "live state record format {v} is not known to this build (expects {LIVE_FORMAT} \
                 or {FORMAT_VERSION}); was the changelog written by a newer streamcast?"
            )))
        }
        None => return Err(Error::State("empty state record".into())),
    };
    let w: LiveWireOwned = postcard::from_bytes(rest)
        .map_err(|e| Error::State(format!("decoding a live state record: {e}")))?;
    let score = match w.score {
        None => None,
        Some(s) => {
            let pending = s
                .pending
                .into_iter()
                .map(|(end, i, src)| {
                    w.versions
                        .get(i as usize)
                        .map(|v| (end, v.clone(), src))
                        .ok_or_else(|| {
                            Error::State("decoding a live state record: no such version".into())
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            Some(ScoreKeyState {
                pending,
                values: s.values,
                qvalues: s.qvalues,
                qraw: s.qraw,
                recent: s.recent,
                scale_sum: s.scale_sum,
                scale_n: s.scale_n,
                sums: s.sums,
                conformity: s.conformity,
                conformity_source: s.conformity_source,
            })
        }
    };
    Ok(LiveKeyState {
        score,
        choice: w.choice,
    })
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
    /// state (what compaction will eventually leave). Only each key's
    /// latest record is decoded: an uncompacted changelog holds dozens of
    /// superseded records per key (one `w/` per checkpoint), and decoding
    /// them all was most of a restore's compute.
    pub fn from_records<'a>(
        partition: i32,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<Self> {
        use std::collections::HashMap;
        let mut clock_record = None;
        let mut latest: HashMap<&'a [u8], Option<&'a [u8]>, foldhash::fast::RandomState> =
            HashMap::default();
        let (mut n, mut bytes) = (0u64, 0u64);
        for (k, v) in records {
            n += 1;
            bytes += (k.len() + v.map_or(0, |v| v.len())) as u64;
            if k == PARTITION_KEY {
                if v.is_some() {
                    clock_record = v;
                }
                continue;
            }
            match k.get(..2) {
                Some(b"w/" | b"m/" | b"l/" | b"h/") => {
                    latest.insert(k, v);
                }
                _ => {
                    return Err(Error::State(format!(
                        "unknown record key {:?} on changelog partition {partition}",
                        String::from_utf8_lossy(k)
                    )))
                }
            }
        }
        let clock = match clock_record {
            Some(v) => decode::<PartitionState>(v)?.max_ts,
            None => None,
        };
        let mut r = RestoredPartition {
            partition,
            clock,
            records: n,
            bytes,
            ..Default::default()
        };
        for (k, v) in latest {
            let Some(v) = v else {
                continue; // a tombstone: the key ended
            };
            let (kind, name) = k.split_at(2);
            let name: Arc<str> = Arc::from(String::from_utf8_lossy(name).as_ref());
            match kind {
                b"w/" => r.windows.push((name, decode(v)?)),
                b"m/" => r.models.push((name, decode_model(v)?)),
                b"l/" => r.live.push((name, decode_live(v)?)),
                _ => r.hybrid.push((name, decode(v)?)),
            }
        }
        // Deterministic restore order (slot allocation, eviction).
        r.windows.sort_by(|a, b| a.0.cmp(&b.0));
        r.models.sort_by(|a, b| a.0.cmp(&b.0));
        r.live.sort_by(|a, b| a.0.cmp(&b.0));
        r.hybrid.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(r)
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

    /// A model state as the store holds it: `w` windows of ring, inputs
    /// `[w, 3]` (the value scaled, its missing flag, a covariate), `seen`
    /// windows had (positions `seen..w` still zero when `seen < w`).
    /// Every field distinct and non-zero, so that a field the encoding
    /// dropped or mixed up shows.
    fn model_state(seen: i64, w: usize) -> ModelKeyState {
        let mut ring = vec![0.0; w];
        let mut inputs = vec![0.0f32; w * 3];
        for i in 0..(seen.max(0) as usize).min(w) {
            let missing = i % 5 == 2;
            ring[i] = if missing {
                f64::NAN
            } else {
                10.0 + i as f64 * 0.25
            };
            inputs[i * 3] = if missing {
                0.0
            } else {
                -1.5 + i as f32 * 0.125
            };
            inputs[i * 3 + 1] = if missing { 1.0 } else { 0.0 };
            inputs[i * 3 + 2] = (i as f32).sin();
        }
        ModelKeyState {
            version: "v-7".into(),
            seen,
            h: (0..8).map(|i| i as f32 * 0.5 - 1.0).collect(),
            c: (0..8).map(|i| i as f32 * -0.25 + 3.0).collect(),
            n: vec![seen as f64],
            mean: vec![12.5],
            m2: vec![-0.0],
            ring,
            inputs,
            prev: 0.75,
        }
    }

    /// Equal bit for bit (NaN and -0.0 included): the format-1 encoding
    /// writes every field of the struct.
    fn same(a: &ModelKeyState, b: &ModelKeyState) -> bool {
        encode(a).unwrap() == encode(b).unwrap()
    }

    #[test]
    fn model_records_round_trip_bit_for_bit() {
        let mut cases = vec![
            model_state(0, 6),
            model_state(3, 6),
            model_state(6, 6),
            model_state(14, 6),
            model_state(3, 0),
        ];
        // Shortcuts that do not hold must not lose anything: a flag that
        // is not the ring's NaN, a non-zero entry past `seen`, a key with
        // no flag column (one field, one input column).
        let mut odd = model_state(14, 6);
        odd.inputs[4] = 0.5;
        cases.push(odd);
        let mut odd = model_state(2, 6);
        odd.ring[5] = 1.0;
        cases.push(odd);
        let mut odd = model_state(2, 6);
        odd.inputs[17] = -0.0;
        cases.push(odd);
        let mut odd = model_state(9, 4);
        odd.inputs = (0..4).map(|i| i as f32).collect();
        cases.push(odd);
        for st in &cases {
            let bytes = encode_model(st).unwrap();
            assert_eq!(bytes[0], MODEL_FORMAT);
            let back = decode_model(&bytes).unwrap();
            assert!(same(st, &back), "{st:?}\n{back:?}");
        }
        // Every field matters: change any one and the record changes.
        let base = model_state(14, 6);
        let b0 = encode_model(&base).unwrap();
        let mut changed: Vec<ModelKeyState> = Vec::new();
        for f in 0..10 {
            let mut s = base.clone();
            match f {
                0 => s.version.push('x'),
                1 => s.seen += 6,
                2 => s.h[7] += 1.0,
                3 => s.c[0] += 1.0,
                4 => s.n[0] += 1.0,
                5 => s.mean[0] += 1.0,
                6 => s.m2[0] = 0.0,
                7 => s.ring[3] += 1.0,
                8 => s.inputs[5] += 1.0,
                _ => s.prev += 1.0,
            }
            changed.push(s);
        }
        for s in &changed {
            assert_ne!(encode_model(s).unwrap(), b0, "{s:?}");
        }
    }

    #[test]
    fn model_records_are_smaller_and_old_ones_still_restore() {
        let (w, st) = (48, model_state(100, 48));
        let v1 = encode(&st).unwrap();
        let v2 = encode_model(&st).unwrap();
        // The missing flag (4 bytes a window) is left out.
        assert!(
            v2.len() + 4 * w <= v1.len() + 8,
            "{} vs {}",
            v2.len(),
            v1.len()
        );
        // A key in its first windows writes only those.
        let young = model_state(5, 48);
        let (y1, y2) = (encode(&young).unwrap(), encode_model(&young).unwrap());
        assert!(
            y2.len() + (8 + 8) * (w - 5) <= y1.len() + 8,
            "{} vs {}",
            y2.len(),
            y1.len()
        );
        // Format 1 (written before format 2 existed) decodes as it was.
        assert!(same(&decode_model(&v1).unwrap(), &st));
        let mut future = v2.clone();
        future[0] = 3;
        let e = decode_model(&future).unwrap_err().to_string();
        assert!(e.contains("format 3"), "{e}");
        // A truncated or inconsistent record is an error, not a panic.
        assert!(decode_model(&v2[..v2.len() / 2]).is_err());
        assert!(decode_model(&[MODEL_FORMAT]).is_err());
    }

    #[test]
    fn restore_reads_both_model_formats() {
        let (a, b) = (model_state(3, 6), model_state(20, 6));
        let recs: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (model_key("a"), Some(encode(&a).unwrap())),
            (model_key("b"), Some(encode_model(&a).unwrap())),
            (live_key("b"), Some(encode_live(&live_state()).unwrap())),
            (model_key("c"), Some(encode_model(&b).unwrap())),
            (live_key("b"), None),
            (model_key("b"), Some(encode_model(&b).unwrap())),
            (model_key("c"), None),
        ];
        let r = RestoredPartition::from_records(
            0,
            recs.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
        )
        .unwrap();
        // The latest record per key wins; a tombstone ends the key, a
        // later record brings it back.
        assert_eq!(r.models.len(), 2);
        assert_eq!((&*r.models[0].0, &*r.models[1].0), ("a", "b"));
        assert!(same(&r.models[0].1, &a) && same(&r.models[1].1, &b));
        assert!(r.live.is_empty());
        assert_eq!(r.records, 7);
    }

    fn live_state() -> LiveKeyState {
        LiveKeyState {
            score: Some(ScoreKeyState {
                pending: vec![
                    (3_600_000, "lstm-h32-20261128T0700".into(), 0),
                    (7_200_000, "lstm-h32-20261128T0800".into(), 1),
                    (10_800_000, "lstm-h32-20261128T0700".into(), 2),
                ],
                values: vec![1.0, 2.0],
                qvalues: vec![3.0],
                qraw: vec![4.0, f32::NAN],
                recent: vec![5.0],
                scale_sum: 6.5,
                scale_n: 7,
                sums: vec![
                    (1.0, 2.0, 3.0, 4.0, 5, 6, 7),
                    (8.0, 9.0, 10.0, 11.0, 12, 13, 14),
                ],
                conformity: vec![vec![0.5, 0.25], vec![]],
                conformity_source: 3,
            }),
            choice: Some(ChoiceKeyState {
                recent: vec![1.5],
                level: Some(2.5),
                pending: vec![(9, vec![1.0, 2.0])],
                err: vec![0.1],
                weight: vec![0.9],
                scored: 4,
                serving: "ets".into(),
                fast_err: vec![0.25, f64::NAN],
                fast_weight: vec![0.5, 1.5],
            }),
        }
    }

    /// A live record written before the regime-change guard (the
    /// chooser's state without `fast_err` / `fast_weight`) restores, in
    /// both formats, with the fast errors empty and everything else as
    /// written; a record with them keeps them.
    #[test]
    fn a_live_record_from_before_the_guard_restores_without_fast_errors() {
        /// The chooser's state as builds before the guard wrote it.
        #[derive(Serialize)]
        struct OldChoice {
            recent: Vec<f64>,
            level: Option<f64>,
            pending: Vec<(i64, Vec<f32>)>,
            err: Vec<f64>,
            weight: Vec<f64>,
            scored: u32,
            serving: String,
        }
        #[derive(Serialize)]
        struct OldLive {
            score: Option<ScoreKeyState>,
            choice: Option<OldChoice>,
        }
        let now = live_state();
        let c = now.choice.clone().unwrap();
        assert!(!c.fast_err.is_empty());
        let old_choice = || OldChoice {
            recent: c.recent.clone(),
            level: c.level,
            pending: c.pending.clone(),
            err: c.err.clone(),
            weight: c.weight.clone(),
            scored: c.scored,
            serving: c.serving.clone(),
        };
        let without = LiveKeyState {
            score: now.score.clone(),
            choice: Some(ChoiceKeyState {
                fast_err: Vec::new(),
                fast_weight: Vec::new(),
                ..c.clone()
            }),
        };
        // Format 1: the plain struct.
        let v1 = encode(&OldLive {
            score: now.score.clone(),
            choice: Some(old_choice()),
        })
        .unwrap();
        let back = decode_live(&v1).unwrap();
        assert_eq!(encode(&back).unwrap(), encode(&without).unwrap());
        // Format 2: the same record less the two empty vectors' lengths
        // (the chooser's state is last, so nothing else moves).
        let v2 = encode_live(&without).unwrap();
        assert_eq!(&v2[v2.len() - 2..], &[0, 0]);
        let back = decode_live(&v2[..v2.len() - 2]).unwrap();
        assert_eq!(encode(&back).unwrap(), encode(&without).unwrap());
        // With the fast errors, they come back bit for bit (NaN too).
        let back = decode_live(&encode_live(&now).unwrap()).unwrap();
        let b = back.choice.unwrap();
        assert_eq!(b.fast_weight, c.fast_weight);
        assert_eq!(b.fast_err[0], 0.25);
        assert!(b.fast_err[1].is_nan());
        // Only the fast errors may be missing: a record cut inside the
        // older fields is refused.
        assert!(decode_live(&v2[..v2.len() - 3]).is_err());
    }

    #[test]
    fn live_records_round_trip_with_each_version_once() {
        let l = live_state();
        let v1 = encode(&l).unwrap();
        let v2 = encode_live(&l).unwrap();
        assert_eq!(v2[0], LIVE_FORMAT);
        // Bit for bit: compare the format-1 encodings (every field, NaN too).
        assert_eq!(encode(&decode_live(&v2).unwrap()).unwrap(), v1);
        // Format 1 records still decode.
        assert_eq!(encode(&decode_live(&v1).unwrap()).unwrap(), v1);
        // The repeated version (1 + 22 bytes) is written once; the three
        // pending forecasts name theirs by a 1-byte index, the list of
        // versions has a 1-byte length.
        assert_eq!(
            v1.len() - v2.len(),
            23 - 3 - 1,
            "{} vs {}",
            v2.len(),
            v1.len()
        );
        for l in [
            LiveKeyState::default(),
            LiveKeyState {
                score: None,
                ..live_state()
            },
        ] {
            let back = decode_live(&encode_live(&l).unwrap()).unwrap();
            assert_eq!(encode(&back).unwrap(), encode(&l).unwrap());
        }
        let mut future = v2.clone();
        future[0] = 3;
        assert!(decode_live(&future)
            .unwrap_err()
            .to_string()
            .contains("format 3"));
        assert!(decode_live(&v2[..v2.len() / 2]).is_err());
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
