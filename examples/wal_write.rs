//! Writes a small write-ahead log to inspect with `understudy wal verify|dump`:
//! `cargo run --example wal_write -- DIR [RECORDS]`. Records span three epochs and several
//! segments; the writer thread uses group commit with `SyncPolicy::Always`.

use std::process::ExitCode;

use wal::format::RecordKind;
use wal::writer::{Writer, WriterOptions};
use wal::{Epoch, Options, Wal};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: wal_write DIR [RECORDS]");
        return ExitCode::from(2);
    };
    let count: u64 = match args.next().map(|n| n.parse()) {
        None => 10_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("wal_write: RECORDS: {e}");
            return ExitCode::from(2);
        }
    };
    match write(&dir, count) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wal_write: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &str, count: u64) -> Result<(), wal::Error> {
    let options = Options {
        segment_bytes_max: 256 << 10,
        ..Options::default()
    };
    let (wal, _) = Wal::open(dir, options)?;
    let start = wal.last_lsn();
    let epoch = wal.last_epoch().max(Epoch(1));
    let writer = Writer::spawn(wal, WriterOptions::default(), None)?;
    let mut last = start;
    for i in 0..count {
        // A new epoch every third of the way, as if the primary had changed.
        let epoch = Epoch(epoch.get() + i * 3 / count.max(1));
        let payload = format!("set key{:06} value-{i}", i % 1000);
        let (_, hi) = writer.append(epoch, RecordKind::App, [payload.as_bytes()])?;
        last = hi;
    }
    writer.wait_durable(last)?;
    println!("{dir}: wrote lsn {}..={last}", start.next());
    Ok(())
}
