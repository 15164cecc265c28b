//! Test fixtures shared by unit tests, integration tests and benches: one
//! minimal valid pipeline, overridden table by table, instead of the same
//! TOML written out in every test.
//!
//! Not part of the supported API (hidden from docs); kept in the library so
//! that `tests/` and `benches/` can use it too.

pub mod fuzz;
pub mod soak;

use std::path::Path;

use crate::config::PipelineConfig;

/// The smallest valid pipeline: hourly tumbling windows, default model.
pub const MINIMAL: &str = r#"
name = "t"
[source]
topic = "in"
[window]
size = "1h"
[sink]
topic = "out"
dead_letter_topic = "dlq"
"#;

/// [`MINIMAL`] with `overrides` (TOML) merged in, table by table: a key
/// given there replaces the minimal one, and new tables are added.
pub fn pipeline_toml(overrides: &str) -> String {
    merge_toml(MINIMAL, overrides)
}

/// `base` with `overrides` merged in, table by table (both TOML text).
pub fn merge_toml(base: &str, overrides: &str) -> String {
    let mut base: toml::Table = base
        .parse()
        .unwrap_or_else(|e| panic!("test pipeline is not TOML: {e}\n{base}"));
    let extra: toml::Table = overrides
        .parse()
        .unwrap_or_else(|e| panic!("test pipeline overrides are not TOML: {e}\n{overrides}"));
    merge(&mut base, extra);
    toml::to_string(&base).expect("a TOML table serializes")
}

/// The parsed and validated pipeline of [`pipeline_toml`]; panics with the
/// error (a test fixture that does not parse is a bug in the test).
pub fn pipeline(overrides: &str) -> PipelineConfig {
    let text = pipeline_toml(overrides);
    PipelineConfig::parse(&text, Path::new("pipelines/t.toml"))
        .unwrap_or_else(|e| panic!("test pipeline is invalid: {e}\n{text}"))
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_table_by_table() {
        let c = pipeline(
            "[window]\nsize = \"5m\"\n[window.covariates]\nhour_of_day = 2\n[model]\nhidden = 8",
        );
        assert_eq!(c.size_ms(), 300_000);
        assert_eq!(c.window.covariates.hour_of_day, 2);
        assert_eq!(c.model.hidden, 8);
        assert_eq!(c.sink.dead_letter_topic, "dlq");
    }
}
