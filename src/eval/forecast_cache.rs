//! Forecasts kept on disk between runs (`--net-cache`, `--combo-cache`):
//! one CSV per forecaster and data, rows = series, values in `{:?}`
//! (round-trip exact). Shared by the network models (`rnn`, `hybrid`) and
//! the combinations (`combo`), so neither depends on the other.
//!
//! Invariant: a file's name hashes everything its forecasts depend on (the
//! forecaster's whole configuration, the histories' bits, the horizon), so
//! a hit is the forecast a fresh fit would give; a file of the wrong shape
//! is a miss, never an error.

use std::path::{Path, PathBuf};

use crate::error::Result;

/// The cache file of one forecaster's forecasts (`prefix`-hash.csv): a
/// hash of `tag` (a network's whole configuration, seed included; a
/// deterministic model's name), the histories (bit patterns) and the horizon.
pub(super) fn file(
    dir: &Path,
    prefix: &str,
    tag: &str,
    histories: &[&[f64]],
    horizon: usize,
) -> PathBuf {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same inputs hash alike across runs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tag.hash(&mut h);
    horizon.hash(&mut h);
    histories.len().hash(&mut h);
    for x in histories {
        x.len().hash(&mut h);
        for v in *x {
            v.to_bits().hash(&mut h);
        }
    }
    dir.join(format!("{prefix}-{:016x}.csv", h.finish()))
}

/// The forecasts in `path`, if it holds `n` rows of `h` values.
pub(super) fn read(path: &Path, n: usize, h: usize) -> Option<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).ok()?;
    let rows: Vec<Vec<f64>> = text
        .lines()
        .map(|l| {
            l.split(',')
                .map(|c| c.parse::<f64>().ok())
                .collect::<Option<Vec<f64>>>()
        })
        .collect::<Option<_>>()?;
    (rows.len() == n && rows.iter().all(|r| r.len() == h)).then_some(rows)
}

/// Writes `f` to `path` (creating its folder), one row per series.
pub(super) fn write(path: &Path, f: &[Vec<f64>]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut text = String::new();
    for r in f {
        let cells: Vec<String> = r.iter().map(|v| format!("{v:?}")).collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    std::fs::write(path, text)
        .map_err(|e| crate::error::Error::io(format!("writing {}", path.display()), e))
}
