#![doc = include_str!("../FORMAT.md")]
//!
//! # This module
//!
//! The record and segment-header codecs. Encoding appends to a caller's buffer and computes
//! the CRC once; decoding is a plain function over a byte slice that distinguishes "need
//! more bytes" (`Ok(None)`) from "bad bytes" (`Err`), checks the length limit before
//! looking at the payload, and never allocates, so the same function serves recovery, the
//! reader, a peer receiving records and a fuzz target.

use bytes::Bytes;

use crate::error::Corruption;
use crate::types::{Epoch, Lsn};

/// The WAL segment magic (FORMAT.md, "WAL segment").
pub const SEGMENT_MAGIC: [u8; 8] = *b"USTDYWAL";
/// The one segment format version this build reads and writes.
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes in a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes in a record header; the payload follows.
pub const RECORD_HEADER_LEN: usize = 28;
/// The largest payload a record may carry.
pub const RECORD_PAYLOAD_LEN_MAX: usize = 64 << 20;

const _: () = assert!(RECORD_HEADER_LEN == 4 + 4 + 8 + 8 + 1 + 1 + 2);
const _: () = assert!(SEGMENT_HEADER_LEN == 8 + 2 + 2 + 4 + 8 + 4 + 4);
// A payload length must fit the u32 length field.
const _: () = assert!(RECORD_PAYLOAD_LEN_MAX <= u32::MAX as usize);

/// What a record is for. Stored in byte 24 of the record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// An application record: handed to the application once committed.
    App = 1,
    /// Written by a new primary at the start of its epoch; carries no payload and is not
    /// handed to the application.
    EpochStart = 2,
    /// A cluster configuration (the members and their addresses), written by the primary
    /// when the membership changes; not handed to the application.
    Config = 3,
}

impl RecordKind {
    pub fn from_u8(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::App),
            2 => Some(RecordKind::EpochStart),
            3 => Some(RecordKind::Config),
            _ => None,
        }
    }
}

/// A decoded record borrowed from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub kind: RecordKind,
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    /// Bytes this record takes on disk and on the wire.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload.len()
    }
}

/// Bytes a record with a payload of `payload_len` bytes takes.
#[inline]
pub const fn record_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN + payload_len
}

/// Appends one encoded record to `buf`.
///
/// ```text
/// Format: { crc: u32, len: u32, lsn: u64, epoch: u64, kind: u8, flags: u8 = 0,
///           reserved: u16 = 0, payload: [u8; len] }, crc over everything after itself
/// ```
///
/// Panics if the payload exceeds [`RECORD_PAYLOAD_LEN_MAX`] or the epoch or LSN is zero:
/// callers check input from outside first, so only a bug reaches these.
#[inline]
pub fn encode_record(buf: &mut Vec<u8>, lsn: Lsn, epoch: Epoch, kind: RecordKind, payload: &[u8]) {
    assert!(
        payload.len() <= RECORD_PAYLOAD_LEN_MAX,
        "payload of {} bytes exceeds the limit of {RECORD_PAYLOAD_LEN_MAX}",
        payload.len()
    );
    assert!(lsn > Lsn::ZERO, "records start at lsn 1");
    assert!(epoch > Epoch::ZERO, "records carry an epoch of 1 or more");
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[8..16].copy_from_slice(&lsn.get().to_le_bytes());
    header[16..24].copy_from_slice(&epoch.get().to_le_bytes());
    header[24] = kind as u8;
    let start = buf.len();
    buf.reserve(RECORD_HEADER_LEN + payload.len());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(payload);
    // One CRC pass over the record as laid out in `buf` (header after the CRC field, then
    // payload), not one for the header and one for the payload: each pass pays the SIMD
    // fold's setup and final reduction, which is most of the cost for small records.
    let crc = crc32fast::hash(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

#[inline]
fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

#[inline]
fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

#[inline]
fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    let mut word = [0u8; 2];
    word.copy_from_slice(&bytes[offset..offset + 2]);
    u16::from_le_bytes(word)
}

/// Decodes the record at the start of `bytes`.
///
/// Returns `Ok(None)` when `bytes` ends inside the record (need more bytes), `Err` when the
/// bytes are not a valid record, and `Ok(Some((record, len)))` otherwise, where `len` is the
/// number of bytes the record takes. The CRC is verified before anything else of the record
/// is trusted; the length limit is checked before the payload is touched. It does not check
/// the LSN or the epoch order: those depend on the position, which the caller knows.
#[inline]
pub fn decode_record(bytes: &[u8]) -> Result<Option<(RecordRef<'_>, usize)>, Corruption> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Ok(None);
    }
    let payload_len = u32_at(bytes, 4) as usize;
    if payload_len > RECORD_PAYLOAD_LEN_MAX {
        return Err(Corruption::LenTooLarge {
            len: payload_len as u64,
            max: RECORD_PAYLOAD_LEN_MAX as u64,
        });
    }
    let len = RECORD_HEADER_LEN + payload_len;
    if bytes.len() < len {
        return Ok(None);
    }
    let stored = u32_at(bytes, 0);
    let computed = crc32fast::hash(&bytes[4..len]);
    if stored != computed {
        return Err(Corruption::Crc { stored, computed });
    }
    let kind = RecordKind::from_u8(bytes[24]).ok_or(Corruption::BadField("record kind"))?;
    if bytes[25] != 0 || bytes[26] != 0 || bytes[27] != 0 {
        return Err(Corruption::BadField("reserved bytes in record header"));
    }
    let lsn = Lsn(u64_at(bytes, 8));
    let epoch = Epoch(u64_at(bytes, 16));
    if lsn == Lsn::ZERO {
        return Err(Corruption::BadField("record lsn 0"));
    }
    if epoch == Epoch::ZERO {
        return Err(Corruption::BadField("record epoch 0"));
    }
    if kind == RecordKind::EpochStart && payload_len != 0 {
        return Err(Corruption::BadField("epoch-start record with a payload"));
    }
    Ok(Some((
        RecordRef {
            lsn,
            epoch,
            kind,
            payload: &bytes[RECORD_HEADER_LEN..len],
        },
        len,
    )))
}

/// A run of encoded records, back to back, that has been verified: every CRC checked, LSNs
/// dense and increasing, epochs non-decreasing. Only [`verify_records`] makes one, so a
/// function taking `&VerifiedRecords` knows the bytes were checked (DESIGN invariant 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecords {
    bytes: Bytes,
    first_lsn: Lsn,
    last_lsn: Lsn,
    first_epoch: Epoch,
    last_epoch: Epoch,
}

impl VerifiedRecords {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
    pub fn first_lsn(&self) -> Lsn {
        self.first_lsn
    }
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }
    pub fn first_epoch(&self) -> Epoch {
        self.first_epoch
    }
    pub fn last_epoch(&self) -> Epoch {
        self.last_epoch
    }
    pub fn count(&self) -> u64 {
        Lsn::count_between(self.first_lsn, self.last_lsn)
    }
    /// Iterates the records (already verified; this re-reads headers only).
    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> {
        let mut rest: &[u8] = &self.bytes;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let payload_len = u32_at(rest, 4) as usize;
            let len = RECORD_HEADER_LEN + payload_len;
            let (record, tail) = rest.split_at(len);
            rest = tail;
            Some(RecordRef {
                lsn: Lsn(u64_at(record, 8)),
                epoch: Epoch(u64_at(record, 16)),
                // Verified in `verify_records`; App is never reached for an unknown byte.
                kind: RecordKind::from_u8(record[24]).unwrap_or(RecordKind::App),
                payload: &record[RECORD_HEADER_LEN..],
            })
        })
    }
}

impl VerifiedRecords {
    /// Encodes one record of `kind` per payload, at `first_lsn` onwards in `epoch`, into a
    /// new buffer. Trusted by construction: these are the bytes the primary writes and ships
    /// (one copy of each payload, one CRC each). An empty payload list gives `None`.
    pub fn encode<'p>(
        first_lsn: Lsn,
        epoch: Epoch,
        kind: RecordKind,
        payloads: impl IntoIterator<Item = &'p [u8]>,
        capacity: usize,
    ) -> Option<VerifiedRecords> {
        let mut buf = Vec::with_capacity(capacity);
        let mut lsn = first_lsn;
        for payload in payloads {
            encode_record(&mut buf, lsn, epoch, kind, payload);
            lsn = lsn.next();
        }
        (lsn > first_lsn).then(|| VerifiedRecords {
            bytes: Bytes::from(buf),
            first_lsn,
            last_lsn: lsn.prev(),
            first_epoch: epoch,
            last_epoch: epoch,
        })
    }

    /// The records `first..=last`, which must lie within this run: a sub-slice of the same
    /// bytes, no copy.
    pub fn slice(&self, first: Lsn, last: Lsn) -> VerifiedRecords {
        assert!(
            self.first_lsn <= first && first <= last && last <= self.last_lsn,
            "slice {first}..={last} of records {}..={}",
            self.first_lsn,
            self.last_lsn
        );
        let mut start = 0;
        let mut end = 0;
        let mut first_epoch = Epoch::ZERO;
        let mut last_epoch = Epoch::ZERO;
        let mut offset = 0;
        for record in self.iter() {
            if record.lsn == first {
                start = offset;
                first_epoch = record.epoch;
            }
            offset += record.encoded_len();
            if record.lsn == last {
                end = offset;
                last_epoch = record.epoch;
                break;
            }
        }
        VerifiedRecords {
            bytes: self.bytes.slice(start..end),
            first_lsn: first,
            last_lsn: last,
            first_epoch,
            last_epoch,
        }
    }
}

/// Verifies a run of records received from a peer (or read back) as a whole: each record
/// decodes, CRCs match, the first has LSN `first_lsn`, LSNs are dense, epochs
/// non-decreasing, and the bytes end exactly at a record boundary. An empty run is refused.
pub fn verify_records(bytes: Bytes, first_lsn: Lsn) -> Result<VerifiedRecords, Corruption> {
    let mut offset = 0;
    let mut expected = first_lsn;
    let mut first_epoch = Epoch::ZERO;
    let mut last_epoch = Epoch::ZERO;
    while offset < bytes.len() {
        let (record, len) = decode_record(&bytes[offset..])?.ok_or(Corruption::Truncated)?;
        if record.lsn != expected {
            return Err(Corruption::Misplaced {
                expected,
                found: record.lsn,
            });
        }
        if record.epoch < last_epoch {
            return Err(Corruption::EpochOrder {
                previous: last_epoch.get(),
                found: record.epoch.get(),
            });
        }
        if first_epoch == Epoch::ZERO {
            first_epoch = record.epoch;
        }
        last_epoch = record.epoch;
        expected = expected.next();
        offset += len;
    }
    if expected == first_lsn {
        return Err(Corruption::Truncated);
    }
    Ok(VerifiedRecords {
        bytes,
        first_lsn,
        last_lsn: expected.prev(),
        first_epoch,
        last_epoch,
    })
}

/// Encodes a segment header.
///
/// ```text
/// Format: { magic: [u8; 8] = "USTDYWAL", version: u16 = 1, reserved: u16 = 0,
///           reserved: u32 = 0, first_lsn: u64, crc: u32 (of bytes 0..24), reserved: u32 = 0 }
/// ```
pub fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
    assert!(first_lsn > Lsn::ZERO, "segments start at lsn 1 or later");
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&first_lsn.get().to_le_bytes());
    let crc = crc32fast::hash(&header[0..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a segment header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    Short,
    BadMagic([u8; 8]),
    UnsupportedVersion(u16),
    Corrupt(Corruption),
}

/// Decodes a segment header, returning its first LSN.
pub fn decode_segment_header(bytes: &[u8]) -> Result<Lsn, HeaderError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Short);
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&bytes[0..8]);
    if magic != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic(magic));
    }
    let stored = u32_at(bytes, 24);
    let computed = crc32fast::hash(&bytes[0..24]);
    if stored != computed {
        return Err(HeaderError::Corrupt(Corruption::Crc { stored, computed }));
    }
    // The version is read only after the CRC says the header is intact, so a flipped bit in
    // it reads as corruption, not as a version we do not know.
    let version = u16_at(bytes, 8);
    if version != SEGMENT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    if bytes[10..16].iter().any(|&b| b != 0) || bytes[28..32].iter().any(|&b| b != 0) {
        return Err(HeaderError::Corrupt(Corruption::BadField(
            "reserved bytes in segment header",
        )));
    }
    let first_lsn = Lsn(u64_at(bytes, 16));
    if first_lsn == Lsn::ZERO {
        return Err(HeaderError::Corrupt(Corruption::BadField(
            "segment first lsn 0",
        )));
    }
    Ok(first_lsn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc_is_crc32_iso_hdlc() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    /// The layout in FORMAT.md, byte for byte.
    #[test]
    fn record_bytes_match_the_documented_layout() {
        let mut buf = Vec::new();
        encode_record(&mut buf, Lsn(7), Epoch(3), RecordKind::App, b"hi");
        assert_eq!(buf.len(), 30);
        assert_eq!(&buf[4..8], &2u32.to_le_bytes());
        assert_eq!(&buf[8..16], &7u64.to_le_bytes());
        assert_eq!(&buf[16..24], &3u64.to_le_bytes());
        assert_eq!(&buf[24..28], &[1, 0, 0, 0]);
        assert_eq!(&buf[28..], b"hi");
        assert_eq!(&buf[0..4], &crc32fast::hash(&buf[4..]).to_le_bytes());
    }

    #[test]
    fn decode_needs_more_bytes_for_a_partial_record() {
        let mut buf = Vec::new();
        encode_record(&mut buf, Lsn(1), Epoch(1), RecordKind::App, &[9; 100]);
        for cut in 0..buf.len() {
            assert_eq!(decode_record(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(decode_record(&buf).unwrap().is_some());
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_payload() {
        let mut buf = vec![0u8; RECORD_HEADER_LEN];
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_record(&buf),
            Err(Corruption::LenTooLarge { .. })
        ));
    }

    #[test]
    fn segment_header_round_trips_and_refuses_another_version() {
        let header = encode_segment_header(Lsn(42));
        assert_eq!(decode_segment_header(&header), Ok(Lsn(42)));
        let mut other = header;
        other[8..10].copy_from_slice(&2u16.to_le_bytes());
        let crc = crc32fast::hash(&other[0..24]);
        other[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_segment_header(&other),
            Err(HeaderError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn slices_of_verified_records_are_the_same_bytes() {
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; i as usize]).collect();
        let run = VerifiedRecords::encode(
            Lsn(5),
            Epoch(2),
            RecordKind::App,
            payloads.iter().map(|p| &p[..]),
            0,
        )
        .unwrap();
        assert_eq!(verify_records(run.bytes().clone(), Lsn(5)).unwrap(), run);
        let part = run.slice(Lsn(7), Lsn(9));
        assert_eq!(verify_records(part.bytes().clone(), Lsn(7)).unwrap(), part);
        let lens: Vec<usize> = part.iter().map(|r| r.payload.len()).collect();
        assert_eq!(lens, vec![2, 3, 4]);
        assert_eq!(run.slice(Lsn(5), Lsn(14)), run);
    }

    proptest! {
        #[test]
        fn record_round_trips(lsn in 1u64.., epoch in 1u64.., payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut buf = Vec::new();
            encode_record(&mut buf, Lsn(lsn), Epoch(epoch), RecordKind::App, &payload);
            let (record, len) = decode_record(&buf).unwrap().unwrap();
            prop_assert_eq!(len, buf.len());
            prop_assert_eq!(record.lsn, Lsn(lsn));
            prop_assert_eq!(record.epoch, Epoch(epoch));
            prop_assert_eq!(record.payload, &payload[..]);
        }

        #[test]
        fn any_flipped_bit_in_a_record_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..300), bit in 0usize..10_000) {
            let mut buf = Vec::new();
            encode_record(&mut buf, Lsn(5), Epoch(2), RecordKind::App, &payload);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            // Either refused, or (a flip in the length field) waiting for bytes that never come.
            prop_assert!(!matches!(decode_record(&buf), Ok(Some(_))), "flipped bit {} accepted", bit);
        }

        /// Decoding arbitrary bytes never panics (the fuzz target's property, on stable).
        #[test]
        fn decode_of_arbitrary_bytes_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
            let _ = decode_segment_header(&bytes);
            let _ = verify_records(Bytes::from(bytes), Lsn(1));
        }

        #[test]
        fn verify_records_accepts_exactly_dense_runs(count in 1usize..20, start in 1u64..1000, skip in 0usize..40) {
            let mut buf = Vec::new();
            for i in 0..count {
                let lsn = start + i as u64 + u64::from(i >= skip && skip > 0);
                encode_record(&mut buf, Lsn(lsn), Epoch(1), RecordKind::App, b"x");
            }
            let result = verify_records(Bytes::from(buf), Lsn(start));
            if skip > 0 && skip < count {
                prop_assert!(result.is_err());
            } else {
                let verified = result.unwrap();
                prop_assert_eq!(verified.count(), count as u64);
                prop_assert_eq!(verified.iter().count(), count);
            }
        }
    }
}
