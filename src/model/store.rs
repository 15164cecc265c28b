//! Per-key state of the forecast stage, in contiguous tensors.
//!
//! Slot `s` of every tensor belongs to one key: `h[:, s, :]` (and `c`) is its
//! network state (`[rows, slots, width]` of `Network::state_dims`: the
//! recurrent state, or the transformer's ring of inputs), `n/mean/m2[s, :]` its online scaler
//! (weight, mean and M2 per field: expanding Welford, or exponentially
//! weighted with the same three fields, see [`StateStore::update_scaler`]), `ring[s, :]` its
//! last `W` target values, `inputs[s, :, :]` its last `W` network inputs
//! (for a hot swap's replay) and `seen[s]` how many windows it has had.
//! A freed slot is zeroed at once, so a key that returns starts fresh and a
//! new key never inherits anything. Capacity doubles when full.
//!
//! [`StateStore::step`] steps keys' network state: an LSTM in place
//! (`Network::step_in_place` reads and writes the state rows of `h`/`c`
//! directly, so no tensor handle to them may be held across it), any
//! other network through `gather` -> `Network::step` -> `scatter`.

use std::collections::HashMap;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::Network;
use crate::error::Result;
use crate::state::{ModelEncoder, ModelKeyState, ModelParts};

pub struct StateStore {
    slots: HashMap<Arc<str>, i64, foldhash::fast::RandomState>,
    free: Vec<i64>,
    cap: i64,
    /// `(rows, width)` of `h` and `c` per key (`Network::state_dims`).
    h_dims: (i64, i64),
    c_dims: Option<(i64, i64)>,
    fields: i64,
    ring_len: i64,
    device: Device,
    recurrent: bool,
    h: Tensor,
    c: Option<Tensor>,
    n: Tensor,
    mean: Tensor,
    m2: Tensor,
    ring: Tensor,
    /// Inputs kept for replay: the network inputs without the lags (those
    /// are rebuilt from `ring`).
    inputs: Tensor,
    n_in: i64,
    n_lags: i64,
    seen: Tensor,
    /// Last one-step output per key (output recurrence), if the network takes it.
    prev: Option<Tensor>,
    /// Column of the network output fed back (see `model::first_output`).
    pub prev_index: i64,
    /// Whether [`Self::step`] steps the state in place when the network
    /// allows it (`Network::step_in_place`); off only to compare.
    fused: bool,
    /// Keys per chunk of the in-place step (None: its default).
    fused_rows: Option<i64>,
    /// The scaler's decay per present value (`artifact::Scaler::decay`):
    /// None = expanding.
    decay: Option<f64>,
}

/// Exported state of `keys`, key-major: key `i`'s rows are
/// `[i * width, (i + 1) * width)` of each buffer.
struct Bulk {
    keys: Vec<Arc<str>>,
    h: Vec<f32>,
    c: Vec<f32>,
    n: Vec<f64>,
    mean: Vec<f64>,
    m2: Vec<f64>,
    ring: Vec<f64>,
    inputs: Vec<f32>,
    seen: Vec<i64>,
    prev: Vec<f32>,
    hw: usize,
    cw: usize,
    fw: usize,
    rw: usize,
    iw: usize,
}

impl Bulk {
    fn parts<'a>(&'a self, i: usize, version: &'a str) -> ModelParts<'a> {
        fn part<T>(v: &[T], i: usize, w: usize) -> &[T] {
            &v[i * w..(i + 1) * w]
        }
        ModelParts {
            version,
            seen: self.seen[i],
            h: part(&self.h, i, self.hw),
            c: part(&self.c, i, self.cw),
            n: part(&self.n, i, self.fw),
            mean: part(&self.mean, i, self.fw),
            m2: part(&self.m2, i, self.fw),
            ring: part(&self.ring, i, self.rw),
            inputs: part(&self.inputs, i, self.iw),
            prev: self.prev[i],
        }
    }
}

impl StateStore {
    pub fn new(net: &Network, fields: i64, ring_len: i64, n_lags: i64, recurrent: bool) -> Self {
        let (h_dims, c_dims) = net.state_dims();
        let mut s = StateStore {
            slots: HashMap::default(),
            free: Vec::new(),
            cap: 0,
            h_dims,
            c_dims,
            fields,
            ring_len,
            device: net.vs.device(),
            recurrent,
            h: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            c: None,
            n: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            mean: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            m2: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            ring: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            inputs: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            n_in: net.shape.input - n_lags - recurrent as i64,
            n_lags,
            prev: None,
            prev_index: 0,
            fused: true,
            fused_rows: None,
            decay: None,
            seen: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
        };
        s.grow(64);
        s
    }

    /// The live keys.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.slots.keys()
    }

    /// The state of these keys (those that are live), for the changelog.
    /// One `index_select` per tensor for all keys, then a split per key.
    pub fn export(
        &self,
        keys: &[Arc<str>],
        version: &str,
    ) -> Result<Vec<(Arc<str>, ModelKeyState)>> {
        let Some(b) = self.bulk(keys)? else {
            return Ok(Vec::new());
        };
        Ok((0..b.keys.len())
            .map(|i| {
                let p = b.parts(i, version);
                let st = ModelKeyState {
                    version: version.to_string(),
                    seen: p.seen,
                    h: p.h.to_vec(),
                    c: p.c.to_vec(),
                    n: p.n.to_vec(),
                    mean: p.mean.to_vec(),
                    m2: p.m2.to_vec(),
                    ring: p.ring.to_vec(),
                    inputs: p.inputs.to_vec(),
                    prev: p.prev,
                };
                (b.keys[i].clone(), st)
            })
            .collect())
    }

    /// The same states as [`export`](Self::export), as changelog record
    /// values (`state::ModelEncoder`): encoded straight from the bulk
    /// buffers, one allocation per key (its record).
    pub fn export_encoded(
        &self,
        keys: &[Arc<str>],
        version: &str,
    ) -> Result<Vec<(Arc<str>, Vec<u8>)>> {
        let Some(b) = self.bulk(keys)? else {
            return Ok(Vec::new());
        };
        let mut enc = ModelEncoder::default();
        let mut out = Vec::with_capacity(b.keys.len());
        for i in 0..b.keys.len() {
            out.push((b.keys[i].clone(), enc.encode(&b.parts(i, version))?));
        }
        Ok(out)
    }

    /// The live ones of `keys` and their state, key-major, in one buffer
    /// per tensor.
    fn bulk(&self, keys: &[Arc<str>]) -> Result<Option<Bulk>> {
        let (keys, slots): (Vec<Arc<str>>, Vec<i64>) = keys
            .iter()
            .filter_map(|k| self.slots.get(k).map(|&s| (k.clone(), s)))
            .unzip();
        if keys.is_empty() {
            return Ok(None);
        }
        let idx = Tensor::from_slice(&slots).to_device(self.device);
        let rows = |t: &Tensor, dim: i64| -> Tensor {
            let t = t.index_select(dim, &idx);
            // Key-major: [m, ...].
            let t = if dim == 1 { t.transpose(0, 1) } else { t };
            t.contiguous().to_device(Device::Cpu).view([-1])
        };
        let f32s =
            |t: &Tensor, dim: i64| -> Result<Vec<f32>> { Ok(Vec::<f32>::try_from(&rows(t, dim))?) };
        let f64s = |t: &Tensor| -> Result<Vec<f64>> { Ok(Vec::<f64>::try_from(&rows(t, 0))?) };
        let m = keys.len();
        Ok(Some(Bulk {
            h: f32s(&self.h, 1)?,
            c: match &self.c {
                Some(c) => f32s(c, 1)?,
                None => Vec::new(),
            },
            n: f64s(&self.n)?,
            mean: f64s(&self.mean)?,
            m2: f64s(&self.m2)?,
            ring: f64s(&self.ring)?,
            inputs: f32s(&self.inputs, 0)?,
            seen: Vec::<i64>::try_from(&rows(&self.seen, 0))?,
            prev: match &self.prev {
                Some(p) => f32s(p, 0)?,
                None => vec![0.0; m],
            },
            hw: (self.h_dims.0 * self.h_dims.1) as usize,
            cw: self.c_dims.map_or(0, |(r, w)| (r * w) as usize),
            fw: self.fields as usize,
            rw: self.ring_len as usize,
            iw: (self.ring_len * self.n_in) as usize,
            keys,
        }))
    }

    /// Takes restored key states in (allocating their slots). A state whose
    /// shapes do not fit this store (the hidden size, value fields or ring
    /// length changed) is skipped: that key starts fresh. Returns how many
    /// were taken in.
    pub fn import(&mut self, states: &[(Arc<str>, ModelKeyState)]) -> Result<usize> {
        let hw = (self.h_dims.0 * self.h_dims.1) as usize;
        let cw = self.c_dims.map_or(0, |(r, w)| (r * w) as usize);
        let fits = |s: &ModelKeyState| {
            s.h.len() == hw
                && s.c.len() == cw
                && s.n.len() == self.fields as usize
                && s.mean.len() == s.n.len()
                && s.m2.len() == s.n.len()
                && s.ring.len() == self.ring_len as usize
                && s.inputs.len() == (self.ring_len * self.n_in) as usize
        };
        let ok: Vec<&(Arc<str>, ModelKeyState)> = states.iter().filter(|(_, s)| fits(s)).collect();
        if ok.len() < states.len() {
            tracing::warn!(
                skipped = states.len() - ok.len(),
                "restored model state does not fit the running model's shapes; those keys start fresh"
            );
        }
        if ok.is_empty() {
            return Ok(0);
        }
        let slots: Vec<i64> = ok.iter().map(|(k, _)| self.slot(k)).collect();
        let m = slots.len() as i64;
        let idx = Tensor::from_slice(&slots).to_device(self.device);
        let cat32 = |f: &dyn Fn(&ModelKeyState) -> &[f32]| -> Vec<f32> {
            ok.iter().flat_map(|(_, s)| f(s).iter().copied()).collect()
        };
        let cat64 = |f: &dyn Fn(&ModelKeyState) -> &[f64]| -> Vec<f64> {
            ok.iter().flat_map(|(_, s)| f(s).iter().copied()).collect()
        };
        let dev = self.device;
        let hs = Tensor::from_slice(&cat32(&|s| &s.h))
            .view([m, self.h_dims.0, self.h_dims.1])
            .transpose(0, 1)
            .to_device(dev);
        let _ = self.h.index_copy_(1, &idx, &hs);
        if let (Some(c), Some((cr, cwid))) = (self.c.as_mut(), self.c_dims) {
            let cs = Tensor::from_slice(&cat32(&|s| &s.c))
                .view([m, cr, cwid])
                .transpose(0, 1)
                .to_device(dev);
            let _ = c.index_copy_(1, &idx, &cs);
        }
        let f = self.fields;
        for (t, v) in [
            (&mut self.n, cat64(&|s| &s.n)),
            (&mut self.mean, cat64(&|s| &s.mean)),
            (&mut self.m2, cat64(&|s| &s.m2)),
        ] {
            let _ = t.index_copy_(0, &idx, &Tensor::from_slice(&v).view([m, f]).to_device(dev));
        }
        let ring = Tensor::from_slice(&cat64(&|s| &s.ring)).view([m, self.ring_len]);
        let _ = self.ring.index_copy_(0, &idx, &ring.to_device(dev));
        let inputs = Tensor::from_slice(&cat32(&|s| &s.inputs)).view([m, self.ring_len, self.n_in]);
        let _ = self.inputs.index_copy_(0, &idx, &inputs.to_device(dev));
        let seen: Vec<i64> = ok.iter().map(|(_, s)| s.seen).collect();
        let _ = self
            .seen
            .index_copy_(0, &idx, &Tensor::from_slice(&seen).to_device(dev));
        if let Some(p) = self.prev.as_mut() {
            let prev: Vec<f32> = ok.iter().map(|(_, s)| s.prev).collect();
            let _ = p.index_copy_(0, &idx, &Tensor::from_slice(&prev).to_device(dev));
        }
        Ok(ok.len())
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes of tensor state per slot (for the memory figures).
    pub fn bytes_per_slot(&self) -> i64 {
        let hc = (self.h_dims.0 * self.h_dims.1 + self.c_dims.map_or(0, |(r, w)| r * w)) * 4;
        let _ = self.n_lags;
        hc + self.fields * 8 * 3 + self.ring_len * 8 + self.ring_len * self.n_in * 4 + 8
    }

    fn grow(&mut self, new_cap: i64) {
        let f = (Kind::Float, self.device);
        let d = (Kind::Double, self.device);
        let old = self.cap;
        let grow = |t: &Tensor, dims: &[i64], opts: (Kind, Device), dim: i64| {
            let n = Tensor::zeros(dims, opts);
            if old > 0 {
                n.narrow(dim, 0, old).copy_(t);
            }
            n
        };
        self.h = grow(&self.h, &[self.h_dims.0, new_cap, self.h_dims.1], f, 1);
        if let Some((cr, cw)) = self.c_dims {
            let c = self.c.take().unwrap_or_else(|| Tensor::zeros([0], f));
            self.c = Some(grow(&c, &[cr, new_cap, cw], f, 1));
        }
        self.n = grow(&self.n, &[new_cap, self.fields], d, 0);
        self.mean = grow(&self.mean, &[new_cap, self.fields], d, 0);
        self.m2 = grow(&self.m2, &[new_cap, self.fields], d, 0);
        self.ring = grow(&self.ring, &[new_cap, self.ring_len], d, 0);
        self.inputs = grow(&self.inputs, &[new_cap, self.ring_len, self.n_in], f, 0);
        self.seen = grow(&self.seen, &[new_cap], (Kind::Int64, self.device), 0);
        if self.recurrent {
            let p = self.prev.take().unwrap_or_else(|| Tensor::zeros([0], f));
            self.prev = Some(grow(&p, &[new_cap], f, 0));
        }
        self.free.extend((old..new_cap).rev());
        self.cap = new_cap;
    }

    /// The slot of `key`, allocating a zeroed one for a new key.
    pub fn slot(&mut self, key: &str) -> i64 {
        if let Some(&s) = self.slots.get(key) {
            return s;
        }
        if self.free.is_empty() {
            self.grow(self.cap * 2);
        }
        // grow() always leaves free slots.
        let s = self.free.pop().unwrap_or(0);
        self.slots.insert(Arc::from(key), s);
        s
    }

    /// Frees and zeroes the slots of these keys.
    pub fn free(&mut self, keys: &[Arc<str>]) {
        let freed: Vec<i64> = keys.iter().filter_map(|k| self.slots.remove(k)).collect();
        if freed.is_empty() {
            return;
        }
        let idx = Tensor::from_slice(&freed).to_device(self.device);
        let _ = self.h.index_fill_(1, &idx, 0.0);
        if let Some(c) = self.c.as_mut() {
            let _ = c.index_fill_(1, &idx, 0.0);
        }
        for t in [
            &mut self.n,
            &mut self.mean,
            &mut self.m2,
            &mut self.ring,
            &mut self.inputs,
        ] {
            let _ = t.index_fill_(0, &idx, 0.0);
        }
        let _ = self.seen.index_fill_(0, &idx, 0);
        if let Some(p) = self.prev.as_mut() {
            let _ = p.index_fill_(0, &idx, 0.0);
        }
        self.free.extend(freed);
    }

    /// One step of `net` for the keys at `slots` (distinct; `slots_t` the
    /// same as a tensor on the store's device) with inputs `x: [m, input]`:
    /// each key's state is read, stepped and written back; returns
    /// `y: [m, outputs]`. An LSTM network steps the state where it lives
    /// (`Network::step_in_place`: no gathered copy, no new state tensors,
    /// no scatter); any other network is [`Self::gather`] ->
    /// `Network::step` -> [`Self::scatter`], with the same result.
    pub fn step(&mut self, net: &Network, slots: &[i64], slots_t: &Tensor, x: &Tensor) -> Tensor {
        if self.fused {
            if let Some(c) = self.c.as_mut() {
                if let Some(y) = net.step_in_place(x, slots, &mut self.h, c, self.fused_rows) {
                    return y;
                }
            }
        }
        let (h, c) = self.gather(slots_t);
        let (y, h_new, c_new) = net.step(x, &h, c.as_ref(), 0.0);
        self.scatter(slots_t, &h_new, c_new.as_ref());
        y
    }

    /// Turns the in-place step of [`Self::step`] off (`false`: always
    /// gather -> step -> scatter) and sets its keys per chunk (None: the
    /// default); for comparisons and tuning (benches, tests).
    pub fn set_fused_step(&mut self, on: bool, rows: Option<i64>) {
        self.fused = on;
        self.fused_rows = rows;
    }

    pub fn gather(&self, slots: &Tensor) -> (Tensor, Option<Tensor>) {
        (
            self.h.index_select(1, slots),
            self.c.as_ref().map(|c| c.index_select(1, slots)),
        )
    }

    pub fn scatter(&mut self, slots: &Tensor, h: &Tensor, c: Option<&Tensor>) {
        let _ = self.h.index_copy_(1, slots, h);
        if let (Some(dst), Some(src)) = (self.c.as_mut(), c) {
            let _ = dst.index_copy_(1, slots, src);
        }
    }

    /// Sets the scaler (`artifact::Scaler::decay`: None = expanding) of
    /// every key from now on. The three per-key fields mean the same for
    /// both (weight, mean, M2 with variance = M2 / weight), so a key's state
    /// carries over: under the exponentially weighted scaler an expanding
    /// key's history fades with the half-life.
    pub fn set_scaler_decay(&mut self, decay: Option<f64>) {
        self.decay = decay;
    }

    /// Updates the keys' online mean/variance with `values: [m, fields]`
    /// (NaN = missing, not counted) and returns `(scaled, mean, scale)`, with
    /// missing values scaled to 0.
    ///
    /// Expanding (no decay): Welford, `n += 1`. Exponentially weighted with
    /// decay `d` (West's weighted update with weights decaying by `d` per
    /// present value): `n = d n + 1`, `mean += delta / n`,
    /// `m2 = d m2 + delta (x - mean_new)`; variance `m2 / n` as before. A
    /// missing value changes nothing (the decay is per present value, so a
    /// gap does not shrink the weight below the one of a single value).
    /// `train::prep::ewm_scaler` repeats these operations in this order.
    pub fn update_scaler(&mut self, slots: &Tensor, values: &Tensor) -> (Tensor, Tensor, Tensor) {
        let is_present = values.isnan().logical_not();
        let present = is_present.to_kind(Kind::Double);
        let x = values.nan_to_num(0.0, None::<f64>, None::<f64>);
        let n = self.n.index_select(0, slots);
        let mean = self.mean.index_select(0, slots);
        let m2 = self.m2.index_select(0, slots);
        let (n, m2) = match self.decay {
            None => (n, m2),
            Some(d) => {
                // d where present, exactly 1 where missing; built in f64
                // (`where_scalar` would give the default f32 and round d).
                let dk = present
                    .full_like(d)
                    .where_self(&is_present, &present.ones_like());
                (n * &dk, m2 * &dk)
            }
        };
        let n_new = &n + &present;
        let delta = (&x - &mean) * &present;
        let mean_new = &mean + &delta / n_new.clamp_min(1.0);
        let m2_new = &m2 + &delta * (&x - &mean_new) * &present;
        let _ = self.n.index_copy_(0, slots, &n_new);
        let _ = self.mean.index_copy_(0, slots, &mean_new);
        let _ = self.m2.index_copy_(0, slots, &m2_new);
        let var = &m2_new / n_new.clamp_min(1.0);
        // Floor the scale relative to the level so a flat start does not
        // turn the first change into an enormous input.
        let floor = mean_new.abs() * 1e-3 + 1e-6;
        let scale = var.sqrt().maximum(&floor);
        let c = super::SCALED_CLAMP;
        let scaled = ((x - &mean_new) / &scale).clamp(-c, c) * present;
        (scaled, mean_new, scale)
    }

    /// Appends each key's target value and network input `[m, n_in]` to its
    /// rings and returns the updated window counts `[m]`.
    pub fn push_history(&mut self, slots: &Tensor, target: &Tensor, input: &Tensor) -> Tensor {
        let seen = self.seen.index_select(0, slots);
        let pos = seen.remainder(self.ring_len);
        let flat = slots * self.ring_len + &pos;
        let mut ring_flat = self.ring.view([-1]);
        let _ = ring_flat.index_copy_(0, &flat, target);
        let mut inputs_flat = self.inputs.view([-1, self.n_in]);
        let _ = inputs_flat.index_copy_(0, &flat, input);
        let seen_new = seen + 1;
        let _ = self.seen.index_copy_(0, slots, &seen_new);
        seen_new
    }

    /// Lag inputs `[m, n_lags]`: the key's target `j` windows back (j = 1..),
    /// scaled with the current `mean`/`scale` `[m]`; unknown (before the
    /// series or missing) reads as the mean, i.e. 0. Call before `push_history`.
    pub fn lags(&self, slots: &Tensor, n_lags: i64, mean: &Tensor, scale: &Tensor) -> Tensor {
        let m = slots.size()[0];
        if n_lags == 0 {
            return Tensor::zeros([m, 0], (Kind::Float, self.device));
        }
        let seen = self.seen.index_select(0, slots).unsqueeze(1); // [m,1], windows before this one
        let j = Tensor::arange_start(1, n_lags + 1, (Kind::Int64, self.device)).unsqueeze(0); // [1,P]
        let k = &seen - &j; // index of the lagged window
        let valid = k.ge(0);
        let pos = k.remainder(self.ring_len);
        let rows = self.ring.index_select(0, slots);
        let v = rows.gather(1, &pos, false);
        let c = super::SCALED_CLAMP;
        let z = ((v - mean.unsqueeze(1)) / scale.unsqueeze(1)).clamp(-c, c);
        let z = z.nan_to_num(0.0, None::<f64>, None::<f64>);
        z.where_self(&valid, &z.zeros_like()).to_kind(Kind::Float)
    }

    pub fn has_prev_output(&self) -> bool {
        self.recurrent
    }

    /// The keys' previous one-step outputs `[m]` (0 for a new key).
    pub fn prev_output(&self, slots: &Tensor) -> Tensor {
        match &self.prev {
            Some(p) => p.index_select(0, slots),
            None => Tensor::zeros([slots.size()[0]], (Kind::Float, self.device)),
        }
    }

    pub fn set_prev_output(&mut self, slots: &Tensor, v: &Tensor) {
        if let Some(p) = self.prev.as_mut() {
            let _ = p.index_copy_(0, slots, v);
        }
    }

    /// The current scaler of the target `(mean, scale)` for these slots.
    fn target_scaler(&self, slots: &Tensor) -> (Tensor, Tensor) {
        let n = self.n.index_select(0, slots).select(1, 0);
        let mean = self.mean.index_select(0, slots).select(1, 0);
        let m2 = self.m2.index_select(0, slots).select(1, 0);
        let var = m2 / n.clamp_min(1.0);
        let floor = mean.abs() * 1e-3 + 1e-6;
        (mean.shallow_clone(), var.sqrt().maximum(&floor))
    }

    /// Reallocates (zeroed) state tensors when `net`'s state has other
    /// shapes than the store's (a swap to another cell, hidden size or
    /// attention window); `replay` then rebuilds every live key's state.
    fn fit_state_to(&mut self, net: &Network) {
        let (h_dims, c_dims) = net.state_dims();
        if (h_dims, c_dims) == (self.h_dims, self.c_dims) {
            return;
        }
        let f = (Kind::Float, self.device);
        self.h_dims = h_dims;
        self.c_dims = c_dims;
        self.h = Tensor::zeros([h_dims.0, self.cap, h_dims.1], f);
        self.c = c_dims.map(|(r, w)| Tensor::zeros([r, self.cap, w], f));
    }

    /// Rebuilds the recurrent state of every live key with `net` by
    /// replaying its last `min(seen, W)` inputs from a zero state: `W`
    /// batched steps over all keys, a key's state only advancing on its own
    /// windows (keys with a shorter history join later). Returns the number
    /// of key-windows replayed.
    pub fn replay(&mut self, net: &Network) -> i64 {
        self.fit_state_to(net);
        let live: Vec<i64> = self.slots.values().copied().collect();
        if live.is_empty() {
            return 0;
        }
        let slots = Tensor::from_slice(&live).to_device(self.device);
        let seen = self.seen.index_select(0, &slots); // [m]
        let w = self.ring_len;
        let (mut h, mut c) = net.zero_state(live.len() as i64);
        let rows = self.inputs.index_select(0, &slots); // [m, W, n_in]
        let values = self.ring.index_select(0, &slots); // [m, W]
                                                        // Lags are rebuilt with today's scaler (past scalers are not kept):
                                                        // a close approximation once a key has some history.
        let (mean, scale) = self.target_scaler(&slots);
        let jl = Tensor::arange_start(1, self.n_lags + 1, (Kind::Int64, self.device)).unsqueeze(0);
        let mut prev = Tensor::zeros([live.len() as i64], (Kind::Float, self.device));
        for t in 0..w {
            // Step t replays the key's window number seen - W + t.
            let k = &seen - w + t;
            let valid = k.ge(0);
            let pos = k
                .remainder(w)
                .unsqueeze(1)
                .unsqueeze(2)
                .expand([-1, 1, self.n_in], false);
            let base = rows.gather(1, &pos, false).squeeze_dim(1);
            let kl = k.unsqueeze(1) - &jl;
            let lv = values.gather(1, &kl.remainder(w), false);
            let lim = super::SCALED_CLAMP;
            let z = ((lv - mean.unsqueeze(1)) / scale.unsqueeze(1))
                .clamp(-lim, lim)
                .nan_to_num(0.0, None::<f64>, None::<f64>);
            // A lag is known if it is in the series and still in the ring.
            let oldest = (&seen - w).clamp_min(0).unsqueeze(1);
            let z = z
                .where_self(&kl.ge_tensor(&oldest), &z.zeros_like())
                .to_kind(Kind::Float);
            let mut parts = vec![base, z];
            if self.recurrent {
                parts.push(prev.unsqueeze(1));
            }
            let x = Tensor::cat(&parts, 1);
            let (y, hn, cn) = net.step(&x, &h, c.as_ref(), 0.0);
            if self.recurrent {
                // The median's (or point's) step 1 sits at the front unless
                // quantiles are configured; `replay_prev_index` says where.
                let p_new = y.select(1, self.prev_index).to_kind(Kind::Float);
                prev = p_new.where_self(&valid, &prev);
            }
            let mask = valid.view([1, -1, 1]);
            h = hn.where_self(&mask, &h);
            c = match (cn, c) {
                (Some(cn), Some(c)) => Some(cn.where_self(&mask, &c)),
                _ => None,
            };
        }
        let _ = self.h.index_copy_(1, &slots, &h);
        if let (Some(dst), Some(src)) = (self.c.as_mut(), c.as_ref()) {
            let _ = dst.index_copy_(1, &slots, src);
        }
        if let Some(p) = self.prev.as_mut() {
            let _ = p.index_copy_(0, &slots, &prev);
        }
        i64::try_from(seen.clamp_max(w).sum(Kind::Int64)).unwrap_or(0)
    }

    /// Seasonal-naive forecasts `[m, horizon]` from the rings: repeat the
    /// last `season` values; naive (last value) while fewer than `season`
    /// are known. Missing history reads as `fallback` (the key's mean).
    pub fn seasonal_naive(
        &self,
        slots: &Tensor,
        seen: &Tensor,
        season: i64,
        horizon: i64,
        fallback: &Tensor,
    ) -> Tensor {
        let w = self.ring_len;
        let season = season.min(w);
        let t = (seen - 1).unsqueeze(1); // index of the newest value
        let hs = Tensor::arange(horizon, (Kind::Int64, self.device)).unsqueeze(0);
        let seasonal = &t - season + 1 + hs.remainder(season);
        let naive = t.expand([-1, horizon], false);
        let has_season = seen.ge(season).unsqueeze(1);
        let idx = seasonal.where_self(&has_season, &naive).remainder(w);
        let rows = self.ring.index_select(0, slots);
        let f = rows.gather(1, &idx, false);
        let fb = fallback.unsqueeze(1).expand_as(&f);
        fb.where_self(&f.isnan(), &f)
    }
}
