//! `understudy wal verify|dump` as an operator runs them: exit codes, one-line errors that
//! name the file, offset and LSN, and that neither command changes the directory.

use std::process::Command;

use wal::format::RecordKind;
use wal::{Epoch, Lsn, Options, Wal};

fn understudy(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_log(dir: &std::path::Path, count: u64) {
    let (mut wal, _) = Wal::open(dir, Options::default()).unwrap();
    let payloads: Vec<String> = (1..=count).map(|i| format!("set k{i} v{i}")).collect();
    wal.append(
        Epoch(1),
        RecordKind::App,
        payloads.iter().map(|p| p.as_bytes()),
    )
    .unwrap();
    wal.sync().unwrap();
}

#[test]
fn verify_passes_an_intact_log_and_dump_prints_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("wal");
    write_log(&log, 100);
    let (code, out, err) = understudy(&["wal", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok: 1 segments, 100 records (lsn 1..=100)"),
        "{out}"
    );

    let (code, out, _) = understudy(&["wal", "dump", log.to_str().unwrap(), "--from", "98"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].contains("98") && lines[1].contains("\"set k98 v98\""),
        "{out}"
    );
}

#[test]
fn verify_names_file_offset_and_lsn_of_a_damaged_record_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 50);
    let segment = dir.path().join(wal::segment::file_name(Lsn(1)));
    let mut bytes = std::fs::read(&segment).unwrap();
    // Records 1..=3 are "set kN vN": 9 bytes of payload each.
    let offset = wal::format::SEGMENT_HEADER_LEN + 3 * (wal::format::RECORD_HEADER_LEN + 9);
    bytes[offset + 30] ^= 0xff; // inside record 4
    std::fs::write(&segment, &bytes).unwrap();
    let (code, _, err) = understudy(&["wal", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "one line for the operator: {err}");
    assert!(err.starts_with("understudy: "), "{err}");
    assert!(err.contains(&segment.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("offset {offset}")) && err.contains("lsn 4"),
        "{err}"
    );
    // Read-only: nothing was cut or removed.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
}

#[test]
fn verify_reports_a_torn_tail_without_cutting_it() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10);
    let segment = dir.path().join(wal::segment::file_name(Lsn(1)));
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (code, out, err) = understudy(&["wal", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("torn tail (provably torn) after lsn 9"),
        "{out}"
    );
    assert!(!out.contains("suspect"), "{out}");
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), len - 5);

    let (code, out, _) = understudy(&["wal", "dump", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.ends_with("# torn tail after lsn 9 not shown (34 bytes)\n"),
        "{out}"
    );
}

/// A last record that is whole but fails its CRC may be an acknowledged record gone bad, not
/// a torn write: verify says so, and that the node will start as a learner, and cuts nothing.
#[test]
fn verify_reports_a_suspect_tail_without_cutting_it() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10);
    let segment = dir.path().join(wal::segment::file_name(Lsn(1)));
    let mut bytes = std::fs::read(&segment).unwrap();
    *bytes.last_mut().unwrap() ^= 0x20; // the last payload byte of record 10
    std::fs::write(&segment, &bytes).unwrap();
    let (code, out, err) = understudy(&["wal", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "suspect tail: the last record is complete but fails its check; \
             the node will start as a learner (after lsn 9"
        ),
        "{out}"
    );
    assert!(!out.contains("provably torn"), "{out}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);

    let (code, out, _) = understudy(&["wal", "dump", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("# suspect tail after lsn 9 not shown"),
        "{out}"
    );
}

/// In a data directory verify checks the metadata file and says when the node is a learner;
/// a version 1 file (no learner flag) verifies as a node that is not.
#[test]
fn verify_prints_the_metadata_and_whether_the_node_is_a_learner() {
    let dir = tempfile::tempdir().unwrap();
    write_log(&dir.path().join("wal"), 3);
    let meta_path = dir.path().join(wal::meta::META_FILE_NAME);
    let meta = wal::meta::Meta {
        node_id: wal::NodeId(2),
        cluster_id: 0xabc,
        epoch: Epoch(4),
        voted_for: Some(wal::NodeId(3)),
        learner: true,
        floor_kept: true,
    };
    meta.store(&meta_path).unwrap();
    let (code, out, err) = understudy(&["wal", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("node 2  cluster 0000000000000abc  epoch 4  voted for 3  learner  ok"),
        "{out}"
    );

    // The same node as version 1 wrote it: bytes 34..36 reserved, so not a learner.
    let mut v1 = wal::meta::Meta {
        learner: false,
        floor_kept: false,
        ..meta
    }
    .encode();
    v1[8..10].copy_from_slice(&1u16.to_le_bytes());
    let crc = crc32fast::hash(&v1[..36]);
    v1[36..40].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&meta_path, v1).unwrap();
    let (code, out, err) = understudy(&["wal", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("epoch 4  voted for 3  ok"), "{out}");
    assert!(!out.contains("learner"), "{out}");
}

#[test]
fn verify_of_a_missing_directory_is_one_clear_line() {
    let (code, _, err) = understudy(&["wal", "verify", "/nonexistent/understudy"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "understudy: /nonexistent/understudy: not a directory"
    );
}
