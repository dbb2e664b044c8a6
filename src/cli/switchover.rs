//! `understudy switchover --admin HOST:PORT [--to N]`: a planned switchover. `--admin` may
//! be any node's admin port: the command reads its `/status`, and if it is not the primary,
//! asks the primary's admin port (which the node learned from the primary's handshake).
//! The primary (`POST /switchover?to=N`) stops taking appends, waits until node N holds every
//! record, and tells N to stand; without `--to` it picks the backup itself (one whose
//! application is live, then the most up to date, then the highest priority). This command
//! then prints the target and how long writes were paused. A refusal or a timeout is one
//! line in words, and exit 1.
//!
//! It does not wait for N to finish its election: `understudy status` or N's `/primary`
//! shows that a moment later.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use hyper::{Method, StatusCode};

use super::{admin_client, status};
use crate::node::admin::{SwitchoverResponse, SWITCHOVER_WAIT_MAX};

/// How long a node gets to answer `/status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of `understudy switchover`.
#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// Any node's admin address (its --admin-listen); the primary's is found from it.
    #[arg(long, value_name = "HOST:PORT", env = "UNDERSTUDY_ADMIN")]
    pub admin: String,
    /// The node to hand the primary role to (default: the best backup, chosen by the
    /// primary).
    #[arg(long, value_name = "NODE_ID", value_parser = clap::value_parser!(u16).range(1..))]
    pub to: Option<u16>,
    #[command(flatten)]
    pub token: admin_client::TokenArgs,
}

pub fn run(args: SwitchoverArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let token = args.token.token()?;
    let admin = runtime.block_on(primary_admin(&args.admin))?;
    let (path, asked) = match args.to {
        Some(to) => (format!("/switchover?to={to}"), format!("node {to}")),
        None => ("/switchover".to_string(), "the best backup".to_string()),
    };
    // The server gives up after SWITCHOVER_WAIT_MAX; wait a little longer to hear it say so.
    let answer = runtime.block_on(admin_client::request_with_token(
        &admin,
        Method::POST,
        &path,
        SWITCHOVER_WAIT_MAX + Duration::from_secs(5),
        token.as_ref(),
    ))?;
    let response: SwitchoverResponse = serde_json::from_slice(&answer.body).map_err(|_| {
        anyhow!(
            "switchover to {asked}: the admin port {admin} answered {}: {}",
            answer.status,
            answer.body_line()
        )
    })?;
    let target = response
        .to
        .map_or_else(|| asked.clone(), |to| format!("node {to}"));
    if answer.status != StatusCode::OK || response.outcome != "handed_over" {
        bail!("switchover to {target}: {}", response.message);
    }
    println!(
        "switchover to {target}: handed over; writes paused {}",
        pause_words(response.paused_us)
    );
    Ok(())
}

/// The admin address of the primary, found from any node's: the node itself if it is the
/// primary, else the address its primary announced.
pub(crate) async fn primary_admin(admin: &str) -> anyhow::Result<String> {
    let view = status::fetch_within(admin, STATUS_TIMEOUT).await?;
    if view.role == "primary" {
        return Ok(admin.to_string());
    }
    let Some(primary) = view.primary else {
        bail!(
            "node {} (at {admin}) knows of no primary right now; try again in a moment, or ask another node",
            view.node_id
        );
    };
    view.peers
        .iter()
        .find(|peer| peer.node_id == primary)
        .and_then(|peer| peer.admin_addr.as_deref())
        .map(|addr| admin_client::same_scheme(admin, addr))
        .ok_or_else(|| {
            anyhow!(
                "node {} (at {admin}) follows primary {primary} but does not know its admin address (it has none, or has not connected to this node yet); ask the primary's admin port",
                view.node_id
            )
        })
}

/// "0.4 ms" below 10 ms, else "38 ms".
fn pause_words(paused_us: u64) -> String {
    if paused_us < 10_000 {
        format!("{:.1} ms", paused_us as f64 / 1000.0)
    } else {
        format!("{} ms", paused_us / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_read_in_milliseconds() {
        assert_eq!(pause_words(420), "0.4 ms");
        assert_eq!(pause_words(9_949), "9.9 ms");
        assert_eq!(pause_words(38_200), "38 ms");
    }
}
