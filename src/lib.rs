//! understudy: a primary-backup replication sidecar.
//!
//! - [`core`]: the replication state machine: roles, epochs, votes, heartbeats, log matching,
//!   commit rule and lease. Messages in, actions out; no I/O, no clock reads.
#![warn(clippy::unwrap_used)]

pub mod core;

pub use wal::{Epoch, Lsn, NodeId};
