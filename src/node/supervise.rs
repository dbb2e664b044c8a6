//! Application supervision (`--app-cmd`): the sidecar starts the application itself, starts
//! it again when it exits, forwards its output to the sidecar's log, and stops it when the
//! sidecar stops (DESIGN, "The application is part of the node").
//!
//! It owns the application's process group, the two pipes that carry its output, and the
//! guard process that ends the group if the sidecar dies. The paths through it:
//!
//! - **Start.** `node::run` calls [`start`] once the node's listeners are bound and its
//!   services (app API, admin) are running, so the application can connect at once. The
//!   supervisor runs `sh -c COMMAND` with stdin from `/dev/null` and stdout and stderr into
//!   two pipes, in a process group of its own (so that a Ctrl-C in a terminal reaches the
//!   sidecar alone, and a stop reaches everything the command started), with
//!   `PR_SET_PDEATHSIG` = SIGKILL set between fork and exec and `getppid()` checked right
//!   after (the sidecar may have died before the setting took effect), as `understudy demo`
//!   does for its children.
//! - **Environment.** `UNDERSTUDY_APP_SOCKET`, `UNDERSTUDY_NODE_ID`, `UNDERSTUDY_ROLE` (the
//!   node's role when this run of the application started), `UNDERSTUDY_DATA_DIR`, and
//!   `UNDERSTUDY_APP_ADDR` and `UNDERSTUDY_ADMIN` when `--app-addr` and `--admin-listen` are
//!   set. Any other `UNDERSTUDY_*` variable the sidecar inherited (its own configuration,
//!   when given that way) is removed, so the application sees only what is meant for it.
//! - **Output.** One thread per stream reads its pipe line by line, cuts a line at
//!   [`LINE_BYTES_MAX`] bytes (the rest of it is skipped; the line gets `app.cut=true`) and
//!   logs it under the target `understudy::app`, stdout at info and stderr at warn, with the
//!   fields `app.stream`, `app.name` and `app.pid`. The threads never touch the runtime, so
//!   the core loop never waits on the application's output; an application that writes
//!   faster than the log is written waits on its own pipe.
//! - **Exit and restart.** When `sh` exits, its exit status is logged (warn) with the
//!   restart count; whatever else of its process group still runs is stopped as below (two
//!   copies of the application must not run at once); and the command is started again
//!   after a pause: [`BACKOFF_MIN`], doubling up to [`BACKOFF_MAX`], back to the minimum once
//!   a run lasted [`BACKOFF_RESET_AFTER`]. A command that cannot be started at all (no `sh`,
//!   no processes left) is retried on the same schedule. `restarts` in `/status` `app` and
//!   `understudy_app_restarts_total` in `/metrics` count the starts after the first.
//! - **Stop.** When the node stops (SIGTERM or SIGINT, after a primary's hand-over; or a
//!   failed disk), the process group gets SIGTERM; whatever of it still runs after
//!   `--app-stop-timeout` gets SIGKILL; `sh` is reaped. `node::run` returns only after that.
//! - **Sidecar killed** (SIGKILL, a crash). The kernel sends SIGKILL to `sh`
//!   (`PR_SET_PDEATHSIG`), and so to the application when `sh` exec'd it. But `sh` usually
//!   forks the command (dash does even for a single one), and a forked process does not
//!   inherit the setting. So each run also has a *guard*: a second, tiny `sh` in a process
//!   group of its own, without the setting, blocked reading a pipe whose only write end the
//!   sidecar holds ([`GUARD_SCRIPT`]). When the sidecar dies, however it dies, the kernel
//!   closes that end; the guard reads end-of-file and sends SIGKILL to the application's
//!   whole process group. When a run ends normally the supervisor kills the guard first
//!   (and reaps it), then closes the pipe.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not the process:
//! the supervisor runs on the runtime of `understudy run`, whose one thread is the main
//! thread, and the children are forked from that task.
//!
//! - **Hung.** An application that stops answering its app API pings (`app_health`) for
//!   half of `--app-timeout`, and at least [`HUNG_KILL_AFTER_MIN`], gets SIGKILL on its
//!   group, and so is started again like one that exited. With an app timeout of 4 s or
//!   more that restart is under way before a primary would hand over for it; with a shorter
//!   one the primary hands over first, and the application comes back as a backup's.
//!
//! - **Gate** (follow mode, [`Gate`]). The application runs only while the follow task
//!   holds the gate open (this node serves as primary). Closing it kills the process
//!   group with SIGKILL (its files are about to be rewound), waits until nothing of it is
//!   left, and only then reports `running` false; such a stop is not a restart.
//!
//! What it does not do: talk to the core loop (it publishes an [`AppStatus`] on a watch channel, which the core loop copies
//! into `/status`); decide when the application runs (the gate's holder does; without follow
//! mode it runs on every node, and `--on-promote` and `--on-demote` are for role changes);
//! capture the application's files (follow mode's `follow::node`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, PipeReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::app_health::AppHealth;
use super::handle::{role_name, AppStatus, NodeStatus};
use super::metrics::Metrics;
use super::NodeConfig;

/// Bytes of one line of the application's output that reach the log, at most.
pub const LINE_BYTES_MAX: usize = 4096;
/// The first pause before starting the application again.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest pause before starting the application again.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The shortest silence after which a hung application is killed: the longer of this and
/// half of `--app-timeout` (so that, with a generous app timeout, a restart in place is
/// under way before the primary would hand over). An application busy for a moment (a long
/// `apply`, a GC pause) is not killed for it.
pub const HUNG_KILL_AFTER_MIN: Duration = Duration::from_secs(2);
/// A run that lasted this long worked: the next pause is [`BACKOFF_MIN`] again.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// How often a stopping process group is checked for processes still running.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How long `sh` may take to be reaped after SIGKILL (a process stuck in the kernel, in
/// uninterruptible sleep, is not waited for longer).
const REAP_AFTER_KILL_MAX: Duration = Duration::from_secs(2);
/// How long a stop waits for the application's last output to be logged (the pipes reach
/// their end once every process of the group has exited).
const OUTPUT_DRAIN_MAX: Duration = Duration::from_secs(1);
/// Characters of `app.name`, at most.
const APP_NAME_CHARS_MAX: usize = 32;
/// The guard of one run (see the module doc): `$1` is the application's process group. It
/// waits for the end of its stdin, the sidecar's lifeline, then kills the group.
pub const GUARD_SCRIPT: &str = "while read -r _; do :; done; kill -s KILL -- -\"$1\"";
/// The `tracing` target of the application's output, so that `RUST_LOG` can filter it
/// apart from the sidecar's own lines.
const OUTPUT_TARGET: &str = "understudy::app";

const _: () = assert!(
    BACKOFF_MIN.as_nanos() > 0,
    "the backoff must grow by doubling"
);
const _: () = assert!(BACKOFF_MIN.as_nanos() <= BACKOFF_MAX.as_nanos());
// Only a run longer than the longest pause resets it: an application that fails every few
// seconds is not restarted at the shortest pause forever.
const _: () = assert!(BACKOFF_MAX.as_nanos() <= BACKOFF_RESET_AFTER.as_nanos());
const _: () = assert!(LINE_BYTES_MAX > 0);

/// `--app-cmd` and what the application is told, validated.
#[derive(Clone, Debug)]
pub struct AppCommand {
    /// Run with `sh -c`.
    pub command: String,
    /// `--app-stop-timeout`: from SIGTERM to SIGKILL when the node stops.
    pub stop_timeout: Duration,
    /// The app API socket (`UNDERSTUDY_APP_SOCKET`).
    pub socket: PathBuf,
    /// The admin HTTP address, if any (`UNDERSTUDY_ADMIN`).
    pub admin: Option<SocketAddr>,
}

/// Follow mode's hold on the application: it runs only while `allowed` is true (this node
/// serves as primary). `running` is true from just before a run starts until its whole
/// process group is gone, so that whoever closes the gate can wait until nothing of the
/// application is left before it touches the application's files.
///
/// Why no run starts after the gate is seen closed: the supervisor sets `running` and only
/// then reads `allowed` again; the closer sets `allowed` and only then reads `running`
/// (both through the channels' locks). If the closer reads `running` false, the
/// supervisor's setting came after that read, so its read of `allowed` sees the gate
/// closed and it does not start.
pub struct Gate {
    pub allowed: watch::Receiver<bool>,
    pub running: watch::Sender<bool>,
}

/// The running supervisor: its status, and its task to wait for when the node stops.
pub struct Supervisor {
    status: watch::Receiver<AppStatus>,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// The application's status, as the supervisor last saw it.
    pub fn watch_status(&self) -> watch::Receiver<AppStatus> {
        self.status.clone()
    }

    /// Waits until the supervisor has stopped the application (after `shutdown` given to
    /// [`start`] is cancelled) and reaped it.
    pub async fn stopped(self) {
        // A panic aborts the process (`panic = "abort"`); a cancelled task means the runtime
        // is going away, and `kill_on_drop` took the application's `sh` with it.
        let _ = self.task.await;
    }
}

/// Starts the application and supervises it until `shutdown` is cancelled, then stops it.
/// Call from the runtime thread that lives as long as the node (see the module doc).
pub fn start(
    app: &AppCommand,
    node: &NodeConfig,
    node_status: watch::Receiver<Arc<NodeStatus>>,
    health: Arc<AppHealth>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    gate: Option<Gate>,
) -> Supervisor {
    let mut env: Vec<(&'static str, OsString)> = vec![
        ("UNDERSTUDY_APP_SOCKET", app.socket.clone().into_os_string()),
        ("UNDERSTUDY_NODE_ID", node.node_id.to_string().into()),
        (
            "UNDERSTUDY_DATA_DIR",
            node.data_dir.clone().into_os_string(),
        ),
    ];
    if let Some(addr) = node.app_addr {
        env.push(("UNDERSTUDY_APP_ADDR", addr.to_string().into()));
    }
    if let Some(addr) = app.admin {
        env.push(("UNDERSTUDY_ADMIN", addr.to_string().into()));
    }
    let launch = Launch {
        command: app.command.clone(),
        name: app_name(&app.command).into(),
        env,
        node_status,
        stop_timeout: app.stop_timeout,
        health: Some(health),
        hung_kill_after: (node.core.app_timeout / 2).max(HUNG_KILL_AFTER_MIN),
    };
    let (status_tx, status) = watch::channel(AppStatus::default());
    let task = tokio::spawn(supervise(launch, status_tx, metrics, shutdown, gate));
    Supervisor { status, task }
}

/// How to start the application.
struct Launch {
    command: String,
    /// `app.name` in the log.
    name: Arc<str>,
    /// The environment, but for `UNDERSTUDY_ROLE`, which is read at each start.
    env: Vec<(&'static str, OsString)>,
    node_status: watch::Receiver<Arc<NodeStatus>>,
    stop_timeout: Duration,
    /// The application's liveness: one that stops answering its pings for
    /// `hung_kill_after` is killed, and so started again (`None` in unit tests).
    health: Option<Arc<AppHealth>>,
    hung_kill_after: Duration,
}

/// One run of the application.
struct Running {
    child: Child,
    pid: u32,
    /// Its process group: its own pid (`process_group(0)`).
    pgid: libc::pid_t,
    /// Kills the group if the sidecar dies; `None` if it could not be started.
    guard: Option<Guard>,
    /// Complete when the threads forwarding its output are done.
    output: Vec<oneshot::Receiver<()>>,
}

/// The guard of a run and the write end of its lifeline. Fields drop in order: the guard is
/// killed (`kill_on_drop`) before its lifeline closes, so it never kills a group by mistake.
struct Guard {
    child: Child,
    lifeline: std::io::PipeWriter,
}

impl Running {
    /// Ends the guard once the application's group is gone: SIGKILL, reap, then close the
    /// lifeline (in that order, or the guard would signal a group id that may be reused).
    async fn release_guard(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            let _ = guard.child.start_kill();
            let _ = tokio::time::timeout(REAP_AFTER_KILL_MAX, guard.child.wait()).await;
            drop(guard.lifeline);
        }
    }
}

/// Waits until the gate is open and marks a run under way; `false` on shutdown.
async fn gate_open(gate: &mut Gate, shutdown: &CancellationToken) -> bool {
    loop {
        tokio::select! {
            opened = gate.allowed.wait_for(|allowed| *allowed) => if opened.is_err() { return false },
            () = shutdown.cancelled() => return false,
        }
        gate.running.send_replace(true);
        if *gate.allowed.borrow() {
            return true;
        }
        gate.running.send_replace(false);
    }
}

/// Returns once the gate closes (never without a gate).
async fn gate_closed(gate: &mut Option<Gate>) {
    match gate {
        Some(gate) => {
            let _ = gate.allowed.wait_for(|allowed| !*allowed).await;
        }
        None => std::future::pending().await,
    }
}

/// Starts the application, again after each exit, until `shutdown`; then stops it. With a
/// gate, only while the gate is open; a run is killed when it closes.
async fn supervise(
    launch: Launch,
    status: watch::Sender<AppStatus>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    mut gate: Option<Gate>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if let Some(gate) = gate.as_mut() {
            if !gate_open(gate, &shutdown).await {
                return;
            }
        }
        let started = Instant::now();
        let restarts = status.borrow().restarts;
        let wait = match launch.spawn() {
            Ok(mut running) => {
                let pid = running.pid;
                if restarts == 0 {
                    info!(app.pid = pid, command = %launch.command, "application started");
                } else {
                    info!(app.pid = pid, restarts, "application started again");
                }
                status.send_modify(|s| {
                    s.pid = Some(pid);
                    s.running_since_ms = Some(unix_ms());
                });
                let exited = tokio::select! {
                    exited = running.child.wait() => Some(exited),
                    () = shutdown.cancelled() => None,
                    () = launch.hung(pid) => {
                        // Ended by SIGKILL to its group; the exit is reported below.
                        // SAFETY: kill(2) on the application's own process group.
                        unsafe { libc::kill(-running.pgid, libc::SIGKILL) };
                        Some(running.child.wait().await)
                    }
                    () = gate_closed(&mut gate) => {
                        // No longer primary: its files are about to be rewound, so it gets
                        // no chance to write more (SIGKILL, not SIGTERM).
                        info!(app.pid = pid, "this node no longer serves: killing the application");
                        signal_group(running.pgid, libc::SIGKILL);
                        let exited = tokio::time::timeout(REAP_AFTER_KILL_MAX, running.child.wait()).await;
                        let deadline = Instant::now() + REAP_AFTER_KILL_MAX;
                        while group_running(running.pgid).await && Instant::now() < deadline {
                            tokio::time::sleep(GROUP_POLL).await;
                        }
                        running.release_guard().await;
                        let exit = match exited {
                            Ok(exited) => describe(exited),
                            Err(_) => "not reaped after SIGKILL".to_owned(),
                        };
                        status.send_modify(|s| {
                            s.pid = None;
                            s.running_since_ms = None;
                            s.last_exit = Some(exit);
                        });
                        if let Some(gate) = &gate {
                            gate.running.send_replace(false);
                        }
                        continue;
                    }
                };
                let Some(exited) = exited else {
                    let exit = launch.stop(&mut running).await;
                    running.release_guard().await;
                    if let Some(gate) = &gate {
                        gate.running.send_replace(false);
                    }
                    // What it wrote while stopping reaches the log before the sidecar exits.
                    let output = futures_util::future::join_all(running.output);
                    let _ = tokio::time::timeout(OUTPUT_DRAIN_MAX, output).await;
                    status.send_modify(|s| {
                        s.pid = None;
                        s.running_since_ms = None;
                        s.last_exit = Some(exit);
                    });
                    return;
                };
                let exit = describe(exited);
                status.send_modify(|s| {
                    s.pid = None;
                    s.running_since_ms = None;
                    s.last_exit = Some(exit.clone());
                });
                let ran = started.elapsed();
                let wait = restart_wait(&mut backoff, ran);
                warn!(
                    app.pid = pid,
                    exit = %exit,
                    ran_ms = ran.as_millis() as u64,
                    restarts,
                    restart_in_ms = wait.as_millis() as u64,
                    "application exited; starting it again after a pause"
                );
                // What it started may still run (a forked child of `sh`): two copies of the
                // application must not run at once.
                launch.end_group(running.pgid, true).await;
                running.release_guard().await;
                wait
            }
            Err(e) => {
                let wait = restart_wait(&mut backoff, started.elapsed());
                error!(
                    command = %launch.command,
                    error = %e,
                    restarts,
                    restart_in_ms = wait.as_millis() as u64,
                    "cannot start the application; trying again after a pause"
                );
                status.send_modify(|s| s.last_exit = Some(format!("not started: {e}")));
                wait
            }
        };
        if let Some(gate) = &gate {
            // The run (if any) and its group are gone.
            gate.running.send_replace(false);
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        status.send_modify(|s| s.restarts += 1);
        Metrics::add(&metrics.app_restarts, 1);
    }
}

impl Launch {
    /// Returns once the running application (`pid`) has not answered its pings for
    /// `hung_kill_after` (never without a liveness record).
    async fn hung(&self, pid: u32) {
        let Some(health) = &self.health else {
            return std::future::pending().await;
        };
        let mut ticker = tokio::time::interval(health.ping_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Some(silent) = health.hung_for() {
                if silent >= self.hung_kill_after {
                    warn!(
                        app.pid = pid,
                        silent_ms = silent.as_millis() as u64,
                        "the application has not answered its pings: killing it to start it again"
                    );
                    return;
                }
            }
        }
    }
}

/// The pause before the next start after a run that lasted `ran`, and the one after it in
/// `backoff`: doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], reset by a run of
/// [`BACKOFF_RESET_AFTER`].
fn restart_wait(backoff: &mut Duration, ran: Duration) -> Duration {
    if ran >= BACKOFF_RESET_AFTER {
        *backoff = BACKOFF_MIN;
    }
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    wait
}

impl Launch {
    /// Starts `sh -c COMMAND` in a process group of its own, its output forwarded to the log.
    fn spawn(&self) -> std::io::Result<Running> {
        let (stdout_read, stdout_write) = std::io::pipe()?;
        let (stderr_read, stderr_write) = std::io::pipe()?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(stdout_write)
            .stderr(stderr_write)
            .process_group(0)
            .kill_on_drop(true);
        tie_to_this_process(&mut command);
        command
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .env("UNDERSTUDY_ROLE", role_name(self.node_status.borrow().role));
        let child = command.spawn()?;
        // The write ends of the pipes go with the command: from now on only the application
        // holds them, so the readers see the end of the output when it is gone.
        drop(command);
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the child was reaped before it was seen"))?;
        let pgid = libc::pid_t::try_from(pid)
            .map_err(|_| std::io::Error::other(format!("pid {pid} out of range")))?;
        let output = [
            forward(Stream::Stdout, stdout_read, Arc::clone(&self.name), pid),
            forward(Stream::Stderr, stderr_read, Arc::clone(&self.name), pid),
        ]
        .into_iter()
        .flatten()
        .collect();
        let guard = match spawn_guard(pgid) {
            Ok(guard) => Some(guard),
            Err(e) => {
                // `sh` still dies with the sidecar; what it forked might not.
                warn!(app.pid = pid, error = %e, "cannot start the guard that ends the application if the sidecar dies");
                None
            }
        };
        Ok(Running {
            child,
            pid,
            pgid,
            guard,
            output,
        })
    }

    /// Stops the application: SIGTERM to its process group, SIGKILL to whatever of it runs
    /// after the stop timeout, `sh` reaped. Returns how `sh` ended.
    async fn stop(&self, running: &mut Running) -> String {
        info!(
            app.pid = running.pid,
            stop_timeout_ms = self.stop_timeout.as_millis() as u64,
            "stopping the application (SIGTERM to its process group)"
        );
        let deadline = Instant::now() + self.stop_timeout;
        signal_group(running.pgid, libc::SIGTERM);
        let exited = match tokio::time::timeout(self.stop_timeout, running.child.wait()).await {
            Ok(exited) => exited,
            Err(_) => {
                warn!(
                    app.pid = running.pid,
                    "the application did not stop within --app-stop-timeout; SIGKILL"
                );
                signal_group(running.pgid, libc::SIGKILL);
                match tokio::time::timeout(REAP_AFTER_KILL_MAX, running.child.wait()).await {
                    Ok(exited) => exited,
                    Err(_) => {
                        error!(
                            app.pid = running.pid,
                            "the application did not end after SIGKILL (stuck in the kernel?)"
                        );
                        return "not reaped after SIGKILL".to_owned();
                    }
                }
            }
        };
        let exit = describe(exited);
        // The rest of the group has had its SIGTERM: it gets what is left of the timeout.
        self.end_group_by(running.pgid, false, deadline).await;
        info!(app.pid = running.pid, exit = %exit, "application stopped");
        exit
    }

    /// Ends what is left of a process group whose leader was reaped: SIGTERM (if `term`),
    /// then SIGKILL to whatever still runs after the stop timeout.
    async fn end_group(&self, pgid: libc::pid_t, term: bool) {
        self.end_group_by(pgid, term, Instant::now() + self.stop_timeout)
            .await;
    }

    async fn end_group_by(&self, pgid: libc::pid_t, term: bool, deadline: Instant) {
        if !group_running(pgid).await {
            return;
        }
        // The group has members, so its id cannot be reused for another group meanwhile
        // (the kernel does not reuse a pid still used as a process group id).
        if term {
            info!(pgid, "processes the application started still run; SIGTERM");
            signal_group(pgid, libc::SIGTERM);
        }
        while Instant::now() < deadline {
            tokio::time::sleep(GROUP_POLL).await;
            if !group_running(pgid).await {
                return;
            }
        }
        warn!(
            pgid,
            "processes the application started still run after --app-stop-timeout; SIGKILL"
        );
        signal_group(pgid, libc::SIGKILL);
    }
}

/// Starts the guard of the process group `pgid` (see the module doc). It needs no
/// `PR_SET_PDEATHSIG`: it must outlive the sidecar, for a moment.
fn spawn_guard(pgid: libc::pid_t) -> std::io::Result<Guard> {
    let (lifeline_read, lifeline) = std::io::pipe()?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(GUARD_SCRIPT)
        .arg("understudy-app-guard")
        .arg(pgid.to_string())
        .stdin(lifeline_read)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    Ok(Guard { child, lifeline })
}

/// Sends `signal` to every process of the group `pgid`.
fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // kill(-1) would signal every process we may signal, kill(0) our own group.
    assert!(pgid > 1, "process group {pgid} is not the application's");
    // SAFETY: kill(2) has no memory-safety preconditions; the group is the application's.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether a process of the group `pgid` still runs (a zombie does not: it is only waiting
/// to be reaped, by us or by whoever adopted it).
async fn group_running(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the group exists and may be signalled.
    let exists = unsafe { libc::kill(-pgid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    if !exists {
        return false;
    }
    // kill() counts zombies; /proc tells them apart. Reading it is file I/O: off the loop.
    tokio::task::spawn_blocking(move || group_running_in_proc(pgid))
        .await
        .unwrap_or(true)
}

/// Whether `/proc` lists a process of the group `pgid` that is not a zombie; true if
/// `/proc` cannot be read (then only SIGKILL after the timeout tells).
fn group_running_in_proc(pgid: libc::pid_t) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| proc_stat_state_and_group(&stat))
            .is_some_and(|(state, group)| group == pgid && state != 'Z' && state != 'X')
    })
}

/// The state and process group of a `/proc/PID/stat` line: `pid (comm) state ppid pgrp ...`,
/// where `comm` may hold spaces and parentheses, so fields are counted after the last `)`.
fn proc_stat_state_and_group(stat: &str) -> Option<(char, libc::pid_t)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// How a run ended, as `ExitStatus` prints it (`exit status: 1`, `signal: 9 (SIGKILL)`).
fn describe(exited: std::io::Result<ExitStatus>) -> String {
    match exited {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot be waited for: {e}"),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// `app.name` in the log: the last part of the command's program (past `exec` and
/// `NAME=value` assignments), e.g. `kv` for `exec ./target/release/kv --listen ...`.
fn app_name(command: &str) -> String {
    let name: String = command
        .split_whitespace()
        .map(|word| word.trim_matches(|c| c == '\'' || c == '"'))
        .find(|word| !word.is_empty() && *word != "exec" && !word.contains('='))
        .and_then(|word| word.rsplit('/').next())
        .unwrap_or_default()
        .chars()
        .take(APP_NAME_CHARS_MAX)
        .collect();
    if name.is_empty() {
        "app".to_owned()
    } else {
        name
    }
}

/// Which of the application's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

/// Forwards one output stream to the log from a thread of its own, until its end.
/// The receiver completes (with an error: the sender is dropped) when the thread is done.
fn forward(
    stream: Stream,
    pipe: PipeReader,
    name: Arc<str>,
    pid: u32,
) -> Option<oneshot::Receiver<()>> {
    let (done, finished) = oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("app-{stream}"))
        .spawn(move || {
            let _done = done;
            forward_lines(stream, pipe, &name, pid);
        });
    match spawned {
        Ok(_) => Some(finished),
        Err(e) => {
            // The pipe is closed with the failed thread: the application's writes to it fail.
            error!(app.pid = pid, app.stream = %stream, error = %e, "cannot start the thread that forwards the application's output");
            None
        }
    }
}

fn forward_lines(stream: Stream, pipe: PipeReader, name: &str, pid: u32) {
    let mut reader = BufReader::with_capacity(LINE_BYTES_MAX, pipe);
    let mut line = Vec::with_capacity(LINE_BYTES_MAX);
    loop {
        match read_line_bounded(&mut reader, &mut line, LINE_BYTES_MAX) {
            Ok(Some(cut)) => {
                let text = printable(&line);
                match (stream, cut) {
                    (Stream::Stdout, false) => {
                        info!(target: OUTPUT_TARGET, { app.stream = %stream, app.name = %name, app.pid = pid }, "{text}")
                    }
                    (Stream::Stdout, true) => {
                        info!(target: OUTPUT_TARGET, { app.stream = %stream, app.name = %name, app.pid = pid, app.cut = true }, "{text}")
                    }
                    (Stream::Stderr, false) => {
                        warn!(target: OUTPUT_TARGET, { app.stream = %stream, app.name = %name, app.pid = pid }, "{text}")
                    }
                    (Stream::Stderr, true) => {
                        warn!(target: OUTPUT_TARGET, { app.stream = %stream, app.name = %name, app.pid = pid, app.cut = true }, "{text}")
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                warn!(app.pid = pid, app.stream = %stream, error = %e, "cannot read the application's output");
                return;
            }
        }
    }
}

/// Reads one line into `line` (without its newline), keeping at most `max` bytes of it and
/// skipping the rest. `None` at the end of the input; else whether the line was cut. A last
/// line without a newline counts as a line.
fn read_line_bounded(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut cut = false;
    let mut read_any = false;
    loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buffer.is_empty() {
            return Ok(read_any.then_some(cut));
        }
        read_any = true;
        let newline = buffer.iter().position(|&b| b == b'\n');
        let end = newline.unwrap_or(buffer.len());
        let room = max - line.len();
        if end > room {
            cut = true;
        }
        line.extend_from_slice(&buffer[..end.min(room)]);
        match newline {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(Some(cut));
            }
            None => reader.consume(end),
        }
    }
}

/// The line as text for the log: invalid UTF-8 replaced, a trailing `\r` dropped, control
/// characters (but tabs) escaped, so that the application cannot forge log lines or send
/// escape sequences to the operator's terminal.
fn printable(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Prepares a child that `command` will start to live no longer than this process: it gets
/// `PR_SET_PDEATHSIG` (SIGKILL), kills itself if this process died before that took effect,
/// and inherits none of this process's `UNDERSTUDY_*` variables (it takes its settings from
/// what the caller gives it alone). Also used by `understudy demo`.
pub(crate) fn tie_to_this_process(command: &mut tokio::process::Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("UNDERSTUDY_") {
            command.env_remove(name);
        }
    }
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
    // (prctl, getppid, and perhaps kill of itself) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // Die with this process, however it ends.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // This process may have died before the line above took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines come out whole up to the limit, cut beyond it with the rest skipped, and a last
    /// line without a newline still counts.
    #[test]
    fn lines_are_cut_at_the_limit_and_the_rest_skipped() {
        let input = b"short\n0123456789abcdef\n\nlast";
        // A tiny buffer, so lines span several fills.
        let mut reader = BufReader::with_capacity(3, &input[..]);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while let Some(cut) = read_line_bounded(&mut reader, &mut line, 8).unwrap() {
            lines.push((String::from_utf8(line.clone()).unwrap(), cut));
        }
        assert_eq!(
            lines,
            [
                ("short".to_owned(), false),
                ("01234567".to_owned(), true),
                (String::new(), false),
                ("last".to_owned(), false),
            ]
        );
    }

    /// A line of exactly the limit is not cut.
    #[test]
    fn line_of_exactly_the_limit_is_whole() {
        let mut reader = BufReader::new(&b"12345678\n"[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 8).unwrap(),
            Some(false)
        );
        assert_eq!(line, b"12345678");
        assert_eq!(read_line_bounded(&mut reader, &mut line, 8).unwrap(), None);
    }

    /// Control characters cannot reach the log raw: no forged lines, no terminal escapes.
    #[test]
    fn output_is_made_printable() {
        assert_eq!(printable(b"plain\ttext\r"), "plain\ttext");
        assert_eq!(printable(b"a\x1b[31mb\rc"), "a\\u{1b}[31mb\\rc");
        assert_eq!(printable(b"bad \xff utf8"), "bad \u{fffd} utf8");
    }

    /// The pause doubles from the minimum to the maximum, and a long run resets it.
    #[test]
    fn restart_pause_doubles_and_resets_after_a_long_run() {
        let mut backoff = BACKOFF_MIN;
        let short = Duration::from_millis(5);
        let waits: Vec<Duration> = (0..10).map(|_| restart_wait(&mut backoff, short)).collect();
        assert_eq!(waits[0], BACKOFF_MIN);
        assert_eq!(waits[1], BACKOFF_MIN * 2);
        assert_eq!(waits[2], BACKOFF_MIN * 4);
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(restart_wait(&mut backoff, BACKOFF_RESET_AFTER), BACKOFF_MIN);
        assert_eq!(restart_wait(&mut backoff, short), BACKOFF_MIN * 2);
    }

    #[test]
    fn app_name_is_the_program_past_exec_and_assignments() {
        assert_eq!(app_name("exec ./target/release/kv --listen x"), "kv");
        assert_eq!(
            app_name("PORT=1 RUST_LOG=info /usr/bin/redis-server"),
            "redis-server"
        );
        assert_eq!(app_name("'./bin/run.sh' --fast"), "run.sh");
        assert_eq!(app_name("   "), "app");
    }

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        let stat = "4242 (we(ir) d) S 1 4240 4240 0 -1 4194560 ...";
        assert_eq!(proc_stat_state_and_group(stat), Some(('S', 4240)));
        assert_eq!(
            proc_stat_state_and_group("4242 (x) Z 1 17 17"),
            Some(('Z', 17))
        );
        assert_eq!(proc_stat_state_and_group("garbage"), None);
    }

    fn launch(command: &str, stop_timeout: Duration) -> Launch {
        let (_status_tx, node_status) =
            watch::channel(Arc::new(NodeStatus::for_tests(crate::core::Role::Backup)));
        Launch {
            command: command.to_owned(),
            name: app_name(command).into(),
            env: Vec::new(),
            node_status,
            stop_timeout,
            health: None,
            hung_kill_after: HUNG_KILL_AFTER_MIN,
        }
    }

    /// The pid the test's command wrote to `path` (waited for up to 5 s).
    async fn pid_written(path: &std::path::Path, what: &str) -> libc::pid_t {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "{what}: never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether `pid` runs (exists and is not a zombie).
    fn is_running(pid: libc::pid_t) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| proc_stat_state_and_group(&stat))
            .is_some_and(|(state, _)| state != 'Z' && state != 'X')
    }

    /// With a gate, the application runs only while it is open; closing it kills the whole
    /// group (a forked child included) and says so through `running` only once it is gone.
    #[tokio::test]
    async fn a_gated_application_runs_only_while_the_gate_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let forked = dir.path().join("forked.pid");
        let command = format!("sleep 30 & echo $! > {}; wait", forked.display());
        let (allowed_tx, allowed) = watch::channel(false);
        let (running_tx, mut running) = watch::channel(false);
        let (status_tx, status) = watch::channel(AppStatus::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(supervise(
            launch(&command, Duration::from_secs(5)),
            status_tx,
            Arc::new(Metrics::default()),
            shutdown.clone(),
            Some(Gate {
                allowed,
                running: running_tx,
            }),
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!*running.borrow() && status.borrow().pid.is_none());
        assert!(!forked.exists(), "started with the gate closed");

        for round in 0..2 {
            allowed_tx.send_replace(true);
            let forked_pid = pid_written(&forked, &format!("round {round}")).await;
            assert!(*running.borrow());
            allowed_tx.send_replace(false);
            let began = Instant::now();
            running.wait_for(|running| !*running).await.unwrap();
            assert!(
                began.elapsed() < Duration::from_secs(2),
                "killed, not stopped with the stop timeout"
            );
            assert!(
                !is_running(forked_pid),
                "round {round}: the forked child survived"
            );
            assert!(status.borrow().pid.is_none());
            std::fs::remove_file(&forked).unwrap();
        }
        assert_eq!(status.borrow().restarts, 0, "a gated stop is not a restart");
        shutdown.cancel();
        task.await.unwrap();
    }

    /// An application whose whole process group ignores SIGTERM is killed once the stop
    /// timeout is over, the process `sh` forked included, and the stop does not wait longer.
    #[tokio::test]
    async fn stop_kills_the_whole_group_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let forked = dir.path().join("forked.pid");
        let command = format!(
            "trap '' TERM; sleep 30 & echo $! > {}; wait",
            forked.display()
        );
        let launch = launch(&command, Duration::from_millis(300));
        let mut running = launch.spawn().unwrap();
        let forked_pid = pid_written(&forked, "the command").await;
        assert!(is_running(forked_pid));
        let began = Instant::now();
        let exit = launch.stop(&mut running).await;
        let took = began.elapsed();
        assert!(exit.contains("SIGKILL"), "{exit}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let gone_by = Instant::now() + Duration::from_secs(2);
        while is_running(forked_pid) {
            assert!(
                Instant::now() < gone_by,
                "the forked sleep survived the stop"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
