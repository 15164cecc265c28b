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

use super::{CellShape, Network};
use crate::error::{Error, Result};

/// Everything about a model except its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Unique, shown in every forecast record.
    pub version: String,
    pub shape: CellShape,
    pub horizon: i64,
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
    pub fn untrained(shape: CellShape, horizon: i64, features: Vec<String>, seed: i64) -> Self {
        ModelSpec {
            version: format!("untrained-{:?}-h{}-s{}", shape.kind, shape.hidden, seed).to_lowercase(),
            shape,
            horizon,
            features,
            scaler: "online_per_key".into(),
            trained_on: None,
            metrics: BTreeMap::new(),
            seed,
        }
    }
}

/// Writes `dir/model.safetensors` and `dir/model.json`.
pub fn save(net: &Network, spec: &ModelSpec, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    net.vs.save(dir.join("model.safetensors"))?;
    let json = serde_json::to_string_pretty(spec).map_err(|e| Error::Model(e.to_string()))?;
    std::fs::write(dir.join("model.json"), json).map_err(|e| Error::io(format!("writing {}/model.json", dir.display()), e))
}

/// Loads an artifact, refusing it when its features differ from `features`.
pub fn load(dir: &Path, features: &[String], device: Device) -> Result<(Network, ModelSpec)> {
    let meta = dir.join("model.json");
    let text = std::fs::read_to_string(&meta).map_err(|e| Error::io(format!("reading {}", meta.display()), e))?;
    let spec: ModelSpec =
        serde_json::from_str(&text).map_err(|e| Error::Model(format!("{}: invalid model metadata: {e}", meta.display())))?;
    if spec.features != features {
        return Err(Error::Model(format!(
            "{}: the model was trained on features {:?} but this pipeline provides {:?}; \
             retrain it for this pipeline or change the pipeline's value fields/covariates",
            meta.display(),
            spec.features,
            features
        )));
    }
    if spec.shape.input != features.len() as i64 {
        return Err(Error::Model(format!("{}: input size {} does not match {} features", meta.display(), spec.shape.input, features.len())));
    }
    let mut net = Network::new(spec.shape, spec.horizon, device, spec.seed);
    net.vs
        .load(dir.join("model.safetensors"))
        .map_err(|e| Error::Model(format!("{}: cannot load weights: {e}", dir.join("model.safetensors").display())))?;
    Ok((net, spec))
}
