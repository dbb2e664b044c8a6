//! Wire formats, each with its spec in its module docs and a plain `decode` function that a
//! fuzz target can call.
//!
//! - [`peer`]: sidecar to sidecar: the authenticated handshake and the core's messages, with
//!   WAL records attached to appends byte for byte.

pub mod peer;
