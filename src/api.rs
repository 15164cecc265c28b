//! The HTTP API of a running job (`[api] listen`; off by default): what the
//! operator asks a forecasting job, answered in JSON.
//!
//! - `GET /forecast/<key>`: the latest forecast of a key, the record as
//!   published (percent-encode the key). 404 when there is none.
//! - `GET /keys?prefix=&limit=`: keys with a forecast (sorted; default
//!   limit 1,000).
//! - `GET /accuracy/<key>`: the key's live scores per scored horizon step
//!   (MAE, sMAPE, MASE over its forecasts scored so far; see `score`).
//! - `GET /models`: the registry's versions, the champion marked.
//! - `GET /health/live`: 200 while the process serves.
//! - `GET /health/ready`: 200 when partitions are assigned, their state is
//!   restored (durable state) and each is at most `api.ready_max_lag`
//!   messages behind; else 503. The body says which condition fails.
//! - `GET /metrics`: Prometheus text (the same registry as
//!   `telemetry.prometheus_listen`).
//!
//! Invariants: the API only reads. Handlers never block on the pipeline:
//! the sink records published forecasts into a map (exactly once: at their
//! transaction's commit, so the API never shows a forecast that was later
//! aborted), the compute thread records which partitions it has restored,
//! and lag comes from librdkafka's cached positions and watermarks (no
//! network call). It runs on the job's tokio runtime (hyper, HTTP/1.1);
//! there is no authentication, so bind it to localhost unless something in
//! front guards it.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::Consumer;

use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::source::kafka::{Assignment, Source};

/// What the API reads; shared with the sink and the compute thread.
pub struct ApiState {
    /// Latest published forecast per key, as its JSON record.
    latest: RwLock<HashMap<String, Arc<str>>>,
    consumer: Arc<Source>,
    assignment: Arc<Assignment>,
    topic: String,
    /// Partitions (with their generation) the compute thread has restored.
    restored: Mutex<BTreeMap<i32, u64>>,
    durable: bool,
    ready_max_lag: u64,
    models_dir: PathBuf,
    metrics: Option<PrometheusHandle>,
    /// The live scorer (set by the compute thread when `score.enabled`).
    scorer: std::sync::OnceLock<Arc<Mutex<crate::score::Scorer>>>,
}

impl ApiState {
    pub fn new(
        cfg: &PipelineConfig,
        (consumer, assignment): (Arc<Source>, Arc<Assignment>),
        metrics: Option<PrometheusHandle>,
    ) -> Arc<Self> {
        Arc::new(ApiState {
            latest: RwLock::new(HashMap::new()),
            consumer,
            assignment,
            topic: cfg.source.topic.clone(),
            restored: Mutex::new(BTreeMap::new()),
            durable: cfg.state.enabled,
            ready_max_lag: cfg.api.ready_max_lag,
            models_dir: cfg.models_dir(),
            metrics,
            scorer: std::sync::OnceLock::new(),
        })
    }

    /// The compute thread's live scorer, for `/accuracy/<key>`.
    pub fn set_scorer(&self, scorer: Arc<Mutex<crate::score::Scorer>>) {
        let _ = self.scorer.set(scorer);
    }

    /// Forecasts now visible to readers (acknowledged; exactly once:
    /// committed).
    /// `records` are (key, the forecast's JSON as published).
    pub fn published(&self, records: &[(String, Arc<str>)]) {
        if records.is_empty() {
            return;
        }
        let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
        for (k, v) in records {
            latest.insert(k.clone(), v.clone());
        }
    }

    /// The compute thread has restored these partitions (and drops others).
    pub fn restored(&self, owned: &BTreeMap<i32, u64>) {
        *self.restored.lock().unwrap_or_else(|e| e.into_inner()) = owned.clone();
    }

    /// Whether the job is ready, and the facts behind the answer.
    fn readiness(&self) -> (bool, serde_json::Value) {
        let owned = self.assignment.owned();
        let restored = self.restored.lock().map(|r| r.clone()).unwrap_or_default();
        let lag = self.lag(&owned);
        let assigned = !owned.is_empty();
        let all_restored = !self.durable || owned.iter().all(|(p, g)| restored.get(p) == Some(g));
        let behind: Vec<i32> = lag
            .iter()
            .filter(|(_, l)| l.is_none_or(|l| l > self.ready_max_lag))
            .map(|(&p, _)| p)
            .collect();
        let ready = assigned && all_restored && behind.is_empty();
        let why = if !assigned {
            Some("no partition assigned".to_string())
        } else if !all_restored {
            Some("restoring partition state".to_string())
        } else if !behind.is_empty() {
            Some(format!(
                "partitions {behind:?} are more than api.ready_max_lag ({}) messages behind (or not positioned yet)",
                self.ready_max_lag
            ))
        } else {
            None
        };
        let body = serde_json::json!({
            "ready": ready,
            "why_not": why,
            "partitions": owned.keys().collect::<Vec<_>>(),
            "restored": restored.keys().collect::<Vec<_>>(),
            "lag": lag.iter().map(|(p, l)| (p.to_string(), serde_json::json!(l))).collect::<serde_json::Map<_, _>>(),
        });
        (ready, body)
    }

    /// Messages behind the high watermark per owned partition, from
    /// librdkafka's cache (None until the partition has a position and a
    /// watermark).
    fn lag(&self, owned: &BTreeMap<i32, u64>) -> BTreeMap<i32, Option<u64>> {
        let positions = self.consumer.position().ok();
        owned
            .keys()
            .map(|&p| {
                let pos = positions
                    .as_ref()
                    .and_then(|t| t.find_partition(&self.topic, p))
                    .and_then(|e| e.offset().to_raw())
                    .filter(|&o| o >= 0);
                let high =
                    crate::source::kafka::cached_high_watermark(&self.consumer, &self.topic, p);
                let lag = match (pos, high) {
                    (Some(pos), Some(high)) => Some(high.saturating_sub(pos).max(0) as u64),
                    _ => None,
                };
                (p, lag)
            })
            .collect()
    }

    fn route(
        &self,
        method: &Method,
        path: &str,
        query: &str,
    ) -> (StatusCode, String, &'static str) {
        const JSON: &str = "application/json";
        let json = |code, v: serde_json::Value| (code, v.to_string(), JSON);
        if method != Method::GET {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "only GET is served"}),
            );
        }
        match path {
            "/health/live" => json(StatusCode::OK, serde_json::json!({"live": true})),
            "/health/ready" => {
                let (ready, body) = self.readiness();
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(code, body)
            }
            "/metrics" => match &self.metrics {
                Some(h) => (StatusCode::OK, h.render(), "text/plain; version=0.0.4"),
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "no metrics recorder"}),
                ),
            },
            "/keys" => {
                let params = query_params(query);
                let prefix = params.get("prefix").map_or("", String::as_str);
                let limit = params
                    .get("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(1_000);
                let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
                let mut keys: Vec<&String> =
                    latest.keys().filter(|k| k.starts_with(prefix)).collect();
                let count = keys.len();
                keys.sort_unstable();
                keys.truncate(limit);
                json(
                    StatusCode::OK,
                    serde_json::json!({"count": count, "keys": keys}),
                )
            }
            "/models" => {
                match crate::model::registry::Registry::new(self.models_dir.clone()).list() {
                    Ok(list) => json(StatusCode::OK, serde_json::json!({"models": list})),
                    Err(e) => json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        serde_json::json!({"error": e.to_string()}),
                    ),
                }
            }
            _ if path.starts_with("/accuracy/") => {
                let Some(key) = percent_decode(&path["/accuracy/".len()..]) else {
                    return json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": "the key is not valid percent-encoded UTF-8"}),
                    );
                };
                let Some(scorer) = self.scorer.get() else {
                    return json(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"error": "live scoring is off (score.enabled = false)"}),
                    );
                };
                let steps = scorer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .key_scores(&key);
                if steps.is_empty() {
                    return json(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"error": "no scores for this key yet", "key": key}),
                    );
                }
                json(
                    StatusCode::OK,
                    serde_json::json!({"key": key, "steps": steps}),
                )
            }
            _ => match path.strip_prefix("/forecast/").map(percent_decode) {
                Some(Some(key)) => {
                    let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
                    match latest.get(&key) {
                        Some(record) => (StatusCode::OK, record.to_string(), JSON),
                        None => json(
                            StatusCode::NOT_FOUND,
                            serde_json::json!({"error": "no forecast for this key yet", "key": key}),
                        ),
                    }
                }
                Some(None) => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "the key is not valid percent-encoded UTF-8"}),
                ),
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({
                        "error": "no such endpoint",
                        "endpoints": ["/forecast/<key>", "/accuracy/<key>", "/keys", "/models", "/health/live", "/health/ready", "/metrics"],
                    }),
                ),
            },
        }
    }
}

/// Starts serving on `addr` (on the current tokio runtime); an address that
/// cannot be bound is an error now, not a log line later.
pub async fn serve(addr: &str, state: Arc<ApiState>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::config(
            "<pipeline>",
            "api.listen",
            format!("cannot listen on {addr:?}: {e}"),
        )
    })?;
    tracing::info!(%addr, "serving the HTTP API");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let (code, body, kind) = state.route(
                            req.method(),
                            req.uri().path(),
                            req.uri().query().unwrap_or(""),
                        );
                        let response = Response::builder()
                            .status(code)
                            .header("content-type", kind)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                        Ok::<_, Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(())
}

fn query_params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// `%XX` escapes (and `+` kept as is) to UTF-8; None when malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn keys_are_percent_decoded() {
        assert_eq!(percent_decode("cpu%2F01%20a").as_deref(), Some("cpu/01 a"));
        assert_eq!(percent_decode("%E2%82%AC").as_deref(), Some("€"));
        assert_eq!(percent_decode("%ZZ"), None);
        assert_eq!(percent_decode("%E2%82"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
