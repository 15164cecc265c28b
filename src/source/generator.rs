//! A generator of realistic multi-key seasonal streams, for the quickstart,
//! demos and benchmarks (users have no `../shared/data`).
//!
//! Each key is one of three families, like the entities users forecast:
//! - `cpu-*`: a server's CPU %, daily cycle peaking in office hours, quieter
//!   weekends, AR(1) noise, rare spikes, clipped to [0, 100];
//! - `store-*`: a store's sales per interval, strong daily and weekly cycles,
//!   slow growth, Poisson-like noise, never negative;
//! - `sensor-*`: a temperature, a smooth daily cycle around a drifting level.
//!
//! Events come out in event-time order across keys, like a live stream.
//! Deterministic for a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenSpec {
    pub keys: usize,
    pub points_per_key: usize,
    pub step_ms: i64,
    pub start_ms: i64,
    pub seed: u64,
}

impl GenSpec {
    /// `days` of history per key at one event every `step_ms`, starting
    /// `days` before `now_ms` on a UTC day boundary (so the data ends about
    /// now, and daily cycles line up with the calendar).
    pub fn ending_at(now_ms: i64, keys: usize, days: f64, step_ms: i64, seed: u64) -> Self {
        const DAY: i64 = 86_400_000;
        let step_ms = step_ms.max(1);
        let span = (days.max(0.0) * DAY as f64) as i64;
        GenSpec {
            keys,
            points_per_key: (span as f64 / step_ms as f64).round() as usize,
            step_ms,
            start_ms: (now_ms - span).div_euclid(DAY) * DAY,
            seed,
        }
    }
}

/// One generated event.
#[derive(Debug, Clone, PartialEq)]
pub struct GenEvent {
    pub key: String,
    pub ts_ms: i64,
    pub value: f64,
}

struct KeyModel {
    name: String,
    family: u8,
    level: f64,
    daily: f64,
    weekly: f64,
    trend_per_day: f64,
    noise: f64,
    phase: f64,
    ar: f64,
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller: enough for synthetic noise, no extra dependency.
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// All events of all keys, sorted by time (then key).
pub fn generate(spec: &GenSpec) -> Vec<GenEvent> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut models: Vec<KeyModel> = (0..spec.keys)
        .map(|i| {
            let family = (i % 3) as u8;
            let name = match family {
                0 => format!("cpu-{i:03}"),
                1 => format!("store-{i:03}"),
                _ => format!("sensor-{i:03}"),
            };
            let (level, daily, weekly, noise) = match family {
                0 => (
                    rng.random_range(15.0..45.0),
                    rng.random_range(8.0..25.0),
                    rng.random_range(0.1..0.4),
                    rng.random_range(1.0..4.0),
                ),
                1 => (
                    rng.random_range(40.0..400.0),
                    rng.random_range(0.3..0.8),
                    rng.random_range(0.2..0.5),
                    rng.random_range(0.05..0.15),
                ),
                _ => (
                    rng.random_range(18.0..28.0),
                    rng.random_range(1.0..4.0),
                    0.0,
                    rng.random_range(0.1..0.4),
                ),
            };
            KeyModel {
                name,
                family,
                level,
                daily,
                weekly,
                trend_per_day: rng.random_range(-0.002..0.006),
                noise,
                phase: rng.random_range(-0.6..0.6),
                ar: 0.0,
            }
        })
        .collect();
    let mut out = Vec::with_capacity(spec.keys * spec.points_per_key);
    let day = 86_400_000.0;
    for t in 0..spec.points_per_key {
        let ts = spec.start_ms + t as i64 * spec.step_ms;
        let days = (ts - spec.start_ms) as f64 / day;
        let hour = (ts as f64 / 3_600_000.0).rem_euclid(24.0);
        let dow = ((ts as f64 / day).floor() as i64 + 3).rem_euclid(7); // 0 = Monday
        let weekend = dow >= 5;
        let daily_wave = (2.0 * std::f64::consts::PI * (hour - 8.0) / 24.0).sin();
        for m in models.iter_mut() {
            m.ar = 0.8 * m.ar + normal(&mut rng) * m.noise;
            let growth = 1.0 + m.trend_per_day * days;
            let v = match m.family {
                0 => {
                    let office = (daily_wave + m.phase).max(-0.5);
                    let wk = if weekend { 1.0 - m.weekly } else { 1.0 };
                    let spike = if rng.random::<f64>() < 0.002 {
                        rng.random_range(20.0..50.0)
                    } else {
                        0.0
                    };
                    ((m.level + m.daily * office) * wk * growth + m.ar + spike).clamp(0.0, 100.0)
                }
                1 => {
                    let open = (daily_wave + 0.3 + m.phase * 0.3).max(0.0);
                    let wk = if weekend { 1.0 + m.weekly } else { 1.0 };
                    (m.level * (0.2 + m.daily * open) * wk * growth * (1.0 + m.ar)).max(0.0)
                }
                _ => m.level + m.daily * (daily_wave + m.phase).sin() + 0.5 * days.sin() + m.ar,
            };
            out.push(GenEvent {
                key: m.name.clone(),
                ts_ms: ts,
                value: (v * 1000.0).round() / 1000.0,
            });
        }
    }
    out
}

/// The event as the JSON a producer would send, with the pipeline's field names.
pub fn to_json(e: &GenEvent, key_field: &str, time_field: &str, value_field: &str) -> String {
    let mut m = serde_json::Map::new();
    m.insert(key_field.into(), e.key.clone().into());
    m.insert(time_field.into(), crate::time::rfc3339_ms(e.ts_ms).into());
    m.insert(value_field.into(), e.value.into());
    serde_json::Value::Object(m).to_string()
}

/// Writes generated events to Parquet (`key`, `ts` as a UTC ms timestamp, `value`),
/// with the given column names.
pub fn write_parquet(
    events: &[GenEvent],
    path: &std::path::Path,
    key: &str,
    ts: &str,
    value: &str,
) -> crate::Result<()> {
    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![
        Field::new(key, DataType::Utf8, false),
        Field::new(
            ts,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new(value, DataType::Float64, false),
    ]));
    let batch = arrow::array::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.key.as_str()),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(events.iter().map(|e| e.ts_ms))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(
                events.iter().map(|e| e.value),
            )),
        ],
    )?;
    let file = std::fs::File::create(path)
        .map_err(|e| crate::Error::io(format!("creating {}", path.display()), e))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_time_ordered_and_seasonal() {
        let spec = GenSpec {
            keys: 6,
            points_per_key: 24 * 12 * 4,
            step_ms: 300_000,
            start_ms: 1_700_000_000_000 / 86_400_000 * 86_400_000,
            seed: 3,
        };
        let a = generate(&spec);
        assert_eq!(a, generate(&spec));
        assert_eq!(a.len(), 6 * 24 * 12 * 4);
        assert!(a.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        assert!(a.iter().all(|e| e.value.is_finite()));
        // A daily cycle: the store's values 24h apart correlate more than 12h apart.
        let s: Vec<f64> = a
            .iter()
            .filter(|e| e.key == "store-001")
            .map(|e| e.value)
            .collect();
        let corr = |lag: usize| {
            let (x, y) = (&s[..s.len() - lag], &s[lag..]);
            let (mx, my) = (
                x.iter().sum::<f64>() / x.len() as f64,
                y.iter().sum::<f64>() / y.len() as f64,
            );
            let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
            let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
            let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
            cov / (vx * vy).sqrt()
        };
        assert!(
            corr(288) > corr(144) + 0.5,
            "daily {} vs half-day {}",
            corr(288),
            corr(144)
        );
    }
}
