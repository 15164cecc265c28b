//! SVG plots of a key's backtest: actuals, a model's forecasts at each
//! origin and a baseline's, over the series' tail; and of how the gradient
//! with respect to the hidden state decays over lags (`plot_grad_decay`,
//! from `train::grad_decay` reports).

use std::path::Path;

use super::backtest::{KeyResult, KeySeries};
use crate::error::Result;

/// What [`plot_key`] draws.
#[derive(Debug, Clone)]
pub struct PlotSpec {
    /// The model whose forecasts are drawn (blue).
    pub model: String,
    /// The baseline drawn for comparison (red, dashed), normally `snaive`.
    pub baseline: String,
    /// Seasonal period in windows.
    pub season: usize,
    /// Show at most this many windows, ending at the series' end (0 = from
    /// two seasons before the first origin).
    pub last_windows: usize,
    /// Y axis label, e.g. "mean of value per 30m window".
    pub y_desc: String,
}

/// Plots one key's backtest to an SVG: the actual window aggregates (black),
/// `spec.model`'s `horizon`-step forecasts from origins at least `horizon`
/// apart (blue) and the same for `spec.baseline` (red, dashed), origins as
/// dots on the time axis, with a legend and axis labels.
pub fn plot_key(
    series: &KeySeries,
    result: &KeyResult,
    spec: &PlotSpec,
    path: &Path,
) -> Result<()> {
    use plotters::prelude::*;

    let (model, baseline) = (spec.model.as_str(), spec.baseline.as_str());
    let find = |name: &str| result.models.iter().find(|m| m.model == name);
    let main = find(model)
        .ok_or_else(|| eval_error!("no backtest of model `{model}` for key `{}`", result.key))?;
    let base = find(baseline).filter(|_| baseline != model);
    let first = *result
        .origins
        .first()
        .ok_or_else(|| eval_error!("no origins"))?;
    let n = series.values.len();
    let mut from = first.saturating_sub(2 * spec.season.max(1));
    if spec.last_windows > 0 {
        from = from.max(n.saturating_sub(spec.last_windows));
    }
    // Forecasts from origin `o` cover windows `o..o + h <= n`: all on the grid.
    let x_of = |i: usize| -> i64 { series.start_ms[i.min(n - 1)] };
    // Origins in view, at least `horizon` apart so the segments do not overlap.
    let mut shown: Vec<usize> = Vec::new();
    let h = main.forecasts.first().map_or(1, |f| f.len());
    for (k, &o) in result.origins.iter().enumerate() {
        if o >= from && shown.last().is_none_or(|&p| o >= result.origins[p] + h) {
            shown.push(k);
        }
    }
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    let mut widen = |v: f64| {
        lo = lo.min(v);
        hi = hi.max(v);
    };
    series.values[from..].iter().for_each(|&v| widen(v));
    for &k in &shown {
        main.forecasts[k].iter().for_each(|&v| widen(v));
        if let Some(b) = base {
            b.forecasts[k].iter().for_each(|&v| widen(v));
        }
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    // Extra room at the top for the legend.
    let top = hi + 5.0 * pad;
    let (x0, x1) = (x_of(from), x_of(n - 1));
    let fmt_time = |ms: &i64| {
        chrono::DateTime::from_timestamp_millis(*ms).map_or_else(
            || ms.to_string(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
    };

    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| eval_error!("plotting {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: {h}-step forecasts from rolling origins", series.key),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, (lo - pad)..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("window start (UTC)")
        .y_desc(spec.y_desc.as_str())
        .x_labels(7)
        .y_labels(8)
        .x_label_formatter(&fmt_time)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            (from..n).map(|i| (x_of(i), series.values[i])),
            BLACK.stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("actual")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    for (j, &k) in shown.iter().enumerate() {
        let o = result.origins[k];
        let pts: Vec<(i64, f64)> = main.forecasts[k]
            .iter()
            .enumerate()
            .map(|(i, &v)| (x_of(o + i), v))
            .collect();
        let a = chart
            .draw_series(LineSeries::new(pts, blue.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if j == 0 {
            a.label(format!("{model} ({h}-step from each origin)"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
                });
        }
    }
    if let Some(b) = base {
        for (j, &k) in shown.iter().enumerate() {
            let o = result.origins[k];
            let pts: Vec<(i64, f64)> = b.forecasts[k]
                .iter()
                .enumerate()
                .map(|(i, &v)| (x_of(o + i), v))
                .collect();
            let a = chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, red.stroke_width(2)))
                .map_err(|e| err(&e))?;
            if j == 0 {
                a.label(format!("{baseline} (seasonal-naive baseline)"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2))
                    });
            }
        }
    }
    // Origins as small ticks on the x axis.
    let tick_y = lo - pad;
    chart
        .draw_series(shown.iter().map(|&k| {
            let x = x_of(result.origins[k]);
            Circle::new((x, tick_y), 3, RGBColor(100, 100, 100).filled())
        }))
        .map_err(|e| err(&e))?
        .label("forecast origin")
        .legend(|(x, y)| Circle::new((x + 10, y), 3, RGBColor(100, 100, 100).filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One curve of [`plot_grad_decay`]: `values[k - 1]` at lag k.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub values: Vec<f64>,
    /// Drawn dashed (e.g. trained without gradient clipping).
    pub dashed: bool,
    /// Index into the palette (same colour for the same cell).
    pub color: usize,
}

/// Plots gradient-decay curves to an SVG: lag k on the x axis, log10 of
/// the value on the y axis (non-positive values are left out), one line
/// per curve with a legend.
pub fn plot_grad_decay(curves: &[Curve], title: &str, y_desc: &str, path: &Path) -> Result<()> {
    use plotters::prelude::*;

    let pts = |c: &Curve| -> Vec<(f64, f64)> {
        c.values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite() && **v > 0.0)
            .map(|(k, v)| ((k + 1) as f64, v.log10()))
            .collect()
    };
    let all: Vec<(f64, f64)> = curves.iter().flat_map(pts).collect();
    if all.is_empty() {
        return Err(eval_error!(
            "no positive values to plot in {}",
            path.display()
        ));
    }
    let x1 = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(0.1);
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| eval_error!("plotting {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(1.0..x1, (lo - pad)..(hi + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("lag k (windows back from the scored step)")
        .y_desc(y_desc)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(|e| err(&e))?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(100, 100, 100),
    ];
    for c in curves {
        let color = palette[c.color % palette.len()];
        let style = color.stroke_width(2);
        let a = if c.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts(c), 6, 4, style))
                .map_err(|e| err(&e))?
        } else {
            chart
                .draw_series(LineSeries::new(pts(c), style))
                .map_err(|e| err(&e))?
        };
        a.label(c.label.as_str()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
        });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
