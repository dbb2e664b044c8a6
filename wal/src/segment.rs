//! One segment file: its name, its header, and scanning its records with every check of
//! FORMAT.md ("Record"). Scanning is a pure function over the segment's bytes so recovery,
//! `wal verify` and the tests share it. This module decides nothing about torn tails or
//! corruption: it reports where and why a scan stopped, and [`crate::log`] applies the
//! recovery table.

use std::path::{Path, PathBuf};

use crate::error::Corruption;
use crate::format::{decode_record, RecordKind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::types::{Epoch, Lsn};

/// The sparse index keeps one entry per this many bytes of segment.
pub const INDEX_INTERVAL_BYTES: u64 = 64 << 10;

/// The file name of the segment whose first record is `first_lsn`.
pub fn file_name(first_lsn: Lsn) -> String {
    format!("{:020}.wal", first_lsn.get())
}

/// The first LSN a segment file name stands for, or `None` if it is not a segment name.
pub fn parse_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

pub fn path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(file_name(first_lsn))
}

/// An epoch boundary: the first LSN written in `epoch` that this log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: Epoch,
    pub first_lsn: Lsn,
}

/// What a scan of a segment's records found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Records that passed every check.
    pub count: u64,
    /// LSN of the last good record (`first_lsn - 1` if none).
    pub last_lsn: Lsn,
    /// Epoch of the last good record (the epoch passed in if none).
    pub last_epoch: Epoch,
    /// Offset just past the last good record.
    pub good_len: u64,
    /// Sparse index: `(lsn, offset)` of a record at least every [`INDEX_INTERVAL_BYTES`].
    pub index: Vec<(Lsn, u64)>,
    /// Epochs that start inside this segment.
    pub epoch_starts: Vec<EpochStart>,
    /// Where and why the scan stopped before the end of the bytes, if it did.
    pub stop: Option<(u64, Corruption)>,
}

/// Scans the records of a segment whose header has been checked. `prev_epoch` is the epoch
/// of the record before `first_lsn` (or `Epoch::ZERO`).
pub fn scan(bytes: &[u8], first_lsn: Lsn, prev_epoch: Epoch) -> Scan {
    assert!(bytes.len() >= SEGMENT_HEADER_LEN);
    let mut scan = Scan {
        count: 0,
        last_lsn: first_lsn.prev(),
        last_epoch: prev_epoch,
        good_len: SEGMENT_HEADER_LEN as u64,
        index: Vec::new(),
        epoch_starts: Vec::new(),
        stop: None,
    };
    let mut offset = SEGMENT_HEADER_LEN;
    let mut next_index_offset = 0u64;
    while offset < bytes.len() {
        let expected = scan.last_lsn.next();
        let record = match decode_record(&bytes[offset..]) {
            Ok(Some((record, len))) => (record, len),
            Ok(None) => {
                scan.stop = Some((offset as u64, Corruption::Truncated));
                break;
            }
            Err(reason) => {
                scan.stop = Some((offset as u64, reason));
                break;
            }
        };
        let (record, len) = record;
        if record.lsn != expected {
            scan.stop = Some((
                offset as u64,
                Corruption::Misplaced {
                    expected,
                    found: record.lsn,
                },
            ));
            break;
        }
        if record.epoch < scan.last_epoch {
            scan.stop = Some((
                offset as u64,
                Corruption::EpochOrder {
                    previous: scan.last_epoch.get(),
                    found: record.epoch.get(),
                },
            ));
            break;
        }
        if record.epoch != scan.last_epoch {
            scan.epoch_starts.push(EpochStart {
                epoch: record.epoch,
                first_lsn: record.lsn,
            });
        }
        if offset as u64 >= next_index_offset {
            scan.index.push((record.lsn, offset as u64));
            next_index_offset = offset as u64 + INDEX_INTERVAL_BYTES;
        }
        scan.count += 1;
        scan.last_lsn = record.lsn;
        scan.last_epoch = record.epoch;
        offset += len;
        scan.good_len = offset as u64;
    }
    scan
}

/// Whether a stop reason can come from a torn write (a crash in the middle of an append)
/// rather than from damage or a bug: a short record, a bad CRC, or a length that is garbage.
/// A record whose CRC is right but whose contents are wrong was written that way.
pub fn stop_may_be_torn(reason: &Corruption) -> bool {
    match reason {
        Corruption::Truncated | Corruption::Crc { .. } | Corruption::LenTooLarge { .. } => true,
        Corruption::BadField(_)
        | Corruption::Misplaced { .. }
        | Corruption::EpochOrder { .. }
        | Corruption::NameMismatch { .. }
        | Corruption::TrailingBytes
        | Corruption::Trailer(_) => false,
    }
}

/// Whether a scan that stopped at `offset` for `reason`, with nothing intact after it, proves
/// a torn write: that the file ends inside the last record, which only a crash in the middle
/// of its append can leave. A record that was complete and fsynced does not lose bytes off
/// the end of its file when a sector goes bad; it can only have its bytes changed, and no
/// check of ours can tell changed bytes of an old record from the garbage or zeroes a crash
/// may leave. So this is true only for [`Corruption::Truncated`], and then only when the
/// bytes left cannot be a complete record whose damaged header makes it look longer:
///
/// - fewer bytes than a record header are left: the file ends inside the header; or
/// - the header is whole and is the one expected here (`expected_lsn`, a known kind, zero
///   reserved bytes, an epoch of at least `prev_epoch`), so its length is trusted, and the
///   bytes left are not a whole record under its CRC once the length field is replaced by
///   the length that is there (a complete record with a damaged length would be).
///
/// Anything else that a crash may also have left (a CRC mismatch, a length over the limit,
/// zeroes, a header that is not the expected one) is not proof, and is reported as a
/// suspect tail by [`crate::log`].
pub fn stop_is_provably_torn(
    bytes: &[u8],
    offset: u64,
    reason: &Corruption,
    expected_lsn: Lsn,
    prev_epoch: Epoch,
) -> bool {
    if *reason != Corruption::Truncated {
        return false;
    }
    let Some(rest) = usize::try_from(offset).ok().and_then(|at| bytes.get(at..)) else {
        return false;
    };
    if rest.len() < RECORD_HEADER_LEN {
        return true;
    }
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&rest[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let header_expected = u64_at(8) == expected_lsn.get()
        && RecordKind::from_u8(rest[24]).is_some()
        && rest[25..28] == [0, 0, 0]
        && u64_at(16) >= prev_epoch.get().max(1);
    if !header_expected {
        return false;
    }
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&rest[..4]);
    let Ok(actual_payload_len) = u32::try_from(rest.len() - RECORD_HEADER_LEN) else {
        return true;
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&actual_payload_len.to_le_bytes());
    crc.update(&rest[8..]);
    crc.finalize() != u32::from_le_bytes(stored)
}

/// Looks for any intact record with an LSN after `after_lsn` starting at or after `from` in
/// `bytes`. Finding one means the damage at `from` is not a torn tail (records are written in
/// order, so nothing intact can follow a torn write), and returns its offset.
///
/// Every byte position is a candidate; the LSN and length fields are checked before the CRC,
/// so a scan of a megabyte of garbage costs about a millisecond.
pub fn find_intact_after(bytes: &[u8], from: usize, after_lsn: Lsn) -> Option<(u64, Lsn)> {
    let mut offset = from;
    while offset + RECORD_HEADER_LEN <= bytes.len() {
        let at = &bytes[offset..];
        let mut word = [0u8; 8];
        word.copy_from_slice(&at[8..16]);
        let lsn = u64::from_le_bytes(word);
        let remaining_records = (bytes.len() - offset) as u64 / RECORD_HEADER_LEN as u64 + 1;
        if lsn > after_lsn.get() && lsn - after_lsn.get() <= remaining_records {
            // Any kind: a config record after the damage proves it no torn tail as much as an
            // application record does (`decode_record` refuses an unknown kind).
            if let Ok(Some((record, _))) = decode_record(at) {
                return Some((offset as u64, record.lsn));
            }
        }
        offset += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, encode_segment_header};

    fn segment(first: u64, epochs: &[u64]) -> Vec<u8> {
        let mut buf = encode_segment_header(Lsn(first)).to_vec();
        for (i, &epoch) in epochs.iter().enumerate() {
            encode_record(
                &mut buf,
                Lsn(first + i as u64),
                Epoch(epoch),
                RecordKind::App,
                &[i as u8; 10],
            );
        }
        buf
    }

    #[test]
    fn names_sort_in_lsn_order_and_round_trip() {
        assert_eq!(file_name(Lsn(52117)), "00000000000000052117.wal");
        assert_eq!(
            parse_file_name("00000000000000052117.wal"),
            Some(Lsn(52117))
        );
        assert_eq!(parse_file_name("52117.wal"), None);
        assert_eq!(parse_file_name("0000000000000005211x.wal"), None);
        assert!(file_name(Lsn(9)) < file_name(Lsn(10)));
    }

    #[test]
    fn scan_records_epoch_starts() {
        let bytes = segment(10, &[1, 1, 2, 2, 5]);
        let scan = scan(&bytes, Lsn(10), Epoch(1));
        assert_eq!(scan.count, 5);
        assert_eq!(scan.last_lsn, Lsn(14));
        assert_eq!(scan.stop, None);
        assert_eq!(
            scan.epoch_starts,
            vec![
                EpochStart {
                    epoch: Epoch(2),
                    first_lsn: Lsn(12)
                },
                EpochStart {
                    epoch: Epoch(5),
                    first_lsn: Lsn(14)
                },
            ]
        );
    }

    #[test]
    fn scan_stops_at_a_misplaced_record() {
        let mut bytes = segment(1, &[1, 1]);
        encode_record(&mut bytes, Lsn(9), Epoch(1), RecordKind::App, b"x");
        let scan = scan(&bytes, Lsn(1), Epoch::ZERO);
        assert_eq!(scan.count, 2);
        assert!(matches!(scan.stop, Some((_, Corruption::Misplaced { .. }))));
    }

    /// A short last record is proof of a torn write only when its header is the one that
    /// belongs there: a header with another LSN, cut short, may be a damaged record.
    #[test]
    fn short_tail_with_an_unexpected_header_is_not_proof_of_a_torn_write() {
        let bytes = segment(1, &[1, 1, 1]);
        let third = SEGMENT_HEADER_LEN + 2 * (RECORD_HEADER_LEN + 10);
        let torn = &bytes[..bytes.len() - 3];
        let is_proof = |bytes: &[u8], lsn: u64, epoch: u64| {
            stop_is_provably_torn(
                bytes,
                third as u64,
                &Corruption::Truncated,
                Lsn(lsn),
                Epoch(epoch),
            )
        };
        assert!(is_proof(torn, 3, 1));
        assert!(!is_proof(torn, 4, 1), "another lsn");
        assert!(!is_proof(torn, 3, 2), "a lower epoch");
        assert!(
            is_proof(&bytes[..third + 5], 4, 9),
            "the file ends inside the header"
        );
        assert!(!is_proof(&bytes, 3, 1), "a whole record is not short");
        let crc = Corruption::Crc {
            stored: 0,
            computed: 1,
        };
        assert!(!stop_is_provably_torn(
            &bytes,
            third as u64,
            &crc,
            Lsn(3),
            Epoch(1)
        ));
    }

    #[test]
    fn intact_record_after_damage_is_found() {
        let bytes = segment(1, &[1, 1, 1]);
        let second = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 10;
        let mut damaged = bytes.clone();
        damaged[second + 30] ^= 0xff;
        let found = find_intact_after(&damaged, second, Lsn(1));
        assert_eq!(found.map(|(_, lsn)| lsn), Some(Lsn(3)));
        let torn = &bytes[..bytes.len() - 3];
        assert_eq!(
            find_intact_after(torn, second + RECORD_HEADER_LEN + 10, Lsn(2)),
            None
        );
    }

    /// A config record after the damage counts too: a damaged record followed only by a
    /// membership change is no torn tail.
    #[test]
    fn intact_config_record_after_damage_is_found() {
        let mut bytes = segment(1, &[1, 1]);
        encode_record(&mut bytes, Lsn(3), Epoch(1), RecordKind::Config, b"{}");
        let second = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 10;
        bytes[second + 30] ^= 0xff;
        let found = find_intact_after(&bytes, second, Lsn(1));
        assert_eq!(found.map(|(_, lsn)| lsn), Some(Lsn(3)));
    }
}
