//! Sequential scan-and-verify throughput of the WAL reader, from the page cache (STYLE.md §9;
//! figures in `benches/README.md`).
//!
//! For each record size a log of [`LOG_BYTES`] is written and synced once, outside the
//! timing (so its pages are clean and cached), then read from its first LSN to its last:
//!
//! - `iter_from`: [`Reader::iter_from`], the per-record iterator: every record's CRC and LSN
//!   checked, each payload touched (its length and first byte summed).
//! - `next_batch`: [`Records::next_batch`] in runs of up to 1 MiB, as a primary ships records
//!   to a backup; every record is verified inside.
//!
//! Throughput counts the encoded bytes (headers and payloads) read.
//!
//! ```text
//! cargo bench --bench wal_scan
//! ```
//!
//! [`Reader::iter_from`]: wal::reader::Reader::iter_from
//! [`Records::next_batch`]: wal::reader::Records::next_batch

use std::path::PathBuf;
use std::time::Duration;

use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use tempfile::TempDir;
use wal::format::record_len;
use wal::reader::Reader;
use wal::{Epoch, Lsn, Options, RecordKind, Wal};

const SIZES: [usize; 3] = [128, 1 << 10, 64 << 10];
/// Encoded bytes in each log scanned.
const LOG_BYTES: usize = 256 << 20;
/// Largest run `next_batch` returns.
const BATCH_BYTES: usize = 1 << 20;

/// Where the logs go: a real disk, never tmpfs.
fn bench_root() -> PathBuf {
    let root = std::env::var_os("UNDERSTUDY_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    std::fs::create_dir_all(&root).expect("create the benchmark directory");
    root
}

struct Log {
    _dir: TempDir,
    _wal: Wal,
    reader: Reader,
    first: Lsn,
    last: Lsn,
    bytes: u64,
}

/// Writes about [`LOG_BYTES`] of `size`-byte records with the default 64 MiB segments and
/// syncs them.
fn write_log(size: usize) -> Log {
    let dir = tempfile::Builder::new()
        .prefix("wal-scan-")
        .tempdir_in(bench_root())
        .expect("create a temp dir");
    let (mut wal, _) = Wal::open(dir.path(), Options::default()).expect("open");
    let payload: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
    let per_call = ((1 << 20) / record_len(size)).max(1);
    let records = LOG_BYTES / record_len(size);
    let mut written = 0;
    while written < records {
        let n = per_call.min(records - written);
        wal.append(
            Epoch(1),
            RecordKind::App,
            std::iter::repeat_n(&payload[..], n),
        )
        .expect("append");
        written += n;
    }
    wal.sync().expect("sync");
    let reader = wal.reader();
    Log {
        first: wal.first_lsn(),
        last: wal.last_lsn(),
        bytes: (records * record_len(size)) as u64,
        _dir: dir,
        _wal: wal,
        reader,
    }
}

fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_scan");
    // Each iteration reads the whole log (around 100 ms): equal-sized samples.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for size in SIZES {
        let log = write_log(size);
        group.throughput(Throughput::Bytes(log.bytes));
        group.bench_with_input(BenchmarkId::new("iter_from", size), &size, |b, _| {
            b.iter(|| {
                let mut sum = 0u64;
                let mut count = 0u64;
                for record in log.reader.iter_from(log.first).expect("iter_from") {
                    let record = record.expect("record");
                    let payload = record.payload();
                    sum += payload.len() as u64 + u64::from(payload.first().copied().unwrap_or(0));
                    count += 1;
                }
                assert_eq!(count, log.last.get() - log.first.get() + 1);
                black_box(sum)
            });
        });
        group.bench_with_input(BenchmarkId::new("next_batch", size), &size, |b, _| {
            b.iter(|| {
                let mut records = log.reader.iter_from(log.first).expect("iter_from");
                let mut bytes = 0u64;
                while let Some(batch) = records.next_batch(BATCH_BYTES, log.last).expect("batch") {
                    bytes += batch.bytes.len() as u64;
                }
                assert_eq!(bytes, log.bytes);
                black_box(bytes)
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = scan
}
criterion_main!(benches);
