//! `streamcast models list`: the registry's versions as a table.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use streamcast::model::Registry;
use streamcast::time::rfc3339_ms;
use streamcast::PipelineConfig;

pub fn list(pipeline: &Path, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let cfg = PipelineConfig::load(pipeline)?;
    let reg = Registry::new(dir.unwrap_or_else(|| cfg.models_dir()));
    let list = reg.list()?;
    if list.is_empty() {
        println!("no model versions in {}", reg.dir().display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "  {:<40} {:>10} {:>10}  {:<9} {:<17} trained on",
        "version", "val_loss", "baseline", "status", "live MASE (vs ch.)"
    );
    for v in list {
        let metric = |k: &str| {
            v.spec
                .metrics
                .get(k)
                .map_or("-".to_string(), |x| format!("{x:.5}"))
        };
        let status = match &v.status {
            Some(d) if d.live.as_ref().is_some_and(|l| l.running) => "shadow",
            Some(d) if d.promoted => "promoted",
            Some(_) => "rejected",
            None => "-",
        };
        // A shadow duel's outcome: the challenger's live MASE against the
        // champion's on the same windows.
        let live = v
            .status
            .as_ref()
            .and_then(|d| d.live.as_ref())
            .filter(|l| !l.running)
            .map_or("-".to_string(), |l| {
                format!("{:.3} vs {:.3}", l.challenger_mase, l.champion_mase)
            });
        let range = v.spec.trained_on.map_or("-".to_string(), |(a, b)| {
            format!("{} .. {}", rfc3339_ms(a), rfc3339_ms(b))
        });
        println!(
            "{} {:<40} {:>10} {:>10}  {:<9} {:<17} {}",
            if v.active { "*" } else { " " },
            v.version,
            metric("val_loss"),
            metric("baseline_val_loss"),
            status,
            live,
            range
        );
    }
    Ok(ExitCode::SUCCESS)
}
