//! Scrubbing a live log (`Reader::first_damaged`): a damaged record is found at its LSN,
//! records not written yet are never reported, and `Reader::epoch_at` answers from the log's
//! epoch starts through appends, truncations and a reset.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use wal::format::{RecordKind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use wal::{Epoch, Error, Lsn, Options, Wal};

/// Payload of the record at `lsn`: recognisable, and of a size that varies with it.
fn payload(lsn: u64) -> Vec<u8> {
    let len = (lsn * 37 % 90) as usize + 1;
    (0..len).map(|i| (lsn as usize * 7 + i) as u8).collect()
}

/// The epoch of record `lsn` in the logs these tests build: 1, then 2 from LSN 31 on.
fn epoch(lsn: u64) -> Epoch {
    Epoch(if lsn <= 30 { 1 } else { 2 })
}

fn options(segment_bytes_max: u64) -> Options {
    Options {
        segment_bytes_max,
        ..Options::default()
    }
}

/// Opens a log in `dir` holding records `1..=count` (see [`payload`], [`epoch`]), synced.
fn build(dir: &Path, count: u64, segment_bytes_max: u64) -> Wal {
    let (mut wal, _) = Wal::open(dir, options(segment_bytes_max)).unwrap();
    for lsn in 1..=count {
        wal.append(epoch(lsn), RecordKind::App, [&payload(lsn)[..]])
            .unwrap();
    }
    wal.sync().unwrap();
    wal
}

/// The segment holding `lsn`, and the record's offset in it (found by walking the length
/// fields of the file as it is on disk).
fn locate(segments: &[PathBuf], lsn: u64) -> (PathBuf, u64) {
    let path = segments
        .iter()
        .rev()
        .find(|p| first_lsn_of(p) <= lsn)
        .unwrap()
        .clone();
    let bytes = fs::read(&path).unwrap();
    let mut at = first_lsn_of(&path);
    let mut offset = SEGMENT_HEADER_LEN;
    while at < lsn {
        let len = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap());
        offset += RECORD_HEADER_LEN + len as usize;
        at += 1;
    }
    (path, offset as u64)
}

fn first_lsn_of(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    wal::segment::parse_file_name(name).unwrap().get()
}

/// Flips bits of the byte at `offset` of `path` in place (one `pwrite`, so that a writer
/// appending to the same file is not disturbed).
fn flip(path: &Path, offset: u64, mask: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= mask;
    file.write_all_at(&byte, offset).unwrap();
}

/// The scrub looks only at what is written, and a range before the log is an error.
#[test]
fn scrub_does_not_report_records_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = build(dir.path(), 60, 1024);
    let reader = wal.reader();
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(1000)).unwrap(), None);
    assert_eq!(reader.first_damaged(Lsn(61), Lsn(70)).unwrap(), None);
    assert_eq!(reader.first_damaged(Lsn(30), Lsn(20)).unwrap(), None);
    wal.truncate_prefix(Lsn(40)).unwrap();
    let first = wal.first_lsn();
    assert!(first > Lsn(1));
    assert!(matches!(
        reader.first_damaged(Lsn(1), Lsn(60)),
        Err(Error::NotInLog { .. })
    ));
    assert_eq!(reader.first_damaged(first, Lsn(60)).unwrap(), None);
}

/// `epoch_at` answers from the log's epoch starts, for any LSN it holds, through appends,
/// truncations at either end, and a reset.
#[test]
fn epoch_at_follows_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = build(dir.path(), 60, 1024);
    let reader = wal.reader();
    for lsn in 1..=60 {
        assert_eq!(reader.epoch_at(Lsn(lsn)), Some(epoch(lsn)), "lsn {lsn}");
    }
    assert_eq!(reader.epoch_at(Lsn(0)), None);
    assert_eq!(reader.epoch_at(Lsn(61)), None);
    wal.truncate_suffix(Lsn(25)).unwrap();
    assert_eq!(reader.epoch_at(Lsn(26)), None);
    wal.append(Epoch(4), RecordKind::App, [&b"new"[..]])
        .unwrap();
    assert_eq!(reader.epoch_at(Lsn(26)), Some(Epoch(4)));
    assert_eq!(reader.epoch_at(Lsn(25)), Some(Epoch(1)));
    wal.truncate_prefix(Lsn(20)).unwrap();
    let first = wal.first_lsn();
    assert_eq!(reader.epoch_at(first), Some(Epoch(1)));
    assert_eq!(reader.epoch_at(first.prev()), None);
    wal.reset(Lsn(100)).unwrap();
    assert_eq!(reader.epoch_at(Lsn(26)), None);
    wal.append(Epoch(5), RecordKind::App, [&b"after"[..]])
        .unwrap();
    assert_eq!(reader.epoch_at(Lsn(100)), Some(Epoch(5)));
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), options(1024)).unwrap();
    assert_eq!(wal.reader().epoch_at(Lsn(100)), Some(Epoch(5)));
}

/// Flipping the kind byte (under the CRC) is damage like any other.
#[test]
fn damaged_kind_byte_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let wal = build(dir.path(), 10, 1 << 20);
    let (path, offset) = locate(&wal.segment_paths(), 4);
    flip(&path, offset + 24, 0x04);
    assert_eq!(
        wal.reader().first_damaged(Lsn(1), Lsn(10)).unwrap(),
        Some(Lsn(4))
    );
}
