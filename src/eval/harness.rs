//! The batch harness: every series has a forecast origin; a model gets only
//! the values before it (all series at once, so a global model can train
//! on all histories) and returns `horizon` values per series. The leak
//! check (see the `eval` module docs) refuses a model that peeks.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use crate::baselines::Baseline;
use crate::error::Result;

/// A forecaster evaluated over many series at once.
pub trait Model {
    /// Name shown in reports.
    fn name(&self) -> String;
    /// One forecast of `horizon` values per history, in the same order.
    /// `histories[i]` is everything before series `i`'s forecast origin. A
    /// global model may train on all histories; it must be deterministic.
    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>>;
    /// Whether the harness runs the model a second time on perturbed futures
    /// (the leak check). A model that trains for minutes may opt out; the
    /// report then says `leak_checked: false` for it.
    fn leak_check(&self) -> bool {
        true
    }
}

/// Adapter: any [`Baseline`] as a [`Model`] (each series on its own).
pub struct BaselineModel {
    name: String,
    inner: Box<dyn Baseline + Send + Sync>,
}

impl BaselineModel {
    /// Named after the forecaster.
    pub fn new(inner: Box<dyn Baseline + Send + Sync>) -> Self {
        BaselineModel {
            name: inner.name().to_string(),
            inner,
        }
    }
    /// With a report name of its own (e.g. `ses_sa` for a wrapped `ses`).
    pub fn named(name: &str, inner: Box<dyn Baseline + Send + Sync>) -> Self {
        BaselineModel {
            name: name.to_string(),
            inner,
        }
    }
}

impl Model for BaselineModel {
    fn name(&self) -> String {
        self.name.clone()
    }
    /// Series are independent: they are spread over the machine's cores
    /// (series `i` on thread `i mod T`), and since every forecast is a pure
    /// function of its history the output is the sequential one, whatever
    /// `T` (the leak check's bit-identical comparison relies on it).
    fn fit_forecast(&mut self, histories: &[&[f64]], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(histories.len() / 4)
            .max(1);
        let inner = &*self.inner;
        if threads == 1 {
            return Ok(histories
                .iter()
                .map(|h| inner.forecast(h, horizon))
                .collect());
        }
        let parts: Vec<Option<Vec<Vec<f64>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        histories
                            .iter()
                            .skip(t)
                            .step_by(threads)
                            .map(|h| inner.forecast(h, horizon))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().ok()).collect()
        });
        let mut parts = parts
            .into_iter()
            .map(|p| p.map(|v| v.into_iter()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                crate::Error::Eval(format!(
                    "model `{}`: a forecasting thread panicked",
                    self.name
                ))
            })?;
        let mut out = Vec::with_capacity(histories.len());
        for i in 0..histories.len() {
            if let Some(f) = parts[i % threads].next() {
                out.push(f);
            }
        }
        Ok(out)
    }
}

/// One series of a [`Panel`]: `values[..origin]` is the history a model may
/// see, `values[origin..]` the future it is scored on (may be empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub id: String,
    pub values: Vec<f64>,
    pub origin: usize,
}

impl Series {
    pub fn history(&self) -> &[f64] {
        &self.values[..self.origin]
    }
    pub fn future(&self) -> &[f64] {
        &self.values[self.origin..]
    }
}

/// The series under evaluation, shared: clones are handles to the same data.
/// The harness perturbs the futures in place for its second run, so anything
/// holding a handle (legitimately or not) sees the perturbed values then.
#[derive(Debug, Clone)]
pub struct Panel {
    inner: Arc<RwLock<Vec<Series>>>,
}

impl Panel {
    /// A panel of the given series; origins beyond a series' end are clamped.
    pub fn new(mut series: Vec<Series>) -> Self {
        for s in &mut series {
            s.origin = s.origin.min(s.values.len());
        }
        Panel {
            inner: Arc::new(RwLock::new(series)),
        }
    }

    /// Holds out the last `h` values of every series (origin = `len − h`).
    /// Every series needs at least one history value.
    pub fn holdout(data: &[(String, Vec<f64>)], h: usize) -> Result<Self> {
        let mut series = Vec::with_capacity(data.len());
        for (id, v) in data {
            if v.len() <= h {
                bail!(
                    "series `{id}` has {} values: too short to hold out {h} and keep a history",
                    v.len()
                );
            }
            series.push(Series {
                id: id.clone(),
                values: v.clone(),
                origin: v.len() - h,
            });
        }
        Ok(Panel::new(series))
    }

    /// Origin after the last value of every series (forecasting the unknown).
    pub fn at_end(data: &[(String, Vec<f64>)]) -> Self {
        Panel::new(
            data.iter()
                .map(|(id, v)| Series {
                    id: id.clone(),
                    values: v.clone(),
                    origin: v.len(),
                })
                .collect(),
        )
    }

    /// Read access to the series.
    pub fn read(&self) -> RwLockReadGuard<'_, Vec<Series>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Series>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ids(&self) -> Vec<String> {
        self.read().iter().map(|s| s.id.clone()).collect()
    }
}

/// Why the harness refused a model's output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HarnessError {
    /// The model itself failed (e.g. training found no data).
    #[error("model `{model}` failed: {reason}")]
    Failed { model: String, reason: String },
    #[error("model `{model}` returned {got} forecasts for {want} series")]
    Count {
        model: String,
        want: usize,
        got: usize,
    },
    #[error("model `{model}`: series `{id}`: expected {want} forecast values, got {got}")]
    Length {
        model: String,
        id: String,
        want: usize,
        got: usize,
    },
    #[error("model `{model}`: series `{id}`: forecast step {step} is not finite ({value})")]
    NonFinite {
        model: String,
        id: String,
        step: usize,
        value: f64,
    },
    #[error(
        "model `{model}` refused: it read past the forecast origin (its forecast for series `{id}`, step {step}, \
         changed from {before} to {after} when only the values after the origin were perturbed)"
    )]
    Leak {
        model: String,
        id: String,
        step: usize,
        before: f64,
        after: f64,
    },
}

impl From<HarnessError> for crate::Error {
    fn from(e: HarnessError) -> Self {
        crate::Error::Eval(e.to_string())
    }
}

/// A model's accepted forecasts.
#[derive(Debug, Clone)]
pub struct Checked {
    pub model: String,
    /// One forecast per panel series, in panel order.
    pub forecasts: Vec<Vec<f64>>,
    /// Wall time of both runs.
    pub seconds: f64,
    /// Whether the second (perturbed-future) run happened.
    pub leak_checked: bool,
}

/// Restores the true futures when dropped (even if the model panics).
struct Restore<'a> {
    panel: &'a Panel,
    saved: Vec<Vec<f64>>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let mut g = self.panel.write();
        for (s, fut) in g.iter_mut().zip(&self.saved) {
            let o = s.origin;
            s.values[o..].copy_from_slice(fut);
        }
    }
}

/// The perturbation of the `i`-th future value: always differs from `x`.
fn perturb(x: f64, i: usize) -> f64 {
    x + (1.0 + x.abs()) * (0.25 + 0.125 * (i % 5) as f64)
}

fn histories(panel: &Panel) -> Vec<Vec<f64>> {
    panel.read().iter().map(|s| s.history().to_vec()).collect()
}

fn run_once(
    panel: &Panel,
    factory: &mut dyn FnMut() -> Result<Box<dyn Model>>,
    horizon: usize,
) -> Result<(String, Vec<Vec<f64>>), HarnessError> {
    // Fresh copies: the model can reach nothing past the origin through them.
    let hist = histories(panel);
    let refs: Vec<&[f64]> = hist.iter().map(|h| h.as_slice()).collect();
    let mut model = factory().map_err(|e| HarnessError::Failed {
        model: "?".into(),
        reason: e.to_string(),
    })?;
    let name = model.name();
    let out = model
        .fit_forecast(&refs, horizon)
        .map_err(|e| HarnessError::Failed {
            model: name.clone(),
            reason: e.to_string(),
        })?;
    drop(model);
    let ids = panel.ids();
    if out.len() != ids.len() {
        return Err(HarnessError::Count {
            model: name,
            want: ids.len(),
            got: out.len(),
        });
    }
    for (f, id) in out.iter().zip(&ids) {
        if f.len() != horizon {
            return Err(HarnessError::Length {
                model: name,
                id: id.clone(),
                want: horizon,
                got: f.len(),
            });
        }
        if let Some((step, &value)) = f.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(HarnessError::NonFinite {
                model: name,
                id: id.clone(),
                step: step + 1,
                value,
            });
        }
    }
    Ok((name, out))
}

/// Runs a model (built fresh by `factory` for each run) on the panel and
/// checks its output: shape, finiteness, and — when the panel has futures —
/// that perturbing the futures leaves the forecasts bit-identical (see the
/// module docs). Returns the forecasts of the unperturbed run.
pub fn run_checked(
    panel: &Panel,
    factory: &mut dyn FnMut() -> Result<Box<dyn Model>>,
    horizon: usize,
) -> Result<Checked, HarnessError> {
    let started = Instant::now();
    let check = factory()
        .map_err(|e| HarnessError::Failed {
            model: "?".into(),
            reason: e.to_string(),
        })?
        .leak_check();
    let (name, first) = run_once(panel, factory, horizon)?;
    let has_future = panel.read().iter().any(|s| s.origin < s.values.len());
    if !has_future || !check {
        return Ok(Checked {
            model: name,
            forecasts: first,
            seconds: started.elapsed().as_secs_f64(),
            leak_checked: false,
        });
    }
    let second = {
        let saved: Vec<Vec<f64>> = panel.read().iter().map(|s| s.future().to_vec()).collect();
        let _restore = Restore { panel, saved };
        {
            let mut g = panel.write();
            for s in g.iter_mut() {
                let o = s.origin;
                for (i, v) in s.values[o..].iter_mut().enumerate() {
                    *v = perturb(*v, i);
                }
            }
        }
        run_once(panel, factory, horizon)?.1
    };
    let ids = panel.ids();
    for ((a, b), id) in first.iter().zip(&second).zip(&ids) {
        if let Some(step) = a
            .iter()
            .zip(b)
            .position(|(x, y)| x.to_bits() != y.to_bits())
        {
            return Err(HarnessError::Leak {
                model: name,
                id: id.clone(),
                step: step + 1,
                before: a[step],
                after: b[step],
            });
        }
    }
    Ok(Checked {
        model: name,
        forecasts: first,
        seconds: started.elapsed().as_secs_f64(),
        leak_checked: true,
    })
}
