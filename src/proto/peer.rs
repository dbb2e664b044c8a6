//! The peer protocol: what sidecars say to each other over TCP.
//!
//! # Connections
//!
//! Every node dials every other node and sends its messages on the connection it dialled;
//! it receives on the connections others dialled to it. A connection starts with a
//! challenge-response handshake that proves both ends hold the cluster secret without
//! sending it:
//!
//! ```text
//! dialler  -> acceptor  Hello     { version, cluster_id, from, to, nonce_d, members, client_addr, admin_addr }
//! acceptor -> dialler   Challenge { nonce_a, tag_a = HMAC(secret, "understudy acceptor" | from | to | nonce_d | nonce_a | members) }
//! dialler  -> acceptor  Proof     { tag_d = HMAC(secret, "understudy dialler"  | from | to | nonce_a | nonce_d | members | app_addr peer_addr), app_addr, peer_addr }
//! ```
//!
//! `members` is the dialler's member list (the ids of its latest configuration, ascending)
//! and the LSN of that configuration's record (0 for the seed of `--peers`). Two nodes that
//! both still run on their seeds must have the same list, or the acceptor refuses: they
//! disagree about what a majority is, and votes or acknowledgements exchanged between them
//! could elect two primaries. Once a configuration is in the log, nodes may differ for a
//! while (one has a record the other has not received yet), which `core::members` makes
//! safe; the acceptor logs the difference once and goes on. The tags cover the list and the
//! LSN, so neither can be altered on the way.
//!
//! Each side checks the other's tag (in constant time) over both nonces, so a recorded
//! handshake cannot be replayed, and the two tags differ in their label, so one side's tag
//! cannot be reflected back as the other's. A side that finds anything wrong (version,
//! cluster id, node ids, tag) sends `Refuse { reason }` when it can and closes.
//!
//! The dialler's `app_addr` is where its application serves clients (`--app-addr`), which
//! a backup's client port connects to directly while the dialler is primary
//! (`node::proxy`). It travels in the `Proof`, not in the `Hello`, for two reasons: the
//! `Hello` keeps the layout it has had since version 5, so that a node of any version since
//! then reads this one's version field and refuses it by number (`protocol version 7 is not
//! supported (this node speaks 6)`) rather than failing to decode the frame; and the
//! dialler's tag covers it, so that nobody on the way can send a backup's clients elsewhere.
//!
//! The dialler's `peer_addr` is where it accepts peer connections (its own entry in
//! `--peers`). A node sends only on connections it dials, and dials the members of its
//! latest configuration; a node that is behind on the configuration would have no way to
//! answer a member it has not heard of yet (a candidate added while it was down, whose vote
//! requests reach it because the candidate knows it). The acceptor keeps the address, and
//! its transport dials it back to answer (`node::peer`). The tag covers it for the same
//! reason as `app_addr`: nobody on the way can point a node's answers elsewhere.
//!
//! # Frames
//!
//! All integers are little-endian. Every frame is
//!
//! ```text
//! +-----------+---------+------------------------+
//! | len: u32  | type: u8| body (len - 1 bytes)   |
//! +-----------+---------+------------------------+
//! ```
//!
//! where `len` counts the type byte and the body, and is at most [`FRAME_LEN_MAX`]; a larger
//! one is refused before anything is allocated.
//!
//! | type | frame | body |
//! |---|---|---|
//! | 1 | Hello | version u16, cluster_id u64, from u16, to u16, nonce (32 bytes), members: count u8 then that many ids u16 (ascending), config_lsn u64, previous_cluster_id u64, then the rest as UTF-8: the sender's client address, one space, its admin address (each `IP:PORT`, or empty if it has no such port; no space when both are empty) |
//! | 2 | Challenge | which u8 (0: the secret of the Hello's cluster_id, 1: of its previous_cluster_id), nonce (32 bytes), tag (32 bytes) |
//! | 3 | Proof | tag (32 bytes), then the rest as UTF-8: the sender's application address (`IP:PORT`, or empty if it announces none), then, if it announces one, a space and its peer address (`HOST:PORT`) |
//! | 4 | Refuse | reason: UTF-8, the rest of the frame |
//! | 16 | PreVoteRequest | epoch u64, last_lsn u64, last_epoch u64 |
//! | 17 | PreVoteResponse | epoch u64, granted u8, voter_epoch u64, health u8, priority u8 |
//! | 18 | VoteRequest | epoch u64, last_lsn u64, last_epoch u64, transfer u8 |
//! | 19 | VoteResponse | epoch u64, granted u8, vote_wait_ns u64 |
//! | 20 | Append | epoch u64, prev_lsn u64, prev_epoch u64, first_lsn u64, last_lsn u64, records_epoch u64, commit_lsn u64, sent_at_ns u64, promote u64, promote_through u64, paused u8, pause_stamp u64, successor u16 (0: none), then the records |
//! | 21 | AppendResponse | epoch u64, accepted u8, matched_lsn u64, matched_epoch u64, durable_lsn u64, sent_at_ns u64, learner u64, health u8, priority u8, vote_wait_ns u64 |
//! | 22 | TimeoutNow | epoch u64 |
//! | 32 | SnapshotBegin | epoch u64, lsn u64, snapshot_epoch u64, body_len u64, config_lsn u64, then the payload of the config record in effect at `lsn` (`node::members`) |
//! | 33 | SnapshotChunk | offset u64, then one chunk exactly as in the snapshot file: len u32, crc u32, data |
//! | 34 | SnapshotEnd | body_crc u32 |
//! | 35 | SnapshotAck | offset u64 |
//! | 36 | SnapshotDone | installed u8 |
//! | 40 | RepairRequest | first_lsn u64, last_lsn u64 |
//! | 41 | RepairRecords | then the records (none: the sender does not hold them intact) |
//!
//! # Snapshot transfer
//!
//! A primary streams a snapshot to a backup that needs records its log no longer holds on a
//! connection of its own (so that a transfer never holds up heartbeats and appends), dialled
//! and authenticated like any other. This connection carries traffic both ways:
//!
//! ```text
//! sender   -> receiver  SnapshotBegin { epoch, lsn, snapshot_epoch, body_len }
//! receiver -> sender    SnapshotAck { offset }          where to start: 0, or the length of a
//!                                                       partial copy of this same snapshot
//!                                                       from a transfer that broke off
//!                                                       (or SnapshotDone { installed: 0 }
//!                                                       if it does not want it)
//! sender   -> receiver  SnapshotChunk { offset, chunk } ... while fewer than the window's
//!                                                       bytes are unacknowledged
//! receiver -> sender    SnapshotAck { offset }          after writing each chunk
//! sender   -> receiver  SnapshotEnd { body_crc }        the sender's trailer CRC
//! receiver -> sender    SnapshotDone { installed }      once the snapshot is installed and
//!                                                       the log reset after it (or refused)
//! ```
//!
//! Each chunk carries its CRC over its body offset and data (`wal/FORMAT.md`, "Snapshot
//! file"): the receiver verifies it at the offset it expects before writing it, and the
//! whole body against `body_crc` before installing. A chunk that fails, or a gap, ends the
//! connection; the sender dials again and the receiver answers with the offset it has.
//! Memory on both ends is bounded by the window, not by the snapshot's size.
//! # Repair
//!
//! A node that finds a record of its log damaged (a checksum that fails where no crash can
//! explain it) fetches it from a peer on a connection of its own, dialled and authenticated
//! like any other, one request per connection:
//!
//! ```text
//! requester -> holder   RepairRequest { first_lsn, last_lsn }
//! holder -> requester   RepairRecords { records }   the records it holds intact in that
//!                                                   range, from first_lsn on (or none)
//! ```
//!
//! The requester verifies every record's CRC and LSN, and uses one only if its epoch is the
//! one its own log says that LSN has: two logs that hold a record with the same LSN and epoch
//! hold the same record (invariant 3), byte for byte.
//!
//! The records of an `Append` are WAL records exactly as `wal/FORMAT.md` lays them out, back
//! to back: the bytes the primary wrote are the bytes the backup stores. The decoder hands
//! them out as a [`Bytes`] split from the read buffer (no copy); the receiver verifies every
//! CRC and that they are exactly `first_lsn..=last_lsn` before the core sees the message.
//! Booleans are 0 or 1; anything else is a bad frame. `health` is a bit set: 1 = the sender's
//! application is live, 2 = it may stand for election, 4 (in a `PreVoteResponse` only) = its
//! log is exactly as up to date as the asker's; other bits set make a bad frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::config::PeerAddr;
use crate::core::{Append, AppendResponse, Health, Message};
use crate::{Epoch, Lsn, NodeId};

/// The protocol version this build speaks.
///
/// Version 2 added `Append::promote`, `Append::promote_through` and `AppendResponse::learner`
/// (learners), and the repair frames. Version 3 added the health of pre-vote and append
/// responses, `Append::paused`, and the admin address in `Hello`. Version 4 added the
/// member list to `Hello`. Version 5 added its configuration's LSN (`Hello::config_lsn`), the
/// config record kind, the `can_vote` health bit, and the previous secret of a rotation
/// (`Hello::previous_cluster_id`, `Frame::Challenge::which`). Version 6 added
/// `Append::successor`. Version 7 added the application's address to `Proof` (and to the
/// dialler's tag). Version 8 added `vote_wait` to `VoteResponse` and `AppendResponse` (how
/// long the sender refuses votes: nodes may run with different failover timeouts). Version 9
/// added the dialler's peer address to `Proof` (and to the dialler's tag).
pub const PROTOCOL_VERSION: u16 = 9;

/// The largest frame: one WAL record of the largest payload, plus headers.
pub const FRAME_LEN_MAX: usize = wal::format::RECORD_PAYLOAD_LEN_MAX + 64 * 1024;

/// Bytes in a random nonce and in a MAC tag.
pub const NONCE_LEN: usize = 32;
pub const TAG_LEN: usize = 32;

/// Labels that keep the two sides' tags apart.
pub const ACCEPTOR_LABEL: &[u8] = b"understudy acceptor";
pub const DIALLER_LABEL: &[u8] = b"understudy dialler";

const APPEND_FIXED_LEN: usize = 10 * 8 + 1 + 8 + 2;

const _: () = assert!(FRAME_LEN_MAX <= u32::MAX as usize);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub cluster_id: u64,
    pub from: NodeId,
    pub to: NodeId,
    pub nonce: [u8; NONCE_LEN],
    /// The sender's member list, ascending: the ids of its latest configuration.
    pub members: Vec<NodeId>,
    /// The LSN of that configuration's config record; 0 while it is the seed of `--peers`.
    pub config_lsn: u64,
    /// The cluster id of the sender's previous secret (`--previous-cluster-secret-file`,
    /// during a rotation), or 0.
    pub previous_cluster_id: u64,
    /// Where the sender serves clients, so that a node can redirect clients to the primary.
    pub client_addr: Option<std::net::SocketAddr>,
    /// Where the sender serves its admin HTTP, so that operator commands pointed at any node
    /// find the others (`/status` lists them).
    pub admin_addr: Option<std::net::SocketAddr>,
}

/// A peer frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Challenge {
        /// Which of the dialler's secrets the acceptor holds and the tags use: 0 for the one
        /// of `Hello::cluster_id`, 1 for the one of `Hello::previous_cluster_id`.
        which: u8,
        nonce: [u8; NONCE_LEN],
        tag: [u8; TAG_LEN],
    },
    Proof {
        tag: [u8; TAG_LEN],
        /// Where the dialler's application serves clients, if it announces it (module docs).
        app_addr: Option<std::net::SocketAddr>,
        /// Where the dialler accepts peer connections, if it announces it (module docs).
        peer_addr: Option<PeerAddr>,
    },
    Refuse {
        reason: String,
    },
    /// A core message; `records` is empty unless it is an `Append` that carries records.
    Message {
        message: Message,
        records: Bytes,
    },
    /// The first frame of a snapshot connection (module docs, "Snapshot transfer").
    SnapshotBegin {
        /// The sender's epoch.
        epoch: Epoch,
        lsn: Lsn,
        snapshot_epoch: Epoch,
        body_len: u64,
        /// The configuration in effect at `lsn`: the LSN of its record and the record's
        /// payload (`node::members`).
        config_lsn: Lsn,
        config: Bytes,
    },
    /// One chunk as the snapshot file holds it (header included); not yet verified.
    SnapshotChunk {
        offset: u64,
        raw: Bytes,
    },
    SnapshotEnd {
        body_crc: u32,
    },
    SnapshotAck {
        offset: u64,
    },
    SnapshotDone {
        installed: bool,
    },
    /// The first and only request of a repair connection (module docs, "Repair").
    RepairRequest {
        first_lsn: Lsn,
        last_lsn: Lsn,
    },
    /// The answer: records back to back as in the log, not yet verified.
    RepairRecords {
        records: Bytes,
    },
}

/// Why bytes from a peer are not a frame. The connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("frame type {kind} has a body of {len} bytes, expected {expected}")]
    BadLength {
        kind: u8,
        len: usize,
        expected: usize,
    },
    #[error("bad boolean {0}")]
    BadBool(u8),
    #[error("health bits {0:#04x} name no known state")]
    BadHealth(u8),
    #[error("text field is not valid UTF-8 or not an address")]
    BadText,
    #[error("append claims lsns {first}..={last} after {prev}")]
    BadRange { prev: u64, first: u64, last: u64 },
    #[error("node id 0")]
    NodeIdZero,
    #[error("{what} {value} is beyond any real log or cluster")]
    TooLarge { what: &'static str, value: u64 },
    #[error("reading the peer connection: {0}")]
    Io(String),
}

impl From<std::io::Error> for DecodeError {
    fn from(e: std::io::Error) -> DecodeError {
        DecodeError::Io(crate::tls::tls_words(&e).unwrap_or_else(|| e.to_string()))
    }
}

/// An epoch off the wire, refused above [`Epoch::LIMIT`]: a peer's epoch is adopted and
/// stored, and one at `u64::MAX` would make the next election's `next()` overflow on every
/// node that heard it, at every start.
fn get_epoch(body: &mut Bytes) -> Result<Epoch, DecodeError> {
    let value = body.get_u64_le();
    if value > Epoch::LIMIT.get() {
        return Err(DecodeError::TooLarge {
            what: "epoch",
            value,
        });
    }
    Ok(Epoch(value))
}

/// An LSN off the wire, refused above [`Lsn::LIMIT`] (the core takes `next()` of the LSNs
/// it is sent).
fn get_lsn(body: &mut Bytes) -> Result<Lsn, DecodeError> {
    let value = body.get_u64_le();
    if value > Lsn::LIMIT.get() {
        return Err(DecodeError::TooLarge { what: "lsn", value });
    }
    Ok(Lsn(value))
}

fn get_bool(body: &mut Bytes) -> Result<bool, DecodeError> {
    match body.get_u8() {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(DecodeError::BadBool(other)),
    }
}

const HEALTH_APP_LIVE: u8 = 1;
const HEALTH_CAN_STAND: u8 = 2;
const HEALTH_SAME_LOG: u8 = 4;
const HEALTH_CAN_VOTE: u8 = 8;

/// `health u8, priority u8` (module docs); the same-log bit only where `same_log_allowed`.
fn get_health(body: &mut Bytes, same_log_allowed: bool) -> Result<(Health, bool), DecodeError> {
    let bits = body.get_u8();
    let priority = body.get_u8();
    let known = HEALTH_APP_LIVE
        | HEALTH_CAN_STAND
        | HEALTH_CAN_VOTE
        | if same_log_allowed { HEALTH_SAME_LOG } else { 0 };
    if bits & !known != 0 {
        return Err(DecodeError::BadHealth(bits));
    }
    let health = Health {
        app_live: bits & HEALTH_APP_LIVE != 0,
        can_stand: bits & HEALTH_CAN_STAND != 0,
        priority,
        can_vote: bits & HEALTH_CAN_VOTE != 0,
    };
    Ok((health, bits & HEALTH_SAME_LOG != 0))
}

fn put_health(dst: &mut BytesMut, health: Health, same_log: bool) {
    let mut bits = 0;
    if health.app_live {
        bits |= HEALTH_APP_LIVE;
    }
    if health.can_stand {
        bits |= HEALTH_CAN_STAND;
    }
    if same_log {
        bits |= HEALTH_SAME_LOG;
    }
    if health.can_vote {
        bits |= HEALTH_CAN_VOTE;
    }
    dst.put_u8(bits);
    dst.put_u8(health.priority);
}

fn get_array<const N: usize>(body: &mut Bytes) -> [u8; N] {
    let mut array = [0u8; N];
    body.copy_to_slice(&mut array);
    array
}

fn node_id(raw: u16) -> Result<NodeId, DecodeError> {
    if raw == 0 {
        return Err(DecodeError::NodeIdZero);
    }
    Ok(NodeId(raw))
}

fn duration_ns(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Decodes the frame at the start of `bytes`: `Ok(None)` if more bytes are needed, the
/// frame and the bytes it took otherwise. A plain function so a fuzz target and the tests
/// can call it; the codec calls [`decode_frame`] on the split-off frame.
pub fn decode(bytes: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
    if bytes.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if len > FRAME_LEN_MAX {
        return Err(DecodeError::TooLong {
            len,
            max: FRAME_LEN_MAX,
        });
    }
    if bytes.len() < 4 + len {
        return Ok(None);
    }
    let frame = decode_frame(Bytes::copy_from_slice(&bytes[4..4 + len]))?;
    Ok(Some((frame, 4 + len)))
}

/// Decodes one whole frame (type byte and body, without the length prefix).
pub fn decode_frame(mut frame: Bytes) -> Result<Frame, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    let kind = frame.get_u8();
    let len = frame.len();
    let expect = |expected: usize| -> Result<(), DecodeError> {
        if len != expected {
            return Err(DecodeError::BadLength {
                kind,
                len,
                expected,
            });
        }
        Ok(())
    };
    let body = &mut frame;
    Ok(match kind {
        1 => {
            const FIXED: usize = 2 + 8 + 2 + 2 + NONCE_LEN + 1;
            let count = if len >= FIXED {
                usize::from(body[FIXED - 1])
            } else {
                0
            };
            let fixed = FIXED + 2 * count + 16;
            if !(fixed..=fixed + 128).contains(&len) {
                return Err(DecodeError::BadLength {
                    kind,
                    len,
                    expected: fixed,
                });
            }
            let mut hello = Hello {
                version: body.get_u16_le(),
                cluster_id: body.get_u64_le(),
                from: node_id(body.get_u16_le())?,
                to: node_id(body.get_u16_le())?,
                nonce: get_array(body),
                members: Vec::with_capacity(count),
                config_lsn: 0,
                previous_cluster_id: 0,
                client_addr: None,
                admin_addr: None,
            };
            body.advance(1);
            for _ in 0..count {
                hello.members.push(node_id(body.get_u16_le())?);
            }
            hello.config_lsn = body.get_u64_le();
            hello.previous_cluster_id = body.get_u64_le();
            let text = std::str::from_utf8(body).map_err(|_| DecodeError::BadText)?;
            let (client, admin) = text.split_once(' ').unwrap_or((text, ""));
            hello.client_addr = parse_addr(client)?;
            hello.admin_addr = parse_addr(admin)?;
            Frame::Hello(hello)
        }
        2 => {
            expect(1 + NONCE_LEN + TAG_LEN)?;
            let which = body.get_u8();
            if which > 1 {
                return Err(DecodeError::BadBool(which));
            }
            Frame::Challenge {
                which,
                nonce: get_array(body),
                tag: get_array(body),
            }
        }
        3 => {
            if !(TAG_LEN..=TAG_LEN + PROOF_TEXT_LEN_MAX).contains(&len) {
                return Err(DecodeError::BadLength {
                    kind,
                    len,
                    expected: TAG_LEN,
                });
            }
            let tag = get_array(body);
            let text = std::str::from_utf8(body).map_err(|_| DecodeError::BadText)?;
            let (app, peer) = match text.split_once(' ') {
                Some((app, peer)) => (app, Some(peer)),
                None => (text, None),
            };
            let peer_addr = match peer {
                Some(peer) => Some(PeerAddr::parse(peer).map_err(|_| DecodeError::BadText)?),
                None => None,
            };
            Frame::Proof {
                tag,
                app_addr: parse_addr(app)?,
                peer_addr,
            }
        }
        4 => {
            if len > REFUSE_REASON_LEN_MAX {
                return Err(DecodeError::BadLength {
                    kind,
                    len,
                    expected: REFUSE_REASON_LEN_MAX,
                });
            }
            Frame::Refuse {
                reason: String::from_utf8(body.to_vec()).map_err(|_| DecodeError::BadText)?,
            }
        }
        16 => {
            expect(24)?;
            message(Message::PreVoteRequest {
                epoch: get_epoch(body)?,
                last_lsn: get_lsn(body)?,
                last_epoch: get_epoch(body)?,
            })
        }
        17 => {
            expect(19)?;
            let (epoch, granted, voter_epoch) =
                (get_epoch(body)?, get_bool(body)?, get_epoch(body)?);
            let (health, same_log) = get_health(body, true)?;
            message(Message::PreVoteResponse {
                epoch,
                granted,
                voter_epoch,
                health,
                same_log,
            })
        }
        18 => {
            expect(25)?;
            message(Message::VoteRequest {
                epoch: get_epoch(body)?,
                last_lsn: get_lsn(body)?,
                last_epoch: get_epoch(body)?,
                transfer: get_bool(body)?,
            })
        }
        19 => {
            expect(17)?;
            message(Message::VoteResponse {
                epoch: get_epoch(body)?,
                granted: get_bool(body)?,
                vote_wait: std::time::Duration::from_nanos(body.get_u64_le()),
            })
        }
        20 => {
            if len < APPEND_FIXED_LEN {
                return Err(DecodeError::BadLength {
                    kind,
                    len,
                    expected: APPEND_FIXED_LEN,
                });
            }
            let append = Append {
                epoch: get_epoch(body)?,
                prev_lsn: get_lsn(body)?,
                prev_epoch: get_epoch(body)?,
                first_lsn: get_lsn(body)?,
                last_lsn: get_lsn(body)?,
                records_epoch: get_epoch(body)?,
                commit_lsn: get_lsn(body)?,
                sent_at: std::time::Duration::from_nanos(body.get_u64_le()),
                promote: body.get_u64_le(),
                promote_through: get_lsn(body)?,
                paused: get_bool(body)?,
                pause_stamp: body.get_u64_le(),
                // Not on the wire: the receiver finds it in the records (a config record is
                // always an append's last).
                config: None,
                successor: match body.get_u16_le() {
                    0 => None,
                    id => Some(NodeId(id)),
                },
            };
            if append.first_lsn.get() != append.prev_lsn.get().wrapping_add(1)
                || append.last_lsn < append.prev_lsn
            {
                return Err(DecodeError::BadRange {
                    prev: append.prev_lsn.get(),
                    first: append.first_lsn.get(),
                    last: append.last_lsn.get(),
                });
            }
            // The rest of the frame is the records, handed on without a copy.
            let records = std::mem::take(body);
            Frame::Message {
                message: Message::Append(append),
                records,
            }
        }
        21 => {
            expect(59)?;
            message(Message::AppendResponse(AppendResponse {
                epoch: get_epoch(body)?,
                accepted: get_bool(body)?,
                matched_lsn: get_lsn(body)?,
                matched_epoch: get_epoch(body)?,
                durable_lsn: get_lsn(body)?,
                sent_at: std::time::Duration::from_nanos(body.get_u64_le()),
                learner: body.get_u64_le(),
                health: get_health(body, false)?.0,
                vote_wait: std::time::Duration::from_nanos(body.get_u64_le()),
            }))
        }
        22 => {
            expect(8)?;
            message(Message::TimeoutNow {
                epoch: get_epoch(body)?,
            })
        }
        32 => {
            if len < 40 {
                return Err(DecodeError::BadLength {
                    kind,
                    len,
                    expected: 40,
                });
            }
            Frame::SnapshotBegin {
                epoch: get_epoch(body)?,
                lsn: get_lsn(body)?,
                snapshot_epoch: get_epoch(body)?,
                body_len: body.get_u64_le(),
                config_lsn: get_lsn(body)?,
                config: std::mem::take(body),
            }
        }
        33 => {
            if len < 8 {
                return Err(DecodeError::BadLength {
                    kind,
                    len,
                    expected: 8,
                });
            }
            let offset = body.get_u64_le();
            // The chunk's bytes are handed on without a copy and verified by the receiver.
            Frame::SnapshotChunk {
                offset,
                raw: std::mem::take(body),
            }
        }
        34 => {
            expect(4)?;
            Frame::SnapshotEnd {
                body_crc: body.get_u32_le(),
            }
        }
        35 => {
            expect(8)?;
            Frame::SnapshotAck {
                offset: body.get_u64_le(),
            }
        }
        36 => {
            expect(1)?;
            Frame::SnapshotDone {
                installed: get_bool(body)?,
            }
        }
        40 => {
            expect(16)?;
            let first_lsn = get_lsn(body)?;
            let last_lsn = get_lsn(body)?;
            if first_lsn == Lsn::ZERO || last_lsn < first_lsn {
                return Err(DecodeError::BadRange {
                    prev: first_lsn.get().saturating_sub(1),
                    first: first_lsn.get(),
                    last: last_lsn.get(),
                });
            }
            Frame::RepairRequest {
                first_lsn,
                last_lsn,
            }
        }
        41 => Frame::RepairRecords {
            records: std::mem::take(body),
        },
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// The longest address text in a `Proof`: an IPv6 address with a zone index and a port
/// (`[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535` is 59 bytes), with room.
const ADDR_TEXT_LEN_MAX: usize = 64;
/// The longest peer address text: a DNS name of 253 bytes, a colon and a port.
const PEER_ADDR_TEXT_LEN_MAX: usize = 253 + 1 + 5;
/// The longest text of a `Proof`: an application address, a space, a peer address.
const PROOF_TEXT_LEN_MAX: usize = ADDR_TEXT_LEN_MAX + 1 + PEER_ADDR_TEXT_LEN_MAX;

/// The text a `Proof` carries, which the dialler's tag covers: its application address
/// ([`addr_text`]), then, if it announces one, a space and its peer address.
pub fn proof_text(app_addr: Option<std::net::SocketAddr>, peer_addr: Option<&PeerAddr>) -> String {
    let mut text = addr_text(app_addr);
    if let Some(peer) = peer_addr {
        text.push(' ');
        text.push_str(&peer.to_string());
    }
    text
}

/// An address as the frames carry it: `IP:PORT`, or empty for none. The dialler's tag covers
/// these bytes (module docs).
pub fn addr_text(addr: Option<std::net::SocketAddr>) -> String {
    addr.map(|addr| addr.to_string()).unwrap_or_default()
}

/// The inverse of [`addr_text`].
fn parse_addr(text: &str) -> Result<Option<std::net::SocketAddr>, DecodeError> {
    if text.is_empty() {
        Ok(None)
    } else {
        text.parse().map(Some).map_err(|_| DecodeError::BadText)
    }
}

fn message(message: Message) -> Frame {
    Frame::Message {
        message,
        records: Bytes::new(),
    }
}

/// Appends the frame header and fixed fields of `frame` to `dst`. For an `Append` the
/// records are *not* copied: the caller writes `records` after these bytes (the length
/// prefix already counts them). Returns the records to write.
pub fn encode_head(frame: &Frame, dst: &mut BytesMut) -> Bytes {
    let start = dst.len();
    dst.put_u32_le(0); // patched below
    let mut records = Bytes::new();
    match frame {
        Frame::Hello(hello) => {
            dst.put_u8(1);
            dst.put_u16_le(hello.version);
            dst.put_u64_le(hello.cluster_id);
            dst.put_u16_le(hello.from.get());
            dst.put_u16_le(hello.to.get());
            dst.put_slice(&hello.nonce);
            assert!(
                hello.members.len() <= usize::from(u8::MAX),
                "a member list is at most MEMBERS_MAX (64) long"
            );
            dst.put_u8(hello.members.len() as u8);
            for id in &hello.members {
                dst.put_u16_le(id.get());
            }
            dst.put_u64_le(hello.config_lsn);
            dst.put_u64_le(hello.previous_cluster_id);
            if hello.client_addr.is_some() || hello.admin_addr.is_some() {
                dst.put_slice(addr_text(hello.client_addr).as_bytes());
                dst.put_u8(b' ');
                dst.put_slice(addr_text(hello.admin_addr).as_bytes());
            }
        }
        Frame::Challenge { which, nonce, tag } => {
            dst.put_u8(2);
            dst.put_u8(*which);
            dst.put_slice(nonce);
            dst.put_slice(tag);
        }
        Frame::Proof {
            tag,
            app_addr,
            peer_addr,
        } => {
            dst.put_u8(3);
            dst.put_slice(tag);
            dst.put_slice(proof_text(*app_addr, peer_addr.as_ref()).as_bytes());
        }
        Frame::Refuse { reason } => {
            dst.put_u8(4);
            // Keep refusals short; they are for a log line. Cut at a character boundary, or
            // the receiver would refuse the text as invalid UTF-8.
            let mut end = reason.len().min(REFUSE_REASON_LEN_MAX);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            dst.put_slice(&reason.as_bytes()[..end]);
        }
        Frame::Message {
            message,
            records: attached,
        } => match message {
            Message::PreVoteRequest {
                epoch,
                last_lsn,
                last_epoch,
            } => {
                dst.put_u8(16);
                dst.put_u64_le(epoch.get());
                dst.put_u64_le(last_lsn.get());
                dst.put_u64_le(last_epoch.get());
            }
            Message::PreVoteResponse {
                epoch,
                granted,
                voter_epoch,
                health,
                same_log,
            } => {
                dst.put_u8(17);
                dst.put_u64_le(epoch.get());
                dst.put_u8(u8::from(*granted));
                dst.put_u64_le(voter_epoch.get());
                put_health(dst, *health, *same_log);
            }
            Message::VoteRequest {
                epoch,
                last_lsn,
                last_epoch,
                transfer,
            } => {
                dst.put_u8(18);
                dst.put_u64_le(epoch.get());
                dst.put_u64_le(last_lsn.get());
                dst.put_u64_le(last_epoch.get());
                dst.put_u8(u8::from(*transfer));
            }
            Message::VoteResponse {
                epoch,
                granted,
                vote_wait,
            } => {
                dst.put_u8(19);
                dst.put_u64_le(epoch.get());
                dst.put_u8(u8::from(*granted));
                dst.put_u64_le(duration_ns(*vote_wait));
            }
            Message::Append(append) => {
                dst.put_u8(20);
                dst.put_u64_le(append.epoch.get());
                dst.put_u64_le(append.prev_lsn.get());
                dst.put_u64_le(append.prev_epoch.get());
                dst.put_u64_le(append.first_lsn.get());
                dst.put_u64_le(append.last_lsn.get());
                dst.put_u64_le(append.records_epoch.get());
                dst.put_u64_le(append.commit_lsn.get());
                dst.put_u64_le(duration_ns(append.sent_at));
                dst.put_u64_le(append.promote);
                dst.put_u64_le(append.promote_through.get());
                dst.put_u8(u8::from(append.paused));
                dst.put_u64_le(append.pause_stamp);
                dst.put_u16_le(append.successor.map_or(0, NodeId::get));
                records = attached.clone();
            }
            Message::AppendResponse(response) => {
                dst.put_u8(21);
                dst.put_u64_le(response.epoch.get());
                dst.put_u8(u8::from(response.accepted));
                dst.put_u64_le(response.matched_lsn.get());
                dst.put_u64_le(response.matched_epoch.get());
                dst.put_u64_le(response.durable_lsn.get());
                dst.put_u64_le(duration_ns(response.sent_at));
                dst.put_u64_le(response.learner);
                put_health(dst, response.health, false);
                dst.put_u64_le(duration_ns(response.vote_wait));
            }
            Message::TimeoutNow { epoch } => {
                dst.put_u8(22);
                dst.put_u64_le(epoch.get());
            }
        },
        Frame::SnapshotBegin {
            epoch,
            lsn,
            snapshot_epoch,
            body_len,
            config_lsn,
            config,
        } => {
            dst.put_u8(32);
            dst.put_u64_le(epoch.get());
            dst.put_u64_le(lsn.get());
            dst.put_u64_le(snapshot_epoch.get());
            dst.put_u64_le(*body_len);
            dst.put_u64_le(config_lsn.get());
            dst.put_slice(config);
        }
        Frame::SnapshotChunk { offset, raw } => {
            dst.put_u8(33);
            dst.put_u64_le(*offset);
            records = raw.clone();
        }
        Frame::SnapshotEnd { body_crc } => {
            dst.put_u8(34);
            dst.put_u32_le(*body_crc);
        }
        Frame::SnapshotAck { offset } => {
            dst.put_u8(35);
            dst.put_u64_le(*offset);
        }
        Frame::SnapshotDone { installed } => {
            dst.put_u8(36);
            dst.put_u8(u8::from(*installed));
        }
        Frame::RepairRequest {
            first_lsn,
            last_lsn,
        } => {
            dst.put_u8(40);
            dst.put_u64_le(first_lsn.get());
            dst.put_u64_le(last_lsn.get());
        }
        Frame::RepairRecords { records: attached } => {
            dst.put_u8(41);
            records = attached.clone();
        }
    }
    let len = dst.len() - start - 4 + records.len();
    assert!(
        len <= FRAME_LEN_MAX,
        "frame of {len} bytes exceeds the limit of {FRAME_LEN_MAX}"
    );
    dst[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    records
}

/// Appends the head of a message frame whose `records_len` bytes of records the caller
/// writes right after it (from several buffers, without copying them together).
pub fn encode_message_head(message: &Message, records_len: usize, dst: &mut BytesMut) {
    let start = dst.len();
    let frame = Frame::Message {
        message: *message,
        records: Bytes::new(),
    };
    encode_head(&frame, dst);
    let len = dst.len() - start - 4 + records_len;
    assert!(
        len <= FRAME_LEN_MAX,
        "frame of {len} bytes exceeds the limit of {FRAME_LEN_MAX}"
    );
    dst[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
}

/// The tokio-util codec. Decoding splits the frame off the read buffer and hands the
/// records out without a copy; encoding copies (use [`encode_head`] and a vectored write on
/// the hot path to avoid copying records).
#[derive(Debug)]
pub struct PeerCodec {
    /// The longest frame accepted: [`FRAME_LEN_MAX`], or [`HANDSHAKE_FRAME_LEN_MAX`] until
    /// the peer has passed the handshake ([`PeerCodec::handshake`]).
    max_len: usize,
}

/// The longest frame of the handshake (a `Hello` with the member list and its addresses, a
/// `Challenge`, a `Proof`, a `Refuse`), with room to spare. A connection that has not proved
/// it holds the cluster's secret is read at most this far: four bytes announcing a frame of
/// 64 MiB are refused at once, not buffered until they arrive.
pub const HANDSHAKE_FRAME_LEN_MAX: usize = 64 * 1024;

impl Default for PeerCodec {
    fn default() -> PeerCodec {
        PeerCodec {
            max_len: FRAME_LEN_MAX,
        }
    }
}

impl PeerCodec {
    /// A codec for a connection's handshake: frames of at most [`HANDSHAKE_FRAME_LEN_MAX`].
    /// [`PeerCodec::handshake_passed`] lifts the limit once the peer is authenticated.
    pub fn handshake() -> PeerCodec {
        PeerCodec {
            max_len: HANDSHAKE_FRAME_LEN_MAX,
        }
    }

    /// Accepts frames up to [`FRAME_LEN_MAX`] from now on.
    pub fn handshake_passed(&mut self) {
        self.max_len = FRAME_LEN_MAX;
    }
}

/// The longest `Refuse` reason, in bytes: the sender cuts a longer one, the receiver refuses
/// it (the peer may not have passed the handshake yet).
const REFUSE_REASON_LEN_MAX: usize = 1024;

/// The most [`PeerCodec`] reserves at once for the unread part of a frame.
const RESERVE_STEP_LEN: usize = 64 * 1024;

impl Decoder for PeerCodec {
    type Item = Frame;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_len {
            return Err(DecodeError::TooLong {
                len,
                max: self.max_len,
            });
        }
        if src.len() < 4 + len {
            // Make room for a little more of this frame at a time, not for all of it: four
            // bytes announcing a frame near the limit, from a peer that has not even proved
            // it holds the secret, must not reserve tens of megabytes. The buffer still grows
            // with what actually arrives (amortised doubling), and never past one frame.
            src.reserve((4 + len - src.len()).min(RESERVE_STEP_LEN));
            return Ok(None);
        }
        src.advance(4);
        decode_frame(src.split_to(len).freeze()).map(Some)
    }
}

impl Encoder<Frame> for PeerCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let records = encode_head(&frame, dst);
        dst.extend_from_slice(&records);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Until the handshake passes, a frame announced longer than a handshake frame is
    /// refused at its length; after it, frames up to `FRAME_LEN_MAX` are waited for.
    #[test]
    fn a_handshake_codec_refuses_long_frames_until_the_handshake_passed() {
        let announce = |len: usize| {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&(len as u32).to_le_bytes());
            buf.extend_from_slice(&[1u8; 16]);
            buf
        };
        let mut codec = PeerCodec::handshake();
        assert_eq!(
            codec.decode(&mut announce(HANDSHAKE_FRAME_LEN_MAX + 1)),
            Err(DecodeError::TooLong {
                len: HANDSHAKE_FRAME_LEN_MAX + 1,
                max: HANDSHAKE_FRAME_LEN_MAX
            })
        );
        assert_eq!(
            codec.decode(&mut announce(HANDSHAKE_FRAME_LEN_MAX)),
            Ok(None)
        );
        codec.handshake_passed();
        assert_eq!(codec.decode(&mut announce(FRAME_LEN_MAX)), Ok(None));
        let mut hello = BytesMut::new();
        PeerCodec::default()
            .encode(
                Frame::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    cluster_id: u64::MAX,
                    from: NodeId(64),
                    to: NodeId(63),
                    nonce: [7; NONCE_LEN],
                    members: (1..=64).map(NodeId).collect(),
                    config_lsn: u64::MAX,
                    previous_cluster_id: u64::MAX,
                    client_addr: Some("[ffff::1]:65535".parse().unwrap()),
                    admin_addr: Some("[ffff::1]:65535".parse().unwrap()),
                }),
                &mut hello,
            )
            .unwrap();
        assert!(hello.len() < HANDSHAKE_FRAME_LEN_MAX, "{}", hello.len());
    }

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        PeerCodec::default()
            .encode(frame.clone(), &mut buf)
            .unwrap();
        let (decoded, used) = decode(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(decoded, frame);
        let mut codec_buf = buf.clone();
        assert_eq!(
            PeerCodec::default().decode(&mut codec_buf).unwrap(),
            Some(frame)
        );
        assert!(codec_buf.is_empty());
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    fn encode_to_vec(frame: &Frame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        PeerCodec::default()
            .encode(frame.clone(), &mut buf)
            .unwrap();
        buf.to_vec()
    }

    fn append(records: Bytes) -> Frame {
        Frame::Message {
            message: Message::Append(Append {
                epoch: Epoch(3),
                prev_lsn: Lsn(9),
                prev_epoch: Epoch(2),
                first_lsn: Lsn(10),
                last_lsn: Lsn(11),
                records_epoch: Epoch(3),
                commit_lsn: Lsn(8),
                sent_at: Duration::from_nanos(123_456),
                promote: 0x1234,
                promote_through: Lsn(7),
                paused: false,
                pause_stamp: 0,
                config: None,
                successor: Some(NodeId(2)),
            }),
            records,
        }
    }

    /// An epoch or LSN past the limit is refused where it is decoded: a peer's epoch at
    /// `u64::MAX`, adopted and stored, would make every node that heard it panic at its next
    /// election, and again at every start.
    #[test]
    fn epochs_and_lsns_past_the_limit_are_refused() {
        let past = Epoch::LIMIT.get() + 1;
        for epoch in [past, u64::MAX] {
            let mut frame = append(Bytes::new());
            if let Frame::Message {
                message: Message::Append(a),
                ..
            } = &mut frame
            {
                a.epoch = Epoch(epoch);
            }
            let bytes = encode_to_vec(&frame);
            assert!(matches!(
                decode(&bytes),
                Err(DecodeError::TooLarge { what: "epoch", value }) if value == epoch
            ));
        }
        // An append "after" u64::MAX - 1, empty: the range check alone lets it through.
        let mut frame = append(Bytes::new());
        if let Frame::Message {
            message: Message::Append(a),
            ..
        } = &mut frame
        {
            a.prev_lsn = Lsn(u64::MAX - 1);
            a.first_lsn = Lsn(u64::MAX);
            a.last_lsn = Lsn(u64::MAX - 1);
        }
        assert!(matches!(
            decode(&encode_to_vec(&frame)),
            Err(DecodeError::TooLarge { what: "lsn", .. })
        ));
        let vote = Frame::Message {
            message: Message::VoteRequest {
                epoch: Epoch(3),
                last_lsn: Lsn(u64::MAX),
                last_epoch: Epoch(2),
                transfer: false,
            },
            records: Bytes::new(),
        };
        assert!(matches!(
            decode(&encode_to_vec(&vote)),
            Err(DecodeError::TooLarge { what: "lsn", .. })
        ));
        // The limit itself is a value like any other.
        let mut frame = append(Bytes::new());
        if let Frame::Message {
            message: Message::Append(a),
            ..
        } = &mut frame
        {
            a.epoch = Epoch::LIMIT;
        }
        round_trip(frame);
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            cluster_id: 0xfeed,
            from: NodeId(1),
            to: NodeId(3),
            nonce: [7; NONCE_LEN],
            members: vec![NodeId(1), NodeId(2), NodeId(3)],
            config_lsn: 7,
            previous_cluster_id: 0x0123_4567,
            client_addr: Some("127.0.0.1:6379".parse().unwrap()),
            admin_addr: None,
        }));
        round_trip(Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            cluster_id: 1,
            from: NodeId(2),
            to: NodeId(1),
            nonce: [0; NONCE_LEN],
            members: Vec::new(),
            config_lsn: 0,
            previous_cluster_id: 0,
            client_addr: None,
            admin_addr: None,
        }));
        round_trip(Frame::Challenge {
            which: 1,
            nonce: [1; NONCE_LEN],
            tag: [2; TAG_LEN],
        });
        round_trip(Frame::Proof {
            tag: [3; TAG_LEN],
            app_addr: None,
            peer_addr: None,
        });
        round_trip(Frame::Proof {
            tag: [4; TAG_LEN],
            app_addr: Some("[fe80::1%2]:6379".parse().unwrap()),
            peer_addr: None,
        });
        round_trip(Frame::Proof {
            tag: [5; TAG_LEN],
            app_addr: Some(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
                    .parse()
                    .unwrap(),
            ),
            peer_addr: None,
        });
        let longest_name = format!(
            "{}.{}.{}.{}:65535",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        for (app, peer) in [
            (None, "127.0.0.1:7001".to_owned()),
            (Some("10.0.0.1:6379"), "[::1]:7001".to_owned()),
            (Some("[fe80::1%2]:6379"), "node-2.example:7001".to_owned()),
            (
                Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"),
                longest_name.clone(),
            ),
        ] {
            round_trip(Frame::Proof {
                tag: [6; TAG_LEN],
                app_addr: app.map(|a| a.parse().unwrap()),
                peer_addr: Some(PeerAddr::parse(&peer).unwrap()),
            });
        }
        round_trip(Frame::Refuse {
            reason: "wrong cluster".into(),
        });
        for message in [
            Message::PreVoteRequest {
                epoch: Epoch(4),
                last_lsn: Lsn(100),
                last_epoch: Epoch(3),
            },
            Message::PreVoteResponse {
                epoch: Epoch(4),
                granted: true,
                voter_epoch: Epoch(3),
                health: Health::default(),
                same_log: false,
            },
            Message::VoteRequest {
                epoch: Epoch(4),
                last_lsn: Lsn(100),
                last_epoch: Epoch(3),
                transfer: true,
            },
            Message::VoteResponse {
                epoch: Epoch(4),
                granted: false,
                vote_wait: Duration::from_millis(500),
            },
            Message::AppendResponse(AppendResponse {
                epoch: Epoch(4),
                accepted: true,
                matched_lsn: Lsn(99),
                matched_epoch: Epoch(3),
                durable_lsn: Lsn(98),
                sent_at: Duration::from_millis(5),
                learner: 77,
                health: Health::default(),
                vote_wait: Duration::from_millis(500),
            }),
            Message::TimeoutNow { epoch: Epoch(4) },
        ] {
            round_trip(Frame::Message {
                message,
                records: Bytes::new(),
            });
        }
        round_trip(append(Bytes::from_static(b"records go here")));
        round_trip(Frame::SnapshotBegin {
            epoch: Epoch(5),
            lsn: Lsn(1000),
            snapshot_epoch: Epoch(4),
            body_len: 1 << 30,
            config_lsn: Lsn(900),
            config: Bytes::from_static(b"{}"),
        });
        round_trip(Frame::SnapshotChunk {
            offset: 262_144,
            raw: Bytes::from_static(b"\x03\0\0\0crc!abc"),
        });
        round_trip(Frame::SnapshotEnd {
            body_crc: 0xdead_beef,
        });
        round_trip(Frame::SnapshotAck { offset: 7 });
        round_trip(Frame::SnapshotDone { installed: true });
        round_trip(Frame::RepairRequest {
            first_lsn: Lsn(5),
            last_lsn: Lsn(9),
        });
        round_trip(Frame::RepairRecords {
            records: Bytes::from_static(b"records"),
        });
    }

    /// The `Hello` is laid out, byte for byte, as versions 5 and 6 lay it out (written out
    /// here by hand, not by the encoder), so that a node of those versions reads this one's
    /// version and refuses it by number; and this node reads theirs.
    #[test]
    fn the_hello_keeps_the_layout_of_versions_5_and_6() {
        let hello = |version| Hello {
            version,
            cluster_id: 0x0102_0304_0506_0708,
            from: NodeId(1),
            to: NodeId(2),
            nonce: [9; NONCE_LEN],
            members: vec![NodeId(1), NodeId(2)],
            config_lsn: 3,
            previous_cluster_id: 0,
            client_addr: Some("127.0.0.1:7001".parse().unwrap()),
            admin_addr: None,
        };
        let text = b"127.0.0.1:7001 ";
        let mut expected = Vec::new();
        expected.extend_from_slice(&(1u32 + 2 + 8 + 2 + 2 + 32 + 1 + 4 + 8 + 8 + 15).to_le_bytes());
        expected.push(1); // type
        expected.extend_from_slice(&[6, 0]); // version
        expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]); // cluster_id
        expected.extend_from_slice(&[1, 0, 2, 0]); // from, to
        expected.extend_from_slice(&[9; NONCE_LEN]);
        expected.extend_from_slice(&[2, 1, 0, 2, 0]); // members: count, ids
        expected.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]); // config_lsn
        expected.extend_from_slice(&[0; 8]); // previous_cluster_id
        expected.extend_from_slice(text);
        let mut buf = BytesMut::new();
        PeerCodec::default()
            .encode(Frame::Hello(hello(6)), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], &expected[..]);
        let (decoded, _) = decode(&expected).unwrap().unwrap();
        assert_eq!(decoded, Frame::Hello(hello(6)));
    }

    /// A `Proof` frame of tag `[1; TAG_LEN]` and `text`, decoded.
    fn decode_proof(text: &[u8]) -> Result<Option<Frame>, DecodeError> {
        let mut buf = BytesMut::new();
        buf.put_u32_le((1 + TAG_LEN + text.len()) as u32);
        buf.put_u8(3);
        buf.put_slice(&[1; TAG_LEN]);
        buf.put_slice(text);
        decode(&buf).map(|frame| frame.map(|(frame, _)| frame))
    }

    /// The dialler's application address: a proof without one is the tag alone, as before
    /// version 7; an address that does not parse, or is too long, is a bad frame.
    #[test]
    fn a_proof_carries_the_application_address_as_text() {
        let mut buf = BytesMut::new();
        PeerCodec::default()
            .encode(
                Frame::Proof {
                    tag: [1; TAG_LEN],
                    app_addr: None,
                    peer_addr: None,
                },
                &mut buf,
            )
            .unwrap();
        assert_eq!(buf.len(), 4 + 1 + TAG_LEN);
        let proof = decode_proof;
        assert_eq!(
            proof(b"10.1.2.3:6379"),
            Ok(Some(Frame::Proof {
                tag: [1; TAG_LEN],
                app_addr: Some("10.1.2.3:6379".parse().unwrap()),
                peer_addr: None,
            }))
        );
        assert_eq!(proof(b"redis:6379"), Err(DecodeError::BadText));
        assert_eq!(proof(b"10.1.2.3:6379 "), Err(DecodeError::BadText));
        assert!(matches!(
            proof(&[b'1'; PROOF_TEXT_LEN_MAX + 1]),
            Err(DecodeError::BadLength { kind: 3, .. })
        ));
    }

    /// Since version 9 the dialler's peer address follows its application address, after
    /// one space; either may be given without the other, and the tag covers the same text.
    #[test]
    fn a_proof_carries_the_peer_address_after_the_application_address() {
        let proof = decode_proof;
        let peer = |text: &str| Some(PeerAddr::parse(text).unwrap());
        assert_eq!(
            proof(b"10.1.2.3:6379 node-2:7001"),
            Ok(Some(Frame::Proof {
                tag: [1; TAG_LEN],
                app_addr: Some("10.1.2.3:6379".parse().unwrap()),
                peer_addr: peer("node-2:7001"),
            }))
        );
        assert_eq!(
            proof(b" 127.0.0.1:7001"),
            Ok(Some(Frame::Proof {
                tag: [1; TAG_LEN],
                app_addr: None,
                peer_addr: peer("127.0.0.1:7001"),
            }))
        );
        assert_eq!(
            proof_text(None, peer("127.0.0.1:7001").as_ref()),
            " 127.0.0.1:7001"
        );
        assert_eq!(
            proof_text(
                Some("10.1.2.3:6379".parse().unwrap()),
                peer("[::1]:7001").as_ref()
            ),
            "10.1.2.3:6379 [::1]:7001"
        );
        assert_eq!(proof_text(None, None), "");
        // A peer address that is not HOST:PORT, or a second space, is a bad frame.
        assert_eq!(proof(b" node-2"), Err(DecodeError::BadText));
        assert_eq!(proof(b" node-2:0"), Err(DecodeError::BadText));
        assert_eq!(proof(b" a:1 b:2"), Err(DecodeError::BadText));
        assert_eq!(proof(b"  a:1"), Err(DecodeError::BadText));
    }

    #[test]
    fn oversized_frame_is_refused_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        buf.put_u8(20);
        assert!(matches!(
            PeerCodec::default().decode(&mut buf),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(buf.capacity() < 1 << 20);
    }

    /// Regression (found by the peer_frame fuzz target, which ran at a few hundred inputs a
    /// second because of it): a length prefix alone made the codec reserve the whole
    /// announced frame, up to `FRAME_LEN_MAX`, before a byte of it arrived.
    #[test]
    fn a_length_prefix_alone_does_not_reserve_the_whole_frame() {
        let mut buf = BytesMut::new();
        buf.put_u32_le((FRAME_LEN_MAX - 1) as u32);
        buf.put_u8(20);
        assert_eq!(PeerCodec::default().decode(&mut buf), Ok(None));
        assert!(
            buf.capacity() <= 2 * RESERVE_STEP_LEN,
            "reserved {}",
            buf.capacity()
        );
    }

    /// Regression (peer_frame fuzz target): a `Refuse` longer than the encoder writes was
    /// accepted, and re-encoding it cut it short; now the decoder refuses it.
    #[test]
    fn an_overlong_refuse_reason_is_refused() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(1 + REFUSE_REASON_LEN_MAX as u32 + 1);
        buf.put_u8(4);
        buf.put_slice(&[b'w'; REFUSE_REASON_LEN_MAX + 1]);
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::BadLength { kind: 4, .. })
        ));
    }

    /// The encoder cuts a long reason at a character boundary, so what it sends decodes.
    #[test]
    fn a_long_refuse_reason_is_cut_at_a_character_boundary() {
        let mut buf = BytesMut::new();
        // One byte, then two-byte characters: byte 1024 falls inside a character.
        let reason = format!("a{}", "é".repeat(REFUSE_REASON_LEN_MAX));
        PeerCodec::default()
            .encode(Frame::Refuse { reason }, &mut buf)
            .unwrap();
        let (frame, _) = decode(&buf).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::Refuse {
                reason: format!("a{}", "é".repeat(REFUSE_REASON_LEN_MAX / 2 - 1))
            }
        );
    }

    #[test]
    fn append_with_an_inconsistent_range_is_refused() {
        let mut buf = BytesMut::new();
        PeerCodec::default()
            .encode(append(Bytes::new()), &mut buf)
            .unwrap();
        // first_lsn is at 4 (len) + 1 (type) + 24.
        buf[29..37].copy_from_slice(&50u64.to_le_bytes());
        assert!(matches!(decode(&buf), Err(DecodeError::BadRange { .. })));
    }

    proptest! {
        /// The fuzz target's property on stable: no input panics the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = PeerCodec::default().decode(&mut buf) {}
        }

        #[test]
        fn appends_round_trip(records in proptest::collection::vec(any::<u8>(), 0..300), commit in 0..=Lsn::LIMIT.get()) {
            let mut frame = append(Bytes::from(records));
            if let Frame::Message { message: Message::Append(a), .. } = &mut frame {
                a.commit_lsn = Lsn(commit);
            }
            round_trip(frame);
        }
    }
}
