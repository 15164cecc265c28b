//! The `streamcast` command: thin glue over the library.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use streamcast::config::{parse_duration, PipelineConfig};
use streamcast::generate::{self, GenSpec};

#[derive(Parser)]
#[command(name = "streamcast", version, about = "Online per-key forecasting for Kafka streams")]
struct Cli {
    /// Log as JSON lines (for log shippers) instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: consume events, forecast every closed window, publish.
    Run {
        /// The pipeline file (pipelines/<name>.toml).
        pipeline: PathBuf,
        /// Stop gracefully after no input for this long (e.g. "20s").
        #[arg(long, value_parser = parse_duration)]
        exit_when_idle: Option<Duration>,
        /// Print forecasts as they are acknowledged.
        #[arg(long)]
        print_forecasts: bool,
    },
    /// The same stages over Parquet: events in, forecasts out.
    Backfill {
        #[arg(long)]
        pipeline: PathBuf,
        /// Parquet files with the pipeline's key, time and value columns.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Forecasts Parquet file to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Generate realistic multi-key seasonal events (for demos and benchmarks).
    Generate {
        /// Takes field names and the input topic from this pipeline.
        #[arg(long)]
        pipeline: PathBuf,
        #[arg(long, default_value_t = 12)]
        keys: usize,
        /// Days of history per key.
        #[arg(long, default_value_t = 7.0)]
        days: f64,
        /// Interval between a key's events.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        step: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Produce the events to the pipeline's input topic.
        #[arg(long)]
        to_kafka: bool,
        /// Write the events to this Parquet file.
        #[arg(long)]
        parquet: Option<PathBuf>,
    },
    /// Validate a pipeline file and print it with defaults filled in.
    Check { pipeline: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    streamcast::telemetry::init_logging(cli.log_json);
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Run {
            pipeline,
            exit_when_idle,
            print_forecasts,
        } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let opts = streamcast::run::RunOptions {
                exit_when_idle,
                print_forecasts,
            };
            rt.block_on(streamcast::run::run(cfg, opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backfill { pipeline, input, output } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let r = streamcast::backfill::backfill(&cfg, &input, &output)?;
            println!(
                "backfill: {} events, {} windows, {} forecasts ({} model, {} baseline), {} dead letters in {:.1}s -> {}",
                r.totals.events,
                r.totals.windows,
                r.totals.forecasts_from_model + r.totals.forecasts_from_baseline,
                r.totals.forecasts_from_model,
                r.totals.forecasts_from_baseline,
                r.totals.dead_letters,
                r.seconds,
                r.output.display()
            );
            if let Some(d) = r.dead_letter_file {
                println!("dead letters: {}", d.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Generate {
            pipeline,
            keys,
            days,
            step,
            seed,
            to_kafka,
            parquet,
        } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            if !to_kafka && parquet.is_none() {
                anyhow::bail!("say where the events go: --to-kafka and/or --parquet <file>");
            }
            let step_ms = step.as_millis().max(1) as i64;
            let day = 86_400_000;
            let points = ((days * day as f64) / step_ms as f64).round() as usize;
            // Start `days` before now, on a day boundary, so the data ends about now.
            let start = (chrono::Utc::now().timestamp_millis() - (days * day as f64) as i64) / day * day;
            let events = generate::generate(&GenSpec {
                keys,
                points_per_key: points,
                step_ms,
                start_ms: start,
                seed,
            });
            let d = &cfg.decode;
            if let Some(path) = parquet {
                generate::write_parquet(&events, &path, &d.key_field, &d.time_field, &d.value_fields[0])?;
                println!("wrote {} events for {} keys to {}", events.len(), keys, path.display());
            }
            if to_kafka {
                let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
                let n = rt.block_on(async {
                    streamcast::source::ensure_topics(&cfg).await?;
                    let recs = events
                        .iter()
                        .map(|e| (e.key.clone(), generate::to_json(e, &d.key_field, &d.time_field, &d.value_fields[0])));
                    generate::produce(&cfg.source.brokers, &cfg.source.topic, recs).await
                })?;
                println!("produced {n} events for {keys} keys to {}", cfg.source.topic);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { pipeline } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            println!("{}", toml::to_string_pretty(&cfg).context("printing the pipeline")?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
