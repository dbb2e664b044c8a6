//! Readers that outlive a change of the log under them: a reader positioned in the log (an
//! application subscription, a catch-up stream) while `truncate_suffix`, `truncate_prefix` or
//! `reset` takes records away and new ones are written. Whatever happened, a reader hands out
//! only records the log holds now, at the LSN it asked for, or says "not yet" (`None`), or
//! says the LSN is gone (`Error::NotInLog`); it never faults on a mapping past the end of a
//! cut file and never hands out a record of a deleted or overwritten file.

use proptest::prelude::*;
use wal::format::{RecordKind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use wal::{Epoch, Error, Lsn, Options, Wal};

fn open(dir: &std::path::Path, segment_bytes_max: u64) -> Wal {
    Wal::open(
        dir,
        Options {
            segment_bytes_max,
            ..Options::default()
        },
    )
    .unwrap()
    .0
}

fn append(wal: &mut Wal, epoch: u64, payloads: &[Vec<u8>]) {
    wal.append(
        Epoch(epoch),
        RecordKind::App,
        payloads.iter().map(|p| &p[..]),
    )
    .unwrap();
}

/// `count` payloads of `len` bytes, each filled with `fill`.
fn payloads(count: usize, len: usize, fill: u8) -> Vec<Vec<u8>> {
    vec![vec![fill; len]; count]
}

/// Reads the next record, which must be there, as (lsn, epoch, payload).
fn next_record(records: &mut wal::reader::Records) -> (Lsn, Epoch, Vec<u8>) {
    let record = records
        .next()
        .expect("a record is there")
        .expect("the record reads back");
    (record.lsn, record.epoch, record.payload().to_vec())
}

/// The reader mapped the segment while records 3..=10 (1000 bytes each, so record 8 starts in
/// the second page) were there; the log is cut back to record 2 and two short records are
/// written: the file now ends in its first page. The reader, positioned at 8, must say "not
/// yet" rather than read its old offset (a page wholly past the end of the file, where a
/// mapping faults), and must then read the new record 8 where it now is.
#[test]
fn reader_past_a_cut_that_shrank_the_file_below_a_page_waits_for_the_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append(&mut wal, 1, &payloads(2, 10, b'a'));
    append(&mut wal, 1, &payloads(8, 1000, b'b'));
    let mut records = wal.reader().iter_from(Lsn(1)).unwrap();
    for _ in 1..=7 {
        next_record(&mut records);
    }
    let old_offset_of_8 = SEGMENT_HEADER_LEN + 2 * (RECORD_HEADER_LEN + 10) + 5 * 1028;
    assert!(
        old_offset_of_8 > 4096,
        "record 8 starts past the first page"
    );

    wal.truncate_suffix(Lsn(2)).unwrap();
    append(&mut wal, 2, &payloads(2, 10, b'c'));
    let file_len = std::fs::metadata(&wal.segment_paths()[0]).unwrap().len();
    assert!(file_len < 4096, "the file now ends in its first page");

    assert_eq!(records.next_lsn(), Lsn(8));
    assert!(records.next().is_none(), "record 8 is not written yet");
    assert!(records.next_batch(1 << 20, Lsn(100)).unwrap().is_none());

    append(&mut wal, 2, &payloads(5, 20, b'd'));
    assert_eq!(
        next_record(&mut records),
        (Lsn(8), Epoch(2), vec![b'd'; 20])
    );
    assert_eq!(
        next_record(&mut records),
        (Lsn(9), Epoch(2), vec![b'd'; 20])
    );
    assert!(records.next().is_none());
}

/// Records of other lengths written after a cut below the reader's position put the reader's
/// LSN at another offset: the reader finds it there instead of decoding its old offset.
#[test]
fn reader_past_a_cut_finds_the_rewritten_records_at_their_new_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append(&mut wal, 1, &payloads(10, 40, b'a'));
    let mut records = wal.reader().iter_from(Lsn(1)).unwrap();
    for _ in 1..=7 {
        next_record(&mut records);
    }
    wal.truncate_suffix(Lsn(5)).unwrap();
    append(&mut wal, 2, &payloads(5, 7, b'z'));
    assert_eq!(next_record(&mut records), (Lsn(8), Epoch(2), vec![b'z'; 7]));
    let batch = records.next_batch(1 << 20, Lsn(10)).unwrap().unwrap();
    assert_eq!((batch.first_lsn, batch.last_lsn), (Lsn(9), Lsn(10)));
    assert_eq!(batch.last_epoch, Epoch(2));
    assert!(records.next().is_none());
}

/// A cut that deletes the reader's segment, and appends that install a new segment of the
/// same name: the reader reads the new file, not the deleted one it still has mapped.
#[test]
fn reader_in_a_segment_deleted_and_written_again_reads_the_new_records() {
    let dir = tempfile::tempdir().unwrap();
    // Four 100-byte records fill a segment exactly.
    let segment_bytes_max = (SEGMENT_HEADER_LEN + 4 * (RECORD_HEADER_LEN + 100)) as u64;
    let mut wal = open(dir.path(), segment_bytes_max);
    append(&mut wal, 1, &payloads(8, 100, b'o'));
    let second = wal.segment_paths()[1].clone();
    let mut records = wal.reader().iter_from(Lsn(1)).unwrap();
    for _ in 1..=5 {
        next_record(&mut records);
    }
    wal.truncate_suffix(Lsn(4)).unwrap();
    assert!(!second.exists());
    append(&mut wal, 2, &payloads(4, 100, b'n'));
    assert_eq!(wal.segment_paths()[1], second, "the same name again");
    assert_eq!(
        next_record(&mut records),
        (Lsn(6), Epoch(2), vec![b'n'; 100])
    );
    let batch = records.next_batch(1 << 20, Lsn(8)).unwrap().unwrap();
    assert_eq!((batch.first_lsn, batch.last_lsn), (Lsn(7), Lsn(8)));
    let verified = wal::format::verify_records(batch.bytes, Lsn(7)).unwrap();
    assert!(verified.iter().all(|r| r.payload == [b'n'; 100]));
}

/// A reader positioned in a segment that `truncate_prefix` deleted is told the LSN is gone,
/// not handed the deleted file's records.
#[test]
fn reader_in_a_segment_deleted_from_the_front_is_told_its_lsn_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = (SEGMENT_HEADER_LEN + 4 * (RECORD_HEADER_LEN + 100)) as u64;
    let mut wal = open(dir.path(), segment_bytes_max);
    append(&mut wal, 1, &payloads(10, 100, b'o'));
    let mut records = wal.reader().iter_from(Lsn(1)).unwrap();
    next_record(&mut records);
    assert_eq!(wal.truncate_prefix(Lsn(5)).unwrap(), 1);
    match records.next() {
        Some(Err(Error::NotInLog {
            lsn: Lsn(2),
            first: Lsn(5),
            ..
        })) => {}
        other => panic!("expected lsn 2 to be gone, got {other:?}"),
    }
}

/// After `reset` the old records are gone for a positioned reader, and a reader at the new
/// start reads the new log.
#[test]
fn reader_after_a_reset_is_told_the_old_records_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 1 << 20);
    append(&mut wal, 1, &payloads(10, 30, b'o'));
    let mut records = wal.reader().iter_from(Lsn(1)).unwrap();
    for _ in 1..=3 {
        next_record(&mut records);
    }
    wal.reset(Lsn(21)).unwrap();
    append(&mut wal, 3, &payloads(2, 5, b'n'));
    assert!(matches!(
        records.next(),
        Some(Err(Error::NotInLog {
            lsn: Lsn(4),
            first: Lsn(21),
            ..
        }))
    ));
    let mut fresh = wal.reader().iter_from(Lsn(21)).unwrap();
    assert_eq!(next_record(&mut fresh), (Lsn(21), Epoch(3), vec![b'n'; 5]));
}

/// The log as records, for the property below: record `i` is LSN `i + 1`.
type Model = Vec<(Epoch, Vec<u8>)>;

fn arb_payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any log, a reader positioned anywhere in it, a cut anywhere, any records written after
    /// the cut: the reader hands out exactly the log's current records from its position on,
    /// or nothing while its position is not written, whether it reads record by record or in
    /// batches of any size.
    #[test]
    fn reader_positioned_across_a_cut_and_new_appends_reads_only_the_current_log(
        before in arb_payloads(),
        after in arb_payloads(),
        position in any::<prop::sample::Index>(),
        keep in any::<prop::sample::Index>(),
        segment_bytes_max in 400u64..3000,
        max_bytes in 1usize..2000,
        by_batch in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(dir.path(), segment_bytes_max);
        append(&mut wal, 1, &before);
        let mut model: Model = before.iter().map(|p| (Epoch(1), p.clone())).collect();
        // Position the reader at any LSN up to one past the end, having mapped its segment.
        let position = position.index(model.len() + 1) as u64 + 1;
        let mut records = wal.reader().iter_from(Lsn(1)).unwrap();
        while records.next_lsn() < Lsn(position) {
            records.next().unwrap().unwrap();
        }
        let keep = keep.index(model.len()) as u64;
        wal.truncate_suffix(Lsn(keep)).unwrap();
        model.truncate(keep as usize);
        append(&mut wal, 2, &after);
        model.extend(after.iter().map(|p| (Epoch(2), p.clone())));

        let mut seen: Vec<(Lsn, Epoch, Vec<u8>)> = Vec::new();
        if by_batch {
            while let Some(batch) = records.next_batch(max_bytes, wal.last_lsn()).unwrap() {
                let verified = wal::format::verify_records(batch.bytes.clone(), batch.first_lsn).unwrap();
                prop_assert_eq!(verified.last_lsn(), batch.last_lsn);
                seen.extend(verified.iter().map(|r| (r.lsn, r.epoch, r.payload.to_vec())));
            }
        } else {
            for record in records.by_ref() {
                let record = record.unwrap();
                seen.push((record.lsn, record.epoch, record.payload().to_vec()));
            }
        }
        let expected: Vec<(Lsn, Epoch, Vec<u8>)> = model
            .iter()
            .enumerate()
            .skip(position as usize - 1)
            .map(|(i, (epoch, payload))| (Lsn(i as u64 + 1), *epoch, payload.clone()))
            .collect();
        prop_assert_eq!(seen, expected);
        prop_assert_eq!(records.next_lsn(), Lsn(position).max(Lsn(model.len() as u64 + 1)));
    }
}

/// A segment's mapping is unmapped once the reader has moved on and the last record read
/// from it is dropped (on a thread of its own, so a while later; the reader module's
/// `Mapping`): kept neither by the reader nor leaked.
#[test]
fn a_segment_left_behind_is_unmapped_once_its_records_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open(dir.path(), 64 << 10);
    append(&mut wal, 1, &payloads(200, 1000, b'a'));
    let first = wal.segment_paths()[0].clone();
    assert!(
        wal.segment_paths().len() >= 3,
        "the records fill several segments"
    );
    let mapped = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .contains(first.to_str().unwrap())
    };
    let mut records = wal.reader().iter_from(Lsn(1)).unwrap();
    let kept = records.next().unwrap().unwrap();
    assert!(mapped(), "the first segment is mapped while read");
    // Read on into the last segment: the reader's own mapping moves along.
    for record in records.by_ref() {
        record.unwrap();
    }
    assert!(
        mapped(),
        "a record read from the first segment still holds its mapping"
    );
    assert_eq!(kept.lsn, Lsn(1));
    drop(kept);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mapped() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first segment is still mapped 10 s after its last record was dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(records);
}
