//! File sink (backfill): forecasts to Parquet, dead letters to JSON lines.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;

use super::Output;
use crate::error::{Error, Result};

/// Writes forecasts to Parquet and dead letters to JSON lines (backfill).
pub struct FileSink {
    writer: ArrowWriter<File>,
    path: PathBuf,
    dead_path: PathBuf,
    dead: Option<BufWriter<File>>,
    source: String,
    pub forecasts: u64,
    pub dead_letters: u64,
}

impl FileSink {
    /// Forecasts go to `path`; dead letters to `path` + `.dead-letter.jsonl`
    /// (created only when there is one).
    pub fn create(path: &Path, schema: arrow::datatypes::SchemaRef, source: &str) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let file =
            File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let writer = ArrowWriter::try_new(file, schema, None)?;
        let mut dead_path = path.as_os_str().to_owned();
        dead_path.push(".dead-letter.jsonl");
        Ok(FileSink {
            writer,
            path: path.to_path_buf(),
            dead_path: dead_path.into(),
            dead: None,
            source: source.to_string(),
            forecasts: 0,
            dead_letters: 0,
        })
    }

    pub fn dead_letter_path(&self) -> &Path {
        &self.dead_path
    }

    pub fn write(&mut self, output: &Output) -> Result<()> {
        match output {
            Output::Forecasts { forecasts, .. } => {
                self.forecasts += forecasts.num_rows() as u64;
                self.writer.write(forecasts)?;
            }
            Output::DeadLetters { letters, .. } => {
                if self.dead.is_none() {
                    let f = File::create(&self.dead_path).map_err(|e| {
                        Error::io(format!("creating {}", self.dead_path.display()), e)
                    })?;
                    self.dead = Some(BufWriter::new(f));
                }
                if let Some(w) = self.dead.as_mut() {
                    for d in letters {
                        writeln!(w, "{}", d.to_json(&self.source)).map_err(|e| {
                            Error::io(format!("writing {}", self.dead_path.display()), e)
                        })?;
                    }
                }
                self.dead_letters += letters.len() as u64;
            }
            // A file is complete when the backfill ends; nothing to commit.
            // Accuracy records are a live topic's; a backfill prints its
            // live accuracy at the end instead.
            Output::Accuracy(_) | Output::Checkpoint(_) | Output::Abandon => {}
        }
        Ok(())
    }

    pub fn close(self) -> Result<PathBuf> {
        self.writer.close()?;
        if let Some(mut w) = self.dead {
            w.flush()
                .map_err(|e| Error::io(format!("writing {}", self.dead_path.display()), e))?;
        }
        Ok(self.path)
    }
}
