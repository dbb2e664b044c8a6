//! Captures the changes an application makes to the followed directory, in the order the
//! kernel reports them (inotify), as [`Change`]s.
//!
//! The model (README, "Follow mode"): a file that only grows is shipped as appended byte
//! ranges; a file renamed into place is shipped as a rename when it was already followed,
//! or whole (an `Install`) when it came from outside; a created file starts empty; a
//! deletion is shipped; a file found shorter than captured is shipped whole. A file rewritten
//! in place is not covered: when a file whose length did not change has a different tail
//! (its last [`TAIL_LEN`] bytes) than what was captured, capture stops with
//! [`CaptureError::RewrittenInPlace`] naming it. A rewrite further back than the tail is not
//! seen. A file found longer with another tail (cut back and grown again before the capture
//! read it, as an application that drops a torn tail at start-up does) is shipped whole.
//!
//! Cuts while the application serves. Once [`Capture::refuse_cuts`] is on (the follow node
//! turns it on when the application it started accepts connections), a followed file found
//! shorter than captured, or longer with other bytes where the captured tail was, stops
//! capture with [`CaptureError::Cut`] instead of being shipped: what was cut away may be
//! committed and acknowledged, and shipping the cut would remove it from every copy. A
//! serving application does not cut its own log back (Redis does only when a write fails,
//! and with `appendfsync always` it then exits); a cut then is damage to the primary's
//! disk (a file truncated behind the application's back), and the follow node answers it
//! as any capture failure: the application is stopped, the directory rebuilt from the
//! committed log and the application started again on it. At start-up, before the
//! application accepts connections, a cut is its own (a torn tail dropped) and is shipped.
//!
//! Order. Names (creations, renames, deletions) are captured in kernel order. A file is read
//! by name only once every event queued by then is known, and only if none of them moves
//! the name on (a rename away, a deletion, another file renamed over it): otherwise it is
//! read under its next name, by that rename. The bytes of an append are read when its
//! event is handled, so they may include bytes written after a
//! later event of another file: a committed prefix of the captured changes holds every
//! name as the directory did at some moment, and every file's bytes up to at least that
//! moment (sometimes more). A file renamed or deleted before the capture could read it is
//! read under its new name, or not at all, so a prefix may hold fewer of its bytes until the
//! rename. For an application that writes its log before it answers and installs other
//! files by rename, what a restart needs is there.
//!
//! Memory. A file is never read whole: what a file grew by, and a file shipped whole (an
//! install, a cut, a rescan's staged file), are read and sent on a piece (`READ_PIECE`) at
//! a time within the [`Backlog`] bound, a file shipped whole built under the part name and
//! renamed into place by its last change (`Tracker::ship_file`).
//!
//! Start: the directory is scanned and its files are taken as the state already captured
//! (the caller made sure the log holds it; only each file's length and last [`TAIL_LEN`]
//! bytes are read). A queue overflow (`IN_Q_OVERFLOW`) rescans:
//! files that grew are shipped as appends, others whole under staging names, and then one
//! record renames the staged files into place and deletes the vanished ones, so that a
//! committed prefix holds the directory from before the lost events or after them, not a
//! mix (`Tracker::rescan`).
//! Subdirectories and the materializer's temporary files are ignored.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use inotify::{EventMask, Inotify, WatchMask};

use super::change::{
    check_name, Change, LOG_PIECE_LEN, PART_NAME, STAGE_PREFIX, SWAP_LEN_MAX, TEMP_PREFIX,
};

/// Bytes at the end of each followed file remembered to detect a rewrite in place.
pub const TAIL_LEN: usize = 4096;
/// Scans of a rescan that may meet a change of names before capture stops
/// (`Tracker::rescan`).
const RESCAN_TRIES: usize = 8;
/// How often the capture thread checks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long a rename's first event waits for its second before the file counts as moved
/// out of the directory.
const MOVE_PAIR_WAIT: Duration = Duration::from_millis(10);

/// Why capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} was rewritten in place (its last bytes changed without it growing): follow mode covers files that only grow, are installed by rename, or are deleted, not files overwritten in place")]
    RewrittenInPlace { path: PathBuf },
    #[error("the followed directory {path} was removed or moved away")]
    DirGone { path: PathBuf },
    #[error("after lost inotify events, the rescan of {path} found its files renamed, created or deleted during each of {tries} scans: no scan is one moment of the directory")]
    RescanUnsettled { path: PathBuf, tries: usize },
    #[error("after lost inotify events, the rescan of {path} found {files} files to replace or remove, more than one record can name")]
    RescanTooLarge { path: PathBuf, files: usize },
    #[error("{path} was cut back between two pieces of it each of {tries} times it was shipped whole: it never held still long enough to be read")]
    ChangedWhileShipped { path: PathBuf, tries: usize },
    #[error("{path} was cut back while the application served (captured {captured} bytes; it now holds {now}, without the captured end): what was cut away may be acknowledged, so the cut is not shipped")]
    Cut {
        path: PathBuf,
        captured: u64,
        now: u64,
    },
}

/// What is known of one followed file.
#[derive(Debug, Clone)]
struct Tracked {
    len: u64,
    /// Its last `min(len, TAIL_LEN)` bytes.
    tail: Vec<u8>,
    /// Its inode: an event about a name that now holds another file (replaced by a rename
    /// since) is not about this one. 0 while unknown.
    ino: u64,
}

impl Tracked {
    fn of(content: &[u8], ino: u64) -> Tracked {
        Tracked {
            len: content.len() as u64,
            tail: content[content.len().saturating_sub(TAIL_LEN)..].to_vec(),
            ino,
        }
    }

    fn grow(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        // Only the last TAIL_LEN bytes of a long growth are kept (not copied whole first).
        let data = &data[data.len().saturating_sub(TAIL_LEN)..];
        self.tail.extend_from_slice(data);
        let excess = self.tail.len().saturating_sub(TAIL_LEN);
        self.tail.drain(..excess);
    }
}

/// One followed file as a rescan found it: its inode, its length then, and whether it only
/// grew since it was captured. Nothing is held open: a rescan opens each file again by name
/// when its turn comes, and takes it only if it is still the inode found
/// (`Tracker::rescan`), so that a directory with more changed files than the process may
/// hold open is rescanned all the same.
#[derive(Debug)]
struct Found {
    ino: u64,
    len: u64,
    grew: bool,
}

/// Every followed file of the directory, as a rescan found it.
type Scan = BTreeMap<Vec<u8>, Found>;

/// One inotify event, as the tracker needs it.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Created(Vec<u8>),
    Modified(Vec<u8>),
    MovedFrom(u32, Vec<u8>),
    MovedTo(u32, Vec<u8>),
    Deleted(Vec<u8>),
    Overflow,
    DirGone,
}

/// Turns events into changes; knows every followed file's length and tail.
#[derive(Debug)]
pub(crate) struct Tracker {
    dir: PathBuf,
    files: BTreeMap<Vec<u8>, Tracked>,
    /// A `MovedFrom` waiting for its `MovedTo` (the next event, for a rename inside the
    /// directory).
    moving: Option<(u32, Vec<u8>)>,
    /// Events read and not handled yet, in order.
    queue: std::collections::VecDeque<Event>,
    /// Reads whatever events the kernel has queued since.
    source: Option<EventSource>,
    /// Takes the changes made so far out of `out` while a long growth is read in pieces, so
    /// that capture never holds more of it than one piece ([`READ_PIECE`]). Without one
    /// (tests), the changes stay in `out`.
    sink: Option<Sink>,
    /// Whether a cut is refused ([`Capture::refuse_cuts`]) rather than shipped.
    refuse_cuts: Arc<AtomicBool>,
}

/// Reads the events the kernel has queued (without waiting).
pub(crate) struct EventSource(Box<dyn FnMut() -> Vec<Event> + Send>);

/// Sends the changes in `out` on, in order, emptying it; `false` once capture should stop
/// (asked to, or nobody takes changes any more).
pub(crate) struct Sink(Box<SendChanges>);

type SendChanges = dyn FnMut(&mut Vec<Change>) -> bool + Send;

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// How many times a file shipped whole is started again from its beginning, found cut back
/// between two of its pieces, before capture stops (`Tracker::ship_file`).
const SHIP_TRIES: usize = 8;

const _: () = assert!(READ_PIECE as usize > LOG_PIECE_LEN);

/// How much of a file's growth capture reads at once: a bulk load that writes hundreds of
/// megabytes between two looks at the file is read, and sent on, a piece at a time.
const READ_PIECE: u64 = 4 << 20;

/// Data bytes (of appends and installs) sent on by capture and not yet taken into a proposal,
/// at most, beyond one change: past it capture waits ([`Backlog`]). Before the bound, a bulk
/// load of 400 MB took the primary's sidecar to 106-672 MB of anonymous memory (12 runs), the capture
/// reading the directory much faster than the log took it.
pub const BACKLOG_BYTES_MAX: u64 = 32 << 20;

/// The data bytes capture has sent on and shipping has not yet taken into a proposal
/// ([`BACKLOG_BYTES_MAX`]).
#[derive(Debug, Default)]
pub struct Backlog {
    state: Mutex<BacklogState>,
    taken: Condvar,
}

#[derive(Debug, Default)]
struct BacklogState {
    bytes: u64,
    /// Nobody takes changes any more: waiting would never end.
    closed: bool,
}

impl Backlog {
    fn lock(&self) -> std::sync::MutexGuard<'_, BacklogState> {
        // Every update leaves the state whole: a panic elsewhere cannot tear it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `bytes` about to be sent, first waiting while the backlog is past its bound
    /// (a change goes alone into an empty one, whatever its size). `false` if `stop` was
    /// set or the backlog closed meanwhile: nothing is counted then.
    fn add(&self, bytes: u64, stop: &AtomicBool) -> bool {
        let mut state = self.lock();
        loop {
            if state.closed || stop.load(Ordering::Relaxed) {
                return false;
            }
            if state.bytes == 0 || state.bytes + bytes <= BACKLOG_BYTES_MAX {
                state.bytes += bytes;
                return true;
            }
            state = self
                .taken
                .wait_timeout(state, STOP_POLL)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// `bytes` of what was sent are taken (into a proposal, or dropped).
    pub fn take(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut state = self.lock();
        state.bytes = state.bytes.saturating_sub(bytes);
        drop(state);
        self.taken.notify_all();
    }

    /// Nobody takes changes any more: a wait ends, and none starts.
    pub fn close(&self) {
        self.lock().closed = true;
        self.taken.notify_all();
    }

    /// The data bytes sent on and not yet taken.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSource")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaptureError + '_ {
    move |source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn followed(name: &[u8]) -> bool {
    check_name(name).is_ok() && !name.starts_with(TEMP_PREFIX.as_bytes())
}

impl Tracker {
    /// Takes the directory's files as already captured.
    pub(crate) fn scan(dir: &Path) -> Result<Tracker, CaptureError> {
        let mut tracker = Tracker {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            moving: None,
            queue: std::collections::VecDeque::new(),
            source: None,
            sink: None,
            refuse_cuts: Arc::new(AtomicBool::new(false)),
        };
        for name in tracker.followed_names()? {
            let Some(mut file) = tracker.open(&name)? else {
                continue;
            };
            let tracked = read_tail(&mut file).map_err(io(&tracker.path(&name)))?;
            tracker.files.insert(name, tracked);
        }
        Ok(tracker)
    }

    fn path(&self, name: &[u8]) -> PathBuf {
        self.dir.join(std::ffi::OsStr::from_bytes(name))
    }

    /// The names of the directory's followed files (regular files, not the materializer's).
    fn followed_names(&self) -> Result<Vec<Vec<u8>>, CaptureError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().as_bytes().to_vec();
            if followed(&name) && entry.file_type().map_err(io(&self.dir))?.is_file() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// File `name`, opened; `None` if it is gone.
    fn open(&self, name: &[u8]) -> Result<Option<File>, CaptureError> {
        let path = self.path(name);
        match File::open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The directory's followed files now, each compared with what was captured of it
    /// ([`Found`]): a rescan's scan. Reads no more of a file than its captured tail.
    fn scan_now(&self) -> Result<Scan, CaptureError> {
        let mut all = BTreeMap::new();
        for name in self.followed_names()? {
            let Some(mut file) = self.open(&name)? else {
                continue;
            };
            let path = self.path(&name);
            let metadata = file.metadata().map_err(io(&path))?;
            let (ino, len) = (
                std::os::unix::fs::MetadataExt::ino(&metadata),
                metadata.len(),
            );
            let grew = match self.files.get(&name) {
                // Still holds the captured tail where it was (nothing read past it).
                Some(tracked) if (tracked.ino == 0 || tracked.ino == ino) && len >= tracked.len => {
                    read_on(&mut file, tracked, 0).map_err(io(&path))?.is_some()
                }
                _ => false,
            };
            all.insert(name, Found { ino, len, grew });
        }
        Ok(all)
    }

    /// Ships what `file` holds, from its start to the length it has as this begins, under
    /// `name`, a piece of at most [`READ_PIECE`] at a time, each sent on through the sink
    /// before the next is read: capture holds one piece of it, not the file (a rewritten
    /// Redis base file may be gigabytes). With `whole`, every committed prefix of the log
    /// holds the file under `name` whole or not at all: one `Install` when it fits one
    /// piece, otherwise built under [`PART_NAME`] (which no other change names meanwhile:
    /// capture is this one thread, and shipping keeps its order) and renamed over `name` by
    /// the last change. Without it (a staging name, which nothing reads before a `Swap` puts
    /// it in place) the first piece is an `Install` and the rest appends.
    ///
    /// The sink may wait between two pieces, for as long as shipping is behind. Each piece
    /// after the first is read with the tail shipped before it, in one read ([`read_on`]):
    /// a file cut back (and perhaps written again) meanwhile no longer holds that tail, and
    /// is shipped again from its start, so that the bytes shipped are always a content the
    /// file held, never the start of one and the rest of another. A file still changing so
    /// after [`SHIP_TRIES`] starts stops capture ([`CaptureError::ChangedWhileShipped`]).
    ///
    /// Returns what is now captured of the file, or `None` once capture should stop.
    fn ship_file(
        &mut self,
        name: &[u8],
        file: &mut File,
        ino: u64,
        whole: bool,
        out: &mut Vec<Change>,
    ) -> Result<Option<Tracked>, CaptureError> {
        let path = self.path(name);
        'start: for _ in 0..SHIP_TRIES {
            let size = file.metadata().map_err(io(&path))?.len();
            let mut tracked = Tracked::of(&[], ino);
            let first = read_on(file, &tracked, size.min(READ_PIECE))
                .map_err(io(&path))?
                .unwrap_or_default();
            tracked.grow(&first);
            if first.len() < READ_PIECE as usize || tracked.len >= size {
                out.push(Change::Install {
                    name: Bytes::copy_from_slice(name),
                    data: first,
                });
                return Ok(Some(tracked));
            }
            let building = if whole {
                Bytes::from_static(PART_NAME.as_bytes())
            } else {
                Bytes::copy_from_slice(name)
            };
            out.push(Change::Install {
                name: building.clone(),
                data: first.slice(..LOG_PIECE_LEN),
            });
            out.push(Change::Append {
                name: building.clone(),
                offset: LOG_PIECE_LEN as u64,
                data: first.slice(LOG_PIECE_LEN..),
            });
            while tracked.len < size {
                if !self.flush(out) {
                    return Ok(None);
                }
                let want = (size - tracked.len).min(READ_PIECE);
                let Some(piece) = read_on(file, &tracked, want).map_err(io(&path))? else {
                    // Cut back since the last piece: from the start again.
                    continue 'start;
                };
                if piece.is_empty() {
                    break; // Cut back to exactly what was shipped: that is the file.
                }
                tracked.grow(&piece);
                out.push(Change::Append {
                    name: building.clone(),
                    offset: tracked.len - piece.len() as u64,
                    data: piece,
                });
            }
            if whole {
                out.push(Change::Rename {
                    name: building,
                    to: Bytes::copy_from_slice(name),
                });
            }
            return Ok(Some(tracked));
        }
        Err(CaptureError::ChangedWhileShipped {
            path,
            tries: SHIP_TRIES,
        })
    }

    /// Ships what followed file `name` (tracked, and open as `file`) grew by past what was
    /// captured of it, up to the length it has as this begins, as appends of at most
    /// [`READ_PIECE`], each sent on through the sink before the next is read, and each read
    /// with the captured tail before it ([`read_on`]). A file that no longer holds that
    /// tail was cut back since: shipping stops there, and the events of the cut (queued
    /// since) show it as a cut. `false` once capture should stop.
    fn ship_growth(
        &mut self,
        name: &[u8],
        file: &mut File,
        out: &mut Vec<Change>,
    ) -> Result<bool, CaptureError> {
        let path = self.path(name);
        let size = file.metadata().map_err(io(&path))?.len();
        loop {
            let Some(tracked) = self.files.get_mut(name) else {
                return Ok(true);
            };
            if tracked.len >= size {
                return Ok(true);
            }
            let want = (size - tracked.len).min(READ_PIECE);
            let piece = match read_on(file, tracked, want).map_err(io(&path))? {
                Some(piece) if !piece.is_empty() => piece,
                _ => return Ok(true),
            };
            tracked.grow(&piece);
            out.push(Change::Append {
                name: Bytes::copy_from_slice(name),
                offset: tracked.len - piece.len() as u64,
                data: piece,
            });
            if !self.flush(out) {
                return Ok(false);
            }
        }
    }

    /// Catches up with file `name` as found on disk at `at` (its own name, or the name it
    /// was renamed to): appends what it grew by, or a cut, after checking the tail.
    fn catch_up(
        &mut self,
        name: &[u8],
        at: &[u8],
        out: &mut Vec<Change>,
    ) -> Result<(), CaptureError> {
        let path = self.path(at);
        if !self.files.contains_key(name) {
            return Ok(());
        }
        let mut file = match File::open(&path) {
            Ok(file) => file,
            // Gone already: the rename or deletion that follows says what became of it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&path)(e)),
        };
        // Opened by name: sure to be this file only if nothing moved the name on before.
        self.refill();
        if self.moved_later(at) {
            return Ok(());
        }
        let Some(tracked) = self.files.get_mut(name) else {
            return Ok(());
        };
        let metadata = file.metadata().map_err(io(&path))?;
        let ino = std::os::unix::fs::MetadataExt::ino(&metadata);
        if tracked.ino != 0 && ino != tracked.ino {
            // The name holds another file now (renamed over since): the event that did it
            // follows and says what became of it.
            return Ok(());
        }
        tracked.ino = ino;
        let size = metadata.len();
        // Its bytes from where the captured tail starts (and at most one piece past the
        // captured length), unless it is shorter than captured.
        let tail_len = tracked.tail.len();
        let mut now = Vec::new();
        let cut = size < tracked.len || {
            // The tail must be what was captured: a file that only grows.
            let tail_start = tracked.len - tail_len as u64;
            let expected = (size.min(tracked.len + READ_PIECE) - tail_start) as usize;
            now.resize(expected, 0);
            file.seek(SeekFrom::Start(tail_start)).map_err(io(&path))?;
            let read = read_full(&mut file, &mut now).map_err(io(&path))?;
            now.truncate(read);
            let other_tail = now.len() < tail_len || now[..tail_len] != tracked.tail[..];
            // Fewer bytes than its length said: cut back between the two, which is a cut,
            // not a rewrite (its length was read before the cut).
            let shrank = read < expected;
            if other_tail && size == tracked.len && !shrank {
                // Same length, other bytes: written over in place.
                return Err(CaptureError::RewrittenInPlace { path });
            }
            other_tail
        };
        if cut {
            // Shorter than captured, or longer with other bytes where the captured tail was:
            // cut back (and perhaps grown again) before this read, or rewritten and grown,
            // which look the same here. While the application serves that is refused (module
            // docs); otherwise shipped whole, which is right either way (a cut is rare: an
            // application dropping a torn tail at start-up).
            if self.refuse_cuts.load(Ordering::Relaxed) {
                return Err(CaptureError::Cut {
                    path,
                    captured: tracked.len,
                    now: size,
                });
            }
            if let Some(tracked) = self.ship_file(name, &mut file, ino, true, out)? {
                self.files.insert(name.to_vec(), tracked);
            }
            return Ok(());
        }
        // What it grew by, a piece at a time: each piece is sent on (the sink waits while
        // shipping is behind) before the next is read, up to the length seen above; what
        // grows after that comes with its own event.
        let mut grown = Bytes::from(now).slice(tail_len..);
        let name = Bytes::copy_from_slice(name);
        loop {
            if grown.is_empty() {
                return Ok(());
            }
            tracked.grow(&grown);
            out.push(Change::Append {
                name: name.clone(),
                offset: tracked.len - grown.len() as u64,
                data: grown,
            });
            if tracked.len >= size {
                return Ok(());
            }
            if let Some(sink) = self.sink.as_mut() {
                if !(sink.0)(out) {
                    return Ok(()); // Stopping: the rest is not wanted.
                }
            }
            // The sink may have waited for shipping: the file may have been cut back and
            // grown again meanwhile. Each piece is read with the captured tail before it, in
            // one read, as the first was: other bytes there, or fewer, mean a cut, which the
            // events that made it (queued since) show, as a cut, once this one is done.
            let tail_len = tracked.tail.len();
            let want = (size - tracked.len).min(READ_PIECE) as usize;
            let mut piece = vec![0; tail_len + want];
            file.seek(SeekFrom::Start(tracked.len - tail_len as u64))
                .map_err(io(&path))?;
            let read = read_full(&mut file, &mut piece).map_err(io(&path))?;
            piece.truncate(read);
            if read <= tail_len || piece[..tail_len] != tracked.tail[..] {
                return Ok(());
            }
            grown = Bytes::from(piece).slice(tail_len..);
        }
    }

    /// Whether an event not yet handled renames `name` away, deletes it, or renames another
    /// file over it: then `name` may hold another file already, and is not read now (the
    /// rename's own catch-up reads the file under its new name).
    fn moved_later(&self, name: &[u8]) -> bool {
        self.queue.iter().any(|e| match e {
            Event::MovedFrom(_, n) | Event::MovedTo(_, n) | Event::Deleted(n) => {
                n.as_slice() == name
            }
            _ => false,
        })
    }

    /// Reads the events queued since into `queue`. Called after a file is opened by name:
    /// if none of them moves the name on, the file opened is the one the name held when the
    /// events handled so far were the whole story.
    fn refill(&mut self) {
        if let Some(source) = self.source.as_mut() {
            let more = (source.0)();
            self.queue.extend(more);
        }
    }

    /// Sends the changes in `out` on through the sink, if there is one; `false` once capture
    /// should stop.
    fn flush(&mut self, out: &mut Vec<Change>) -> bool {
        match self.sink.as_mut() {
            Some(sink) => (sink.0)(out),
            None => true,
        }
    }

    /// Handles every queued event; appends the changes they make to `out`.
    pub(crate) fn drain_queue(&mut self, out: &mut Vec<Change>) -> Result<(), CaptureError> {
        while let Some(event) = self.queue.pop_front() {
            self.on_event(event, out)?;
        }
        Ok(())
    }

    /// Handles one event (popped from the queue; the rest of the queue is what follows it).
    fn on_event(&mut self, event: Event, out: &mut Vec<Change>) -> Result<(), CaptureError> {
        let moved_later = |tracker: &Tracker, name: &[u8]| tracker.moved_later(name);
        // A MovedFrom not followed at once by its MovedTo left the directory.
        if let Some((cookie, from)) = self.moving.take() {
            match &event {
                Event::MovedTo(to_cookie, _) if *to_cookie == cookie => {
                    self.moving = Some((cookie, from));
                }
                // Its MovedTo may be among the lost events: the rescan finds the old name
                // gone and removes it in its one Swap, with the new name put in place, not
                // in a deletion of its own before them.
                Event::Overflow => {}
                _ => {
                    if self.files.remove(&from).is_some() {
                        out.push(Change::Delete {
                            name: Bytes::from(from),
                        });
                    }
                }
            }
        }
        match event {
            Event::Created(name) if followed(&name) => {
                if !self.files.contains_key(&name) {
                    self.files.insert(name.clone(), Tracked::of(&[], 0));
                    out.push(Change::Append {
                        name: Bytes::copy_from_slice(&name),
                        offset: 0,
                        data: Bytes::new(),
                    });
                }
                if !moved_later(self, &name) {
                    self.catch_up(&name.clone(), &name, out)?;
                }
            }
            Event::Modified(name) if followed(&name) => {
                if moved_later(self, &name) {
                    // Read under its new name by the rename, or gone.
                } else if self.files.contains_key(&name) {
                    self.catch_up(&name.clone(), &name, out)?;
                } else {
                    // Not seen created (it existed before the watch, or the create was in
                    // an overflow): ship it whole.
                    self.install(&name, out)?;
                }
            }
            Event::MovedFrom(cookie, name) if followed(&name) => {
                self.moving = Some((cookie, name));
            }
            Event::MovedTo(cookie, to) => {
                let from = match self.moving.take() {
                    Some((from_cookie, from)) if from_cookie == cookie => Some(from),
                    Some((_, from)) => {
                        if self.files.remove(&from).is_some() {
                            out.push(Change::Delete {
                                name: Bytes::from(from),
                            });
                        }
                        None
                    }
                    None => None,
                };
                match (from, followed(&to)) {
                    (Some(from), true) if self.files.contains_key(&from) => {
                        // Bytes it grew by before the rename, read under its new name
                        // (unless that name moves on too: then by the next rename).
                        if !moved_later(self, &to) {
                            self.catch_up(&from.clone(), &to, out)?;
                        }
                        if let Some(tracked) = self.files.remove(&from) {
                            self.files.insert(to.clone(), tracked);
                            out.push(Change::Rename {
                                name: Bytes::from(from),
                                to: Bytes::copy_from_slice(&to),
                            });
                        }
                    }
                    (_, true) if moved_later(self, &to) => {
                        // Moved on or deleted before it could be read: known as soon as it
                        // is read under its next name.
                        self.files.insert(to.clone(), Tracked::of(&[], 0));
                        out.push(Change::Install {
                            name: Bytes::copy_from_slice(&to),
                            data: Bytes::new(),
                        });
                    }
                    (_, true) => self.install(&to, out)?,
                    (Some(from), false) => {
                        // Renamed to a name not followed: gone, as far as followers know.
                        if self.files.remove(&from).is_some() {
                            out.push(Change::Delete {
                                name: Bytes::from(from),
                            });
                        }
                    }
                    (None, false) => {}
                }
            }
            Event::Deleted(name) => {
                if self.files.remove(&name).is_some() {
                    out.push(Change::Delete {
                        name: Bytes::from(name),
                    });
                }
            }
            Event::Overflow => self.rescan(out)?,
            Event::DirGone => {
                return Err(CaptureError::DirGone {
                    path: self.dir.clone(),
                })
            }
            Event::Created(_) | Event::Modified(_) | Event::MovedFrom(..) => {}
        }
        Ok(())
    }

    /// Ships file `name` whole, as it is now (if it still exists), a piece at a time
    /// ([`Tracker::ship_file`]).
    fn install(&mut self, name: &[u8], out: &mut Vec<Change>) -> Result<(), CaptureError> {
        let opened = self.open(name)?;
        // Opened by name: sure to be this file only if nothing moved the name on before.
        self.refill();
        if self.moved_later(name) {
            // Read under a name that has moved on: known when its next name is read.
            self.files.insert(name.to_vec(), Tracked::of(&[], 0));
            out.push(Change::Install {
                name: Bytes::copy_from_slice(name),
                data: Bytes::new(),
            });
            return Ok(());
        }
        if let Some(mut file) = opened {
            let metadata = file.metadata().map_err(io(&self.path(name)))?;
            let ino = std::os::unix::fs::MetadataExt::ino(&metadata);
            if let Some(tracked) = self.ship_file(name, &mut file, ino, true, out)? {
                self.files.insert(name.to_vec(), tracked);
            }
        }
        Ok(())
    }

    /// After lost events: compares the directory with what was captured, and ships the
    /// difference so that every committed prefix of it is safe to restart from.
    ///
    /// The events lost held the order of the application's steps, which is what made each
    /// prefix of the captured changes a directory the application could have left (module
    /// docs). Without them, shipping files one by one could commit, say, a new manifest
    /// without the base file it names, or the deletion of the old files without the new
    /// ones: a primary lost at that moment would leave a backup that cannot restart, or one
    /// without acknowledged writes. So, in this order:
    /// 1. files that only grew: their new bytes as appends (a prefix then holds names as
    ///    they were, with more bytes, as the normal path allows);
    /// 2. every other file that differs: whole, under a staging name ([`STAGE_PREFIX`]),
    ///    which the application never reads;
    /// 3. one [`Change::Swap`]: each staged file renamed over its name, each vanished file
    ///    deleted. It is one record, so a committed prefix holds all of it or none of it.
    ///
    /// A reply barrier asked after the overflow counts the whole rescan.
    ///
    /// The scan must be one moment of the directory, and the events behind the overflow
    /// must not be played again over it. Every event queued when a scan starts happened
    /// before it, so the scan covers it and the queue is dropped (a rename played again
    /// over a directory that already holds it would move another file). A name that
    /// changes while the files are read (a creation, rename or deletion, another overflow)
    /// could leave the scan with a new manifest and no base file, so such an event makes
    /// it scan again, up to [`RESCAN_TRIES`] times; then capture stops
    /// ([`CaptureError::RescanUnsettled`]). Growth during the scan is not a change of
    /// names: its events stay queued and are caught up after the rescan.
    fn rescan(&mut self, out: &mut Vec<Change>) -> Result<(), CaptureError> {
        let mut tries = 0;
        while !self.rescan_once(&mut tries, out)? {
            tries += 1;
            if tries >= RESCAN_TRIES {
                return Err(CaptureError::RescanUnsettled {
                    path: self.dir.clone(),
                    tries,
                });
            }
        }
        Ok(())
    }

    /// One try of [`Tracker::rescan`], the scans of earlier tries counted in `tries`:
    /// `false` if a file to be shipped whole was found moved on (another inode under its
    /// name, or none) when its turn came, so the scan is not one moment any more; the
    /// rescan then scans again (what this try shipped under staging names is replaced or
    /// left unnamed, as a log cut short leaves it).
    fn rescan_once(
        &mut self,
        tries: &mut usize,
        out: &mut Vec<Change>,
    ) -> Result<bool, CaptureError> {
        let now = loop {
            self.refill();
            if self
                .queue
                .iter()
                .any(|event| matches!(event, Event::DirGone))
            {
                return Err(CaptureError::DirGone {
                    path: self.dir.clone(),
                });
            }
            self.queue.clear();
            // Its MovedTo, if any, is covered too; the old name is tracked and the scan
            // finds it gone.
            self.moving = None;
            let now = self.scan_now()?;
            self.refill();
            let names_moved = self.queue.iter().any(|event| match event {
                Event::Created(name)
                | Event::MovedFrom(_, name)
                | Event::MovedTo(_, name)
                | Event::Deleted(name) => followed(name),
                Event::Overflow | Event::DirGone => true,
                Event::Modified(_) => false,
            });
            if !names_moved {
                break now;
            }
            *tries += 1;
            if *tries >= RESCAN_TRIES {
                return Err(CaptureError::RescanUnsettled {
                    path: self.dir.clone(),
                    tries: *tries,
                });
            }
        };
        let gone: Vec<Vec<u8>> = self
            .files
            .keys()
            .filter(|name| !now.contains_key(*name))
            .cloned()
            .collect();
        // Staging names taken by no tracked file and no file found.
        let taken: std::collections::BTreeSet<Vec<u8>> = now.keys().cloned().collect();
        let mut staged = 0usize;
        let mut stage_name = |files: &BTreeMap<Vec<u8>, Tracked>| loop {
            let name = format!("{STAGE_PREFIX}{staged}").into_bytes();
            staged += 1;
            if !files.contains_key(&name) && !taken.contains(&name) {
                return Bytes::from(name);
            }
        };
        // Everything is decided before a byte is shipped: what grew, what is staged under
        // which name, and that the Swap fits one record.
        let mut grown = Vec::new();
        let mut staging = Vec::new();
        let mut renames = Vec::new();
        for (name, found) in now {
            if found.grew {
                if let Some(tracked) = self.files.get_mut(&name) {
                    tracked.ino = found.ino;
                    if found.len > tracked.len {
                        grown.push((name, found.ino));
                    }
                }
                continue;
            }
            let cut = self
                .files
                .get(&name)
                .filter(|tracked| tracked.ino == 0 || tracked.ino == found.ino);
            if let Some(tracked) = cut.filter(|_| self.refuse_cuts.load(Ordering::Relaxed)) {
                return Err(CaptureError::Cut {
                    path: self.path(&name),
                    captured: tracked.len,
                    now: found.len,
                });
            }
            let stage = stage_name(&self.files);
            renames.push((stage.clone(), Bytes::copy_from_slice(&name)));
            staging.push((name, stage, found.ino));
        }
        let deletes: Vec<Bytes> = gone
            .iter()
            .map(|name| Bytes::copy_from_slice(name))
            .collect();
        let swap =
            (!renames.is_empty() || !deletes.is_empty()).then(|| Change::Swap { renames, deletes });
        if swap
            .as_ref()
            .is_some_and(|swap| swap.encode().len() > SWAP_LEN_MAX)
        {
            return Err(CaptureError::RescanTooLarge {
                path: self.dir.clone(),
                files: staging.len() + gone.len(),
            });
        }
        // Each file opened by name when its turn comes, and taken only if it is the inode
        // the scan found. A grown file found moved on is left to the events that moved it
        // (its growth is not part of what the Swap puts in place).
        for (name, ino) in grown {
            let Some(mut file) = self.open_if(&name, ino)? else {
                continue;
            };
            if !self.ship_growth(&name, &mut file, out)? {
                return Ok(true); // Stopping.
            }
        }
        // What the tracker holds of each staged file once the Swap puts it in place.
        let mut replaced = Vec::new();
        for (name, stage, ino) in staging {
            let Some(mut file) = self.open_if(&name, ino)? else {
                return Ok(false);
            };
            match self.ship_file(&stage, &mut file, ino, false, out)? {
                Some(tracked) => replaced.push((name, tracked)),
                None => return Ok(true), // Stopping.
            }
        }
        let Some(swap) = swap else {
            return Ok(true);
        };
        // The tracker takes the staged files and the deletions only with the Swap (the
        // grown files above are already shipped).
        for name in &gone {
            self.files.remove(name);
        }
        self.files.extend(replaced);
        out.push(swap);
        Ok(true)
    }

    /// Followed file `name`, opened, if it is still inode `ino`; `None` if the name holds
    /// another file now, or none.
    fn open_if(&self, name: &[u8], ino: u64) -> Result<Option<File>, CaptureError> {
        let Some(file) = self.open(name)? else {
            return Ok(None);
        };
        let metadata = file.metadata().map_err(io(&self.path(name)))?;
        Ok((std::os::unix::fs::MetadataExt::ino(&metadata) == ino).then_some(file))
    }
}

/// An inotify event as the tracker sees it; `None` for one it ignores.
fn to_event(event: inotify::Event<&std::ffi::OsStr>) -> Option<Event> {
    let mask = event.mask;
    if mask.contains(EventMask::Q_OVERFLOW) {
        return Some(Event::Overflow);
    }
    if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
        return Some(Event::DirGone);
    }
    let name = event.name?.as_bytes().to_vec();
    if mask.contains(EventMask::ISDIR) {
        return None;
    }
    if mask.contains(EventMask::CREATE) {
        Some(Event::Created(name))
    } else if mask.contains(EventMask::MODIFY) {
        Some(Event::Modified(name))
    } else if mask.contains(EventMask::MOVED_FROM) {
        Some(Event::MovedFrom(event.cookie, name))
    } else if mask.contains(EventMask::MOVED_TO) {
        Some(Event::MovedTo(event.cookie, name))
    } else if mask.contains(EventMask::DELETE) {
        Some(Event::Deleted(name))
    } else {
        None
    }
}

/// The bytes of `file` that follow what `tracked` holds of it (its length and tail), at
/// most `want`, read in one read together with the tail before them: `None` if the file
/// no longer holds that tail there (cut back since, and perhaps written again), else the
/// bytes (empty at the end of the file). The buffer is the tail plus `want` long at most,
/// so a short file costs its length, not a piece.
fn read_on(file: &mut File, tracked: &Tracked, want: u64) -> std::io::Result<Option<Bytes>> {
    let tail_len = tracked.tail.len();
    file.seek(SeekFrom::Start(tracked.len - tail_len as u64))?;
    let mut read = Vec::with_capacity(tail_len + want as usize);
    file.by_ref()
        .take(tail_len as u64 + want)
        .read_to_end(&mut read)?;
    if read.len() < tail_len || read[..tail_len] != tracked.tail[..] {
        return Ok(None);
    }
    Ok(Some(Bytes::from(read).slice(tail_len..)))
}

/// What a file taken as captured already is known by: its length, its last [`TAIL_LEN`]
/// bytes and its inode; nothing before the tail is read. A file that shrinks between its
/// length and its tail is read again (a tail shorter than the length says would pass bytes
/// that were there before for growth).
fn read_tail(file: &mut File) -> std::io::Result<Tracked> {
    const TRIES: usize = 8;
    for _ in 0..TRIES {
        let metadata = file.metadata()?;
        let ino = std::os::unix::fs::MetadataExt::ino(&metadata);
        let len = metadata.len();
        let start = len.saturating_sub(TAIL_LEN as u64);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::with_capacity(TAIL_LEN);
        file.by_ref().take(len - start).read_to_end(&mut tail)?;
        if tail.len() as u64 == len - start {
            return Ok(Tracked { len, tail, ino });
        }
    }
    Err(std::io::Error::other(format!(
        "cut back while its tail was read, {TRIES} times"
    )))
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match file.read(&mut buf[read..])? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read)
}

/// The running capture: a thread of its own that sends each change (or the error that
/// stopped it) in order.
pub struct Capture {
    stop: Arc<AtomicBool>,
    refuse_cuts: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Barrier requests to the capture thread, and the eventfd that wakes it for them.
    barriers: mpsc::Sender<tokio::sync::oneshot::Sender<u64>>,
    wake: Arc<std::os::fd::OwnedFd>,
    backlog: Arc<Backlog>,
}

impl Capture {
    /// Starts following `dir`, whose present files are taken as captured already.
    pub fn start(
        dir: &Path,
        changes: mpsc::Sender<Result<Change, CaptureError>>,
    ) -> Result<Capture, CaptureError> {
        let inotify = Inotify::init().map_err(io(dir))?;
        inotify
            .watches()
            .add(
                dir,
                WatchMask::CREATE
                    | WatchMask::MODIFY
                    | WatchMask::MOVED_FROM
                    | WatchMask::MOVED_TO
                    | WatchMask::DELETE
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF,
            )
            .map_err(io(dir))?;
        // Scanned after the watch is in place: a change made in between shows up in both,
        // and the tracker takes it once (a file already grown is not grown again).
        let tracker = Tracker::scan(dir)?;
        let refuse_cuts = Arc::clone(&tracker.refuse_cuts);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        // SAFETY: eventfd(2) with valid flags; the descriptor it returns is owned below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io(dir)(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new descriptor nobody else owns.
        let wake =
            Arc::new(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        let (barriers, barrier_rx) = mpsc::channel();
        let thread_wake = Arc::clone(&wake);
        let backlog = Arc::new(Backlog::default());
        let thread_backlog = Arc::clone(&backlog);
        let thread = std::thread::Builder::new()
            .name("follow-capture".into())
            .spawn(move || {
                run(
                    inotify,
                    tracker,
                    changes,
                    thread_stop,
                    barrier_rx,
                    thread_wake,
                    thread_backlog,
                )
            })
            .map_err(io(dir))?;
        Ok(Capture {
            stop,
            refuse_cuts,
            thread: Some(thread),
            barriers,
            wake,
            backlog,
        })
    }

    /// The reply barrier's first half: how many changes the capture has sent once every
    /// event the kernel had queued when this was called is handled. An application that
    /// wrote its log before it answered has its write among them (inotify queues the event
    /// before `write` returns), so a reply held until that many changes are committed
    /// loses nothing. Barriers asked at once share one pass. `None` once capture stopped.
    pub async fn barrier(&self) -> Option<u64> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.barriers.send(reply).ok()?;
        let one: u64 = 1;
        // SAFETY: an 8-byte write to an eventfd this capture owns.
        unsafe {
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&*self.wake),
                (&one as *const u64).cast(),
                8,
            )
        };
        answer.await.ok()
    }
}

impl Capture {
    /// From now on a followed file cut back below what was captured stops capture with
    /// [`CaptureError::Cut`] instead of being shipped whole (see the module docs): for
    /// while the application serves.
    pub fn refuse_cuts(&self) {
        self.refuse_cuts.store(true, Ordering::Relaxed);
    }

    /// The data bytes sent on and not yet taken ([`Backlog`]): whoever takes the changes
    /// calls [`Backlog::take`] for each once it holds it no more, and [`Backlog::close`]
    /// when it stops taking them.
    pub fn backlog(&self) -> Arc<Backlog> {
        Arc::clone(&self.backlog)
    }

    /// Asks the capture thread to stop (within `STOP_POLL`, 50 ms); its sender closes then.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    mut inotify: Inotify,
    mut tracker: Tracker,
    changes: mpsc::Sender<Result<Change, CaptureError>>,
    stop: Arc<AtomicBool>,
    barriers: mpsc::Receiver<tokio::sync::oneshot::Sender<u64>>,
    wake: Arc<std::os::fd::OwnedFd>,
    backlog: Arc<Backlog>,
) {
    let wake_fd = std::os::fd::AsRawFd::as_raw_fd(&*wake);
    // Changes sent so far: what a barrier answers.
    let sent = Arc::new(AtomicU64::new(0));
    let fd = inotify.as_raw_fd();
    let mut buffer = vec![0u8; 64 * 1024];
    tracker.source = Some(EventSource(Box::new(move || {
        let mut events = Vec::new();
        // Until the queue is empty (`WouldBlock`); a read that fails otherwise is left for
        // the next poll.
        while let Ok(more) = inotify.read_events(&mut buffer) {
            events.extend(more.filter_map(to_event));
        }
        events
    })));
    let errors = changes.clone();
    {
        let sent = Arc::clone(&sent);
        let stop = Arc::clone(&stop);
        tracker.sink = Some(Sink(Box::new(move |out: &mut Vec<Change>| {
            for change in out.drain(..) {
                let bytes = change.data_len() as u64;
                if !backlog.add(bytes, &stop) {
                    return false;
                }
                if changes.send(Ok(change)).is_err() {
                    backlog.take(bytes);
                    return false;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            true
        })));
    }
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut polls = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // A rename's two events may straddle two reads: wait a little for the second.
        let timeout = if tracker.moving.is_some() {
            MOVE_PAIR_WAIT
        } else {
            STOP_POLL
        };
        // SAFETY: two valid pollfds, for the duration of the call; `fd` stays open while
        // the source that owns it lives in `tracker`, `wake_fd` while `wake` does.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), 2, timeout.as_millis() as i32) };
        let woken = polls[1].revents & libc::POLLIN != 0;
        // The barriers this pass answers: those asked before it reads the kernel's events.
        // One asked later is answered by the next pass (its wake-up is still pending).
        let mut answering = Vec::new();
        if woken {
            let mut count = 0u64;
            // SAFETY: an 8-byte read from the eventfd, which resets it.
            unsafe { libc::read(wake_fd, (&mut count as *mut u64).cast(), 8) };
            while let Ok(reply) = barriers.try_recv() {
                answering.push(reply);
            }
        }
        if ready <= 0 {
            // Nothing followed a lone MovedFrom: the file left the directory.
            if let Some((_, from)) = tracker.moving.take() {
                if tracker.files.remove(&from).is_some() {
                    out.push(Change::Delete {
                        name: Bytes::from(from),
                    });
                    if !tracker.flush(&mut out) {
                        return;
                    }
                }
            }
            continue;
        }
        tracker.refill();
        if let Err(e) = tracker.drain_queue(&mut out) {
            if tracker.flush(&mut out) {
                let _ = errors.send(Err(e));
            }
            return;
        }
        if !tracker.flush(&mut out) {
            return;
        }
        // Every event queued before these barriers were asked is handled now.
        let sent = sent.load(Ordering::Relaxed);
        for reply in answering {
            let _ = reply.send(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::materialize::{read_dir_contents, Materializer};
    use proptest::prelude::*;
    use std::io::Write;

    type State = BTreeMap<Vec<u8>, Vec<u8>>;

    /// One operation of an application on its directory.
    #[derive(Debug, Clone)]
    enum Op {
        /// Appends to file `f{0}` (creating it).
        Append(u8, Vec<u8>),
        /// Writes `t{0}` whole, then renames it over `f{1}` (an install, as a manifest is).
        Install(u8, u8, Vec<u8>),
        /// Renames `f{0}` to `f{1}`.
        Rename(u8, u8),
        Delete(u8),
        /// Cuts `f{0}` to at most `{1}` bytes.
        Cut(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let data = proptest::collection::vec(any::<u8>(), 1..300);
        prop_oneof![
            4 => (0u8..4, data.clone()).prop_map(|(f, d)| Op::Append(f, d)),
            1 => (0u8..3, 0u8..4, data).prop_map(|(t, f, d)| Op::Install(t, f, d)),
            1 => (0u8..4, 0u8..4).prop_map(|(a, b)| Op::Rename(a, b)),
            1 => (0u8..4).prop_map(Op::Delete),
            1 => (0u8..4, any::<u8>()).prop_map(|(f, n)| Op::Cut(f, n)),
        ]
    }

    /// Does `op` on `dir` (if it applies), recording the directory's state after each of its
    /// steps in `states`.
    fn perform(dir: &Path, op: &Op, states: &mut Vec<State>) {
        let f = |i: u8| dir.join(format!("f{i}"));
        match op {
            Op::Append(i, data) => {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(f(*i))
                    .unwrap();
                file.write_all(data).unwrap();
            }
            Op::Install(t, i, data) => {
                let temp = dir.join(format!("t{t}"));
                std::fs::write(&temp, data).unwrap();
                states.push(read_dir_contents(dir).unwrap());
                std::fs::rename(&temp, f(*i)).unwrap();
            }
            Op::Rename(a, b) => {
                if f(*a).exists() && a != b {
                    std::fs::rename(f(*a), f(*b)).unwrap();
                }
            }
            Op::Delete(i) => {
                let _ = std::fs::remove_file(f(*i));
            }
            Op::Cut(i, n) => {
                if let Ok(file) = std::fs::OpenOptions::new().write(true).open(f(*i)) {
                    let len = file.metadata().unwrap().len();
                    file.set_len(len.min(u64::from(*n))).unwrap();
                }
            }
        }
        states.push(read_dir_contents(dir).unwrap());
    }

    /// Changes captured until none arrived for a while, or the error that stopped capture.
    fn drain(
        rx: &mpsc::Receiver<Result<Change, CaptureError>>,
    ) -> Result<Vec<Change>, CaptureError> {
        let mut changes = Vec::new();
        while let Ok(change) = rx.recv_timeout(Duration::from_millis(300)) {
            changes.push(change?);
        }
        Ok(changes)
    }

    /// Whether `ops` cut file `f{i}` and later appended to it: if the capture read the file
    /// only after both, at its old length, it cannot tell that from a rewrite in place.
    fn cut_then_regrown(ops: &[Op], i: u8) -> bool {
        ops.iter()
            .position(|op| matches!(op, Op::Cut(f, _) if *f == i))
            .is_some_and(|at| {
                ops[at..]
                    .iter()
                    .any(|op| matches!(op, Op::Append(f, _) if *f == i))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Operations done while the capture runs: the captured changes materialize to the
        /// directory's final state, every prefix of them holds the names the directory held
        /// at some moment, those moments in order, and every file of a prefix holds (the
        /// start of) a content some file really held.
        ///
        /// Before a file was read by name only after checking that no queued event moved the
        /// name on (`Tracker::refill`), about one run in five of 64 cases ended with another
        /// file's bytes under a name that had been renamed over between the event and the
        /// read. 18 runs of 64 cases pass now, 12 of them two at a time.
        #[test]
        fn captured_changes_materialize_to_states_the_directory_passed_through(
            ops in proptest::collection::vec(op(), 1..30)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let followed = dir.path().join("data");
            std::fs::create_dir(&followed).unwrap();
            let (tx, rx) = mpsc::channel();
            let capture = Capture::start(&followed, tx).unwrap();
            let mut states: Vec<State> = vec![State::new()];
            for op in &ops {
                perform(&followed, op, &mut states);
            }
            let changes = match drain(&rx) {
                Ok(changes) => changes,
                Err(CaptureError::RewrittenInPlace { path }) => {
                    // Only the one ambiguity the module docs name is allowed.
                    let name = path.file_name().unwrap().to_string_lossy().to_string();
                    let i: u8 = name.trim_start_matches('f').parse().unwrap();
                    prop_assert!(cut_then_regrown(&ops, i), "{name} taken for a rewrite in place: {ops:?}");
                    return Ok(());
                }
                Err(e) => panic!("capture failed: {e}"),
            };
            drop(capture);

            let copy = dir.path().join("copy");
            let mut materializer = Materializer::open(&copy).unwrap();
            let names = |state: &State| state.keys().cloned().collect::<Vec<_>>();
            let mut at = 0;
            for (k, change) in changes.iter().enumerate() {
                let change = Change::decode(change.encode()).unwrap();
                materializer.apply(&change).unwrap_or_else(|e| panic!("change {k} {change:?}: {e}"));
                let prefix = read_dir_contents(&copy).unwrap();
                let found = (at..states.len()).find(|&i| names(&states[i]) == names(&prefix));
                prop_assert!(
                    found.is_some(),
                    "after change {} ({:?}) the copy holds names {:?}, which the directory never held from state {} on",
                    k, change, names(&prefix), at
                );
                at = found.unwrap_or(at);
                // Bytes: every file of the copy holds what some file of the directory held
                // at some moment, or the start of it (the capture read it while a write was
                // landing): never another file's bytes, nor bytes in another order.
                for (name, content) in &prefix {
                    let held = states.iter().any(|state| {
                        state.values().any(|real| real.starts_with(content))
                    });
                    prop_assert!(
                        held,
                        "after change {} ({:?}) the copy's {} ({} bytes) is no content any file ever held",
                        k, change, String::from_utf8_lossy(name), content.len()
                    );
                }
            }
            materializer.sync().unwrap();
            let got = read_dir_contents(&copy).unwrap();
            if &got != states.last().unwrap() {
                let short = |c: &Change| match c {
                    Change::Append { name, offset, data } => format!("A({},{},{})", String::from_utf8_lossy(name), offset, data.len()),
                    Change::Install { name, data } => format!("I({},{})", String::from_utf8_lossy(name), data.len()),
                    Change::Delete { name } => format!("D({})", String::from_utf8_lossy(name)),
                    Change::Rename { name, to } => format!("R({}->{})", String::from_utf8_lossy(name), String::from_utf8_lossy(to)),
                    Change::SetLen { name, len } => format!("S({},{})", String::from_utf8_lossy(name), len),
                    Change::Swap { renames, deletes } => format!("W({},{})", renames.len(), deletes.len()),
                };
                let ops_short: Vec<String> = ops.iter().map(|op| match op {
                    Op::Append(f, d) => format!("a(f{f},{})", d.len()),
                    Op::Install(t, f, d) => format!("i(t{t}->f{f},{})", d.len()),
                    Op::Rename(a, b) => format!("r(f{a}->f{b})"),
                    Op::Delete(f) => format!("d(f{f})"),
                    Op::Cut(f, n) => format!("c(f{f},{n})"),
                }).collect();
                eprintln!("OPS {}", ops_short.join(" "));
                eprintln!("CHANGES {}", changes.iter().map(short).collect::<Vec<_>>().join(" "));
                for (name, content) in states.last().unwrap() {
                    let other = got.get(name);
                    if other != Some(content) {
                        let first_diff = other.map(|o| o.iter().zip(content).position(|(a, b)| a != b));
                        eprintln!("DIFF {} real {} copy {:?} first diff {:?}", String::from_utf8_lossy(name), content.len(), other.map(Vec::len), first_diff);
                    }
                }
            }
            prop_assert_eq!(&got, states.last().unwrap());
        }
    }

    /// A barrier answers only once every change made before it was asked has been sent: the
    /// changes received by then hold every byte written.
    #[tokio::test]
    async fn a_barrier_covers_every_write_made_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let capture = Capture::start(dir.path(), tx).unwrap();
        let mut written = Vec::new();
        let mut received = Vec::new();
        for round in 0..50u32 {
            written.extend_from_slice(&crate::follow::tests::append_set(dir.path(), round));
            let count = capture.barrier().await.expect("capture runs");
            while (received.len() as u64) < count {
                received.push(
                    rx.try_recv()
                        .expect("a change the barrier counted was sent"),
                );
            }
            let captured: Vec<u8> = received
                .iter()
                .flat_map(|change| match change {
                    Ok(Change::Append { data, .. }) => data.to_vec(),
                    _ => Vec::new(),
                })
                .collect();
            assert_eq!(
                captured, written,
                "round {round}: the barrier came before the write was captured"
            );
        }
    }

    /// A growth far larger than the backlog's bound is read and sent a piece at a time: while
    /// nobody takes what was sent, capture holds back once the backlog is full; as the pieces
    /// are taken, the rest follows, in order, byte for byte. A capture waiting for room stops
    /// when asked.
    #[test]
    fn a_long_growth_is_sent_in_pieces_within_the_backlog_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appendonly.aof");
        std::fs::write(&path, b"head").unwrap();
        let (tx, rx) = mpsc::channel();
        let capture = Capture::start(dir.path(), tx).unwrap();
        let backlog = capture.backlog();
        let len = 3 * BACKLOG_BYTES_MAX as usize;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let grow = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(&data)
                .unwrap()
        };
        grow();
        let append = |change: Result<Change, CaptureError>| match change {
            Ok(Change::Append { offset, data, .. }) => (offset, data),
            other => panic!("not an append: {other:?}"),
        };
        // Nothing taken: capture stops once the backlog is full.
        let mut got = Vec::new();
        while let Ok(change) = rx.recv_timeout(Duration::from_millis(500)) {
            got.push(append(change));
        }
        let held: u64 = got.iter().map(|(_, data)| data.len() as u64).sum();
        assert!(
            held > 0 && held <= BACKLOG_BYTES_MAX + READ_PIECE,
            "{held} bytes sent with nothing taken"
        );
        assert_eq!(backlog.bytes(), held);
        // Taken as received: the rest follows.
        backlog.take(held);
        let mut received: u64 = held;
        while received < len as u64 {
            let (offset, piece) = append(rx.recv_timeout(Duration::from_secs(10)).unwrap());
            assert!(piece.len() as u64 <= READ_PIECE);
            received += piece.len() as u64;
            backlog.take(piece.len() as u64);
            got.push((offset, piece));
        }
        let mut at = 4u64;
        let mut whole = Vec::with_capacity(len);
        for (offset, piece) in &got {
            assert_eq!(*offset, at);
            at += piece.len() as u64;
            whole.extend_from_slice(piece);
        }
        assert!(whole == data, "the pieces are not the growth");
        // Full again and waiting: a stop is not held up by the wait.
        grow();
        while rx.recv_timeout(Duration::from_millis(500)).is_ok() {}
        assert!(backlog.bytes() > 0);
        let asked = std::time::Instant::now();
        drop(capture);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
    }

    /// A file renamed into the directory from outside (as Redis's rewritten base file is),
    /// far larger than the backlog's bound, is read and sent a piece at a time like a long
    /// growth, never whole: built under the part name and renamed over its name by the last
    /// change, so that every prefix of the changes holds the old file or the new one whole.
    #[test]
    fn a_long_install_is_sent_in_pieces_within_the_backlog_bound_and_lands_whole() {
        use crate::follow::change::is_staged;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("aof");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("base"), b"the old base").unwrap();
        let copy = root.path().join("copy");
        let mut materializer = Materializer::open(&copy).unwrap();
        materializer
            .apply(&Change::Install {
                name: Bytes::from_static(b"base"),
                data: Bytes::from_static(b"the old base"),
            })
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let capture = Capture::start(&dir, tx).unwrap();
        let backlog = capture.backlog();
        let len = 2 * BACKLOG_BYTES_MAX as usize + 12_345;
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        std::fs::write(root.path().join("rewritten"), &data).unwrap();
        std::fs::rename(root.path().join("rewritten"), dir.join("base")).unwrap();

        // Nothing taken: capture holds back once the backlog is full.
        let mut got = Vec::new();
        while let Ok(change) = rx.recv_timeout(Duration::from_millis(500)) {
            got.push(change.unwrap());
        }
        let held: u64 = got.iter().map(|c| c.data_len() as u64).sum();
        assert!(
            held > 0 && held <= BACKLOG_BYTES_MAX + READ_PIECE,
            "{held} bytes sent with nothing taken"
        );
        assert_eq!(backlog.bytes(), held);
        backlog.take(held);
        let visible = |copy: &Path| -> State {
            read_dir_contents(copy)
                .unwrap()
                .into_iter()
                .filter(|(name, _)| !is_staged(name))
                .collect()
        };
        let old: State = [(b"base".to_vec(), b"the old base".to_vec())].into();
        let mut applied = 0;
        loop {
            for change in &got[applied..] {
                assert!(change.data_len() as u64 <= READ_PIECE, "{change:?}");
                materializer
                    .apply(&Change::decode(change.encode()).unwrap())
                    .unwrap();
                if !matches!(change, Change::Rename { .. }) {
                    assert_eq!(visible(&copy), old, "a prefix holds part of the new file");
                }
            }
            applied = got.len();
            if matches!(got.last(), Some(Change::Rename { .. })) {
                break;
            }
            let change = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
            backlog.take(change.data_len() as u64);
            got.push(change);
        }
        assert!(
            matches!(&got[0], Change::Install { name, .. } if is_staged(name)),
            "{:?}",
            got[0]
        );
        assert!(got.len() > 2 * (BACKLOG_BYTES_MAX / READ_PIECE) as usize);
        materializer.sync().unwrap();
        let new: State = [(b"base".to_vec(), data)].into();
        assert!(
            read_dir_contents(&copy).unwrap() == new,
            "the new file, whole"
        );
        drop(capture);
    }

    /// A rescan that ships a long growth and a long replaced file sends them on a piece at a
    /// time (the sink takes each before the next is read), and what it ships still puts the
    /// directory in place with its one Swap, last.
    #[test]
    fn a_rescan_ships_long_files_a_piece_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("log"), b"head\n").unwrap();
        std::fs::write(dir.join("base"), b"old base").unwrap();
        let mut tracker = Tracker::scan(&dir).unwrap();
        let copy = root.path().join("copy");
        let mut materializer = Materializer::open(&copy).unwrap();
        for (name, data) in read_dir_contents(&dir).unwrap() {
            materializer
                .apply(&Change::Install {
                    name: Bytes::from(name),
                    data: Bytes::from(data),
                })
                .unwrap();
        }
        let long = |seed: usize| -> Vec<u8> {
            (0..3 * READ_PIECE as usize + 99)
                .map(|i| ((i + seed) % 241) as u8)
                .collect()
        };
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("log"))
            .unwrap()
            .write_all(&long(1))
            .unwrap();
        std::fs::write(root.path().join("new"), long(2)).unwrap();
        std::fs::rename(root.path().join("new"), dir.join("base")).unwrap();

        let shipped = Arc::new(Mutex::new((Vec::new(), 0usize)));
        let sink = Arc::clone(&shipped);
        tracker.sink = Some(Sink(Box::new(move |out: &mut Vec<Change>| {
            let mut sink = sink.lock().unwrap();
            let held: usize = out.iter().map(Change::data_len).sum();
            sink.1 = sink.1.max(held);
            sink.0.append(out);
            true
        })));
        let mut out = Vec::new();
        tracker.queue.push_back(Event::Overflow);
        tracker.drain_queue(&mut out).unwrap();
        let (mut changes, most) = std::mem::take(&mut *shipped.lock().unwrap());
        let left: usize = out.iter().map(Change::data_len).sum();
        assert!(
            most.max(left) <= READ_PIECE as usize,
            "{} bytes were held at once",
            most.max(left)
        );
        changes.append(&mut out);
        assert!(matches!(changes.last(), Some(Change::Swap { .. })));
        for change in &changes {
            materializer.apply(change).unwrap();
        }
        materializer.sync().unwrap();
        assert!(read_dir_contents(&copy).unwrap() == read_dir_contents(&dir).unwrap());
    }

    /// A file cut back and grown again past what was captured, while capture waited for
    /// room between two pieces of a long growth, is found cut: not shipped as appends.
    #[test]
    fn a_cut_while_capture_waits_between_pieces_is_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appendonly.aof");
        std::fs::write(&path, b"head").unwrap();
        let (tx, rx) = mpsc::channel();
        let capture = Capture::start(dir.path(), tx).unwrap();
        capture.refuse_cuts();
        let backlog = capture.backlog();
        let len = 2 * BACKLOG_BYTES_MAX as usize;
        let append = |byte: u8| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(&vec![byte; len])
                .unwrap()
        };
        append(1);
        // Nothing taken: capture waits for room, partway through.
        while rx.recv_timeout(Duration::from_millis(500)).is_ok() {}
        assert!(backlog.bytes() > 0);
        // Cut back, and grown again past where capture had got to, with other bytes.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4)
            .unwrap();
        append(2);
        backlog.take(backlog.bytes());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the cut was never reported"
            );
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Ok(change)) => {
                    if let Change::Append { data, .. } = &change {
                        assert!(
                            !data.contains(&2),
                            "the regrown bytes were shipped as appends"
                        );
                    }
                    backlog.take(change.data_len() as u64);
                }
                Ok(Err(CaptureError::Cut { .. } | CaptureError::RewrittenInPlace { .. })) => break,
                Ok(Err(other)) => panic!("another error: {other}"),
                Err(_) => {}
            }
        }
    }

    /// A file rewritten in place is refused, with its name.
    #[test]
    fn a_rewrite_in_place_stops_the_capture_with_the_files_name() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let _capture = Capture::start(dir.path(), tx).unwrap();
        let path = dir.path().join("pages.db");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut changes = Vec::new();
        while let Ok(Ok(change)) = rx.recv_timeout(Duration::from_millis(300)) {
            changes.push(change);
        }
        assert!(!changes.is_empty());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_at(b"XY", 3).unwrap();
        let error = loop {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => break error,
                Err(e) => panic!("no error: {e}"),
            }
        };
        assert!(
            matches!(&error, CaptureError::RewrittenInPlace { path: p } if p == &path),
            "{error}"
        );
        assert!(error.to_string().contains("pages.db"), "{error}");
    }

    /// Cuts: shipped whole (as an application dropping a torn tail at start-up makes them)
    /// until cuts are refused; then a cut, or a cut followed by more writes, stops the
    /// capture with the file's name and nothing of it is shipped.
    #[test]
    fn a_cut_is_shipped_until_cuts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let capture = Capture::start(dir.path(), tx).unwrap();
        let path = dir.path().join("log.aof");
        let drain = |rx: &mpsc::Receiver<Result<Change, CaptureError>>| {
            let mut changes = Vec::new();
            while let Ok(change) = rx.recv_timeout(Duration::from_millis(300)) {
                changes.push(change);
            }
            changes
        };
        std::fs::write(&path, b"SET a 1\nSET b 2\nSET c").unwrap();
        assert!(drain(&rx).iter().all(Result::is_ok));
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(16).unwrap();
        let changes = drain(&rx);
        assert!(
            changes.iter().any(|c| matches!(c, Ok(Change::Install { data, .. }) if &data[..] == b"SET a 1\nSET b 2\n")),
            "the torn tail's cut is shipped whole: {changes:?}"
        );
        capture.refuse_cuts();
        // Cut back and written again behind the application's back: refused.
        file.set_len(8).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"SET d 4\nSET e 5\n")
            .unwrap();
        let changes = drain(&rx);
        let error = changes
            .iter()
            .find_map(|c| c.as_ref().err())
            .unwrap_or_else(|| panic!("no error: {changes:?}"));
        assert!(
            matches!(error, CaptureError::Cut { path: p, captured: 16, .. } if p == &path),
            "{error}"
        );
        assert!(error.to_string().contains("log.aof"), "{error}");
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, Ok(Change::Install { .. }))),
            "a refused cut was shipped: {changes:?}"
        );
    }

    /// After lost events (a queue overflow), a file found cut back is refused the same way.
    #[test]
    fn a_rescan_refuses_a_cut_too() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("log.aof"), b"SET a 1\nSET b 2\n").unwrap();
        let mut tracker = Tracker::scan(dir.path()).unwrap();
        tracker.refuse_cuts.store(true, Ordering::Relaxed);
        std::fs::write(dir.path().join("other"), b"new").unwrap();
        let mut out = Vec::new();
        tracker.rescan(&mut out).unwrap();
        assert!(
            matches!(&out[..], [Change::Install { name: staged, .. }, Change::Swap { renames, deletes }]
                if renames[..] == [(staged.clone(), Bytes::from_static(b"other"))] && deletes.is_empty()),
            "{out:?}"
        );
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("log.aof"))
            .unwrap();
        file.set_len(4).unwrap();
        let error = tracker.rescan(&mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                error,
                CaptureError::Cut {
                    captured: 16,
                    now: 4,
                    ..
                }
            ),
            "{error}"
        );
    }

    /// After lost events, every committed prefix of what the rescan ships leaves a copy that
    /// holds the directory from before them (the same names, files at least as long) or the
    /// one after them, never a mix: here a Redis-like rewrite (a new base and incremental
    /// file, the manifest replaced, the old files deleted), an append, and a file replaced
    /// under its own name, all made while no event was read.
    #[test]
    fn every_prefix_of_a_rescan_is_the_directory_before_or_after_the_lost_events() {
        use crate::follow::change::is_staged;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("aof");
        std::fs::create_dir(&dir).unwrap();
        let put = |name: &str, data: &[u8]| std::fs::write(dir.join(name), data).unwrap();
        put("manifest", b"base.1 incr.1");
        put("base.1", b"REDIS base one");
        put("incr.1", b"SET a 1\n");
        put("other", b"kept as is");
        put("conf", b"old settings");
        let before = read_dir_contents(&dir).unwrap();
        let mut tracker = Tracker::scan(&dir).unwrap();
        tracker.refuse_cuts.store(true, Ordering::Relaxed);

        // The copy a backup holds of the directory before the lost events.
        let copy = root.path().join("copy");
        let mut materializer = Materializer::open(&copy).unwrap();
        for (name, data) in &before {
            materializer
                .apply(&Change::Install {
                    name: Bytes::copy_from_slice(name),
                    data: Bytes::copy_from_slice(data),
                })
                .unwrap();
        }

        // What the application does meanwhile.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("incr.1"))
            .unwrap()
            .write_all(b"SET b 2\n")
            .unwrap();
        put("base.2", b"REDIS base two, with a and b");
        put("incr.2", b"SET c 3\n");
        put("manifest.tmp", b"base.2 incr.2");
        std::fs::rename(dir.join("manifest.tmp"), dir.join("manifest")).unwrap();
        std::fs::remove_file(dir.join("base.1")).unwrap();
        std::fs::remove_file(dir.join("incr.1")).unwrap();
        put("conf.tmp", b"new settings");
        std::fs::rename(dir.join("conf.tmp"), dir.join("conf")).unwrap();
        let after = read_dir_contents(&dir).unwrap();

        let mut out = Vec::new();
        tracker.rescan(&mut out).unwrap();
        assert!(
            matches!(out.last(), Some(Change::Swap { .. })),
            "a rescan that replaces files ends with one swap: {out:?}"
        );
        assert_eq!(
            out.iter()
                .filter(|c| matches!(c, Change::Swap { .. }))
                .count(),
            1
        );
        let visible = |copy: &Path| -> State {
            read_dir_contents(copy)
                .unwrap()
                .into_iter()
                .filter(|(name, _)| !is_staged(name))
                .collect()
        };
        let last = out.len() - 1;
        for (k, change) in out.iter().enumerate() {
            let change = Change::decode(change.encode()).unwrap();
            materializer.apply(&change).unwrap();
            let seen = visible(&copy);
            if k == last {
                assert_eq!(seen, after, "after the whole rescan");
            } else {
                assert_eq!(
                    seen.keys().collect::<Vec<_>>(),
                    before.keys().collect::<Vec<_>>(),
                    "after change {k} ({change:?}) the names are a mix"
                );
                for (name, content) in &seen {
                    assert!(
                        content.starts_with(&before[name]),
                        "after change {k}, {} lost bytes it held",
                        String::from_utf8_lossy(name)
                    );
                }
            }
        }
        materializer.sync().unwrap();
        assert_eq!(
            read_dir_contents(&copy).unwrap(),
            after,
            "no staged file left"
        );

        // The tracker took the new state: a second rescan finds nothing to ship.
        let mut again = Vec::new();
        tracker.rescan(&mut again).unwrap();
        assert!(again.is_empty(), "{again:?}");
    }

    /// A rename whose second event is among the lost ones: the old name is removed by the
    /// rescan's Swap, together with the new name's arrival, not by a deletion before it (a
    /// prefix holding neither name).
    #[test]
    fn a_rename_cut_by_an_overflow_is_shipped_whole_by_the_rescan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data"), b"all the data").unwrap();
        std::fs::write(dir.path().join("conf"), b"settings").unwrap();
        let mut tracker = Tracker::scan(dir.path()).unwrap();
        std::fs::rename(dir.path().join("data"), dir.path().join("data.1")).unwrap();
        tracker
            .queue
            .extend([Event::MovedFrom(7, b"data".to_vec()), Event::Overflow]);
        let mut out = Vec::new();
        tracker.drain_queue(&mut out).unwrap();
        assert!(
            matches!(&out[..], [Change::Install { name: staged, data }, Change::Swap { renames, deletes }]
                if &data[..] == b"all the data"
                    && renames[..] == [(staged.clone(), Bytes::from_static(b"data.1"))]
                    && deletes[..] == [Bytes::from_static(b"data")]),
            "{out:?}"
        );
    }

    /// The events behind an overflow happened before the rescan's scan, which holds them:
    /// they are not played again over it. Here a log rotated (renamed to `log.1`, a new
    /// `log` created) behind the overflow: playing its rename again would move the new
    /// `log` over `log.1` on every copy, and later appends to `log.1` would be taken for
    /// another file's and never shipped.
    #[test]
    fn events_behind_an_overflow_are_not_played_again_over_the_rescan() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("log"), b"old entries\n").unwrap();
        let mut tracker = Tracker::scan(&dir).unwrap();
        let copy = root.path().join("copy");
        let mut materializer = Materializer::open(&copy).unwrap();
        materializer
            .apply(&Change::Install {
                name: Bytes::from_static(b"log"),
                data: Bytes::from_static(b"old entries\n"),
            })
            .unwrap();

        std::fs::rename(dir.join("log"), dir.join("log.1")).unwrap();
        std::fs::write(dir.join("log"), b"new entries\n").unwrap();
        tracker.queue.extend([
            Event::Overflow,
            Event::MovedFrom(3, b"log".to_vec()),
            Event::MovedTo(3, b"log.1".to_vec()),
            Event::Created(b"log".to_vec()),
            Event::Modified(b"log".to_vec()),
        ]);
        let mut out = Vec::new();
        tracker.drain_queue(&mut out).unwrap();
        for change in &out {
            materializer.apply(change).unwrap();
        }
        assert_eq!(
            read_dir_contents(&copy).unwrap(),
            read_dir_contents(&dir).unwrap(),
            "{out:?}"
        );

        // The rotated file grows: shipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("log.1"))
            .unwrap()
            .write_all(b"late entry\n")
            .unwrap();
        tracker.queue.push_back(Event::Modified(b"log.1".to_vec()));
        let mut more = Vec::new();
        tracker.drain_queue(&mut more).unwrap();
        for change in &more {
            materializer.apply(change).unwrap();
        }
        assert_eq!(
            read_dir_contents(&copy).unwrap(),
            read_dir_contents(&dir).unwrap(),
            "{more:?}"
        );
    }

    /// Gives `tracker` a sink that keeps what it ships and runs `between` at its first call
    /// (after the first piece, while capture waits for room: between two pieces). Returns
    /// what was shipped (taken with [`Shipped::with`]) and how many calls the sink had.
    fn sink_between_pieces(
        tracker: &mut Tracker,
        between: impl FnOnce() + Send + 'static,
    ) -> Shipped {
        let shipped = Shipped::default();
        let (sink, calls) = (Arc::clone(&shipped.changes), Arc::clone(&shipped.calls));
        let mut between = Some(between);
        tracker.sink = Some(Sink(Box::new(move |out: &mut Vec<Change>| {
            calls.fetch_add(1, Ordering::SeqCst);
            if let Some(between) = between.take() {
                between();
            }
            sink.lock().unwrap().append(out);
            true
        })));
        shipped
    }

    /// What a sink of [`sink_between_pieces`] shipped, and its calls.
    #[derive(Default)]
    struct Shipped {
        changes: Arc<Mutex<Vec<Change>>>,
        calls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Shipped {
        /// Every change in order: what the sink shipped, then `rest` (left in `out`).
        fn with(&self, rest: &mut Vec<Change>) -> Vec<Change> {
            let mut changes = std::mem::take(&mut *self.changes.lock().unwrap());
            changes.append(rest);
            changes
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    /// A name that changes while the rescan reads the files makes it scan again: what it
    /// ships is one moment of the directory (here a new manifest and its base file, made
    /// during the first scan, are both in the second). Names that never stop changing stop
    /// the capture rather than ship a mix.
    #[test]
    fn a_rescan_scans_again_when_names_change_under_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("manifest"), b"base.1").unwrap();
        std::fs::write(dir.join("base.1"), b"one").unwrap();
        let mut tracker = Tracker::scan(&dir).unwrap();
        // The source: its second call is the one right after the first scan; the
        // application rewrote its files during that scan.
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let d = dir.clone();
        tracker.source = Some(EventSource(Box::new(move || {
            match seen.fetch_add(1, Ordering::SeqCst) {
                1 => {
                    std::fs::write(d.join("base.2"), b"two").unwrap();
                    std::fs::write(d.join("m.tmp"), b"base.2").unwrap();
                    std::fs::rename(d.join("m.tmp"), d.join("manifest")).unwrap();
                    std::fs::remove_file(d.join("base.1")).unwrap();
                    vec![
                        Event::Created(b"base.2".to_vec()),
                        Event::Modified(b"base.2".to_vec()),
                        Event::Created(b"m.tmp".to_vec()),
                        Event::MovedFrom(9, b"m.tmp".to_vec()),
                        Event::MovedTo(9, b"manifest".to_vec()),
                        Event::Deleted(b"base.1".to_vec()),
                    ]
                }
                _ => Vec::new(),
            }
        })));
        let mut out = Vec::new();
        tracker.rescan(&mut out).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4, "scanned twice");
        let copy = root.path().join("copy");
        let mut materializer = Materializer::open(&copy).unwrap();
        for (name, data) in [("manifest", &b"base.1"[..]), ("base.1", b"one")] {
            materializer
                .apply(&Change::Install {
                    name: Bytes::from(name),
                    data: Bytes::copy_from_slice(data),
                })
                .unwrap();
        }
        for change in &out {
            materializer.apply(change).unwrap();
        }
        assert_eq!(
            read_dir_contents(&copy).unwrap(),
            read_dir_contents(&dir).unwrap()
        );

        // Names that change under every scan.
        tracker.source = Some(EventSource(Box::new(|| {
            vec![Event::Created(b"x".to_vec())]
        })));
        let error = tracker.rescan(&mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                error,
                CaptureError::RescanUnsettled {
                    tries: RESCAN_TRIES,
                    ..
                }
            ),
            "{error}"
        );
    }

    fn copy_of(dir: &Path, copy: &Path) -> Materializer {
        let mut materializer = Materializer::open(copy).unwrap();
        for (name, data) in read_dir_contents(dir).unwrap() {
            materializer
                .apply(&Change::Install {
                    name: Bytes::from(name),
                    data: Bytes::from(data),
                })
                .unwrap();
        }
        materializer
    }

    /// A file installed from outside, cut back and written again (longer, other bytes) while
    /// capture waits in the sink between two pieces: the copy must not end up with the old
    /// file's first piece followed by the new file's rest (a content no file ever held).
    #[test]
    fn an_install_cut_and_regrown_between_its_pieces_is_not_shipped_mixed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let mut tracker = Tracker::scan(&dir).unwrap();
        let copy = root.path().join("copy");
        let mut materializer = copy_of(&dir, &copy);
        let len = 3 * READ_PIECE as usize + 99;
        std::fs::write(root.path().join("new"), vec![1u8; len]).unwrap();
        std::fs::rename(root.path().join("new"), dir.join("base")).unwrap();

        let path = dir.join("base");
        // While the sink waits for room: cut back and written again, longer.
        let shipped = sink_between_pieces(&mut tracker, move || {
            std::fs::write(&path, vec![2u8; len + 10]).unwrap();
        });
        let mut out = Vec::new();
        tracker.queue.push_back(Event::MovedTo(1, b"base".to_vec()));
        tracker.drain_queue(&mut out).unwrap();
        // The events of the cut and the writes, handled after.
        tracker.queue.push_back(Event::Modified(b"base".to_vec()));
        tracker.queue.push_back(Event::Modified(b"base".to_vec()));
        let result = tracker.drain_queue(&mut out);
        let changes = shipped.with(&mut out);
        for change in &changes {
            materializer.apply(change).unwrap();
        }
        let got = read_dir_contents(&copy).unwrap();
        let want = read_dir_contents(&dir).unwrap();
        let base = &got[&b"base"[..]];
        let ones = base.iter().filter(|b| **b == 1).count();
        assert!(
            got == want,
            "result {result:?}; copy's base: {} bytes, {ones} of them from the old file; the directory's: {} bytes, all new",
            base.len(),
            want[&b"base"[..]].len()
        );
    }

    /// The same during a rescan's growth, with cuts refused (the application serving): a
    /// cut must stop the capture, not be shipped as appends of the new bytes.
    #[test]
    fn a_rescans_growth_cut_and_regrown_between_its_pieces_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("log"), b"head\n").unwrap();
        let mut tracker = Tracker::scan(&dir).unwrap();
        tracker.refuse_cuts.store(true, Ordering::Relaxed);
        let copy = root.path().join("copy");
        let mut materializer = copy_of(&dir, &copy);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("log"))
            .unwrap()
            .write_all(&vec![1u8; 3 * READ_PIECE as usize])
            .unwrap();

        let path = dir.join("log");
        // Cut back behind the application's back, and written again, longer.
        let shipped = sink_between_pieces(&mut tracker, move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(5).unwrap();
            drop(file);
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(&vec![2u8; 4 * READ_PIECE as usize])
                .unwrap();
        });
        let mut out = Vec::new();
        tracker.queue.push_back(Event::Overflow);
        let first = tracker.drain_queue(&mut out);
        tracker.queue.push_back(Event::Modified(b"log".to_vec()));
        let second = tracker.drain_queue(&mut out);
        let changes = shipped.with(&mut out);
        for change in &changes {
            materializer.apply(change).unwrap();
        }
        let got = read_dir_contents(&copy).unwrap();
        let want = read_dir_contents(&dir).unwrap();
        let log = &got[&b"log"[..]];
        assert!(
            matches!(first, Err(CaptureError::Cut { .. }))
                || matches!(second, Err(CaptureError::Cut { .. }))
                || got == want,
            "the cut was not refused ({first:?}, {second:?}); the copy's log: {} bytes, {} from before the cut, {} written after; the directory's: {} bytes; equal: {}",
            log.len(),
            log.iter().filter(|b| **b == 1).count(),
            log.iter().filter(|b| **b == 2).count(),
            want[&b"log"[..]].len(),
            got == want
        );
    }

    /// A rescan decides what it stages from one scan, then opens each file when its turn
    /// comes: a file replaced meanwhile (another inode under its name) is not shipped as
    /// the scan's file, and the rescan scans again. Here a manifest is replaced by one that
    /// names a file created after the scan: shipped in the scan's Swap, it would commit a
    /// manifest naming a file the copy does not hold.
    #[test]
    fn a_rescan_whose_staged_file_is_replaced_while_another_ships_scans_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let mut tracker = Tracker::scan(&dir).unwrap();
        let copy = root.path().join("copy");
        let mut materializer = copy_of(&dir, &copy);
        std::fs::write(dir.join("a"), vec![1u8; 2 * READ_PIECE as usize + 1]).unwrap();
        std::fs::write(dir.join("m"), b"names a").unwrap();

        let (temp, manifest, new) = (root.path().join("m.new"), dir.join("m"), dir.join("c"));
        // Between two pieces of "a": a new file, then a manifest naming it renamed over the
        // old one, as Redis installs a rewrite.
        let shipped = sink_between_pieces(&mut tracker, move || {
            std::fs::write(&new, b"new base").unwrap();
            std::fs::write(&temp, b"names c").unwrap();
            std::fs::rename(&temp, &manifest).unwrap();
        });
        let mut out = Vec::new();
        tracker.queue.push_back(Event::Overflow);
        tracker.drain_queue(&mut out).unwrap();
        let changes = shipped.with(&mut out);
        for (i, change) in changes.iter().enumerate() {
            materializer.apply(change).unwrap();
            let names_c = std::fs::read(copy.join("m")).is_ok_and(|m| m == b"names c");
            assert!(
                !names_c || copy.join("c").exists(),
                "after change {i} of {} the copy's manifest names a file it lacks",
                changes.len()
            );
        }
        assert!(shipped.calls() > 1);
        assert_eq!(
            read_dir_contents(&copy).unwrap(),
            read_dir_contents(&dir).unwrap()
        );
    }

    /// [`a_rescan_of_more_new_files_than_descriptors_allowed_is_shipped`], run in a test
    /// process of its own, where lowering RLIMIT_NOFILE touches no other test.
    #[test]
    fn the_descriptor_limit_test_passes_in_a_process_of_its_own() {
        let name = "follow::capture::tests::a_rescan_of_more_new_files_than_descriptors_allowed_is_shipped";
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", name, "--test-threads=1"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A rescan holds no file open beyond the one it reads: a directory with more changed
    /// files than the process may hold open is rescanned all the same. Ignored because it
    /// lowers RLIMIT_NOFILE for the whole test process; it runs in a process of its own
    /// ([`the_descriptor_limit_test_passes_in_a_process_of_its_own`]), or alone by hand:
    /// `cargo test --lib a_rescan_of_more_new_files -- --ignored`.
    #[test]
    #[ignore]
    fn a_rescan_of_more_new_files_than_descriptors_allowed_is_shipped() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let mut tracker = Tracker::scan(&dir).unwrap();
        for i in 0..300 {
            std::fs::write(dir.join(format!("f{i}")), b"x").unwrap();
        }
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid pointers to rlimit structs.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) };
        let low = libc::rlimit {
            rlim_cur: 256,
            rlim_max: old.rlim_max,
        };
        // SAFETY: a valid rlimit, read by the call only.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) };
        let mut out = Vec::new();
        tracker.queue.push_back(Event::Overflow);
        let result = tracker.drain_queue(&mut out);
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
        assert!(result.is_ok(), "300 new files, 256 descriptors: {result:?}");
        assert!(matches!(out.last(), Some(Change::Swap { .. })));
    }

    /// A file the rescan finds grown (or unchanged) while its inode was unknown: the rescan
    /// learns the inode, so that a later replacement by rename during
    /// lost events is staged, not taken for a cut.
    #[test]
    fn a_rescan_learns_the_inode_of_a_grown_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let mut tracker = Tracker::scan(&dir).unwrap();
        // Created, inode not known yet (as `Event::Created` leaves it when a later event
        // moves the name on).
        std::fs::write(dir.join("a"), b"first bytes").unwrap();
        tracker.files.insert(b"a".to_vec(), Tracked::of(&[], 0));
        tracker.refuse_cuts.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        tracker.queue.push_back(Event::Overflow);
        tracker.drain_queue(&mut out).unwrap();
        let ino = tracker.files[&b"a"[..]].ino;
        // Replaced by rename, with the events lost again.
        std::fs::write(dir.join("a.tmp"), b"another file").unwrap();
        std::fs::rename(dir.join("a.tmp"), dir.join("a")).unwrap();
        tracker.queue.push_back(Event::Overflow);
        let second = tracker.drain_queue(&mut out);
        assert!(
            ino != 0 && second.is_ok(),
            "inode after the rescan: {ino}; the second rescan: {second:?}"
        );
    }
}
