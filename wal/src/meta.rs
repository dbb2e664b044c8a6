//! The node metadata file (`<data-dir>/meta`, FORMAT.md "Node metadata"): the node's id, the
//! cluster it belongs to, the highest epoch it has seen, its vote in that epoch, whether
//! it is a learner and whether it keeps a log floor, encoded in 40 bytes and replaced as a
//! whole.
//!
//! This module encodes, decodes, loads and atomically stores that file, and reads the files
//! of every earlier version (version 1 had no learner flag: such a node is not a learner;
//! versions 1 and 2 had no floor flag: such a node keeps no floor yet).
//! It does not decide anything: that the epoch never goes down, that a node votes once per
//! epoch and when a node is or stops being a learner are the caller's rules (the core), which
//! must store the new value *before* acting on it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Corruption, Error, IoOp, Result};
use crate::fs;
use crate::types::{Epoch, Lsn, NodeId};

/// The file name of the metadata file inside the data directory.
pub const META_FILE_NAME: &str = "meta";
/// `USTDYMTA`: the first 8 bytes of a metadata file.
pub const META_MAGIC: [u8; 8] = *b"USTDYMTA";
/// The metadata format version this build writes (and reads).
pub const META_VERSION: u16 = 3;
/// The oldest metadata format version this build still reads: every version from this one
/// to [`META_VERSION`] is read; files are always written in [`META_VERSION`].
pub const META_VERSION_MIN: u16 = 1;
/// A metadata file is exactly this long; any other length is corruption.
pub const META_LEN: usize = 40;

// Field offsets, as in FORMAT.md's table.
const META_VERSION_OFFSET: usize = 8;
const META_NODE_ID_OFFSET: usize = 10;
const META_RESERVED_A_OFFSET: usize = 12;
const META_CLUSTER_ID_OFFSET: usize = 16;
const META_EPOCH_OFFSET: usize = 24;
const META_VOTED_FOR_OFFSET: usize = 32;
/// Version 2 on; reserved (zero) in version 1.
const META_LEARNER_OFFSET: usize = 34;
/// Version 3 on; reserved (zero) in versions 1 and 2.
const META_FLOOR_OFFSET: usize = 35;
const META_CRC_OFFSET: usize = 36;

const _: () = assert!(META_CRC_OFFSET + 4 == META_LEN);
const _: () = assert!(META_MAGIC.len() == META_VERSION_OFFSET);
const _: () = assert!(META_VERSION_MIN <= META_VERSION);

/// The node's identity and vote. `voted_for` is the node voted for in `epoch`, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub node_id: NodeId,
    pub cluster_id: u64,
    pub epoch: Epoch,
    pub voted_for: Option<NodeId>,
    /// This node cannot vouch for its earlier votes and log (a new or wiped data dir joining
    /// an existing cluster, a recovery that cut a suspect tail, a restart after an fsync
    /// failure): it replicates and applies but neither votes, stands for election nor counts
    /// towards commit or the lease until the primary of its epoch tells it that it durably
    /// holds every record through that primary's commit LSN. Cleared, like every change
    /// here, by a [`Meta::store`] of the whole file (FORMAT.md, "Node metadata").
    pub learner: bool,
    /// This data dir keeps a log floor beside its log (the node's `log-floor`, durable
    /// before this is stored): a start that finds none lost it, with whatever of the log it
    /// guarded, and must not vouch for its log.
    pub floor_kept: bool,
}

impl Meta {
    /// Encodes the 40-byte file, in version [`META_VERSION`].
    ///
    /// Panics if `node_id` is 0, if `voted_for` is `Some(NodeId(0))` (0 on disk means "no
    /// vote", so that value could not be read back), or if there is a vote in epoch 0 (no
    /// election happens in epoch 0): all three only a bug can produce.
    pub fn encode(&self) -> [u8; META_LEN] {
        assert!(self.node_id.get() != 0, "meta: node_id 0 is not a valid id");
        if let Some(voted_for) = self.voted_for {
            assert!(
                voted_for.get() != 0,
                "meta: voted_for Some(NodeId(0)) cannot be stored (0 means no vote)"
            );
            assert!(
                self.epoch.get() != 0,
                "meta: a vote for {voted_for} in epoch 0, where no election happens"
            );
        }

        // Format (FORMAT.md, "Node metadata"): { magic: [u8; 8], version: u16 = 3,
        // node_id: u16, reserved: u32, cluster_id: u64, epoch: u64, voted_for: u16,
        // learner: u8 (0 or 1), floor_kept: u8 (0 or 1), crc: u32 = crc32(bytes 0..36) }
        let mut bytes = [0u8; META_LEN];
        bytes[..META_VERSION_OFFSET].copy_from_slice(&META_MAGIC);
        put(&mut bytes, META_VERSION_OFFSET, &META_VERSION.to_le_bytes());
        put(
            &mut bytes,
            META_NODE_ID_OFFSET,
            &self.node_id.get().to_le_bytes(),
        );
        put(
            &mut bytes,
            META_CLUSTER_ID_OFFSET,
            &self.cluster_id.to_le_bytes(),
        );
        put(
            &mut bytes,
            META_EPOCH_OFFSET,
            &self.epoch.get().to_le_bytes(),
        );
        let voted_for = self.voted_for.map_or(0, NodeId::get);
        put(&mut bytes, META_VOTED_FOR_OFFSET, &voted_for.to_le_bytes());
        put(&mut bytes, META_LEARNER_OFFSET, &[u8::from(self.learner)]);
        put(&mut bytes, META_FLOOR_OFFSET, &[u8::from(self.floor_kept)]);
        let crc = crc32fast::hash(&bytes[..META_CRC_OFFSET]);
        put(&mut bytes, META_CRC_OFFSET, &crc.to_le_bytes());
        bytes
    }

    /// Decodes a whole metadata file of any version from [`META_VERSION_MIN`] to
    /// [`META_VERSION`]; a version 1 file is not a learner, and a version 1 or 2 file keeps
    /// no floor. `path` only names the file in errors.
    ///
    /// Checks, in order: magic (`Error::BadMagic`), version (`Error::UnsupportedVersion`),
    /// length, CRC, reserved bytes (in version 1, the learner and floor bytes are; in
    /// version 2, the floor byte), `node_id ≥ 1`, learner and floor bytes of 0 or 1, no vote
    /// in epoch 0 (all `Error::Corrupt`). The magic and
    /// version come first so that a foreign file or a newer format is reported as such rather
    /// than as a bad length. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Meta> {
        let corrupt = |offset: usize, reason: Corruption| Error::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            lsn: Lsn::ZERO,
            reason,
        };

        if let Some(magic) = bytes.first_chunk::<8>() {
            if *magic != META_MAGIC {
                return Err(Error::BadMagic {
                    path: path.to_path_buf(),
                    expected: "metadata",
                    found: *magic,
                });
            }
        }
        if bytes.len() >= META_NODE_ID_OFFSET {
            let version = u16::from_le_bytes(get(bytes, META_VERSION_OFFSET));
            if !(META_VERSION_MIN..=META_VERSION).contains(&version) {
                return Err(Error::UnsupportedVersion {
                    path: path.to_path_buf(),
                    found: version,
                    supported: META_VERSION,
                });
            }
        }
        if bytes.len() < META_LEN {
            return Err(corrupt(bytes.len(), Corruption::Truncated));
        }
        if bytes.len() > META_LEN {
            return Err(corrupt(
                META_LEN,
                Corruption::LenTooLarge {
                    len: bytes.len() as u64,
                    max: META_LEN as u64,
                },
            ));
        }

        let stored = u32::from_le_bytes(get(bytes, META_CRC_OFFSET));
        let computed = crc32fast::hash(&bytes[..META_CRC_OFFSET]);
        if stored != computed {
            return Err(corrupt(
                META_CRC_OFFSET,
                Corruption::Crc { stored, computed },
            ));
        }
        if get::<4>(bytes, META_RESERVED_A_OFFSET) != [0; 4] {
            return Err(corrupt(
                META_RESERVED_A_OFFSET,
                Corruption::BadField("reserved bytes 12..16"),
            ));
        }
        // The version was checked above, on the same bytes.
        let version = u16::from_le_bytes(get(bytes, META_VERSION_OFFSET));
        if version == 1 && get::<2>(bytes, META_LEARNER_OFFSET) != [0; 2] {
            return Err(corrupt(
                META_LEARNER_OFFSET,
                Corruption::BadField("reserved bytes 34..36 (version 1)"),
            ));
        }
        if version == 2 && get::<1>(bytes, META_FLOOR_OFFSET) != [0] {
            return Err(corrupt(
                META_FLOOR_OFFSET,
                Corruption::BadField("reserved byte 35 (version 2)"),
            ));
        }

        let node_id = u16::from_le_bytes(get(bytes, META_NODE_ID_OFFSET));
        if node_id == 0 {
            return Err(corrupt(
                META_NODE_ID_OFFSET,
                Corruption::BadField("node_id 0"),
            ));
        }
        let flag = |offset: usize, what: &'static str| match get::<1>(bytes, offset) {
            [0] => Ok(false),
            [1] => Ok(true),
            [_] => Err(corrupt(offset, Corruption::BadField(what))),
        };
        let learner = flag(META_LEARNER_OFFSET, "learner flag other than 0 or 1")?;
        let floor_kept = flag(META_FLOOR_OFFSET, "floor flag other than 0 or 1")?;
        let epoch = u64::from_le_bytes(get(bytes, META_EPOCH_OFFSET));
        let voted_for = u16::from_le_bytes(get(bytes, META_VOTED_FOR_OFFSET));
        if epoch == 0 && voted_for != 0 {
            return Err(corrupt(
                META_VOTED_FOR_OFFSET,
                Corruption::BadField("vote in epoch 0"),
            ));
        }
        Ok(Meta {
            node_id: NodeId(node_id),
            cluster_id: u64::from_le_bytes(get(bytes, META_CLUSTER_ID_OFFSET)),
            epoch: Epoch(epoch),
            voted_for: (voted_for != 0).then_some(NodeId(voted_for)),
            learner,
            floor_kept,
        })
    }

    /// Reads the metadata file at `path`.
    ///
    /// Returns `Ok(None)` only when the file does not exist (a new node). A short, long or
    /// damaged file is an error, never read as "no metadata": a node that forgot its vote
    /// could vote twice in an epoch. Also removes a stale `meta.tmp` left by a store that
    /// crashed before its rename (FORMAT.md: such a file is never the current metadata).
    ///
    /// Must not run while a [`Meta::store`] to the same path is in progress (the node has one
    /// owner of its data directory).
    pub fn load(path: &Path) -> Result<Option<Meta>> {
        Meta::load_remove_tmp(path)?;

        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(IoOp::Open, path, e)),
        };
        // Read one byte more than a valid file has, so a long file is seen as too long
        // without reading all of whatever it is into memory.
        let mut bytes = Vec::with_capacity(META_LEN + 1);
        file.take(META_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(IoOp::Read, path, e))?;
        Meta::decode(&bytes, path).map(Some)
    }

    /// Removes `meta.tmp` if it exists. Not followed by a directory fsync: if the removal is
    /// lost in a crash, the next load removes the file again.
    fn load_remove_tmp(path: &Path) -> Result<()> {
        let tmp = fs::tmp_path(path);
        match std::fs::remove_file(&tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(IoOp::Remove, &tmp, e)),
        }
    }

    /// Replaces the metadata file at `path` with `self`, atomically.
    ///
    /// # Durability
    /// Returns only once the new content is durable; only then may the caller act on it
    /// (answer a vote, accept a new epoch, vote or count towards commit as a learner no
    /// more). On error the file holds the old or the new content; the caller must not act on
    /// the new one. A file of an earlier version is replaced by a version 3 one.
    ///
    /// Panics on the values [`Meta::encode`] refuses.
    pub fn store(&self, path: &Path) -> Result<()> {
        let bytes = self.encode();
        // Crash argument (FORMAT.md, "Node metadata"; done by `fs::write_atomic`):
        // 1. write `meta.tmp`;
        // 2. fsync it;
        // 3. rename it over `meta`;
        // 4. fsync the data directory.
        // A crash before 3 leaves the old `meta` intact (and a `meta.tmp` that `load`
        // removes); after 3 `meta` is the complete new file, since its bytes were durable
        // before its name was; 4 makes the rename itself survive a power loss.
        fs::write_atomic(path, &bytes)
    }
}

/// Copies `field` into `bytes` at `offset`.
fn put(bytes: &mut [u8; META_LEN], offset: usize, field: &[u8]) {
    bytes[offset..offset + field.len()].copy_from_slice(field);
}

/// The `N` bytes at `offset`. Callers check the length first; only a bug can make the
/// range fall outside `bytes`.
fn get<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut field = [0u8; N];
    field.copy_from_slice(&bytes[offset..offset + N]);
    field
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sample() -> Meta {
        Meta {
            node_id: NodeId(3),
            cluster_id: 0x0123_4567_89ab_cdef,
            epoch: Epoch(42),
            voted_for: Some(NodeId(2)),
            learner: true,
            floor_kept: true,
        }
    }

    /// The encoding is the byte table of FORMAT.md, field by field.
    #[test]
    fn encoding_follows_the_format_table() {
        let bytes = sample().encode();
        assert_eq!(&bytes[0..8], b"USTDYMTA");
        assert_eq!(bytes[8..10], 3u16.to_le_bytes());
        assert_eq!(bytes[10..12], 3u16.to_le_bytes());
        assert_eq!(bytes[12..16], [0; 4]);
        assert_eq!(bytes[16..24], 0x0123_4567_89ab_cdefu64.to_le_bytes());
        assert_eq!(bytes[24..32], 42u64.to_le_bytes());
        assert_eq!(bytes[32..34], 2u16.to_le_bytes());
        assert_eq!(bytes[34], 1);
        assert_eq!(bytes[35], 1);
        assert_eq!(bytes[36..40], crc32fast::hash(&bytes[..36]).to_le_bytes());
        let voter = Meta {
            learner: false,
            ..sample()
        };
        assert_eq!(voter.encode()[34], 0);
        let no_floor = Meta {
            floor_kept: false,
            ..sample()
        };
        assert_eq!(no_floor.encode()[35], 0);
    }

    /// No vote is stored as voted_for 0 and read back as `None`.
    #[test]
    fn no_vote_is_stored_as_zero() {
        let meta = Meta {
            voted_for: None,
            ..sample()
        };
        let bytes = meta.encode();
        assert_eq!(bytes[32..34], [0, 0]);
        assert_eq!(Meta::decode(&bytes, Path::new("meta")).ok(), Some(meta));
    }

    /// A CRC-valid file with node_id 0 is refused, not taken as a node without an id.
    #[test]
    fn node_id_zero_is_corrupt_even_with_a_good_crc() {
        let mut bytes = sample().encode();
        bytes[10..12].copy_from_slice(&[0, 0]);
        let crc = crc32fast::hash(&bytes[..36]);
        bytes[36..40].copy_from_slice(&crc.to_le_bytes());
        let path = PathBuf::from("/data/meta");
        match Meta::decode(&bytes, &path) {
            Err(Error::Corrupt {
                path: p,
                offset: 10,
                reason: Corruption::BadField(_),
                ..
            }) => assert_eq!(p, path),
            other => panic!("expected a corrupt node_id, got {other:?}"),
        }
    }

    /// A CRC-valid file with non-zero reserved bytes is refused (a later version may use them);
    /// so is a learner or floor byte other than 0 or 1.
    #[test]
    fn non_zero_reserved_bytes_are_corrupt_even_with_a_good_crc() {
        for (offset, value) in [
            (12, 1),
            (13, 1),
            (14, 1),
            (15, 1),
            (34, 2),
            (34, 0xff),
            (35, 2),
            (35, 0xff),
        ] {
            let mut bytes = sample().encode();
            bytes[offset] = value;
            let crc = crc32fast::hash(&bytes[..36]);
            bytes[36..40].copy_from_slice(&crc.to_le_bytes());
            assert!(
                matches!(
                    Meta::decode(&bytes, Path::new("meta")),
                    Err(Error::Corrupt {
                        reason: Corruption::BadField(_),
                        ..
                    })
                ),
                "byte {offset} = {value}"
            );
        }
    }

    /// In a version 1 file bytes 34..36 are reserved: a 1 there is corruption, not a learner.
    #[test]
    fn version_1_reserved_bytes_34_and_35_are_corrupt_even_with_a_good_crc() {
        for offset in [34, 35] {
            let mut bytes = Meta {
                learner: false,
                ..sample()
            }
            .encode();
            bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
            bytes[offset] = 1;
            let crc = crc32fast::hash(&bytes[..36]);
            bytes[36..40].copy_from_slice(&crc.to_le_bytes());
            assert!(
                matches!(
                    Meta::decode(&bytes, Path::new("meta")),
                    Err(Error::Corrupt {
                        reason: Corruption::BadField(_),
                        ..
                    })
                ),
                "reserved byte {offset}"
            );
        }
    }

    /// In a version 2 file byte 35 is reserved: a 1 there is corruption, not a kept floor;
    /// a 0 reads as a data dir that keeps no floor yet.
    #[test]
    fn version_2_reserved_byte_35_is_corrupt_and_a_version_2_file_keeps_no_floor() {
        let as_version_2 = |floor: u8| {
            let mut bytes = sample().encode();
            bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
            bytes[35] = floor;
            let crc = crc32fast::hash(&bytes[..36]);
            bytes[36..40].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        assert!(matches!(
            Meta::decode(&as_version_2(1), Path::new("meta")),
            Err(Error::Corrupt {
                offset: 35,
                reason: Corruption::BadField(_),
                ..
            })
        ));
        assert_eq!(
            Meta::decode(&as_version_2(0), Path::new("meta")).ok(),
            Some(Meta {
                floor_kept: false,
                ..sample()
            })
        );
    }

    /// Storing a vote for node 0 is a bug: 0 on disk means "no vote".
    #[test]
    #[should_panic(expected = "voted_for Some(NodeId(0))")]
    fn encoding_a_vote_for_node_zero_panics() {
        let _ = Meta {
            voted_for: Some(NodeId(0)),
            ..sample()
        }
        .encode();
    }

    /// Storing a vote in epoch 0 is a bug: no election happens in epoch 0.
    #[test]
    #[should_panic(expected = "epoch 0")]
    fn encoding_a_vote_in_epoch_zero_panics() {
        let _ = Meta {
            epoch: Epoch(0),
            ..sample()
        }
        .encode();
    }
}
