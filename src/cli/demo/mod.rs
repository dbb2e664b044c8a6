//! `understudy demo`: a three-node cluster on loopback, a failure of the primary under
//! writes and the part's return, in one command.
//!
//! It starts three sidecars (`understudy run`, child processes of this executable) and
//! three replicated key-value servers (the one in `examples/kv/`, compiled into this binary
//! and run as the hidden `understudy demo-kv` subcommand), all in a temporary directory.
//! A writer SETs one new key after another through a backup's client port and records each
//! acknowledged write. The demo shows the cluster table live and plays one act or both
//! (`--act`, `act.rs`):
//!
//! - `failover` (the default): kills the primary's sidecar and app with SIGKILL, reports
//!   the new primary and how long writes paused as the writer saw it, restarts the killed
//!   node and shows it rejoin as a backup and catch up;
//! - `app-kill`: kills the primary's app alone with SIGKILL, shows the primary report it
//!   gone and hand over after `--app-timeout` to a backup whose app is live, reports the
//!   pause, restarts the app and shows it live again on a backup that caught up;
//! - `all`: `failover`, then `app-kill`, on the same cluster.
//!
//! At the end it reads every acknowledged key back through a client port and prints the
//! count (exit status 1 if any is missing).
//!
//! `--app redis` plays the same on the system's unmodified `redis-server` (7 or newer; the
//! demo stops at once, with a line saying how to install it, if none is on the PATH). Each
//! sidecar runs in follow mode with Redis under `--app-cmd`, on its append-only directory
//! (`--follow-dir`): only the primary runs Redis, the backups keep their copies of the
//! directory up to date from the log, and the client port holds each of Redis's replies
//! until the changes Redis made before it are committed. There are no separate app
//! processes. `failover` kills the primary's sidecar and its Redis (its PID from `/status`
//! `app.pid`) and reports, beside the pause, how long the new primary took from its
//! epoch's first commit to serving Redis (`follow.last_start_ms`); `app-kill` kills the
//! primary's Redis alone, which its sidecar's supervisor usually starts again in place
//! (no failover) and otherwise hands over after `--app-timeout`: the demo says which. The
//! table's APP column becomes REDIS: the followed directory's state (serving with Redis's
//! PID, or standby with the LSN applied to the directory).
//!
//! Every child is killed and reaped on the way out, also after Ctrl-C, SIGTERM or SIGHUP
//! (and, through `PR_SET_PDEATHSIG`, if the demo itself is killed). On success the node
//! data directories are removed and the logs kept; on failure everything is kept.
//! `--keep` leaves the cluster running after the check, prints the ports for `redis-cli`,
//! and stops it at Ctrl-C. `--trials N` repeats the acts N times and prints, for each, the
//! failover time's minimum, median and maximum (`benches/README.md`).

mod act;
mod cluster;
mod screen;
mod writer;

#[allow(dead_code)] // parts only the example's `main` and its tests use
#[path = "../../../examples/kv/server/mod.rs"]
mod kv;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use tokio::task::JoinHandle;

use super::run::duration;
use act::Act;
use cluster::{settled, Admins, App, Cluster, Ports, View, NODES};
use screen::Screen;
use writer::{Target, Writer};

/// Which application the demo's cluster replicates (`--app`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoApp {
    /// The replicated key-value server of examples/kv (built in), one beside each sidecar,
    /// on the app API.
    Kv,
    /// The system's unmodified redis-server (7 or newer) in follow mode: each sidecar runs
    /// it under --app-cmd while it is primary, and replicates its append-only directory.
    Redis,
}

/// Which failure of the primary `understudy demo` shows (`--act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Acts {
    /// The primary's machine dies: kill -9 of its sidecar and its application (key-value
    /// server or Redis); a backup takes over after the failover timeout.
    Failover,
    /// The primary's application dies and its sidecar keeps running: kill -9 of its
    /// key-value server alone, and the primary hands over after --app-timeout to a backup
    /// whose application is live; with --app redis, kill -9 of its Redis alone, which its
    /// sidecar starts again in place (or, if Redis is not back within --app-timeout, hands
    /// over).
    AppKill,
    /// Both, one after the other, on the same cluster.
    All,
}

impl Acts {
    /// The acts to run, in order.
    fn acts(self) -> &'static [Act] {
        match self {
            Acts::Failover => &[Act::Failover],
            Acts::AppKill => &[Act::AppKill],
            Acts::All => &[Act::Failover, Act::AppKill],
        }
    }
}

/// Flags of `understudy demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The application: the built-in key-value server, or the system's redis-server in
    /// follow mode.
    #[arg(long, value_enum, default_value = "kv")]
    pub app: DemoApp,
    /// Which failure of the primary to show.
    #[arg(long, value_enum, default_value = "failover")]
    pub act: Acts,
    /// How long to write in each phase: before the kill, between the failover and the
    /// restart, and after the rejoin.
    #[arg(long, default_value = "3s", value_parser = duration)]
    pub phase: Duration,
    /// Run the act (with --act all, both) this many times; with more than one, the
    /// failover times' minimum, median and maximum are printed at the end.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub trials: u32,
    /// Leave the cluster running after the check, print its ports for redis-cli, and stop
    /// it at Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// First of the ports: node N's client port is BASE+N, its peer port BASE+10+N, its
    /// admin port BASE+20+N and its key-value server (or Redis) BASE+30+N (default: 7000,
    /// or the first of 7100, 7200, ... whose ports are all free).
    #[arg(long, value_name = "BASE")]
    pub base_port: Option<u16>,
    /// Where to put the nodes' data and logs (default: a new directory under $TMPDIR).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The sidecars' --heartbeat-interval.
    #[arg(long, default_value = "50ms", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// The sidecars' --failover-timeout.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pub failover_timeout: Duration,
    /// The sidecars' --app-timeout: how long a primary's application may be gone before
    /// it hands over (default: the failover timeout).
    #[arg(long, value_parser = duration)]
    pub app_timeout: Option<Duration>,
    /// Print progress lines only, no table redrawn in place (the default when stdout is
    /// not a terminal).
    #[arg(long)]
    pub plain: bool,
}

impl DemoArgs {
    fn app_timeout(&self) -> Duration {
        self.app_timeout.unwrap_or(self.failover_timeout)
    }
}

/// Flags of the hidden `understudy demo-kv`: the key-value example's server, run by the
/// demo beside each sidecar.
#[derive(Debug, Args)]
pub struct KvArgs {
    /// The sidecar's --app-socket.
    #[arg(long)]
    pub app_socket: PathBuf,
    /// Where to serve RESP clients (the sidecar's --app-addr).
    #[arg(long)]
    pub listen: SocketAddr,
}

/// `understudy demo-kv`: the key-value server until SIGTERM/SIGINT or until its sidecar
/// goes away.
pub fn run_kv(args: KvArgs) -> anyhow::Result<()> {
    // One thread, as the example's own `main` (which says why).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime
        .block_on(kv::run(
            &args.app_socket,
            args.listen,
            kv::Config::default(),
            async {
                let _ = signal_name().await;
            },
        ))
        .map_err(|error| anyhow!(error_chain(&*error)))
}

/// An error and its sources on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Resolves with the signal's name when SIGINT, SIGTERM or SIGHUP arrives.
async fn signal_name() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install the signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// `understudy demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::config::check_timing(args.heartbeat_interval, args.failover_timeout)?;
    if args.app_timeout().is_zero() {
        bail!("--app-timeout 0: must be more than zero");
    }
    let app = match args.app {
        DemoApp::Kv => (App::Kv, None),
        DemoApp::Redis => {
            let (binary, version) = find_redis()?;
            (App::Redis(binary), Some(version))
        }
    };
    // One thread: every child is spawned from it, and PR_SET_PDEATHSIG follows the thread
    // that spawned, so it must live as long as the demo.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(demo(args, app))
}

/// What to say when `--app redis` finds no usable `redis-server`.
const INSTALL_REDIS: &str = "install it (Debian/Ubuntu: sudo apt-get install redis-server; \
     Fedora: sudo dnf install redis; Arch: sudo pacman -S redis) or run the demo without \
     --app redis";

/// The `redis-server` on the PATH and its version; an error of one line saying how to
/// install it if there is none, or if it is older than 7 (whose append-only file is not
/// yet a directory, which follow mode needs).
fn find_redis() -> anyhow::Result<(PathBuf, String)> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let binary = std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    let Some(binary) = binary else {
        bail!(
            "--app redis needs redis-server (Redis 7 or newer) on the PATH, and there is none: \
             {INSTALL_REDIS}"
        );
    };
    let output = std::process::Command::new(&binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("run {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=..."
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .map(str::to_string);
    let major = version
        .as_deref()
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse::<u32>().ok());
    match (version, major) {
        (Some(version), Some(major)) if major >= 7 => Ok((binary, version)),
        (Some(version), _) => bail!(
            "--app redis needs Redis 7 or newer (its append-only directory is what the \
             sidecars follow), and {} is Redis {version}: {INSTALL_REDIS}",
            binary.display()
        ),
        (None, _) => bail!(
            "--app redis: {} --version answered {:?}, not a Redis version",
            binary.display(),
            text.trim()
        ),
    }
}

/// A new directory under the system's temporary directory.
fn temp_dir() -> anyhow::Result<PathBuf> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("random name: {e}"))?;
    let tag: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("understudy-demo-{tag}"));
    std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

async fn demo(args: DemoArgs, (app, redis_version): (App, Option<String>)) -> anyhow::Result<()> {
    let ports = Ports::pick(args.base_port)?;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            dir.clone()
        }
        None => temp_dir()?,
    };
    let what = match &app {
        App::Kv => "three sidecars and three key-value servers".to_string(),
        App::Redis(binary) => format!(
            "three sidecars in follow mode, the primary's running Redis {} ({}) on its \
             append-only directory,",
            redis_version.as_deref().unwrap_or("?"),
            binary.display()
        ),
    };
    let mut cluster = Cluster::new(
        dir,
        ports,
        app,
        args.heartbeat_interval,
        args.failover_timeout,
        args.app_timeout(),
    )?;
    let screen = Screen::new(args.plain);
    screen.say(format!(
        "understudy demo: {what} on 127.0.0.1, heartbeat {}, failover timeout {}, app \
         timeout {}\nfiles in {}, logs in {}",
        humantime::format_duration(args.heartbeat_interval),
        humantime::format_duration(args.failover_timeout),
        humantime::format_duration(args.app_timeout()),
        cluster.dir.display(),
        cluster.logs_dir().display(),
    ));

    let mut finished = false;
    let (outcome, interrupted) = tokio::select! {
        outcome = scenario(&mut cluster, &screen, &args, &mut finished) => (outcome, false),
        signal = signal_name() => {
            screen.freeze();
            if finished {
                (Ok(()), true)
            } else {
                (Err(anyhow!("interrupted by {signal}")), true)
            }
        }
    };
    screen.freeze();

    let stopped = cluster.stop_all().await;
    let pids = cluster
        .pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    screen.say(format!(
        "stopped the cluster: {stopped} processes killed and reaped (every PID started: {pids})"
    ));
    if cluster.redis() {
        let (seen, killed) = cluster.reap_redis().await;
        let seen = seen
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        screen.say(match killed {
            0 => {
                format!("every Redis the sidecars ran is gone with them (Redis PIDs seen: {seen})")
            }
            n => format!(
                "{n} Redis processes outlived their sidecars and were killed here (Redis PIDs \
                 seen: {seen})"
            ),
        });
    }
    if outcome.is_ok() || interrupted {
        let redis = cluster.redis();
        for id in 1..=NODES {
            let redis_dir = redis.then(|| cluster.redis_dir(id));
            for data in std::iter::once(cluster.data_dir(id)).chain(redis_dir) {
                if let Err(error) = std::fs::remove_dir_all(&data) {
                    if error.kind() != std::io::ErrorKind::NotFound {
                        screen.say(format!("could not remove {}: {error}", data.display()));
                    }
                }
            }
        }
        let _ = std::fs::remove_file(cluster.dir.join("cluster-secret"));
        screen.say(format!(
            "removed the data directories; the logs are in {}",
            cluster.logs_dir().display()
        ));
    } else {
        screen.say(format!(
            "kept {} for a post-mortem; the logs are in {}",
            cluster.dir.display(),
            cluster.logs_dir().display()
        ));
    }
    outcome
}

/// Aborts a spawned task when dropped (the scenario may be dropped at a signal).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the acts work with: the cluster, the screen, the admin ports, the writer and the
/// timing asked for.
struct Stage<'a> {
    cluster: &'a mut Cluster,
    screen: &'a Screen,
    admins: Admins,
    writer: Writer,
    /// How long to wait for anything before giving up.
    patience: Duration,
    /// How long to write in each phase.
    phase: Duration,
    /// The sidecars' --app-timeout.
    app_timeout: Duration,
}

impl Stage<'_> {
    /// Waits for the writer's first write acknowledged after `at`.
    async fn wait_for_write(&mut self, what: &str, at: Instant) -> anyhow::Result<()> {
        let writer = &self.writer;
        wait_for(self.cluster, what, self.patience, || {
            let acked = writer.log().around(at).1.is_some();
            async move { acked.then_some(()) }
        })
        .await
    }

    /// Brings the live area up to date now and, without a terminal, prints it.
    async fn show(&self) {
        show_now(self.screen, &self.admins, &self.writer).await;
    }
}

/// Waits until one primary holds its lease and at least `answering` nodes answer, every
/// one following it; the primary is not to be node `not`.
async fn wait_settled(
    cluster: &mut Cluster,
    admins: &Admins,
    what: &str,
    patience: Duration,
    answering: u16,
    not: Option<u16>,
) -> anyhow::Result<(u16, u64)> {
    wait_for(cluster, what, patience, || async move {
        settled(&admins.statuses().await, usize::from(answering)).filter(|&(id, _)| Some(id) != not)
    })
    .await
}

/// The whole show; `finished` is set once the check passed (with `--keep`, the scenario
/// then waits for a signal).
async fn scenario(
    cluster: &mut Cluster,
    screen: &Screen,
    args: &DemoArgs,
    finished: &mut bool,
) -> anyhow::Result<()> {
    let admins = cluster.admins();
    let ports = cluster.ports;
    // Generous for a loaded two-core machine, and scaled with the timing asked for.
    let patience = Duration::from_secs(15) + args.failover_timeout.max(args.app_timeout()) * 10;

    for id in 1..=NODES {
        let (sidecar, app) = cluster.start_node(id)?;
        let server = match app {
            Some(pid) => format!("key-value server pid {pid} ({})", ports.app(id).port()),
            None => format!(
                "Redis on port {} while it is primary, in {}",
                ports.app(id).port(),
                cluster.redis_dir(id).display()
            ),
        };
        screen.say(format!(
            "node {id}: sidecar pid {sidecar} (client port {}, peer {}, admin {}), {server}",
            ports.client(id).port(),
            ports.peer(id).port(),
            ports.admin(id).port(),
        ));
    }
    let started = Instant::now();
    let (primary, epoch) = wait_settled(
        cluster,
        &admins,
        "the nodes to elect a primary",
        patience,
        NODES,
        None,
    )
    .await?;
    let backups: Vec<u16> = (1..=NODES).filter(|&id| id != primary).collect();
    let elected = started.elapsed();
    let redis = if cluster.redis() {
        let view = admins.status(primary).await;
        format!(
            ", its Redis (pid {}) serving {} after its epoch's first record was committed; \
             nodes {} and {} are its backups, on standby (no Redis: they keep their copies of \
             the append-only directory up to date from the log)",
            view.as_ref()
                .and_then(View::app_pid)
                .map_or("?".to_string(), |pid| pid.to_string()),
            view.as_ref()
                .and_then(|view| view.follow.as_ref()?.last_start_ms)
                .map_or("?".to_string(), |ms| format!("{ms} ms")),
            backups[0],
            backups[1]
        )
    } else {
        format!("; nodes {} and {} are its backups", backups[0], backups[1])
    };
    screen.say(format!(
        "node {primary} is primary (epoch {epoch}), elected {:.1} s after the start{redis}",
        elected.as_secs_f64(),
    ));

    let through = backups[0];
    let mut stage = Stage {
        cluster,
        screen,
        admins,
        writer: Writer::start(Target {
            node: through,
            addr: ports.client(through),
        }),
        patience,
        phase: args.phase,
        app_timeout: args.app_timeout(),
    };
    let _table = AbortOnDrop(tokio::spawn(refresh_table(
        stage.admins.clone(),
        stage.writer.shared_log(),
        screen.clone(),
        stage.writer.subscribe(),
    )));
    screen.say(format!(
        "writing: SET demo:N value-N, one at a time, through node {through}'s client port \
         {} (a backup's: it forwards to the primary's server)",
        ports.client(through)
    ));
    let since = Instant::now();
    stage
        .wait_for_write("a first acknowledged write", since)
        .await?;
    screen.say(format!(
        "the first write was acknowledged {:.0} ms later",
        ms(since.elapsed())
    ));
    stage.show().await;

    let mut outcomes: Vec<(Act, act::Outcome)> = Vec::new();
    for trial in 1..=args.trials {
        if args.trials > 1 {
            screen.say(format!("trial {trial} of {}", args.trials));
        }
        for &act in args.act.acts() {
            outcomes.push((act, act::run(&mut stage, act).await?));
        }
    }

    write_for(stage.cluster, args.phase).await?;
    stage.writer.stop().await;
    stage.show().await;
    let (seqs, failed, connections, rate_window) = {
        let log = stage.writer.log();
        let seqs: Vec<u64> = log.acks.iter().map(|(seq, _)| *seq).collect();
        let window = match (log.acks.first(), log.acks.last()) {
            (Some(first), Some(last)) => last.1.saturating_duration_since(first.1),
            _ => Duration::ZERO,
        };
        (seqs, log.failed, log.connections, window)
    };
    screen.say(format!(
        "stopped writing: {} writes acknowledged ({:.0} a second), {failed} attempts cut off \
         or refused (their outcome is unknown; they are not counted), {connections} connections",
        seqs.len(),
        seqs.len() as f64 / rate_window.as_secs_f64().max(0.001),
    ));
    // Through the node killed last: it has come back, so this also shows it serving.
    let reader = outcomes
        .last()
        .map_or(primary, |(_, outcome)| outcome.killed);
    screen.say(format!(
        "reading every acknowledged key back through node {reader}'s client port {} ...",
        ports.client(reader)
    ));
    let missing = writer::read_back(ports.client(reader), &seqs).await?;
    if !missing.is_empty() {
        let examples: Vec<String> = missing
            .iter()
            .take(5)
            .map(|&seq| writer::key_value(seq).0)
            .collect();
        bail!(
            "{} of {} acknowledged writes are missing or wrong (e.g. {})",
            missing.len(),
            seqs.len(),
            examples.join(", ")
        );
    }
    screen.say(format!(
        "all {} acknowledged writes are readable: none was lost",
        seqs.len()
    ));
    if args.trials > 1 {
        for &act in args.act.acts() {
            let pauses: Vec<act::Outcome> = outcomes
                .iter()
                .filter(|(of, _)| *of == act)
                .map(|(_, outcome)| *outcome)
                .collect();
            screen.say(act::summary(act, &pauses));
        }
    }
    *finished = true;

    if args.keep {
        let mut text =
            String::from("\nThe cluster keeps running; Ctrl-C stops it and cleans up.\n");
        let server = if stage.cluster.redis() {
            "Redis itself, on the primary alone"
        } else {
            "the server itself"
        };
        for id in 1..=NODES {
            text.push_str(&format!(
                "  node {id}: redis-cli -p {}    (client port; {server}: {}, admin: \
                 http://{}/status)\n",
                ports.client(id).port(),
                ports.app(id),
                ports.admin(id)
            ));
        }
        text.push_str(&format!(
            "  understudy status --admin {}\n  logs: {}\n",
            stage.admins.addrs.join(","),
            stage.cluster.logs_dir().display()
        ));
        screen.print(text);
        std::future::pending::<()>().await;
    }
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Lets the writer run for `phase`, failing early if a child exits on its own.
async fn write_for(cluster: &mut Cluster, phase: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + phase;
    while Instant::now() < end {
        if let Some(exited) = cluster.exited() {
            bail!(exited);
        }
        tokio::time::sleep(Duration::from_millis(50).min(end - Instant::now())).await;
    }
    Ok(())
}

/// Polls `check` every 50 ms until it gives a value; fails after `patience`, or at once
/// if a child exits on its own.
async fn wait_for<T, F: Future<Output = Option<T>>>(
    cluster: &mut Cluster,
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if let Some(exited) = cluster.exited() {
            bail!("while waiting for {what}: {exited}");
        }
        if Instant::now() > deadline {
            bail!(
                "gave up waiting for {what} after {} s (see the logs in {})",
                patience.as_secs(),
                cluster.logs_dir().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redraws the live area every 200 ms: the cluster table from the admin ports, and the
/// writer's figures.
async fn refresh_table(admins: Admins, log: SharedLog, screen: Screen, target: TargetWatch) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        screen.set_live(live_lines(&admins, &log, &target).await);
    }
}

type SharedLog = std::sync::Arc<std::sync::Mutex<writer::Log>>;
type TargetWatch = tokio::sync::watch::Receiver<Target>;

/// The live area's text as of now.
async fn live_lines(admins: &Admins, log: &SharedLog, target: &TargetWatch) -> Vec<String> {
    let views: Vec<_> = admins.statuses().await.into_iter().flatten().collect();
    let mut lines: Vec<String> = Vec::new();
    if views.is_empty() {
        lines.push("no node answers on its admin port".to_string());
    } else {
        let statuses: Vec<_> = views.iter().map(|view| view.status.clone()).collect();
        let mut table = crate::cli::status::table(&statuses);
        if views.iter().any(|view| view.follow.is_some()) {
            // The APP column tells a live application by its app-API applied LSN, which a
            // followed Redis has not: show the followed directory's state instead.
            table = screen::replace_column(&table, "APP", "EPOCH", "REDIS", |id| {
                views.iter().find(|view| view.node_id == id).map(redis_cell)
            });
        }
        lines.extend(table.lines().map(str::to_string));
    }
    let now = Instant::now();
    let log = writer::lock(log);
    let last = log.acks.last().map_or("never".to_string(), |(_, at)| {
        format!("{:.0} ms ago", ms(now.saturating_duration_since(*at)))
    });
    let target = *target.borrow();
    let state = if log.stopped {
        "stopped".to_string()
    } else {
        format!("{}/s, last {last}", log.rate(now))
    };
    lines.push(format!(
        "writer (through node {}'s client port {}): {} acknowledged, {state}; {} cut off or \
         refused",
        target.node,
        target.addr.port(),
        log.acks.len(),
        log.failed,
    ));
    lines
}

/// The REDIS cell of a node in follow mode: its directory's state, and Redis's PID where
/// it runs.
fn redis_cell(view: &View) -> String {
    let Some(follow) = &view.follow else {
        return "-".to_string();
    };
    match follow.state.as_str() {
        "serving" => {
            let live = view.app_health.as_ref().is_none_or(|app| app.live);
            match view.app_pid() {
                Some(pid) if live => format!("serving, pid {pid}"),
                Some(pid) => format!("serving, pid {pid} not answering"),
                None => "serving, Redis not running".to_string(),
            }
        }
        "standby" => format!("standby, applied {}", follow.applied_lsn),
        "starting" => "starting Redis".to_string(),
        other => match &follow.error {
            Some(error) => {
                let mut text = format!("{other}: {error}");
                if text.chars().count() > 40 {
                    text = text.chars().take(39).collect::<String>() + "…";
                }
                text
            }
            None => other.to_string(),
        },
    }
}

/// Brings the live area up to date now and, without a terminal, prints it.
async fn show_now(screen: &Screen, admins: &Admins, writer: &Writer) {
    let lines = live_lines(admins, &writer.shared_log(), &writer.subscribe()).await;
    screen.set_live(lines);
    screen.show();
}
