//! The command line: clap types, one function per subcommand (its own
//! file), and what each prints. Library logic stays in the library; this
//! room parses, calls and reports.

mod backfill;
mod check;
#[cfg(feature = "eval")]
mod eval;
mod generate;
mod models;
mod run;
mod train;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "streamcast",
    version,
    about = "Online per-key forecasting for Kafka streams"
)]
pub struct Cli {
    /// Log as JSON lines (for log shippers) instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run a pipeline: consume events, forecast every closed window, publish.
    Run {
        /// The pipeline file (pipelines/<name>.toml).
        pipeline: PathBuf,
        /// Stop gracefully after no input for this long (e.g. "20s").
        #[arg(long, value_parser = streamcast::time::parse_duration)]
        exit_when_idle: Option<Duration>,
        /// Print forecasts as they are acknowledged.
        #[arg(long)]
        print_forecasts: bool,
        /// This instance's name within the pipeline (overrides
        /// `state.instance`; see there). Two live instances of one pipeline
        /// need different names.
        #[arg(long, env = "STREAMCAST_INSTANCE")]
        instance: Option<String>,
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
        #[arg(long, default_value = "5m", value_parser = streamcast::time::parse_duration)]
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
    /// Check delivery: compare a forecast topic with a reference (topic or
    /// backfill output) by (key, window_end); exit 1 on missing or differing
    /// forecasts (and duplicates, with --exactly-once).
    Verify {
        /// Bootstrap servers; default the pipeline's (with --pipeline),
        /// else 127.0.0.1:9092.
        #[arg(long, env = "STREAMCAST_BROKERS")]
        brokers: Option<String>,
        /// Connect as this pipeline's job does: its brokers and its
        /// `[kafka.librdkafka]` settings (security included).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// The forecast topic to check.
        #[arg(long)]
        topic: String,
        /// Reference forecasts from this topic.
        #[arg(
            long,
            required_unless_present = "reference_file",
            conflicts_with = "reference_file"
        )]
        reference_topic: Option<String>,
        /// Reference forecasts from this file: the Parquet that `backfill
        /// --output` writes, or JSON lines of forecast records.
        #[arg(long)]
        reference_file: Option<PathBuf>,
        /// Also fail on duplicates (extra copies of a (key, window_end)).
        #[arg(long)]
        exactly_once: bool,
        /// Values differ when |actual - reference| > tolerance * max(1, |reference|).
        #[arg(long, default_value_t = streamcast::verify::DEFAULT_TOLERANCE)]
        tolerance: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Give up when a topic is not read to its end within this long.
        #[arg(long, default_value = "60s", value_parser = streamcast::time::parse_duration)]
        timeout: Duration,
    },
    /// Evaluate forecasters offline (M4 Hourly; rolling-origin backtests on streams).
    #[cfg(feature = "eval")]
    Eval {
        #[command(subcommand)]
        which: EvalCmd,
    },
}

#[derive(Subcommand)]
pub enum ModelsCmd {
    /// List versions with their validation metrics; `*` marks the active one.
    List {
        #[arg(long)]
        pipeline: PathBuf,
        /// Registry directory; default the pipeline's models dir.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[cfg(feature = "eval")]
#[derive(Subcommand)]
pub enum EvalCmd {
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
        /// The default `combo` is the configuration chosen on a validation
        /// tail of M4 Hourly (the 48 values before the scored ones): the
        /// median of the per-series `rf` and `gbm` and the ES-RNN-style
        /// hybrid with its smoothing coefficients learned jointly with
        /// the network (`hybrid_joint`; validation OWA 0.355, holdout
        /// 0.410; with the fitted-first `hybrid@1` instead 0.363 / 0.415,
        /// mean(rf, gbm) 0.376 / 0.426; see BENCHMARKS.md, "Accuracy:
        /// combinations" and "Accuracy: the ES-RNN-style hybrid"). Other
        /// forms: `combo:a+b+...` and
        /// `combo_<mean|median|inv|best|global|ginv|sel>:a+b+...`, the
        /// rules other than mean and median weighting the members by their
        /// errors on the last H values of each history.
        #[arg(long, value_delimiter = ',', default_value = "combo,snaive,naive2")]
        models: Vec<String>,
        /// Instead of the holdout table: score every combination rule on
        /// every subset of these members (comma-separated), choosing on a
        /// validation tail (the --holdout values before the last ones) and
        /// reporting the last --holdout values beside it.
        #[arg(long, value_delimiter = ',', requires = "holdout")]
        combo_study: Vec<String>,
        /// Directory where --combo-study keeps member forecasts to reuse
        /// (delete it when the data or a member change).
        #[arg(long, requires = "combo_study")]
        combo_cache: Option<PathBuf>,
        /// Also write the holdout table as Markdown here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Pipeline file configuring the recurrent model `rnn`.
        #[arg(long, default_value = "pipelines/m4_hourly.toml")]
        rnn_pipeline: PathBuf,
        /// Networks (seeds) the `rnn` and `hybrid` train and average
        /// (inside a combination too); `rnn@N...` / `hybrid@N...` name
        /// their own (seeds, `mean`|`med`, specialists `lN`, `cN`, `rough`,
        /// `smooth`: BENCHMARKS.md, "Ensembles of the hybrid").
        #[arg(long, default_value_t = 3)]
        rnn_ensemble: usize,
        /// Keep every network's forecasts here (keyed by a hash of its
        /// configuration, seed and histories) and a combination's
        /// deterministic members' too, and reuse them: an ensemble study
        /// trains each network once. Delete it when the code changes.
        #[arg(long)]
        net_cache: Option<PathBuf>,
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
        /// Models to run, comma-separated. The first default is the
        /// combination chosen on validation origins of the CloudWatch
        /// streams (`--drop-last 0.2`): the per-step median of rf, gbm,
        /// snaive, ses_sa and damped_sa, all refitted at every origin
        /// (12-step MASE 1.057 vs ses_sa's 1.085 on the default origins;
        /// BENCHMARKS.md, "Accuracy: combinations").
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "combo_median:rf+gbm+snaive+ses_sa+damped_sa,naive,snaive,naive2,ses,holt,damped,hw_add,ses_sa,damped_sa"
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
        /// Cut this fraction off the end of every series first (0.2: the
        /// origins then lie in 64-80% of it, before any origin of the
        /// default run): a validation run for choosing settings.
        #[arg(long, default_value_t = 0.0)]
        drop_last: f64,
        /// Also write the tables as Markdown here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

/// Runs one subcommand.
pub fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Run {
            pipeline,
            exit_when_idle,
            print_forecasts,
            instance,
        } => run::run(&pipeline, exit_when_idle, print_forecasts, instance),
        Cmd::Backfill {
            pipeline,
            input,
            output,
        } => backfill::backfill(&pipeline, &input, &output),
        Cmd::Generate {
            pipeline,
            keys,
            days,
            step,
            seed,
            to_kafka,
            parquet,
        } => generate::generate(&pipeline, keys, days, step, seed, to_kafka, parquet),
        Cmd::Check { pipeline } => check::check(&pipeline),
        Cmd::Train {
            pipeline,
            data,
            out,
            promote,
        } => train::train(&pipeline, &data, out, promote),
        Cmd::Models {
            which: ModelsCmd::List { pipeline, dir },
        } => models::list(&pipeline, dir),
        Cmd::Verify {
            brokers,
            pipeline,
            topic,
            reference_topic,
            reference_file,
            exactly_once,
            tolerance,
            json,
            timeout,
        } => verify::verify(verify::Options {
            kafka: verify::connection(brokers, pipeline.as_deref())?,
            reference: match (reference_topic, reference_file) {
                (Some(t), _) => verify::Reference::Topic(t),
                (None, Some(f)) => verify::Reference::File(f),
                (None, None) => anyhow::bail!("--reference-topic or --reference-file is required"),
            },
            topic,
            exactly_once,
            tolerance,
            json,
            timeout,
        }),
        #[cfg(feature = "eval")]
        Cmd::Eval { which } => eval::eval(which),
    }
}
