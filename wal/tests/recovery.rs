//! One test per row of the recovery table in FORMAT.md ("Recovery at open"), plus the bad
//! inputs an operator can hand us: foreign files, empty and zero-length segments, headers of
//! another version. Every test checks that nothing was deleted that was not a torn tail.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use wal::format::{RecordKind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use wal::log::Recovery;
use wal::{Corruption, Damage, Epoch, Error, Lsn, Options, Wal};

fn options(segment_bytes_max: u64) -> Options {
    Options {
        segment_bytes_max,
        ..Options::default()
    }
}

/// Payload of the record at `lsn`: recognisable, and of a size that varies with it.
fn payload(lsn: u64) -> Vec<u8> {
    let len = (lsn * 37 % 90) as usize + 1;
    (0..len).map(|i| (lsn as usize + i) as u8).collect()
}

/// Writes records `1..=count` (epoch 1) and syncs. Returns the segment paths.
fn write_log(dir: &Path, count: u64, segment_bytes_max: u64) -> Vec<PathBuf> {
    let (mut wal, _) = Wal::open(dir, options(segment_bytes_max)).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=count).map(payload).collect();
    wal.append(Epoch(1), RecordKind::App, payloads.iter().map(|p| &p[..]))
        .unwrap();
    wal.sync().unwrap();
    wal.segment_paths()
}

fn read_all(wal: &Wal) -> Vec<(Lsn, Vec<u8>)> {
    wal.reader()
        .iter_from(wal.first_lsn())
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn, r.payload().to_vec())
        })
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn open(dir: &Path) -> Result<(Wal, Recovery), Error> {
    Wal::open(dir, options(1024))
}

/// Row "intact": every record comes back, in order, with its payload.
#[test]
fn intact_log_reopens_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 100, 1024);
    assert!(segments.len() > 3, "the test wants several segments");
    let (wal, recovery) = open(dir.path()).unwrap();
    assert_eq!(recovery.torn, None);
    assert_eq!(recovery.records, 100);
    assert_eq!(wal.last_lsn(), Lsn(100));
    assert_eq!(wal.durable_lsn(), Lsn(100));
    let records = read_all(&wal);
    assert_eq!(records.len(), 100);
    for (lsn, data) in records {
        assert_eq!(data, payload(lsn.get()));
    }
}

/// Row "torn (provable)": a partial last record is cut at the last good record, durably,
/// and reported as provably torn.
#[test]
fn torn_tail_is_cut_to_last_good_record() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    let last = segments.last().unwrap();
    let full_len = fs::metadata(last).unwrap().len();
    let last_record_len = (RECORD_HEADER_LEN + payload(20).len()) as u64;
    // Cut in the middle of record 20.
    let cut = full_len - last_record_len / 2;
    OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (wal, recovery) = open(dir.path()).unwrap();
    let torn = recovery.torn.expect("the torn tail is reported");
    assert!(
        torn.provably_torn,
        "the file ends inside record 20's header"
    );
    assert_eq!(torn.reason, Corruption::Truncated);
    assert_eq!(torn.last_lsn, Lsn(19));
    assert_eq!(torn.offset, full_len - last_record_len);
    assert_eq!(wal.last_lsn(), Lsn(19));
    assert_eq!(
        fs::metadata(last).unwrap().len(),
        full_len - last_record_len
    );
    // The log takes new records after the cut.
    drop(wal);
    let (mut wal, _) = open(dir.path()).unwrap();
    wal.append(Epoch(1), RecordKind::App, [&b"after"[..]])
        .unwrap();
    wal.sync().unwrap();
    assert_eq!(
        read_all(&wal).last().unwrap(),
        &(Lsn(20), b"after".to_vec())
    );
}

/// Row "suspect tail": zeroes after the last record (a file extended but never written, or
/// a record that reads back as zeroes) are cut, but are no proof of a torn write.
#[test]
fn zeroed_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 5, 1 << 20);
    let last = segments.last().unwrap();
    let full_len = fs::metadata(last).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(last)
        .unwrap()
        .write_all(&[0u8; 4096])
        .unwrap();
    let (wal, recovery) = open(dir.path()).unwrap();
    let torn = recovery.torn.unwrap();
    assert_eq!(torn.cut_len, 4096);
    assert!(!torn.provably_torn);
    assert_eq!(wal.last_lsn(), Lsn(5));
    assert_eq!(fs::metadata(last).unwrap().len(), full_len);
}

/// Offset of record `lsn` in the one segment `write_log` wrote for a large segment size.
fn offset_of(lsn: u64) -> usize {
    SEGMENT_HEADER_LEN
        + (1..lsn)
            .map(|l| RECORD_HEADER_LEN + payload(l).len())
            .sum::<usize>()
}

/// Row "torn (provable)": the file ends inside the payload that the last record's intact
/// header announces.
#[test]
fn tail_ending_inside_the_last_payload_is_provably_torn() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    let last = &segments[0];
    let cut = offset_of(20) + RECORD_HEADER_LEN + payload(20).len() / 2;
    OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    let (wal, recovery) = open(dir.path()).unwrap();
    let torn = recovery.torn.expect("the torn tail is reported");
    assert!(torn.provably_torn);
    assert_eq!(torn.reason, Corruption::Truncated);
    assert_eq!(torn.offset, offset_of(20) as u64);
    assert_eq!(wal.last_lsn(), Lsn(19));
}

/// Row "suspect tail": a last record that is whole but fails its CRC (a latent sector error
/// in a record fsynced and acknowledged long ago looks just like this) is cut, fsynced and
/// reported as not provably torn.
#[test]
fn complete_last_record_failing_its_crc_is_a_suspect_tail() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    let last = &segments[0];
    let mut bytes = fs::read(last).unwrap();
    let full_len = bytes.len();
    bytes[offset_of(20) + RECORD_HEADER_LEN] ^= 0x01;
    fs::write(last, &bytes).unwrap();
    let (wal, recovery) = open(dir.path()).unwrap();
    let torn = recovery.torn.expect("the damaged tail is reported");
    assert!(!torn.provably_torn);
    assert!(
        matches!(torn.reason, Corruption::Crc { .. }),
        "{:?}",
        torn.reason
    );
    assert_eq!(torn.last_lsn, Lsn(19));
    assert_eq!(torn.offset, offset_of(20) as u64);
    assert_eq!(torn.cut_len, (full_len - offset_of(20)) as u64);
    assert_eq!(wal.last_lsn(), Lsn(19));
    assert_eq!(fs::metadata(last).unwrap().len(), offset_of(20) as u64);
    // The cut was made as for a torn write: a second open finds nothing to cut.
    drop(wal);
    let (_, recovery) = open(dir.path()).unwrap();
    assert_eq!(recovery.torn, None);
}

/// Row "suspect tail": a whole last record whose length field alone was damaged to a larger
/// value looks cut short by the end of the file, but its bytes are a complete record under its
/// CRC, so it is no proof of a torn write.
#[test]
fn complete_last_record_with_a_damaged_length_is_a_suspect_tail() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    let last = &segments[0];
    let mut bytes = fs::read(last).unwrap();
    let len_field = offset_of(20) + 4;
    let longer = payload(20).len() as u32 | 0x100;
    bytes[len_field..len_field + 4].copy_from_slice(&longer.to_le_bytes());
    fs::write(last, &bytes).unwrap();
    let (wal, recovery) = open(dir.path()).unwrap();
    let torn = recovery.torn.expect("the damaged tail is reported");
    assert_eq!(torn.reason, Corruption::Truncated);
    assert!(!torn.provably_torn);
    assert_eq!(wal.last_lsn(), Lsn(19));
}

/// Row "suspect tail": a length over the format's limit in the last record's header.
#[test]
fn last_record_with_a_length_over_the_limit_is_a_suspect_tail() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    let last = &segments[0];
    let mut bytes = fs::read(last).unwrap();
    let len_field = offset_of(20) + 4;
    bytes[len_field..len_field + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(last, &bytes).unwrap();
    let (wal, recovery) = open(dir.path()).unwrap();
    let torn = recovery.torn.expect("the damaged tail is reported");
    assert!(matches!(torn.reason, Corruption::LenTooLarge { .. }));
    assert!(!torn.provably_torn);
    assert_eq!(wal.last_lsn(), Lsn(19));
}

/// `inspect` (what `understudy wal verify` reads) tells a provably torn tail from a suspect
/// one as `Wal::open` does, and cuts neither.
#[test]
fn inspect_reports_whether_a_tail_is_provably_torn() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    let last = &segments[0];
    let good = fs::read(last).unwrap();

    fs::write(last, &good[..good.len() - 3]).unwrap();
    let torn = wal::log::inspect(dir.path()).unwrap().torn.unwrap();
    assert!(torn.provably_torn);
    assert_eq!(fs::metadata(last).unwrap().len(), good.len() as u64 - 3);

    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x80;
    fs::write(last, &flipped).unwrap();
    let torn = wal::log::inspect(dir.path()).unwrap().torn.unwrap();
    assert!(!torn.provably_torn);
    assert_eq!(fs::read(last).unwrap(), flipped);
}

/// Row "corrupt": a bad record followed by a good one is corruption, not a torn tail.
#[test]
fn damaged_record_before_intact_ones_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 10, 1 << 20);
    let last = segments.last().unwrap();
    let before = fs::read(last).unwrap();
    let mut bytes = before.clone();
    // Flip a payload byte of record 3.
    let offset = SEGMENT_HEADER_LEN
        + (1..=2)
            .map(|l| RECORD_HEADER_LEN + payload(l).len())
            .sum::<usize>();
    bytes[offset + RECORD_HEADER_LEN] ^= 0x40;
    fs::write(last, &bytes).unwrap();
    match open(dir.path()) {
        Err(Error::Corrupt {
            path,
            offset: at,
            lsn,
            reason,
        }) => {
            assert_eq!(&path, last);
            assert_eq!(at, offset as u64);
            assert_eq!(lsn, Lsn(3));
            assert!(matches!(reason, Corruption::Crc { .. }));
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
    // Nothing was cut.
    assert_eq!(fs::read(last).unwrap(), bytes);
}

/// Row "corrupt": any damage in a sealed segment is corruption, even at its very end.
#[test]
fn damage_at_the_end_of_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 60, 1024);
    let sealed = &segments[0];
    let len = fs::metadata(sealed).unwrap().len();
    let mut bytes = fs::read(sealed).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(sealed, &bytes).unwrap();
    let err = open(dir.path()).err().expect("corruption");
    assert!(
        matches!(err, Error::Corrupt { ref path, .. } if path == sealed),
        "{err}"
    );
    assert_eq!(fs::metadata(sealed).unwrap().len(), len);
}

/// Row "misplaced": a record with a valid CRC but the wrong LSN is corruption.
#[test]
fn record_with_the_wrong_lsn_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 3, 1 << 20);
    let last = segments.last().unwrap();
    let mut extra = Vec::new();
    wal::format::encode_record(&mut extra, Lsn(7), Epoch(1), RecordKind::App, b"stray");
    OpenOptions::new()
        .append(true)
        .open(last)
        .unwrap()
        .write_all(&extra)
        .unwrap();
    let err = open(dir.path()).err().expect("corruption");
    assert!(
        matches!(
            err,
            Error::Corrupt {
                reason: Corruption::Misplaced {
                    expected: Lsn(4),
                    found: Lsn(7)
                },
                ..
            }
        ),
        "{err}"
    );
}

/// Row "bad header": another magic, a damaged header, or a name that disagrees.
#[test]
fn foreign_magic_and_damaged_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 3, 1 << 20);
    let path = &segments[0];
    let good = fs::read(path).unwrap();

    let mut bytes = good.clone();
    bytes[0..8].copy_from_slice(b"NOTAWAL!");
    fs::write(path, &bytes).unwrap();
    let err = open(dir.path()).err().unwrap();
    assert!(matches!(err, Error::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()));

    let mut bytes = good.clone();
    bytes[17] ^= 1; // first_lsn, covered by the header CRC
    fs::write(path, &bytes).unwrap();
    let err = open(dir.path()).err().unwrap();
    assert!(
        matches!(
            err,
            Error::Corrupt {
                reason: Corruption::Crc { .. },
                ..
            }
        ),
        "{err}"
    );

    fs::write(path, &good).unwrap();
    let renamed = dir.path().join(wal::segment::file_name(Lsn(5)));
    fs::rename(path, &renamed).unwrap();
    let err = open(dir.path()).err().unwrap();
    assert!(
        matches!(
            err,
            Error::Corrupt {
                reason: Corruption::NameMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
}

/// Row "unsupported": a header of another version names the file and both versions.
#[test]
fn header_of_another_version_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 3, 1 << 20);
    let path = &segments[0];
    let mut bytes = fs::read(path).unwrap();
    bytes[8..10].copy_from_slice(&7u16.to_le_bytes());
    let crc = crc32fast::hash(&bytes[0..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, &bytes).unwrap();
    let err = open(dir.path()).err().unwrap();
    assert!(matches!(
        err,
        Error::UnsupportedVersion {
            found: 7,
            supported: 1,
            ..
        }
    ));
    let message = err.to_string();
    assert!(message.contains("version 7"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

/// Row "gap": a missing segment in the middle is refused, never skipped.
#[test]
fn missing_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 60, 1024);
    assert!(segments.len() >= 3);
    fs::remove_file(&segments[1]).unwrap();
    let err = open(dir.path()).err().unwrap();
    assert!(
        matches!(err, Error::Gap { ref path, .. } if path == &segments[2]),
        "{err}"
    );
}

/// Row "empty": a last segment with only its header is a roll that crashed before its
/// first record, and is used.
#[test]
fn empty_last_segment_is_used() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, 1 << 20);
    let next = dir.path().join(wal::segment::file_name(Lsn(6)));
    fs::write(&next, wal::format::encode_segment_header(Lsn(6))).unwrap();
    let (mut wal, _) = open(dir.path()).unwrap();
    assert_eq!(wal.last_lsn(), Lsn(5));
    assert_eq!(
        wal.append(Epoch(1), RecordKind::App, [&b"x"[..]]).unwrap(),
        (Lsn(6), Lsn(6))
    );
    wal.sync().unwrap();
    assert!(fs::metadata(&next).unwrap().len() > SEGMENT_HEADER_LEN as u64);
}

/// An empty segment that is not the last one leaves a gap behind it.
#[test]
fn empty_sealed_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, 1 << 20);
    for first in [6u64, 9] {
        let path = dir.path().join(wal::segment::file_name(Lsn(first)));
        fs::write(path, wal::format::encode_segment_header(Lsn(first))).unwrap();
    }
    let err = open(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Gap { found: Lsn(9), .. }), "{err}");
}

/// A zero-length segment file cannot come from our own crash (segments are installed with
/// their header), so it is refused and kept.
#[test]
fn zero_length_segment_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, 1 << 20);
    let path = dir.path().join(wal::segment::file_name(Lsn(6)));
    fs::write(&path, b"").unwrap();
    let err = open(dir.path()).err().unwrap();
    assert!(
        matches!(err, Error::Corrupt { path: ref p, .. } if p == &path),
        "{err}"
    );
    assert!(path.exists());
}

/// Row "foreign": a file we do not recognise stops the open and nothing is deleted.
#[test]
fn foreign_file_is_refused_and_nothing_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, 1 << 20);
    fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    fs::write(dir.path().join("00000000000000000009.wal.tmp"), b"half").unwrap();
    let before = files(dir.path());
    let err = open(dir.path()).err().unwrap();
    assert!(matches!(err, Error::ForeignFile { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"));
    assert_eq!(files(dir.path()), before);
}

/// Row "stale temp": an install that crashed before its rename is cleaned up.
#[test]
fn stale_temp_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, 1 << 20);
    let tmp = dir.path().join("00000000000000000006.wal.tmp");
    fs::write(&tmp, b"half a header").unwrap();
    let (_, recovery) = open(dir.path()).unwrap();
    assert_eq!(recovery.removed_tmp, vec![tmp.clone()]);
    assert!(!tmp.exists());
}

/// An empty directory gets a first segment at the start LSN it is given.
#[test]
fn empty_directory_starts_at_the_given_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, recovery) = Wal::open(
        dir.path(),
        Options {
            start_lsn: Lsn(501),
            ..Options::default()
        },
    )
    .unwrap();
    assert!(recovery.created);
    assert_eq!(wal.first_lsn(), Lsn(501));
    assert_eq!(wal.last_lsn(), Lsn(500));
    assert_eq!(
        wal.append(Epoch(3), RecordKind::App, [&b"a"[..]]).unwrap(),
        (Lsn(501), Lsn(501))
    );
}

// The damage policies (`Options::damage`): what each may cut, and that a refusal changes
// nothing.

fn open_under(dir: &Path, damage: Damage) -> Result<(Wal, Recovery), Error> {
    Wal::open(
        dir,
        Options {
            damage,
            ..options(1024)
        },
    )
}

/// Every file in `dir` with its bytes, to show that a refused open changed nothing.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files(dir)
        .into_iter()
        .map(|name| {
            let bytes = fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// The offset of record `lsn` in the segment at `path`, found by walking its length fields.
fn record_offset(path: &Path, lsn: u64) -> usize {
    let bytes = fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let mut at_lsn = wal::segment::parse_file_name(name).unwrap().get();
    let mut offset = SEGMENT_HEADER_LEN;
    while at_lsn < lsn {
        let len = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap());
        offset += RECORD_HEADER_LEN + len as usize;
        at_lsn += 1;
    }
    offset
}

/// Flips a payload byte of record `lsn` in the segment at `path`; returns its offset.
fn damage_record(path: &Path, lsn: u64) -> usize {
    let offset = record_offset(path, lsn);
    let mut bytes = fs::read(path).unwrap();
    bytes[offset + RECORD_HEADER_LEN] ^= 0x10;
    fs::write(path, &bytes).unwrap();
    offset
}

/// The first LSN in the segment at `path`.
fn first_lsn_of(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    wal::segment::parse_file_name(name).unwrap().get()
}

/// `CutTornOnly` still cuts a provably torn tail: it is a write that was never durable.
#[test]
fn cut_torn_only_cuts_a_provably_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    let last = &segments[0];
    let good_len = offset_of(20) as u64;
    OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(good_len + 10)
        .unwrap();
    let (wal, recovery) = open_under(dir.path(), Damage::CutTornOnly).unwrap();
    let torn = recovery.torn.expect("the torn tail is reported");
    assert!(torn.provably_torn);
    assert_eq!(recovery.cut, None);
    assert_eq!(wal.last_lsn(), Lsn(19));
    assert_eq!(fs::metadata(last).unwrap().len(), good_len);
}

/// `CutTornOnly` refuses a suspect tail with `Error::SuspectTail` naming the file, the
/// offset and the LSN of the damaged record, and changes nothing, not even a stale temp file.
#[test]
fn cut_torn_only_refuses_a_suspect_tail_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    let last = &segments[0];
    damage_record(last, 20);
    fs::write(dir.path().join("00000000000000000021.wal.tmp"), b"half").unwrap();
    let before = contents(dir.path());
    let err = open_under(dir.path(), Damage::CutTornOnly).err().unwrap();
    match &err {
        Error::SuspectTail { path, offset, lsn } => {
            assert_eq!(path, last);
            assert_eq!(*offset, offset_of(20) as u64);
            assert_eq!(*lsn, Lsn(20));
        }
        other => panic!("expected a suspect tail, got {other}"),
    }
    assert!(err.to_string().contains(&last.display().to_string()));
    assert_eq!(contents(dir.path()), before);
}

/// `CutTornOnly` refuses damage before intact records, as every policy but `CutAll` does.
#[test]
fn cut_torn_only_refuses_damage_before_intact_records() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 10, 1 << 20);
    damage_record(&segments[0], 4);
    let before = contents(dir.path());
    let err = open_under(dir.path(), Damage::CutTornOnly).err().unwrap();
    assert!(matches!(err, Error::Corrupt { lsn: Lsn(4), .. }), "{err}");
    assert_eq!(contents(dir.path()), before);
}

/// `CutAll` cuts the log just before a damaged record in a sealed segment: that segment is
/// cut at the record, every later one deleted, and the cut reported with how many records
/// went; the log then reopens clean under the strictest policy.
#[test]
fn cut_all_cuts_before_a_damaged_record_in_a_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 60, 1024);
    assert!(segments.len() >= 4, "the test wants several segments");
    let damaged = &segments[1];
    let lsn = first_lsn_of(damaged) + 2;
    let offset = damage_record(damaged, lsn);
    let (wal, recovery) = open_under(dir.path(), Damage::CutAll).unwrap();
    let cut = recovery.cut.expect("the cut is reported");
    assert_eq!(&cut.path, damaged);
    assert_eq!(cut.offset, offset as u64);
    assert_eq!(cut.lsn, Lsn(lsn));
    assert!(
        matches!(cut.reason, Corruption::Crc { .. }),
        "{:?}",
        cut.reason
    );
    assert_eq!(cut.records_cut, 60 - lsn + 1);
    assert_eq!(recovery.torn, None);
    assert_eq!(recovery.records, lsn - 1);
    assert_eq!(wal.last_lsn(), Lsn(lsn - 1));
    assert_eq!(wal.segment_paths(), segments[..2].to_vec());
    for gone in &segments[2..] {
        assert!(!gone.exists(), "{} was deleted", gone.display());
    }
    assert_eq!(fs::metadata(damaged).unwrap().len(), offset as u64);
    let records = read_all(&wal);
    assert_eq!(records.len() as u64, lsn - 1);
    for (at, data) in records {
        assert_eq!(data, payload(at.get()));
    }
    drop(wal);
    let (mut wal, recovery) = open_under(dir.path(), Damage::CutTornOnly).unwrap();
    assert_eq!((recovery.torn, recovery.cut), (None, None));
    assert_eq!(
        wal.append(Epoch(1), RecordKind::App, [&b"next"[..]])
            .unwrap(),
        (Lsn(lsn), Lsn(lsn))
    );
}

/// `CutAll` on damage in the middle of the last segment counts the intact records after it.
#[test]
fn cut_all_counts_the_intact_records_after_damage_in_the_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    let offset = damage_record(&segments[0], 5);
    let (wal, recovery) = open_under(dir.path(), Damage::CutAll).unwrap();
    let cut = recovery.cut.unwrap();
    assert_eq!(
        (cut.lsn, cut.offset, cut.records_cut),
        (Lsn(5), offset as u64, 16)
    );
    assert_eq!(recovery.torn, None);
    assert_eq!(wal.last_lsn(), Lsn(4));
}

/// `CutAll` cuts a suspect tail, reported both as the torn tail it looks like and as a cut.
#[test]
fn cut_all_cuts_a_suspect_tail_and_reports_it_as_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 20, 1 << 20);
    damage_record(&segments[0], 20);
    let (wal, recovery) = open_under(dir.path(), Damage::CutAll).unwrap();
    let torn = recovery.torn.unwrap();
    assert!(!torn.provably_torn);
    let cut = recovery.cut.unwrap();
    assert_eq!(
        (cut.lsn, cut.offset, cut.records_cut),
        (Lsn(20), offset_of(20) as u64, 0)
    );
    assert_eq!(wal.last_lsn(), Lsn(19));
}

/// `CutAll` takes a damaged header of a segment after the first as the cut point: that
/// segment and every later one are deleted.
#[test]
fn cut_all_deletes_a_later_segment_whose_header_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 60, 1024);
    assert!(segments.len() >= 4);
    let damaged = &segments[2];
    let mut bytes = fs::read(damaged).unwrap();
    bytes[17] ^= 1; // first_lsn, under the header CRC
    fs::write(damaged, &bytes).unwrap();
    let first = first_lsn_of(damaged);
    assert!(matches!(
        open_under(dir.path(), Damage::CutTail).err().unwrap(),
        Error::Corrupt { offset: 0, .. }
    ));
    let (wal, recovery) = open_under(dir.path(), Damage::CutAll).unwrap();
    let cut = recovery.cut.unwrap();
    assert_eq!(&cut.path, damaged);
    assert_eq!((cut.offset, cut.lsn), (0, Lsn(first)));
    assert_eq!(cut.records_cut, 60 - first + 1);
    assert_eq!(wal.last_lsn(), Lsn(first - 1));
    assert_eq!(wal.segment_paths(), segments[..2].to_vec());
    assert_eq!(read_all(&wal).len() as u64, first - 1);
}

/// The first segment's header says where the log starts: damaged, it is refused even under
/// `CutAll`, and so are a gap and a segment of another magic after the cut point: nothing
/// is deleted.
#[test]
fn cut_all_refuses_what_is_not_one_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 60, 1024);
    assert!(segments.len() >= 4);
    let good = contents(dir.path());

    let mut bytes = good[&files(dir.path())[0]].clone();
    bytes[17] ^= 1;
    fs::write(&segments[0], &bytes).unwrap();
    let before = contents(dir.path());
    let err = open_under(dir.path(), Damage::CutAll).err().unwrap();
    assert!(
        matches!(err, Error::Corrupt { offset: 0, ref path, .. } if path == &segments[0]),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
    fs::write(&segments[0], &good[&files(dir.path())[0]]).unwrap();

    damage_record(&segments[0], 3);
    let last = segments.last().unwrap();
    let mut bytes = fs::read(last).unwrap();
    bytes[0..8].copy_from_slice(b"NOTAWAL!");
    fs::write(last, &bytes).unwrap();
    let before = contents(dir.path());
    let err = open_under(dir.path(), Damage::CutAll).err().unwrap();
    assert!(
        matches!(err, Error::BadMagic { ref path, .. } if path == last),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);

    fs::remove_file(last).unwrap();
    fs::remove_file(&segments[1]).unwrap();
    let mut bytes = fs::read(&segments[0]).unwrap();
    let offset = record_offset(&segments[0], 3) + RECORD_HEADER_LEN;
    bytes[offset] ^= 0x10; // undo the damage
    fs::write(&segments[0], &bytes).unwrap();
    let before = contents(dir.path());
    let err = open_under(dir.path(), Damage::CutAll).err().unwrap();
    assert!(matches!(err, Error::Gap { .. }), "{err}");
    assert_eq!(contents(dir.path()), before);
}

/// What the node does: open under `CutTornOnly`, which refuses and changes nothing; store
/// the learner flag; open under `CutAll`, which cuts; any later open is clean.
#[test]
fn refused_open_then_cut_all_then_a_clean_open() {
    for lsn in [7u64, 40] {
        let dir = tempfile::tempdir().unwrap();
        let segments = write_log(dir.path(), 40, 1024);
        let damaged = segments
            .iter()
            .rev()
            .find(|p| first_lsn_of(p) <= lsn)
            .unwrap();
        damage_record(damaged, lsn);
        let before = contents(dir.path());
        let err = open_under(dir.path(), Damage::CutTornOnly).err().unwrap();
        assert!(
            matches!(err, Error::Corrupt { lsn: l, .. } | Error::SuspectTail { lsn: l, .. } if l == Lsn(lsn)),
            "{err}"
        );
        assert_eq!(contents(dir.path()), before, "the refusal changed nothing");
        let (wal, recovery) = open_under(dir.path(), Damage::CutAll).unwrap();
        assert_eq!(recovery.cut.unwrap().lsn, Lsn(lsn));
        assert_eq!(wal.last_lsn(), Lsn(lsn - 1));
        drop(wal);
        let (wal, recovery) = open_under(dir.path(), Damage::CutTornOnly).unwrap();
        assert_eq!((recovery.torn, recovery.cut), (None, None));
        assert_eq!(wal.last_lsn(), Lsn(lsn - 1));
    }
}

/// A crash in the middle of a `CutAll` cut (here: after the newest later segment was
/// deleted, before the rest) leaves the damage where it was: the next open finds the same
/// record again, refuses under `CutTornOnly`, and finishes the cut under `CutAll`.
#[test]
fn cut_all_interrupted_after_a_deletion_finds_the_same_damage_again() {
    let dir = tempfile::tempdir().unwrap();
    let segments = write_log(dir.path(), 60, 1024);
    assert!(segments.len() >= 4);
    let lsn = first_lsn_of(&segments[0]) + 3;
    damage_record(&segments[0], lsn);
    // What `CutAll` does first: the newest segment goes.
    fs::remove_file(segments.last().unwrap()).unwrap();
    let err = open_under(dir.path(), Damage::CutTornOnly).err().unwrap();
    assert!(
        matches!(err, Error::Corrupt { lsn: l, .. } if l == Lsn(lsn)),
        "{err}"
    );
    let (wal, recovery) = open_under(dir.path(), Damage::CutAll).unwrap();
    assert_eq!(recovery.cut.unwrap().lsn, Lsn(lsn));
    assert_eq!(wal.last_lsn(), Lsn(lsn - 1));
    assert_eq!(wal.segment_paths(), segments[..1].to_vec());
}

/// The segment being appended to has blocks reserved past its end (FORMAT.md, "Writing"),
/// and that changes neither its length nor what a reopen reads: a fresh log, a rolled
/// segment and a reopened one. Where the filesystem has no `fallocate`, only the second
/// half holds, and the test says so.
#[test]
fn active_segment_is_preallocated_without_changing_its_length() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = 128 << 10;
    let allocated = |path: &Path| fs::metadata(path).unwrap().blocks() * 512;
    let (mut wal, _) = Wal::open(dir.path(), options(segment_bytes_max)).unwrap();
    let first = wal.segment_paths()[0].clone();
    assert_eq!(
        fs::metadata(&first).unwrap().len(),
        SEGMENT_HEADER_LEN as u64,
        "a fresh segment is its header alone"
    );
    let supported = allocated(&first) >= segment_bytes_max;
    if !supported {
        eprintln!("this filesystem reserves no blocks past a file's end; checking lengths only");
    }
    // Enough records to roll once: the new active segment is reserved too.
    let payloads: Vec<Vec<u8>> = (1..=4000).map(payload).collect();
    wal.append(Epoch(1), RecordKind::App, payloads.iter().map(|p| &p[..]))
        .unwrap();
    wal.sync().unwrap();
    let paths = wal.segment_paths();
    assert!(paths.len() >= 2, "the records fill more than one segment");
    let active = paths.last().unwrap().clone();
    let active_len = fs::metadata(&active).unwrap().len();
    assert!(active_len < segment_bytes_max);
    if supported {
        assert!(
            allocated(&active) >= segment_bytes_max,
            "the rolled-to segment is reserved"
        );
    }
    let before = read_all(&wal);
    drop(wal);
    let (wal, recovery) = Wal::open(dir.path(), options(segment_bytes_max)).unwrap();
    assert_eq!(
        recovery.torn, None,
        "nothing past the records is read as a tail"
    );
    assert_eq!(fs::metadata(&active).unwrap().len(), active_len);
    assert_eq!(read_all(&wal), before);
    assert_eq!(wal.last_lsn(), Lsn(4000));
}

/// On tmpfs nothing is reserved (FORMAT.md, "Writing"): `fallocate` there would allocate
/// and zero the whole segment's memory at once, a stall at every roll. Runs where `/dev/shm`
/// is a tmpfs mount, and says so where it is not.
#[test]
fn nothing_is_reserved_on_tmpfs() {
    use std::os::unix::fs::MetadataExt;
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let shm_is_tmpfs = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some("/dev/shm") && fields.next() == Some("tmpfs")
    });
    if !shm_is_tmpfs {
        eprintln!("/dev/shm is not a tmpfs mount here; nothing to check");
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let segment_bytes_max = 4 << 20;
    let (mut wal, _) = Wal::open(dir.path(), options(segment_bytes_max)).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=100).map(payload).collect();
    wal.append(Epoch(1), RecordKind::App, payloads.iter().map(|p| &p[..]))
        .unwrap();
    wal.sync().unwrap();
    let active = wal.segment_paths().last().unwrap().clone();
    let meta = fs::metadata(&active).unwrap();
    assert!(
        meta.blocks() * 512 < segment_bytes_max / 2,
        "{} bytes allocated for a {}-byte segment on tmpfs",
        meta.blocks() * 512,
        meta.len()
    );
}
