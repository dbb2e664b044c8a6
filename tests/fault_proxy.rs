//! The fault proxy (`understudy-chaos proxy`, `tests/support/chaos/main.rs`) against an
//! echo server: it forwards, a partition loses bytes and a heal closes the connections that
//! lost them, a delay holds bytes back, and a drop of 100 % resets connections. And the
//! write workload's stale-read check (`understudy-chaos write --read-through`) against two
//! toy key-value servers that do not share their data: it must see the stale reads.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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

/// A toy RESP server holding its own map: `SET key value` and `GET key`, nothing else.
fn toy_kv_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the toy server");
    let addr = listener.local_addr().expect("its address");
    let map: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let map = map.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone the stream");
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let mut read_line = |reader: &mut BufReader<TcpStream>| -> Option<String> {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => None,
                        Ok(_) => Some(line.trim_end().to_string()),
                    }
                };
                while let Some(header) = read_line(&mut reader) {
                    let count: usize = header.trim_start_matches('*').parse().expect("*N");
                    let mut words = Vec::new();
                    for _ in 0..count {
                        let len = read_line(&mut reader).expect("$len");
                        let len: usize = len.trim_start_matches('$').parse().expect("$len");
                        let mut word = vec![0u8; len + 2];
                        reader.read_exact(&mut word).expect("a word");
                        word.truncate(len);
                        words.push(word);
                    }
                    let reply = match words.first().map(Vec::as_slice) {
                        Some(b"SET") => {
                            map.lock()
                                .unwrap()
                                .insert(words[1].clone(), words[2].clone());
                            b"+OK\r\n".to_vec()
                        }
                        Some(b"GET") => match map.lock().unwrap().get(&words[1]) {
                            Some(value) => {
                                let mut reply = format!("${}\r\n", value.len()).into_bytes();
                                reply.extend_from_slice(value);
                                reply.extend_from_slice(b"\r\n");
                                reply
                            }
                            None => b"$-1\r\n".to_vec(),
                        },
                        _ => b"-ERR unknown command\r\n".to_vec(),
                    };
                    if writer.write_all(&reply).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `understudy-chaos write --read-through ADDRS`: the output, and whether it succeeded.
fn write_and_read(
    client: SocketAddr,
    read_through: &[SocketAddr],
    out: &std::path::Path,
) -> (bool, String) {
    let through: Vec<String> = read_through.iter().map(ToString::to_string).collect();
    let output = Command::new(env!("CARGO_BIN_EXE_understudy-chaos"))
        .args([
            "write",
            "--client",
            &client.to_string(),
            "--duration",
            "500ms",
        ])
        .args(["--out", &out.display().to_string()])
        .args(["--read-through", &through.join(",")])
        .output()
        .expect("run the writer");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_read_check_passes_reads_of_the_written_server_and_fails_those_of_another() {
    let dir = std::env::temp_dir().join(format!("understudy-read-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    let (written, elsewhere) = (toy_kv_server(), toy_kv_server());

    let (ok, text) = write_and_read(written, &[written], &dir.join("same"));
    assert!(
        ok,
        "reads of the server written to failed the check: {text}"
    );
    let reads: u64 = text
        .split_whitespace()
        .skip_while(|word| *word != "reads")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(reads > 10, "the reader hardly read: {text}");
    assert!(text.contains("stale 0"), "{text}");

    // A server that never saw the writes: every read it answers misses an acknowledged one.
    let (ok, text) = write_and_read(written, &[written, elsewhere], &dir.join("other"));
    assert!(!ok, "a server without the writes passed the check: {text}");
    assert!(text.contains("stale reads"), "{text}");
    assert!(text.contains(&format!("through {elsewhere}")), "{text}");
    assert!(text.contains("read nothing"), "{text}");
    assert!(!text.contains(&format!("through {written}")), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
