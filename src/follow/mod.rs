//! Follow mode: replication of an application's own files, for an application that cannot
//! be changed (DESIGN, "Two ways to attach an application").
//!
//! | file | what it owns |
//! |---|---|
//! | `change.rs` | one change to the directory (append, install, delete, rename, cut) as the payload of one log record, and its codec |
//! | `capture.rs` | the primary's side: inotify events turned into changes, in kernel order |
//! | `materialize.rs` | a backup's side: changes applied to its copy of the directory, synced before the LSN they reach is recorded |
//!
//! Not built yet: the node's use of them (capture on the primary, materialization on
//! backups, the application started on promotion and the directory rewound on demotion),
//! the client port's reply barrier, and snapshots of the directory.

pub mod capture;
pub mod change;
pub mod materialize;
