//! `understudy switchover --admin HOST:PORT --to N`: a planned switchover, asked of the
//! primary's admin port (`POST /switchover?to=N`). The primary stops taking appends, waits
//! until node N holds every record, and tells N to stand; this command then prints how long
//! writes were paused. A refusal or a timeout is one line in words, and exit 1.
//!
//! It does not wait for N to finish its election: `understudy status` or N's `/primary`
//! shows that a moment later.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use hyper::{Method, StatusCode};

use super::admin_client;
use crate::node::admin::{SwitchoverResponse, SWITCHOVER_WAIT_MAX};

/// Flags of `understudy switchover`.
#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// The current primary's admin address (its --admin-listen).
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: String,
    /// The node to hand the primary role to.
    #[arg(long, value_name = "NODE_ID", value_parser = clap::value_parser!(u16).range(1..))]
    pub to: u16,
}

pub fn run(args: SwitchoverArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let to = args.to;
    // The server gives up after SWITCHOVER_WAIT_MAX; wait a little longer to hear it say so.
    let answer = runtime.block_on(admin_client::request(
        &args.admin,
        Method::POST,
        &format!("/switchover?to={to}"),
        SWITCHOVER_WAIT_MAX + Duration::from_secs(5),
    ))?;
    let response: SwitchoverResponse = serde_json::from_slice(&answer.body).map_err(|_| {
        anyhow!(
            "switchover to node {to}: the admin port {} answered {}: {}",
            args.admin,
            answer.status,
            answer.body_line()
        )
    })?;
    if answer.status != StatusCode::OK || response.outcome != "handed_over" {
        bail!("switchover to node {to}: {}", response.message);
    }
    println!(
        "switchover to node {to}: handed over; writes paused {}",
        pause_words(response.paused_us)
    );
    Ok(())
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
