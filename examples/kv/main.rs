//! A replicated key-value server that speaks RESP2, so Redis clients (`redis-cli`,
//! `redis-benchmark`, client libraries) work against it unchanged. It is built on
//! `understudy::client`: writes are committed through the sidecar before they are
//! acknowledged, and reads on the primary are linearizable. The server itself is in
//! `server/`; this file parses flags.
//!
//! ```text
//! cargo run --release --example kv -- --app-socket PATH --listen ADDR [--connections-max N]
//!     [--no-take-clients]
//! ```
//!
//! `--app-socket` is the sidecar's `--app-socket`; `--listen` is where this server takes
//! clients, and the sidecar's `--app-addr` must name the same address: the sidecar's client
//! port forwards there while this node is primary. Clients should connect to the client
//! ports, not to `--listen`: a backup's client port forwards to the primary, and every
//! client port closes its connections when the primary changes, so a client reconnects and
//! lands on the new one.
//!
//! While its node is primary the server takes the connections made to that node's client
//! port itself (app API `TakeClients`: the sidecar hands each accepted socket over instead
//! of copying its bytes through a proxy) and closes them when the node stops being primary.
//! `--no-take-clients` leaves them to the proxy.
//!
//! `understudy demo` runs three sidecars with this server beside each on loopback; with
//! `--keep` it leaves them running: point `redis-cli -p PORT` at any client port it prints.
//! By hand, for node 1 of three (nodes 2 and 3 alike, with their own ports, sockets and
//! directories):
//!
//! ```text
//! head -c 32 /dev/urandom | base64 > /tmp/kv-secret && chmod 600 /tmp/kv-secret
//! understudy run --node-id 1 --data-dir /tmp/kv1 --cluster-secret-file /tmp/kv-secret \
//!     --peer-listen 127.0.0.1:7101 --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103 \
//!     --app-socket /tmp/kv1.sock --client-listen 127.0.0.1:6401 --app-addr 127.0.0.1:6501 &
//! cargo run --release --example kv -- --app-socket /tmp/kv1.sock --listen 127.0.0.1:6501 &
//!
//! redis-cli -p 6402 set greeting hello        # any node's client port reaches the primary
//! redis-cli -p 6403 get greeting
//! redis-cli -p 6401 info replication          # role, epoch, commit_lsn, applied_lsn
//! redis-benchmark -p 6401 -t set,get -P 16 -q
//! ```
//!
//! Supported commands: PING, ECHO, QUIT, SELECT 0, INFO; GET, MGET, EXISTS, DBSIZE, TTL,
//! PTTL; SET (NX|XX, GET, EX|PX|EXAT|PXAT|KEEPTTL), DEL, INCR, INCRBY, DECR, DECRBY, MSET,
//! FLUSHALL. Others are answered with an error. The server exits (status 1) when its
//! sidecar connection ends, to be restarted with the sidecar: it then replays the log.

mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use server::Config;

const USAGE: &str =
    "usage: kv --app-socket PATH --listen ADDR [--connections-max N] [--no-take-clients]";

struct Args {
    app_socket: PathBuf,
    listen: SocketAddr,
    config: Config,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut app_socket, mut listen, mut config) = (None, None, Config::default());
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--app-socket" => app_socket = Some(PathBuf::from(value()?)),
            "--listen" => {
                let text = value()?;
                let addr = text
                    .parse()
                    .map_err(|e| format!("--listen {text:?} is not IP:PORT: {e}"))?;
                listen = Some(addr);
            }
            "--connections-max" => {
                let text = value()?;
                config.connections_max = text.parse().ok().filter(|&max| max > 0).ok_or(
                    format!("--connections-max {text:?} is not a positive number"),
                )?;
            }
            "--no-take-clients" => config.take_clients = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        app_socket: app_socket.ok_or("--app-socket is required")?,
        listen: listen.ok_or("--listen is required")?,
        config,
    })
}

/// One thread: the server's work per request is a few system calls and a map update, and a
/// request crosses three tasks (its connection, the driver's writer, the driver's reader).
/// On a multi-threaded runtime those hops are wake-ups between threads, a `futex` call
/// each; on one thread they are queue pushes. The sidecar runs the same way.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("kv: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match server::run(
        &args.app_socket,
        args.listen,
        args.config,
        shutdown_signal(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kv: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
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
