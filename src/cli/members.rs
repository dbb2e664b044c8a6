//! `understudy members list|add|remove|promote --admin HOST:PORT`: the cluster's
//! configuration, and changes to it. `--admin` may be any node's admin port: the command
//! asks that node who the primary is and sends the change to the primary's admin port (the
//! only node that can write a config record). A change is answered once its config record
//! is committed; a refusal is one line and exit 1.
//!
//! - `add ID=HOST:PORT`: a new member, as a learner; it becomes a voter by itself once it
//!   has caught up (or with `promote`). Start the new node first (`--initial-cluster-state
//!   existing`, its `--peers` naming the cluster and itself).
//! - `remove ID`: a member leaves. Removing the primary hands over to the best backup first
//!   (a switchover), then asks the new primary to remove it.
//! - `promote ID`: a caught-up learner becomes a voter now.
//! - `set-addr ID=HOST:PORT`: a member moved; every node dials it at the new address.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::{admin_client, status, switchover};
use crate::node::admin::{MEMBERS_WAIT_MAX, SWITCHOVER_WAIT_MAX};

/// How long a node gets to answer a read.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// After handing over for `remove` of the primary: how long to wait for the new primary.
const NEW_PRIMARY_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Print the configuration: every member, voter or learner, and its catch-up progress.
    List(ListArgs),
    /// Add a member (as a learner; it becomes a voter once caught up): ID=HOST:PORT.
    Add(ChangeArgs),
    /// Remove a member (the primary hands over first).
    Remove(ChangeArgs),
    /// Make a caught-up learner a voter now.
    Promote(ChangeArgs),
    /// Give a member a new peer address (it moved): ID=HOST:PORT. Every node dials it there,
    /// whatever its own --peers says.
    SetAddr(ChangeArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Any node's admin address (its --admin-listen).
    #[arg(long, value_name = "HOST:PORT", env = "UNDERSTUDY_ADMIN")]
    pub admin: String,
    /// Print the primary's `/members` answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// `ID=HOST:PORT` for add and set-addr (the member's id and peer address), `ID`
    /// otherwise.
    #[arg(value_name = "MEMBER")]
    pub member: String,
    /// Any node's admin address (its --admin-listen); the primary's is found from it.
    #[arg(long, value_name = "HOST:PORT", env = "UNDERSTUDY_ADMIN")]
    pub admin: String,
    #[command(flatten)]
    pub token: admin_client::TokenArgs,
}

/// `/members` as this command reads it.
#[derive(Debug, Deserialize)]
struct MembersView {
    node_id: u16,
    primary: Option<u16>,
    members: ConfigView,
    peers: Vec<PeerView>,
}

#[derive(Debug, Deserialize)]
struct ConfigView {
    config_lsn: u64,
    committed: bool,
    voters: Vec<u16>,
    learners: Vec<u16>,
}

#[derive(Debug, Deserialize)]
struct PeerView {
    node_id: u16,
    addr: String,
    connected: bool,
    matched_lsn: u64,
    lag_records: u64,
    last_heard_ms: Option<u64>,
}

pub fn run(command: MembersCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        match command {
            MembersCommand::List(args) => list(args).await,
            MembersCommand::Add(args) => {
                let (id, addr) = id_and_addr("add", &args.member)?;
                let target = format!("/members/add?id={id}&addr={}", encode(&addr));
                change(&args, &target, &format!("add node {id} at {addr}")).await
            }
            MembersCommand::SetAddr(args) => {
                let (id, addr) = id_and_addr("set-addr", &args.member)?;
                let target = format!("/members/set-addr?id={id}&addr={}", encode(&addr));
                change(&args, &target, &format!("node {id} now at {addr}")).await
            }
            MembersCommand::Remove(args) => {
                let id = parse_id(&args.member)?;
                remove(&args, id).await
            }
            MembersCommand::Promote(args) => {
                let id = parse_id(&args.member)?;
                let target = format!("/members/promote?id={id}");
                change(&args, &target, &format!("promote node {id}")).await
            }
        }
    })
}

/// `ID=HOST:PORT`, checked.
fn id_and_addr(command: &str, member: &str) -> anyhow::Result<(u16, String)> {
    let (id, addr) = member
        .split_once('=')
        .ok_or_else(|| anyhow!("members {command} {member}: give ID=HOST:PORT"))?;
    let id = parse_id(id)?;
    crate::config::PeerAddr::parse(addr)
        .map_err(|e| anyhow!("members {command} {member}: {addr:?}: {e}"))?;
    Ok((id, addr.to_string()))
}

fn parse_id(text: &str) -> anyhow::Result<u16> {
    match text.trim().parse::<u16>() {
        Ok(id) if (1..=64).contains(&id) => Ok(id),
        _ => bail!("{text:?} is not a node id (1 to 64)"),
    }
}

/// `[` and `]` (an IPv6 address) are not allowed in a query as they are.
fn encode(addr: &str) -> String {
    addr.replace('[', "%5B").replace(']', "%5D")
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    // The primary's view has every member's progress; any node's has the configuration.
    let admin = switchover::primary_admin(&args.admin)
        .await
        .unwrap_or_else(|_| args.admin.clone());
    let answer = admin_client::request(&admin, Method::GET, "/members", READ_TIMEOUT).await?;
    if answer.status != StatusCode::OK {
        bail!(
            "the admin port {admin} answered /members with {}: {}",
            answer.status,
            answer.body_line()
        );
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body).trim_end());
        return Ok(());
    }
    let view: MembersView = serde_json::from_slice(&answer.body).map_err(|e| {
        anyhow!("the admin port {admin} sent /members this command cannot read: {e}")
    })?;
    let config = &view.members;
    println!(
        "configuration at lsn {} ({}), as node {} knows it",
        config.config_lsn,
        if config.committed {
            "committed"
        } else {
            "a change in progress"
        },
        view.node_id
    );
    println!(
        "{:<6} {:<8} {:<8} {:<28} {:>10} {:>8} {:>9}",
        "node", "member", "role", "address", "matched", "behind", "heard"
    );
    let mut ids: Vec<u16> = config
        .voters
        .iter()
        .chain(config.learners.iter())
        .copied()
        .collect();
    ids.sort_unstable();
    for id in ids {
        let member = if config.voters.contains(&id) {
            "voter"
        } else {
            "learner"
        };
        let role = if view.primary == Some(id) {
            "primary"
        } else {
            "backup"
        };
        match view.peers.iter().find(|p| p.node_id == id) {
            Some(peer) => {
                let primary_view = view.primary == Some(view.node_id);
                let (matched, behind) = if primary_view {
                    (peer.matched_lsn.to_string(), peer.lag_records.to_string())
                } else {
                    ("-".into(), "-".into())
                };
                let heard = match (peer.connected, peer.last_heard_ms) {
                    (_, Some(ms)) => format!("{ms} ms"),
                    (true, None) => "connected".into(),
                    (false, None) => "never".into(),
                };
                println!(
                    "{id:<6} {member:<8} {role:<8} {:<28} {matched:>10} {behind:>8} {heard:>9}",
                    peer.addr
                );
            }
            None => println!(
                "{id:<6} {member:<8} {role:<8} {:<28} {:>10} {:>8} {:>9}",
                "(this node)", "-", "-", "-"
            ),
        }
    }
    Ok(())
}

/// Sends `target` to the primary's admin port and prints the outcome.
async fn change(args: &ChangeArgs, target: &str, what: &str) -> anyhow::Result<()> {
    let token = args.token.token()?;
    let admin = switchover::primary_admin(&args.admin).await?;
    let answer = admin_client::request_with_token(
        &admin,
        Method::POST,
        target,
        MEMBERS_WAIT_MAX + Duration::from_secs(5),
        token.as_ref(),
    )
    .await?;
    if answer.status != StatusCode::OK {
        bail!("{what}: {}", answer.body_line());
    }
    println!("{what}: {}", answer.body_line());
    Ok(())
}

/// `remove ID`; the primary hands over first when it is the one leaving.
async fn remove(args: &ChangeArgs, id: u16) -> anyhow::Result<()> {
    let admin = switchover::primary_admin(&args.admin).await?;
    let view = status::fetch_within(&admin, READ_TIMEOUT).await?;
    if view.node_id == id {
        let token = args.token.token()?;
        println!("node {id} is the primary: handing over first");
        let answer = admin_client::request_with_token(
            &admin,
            Method::POST,
            "/switchover",
            SWITCHOVER_WAIT_MAX + Duration::from_secs(5),
            token.as_ref(),
        )
        .await?;
        if answer.status != StatusCode::OK {
            bail!(
                "remove node {id}: the hand-over it needs first failed: {}",
                answer.body_line()
            );
        }
        // Wait until the old primary follows a new one, then ask that one.
        let deadline = Instant::now() + NEW_PRIMARY_WAIT;
        loop {
            if let Ok(view) = status::fetch_within(&admin, READ_TIMEOUT).await {
                if view.primary.is_some_and(|p| p != id) {
                    break;
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "remove node {id}: it handed over, but no new primary was seen within {} s; ask again",
                    NEW_PRIMARY_WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    change(
        args,
        &format!("/members/remove?id={id}"),
        &format!("remove node {id}"),
    )
    .await
}
