//! The WAL-level SIGKILL loop: a child process appends with `SyncPolicy::Always` through the
//! group-commit writer and prints every LSN it is told is durable; the parent kills it with
//! SIGKILL at a random moment, reopens the log, and checks that every LSN the child printed
//! is present and intact. Then again, on the same log, `WAL_CRASH_CYCLES` times (default 50).
//!
//! The child is this same test binary, re-run with `WAL_CRASH_CHILD` set to the directory:
//! no extra binary to build.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wal::format::RecordKind;
use wal::writer::{Writer, WriterOptions};
use wal::{Epoch, Lsn, Options, SyncPolicy, Wal};

const SEGMENT_BYTES_MAX: u64 = 256 << 10;

/// The payload of record `lsn`: its length and bytes follow from the LSN alone, so the
/// parent can check every record without being told what was written.
fn payload(lsn: u64) -> Vec<u8> {
    let len = (lsn.wrapping_mul(2_654_435_761) % 9000) as usize;
    (0..len)
        .map(|i| (lsn as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

/// The child: appends forever from wherever the log ends, from four threads sharing group
/// commit, printing `durable <lsn>` once each append is durable.
fn child(dir: &Path) {
    let (wal, _) = Wal::open(
        dir,
        Options {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            ..Options::default()
        },
    )
    .unwrap();
    let writer = Arc::new(
        Writer::spawn(
            wal,
            WriterOptions {
                sync: SyncPolicy::Always,
                ..WriterOptions::default()
            },
            None,
        )
        .unwrap(),
    );
    // The payload depends on the LSN, so "read the next LSN, encode, append" must not
    // interleave between threads: `order` serialises it. Waiting for durability happens
    // outside it, so the threads share group commits.
    let order = Arc::new(std::sync::Mutex::new(()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let writer = Arc::clone(&writer);
            let order = Arc::clone(&order);
            std::thread::spawn(move || loop {
                let hi = {
                    let _order = order.lock().unwrap();
                    let first = writer.last_lsn().next().get();
                    let batch = 1 + (t * 7 + first) % 5;
                    let payloads: Vec<Vec<u8>> = (first..first + batch).map(payload).collect();
                    let (lo, hi) = writer
                        .append(Epoch(1), RecordKind::App, payloads.iter().map(|p| &p[..]))
                        .unwrap();
                    assert_eq!(lo, Lsn(first));
                    hi
                };
                writer.wait_durable(hi).unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "durable {}", hi.get()).unwrap();
                out.flush().unwrap();
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn crash_child() {
    // Runs only when the parent below asks for it.
    if let Ok(dir) = std::env::var("WAL_CRASH_CHILD") {
        child(Path::new(&dir));
    }
}

/// A seeded generator for kill moments (no external randomness: a failure replays).
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every LSN reported durable before a SIGKILL is in the log after reopen, intact.
#[test]
fn every_reported_durable_lsn_survives_sigkill() {
    let cycles: usize = std::env::var("WAL_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut seed: u64 = std::env::var("WAL_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut highest_reported = 0u64;
    let mut torn_cuts = 0;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("WAL_CRASH_CHILD", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Let it report between 1 and 60 durable appends, then kill it mid-flight.
        let wanted = 1 + next(&mut seed) % 60;
        let mut reported = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while reported < wanted {
            assert!(
                Instant::now() < deadline,
                "child made no progress in cycle {cycle}"
            );
            let Some(line) = lines.next() else { break };
            let line = line.unwrap();
            if let Some(lsn) = line.strip_prefix("durable ") {
                highest_reported = highest_reported.max(lsn.parse().unwrap());
                reported += 1;
            }
        }
        // Sometimes kill at once, sometimes after a short random delay.
        std::thread::sleep(Duration::from_micros(next(&mut seed) % 3000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines printed after the count but before the kill also count as reported.
        for line in lines.map_while(Result::ok) {
            if let Some(lsn) = line.strip_prefix("durable ") {
                highest_reported = highest_reported.max(lsn.parse().unwrap());
            }
        }

        let (wal, recovery) = Wal::open(
            dir.path(),
            Options {
                segment_bytes_max: SEGMENT_BYTES_MAX,
                ..Options::default()
            },
        )
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        if recovery.torn.is_some() {
            torn_cuts += 1;
        }
        assert!(
            wal.last_lsn().get() >= highest_reported,
            "cycle {cycle}: lsn {highest_reported} was reported durable but the log ends at {}",
            wal.last_lsn()
        );
        for record in wal.reader().iter_from(wal.first_lsn()).unwrap() {
            let record = record.unwrap();
            assert_eq!(
                &record.payload()[..],
                &payload(record.lsn.get())[..],
                "cycle {cycle}: record {} differs",
                record.lsn
            );
        }
    }
    eprintln!(
        "{cycles} kills in {:?}: {highest_reported} records durable, {torn_cuts} torn tails cut",
        started.elapsed()
    );
    assert!(
        highest_reported > cycles as u64,
        "the children barely wrote anything"
    );
}
