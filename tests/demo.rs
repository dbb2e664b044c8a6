//! `understudy demo`, run as a user would (not on a terminal, so in plain-output mode) with
//! short phases, in each of its acts (the primary's machine killed; the primary's
//! application alone killed): it succeeds, reports the write pause and a count of
//! acknowledged writes all readable, and leaves no process and no data directory behind;
//! SIGTERM in the middle stops every child too. `--app redis` plays the same on the
//! system's redis-server in follow mode (Debian's redis-server package; `.ci/run` installs
//! it), and without redis-server on the PATH stops at once with a line saying how to
//! install it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The demos of this file run one at a time: each picks its ports by probing for a free
/// block, and two probing at once could pick the same.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let at = text.find(prefix)? + prefix.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// PIDs of live processes whose command line mentions `dir` (the demo's children all do:
/// their data dir, socket or secret is in it).
fn processes_using(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// A base for `--base-port` whose 12 ports are free now. Left to itself the demo tries
/// 7000 first; starting from a block derived from this process's PID keeps two test runs
/// on one machine (two worktrees, say) from probing the same block at the same moment.
fn base_port() -> u16 {
    let blocks = 30; // 7000, 7100, ... 9900
    let first = std::process::id() % blocks;
    (0..blocks)
        .map(|i| 7000 + 100 * ((first + i) % blocks) as u16)
        .find(|base| {
            [1, 11, 21, 31]
                .iter()
                .flat_map(|offset| (0..3).map(move |n| base + offset + n))
                .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        })
        .expect("a free block of ports between 7000 and 9999")
}

fn demo_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_understudy"));
    command
        .args(["demo", "--phase", "1s", "--base-port"])
        .arg(base_port().to_string())
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null());
    command
}

/// A finished demo run: its output, and the directory it was told to use.
struct Run {
    stdout: String,
    dir: PathBuf,
    _temp: tempfile::TempDir,
}

/// Runs `understudy demo` with short phases and `args`, and asserts that it succeeded.
fn run_demo(args: &[&str]) -> Run {
    let temp = tempfile::Builder::new()
        .prefix("understudy-demo-test-")
        .tempdir()
        .unwrap();
    let dir = temp.path().join("demo");
    let started = Instant::now();
    let mut command = demo_command(&dir);
    command.args(args);
    let output = support::output_within(command, Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let logs = || {
        let mut text = String::new();
        for entry in std::fs::read_dir(dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = body.lines().rev().take(15).collect();
            text.push_str(&format!("---- {} ----\n", entry.path().display()));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    };
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}\n{}",
        output.status,
        logs()
    );
    eprintln!("{stdout}");
    eprintln!("the demo took {:.1} s", started.elapsed().as_secs_f64());
    Run {
        stdout,
        dir,
        _temp: temp,
    }
}

/// Every acknowledged write is readable, and there were some.
fn assert_nothing_lost(stdout: &str) {
    let readable = number_after(stdout, "all ").expect("a count of readable writes");
    let acknowledged = number_after(stdout, "stopped writing: ").expect("a count of writes");
    assert!(readable > 0, "{stdout}");
    assert_eq!(readable, acknowledged, "{stdout}");
    assert!(
        stdout.contains(&format!("all {readable} acknowledged writes are readable")),
        "{stdout}"
    );
}

/// No process the demo started is left (it started `started` of them), and only the logs
/// remain (with `--app redis`, no Redis either).
fn assert_cleaned_up(run: &Run, started: usize, redis: bool) {
    let (stdout, dir) = (&run.stdout, &run.dir);
    let pids_line = stdout
        .lines()
        .find(|line| line.contains("every PID started: "))
        .expect("the demo lists the PIDs it started");
    let pids: Vec<u32> = pids_line
        .split("every PID started: ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), started, "{pids_line}");
    let left = processes_using(dir);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    for pid in pids {
        // A PID may have been reused by now, but not by a process of this demo.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()),
            "pid {pid} is still running"
        );
    }
    for id in 1..=3 {
        assert!(!dir.join(format!("node{id}")).exists(), "node{id} left");
        assert!(!dir.join(format!("redis{id}")).exists(), "redis{id} left");
    }
    assert!(dir.join("logs/node1.log").exists());
    assert_eq!(dir.join("logs/kv1.log").exists(), !redis);
    assert!(stdout.contains(&dir.join("logs").display().to_string()));
    if redis {
        assert_no_redis_left(stdout);
    }
}

/// Every Redis the demo's sidecars ran (it lists their PIDs) is gone: no process with one of
/// those PIDs runs redis-server on one of the demo's Redis ports.
fn assert_no_redis_left(stdout: &str) {
    let ports: Vec<u64> = stdout
        .lines()
        .filter_map(|line| number_after(line, "Redis on port "))
        .collect();
    assert_eq!(ports.len(), 3, "{stdout}");
    let line = stdout
        .lines()
        .find(|line| line.contains("Redis PIDs seen: "))
        .expect("the demo lists the Redis PIDs it saw");
    assert!(
        line.contains("every Redis the sidecars ran is gone with them"),
        "{line}"
    );
    let pids: Vec<u32> = line
        .split("Redis PIDs seen: ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert!(!pids.is_empty(), "{line}");
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !(cmdline.contains("redis-server")
                && ports
                    .iter()
                    .any(|port| cmdline.contains(&format!(":{port}")))),
            "Redis pid {pid} is still running: {cmdline}"
        );
    }
}

/// `--app redis` needs the system's redis-server, as `tests/follow_redis.rs` does.
fn assert_redis_installed() {
    assert!(
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "redis-server is not on the PATH: install Debian's redis-server package (.ci/run does)"
    );
}

#[test]
fn demo_fails_over_rejoins_loses_nothing_and_cleans_up() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_demo(&[]);
    let stdout = &run.stdout;

    // It killed the primary and says how long writes paused.
    assert!(stdout.contains("kill -9 node"), "{stdout}");
    let pause = number_after(stdout, "writes paused ").expect("a write pause is reported");
    assert!(pause > 0 && pause < 30_000, "pause {pause} ms\n{stdout}");
    assert!(stdout.contains("is the new primary"), "{stdout}");
    assert!(stdout.contains("rejoined as a backup"), "{stdout}");
    assert!(!stdout.contains("act: app-kill"), "{stdout}");

    assert_nothing_lost(stdout);
    // Three sidecars and three servers, and the killed node's two again.
    assert_cleaned_up(&run, 8, false);
}

/// `--act app-kill`: only the primary's key-value server is killed; its sidecar reports the
/// application gone and hands over within the app timeout (plus a second for the election
/// and the client's reconnection), the restarted server comes back as a live backup's, and
/// nothing acknowledged is lost.
#[test]
fn demo_app_kill_hands_over_to_a_live_application_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let app_timeout_ms = 500;
    let run = run_demo(&["--act", "app-kill", "--app-timeout", "500ms"]);
    let stdout = &run.stdout;

    assert!(stdout.contains("app timeout 500ms"), "{stdout}");
    // The primary's server alone was killed.
    assert!(
        stdout.contains("'s key-value server (pid ") && stdout.contains("keeps running"),
        "{stdout}"
    );
    assert!(
        stdout.contains("reports its application gone") && stdout.contains("its /primary answers "),
        "{stdout}"
    );
    assert!(
        stdout.contains("handed over to node") && stdout.contains("whose application is live"),
        "{stdout}"
    );
    let pause = number_after(stdout, "writes paused ").expect("a write pause is reported");
    assert!(
        pause > 0 && pause < app_timeout_ms + 1_000,
        "pause {pause} ms, the app timeout {app_timeout_ms} ms\n{stdout}"
    );
    assert!(stdout.contains("application is live again"), "{stdout}");
    // The failover act did not run.
    assert!(!stdout.contains("rejoined as a backup"), "{stdout}");

    assert_nothing_lost(stdout);
    // Three sidecars and three servers, and the killed server again.
    assert_cleaned_up(&run, 7, false);
}

/// `--app redis`: the sidecars run in follow mode, Redis on the primary alone; kill -9 of the
/// primary's sidecar and Redis, a backup brings its copy of the append-only directory to
/// the commit and serves Redis on it, the old node rejoins as a backup on standby, and no
/// acknowledged write is lost.
#[test]
fn demo_with_redis_fails_over_in_follow_mode_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_redis_installed();
    let run = run_demo(&["--app", "redis"]);
    let stdout = &run.stdout;

    assert!(stdout.contains("three sidecars in follow mode"), "{stdout}");
    assert!(
        stdout.contains("kill -9 node") && stdout.contains(": its Redis (pid "),
        "{stdout}"
    );
    let pause = number_after(stdout, "writes paused ").expect("a write pause is reported");
    assert!(pause > 0 && pause < 30_000, "pause {pause} ms\n{stdout}");
    assert!(stdout.contains("is the new primary"), "{stdout}");
    // The new primary's time from its epoch's first commit to Redis serving.
    let start = number_after(stdout, "was serving ").expect("Redis's start time is reported");
    assert!(start < 30_000, "Redis started in {start} ms\n{stdout}");
    assert!(stdout.contains("rejoined as a backup"), "{stdout}");
    assert!(
        stdout.contains("its copy of Redis's append-only directory is materialized to LSN"),
        "{stdout}"
    );
    // The table shows the followed directory's state in place of the app API's.
    assert!(
        stdout.contains("REDIS")
            && stdout.contains("serving, pid ")
            && stdout.contains("standby, applied "),
        "{stdout}"
    );
    assert!(!stdout.contains("act: app-kill"), "{stdout}");

    assert_nothing_lost(stdout);
    // Three sidecars, and the killed node's again; no key-value servers.
    assert_cleaned_up(&run, 4, true);
}

/// `--app redis --act app-kill`: only the primary's Redis is killed; its sidecar starts it
/// again in place (or, if it is not back within the app timeout, hands over), the demo says
/// which and how long writes paused, and nothing acknowledged is lost.
#[test]
fn demo_with_redis_app_kill_restarts_redis_or_hands_over_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_redis_installed();
    let run = run_demo(&["--app", "redis", "--act", "app-kill"]);
    let stdout = &run.stdout;

    assert!(
        stdout.contains("'s Redis (pid ") && stdout.contains("keeps running"),
        "{stdout}"
    );
    assert!(
        stdout.contains("restarted in place: ") || stdout.contains("handed over: "),
        "{stdout}"
    );
    let pause = number_after(stdout, "writes paused ").expect("a write pause is reported");
    assert!(pause > 0 && pause < 30_000, "pause {pause} ms\n{stdout}");
    assert!(!stdout.contains("rejoined as a backup"), "{stdout}");

    assert_nothing_lost(stdout);
    // Three sidecars; Redis is restarted by a sidecar, not by the demo.
    assert_cleaned_up(&run, 3, true);
}

/// `--app redis` without redis-server on the PATH: one line saying how to install it, and
/// nothing started or created.
#[test]
fn demo_with_redis_but_no_redis_server_says_how_to_install_it() {
    let temp = tempfile::Builder::new()
        .prefix("understudy-demo-test-")
        .tempdir()
        .unwrap();
    let empty = temp.path().join("bin");
    std::fs::create_dir(&empty).unwrap();
    let dir = temp.path().join("demo");
    let mut command = Command::new(env!("CARGO_BIN_EXE_understudy"));
    command
        .args(["demo", "--app", "redis", "--dir"])
        .arg(&dir)
        .env("PATH", &empty)
        .stdin(Stdio::null());
    let output = support::output_within(command, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("redis-server") && stderr.contains("apt-get install redis-server"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!dir.exists(), "the demo created {}", dir.display());
}

/// SIGTERM while the demo writes: it stops and reaps every child and exits non-zero.
#[test]
fn sigterm_stops_every_child() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let temp = tempfile::Builder::new()
        .prefix("understudy-demo-test-")
        .tempdir()
        .unwrap();
    let dir = temp.path().join("demo");
    let mut child = demo_command(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // Until it is writing (so every child is up), then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(timeout) {
            Ok(line) => {
                let writing = line.contains("the first write was acknowledged");
                seen.push(line);
                if writing {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the demo did not start writing:\n{}", seen.join("\n"));
            }
        }
    }
    let children = processes_using(&dir)
        .into_iter()
        .filter(|(pid, _)| *pid != child.id())
        .count();
    assert_eq!(children, 6, "{}", seen.join("\n"));
    // SAFETY: kill(2) of a child we spawned and have not reaped.
    unsafe {
        kill(child.id() as i32, 15);
    }
    let exited = support::wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    seen.extend(lines_rx.try_iter());
    let text = seen.join("\n");
    assert!(exited, "the demo did not stop at SIGTERM:\n{text}");
    assert!(!status.success(), "{text}");
    assert!(text.contains("stopped the cluster: 6 processes"), "{text}");
    let left = processes_using(&dir);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!dir.join("node1").exists(), "{text}");
}

extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}
