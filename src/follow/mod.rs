//! Follow mode: replication of an application's own files, for an application that cannot
//! be changed (DESIGN, "Two ways to attach an application").
//!
//! | file | what it owns |
//! |---|---|
//! | `change.rs` | one change to the directory (append, install, delete, rename, cut) as the payload of one log record, and its codec |
//! | `capture.rs` | the primary's side: inotify events turned into changes, in kernel order |
//! | `materialize.rs` | a backup's side: changes applied to its copy of the directory, strictly (a directory that is not the log's is refused), synced on demand |
//! | `replay.rs` | a backup's copy kept up with the committed log: applied, synced, then the LSN reached recorded; a directory found ahead of its record rebuilt |
//!
//! Not built yet: the node's use of them (capture on the primary proposing records,
//! replay on backups, the application started on promotion and the directory rewound on
//! demotion), the client port's reply barrier, and snapshots of the directory.

pub mod capture;
pub mod change;
pub mod materialize;
pub mod replay;
