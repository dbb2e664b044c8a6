//! Replays the fuzz corpus on stable: every file under `tests/fuzz/corpus/<target>/` and
//! every seed goes through the same property function the fuzz target calls
//! (`tests/fuzz/src/lib.rs`), so `cargo test` exercises every decoder that takes bytes from
//! outside, and an input that once crashed a target (kept in the corpus, and inline below)
//! stays fixed.
//!
//! `FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus` (re)writes the seed files into the
//! corpus folders; the fuzzer starts from them.

#[allow(dead_code)] // `scratch_dir` is the fuzz targets'; these tests use a tempdir
#[path = "fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// A scratch directory for the file targets, in memory when `/dev/shm` exists: the
/// `wal_segment` target fsyncs several times per input.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new()
        .prefix("understudy-fuzz-")
        .tempdir_in(if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        });
    builder.expect("a scratch dir")
}

/// Every seed passes its target's properties; with `FUZZ_WRITE_SEEDS` set, they are also
/// written as `seed-<n>` into the corpus.
#[test]
fn seeds_pass_every_target() {
    let scratch = scratch();
    let seeds = checks::seeds(scratch.path());
    for target in checks::TARGETS {
        assert!(
            seeds.iter().any(|(name, _)| *name == target),
            "no seed for the {target} target"
        );
    }
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for (n, (target, data)) in seeds.iter().enumerate() {
        checks::run(target, data, scratch.path());
        if write {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).expect("create a corpus dir");
            std::fs::write(dir.join(format!("seed-{n:02}")), data).expect("write a seed");
        }
    }
}

/// Every checked-in corpus file passes its target's properties.
#[test]
fn corpus_passes_every_target() {
    let scratch = scratch();
    let mut replayed = 0;
    for target in checks::TARGETS {
        let Ok(entries) = std::fs::read_dir(corpus_dir(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let data = std::fs::read(&path).expect("read a corpus file");
            eprintln!("{target}: {}", path.display());
            checks::run(target, &data, scratch.path());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "the corpus under tests/fuzz/corpus is empty");
}
