//! The admin HTTP server (`--admin-listen`): what operators, load balancers and Prometheus
//! ask a node. HTTP/1.1 only, served with hyper and no framework.
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | 200, the node's [`NodeStatus`] as JSON: role, epoch, LSN pointers, every peer, the `--app-cmd` application (`app`) |
//! | `GET /primary` | 200 `primary` on a primary holding its lease whose application (when one is expected) is live, else 503 and why |
//! | `GET /replica` | 200 `backup` on a backup following a primary it heard from within [`REPLICA_HEARTBEAT_AGE_MAX_MS`], else 503 and why |
//! | `GET /health` | 200 `ok` while the node runs and its disk has not failed, else 503 and why (liveness of the sidecar) |
//! | `GET /ready` | 200 and the role when the node can serve its role: its application live (when one is expected), and on a primary its lease held, on a backup a primary heard within [`REPLICA_HEARTBEAT_AGE_MAX_MS`] and at most `--ready-max-lag` committed records not yet durable here; else 503 and why |
//! | `GET /metrics` | 200, OpenMetrics text rendered by prometheus-client: the build and the process, the status as gauges, then the node's counters and histograms (`understudy_app_restarts_total` with `--app-cmd`) and the snapshots' |
//! | `POST /switchover?to=N` | a planned switchover to node N (without `to`, to the best backup: one whose application is live, then the most up to date, then the highest priority): 200 when handed over, 409 when refused, 503 when it timed out or the node is stopping; the body is a [`SwitchoverResponse`] |
//! | `POST /pause[?stamp=MS]`, `POST /resume[?stamp=MS]` | stop or restart automatic failover on this node (stored in the data dir; a primary passes it to its backups, which take it when its stamp is newer than theirs): 200 `paused` / `resumed` once stored. `stamp` (default: now, in Unix milliseconds) orders commands; `understudy pause` gives every node the same one |
//!
//! `HEAD` is answered like `GET`. An unknown path is 404, a known path with the wrong method
//! 405 (with `Allow`), a bad `to` 400.
//!
//! With `--admin-token-file`, the requests that change state (the `POST`s) must carry
//! `Authorization: Bearer <token>` (compared in constant time); without it, or with another
//! token, they are answered 401 with `WWW-Authenticate: Bearer` and nothing happens. Reads
//! stay open, so load balancers and Prometheus need no secret.
//!
//! Limits: at most [`CONNECTIONS_MAX`] connections at once (the next accept waits for a free
//! slot, as in mini-redis's server), and at most [`CONNECTIONS_PER_SOURCE_MAX`] from one IP
//! address (more are closed as they are accepted, so that one client holding connections
//! open cannot take every slot from a load balancer's probe); a request's head must arrive within
//! [`HEADER_READ_TIMEOUT`], which also closes idle keep-alive connections; a connection lives
//! at most [`CONNECTION_LIFETIME_MAX`]; a switchover is waited for at most
//! [`SWITCHOVER_WAIT_MAX`] (the core gives up on its own after the failover timeout, far
//! sooner). Request bodies are never read.
//!
//! This module only reads the node's published status and metrics and forwards switchover
//! and pause requests to the core loop; it holds no state of its own and never touches the
//! core.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::DescriptorEncoder;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::handle::{role_name, MembersReply, NodeHandle, NodeStatus};
use super::metrics::{self, encode_counter, encode_gauge, encode_gauges, Metrics};
use super::snapshot::Snapshots;
use crate::config::AdminToken;
use crate::core::{MembersChange, Role, SwitchoverOutcome, SwitchoverRefusal};
use crate::NodeId;

/// Admin connections served at once, at most; the next accept waits for one to end.
pub const CONNECTIONS_MAX: usize = 64;
/// Admin connections from one IP address at once, at most; more are closed as they are
/// accepted. A probe, a scraper and an operator's commands need a few; a client that holds
/// connections open without finishing a request (each for up to [`HEADER_READ_TIMEOUT`])
/// would otherwise take all [`CONNECTIONS_MAX`] slots and starve `/health` and `/ready`.
pub const CONNECTIONS_PER_SOURCE_MAX: usize = 16;
/// A request's head (request line and headers) must arrive within this; an idle keep-alive
/// connection is closed after it too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is asked to close after this, however busy (a Prometheus scraper simply
/// reconnects).
pub const CONNECTION_LIFETIME_MAX: Duration = Duration::from_secs(300);
/// How long a switchover request waits for the core's answer, at most. The core answers
/// within the failover timeout; this is a backstop against a core loop that stopped.
pub const SWITCHOVER_WAIT_MAX: Duration = Duration::from_secs(60);
/// A backup counts as a replica (`GET /replica` 200) only if it heard from its primary within
/// this. Heartbeats come every `--heartbeat-interval` (50 ms by default) and the status is
/// republished every 100 ms, so a healthy backup's age stays far below it; a backup cut off
/// from its primary crosses it within a second and drops out of the load balancer.
pub const REPLICA_HEARTBEAT_AGE_MAX_MS: u64 = 1000;
/// Read buffer per connection, at most (hyper's floor is 8 KiB).
const CONNECTION_BUFFER_BYTES_MAX: usize = 64 << 10;
/// Open connections get this long to finish their request at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The body of every `POST /switchover` answer except a 400.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverResponse {
    /// The node asked to take over (chosen by the primary when none was named; absent when
    /// none could be).
    pub to: Option<u16>,
    /// `handed_over`, `timed_out`, `not_primary`, `unknown_target`, `target_is_self`,
    /// `already_in_progress` or `stopping`.
    pub outcome: String,
    /// How long this node refused new appends for the switchover, in milliseconds...
    pub paused_ms: u64,
    /// ...and in microseconds, since a switchover to a caught-up node pauses for less than
    /// one.
    pub paused_us: u64,
    /// The outcome in words, for an operator.
    pub message: String,
}

/// Open admin connections, counted by source address.
type OpenBySource = std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>;

/// One connection counted in an [`OpenBySource`] while it lives.
struct SourceTurn {
    open: Arc<OpenBySource>,
    ip: std::net::IpAddr,
}

impl SourceTurn {
    /// Counts a connection from `ip`, unless [`CONNECTIONS_PER_SOURCE_MAX`] are open.
    fn enter(open: &Arc<OpenBySource>, ip: std::net::IpAddr) -> Option<SourceTurn> {
        let mut counts = open.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= CONNECTIONS_PER_SOURCE_MAX {
            return None;
        }
        *count += 1;
        Some(SourceTurn {
            open: Arc::clone(open),
            ip,
        })
    }
}

impl Drop for SourceTurn {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves the admin HTTP API on `listener` until `shutdown` is cancelled, then gives open
/// connections `SHUTDOWN_GRACE` to finish.
pub async fn serve(
    listener: TcpListener,
    node: NodeHandle,
    token: Option<AdminToken>,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: CancellationToken,
) {
    let token = Arc::new(token);
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!(%addr, scheme, "admin server listening");
    }
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let open_by_source = Arc::new(OpenBySource::default());
    let refusals = std::sync::Mutex::default();
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(CONNECTION_BUFFER_BYTES_MAX);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                // Only a closed semaphore fails, and nothing closes this one.
                Err(_) => break,
            },
        };
        let (stream, client) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "admin server cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(source) = SourceTurn::enter(&open_by_source, client.ip()) else {
            let reason = format!(
                "{CONNECTIONS_PER_SOURCE_MAX} connections from {} already; closing new ones",
                client.ip()
            );
            if super::peer::first_in_a_while(&refusals, &reason) {
                warn!(%client, "admin server: {reason} (logged again after a minute)");
            }
            drop(stream);
            continue;
        };
        let service_node = node.clone();
        let service_token = Arc::clone(&token);
        let service = service_fn(move |request| {
            let node = service_node.clone();
            let token = Arc::clone(&service_token);
            async move { Ok::<_, Infallible>(respond(&node, token.as_ref().as_ref(), request).await) }
        });
        let shutdown = shutdown.clone();
        let builder = builder.clone();
        let acceptor = tls.as_ref().map(|tls| tls.admin_acceptor());
        connections.spawn(async move {
            // Held for as long as the connection lives.
            let _slot = slot;
            let _source = source;
            let stream = match acceptor {
                None => tokio_util::either::Either::Left(stream),
                Some(acceptor) => {
                    // The TLS handshake counts against the header read timeout's budget.
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => tokio_util::either::Either::Right(stream),
                        Ok(Err(e)) => {
                            debug!(%client, error = %crate::tls::describe(&e), "admin connection: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%client, "admin connection: TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let lifetime = tokio::time::sleep(CONNECTION_LIFETIME_MAX);
            tokio::pin!(lifetime);
            let ended = tokio::select! {
                ended = connection.as_mut() => Some(ended),
                _ = &mut lifetime => None,
                _ = shutdown.cancelled() => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    // Lifetime over or shutting down: finish the request in flight, if any,
                    // then close.
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = ended {
                debug!(%client, error = %e, "admin connection ended with an error");
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, connections.wait()).await;
}

/// The endpoints, by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Status,
    Primary,
    Replica,
    Health,
    Metrics,
    Switchover,
    Ready,
    Pause,
    Resume,
    Members,
    MembersAdd,
    MembersRemove,
    MembersPromote,
    MembersSetAddr,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/status" => Endpoint::Status,
            "/primary" => Endpoint::Primary,
            "/replica" => Endpoint::Replica,
            "/health" => Endpoint::Health,
            "/metrics" => Endpoint::Metrics,
            "/switchover" => Endpoint::Switchover,
            "/ready" => Endpoint::Ready,
            "/pause" => Endpoint::Pause,
            "/resume" => Endpoint::Resume,
            "/members" => Endpoint::Members,
            "/members/add" => Endpoint::MembersAdd,
            "/members/remove" => Endpoint::MembersRemove,
            "/members/promote" => Endpoint::MembersPromote,
            "/members/set-addr" => Endpoint::MembersSetAddr,
            _ => return None,
        })
    }

    /// The methods the endpoint answers, as the `Allow` header spells them.
    fn allow(self) -> &'static str {
        if self.changes_state() {
            "POST"
        } else {
            "GET, HEAD"
        }
    }

    /// Whether the endpoint changes the node's state (and so needs the admin token).
    fn changes_state(self) -> bool {
        matches!(
            self,
            Endpoint::Switchover
                | Endpoint::Pause
                | Endpoint::Resume
                | Endpoint::MembersAdd
                | Endpoint::MembersRemove
                | Endpoint::MembersPromote
                | Endpoint::MembersSetAddr
        )
    }

    fn allows(self, method: &Method) -> bool {
        if self.changes_state() {
            method == Method::POST
        } else {
            method == Method::GET || method == Method::HEAD
        }
    }
}

/// The node's status with its snapshots (newest LSN, transfers in progress with their
/// rate and ETA, a warning when the application does not answer) under `"snapshot"`.
fn status_with_snapshots(node: &NodeHandle) -> serde_json::Value {
    let mut status = serde_json::to_value(&*node.status()).unwrap_or_default();
    if let (Some(object), Ok(snapshot)) = (
        status.as_object_mut(),
        serde_json::to_value(node.snapshots().status()),
    ) {
        object.insert("snapshot".to_owned(), snapshot);
    }
    status
}

/// Answers one request. Never fails: every problem is an HTTP status.
async fn respond(
    node: &NodeHandle,
    token: Option<&AdminToken>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(endpoint) = Endpoint::from_path(request.uri().path()) else {
        return text(
            StatusCode::NOT_FOUND,
            "not found; the admin API has /status, /primary, /replica, /health, /ready, /metrics, /members, POST /switchover[?to=N], POST /pause, POST /resume, POST /members/add?id=N&addr=HOST:PORT, POST /members/remove?id=N, POST /members/promote?id=N and POST /members/set-addr?id=N&addr=HOST:PORT\n".into(),
        );
    };
    if !endpoint.allows(request.method()) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} takes {}\n", request.uri().path(), endpoint.allow()),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(endpoint.allow()));
        return response;
    }
    if let Some(token) = token.filter(|_| endpoint.changes_state()) {
        let header = request.headers().get(AUTHORIZATION).map(|h| h.as_bytes());
        if !token.admits(header) {
            let reason = if header.is_none() {
                "this node requires an admin token for POST requests: send Authorization: Bearer <token> (the operator commands read it from --admin-token-file or UNDERSTUDY_ADMIN_TOKEN)\n"
            } else {
                "the admin token does not match this node's --admin-token-file\n"
            };
            let mut response = text(StatusCode::UNAUTHORIZED, reason.into());
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    match endpoint {
        Endpoint::Status => {
            let status = status_with_snapshots(node);
            match serde_json::to_vec_pretty(&status) {
                Ok(mut body) => {
                    body.push(b'\n');
                    with_type(StatusCode::OK, "application/json", body.into())
                }
                // NodeStatus holds only numbers, strings and addresses.
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode the status: {e}\n"),
                ),
            }
        }
        Endpoint::Primary => {
            let (code, body) = primary_check(&node.status());
            text(code, body)
        }
        Endpoint::Replica => {
            let (code, body) = replica_check(&node.status());
            text(code, body)
        }
        Endpoint::Health => {
            let (code, body) = health_check(&node.status(), node.requests.is_closed());
            text(code, body)
        }
        Endpoint::Metrics => match render_metrics(
            node.status(),
            node.metrics_arc(),
            Some(Arc::clone(&node.snapshots)),
        ) {
            Ok(out) => with_type(StatusCode::OK, metrics::CONTENT_TYPE, out.into()),
            // The encoder writes to a String, which does not fail: a formatting error only.
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {e}\n"),
            ),
        },
        Endpoint::Switchover => switchover(node, request.uri().query()).await,
        Endpoint::Members => {
            let status = node.status();
            let body = serde_json::json!({
                "node_id": status.node_id,
                "primary": status.primary,
                "members": status.members,
                "peers": status.peers,
            });
            let mut body = serde_json::to_vec_pretty(&body).unwrap_or_default();
            body.push(b'\n');
            with_type(StatusCode::OK, "application/json", body.into())
        }
        Endpoint::MembersAdd
        | Endpoint::MembersRemove
        | Endpoint::MembersPromote
        | Endpoint::MembersSetAddr => members_change(node, endpoint, request.uri().query()).await,
        Endpoint::Ready => {
            let (code, body) = ready_check(&node.status(), node.requests.is_closed());
            text(code, body)
        }
        Endpoint::Pause | Endpoint::Resume => {
            let paused = endpoint == Endpoint::Pause;
            let stamp = match pause_stamp(request.uri().query()) {
                Ok(stamp) => stamp,
                Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
            };
            match node.set_paused(paused, stamp).await {
                Ok(Ok(())) => text(
                    StatusCode::OK,
                    if paused { "paused\n" } else { "resumed\n" }.into(),
                ),
                Ok(Err(message)) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot store the pause: {message}\n"),
                ),
                Err(stopped) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{stopped}\n")),
            }
        }
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(code, "text/plain; charset=utf-8", body.into())
}

fn with_type(code: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `GET /primary`: only a primary that holds its lease may serve writes (invariant 4), so
/// only it tells a load balancer to send them.
fn primary_check(status: &NodeStatus) -> (StatusCode, String) {
    match (status.role, status.lease_held) {
        (Role::Primary, true) if app_gone(status).is_some() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "primary whose application is gone ({})\n",
                app_gone(status).unwrap_or_default()
            ),
        ),
        (Role::Primary, true) => (StatusCode::OK, "primary\n".into()),
        (Role::Primary, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "primary without its lease\n".into(),
        ),
        (role @ (Role::Backup | Role::Candidate), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", role_name(role)),
        ),
    }
}

/// `GET /replica`: a backup that follows a primary and heard from it recently.
fn replica_check(status: &NodeStatus) -> (StatusCode, String) {
    if let Some(failed) = &status.failed {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed: {failed}\n"),
        );
    }
    match (status.role, status.primary, status.heartbeat_age_ms) {
        (Role::Backup, Some(_), Some(age_ms)) if age_ms < REPLICA_HEARTBEAT_AGE_MAX_MS => {
            (StatusCode::OK, "backup\n".into())
        }
        (Role::Backup, Some(primary), Some(age_ms)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("backup; last heard from primary {primary} {age_ms} ms ago\n"),
        ),
        (Role::Backup, _, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "backup without a primary\n".into(),
        ),
        (role @ (Role::Candidate | Role::Primary), _, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", role_name(role)),
        ),
    }
}

/// Why the application makes this node unfit to serve, if it does: only an expected one
/// (`app_health`) that is not live.
fn app_gone(status: &NodeStatus) -> Option<&'static str> {
    let app = &status.app_health;
    if app.expected && !app.live {
        Some(app.gone.unwrap_or("not live"))
    } else {
        None
    }
}

/// `GET /ready`: the node can serve its role now (module docs).
fn ready_check(status: &NodeStatus, core_stopped: bool) -> (StatusCode, String) {
    let (code, body) = health_check(status, core_stopped);
    if code != StatusCode::OK {
        return (code, body);
    }
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    if let Some(why) = app_gone(status) {
        return unavailable(format!(
            "{}; application gone: {why}",
            role_name(status.role)
        ));
    }
    // Follow mode: a primary serves once its application does; a backup is ready once its
    // copy of the directory is current (it runs no application).
    if let Some(follow) = &status.follow {
        let role = role_name(status.role);
        let behind = status.commit_lsn.saturating_sub(follow.applied_lsn);
        match (status.role, follow.state) {
            (Role::Primary, "serving") | (Role::Candidate, _) => {}
            (Role::Backup, "standby") if behind > status.ready_lag_max => {
                return unavailable(format!(
                    "backup; the followed directory is {behind} committed records behind (more than {})",
                    status.ready_lag_max
                ));
            }
            (Role::Backup, "standby") => {}
            (_, state) => {
                return unavailable(match &follow.error {
                    Some(error) => format!("{role}; followed directory {state}: {error}"),
                    None => format!("{role}; followed directory {state}"),
                });
            }
        }
    }
    match status.role {
        Role::Primary if status.lease_held => (StatusCode::OK, "primary\n".into()),
        Role::Primary => unavailable("primary without its lease".into()),
        Role::Candidate => unavailable("candidate".into()),
        Role::Backup => {
            let lag = status.commit_lsn.saturating_sub(status.durable_lsn);
            match (status.primary, status.heartbeat_age_ms) {
                (Some(_), Some(age_ms))
                    if age_ms < REPLICA_HEARTBEAT_AGE_MAX_MS && lag <= status.ready_lag_max =>
                {
                    (StatusCode::OK, "backup\n".into())
                }
                (Some(primary), Some(age_ms)) if age_ms >= REPLICA_HEARTBEAT_AGE_MAX_MS => {
                    unavailable(format!(
                        "backup; last heard from primary {primary} {age_ms} ms ago"
                    ))
                }
                (Some(_), Some(_)) => unavailable(format!(
                    "backup; {lag} committed records not yet durable here (more than {})",
                    status.ready_lag_max
                )),
                _ => unavailable("backup without a primary".into()),
            }
        }
    }
}

/// `GET /health`: the process runs its core loop and its disk works. Role does not matter.
fn health_check(status: &NodeStatus, core_stopped: bool) -> (StatusCode, String) {
    if let Some(failed) = &status.failed {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed: {failed}\n"),
        );
    }
    if core_stopped {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into());
    }
    (StatusCode::OK, "ok\n".into())
}

/// The value of `key` in a query string (`a=1&key=value`), if present.
fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, value)| value)
}

/// The `stamp` of `POST /pause?stamp=MS` (the command's wall-clock milliseconds, the same
/// for every node one command asks); now when absent.
fn pause_stamp(query: Option<&str>) -> Result<u64, String> {
    match query_param(query, "stamp") {
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64)),
        Some(value) => value
            .parse::<u64>()
            .map_err(|_| format!("stamp={value:?} is not a number of milliseconds")),
    }
}

/// The `to` of `?to=N`: a node id (1 or more), or none (the primary picks).
fn switchover_target(query: Option<&str>) -> Result<Option<NodeId>, String> {
    let Some(value) = query_param(query, "to") else {
        return Ok(None);
    };
    match value.parse::<u16>() {
        Ok(id) if id >= 1 => Ok(Some(NodeId(id))),
        _ => Err(format!("to={value:?} is not a node id (1 or more)")),
    }
}

/// How long a membership change may take before the admin port answers that it does not
/// know yet (the change may still commit).
pub const MEMBERS_WAIT_MAX: Duration = Duration::from_secs(10);

/// `POST /members/{add,remove,promote,set-addr}?id=N[&addr=HOST:PORT]`: on the primary only; a
/// backup answers 421 naming the primary (the `members` command asks the primary itself).
async fn members_change(
    node: &NodeHandle,
    endpoint: Endpoint,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let bad = |message: String| text(StatusCode::BAD_REQUEST, format!("{message}\n"));
    let id = match query_param(query, "id").map(str::parse::<u16>) {
        Some(Ok(id)) if (1..=64).contains(&id) => NodeId(id),
        Some(_) => return bad("id must be a node id from 1 to 64".into()),
        None => return bad("id=N is required".into()),
    };
    let (change, addr) = match endpoint {
        Endpoint::MembersAdd | Endpoint::MembersSetAddr => {
            let Some(addr) = query_param(query, "addr") else {
                return bad("addr=HOST:PORT (the new member's peer address) is required".into());
            };
            let addr = addr
                .replace("%5B", "[")
                .replace("%5D", "]")
                .replace("%3A", ":");
            let addr = addr.as_str();
            let change = if endpoint == Endpoint::MembersAdd {
                MembersChange::AddLearner(id)
            } else {
                MembersChange::SetAddr(id)
            };
            match crate::config::PeerAddr::parse(addr) {
                Ok(addr) => (change, Some(addr)),
                Err(reason) => return bad(format!("addr={addr:?}: {reason}")),
            }
        }
        Endpoint::MembersRemove => (MembersChange::Remove(id), None),
        _ => (MembersChange::Promote(id), None),
    };
    info!(?change, "membership change requested on the admin port");
    let answer = tokio::time::timeout(MEMBERS_WAIT_MAX, node.members_change(change, addr)).await;
    let (code, message) = match answer {
        Ok(Ok(MembersReply::Done { lsn })) => {
            (StatusCode::OK, format!("done: the configuration record at lsn {lsn} is committed"))
        }
        Ok(Ok(MembersReply::NotPrimary { primary })) => (
            StatusCode::MISDIRECTED_REQUEST,
            match primary {
                Some(p) => format!("this node is not the primary; node {p} is"),
                None => "this node is not the primary, and knows of none right now".into(),
            },
        ),
        Ok(Ok(MembersReply::Refused(reason))) => (StatusCode::CONFLICT, format!("refused: {reason}")),
        Ok(Ok(MembersReply::Unknown)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the primary stepped down before the change was committed; it may or may not be (see understudy members list)".into(),
        ),
        Ok(Err(stopped)) => (StatusCode::SERVICE_UNAVAILABLE, stopped.to_string()),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not committed within {} s; it may still be (see understudy members list)",
                MEMBERS_WAIT_MAX.as_secs()
            ),
        ),
    };
    text(code, format!("{message}\n"))
}

/// `POST /switchover?to=N`.
async fn switchover(node: &NodeHandle, query: Option<&str>) -> Response<Full<Bytes>> {
    let to = match switchover_target(query) {
        Ok(to) => to,
        Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    info!(
        target_node = to.map(NodeId::get),
        "switchover requested on the admin port"
    );
    let status = node.status();
    let answer = tokio::time::timeout(SWITCHOVER_WAIT_MAX, node.switchover(to)).await;
    let (code, response) = match answer {
        Ok(Ok(reply)) => {
            let paused_ms = u64::try_from(reply.paused.as_millis()).unwrap_or(u64::MAX);
            let paused_us = u64::try_from(reply.paused.as_micros()).unwrap_or(u64::MAX);
            let (code, outcome, message) = switchover_words(&status, reply.to, reply.outcome);
            (
                code,
                SwitchoverResponse {
                    to: reply.to.map(NodeId::get),
                    outcome: outcome.into(),
                    paused_ms,
                    paused_us,
                    message,
                },
            )
        }
        Ok(Err(stopped)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            SwitchoverResponse {
                to: to.map(NodeId::get),
                outcome: "stopping".into(),
                paused_ms: 0,
                paused_us: 0,
                message: stopped.to_string(),
            },
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            SwitchoverResponse {
                to: to.map(NodeId::get),
                outcome: "timed_out".into(),
                paused_ms: 0,
                paused_us: 0,
                message: format!(
                    "no answer from the node within {} s",
                    SWITCHOVER_WAIT_MAX.as_secs()
                ),
            },
        ),
    };
    match serde_json::to_vec(&response) {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(code, "application/json", body.into())
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}\n"),
        ),
    }
}

/// The HTTP status, the outcome's name and its words. `status` is the node's status when
/// the request arrived (for naming the primary in a refusal).
fn switchover_words(
    status: &NodeStatus,
    to: Option<NodeId>,
    outcome: SwitchoverOutcome,
) -> (StatusCode, &'static str, String) {
    let me = status.node_id;
    let to = to.map_or_else(|| "?".to_string(), |to| to.to_string());
    match outcome {
        SwitchoverOutcome::HandedOver => (StatusCode::OK, "handed_over", "handed over".into()),
        SwitchoverOutcome::TimedOut => (
            StatusCode::SERVICE_UNAVAILABLE,
            "timed_out",
            format!("timed out: node {to} did not catch up in time, so node {me} serves again"),
        ),
        SwitchoverOutcome::Refused(refusal) => {
            let (name, words) = match refusal {
                SwitchoverRefusal::NotPrimary => (
                    "not_primary",
                    match status.primary {
                        Some(primary) if primary != me => format!(
                            "refused: node {me} is not the primary (node {primary} is; ask its admin port)"
                        ),
                        _ => format!("refused: node {me} is not the primary"),
                    },
                ),
                SwitchoverRefusal::UnknownTarget => (
                    "unknown_target",
                    format!("refused: node {to} is not a member of the cluster"),
                ),
                SwitchoverRefusal::TargetIsSelf => (
                    "target_is_self",
                    format!("refused: node {to} is already the primary"),
                ),
                SwitchoverRefusal::AlreadyInProgress => (
                    "already_in_progress",
                    "refused: another switchover is in progress".to_string(),
                ),
                SwitchoverRefusal::TargetIsLearner => (
                    "target_is_learner",
                    format!("refused: node {to} is a learner (still catching up after losing its data); it cannot stand"),
                ),
                SwitchoverRefusal::TargetCannotStand => (
                    "target_cannot_stand",
                    format!("refused: node {to} may not become primary (--no-failover, or a damaged record awaiting repair)"),
                ),
                SwitchoverRefusal::NoTarget => (
                    "no_target",
                    "refused: no backup can take over (none is a voter that may stand and was heard from within the failover timeout)".to_string(),
                ),
            };
            (StatusCode::CONFLICT, name, words)
        }
    }
}

/// `understudy_build_info` and the process's own figures (`process_*`, the names the
/// Prometheus client libraries use), read from `/proc/self`; a figure that cannot be read
/// is left out.
fn encode_process_metrics(encoder: &mut DescriptorEncoder) -> fmt::Result {
    encode_gauges(
        encoder,
        "understudy_build_info",
        "Always 1; the version and the commit this binary was built from.",
        [(
            [
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("UNDERSTUDY_COMMIT")),
            ],
            1u64,
        )],
    )?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5), starttime 22; `fields` starts at 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    if let (Some(user), Some(system), true) = (field(14), field(15), ticks > 0) {
        encode_counter(
            encoder,
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds.",
            (user + system) as f64 / ticks as f64,
        )?;
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
    });
    if let (Some(start), Some(boot), true) = (field(22), boot, ticks > 0) {
        encode_gauge(
            encoder,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            boot as f64 + start as f64 / ticks as f64,
        )?;
    }
    let resident = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok());
    if let (Some(pages), Ok(page)) = (resident, u64::try_from(page)) {
        if page > 0 {
            encode_gauge(
                encoder,
                "process_resident_memory_bytes",
                "Resident memory size, in bytes.",
                pages.saturating_mul(page),
            )?;
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        encode_gauge(
            encoder,
            "process_open_fds",
            "Open file descriptors.",
            fds.count() as u64,
        )?;
    }
    Ok(())
}

/// The status as gauges: role, epoch, LSN pointers, lag, and each peer's.
fn encode_status(status: &NodeStatus, encoder: &mut DescriptorEncoder) -> fmt::Result {
    encode_gauges(
        encoder,
        "understudy_role",
        "The node's role: 1 for the current one, 0 for the others.",
        [Role::Primary, Role::Backup, Role::Candidate]
            .map(|role| ([("role", role_name(role))], u64::from(status.role == role))),
    )?;
    let scalars: [(&str, &str, u64); 7] = [
        (
            "understudy_epoch",
            "The node's current epoch.",
            status.epoch,
        ),
        (
            "understudy_last_lsn",
            "The last LSN in the node's log.",
            status.last_lsn,
        ),
        (
            "understudy_durable_lsn",
            "The last LSN synced to the node's disk.",
            status.durable_lsn,
        ),
        (
            "understudy_commit_lsn",
            "The last LSN the node knows to be committed.",
            status.commit_lsn,
        ),
        (
            "understudy_lease_held",
            "1 while the node is a primary holding its lease.",
            u64::from(status.lease_held),
        ),
        (
            "understudy_failed",
            "1 once the node's disk failed and it stopped acknowledging.",
            u64::from(status.failed.is_some()),
        ),
        (
            "understudy_lag_records",
            "On a backup: committed records (as its primary last said) not yet durable here; 0 on a primary.",
            status.lag_records,
        ),
    ];
    for (name, help, value) in scalars {
        encode_gauge(encoder, name, help, value)?;
    }
    encode_gauge(
        encoder,
        "understudy_lag_seconds",
        "On a backup: seconds since it last held durably every record its primary had committed; 0 on a primary.",
        status.lag_ms as f64 / 1000.0,
    )?;
    let peers = &status.peers;
    encode_gauges(
        encoder,
        "understudy_peer_lag_records",
        "Records the peer is behind this node's last LSN (on the primary; 0 elsewhere).",
        peers
            .iter()
            .map(|peer| ([("peer", peer.node_id)], peer.lag_records)),
    )?;
    encode_gauges(
        encoder,
        "understudy_peer_lag_bytes",
        "Bytes of log the peer is behind, estimated (on the primary; 0 elsewhere).",
        peers
            .iter()
            .map(|peer| ([("peer", peer.node_id)], peer.lag_bytes)),
    )?;
    encode_gauges(
        encoder,
        "understudy_peer_lag_seconds",
        "Seconds since the peer last held every record this node had, an upper bound on the age of the oldest record it lacks (on the primary; 0 elsewhere).",
        peers
            .iter()
            .map(|peer| ([("peer", peer.node_id)], peer.lag_ms as f64 / 1000.0)),
    )?;
    encode_gauges(
        encoder,
        "understudy_peer_connected",
        "1 while a peer connection is up.",
        peers
            .iter()
            .map(|peer| ([("peer", peer.node_id)], u64::from(peer.connected))),
    )?;
    encode_gauges(
        encoder,
        "understudy_peer_last_heard_seconds",
        "Seconds since this node last heard from the peer (absent if never).",
        peers.iter().filter_map(|peer| {
            let ms = peer.last_heard_ms?;
            Some(([("peer", peer.node_id)], ms as f64 / 1000.0))
        }),
    )
}

/// Renders `/metrics` with prometheus-client (OpenMetrics text, served as
/// [`metrics::CONTENT_TYPE`]): the build and the process, the status as gauges, the node's
/// counters and histograms, then the snapshots' when given. Everything is read when the
/// registry encodes it.
pub fn render_metrics(
    status: Arc<NodeStatus>,
    node_metrics: Arc<Metrics>,
    snapshots: Option<Arc<Snapshots>>,
) -> Result<String, fmt::Error> {
    metrics::render(move |encoder| {
        encode_process_metrics(encoder)?;
        encode_status(&status, encoder)?;
        node_metrics.encode(encoder)?;
        if status.app.is_some() {
            encode_counter(
                encoder,
                "understudy_app_restarts",
                "Times the --app-cmd application was started again after it exited.",
                node_metrics
                    .app_restarts
                    .load(std::sync::atomic::Ordering::Relaxed),
            )?;
        }
        match &snapshots {
            Some(snapshots) => snapshots.encode_metrics(encoder),
            None => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::PeerStatus;

    fn status(role: Role) -> NodeStatus {
        NodeStatus {
            epoch: 3,
            primary: Some(if role == Role::Primary { 1 } else { 2 }),
            lease_held: role == Role::Primary,
            last_lsn: 10,
            durable_lsn: 9,
            commit_lsn: 8,
            heartbeat_age_ms: (role == Role::Backup).then_some(15),
            peers: vec![PeerStatus {
                node_id: 2,
                addr: "127.0.0.1:7002".into(),
                connected: true,
                matched_lsn: 7,
                durable_lsn: 7,
                lag_records: 3,
                lag_bytes: 192,
                lag_ms: 250,
                last_heard_ms: Some(1500),
                learner: false,
                app_live: true,
                can_stand: true,
                admin_addr: None,
                member: "voter",
            }],
            ..NodeStatus::for_tests(role)
        }
    }

    /// An expected application that is gone fails `/primary` and `/ready` at once, whatever
    /// the lease; a backup is ready only while it hears its primary and is not far behind.
    #[test]
    fn ready_and_primary_follow_the_application() {
        let primary = status(Role::Primary);
        assert_eq!(ready_check(&primary, false).0, StatusCode::OK);
        let gone = crate::node::app_health::AppHealthStatus {
            live: false,
            answering: false,
            gone: Some("not answering pings on the app API"),
            ..primary.app_health.clone()
        };
        let hung = NodeStatus {
            app_health: gone.clone(),
            ..primary.clone()
        };
        let (code, body) = primary_check(&hung);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not answering pings"), "{body}");
        assert_eq!(ready_check(&hung, false).0, StatusCode::SERVICE_UNAVAILABLE);
        // No application expected here: the lease alone decides, as before.
        let none_expected = NodeStatus {
            app_health: crate::node::app_health::AppHealthStatus {
                expected: false,
                ..gone
            },
            ..primary.clone()
        };
        assert_eq!(primary_check(&none_expected).0, StatusCode::OK);
        assert_eq!(ready_check(&none_expected, false).0, StatusCode::OK);
        assert_eq!(
            ready_check(&primary, true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );

        let backup = status(Role::Backup);
        assert_eq!(ready_check(&backup, false).0, StatusCode::OK);
        let behind = NodeStatus {
            commit_lsn: 500,
            ..backup.clone()
        };
        let (code, body) = ready_check(&behind, false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not yet durable"), "{body}");
        let stale = NodeStatus {
            heartbeat_age_ms: Some(REPLICA_HEARTBEAT_AGE_MAX_MS),
            ..backup
        };
        assert_eq!(
            ready_check(&stale, false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ready_check(&status(Role::Candidate), false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// Follow mode: a backup is ready while its copy of the directory is current, not while
    /// it is behind or failing; a primary once its application serves.
    #[test]
    fn ready_in_follow_mode_follows_the_directory() {
        let follow = |state: &'static str, applied_lsn: u64| crate::follow::node::FollowStatus {
            dir: "/d".into(),
            state,
            applied_lsn,
            committed_changes: 0,
            error: (state == "failed").then(|| "record 7: checksum".to_owned()),
            last_start_ms: None,
            since_ms: 0,
        };
        let with = |role, follow| NodeStatus {
            commit_lsn: 300,
            durable_lsn: 300,
            follow: Some(follow),
            ..status(role)
        };
        assert_eq!(
            ready_check(&with(Role::Backup, follow("standby", 290)), false).0,
            StatusCode::OK
        );
        let (code, body) = ready_check(&with(Role::Backup, follow("standby", 100)), false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("200 committed records behind"), "{body}");
        let (code, body) = ready_check(&with(Role::Backup, follow("failed", 290)), false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("checksum"), "{body}");
        assert_eq!(
            ready_check(&with(Role::Primary, follow("serving", 0)), false).0,
            StatusCode::OK
        );
        let (code, body) = ready_check(&with(Role::Primary, follow("starting", 0)), false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");
    }

    /// Without `--app-cmd` neither `/status` nor `/metrics` mention an application; with
    /// it, `/status` has `app` and `/metrics` counts its restarts.
    #[test]
    fn app_is_reported_only_when_supervised() {
        let metrics = Arc::new(Metrics::default());
        Metrics::add(&metrics.app_restarts, 2);
        let plain = status(Role::Backup);
        let out = render_metrics(Arc::new(plain.clone()), Arc::clone(&metrics), None).unwrap();
        assert!(!out.contains("understudy_app_restarts_total"), "{out}");
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("app").is_none(), "{json}");

        let supervised = NodeStatus {
            app: Some(crate::node::AppStatus {
                pid: Some(4242),
                restarts: 2,
                running_since_ms: Some(1_700_000_000_000),
                last_exit: None,
            }),
            ..plain
        };
        let out = render_metrics(Arc::new(supervised.clone()), metrics, None).unwrap();
        assert!(out.contains("\nunderstudy_app_restarts_total 2\n"), "{out}");
        let json = serde_json::to_value(&supervised).unwrap();
        assert_eq!(
            json["app"],
            serde_json::json!({"pid": 4242, "restarts": 2, "running_since_ms": 1_700_000_000_000u64})
        );
    }

    /// Every gauge the load balancer and dashboards rely on is there, with the role as a
    /// one-hot label set and peers labelled by id.
    #[test]
    fn metrics_render_status_gauges_then_counters() {
        let out = render_metrics(Arc::new(status(Role::Primary)), Arc::default(), None).unwrap();
        for line in [
            "understudy_role{role=\"primary\"} 1\n",
            "understudy_role{role=\"backup\"} 0\n",
            "understudy_role{role=\"candidate\"} 0\n",
            "understudy_epoch 3\n",
            "understudy_last_lsn 10\n",
            "understudy_durable_lsn 9\n",
            "understudy_commit_lsn 8\n",
            "understudy_lease_held 1\n",
            "understudy_peer_lag_records{peer=\"2\"} 3\n",
            "understudy_peer_lag_bytes{peer=\"2\"} 192\n",
            "understudy_peer_lag_seconds{peer=\"2\"} 0.25\n",
            "understudy_peer_connected{peer=\"2\"} 1\n",
            "understudy_peer_last_heard_seconds{peer=\"2\"} 1.5\n",
            "# TYPE understudy_fsync_seconds histogram\n",
            "# TYPE understudy_elections counter\n",
            "understudy_elections_total 0\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
    }

    /// What an OpenMetrics parser holds against the exposition: every family declared once
    /// (a counter's family is its name without `_total`, a histogram's `_bucket`, `_sum`
    /// and `_count` are its own), every sample under a declared family of the right type,
    /// and `# EOF` at the end.
    #[test]
    fn metrics_declare_every_family_once_as_a_strict_parser_wants() {
        let out = render_metrics(Arc::new(status(Role::Primary)), Arc::default(), None).unwrap();
        assert!(out.ends_with("\n# EOF\n"), "{out}");
        let mut families: std::collections::BTreeMap<String, String> = Default::default();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (family, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    !(kind == "counter" && family.ends_with("_total")),
                    "counter family {family} is exposed as {family}_total"
                );
                assert!(
                    families
                        .insert(family.to_owned(), kind.to_owned())
                        .is_none(),
                    "family {family} declared twice (last as {kind})"
                );
            }
        }
        for line in out.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let belongs = families.iter().any(|(family, kind)| match kind.as_str() {
                "counter" => name == format!("{family}_total"),
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name == format!("{family}{suffix}")),
                _ => name == family,
            });
            assert!(belongs, "sample {line:?} belongs to no declared family");
        }
        assert!(out.contains("understudy_build_info{version=\""), "{out}");
        assert!(out.contains("process_resident_memory_bytes "), "{out}");
        assert!(out.contains("process_cpu_seconds_total "), "{out}");
        assert!(
            out.contains("understudy_client_connections_open 0\n"),
            "{out}"
        );
    }

    /// Only a primary with its lease passes `/primary`; only a backup that hears its primary
    /// passes `/replica`.
    #[test]
    fn primary_and_replica_checks_follow_role_lease_and_heartbeat() {
        let primary = status(Role::Primary);
        assert_eq!(primary_check(&primary).0, StatusCode::OK);
        assert_eq!(replica_check(&primary).0, StatusCode::SERVICE_UNAVAILABLE);
        let lapsed = NodeStatus {
            lease_held: false,
            ..primary
        };
        assert_eq!(primary_check(&lapsed).0, StatusCode::SERVICE_UNAVAILABLE);

        let backup = status(Role::Backup);
        assert_eq!(primary_check(&backup).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(replica_check(&backup).0, StatusCode::OK);
        let stale = NodeStatus {
            heartbeat_age_ms: Some(REPLICA_HEARTBEAT_AGE_MAX_MS),
            ..backup.clone()
        };
        assert_eq!(replica_check(&stale).0, StatusCode::SERVICE_UNAVAILABLE);
        let orphan = NodeStatus {
            primary: None,
            heartbeat_age_ms: None,
            ..backup.clone()
        };
        assert_eq!(replica_check(&orphan).0, StatusCode::SERVICE_UNAVAILABLE);
        let failed = NodeStatus {
            failed: Some("fsync: EIO".into()),
            ..backup
        };
        assert_eq!(replica_check(&failed).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            health_check(&failed, false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// `to` must be a node id; anything else is refused before the core hears of it.
    #[test]
    fn switchover_target_parses_only_node_ids() {
        assert_eq!(switchover_target(Some("to=2")), Ok(Some(NodeId(2))));
        assert_eq!(switchover_target(Some("x=1&to=3")), Ok(Some(NodeId(3))));
        assert_eq!(switchover_target(None), Ok(None));
        assert_eq!(switchover_target(Some("x=1")), Ok(None));
        assert!(switchover_target(Some("to=0")).is_err());
        assert!(switchover_target(Some("to=two")).is_err());
        assert!(switchover_target(Some("to=70000")).is_err());
        assert_eq!(switchover_target(Some("to")), Ok(None));
    }
}
