//! The demo's cluster: three `understudy run` sidecars and three key-value apps, each a
//! child process of the demo (the same executable: `understudy run ...` and the hidden
//! `understudy demo-kv ...`), with their ports, files and PIDs.
//!
//! Every child is started in its own process group (a Ctrl-C in the terminal reaches the
//! demo alone, which then stops them in order) and with `PR_SET_PDEATHSIG` = SIGKILL, so
//! that even a demo killed with SIGKILL leaves no orphan behind.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::cli::status::{self, StatusView};

/// Nodes in the demo's cluster.
pub(super) const NODES: u16 = 3;

/// How long one node's admin port gets to answer `/status` (or `/primary`).
pub(super) const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// The demo's ports, from a base: node N's client port is BASE+N, its peer port BASE+10+N,
/// its admin port BASE+20+N and its key-value app BASE+30+N.
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

/// The processes of one node.
#[derive(Default)]
struct NodeProcesses {
    sidecar: Option<Child>,
    app: Option<Child>,
}

pub(super) struct Cluster {
    pub(super) dir: PathBuf,
    pub(super) ports: Ports,
    exe: PathBuf,
    secret: PathBuf,
    /// The sidecars' timing flags.
    timing: Vec<String>,
    nodes: Vec<NodeProcesses>,
    /// Every PID started, in order.
    pub(super) pids: Vec<u32>,
}

impl Cluster {
    /// Lays out the directory (a secret, `logs/`); starts nothing.
    pub(super) fn new(
        dir: PathBuf,
        ports: Ports,
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
        })
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
        Admins(
            (1..=NODES)
                .map(|id| self.ports.admin(id).to_string())
                .collect(),
        )
    }

    /// Starts node `id`'s sidecar and its key-value app; returns their PIDs.
    pub(super) fn start_node(&mut self, id: u16) -> anyhow::Result<(u32, u32)> {
        let sidecar = self.start_sidecar(id)?;
        let app = self.start_app(id)?;
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

/// SIGKILL, then wait for the exit.
async fn kill_and_reap(mut child: Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// The nodes' admin addresses, by node id (index 0 is node 1).
#[derive(Debug, Clone)]
pub(super) struct Admins(pub(super) Vec<String>);

impl Admins {
    /// Node `id`'s admin address.
    pub(super) fn of(&self, id: u16) -> &str {
        &self.0[usize::from(id) - 1]
    }

    /// Each node's `/status`, `None` where it did not answer (not running, say).
    pub(super) async fn statuses(&self) -> Vec<Option<StatusView>> {
        futures_util::future::join_all(
            self.0
                .iter()
                .map(|addr| async move { status::fetch_within(addr, STATUS_TIMEOUT).await.ok() }),
        )
        .await
    }
}

/// What the nodes' answers say, once they agree: the primary (holding its lease) and its
/// epoch, every answering node a backup of it in that epoch.
pub(super) fn settled(views: &[Option<StatusView>], expected: usize) -> Option<(u16, u64)> {
    let answered: Vec<&StatusView> = views.iter().flatten().collect();
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
        view.node_id == primary.node_id
            || (view.role == "backup"
                && view.primary == Some(primary.node_id)
                && view.epoch == primary.epoch)
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

    fn view(id: u16, role: &str, epoch: u64, primary: Option<u16>) -> Option<StatusView> {
        let json = serde_json::json!({
            "node_id": id, "role": role, "epoch": epoch, "primary": primary,
            "lease_held": role == "primary", "durable_lsn": 10, "commit_lsn": 10,
            "heartbeat_age_ms": null, "peers": [], "failed": null,
        });
        Some(serde_json::from_value(json).unwrap())
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
            v.lease_held = false;
            v
        });
        assert_eq!(settled(&no_lease, 3), None);
    }
}
