//! The app API: what an application and its local sidecar say to each other over the Unix
//! socket given by `--app-socket`. This page is the protocol's specification; an application
//! in any language can speak it from here. The Rust driver in [`crate::client`] is one such
//! application-side implementation; the sidecar side is [`crate::node::app_api`].
//!
//! # Session
//!
//! ```text
//! app     -> sidecar  Hello { version }
//! sidecar -> app      Welcome { version, node_id, frame_len_max, append_count_max }
//!                     (or Error { message } and close, for a version it does not speak)
//! then, in any order and with any number in flight:
//! app     -> sidecar  Append { request_id, payloads }   answered by Appended or Rejected
//! app     -> sidecar  Subscribe { from_lsn }            answered by Role, then a stream of
//!                                                       Records and Role frames
//! app     -> sidecar  Status                            answered by StatusReply
//! app     -> sidecar  Read { request_id }               answered by ReadIndex or Rejected
//! app     -> sidecar  SnapshotOffer, SnapshotChunk…,    the app's snapshot (usually when
//!                     SnapshotDone                      asked by SnapshotRequest)
//! app     -> sidecar  SnapshotDecline                   "not now", to a SnapshotRequest
//! app     -> sidecar  SnapshotFetch                     answered by RestoreBegin,
//!                                                       RestoreChunk…, RestoreEnd
//! sidecar -> app      Ping { nonce }                    on a subscribed connection, every
//!                                                       heartbeat interval; answered by
//!                                                       Pong { nonce, applied_lsn }
//! ```
//!
//! - **Append.** The sidecar proposes the payloads as consecutive records (one per payload,
//!   in order) and answers `Appended { request_id, first_lsn, last_lsn }` once they are
//!   committed, so payload `i` (from 0) is the record at `first_lsn + i`. Any number of
//!   appends may be in flight on one connection; answers come back in any order, matched
//!   by `request_id` (chosen by the app; the sidecar only echoes it). An append the sidecar
//!   cannot take is answered `Rejected` with a reason:
//!
//!   | reason | name | meaning | what the app does |
//!   |---|---|---|---|
//!   | 1 | not-primary | this node is not the primary; nothing was written | send it to `primary` (its client port is `client_addr`; 0 and "" when unknown) |
//!   | 2 | busy | the primary is handing over; nothing was written | retry shortly, on the new primary |
//!   | 3 | unknown-outcome | the node stopped being primary (or shut down) after taking the records: they may or may not end up committed | read the log before retrying |
//!   | 4 | failed | the node cannot write (a failed disk); it will acknowledge nothing again | give up on this node |
//!
//!   An app that disconnects with appends in flight loses nothing: the sidecar still sees
//!   them through, and the records appear in the committed log (or do not, exactly as the
//!   unseen answer would have said).
//! - **Read** (version 3). A lease read: the sidecar answers at once, writing nothing, with
//!   `ReadIndex { request_id, lsn, epoch }` when it is the primary of `epoch` and holds its
//!   lease. The app answers the read from its state once it has applied every record
//!   through `lsn` (epoch-start and config records count as applied when skipped); that
//!   answer is linearizable: it reflects every write acknowledged anywhere before the read
//!   reached the sidecar, and nothing uncommitted (`core::lease`, "Reads", has the
//!   argument). If a `Role` frame reports another epoch or role before the app got there,
//!   it gives up and the client retries. A node that is not the primary answers `Rejected`
//!   with reason 1 (and the primary, as for appends); a witness, reason 2. Any number may
//!   be in flight; the Rust driver sends one at a time, gathering the reads that arrive
//!   while one is out into the next, so a busy application asks once per round trip.
//! - **Subscribe.** Streams every committed record from `from_lsn` on, in LSN order, as
//!   `Records` frames, never a record above the commit LSN: the app may apply what it
//!   receives at once. `Records` carries WAL records exactly as `wal/FORMAT.md` lays them out
//!   ("Record"), back to back; the app verifies each record's CRC (and that LSNs are dense)
//!   before applying it, and skips epoch-start records (kind 2), which carry no payload, and
//!   config records (kind 3: the membership, for the sidecars; `node::members`).
//!   `from_lsn` may be above the sidecar's commit LSN (the stream then starts when the
//!   commit LSN gets there). If the log no longer holds `from_lsn` (it was truncated after a
//!   snapshot) the sidecar first streams its newest snapshot (below), then the records
//!   after it; with no snapshot to give it answers `Error` and closes. A subscription from
//!   LSN 1 also starts with the newest snapshot when there is one (an application
//!   starting from nothing restores rather than replays). A `Role` frame comes first and
//!   again on every change of role, epoch, primary or primary's address. One subscription
//!   per connection.
//! - **Snapshots, asked for.** Every `--snapshot-interval` (or after
//!   `--snapshot-after-bytes` of log) the sidecar sends `SnapshotRequest` on each
//!   subscribed connection. The app answers, on any connection (the Rust driver opens a new
//!   one so that the log keeps flowing), with `SnapshotOffer { lsn, epoch }`, the body as
//!   `SnapshotChunk { offset, data }` frames in order from offset 0, and `SnapshotDone`;
//!   the sidecar closes that connection once the snapshot is stored. `lsn` must be an LSN
//!   the app has applied (the snapshot covers exactly the records through it) and
//!   committed; `epoch` is that record's epoch, or 0 if the app does not know it (the
//!   sidecar fills it in from its log, and refuses a snapshot whose non-zero epoch
//!   disagrees with it). An offer not newer than the sidecar's newest snapshot is read and
//!   dropped. `SnapshotDecline` says "not now"; an app that neither offers nor declines is
//!   not waited for: the sidecar logs a warning, counts it
//!   (`understudy_snapshot_requests_unanswered_total`) and does not truncate the log.
//! - **Restore.** `RestoreBegin { lsn, epoch, body_len }`, `RestoreChunk { offset, data }`
//!   frames in order, `RestoreEnd`: the app replaces its state by the snapshot's, which
//!   covers every record through `lsn`; `Records` that follow start at `lsn + 1`. It comes
//!   at the start of a subscription (above), in the middle of one when the node replaced
//!   its log by a snapshot from the primary (a backup that fell too far behind), or in
//!   answer to `SnapshotFetch`. The sidecar verified every chunk's checksum before sending
//!   it.
//! - **Liveness.** The sidecar counts its application as live while some connection holds a
//!   subscription and answers every `Ping` (sent on that connection each heartbeat interval,
//!   with a nonce that grows) with a `Pong` echoing the nonce within a few heartbeat
//!   intervals, and, when `--app-addr` is set, while the application accepts connections
//!   there. `applied_lsn` is the last record the application has applied (0 if none), shown
//!   in `/status`. An application that stops answering is treated as gone: a primary whose
//!   application has been gone for `--app-timeout` hands over to a backup whose application
//!   is live, and a backup whose application is gone does not stand for election. A
//!   session of version 1 gets no pings; its application counts as live while subscribed.
//! - **Error** is always the last frame on a connection: the sidecar closes it after
//!   sending it (bad frame, oversized frame, unknown version, a frame in the wrong place).
//!   Other connections are not affected.
//!
//! # Frames
//!
//! All integers are little-endian and unsigned. Every frame is
//!
//! ```text
//! +-----------+----------+------------------------+
//! | len: u32  | type: u8 | body (len - 1 bytes)   |
//! +-----------+----------+------------------------+
//! ```
//!
//! where `len` counts the type byte and the body (not itself), is at least 1 and at most
//! [`FRAME_LEN_MAX`] (64 MiB + 4 KiB: one largest WAL record plus headers); a larger `len`
//! is refused as soon as the 4 length bytes arrive, before anything is allocated. In the
//! bodies below, `str` is `len: u32` then that many bytes of UTF-8; `bytes…` is the rest of
//! the frame. A frame whose fields do not exactly fill its body is refused.
//!
//! App to sidecar:
//!
//! | type | frame | body |
//! |---|---|---|
//! | 0x01 | Hello | version u16 (this is version [`PROTOCOL_VERSION`] = 3; the sidecar also speaks 2, without `Read`, and 1, without pings) |
//! | 0x02 | Append | request_id u64, count u32 (1 ..= [`APPEND_COUNT_MAX`]), then `count` times: len u32 (≤ 64 MiB, `wal::format::RECORD_PAYLOAD_LEN_MAX`), payload (len bytes) |
//! | 0x03 | Subscribe | from_lsn u64 (≥ 1) |
//! | 0x04 | Status | (empty) |
//! | 0x10 | SnapshotOffer | lsn u64, epoch u64 (0 = unknown) |
//! | 0x11 | SnapshotChunk | offset u64, data bytes… |
//! | 0x12 | SnapshotDone | (empty) |
//! | 0x13 | SnapshotDecline | (empty) |
//! | 0x14 | SnapshotFetch | (empty) |
//! | 0x05 | Pong | nonce u64, applied_lsn u64 |
//! | 0x06 | Read | request_id u64 (version 3) |
//! | 0x07 | TakeClients | (empty; version 4: the first frame after `Welcome` on a connection that only receives client connections, see below) |
//!
//! Sidecar to app:
//!
//! | type | frame | body |
//! |---|---|---|
//! | 0x81 | Welcome | version u16, node_id u16, frame_len_max u32, append_count_max u32 |
//! | 0x82 | Appended | request_id u64, first_lsn u64, last_lsn u64 (1 ≤ first_lsn ≤ last_lsn) |
//! | 0x83 | Rejected | request_id u64, reason u8 (table above), primary u16 (0 = unknown), client_addr str (`IP:PORT` or empty), message str |
//! | 0x84 | Records | records bytes… (one or more WAL records, committed, in LSN order) |
//! | 0x85 | Role | role u8 (1 backup, 2 candidate, 3 primary), epoch u64, primary u16 (0 = unknown), primary_client_addr str, commit_lsn u64 |
//! | 0x86 | StatusReply | json str (the node's status, as `GET /status` serves it) |
//! | 0x87 | Error | message str |
//! | 0x88 | Ping | nonce u64 |
//! | 0x89 | ReadIndex | request_id u64, lsn u64, epoch u64 (version 3) |
//! | 0x8A | ClientConnection | (empty; version 4: carries one TCP socket as `SCM_RIGHTS` ancillary data, see below) |
//! | 0x8B | TakingClients | (empty; version 4: `TakeClients` accepted) |
//! | 0x90 | SnapshotRequest | (empty) |
//! | 0x91 | RestoreBegin | lsn u64, epoch u64, body_len u64 |
//! | 0x92 | RestoreChunk | offset u64, data bytes… |
//! | 0x93 | RestoreEnd | (empty) |
//!
//! # Client connections (version 4)
//!
//! An application that serves its own clients may take the connections made to its
//! primary's client port straight into its own hands, so that no proxy copies their bytes.
//! It opens a second connection to the app socket and sends `Hello` (version 4), then
//! `TakeClients`; it sends nothing more on that connection. The sidecar answers `Welcome`,
//! then `TakingClients`. From then on, while this node is primary, holds its lease and has
//! no proxy-only mode (follow mode), the sidecar may hand it each connection accepted on
//! the client port, instead of forwarding it: one `ClientConnection` frame, sent with one
//! `sendmsg` that carries the accepted TCP socket as `SCM_RIGHTS` ancillary data. The
//! application must read that connection with `recvmsg` (a plain `read` drops the socket);
//! [`crate::client::clients`] does this. The sidecar keeps no copy of the socket: from the
//! hand-over on, the connection is the application's, and so is closing it when its node
//! stops being primary (as for the connections a backup's client port forwards straight to
//! the application, the app API's contract keeps it safe meanwhile: nothing commits and no
//! lease read is answered but through a primary holding its lease). Connections are handed
//! over only while one such connection is open and its socket buffer has room; otherwise
//! they are forwarded as before. One application connection takes clients at a time: a
//! newer `TakeClients` takes over from the older one, whose connection the sidecar then
//! closes (after the connections already queued for it), so that a restarted application
//! takes over before the sidecar has noticed that its old connection ended.
//!
//! For example, `Appended { request_id: 7, first_lsn: 1, last_lsn: 2 }` is
//!
//! ```text
//! 19 00 00 00  82  07 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  02 00 00 00 00 00 00 00
//! ```
//!
//! # This module
//!
//! [`Frame`] and its codec: [`decode`] (a plain function over a byte slice, for fuzzing),
//! [`AppCodec`] (tokio-util `Decoder`/`Encoder`), and [`FrameReader`]/[`FrameWriter`], which
//! read frames from and write frames to a byte stream. Decoding splits payloads and record
//! bytes from the read buffer as [`Bytes`] without copying; [`FrameWriter`] writes large
//! ones straight from their `Bytes`. It does not check record CRCs (the receiver of `Records`
//! does) and knows nothing of sockets or of the node.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::{Epoch, Lsn, NodeId};

/// The protocol version this build speaks. Version 2 added `Ping` and `Pong`; version 3
/// `Read` and `ReadIndex`; version 4 `TakeClients` and `ClientConnection`.
pub const PROTOCOL_VERSION: u16 = 4;

/// The oldest version the sidecar still speaks (a session of it gets no pings).
pub const PROTOCOL_VERSION_MIN: u16 = 1;

/// The largest frame (`len` field): one largest WAL record or payload, plus headers.
pub const FRAME_LEN_MAX: usize = wal::format::RECORD_PAYLOAD_LEN_MAX + 4096;

/// The most payloads one `Append` may carry. It bounds the memory a frame full of empty
/// payloads can make the sidecar allocate (one `Bytes` handle per payload).
pub const APPEND_COUNT_MAX: usize = 16 * 1024;

/// Bytes before the body: the length field and the type byte.
pub const FRAME_HEADER_LEN: usize = 5;

/// Bytes of an `Append` frame (`len` field) besides its payloads' own bytes: the type byte,
/// request id and count, and a 4-byte length per payload.
pub const fn append_frame_len(count: usize, payload_bytes: usize) -> usize {
    1 + 8 + 4 + 4 * count + payload_bytes
}

// One largest payload must fit in an `Append`, and one largest record in a `Records` frame
// (with its type byte, hence `<`).
const _: () = assert!(append_frame_len(1, wal::format::RECORD_PAYLOAD_LEN_MAX) <= FRAME_LEN_MAX);
const _: () = assert!(wal::format::record_len(wal::format::RECORD_PAYLOAD_LEN_MAX) < FRAME_LEN_MAX);
const _: () = assert!(FRAME_LEN_MAX <= u32::MAX as usize);
const _: () = assert!(APPEND_COUNT_MAX <= u32::MAX as usize);

/// Body bytes per `RestoreChunk`/`SnapshotChunk` the driver sends: one stored chunk.
pub const APP_CHUNK_LEN: usize = wal::snapshot::SNAPSHOT_CHUNK_LEN;

// A driver chunk must fit in one app frame with its offset and type byte.
const _: () = assert!(APP_CHUNK_LEN + 64 <= FRAME_LEN_MAX);

/// Bodies at least this long are written from their own `Bytes` instead of being copied into
/// the write buffer.
const BULK_LEN_MIN: usize = 16 * 1024;

/// The write buffer is written out once it holds this much, even before a flush.
const WRITE_BUFFER_LEN_MAX: usize = 64 * 1024;

/// The initial read buffer.
const READ_BUFFER_LEN: usize = 64 * 1024;

/// Why the sidecar refused an append (`Rejected.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RejectReason {
    /// This node is not the primary; nothing was written.
    NotPrimary = 1,
    /// The primary is handing over; nothing was written.
    Busy = 2,
    /// The records may or may not end up committed.
    UnknownOutcome = 3,
    /// The node cannot write; it will acknowledge nothing again.
    Failed = 4,
}

impl RejectReason {
    pub fn from_u8(byte: u8) -> Option<RejectReason> {
        match byte {
            1 => Some(RejectReason::NotPrimary),
            2 => Some(RejectReason::Busy),
            3 => Some(RejectReason::UnknownOutcome),
            4 => Some(RejectReason::Failed),
            _ => None,
        }
    }
}

/// A node's role, as the application sees it in a `Role` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows the primary of its epoch, or waits to hear of one.
    Backup,
    /// Asked for votes in its epoch and is waiting for them.
    Candidate,
    /// Elected in its epoch and holding the lease: the node that takes appends.
    Primary,
}

fn role_to_u8(role: Role) -> u8 {
    match role {
        Role::Backup => 1,
        Role::Candidate => 2,
        Role::Primary => 3,
    }
}

fn role_from_u8(byte: u8) -> Option<Role> {
    match byte {
        1 => Some(Role::Backup),
        2 => Some(Role::Candidate),
        3 => Some(Role::Primary),
        _ => None,
    }
}

/// An app API frame, in either direction (the module docs say which way each goes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    // App to sidecar.
    Hello {
        version: u16,
    },
    Append {
        request_id: u64,
        payloads: Vec<Bytes>,
    },
    Subscribe {
        from_lsn: Lsn,
    },
    Status,
    SnapshotOffer {
        lsn: Lsn,
        epoch: Epoch,
    },
    SnapshotChunk {
        offset: u64,
        data: Bytes,
    },
    SnapshotDone,
    SnapshotDecline,
    SnapshotFetch,
    Pong {
        nonce: u64,
        applied_lsn: Lsn,
    },
    Read {
        request_id: u64,
    },
    TakeClients,
    // Sidecar to app.
    Welcome {
        version: u16,
        node_id: NodeId,
        frame_len_max: u32,
        append_count_max: u32,
    },
    Appended {
        request_id: u64,
        first_lsn: Lsn,
        last_lsn: Lsn,
    },
    Rejected {
        request_id: u64,
        reason: RejectReason,
        primary: Option<NodeId>,
        /// The primary's client port as `IP:PORT`, or empty when unknown.
        client_addr: String,
        message: String,
    },
    Records {
        bytes: Bytes,
    },
    Role {
        role: Role,
        epoch: Epoch,
        primary: Option<NodeId>,
        /// The primary's client port as `IP:PORT`, or empty when unknown.
        primary_client_addr: String,
        commit_lsn: Lsn,
    },
    StatusReply {
        json: String,
    },
    Error {
        message: String,
    },
    SnapshotRequest,
    RestoreBegin {
        lsn: Lsn,
        epoch: Epoch,
        body_len: u64,
    },
    RestoreChunk {
        offset: u64,
        data: Bytes,
    },
    RestoreEnd,
    Ping {
        nonce: u64,
    },
    ReadIndex {
        request_id: u64,
        lsn: Lsn,
        epoch: Epoch,
    },
    ClientConnection,
    TakingClients,
}

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const APPEND: u8 = 0x02;
    pub const SUBSCRIBE: u8 = 0x03;
    pub const STATUS: u8 = 0x04;
    pub const SNAPSHOT_OFFER: u8 = 0x10;
    pub const SNAPSHOT_CHUNK: u8 = 0x11;
    pub const SNAPSHOT_DONE: u8 = 0x12;
    pub const SNAPSHOT_DECLINE: u8 = 0x13;
    pub const SNAPSHOT_FETCH: u8 = 0x14;
    pub const PONG: u8 = 0x05;
    pub const READ: u8 = 0x06;
    pub const TAKE_CLIENTS: u8 = 0x07;
    pub const WELCOME: u8 = 0x81;
    pub const APPENDED: u8 = 0x82;
    pub const REJECTED: u8 = 0x83;
    pub const RECORDS: u8 = 0x84;
    pub const ROLE: u8 = 0x85;
    pub const STATUS_REPLY: u8 = 0x86;
    pub const ERROR: u8 = 0x87;
    pub const PING: u8 = 0x88;
    pub const READ_INDEX: u8 = 0x89;
    pub const CLIENT_CONNECTION: u8 = 0x8A;
    pub const TAKING_CLIENTS: u8 = 0x8B;
    pub const SNAPSHOT_REQUEST: u8 = 0x90;
    pub const RESTORE_BEGIN: u8 = 0x91;
    pub const RESTORE_CHUNK: u8 = 0x92;
    pub const RESTORE_END: u8 = 0x93;
}

impl Frame {
    /// The frame's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        name_of(self.type_byte())
    }

    /// Whether the application sends this frame (rather than the sidecar).
    pub fn is_from_app(&self) -> bool {
        self.type_byte() < 0x80
    }

    fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::Append { .. } => kind::APPEND,
            Frame::Subscribe { .. } => kind::SUBSCRIBE,
            Frame::Status => kind::STATUS,
            Frame::SnapshotOffer { .. } => kind::SNAPSHOT_OFFER,
            Frame::SnapshotChunk { .. } => kind::SNAPSHOT_CHUNK,
            Frame::SnapshotDone => kind::SNAPSHOT_DONE,
            Frame::SnapshotDecline => kind::SNAPSHOT_DECLINE,
            Frame::SnapshotFetch => kind::SNAPSHOT_FETCH,
            Frame::Pong { .. } => kind::PONG,
            Frame::Ping { .. } => kind::PING,
            Frame::Read { .. } => kind::READ,
            Frame::TakeClients => kind::TAKE_CLIENTS,
            Frame::ClientConnection => kind::CLIENT_CONNECTION,
            Frame::TakingClients => kind::TAKING_CLIENTS,
            Frame::ReadIndex { .. } => kind::READ_INDEX,
            Frame::Welcome { .. } => kind::WELCOME,
            Frame::Appended { .. } => kind::APPENDED,
            Frame::Rejected { .. } => kind::REJECTED,
            Frame::Records { .. } => kind::RECORDS,
            Frame::Role { .. } => kind::ROLE,
            Frame::StatusReply { .. } => kind::STATUS_REPLY,
            Frame::Error { .. } => kind::ERROR,
            Frame::SnapshotRequest => kind::SNAPSHOT_REQUEST,
            Frame::RestoreBegin { .. } => kind::RESTORE_BEGIN,
            Frame::RestoreChunk { .. } => kind::RESTORE_CHUNK,
            Frame::RestoreEnd => kind::RESTORE_END,
        }
    }

    /// The frame's `len` field: bytes after the length field.
    pub fn encoded_len(&self) -> usize {
        let body = match self {
            Frame::Hello { .. } => 2,
            Frame::Append { payloads, .. } => {
                return append_frame_len(payloads.len(), payloads.iter().map(Bytes::len).sum())
            }
            Frame::Subscribe { .. } => 8,
            Frame::Status
            | Frame::SnapshotDone
            | Frame::SnapshotDecline
            | Frame::SnapshotFetch
            | Frame::SnapshotRequest
            | Frame::RestoreEnd
            | Frame::TakeClients
            | Frame::ClientConnection
            | Frame::TakingClients => 0,
            Frame::SnapshotOffer { .. } => 16,
            Frame::SnapshotChunk { data, .. } | Frame::RestoreChunk { data, .. } => 8 + data.len(),
            Frame::Welcome { .. } => 2 + 2 + 4 + 4,
            Frame::Appended { .. } => 24,
            Frame::Rejected {
                client_addr,
                message,
                ..
            } => 8 + 1 + 2 + 4 + client_addr.len() + 4 + message.len(),
            Frame::Records { bytes } => bytes.len(),
            Frame::Role {
                primary_client_addr,
                ..
            } => 1 + 8 + 2 + 4 + primary_client_addr.len() + 8,
            Frame::StatusReply { json } => 4 + json.len(),
            Frame::Error { message } => 4 + message.len(),
            Frame::RestoreBegin { .. } => 24,
            Frame::Pong { .. } => 16,
            Frame::Ping { .. } => 8,
            Frame::Read { .. } => 8,
            Frame::ReadIndex { .. } => 24,
        };
        1 + body
    }

    /// Appends the encoded frame to `dst`.
    ///
    /// Panics if the frame exceeds [`FRAME_LEN_MAX`] or an `Append` carries more than
    /// [`APPEND_COUNT_MAX`] payloads: senders keep within the limits (the driver batches
    /// within them, the sidecar's `Records` batches are bounded), so only a bug gets here.
    pub fn encode(&self, dst: &mut BytesMut) {
        self.encode_parts(dst, None);
    }

    /// Encodes into `dst`, except that bodies of at least [`BULK_LEN_MIN`] bytes are not
    /// copied when `bulk` is given: each is recorded as `(offset in dst, bytes)`, to be
    /// written at that point of `dst`.
    fn encode_parts(&self, dst: &mut BytesMut, mut bulk: Option<&mut Vec<(usize, Bytes)>>) {
        let len = self.encoded_len();
        assert!(
            len <= FRAME_LEN_MAX,
            "{} frame of {len} bytes exceeds frame_len_max {FRAME_LEN_MAX}",
            self.name()
        );
        let mut put_bytes = |dst: &mut BytesMut, bytes: &Bytes| match bulk.as_deref_mut() {
            Some(bulk) if bytes.len() >= BULK_LEN_MIN => bulk.push((dst.len(), bytes.clone())),
            _ => dst.extend_from_slice(bytes),
        };
        dst.reserve(FRAME_HEADER_LEN + len.min(BULK_LEN_MIN));
        dst.put_u32_le(len as u32);
        dst.put_u8(self.type_byte());
        match self {
            Frame::Hello { version } => dst.put_u16_le(*version),
            Frame::Append {
                request_id,
                payloads,
            } => {
                assert!(
                    payloads.len() <= APPEND_COUNT_MAX,
                    "Append of {} payloads exceeds append_count_max {APPEND_COUNT_MAX}",
                    payloads.len()
                );
                dst.put_u64_le(*request_id);
                dst.put_u32_le(payloads.len() as u32);
                for payload in payloads {
                    dst.put_u32_le(payload.len() as u32);
                    put_bytes(dst, payload);
                }
            }
            Frame::Subscribe { from_lsn } => dst.put_u64_le(from_lsn.get()),
            Frame::Status
            | Frame::SnapshotDone
            | Frame::SnapshotDecline
            | Frame::SnapshotFetch
            | Frame::SnapshotRequest
            | Frame::RestoreEnd
            | Frame::TakeClients
            | Frame::ClientConnection
            | Frame::TakingClients => {}
            Frame::SnapshotOffer { lsn, epoch } => {
                dst.put_u64_le(lsn.get());
                dst.put_u64_le(epoch.get());
            }
            Frame::SnapshotChunk { offset, data } | Frame::RestoreChunk { offset, data } => {
                dst.put_u64_le(*offset);
                put_bytes(dst, data);
            }
            Frame::Welcome {
                version,
                node_id,
                frame_len_max,
                append_count_max,
            } => {
                dst.put_u16_le(*version);
                dst.put_u16_le(node_id.get());
                dst.put_u32_le(*frame_len_max);
                dst.put_u32_le(*append_count_max);
            }
            Frame::Appended {
                request_id,
                first_lsn,
                last_lsn,
            } => {
                dst.put_u64_le(*request_id);
                dst.put_u64_le(first_lsn.get());
                dst.put_u64_le(last_lsn.get());
            }
            Frame::Rejected {
                request_id,
                reason,
                primary,
                client_addr,
                message,
            } => {
                dst.put_u64_le(*request_id);
                dst.put_u8(*reason as u8);
                dst.put_u16_le(primary.map_or(0, NodeId::get));
                put_str(dst, client_addr);
                put_str(dst, message);
            }
            Frame::Records { bytes } => put_bytes(dst, bytes),
            Frame::Role {
                role,
                epoch,
                primary,
                primary_client_addr,
                commit_lsn,
            } => {
                dst.put_u8(role_to_u8(*role));
                dst.put_u64_le(epoch.get());
                dst.put_u16_le(primary.map_or(0, NodeId::get));
                put_str(dst, primary_client_addr);
                dst.put_u64_le(commit_lsn.get());
            }
            Frame::StatusReply { json } => put_str(dst, json),
            Frame::Error { message } => put_str(dst, message),
            Frame::RestoreBegin {
                lsn,
                epoch,
                body_len,
            } => {
                dst.put_u64_le(lsn.get());
                dst.put_u64_le(epoch.get());
                dst.put_u64_le(*body_len);
            }
            Frame::Pong { nonce, applied_lsn } => {
                dst.put_u64_le(*nonce);
                dst.put_u64_le(applied_lsn.get());
            }
            Frame::Ping { nonce } => dst.put_u64_le(*nonce),
            Frame::Read { request_id } => dst.put_u64_le(*request_id),
            Frame::ReadIndex {
                request_id,
                lsn,
                epoch,
            } => {
                dst.put_u64_le(*request_id);
                dst.put_u64_le(lsn.get());
                dst.put_u64_le(epoch.get());
            }
        }
    }
}

fn put_str(dst: &mut BytesMut, s: &str) {
    dst.put_u32_le(s.len() as u32);
    dst.extend_from_slice(s.as_bytes());
}

fn name_of(type_byte: u8) -> &'static str {
    match type_byte {
        kind::HELLO => "Hello",
        kind::APPEND => "Append",
        kind::SUBSCRIBE => "Subscribe",
        kind::STATUS => "Status",
        kind::SNAPSHOT_OFFER => "SnapshotOffer",
        kind::SNAPSHOT_CHUNK => "SnapshotChunk",
        kind::SNAPSHOT_DONE => "SnapshotDone",
        kind::SNAPSHOT_DECLINE => "SnapshotDecline",
        kind::SNAPSHOT_FETCH => "SnapshotFetch",
        kind::PONG => "Pong",
        kind::PING => "Ping",
        kind::READ => "Read",
        kind::READ_INDEX => "ReadIndex",
        kind::TAKE_CLIENTS => "TakeClients",
        kind::CLIENT_CONNECTION => "ClientConnection",
        kind::TAKING_CLIENTS => "TakingClients",
        kind::WELCOME => "Welcome",
        kind::APPENDED => "Appended",
        kind::REJECTED => "Rejected",
        kind::RECORDS => "Records",
        kind::ROLE => "Role",
        kind::STATUS_REPLY => "StatusReply",
        kind::ERROR => "Error",
        kind::SNAPSHOT_REQUEST => "SnapshotRequest",
        kind::RESTORE_BEGIN => "RestoreBegin",
        kind::RESTORE_CHUNK => "RestoreChunk",
        kind::RESTORE_END => "RestoreEnd",
        _ => "unknown",
    }
}

/// Why bytes are not a frame. The connection they came on is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: u64, max: u64 },
    #[error("empty frame (no type byte)")]
    Empty,
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("{frame} frame ends inside its {field} field")]
    Short {
        frame: &'static str,
        field: &'static str,
    },
    #[error("{frame} frame has {extra} bytes after its last field")]
    TrailingBytes { frame: &'static str, extra: usize },
    #[error("{frame} frame: bad {field}")]
    BadField {
        frame: &'static str,
        field: &'static str,
    },
    #[error("Append frame carries {count} payloads, more than the limit of {max}")]
    TooManyPayloads { count: u64, max: u64 },
    #[error("Append frame carries a payload of {len} bytes, more than the limit of {max}")]
    PayloadTooLarge { len: u64, max: u64 },
}

/// Reading or writing frames failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The length of the whole frame at the start of `bytes` (length field included), `None`
/// until its length field is complete, or an error for a length out of bounds. Checked
/// before anything of the body is read or allocated.
fn frame_total_len(bytes: &[u8], frame_len_max: usize) -> Result<Option<usize>, DecodeError> {
    let Some(len) = bytes.get(..4) else {
        return Ok(None);
    };
    let mut word = [0u8; 4];
    word.copy_from_slice(len);
    let len = u32::from_le_bytes(word) as usize;
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    if len > frame_len_max {
        return Err(DecodeError::TooLong {
            len: len as u64,
            max: frame_len_max as u64,
        });
    }
    Ok(Some(4 + len))
}

/// Decodes the frame at the start of `bytes`: `Ok(None)` when more bytes are needed,
/// `Err` when the bytes are not a frame, else the frame and the bytes it took. The length
/// limit is [`FRAME_LEN_MAX`], checked as soon as the length field is complete. This is
/// the fuzz target's entry; streams use [`AppCodec`] or [`FrameReader`], which do not copy.
pub fn decode(bytes: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(total) = frame_total_len(bytes, FRAME_LEN_MAX)? else {
        return Ok(None);
    };
    let Some(frame) = bytes.get(..total) else {
        return Ok(None);
    };
    let frame = decode_frame(Bytes::copy_from_slice(frame))?;
    Ok(Some((frame, total)))
}

/// A cursor over one frame's body.
struct Body {
    bytes: Bytes,
    frame: &'static str,
}

impl Body {
    fn need(&self, len: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Short {
                frame: self.frame,
                field,
            });
        }
        Ok(())
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.bytes.get_u8())
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.bytes.get_u16_le())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.bytes.get_u32_le())
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.bytes.get_u64_le())
    }
    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        let lsn = self.u64(field)?;
        // Above the limit no log reaches, and `next()` of it could overflow.
        if lsn == 0 || lsn > Lsn::LIMIT.get() {
            return Err(self.bad(field));
        }
        Ok(Lsn(lsn))
    }
    fn node(&mut self, field: &'static str) -> Result<Option<NodeId>, DecodeError> {
        let id = self.u16(field)?;
        Ok((id != 0).then_some(NodeId(id)))
    }
    fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(len, field)?;
        Ok(self.bytes.split_to(len))
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u32(field)? as usize;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad(field))
    }
    fn bad(&self, field: &'static str) -> DecodeError {
        DecodeError::BadField {
            frame: self.frame,
            field,
        }
    }
    fn finish(self, frame: Frame) -> Result<Frame, DecodeError> {
        if !self.bytes.is_empty() {
            return Err(DecodeError::TrailingBytes {
                frame: self.frame,
                extra: self.bytes.len(),
            });
        }
        Ok(frame)
    }
}

/// Decodes one whole frame, length field included (its length already checked).
fn decode_frame(mut bytes: Bytes) -> Result<Frame, DecodeError> {
    bytes.advance(4);
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let type_byte = bytes.get_u8();
    let mut body = Body {
        bytes,
        frame: name_of(type_byte),
    };
    let frame = match type_byte {
        kind::HELLO => Frame::Hello {
            version: body.u16("version")?,
        },
        kind::APPEND => {
            let request_id = body.u64("request_id")?;
            let count = body.u32("count")? as usize;
            if count == 0 {
                return Err(body.bad("count (an append of no records)"));
            }
            if count > APPEND_COUNT_MAX {
                return Err(DecodeError::TooManyPayloads {
                    count: count as u64,
                    max: APPEND_COUNT_MAX as u64,
                });
            }
            // Each payload takes at least its 4-byte length, so a count the body cannot
            // hold is refused before the vector is allocated.
            body.need(4 * count, "payload len")?;
            let mut payloads = Vec::with_capacity(count);
            for _ in 0..count {
                let len = body.u32("payload len")? as usize;
                if len > wal::format::RECORD_PAYLOAD_LEN_MAX {
                    return Err(DecodeError::PayloadTooLarge {
                        len: len as u64,
                        max: wal::format::RECORD_PAYLOAD_LEN_MAX as u64,
                    });
                }
                payloads.push(body.take(len, "payload")?);
            }
            Frame::Append {
                request_id,
                payloads,
            }
        }
        kind::SUBSCRIBE => Frame::Subscribe {
            from_lsn: body.lsn("from_lsn")?,
        },
        kind::STATUS => Frame::Status,
        kind::TAKE_CLIENTS => Frame::TakeClients,
        kind::CLIENT_CONNECTION => Frame::ClientConnection,
        kind::TAKING_CLIENTS => Frame::TakingClients,
        kind::SNAPSHOT_OFFER => Frame::SnapshotOffer {
            lsn: body.lsn("lsn")?,
            epoch: Epoch(body.u64("epoch")?),
        },
        kind::SNAPSHOT_CHUNK => Frame::SnapshotChunk {
            offset: body.u64("offset")?,
            data: body.rest(),
        },
        kind::SNAPSHOT_DONE => Frame::SnapshotDone,
        kind::SNAPSHOT_DECLINE => Frame::SnapshotDecline,
        kind::SNAPSHOT_FETCH => Frame::SnapshotFetch,
        kind::WELCOME => {
            let version = body.u16("version")?;
            let node_id = body.u16("node_id")?;
            if node_id == 0 {
                return Err(body.bad("node_id"));
            }
            Frame::Welcome {
                version,
                node_id: NodeId(node_id),
                frame_len_max: body.u32("frame_len_max")?,
                append_count_max: body.u32("append_count_max")?,
            }
        }
        kind::APPENDED => {
            let request_id = body.u64("request_id")?;
            let first_lsn = body.lsn("first_lsn")?;
            let last_lsn = body.lsn("last_lsn")?;
            if last_lsn < first_lsn {
                return Err(body.bad("last_lsn (below first_lsn)"));
            }
            Frame::Appended {
                request_id,
                first_lsn,
                last_lsn,
            }
        }
        kind::REJECTED => {
            let request_id = body.u64("request_id")?;
            let reason = body.u8("reason")?;
            let reason = RejectReason::from_u8(reason).ok_or_else(|| body.bad("reason"))?;
            Frame::Rejected {
                request_id,
                reason,
                primary: body.node("primary")?,
                client_addr: body.string("client_addr")?,
                message: body.string("message")?,
            }
        }
        kind::RECORDS => {
            let bytes = body.rest();
            if bytes.is_empty() {
                return Err(body.bad("records (none)"));
            }
            Frame::Records { bytes }
        }
        kind::ROLE => {
            let role = body.u8("role")?;
            let role = role_from_u8(role).ok_or_else(|| body.bad("role"))?;
            Frame::Role {
                role,
                epoch: Epoch(body.u64("epoch")?),
                primary: body.node("primary")?,
                primary_client_addr: body.string("primary_client_addr")?,
                commit_lsn: Lsn(body.u64("commit_lsn")?),
            }
        }
        kind::STATUS_REPLY => Frame::StatusReply {
            json: body.string("json")?,
        },
        kind::ERROR => Frame::Error {
            message: body.string("message")?,
        },
        kind::SNAPSHOT_REQUEST => Frame::SnapshotRequest,
        kind::RESTORE_BEGIN => Frame::RestoreBegin {
            lsn: body.lsn("lsn")?,
            epoch: Epoch(body.u64("epoch")?),
            body_len: body.u64("body_len")?,
        },
        kind::RESTORE_CHUNK => Frame::RestoreChunk {
            offset: body.u64("offset")?,
            data: body.rest(),
        },
        kind::RESTORE_END => Frame::RestoreEnd,
        kind::PONG => Frame::Pong {
            nonce: body.u64("nonce")?,
            applied_lsn: Lsn(body.u64("applied_lsn")?),
        },
        kind::PING => Frame::Ping {
            nonce: body.u64("nonce")?,
        },
        kind::READ => Frame::Read {
            request_id: body.u64("request_id")?,
        },
        kind::READ_INDEX => Frame::ReadIndex {
            request_id: body.u64("request_id")?,
            lsn: Lsn(body.u64("lsn")?),
            epoch: Epoch(body.u64("epoch")?),
        },
        other => return Err(DecodeError::UnknownType(other)),
    };
    body.finish(frame)
}

/// The tokio-util codec for app API frames (either direction). Payloads and record bytes
/// are split from the read buffer without copying.
#[derive(Debug, Clone, Copy)]
pub struct AppCodec {
    frame_len_max: usize,
}

impl AppCodec {
    pub fn new() -> AppCodec {
        AppCodec {
            frame_len_max: FRAME_LEN_MAX,
        }
    }

    /// A codec that refuses frames longer than `frame_len_max` (at most [`FRAME_LEN_MAX`]).
    pub fn with_frame_len_max(frame_len_max: usize) -> AppCodec {
        AppCodec {
            frame_len_max: frame_len_max.min(FRAME_LEN_MAX),
        }
    }
}

impl Default for AppCodec {
    fn default() -> AppCodec {
        AppCodec::new()
    }
}

impl Decoder for AppCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(total) = frame_total_len(src, self.frame_len_max)? else {
            return Ok(None);
        };
        if src.len() < total {
            // Make room for a little more of the frame at a time, not for all of it: a peer
            // that announces a large frame and sends it slowly holds only what it sent.
            src.reserve((total - src.len()).min(READ_BUFFER_LEN));
            return Ok(None);
        }
        Ok(Some(decode_frame(src.split_to(total).freeze())?))
    }
}

impl Encoder<Frame> for AppCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        frame.encode(dst);
        Ok(())
    }
}

impl Encoder<&Frame> for AppCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        frame.encode(dst);
        Ok(())
    }
}

/// Reads frames from a byte stream (the read half of a socket).
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    codec: AppCodec,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_BUFFER_LEN),
            codec: AppCodec::new(),
        }
    }

    /// The stream back, if nothing past the frames read so far was buffered from it.
    pub fn into_inner(self) -> Result<R, FrameReader<R>> {
        if self.buf.is_empty() {
            Ok(self.inner)
        } else {
            Err(self)
        }
    }

    /// The next frame, or `None` when the stream ended cleanly between frames.
    ///
    /// Cancel safety: cancelling loses nothing (bytes read stay buffered), so it may be
    /// used in `select!`.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(READ_BUFFER_LEN);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(CodecError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame",
                )));
            }
        }
    }
}

/// Writes frames to a byte stream (the write half of a socket). Small frames are gathered
/// in a buffer until [`FrameWriter::flush`]; large payloads and record runs are written
/// straight from their `Bytes` (for `Records`, the WAL's memory map), not copied.
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    bulk: Vec<(usize, Bytes)>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> FrameWriter<W> {
        FrameWriter {
            inner,
            buf: BytesMut::with_capacity(WRITE_BUFFER_LEN_MAX),
            bulk: Vec::new(),
        }
    }

    /// The stream back. Call after [`FrameWriter::flush`]: anything still buffered is
    /// asserted not to be there.
    pub fn into_inner(self) -> W {
        assert!(
            self.buf.is_empty() && self.bulk.is_empty(),
            "a frame writer given up with unwritten bytes"
        );
        self.inner
    }

    /// Queues a frame, writing out what is buffered when it is large; call
    /// [`FrameWriter::flush`] to send everything. Not cancel safe: a cancelled write may
    /// leave half a frame on the stream, so drop the stream after cancelling.
    pub async fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        frame.encode_parts(&mut self.buf, Some(&mut self.bulk));
        if !self.bulk.is_empty() || self.buf.len() >= WRITE_BUFFER_LEN_MAX {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Writes everything queued and flushes the stream.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.write_out().await?;
        self.inner.flush().await
    }

    /// Shuts the stream down for writing, after flushing.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.inner.shutdown().await
    }

    async fn write_out(&mut self) -> io::Result<()> {
        let mut at = 0;
        for (offset, bytes) in self.bulk.drain(..) {
            self.inner.write_all(&self.buf[at..offset]).await?;
            self.inner.write_all(&bytes).await?;
            at = offset;
        }
        self.inner.write_all(&self.buf[at..]).await?;
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        buf.to_vec()
    }

    /// The example in the module docs, byte for byte.
    #[test]
    fn appended_bytes_match_the_documented_example() {
        let bytes = encoded(&Frame::Appended {
            request_id: 7,
            first_lsn: Lsn(1),
            last_lsn: Lsn(2),
        });
        let mut expected = vec![0x19, 0, 0, 0, 0x82];
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        assert_eq!(bytes, expected);
    }

    /// The Append layout: request id, count, then length-prefixed payloads.
    #[test]
    fn append_bytes_match_the_documented_layout() {
        let bytes = encoded(&Frame::Append {
            request_id: 0x0102,
            payloads: vec![Bytes::from_static(b"ab"), Bytes::new()],
        });
        let mut expected = Vec::new();
        expected.extend_from_slice(&23u32.to_le_bytes());
        expected.push(0x02);
        expected.extend_from_slice(&0x0102u64.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(bytes, expected);
    }

    /// A length above the limit is refused from the length field alone.
    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let header = ((FRAME_LEN_MAX + 1) as u32).to_le_bytes();
        assert_eq!(
            decode(&header),
            Err(DecodeError::TooLong {
                len: FRAME_LEN_MAX as u64 + 1,
                max: FRAME_LEN_MAX as u64
            })
        );
        let mut codec = AppCodec::with_frame_len_max(16);
        let mut buf = BytesMut::from(&17u32.to_le_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Decode(DecodeError::TooLong {
                len: 17,
                max: 16
            }))
        ));
    }

    /// An Append whose count cannot fit its body is refused before anything is allocated
    /// for the payloads.
    #[test]
    fn append_count_beyond_the_body_is_refused() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(1u32 + 8 + 4).to_le_bytes());
        bytes.push(0x02);
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&(APPEND_COUNT_MAX as u32).to_le_bytes());
        assert!(matches!(decode(&bytes), Err(DecodeError::Short { .. })));
        let at = bytes.len() - 4;
        bytes[at..].copy_from_slice(&(APPEND_COUNT_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::TooManyPayloads { .. })
        ));
    }

    #[test]
    fn unknown_type_and_trailing_bytes_are_refused() {
        assert_eq!(
            decode(&[1, 0, 0, 0, 0xEE]),
            Err(DecodeError::UnknownType(0xEE))
        );
        assert_eq!(
            decode(&[1, 0, 0, 0, 0x7F]),
            Err(DecodeError::UnknownType(0x7F))
        );
        assert_eq!(
            decode(&[2, 0, 0, 0, 0x04, 9]),
            Err(DecodeError::TrailingBytes {
                frame: "Status",
                extra: 1
            })
        );
        assert_eq!(decode(&[0, 0, 0, 0]), Err(DecodeError::Empty));
    }

    /// The codec hands out payloads that share the read buffer's memory.
    #[test]
    fn codec_splits_payloads_without_copying() {
        let payload = Bytes::from(vec![7u8; 1000]);
        let mut buf = BytesMut::new();
        Frame::Append {
            request_id: 1,
            payloads: vec![payload.clone()],
        }
        .encode(&mut buf);
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let Some(Frame::Append { payloads, .. }) = AppCodec::new().decode(&mut buf).unwrap() else {
            panic!("not an Append");
        };
        let at = payloads[0].as_ptr() as usize;
        assert!(at >= start && at < end, "payload was copied");
        assert_eq!(payloads[0], payload);
    }

    /// Frames written through a FrameWriter (with bulk bodies written from their own
    /// `Bytes`) read back the same through a FrameReader.
    #[tokio::test]
    async fn frames_survive_the_writer_and_the_reader() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let frames = vec![
            Frame::Hello { version: 1 },
            Frame::Records {
                bytes: Bytes::from(vec![3u8; 100_000]),
            },
            Frame::Append {
                request_id: 9,
                payloads: vec![
                    Bytes::from_static(b"x"),
                    Bytes::from(vec![1u8; 40_000]),
                    Bytes::from_static(b"yz"),
                ],
            },
            Frame::Status,
        ];
        let sent = frames.clone();
        let writer = tokio::spawn(async move {
            let mut writer = FrameWriter::new(a);
            for frame in &sent {
                writer.write_frame(frame).await.unwrap();
            }
            writer.shutdown().await.unwrap();
        });
        let mut reader = FrameReader::new(b);
        for frame in &frames {
            assert_eq!(reader.read_frame().await.unwrap().as_ref(), Some(frame));
        }
        assert!(reader.read_frame().await.unwrap().is_none());
        writer.await.unwrap();
    }

    fn lsn() -> impl Strategy<Value = Lsn> {
        (1..=Lsn::LIMIT.get()).prop_map(Lsn)
    }

    fn node() -> impl Strategy<Value = Option<NodeId>> {
        prop_oneof![Just(None), (1u16..).prop_map(|n| Some(NodeId(n)))]
    }

    fn bytes(len_max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..len_max).prop_map(Bytes::from)
    }

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Backup),
            Just(Role::Candidate),
            Just(Role::Primary)
        ]
    }

    fn reason() -> impl Strategy<Value = RejectReason> {
        prop_oneof![
            Just(RejectReason::NotPrimary),
            Just(RejectReason::Busy),
            Just(RejectReason::UnknownOutcome),
            Just(RejectReason::Failed)
        ]
    }

    /// Every frame type, with arbitrary field values.
    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            any::<u16>().prop_map(|version| Frame::Hello { version }),
            (any::<u64>(), proptest::collection::vec(bytes(40), 1..8)).prop_map(
                |(request_id, payloads)| Frame::Append {
                    request_id,
                    payloads
                }
            ),
            lsn().prop_map(|from_lsn| Frame::Subscribe { from_lsn }),
            Just(Frame::Status),
            (lsn(), any::<u64>()).prop_map(|(lsn, epoch)| Frame::SnapshotOffer {
                lsn,
                epoch: Epoch(epoch)
            }),
            (any::<u64>(), bytes(64))
                .prop_map(|(offset, data)| Frame::SnapshotChunk { offset, data }),
            Just(Frame::SnapshotDone),
            Just(Frame::SnapshotDecline),
            Just(Frame::SnapshotFetch),
            Just(Frame::TakeClients),
            Just(Frame::ClientConnection),
            Just(Frame::TakingClients),
            (any::<u64>(), any::<u64>()).prop_map(|(nonce, applied)| Frame::Pong {
                nonce,
                applied_lsn: Lsn(applied)
            }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|request_id| Frame::Read { request_id }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(request_id, lsn, epoch)| {
                Frame::ReadIndex {
                    request_id,
                    lsn: Lsn(lsn),
                    epoch: Epoch(epoch),
                }
            }),
            (any::<u16>(), 1u16.., any::<u32>(), any::<u32>()).prop_map(
                |(version, node_id, frame_len_max, append_count_max)| Frame::Welcome {
                    version,
                    node_id: NodeId(node_id),
                    frame_len_max,
                    append_count_max
                }
            ),
            (any::<u64>(), 1u64..1 << 40, 0u64..1000).prop_map(|(request_id, first, extra)| {
                Frame::Appended {
                    request_id,
                    first_lsn: Lsn(first),
                    last_lsn: Lsn(first + extra),
                }
            }),
            (any::<u64>(), reason(), node(), ".{0,30}", ".{0,60}").prop_map(
                |(request_id, reason, primary, client_addr, message)| Frame::Rejected {
                    request_id,
                    reason,
                    primary,
                    client_addr,
                    message
                }
            ),
            proptest::collection::vec(any::<u8>(), 1..200).prop_map(|bytes| Frame::Records {
                bytes: Bytes::from(bytes)
            }),
            (role(), any::<u64>(), node(), ".{0,30}", any::<u64>()).prop_map(
                |(role, epoch, primary, primary_client_addr, commit_lsn)| Frame::Role {
                    role,
                    epoch: Epoch(epoch),
                    primary,
                    primary_client_addr,
                    commit_lsn: Lsn(commit_lsn)
                }
            ),
            ".{0,100}".prop_map(|json| Frame::StatusReply { json }),
            ".{0,100}".prop_map(|message| Frame::Error { message }),
            Just(Frame::SnapshotRequest),
            (lsn(), any::<u64>(), any::<u64>()).prop_map(|(lsn, epoch, body_len)| {
                Frame::RestoreBegin {
                    lsn,
                    epoch: Epoch(epoch),
                    body_len,
                }
            }),
            (any::<u64>(), bytes(64))
                .prop_map(|(offset, data)| Frame::RestoreChunk { offset, data }),
            Just(Frame::RestoreEnd),
        ]
    }

    proptest! {
        /// Every frame decodes to itself, taking exactly its encoded bytes, through both
        /// `decode` and the codec; every proper prefix asks for more bytes.
        #[test]
        fn every_frame_round_trips(frame in frame()) {
            let bytes = encoded(&frame);
            prop_assert_eq!(bytes.len(), FRAME_HEADER_LEN - 1 + frame.encoded_len());
            prop_assert_eq!(decode(&bytes), Ok(Some((frame.clone(), bytes.len()))));
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
            }
            let mut buf = BytesMut::from(&bytes[..]);
            buf.extend_from_slice(&bytes);
            let mut codec = AppCodec::new();
            for _ in 0..2 {
                let decoded = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decoded.as_ref(), Some(&frame));
            }
            prop_assert!(buf.is_empty());
        }

        /// Decoding arbitrary bytes never panics (the fuzz target's property, on stable).
        #[test]
        fn decode_of_arbitrary_bytes_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = AppCodec::new().decode(&mut buf);
        }

        /// Arbitrary bodies behind a valid length and a known type never panic either, and
        /// what decodes re-encodes to the same bytes.
        #[test]
        fn decode_of_arbitrary_bodies_is_exact(type_byte in prop_oneof![0x01u8..=0x06, 0x10u8..=0x14, 0x81u8..=0x89, 0x90u8..=0x93], body in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut bytes = ((body.len() + 1) as u32).to_le_bytes().to_vec();
            bytes.push(type_byte);
            bytes.extend_from_slice(&body);
            if let Ok(Some((frame, len))) = decode(&bytes) {
                prop_assert_eq!(len, bytes.len());
                prop_assert_eq!(encoded(&frame), bytes);
            }
        }
    }
}
