//! Repair in place: the records of this log that fail their checks are written again, at
//! the same offsets, with the same records fetched from a peer (DESIGN, "A corrupt record").
//! Finding them is [`Reader::first_damaged`]; the peer's copy of a record is the one with the
//! same LSN and epoch ([`Reader::epoch_at`] gives the epoch this log assigns to a damaged
//! LSN), which is byte for byte the same record (DESIGN invariant 3).
//!
//! [`rewrite`] only ever overwrites the extent of a damaged record, in place: it never
//! writes an intact record, never extends, cuts or creates a file, and never writes a byte
//! whose record it cannot place exactly. It does not fetch anything, decide what to repair,
//! or touch the log's index: the records it rewrites keep their LSNs, offsets and lengths.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{Corruption, Error, IoOp, Mismatch, Result};
use crate::format::{decode_record, RecordRef, VerifiedRecords};
use crate::log::{Index, SegmentEntry};
use crate::reader::Reader;
use crate::types::Lsn;

/// What [`rewrite`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repaired {
    /// Records whose bytes on disk differed from the offered ones and were written again.
    pub rewritten: u64,
    /// Records whose bytes on disk were already the offered ones, left alone.
    pub already_intact: u64,
}

/// One record of the run, placed in its segment.
struct Placed {
    lsn: Lsn,
    /// Its offset in the segment.
    offset: u64,
    /// Its bytes in the run.
    run: Range<usize>,
    /// The bytes on disk differ: write it.
    write: bool,
}

/// The records of the run that lie in one segment.
struct SegmentPlan {
    path: PathBuf,
    placed: Vec<Placed>,
}

/// Writes `records`, a run of consecutive records that should be byte for byte the ones this
/// log holds at their LSNs (typically fetched from a peer that holds them with the same
/// epochs), over those of this log's records that differ, in place.
///
/// Each record is placed first, and nothing is written unless every record of the run is:
/// its offset is found by walking from the nearest index entry (the records walked over must
/// be intact: otherwise `Error::Corrupt` names the first damaged one, which the caller adds to
/// the run); its epoch must be the one this log assigns to its LSN; its extent must end within
/// the segment's written bytes, exactly at the end of the segment when it is the segment's last
/// record, or else where the next record, intact, starts (the sparse index is checked too);
/// and a record on disk that passes every check is never overwritten, even if it differs. A
/// record that cannot be placed so is refused with `Error::RepairMismatch` (path, offset, LSN,
/// [`Mismatch`]). Then each record whose bytes differ is written with `pwrite` through a
/// separate descriptor, each file touched is fdatasync'd once, and the run is read back
/// through a fresh iterator and compared.
///
/// # Correctness
/// The caller must not repair records above its commit LSN: a suffix truncation may cut such
/// a record while the repair runs, and the log may then hold another record at that LSN (the
/// epoch check catches one of another epoch, not a cut that moved offsets under a plan). The
/// committed records are never cut, and the writer only appends after the written bytes, so
/// this is safe to run while the writer appends to the last segment. Readers map segments
/// shared (`MAP_SHARED`, see [`crate::reader`]), so they see the new bytes: a read of a record
/// while it is rewritten may fail its CRC, as it did before.
///
/// # Durability
/// 1. Place every record of the run, writing nothing (an error here changed nothing).
/// 2. `pwrite` each differing record over its own extent, which lies within the segment's
///    written bytes: no file changes length.
/// 3. fdatasync each file touched, once.
/// 4. Read the run back and compare.
///
/// A crash before 3 returns leaves each extent written in 2 holding its old bytes, the new
/// ones, or a mix of both; a mix fails the record's CRC, so the record is damaged as before,
/// and the next scrub or the next open finds it again (FORMAT.md, "Recovery at open"). Nothing
/// else changes: no other record, no file length, no file. This assumes of the disk what
/// appends assume (FORMAT.md, "What we assume of the filesystem and the media"): a crash does
/// not change bytes that were synced, here the intact records around the extent. A failed
/// fdatasync is returned as `Error::Io`; as for the log's own fsyncs, do not retry it and
/// trust the answer: the rewritten records may be damaged again after a crash.
pub fn rewrite(reader: &Reader, records: &VerifiedRecords) -> Result<Repaired> {
    let run: &[u8] = records.bytes();
    let mut repaired = Repaired::default();
    let mut touched: Vec<(PathBuf, File)> = Vec::new();
    let plans = {
        // Held while placing and writing: the log takes written bytes away (a cut, a deleted
        // segment) only after publishing it under the write lock, and appends only past the
        // written length, so while this is held every byte the index says is written is in
        // its file and stays as it is (`SharedIndex`). Not held over the fdatasyncs.
        let index = reader.shared_index().read();
        let (first, last) = (index.first_lsn(), index.last_lsn());
        for lsn in [records.first_lsn(), records.last_lsn()] {
            if lsn < first || lsn > last {
                return Err(Error::NotInLog { lsn, first, last });
            }
        }
        let mut run_records = records
            .iter()
            .scan(0usize, |at, record| {
                let start = *at;
                *at += record.encoded_len();
                Some((record, start..*at))
            })
            .peekable();
        // 1.
        let mut plans = Vec::new();
        while let Some((record, _)) = run_records.peek() {
            let lsn = record.lsn;
            let Some(segment) = index.find(lsn) else {
                return Err(Error::NotInLog { lsn, first, last });
            };
            plans.push(rewrite_place(&index, segment, run, &mut run_records)?);
        }
        // 2.
        for plan in &plans {
            if !plan.placed.iter().any(|p| p.write) {
                continue;
            }
            let file = OpenOptions::new()
                .write(true)
                .create(false)
                .truncate(false)
                .open(&plan.path)
                .map_err(|e| Error::io(IoOp::Open, &plan.path, e))?;
            for placed in plan.placed.iter().filter(|p| p.write) {
                file.write_all_at(&run[placed.run.clone()], placed.offset)
                    .map_err(|e| Error::io(IoOp::Write, &plan.path, e))?;
                repaired.rewritten += 1;
            }
            touched.push((plan.path.clone(), file));
        }
        plans
    };
    repaired.already_intact = records.count() - repaired.rewritten;
    if touched.is_empty() {
        return Ok(repaired);
    }
    // 3.
    for (path, file) in &touched {
        file.sync_data()
            .map_err(|e| Error::io(IoOp::Fsync, path, e))?;
    }
    // 4.
    let mut back = reader.iter_from(records.first_lsn())?;
    for plan in &plans {
        for placed in &plan.placed {
            let same = match back.next() {
                Some(Ok(record)) => {
                    record.lsn == placed.lsn && record.encoded()[..] == run[placed.run.clone()]
                }
                Some(Err(e)) => return Err(e),
                None => false,
            };
            if !same {
                return Err(Error::RepairMismatch {
                    path: plan.path.clone(),
                    offset: placed.offset,
                    lsn: placed.lsn,
                    reason: Mismatch::ReadBack,
                });
            }
        }
    }
    Ok(repaired)
}

/// Places the records of the run that lie in `segment`, taking them from `run_records`,
/// and checks each against the bytes on disk (see [`rewrite`]). Writes nothing.
fn rewrite_place<'r>(
    index: &Index,
    segment: &SegmentEntry,
    run: &[u8],
    run_records: &mut std::iter::Peekable<impl Iterator<Item = (RecordRef<'r>, Range<usize>)>>,
) -> Result<SegmentPlan> {
    let path = &segment.path;
    let Some((first, _)) = run_records.peek() else {
        return Ok(SegmentPlan {
            path: path.clone(),
            placed: Vec::new(),
        });
    };
    let first = first.lsn;
    let file = File::open(path).map_err(|e| Error::io(IoOp::Open, path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(IoOp::Metadata, path, e))?
        .len();
    let written = segment.len;
    if file_len < written {
        // Cut by someone other than the log: the records past its end cannot be placed, and a
        // repair never extends a file.
        return Err(Error::Corrupt {
            path: path.clone(),
            offset: file_len,
            lsn: first,
            reason: Corruption::Truncated,
        });
    }
    let map_len = usize::try_from(written).map_err(|_| Error::Corrupt {
        path: path.clone(),
        offset: 0,
        lsn: first,
        reason: Corruption::LenTooLarge {
            len: written,
            max: usize::MAX as u64,
        },
    })?;
    // SAFETY: a shared, read-only map of the bytes the index says are written, all inside the
    // file (checked above); the caller holds the index's read lock, so the log cuts no file
    // while the map is read, and the map is dropped before this returns.
    let map = unsafe { memmap2::MmapOptions::new().len(map_len).map(&file) }
        .map_err(|e| Error::io(IoOp::Map, path, e))?;
    let bytes: &[u8] = &map;
    // Walk from the nearest index entry to the first record of the run, over intact records.
    let (mut at_lsn, offset) = segment.seek(first);
    let mut offset = offset as usize;
    while at_lsn < first {
        match decode_record(&bytes[offset..]) {
            Ok(Some((record, len))) if record.lsn == at_lsn => {
                offset += len;
                at_lsn = at_lsn.next();
            }
            found => {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    offset: offset as u64,
                    lsn: at_lsn,
                    reason: not_the_record(found, at_lsn),
                })
            }
        }
    }
    let mut placed: Vec<Placed> = Vec::new();
    while let Some((record, range)) = run_records.next_if(|(r, _)| r.lsn <= segment.last_lsn) {
        let lsn = record.lsn;
        let mismatch = |reason| Error::RepairMismatch {
            path: path.clone(),
            offset: offset as u64,
            lsn,
            reason,
        };
        let ours = index.epoch_at(lsn);
        if let Some(ours) = ours {
            if ours != record.epoch {
                return Err(mismatch(Mismatch::Epoch {
                    ours,
                    offered: record.epoch,
                }));
            }
        }
        if let Ok(at) = segment.index.binary_search_by_key(&lsn, |&(l, _)| l) {
            let indexed = segment.index[at].1;
            if indexed != offset as u64 {
                return Err(mismatch(Mismatch::Indexed { indexed }));
            }
        }
        let end = offset + range.len();
        if end as u64 > written {
            return Err(mismatch(Mismatch::PastWritten {
                end: end as u64,
                written,
            }));
        }
        let offered = &run[range.clone()];
        let write = bytes[offset..end] != *offered;
        if write {
            // A record that passes every check the scrub makes is not damaged: never
            // overwrite it. (One with another LSN or epoch under a right CRC is damaged.)
            if let Ok(Some((on_disk, _))) = decode_record(&bytes[offset..]) {
                if on_disk.lsn == lsn && Some(on_disk.epoch) == ours {
                    return Err(mismatch(Mismatch::IntactDiffers));
                }
            }
        }
        placed.push(Placed {
            lsn,
            offset: offset as u64,
            run: range,
            write,
        });
        offset = end;
    }
    // The extent of the last record placed ends where the segment ends, or where the next
    // record starts.
    let last = placed
        .last()
        .expect("the first record of the run lies in this segment");
    let mismatch = |reason| Error::RepairMismatch {
        path: path.clone(),
        offset: last.offset,
        lsn: last.lsn,
        reason,
    };
    if last.lsn == segment.last_lsn {
        if offset as u64 != written {
            return Err(mismatch(Mismatch::SegmentEnd {
                end: offset as u64,
                segment_end: written,
            }));
        }
    } else {
        let next = last.lsn.next();
        match decode_record(&bytes[offset..]) {
            Ok(Some((record, _))) if record.lsn == next => {}
            found => {
                return Err(mismatch(Mismatch::NextRecord {
                    end: offset as u64,
                    found: not_the_record(found, next),
                }))
            }
        }
    }
    Ok(SegmentPlan {
        path: path.clone(),
        placed,
    })
}

/// Why what was decoded where record `expected` should start is not that record.
fn not_the_record(
    found: std::result::Result<Option<(RecordRef<'_>, usize)>, Corruption>,
    expected: Lsn,
) -> Corruption {
    match found {
        Ok(Some((record, _))) => Corruption::Misplaced {
            expected,
            found: record.lsn,
        },
        Ok(None) => Corruption::Truncated,
        Err(reason) => reason,
    }
}
