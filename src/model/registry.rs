//! The model registry of a pipeline: every trained version with its
//! training report and the champion/challenger decision, and which version
//! is the champion.
//!
//! Layout (`retrain.models_dir`, default `.state/models/<pipeline>`):
//! `<version>/model.safetensors`, `<version>/model.json`,
//! `<version>/train_report.json`, `<version>/status.json` (promoted or
//! rejected, with both validation losses), and a `champion` file naming the
//! active version (replaced atomically by rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::artifact::{self, ModelSpec};
use super::network::{device_for, Network};
use crate::config::PipelineConfig;
use crate::error::{Error, Result};

/// What happened to a challenger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub version: String,
    pub promoted: bool,
    #[serde(with = "nan_as_null")]
    pub challenger_val_loss: f64,
    #[serde(with = "nan_as_null")]
    pub champion_val_loss: f64,
    pub champion_version: String,
    pub reason: String,
    /// The live duel of a challenger run in shadow (`retrain.shadow_windows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveDuel>,
}

/// Both models' live accuracy on the same windows, from a shadow run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveDuel {
    /// Forecasts of each model scored (with a seasonal scale).
    pub scored: u64,
    #[serde(with = "nan_as_null")]
    pub challenger_mase: f64,
    #[serde(with = "nan_as_null")]
    pub champion_mase: f64,
    /// Still running: the challenger is in shadow.
    pub running: bool,
}

/// JSON has no NaN: write a non-finite loss as `null`, read `null` as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// The model versions of one pipeline.
pub struct Registry {
    dir: PathBuf,
}

/// One row of `streamcast models list` (and of the API's `/models`).
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub spec: ModelSpec,
    pub status: Option<Decision>,
    pub active: bool,
}

impl Registry {
    pub fn new(dir: PathBuf) -> Self {
        Registry { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn champion_version(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("champion"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    pub fn champion_dir(&self) -> Option<PathBuf> {
        self.champion_version()
            .map(|v| self.dir.join(v))
            .filter(|d| d.join("model.json").exists())
    }

    /// Saves a trained model (artifact, training report) with its decision
    /// under `<dir>/<version>/`; makes it champion if promoted.
    pub fn record(
        &self,
        net: &Network,
        spec: &ModelSpec,
        report: &impl Serialize,
        decision: &Decision,
    ) -> Result<PathBuf> {
        let dir = self.dir.join(&spec.version);
        artifact::save(net, spec, &dir)?;
        write_json(&dir.join("train_report.json"), report)?;
        write_json(&dir.join("status.json"), decision)?;
        if decision.promoted {
            self.set_champion(&decision.version)?;
        }
        Ok(dir)
    }

    /// Rewrites a recorded version's decision (a shadow duel's outcome);
    /// makes it champion if promoted.
    pub fn update_decision(&self, decision: &Decision) -> Result<()> {
        let dir = self.dir.join(&decision.version);
        write_json(&dir.join("status.json"), decision)?;
        if decision.promoted {
            self.set_champion(&decision.version)?;
        }
        Ok(())
    }

    pub fn set_champion(&self, version: &str) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let tmp = self.dir.join("champion.tmp");
        std::fs::write(&tmp, version)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, self.dir.join("champion"))
            .map_err(|e| Error::io("promoting the champion", e))
    }

    /// Every version, newest first.
    pub fn list(&self) -> Result<Vec<VersionInfo>> {
        let mut out = Vec::new();
        if !self.dir.exists() {
            return Ok(out);
        }
        let active = self.champion_version();
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("reading {}", self.dir.display()), e))?;
        for d in rd.flatten() {
            let p = d.path();
            let Ok(text) = std::fs::read_to_string(p.join("model.json")) else {
                continue;
            };
            let Ok(spec) = serde_json::from_str::<ModelSpec>(&text) else {
                continue;
            };
            let status = std::fs::read_to_string(p.join("status.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            out.push(VersionInfo {
                active: active.as_deref() == Some(spec.version.as_str()),
                version: spec.version.clone(),
                spec,
                status,
            });
        }
        out.sort_by(|a, b| b.version.cmp(&a.version));
        Ok(out)
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::json(format!("serializing {}", path.display()), e))?;
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Loads the model a pipeline should start with: `model.artifact` if set,
/// else the registry's champion, else a fresh untrained network.
pub fn starting_model(cfg: &PipelineConfig) -> Result<(Network, ModelSpec)> {
    let device = device_for(cfg.model.device);
    let want = ModelSpec::expected(cfg);
    if let Some(dir) = &cfg.model.artifact {
        return artifact::load(dir, &want, device);
    }
    if let Some(dir) = Registry::new(cfg.models_dir()).champion_dir() {
        // A champion of another pipeline shape (the pipeline file changed)
        // is set aside loudly; a corrupt one is an error: silently serving
        // an untrained network in its place would look like a bad model.
        let spec = artifact::read_spec(&dir)?;
        match spec.mismatch(&want) {
            None => return artifact::load(&dir, &want, device),
            Some(why) => {
                metrics::counter!(crate::telemetry::CHAMPION_SET_ASIDE).increment(1);
                tracing::warn!(champion = %spec.version, why, "the registry's champion does not fit this pipeline; starting untrained")
            }
        }
    }
    let spec = ModelSpec::untrained(cfg);
    Ok((Network::for_spec(&spec, device, spec.seed), spec))
}
