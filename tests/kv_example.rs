//! The replicated key-value example (`examples/kv/`) against a real three-node cluster,
//! driven by the `redis` crate as any Redis client would drive it.
//!
//! The example's server module is compiled into this test (its unit tests run here too),
//! and one server per node runs in this process, each with its own `Driver` to its node's
//! app socket; each node's `--app-addr` names its server. Clients connect to the nodes'
//! client ports, understudy's proxy to the primary.

mod support;

#[allow(dead_code)] // parts only the example's `main` uses
#[path = "../examples/kv/server/mod.rs"]
mod server;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use understudy::client::clients::Clients;
use understudy::client::{Driver, Role};

use server::{Config, ServeError, Store};
use support::Cluster;

/// Every wait ends by this deadline; a hang is a failure, not a slow pass.
const DEADLINE: Duration = Duration::from_secs(10);

/// One node's in-process key-value server.
struct Kv {
    addr: SocketAddr,
    driver: Arc<Driver<Store>>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

/// A cluster with a key-value server beside every node.
struct KvCluster {
    cluster: Cluster,
    servers: Vec<Option<Kv>>,
}

impl KvCluster {
    /// Binds the servers' listeners first (each node's `--app-addr` must name one), then
    /// starts the nodes and connects a server to each.
    async fn start() -> KvCluster {
        KvCluster::start_with(|_| (Vec::new(), Config::default())).await
    }

    /// As [`KvCluster::start`], with each node's extra flags and server config from `of`.
    async fn start_with(of: impl Fn(u16) -> (Vec<String>, Config)) -> KvCluster {
        let mut cluster = Cluster::new(3);
        let mut listeners = Vec::new();
        for id in 1..=3 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            cluster.node_mut(id).extra = vec!["--app-addr".into(), addr.to_string()];
            cluster.node_mut(id).extra.extend(of(id).0);
            listeners.push(listener);
        }
        for id in 1..=3 {
            cluster.start_node(id);
        }
        let mut servers = Vec::new();
        for (id, listener) in (1..=3).zip(listeners) {
            let driver = Arc::new(connect(&cluster.node(id).app_socket).await);
            let shutdown = CancellationToken::new();
            let addr = listener.local_addr().unwrap();
            // As the example's binary does: the primary's client port hands its
            // connections to the server.
            let clients = Clients::connect(&cluster.node(id).app_socket)
                .await
                .expect("take the client port's connections");
            let task = tokio::spawn(server::serve(
                listener,
                Arc::clone(&driver),
                Some(clients),
                of(id).1,
                shutdown.clone().cancelled_owned(),
            ));
            servers.push(Some(Kv {
                addr,
                driver,
                shutdown,
                task,
            }));
        }
        KvCluster { cluster, servers }
    }

    fn kv(&self, id: u16) -> &Kv {
        self.servers[usize::from(id) - 1]
            .as_ref()
            .expect("the node's server is running")
    }

    /// The node whose driver reports it primary, once exactly one does and it is not
    /// `other_than`.
    async fn primary(&self, other_than: Option<u16>) -> u16 {
        eventually("a primary", || async move {
            let primaries: Vec<u16> = self
                .servers
                .iter()
                .flatten()
                .filter(|kv| kv.driver.is_connected() && kv.driver.role().role == Role::Primary)
                .map(|kv| kv.driver.node_id().get())
                .collect();
            match primaries[..] {
                [primary] if Some(primary) != other_than => Some(primary),
                _ => None,
            }
        })
        .await
    }

    /// `kill -9` of the node, and its server stopped (it has lost its sidecar anyway).
    async fn kill(&mut self, id: u16) {
        self.cluster.kill(id);
        let kv = self.servers[usize::from(id) - 1]
            .take()
            .expect("the node's server is running");
        kv.shutdown.cancel();
        let result = tokio::time::timeout(DEADLINE, kv.task)
            .await
            .expect("the server stops")
            .expect("the server task does not panic");
        assert!(
            matches!(result, Ok(()) | Err(ServeError::SidecarLost(_))),
            "{result:?}"
        );
    }
}

async fn connect(socket: &Path) -> Driver<Store> {
    eventually("a driver connected to the sidecar", || async move {
        Driver::connect(socket, Store::default()).await.ok()
    })
    .await
}

/// Polls `attempt` until it gives a value; panics after [`DEADLINE`].
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A Redis connection to `addr`, with timeouts generous enough for a loaded machine.
async fn redis_connect(addr: SocketAddr) -> RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(3)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn query<T: redis::FromRedisValue>(
    con: &mut MultiplexedConnection,
    args: &[&str],
) -> RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(con).await
}

/// The text of the error `args` is answered with.
async fn query_error(con: &mut MultiplexedConnection, args: &[&str]) -> String {
    match query::<redis::Value>(con, args).await {
        Ok(value) => panic!("{args:?} answered {value:?}, not an error"),
        Err(error) => error.to_string(),
    }
}

/// A long pipeline of large writes (a bulk load: megabytes read ahead at once, many records
/// queued before the first commits) is carried out in request order: each INCR answers
/// one more than the one before it, the last SET of a key wins, and the reads at the end
/// see every write before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_pipeline_of_large_writes_is_applied_in_request_order() {
    const SETS: usize = 128;
    const KEYS: usize = 8;
    let kv = KvCluster::start().await;
    let primary = kv.primary(None).await;
    let mut con = redis_connect(kv.kv(primary).addr).await.expect("connect");
    let value = |i: usize| {
        let mut value = format!("{i:08}").into_bytes();
        value.resize(64 << 10, b'v');
        value
    };
    let mut pipe = redis::pipe();
    for i in 0..SETS {
        pipe.cmd("SET")
            .arg(format!("bulk:{}", i % KEYS))
            .arg(value(i));
        pipe.cmd("INCR").arg("bulk:count");
    }
    for key in 0..KEYS {
        pipe.cmd("GET").arg(format!("bulk:{key}"));
    }
    pipe.cmd("GET").arg("bulk:count");
    let replies: Vec<redis::Value> = tokio::time::timeout(DEADLINE, pipe.query_async(&mut con))
        .await
        .expect("the pipeline is answered in time")
        .expect("the pipeline succeeds");
    assert_eq!(replies.len(), 2 * SETS + KEYS + 1);
    for i in 0..SETS {
        assert_eq!(replies[2 * i], redis::Value::Okay, "SET {i}");
        assert_eq!(
            replies[2 * i + 1],
            redis::Value::Int(i as i64 + 1),
            "INCR {i}"
        );
    }
    for key in 0..KEYS {
        let last = SETS - KEYS + key;
        assert_eq!(
            replies[2 * SETS + key],
            redis::Value::BulkString(value(last)),
            "GET bulk:{key}"
        );
    }
    assert_eq!(
        replies[2 * SETS + KEYS],
        redis::Value::BulkString(SETS.to_string().into_bytes())
    );
}

/// Every kind of command, sent through a backup's client port, is carried out by the
/// primary; a request straight to a backup's server is told where the primary is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_a_backup_port_reach_the_primary() {
    let kv = KvCluster::start().await;
    let primary = kv.primary(None).await;
    let backup = (1..=3).find(|&id| id != primary).unwrap();
    let mut con = redis_connect(kv.cluster.node(backup).client_addr)
        .await
        .unwrap();

    let pong: String = query(&mut con, &["PING"]).await.unwrap();
    assert_eq!(pong, "PONG");
    let ok: String = query(&mut con, &["SET", "a", "1"]).await.unwrap();
    assert_eq!(ok, "OK");
    let a: Option<String> = query(&mut con, &["GET", "a"]).await.unwrap();
    assert_eq!(a.as_deref(), Some("1"));
    assert_eq!(query::<i64>(&mut con, &["INCR", "a"]).await.unwrap(), 2);
    assert_eq!(
        query::<i64>(&mut con, &["INCRBY", "a", "5"]).await.unwrap(),
        7
    );
    assert_eq!(query::<i64>(&mut con, &["DECR", "a"]).await.unwrap(), 6);
    let _: () = query(&mut con, &["MSET", "b", "2", "c", "3"])
        .await
        .unwrap();
    let values: Vec<Option<String>> = query(&mut con, &["MGET", "a", "b", "c", "nope"])
        .await
        .unwrap();
    assert_eq!(
        values,
        vec![Some("6".into()), Some("2".into()), Some("3".into()), None]
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXISTS", "a", "b", "nope"])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        query::<i64>(&mut con, &["DEL", "b", "nope"]).await.unwrap(),
        1
    );
    assert_eq!(query::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 2);

    // Reads write nothing to the log (lease reads): the primary's applied LSN stays put.
    let driver = &kv.servers[usize::from(primary) - 1]
        .as_ref()
        .unwrap()
        .driver;
    let applied = driver.applied_lsn();
    for _ in 0..20 {
        let a: Option<String> = query(&mut con, &["GET", "a"]).await.unwrap();
        assert_eq!(a.as_deref(), Some("6"));
    }
    assert_eq!(driver.applied_lsn(), applied, "a read wrote a record");

    // SET's conditions and expiry.
    let not_set: Option<String> = query(&mut con, &["SET", "a", "x", "NX"]).await.unwrap();
    assert_eq!(not_set, None);
    let not_set: Option<String> = query(&mut con, &["SET", "fresh", "x", "XX"]).await.unwrap();
    assert_eq!(not_set, None);
    let ok: String = query(&mut con, &["SET", "e", "v", "EX", "100"])
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    let ttl: i64 = query(&mut con, &["TTL", "e"]).await.unwrap();
    assert!((99..=100).contains(&ttl), "ttl {ttl}");
    let ok: String = query(&mut con, &["SET", "gone", "v", "PX", "1"])
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    eventually("the 1 ms key to expire", || {
        let mut con = con.clone();
        async move {
            let value: Option<String> = query(&mut con, &["GET", "gone"]).await.unwrap();
            value.is_none().then_some(())
        }
    })
    .await;

    // INCR on a non-integer is an error and changes nothing.
    let _: () = query(&mut con, &["SET", "s", "abc"]).await.unwrap();
    let error = query_error(&mut con, &["INCR", "s"]).await;
    assert!(error.contains("not an integer"), "{error}");
    let s: Option<String> = query(&mut con, &["GET", "s"]).await.unwrap();
    assert_eq!(s.as_deref(), Some("abc"));

    // An unknown command is an error, and the connection stays usable.
    let error = query_error(&mut con, &["FROBNICATE", "x"]).await;
    assert!(error.contains("unknown command"), "{error}");
    let pong: String = query(&mut con, &["PING"]).await.unwrap();
    assert_eq!(pong, "PONG");

    // A pipeline of writes, then one of reads, in order.
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
    }
    pipe.cmd("INCR").arg("p0").cmd("GET").arg("p0");
    let (incremented, read): (i64, String) = pipe.query_async(&mut con).await.unwrap();
    assert_eq!((incremented, read.as_str()), (1, "1"));
    let keys: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    let values: Vec<Option<i64>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut con)
        .await
        .unwrap();
    let expected: Vec<Option<i64>> = (0..100).map(|i| Some(i.max(1))).collect();
    assert_eq!(values, expected);

    // Reads and writes mixed in one pipeline are carried out in request order.
    let (before, set, after, deleted, gone): (Option<String>, String, String, i64, Option<String>) =
        redis::pipe()
            .cmd("GET")
            .arg("mixed")
            .cmd("SET")
            .arg("mixed")
            .arg("v")
            .cmd("GET")
            .arg("mixed")
            .cmd("DEL")
            .arg("mixed")
            .cmd("GET")
            .arg("mixed")
            .query_async(&mut con)
            .await
            .unwrap();
    assert_eq!(
        (before, set.as_str(), after.as_str(), deleted, gone),
        (None, "OK", "v", 1, None)
    );

    // INFO replication comes from the primary's server.
    let info: String = query(&mut con, &["INFO", "replication"]).await.unwrap();
    assert!(info.contains("role:primary\r\n"), "{info}");
    assert!(info.contains(&format!("node_id:{primary}\r\n")), "{info}");
    assert!(info.contains("epoch:"), "{info}");
    assert!(info.contains("commit_lsn:"), "{info}");

    // Straight to a backup's server (not its client port): refused, naming the primary.
    let mut direct = redis_connect(kv.kv(backup).addr).await.unwrap();
    let primary_addr = kv.cluster.node(primary).client_addr.to_string();
    let error = eventually("the backup to name the primary", || {
        let mut direct = direct.clone();
        let primary_addr = primary_addr.clone();
        async move {
            let error = query_error(&mut direct, &["SET", "k", "v"]).await;
            error.contains(&primary_addr).then_some(error)
        }
    })
    .await;
    // The client library prints the error code apart from its message.
    assert!(error.contains("NOTPRIMARY"), "{error}");
    assert!(
        error.contains(&format!("primary is node {primary} at {primary_addr}")),
        "{error}"
    );
    let error = query_error(&mut direct, &["GET", "a"]).await;
    assert!(error.contains("NOTPRIMARY"), "{error}");
    let info: String = query(&mut direct, &["INFO", "replication"]).await.unwrap();
    assert!(info.contains("role:backup\r\n"), "{info}");
}

/// `kill -9` of the primary: clients connected through its port are cut off, a client that
/// reconnects to a backup's port reaches the new primary, and every acknowledged SET is
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_loses_no_acknowledged_set_and_clients_move() {
    let mut kv = KvCluster::start().await;
    let old = kv.primary(None).await;
    let backup = (1..=3).find(|&id| id != old).unwrap();
    let backup_port = kv.cluster.node(backup).client_addr;
    let mut con = redis_connect(backup_port).await.unwrap();
    let old_epoch = kv.kv(old).driver.role().epoch;

    // A few hundred SETs, acknowledged, in pipelines of 50 and one at a time.
    let mut acked = Vec::new();
    for chunk in 0..6 {
        let mut pipe = redis::pipe();
        for i in 0..50 {
            let key = format!("key-{chunk}-{i}");
            pipe.cmd("SET")
                .arg(&key)
                .arg(format!("value-{key}"))
                .ignore();
            acked.push(key);
        }
        let () = pipe.query_async(&mut con).await.unwrap();
    }
    for i in 0..20 {
        let key = format!("single-{i}");
        let _: () = query(&mut con, &["SET", &key, &format!("value-{key}")])
            .await
            .unwrap();
        acked.push(key);
    }

    // A client through the primary's own port, and one through the backup's.
    let mut through_old = redis_connect(kv.cluster.node(old).client_addr)
        .await
        .unwrap();
    let pong: String = query(&mut through_old, &["PING"]).await.unwrap();
    assert_eq!(pong, "PONG");

    kv.kill(old).await;

    // Both connections were carried to the old primary; both are cut.
    assert!(query::<String>(&mut through_old, &["PING"]).await.is_err());
    assert!(query::<Option<String>>(&mut con, &["GET", "single-0"])
        .await
        .is_err());

    // Reconnecting to the same backup port reaches the new primary.
    let new = kv.primary(Some(old)).await;
    let mut con = eventually(
        "a connection through the backup port to the new primary",
        || async move {
            let mut con = redis_connect(backup_port).await.ok()?;
            let info: String = query(&mut con, &["INFO", "replication"]).await.ok()?;
            let value: Option<String> = query(&mut con, &["GET", "single-0"]).await.ok()?;
            assert_eq!(value.as_deref(), Some("value-single-0"));
            info.contains(&format!("node_id:{new}\r\n")).then_some(con)
        },
    )
    .await;
    assert!(kv.kv(new).driver.role().epoch > old_epoch);

    // Nothing acknowledged is lost, and writes go on.
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&acked)
        .query_async(&mut con)
        .await
        .unwrap();
    for (key, value) in acked.iter().zip(&values) {
        assert_eq!(
            value.as_deref(),
            Some(format!("value-{key}").as_str()),
            "{key}"
        );
    }
    let ok: String = query(&mut con, &["SET", "after", "failover"])
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    assert_eq!(
        query::<i64>(&mut con, &["DBSIZE"]).await.unwrap(),
        acked.len() as i64 + 1
    );
}

/// A key that a read saw expired stays expired after a failover to a node whose clock is a
/// minute behind: the read that judged it by the old primary's clock first put that time in
/// the log (a barrier record), so the new primary's store clock is past the expiry too.
/// Without that record the new primary, judging by its own clock, served the key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_seen_expired_stays_expired_on_a_primary_whose_clock_is_behind() {
    let mut kv = KvCluster::start_with(|id| {
        let config = Config {
            clock_offset_ms: if id == 1 { 0 } else { -60_000 },
            ..Config::default()
        };
        let flags = if id == 1 {
            vec!["--priority".to_string(), "10".to_string()]
        } else {
            Vec::new()
        };
        (flags, config)
    })
    .await;
    let mut old = kv.primary(None).await;
    if old != 1 {
        // The first election is a race (a priority breaks only ties between candidates that
        // stand at once): the test needs the node whose clock is right as the primary, so it
        // hands over to it.
        let from = old;
        let handed = (0..5).any(|_| {
            tokio::task::block_in_place(|| kv.cluster.switchover(from, 1)) || {
                std::thread::sleep(Duration::from_millis(200));
                false
            }
        });
        assert!(handed, "node {from} did not hand over to node 1");
        old = kv.primary(Some(from)).await;
    }
    assert_eq!(old, 1, "node 1, whose clock is right, is the primary");
    let mut con = redis_connect(kv.cluster.node(old).client_addr)
        .await
        .unwrap();
    let ok: String = query(&mut con, &["SET", "short", "v", "PX", "300"])
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    let ok: String = query(&mut con, &["SET", "kept", "v"]).await.unwrap();
    assert_eq!(ok, "OK");
    let driver = &kv.kv(old).driver;
    let applied = driver.applied_lsn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // No write since the SETs: only this node's clock says the key is gone.
    let value: Option<String> = query(&mut con, &["GET", "short"]).await.unwrap();
    assert_eq!(value, None, "expired by the primary's clock");
    assert!(
        driver.applied_lsn() > applied,
        "the read that judged an expiry by the wall clock wrote no record"
    );
    let applied = driver.applied_lsn();
    assert_eq!(query::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 1);
    let value: Option<String> = query(&mut con, &["GET", "kept"]).await.unwrap();
    assert_eq!(value.as_deref(), Some("v"));
    assert_eq!(
        driver.applied_lsn(),
        applied,
        "reads that no expiry decides wrote a record"
    );

    kv.kill(old).await;
    let new = kv.primary(Some(old)).await;
    let port = kv.cluster.node(new).client_addr;
    let mut con = eventually("a connection to the new primary", || async move {
        let mut con = redis_connect(port).await.ok()?;
        let pong: String = query(&mut con, &["PING"]).await.ok()?;
        (pong == "PONG").then_some(con)
    })
    .await;
    let value: Option<String> = query(&mut con, &["GET", "short"]).await.unwrap();
    assert_eq!(
        value, None,
        "a key a read saw expired is back on a primary whose clock is behind"
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXISTS", "short", "kept"])
            .await
            .unwrap(),
        1
    );
    assert_eq!(query::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 1);
}

/// A planned switchover demotes the primary without stopping it: a client connected
/// through the demoted node's port is disconnected at once, and so is a client whose
/// connection a backup's port was forwarding to it; reconnecting to the same ports reaches
/// the new primary, with every acknowledged SET there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_demoted_primary_are_disconnected_and_reconnect_to_the_new_one() {
    let kv = KvCluster::start().await;
    let old = kv.primary(None).await;
    let target = (1..=3).find(|&id| id != old).unwrap();
    let other = (1..=3).find(|&id| id != old && id != target).unwrap();
    let old_port = kv.cluster.node(old).client_addr;
    let other_port = kv.cluster.node(other).client_addr;

    let mut through_old = redis_connect(old_port).await.unwrap();
    let mut through_other = redis_connect(other_port).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..50 {
        if i == 1 {
            // The primary's client port handed its connection to the server instead of
            // proxying it; the backup's went straight to the server in one hop.
            assert_eq!(
                kv.cluster
                    .metric(old, "understudy_client_connections_handed_total"),
                Some(1.0)
            );
            assert_eq!(
                kv.cluster
                    .metric(other, "understudy_client_connections_direct_total"),
                Some(1.0)
            );
        }
        let (con, key) = if i % 2 == 0 {
            (&mut through_old, format!("old-{i}"))
        } else {
            (&mut through_other, format!("other-{i}"))
        };
        let ok: String = query(con, &["SET", &key, "v"]).await.unwrap();
        assert_eq!(ok, "OK");
        acked.push(key);
    }

    let admin = kv.cluster.node(old).admin_addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        support::output_within(
            {
                let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"));
                command.args(["switchover", "--admin", &admin, "--to", &target.to_string()]);
                command
            },
            DEADLINE,
        )
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "switchover failed: {} {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(kv.primary(Some(old)).await, target);
    // The demoted node is still running, as a backup.
    assert_eq!(kv.kv(old).driver.role().role, Role::Backup);

    // Both connections were carried to the old primary's server: both are cut, promptly
    // (not by a timeout); the handed-over one by the server itself.
    for con in [&mut through_old, &mut through_other] {
        let asked = Instant::now();
        let answer = eventually("the connection to be cut", || {
            let mut con = con.clone();
            async move { query::<String>(&mut con, &["PING"]).await.err() }
        })
        .await;
        assert!(
            answer.is_io_error()
                || answer.is_connection_dropped()
                || answer.is_unrecoverable_error(),
            "{answer:?}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
    }

    // Reconnecting to the demoted node's port reaches the new primary, which has every
    // acknowledged SET.
    let mut con = eventually(
        "a connection through the demoted node's port to the new primary",
        || async move {
            let mut con = redis_connect(old_port).await.ok()?;
            let info: String = query(&mut con, &["INFO", "replication"]).await.ok()?;
            info.contains(&format!("node_id:{target}\r\n"))
                .then_some(con)
        },
    )
    .await;
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&acked)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        values.iter().all(|v| v.as_deref() == Some("v")),
        "{values:?}"
    );
    let ok: String = query(&mut con, &["SET", "after", "switchover"])
        .await
        .unwrap();
    assert_eq!(ok, "OK");
}
