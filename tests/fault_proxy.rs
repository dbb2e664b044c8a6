//! The fault proxy (`understudy-chaos proxy`, `tests/support/chaos/main.rs`) against an
//! echo server: it forwards, a partition loses bytes and a heal closes the connections that
//! lost them, a delay holds bytes back, and a drop of 100 % resets connections.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, wait_until};

/// An echo server on a free port, serving each connection on its own thread.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 1024];
                while let Ok(len) = stream.read(&mut buf) {
                    if len == 0 || stream.write_all(&buf[..len]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

struct Proxy {
    child: Child,
    control: SocketAddr,
    link: SocketAddr,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let link = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_understudy-chaos"))
            .args([
                "proxy",
                "--control",
                &control.to_string(),
                "--exit-after",
                "60s",
            ])
            .args(["--link", &format!("a-b={link},{target}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the proxy");
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(control)
                .is_ok()),
            "the proxy's control port never opened"
        );
        Proxy {
            child,
            control,
            link,
        }
    }

    fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(self.control).expect("connect to the control port");
        writeln!(stream, "{line}").expect("send a command");
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .expect("read the reply");
        assert!(reply.starts_with("ok"), "{line:?} was answered {reply:?}");
        reply
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.link).expect("connect through the proxy");
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("set a read timeout");
        stream
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `bytes` and reads the echo; `None` if nothing (or not all) came back in time.
fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> Option<Duration> {
    let started = Instant::now();
    stream.write_all(bytes).ok()?;
    let mut back = vec![0u8; bytes.len()];
    stream.read_exact(&mut back).ok()?;
    assert_eq!(back, bytes, "the proxy changed the bytes");
    Some(started.elapsed())
}

#[test]
fn proxy_forwards_partitions_heals_delays_and_drops() {
    let proxy = Proxy::start(echo_server());

    let mut stream = proxy.connect();
    assert!(
        round_trip(&mut stream, b"hello").is_some(),
        "no echo through a healthy link"
    );

    proxy.command("partition a-b");
    assert_eq!(
        round_trip(&mut stream, b"lost"),
        None,
        "bytes crossed a partition"
    );
    let reply = proxy.command("heal all");
    assert!(
        reply.contains("1 connections closed"),
        "heal answered {reply:?}"
    );
    // The connection that lost bytes is closed, so its stream never has a hole.
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest).is_ok();
    assert!(
        closed && rest.is_empty(),
        "the partitioned connection survived the heal"
    );
    let mut stream = proxy.connect();
    assert!(
        round_trip(&mut stream, b"again").is_some(),
        "no echo after the heal"
    );

    proxy.command("delay a-b 150");
    let took = round_trip(&mut stream, b"slow").expect("an echo through a delayed link");
    assert!(
        took >= Duration::from_millis(150),
        "a 150 ms delay took {took:?}"
    );
    proxy.command("heal all");

    proxy.command("drop all 100");
    let mut stream = proxy.connect();
    assert_eq!(
        round_trip(&mut stream, b"dropped"),
        None,
        "a 100 % drop forwarded bytes"
    );
}
