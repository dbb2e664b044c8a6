//! The client port, with a plain TCP echo server as the application (the proxy does not
//! care what the bytes mean): its limits (an idle connection is closed after
//! `--client-idle-timeout` while a busy one stays, a connection over
//! `--client-connections-max` is closed at once, and `/metrics` counts both), and a
//! backup's route to the primary's application: one hop where it can reach it, through the
//! primary's client port where it cannot.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{http_get, wait_until, Cluster};

/// An echo server, one thread per connection, that can stop listening.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    /// Listens on a free loopback port.
    fn start() -> Echo {
        Echo::serve(support::bound_listener())
    }

    /// Listens on `addr` again, after [`Echo::stop`].
    fn start_at(addr: SocketAddr) -> Echo {
        Echo::serve(TcpListener::bind(addr).unwrap())
    }

    fn serve(listener: TcpListener) -> Echo {
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return; // drops the listener: connects are refused from here on
                }
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops listening (connections already accepted go on); returns once connects are
    /// refused.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// A metric's value from `/metrics`.
fn metric(admin: SocketAddr, name: &str) -> Option<u64> {
    let (_, body) = http_get(admin, "/metrics")?;
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Sends `text` and reads it back; false if the connection is closed or fails.
fn echoes(stream: &mut TcpStream, text: &[u8]) -> bool {
    if stream.write_all(text).is_err() {
        return false;
    }
    let mut got = vec![0u8; text.len()];
    stream.read_exact(&mut got).is_ok() && got == text
}

/// Whether the peer closed the connection (a read sees the end or a reset) within `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Starts every node of `cluster` with `--app-addr app` and `extra`, and returns the one
/// primary (the one node whose `/primary` answers 200).
fn start_with_app(cluster: &mut Cluster, app: SocketAddr, extra: &[&str]) -> u16 {
    for id in 1..=3 {
        let mut flags = vec!["--app-addr".to_owned(), app.to_string()];
        flags.extend(extra.iter().map(|flag| flag.to_string()));
        cluster.node_mut(id).extra = flags;
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let mut primary = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let serving: Vec<u16> = (1..=3)
                .filter(|&id| {
                    http_get(cluster.node(id).admin_addr, "/primary").map(|(code, _)| code)
                        == Some(200)
                })
                .collect();
            primary = serving.first().copied().filter(|_| serving.len() == 1);
            primary.is_some()
        }),
        "no primary"
    );
    primary.unwrap()
}

/// A field of node `id`'s `/status`.
fn status_field(cluster: &Cluster, id: u16, field: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(cluster.node(id).admin_addr, "/status")?;
    let status: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
    status.get(field).cloned()
}

/// A backup whose status names the primary: it has heard the primary's handshake, so it
/// knows the primary's addresses.
fn backup_knowing(cluster: &Cluster, primary: u16) -> u16 {
    let backup = (1..=3).find(|&id| id != primary).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            status_field(cluster, backup, "primary") == Some(primary.into())
                && status_field(cluster, backup, "primary_client_addr").is_some()
        }),
        "node {backup} does not know the primary's client port"
    );
    backup
}

/// A connection to a backup's client port reaches the primary's application without
/// passing the primary's client port (which counts no new connection, while the backup
/// counts a direct one). When the application cannot be reached directly, the connection
/// goes through the primary's client port instead, which holds it until the application
/// is back; it then works end to end.
#[test]
fn a_backup_forwards_to_the_primary_application_in_one_hop_and_falls_back_to_its_port() {
    let echo = Echo::start();
    let app = echo.addr;
    let mut cluster = Cluster::new(3);
    // A held connection waits for the application up to --client-hold; nothing hands over
    // while it is away (every node's application is this one echo server).
    let primary = start_with_app(
        &mut cluster,
        app,
        &["--client-hold", "10s", "--app-timeout", "60s"],
    );
    let backup = backup_knowing(&cluster, primary);
    assert!(
        wait_until(Duration::from_secs(5), || status_field(
            &cluster,
            backup,
            "primary_app_addr"
        ) == Some(app.to_string().into())),
        "the backup did not learn the primary's application address: {:?}",
        status_field(&cluster, backup, "primary_app_addr")
    );
    let through_primary = |cluster: &Cluster| {
        cluster
            .metric(primary, "understudy_client_connections_total")
            .unwrap()
    };
    let direct = |cluster: &Cluster| {
        cluster
            .metric(backup, "understudy_client_connections_direct_total")
            .unwrap()
    };
    let direct_failed = |cluster: &Cluster| {
        cluster
            .metric(backup, "understudy_client_connections_direct_failed_total")
            .unwrap()
    };

    // One hop.
    let before = through_primary(&cluster);
    for round in 0..3 {
        let mut client = connect(cluster.node(backup).client_addr);
        assert!(echoes(&mut client, format!("direct {round}\n").as_bytes()));
    }
    assert_eq!(direct(&cluster), 3.0);
    assert_eq!(direct_failed(&cluster), 0.0);
    assert_eq!(
        through_primary(&cluster),
        before,
        "a connection passed the primary's client port"
    );

    // The application stops listening. Once the primary knows (and so holds connections
    // rather than failing them), a connection to the backup's port cannot reach the
    // application directly and goes through the primary's port.
    echo.stop();
    assert!(
        wait_until(Duration::from_secs(5), || status_field(
            &cluster,
            primary,
            "app_health"
        )
        .is_some_and(|health| health["live"] == false)),
        "the primary did not notice its application gone"
    );
    let mut held = connect(cluster.node(backup).client_addr);
    held.write_all(b"held\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || direct_failed(&cluster) == 1.0
            && through_primary(&cluster) == before + 1.0),
        "no fallback: direct failures {}, connections through the primary's port {} (before {before})",
        direct_failed(&cluster),
        through_primary(&cluster)
    );
    assert_eq!(direct(&cluster), 3.0);
    // The application is back: the held connection reaches it.
    let _echo = Echo::start_at(app);
    let mut got = [0u8; 5];
    held.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"held\n");
    assert!(echoes(&mut held, b"and more\n"));
}

/// A node cut off from every peer (here both are killed) knows no primary and will not
/// soon: once it has heard from neither for the failover timeout, a new connection to its
/// client port is closed at once rather than held for `--client-hold` (10 s here). A node
/// that still hears its peers holds one (the test above, while the application is away).
#[test]
fn a_node_cut_off_from_every_peer_closes_new_connections_at_once() {
    let echo = Echo::start();
    let mut cluster = Cluster::new(3);
    let primary = start_with_app(
        &mut cluster,
        echo.addr,
        &["--client-hold", "10s", "--app-timeout", "60s"],
    );
    assert!(echoes(
        &mut connect(cluster.node(primary).client_addr),
        b"served\n"
    ));
    for id in (1..=3).filter(|&id| id != primary) {
        cluster.kill(id);
    }
    assert!(
        wait_until(Duration::from_secs(5), || {
            http_get(cluster.node(primary).admin_addr, "/primary").map(|(code, _)| code)
                != Some(200)
        }),
        "node {primary} still serves as primary with both peers killed"
    );
    let started = Instant::now();
    let mut client = connect(cluster.node(primary).client_addr);
    assert!(
        closed_within(&mut client, Duration::from_secs(5)),
        "a connection to a node cut off from its peers was held"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "closed only after {took:?}");
}

/// A local address of this machine that is not loopback, if it has one (the one the
/// default route leaves from; a UDP connect sends nothing).
fn non_loopback_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    let usable = !ip.is_loopback() && !ip.is_unspecified() && TcpListener::bind((ip, 0)).is_ok();
    usable.then_some(ip)
}

/// Peers that reach each other at a non-loopback address, with the application on
/// loopback: a backup cannot know that the primary's application is on its own host, so it
/// never connects to the loopback address (which would reach whatever listens there on the
/// backup's host) and goes through the primary's client port.
#[test]
fn a_loopback_application_of_a_primary_reached_over_the_network_is_not_used() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: this machine has no non-loopback address (the rule itself is unit-tested in node::peer)");
        return;
    };
    let echo = Echo::start();
    let mut cluster = Cluster::new(3);
    for node in &mut cluster.nodes {
        node.peer_addr = SocketAddr::new(ip, support::free_port());
    }
    cluster.peers = cluster
        .nodes
        .iter()
        .map(|node| format!("{}={}", node.id, node.peer_addr))
        .collect::<Vec<_>>()
        .join(",");
    let primary = start_with_app(&mut cluster, echo.addr, &[]);
    let backup = backup_knowing(&cluster, primary);
    assert_eq!(status_field(&cluster, backup, "primary_app_addr"), None);
    let before = cluster
        .metric(primary, "understudy_client_connections_total")
        .unwrap();
    let mut client = connect(cluster.node(backup).client_addr);
    assert!(echoes(&mut client, b"two hops\n"));
    assert_eq!(
        cluster.metric(primary, "understudy_client_connections_total"),
        Some(before + 1.0)
    );
    assert_eq!(
        cluster.metric(backup, "understudy_client_connections_direct_total"),
        Some(0.0)
    );
}

#[test]
fn idle_connections_and_those_over_the_limit_are_closed_and_counted() {
    let echo = Echo::start();
    let mut cluster = Cluster::new(3);
    let primary = start_with_app(
        &mut cluster,
        echo.addr,
        &[
            "--client-idle-timeout",
            "400ms",
            "--client-connections-max",
            "3",
        ],
    );
    let port = cluster.node(primary).client_addr;
    let admin = cluster.node(primary).admin_addr;

    // One connection goes quiet, another keeps talking: only the quiet one is closed.
    let mut quiet = connect(port);
    let mut busy = connect(port);
    assert!(echoes(&mut quiet, b"hello\n"));
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(
            echoes(&mut busy, b"still here\n"),
            "a busy connection was closed after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed_within(&mut quiet, Duration::from_secs(2)),
        "an idle connection stayed open"
    );

    // `busy` and two more make three, the limit: a fourth is closed at once.
    let mut second = connect(port);
    let mut third = connect(port);
    assert!(echoes(&mut second, b"2\n") && echoes(&mut third, b"3\n"));
    let mut over = connect(port);
    assert!(
        closed_within(&mut over, Duration::from_secs(2)),
        "a connection over the limit was carried"
    );
    assert!(echoes(&mut busy, b"busy\n"));

    assert!(
        wait_until(Duration::from_secs(5), || metric(
            admin,
            "understudy_client_connections_open"
        ) == Some(3)),
        "gauge: {:?}",
        metric(admin, "understudy_client_connections_open")
    );
    assert!(metric(admin, "understudy_client_connections_refused_total") >= Some(1));
    assert!(metric(admin, "understudy_client_connections_total") >= Some(4));
}
