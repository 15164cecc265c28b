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
        "  {:<40} {:>10} {:>10}  {:<9} trained on",
        "version", "val_loss", "baseline", "status"
    );
    for v in list {
        let metric = |k: &str| {
            v.spec
                .metrics
                .get(k)
                .map_or("-".to_string(), |x| format!("{x:.5}"))
        };
        let status = match &v.status {
            Some(d) if d.promoted => "promoted",
            Some(_) => "rejected",
            None => "-",
        };
        let range = v.spec.trained_on.map_or("-".to_string(), |(a, b)| {
            format!("{} .. {}", rfc3339_ms(a), rfc3339_ms(b))
        });
        println!(
            "{} {:<40} {:>10} {:>10}  {:<9} {}",
            if v.active { "*" } else { " " },
            v.version,
            metric("val_loss"),
            metric("baseline_val_loss"),
            status,
            range
        );
    }
    Ok(ExitCode::SUCCESS)
}
