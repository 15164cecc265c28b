//! `streamcast backfill`: the same stages over Parquet in, Parquet out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use streamcast::PipelineConfig;

pub fn backfill(pipeline: &Path, input: &[PathBuf], output: &Path) -> anyhow::Result<ExitCode> {
    let cfg = PipelineConfig::load(pipeline)?;
    let r = streamcast::pipeline::backfill(&cfg, input, output)?;
    let t = &r.totals;
    println!(
        "backfill: {} events, {} windows, {} forecasts ({} model, {} baseline), {} dead letters in {:.1}s -> {}",
        t.events,
        t.windows,
        t.forecasts_from_model + t.forecasts_from_baseline,
        t.forecasts_from_model,
        t.forecasts_from_baseline,
        t.dead_letters,
        r.seconds,
        r.output.display()
    );
    print!("{}", streamcast::score::summary_table(&r.live_accuracy));
    if let Some(d) = r.dead_letter_file {
        println!("dead letters: {}", d.display());
    }
    Ok(ExitCode::SUCCESS)
}
