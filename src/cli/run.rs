//! `streamcast run`: the streaming job.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use streamcast::pipeline::{self, RunOptions};
use streamcast::PipelineConfig;

pub fn run(
    pipeline: &Path,
    exit_when_idle: Option<Duration>,
    print_forecasts: bool,
    instance: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut cfg = PipelineConfig::load(pipeline)?;
    if instance.is_some() {
        cfg.state.instance = instance;
    }
    // Two workers: the consumer, sink and committer tasks only move bytes;
    // the compute, archive and retrain threads are plain threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let opts = RunOptions {
        exit_when_idle,
        print_forecasts,
    };
    let result = rt.block_on(pipeline::run(cfg, opts));
    // A shutdown that timed out leaves tasks stuck on an absent broker:
    // do not wait for them (the next start redoes their work).
    rt.shutdown_timeout(Duration::from_secs(2));
    result?;
    Ok(ExitCode::SUCCESS)
}
