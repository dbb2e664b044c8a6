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
//! With `--app redis` (follow mode) the steps differ where Redis does:
//!
//! | step | `failover` | `app-kill` |
//! |---|---|---|
//! | kill -9 | the primary's Redis (its PID from `/status` `app.pid`) and its sidecar | the primary's Redis alone |
//! | what follows | a backup is elected, brings its copy of the directory to the commit, starts Redis on it and serves once Redis accepts connections (`follow.last_start_ms`, reported) | the sidecar's supervisor starts Redis again in place, usually before `--app-timeout`: no failover; if Redis is not back in time, the primary hands over. The demo reports which |
//! | restart | the sidecar (a backup runs no Redis) | nothing: the supervisor restarted Redis, or the old primary is a backup |
//! | the end | the node is a backup of the new primary, its copy of the directory materialized to the commit | the same node serving, or (after a hand-over) as in `failover` |
//!
//! Each step is a progress line; the table is shown before the kill, after the new
//! primary is known and after the rejoin. The writer writes through a backup's client port
//! all along (moved off the primary before the kill), and the pause it saw is the act's
//! figure. Whether anything acknowledged was lost is checked once, after the last act
//! (`scenario`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use hyper::Method;

use super::cluster::{settled, View, NODES, STATUS_TIMEOUT};
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
    fn headline(self, redis: bool) -> &'static str {
        match (self, redis) {
            (Act::Failover, false) => {
                "act: failover, the primary's machine dies (kill -9 of its sidecar and its \
                 key-value server)"
            }
            (Act::AppKill, false) => {
                "act: app-kill, the primary's application dies (kill -9 of its key-value \
                 server; its sidecar keeps running)"
            }
            (Act::Failover, true) => {
                "act: failover, the primary's machine dies (kill -9 of its sidecar and its \
                 Redis)"
            }
            (Act::AppKill, true) => {
                "act: app-kill, the primary's Redis dies (kill -9 of redis-server; its sidecar \
                 keeps running, and supervises it)"
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
    /// With Redis, after a change of primary: the new primary's time from the commit of its
    /// epoch's first record to Redis serving (`follow.last_start_ms`).
    pub(super) redis_start: Option<Duration>,
    /// With Redis, in `app-kill`: whether the sidecar started Redis again in place (no
    /// failover) rather than handing over.
    pub(super) in_place: Option<bool>,
}

/// Runs `act` once on a settled cluster; leaves it settled again, every part running.
pub(super) async fn run(stage: &mut Stage<'_>, act: Act) -> anyhow::Result<Outcome> {
    let redis = stage.cluster.redis();
    stage.screen.say(act.headline(redis));
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
    let sidecar = sidecar.unwrap_or(0);
    let app = if redis {
        let admins = &stage.admins;
        wait_for(
            stage.cluster,
            &format!("node {old}'s /status to name its Redis's PID"),
            stage.patience,
            || async move { admins.status(old).await?.app_pid() },
        )
        .await?
    } else {
        app.unwrap_or(0)
    };
    let acked_before = stage.writer.log().acks.len();
    stage.screen.say(match (act, redis) {
        (Act::Failover, false) => format!(
            "kill -9 node {old}, the primary: its sidecar (pid {sidecar}) and its key-value \
             server (pid {app}); {acked_before} writes acknowledged so far"
        ),
        (Act::AppKill, false) => format!(
            "kill -9 node {old}'s key-value server (pid {app}), the primary's application; \
             its sidecar (pid {sidecar}) keeps running; {acked_before} writes acknowledged so \
             far"
        ),
        (Act::Failover, true) => format!(
            "kill -9 node {old}, the primary: its Redis (pid {app}) and its sidecar (pid \
             {sidecar}); {acked_before} writes acknowledged so far"
        ),
        (Act::AppKill, true) => format!(
            "kill -9 node {old}'s Redis (pid {app}), the primary's application; its sidecar \
             (pid {sidecar}) keeps running; {acked_before} writes acknowledged so far"
        ),
    });
    let kill_wall = SystemTime::now();
    let kill_at = Instant::now();
    if redis && !stage.cluster.kill_redis(old, app) {
        bail!("node {old}'s Redis (pid {app}) was no longer running when it was to be killed");
    }
    match act {
        Act::Failover => stage.cluster.kill_node(old).await,
        Act::AppKill if redis => {}
        Act::AppKill => stage.cluster.kill_app(old).await,
    }
    let killed_at = Instant::now();
    if act == Act::AppKill {
        if redis {
            let kill = Kill {
                old,
                old_epoch,
                pid: app,
                wall: kill_wall,
                at: kill_at,
            };
            return run_redis_app_kill(stage, kill).await;
        }
        run_app_gone(stage, old, kill_wall).await?;
    }

    let (first_write, pause) = first_write_after(stage, kill_at, killed_at).await?;
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
    let (redis_start, started) = if redis {
        redis_started(stage, new).await
    } else {
        (None, String::new())
    };
    stage.screen.say(format!(
        "{lead}; the writer's first acknowledged write came {:.0} ms after the kill\nwrites \
         paused {:.0} ms (from the last acknowledged write before the kill to the first after \
         it); {failed} attempts so far were cut off or refused{started}",
        ms(first_write),
        ms(pause),
    ));
    stage.show().await;

    write_for(stage.cluster, stage.phase).await?;
    let target = commit_lsn(stage, new).await;
    let restarted = Instant::now();
    match act {
        Act::Failover => {
            let (sidecar, app) = stage.cluster.start_node(old)?;
            stage.screen.say(match app {
                Some(app) => format!(
                    "restarting node {old}: sidecar pid {sidecar}, key-value server pid {app}; \
                     the primary's commit LSN is {target}"
                ),
                None => format!(
                    "restarting node {old}'s sidecar: pid {sidecar} (a backup runs no Redis); \
                     the primary's commit LSN is {target}"
                ),
            });
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
    let applied = if redis {
        format!(
            "its copy of Redis's append-only directory is materialized to LSN {applied} (on \
             standby, no Redis running)"
        )
    } else {
        format!("its key-value server replayed it to LSN {applied}")
    };
    stage.screen.say(format!(
        "{lead}: its log is durable to LSN {durable}, {applied}\nthe longest pause in writes \
         meanwhile: {:.0} ms",
        ms(gap),
    ));
    stage.show().await;
    Ok(Outcome {
        killed: old,
        first_write,
        pause,
        redis_start,
        in_place: None,
    })
}

/// The writer's figures for a kill between `kill_at` and `killed_at`: from the kill to the
/// first acknowledged write after it, and from the last acknowledged write before it to
/// that one. Waits for that write.
async fn first_write_after(
    stage: &mut Stage<'_>,
    kill_at: Instant,
    killed_at: Instant,
) -> anyhow::Result<(Duration, Duration)> {
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
    Ok((
        after.saturating_duration_since(kill_at),
        after.saturating_duration_since(before.unwrap_or(kill_at)),
    ))
}

/// Node `id`'s commit LSN as it reports it (0 if it does not answer).
async fn commit_lsn(stage: &Stage<'_>, id: u16) -> u64 {
    stage
        .admins
        .status(id)
        .await
        .map_or(0, |view| view.commit_lsn)
}

/// How long node `id`, a new primary in follow mode, took from the commit of its epoch's
/// first record to Redis serving, and a line saying so (empty if it does not say).
async fn redis_started(stage: &Stage<'_>, id: u16) -> (Option<Duration>, String) {
    let view = stage.admins.status(id).await;
    let pid = view.as_ref().and_then(View::app_pid);
    let start = view
        .as_ref()
        .and_then(|view| view.follow.as_ref()?.last_start_ms);
    match start {
        Some(start) => (
            Some(Duration::from_millis(start)),
            format!(
                "\nnode {id}'s Redis (pid {}) was serving {start} ms after the commit of its \
                 epoch's first record (its copy of the directory brought to the commit, Redis \
                 started on it, loaded its append-only files and accepted a connection)",
                pid.map_or("?".to_string(), |pid| pid.to_string())
            ),
        ),
        None => (None, String::new()),
    }
}

/// A kill of the primary's Redis alone, as it was done.
struct Kill {
    /// The primary, and its epoch.
    old: u16,
    old_epoch: u64,
    /// The Redis killed.
    pid: u32,
    /// When the kill was sent (wall clock, then monotonic).
    wall: SystemTime,
    at: Instant,
}

/// `app-kill` with Redis, after the kill: waits until the cluster is settled with Redis
/// serving again, restarted in place by the old primary's sidecar or started by a new
/// primary, and the writer has had a write acknowledged; says which it was and how long
/// writes paused; after a hand-over, waits for the old primary to be a caught-up backup.
async fn run_redis_app_kill(stage: &mut Stage<'_>, kill: Kill) -> anyhow::Result<Outcome> {
    let Kill { old, old_epoch, .. } = kill;
    let admins = &stage.admins;
    let (new, new_epoch, view) = wait_for(
        stage.cluster,
        "Redis to serve again (restarted in place, or on a new primary)",
        stage.patience,
        || async move {
            let views = admins.statuses().await;
            let (primary, epoch) = settled(&views, usize::from(NODES))?;
            let view = views.iter().flatten().find(|v| v.node_id == primary)?;
            let pid = view.app_pid()?;
            let live = view.app_health.as_ref().is_none_or(|app| app.live);
            (live && (primary != old || pid != kill.pid)).then(|| (primary, epoch, view.clone()))
        },
    )
    .await?;
    // The first acknowledgement after the kill may be a reply Redis sent before it died,
    // held by the client port until its changes were committed; the outage is the longest
    // gap between acknowledgements from the kill until after Redis serves again.
    let back = Instant::now();
    let writer = &stage.writer;
    let (gap_from, gap_to) = wait_for(
        stage.cluster,
        "the writer's first acknowledged write after Redis serves again",
        stage.patience,
        || {
            let gap = writer.log().longest_gap_around(kill.at, back);
            async move { gap }
        },
    )
    .await?;
    let first_write = gap_to.saturating_duration_since(kill.at);
    let pause = gap_to.saturating_duration_since(gap_from);
    let failed = stage.writer.log().failed;
    let pid = view.app_pid().unwrap_or(0);
    let kill_ms = unix_ms(kill.wall);
    let writes = format!(
        "the writer's first acknowledged write after the outage came {:.0} ms after the \
         kill\nwrites paused {:.0} ms (the longest gap between acknowledged writes around the \
         kill: from the last before it until Redis served again); {failed} attempts so far \
         were cut off or refused",
        ms(first_write),
        ms(pause),
    );
    if new == old && new_epoch == old_epoch {
        let app = view.app.clone().unwrap_or_default();
        let after = app.running_since_ms.map_or(String::new(), |since| {
            format!(", {} ms after the kill", since.saturating_sub(kill_ms))
        });
        stage.screen.say(format!(
            "restarted in place: node {old}'s sidecar started Redis again (pid {pid}{after}; \
             restarts so far: {}, the killed run ended with {}), and Redis reloaded its \
             append-only files; no failover: node {old} is still the primary (epoch \
             {old_epoch}), since Redis was back before the app timeout ({}); {writes}",
            app.restarts,
            app.last_exit.as_deref().unwrap_or("?"),
            humantime::format_duration(stage.app_timeout),
        ));
        stage.show().await;
        return Ok(Outcome {
            killed: old,
            first_write,
            pause,
            redis_start: None,
            in_place: Some(true),
        });
    }

    let old_view = stage.admins.status(old).await;
    let old_app = old_view
        .as_ref()
        .and_then(|view| view.app.clone())
        .unwrap_or_default();
    let (redis_start, started) = redis_started(stage, new).await;
    stage.screen.say(format!(
        "handed over: Redis was not serving again on node {old} within the app timeout ({}), \
         so node {old} handed over to node {new}, whose copy of the directory was current \
         (node {old}'s supervisor pauses before each restart: 100 ms, doubled after each run \
         shorter than 30 s, up to 10 s; restarts so far: {}, the last run ended with {}): \
         node {new} is the new primary (epoch {new_epoch}, was {old_epoch}), node {old} a \
         backup; {writes}{started}",
        humantime::format_duration(stage.app_timeout),
        old_app.restarts,
        old_app.last_exit.as_deref().unwrap_or("?"),
    ));
    stage.show().await;

    write_for(stage.cluster, stage.phase).await?;
    let target = commit_lsn(stage, new).await;
    let since = Instant::now();
    let (epoch, durable, applied) = run_rejoined(stage, old, new, target).await?;
    stage.screen.say(format!(
        "node {old} is a caught-up backup of node {new} (epoch {epoch}), on standby with no \
         Redis running: its log is durable to LSN {durable}, its copy of Redis's append-only \
         directory is materialized to LSN {applied} (the primary's commit LSN was {target} \
         when the wait began, {:.1} s before)",
        since.elapsed().as_secs_f64()
    ));
    stage.show().await;
    Ok(Outcome {
        killed: old,
        first_write,
        pause,
        redis_start,
        in_place: Some(false),
    })
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    let kill_ms = unix_ms(kill_wall);
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
/// `target` (with Redis: on standby, its copy of the directory materialized to `target`);
/// returns its epoch, durable LSN and the server's (or the directory's) applied LSN.
async fn run_rejoined(
    stage: &mut Stage<'_>,
    old: u16,
    new: u16,
    target: u64,
) -> anyhow::Result<(u64, u64, u64)> {
    let app_addr = stage.cluster.ports.app(old);
    let redis = stage.cluster.redis();
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
            if redis {
                let follow = own.follow.as_ref()?;
                return (follow.state == "standby" && follow.applied_lsn >= target).then_some((
                    own.epoch,
                    own.durable_lsn,
                    follow.applied_lsn,
                ));
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
    let in_place: Vec<bool> = outcomes.iter().filter_map(|o| o.in_place).collect();
    let paused = if in_place.is_empty() {
        "last acknowledged before the kill to first after"
    } else {
        "the longest gap between acknowledged writes around the kill, until Redis served again"
    };
    let mut text = format!(
        "{name} over {} trials, as the writer saw it through a backup's client port:\n  \
         {} to the first acknowledged write: {}\n    (each, ms: {})\n  \
         writes paused ({paused}): {}\n    (each, ms: {})",
        outcomes.len(),
        act.kill(),
        stats(first.clone()),
        list(&first),
        stats(pause.clone()),
        list(&pause),
    );
    if !in_place.is_empty() {
        let restarted = in_place.iter().filter(|&&in_place| in_place).count();
        text.push_str(&format!(
            "\n  Redis restarted in place by its sidecar (no failover) in {restarted} of {} \
             trials, handed over to a backup in {}",
            in_place.len(),
            in_place.len() - restarted
        ));
    }
    let starts: Vec<Duration> = outcomes.iter().filter_map(|o| o.redis_start).collect();
    if !starts.is_empty() {
        text.push_str(&format!(
            "\n  the new primary's Redis serving after its epoch's first record was committed \
             ({} of {} trials): {}\n    (each, ms: {})",
            starts.len(),
            outcomes.len(),
            stats(starts.clone()),
            list(&starts),
        ));
    }
    text
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
            redis_start: None,
            in_place: None,
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
        assert!(!even.contains("Redis"), "{even}");
    }

    #[test]
    fn the_summary_with_redis_counts_restarts_in_place_and_start_times() {
        let ms = |n| Duration::from_millis(n);
        let outcome = |in_place, start: Option<u64>| Outcome {
            killed: 1,
            first_write: ms(300),
            pause: ms(310),
            redis_start: start.map(ms),
            in_place,
        };
        let app_kill = summary(
            Act::AppKill,
            &[
                outcome(Some(true), None),
                outcome(Some(false), Some(40)),
                outcome(Some(true), None),
            ],
        );
        assert!(
            app_kill.contains("restarted in place by its sidecar (no failover) in 2 of 3 trials, handed over to a backup in 1"),
            "{app_kill}"
        );
        assert!(
            app_kill.contains("committed (1 of 3 trials): min 40 ms"),
            "{app_kill}"
        );
        let failover = summary(
            Act::Failover,
            &[outcome(None, Some(30)), outcome(None, Some(50))],
        );
        assert!(
            failover.contains("(2 of 2 trials): min 30 ms, median 40 ms, max 50 ms"),
            "{failover}"
        );
        assert!(!failover.contains("in place"), "{failover}");
    }
}
