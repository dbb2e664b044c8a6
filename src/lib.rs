//! understudy: a primary-backup replication sidecar.
//!
//! - [`core`]: the replication state machine: roles, epochs, votes, heartbeats, log matching,
//!   commit rule and lease. Messages in, actions out; no I/O, no clock reads.
//! - [`cli`]: the command line, one file per subcommand.
//! - [`config`]: flag validation: peers, timing, sync replicas, the cluster secret.
//! - [`proto`]: wire formats: peer frames and the application API, with their codecs.
//! - [`node`]: the I/O shell: peer transport, disk, app API, admin HTTP, client proxy.
//! - [`client`]: the application library: a `StateMachine` trait and the `Driver` that runs it.
//! - [`follow`]: follow mode: an application's own files captured as log records and
//!   materialized on backups.
#![warn(clippy::unwrap_used)]

// `understudy demo` compiles the key-value example's server into the binary
// (`cli/demo/`), and that code names this crate `understudy::`, as an application would.
extern crate self as understudy;

pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod follow;
pub mod node;
pub mod proto;
pub mod tls;

pub use wal::{Epoch, Lsn, NodeId};
