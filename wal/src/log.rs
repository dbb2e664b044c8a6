//! The log: a directory of segments, opened with recovery, appended to, synced, truncated at
//! either end, and read through [`Reader`]s that share its index.
//!
//! [`Wal`] is single-threaded (`&mut self`) and never syncs on its own: [`Wal::append`]
//! writes, [`Wal::sync`] makes everything written durable. The group-commit thread in
//! [`crate::writer`] decides when to sync; this type only keeps the files and the LSN
//! pointers honest:
//!
//! ```text
//! first_lsn - 1 ≤ durable_lsn ≤ last_lsn
//! ```
//!
//! Recovery follows the table in FORMAT.md ("Recovery at open"): one arm per row in
//! `open_segment` (which finds) and `open_verify` (which decides under the [`Damage`]
//! policy), both before [`Wal::open`] changes anything, then `open_cut`; one test per row and
//! per policy in `wal/tests/recovery.rs`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Corruption, Error, IoOp, Result};
use crate::format::{
    decode_record, decode_segment_header, encode_record, encode_segment_header, HeaderError,
    RecordKind, VerifiedRecords, RECORD_HEADER_LEN, RECORD_PAYLOAD_LEN_MAX, SEGMENT_HEADER_LEN,
};
use crate::fs;
use crate::reader::Reader;
use crate::segment::{self, EpochStart, INDEX_INTERVAL_BYTES};
use crate::types::{Epoch, Lsn};

/// When the group-commit writer makes appends durable. The [`Wal`] itself only syncs when
/// told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every batch is fdatasync'd before its appenders are told it is durable.
    Always,
    /// Batches are written at once and fdatasync'd at most once per sync interval; the
    /// durable LSN trails the written one by up to that interval.
    Batch,
}

/// What [`Wal::open`] may cut when it finds a damaged record (FORMAT.md, "Recovery at
/// open"). Damage that is not one damaged record (a gap between segments, a foreign file, a
/// segment of another magic or version, a damaged header of the first segment) is refused
/// under every policy, and nothing is changed when `open` returns an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Damage {
    /// Cut a provably torn tail (the file ends inside the last record); refuse anything else:
    /// a suspect tail gives `Error::SuspectTail { path, offset, lsn }`, other damage
    /// `Error::Corrupt`. Nothing is cut when an error is returned.
    CutTornOnly,
    /// Cut a torn or suspect tail of the last segment, refuse other damage (the default).
    #[default]
    CutTail,
    /// Cut the log just before the first damaged record found anywhere (in a sealed segment,
    /// in the middle of a segment, a suspect tail): that segment is cut at the record's offset
    /// and every later segment deleted, each step fsynced, and the cut is reported in
    /// [`Recovery::cut`]. A segment after the first whose header is damaged is the cut point
    /// itself: it is deleted with every later one (a file without a header is not a
    /// segment). Segments after the cut point are not verified, only checked to be ours
    /// (our magic and version): whatever they hold follows a record the log no longer has.
    ///
    /// # Correctness
    /// The cut may take records this node acknowledged: the caller stores that it cannot
    /// vouch for its log (the learner flag of `crate::meta::Meta`) before opening with this
    /// policy, typically after an open under [`Damage::CutTornOnly`] returned
    /// `Error::SuspectTail` or `Error::Corrupt` and changed nothing.
    CutAll,
}

/// How to open a log.
#[derive(Debug, Clone)]
pub struct Options {
    /// A segment is rolled when the next record would take it past this many bytes.
    pub segment_bytes_max: u64,
    /// The LSN the first segment starts at when the directory holds no log (after a
    /// snapshot was installed, this is the snapshot's LSN + 1).
    pub start_lsn: Lsn,
    /// What recovery at open may cut.
    pub damage: Damage,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes_max: 64 << 20,
            start_lsn: Lsn(1),
            damage: Damage::default(),
        }
    }
}

/// What recovery at open found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// The damaged tail that was cut, if any: provably torn, or suspect (see
    /// [`TornTail::provably_torn`]).
    pub torn: Option<TornTail>,
    /// Under [`Damage::CutAll`], the cut made at the first damaged record that was not a
    /// provably torn tail (a suspect tail is reported here and in `torn`).
    pub cut: Option<DamageCut>,
    /// Stale temp files (incomplete installs) that were removed.
    pub removed_tmp: Vec<PathBuf>,
    /// A fresh segment was created because the directory held no log.
    pub created: bool,
}

/// Where [`Damage::CutAll`] cut the log: everything from `lsn` on is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageCut {
    /// The segment holding the first damaged record; it was cut at `offset`, or deleted when
    /// its header was the damage (`offset` 0).
    pub path: PathBuf,
    pub offset: u64,
    /// The LSN of the first record cut (the damaged one).
    pub lsn: Lsn,
    pub reason: Corruption,
    /// How many records from `lsn` on (the damaged one included) the log held, as far as the
    /// intact records found after the damage tell: the highest LSN among them, minus `lsn`,
    /// plus one. 0 when none was found (a damaged tail: whether it held a record at all is
    /// unknown).
    pub records_cut: u64,
}

/// A damaged tail that recovery cut off the last segment (FORMAT.md, "Recovery at open":
/// rows "torn (provable)" and "suspect tail").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    /// Where the file was cut (just past the last good record).
    pub offset: u64,
    /// How many bytes were cut.
    pub cut_len: u64,
    /// The LSN of the last good record.
    pub last_lsn: Lsn,
    pub reason: Corruption,
    /// The file ends inside the last record: a write torn by a crash, never reported
    /// durable, so the cut lost nothing that was acknowledged. False for any other damaged
    /// tail (a whole record failing its CRC, a length over the limit, zeroes, ...), which
    /// may as well be damage to a record fsynced and acknowledged long ago: the cut may have
    /// taken a record this node acknowledged, and the node starts as a learner.
    /// See [`crate::segment::stop_is_provably_torn`].
    pub provably_torn: bool,
}

/// One segment as the index sees it. Shared with readers.
#[derive(Debug, Clone)]
pub(crate) struct SegmentEntry {
    /// Names these bytes for readers: given by [`Index::push`] when the segment enters the
    /// index and again whenever the segment is cut, never reused. While a segment keeps its
    /// id, every byte below its `len` is the byte it was when the id was given, so a position
    /// a reader verified under this id still holds. (The path cannot say this: a segment that
    /// a cut deleted can be written again under the same name.)
    pub id: u64,
    pub first_lsn: Lsn,
    pub path: PathBuf,
    /// Bytes written: header plus whole records. Readers never look past it.
    pub len: u64,
    /// LSN of the last record written (`first_lsn - 1` if none).
    pub last_lsn: Lsn,
    /// `(lsn, offset)` of a record at least every [`INDEX_INTERVAL_BYTES`], ascending.
    pub index: Vec<(Lsn, u64)>,
}

impl SegmentEntry {
    /// The offset of a record at or before `lsn` to start a forward scan from, and its LSN.
    pub fn seek(&self, lsn: Lsn) -> (Lsn, u64) {
        let at = self
            .index
            .partition_point(|&(entry_lsn, _)| entry_lsn <= lsn);
        if at == 0 {
            (self.first_lsn, SEGMENT_HEADER_LEN as u64)
        } else {
            self.index[at - 1]
        }
    }
}

/// The segments of a log, oldest first. Written by the [`Wal`], read by [`Reader`]s.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub segments: Vec<SegmentEntry>,
    /// How far past its written bytes a reader maps a segment, so that it can follow the
    /// growing tail without remapping for every append (the segment size limit).
    pub map_len: u64,
    /// Where each epoch starts in the log, ascending: the [`Wal`]'s own list, published with
    /// the records it describes (so readers can tell the epoch of any LSN, damaged or not).
    pub epoch_starts: Vec<EpochStart>,
    /// The next [`SegmentEntry::id`] to give.
    next_id: u64,
}

impl Index {
    pub fn new(map_len: u64) -> Index {
        Index {
            segments: Vec::new(),
            map_len,
            epoch_starts: Vec::new(),
            next_id: 0,
        }
    }

    /// The epoch of the record at `lsn`, if the log holds it.
    pub fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        if lsn < self.first_lsn() || lsn > self.last_lsn() {
            return None;
        }
        let at = self.epoch_starts.partition_point(|s| s.first_lsn <= lsn);
        at.checked_sub(1).map(|i| self.epoch_starts[i].epoch)
    }

    /// Adds `entry` as the newest segment, with an id of its own.
    pub fn push(&mut self, mut entry: SegmentEntry) {
        entry.id = self.take_id();
        self.segments.push(entry);
    }

    /// A [`SegmentEntry::id`] never given before.
    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The segment that holds `lsn`, if any.
    pub fn find(&self, lsn: Lsn) -> Option<&SegmentEntry> {
        let at = self
            .segments
            .partition_point(|segment| segment.first_lsn <= lsn);
        let segment = self.segments.get(at.checked_sub(1)?)?;
        (lsn <= segment.last_lsn).then_some(segment)
    }

    pub fn first_lsn(&self) -> Lsn {
        self.segments.first().map_or(Lsn(1), |s| s.first_lsn)
    }

    pub fn last_lsn(&self) -> Lsn {
        self.segments.last().map_or(Lsn::ZERO, |s| s.last_lsn)
    }
}

/// The [`Index`] and the count of changes that took written bytes away, shared by the
/// [`Wal`] (the only writer) and its [`Reader`]s.
///
/// # Correctness
/// A change that takes written bytes away (a cut, a deleted segment, a reset) is published
/// here before any file is cut or deleted: the index is changed and `cuts` bumped under the
/// write lock first. So a reader that finds `cuts` unchanged since it last looked at the index
/// may trust, without the lock, that everything the index said was written then still is, and
/// is still the same records; and a file the index names exists while the read lock is held.
#[derive(Debug)]
pub(crate) struct SharedIndex {
    index: RwLock<Index>,
    cuts: AtomicU64,
}

impl SharedIndex {
    pub fn new(index: Index) -> SharedIndex {
        SharedIndex {
            index: RwLock::new(index),
            cuts: AtomicU64::new(0),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        // A panic while holding the lock aborts the process (panic = "abort"); tests may
        // unwind, so recover.
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// How many changes so far took written bytes away (see the type's docs).
    #[inline]
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Acquire)
    }

    /// The write lock, for a change that only adds: appended records, a new segment.
    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The write lock, for a change that takes written bytes away; bumps `cuts`, so that
    /// every reader looks at the index again before it reads on. Make the change through the
    /// guard before cutting or deleting the file.
    fn write_cut(&self) -> RwLockWriteGuard<'_, Index> {
        let index = self.write();
        self.cuts.fetch_add(1, Ordering::Release);
        index
    }
}

/// The write-ahead log. See the module docs for the LSN chain it keeps.
pub struct Wal {
    dir: PathBuf,
    options: Options,
    index: Arc<SharedIndex>,
    /// The last segment, open for writing.
    active: File,
    active_path: PathBuf,
    active_first_lsn: Lsn,
    active_len: u64,
    active_next_index_offset: u64,
    active_has_records: bool,
    first_lsn: Lsn,
    last_lsn: Lsn,
    /// Epoch of the last record; `Epoch::ZERO` for an empty log, or when the record before
    /// the first retained one is unknown.
    last_epoch: Epoch,
    durable_lsn: Lsn,
    epoch_starts: Vec<EpochStart>,
    /// Encoding buffer, reused across appends.
    buf: Vec<u8>,
    poisoned: bool,
}

fn io<T>(op: IoOp, path: &Path, result: std::io::Result<T>) -> Result<T> {
    result.map_err(|e| Error::io(op, path, e))
}

fn header_error(path: &Path, error: HeaderError) -> Error {
    match error {
        HeaderError::Short => Error::Corrupt {
            path: path.to_owned(),
            offset: 0,
            lsn: Lsn::ZERO,
            reason: Corruption::BadField("segment header (file shorter than a header)"),
        },
        HeaderError::BadMagic(found) => Error::BadMagic {
            path: path.to_owned(),
            expected: "WAL segment",
            found,
        },
        HeaderError::UnsupportedVersion(found) => Error::UnsupportedVersion {
            path: path.to_owned(),
            found,
            supported: crate::format::SEGMENT_VERSION,
        },
        HeaderError::Corrupt(reason) => Error::Corrupt {
            path: path.to_owned(),
            offset: 0,
            lsn: Lsn::ZERO,
            reason,
        },
    }
}

/// The files of a log directory, classified. Nothing is deleted here.
struct Listing {
    segments: Vec<(Lsn, PathBuf)>,
    tmp: Vec<PathBuf>,
}

fn list_dir(dir: &Path) -> Result<Listing> {
    let mut listing = Listing {
        segments: Vec::new(),
        tmp: Vec::new(),
    };
    for entry in io(IoOp::ReadDir, dir, std::fs::read_dir(dir))? {
        let entry = io(IoOp::ReadDir, dir, entry)?;
        let path = entry.path();
        let is_file = io(IoOp::Metadata, &path, entry.file_type())?.is_file();
        let name = entry.file_name();
        let name = name.to_str().unwrap_or("");
        if is_file && name.ends_with(".tmp") {
            listing.tmp.push(path);
        } else if let (true, Some(first_lsn)) = (is_file, segment::parse_file_name(name)) {
            listing.segments.push((first_lsn, path));
        } else {
            return Err(Error::ForeignFile { path });
        }
    }
    listing.segments.sort();
    Ok(listing)
}

/// Installs an empty segment starting at `first_lsn` (FORMAT.md, "Writing"): header to a
/// temp file, fsync, rename, fsync the directory.
fn create_segment(dir: &Path, first_lsn: Lsn) -> Result<PathBuf> {
    let path = segment::path(dir, first_lsn);
    fs::write_atomic(&path, &encode_segment_header(first_lsn))?;
    Ok(path)
}

fn open_for_append(path: &Path) -> Result<File> {
    io(
        IoOp::Open,
        path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(false)
            .open(path),
    )
}

/// What opening one segment found.
enum Opened {
    /// The header is intact; the records were verified up to the damage, if any.
    Segment(OpenedSegment),
    /// Row "bad header", for a header that is ours but damaged (short file, wrong CRC,
    /// non-zero reserved bytes, a first LSN other than the name's): the error that reports
    /// it. A foreign magic or an unknown version is an `Err` of [`open_segment`] instead.
    DamagedHeader(Error),
}

/// A segment whose header is intact, verified.
struct OpenedSegment {
    /// The intact records: `len` stops at the damage, if any.
    entry: SegmentEntry,
    last_epoch: Epoch,
    epoch_starts: Vec<EpochStart>,
    damage: Option<SegmentDamage>,
}

/// Where and how a segment's records are damaged (FORMAT.md, "Recovery at open").
enum SegmentDamage {
    /// Rows "torn (provable)" and "suspect tail": the tail of the last segment, with nothing
    /// intact after it. Nothing was cut yet.
    Tail(TornTail),
    /// Rows "corrupt" and "misplaced": a record that fails a check and is no tail (in a
    /// sealed segment, before an intact record, or damage no crash makes).
    Record {
        offset: u64,
        lsn: Lsn,
        reason: Corruption,
    },
}

/// Reads, verifies and indexes one segment, and classifies the first damage in it (the
/// torn-tail rules apply when `is_last`). Changes nothing.
fn open_segment(path: &Path, name_lsn: Lsn, prev_epoch: Epoch, is_last: bool) -> Result<Opened> {
    let file = io(IoOp::Open, path, File::open(path))?;
    let file_len = io(IoOp::Metadata, path, file.metadata())?.len();
    if file_len < SEGMENT_HEADER_LEN as u64 {
        // Segments are installed with their header (rename of a synced temp file), so a
        // short one was damaged after the fact.
        return Ok(Opened::DamagedHeader(header_error(
            path,
            HeaderError::Short,
        )));
    }
    // SAFETY: the mapping is read-only and private to this call; the log is not written
    // while it is being opened, and the map is dropped before this function returns.
    let map = io(IoOp::Map, path, unsafe { memmap2::Mmap::map(&file) })?;
    let bytes: &[u8] = &map;
    let header_lsn = match decode_segment_header(bytes) {
        Ok(lsn) => lsn,
        Err(e @ HeaderError::Corrupt(_)) => {
            return Ok(Opened::DamagedHeader(header_error(path, e)))
        }
        Err(e) => return Err(header_error(path, e)),
    };
    if header_lsn != name_lsn {
        return Ok(Opened::DamagedHeader(Error::Corrupt {
            path: path.to_owned(),
            offset: 0,
            lsn: header_lsn,
            reason: Corruption::NameMismatch {
                name_lsn,
                header_lsn,
            },
        }));
    }
    let scan = segment::scan(bytes, name_lsn, prev_epoch);
    let damage = scan
        .stop
        .clone()
        .map(|(offset, reason)| open_segment_damage(path, bytes, &scan, offset, reason, is_last));
    Ok(Opened::Segment(OpenedSegment {
        entry: SegmentEntry {
            id: 0, // given by `Index::push`
            first_lsn: name_lsn,
            path: path.to_owned(),
            len: scan.good_len,
            last_lsn: scan.last_lsn,
            index: scan.index,
        },
        last_epoch: scan.last_epoch,
        epoch_starts: scan.epoch_starts,
        damage,
    }))
}

/// Which row of the recovery table the damage a scan stopped at falls in.
fn open_segment_damage(
    path: &Path,
    bytes: &[u8],
    scan: &segment::Scan,
    offset: u64,
    reason: Corruption,
    is_last: bool,
) -> SegmentDamage {
    let lsn = scan.last_lsn.next();
    // Row "corrupt": damage in a sealed segment, or damage that no crash makes.
    if !is_last || !segment::stop_may_be_torn(&reason) {
        return SegmentDamage::Record {
            offset,
            lsn,
            reason,
        };
    }
    // Row "corrupt": an intact record after the damage means it is not a torn write.
    if segment::find_intact_after(bytes, offset as usize + 1, scan.last_lsn).is_some() {
        return SegmentDamage::Record {
            offset,
            lsn,
            reason,
        };
    }
    // Rows "torn (provable)" and "suspect tail": say which it is, for the policy (and the
    // node) to decide whether the log may still be vouched for.
    let provably_torn =
        segment::stop_is_provably_torn(bytes, offset, &reason, lsn, scan.last_epoch);
    SegmentDamage::Tail(TornTail {
        path: path.to_owned(),
        offset: scan.good_len,
        cut_len: bytes.len() as u64 - scan.good_len,
        last_lsn: scan.last_lsn,
        reason,
        provably_torn,
    })
}

/// What verifying every segment found and what the damage policy decided; nothing on disk
/// has changed yet.
#[derive(Default)]
struct Verified {
    /// The segments kept, oldest first, each as it will be after the cut.
    segments: Vec<SegmentEntry>,
    last_epoch: Epoch,
    epoch_starts: Vec<EpochStart>,
    torn: Option<TornTail>,
    cut: Option<DamageCut>,
    /// Whole segments to delete, newest first.
    doomed: Vec<PathBuf>,
    /// The last kept segment is cut at this offset.
    cut_file: Option<(PathBuf, u64)>,
}

/// Verifies every segment in `found` (sorted, named as segments) and applies the recovery
/// table under `damage`, changing nothing on disk: an error leaves the directory as it was.
fn open_verify(found: &[(Lsn, PathBuf)], damage: Damage) -> Result<Verified> {
    let mut verified = Verified::default();
    let count = found.len();
    for (position, (first_lsn, path)) in found.iter().enumerate() {
        let first_lsn = *first_lsn;
        if let Some(prev) = verified.segments.last() {
            // Row "gap".
            if first_lsn != prev.last_lsn.next() {
                return Err(Error::Gap {
                    path: path.clone(),
                    expected_prev: prev.last_lsn,
                    found: first_lsn,
                });
            }
        }
        let is_last = position + 1 == count;
        let opened = match open_segment(path, first_lsn, verified.last_epoch, is_last)? {
            Opened::Segment(opened) => opened,
            Opened::DamagedHeader(error) => {
                // Row "bad header". Under `CutAll` a damaged header after the first segment
                // is the cut point: the segment goes whole, with every later one. The first
                // segment's header says where the log starts, which nothing else can tell.
                let reason = match (&error, damage, position) {
                    (Error::Corrupt { reason, .. }, Damage::CutAll, 1..) => reason.clone(),
                    _ => return Err(error),
                };
                let later_last_lsn = open_verify_doomed(&found[position + 1..])?;
                verified.cut = Some(DamageCut {
                    path: path.clone(),
                    offset: 0,
                    lsn: first_lsn,
                    reason,
                    records_cut: records_from(first_lsn, later_last_lsn),
                });
                verified.doomed = found[position..]
                    .iter()
                    .rev()
                    .map(|(_, path)| path.clone())
                    .collect();
                break;
            }
        };
        verified.last_epoch = opened.last_epoch;
        verified.epoch_starts.extend(opened.epoch_starts);
        verified.segments.push(opened.entry);
        match opened.damage {
            None => {}
            Some(SegmentDamage::Tail(torn)) => {
                let lsn = torn.last_lsn.next();
                match (torn.provably_torn, damage) {
                    (true, _) | (false, Damage::CutTail) => {}
                    (false, Damage::CutTornOnly) => {
                        return Err(Error::SuspectTail {
                            path: path.clone(),
                            offset: torn.offset,
                            lsn,
                        })
                    }
                    (false, Damage::CutAll) => {
                        verified.cut = Some(DamageCut {
                            path: path.clone(),
                            offset: torn.offset,
                            lsn,
                            reason: torn.reason.clone(),
                            // Nothing intact follows a tail.
                            records_cut: 0,
                        });
                    }
                }
                verified.cut_file = Some((path.clone(), torn.offset));
                verified.torn = Some(torn);
            }
            Some(SegmentDamage::Record {
                offset,
                lsn,
                reason,
            }) => {
                if damage != Damage::CutAll {
                    return Err(Error::Corrupt {
                        path: path.clone(),
                        offset,
                        lsn,
                        reason,
                    });
                }
                let later = &found[position + 1..];
                let last_lsn = match open_verify_doomed(later)? {
                    Some(last_lsn) => Some(last_lsn),
                    None => open_verify_resync(path, offset, lsn)?,
                };
                verified.cut = Some(DamageCut {
                    path: path.clone(),
                    offset,
                    lsn,
                    reason,
                    records_cut: records_from(lsn, last_lsn),
                });
                verified.cut_file = Some((path.clone(), offset));
                verified.doomed = later.iter().rev().map(|(_, path)| path.clone()).collect();
                break;
            }
        }
    }
    Ok(verified)
}

/// How many records `first..=last` holds; 0 when `last` is unknown.
fn records_from(first: Lsn, last: Option<Lsn>) -> u64 {
    last.map_or(0, |last| Lsn::count_between(first, last))
}

/// Checks that the segments after a `CutAll` cut point, which will be deleted unverified,
/// are ours (our magic and version: we delete nothing we do not understand; a damaged header
/// is fine), and returns the highest LSN of an intact record among them, if any.
fn open_verify_doomed(later: &[(Lsn, PathBuf)]) -> Result<Option<Lsn>> {
    let mut last_lsn = None;
    for (name_lsn, path) in later {
        let file = io(IoOp::Open, path, File::open(path))?;
        let file_len = io(IoOp::Metadata, path, file.metadata())?.len();
        if file_len < SEGMENT_HEADER_LEN as u64 {
            continue;
        }
        // SAFETY: as in `open_segment`: read-only, private, dropped before returning.
        let map = io(IoOp::Map, path, unsafe { memmap2::Mmap::map(&file) })?;
        match decode_segment_header(&map) {
            Ok(header_lsn) if header_lsn == *name_lsn => {
                let scan = segment::scan(&map, *name_lsn, Epoch::ZERO);
                if scan.count > 0 {
                    last_lsn = last_lsn.max(Some(scan.last_lsn));
                }
            }
            Ok(_) | Err(HeaderError::Short | HeaderError::Corrupt(_)) => {}
            Err(e @ (HeaderError::BadMagic(_) | HeaderError::UnsupportedVersion(_))) => {
                return Err(header_error(path, e))
            }
        }
    }
    Ok(last_lsn)
}

/// The highest LSN of the intact records that follow the damaged record `lsn` at `offset`
/// in the segment at `path`, found by looking for the next intact record and reading on
/// from it; `None` if there is none.
fn open_verify_resync(path: &Path, offset: u64, lsn: Lsn) -> Result<Option<Lsn>> {
    let file = io(IoOp::Open, path, File::open(path))?;
    // SAFETY: as in `open_segment`: read-only, private, dropped before returning.
    let map = io(IoOp::Map, path, unsafe { memmap2::Mmap::map(&file) })?;
    let bytes: &[u8] = &map;
    let Some((found_at, found_lsn)) =
        segment::find_intact_after(bytes, offset as usize + 1, lsn.prev())
    else {
        return Ok(None);
    };
    // An offset into `bytes`, which is in memory: it fits a usize.
    let mut at = found_at as usize;
    let mut expected = found_lsn;
    while let Ok(Some((record, len))) = decode_record(&bytes[at..]) {
        if record.lsn != expected {
            break;
        }
        at += len;
        expected = expected.next();
    }
    Ok(Some(expected.prev()))
}

/// Carries out the cut [`open_verify`] decided, if any.
///
/// # Durability
/// 1. Delete the segments after the cut point, newest first, fsyncing the directory after
///    each (so no older deletion can reach the disk before a newer one); 2. cut the segment
///    holding the first damaged record at its offset (or, when its header was the damage, it
///    was deleted in 1 as the oldest of them); 3. fsync that file. A file is cut only once
///    no later segment is left, so at every crash point the directory holds a prefix of the
///    segments, contiguous: either the damaged record is still there, and the next open
///    finds it again (the same damage, at the same LSN, perhaps now in the last segment),
///    or the log ends just before it. Never a log with a hole. Repeating the open under
///    the same policy finishes the cut.
fn open_cut(dir: &Path, verified: &Verified) -> Result<()> {
    // 1.
    for path in &verified.doomed {
        io(IoOp::Remove, path, std::fs::remove_file(path))?;
        fs::sync_dir(dir)?;
    }
    // 2.
    if let Some((path, offset)) = &verified.cut_file {
        let file = open_for_append(path)?;
        io(IoOp::Truncate, path, file.set_len(*offset))?;
        // 3.
        io(IoOp::Fsync, path, file.sync_all())?;
    }
    Ok(())
}

impl Wal {
    /// Opens the log in `dir` (created if missing), verifying every record of every segment
    /// and cutting what `options.damage` allows (FORMAT.md, "Recovery at open"): by default
    /// a damaged tail of the last segment.
    ///
    /// Every segment is verified before anything is changed, so an error (a damaged record
    /// the policy does not cut, `Error::SuspectTail` under [`Damage::CutTornOnly`], a gap, a
    /// foreign file, ...) leaves the directory as it was, stale temp files included; only an
    /// I/O error while cutting can leave part of a cut done (see the crash argument below).
    ///
    /// # Correctness
    /// A tail that is not provably torn (`Recovery::torn` with `provably_torn: false`), or any
    /// cut under [`Damage::CutAll`] (`Recovery::cut`), may have taken a record this node
    /// acknowledged: the caller must not vouch for its log (vote, count towards commit) until
    /// a primary has verified it again. Once the cut is durable nothing is left to say so
    /// after a crash, so a caller that keeps that state on disk (the learner flag of
    /// `crate::meta::Meta`) stores it first: [`inspect`] reports the same tail,
    /// `provably_torn` included, without cutting it, and an open under
    /// [`Damage::CutTornOnly`] refuses (and changes nothing) where a later open under
    /// [`Damage::CutAll`] would cut.
    ///
    /// # Durability
    /// A cut is made durable before this returns (see `open_cut`), and the last segment is
    /// fsynced, so everything the returned log holds is durable: `durable_lsn == last_lsn`.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<(Wal, Recovery)> {
        let dir = dir.as_ref().to_owned();
        assert!(
            options.start_lsn > Lsn::ZERO,
            "logs start at lsn 1 or later"
        );
        assert!(
            options.segment_bytes_max > SEGMENT_HEADER_LEN as u64,
            "segment_bytes_max must exceed the segment header"
        );
        fs::ensure_dir(&dir)?;
        let listing = list_dir(&dir)?;
        // Verify and decide first; nothing has changed on disk if this fails.
        let mut verified = open_verify(&listing.segments, options.damage)?;
        let mut recovery = Recovery::default();
        // Row "stale temp": an install that crashed before its rename.
        for tmp in listing.tmp {
            io(IoOp::Remove, &tmp, std::fs::remove_file(&tmp))?;
            recovery.removed_tmp.push(tmp);
        }
        if listing.segments.is_empty() {
            let path = create_segment(&dir, options.start_lsn)?;
            verified = open_verify(&[(options.start_lsn, path)], options.damage)?;
            recovery.created = true;
        }
        open_cut(&dir, &verified)?;
        let Verified {
            segments,
            last_epoch,
            epoch_starts,
            torn,
            cut,
            ..
        } = verified;
        recovery.torn = torn;
        recovery.cut = cut;
        recovery.records = segments
            .iter()
            .map(|s| Lsn::count_between(s.first_lsn, s.last_lsn))
            .sum();
        recovery.segments = segments.len();
        let last = segments.last().expect("at least one segment exists here");
        let active_path = last.path.clone();
        let active = open_for_append(&active_path)?;
        // What a previous process wrote may still be only in the page cache.
        io(IoOp::Fsync, &active_path, active.sync_data())?;
        fs::preallocate(&active, options.segment_bytes_max);
        let active_first_lsn = last.first_lsn;
        let active_len = last.len;
        let active_has_records = last.last_lsn >= last.first_lsn;
        let active_next_index_offset = last
            .index
            .last()
            .map_or(0, |&(_, offset)| offset + INDEX_INTERVAL_BYTES);
        let first_lsn = segments[0].first_lsn;
        let last_lsn = last.last_lsn;
        let mut index = Index::new(options.segment_bytes_max);
        for entry in segments {
            index.push(entry);
        }
        index.epoch_starts = epoch_starts.clone();
        let wal = Wal {
            dir,
            options,
            index: Arc::new(SharedIndex::new(index)),
            active,
            active_path,
            active_first_lsn,
            active_len,
            active_next_index_offset,
            active_has_records,
            first_lsn,
            last_lsn,
            last_epoch,
            durable_lsn: last_lsn,
            epoch_starts,
            buf: Vec::new(),
            poisoned: false,
        };
        wal.validate();
        Ok((wal, recovery))
    }

    /// Asserts the LSN chain of the module docs.
    pub fn validate(&self) {
        assert!(
            self.first_lsn.prev() <= self.durable_lsn,
            "durable_lsn {} below the log's start {}",
            self.durable_lsn,
            self.first_lsn
        );
        assert!(
            self.durable_lsn <= self.last_lsn,
            "durable_lsn {} above last_lsn {}",
            self.durable_lsn,
            self.last_lsn
        );
        assert!(self.active_first_lsn >= self.first_lsn);
        assert!(self.active_first_lsn <= self.last_lsn.next());
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The first LSN the log holds (or would hold, if empty).
    pub fn first_lsn(&self) -> Lsn {
        self.first_lsn
    }
    /// The last LSN written (`first_lsn - 1` if the log is empty).
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }
    /// The epoch of the last record (`Epoch::ZERO` if unknown or empty).
    pub fn last_epoch(&self) -> Epoch {
        self.last_epoch
    }
    /// Everything at or below this LSN is on disk.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }
    /// Where each epoch starts in the retained log, ascending.
    pub fn epoch_starts(&self) -> &[EpochStart] {
        &self.epoch_starts
    }
    /// The epoch of the record at `lsn`, if the log holds it.
    pub fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        if lsn < self.first_lsn || lsn > self.last_lsn {
            return None;
        }
        let at = self.epoch_starts.partition_point(|s| s.first_lsn <= lsn);
        at.checked_sub(1).map(|i| self.epoch_starts[i].epoch)
    }
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
    /// A reader over this log's segments; it sees what is written, as it is written.
    pub fn reader(&self) -> Reader {
        Reader::new(Arc::clone(&self.index))
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    /// Latches the log failed if `result` is an error (FORMAT.md: a failed write or fsync
    /// is never retried and trusted).
    fn poison_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Appends one record of `kind` per payload in `epoch`, returning the LSN range.
    ///
    /// # Durability
    /// Written, not synced: call [`Wal::sync`]. Nothing is written if any payload is too
    /// large.
    pub fn append<'p>(
        &mut self,
        epoch: Epoch,
        kind: RecordKind,
        payloads: impl IntoIterator<Item = &'p [u8]> + Clone,
    ) -> Result<(Lsn, Lsn)> {
        self.check_poisoned()?;
        for payload in payloads.clone() {
            if payload.len() > RECORD_PAYLOAD_LEN_MAX {
                return Err(Error::RecordTooLarge {
                    len: payload.len() as u64,
                    max: RECORD_PAYLOAD_LEN_MAX as u64,
                });
            }
        }
        assert!(
            epoch >= self.last_epoch,
            "append in epoch {epoch} after a record of epoch {}",
            self.last_epoch
        );
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let first_lsn = self.last_lsn.next();
        let mut lsn = first_lsn;
        for payload in payloads {
            encode_record(&mut buf, lsn, epoch, kind, payload);
            lsn = lsn.next();
        }
        let result = if lsn == first_lsn {
            Ok(())
        } else {
            self.write_encoded(&buf)
        };
        self.buf = buf;
        result?;
        Ok((first_lsn, lsn.prev()))
    }

    /// Appends records received already encoded (from a peer, or read back), byte for byte:
    /// the bytes on disk are the bytes on the wire.
    ///
    /// # Correctness
    /// The run must start right after `last_lsn` and not go back in epoch; otherwise
    /// `Error::OutOfOrder`/`Error::BadRecord` and nothing is written.
    pub fn append_encoded(&mut self, records: &VerifiedRecords) -> Result<(Lsn, Lsn)> {
        self.check_poisoned()?;
        if records.first_lsn() != self.last_lsn.next() {
            return Err(Error::OutOfOrder {
                last: self.last_lsn,
                found: records.first_lsn(),
            });
        }
        if records.first_epoch() < self.last_epoch {
            return Err(Error::BadRecord {
                reason: Corruption::EpochOrder {
                    previous: self.last_epoch.get(),
                    found: records.first_epoch().get(),
                },
            });
        }
        self.write_encoded(records.bytes())?;
        Ok((records.first_lsn(), records.last_lsn()))
    }

    /// Writes records encoded by this crate's own encoder (the group-commit writer's queue).
    pub(crate) fn append_trusted(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_poisoned()?;
        self.write_encoded(bytes)
    }

    /// Writes encoded records (trusted: encoded here or verified) at the end of the log,
    /// rolling segments as needed, and updates the index.
    fn write_encoded(&mut self, bytes: &[u8]) -> Result<()> {
        let mut run_start = 0usize; // start of the bytes not yet written
        let mut offset = 0usize;
        let mut new_index: Vec<(Lsn, u64)> = Vec::new();
        while offset < bytes.len() {
            let header = &bytes[offset..offset + RECORD_HEADER_LEN];
            let mut word = [0u8; 8];
            let payload_len = {
                let mut w = [0u8; 4];
                w.copy_from_slice(&header[4..8]);
                u32::from_le_bytes(w) as usize
            };
            word.copy_from_slice(&header[8..16]);
            let lsn = Lsn(u64::from_le_bytes(word));
            word.copy_from_slice(&header[16..24]);
            let epoch = Epoch(u64::from_le_bytes(word));
            let len = RECORD_HEADER_LEN + payload_len;
            assert_eq!(lsn, self.last_lsn.next(), "records must be dense");
            assert!(epoch >= self.last_epoch, "epochs must not go back");
            let file_offset = self.active_len + (offset - run_start) as u64;
            let would_be = file_offset + len as u64;
            if would_be > self.options.segment_bytes_max
                && (self.active_has_records || offset > run_start)
            {
                self.write_run(&bytes[run_start..offset], &mut new_index)?;
                run_start = offset;
                self.roll(lsn)?;
                continue;
            }
            let file_offset = self.active_len + (offset - run_start) as u64;
            if file_offset >= self.active_next_index_offset {
                new_index.push((lsn, file_offset));
                self.active_next_index_offset = file_offset + INDEX_INTERVAL_BYTES;
            }
            if epoch != self.last_epoch {
                self.epoch_starts.push(EpochStart {
                    epoch,
                    first_lsn: lsn,
                });
            }
            self.last_lsn = lsn;
            self.last_epoch = epoch;
            self.active_has_records = true;
            offset += len;
        }
        self.write_run(&bytes[run_start..], &mut new_index)
    }

    /// Writes whole records at the end of the active segment and publishes them to readers.
    fn write_run(&mut self, run: &[u8], new_index: &mut Vec<(Lsn, u64)>) -> Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let result = io(
            IoOp::Write,
            &self.active_path,
            self.active.write_all_at(run, self.active_len),
        );
        self.poison_on_error(result)?;
        self.active_len += run.len() as u64;
        let mut index = self.index.write();
        let entry = index
            .segments
            .last_mut()
            .expect("the index always holds the active segment");
        assert_eq!(entry.first_lsn, self.active_first_lsn);
        entry.len = self.active_len;
        entry.last_lsn = self.last_lsn;
        entry.index.append(new_index);
        // The epochs that start in the records just published (the index's list is a prefix
        // of ours: appends only add to both).
        let published = index.epoch_starts.len();
        assert!(
            published <= self.epoch_starts.len(),
            "the index knows {published} epoch starts, the log only {}",
            self.epoch_starts.len()
        );
        index
            .epoch_starts
            .extend_from_slice(&self.epoch_starts[published..]);
        Ok(())
    }

    /// Seals the active segment and installs a new one starting at `first_lsn` (FORMAT.md,
    /// "Writing": sync the old one, then the atomic install of the new one).
    fn roll(&mut self, first_lsn: Lsn) -> Result<()> {
        // 1. The sealed segment must be complete on disk before a later one exists.
        let result = io(IoOp::Fsync, &self.active_path, self.active.sync_data());
        self.poison_on_error(result)?;
        self.durable_lsn = first_lsn.prev();
        // 2-5. Atomic install of the new segment's header.
        let result = create_segment(&self.dir, first_lsn);
        let path = self.poison_on_error(result)?;
        let result = open_for_append(&path);
        self.active = self.poison_on_error(result)?;
        fs::preallocate(&self.active, self.options.segment_bytes_max);
        self.active_path = path.clone();
        self.active_first_lsn = first_lsn;
        self.active_len = SEGMENT_HEADER_LEN as u64;
        self.active_next_index_offset = 0;
        self.active_has_records = false;
        self.index.write().push(SegmentEntry {
            id: 0, // given by `Index::push`
            first_lsn,
            path,
            len: SEGMENT_HEADER_LEN as u64,
            last_lsn: first_lsn.prev(),
            index: Vec::new(),
        });
        Ok(())
    }

    /// Makes everything written durable (one fdatasync of the active segment; sealed ones
    /// were synced when they were sealed). Returns the new durable LSN.
    ///
    /// # Durability
    /// Returns only after the fdatasync succeeded. After a failure the log is poisoned.
    pub fn sync(&mut self) -> Result<Lsn> {
        self.check_poisoned()?;
        if self.durable_lsn == self.last_lsn {
            return Ok(self.durable_lsn);
        }
        let result = io(IoOp::Fsync, &self.active_path, self.active.sync_data());
        self.poison_on_error(result)?;
        self.durable_lsn = self.last_lsn;
        Ok(self.durable_lsn)
    }

    /// Cuts the log after `keep_through`, durably: a divergent, uncommitted suffix.
    ///
    /// # Correctness
    /// The caller never truncates at or below its commit LSN (the replication core asserts
    /// it). Readers may be positioned anywhere: each looks at the index again before it
    /// reads on, and then reads the records written after the cut, at their new places (see
    /// [`crate::reader`]). But no read of a record above `keep_through` may be in progress
    /// while this runs, and no record above it that a reader handed out may be looked at
    /// after it: those bytes share a memory map of the file, which faults past its new end.
    ///
    /// # Durability
    /// 1. delete whole segments above `keep_through`, newest first, fsyncing the directory
    ///    after each; 2. cut the segment that holds `keep_through`; 3. fsync it. At every
    ///    crash point the log on disk is a prefix of the old one that still holds
    ///    `..=keep_through`, so a repeat after restart completes the truncation.
    pub fn truncate_suffix(&mut self, keep_through: Lsn) -> Result<()> {
        self.check_poisoned()?;
        if keep_through >= self.last_lsn {
            return Ok(());
        }
        if keep_through < self.first_lsn.prev() {
            return Err(Error::NotInLog {
                lsn: keep_through,
                first: self.first_lsn,
                last: self.last_lsn,
            });
        }
        let result = self.truncate_suffix_files(keep_through);
        self.poison_on_error(result)?;
        self.last_lsn = keep_through;
        self.durable_lsn = self.durable_lsn.min(keep_through);
        self.epoch_starts.retain(|s| s.first_lsn <= keep_through);
        self.publish_epoch_starts();
        self.last_epoch = if keep_through < self.first_lsn {
            Epoch::ZERO
        } else {
            self.epoch_starts.last().map_or(Epoch::ZERO, |s| s.epoch)
        };
        self.validate();
        Ok(())
    }

    fn truncate_suffix_files(&mut self, keep_through: Lsn) -> Result<()> {
        // 1. Whole segments above the cut, newest first. The first segment is never
        //    deleted: it records where the log starts. Each leaves the index (readers look
        //    there before reading on) before its file goes.
        loop {
            let doomed = {
                let index = self.index.read();
                let last = index.segments.last().expect("the index is never empty");
                index.segments.len() > 1 && last.first_lsn > keep_through
            };
            if !doomed {
                break;
            }
            let path = {
                let mut index = self.index.write_cut();
                let last = index.segments.pop().expect("the index is never empty");
                last.path
            };
            io(IoOp::Remove, &path, std::fs::remove_file(&path))?;
            fs::sync_dir(&self.dir)?;
        }
        // 2. Cut the segment that now ends the log right after `keep_through`.
        let (path, first_lsn, cut_offset, entry_index) = {
            let index = self.index.read();
            let last = index.segments.last().expect("the index is never empty");
            let cut_offset = self.offset_after(last, keep_through)?;
            let entry_index: Vec<(Lsn, u64)> = last
                .index
                .iter()
                .copied()
                .filter(|&(lsn, _)| lsn <= keep_through)
                .collect();
            (last.path.clone(), last.first_lsn, cut_offset, entry_index)
        };
        {
            // The cut is published (a new id: positions verified before it may not hold)
            // before the file shrinks.
            let mut index = self.index.write_cut();
            let id = index.take_id();
            let last = index.segments.last_mut().expect("the index is never empty");
            last.id = id;
            last.len = cut_offset;
            last.last_lsn = keep_through;
            last.index = entry_index;
        }
        let file = open_for_append(&path)?;
        io(IoOp::Truncate, &path, file.set_len(cut_offset))?;
        // 3. Make the cut durable.
        io(IoOp::Fsync, &path, file.sync_all())?;
        // The cut may have given back the blocks reserved past the old end.
        fs::preallocate(&file, self.options.segment_bytes_max);
        self.active = file;
        self.active_path = path;
        self.active_first_lsn = first_lsn;
        self.active_len = cut_offset;
        self.active_has_records = keep_through >= first_lsn;
        let index = self.index.read();
        let last = index.segments.last().expect("the index is never empty");
        self.active_next_index_offset = last
            .index
            .last()
            .map_or(0, |&(_, offset)| offset + INDEX_INTERVAL_BYTES);
        Ok(())
    }

    /// The file offset just past record `lsn` in `segment` (the header's end if `lsn` is
    /// before the segment), found from the sparse index and a short forward walk over
    /// record headers.
    fn offset_after(&self, segment: &SegmentEntry, lsn: Lsn) -> Result<u64> {
        if lsn < segment.first_lsn {
            return Ok(SEGMENT_HEADER_LEN as u64);
        }
        let (mut at_lsn, mut offset) = segment.seek(lsn);
        let file = io(IoOp::Open, &segment.path, File::open(&segment.path))?;
        let mut header = [0u8; RECORD_HEADER_LEN];
        loop {
            io(
                IoOp::Read,
                &segment.path,
                file.read_exact_at(&mut header, offset),
            )?;
            let mut w = [0u8; 4];
            w.copy_from_slice(&header[4..8]);
            offset += (RECORD_HEADER_LEN + u32::from_le_bytes(w) as usize) as u64;
            if at_lsn == lsn {
                return Ok(offset);
            }
            at_lsn = at_lsn.next();
        }
    }

    /// Deletes whole segments all of whose records are below `lsn` (after a snapshot that
    /// covers them). The last segment is never deleted. Returns how many were deleted.
    ///
    /// # Durability
    /// Oldest first, fsyncing the directory after each, so the segments left at any crash
    /// point are contiguous.
    pub fn truncate_prefix(&mut self, lsn: Lsn) -> Result<usize> {
        self.check_poisoned()?;
        let mut deleted = 0;
        loop {
            let doomed = {
                let index = self.index.read();
                matches!(index.segments.get(1), Some(next) if next.first_lsn <= lsn)
            };
            if !doomed {
                break;
            }
            // The segment leaves the index (readers look there before reading on) before
            // its file goes.
            let path = {
                let mut index = self.index.write_cut();
                let oldest = index.segments.remove(0);
                self.first_lsn = index.first_lsn();
                oldest.path
            };
            let result = io(IoOp::Remove, &path, std::fs::remove_file(&path))
                .and_then(|()| fs::sync_dir(&self.dir));
            self.poison_on_error(result)?;
            deleted += 1;
        }
        // Keep the epoch of the first retained record; its start moves up with the log.
        let first = self.first_lsn;
        let keep_from = self
            .epoch_starts
            .partition_point(|s| s.first_lsn <= first)
            .saturating_sub(1);
        self.epoch_starts.drain(..keep_from);
        if let Some(start) = self.epoch_starts.first_mut() {
            start.first_lsn = start.first_lsn.max(first);
        }
        self.publish_epoch_starts();
        self.validate();
        Ok(deleted)
    }

    /// Replaces the whole log by an empty one that starts at `next_lsn` (after installing
    /// a snapshot newer than anything the log holds).
    ///
    /// # Durability
    /// Deletes every segment newest first, fsyncing the directory after each, then installs
    /// an empty segment named `next_lsn`. A crash in between leaves a prefix of the old log
    /// or an empty directory; the caller reopens with `Options::start_lsn = next_lsn`.
    pub fn reset(&mut self, next_lsn: Lsn) -> Result<()> {
        self.check_poisoned()?;
        assert!(next_lsn > Lsn::ZERO);
        let result = self.reset_files(next_lsn);
        self.poison_on_error(result)?;
        self.first_lsn = next_lsn;
        self.last_lsn = next_lsn.prev();
        self.durable_lsn = self.last_lsn;
        self.last_epoch = Epoch::ZERO;
        self.epoch_starts.clear();
        self.publish_epoch_starts();
        self.validate();
        Ok(())
    }

    fn reset_files(&mut self, next_lsn: Lsn) -> Result<()> {
        // Newest first; each segment leaves the index (readers look there before reading
        // on) before its file goes.
        loop {
            let doomed = self.index.write_cut().segments.pop();
            let Some(doomed) = doomed else { break };
            io(
                IoOp::Remove,
                &doomed.path,
                std::fs::remove_file(&doomed.path),
            )?;
            fs::sync_dir(&self.dir)?;
        }
        let path = create_segment(&self.dir, next_lsn)?;
        self.active = open_for_append(&path)?;
        fs::preallocate(&self.active, self.options.segment_bytes_max);
        self.active_path = path.clone();
        self.active_first_lsn = next_lsn;
        self.active_len = SEGMENT_HEADER_LEN as u64;
        self.active_next_index_offset = 0;
        self.active_has_records = false;
        self.index.write().push(SegmentEntry {
            id: 0, // given by `Index::push`
            first_lsn: next_lsn,
            path,
            len: SEGMENT_HEADER_LEN as u64,
            last_lsn: next_lsn.prev(),
            index: Vec::new(),
        });
        Ok(())
    }

    /// Replaces the index's epoch starts by ours, after a change that took some away or
    /// moved one (a truncation or a reset). Readers ask the index for an epoch only within
    /// the LSNs it says the log holds, which the change already published.
    fn publish_epoch_starts(&self) {
        self.index.write().epoch_starts = self.epoch_starts.clone();
    }

    /// The paths of the segments, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        let index = self.index.read();
        index.segments.iter().map(|s| s.path.clone()).collect()
    }
}

/// What a read-only look at a log directory found (see [`inspect`]).
#[derive(Debug, Clone)]
pub struct Inspection {
    pub segments: Vec<SegmentSummary>,
    /// The damaged tail that opening the log would cut, if any, and whether it is provably
    /// torn or suspect ([`TornTail::provably_torn`]).
    pub torn: Option<TornTail>,
    /// Incomplete installs that opening the log would remove.
    pub stale_tmp: Vec<PathBuf>,
    /// Where each epoch starts, ascending.
    pub epoch_starts: Vec<EpochStart>,
    reader: Option<Reader>,
}

/// One verified segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    /// Bytes of header and intact records.
    pub len: u64,
}

impl Inspection {
    /// A reader over the intact records, or `None` if the directory holds no segment.
    pub fn reader(&self) -> Option<Reader> {
        self.reader.clone()
    }
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.segments.first().map(|s| s.first_lsn)
    }
    pub fn last_lsn(&self) -> Option<Lsn> {
        self.segments.last().map(|s| s.last_lsn)
    }
}

/// Verifies every record of every segment in `dir` with the checks of [`Wal::open`], but
/// changes nothing: a torn tail is reported, not cut, and temp files are listed, not
/// removed. For `understudy wal verify|dump` and for looking at a log another process owns.
pub fn inspect(dir: impl AsRef<Path>) -> Result<Inspection> {
    let dir = dir.as_ref();
    let listing = list_dir(dir)?;
    let mut inspection = Inspection {
        segments: Vec::new(),
        torn: None,
        stale_tmp: listing.tmp,
        epoch_starts: Vec::new(),
        reader: None,
    };
    let mut entries: Vec<SegmentEntry> = Vec::new();
    let mut last_epoch = Epoch::ZERO;
    let count = listing.segments.len();
    for (position, (first_lsn, path)) in listing.segments.into_iter().enumerate() {
        if let Some(prev) = entries.last() {
            if first_lsn != prev.last_lsn.next() {
                return Err(Error::Gap {
                    path,
                    expected_prev: prev.last_lsn,
                    found: first_lsn,
                });
            }
        }
        let opened = match open_segment(&path, first_lsn, last_epoch, position + 1 == count)? {
            Opened::Segment(opened) => opened,
            Opened::DamagedHeader(error) => return Err(error),
        };
        last_epoch = opened.last_epoch;
        inspection.epoch_starts.extend(opened.epoch_starts);
        match opened.damage {
            None => {}
            Some(SegmentDamage::Tail(torn)) => inspection.torn = Some(torn),
            Some(SegmentDamage::Record {
                offset,
                lsn,
                reason,
            }) => {
                return Err(Error::Corrupt {
                    path,
                    offset,
                    lsn,
                    reason,
                })
            }
        }
        inspection.segments.push(SegmentSummary {
            path: opened.entry.path.clone(),
            first_lsn: opened.entry.first_lsn,
            last_lsn: opened.entry.last_lsn,
            len: opened.entry.len,
        });
        entries.push(opened.entry);
    }
    if !entries.is_empty() {
        // Read-only: the files do not grow, so map what is there.
        let mut index = Index::new(0);
        for entry in entries {
            index.push(entry);
        }
        index.epoch_starts = inspection.epoch_starts.clone();
        inspection.reader = Some(Reader::new(Arc::new(SharedIndex::new(index))));
    }
    Ok(inspection)
}
