//! Follow mode: replication of an application's own files, for an application that cannot
//! be changed (DESIGN, "Two ways to attach an application").
//!
//! | file | what it owns |
//! |---|---|
//! | `change.rs` | one change to the directory (append, install, delete, rename, cut) as the payload of one log record, and its codec |
//! | `capture.rs` | the primary's side: inotify events turned into changes, in kernel order; the reply barrier's first half (`Capture::barrier`: how many changes cover every write made before it) |
//! | `materialize.rs` | a backup's side: changes applied to its copy of the directory, strictly (a directory that is not the log's is refused), synced on demand |
//! | `ship.rs` | the primary's captured changes proposed in order, and the reply barrier (`Shipper::reply_barrier`: every earlier write committed) |
//! | `replay.rs` | a backup's copy kept up with the committed log: applied, synced, then the LSN reached recorded; a directory found ahead of its record rebuilt |
//! | `snapshot.rs` | a snapshot of the directory (its files as changes) in the node's snapshot format, written and restored |
//! | `node.rs` | the node's use of them: standby (replay, snapshots), promotion (materialize, capture, start the application), serving, demotion (stop, rewind) |
//!
//! The client port holds each reply from the application on the shipper's reply barrier
//! (`node/proxy.rs`).

pub mod capture;
pub mod change;
pub mod materialize;
pub mod node;
pub mod replay;
pub mod ship;
pub mod snapshot;

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    use wal::format::RecordKind;
    use wal::{Epoch, Lsn, Options, Wal};

    use super::capture::Capture;
    use super::materialize::read_dir_contents;
    use super::replay::Replay;

    /// A way to damage a copy behind the sidecar's back.
    pub(crate) type Damage = fn(&std::path::Path);

    /// Damages to a copy that holds a file `aof` of at least 13 bytes, with their names.
    pub(crate) fn copy_damages() -> [(&'static str, Damage); 6] {
        [
            ("every file removed", |dir| {
                for name in super::materialize::read_dir_names(dir).unwrap() {
                    use std::os::unix::ffi::OsStrExt;
                    std::fs::remove_file(dir.join(std::ffi::OsStr::from_bytes(&name))).unwrap();
                }
            }),
            ("one file removed", |dir| {
                std::fs::remove_file(dir.join("aof")).unwrap()
            }),
            ("a file cut short", |dir| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("aof"))
                    .and_then(|f| f.set_len(12))
                    .unwrap()
            }),
            ("a byte changed, same length", |dir| {
                let mut data = std::fs::read(dir.join("aof")).unwrap();
                data[5] ^= 0x01;
                std::fs::write(dir.join("aof"), data).unwrap();
            }),
            ("a file added", |dir| {
                std::fs::write(dir.join("stray"), b"x").unwrap()
            }),
            ("a file renamed", |dir| {
                std::fs::rename(dir.join("aof"), dir.join("aof2")).unwrap()
            }),
        ]
    }

    /// Appends `SET k<round> v` to `dir/aof` (creating it), as an application writes its log;
    /// returns the line.
    pub(crate) fn append_set(dir: &std::path::Path, round: u32) -> Vec<u8> {
        let line = format!("SET k{round} v\n").into_bytes();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("aof"))
            .unwrap()
            .write_all(&line)
            .unwrap();
        line
    }

    /// The pieces together, as a primary and a backup will use them, on what Redis does to
    /// its append-only directory: appends to the incremental file, a rewrite (a new base
    /// written under a temporary name and renamed into place, a new incremental file, the
    /// manifest replaced by rename, the old files deleted), more appends. The primary's
    /// captured changes go into a log; the backup's copy, replayed from the log, ends equal
    /// to the directory.
    #[test]
    fn a_redis_like_directory_is_captured_logged_and_replayed() {
        let root = tempfile::tempdir().unwrap();
        let aof = root.path().join("appendonlydir");
        std::fs::create_dir(&aof).unwrap();
        let (tx, rx) = mpsc::channel();
        let capture = Capture::start(&aof, tx).unwrap();

        let write = |name: &str, data: &[u8]| {
            std::fs::write(aof.join(name), data).unwrap();
        };
        let append = |name: &str, data: &[u8]| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(aof.join(name))
                .unwrap()
                .write_all(data)
                .unwrap();
        };
        write(
            "m.tmp",
            b"file a.1.base.rdb seq 1 type b\nfile a.1.incr.aof seq 1 type i\n",
        );
        std::fs::rename(aof.join("m.tmp"), aof.join("a.manifest")).unwrap();
        write("a.1.base.rdb", b"REDIS0011");
        for i in 0..50 {
            append(
                "a.1.incr.aof",
                format!("*3\r\n$3\r\nSET\r\n$2\r\nk{i}\r\n$1\r\nv\r\n").as_bytes(),
            );
        }
        // BGREWRITEAOF.
        append("a.2.incr.aof", b"");
        write("m.tmp", b"file a.1.base.rdb seq 1 type b\nfile a.1.incr.aof seq 1 type i\nfile a.2.incr.aof seq 2 type i\n");
        std::fs::rename(aof.join("m.tmp"), aof.join("a.manifest")).unwrap();
        write("temp-rewrite.rdb", b"REDIS0011 with fifty keys");
        std::fs::rename(aof.join("temp-rewrite.rdb"), aof.join("a.2.base.rdb")).unwrap();
        write(
            "m.tmp",
            b"file a.2.base.rdb seq 2 type b\nfile a.2.incr.aof seq 2 type i\n",
        );
        std::fs::rename(aof.join("m.tmp"), aof.join("a.manifest")).unwrap();
        std::fs::remove_file(aof.join("a.1.base.rdb")).unwrap();
        std::fs::remove_file(aof.join("a.1.incr.aof")).unwrap();
        for i in 50..80 {
            append(
                "a.2.incr.aof",
                format!("*3\r\n$3\r\nSET\r\n$2\r\nk{i}\r\n$1\r\nv\r\n").as_bytes(),
            );
        }

        // The primary: every captured change becomes a record.
        let (mut wal, _) = Wal::open(root.path().join("wal"), Options::default()).unwrap();
        wal.append(Epoch(1), RecordKind::EpochStart, [&[][..]])
            .unwrap();
        let mut count = 0;
        while let Ok(change) = rx.recv_timeout(Duration::from_millis(300)) {
            let payload = change.expect("capture failed").encode();
            wal.append(Epoch(1), RecordKind::App, [&payload[..]])
                .unwrap();
            count += 1;
        }
        drop(capture);
        let last = wal.sync().unwrap();
        assert!(count > 5, "only {count} changes captured");

        // The backup: the committed log replayed into its copy.
        let copy = root.path().join("copy");
        let mut replay = Replay::open(&copy, &root.path().join("materialized")).unwrap();
        assert_eq!(replay.catch_up(&wal.reader(), last).unwrap(), last);
        assert_eq!(
            read_dir_contents(&copy).unwrap(),
            read_dir_contents(&aof).unwrap()
        );
        assert_eq!(last, Lsn(1 + count));
    }
}
