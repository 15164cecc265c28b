//! Test data for the baselines' reference tests: deterministic noise, and
//! real series read in place from the
//! shared data (`../shared/data`, or `STREAMCAST_DATA`), never copied into
//! the repository: fixtures name the series (`"from": {"m4": "H1", "n":
//! 300}` or `{"nab": "<file>"}`) and carry only the reference results.

use std::path::PathBuf;

/// The shared data directory (panics, naming where it looked, if absent).
pub fn data_dir() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var("STREAMCAST_DATA")
        .map(|d| vec![PathBuf::from(d)])
        .unwrap_or_default()
        .into_iter()
        .chain([std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")])
        .collect();
    for c in &candidates {
        if c.join("m4/Hourly-train.csv").is_file() {
            return c.clone();
        }
    }
    panic!("the shared data was not found: looked in {candidates:?} (set STREAMCAST_DATA)");
}

/// The first `n` values (all when `None`) of M4 Hourly series `id`.
pub fn m4_series(id: &str, n: Option<usize>) -> Vec<f64> {
    let path = data_dir().join("m4/Hourly-train.csv");
    let text = std::fs::read_to_string(&path).expect("read M4");
    for line in text.lines() {
        let mut parts = line.split(',');
        if parts.next().map(|p| p.trim_matches('"')) == Some(id) {
            return parts
                .filter_map(|p| p.trim_matches('"').parse().ok())
                .take(n.unwrap_or(usize::MAX))
                .collect();
        }
    }
    panic!("{id} not in {path:?}");
}

/// Hourly means of a NAB CloudWatch file (hours in file order), as
/// `scripts/fixtures/arima.py` computes them.
pub fn nab_hourly(file: &str) -> Vec<f64> {
    let path = data_dir().join("nab/realAWSCloudwatch").join(file);
    let text = std::fs::read_to_string(&path).expect("read NAB");
    let mut out: Vec<(String, f64, u32)> = Vec::new();
    for line in text.lines().skip(1) {
        let Some((ts, v)) = line.split_once(',') else {
            continue;
        };
        let (hour, v) = (
            ts.get(..13).unwrap_or(ts),
            v.trim().parse::<f64>().expect("a value"),
        );
        match out.last_mut() {
            Some((h, sum, n)) if h == hour => {
                *sum += v;
                *n += 1;
            }
            _ => out.push((hour.to_string(), v, 1)),
        }
    }
    out.into_iter().map(|(_, s, n)| s / f64::from(n)).collect()
}

/// A fixture case's series: its own `y`, or the shared series it names.
pub fn case_series(case: &serde_json::Value) -> Vec<f64> {
    if let Some(y) = case["y"].as_array() {
        return y.iter().map(|v| v.as_f64().expect("a number")).collect();
    }
    let from = &case["from"];
    if let Some(id) = from["m4"].as_str() {
        return m4_series(id, from["n"].as_u64().map(|n| n as usize));
    }
    if let Some(file) = from["nab"].as_str() {
        return nab_hourly(file);
    }
    panic!("case {} has neither y nor a known from", case["name"]);
}

/// Deterministic pseudo-normal noise: a sum of 12 LCG uniforms, minus 6
/// (the same numbers as the fixture scripts' simulated series expect).
pub fn gauss(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let mut u = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| (0..12).map(|_| u()).sum::<f64>() - 6.0)
        .collect()
}
