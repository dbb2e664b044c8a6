//! Reading records from any LSN. The index (shared with the [`crate::Wal`] that writes it)
//! finds the segment and a nearby offset; the segment is memory-mapped and records are handed
//! out as [`bytes::Bytes`] slices of the mapping: no copy, and every record's CRC and LSN are
//! checked before it is handed out (DESIGN invariant 5).
//!
//! A reader sees what the log has written, as it is written: at the end of what it has mapped
//! it looks at the index again and maps further. It never looks past the written length, so
//! it never sees half a record from a concurrent append.
//!
//! The log also takes records away: `truncate_suffix` cuts a file (and may delete segments
//! that are later written again under the same names), `truncate_prefix` deletes segments,
//! `reset` replaces them all. So a reader trusts what it learnt from the index (how far the
//! segment is written, where its next record starts) only while nothing was taken away since:
//! before every record or batch it compares the index's count of such changes
//! (`SharedIndex::cuts`, one atomic load) with the count it saw, and on any difference looks
//! at the index again. There it keeps its position only if its segment is the same bytes as
//! before (`SegmentEntry::id`); otherwise it maps the segment that now holds its LSN and
//! seeks to it, or answers "not yet" (`None`) while that LSN is not written, or
//! `Error::NotInLog` once it is gone. It never reads a byte the index does not say is
//! written now, so it never faults on a mapping past the end of a cut file, and every
//! record it hands out is the one the log holds at that LSN now.
//!
//! Scrubbing ([`Reader::first_damaged`]) walks records the same way without handing them
//! out, and also checks each record's epoch against the one the log assigns to its LSN
//! ([`Reader::epoch_at`]: the log publishes where each epoch starts in the index, with the
//! records). Repairing what it finds is [`crate::repair`].
//!
//! It does not notice a record it handed out earlier being cut (the caller, which decided
//! the cut, knows), nor make a concurrent cut of the record it is reading safe: see the
//! `# Correctness` of [`crate::Wal::truncate_suffix`].

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Corruption, Error, IoOp, Result};
use crate::format::{decode_record, RecordKind, RECORD_HEADER_LEN};
use crate::log::SharedIndex;
use crate::types::{Epoch, Lsn};

/// A record read from the log: its header fields and its encoded bytes (on-disk form, which
/// is also the wire form), sharing the segment's memory map (so it must not be looked at
/// once the log has cut it: [`crate::Wal::truncate_suffix`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub kind: RecordKind,
    bytes: Bytes,
}

impl Record {
    /// The application payload.
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(RECORD_HEADER_LEN..)
    }
    /// The whole encoded record, header included.
    pub fn encoded(&self) -> &Bytes {
        &self.bytes
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("lsn", &self.lsn)
            .field("epoch", &self.epoch)
            .field("kind", &self.kind)
            .field("len", &(self.bytes.len() - RECORD_HEADER_LEN))
            .finish()
    }
}

/// A run of consecutive encoded records from one segment, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    /// Epoch of the last record in the batch.
    pub last_epoch: Epoch,
    /// The records back to back, exactly as on disk.
    pub bytes: Bytes,
}

/// A handle for reading a log; cheap to clone and to send to another thread.
#[derive(Clone)]
pub struct Reader {
    index: Arc<SharedIndex>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("first_lsn", &self.first_lsn())
            .field("last_lsn", &self.last_lsn())
            .finish()
    }
}

impl Reader {
    pub(crate) fn new(index: Arc<SharedIndex>) -> Reader {
        Reader { index }
    }

    /// The index this reader reads by (for [`crate::repair`]).
    pub(crate) fn shared_index(&self) -> &SharedIndex {
        &self.index
    }

    /// The first LSN the log holds.
    pub fn first_lsn(&self) -> Lsn {
        self.index.read().first_lsn()
    }

    /// The last LSN written.
    pub fn last_lsn(&self) -> Lsn {
        self.index.read().last_lsn()
    }

    /// The epoch the log assigns to `lsn`, or `None` if the log does not hold `lsn`. The
    /// answer comes from the epoch starts the log keeps in memory (built from the records as
    /// they were written or verified at open), not from the record's bytes, so it holds for a
    /// damaged record too: the epoch a peer's copy of it must carry. A binary search under
    /// the index's read lock.
    pub fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.index.read().epoch_at(lsn)
    }

    /// Verifies every record from `from` through `through` (or through the last record
    /// written when this is called, if lower) and returns the LSN of the first that fails its
    /// checks (FORMAT.md, "Record": length, CRC, kind and reserved bytes, the LSN its position
    /// implies, and the epoch the log assigns to that LSN), or `None` if all pass. Records not
    /// written yet are not looked at, so a record is never reported for being absent.
    ///
    /// The walk to `from` starts at the nearest index entry at or before it (one per
    /// [`crate::segment::INDEX_INTERVAL_BYTES`]) and verifies the records it passes: if one of
    /// them is damaged, the position of `from` cannot be established and that record's LSN,
    /// below `from`, is returned. Scrub from the log's first LSN to see every record.
    ///
    /// Reads through memory maps as [`Reader::iter_from`] does (no copy, no allocation per
    /// record: one per call for the epoch starts of the range) and may run while a writer
    /// appends. `Err` is for what is not damage: I/O, or `Error::NotInLog` when `from` is
    /// before the log (or the log was truncated in front of the scrub).
    ///
    /// # Correctness
    /// As for any read, no `truncate_suffix` may cut records in `from..=through` while this
    /// runs (keep `through` at or below the commit LSN, which is never cut).
    pub fn first_damaged(&self, from: Lsn, through: Lsn) -> Result<Option<Lsn>> {
        let (through, epoch_starts) = {
            let index = self.index.read();
            let through = through.min(index.last_lsn());
            if from > through {
                return Ok(None);
            }
            // The epochs of `from..=through`: the start at or before `from`, and every later
            // one up to `through`.
            let starts = &index.epoch_starts;
            let first = starts
                .partition_point(|s| s.first_lsn <= from)
                .saturating_sub(1);
            let last = starts.partition_point(|s| s.first_lsn <= through);
            (through, starts[first..last.max(first)].to_vec())
        };
        let mut records = self.iter_from(from)?;
        let mut next_start = 0usize;
        let mut epoch = None;
        while records.next_lsn() <= through {
            let lsn = records.next_lsn();
            while let Some(start) = epoch_starts.get(next_start) {
                if start.first_lsn > lsn {
                    break;
                }
                epoch = Some(start.epoch);
                next_start += 1;
            }
            match records.next_verified() {
                Ok(Some(found_epoch)) => {
                    if epoch.is_some_and(|epoch| epoch != found_epoch) {
                        return Ok(Some(lsn));
                    }
                }
                // Not written after all: the log was cut under us (see # Correctness).
                Ok(None) => return Ok(None),
                Err(Error::Corrupt { lsn, .. }) => return Ok(Some(lsn)),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Iterates records from `lsn` up to whatever is written when the iterator gets there.
    /// `lsn` may be one past the last record (the iterator then waits for nothing: it ends,
    /// and yields more if called again after further appends).
    pub fn iter_from(&self, lsn: Lsn) -> Result<Records> {
        let (first, last) = {
            let index = self.index.read();
            (index.first_lsn(), index.last_lsn())
        };
        if lsn < first || lsn > last.next() {
            return Err(Error::NotInLog { lsn, first, last });
        }
        Ok(Records {
            index: Arc::clone(&self.index),
            next: lsn,
            mapped: None,
        })
    }
}

/// The mapped part of one segment, and what the index said of it when last looked at.
/// A segment's mapping, owned by the [`Bytes`] handed out of it. When the last of them is
/// dropped the mapping goes to a thread of its own to be unmapped: `munmap` of a segment's
/// 64 MiB mapping took 7-11 ms on the benchmark machine (tmpfs, at the reader's move to the
/// next segment), a stall of whatever thread drops it, usually the node's core loop.
struct Mapping(Option<memmap2::Mmap>);

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(map) = self.0.take() {
            unmap_later(map);
        }
    }
}

/// Hands `map` to the unmapping thread (started at the first call), or unmaps it here if
/// that thread cannot be had.
fn unmap_later(map: memmap2::Mmap) {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::OnceLock;
    static UNMAPPER: OnceLock<Option<Sender<memmap2::Mmap>>> = OnceLock::new();
    let unmapper = UNMAPPER.get_or_init(|| {
        let (tx, rx) = channel::<memmap2::Mmap>();
        std::thread::Builder::new()
            .name("wal-unmap".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    if let Some(unmapper) = unmapper {
        // An error gives the mapping back, and dropping it unmaps it here.
        let _ = unmapper.send(map);
    }
}

struct Mapped {
    path: PathBuf,
    /// The segment's [`crate::log::SegmentEntry`] id when mapped: the same bytes while the
    /// index shows the same id.
    segment_id: u64,
    /// The whole mapping; only `..len` is read.
    bytes: Bytes,
    /// Bytes the index said were written.
    len: usize,
    /// Last LSN within `..len`.
    last_lsn: Lsn,
    /// The index's count of cuts when it said so; while it is unchanged, `..len` still holds
    /// records `..=last_lsn`, unchanged.
    cuts: u64,
    /// Offset of record `Records::next`.
    offset: usize,
}

/// An iterator over records; see [`Reader::iter_from`].
pub struct Records {
    index: Arc<SharedIndex>,
    next: Lsn,
    mapped: Option<Mapped>,
}

impl Records {
    /// The LSN the next record will have.
    pub fn next_lsn(&self) -> Lsn {
        self.next
    }

    /// Makes sure `self.mapped` covers `self.next` as the log is now, mapping or remapping
    /// as needed. Returns false when `next` is not written (yet, or again after a cut).
    #[inline]
    fn ensure_mapped(&mut self) -> Result<bool> {
        if let Some(mapped) = &self.mapped {
            // The hot path: one atomic load. Nothing was taken away from the log since the
            // index said `..=last_lsn` was written, so it still is, and still the same.
            if self.next <= mapped.last_lsn && self.index.cuts() == mapped.cuts {
                return Ok(true);
            }
        }
        self.remap()
    }

    /// The slow path of [`Records::ensure_mapped`]: look at the index again and follow the
    /// segment that holds `next`, map it, or seek in it.
    #[inline(never)]
    fn remap(&mut self) -> Result<bool> {
        // Held to the end: the log takes a segment out of the index before it cuts or
        // deletes its file, so while this is held the file at the entry's path is the one
        // the entry describes, at least `len` long.
        let index = self.index.read();
        let cuts = self.index.cuts();
        let Some(segment) = index.find(self.next) else {
            if self.next < index.first_lsn() {
                // The log was truncated in front of us, or replaced.
                return Err(Error::NotInLog {
                    lsn: self.next,
                    first: index.first_lsn(),
                    last: index.last_lsn(),
                });
            }
            // Not written yet, or cut and not written again yet. Whatever is mapped is looked
            // at again next time (its `cuts` or its `last_lsn` says so).
            return Ok(false);
        };
        let len = segment.len as usize;
        // The same bytes as mapped (the id changes with every cut), grown since and still
        // within the mapping: follow the tail without mapping again (the hot case of a
        // reader keeping up with appends).
        if let Some(mapped) = self.mapped.as_mut() {
            if mapped.segment_id == segment.id && len <= mapped.bytes.len() {
                assert!(
                    mapped.offset <= len,
                    "{}: reader at offset {} of an uncut segment written to {len}",
                    mapped.path.display(),
                    mapped.offset
                );
                mapped.len = len;
                mapped.last_lsn = segment.last_lsn;
                mapped.cuts = cuts;
                return Ok(true);
            }
        }
        // Continue from where we are in the same bytes, or seek with the sparse index (a
        // cut may have moved `next` to another offset, or another file).
        let (mut at_lsn, mut offset) = match &self.mapped {
            Some(m) if m.segment_id == segment.id => (self.next, m.offset),
            _ => {
                let (lsn, offset) = segment.seek(self.next);
                (lsn, offset as usize)
            }
        };
        let path = segment.path.clone();
        let file = File::open(&path).map_err(|e| Error::io(IoOp::Open, &path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(IoOp::Metadata, &path, e))?
            .len();
        if file_len < len as u64 {
            // Cut by someone other than the log.
            return Err(Error::Corrupt {
                path,
                offset: file_len,
                lsn: self.next,
                reason: Corruption::Truncated,
            });
        }
        // Map up to the segment size limit, past the end of the file, so that later appends
        // to this segment are readable through this same mapping.
        //
        // SAFETY: we only ever read below `len`, bytes the index says are written, hence
        // inside the file (touching a page wholly past the end of a file would fault), and
        // we look at the index again before reading on after any cut (`ensure_mapped`).
        // The file is only appended to past `len`; the log publishes a cut in the index
        // before it cuts the file, and never cuts a record a read is in progress on (see
        // `Wal::truncate_suffix`); deleted files stay mapped until unmapped.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(usize::try_from(index.map_len.max(file_len)).unwrap_or(usize::MAX))
                .map(&file)
        }
        .map_err(|e| Error::io(IoOp::Map, &path, e))?;
        let bytes = Bytes::from_owner(Mapping(Some(map)));
        // Walk forward from the index entry to `next`, verifying what we pass.
        while at_lsn < self.next {
            let (_, record_len) = decode_at(&path, &bytes[..len], offset, at_lsn)?;
            offset += record_len;
            at_lsn = at_lsn.next();
        }
        self.mapped = Some(Mapped {
            path,
            segment_id: segment.id,
            bytes,
            len,
            last_lsn: segment.last_lsn,
            cuts,
            offset,
        });
        Ok(true)
    }

    /// Verifies the next record and steps past it without handing it out (no slice of the
    /// mapping is taken): its epoch, or `None` when it is not written. A damaged record is
    /// `Error::Corrupt` naming its LSN (or that of a damaged record before it, on the walk
    /// from the index entry to it).
    fn next_verified(&mut self) -> Result<Option<Epoch>> {
        if !self.ensure_mapped()? {
            return Ok(None);
        }
        let Some(mapped) = self.mapped.as_mut() else {
            return Ok(None);
        };
        let (record, len) = decode_at(
            &mapped.path,
            &mapped.bytes[..mapped.len],
            mapped.offset,
            self.next,
        )?;
        let epoch = record.epoch;
        mapped.offset += len;
        self.next = self.next.next();
        Ok(Some(epoch))
    }

    /// Reads a run of consecutive records, all from one segment, starting at the next LSN,
    /// of at most `max_bytes` (but at least one record) and not past `last_lsn`. Returns
    /// `None` when the next record is not written yet. Every record is verified.
    pub fn next_batch(&mut self, max_bytes: usize, last_lsn: Lsn) -> Result<Option<Batch>> {
        if self.next > last_lsn || !self.ensure_mapped()? {
            return Ok(None);
        }
        let Some(mapped) = self.mapped.as_mut() else {
            return Ok(None);
        };
        let start = mapped.offset;
        let first_lsn = self.next;
        let mut last_epoch = Epoch::ZERO;
        while self.next <= last_lsn && self.next <= mapped.last_lsn {
            let (record, record_len) = decode_at(
                &mapped.path,
                &mapped.bytes[..mapped.len],
                mapped.offset,
                self.next,
            )?;
            if mapped.offset > start && mapped.offset + record_len - start > max_bytes {
                break;
            }
            last_epoch = record.epoch;
            mapped.offset += record_len;
            self.next = self.next.next();
        }
        Ok(Some(Batch {
            first_lsn,
            last_lsn: self.next.prev(),
            last_epoch,
            bytes: mapped.bytes.slice(start..mapped.offset),
        }))
    }
}

/// Decodes and checks the record at `offset`, which must have LSN `lsn`.
#[inline]
fn decode_at<'a>(
    path: &std::path::Path,
    bytes: &'a [u8],
    offset: usize,
    lsn: Lsn,
) -> Result<(crate::format::RecordRef<'a>, usize)> {
    let corrupt = |reason| Error::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        lsn,
        reason,
    };
    match decode_record(&bytes[offset..]) {
        Ok(Some((record, len))) => {
            if record.lsn != lsn {
                return Err(corrupt(Corruption::Misplaced {
                    expected: lsn,
                    found: record.lsn,
                }));
            }
            Ok((record, len))
        }
        Ok(None) => Err(corrupt(Corruption::Truncated)),
        Err(reason) => Err(corrupt(reason)),
    }
}

impl Iterator for Records {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        match self.ensure_mapped() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
        }
        let mapped = self.mapped.as_mut()?;
        let (lsn, epoch, kind, len) = match decode_at(
            &mapped.path,
            &mapped.bytes[..mapped.len],
            mapped.offset,
            self.next,
        ) {
            Ok((record, len)) => (record.lsn, record.epoch, record.kind, len),
            Err(e) => return Some(Err(e)),
        };
        let bytes = mapped.bytes.slice(mapped.offset..mapped.offset + len);
        mapped.offset += len;
        self.next = self.next.next();
        Some(Ok(Record {
            lsn,
            epoch,
            kind,
            bytes,
        }))
    }
}
