//! The client port: a protocol-agnostic TCP proxy to whichever node is primary.
//!
//! On the primary (holding its lease) a connection is forwarded to the local application
//! (`--app-addr`). On a backup it is forwarded in one hop, straight to the primary's
//! application, at the address the primary announced in the peer handshake
//! (`proto::peer`, `Proof`), when this node can reach it there
//! ([`super::peer::Announced::app_reachable`]: a loopback address only from the primary's
//! own host). Otherwise, or when that connect fails, it goes to the primary's client port,
//! which forwards it again (two hops); a failed address is skipped for
//! [`DIRECT_RETRY_AFTER`] so that each new connection does not wait for it. While no
//! primary is known, a new connection is held for up to the hold time and then closed, or
//! at once while the node is cut off: it has heard from none of its peers for a failover
//! timeout (a partition, or every peer down), so it will not know a primary soon, and a
//! client is better off trying another node.
//! Each connection remembers the `(role, epoch, primary)` it was routed under; the moment
//! the node's status says otherwise (it stopped being primary, or the primary changed) the
//! connection is closed, so no client keeps talking to a stale primary.
//!
//! A connection a backup forwards straight to the primary's application bypasses the
//! primary's client port, so the primary's sidecar does not cut it when its lease lapses:
//! the backup cuts it once its own status names another primary (or none), and until then
//! the application itself answers only while its sidecar is primary, as the app API's
//! contract has it (a write commits only through a primary holding its lease; the example
//! key-value server also asks its sidecar for a lease read before every read, which only a
//! primary holding its lease answers). Follow mode keeps two hops:
//! there the primary's client port holds every reply until the application's changes are
//! committed (the reply barrier), and serves only once the application does, so a primary
//! in follow mode announces no application address and a backup in follow mode never
//! forwards to one.
//!
//! Bytes are copied once each way through one buffer per direction
//! (`copy_bidirectional_with_sizes`), in a task that does nothing else; both legs have
//! TCP_NODELAY. A second task per connection watches the node's status and the idle time
//! and ends the copy when either says so. splice(2) through a pipe per direction, which
//! keeps the bytes in the kernel, was measured against this copy and cost as much CPU
//! (`benches/README.md`, "Client port and failover seen by a client"): with requests and
//! replies of a few hundred bytes to a few KiB the copying is not what costs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::clock::ServingUntil;
use super::handle::{NodeHandle, NodeStatus};
use super::handoff::HandOver;
use crate::core::Role;
use crate::follow::node::Serving;
use crate::follow::ship::Shipper;

/// Buffer per direction per connection.
const BUFFER_LEN: usize = 64 << 10;

/// How long a backup waits to connect to the primary's application before it goes through
/// the primary's client port instead (at most half the hold time, which leaves the other
/// half for that).
const DIRECT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an application address that could not be reached is skipped.
const DIRECT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Limits of the client port.
#[derive(Debug, Clone, Copy)]
pub struct ProxyLimits {
    /// Client connections carried at once; more are closed at accept.
    pub connections_max: usize,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long a new connection waits for a primary to be known.
    pub hold: Duration,
    /// A node that has heard from none of its peers for this long (the failover timeout) is
    /// cut off: a connection with nowhere to go is closed at once rather than held.
    pub cut_off_after: Duration,
}

/// Where a connection goes, and the state it was routed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    target: SocketAddr,
    /// Where to go when `target` cannot be reached: on a backup forwarding to the primary's
    /// application, the primary's client port.
    fallback: Option<SocketAddr>,
    role: Role,
    epoch: u64,
    primary: Option<u16>,
}

/// The route for new connections under `status`, if any. `follow_serving`: in follow mode,
/// whether the follow task has the application serving (the primary's route waits for it).
fn route(
    status: &NodeStatus,
    app_addr: Option<SocketAddr>,
    follow_serving: Option<bool>,
) -> Option<Route> {
    let app_ok = match follow_serving {
        Some(serving) => serving,
        None => !status.app_health.expected || status.app_health.live,
    };
    let (target, fallback) = match status.role {
        // A primary whose application is gone holds new connections (up to the hold time)
        // until it is back or another node is primary, rather than failing them.
        Role::Primary if status.lease_held && app_ok => (app_addr?, None),
        Role::Primary | Role::Candidate => return None,
        // One hop where the primary's application can be reached, never in follow mode
        // (module docs: the reply barrier is the primary's client port's).
        Role::Backup => match status.primary_app_addr.filter(|_| follow_serving.is_none()) {
            Some(app) => (app, status.primary_client_addr),
            None => (status.primary_client_addr?, None),
        },
    };
    Some(Route {
        target,
        fallback,
        role: status.role,
        epoch: status.epoch,
        primary: status.primary,
    })
}

/// How much longer a node is to hear from none of its peers before it counts as cut off:
/// zero when it already is, `None` when silence alone never makes it so. `has_peers`: it
/// has some; `silence`: how long it has heard from none, `None` if it never heard from
/// one (just started: its peers may be starting too); `after`: the failover timeout. In an
/// ordinary election the candidates hear each other's votes, so only a node that nobody
/// answers, partitioned off or with every peer down, stays silent that long.
fn cut_off_in(has_peers: bool, silence: Option<Duration>, after: Duration) -> Option<Duration> {
    if !has_peers {
        return None;
    }
    silence.map(|silence| after.saturating_sub(silence))
}

/// Whether a connection routed as `route` may go on under `status`.
fn still_valid(route: &Route, status: &NodeStatus) -> bool {
    status.role == route.role
        && status.epoch == route.epoch
        && status.primary == route.primary
        && (route.role != Role::Primary || status.lease_held)
}

/// Serves the client port until shutdown.
pub async fn serve(
    listener: TcpListener,
    node: NodeHandle,
    app_addr: Option<SocketAddr>,
    limits: ProxyLimits,
    follow: Option<Serving>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let unreachable = Arc::new(Unreachable::default());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (client, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed on the client port");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let metrics = node.metrics_arc();
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics.proxy_refused.fetch_add(1, Ordering::Relaxed);
            debug!(%remote, "client connection refused: too many connections");
            continue; // dropping `client` closes it
        };
        metrics.proxy_accepted.fetch_add(1, Ordering::Relaxed);
        let node = node.clone();
        let shutdown = shutdown.clone();
        let follow = follow.clone();
        let unreachable = Arc::clone(&unreachable);
        let span = tracing::debug_span!("client", %remote);
        tokio::spawn(
            async move {
                metrics.proxy_active.fetch_add(1, Ordering::Relaxed);
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => "node stopping",
                    outcome = carry(client, &node, app_addr, limits, follow, &unreachable) => outcome,
                };
                metrics.proxy_active.fetch_sub(1, Ordering::Relaxed);
                if outcome == "role changed" {
                    metrics
                        .proxy_closed_on_role_change
                        .fetch_add(1, Ordering::Relaxed);
                }
                debug!(outcome, "client connection closed");
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Routes and carries one connection; returns why it ended.
async fn carry(
    mut client: TcpStream,
    node: &NodeHandle,
    app_addr: Option<SocketAddr>,
    limits: ProxyLimits,
    mut follow: Option<Serving>,
    unreachable: &Unreachable,
) -> &'static str {
    let mut status = node.watch_status();
    // Wait (bounded) for somewhere to send it.
    let deadline = tokio::time::Instant::now() + limits.hold;
    let (route, shipper) = loop {
        let shipper = follow.as_mut().and_then(|f| f.borrow_and_update().clone());
        let serving = follow.as_ref().map(|_| shipper.is_some());
        let cut_off = {
            let status = status.borrow_and_update();
            if let Some(route) = route(&status, app_addr, serving) {
                break (route, shipper.filter(|_| route.role == Role::Primary));
            }
            cut_off_in(
                !status.peers.is_empty(),
                node.peer_silence(),
                limits.cut_off_after,
            )
        };
        if cut_off == Some(Duration::ZERO) {
            return "cut off from every peer";
        }
        // Look again when the silence would make it cut off (a message meanwhile resets it).
        let cut_off_due = async {
            match cut_off {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        };
        let serving_changed = async {
            match follow.as_mut() {
                Some(f) => f.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return "node stopping" },
            ok = serving_changed => if !ok { return "node stopping" },
            () = tokio::time::sleep_until(deadline) => return "no primary known",
            () = cut_off_due => {}
        }
    };
    // A primary whose application takes its clients itself hands the connection over and is
    // out of its path (`handoff`); in follow mode the reply barrier needs the copy.
    if route.role == Role::Primary && shipper.is_none() && follow.is_none() {
        match node.takers.hand_over(client) {
            HandOver::Handed => {
                node.metrics_arc()
                    .proxy_handed
                    .fetch_add(1, Ordering::Relaxed);
                return "handed to the application";
            }
            HandOver::Declined(stream) => client = stream,
        }
    }
    let upstream = match connect_upstream(&route, node, limits.hold, unreachable).await {
        Ok(upstream) => upstream,
        Err(outcome) => return outcome,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // The bytes are carried by a task of their own, which wakes only for data; this one
    // wakes only for the node's status and the idle check, and ends the copy by aborting
    // it (which drops, and so closes, both sockets). Watching both in one task would poll
    // the status watch and the timer on every read and write as well.
    let active = Arc::new(AtomicBool::new(false));
    let mut copy = AbortOnDrop(match shipper {
        Some(shipper) => tokio::spawn(copy_held(
            client,
            upstream,
            Arc::clone(&active),
            shipper,
            (node.serving_until(), route.epoch),
        )),
        None => tokio::spawn(copy_both_ways(client, upstream, Arc::clone(&active))),
    });
    let period = limits.idle_timeout.min(Duration::from_secs(1));
    let mut idle_check = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last_active = Instant::now();
    loop {
        tokio::select! {
            result = &mut copy.0 => {
                return match result {
                    Ok(Ok(())) => "closed",
                    Ok(Err(_)) | Err(_) => "connection error",
                };
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return "node stopping";
                }
                if !still_valid(&route, &status.borrow_and_update()) {
                    info!(target = %route.target, "closing a client connection: the primary changed");
                    return "role changed";
                }
            }
            _ = idle_check.tick() => {
                if active.swap(false, Ordering::Relaxed) {
                    last_active = Instant::now();
                } else if last_active.elapsed() >= limits.idle_timeout {
                    return "idle";
                }
            }
        }
    }
}

/// Connects to where `route` says; on a backup whose direct connect to the primary's
/// application fails, to the primary's client port instead. Returns why not on failure.
async fn connect_upstream(
    route: &Route,
    node: &NodeHandle,
    hold: Duration,
    unreachable: &Unreachable,
) -> Result<TcpStream, &'static str> {
    let started = tokio::time::Instant::now();
    let metrics = node.metrics_arc();
    if let Some(port) = route.fallback {
        if !unreachable.recently(route.target) {
            let timeout = (hold / 2).min(DIRECT_CONNECT_TIMEOUT);
            let error = match tokio::time::timeout(timeout, TcpStream::connect(route.target)).await
            {
                Ok(Ok(upstream)) => {
                    metrics.proxy_direct.fetch_add(1, Ordering::Relaxed);
                    return Ok(upstream);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {timeout:?}"),
            };
            if unreachable.note(route.target) {
                info!(app = %route.target, %port, error, "cannot reach the primary's application directly; forwarding through its client port for a while");
            }
        }
        metrics.proxy_direct_failed.fetch_add(1, Ordering::Relaxed);
        let left = hold.saturating_sub(started.elapsed());
        return match tokio::time::timeout(left, TcpStream::connect(port)).await {
            Ok(Ok(upstream)) => Ok(upstream),
            Ok(Err(e)) => {
                debug!(target = %port, error = %e, "cannot reach the primary's client port");
                Err("upstream unreachable")
            }
            Err(_) => Err("upstream connect timed out"),
        };
    }
    let to_app = route.role == Role::Primary;
    match tokio::time::timeout(hold, TcpStream::connect(route.target)).await {
        Ok(Ok(upstream)) => {
            if to_app {
                node.app_health().reached(true);
            }
            Ok(upstream)
        }
        Ok(Err(e)) => {
            if to_app {
                // Counted, and the application is unreachable until a connection succeeds.
                node.app_health().reached(false);
                warn!(target = %route.target, error = %e, "cannot reach the application at --app-addr");
            } else {
                debug!(target = %route.target, error = %e, "cannot reach the primary's client port");
            }
            Err("upstream unreachable")
        }
        Err(_) => {
            if to_app {
                node.app_health().reached(false);
            }
            Err("upstream connect timed out")
        }
    }
}

/// The primary's application address a direct connect last failed to reach, and when:
/// skipped for [`DIRECT_RETRY_AFTER`], so that an address that drops connects does not
/// cost every new connection [`DIRECT_CONNECT_TIMEOUT`].
#[derive(Default)]
struct Unreachable(std::sync::Mutex<Option<(SocketAddr, Instant)>>);

impl Unreachable {
    /// Whether `addr` failed within the last [`DIRECT_RETRY_AFTER`].
    fn recently(&self, addr: SocketAddr) -> bool {
        let last = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        last.is_some_and(|(failed, at)| failed == addr && at.elapsed() < DIRECT_RETRY_AFTER)
    }

    /// Notes that `addr` failed now; true unless it was already noted as failing recently
    /// (for one log line per outage, not one per connection).
    fn note(&self, addr: SocketAddr) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let known = last
            .is_some_and(|(failed, at)| failed == addr && at.elapsed() < 2 * DIRECT_RETRY_AFTER);
        *last = Some((addr, Instant::now()));
        !known
    }
}

/// Copies both ways until both sides are done (or one fails), through one buffer per
/// direction.
async fn copy_both_ways(
    client: TcpStream,
    upstream: TcpStream,
    active: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut client = Tracked::new(client, Arc::clone(&active));
    let mut upstream = Tracked::new(upstream, active);
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER_LEN, BUFFER_LEN)
        .await
        .map(|_| ())
}

/// Follow mode: copies like [`copy_both_ways`], but each piece of the application's
/// replies is held until [`Shipper::reply_barrier`] says every change the application made
/// to its directory before the piece arrived is committed. A barrier that fails (this node
/// stopped serving) ends the connection: what the client has not received was never
/// acknowledged.
///
/// Then, right before the piece goes to the client, this node must still hold its lease,
/// read against the clock at that moment, in the epoch the connection was routed in
/// ([`ServingUntil::holds_now`]); otherwise the connection ends. The barrier makes a read see nothing uncommitted; the lease makes it
/// see everything committed. The application produced the piece before this check, at a
/// moment when, by the lease, no other primary had been elected (`core::lease`, "Reads"),
/// so its state then held every acknowledged write. The status watch that closes a
/// connection when the lease lapses is not enough on its own: it comes a step and a
/// publication later, and a node stopped (SIGSTOP) or starved past its lease would, when
/// it runs again, release replies that the application computed while another primary
/// was already taking writes, before its core loop noticed. A write's reply needs the
/// check too: its change is committed, but the reply may carry a read of state (an INCR's
/// result) that another primary has moved on from.
async fn copy_held(
    client: TcpStream,
    upstream: TcpStream,
    active: Arc<AtomicBool>,
    shipper: Arc<Shipper>,
    (serving, epoch): (Arc<ServingUntil>, u64),
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let requests = async {
        let mut buffer = vec![0u8; BUFFER_LEN];
        loop {
            let n = client_read.read(&mut buffer).await?;
            if n == 0 {
                return upstream_write.shutdown().await;
            }
            active.store(true, Ordering::Relaxed);
            upstream_write.write_all(&buffer[..n]).await?;
        }
    };
    let replies = async {
        let mut buffer = vec![0u8; BUFFER_LEN];
        loop {
            let n = upstream_read.read(&mut buffer).await?;
            if n == 0 {
                return client_write.shutdown().await;
            }
            active.store(true, Ordering::Relaxed);
            shipper
                .reply_barrier()
                .await
                .map_err(std::io::Error::other)?;
            if !serving.holds_now(epoch) {
                return Err(std::io::Error::other(
                    "this node's lease lapsed before the reply could be released",
                ));
            }
            client_write.write_all(&buffer[..n]).await?;
        }
    };
    tokio::try_join!(requests, replies).map(|_| ())
}

/// Aborts the task when dropped: a connection ended by the node (or by its shutdown) takes
/// its copy task, and so its sockets, with it.
struct AbortOnDrop(tokio::task::JoinHandle<std::io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream that notes that bytes moved, for the idle check: one relaxed store per read
/// or write, no clock read.
struct Tracked {
    stream: TcpStream,
    active: Arc<AtomicBool>,
}

impl Tracked {
    fn new(stream: TcpStream, active: Arc<AtomicBool>) -> Tracked {
        Tracked { stream, active }
    }

    fn touch(&self) {
        self.active.store(true, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role, epoch: u64, primary: Option<u16>, lease_held: bool) -> NodeStatus {
        NodeStatus {
            epoch,
            primary,
            primary_client_addr: Some("127.0.0.1:7000".parse().unwrap()),
            lease_held,
            ..NodeStatus::for_tests(role)
        }
    }

    /// The primary forwards to its app only while it holds its lease; a backup forwards to
    /// the primary it knows; nobody forwards without a primary.
    #[test]
    fn routes_follow_the_role() {
        let app: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let primary = status(Role::Primary, 3, Some(1), true);
        assert_eq!(route(&primary, Some(app), None).unwrap().target, app);
        assert_eq!(
            route(&status(Role::Primary, 3, Some(1), false), Some(app), None),
            None
        );
        let backup = status(Role::Backup, 3, Some(2), false);
        assert_eq!(
            route(&backup, Some(app), None).unwrap().target,
            "127.0.0.1:7000".parse().unwrap()
        );
        let mut lost = status(Role::Backup, 3, None, false);
        lost.primary_client_addr = None;
        assert_eq!(route(&lost, Some(app), None), None);
        assert_eq!(
            route(&status(Role::Candidate, 4, None, false), Some(app), None),
            None
        );
    }

    /// Cut off once no peer was heard from for the bound; never by silence alone without
    /// peers, or before the first peer was heard from (a node just started).
    #[test]
    fn a_node_is_cut_off_once_no_peer_was_heard_from_for_the_failover_timeout() {
        let after = Duration::from_millis(100);
        let ms = Duration::from_millis;
        assert_eq!(cut_off_in(true, Some(ms(100)), after), Some(Duration::ZERO));
        assert_eq!(cut_off_in(true, Some(ms(250)), after), Some(Duration::ZERO));
        assert_eq!(cut_off_in(true, Some(ms(30)), after), Some(ms(70)));
        assert_eq!(cut_off_in(true, None, after), None);
        assert_eq!(cut_off_in(false, Some(ms(250)), after), None);
    }

    /// A backup with a reachable address for the primary's application forwards there,
    /// with the primary's client port to fall back on; without one, or in follow mode (where
    /// the primary's client port holds replies for the reply barrier), to the client port.
    #[test]
    fn a_backup_forwards_to_the_primary_application_in_one_hop_except_in_follow_mode() {
        let port: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let primary_app: SocketAddr = "10.0.0.1:6379".parse().unwrap();
        let own_app: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let mut backup = status(Role::Backup, 3, Some(2), false);
        backup.primary_app_addr = Some(primary_app);
        let direct = route(&backup, Some(own_app), None).unwrap();
        assert_eq!((direct.target, direct.fallback), (primary_app, Some(port)));
        for serving in [false, true] {
            let follow = route(&backup, Some(own_app), Some(serving)).unwrap();
            assert_eq!((follow.target, follow.fallback), (port, None));
        }
        // The primary's application without its client port: no fallback.
        backup.primary_client_addr = None;
        let direct = route(&backup, Some(own_app), None).unwrap();
        assert_eq!((direct.target, direct.fallback), (primary_app, None));
        // The primary itself goes to its own application, whatever it knows of others.
        let mut primary = status(Role::Primary, 3, Some(1), true);
        primary.primary_app_addr = Some(primary_app);
        let local = route(&primary, Some(own_app), None).unwrap();
        assert_eq!((local.target, local.fallback), (own_app, None));
    }

    /// An address that failed is skipped for a while, and logged once per outage.
    #[test]
    fn an_unreachable_application_is_skipped_for_a_while() {
        let unreachable = Unreachable::default();
        let app: SocketAddr = "10.0.0.1:6379".parse().unwrap();
        let other: SocketAddr = "10.0.0.2:6379".parse().unwrap();
        assert!(!unreachable.recently(app));
        assert!(unreachable.note(app));
        assert!(unreachable.recently(app));
        assert!(!unreachable.recently(other));
        assert!(!unreachable.note(app), "logged twice in one outage");
        assert!(unreachable.note(other));
        assert!(!unreachable.recently(app), "only the last failure is kept");
    }

    /// A connection is cut when the node stops being primary, loses its lease, or (on a
    /// backup) when the primary changes.
    #[test]
    fn connections_are_cut_when_the_primary_changes() {
        let app: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let on_primary = route(&status(Role::Primary, 3, Some(1), true), Some(app), None).unwrap();
        assert!(still_valid(
            &on_primary,
            &status(Role::Primary, 3, Some(1), true)
        ));
        assert!(!still_valid(
            &on_primary,
            &status(Role::Primary, 3, Some(1), false)
        ));
        assert!(!still_valid(
            &on_primary,
            &status(Role::Backup, 4, Some(2), false)
        ));
        let on_backup = route(&status(Role::Backup, 3, Some(2), false), Some(app), None).unwrap();
        assert!(still_valid(
            &on_backup,
            &status(Role::Backup, 3, Some(2), false)
        ));
        assert!(!still_valid(
            &on_backup,
            &status(Role::Backup, 4, Some(3), false)
        ));
        assert!(!still_valid(
            &on_backup,
            &status(Role::Candidate, 4, None, false)
        ));
    }

    /// Follow mode: a reply piece passes the reply barrier and then goes to the client only
    /// while this node holds its lease, read against the clock at release, in the epoch the
    /// connection was routed in; otherwise the connection ends and the piece never reaches
    /// the client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_reply_is_released_only_under_a_lease_that_holds_at_release() {
        use crate::follow::capture::Capture;
        use crate::node::clock::BootInstant;
        let (node, _log, _wal_dir) =
            crate::follow::ship::tests::fake_node(Duration::from_millis(1));
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let capture = Capture::start(dir.path(), tx).unwrap();
        let shipper =
            Arc::new(Shipper::start(capture, rx, node, tokio::runtime::Handle::current()).unwrap());
        // The application: answers every request with one line.
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = app.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = app.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {
                        if stream.write_all(b"+VALUE\r\n").await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let serving = Arc::new(ServingUntil::default());
        // One client connection through `copy_held`, routed in epoch 5; what it gets back
        // for one request.
        let ask = || {
            let shipper = Arc::clone(&shipper);
            let serving = Arc::clone(&serving);
            let front = &front;
            async move {
                let mut client = TcpStream::connect(front_addr).await.unwrap();
                let (proxied, _) = front.accept().await.unwrap();
                let upstream = TcpStream::connect(app_addr).await.unwrap();
                let copy = tokio::spawn(copy_held(
                    proxied,
                    upstream,
                    Arc::new(AtomicBool::new(false)),
                    shipper,
                    (serving, 5),
                ));
                client.write_all(b"GET k\r\n").await.unwrap();
                let mut got = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(5), client.read_buf(&mut got))
                    .await
                    .expect("the reply or the end of the connection");
                copy.abort();
                (read.unwrap_or(0), got)
            }
        };
        let later = |ms: u64| Some(BootInstant::now() + Duration::from_millis(ms));

        serving.set(Some((5, later(10_000))));
        assert_eq!(ask().await, (8, b"+VALUE\r\n".to_vec()), "under a lease");
        serving.set(Some((5, None)));
        assert_eq!(ask().await.1, b"+VALUE\r\n".to_vec(), "no lease needed");

        // Lapsed by the clock, though no step has cleared it yet.
        serving.set(Some((5, later(20))));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(
            ask().await,
            (0, Vec::new()),
            "released after the lease lapsed"
        );
        // Not primary, or primary again in a later epoch: the connection's epoch is over.
        serving.set(None);
        assert_eq!(ask().await, (0, Vec::new()), "released while not serving");
        serving.set(Some((6, later(10_000))));
        assert_eq!(
            ask().await,
            (0, Vec::new()),
            "released under a later epoch's lease"
        );
    }
}
