//! Applies changes ([`Change`]) to a directory: a backup's copy of the followed directory,
//! rebuilt record by record from the committed log.
//!
//! The directory must hold exactly the state before the changes (what the earlier records
//! made of it): an `Append` must land at the file's current length, a `Rename` or `SetLen`
//! must find its file. Anything else is refused with an error naming the file, never
//! patched over: it means the directory is not the log's (a crash between applying and
//! syncing, a hand edit), and the caller rebuilds it from a snapshot and the log.
//!
//! Writes are not synced one by one: [`Materializer::sync`] fsyncs every file written since
//! the last sync and then the directory, so that whatever the caller records after it (the
//! LSN materialized through) never runs ahead of the disk.
//!
//! The materializer also keeps what the directory must hold after the changes it applied,
//! each file's length and CRC-32 ([`Contents`]), updated as it applies them (an append
//! extends the file's CRC; a cut reads the kept part back). [`Materializer::verify`]
//! compares the directory with it: a copy that lost a file, was cut short, grew, or had a
//! byte changed behind the materializer's back is found before anything trusts it. An `Install` writes a temporary
//! file ([`TEMP_PREFIX`]) and renames it over the name, so a reader of the directory never
//! sees a half-written file; stale temporary files are removed when a materializer opens
//! the directory.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use super::change::{Change, TEMP_PREFIX};

/// How much of a file [`Materializer::read_checked`] reads between two looks at its stop
/// flag: 4 MiB, a few milliseconds from the page cache.
const READ_PIECE: u64 = 4 << 20;
// A piece read is one change of a snapshot (`snapshot::write_dir`).
const _: () = assert!(READ_PIECE as usize <= super::change::PIECE_LEN_MAX);

/// Why a change could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: an append at offset {offset}, but the file holds {len} bytes: the directory is not the log's")]
    Gap {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    #[error("{path}: {op} of a file that does not exist: the directory is not the log's")]
    Missing { path: PathBuf, op: &'static str },
    #[error("{path}: cut back to {len} bytes, but the file holds only {holds}: the directory is not the log's")]
    Grow { path: PathBuf, len: u64, holds: u64 },
    #[error("{path}: {what}: the directory is not the log's")]
    Differs { path: PathBuf, what: String },
    #[error("stopped: this node is being promoted, and its promotion needs the directory")]
    Stopped,
}

/// One file as the applied changes left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSum {
    pub len: u64,
    /// CRC-32 (crc32fast) of the whole content.
    pub crc: u32,
}

impl FileSum {
    const EMPTY: FileSum = FileSum { len: 0, crc: 0 };

    fn of(data: &[u8]) -> FileSum {
        FileSum::EMPTY.extended(data)
    }

    /// This file with `data` appended.
    fn extended(self, data: &[u8]) -> FileSum {
        let mut hasher = crc32fast::Hasher::new_with_initial(self.crc);
        hasher.update(data);
        FileSum {
            len: self.len + data.len() as u64,
            crc: hasher.finalize(),
        }
    }
}

/// What the directory holds after the changes applied: every followed file by name.
pub type Contents = std::collections::BTreeMap<Bytes, FileSum>;

/// How closely [`Materializer::verify`] looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Names and lengths: a few system calls per file.
    Lengths,
    /// Names, lengths and every byte.
    Content,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaterializeError + '_ {
    move |source| MaterializeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory being materialized.
#[derive(Debug)]
pub struct Materializer {
    dir: PathBuf,
    /// Files written since the last sync.
    dirty: BTreeSet<Bytes>,
    /// Names added, removed or renamed since the last sync.
    dir_dirty: bool,
    next_temp: u64,
    /// What the directory must hold: see [`Materializer::verify`].
    contents: Contents,
}

impl Materializer {
    /// Opens `dir` (creating it if needed) and removes stale temporary files. What it
    /// holds is taken to be empty until [`Materializer::set_contents`] says otherwise.
    pub fn open(dir: &Path) -> Result<Materializer, MaterializeError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            if entry
                .file_name()
                .as_bytes()
                .starts_with(TEMP_PREFIX.as_bytes())
            {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(Materializer {
            dir: dir.to_path_buf(),
            dirty: BTreeSet::new(),
            dir_dirty: false,
            next_temp: 0,
            contents: Contents::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the directory must hold after the changes applied so far.
    pub fn contents(&self) -> &Contents {
        &self.contents
    }

    /// What the directory holds, as recorded when it was last known (the caller's state
    /// file); [`Materializer::verify`] checks it.
    pub fn set_contents(&mut self, contents: Contents) {
        self.contents = contents;
    }

    /// Removes every followed file (not synced); the directory then must hold nothing.
    pub fn clear(&mut self) -> Result<(), MaterializeError> {
        remove_followed(&self.dir).map_err(io(&self.dir))?;
        self.contents.clear();
        self.dirty.clear();
        self.dir_dirty = true;
        Ok(())
    }

    /// Compares the directory with what the applied changes left in it: the same names,
    /// each file with the same length and, with [`Depth::Content`], the same CRC-32 (every
    /// file is read; [`Depth::Lengths`] reads none). A difference is a
    /// [`MaterializeError::Differs`] naming the first file found.
    pub fn verify(&self, depth: Depth) -> Result<(), MaterializeError> {
        let names = read_dir_names(&self.dir).map_err(io(&self.dir))?;
        for name in &names {
            if !self.contents.contains_key(name.as_slice()) {
                return Err(self.never_made(name));
            }
        }
        for (name, want) in &self.contents {
            let path = self.path(name);
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.missing(name, want))
                }
                Err(e) => return Err(io(&path)(e)),
            };
            let len = file.metadata().map_err(io(&path))?.len();
            if len != want.len {
                return Err(MaterializeError::Differs {
                    path,
                    what: format!("{len} bytes long, the log made it {}", want.len),
                });
            }
            if depth == Depth::Lengths {
                continue;
            }
            let sum = sum_of(&mut file, &path)?;
            if sum != *want {
                return Err(MaterializeError::Differs {
                    path,
                    what: format!(
                        "its content differs from the log's (CRC-32 {:08x}, the log's {:08x}, {} bytes read)",
                        sum.crc, want.crc, sum.len
                    ),
                });
            }
        }
        Ok(())
    }

    /// Reads every followed file, in name order, [`READ_PIECE`] bytes at a time, and hands
    /// each piece to `sink` as it is read (the file's name, the piece's offset in it, its
    /// bytes; an empty file is one empty piece at offset 0); then checks what was read
    /// against what the applied changes left (names, lengths, CRC-32), as
    /// [`Materializer::verify`] checks the directory. Returns how many files were read.
    ///
    /// The bytes handed over are the bytes checked: damage made at any time before this read
    /// is found, where a check followed by a second read would let damage made between the
    /// two through (a snapshot must never hold a damaged copy). A file is checked once it has
    /// been read whole, after its pieces went to `sink`: on an error, the caller discards
    /// everything `sink` was given. Nothing is held in memory beyond one piece.
    ///
    /// Gives up with [`MaterializeError::Stopped`] once `stop` is set, checked before every
    /// piece: a promotion waits for the directory, and reading a large one whole would hold
    /// up the failover for as long as the read takes.
    pub fn read_checked<E: From<MaterializeError>>(
        &self,
        stop: &AtomicBool,
        mut sink: impl FnMut(&Bytes, u64, Bytes) -> Result<(), E>,
    ) -> Result<usize, E> {
        let names = read_dir_names(&self.dir).map_err(io(&self.dir))?;
        for name in &names {
            if !self.contents.contains_key(name.as_slice()) {
                return Err(self.never_made(name).into());
            }
        }
        for (name, want) in &self.contents {
            let path = self.path(name);
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.missing(name, want).into())
                }
                Err(e) => return Err(io(&path)(e).into()),
            };
            // Summed piece by piece as read, while the piece is in the CPU's cache.
            let mut found = FileSum::EMPTY;
            loop {
                if stop.load(Ordering::Acquire) {
                    return Err(MaterializeError::Stopped.into());
                }
                let mut piece = Vec::with_capacity(READ_PIECE as usize);
                let read = (&mut file)
                    .take(READ_PIECE)
                    .read_to_end(&mut piece)
                    .map_err(io(&path))?;
                if read == 0 && found.len > 0 {
                    break;
                }
                let offset = found.len;
                found = found.extended(&piece);
                sink(name, offset, Bytes::from(piece))?;
                if read == 0 {
                    break;
                }
            }
            if found != *want {
                return Err(MaterializeError::Differs {
                    path,
                    what: format!(
                        "read as {} bytes with CRC-32 {:08x}, the log made {} bytes with {:08x}",
                        found.len, found.crc, want.len, want.crc
                    ),
                }
                .into());
            }
        }
        Ok(self.contents.len())
    }

    fn never_made(&self, name: &[u8]) -> MaterializeError {
        MaterializeError::Differs {
            path: self.path(name),
            what: "a file the log never made".to_string(),
        }
    }

    fn missing(&self, name: &[u8], want: &FileSum) -> MaterializeError {
        MaterializeError::Differs {
            path: self.path(name),
            what: format!("missing (the log made it {} bytes long)", want.len),
        }
    }

    fn path(&self, name: &[u8]) -> PathBuf {
        self.dir.join(std::ffi::OsStr::from_bytes(name))
    }

    /// Applies one change (not yet durable: see [`Materializer::sync`]).
    pub fn apply(&mut self, change: &Change) -> Result<(), MaterializeError> {
        match change {
            Change::Append { name, offset, data } => {
                let path = self.path(name);
                let mut file = OpenOptions::new()
                    .create(*offset == 0)
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            MaterializeError::Missing {
                                path: path.clone(),
                                op: "an append",
                            }
                        } else {
                            io(&path)(e)
                        }
                    })?;
                let len = file.metadata().map_err(io(&path))?.len();
                if len != *offset {
                    return Err(MaterializeError::Gap {
                        path,
                        offset: *offset,
                        len,
                    });
                }
                if len == 0 {
                    self.dir_dirty = true;
                }
                let before = match self.contents.get(name) {
                    Some(sum) if sum.len == *offset => *sum,
                    None if *offset == 0 => FileSum::EMPTY,
                    // The file on disk has the length the append expects, but not the one
                    // the applied changes gave it.
                    _ => {
                        return Err(MaterializeError::Differs {
                            path,
                            what: format!(
                                "an append at offset {offset} to a file the log made {} bytes long",
                                self.contents.get(name).map_or(0, |sum| sum.len)
                            ),
                        })
                    }
                };
                file.seek(SeekFrom::Start(*offset)).map_err(io(&path))?;
                file.write_all(data).map_err(io(&path))?;
                self.dirty.insert(name.clone());
                self.contents.insert(name.clone(), before.extended(data));
            }
            Change::Install { name, data } => {
                let path = self.path(name);
                self.next_temp += 1;
                let temp = self.dir.join(format!(
                    "{TEMP_PREFIX}{}-{}",
                    std::process::id(),
                    self.next_temp
                ));
                let mut file = File::create(&temp).map_err(io(&temp))?;
                file.write_all(data).map_err(io(&temp))?;
                // The content must be durable before the name points at it.
                file.sync_data().map_err(io(&temp))?;
                std::fs::rename(&temp, &path).map_err(io(&path))?;
                self.dir_dirty = true;
                self.contents.insert(name.clone(), FileSum::of(data));
            }
            Change::Delete { name } => {
                let path = self.path(name);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(MaterializeError::Missing {
                            path,
                            op: "a deletion",
                        })
                    }
                    Err(e) => return Err(io(&path)(e)),
                }
                self.dirty.remove(name);
                self.dir_dirty = true;
                self.contents.remove(name);
            }
            Change::Swap { renames, deletes } => {
                // Applied as the renames and deletions it holds, in order; a crash halfway
                // leaves a directory ahead of the LSN recorded, which the caller rebuilds
                // (as after any change applied and not yet recorded).
                for (name, to) in renames {
                    self.apply(&Change::Rename {
                        name: name.clone(),
                        to: to.clone(),
                    })?;
                }
                for name in deletes {
                    self.apply(&Change::Delete { name: name.clone() })?;
                }
            }
            Change::Rename { name, to } => {
                let from = self.path(name);
                let to_path = self.path(to);
                match std::fs::rename(&from, &to_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(MaterializeError::Missing {
                            path: from,
                            op: "a rename",
                        })
                    }
                    Err(e) => return Err(io(&from)(e)),
                }
                if self.dirty.remove(name) {
                    self.dirty.insert(to.clone());
                }
                self.dir_dirty = true;
                match self.contents.remove(name) {
                    Some(sum) => {
                        self.contents.insert(to.clone(), sum);
                    }
                    None => {
                        return Err(MaterializeError::Differs {
                            path: from,
                            what: "renamed, but the log never made it".to_string(),
                        })
                    }
                }
            }
            Change::SetLen { name, len } => {
                let path = self.path(name);
                let file = OpenOptions::new().write(true).open(&path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        MaterializeError::Missing {
                            path: path.clone(),
                            op: "a cut",
                        }
                    } else {
                        io(&path)(e)
                    }
                })?;
                let holds = file.metadata().map_err(io(&path))?.len();
                if *len > holds {
                    return Err(MaterializeError::Grow {
                        path,
                        len: *len,
                        holds,
                    });
                }
                file.set_len(*len).map_err(io(&path))?;
                self.dirty.insert(name.clone());
                // The kept part's CRC: read back (a cut is rare; Redis never cuts its files).
                let mut kept = File::open(&path).map_err(io(&path))?;
                let sum = sum_of(&mut kept, &path)?;
                self.contents.insert(name.clone(), sum);
            }
        }
        Ok(())
    }

    /// Makes every change applied so far durable: each file written since the last sync,
    /// then the directory (names added, removed, renamed).
    pub fn sync(&mut self) -> Result<(), MaterializeError> {
        for name in std::mem::take(&mut self.dirty) {
            let path = self.path(&name);
            match File::open(&path) {
                Ok(file) => file.sync_data().map_err(io(&path))?,
                // Deleted or renamed away since (a rename carries the name over).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        if std::mem::take(&mut self.dir_dirty) {
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io(&self.dir))?;
        }
        Ok(())
    }
}

/// The length and CRC-32 of what `file` holds from its offset on, read in 1 MiB pieces.
fn sum_of(file: &mut File, path: &Path) -> Result<FileSum, MaterializeError> {
    let mut sum = FileSum::EMPTY;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(sum);
        }
        sum = sum.extended(&buf[..n]);
    }
}

/// The names of the directory's files (temporary files of the materializer left out), in
/// order, without reading them.
pub fn read_dir_names(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().as_bytes().to_vec();
        if name.starts_with(TEMP_PREFIX.as_bytes()) || !entry.file_type()?.is_file() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// The bytes the directory's files hold (temporary files of the materializer left out): about
/// the body of a snapshot of it.
pub fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for name in read_dir_names(dir)? {
        let len = std::fs::metadata(dir.join(std::ffi::OsStr::from_bytes(&name)))?.len();
        total = total.saturating_add(len);
    }
    Ok(total)
}

/// The directory's files and their contents (temporary files of the materializer left out),
/// for comparing two directories.
pub fn read_dir_contents(
    dir: &Path,
) -> std::io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut files = std::collections::BTreeMap::new();
    for name in read_dir_names(dir)? {
        let mut content = Vec::new();
        File::open(dir.join(std::ffi::OsStr::from_bytes(&name)))?.read_to_end(&mut content)?;
        files.insert(name, content);
    }
    Ok(files)
}

/// Removes every followed file of `dir` (not synced).
pub fn remove_followed(dir: &Path) -> std::io::Result<()> {
    for name in read_dir_names(dir)? {
        std::fs::remove_file(dir.join(std::ffi::OsStr::from_bytes(&name)))?;
    }
    Ok(())
}

/// What the applied changes would have to leave for `dir` as it is: each file's length and
/// CRC-32.
#[cfg(test)]
pub fn contents_of(dir: &Path) -> Contents {
    read_dir_contents(dir)
        .expect("read the directory")
        .into_iter()
        .map(|(name, data)| (Bytes::from(name), FileSum::of(&data)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Every file `read_checked` hands over, put back together.
    fn read_whole(
        materializer: &Materializer,
        stop: &AtomicBool,
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, MaterializeError> {
        let mut files: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        materializer.read_checked(stop, |name, offset, data| {
            let file = files.entry(name.to_vec()).or_default();
            assert_eq!(offset, file.len() as u64, "pieces out of order");
            file.extend_from_slice(&data);
            Ok::<_, MaterializeError>(())
        })?;
        Ok(files)
    }

    /// A copy changed behind the sidecar's back (every damage of `copy_damages`) after the
    /// log made it is refused by the read a snapshot makes, which returns nothing then.
    #[test]
    fn a_read_for_a_snapshot_refuses_a_copy_changed_since_the_log_made_it() {
        for (what, damage) in crate::follow::tests::copy_damages() {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("dir");
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("aof"), b"SET k v\r\nSET k2 v2\r\n").unwrap();
            std::fs::write(dir.join("manifest"), b"file aof\n").unwrap();
            let mut materializer = Materializer::open(&dir).unwrap();
            materializer.set_contents(contents_of(&dir));
            assert_eq!(
                read_whole(&materializer, &AtomicBool::new(false)).unwrap(),
                read_dir_contents(&dir).unwrap(),
                "{what}: before the damage"
            );
            damage(&dir);
            let refused = read_whole(&materializer, &AtomicBool::new(false));
            assert!(
                matches!(refused, Err(MaterializeError::Differs { .. })),
                "{what}: {refused:?}"
            );
        }
    }

    /// A read for a snapshot stops when asked (a promotion waits for the directory), within
    /// a piece of a large file (64 MiB, 16 pieces), with nothing returned; asked before, it
    /// reads nothing.
    #[test]
    fn a_read_for_a_snapshot_stops_when_asked() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        let big = vec![7u8; 16 * READ_PIECE as usize];
        std::fs::write(dir.join("aof"), &big).unwrap();
        let mut materializer = Materializer::open(&dir).unwrap();
        materializer.set_contents(Contents::from([(Bytes::from("aof"), FileSum::of(&big))]));
        let stop = AtomicBool::new(false);
        let whole = read_whole(&materializer, &stop).unwrap();
        assert_eq!(whole[&b"aof".to_vec()].len(), big.len());
        drop(whole);

        stop.store(true, Ordering::Release);
        let refused = read_whole(&materializer, &stop);
        assert!(
            matches!(refused, Err(MaterializeError::Stopped)),
            "{:?}",
            refused.map(|files| files.len())
        );
        // Asked while it reads (once the second piece is in, from another thread): it stops
        // before the next piece, not at the end of the file. Counted in pieces, not timed, so
        // that a loaded machine cannot make it look late.
        stop.store(false, Ordering::Release);
        let (asked_tx, asked_rx) = std::sync::mpsc::channel::<()>();
        let (go_on_tx, go_on_rx) = std::sync::mpsc::channel::<()>();
        let (stop_ref, reader) = (&stop, &materializer);
        let (refused, pieces) = std::thread::scope(|scope| {
            let reading = scope.spawn(move || {
                let mut pieces = 0;
                let refused = reader.read_checked(stop_ref, |_, _, _| {
                    pieces += 1;
                    if pieces == 2 {
                        asked_tx.send(()).unwrap();
                        go_on_rx.recv().unwrap();
                    }
                    Ok::<_, MaterializeError>(())
                });
                (refused, pieces)
            });
            asked_rx.recv().unwrap();
            stop.store(true, Ordering::Release);
            go_on_tx.send(()).unwrap();
            reading.join().unwrap()
        });
        assert!(
            matches!(refused, Err(MaterializeError::Stopped)),
            "{refused:?}"
        );
        assert_eq!(pieces, 2, "pieces read after the stop was asked");
    }

    /// A change valid against `model`, chosen by `pick`.
    fn valid_change(model: &BTreeMap<Vec<u8>, Vec<u8>>, pick: (u8, u8, u8, Vec<u8>)) -> Change {
        let (op, a, b, data) = pick;
        let names: Vec<&Vec<u8>> = model.keys().collect();
        let fresh = format!("f{}", a % 6).into_bytes();
        let existing = if names.is_empty() {
            None
        } else {
            Some(names[a as usize % names.len()].clone())
        };
        match (op % 6, existing) {
            (5, Some(name)) => {
                let to = format!("f{}", b % 6).into_bytes();
                let other = names[(a as usize + 1) % names.len()];
                let deletes = if *other != name && *other != to {
                    vec![Bytes::from(other.clone())]
                } else {
                    Vec::new()
                };
                Change::Swap {
                    renames: vec![(Bytes::from(name), Bytes::from(to))],
                    deletes,
                }
            }
            (0, Some(name)) | (1, Some(name)) => Change::Append {
                offset: model[&name].len() as u64,
                name: Bytes::from(name),
                data: Bytes::from(data),
            },
            (2, Some(name)) => Change::Rename {
                name: Bytes::from(name),
                to: Bytes::from(format!("f{}", b % 6).into_bytes()),
            },
            (3, Some(name)) => Change::Delete {
                name: Bytes::from(name),
            },
            (4, Some(name)) => Change::SetLen {
                len: (b as u64).min(model[&name].len() as u64),
                name: Bytes::from(name),
            },
            _ if model.contains_key(&fresh) => Change::Install {
                name: Bytes::from(fresh),
                data: Bytes::from(data),
            },
            _ => Change::Append {
                name: Bytes::from(fresh),
                offset: 0,
                data: Bytes::from(data),
            },
        }
    }

    fn apply_model(model: &mut BTreeMap<Vec<u8>, Vec<u8>>, change: &Change) {
        match change {
            Change::Append { name, data, .. } => model
                .entry(name.to_vec())
                .or_default()
                .extend_from_slice(data),
            Change::Install { name, data } => {
                model.insert(name.to_vec(), data.to_vec());
            }
            Change::Delete { name } => {
                model.remove(&name.to_vec());
            }
            Change::Rename { name, to } => {
                if let Some(content) = model.remove(&name.to_vec()) {
                    model.insert(to.to_vec(), content);
                }
            }
            Change::SetLen { name, len } => {
                if let Some(content) = model.get_mut(&name.to_vec()) {
                    content.truncate(*len as usize);
                }
            }
            Change::Swap { renames, deletes } => {
                for (name, to) in renames {
                    apply_model(
                        model,
                        &Change::Rename {
                            name: name.clone(),
                            to: to.clone(),
                        },
                    );
                }
                for name in deletes {
                    model.remove(&name.to_vec());
                }
            }
        }
    }

    proptest! {
        /// Any sequence of valid changes, applied and synced, leaves the directory equal to
        /// the model.
        #[test]
        fn applied_changes_match_the_model(
            picks in proptest::collection::vec(
                (any::<u8>(), any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)),
                1..40,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut materializer = Materializer::open(dir.path()).unwrap();
            let mut model = BTreeMap::new();
            for pick in picks {
                let change = valid_change(&model, pick);
                let decoded = Change::decode(change.encode()).unwrap();
                materializer.apply(&decoded).unwrap();
                apply_model(&mut model, &change);
            }
            materializer.sync().unwrap();
            prop_assert_eq!(read_dir_contents(dir.path()).unwrap(), model.clone());
            // What it says the directory holds is what it holds.
            prop_assert!(materializer.verify(Depth::Content).is_ok());
            let sums: BTreeMap<Vec<u8>, FileSum> = model
                .iter()
                .map(|(name, data)| (name.clone(), FileSum::of(data)))
                .collect();
            let kept: BTreeMap<Vec<u8>, FileSum> = materializer
                .contents()
                .iter()
                .map(|(name, sum)| (name.to_vec(), *sum))
                .collect();
            prop_assert_eq!(kept, sums);
        }
    }

    #[test]
    fn a_directory_that_is_not_the_logs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Materializer::open(dir.path()).unwrap();
        let name = Bytes::from_static(b"aof");
        m.apply(&Change::Append {
            name: name.clone(),
            offset: 0,
            data: Bytes::from_static(b"abc"),
        })
        .unwrap();
        let gap = m.apply(&Change::Append {
            name: name.clone(),
            offset: 5,
            data: Bytes::from_static(b"x"),
        });
        assert!(
            matches!(gap, Err(MaterializeError::Gap { len: 3, .. })),
            "{gap:?}"
        );
        let missing = m.apply(&Change::Append {
            name: Bytes::from_static(b"other"),
            offset: 2,
            data: Bytes::from_static(b"x"),
        });
        assert!(
            matches!(missing, Err(MaterializeError::Missing { .. })),
            "{missing:?}"
        );
        let grow = m.apply(&Change::SetLen { name, len: 9 });
        assert!(
            matches!(grow, Err(MaterializeError::Grow { .. })),
            "{grow:?}"
        );
        // A stale temporary file is removed when the directory is opened again.
        std::fs::write(dir.path().join(format!("{TEMP_PREFIX}1-1")), b"half").unwrap();
        Materializer::open(dir.path()).unwrap();
        assert_eq!(
            read_dir_contents(dir.path())
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [&b"aof".to_vec()]
        );
        assert!(!dir.path().join(format!("{TEMP_PREFIX}1-1")).exists());
    }

    #[test]
    fn dir_bytes_counts_the_files_and_not_the_temporary_ones_or_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.aof"), vec![1u8; 1000]).unwrap();
        std::fs::write(dir.path().join("manifest"), b"12345").unwrap();
        std::fs::write(
            dir.path().join(format!("{TEMP_PREFIX}9-9")),
            vec![0u8; 4096],
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(dir_bytes(dir.path()).unwrap(), 1005);
    }
}
