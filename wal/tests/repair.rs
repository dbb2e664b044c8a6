//! Scrubbing a live log (`Reader::first_damaged`) and repairing it in place
//! (`wal::repair::rewrite`) with the intact bytes of a second log built the same way, as a
//! peer's copy would be: a flipped byte in a sealed segment, in the active segment while a
//! writer appends, runs that are already intact, and runs that are not the log's records
//! (another length, another epoch, an intact record that differs), which are refused with
//! nothing written. Plus a property: any byte of any record flipped is found and repaired.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use wal::format::{
    verify_records, RecordKind, VerifiedRecords, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use wal::reader::Reader;
use wal::repair::{rewrite, Repaired};
use wal::writer::{Writer, WriterOptions};
use wal::{Damage, Epoch, Error, Lsn, Mismatch, Options, Wal};

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

/// Flips a payload byte of record `lsn`; returns its segment.
fn damage(segments: &[PathBuf], lsn: u64) -> PathBuf {
    let (path, offset) = locate(segments, lsn);
    flip(&path, offset + RECORD_HEADER_LEN as u64, 0x20);
    path
}

/// Records `first..=last` as `reader` holds them, as a verified run (a peer's answer).
fn copy(reader: &Reader, first: u64, last: u64) -> VerifiedRecords {
    let mut bytes = Vec::new();
    for record in reader
        .iter_from(Lsn(first))
        .unwrap()
        .take((last - first + 1) as usize)
    {
        bytes.extend_from_slice(record.unwrap().encoded());
    }
    verify_records(Bytes::from(bytes), Lsn(first)).unwrap()
}

/// Every record reads back with its payload and epoch.
fn assert_reads_all(reader: &Reader, count: u64) {
    let mut lsn = 0;
    for record in reader.iter_from(Lsn(1)).unwrap() {
        let record = record.unwrap();
        lsn += 1;
        assert_eq!(record.lsn, Lsn(lsn));
        assert_eq!(record.epoch, epoch(lsn));
        assert_eq!(record.payload(), payload(lsn));
    }
    assert_eq!(lsn, count);
}

/// Reopens under the strictest policy: nothing to cut, nothing refused.
fn assert_reopens_clean(dir: &Path, count: u64) {
    let (wal, recovery) = Wal::open(
        dir,
        Options {
            damage: Damage::CutTornOnly,
            ..options(1 << 20)
        },
    )
    .unwrap();
    assert_eq!((recovery.torn, recovery.cut), (None, None));
    assert_eq!(wal.last_lsn(), Lsn(count));
    assert_reads_all(&wal.reader(), count);
}

fn contents(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| fs::read(p).unwrap()).collect()
}

/// A flipped byte in a record of a sealed segment: the scrub finds exactly that LSN (and,
/// from a later LSN of the same index stride, still that one, since the walk passes it);
/// rewriting it with the twin log's bytes repairs it, durably.
#[test]
fn flipped_byte_in_a_sealed_segment_is_found_and_repaired() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wal = build(dir.path(), 60, 1024);
    let twin = build(twin_dir.path(), 60, 1024);
    let segments = wal.segment_paths();
    assert!(segments.len() >= 4, "the test wants several segments");
    let lsn = first_lsn_of(&segments[1]) + 2;
    damage(&segments, lsn);
    let reader = wal.reader();
    assert_eq!(
        reader.first_damaged(Lsn(1), Lsn(60)).unwrap(),
        Some(Lsn(lsn))
    );
    assert_eq!(
        reader.first_damaged(Lsn(lsn + 1), Lsn(60)).unwrap(),
        Some(Lsn(lsn)),
        "the walk from the segment's index entry passes the damaged record"
    );
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(lsn - 1)).unwrap(), None);
    let next_segment = first_lsn_of(&segments[2]);
    assert_eq!(
        reader.first_damaged(Lsn(next_segment), Lsn(60)).unwrap(),
        None
    );
    let repaired = rewrite(&reader, &copy(&twin.reader(), lsn, lsn)).unwrap();
    assert_eq!(
        repaired,
        Repaired {
            rewritten: 1,
            already_intact: 0
        }
    );
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(60)).unwrap(), None);
    assert_reads_all(&reader, 60);
    assert_eq!(contents(&segments), contents(&twin.segment_paths()));
    drop(wal);
    assert_reopens_clean(dir.path(), 60);
}

/// A flipped byte in the active segment while a writer appends to it: the scrub finds that
/// LSN and never one merely not written yet; the rewrite repairs it while the appends go
/// on; a reader that had mapped the segment before sees the new bytes.
#[test]
fn flipped_byte_in_the_active_segment_is_repaired_while_a_writer_appends() {
    const BEFORE: u64 = 100;
    const TOTAL: u64 = 3000;
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wal = build(dir.path(), BEFORE, 64 << 20);
    let twin = build(twin_dir.path(), BEFORE, 64 << 20);
    let segments = wal.segment_paths();
    assert_eq!(segments.len(), 1);
    let writer = Arc::new(Writer::spawn(wal, WriterOptions::default(), None).unwrap());
    let reader = writer.reader();
    let mut follower = reader.iter_from(Lsn(1)).unwrap();
    for lsn in 1..50 {
        assert_eq!(follower.next().unwrap().unwrap().lsn, Lsn(lsn));
    }
    let appender = {
        let writer = Arc::clone(&writer);
        std::thread::spawn(move || {
            for lsn in BEFORE + 1..=TOTAL {
                let (first, _) = writer
                    .append(epoch(lsn), RecordKind::App, [&payload(lsn)[..]])
                    .unwrap();
                assert_eq!(first, Lsn(lsn));
            }
            writer.wait_durable(Lsn(TOTAL)).unwrap();
        })
    };
    damage(&segments, 50);
    assert_eq!(
        reader.first_damaged(Lsn(1), Lsn(u64::MAX)).unwrap(),
        Some(Lsn(50))
    );
    assert!(matches!(
        follower.next(),
        Some(Err(Error::Corrupt { lsn: Lsn(50), .. }))
    ));
    let repaired = rewrite(&reader, &copy(&twin.reader(), 40, 60)).unwrap();
    assert_eq!(
        repaired,
        Repaired {
            rewritten: 1,
            already_intact: 20
        }
    );
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(u64::MAX)).unwrap(), None);
    let record = follower.next().unwrap().unwrap();
    assert_eq!(
        (record.lsn, record.payload()),
        (Lsn(50), payload(50).into())
    );
    appender.join().unwrap();
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(TOTAL)).unwrap(), None);
    assert_reads_all(&reader, TOTAL);
    drop(writer);
    assert_reopens_clean(dir.path(), TOTAL);
}

/// A run that is already what the log holds is left alone: no write, no fsync.
#[test]
fn rewriting_intact_records_changes_nothing() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wal = build(dir.path(), 60, 1024);
    let twin = build(twin_dir.path(), 60, 1024);
    let before = contents(&wal.segment_paths());
    let repaired = rewrite(&wal.reader(), &copy(&twin.reader(), 1, 60)).unwrap();
    assert_eq!(
        repaired,
        Repaired {
            rewritten: 0,
            already_intact: 60
        }
    );
    assert_eq!(contents(&wal.segment_paths()), before);
}

/// A run across segments repairs each damaged record in each, and skips the intact ones.
#[test]
fn run_across_segments_repairs_every_damaged_record() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wal = build(dir.path(), 60, 1024);
    let twin = build(twin_dir.path(), 60, 1024);
    let segments = wal.segment_paths();
    let (a, b) = (first_lsn_of(&segments[1]) - 1, first_lsn_of(&segments[2]));
    damage(&segments, a);
    damage(&segments, b);
    damage(&segments, b + 1);
    let reader = wal.reader();
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(60)).unwrap(), Some(Lsn(a)));
    let repaired = rewrite(&reader, &copy(&twin.reader(), a - 1, b + 2)).unwrap();
    assert_eq!(repaired.rewritten, 3);
    assert_eq!(repaired.already_intact, b + 2 - (a - 1) + 1 - 3);
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(60)).unwrap(), None);
    assert_eq!(contents(&segments), contents(&twin.segment_paths()));
}

/// The walk from the index entry to a run must pass intact records: a damaged one before
/// the run is named, and a run that includes it repairs both.
#[test]
fn damaged_record_before_the_run_is_named() {
    let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wal = build(dir.path(), 20, 1 << 20);
    let twin = build(twin_dir.path(), 20, 1 << 20);
    let segments = wal.segment_paths();
    damage(&segments, 5);
    damage(&segments, 7);
    let reader = wal.reader();
    let err = rewrite(&reader, &copy(&twin.reader(), 7, 8)).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { lsn: Lsn(5), ref path, .. } if path == &segments[0]),
        "{err}"
    );
    let repaired = rewrite(&reader, &copy(&twin.reader(), 5, 8)).unwrap();
    assert_eq!(
        repaired,
        Repaired {
            rewritten: 2,
            already_intact: 2
        }
    );
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(20)).unwrap(), None);
}

/// Records whose length differs from the extent on disk are refused, whether the extent
/// ends at the next record, at the end of a sealed segment, or at the written end of the
/// active one; so is a record of another epoch. Nothing is written.
#[test]
fn records_that_are_not_the_logs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = build(dir.path(), 60, 1024);
    let segments = wal.segment_paths();
    // In three segments, so that no walk to one of them passes another.
    let last_of_sealed = first_lsn_of(&segments[2]) - 1;
    assert!(first_lsn_of(&segments[1]) > 10);
    assert!(first_lsn_of(segments.last().unwrap()) > last_of_sealed);
    for lsn in [10, last_of_sealed, 60] {
        damage(&segments, lsn);
    }
    let reader = wal.reader();
    let before = contents(&segments);
    let offer = |lsn: u64, epoch: Epoch, payload: &[u8]| {
        VerifiedRecords::encode(Lsn(lsn), epoch, RecordKind::App, [payload], 0).unwrap()
    };
    let refusal = |lsn: u64, epoch: Epoch, payload: &[u8]| match rewrite(
        &reader,
        &offer(lsn, epoch, payload),
    )
    .unwrap_err()
    {
        Error::RepairMismatch {
            lsn: at, reason, ..
        } => {
            assert_eq!(at, Lsn(lsn));
            reason
        }
        other => panic!("expected a refusal, got {other}"),
    };
    let shorter = |lsn: u64| payload(lsn)[1..].to_vec();
    let longer = |lsn: u64| [payload(lsn), vec![0; 3]].concat();

    assert!(matches!(
        refusal(10, epoch(10), &shorter(10)),
        Mismatch::NextRecord { .. }
    ));
    assert!(matches!(
        refusal(10, epoch(10), &longer(10)),
        Mismatch::NextRecord { .. }
    ));
    assert!(matches!(
        refusal(
            last_of_sealed,
            epoch(last_of_sealed),
            &shorter(last_of_sealed)
        ),
        Mismatch::SegmentEnd { .. }
    ));
    assert!(matches!(
        refusal(60, epoch(60), &longer(60)),
        Mismatch::PastWritten { .. }
    ));
    assert!(matches!(
        refusal(60, epoch(60), &shorter(60)),
        Mismatch::SegmentEnd { .. }
    ));
    assert_eq!(
        refusal(10, Epoch(3), &payload(10)),
        Mismatch::Epoch {
            ours: Epoch(1),
            offered: Epoch(3)
        }
    );
    assert_eq!(contents(&segments), before, "nothing was written");
    // The right records still repair.
    let right = |lsn: u64| offer(lsn, epoch(lsn), &payload(lsn));
    for lsn in [10, last_of_sealed, 60] {
        assert_eq!(rewrite(&reader, &right(lsn)).unwrap().rewritten, 1);
    }
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(60)).unwrap(), None);
}

/// An intact record is never overwritten, even by a record of its LSN and epoch with other
/// bytes (which invariant 3 rules out); and a run past the log's end is not in the log.
#[test]
fn intact_record_that_differs_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let wal = build(dir.path(), 20, 1 << 20);
    let segments = wal.segment_paths();
    let before = contents(&segments);
    let mut other = payload(10);
    other[0] ^= 1;
    let offered =
        VerifiedRecords::encode(Lsn(10), epoch(10), RecordKind::App, [&other[..]], 0).unwrap();
    let err = rewrite(&wal.reader(), &offered).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RepairMismatch {
                reason: Mismatch::IntactDiffers,
                lsn: Lsn(10),
                ..
            }
        ),
        "{err}"
    );
    let past =
        VerifiedRecords::encode(Lsn(21), epoch(21), RecordKind::App, [&b"x"[..]], 0).unwrap();
    let err = rewrite(&wal.reader(), &past).unwrap_err();
    assert!(matches!(err, Error::NotInLog { lsn: Lsn(21), .. }), "{err}");
    assert_eq!(contents(&segments), before);
}

/// A whole record of another epoch written over a record (right CRC, right LSN) is found by
/// the scrub, which checks the epoch the log assigns to each LSN, and repaired.
#[test]
fn whole_record_of_another_epoch_is_found_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let wal = build(dir.path(), 20, 1 << 20);
    let segments = wal.segment_paths();
    let (path, offset) = locate(&segments, 12);
    let mut stray = Vec::new();
    wal::format::encode_record(&mut stray, Lsn(12), Epoch(1), RecordKind::App, &payload(12));
    stray[16..24].copy_from_slice(&9u64.to_le_bytes());
    let crc = crc32fast::hash(&stray[4..]);
    stray[0..4].copy_from_slice(&crc.to_le_bytes());
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&stray, offset)
        .unwrap();
    let reader = wal.reader();
    assert_eq!(reader.epoch_at(Lsn(12)), Some(Epoch(1)));
    assert_eq!(
        reader.first_damaged(Lsn(1), Lsn(20)).unwrap(),
        Some(Lsn(12))
    );
    let offered =
        VerifiedRecords::encode(Lsn(12), Epoch(1), RecordKind::App, [&payload(12)[..]], 0).unwrap();
    assert_eq!(rewrite(&reader, &offered).unwrap().rewritten, 1);
    assert_eq!(reader.first_damaged(Lsn(1), Lsn(20)).unwrap(), None);
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

fn arb_log() -> impl Strategy<Value = (u64, Vec<(u64, Vec<u8>)>)> {
    (
        200u64..1500,
        proptest::collection::vec(
            (0u64..2, proptest::collection::vec(any::<u8>(), 0..150)),
            1..60,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any byte of any record flipped: an open under `CutTornOnly` refuses, naming that LSN,
    /// and changes nothing; the scrub finds that LSN; a rewrite from a twin log repairs it,
    /// and the log then reopens clean with every record.
    #[test]
    fn any_flipped_byte_is_found_and_repaired(
        (segment_bytes_max, records) in arb_log(),
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let (dir, twin_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let write = |dir: &Path| {
            let (mut wal, _) = Wal::open(dir, options(segment_bytes_max)).unwrap();
            let mut epoch = Epoch(1);
            for (bump, payload) in &records {
                epoch = Epoch(epoch.get() + bump);
                wal.append(epoch, RecordKind::App, [&payload[..]]).unwrap();
            }
            wal.sync().unwrap();
            wal
        };
        let wal = write(dir.path());
        let twin = write(twin_dir.path());
        let count = records.len() as u64;
        let lsn = pick.index(records.len()) as u64 + 1;
        let segments = wal.segment_paths();
        let (path, offset) = locate(&segments, lsn);
        let len = (RECORD_HEADER_LEN + records[lsn as usize - 1].1.len()) as u64;
        flip(&path, offset + at.index(len as usize) as u64, mask);

        let before = contents(&segments);
        let refused = Wal::open(dir.path(), Options { damage: Damage::CutTornOnly, ..options(segment_bytes_max) });
        match refused {
            Err(Error::Corrupt { lsn: l, .. } | Error::SuspectTail { lsn: l, .. }) => prop_assert_eq!(l, Lsn(lsn)),
            Err(other) => prop_assert!(false, "unexpected error {}", other),
            Ok(_) => prop_assert!(false, "the damage was not found"),
        }
        prop_assert_eq!(contents(&segments), before);

        let reader = wal.reader();
        prop_assert_eq!(reader.first_damaged(Lsn(1), Lsn(count)).unwrap(), Some(Lsn(lsn)));
        let repaired = rewrite(&reader, &copy(&twin.reader(), lsn, lsn)).unwrap();
        prop_assert_eq!(repaired, Repaired { rewritten: 1, already_intact: 0 });
        prop_assert_eq!(reader.first_damaged(Lsn(1), Lsn(count)).unwrap(), None);
        prop_assert_eq!(contents(&segments), contents(&twin.segment_paths()));
        drop(wal);
        let (wal, recovery) = Wal::open(dir.path(), Options { damage: Damage::CutTornOnly, ..options(segment_bytes_max) }).unwrap();
        prop_assert_eq!((recovery.torn, recovery.cut), (None, None));
        let mut epoch = Epoch(1);
        let mut read = wal.reader().iter_from(Lsn(1)).unwrap();
        for (i, (bump, payload)) in records.iter().enumerate() {
            epoch = Epoch(epoch.get() + bump);
            let record = read.next().unwrap().unwrap();
            prop_assert_eq!(record.lsn, Lsn(i as u64 + 1));
            prop_assert_eq!(record.epoch, epoch);
            prop_assert_eq!(&record.payload()[..], &payload[..]);
        }
        prop_assert!(read.next().is_none());
    }
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
