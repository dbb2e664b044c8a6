//! Reading records from any LSN. The index (shared with the [`crate::Wal`] that writes it)
//! finds the segment and a nearby offset; the segment is memory-mapped and records are handed
//! out as [`bytes::Bytes`] slices of the mapping: no copy, and every record's CRC and LSN are
//! checked before it is handed out (DESIGN invariant 5).
//!
//! A reader sees what the log has written, as it is written: at the end of what it has mapped
//! it looks at the index again and maps further. It never looks past the written length, so
//! it never sees half a record from a concurrent append.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::error::{Corruption, Error, IoOp, Result};
use crate::format::{decode_record, RecordKind, RECORD_HEADER_LEN};
use crate::log::Index;
use crate::types::{Epoch, Lsn};

/// A record read from the log: its header fields and its encoded bytes (on-disk form, which
/// is also the wire form), sharing the segment's memory map.
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
    index: Arc<RwLock<Index>>,
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
    pub(crate) fn new(index: Arc<RwLock<Index>>) -> Reader {
        Reader { index }
    }

    /// The first LSN the log holds.
    pub fn first_lsn(&self) -> Lsn {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .first_lsn()
    }

    /// The last LSN written.
    pub fn last_lsn(&self) -> Lsn {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .last_lsn()
    }

    /// Iterates records from `lsn` up to whatever is written when the iterator gets there.
    /// `lsn` may be one past the last record (the iterator then waits for nothing: it ends,
    /// and yields more if called again after further appends).
    pub fn iter_from(&self, lsn: Lsn) -> Result<Records> {
        let (first, last) = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
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

/// The mapped part of one segment.
struct Mapped {
    path: PathBuf,
    first_lsn: Lsn,
    /// The whole mapping; only `..len` is read.
    bytes: Bytes,
    /// Bytes known written when mapped.
    len: usize,
    /// Last LSN within `..len`.
    last_lsn: Lsn,
    /// Offset of record `Records::next`.
    offset: usize,
}

/// An iterator over records; see [`Reader::iter_from`].
pub struct Records {
    index: Arc<RwLock<Index>>,
    next: Lsn,
    mapped: Option<Mapped>,
}

impl Records {
    /// The LSN the next record will have.
    pub fn next_lsn(&self) -> Lsn {
        self.next
    }

    /// Makes sure `self.mapped` covers `self.next`, mapping or remapping as needed. Returns
    /// false when `next` is not written yet.
    #[inline]
    fn ensure_mapped(&mut self) -> Result<bool> {
        if let Some(mapped) = &self.mapped {
            if self.next <= mapped.last_lsn {
                return Ok(true);
            }
        }
        self.remap()
    }

    /// The slow path of [`Records::ensure_mapped`]: look at the index again and map the
    /// segment that holds `next` (or more of the current one).
    #[inline(never)]
    fn remap(&mut self) -> Result<bool> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let Some(segment) = index.find(self.next) else {
            if self.next < index.first_lsn() {
                // The log was truncated in front of us.
                return Err(Error::NotInLog {
                    lsn: self.next,
                    first: index.first_lsn(),
                    last: index.last_lsn(),
                });
            }
            return Ok(false);
        };
        let (path, first_lsn, len, last_lsn) = (
            segment.path.clone(),
            segment.first_lsn,
            segment.len as usize,
            segment.last_lsn,
        );
        // The same segment, grown since we mapped it, and still within the mapping: follow
        // the tail without mapping again (the hot case of a reader keeping up with appends).
        if let Some(mapped) = self.mapped.as_mut() {
            if mapped.path == path
                && mapped.first_lsn == first_lsn
                && mapped.offset <= len
                && len <= mapped.bytes.len()
            {
                mapped.len = len;
                mapped.last_lsn = last_lsn;
                return Ok(self.next <= last_lsn);
            }
        }
        // Continue from where we are in the same segment, or seek with the sparse index.
        let (mut at_lsn, mut offset) = match &self.mapped {
            Some(m) if m.path == path && m.first_lsn == first_lsn && m.offset <= len => {
                (self.next, m.offset)
            }
            _ => {
                let (lsn, offset) = segment.seek(self.next);
                (lsn, offset as usize)
            }
        };
        let map_len = index.map_len;
        drop(index);
        let file = File::open(&path).map_err(|e| Error::io(IoOp::Open, &path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(IoOp::Metadata, &path, e))?
            .len();
        if file_len < len as u64 {
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
        // inside the file (touching a page wholly past the end of a file would fault). The
        // file is only appended to past `len`; the log cuts a file only above an LSN no
        // reader may be positioned past (see `Wal::truncate_suffix`); deleted files stay
        // mapped until unmapped.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(usize::try_from(map_len.max(file_len)).unwrap_or(usize::MAX))
                .map(&file)
        }
        .map_err(|e| Error::io(IoOp::Map, &path, e))?;
        let bytes = Bytes::from_owner(map);
        // Walk forward from the index entry to `next`, verifying what we pass.
        while at_lsn < self.next {
            let (_, record_len) = decode_at(&path, &bytes[..len], offset, at_lsn)?;
            offset += record_len;
            at_lsn = at_lsn.next();
        }
        self.mapped = Some(Mapped {
            path,
            first_lsn,
            bytes,
            len,
            last_lsn,
            offset,
        });
        Ok(true)
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
