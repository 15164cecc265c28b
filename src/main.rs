//! The `streamcast` command: thin glue over the library.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use streamcast::config::{parse_duration, PipelineConfig};
use streamcast::generate::{self, GenSpec};

#[derive(Parser)]
#[command(
    name = "streamcast",
    version,
    about = "Online per-key forecasting for Kafka streams"
)]
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
    /// Train a model from Parquet (events or archived windows), the same
    /// code path as the background retrainer.
    Train {
        #[arg(long)]
        pipeline: PathBuf,
        /// Parquet files: events (the pipeline's key/time/value columns) or
        /// windows (the archive's schema, with `window_end`).
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<PathBuf>,
        /// Model registry to save into; default the pipeline's models dir.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Make the new model the registry's champion if it beats the current one.
        #[arg(long)]
        promote: bool,
    },
    /// Model versions of a pipeline.
    Models {
        #[command(subcommand)]
        which: ModelsCmd,
    },
    /// Evaluate forecasters offline (M4 Hourly; rolling-origin backtests on streams).
    Eval {
        #[command(subcommand)]
        which: EvalCmd,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// List versions with their validation metrics; `*` marks the active one.
    List {
        #[arg(long)]
        pipeline: PathBuf,
        /// Registry directory; default the pipeline's models dir.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EvalCmd {
    /// M4 Hourly: forecast 48 steps after every series (submission CSV), or
    /// score a holdout of the last values of every series (--holdout).
    M4 {
        /// The M4 training CSV (e.g. ../shared/data/m4/Hourly-train.csv).
        #[arg(long)]
        train: PathBuf,
        /// Forecasts of the first model, as `id,F1,...,FH` (required without --holdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Hold out the last N values of every series and score forecasts of them.
        #[arg(long)]
        holdout: Option<usize>,
        /// Forecast horizon without --holdout.
        #[arg(long, default_value_t = 48)]
        horizon: usize,
        /// Seasonal period (MASE m; seasonal models).
        #[arg(long, default_value_t = 24)]
        season: usize,
        /// Models to run, comma-separated (the first is written to --out).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "naive,snaive,naive2,ses,holt,damped,hw_add,hw_mul,ses_sa,holt_sa,damped_sa"
        )]
        models: Vec<String>,
        /// Also write the holdout table as Markdown here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Pipeline file configuring the recurrent model `rnn`.
        #[arg(long, default_value = "pipelines/m4_hourly.toml")]
        rnn_pipeline: PathBuf,
        /// Networks (seeds) the `rnn` trains and averages.
        #[arg(long, default_value_t = 3)]
        rnn_ensemble: usize,
    },
    /// Rolling-origin backtest on timestamped series windowed by a pipeline.
    Stream {
        #[arg(long)]
        pipeline: PathBuf,
        /// NAB-style CSV files (`timestamp,value`, key = file stem) or events Parquet.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Windows ahead; default the pipeline's model.horizon.
        #[arg(long)]
        horizon: Option<usize>,
        /// At most this many origins per series (spread over its last 20%).
        #[arg(long, default_value_t = 50)]
        origins: usize,
        /// Models to run, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "naive,snaive,naive2,ses,holt,damped,hw_add,ses_sa,damped_sa"
        )]
        models: Vec<String>,
        /// Write one SVG per plotted key here.
        #[arg(long)]
        plot_dir: Option<PathBuf>,
        /// Keys to plot (default: all), comma-separated.
        #[arg(long, value_delimiter = ',')]
        plot_keys: Vec<String>,
        /// Model drawn in the plots (default: the first of --models).
        #[arg(long)]
        plot_model: Option<String>,
        /// Windows shown per plot, ending at the series' end (0 = the whole tail).
        #[arg(long, default_value_t = 336)]
        plot_windows: usize,
        /// Also print H-step MASE per key.
        #[arg(long)]
        per_key: bool,
        /// Also write the tables as Markdown here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
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
        Cmd::Backfill {
            pipeline,
            input,
            output,
        } => {
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
            let start =
                (chrono::Utc::now().timestamp_millis() - (days * day as f64) as i64) / day * day;
            let events = generate::generate(&GenSpec {
                keys,
                points_per_key: points,
                step_ms,
                start_ms: start,
                seed,
            });
            let d = &cfg.decode;
            if let Some(path) = parquet {
                generate::write_parquet(
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
                    streamcast::source::ensure_topics(&cfg).await?;
                    let recs = events.iter().map(|e| {
                        (
                            e.key.clone(),
                            generate::to_json(e, &d.key_field, &d.time_field, &d.value_fields[0]),
                        )
                    });
                    generate::produce(&cfg.source.brokers, &cfg.source.topic, recs).await
                })?;
                println!(
                    "produced {n} events for {keys} keys to {}",
                    cfg.source.topic
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Eval { which } => eval(which),
        Cmd::Train {
            pipeline,
            data,
            out,
            promote,
        } => train_cmd(&pipeline, &data, out, promote),
        Cmd::Models {
            which: ModelsCmd::List { pipeline, dir },
        } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let reg = streamcast::retrain::Registry::new(dir.unwrap_or_else(|| cfg.models_dir()));
            let list = reg.list()?;
            if list.is_empty() {
                println!("no model versions in {}", reg.dir().display());
            } else {
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
                        format!(
                            "{} .. {}",
                            streamcast::sink::rfc3339_ms(a),
                            streamcast::sink::rfc3339_ms(b)
                        )
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
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { pipeline } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            println!(
                "{}",
                toml::to_string_pretty(&cfg).context("printing the pipeline")?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn train_cmd(
    pipeline: &std::path::Path,
    data: &[PathBuf],
    out: Option<PathBuf>,
    promote: bool,
) -> anyhow::Result<ExitCode> {
    use streamcast::{retrain, train, window::WindowSpec};
    let cfg = PipelineConfig::load(pipeline)?;
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    // Events files go through the pipeline's own window stage first.
    let mut windows = Vec::new();
    for path in data {
        let is_windows = parquet_has_column(path, "window_end")?;
        if is_windows {
            windows.push(path.clone());
        } else {
            let (events, rejected) =
                streamcast::source::read_parquet_events(&cfg, std::slice::from_ref(path))?;
            if !rejected.is_empty() {
                eprintln!(
                    "{}: {} rows rejected (e.g. {})",
                    path.display(),
                    rejected.len(),
                    rejected[0].reason
                );
            }
            let w = train::windows_from_events(&cfg, &events);
            let out = tmp
                .path()
                .join(format!("windows-{}.parquet", windows.len()));
            train::write_windows(&w, WindowSpec::from_config(&cfg).windows_schema(), &out)?;
            windows.push(out);
        }
    }
    let t = cfg.train.clone();
    let prepared = train::prepare(&windows, &train::prep_spec(&cfg, &t))?;
    eprintln!(
        "{} training samples, {} validation samples from {} keys",
        prepared.train_ends.len(),
        prepared.val_ends.len(),
        prepared.keys.len()
    );
    let registry = retrain::Registry::new(out.unwrap_or_else(|| cfg.models_dir()));
    let champion = retrain::starting_model(&cfg)?;
    let (decision, _) = if promote {
        retrain::challenge(&cfg, &t, &prepared, &champion, &registry)?
    } else {
        let trained = train::train_prepared(&cfg, &t, &prepared, None)?;
        let champion_val = train::validation_loss(&champion.0, &prepared, &t);
        let mut d = retrain::decide(&trained, champion_val, &champion.1.version);
        d.promoted = false;
        d.reason = format!("not promoted (no --promote): {}", d.reason);
        registry.record(&trained, &d)?;
        (d, None)
    };
    println!(
        "model {}: validation loss {:.5} (champion {} {:.5}); {}",
        decision.version,
        decision.challenger_val_loss,
        decision.champion_version,
        decision.champion_val_loss,
        decision.reason
    );
    println!(
        "saved in {}",
        registry.dir().join(&decision.version).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn parquet_has_column(path: &std::path::Path, name: &str) -> anyhow::Result<bool> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(b.schema().field_with_name(name).is_ok())
}

fn eval(which: EvalCmd) -> anyhow::Result<ExitCode> {
    use streamcast::eval;
    match which {
        EvalCmd::M4 {
            train,
            out,
            holdout,
            horizon,
            season,
            models,
            report,
            rnn_pipeline,
            rnn_ensemble,
        } => {
            let started = std::time::Instant::now();
            let data = eval::read_m4_csv(&train)?;
            eprintln!(
                "read {} series from {} in {:.1}s",
                data.len(),
                train.display(),
                started.elapsed().as_secs_f64()
            );
            let ids: Vec<String> = data.iter().map(|(id, _)| id.clone()).collect();
            match holdout {
                Some(h) => {
                    let (rep, checked) = eval::eval_m4_holdout(
                        &data,
                        &models,
                        season,
                        h,
                        Some(rnn_pipeline.clone()),
                        rnn_ensemble,
                    )?;
                    let md = rep.to_markdown();
                    println!("{md}");
                    if let Some(path) = report {
                        std::fs::write(&path, &md)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                    if let Some(path) = out {
                        eval::write_submission(&path, &ids, &checked[0].forecasts)?;
                        eprintln!(
                            "wrote {}'s forecasts of the holdout to {}",
                            checked[0].model,
                            path.display()
                        );
                    }
                }
                None => {
                    let path = out.context("say where the forecasts go: --out <forecasts.csv> (or score a holdout with --holdout 48)")?;
                    let checked = eval::forecast_m4(
                        &data,
                        &models,
                        season,
                        horizon,
                        Some(rnn_pipeline.clone()),
                        rnn_ensemble,
                    )?;
                    for c in &checked {
                        eprintln!(
                            "{}: {} series forecast in {:.1}s",
                            c.model,
                            c.forecasts.len(),
                            c.seconds
                        );
                    }
                    eval::write_submission(&path, &ids, &checked[0].forecasts)?;
                    println!(
                        "wrote {}'s {horizon}-step forecasts of {} series to {}",
                        checked[0].model,
                        ids.len(),
                        path.display()
                    );
                }
            }
            eprintln!("total {:.1}s", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        EvalCmd::Stream {
            pipeline,
            input,
            horizon,
            origins,
            mut models,
            plot_dir,
            plot_keys,
            plot_model,
            plot_windows,
            per_key,
            report,
        } => {
            let started = std::time::Instant::now();
            let cfg = PipelineConfig::load(&pipeline)?;
            let events = eval::read_stream_inputs(&cfg, &input)?;
            let series = eval::window_series(&cfg, &events)?;
            let season = cfg.model.season_windows as usize;
            let horizon = horizon.unwrap_or(cfg.model.horizon as usize);
            eprintln!(
                "{} events -> {} series of {} windows ({} filled) in {:.1}s",
                events.num_rows(),
                series.len(),
                series.iter().map(|s| s.values.len()).sum::<usize>(),
                series.iter().map(|s| s.filled).sum::<usize>(),
                started.elapsed().as_secs_f64()
            );
            let plot_model =
                plot_model.unwrap_or_else(|| models.first().cloned().unwrap_or_default());
            if plot_dir.is_some() {
                for m in [plot_model.as_str(), "snaive"] {
                    if !models.iter().any(|x| x == m) {
                        models.push(m.to_string());
                    }
                }
            }
            let mut ms = Vec::with_capacity(models.len());
            for name in &models {
                if name == "rnn" {
                    // Trained on the first 80% of every series: the origins
                    // are all in the last 20% (tail_fraction below).
                    let train: Vec<(Vec<i64>, Vec<f64>)> = series
                        .iter()
                        .map(|s| (s.start_ms.clone(), s.values.clone()))
                        .collect();
                    ms.push(Box::new(streamcast::eval_rnn::OnlineRnn::new(
                        cfg.clone(),
                        train,
                        0.8,
                    )) as Box<dyn eval::StreamModel>);
                    continue;
                }
                let m = eval::stream_model_by_name(name, season).with_context(|| {
                    format!(
                        "unknown model `{name}` (known: rnn, {})",
                        eval::BASELINE_NAMES.join(", ")
                    )
                })?;
                ms.push(m);
            }
            let opts = eval::StreamOptions {
                horizon,
                season,
                max_origins: origins,
                tail_fraction: 0.2,
            };
            let rep = eval::backtest_stream(&series, &mut ms, &opts)?;
            let mut md = rep.to_markdown();
            if per_key {
                md.push('\n');
                md.push_str(&rep.per_key_markdown());
            }
            println!("{md}");
            if let Some(path) = report {
                std::fs::write(&path, &md)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(dir) = plot_dir {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let agg = format!("{:?}", cfg.window.aggregation).to_lowercase();
                let size = humantime_ms(cfg.size_ms());
                let spec = eval::PlotSpec {
                    model: plot_model.clone(),
                    baseline: "snaive".into(),
                    season,
                    last_windows: plot_windows,
                    y_desc: format!("{agg} of {} per {size} window", cfg.decode.value_fields[0]),
                };
                for (s, k) in series
                    .iter()
                    .filter_map(|s| rep.keys.iter().find(|k| k.key == s.key).map(|k| (s, k)))
                {
                    if !plot_keys.is_empty() && !plot_keys.contains(&s.key) {
                        continue;
                    }
                    let path = dir.join(format!("{}.svg", s.key.replace(['/', '\\'], "_")));
                    eval::plot_key(s, k, &spec, &path)?;
                    eprintln!("plotted {}", path.display());
                }
            }
            eprintln!("total {:.1}s", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// "30m", "1h", "1d", "90s": a window size for labels.
fn humantime_ms(ms: i64) -> String {
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= len && ms % len == 0 {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}
