//! Snapshot files (FORMAT.md, "Snapshot file"): a header, the body as a sequence of
//! checksummed chunks, and a trailer, written and verified as streams.
//!
//! This module owns the byte layout of a snapshot and the files in the snapshot directory:
//! [`SnapshotWriter`] (stream a body into `<lsn:020>.snap.tmp`, then install it atomically),
//! [`SnapshotReader`] (stream it back, verifying every chunk before handing it out),
//! [`list`], [`verify`], [`remove_temps`], and the plain decoders [`decode_header`],
//! [`decode_chunk`] and [`decode_trailer`] that the reader, a network receiver and a fuzz
//! target share.
//!
//! It does not decide when to take a snapshot, which snapshots to keep or delete, or what the
//! body means (that is the application's state). Memory is bounded: the writer holds one chunk
//! buffer, the reader one chunk at a time; neither ever holds a whole body.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use crate::error::{Corruption, Error, IoOp, Result};
use crate::fs;
use crate::types::{Epoch, Lsn};

/// `USTDYSNP`: the first 8 bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"USTDYSNP";
/// `SNPE`: the last 4 bytes of a snapshot file.
pub const SNAPSHOT_MAGIC_END: [u8; 4] = *b"SNPE";
/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u16 = 1;
/// Length of the snapshot header.
pub const SNAPSHOT_HEADER_LEN: usize = 48;
/// Length of a chunk's header (len, crc) in front of its data.
pub const SNAPSHOT_CHUNK_HEADER_LEN: usize = 8;
/// Length of the trailer, which starts with the end marker (a chunk length of 0).
pub const SNAPSHOT_TRAILER_LEN: usize = 24;
/// The largest chunk data length a reader accepts.
pub const SNAPSHOT_CHUNK_LEN_MAX: usize = 1024 * 1024;
/// The chunk data length [`SnapshotWriter::write`] cuts the body into (the last chunk may be
/// shorter). Small enough to keep a transfer's unit of retry cheap, large enough that the
/// 8-byte chunk header costs nothing.
pub const SNAPSHOT_CHUNK_LEN: usize = 256 * 1024;

const _: () = assert!(SNAPSHOT_CHUNK_LEN >= 1);
const _: () = assert!(SNAPSHOT_CHUNK_LEN <= SNAPSHOT_CHUNK_LEN_MAX);
// A chunk length is a u32 on disk.
const _: () = assert!(SNAPSHOT_CHUNK_LEN_MAX <= u32::MAX as usize);
// The trailer starts like a chunk header (len, crc), so a reader can tell them apart by len.
const _: () = assert!(SNAPSHOT_TRAILER_LEN >= SNAPSHOT_CHUNK_HEADER_LEN);

const SNAPSHOT_SUFFIX: &str = ".snap";
const SNAPSHOT_TMP_SUFFIX: &str = ".snap.tmp";
/// File names are the LSN in this many decimal digits (FORMAT.md, "Directory layout").
const SNAPSHOT_NAME_DIGITS: usize = 20;

/// A snapshot file's header fields (FORMAT.md, "Snapshot file").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The last LSN whose effect the snapshot contains (≥ 1).
    pub lsn: Lsn,
    /// The epoch of the record at `lsn` (≥ 1).
    pub epoch: Epoch,
    /// Total body bytes, the sum of the chunk lengths.
    pub body_len: u64,
}

impl SnapshotHeader {
    /// Encodes the 48-byte header.
    pub fn encode(&self) -> [u8; SNAPSHOT_HEADER_LEN] {
        // Format (FORMAT.md, "Snapshot file"): { magic: [u8; 8], version: u16, reserved: u16,
        // reserved: u32, lsn: u64, epoch: u64, body_len: u64, crc: u32 = crc32(bytes 0..40),
        // reserved: u32 }
        let mut bytes = [0u8; SNAPSHOT_HEADER_LEN];
        bytes[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        bytes[8..10].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.lsn.get().to_le_bytes());
        bytes[24..32].copy_from_slice(&self.epoch.get().to_le_bytes());
        bytes[32..40].copy_from_slice(&self.body_len.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..40]);
        bytes[40..44].copy_from_slice(&crc.to_le_bytes());
        bytes
    }
}

/// The trailer's fields, as decoded; [`SnapshotReader`] compares them with the header and
/// with what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTrailer {
    pub body_len: u64,
    pub body_crc: u32,
}

impl SnapshotTrailer {
    /// Encodes the 24-byte trailer.
    pub fn encode(&self) -> [u8; SNAPSHOT_TRAILER_LEN] {
        // Format (FORMAT.md, "Snapshot file"): { len: u32 = 0, crc: u32 = crc32(bytes 8..24),
        // body_len: u64, body_crc: u32, magic_end: [u8; 4] }
        let mut bytes = [0u8; SNAPSHOT_TRAILER_LEN];
        bytes[8..16].copy_from_slice(&self.body_len.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.body_crc.to_le_bytes());
        bytes[20..24].copy_from_slice(&SNAPSHOT_MAGIC_END);
        let crc = crc32fast::hash(&bytes[8..24]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        bytes
    }
}

/// An installed snapshot, as [`list`], [`verify`] and [`SnapshotWriter::finish`] report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub body_len: u64,
}

/// One verified chunk of a snapshot body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The body offset of `data`'s first byte.
    pub offset: u64,
    /// The chunk's data (`raw` without its 8-byte header).
    pub data: Bytes,
    /// The chunk's bytes as on disk, header included, to ship as they are: the receiver
    /// verifies them with [`decode_chunk`] at the offset it expects.
    pub raw: Bytes,
}

/// The file name of the snapshot covering `..=lsn`: `<lsn:020>.snap`.
pub fn file_name(lsn: Lsn) -> String {
    format!("{:020}{SNAPSHOT_SUFFIX}", lsn.get())
}

/// The LSN a snapshot file name stands for, if `name` is `<20 digits>.snap`.
pub fn parse_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    parse_digits(digits)
}

fn parse_digits(digits: &str) -> Option<Lsn> {
    if digits.len() != SNAPSHOT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Twenty digits can exceed u64::MAX; such a name is not ours.
    digits.parse::<u64>().ok().map(Lsn)
}

/// The CRC of a chunk: CRC-32 of its body offset (8 bytes, LE) followed by its data.
pub fn chunk_crc(offset: u64, data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(data);
    hasher.finalize()
}

/// The 8-byte header of the chunk holding `data` at body `offset`.
///
/// Panics if `data` is empty or longer than [`SNAPSHOT_CHUNK_LEN_MAX`] (a bug in the caller).
pub fn encode_chunk_header(offset: u64, data: &[u8]) -> [u8; SNAPSHOT_CHUNK_HEADER_LEN] {
    assert!(
        !data.is_empty(),
        "snapshot chunk at body offset {offset} is empty"
    );
    assert!(
        data.len() <= SNAPSHOT_CHUNK_LEN_MAX,
        "snapshot chunk of {} bytes exceeds the limit of {SNAPSHOT_CHUNK_LEN_MAX}",
        data.len()
    );
    // Format (FORMAT.md, "Snapshot file"): { len: u32, crc: u32 = crc32(offset_le_u64 ++ data) }
    let mut bytes = [0u8; SNAPSHOT_CHUNK_HEADER_LEN];
    bytes[0..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
    bytes[4..8].copy_from_slice(&chunk_crc(offset, data).to_le_bytes());
    bytes
}

/// Decodes a snapshot header from the start of `bytes`. `path` only names the file in errors.
///
/// `Ok(None)` means `bytes` is shorter than the header and no check has failed yet. Checks,
/// in order: magic (`Error::BadMagic`, as soon as 8 bytes are there), version
/// (`Error::UnsupportedVersion`), CRC, reserved bytes, `lsn ≥ 1`, `epoch ≥ 1`
/// (`Error::Corrupt`). Never panics, whatever the bytes.
pub fn decode_header(bytes: &[u8], path: &Path) -> Result<Option<SnapshotHeader>> {
    let corrupt = |offset: u64, reason: Corruption| Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        lsn: Lsn::ZERO,
        reason,
    };

    if let Some(magic) = bytes.first_chunk::<8>() {
        if *magic != SNAPSHOT_MAGIC {
            return Err(Error::BadMagic {
                path: path.to_path_buf(),
                expected: "snapshot",
                found: *magic,
            });
        }
    }
    if bytes.len() >= 10 {
        let version = u16::from_le_bytes(field(bytes, 8));
        if version != SNAPSHOT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: SNAPSHOT_VERSION,
            });
        }
    }
    let Some(bytes) = bytes.first_chunk::<SNAPSHOT_HEADER_LEN>() else {
        return Ok(None);
    };

    let stored = u32::from_le_bytes(field(bytes, 40));
    let computed = crc32fast::hash(&bytes[0..40]);
    if stored != computed {
        return Err(corrupt(40, Corruption::Crc { stored, computed }));
    }
    if field::<2>(bytes, 10) != [0; 2] || field::<4>(bytes, 12) != [0; 4] {
        return Err(corrupt(10, Corruption::BadField("reserved bytes 10..16")));
    }
    if field::<4>(bytes, 44) != [0; 4] {
        return Err(corrupt(44, Corruption::BadField("reserved bytes 44..48")));
    }
    let header = SnapshotHeader {
        lsn: Lsn(u64::from_le_bytes(field(bytes, 16))),
        epoch: Epoch(u64::from_le_bytes(field(bytes, 24))),
        body_len: u64::from_le_bytes(field(bytes, 32)),
    };
    if header.lsn == Lsn::ZERO {
        return Err(corrupt(16, Corruption::BadField("snapshot lsn 0")));
    }
    if header.epoch == Epoch::ZERO {
        return Err(corrupt(24, Corruption::BadField("snapshot epoch 0")));
    }
    Ok(Some(header))
}

/// Decodes one chunk from the start of `bytes`, which must sit at body offset
/// `expected_offset`; returns the bytes consumed (header and data) and the data.
///
/// `Ok(None)` means more bytes are needed. The length is checked as soon as its 4 bytes are
/// there, before the data is waited for, so a receiver never buffers more than
/// [`SNAPSHOT_CHUNK_LEN_MAX`] for one chunk. A length of 0 (the trailer's end marker) is an
/// error here: look at the length first, or use [`decode_trailer`]. Because the CRC covers
/// the offset, a chunk from another position fails with `Corruption::Crc`. Never panics.
pub fn decode_chunk(
    bytes: &[u8],
    expected_offset: u64,
) -> Result<Option<(usize, &[u8])>, Corruption> {
    let Some(len) = bytes.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len == 0 {
        return Err(Corruption::BadField(
            "chunk length 0 (the end marker) where a chunk belongs",
        ));
    }
    if len > SNAPSHOT_CHUNK_LEN_MAX {
        return Err(Corruption::LenTooLarge {
            len: len as u64,
            max: SNAPSHOT_CHUNK_LEN_MAX as u64,
        });
    }
    let consumed = SNAPSHOT_CHUNK_HEADER_LEN + len;
    if bytes.len() < consumed {
        return Ok(None);
    }
    let stored = u32::from_le_bytes(field(bytes, 4));
    let data = &bytes[SNAPSHOT_CHUNK_HEADER_LEN..consumed];
    let computed = chunk_crc(expected_offset, data);
    if stored != computed {
        return Err(Corruption::Crc { stored, computed });
    }
    Ok(Some((consumed, data)))
}

/// Decodes the trailer from the start of `bytes`. `Ok(None)` means more bytes are needed.
///
/// Checks the end marker, the trailer CRC and `magic_end`; comparing `body_len` and
/// `body_crc` with the header and the body is the caller's part. Never panics.
pub fn decode_trailer(bytes: &[u8]) -> Result<Option<SnapshotTrailer>, Corruption> {
    if let Some(len) = bytes.first_chunk::<4>() {
        if *len != [0; 4] {
            return Err(Corruption::Trailer("end marker is not 0"));
        }
    }
    let Some(bytes) = bytes.first_chunk::<SNAPSHOT_TRAILER_LEN>() else {
        return Ok(None);
    };
    let stored = u32::from_le_bytes(field(bytes, 4));
    let computed = crc32fast::hash(&bytes[8..24]);
    if stored != computed {
        return Err(Corruption::Crc { stored, computed });
    }
    if field::<4>(bytes, 20) != SNAPSHOT_MAGIC_END {
        return Err(Corruption::Trailer("magic_end is not SNPE"));
    }
    Ok(Some(SnapshotTrailer {
        body_len: u64::from_le_bytes(field(bytes, 8)),
        body_crc: u32::from_le_bytes(field(bytes, 16)),
    }))
}

/// The `N` bytes at `offset`. Callers check the length first; only a bug can make the range
/// fall outside `bytes`.
fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(read_len) => filled += read_len,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Our error as an `io::Error` for the `io::Read`/`io::Write` impls: damaged data is
/// `InvalidData`, an I/O failure keeps its kind. The original error is the source.
fn to_io_error(err: Error) -> io::Error {
    let kind = match &err {
        Error::Io { source, .. } => source.kind(),
        Error::Corrupt { .. } | Error::BadMagic { .. } | Error::UnsupportedVersion { .. } => {
            io::ErrorKind::InvalidData
        }
        Error::ChunkOffset { .. } => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, err)
}

/// Streams a snapshot body into `<dir>/<lsn:020>.snap.tmp` and installs it as
/// `<lsn:020>.snap` on [`finish`](SnapshotWriter::finish).
///
/// [`write`](SnapshotWriter::write) cuts the body into chunks of [`SNAPSHOT_CHUNK_LEN`]
/// whatever the split of the calls, so the same body always gives the same file;
/// [`write_chunk`](SnapshotWriter::write_chunk) and
/// [`write_raw_chunk`](SnapshotWriter::write_raw_chunk) keep chunks as received. Memory: one
/// chunk buffer. Dropping a writer that was not finished removes its temp file. After a
/// failed write the writer is poisoned: every later call returns `Error::Poisoned`.
pub struct SnapshotWriter {
    file: Option<File>,
    tmp: PathBuf,
    path: PathBuf,
    lsn: Lsn,
    epoch: Epoch,
    /// A chunk header's room followed by at most `SNAPSHOT_CHUNK_LEN` buffered data bytes.
    buf: Vec<u8>,
    /// Body bytes accepted so far, buffered ones included.
    body_len: u64,
    body_crc: crc32fast::Hasher,
    poisoned: bool,
    /// Set once the temp file is renamed (or given up by `finish`), so `Drop` leaves it be.
    done: bool,
    /// Bytes of the file written so far, and where the last two write-behind ranges began
    /// ([`fs::write_behind`]).
    written: u64,
    behind: [u64; 2],
}

/// The file is written behind in ranges of this many bytes ([`fs::write_behind`]).
const WRITE_BEHIND_BYTES: u64 = 1 << 20;

impl SnapshotWriter {
    /// Starts the snapshot covering `..=lsn`, whose record at `lsn` has `epoch`, in `dir`
    /// (which must exist).
    ///
    /// Fails if the temp file of the same LSN exists: a live writer holds it (a second one
    /// would truncate the first's file and each would install the other's bytes; of two
    /// writers of one LSN, the later is refused, whatever the caller's bookkeeping), or a
    /// crash left it, which [`remove_temps`] deletes at the next start.
    ///
    /// Panics if `lsn` or `epoch` is 0: a snapshot covers at least one record, and records
    /// have epochs ≥ 1.
    pub fn create(dir: &Path, lsn: Lsn, epoch: Epoch) -> Result<SnapshotWriter> {
        assert!(lsn != Lsn::ZERO, "a snapshot at lsn 0 covers no record");
        assert!(epoch != Epoch::ZERO, "snapshot at lsn {lsn} with epoch 0");
        let path = dir.join(file_name(lsn));
        let (mut file, tmp) = fs::create_tmp_new(&path)?;
        let mut writer = SnapshotWriter {
            file: None,
            tmp,
            path,
            lsn,
            epoch,
            buf: Vec::with_capacity(SNAPSHOT_CHUNK_HEADER_LEN + SNAPSHOT_CHUNK_LEN),
            body_len: 0,
            body_crc: crc32fast::Hasher::new(),
            poisoned: false,
            done: false,
            written: 0,
            behind: [0; 2],
        };
        // The header's place is held by zeros (which fail the magic check) until `finish`
        // knows body_len. Nobody reads a temp file, but an unfinished one must not look whole.
        if let Err(e) = file.write_all(&[0u8; SNAPSHOT_HEADER_LEN]) {
            // `writer`'s Drop removes the temp file.
            return Err(Error::io(IoOp::Write, &writer.tmp, e));
        }
        writer.written = SNAPSHOT_HEADER_LEN as u64;
        writer.file = Some(file);
        writer.buf.resize(SNAPSHOT_CHUNK_HEADER_LEN, 0);
        Ok(writer)
    }

    /// The LSN this snapshot covers up to.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The epoch of the record at [`lsn`](SnapshotWriter::lsn).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Body bytes accepted so far: the offset the next chunk must start at.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// The CRC of the body accepted so far: what the trailer will hold if nothing more is
    /// written. A receiver compares it with the sender's before installing.
    pub fn body_crc(&self) -> u32 {
        self.body_crc.clone().finalize()
    }

    /// Appends `data` to the body, writing a chunk each time [`SNAPSHOT_CHUNK_LEN`] bytes
    /// have gathered.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.check_poisoned()?;
        while !data.is_empty() {
            let room = SNAPSHOT_CHUNK_HEADER_LEN + SNAPSHOT_CHUNK_LEN - self.buf.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            self.body_crc.update(now);
            self.body_len += now.len() as u64;
            data = rest;
            if self.buf.len() == SNAPSHOT_CHUNK_HEADER_LEN + SNAPSHOT_CHUNK_LEN {
                self.write_buffered()?;
            }
        }
        Ok(())
    }

    /// Appends `data` as one chunk at body `offset`, for a receiver that gets the body
    /// already chunked. Data buffered by [`write`](SnapshotWriter::write) is written first.
    ///
    /// Returns `Error::ChunkOffset` unless `offset` is [`body_len`](SnapshotWriter::body_len)
    /// (a gap or a repeat in the transfer), `Error::BadRecord` if `data` is empty or longer
    /// than [`SNAPSHOT_CHUNK_LEN_MAX`]. These errors do not poison the writer.
    pub fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_poisoned()?;
        self.write_chunk_check(offset, data.len())?;
        let header = encode_chunk_header(offset, data);
        self.write_buffered()?;
        self.write_file(&header)?;
        self.write_file(data)?;
        self.body_crc.update(data);
        self.body_len += data.len() as u64;
        Ok(())
    }

    /// Appends a chunk's on-disk bytes as received ([`Chunk::raw`] of the sender), after
    /// verifying them with [`decode_chunk`] at [`body_len`](SnapshotWriter::body_len): the
    /// CRC computed once by the sender is checked here and stored unchanged.
    ///
    /// Returns `Error::BadRecord` if `raw` is not exactly one valid chunk for this offset (a
    /// chunk meant for another offset fails its CRC). These errors do not poison the writer.
    pub fn write_raw_chunk(&mut self, raw: &[u8]) -> Result<()> {
        self.check_poisoned()?;
        let data_len = match decode_chunk(raw, self.body_len) {
            Ok(Some((consumed, data))) if consumed == raw.len() => data.len(),
            Ok(Some((consumed, _))) => {
                // More than one chunk's bytes.
                return Err(Error::BadRecord {
                    reason: Corruption::LenTooLarge {
                        len: raw.len() as u64,
                        max: consumed as u64,
                    },
                });
            }
            Ok(None) => {
                return Err(Error::BadRecord {
                    reason: Corruption::Truncated,
                })
            }
            Err(reason) => return Err(Error::BadRecord { reason }),
        };
        self.write_buffered()?;
        self.write_file(raw)?;
        self.body_crc.update(&raw[SNAPSHOT_CHUNK_HEADER_LEN..]);
        self.body_len += data_len as u64;
        Ok(())
    }

    fn write_chunk_check(&self, offset: u64, data_len: usize) -> Result<()> {
        if offset != self.body_len {
            return Err(Error::ChunkOffset {
                path: self.tmp.clone(),
                expected: self.body_len,
                found: offset,
            });
        }
        if data_len == 0 {
            return Err(Error::BadRecord {
                reason: Corruption::BadField("empty snapshot chunk"),
            });
        }
        if data_len > SNAPSHOT_CHUNK_LEN_MAX {
            return Err(Error::BadRecord {
                reason: Corruption::LenTooLarge {
                    len: data_len as u64,
                    max: SNAPSHOT_CHUNK_LEN_MAX as u64,
                },
            });
        }
        Ok(())
    }

    /// Completes the snapshot and installs it; returns what [`list`] will report for it.
    ///
    /// # Durability
    /// Returns only once `<lsn:020>.snap` is complete, fsynced and its name durable. On
    /// error the temp file is removed; if the error came from the final directory fsync the
    /// `.snap` may exist but is not known durable, and the caller must not rely on it (nor
    /// truncate the log on its account).
    pub fn finish(mut self) -> Result<SnapshotInfo> {
        self.check_poisoned()?;
        self.write_buffered()?;
        let trailer = SnapshotTrailer {
            body_len: self.body_len,
            body_crc: self.body_crc.clone().finalize(),
        };
        self.write_file(&trailer.encode())?;
        let header = SnapshotHeader {
            lsn: self.lsn,
            epoch: self.epoch,
            body_len: self.body_len,
        };
        self.finish_write_header(&header)?;

        let Some(file) = self.file.take() else {
            unreachable!("a writer that is not poisoned has its file");
        };
        // Crash argument (FORMAT.md, "Snapshot file", "Install"; steps 2-4 are
        // `fs::install`):
        // 1. write `<lsn>.snap.tmp`: zeroed header, chunks, trailer, then the real header;
        // 2. fsync it;
        // 3. rename it to `<lsn>.snap`;
        // 4. fsync the directory.
        // A crash before 3 leaves only the temp file, which `list` ignores and
        // `remove_temps` deletes; after 3 the `.snap` is complete, because its bytes were
        // durable before its name was; 4 makes the name survive a power loss.
        self.done = true;
        fs::install(file, &self.tmp, &self.path)?;
        Ok(SnapshotInfo {
            path: self.path.clone(),
            lsn: self.lsn,
            epoch: self.epoch,
            body_len: self.body_len,
        })
    }

    /// Writes the real header over the zeros at offset 0. Safe in place: the file is still
    /// a temp that nobody reads.
    fn finish_write_header(&mut self, header: &SnapshotHeader) -> Result<()> {
        let tmp = &self.tmp;
        let Some(file) = self.file.as_mut() else {
            unreachable!("a writer that is not poisoned has its file");
        };
        let result = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header.encode()));
        if let Err(e) = result {
            self.poisoned = true;
            return Err(Error::io(IoOp::Write, tmp, e));
        }
        Ok(())
    }

    /// Writes the buffered data, if any, as one chunk.
    fn write_buffered(&mut self) -> Result<()> {
        let data_len = self.buf.len() - SNAPSHOT_CHUNK_HEADER_LEN;
        if data_len == 0 {
            return Ok(());
        }
        let offset = self.body_len - data_len as u64;
        let header = encode_chunk_header(offset, &self.buf[SNAPSHOT_CHUNK_HEADER_LEN..]);
        self.buf[..SNAPSHOT_CHUNK_HEADER_LEN].copy_from_slice(&header);
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_file(&buf);
        self.buf = buf;
        self.buf.truncate(SNAPSHOT_CHUNK_HEADER_LEN);
        result
    }

    fn write_file(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            unreachable!("a writer that is not poisoned has its file");
        };
        if let Err(e) = file.write_all(bytes) {
            self.poisoned = true;
            return Err(Error::io(IoOp::Write, &self.tmp, e));
        }
        self.written += bytes.len() as u64;
        let [before, from] = self.behind;
        if self.written - from >= WRITE_BEHIND_BYTES {
            fs::write_behind(file, before, from, self.written);
            self.behind = [from, self.written];
        }
        Ok(())
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(())
    }
}

// By hand, to leave out the chunk buffer.
impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("tmp", &self.tmp)
            .field("lsn", &self.lsn)
            .field("epoch", &self.epoch)
            .field("body_len", &self.body_len)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.done {
            // An abandoned snapshot: remove its temp file, best effort (a crash would leave
            // it too, and `remove_temps` deals with that).
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl io::Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        SnapshotWriter::write(self, buf).map_err(to_io_error)?;
        Ok(buf.len())
    }

    /// Does nothing: a snapshot has no destination before [`SnapshotWriter::finish`], and
    /// writing the buffer here would cut a short chunk wherever a caller happens to flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// The next thing in the file is a chunk header or the trailer.
    Chunks,
    /// The trailer was read and checked; nothing is left.
    Done,
    /// A call returned an error; only `seek_to_offset` may continue.
    Failed,
}

/// Reads a snapshot file as a stream of verified chunks.
///
/// [`open`](SnapshotReader::open) checks the header. [`next_chunk`](SnapshotReader::next_chunk)
/// returns a chunk only after its CRC (which binds it to its body offset) has been checked,
/// and returns `Ok(None)` only after the trailer has been checked against the header and the
/// chunks read, and nothing follows it. So data handed out before an error is correct as far
/// as it goes, but the snapshot is whole only once `Ok(None)` has been seen.
///
/// Memory: one chunk (at most [`SNAPSHOT_CHUNK_LEN_MAX`] + 8 bytes) is allocated at a time, as
/// the `Bytes` of the chunk returned. `io::Read` is implemented on top, verifying the same
/// way; do not mix it with `next_chunk` in the middle of a chunk.
pub struct SnapshotReader {
    file: File,
    path: PathBuf,
    header: SnapshotHeader,
    /// File offset of the next chunk header (or of the trailer).
    file_offset: u64,
    /// Body offset of the next chunk: the sum of the lengths of the chunks before it.
    body_offset: u64,
    /// CRC of the body read so far; `None` after a seek past offset 0, when the chunks
    /// before the seek point were not read (see [`seek_to_offset`](SnapshotReader::seek_to_offset)).
    body_crc: Option<crc32fast::Hasher>,
    state: ReadState,
    /// For `io::Read`: the unread rest of the current chunk.
    pending: Bytes,
}

impl SnapshotReader {
    /// Opens `path` and checks its header (magic, version, CRC, reserved bytes, and that the
    /// LSN matches the file name when the name is `<20 digits>.snap`).
    pub fn open(path: &Path) -> Result<SnapshotReader> {
        let mut file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|e| Error::io(IoOp::Open, path, e))?;
        let mut bytes = [0u8; SNAPSHOT_HEADER_LEN];
        let read_len =
            read_full(&mut file, &mut bytes).map_err(|e| Error::io(IoOp::Read, path, e))?;
        let Some(header) = decode_header(&bytes[..read_len], path)? else {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                offset: read_len as u64,
                lsn: Lsn::ZERO,
                reason: Corruption::Truncated,
            });
        };
        let name_lsn = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(parse_file_name);
        if let Some(name_lsn) = name_lsn {
            if name_lsn != header.lsn {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    offset: 16,
                    lsn: header.lsn,
                    reason: Corruption::NameMismatch {
                        name_lsn,
                        header_lsn: header.lsn,
                    },
                });
            }
        }
        Ok(SnapshotReader {
            file,
            path: path.to_path_buf(),
            header,
            file_offset: SNAPSHOT_HEADER_LEN as u64,
            body_offset: 0,
            body_crc: Some(crc32fast::Hasher::new()),
            state: ReadState::Chunks,
            pending: Bytes::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last LSN whose effect the snapshot contains.
    pub fn lsn(&self) -> Lsn {
        self.header.lsn
    }

    /// The epoch of the record at [`lsn`](SnapshotReader::lsn).
    pub fn epoch(&self) -> Epoch {
        self.header.epoch
    }

    /// The body length the header announces.
    pub fn body_len(&self) -> u64 {
        self.header.body_len
    }

    /// The header's fields.
    pub fn header(&self) -> SnapshotHeader {
        self.header
    }

    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            path: self.path.clone(),
            lsn: self.header.lsn,
            epoch: self.header.epoch,
            body_len: self.header.body_len,
        }
    }

    /// The next chunk, verified; `Ok(None)` once the trailer has been verified too.
    ///
    /// Errors are `Error::Corrupt` (with the file offset of the damaged chunk or trailer) or
    /// `Error::Io`. Calling again after an error is a bug (it panics), except through
    /// [`seek_to_offset`](SnapshotReader::seek_to_offset).
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        match self.state {
            ReadState::Chunks => {}
            ReadState::Done => return Ok(None),
            ReadState::Failed => panic!(
                "{}: snapshot read after an earlier error",
                self.path.display()
            ),
        }
        assert!(
            self.pending.is_empty(),
            "next_chunk called with {} bytes of the current chunk not yet read through io::Read",
            self.pending.len()
        );
        let result = self.next_chunk_read();
        match &result {
            Ok(Some(_)) => {}
            Ok(None) => self.state = ReadState::Done,
            Err(_) => self.state = ReadState::Failed,
        }
        result
    }

    fn next_chunk_read(&mut self) -> Result<Option<Chunk>> {
        let mut head = [0u8; SNAPSHOT_CHUNK_HEADER_LEN];
        self.read_exact_or_corrupt(&mut head)?;
        if head[0..4] == [0; 4] {
            self.next_chunk_read_trailer(head)?;
            return Ok(None);
        }
        let len = self.check_chunk_head(&head)?;

        let mut raw = BytesMut::with_capacity(SNAPSHOT_CHUNK_HEADER_LEN + len);
        raw.extend_from_slice(&head);
        raw.resize(SNAPSHOT_CHUNK_HEADER_LEN + len, 0);
        self.read_exact_or_corrupt(&mut raw[SNAPSHOT_CHUNK_HEADER_LEN..])?;
        let data_len = match decode_chunk(&raw, self.body_offset) {
            Ok(Some((consumed, data))) => {
                assert_eq!(consumed, raw.len(), "decode_chunk consumed a partial chunk");
                data.len()
            }
            Ok(None) => {
                unreachable!("decode_chunk wants more than the {len} bytes its header asked for")
            }
            Err(reason) => return Err(self.corrupt(self.file_offset, reason)),
        };
        let raw = raw.freeze();
        let data = raw.slice(SNAPSHOT_CHUNK_HEADER_LEN..);
        assert_eq!(data.len(), data_len);
        if let Some(body_crc) = self.body_crc.as_mut() {
            body_crc.update(&data);
        }
        let chunk = Chunk {
            offset: self.body_offset,
            data,
            raw,
        };
        self.file_offset += (SNAPSHOT_CHUNK_HEADER_LEN + len) as u64;
        self.body_offset += len as u64;
        Ok(Some(chunk))
    }

    /// Checks a chunk header's length, before its data is read: within the format's limit
    /// (via [`decode_chunk`]) and within the header's body_len.
    fn check_chunk_head(&self, head: &[u8; SNAPSHOT_CHUNK_HEADER_LEN]) -> Result<usize> {
        match decode_chunk(head, self.body_offset) {
            Ok(None) => {}
            Ok(Some(_)) => unreachable!("a chunk with a non-zero length fits in its header"),
            Err(reason) => return Err(self.corrupt(self.file_offset, reason)),
        }
        let len = u32::from_le_bytes(field(head, 0)) as usize;
        match self.body_offset.checked_add(len as u64) {
            Some(end) if end <= self.header.body_len => Ok(len),
            end => Err(self.corrupt(
                self.file_offset,
                Corruption::LenTooLarge {
                    len: end.unwrap_or(u64::MAX),
                    max: self.header.body_len,
                },
            )),
        }
    }

    /// Reads and checks the trailer, whose first 8 bytes are `head`, and that nothing follows.
    fn next_chunk_read_trailer(&mut self, head: [u8; SNAPSHOT_CHUNK_HEADER_LEN]) -> Result<()> {
        let mut bytes = [0u8; SNAPSHOT_TRAILER_LEN];
        bytes[..SNAPSHOT_CHUNK_HEADER_LEN].copy_from_slice(&head);
        self.read_exact_or_corrupt(&mut bytes[SNAPSHOT_CHUNK_HEADER_LEN..])?;
        let trailer = match decode_trailer(&bytes) {
            Ok(Some(trailer)) => trailer,
            Ok(None) => unreachable!("decode_trailer wants more than {SNAPSHOT_TRAILER_LEN} bytes"),
            Err(reason) => return Err(self.corrupt(self.file_offset, reason)),
        };
        if trailer.body_len != self.header.body_len {
            return Err(self.corrupt(
                self.file_offset + 8,
                Corruption::Trailer("body_len differs from the header's"),
            ));
        }
        if self.body_offset != self.header.body_len {
            return Err(self.corrupt(
                self.file_offset,
                Corruption::Trailer("the chunks end before body_len"),
            ));
        }
        if let Some(body_crc) = self.body_crc.take() {
            let computed = body_crc.finalize();
            if computed != trailer.body_crc {
                return Err(self.corrupt(
                    self.file_offset + 16,
                    Corruption::Crc {
                        stored: trailer.body_crc,
                        computed,
                    },
                ));
            }
        }
        let end = self.file_offset + SNAPSHOT_TRAILER_LEN as u64;
        let mut extra = [0u8; 1];
        let extra_len = read_full(&mut self.file, &mut extra)
            .map_err(|e| Error::io(IoOp::Read, &self.path, e))?;
        if extra_len != 0 {
            return Err(self.corrupt(end, Corruption::TrailingBytes));
        }
        self.file_offset = end;
        Ok(())
    }

    /// Positions the reader at the chunk that starts at body offset `body_offset`, to
    /// resume a transfer there; `body_offset` equal to [`body_len`](SnapshotReader::body_len)
    /// positions it at the trailer.
    ///
    /// It walks the chunk headers from the start of the body, checking each length against
    /// the limits but reading no data, so the chunks skipped are not verified (each is
    /// verified when it is read, which the receiver did the first time). For the same
    /// reason, after a seek past offset 0 the trailer's body CRC cannot be compared: the
    /// trailer is still checked for its own CRC, body_len and end, and the receiver must
    /// check the whole file it assembled with [`verify`]. A damaged length among the
    /// skipped chunks misaligns the walk, which the next chunk's CRC then catches.
    ///
    /// Returns `Error::ChunkOffset` with the nearest chunk boundary at or below
    /// `body_offset` if no chunk starts there.
    pub fn seek_to_offset(&mut self, body_offset: u64) -> Result<()> {
        self.pending = Bytes::new();
        self.file_offset = SNAPSHOT_HEADER_LEN as u64;
        self.body_offset = 0;
        self.body_crc = (body_offset == 0).then(crc32fast::Hasher::new);
        self.state = ReadState::Failed;
        if body_offset > self.header.body_len {
            return Err(Error::ChunkOffset {
                path: self.path.clone(),
                expected: self.header.body_len,
                found: body_offset,
            });
        }
        self.file
            .seek(SeekFrom::Start(self.file_offset))
            .map_err(|e| Error::io(IoOp::Read, &self.path, e))?;
        while self.body_offset < body_offset {
            let mut head = [0u8; SNAPSHOT_CHUNK_HEADER_LEN];
            self.read_exact_or_corrupt(&mut head)?;
            if head[0..4] == [0; 4] {
                return Err(self.corrupt(
                    self.file_offset,
                    Corruption::Trailer("the chunks end before body_len"),
                ));
            }
            let len = self.check_chunk_head(&head)?;
            if self.body_offset + len as u64 > body_offset {
                return Err(Error::ChunkOffset {
                    path: self.path.clone(),
                    expected: self.body_offset,
                    found: body_offset,
                });
            }
            self.file
                .seek(SeekFrom::Current(len as i64))
                .map_err(|e| Error::io(IoOp::Read, &self.path, e))?;
            self.file_offset += (SNAPSHOT_CHUNK_HEADER_LEN + len) as u64;
            self.body_offset += len as u64;
        }
        self.state = ReadState::Chunks;
        Ok(())
    }

    /// Fills `buf` from the file at `file_offset` onwards; a short file is
    /// `Corruption::Truncated` at the offset where it ends.
    fn read_exact_or_corrupt(&mut self, buf: &mut [u8]) -> Result<()> {
        let read_len =
            read_full(&mut self.file, buf).map_err(|e| Error::io(IoOp::Read, &self.path, e))?;
        if read_len < buf.len() {
            // The file ends somewhere at or after the next chunk's start.
            return Err(self.corrupt(self.file_offset, Corruption::Truncated));
        }
        Ok(())
    }

    fn corrupt(&self, offset: u64, reason: Corruption) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            offset,
            lsn: self.header.lsn,
            reason,
        }
    }
}

// By hand, to leave out the pending chunk bytes.
impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("file_offset", &self.file_offset)
            .field("body_offset", &self.body_offset)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl io::Read for SnapshotReader {
    /// Reads the body, verifying each chunk before any of its bytes are returned, and the
    /// trailer before returning 0 (end of body).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pending.is_empty() {
            match self.next_chunk().map_err(to_io_error)? {
                Some(chunk) => self.pending = chunk.data,
                None => return Ok(0),
            }
        }
        let copy_len = buf.len().min(self.pending.len());
        buf[..copy_len].copy_from_slice(&self.pending[..copy_len]);
        let _ = self.pending.split_to(copy_len);
        Ok(copy_len)
    }
}

/// Reads the trailer of the snapshot at `path` (its own CRC and end marker checked, not the
/// body): what a sender that resumes a transfer past offset 0 tells the receiver the body
/// CRC must be. Call it on a snapshot already verified whole.
pub fn read_trailer(path: &Path) -> Result<SnapshotTrailer> {
    let mut file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| Error::io(IoOp::Open, path, e))?;
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io(IoOp::Read, path, e))?;
    let min_len = (SNAPSHOT_HEADER_LEN + SNAPSHOT_TRAILER_LEN) as u64;
    let corrupt = |offset: u64, reason: Corruption| Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        lsn: Lsn::ZERO,
        reason,
    };
    if len < min_len {
        return Err(corrupt(len, Corruption::Truncated));
    }
    let offset = len - SNAPSHOT_TRAILER_LEN as u64;
    let mut bytes = [0u8; SNAPSHOT_TRAILER_LEN];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| Error::io(IoOp::Read, path, e))?;
    match decode_trailer(&bytes) {
        Ok(Some(trailer)) => Ok(trailer),
        Ok(None) => unreachable!("decode_trailer wants more than {SNAPSHOT_TRAILER_LEN} bytes"),
        Err(reason) => Err(corrupt(offset, reason)),
    }
}

/// Reads the whole snapshot at `path`, verifying every chunk and the trailer.
pub fn verify(path: &Path) -> Result<SnapshotInfo> {
    let mut reader = SnapshotReader::open(path)?;
    while reader.next_chunk()?.is_some() {}
    Ok(reader.info())
}

/// The snapshots installed in `dir`, in ascending LSN order. Reads and checks each one's
/// header (a bad header is an error); not its body: use [`verify`] for that.
///
/// Ignores `<20 digits>.snap.tmp` files (writes in progress or abandoned by a crash; see
/// [`remove_temps`]). Any other file, or a directory, is `Error::ForeignFile`: we delete
/// nothing we do not understand.
pub fn list(dir: &Path) -> Result<Vec<SnapshotInfo>> {
    let mut infos = Vec::new();
    for path in list_entries(dir)? {
        match classify(&path) {
            Entry::Snapshot => infos.push(SnapshotReader::open(&path)?.info()),
            Entry::Temp => {}
            Entry::Foreign => return Err(Error::ForeignFile { path }),
        }
    }
    infos.sort_by_key(|info| info.lsn);
    Ok(infos)
}

/// Removes the `<20 digits>.snap.tmp` files in `dir` (incomplete installs, FORMAT.md) and
/// fsyncs `dir` if it removed any; returns how many. Call it when the node opens its data
/// directory, before any [`SnapshotWriter`] exists: it would remove a write in progress.
/// Does not touch any other file.
pub fn remove_temps(dir: &Path) -> Result<usize> {
    let mut removed_count = 0;
    for path in list_entries(dir)? {
        if classify(&path) == Entry::Temp {
            std::fs::remove_file(&path).map_err(|e| Error::io(IoOp::Remove, &path, e))?;
            removed_count += 1;
        }
    }
    if removed_count > 0 {
        fs::sync_dir(dir)?;
    }
    Ok(removed_count)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Snapshot,
    Temp,
    Foreign,
}

fn classify(path: &Path) -> Entry {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return Entry::Foreign;
    };
    if !path.is_file() {
        return Entry::Foreign;
    }
    if parse_file_name(name).is_some() {
        return Entry::Snapshot;
    }
    match name
        .strip_suffix(SNAPSHOT_TMP_SUFFIX)
        .and_then(parse_digits)
    {
        Some(_) => Entry::Temp,
        None => Entry::Foreign,
    }
}

fn list_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(IoOp::ReadDir, dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(IoOp::ReadDir, dir, e))?;
        paths.push(entry.path());
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long body is written behind in ranges of `WRITE_BEHIND_BYTES` (the file is started
    /// to the disk as it grows, not only at the final fsync), and the file is the same.
    #[test]
    fn a_long_snapshot_is_written_behind_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..5 * WRITE_BEHIND_BYTES + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut writer = SnapshotWriter::create(dir.path(), Lsn(9), Epoch(2)).unwrap();
        for piece in body.chunks(100_000) {
            writer.write(piece).unwrap();
        }
        let [before, from] = writer.behind;
        assert!(
            from >= 4 * WRITE_BEHIND_BYTES && from - before >= WRITE_BEHIND_BYTES,
            "write-behind ranges {before}..{from} after {} bytes",
            writer.written
        );
        let info = writer.finish().unwrap();
        assert_eq!(info.body_len, body.len() as u64);
        let mut reader = SnapshotReader::open(&info.path).unwrap();
        let mut read = Vec::new();
        while let Some(chunk) = reader.next_chunk().unwrap() {
            read.extend_from_slice(&chunk.data);
        }
        assert_eq!(read, body);
    }

    /// The header encoding is the byte table of FORMAT.md, field by field.
    #[test]
    fn header_encoding_follows_the_format_table() {
        let header = SnapshotHeader {
            lsn: Lsn(50_000),
            epoch: Epoch(7),
            body_len: 1234,
        };
        let bytes = header.encode();
        assert_eq!(&bytes[0..8], b"USTDYSNP");
        assert_eq!(bytes[8..10], 1u16.to_le_bytes());
        assert_eq!(bytes[10..16], [0; 6]);
        assert_eq!(bytes[16..24], 50_000u64.to_le_bytes());
        assert_eq!(bytes[24..32], 7u64.to_le_bytes());
        assert_eq!(bytes[32..40], 1234u64.to_le_bytes());
        assert_eq!(bytes[40..44], crc32fast::hash(&bytes[0..40]).to_le_bytes());
        assert_eq!(bytes[44..48], [0; 4]);
        assert_eq!(
            decode_header(&bytes, Path::new("x")).ok(),
            Some(Some(header))
        );
    }

    /// The trailer encoding is the byte table of FORMAT.md, field by field.
    #[test]
    fn trailer_encoding_follows_the_format_table() {
        let trailer = SnapshotTrailer {
            body_len: 99,
            body_crc: 0xdead_beef,
        };
        let bytes = trailer.encode();
        assert_eq!(bytes[0..4], [0; 4]);
        assert_eq!(bytes[4..8], crc32fast::hash(&bytes[8..24]).to_le_bytes());
        assert_eq!(bytes[8..16], 99u64.to_le_bytes());
        assert_eq!(bytes[16..20], 0xdead_beefu32.to_le_bytes());
        assert_eq!(&bytes[20..24], b"SNPE");
        assert_eq!(decode_trailer(&bytes), Ok(Some(trailer)));
    }

    /// A chunk's CRC covers its body offset, then its data.
    #[test]
    fn chunk_crc_covers_the_offset_then_the_data() {
        let mut covered = 4096u64.to_le_bytes().to_vec();
        covered.extend_from_slice(b"hello");
        assert_eq!(chunk_crc(4096, b"hello"), crc32fast::hash(&covered));
        let header = encode_chunk_header(4096, b"hello");
        assert_eq!(header[0..4], 5u32.to_le_bytes());
        assert_eq!(header[4..8], crc32fast::hash(&covered).to_le_bytes());
    }

    /// The decoder says "need more bytes" at every prefix of a good chunk, and consumes
    /// exactly the chunk when it is whole, ignoring what follows.
    #[test]
    fn decode_chunk_needs_more_bytes_at_every_prefix() {
        let mut bytes = encode_chunk_header(10, b"abcdef").to_vec();
        bytes.extend_from_slice(b"abcdef");
        for prefix_len in 0..bytes.len() {
            assert_eq!(
                decode_chunk(&bytes[..prefix_len], 10),
                Ok(None),
                "{prefix_len}"
            );
        }
        bytes.extend_from_slice(b"next");
        assert_eq!(decode_chunk(&bytes, 10), Ok(Some((14, &b"abcdef"[..]))));
    }

    /// A length over the limit is refused from its 4 bytes alone, before any data arrives.
    #[test]
    fn decode_chunk_checks_the_length_limit_before_waiting_for_data() {
        let len = (SNAPSHOT_CHUNK_LEN_MAX as u32 + 1).to_le_bytes();
        assert_eq!(
            decode_chunk(&len, 0),
            Err(Corruption::LenTooLarge {
                len: SNAPSHOT_CHUNK_LEN_MAX as u64 + 1,
                max: SNAPSHOT_CHUNK_LEN_MAX as u64,
            })
        );
    }

    /// A chunk decoded at another offset than the one it was written for fails its CRC.
    #[test]
    fn decode_chunk_refuses_a_chunk_from_another_offset() {
        let mut bytes = encode_chunk_header(0, b"abc").to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(matches!(
            decode_chunk(&bytes, 3),
            Err(Corruption::Crc { .. })
        ));
    }

    /// The end marker is not a chunk.
    #[test]
    fn decode_chunk_refuses_the_end_marker() {
        let trailer = SnapshotTrailer {
            body_len: 0,
            body_crc: 0,
        }
        .encode();
        assert!(matches!(
            decode_chunk(&trailer, 0),
            Err(Corruption::BadField(_))
        ));
    }

    /// A header with the right magic but a version from the future is reported as such
    /// even before the rest of the header has arrived.
    #[test]
    fn decode_header_reports_a_version_before_the_header_is_whole() {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&2u16.to_le_bytes());
        assert!(matches!(
            decode_header(&bytes, Path::new("s")),
            Err(Error::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            })
        ));
    }

    /// Names are 20 digits and `.snap`; anything else is not a snapshot name.
    #[test]
    fn file_names_are_twenty_digits_and_snap() {
        assert_eq!(file_name(Lsn(50_000)), "00000000000000050000.snap");
        assert_eq!(
            parse_file_name("00000000000000050000.snap"),
            Some(Lsn(50_000))
        );
        assert_eq!(parse_file_name("0000000000000050000.snap"), None);
        assert_eq!(parse_file_name("00000000000000050000.snap.tmp"), None);
        assert_eq!(parse_file_name("99999999999999999999.snap"), None);
        assert_eq!(parse_file_name("+0000000000000050000.snap"), None);
    }

    mod decoders_never_panic {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// The plain decoders (fuzz targets) return a value or an error for any bytes.
            #[test]
            fn on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..96), offset: u64) {
                let _ = decode_header(&bytes, Path::new("fuzz"));
                let _ = decode_chunk(&bytes, offset);
                let _ = decode_trailer(&bytes);
            }

            /// Same, starting from valid bytes with one byte changed, which reaches the
            /// checks after the magic.
            #[test]
            fn on_near_valid_bytes(position in 0usize..48, value: u8) {
                let mut bytes = SnapshotHeader { lsn: Lsn(1), epoch: Epoch(1), body_len: 0 }.encode();
                bytes[position] = value;
                let _ = decode_header(&bytes, Path::new("fuzz"));
                let mut trailer = SnapshotTrailer { body_len: 5, body_crc: 1 }.encode();
                trailer[position % SNAPSHOT_TRAILER_LEN] = value;
                let _ = decode_trailer(&trailer);
            }
        }
    }
}
