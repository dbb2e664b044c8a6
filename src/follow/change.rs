//! One change to the followed directory, as the payload of one record of understudy's own
//! log, and its codec.
//!
//! ```text
//! +-----------+--------+-----------------+---------------------+-----------------------+
//! | version u8| op u8  | name_len u16    | name (name_len)     | the op's fields       |
//! +-----------+--------+-----------------+---------------------+-----------------------+
//! ```
//!
//! All integers are little-endian. `version` is [`CHANGE_VERSION`]. `name` is a file name
//! in the directory: 1 to [`NAME_LEN_MAX`] bytes, no `/`, no NUL, not `.` or `..`, and not
//! starting with [`TEMP_PREFIX`] (the materializer's own temporary files).
//!
//! | op | change | fields |
//! |---|---|---|
//! | 1 | `Append` | offset u64, then the bytes (the rest): written at `offset`, which is the file's length before (a new file starts at 0) |
//! | 2 | `Install` | the whole content (the rest): the file now holds exactly this (created, or replaced atomically) |
//! | 3 | `Delete` | (none) |
//! | 4 | `Rename` | to_len u16, to (a name, as above): the file is renamed, replacing `to` |
//! | 5 | `SetLen` | len u64: the file is cut back to `len` bytes |
//! | 6 | `Swap` | no name after the op; renames u32, then each rename as name and to (names, as above); deletes u32, then each deleted name: the renames, then the deletions, as one change |
//!
//! `Swap` exists for what must reach the log as one record: after lost inotify events the
//! capture rescans the directory and stages every file it must ship whole under a name of
//! its own ([`STAGE_PREFIX`]), then puts all of them in place and removes every vanished
//! file in one `Swap` (`capture.rs`, "rescan"). A committed prefix of the log then holds
//! the directory as it was before the lost events or as it is after them, never a mix.
//!
//! The record around it carries the CRC, the LSN and the epoch; this layer adds no checksum
//! of its own. A payload that does not decode exactly is refused with a [`ChangeError`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The format version this build writes and reads.
pub const CHANGE_VERSION: u8 = 1;
/// The longest file name (Linux's `NAME_MAX`).
pub const NAME_LEN_MAX: usize = 255;
/// Names the materializer uses for its own temporary files; never a followed file.
pub const TEMP_PREFIX: &str = ".understudy-tmp-";

/// The most data one change carries in a snapshot's frame, and in the log's records of
/// earlier builds, which cut long changes at this length: a record's payload has a limit
/// (`wal::format::RECORD_PAYLOAD_LEN_MAX`).
pub const PIECE_LEN_MAX: usize = 16 << 20;
/// The most data one change carries once cut into pieces for the log
/// ([`Change::into_pieces`]). A record is never split across two appends, and a heartbeat
/// on a peer link waits behind the append before it: with 16 MiB records, a bulk load on a
/// busy 2-core machine held heartbeats up for 150-220 ms, close to a failover timeout (and
/// over the 100 ms one `benches/README.md` recommends). At 1 MiB the wait is a few
/// milliseconds. A KiB short of it, so that the record (the piece, its change's header and
/// name, the record's header) stays within an append of `Config::append_bytes_max` (1 MiB)
/// and two within the default window (2 MiB), not one alone.
pub const LOG_PIECE_LEN: usize = (1 << 20) - 1024;
const _: () = assert!(LOG_PIECE_LEN <= PIECE_LEN_MAX);
/// The name a large installed file is built under, in pieces, before it is renamed into
/// place. A committed prefix of the log that ends halfway through leaves such a file behind
/// (the application never sees it: it names its own files).
pub const PART_NAME: &str = ".understudy-part";

/// Names under which a rescan stages files before its `Swap` puts them in place. A committed
/// prefix of the log that ends before the `Swap` leaves them behind, as one that ends inside
/// a long install leaves [`PART_NAME`]; the follow node deletes both (as shipped changes)
/// when it is promoted, before the application starts ([`is_staged`]).
pub const STAGE_PREFIX: &str = ".understudy-part-";

/// Whether `name` is one understudy builds a file under ([`PART_NAME`], [`STAGE_PREFIX`]).
pub fn is_staged(name: &[u8]) -> bool {
    name.starts_with(PART_NAME.as_bytes())
}

const _: () = assert!(STAGE_PREFIX.len() > PART_NAME.len());

const _: () = assert!(PIECE_LEN_MAX < wal::format::RECORD_PAYLOAD_LEN_MAX - 1024);
/// The longest encoded `Swap`: it is one record and is never cut into pieces.
pub const SWAP_LEN_MAX: usize = PIECE_LEN_MAX;

/// One change to the followed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Append {
        name: Bytes,
        offset: u64,
        data: Bytes,
    },
    Install {
        name: Bytes,
        data: Bytes,
    },
    Delete {
        name: Bytes,
    },
    Rename {
        name: Bytes,
        to: Bytes,
    },
    SetLen {
        name: Bytes,
        len: u64,
    },
    /// Each `(name, to)` renamed (replacing `to`), in order, then each of `deletes`
    /// deleted: one record, so that a committed prefix holds all of it or none.
    Swap {
        renames: Vec<(Bytes, Bytes)>,
        deletes: Vec<Bytes>,
    },
}

/// Why a payload is not a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("change of version {0}, this build reads version {CHANGE_VERSION}")]
    Version(u8),
    #[error("unknown change op {0}")]
    UnknownOp(u8),
    #[error("change payload ends early (at {field})")]
    Short { field: &'static str },
    #[error("change payload has {extra} bytes after its last field")]
    Trailing { extra: usize },
    #[error("bad file name in a change: {why}")]
    BadName { why: &'static str },
}

impl Change {
    /// The file data it carries: an append's or an install's bytes, 0 for the others.
    pub fn data_len(&self) -> usize {
        match self {
            Change::Append { data, .. } | Change::Install { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// The file the change is about (for a rename, its old name); `None` for a `Swap`,
    /// which is about several.
    pub fn name(&self) -> Option<&Bytes> {
        match self {
            Change::Append { name, .. }
            | Change::Install { name, .. }
            | Change::Delete { name }
            | Change::Rename { name, .. }
            | Change::SetLen { name, .. } => Some(name),
            Change::Swap { .. } => None,
        }
    }

    /// The encoded payload.
    pub fn encode(&self) -> Bytes {
        let data_len = match self {
            Change::Append { data, .. } | Change::Install { data, .. } => data.len(),
            Change::Swap { renames, deletes } => {
                8 + renames
                    .iter()
                    .map(|(name, to)| 4 + name.len() + to.len())
                    .chain(deletes.iter().map(|name| 2 + name.len()))
                    .sum::<usize>()
            }
            _ => 0,
        };
        let name_len = self.name().map_or(0, Bytes::len);
        let mut out = BytesMut::with_capacity(2 + 2 + name_len + 2 + 255 + 8 + data_len);
        out.put_u8(CHANGE_VERSION);
        let op = match self {
            Change::Append { .. } => 1,
            Change::Install { .. } => 2,
            Change::Delete { .. } => 3,
            Change::Rename { .. } => 4,
            Change::SetLen { .. } => 5,
            Change::Swap { .. } => 6,
        };
        out.put_u8(op);
        if let Some(name) = self.name() {
            put_name(&mut out, name);
        }
        match self {
            Change::Append { offset, data, .. } => {
                out.put_u64_le(*offset);
                out.put_slice(data);
            }
            Change::Install { data, .. } => out.put_slice(data),
            Change::Delete { .. } => {}
            Change::Rename { to, .. } => put_name(&mut out, to),
            Change::SetLen { len, .. } => out.put_u64_le(*len),
            Change::Swap { renames, deletes } => {
                out.put_u32_le(u32::try_from(renames.len()).expect("a swap's renames fit a u32"));
                for (name, to) in renames {
                    put_name(&mut out, name);
                    put_name(&mut out, to);
                }
                out.put_u32_le(u32::try_from(deletes.len()).expect("a swap's deletions fit a u32"));
                for name in deletes {
                    put_name(&mut out, name);
                }
            }
        }
        out.freeze()
    }

    /// Decodes a payload; data is split from `payload` without a copy.
    pub fn decode(mut payload: Bytes) -> Result<Change, ChangeError> {
        let version = take_u8(&mut payload, "version")?;
        if version != CHANGE_VERSION {
            return Err(ChangeError::Version(version));
        }
        let op = take_u8(&mut payload, "op")?;
        if !(1..=6).contains(&op) {
            return Err(ChangeError::UnknownOp(op));
        }
        if op == 6 {
            // Counts come from the payload: entries are pushed as they decode, never
            // reserved up front.
            let mut renames = Vec::new();
            for _ in 0..take_u32(&mut payload, "renames")? {
                let name = take_name(&mut payload, "renamed name")?;
                let to = take_name(&mut payload, "to")?;
                renames.push((name, to));
            }
            let mut deletes = Vec::new();
            for _ in 0..take_u32(&mut payload, "deletes")? {
                deletes.push(take_name(&mut payload, "deleted name")?);
            }
            if !payload.is_empty() {
                return Err(ChangeError::Trailing {
                    extra: payload.len(),
                });
            }
            return Ok(Change::Swap { renames, deletes });
        }
        let name = take_name(&mut payload, "name")?;
        let change = match op {
            1 => {
                let offset = take_u64(&mut payload, "offset")?;
                let data = std::mem::take(&mut payload);
                Change::Append { name, offset, data }
            }
            2 => {
                let data = std::mem::take(&mut payload);
                Change::Install { name, data }
            }
            3 => Change::Delete { name },
            4 => {
                let to = take_name(&mut payload, "to")?;
                Change::Rename { name, to }
            }
            5 => {
                let len = take_u64(&mut payload, "len")?;
                Change::SetLen { name, len }
            }
            other => return Err(ChangeError::UnknownOp(other)),
        };
        if !payload.is_empty() {
            return Err(ChangeError::Trailing {
                extra: payload.len(),
            });
        }
        Ok(change)
    }
}

impl Change {
    /// This change as changes of at most [`LOG_PIECE_LEN`] bytes of data each, that
    /// applied in order have the same effect: a long append as appends at increasing
    /// offsets; a long install as an install of its first piece under [`PART_NAME`],
    /// appends to it, and a rename over the name. Anything shorter is returned as it is.
    pub fn into_pieces(self) -> Vec<Change> {
        match self {
            Change::Append { name, offset, data } if data.len() > LOG_PIECE_LEN => {
                let mut pieces = Vec::with_capacity(data.len().div_ceil(LOG_PIECE_LEN));
                let mut at = 0;
                while at < data.len() {
                    let end = (at + LOG_PIECE_LEN).min(data.len());
                    pieces.push(Change::Append {
                        name: name.clone(),
                        offset: offset + at as u64,
                        data: data.slice(at..end),
                    });
                    at = end;
                }
                pieces
            }
            Change::Install { name, data } if data.len() > LOG_PIECE_LEN => {
                let part = Bytes::from_static(PART_NAME.as_bytes());
                let mut pieces = vec![Change::Install {
                    name: part.clone(),
                    data: data.slice(..LOG_PIECE_LEN),
                }];
                pieces.extend(
                    Change::Append {
                        name: part.clone(),
                        offset: LOG_PIECE_LEN as u64,
                        data: data.slice(LOG_PIECE_LEN..),
                    }
                    .into_pieces(),
                );
                pieces.push(Change::Rename {
                    name: part,
                    to: name,
                });
                pieces
            }
            change => vec![change],
        }
    }
}

/// Whether `name` may be followed: see the module docs.
pub fn check_name(name: &[u8]) -> Result<(), ChangeError> {
    let bad = |why| Err(ChangeError::BadName { why });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > NAME_LEN_MAX {
        return bad("longer than 255 bytes");
    }
    if name.contains(&b'/') || name.contains(&0) {
        return bad("contains '/' or NUL");
    }
    if name == b"." || name == b".." {
        return bad("is . or ..");
    }
    if name.starts_with(TEMP_PREFIX.as_bytes()) {
        return bad("is a temporary file of the materializer");
    }
    Ok(())
}

fn put_name(out: &mut BytesMut, name: &[u8]) {
    assert!(
        check_name(name).is_ok(),
        "encoding a change with a bad file name {name:?}"
    );
    out.put_u16_le(name.len() as u16);
    out.put_slice(name);
}

fn take_u8(payload: &mut Bytes, field: &'static str) -> Result<u8, ChangeError> {
    if payload.remaining() < 1 {
        return Err(ChangeError::Short { field });
    }
    Ok(payload.get_u8())
}

fn take_u32(payload: &mut Bytes, field: &'static str) -> Result<u32, ChangeError> {
    if payload.remaining() < 4 {
        return Err(ChangeError::Short { field });
    }
    Ok(payload.get_u32_le())
}

fn take_u64(payload: &mut Bytes, field: &'static str) -> Result<u64, ChangeError> {
    if payload.remaining() < 8 {
        return Err(ChangeError::Short { field });
    }
    Ok(payload.get_u64_le())
}

fn take_name(payload: &mut Bytes, field: &'static str) -> Result<Bytes, ChangeError> {
    if payload.remaining() < 2 {
        return Err(ChangeError::Short { field });
    }
    let len = payload.get_u16_le() as usize;
    if payload.remaining() < len {
        return Err(ChangeError::Short { field });
    }
    let name = payload.split_to(len);
    check_name(&name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = Bytes> {
        "[a-zA-Z0-9_.-]{1,20}"
            .prop_filter("not . or ..", |s| s != "." && s != "..")
            .prop_map(Bytes::from)
    }

    fn change() -> impl Strategy<Value = Change> {
        let data = proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        prop_oneof![
            (name(), any::<u64>(), data.clone()).prop_map(|(name, offset, data)| Change::Append {
                name,
                offset,
                data
            }),
            (name(), data).prop_map(|(name, data)| Change::Install { name, data }),
            name().prop_map(|name| Change::Delete { name }),
            (name(), name()).prop_map(|(name, to)| Change::Rename { name, to }),
            (name(), any::<u64>()).prop_map(|(name, len)| Change::SetLen { name, len }),
            (
                proptest::collection::vec((name(), name()), 0..4),
                proptest::collection::vec(name(), 0..4)
            )
                .prop_map(|(renames, deletes)| Change::Swap { renames, deletes }),
        ]
    }

    proptest! {
        #[test]
        fn every_change_round_trips(change in change()) {
            prop_assert_eq!(Change::decode(change.encode()), Ok(change));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Change::decode(Bytes::from(bytes));
        }

        #[test]
        fn a_cut_payload_is_refused(change in change(), cut in 1usize..8) {
            let encoded = change.encode();
            let fixed_len = match change {
                Change::Append { ref data, .. } | Change::Install { ref data, .. } => encoded.len() - data.len(),
                _ => encoded.len(),
            };
            let cut = cut.min(fixed_len);
            // Cutting into the fixed fields is an error; cutting data is another change.
            if cut > 0 && matches!(change, Change::Delete { .. } | Change::Rename { .. } | Change::SetLen { .. } | Change::Swap { .. }) {
                prop_assert!(Change::decode(encoded.slice(..encoded.len() - cut)).is_err());
            }
        }
    }

    /// A long append and a long install, cut into pieces, leave the directory as the whole
    /// change does; every piece is within the limit and a valid change.
    #[test]
    fn long_changes_are_cut_into_pieces_with_the_same_effect() {
        use crate::follow::materialize::{read_dir_contents, Materializer};
        let data: Bytes = (0..LOG_PIECE_LEN * 2 + 12345)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let changes = [
            Change::Install {
                name: Bytes::from_static(b"base"),
                data: data.slice(..10),
            },
            Change::Append {
                name: Bytes::from_static(b"base"),
                offset: 10,
                data: data.clone(),
            },
            Change::Install {
                name: Bytes::from_static(b"big"),
                data: data.clone(),
            },
            Change::Install {
                name: Bytes::from_static(b"big"),
                data: data.slice(5..LOG_PIECE_LEN + 7),
            },
        ];
        let whole = tempfile::tempdir().unwrap();
        let cut = tempfile::tempdir().unwrap();
        let mut whole_m = Materializer::open(whole.path()).unwrap();
        let mut cut_m = Materializer::open(cut.path()).unwrap();
        let mut count = 0;
        for change in changes {
            whole_m.apply(&change).unwrap();
            for piece in change.into_pieces() {
                let encoded = piece.encode();
                assert!(encoded.len() <= LOG_PIECE_LEN + 1024);
                assert_eq!(Change::decode(encoded), Ok(piece.clone()));
                cut_m.apply(&piece).unwrap();
                count += 1;
            }
        }
        assert_eq!(count, 1 + 3 + 4 + 3);
        assert_eq!(
            read_dir_contents(whole.path()).unwrap(),
            read_dir_contents(cut.path()).unwrap()
        );
    }

    #[test]
    fn bad_names_and_versions_are_refused() {
        let mut payload = Change::Delete {
            name: Bytes::from_static(b"a"),
        }
        .encode()
        .to_vec();
        payload[0] = 9;
        assert_eq!(
            Change::decode(Bytes::from(payload)),
            Err(ChangeError::Version(9))
        );
        for name in [&b""[..], b".", b"..", b"a/b", b"a\0", b".understudy-tmp-x"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
        let mut payload = vec![CHANGE_VERSION, 3, 2, 0];
        payload.extend_from_slice(b"..");
        assert!(matches!(
            Change::decode(Bytes::from(payload)),
            Err(ChangeError::BadName { .. })
        ));
        assert_eq!(
            Change::decode(Bytes::from_static(&[CHANGE_VERSION, 7, 1, 0, b'a'])),
            Err(ChangeError::UnknownOp(7))
        );
    }
}
