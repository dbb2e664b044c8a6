//! The properties the fuzz targets check, one function per decoder that takes bytes from
//! outside: peer frames, app API frames, WAL records and segment headers, segment files as
//! recovery opens them, snapshot files, and the metadata file.
//!
//! Each function panics only when a property fails; the decoders themselves must never
//! panic, whatever the bytes. The fuzz targets in `fuzz_targets/` are one-line calls to these
//! functions, and `tests/fuzz_corpus.rs` replays the checked-in corpus and the seeds through
//! the same functions on stable, so `cargo test` exercises every target and every crash
//! found stays fixed.
//!
//! It does not fuzz the protocol logic (the simulator does that) or the network layer.

use std::io::Read;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};
use understudy::proto::{app, peer};
use wal::format::{self, RecordKind};
use wal::{Epoch, Lsn};

/// Peer frames: the plain decoder and the codec agree frame by frame; a decoded frame
/// re-encodes to bytes that decode to the same frame; an `Append`'s records go through the
/// receiver's verification without panicking.
pub fn peer_frame(data: &[u8]) {
    let mut stream = BytesMut::from(data);
    let mut offset = 0;
    loop {
        let plain = peer::decode(&data[offset..]);
        let streamed = peer::PeerCodec::default().decode(&mut stream);
        match (plain, streamed) {
            (Ok(Some((frame, used))), Ok(Some(streamed))) => {
                assert_eq!(frame, streamed, "decode and PeerCodec disagree at {offset}");
                assert!(used > 4 && offset + used <= data.len());
                offset += used;
                peer_frame_round_trip(&frame);
                if let peer::Frame::Message {
                    message: understudy::core::Message::Append(append),
                    records,
                } = &frame
                {
                    if !records.is_empty() {
                        let verified = format::verify_records(records.clone(), append.first_lsn);
                        if let Ok(verified) = verified {
                            assert_eq!(verified.first_lsn(), append.first_lsn);
                            assert_eq!(verified.bytes(), records);
                        }
                    }
                }
            }
            (Ok(None), Ok(None)) => return,
            (Err(_), Err(_)) => return,
            (plain, streamed) => {
                panic!("decode gave {plain:?} but PeerCodec gave {streamed:?} at {offset}")
            }
        }
    }
}

fn peer_frame_round_trip(frame: &peer::Frame) {
    let mut encoded = BytesMut::new();
    peer::PeerCodec::default()
        .encode(frame.clone(), &mut encoded)
        .expect("encoding into memory cannot fail");
    match peer::decode(&encoded) {
        Ok(Some((again, used))) => {
            assert_eq!(
                &again, frame,
                "a decoded peer frame does not survive re-encoding"
            );
            assert_eq!(used, encoded.len());
        }
        other => panic!("re-encoded peer frame {frame:?} does not decode: {other:?}"),
    }
}

/// App API frames: the same properties as [`peer_frame`], plus `encoded_len` (the length
/// field) matching what `encode` writes.
pub fn app_frame(data: &[u8]) {
    let mut codec = app::AppCodec::new();
    let mut stream = BytesMut::from(data);
    let mut offset = 0;
    loop {
        let plain = app::decode(&data[offset..]);
        let streamed = codec.decode(&mut stream);
        match (plain, streamed) {
            (Ok(Some((frame, used))), Ok(Some(streamed))) => {
                assert_eq!(frame, streamed, "decode and AppCodec disagree at {offset}");
                assert!(used > 4 && offset + used <= data.len());
                offset += used;
                let mut encoded = BytesMut::new();
                frame.encode(&mut encoded);
                assert_eq!(
                    4 + frame.encoded_len(),
                    encoded.len(),
                    "encoded_len of {frame:?}"
                );
                match app::decode(&encoded) {
                    Ok(Some((again, again_used))) => {
                        assert_eq!(
                            again, frame,
                            "a decoded app frame does not survive re-encoding"
                        );
                        assert_eq!(again_used, encoded.len());
                    }
                    other => panic!("re-encoded app frame {frame:?} does not decode: {other:?}"),
                }
            }
            (Ok(None), Ok(None)) => return,
            (Err(_), Err(_)) => return,
            (plain, streamed) => {
                panic!("decode gave {plain:?} but AppCodec gave {streamed:?} at {offset}")
            }
        }
    }
}

/// WAL records and segment headers, in memory: a record that decodes re-encodes to exactly
/// its bytes (the encoding is canonical, so nothing unverified can hide in it); a segment
/// scan stops at a record boundary and everything before the stop verifies as a run.
pub fn wal_records(data: &[u8]) {
    if let Ok(first_lsn) = format::decode_segment_header(data) {
        assert_eq!(&format::encode_segment_header(first_lsn)[..], &data[..32]);
    }
    let mut first_lsn = Lsn(1);
    if let Ok(Some((record, len))) = format::decode_record(data) {
        let mut again = Vec::new();
        format::encode_record(
            &mut again,
            record.lsn,
            record.epoch,
            record.kind,
            record.payload,
        );
        assert_eq!(
            &again[..],
            &data[..len],
            "record does not re-encode to its bytes"
        );
        first_lsn = record.lsn;
    }
    // The same bytes as the records of a segment starting at the first record's LSN.
    let mut segment = format::encode_segment_header(first_lsn).to_vec();
    segment.extend_from_slice(data);
    let scan = wal::segment::scan(&segment, first_lsn, Epoch::ZERO);
    let good = &segment[format::SEGMENT_HEADER_LEN..scan.good_len as usize];
    assert_eq!(scan.stop.is_none(), scan.good_len as usize == segment.len());
    if scan.count == 0 {
        assert!(good.is_empty());
        return;
    }
    let verified = format::verify_records(Bytes::copy_from_slice(good), first_lsn)
        .expect("the records a scan accepted verify as a run");
    assert_eq!(verified.count(), scan.count);
    assert_eq!(verified.last_lsn(), scan.last_lsn);
    assert_eq!(verified.last_epoch(), scan.last_epoch);
    let decoded: Vec<_> = verified.iter().map(|r| (r.lsn, r.epoch, r.kind)).collect();
    assert_eq!(decoded.len() as u64, scan.count);
    let _ = wal::segment::find_intact_after(&segment, format::SEGMENT_HEADER_LEN, Lsn::ZERO);
}

/// A segment file as recovery reads it. The first byte chooses the file's layout: odd, the
/// rest is the whole file (header included); even, a valid header for LSN 1 comes first.
/// `dir` must be an empty directory; it is emptied again before returning.
///
/// Properties: `inspect` (read-only, what `wal verify` uses) and `Wal::open` (which cuts a
/// damaged tail) accept and refuse the same files; when they accept, both see the same last
/// LSN and the same tail (provably torn or suspect), every record reads back verified, and a
/// second open finds nothing to repair.
pub fn wal_segment(data: &[u8], dir: &Path) {
    let Some((&layout, rest)) = data.split_first() else {
        return;
    };
    let mut file = Vec::with_capacity(rest.len() + format::SEGMENT_HEADER_LEN);
    if layout % 2 == 0 {
        file.extend_from_slice(&format::encode_segment_header(Lsn(1)));
    }
    file.extend_from_slice(rest);
    let path = dir.join(wal::segment::file_name(Lsn(1)));
    std::fs::write(&path, &file).expect("write the segment under test");

    let inspected = wal::log::inspect(dir);
    let opened = wal::Wal::open(dir, wal::Options::default());
    match (&inspected, &opened) {
        (Ok(inspection), Ok((log, recovery))) => {
            assert_eq!(inspection.last_lsn(), Some(log.last_lsn()));
            // The same tail, provably torn or suspect alike.
            assert_eq!(inspection.torn, recovery.torn);
            assert_eq!(log.durable_lsn(), log.last_lsn());
            let from_inspection = read_all(inspection.reader(), log.last_lsn());
            let from_log = read_all(Some(log.reader()), log.last_lsn());
            assert_eq!(from_inspection, from_log);
        }
        (Err(_), Err(_)) => {}
        (inspected, opened) => panic!(
            "inspect and open disagree on the same segment: inspect {:?}, open {:?}",
            inspected.as_ref().map(|i| i.last_lsn()),
            opened.as_ref().map(|(log, _)| log.last_lsn()),
        ),
    }
    if let Ok((log, _)) = opened {
        drop(log);
        let (log, recovery) =
            wal::Wal::open(dir, wal::Options::default()).expect("a log that opened reopens");
        assert_eq!(recovery.torn, None, "a second open found a torn tail again");
        drop(log);
    }
    empty_dir(dir);
}

/// Every record from the first LSN to `last_lsn`: (lsn, epoch, kind, payload).
fn read_all(
    reader: Option<wal::reader::Reader>,
    last_lsn: Lsn,
) -> Vec<(Lsn, Epoch, RecordKind, Bytes)> {
    let Some(reader) = reader else {
        return Vec::new();
    };
    let first = reader.first_lsn();
    let records = reader.iter_from(first).expect("read an opened log");
    let all: Vec<_> = records
        .map(|record| {
            let record = record.expect("a record of an opened log reads back");
            (record.lsn, record.epoch, record.kind, record.payload())
        })
        .collect();
    assert_eq!(all.last().map(|r| r.0).unwrap_or(first.prev()), last_lsn);
    all
}

/// Snapshot files: the plain decoders never panic; a file that `verify` accepts reads back
/// through `io::Read` as exactly `body_len` bytes; a file it refuses fails the streaming read
/// too, before the end. `dir` must be an empty directory; it is emptied again.
pub fn snapshot(data: &[u8], dir: &Path) {
    let name = Path::new("fuzz.snap");
    let _ = wal::snapshot::decode_header(data, name);
    let _ = wal::snapshot::decode_trailer(data);
    let _ = wal::snapshot::decode_chunk(data, 0);
    if let Some(body) = data.get(wal::snapshot::SNAPSHOT_HEADER_LEN..) {
        let _ = wal::snapshot::decode_chunk(body, 0);
    }

    // A name that is not `<lsn>.snap`, so the header's LSN need not match it.
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write the snapshot under test");
    let verified = wal::snapshot::verify(&path);
    let streamed = match wal::snapshot::SnapshotReader::open(&path) {
        Ok(mut reader) => {
            let mut body = Vec::new();
            reader
                .read_to_end(&mut body)
                .map(|_| body)
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match (verified, streamed) {
        (Ok(info), Ok(body)) => assert_eq!(body.len() as u64, info.body_len),
        (Err(_), Err(_)) => {}
        (verified, streamed) => panic!(
            "verify and a streaming read disagree: verify {:?}, read {:?}",
            verified.map(|i| i.body_len),
            streamed.map(|b| b.len()),
        ),
    }
    empty_dir(dir);
}

/// The metadata file: whatever decodes re-encodes to exactly its bytes, or, for a file of an
/// older version, to the same bytes in the current version (version 1 had no learner flag:
/// it reads as not a learner; versions 1 and 2 had no floor flag: they read as keeping no
/// floor), which decode to the same value.
pub fn meta(data: &[u8]) {
    use wal::meta::{Meta, META_VERSION};
    if let Ok(meta) = Meta::decode(data, Path::new("meta")) {
        let encoded = meta.encode();
        if data[8..10] == META_VERSION.to_le_bytes() {
            assert_eq!(
                &encoded[..],
                data,
                "metadata does not re-encode to its bytes"
            );
        } else {
            let version = u16::from_le_bytes([data[8], data[9]]);
            assert!(
                version == 1 || version == 2,
                "an unknown version decoded: {version}"
            );
            if version == 1 {
                assert!(!meta.learner, "a version 1 file decoded as a learner");
            }
            assert!(
                !meta.floor_kept,
                "a version {version} file decoded as keeping a floor"
            );
            // The same bytes but for the version and the CRC over it.
            assert_eq!(encoded[..8], data[..8]);
            assert_eq!(encoded[8..10], META_VERSION.to_le_bytes());
            assert_eq!(
                encoded[10..36],
                data[10..36],
                "older metadata does not re-encode to the same fields in the current version"
            );
        }
        assert_eq!(
            Meta::decode(&encoded, Path::new("meta")).ok(),
            Some(meta),
            "re-encoded metadata does not decode to the same value"
        );
    }
}

/// Follow mode's change record (`understudy::follow::change`): decoding arbitrary bytes never
/// panics, and a change that decodes re-encodes to exactly its bytes.
pub fn follow_change(data: &[u8]) {
    use understudy::follow::change::Change;
    if let Ok(change) = Change::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(
            &change.encode()[..],
            data,
            "a follow change does not re-encode to its bytes"
        );
    }
}

fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list the scratch directory") {
        let path = entry.expect("a directory entry").path();
        std::fs::remove_file(&path).expect("remove a scratch file");
    }
}

/// The targets, by the name of their corpus folder, for the corpus replay test.
pub const TARGETS: [&str; 7] = [
    "peer_frame",
    "app_frame",
    "wal_records",
    "wal_segment",
    "snapshot",
    "meta",
    "follow_change",
];

/// Runs target `name` on `data`, with `dir` as the scratch directory of the file targets.
pub fn run(name: &str, data: &[u8], dir: &Path) {
    match name {
        "peer_frame" => peer_frame(data),
        "app_frame" => app_frame(data),
        "wal_records" => wal_records(data),
        "wal_segment" => wal_segment(data, dir),
        "snapshot" => snapshot(data, dir),
        "meta" => meta(data),
        "follow_change" => follow_change(data),
        other => panic!("no fuzz target named {other}"),
    }
}

/// A scratch directory for the file targets, one per process (in `/dev/shm` when there is
/// one, so the fuzzer does not wear a disk). Created on first use.
pub fn scratch_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("understudy-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        dir
    })
    .clone()
}

/// Valid inputs for every target, made with the project's own encoders: the starting corpus
/// (the fuzzer could not guess a CRC), and inputs the replay test checks on every run.
/// `dir` is an empty scratch directory (the snapshot seed is written through it).
pub fn seeds(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    use understudy::core::{Append, AppendResponse, Message};
    use understudy::NodeId;

    let mut seeds = Vec::new();

    let records = seed_records(Lsn(5), Epoch(2), 3);
    let mut peer_stream = BytesMut::new();
    let peer_frames = [
        peer::Frame::Hello(peer::Hello {
            version: peer::PROTOCOL_VERSION,
            cluster_id: 0x5eed,
            from: NodeId(1),
            to: NodeId(2),
            nonce: [7; peer::NONCE_LEN],
            members: vec![NodeId(1), NodeId(2), NodeId(3)],
            config_lsn: 2,
            previous_cluster_id: 0,
            client_addr: Some("127.0.0.1:6379".parse().expect("a literal address")),
            admin_addr: None,
        }),
        peer::Frame::Challenge {
            which: 0,
            nonce: [1; peer::NONCE_LEN],
            tag: [2; peer::TAG_LEN],
        },
        peer::Frame::Proof {
            tag: [3; peer::TAG_LEN],
            app_addr: Some("127.0.0.1:6380".parse().expect("a literal address")),
            peer_addr: understudy::config::PeerAddr::parse("127.0.0.1:7002").ok(),
        },
        peer::Frame::Refuse {
            reason: "wrong cluster".into(),
        },
        peer::Frame::Message {
            message: Message::VoteRequest {
                epoch: Epoch(3),
                last_lsn: Lsn(7),
                last_epoch: Epoch(2),
                transfer: false,
            },
            records: Bytes::new(),
        },
        peer::Frame::Message {
            message: Message::Append(Append {
                epoch: Epoch(2),
                prev_lsn: Lsn(4),
                prev_epoch: Epoch(2),
                first_lsn: Lsn(5),
                last_lsn: Lsn(7),
                records_epoch: Epoch(2),
                commit_lsn: Lsn(4),
                sent_at: std::time::Duration::from_millis(12),
                promote: 0,
                promote_through: Lsn::ZERO,
                paused: false,
                pause_stamp: 0,
                config: None,
                successor: Some(NodeId(2)),
            }),
            records: Bytes::from(records.clone()),
        },
        peer::Frame::Message {
            message: Message::AppendResponse(AppendResponse {
                epoch: Epoch(2),
                accepted: true,
                matched_lsn: Lsn(7),
                matched_epoch: Epoch(2),
                durable_lsn: Lsn(7),
                sent_at: std::time::Duration::from_millis(12),
                learner: 0x5eed,
                health: understudy::core::Health::default(),
                vote_wait: std::time::Duration::from_millis(500),
            }),
            records: Bytes::new(),
        },
    ];
    let chunk_data = b"snapshot body";
    let mut chunk = wal::snapshot::encode_chunk_header(0, chunk_data).to_vec();
    chunk.extend_from_slice(chunk_data);
    let snapshot_frames = [
        peer::Frame::SnapshotBegin {
            epoch: Epoch(3),
            lsn: Lsn(7),
            snapshot_epoch: Epoch(2),
            body_len: chunk_data.len() as u64,
            config_lsn: Lsn(2),
            config: Bytes::from_static(
                br#"{"voters":[1],"learners":[],"addrs":{"1":"127.0.0.1:7101"}}"#,
            ),
        },
        peer::Frame::SnapshotChunk {
            offset: 0,
            raw: Bytes::from(chunk),
        },
        peer::Frame::SnapshotEnd {
            body_crc: 0x1234_5678,
        },
        peer::Frame::SnapshotAck { offset: 13 },
        peer::Frame::SnapshotDone { installed: true },
    ];
    for frame in peer_frames.into_iter().chain(snapshot_frames) {
        let mut one = BytesMut::new();
        peer::PeerCodec::default()
            .encode(frame, &mut one)
            .expect("encoding into memory cannot fail");
        peer_stream.extend_from_slice(&one);
        seeds.push(("peer_frame", one.to_vec()));
    }
    seeds.push(("peer_frame", peer_stream.to_vec()));

    let app_frames = [
        app::Frame::Hello { version: 1 },
        app::Frame::Append {
            request_id: 9,
            payloads: vec![Bytes::from_static(b"SET a 1"), Bytes::from_static(b"")],
        },
        app::Frame::Subscribe { from_lsn: Lsn(1) },
        app::Frame::SnapshotChunk {
            offset: 0,
            data: Bytes::from_static(b"state"),
        },
        app::Frame::Appended {
            request_id: 9,
            first_lsn: Lsn(5),
            last_lsn: Lsn(6),
        },
        app::Frame::Rejected {
            request_id: 9,
            reason: app::RejectReason::NotPrimary,
            primary: Some(NodeId(2)),
            client_addr: "127.0.0.1:7002".into(),
            message: "not the primary".into(),
        },
        app::Frame::Records {
            bytes: Bytes::from(records.clone()),
        },
        app::Frame::Role {
            role: app::Role::Primary,
            epoch: Epoch(2),
            primary: Some(NodeId(1)),
            primary_client_addr: "127.0.0.1:7001".into(),
            commit_lsn: Lsn(7),
        },
        app::Frame::RestoreBegin {
            lsn: Lsn(7),
            epoch: Epoch(2),
            body_len: 5,
        },
    ];
    let mut app_stream = BytesMut::new();
    for frame in app_frames {
        let mut one = BytesMut::new();
        frame.encode(&mut one);
        app_stream.extend_from_slice(&one);
        seeds.push(("app_frame", one.to_vec()));
    }
    seeds.push(("app_frame", app_stream.to_vec()));

    seeds.push(("wal_records", records.clone()));
    let mut with_epoch_start = Vec::new();
    format::encode_record(
        &mut with_epoch_start,
        Lsn(1),
        Epoch(1),
        RecordKind::EpochStart,
        b"",
    );
    with_epoch_start.extend_from_slice(&seed_records(Lsn(2), Epoch(1), 2));
    seeds.push(("wal_records", with_epoch_start.clone()));
    seeds.push((
        "wal_records",
        format::encode_segment_header(Lsn(5)).to_vec(),
    ));

    // wal_segment: layout byte 0 (valid header in front), then the records; torn at the end.
    let mut segment = vec![0u8];
    segment.extend_from_slice(&with_epoch_start);
    seeds.push(("wal_segment", segment.clone()));
    segment.truncate(segment.len() - 3);
    seeds.push(("wal_segment", segment));
    let mut whole = vec![1u8];
    whole.extend_from_slice(&format::encode_segment_header(Lsn(1)));
    whole.extend_from_slice(&with_epoch_start);
    seeds.push(("wal_segment", whole));

    let mut writer =
        wal::snapshot::SnapshotWriter::create(dir, Lsn(7), Epoch(2)).expect("create a snapshot");
    writer
        .write(b"the application's state")
        .expect("write a snapshot");
    let info = writer.finish().expect("install a snapshot");
    seeds.push((
        "snapshot",
        std::fs::read(&info.path).expect("read the snapshot back"),
    ));
    empty_dir(dir);

    let meta = wal::meta::Meta {
        node_id: NodeId(2),
        cluster_id: 0x5eed,
        epoch: Epoch(3),
        voted_for: Some(NodeId(1)),
        learner: false,
        floor_kept: true,
    };
    seeds.push(("meta", meta.encode().to_vec()));
    let learner = wal::meta::Meta {
        learner: true,
        ..meta
    };
    seeds.push(("meta", learner.encode().to_vec()));
    {
        use understudy::follow::change::Change;
        let name = Bytes::from_static(b"appendonly.aof.1.incr.aof");
        for change in [
            Change::Append {
                name: name.clone(),
                offset: 4096,
                data: Bytes::from_static(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n"),
            },
            Change::Install {
                name: Bytes::from_static(b"appendonly.aof.manifest"),
                data: Bytes::from_static(b"file appendonly.aof.1.base.rdb seq 1 type b\n"),
            },
            Change::Delete { name: name.clone() },
            Change::Rename {
                name: Bytes::from_static(b"temp-rewrite.aof"),
                to: name.clone(),
            },
            Change::SetLen { name, len: 17 },
        ] {
            seeds.push(("follow_change", change.encode().to_vec()));
        }
    }
    seeds
}

/// `count` small application records from `first`, all in `epoch`, back to back.
fn seed_records(first: Lsn, epoch: Epoch, count: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..count {
        let payload = format!("SET key{i} value{i}");
        format::encode_record(
            &mut bytes,
            Lsn(first.get() + i),
            epoch,
            RecordKind::App,
            payload.as_bytes(),
        );
    }
    bytes
}
