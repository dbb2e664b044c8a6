//! `understudy-chaos`: the test-support tool the crash-and-restart scripts
//! (`tests/scripts/*.sh`) drive. Test support only: not part of the sidecar.
//!
//! ```text
//! understudy-chaos proxy --control ADDR --link NAME=LISTEN,TARGET ... [--exit-after D]
//! understudy-chaos ctl ADDR COMMAND...
//! understudy-chaos write --client ADDR[,ADDR...] --out FILE --duration D [--prefix P]
//!                        [--value-len N] [--stop-file PATH] [--read-through ADDR[,ADDR...]]
//! understudy-chaos check --client ADDR --acked FILE [--timeout D]
//! understudy-chaos primary --admin ADDR[,ADDR...] [--timeout D]
//! understudy-chaos settle --admin ADDR[,ADDR...] [--timeout D] [--within N]
//! understudy-chaos watch --admin ADDR[,ADDR...] --duration D --out FILE [--stop-file PATH]
//! understudy-chaos demoted --admin ADDR --within D
//! understudy-chaos ports N
//! ```
//!
//! - `proxy`: a fault-injecting TCP proxy. Each `--link` forwards connections accepted on
//!   LISTEN to TARGET; the scripts put one link on each direction of each peer connection
//!   (node A dials node B through link `A-B`). Commands on the control port, one per line,
//!   answered with `ok ...` or `error ...`:
//!   `partition LINK|all` (stop forwarding: bytes are read and thrown away and new
//!   connections are accepted but never reach the target, as when packets are dropped in
//!   the network), `heal LINK|all` (close every connection that lost bytes, so the stream
//!   stays whole, and forward again), `delay LINK|all MS` (hold every chunk MS
//!   milliseconds, order kept), `drop LINK|all PERCENT` (reset a connection with this
//!   chance per chunk forwarded: TCP cannot lose bytes without losing the connection),
//!   `status`, `quit`. A link named in a command may be written `A-B`; `all` means every
//!   link. It exits by itself after `--exit-after` (default 1h).
//! - `ctl`: sends one command to a proxy's control port and prints the answer.
//! - `write`: a write workload against the key-value example (RESP `SET`), one write at a
//!   time (or `--pipeline N` writes sent together, then their N replies read), for
//!   `--duration`. Every write whose `+OK` arrived is appended to `--out` as
//!   `key value` before the next is sent; a write that failed or timed out is unknown (it
//!   may or may not have committed) and is not recorded. On an error it moves to the next
//!   client address. Keys are `<prefix><seq>` (default prefix `k<pid>-`), values `v<seq>`, padded with `.` to `--value-len` bytes.
//!   It stops early once `--stop-file` exists. Prints `acked N unknown M max_pause_ms P` at
//!   the end, `P` the longest time between two acknowledgements; with `--pauses FILE`, each
//!   pause of 20 ms or more is appended to FILE as `<unix ms at its end> <pause ms>`.
//!   With `--read-through`, a reader per address meanwhile reads (`GET`) the last write
//!   acknowledged before the read is sent, through that client port, over and over: the
//!   value must be there (a linearizable read sees every write acknowledged before it
//!   began). A refusal or an error is allowed; a read of nothing or of another value is a
//!   stale read, and the writer fails at the end, naming them. Prints `reads R refused F
//!   stale S` after the rest.
//! - `check`: reads every key in an `--acked` file through a client port (`MGET`, in
//!   batches) and fails, naming the first few, if any is missing or has another value.
//! - `primary`: waits until exactly one node's `/primary` answers 200 and prints its id.
//! - `settle`: waits until one node is primary and every listed node reports the primary's
//!   epoch and commit LSN equal to the primary's last LSN; prints that commit LSN. With
//!   `--within N`, within N records of it (a cluster still taking writes).
//! - `watch`: polls `/status` of every node every 20 ms for `--duration` and writes one
//!   line per observed change of (node, role, epoch) (stopping early once `--stop-file`
//!   exists), then checks that no two nodes were
//!   primary in the same epoch and prints `epochs N primaries-seen M`.
//! - `demoted`: polls one node's `/primary` until it stops answering 200 and prints how
//!   many milliseconds that took; fails if it takes longer than `--within`.
//! - `ports`: prints N free loopback ports between 20000 and 32000 (each checked by
//!   binding it), for a script to give its nodes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("proxy") => proxy::run(&args[1..]),
        Some("ctl") => ctl(&args[1..]),
        Some("write") => workload::write(&args[1..]),
        Some("check") => workload::check(&args[1..]),
        Some("primary") => admin::primary(&args[1..]),
        Some("settle") => admin::settle(&args[1..]),
        Some("watch") => admin::watch(&args[1..]),
        Some("demoted") => admin::demoted(&args[1..]),
        Some("ports") => ports(&args[1..]),
        _ => Err(
            "usage: understudy-chaos proxy|ctl|write|check|primary|settle|watch|demoted|ports ... \
                  (see tests/support/chaos/main.rs)"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("understudy-chaos: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `--flag value` pairs; a flag may repeat.
struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String]) -> Result<Flags, BoxError> {
        let mut pairs = Vec::new();
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            if !flag.starts_with("--") {
                return Err(format!("unexpected argument {flag:?}").into());
            }
            let value = iter.next().ok_or(format!("{flag} needs a value"))?;
            pairs.push((flag.clone(), value.clone()));
        }
        Ok(Flags(pairs))
    }
    fn all(&self, flag: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn get(&self, flag: &str) -> Option<&str> {
        self.all(flag).last().copied()
    }
    fn required(&self, flag: &str) -> Result<&str, BoxError> {
        self.get(flag)
            .ok_or_else(|| format!("{flag} is required").into())
    }
    fn duration(&self, flag: &str, default: Duration) -> Result<Duration, BoxError> {
        match self.get(flag) {
            None => Ok(default),
            Some(text) => {
                humantime::parse_duration(text).map_err(|e| format!("{flag} {text:?}: {e}").into())
            }
        }
    }
    fn addrs(&self, flag: &str) -> Result<Vec<SocketAddr>, BoxError> {
        let mut addrs = Vec::new();
        for list in self.all(flag) {
            for text in list.split(',').filter(|t| !t.is_empty()) {
                addrs.push(
                    text.parse()
                        .map_err(|e| format!("{flag} {text:?} is not IP:PORT: {e}"))?,
                );
            }
        }
        if addrs.is_empty() {
            return Err(format!("{flag} is required").into());
        }
        Ok(addrs)
    }
}

/// `ctl ADDR COMMAND...`: one command to a proxy, its answer on stdout.
fn ctl(args: &[String]) -> Result<(), BoxError> {
    let (addr, words) = args.split_first().ok_or("usage: ctl ADDR COMMAND...")?;
    let mut stream = TcpStream::connect(addr.as_str())
        .map_err(|e| format!("connect to the proxy's control port {addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(stream, "{}", words.join(" "))?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    let reply = reply.trim_end();
    println!("{reply}");
    if reply.starts_with("ok") {
        Ok(())
    } else {
        Err(format!("the proxy refused {:?}: {reply}", words.join(" ")).into())
    }
}

/// `ports N`: N distinct free loopback ports in 20000..32000, below the kernel's ephemeral
/// range (so no outgoing connection takes one before the node binds it), from an offset
/// derived from the PID so that two scripts rarely probe the same ones.
fn ports(args: &[String]) -> Result<(), BoxError> {
    let count: usize = args
        .first()
        .ok_or("usage: ports N")?
        .parse()
        .map_err(|e| format!("ports N: {e}"))?;
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    let mut found = Vec::new();
    for step in 0..SPAN {
        let port = u16::try_from(LOW + (start + step * 7) % SPAN)?;
        if !found.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            found.push(port);
            if found.len() == count {
                let text: Vec<String> = found.iter().map(u16::to_string).collect();
                println!("{}", text.join(" "));
                return Ok(());
            }
        }
    }
    Err(format!("fewer than {count} free ports in {LOW}..{}", LOW + SPAN).into())
}

mod proxy {
    use super::*;

    /// What a link does with the bytes it carries.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Faults {
        partitioned: bool,
        delay: Duration,
        /// Chance, in percent, that a connection is reset at each chunk.
        drop_percent: u32,
    }

    struct Link {
        name: String,
        target: SocketAddr,
        faults: Mutex<Faults>,
        /// Open connections: both sockets of each, so a heal or a drop can close them.
        conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    }

    impl Link {
        fn faults(&self) -> Faults {
            *lock(&self.faults)
        }
        fn close_all(&self) -> usize {
            let conns = std::mem::take(&mut *lock(&self.conns));
            for stream in conns.values().flatten() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            conns.len()
        }
        fn close(&self, id: u64) {
            if let Some(streams) = lock(&self.conns).remove(&id) {
                for stream in streams {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
        }
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        // A pump thread that panicked leaves the data as it was; keep going.
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
    static RANDOM: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

    /// A percent roll from a shared xorshift generator (no determinism needed here).
    fn roll_percent() -> u32 {
        let mut x = RANDOM.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        RANDOM.store(x, Ordering::Relaxed);
        (x % 100) as u32
    }

    pub fn run(args: &[String]) -> Result<(), BoxError> {
        let flags = Flags::parse(args)?;
        let control: SocketAddr = flags
            .required("--control")?
            .parse()
            .map_err(|e| format!("--control: {e}"))?;
        let exit_after = flags.duration("--exit-after", Duration::from_secs(3600))?;
        let mut links = Vec::new();
        for spec in flags.all("--link") {
            let (name, addrs) = spec
                .split_once('=')
                .ok_or(format!("--link {spec:?} is not NAME=LISTEN,TARGET"))?;
            let (listen, target) = addrs
                .split_once(',')
                .ok_or(format!("--link {spec:?} is not NAME=LISTEN,TARGET"))?;
            let listener = TcpListener::bind(listen)
                .map_err(|e| format!("--link {name}: bind {listen}: {e}"))?;
            let link = Arc::new(Link {
                name: name.to_string(),
                target: target.parse().map_err(|e| format!("--link {name}: {e}"))?,
                faults: Mutex::new(Faults {
                    partitioned: false,
                    delay: Duration::ZERO,
                    drop_percent: 0,
                }),
                conns: Mutex::new(HashMap::new()),
            });
            let accepting = Arc::clone(&link);
            std::thread::spawn(move || accept_loop(listener, accepting));
            links.push(link);
        }
        if links.is_empty() {
            return Err("at least one --link is needed".into());
        }
        let control = TcpListener::bind(control).map_err(|e| format!("bind --control: {e}"))?;
        let links = Arc::new(links);
        let (quit_tx, quit_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            for stream in control.incoming().flatten() {
                let links = Arc::clone(&links);
                let quit = quit_tx.clone();
                std::thread::spawn(move || control_session(stream, &links, &quit));
            }
        });
        eprintln!("understudy-chaos proxy: ready");
        // Bounded: a proxy a script forgot to stop ends by itself.
        let _ = quit_rx.recv_timeout(exit_after);
        Ok(())
    }

    fn accept_loop(listener: TcpListener, link: Arc<Link>) {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let link = Arc::clone(&link);
            std::thread::spawn(move || serve(client, link));
        }
    }

    /// One accepted connection: dial the target (unless partitioned) and pump both ways.
    fn serve(client: TcpStream, link: Arc<Link>) {
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        let Ok(client_read) = client.try_clone() else {
            return;
        };
        if link.faults().partitioned {
            // Accepted, but nothing reaches the target: the dialler sees a connection that
            // never answers. A heal closes it.
            lock(&link.conns).insert(id, vec![client]);
            discard(client_read);
            return;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&link.target, Duration::from_secs(2)) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        let _ = upstream.set_nodelay(true);
        let (Ok(upstream_read), Ok(upstream_handle), Ok(client_handle)) = (
            upstream.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
        ) else {
            return;
        };
        lock(&link.conns).insert(id, vec![client_handle, upstream_handle]);
        let back_link = Arc::clone(&link);
        std::thread::spawn(move || pump(upstream_read, client, &back_link, id));
        pump(client_read, upstream, &link, id);
    }

    fn discard(mut from: TcpStream) {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(read_len) = from.read(&mut buf) {
            if read_len == 0 {
                break;
            }
        }
    }

    /// Copies `from` to `to` applying the link's faults; a writer thread holds delayed
    /// chunks so that reading goes on while they wait (the delay does not accumulate).
    fn pump(mut from: TcpStream, to: TcpStream, link: &Arc<Link>, id: u64) {
        // Bounded: at most this many chunks wait in a delay.
        let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(1024);
        let writer_link = Arc::clone(link);
        let writer = std::thread::spawn(move || {
            let mut to = to;
            for (due, chunk) in rx {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if to.write_all(&chunk).is_err() {
                    writer_link.close(id);
                    break;
                }
            }
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read_len = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(read_len) => read_len,
            };
            let faults = link.faults();
            if faults.partitioned {
                // Lost in the network. The connection is closed at the heal, since its
                // stream now has a hole.
                continue;
            }
            if faults.drop_percent > 0 && roll_percent() < faults.drop_percent {
                break;
            }
            if tx
                .send((Instant::now() + faults.delay, buf[..read_len].to_vec()))
                .is_err()
            {
                break;
            }
        }
        drop(tx);
        link.close(id);
        let _ = writer.join();
    }

    fn control_session(stream: TcpStream, links: &[Arc<Link>], quit: &mpsc::Sender<()>) {
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let reply = match command(&line, links) {
                Ok(Some(text)) => format!("ok {text}"),
                Ok(None) => {
                    let _ = writeln!(out, "ok bye");
                    let _ = quit.send(());
                    return;
                }
                Err(err) => format!("error {err}"),
            };
            eprintln!("understudy-chaos proxy: {line} -> {reply}");
            if writeln!(out, "{reply}").is_err() {
                break;
            }
        }
    }

    /// Runs one control command; `Ok(None)` is `quit`.
    fn command(line: &str, links: &[Arc<Link>]) -> Result<Option<String>, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let select = |name: Option<&&str>| -> Result<Vec<&Arc<Link>>, String> {
            let name = name.ok_or("which link? (a name or all)")?;
            let chosen: Vec<_> = links
                .iter()
                .filter(|l| *name == "all" || l.name == *name)
                .collect();
            if chosen.is_empty() {
                return Err(format!("no link named {name}"));
            }
            Ok(chosen)
        };
        let number = |word: Option<&&str>, what: &str| -> Result<u64, String> {
            word.ok_or(format!("{what} is missing"))?
                .parse::<u64>()
                .map_err(|e| format!("{what}: {e}"))
        };
        match words.first().copied() {
            Some("partition") => {
                for link in select(words.get(1))? {
                    lock(&link.faults).partitioned = true;
                }
                Ok(Some("partitioned".into()))
            }
            Some("heal") => {
                let mut closed = 0;
                for link in select(words.get(1))? {
                    let was_partitioned = {
                        let mut faults = lock(&link.faults);
                        let was = faults.partitioned;
                        *faults = Faults {
                            partitioned: false,
                            delay: Duration::ZERO,
                            drop_percent: 0,
                        };
                        was
                    };
                    if was_partitioned {
                        closed += link.close_all();
                    }
                }
                Ok(Some(format!("healed, {closed} connections closed")))
            }
            Some("delay") => {
                let ms = number(words.get(2), "delay in ms")?;
                for link in select(words.get(1))? {
                    lock(&link.faults).delay = Duration::from_millis(ms);
                }
                Ok(Some(format!("delay {ms}ms")))
            }
            Some("drop") => {
                let percent = number(words.get(2), "drop percent")?;
                if percent > 100 {
                    return Err("drop percent above 100".into());
                }
                for link in select(words.get(1))? {
                    lock(&link.faults).drop_percent = percent as u32;
                }
                Ok(Some(format!("drop {percent}%")))
            }
            Some("status") => Ok(Some(
                links
                    .iter()
                    .map(|l| {
                        let f = l.faults();
                        format!(
                            "{}:{}{}ms/{}%/{}conns",
                            l.name,
                            if f.partitioned { "cut/" } else { "" },
                            f.delay.as_millis(),
                            f.drop_percent,
                            lock(&l.conns).len()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
            Some("quit") => Ok(None),
            _ => Err(format!("unknown command {line:?}")),
        }
    }
}

/// A RESP2 client of the key-value example, just enough for `SET` and `MGET`.
mod resp {
    use super::*;

    pub struct Conn {
        reader: BufReader<TcpStream>,
        writer: TcpStream,
    }

    /// One reply: simple string, error, integer, bulk string (`None` for nil), or array.
    #[derive(Debug, PartialEq)]
    pub enum Reply {
        Simple(String),
        Error(String),
        Integer(i64),
        Bulk(Option<Vec<u8>>),
        Array(Vec<Reply>),
    }

    impl Conn {
        pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
            let stream = TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            Ok(Conn {
                reader: BufReader::new(stream.try_clone()?),
                writer: stream,
            })
        }

        pub fn call(&mut self, words: &[&[u8]]) -> Result<Reply, BoxError> {
            let mut replies = self.pipeline(&[words]);
            replies.pop().unwrap_or_else(|| Err("no reply".into()))
        }

        /// Sends every command in one write, then reads their replies in order: one result
        /// per command; after the first error (a reply that could not be read) the rest are
        /// that error too.
        pub fn pipeline(&mut self, commands: &[&[&[u8]]]) -> Vec<Result<Reply, BoxError>> {
            let mut out = Vec::new();
            for words in commands {
                out.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
                for word in *words {
                    out.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
                    out.extend_from_slice(word);
                    out.extend_from_slice(b"\r\n");
                }
            }
            if let Err(error) = self.writer.write_all(&out) {
                return commands
                    .iter()
                    .map(|_| Err(error.to_string().into()))
                    .collect();
            }
            let mut replies = Vec::with_capacity(commands.len());
            let mut broken: Option<String> = None;
            for _ in commands {
                match &broken {
                    Some(error) => replies.push(Err(error.clone().into())),
                    None => {
                        let reply = self.reply();
                        if let Err(error) = &reply {
                            broken = Some(error.to_string());
                        }
                        replies.push(reply);
                    }
                }
            }
            replies
        }

        fn line(&mut self) -> Result<String, BoxError> {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err("connection closed".into());
            }
            Ok(line.trim_end_matches(['\r', '\n']).to_string())
        }

        fn reply(&mut self) -> Result<Reply, BoxError> {
            let line = self.line()?;
            let (kind, rest) = line.split_at_checked(1).ok_or("empty reply line")?;
            Ok(match kind {
                "+" => Reply::Simple(rest.to_string()),
                "-" => Reply::Error(rest.to_string()),
                ":" => Reply::Integer(rest.parse()?),
                "$" => {
                    let len: i64 = rest.parse()?;
                    if len < 0 {
                        Reply::Bulk(None)
                    } else {
                        let mut data = vec![0u8; usize::try_from(len)? + 2];
                        self.reader.read_exact(&mut data)?;
                        data.truncate(data.len() - 2);
                        Reply::Bulk(Some(data))
                    }
                }
                "*" => {
                    let count: i64 = rest.parse()?;
                    let mut items = Vec::new();
                    for _ in 0..count.max(0) {
                        items.push(self.reply()?);
                    }
                    Reply::Array(items)
                }
                _ => return Err(format!("unexpected reply {line:?}").into()),
            })
        }
    }
}

mod workload {
    use super::resp::{Conn, Reply};
    use super::*;

    const IO_TIMEOUT: Duration = Duration::from_secs(2);

    /// Pauses between acknowledgements at least this long are written to `--pauses`.
    const PAUSE_REPORTED_MIN: Duration = Duration::from_millis(20);

    pub fn write(args: &[String]) -> Result<(), BoxError> {
        let flags = Flags::parse(args)?;
        let clients = flags.addrs("--client")?;
        let out_path = flags.required("--out")?;
        let duration = flags.duration("--duration", Duration::from_secs(5))?;
        // Keys are unique per writer process, so two writers never overwrite each other.
        let prefix = match flags.get("--prefix") {
            Some(prefix) => prefix.to_string(),
            None => format!("k{}-", std::process::id()),
        };
        let value_len: usize = flags
            .get("--value-len")
            .unwrap_or("0")
            .parse()
            .map_err(|e| format!("--value-len: {e}"))?;
        let pipeline: usize = flags
            .get("--pipeline")
            .unwrap_or("1")
            .parse()
            .map_err(|e| format!("--pipeline: {e}"))?;
        if pipeline == 0 {
            return Err("--pipeline: at least 1".into());
        }
        let stop_file = flags.get("--stop-file").map(std::path::Path::new);
        let mut pauses = match flags.get("--pauses") {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("open {path}: {e}"))?,
            ),
            None => None,
        };
        let mut last_ack = Instant::now();
        let mut max_pause = Duration::ZERO;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out_path)
            .map_err(|e| format!("open {out_path}: {e}"))?;
        let readers = Readers::start(
            match flags.get("--read-through") {
                Some(_) => flags.addrs("--read-through")?,
                None => Vec::new(),
            },
            prefix.clone(),
            value_len,
        );
        let deadline = Instant::now() + duration;
        let (mut acked, mut unknown) = (0u64, 0u64);
        let mut which = 0usize;
        let mut conn: Option<Conn> = None;
        let mut seq = 0u64;
        while Instant::now() < deadline && !stop_file.is_some_and(|f| f.exists()) {
            let current = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::connect(clients[which % clients.len()], IO_TIMEOUT) {
                    Ok(c) => conn.insert(c),
                    Err(_) => {
                        which += 1;
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                },
            };
            let mut writes = Vec::with_capacity(pipeline);
            for _ in 0..pipeline {
                seq += 1;
                writes.push((format!("{prefix}{seq}"), value_of(seq, value_len)));
            }
            let commands: Vec<[&[u8]; 3]> = writes
                .iter()
                .map(|(key, value)| [&b"SET"[..], key.as_bytes(), value.as_bytes()])
                .collect();
            let commands: Vec<&[&[u8]]> = commands.iter().map(|words| &words[..]).collect();
            let mut failed = false;
            let first_seq = seq + 1 - writes.len() as u64;
            for (((key, value), reply), this_seq) in writes
                .iter()
                .zip(current.pipeline(&commands))
                .zip(first_seq..)
            {
                if failed {
                    unknown += 1;
                    continue;
                }
                match reply {
                    Ok(Reply::Simple(ok)) if ok == "OK" => {
                        // Recorded before the next write is sent: the file is the oracle. One
                        // write(2) per line, so writers sharing the file (O_APPEND) never
                        // interleave within a line.
                        out.write_all(format!("{key} {value}\n").as_bytes())?;
                        acked += 1;
                        // Published once acknowledged: a read sent from now on must see it.
                        readers.acked.store(this_seq, Ordering::SeqCst);
                        let pause = last_ack.elapsed();
                        last_ack = Instant::now();
                        max_pause = max_pause.max(pause);
                        if let (Some(file), true) = (pauses.as_mut(), pause >= PAUSE_REPORTED_MIN) {
                            let at = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default();
                            file.write_all(
                                format!("{} {}\n", at.as_millis(), pause.as_millis()).as_bytes(),
                            )?;
                        }
                    }
                    Ok(_) | Err(_) => {
                        // Refused, failed or timed out: it may or may not have committed, nor
                        // may the rest of the pipeline.
                        unknown += 1;
                        failed = true;
                    }
                }
            }
            if failed {
                conn = None;
                which += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        out.sync_all()?;
        let reads = readers.stop();
        println!(
            "acked {acked} unknown {unknown} max_pause_ms {} reads {} refused {} stale {}",
            max_pause.as_millis(),
            reads.reads,
            reads.refused,
            reads.stale.len()
        );
        if !reads.stale.is_empty() {
            return Err(format!(
                "{} stale reads (a write acknowledged before the read began was not seen): {}",
                reads.stale.len(),
                reads
                    .stale
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )
            .into());
        }
        Ok(())
    }

    /// The value written under sequence number `seq`: `v<seq>`, padded with `.`.
    fn value_of(seq: u64, value_len: usize) -> String {
        let mut value = format!("v{seq}");
        if value.len() < value_len {
            value.extend(std::iter::repeat_n('.', value_len - value.len()));
        }
        value
    }

    /// What the readers saw.
    #[derive(Default)]
    struct ReadTally {
        reads: u64,
        refused: u64,
        stale: Vec<String>,
    }

    /// The readers of `--read-through`: a thread per client address, each reading the last
    /// acknowledged write again and again until stopped.
    struct Readers {
        /// The sequence number of the last acknowledged write (0: none yet).
        acked: Arc<AtomicU64>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        threads: Vec<std::thread::JoinHandle<ReadTally>>,
    }

    impl Readers {
        fn start(addrs: Vec<SocketAddr>, prefix: String, value_len: usize) -> Readers {
            let acked = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let threads = addrs
                .into_iter()
                .map(|addr| {
                    let (acked, stop, prefix) = (acked.clone(), stop.clone(), prefix.clone());
                    std::thread::spawn(move || read_loop(addr, &acked, &stop, &prefix, value_len))
                })
                .collect();
            Readers {
                acked,
                stop,
                threads,
            }
        }

        fn stop(self) -> ReadTally {
            self.stop.store(true, Ordering::SeqCst);
            let mut total = ReadTally::default();
            for thread in self.threads {
                let tally = thread.join().unwrap_or_else(|_| ReadTally {
                    stale: vec!["a reader panicked".to_string()],
                    ..ReadTally::default()
                });
                total.reads += tally.reads;
                total.refused += tally.refused;
                total.stale.extend(tally.stale);
            }
            total
        }
    }

    /// Reads through `addr` until `stop`: each read asks for the write last acknowledged
    /// when it is sent, and must find its value.
    fn read_loop(
        addr: SocketAddr,
        acked: &AtomicU64,
        stop: &std::sync::atomic::AtomicBool,
        prefix: &str,
        value_len: usize,
    ) -> ReadTally {
        let mut tally = ReadTally::default();
        let mut conn: Option<Conn> = None;
        while !stop.load(Ordering::SeqCst) {
            let seq = acked.load(Ordering::SeqCst);
            if seq == 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let current = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::connect(addr, IO_TIMEOUT) {
                    Ok(c) => conn.insert(c),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                },
            };
            let key = format!("{prefix}{seq}");
            // Sent after `seq` was acknowledged: the read begins after that write ended.
            let sent = std::time::SystemTime::now();
            match current.call(&[b"GET", key.as_bytes()]) {
                Ok(Reply::Bulk(found)) => {
                    tally.reads += 1;
                    let expected = value_of(seq, value_len);
                    if found.as_deref() != Some(expected.as_bytes()) {
                        let at = sent
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis();
                        tally.stale.push(format!(
                            "GET {key} through {addr} sent at unix ms {at} read {}",
                            match found {
                                None => "nothing".to_string(),
                                Some(bytes) =>
                                    String::from_utf8_lossy(&bytes).chars().take(40).collect(),
                            }
                        ));
                    }
                }
                Ok(_) => {
                    // Refused (not primary, no lease, try again): nothing was read.
                    tally.refused += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    tally.refused += 1;
                    conn = None;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        tally
    }

    pub fn check(args: &[String]) -> Result<(), BoxError> {
        let flags = Flags::parse(args)?;
        let client = flags.addrs("--client")?[0];
        let acked_path = flags.required("--acked")?;
        let timeout = flags.duration("--timeout", Duration::from_secs(20))?;
        let text =
            std::fs::read_to_string(acked_path).map_err(|e| format!("read {acked_path}: {e}"))?;
        let acked: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|line| line.split_once(' '))
            .collect();
        let deadline = Instant::now() + timeout;
        // The primary may still be settling; retry the whole read until the deadline.
        loop {
            match check_once(client, &acked) {
                Ok(()) => {
                    println!("all {} acknowledged writes are readable", acked.len());
                    return Ok(());
                }
                Err(err) if Instant::now() < deadline => {
                    eprintln!("check: {err}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn check_once(client: SocketAddr, acked: &[(&str, &str)]) -> Result<(), BoxError> {
        let mut conn = Conn::connect(client, IO_TIMEOUT)?;
        let mut wrong = Vec::new();
        for batch in acked.chunks(500) {
            let mut words: Vec<&[u8]> = vec![b"MGET"];
            words.extend(batch.iter().map(|(key, _)| key.as_bytes()));
            let Reply::Array(values) = conn.call(&words)? else {
                return Err("MGET did not answer with an array".into());
            };
            if values.len() != batch.len() {
                return Err("MGET answered with the wrong number of values".into());
            }
            for ((key, expected), value) in batch.iter().zip(values) {
                let found = match value {
                    Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                    Reply::Bulk(None) => "(missing)".to_string(),
                    other => format!("{other:?}"),
                };
                if found != *expected {
                    let short = |text: &str| text.chars().take(40).collect::<String>();
                    wrong.push(format!(
                        "{key}: acked {}, read {}",
                        short(expected),
                        short(&found)
                    ));
                }
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} of {} acknowledged writes are not readable: {}",
            wrong.len(),
            acked.len(),
            wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        )
        .into())
    }
}

/// The admin HTTP API, through a plain HTTP/1.0 GET.
mod admin {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or("not an HTTP response")?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    fn status(addr: SocketAddr) -> Option<serde_json::Value> {
        let (code, body) = get(addr, "/status").ok()?;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    fn field(status: &serde_json::Value, name: &str) -> u64 {
        status.get(name).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    fn role(status: &serde_json::Value) -> &str {
        status.get("role").and_then(|v| v.as_str()).unwrap_or("?")
    }

    pub fn primary(args: &[String]) -> Result<(), BoxError> {
        let flags = Flags::parse(args)?;
        let admins = flags.addrs("--admin")?;
        let timeout = flags.duration("--timeout", Duration::from_secs(10))?;
        let deadline = Instant::now() + timeout;
        loop {
            let primaries: Vec<u64> = admins
                .iter()
                .filter_map(|addr| status(*addr))
                .filter(|s| role(s) == "primary" && s.get("lease_held") == Some(&true.into()))
                .map(|s| field(&s, "node_id"))
                .collect();
            if let [one] = primaries[..] {
                println!("{one}");
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no single primary within {timeout:?}: {primaries:?}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn settle(args: &[String]) -> Result<(), BoxError> {
        let flags = Flags::parse(args)?;
        let admins = flags.addrs("--admin")?;
        let timeout = flags.duration("--timeout", Duration::from_secs(20))?;
        // `--within N`: settled once every node is within N records of the primary's last
        // LSN (for a cluster still taking writes); 0, the default, means all equal.
        let within: u64 = flags
            .get("--within")
            .unwrap_or("0")
            .parse()
            .map_err(|e| format!("--within: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let all: Vec<Option<serde_json::Value>> = admins.iter().map(|a| status(*a)).collect();
            let statuses: Vec<&serde_json::Value> = all.iter().flatten().collect();
            let primaries: Vec<&&serde_json::Value> =
                statuses.iter().filter(|s| role(s) == "primary").collect();
            if let ([primary], true) = (&primaries[..], statuses.len() == admins.len()) {
                let (epoch, last_lsn) = (field(primary, "epoch"), field(primary, "last_lsn"));
                let settled = statuses.iter().all(|s| {
                    let near = |name| field(s, name) + within >= last_lsn;
                    field(s, "epoch") == epoch && near("commit_lsn") && near("durable_lsn")
                });
                if settled {
                    println!("{last_lsn}");
                    return Ok(());
                }
            }
            let last = statuses
                .iter()
                .map(|s| {
                    format!(
                        "node {} {} epoch {} last {} commit {}",
                        field(s, "node_id"),
                        role(s),
                        field(s, "epoch"),
                        field(s, "last_lsn"),
                        field(s, "commit_lsn")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            if Instant::now() > deadline {
                return Err(format!(
                    "the cluster did not settle within {timeout:?} ({} of {} nodes answer): {last}",
                    statuses.len(),
                    admins.len()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn demoted(args: &[String]) -> Result<(), BoxError> {
        let flags = Flags::parse(args)?;
        let admin = flags.addrs("--admin")?[0];
        let within = flags.duration("--within", Duration::from_secs(1))?;
        let start = Instant::now();
        // Give up well after `within`, to report how late it was.
        while start.elapsed() < within * 10 {
            if !matches!(get(admin, "/primary"), Ok((200, _))) {
                let elapsed = start.elapsed();
                println!("{}", elapsed.as_millis());
                if elapsed > within {
                    return Err(format!(
                        "node at {admin} served as primary for {elapsed:?}, more than {within:?}"
                    )
                    .into());
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!(
            "node at {admin} still serves as primary after {:?}",
            within * 10
        )
        .into())
    }

    pub fn watch(args: &[String]) -> Result<(), BoxError> {
        let flags = Flags::parse(args)?;
        let admins = flags.addrs("--admin")?;
        let duration = flags.duration("--duration", Duration::from_secs(10))?;
        let out_path = flags.required("--out")?;
        let stop_file = flags.get("--stop-file").map(std::path::Path::new);
        let mut out = std::fs::File::create(out_path).map_err(|e| format!("{out_path}: {e}"))?;
        let start = Instant::now();
        let mut seen: HashMap<u64, (String, u64)> = HashMap::new();
        // epoch -> the nodes seen serving as primary (holding the lease) in it.
        let mut primaries: HashMap<u64, Vec<u64>> = HashMap::new();
        while start.elapsed() < duration && !stop_file.is_some_and(|f| f.exists()) {
            for addr in &admins {
                let Some(s) = status(*addr) else { continue };
                let (node, epoch) = (field(&s, "node_id"), field(&s, "epoch"));
                let now = (role(&s).to_string(), epoch);
                if seen.get(&node) != Some(&now) {
                    writeln!(
                        out,
                        "{:>7}ms node {node} {} epoch {epoch}",
                        start.elapsed().as_millis(),
                        now.0
                    )?;
                    seen.insert(node, now);
                }
                if role(&s) == "primary" {
                    let nodes = primaries.entry(epoch).or_default();
                    if !nodes.contains(&node) {
                        nodes.push(node);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let split: Vec<_> = primaries.iter().filter(|(_, n)| n.len() > 1).collect();
        println!(
            "epochs {} primaries-seen {}",
            primaries.len(),
            primaries.values().map(Vec::len).sum::<usize>()
        );
        if !split.is_empty() {
            return Err(format!("two primaries in one epoch: {split:?}").into());
        }
        Ok(())
    }
}
