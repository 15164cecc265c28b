//! The forecast stage: closed windows -> one forecast per key per window.
//!
//! Per-key scaling is online (mean and variance per key and field, kept in
//! `[slots, fields]` tensors: expanding Welford, or exponentially weighted
//! as the model's spec says, `artifact::Scaler`), applied before the
//! network and inverted after it. Until a key has seen `warmup_windows` windows its
//! forecast comes from seasonal naive over the key's recent history (a ring
//! buffer `[slots, W]`) and is marked `source = "baseline"`. When a key
//! closes several windows in one batch, the batch is stepped in *waves*
//! (each key's first window, then its second, ...), so a key's windows are
//! always applied in time order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListBuilder, Float64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, SchemaRef};
use tch::{Device, Kind, Tensor};

use super::artifact::ModelSpec;
use super::network::{first_output, network_input, Network};
use super::registry;
use super::store::StateStore;
use super::{replay_windows, PREV_OUTPUT};
use crate::config::{Head, PipelineConfig};
use crate::error::{Error, Result};
use crate::schema::{forecasts_schema, windows as win};
use crate::state::ModelKeyState;
use crate::telemetry;

/// The forecast stage: network, per-key state, scalers and cold start.
pub struct ForecastStage {
    pub(crate) net: Network,
    spec: ModelSpec,
    pub(crate) store: StateStore,
    n_fields: usize,
    n_cov: usize,
    n_lags: i64,
    warmup: i64,
    schema: SchemaRef,
    /// Durable state: keys whose state changed since `take_changes`.
    changed: Option<HashSet<Arc<str>, foldhash::fast::RandomState>>,
    /// ES-RNN-style hybrid (`model.hybrid`): per-key smoothing applied to
    /// the target before the network and inverted after it.
    hybrid: Option<super::hybrid::HybridKeys>,
}

/// How long a hot swap paused the stage and how much it replayed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwapReport {
    pub keys: usize,
    pub replayed_windows: i64,
    pub pause_ms: f64,
}

impl ForecastStage {
    /// Builds the stage from a pipeline, the one way production, tests and
    /// benches all use: the model of [`registry::starting_model`]
    /// (`model.artifact`, else the registry's champion, else a fresh seeded
    /// network).
    pub fn from_config(cfg: &PipelineConfig) -> Result<Self> {
        let (net, spec) = registry::starting_model(cfg)?;
        let mut stage = Self::new(
            net,
            spec,
            cfg.decode.value_fields.len(),
            cfg.model.warmup_windows,
        );
        if let Some(h) = &cfg.model.hybrid {
            stage.set_hybrid(super::hybrid::HybridKeys::new(
                super::hybrid::params_of(h),
                h.mode,
            ));
        }
        Ok(stage)
    }

    /// Puts per-key exponential smoothing around the network (see
    /// `model::hybrid`); the network must have been trained on the same
    /// transform.
    pub fn set_hybrid(&mut self, h: super::hybrid::HybridKeys) {
        self.hybrid = Some(h);
    }

    pub fn hybrid(&self) -> Option<&super::hybrid::HybridKeys> {
        self.hybrid.as_ref()
    }

    /// The hybrid's per-key state, for a restore.
    pub fn hybrid_mut(&mut self) -> Option<&mut super::hybrid::HybridKeys> {
        self.hybrid.as_mut()
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
        // A spec that names no scaler is refused when loaded (`out_of_bounds`);
        // one built in code without it scales as the stage always did.
        let scaler = spec.scaler_kind().unwrap_or_else(|| {
            tracing::error!(scaler = %spec.scaler, "unknown scaler in the model spec: scaling expanding");
            super::artifact::Scaler::Expanding
        });
        store.set_scaler_decay(scaler.decay());
        store.prev_index =
            spec.quantiles.iter().position(|q| *q == 0.5).unwrap_or(0) as i64 * spec.horizon;
        ForecastStage {
            schema: forecasts_schema(spec.horizon, &spec.quantiles),
            store,
            n_fields,
            n_cov,
            n_lags,
            warmup: warmup as i64,
            net,
            spec,
            changed: None,
            hybrid: None,
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

    /// Turns the in-place LSTM step off (`false`: gather -> step ->
    /// scatter, as before 2026-11-28) or back on; for comparisons in the
    /// benches (see `StateStore::set_fused_step`).
    pub fn set_fused_step(&mut self, on: bool) {
        self.store.set_fused_step(on, None);
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Frees the state of keys whose series ended (or moved away).
    pub fn end_keys(&mut self, keys: &[Arc<str>]) {
        self.store.free(keys);
        if let Some(h) = self.hybrid.as_mut() {
            h.end_keys(keys);
        }
        if let Some(c) = self.changed.as_mut() {
            keys.iter().for_each(|k| {
                c.remove(k);
            });
        }
    }

    /// Starts remembering which keys' state changes, for checkpoints.
    pub fn enable_state_tracking(&mut self) {
        self.changed.get_or_insert_with(HashSet::default);
    }

    /// The state of every key that changed since the last call, as model
    /// record values (`state::decode_model` reads them back).
    pub fn take_changes(&mut self) -> Result<Vec<(Arc<str>, Vec<u8>)>> {
        let Some(changed) = self.changed.as_mut() else {
            return Ok(Vec::new());
        };
        let mut keys: Vec<Arc<str>> = changed.drain().collect();
        keys.sort_unstable();
        self.store.export_encoded(&keys, &self.spec.version)
    }

    /// Takes restored key states in. States of another model version keep
    /// their scalers and histories, and their hidden state is rebuilt by
    /// replaying their recent inputs through this model (as a hot swap
    /// does). Returns how many keys were restored.
    pub fn restore(&mut self, states: &[(Arc<str>, ModelKeyState)]) -> Result<usize> {
        let n = self.store.import(states)?;
        let other = states
            .iter()
            .filter(|(_, s)| s.version != self.spec.version)
            .count();
        if other > 0 {
            tracing::info!(keys = other, version = %self.spec.version, "restored state of another model version: replaying it through the running model");
            let net = &self.net;
            tch::no_grad(|| self.store.replay(net));
        }
        Ok(n)
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
        // The per-key scalers are kept across a swap: the new network must
        // have been trained on the same scaling.
        if spec.scaler_kind() != self.spec.scaler_kind() {
            return Err(Error::Model(format!(
                "cannot swap to {}: it was trained with the scaler {:?}, the running model's is {:?}",
                spec.version, spec.scaler, self.spec.scaler
            )));
        }
        let t0 = std::time::Instant::now();
        let replayed = tch::no_grad(|| self.store.replay(&net));
        if let Some(c) = self.changed.as_mut() {
            c.extend(self.store.keys().cloned());
        }
        self.net = net;
        self.spec = spec;
        let report = SwapReport {
            keys: self.store.len(),
            replayed_windows: replayed,
            pause_ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        metrics::histogram!(telemetry::HOT_SWAP_PAUSE).record(report.pause_ms / 1e3);
        tracing::info!(version = %self.spec.version, keys = report.keys, pause_ms = report.pause_ms, "hot swap done");
        Ok(report)
    }

    /// Forecasts every row of a closed-windows batch (schema of
    /// `WindowSpec::windows_schema`). Returns one forecast row per window.
    pub fn forecast(&mut self, windows: &RecordBatch) -> Result<RecordBatch> {
        let n = windows.num_rows();
        let keys = windows.column(win::KEY).as_string::<i32>();
        let ends = windows
            .column(win::WINDOW_END)
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
        let h = self.spec.horizon as usize;
        // The hybrid: the target in the network's units, and per row what
        // turns the forecast back (rows in order = each key in time order).
        let hybrid = match self.hybrid.as_mut() {
            Some(hk) => Some(hybrid_inputs(hk, windows, h)?),
            None => None,
        };
        let x_all = self.inputs(hybrid.as_ref().map_or(windows, |(b, _)| b))?;
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
                let slots_t = Tensor::from_slice(&slots).to_device(self.net.vs.device());
                let idx = Tensor::from_slice(&rows.iter().map(|&i| i as i64).collect::<Vec<_>>())
                    .to_device(self.net.vs.device());
                let x = x_all.index_select(0, &idx);
                let (y, q, use_model) = self.step_wave(&slots, &slots_t, &x)?;
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
        if let Some((_, inv)) = &hybrid {
            for i in 0..n {
                let off = &inv[i * h..(i + 1) * h];
                for (v, o) in out[i * h..(i + 1) * h].iter_mut().zip(off) {
                    *v = super::hybrid::HybridKeys::invert(*v, *o);
                }
                for (j, v) in qout[i * h * nq..(i + 1) * h * nq].iter_mut().enumerate() {
                    *v = super::hybrid::HybridKeys::invert(*v, off[j % h]);
                }
            }
        }
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
        if let Some(c) = self.changed.as_mut() {
            for i in 0..n {
                let k = keys.value(i);
                if !c.contains(k) {
                    c.insert(Arc::from(k));
                }
            }
        }
        metrics::counter!(telemetry::FORECASTS).increment(n as u64);
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    /// Raw inputs of every row: `[n, fields + covariates]` (f64, NaN = missing).
    fn inputs(&self, windows: &RecordBatch) -> Result<Tensor> {
        let n = windows.num_rows() as i64;
        let mut cols = Vec::with_capacity(self.n_fields + self.n_cov);
        let first_cov = win::FIRST_AGG + self.n_fields;
        if windows.num_columns() != first_cov + self.n_cov {
            return Err(Error::Model(format!(
                "windows batch has {} columns, the model expects {} (features {:?})",
                windows.num_columns(),
                first_cov + self.n_cov,
                self.spec.features
            )));
        }
        for j in win::FIRST_AGG..first_cov + self.n_cov {
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
        slot_ids: &[i64],
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
        let y = self.store.step(&self.net, slot_ids, slots, &input);
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
        // The model's forecast is used once a key is warm and only when all
        // of it is finite; otherwise the key's forecast is the baseline and
        // says so (`source = "baseline"`), never a `null` marked `model`.
        let finite = y_model.isfinite().all_dim(2, false).all_dim(1, false);
        let use_model = seen.gt(self.warmup).logical_and(&finite);
        let base_q = base.unsqueeze(1).expand_as(&y_model);
        let y_all = y_model.where_self(&use_model.view([-1, 1, 1]), &base_q);
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

/// The hybrid's view of a windows batch: the target column (the first
/// aggregate) replaced by the smoothing's output for each row, in row order
/// (each key's windows in time order), and `[rows, h]` offsets that
/// `HybridKeys::invert` adds back to the forecast made at each row.
fn hybrid_inputs(
    hk: &mut super::hybrid::HybridKeys,
    windows: &RecordBatch,
    h: usize,
) -> Result<(RecordBatch, Vec<f64>)> {
    let n = windows.num_rows();
    if windows.num_columns() <= win::FIRST_AGG {
        return Err(Error::Model("windows batch has no value column".into()));
    }
    let keys = windows.column(win::KEY).as_string::<i32>();
    let vals = windows.column(win::FIRST_AGG).as_primitive::<Float64Type>();
    let mut inv = vec![0.0f64; n * h];
    let mut z = Vec::with_capacity(n);
    for i in 0..n {
        let y = if vals.is_null(i) {
            f64::NAN
        } else {
            vals.value(i)
        };
        z.push(hk.push(keys.value(i), y, &mut inv[i * h..(i + 1) * h]));
    }
    let mut cols = windows.columns().to_vec();
    cols[win::FIRST_AGG] = Arc::new(arrow::array::Float64Array::from(z));
    let b = RecordBatch::try_new(windows.schema(), cols)
        .map_err(|e| Error::Model(format!("hybrid inputs: {e}")))?;
    Ok((b, inv))
}
