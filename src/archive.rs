//! Archive: every closed window, as Parquet, for the retrainer (and for
//! anyone who wants the regular series streamcast derived from the stream).
//!
//! Layout: `<dir>/date=YYYY-MM-DD/windows-<first window_end ms>-<seq>.parquet`
//! (partitioned by the event date of the file's first window). A file is
//! written as `*.parquet.tmp` and renamed when complete, so a reader (the
//! retrainer's polars scan) never sees a half-written file. Files roll after
//! `roll_rows` rows or `roll_interval`.
//!
//! Invariants:
//! - Writing never blocks ingestion: the compute thread hands batches over
//!   a bounded channel with `try_send`; when the writer is behind, the batch
//!   is counted as dropped from the archive (`streamcast_archive_dropped_total`)
//!   and logged at error level; forecasts are not affected.
//! - A write error (a full disk) is reported loudly and the writer goes on
//!   with the next file; it never crash-loops the job.
//! - With durable state the archive follows the job's commit points: a file
//!   that is due to roll is sealed at the next checkpoint mark (`mark`),
//!   with the input offsets of that checkpoint in its footer, and renamed
//!   into view once that checkpoint is committed (`CommitPoints`). A crash
//!   can come between the commit and the rename: a start therefore looks at
//!   the `*.tmp` files left behind and publishes a sealed one whose offsets
//!   the group has committed, and deletes the rest (rows after the last
//!   committed checkpoint, which the replay archives again).
//! - A file open across checkpoints holds rows the replay will not bring
//!   back once such a checkpoint commits, and Parquet is unreadable until
//!   its footer is written. So, following commit points, every open file
//!   has a journal beside it: the same batches as an Arrow IPC stream
//!   (`*.journal`, readable up to its last complete batch) and, per mark,
//!   a line with the checkpoint, the rows written before it and its
//!   offsets (`*.marks`), flushed at each mark. A start recovers the rows
//!   of the newest committed mark of each unsealed file from its journal.
//!   Marks are never skipped, and the writer acknowledges each mark
//!   (`ArchiveHandle::acks`) once its rows are journalled: the sink commits
//!   a checkpoint only after that, so no committed row is still in the
//!   channel at a crash. Together: a crash (SIGKILL) leaves neither
//!   duplicate rows nor lost ones nor orphaned files. (The journal is
//!   flushed to the OS, not fsynced: a power loss can still lose rows of
//!   the open file.)
//! - Retention: after each file, files whose newest window is older than
//!   `retention_age` (event time, against the newest window archived) are
//!   deleted, then the oldest files while the total exceeds `retention_bytes`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;

use crate::config::ArchiveConfig;
use crate::error::{Error, Result};

/// The newest committed checkpoint id, shared by the sink (which commits)
/// and the archive (which renames files up to it into view).
pub type CommitPoints = Arc<AtomicU64>;

/// Writes window batches into rolling Parquet files.
pub struct ArchiveWriter {
    dir: PathBuf,
    schema: SchemaRef,
    cfg: ArchiveConfig,
    current: Option<Open>,
    seq: u64,
    newest_ms: i64,
    /// Durable state: the commit points to follow (see module docs).
    follow: Option<CommitPoints>,
    /// The current file is due to roll at the next mark.
    due: bool,
    /// Closed files waiting for their checkpoint's commit: (id, tmp, path).
    sealed: Vec<(u64, PathBuf, PathBuf)>,
    last_mark: u64,
    last_offsets: Vec<(i32, i64)>,
}

/// Footer key of a sealed file: the input offsets (JSON `[[partition,
/// next offset], ..]`) of the checkpoint it was sealed at.
const SEALED_AT: &str = "streamcast.checkpoint_offsets";

/// The checkpoint offsets in a sealed file's footer (`None`: not sealed,
/// e.g. cut short by a crash).
fn sealed_offsets(path: &Path) -> Option<Vec<(i32, i64)>> {
    let f = File::open(path).ok()?;
    let reader = parquet::file::reader::SerializedFileReader::new(f).ok()?;
    use parquet::file::reader::FileReader;
    let kv = reader.metadata().file_metadata().key_value_metadata()?;
    let v = kv.iter().find(|k| k.key == SEALED_AT)?.value.as_ref()?;
    serde_json::from_str(v).ok()
}

struct Open {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    rows: usize,
    opened: Instant,
    /// Following commit points: the open file's rows, readable after a crash.
    journal: Option<Journal>,
}

/// The recoverable copy of an open file (see module docs).
struct Journal {
    ipc: StreamWriter<BufWriter<File>>,
    ipc_path: PathBuf,
    marks: File,
    marks_path: PathBuf,
    /// Rows covered by the last line written to `marks`.
    marked_rows: usize,
}

impl Journal {
    /// The journal's paths for an archive file's final path.
    fn paths(path: &Path) -> (PathBuf, PathBuf) {
        (path.with_extension("journal"), path.with_extension("marks"))
    }

    fn create(path: &Path, schema: &SchemaRef) -> Result<Self> {
        let (ipc_path, marks_path) = Self::paths(path);
        let f = File::create(&ipc_path)
            .map_err(|e| Error::io(format!("creating {}", ipc_path.display()), e))?;
        let marks = File::create(&marks_path)
            .map_err(|e| Error::io(format!("creating {}", marks_path.display()), e))?;
        Ok(Journal {
            ipc: StreamWriter::try_new(BufWriter::new(f), schema)?,
            ipc_path,
            marks,
            marks_path,
            marked_rows: 0,
        })
    }

    /// Records that the first `rows` rows precede checkpoint `id`: the
    /// batches are flushed first, so the line never names rows not there.
    fn mark(&mut self, id: u64, rows: usize, offsets: &[(i32, i64)]) -> Result<()> {
        if rows == self.marked_rows {
            return Ok(()); // nothing new: the earlier line covers it
        }
        self.ipc.flush()?;
        let offsets =
            serde_json::to_string(offsets).map_err(|e| Error::json("checkpoint offsets", e))?;
        let line = format!("{id}\t{rows}\t{offsets}\n");
        self.marks
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", self.marks_path.display()), e))?;
        self.marked_rows = rows;
        Ok(())
    }

    /// The file is sealed (or abandoned): its journal is not needed.
    fn remove(self) {
        drop(self.ipc);
        let _ = std::fs::remove_file(&self.ipc_path);
        let _ = std::fs::remove_file(&self.marks_path);
    }
}

/// Rows recovered from a journal, and the offsets of the mark they precede.
type Recovered = (Vec<RecordBatch>, Vec<(i32, i64)>);

/// The rows of the newest mark in `marks_path` whose offsets are all within
/// `committed`, read from the journal, with that mark's offsets; `None`
/// when no committed mark covers any row.
fn recover_journal(
    ipc_path: &Path,
    marks_path: &Path,
    committed: &BTreeMap<i32, i64>,
) -> Result<Option<Recovered>> {
    let text = std::fs::read_to_string(marks_path).unwrap_or_default();
    let mut best: Option<(usize, Vec<(i32, i64)>)> = None;
    // A line cut short by the crash does not parse and is skipped.
    for line in text.lines() {
        let mut parts = line.splitn(3, '\t');
        let (Some(_id), Some(rows), Some(offs)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(rows), Ok(offs)) = (
            rows.parse::<usize>(),
            serde_json::from_str::<Vec<(i32, i64)>>(offs),
        ) else {
            continue;
        };
        let covered = offs
            .iter()
            .all(|(p, o)| committed.get(p).is_some_and(|c| c >= o));
        if covered && best.as_ref().is_none_or(|(r, _)| rows > *r) {
            best = Some((rows, offs));
        }
    }
    let Some((rows, offsets)) = best else {
        return Ok(None);
    };
    let f = File::open(ipc_path)
        .map_err(|e| Error::io(format!("opening {}", ipc_path.display()), e))?;
    let reader = StreamReader::try_new(std::io::BufReader::new(f), None)?;
    let mut out = Vec::new();
    let mut left = rows;
    // The tail after the last mark may be cut short: read only what we need.
    for b in reader {
        if left == 0 {
            break;
        }
        let b = b?;
        let take = b.num_rows().min(left);
        out.push(b.slice(0, take));
        left -= take;
    }
    if left > 0 {
        return Err(Error::io(
            format!(
                "recovering {}: the journal has {} of the {rows} rows its marks name",
                ipc_path.display(),
                rows - left
            ),
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        ));
    }
    Ok(Some((out, offsets)))
}

impl ArchiveWriter {
    pub fn new(dir: PathBuf, schema: SchemaRef, cfg: ArchiveConfig) -> Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating the archive {}", dir.display()), e))?;
        Ok(ArchiveWriter {
            dir,
            schema,
            cfg,
            current: None,
            seq: 0,
            newest_ms: i64::MIN,
            follow: None,
            due: false,
            sealed: Vec::new(),
            last_mark: 0,
            last_offsets: Vec::new(),
        })
    }

    /// Follows commit points. First settles the `*.tmp` files a crashed
    /// run left: a sealed file whose checkpoint offsets are all within
    /// `committed` (the group's committed input offsets) is published, the
    /// rest deleted (the replay archives their windows again).
    pub fn follow(&mut self, points: CommitPoints, committed: &BTreeMap<i32, i64>) -> Result<()> {
        let (mut published, mut removed, mut recovered) = (0, 0, 0);
        // Journals first: of a file sealed before the crash the sealed file
        // speaks (below); of an unsealed one, the journal's committed rows
        // become a file of their own.
        for ipc_path in walk(&self.dir)? {
            if ipc_path.extension().is_none_or(|x| x != "journal") {
                continue;
            }
            let path = ipc_path.with_extension("parquet");
            let (_, marks_path) = Journal::paths(&path);
            let tmp = path.with_extension("parquet.tmp");
            if sealed_offsets(&tmp).is_none() {
                if let Some((batches, offsets)) =
                    recover_journal(&ipc_path, &marks_path, committed)?
                {
                    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                    write_parquet(&batches, self.schema.clone(), Some(&offsets), &tmp)?;
                    std::fs::rename(&tmp, &path)
                        .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
                    tracing::info!(rows, file = %path.display(), "recovered the committed rows of an archive file a crash left open");
                    recovered += 1;
                } else if tmp.exists() {
                    std::fs::remove_file(&tmp)
                        .map_err(|e| Error::io(format!("removing {}", tmp.display()), e))?;
                    removed += 1;
                }
            }
            for f in [&ipc_path, &marks_path] {
                match std::fs::remove_file(f) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(format!("removing {}", f.display()), e))
                    }
                    _ => {}
                }
            }
        }
        for tmp in walk(&self.dir)? {
            if tmp.extension().is_none_or(|x| x != "tmp") {
                continue;
            }
            let covered = sealed_offsets(&tmp).is_some_and(|offs| {
                offs.iter()
                    .all(|(p, o)| committed.get(p).is_some_and(|c| c >= o))
            });
            if covered {
                let path = tmp.with_extension("");
                std::fs::rename(&tmp, &path)
                    .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
                published += 1;
            } else {
                std::fs::remove_file(&tmp)
                    .map_err(|e| Error::io(format!("removing {}", tmp.display()), e))?;
                removed += 1;
            }
        }
        if published + removed + recovered > 0 {
            tracing::info!(published, removed, recovered, dir = %self.dir.display(), "settled the archive files an earlier run left: committed ones published, the rest removed (the replay archives their windows again)");
        }
        self.follow = Some(points);
        Ok(())
    }

    /// A checkpoint was taken after everything written so far: seal the
    /// current file at it if it is due to roll (or `force`), then publish
    /// what is committed.
    pub fn mark(&mut self, id: u64, offsets: &[(i32, i64)], force: bool) -> Result<()> {
        self.last_mark = id;
        self.last_offsets = offsets.to_vec();
        if self.due || force {
            if let Some(mut cur) = self.current.take() {
                let json = serde_json::to_string(offsets).unwrap_or_default();
                cur.writer
                    .append_key_value_metadata(KeyValue::new(SEALED_AT.to_string(), json));
                cur.writer.close()?;
                // Sealed: the file itself survives a crash now.
                if let Some(j) = cur.journal {
                    j.remove();
                }
                self.sealed.push((id, cur.tmp, cur.path));
            }
            self.due = false;
        } else if let Some(cur) = self.current.as_mut() {
            if let Some(j) = cur.journal.as_mut() {
                j.mark(id, cur.rows, offsets)?;
            }
        }
        self.publish()
    }

    /// A lost assignment: the rows since the last committed checkpoint are
    /// redone from it, so the files holding them (sealed but uncommitted,
    /// and the open one) go.
    pub fn abandon(&mut self) -> Result<()> {
        self.publish()?;
        let mut gone: Vec<PathBuf> = self.sealed.drain(..).map(|(_, tmp, _)| tmp).collect();
        if let Some(cur) = self.current.take() {
            drop(cur.writer);
            if let Some(j) = cur.journal {
                j.remove();
            }
            gone.push(cur.tmp);
        }
        for tmp in gone {
            std::fs::remove_file(&tmp)
                .map_err(|e| Error::io(format!("removing {}", tmp.display()), e))?;
        }
        self.due = false;
        Ok(())
    }

    /// Renames sealed files whose checkpoint is committed into view.
    pub fn publish(&mut self) -> Result<()> {
        let Some(points) = &self.follow else {
            return Ok(());
        };
        let committed = points.load(Ordering::SeqCst);
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sealed)
            .into_iter()
            .partition(|(id, _, _)| *id <= committed);
        self.sealed = wait;
        if ready.is_empty() {
            return Ok(());
        }
        for (_, tmp, path) in ready {
            std::fs::rename(&tmp, &path)
                .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
            metrics::counter!(crate::telemetry::ARCHIVE_FILES).increment(1);
        }
        self.retain()
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ends = window_ends(batch);
        let first = ends.first().copied().unwrap_or(0);
        self.newest_ms = self
            .newest_ms
            .max(ends.iter().copied().max().unwrap_or(i64::MIN));
        if self.current.is_none() {
            self.open(first)?;
        }
        if let Some(cur) = self.current.as_mut() {
            cur.writer.write(batch)?;
            if let Some(j) = cur.journal.as_mut() {
                j.ipc.write(batch)?;
            }
            cur.rows += batch.num_rows();
            if cur.rows >= self.cfg.roll_rows {
                self.roll_or_mark_due()?;
            }
        }
        Ok(())
    }

    /// Closes the current file if it is older than the roll interval.
    pub fn maybe_roll(&mut self) -> Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.opened.elapsed() >= self.cfg.roll_interval)
        {
            self.roll_or_mark_due()?;
        }
        self.publish()
    }

    fn roll_or_mark_due(&mut self) -> Result<()> {
        if self.follow.is_some() {
            self.due = true;
            Ok(())
        } else {
            self.roll()
        }
    }

    fn open(&mut self, first_end_ms: i64) -> Result<()> {
        let date = chrono::DateTime::from_timestamp_millis(first_end_ms)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| "unknown".into());
        let part = self.dir.join(format!("date={date}"));
        std::fs::create_dir_all(&part)
            .map_err(|e| Error::io(format!("creating {}", part.display()), e))?;
        self.seq += 1;
        let name = format!(
            "windows-{first_end_ms}-{}-{:04}",
            std::process::id(),
            self.seq
        );
        let path = part.join(format!("{name}.parquet"));
        let tmp = part.join(format!("{name}.parquet.tmp"));
        let file =
            File::create(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let journal = match self.follow {
            Some(_) => Some(Journal::create(&path, &self.schema)?),
            None => None,
        };
        self.current = Some(Open {
            writer: ArrowWriter::try_new(file, self.schema.clone(), None)?,
            tmp,
            path,
            rows: 0,
            opened: Instant::now(),
            journal,
        });
        Ok(())
    }

    /// Completes the current file (renaming it into view) and applies retention.
    pub fn roll(&mut self) -> Result<()> {
        if let Some(cur) = self.current.take() {
            cur.writer.close()?;
            std::fs::rename(&cur.tmp, &cur.path)
                .map_err(|e| Error::io(format!("renaming {}", cur.tmp.display()), e))?;
            metrics::counter!(crate::telemetry::ARCHIVE_FILES).increment(1);
        }
        self.retain()
    }

    fn retain(&self) -> Result<()> {
        let mut files = list_files_with_meta(&self.dir)?;
        let age_ms = self.cfg.retention_age.as_millis() as i64;
        let mut total: u64 = files.iter().map(|f| f.bytes).sum();
        files.sort_by_key(|f| f.first_end_ms);
        for f in &files {
            let too_old = self.newest_ms != i64::MIN
                && self.newest_ms.saturating_sub(f.first_end_ms) > age_ms;
            if (too_old || total > self.cfg.retention_bytes)
                && std::fs::remove_file(&f.path).is_ok()
            {
                total = total.saturating_sub(f.bytes);
                metrics::counter!(crate::telemetry::ARCHIVE_FILES_DELETED).increment(1);
            }
        }
        Ok(())
    }
}

fn window_ends(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column_by_name("window_end")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
        .map(|a| a.values().to_vec())
        .unwrap_or_default()
}

struct FileMeta {
    path: PathBuf,
    bytes: u64,
    first_end_ms: i64,
}

fn list_files_with_meta(dir: &Path) -> Result<Vec<FileMeta>> {
    Ok(list_files(dir)?
        .into_iter()
        .map(|path| {
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let first_end_ms = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.split('-').nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            FileMeta {
                path,
                bytes,
                first_end_ms,
            }
        })
        .collect())
}

/// Completed archive files under `dir`, sorted by path (date, then time).
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for part in rd.flatten() {
        let p = part.path();
        if p.is_dir() {
            if let Ok(files) = std::fs::read_dir(&p) {
                out.extend(
                    files
                        .flatten()
                        .map(|f| f.path())
                        .filter(|f| f.extension().is_some_and(|x| x == "parquet")),
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest of `files` (sorted oldest first, as [`list_files`] gives
/// them) whose sizes add up to at most `max_bytes`, oldest first; at least
/// the newest one. Unreadable sizes count as zero.
pub fn newest_within(files: &[PathBuf], max_bytes: u64) -> Vec<PathBuf> {
    let mut total = 0u64;
    let mut keep = Vec::new();
    for f in files.iter().rev() {
        let size = std::fs::metadata(f).map_or(0, |m| m.len());
        if !keep.is_empty() && total.saturating_add(size) > max_bytes {
            break;
        }
        total = total.saturating_add(size);
        keep.push(f.clone());
    }
    keep.reverse();
    keep
}

/// All files below `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let rd =
            std::fs::read_dir(&d).map_err(|e| Error::io(format!("listing {}", d.display()), e))?;
        for entry in rd.flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// What the writer thread is handed: windows, or a checkpoint mark.
enum ArchiveMsg {
    Windows(RecordBatch),
    /// A checkpoint id and its input offsets (every owned partition).
    Mark(u64, Vec<(i32, i64)>),
    /// Everything since the last committed checkpoint is abandoned.
    Abandon,
}

/// The archive writer on its own thread. Cloneable sender side.
pub struct ArchiveHandle {
    tx: SyncSender<ArchiveMsg>,
    thread: std::thread::JoinHandle<()>,
    acks: tokio::sync::watch::Receiver<u64>,
}

impl ArchiveHandle {
    /// Starts the writer thread; `follow` makes it follow the job's commit
    /// points (durable state).
    pub fn spawn(
        dir: PathBuf,
        schema: SchemaRef,
        cfg: ArchiveConfig,
        follow: Option<(CommitPoints, BTreeMap<i32, i64>)>,
    ) -> Result<Self> {
        let mut w = ArchiveWriter::new(dir, schema, cfg)?;
        if let Some((points, committed)) = follow {
            w.follow(points, &committed)?;
        }
        let (tx, rx) = sync_channel::<ArchiveMsg>(256);
        let (ack_tx, acks) = tokio::sync::watch::channel(0u64);
        let thread = std::thread::Builder::new()
            .name("streamcast-archive".into())
            .spawn(move || archive_loop(&mut w, rx, &ack_tx))
            .map_err(|e| Error::io("starting the archive thread", e))?;
        Ok(ArchiveHandle { tx, thread, acks })
    }

    /// The newest checkpoint whose rows the writer has journalled (or
    /// sealed): the sink commits checkpoint `id` only once this reaches it.
    /// Ends (the sender is dropped) when the writer stops.
    pub fn acks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.acks.clone()
    }

    /// Hands a batch to the writer without ever blocking.
    pub fn offer(&self, batch: RecordBatch) {
        match self.tx.try_send(ArchiveMsg::Windows(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(ArchiveMsg::Windows(b))) => {
                metrics::counter!(crate::telemetry::ARCHIVE_DROPPED).increment(b.num_rows() as u64);
                tracing::error!(rows = b.num_rows(), "archive writer is behind: windows dropped from the archive (forecasts unaffected)");
            }
            Err(TrySendError::Full(ArchiveMsg::Mark(..) | ArchiveMsg::Abandon)) => {}
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("archive writer stopped: windows are not archived");
            }
        }
    }

    /// A lost assignment (see `ArchiveWriter::abandon`). Blocks while the
    /// writer is behind: it must not be skipped.
    pub fn abandon(&self) {
        let _ = self.tx.send(ArchiveMsg::Abandon);
    }

    /// Tells the writer a checkpoint was taken after every batch offered so
    /// far. Blocks while the writer is behind: a skipped mark would leave
    /// the rows before a committed checkpoint unrecoverable (module docs);
    /// the sink waits for its acknowledgement anyway.
    pub fn mark(&self, checkpoint: u64, offsets: Vec<(i32, i64)>) {
        let _ = self.tx.send(ArchiveMsg::Mark(checkpoint, offsets));
    }

    /// Flushes and closes the current file.
    pub fn close(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

fn archive_loop(
    w: &mut ArchiveWriter,
    rx: Receiver<ArchiveMsg>,
    acks: &tokio::sync::watch::Sender<u64>,
) {
    let mut failing_since: Option<Instant> = None;
    loop {
        let res = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(ArchiveMsg::Windows(b)) => w.write(&b).and_then(|()| w.maybe_roll()),
            Ok(ArchiveMsg::Mark(id, offsets)) => {
                let r = w.mark(id, &offsets, false);
                // Acknowledged even when the write failed: a failing disk
                // loses archive rows (counted, logged), never the job's
                // commits.
                acks.send_replace(id);
                r
            }
            Ok(ArchiveMsg::Abandon) => w.abandon(),
            Err(RecvTimeoutError::Timeout) => w.maybe_roll(),
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match res {
            Ok(()) => failing_since = None,
            Err(e) => {
                metrics::counter!(crate::telemetry::ARCHIVE_ERRORS).increment(1);
                tracing::error!(error = %e, "archive write failed (disk full?); windows are being lost from the archive");
                // Abandon the broken file; the next batch opens a new one.
                if let Some(j) = w.current.take().and_then(|c| c.journal) {
                    j.remove();
                }
                if failing_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(1)
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
    if let Err(e) = finish(w) {
        tracing::error!(error = %e, "closing the archive file failed");
    }
}

/// At the end of the job: without commit points, roll. With them, seal the
/// file at the last mark (every batch before it is written) and wait,
/// bounded, for the final checkpoint's commit to publish it; what is not
/// committed by then stays `*.tmp` and is recomputed by the next start.
fn finish(w: &mut ArchiveWriter) -> Result<()> {
    if w.follow.is_none() {
        return w.roll();
    }
    if w.last_mark == 0 {
        return Ok(()); // no checkpoint covers the current file
    }
    let offsets = std::mem::take(&mut w.last_offsets);
    w.mark(w.last_mark, &offsets, true)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w.sealed.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        w.publish()?;
    }
    if !w.sealed.is_empty() {
        tracing::warn!(files = w.sealed.len(), "archive files whose checkpoint was not committed stay uncommitted (*.tmp); the next start recomputes them");
    }
    Ok(())
}

/// Writes window batches to one Parquet file in the archive's format
/// (training data made from events, evaluation).
pub fn write_windows_file(batches: &[RecordBatch], schema: SchemaRef, path: &Path) -> Result<()> {
    write_parquet(batches, schema, None, path)
}

/// One Parquet file of `batches`, its footer naming the checkpoint offsets
/// it was sealed at when given.
fn write_parquet(
    batches: &[RecordBatch],
    schema: SchemaRef,
    sealed_at: Option<&[(i32, i64)]>,
    path: &Path,
) -> Result<()> {
    let file =
        File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let mut w = ArrowWriter::try_new(file, schema, None)?;
    for b in batches {
        w.write(b)?;
    }
    if let Some(offsets) = sealed_at {
        let json =
            serde_json::to_string(offsets).map_err(|e| Error::json("checkpoint offsets", e))?;
        w.append_key_value_metadata(KeyValue::new(SEALED_AT.to_string(), json));
    }
    w.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};

    /// Retraining reads only the newest files within its byte budget.
    #[test]
    fn newest_within_keeps_the_newest_files_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = [300usize, 200, 100, 50]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let f = dir.path().join(format!("{i}.parquet"));
                std::fs::write(&f, vec![0u8; n]).unwrap();
                f
            })
            .collect();
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(newest_within(&files, 350)),
            ["1.parquet", "2.parquet", "3.parquet"]
        );
        assert_eq!(names(newest_within(&files, 10_000)).len(), 4);
        // Always at least the newest, even over budget.
        assert_eq!(names(newest_within(&files, 1)), ["3.parquet"]);
    }
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn batch(end_ms: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("value", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(end_ms.iter().map(|_| "k"))),
                Arc::new(TimestampMillisecondArray::from(end_ms.to_vec()).with_timezone("UTC")),
                Arc::new(Float64Array::from_iter_values(
                    end_ms.iter().map(|&e| e as f64),
                )),
            ],
        )
        .unwrap()
    }

    /// Files rolled after `roll_rows` rows (or an hour), kept 1,000 days.
    fn kept(roll_rows: usize) -> ArchiveConfig {
        ArchiveConfig {
            enabled: true,
            dir: None,
            roll_rows,
            roll_interval: Duration::from_secs(3600),
            retention_age: Duration::from_secs(1_000 * 86_400),
            retention_bytes: u64::MAX,
        }
    }

    #[test]
    fn rolls_files_renames_into_view_and_applies_retention() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400_000;
        let cfg = ArchiveConfig {
            enabled: true,
            dir: None,
            roll_rows: 2,
            roll_interval: Duration::from_secs(3600),
            retention_age: Duration::from_secs(2 * 86_400),
            retention_bytes: u64::MAX,
        };
        let mut w =
            ArchiveWriter::new(dir.path().to_path_buf(), batch(&[0]).schema(), cfg).unwrap();
        w.write(&batch(&[day, day + 1])).unwrap(); // rolls: 2 rows
        assert_eq!(list_files(dir.path()).unwrap().len(), 1);
        w.write(&batch(&[2 * day])).unwrap(); // open, not visible yet
        assert_eq!(
            list_files(dir.path()).unwrap().len(),
            1,
            "an open file is not visible"
        );
        w.write(&batch(&[4 * day - 1])).unwrap(); // rolls; the day-1 file is now > 2 days old
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(
            files[0].to_string_lossy().contains("date=1970-01-03"),
            "the day-2 file went: {files:?}"
        );
    }

    #[test]
    fn byte_budget_deletes_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            enabled: true,
            dir: None,
            roll_rows: 1,
            roll_interval: Duration::from_secs(3600),
            retention_age: Duration::from_secs(1 << 40),
            retention_bytes: 1,
        };
        let mut w =
            ArchiveWriter::new(dir.path().to_path_buf(), batch(&[0]).schema(), cfg).unwrap();
        for i in 0..3 {
            w.write(&batch(&[i * 1000])).unwrap();
        }
        assert!(
            list_files(dir.path()).unwrap().is_empty(),
            "a 1-byte budget keeps nothing"
        );
    }

    /// Durable state: a due file is sealed at the next mark and becomes
    /// visible only once that checkpoint is committed; uncommitted files a
    /// crash left are removed on start.
    #[test]
    fn files_follow_commit_points() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = kept(2);
        let points = CommitPoints::default();
        let schema = batch(&[0]).schema();
        let mut w =
            ArchiveWriter::new(dir.path().to_path_buf(), schema.clone(), cfg.clone()).unwrap();
        w.follow(points.clone(), &BTreeMap::new()).unwrap();
        w.write(&batch(&[1, 2])).unwrap(); // due, but no mark yet
        w.write(&batch(&[3])).unwrap(); // same file: rows before the mark
        assert!(list_files(dir.path()).unwrap().is_empty());
        w.mark(1, &[(0, 10)], false).unwrap();
        assert!(
            list_files(dir.path()).unwrap().is_empty(),
            "checkpoint 1 not committed yet"
        );
        w.write(&batch(&[4])).unwrap(); // a new file, after checkpoint 1
        points.store(1, Ordering::SeqCst);
        w.publish().unwrap();
        assert_eq!(
            list_files(dir.path()).unwrap().len(),
            1,
            "checkpoint 1 committed"
        );
        w.write(&batch(&[5, 6])).unwrap(); // due again
        w.mark(2, &[(0, 20)], false).unwrap(); // sealed at checkpoint 2...
        w.write(&batch(&[7])).unwrap(); // ...and an open file after it
                                        // A crash now, after checkpoint 2 was committed but before the
                                        // rename: the next start publishes the sealed file (its offsets are
                                        // committed) and removes the open one.
        drop(w);
        let tmp = |d: &Path| {
            walk(d)
                .unwrap()
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
                .count()
        };
        assert_eq!(tmp(dir.path()), 2);
        let mut again =
            ArchiveWriter::new(dir.path().to_path_buf(), schema.clone(), cfg.clone()).unwrap();
        again
            .follow(CommitPoints::default(), &BTreeMap::from([(0, 20)]))
            .unwrap();
        assert_eq!(tmp(dir.path()), 0);
        assert_eq!(
            list_files(dir.path()).unwrap().len(),
            2,
            "checkpoint 2's file published"
        );
        // Had checkpoint 2 not been committed, its file would go too.
        let dir2 = tempfile::tempdir().unwrap();
        let mut w =
            ArchiveWriter::new(dir2.path().to_path_buf(), schema.clone(), cfg.clone()).unwrap();
        w.follow(CommitPoints::default(), &BTreeMap::new()).unwrap();
        w.write(&batch(&[1, 2])).unwrap();
        w.mark(1, &[(0, 10)], false).unwrap();
        drop(w);
        let mut again = ArchiveWriter::new(dir2.path().to_path_buf(), schema, cfg).unwrap();
        again
            .follow(CommitPoints::default(), &BTreeMap::from([(0, 9)]))
            .unwrap();
        assert!(
            walk(dir2.path()).unwrap().is_empty(),
            "uncommitted sealed file removed"
        );
    }

    /// The bug a journal fixes: rows written to a file that is not due to
    /// roll stay in it across a committed checkpoint; a crash then must not
    /// lose them (the replay starts after that checkpoint). Rows after the
    /// last committed mark, and a journal tail cut short, are not recovered.
    #[test]
    fn rows_before_a_committed_mark_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = kept(1_000);
        let schema = batch(&[0]).schema();
        let mut w =
            ArchiveWriter::new(dir.path().to_path_buf(), schema.clone(), cfg.clone()).unwrap();
        w.follow(CommitPoints::default(), &BTreeMap::new()).unwrap();
        w.write(&batch(&[1, 2])).unwrap();
        w.mark(1, &[(0, 10)], false).unwrap(); // not due: the file stays open
        w.write(&batch(&[3])).unwrap();
        w.mark(2, &[(0, 20)], false).unwrap();
        w.write(&batch(&[4, 5])).unwrap(); // after checkpoint 2
        w.mark(3, &[(0, 30)], false).unwrap();
        w.write(&batch(&[6])).unwrap(); // after every mark
                                        // A crash with checkpoint 2 committed (3 was not).
        std::mem::forget(w);
        // A torn tail (the crash cut the last write short) changes nothing.
        let journal = walk(dir.path())
            .unwrap()
            .into_iter()
            .find(|p| p.extension().is_some_and(|x| x == "journal"))
            .expect("the open file has a journal");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        std::io::Write::write_all(&mut f, &[0xff, 0xff, 0xff]).unwrap();
        let mut again =
            ArchiveWriter::new(dir.path().to_path_buf(), schema.clone(), cfg.clone()).unwrap();
        again
            .follow(CommitPoints::default(), &BTreeMap::from([(0, 20)]))
            .unwrap();
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        let ends = read_ends(&files[0]);
        assert_eq!(ends, [1, 2, 3], "the rows of checkpoints 1 and 2, once");
        assert_eq!(
            sealed_offsets(&files[0]),
            Some(vec![(0, 20)]),
            "sealed at the committed mark"
        );
        assert_eq!(
            walk(dir.path()).unwrap().len(),
            1,
            "no journal, marks or tmp file left behind"
        );
        // Nothing committed: nothing recovered, nothing left.
        let dir2 = tempfile::tempdir().unwrap();
        let mut w =
            ArchiveWriter::new(dir2.path().to_path_buf(), schema.clone(), cfg.clone()).unwrap();
        w.follow(CommitPoints::default(), &BTreeMap::new()).unwrap();
        w.write(&batch(&[1])).unwrap();
        w.mark(1, &[(0, 10)], false).unwrap();
        std::mem::forget(w);
        let mut again = ArchiveWriter::new(dir2.path().to_path_buf(), schema, cfg).unwrap();
        again
            .follow(CommitPoints::default(), &BTreeMap::from([(0, 9)]))
            .unwrap();
        assert!(walk(dir2.path()).unwrap().is_empty());
    }

    /// A sealed file makes its journal redundant: it is removed at sealing.
    #[test]
    fn sealing_removes_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = kept(2);
        let mut w =
            ArchiveWriter::new(dir.path().to_path_buf(), batch(&[0]).schema(), cfg).unwrap();
        w.follow(CommitPoints::default(), &BTreeMap::new()).unwrap();
        w.write(&batch(&[1, 2])).unwrap(); // due
        w.mark(1, &[(0, 10)], false).unwrap(); // sealed
        let left: Vec<_> = walk(dir.path()).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].to_string_lossy().ends_with(".parquet.tmp"));
    }

    fn read_ends(path: &Path) -> Vec<i64> {
        let f = File::open(path).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        r.flat_map(|b| window_ends(&b.unwrap())).collect()
    }
}
