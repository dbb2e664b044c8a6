//! Small filesystem steps with the crate's error context, and the atomic install sequence
//! (FORMAT.md, "Install"): temp name, fsync, rename, fsync the directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoOp, Result};

/// The bytes an unprivileged writer may still write on the file system holding `path`
/// (`statvfs`: available blocks times the fragment size).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs(3) writes into the zeroed struct it is given, and reads the
    // NUL-terminated path, which outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the fields' widths differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Fsyncs a directory so that renames, creations and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let file = File::open(dir).map_err(|e| Error::io(IoOp::Open, dir, e))?;
    file.sync_all().map_err(|e| Error::io(IoOp::Fsync, dir, e))
}

/// Reserves blocks for `file` up to `len` bytes without changing its length
/// (`fallocate(2)` with `FALLOC_FL_KEEP_SIZE`), so that appends up to there write data into
/// blocks that already exist: the fdatasync after an append then has the length to update
/// but no block allocation to journal (FORMAT.md, "Writing").
///
/// The file's contents and length, and so everything recovery reads, are what they would be
/// without it: the reserved blocks lie past the end of the file and read as nothing. It is
/// an optimization only, so it is best effort: a filesystem without `fallocate` simply
/// allocates as the appends come, and a full disk is reported by the append that does not
/// fit, as before. Nothing about it needs to be durable, and a truncation may give the
/// blocks back.
///
/// A reservation must not take the room the rest of the data dir needs (a snapshot, `meta`):
/// nothing is reserved while the filesystem has less than twice `len` free, and a
/// reservation that fails is given back, since ext4 keeps the part of a failed `fallocate`
/// it managed to allocate (a 1 TiB reservation on a 64 GiB disk filled it).
///
/// Nothing is reserved on tmpfs: it has no blocks to allocate at fsync time, and there
/// `fallocate` allocates and zeroes the memory pages at once, 64 MiB in about 20 ms on the
/// benchmark machine, a stall of every commit at each segment roll (`benches/README.md`).
pub fn preallocate(file: &File, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(off_len) = libc::off_t::try_from(len) else {
            return;
        };
        let Some(stat) = statfs(file) else {
            return;
        };
        #[allow(clippy::unnecessary_cast)] // `f_type`'s width differs between targets.
        if stat.f_type as i64 == TMPFS_MAGIC {
            return;
        }
        #[allow(clippy::unnecessary_cast)] // The fields' widths differ between targets.
        let free = (stat.f_bavail as u64).saturating_mul(stat.f_bsize as u64);
        if free / 2 < len {
            return;
        }
        // SAFETY: `fallocate` reads no memory of ours; the descriptor is open for writing
        // and outlives the call.
        let done =
            unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, off_len) };
        if done != 0 {
            let Ok(size) = file.metadata().map(|m| m.len()) else {
                return;
            };
            if let (Ok(from), Ok(count)) = (
                libc::off_t::try_from(size),
                libc::off_t::try_from(len.saturating_sub(size)),
            ) {
                if count > 0 {
                    // SAFETY: as above. Punching past the end of the file (kept) gives the
                    // blocks back and changes no byte the file holds.
                    let _ = unsafe {
                        libc::fallocate(
                            file.as_raw_fd(),
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                            from,
                            count,
                        )
                    };
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, len);
}

/// Write-behind for a long file written in one go (a snapshot): bytes `from..to` were just
/// written to `file`; starts their writeback to the disk now, and waits for the writeback of
/// `before..from`, the range started the time before (`sync_file_range(2)`). So at most
/// two ranges of the file are dirty in the page cache at any time, not the whole file.
///
/// Why: on ext4 (data=ordered) the journal commit that another file's `fdatasync` forces,
/// the log's at every commit, first writes out the data of every file with blocks
/// allocated in that transaction. A snapshot of tens of MB left to the kernel's own
/// writeback, then fsynced at its end, made one such commit carry all of it: every node's
/// commits stalled together for tens of milliseconds (`benches/README.md`, "The snapshot's
/// pause"). Written behind in ranges, a commit carries at most a range or two.
///
/// Durability is not its business: `sync_file_range` makes no metadata durable and is no
/// substitute for the `fsync` the snapshot is installed after, which is unchanged. So it is
/// best effort: a failure is ignored (the `fsync` reports a write error that matters), and
/// on other systems it does nothing.
pub fn write_behind(file: &File, before: u64, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let range = |a: u64, b: u64| {
            Some((
                libc::off64_t::try_from(a).ok()?,
                libc::off64_t::try_from(b.checked_sub(a)?).ok()?,
            ))
        };
        if let Some((start, len)) = range(from, to) {
            // SAFETY: `sync_file_range` reads no memory of ours; the descriptor outlives
            // the call.
            let _ = unsafe {
                libc::sync_file_range(file.as_raw_fd(), start, len, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
        if let Some((start, len)) = range(before, from).filter(|&(_, len)| len > 0) {
            // SAFETY: as above.
            let _ = unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    start,
                    len,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, before, from, to);
}

#[cfg(target_os = "linux")]
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// `fstatfs(2)` of `file`'s filesystem; `None` if it fails.
#[cfg(target_os = "linux")]
fn statfs(file: &File) -> Option<libc::statfs> {
    use std::os::fd::AsRawFd;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `fstatfs` writes a `statfs` into the buffer we own and reads nothing else of
    // ours; the descriptor outlives the call. The buffer is read only when it succeeded.
    let done = unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) };
    if done != 0 {
        return None;
    }
    // SAFETY: `fstatfs` returned 0, so it filled the buffer.
    Some(unsafe { stat.assume_init() })
}

/// `path` with `.tmp` appended to its file name.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Creates (or truncates) `path.tmp` for writing. Pair with [`install`].
pub fn create_tmp(path: &Path) -> Result<(File, PathBuf)> {
    let tmp = tmp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(IoOp::Create, &tmp, e))?;
    Ok((file, tmp))
}

/// Creates `path.tmp` for writing, failing if it exists (`IoOp::Create`, `AlreadyExists`):
/// for a file that two writers of one process could otherwise share, where the second's
/// truncation would put its bytes in the first's file. Pair with [`install`].
pub fn create_tmp_new(path: &Path) -> Result<(File, PathBuf)> {
    let tmp = tmp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(IoOp::Create, &tmp, e))?;
    Ok((file, tmp))
}

/// Finishes an atomic install of `tmp` as `path`.
///
/// # Durability
/// 1. fsync the temp file (its contents are on disk before its name is);
/// 2. rename it over `path`;
/// 3. fsync the directory (the rename is on disk).
///
/// A crash before 2 leaves the old `path` (or none) and a temp file that the next open
/// removes; after 2 `path` is complete; 3 makes the switch survive power loss. On an error
/// before the rename the temp file is removed, best effort; after it (3 failed), the temp
/// name is no longer this file's, and is left alone: another writer may have created it
/// since.
pub fn install(file: File, tmp: &Path, path: &Path) -> Result<()> {
    let renamed = (|| {
        file.sync_all()
            .map_err(|e| Error::io(IoOp::Fsync, tmp, e))?;
        drop(file);
        std::fs::rename(tmp, path).map_err(|e| Error::io(IoOp::Rename, path, e))
    })();
    if renamed.is_err() {
        let _ = std::fs::remove_file(tmp);
        return renamed;
    }
    sync_dir(parent(path))
}

/// Writes `bytes` to `path` atomically (see [`install`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (mut file, tmp) = create_tmp(path)?;
    if let Err(e) = file.write_all(bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(IoOp::Write, &tmp, e));
    }
    install(file, &tmp, path)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` (and parents) if missing, fsyncing the parent so the new entry is durable.
/// Every directory it creates is private to its owner (mode 0700 whatever the umask): a
/// log and its snapshots hold the application's data, and a data dir created readable by
/// every user of the machine would stay so.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    // The directories about to be made, deepest first: each one's entry in its parent is
    // made durable, not only the last one's.
    let made: Vec<&Path> = dir.ancestors().take_while(|a| !a.is_dir()).collect();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(IoOp::Create, dir, e))?;
    for created in made {
        sync_dir(parent(created))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ensure_dir_makes_every_missing_directory_private_whatever_the_umask() {
        let base = std::env::temp_dir().join(format!("wal-ensure-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let deep = base.join("a").join("b");
        ensure_dir(&deep).unwrap();
        for d in [base.join("a"), deep.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        // An existing directory is left as its owner made it.
        assert_eq!(
            std::fs::metadata(&base).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        ensure_dir(&base).unwrap();
        assert_eq!(
            std::fs::metadata(&base).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn free_bytes_reads_the_file_system_and_names_a_missing_path() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).unwrap();
        // Not zero on the machine running the tests, and never more than its size.
        assert!(free > 0);
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut stat) }, 0);
        #[allow(clippy::unnecessary_cast)]
        let size = stat.f_blocks as u64 * stat.f_frsize as u64;
        assert!(free <= size, "{free} > {size}");
        let missing = free_bytes(&dir.join("no-such-dir-for-free-bytes")).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
