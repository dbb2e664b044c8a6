//! The node metadata file (FORMAT.md, "Node metadata"): round trips, every kind of damage
//! refused with an error naming the file, and the atomic replace.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use wal::meta::{Meta, META_LEN};
use wal::{Corruption, Epoch, Error, NodeId};

fn sample() -> Meta {
    Meta {
        node_id: NodeId(2),
        cluster_id: 0xfeed_f00d_0000_0001,
        epoch: Epoch(9),
        voted_for: Some(NodeId(3)),
        learner: false,
    }
}

fn meta_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("meta")
}

fn tmp_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("meta.tmp")
}

fn arb_meta() -> impl Strategy<Value = Meta> {
    (
        1u16..,
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(1u16..),
    )
        .prop_map(|(node_id, cluster_id, epoch, voted_for)| Meta {
            node_id: NodeId(node_id),
            cluster_id,
            epoch: Epoch(epoch),
            // No vote exists in epoch 0.
            voted_for: voted_for.filter(|_| epoch != 0).map(NodeId),
            learner: false,
        })
}

proptest! {
    /// Any valid metadata encodes to 40 bytes and decodes to itself.
    #[test]
    fn any_meta_round_trips_through_its_encoding(meta in arb_meta()) {
        let bytes = meta.encode();
        prop_assert_eq!(bytes.len(), META_LEN);
        prop_assert_eq!(Meta::decode(&bytes, Path::new("meta")).ok(), Some(meta));
    }

    /// The decoder is a fuzz target: any bytes give a value or an error, never a panic, and
    /// a value only for bytes that re-encode to themselves.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(meta) = Meta::decode(&bytes, Path::new("meta")) {
            prop_assert_eq!(&meta.encode()[..], &bytes[..]);
        }
    }
}

/// What was stored is what is loaded.
#[test]
fn stored_meta_loads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    sample().store(&path).expect("store");
    assert_eq!(Meta::load(&path).expect("load"), Some(sample()));
    assert!(!tmp_path(&dir).exists(), "store leaves no meta.tmp behind");
}

/// A node without a metadata file is new: `Ok(None)`, not an error and not zeros.
#[test]
fn missing_file_loads_as_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(Meta::load(&meta_path(&dir)).expect("load"), None);
}

/// A second store replaces the first as a whole.
#[test]
fn store_replaces_the_previous_meta() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    sample().store(&path).expect("store");
    let newer = Meta {
        epoch: Epoch(10),
        voted_for: None,
        ..sample()
    };
    newer.store(&path).expect("store");
    assert_eq!(Meta::load(&path).expect("load"), Some(newer));
    assert_eq!(std::fs::read(&path).expect("read").len(), META_LEN);
}

/// A `meta.tmp` left by a store that crashed before its rename is not the metadata: load
/// returns the old file's content and removes the temp.
#[test]
fn leftover_tmp_is_ignored_and_removed_by_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    sample().store(&path).expect("store");
    let half_written = Meta {
        epoch: Epoch(11),
        ..sample()
    }
    .encode();
    std::fs::write(tmp_path(&dir), &half_written[..17]).expect("write tmp");

    assert_eq!(Meta::load(&path).expect("load"), Some(sample()));
    assert!(!tmp_path(&dir).exists());
}

/// A leftover temp with no `meta` at all: still a new node, and the temp is removed.
#[test]
fn leftover_tmp_without_meta_loads_as_none_and_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp_path(&dir), sample().encode()).expect("write tmp");
    assert_eq!(Meta::load(&meta_path(&dir)).expect("load"), None);
    assert!(!tmp_path(&dir).exists());
}

/// Every single-bit flip in the file is refused, through `decode` and through `load`.
#[test]
fn every_flipped_bit_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    let good = sample().encode();
    for bit in 0..META_LEN * 8 {
        let mut bytes = good;
        bytes[bit / 8] ^= 1 << (bit % 8);
        assert!(
            Meta::decode(&bytes, &path).is_err(),
            "bit {bit} flipped was accepted"
        );
        std::fs::write(&path, bytes).expect("write");
        assert!(Meta::load(&path).is_err(), "bit {bit} flipped was loaded");
    }
}

/// A file cut short anywhere, including an empty file, is an error: never read as zeros.
#[test]
fn truncated_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    let good = sample().encode();
    for len in 0..META_LEN {
        std::fs::write(&path, &good[..len]).expect("write");
        match Meta::load(&path) {
            Err(Error::Corrupt {
                path: p,
                reason: Corruption::Truncated,
                ..
            }) => assert_eq!(p, path),
            other => panic!("length {len}: expected Truncated, got {other:?}"),
        }
    }
}

/// Bytes after the 40 are corruption too.
#[test]
fn longer_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    let mut bytes = sample().encode().to_vec();
    bytes.extend_from_slice(&[0; 1000]);
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(
        Meta::load(&path),
        Err(Error::Corrupt {
            reason: Corruption::LenTooLarge { len: 41, max: 40 },
            ..
        })
    ));
}

/// A file of zeros is not an understudy metadata file.
#[test]
fn zeroed_file_is_bad_magic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    std::fs::write(&path, [0u8; META_LEN]).expect("write");
    assert!(matches!(Meta::load(&path), Err(Error::BadMagic { .. })));
}

/// Another magic is reported as a foreign file, naming it.
#[test]
fn unknown_magic_is_bad_magic_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    let mut bytes = sample().encode();
    bytes[0..8].copy_from_slice(b"NOTAMETA");
    std::fs::write(&path, bytes).expect("write");
    match Meta::load(&path) {
        Err(
            err @ Error::BadMagic {
                found: [b'N', b'O', b'T', b'A', b'M', b'E', b'T', b'A'],
                ..
            },
        ) => assert!(err.to_string().contains(&path.display().to_string())),
        other => panic!("expected BadMagic, got {other:?}"),
    }
}

/// A version this build does not read is reported as such, naming the file.
#[test]
fn unknown_version_is_unsupported_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    let mut bytes = sample().encode();
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    std::fs::write(&path, bytes).expect("write");
    match Meta::load(&path) {
        Err(Error::UnsupportedVersion {
            path: p,
            found: 2,
            supported: 1,
        }) => assert_eq!(p, path),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

/// Storing a vote for node 0 is a bug, caught before anything is written.
#[test]
#[should_panic(expected = "voted_for Some(NodeId(0))")]
fn storing_a_vote_for_node_zero_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _ = Meta {
        voted_for: Some(NodeId(0)),
        ..sample()
    }
    .store(&meta_path(&dir));
}
