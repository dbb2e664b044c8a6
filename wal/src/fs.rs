//! Small filesystem steps with the crate's error context, and the atomic install sequence
//! (FORMAT.md, "Install"): temp name, fsync, rename, fsync the directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoOp, Result};

/// Fsyncs a directory so that renames, creations and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let file = File::open(dir).map_err(|e| Error::io(IoOp::Open, dir, e))?;
    file.sync_all().map_err(|e| Error::io(IoOp::Fsync, dir, e))
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

/// Finishes an atomic install of `tmp` as `path`.
///
/// # Durability
/// 1. fsync the temp file (its contents are on disk before its name is);
/// 2. rename it over `path`;
/// 3. fsync the directory (the rename is on disk).
///
/// A crash before 2 leaves the old `path` (or none) and a temp file that the next open
/// removes; after 2 `path` is complete; 3 makes the switch survive power loss. On error the
/// temp file is removed, best effort.
pub fn install(file: File, tmp: &Path, path: &Path) -> Result<()> {
    let result = (|| {
        file.sync_all()
            .map_err(|e| Error::io(IoOp::Fsync, tmp, e))?;
        drop(file);
        std::fs::rename(tmp, path).map_err(|e| Error::io(IoOp::Rename, path, e))?;
        sync_dir(parent(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
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
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(IoOp::Create, dir, e))?;
    sync_dir(parent(dir))
}
