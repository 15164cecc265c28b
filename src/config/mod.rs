//! Pipeline configuration: one TOML file per pipeline under `pipelines/`.
//!
//! Every field is documented where it is declared (these comments are the
//! user documentation), unknown fields are rejected, and defaults are named
//! `default_*`. `PipelineConfig::load` parses *and* validates, so nothing
//! downstream ever sees an unchecked value; any failure names the file, the
//! field and what was expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
pub use crate::time::parse_duration;

mod train;
pub use train::{PointLoss, TrainConfig};

/// A whole pipeline: where events come from, how they are windowed, which
/// model forecasts them and where forecasts go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name of the pipeline; used in the default consumer group and paths.
    pub name: String,
    /// Settings shared by every Kafka client of the job (security
    /// included), and how topics are created.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The Kafka topic events are read from.
    pub source: SourceConfig,
    /// How each message is turned into an event.
    #[serde(default)]
    pub decode: DecodeConfig,
    /// Event-time windowing.
    pub window: WindowConfig,
    /// The recurrent model and its cold-start baseline.
    #[serde(default)]
    pub model: ModelConfig,
    /// Where forecasts and rejected records go.
    pub sink: SinkConfig,
    /// Closed windows kept as Parquet (the training buffer).
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// Training options (used by `streamcast train` and the retrainer).
    #[serde(default)]
    pub train: TrainConfig,
    /// Periodic retraining while running (champion/challenger).
    #[serde(default)]
    pub retrain: RetrainConfig,
    /// Delivery guarantee of the streaming job (see `state`).
    #[serde(default)]
    pub delivery: Delivery,
    /// Durable per-key state on a changelog topic.
    #[serde(default)]
    pub state: StateConfig,
    /// Metrics and logs.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The HTTP query and health API (off unless `api.listen` is set).
    #[serde(default)]
    pub api: ApiConfig,
    /// Live scoring of published forecasts against the actual windows.
    #[serde(default)]
    pub score: ScoreConfig,
    #[serde(default)]
    pub choice: ChoiceConfig,
    /// The Confluent-compatible schema registry of Avro payloads
    /// (`decode.format` / `sink.format = "avro"`).
    #[serde(default)]
    pub registry: RegistryConfig,
    /// How the streaming job's compute (decode, window, model) is spread
    /// over threads.
    #[serde(default)]
    pub compute: ComputeConfig,
}

/// The streaming job's compute shards (see `pipeline::shards`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeConfig {
    /// Compute threads of `streamcast run`. Each shard owns some input
    /// partitions (placed evenly as they are assigned) with their keys'
    /// window and model state; each batch is processed by all shards in
    /// parallel.
    /// 1 (the default) is the single compute thread. More than the input
    /// topic's partitions leaves shards idle. Needs durable state (a key is
    /// bound to one partition only there) and no shadow duel.
    #[serde(default = "default_shards")]
    pub shards: usize,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            shards: default_shards(),
        }
    }
}

const fn default_shards() -> usize {
    1
}

/// How a payload is written: JSON (the default) or Avro in Confluent's
/// wire format (a zero magic byte, the writer schema's registry id as 4
/// big-endian bytes, then the Avro binary datum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Json,
    Avro,
}

/// A Confluent-compatible schema registry (Confluent Schema Registry,
/// Apicurio's `/apis/ccompat/v7`, Karapace, ...): writer schemas of Avro
/// input are fetched from it by id (`GET /schemas/ids/{id}`, cached per
/// id), and the forecast schema is registered under
/// `<sink.topic>-value` at start. The environment variable
/// `STREAMCAST_SCHEMA_REGISTRY` overrides `url`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the registry's API, e.g.
    /// `"http://127.0.0.1:8081/apis/ccompat/v7"` (what `scripts/registry`
    /// serves). Required when a format is `"avro"`.
    #[serde(default)]
    pub url: Option<String>,
    /// Longest wait for one registry request. A request that fails for any
    /// reason but "no such schema" is retried with backoff (the job waits
    /// for the registry, as it waits for the broker).
    #[serde(default = "default_registry_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

const fn default_registry_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: None,
            timeout: default_registry_timeout(),
        }
    }
}

/// Per-key model choice (see `choose`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceConfig {
    /// Serve each key by the candidate with the lowest recent live error.
    #[serde(default)]
    pub enabled: bool,
    /// Candidates: `network` (the forecast stage's output); the cheap
    /// incremental `naive`, `snaive`, `smedian` (the median of the values
    /// 1, 2 and 3 seasons back), `ses` (fixed `ses_alpha`); `median`
    /// (the step-wise median of the others); and any classical forecaster
    /// of `eval --models` (`ses_sa`, `damped_sa`, `naive2`, `hw_add`,
    /// `arima`, `prophet`, `rf`, ...), refitted per key on its last
    /// `history` window values every `refit_every` windows.
    #[serde(default = "default_candidates")]
    pub candidates: Vec<String>,
    /// Half-life of the error means, in scored windows.
    #[serde(default = "default_choice_half_life")]
    pub half_life: f64,
    /// Another candidate takes over only when its error is below the
    /// serving one's by more than this share (hysteresis).
    #[serde(default = "default_choice_margin")]
    pub margin: f64,
    /// Scored windows per key before the first change.
    #[serde(default = "default_choice_min_scored")]
    pub min_scored: u32,
    /// Smoothing factor of the `ses` candidate.
    #[serde(default = "default_ses_alpha")]
    pub ses_alpha: f64,
    /// Window values kept per key for the classical candidates (8 bytes
    /// each); 0: 12 seasons (what `ses_sa`'s seasonality test needs at a
    /// daily season of 24 hourly windows).
    #[serde(default)]
    pub history: usize,
    /// Windows between two fits of a key's classical candidates: the
    /// smoothers keep their parameters in between (and recompute their
    /// states at every window), the others serve the last fit's forecast
    /// further ahead. 1 (the default) is the most accurate and the
    /// costliest (BENCHMARKS.md, "Per-key model choice").
    #[serde(default = "default_refit_every")]
    pub refit_every: usize,
    /// The candidate a new key is served by until another has earned the
    /// switch (`margin`, `min_scored`); one of `candidates`.
    #[serde(default = "default_choice_start")]
    pub start: String,
    /// The `weighted` candidate's weights: the inverse of each candidate's
    /// recent error to this power (0: the plain mean).
    #[serde(default = "default_weight_power")]
    pub weight_power: f64,
    /// The candidates that may serve a key (empty: all of them); the
    /// others are scored and feed `median` / `weighted` only.
    #[serde(default)]
    pub serve: Vec<String>,
    /// Score the candidates at every step of the horizon instead of the
    /// first and the last (`horizon / 2` times the pending memory).
    #[serde(default)]
    pub score_all_steps: bool,
    /// The regime-change guard (off at 0): half-life, in scored windows,
    /// of a second, fast error mean per candidate. A serving candidate
    /// whose fast error is above `guard_ratio` times the best fast error
    /// is replaced at once, and no candidate that far behind is switched
    /// to (see `choose`).
    #[serde(default)]
    pub fast_half_life: f64,
    /// How far a candidate's fast error may be above the best one's
    /// before the guard rules it out (>= 1).
    #[serde(default = "default_guard_ratio")]
    pub guard_ratio: f64,
    /// The candidate the guard switches to when it is not ruled out
    /// itself; empty: the one with the lowest long-run error among those
    /// not ruled out.
    #[serde(default)]
    pub guard_to: String,
}

fn default_guard_ratio() -> f64 {
    2.0
}

fn default_choice_start() -> String {
    "network".into()
}
fn default_weight_power() -> f64 {
    1.0
}

fn default_refit_every() -> usize {
    1
}

/// `smedian` rather than `snaive`: on the NAB AWS validation origins the
/// choice's 12-step MASE went from 1.920 to 1.881 (taxi unchanged, 0.604);
/// BENCHMARKS.md "Regime-change guard and the seasonal median".
fn default_candidates() -> Vec<String> {
    ["network", "smedian", "ses_sa", "damped_sa", "median"]
        .map(String::from)
        .to_vec()
}
fn default_choice_half_life() -> f64 {
    168.0
}
fn default_choice_margin() -> f64 {
    0.1
}
fn default_choice_min_scored() -> u32 {
    12
}
fn default_ses_alpha() -> f64 {
    0.3
}

impl Default for ChoiceConfig {
    fn default() -> Self {
        ChoiceConfig {
            enabled: false,
            candidates: default_candidates(),
            half_life: default_choice_half_life(),
            margin: default_choice_margin(),
            min_scored: default_choice_min_scored(),
            ses_alpha: default_ses_alpha(),
            history: 0,
            refit_every: default_refit_every(),
            start: default_choice_start(),
            weight_power: default_weight_power(),
            serve: Vec::new(),
            score_all_steps: false,
            fast_half_life: 0.0,
            guard_ratio: default_guard_ratio(),
            guard_to: String::new(),
        }
    }
}

/// The candidates the chooser computes itself (`choose::Candidate`);
/// `choice.candidates` also accepts every name of `baselines::NAMES`.
pub const CHOICE_BUILTIN: &[&str] = &[
    "network", "naive", "snaive", "smedian", "ses", "median", "weighted",
];

/// Live scoring (see `score`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Score every forecast when its actual window closes.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The horizon steps scored (1-based); empty: the first and the last.
    /// Each costs 4 bytes per key and pending forecast.
    #[serde(default)]
    pub steps: Vec<usize>,
    /// With `model.quantiles`: calibrate each key's published bands online
    /// from the conformity of its recent ones (see `score`), so a P10-P90
    /// band covers about 80% of actuals live.
    #[serde(default = "default_true")]
    pub calibrate: bool,
    /// Scored windows per key (and step) the calibration looks back on.
    /// Each costs 4 bytes per key, scored step and quantile pair.
    #[serde(default = "default_calibration_window")]
    pub calibration_window: usize,
}

fn default_calibration_window() -> usize {
    100
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            enabled: true,
            steps: Vec::new(),
            calibrate: true,
            calibration_window: default_calibration_window(),
        }
    }
}

/// The HTTP API of `streamcast run` (see `api`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the API on this address, e.g. `"127.0.0.1:9899"`; off when
    /// absent. Bind to localhost unless something in front guards it: the
    /// API has no authentication.
    #[serde(default)]
    pub listen: Option<String>,
    /// `/health/ready` says ready only while every owned partition is at
    /// most this many messages behind the broker's high watermark.
    #[serde(default = "default_ready_max_lag")]
    pub ready_max_lag: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: None,
            ready_max_lag: default_ready_max_lag(),
        }
    }
}

const fn default_ready_max_lag() -> u64 {
    10_000
}

/// Kafka input.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Bootstrap servers. The environment variable `STREAMCAST_BROKERS`
    /// overrides it (handy for tests and containers).
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Input topic (required).
    pub topic: String,
    /// Consumer group; default `streamcast-<name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Partitions to create the topic with when it does not exist.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Most messages decoded and windowed as one batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest wait to fill a batch before processing what arrived.
    #[serde(default = "default_batch_wait", deserialize_with = "de_duration")]
    pub batch_wait: Duration,
    /// Attempts (with exponential backoff) to reach the brokers at start
    /// before giving up with an error.
    #[serde(default = "default_connect_attempts")]
    pub connect_attempts: u32,
    /// Raw librdkafka options of the job's consumers (the input's and the
    /// state restore's), applied on top of `[kafka.librdkafka]`; e.g.
    /// `"fetch.max.bytes"`. Values may be written `${ENV_NAME}` (see
    /// [`KafkaConfig::librdkafka`]).
    #[serde(default)]
    pub librdkafka: LibrdkafkaOptions,
}

/// The connection to the cluster, shared by every Kafka client the job
/// creates: the admin client (topic creation), the consumer, the producers,
/// the state restore consumer and the metadata and committed-offset
/// lookups. The brokers themselves are `source.brokers`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Raw librdkafka options applied to every client of the job: the place
    /// for security and other connection settings (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.location`, ...). Each client then applies streamcast's own
    /// settings for its role, then `[source.librdkafka]` (consumers) or
    /// `[sink.librdkafka]` (producers), which win.
    ///
    /// Any value (here and in those two tables) may be written
    /// `${ENV_NAME}`, alone or inside text: it is replaced from the
    /// environment when the file is loaded, and a variable that is not set
    /// is an error naming the field and the variable (`$${` writes a
    /// literal `${`). Keep secrets out of the file this way. Values of
    /// secret keys (any key containing `password`, `secret`, `passphrase`,
    /// `private`, `jaas`, `ssl.key.pem`, `sasl.oauthbearer.config`) are
    /// printed and logged as `***`.
    #[serde(default)]
    pub librdkafka: LibrdkafkaOptions,
    /// Replication factor of every topic the job creates when it does not
    /// exist (input, forecasts, dead letters, the state changelog). 1 suits
    /// a single local broker; production clusters want 3 (with the
    /// topics' `min.insync.replicas` at 2), so that losing one broker loses
    /// no data and stops no writes. Topics that exist are left as they are.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            librdkafka: LibrdkafkaOptions::default(),
            replication_factor: default_replication_factor(),
        }
    }
}

const fn default_replication_factor() -> i32 {
    1
}

/// Raw librdkafka options (`key = "value"`), in key order. Debug output
/// shows secret values as `***` (see [`is_secret_key`]); serializing
/// writes them as they are (use [`PipelineConfig::redacted`] to print).
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct LibrdkafkaOptions(pub BTreeMap<String, String>);

pub use crate::secrets::{is_secret_key, REDACTED};

impl LibrdkafkaOptions {
    /// A copy with the values of secret keys replaced by `***`.
    pub fn redacted(&self) -> Self {
        LibrdkafkaOptions(
            self.0
                .iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) { REDACTED } else { v };
                    (k.clone(), v.to_string())
                })
                .collect(),
        )
    }

    /// Replaces every `${NAME}` in the values with `lookup(NAME)`.
    /// Fails with the key and a message when a variable is not set or a
    /// reference is malformed.
    pub fn resolve_env(
        &mut self,
        lookup: impl Fn(&str) -> std::result::Result<String, std::env::VarError>,
    ) -> std::result::Result<(), (String, String)> {
        for (k, v) in self.0.iter_mut() {
            *v = substitute_env(v, &lookup).map_err(|msg| (k.clone(), msg))?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for LibrdkafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k,
                    if is_secret_key(k) {
                        REDACTED
                    } else {
                        v.as_str()
                    },
                )
            }))
            .finish()
    }
}

impl std::ops::Deref for LibrdkafkaOptions {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for LibrdkafkaOptions {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a LibrdkafkaOptions {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for LibrdkafkaOptions {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        LibrdkafkaOptions(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// `value` with every `${NAME}` replaced by `lookup(NAME)`; `$${` is a
/// literal `${`, any other `$` is kept. The error names the variable.
pub fn substitute_env(
    value: &str,
    lookup: impl Fn(&str) -> std::result::Result<String, std::env::VarError>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(end) = tail.find('}') else {
                return Err(
                    "unclosed `${` in the value (write `${NAME}`, or `$${` for a literal `${`)"
                        .to_string(),
                );
            };
            let name = &tail[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not an environment variable reference (expected `${{NAME}}` with letters, digits and `_`)"
                ));
            }
            match lookup(name) {
                Ok(v) => out.push_str(&v),
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!(
                        "environment variable {name} is not set (the value refers to `${{{name}}}`)"
                    ))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("environment variable {name} is not valid UTF-8"))
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the event's key, time and values are in each JSON message.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// JSON field holding the entity key (string or number).
    #[serde(default = "default_key_field")]
    pub key_field: String,
    /// JSON field holding the event time (ignored for `time_format = "kafka"`).
    #[serde(default = "default_time_field")]
    pub time_field: String,
    /// How the event time is written.
    #[serde(default)]
    pub time_format: TimeFormat,
    /// Numeric fields to forecast; the first is the forecast target, the others
    /// are extra inputs. Default `["value"]`.
    #[serde(default = "default_value_fields")]
    pub value_fields: Vec<String>,
    /// Events whose time is more than this ahead of the wall clock are
    /// dead letters (`bad_timestamp`): a producer's broken clock, or a
    /// year-9999 typo, would otherwise hold a key's windows open for years
    /// and, once every partition is idle, make every later event late.
    #[serde(default = "default_max_future_skew", deserialize_with = "de_duration")]
    pub max_future_skew: Duration,
    /// Longer keys are dead letters (`bad_key`): a key is copied into every
    /// window, state record and forecast, and a runaway one (a whole
    /// document in the key field) would make those unpublishable.
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// Longer payloads are dead letters (`too_large`) without being parsed.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Values of larger magnitude are dead letters (`bad_value`): sums and
    /// squares of them in windows and scalers would overflow to infinity
    /// and poison the key's state for good.
    #[serde(default = "default_max_abs_value")]
    pub max_abs_value: f64,
    /// `"json"` (default) or `"avro"`: Confluent's wire format, the
    /// writer schema fetched from `[registry]` by the id in each message.
    /// The fields above name fields of the Avro record; a schema whose
    /// record lacks one, or holds it with a type that cannot be one, makes
    /// its messages dead letters (`incompatible_schema`).
    #[serde(default)]
    pub format: PayloadFormat,
}

/// Encoding of the event-time field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Seconds since the Unix epoch (integer or fractional).
    EpochS,
    /// Milliseconds since the Unix epoch.
    EpochMs,
    /// RFC 3339 / ISO 8601 with zone, e.g. `2024-01-01T00:00:00Z`. A naive
    /// `YYYY-MM-DD HH:MM:SS` is read as UTC.
    #[default]
    Rfc3339,
    /// The Kafka message timestamp (no time field in the payload).
    Kafka,
}

/// Event-time windows per key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Window length, e.g. `"5m"`, `"1h"`.
    #[serde(deserialize_with = "de_duration")]
    pub size: Duration,
    /// Hop between window starts; default = size (tumbling).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub slide: Option<Duration>,
    /// How far behind the newest event an event may arrive and still count.
    #[serde(default = "default_lateness", deserialize_with = "de_duration")]
    pub allowed_lateness: Duration,
    /// Aggregation of each value field inside a window.
    #[serde(default)]
    pub aggregation: Aggregation,
    /// What to do with events later than the allowed lateness.
    #[serde(default)]
    pub late_policy: LatePolicy,
    /// How an empty window of a live key is filled.
    #[serde(default)]
    pub fill: FillPolicy,
    /// Consecutive empty windows after which a key's series is reset instead
    /// of being filled further.
    #[serde(default = "default_max_gap")]
    pub max_gap_windows: u32,
    /// A partition with no message for this long (wall clock) stops holding
    /// the watermark back.
    #[serde(default = "default_idle_partition", deserialize_with = "de_duration")]
    pub idle_partition_timeout: Duration,
    /// Keys with no event for this long (event time) are evicted.
    #[serde(default = "default_key_ttl", deserialize_with = "de_duration")]
    pub key_ttl: Duration,
    /// At most this many live keys; beyond it the least recently seen is evicted.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// A key's open panes (one per slide, from its oldest window not yet
    /// emitted to its newest event) may span at most this many. An event
    /// that would stretch them further (a timestamp years away from the
    /// key's others) is a dead letter (`bad_timestamp`) and does not move
    /// its partition's clock: otherwise it would allocate every pane in
    /// between.
    #[serde(default = "default_max_open_panes")]
    pub max_open_panes: u32,
    /// Calendar covariates added to every window row.
    #[serde(default)]
    pub covariates: CovariatesConfig,
}

/// Calendar features of a window's start time (UTC), as Fourier sin/cos
/// pairs: order `k` adds `sin(2*pi*j*t/P)`, `cos(2*pi*j*t/P)` for j = 1..=k,
/// the seasonal term s(t) of Prophet's y(t) = g(t) + s(t) + h(t).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CovariatesConfig {
    /// Fourier order of the hour-of-day cycle (P = 1 day); 0 = off.
    #[serde(default)]
    pub hour_of_day: u32,
    /// Fourier order of the day-of-week cycle (P = 7 days); 0 = off.
    #[serde(default)]
    pub day_of_week: u32,
    /// Fourier order of the day-of-year cycle (P = 365.25 days); 0 = off.
    #[serde(default)]
    pub day_of_year: u32,
    /// Holiday dates (`YYYY-MM-DD`, UTC); adds a `holiday` 0/1 column when non-empty.
    #[serde(default)]
    pub holidays: Vec<chrono::NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    #[default]
    Mean,
    Sum,
    Min,
    Max,
    Last,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Dropped and counted (`streamcast_late_events_total`).
    Drop,
    /// Sent to the dead-letter topic with reason `late`.
    #[default]
    DeadLetter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FillPolicy {
    /// Repeat the previous window's aggregates.
    #[default]
    Ffill,
    /// Zeros.
    Zero,
    /// NaN; the model masks it.
    Missing,
}

/// The recurrent model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Cell type.
    #[serde(default)]
    pub cell: CellKind,
    /// What the output head predicts (see `Head`).
    #[serde(default)]
    pub head: Head,
    /// How the horizon is produced (see `HorizonDecoder`).
    #[serde(default)]
    pub decoder: HorizonDecoder,
    /// Output recurrence: feed the network's previous one-step output back
    /// (see [`OutputRecurrence`]): `"hidden"` (or `true`) into the recurrent
    /// cells, `"output"` straight into the output layer; `"none"` (or
    /// `false`, the default) not at all.
    #[serde(default)]
    pub output_recurrence: OutputRecurrence,
    /// How stacked recurrent layers connect (see [`Connections`]).
    #[serde(default)]
    pub connections: Connections,
    /// Hidden units per layer.
    #[serde(default = "default_hidden")]
    pub hidden: i64,
    /// Stacked layers.
    #[serde(default = "default_layers")]
    pub layers: i64,
    /// Windows ahead to forecast.
    #[serde(default = "default_horizon")]
    pub horizon: i64,
    /// Quantiles to forecast besides the point forecast, e.g. `[0.1, 0.5,
    /// 0.9]` (must include 0.5, the point forecast); trained with the
    /// pinball loss. Empty = point forecasts only.
    #[serde(default)]
    pub quantiles: Vec<f64>,
    /// Windows a key must have seen before the model (not the baseline) forecasts it.
    #[serde(default = "default_warmup")]
    pub warmup_windows: u32,
    /// Season length in windows for the seasonal-naive cold-start forecast
    /// (and the residual head's base).
    #[serde(default = "default_season")]
    pub season_windows: u32,
    /// Past target windows fed to the network as inputs at every step
    /// (lags 1..=lags, scaled); default = one season. The network's head
    /// also has a linear skip from its inputs, so it can weigh past seasons
    /// directly while the recurrent state carries the rest.
    #[serde(default)]
    pub lags: Option<u32>,
    /// ES-RNN-style hybrid (`[model.hybrid]`, see `model::hybrid`): per-key
    /// exponential smoothing around the network; the network must have
    /// been trained with the same table. Absent = off.
    #[serde(default)]
    pub hybrid: Option<HybridConfig>,
    /// A trained model artifact (directory with `model.safetensors` and
    /// `model.json`); absent = a freshly initialised model (seeded).
    #[serde(default)]
    pub artifact: Option<PathBuf>,
    /// Seed for the initial weights.
    #[serde(default = "default_seed")]
    pub seed: i64,
    /// Where the network runs (`cuda` falls back to the CPU with a warning
    /// when no GPU is available).
    #[serde(default)]
    pub device: DeviceKind,
    /// libtorch intra-op threads.
    #[serde(default = "default_torch_threads")]
    pub threads: i32,
    /// Past windows attended besides the current one: by the transformer
    /// cell (`cell = "transformer"`), and by the temporal attention of a
    /// recurrent cell (`attention = true`). The per-key state keeps that
    /// many input vectors (transformer) or hidden states (attention).
    #[serde(default = "default_attention_window")]
    pub attention_window: u32,
    /// Attention heads of the transformer cell (`hidden` must be a multiple).
    #[serde(default = "default_attention_heads")]
    pub attention_heads: i64,
    /// Temporal attention on top of a recurrent cell: each step's top hidden
    /// state (with dense connections: every layer's, concatenated) queries
    /// the previous `attention_window` of them (scaled dot product) and the
    /// head sees `[h_t, context]`; with `decoder = "seq2seq"` each decoder
    /// step queries them and the current one with its own state, the context
    /// joining its output layer. Not with the transformer cell (which is
    /// attention already).
    #[serde(default)]
    pub attention: bool,
    /// How each key's values are scaled before the network (and the
    /// forecast scaled back): `"expanding"` (the default: mean and variance
    /// over the key's whole history) or `"ewm"` (exponentially weighted,
    /// half-life `scaler_half_life` windows), which follows level shifts.
    /// The model artifact records it; a model is only served with the
    /// scaler it was trained with.
    #[serde(default)]
    pub scaler: ScalerKind,
    /// Half-life in windows of the `"ewm"` scaler (a window's weight halves
    /// every that many present windows); ignored by `"expanding"`.
    #[serde(default = "default_scaler_half_life")]
    pub scaler_half_life: f64,
}

/// How the forecast stage scales each key's values (`model.scaler`); see
/// `model::store::StateStore::update_scaler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalerKind {
    /// Welford mean and variance over every present value of the key.
    #[default]
    Expanding,
    /// Exponentially weighted mean and variance: each present value decays
    /// the weight of the older ones by `0.5^(1 / scaler_half_life)`.
    Ewm,
}

/// Which of the canon's output recurrences the network has: the previous
/// window's one-step output (the median's, with quantiles) fed back to the
/// recurrent cells (output-to-hidden) or to the output layer directly
/// (output-to-output). Either way the live stage keeps each key's previous
/// output in its state. Written as a string, or as the boolean of earlier
/// pipeline files (`true` = `"hidden"`, `false` = `"none"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputRecurrence {
    #[default]
    None,
    /// Output-to-hidden: an extra input of the first layer (and of the
    /// linear skip). Training steps one window at a time.
    Hidden,
    /// Output-to-output: `y_t = head(h_t) + W x_t + w y_{t-1}`; the cells
    /// never see it, so training keeps the sequence kernels and only the
    /// cheap output recurrence runs step by step.
    Output,
}

impl OutputRecurrence {
    /// Whether the previous output is fed back at all.
    pub fn enabled(self) -> bool {
        self != OutputRecurrence::None
    }
}

impl<'de> Deserialize<'de> for OutputRecurrence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Flag(bool),
            Name(String),
        }
        match Either::deserialize(d)? {
            Either::Flag(true) => Ok(OutputRecurrence::Hidden),
            Either::Flag(false) => Ok(OutputRecurrence::None),
            Either::Name(n) => match n.as_str() {
                "none" => Ok(OutputRecurrence::None),
                "hidden" => Ok(OutputRecurrence::Hidden),
                "output" => Ok(OutputRecurrence::Output),
                other => Err(serde::de::Error::custom(format!(
                    "unknown output_recurrence {other:?}: expected \"none\", \"hidden\", \"output\" or a boolean"
                ))),
            },
        }
    }
}

/// How stacked recurrent layers are connected (with `layers = 1` every
/// choice is the same network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connections {
    /// Each layer sees the one below; the head sees the top layer.
    #[default]
    None,
    /// Residual: above the first layer, each layer's output is added to its
    /// input (`out_l = h_l + in_l`), so the head sees the sum of every
    /// layer's contribution and gradients have an identity path down.
    Skip,
    /// DenseNet style: each layer sees the network input and the outputs of
    /// every layer below it (concatenated), and the head sees all layers
    /// (so does temporal attention, over past concatenations; the seq2seq
    /// decoder starts from a learned projection of the concatenation).
    Dense,
}

/// What the network's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// `horizon` values in the key's scaled units: forecast = mean + scale * y.
    Direct,
    /// A correction to seasonal naive, in scaled units: forecast =
    /// seasonal_naive + scale * y. An untrained or unsure network (y = 0)
    /// is exactly the baseline; training only has to learn what it misses.
    #[default]
    Residual,
}

/// How the network turns its state into `horizon` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HorizonDecoder {
    /// All steps at once from the last hidden state (a linear layer).
    #[default]
    Direct,
    /// Sequence to sequence: the encoder's state seeds a GRU decoder that
    /// emits one step at a time, each fed the previous step's output. With
    /// dense connections the seed is a learned linear projection of every
    /// layer's state to `hidden`.
    Seq2seq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellKind {
    /// Elman RNN with tanh.
    Rnn,
    /// Elman RNN with ReLU and identity-initialised recurrent matrix.
    Irnn,
    #[default]
    Lstm,
    Gru,
    /// A small pre-norm transformer encoder: causal self-attention over the
    /// current window and the `attention_window` before it (see
    /// `model::attention`). Its per-key state is the ring of those inputs.
    Transformer,
}

/// Where libtorch runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    #[default]
    Cpu,
    /// The first CUDA device.
    Cuda,
}

/// Forecast output and dead letters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Output topic for forecasts (required).
    pub topic: String,
    /// Dead-letter topic for rejected records (required).
    pub dead_letter_topic: String,
    /// Partitions to create the output topics with when they do not exist.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Optional topic for live accuracy records: one per key and scored
    /// window (its actual, and each scored step's forecast, error, scaled
    /// error and band coverage), keyed by the entity key, published with
    /// the forecasts (in their transaction with exactly once). Needs
    /// `score.enabled`.
    #[serde(default)]
    pub accuracy_topic: Option<String>,
    /// Raw librdkafka options of the job's producers, applied on top of
    /// `[kafka.librdkafka]`; e.g. `"compression.type"`. Values may be
    /// written `${ENV_NAME}` (see [`KafkaConfig::librdkafka`]).
    #[serde(default)]
    pub librdkafka: LibrdkafkaOptions,
    /// On SIGINT/SIGTERM, give draining (the last forecasts, the final
    /// checkpoint) this long. Past it (the broker is away) the job exits 1
    /// without committing what is left: the next start redoes it from the
    /// last committed checkpoint, so nothing is lost.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// At most about this many bytes of outputs (forecasts, dead letters)
    /// wait for the broker's acknowledgement; past it the sink takes no
    /// more, which holds the compute thread and the consumer back (while
    /// the broker is away, memory stays bounded instead of growing with
    /// every retried batch).
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// `"json"` (default) or `"avro"`: forecasts in Confluent's wire
    /// format, their schema (the JSON record's fields, see
    /// `sink::avro`) registered under `<topic>-value` in `[registry]` at
    /// start. Dead letters and accuracy records stay JSON.
    #[serde(default)]
    pub format: PayloadFormat,
}

const fn default_max_in_flight_bytes() -> usize {
    256 << 20
}

const fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The closed-window archive: Parquet files the retrainer learns from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Write closed windows to Parquet under `dir`.
    #[serde(default)]
    pub enabled: bool,
    /// Archive directory; default `.state/archive/<pipeline name>`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Start a new file after this many rows.
    #[serde(default = "default_roll_rows")]
    pub roll_rows: usize,
    /// Start a new file after this long (so readers see recent windows).
    #[serde(default = "default_roll_interval", deserialize_with = "de_duration")]
    pub roll_interval: Duration,
    /// Delete files whose newest window is older than this (event time).
    #[serde(default = "default_retention_age", deserialize_with = "de_duration")]
    pub retention_age: Duration,
    /// Delete the oldest files while the archive is larger than this.
    #[serde(default = "default_retention_bytes")]
    pub retention_bytes: u64,
}

/// The streaming job's delivery guarantee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Every (key, window_end) at least once; after a crash, forecasts
    /// since the last checkpoint are published again, with equal values.
    #[default]
    AtLeastOnce,
    /// Forecasts, dead letters, state and input offsets are committed in
    /// one Kafka transaction per checkpoint: `read_committed` consumers see
    /// every (key, window_end) exactly once, `state.commit_interval` later.
    ExactlyOnce,
}

/// Durable per-key state (`streamcast run` only; see `state`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Keep per-key state on a compacted changelog topic, restored on start
    /// and on every partition assignment. Off: state lives in memory only
    /// (a restart rebuilds open windows from Kafka and warms keys up again).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Changelog topic; default `<group id>-state`.
    #[serde(default)]
    pub topic: Option<String>,
    /// How often state and offsets are committed together. Shorter: less to
    /// recompute after a crash and (exactly-once) forecasts visible sooner;
    /// longer: fewer pauses to drain in-flight deliveries.
    #[serde(default = "default_commit_interval", deserialize_with = "de_duration")]
    pub commit_interval: Duration,
    /// While the job is far behind (more input unread on the broker than
    /// it read since the last checkpoint), checkpoints wait up to this long
    /// instead of `commit_interval`: catching up through a backlog then
    /// rewrites each key's window record every few seconds, not every
    /// second. This bounds what is replayed after a crash in a backlog
    /// (and, exactly once, how long forecasts stay invisible then); keep it
    /// well below the transaction timeout (20 s). At or below
    /// `commit_interval`: no stretching.
    #[serde(
        default = "default_backlog_commit_interval",
        deserialize_with = "de_duration"
    )]
    pub backlog_commit_interval: Duration,
    /// Give up restoring a partition after this long (a clear error rather
    /// than a job that waits forever on an unreachable changelog).
    #[serde(default = "default_restore_timeout", deserialize_with = "de_duration")]
    pub restore_timeout: Duration,
    /// This instance's stable name within the pipeline, for the
    /// transactional id (`<group id>-<instance>`): a restarted instance
    /// with the same name fences its predecessor at once. Two live
    /// instances must have different names. Default: the host name;
    /// `run --instance` (or `STREAMCAST_INSTANCE`) overrides it.
    #[serde(default)]
    pub instance: Option<String>,
    /// Static group membership (`group.instance.id = <group>-<instance>`):
    /// a restarted instance takes its partitions back at once, with no
    /// rebalance and no wait for the old member's session (SIGKILL -> next
    /// forecast 2.4 s instead of 10.4 s, BENCHMARKS.md). Off by default:
    /// when the group session expires (a broker restart), librdkafka can
    /// fence a static member fatally (`FENCED_INSTANCE_ID`) and the job then
    /// stops instead of recovering.
    #[serde(default)]
    pub static_membership: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            enabled: true,
            topic: None,
            commit_interval: default_commit_interval(),
            backlog_commit_interval: default_backlog_commit_interval(),
            restore_timeout: default_restore_timeout(),
            instance: None,
            static_membership: false,
        }
    }
}

const fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
const fn default_backlog_commit_interval() -> Duration {
    Duration::from_secs(5)
}
const fn default_restore_timeout() -> Duration {
    Duration::from_secs(300)
}

/// Retraining while the pipeline runs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    /// Retrain in the background (needs `archive.enabled`).
    #[serde(default)]
    pub enabled: bool,
    /// Retrain after this many closed windows (all keys)...
    #[serde(default = "default_retrain_windows")]
    pub every_windows: u64,
    /// ...or after this long, whichever comes first.
    #[serde(default = "default_retrain_every", deserialize_with = "de_duration")]
    pub every: Duration,
    /// Start the challenger from the champion's weights (fine-tuning)
    /// instead of a fresh initialisation.
    #[serde(default = "default_true")]
    pub from_champion: bool,
    /// Where model versions are kept; default `.state/models/<pipeline name>`.
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
    /// A round learns from the newest archive files up to this many bytes
    /// of Parquet (at least one file): the archive may hold up to
    /// `archive.retention_bytes`, and loading all of it into polars inside
    /// the streaming process would take several times that in memory.
    #[serde(default = "default_retrain_max_bytes")]
    pub max_archive_bytes: u64,
    /// Above 0: a challenger that beats the champion on the archive holdout
    /// is not promoted at once but runs in shadow (forecasting every key,
    /// publishing nothing) until this many of its forecasts have been
    /// scored live, then replaces the champion only if its live MASE is
    /// lower than the champion's on the same windows.
    #[serde(default)]
    pub shadow_windows: u64,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        RetrainConfig {
            enabled: false,
            every_windows: default_retrain_windows(),
            every: default_retrain_every(),
            from_champion: true,
            models_dir: None,
            max_archive_bytes: default_retrain_max_bytes(),
            shadow_windows: 0,
        }
    }
}

const fn default_retrain_max_bytes() -> u64 {
    256 << 20
}

const fn default_retrain_windows() -> u64 {
    50_000
}
const fn default_retrain_every() -> Duration {
    Duration::from_secs(3600)
}
const fn default_true() -> bool {
    true
}

/// Metrics endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Serve Prometheus metrics on this address, e.g. `"127.0.0.1:9898"`.
    #[serde(default)]
    pub prometheus_listen: Option<String>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
const fn default_partitions() -> i32 {
    3
}
const fn default_connect_attempts() -> u32 {
    6
}
const fn default_max_batch() -> usize {
    10_000
}
const fn default_batch_wait() -> Duration {
    Duration::from_millis(100)
}
fn default_key_field() -> String {
    "key".into()
}
fn default_time_field() -> String {
    "ts".into()
}
const fn default_max_key_bytes() -> usize {
    1024
}

const fn default_max_payload_bytes() -> usize {
    1 << 20
}

const fn default_max_abs_value() -> f64 {
    1e15
}

const fn default_max_future_skew() -> Duration {
    Duration::from_secs(86_400)
}
fn default_value_fields() -> Vec<String> {
    vec!["value".into()]
}
const fn default_lateness() -> Duration {
    Duration::from_secs(0)
}
const fn default_max_open_panes() -> u32 {
    100_000
}

const fn default_max_gap() -> u32 {
    24
}
const fn default_idle_partition() -> Duration {
    Duration::from_secs(5)
}
const fn default_key_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
const fn default_max_keys() -> usize {
    1_000_000
}
const fn default_roll_rows() -> usize {
    100_000
}
const fn default_roll_interval() -> Duration {
    Duration::from_secs(60)
}
const fn default_retention_age() -> Duration {
    Duration::from_secs(90 * 86_400)
}
const fn default_retention_bytes() -> u64 {
    10 << 30
}
const fn default_hidden() -> i64 {
    32
}
const fn default_layers() -> i64 {
    1
}
const fn default_attention_window() -> u32 {
    24
}
const fn default_attention_heads() -> i64 {
    4
}
const fn default_horizon() -> i64 {
    6
}
const fn default_warmup() -> u32 {
    12
}
const fn default_season() -> u32 {
    12
}
const fn default_seed() -> i64 {
    42
}
const fn default_scaler_half_life() -> f64 {
    168.0
}
const fn default_torch_threads() -> i32 {
    1
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            key_field: default_key_field(),
            time_field: default_time_field(),
            time_format: TimeFormat::default(),
            value_fields: default_value_fields(),
            max_future_skew: default_max_future_skew(),
            max_key_bytes: default_max_key_bytes(),
            max_payload_bytes: default_max_payload_bytes(),
            max_abs_value: default_max_abs_value(),
            format: PayloadFormat::default(),
        }
    }
}

/// What the network sees besides the deseasonalized log value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HybridMode {
    /// `ln y - seasonal`: the network's own per-key scaler normalizes the
    /// level.
    #[default]
    Deseason,
    /// `ln y - seasonal - level_{t-1}`: normalized by the smoothed level as
    /// ES-RNN does; the forecast is re-leveled with the last level.
    Relative,
}

/// Where the hybrid's smoothing coefficients come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HybridFit {
    /// `alpha` and `gammas` of the table, for every key.
    #[default]
    Global,
    /// Per key, chosen on its own first `fit_windows` values (live: the
    /// warm-up buffer; training: the same values of each key) by the
    /// smoothing's error `fit_steps` ahead; `alpha` and `gammas` serve the
    /// key's warm-up and keys too short to fit.
    PerSeries,
}

/// The `[model.hybrid]` table: the live stage's ES-RNN-style smoothing (`model::hybrid`) (and the
/// retrainer's, through `train::prep`). Coefficients are global (`fit =
/// "global"`) or fitted per key on its first windows (`fit = "per_series"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HybridConfig {
    /// Seasonal periods in windows, e.g. `[24, 168]` for hourly windows.
    pub periods: Vec<u32>,
    /// Level smoothing.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Seasonal smoothing, one per period (default 0.02 each).
    #[serde(default)]
    pub gammas: Vec<f64>,
    #[serde(default)]
    pub mode: HybridMode,
    /// Global or per-key coefficients (see [`HybridFit`]).
    #[serde(default)]
    pub fit: HybridFit,
    /// `per_series`: values a key buffers before its coefficients are
    /// fitted (0 = 4 x the longest period; at least 3 x it: two cycles
    /// initialise the state, the rest are scored).
    #[serde(default)]
    pub fit_windows: u32,
    /// `per_series`: the fit minimises the mean absolute log error this
    /// many steps ahead.
    #[serde(default = "default_fit_steps")]
    pub fit_steps: u32,
}

fn default_fit_steps() -> u32 {
    1
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            periods: Vec::new(),
            alpha: default_alpha(),
            gammas: Vec::new(),
            mode: HybridMode::default(),
            fit: HybridFit::default(),
            fit_windows: 0,
            fit_steps: default_fit_steps(),
        }
    }
}

fn default_alpha() -> f64 {
    0.05
}

impl HybridConfig {
    /// Errors in words, for config validation.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.periods.len() > 2 {
            return Err("model.hybrid.periods: at most two seasonal periods".into());
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(format!(
                "model.hybrid.alpha = {} must be in [0, 1]",
                self.alpha
            ));
        }
        if self.gammas.len() > self.periods.len() {
            return Err("model.hybrid.gammas: one per period at most".into());
        }
        if let Some(g) = self.gammas.iter().find(|g| !(0.0..=1.0).contains(*g)) {
            return Err(format!("model.hybrid.gammas: {g} must be in [0, 1]"));
        }
        let longest = self.periods.iter().copied().max().unwrap_or(1).max(1);
        if self.fit_windows != 0 && self.fit_windows < 3 * longest {
            return Err(format!(
                "model.hybrid.fit_windows = {} must be 0 (auto) or at least 3 x the longest period ({})",
                self.fit_windows,
                3 * longest
            ));
        }
        if self.fit_steps == 0 {
            return Err("model.hybrid.fit_steps must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            cell: CellKind::default(),
            head: Head::default(),
            decoder: HorizonDecoder::default(),
            output_recurrence: OutputRecurrence::None,
            connections: Connections::None,
            hidden: default_hidden(),
            layers: default_layers(),
            horizon: default_horizon(),
            quantiles: Vec::new(),
            warmup_windows: default_warmup(),
            season_windows: default_season(),
            lags: None,
            hybrid: None,
            artifact: None,
            seed: default_seed(),
            device: DeviceKind::default(),
            threads: default_torch_threads(),
            attention_window: default_attention_window(),
            attention_heads: default_attention_heads(),
            attention: false,
            scaler: ScalerKind::default(),
            scaler_half_life: default_scaler_half_life(),
        }
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: false,
            dir: None,
            roll_rows: default_roll_rows(),
            roll_interval: default_roll_interval(),
            retention_age: default_retention_age(),
            retention_bytes: default_retention_bytes(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Text(String),
    Secs(f64),
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    match DurationRepr::deserialize(d)? {
        DurationRepr::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        DurationRepr::Secs(n) => {
            crate::time::duration_from_secs(n, &n.to_string()).map_err(serde::de::Error::custom)
        }
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

impl PipelineConfig {
    /// Reads, parses and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading pipeline file {}", path.display()), e))?;
        Self::parse(&text, path)
    }

    /// Parses and validates pipeline TOML; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| Error::config(path, "<toml>", e.to_string()))?;
        let mut cfg: PipelineConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_string();
            let loc = inner
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Error::config(path, field, format!("{msg}{loc}"))
        })?;
        for (table, opts) in [
            ("kafka.librdkafka", &mut cfg.kafka.librdkafka),
            ("source.librdkafka", &mut cfg.source.librdkafka),
            ("sink.librdkafka", &mut cfg.sink.librdkafka),
        ] {
            opts.resolve_env(|name| std::env::var(name))
                .map_err(|(key, msg)| Error::config(path, format!("{table}.{key}"), msg))?;
        }
        // Environment overrides (containers, tests): brokers, and where the
        // metrics and the API listen.
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(b) = env("STREAMCAST_BROKERS") {
            cfg.source.brokers = b;
        }
        if let Some(a) = env("STREAMCAST_PROMETHEUS_LISTEN") {
            cfg.telemetry.prometheus_listen = Some(a);
        }
        if let Some(u) = env("STREAMCAST_SCHEMA_REGISTRY") {
            cfg.registry.url = Some(u);
        }
        if let Some(a) = env("STREAMCAST_API_LISTEN") {
            cfg.api.listen = Some(a);
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: &str| Err(Error::config(path, field, msg));
        if self.name.trim().is_empty() {
            return bad("name", "expected a non-empty pipeline name");
        }
        if self.source.topic.trim().is_empty() {
            return bad("source.topic", "expected a topic name");
        }
        if self.sink.topic.trim().is_empty() {
            return bad("sink.topic", "expected a topic name");
        }
        if self.delivery == Delivery::ExactlyOnce && !self.state.enabled {
            return bad(
                "delivery",
                "exactly_once needs durable state (state.enabled = true): the state is committed in the same transaction as the forecasts",
            );
        }
        if self.decode.format == PayloadFormat::Avro || self.sink.format == PayloadFormat::Avro {
            match self.registry.url.as_deref().map(str::trim) {
                None | Some("") => {
                    return bad(
                        "registry.url",
                        "an Avro format (decode.format or sink.format) needs a schema registry: set registry.url, e.g. \"http://127.0.0.1:8081/apis/ccompat/v7\" (or STREAMCAST_SCHEMA_REGISTRY)",
                    )
                }
                Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    return bad(
                        "registry.url",
                        &format!("expected an http:// or https:// URL, got {u:?}"),
                    )
                }
                Some(_) => {}
            }
            if self.registry.timeout.is_zero() {
                return bad(
                    "registry.timeout",
                    "expected a positive duration, e.g. \"10s\"",
                );
            }
        }
        if self.state.commit_interval.is_zero() {
            return bad(
                "state.commit_interval",
                "expected a positive duration, e.g. \"1s\"",
            );
        }
        if self.delivery == Delivery::ExactlyOnce {
            // A checkpoint commits the open transaction: the longest wait
            // between two must leave the broker's transaction timeout room.
            let timeout_ms: u64 = self
                .sink
                .librdkafka
                .0
                .get("transaction.timeout.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(20_000);
            let longest = self
                .state
                .commit_interval
                .max(self.state.backlog_commit_interval);
            if longest.as_millis() as u64 * 2 > timeout_ms {
                return bad(
                    "state.backlog_commit_interval",
                    &format!(
                        "exactly once commits a transaction at every checkpoint: the longest interval ({} ms, of commit_interval and backlog_commit_interval) must be at most half of transaction.timeout.ms ({timeout_ms} ms)",
                        longest.as_millis()
                    ),
                );
            }
        }
        if let Some(c) = self.choice.candidates.iter().find(|c| {
            !CHOICE_BUILTIN.contains(&c.as_str()) && !crate::baselines::NAMES.contains(&c.as_str())
        }) {
            return bad(
                "choice.candidates",
                &format!(
                    "unknown candidate {c:?}; expected one of {} or a forecaster of {}",
                    CHOICE_BUILTIN.join(", "),
                    crate::baselines::NAMES.join(", ")
                ),
            );
        }
        if self.choice.refit_every == 0 {
            return bad("choice.refit_every", "expected at least 1");
        }
        if self.choice.enabled && !self.choice.candidates.iter().any(|c| c == "network") {
            return bad("choice.candidates", "expected \"network\" among them");
        }
        if self.choice.enabled && !self.choice.candidates.contains(&self.choice.start) {
            return bad("choice.start", "expected one of choice.candidates");
        }
        if let Some(c) = self
            .choice
            .serve
            .iter()
            .find(|c| !self.choice.candidates.contains(c))
        {
            return bad(
                "choice.serve",
                &format!("{c:?} is not one of choice.candidates"),
            );
        }
        if self.choice.enabled
            && !self.choice.serve.is_empty()
            && !self.choice.serve.contains(&self.choice.start)
        {
            return bad("choice.serve", "expected choice.start among them");
        }
        if !self.choice.guard_to.is_empty()
            && !self.choice.candidates.contains(&self.choice.guard_to)
        {
            return bad("choice.guard_to", "expected one of choice.candidates");
        }
        // Written as ranges so that NaN fails them too.
        let ok = (0.0..1.0).contains(&self.choice.margin)
            && (1.0..=f64::MAX).contains(&self.choice.half_life)
            && self.choice.ses_alpha > 0.0
            && self.choice.ses_alpha <= 1.0
            && (0.0..=16.0).contains(&self.choice.weight_power)
            && (self.choice.fast_half_life == 0.0
                || (1.0..=f64::MAX).contains(&self.choice.fast_half_life))
            && (1.0..=f64::MAX).contains(&self.choice.guard_ratio);
        if !ok {
            return bad(
                "choice",
                "expected margin in [0, 1), half_life >= 1, ses_alpha in (0, 1], weight_power in [0, 16], fast_half_life 0 or >= 1 and guard_ratio >= 1",
            );
        }
        if let Some(t) = &self.sink.accuracy_topic {
            if t.trim().is_empty() {
                return bad(
                    "sink.accuracy_topic",
                    "expected a topic name (or leave it out)",
                );
            }
            if !self.score.enabled {
                return bad(
                    "sink.accuracy_topic",
                    "accuracy records come from live scoring: set score.enabled = true",
                );
            }
        }
        if self.sink.dead_letter_topic.trim().is_empty() {
            return bad("sink.dead_letter_topic", "expected a topic name");
        }
        if self.sink.topic == self.source.topic {
            return bad("sink.topic", "must differ from source.topic");
        }
        if self.kafka.replication_factor < 1 {
            return bad("kafka.replication_factor", "expected at least 1");
        }
        if self.source.partitions < 1 || self.sink.partitions < 1 {
            return bad("partitions", "expected at least 1");
        }
        if self.source.max_batch == 0 {
            return bad("source.max_batch", "expected at least 1");
        }
        if self.decode.value_fields.is_empty() {
            return bad("decode.value_fields", "expected at least one value field");
        }
        if self.window.size.as_millis() < 1 {
            return bad("window.size", "expected a window of at least 1ms");
        }
        if let Some(slide) = self.window.slide {
            if slide.as_millis() < 1 || slide > self.window.size {
                return bad("window.slide", "expected 1ms <= slide <= size");
            }
            if !self
                .window
                .size
                .as_millis()
                .is_multiple_of(slide.as_millis())
            {
                return bad(
                    "window.slide",
                    "expected the window size to be a whole multiple of the slide",
                );
            }
        }
        if let Some(s) = self
            .score
            .steps
            .iter()
            .find(|&&s| s == 0 || s as i64 > self.model.horizon)
        {
            return bad(
                "score.steps",
                &format!("step {s} is outside the horizon 1..={}", self.model.horizon),
            );
        }
        if self.score.calibration_window < 10 {
            // Below 10 scores an 80% band can hardly be calibrated at all.
            return bad("score.calibration_window", "expected at least 10");
        }
        if self.decode.max_key_bytes == 0 {
            return bad("decode.max_key_bytes", "expected at least 1");
        }
        if self.decode.max_payload_bytes == 0 {
            return bad("decode.max_payload_bytes", "expected at least 1");
        }
        if !(self.decode.max_abs_value > 0.0 && self.decode.max_abs_value.is_finite()) {
            return bad("decode.max_abs_value", "expected a positive finite number");
        }
        if self.window.max_keys == 0 {
            return bad("window.max_keys", "expected at least 1");
        }
        if let Some(h) = &self.model.hybrid {
            if let Err(msg) = h.validate() {
                return bad("model.hybrid", &msg);
            }
        }
        if self.model.hidden < 1 || self.model.layers < 1 || self.model.horizon < 1 {
            return bad("model", "hidden, layers and horizon must be at least 1");
        }
        let q = &self.model.quantiles;
        if !q.is_empty()
            && (q.iter().any(|x| !(*x > 0.0 && *x < 1.0))
                || q.windows(2).any(|w| w[0] >= w[1])
                || !q.contains(&0.5))
        {
            return bad(
                "model.quantiles",
                "expected increasing values in (0, 1) that include 0.5",
            );
        }
        if self.model.season_windows < 1 {
            return bad("model.season_windows", "expected at least 1");
        }
        if self.model.scaler == ScalerKind::Ewm
            && !(self.model.scaler_half_life >= 1.0 && self.model.scaler_half_life.is_finite())
        {
            return bad(
                "model.scaler_half_life",
                "expected a finite number of windows, at least 1",
            );
        }
        let attends = self.model.cell == CellKind::Transformer || self.model.attention;
        if attends && !(1..=4096).contains(&self.model.attention_window) {
            return bad("model.attention_window", "expected 1..=4096");
        }
        if self.model.cell == CellKind::Transformer {
            let heads = self.model.attention_heads;
            if heads < 1 || self.model.hidden % heads != 0 {
                return bad(
                    "model.attention_heads",
                    "expected at least 1 and a divisor of model.hidden",
                );
            }
            if self.model.attention {
                return bad(
                    "model.attention",
                    "the transformer cell is attention already: use attention = true with a recurrent cell",
                );
            }
        }
        // Temporal attention goes with either head (the seq2seq decoder's
        // steps attend with their own state as the query); dense
        // connections with temporal attention (over the concatenation of
        // every layer) and the seq2seq decoder (started from a projection
        // of it); output-to-output with every cell.
        if self.model.connections != Connections::None && self.model.cell == CellKind::Transformer {
            return bad(
                "model.connections",
                "skip and dense connections join recurrent layers; the transformer has its own residuals",
            );
        }
        if self.model.threads < 1 {
            return bad("model.threads", "expected at least 1");
        }
        if self.compute.shards < 1 {
            return bad("compute.shards", "expected at least 1");
        }
        if self.compute.shards > 1 && !self.state.enabled {
            return bad(
                "compute.shards",
                "more than one shard needs durable state (state.enabled = true): only there is every key bound to one input partition, hence to one shard",
            );
        }
        if self.compute.shards > 1 && self.retrain.shadow_windows > 0 {
            return bad(
                "compute.shards",
                "a shadow duel (retrain.shadow_windows > 0) runs on one compute thread: set compute.shards = 1 or retrain.shadow_windows = 0",
            );
        }
        if self.retrain.enabled && !self.archive.enabled {
            return bad(
                "retrain.enabled",
                "retraining learns from the archive: set archive.enabled = true",
            );
        }
        if let Some(t) = self.train.point_tau {
            if !(t > 0.0 && t < 1.0) {
                return bad(
                    "train.point_tau",
                    "expected a quantile strictly between 0 and 1",
                );
            }
        }
        if self.train.context < 2 || self.train.tbptt < 1 || self.train.batch_size < 1 {
            return bad(
                "train",
                "context >= 2, tbptt >= 1 and batch_size >= 1 expected",
            );
        }
        Ok(())
    }

    /// A copy fit to print or log: the values of secret librdkafka keys
    /// (in `[kafka]`, `[source]` and `[sink]`) replaced by `***`.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        c.kafka.librdkafka = c.kafka.librdkafka.redacted();
        c.source.librdkafka = c.source.librdkafka.redacted();
        c.sink.librdkafka = c.sink.librdkafka.redacted();
        c
    }

    /// Target lags fed to the network (see `ModelConfig::lags`).
    pub fn lags(&self) -> i64 {
        self.model.lags.unwrap_or(self.model.season_windows) as i64
    }

    pub fn group_id(&self) -> String {
        self.source
            .group_id
            .clone()
            .unwrap_or_else(|| format!("streamcast-{}", self.name))
    }

    /// The changelog topic of the pipeline's state.
    pub fn state_topic(&self) -> String {
        self.state
            .topic
            .clone()
            .unwrap_or_else(|| format!("{}-state", self.group_id()))
    }

    /// This instance's name (see `StateConfig::instance`).
    pub fn instance(&self) -> String {
        self.state
            .instance
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "0".into())
    }

    pub fn models_dir(&self) -> PathBuf {
        self.retrain
            .models_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".state/models").join(&self.name))
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.archive
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".state/archive").join(&self.name))
    }

    pub fn size_ms(&self) -> i64 {
        self.window.size.as_millis() as i64
    }

    pub fn slide_ms(&self) -> i64 {
        self.window.slide.unwrap_or(self.window.size).as_millis() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
[source]
topic = "in"
[window]
size = "5m"
[sink]
topic = "out"
dead_letter_topic = "dlq"
"#;

    fn parse(s: &str) -> Result<PipelineConfig> {
        PipelineConfig::parse(s, Path::new("pipelines/t.toml"))
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.size_ms(), 300_000);
        assert_eq!(c.slide_ms(), 300_000);
        assert_eq!(c.group_id(), "streamcast-t");
        assert_eq!(c.decode.value_fields, vec!["value".to_string()]);
        assert_eq!(c.model.cell, CellKind::Lstm);
    }

    #[test]
    fn unknown_field_names_file_and_field() {
        let err = parse(&GOOD.replace("size = \"5m\"", "size = \"5m\"\nsizze = 3")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pipelines/t.toml"), "{msg}");
        assert!(msg.contains("window"), "{msg}");
        assert!(msg.contains("sizze"), "{msg}");
    }

    #[test]
    fn wrong_type_names_field_and_expectation() {
        let err = parse(&GOOD.replace("size = \"5m\"", "size = \"5 parsecs\"")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("window.size"), "{msg}");
        assert!(msg.contains("duration"), "{msg}");
        let err = parse(&GOOD.replace("[sink]", "[model]\nhidden = \"many\"\n[sink]")).unwrap_err();
        assert!(err.to_string().contains("model.hidden"), "{err}");
    }

    #[test]
    fn missing_topic_is_named() {
        let err = parse(&GOOD.replace("topic = \"out\"\n", "")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sink") && msg.contains("topic"), "{msg}");
    }

    /// Regression (hardening): `size = 1e30` panicked at start.
    #[test]
    fn absurd_durations_are_errors_not_panics() {
        let err = parse(&GOOD.replace("size = \"5m\"", "size = 1e30")).unwrap_err();
        assert!(err.to_string().contains("window.size"), "{err}");
        let err = parse(&GOOD.replace("size = \"5m\"", "size = \"5m\"\nkey_ttl = \"1000000000d\""))
            .unwrap_err();
        assert!(err.to_string().contains("window.key_ttl"), "{err}");
    }

    /// The regime-change guard's settings: off by default, and a
    /// half-life below one window, a ratio below 1 or a target outside
    /// the candidates are refused with the field named.
    #[test]
    fn the_choice_guard_settings_are_checked() {
        let choice = |lines: &str| {
            parse(&GOOD.replace(
                "[sink]",
                &format!("[choice]\nenabled = true\n{lines}\n[sink]"),
            ))
        };
        let c = choice("").expect("defaults");
        assert_eq!(c.choice.fast_half_life, 0.0, "off by default");
        assert!(c.choice.candidates.iter().any(|c| c == "smedian"));
        choice("fast_half_life = 12\nguard_ratio = 1.5\nguard_to = \"ses_sa\"").expect("valid");
        for bad in [
            "fast_half_life = 0.5",
            "fast_half_life = -1",
            "guard_ratio = 0.9",
            "guard_ratio = nan",
        ] {
            let err = choice(bad).unwrap_err();
            assert!(err.to_string().contains("guard_ratio >= 1"), "{bad}: {err}");
        }
        let err = choice("guard_to = \"arima\"").unwrap_err();
        assert!(err.to_string().contains("choice.guard_to"), "{err}");
    }

    #[test]
    fn slide_must_divide_size() {
        let err =
            parse(&GOOD.replace("size = \"5m\"", "size = \"5m\"\nslide = \"2m\"")).unwrap_err();
        assert!(err.to_string().contains("window.slide"), "{err}");
    }

    #[test]
    fn exactly_once_checkpoints_leave_the_transaction_timeout_room() {
        let eos = |state: &str, sink: &str| {
            parse(&format!(
                "delivery = \"exactly_once\"\n{}{sink}\n",
                GOOD.replace("[sink]", &format!("[state]\n{state}\n[sink]"))
            ))
        };
        eos("", "").expect("the defaults (1 s, 5 s in a backlog; 20 s timeout)");
        let err = eos("backlog_commit_interval = \"15s\"", "").unwrap_err();
        assert!(
            err.to_string().contains("state.backlog_commit_interval"),
            "{err}"
        );
        let err = eos("commit_interval = \"12s\"", "").unwrap_err();
        assert!(err.to_string().contains("transaction.timeout.ms"), "{err}");
        eos(
            "backlog_commit_interval = \"15s\"",
            "[sink.librdkafka]\n\"transaction.timeout.ms\" = \"60000\"",
        )
        .expect("a longer transaction timeout allows it");
        // At least once there is no transaction to time out.
        parse(&GOOD.replace(
            "[sink]",
            "[state]\nbacklog_commit_interval = \"30s\"\n[sink]",
        ))
        .expect("at least once");
    }

    #[test]
    fn loss_and_device_are_typed_and_named_when_wrong() {
        let c = parse(&GOOD.replace(
            "[sink]",
            "[train]\nloss = \"mae\"\n[model]\ndevice = \"cuda\"\n[sink]",
        ))
        .expect("valid");
        assert_eq!(c.train.loss, PointLoss::Mae);
        assert_eq!(c.model.device, DeviceKind::Cuda);
        let err = parse(&GOOD.replace("[sink]", "[train]\nloss = \"huber\"\n[sink]")).unwrap_err();
        assert!(err.to_string().contains("train.loss"), "{err}");
        let err = parse(&GOOD.replace("[sink]", "[model]\ndevice = \"tpu\"\n[sink]")).unwrap_err();
        assert!(err.to_string().contains("model.device"), "{err}");
    }
    fn lookup(name: &str) -> std::result::Result<String, std::env::VarError> {
        match name {
            "SC_PW" => Ok("s3cret".into()),
            "SC_USER" => Ok("streamcast".into()),
            "SC_EMPTY" => Ok(String::new()),
            _ => Err(std::env::VarError::NotPresent),
        }
    }

    #[test]
    fn env_references_are_substituted() {
        assert_eq!(substitute_env("${SC_PW}", lookup).unwrap(), "s3cret");
        assert_eq!(
            substitute_env("a-${SC_USER}:${SC_PW}$", lookup).unwrap(),
            "a-streamcast:s3cret$"
        );
        assert_eq!(substitute_env("x${SC_EMPTY}y", lookup).unwrap(), "xy");
        assert_eq!(
            substitute_env("$${SC_PW} $5", lookup).unwrap(),
            "${SC_PW} $5"
        );
        assert_eq!(substitute_env("plain", lookup).unwrap(), "plain");
        let err = substitute_env("${SC_NOPE}", lookup).unwrap_err();
        assert!(err.contains("SC_NOPE") && err.contains("not set"), "{err}");
        assert!(substitute_env("${SC_PW", lookup)
            .unwrap_err()
            .contains("unclosed"));
        assert!(substitute_env("${1X}", lookup).is_err());
        assert!(substitute_env("${}", lookup).is_err());
    }

    /// The whole path: `${...}` in any of the three librdkafka tables is
    /// replaced at load time; a missing variable names field and variable.
    #[test]
    fn librdkafka_values_come_from_the_environment() {
        // Names unique to this test: the process environment is shared.
        std::env::set_var("STREAMCAST_TEST_CFG_PW", "hunter2");
        std::env::set_var("STREAMCAST_TEST_CFG_USER", "svc");
        let c = parse(&format!(
            "{GOOD}\n[kafka]\nreplication_factor = 3\n[kafka.librdkafka]\n\
             \"security.protocol\" = \"SASL_SSL\"\n\
             \"sasl.username\" = \"${{STREAMCAST_TEST_CFG_USER}}\"\n\
             \"sasl.password\" = \"${{STREAMCAST_TEST_CFG_PW}}\"\n\
             [source.librdkafka]\n\"ssl.key.password\" = \"${{STREAMCAST_TEST_CFG_PW}}\"\n"
        ))
        .expect("valid");
        assert_eq!(c.kafka.replication_factor, 3);
        assert_eq!(c.kafka.librdkafka["sasl.username"], "svc");
        assert_eq!(c.kafka.librdkafka["sasl.password"], "hunter2");
        assert_eq!(c.source.librdkafka["ssl.key.password"], "hunter2");

        let err = parse(&format!(
            "{GOOD}\n[kafka.librdkafka]\n\"sasl.password\" = \"${{STREAMCAST_TEST_CFG_UNSET}}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("pipelines/t.toml"), "{err}");
        assert!(err.contains("kafka.librdkafka.sasl.password"), "{err}");
        assert!(err.contains("STREAMCAST_TEST_CFG_UNSET"), "{err}");

        let err =
            parse(&GOOD.replace("[sink]", "[kafka]\nreplication_factor = 0\n[sink]")).unwrap_err();
        assert!(
            err.to_string().contains("kafka.replication_factor"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted_when_printed_or_logged() {
        let mut c = parse(GOOD).expect("valid");
        assert_eq!(c.kafka.replication_factor, 1, "default");
        c.kafka.librdkafka = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.username", "svc"),
            ("sasl.password", "hunter2"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
            ("sasl.oauthbearer.client.secret", "hunter2"),
        ]
        .into_iter()
        .collect();
        c.source.librdkafka = [("ssl.keystore.password", "hunter2")].into_iter().collect();
        c.sink.librdkafka = [("SSL.Key.Password", "hunter2")].into_iter().collect();

        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("BEGIN"),
            "{debug}"
        );
        assert!(
            debug.contains("SASL_SSL") && debug.contains("svc"),
            "{debug}"
        );

        let printed = toml::to_string_pretty(&c.redacted()).unwrap();
        assert!(
            !printed.contains("hunter2") && !printed.contains("BEGIN"),
            "{printed}"
        );
        assert!(printed.contains(r#""sasl.password" = "***""#), "{printed}");
        assert!(printed.contains(r#""sasl.username" = "svc""#), "{printed}");
        assert!(printed.contains("replication_factor = 1"), "{printed}");
        // The original keeps its values: it is what the clients get.
        assert_eq!(c.kafka.librdkafka["sasl.password"], "hunter2");
    }

    #[test]
    fn avro_formats_need_a_registry_url() {
        let c = parse(&GOOD.replace(
            "dead_letter_topic = \"dlq\"",
            "dead_letter_topic = \"dlq\"\nformat = \"avro\"",
        ))
        .map(|mut c| {
            c.registry.url = None;
            c
        });
        // Parsing may have taken the URL from STREAMCAST_SCHEMA_REGISTRY;
        // validation is checked on the config without it.
        let mut c = match c {
            Ok(c) => c,
            Err(e) => {
                assert!(e.to_string().contains("registry.url"), "{e}");
                return;
            }
        };
        assert_eq!(c.sink.format, PayloadFormat::Avro);
        assert_eq!(c.decode.format, PayloadFormat::Json);
        let path = Path::new("pipelines/t.toml");
        let err = c.validate(path).unwrap_err().to_string();
        assert!(err.contains("registry.url"), "{err}");
        c.registry.url = Some("127.0.0.1:8081".into());
        let err = c.validate(path).unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");
        c.registry.url = Some("http://127.0.0.1:8081/apis/ccompat/v7".into());
        c.validate(path).expect("valid with a registry");
        // JSON both ways needs none.
        c.sink.format = PayloadFormat::Json;
        c.registry.url = None;
        c.validate(path).expect("json needs no registry");
        let err =
            parse(&GOOD.replace("[window]", "[decode]\nformat = \"xml\"\n[window]")).unwrap_err();
        assert!(err.to_string().contains("decode.format"), "{err}");
    }

    /// Every pipeline the project ships loads and validates (they are what
    /// the README and BENCHMARKS.md tell users to run), and the NAB ones
    /// run the configuration chosen for spiky streams.
    #[test]
    fn the_shipped_pipelines_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("pipelines/") {
            let path = entry.expect("dir entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let c = PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            if c.name.starts_with("nab_") {
                assert_eq!(c.model.head, Head::Direct, "{}", path.display());
                assert_eq!(c.train.loss, PointLoss::Mae, "{}", path.display());
                assert!(c.model.hybrid.is_some(), "{}", path.display());
                assert!(c.choice.enabled, "{}", path.display());
            }
            n += 1;
        }
        assert!(n >= 5, "only {n} pipelines in {}", dir.display());
    }
}
