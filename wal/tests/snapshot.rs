//! Snapshot files (FORMAT.md, "Snapshot file"): round trips, damage of every kind detected
//! (never wrong data), crash leftovers, directory listing, resuming, and the memory bound.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use wal::snapshot::{
    self, decode_chunk, SnapshotInfo, SnapshotReader, SnapshotWriter, SNAPSHOT_CHUNK_HEADER_LEN,
    SNAPSHOT_CHUNK_LEN, SNAPSHOT_CHUNK_LEN_MAX, SNAPSHOT_HEADER_LEN, SNAPSHOT_TRAILER_LEN,
};
use wal::{Corruption, Epoch, Error, Lsn};

const LSN: Lsn = Lsn(7);
const EPOCH: Epoch = Epoch(3);

/// `len` pseudo-random bytes from `seed` (xorshift: cheap, so bodies can be large).
fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Writes `body` with one `write` call per piece of `splits` (then the rest in one call).
fn write_split(dir: &Path, body: &[u8], splits: &[usize]) -> SnapshotInfo {
    let mut writer = SnapshotWriter::create(dir, LSN, EPOCH).expect("create");
    let mut rest = body;
    for &split in splits {
        let (piece, tail) = rest.split_at(split.min(rest.len()));
        writer.write(piece).expect("write");
        rest = tail;
    }
    writer.write(rest).expect("write");
    writer.finish().expect("finish")
}

fn write_whole(dir: &Path, body: &[u8]) -> SnapshotInfo {
    write_split(dir, body, &[])
}

/// Writes `body` as chunks of `chunk_len` through `write_chunk`, giving small files with
/// many chunks.
fn write_small_chunks(dir: &Path, body: &[u8], chunk_len: usize) -> SnapshotInfo {
    let mut writer = SnapshotWriter::create(dir, LSN, EPOCH).expect("create");
    for (i, data) in body.chunks(chunk_len).enumerate() {
        writer
            .write_chunk((i * chunk_len) as u64, data)
            .expect("write_chunk");
    }
    writer.finish().expect("finish")
}

/// Reads `path` chunk by chunk, checking every chunk handed out against `expected`: a
/// reader may stop with an error, but must never return wrong bytes. Ok only if the whole
/// body was read and the trailer verified.
fn read_checked(path: &Path, expected: &[u8]) -> wal::Result<()> {
    let mut reader = SnapshotReader::open(path)?;
    let mut next_offset = 0u64;
    while let Some(chunk) = reader.next_chunk()? {
        assert_eq!(chunk.offset, next_offset, "chunks are handed out in order");
        let start = chunk.offset as usize;
        let end = start + chunk.data.len();
        assert!(end <= expected.len(), "chunk beyond the body");
        assert_eq!(
            &chunk.data[..],
            &expected[start..end],
            "wrong data handed out"
        );
        assert_eq!(&chunk.raw[SNAPSHOT_CHUNK_HEADER_LEN..], &chunk.data[..]);
        next_offset = end as u64;
    }
    assert_eq!(
        next_offset,
        expected.len() as u64,
        "Ok(None) before the whole body"
    );
    Ok(())
}

fn read_body(path: &Path) -> Vec<u8> {
    let mut reader = SnapshotReader::open(path).expect("open");
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk().expect("next_chunk") {
        assert_eq!(chunk.offset, out.len() as u64);
        out.extend_from_slice(&chunk.data);
    }
    out
}

fn chunk_lens(path: &Path) -> Vec<usize> {
    let mut reader = SnapshotReader::open(path).expect("open");
    let mut lens = Vec::new();
    while let Some(chunk) = reader.next_chunk().expect("next_chunk") {
        lens.push(chunk.data.len());
    }
    lens
}

fn assert_round_trip(body_len: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = body(body_len, body_len as u64);
    let info = write_whole(dir.path(), &body);
    assert_eq!(info.path, dir.path().join("00000000000000000007.snap"));
    assert_eq!((info.lsn, info.epoch), (LSN, EPOCH));
    assert_eq!(info.body_len, body_len as u64);
    assert_eq!(snapshot::verify(&info.path).expect("verify"), info);
    assert_eq!(read_body(&info.path), body);
    let reader = SnapshotReader::open(&info.path).expect("open");
    assert_eq!((reader.lsn(), reader.epoch()), (LSN, EPOCH));
    assert_eq!(reader.body_len(), body_len as u64);
}

/// An empty body is a header and a trailer, no chunk.
#[test]
fn empty_body_round_trips() {
    assert_round_trip(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let info = write_whole(dir.path(), &[]);
    let file_len = std::fs::metadata(&info.path).expect("stat").len();
    assert_eq!(
        file_len as usize,
        SNAPSHOT_HEADER_LEN + SNAPSHOT_TRAILER_LEN
    );
    assert!(chunk_lens(&info.path).is_empty());
}

/// A one-byte body is one one-byte chunk.
#[test]
fn one_byte_body_round_trips() {
    assert_round_trip(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let info = write_whole(dir.path(), b"x");
    assert_eq!(chunk_lens(&info.path), vec![1]);
}

/// A body of exactly one chunk length is one full chunk, with no empty chunk after it.
#[test]
fn body_of_exactly_one_chunk_round_trips() {
    assert_round_trip(SNAPSHOT_CHUNK_LEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let info = write_whole(dir.path(), &body(SNAPSHOT_CHUNK_LEN, 1));
    assert_eq!(chunk_lens(&info.path), vec![SNAPSHOT_CHUNK_LEN]);
}

/// Several full chunks and a partial one.
#[test]
fn many_chunks_and_a_partial_one_round_trip() {
    assert_round_trip(3 * SNAPSHOT_CHUNK_LEN + 17);
    let dir = tempfile::tempdir().expect("tempdir");
    let info = write_whole(dir.path(), &body(3 * SNAPSHOT_CHUNK_LEN + 17, 2));
    assert_eq!(
        chunk_lens(&info.path),
        vec![
            SNAPSHOT_CHUNK_LEN,
            SNAPSHOT_CHUNK_LEN,
            SNAPSHOT_CHUNK_LEN,
            17
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any body, written in any split of calls, reads back the same, and the file is the
    /// same bytes as when the body is written in one call.
    #[test]
    fn any_body_in_any_split_round_trips_to_the_same_file(
        body_len in prop_oneof![0usize..100, 0usize..3 * SNAPSHOT_CHUNK_LEN + 100],
        seed: u64,
        splits in proptest::collection::vec(0usize..SNAPSHOT_CHUNK_LEN + 10, 0..8),
    ) {
        let body = body(body_len, seed);
        let split_dir = tempfile::tempdir().expect("tempdir");
        let whole_dir = tempfile::tempdir().expect("tempdir");
        let split_info = write_split(split_dir.path(), &body, &splits);
        let whole_info = write_whole(whole_dir.path(), &body);
        prop_assert_eq!(read_body(&split_info.path), body);
        prop_assert_eq!(
            std::fs::read(&split_info.path).expect("read"),
            std::fs::read(&whole_info.path).expect("read")
        );
    }
}

/// `io::Write` and `io::Read` carry a body through `io::copy` and `read_to_end`.
#[test]
fn io_write_and_io_read_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = body(2 * SNAPSHOT_CHUNK_LEN + 5, 3);
    let mut writer = SnapshotWriter::create(dir.path(), LSN, EPOCH).expect("create");
    std::io::copy(&mut &body[..], &mut writer).expect("copy");
    writer.flush().expect("flush");
    let info = writer.finish().expect("finish");

    let mut reader = SnapshotReader::open(&info.path).expect("open");
    let mut read = Vec::new();
    reader.read_to_end(&mut read).expect("read_to_end");
    assert_eq!(read, body);
}

/// `io::Read` reports damage as `InvalidData` and never yields the damaged chunk's bytes.
#[test]
fn io_read_stops_with_invalid_data_at_a_damaged_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = body(2 * SNAPSHOT_CHUNK_LEN, 4);
    let info = write_whole(dir.path(), &body);
    let mut bytes = std::fs::read(&info.path).expect("read");
    let second_chunk_data =
        SNAPSHOT_HEADER_LEN + 2 * SNAPSHOT_CHUNK_HEADER_LEN + SNAPSHOT_CHUNK_LEN;
    bytes[second_chunk_data + 100] ^= 0x10;
    std::fs::write(&info.path, &bytes).expect("write");

    let mut reader = SnapshotReader::open(&info.path).expect("open");
    let mut read = Vec::new();
    let err = reader
        .read_to_end(&mut read)
        .expect_err("damage must be reported");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(read, &body[..SNAPSHOT_CHUNK_LEN]);
}

/// The small snapshot the exhaustive damage tests mutate: 3 chunks of 8 bytes, 1 of 5.
fn small_snapshot() -> &'static (Vec<u8>, Vec<u8>) {
    static SMALL: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SMALL.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = body(29, 5);
        let info = write_small_chunks(dir.path(), &body, 8);
        (body, std::fs::read(&info.path).expect("read"))
    })
}

/// A multi-chunk snapshot of full-size chunks, for the sampled damage tests.
fn large_snapshot() -> &'static (Vec<u8>, Vec<u8>) {
    static LARGE: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    LARGE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = body(2 * SNAPSHOT_CHUNK_LEN + 1000, 6);
        let info = write_whole(dir.path(), &body);
        (body, std::fs::read(&info.path).expect("read"))
    })
}

/// Writes `bytes` as the snapshot file for `LSN` in `dir` and reads it with checks.
fn check_damaged(dir: &Path, bytes: &[u8], body: &[u8]) -> wal::Result<()> {
    let path = dir.join(snapshot::file_name(LSN));
    std::fs::write(&path, bytes).expect("write");
    let checked = read_checked(&path, body);
    assert_eq!(
        checked.is_ok(),
        snapshot::verify(&path).is_ok(),
        "verify and a chunk-by-chunk read disagree"
    );
    checked
}

fn flip_bit(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[bit / 8] ^= 1 << (bit % 8);
    bytes
}

/// Every single-bit flip anywhere in a small many-chunk snapshot is an error, and no chunk
/// handed out before the error holds wrong bytes.
#[test]
fn every_flipped_bit_in_a_small_snapshot_is_detected() {
    let (body, good) = small_snapshot();
    let dir = tempfile::tempdir().expect("tempdir");
    check_damaged(dir.path(), good, body).expect("the intact file verifies");
    // Flip in place and back, rather than rewriting the file a thousand times (replacing a
    // file's content through truncation makes ext4 flush it on close, which is slow).
    let path = dir.path().join(snapshot::file_name(LSN));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    let mut put_byte = |at: usize, value: u8| {
        file.seek(SeekFrom::Start(at as u64)).expect("seek");
        file.write_all(&[value]).expect("write");
    };
    for bit in 0..good.len() * 8 {
        let at = bit / 8;
        put_byte(at, good[at] ^ (1 << (bit % 8)));
        let checked = read_checked(&path, body);
        assert_eq!(
            checked.is_ok(),
            snapshot::verify(&path).is_ok(),
            "verify and a chunk-by-chunk read disagree"
        );
        assert!(
            checked.is_err(),
            "bit {bit} (byte {at}) flipped was not detected"
        );
        put_byte(at, good[at]);
    }
}

/// Cut anywhere, a small snapshot is an error.
#[test]
fn truncation_at_every_byte_of_a_small_snapshot_is_detected() {
    let (body, good) = small_snapshot();
    let dir = tempfile::tempdir().expect("tempdir");
    for len in 0..good.len() {
        assert!(
            check_damaged(dir.path(), &good[..len], body).is_err(),
            "truncation to {len} bytes was not detected"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A flipped bit anywhere in a snapshot of full-size chunks is an error, never wrong data.
    #[test]
    fn a_flipped_bit_anywhere_in_a_large_snapshot_is_detected(position: prop::sample::Index) {
        let (body, good) = large_snapshot();
        let dir = tempfile::tempdir().expect("tempdir");
        let bit = position.index(good.len() * 8);
        prop_assert!(check_damaged(dir.path(), &flip_bit(good, bit), body).is_err(), "bit {}", bit);
    }

    /// A snapshot of full-size chunks cut at any byte is an error.
    #[test]
    fn truncation_anywhere_in_a_large_snapshot_is_detected(position: prop::sample::Index) {
        let (body, good) = large_snapshot();
        let dir = tempfile::tempdir().expect("tempdir");
        let len = position.index(good.len());
        prop_assert!(check_damaged(dir.path(), &good[..len], body).is_err(), "length {}", len);
    }
}

/// Nothing may follow the trailer.
#[test]
fn bytes_after_the_trailer_are_an_error() {
    let (body, good) = small_snapshot();
    let dir = tempfile::tempdir().expect("tempdir");
    for extra in [&b"\0"[..], b"x", &[0u8; 100]] {
        let mut bytes = good.clone();
        bytes.extend_from_slice(extra);
        match check_damaged(dir.path(), &bytes, body) {
            Err(Error::Corrupt {
                reason: Corruption::TrailingBytes,
                offset,
                ..
            }) => assert_eq!(offset, good.len() as u64),
            other => panic!("expected TrailingBytes, got {other:?}"),
        }
    }
}

/// Byte ranges of the chunks of a file written with equal-length chunks.
fn chunk_ranges(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut at = SNAPSHOT_HEADER_LEN;
    let mut offset = 0u64;
    while let Ok(Some((consumed, data))) = decode_chunk(&bytes[at..], offset) {
        ranges.push(at..at + consumed);
        offset += data.len() as u64;
        at += consumed;
    }
    ranges
}

/// Two chunks of the same length swapped: each chunk's CRC binds it to its offset.
#[test]
fn two_swapped_chunks_are_detected() {
    let (body, good) = small_snapshot();
    let ranges = chunk_ranges(good);
    assert_eq!(ranges.len(), 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = good.clone();
    bytes[ranges[0].clone()].copy_from_slice(&good[ranges[1].clone()]);
    bytes[ranges[1].clone()].copy_from_slice(&good[ranges[0].clone()]);
    match check_damaged(dir.path(), &bytes, body) {
        Err(Error::Corrupt {
            reason: Corruption::Crc { .. },
            offset,
            ..
        }) => assert_eq!(offset, SNAPSHOT_HEADER_LEN as u64),
        other => panic!("expected a chunk CRC error, got {other:?}"),
    }
}

/// A chunk dropped, or a chunk repeated, is an error.
#[test]
fn dropped_or_repeated_chunk_is_detected() {
    let (body, good) = small_snapshot();
    let ranges = chunk_ranges(good);
    let dir = tempfile::tempdir().expect("tempdir");

    let mut dropped = good[..ranges[1].start].to_vec();
    dropped.extend_from_slice(&good[ranges[1].end..]);
    assert!(check_damaged(dir.path(), &dropped, body).is_err());

    let mut repeated = good[..ranges[1].end].to_vec();
    repeated.extend_from_slice(&good[ranges[1].clone()]);
    repeated.extend_from_slice(&good[ranges[1].end..]);
    assert!(check_damaged(dir.path(), &repeated, body).is_err());
}

/// A file that is not a snapshot is refused as such, naming it.
#[test]
fn unknown_magic_is_bad_magic_naming_the_file() {
    let (_, good) = small_snapshot();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(snapshot::file_name(LSN));
    let mut bytes = good.clone();
    bytes[0..8].copy_from_slice(b"USTDYWAL");
    std::fs::write(&path, &bytes).expect("write");
    match snapshot::verify(&path) {
        Err(
            err @ Error::BadMagic {
                found: [b'U', b'S', b'T', b'D', b'Y', b'W', b'A', b'L'],
                ..
            },
        ) => assert!(err.to_string().contains(&path.display().to_string())),
        other => panic!("expected BadMagic, got {other:?}"),
    }
}

/// A snapshot of a later format version is refused as such, naming the file.
#[test]
fn unknown_version_is_unsupported_naming_the_file() {
    let (_, good) = small_snapshot();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(snapshot::file_name(LSN));
    let mut bytes = good.clone();
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    match SnapshotReader::open(&path) {
        Err(Error::UnsupportedVersion {
            path: p,
            found: 2,
            supported: 1,
        }) => assert_eq!(p, path),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

/// A snapshot whose header names another LSN than its file name is refused.
#[test]
fn header_lsn_must_match_the_file_name() {
    let (_, good) = small_snapshot();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(snapshot::file_name(Lsn(8)));
    std::fs::write(&path, good).expect("write");
    assert!(matches!(
        SnapshotReader::open(&path),
        Err(Error::Corrupt {
            reason: Corruption::NameMismatch { .. },
            ..
        })
    ));
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A writer dropped before `finish` leaves neither a snapshot nor its temp file.
#[test]
fn writer_dropped_before_finish_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = SnapshotWriter::create(dir.path(), LSN, EPOCH).expect("create");
    writer
        .write(&body(SNAPSHOT_CHUNK_LEN + 3, 7))
        .expect("write");
    assert_eq!(dir_names(dir.path()), vec!["00000000000000000007.snap.tmp"]);
    drop(writer);
    assert!(dir_names(dir.path()).is_empty());
    assert!(snapshot::list(dir.path()).expect("list").is_empty());
}

/// A crash mid-write (simulated by never running the writer's `Drop`) leaves only a temp
/// file: `list` ignores it, `remove_temps` deletes it, and no `.snap` appears.
#[test]
fn crash_before_finish_leaves_a_temp_that_list_ignores_and_remove_temps_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let installed = write_whole(dir.path(), b"older snapshot");
    let mut writer = SnapshotWriter::create(dir.path(), Lsn(9), EPOCH).expect("create");
    writer
        .write(&body(3 * SNAPSHOT_CHUNK_LEN, 8))
        .expect("write");
    std::mem::forget(writer);

    assert_eq!(
        dir_names(dir.path()),
        vec!["00000000000000000007.snap", "00000000000000000009.snap.tmp"]
    );
    assert_eq!(
        snapshot::list(dir.path()).expect("list"),
        vec![installed.clone()]
    );
    assert_eq!(snapshot::remove_temps(dir.path()).expect("remove_temps"), 1);
    assert_eq!(dir_names(dir.path()), vec!["00000000000000000007.snap"]);
    assert_eq!(snapshot::list(dir.path()).expect("list"), vec![installed]);
}

/// `list` reports the installed snapshots in ascending LSN order, with their headers.
#[test]
fn list_reports_snapshots_in_lsn_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = Vec::new();
    for lsn in [100u64, 7, 52_117, 10] {
        let mut writer =
            SnapshotWriter::create(dir.path(), Lsn(lsn), Epoch(lsn / 10 + 1)).expect("create");
        writer.write(&body(lsn as usize, lsn)).expect("write");
        expected.push(writer.finish().expect("finish"));
    }
    expected.sort_by_key(|info| info.lsn);
    let listed = snapshot::list(dir.path()).expect("list");
    assert_eq!(listed, expected);
    assert_eq!(
        listed.iter().map(|info| info.lsn.get()).collect::<Vec<_>>(),
        vec![7, 10, 100, 52_117]
    );
}

/// A file `list` does not understand stops it, and is left in place.
#[test]
fn list_refuses_a_foreign_file() {
    for name in [
        "notes.txt",
        "7.snap",
        "00000000000000000007.snap.bak",
        "x.tmp",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        write_whole(dir.path(), b"body");
        let foreign = dir.path().join(name);
        std::fs::write(&foreign, b"?").expect("write");
        match snapshot::list(dir.path()) {
            Err(Error::ForeignFile { path }) => assert_eq!(path, foreign),
            other => panic!("{name}: expected ForeignFile, got {other:?}"),
        }
        assert_eq!(snapshot::remove_temps(dir.path()).expect("remove_temps"), 0);
        assert!(foreign.exists());
    }
}

/// A receiver writing chunks as they arrive gets a typed error for a gap or a repeat, and
/// can go on at the offset the error names.
#[test]
fn write_chunk_refuses_an_offset_other_than_the_body_len() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = SnapshotWriter::create(dir.path(), LSN, EPOCH).expect("create");
    writer.write_chunk(0, b"abc").expect("write_chunk");
    for wrong in [0, 2, 4, 100] {
        match writer.write_chunk(wrong, b"def") {
            Err(Error::ChunkOffset {
                expected: 3, found, ..
            }) => assert_eq!(found, wrong),
            other => panic!("offset {wrong}: expected ChunkOffset, got {other:?}"),
        }
    }
    assert!(matches!(
        writer.write_chunk(3, b""),
        Err(Error::BadRecord { .. })
    ));
    assert!(matches!(
        writer.write_chunk(3, &vec![0u8; SNAPSHOT_CHUNK_LEN_MAX + 1]),
        Err(Error::BadRecord {
            reason: Corruption::LenTooLarge { .. }
        })
    ));
    writer.write_chunk(3, b"def").expect("write_chunk");
    let info = writer.finish().expect("finish");
    assert_eq!(read_body(&info.path), b"abcdef");
}

/// Shipping `Chunk::raw` as it is and storing it with `write_raw_chunk` reproduces the
/// sender's file byte for byte; a chunk for another offset is refused.
#[test]
fn raw_chunks_shipped_as_they_are_rebuild_the_same_file() {
    let sender_dir = tempfile::tempdir().expect("tempdir");
    let receiver_dir = tempfile::tempdir().expect("tempdir");
    let sent = write_whole(sender_dir.path(), &body(2 * SNAPSHOT_CHUNK_LEN + 9, 9));

    let mut reader = SnapshotReader::open(&sent.path).expect("open");
    let mut writer =
        SnapshotWriter::create(receiver_dir.path(), reader.lsn(), reader.epoch()).expect("create");
    let mut first_raw: Option<bytes::Bytes> = None;
    while let Some(chunk) = reader.next_chunk().expect("next_chunk") {
        if chunk.offset > 0 {
            let stale = first_raw.as_ref().expect("first chunk kept");
            assert!(matches!(
                writer.write_raw_chunk(stale),
                Err(Error::BadRecord {
                    reason: Corruption::Crc { .. }
                })
            ));
        }
        writer.write_raw_chunk(&chunk.raw).expect("write_raw_chunk");
        first_raw.get_or_insert(chunk.raw);
    }
    let received = writer.finish().expect("finish");
    assert_eq!(
        std::fs::read(&received.path).expect("read"),
        std::fs::read(&sent.path).expect("read")
    );
}

/// Resuming at any chunk boundary yields exactly the chunks from there on, then the
/// verified trailer; an offset inside a chunk or past the body names the boundary to use.
#[test]
fn seek_to_offset_resumes_at_chunk_boundaries() {
    let (body, good) = small_snapshot();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(snapshot::file_name(LSN));
    std::fs::write(&path, good).expect("write");
    let mut reader = SnapshotReader::open(&path).expect("open");

    for boundary in [0u64, 8, 16, 24, 29] {
        reader.seek_to_offset(boundary).expect("seek");
        let mut rest = Vec::new();
        while let Some(chunk) = reader.next_chunk().expect("next_chunk") {
            assert_eq!(chunk.offset, boundary + rest.len() as u64);
            rest.extend_from_slice(&chunk.data);
        }
        assert_eq!(rest, &body[boundary as usize..]);
    }
    for (inside, boundary) in [(1u64, 0u64), (9, 8), (28, 24), (30, 29), (1000, 29)] {
        match reader.seek_to_offset(inside) {
            Err(Error::ChunkOffset {
                expected, found, ..
            }) => assert_eq!((expected, found), (boundary, inside)),
            other => panic!("offset {inside}: expected ChunkOffset, got {other:?}"),
        }
    }
}

/// After a resume, damage in the chunks read is still caught.
#[test]
fn seek_to_offset_still_verifies_the_chunks_it_reads() {
    let (body, good) = small_snapshot();
    let ranges = chunk_ranges(good);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(snapshot::file_name(LSN));
    let mut bytes = good.clone();
    bytes[ranges[2].start + SNAPSHOT_CHUNK_HEADER_LEN] ^= 1;
    std::fs::write(&path, &bytes).expect("write");

    let mut reader = SnapshotReader::open(&path).expect("open");
    reader.seek_to_offset(8).expect("seek");
    let chunk = reader.next_chunk().expect("the chunk at 8 is intact");
    assert_eq!(chunk.map(|c| c.data.to_vec()), Some(body[8..16].to_vec()));
    assert!(matches!(
        reader.next_chunk(),
        Err(Error::Corrupt {
            reason: Corruption::Crc { .. },
            ..
        })
    ));
}

/// A 64 MiB snapshot is written from 1 MiB pieces and read back one chunk at a time: no
/// chunk handed out, and so no allocation the reader makes, exceeds one chunk.
#[test]
fn reader_of_a_64_mib_snapshot_holds_one_chunk_at_a_time() {
    const BODY_LEN: usize = 64 * 1024 * 1024;
    const PIECE_LEN: usize = 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let piece = body(PIECE_LEN, 10);
    let mut writer = SnapshotWriter::create(dir.path(), LSN, EPOCH).expect("create");
    for _ in 0..BODY_LEN / PIECE_LEN {
        writer.write(&piece).expect("write");
    }
    let info = writer.finish().expect("finish");
    let chunk_count = BODY_LEN / SNAPSHOT_CHUNK_LEN;
    assert_eq!(
        std::fs::metadata(&info.path).expect("stat").len() as usize,
        SNAPSHOT_HEADER_LEN
            + chunk_count * (SNAPSHOT_CHUNK_HEADER_LEN + SNAPSHOT_CHUNK_LEN)
            + SNAPSHOT_TRAILER_LEN
    );

    let mut reader = SnapshotReader::open(&info.path).expect("open");
    let mut seen_count = 0;
    while let Some(chunk) = reader.next_chunk().expect("next_chunk") {
        assert_eq!(chunk.data.len(), SNAPSHOT_CHUNK_LEN);
        assert_eq!(
            chunk.raw.len(),
            SNAPSHOT_CHUNK_HEADER_LEN + SNAPSHOT_CHUNK_LEN
        );
        assert!(chunk.raw.len() <= SNAPSHOT_CHUNK_HEADER_LEN + SNAPSHOT_CHUNK_LEN_MAX);
        let start = (chunk.offset as usize) % PIECE_LEN;
        assert_eq!(&chunk.data[..], &piece[start..start + SNAPSHOT_CHUNK_LEN]);
        seen_count += 1;
    }
    assert_eq!(seen_count, chunk_count);
}

/// `verify` reports what `finish` reported.
#[test]
fn verify_reports_what_finish_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let info = write_whole(dir.path(), &body(1000, 11));
    assert_eq!(snapshot::verify(&info.path).expect("verify"), info);
}

/// A snapshot at an LSN already installed replaces it (the same LSN means the same state).
#[test]
fn finishing_a_snapshot_at_an_installed_lsn_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_whole(dir.path(), b"first");
    let info = write_whole(dir.path(), b"second");
    assert_eq!(read_body(&info.path), b"second");
    assert_eq!(snapshot::list(dir.path()).expect("list").len(), 1);
}

/// Two live writers of one LSN never share a temp file: the second is refused while the
/// first holds it (a shared file would hold both writers' bytes, and either install would
/// put a torn snapshot in place); once the first is dropped or finished, the LSN is free.
#[test]
fn a_second_writer_of_one_lsn_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = SnapshotWriter::create(dir.path(), Lsn(7), Epoch(1)).expect("first");
    first.write(&body(3_000, 1)).expect("write");
    match SnapshotWriter::create(dir.path(), Lsn(7), Epoch(1)) {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
        }
        other => panic!("a second writer of lsn 7: {other:?}"),
    }
    // Another LSN is not in its way.
    drop(SnapshotWriter::create(dir.path(), Lsn(8), Epoch(1)).expect("lsn 8"));
    // The refusal left the first writer's file alone.
    let info = first.finish().expect("finish");
    read_checked(&info.path, &body(3_000, 1)).expect("the first writer's bytes, whole");
    // Finished, or dropped, a writer frees its LSN.
    let second = SnapshotWriter::create(dir.path(), Lsn(7), Epoch(1)).expect("after finish");
    drop(second);
    drop(SnapshotWriter::create(dir.path(), Lsn(7), Epoch(1)).expect("after a drop"));
}
