//! `understudy run`: the sidecar. Every flag has an `UNDERSTUDY_*` environment fallback.
//! This file turns flags into a validated [`NodeConfig`], binds the listeners (so that a
//! port in use is one clear line before anything starts), and runs the node until SIGTERM
//! or SIGINT, which hand over (if primary) and exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::{TcpListener, UnixListener};

use crate::config::{self, ClusterSecret, FsyncMode};
use crate::node::{self, Listeners, NodeConfig};
use crate::NodeId;

/// The smallest `--wal-segment-bytes`: a segment holds its header and some records.
const WAL_SEGMENT_BYTES_MIN: u64 = 4096;
/// The largest `--wal-segment-bytes`: a reader maps a whole segment's length and the log
/// reserves a segment's blocks ahead, so a segment is a unit of address space and of disk.
const WAL_SEGMENT_BYTES_MAX: u64 = 4 << 30;

/// The bounds of `--replication-window`: below 64 KiB one append of records would not fit;
/// above 256 MiB the window's queue on a link would hold heartbeats up for seconds.
const REPLICATION_WINDOW_MIN: u64 = 64 << 10;
const REPLICATION_WINDOW_MAX: u64 = 256 << 20;

/// A byte count: digits, optionally followed by K, M, G (powers of 1000) or KiB, MiB, GiB.
fn byte_count(text: &str) -> Result<u64, String> {
    // `parse-size`: fractions (1.5GiB), any case (1gib), K/KB = 1000, Ki/KiB = 1024.
    parse_size::parse_size(text.trim()).map_err(|e| {
        format!("{text:?} is not a byte count ({e}; write e.g. 64MiB, 1.5GiB or 500M)")
    })
}

/// The longest duration a flag takes. No timing here needs more, and the arithmetic on
/// timings (a failover timeout's jitter, a heartbeat's multiples, deadlines on the clock)
/// stays far from overflow below it.
const DURATION_MAX: Duration = Duration::from_secs(10 * 31_557_600); // 10 years of 365.25 days

/// A duration flag: `50ms`, `2s`, `1h 30m`, ..., at most [`DURATION_MAX`] (10 years).
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let value =
        humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 50ms, 2s)"))?;
    if value > DURATION_MAX {
        return Err(format!(
            "{text:?} is longer than {} (write e.g. 50ms, 2s)",
            humantime::format_duration(DURATION_MAX)
        ));
    }
    Ok(value)
}

/// Flags of `understudy run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TOML file of settings: any flag of `run` without its dashes (`peer-listen =
    /// "0.0.0.0:7101"`). Flags beat the environment (UNDERSTUDY_*), which beats the file,
    /// which beats the defaults. See examples/deploy/understudy.toml.
    #[arg(long, value_name = "FILE", env = "UNDERSTUDY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the merged configuration (each setting with where it came from), then any error
    /// `run` would stop at on this machine (on standard error), and exit.
    #[arg(long)]
    pub print_config: bool,
    /// This node's id (1 or more); must appear in --peers.
    #[arg(long, env = "UNDERSTUDY_NODE_ID")]
    pub node_id: u16,
    /// Where this node keeps its log, snapshots and metadata (created with mode 700).
    #[arg(long, env = "UNDERSTUDY_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to accept peer connections on (IP:PORT).
    #[arg(long, env = "UNDERSTUDY_PEER_LISTEN")]
    pub peer_listen: SocketAddr,
    /// Every node's peer address, this one included: 1=HOST:PORT,2=HOST:PORT,... A HOST that
    /// is a DNS name is resolved each time the peer is dialled. Every node must be given the
    /// same ids: peers whose member lists differ refuse each other's connections.
    #[arg(long, env = "UNDERSTUDY_PEERS")]
    pub peers: String,
    /// The application API socket (default: `<data-dir>/app.sock`).
    #[arg(long, env = "UNDERSTUDY_APP_SOCKET")]
    pub app_socket: Option<PathBuf>,
    /// Address of the client port (a TCP proxy to the primary's application).
    #[arg(long, env = "UNDERSTUDY_CLIENT_LISTEN")]
    pub client_listen: Option<SocketAddr>,
    /// Where the local application serves clients (the client port forwards here on the
    /// primary). Announced to the peers, whose client ports connect here directly while
    /// this node is primary, if they can reach it (a loopback address only from this host).
    #[arg(long, env = "UNDERSTUDY_APP_ADDR")]
    pub app_addr: Option<SocketAddr>,
    /// Address of the admin HTTP server (/status, /primary, /metrics, ...).
    #[arg(long, env = "UNDERSTUDY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Client-port connections carried at once; more are refused.
    #[arg(
        long,
        env = "UNDERSTUDY_CLIENT_CONNECTIONS_MAX",
        default_value_t = 4096
    )]
    pub client_connections_max: usize,
    /// Close a client-port connection idle for this long.
    #[arg(long, env = "UNDERSTUDY_CLIENT_IDLE_TIMEOUT", default_value = "5m", value_parser = duration)]
    pub client_idle_timeout: Duration,
    /// How long a new client connection waits for a primary to be known (default: twice
    /// the failover timeout). A node that has heard from none of its peers for the
    /// failover timeout closes such a connection at once.
    #[arg(long, env = "UNDERSTUDY_CLIENT_HOLD", value_parser = duration)]
    pub client_hold: Option<Duration>,
    /// How often the primary sends heartbeats.
    #[arg(long, env = "UNDERSTUDY_HEARTBEAT_INTERVAL", default_value = "50ms", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// How long backups wait without a heartbeat before electing a new primary.
    #[arg(long, env = "UNDERSTUDY_FAILOVER_TIMEOUT", default_value = "500ms", value_parser = duration)]
    pub failover_timeout: Duration,
    /// Backups that must hold a record durably before it is committed (default: the
    /// smallest safe value, 1 of 3 nodes, 2 of 5).
    #[arg(long, env = "UNDERSTUDY_SYNC_REPLICAS")]
    pub sync_replicas: Option<usize>,
    /// Accept a --sync-replicas below the safe value, and with it losing acknowledged
    /// writes on failover.
    #[arg(long, env = "UNDERSTUDY_ALLOW_UNSAFE_SYNC_REPLICAS")]
    pub allow_unsafe_sync_replicas: bool,
    /// Log shipped to one backup and not yet acknowledged, at most (bytes; suffixes K, M, G,
    /// KiB, MiB, GiB; 64KiB to 256MiB). A backup a round trip R away catches up at most
    /// this much per R (2MiB at 20 ms: 100 MB/s), so raise it for a distant backup. What
    /// the window holds may queue on a link ahead of a heartbeat: on a busy machine with
    /// a short --failover-timeout, keep it small.
    #[arg(long, env = "UNDERSTUDY_REPLICATION_WINDOW", default_value = "2MiB", value_parser = byte_count)]
    pub replication_window: u64,
    /// How often to ask the application for a snapshot (every node asks its own). A node's
    /// first request comes sooner, at a place in the cycle drawn from its id, so that the
    /// nodes of a cluster do not all snapshot at once.
    #[arg(long, env = "UNDERSTUDY_SNAPSHOT_INTERVAL", default_value = "10m", value_parser = duration)]
    pub snapshot_interval: Duration,
    /// Ask for a snapshot sooner, once this much log was written since the last one
    /// (bytes; suffixes K, M, G, KiB, MiB, GiB). Staggered as the interval is: a node's
    /// first count starts part-way.
    #[arg(long, env = "UNDERSTUDY_SNAPSHOT_AFTER_BYTES", default_value = "1GiB", value_parser = byte_count)]
    pub snapshot_after_bytes: u64,
    /// Snapshots to keep; the log reaches back to the oldest of them.
    #[arg(long, env = "UNDERSTUDY_SNAPSHOTS_RETAIN", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshots_retain: u32,
    /// Bytes of log kept behind the newest snapshot, so that a briefly lagging backup
    /// catches up from the log rather than by a snapshot (suffixes as above).
    #[arg(long, env = "UNDERSTUDY_WAL_RETAIN_BYTES", default_value = "64MiB", value_parser = byte_count)]
    pub wal_retain_bytes: u64,
    /// Size at which a log segment is closed and the next one started, 4KiB to 4GiB; the
    /// log is truncated in whole segments (suffixes as above).
    #[arg(long, env = "UNDERSTUDY_WAL_SEGMENT_BYTES", default_value = "64MiB", value_parser = byte_count)]
    pub wal_segment_bytes: u64,
    /// A file holding the cluster's shared secret (at least 16 bytes); peers prove they
    /// hold it without sending it.
    #[arg(long, env = "UNDERSTUDY_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: PathBuf,
    /// During a secret rotation: the secret being replaced. Peers that hold only it are
    /// still accepted (and spoken to with it), and a data dir made under it is taken and
    /// moved to the new secret. Drop the flag once every node runs with the new secret.
    #[arg(long, env = "UNDERSTUDY_PREVIOUS_CLUSTER_SECRET_FILE")]
    pub previous_cluster_secret_file: Option<PathBuf>,
    /// A file holding the admin API's token (at least 16 bytes, readable by its owner
    /// only). With it, every request that changes state (POST /switchover, /pause,
    /// /resume) must carry `Authorization: Bearer <token>`; reads (/status, /primary,
    /// /replica, /health, /ready, /metrics) stay open. Without it, anyone who reaches the
    /// admin port may switch over or pause.
    #[arg(long, env = "UNDERSTUDY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// This node's TLS certificate (PEM, its chain after it). With --tls-key and --tls-ca,
    /// peer links use mutual TLS and the admin port serves HTTPS. A DNS name
    /// `understudy-node-<ID>` in the certificate binds it to that node. Re-read on SIGHUP.
    #[arg(long, env = "UNDERSTUDY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM; readable by its owner only).
    #[arg(long, env = "UNDERSTUDY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// --tls-ca, a flag of every command (`understudy --help`).
    #[arg(skip)]
    pub tls_ca: Option<PathBuf>,
    /// Shell command run when this node becomes primary (env: UNDERSTUDY_ROLE,
    /// UNDERSTUDY_EPOCH, UNDERSTUDY_PRIMARY, UNDERSTUDY_PRIMARY_ADDR).
    #[arg(long, env = "UNDERSTUDY_ON_PROMOTE")]
    pub on_promote: Option<String>,
    /// Shell command run when this node stops being primary (same environment), and when
    /// it stops (SIGTERM) while still primary.
    #[arg(long, env = "UNDERSTUDY_ON_DEMOTE")]
    pub on_demote: Option<String>,
    /// When appends are made durable: every group-commit batch (always) or every 10 ms
    /// (batch).
    #[arg(
        long,
        env = "UNDERSTUDY_FSYNC",
        value_enum,
        ignore_case = true,
        default_value = "always"
    )]
    pub fsync: FsyncMode,
    /// What an empty data dir is: `new` for a founding member of a new cluster (a voter from
    /// the start), `existing` for a node joining or rejoining one after its data dir was lost
    /// (a learner until it has caught up). A data dir that already holds state ignores it.
    #[arg(
        long,
        env = "UNDERSTUDY_INITIAL_CLUSTER_STATE",
        value_enum,
        ignore_case = true,
        default_value = "new"
    )]
    pub initial_cluster_state: config::InitialClusterState,
    /// How often the committed log is read back and every checksum verified; a damaged
    /// record is repaired from a peer's copy.
    #[arg(long, env = "UNDERSTUDY_SCRUB_INTERVAL", value_parser = duration, default_value = "1h")]
    pub scrub_interval: Duration,
    /// Run the application under the sidecar: `sh -c COMMAND`, started once the listeners
    /// are bound, started again when it exits, stopped after the sidecar's hand-over (env:
    /// UNDERSTUDY_APP_SOCKET, UNDERSTUDY_NODE_ID, UNDERSTUDY_ROLE, UNDERSTUDY_DATA_DIR,
    /// UNDERSTUDY_APP_ADDR, UNDERSTUDY_ADMIN).
    #[arg(long, env = "UNDERSTUDY_APP_CMD")]
    pub app_cmd: Option<String>,
    /// When the sidecar stops: how long the --app-cmd application has from SIGTERM until
    /// SIGKILL.
    #[arg(long, env = "UNDERSTUDY_APP_STOP_TIMEOUT", value_parser = duration, default_value = "5s")]
    pub app_stop_timeout: Duration,
    /// How long the primary's application may be gone (detached from the app API, not
    /// answering its pings, or refusing connections at --app-addr) before the primary hands
    /// over to a backup whose application is live (default: the failover timeout).
    #[arg(long, env = "UNDERSTUDY_APP_TIMEOUT", value_parser = duration)]
    pub app_timeout: Option<Duration>,
    /// How long the application may leave the sidecar's pings unanswered while it takes a
    /// snapshot the sidecar asked for, before it counts as hung (for --app-timeout, and for
    /// the restart of a hung --app-cmd application).
    #[arg(long, env = "UNDERSTUDY_APP_SNAPSHOT_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub app_snapshot_timeout: Duration,
    /// A higher priority wins a tie between equally up-to-date candidates, and is preferred
    /// by a switchover without --to (0-255).
    #[arg(long, env = "UNDERSTUDY_PRIORITY", default_value_t = 0)]
    pub priority: u8,
    /// Never become primary: still vote and replicate.
    #[arg(long, env = "UNDERSTUDY_NO_FAILOVER")]
    pub no_failover: bool,
    /// A witness: votes and keeps the log (two data nodes and a witness survive the loss of
    /// either data node) but runs no application and serves no client; elected only when no
    /// data node's log is as up to date, and then it hands over to one at once.
    #[arg(long, env = "UNDERSTUDY_WITNESS", conflicts_with_all = ["app_cmd", "app_addr", "follow_dir"])]
    pub witness: bool,
    /// Follow mode: replicate the application's own files in this directory (its
    /// write-ahead log: files that only grow, files installed by rename, deletions), for an
    /// application that does not use the app API. Needs --app-cmd and --app-addr: the
    /// application runs only on the primary, and the client port holds each of its replies
    /// until every change it made to the directory before replying is committed.
    #[arg(long, env = "UNDERSTUDY_FOLLOW_DIR")]
    pub follow_dir: Option<PathBuf>,
    /// Follow mode: after a promotion, once the application accepts connections, run this
    /// (`sh -c`, env UNDERSTUDY_APP_ADDR) until it exits 0 before the client port serves:
    /// for an application that accepts connections before it is ready (Redis answers
    /// -LOADING while it reads its files), e.g.
    /// `redis-cli -p 6379 ping | grep -q PONG`.
    #[arg(long, env = "UNDERSTUDY_APP_READY_CMD", requires = "follow_dir")]
    pub app_ready_cmd: Option<String>,
    /// /ready on a backup fails while more than this many committed records are not yet
    /// durable here.
    #[arg(long, env = "UNDERSTUDY_READY_MAX_LAG", default_value_t = 10_000)]
    pub ready_max_lag: u64,
}

impl RunArgs {
    /// Checks the flags against each other and builds the node's configuration.
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        if self.node_id == 0 {
            return Err(config::ConfigError::NodeIdZero(0).into());
        }
        let node_id = NodeId(self.node_id);
        let peers = config::parse_peers(&self.peers)?;
        let Some(own) = peers.get(&node_id) else {
            return Err(config::ConfigError::NodeNotInPeers {
                node_id: self.node_id,
                peers: self.peers.clone(),
            }
            .into());
        };
        if own.port() != self.peer_listen.port() {
            return Err(config::ConfigError::ListenPortMismatch {
                node_id: self.node_id,
                listen: self.peer_listen,
                addr: own.clone(),
            }
            .into());
        }
        config::check_timing(self.heartbeat_interval, self.failover_timeout)?;
        let sync_replicas = match self.sync_replicas {
            Some(value) => Some(config::check_sync_replicas(
                value,
                peers.len(),
                self.allow_unsafe_sync_replicas,
            )?),
            None => None,
        };
        if self.wal_segment_bytes < WAL_SEGMENT_BYTES_MIN {
            anyhow::bail!(
                "--wal-segment-bytes {}: must be at least {WAL_SEGMENT_BYTES_MIN}",
                self.wal_segment_bytes
            );
        }
        if self.wal_segment_bytes > WAL_SEGMENT_BYTES_MAX {
            anyhow::bail!(
                "--wal-segment-bytes {}: must be at most 4GiB",
                self.wal_segment_bytes
            );
        }
        if self.app_cmd.as_ref().is_some_and(|c| c.trim().is_empty()) {
            anyhow::bail!("--app-cmd \"\": the command is empty");
        }
        let follow = match &self.follow_dir {
            None => None,
            Some(dir) => {
                let (Some(_), Some(app_addr)) = (&self.app_cmd, self.app_addr) else {
                    anyhow::bail!(
                        "--follow-dir {}: needs --app-cmd (the application runs only on the primary) and --app-addr (where it serves clients)",
                        dir.display()
                    );
                };
                if let Some(warning) = self.app_cmd.as_deref().and_then(redis_fsync_warning) {
                    tracing::warn!("{warning}");
                }
                Some(crate::follow::node::FollowConfig {
                    dir: dir.clone(),
                    state_path: self.data_dir.join("follow-state"),
                    app_addr,
                    ready_cmd: self.app_ready_cmd.clone(),
                })
            }
        };
        let secret = ClusterSecret::load(&self.cluster_secret_file)?;
        let previous_secret = match &self.previous_cluster_secret_file {
            Some(path) => {
                let previous = ClusterSecret::load(path)?;
                if previous.cluster_id() == secret.cluster_id() {
                    anyhow::bail!(
                        "--previous-cluster-secret-file {} holds the same secret as --cluster-secret-file",
                        path.display()
                    );
                }
                Some(previous)
            }
            None => None,
        };
        let admin_token = match &self.admin_token_file {
            Some(path) => Some(config::AdminToken::load(path)?),
            None => None,
        };
        let tls = crate::tls::TlsFiles::from_flags(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
        )?
        .map(crate::tls::Tls::load)
        .transpose()?
        .map(Arc::new);
        let mut core = crate::core::Config::new(node_id, peers.keys().copied().collect());
        core.heartbeat_interval = self.heartbeat_interval;
        core.failover_timeout = self.failover_timeout;
        // Jitter and drift margin scale with the timeout (defaults: 200 ms and 50 ms of 500 ms).
        core.election_jitter = self.failover_timeout * 2 / 5;
        core.clock_drift_margin = self.failover_timeout / 10;
        core.sync_replicas = sync_replicas;
        core.allow_unsafe_sync_replicas = self.allow_unsafe_sync_replicas;
        if !(REPLICATION_WINDOW_MIN..=REPLICATION_WINDOW_MAX).contains(&self.replication_window) {
            anyhow::bail!(
                "--replication-window {}: must be from 64KiB to 256MiB",
                self.replication_window
            );
        }
        core.inflight_bytes_max = self.replication_window;
        // A record a window holds is at least a header's worth of the log: the default
        // window's 4,096 records at 512 bytes each, and as many more per byte.
        core.inflight_records_max = self.replication_window / 512;
        if self.app_timeout.is_some_and(|t| t.is_zero()) {
            anyhow::bail!("--app-timeout 0: must be more than zero");
        }
        core.app_timeout = self.app_timeout.unwrap_or(self.failover_timeout);
        if self.app_snapshot_timeout.is_zero() {
            anyhow::bail!("--app-snapshot-timeout 0: must be more than zero");
        }
        core.priority = self.priority;
        core.no_failover = self.no_failover;
        core.witness = self.witness;
        core.validate()?;
        Ok(NodeConfig {
            node_id,
            data_dir: self.data_dir.clone(),
            peers,
            secret,
            previous_secret,
            admin_token,
            tls,
            core,
            fsync: self.fsync,
            initial_cluster_state: self.initial_cluster_state.into(),
            scrub_interval: self.scrub_interval,
            client_addr: self.client_listen,
            app_addr: self.app_addr,
            admin_addr: self.admin_listen,
            ready_lag_max: self.ready_max_lag,
            app_snapshot_timeout: self.app_snapshot_timeout,
            follow,
            on_promote: self.on_promote.clone(),
            on_demote: self.on_demote.clone(),
            app_cmd: self
                .app_cmd
                .as_ref()
                .map(|command| node::supervise::AppCommand {
                    command: command.clone(),
                    stop_timeout: self.app_stop_timeout,
                    socket: self.app_socket(),
                    admin: self.admin_listen,
                }),
            proxy: node::proxy::ProxyLimits {
                connections_max: self.client_connections_max.max(1),
                idle_timeout: self.client_idle_timeout,
                hold: self.client_hold.unwrap_or(self.failover_timeout * 2),
                cut_off_after: self.failover_timeout,
            },
            snapshot: node::snapshot::SnapshotConfig {
                interval: self.snapshot_interval.max(Duration::from_millis(1)),
                after_bytes: self.snapshot_after_bytes,
                retain: self.snapshots_retain as usize,
                wal_retain_bytes: self.wal_retain_bytes,
                wal_segment_bytes: self.wal_segment_bytes,
                phase_per_mille: node::snapshot::stagger_phase(self.node_id),
            },
        })
    }

    fn app_socket(&self) -> PathBuf {
        self.app_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("app.sock"))
    }
}

/// Follow mode with `redis-server` on the command line but without `--appendfsync no` or
/// `always`: Redis's default, `everysec`, postpones its AOF write (up to 2 s) while a
/// background fsync runs and replies anyway, so a reply can leave before its write and the
/// client port cannot hold it. (A setting in a config file is not seen: hence a warning.)
fn redis_fsync_warning(command: &str) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    if !words.iter().any(|w| w.ends_with("redis-server")) {
        return None;
    }
    let setting = words
        .windows(2)
        .rev()
        .find(|pair| pair[0] == "--appendfsync")
        .map(|pair| pair[1].trim_matches(['\'', '"']));
    match setting {
        Some("no" | "always") => None,
        _ => Some(format!(
            "--follow-dir with redis-server and appendfsync {}: with everysec (Redis's default) Redis may reply before it writes its append-only file, and such a write can be lost at failover; pass --appendfsync no (the sidecars' log is the durable copy) or always",
            setting.unwrap_or("not set on the command line")
        )),
    }
}

/// Binds the app socket, replacing a stale socket file left by a previous run (the data
/// dir's lock, taken later, keeps two live nodes apart).
fn bind_app_socket(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("--app-socket {}: create its directory", path.display()))?;
    }
    match UnixListener::bind(path) {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // Someone listening? Then refuse; otherwise the file is stale.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "--app-socket {}: another process is listening on it",
                    path.display()
                );
            }
            std::fs::remove_file(path).with_context(|| {
                format!("--app-socket {}: remove the stale socket", path.display())
            })?;
            UnixListener::bind(path).with_context(|| format!("--app-socket {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("--app-socket {}", path.display())),
    }
}

async fn bind_tcp(flag: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("--{flag} {addr}: cannot listen"))
}

/// Resolves when SIGTERM or SIGINT arrives. SIGHUP, which would otherwise end the process
/// at once (a closed terminal, a reload by a service manager), is answered with one log line:
/// nothing the sidecar runs with can be reloaded yet, and it keeps running.
async fn termination(tls: Option<Arc<crate::tls::Tls>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            std::future::pending::<()>().await;
            return;
        }
    };
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler");
            None
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                return;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: stopping");
                return;
            }
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                match &tls {
                    None => tracing::info!("SIGHUP: nothing to reload; still running (SIGTERM stops, handing over first)"),
                    Some(tls) => match tls.reload() {
                        Ok(()) => tracing::info!(cert = %tls.files().cert.display(), "SIGHUP: TLS certificate, key and CA re-read; new connections use them, established ones keep theirs"),
                        Err(e) => tracing::error!("SIGHUP: {e}; still using the TLS files read before"),
                    },
                }
            }
        }
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    crate::node::mark_runtime_thread();
    runtime.block_on(async {
        let peer = bind_tcp("peer-listen", args.peer_listen).await?;
        // Made before the app socket, which is in it by default, so that a data dir
        // understudy creates is private (wal::fs::ensure_dir) and not the umask's.
        wal::fs::ensure_dir(&args.data_dir)
            .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
        let app = bind_app_socket(&args.app_socket())?;
        let admin = match args.admin_listen {
            Some(addr) => Some(bind_tcp("admin-listen", addr).await?),
            None => None,
        };
        tracing::info!(
            node = %config.node_id,
            peer = %args.peer_listen,
            app_socket = %args.app_socket().display(),
            admin = args.admin_listen.map(|a| a.to_string()),
            client = args.client_listen.map(|a| a.to_string()),
            "understudy starting"
        );
        let client = match args.client_listen {
            Some(addr) => Some(bind_tcp("client-listen", addr).await?),
            None => None,
        };
        let tls = config.tls.clone();
        node::run(
            config,
            Listeners {
                peer,
                app,
                admin,
                client,
            },
            termination(tls),
        )
        .await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duration too long for the arithmetic on timings (a failover timeout of 10^19 s
    /// overflowed its jitter's `* 2`) is refused as the flag is read, in one line.
    #[test]
    fn duration_flags_have_a_ceiling() {
        assert_eq!(duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(duration("3650days"), Ok(Duration::from_secs(3650 * 86_400)));
        let error = duration("10000000000000000000s").unwrap_err();
        assert!(error.contains("longer than 10years"), "{error}");
        assert!(duration("3653days").is_err());
        assert!(duration("fast").is_err());
    }

    #[test]
    fn redis_without_a_safe_appendfsync_is_warned_of() {
        assert!(redis_fsync_warning("exec redis-server --port 1 --appendfsync no").is_none());
        assert!(redis_fsync_warning("redis-server --appendfsync 'always'").is_none());
        assert!(redis_fsync_warning("exec ./kv --listen x").is_none());
        let warning = redis_fsync_warning("exec /usr/bin/redis-server --port 1").unwrap();
        assert!(warning.contains("not set on the command line"), "{warning}");
        assert!(redis_fsync_warning("redis-server --appendfsync everysec")
            .unwrap()
            .contains("appendfsync everysec"));
    }

    #[test]
    fn byte_counts_take_fractions_and_any_case() {
        assert_eq!(byte_count("1.5GiB"), Ok(3 << 29));
        assert_eq!(byte_count("1gib"), Ok(1 << 30));
        assert_eq!(byte_count("64MiB"), Ok(64 << 20));
        assert_eq!(byte_count("500M"), Ok(500_000_000));
        assert_eq!(byte_count(" 4096 "), Ok(4096));
        let error = byte_count("lots").unwrap_err();
        assert!(error.contains("is not a byte count"), "{error}");
    }

    /// `understudy run` with the flags every run needs (a secret at `secret`), then `extra`.
    fn parse_run(extra: &[&str], secret: &str) -> Result<RunArgs, clap::Error> {
        use clap::Parser;
        let mut argv = vec![
            "understudy",
            "run",
            "--node-id",
            "1",
            "--data-dir",
            "/tmp/d",
            "--peer-listen",
            "127.0.0.1:1",
            "--peers",
            "1=127.0.0.1:1,2=127.0.0.1:2",
            "--cluster-secret-file",
            secret,
        ];
        argv.extend_from_slice(extra);
        let crate::cli::Command::Run(args) = crate::cli::Cli::try_parse_from(argv)?.command else {
            unreachable!("parsed as `run`");
        };
        Ok(*args)
    }

    fn run_args(extra: &[&str], secret: &std::path::Path) -> anyhow::Result<NodeConfig> {
        parse_run(extra, secret.to_str().unwrap())?.config()
    }

    /// `--replication-window` sets the bytes and the records a backup's window holds (the
    /// default is the core's own), within its bounds.
    #[test]
    fn the_replication_window_sets_the_backups_window() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a secret of more than sixteen bytes").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let default = crate::core::Config::new(wal::NodeId(1), vec![wal::NodeId(1)]);
        let core = run_args(&[], &secret).unwrap().core;
        assert_eq!(core.inflight_bytes_max, default.inflight_bytes_max);
        assert_eq!(core.inflight_records_max, default.inflight_records_max);
        let core = run_args(&["--replication-window", "32MiB"], &secret)
            .unwrap()
            .core;
        assert_eq!(core.inflight_bytes_max, 32 << 20);
        assert_eq!(core.inflight_records_max, 65_536);
        for bad in ["32KiB", "1GiB"] {
            let error = run_args(&["--replication-window", bad], &secret)
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("must be from 64KiB to 256MiB"), "{error}");
        }
    }

    #[test]
    fn enum_flags_take_any_case() {
        let args = parse_run(
            &["--fsync", "Always", "--initial-cluster-state", "EXISTING"],
            "/tmp/s",
        );
        assert!(args.is_ok(), "{:?}", args.err());
    }
}
