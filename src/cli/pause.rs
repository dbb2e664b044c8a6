//! `understudy pause --admin HOST:PORT` and `understudy resume --admin HOST:PORT`:
//! maintenance mode, as in Patroni. While paused, no automatic failover happens: a paused
//! node does not stand when its primary goes quiet and grants no pre-vote, and a paused
//! primary does not hand over when its application is gone. A planned switchover still
//! works. Each node stores the pause in its data dir, so a restart keeps it, and a primary
//! passes its own to its backups with every heartbeat (a node that was down meanwhile
//! learns it when it rejoins).
//!
//! The command asks the node at `--admin`, then every peer whose admin address that node
//! knows (`/status`), so one address pauses the whole cluster. It prints one line per node
//! and exits 1 if any node could not be reached (those that were are paused regardless).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use hyper::{Method, StatusCode};

use super::{admin_client, status};
use crate::config::AdminToken;

/// How long one node gets to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of `understudy pause` and `understudy resume`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Any node's admin address (its --admin-listen); every peer it knows is asked too.
    #[arg(long, value_name = "HOST:PORT", env = "UNDERSTUDY_ADMIN")]
    pub admin: String,
    #[command(flatten)]
    pub token: admin_client::TokenArgs,
}

/// Pauses (`paused`) or resumes automatic failover on every node reachable from `args.admin`.
pub fn run(args: PauseArgs, paused: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let token = args.token.token()?;
    runtime.block_on(run_async(&args.admin, token.as_ref(), paused))
}

async fn run_async(admin: &str, token: Option<&AdminToken>, paused: bool) -> anyhow::Result<()> {
    let verb = if paused { "pause" } else { "resume" };
    let view = status::fetch_within(admin, TIMEOUT).await?;
    // The node asked first (so that a resumed backup can stand even while others cannot be
    // reached), then its peers by id.
    let mut targets = vec![(view.node_id, admin.to_string())];
    let mut seen = BTreeSet::from([view.node_id]);
    let mut unknown = Vec::new();
    for peer in &view.peers {
        if !seen.insert(peer.node_id) {
            continue;
        }
        match &peer.admin_addr {
            Some(addr) => targets.push((peer.node_id, admin_client::same_scheme(admin, addr))),
            None => unknown.push(peer.node_id),
        }
    }
    // One stamp for every node: the newest command wins everywhere, whatever order the
    // nodes hear it in (`core/health.rs`).
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let mut failures = 0;
    for (node, addr) in &targets {
        let path = format!("/{verb}?stamp={stamp}");
        match admin_client::request_with_token(addr, Method::POST, &path, TIMEOUT, token).await {
            Ok(answer) if answer.status == StatusCode::OK => {
                println!("node {node} ({addr}): {}", answer.body_line());
            }
            Ok(answer) => {
                failures += 1;
                eprintln!(
                    "understudy: node {node} ({addr}) answered {}: {}",
                    answer.status,
                    answer.body_line()
                );
            }
            Err(e) => {
                failures += 1;
                eprintln!("understudy: node {node}: {e:#}");
            }
        }
    }
    for node in &unknown {
        failures += 1;
        eprintln!(
            "understudy: node {node}: its admin address is not known to node {} (it has none, or is not connected); {verb} it through its own admin port",
            view.node_id
        );
    }
    if failures > 0 {
        bail!(
            "{verb}: {failures} of {} nodes were not reached",
            targets.len() + unknown.len()
        );
    }
    Ok(())
}
