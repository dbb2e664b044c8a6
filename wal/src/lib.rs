//! `wal`: understudy's on-disk formats. No networking, no async, no peers.
//!
//! - [`format`]: the byte layout (FORMAT.md, compiled in here) and the record codec.
//! - [`types`]: the protocol's numbers (`Lsn`, `Epoch`, `NodeId`).
//! - [`error`]: the crate's typed error.
//! - [`segment`]: one segment file: header, scanning and verifying its records.
//! - [`wal`](mod@crate::log): the log: open with recovery, append, sync, truncate, read.
//! - [`writer`]: the group-commit writer thread shared by many appenders.
//! - [`mark`]: the durable mark, the highest LSN the log has reported durable, kept by the
//!   writer beside the log so that a start can tell a log that lost records.
//! - [`reader`]: iterating records from any LSN over memory-mapped segments; scrubbing them.
//! - [`repair`]: rewriting damaged records in place with a peer's copies.
//! - [`snapshot`]: snapshot files written and verified as streams of checksummed chunks.
//! - [`meta`]: the node metadata file (identity, epoch, vote), replaced atomically.
//! - [`fs`]: fsync and atomic-install helpers.
#![warn(clippy::unwrap_used)]

pub mod error;
pub mod format;
pub mod fs;
pub mod log;
pub mod mark;
pub mod meta;
pub mod reader;
pub mod repair;
pub mod segment;
pub mod snapshot;
pub mod types;
pub mod writer;

pub use error::{Corruption, Error, IoOp, Mismatch, Result};
pub use format::{RecordKind, RecordRef};
pub use log::{Damage, Options, SyncPolicy, Wal};
pub use types::{Epoch, Lsn, NodeId};
