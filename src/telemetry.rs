//! Telemetry: structured logs (tracing) and Prometheus metrics.
//!
//! Every metric name is defined here, once, with what it counts; stages
//! record through these constants (`metrics::counter!(telemetry::X)`), so
//! this list is the complete catalogue (the README's metrics table mirrors it).

use crate::config::TelemetryConfig;
use crate::error::{Error, Result};

/// Messages decoded into events (counter).
pub const EVENTS_DECODED: &str = "streamcast_events_decoded_total";
/// Records sent to the dead letters, by `kind` (counter).
pub const DEAD_LETTERS: &str = "streamcast_dead_letters_total";
/// Events behind the watermark whose window had closed (counter).
pub const LATE_EVENTS: &str = "streamcast_late_events_total";
/// Windows closed, all keys (counter).
pub const WINDOWS_CLOSED: &str = "streamcast_windows_closed_total";
/// Keys whose series ended, by `reason` (gap, ttl, capacity) (counter).
pub const KEYS_ENDED: &str = "streamcast_keys_ended_total";
/// Keys with open windows (gauge).
pub const LIVE_KEYS: &str = "streamcast_live_keys";
/// Forecasts made (counter).
pub const FORECASTS: &str = "streamcast_forecasts_total";
/// Pause of the forecast stage during a hot swap (histogram, seconds).
pub const HOT_SWAP_PAUSE: &str = "streamcast_hot_swap_pause_seconds";
/// From a window's close (the watermark passed its end) to the broker's
/// ack of its forecast (histogram, seconds).
pub const FORECAST_LATENCY: &str = "streamcast_forecast_latency_seconds";
/// Records acknowledged by the broker, by `topic` (counter).
pub const RECORDS_PUBLISHED: &str = "streamcast_records_published_total";
/// Failed deliveries retried (counter).
pub const DELIVERY_RETRIES: &str = "streamcast_delivery_retries_total";
/// Schema registry requests that failed and are retried (Avro formats).
pub const REGISTRY_RETRIES: &str = "streamcast_registry_retries_total";
/// Archive files completed (counter).
pub const ARCHIVE_FILES: &str = "streamcast_archive_files_total";
/// Archive files deleted by retention (counter).
pub const ARCHIVE_FILES_DELETED: &str = "streamcast_archive_files_deleted_total";
/// Window batches the archive writer could not take (queue full) (counter).
pub const ARCHIVE_DROPPED: &str = "streamcast_archive_dropped_total";
/// Archive write errors (counter).
pub const ARCHIVE_ERRORS: &str = "streamcast_archive_errors_total";
/// Seconds to restore one partition's state from the changelog (histogram).
pub const STATE_RESTORE_SECONDS: &str = "streamcast_state_restore_seconds";
/// Checkpoints committed (state and offsets together) (counter).
pub const CHECKPOINTS: &str = "streamcast_checkpoints_total";
/// Seconds from a checkpoint's start to its commit (histogram).
pub const CHECKPOINT_SECONDS: &str = "streamcast_checkpoint_seconds";
/// Changelog records written, tombstones included (counter).
pub const STATE_RECORDS: &str = "streamcast_state_records_total";
/// Changelog bytes written (counter).
pub const STATE_BYTES: &str = "streamcast_state_bytes_total";
/// Events of a key that arrived on another input partition than the key's
/// first (dead-lettered, `partition_conflict`) (counter).
pub const PARTITION_CONFLICTS: &str = "streamcast_partition_conflicts_total";
/// Retraining rounds, by `outcome` (promoted, kept, failed, panicked)
/// (counter).
pub const RETRAIN_RUNS: &str = "streamcast_retrain_runs_total";
/// Starts that set the registry's champion aside because it does not fit
/// the pipeline (another feature set, horizon, ...) (counter).
pub const CHAMPION_SET_ASIDE: &str = "streamcast_champion_set_aside_total";

/// Messages behind the broker's high watermark, per input `partition`
/// this instance reads (gauge).
pub const PARTITION_LAG: &str = "streamcast_partition_lag";
/// Wall clock minus the watermark, seconds (gauge): how far event time
/// trails real time.
pub const WATERMARK_DELAY: &str = "streamcast_watermark_delay_seconds";
/// Bytes of outputs waiting for the broker's acknowledgement (gauge; see
/// `sink.max_in_flight_bytes`).
pub const IN_FLIGHT_BYTES: &str = "streamcast_in_flight_bytes";

/// Live scoring (see `score`), by `model_version`, `source`, `step`:
/// forecasts scored against their actual window (counter) ...
pub const LIVE_SCORED: &str = "streamcast_live_scored_total";
/// ... the sum of their absolute errors (a gauge that only grows) ...
pub const LIVE_ABS_ERROR_SUM: &str = "streamcast_live_abs_error_sum";
/// ... of their sMAPE terms (200 |y - f| / (|y| + |f|)) ...
pub const LIVE_SMAPE_SUM: &str = "streamcast_live_smape_sum";
/// ... those with a seasonal scale (counter) ...
pub const LIVE_SCALED_SCORED: &str = "streamcast_live_scaled_scored_total";
/// ... and the sum of their scaled errors (MASE terms).
pub const LIVE_SCALED_ERROR_SUM: &str = "streamcast_live_scaled_error_sum";
/// With quantiles: forecasts whose actual fell inside the lowest..highest
/// quantile band (counter; coverage = this / scored) ...
pub const LIVE_COVERED: &str = "streamcast_live_covered_total";
/// ... and the sum of their pinball losses (mean over the quantiles).
pub const LIVE_PINBALL_SUM: &str = "streamcast_live_pinball_sum";

/// Every metric name above, for docs and tests.
pub const ALL: &[&str] = &[
    EVENTS_DECODED,
    DEAD_LETTERS,
    LATE_EVENTS,
    WINDOWS_CLOSED,
    KEYS_ENDED,
    LIVE_KEYS,
    FORECASTS,
    HOT_SWAP_PAUSE,
    FORECAST_LATENCY,
    RECORDS_PUBLISHED,
    DELIVERY_RETRIES,
    REGISTRY_RETRIES,
    ARCHIVE_FILES,
    ARCHIVE_FILES_DELETED,
    ARCHIVE_DROPPED,
    ARCHIVE_ERRORS,
    STATE_RESTORE_SECONDS,
    CHECKPOINTS,
    CHECKPOINT_SECONDS,
    STATE_RECORDS,
    STATE_BYTES,
    PARTITION_CONFLICTS,
    RETRAIN_RUNS,
    CHAMPION_SET_ASIDE,
    PARTITION_LAG,
    WATERMARK_DELAY,
    IN_FLIGHT_BYTES,
    LIVE_SCORED,
    LIVE_ABS_ERROR_SUM,
    LIVE_SMAPE_SUM,
    LIVE_SCALED_SCORED,
    LIVE_SCALED_ERROR_SUM,
    LIVE_COVERED,
    LIVE_PINBALL_SUM,
];

/// Counters and gauges that exist from the start, at zero, so a scrape
/// (and a dashboard) sees every series before its first event.
fn register_all() {
    for name in [
        EVENTS_DECODED,
        LATE_EVENTS,
        WINDOWS_CLOSED,
        FORECASTS,
        DELIVERY_RETRIES,
        ARCHIVE_FILES,
        ARCHIVE_FILES_DELETED,
        ARCHIVE_DROPPED,
        ARCHIVE_ERRORS,
        CHECKPOINTS,
        STATE_RECORDS,
        STATE_BYTES,
        PARTITION_CONFLICTS,
        CHAMPION_SET_ASIDE,
    ] {
        metrics::counter!(name).increment(0);
    }
    for kind in DEAD_LETTER_KINDS {
        metrics::counter!(DEAD_LETTERS, "kind" => *kind).increment(0);
    }
    for reason in ["gap", "ttl", "capacity"] {
        metrics::counter!(KEYS_ENDED, "reason" => reason).increment(0);
    }
    for outcome in ["promoted", "shadow", "kept", "failed", "panicked"] {
        metrics::counter!(RETRAIN_RUNS, "outcome" => outcome).increment(0);
    }
    for name in [LIVE_KEYS, IN_FLIGHT_BYTES] {
        metrics::gauge!(name).set(0.0);
    }
}

/// Every `kind` label of [`DEAD_LETTERS`] (`decode::DeadLetterKind::as_str`).
const DEAD_LETTER_KINDS: &[&str] = &[
    "malformed",
    "missing_field",
    "bad_key",
    "bad_timestamp",
    "bad_value",
    "too_large",
    "late",
    "partition_conflict",
    "evicted",
    "bad_wire_format",
    "unknown_schema",
    "incompatible_schema",
    "bad_avro",
];

/// Lets a repeated log line through once per `every`, counting the rest,
/// so an outage (every poll failing) reads as a few lines, not thousands.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: std::time::Duration) -> Self {
        Throttle {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed since the last line)` when this one should be logged.
    pub fn pass(&self) -> Option<u64> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match g.0 {
            Some(t) if now.duration_since(t) < self.every => {
                g.1 += 1;
                None
            }
            _ => {
                let suppressed = g.1;
                *g = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`). `json` switches to
/// one JSON object per line for log shippers.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the Prometheus recorder when anything will read it: served on
/// `telemetry.prometheus_listen` if set, and returned for the HTTP API's
/// `/metrics` when `for_api`. Needs a tokio runtime.
pub fn install_metrics(
    cfg: &TelemetryConfig,
    for_api: bool,
) -> Result<Option<metrics_exporter_prometheus::PrometheusHandle>> {
    use metrics_exporter_prometheus::PrometheusBuilder;
    let failed = |e: metrics_exporter_prometheus::BuildError| {
        Error::Telemetry(format!("cannot install the Prometheus recorder: {e}"))
    };
    let Some(addr) = &cfg.prometheus_listen else {
        if !for_api {
            return Ok(None);
        }
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .map_err(failed)?;
        register_all();
        // What `build` would do for a listener: keep histograms bounded.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        return Ok(Some(handle));
    };
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| {
        Error::config(
            "<pipeline>",
            "telemetry.prometheus_listen",
            format!("{addr:?} is not a socket address: {e}"),
        )
    })?;
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(sock)
        .build()
        .map_err(|e| Error::Telemetry(format!("cannot serve Prometheus metrics on {addr}: {e}")))?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| Error::Telemetry(format!("cannot install the Prometheus recorder: {e}")))?;
    tokio::spawn(exporter);
    register_all();
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(Some(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registered labels are the decoder's kinds, all of them.
    #[test]
    fn dead_letter_kinds_match_the_decoder() {
        use crate::decode::DeadLetterKind as K;
        let kinds = [
            K::Malformed,
            K::MissingField,
            K::BadKey,
            K::BadTimestamp,
            K::BadValue,
            K::TooLarge,
            K::Late,
            K::PartitionConflict,
            K::Evicted,
            K::BadWireFormat,
            K::UnknownSchema,
            K::IncompatibleSchema,
            K::BadAvro,
        ];
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, DEAD_LETTER_KINDS);
    }

    #[test]
    fn metric_names_are_prefixed_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for name in ALL {
            assert!(name.starts_with("streamcast_"), "{name}");
            assert!(seen.insert(name), "{name} twice");
        }
    }
}
