//! Property tests of the log against a plain `Vec` model: random batches (several segments,
//! several epochs), then a cut at any byte of any segment or a flipped bit anywhere. Reopening
//! yields exactly the intact prefix (a torn tail of the last segment) or a corruption error,
//! never a wrong record. Also: truncation at either end and reads from any LSN.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;

use proptest::prelude::*;
use wal::format::RecordKind;
use wal::{Epoch, Lsn, Options, Wal};

const SEGMENT_BYTES_MAX: u64 = 700;

/// The model: record `i` (LSN `i + 1`) has this epoch and payload.
type Model = Vec<(Epoch, Vec<u8>)>;

fn batches() -> impl Strategy<Value = Vec<(u64, Vec<Vec<u8>>)>> {
    // (epoch increment, payloads) per batch.
    proptest::collection::vec(
        (
            0u64..2,
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 1..6),
        ),
        1..12,
    )
}

/// Writes the batches; returns the model and the segment paths.
fn write(dir: &std::path::Path, batches: &[(u64, Vec<Vec<u8>>)]) -> (Model, Vec<PathBuf>) {
    let (mut wal, _) = Wal::open(
        dir,
        Options {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            ..Options::default()
        },
    )
    .unwrap();
    let mut model = Vec::new();
    let mut epoch = Epoch(1);
    for (bump, payloads) in batches {
        epoch = Epoch(epoch.get() + bump);
        let (first, last) = wal
            .append(epoch, RecordKind::App, payloads.iter().map(|p| &p[..]))
            .unwrap();
        assert_eq!(first, Lsn(model.len() as u64 + 1));
        model.extend(payloads.iter().map(|p| (epoch, p.clone())));
        assert_eq!(last, Lsn(model.len() as u64));
    }
    wal.sync().unwrap();
    (model, wal.segment_paths())
}

/// Reopens and reads everything back, or returns the error's text.
fn reopen(dir: &std::path::Path) -> Result<Vec<(Lsn, Epoch, Vec<u8>)>, String> {
    let (wal, _) = Wal::open(
        dir,
        Options {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            ..Options::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let records = wal
        .reader()
        .iter_from(wal.first_lsn())
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn, r.epoch, r.payload().to_vec())
        })
        .collect::<Vec<_>>();
    assert_eq!(records.len() as u64, wal.last_lsn().get());
    Ok(records)
}

fn assert_prefix(records: &[(Lsn, Epoch, Vec<u8>)], model: &Model) {
    assert!(records.len() <= model.len());
    for (i, (lsn, epoch, payload)) in records.iter().enumerate() {
        assert_eq!(*lsn, Lsn(i as u64 + 1));
        assert_eq!(
            (*epoch, payload),
            (model[i].0, &model[i].1),
            "record {lsn} differs"
        );
    }
}

/// Which records (0-based, half-open) a segment holds, from the model's record sizes.
fn records_in(segments: &[PathBuf], at: usize) -> (usize, usize) {
    let first = |path: &PathBuf| -> usize {
        let name = path.file_name().unwrap().to_str().unwrap();
        wal::segment::parse_file_name(name).unwrap().get() as usize - 1
    };
    let start = first(&segments[at]);
    let end = segments.get(at + 1).map(first);
    (start, end.unwrap_or(usize::MAX))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// A cut at any byte: in the last segment it is a torn tail, provably torn, and exactly
    /// the records wholly before the cut survive; in a sealed segment it is an error.
    #[test]
    fn cut_at_any_byte_yields_the_intact_prefix_or_an_error(batches in batches(), pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let (model, segments) = write(dir.path(), &batches);
        let which = pick.index(segments.len());
        let path = &segments[which];
        let len = fs::metadata(path).unwrap().len() as usize;
        let cut = at.index(len + 1);
        OpenOptions::new().write(true).open(path).unwrap().set_len(cut as u64).unwrap();
        if let Ok(inspection) = wal::log::inspect(dir.path()) {
            if let Some(torn) = inspection.torn {
                prop_assert!(torn.provably_torn, "a cut file read as a suspect tail: {:?}", torn);
            }
        }
        let result = reopen(dir.path());
        let is_last = which + 1 == segments.len();
        let (start, _) = records_in(&segments, which);
        match result {
            Ok(records) => {
                assert_prefix(&records, &model);
                if cut == len {
                    prop_assert_eq!(records.len(), model.len());
                } else {
                    prop_assert!(is_last, "a cut sealed segment was accepted");
                    // Exactly the records that end at or before the cut.
                    let mut end = wal::format::SEGMENT_HEADER_LEN;
                    let mut whole = start;
                    for (_, payload) in &model[start..] {
                        end += wal::format::record_len(payload.len());
                        if end > cut { break; }
                        whole += 1;
                    }
                    prop_assert_eq!(records.len(), whole);
                }
            }
            Err(message) => {
                // Only a sealed segment or a cut into a header is an error.
                prop_assert!(!is_last || cut < wal::format::SEGMENT_HEADER_LEN, "{}", message);
            }
        }
    }

    /// A flipped bit anywhere: never a wrong record. In the last record of the last segment
    /// it reads as a suspect tail, never as a provably torn one (a flipped bit is what a
    /// latent sector error in an acknowledged record looks like); anywhere else it is an
    /// error.
    #[test]
    fn flipped_bit_anywhere_is_never_a_wrong_record(batches in batches(), pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let (model, segments) = write(dir.path(), &batches);
        let which = pick.index(segments.len());
        let path = &segments[which];
        let mut bytes = fs::read(path).unwrap();
        let bit = at.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        fs::write(path, &bytes).unwrap();
        if let Ok(inspection) = wal::log::inspect(dir.path()) {
            if let Some(torn) = inspection.torn {
                prop_assert!(!torn.provably_torn, "a flipped bit read as provably torn: {:?}", torn);
            }
        }
        // An error is the other allowed outcome.
        if let Ok(records) = reopen(dir.path()) {
            assert_prefix(&records, &model);
            // Only the very last record can go, as a torn tail.
            prop_assert_eq!(records.len() + 1, model.len());
            prop_assert_eq!(which + 1, segments.len());
        }
    }

    /// Suffix truncation keeps exactly `..=keep`, survives a reopen, and takes new records;
    /// prefix truncation drops only whole segments below the point.
    #[test]
    fn truncation_keeps_exactly_what_it_says(batches in batches(), keep in any::<prop::sample::Index>(), prefix in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let (model, _) = write(dir.path(), &batches);
        let options = Options { segment_bytes_max: SEGMENT_BYTES_MAX, ..Options::default() };
        let keep = keep.index(model.len() + 1) as u64;
        {
            let (mut wal, _) = Wal::open(dir.path(), options.clone()).unwrap();
            wal.truncate_suffix(Lsn(keep)).unwrap();
            prop_assert_eq!(wal.last_lsn(), Lsn(keep));
            prop_assert_eq!(wal.durable_lsn(), Lsn(keep));
            let expected_epoch = if keep == 0 { Epoch::ZERO } else { model[keep as usize - 1].0 };
            prop_assert_eq!(wal.last_epoch(), expected_epoch);
        }
        let records = reopen(dir.path()).unwrap();
        prop_assert_eq!(records.len() as u64, keep);
        assert_prefix(&records, &model);

        let (mut wal, _) = Wal::open(dir.path(), options.clone()).unwrap();
        let epoch = Epoch(model.last().unwrap().0.get() + 1);
        wal.append(epoch, RecordKind::App, [&b"new"[..]]).unwrap();
        wal.sync().unwrap();
        let point = Lsn(prefix.index(keep as usize + 2) as u64 + 1);
        wal.truncate_prefix(point).unwrap();
        prop_assert!(wal.first_lsn() <= point);
        let first = wal.first_lsn();
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), options).unwrap();
        prop_assert_eq!(wal.first_lsn(), first);
        prop_assert_eq!(wal.last_lsn(), Lsn(keep + 1));
        prop_assert_eq!(wal.epoch_at(Lsn(keep + 1)), Some(epoch));
        let last = wal.reader().iter_from(Lsn(keep + 1)).unwrap().next().unwrap().unwrap();
        prop_assert_eq!(&last.payload()[..], b"new");
    }

    /// A reader started at any LSN yields exactly the model's records from there on.
    #[test]
    fn reader_from_any_lsn_matches_the_model(batches in batches(), from in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let (model, _) = write(dir.path(), &batches);
        let (wal, _) = Wal::open(dir.path(), Options { segment_bytes_max: SEGMENT_BYTES_MAX, ..Options::default() }).unwrap();
        let from = from.index(model.len()) + 1;
        let records: Vec<_> = wal.reader().iter_from(Lsn(from as u64)).unwrap().map(|r| r.unwrap()).collect();
        prop_assert_eq!(records.len(), model.len() - from + 1);
        for record in records {
            let (epoch, payload) = &model[record.lsn.get() as usize - 1];
            prop_assert_eq!(record.epoch, *epoch);
            prop_assert_eq!(&record.payload()[..], &payload[..]);
        }
        // Batches cover the same records, segment by segment.
        let mut iter = wal.reader().iter_from(Lsn(from as u64)).unwrap();
        let mut next = Lsn(from as u64);
        while let Some(batch) = iter.next_batch(300, wal.last_lsn()).unwrap() {
            prop_assert_eq!(batch.first_lsn, next);
            let verified = wal::format::verify_records(batch.bytes.clone(), batch.first_lsn).unwrap();
            prop_assert_eq!(verified.last_lsn(), batch.last_lsn);
            next = batch.last_lsn.next();
        }
        prop_assert_eq!(next, wal.last_lsn().next());
    }

    /// A reader that keeps up with appends (as a subscription does) yields every record
    /// once and in order, whether the log grew within the segment it has mapped or rolled
    /// to new ones, and with batches read at any point between appends.
    #[test]
    fn reader_following_appends_matches_the_model(batches in batches(), max_bytes in 1usize..400) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), Options { segment_bytes_max: SEGMENT_BYTES_MAX, ..Options::default() }).unwrap();
        let mut iter = wal.reader().iter_from(Lsn(1)).unwrap();
        let mut model: Model = Vec::new();
        let mut seen: Model = Vec::new();
        let mut epoch = Epoch(1);
        for (bump, payloads) in &batches {
            epoch = Epoch(epoch.get() + bump);
            wal.append(epoch, RecordKind::App, payloads.iter().map(|p| &p[..])).unwrap();
            model.extend(payloads.iter().map(|p| (epoch, p.clone())));
            // Read part of what is there now (one batch), leaving the rest for later.
            if let Some(batch) = iter.next_batch(max_bytes, wal.last_lsn()).unwrap() {
                let verified = wal::format::verify_records(batch.bytes.clone(), batch.first_lsn).unwrap();
                prop_assert_eq!(batch.first_lsn, Lsn(seen.len() as u64 + 1));
                for record in verified.iter() {
                    seen.push((record.epoch, record.payload.to_vec()));
                }
            }
        }
        for record in iter {
            let record = record.unwrap();
            seen.push((record.epoch, record.payload().to_vec()));
        }
        prop_assert_eq!(seen, model);
    }
}

/// A record a backup received from a peer is stored byte for byte: the bytes read back are
/// the bytes that arrived.
#[test]
fn received_records_are_stored_byte_for_byte() {
    let source_dir = tempfile::tempdir().unwrap();
    let copy_dir = tempfile::tempdir().unwrap();
    let (mut source, _) = Wal::open(source_dir.path(), Options::default()).unwrap();
    let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; i as usize * 3]).collect();
    source
        .append(Epoch(2), RecordKind::App, payloads.iter().map(|p| &p[..]))
        .unwrap();
    let batch = source
        .reader()
        .iter_from(Lsn(1))
        .unwrap()
        .next_batch(usize::MAX, Lsn(50))
        .unwrap()
        .unwrap();
    let verified = wal::format::verify_records(batch.bytes.clone(), Lsn(1)).unwrap();
    let (mut copy, _) = Wal::open(copy_dir.path(), Options::default()).unwrap();
    copy.append_encoded(&verified).unwrap();
    copy.sync().unwrap();
    let reread = copy
        .reader()
        .iter_from(Lsn(1))
        .unwrap()
        .next_batch(usize::MAX, Lsn(50))
        .unwrap()
        .unwrap();
    assert_eq!(reread.bytes, batch.bytes);
    // A run that does not follow the log is refused and nothing is written.
    let err = copy.append_encoded(&verified).unwrap_err();
    assert!(matches!(err, wal::Error::OutOfOrder { .. }), "{err}");
    assert_eq!(copy.last_lsn(), Lsn(50));
}
