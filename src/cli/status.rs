//! `understudy status --admin HOST:PORT [--admin HOST:PORT ...]`: the cluster as a table,
//! from the nodes' admin ports (`GET /status`).
//!
//! Each node asked contributes a row about itself, in its own words (role, epoch, durable
//! and commit LSN, how long since it heard its primary). A node that was not asked (or did
//! not answer) still gets a row if an asked node knows it as a peer, filled from that node's
//! view: the primary's view if there is one (it knows every backup's durable LSN and lag),
//! else the first that lists it. The last column says whose view a row is. Lag comes from
//! the primary's view, since only the primary measures it.
//!
//! An admin port that cannot be reached is one line on stderr, and the command exits 1
//! after printing what the others said.
//!
//! With `--json`, it prints each asked node's `/status` as is, in an array.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::admin_client;

/// How long one node gets to answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of `understudy status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A node's admin address (its --admin-listen). Repeat it (or separate addresses with
    /// commas) to ask several nodes and get each one's row in its own words.
    #[arg(
        long = "admin",
        value_name = "HOST:PORT",
        required = true,
        value_delimiter = ',',
        env = "UNDERSTUDY_ADMIN"
    )]
    pub admins: Vec<String>,
    /// Print the merged cluster view as JSON instead of the table: `primary`, every node's
    /// own `/status` under `nodes`, each node's admin address, and the admin ports that did
    /// not answer.
    #[arg(long)]
    pub json: bool,
}

/// The part of a node's `/status` this command reads (`node::NodeStatus`); fields it does
/// not know are ignored, so a newer node can still be read.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StatusView {
    pub(crate) node_id: u16,
    pub(crate) role: String,
    pub(crate) epoch: u64,
    pub(crate) primary: Option<u16>,
    pub(crate) lease_held: bool,
    pub(crate) durable_lsn: u64,
    pub(crate) commit_lsn: u64,
    heartbeat_age_ms: Option<u64>,
    pub(crate) peers: Vec<PeerView>,
    failed: Option<String>,
    /// `voter`, `learner` or `quarantined` (absent from nodes before learners existed).
    #[serde(default)]
    standing: Option<String>,
    /// Automatic failover paused here.
    #[serde(default)]
    pub(crate) paused: bool,
    /// Its place in the configuration it knows: `voter`, `learner` or `removed` (absent
    /// from nodes before membership changes).
    #[serde(default)]
    member: Option<String>,
    /// The application's liveness (absent from older nodes).
    #[serde(default)]
    pub(crate) app_health: Option<AppHealthView>,
    /// Follow mode's state of the followed directory (absent without `--follow-dir`).
    #[serde(default)]
    pub(crate) follow: Option<FollowView>,
}

/// The part of `/status` `follow` this command (and `understudy demo`) reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct FollowView {
    pub(crate) state: String,
    pub(crate) applied_lsn: u64,
    #[serde(default)]
    pub(crate) error: Option<String>,
}

/// The part of `/status` `app_health` this command (and `understudy demo`) reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AppHealthView {
    pub(crate) expected: bool,
    pub(crate) live: bool,
    pub(crate) applied_lsn: u64,
    /// When `live` last changed, in milliseconds since the Unix epoch.
    pub(crate) since_ms: u64,
    /// While not live: why, in words.
    #[serde(default)]
    pub(crate) gone: Option<String>,
}

/// The part of a `node::PeerStatus` this command reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PeerView {
    pub(crate) node_id: u16,
    pub(crate) connected: bool,
    pub(crate) durable_lsn: u64,
    pub(crate) lag_records: u64,
    lag_bytes: u64,
    last_heard_ms: Option<u64>,
    #[serde(default)]
    learner: bool,
    /// The admin address the peer announced (absent from older nodes).
    #[serde(default)]
    pub(crate) admin_addr: Option<String>,
    /// On the primary: whether the peer's application is live.
    #[serde(default)]
    app_live: bool,
}

/// One line of the table, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    node: u16,
    role: String,
    epoch: String,
    durable_lsn: String,
    commit_lsn: String,
    lag: String,
    last_heartbeat: String,
    app: String,
    reported_by: u16,
}

const HEADER: [&str; 9] = [
    "NODE",
    "ROLE",
    "APP",
    "EPOCH",
    "DURABLE LSN",
    "COMMIT LSN",
    "LAG",
    "LAST HEARTBEAT",
    "REPORTED BY",
];

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let gathered = runtime.block_on(gather(&args.admins));
    if args.json {
        let text =
            serde_json::to_string_pretty(&merged_json(&gathered)).context("encode the statuses")?;
        println!("{text}");
    } else {
        let views: Vec<StatusView> = gathered.answers.iter().map(|a| a.view.clone()).collect();
        if !views.is_empty() {
            let mut out = std::io::stdout().lock();
            out.write_all(table(&views).as_bytes())?;
            out.flush()?;
        }
    }
    // An admin port found through a peer that does not answer is a note (its row comes
    // from the others' views); one that was asked is an error, the last one the command's.
    let (mut errors, found): (Vec<_>, Vec<_>) = gathered
        .errors
        .into_iter()
        .partition(|(admin, _)| args.admins.contains(admin));
    if !args.json {
        for (_, error) in &found {
            eprintln!("understudy: note: a peer's admin port did not answer: {error:#}");
        }
    }
    match errors.pop() {
        None => Ok(()),
        Some((_, last)) => {
            for (_, error) in &errors {
                eprintln!("understudy: {error:#}");
            }
            Err(last)
        }
    }
}

/// One node's answer: its status as this command reads it, and as it was sent.
struct Answered {
    admin: String,
    view: StatusView,
    raw: serde_json::Value,
}

/// What the asked admin ports, and the ones their peers announced, answered.
struct Gathered {
    answers: Vec<Answered>,
    /// Admin ports that did not answer, with why.
    errors: Vec<(String, anyhow::Error)>,
}

/// `GET /status` from every asked admin port, then from every admin port those nodes'
/// peers announced that was not asked: one `--admin` is enough to see every node in its
/// own words.
async fn gather(admins: &[String]) -> Gathered {
    let mut gathered = Gathered {
        answers: Vec::new(),
        errors: Vec::new(),
    };
    let mut asked: std::collections::BTreeSet<String> = admins.iter().cloned().collect();
    let mut round: Vec<String> = admins.to_vec();
    // Two rounds: the asked nodes, then the peers they name (a peer's peers are the same).
    for _ in 0..2 {
        let answers = futures_util::future::join_all(
            round
                .iter()
                .map(|addr| async move { (addr.clone(), fetch_raw(addr).await) }),
        )
        .await;
        for (admin, answer) in answers {
            match answer {
                Ok((view, raw)) => gathered.answers.push(Answered { admin, view, raw }),
                Err(e) => gathered.errors.push((admin, e)),
            }
        }
        let known: std::collections::BTreeSet<u16> =
            gathered.answers.iter().map(|a| a.view.node_id).collect();
        round = gathered
            .answers
            .iter()
            .flat_map(|a| a.view.peers.iter().map(move |peer| (&a.admin, peer)))
            .filter(|(_, peer)| !known.contains(&peer.node_id))
            .filter_map(|(asked, peer)| {
                let addr = peer.admin_addr.as_deref()?;
                Some(admin_client::same_scheme(asked, addr))
            })
            .filter(|addr| asked.insert(addr.clone()))
            .collect();
        if round.is_empty() {
            break;
        }
    }
    gathered
}

/// `--json`: the merged cluster view. `nodes` holds each node's own `/status` (by node id,
/// the first answer of a node asked twice), `primary` the node that is primary in the
/// newest epoch any node reports, `unreachable` the admin ports that did not answer.
fn merged_json(gathered: &Gathered) -> serde_json::Value {
    let mut nodes: BTreeMap<u16, &serde_json::Value> = BTreeMap::new();
    for answer in &gathered.answers {
        nodes.entry(answer.view.node_id).or_insert(&answer.raw);
    }
    let primary = gathered
        .answers
        .iter()
        .filter(|a| a.view.role == "primary")
        .max_by_key(|a| a.view.epoch)
        .map(|a| a.view.node_id);
    let unreachable: Vec<serde_json::Value> = gathered
        .errors
        .iter()
        .map(|(admin, error)| serde_json::json!({ "admin": admin, "error": format!("{error:#}") }))
        .collect();
    serde_json::json!({
        "primary": primary,
        "nodes": nodes.values().collect::<Vec<_>>(),
        "admins": gathered.answers.iter().map(|a| serde_json::json!({ "node_id": a.view.node_id, "admin": a.admin })).collect::<Vec<_>>(),
        "unreachable": unreachable,
    })
}

/// The table `understudy status` prints for these answers (`understudy demo` shows it live).
pub(crate) fn table(views: &[StatusView]) -> String {
    render(&rows(views))
}

/// `GET /status` from one admin port: as this command reads it, and as sent.
async fn fetch_raw(addr: &str) -> anyhow::Result<(StatusView, serde_json::Value)> {
    let raw = fetch_json(addr, STATUS_TIMEOUT).await?;
    let view = serde_json::from_value(raw.clone()).map_err(|e| {
        anyhow!("the admin port {addr} sent a status this command cannot read: {e}")
    })?;
    Ok((view, raw))
}

/// `GET /status` from one admin port, giving up after `timeout`.
pub(crate) async fn fetch_within(addr: &str, timeout: Duration) -> anyhow::Result<StatusView> {
    let raw = fetch_json(addr, timeout).await?;
    serde_json::from_value(raw)
        .map_err(|e| anyhow!("the admin port {addr} sent a status this command cannot read: {e}"))
}

/// `GET /status` from one admin port as JSON, giving up after `timeout`.
async fn fetch_json(addr: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let answer = admin_client::request(addr, Method::GET, "/status", timeout).await?;
    if answer.status != StatusCode::OK {
        bail!(
            "the admin port {addr} answered /status with {}: {}",
            answer.status,
            answer.body_line()
        );
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| anyhow!("the admin port {addr} sent a status that is not JSON: {e}"))
}

/// The table's rows, one per node any view knows, by node id.
fn rows(views: &[StatusView]) -> Vec<Row> {
    // A node's own answer, the first if it was asked twice.
    let mut own: BTreeMap<u16, &StatusView> = BTreeMap::new();
    for view in views {
        own.entry(view.node_id).or_insert(view);
    }
    // The serving primary's view (the newest epoch's, should two claim it): the only one
    // that knows each backup's durable LSN and lag.
    let primary_view = views
        .iter()
        .filter(|view| view.role == "primary")
        .max_by_key(|view| view.epoch);
    let mut ids: Vec<u16> = own.keys().copied().collect();
    ids.extend(
        views
            .iter()
            .flat_map(|view| view.peers.iter().map(|p| p.node_id)),
    );
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|id| match own.get(&id) {
            Some(view) => own_row(view, primary_view),
            None => peer_row(id, views, primary_view),
        })
        .collect()
}

/// A node's row from its own status.
fn own_row(view: &StatusView, primary_view: Option<&StatusView>) -> Row {
    let mut role = view.role.clone();
    if view.role == "primary" && !view.lease_held {
        role.push_str(" (no lease)");
    }
    if view.failed.is_some() {
        role.push_str(" (disk failed)");
    }
    match view.standing.as_deref() {
        Some("learner") => role.push_str(" (learner)"),
        Some("quarantined") => role.push_str(" (quarantined)"),
        _ => {}
    }
    match view.member.as_deref() {
        Some("learner") if view.standing.as_deref() != Some("learner") => {
            role.push_str(" (learner member)")
        }
        Some("removed") => role.push_str(" (not a member)"),
        _ => {}
    }
    if view.paused {
        role.push_str(" (paused)");
    }
    let app = match (&view.follow, &view.app_health) {
        // Follow mode: the application runs on the primary only; a backup's is its copy of
        // the directory.
        (Some(follow), _) if follow.state == "standby" => {
            format!("standby, dir at {}", follow.applied_lsn)
        }
        (Some(follow), Some(app)) if follow.state == "serving" && app.live => "serving".into(),
        (Some(follow), _) if follow.state != "serving" => match &follow.error {
            Some(error) => format!("{}: {error}", follow.state),
            None => follow.state.clone(),
        },
        (_, Some(app)) if app.live => format!("live, applied {}", app.applied_lsn),
        (_, Some(app)) if app.expected => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let gone_for = age_words(Some(now_ms.saturating_sub(app.since_ms)));
            format!("gone since {gone_for}")
        }
        _ => "-".to_string(),
    };
    let is_primary = view.role == "primary";
    let lag = if is_primary {
        "-".to_string()
    } else {
        primary_view
            .and_then(|primary| primary.peers.iter().find(|p| p.node_id == view.node_id))
            .map_or_else(|| "-".to_string(), lag_words)
    };
    let last_heartbeat = if is_primary {
        "-".to_string()
    } else {
        age_words(view.heartbeat_age_ms)
    };
    Row {
        node: view.node_id,
        role,
        epoch: view.epoch.to_string(),
        durable_lsn: view.durable_lsn.to_string(),
        commit_lsn: view.commit_lsn.to_string(),
        lag,
        last_heartbeat,
        app,
        reported_by: view.node_id,
    }
}

/// A row for a node that did not speak for itself, from the best view that lists it.
fn peer_row(id: u16, views: &[StatusView], primary_view: Option<&StatusView>) -> Row {
    let listed = |view: &&StatusView| view.peers.iter().any(|p| p.node_id == id);
    let view = primary_view
        .filter(listed)
        .or_else(|| views.iter().find(listed))
        .unwrap_or_else(|| unreachable!("every id in the table comes from a view"));
    let peer = view
        .peers
        .iter()
        .find(|p| p.node_id == id)
        .unwrap_or_else(|| unreachable!("the view was chosen because it lists the peer"));
    let unknown = || "-".to_string();
    let app = if view.role == "primary" && peer.app_live {
        "live".to_string()
    } else {
        unknown()
    };
    let (role, epoch, durable_lsn, lag) = if view.role == "primary" {
        // The primary ships to every peer and hears their acknowledgements.
        let role = match (peer.connected, peer.learner) {
            (true, false) => "backup",
            (true, true) => "backup (learner)",
            (false, _) => "unreachable",
        };
        (
            role.to_string(),
            unknown(),
            peer.durable_lsn.to_string(),
            lag_words(peer),
        )
    } else if view.primary == Some(id) {
        // A backup heard this node as primary in the backup's epoch.
        (
            "primary".to_string(),
            view.epoch.to_string(),
            unknown(),
            unknown(),
        )
    } else {
        (unknown(), unknown(), unknown(), unknown())
    };
    Row {
        node: id,
        role,
        epoch,
        durable_lsn,
        commit_lsn: unknown(),
        lag,
        last_heartbeat: age_words(peer.last_heard_ms),
        app,
        reported_by: view.node_id,
    }
}

/// "0", or "12 records (768 B)".
fn lag_words(peer: &PeerView) -> String {
    match peer.lag_records {
        0 => "0".to_string(),
        1 => format!("1 record ({})", bytes_words(peer.lag_bytes)),
        records => format!("{records} records ({})", bytes_words(peer.lag_bytes)),
    }
}

fn bytes_words(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// "35 ms ago", "2.5 s ago", "4 min ago", or "never".
fn age_words(age_ms: Option<u64>) -> String {
    match age_ms {
        None => "never".to_string(),
        Some(ms) if ms < 1000 => format!("{ms} ms ago"),
        Some(ms) if ms < 60_000 => format!("{:.1} s ago", ms as f64 / 1000.0),
        Some(ms) => format!("{} min ago", ms / 60_000),
    }
}

/// The table with every column as wide as its widest cell.
fn render(rows: &[Row]) -> String {
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|row| {
            [
                row.node.to_string(),
                row.role.clone(),
                row.app.clone(),
                row.epoch.clone(),
                row.durable_lsn.clone(),
                row.commit_lsn.clone(),
                row.lag.clone(),
                row.last_heartbeat.clone(),
                format!("node {}", row.reported_by),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_string);
    for line in std::iter::once(&header).chain(&cells) {
        let mut text = String::new();
        for (column, (cell, width)) in line.iter().zip(widths).enumerate() {
            if column > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node_id: u16, durable_lsn: u64, lag_records: u64) -> PeerView {
        PeerView {
            node_id,
            connected: true,
            durable_lsn,
            lag_records,
            lag_bytes: lag_records * 64,
            last_heard_ms: Some(12),
            learner: false,
            admin_addr: None,
            app_live: true,
        }
    }

    fn primary() -> StatusView {
        StatusView {
            node_id: 1,
            role: "primary".into(),
            epoch: 4,
            primary: Some(1),
            lease_held: true,
            durable_lsn: 100,
            commit_lsn: 100,
            heartbeat_age_ms: None,
            peers: vec![peer(2, 100, 0), peer(3, 90, 10)],
            failed: None,
            standing: None,
            member: None,
            paused: false,
            app_health: None,
            follow: None,
        }
    }

    fn backup(node_id: u16, durable_lsn: u64) -> StatusView {
        StatusView {
            node_id,
            role: "backup".into(),
            epoch: 4,
            primary: Some(1),
            lease_held: false,
            durable_lsn,
            commit_lsn: 90,
            heartbeat_age_ms: Some(20),
            peers: vec![peer(1, 0, 0), peer(if node_id == 2 { 3 } else { 2 }, 0, 0)],
            failed: None,
            standing: None,
            member: None,
            paused: false,
            app_health: None,
            follow: None,
        }
    }

    /// Asked alone, the primary reports itself and, from its view, both backups with their
    /// durable LSN and lag.
    #[test]
    fn one_node_asked_gives_its_view_of_every_peer() {
        let rows = rows(&[primary()]);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].role, "primary");
        assert_eq!(rows[2].role, "backup");
        assert_eq!(rows[2].durable_lsn, "90");
        assert_eq!(rows[2].lag, "10 records (640 B)");
        assert_eq!(rows[2].reported_by, 1);
    }

    /// Asked one backup, the table names the primary it follows and leaves unknown cells as
    /// `-` rather than guessing.
    #[test]
    fn a_backup_knows_its_primary_but_not_the_other_backup() {
        let rows = rows(&[backup(2, 95)]);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].node, rows[0].role.as_str()), (1, "primary"));
        assert_eq!(rows[0].epoch, "4");
        assert_eq!((rows[2].node, rows[2].role.as_str()), (3, "-"));
        assert_eq!(rows[1].last_heartbeat, "20 ms ago");
    }

    /// Asked every node, each row is the node's own report, with lag from the primary.
    #[test]
    fn every_node_asked_gives_each_its_own_row_and_the_primarys_lag() {
        let rows = rows(&[backup(3, 90), primary(), backup(2, 100)]);
        let nodes: Vec<(u16, u16)> = rows.iter().map(|r| (r.node, r.reported_by)).collect();
        assert_eq!(nodes, [(1, 1), (2, 2), (3, 3)]);
        assert_eq!(rows[2].lag, "10 records (640 B)");
        assert_eq!(rows[2].commit_lsn, "90");
        assert_eq!(rows[0].last_heartbeat, "-");
    }

    /// Columns line up: every line puts its cells at the header's offsets.
    #[test]
    fn the_table_is_aligned() {
        let text = render(&rows(&[primary()]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let role_at = lines[0].find("ROLE").unwrap();
        let lag_at = lines[0].find("LAG").unwrap();
        for line in &lines[1..] {
            assert_ne!(line.as_bytes()[role_at], b' ', "{text}");
            assert_eq!(line.as_bytes()[role_at - 1], b' ', "{text}");
            assert_ne!(line.as_bytes()[lag_at], b' ', "{text}");
        }
    }

    #[test]
    fn ages_and_sizes_read_naturally() {
        assert_eq!(age_words(None), "never");
        assert_eq!(age_words(Some(35)), "35 ms ago");
        assert_eq!(age_words(Some(2500)), "2.5 s ago");
        assert_eq!(age_words(Some(240_000)), "4 min ago");
        assert_eq!(bytes_words(512), "512 B");
        assert_eq!(bytes_words(1536), "1.5 KiB");
        assert_eq!(bytes_words(3 << 20), "3.0 MiB");
    }
}
