//! Model artifacts: `model.safetensors` (weights) + `model.json` (metadata).
//!
//! No pickle and no code: an artifact is tensors and a JSON document. The
//! JSON names the architecture, the input feature spec, how inputs are
//! scaled, the training data range, validation metrics and a version.
//! Loading checks the feature spec against the pipeline's and refuses a
//! mismatch with a message naming both.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::{feature_names, CellShape, Network};
use crate::config::{Head, HorizonDecoder, PipelineConfig};
use crate::error::{Error, Result};

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
    /// How inputs are scaled: `"online_per_key"` (Welford per key and field).
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
        let shape = CellShape {
            kind: cfg.model.cell,
            input: features.len() as i64,
            hidden: cfg.model.hidden,
            layers: cfg.model.layers,
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
            scaler: "online_per_key".into(),
            trained_on: None,
            metrics: BTreeMap::new(),
            seed: cfg.model.seed,
        }
    }

    /// What a pipeline requires of a model it loads (the fields that must match).
    pub fn expected(cfg: &PipelineConfig) -> Self {
        Self::untrained(cfg)
    }

    /// Network outputs: `horizon` per quantile (or just `horizon`).
    pub fn outputs(&self) -> i64 {
        self.horizon * self.quantiles.len().max(1) as i64
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

/// Writes `dir/model.safetensors` and `dir/model.json`.
pub fn save(net: &Network, spec: &ModelSpec, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    net.vs.save(dir.join("model.safetensors"))?;
    let json = serde_json::to_string_pretty(spec)
        .map_err(|e| Error::json(format!("serializing the model spec {}", spec.version), e))?;
    std::fs::write(dir.join("model.json"), json)
        .map_err(|e| Error::io(format!("writing {}/model.json", dir.display()), e))
}

/// Loads an artifact, refusing it when its features differ from `features`.
pub fn load(dir: &Path, want: &ModelSpec, device: Device) -> Result<(Network, ModelSpec)> {
    let meta = dir.join("model.json");
    let text = std::fs::read_to_string(&meta)
        .map_err(|e| Error::io(format!("reading {}", meta.display()), e))?;
    let spec: ModelSpec = serde_json::from_str(&text)
        .map_err(|e| Error::Model(format!("{}: invalid model metadata: {e}", meta.display())))?;
    if let Some(why) = spec.mismatch(want) {
        return Err(Error::Model(format!(
            "{}: refusing this model: {why}; retrain it for this pipeline or change the pipeline",
            meta.display()
        )));
    }
    let mut net = Network::for_spec(&spec, device, spec.seed);
    net.vs.load(dir.join("model.safetensors")).map_err(|e| {
        Error::Model(format!(
            "{}: cannot load weights: {e}",
            dir.join("model.safetensors").display()
        ))
    })?;
    Ok((net, spec))
}
