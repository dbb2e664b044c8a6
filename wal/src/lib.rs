//! `wal`: understudy's on-disk formats. No networking, no async.
//!
//! - [`types`]: the protocol's numbers (`Lsn`, `Epoch`, `NodeId`).
#![warn(clippy::unwrap_used)]

pub mod types;

pub use types::{Epoch, Lsn, NodeId};
