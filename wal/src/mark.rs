//! The durable mark: a small file beside the log that holds the highest LSN the log has
//! reported durable, so that a log found shorter at the next start (segments deleted,
//! truncated, wiped: a loss recovery cannot tell from the end of a log) is known to have
//! lost records its node acknowledged.
//!
//! The group-commit writer ([`crate::writer`]) keeps it, on its own thread and in the
//! order of its work:
//!
//! - after every fsync that made records durable, and before anyone is told so, it writes
//!   the new durable LSN over the file in place ([`DurableMark::raise`]: one `pwrite`, no
//!   fsync). The log's records were fsynced first, so whatever of the file reaches the disk
//!   never names an LSN the disk does not hold: after a power loss it may be older, never
//!   ahead. A process that dies (SIGKILL) leaves it in the page cache, current.
//! - before it cuts the log's end back (a divergent suffix, a reset), it lowers the mark to
//!   the cut and fsyncs it ([`DurableMark::lower`]): a crash between the two leaves a mark
//!   below the log's end, never above it.
//!
//! [`DurableMark::sync`] makes the latest value durable (the caller does it now and then
//! off the hot path, so that a power loss loses little of the mark).
//!
//! The file holds the LSN in decimal, zero-padded to [`MARK_LEN`] bytes with a newline, so
//! that every write replaces the whole content in one `pwrite` of a few bytes within one
//! sector. An older file that holds the LSN unpadded reads the same.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoOp, Result};
use crate::types::Lsn;

/// The file's length: 20 decimal digits (any `u64`) and a newline.
pub const MARK_LEN: usize = 21;

/// What a mark file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkFile {
    Absent,
    At(Lsn),
    /// Not a decimal LSN: the disk damaged it.
    Damaged,
}

/// Reads the mark file at `path`.
pub fn read(path: &Path) -> Result<MarkFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MarkFile::Absent),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Ok(MarkFile::Damaged),
        Err(e) => return Err(Error::io(IoOp::Read, path, e)),
    };
    Ok(match text.trim().parse::<u64>() {
        Ok(lsn) => MarkFile::At(Lsn(lsn)),
        Err(_) => MarkFile::Damaged,
    })
}

/// The open mark file and the value it was last given.
#[derive(Debug)]
pub struct DurableMark {
    path: PathBuf,
    file: File,
    value: AtomicU64,
    /// The value [`DurableMark::sync`] last made durable (`u64::MAX`: none yet).
    synced: AtomicU64,
}

impl DurableMark {
    /// Opens (or creates) the mark at `path` and writes `value` into it, fsynced. The caller
    /// has read what it held before.
    ///
    /// A new mark is installed whole (temp file, fsync, rename, directory fsync): created in
    /// place, a crash before its first write would leave an empty file, which the next start
    /// reads as a damaged mark (and so as a node that lost records).
    pub fn open(path: &Path, value: Lsn) -> Result<DurableMark> {
        if !path.exists() {
            crate::fs::write_atomic(path, encode(value).as_bytes())?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(IoOp::Open, path, e))?;
        let mark = DurableMark {
            path: path.to_path_buf(),
            file,
            value: AtomicU64::new(value.get()),
            synced: AtomicU64::new(u64::MAX),
        };
        mark.write(value)?;
        mark.file
            .set_len(MARK_LEN as u64)
            .map_err(|e| Error::io(IoOp::Truncate, path, e))?;
        mark.sync()?;
        Ok(mark)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value last written.
    pub fn value(&self) -> Lsn {
        Lsn(self.value.load(Ordering::Acquire))
    }

    /// Writes `lsn` over the mark if it is higher (no fsync: see the module docs). Only
    /// the writer thread calls this and [`DurableMark::lower`].
    pub fn raise(&self, lsn: Lsn) -> Result<()> {
        if lsn > self.value() {
            self.write(lsn)?;
        }
        Ok(())
    }

    /// Writes `lsn` over the mark and fsyncs it, if the mark is higher: before the log is
    /// cut back to `lsn`.
    pub fn lower(&self, lsn: Lsn) -> Result<()> {
        if lsn < self.value() {
            self.write(lsn)?;
            self.sync()?;
        }
        Ok(())
    }

    /// Whether the value last written is durable.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) == self.value.load(Ordering::Acquire)
    }

    /// Makes the value last written durable, if it is not already.
    pub fn sync(&self) -> Result<()> {
        let value = self.value.load(Ordering::Acquire);
        if self.synced.load(Ordering::Acquire) == value {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io(IoOp::Fsync, &self.path, e))?;
        self.synced.store(value, Ordering::Release);
        Ok(())
    }

    fn write(&self, lsn: Lsn) -> Result<()> {
        let text = encode(lsn);
        self.file
            .write_all_at(text.as_bytes(), 0)
            .map_err(|e| Error::io(IoOp::Write, &self.path, e))?;
        self.value.store(lsn.get(), Ordering::Release);
        Ok(())
    }
}

/// The file's content for `lsn`: [`MARK_LEN`] bytes.
fn encode(lsn: Lsn) -> String {
    let text = format!("{:020}\n", lsn.get());
    debug_assert_eq!(text.len(), MARK_LEN);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_rises_without_sync_lowers_with_it_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log-floor");
        assert_eq!(read(&path).expect("read"), MarkFile::Absent);
        // An older file, unpadded, reads the same; opening rewrites it padded.
        std::fs::write(&path, b"42\n").expect("write");
        assert_eq!(read(&path).expect("read"), MarkFile::At(Lsn(42)));
        let mark = DurableMark::open(&path, Lsn(42)).expect("open");
        assert_eq!(std::fs::read(&path).expect("read").len(), MARK_LEN);
        mark.raise(Lsn(41)).expect("raise");
        assert_eq!(
            read(&path).expect("read"),
            MarkFile::At(Lsn(42)),
            "never down by raise"
        );
        mark.raise(Lsn(u64::MAX)).expect("raise");
        assert_eq!(read(&path).expect("read"), MarkFile::At(Lsn(u64::MAX)));
        mark.lower(Lsn(7)).expect("lower");
        assert_eq!(read(&path).expect("read"), MarkFile::At(Lsn(7)));
        mark.lower(Lsn(9)).expect("lower");
        assert_eq!(mark.value(), Lsn(7), "never up by lower");
        assert!(mark.is_synced(), "a lowered mark is synced");
        mark.raise(Lsn(8)).expect("raise");
        assert!(!mark.is_synced(), "a raised one is not");
        mark.sync().expect("sync");
        assert!(mark.is_synced());
        std::fs::write(&path, b"4x\n").expect("write");
        assert_eq!(read(&path).expect("read"), MarkFile::Damaged);
    }
}
