//! The peer transport: one outbound connection to every other node (dialled, reconnected
//! with backoff, authenticated), and an accept loop for the connections they dial to us.
//!
//! Messages go out on the connection we dialled and come in on the ones others dialled, so a
//! connection carries traffic one way and its two ends never race to set it up. Outbound
//! queues are bounded; a message that does not fit, or that is queued while the peer is
//! unreachable, is dropped, exactly as the network might drop it: the core retransmits what
//! matters. Inbound frames are checked (handshake, size, record CRCs and LSN range) before the
//! core loop sees them; a peer that sends anything malformed is logged and dropped, and the
//! node carries on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::clock::BootInstant;
use crate::config::{ClusterSecret, PeerAddr};
use crate::core::Message;
use crate::proto::peer::{
    encode_head, encode_message_head, proof_text, DecodeError, Frame, Hello, PeerCodec,
    ACCEPTOR_LABEL, DIALLER_LABEL, NONCE_LEN, PROTOCOL_VERSION,
};
use crate::NodeId;

/// Messages queued for one peer, at most. At a heartbeat every 50 ms and appends bounded by
/// the core's in-flight window, a healthy link never holds more than a few.
const OUTBOUND_QUEUE_MAX: usize = 1024;
/// The send buffer of a link to a backup. Large enough that a batch of appends is copied
/// into it and leaves in one `write`, rather than one per record run: a memcpy of a few
/// KiB costs less than a syscall.
const SEND_BUFFER_BYTES: usize = 256 << 10;
/// A peer connection: plain TCP, or TLS over it (`--tls-cert`, [`crate::tls`]).
pub(crate) type PeerStream = Either<TcpStream, tokio_rustls::TlsStream<TcpStream>>;

/// A handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a peer may stay out of reach (never reached since this node started, or since
/// its link went down) before a warning says so: long enough for a cluster's nodes to start
/// one after another, short enough that a wrong address or a name that does not resolve is
/// in the log while the operator still looks.
const UNREACHED_WARN_AFTER: Duration = Duration::from_secs(10);
/// Inbound connections in their handshake at once, at most; more are closed as they are
/// accepted. Each holds a descriptor and a buffer of up to a handshake frame
/// (`proto::peer::HANDSHAKE_FRAME_LEN_MAX`) for at most [`HANDSHAKE_TIMEOUT`]: without a
/// bound, connections that never authenticate could use up the process's descriptors
/// (which the log's segments and the other ports need too). Authenticated connections do
/// not count.
const HANDSHAKES_MAX: usize = 64;
/// A link dialled only to answer a node outside the configuration ([`PeerNet::send`]) is
/// closed once nothing has been sent on it for this long: the node it answers may be gone for
/// good (removed, and stopped), and its dial loop would otherwise go on, warning that the
/// node is out of reach. An election asks again within a failover timeout or two.
const REPLY_LINK_IDLE: Duration = Duration::from_secs(5);

/// A message received from a peer, checked: for an `Append`, `records` holds exactly the
/// records it names, every CRC verified.
#[derive(Debug)]
pub struct Inbound {
    pub from: NodeId,
    pub message: Message,
    pub records: Option<wal::format::VerifiedRecords>,
}

/// A message to send: the core's message and, for an `Append`, the record bytes (possibly in
/// several pieces, written back to back without copying them together).
#[derive(Debug)]
pub struct Outbound {
    pub message: Message,
    pub records: Vec<Bytes>,
}

/// Record bytes queued for one peer, at most. The core keeps at most its in-flight window
/// (2 MiB) unacknowledged per backup, so a connected link stays well below this; a peer
/// that is down or stalled would otherwise collect up to `OUTBOUND_QUEUE_MAX` resends of
/// that window, each pinning its pages of the log. Past the bound a message with records is
/// dropped, as a lossy network would; the core ships it again when the link makes progress.
const OUTBOUND_QUEUE_BYTES_MAX: usize = 16 << 20;

/// An [`Outbound`] in a peer's queue, its record bytes counted against
/// [`OUTBOUND_QUEUE_BYTES_MAX`] until it is written or discarded.
struct Queued {
    outbound: Outbound,
    _charge: Charge,
}

/// Gives its bytes back to the queue's count when dropped.
struct Charge {
    bytes: usize,
    queued: Arc<AtomicUsize>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// One peer's outbound queue.
struct PeerQueue {
    tx: mpsc::Sender<Queued>,
    /// Record bytes in `tx`, charged by [`Charge`].
    bytes: Arc<AtomicUsize>,
    /// Where it is dialled.
    addr: PeerAddr,
    /// Stops its dial loop when it leaves the configuration or moves.
    stop: CancellationToken,
}

/// The configuration as the transport knows it: the handshake's member list, and where to
/// reach every other member.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    /// The LSN of the configuration's record; 0 for the seed of `--peers`.
    pub lsn: u64,
    /// Every member's id, this node's included, ascending.
    pub ids: Vec<NodeId>,
    /// Every other member's peer address.
    pub addrs: BTreeMap<NodeId, PeerAddr>,
}

/// What the transport needs to know.
#[derive(Clone)]
pub struct PeerConfig {
    pub node_id: NodeId,
    pub cluster_id: u64,
    pub secret: ClusterSecret,
    /// The secret being rotated out (`--previous-cluster-secret-file`) and its cluster id:
    /// accepted from peers that do not hold the new one yet, and used towards them.
    pub previous: Option<(u64, ClusterSecret)>,
    /// The latest configuration: the handshake's member list and every member's address,
    /// changed by [`PeerNet::set_peers`].
    pub membership: Arc<Mutex<Membership>>,
    /// This node's client port, told to peers in the handshake.
    pub client_addr: Option<SocketAddr>,
    /// This node's admin address, told to peers in the handshake.
    pub admin_addr: Option<SocketAddr>,
    /// Where peers reach this node (its own entry in `--peers`), told to them in the
    /// handshake so that one whose configuration does not name this node yet can still
    /// answer it ([`PeerNet::send`]).
    pub peer_addr: Option<PeerAddr>,
    /// Where this node's application serves clients, told to peers in the handshake so
    /// that their client ports forward to it directly while this node is primary. `None`
    /// where clients must pass this node's own client port (follow mode: its reply barrier).
    pub app_addr: Option<SocketAddr>,
    pub metrics: Arc<super::metrics::Metrics>,
    /// Where a snapshot connection's data goes (`snapshot::transfer::receive`).
    pub snapshots: Arc<super::snapshot::Snapshots>,
    /// The local log, for answering repair requests (`repair::serve`).
    pub reader: wal::reader::Reader,
    /// Mutual TLS on every peer connection, when set.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The origin of the core's clock (`Shell::now`): an append's send time is read from it
    /// again as the append leaves ([`send_loop`]).
    pub started: BootInstant,
}

/// Connects to a peer: resolves its name now (every call, so a peer that moved is found at
/// its new address) and tries each address in the resolver's order (`localhost` may give
/// `::1` before `127.0.0.1`). Returns the stream and the address it reached.
pub(crate) async fn connect(addr: &PeerAddr) -> std::io::Result<(TcpStream, SocketAddr)> {
    let mut last = None;
    for candidate in addr.resolve().await? {
        match TcpStream::connect(candidate).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok((stream, candidate));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
}

impl PeerConfig {
    /// The latest configuration as the transport knows it.
    pub fn membership(&self) -> Membership {
        self.membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where member `id` is, if it is one.
    pub fn addr_of(&self, id: NodeId) -> Option<PeerAddr> {
        self.membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .addrs
            .get(&id)
            .cloned()
    }
}

/// A member list and its configuration's LSN as the handshake's tags cover them.
fn member_bytes(members: &[NodeId], config_lsn: u64) -> Vec<u8> {
    members
        .iter()
        .flat_map(|id| id.get().to_le_bytes())
        .chain(config_lsn.to_le_bytes())
        .collect()
}

/// A member list for a log line: `1,2,3`.
fn member_list(members: &[NodeId]) -> String {
    members
        .iter()
        .map(|id| id.get().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The running transport.
pub struct PeerNet {
    config: Arc<PeerConfig>,
    queues: BTreeMap<NodeId, PeerQueue>,
    connected: BTreeMap<NodeId, Arc<AtomicBool>>,
    /// The links dialled only to answer a node outside the configuration, and when each was
    /// last sent on.
    replies: BTreeMap<NodeId, tokio::time::Instant>,
    tracker: tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
    /// Addresses peers told us in their handshakes.
    client_addrs: Arc<Mutex<BTreeMap<NodeId, Announced>>>,
}

/// What a peer announced in its handshake.
#[derive(Debug, Clone, Default)]
pub struct Announced {
    pub client: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub app: Option<SocketAddr>,
    /// Where it accepts peer connections.
    pub peer: Option<PeerAddr>,
    /// The address the peer's connection came from (its host, as this node sees it).
    pub remote: Option<SocketAddr>,
}

impl Announced {
    /// The peer's application address, if this node can reach it there. An address on
    /// loopback (or the unspecified address, which a connect takes for this host) names the
    /// peer's application only from the peer's own host: from anywhere else it would reach
    /// whatever listens on that port here, this node's own application perhaps. So it is
    /// used only when the peer's connection came from a loopback address too.
    pub fn app_reachable(&self) -> Option<SocketAddr> {
        let app = self.app?;
        let local_only = |ip: std::net::IpAddr| {
            let ip = ip.to_canonical();
            ip.is_loopback() || ip.is_unspecified()
        };
        if !local_only(app.ip()) {
            return Some(app);
        }
        let remote = self.remote?;
        local_only(remote.ip()).then_some(app)
    }
}

impl PeerNet {
    /// Starts the accept loop, and the dialling tasks for the members `config.membership`
    /// holds. Inbound messages go to `inbound`.
    pub fn start(
        config: Arc<PeerConfig>,
        listener: TcpListener,
        inbound: mpsc::Sender<Inbound>,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> PeerNet {
        let client_addrs = Arc::new(Mutex::new(BTreeMap::new()));
        tracker.spawn(accept_loop(
            Arc::clone(&config),
            listener,
            inbound,
            Arc::clone(&client_addrs),
            tracker.clone(),
            shutdown.clone(),
        ));
        let membership = config.membership();
        let mut net = PeerNet {
            config,
            queues: BTreeMap::new(),
            connected: BTreeMap::new(),
            replies: BTreeMap::new(),
            tracker: tracker.clone(),
            shutdown,
            client_addrs,
        };
        net.set_peers(membership.lsn, &membership.ids, &membership.addrs);
        net
    }

    /// Brings the dialled peers in line with a configuration: `ids` every member (this node
    /// included), `addrs` where the others are. A peer that left, or moved to another address,
    /// has its dial loop stopped (messages queued for it are dropped, as a network would);
    /// a new one, or one at a new address, gets a fresh one.
    pub fn set_peers(&mut self, lsn: u64, ids: &[NodeId], addrs: &BTreeMap<NodeId, PeerAddr>) {
        {
            let mut membership = self
                .config
                .membership
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            membership.lsn = lsn;
            membership.ids = ids.to_vec();
            membership.addrs = addrs.clone();
        }
        let own = self.config.node_id;
        // A link dialled only to answer a node outside the configuration stays while it stays
        // outside (until it is idle, `close_idle_replies`): a backup catching up replays the
        // log's configurations, and one that predates its primary must not cut the link its
        // answers take. One that became a member is a member's link from now on, if at the
        // same address.
        let replies = &mut self.replies;
        replies.retain(|id, _| !addrs.contains_key(id));
        self.queues.retain(|id, queue| {
            let keep = addrs.get(id) == Some(&queue.addr) || replies.contains_key(id);
            if !keep {
                queue.stop.cancel();
            }
            keep
        });
        self.connected
            .retain(|id, _| addrs.contains_key(id) || replies.contains_key(id));
        for (&peer, addr) in addrs {
            if peer == own || self.queues.contains_key(&peer) {
                continue;
            }
            self.link(peer, addr.clone());
        }
    }

    /// Starts dialling `peer` at `addr`, with a fresh queue.
    fn link(&mut self, peer: NodeId, addr: PeerAddr) -> &PeerQueue {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE_MAX);
        let flag = Arc::new(AtomicBool::new(false));
        let stop = self.shutdown.child_token();
        self.connected.insert(peer, Arc::clone(&flag));
        let span = tracing::info_span!("peer", peer = %peer, %addr, dir = "out");
        self.tracker.spawn(
            dial_loop(
                Arc::clone(&self.config),
                peer,
                addr.clone(),
                rx,
                flag,
                stop.clone(),
            )
            .instrument(span),
        );
        let before = self.queues.insert(
            peer,
            PeerQueue {
                tx,
                bytes: Arc::new(AtomicUsize::new(0)),
                addr,
                stop,
            },
        );
        assert!(before.is_none(), "peer {peer} linked twice");
        &self.queues[&peer]
    }

    /// Where the transport dials peer `id` now, if it does.
    pub fn addr_of(&self, id: NodeId) -> Option<PeerAddr> {
        self.config.addr_of(id)
    }

    /// Queues a message for `to`; drops it if the queue is full, by count or by record bytes
    /// (as a lossy network would).
    ///
    /// A node this one does not dial (outside its latest configuration, and neither
    /// departing nor the primary it follows) is answered at the peer address it announced
    /// when it connected: a candidate added while this node was down asks for its vote
    /// before this node has the record that names it, and an election that needs this
    /// node's vote would otherwise never end; and a backup catching up through a
    /// configuration that predates its primary would otherwise go unheard, the primary's
    /// window would fill, and it would never get past that record. Such a link lasts until
    /// the node becomes a member or nothing was sent on it for [`REPLY_LINK_IDLE`].
    pub fn send(&mut self, to: NodeId, outbound: Outbound) {
        if to == self.config.node_id {
            return;
        }
        if let Some(used) = self.replies.get_mut(&to) {
            *used = tokio::time::Instant::now();
        }
        let queue = match self.queues.get(&to) {
            Some(queue) => queue,
            None => {
                let Some(addr) = self.announced(to).peer else {
                    debug!(peer = %to, "no link to the peer and no address it announced; message dropped");
                    return;
                };
                info!(peer = %to, %addr, "answering a node outside this node's configuration at the peer address it announced");
                self.replies.insert(to, tokio::time::Instant::now());
                self.link(to, addr)
            }
        };
        let bytes: usize = outbound.records.iter().map(Bytes::len).sum();
        if bytes > 0 {
            let before = queue.bytes.fetch_add(bytes, Ordering::Relaxed);
            if before > 0 && before + bytes > OUTBOUND_QUEUE_BYTES_MAX {
                queue.bytes.fetch_sub(bytes, Ordering::Relaxed);
                debug!(peer = %to, queued = before, "outbound queue holds too many record bytes; append dropped");
                return;
            }
        }
        let queued = Queued {
            outbound,
            _charge: Charge {
                bytes,
                queued: Arc::clone(&queue.bytes),
            },
        };
        if queue.tx.try_send(queued).is_err() {
            debug!(peer = %to, "outbound queue full or closed; message dropped");
        }
    }

    /// Closes the links dialled only to answer a node outside the configuration that nothing
    /// was sent on for [`REPLY_LINK_IDLE`]. Called periodically by the shell.
    pub fn close_idle_replies(&mut self) {
        self.close_idle_replies_at(tokio::time::Instant::now());
    }

    /// [`PeerNet::close_idle_replies`] as of `now`.
    fn close_idle_replies_at(&mut self, now: tokio::time::Instant) {
        let idle: Vec<NodeId> = self
            .replies
            .iter()
            .filter(|&(_, &used)| now.duration_since(used) >= REPLY_LINK_IDLE)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.replies.remove(&id);
            self.connected.remove(&id);
            if let Some(queue) = self.queues.remove(&id) {
                queue.stop.cancel();
            }
            debug!(peer = %id, "closed the idle link to a node outside the configuration");
        }
    }

    /// The transport's configuration, for a snapshot connection (`snapshot::transfer::send`).
    pub fn config(&self) -> Arc<PeerConfig> {
        Arc::clone(&self.config)
    }

    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.connected
            .get(&peer)
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    /// The client address `peer` announced, if it has connected to us.
    pub fn client_addr(&self, peer: NodeId) -> Option<SocketAddr> {
        self.announced(peer).client
    }

    /// The admin address `peer` announced, if it has connected to us.
    pub fn admin_addr(&self, peer: NodeId) -> Option<SocketAddr> {
        self.announced(peer).admin
    }

    /// The application address `peer` announced, if it has connected to us and this node
    /// can reach it there ([`Announced::app_reachable`]).
    pub fn app_addr(&self, peer: NodeId) -> Option<SocketAddr> {
        self.announced(peer).app_reachable()
    }

    fn announced(&self, peer: NodeId) -> Announced {
        self.client_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .cloned()
            .unwrap_or_default()
    }
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    // The OS generator does not fail on Linux once booted; if it ever did, a zero nonce
    // only weakens replay protection for that one handshake, so do not stop the node.
    if let Err(e) = getrandom::fill(&mut nonce) {
        warn!(error = %e, "no randomness for a handshake nonce");
    }
    nonce
}

fn id_bytes(from: NodeId, to: NodeId) -> [u8; 4] {
    let mut bytes = [0u8; 4];
    bytes[..2].copy_from_slice(&from.get().to_le_bytes());
    bytes[2..].copy_from_slice(&to.get().to_le_bytes());
    bytes
}

/// Why a connection ended or could not be set up.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("{0}")]
    Tls(String),
    #[error("connection closed")]
    Closed,
    #[error("snapshot transfer: {0}")]
    Snapshot(String),
}

async fn read_frame(
    stream: &mut FramedRead<tokio::io::ReadHalf<PeerStream>, PeerCodec>,
) -> Result<Frame, LinkError> {
    match stream.next().await {
        Some(frame) => Ok(frame?),
        None => Err(LinkError::Closed),
    }
}

/// Dials `peer` forever (until shutdown), sending what the core queues for it.
async fn dial_loop(
    config: Arc<PeerConfig>,
    peer: NodeId,
    addr: PeerAddr,
    mut queue: mpsc::Receiver<Queued>,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut was_up = false;
    // The address last reached, to log when a name moves.
    let mut reached: Option<SocketAddr> = addr.socket_addr();
    let mut last_refusal: Option<String> = None;
    // Since when the peer has been out of reach, and the last error warned about, so that
    // an address that stays wrong is warned about once per error, not once per attempt.
    let mut unreached_since = tokio::time::Instant::now();
    let mut last_unreached: Option<String> = None;
    loop {
        let attempt = async {
            // A name is resolved again for every attempt: a peer that comes back at another
            // address is reached there.
            let (stream, now) = connect(&addr).await?;
            if reached != Some(now) {
                info!(resolved = %now, "peer reached at this address");
                reached = Some(now);
            }
            tokio::time::timeout(HANDSHAKE_TIMEOUT, dial_handshake(&config, peer, stream))
                .await
                .map_err(|_| LinkError::Timeout)?
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = attempt => result,
        };
        match result {
            Ok(stream) => {
                info!("connected");
                last_refusal = None;
                last_unreached = None;
                connected.store(true, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
                was_up = true;
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = send_loop(stream, &mut queue, config.started) => result,
                };
                connected.store(false, Ordering::Relaxed);
                unreached_since = tokio::time::Instant::now();
                match result {
                    Ok(()) => return, // the queue closed: the node is stopping
                    Err(e) => warn!(error = %e, "disconnected"),
                }
            }
            Err(LinkError::Handshake(reason)) => {
                // Once per reason, not once per attempt: a refusal that stands (another
                // member list, another secret) would otherwise fill the log every second.
                if last_refusal.as_deref() != Some(reason.as_str()) {
                    warn!(%reason, "peer refused or failed the handshake (logged again only if the reason changes)");
                    last_refusal = Some(reason);
                } else {
                    debug!(%reason, "peer refused or failed the handshake");
                }
            }
            Err(e) => {
                let error = e.to_string();
                if was_up {
                    info!(%error, "cannot reconnect");
                    was_up = false;
                } else if unreached_since.elapsed() >= UNREACHED_WARN_AFTER
                    && last_unreached.as_deref() != Some(error.as_str())
                {
                    warn!(%error, out_of_reach_s = unreached_since.elapsed().as_secs(), "peer out of reach (logged again only if the error changes or after it was reached)");
                    last_unreached = Some(error);
                } else {
                    debug!(%error, "cannot connect");
                }
            }
        }
        while queue.try_recv().is_ok() {}
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The dialler's side of TLS, when the node runs with it: the acceptor's certificate must be
/// signed by the cluster's CA and, if it names nodes, name `peer` (`crate::tls`).
async fn dial_tls(
    config: &PeerConfig,
    peer: NodeId,
    stream: TcpStream,
) -> Result<PeerStream, LinkError> {
    let Some(tls) = &config.tls else {
        return Ok(Either::Left(stream));
    };
    // The name is only sent (SNI); the certificate is checked against the CA and the node
    // names, not a host name.
    let name = rustls::pki_types::ServerName::IpAddress(stream.peer_addr()?.ip().into());
    let stream = tls
        .peer_connector()
        .connect(name, stream)
        .await
        .map_err(|e| LinkError::Handshake(crate::tls::describe(&e)))?;
    crate::tls::check_node_name(stream.get_ref().1.peer_certificates(), peer)
        .map_err(|reason| LinkError::Handshake(format!("node {peer}: {reason}")))?;
    Ok(Either::Right(stream.into()))
}

/// The dialler's side of the handshake (module docs).
pub(super) async fn dial_handshake(
    config: &PeerConfig,
    peer: NodeId,
    stream: TcpStream,
) -> Result<BufWriter<PeerStream>, LinkError> {
    let stream = dial_tls(config, peer, stream).await?;
    let (read, write) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read, PeerCodec::default());
    let mut writer = BufWriter::new(write);
    let nonce_d = nonce();
    let view = config.membership();
    let members = member_bytes(&view.ids, view.lsn);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        cluster_id: config.cluster_id,
        from: config.node_id,
        to: peer,
        nonce: nonce_d,
        members: view.ids.clone(),
        config_lsn: view.lsn,
        previous_cluster_id: config.previous.as_ref().map_or(0, |(id, _)| *id),
        client_addr: config.client_addr,
        admin_addr: config.admin_addr,
    };
    write_frame_half(&mut writer, &Frame::Hello(hello)).await?;
    let ids = id_bytes(config.node_id, peer);
    let answer = match read_frame(&mut reader).await {
        // Under TLS 1.3 the acceptor checks this node's certificate after the dialler's side
        // of the TLS handshake is done: its refusal arrives here, as an alert.
        Err(LinkError::Decode(DecodeError::Io(words))) if config.tls.is_some() => {
            return Err(LinkError::Handshake(words))
        }
        answer => answer?,
    };
    match answer {
        Frame::Challenge {
            which,
            nonce: nonce_a,
            tag,
        } => {
            // The acceptor holds the secret it names: the current one, or during a rotation
            // the previous one.
            let secret = match (which, &config.previous) {
                (0, _) => &config.secret,
                (_, Some((_, previous))) => previous,
                (_, None) => {
                    return Err(LinkError::Handshake(
                        "the peer answered for a previous secret this node does not have".into(),
                    ))
                }
            };
            if !secret.verify(&[ACCEPTOR_LABEL, &ids, &nonce_d, &nonce_a, &members], &tag) {
                return Err(LinkError::Handshake(
                    "the peer does not hold the cluster secret".into(),
                ));
            }
            let text = proof_text(config.app_addr, config.peer_addr.as_ref());
            let proof = secret.mac(&[
                DIALLER_LABEL,
                &ids,
                &nonce_a,
                &nonce_d,
                &members,
                text.as_bytes(),
            ]);
            write_frame_half(
                &mut writer,
                &Frame::Proof {
                    tag: proof,
                    app_addr: config.app_addr,
                    peer_addr: config.peer_addr.clone(),
                },
            )
            .await?;
        }
        Frame::Refuse { reason } => return Err(LinkError::Handshake(reason)),
        other => {
            return Err(LinkError::Handshake(format!(
                "expected a challenge, got {other:?}"
            )))
        }
    }
    // The acceptor sends nothing more; keep its read half alive with the stream.
    let read = reader.into_inner();
    let stream = read.unsplit(writer.into_inner());
    // Watch for the acceptor closing (or refusing after our proof) by reading in the send
    // loop's select; here just hand the stream on.
    Ok(BufWriter::with_capacity(SEND_BUFFER_BYTES, stream))
}

async fn write_frame_half(
    writer: &mut BufWriter<tokio::io::WriteHalf<PeerStream>>,
    frame: &Frame,
) -> Result<(), LinkError> {
    let mut head = BytesMut::with_capacity(128);
    let records = encode_head(frame, &mut head);
    writer.write_all(&head).await?;
    writer.write_all(&records).await?;
    writer.flush().await?;
    Ok(())
}

/// Writes queued messages, flushing whenever the queue runs dry. Returns `Ok` when the
/// queue closes (shutdown), `Err` when the connection breaks.
///
/// An append's send time (`Append::sent_at`, a reading of the core's clock, which runs from
/// `started`) is read again just before its head is written. The core stamped it when it
/// made the append; since then the append may have waited behind megabytes of earlier ones
/// on this link (a follow-mode bulk load ships records of up to a MiB in appends of several),
/// and a backup's answer counts towards the lease from the stamp it echoes (`lease.rs`). The
/// later reading is still taken before the backup can receive the append, the one thing
/// step 1 of the lease argument needs of it; readings taken in queue order never go back,
/// so the echoes of one run of this node still only move forward; and the core's own
/// reading for the answer comes after it, so the echo is never in the core's future.
async fn send_loop(
    mut stream: BufWriter<PeerStream>,
    queue: &mut mpsc::Receiver<Queued>,
    started: BootInstant,
) -> Result<(), LinkError> {
    let mut head = BytesMut::with_capacity(4096);
    let mut probe = [0u8; 1];
    loop {
        let outbound = tokio::select! {
            outbound = queue.recv() => outbound,
            // The acceptor never writes after the handshake: a read that returns means it
            // closed the connection (or refused our proof).
            read = stream.get_mut().read(&mut probe) => {
                return match read {
                    Ok(_) => Err(LinkError::Closed),
                    Err(e) => Err(LinkError::Io(e)),
                };
            }
        };
        let Some(Queued { mut outbound, .. }) = outbound else {
            return Ok(());
        };
        loop {
            if let Message::Append(append) = &mut outbound.message {
                let leaving = crate::core::Time::from_duration(started.elapsed()).as_duration();
                append.sent_at = append.sent_at.max(leaving);
            }
            head.clear();
            let records_len: usize = outbound.records.iter().map(Bytes::len).sum();
            encode_message_head(&outbound.message, records_len, &mut head);
            stream.write_all(&head).await?;
            for piece in &outbound.records {
                stream.write_all(piece).await?;
            }
            match queue.try_recv() {
                Ok(next) => outbound = next.outbound,
                Err(_) => break,
            }
        }
        stream.flush().await?;
    }
}

/// Accepts connections from peers until shutdown.
async fn accept_loop(
    config: Arc<PeerConfig>,
    listener: TcpListener,
    inbound: mpsc::Sender<Inbound>,
    client_addrs: Arc<Mutex<BTreeMap<NodeId, Announced>>>,
    tracker: tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) {
    // Refusals already logged, by reason, and when: a peer refused for a reason that stands
    // (another CA, another secret) dials again every second.
    let refusals: Arc<Mutex<BTreeMap<String, tokio::time::Instant>>> = Arc::default();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed on the peer port");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
            // Closed at once: a peer dials again, with backoff.
            let reason = format!(
                "{HANDSHAKES_MAX} connections are in their handshake already; closing new ones until one ends"
            );
            if first_in_a_while(&refusals, &reason) {
                warn!(%remote, %reason, "inbound connection refused (logged again after a minute)");
            }
            drop(stream);
            continue;
        };
        let config = Arc::clone(&config);
        let inbound = inbound.clone();
        let client_addrs = Arc::clone(&client_addrs);
        let shutdown = shutdown.clone();
        let metrics = Arc::clone(&config.metrics);
        let refusals = Arc::clone(&refusals);
        let span = tracing::info_span!("peer", %remote, dir = "in");
        tracker.spawn(
            async move {
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = serve_inbound(config, stream, handshake, inbound, client_addrs) => result,
                };
                match result {
                    Ok(()) | Err(LinkError::Closed) => debug!("inbound connection closed"),
                    Err(e @ (LinkError::Tls(_) | LinkError::Handshake(_))) => {
                        super::metrics::Metrics::add(&metrics.peer_frames_refused, 1);
                        let reason = e.to_string();
                        if first_in_a_while(&refusals, &reason) {
                            warn!(error = %reason, "inbound connection refused (logged again for this reason after a minute)");
                        } else {
                            debug!(error = %reason, "inbound connection refused");
                        }
                    }
                    Err(e) => {
                        super::metrics::Metrics::add(&metrics.peer_frames_refused, 1);
                        let reason = e.to_string();
                        if first_in_a_while(&refusals, &reason) {
                            warn!(error = %reason, "inbound connection dropped (logged again for this reason after a minute)");
                        } else {
                            debug!(error = %reason, "inbound connection dropped");
                        }
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Whether `reason` was not logged in the last minute (and notes that it is now).
pub(crate) fn first_in_a_while(
    logged: &Mutex<BTreeMap<String, tokio::time::Instant>>,
    reason: &str,
) -> bool {
    const QUIET: Duration = Duration::from_secs(60);
    let now = tokio::time::Instant::now();
    let mut logged = logged.lock().unwrap_or_else(|e| e.into_inner());
    logged.retain(|_, at| now.duration_since(*at) < QUIET);
    if logged.contains_key(reason) {
        return false;
    }
    logged.insert(reason.to_owned(), now);
    true
}

/// The acceptor's side of one connection: handshake, then receive frames.
async fn serve_inbound(
    config: Arc<PeerConfig>,
    stream: TcpStream,
    handshake_turn: tokio::sync::OwnedSemaphorePermit,
    inbound: mpsc::Sender<Inbound>,
    client_addrs: Arc<Mutex<BTreeMap<NodeId, Announced>>>,
) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    let remote = stream.peer_addr().ok();
    let handshake = async {
        // TLS first, when the node runs with it: the dialler's certificate must be signed
        // by the cluster's CA; the node names it carries are checked against its hello.
        let (stream, named) = match &config.tls {
            None => (Either::Left(stream), Vec::new()),
            Some(tls) => {
                let stream = tls
                    .peer_acceptor()
                    .accept(stream)
                    .await
                    .map_err(|e| LinkError::Tls(crate::tls::describe(&e)))?;
                let named = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(<[_]>::first)
                    .map(crate::tls::named_nodes)
                    .unwrap_or_default();
                (Either::Right(stream.into()), named)
            }
        };
        let (read, write) = tokio::io::split(stream);
        // Frames of a handshake's size until the dialler has proved it holds the secret.
        let mut reader = FramedRead::new(read, PeerCodec::handshake());
        let mut writer = BufWriter::new(write);
        let from = accept_handshake(&config, &named, &mut reader, &mut writer).await?;
        reader.decoder_mut().handshake_passed();
        Ok::<_, LinkError>((from, reader, writer))
    };
    let ((from, announced), mut reader, writer) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| LinkError::Timeout)??;
    drop(handshake_turn);
    client_addrs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            from,
            Announced {
                remote,
                ..announced
            },
        );
    // Said once the first frame shows a link (snapshot and repair connections, one per
    // attempt, would say it several times a second while a transfer keeps failing).
    let mut said = false;
    loop {
        let frame = read_frame(&mut reader).await?;
        if !said {
            said = true;
            if matches!(
                frame,
                Frame::SnapshotBegin { .. } | Frame::RepairRequest { .. }
            ) {
                debug!(peer = %from, "peer connected for a snapshot or a repair");
            } else {
                info!(peer = %from, "peer connected");
            }
        }
        if let Frame::SnapshotBegin { .. } = frame {
            // A snapshot connection: it carries nothing else.
            return super::snapshot::transfer::receive(
                &config.snapshots,
                from,
                frame,
                reader,
                writer,
            )
            .await
            .map_err(LinkError::Snapshot);
        }
        if let Frame::RepairRequest {
            first_lsn,
            last_lsn,
        } = frame
        {
            // A repair connection: one request, one answer.
            debug!(first_lsn = %first_lsn, last_lsn = %last_lsn, "peer asks for records to repair its log");
            return Ok(super::repair::serve(&config.reader, first_lsn, last_lsn, writer).await?);
        }
        let Frame::Message { message, records } = frame else {
            return Err(LinkError::Handshake(
                "handshake frame after the handshake".into(),
            ));
        };
        let records = match message {
            Message::Append(append) if append.last_lsn > append.prev_lsn => {
                // Invariant 5: verify every record before anything else sees it.
                let verified =
                    wal::format::verify_records(records, append.first_lsn).map_err(|reason| {
                        LinkError::Handshake(format!(
                            "append {}..={}: {reason}",
                            append.first_lsn, append.last_lsn
                        ))
                    })?;
                if verified.last_lsn() != append.last_lsn
                    || verified.first_epoch() != append.records_epoch
                    || verified.last_epoch() != append.records_epoch
                {
                    return Err(LinkError::Handshake(format!(
                        "append names lsns {}..={} of epoch {} but carries {}..={} of epochs {}..={}",
                        append.first_lsn,
                        append.last_lsn,
                        append.records_epoch,
                        verified.first_lsn(),
                        verified.last_lsn(),
                        verified.first_epoch(),
                        verified.last_epoch()
                    )));
                }
                Some(verified)
            }
            _ => {
                if !records.is_empty() {
                    return Err(LinkError::Handshake(
                        "records attached to a message that takes none".into(),
                    ));
                }
                None
            }
        };
        if inbound
            .send(Inbound {
                from,
                message,
                records,
            })
            .await
            .is_err()
        {
            return Ok(()); // the core loop stopped
        }
    }
}

/// The acceptor's side of the handshake. Returns the peer's id and the addresses it
/// announced.
async fn accept_handshake(
    config: &PeerConfig,
    named: &[NodeId],
    reader: &mut FramedRead<tokio::io::ReadHalf<PeerStream>, PeerCodec>,
    writer: &mut BufWriter<tokio::io::WriteHalf<PeerStream>>,
) -> Result<(NodeId, Announced), LinkError> {
    let hello = match read_frame(reader).await? {
        Frame::Hello(hello) => hello,
        other => {
            return Err(LinkError::Handshake(format!(
                "expected hello, got {other:?}"
            )));
        }
    };
    let view = config.membership();
    // The secret both hold: the dialler's current one if we hold it (as our current or our
    // previous), else its previous one (a rotation under way on one side or the other).
    let ours = |id: u64| -> Option<&ClusterSecret> {
        if id == 0 {
            None
        } else if id == config.cluster_id {
            Some(&config.secret)
        } else {
            config
                .previous
                .as_ref()
                .filter(|(previous, _)| *previous == id)
                .map(|(_, secret)| secret)
        }
    };
    let shared = ours(hello.cluster_id)
        .map(|secret| (0u8, secret))
        .or_else(|| ours(hello.previous_cluster_id).map(|secret| (1u8, secret)));
    let refusal = if hello.version != PROTOCOL_VERSION {
        Some(format!(
            "protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
            hello.version
        ))
    } else if shared.is_none() {
        Some("another cluster (the cluster secrets differ)".to_owned())
    } else if hello.to != config.node_id {
        Some(format!(
            "this is node {}, not node {}",
            config.node_id, hello.to
        ))
    } else if hello.from == config.node_id || crate::core::Members::bit(hello.from).is_none() {
        Some(format!("node id {} cannot be a member", hello.from))
    } else if !named.is_empty() && !named.contains(&hello.from) {
        let list: Vec<String> = named.iter().map(ToString::to_string).collect();
        Some(format!(
            "the dialler says it is node {} but its TLS certificate names node {}",
            hello.from,
            list.join(", ")
        ))
    } else if hello.config_lsn == 0 && view.lsn == 0 && hello.members != view.ids {
        Some(format!(
            "node {} was started with members {} and node {} with members {}: nodes that \
             disagree about the members disagree about what a majority is, so they do not \
             talk; start every node with the same ids in --peers",
            hello.from,
            member_list(&hello.members),
            config.node_id,
            member_list(&view.ids),
        ))
    } else {
        if (hello.config_lsn, &hello.members) != (view.lsn, &view.ids) {
            // Usual for a moment during a change (one node has the record, the other not
            // yet); the log settles it (`core::members`).
            info!(
                peer = %hello.from,
                peer_config_lsn = hello.config_lsn,
                peer_members = %member_list(&hello.members),
                config_lsn = view.lsn,
                members = %member_list(&view.ids),
                "a peer knows another configuration than this node"
            );
        }
        None
    };
    if let Some(reason) = refusal {
        let _ = write_frame_half(
            writer,
            &Frame::Refuse {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(LinkError::Handshake(reason));
    }
    let Some((which, secret)) = shared else {
        unreachable!("refused above without a shared secret");
    };
    let ids = id_bytes(hello.from, hello.to);
    let members = member_bytes(&hello.members, hello.config_lsn);
    let nonce_a = nonce();
    let tag = secret.mac(&[ACCEPTOR_LABEL, &ids, &hello.nonce, &nonce_a, &members]);
    write_frame_half(
        writer,
        &Frame::Challenge {
            which,
            nonce: nonce_a,
            tag,
        },
    )
    .await?;
    let (app_addr, peer_addr) = match read_frame(reader).await? {
        Frame::Proof {
            tag,
            app_addr,
            peer_addr,
        } => {
            let text = proof_text(app_addr, peer_addr.as_ref());
            if !secret.verify(
                &[
                    DIALLER_LABEL,
                    &ids,
                    &nonce_a,
                    &hello.nonce,
                    &members,
                    text.as_bytes(),
                ],
                &tag,
            ) {
                let reason = format!("node {} does not hold the cluster secret", hello.from);
                let _ = write_frame_half(
                    writer,
                    &Frame::Refuse {
                        reason: reason.clone(),
                    },
                )
                .await;
                return Err(LinkError::Handshake(reason));
            }
            (app_addr, peer_addr)
        }
        other => {
            return Err(LinkError::Handshake(format!(
                "expected proof, got {other:?}"
            )))
        }
    };
    Ok((
        hello.from,
        Announced {
            client: hello.client_addr,
            admin: hello.admin_addr,
            app: app_addr,
            peer: peer_addr,
            // Filled in by the caller, which holds the socket.
            remote: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(app: &str, remote: &str) -> Announced {
        Announced {
            app: Some(app.parse().unwrap()),
            remote: Some(remote.parse().unwrap()),
            ..Announced::default()
        }
    }

    /// An append's send time is read again as it leaves, so an append that waited in the
    /// queue (behind megabytes of earlier ones) is not counted towards the lease from when
    /// the core made it; a message that is not an append leaves as it was.
    #[tokio::test]
    async fn an_append_is_stamped_again_as_it_leaves() {
        use crate::core::{Append, Time};
        use wal::{Epoch, Lsn};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let started = BootInstant::now();
        let made_at = Duration::from_millis(1);
        let append = |sent_at| Append {
            epoch: Epoch(3),
            prev_lsn: Lsn(0),
            prev_epoch: Epoch(0),
            first_lsn: Lsn(1),
            last_lsn: Lsn(0),
            records_epoch: Epoch(3),
            commit_lsn: Lsn(0),
            sent_at,
            promote: 0,
            promote_through: Lsn(0),
            paused: false,
            pause_stamp: 0,
            config: None,
            successor: None,
        };
        let (tx, mut rx) = mpsc::channel(4);
        let queued = Arc::new(AtomicUsize::new(0));
        for message in [
            Message::Append(append(made_at)),
            Message::TimeoutNow { epoch: Epoch(3) },
            // Made "later" than the clock reads: it keeps its own stamp.
            Message::Append(append(Duration::from_secs(3600))),
        ] {
            let outbound = Outbound {
                message,
                records: Vec::new(),
            };
            let charge = Charge {
                bytes: 0,
                queued: Arc::clone(&queued),
            };
            tx.send(Queued {
                outbound,
                _charge: charge,
            })
            .await
            .unwrap();
        }
        drop(tx);
        // The messages wait in the queue for a while before the link takes them.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sending = tokio::spawn(async move {
            let stream = BufWriter::new(Either::Left(client));
            send_loop(stream, &mut rx, started).await
        });
        let mut reader = FramedRead::new(server, PeerCodec::default());
        let mut got = Vec::new();
        while let Some(frame) = reader.next().await {
            match frame.unwrap() {
                Frame::Message { message, .. } => got.push(message),
                other => panic!("unexpected frame {other:?}"),
            }
        }
        let read_at = Time::from_duration(started.elapsed()).as_duration();
        sending.await.unwrap().unwrap();
        assert_eq!(got.len(), 3, "{got:?}");
        let Message::Append(first) = &got[0] else {
            panic!("not an append: {:?}", got[0]);
        };
        assert!(
            first.sent_at >= Duration::from_millis(30) && first.sent_at <= read_at,
            "stamped {:?}, read at {read_at:?}",
            first.sent_at
        );
        assert_eq!(first.last_lsn, Lsn(0));
        assert!(matches!(got[1], Message::TimeoutNow { epoch: Epoch(3) }));
        let Message::Append(last) = &got[2] else {
            panic!("not an append: {:?}", got[2]);
        };
        assert_eq!(last.sent_at, Duration::from_secs(3600));
    }

    /// An application address on loopback (or unspecified) is used only when the peer is on
    /// this host (its connection came from loopback); any other address is used as given.
    #[test]
    fn a_loopback_application_address_is_reachable_only_from_its_own_host() {
        let reachable = |app, remote| announced(app, remote).app_reachable();
        let app = |addr: &str| Some(addr.parse::<SocketAddr>().unwrap());
        assert_eq!(
            reachable("127.0.0.1:6379", "127.0.0.1:40000"),
            app("127.0.0.1:6379")
        );
        assert_eq!(
            reachable("127.0.0.1:6379", "[::1]:40000"),
            app("127.0.0.1:6379")
        );
        assert_eq!(
            reachable("127.0.0.1:6379", "[::ffff:127.0.0.1]:40000"),
            app("127.0.0.1:6379")
        );
        assert_eq!(reachable("127.0.0.1:6379", "10.0.0.7:40000"), None);
        assert_eq!(reachable("[::1]:6379", "10.0.0.7:40000"), None);
        assert_eq!(reachable("0.0.0.0:6379", "10.0.0.7:40000"), None);
        assert_eq!(reachable("[::ffff:127.0.0.1]:6379", "10.0.0.7:40000"), None);
        assert_eq!(
            reachable("10.0.0.7:6379", "10.0.0.7:40000"),
            app("10.0.0.7:6379")
        );
        assert_eq!(
            reachable("10.0.0.7:6379", "127.0.0.1:40000"),
            app("10.0.0.7:6379")
        );
        // Nothing announced, or no connection seen: nothing to reach.
        assert_eq!(Announced::default().app_reachable(), None);
        let unseen = Announced {
            remote: None,
            ..announced("127.0.0.1:6379", "127.0.0.1:1")
        };
        assert_eq!(unseen.app_reachable(), None);
    }

    /// A node outside the configuration is answered on a link of its own, dialled at the
    /// peer address it announced (and dropped if it announced none). A change of
    /// configuration that still leaves it out keeps that link; every send keeps it open;
    /// [`REPLY_LINK_IDLE`] with nothing sent on it closes it. One that becomes a member at
    /// that address keeps the link as a member's, which idleness does not close.
    #[tokio::test]
    async fn a_reply_link_lasts_while_it_is_used_and_closes_when_idle() {
        use wal::Epoch;
        let data = tempfile::tempdir().unwrap();
        let (wal, _) = wal::Wal::open(data.path().join("wal"), wal::Options::default()).unwrap();
        let own = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Where node 3 says it listens: a listener of the test's, to see the dial arrive.
        let announced = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let three_addr = PeerAddr::parse(&announced.local_addr().unwrap().to_string()).unwrap();
        let (one, two, three) = (NodeId(1), NodeId(2), NodeId(3));
        // Node 2 is a member that is never reached.
        let members = BTreeMap::from([(two, PeerAddr::parse("127.0.0.1:1").unwrap())]);
        let config = Arc::new(PeerConfig {
            node_id: one,
            cluster_id: 7,
            secret: ClusterSecret::from_bytes(std::path::Path::new("test"), &[7; 32]).unwrap(),
            previous: None,
            membership: Arc::new(Mutex::new(Membership {
                lsn: 0,
                ids: vec![one, two],
                addrs: members.clone(),
            })),
            client_addr: None,
            admin_addr: None,
            peer_addr: None,
            app_addr: None,
            metrics: Arc::new(super::super::metrics::Metrics::default()),
            snapshots: Arc::new(super::super::snapshot::Snapshots::detached()),
            reader: wal.reader(),
            tls: None,
            started: BootInstant::now(),
        });
        let (inbound, _inbound) = mpsc::channel(8);
        let tracker = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let mut net = PeerNet::start(config, own, inbound, &tracker, shutdown.clone());
        let message = || Outbound {
            message: Message::TimeoutNow { epoch: Epoch(1) },
            records: Vec::new(),
        };
        let linked = |net: &PeerNet| net.queues.contains_key(&three);

        // Nothing announced: the message is dropped and nothing is dialled.
        net.send(three, message());
        assert!(!linked(&net) && !net.replies.contains_key(&three));

        net.client_addrs.lock().unwrap().insert(
            three,
            Announced {
                peer: Some(three_addr.clone()),
                ..Announced::default()
            },
        );
        net.send(three, message());
        assert!(linked(&net) && net.replies.contains_key(&three));
        let (_dialled, _) = tokio::time::timeout(Duration::from_secs(10), announced.accept())
            .await
            .expect("node 3 dialled at the address it announced")
            .unwrap();
        let stop = net.queues[&three].stop.clone();

        // A new configuration that still leaves node 3 out keeps its link.
        net.set_peers(5, &[one, two], &members);
        assert!(linked(&net) && !stop.is_cancelled());

        // Each send restarts the idle clock; a whole REPLY_LINK_IDLE without one closes it.
        let first = tokio::time::Instant::now();
        net.close_idle_replies_at(first + REPLY_LINK_IDLE - Duration::from_millis(100));
        assert!(linked(&net));
        tokio::time::sleep(Duration::from_millis(50)).await;
        net.send(three, message());
        let second = tokio::time::Instant::now();
        net.close_idle_replies_at(first + REPLY_LINK_IDLE + Duration::from_millis(10));
        assert!(
            linked(&net) && !stop.is_cancelled(),
            "a link used within the limit stays"
        );
        net.close_idle_replies_at(second + REPLY_LINK_IDLE);
        assert!(!linked(&net) && !net.replies.contains_key(&three));
        assert!(!net.connected.contains_key(&three) && stop.is_cancelled());

        // Answered again, then made a member at that address: a member's link from then on.
        net.send(three, message());
        assert!(linked(&net) && net.replies.contains_key(&three));
        let stop = net.queues[&three].stop.clone();
        let mut with_three = members.clone();
        with_three.insert(three, three_addr);
        net.set_peers(6, &[one, two, three], &with_three);
        assert!(linked(&net) && !net.replies.contains_key(&three));
        net.close_idle_replies_at(tokio::time::Instant::now() + REPLY_LINK_IDLE * 2);
        assert!(
            linked(&net) && !stop.is_cancelled(),
            "a member's link never idles out"
        );

        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
