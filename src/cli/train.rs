//! `streamcast train`: train a model from Parquet (events or archived
//! windows), the same code path as the background retrainer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use streamcast::model::registry::{starting_model, Registry};
use streamcast::schema::windows::WINDOW_END_NAME;
use streamcast::source::parquet::{has_column, read_parquet_events};
use streamcast::window::bounded::{closed_windows, End};
use streamcast::window::WindowSpec;
use streamcast::{archive, retrain, train as training, PipelineConfig};

pub fn train(
    pipeline: &Path,
    data: &[PathBuf],
    out: Option<PathBuf>,
    promote: bool,
) -> anyhow::Result<ExitCode> {
    let cfg = PipelineConfig::load(pipeline)?;
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    // Events files go through the pipeline's own window stage first.
    let mut windows = Vec::new();
    for path in data {
        if has_column(path, WINDOW_END_NAME)? {
            windows.push(path.clone());
            continue;
        }
        let (events, rejected) = read_parquet_events(&cfg, std::slice::from_ref(path))?;
        if let Some(first) = rejected.first() {
            eprintln!(
                "{}: {} rows rejected (e.g. {})",
                path.display(),
                rejected.len(),
                first.reason
            );
        }
        let spec = WindowSpec::from_config(&cfg);
        let schema = spec.windows_schema();
        let batches = closed_windows(spec, &events, End::AtNewestEvent);
        let file = tmp
            .path()
            .join(format!("windows-{}.parquet", windows.len()));
        archive::write_windows_file(&batches, schema, &file)?;
        windows.push(file);
    }
    let t = cfg.train.clone();
    let prepared = training::prepare(&windows, &training::prep_spec(&cfg, &t))?;
    eprintln!(
        "{} training samples, {} validation samples from {} keys",
        prepared.train_ends.len(),
        prepared.val_ends.len(),
        prepared.keys.len()
    );
    let registry = Registry::new(out.unwrap_or_else(|| cfg.models_dir()));
    let champion = starting_model(&cfg)?;
    let decision = if promote {
        retrain::challenge(&cfg, &t, &prepared, &champion, &registry)?.0
    } else {
        retrain::train_unpromoted(&cfg, &t, &prepared, &champion, &registry)?
    };
    println!(
        "model {}: validation loss {:.5} (champion {} {:.5}); {}",
        decision.version,
        decision.challenger_val_loss,
        decision.champion_version,
        decision.champion_val_loss,
        decision.reason
    );
    let dir = registry.dir().join(&decision.version);
    // The training report the registry recorded beside the model: how often
    // gradient clipping fired (a sign of exploding gradients when often).
    if let Some(r) = std::fs::read_to_string(dir.join("train_report.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<training::TrainReport>(&text).ok())
    {
        println!(
            "gradient clipping (clip_norm {}): {} of {} steps clipped; largest gradient norm {:.3}",
            t.clip_norm, r.clipped_steps, r.steps, r.max_grad_norm
        );
    }
    if let Some(path) = &t.grad_report {
        println!("gradient decay over lags written to {}", path.display());
    }
    println!("saved in {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
