//! M4 Hourly: reading the competition's CSV, scoring a holdout of the last
//! values of every series (OWA against the published and our own Naive2),
//! and writing a submission file.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use super::harness::{run_checked, Checked, Model, Panel};
use super::{model_by_name, ModelContext};
use crate::accuracy::{self, Scores};
use crate::error::{Error, Result};

/// Reads an M4 CSV (`"V1","V2",...` header; one row per series: the id in the
/// first cell, values after it; rows of different lengths, trailing cells
/// empty). Returns `(id, values)` in file order. Errors name the file and the
/// 1-based line (and column where it applies).
pub fn read_m4_csv(path: &Path) -> Result<Vec<(String, Vec<f64>)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    parse_m4_csv(&text, path)
}

fn unquote(cell: &str) -> &str {
    let c = cell.trim();
    c.strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .unwrap_or(c)
}

/// Non-empty lines of a small CSV file: (1-based line number, unquoted cells).
pub(super) fn csv_rows(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim_end_matches('\r');
        (!line.trim().is_empty()).then(|| (i + 1, line.split(',').map(unquote).collect()))
    })
}

fn parse_m4_csv(text: &str, path: &Path) -> Result<Vec<(String, Vec<f64>)>> {
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (lineno, cells) in csv_rows(text) {
        let mut cells = cells.into_iter();
        let id = cells.next().unwrap_or("");
        if lineno == 1 && id == "V1" {
            continue; // the header
        }
        if id.is_empty() {
            bail!(
                "{}: line {lineno}: empty series id in the first column",
                path.display()
            );
        }
        let cells: Vec<&str> = cells.collect();
        let used = cells
            .iter()
            .rposition(|c| !c.is_empty())
            .map_or(0, |p| p + 1);
        if used == 0 {
            bail!(
                "{}: line {lineno}: series `{id}` has no values",
                path.display()
            );
        }
        let mut values = Vec::with_capacity(used);
        for (j, c) in cells[..used].iter().enumerate() {
            let col = j + 2; // V1 is the id
            if c.is_empty() {
                bail!(
                    "{}: line {lineno}: series `{id}`: empty cell in column V{col} before the last value (gaps are not allowed)",
                    path.display()
                );
            }
            let v: f64 = c.parse().map_err(|_| {
                eval_error!(
                    "{}: line {lineno}: series `{id}`: column V{col}: {c:?} is not a number",
                    path.display()
                )
            })?;
            if !v.is_finite() {
                bail!(
                    "{}: line {lineno}: series `{id}`: column V{col}: value {c:?} is not finite",
                    path.display()
                );
            }
            values.push(v);
        }
        if let Some(prev) = seen.insert(id.to_string(), lineno) {
            bail!(
                "{}: line {lineno}: series id `{id}` already used on line {prev}",
                path.display()
            );
        }
        out.push((id.to_string(), values));
    }
    if out.is_empty() {
        bail!("{}: no series found", path.display());
    }
    Ok(out)
}

/// One row of the published M4 results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    pub method: &'static str,
    pub smape: f64,
    pub mase: f64,
    pub owa: f64,
}

/// Published M4 results on the Hourly **test set** (the 48 values after each
/// training series, which we do not have), as listed in
/// `../shared/data/README.md` (taken there from the M4 competition results,
/// Makridakis, Spiliotis & Assimakopoulos, "The M4 Competition: 100,000 time
/// series and 61 forecasting methods", IJF 36(1), 2020). Reference data only:
/// our own figures are on the held-out tail of the *training* set, a
/// different (earlier) 48 hours of every series.
pub const M4_HOURLY_PUBLISHED_TEST: &[Published] = &[
    Published {
        method: "Naive (last value)",
        smape: 43.003,
        mase: 11.608,
        owa: 3.593,
    },
    Published {
        method: "Naive2 (seasonally adjusted naive; OWA's reference)",
        smape: 18.383,
        mase: 2.395,
        owa: 1.000,
    },
    Published {
        method: "Seasonal naive (m=24)",
        smape: 13.912,
        mase: 1.193,
        owa: 0.627,
    },
    Published {
        method: "Theta",
        smape: 18.138,
        mase: 2.455,
        owa: 1.006,
    },
    Published {
        method: "M4 benchmark MLP",
        smape: 13.842,
        mase: 2.607,
        owa: 0.921,
    },
    Published {
        method: "M4 benchmark RNN",
        smape: 14.698,
        mase: 3.048,
        owa: 1.036,
    },
    Published {
        method: "ES-RNN (competition winner, exponential smoothing + LSTM)",
        smape: 9.328,
        mase: 0.893,
        owa: 0.440,
    },
    Published {
        method: "best Hourly entry",
        smape: 8.913,
        mase: 0.801,
        owa: 0.410,
    },
];

/// The published test-set row matching one of our model names, if any.
pub fn published_for(model: &str) -> Option<&'static Published> {
    let idx = match model {
        "naive" => 0,
        "naive2" => 1,
        "snaive" => 2,
        _ => return None,
    };
    M4_HOURLY_PUBLISHED_TEST.get(idx)
}

/// One model's M4-style scores on a holdout.
#[derive(Debug, Clone)]
pub struct M4Row {
    pub model: String,
    /// Mean over series of sMAPE, MASE (and MAE, RMSE).
    pub mean: Scores,
    /// OWA against the published M4 Hourly Naive2 (18.383 / 2.395).
    pub owa_published: f64,
    /// OWA against our Naive2 on the same holdout.
    pub owa_own: f64,
    pub seconds: f64,
    pub leak_checked: bool,
    /// Per series against seasonal naive on the same holdout: series with a
    /// lower / higher MASE, then lower / higher sMAPE (ties are neither).
    pub vs_snaive: VsSnaive,
}

/// Per-series wins and losses against seasonal naive (see [`M4Row::vs_snaive`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsSnaive {
    pub mase_wins: usize,
    pub mase_losses: usize,
    pub smape_wins: usize,
    pub smape_losses: usize,
}

/// Result of [`eval_m4_holdout`].
#[derive(Debug, Clone)]
pub struct M4Report {
    pub series: usize,
    pub horizon: usize,
    pub season: usize,
    /// Our Naive2's mean sMAPE and MASE on this holdout (the `owa_own` reference).
    pub naive2_own: (f64, f64),
    pub rows: Vec<M4Row>,
}

/// A factory for the harness (it builds a fresh model per run); an unknown
/// or unbuildable model fails here, before any run.
fn build_factory(name: &str, ctx: &ModelContext) -> Result<impl FnMut() -> Result<Box<dyn Model>>> {
    model_by_name(name, ctx)?;
    let (name, ctx) = (name.to_string(), ctx.clone());
    Ok(move || model_by_name(&name, &ctx))
}

/// Runs each named model through [`run_checked`] on `panel`. Returns the
/// accepted forecasts in the order of `models`.
pub fn run_models(
    panel: &Panel,
    models: &[String],
    ctx: &ModelContext,
    horizon: usize,
) -> Result<Vec<Checked>> {
    let mut out = Vec::with_capacity(models.len());
    for name in models {
        let mut factory = build_factory(name, ctx)?;
        let c = run_checked(panel, &mut factory, horizon)?;
        tracing::info!(model = %c.model, seconds = c.seconds, leak_checked = c.leak_checked, "model evaluated");
        out.push(c);
    }
    Ok(out)
}

fn panel_scores(panel: &Panel, forecasts: &[Vec<f64>], season: usize) -> Result<Vec<Scores>> {
    let g = panel.read();
    let mut scores = Vec::with_capacity(g.len());
    for (s, f) in g.iter().zip(forecasts) {
        let sc = accuracy::score(s.history(), s.future(), f, season.max(1))
            .map_err(|e| eval_error!("scoring series `{}`: {e}", s.id))?;
        scores.push(sc);
    }
    Ok(scores)
}

fn mean_panel_scores(panel: &Panel, forecasts: &[Vec<f64>], season: usize) -> Result<Scores> {
    accuracy::mean_scores(&panel_scores(panel, forecasts, season)?)
        .ok_or_else(|| eval_error!("no series to score"))
}

fn vs_snaive(model: &[Scores], snaive: &[Scores]) -> VsSnaive {
    let mut v = VsSnaive::default();
    for (a, b) in model.iter().zip(snaive) {
        v.mase_wins += usize::from(a.mase < b.mase);
        v.mase_losses += usize::from(a.mase > b.mase);
        v.smape_wins += usize::from(a.smape < b.smape);
        v.smape_losses += usize::from(a.smape > b.smape);
    }
    v
}

/// Holds out the last `horizon` values of every series, forecasts them with
/// every model and scores them (M4 definitions, MASE with `m = season`).
/// Our Naive2 is always run (as OWA's own reference) even if not listed.
/// Also returns the accepted forecasts of every listed model.
pub fn eval_m4_holdout(
    data: &[(String, Vec<f64>)],
    models: &[String],
    ctx: &ModelContext,
    horizon: usize,
) -> Result<(M4Report, Vec<Checked>)> {
    let season = ctx.season;
    if horizon == 0 {
        bail!("the holdout must be at least 1 value");
    }
    let panel = Panel::holdout(data, horizon)?;
    let checked = run_models(&panel, models, ctx, horizon)?;
    let naive2 = match checked.iter().position(|c| c.model == "naive2") {
        Some(i) => mean_panel_scores(&panel, &checked[i].forecasts, season)?,
        None => {
            let c = run_models(&panel, &["naive2".to_string()], ctx, horizon)?;
            mean_panel_scores(&panel, &c[0].forecasts, season)?
        }
    };
    // Seasonal naive per series, for the wins / losses table.
    let snaive = match checked.iter().position(|c| c.model == "snaive") {
        Some(i) => panel_scores(&panel, &checked[i].forecasts, season)?,
        None => {
            let c = run_models(&panel, &["snaive".to_string()], ctx, horizon)?;
            panel_scores(&panel, &c[0].forecasts, season)?
        }
    };
    let mut rows = Vec::with_capacity(checked.len());
    for c in &checked {
        let per_series = panel_scores(&panel, &c.forecasts, season)?;
        let mean =
            accuracy::mean_scores(&per_series).ok_or_else(|| eval_error!("no series to score"))?;
        rows.push(M4Row {
            vs_snaive: vs_snaive(&per_series, &snaive),
            model: c.model.clone(),
            mean,
            owa_published: mean.owa_m4_hourly(),
            owa_own: mean.owa(naive2.smape, naive2.mase),
            seconds: c.seconds,
            leak_checked: c.leak_checked,
        });
    }
    let report = M4Report {
        series: panel.len(),
        horizon,
        season,
        naive2_own: (naive2.smape, naive2.mase),
        rows,
    };
    Ok((report, checked))
}

/// Forecasts `horizon` values after the last value of every series with each
/// model (the M4 submission setting). Returns the accepted forecasts.
pub fn forecast_m4(
    data: &[(String, Vec<f64>)],
    models: &[String],
    ctx: &ModelContext,
    horizon: usize,
) -> Result<Vec<Checked>> {
    run_models(&Panel::at_end(data), models, ctx, horizon)
}

/// Writes forecasts in the M4 submission shape: `id,F1,...,FH`, one row per series.
pub fn write_submission(path: &Path, ids: &[String], forecasts: &[Vec<f64>]) -> Result<()> {
    use std::io::Write;
    if ids.len() != forecasts.len() {
        bail!("{} ids but {} forecasts", ids.len(), forecasts.len());
    }
    let h = forecasts.first().map_or(0, |f| f.len());
    let file = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let mut w = std::io::BufWriter::new(file);
    let mut line = String::from("id");
    for i in 1..=h {
        let _ = write!(line, ",F{i}");
    }
    let io = |e| Error::io(format!("writing {}", path.display()), e);
    writeln!(w, "{line}").map_err(io)?;
    for (id, f) in ids.iter().zip(forecasts) {
        line.clear();
        line.push_str(id);
        for v in f {
            let _ = write!(line, ",{v}");
        }
        writeln!(w, "{line}").map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

fn fmt3(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "n/a".into()
    }
}

impl M4Report {
    /// The report as Markdown: our holdout table, then the published test-set table.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Ours: {} M4 Hourly series, last {} values of each *training* series held out, forecast from the rest \
             (MASE m={}, scale from the in-sample part). OWA vs published Naive2 uses 18.383 / 2.395; \
             OWA vs our Naive2 uses our Naive2 on this holdout (sMAPE {:.3}, MASE {:.3}). \
             Published columns are the M4 *test-set* figures (a different, later 48 hours), for orientation only.\n",
            self.series, self.horizon, self.season, self.naive2_own.0, self.naive2_own.1
        );
        s.push_str("| model | sMAPE | MASE | OWA (vs published Naive2) | OWA (vs our Naive2) | seconds | published test sMAPE | published test MASE | published test OWA |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let p = published_for(&r.model);
            let pc =
                |f: fn(&Published) -> f64| p.map_or("—".to_string(), |p| format!("{:.3}", f(p)));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.1} | {} | {} | {} |",
                r.model,
                fmt3(r.mean.smape),
                fmt3(r.mean.mase),
                fmt3(r.owa_published),
                fmt3(r.owa_own),
                r.seconds,
                pc(|p| p.smape),
                pc(|p| p.mase),
                pc(|p| p.owa)
            );
        }
        let _ = writeln!(
            s,
            "\nPer series against seasonal naive on the same holdout ({} series; ties count as neither):\n",
            self.series
        );
        s.push_str("| model | lower MASE | higher MASE | lower sMAPE | higher sMAPE |\n|---|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let v = r.vs_snaive;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.model, v.mase_wins, v.mase_losses, v.smape_wins, v.smape_losses
            );
        }
        s.push_str("\nPublished M4 Hourly results on the *test set* (source: ../shared/data/README.md, from the M4 competition results):\n\n");
        s.push_str("| method | sMAPE | MASE | OWA |\n|---|---:|---:|---:|\n");
        for p in M4_HOURLY_PUBLISHED_TEST {
            let _ = writeln!(
                s,
                "| {} | {:.3} | {:.3} | {:.3} |",
                p.method, p.smape, p.mase, p.owa
            );
        }
        s
    }
}
