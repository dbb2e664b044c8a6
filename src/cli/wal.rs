//! `understudy wal verify DIR` and `understudy wal dump DIR [--from LSN]`: offline looks at a
//! log. Both are read-only: a damaged tail is reported, not cut (the node cuts it when it
//! opens the log), and nothing in the directory is changed. `understudy wal vouch DIR
//! --accept-data-loss` is the one that writes: the operator's way out of a cluster that
//! cannot elect because too many of its nodes are learners. A tail is either provably torn (a
//! crash cut the last record short: nothing acknowledged is lost) or suspect (the last record
//! is whole but fails its check: it may have been acknowledged, so the node starts as a
//! learner); both are reported, neither is an error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Subcommand;
use wal::format::RecordKind;
use wal::log::{inspect, Inspection};
use wal::Lsn;

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Verify every record's checksum and the log's structure (and, in a data directory, the
    /// metadata file and every snapshot); exit 1 on corruption.
    Verify {
        /// A data directory (its `wal/` is used) or a log directory.
        dir: PathBuf,
    },
    /// Print one line per record: LSN, epoch, kind, length and a payload preview.
    Dump {
        /// A data directory (its `wal/` is used) or a log directory.
        dir: PathBuf,
        /// First LSN to print.
        #[arg(long, value_name = "LSN")]
        from: Option<u64>,
        /// Print at most this many records.
        #[arg(long, value_name = "COUNT")]
        limit: Option<u64>,
        /// Bytes of payload to preview per record.
        #[arg(long, default_value_t = 32, value_name = "BYTES")]
        preview: usize,
    },
    /// Make a stopped node that starts as a learner a voter again, vouching for its log by
    /// hand. Only for a cluster that cannot elect because too many of its nodes are learners
    /// and the copies that could hold their lost records are gone for good: records
    /// acknowledged only by what the learners lost may be lost. Prints what it would do
    /// unless --accept-data-loss is given.
    Vouch {
        /// The node's data directory (the node must be stopped).
        dir: PathBuf,
        /// Write the change: clear the learner flag and remove the log floor.
        #[arg(long)]
        accept_data_loss: bool,
    },
}

pub fn run(command: WalCommand) -> anyhow::Result<()> {
    match command {
        WalCommand::Verify { dir } => verify(&dir),
        WalCommand::Dump {
            dir,
            from,
            limit,
            preview,
        } => dump(&dir, from.map(Lsn), limit, preview),
        WalCommand::Vouch {
            dir,
            accept_data_loss,
        } => vouch(&dir, accept_data_loss, &mut std::io::stdout().lock()),
    }
}

/// `understudy wal vouch`: clears a stopped node's learner flag and removes its log floor,
/// after printing what its data directory holds. Refuses a running node (its lock), a data
/// dir without `meta`, and a log whose damaged tail the node has not cut yet (the next start
/// would find it and make the node a learner again).
fn vouch(dir: &Path, accept: bool, out: &mut impl Write) -> anyhow::Result<()> {
    use crate::node::disk::LOG_FLOOR_FILE_NAME;
    use wal::meta::{Meta, META_FILE_NAME};
    let meta_path = dir.join(META_FILE_NAME);
    if !meta_path.is_file() {
        bail!(
            "{}: no metadata file; start the node once first (a data dir without it starts \
             as a learner and writes a new one)",
            meta_path.display()
        );
    }
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("{}: in use by a running node; stop it first", dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("lock {}", lock_path.display()))
        }
    }
    let Some(meta) = Meta::load(&meta_path)? else {
        bail!("{}: no metadata file", meta_path.display());
    };
    let (_, inspection) = open(dir)?;
    if let Some(torn) = inspection.torn.as_ref().filter(|t| !t.provably_torn) {
        bail!(
            "{}: the log's tail after lsn {} is damaged and not cut yet; start the node once \
             (it cuts the tail and starts as a learner), stop it, then vouch for it",
            dir.display(),
            torn.last_lsn
        );
    }
    let floor_path = dir.join(LOG_FLOOR_FILE_NAME);
    let floor = wal::mark::read(&floor_path)?;
    let last = inspection.last_lsn().unwrap_or(Lsn::ZERO);
    let last_epoch = inspection
        .epoch_starts
        .last()
        .map_or("none".to_owned(), |start| start.epoch.to_string());
    writeln!(
        out,
        "node {}: epoch {}, {}, log through lsn {last} (last epoch {last_epoch}), log floor {}",
        meta.node_id,
        meta.epoch,
        if meta.learner { "a learner" } else { "a voter" },
        match floor {
            wal::mark::MarkFile::Absent if meta.floor_kept =>
                "missing (its meta records that it keeps one)".to_owned(),
            wal::mark::MarkFile::Absent => "none".to_owned(),
            wal::mark::MarkFile::At(lsn) => format!("lsn {lsn}"),
            wal::mark::MarkFile::Damaged => "damaged".to_owned(),
        }
    )?;
    // What the next start holds against the log (`node::disk`): a floor above its end,
    // damaged, or missing although `meta` says it is kept.
    let floor_above = match floor {
        wal::mark::MarkFile::Absent => meta.floor_kept,
        wal::mark::MarkFile::At(lsn) => lsn > last,
        wal::mark::MarkFile::Damaged => true,
    };
    if !meta.learner && !floor_above {
        writeln!(out, "nothing to do: it starts as a voter")?;
        return Ok(());
    }
    if !accept {
        bail!(
            "not changed. This makes the node vote with the log above: a record the cluster \
             acknowledged that this log lacks is lost if the node helps elect a primary \
             without it. Vouch only for the node with the longest log (`understudy wal \
             verify`) among those left, then rerun with --accept-data-loss"
        );
    }
    // The floor goes first: a crash after it leaves a learner whose next start finds no
    // floor to hold against its log, which is what a vouch is meant to leave anyway; `meta`
    // is then stored whole (FORMAT.md, "Node metadata").
    if floor != wal::mark::MarkFile::Absent {
        std::fs::remove_file(&floor_path)
            .with_context(|| format!("remove {}", floor_path.display()))?;
        wal::fs::sync_dir(dir)?;
    }
    // The floor is gone on purpose: `meta` no longer says it is kept (the next start
    // makes a new one at the vouched log's end and says so again).
    Meta {
        learner: false,
        floor_kept: false,
        ..meta
    }
    .store(&meta_path)?;
    writeln!(
        out,
        "node {} is a voter at its next start, with its log through lsn {last}",
        meta.node_id
    )?;
    Ok(())
}

/// The log directory for `dir`: `dir/wal` if it is a data directory, else `dir` itself.
fn log_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let nested = dir.join("wal");
    Ok(if nested.is_dir() {
        nested
    } else {
        dir.to_owned()
    })
}

fn open(dir: &Path) -> anyhow::Result<(PathBuf, Inspection)> {
    let dir = log_dir(dir)?;
    // Every error from the log names its file already.
    let inspection = inspect(&dir)?;
    Ok((dir, inspection))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// In a data directory, also checks the metadata file and every snapshot; returns whether
/// the metadata records that the data dir keeps a log floor.
fn verify_data_dir(data_dir: &Path, out: &mut impl Write) -> anyhow::Result<bool> {
    let meta_path = data_dir.join(wal::meta::META_FILE_NAME);
    let mut floor_kept = false;
    if meta_path.exists() {
        let bytes =
            std::fs::read(&meta_path).with_context(|| format!("read {}", meta_path.display()))?;
        let meta = wal::meta::Meta::decode(&bytes, &meta_path)?;
        floor_kept = meta.floor_kept;
        let vote = meta.voted_for.map_or("none".to_owned(), |n| n.to_string());
        let learner = if meta.learner { "  learner" } else { "" };
        writeln!(
            out,
            "{}  node {}  cluster {:016x}  epoch {}  voted for {vote}{learner}  ok",
            meta_path.display(),
            meta.node_id,
            meta.cluster_id,
            meta.epoch
        )?;
    }
    let snapshots = data_dir.join("snapshots");
    if snapshots.is_dir() {
        for info in wal::snapshot::list(&snapshots)? {
            let info = wal::snapshot::verify(&info.path)?;
            writeln!(
                out,
                "{}  lsn {}  epoch {}  {:.1} MiB  ok",
                info.path.display(),
                info.lsn,
                info.epoch,
                mib(info.body_len)
            )?;
        }
    }
    Ok(floor_kept)
}

fn verify(dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let data_dir = dir.join("wal").is_dir().then_some(dir);
    let floor_kept = match data_dir {
        Some(data_dir) => verify_data_dir(data_dir, &mut out)?,
        None => false,
    };
    let (dir, inspection) = open(dir)?;
    let mut bytes = 0;
    for segment in &inspection.segments {
        let count = Lsn::count_between(segment.first_lsn, segment.last_lsn);
        bytes += segment.len;
        writeln!(
            out,
            "{}  lsn {}..={}  {count} records  {:.1} MiB  ok",
            segment.path.display(),
            segment.first_lsn,
            segment.last_lsn,
            mib(segment.len)
        )?;
    }
    for tmp in &inspection.stale_tmp {
        writeln!(
            out,
            "{}  incomplete install, removed when the node starts",
            tmp.display()
        )?;
    }
    if let Some(torn) = &inspection.torn {
        let path = torn.path.display();
        let (last_lsn, offset, cut_len, reason) =
            (torn.last_lsn, torn.offset, torn.cut_len, &torn.reason);
        if torn.provably_torn {
            writeln!(
                out,
                "{path}  torn tail (provably torn) after lsn {last_lsn} at offset {offset} \
                 ({cut_len} bytes: {reason}); cut when the node starts"
            )?;
        } else {
            writeln!(
                out,
                "{path}  suspect tail: the last record is complete but fails its check; the \
                 node will start as a learner (after lsn {last_lsn} at offset {offset}, \
                 {cut_len} bytes: {reason}; cut when the node starts)"
            )?;
        }
    }
    if let Some(data_dir) = data_dir {
        floor_line(data_dir, floor_kept, &inspection, &mut out)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    match (inspection.first_lsn(), inspection.last_lsn()) {
        (Some(first), Some(last)) => {
            let records = Lsn::count_between(first, last);
            let epochs = match (
                inspection.epoch_starts.first(),
                inspection.epoch_starts.last(),
            ) {
                (Some(a), Some(b)) => format!(", epochs {}..={}", a.epoch, b.epoch),
                _ => String::new(),
            };
            writeln!(
                out,
                "ok: {} segments, {records} records (lsn {first}..={last}){epochs}, {:.1} MiB verified in {elapsed:.2} s",
                inspection.segments.len(),
                mib(bytes),
            )?;
        }
        _ => writeln!(out, "ok: {} holds no log", dir.display())?,
    }
    Ok(())
}

/// The log floor's line: where the log must reach for the node to vouch for it (the newest
/// snapshot counts, since the node's log continues it), or that it is missing although
/// `meta` records that it is kept (`floor_kept`).
fn floor_line(
    data_dir: &Path,
    floor_kept: bool,
    inspection: &Inspection,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    use crate::node::disk::{log_floor, LsnFile, LOG_FLOOR_FILE_NAME};
    let path = data_dir.join(LOG_FLOOR_FILE_NAME);
    let floor = match log_floor(data_dir)? {
        LsnFile::Absent => {
            if floor_kept {
                writeln!(
                    out,
                    "{}  missing, although {} records that it keeps one: the node will start as a learner",
                    path.display(),
                    wal::meta::META_FILE_NAME
                )?;
            }
            return Ok(());
        }
        LsnFile::Damaged => {
            writeln!(
                out,
                "{}  damaged: the node will start as a learner",
                path.display()
            )?;
            return Ok(());
        }
        LsnFile::At(floor) => floor,
    };
    let snapshots = data_dir.join("snapshots");
    let mut reaches = inspection.last_lsn().unwrap_or(Lsn::ZERO);
    if snapshots.is_dir() {
        if let Some(newest) = wal::snapshot::list(&snapshots)?.last() {
            reaches = reaches.max(newest.lsn);
        }
    }
    if reaches < floor {
        writeln!(
            out,
            "{}  lsn {floor}, but the log reaches only lsn {reaches}: records it held are gone; \
             the node will start as a learner",
            path.display()
        )?;
    } else {
        writeln!(out, "{}  lsn {floor}  ok", path.display())?;
    }
    Ok(())
}

/// Printable ASCII as is, everything else escaped, like a debugger's string view.
fn preview(payload: &[u8], max: usize) -> String {
    let mut text = String::with_capacity(max + 8);
    for &byte in payload.iter().take(max) {
        text.extend(std::ascii::escape_default(byte).map(char::from));
    }
    if payload.len() > max {
        text.push_str("...");
    }
    text
}

fn dump(
    dir: &Path,
    from: Option<Lsn>,
    limit: Option<u64>,
    preview_len: usize,
) -> anyhow::Result<()> {
    let (dir, inspection) = open(dir)?;
    let Some(reader) = inspection.reader() else {
        eprintln!("{} holds no log", dir.display());
        return Ok(());
    };
    let first = reader.first_lsn();
    let from = from.unwrap_or(first);
    let records = reader
        .iter_from(from)
        .with_context(|| format!("dump {} from lsn {from}", dir.display()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(
        out,
        "{:>12}  {:>8}  {:<11}  {:>8}  payload",
        "lsn", "epoch", "kind", "len"
    )?;
    for record in records.take(limit.map_or(usize::MAX, |l| l as usize)) {
        let record = record.with_context(|| format!("dump {}", dir.display()))?;
        let kind = match record.kind {
            RecordKind::App => "app",
            RecordKind::EpochStart => "epoch-start",
            RecordKind::Config => "config",
        };
        let payload = record.payload();
        writeln!(
            out,
            "{:>12}  {:>8}  {kind:<11}  {:>8}  \"{}\"",
            record.lsn,
            record.epoch,
            payload.len(),
            preview(&payload, preview_len)
        )?;
    }
    if let Some(torn) = &inspection.torn {
        let what = if torn.provably_torn {
            "torn tail"
        } else {
            "suspect tail"
        };
        writeln!(
            out,
            "# {what} after lsn {} not shown ({} bytes)",
            torn.last_lsn, torn.cut_len
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FsyncMode;
    use crate::node::disk;
    use wal::{Epoch, NodeId};

    fn open_node(dir: &Path) -> disk::Opened {
        disk::open(dir, NodeId(1), 7, FsyncMode::Always, Default::default()).unwrap()
    }

    /// Three records of epoch 1 appended to the node's log (not synced).
    fn append_three(opened: &disk::Opened) {
        for _ in 0..3 {
            opened
                .writer
                .append(Epoch(1), RecordKind::App, [&b"x"[..]])
                .unwrap();
        }
    }

    /// A learner is made a voter only with --accept-data-loss, only while stopped, and only
    /// once its damaged tail is cut; its next start is then a voter's, with its log kept.
    #[test]
    fn vouch_makes_a_stopped_learner_a_voter_only_when_told_to() {
        let dir = tempfile::tempdir().unwrap();
        // `open` joins an existing cluster: a learner.
        let first = open_node(dir.path());
        assert!(first.start.learner);
        append_three(&first);
        first.writer.sync().unwrap();
        let error = vouch(dir.path(), true, &mut Vec::new()).unwrap_err();
        assert!(
            error.to_string().contains("in use by a running node"),
            "{error}"
        );
        drop(first);

        let mut out = Vec::new();
        let error = vouch(dir.path(), false, &mut out).unwrap_err();
        assert!(error.to_string().contains("--accept-data-loss"), "{error}");
        let said = String::from_utf8(out).unwrap();
        assert!(said.contains("a learner, log through lsn 3"), "{said}");
        assert!(open_node(dir.path()).start.learner, "nothing changed");

        let mut out = Vec::new();
        vouch(dir.path(), true, &mut out).unwrap();
        let again = open_node(dir.path());
        assert!(!again.start.learner, "{:?}", again.learner_reason);
        assert_eq!(again.recovered.last_lsn, Lsn(3));
        drop(again);
        let mut out = Vec::new();
        vouch(dir.path(), false, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("nothing to do"));
    }

    /// A floor missing although `meta` records that it is kept makes the next start a
    /// learner, and `vouch` sees it so: it refuses without --accept-data-loss, and with it
    /// leaves a voter.
    #[test]
    fn vouch_sees_a_missing_floor_that_meta_says_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = disk::open_with(
            dir.path(),
            NodeId(1),
            7,
            FsyncMode::Always,
            Default::default(),
            wal::Options::default().segment_bytes_max,
            disk::InitialClusterState::New,
        )
        .unwrap();
        assert!(!first.start.learner);
        append_three(&first);
        first.writer.sync().unwrap();
        drop(first);
        std::fs::remove_file(dir.path().join(disk::LOG_FLOOR_FILE_NAME)).unwrap();

        let mut out = Vec::new();
        let (_, inspection) = open(dir.path()).unwrap();
        let floor_kept = verify_data_dir(dir.path(), &mut Vec::new()).unwrap();
        assert!(floor_kept, "meta records no floor kept");
        floor_line(dir.path(), floor_kept, &inspection, &mut out).unwrap();
        let said = String::from_utf8(out).unwrap();
        assert!(said.contains("missing, although meta records"), "{said}");
        let mut out = Vec::new();
        assert!(vouch(dir.path(), false, &mut out).is_err());
        let mut out = Vec::new();
        vouch(dir.path(), true, &mut out).unwrap();
        let said = String::from_utf8(out).unwrap();
        assert!(said.contains("missing (its meta records"), "{said}");
        let next = open_node(dir.path());
        assert!(
            !next.start.learner,
            "vouch said {said:?}, but the next start is a learner: {:?}",
            next.learner_reason
        );
    }

    /// A data dir without `meta`, or with a suspect tail not yet cut, is refused.
    #[test]
    fn vouch_refuses_what_the_next_start_would_undo() {
        let dir = tempfile::tempdir().unwrap();
        let error = vouch(dir.path(), true, &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("no metadata file"), "{error}");
        let first = open_node(dir.path());
        for _ in 0..3 {
            first
                .writer
                .append(Epoch(1), RecordKind::App, [&b"record"[..]])
                .unwrap();
        }
        first.writer.sync().unwrap();
        drop(first);
        // The last record's payload changed: a whole record failing its check.
        let segment = std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "wal"))
            .unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&segment, bytes).unwrap();
        let error = vouch(dir.path(), true, &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("not cut yet"), "{error}");
    }
}
