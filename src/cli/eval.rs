//! `streamcast eval`: offline accuracy (M4 Hourly holdout or submission;
//! rolling-origin backtests on timestamped streams, with plots).

use std::process::ExitCode;

use anyhow::Context;
use streamcast::eval;
use streamcast::time::format_duration_ms;
use streamcast::PipelineConfig;

use super::EvalCmd;

pub fn eval(which: EvalCmd) -> anyhow::Result<ExitCode> {
    match which {
        EvalCmd::M4 {
            train,
            out,
            holdout,
            horizon,
            season,
            models,
            report,
            rnn_pipeline,
            rnn_ensemble,
            net_cache,
            combo_study,
            combo_cache,
        } => {
            let started = std::time::Instant::now();
            let data = eval::read_m4_csv(&train)?;
            eprintln!(
                "read {} series from {} in {:.1}s",
                data.len(),
                train.display(),
                started.elapsed().as_secs_f64()
            );
            let ids: Vec<String> = data.iter().map(|(id, _)| id.clone()).collect();
            let ctx = eval::ModelContext {
                season,
                rnn_pipeline: Some(rnn_pipeline),
                rnn_ensemble,
                net_cache,
            };
            match holdout {
                Some(h) if !combo_study.is_empty() => {
                    let md =
                        eval::combo::study(&data, &combo_study, &ctx, h, combo_cache.as_deref())?;
                    println!("{md}");
                    if let Some(path) = report {
                        std::fs::write(&path, &md)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                }
                Some(h) => {
                    let (rep, checked) = eval::eval_m4_holdout(&data, &models, &ctx, h)?;
                    let md = rep.to_markdown();
                    println!("{md}");
                    if let Some(path) = report {
                        std::fs::write(&path, &md)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                    if let Some(path) = out {
                        eval::write_submission(&path, &ids, &checked[0].forecasts)?;
                        eprintln!(
                            "wrote {}'s forecasts of the holdout to {}",
                            checked[0].model,
                            path.display()
                        );
                    }
                }
                None => {
                    let path = out.context("say where the forecasts go: --out <forecasts.csv> (or score a holdout with --holdout 48)")?;
                    let checked = eval::forecast_m4(&data, &models, &ctx, horizon)?;
                    for c in &checked {
                        eprintln!(
                            "{}: {} series forecast in {:.1}s",
                            c.model,
                            c.forecasts.len(),
                            c.seconds
                        );
                    }
                    eval::write_submission(&path, &ids, &checked[0].forecasts)?;
                    println!(
                        "wrote {}'s {horizon}-step forecasts of {} series to {}",
                        checked[0].model,
                        ids.len(),
                        path.display()
                    );
                }
            }
            eprintln!("total {:.1}s", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        EvalCmd::Stream {
            pipeline,
            input,
            horizon,
            origins,
            mut models,
            plot_dir,
            plot_keys,
            plot_model,
            plot_windows,
            per_key,
            drop_last,
            report,
        } => {
            let started = std::time::Instant::now();
            let cfg = PipelineConfig::load(&pipeline)?;
            let events = eval::read_stream_inputs(&cfg, &input)?;
            let mut series = eval::window_series(&cfg, &events)?;
            if drop_last > 0.0 {
                for s in &mut series {
                    let keep =
                        ((s.values.len() as f64) * (1.0 - drop_last.min(1.0))).floor() as usize;
                    s.values.truncate(keep);
                    s.start_ms.truncate(keep);
                }
            }
            let season = cfg.model.season_windows as usize;
            let horizon = horizon.unwrap_or(cfg.model.horizon as usize);
            eprintln!(
                "{} events -> {} series of {} windows ({} filled) in {:.1}s",
                events.num_rows(),
                series.len(),
                series.iter().map(|s| s.values.len()).sum::<usize>(),
                series.iter().map(|s| s.filled).sum::<usize>(),
                started.elapsed().as_secs_f64()
            );
            let plot_model =
                plot_model.unwrap_or_else(|| models.first().cloned().unwrap_or_default());
            if plot_dir.is_some() {
                for m in [plot_model.as_str(), "snaive"] {
                    if !models.iter().any(|x| x == m) {
                        models.push(m.to_string());
                    }
                }
            }
            // The rnn trains on the first 80% of every series: the origins
            // are all in the last 20% (`tail_fraction` below).
            let mut ms: Vec<Box<dyn eval::StreamModel>> = models
                .iter()
                .map(|name| eval::stream_model_by_name(name, &cfg, &series, 0.8))
                .collect::<Result<_, _>>()?;
            let opts = eval::StreamOptions {
                horizon,
                season,
                max_origins: origins,
                tail_fraction: 0.2,
            };
            let rep = eval::backtest_stream(&series, &mut ms, &opts)?;
            let mut md = rep.to_markdown();
            if per_key {
                md.push('\n');
                md.push_str(&rep.per_key_markdown());
            }
            println!("{md}");
            if let Some(path) = report {
                std::fs::write(&path, &md)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(dir) = plot_dir {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let agg = format!("{:?}", cfg.window.aggregation).to_lowercase();
                let size = format_duration_ms(cfg.size_ms());
                let spec = eval::PlotSpec {
                    model: plot_model.clone(),
                    baseline: "snaive".into(),
                    season,
                    last_windows: plot_windows,
                    y_desc: format!("{agg} of {} per {size} window", cfg.decode.value_fields[0]),
                };
                for (s, k) in series
                    .iter()
                    .filter_map(|s| rep.keys.iter().find(|k| k.key == s.key).map(|k| (s, k)))
                {
                    if !plot_keys.is_empty() && !plot_keys.contains(&s.key) {
                        continue;
                    }
                    let path = dir.join(format!("{}.svg", s.key.replace(['/', '\\'], "_")));
                    eval::plot_key(s, k, &spec, &path)?;
                    eprintln!("plotted {}", path.display());
                }
            }
            eprintln!("total {:.1}s", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
    }
}
