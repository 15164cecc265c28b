//! Forecast stage: closed windows -> one forecast per key per window, from a
//! stacked recurrent network whose hidden state per key is carried from
//! window to window.
//!
//! Layout (see `store`): the states of all keys live in a few contiguous
//! tensors `[layers, slots, hidden]` (plus the LSTM cell state) with a
//! key -> slot map and a free list. One batch of closed windows is one
//! gather -> step -> scatter; there are no per-key tensors and no per-key
//! libtorch calls. When a key closes several windows in one batch, the batch
//! is stepped in *waves* (each key's first window, then its second, ...), so
//! a key's windows are always applied in time order.
//!
//! Per-key scaling is online (Welford mean and variance per key and field,
//! kept in `[slots, fields]` tensors), applied before the network and
//! inverted after it. Until a key has seen `warmup_windows` windows its
//! forecast comes from seasonal naive over the key's recent history (a ring
//! buffer `[slots, W]`) and is marked `source = "baseline"`.
//!
//! Invariant: everything here runs on the pipeline's compute thread, never
//! on a tokio worker.

pub mod artifact;
pub mod cells;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListBuilder, Float64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit};
use tch::{nn, Device, Kind, Tensor};

pub use artifact::ModelSpec;
pub use cells::{CellShape, LayerWeights};
use store::StateStore;

use crate::config::{CellKind, Decoder, Head, PipelineConfig};
use crate::error::{Error, Result};
use crate::window::FIRST_AGG_COLUMN;

/// A stacked recurrent network with a multi-output head: `horizon` values
/// from the last layer's hidden state plus a linear skip from the inputs
/// (zero-initialised; with lag inputs it is a learned autoregression that
/// the recurrent part corrects).
pub struct Network {
    pub vs: nn::VarStore,
    pub shape: CellShape,
    pub horizon: i64,
    layers: Vec<LayerWeights>,
    head_w: Tensor,
    head_b: Tensor,
    /// Linear skip from the inputs to the outputs (zero at start).
    skip_w: Tensor,
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
        let seq = (spec.decoder == Decoder::Seq2seq)
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
        let c_new = (!cs.is_empty()).then(|| Tensor::stack(&cs, 0));
        (y, Tensor::stack(&hs, 0), c_new)
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

/// The names of the model's input features for a pipeline, in order: the
/// scaled value fields, the target's missing flag, the calendar covariates,
/// then the target's lags 1..=lags (scaled with the current scaler).
pub fn feature_names(cfg: &PipelineConfig) -> Vec<String> {
    let spec = crate::window::WindowSpec::from_config(cfg);
    let target = &cfg.decode.value_fields[0];
    let mut v: Vec<String> = cfg
        .decode
        .value_fields
        .iter()
        .map(|f| format!("{f}_scaled"))
        .collect();
    v.push(format!("{target}_missing"));
    v.extend(spec.covariate_names());
    v.extend((1..=cfg.lags()).map(|j| format!("{target}_lag{j}")));
    if cfg.model.output_recurrence {
        v.push(PREV_OUTPUT.into());
    }
    v
}

/// The feature name of the fed-back previous output (output recurrence).
pub const PREV_OUTPUT: &str = "prev_output";

/// Schema of the forecasts batch; with quantiles, a `quantiles` column
/// holds `horizon` values per quantile, quantile-major.
pub fn forecasts_schema(horizon: i64, quantiles: &[f64]) -> SchemaRef {
    let mut fields = vec![
        Field::new("key", DataType::Utf8, false),
        Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new(
            "forecast",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float64, true)),
                horizon as i32,
            ),
            false,
        ),
    ];
    if !quantiles.is_empty() {
        let q: Vec<String> = quantiles.iter().map(|q| q.to_string()).collect();
        let meta = std::collections::HashMap::from([("quantiles".to_string(), q.join(","))]);
        fields.push(
            Field::new(
                "quantiles",
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Float64, true)),
                    (horizon as usize * quantiles.len()) as i32,
                ),
                false,
            )
            .with_metadata(meta),
        );
    }
    Arc::new(Schema::new(fields))
}

/// The forecast stage: network, per-key state, scalers and cold start.
pub struct Forecaster {
    net: Network,
    spec: ModelSpec,
    store: StateStore,
    n_fields: usize,
    n_cov: usize,
    n_lags: i64,
    warmup: i64,
    schema: SchemaRef,
}

/// How long a hot swap paused the stage and how much it replayed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwapReport {
    pub keys: usize,
    pub replayed_windows: i64,
    pub pause_ms: f64,
}

impl Forecaster {
    /// Builds the stage from a pipeline: loads `model.artifact` when set
    /// (refusing one whose feature spec differs), else initialises a fresh
    /// network from `model.seed`.
    pub fn from_config(cfg: &PipelineConfig) -> Result<Self> {
        let device = device_for(&cfg.model.device);
        let (net, spec) = match &cfg.model.artifact {
            Some(dir) => artifact::load(dir, &ModelSpec::expected(cfg), device)?,
            None => {
                let spec = ModelSpec::untrained(cfg);
                (Network::for_spec(&spec, device, spec.seed), spec)
            }
        };
        Ok(Self::new(
            net,
            spec,
            cfg.decode.value_fields.len(),
            cfg.model.warmup_windows,
        ))
    }

    pub fn new(net: Network, spec: ModelSpec, n_fields: usize, warmup: u32) -> Self {
        // The lags are the trailing `{target}_lag{j}` features (a value field
        // may itself be called e.g. `io_lag`).
        let target = spec
            .features
            .first()
            .and_then(|f| f.strip_suffix("_scaled"))
            .unwrap_or_default();
        let lag_prefix = format!("{target}_lag");
        let recurrent = spec.features.last().is_some_and(|f| f == PREV_OUTPUT);
        let n_lags = spec
            .features
            .iter()
            .rev()
            .skip(recurrent as usize)
            .take_while(|f| {
                f.strip_prefix(lag_prefix.as_str())
                    .is_some_and(|j| j.parse::<u32>().is_ok())
            })
            .count() as i64;
        let n_cov = spec.features.len() - n_fields - 1 - n_lags as usize - recurrent as usize;
        let ring = replay_windows(&spec, warmup).max(n_lags + 1);
        let mut store = StateStore::new(&net, n_fields as i64, ring, n_lags, recurrent);
        store.prev_index =
            spec.quantiles.iter().position(|q| *q == 0.5).unwrap_or(0) as i64 * spec.horizon;
        Forecaster {
            schema: forecasts_schema(spec.horizon, &spec.quantiles),
            store,
            n_fields,
            n_cov,
            n_lags,
            warmup: warmup as i64,
            net,
            spec,
        }
    }

    pub fn version(&self) -> &str {
        &self.spec.version
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    pub fn live_keys(&self) -> usize {
        self.store.len()
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Frees the state of keys whose series ended.
    pub fn end_keys(&mut self, keys: &[Arc<str>]) {
        self.store.free(keys);
    }

    /// Hot swap: replaces the network and rebuilds every key's hidden state
    /// by replaying its last `W` windows (kept as network inputs in the
    /// store) through the new network, one batched step per replayed window.
    /// Scalers and histories do not depend on the network and are kept.
    /// Refuses a model whose spec does not fit this stage.
    pub fn swap(&mut self, net: Network, spec: ModelSpec) -> Result<SwapReport> {
        if spec.features != self.spec.features
            || spec.horizon != self.spec.horizon
            || spec.season != self.spec.season
        {
            return Err(Error::Model(format!(
                "cannot swap to {}: its features/horizon/season ({:?}, {}, {}) differ from the running model's ({:?}, {}, {})",
                spec.version, spec.features, spec.horizon, spec.season, self.spec.features, self.spec.horizon, self.spec.season
            )));
        }
        let t0 = std::time::Instant::now();
        let replayed = tch::no_grad(|| self.store.replay(&net));
        self.net = net;
        self.spec = spec;
        let report = SwapReport {
            keys: self.store.len(),
            replayed_windows: replayed,
            pause_ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        metrics::histogram!("streamcast_hot_swap_pause_seconds").record(report.pause_ms / 1e3);
        tracing::info!(version = %self.spec.version, keys = report.keys, pause_ms = report.pause_ms, "hot swap done");
        Ok(report)
    }

    /// Forecasts every row of a closed-windows batch (schema of
    /// `WindowSpec::windows_schema`). Returns one forecast row per window.
    pub fn forecast(&mut self, windows: &RecordBatch) -> Result<RecordBatch> {
        let n = windows.num_rows();
        let keys = windows.column(0).as_string::<i32>();
        let ends = windows
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| Error::Model("window_end is not a millisecond timestamp".into()))?;
        // Waves: the j-th window of each key goes into wave j.
        let mut rank: HashMap<&str, usize> = HashMap::new();
        let mut waves: Vec<Vec<usize>> = Vec::new();
        for i in 0..n {
            let r = rank.entry(keys.value(i)).or_insert(0);
            if waves.len() <= *r {
                waves.push(Vec::new());
            }
            waves[*r].push(i);
            *r += 1;
        }
        let x_all = self.inputs(windows)?;
        let h = self.spec.horizon as usize;
        let nq = self.spec.quantiles.len();
        let mut out = vec![0.0f64; n * h];
        let mut qout = vec![0.0f64; n * h * nq];
        let mut from_model = vec![false; n];
        tch::no_grad(|| -> Result<()> {
            for rows in &waves {
                let slots: Vec<i64> = rows
                    .iter()
                    .map(|&i| self.store.slot(keys.value(i)))
                    .collect();
                let slots = Tensor::from_slice(&slots).to_device(self.net.vs.device());
                let idx = Tensor::from_slice(&rows.iter().map(|&i| i as i64).collect::<Vec<_>>())
                    .to_device(self.net.vs.device());
                let x = x_all.index_select(0, &idx);
                let (y, q, use_model) = self.step_wave(&slots, &x)?;
                let y = Vec::<f64>::try_from(&y.flatten(0, -1))?;
                let use_model = Vec::<bool>::try_from(&use_model)?;
                for (j, &i) in rows.iter().enumerate() {
                    out[i * h..(i + 1) * h].copy_from_slice(&y[j * h..(j + 1) * h]);
                    from_model[i] = use_model[j];
                }
                if let Some(q) = q {
                    let q = Vec::<f64>::try_from(&q.flatten(0, -1))?;
                    let w = h * nq;
                    for (j, &i) in rows.iter().enumerate() {
                        qout[i * w..(i + 1) * w].copy_from_slice(&q[j * w..(j + 1) * w]);
                    }
                }
            }
            Ok(())
        })?;
        let mut kb = StringBuilder::with_capacity(n, n * 16);
        let mut vb = StringBuilder::with_capacity(n, n * self.spec.version.len());
        let mut sb = StringBuilder::with_capacity(n, n * 8);
        let mut fb =
            FixedSizeListBuilder::with_capacity(Float64Builder::with_capacity(n * h), h as i32, n)
                .with_field(Arc::new(Field::new("item", DataType::Float64, true)));
        for i in 0..n {
            kb.append_value(keys.value(i));
            vb.append_value(&self.spec.version);
            sb.append_value(if from_model[i] { "model" } else { "baseline" });
            fb.values().append_slice(&out[i * h..(i + 1) * h]);
            fb.append(true);
        }
        let end_col: ArrayRef = Arc::new(ends.clone());
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(kb.finish()),
            end_col,
            Arc::new(vb.finish()),
            Arc::new(sb.finish()),
            Arc::new(fb.finish()),
        ];
        if nq > 0 {
            let w = h * nq;
            let mut qb = FixedSizeListBuilder::with_capacity(
                Float64Builder::with_capacity(n * w),
                w as i32,
                n,
            )
            .with_field(Arc::new(Field::new("item", DataType::Float64, true)));
            for i in 0..n {
                qb.values().append_slice(&qout[i * w..(i + 1) * w]);
                qb.append(true);
            }
            cols.push(Arc::new(qb.finish()));
        }
        metrics::counter!("streamcast_forecasts_total").increment(n as u64);
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    /// Raw inputs of every row: `[n, fields + covariates]` (f64, NaN = missing).
    fn inputs(&self, windows: &RecordBatch) -> Result<Tensor> {
        let n = windows.num_rows() as i64;
        let mut cols = Vec::with_capacity(self.n_fields + self.n_cov);
        let first_cov = FIRST_AGG_COLUMN + self.n_fields;
        if windows.num_columns() != first_cov + self.n_cov {
            return Err(Error::Model(format!(
                "windows batch has {} columns, the model expects {} (features {:?})",
                windows.num_columns(),
                first_cov + self.n_cov,
                self.spec.features
            )));
        }
        for j in FIRST_AGG_COLUMN..first_cov + self.n_cov {
            let a = windows.column(j).as_primitive::<Float64Type>();
            // Null (never produced by the window stage) reads as missing.
            let v: Vec<f64> = if a.null_count() > 0 {
                a.iter().map(|v| v.unwrap_or(f64::NAN)).collect()
            } else {
                a.values().to_vec()
            };
            cols.push(Tensor::from_slice(&v));
        }
        // An explicit width: `-1` cannot be inferred for an empty batch.
        let width = cols.len() as i64;
        Ok(Tensor::stack(&cols, 1)
            .view([n, width])
            .to_device(self.net.vs.device()))
    }

    /// Steps one wave (distinct keys). `x: [m, fields + cov]` raw.
    /// Returns the point forecasts `[m, horizon]` (f64, original units), the
    /// quantile forecasts `[m, Q, horizon]` when configured (sorted along Q,
    /// so quantiles never cross), and whether each came from the model
    /// (else the cold-start baseline, which then fills every quantile).
    fn step_wave(
        &mut self,
        slots: &Tensor,
        x: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>, Tensor)> {
        let nf = self.n_fields as i64;
        let values = x.narrow(1, 0, nf).to_kind(Kind::Double);
        let cov = x.narrow(1, nf, self.n_cov as i64);
        let (scaled, mean, scale) = self.store.update_scaler(slots, &values);
        let base_input = network_input(&scaled, &values, &cov);
        let lags = self
            .store
            .lags(slots, self.n_lags, &mean.select(1, 0), &scale.select(1, 0));
        let mut parts = vec![base_input.shallow_clone(), lags];
        let recurrent = self.store.has_prev_output();
        if recurrent {
            parts.push(self.store.prev_output(slots).unsqueeze(1));
        }
        let input = Tensor::cat(&parts, 1);
        let (h, c) = self.store.gather(slots);
        let (y, h_new, c_new) = self.net.step(&input, &h, c.as_ref(), 0.0);
        self.store.scatter(slots, &h_new, c_new.as_ref());
        if recurrent {
            self.store
                .set_prev_output(slots, &first_output(&y, &self.spec));
        }
        let seen = self
            .store
            .push_history(slots, &values.select(1, 0), &base_input);
        let mean0 = mean.select(1, 0);
        let horizon = self.spec.horizon;
        let base = self
            .store
            .seasonal_naive(slots, &seen, self.spec.season, horizon, &mean0);
        let nq = self.spec.quantiles.len() as i64;
        let m = y.size()[0];
        // [m, Q', H] in original units.
        let y = y.to_kind(Kind::Double).view([m, nq.max(1), horizon]);
        let scale0 = scale.narrow(1, 0, 1).unsqueeze(2);
        let y_model = match self.spec.head {
            Head::Direct => y * &scale0 + mean.narrow(1, 0, 1).unsqueeze(2),
            Head::Residual => base.unsqueeze(1) + y * &scale0,
        };
        let use_model = seen.gt(self.warmup);
        let base_q = base.unsqueeze(1).expand_as(&y_model);
        let y_all = y_model.where_self(&use_model.view([-1, 1, 1]), &base_q);
        // A non-finite model output must never reach a consumer: fall back.
        let bad = y_all.isfinite().logical_not();
        let y_all = base_q.where_self(&bad, &y_all);
        let (point, q) = if nq > 0 {
            let sorted = y_all.sort(1, false).0;
            let mid = self
                .spec
                .quantiles
                .iter()
                .position(|q| *q == 0.5)
                .unwrap_or(0) as i64;
            (sorted.select(1, mid), Some(sorted.to_device(Device::Cpu)))
        } else {
            (y_all.select(1, 0), None)
        };
        Ok((
            point.to_device(Device::Cpu),
            q,
            use_model.to_device(Device::Cpu),
        ))
    }
}

/// Scaled inputs (and training targets) are clamped to this many scale units:
/// a key that sat flat and then moves would otherwise feed the network (or
/// the loss) values in the millions. Training and the live stage apply the
/// same clamp.
pub const SCALED_CLAMP: f64 = 10.0;

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

/// Windows of history kept per key: enough for seasonal naive, warm-up and
/// a hot-swap replay long enough for the state to forget its start.
pub fn replay_windows(spec: &ModelSpec, warmup: u32) -> i64 {
    (spec.season).max(warmup as i64).max(48)
}

pub fn device_for(name: &str) -> Device {
    match name {
        "cuda" if tch::Cuda::is_available() => Device::Cuda(0),
        "cuda" => {
            tracing::warn!(
                "model.device = \"cuda\" but no CUDA device is available; using the CPU"
            );
            Device::Cpu
        }
        _ => Device::Cpu,
    }
}

#[cfg(test)]
mod tests;
