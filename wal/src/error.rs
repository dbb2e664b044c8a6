//! The crate's one error type. Variants are what a caller acts on; each carries the file and,
//! for damaged data, the offset and LSN an operator needs to find it.

use std::fmt;
use std::path::PathBuf;

use crate::types::{Epoch, Lsn};

/// What the failed I/O was doing, so an error reads "fsync /data/wal/…0001.wal: …".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Open,
    Create,
    Read,
    Write,
    Fsync,
    Rename,
    Remove,
    Truncate,
    ReadDir,
    Map,
    Metadata,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Open => "open",
            IoOp::Create => "create",
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Fsync => "fsync",
            IoOp::Rename => "rename",
            IoOp::Remove => "remove",
            IoOp::Truncate => "truncate",
            IoOp::ReadDir => "read directory",
            IoOp::Map => "mmap",
            IoOp::Metadata => "stat",
        })
    }
}

/// Why a record or header was judged damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corruption {
    /// The file ends inside a header or payload.
    Truncated,
    /// The stored CRC does not match the bytes.
    Crc { stored: u32, computed: u32 },
    /// The length field exceeds the format's limit.
    LenTooLarge { len: u64, max: u64 },
    /// A reserved byte is non-zero or a kind is unknown.
    BadField(&'static str),
    /// A record's LSN is not the one its position implies.
    Misplaced { expected: Lsn, found: Lsn },
    /// A record's epoch is zero or lower than the record before it.
    EpochOrder { previous: u64, found: u64 },
    /// A segment's header names another first LSN than its file name.
    NameMismatch { name_lsn: Lsn, header_lsn: Lsn },
    /// Bytes follow the end of a snapshot.
    TrailingBytes,
    /// A snapshot's trailer disagrees with its header or body.
    Trailer(&'static str),
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::Truncated => f.write_str("file ends inside a record"),
            Corruption::Crc { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            Corruption::LenTooLarge { len, max } => {
                write!(f, "length {len} exceeds the limit of {max}")
            }
            Corruption::BadField(what) => write!(f, "bad {what}"),
            Corruption::Misplaced { expected, found } => {
                write!(f, "record says lsn {found} where lsn {expected} belongs")
            }
            Corruption::EpochOrder { previous, found } => {
                write!(f, "epoch {found} after epoch {previous}")
            }
            Corruption::NameMismatch {
                name_lsn,
                header_lsn,
            } => write!(
                f,
                "header says first lsn {header_lsn} but the file name says {name_lsn}"
            ),
            Corruption::TrailingBytes => f.write_str("bytes after the end of the snapshot"),
            Corruption::Trailer(what) => write!(f, "trailer: {what}"),
        }
    }
}

/// Why a record offered to [`crate::repair::rewrite`] was refused: it is not, or cannot be
/// shown to be, the record the log holds at its LSN. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The log assigns another epoch to this LSN, so the offered record is another record
    /// (only the same LSN and epoch imply the same bytes: DESIGN invariant 3).
    Epoch { ours: Epoch, offered: Epoch },
    /// The offered record would end at `end`, past the `written` bytes of its segment (a
    /// repair never extends a file).
    PastWritten { end: u64, written: u64 },
    /// The offered record would end at `end`, but the segment's last record ends at
    /// `segment_end`: ours has another length.
    SegmentEnd { end: u64, segment_end: u64 },
    /// The offered record would end at `end`, where the record after it starts, but the bytes
    /// there are not that record (`found`): either ours has another length, or the record
    /// after it is damaged too (repair a run that includes it).
    NextRecord { end: u64, found: Corruption },
    /// The segment's index puts the record at `indexed`, not where the run does.
    Indexed { indexed: u64 },
    /// The record on disk passes every check but its bytes differ from the offered ones:
    /// two records with the same LSN and epoch, which invariant 3 rules out. An intact record
    /// is never overwritten.
    IntactDiffers,
    /// After the rewrite, the record read back is not the offered bytes.
    ReadBack,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Epoch { ours, offered } => write!(
                f,
                "the log holds epoch {ours} at this lsn, the offered record epoch {offered}"
            ),
            Mismatch::PastWritten { end, written } => write!(
                f,
                "it would end at offset {end}, past the {written} bytes written in the segment"
            ),
            Mismatch::SegmentEnd { end, segment_end } => write!(
                f,
                "it would end at offset {end} but the segment's last record ends at {segment_end}"
            ),
            Mismatch::NextRecord { end, found } => write!(
                f,
                "it would end at offset {end}, where the next record is not found ({found}); \
                 the lengths differ or the next record is damaged too"
            ),
            Mismatch::Indexed { indexed } => {
                write!(
                    f,
                    "the segment's index puts this record at offset {indexed}"
                )
            }
            Mismatch::IntactDiffers => {
                f.write_str("the record on disk is intact and differs from the offered one")
            }
            Mismatch::ReadBack => f.write_str("the bytes read back after the rewrite differ"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}", .path.display())]
    Io {
        op: IoOp,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: corrupt data at offset {offset} (lsn {lsn}): {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        lsn: Lsn,
        reason: Corruption,
    },
    #[error("{}: not an understudy {expected} file (magic {found:02x?})", .path.display())]
    BadMagic {
        path: PathBuf,
        expected: &'static str,
        found: [u8; 8],
    },
    /// The last record of the last segment is damaged in a way a crash may also leave (a
    /// complete record failing its CRC, zeroes, ...) but that is no proof of a torn write: it
    /// may be a record this node acknowledged. Returned instead of cutting it under
    /// [`crate::Damage::CutTornOnly`]; nothing was changed.
    #[error("{}: the last record, at offset {offset} (lsn {lsn}), is damaged and may have been acknowledged; nothing was cut", .path.display())]
    SuspectTail {
        path: PathBuf,
        offset: u64,
        lsn: Lsn,
    },
    /// A record offered for a repair in place is not the one the log holds at `lsn`, or
    /// cannot be shown to be; nothing was written.
    #[error("{}: record offered for lsn {lsn} at offset {offset} does not fit the log: {reason}", .path.display())]
    RepairMismatch {
        path: PathBuf,
        offset: u64,
        lsn: Lsn,
        reason: Mismatch,
    },
    #[error("{}: format version {found} is not supported (this build reads {supported})", .path.display())]
    UnsupportedVersion {
        path: PathBuf,
        found: u16,
        supported: u16,
    },
    #[error("{}: segment starts at lsn {found} but the log before it ends at lsn {expected_prev}", .path.display())]
    Gap {
        path: PathBuf,
        expected_prev: Lsn,
        found: Lsn,
    },
    #[error("{}: unexpected file in a log directory; move it away (nothing was deleted)", .path.display())]
    ForeignFile { path: PathBuf },
    #[error("record payload of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge { len: u64, max: u64 },
    #[error("record with lsn {found} does not follow the log's last lsn {last}")]
    OutOfOrder { last: Lsn, found: Lsn },
    #[error("record bytes received are invalid: {reason}")]
    BadRecord { reason: Corruption },
    #[error("lsn {lsn} is not in the log (it holds {first}..={last})")]
    NotInLog { lsn: Lsn, first: Lsn, last: Lsn },
    /// A snapshot chunk was offered, or a resume asked for, at a body offset that is not the
    /// chunk boundary `expected` (resume a transfer there).
    #[error("{}: body offset {found} is not a chunk boundary (resume at {expected})", .path.display())]
    ChunkOffset {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("an earlier write or fsync failed; restart the node")]
    Poisoned,
}

impl Error {
    pub(crate) fn io(op: IoOp, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
