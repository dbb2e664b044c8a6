//! `--app-cmd`: the sidecar runs the application itself, with its environment, forwards its
//! output to the log, starts it again when it dies, and ends it when the sidecar ends,
//! whether by SIGTERM or by SIGKILL.
//!
//! The application is a shell script run as `sh SCRIPT` (so `sh -c` forks a second `sh`,
//! which forks `sleep`: the process group holds three processes, and the one `/status`
//! names is only the first). A process counts as gone once it is a zombie: whoever adopted
//! it may never reap it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{wait_until, Cluster};

/// Long enough for a loaded 2-core machine; the tests take about a second each.
const WAIT: Duration = Duration::from_secs(10);

/// The script every test runs: its environment to `env.txt` (written whole, then renamed),
/// a line on each output stream, then a long sleep; on SIGTERM, a last line.
const SCRIPT: &str = r#"trap 'echo "stopping on SIGTERM"; exit 0' TERM
env > "$1.tmp" && mv "$1.tmp" "$1"
echo "hello from the application"
echo "a warning from the application" >&2
sleep 60
"#;

struct Setup {
    cluster: Cluster,
    env_file: PathBuf,
    app_addr: String,
}

/// A one-node cluster whose sidecar runs [`SCRIPT`], started.
fn start() -> Setup {
    let mut cluster = Cluster::new(1);
    let script = cluster.dir.path().join("app.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let env_file = cluster.dir.path().join("env.txt");
    let app_addr = format!("127.0.0.1:{}", support::free_port());
    cluster.node_mut(1).extra = vec![
        "--app-cmd".into(),
        format!("sh {} {}", script.display(), env_file.display()),
        "--app-addr".into(),
        app_addr.clone(),
        "--app-stop-timeout".into(),
        "2s".into(),
    ];
    cluster.start_node(1);
    Setup {
        cluster,
        env_file,
        app_addr,
    }
}

/// The `app` object of the node's `/status`, if it answers.
fn app_status(cluster: &Cluster) -> Option<serde_json::Value> {
    let (code, body) = support::http_get(cluster.node(1).admin_addr, "/status")?;
    if code != 200 {
        return None;
    }
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    status.get("app").cloned()
}

/// The application's pid once `/status` shows it running with `restarts` restarts.
fn running_app(cluster: &Cluster, restarts: u64) -> u32 {
    let mut pid = None;
    let shown = wait_until(WAIT, || {
        pid = app_status(cluster)
            .filter(|app| app["restarts"] == restarts && app["running_since_ms"].is_u64())
            .and_then(|app| app["pid"].as_u64())
            .and_then(|pid| u32::try_from(pid).ok());
        pid.is_some()
    });
    assert!(
        shown,
        "no running application with {restarts} restarts in /status: {:?}",
        app_status(cluster)
    );
    pid.unwrap()
}

/// `(state, parent, process group)` of a process, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, parent, group))
}

/// Whether the process runs: it exists and is not a zombie.
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _, _)| state != 'Z' && state != 'X')
}

/// The running processes of process group `group`.
fn group(group: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, _, g)| g == group) && alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// The application's group once all three of its processes run (`sh -c`, the script's
/// `sh`, `sleep`), checked to be the sidecar's child and group leader before anyone signals it.
fn app_group(setup: &Setup, app: u32) -> Vec<u32> {
    let sidecar = setup.cluster.node(1).pid().unwrap();
    assert_eq!(
        proc_stat(app).map(|(_, parent, g)| (parent, g)),
        Some((sidecar, app))
    );
    let mut members = Vec::new();
    assert!(
        wait_until(WAIT, || {
            members = group(app);
            let sleeping = members.iter().any(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "sleep")
            });
            members.len() == 3 && sleeping
        }),
        "the application's group is {members:?}"
    );
    members
}

fn log(cluster: &Cluster) -> String {
    std::fs::read_to_string(&cluster.node(1).log).unwrap_or_default()
}

fn read_env(path: &Path) -> Vec<(String, String)> {
    let mut env = Vec::new();
    assert!(
        wait_until(WAIT, || path.exists()),
        "the application never wrote its environment"
    );
    for line in std::fs::read_to_string(path).unwrap().lines() {
        if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("UNDERSTUDY_") {
                env.push((name.to_owned(), value.to_owned()));
            }
        }
    }
    env.sort();
    env
}

/// The application is started with the node's socket, id, role, data dir and addresses in
/// its environment, and nothing else of the sidecar's own `UNDERSTUDY_*` configuration.
#[test]
fn app_gets_the_node_in_its_environment() {
    let setup = start();
    running_app(&setup.cluster, 0);
    let node = setup.cluster.node(1);
    let expected = [
        ("UNDERSTUDY_ADMIN", node.admin_addr.to_string()),
        ("UNDERSTUDY_APP_ADDR", setup.app_addr.clone()),
        (
            "UNDERSTUDY_APP_SOCKET",
            node.app_socket.display().to_string(),
        ),
        ("UNDERSTUDY_DATA_DIR", node.data_dir.display().to_string()),
        ("UNDERSTUDY_NODE_ID", "1".to_owned()),
        ("UNDERSTUDY_ROLE", "backup".to_owned()),
    ]
    .map(|(name, value)| (name.to_owned(), value));
    assert_eq!(read_env(&setup.env_file), expected);
}

/// A line on the application's stdout is in the sidecar's log at info with
/// `app.stream=stdout`, a line on its stderr at warn with `app.stream=stderr`.
#[test]
fn app_output_is_in_the_sidecar_log_with_its_stream() {
    let setup = start();
    let pid = running_app(&setup.cluster, 0);
    let logged = wait_until(WAIT, || {
        let log = log(&setup.cluster);
        log.lines().any(|line| {
            line.contains(" INFO ")
                && line.contains("hello from the application")
                && line.contains("app.stream=stdout")
                && line.contains(&format!("app.pid={pid}"))
        }) && log.lines().any(|line| {
            line.contains(" WARN ")
                && line.contains("a warning from the application")
                && line.contains("app.stream=stderr")
        })
    });
    assert!(
        logged,
        "the application's output is not in the log:\n{}",
        log(&setup.cluster)
    );
}

/// `kill -9` of the application: the exit is logged, the rest of its group is stopped, it
/// is started again (a new pid), and `/status` and `/metrics` count one restart.
#[test]
fn app_killed_is_started_again_and_counted() {
    let setup = start();
    let first = running_app(&setup.cluster, 0);
    let first_group = app_group(&setup, first);
    // SAFETY: kill(2) of the application's first process, our sidecar's child (checked).
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    let second = running_app(&setup.cluster, 1);
    assert_ne!(second, first);
    assert!(
        wait_until(WAIT, || setup
            .cluster
            .metric(1, "understudy_app_restarts_total")
            == Some(1.0)),
        "understudy_app_restarts_total is {:?}",
        setup.cluster.metric(1, "understudy_app_restarts_total")
    );
    let app = app_status(&setup.cluster).unwrap();
    assert_eq!(app["last_exit"], "signal: 9 (SIGKILL)", "{app}");
    let log = log(&setup.cluster);
    assert!(
        log.lines().any(|line| line.contains("application exited")
            && line.contains("SIGKILL")
            && line.contains("restarts=0")),
        "{log}"
    );
    // The first run's script and sleep do not run on beside the second run.
    assert!(
        wait_until(WAIT, || first_group.iter().all(|&pid| !alive(pid))),
        "left of the first run: {:?}",
        group(first)
    );
    assert_eq!(app_group(&setup, second).len(), 3);
}

/// SIGTERM of the sidecar stops the whole application (all three processes) with SIGTERM
/// before the sidecar exits 0; what the application says while it stops is logged.
#[test]
fn sidecar_sigterm_stops_the_app() {
    let mut setup = start();
    let app = running_app(&setup.cluster, 0);
    let members = app_group(&setup, app);
    assert_eq!(setup.cluster.terminate(1, WAIT), Some(0));
    let left: Vec<u32> = members.iter().copied().filter(|&pid| alive(pid)).collect();
    assert!(
        left.is_empty(),
        "still running after the sidecar exited: {left:?}"
    );
    let log = log(&setup.cluster);
    assert!(
        log.lines()
            .any(|line| line.contains("application stopped") && line.contains("SIGTERM")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|line| line.contains("stopping on SIGTERM") && line.contains("app.stream=stdout")),
        "{log}"
    );
    // It stopped within the timeout: nothing needed SIGKILL.
    assert!(!log.contains("SIGKILL"), "{log}");
}

/// `kill -9` of the sidecar ends the application too: `sh` by `PR_SET_PDEATHSIG`, the
/// processes it forked by the guard.
#[test]
fn sidecar_sigkill_ends_the_app() {
    let mut setup = start();
    let app = running_app(&setup.cluster, 0);
    let members = app_group(&setup, app);
    setup.cluster.kill(1);
    assert!(
        wait_until(WAIT, || members.iter().all(|&pid| !alive(pid))),
        "still running after the sidecar was killed: {:?}",
        group(app)
    );
}
