//! `streamcast check`: validate a pipeline file and print it with defaults
//! (`${ENV}` references resolved, secret values shown as `***`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use streamcast::PipelineConfig;

pub fn check(pipeline: &Path) -> anyhow::Result<ExitCode> {
    let cfg = PipelineConfig::load(pipeline)?;
    println!(
        "{}",
        toml::to_string_pretty(&cfg.redacted()).context("printing the pipeline")?
    );
    Ok(ExitCode::SUCCESS)
}
