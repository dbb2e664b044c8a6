//! The node metadata file (FORMAT.md, "Node metadata"): round trips, files of version 1 read
//! as not a learner and of versions 1 and 2 as keeping no floor, every kind of damage refused with an error naming the file, and the
//! atomic replace.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use wal::meta::{Meta, META_LEN, META_VERSION};
use wal::{Corruption, Epoch, Error, NodeId};

fn sample() -> Meta {
    Meta {
        node_id: NodeId(2),
        cluster_id: 0xfeed_f00d_0000_0001,
        epoch: Epoch(9),
        voted_for: Some(NodeId(3)),
        learner: false,
        floor_kept: false,
    }
}

/// `meta` as version 1 wrote it (FORMAT.md's table without the learner and floor bytes);
/// `meta` must be neither a learner nor keep a floor, which version 1 could not say.
fn encode_v1(meta: &Meta) -> [u8; META_LEN] {
    assert!(!meta.learner);
    encode_old(meta, 1)
}

/// `meta` as version 2 wrote it (without the floor byte); `meta` must not keep a floor.
fn encode_v2(meta: &Meta) -> [u8; META_LEN] {
    let mut bytes = encode_old(meta, 2);
    bytes[34] = u8::from(meta.learner);
    let crc = crc32fast::hash(&bytes[..36]);
    bytes[36..40].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn encode_old(meta: &Meta, version: u16) -> [u8; META_LEN] {
    assert!(!meta.floor_kept);
    let mut bytes = [0u8; META_LEN];
    bytes[0..8].copy_from_slice(b"USTDYMTA");
    bytes[8..10].copy_from_slice(&version.to_le_bytes());
    bytes[10..12].copy_from_slice(&meta.node_id.get().to_le_bytes());
    bytes[16..24].copy_from_slice(&meta.cluster_id.to_le_bytes());
    bytes[24..32].copy_from_slice(&meta.epoch.get().to_le_bytes());
    let voted_for = meta.voted_for.map_or(0, NodeId::get);
    bytes[32..34].copy_from_slice(&voted_for.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..36]);
    bytes[36..40].copy_from_slice(&crc.to_le_bytes());
    bytes
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
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(node_id, cluster_id, epoch, voted_for, learner, floor_kept)| Meta {
                node_id: NodeId(node_id),
                cluster_id,
                epoch: Epoch(epoch),
                // No vote exists in epoch 0.
                voted_for: voted_for.filter(|_| epoch != 0).map(NodeId),
                learner,
                floor_kept,
            },
        )
}

proptest! {
    /// Any valid metadata encodes to 40 bytes and decodes to itself.
    #[test]
    fn any_meta_round_trips_through_its_encoding(meta in arb_meta()) {
        let bytes = meta.encode();
        prop_assert_eq!(bytes.len(), META_LEN);
        prop_assert_eq!(Meta::decode(&bytes, Path::new("meta")).ok(), Some(meta));
    }

    /// Any metadata that version 1 could hold (no learner) reads back the same from its
    /// version 1 encoding, as not a learner.
    #[test]
    fn any_version_1_meta_decodes_to_itself(meta in arb_meta()) {
        let meta = Meta { learner: false, floor_kept: false, ..meta };
        prop_assert_eq!(Meta::decode(&encode_v1(&meta), Path::new("meta")).ok(), Some(meta));
    }

    /// Any metadata that version 2 could hold (no floor) reads back the same from its
    /// version 2 encoding, as keeping no floor.
    #[test]
    fn any_version_2_meta_decodes_to_itself(meta in arb_meta()) {
        let meta = Meta { floor_kept: false, ..meta };
        prop_assert_eq!(Meta::decode(&encode_v2(&meta), Path::new("meta")).ok(), Some(meta));
    }

    /// The decoder is a fuzz target: any bytes give a value or an error, never a panic, and
    /// a value only for bytes that re-encode to themselves (in an older version, to what that
    /// version would have written).
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(meta) = Meta::decode(&bytes, Path::new("meta")) {
            if bytes[8..10] == META_VERSION.to_le_bytes() {
                prop_assert_eq!(&meta.encode()[..], &bytes[..]);
            } else if bytes[8..10] == 2u16.to_le_bytes() {
                prop_assert_eq!(&encode_v2(&meta)[..], &bytes[..]);
            } else {
                prop_assert_eq!(&encode_v1(&meta)[..], &bytes[..]);
            }
        }
    }
}

/// A version 1 file (every data dir before the learner flag) loads, as not a learner, and
/// the next store writes it in the current version.
#[test]
fn version_1_file_loads_as_not_a_learner_and_is_stored_in_the_current_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    std::fs::write(&path, encode_v1(&sample())).expect("write");
    let loaded = Meta::load(&path).expect("load").expect("a meta");
    assert_eq!(loaded, sample());
    assert!(!loaded.learner);

    let voted = Meta {
        epoch: Epoch(10),
        ..loaded
    };
    voted.store(&path).expect("store");
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes[8..10], META_VERSION.to_le_bytes());
    assert_eq!(Meta::load(&path).expect("load"), Some(voted));
}

/// A version 2 file (every data dir before the floor flag) loads as keeping no floor, with
/// its learner flag, and a store with the flag set writes it in the current version.
#[test]
fn version_2_file_loads_as_keeping_no_floor_and_stores_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    let learner = Meta {
        learner: true,
        ..sample()
    };
    std::fs::write(&path, encode_v2(&learner)).expect("write");
    let loaded = Meta::load(&path).expect("load").expect("a meta");
    assert_eq!(loaded, learner);
    assert!(!loaded.floor_kept);
    let kept = Meta {
        floor_kept: true,
        ..loaded
    };
    kept.store(&path).expect("store");
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(
        (bytes[8..10].to_vec(), bytes[35]),
        (3u16.to_le_bytes().to_vec(), 1)
    );
    assert_eq!(Meta::load(&path).expect("load"), Some(kept));
}

/// The learner flag is stored and loaded both ways: set (a wiped data dir, a suspect tail)
/// and cleared again (the primary has confirmed the log), each a whole-file replace.
#[test]
fn learner_flag_round_trips_set_and_cleared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    let learner = Meta {
        learner: true,
        ..sample()
    };
    learner.store(&path).expect("store");
    assert_eq!(Meta::load(&path).expect("load"), Some(learner));
    assert_eq!(std::fs::read(&path).expect("read")[34], 1);

    let voter = Meta {
        learner: false,
        ..learner
    };
    voter.store(&path).expect("store");
    assert_eq!(Meta::load(&path).expect("load"), Some(voter));
    assert_eq!(std::fs::read(&path).expect("read")[34], 0);
    assert!(!tmp_path(&dir).exists());
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

/// A version this build does not read (a later one, or 0) is reported as such, naming the
/// file, even with a CRC that matches.
#[test]
fn unknown_version_is_unsupported_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = meta_path(&dir);
    for version in [4u16, 0, u16::MAX] {
        let mut bytes = sample().encode();
        bytes[8..10].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..36]);
        bytes[36..40].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, bytes).expect("write");
        match Meta::load(&path) {
            Err(
                err @ Error::UnsupportedVersion {
                    found,
                    supported: 3,
                    ..
                },
            ) => {
                assert_eq!(found, version);
                let message = err.to_string();
                assert!(message.contains(&path.display().to_string()), "{message}");
            }
            other => panic!("version {version}: expected UnsupportedVersion, got {other:?}"),
        }
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
