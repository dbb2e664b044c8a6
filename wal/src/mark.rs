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
//! The file holds the LSN in decimal, zero-padded to 20 digits, a space, the CRC-32 of those
//! 20 digits in 8 lowercase hex digits, and a newline: [`MARK_LEN`] bytes, so that every
//! write replaces the whole content in one `pwrite` of a few bytes within one sector. A
//! byte changed on the disk reads as [`MarkFile::Damaged`], never as another LSN (a lower
//! one would hide the loss the mark is there to catch). An older file of at most 21 bytes
//! that holds the LSN alone (zero-padded or not, with a newline) reads as that LSN, and the
//! next write gives it the checksum.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, IoOp, Result};
use crate::types::Lsn;

/// The file's length: 20 decimal digits (any `u64`), a space, 8 hex digits of CRC-32 and a
/// newline.
pub const MARK_LEN: usize = 30;
/// The longest file of the older format, without the checksum.
const OLD_MARK_LEN_MAX: usize = 21;

/// What a mark file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkFile {
    Absent,
    At(Lsn),
    /// Not a decimal LSN: the disk damaged it.
    Damaged,
}

/// Reads the mark file at `path`, written in place by [`DurableMark`]: a file of the older
/// format must end with its newline, since a new-format file cut short (a truncation on
/// the disk) would otherwise read as a lower LSN.
pub fn read(path: &Path) -> Result<MarkFile> {
    read_as(path, true)
}

/// Reads a file of the same format that is installed whole ([`install_marker`]), never
/// written in place, such as the node's marker of a failed fsync: its older format had no
/// newline.
pub fn read_installed(path: &Path) -> Result<MarkFile> {
    read_as(path, false)
}

fn read_as(path: &Path, old_needs_newline: bool) -> Result<MarkFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MarkFile::Absent),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Ok(MarkFile::Damaged),
        Err(e) => return Err(Error::io(IoOp::Read, path, e)),
    };
    Ok(decode(&text, old_needs_newline))
}

/// What a mark file's text says (module docs, the format).
fn decode(text: &str, old_needs_newline: bool) -> MarkFile {
    if text.len() == MARK_LEN {
        let bytes = text.as_bytes();
        if bytes[20] != b' ' || bytes[MARK_LEN - 1] != b'\n' {
            return MarkFile::Damaged;
        }
        let (digits, crc) = (&text[..20], &text[21..29]);
        let lsn = digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse::<u64>().ok())
            .flatten();
        let crc = crc
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            .then(|| u32::from_str_radix(crc, 16).ok())
            .flatten();
        return match (lsn, crc) {
            (Some(lsn), Some(crc)) if crc == crc32fast::hash(digits.as_bytes()) => {
                MarkFile::At(Lsn(lsn))
            }
            _ => MarkFile::Damaged,
        };
    }
    if text.len() > OLD_MARK_LEN_MAX || (old_needs_newline && !text.ends_with('\n')) {
        return MarkFile::Damaged;
    }
    match text.trim().parse::<u64>() {
        Ok(lsn) => MarkFile::At(Lsn(lsn)),
        Err(_) => MarkFile::Damaged,
    }
}

/// The open mark file and the value it was last given.
#[derive(Debug)]
pub struct DurableMark {
    path: PathBuf,
    file: File,
    value: AtomicU64,
    /// The value [`DurableMark::sync`] last made durable (`u64::MAX`: none yet).
    synced: AtomicU64,
    /// Syncs that failed so far. After one, the kernel may have dropped the written page
    /// (marked clean, never written) and a later fsync need not say so, so the next sync
    /// writes the value again first.
    failures: AtomicU64,
    /// The failures a sync has since covered: it began after them, wrote the value again,
    /// and succeeded. Failures beyond it still need a rewrite (see [`DurableMark::sync`]).
    covered: AtomicU64,
    /// Held over every write of the file and its value, so that a rewrite by
    /// [`DurableMark::sync`] (another thread) never puts back a value a raise replaced.
    writing: Mutex<()>,
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
            failures: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            writing: Mutex::new(()),
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
        self.lower_with(lsn, File::sync_data)
    }

    /// [`DurableMark::lower`] with `sync_data` for the file's fsync.
    fn lower_with(
        &self,
        lsn: Lsn,
        sync_data: impl FnOnce(&File) -> std::io::Result<()>,
    ) -> Result<()> {
        if lsn < self.value() {
            self.write(lsn)?;
            // Always fsynced, even if `lsn` is the value last synced: a higher value
            // written since (never synced) may have reached the disk by writeback, and
            // the page now holding `lsn` must replace it there before the log is cut.
            self.sync_with(sync_data, true)?;
        }
        Ok(())
    }

    /// Whether the value last written is durable.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) == self.value.load(Ordering::Acquire)
            && !self.needs_rewrite()
    }

    fn needs_rewrite(&self) -> bool {
        self.failures.load(Ordering::Acquire) > self.covered.load(Ordering::Acquire)
    }

    /// Makes the value last written durable, if it is not already. After a failed sync
    /// the value is written again before the next one.
    pub fn sync(&self) -> Result<()> {
        self.sync_with(File::sync_data, false)
    }

    /// [`DurableMark::sync`] with `sync_data` for the file's fsync; `force` fsyncs even
    /// when the value is the one last made durable.
    ///
    /// Two threads may sync at once (the floor's keeper, and the writer lowering it). The
    /// kernel reports a failed writeback once per open file, to whichever fsync checks
    /// first: the other can succeed although the page was dropped. So a success covers
    /// only the failures counted before it began (it wrote the value again after them); one
    /// counted meanwhile leaves the rewrite due, and the value not known durable.
    fn sync_with(
        &self,
        sync_data: impl FnOnce(&File) -> std::io::Result<()>,
        force: bool,
    ) -> Result<()> {
        let failures = self.failures.load(Ordering::Acquire);
        let rewrite = failures > self.covered.load(Ordering::Acquire);
        if rewrite {
            let _writing = self.lock_writing();
            self.write_locked(self.value())?;
        }
        let value = self.value.load(Ordering::Acquire);
        if !force && !rewrite && self.synced.load(Ordering::Acquire) == value {
            return Ok(());
        }
        if let Err(e) = sync_data(&self.file) {
            self.failures.fetch_add(1, Ordering::AcqRel);
            return Err(Error::io(IoOp::Fsync, &self.path, e));
        }
        self.covered.fetch_max(failures, Ordering::AcqRel);
        self.synced.store(value, Ordering::Release);
        Ok(())
    }

    fn write(&self, lsn: Lsn) -> Result<()> {
        let _writing = self.lock_writing();
        self.write_locked(lsn)
    }

    fn write_locked(&self, lsn: Lsn) -> Result<()> {
        let text = encode(lsn);
        self.file
            .write_all_at(text.as_bytes(), 0)
            .map_err(|e| Error::io(IoOp::Write, &self.path, e))?;
        self.value.store(lsn.get(), Ordering::Release);
        Ok(())
    }

    fn lock_writing(&self) -> std::sync::MutexGuard<'_, ()> {
        // Nothing under the lock can leave the file and the value apart but a failed
        // write, which the next write repeats: a poisoned lock is as good as any.
        self.writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How [`install_marker`] left the marker.
#[derive(Debug)]
pub enum Installed {
    /// Installed atomically and fsynced: any later start sees it.
    Durably,
    /// The durable install failed (the error says why) and the marker was written without
    /// it: a start before the machine restarts sees it, a start after may not.
    NotDurably(Error),
}

/// Installs a marker of `lsn` at `path` that the next start must see, such as the node's
/// marker of a failed fsync: atomically and durably if it can ([`crate::fs::write_atomic`]).
/// If that fails (a disk that failed one fsync may fail the next), the marker is written
/// directly, without fsync. That still serves the start the marker exists for: a start
/// before the machine restarts, which would otherwise trust records that the page cache
/// holds and the disk lost. After a restart the page cache is gone and the log reads
/// as the disk holds it. A direct write cut short leaves a file that
/// [`read_installed`] reads as damaged or as a lower LSN (a prefix of the zero-padded
/// digits), never a higher one: a marker below the truth only makes the next start trust
/// less. Fails only if neither write can create the file.
pub fn install_marker(path: &Path, lsn: Lsn) -> Result<Installed> {
    let text = encode(lsn);
    match crate::fs::write_atomic(path, text.as_bytes()) {
        Ok(()) => Ok(Installed::Durably),
        Err(durable) => {
            std::fs::write(path, text.as_bytes()).map_err(|e| Error::io(IoOp::Write, path, e))?;
            Ok(Installed::NotDurably(durable))
        }
    }
}

/// The file's content for `lsn`: [`MARK_LEN`] bytes.
pub fn encode(lsn: Lsn) -> String {
    let digits = format!("{:020}", lsn.get());
    let text = format!("{digits} {:08x}\n", crc32fast::hash(digits.as_bytes()));
    debug_assert_eq!(text.len(), MARK_LEN);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mark opened at 5 in `dir` and raised to 9, not synced since.
    fn raised_from_5_to_9(dir: &Path) -> (PathBuf, DurableMark) {
        let path = dir.join("log-floor");
        let mark = DurableMark::open(&path, Lsn(5)).expect("open");
        mark.raise(Lsn(9)).expect("raise");
        (path, mark)
    }

    fn eio() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EIO)
    }

    #[test]
    fn a_sync_after_a_failed_one_writes_the_value_again_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mark) = raised_from_5_to_9(dir.path());
        // A failed fsync may drop the written page: the file shows the older value again.
        std::fs::write(&path, encode(Lsn(5))).expect("revert");
        let failed = mark.sync_with(|_| Err(eio()), false);
        assert!(failed.is_err());
        assert!(!mark.is_synced());
        mark.sync().expect("sync");
        assert_eq!(read(&path).expect("read"), MarkFile::At(Lsn(9)));
        assert!(mark.is_synced());
        assert!(!mark.needs_rewrite());
        // Once synced, a sync writes nothing.
        std::fs::write(&path, encode(Lsn(5))).expect("revert");
        mark.sync().expect("sync");
        assert_eq!(read(&path).expect("read"), MarkFile::At(Lsn(5)));
    }

    /// A sync that succeeds while another fails (the kernel told only the other of the
    /// dropped page) leaves the rewrite due: the next sync writes the value again.
    #[test]
    fn a_sync_that_succeeds_beside_a_failed_one_leaves_the_rewrite_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mark) = raised_from_5_to_9(dir.path());
        mark.sync_with(
            |_| {
                // Meanwhile, on another thread: a sync fails, and its failure drops the page.
                let other = mark.sync_with(|_| Err(eio()), false);
                assert!(other.is_err());
                std::fs::write(&path, encode(Lsn(5))).expect("revert");
                Ok(())
            },
            false,
        )
        .expect("the first sync succeeds");
        assert!(
            !mark.is_synced(),
            "a value known durable after a failed sync"
        );
        assert_eq!(read(&path).expect("read"), MarkFile::At(Lsn(5)));
        mark.sync().expect("sync");
        assert_eq!(read(&path).expect("read"), MarkFile::At(Lsn(9)));
        assert!(mark.is_synced());
    }

    /// Lowered back to the value last synced, the mark is fsynced all the same: the higher
    /// value written since may be what the disk holds.
    #[test]
    fn a_mark_lowered_to_its_synced_value_is_synced_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mark) = raised_from_5_to_9(dir.path());
        let mut fsynced = false;
        mark.lower_with(Lsn(5), |file| {
            fsynced = true;
            file.sync_data()
        })
        .expect("lower");
        assert!(fsynced, "lowered without an fsync");
        assert_eq!(read(&path).expect("read"), MarkFile::At(Lsn(5)));
        assert!(mark.is_synced());
        // Not lower: nothing written, nothing synced.
        mark.lower_with(Lsn(7), |_| panic!("synced a mark it did not lower"))
            .expect("no-op");
    }

    #[test]
    fn a_marker_that_cannot_be_installed_durably_is_written_directly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fsync-failed");
        assert!(matches!(
            install_marker(&path, Lsn(7)).expect("install"),
            Installed::Durably
        ));
        assert_eq!(read_installed(&path).expect("read"), MarkFile::At(Lsn(7)));
        std::fs::remove_file(&path).expect("remove");
        // The atomic install cannot create its temporary file: the marker is still there.
        std::fs::create_dir(crate::fs::tmp_path(&path)).expect("block the temp file");
        match install_marker(&path, Lsn(123_456)).expect("install") {
            Installed::NotDurably(e) => assert!(e.to_string().contains(".tmp"), "{e}"),
            Installed::Durably => panic!("said durable although the install failed"),
        }
        assert_eq!(
            read_installed(&path).expect("read"),
            MarkFile::At(Lsn(123_456))
        );
        // Neither can create it: an error.
        let blocked = dir.path().join("a-dir");
        std::fs::create_dir(crate::fs::tmp_path(&blocked)).expect("block the temp file");
        std::fs::create_dir(&blocked).expect("block the file");
        assert!(install_marker(&blocked, Lsn(1)).is_err());
    }

    #[test]
    fn a_marker_cut_short_never_reads_higher() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fsync-failed");
        for lsn in [0, 1, 9, 10, 123_456, u64::MAX / 3, u64::MAX] {
            let text = encode(Lsn(lsn));
            for len in 0..text.len() {
                std::fs::write(&path, &text.as_bytes()[..len]).expect("write");
                match read_installed(&path).expect("read") {
                    MarkFile::At(read) => {
                        assert!(read.get() <= lsn, "{len} bytes of {lsn} read as {read}")
                    }
                    MarkFile::Damaged => {}
                    MarkFile::Absent => panic!("a present file read as absent"),
                }
            }
        }
    }

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

    /// Every single-bit change of a mark file reads as damaged (or, where the checksum
    /// cannot see it, as the same LSN): never as another LSN.
    #[test]
    fn a_mark_changed_on_the_disk_reads_as_damaged() {
        for lsn in [0, 7, 123_456_789, u64::MAX] {
            let good = encode(Lsn(lsn));
            assert_eq!(decode(&good, true), MarkFile::At(Lsn(lsn)));
            for at in 0..good.len() {
                for bit in 0..8 {
                    let mut bytes = good.clone().into_bytes();
                    bytes[at] ^= 1 << bit;
                    let read = match String::from_utf8(bytes) {
                        Ok(text) => decode(&text, true),
                        // `read` reads text that is not UTF-8 as damaged.
                        Err(_) => MarkFile::Damaged,
                    };
                    assert!(
                        matches!(read, MarkFile::Damaged) || read == MarkFile::At(Lsn(lsn)),
                        "lsn {lsn}, byte {at} bit {bit}: read as {read:?}"
                    );
                }
            }
        }
        // The file cut short, or grown by a byte: damaged.
        let good = encode(Lsn(42));
        for len in 0..MARK_LEN {
            assert_eq!(
                decode(&good[..len], true),
                MarkFile::Damaged,
                "cut to {len} bytes"
            );
        }
        assert_eq!(decode(&format!("{good}0"), true), MarkFile::Damaged);
        // The older format: with its newline; without it only where installed whole.
        assert_eq!(
            decode("00000000000000000042\n", true),
            MarkFile::At(Lsn(42))
        );
        assert_eq!(decode("42", true), MarkFile::Damaged);
        assert_eq!(decode("42", false), MarkFile::At(Lsn(42)));
    }
}
