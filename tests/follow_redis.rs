//! Follow mode with the system's unmodified `redis-server` (Debian's `redis-server`
//! package; `.ci/run` installs it): three nodes, each running Redis under `--app-cmd` with
//! `appendonly yes`, its append-only directory as `--follow-dir`. A writer sends `SET`s
//! through a backup's client port and records every one Redis acknowledged (`+OK` reached
//! the client); after each fault every acknowledged key is read back, through a client
//! port, from whichever Redis is primary then.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{free_port, http_get, wait_until, Cluster};

/// A 3-node cluster, each node following its own Redis's append-only directory. `wrap`
/// may put something before Redis's command (a test's way to make restarts fail).
fn redis_cluster(extra_app_flags: &str) -> Cluster {
    assert!(
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "redis-server is not on the PATH: install Debian's redis-server package (.ci/run does)"
    );
    redis_nodes(Cluster::new(3), extra_app_flags)
}

/// Gives `cluster`'s nodes their Redis (as [`redis_cluster`]) and starts them.
fn redis_nodes(mut cluster: Cluster, extra_app_flags: &str) -> Cluster {
    for id in 1..=3u16 {
        let port = free_port();
        let dir = cluster.dir.path().join(format!("redis{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let gate = cluster.dir.path().join(format!("no-restart{id}"));
        let command = format!(
            "test -e {gate} && exit 1; exec redis-server --port {port} --bind 127.0.0.1 --dir {dir} \
             --appendonly yes --appendfsync no --save '' --protected-mode no \
             --daemonize no --loglevel warning {extra_app_flags}",
            gate = gate.display(),
            dir = dir.display()
        );
        let node = cluster.node_mut(id);
        node.extra = vec![
            "--app-addr".into(),
            format!("127.0.0.1:{port}"),
            "--follow-dir".into(),
            dir.join("appendonlydir").display().to_string(),
            "--app-cmd".into(),
            command,
            "--app-stop-timeout".into(),
            "2s".into(),
            // Redis accepts connections before it has read its files (-LOADING meanwhile).
            "--app-ready-cmd".into(),
            format!("redis-cli -p {port} ping | grep -q PONG"),
        ];
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster
}

fn status(cluster: &Cluster, id: u16) -> Option<serde_json::Value> {
    let (code, body) = http_get(cluster.node(id).admin_addr, "/status")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The node that is primary with its Redis serving, if exactly one says so.
fn serving_primary(cluster: &Cluster, among: &[u16]) -> Option<u16> {
    let serving: Vec<u16> = among
        .iter()
        .copied()
        .filter(|&id| {
            status(cluster, id)
                .is_some_and(|s| s["role"] == "primary" && s["follow"]["state"] == "serving")
        })
        .collect();
    (serving.len() == 1).then(|| serving[0])
}

fn wait_serving(cluster: &Cluster, among: &[u16]) -> u16 {
    let mut found = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            found = serving_primary(cluster, among);
            found.is_some()
        }),
        "no primary serving Redis among {among:?}\n{}",
        cluster.logs_tail(30)
    );
    found.unwrap()
}

/// The pid of the Redis node `id` runs (`sh -c 'exec redis-server ...'`).
fn redis_pid(cluster: &Cluster, id: u16) -> Option<i32> {
    status(cluster, id)?["app"]["pid"]
        .as_i64()
        .map(|p| p as i32)
}

fn kill9(pid: i32) {
    // SAFETY: SIGKILL to a process this test started (through the sidecar).
    unsafe { libc_kill(pid, 9) };
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// One RESP command on a connection; the reply's first line.
fn command(stream: &mut BufReader<TcpStream>, args: &[&str]) -> std::io::Result<String> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len.trim().parse().unwrap_or(-1);
        if len < 0 {
            return Ok("(nil)".into());
        }
        let mut value = String::new();
        stream.read_line(&mut value)?;
        return Ok(value.trim_end().to_owned());
    }
    Ok(line.trim_end().to_owned())
}

fn connect(addr: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

/// Sends a command that may be repeated through `port`, on a new connection each time, up
/// to three times: a backup's client port closes its connections when its view of the
/// primary changes, which on a loaded machine can happen while a large value goes by.
fn command_anew(port: SocketAddr, args: &[&str]) -> String {
    let mut last = None;
    for _ in 0..3 {
        let attempt = connect(port).and_then(|mut stream| {
            stream
                .get_mut()
                .set_read_timeout(Some(Duration::from_secs(30)))?;
            command(&mut stream, args)
        });
        match attempt {
            Ok(reply) => return reply,
            Err(error) => {
                eprintln!("{}: {error}; sending it again on a new connection", args[0]);
                last = Some(error);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{}: failed three times, last: {last:?}", args[0]);
}

/// Sends `SET k<n> v<n>` with increasing `n` through `ports` (the first that works), one
/// at a time, and keeps every `n` acknowledged with `+OK`.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(ports: Vec<SocketAddr>, first: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (thread_stop, thread_acked) = (Arc::clone(&stop), Arc::clone(&acked));
        let thread = std::thread::spawn(move || {
            let mut n = first;
            let mut connection = None;
            let mut turn = 0;
            while !thread_stop.load(Ordering::Relaxed) {
                if connection.is_none() {
                    connection = connect(ports[turn % ports.len()]).ok();
                    turn += 1;
                    if connection.is_none() {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                }
                let key = format!("k{n}");
                let value = format!("v{n}");
                let stream = connection.as_mut().unwrap();
                match command(stream, &["SET", &key, &value]) {
                    Ok(reply) if reply == "+OK" => thread_acked.lock().unwrap().push(n),
                    // An error reply, or none: not acknowledged.
                    Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => connection = None,
                }
                n += 1;
            }
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// Reads every acknowledged key back through `port`; returns the ones missing or wrong.
fn missing(port: SocketAddr, acked: &[u64]) -> Vec<u64> {
    let mut stream = None;
    for _ in 0..200 {
        if let Ok(mut s) = connect(port) {
            if command(&mut s, &["PING"]).is_ok_and(|r| r == "+PONG") {
                stream = Some(s);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stream = stream.expect("a client port that answers PING");
    acked
        .iter()
        .copied()
        .filter(|n| {
            command(&mut stream, &["GET", &format!("k{n}")])
                .map_or(true, |value| value != format!("v{n}"))
        })
        .collect()
}

/// Fails, naming one, if any acknowledged SET is not read back through node `id`'s client
/// port.
fn assert_none_lost(cluster: &Cluster, id: u16, acked: &[u64]) {
    let lost = missing(cluster.node(id).client_addr, acked);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged SETs lost (e.g. k{})\n{}",
        lost.len(),
        acked.len(),
        lost[0],
        cluster.logs_tail(40)
    );
}

fn wait_acked(writer: &Writer, at_least: usize, cluster: &Cluster) {
    assert!(
        wait_until(Duration::from_secs(20), || writer.acked() >= at_least),
        "the writer got only {} acknowledgements\n{}",
        writer.acked(),
        cluster.logs_tail(30)
    );
}

fn follow_dir(cluster: &Cluster, id: u16) -> PathBuf {
    cluster
        .dir
        .path()
        .join(format!("redis{id}"))
        .join("appendonlydir")
}

/// kill -9 of the primary node (sidecar and Redis) under writes through a backup's client
/// port: the new primary's Redis has every acknowledged SET. Then the old node rejoins,
/// its directory is rewound to the committed log, and after a switchover to it, it serves
/// every acknowledged SET too.
#[test]
fn kill9_of_the_primary_loses_no_acknowledged_set_and_the_old_node_serves_again() {
    let mut cluster = redis_cluster("");
    let all = [1, 2, 3];
    let primary = wait_serving(&cluster, &all);
    let backups: Vec<u16> = all.iter().copied().filter(|&id| id != primary).collect();
    let writer = Writer::start(
        backups
            .iter()
            .map(|&id| cluster.node(id).client_addr)
            .collect(),
        0,
    );
    wait_acked(&writer, 300, &cluster);
    // The writes pass the primary's client port (its reply barrier): a primary in follow
    // mode announces no application address for backups to forward to directly.
    for &id in &backups {
        let seen = status(&cluster, id).expect("a backup's status");
        assert!(seen["primary_client_addr"].is_string(), "{seen}");
        assert!(seen["primary_app_addr"].is_null(), "{seen}");
    }

    let redis = redis_pid(&cluster, primary).expect("the primary's Redis pid");
    let killed_at = Instant::now();
    cluster.kill(primary);
    kill9(redis);
    let before = writer.acked();
    let new_primary = wait_serving(&cluster, &backups);
    wait_acked(&writer, before + 300, &cluster);
    let failover = killed_at.elapsed();
    let acked = writer.finish();
    let lost = missing(cluster.node(new_primary).client_addr, &acked);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged SETs lost after the kill (e.g. k{})\n{}",
        lost.len(),
        acked.len(),
        lost[0],
        cluster.logs_tail(40)
    );
    eprintln!(
        "{} acknowledged SETs, none lost; node {new_primary} serving {} ms after the kill (300 more writes included)",
        acked.len(),
        failover.as_millis()
    );

    // The old primary rejoins as a backup, then becomes primary again.
    cluster.start_node(primary);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (Some(old), Some(new)) = (status(&cluster, primary), status(&cluster, new_primary))
            else {
                return false;
            };
            old["role"] == "backup"
                && old["follow"]["state"] == "standby"
                && old["follow"]["applied_lsn"] == new["commit_lsn"]
        }),
        "node {primary} did not catch up as a backup\n{}",
        cluster.logs_tail(30)
    );
    let writer = Writer::start(vec![cluster.node(primary).client_addr], 1_000_000);
    wait_acked(&writer, 200, &cluster);
    assert!(
        cluster.switchover(new_primary, primary),
        "switchover to node {primary} failed\n{}",
        cluster.logs_tail(30)
    );
    assert_eq!(wait_serving(&cluster, &all), primary);
    let before = writer.acked();
    wait_acked(&writer, before + 200, &cluster);
    let mut acked_again = writer.finish();
    acked_again.extend(&acked);
    let lost = missing(cluster.node(primary).client_addr, &acked_again);
    assert!(
        lost.is_empty(),
        "{} acknowledged SETs missing on the rejoined node (e.g. k{})\n{}",
        lost.len(),
        lost[0],
        cluster.logs_tail(40)
    );
}

/// BGREWRITEAOF in the middle of the write load (a new base file installed by rename, a
/// new manifest, the old files deleted), then a kill -9 of the primary: nothing is lost, and
/// the backups' directories went through the rewrite too.
#[test]
fn bgrewriteaof_during_writes_then_a_failover_loses_nothing() {
    let mut cluster = redis_cluster("");
    let all = [1, 2, 3];
    let primary = wait_serving(&cluster, &all);
    let backups: Vec<u16> = all.iter().copied().filter(|&id| id != primary).collect();
    let writer = Writer::start(vec![cluster.node(primary).client_addr], 0);
    wait_acked(&writer, 300, &cluster);
    // One value larger than a record may carry: the append, and later the rewritten base
    // file, go into the log in pieces. A backup's client port closes its connections when
    // its view of the primary changes (on a loaded machine a heartbeat can come late while
    // 40 MB go by): the SET, which may be repeated, is sent again on a new connection.
    let big = "x".repeat(40 << 20);
    let backup_port = cluster.node(backups[0]).client_addr;
    let reply = command_anew(backup_port, &["SET", "big", &big]);
    assert_eq!(reply, "+OK");
    // Asked again after a closed connection, a rewrite already under way answers "ERR
    // Background append only file rewriting already in progress".
    let reply = command_anew(backup_port, &["BGREWRITEAOF"]);
    assert!(reply.contains("rewriting"), "BGREWRITEAOF: {reply}");
    // The rewrite is done once a second base file is in a backup's copy.
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::fs::read_dir(follow_dir(&cluster, backups[1]))
                .map(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".2.base.rdb"))
                })
                .unwrap_or(false)
        }),
        "the rewritten base file never reached node {}\n{}",
        backups[1],
        cluster.logs_tail(30)
    );
    let before = writer.acked();
    wait_acked(&writer, before + 200, &cluster);
    let redis = redis_pid(&cluster, primary).expect("the primary's Redis pid");
    cluster.kill(primary);
    kill9(redis);
    let new_primary = wait_serving(&cluster, &backups);
    let acked = writer.finish();
    assert_none_lost(&cluster, new_primary, &acked);
    assert_eq!(
        command_anew(cluster.node(new_primary).client_addr, &["STRLEN", "big"]),
        format!(":{}", big.len())
    );
}

/// Redis killed alone on the primary: restarted in place, nothing lost. Then killed again
/// with its restart made to fail: the primary's application is gone, so it hands over (the
/// app-health path), and the new primary's Redis has every acknowledged SET.
#[test]
fn redis_killed_alone_on_the_primary_restarts_in_place_or_fails_over() {
    let cluster = redis_cluster("");
    let all = [1, 2, 3];
    let primary = wait_serving(&cluster, &all);
    let writer = Writer::start(
        all.iter().map(|&id| cluster.node(id).client_addr).collect(),
        0,
    );
    wait_acked(&writer, 300, &cluster);

    // Restarted in place.
    let redis = redis_pid(&cluster, primary).expect("the primary's Redis pid");
    kill9(redis);
    assert!(
        wait_until(Duration::from_secs(20), || redis_pid(&cluster, primary)
            .is_some_and(|pid| pid != redis)),
        "Redis was not started again\n{}",
        cluster.logs_tail(30)
    );
    let before = writer.acked();
    wait_acked(&writer, before + 200, &cluster);
    assert_eq!(serving_primary(&cluster, &all), Some(primary));

    // Cannot be restarted: hand-over.
    std::fs::write(cluster.dir.path().join(format!("no-restart{primary}")), b"").unwrap();
    let redis = redis_pid(&cluster, primary).expect("the primary's Redis pid");
    kill9(redis);
    let others: Vec<u16> = all.iter().copied().filter(|&id| id != primary).collect();
    let new_primary = wait_serving(&cluster, &others);
    let before = writer.acked();
    wait_acked(&writer, before + 200, &cluster);
    let acked = writer.finish();
    assert_none_lost(&cluster, new_primary, &acked);
}

/// Every file of a directory, by name.
fn files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Waits until node `id` is a backup whose copy of the directory has reached the primary's
/// commit LSN as it is now (after writes stopped: the same LSN).
fn wait_current(cluster: &Cluster, id: u16, primary: u16) {
    let commit = status(cluster, primary).expect("the primary's status")["commit_lsn"]
        .as_u64()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            status(cluster, id).is_some_and(|node| {
                node["role"] == "backup"
                    && node["follow"]["state"] == "standby"
                    && node["follow"]["applied_lsn"].as_u64() >= Some(commit)
            })
        }),
        "node {id}'s copy of the directory did not reach LSN {commit}\n{}",
        cluster.logs_tail(30)
    );
}

/// A byte of a change flipped in a backup's log while it is down, its copy of the
/// directory marked for a rebuild from the log (as after a demotion): the damaged record is
/// detected by its checksum and never reaches the directory; the node gets the record
/// again from the primary, and once writes stop its copy is byte for byte the primary's.
#[test]
fn a_record_flipped_on_a_backups_disk_is_detected_and_not_materialized() {
    let mut cluster = redis_cluster("");
    let all = [1, 2, 3];
    let primary = wait_serving(&cluster, &all);
    let backup = all.iter().copied().find(|&id| id != primary).unwrap();
    let writer = Writer::start(vec![cluster.node(primary).client_addr], 0);
    wait_acked(&writer, 400, &cluster);
    wait_current(&cluster, backup, primary);
    cluster.kill(backup);

    // Flip the last byte of the value of k200 in whichever log segment holds it.
    let needle = b"$4\r\nv200\r\n";
    let mut flipped = false;
    let mut stack = vec![cluster.node(backup).data_dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                bytes[at + 7] ^= 0x01;
                std::fs::write(&path, &bytes).unwrap();
                flipped = true;
            }
        }
    }
    assert!(
        flipped,
        "k200's record was not found in node {backup}'s log"
    );
    std::fs::write(cluster.node(backup).data_dir.join("follow-state"), "dirty").unwrap();
    cluster.start_node(backup);
    let before = writer.acked();
    wait_acked(&writer, before + 200, &cluster);
    let acked = writer.finish();
    wait_current(&cluster, backup, primary);

    let log = std::fs::read_to_string(&cluster.node(backup).log).unwrap();
    assert!(
        log.contains("damaged") || log.contains("torn") || log.contains("checksum"),
        "node {backup} never said it found a damaged record\n{}",
        cluster.logs_tail(30)
    );
    // `/status` is published every 100 ms: the last writes may reach the copy a moment
    // after the LSN read above.
    wait_until(Duration::from_secs(5), || {
        files(&follow_dir(&cluster, backup)) == files(&follow_dir(&cluster, primary))
    });
    let copy = files(&follow_dir(&cluster, backup));
    let original = files(&follow_dir(&cluster, primary));
    assert_eq!(
        copy.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &original {
        let at = copy[name]
            .iter()
            .zip(bytes.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(copy[name].len().min(bytes.len()));
        assert!(
            copy[name] == *bytes,
            "{name} differs between node {backup}'s copy ({} bytes) and the primary's directory ({} bytes) from byte {at}: {:?} against {:?}",
            copy[name].len(),
            bytes.len(),
            String::from_utf8_lossy(&copy[name][at.saturating_sub(20)..(at + 40).min(copy[name].len())]),
            String::from_utf8_lossy(&bytes[at.saturating_sub(20)..(at + 40).min(bytes.len())]),
        );
    }
    assert!(missing(cluster.node(primary).client_addr, &acked).is_empty());
}

/// Snapshots of the followed directory: backups take them and truncate their logs; after
/// the primary is killed, one of them serves with a truncated log; the old primary, its
/// data dir and its Redis directory wiped, rejoins and needs records that log no longer
/// holds, so it gets the new primary's snapshot, restores its copy from it and catches up.
/// Nothing acknowledged is lost and the copy ends byte for byte the primary's.
#[test]
fn snapshots_truncate_the_log_and_a_wiped_node_restores_from_one() {
    let mut cluster = Cluster::new(3);
    cluster.args.extend(
        [
            "--snapshot-interval",
            "300ms",
            "--wal-segment-bytes",
            "65536",
            "--wal-retain-bytes",
            "0",
        ]
        .map(String::from),
    );
    let mut cluster = redis_nodes(cluster, "");
    let all = [1, 2, 3];
    let primary = wait_serving(&cluster, &all);
    let backups: Vec<u16> = all.iter().copied().filter(|&id| id != primary).collect();
    let writer = Writer::start(vec![cluster.node(backups[0]).client_addr], 0);
    assert!(
        wait_until(Duration::from_secs(30), || backups.iter().all(|&id| {
            status(&cluster, id).is_some_and(|s| s["first_lsn"].as_u64() > Some(100))
        })),
        "the backups never truncated their logs behind a snapshot\n{}",
        cluster.logs_tail(30)
    );
    // Each snapshot's configuration is stored with it: a start that cuts the log below it
    // (after a failed fsync) resets the log after it with the right members.
    for &id in &backups {
        let snapshot = status(&cluster, id).expect("the backup's /status")["snapshot"]
            ["snapshot_lsn"]
            .as_u64()
            .expect("a snapshot lsn");
        let path = cluster.node(id).data_dir.join("snapshot-members.json");
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("snapshot-members.json"))
                .expect("snapshot-members.json is JSON");
        let entries = stored["snapshots"].as_array().expect("a list of snapshots");
        assert!(
            entries
                .iter()
                .any(|entry| entry["snapshot_lsn"].as_u64() == Some(snapshot)),
            "node {id}: no configuration stored for its snapshot at lsn {snapshot}: {stored}"
        );
    }
    let redis = redis_pid(&cluster, primary).expect("the primary's Redis pid");
    cluster.kill(primary);
    kill9(redis);
    let new_primary = wait_serving(&cluster, &backups);
    let before = writer.acked();
    wait_acked(&writer, before + 200, &cluster);

    // The old primary comes back with nothing.
    std::fs::remove_dir_all(&cluster.node(primary).data_dir).unwrap();
    let redis_dir = follow_dir(&cluster, primary);
    std::fs::remove_dir_all(redis_dir.parent().unwrap()).unwrap();
    std::fs::create_dir_all(redis_dir.parent().unwrap()).unwrap();
    cluster
        .node_mut(primary)
        .extra
        .extend(["--initial-cluster-state".to_owned(), "existing".to_owned()]);
    cluster.start_node(primary);
    let before = writer.acked();
    wait_acked(&writer, before + 200, &cluster);
    let acked = writer.finish();
    wait_current(&cluster, primary, new_primary);
    wait_until(Duration::from_secs(5), || {
        files(&follow_dir(&cluster, primary)) == files(&follow_dir(&cluster, new_primary))
    });
    assert!(
        files(&follow_dir(&cluster, primary)) == files(&follow_dir(&cluster, new_primary)),
        "the restored copy differs from the primary's directory\n{}",
        cluster.logs_tail(30)
    );
    let log = std::fs::read_to_string(&cluster.node(primary).log).unwrap();
    assert!(
        log.contains("snapshot"),
        "node {primary} caught up without a snapshot\n{}",
        cluster.logs_tail(30)
    );
    let lost = missing(cluster.node(new_primary).client_addr, &acked);
    assert!(lost.is_empty(), "{} acknowledged SETs lost", lost.len());
}
