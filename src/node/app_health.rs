//! Whether the local application is live: attached to the app API and answering, and
//! reachable at `--app-addr` when that is set (DESIGN, "The application is part of the
//! node").
//!
//! Three sources feed it:
//!
//! - **The app API** (`app_api`). A connection that subscribes attaches (an [`Attached`]
//!   guard, dropped when the connection ends). On a session of app API version 2 the sidecar
//!   sends `Ping` every heartbeat interval and the application answers `Pong` with the last
//!   LSN it applied; a subscribed connection that has not answered for [`AppHealth::hang_after`]
//!   (five heartbeat intervals, at least 250 ms) counts as hung. A version 1 session is not
//!   pinged and counts as answering while it is attached.
//! - **Snapshots the sidecar asks for.** The client library takes `StateMachine::capture`
//!   on the application's thread, between two applies, and answers no ping meanwhile; for
//!   a state machine that captures by encoding its whole state (the default calls
//!   `snapshot`), a large state takes longer than the hang bound. So from the moment the
//!   sidecar sends a `SnapshotRequest` to an application that was answering, until the
//!   application offers or declines the snapshot or answers a ping sent after the request
//!   (`app_api.rs`, `PingNonces`), silence is not a hang, for at most
//!   [`AppHealth::snapshot_grace`] (`--app-snapshot-timeout`). Without this, a primary whose
//!   application takes its snapshot would hand over (`--app-timeout`) at every snapshot,
//!   and a supervised application (`--app-cmd`) would be killed in the middle of a
//!   snapshot longer than two seconds, and again at the next one.
//! - **The client port** (`proxy`): a failed connection to `--app-addr` marks the
//!   application unreachable at once and is counted; a successful one marks it reachable.
//! - **A probe** ([`probe`]): with `--app-addr`, a TCP connection every heartbeat interval,
//!   so that an application nobody sends clients to is still watched.
//!
//! An application that has never attached to the app API but is watched at `--app-addr`
//! (an unmodified server) is live while it accepts connections there; once one has
//! attached, it must also stay attached and answering.
//!
//! The core loop evaluates it on every tick ([`AppHealth::evaluate`]) and tells the core
//! when the answer changes (`Input::AppHealth`). An application is *expected* when the
//! sidecar runs it (`--app-cmd`), serves clients for it (`--app-addr`), or one has attached
//! since the start: only an expected application that is not live makes the node unfit to
//! serve (`/primary` and `/ready` fail, the primary hands over after `--app-timeout`). A
//! sidecar that never had an application (a witness-like node, a test) behaves as before.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::metrics::Metrics;
use crate::Lsn;

/// The shortest time without a `Pong` after which a pinged application counts as hung.
pub const HANG_AFTER_MIN: Duration = Duration::from_millis(250);
/// Heartbeat intervals without a `Pong` after which a pinged application counts as hung.
pub const HANG_AFTER_HEARTBEATS: u32 = 5;

/// The application's liveness as `/status` shows it (`app_health`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AppHealthStatus {
    /// An application is expected here (`--app-cmd`, `--app-addr`, or one attached since
    /// the start); only then does its absence make the node unfit to serve.
    pub expected: bool,
    /// Attached, answering and (with `--app-addr`) reachable.
    pub live: bool,
    /// Some app API connection holds a subscription. (An application that never attached
    /// but is watched at `--app-addr` is judged by reachability alone.)
    pub attached: bool,
    /// Every pinged subscription answered within the hang bound.
    pub answering: bool,
    /// Whether the last connection to `--app-addr` succeeded; absent without the flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// The last LSN the application said it applied (`Pong`).
    pub applied_lsn: u64,
    /// When `live` last changed (or the sidecar started), in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// While not live: why, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gone: Option<&'static str>,
    /// Taking a snapshot the sidecar asked for, within `--app-snapshot-timeout`: pings
    /// may go unanswered meanwhile. Shown only while true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub taking_snapshot: bool,
}

/// The shared liveness record. One per node.
#[derive(Debug)]
pub struct AppHealth {
    inner: Mutex<Inner>,
    /// How often a subscribed connection is pinged.
    pub ping_every: Duration,
    /// How long a pinged connection may go without answering.
    pub hang_after: Duration,
    /// How long an application may go without answering while it takes a snapshot the
    /// sidecar asked for (`--app-snapshot-timeout`).
    pub snapshot_grace: Duration,
    expected_by_flags: bool,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Inner {
    next_id: u64,
    subscribed: BTreeMap<u64, Subscribed>,
    attached_ever: bool,
    reachable: Option<bool>,
    applied_lsn: Lsn,
    live: bool,
    since: SystemTime,
    /// Follow mode on a node that does not run its application now (a backup): `Some(ready)`,
    /// where `ready` says its copy of the followed directory is current. Such a node expects
    /// no application and counts as live when ready, so that a primary may hand over to it.
    standby: Option<bool>,
    /// When the sidecar asked the application, then answering, for a snapshot it has not
    /// offered or declined yet.
    snapshot_asked: Option<Instant>,
}

#[derive(Debug)]
struct Subscribed {
    pinged: bool,
    last_answer: Instant,
}

/// One subscribed app API connection; detaches when dropped.
#[derive(Debug)]
pub struct Attached {
    health: Arc<AppHealth>,
    id: u64,
}

impl Attached {
    /// The application answered a `Pong`, having applied through `applied_lsn`.
    pub fn answered(&self, applied_lsn: Lsn) {
        let mut inner = self.health.lock();
        if let Some(subscribed) = inner.subscribed.get_mut(&self.id) {
            subscribed.last_answer = Instant::now();
        }
        inner.applied_lsn = inner.applied_lsn.max(applied_lsn);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut inner = self.health.lock();
        if inner.subscribed.remove(&self.id).is_some() && inner.subscribed.is_empty() {
            Metrics::add(&self.health.metrics.app_detachments, 1);
        }
    }
}

impl AppHealth {
    /// `expected`: the sidecar runs or serves the application (`--app-cmd`, `--app-addr`).
    /// `app_addr`: whether reachability is watched (it starts unknown, counted as not).
    /// `snapshot_grace`: `--app-snapshot-timeout`.
    pub fn new(
        expected: bool,
        app_addr: bool,
        heartbeat: Duration,
        snapshot_grace: Duration,
        metrics: Arc<Metrics>,
    ) -> AppHealth {
        AppHealth {
            inner: Mutex::new(Inner {
                next_id: 0,
                subscribed: BTreeMap::new(),
                attached_ever: false,
                reachable: app_addr.then_some(false),
                applied_lsn: Lsn::ZERO,
                live: false,
                since: SystemTime::now(),
                standby: None,
                snapshot_asked: None,
            }),
            ping_every: heartbeat,
            hang_after: (heartbeat * HANG_AFTER_HEARTBEATS).max(HANG_AFTER_MIN),
            snapshot_grace,
            expected_by_flags: expected,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind: still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection subscribed; `pinged` when its session gets pings (version 2).
    pub fn attach(self: &Arc<Self>, pinged: bool) -> Attached {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.attached_ever = true;
        inner.subscribed.insert(
            id,
            Subscribed {
                pinged,
                last_answer: Instant::now(),
            },
        );
        Attached {
            health: Arc::clone(self),
            id,
        }
    }

    /// The sidecar sent the application a `SnapshotRequest`: if the application is
    /// answering now, its silence is no hang until it offers or declines the snapshot
    /// ([`AppHealth::snapshot_done`]), for at most [`AppHealth::snapshot_grace`] from the
    /// first such request (another request within it does not extend it). One that was
    /// silent already gets no grace.
    pub fn snapshot_asked(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        if !self.taking_snapshot(&inner, now) && self.answering(&inner, now) {
            inner.snapshot_asked = Some(now);
        }
    }

    /// The application offered or declined the snapshot asked for, or answered a ping sent
    /// after the request: pings count again.
    pub fn snapshot_done(&self) {
        self.lock().snapshot_asked = None;
    }

    /// Whether the application may be silent now: a snapshot asked of it is being taken,
    /// and the grace has not run out.
    fn taking_snapshot(&self, inner: &Inner, now: Instant) -> bool {
        inner
            .snapshot_asked
            .is_some_and(|asked| now.saturating_duration_since(asked) < self.snapshot_grace)
    }

    /// Whether every pinged subscription answered within the hang bound (true with none).
    fn answering(&self, inner: &Inner, now: Instant) -> bool {
        inner
            .subscribed
            .values()
            .all(|s| !s.pinged || now.duration_since(s.last_answer) < self.hang_after)
    }

    /// How long a pinged application has been silent: the shortest time since any pinged
    /// subscription last answered, once it is past the hang bound; `None` while one answers
    /// within it, none is pinged, or it is taking a snapshot the sidecar asked for (within
    /// the grace).
    pub fn hung_for(&self) -> Option<Duration> {
        let now = Instant::now();
        let inner = self.lock();
        if self.taking_snapshot(&inner, now) {
            return None;
        }
        let silence = inner
            .subscribed
            .values()
            .filter(|s| s.pinged)
            .map(|s| now.duration_since(s.last_answer))
            .min()?;
        (silence >= self.hang_after).then_some(silence)
    }

    /// A connection to `--app-addr` succeeded or failed (a failure is counted).
    pub fn reached(&self, ok: bool) {
        let mut inner = self.lock();
        // A follow-mode backup runs no application: nothing there is a failure.
        if !ok && inner.standby.is_none() {
            Metrics::add(&self.metrics.app_upstream_failures, 1);
        }
        if inner.reachable.is_some() {
            inner.reachable = Some(ok);
        }
    }

    /// Follow mode: `Some(ready)` while this node does not run its application (a backup,
    /// ready when its copy of the directory is current), `None` while it does. Leaving
    /// standby makes `--app-addr` unknown again (counted as unreachable) until the next
    /// connection there.
    pub fn set_standby(&self, standby: Option<bool>) {
        let mut inner = self.lock();
        if inner.standby.is_some() && standby.is_none() && inner.reachable.is_some() {
            inner.reachable = Some(false);
        }
        inner.standby = standby;
    }

    /// The state now; logs and counts a change of `live`.
    pub fn evaluate(&self) -> AppHealthStatus {
        let now = Instant::now();
        let mut inner = self.lock();
        let attached = !inner.subscribed.is_empty();
        let taking_snapshot = attached && self.taking_snapshot(&inner, now);
        let answering = attached && (taking_snapshot || self.answering(&inner, now));
        let reachable = inner.reachable;
        // An application that never attached to the app API but is watched at --app-addr
        // (one that does not speak the app API, such as an unmodified server) is judged by
        // reachability alone; one that attached once must stay attached and answering.
        let uses_api = inner.attached_ever || reachable.is_none();
        let api_ok = !uses_api || (attached && answering);
        let (expected, live) = match inner.standby {
            Some(ready) => (false, ready),
            None => (
                self.expected_by_flags || inner.attached_ever,
                api_ok && reachable != Some(false),
            ),
        };
        let gone = if live {
            None
        } else if inner.standby.is_some() {
            Some("standby: the copy of the followed directory is not current")
        } else if uses_api && !attached {
            Some("not attached to the app API")
        } else if uses_api && !answering {
            Some("not answering pings on the app API")
        } else {
            Some("not accepting connections at --app-addr")
        };
        if live != inner.live {
            inner.live = live;
            inner.since = SystemTime::now();
            self.metrics
                .app_live
                .store(u64::from(live), std::sync::atomic::Ordering::Relaxed);
            match gone {
                None if inner.standby.is_some() => {
                    info!("standby: the copy of the followed directory is current")
                }
                None => info!("application live"),
                Some(why) if expected => {
                    Metrics::add(&self.metrics.app_gone, 1);
                    warn!(why, "application gone");
                }
                Some(_) => {}
            }
        }
        AppHealthStatus {
            expected,
            live,
            attached,
            answering,
            reachable,
            applied_lsn: inner.applied_lsn.get(),
            since_ms: inner
                .since
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            gone,
            taking_snapshot,
        }
    }
}

/// With `--app-addr`: connects there every `every` until `cancel`, and records the outcome.
pub async fn probe(health: Arc<AppHealth>, addr: SocketAddr, cancel: CancellationToken) {
    let every = health.ping_every;
    let timeout = health.hang_after;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let connect = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr));
        let ok = tokio::select! {
            _ = cancel.cancelled() => return,
            result = connect => matches!(result, Ok(Ok(_))),
        };
        health.reached(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(expected: bool, app_addr: bool) -> Arc<AppHealth> {
        Arc::new(AppHealth::new(
            expected,
            app_addr,
            Duration::from_millis(10),
            SNAPSHOT_GRACE,
            Arc::new(Metrics::default()),
        ))
    }

    const SNAPSHOT_GRACE: Duration = Duration::from_millis(600);

    /// A snapshot the sidecar asked for excuses silence until the application offers or
    /// declines it, for at most the grace; an application already silent gets none.
    #[test]
    fn silence_while_taking_an_asked_for_snapshot_is_no_hang_within_the_grace() {
        let health = health(true, false);
        let attached = health.attach(true);
        health.snapshot_asked();
        std::thread::sleep(health.hang_after + Duration::from_millis(20));
        let status = health.evaluate();
        assert!(status.live && status.answering && status.taking_snapshot);
        assert_eq!(health.hung_for(), None);
        // Offered: the silence counts again, at once.
        health.snapshot_done();
        let status = health.evaluate();
        assert!(!status.live && !status.taking_snapshot);
        assert!(health.hung_for().is_some());
        // Asked while silent: no grace.
        health.snapshot_asked();
        assert!(!health.evaluate().live);
        assert!(health.hung_for().is_some());
        // Answering again, then asked: the grace runs out after SNAPSHOT_GRACE.
        attached.answered(Lsn(3));
        health.snapshot_asked();
        std::thread::sleep(SNAPSHOT_GRACE - Duration::from_millis(100));
        assert!(health.evaluate().live);
        // A second request does not extend the grace.
        health.snapshot_asked();
        std::thread::sleep(Duration::from_millis(150));
        let status = health.evaluate();
        assert!(!status.live && !status.taking_snapshot);
        assert_eq!(status.gone, Some("not answering pings on the app API"));
        assert!(health.hung_for().is_some());
    }

    #[test]
    fn nothing_attached_is_not_live_and_not_expected_without_flags() {
        let status = health(false, false).evaluate();
        assert!(!status.live);
        assert!(!status.expected);
        assert_eq!(status.gone, Some("not attached to the app API"));
    }

    #[test]
    fn attach_makes_it_live_and_expected_and_detach_counts() {
        let health = health(false, false);
        let attached = health.attach(true);
        let status = health.evaluate();
        assert!(status.live && status.expected && status.attached);
        drop(attached);
        let status = health.evaluate();
        assert!(!status.live);
        assert!(status.expected, "once attached, it stays expected");
        assert_eq!(
            health
                .metrics
                .app_detachments
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn an_application_that_stops_answering_is_hung_until_it_answers() {
        let health = health(true, false);
        let attached = health.attach(true);
        assert!(health.evaluate().live);
        std::thread::sleep(health.hang_after + Duration::from_millis(20));
        let status = health.evaluate();
        assert!(!status.live);
        assert_eq!(status.gone, Some("not answering pings on the app API"));
        attached.answered(Lsn(7));
        let status = health.evaluate();
        assert!(status.live);
        assert_eq!(status.applied_lsn, 7);
    }

    #[test]
    fn a_session_without_pings_counts_as_answering() {
        let health = health(true, false);
        let _attached = health.attach(false);
        std::thread::sleep(health.hang_after + Duration::from_millis(20));
        assert!(health.evaluate().live);
    }

    #[test]
    fn an_application_that_never_attached_is_judged_by_its_address_alone() {
        let health = health(true, true);
        assert!(!health.evaluate().live, "unknown counts as unreachable");
        health.reached(true);
        assert!(health.evaluate().live);
        // Once it attached, it must stay attached.
        drop(health.attach(true));
        let status = health.evaluate();
        assert!(!status.live);
        assert_eq!(status.gone, Some("not attached to the app API"));
    }

    #[test]
    fn an_unreachable_app_addr_is_not_live() {
        let health = health(true, true);
        let _attached = health.attach(true);
        assert!(!health.evaluate().live, "unknown counts as unreachable");
        health.reached(true);
        assert!(health.evaluate().live);
        health.reached(false);
        let status = health.evaluate();
        assert!(!status.live);
        assert_eq!(status.reachable, Some(false));
        assert_eq!(
            health
                .metrics
                .app_upstream_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
