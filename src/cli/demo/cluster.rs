//! The demo's cluster: three `understudy run` sidecars and three key-value apps, each a
//! child process of the demo (the same executable: `understudy run ...` and the hidden
//! `understudy demo-kv ...`), with their ports, files and PIDs.
//!
//! With `--app redis` there are no key-value apps: each sidecar runs in follow mode with the
//! system's `redis-server` under `--app-cmd`, which it starts only while it is the serving
//! primary; Redis's append-only directory (`redisN/appendonlydir`) is the followed
//! directory. The demo learns Redis's PID from `/status` (`app.pid`), and after the
//! sidecars are killed it makes sure that every Redis it saw is gone too.
//!
//! Every child is started in its own process group (a Ctrl-C in the terminal reaches the
//! demo alone, which then stops them in order) and with `PR_SET_PDEATHSIG` = SIGKILL, so
//! that even a demo killed with SIGKILL leaves no orphan behind.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::cli::admin_client;
use crate::cli::status::StatusView;

/// Nodes in the demo's cluster.
pub(super) const NODES: u16 = 3;

/// How long one node's admin port gets to answer `/status` (or `/primary`).
pub(super) const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// The demo's ports, from a base: node N's client port is BASE+N, its peer port BASE+10+N,
/// its admin port BASE+20+N and its key-value app (or its Redis) BASE+30+N.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ports {
    base: u16,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

impl Ports {
    pub(super) fn client(self, id: u16) -> SocketAddr {
        loopback(self.base + id)
    }
    pub(super) fn peer(self, id: u16) -> SocketAddr {
        loopback(self.base + 10 + id)
    }
    pub(super) fn admin(self, id: u16) -> SocketAddr {
        loopback(self.base + 20 + id)
    }
    pub(super) fn app(self, id: u16) -> SocketAddr {
        loopback(self.base + 30 + id)
    }

    fn all(self) -> impl Iterator<Item = SocketAddr> {
        (1..=NODES)
            .flat_map(move |id| [self.client(id), self.peer(id), self.admin(id), self.app(id)])
    }

    /// The first port of `all` that cannot be bound now, if any.
    fn busy(self) -> Option<SocketAddr> {
        self.all().find(|addr| TcpListener::bind(addr).is_err())
    }

    /// `base` if given (refused if a port is taken), else the first of 7000, 7100, ...
    /// 9900 whose ports are all free.
    pub(super) fn pick(base: Option<u16>) -> anyhow::Result<Ports> {
        match base {
            Some(base) => {
                if base > u16::MAX - 40 {
                    bail!("--base-port {base}: the demo needs ports up to BASE+33");
                }
                let ports = Ports { base };
                if let Some(addr) = ports.busy() {
                    bail!("--base-port {base}: {addr} is in use; pick another base");
                }
                Ok(ports)
            }
            None => (7000..=9900)
                .step_by(100)
                .map(|base| Ports { base })
                .find(|ports| ports.busy().is_none())
                .context("no free block of ports from 7000 to 9999; pass --base-port"),
        }
    }
}

/// What runs beside (or under) each sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum App {
    /// The key-value example, a child process of the demo beside each sidecar, on the app
    /// API.
    Kv,
    /// The system's `redis-server` (this binary), run by each sidecar in follow mode while
    /// it is the serving primary.
    Redis(PathBuf),
}

/// The processes of one node (with `App::Redis`, `app` stays `None`: the sidecar runs
/// Redis).
#[derive(Default)]
struct NodeProcesses {
    sidecar: Option<Child>,
    app: Option<Child>,
}

pub(super) struct Cluster {
    pub(super) dir: PathBuf,
    pub(super) ports: Ports,
    pub(super) app: App,
    exe: PathBuf,
    secret: PathBuf,
    /// The sidecars' timing flags.
    timing: Vec<String>,
    nodes: Vec<NodeProcesses>,
    /// Every PID started, in order.
    pub(super) pids: Vec<u32>,
    /// Every Redis PID seen in a `/status` (the sidecars start them), shared with `Admins`.
    redis_pids: RedisPids,
}

/// Redis PIDs seen, with the node whose sidecar ran each.
type RedisPids = Arc<Mutex<BTreeSet<(u16, u32)>>>;

impl Cluster {
    /// Lays out the directory (a secret, `logs/`); starts nothing.
    pub(super) fn new(
        dir: PathBuf,
        ports: Ports,
        app: App,
        heartbeat: Duration,
        failover: Duration,
        app_timeout: Duration,
    ) -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe().context("find this executable")?;
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("create {}", dir.join("logs").display()))?;
        let secret = dir.join("cluster-secret");
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random secret: {e}"))?;
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&secret, &text).with_context(|| format!("write {}", secret.display()))?;
        Ok(Cluster {
            dir,
            ports,
            app,
            exe,
            secret,
            timing: [
                ("--heartbeat-interval", heartbeat),
                ("--failover-timeout", failover),
                ("--app-timeout", app_timeout),
            ]
            .into_iter()
            .flat_map(|(flag, value)| {
                [
                    flag.to_string(),
                    humantime::format_duration(value).to_string(),
                ]
            })
            .collect(),
            nodes: (0..NODES).map(|_| NodeProcesses::default()).collect(),
            pids: Vec::new(),
            redis_pids: Arc::default(),
        })
    }

    /// Whether the nodes run Redis in follow mode.
    pub(super) fn redis(&self) -> bool {
        matches!(self.app, App::Redis(_))
    }

    /// Node `id`'s Redis directory (`--dir`); its `appendonlydir` is the followed one.
    pub(super) fn redis_dir(&self, id: u16) -> PathBuf {
        self.dir.join(format!("redis{id}"))
    }

    pub(super) fn data_dir(&self, id: u16) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    pub(super) fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn sidecar_log(&self, id: u16) -> PathBuf {
        self.logs_dir().join(format!("node{id}.log"))
    }

    fn app_log(&self, id: u16) -> PathBuf {
        self.logs_dir().join(format!("kv{id}.log"))
    }

    fn node(&mut self, id: u16) -> &mut NodeProcesses {
        &mut self.nodes[usize::from(id) - 1]
    }

    /// The admin addresses, for `/status` (and `understudy status --admin`).
    pub(super) fn admins(&self) -> Admins {
        Admins {
            addrs: (1..=NODES)
                .map(|id| self.ports.admin(id).to_string())
                .collect(),
            redis_pids: self.redis().then(|| Arc::clone(&self.redis_pids)),
        }
    }

    /// Starts node `id`'s sidecar and its key-value app; returns their PIDs (with Redis,
    /// the sidecar's alone: it starts Redis itself when it is primary).
    pub(super) fn start_node(&mut self, id: u16) -> anyhow::Result<(u32, Option<u32>)> {
        let sidecar = self.start_sidecar(id)?;
        let app = match self.app {
            App::Kv => Some(self.start_app(id)?),
            App::Redis(_) => None,
        };
        Ok((sidecar, app))
    }

    /// The app's end of node `id`'s app API.
    fn app_socket(&self, id: u16) -> PathBuf {
        self.data_dir(id).join("app.sock")
    }

    /// Starts node `id`'s sidecar; returns its PID.
    fn start_sidecar(&mut self, id: u16) -> anyhow::Result<u32> {
        let peers = (1..=NODES)
            .map(|n| format!("{n}={}", self.ports.peer(n)))
            .collect::<Vec<_>>()
            .join(",");
        let data_dir = self.data_dir(id);
        let socket = self.app_socket(id);
        let mut sidecar = self.command(&self.sidecar_log(id))?;
        sidecar
            .arg("run")
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--peer-listen")
            .arg(self.ports.peer(id).to_string())
            .arg("--peers")
            .arg(peers)
            .arg("--app-socket")
            .arg(&socket)
            .arg("--client-listen")
            .arg(self.ports.client(id).to_string())
            .arg("--app-addr")
            .arg(self.ports.app(id).to_string())
            .arg("--admin-listen")
            .arg(self.ports.admin(id).to_string())
            .arg("--cluster-secret-file")
            .arg(&self.secret)
            .args(&self.timing);
        if let App::Redis(binary) = &self.app {
            let dir = self.redis_dir(id);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            sidecar
                .arg("--follow-dir")
                .arg(dir.join("appendonlydir"))
                .arg("--app-cmd")
                .arg(redis_command(binary, self.ports.app(id).port(), &dir));
        }
        let sidecar = sidecar
            .spawn()
            .with_context(|| format!("start node {id}'s sidecar"))?;
        let sidecar_pid = sidecar.id().unwrap_or(0);
        self.pids.push(sidecar_pid);
        self.node(id).sidecar = Some(sidecar);
        Ok(sidecar_pid)
    }

    /// Starts node `id`'s key-value app (it waits for its sidecar's socket); returns its
    /// PID.
    pub(super) fn start_app(&mut self, id: u16) -> anyhow::Result<u32> {
        let mut app = self.command(&self.app_log(id))?;
        app.arg("demo-kv")
            .arg("--app-socket")
            .arg(self.app_socket(id))
            .arg("--listen")
            .arg(self.ports.app(id).to_string());
        let app = app
            .spawn()
            .with_context(|| format!("start node {id}'s key-value app"))?;
        let app_pid = app.id().unwrap_or(0);
        self.pids.push(app_pid);
        self.node(id).app = Some(app);
        Ok(app_pid)
    }

    /// A command of this executable with its output appended to `log`.
    fn command(&self, log: &Path) -> anyhow::Result<Command> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new(&self.exe);
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        // The children take their settings from their flags alone, and die with the demo.
        crate::node::supervise::tie_to_this_process(&mut command);
        Ok(command)
    }

    /// The PIDs of node `id`'s running sidecar and app.
    pub(super) fn pids_of(&self, id: u16) -> (Option<u32>, Option<u32>) {
        let node = &self.nodes[usize::from(id) - 1];
        (
            node.sidecar.as_ref().and_then(Child::id),
            node.app.as_ref().and_then(Child::id),
        )
    }

    /// `kill -9` of node `id`: its sidecar, then its app (as if the machine died), both
    /// reaped.
    pub(super) async fn kill_node(&mut self, id: u16) {
        let node = self.node(id);
        let (sidecar, app) = (node.sidecar.take(), node.app.take());
        for child in [sidecar, app].into_iter().flatten() {
            kill_and_reap(child).await;
        }
    }

    /// `kill -9` of node `id`'s app alone (its sidecar keeps running), reaped.
    pub(super) async fn kill_app(&mut self, id: u16) {
        if let Some(app) = self.node(id).app.take() {
            kill_and_reap(app).await;
        }
    }

    /// `kill -9` of node `id`'s Redis, PID `pid` (from its sidecar's `/status`), if that
    /// process is still node `id`'s Redis; returns whether it was.
    pub(super) fn kill_redis(&self, id: u16, pid: u32) -> bool {
        self.redis_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((id, pid));
        let port = self.ports.app(id).port();
        if !is_redis(pid, port) {
            return false;
        }
        // SAFETY: kill(2) has no memory effects; `pid` is a Redis this demo's sidecar
        // started and has not reaped (it is still running as Redis on node `id`'s port).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) == 0 }
    }

    /// After the sidecars are gone: waits (up to 3 s) for every Redis they were seen
    /// running to be gone as well (`PR_SET_PDEATHSIG` and the supervisor's guard kill it
    /// with its sidecar) and kills any still there; returns the PIDs seen and how many had
    /// to be killed here.
    pub(super) async fn reap_redis(&self) -> (Vec<u32>, usize) {
        let seen: Vec<(u16, u32)> = self
            .redis_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        let alive = |&(id, pid): &(u16, u32)| is_redis(pid, self.ports.app(id).port());
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while seen.iter().any(alive) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut killed = 0;
        for &(id, pid) in seen.iter().filter(|entry| alive(entry)) {
            if self.kill_redis(id, pid) {
                killed += 1;
            }
        }
        let mut pids: Vec<u32> = seen.iter().map(|&(_, pid)| pid).collect();
        pids.sort_unstable();
        pids.dedup();
        (pids, killed)
    }

    /// Kills every running child with SIGKILL and reaps it; returns how many there were.
    pub(super) async fn stop_all(&mut self) -> usize {
        let mut stopped = 0;
        for id in 1..=NODES {
            stopped += self.running_count(id);
            self.kill_node(id).await;
        }
        stopped
    }

    fn running_count(&mut self, id: u16) -> usize {
        let node = self.node(id);
        [&mut node.sidecar, &mut node.app]
            .into_iter()
            .flatten()
            .filter_map(|child| child.try_wait().ok())
            .filter(Option::is_none)
            .count()
    }

    /// A child that exited on its own (it should not have), as one line naming its log.
    pub(super) fn exited(&mut self) -> Option<String> {
        for id in 1..=NODES {
            let logs = [self.sidecar_log(id), self.app_log(id)];
            let node = self.node(id);
            for (what, child, log) in [
                ("sidecar", &mut node.sidecar, &logs[0]),
                ("key-value app", &mut node.app, &logs[1]),
            ] {
                let Some(process) = child else { continue };
                if let Ok(Some(status)) = process.try_wait() {
                    *child = None;
                    let last = std::fs::read_to_string(log)
                        .ok()
                        .and_then(|text| text.lines().last().map(str::to_string))
                        .unwrap_or_default();
                    return Some(format!(
                        "node {id}'s {what} exited ({status}); its log {} ends: {last}",
                        log.display()
                    ));
                }
            }
        }
        None
    }
}

/// The `--app-cmd` of node `id`'s sidecar: `binary` on `port` with its files in `dir`,
/// append-only (`dir/appendonlydir`, the followed directory), no RDB snapshots.
///
/// `--appendfsync always`: Redis then writes each change to its append-only file before it
/// replies, which follow mode needs (the client port holds a reply until the changes
/// already in the directory are committed, and the log, fsynced on a majority, is what makes
/// them durable), and exits rather than replying when that write fails. With `no` it
/// replies to the commands of a failed write all the same; with `everysec`, while its
/// background fsync of the file is still running (a busy disk) Redis postpones its writes
/// to the file for up to 2 s and replies all the same: those acknowledged writes are in no
/// file, so nothing holds their replies, and a kill -9 loses them.
fn redis_command(binary: &Path, port: u16, dir: &Path) -> String {
    format!(
        "exec {} --port {port} --bind 127.0.0.1 --dir {} --appendonly yes --appendfsync always \
         --save '' --protected-mode no --daemonize no --loglevel warning",
        shell_quote(&binary.to_string_lossy()),
        shell_quote(&dir.to_string_lossy()),
    )
}

/// `text` as one word for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Whether `pid` is a running Redis serving `port` (it shows `redis-server 127.0.0.1:PORT`
/// as its command line).
fn is_redis(pid: u32, port: u16) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("redis-server") && cmdline.contains(&format!(":{port}"))
}

/// SIGKILL, then wait for the exit.
async fn kill_and_reap(mut child: Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// The nodes' admin addresses, by node id (index 0 is node 1).
#[derive(Debug, Clone)]
pub(super) struct Admins {
    pub(super) addrs: Vec<String>,
    /// With Redis: where each Redis PID seen in an answer is recorded (`Cluster::reap_redis`).
    redis_pids: Option<RedisPids>,
}

/// What the demo reads in a node's `/status`: what `understudy status` reads, and in follow
/// mode the followed directory's state and the application the sidecar runs.
#[derive(Debug, Clone)]
pub(super) struct View {
    pub(super) status: StatusView,
    pub(super) follow: Option<FollowView>,
    pub(super) app: Option<AppView>,
}

impl std::ops::Deref for View {
    type Target = StatusView;

    fn deref(&self) -> &StatusView {
        &self.status
    }
}

/// `/status` `follow` (`follow::node::FollowStatus`), the part the demo reads.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct FollowView {
    /// `standby`, `starting`, `serving` or `failed`.
    pub(super) state: String,
    /// On standby: the last LSN whose change is durable in the directory.
    pub(super) applied_lsn: u64,
    #[serde(default)]
    pub(super) error: Option<String>,
    /// The last promotion: from the commit of the epoch start to serving, in ms.
    #[serde(default)]
    pub(super) last_start_ms: Option<u64>,
}

/// `/status` `app` (`node::AppStatus`, the `--app-cmd` application), the part the demo
/// reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct AppView {
    #[serde(default)]
    pub(super) pid: Option<u32>,
    #[serde(default)]
    pub(super) restarts: u64,
    #[serde(default)]
    pub(super) running_since_ms: Option<u64>,
    #[serde(default)]
    pub(super) last_exit: Option<String>,
}

#[derive(Deserialize)]
struct FollowFields {
    #[serde(default)]
    follow: Option<FollowView>,
    #[serde(default)]
    app: Option<AppView>,
}

impl View {
    /// A view from a `/status` body.
    pub(super) fn parse(body: &[u8]) -> anyhow::Result<View> {
        let status: StatusView = serde_json::from_slice(body)?;
        let extra: FollowFields = serde_json::from_slice(body)?;
        Ok(View {
            status,
            follow: extra.follow,
            app: extra.app,
        })
    }

    /// The followed directory's state (`None` without follow mode).
    pub(super) fn follow_state(&self) -> Option<&str> {
        self.follow.as_ref().map(|f| f.state.as_str())
    }

    /// The PID of the application the sidecar runs, if it runs one now.
    pub(super) fn app_pid(&self) -> Option<u32> {
        self.app.as_ref().and_then(|app| app.pid)
    }
}

impl Admins {
    /// Node `id`'s admin address.
    pub(super) fn of(&self, id: u16) -> &str {
        &self.addrs[usize::from(id) - 1]
    }

    /// Node `id`'s `/status`, `None` if it did not answer (not running, say).
    pub(super) async fn status(&self, id: u16) -> Option<View> {
        let answer = admin_client::request(self.of(id), Method::GET, "/status", STATUS_TIMEOUT)
            .await
            .ok()?;
        if answer.status != StatusCode::OK {
            return None;
        }
        let view = View::parse(&answer.body).ok()?;
        if let (Some(pids), Some(pid)) = (&self.redis_pids, view.app_pid()) {
            pids.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((view.node_id, pid));
        }
        Some(view)
    }

    /// Each node's `/status`, `None` where it did not answer (not running, say).
    pub(super) async fn statuses(&self) -> Vec<Option<View>> {
        futures_util::future::join_all((1..=NODES).map(|id| self.status(id))).await
    }
}

/// What the nodes' answers say, once they agree: the primary (holding its lease) and its
/// epoch, every answering node a backup of it in that epoch. In follow mode the primary
/// must also be serving its application and every backup on standby.
pub(super) fn settled(views: &[Option<View>], expected: usize) -> Option<(u16, u64)> {
    let answered: Vec<&View> = views.iter().flatten().collect();
    if answered.len() < expected {
        return None;
    }
    let mut primaries = answered
        .iter()
        .filter(|view| view.role == "primary" && view.lease_held);
    let primary = primaries.next()?;
    if primaries.next().is_some() {
        return None;
    }
    let agree = answered.iter().all(|view| {
        if view.node_id == primary.node_id {
            view.follow_state().is_none_or(|state| state == "serving")
        } else {
            view.role == "backup"
                && view.primary == Some(primary.node_id)
                && view.epoch == primary.epoch
                && view.follow_state().is_none_or(|state| state == "standby")
        }
    });
    agree.then_some((primary.node_id, primary.epoch))
}

/// Writes a file readable by its owner alone.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_base() {
        let ports = Ports { base: 7000 };
        assert_eq!(ports.client(2).to_string(), "127.0.0.1:7002");
        assert_eq!(ports.peer(1).to_string(), "127.0.0.1:7011");
        assert_eq!(ports.admin(3).to_string(), "127.0.0.1:7023");
        assert_eq!(ports.app(3).to_string(), "127.0.0.1:7033");
        assert_eq!(ports.all().count(), 12);
    }

    fn view(id: u16, role: &str, epoch: u64, primary: Option<u16>) -> Option<View> {
        let json = serde_json::json!({
            "node_id": id, "role": role, "epoch": epoch, "primary": primary,
            "lease_held": role == "primary", "durable_lsn": 10, "commit_lsn": 10,
            "heartbeat_age_ms": null, "peers": [], "failed": null,
        });
        Some(View::parse(json.to_string().as_bytes()).unwrap())
    }

    /// A node in follow mode, its directory in `state`, running the application `pid`.
    fn follow_view(
        id: u16,
        role: &str,
        primary: Option<u16>,
        state: &str,
        pid: Option<u32>,
    ) -> Option<View> {
        let json = serde_json::json!({
            "node_id": id, "role": role, "epoch": 2, "primary": primary,
            "lease_held": role == "primary", "durable_lsn": 10, "commit_lsn": 10,
            "heartbeat_age_ms": null, "peers": [], "failed": null,
            "follow": {"dir": "/x", "state": state, "applied_lsn": 9, "committed_changes": 0,
                       "last_start_ms": 41, "since_ms": 5},
            "app": {"pid": pid, "restarts": 1, "last_exit": "signal: 9 (SIGKILL)"},
        });
        Some(View::parse(json.to_string().as_bytes()).unwrap())
    }

    /// A `/status` in follow mode reads with its `follow` and `app` parts.
    #[test]
    fn follow_and_app_are_read_from_the_status() {
        let serving = follow_view(2, "primary", Some(2), "serving", Some(4242)).unwrap();
        assert_eq!(serving.follow_state(), Some("serving"));
        assert_eq!(serving.app_pid(), Some(4242));
        let follow = serving.follow.as_ref().unwrap();
        assert_eq!((follow.applied_lsn, follow.last_start_ms), (9, Some(41)));
        let app = serving.app.as_ref().unwrap();
        assert_eq!(app.last_exit.as_deref(), Some("signal: 9 (SIGKILL)"));
        assert_eq!(app.restarts, 1);
        let plain = view(1, "backup", 2, Some(2)).unwrap();
        assert!(plain.follow_state().is_none() && plain.app_pid().is_none());
    }

    /// In follow mode the cluster is settled only once the primary serves its application
    /// and every backup is on standby.
    #[test]
    fn settled_in_follow_mode_waits_for_the_application() {
        let backup = |id, state| follow_view(id, "backup", Some(2), state, None);
        let serving = follow_view(2, "primary", Some(2), "serving", Some(7));
        let all = [backup(1, "standby"), serving.clone(), backup(3, "standby")];
        assert_eq!(settled(&all, 3), Some((2, 2)));
        let starting = follow_view(2, "primary", Some(2), "starting", None);
        assert_eq!(
            settled(&[backup(1, "standby"), starting, backup(3, "standby")], 3),
            None
        );
        assert_eq!(
            settled(&[backup(1, "failed"), serving, backup(3, "standby")], 3),
            None
        );
    }

    #[test]
    fn the_redis_command_quotes_its_paths() {
        let command = redis_command(
            Path::new("/usr/bin/redis-server"),
            7031,
            Path::new("/tmp/it's here/redis1"),
        );
        assert!(
            command.starts_with("exec '/usr/bin/redis-server' --port 7031 --bind 127.0.0.1 --dir "),
            "{command}"
        );
        assert!(
            command.contains("--dir '/tmp/it'\\''s here/redis1' --appendonly yes"),
            "{command}"
        );
        assert!(
            command.contains("--appendonly yes --appendfsync always --save ''"),
            "{command}"
        );
    }

    /// The cluster is settled once one primary holds its lease and every node that answers
    /// follows it in its epoch; not while a node is a candidate or an epoch behind.
    #[test]
    fn settled_needs_every_answer_to_agree() {
        let all = [
            view(1, "backup", 2, Some(2)),
            view(2, "primary", 2, Some(2)),
            view(3, "backup", 2, Some(2)),
        ];
        assert_eq!(settled(&all, 3), Some((2, 2)));
        assert_eq!(settled(&[None, all[1].clone(), all[2].clone()], 3), None);
        assert_eq!(
            settled(&[None, all[1].clone(), all[2].clone()], 2),
            Some((2, 2))
        );
        let lagging = [
            view(1, "backup", 1, Some(1)),
            all[1].clone(),
            all[2].clone(),
        ];
        assert_eq!(settled(&lagging, 3), None);
        let electing = [
            view(1, "candidate", 3, None),
            all[1].clone(),
            all[2].clone(),
        ];
        assert_eq!(settled(&electing, 3), None);
        let mut no_lease = all.clone();
        no_lease[1] = view(2, "primary", 2, Some(2)).map(|mut v| {
            v.status.lease_held = false;
            v
        });
        assert_eq!(settled(&no_lease, 3), None);
    }
}
