//! Telemetry: structured logs (tracing) and Prometheus metrics.
//!
//! Metric names (all prefixed `streamcast_`): `events_decoded_total`,
//! `dead_letters_total{kind}`, `late_events_total`, `windows_closed_total`,
//! `keys_ended_total{reason}`, `live_keys`, `forecasts_total`,
//! `records_published_total{topic}`, `delivery_retries_total`.

use crate::config::TelemetryConfig;
use crate::error::{Error, Result};

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

/// Serves `/metrics` on the configured address, if any. Needs a tokio runtime.
pub fn serve_prometheus(cfg: &TelemetryConfig) -> Result<()> {
    let Some(addr) = &cfg.prometheus_listen else {
        return Ok(());
    };
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| Error::Model(format!("telemetry.prometheus_listen {addr:?}: {e}")))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(sock)
        .install()
        .map_err(|e| Error::Model(format!("cannot serve Prometheus metrics on {addr}: {e}")))?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}
