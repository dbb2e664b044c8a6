//! Append throughput of the WAL (STYLE.md §9; figures in `benches/README.md`).
//!
//! - `wal_append_nosync`: [`Wal::append`] of a batch of records per call, never synced: the
//!   encode + CRC + `write` path. A fresh log per sample, with segments large enough that no
//!   roll (and so no fsync) happens inside a sample.
//! - `writer_always`: the group-commit [`Writer`] under `SyncPolicy::Always`, with 1, 8 and
//!   64 appender threads, each appending one record and waiting for it to be durable, in a
//!   loop. Throughput that grows with the appender count is group commit at work.
//! - `writer_batch`: the [`Writer`] under `SyncPolicy::Batch` (fsync at most every
//!   `sync_interval`), one appender queueing one record per call; the sample ends with a
//!   `sync()`, so every record timed is durable.
//!
//! The logs live on the real disk: under `UNDERSTUDY_BENCH_DIR` if set, otherwise under
//! cargo's `target/tmp` (never a tmpfs `/tmp`).
//!
//! ```text
//! cargo bench --bench wal_append
//! ```

use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use tempfile::TempDir;
use wal::writer::{Writer, WriterOptions};
use wal::{Epoch, Lsn, Options, RecordKind, SyncPolicy, Wal};

const SIZES: [usize; 3] = [128, 1 << 10, 64 << 10];
const APPENDERS: [usize; 3] = [1, 8, 64];
const EPOCH: Epoch = Epoch(1);

/// Where the logs go: a real disk, never tmpfs.
fn bench_root() -> PathBuf {
    let root = std::env::var_os("UNDERSTUDY_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    std::fs::create_dir_all(&root).expect("create the benchmark directory");
    root
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("wal-append-")
        .tempdir_in(bench_root())
        .expect("create a temp dir")
}

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 + 7) as u8).collect()
}

/// Records per `Wal::append` call: 1,000 small records, or about 1 MiB of large ones.
fn records_per_call(size: usize) -> usize {
    (1000).min(((1 << 20) / size).max(1))
}

fn wal_append_nosync(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_nosync");
    for size in SIZES {
        let per_call = records_per_call(size);
        let payload = payload(size);
        group.throughput(Throughput::Elements(per_call as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("x{per_call}"), size),
            &size,
            |b, _| {
                b.iter_custom(|iters| {
                    let dir = temp_dir();
                    let options = Options {
                        // No roll, so no fsync, inside a sample.
                        segment_bytes_max: 1 << 40,
                        ..Options::default()
                    };
                    let (mut wal, _) = Wal::open(dir.path(), options).expect("open");
                    let start = Instant::now();
                    for _ in 0..iters {
                        let payloads = std::iter::repeat_n(&payload[..], per_call);
                        criterion::black_box(
                            wal.append(EPOCH, RecordKind::App, payloads)
                                .expect("append"),
                        );
                    }
                    let elapsed = start.elapsed();
                    drop(wal);
                    drop(dir);
                    elapsed
                });
            },
        );
    }
    group.finish();
}

/// Runs `records` single-record append-then-wait-durable operations spread over `appenders`
/// threads against `writer`, and returns the wall time from the moment all threads are
/// ready until the last one is done.
fn run_appenders(writer: &Writer, appenders: usize, records: u64, payload: &[u8]) -> Duration {
    let ready = Barrier::new(appenders + 1);
    let per_thread = records / appenders as u64;
    let extra = records % appenders as u64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..appenders as u64)
            .map(|i| {
                let ready = &ready;
                let count = per_thread + u64::from(i < extra);
                scope.spawn(move || {
                    ready.wait();
                    for _ in 0..count {
                        let (_, last) = writer
                            .append(EPOCH, RecordKind::App, [payload])
                            .expect("append");
                        writer.wait_durable(last).expect("durable");
                    }
                })
            })
            .collect();
        ready.wait();
        let start = Instant::now();
        for handle in handles {
            handle.join().expect("appender thread");
        }
        start.elapsed()
    })
}

fn writer_always(c: &mut Criterion) {
    let mut group = c.benchmark_group("writer_always");
    // One fsync costs milliseconds here: equal-sized samples, fewer of them.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for size in SIZES {
        let payload = payload(size);
        for appenders in APPENDERS {
            let dir = temp_dir();
            let (wal, _) = Wal::open(dir.path(), Options::default()).expect("open");
            let options = WriterOptions {
                sync: SyncPolicy::Always,
                ..WriterOptions::default()
            };
            let writer = Writer::spawn(wal, options, None).expect("spawn");
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(
                BenchmarkId::new(format!("{appenders}_appenders"), size),
                &size,
                |b, _| {
                    b.iter_custom(|iters| run_appenders(&writer, appenders, iters, &payload));
                },
            );
            drop(writer);
            drop(dir);
        }
    }
    group.finish();
}

fn writer_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("writer_batch");
    for size in SIZES {
        let payload = payload(size);
        let dir = temp_dir();
        let (wal, _) = Wal::open(dir.path(), Options::default()).expect("open");
        let options = WriterOptions {
            sync: SyncPolicy::Batch,
            ..WriterOptions::default()
        };
        let writer = Writer::spawn(wal, options, None).expect("spawn");
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("1_appender", size), &size, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut last = Lsn::ZERO;
                for _ in 0..iters {
                    last = writer
                        .append(EPOCH, RecordKind::App, [&payload[..]])
                        .expect("append")
                        .1;
                }
                writer.sync().expect("sync");
                let elapsed = start.elapsed();
                assert!(writer.durable_lsn() >= last);
                elapsed
            });
        });
        drop(writer);
        drop(dir);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = wal_append_nosync, writer_always, writer_batch
}
criterion_main!(benches);
