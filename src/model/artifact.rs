//! Model artifacts: `model.safetensors` (weights) + `model.json` (metadata).
//!
//! No pickle and no code: an artifact is tensors and a JSON document. The
//! JSON names the architecture, the input feature spec, how inputs are
//! scaled, the training data range, validation metrics and a version.
//! Loading checks the feature spec against the pipeline's and refuses a
//! mismatch with a message naming both.
//!
//! Invariant: nothing in `model.json` is trusted before it is checked. The
//! shapes are bounded before any tensor is allocated (a hand-edited
//! `hidden = 1e9` would otherwise allocate wildly or abort inside
//! libtorch), and the weights file must match the SHA-256 that `save`
//! wrote beside it (`weights_sha256`), so a truncated or corrupted file is a
//! clear error naming it, never a half-loaded network. Artifacts written
//! before checksums existed load with a warning.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::{feature_names, CellShape, Network};
use crate::config::{
    CellKind, Connections, Head, HorizonDecoder, ModelConfig, OutputRecurrence, PipelineConfig,
    ScalerKind,
};
use crate::error::{Error, Result};

/// Bounds on a loaded model's shapes (far above anything trained here).
const MAX_HIDDEN: i64 = 8192;
const MAX_LAYERS: i64 = 32;
const MAX_INPUTS: i64 = 4096;
const MAX_HORIZON: i64 = 10_000;
const MAX_WINDOW: i64 = 4096;
const MAX_STATE: i64 = 1 << 20;

/// Everything about a model except its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Unique, shown in every forecast record.
    pub version: String,
    pub shape: CellShape,
    pub horizon: i64,
    /// Quantiles forecast besides the point (empty = none).
    #[serde(default)]
    pub quantiles: Vec<f64>,
    /// What the head predicts.
    pub head: Head,
    /// How the horizon is produced.
    #[serde(default)]
    pub decoder: HorizonDecoder,
    /// Season length in windows (the residual head's seasonal-naive base).
    pub season: i64,
    /// Input features in order (see `model::feature_names`).
    pub features: Vec<String>,
    /// How inputs are scaled (see [`Scaler::name`]): `"online_per_key"`
    /// (expanding Welford per key and field) or
    /// `"ewm_per_key:half_life=<windows>"` (exponentially weighted).
    pub scaler: String,
    /// Event-time range of the training data (ms since epoch), if trained.
    pub trained_on: Option<(i64, i64)>,
    /// Validation metrics by name (e.g. `"val_mse"`).
    pub metrics: BTreeMap<String, f64>,
    pub seed: i64,
}

impl ModelSpec {
    /// A fresh, untrained model for a pipeline.
    pub fn untrained(cfg: &PipelineConfig) -> Self {
        let features = feature_names(cfg);
        let attends = cfg.model.cell == CellKind::Transformer || cfg.model.attention;
        let shape = CellShape {
            kind: cfg.model.cell,
            input: features.len() as i64,
            hidden: cfg.model.hidden,
            layers: cfg.model.layers,
            window: if attends {
                cfg.model.attention_window as i64
            } else {
                0
            },
            heads: if cfg.model.cell == CellKind::Transformer {
                cfg.model.attention_heads
            } else {
                0
            },
            attention: cfg.model.attention && cfg.model.cell != CellKind::Transformer,
            output_recurrence: cfg.model.output_recurrence,
            connections: cfg.model.connections,
        };
        ModelSpec {
            version: format!(
                "untrained-{:?}-h{}-s{}",
                shape.kind, shape.hidden, cfg.model.seed
            )
            .to_lowercase(),
            shape,
            horizon: cfg.model.horizon,
            quantiles: cfg.model.quantiles.clone(),
            head: cfg.model.head,
            decoder: cfg.model.decoder,
            season: cfg.model.season_windows as i64,
            features,
            scaler: Scaler::of_config(&cfg.model).name(),
            trained_on: None,
            metrics: BTreeMap::new(),
            seed: cfg.model.seed,
        }
    }

    /// What a pipeline requires of a model it loads (the fields that must match).
    pub fn expected(cfg: &PipelineConfig) -> Self {
        Self::untrained(cfg)
    }

    /// The scaler recorded in the spec; None if it names none (refused by
    /// [`Self::out_of_bounds`]).
    pub fn scaler_kind(&self) -> Option<Scaler> {
        Scaler::parse(&self.scaler)
    }

    /// Network outputs: `horizon` per quantile (or just `horizon`).
    pub fn outputs(&self) -> i64 {
        self.horizon * self.quantiles.len().max(1) as i64
    }

    /// Why these shapes cannot be a model at all, if they cannot: checked
    /// before anything is allocated for them.
    pub fn out_of_bounds(&self) -> Option<String> {
        let CellShape {
            input,
            hidden,
            layers,
            window,
            heads,
            kind,
            attention,
            output_recurrence,
            connections,
        } = self.shape;
        let recurrent = kind != CellKind::Transformer;
        // The options the network's shape depends on, together.
        let wiring_ok = match (output_recurrence, connections) {
            (OutputRecurrence::Output, _) if input < 2 => false,
            (OutputRecurrence::Output, _)
                if self.features.last().map(String::as_str) != Some(super::PREV_OUTPUT) =>
            {
                false
            }
            (_, Connections::None) => true,
            (_, Connections::Skip) => recurrent,
            (_, Connections::Dense) => recurrent,
        };
        let attends = kind == CellKind::Transformer || attention;
        // Floats of attention state per key (see `model::attention`): the
        // store allocates it for every slot, so it is bounded too.
        let state = if kind == CellKind::Transformer {
            window
                .saturating_mul(self.shape.cell_input().saturating_add(1))
                .saturating_add(
                    (layers - 1)
                        .max(0)
                        .saturating_mul(window)
                        .saturating_mul(hidden),
                )
        } else {
            // What temporal attention keeps per step: the top width (every
            // layer's state with dense connections).
            let top = match connections {
                Connections::Dense => layers.max(0).saturating_mul(hidden),
                _ => hidden,
            };
            window.saturating_mul(top.saturating_add(1))
        };
        let checks: [(bool, String); 11] = [
            (
                self.scaler_kind().is_some(),
                format!(
                    "scaler = {:?}, expected \"online_per_key\" or \"ewm_per_key:half_life=<windows >= 1>\"",
                    self.scaler
                ),
            ),
            (
                wiring_ok,
                format!(
                    "output_recurrence = {output_recurrence:?} with connections = {connections:?}: output-to-output needs a trailing {} feature; skip and dense need a recurrent cell",
                    super::PREV_OUTPUT
                ),
            ),
            (
                state <= MAX_STATE,
                format!("attention state of {state} floats per key, expected at most {MAX_STATE}"),
            ),
            (
                if attends {
                    (1..=MAX_WINDOW).contains(&window)
                } else {
                    window == 0
                },
                format!("window = {window}, expected 1..={MAX_WINDOW} with attention, else 0"),
            ),
            (
                if kind == CellKind::Transformer {
                    heads >= 1 && hidden % heads == 0
                } else {
                    heads == 0
                },
                format!(
                    "heads = {heads}, expected a divisor of hidden {hidden} for the transformer, else 0"
                ),
            ),
            (
                (1..=MAX_HIDDEN).contains(&hidden),
                format!("hidden = {hidden}, expected 1..={MAX_HIDDEN}"),
            ),
            (
                (1..=MAX_LAYERS).contains(&layers),
                format!("layers = {layers}, expected 1..={MAX_LAYERS}"),
            ),
            (
                (1..=MAX_INPUTS).contains(&input),
                format!("input = {input}, expected 1..={MAX_INPUTS}"),
            ),
            (
                (1..=MAX_HORIZON).contains(&self.horizon),
                format!("horizon = {}, expected 1..={MAX_HORIZON}", self.horizon),
            ),
            (
                self.season >= 1 && self.season <= MAX_HORIZON * 100,
                format!("season = {}, expected at least 1", self.season),
            ),
            (
                self.quantiles.len() <= 99 && self.quantiles.iter().all(|q| *q > 0.0 && *q < 1.0),
                format!(
                    "quantiles = {:?}, expected at most 99 in (0, 1)",
                    self.quantiles
                ),
            ),
        ];
        checks.into_iter().find(|(ok, _)| !ok).map(|(_, why)| why)
    }

    /// Why `self` cannot serve where `want` is expected, if it cannot.
    pub fn mismatch(&self, want: &ModelSpec) -> Option<String> {
        if self.features != want.features {
            return Some(format!(
                "the model was trained on features {:?} but this pipeline provides {:?}",
                self.features, want.features
            ));
        }
        if self.quantiles != want.quantiles {
            return Some(format!(
                "the model forecasts quantiles {:?}, the pipeline wants {:?}",
                self.quantiles, want.quantiles
            ));
        }
        if self.decoder != want.decoder {
            return Some(format!(
                "the model's decoder is {:?}, the pipeline's {:?}",
                self.decoder, want.decoder
            ));
        }
        if self.scaler_kind() != want.scaler_kind() {
            return Some(format!(
                "the model was trained with the scaler {:?}, the pipeline's is {:?} (model.scaler, model.scaler_half_life)",
                self.scaler, want.scaler
            ));
        }
        if self.horizon != want.horizon {
            return Some(format!(
                "the model forecasts {} windows ahead, the pipeline wants {}",
                self.horizon, want.horizon
            ));
        }
        if self.head == Head::Residual && self.season != want.season {
            return Some(format!(
                "the model's season is {} windows, the pipeline's {}",
                self.season, want.season
            ));
        }
        if self.shape.input != self.features.len() as i64 {
            return Some(format!(
                "input size {} does not match {} features",
                self.shape.input,
                self.features.len()
            ));
        }
        None
    }
}

/// The per-key scaler of a model: how the forecast stage scales each key's
/// values before the network, and how training prepares them
/// (`train::prep`). A model is only served with the scaler it was trained
/// with ([`ModelSpec::mismatch`], `ForecastStage::swap`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scaler {
    /// Welford mean and variance over the key's whole history.
    Expanding,
    /// Exponentially weighted mean and variance: every present value
    /// multiplies the weight of the older ones by [`Self::decay`].
    Ewm { half_life: f64 },
}

impl Scaler {
    /// What `expanding` was always called in `model.json`.
    const EXPANDING: &'static str = "online_per_key";
    const EWM_PREFIX: &'static str = "ewm_per_key:half_life=";

    pub fn of_config(m: &ModelConfig) -> Self {
        match m.scaler {
            ScalerKind::Expanding => Scaler::Expanding,
            ScalerKind::Ewm => Scaler::Ewm {
                half_life: m.scaler_half_life,
            },
        }
    }

    /// The name recorded in `ModelSpec::scaler`. The half-life is written
    /// with `{}` (shortest round-trip form), so [`Self::parse`] gives back
    /// the same `f64` and hence the same decay bit for bit.
    pub fn name(&self) -> String {
        match self {
            Scaler::Expanding => Self::EXPANDING.to_string(),
            Scaler::Ewm { half_life } => format!("{}{half_life}", Self::EWM_PREFIX),
        }
    }

    /// The scaler a name gives (None: unknown, or a half-life that is not
    /// a finite number of windows >= 1).
    pub fn parse(name: &str) -> Option<Self> {
        if name == Self::EXPANDING {
            return Some(Scaler::Expanding);
        }
        let hl: f64 = name.strip_prefix(Self::EWM_PREFIX)?.parse().ok()?;
        (hl.is_finite() && hl >= 1.0).then_some(Scaler::Ewm { half_life: hl })
    }

    /// The factor a present value multiplies the older weight (count) and
    /// M2 by: `0.5^(1 / half_life)`; None for the expanding scaler (no
    /// decay at all, not a decay of 1, so its arithmetic stays the
    /// historical one). Training and the live store both take it from here.
    pub fn decay(&self) -> Option<f64> {
        match self {
            Scaler::Expanding => None,
            Scaler::Ewm { half_life } => Some(0.5f64.powf(1.0 / half_life)),
        }
    }
}

/// `model.json`: the spec and the checksum of the weights beside it.
#[derive(Serialize, Deserialize)]
struct Document {
    #[serde(flatten)]
    spec: ModelSpec,
    /// SHA-256 of `model.safetensors` (hex); absent in older artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weights_sha256: Option<String>,
}

const WEIGHTS: &str = "model.safetensors";
const META: &str = "model.json";

/// Writes `dir/model.safetensors` and `dir/model.json` (with the weights'
/// checksum).
pub fn save(net: &Network, spec: &ModelSpec, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    net.vs.save(dir.join(WEIGHTS))?;
    let doc = Document {
        spec: spec.clone(),
        weights_sha256: Some(sha256_of(&dir.join(WEIGHTS))?),
    };
    let json = serde_json::to_string_pretty(&doc)
        .map_err(|e| Error::json(format!("serializing the model spec {}", spec.version), e))?;
    std::fs::write(dir.join(META), json)
        .map_err(|e| Error::io(format!("writing {}/{META}", dir.display()), e))
}

/// Reads and checks `dir/model.json` (bounded shapes) without touching the
/// weights. `Ok` says nothing about whether it fits a pipeline (see
/// [`ModelSpec::mismatch`]).
pub fn read_spec(dir: &Path) -> Result<ModelSpec> {
    Ok(read_document(dir)?.spec)
}

fn read_document(dir: &Path) -> Result<Document> {
    let meta = dir.join(META);
    let text = std::fs::read_to_string(&meta)
        .map_err(|e| Error::io(format!("reading {}", meta.display()), e))?;
    let doc: Document = serde_json::from_str(&text)
        .map_err(|e| Error::Model(format!("{}: invalid model metadata: {e}", meta.display())))?;
    if let Some(why) = doc.spec.out_of_bounds() {
        return Err(Error::Model(format!(
            "{}: invalid model metadata: {why}",
            meta.display()
        )));
    }
    Ok(doc)
}

/// Loads an artifact, refusing it when it does not fit `want` (features,
/// horizon, ...) or its weights do not match their checksum.
pub fn load(dir: &Path, want: &ModelSpec, device: Device) -> Result<(Network, ModelSpec)> {
    let doc = read_document(dir)?;
    let spec = doc.spec;
    if let Some(why) = spec.mismatch(want) {
        return Err(Error::Model(format!(
            "{}: refusing this model: {why}; retrain it for this pipeline or change the pipeline",
            dir.join(META).display()
        )));
    }
    let weights = dir.join(WEIGHTS);
    match doc.weights_sha256 {
        Some(want_sum) => {
            let got = sha256_of(&weights)?;
            if !got.eq_ignore_ascii_case(&want_sum) {
                return Err(Error::Model(format!(
                    "{}: the weights are corrupt: SHA-256 {got}, but {META} says {want_sum}",
                    weights.display()
                )));
            }
        }
        None => tracing::warn!(
            artifact = %dir.display(),
            "model.json has no weights_sha256 (written before checksums): loading unverified"
        ),
    }
    let mut net = Network::for_spec(&spec, device, spec.seed);
    net.vs
        .load(&weights)
        .map_err(|e| Error::Model(format!("{}: cannot load weights: {e}", weights.display())))?;
    Ok((net, spec))
}

fn sha256_of(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
