//! Validation of the sidecar's flags. [`crate::cli::run::RunArgs`] holds the flags as
//! typed (each with an `UNDERSTUDY_*` environment fallback); `RunArgs::config` checks them
//! against each other with the functions here and refuses, with one line that names the
//! flag and the value, anything that would make the node misbehave later. What can only be checked against the
//! world (a port in use, a data dir of another cluster) is checked when the node starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::NodeId;

/// A configuration a node must not start with. Each names the flag and the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--node-id {0}: node ids start at 1")]
    NodeIdZero(u16),
    #[error("--peers: {entry:?} is not ID=HOST:PORT ({reason})")]
    PeerSyntax { entry: String, reason: String },
    #[error("--peers: node id {0} appears twice")]
    DuplicatePeerId(u16),
    #[error("{flag} {path}: its mode is {mode:04o}, so the group or others can read it; a secret must be readable by its owner only (chmod 600 {path})")]
    NotPrivate {
        flag: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("--admin-token-file {path}: {reason}")]
    AdminToken { path: PathBuf, reason: String },
    #[error("--peers: address {0} appears twice")]
    DuplicatePeerAddr(PeerAddr),
    #[error("--node-id {node_id} is not in --peers ({peers})")]
    NodeNotInPeers { node_id: u16, peers: String },
    #[error("--peer-listen {listen} and --peers entry {node_id}={addr} differ in port: peers could not reach this node")]
    ListenPortMismatch {
        node_id: u16,
        listen: SocketAddr,
        addr: PeerAddr,
    },
    #[error("--heartbeat-interval {heartbeat:?} must be at most a third of --failover-timeout {failover:?}, so that two lost heartbeats do not cause a failover")]
    HeartbeatTooSlow {
        heartbeat: Duration,
        failover: Duration,
    },
    #[error("--{flag} {value:?} must be more than zero")]
    ZeroDuration { flag: &'static str, value: Duration },
    #[error("--sync-replicas {value}: a cluster of {nodes} nodes has only {backups} backups")]
    SyncReplicasTooMany {
        value: usize,
        nodes: usize,
        backups: usize,
    },
    #[error("--sync-replicas {value} with {nodes} nodes would lose acknowledged writes on failover (the safe minimum is {safe}); pass --allow-unsafe-sync-replicas to accept that")]
    SyncReplicasUnsafe {
        value: usize,
        nodes: usize,
        safe: usize,
    },
    #[error("--cluster-secret-file {path}: {reason}")]
    Secret { path: PathBuf, reason: String },
}

/// When the WAL makes appends durable before they count (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncMode {
    /// fdatasync every group-commit batch before acknowledging it.
    Always,
    /// fdatasync at most every 10 ms; a crash of this machine can lose the last few
    /// milliseconds of its log (still safe while a majority of machines survive).
    Batch,
}

/// What an empty data dir is (`--initial-cluster-state`, etcd's flag and meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialClusterState {
    /// A founding member of a new cluster: a voter from its first start. Ignored by a data
    /// dir that already holds state; a founding member that hears of a cluster with a log
    /// turns learner at once.
    New,
    /// Joining or rejoining an existing cluster (a replaced machine, a wiped disk): a learner
    /// that neither votes nor counts towards commit until it has caught up.
    Existing,
}

impl From<InitialClusterState> for crate::node::disk::InitialClusterState {
    fn from(state: InitialClusterState) -> Self {
        match state {
            InitialClusterState::New => crate::node::disk::InitialClusterState::New,
            InitialClusterState::Existing => crate::node::disk::InitialClusterState::Existing,
        }
    }
}

/// The shared secret that authenticates peers, and the cluster id derived from it.
#[derive(Clone)]
pub struct ClusterSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// At least this many bytes of secret (after trimming a trailing newline).
    pub const LEN_MIN: usize = 16;

    pub fn from_bytes(path: &std::path::Path, bytes: &[u8]) -> Result<ClusterSecret, ConfigError> {
        let key = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let key = key.strip_suffix(b"\r").unwrap_or(key);
        if key.len() < Self::LEN_MIN {
            return Err(ConfigError::Secret {
                path: path.to_owned(),
                reason: format!(
                    "the secret is {} bytes; use at least {} (e.g. `head -c 32 /dev/urandom | base64`)",
                    key.len(),
                    Self::LEN_MIN
                ),
            });
        }
        Ok(ClusterSecret { key: key.to_vec() })
    }

    pub fn load(path: &std::path::Path) -> Result<ClusterSecret, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError::Secret {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        check_private("--cluster-secret-file", path)?;
        Self::from_bytes(path, &bytes)
    }

    /// HMAC-SHA256 of `parts` under the secret.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // A key of any length is accepted by HMAC; `new_from_slice` cannot fail here.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Compares a MAC in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in parts {
            mac.update(part);
        }
        mac.verify_slice(tag).is_ok()
    }

    /// The id stored in every data dir of this cluster: a data dir made under another
    /// secret is refused at startup.
    pub fn cluster_id(&self) -> u64 {
        let tag = self.mac(&[b"understudy cluster id v1"]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&tag[..8]);
        u64::from_le_bytes(id)
    }
}

/// Refuses a secret file that its group or others may read (any of the mode bits 077): a
/// secret anyone on the machine can read is no secret. Called after the file was read, so
/// a missing file is reported as such first.
pub fn check_private(flag: &'static str, path: &std::path::Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        // Read a moment ago; if it is gone now, the read's outcome stands.
        Err(_) => return Ok(()),
    };
    if mode & 0o077 != 0 {
        return Err(ConfigError::NotPrivate {
            flag,
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// The admin API's bearer token (`--admin-token-file`): every request that changes state
/// must carry `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct AdminToken {
    token: Vec<u8>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// At least this many bytes of token.
    pub const LEN_MIN: usize = 16;

    /// A token given as text (`UNDERSTUDY_ADMIN_TOKEN`, or a file's content): surrounding
    /// white space (a trailing newline) is not part of it; what is left must be at least
    /// [`AdminToken::LEN_MIN`] bytes of visible ASCII, as an HTTP header carries it.
    pub fn from_text(text: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if token.len() < Self::LEN_MIN {
            return Err(format!(
                "the token is {} bytes; use at least {} (e.g. `head -c 32 /dev/urandom | base64`)",
                token.len(),
                Self::LEN_MIN
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII characters without spaces".into());
        }
        Ok(AdminToken {
            token: token.as_bytes().to_vec(),
        })
    }

    /// Reads `--admin-token-file`, which must be readable by its owner only.
    pub fn load(path: &std::path::Path) -> Result<AdminToken, ConfigError> {
        let error = |reason: String| ConfigError::AdminToken {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        check_private("--admin-token-file", path)?;
        Self::from_text(&text).map_err(error)
    }

    /// The token, for a request's `Authorization: Bearer` header.
    pub fn as_str(&self) -> &str {
        // Checked to be ASCII when made.
        std::str::from_utf8(&self.token).unwrap_or_default()
    }

    /// Whether an `Authorization` header value is `Bearer <this token>` (the scheme in any
    /// case, as HTTP has it), the token compared in constant time.
    pub fn admits(&self, header: Option<&[u8]>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(given) = header.and_then(|h| {
            let (scheme, rest) = h.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"Bearer ").then_some(rest)
        }) else {
            return false;
        };
        let given = given.trim_ascii();
        given.len() == self.token.len() && bool::from(given.ct_eq(&self.token))
    }
}

/// A peer's address from `--peers`: `IP:PORT` (`[IPv6]:PORT`), or `NAME:PORT` with a DNS
/// name that is resolved each time the peer is dialled, so a peer whose name moves to
/// another address (a Kubernetes pod restarted) is reached at the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// An IP address, or a host name (letters, digits, `-`, `_` and `.`).
    host: String,
    port: u16,
    /// `host` parsed, when it is an IP address.
    ip: Option<std::net::IpAddr>,
}

impl PeerAddr {
    /// Parses `HOST:PORT`; the reason it is not one otherwise.
    pub fn parse(text: &str) -> Result<PeerAddr, &'static str> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or("the address is not HOST:PORT")?;
        let port: u16 = port
            .parse()
            .map_err(|_| "the port is not a number from 1 to 65535")?;
        if port == 0 {
            return Err("the port is not a number from 1 to 65535");
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(PeerAddr {
                host: ip.to_string(),
                port,
                ip: Some(ip),
            });
        }
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63)
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err("the host is neither an IP address nor a DNS name");
        }
        Ok(PeerAddr {
            host: host.to_ascii_lowercase(),
            port,
            ip: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address, if it is given as an IP address (nothing to resolve).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip.map(|ip| SocketAddr::new(ip, self.port))
    }

    /// The addresses to dial now, in the resolver's order: the IP address as given, or
    /// what the name resolves to (through the system's resolver, `/etc/hosts` included).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.socket_addr() {
            return Ok(vec![addr]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.host),
            ));
        }
        Ok(addrs)
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            Some(ip @ std::net::IpAddr::V6(_)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Parses `--peers 1=host:port,2=host:port,...`. A host is an IP address or a DNS name
/// (resolved when dialled, [`PeerAddr`]).
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, PeerAddr>, ConfigError> {
    let mut peers: BTreeMap<NodeId, PeerAddr> = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let syntax = |reason: &str| ConfigError::PeerSyntax {
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        };
        let (id, addr) = entry.split_once('=').ok_or_else(|| syntax("missing '='"))?;
        let id: u16 = id
            .trim()
            .parse()
            .map_err(|_| syntax("the id is not a number from 1 to 65535"))?;
        if id == 0 {
            return Err(syntax("node ids start at 1"));
        }
        let addr = PeerAddr::parse(addr.trim()).map_err(syntax)?;
        if peers.values().any(|a| *a == addr) {
            return Err(ConfigError::DuplicatePeerAddr(addr));
        }
        if peers.insert(NodeId(id), addr).is_some() {
            return Err(ConfigError::DuplicatePeerId(id));
        }
    }
    if peers.is_empty() {
        return Err(ConfigError::PeerSyntax {
            entry: text.to_owned(),
            reason: "no peers given".to_owned(),
        });
    }
    Ok(peers)
}

/// The smallest `--sync-replicas` that keeps every acknowledged write across a failover and
/// across a membership change: the commit quorum (primary + this many backups) must be a
/// majority, `s = majority - 1` (1 of 3, 2 of 4, 2 of 5; `core::members` says why a
/// majority and not merely `N - majority`).
pub fn safe_sync_replicas(nodes: usize) -> usize {
    // The same rule as the core's `Config::sync_replicas_safe_min`.
    (nodes / 2 + 1).saturating_sub(1)
}

/// Checks a `--sync-replicas` value for a cluster of `nodes`.
pub fn check_sync_replicas(
    value: usize,
    nodes: usize,
    allow_unsafe: bool,
) -> Result<usize, ConfigError> {
    let backups = nodes.saturating_sub(1);
    if value > backups {
        return Err(ConfigError::SyncReplicasTooMany {
            value,
            nodes,
            backups,
        });
    }
    let safe = safe_sync_replicas(nodes);
    if value < safe && !allow_unsafe {
        return Err(ConfigError::SyncReplicasUnsafe { value, nodes, safe });
    }
    Ok(value)
}

/// Checks the heartbeat against the failover timeout.
pub fn check_timing(heartbeat: Duration, failover: Duration) -> Result<(), ConfigError> {
    if heartbeat.is_zero() {
        return Err(ConfigError::ZeroDuration {
            flag: "heartbeat-interval",
            value: heartbeat,
        });
    }
    if failover.is_zero() {
        return Err(ConfigError::ZeroDuration {
            flag: "failover-timeout",
            value: failover,
        });
    }
    if heartbeat * 3 > failover {
        return Err(ConfigError::HeartbeatTooSlow {
            heartbeat,
            failover,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token is admitted after the `Bearer` scheme in any case (HTTP's schemes are
    /// case-insensitive), and nothing else is.
    #[test]
    fn the_admin_token_is_admitted_after_a_bearer_scheme_in_any_case() {
        let token = AdminToken::from_text("0123456789abcdef0123").unwrap();
        for header in [
            &b"Bearer 0123456789abcdef0123"[..],
            b"bearer 0123456789abcdef0123",
            b"BEARER 0123456789abcdef0123 ",
        ] {
            assert!(
                token.admits(Some(header)),
                "{}",
                String::from_utf8_lossy(header)
            );
        }
        for header in [
            &b"Basic 0123456789abcdef0123"[..],
            b"Bearer 0123456789abcdef012",
            b"Bearer0123456789abcdef0123",
            b"Bearer",
            b"",
        ] {
            assert!(
                !token.admits(Some(header)),
                "{}",
                String::from_utf8_lossy(header)
            );
        }
        assert!(!token.admits(None));
    }

    #[test]
    fn peers_parse_and_refuse_duplicates() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=127.0.0.1:7003").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(
            peers[&NodeId(2)].socket_addr(),
            Some("127.0.0.1:7002".parse().unwrap())
        );
        assert_eq!(
            parse_peers("1=127.0.0.1:7001,1=127.0.0.1:7002"),
            Err(ConfigError::DuplicatePeerId(1))
        );
        assert_eq!(
            parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7001"),
            Err(ConfigError::DuplicatePeerAddr(
                PeerAddr::parse("127.0.0.1:7001").unwrap()
            ))
        );
        // Names are kept as names (lower case), resolved only when dialled.
        let named = parse_peers("1=db-0.db.svc:7101,2=LOCALHOST:7102,3=[::1]:7103").unwrap();
        assert_eq!(named[&NodeId(1)].to_string(), "db-0.db.svc:7101");
        assert_eq!(named[&NodeId(1)].socket_addr(), None);
        assert_eq!(named[&NodeId(2)].to_string(), "localhost:7102");
        assert_eq!(named[&NodeId(3)].to_string(), "[::1]:7103");
        assert_eq!(named[&NodeId(3)].port(), 7103);
        for bad in [
            "1:127.0.0.1:7001",
            "x=127.0.0.1:1",
            "0=127.0.0.1:1",
            "1=localhost",
            "1=localhost:0",
            "1=local host:7001",
            "1=db..svc:7001",
            "1=:7001",
            "",
        ] {
            let err = parse_peers(bad).unwrap_err();
            assert!(
                matches!(err, ConfigError::PeerSyntax { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn sync_replicas_below_a_majority_is_refused_in_plain_words() {
        assert_eq!(safe_sync_replicas(3), 1);
        assert_eq!(safe_sync_replicas(5), 2);
        // Even clusters: 2 of 4 meets every majority of 4, but not every majority of the
        // 3 or 5 voters before or after a membership change; a commit needs 3 of 4.
        assert_eq!(safe_sync_replicas(4), 2);
        for nodes in 1..=9 {
            let mut core = crate::core::Config::new(
                crate::NodeId(1),
                (1..=nodes as u16).map(crate::NodeId).collect(),
            );
            core.sync_replicas = None;
            assert_eq!(
                safe_sync_replicas(nodes),
                core.sync_replicas_safe_min(),
                "{nodes} nodes"
            );
        }
        assert_eq!(check_sync_replicas(1, 3, false), Ok(1));
        let err = check_sync_replicas(0, 3, false).unwrap_err();
        assert!(err
            .to_string()
            .contains("would lose acknowledged writes on failover"));
        assert_eq!(check_sync_replicas(0, 3, true), Ok(0));
        assert!(matches!(
            check_sync_replicas(3, 3, false),
            Err(ConfigError::SyncReplicasTooMany { .. })
        ));
    }

    #[test]
    fn heartbeat_must_fit_three_times_in_the_failover_timeout() {
        let ms = Duration::from_millis;
        assert!(check_timing(ms(50), ms(500)).is_ok());
        assert!(matches!(
            check_timing(ms(200), ms(500)),
            Err(ConfigError::HeartbeatTooSlow { .. })
        ));
        assert!(check_timing(ms(0), ms(500)).is_err());
    }

    #[test]
    fn secret_is_never_printed_and_gives_a_stable_cluster_id() {
        let path = std::path::Path::new("/secret");
        let secret = ClusterSecret::from_bytes(path, b"0123456789abcdef0123\n").unwrap();
        assert_eq!(format!("{secret:?}"), "ClusterSecret(..)");
        let same = ClusterSecret::from_bytes(path, b"0123456789abcdef0123").unwrap();
        assert_eq!(secret.cluster_id(), same.cluster_id());
        let other = ClusterSecret::from_bytes(path, b"another secret of enough length").unwrap();
        assert_ne!(secret.cluster_id(), other.cluster_id());
        let tag = secret.mac(&[b"challenge"]);
        assert!(secret.verify(&[b"challenge"], &tag));
        assert!(!other.verify(&[b"challenge"], &tag));
        assert!(ClusterSecret::from_bytes(path, b"short").is_err());
    }
}
