//! The network: stacked recurrent cells (Elman, IRNN, LSTM, GRU) or a
//! transformer encoder (`attention::Encoder`), optionally with temporal
//! attention over the recurrent cell's recent hidden states
//! (`attention::Temporal`), with a multi-output head (direct or a seq2seq
//! GRU decoder) and a linear skip from the inputs. One `step` for the live
//! stage (a batch of keys, one window each) and `forward_seq` for training
//! (libtorch's sequence kernels, or one band-masked attention pass; checked
//! against `step` in the tests). For the live LSTM, `step_in_place` steps
//! the store's state tensors where they live (see `StateStore::step`).
//!
//! Both output recurrences of the canon: the previous one-step output is
//! the last input feature (`prev_output`); output-to-hidden feeds it to the
//! cells like any input, output-to-output (`feeds_output`) only to the
//! output layer, whose linear skip from the inputs then carries it:
//! `y_t = head(h_t) + W x_t + w y_{t-1}` (zero-initialised `w`).
//! Stacked layers connect plainly, with residual skips or densely (see
//! `config::Connections`, wired in one place, `wire`, for both paths).
//! The transformer takes output-to-output too: its input ring then holds
//! the inputs without the fed-back value, which reaches the output layer
//! only, as with the cells.
//!
//! "What the head sees" (`CellShape::top_width`) is the top layer's state,
//! or with dense connections the concatenation of every layer's state; the
//! rest of the network takes that width alike: temporal attention attends
//! over the previous `W` of those (its ring holds `W * (top_width + 1)`
//! floats per key) and the head sees `[top, context]`; the seq2seq decoder
//! starts from them, through a learned linear projection to `hidden` when
//! they are wider (dense with `layers > 1`: `dec.init_w`, `dec.init_b`).
//! With one layer, dense is the plain network, weights included.
//!
//! Temporal attention with the seq2seq decoder (`attention::Temporal`,
//! decoder mode): the same ring, but "what the head sees" is then, per
//! window, the flat band of the `W + 1` flagged top states `t - W ..= t`
//! (`Temporal::windows`), so `head` and `step` are unchanged; the decoder
//! starts from the current top (the band's last) and each of its steps
//! attends over the band with its own state as the query, the context
//! joining its output layer (`dec.out_ctx`). Its weights (`dec.out_ctx`,
//! `att.*`) are drawn after all others, so from one seed the rest equals
//! the plain seq2seq network.
//!
//! State: `(h, c)`, with the shapes of [`Network::state_dims`]: recurrent
//! cells `h: [layers, n, hidden]` (and LSTM `c`); the transformer packs its
//! rings into `h: [1, n, S]`; temporal attention packs the LSTM cell state
//! (if any) and its ring of past tops (what the head saw) into
//! `c: [1, n, S]`.

use tch::{nn, Device, Kind, Tensor};

use super::artifact::ModelSpec;
use super::attention::{Encoder, Temporal};
use super::cells::{self, CellShape, LayerWeights};
use crate::config::{CellKind, Connections, DeviceKind, HorizonDecoder, OutputRecurrence};

/// A stacked recurrent network with a multi-output head: `horizon` values
/// from the last layer's hidden state plus a linear skip from the inputs
/// (zero-initialised; with lag inputs it is a learned autoregression that
/// the recurrent part corrects).
pub struct Network {
    pub vs: nn::VarStore,
    pub shape: CellShape,
    pub horizon: i64,
    layers: Vec<LayerWeights>,
    pub(crate) head_w: Tensor,
    pub(crate) head_b: Tensor,
    /// Linear skip from the inputs to the outputs (zero at start).
    pub(crate) skip_w: Tensor,
    /// The seq2seq decoder, when configured.
    decoder: Option<Seq2seq>,
    /// The transformer cell (then `layers` is empty).
    encoder: Option<Encoder>,
    /// Temporal attention over the top hidden states, when configured.
    temporal: Option<Temporal>,
}

/// A GRU decoder seeded with the encoder's top state (projected to
/// `hidden` by `start` when that is wider: dense connections): step k takes
/// the previous step's outputs (all quantiles) and emits this step's; with
/// temporal attention, from its state and its context over the encoder's
/// recent top states (module docs).
struct Seq2seq {
    steps: i64,
    per_step: i64,
    /// `(w: [hidden, top_width], b: [hidden])` when the top is wider than
    /// the decoder's state.
    start: Option<(Tensor, Tensor)>,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    /// The output layer's weights on the attention context `[per_step,
    /// top_width]`, with temporal attention.
    out_ctx: Option<Tensor>,
}

impl Seq2seq {
    /// `top: [n, top_width]` -> `[n, steps * per_step]`, quantile-major.
    /// With temporal attention (`att` and `out_ctx`), `top` is the flat
    /// window of `Temporal::windows` instead.
    fn decode(&self, top: &Tensor, att: Option<&Temporal>) -> Tensor {
        let n = top.size()[0];
        let (top, memory) = match (att, &self.out_ctx) {
            (Some(a), Some(w)) => {
                let (mem, current) = a.memory(top);
                (current, Some((a, mem, w)))
            }
            _ => (top.shallow_clone(), None),
        };
        let mut d = match &self.start {
            Some((w, b)) => top.linear(w, Some(b)),
            None => top.shallow_clone(),
        };
        let mut prev = Tensor::zeros([n, self.per_step], (top.kind(), top.device()));
        let mut outs = Vec::with_capacity(self.steps as usize);
        for _ in 0..self.steps {
            d = prev.gru_cell(
                &d,
                &self.w_ih,
                &self.w_hh,
                Some(&self.b_ih),
                Some(&self.b_hh),
            );
            let out = d.linear(&self.out_w, Some(&self.out_b));
            prev = match &memory {
                Some((a, mem, w)) => out + a.context(mem, &d).linear::<&Tensor>(w, None),
                None => out,
            };
            outs.push(prev.shallow_clone());
        }
        // [n, steps, Q] -> [n, Q, steps] -> quantile-major flat.
        Tensor::stack(&outs, 1).transpose(1, 2).reshape([n, -1])
    }
}

impl Network {
    /// The network a model spec describes (freshly initialised, seeded).
    pub fn for_spec(spec: &ModelSpec, device: Device, seed: i64) -> Self {
        let seq = (spec.decoder == HorizonDecoder::Seq2seq)
            .then_some((spec.horizon, spec.quantiles.len().max(1) as i64));
        Self::build(spec.shape, spec.outputs(), seq, device, seed)
    }

    /// A copy of this network (its own weights, same device) as `spec`
    /// describes it: a champion kept while a challenger trains, a network
    /// a second stage runs.
    pub fn copy_for(&self, spec: &ModelSpec) -> crate::Result<Self> {
        let mut copy = Self::for_spec(spec, self.vs.device(), spec.seed);
        copy.vs
            .copy(&self.vs)
            .map_err(|e| crate::Error::Model(format!("copying {}: {e}", spec.version)))?;
        Ok(copy)
    }

    /// A freshly initialised network with a direct head (seeded).
    pub fn new(shape: CellShape, horizon: i64, device: Device, seed: i64) -> Self {
        Self::build(shape, horizon, None, device, seed)
    }

    fn build(
        shape: CellShape,
        horizon: i64,
        seq2seq: Option<(i64, i64)>,
        device: Device,
        seed: i64,
    ) -> Self {
        // libtorch's generator is process-global: hold a lock from seeding to
        // the last initialised weight so concurrent inits (tests, a
        // retrainer beside the live stage) stay reproducible.
        let _guard = seed_global(seed);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let transformer = shape.kind == CellKind::Transformer;
        let layers = if transformer {
            Vec::new()
        } else {
            (0..shape.layers)
                .map(|l| LayerWeights::new(&root, shape, l))
                .collect()
        };
        let encoder = transformer.then(|| {
            Encoder::new(
                &root,
                shape.cell_input(),
                shape.hidden,
                shape.layers,
                shape.heads.max(1),
                shape.window.max(1),
            )
        });
        let top = shape.top_width();
        let attends = shape.attention && !transformer;
        // The direct head's attention; the decoder's is drawn last (below).
        let mut temporal =
            (attends && seq2seq.is_none()).then(|| Temporal::new(&root, top, shape.window.max(1)));
        let k = 1.0 / (shape.hidden as f64).sqrt();
        // The head sees [top, context] with temporal attention.
        let head_in = if temporal.is_some() { 2 * top } else { top };
        let head_w = root.var(
            "head_w",
            &[horizon, head_in],
            nn::Init::Uniform { lo: -k, up: k },
        );
        let head_b = root.var("head_b", &[horizon], nn::Init::Const(0.0));
        let skip_w = root.var("skip_w", &[horizon, shape.input], nn::Init::Const(0.0));
        let decoder = seq2seq.map(|(steps, per_step)| {
            let d = &root / "dec";
            let hd = shape.hidden;
            let u = nn::Init::Uniform { lo: -k, up: k };
            Seq2seq {
                steps,
                per_step,
                w_ih: d.var("w_ih", &[3 * hd, per_step], u),
                w_hh: d.var("w_hh", &[3 * hd, hd], u),
                b_ih: d.var("b_ih", &[3 * hd], u),
                b_hh: d.var("b_hh", &[3 * hd], u),
                out_w: d.var("out_w", &[per_step, hd], u),
                out_b: d.var("out_b", &[per_step], nn::Init::Const(0.0)),
                // Drawn last, so the other weights of a seed are those of
                // the plain network.
                start: (top != hd).then(|| {
                    let ks = 1.0 / (top as f64).sqrt();
                    let us = nn::Init::Uniform { lo: -ks, up: ks };
                    (d.var("init_w", &[hd, top], us), d.var("init_b", &[hd], us))
                }),
                // Then the attention's, so the rest is the plain decoder.
                out_ctx: attends.then(|| d.var("out_ctx", &[per_step, top], u)),
            }
        });
        if attends && decoder.is_some() {
            temporal = Some(Temporal::for_decoder(
                &root,
                top,
                shape.hidden,
                shape.window.max(1),
            ));
        }
        Network {
            decoder,
            encoder,
            temporal,
            vs,
            shape,
            horizon,
            layers,
            head_w,
            head_b,
            skip_w,
        }
    }

    /// Whether the fed-back previous output (the last input) goes to the
    /// output layer only (output-to-output recurrence); see
    /// [`Self::forward_seq_fed`].
    pub fn feeds_output(&self) -> bool {
        self.shape.output_recurrence == OutputRecurrence::Output
    }

    /// The per-key state's `(rows, width)` of `h` and of `c` (if any): the
    /// state of `n` keys is `[rows, n, width]` (see the module docs).
    pub fn state_dims(&self) -> ((i64, i64), Option<(i64, i64)>) {
        let (l, hd) = (self.shape.layers, self.shape.hidden);
        if let Some(e) = &self.encoder {
            return ((1, e.state_width()), None);
        }
        let lstm = self.shape.kind.has_cell_state();
        match &self.temporal {
            Some(a) => ((l, hd), Some((1, lstm as i64 * l * hd + a.state_width()))),
            None => ((l, hd), lstm.then_some((l, hd))),
        }
    }

    /// Zero states for `n` keys, of the shapes of [`Self::state_dims`]
    /// (`h: [layers, n, hidden]` and `c` for LSTM without attention).
    pub fn zero_state(&self, n: i64) -> (Tensor, Option<Tensor>) {
        let opts = (Kind::Float, self.vs.device());
        let ((hr, hw), c) = self.state_dims();
        let c = c.map(|(cr, cw)| Tensor::zeros([cr, n, cw], opts));
        (Tensor::zeros([hr, n, hw], opts), c)
    }

    /// With temporal attention, `c: [1, n, S]` -> (LSTM cell state
    /// `[layers, n, hidden]` if any, ring `[n, W * (hidden + 1)]`).
    fn split_c(&self, c: Option<&Tensor>) -> (Option<Tensor>, Option<Tensor>) {
        let Some(c) = c else {
            return (None, None);
        };
        if self.temporal.is_none() {
            return (Some(c.shallow_clone()), None);
        }
        let flat = c.select(0, 0);
        let n = flat.size()[0];
        let lh = self.shape.layers * self.shape.hidden;
        if self.shape.kind.has_cell_state() {
            let cell = flat
                .narrow(1, 0, lh)
                .view([n, self.shape.layers, self.shape.hidden])
                .transpose(0, 1);
            let ring = flat.narrow(1, lh, flat.size()[1] - lh);
            (Some(cell), Some(ring))
        } else {
            (None, Some(flat))
        }
    }

    /// The inverse of [`Self::split_c`].
    fn join_c(&self, cell: Option<Tensor>, ring: Option<Tensor>) -> Option<Tensor> {
        match ring {
            None => cell,
            Some(ring) => {
                let n = ring.size()[0];
                let flat = match cell {
                    Some(cell) => Tensor::cat(&[cell.transpose(0, 1).reshape([n, -1]), ring], 1),
                    None => ring,
                };
                Some(flat.unsqueeze(0))
            }
        }
    }

    /// The head's input from the top states `tops: [n, T, hidden]` and the
    /// attention ring (if any): `[h_t, context]` with temporal attention.
    /// With the seq2seq decoder, the flat windows of `Temporal::windows`.
    fn attend(&self, tops: Tensor, ring: Option<Tensor>) -> (Tensor, Option<Tensor>) {
        match (&self.temporal, ring) {
            (Some(a), Some(ring)) if self.decoder.is_some() => {
                let (win, ring) = a.windows(&ring, &tops);
                (win, Some(ring))
            }
            (Some(a), Some(ring)) => {
                let (ctx, ring) = a.forward(&ring, &tops);
                (Tensor::cat(&[tops, ctx], 2), Some(ring))
            }
            (_, ring) => (tops, ring),
        }
    }

    /// One time step for a batch of keys: `x: [n, input]`, states
    /// `[layers, n, hidden]`. Returns `(y: [n, horizon], h', c')`.
    /// `dropout` (training only) applies between stacked layers.
    ///
    /// Without gradients (the live stage), a large batch runs in row chunks
    /// of [`Self::chunk_rows`] keys, each written into the outputs: keys are
    /// independent (every op is row-wise), so the result is the same as one
    /// call over all rows (checked in the tests), while each chunk's
    /// temporaries (the `[rows, 4H]` gates, the activations) stay in the
    /// CPU cache and are reused from the heap from chunk to chunk instead
    /// of being fresh `[keys, 4H]` allocations per tick (page faults and
    /// DRAM traffic at 100k+ keys).
    pub fn step(
        &self,
        x: &Tensor,
        h: &Tensor,
        c: Option<&Tensor>,
        dropout: f64,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        let n = x.size()[0];
        let rows = self.chunk_rows();
        let tracked = self.records_gradients()
            || x.requires_grad()
            || h.requires_grad()
            || c.is_some_and(|c| c.requires_grad());
        if tracked || dropout > 0.0 || n <= rows {
            return self.step_rows(x, h, c, dropout, !tracked);
        }
        let mut out: Option<(Tensor, Tensor, Option<Tensor>)> = None;
        let mut start = 0;
        while start < n {
            let len = rows.min(n - start);
            let cc = c.map(|c| c.narrow(1, start, len));
            let (y, h2, c2) = self.step_rows(
                &x.narrow(0, start, len),
                &h.narrow(1, start, len),
                cc.as_ref(),
                0.0,
                true,
            );
            // The outputs, shaped like the first chunk's with `n` keys.
            let (oy, oh, oc) = out.get_or_insert_with(|| {
                let like = |t: &Tensor, dim: usize| {
                    let mut size = t.size();
                    size[dim] = n;
                    Tensor::empty(size.as_slice(), (t.kind(), t.device()))
                };
                (like(&y, 0), like(&h2, 1), c2.as_ref().map(|c| like(c, 1)))
            });
            oy.narrow(0, start, len).copy_(&y);
            oh.narrow(1, start, len).copy_(&h2);
            if let (Some(oc), Some(c2)) = (oc.as_mut(), c2.as_ref()) {
                oc.narrow(1, start, len).copy_(c2);
            }
            start += len;
        }
        match out {
            Some(out) => out,
            None => self.step_rows(x, h, c, dropout, true),
        }
    }

    /// Whether [`Self::step_in_place`] can step this network: an LSTM
    /// stack (one layer, or several plainly connected) with the direct
    /// head, no temporal attention, on the CPU, and nothing recording
    /// gradients (the live stage).
    pub(crate) fn fuses_step(&self) -> bool {
        self.shape.kind == CellKind::Lstm
            && self.encoder.is_none()
            && self.temporal.is_none()
            && self.decoder.is_none()
            && (self.layers.len() == 1 || self.shape.connections == Connections::None)
            && self.vs.device() == Device::Cpu
            && !self.records_gradients()
    }

    /// Whether libtorch records gradients here (grad mode on: training),
    /// read from a one-element product of a weight. (A *view* of a weight,
    /// such as `head_w.tr()`, reports `requires_grad` even under
    /// `no_grad`, which is what this function replaced: the no-grad paths
    /// of [`Self::step`] had never run before 2026-11-28.)
    fn records_gradients(&self) -> bool {
        (self.head_b.narrow(0, 0, 1) * 1.0).requires_grad()
    }

    /// One step of the keys in `slots` (distinct) with their state stepped
    /// *where it lives*: `h_state`, `c_state` are the store's
    /// `[layers, slots, hidden]` tensors; returns `y: [m, horizon]`. The
    /// same equations as [`Self::step`] between a gather and a scatter
    /// (checked in the tests), with no copy of the state per tick: per chunk
    /// of `rows` keys (default [`FUSED_CHUNK_FLOATS`] gate floats, sized for
    /// L2), each layer's `[x, h]` rows are copied into one small buffer,
    /// one `addmm` into a reused gates buffer forms every pre-activation
    /// (`[x, h] [W_ih, W_hh]ᵀ + b_ih + b_hh`), and `cells::lstm_rows`
    /// applies the gates and writes `c'`, `h'` straight back into the
    /// state rows and `h'` into the next layer's (or the head's) buffer;
    /// the head and the skip are two `addmm`s into the chunk's rows of `y`.
    /// Buffers are allocated once per call, nothing per chunk.
    ///
    /// None when it does not apply (see [`Self::fuses_step`]; the state or
    /// the input are not contiguous CPU `f32`, or a slot is out of range):
    /// the caller then gathers, calls [`Self::step`] and scatters.
    pub(crate) fn step_in_place(
        &self,
        x: &Tensor,
        slots: &[i64],
        h_state: &mut Tensor,
        c_state: &mut Tensor,
        rows: Option<i64>,
    ) -> Option<Tensor> {
        if !self.fuses_step() || x.kind() != Kind::Float || x.dim() != 2 {
            return None;
        }
        let n = x.size()[0];
        let (hd, nl) = (self.shape.hidden, self.layers.len() as i64);
        let size = h_state.size();
        if size.len() != 3 || size[0] != nl || size[2] != hd || c_state.size() != size {
            return None;
        }
        let cap = size[1];
        if n as usize != slots.len() || slots.iter().any(|&s| s < 0 || s >= cap) {
            return None;
        }
        let x = x.contiguous();
        let xw = x.size()[1] as usize;
        let ci = self.shape.cell_input() as usize;
        let rows = rows
            .unwrap_or(FUSED_CHUNK_FLOATS / (4 * hd.max(1)))
            .clamp(16, n.max(16));
        let opts = (Kind::Float, Device::Cpu);
        // Per layer: [W_ih, W_hh] (for one product over [x, h]), the summed
        // biases, and the buffer of its [input, h] rows.
        let wcat: Vec<Tensor> = self
            .layers
            .iter()
            .map(|w| Tensor::cat(&[&w.w_ih, &w.w_hh], 1))
            .collect();
        let bias: Vec<Tensor> = self.layers.iter().map(|w| &w.b_ih + &w.b_hh).collect();
        let mut xh: Vec<Tensor> = (0..nl)
            .map(|l| Tensor::empty([rows, self.shape.layer_input(l) + hd], opts))
            .collect();
        let gates = Tensor::empty([rows, 4 * hd], opts);
        let mut top = Tensor::empty([rows, hd], opts);
        let y = Tensor::empty([n, self.horizon], opts);
        let (head_t, skip_t) = (self.head_w.tr(), self.skip_w.tr());
        let hdu = hd as usize;
        let plane = (cap * hd) as usize;
        let mut start = 0;
        while start < n {
            let len = rows.min(n - start);
            let chunk = &slots[start as usize..(start + len) as usize];
            // Layer 0's input rows: the cells' inputs.
            {
                let xs = cells::f32_data(&x)?;
                let buf = cells::f32_data_mut(&mut xh[0])?;
                let w = ci + hdu;
                for r in 0..len as usize {
                    let src = &xs[(start as usize + r) * xw..][..ci];
                    buf[r * w..r * w + ci].copy_from_slice(src);
                }
            }
            for l in 0..nl as usize {
                let lin = self.shape.layer_input(l as i64) as usize;
                let w = lin + hdu;
                // The layer's h rows beside its input (the state is read
                // here, once, and written back by `lstm_rows`).
                {
                    let hs = cells::f32_data(h_state)?;
                    let hp = &hs[l * plane..(l + 1) * plane];
                    let buf = cells::f32_data_mut(&mut xh[l])?;
                    for (r, &s) in chunk.iter().enumerate() {
                        let s = s as usize * hdu;
                        buf[r * w + lin..(r + 1) * w].copy_from_slice(&hp[s..s + hdu]);
                    }
                }
                let g = gates.narrow(0, 0, len);
                let _ = bias[l].addmm_out(&g, &xh[l].narrow(0, 0, len), &wcat[l].tr());
                let gs = cells::f32_data(&gates)?;
                let hs = cells::f32_data_mut(h_state)?;
                let cs = cells::f32_data_mut(c_state)?;
                let (out, stride) = if l + 1 < nl as usize {
                    let next = self.shape.layer_input(l as i64 + 1) as usize + hdu;
                    (cells::f32_data_mut(&mut xh[l + 1])?, next)
                } else {
                    (cells::f32_data_mut(&mut top)?, hdu)
                };
                cells::lstm_rows(
                    hdu,
                    &gs[..len as usize * 4 * hdu],
                    chunk,
                    &mut cs[l * plane..(l + 1) * plane],
                    &mut hs[l * plane..(l + 1) * plane],
                    out,
                    stride,
                );
            }
            let mut yc = y.narrow(0, start, len);
            let _ = self.head_b.addmm_out(&yc, &top.narrow(0, 0, len), &head_t);
            let _ = yc.addmm_(&x.narrow(0, start, len), &skip_t);
            start += len;
        }
        Some(y)
    }

    /// Keys per chunk of [`Self::step`]: about [`STEP_CHUNK_FLOATS`] floats
    /// of gates per layer (`[rows, G * hidden]`), at least 256 rows so the
    /// per-op overhead stays small.
    fn chunk_rows(&self) -> i64 {
        let per_row = self.shape.kind.gates() * self.shape.hidden.max(1);
        (STEP_CHUNK_FLOATS / per_row).max(256)
    }

    /// [`Self::step`] over all rows of its arguments at once; `in_place`
    /// (nothing records gradients): the cells' inference path
    /// (`cells::step_inference`, fewer temporaries) and the skip added into
    /// the head's output.
    fn step_rows(
        &self,
        x: &Tensor,
        h: &Tensor,
        c: Option<&Tensor>,
        dropout: f64,
        in_place: bool,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        if let Some(e) = &self.encoder {
            let xc = self.cell_x(x).unsqueeze(1);
            let (top, state) = e.forward(&h.select(0, 0), &xc, dropout, dropout > 0.0);
            let y = self.head_skip(&top.squeeze_dim(1), x, in_place);
            return (y, state.unsqueeze(0), None);
        }
        let (c, ring) = self.split_c(c);
        let c = c.as_ref();
        let train = dropout > 0.0;
        let mut hs = Vec::with_capacity(self.layers.len());
        let mut cs = Vec::with_capacity(self.layers.len());
        let top = self.wire(&self.cell_x(x), dropout, train, |l, input| {
            let cl = c.map(|c| c.get(l as i64));
            let w = &self.layers[l];
            let cell = if in_place {
                cells::step_inference
            } else {
                cells::step
            };
            let (hn, cn) = cell(self.shape.kind, w, input, &h.get(l as i64), cl.as_ref());
            hs.push(hn.shallow_clone());
            if let Some(cn) = cn {
                cs.push(cn);
            }
            hn
        });
        let (top, ring) = self.attend(top.unsqueeze(1), ring);
        let y = self.head_skip(&top.squeeze_dim(1), x, in_place);
        // One layer (the common case): a view, not a copy of the state.
        let stack = |t: &[Tensor]| match t {
            [one] => one.unsqueeze(0),
            many => Tensor::stack(many, 0),
        };
        let c_new = (!cs.is_empty()).then(|| stack(&cs));
        (y, stack(&hs), self.join_c(c_new, ring))
    }

    /// `head(top) + x Wᵀ` (the linear skip from the inputs). `in_place`:
    /// the skip's product is added into the head's fresh output by one
    /// `addmm_` (no `[n, outputs]` temporary, no separate add).
    fn head_skip(&self, top: &Tensor, x: &Tensor, in_place: bool) -> Tensor {
        let y = self.head(top);
        if in_place {
            let mut y = y;
            let _ = y.addmm_(x, &self.skip_w.tr());
            y
        } else {
            y + x.linear::<&Tensor>(&self.skip_w, None)
        }
    }

    /// The inputs the cells see: `x` without its last feature (the fed-back
    /// output) with output-to-output recurrence, else all of `x`.
    fn cell_x(&self, x: &Tensor) -> Tensor {
        let n_in = self.shape.cell_input();
        let last = x.size().len() as i64 - 1;
        if n_in == x.size()[last as usize] {
            x.shallow_clone()
        } else {
            x.narrow(last, 0, n_in)
        }
    }

    /// Wires the stacked layers: `layer(l, input)` runs layer `l` on its
    /// input (`[n, in]` for a step, `[n, T, in]` for a sequence) and returns
    /// its hidden output. Between layers: dropout (not after the top), and
    /// the configured connections (module docs of `config::Connections`).
    /// Returns what the head sees. The same for `step` and `forward_seq`,
    /// so the two cannot drift apart.
    fn wire(
        &self,
        x: &Tensor,
        dropout: f64,
        train: bool,
        mut layer: impl FnMut(usize, &Tensor) -> Tensor,
    ) -> Tensor {
        let n = self.layers.len();
        let mut input = x.shallow_clone();
        let mut outs: Vec<Tensor> = Vec::with_capacity(n);
        for l in 0..n {
            let layer_in = match self.shape.connections {
                Connections::Dense if l > 0 => {
                    let mut parts = Vec::with_capacity(l + 1);
                    parts.push(x.shallow_clone());
                    parts.extend(outs.iter().map(|o| o.shallow_clone()));
                    Tensor::cat(&parts, -1)
                }
                _ => input.shallow_clone(),
            };
            let hn = layer(l, &layer_in);
            let out = match self.shape.connections {
                Connections::Skip if l > 0 => hn + &layer_in,
                _ => hn,
            };
            let out = if dropout > 0.0 && l + 1 < n {
                out.dropout(dropout, train)
            } else {
                out
            };
            input = out.shallow_clone();
            outs.push(out);
        }
        match self.shape.connections {
            Connections::Dense if n > 1 => Tensor::cat(&outs, -1),
            _ => input,
        }
    }

    /// Runs whole sequences `xs: [n, T, input]` from the given state with
    /// libtorch's sequence kernels (the same equations as `step`, one call
    /// for all steps instead of one per step); returns the outputs at every
    /// step `[n, T, horizon]` and the final state. `dropout` applies between
    /// stacked layers when `train`.
    pub fn forward_seq(
        &self,
        xs: &Tensor,
        h: &Tensor,
        c: Option<&Tensor>,
        dropout: f64,
        train: bool,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        let (top, h_n, c_n) = self.tops_seq(&self.cell_x(xs), h, c, dropout, train);
        let y = self.head(&top) + xs.linear::<&Tensor>(&self.skip_w, None);
        (y, h_n, c_n)
    }

    /// The recurrent part (or the transformer) of `forward_seq` on the
    /// cells' inputs `xc`: returns what the head sees at every step
    /// `[n, T, ..]` and the final state (`c` joined with the attention
    /// ring, if any).
    fn tops_seq(
        &self,
        xc: &Tensor,
        h: &Tensor,
        c: Option<&Tensor>,
        dropout: f64,
        train: bool,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        if let Some(e) = &self.encoder {
            let (top, state) = e.forward(&h.select(0, 0), xc, dropout, train);
            return (top, state.unsqueeze(0), None);
        }
        let (c, ring) = self.split_c(c);
        let c = c.as_ref();
        let kind = self.shape.kind;
        let (out, h_n, c_n) = if self.shape.connections == Connections::None {
            // All layers in one kernel call (libtorch wires them plainly).
            let params: Vec<&Tensor> = self
                .layers
                .iter()
                .flat_map(|w| [&w.w_ih, &w.w_hh, &w.b_ih, &w.b_hh])
                .collect();
            seq_kernel(kind, xc, h, c, &params, self.shape.layers, dropout, train)
        } else {
            // One kernel call per layer, wired like `step`.
            let mut hs = Vec::with_capacity(self.layers.len());
            let mut cs = Vec::with_capacity(self.layers.len());
            let top = self.wire(xc, dropout, train, |l, input| {
                let w = &self.layers[l];
                let params = [&w.w_ih, &w.w_hh, &w.b_ih, &w.b_hh];
                let hl = h.narrow(0, l as i64, 1);
                let cl = c.map(|c| c.narrow(0, l as i64, 1));
                let (o, hn, cn) = seq_kernel(kind, input, &hl, cl.as_ref(), &params, 1, 0.0, train);
                hs.push(hn);
                if let Some(cn) = cn {
                    cs.push(cn);
                }
                o
            });
            let c_n = (!cs.is_empty()).then(|| Tensor::cat(&cs, 0));
            (top, Tensor::cat(&hs, 0), c_n)
        };
        let (top, ring) = self.attend(out, ring);
        (top, h_n, self.join_c(c_n, ring))
    }

    /// Output-to-output recurrence over whole sequences: `xs: [n, T, input]`
    /// whose last feature is a placeholder, `prev: [n, 1]` the output fed
    /// back before the first step. The cells run with the sequence kernels
    /// (they never see the fed-back output); then `y_t = z_t + w * y_{t-1}[col]`
    /// runs step by step over the cheap output layer only. Returns the
    /// outputs `[n, T, outputs]`, the final state and the last fed-back
    /// output `[n, 1]`. The same equations as `step` with the fed-back value
    /// in `x`'s last column (checked in the tests).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_seq_fed(
        &self,
        xs: &Tensor,
        h: &Tensor,
        c: Option<&Tensor>,
        prev: &Tensor,
        col: i64,
        dropout: f64,
        train: bool,
    ) -> (Tensor, Tensor, Option<Tensor>, Tensor) {
        let n_in = self.shape.input;
        let xc = xs.narrow(2, 0, n_in - 1);
        let (top, h_n, c_n) = self.tops_seq(&xc, h, c, dropout, train);
        let z = self.head(&top) + xc.linear::<&Tensor>(&self.skip_w.narrow(1, 0, n_in - 1), None);
        // [outputs]: each output's weight on the fed-back value.
        let w = self.skip_w.select(1, n_in - 1);
        let mut prev = prev.shallow_clone();
        let t_len = xs.size()[1];
        let mut ys = Vec::with_capacity(t_len as usize);
        for t in 0..t_len {
            let y = z.select(1, t) + &prev * &w;
            prev = y.narrow(1, col, 1);
            ys.push(y);
        }
        (Tensor::stack(&ys, 1), h_n, c_n, prev)
    }

    /// The head on what it sees `[.., top_width]` -> `[.., outputs]`.
    fn head(&self, top: &Tensor) -> Tensor {
        match &self.decoder {
            None => top.linear(&self.head_w, Some(&self.head_b)),
            Some(d) => {
                let size = top.size();
                let flat = top.reshape([-1, size[size.len() - 1]]);
                let mut out_size = size[..size.len() - 1].to_vec();
                out_size.push(self.horizon);
                d.decode(&flat, self.temporal.as_ref())
                    .reshape(out_size.as_slice())
            }
        }
    }

    /// The same as `forward_seq`, one `step` at a time (reference for tests).
    pub fn forward_steps(
        &self,
        xs: &Tensor,
        h: &Tensor,
        c: Option<&Tensor>,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        let t_len = xs.size()[1];
        let mut h = h.shallow_clone();
        let mut c = c.map(|c| c.shallow_clone());
        let mut ys = Vec::with_capacity(t_len as usize);
        for t in 0..t_len {
            let (y, hn, cn) = self.step(&xs.select(1, t), &h, c.as_ref(), 0.0);
            ys.push(y);
            h = hn;
            c = cn;
        }
        (Tensor::stack(&ys, 1), h, c)
    }
}

/// libtorch's sequence kernel of `kind` over `xs: [n, T, in]` with
/// `layers` stacked layers (`params` w_ih, w_hh, b_ih, b_hh per layer):
/// `(outputs [n, T, hidden], h_n, c_n)`.
#[allow(clippy::too_many_arguments)]
fn seq_kernel(
    kind: CellKind,
    xs: &Tensor,
    h: &Tensor,
    c: Option<&Tensor>,
    params: &[&Tensor],
    layers: i64,
    dropout: f64,
    train: bool,
) -> (Tensor, Tensor, Option<Tensor>) {
    match kind {
        CellKind::Lstm => {
            let c0 = c
                .map(|c| c.shallow_clone())
                .unwrap_or_else(|| h.zeros_like());
            let (o, hn, cn) = xs.lstm(&[h, &c0], params, true, layers, dropout, train, false, true);
            (o, hn, Some(cn))
        }
        CellKind::Gru => {
            let (o, hn) = xs.gru(h, params, true, layers, dropout, train, false, true);
            (o, hn, None)
        }
        CellKind::Rnn => {
            let (o, hn) = xs.rnn_tanh(h, params, true, layers, dropout, train, false, true);
            (o, hn, None)
        }
        // The transformer never gets here (`Network` runs its encoder);
        // kept exhaustive for the compiler.
        CellKind::Irnn | CellKind::Transformer => {
            let (o, hn) = xs.rnn_relu(h, params, true, layers, dropout, train, false, true);
            (o, hn, None)
        }
    }
}

/// Target gates per chunk of [`Network::step`], in floats (4 MiB): a
/// chunk's temporaries fit in L3 beside its share of the state, and stay
/// below glibc's 32 MiB mmap threshold, so they are reused from the heap
/// from chunk to chunk and tick to tick instead of being mapped and
/// page-faulted afresh (the cost that dominated at 1M keys).
const STEP_CHUNK_FLOATS: i64 = 1 << 20;

/// Target gates per chunk of [`Network::step_in_place`], in floats
/// (256 KiB): a chunk's gates, its `[x, h]` rows and the state rows it
/// touches stay in a core's L2 (512 KiB on the bench machine's EPYC)
/// between the product that writes the gates and the pass that reads them.
const FUSED_CHUNK_FLOATS: i64 = 1 << 16;

/// Seeds libtorch's process-global generator and returns a guard; hold it
/// while drawing the random numbers that must be reproducible (initial
/// weights), so concurrent users (tests, a retrainer beside the live stage)
/// do not interleave their draws.
pub fn seed_global(seed: i64) -> std::sync::MutexGuard<'static, ()> {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    guard
}

/// The network's one-step output that output recurrence feeds back: step 1
/// of the median quantile (or of the point head), in the network's units.
pub fn first_output(y: &Tensor, spec: &ModelSpec) -> Tensor {
    let mid = spec.quantiles.iter().position(|q| *q == 0.5).unwrap_or(0) as i64;
    y.select(-1, mid * spec.horizon).to_kind(Kind::Float)
}

/// The network input from scaled values `[m, F]`, raw values (for the
/// missing flag of the target) and covariates `[m, C]`: `[m, F + 1 + C]` f32.
/// Training builds the same features (see `train::prep`).
pub fn network_input(scaled: &Tensor, values: &Tensor, cov: &Tensor) -> Tensor {
    let target_missing = values.narrow(1, 0, 1).isnan().to_kind(Kind::Float);
    Tensor::cat(
        &[
            scaled.to_kind(Kind::Float),
            target_missing,
            cov.to_kind(Kind::Float),
        ],
        1,
    )
}

/// The libtorch device for the configured kind.
pub fn device_for(kind: DeviceKind) -> Device {
    match kind {
        DeviceKind::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
        DeviceKind::Cuda => {
            tracing::warn!(
                "model.device = \"cuda\" but no CUDA device is available; using the CPU"
            );
            Device::Cpu
        }
        DeviceKind::Cpu => Device::Cpu,
    }
}
