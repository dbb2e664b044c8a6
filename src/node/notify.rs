//! systemd's service notifications (`Type=notify`, sd_notify(3)) when `NOTIFY_SOCKET` is
//! set, through the `sd-notify` crate: nothing happens otherwise.
//!
//! - `READY=1` once the node has joined its cluster: a primary holding its lease, or a
//!   backup that has heard from its primary within [`REPLICA_HEARTBEAT_AGE_MAX_MS`]. A unit
//!   ordered `After=` this one then starts against a node that serves its role.
//! - `STATUS=` whenever the role, the epoch or the primary changes ("primary, epoch 3",
//!   "backup of node 2, epoch 3", "candidate, epoch 4").
//! - `WATCHDOG=1` at half of `WATCHDOG_USEC` (`WatchdogSec=`), but only while the core loop
//!   keeps publishing its status (every 100 ms): a loop that hangs stops the pings, and
//!   systemd restarts the node, as a crash would.
//! - `STOPPING=1` when the node begins to shut down.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admin::REPLICA_HEARTBEAT_AGE_MAX_MS;
use super::handle::{role_name, NodeStatus};
use crate::core::Role;

/// Whether the node serves its role: what `READY=1` waits for.
fn joined(status: &NodeStatus) -> bool {
    match status.role {
        Role::Primary => status.lease_held,
        Role::Backup => {
            status.primary.is_some()
                && status
                    .heartbeat_age_ms
                    .is_some_and(|age| age <= REPLICA_HEARTBEAT_AGE_MAX_MS)
        }
        Role::Candidate => false,
    }
}

/// The `STATUS=` line for a status.
fn status_line(status: &NodeStatus) -> String {
    match (status.role, status.primary) {
        (Role::Backup, Some(primary)) => {
            format!("backup of node {primary}, epoch {}", status.epoch)
        }
        (role, _) => format!("{}, epoch {}", role_name(role), status.epoch),
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Sends the notifications until `shutdown`; returns at once when not run by systemd.
pub async fn run(mut status: watch::Receiver<Arc<NodeStatus>>, shutdown: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let timeout = sd_notify::watchdog_enabled();
    let watchdog = timeout.is_some();
    let timeout = timeout.unwrap_or(Duration::from_secs(1));
    let ping_every = (timeout / 2).max(Duration::from_millis(10));
    // The core loop counts as alive while its status came within this long.
    let alive_within = timeout.max(Duration::from_millis(500));
    if watchdog {
        info!(
            watchdog_ms = timeout.as_millis() as u64,
            "systemd watchdog: pinging while the core loop runs"
        );
    }
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false;
    let mut last_line = String::new();
    let mut last_status = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
                return;
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                last_status = tokio::time::Instant::now();
                let now = status.borrow_and_update().clone();
                let line = status_line(&now);
                if !ready && joined(&now) {
                    ready = true;
                    info!(status = %line, "joined the cluster: READY=1 sent to systemd");
                    send(&[NotifyState::Ready, NotifyState::Status(&line)]);
                    last_line = line;
                } else if line != last_line {
                    send(&[NotifyState::Status(&line)]);
                    last_line = line;
                }
            }
            _ = ping.tick(), if watchdog => {
                if last_status.elapsed() <= alive_within {
                    send(&[NotifyState::Watchdog]);
                } else {
                    warn!(
                        silent_ms = last_status.elapsed().as_millis() as u64,
                        "the core loop published no status lately: no watchdog ping"
                    );
                }
            }
        }
    }
}
