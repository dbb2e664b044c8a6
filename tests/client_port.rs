//! The client port's limits, with a plain TCP echo server as the application (the proxy
//! does not care what the bytes mean): an idle connection is closed after
//! `--client-idle-timeout` while a busy one stays, a connection over
//! `--client-connections-max` is closed at once, and `/metrics` counts both.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::{http_get, wait_until, Cluster};

/// An echo server on loopback, one thread per connection.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", support::free_port())).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
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

#[test]
fn idle_connections_and_those_over_the_limit_are_closed_and_counted() {
    let echo = echo_server();
    let mut cluster = Cluster::new(3);
    for id in 1..=3 {
        cluster.node_mut(id).extra = [
            "--app-addr",
            &echo.to_string(),
            "--client-idle-timeout",
            "400ms",
            "--client-connections-max",
            "3",
        ]
        .map(String::from)
        .to_vec();
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
    let primary = primary.unwrap();
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
