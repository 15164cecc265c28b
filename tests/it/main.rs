//! Integration tests, gathered in one binary so libtorch and polars link once.
//!
//! Kafka tests need the real broker (`scripts/kafka up`; address from
//! `STREAMCAST_BROKERS`, default 127.0.0.1:9092) and the NAB data in
//! `../shared/data` (or `STREAMCAST_DATA`). Each test uses its own random
//! topics and consumer group. `secure` also needs the broker's SASL_SSL
//! listener (scripts/kafka serves it on `KAFKA_PORT` + 2, 9094 by default)
//! and its secrets under `KAFKA_STATE_DIR` (default `.state/kafka`).
//! `avro` also needs the schema registry (`scripts/registry up`; URL from
//! `STREAMCAST_SCHEMA_REGISTRY`, default `http://127.0.0.1:8081/apis/ccompat/v7`).

// Test and bench code may unwrap: a failing unwrap is a failing run.
#![allow(clippy::unwrap_used)]

mod api;
mod avro;
mod bench_smoke;
mod cli;
mod common;
mod durable;
mod faults;
mod kafka_e2e;
mod retrain_e2e;
mod secure;
mod verify;
