//! The network: stacked recurrent cells (Elman, IRNN, LSTM, GRU) with a
//! multi-output head (direct or a seq2seq GRU decoder) and a linear skip
//! from the inputs. One `step` for the live stage (a batch of keys, one
//! window each) and `forward_seq` for training (libtorch's sequence
//! kernels, checked against `step` in the tests).

use tch::{nn, Device, Kind, Tensor};

use super::artifact::ModelSpec;
use super::cells::{self, CellShape, LayerWeights};
use crate::config::{CellKind, DeviceKind, HorizonDecoder};

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
}

/// A GRU decoder seeded with the encoder's top state: step k takes the
/// previous step's outputs (all quantiles) and emits this step's.
struct Seq2seq {
    steps: i64,
    per_step: i64,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    out_w: Tensor,
    out_b: Tensor,
}

impl Seq2seq {
    /// `top: [n, hidden]` -> `[n, steps * per_step]`, quantile-major.
    fn decode(&self, top: &Tensor) -> Tensor {
        let n = top.size()[0];
        let mut d = top.shallow_clone();
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
            prev = d.linear(&self.out_w, Some(&self.out_b));
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
        let layers = (0..shape.layers)
            .map(|l| LayerWeights::new(&root, shape, l))
            .collect();
        let k = 1.0 / (shape.hidden as f64).sqrt();
        let head_w = root.var(
            "head_w",
            &[horizon, shape.hidden],
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
            }
        });
        Network {
            decoder,
            vs,
            shape,
            horizon,
            layers,
            head_w,
            head_b,
            skip_w,
        }
    }

    /// Zero states for `n` keys: `h: [layers, n, hidden]` (and `c` for LSTM).
    pub fn zero_state(&self, n: i64) -> (Tensor, Option<Tensor>) {
        let opts = (Kind::Float, self.vs.device());
        let dims = [self.shape.layers, n, self.shape.hidden];
        let c = self
            .shape
            .kind
            .has_cell_state()
            .then(|| Tensor::zeros(dims, opts));
        (Tensor::zeros(dims, opts), c)
    }

    /// One time step for a batch of keys: `x: [n, input]`, states
    /// `[layers, n, hidden]`. Returns `(y: [n, horizon], h', c')`.
    /// `dropout` (training only) applies between stacked layers.
    pub fn step(
        &self,
        x: &Tensor,
        h: &Tensor,
        c: Option<&Tensor>,
        dropout: f64,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        let mut input = x.shallow_clone();
        let mut hs = Vec::with_capacity(self.layers.len());
        let mut cs = Vec::with_capacity(self.layers.len());
        for (l, w) in self.layers.iter().enumerate() {
            let cl = c.map(|c| c.get(l as i64));
            let (hn, cn) = cells::step(self.shape.kind, w, &input, &h.get(l as i64), cl.as_ref());
            input = if dropout > 0.0 && l + 1 < self.layers.len() {
                hn.dropout(dropout, true)
            } else {
                hn.shallow_clone()
            };
            hs.push(hn);
            if let Some(cn) = cn {
                cs.push(cn);
            }
        }
        let y = self.head(&input) + x.linear::<&Tensor>(&self.skip_w, None);
        // One layer (the common case): a view, not a copy of the state.
        let stack = |t: &[Tensor]| match t {
            [one] => one.unsqueeze(0),
            many => Tensor::stack(many, 0),
        };
        let c_new = (!cs.is_empty()).then(|| stack(&cs));
        (y, stack(&hs), c_new)
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
        let params: Vec<&Tensor> = self
            .layers
            .iter()
            .flat_map(|w| [&w.w_ih, &w.w_hh, &w.b_ih, &w.b_hh])
            .collect();
        let l = self.shape.layers;
        let (out, h_n, c_n) = match self.shape.kind {
            CellKind::Lstm => {
                let c0 = c
                    .map(|c| c.shallow_clone())
                    .unwrap_or_else(|| h.zeros_like());
                let (o, hn, cn) = xs.lstm(&[h, &c0], &params, true, l, dropout, train, false, true);
                (o, hn, Some(cn))
            }
            CellKind::Gru => {
                let (o, hn) = xs.gru(h, &params, true, l, dropout, train, false, true);
                (o, hn, None)
            }
            CellKind::Rnn => {
                let (o, hn) = xs.rnn_tanh(h, &params, true, l, dropout, train, false, true);
                (o, hn, None)
            }
            CellKind::Irnn => {
                let (o, hn) = xs.rnn_relu(h, &params, true, l, dropout, train, false, true);
                (o, hn, None)
            }
        };
        let y = self.head(&out) + xs.linear::<&Tensor>(&self.skip_w, None);
        (y, h_n, c_n)
    }

    /// The head on top-layer states `[.., hidden]` -> `[.., outputs]`.
    fn head(&self, top: &Tensor) -> Tensor {
        match &self.decoder {
            None => top.linear(&self.head_w, Some(&self.head_b)),
            Some(d) => {
                let size = top.size();
                let flat = top.reshape([-1, self.shape.hidden]);
                let mut out_size = size[..size.len() - 1].to_vec();
                out_size.push(self.horizon);
                d.decode(&flat).reshape(out_size.as_slice())
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
