//! The Confluent schema registry: its wire format and a small client.
//!
//! Wire format (Confluent's, what every Confluent-compatible serializer
//! writes): byte 0 is the magic byte `0`, bytes 1..5 the writer schema's
//! registry id (big-endian `u32`), the rest the Avro binary datum.
//!
//! The client speaks the Confluent REST API (`GET /schemas/ids/{id}`,
//! `POST /subjects/{subject}/versions`, `GET /subjects`) with `reqwest`
//! (already built for polars). Every call is async; [`Blocking`] runs them
//! on a private current-thread runtime for the compute thread, which is a
//! plain thread (never a tokio worker), so decoding may wait for the
//! registry without stalling the consumer or sink tasks.
//!
//! Invariant: "no such schema" (HTTP 404) is an answer, returned as
//! `Ok(Lookup::NotFound)`; any other failure (unreachable, 5xx, a body that is not the
//! API's) is an [`Error::Registry`] the caller retries or reports.

use std::time::Duration;

use serde::Deserialize;

use crate::config::RegistryConfig;
use crate::error::{Error, Result};

/// The magic byte that opens every message in the wire format.
pub const MAGIC: u8 = 0;
/// Magic byte + schema id.
pub const HEADER_LEN: usize = 5;

/// `id` and `datum` in the wire format.
pub fn frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// The schema id and the datum of a wire-format payload, or why it is not
/// one (a person-readable reason).
pub fn unframe(payload: &[u8]) -> std::result::Result<(u32, &[u8]), String> {
    match payload {
        [MAGIC, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [m, ..] if *m != MAGIC => Err(format!(
            "magic byte is {m:#04x}, expected 0x00 (Confluent wire format: 0, a 4-byte schema id, the Avro datum)"
        )),
        _ => Err(format!(
            "{} bytes is shorter than the wire format's 5-byte header (magic byte 0 and a 4-byte schema id)",
            payload.len()
        )),
    }
}

/// A Confluent-compatible registry at one base URL.
#[derive(Debug, Clone)]
pub struct Registry {
    base: String,
    client: reqwest::Client,
}

/// The registry's answer for one schema id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An Avro schema, as JSON text.
    Found(String),
    /// The registry has no schema with this id.
    NotFound,
    /// A schema of another type (`PROTOBUF`, `JSON`).
    NotAvro(String),
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    /// Absent means AVRO in the Confluent API.
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl Registry {
    /// The registry of `cfg` (`cfg.url` must be set: validation requires it
    /// whenever a format is Avro).
    pub fn new(cfg: &RegistryConfig) -> Result<Self> {
        let url = cfg
            .url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Error::Registry("no registry.url is configured".into()))?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .build()
            .map_err(|e| Error::Registry(format!("building the HTTP client: {e}")))?;
        Ok(Registry {
            base: url.trim_end_matches('/').to_string(),
            client,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema with registry id `id` (its JSON text when it is Avro).
    pub async fn schema_by_id(&self, id: u32) -> Result<Lookup> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let resp = self
            .client
            .get(&url)
            .header("Accept", CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| Error::Registry(format!("GET {url}: {e}")))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Lookup::NotFound);
        }
        let body: SchemaBody = json_body(resp, &url).await?;
        Ok(match body.schema_type {
            None => Lookup::Found(body.schema),
            Some(t) if t == "AVRO" => Lookup::Found(body.schema),
            Some(other) => Lookup::NotAvro(other),
        })
    }

    /// Registers `schema` (Avro, JSON text) under `subject` and returns its
    /// id; registering the same schema again returns the same id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let resp = self
            .client
            .post(&url)
            .header("Content-Type", CONTENT_TYPE)
            .header("Accept", CONTENT_TYPE)
            .body(serde_json::json!({ "schema": schema, "schemaType": "AVRO" }).to_string())
            .send()
            .await
            .map_err(|e| Error::Registry(format!("POST {url}: {e}")))?;
        let body: IdBody = json_body(resp, &url).await?;
        Ok(body.id)
    }

    /// Whether the registry answers its API (`GET /subjects`).
    pub async fn ping(&self) -> Result<()> {
        let url = format!("{}/subjects", self.base);
        let resp = self
            .client
            .get(&url)
            .header("Accept", CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| Error::Registry(format!("GET {url}: {e}")))?;
        let _: serde_json::Value = json_body(resp, &url).await?;
        Ok(())
    }
}

/// The body of a successful answer as `T`; an error status is an error
/// with the registry's own message.
async fn json_body<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    url: &str,
) -> Result<T> {
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| Error::Registry(format!("{url}: reading the answer: {e}")))?;
    if !status.is_success() {
        let text: String = text.chars().take(300).collect();
        return Err(Error::Registry(format!("{url}: HTTP {status}: {text}")));
    }
    serde_json::from_str(&text)
        .map_err(|e| Error::Registry(format!("{url}: unexpected answer ({e}): {text:.300}")))
}

/// The registry for a plain thread: each call runs on a private
/// current-thread runtime (built on first use). Never call it from async
/// code (tokio refuses to block inside a runtime).
#[derive(Debug)]
pub struct Blocking {
    registry: Registry,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Blocking {
    pub fn new(registry: Registry) -> Self {
        Blocking {
            registry,
            runtime: None,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// [`Registry::schema_by_id`], waiting for the answer.
    pub fn schema_by_id(&mut self, id: u32) -> Result<Lookup> {
        if self.runtime.is_none() {
            self.runtime = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("starting the registry client's runtime", e))?,
            );
        }
        match &self.runtime {
            Some(rt) => rt.block_on(self.registry.schema_by_id(id)),
            None => Err(Error::Registry("no runtime".into())),
        }
    }
}

/// How long to wait before retry `attempt` (0-based) of a failed registry
/// call: doubling from 200 ms, at most 10 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1u64 << attempt.min(6)))
        .min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_unframe_round_trip() {
        let p = frame(0x0102_0304, b"datum");
        assert_eq!(&p[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(unframe(&p), Ok((0x0102_0304, &b"datum"[..])));
        // An empty datum is a valid frame (a record with no fields).
        assert_eq!(unframe(&frame(7, b"")), Ok((7, &b""[..])));
    }

    #[test]
    fn a_bad_magic_byte_or_a_short_header_is_refused_with_the_reason() {
        let e = unframe(b"{\"key\":1}").unwrap_err();
        assert!(e.contains("magic byte is 0x7b"), "{e}");
        let e = unframe(&[0, 0, 1]).unwrap_err();
        assert!(e.contains("3 bytes is shorter"), "{e}");
        assert!(unframe(&[]).unwrap_err().contains("0 bytes"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(30), Duration::from_secs(10));
    }
}
