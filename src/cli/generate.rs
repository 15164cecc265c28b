//! `streamcast generate`: realistic seasonal multi-key events to Kafka
//! and/or Parquet (demos, quickstart, benchmarks).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use streamcast::source::generator::{self, GenSpec};
use streamcast::PipelineConfig;

pub fn generate(
    pipeline: &Path,
    keys: usize,
    days: f64,
    step: Duration,
    seed: u64,
    to_kafka: bool,
    parquet: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let cfg = PipelineConfig::load(pipeline)?;
    if !to_kafka && parquet.is_none() {
        anyhow::bail!("say where the events go: --to-kafka and/or --parquet <file>");
    }
    let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX);
    let spec = GenSpec::ending_at(streamcast::time::now_ms(), keys, days, step_ms, seed);
    let events = generator::generate(&spec);
    let d = &cfg.decode;
    if let Some(path) = parquet {
        generator::write_parquet(
            &events,
            &path,
            &d.key_field,
            &d.time_field,
            &d.value_fields[0],
        )?;
        println!(
            "wrote {} events for {} keys to {}",
            events.len(),
            keys,
            path.display()
        );
    }
    if to_kafka {
        let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
        let n = rt.block_on(async {
            streamcast::broker::ensure_topics(&cfg).await?;
            let recs = events.iter().map(|e| {
                (
                    e.key.clone(),
                    generator::to_json(e, &d.key_field, &d.time_field, &d.value_fields[0]),
                )
            });
            streamcast::broker::produce(&cfg, &cfg.source.topic, recs).await
        })?;
        println!(
            "produced {n} events for {keys} keys to {}",
            cfg.source.topic
        );
    }
    Ok(ExitCode::SUCCESS)
}
