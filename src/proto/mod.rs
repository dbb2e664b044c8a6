//! Wire formats, each with its spec in its module docs and a plain `decode` function that a
//! fuzz target can call.
//!
//! - [`peer`]: sidecar to sidecar: the authenticated handshake and the core's messages, with
//!   WAL records attached to appends byte for byte.
//! - [`app`]: application to its local sidecar over a Unix socket: append, subscribe to
//!   committed records, role events, status.

pub mod app;
pub mod peer;
