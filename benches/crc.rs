//! CRC and record codec throughput (STYLE.md §9; figures in `benches/README.md`).
//!
//! - `crc32`: `crc32fast::hash` (the records' CRC-32/ISO-HDLC) over 128 B to 1 MiB.
//! - `decode_record`: [`decode_record`] of one encoded record (header checks + CRC of the
//!   whole record), as recovery, the reader and a receiving backup do.
//! - `encode_record`: [`encode_record`] of one record into a reused buffer (header, CRC, copy
//!   of the payload), as the appenders do.
//!
//! Throughput counts the bytes hashed, decoded or encoded (header included for records).
//!
//! ```text
//! cargo bench --bench crc
//! ```

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wal::format::{decode_record, encode_record};
use wal::{Epoch, Lsn, RecordKind};

const RECORD_SIZES: [usize; 3] = [128, 1 << 10, 64 << 10];
const CRC_SIZES: [usize; 4] = [128, 1 << 10, 64 << 10, 1 << 20];

fn bytes(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 + 7) as u8).collect()
}

fn crc(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32");
    for size in CRC_SIZES {
        let data = bytes(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| crc32fast::hash(black_box(data)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decode_record");
    for size in RECORD_SIZES {
        let mut encoded = Vec::new();
        encode_record(
            &mut encoded,
            Lsn(1),
            Epoch(1),
            RecordKind::App,
            &bytes(size),
        );
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &encoded, |b, encoded| {
            b.iter(|| {
                let (record, len) = decode_record(black_box(encoded))
                    .expect("valid record")
                    .expect("whole record");
                black_box((record.lsn, record.payload.len(), len))
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("encode_record");
    for size in RECORD_SIZES {
        let payload = bytes(size);
        let mut buf = Vec::with_capacity(wal::format::record_len(size));
        group.throughput(Throughput::Bytes(wal::format::record_len(size) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            b.iter(|| {
                buf.clear();
                encode_record(
                    &mut buf,
                    Lsn(1),
                    Epoch(1),
                    RecordKind::App,
                    black_box(payload),
                );
                black_box(buf.len())
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = crc
}
criterion_main!(benches);
