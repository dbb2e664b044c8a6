//! One act of the demo: the primary loses a part under writes, the cluster answers, the
//! part comes back.
//!
//! Both acts take the same steps and differ in what is killed and what the cluster does
//! about it:
//!
//! | step | `failover` | `app-kill` |
//! |---|---|---|
//! | kill -9 | the primary's sidecar and key-value server (the machine dies) | the primary's key-value server alone; its sidecar keeps running |
//! | what follows | a backup stands after the failover timeout and is elected | the primary reports its application gone (`/status`, `/primary` 503) and after `--app-timeout` hands over to a backup whose application is live |
//! | restart | the sidecar and the key-value server | the key-value server |
//! | the end | the node is a backup of the new primary, caught up, its application live | the same |
//!
//! Each step is a progress line; the table is shown before the kill, after the new
//! primary is known and after the rejoin. The writer writes through a backup's client port
//! all along (moved off the primary before the kill), and the pause it saw is the act's
//! figure. Whether anything acknowledged was lost is checked once, after the last act
//! (`scenario`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::Method;

use super::cluster::{NODES, STATUS_TIMEOUT};
use super::writer::{self, Target};
use super::{ms, wait_for, wait_settled, write_for, Stage};
use crate::cli::admin_client;

/// One act, as `--act` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Act {
    Failover,
    AppKill,
}

impl Act {
    /// What the act shows, as its opening line says it.
    fn headline(self) -> &'static str {
        match self {
            Act::Failover => {
                "act: failover, the primary's machine dies (kill -9 of its sidecar and its \
                 key-value server)"
            }
            Act::AppKill => {
                "act: app-kill, the primary's application dies (kill -9 of its key-value \
                 server; its sidecar keeps running)"
            }
        }
    }

    /// What the kill is, for the summary.
    fn kill(self) -> &'static str {
        match self {
            Act::Failover => "kill -9",
            Act::AppKill => "kill -9 of the application",
        }
    }
}

/// What one act measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outcome {
    /// The node whose part was killed (and restarted).
    pub(super) killed: u16,
    /// From the kill to the writer's first acknowledged write after it.
    pub(super) first_write: Duration,
    /// From the writer's last acknowledged write before the kill to its first after it.
    pub(super) pause: Duration,
}

/// Runs `act` once on a settled cluster; leaves it settled again, every part running.
pub(super) async fn run(stage: &mut Stage<'_>, act: Act) -> anyhow::Result<Outcome> {
    stage.screen.say(act.headline());
    write_for(stage.cluster, stage.phase).await?;
    let (old, old_epoch) = wait_settled(
        stage.cluster,
        &stage.admins,
        "a settled cluster",
        stage.patience,
        NODES,
        None,
    )
    .await?;
    stage.show().await;
    run_write_off(stage, old).await?;

    let (sidecar, app) = stage.cluster.pids_of(old);
    let (sidecar, app) = (sidecar.unwrap_or(0), app.unwrap_or(0));
    let acked_before = stage.writer.log().acks.len();
    stage.screen.say(match act {
        Act::Failover => format!(
            "kill -9 node {old}, the primary: its sidecar (pid {sidecar}) and its key-value \
             server (pid {app}); {acked_before} writes acknowledged so far"
        ),
        Act::AppKill => format!(
            "kill -9 node {old}'s key-value server (pid {app}), the primary's application; \
             its sidecar (pid {sidecar}) keeps running; {acked_before} writes acknowledged so \
             far"
        ),
    });
    let kill_wall = SystemTime::now();
    let kill_at = Instant::now();
    match act {
        Act::Failover => stage.cluster.kill_node(old).await,
        Act::AppKill => stage.cluster.kill_app(old).await,
    }
    let killed_at = Instant::now();
    if act == Act::AppKill {
        run_app_gone(stage, old, kill_wall).await?;
    }

    let writer = &stage.writer;
    let (before, after) = wait_for(
        stage.cluster,
        "the writer's first acknowledged write after the kill",
        stage.patience,
        || {
            // The last acknowledgement before the kill was sent, and the first after it
            // took effect (one in between was an old primary's answer).
            let log = writer.log();
            let (before, after) = (log.around(kill_at).0, log.around(killed_at).1);
            async move { after.map(|after| (before, after)) }
        },
    )
    .await?;
    let first_write = after.saturating_duration_since(kill_at);
    let pause = after.saturating_duration_since(before.unwrap_or(kill_at));
    let failed = stage.writer.log().failed;
    // After an app kill the old primary's sidecar still answers, and must follow the new
    // primary too.
    let answering = match act {
        Act::Failover => NODES - 1,
        Act::AppKill => NODES,
    };
    let (new, new_epoch) = wait_settled(
        stage.cluster,
        &stage.admins,
        "a new primary",
        stage.patience,
        answering,
        Some(old),
    )
    .await?;
    let lead = match act {
        Act::Failover => {
            format!("node {new} is the new primary (epoch {new_epoch}, was {old_epoch})")
        }
        Act::AppKill => format!(
            "node {old} handed over to node {new}, whose application is live: node {new} is \
             the new primary (epoch {new_epoch}, was {old_epoch}), node {old} a backup"
        ),
    };
    stage.screen.say(format!(
        "{lead}; the writer's first acknowledged write came {:.0} ms after the kill\nwrites \
         paused {:.0} ms (from the last acknowledged write before the kill to the first after \
         it); {failed} attempts so far were cut off or refused",
        ms(first_write),
        ms(pause),
    ));
    stage.show().await;

    write_for(stage.cluster, stage.phase).await?;
    let target = stage
        .admins
        .statuses()
        .await
        .into_iter()
        .flatten()
        .find(|view| view.node_id == new)
        .map_or(0, |view| view.commit_lsn);
    let restarted = Instant::now();
    match act {
        Act::Failover => {
            let (sidecar, app) = stage.cluster.start_node(old)?;
            stage.screen.say(format!(
                "restarting node {old}: sidecar pid {sidecar}, key-value server pid {app}; the \
                 primary's commit LSN is {target}"
            ));
        }
        Act::AppKill => {
            let app = stage.cluster.start_app(old)?;
            stage.screen.say(format!(
                "restarting node {old}'s key-value server: pid {app}; the primary's commit LSN \
                 is {target}"
            ));
        }
    }
    let (epoch, durable, applied) = run_rejoined(stage, old, new, target).await?;
    let gap = stage.writer.log().longest_gap_since(restarted);
    let lead = match act {
        Act::Failover => format!(
            "node {old} rejoined as a backup of node {new} (epoch {epoch}) and caught up {:.1} \
             s after the restart",
            restarted.elapsed().as_secs_f64()
        ),
        Act::AppKill => format!(
            "node {old}'s application is live again: node {old} is a backup of node {new} \
             (epoch {epoch}) and caught up {:.1} s after the restart",
            restarted.elapsed().as_secs_f64()
        ),
    };
    stage.screen.say(format!(
        "{lead}: its log is durable to LSN {durable}, its key-value server replayed it to LSN \
         {applied}\nthe longest pause in writes meanwhile: {:.0} ms",
        ms(gap),
    ));
    stage.show().await;
    Ok(Outcome {
        killed: old,
        first_write,
        pause,
    })
}

/// Writes through a backup's port, so that the client sees the kill from a node whose
/// client port survives it: moves the writer off node `primary` if it writes through it.
async fn run_write_off(stage: &mut Stage<'_>, primary: u16) -> anyhow::Result<()> {
    if stage.writer.target().node != primary {
        return Ok(());
    }
    let ports = stage.cluster.ports;
    let node = (1..=NODES).find(|&id| id != primary).unwrap_or(1);
    stage.writer.retarget(Target {
        node,
        addr: ports.client(node),
    });
    stage.screen.say(format!(
        "the writer moves to node {node}'s client port {}",
        ports.client(node)
    ));
    stage
        .wait_for_write("a write through the new port", Instant::now())
        .await
}

/// Waits for node `old` to report its application gone, and says so with what its
/// `/primary` answers meanwhile.
async fn run_app_gone(
    stage: &mut Stage<'_>,
    old: u16,
    kill_wall: SystemTime,
) -> anyhow::Result<()> {
    let admin = stage.admins.of(old).to_string();
    let (since_ms, gone) = wait_for(
        stage.cluster,
        &format!("node {old} to report its application gone"),
        stage.patience,
        || {
            let admin = admin.clone();
            async move {
                let view = crate::cli::status::fetch_within(&admin, STATUS_TIMEOUT)
                    .await
                    .ok()?;
                let app = view.app_health?;
                (app.expected && !app.live).then_some((app.since_ms, app.gone))
            }
        },
    )
    .await?;
    let kill_ms = kill_wall
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let primary = match admin_client::request(&admin, Method::GET, "/primary", STATUS_TIMEOUT).await
    {
        Ok(answer) => format!("{} ({})", answer.status.as_u16(), answer.body_line()),
        Err(error) => format!("nothing ({error:#})"),
    };
    stage.screen.say(format!(
        "node {old}'s sidecar reports its application gone {} ms after the kill ({}); its \
         /primary answers {primary}; it hands over once the application has been gone for \
         the app timeout ({})",
        since_ms.saturating_sub(kill_ms),
        gone.as_deref().unwrap_or("no reason given"),
        humantime::format_duration(stage.app_timeout),
    ));
    Ok(())
}

/// Waits until node `old` is a backup of node `new` that the primary sees connected, its
/// log durable to `target`, its application live and its key-value server applied to
/// `target`; returns its epoch, durable LSN and the server's applied LSN.
async fn run_rejoined(
    stage: &mut Stage<'_>,
    old: u16,
    new: u16,
    target: u64,
) -> anyhow::Result<(u64, u64, u64)> {
    let app_addr = stage.cluster.ports.app(old);
    let admins = &stage.admins;
    wait_for(
        stage.cluster,
        &format!("node {old} to rejoin and catch up"),
        stage.patience,
        || async move {
            let views = admins.statuses().await;
            let own = views.iter().flatten().find(|v| v.node_id == old)?;
            let from_primary = views.iter().flatten().find(|v| v.node_id == new)?;
            let seen = from_primary
                .peers
                .iter()
                .any(|p| p.node_id == old && p.connected);
            let joined = own.role == "backup" && own.primary == Some(new) && seen;
            let app_live = own.app_health.as_ref().is_some_and(|app| app.live);
            if !joined || !app_live || own.durable_lsn < target {
                return None;
            }
            let applied: u64 = writer::info_field(app_addr, "applied_lsn")
                .await
                .ok()?
                .parse()
                .ok()?;
            (applied >= target).then_some((own.epoch, own.durable_lsn, applied))
        },
    )
    .await
}

/// The trials' figures for one act: minimum, median, maximum.
pub(super) fn summary(act: Act, outcomes: &[Outcome]) -> String {
    let stats = |mut values: Vec<Duration>| {
        values.sort_unstable();
        let median = if values.len() % 2 == 1 {
            values[values.len() / 2]
        } else {
            (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2
        };
        format!(
            "min {:.0} ms, median {:.0} ms, max {:.0} ms",
            ms(values[0]),
            ms(median),
            ms(values[values.len() - 1])
        )
    };
    let list = |values: &[Duration]| {
        values
            .iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let name = match act {
        Act::Failover => "failover",
        Act::AppKill => "app-kill",
    };
    let first: Vec<Duration> = outcomes.iter().map(|o| o.first_write).collect();
    let pause: Vec<Duration> = outcomes.iter().map(|o| o.pause).collect();
    format!(
        "{name} over {} trials, as the writer saw it through a backup's client port:\n  \
         {} to the first acknowledged write: {}\n    (each, ms: {})\n  \
         writes paused (last acknowledged before the kill to first after): {}\n    (each, ms: {})",
        outcomes.len(),
        act.kill(),
        stats(first.clone()),
        list(&first),
        stats(pause.clone()),
        list(&pause),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_gives_min_median_and_max() {
        let ms = |n| Duration::from_millis(n);
        let outcome = |first, pause| Outcome {
            killed: 1,
            first_write: ms(first),
            pause: ms(pause),
        };
        let text = summary(
            Act::Failover,
            &[outcome(600, 610), outcome(550, 560), outcome(900, 950)],
        );
        assert!(
            text.contains(
                "kill -9 to the first acknowledged write: min 550 ms, median 600 ms, max 900 ms"
            ),
            "{text}"
        );
        assert!(text.contains("(each, ms: 600 550 900)"), "{text}");
        let even = summary(Act::AppKill, &[outcome(500, 500), outcome(700, 700)]);
        assert!(even.contains("median 600 ms"), "{even}");
        assert!(
            even.starts_with("app-kill over 2 trials")
                && even.contains("kill -9 of the application to"),
            "{even}"
        );
    }
}
