//! What per-key model choice costs the compute thread: `Chooser::choose`
//! over batches of closed windows, one window per key per batch (every key
//! closing at the same watermark step, as a live job's keys do), for
//! candidate sets side by side in one run.
//!
//! ```sh
//! cargo bench --bench choice
//! CHOICE_KEYS=100000 CHOICE_REPS=5 cargo bench --bench choice
//! ```
//!
//! Each set first sees 300 windows per key (the rings and the errors fill,
//! the parameter fits settle), then `CHOICE_REPS` x 24 timed batches
//! (one `refit_every = 24` cycle per repetition, so refits are counted at
//! their rate). Hourly windows, season 24, horizon 12, a noisy seasonal
//! series per key. Prints microseconds per key-window (median and range of
//! the repetitions) and key-windows per second; rayon uses every core.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use arrow::array::TimestampMillisecondArray;
use arrow::array::{FixedSizeListBuilder, Float64Builder, RecordBatch, StringArray};
use streamcast::choose::{Candidate, ChoiceSpec, Chooser};
use streamcast::schema::forecasts_schema;
use streamcast::window::{WindowSpec, WindowsBuilder};

const H: i64 = 3_600_000;
const HORIZON: usize = 12;

fn value(key: usize, t: i64) -> f64 {
    let s = ((t % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
    let noise = ((key as i64 * 7919 + t * 104_729) % 1000) as f64 / 1000.0;
    10.0 + key as f64 % 7.0 + 3.0 * s + 2.0 * noise
}

/// One closed window per key ending at hour `t`, and a network forecast.
fn batch(ws: &WindowSpec, keys: &[String], t: i64) -> (RecordBatch, RecordBatch) {
    let n = keys.len();
    let mut b = WindowsBuilder::with_schema(ws, ws.windows_schema(), n);
    for (k, key) in keys.iter().enumerate() {
        b.push(key, t * H - H, 12, false, &[value(k, t)]);
    }
    let item = Arc::new(arrow::datatypes::Field::new(
        "item",
        arrow::datatypes::DataType::Float64,
        true,
    ));
    let mut list =
        FixedSizeListBuilder::new(Float64Builder::new(), HORIZON as i32).with_field(item);
    for k in 0..n {
        for j in 0..HORIZON {
            list.values().append_value(value(k, t + 1 + j as i64) + 1.5);
        }
        list.append(true);
    }
    let forecasts = RecordBatch::try_new(
        forecasts_schema(HORIZON as i64, &[]),
        vec![
            Arc::new(StringArray::from(keys.to_vec())),
            Arc::new(TimestampMillisecondArray::from(vec![t * H; n]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec!["v1"; n])),
            Arc::new(StringArray::from(vec!["model"; n])),
            Arc::new(list.finish()),
        ],
    )
    .unwrap();
    (b.finish(), forecasts)
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n_keys = env("CHOICE_KEYS", 10_000);
    let reps = env("CHOICE_REPS", 3);
    let cfg = streamcast::testkit::pipeline("[model]\nhorizon = 12\nseason_windows = 24");
    let ws = WindowSpec::from_config(&cfg);
    let keys: Vec<String> = (0..n_keys).map(|k| format!("key-{k:07}")).collect();
    let names =
        |v: &[&str]| -> Vec<Candidate> { v.iter().map(|n| Candidate::parse(n).unwrap()).collect() };
    // (label, candidates, refit_every, fast_half_life: the guard, 0 = off)
    let sets: Vec<(&str, Vec<Candidate>, usize, f64)> = vec![
        (
            "network,naive,snaive,ses (cheap)",
            names(&["network", "naive", "snaive", "ses"]),
            24,
            0.0,
        ),
        (
            "network,naive,smedian,ses (cheap, smedian)",
            names(&["network", "naive", "smedian", "ses"]),
            24,
            0.0,
        ),
        (
            "network,smedian,ses_sa,damped_sa,median, refit 24",
            names(&["network", "smedian", "ses_sa", "damped_sa", "median"]),
            24,
            0.0,
        ),
        (
            "network,snaive,ses_sa,damped_sa,median, refit 1 (the former default)",
            names(&["network", "snaive", "ses_sa", "damped_sa", "median"]),
            1,
            0.0,
        ),
        (
            "network,smedian,ses_sa,damped_sa,median, refit 1 (default)",
            names(&["network", "smedian", "ses_sa", "damped_sa", "median"]),
            1,
            0.0,
        ),
        (
            "the default + the guard (fast_half_life 6)",
            names(&["network", "smedian", "ses_sa", "damped_sa", "median"]),
            1,
            6.0,
        ),
    ];
    println!(
        "{n_keys} keys, {} rayon threads, {reps} repetitions of 24 batches",
        rayon::current_num_threads()
    );
    println!("| candidates | us per key-window, median (range) | key-windows/s |");
    println!("|---|---:|---:|");
    for (label, candidates, refit_every, fast_half_life) in sets {
        let spec = ChoiceSpec {
            candidates,
            half_life: 168.0,
            margin: 0.1,
            min_scored: 12,
            ses_alpha: 0.3,
            history: 0,
            refit_every,
            start: Candidate::Network,
            weight_power: 1.0,
            serve: Vec::new(),
            score_all_steps: false,
            fast_half_life,
            guard_ratio: 2.0,
            guard_to: None,
        };
        let mut c = Chooser::new(spec, H, HORIZON, 24);
        let mut t = 1;
        for _ in 0..300 {
            let (w, f) = batch(&ws, &keys, t);
            c.choose(&w, f);
            t += 1;
        }
        let mut per = Vec::new();
        for _ in 0..reps {
            let mut secs = 0.0;
            for _ in 0..24 {
                let (w, f) = batch(&ws, &keys, t);
                let start = Instant::now();
                std::hint::black_box(c.choose(&w, f));
                secs += start.elapsed().as_secs_f64();
                t += 1;
            }
            per.push(secs / (24 * n_keys) as f64 * 1e6);
        }
        per.sort_by(f64::total_cmp);
        let med = per[per.len() / 2];
        println!(
            "| {label} | {med:.2} ({:.2}-{:.2}) | {:.0} |",
            per[0],
            per[per.len() - 1],
            1e6 / med
        );
    }
}
