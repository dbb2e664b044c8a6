//! The application library: a replicated state machine over the app API.
//!
//! An application implements [`StateMachine`] and hands it to a [`Driver`], which connects
//! to the local sidecar's `--app-socket`, replays the committed log into the state machine,
//! follows the commit stream from then on, and offers [`Driver::propose`]: append a command,
//! wait until it is committed and applied here, and get back what `apply` returned for it.
//!
//! ```no_run
//! use understudy::client::{BoxError, Driver, StateMachine};
//! use understudy::Lsn;
//!
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     type Output = u64;
//!     fn apply(&mut self, _lsn: Lsn, _command: &[u8]) -> u64 {
//!         self.0 += 1;
//!         self.0
//!     }
//!     fn snapshot(&self) -> Vec<u8> {
//!         self.0.to_le_bytes().to_vec()
//!     }
//!     fn restore(&mut self, _lsn: Lsn, snapshot: &[u8]) -> Result<(), BoxError> {
//!         self.0 = u64::from_le_bytes(snapshot.try_into()?);
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let driver = Driver::connect("/var/lib/understudy/app.sock", Counter::default()).await?;
//! let count = driver.propose("tick").await?;
//! println!("{count} ticks; this node is {:?}", driver.role().role);
//! # Ok(())
//! # }
//! ```
//!
//! Many `propose` calls may be in flight at once (from many tasks sharing the driver through
//! an `Arc`). The driver keeps at most [`APPENDS_INFLIGHT_MAX`] `Append` frames unanswered
//! and gathers whatever arrives meanwhile into the next one, so a busy application makes
//! few round trips, not one per command. When an append of two or more commands is
//! answered, the next one waits a moment (until as many commands have been proposed since,
//! at most half the round trip and 1 ms) so that callers who propose again as soon as they
//! are answered go out together with those already waiting, not one commit later; the
//! driver stops waiting where that does not pay (callers on their own schedule), and
//! `UNDERSTUDY_GATHER=off` in the application's environment turns it off. With
//! `redis-benchmark -c 50` against the key-value example this took 20.7k to 25.6k SET/s and
//! 52 to 40 us of CPU per SET (medians of 7 runs, `benches/README.md`).
//!
//! **Which runtime.** Every batch is a round of wake-ups between the proposers, the
//! driver's writer and reader tasks and the socket. On a current-thread runtime they stay on
//! one thread; on tokio's multi-thread runtime they cross threads, each crossing a context
//! switch. `cargo bench --bench commit` (256 in flight, log on tmpfs, `benches/README.md`)
//! committed 328-382 k records/s at 3.9-4.4 us of CPU per record across the application and
//! the three nodes with the application on one thread, against 210-255 k records/s at
//! 6.1-7.1 us on the multi-thread runtime. The key-value example and the sidecar run on one
//! thread; an application whose own work needs more threads can still give the driver a
//! runtime of its own.
//!
//! It does not retry, redirect or reconnect: a [`ProposeError`] says what happened and what
//! the caller may do, and a driver whose connection is gone stays gone (connect a new one,
//! restoring from a snapshot of the old one's state if it has one). When the sidecar asks
//! for a snapshot, the driver captures the state between two applies
//! ([`StateMachine::capture`]), encodes it on a blocking thread and uploads it on a
//! connection of its own, while the log goes on being applied.
//!
//! It uses nothing of the sidecar but what [`crate::proto::app`] specifies (its frames,
//! constants and [`Role`]) and the `wal` record format, so an application in another
//! language can do what it does from those docs.

pub mod clients;
mod driver;

pub use driver::{Driver, RoleInfo, Submitted, APPENDS_INFLIGHT_MAX};

/// The node's role, as reported in [`RoleInfo`].
pub use crate::proto::app::Role;

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::proto::app::{CodecError, DecodeError};
use crate::{Lsn, NodeId};

/// The error type `restore` may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application's state, replicated by applying the committed log in order.
///
/// # Correctness
/// - `apply` is called exactly once per committed application record, in LSN order, with
///   no gaps; only committed records are applied, so the state never has to be rolled back.
///   Epoch-start records (written by each new primary) never reach `apply`, so the LSNs it
///   sees may skip those.
/// - `apply` must be deterministic: the same commands in the same order give the same state
///   and output on every node. No clocks, randomness or outside I/O may decide the result.
///   A command that makes no sense is still applied (as a no-op or an error output), never
///   refused by panicking: every node would refuse it the same way, forever.
/// - `snapshot` captures the state after every record applied so far (the driver calls it
///   between two applies), and `restore(lsn, bytes)` on a fresh value rebuilds exactly the
///   state whose snapshot was taken at `lsn`.
///
/// `apply` runs on the driver's task, with the state locked; keep it short and do not block.
/// So does `capture` (or `snapshot`, which the default `capture` calls): nothing is applied
/// and no ping is answered while it runs, so a state machine whose `snapshot` takes long
/// should capture its state cheaply and leave the encoding to the job ([`Capture`]).
pub trait StateMachine: Send + 'static {
    /// What `apply` returns; [`Driver::propose`] hands it to the proposer (on other nodes,
    /// and for records proposed by others, it is dropped).
    type Output: Send + 'static;

    /// Applies the committed record at `lsn`.
    fn apply(&mut self, lsn: Lsn, command: &[u8]) -> Self::Output;

    /// The state as bytes, for [`StateMachine::restore`].
    fn snapshot(&self) -> Vec<u8>;
    /// The state now, as a job that returns exactly the bytes `snapshot` returns now. The
    /// driver calls it between two applies and runs the job on a blocking thread
    /// (`tokio::task::spawn_blocking`) while the log goes on being applied: only the
    /// capture holds up the application. The default captures by calling `snapshot` at
    /// once; override it when the state can be kept cheaply (reference-counted values, a
    /// persistent map) and encoded later.
    fn capture(&self) -> Capture {
        let bytes = self.snapshot();
        Box::new(move || bytes)
    }

    /// Replaces the state with the one `snapshot` captured at `lsn`.
    fn restore(&mut self, lsn: Lsn, snapshot: &[u8]) -> Result<(), BoxError>;
}

/// A snapshot captured by [`StateMachine::capture`], to be encoded off the apply path.
pub type Capture = Box<dyn FnOnce() -> Vec<u8> + Send + 'static>;

/// Why a proposal did not return `apply`'s output. Typed by what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the primary; nothing was written. Send the command to `primary`,
    /// whose client port is `client_addr` (each `None` when unknown).
    #[error("this node is not the primary (primary: {})", primary.map_or("unknown".to_owned(), |p| p.to_string()))]
    NotPrimary {
        primary: Option<NodeId>,
        client_addr: Option<SocketAddr>,
    },
    /// The primary is handing over; nothing was written. Retry shortly, on the new primary.
    #[error("the primary is handing over; retry on the new primary")]
    Busy,
    /// The command may or may not be committed (the node stopped being primary after taking
    /// it, or the connection went after it was sent). Read the state before retrying.
    #[error("the outcome is unknown: the command may or may not be committed")]
    Unknown,
    /// The node cannot write (a failed disk) and will acknowledge nothing again.
    #[error("the node cannot write: {0}")]
    Failed(String),
    /// The driver has no connection to the sidecar; the command was not sent.
    #[error("not connected to the sidecar; the command was not sent")]
    Disconnected,
    /// The command is larger than a record may be; it was not sent.
    #[error("command of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
}

/// Why a [`Driver::read`](driver::Driver::read_linearizable) could not be answered. Nothing
/// was read; every case may be retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// This node is not the primary: read on `primary`, whose client port is `client_addr`
    /// (each `None` when unknown).
    #[error("this node is not the primary (primary: {})", primary.map_or("unknown".to_owned(), |p| p.to_string()))]
    NotPrimary {
        primary: Option<NodeId>,
        client_addr: Option<SocketAddr>,
    },
    /// This node serves no reads right now (a witness handing over); retry shortly.
    #[error("this node serves no reads now; retry shortly")]
    Busy,
    /// The node's role or epoch changed before the state got to the read's LSN: retry.
    #[error("this node stopped being primary before the read could be answered; retry")]
    RoleChanged,
    /// The driver has no connection to the sidecar.
    #[error("not connected to the sidecar")]
    Disconnected,
}

/// Why the driver could not connect, or why its connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to the app socket {}", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("app socket I/O failed")]
    Io(#[source] std::io::Error),
    #[error("bad frame from the sidecar")]
    Decode(#[source] DecodeError),
    #[error("the sidecar closed the connection")]
    Closed,
    #[error("the sidecar did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the sidecar refused: {message}")]
    Refused { message: String },
    #[error("the sidecar speaks app api version {found}; this driver speaks {supported}")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("unexpected {frame} frame from the sidecar {during}")]
    Unexpected {
        frame: &'static str,
        during: &'static str,
    },
    #[error("the sidecar answered request {request_id}, which is not in flight")]
    UnknownRequest { request_id: u64 },
    #[error("the sidecar answered request {request_id} of {expected} commands with {got} lsns")]
    AppendedMismatch {
        request_id: u64,
        expected: usize,
        got: u64,
    },
    #[error("corrupt record from the sidecar (expected lsn {lsn}): {reason}")]
    Corrupt { lsn: Lsn, reason: wal::Corruption },
    #[error("record with lsn {found} where lsn {expected} was due")]
    OutOfOrder { expected: Lsn, found: Lsn },
    #[error("restoring the state machine from its snapshot at lsn {lsn} failed")]
    Restore {
        lsn: Lsn,
        #[source]
        source: BoxError,
    },
    #[error("the driver was dropped")]
    Dropped,
    #[error("the sidecar restores a snapshot at lsn {lsn}, behind the applied lsn {applied_lsn}")]
    RestoreBehind { lsn: Lsn, applied_lsn: Lsn },
    #[error("restore chunk of {len} bytes at offset {found} where offset {expected} was due (body of {body_len} bytes)")]
    RestoreOffset {
        expected: u64,
        found: u64,
        len: u64,
        body_len: u64,
    },
}

impl From<CodecError> for ClientError {
    fn from(error: CodecError) -> ClientError {
        match error {
            CodecError::Io(error) => ClientError::Io(error),
            CodecError::Decode(error) => ClientError::Decode(error),
        }
    }
}
