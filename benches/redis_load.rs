//! The RESP client programs behind `benches/redis_compare.sh`'s follow-mode comparison,
//! for what `redis-benchmark` and `redis-cli` cannot do:
//!
//! ```text
//! redis_load load  --addr IP:PORT [--connections 50] [--pipeline 16] [--requests N]
//!                  [--keyspace 100000] [--value-len 3] [--wait REPLICAS]
//!                  [--wait-per set|batch] [--name NAME]
//! redis_load writer --ports IP:PORT,... --acked FILE
//! redis_load check  --addr IP:PORT --acked FILE
//! redis_load probe  --since-ns NS (--ports IP:PORT,... | --sentinel IP:PORT --not PORT)
//! ```
//!
//! - `load`: `SET key:<12 digits> xxx` (a random key below `--keyspace`, a value of
//!   `--value-len` bytes, 3 by default, as `redis-benchmark -t set -r` sends), with `--wait
//!   R` each `SET` followed by `WAIT R 0` (the pair is acknowledged once R replicas have the
//!   write), or with `--wait-per batch` one `WAIT R 0` after each batch's `SET`s (every `SET`
//!   of the batch is acknowledged by it). Like `redis-benchmark -P`, each connection writes
//!   `--pipeline` requests at once and reads all their replies before writing the next
//!   batch; a request's latency runs from its batch's write to the reply that acknowledges
//!   it (its own, or the `WAIT`'s that follows it). Prints one line in `redis-benchmark
//!   --csv`'s format: requests/s (`SET`s, not counting the `WAIT`s) and the latency columns
//!   in ms. Any reply other than `+OK` (and `WAIT`'s count short of R) fails the run.
//! - `writer`: `SET chk:<n> <n>` with n = 0, 1, 2, ..., one at a time, through the first of
//!   `--ports` that answers (the next one after an error); every n acknowledged with `+OK`
//!   is appended to `--acked`, one a line. Runs until SIGTERM or SIGINT, then prints its
//!   counts, the longest time between two acknowledgements and what the failed ones got.
//! - `check`: reads back every key `--acked` lists (pipelined `GET`s through `--addr`) and
//!   prints `acknowledged writes checked: N, lost: M` (M keys missing or with another
//!   value); exits 1 if any is lost.
//! - `probe`: a failover's end as a client sees it. With `--ports`: one prober per port,
//!   each trying `SET` every 2 ms (a fresh connection after each failure, a 2 s reply
//!   timeout; the failures seen, by kind, go to stderr); with `--sentinel`: asks the
//!   Sentinel for master `bench` and, once it names a port other than `--not`, tries `SET`
//!   then `WAIT 1 100` on it. Prints the milliseconds from `--since-ns` (wall clock, ns
//!   since the epoch, e.g. `date +%s%N` just before the kill) to the first success; gives
//!   up (exit 1) after 60 s.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mode = args.next().unwrap_or_default();
    let mut flags = std::collections::HashMap::new();
    while let Some(flag) = args.next() {
        let Some(name) = flag.strip_prefix("--") else {
            fail(&format!("unexpected argument {flag:?}"));
        };
        let value = args
            .next()
            .unwrap_or_else(|| fail(&format!("--{name} needs a value")));
        flags.insert(name.to_owned(), value);
    }
    let result = match mode.as_str() {
        "load" => load(&flags),
        "writer" => writer(&flags),
        "check" => check(&flags),
        "probe" => probe(&flags),
        _ => fail("usage: redis_load load|writer|check|probe --flag value ... (see the source)"),
    };
    if let Err(e) = result {
        fail(&e.to_string());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("redis_load: {message}");
    std::process::exit(2);
}

fn flag<T: std::str::FromStr>(
    flags: &std::collections::HashMap<String, String>,
    name: &str,
    default: Option<T>,
) -> Result<T, Error> {
    match flags.get(name) {
        Some(value) => value
            .parse()
            .map_err(|_| format!("--{name}: cannot read {value:?}").into()),
        None => default.ok_or_else(|| format!("--{name} is required").into()),
    }
}

fn addrs(list: &str) -> Result<Vec<SocketAddr>, Error> {
    list.split(',')
        .map(|a| a.parse().map_err(|_| format!("not IP:PORT: {a:?}").into()))
        .collect()
}

/// One command in RESP.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

// ---- load ------------------------------------------------------------------------------

fn load(flags: &std::collections::HashMap<String, String>) -> Result<(), Error> {
    let addr: SocketAddr = flag(flags, "addr", None)?;
    let connections: usize = flag(flags, "connections", Some(50))?;
    let pipeline: usize = flag(flags, "pipeline", Some(16))?;
    let requests: usize = flag(flags, "requests", Some(100_000))?;
    let keyspace: u64 = flag(flags, "keyspace", Some(100_000))?;
    let value_len: usize = flag(flags, "value-len", Some(3))?;
    let wait: u32 = flag(flags, "wait", Some(0))?;
    let wait_per: WaitPer = flag(flags, "wait-per", Some(WaitPer::Set))?;
    let default_name = match (wait, wait_per) {
        (0, _) => "SET".into(),
        (_, WaitPer::Set) => format!("SET+WAIT {wait}"),
        (_, WaitPer::Batch) => format!("SET x{pipeline}+WAIT {wait}"),
    };
    let name: String = flag(flags, "name", Some(default_name))?;
    let load = Load {
        requests,
        pipeline,
        keyspace,
        value: vec![b'x'; value_len],
        wait: (wait > 0).then_some((wait, wait_per)),
    };
    let load = Arc::new(load);
    // One thread, as redis-benchmark: on a small machine more would take cores from Redis.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut latencies, elapsed) = runtime.block_on(async move {
        // Every connection first, as redis-benchmark does, then the clock starts.
        let mut streams = Vec::new();
        for _ in 0..connections {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            streams.push(stream);
        }
        let issued = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(index, stream)| {
                let issued = Arc::clone(&issued);
                tokio::spawn(connection(stream, index as u64, issued, Arc::clone(&load)))
            })
            .collect();
        let mut all = Vec::with_capacity(requests);
        for task in tasks {
            all.extend(task.await??);
        }
        Ok::<_, Error>((all, started.elapsed()))
    })?;
    latencies.sort_unstable();
    let at = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies
            .get(i)
            .copied()
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
            * 1e3
    };
    let average = latencies.iter().map(Duration::as_secs_f64).sum::<f64>()
        / latencies.len().max(1) as f64
        * 1e3;
    println!("\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"");
    println!(
        "\"{name}\",\"{:.2}\",\"{average:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\"",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.0),
        at(0.5),
        at(0.95),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

/// Where `load --wait R` puts its `WAIT R 0`s.
#[derive(Clone, Copy)]
enum WaitPer {
    /// After every `SET`: a pair per request.
    Set,
    /// After the last `SET` of each batch.
    Batch,
}

impl std::str::FromStr for WaitPer {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        match text {
            "set" => Ok(WaitPer::Set),
            "batch" => Ok(WaitPer::Batch),
            _ => Err(()),
        }
    }
}

/// What every connection of `load` sends.
struct Load {
    requests: usize,
    pipeline: usize,
    keyspace: u64,
    value: Vec<u8>,
    /// The replicas `WAIT` asks for, and where it goes; `None`: no `WAIT`.
    wait: Option<(u32, WaitPer)>,
}

/// One connection's share of the requests, a batch of `pipeline` at a time.
async fn connection(
    stream: tokio::net::TcpStream,
    index: u64,
    issued: Arc<AtomicUsize>,
    load: Arc<Load>,
) -> Result<Vec<Duration>, Error> {
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut latencies = Vec::new();
    // xorshift64*, a different seed per connection.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (index + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let wait = load.wait.map_or(0, |(replicas, _)| replicas);
    let wait_arg = wait.to_string();
    let wait_per_set = matches!(load.wait, Some((_, WaitPer::Set)));
    let wait_per_batch = matches!(load.wait, Some((_, WaitPer::Batch)));
    let mut batch = Vec::new();
    let mut line = String::new();
    loop {
        let first = issued.fetch_add(load.pipeline, Ordering::Relaxed);
        if first >= load.requests {
            return Ok(latencies);
        }
        let count = load.pipeline.min(load.requests - first);
        batch.clear();
        for _ in 0..count {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let mut number = state.wrapping_mul(0x2545_F491_4F6C_DD1D) % load.keyspace;
            let mut key = *b"key:000000000000";
            for digit in key[4..].iter_mut().rev() {
                *digit = b'0' + (number % 10) as u8;
                number /= 10;
            }
            encode(&mut batch, &[b"SET", &key, &load.value]);
            if wait_per_set {
                encode(&mut batch, &[b"WAIT", wait_arg.as_bytes(), b"0"]);
            }
        }
        if wait_per_batch {
            encode(&mut batch, &[b"WAIT", wait_arg.as_bytes(), b"0"]);
        }
        let at = Instant::now();
        write.write_all(&batch).await?;
        for _ in 0..count {
            line.clear();
            read.read_line(&mut line).await?;
            if line != "+OK\r\n" {
                return Err(format!("SET answered {:?}", line.trim_end()).into());
            }
            if wait_per_set {
                connection_wait_reply(&mut read, &mut line, wait).await?;
            }
            if !wait_per_batch {
                latencies.push(at.elapsed());
            }
        }
        if wait_per_batch {
            // The batch's SETs are acknowledged together, by this reply.
            connection_wait_reply(&mut read, &mut line, wait).await?;
            let took = at.elapsed();
            latencies.extend(std::iter::repeat_n(took, count));
        }
    }
}

/// Reads the reply to `WAIT wait 0`; an error unless it counts `wait` replicas or more.
async fn connection_wait_reply(
    read: &mut (impl tokio::io::AsyncBufRead + Unpin),
    line: &mut String,
    wait: u32,
) -> Result<(), Error> {
    line.clear();
    read.read_line(line).await?;
    let acked: Option<u32> = line
        .strip_prefix(':')
        .and_then(|n| n.trim_end().parse().ok());
    if acked.is_none_or(|acked| acked < wait) {
        return Err(format!("WAIT {wait} 0 answered {:?}", line.trim_end()).into());
    }
    Ok(())
}

// ---- one command at a time, blocking -----------------------------------------------------

#[derive(Debug, PartialEq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

fn read_reply(stream: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad reply {line:?}"),
        )
    };
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let mut data = vec![0; len as usize + 2];
                std::io::Read::read_exact(stream, &mut data)?;
                data.truncate(len as usize);
                Reply::Bulk(Some(data))
            }
        }
        "*" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            let mut items = Vec::new();
            for _ in 0..len.max(0) {
                items.push(read_reply(stream)?);
            }
            Reply::Array(items)
        }
        _ => return Err(bad()),
    })
}

fn connect(addr: SocketAddr, reply_timeout: Duration) -> std::io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(reply_timeout))?;
    stream.set_write_timeout(Some(reply_timeout))?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

fn command(stream: &mut BufReader<TcpStream>, args: &[&[u8]]) -> std::io::Result<Reply> {
    let mut request = Vec::new();
    encode(&mut request, args);
    stream.get_mut().write_all(&request)?;
    read_reply(stream)
}

/// Set once SIGTERM or SIGINT arrives.
fn stop_on_signal() -> Result<Arc<AtomicBool>, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                let _ = ready_tx.send(false);
                return;
            };
            let _ = ready_tx.send(true);
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            flag.store(true, Ordering::Relaxed);
        })
    });
    if ready_rx.recv() != Ok(true) {
        return Err("cannot install the signal handlers".into());
    }
    Ok(stop)
}

// ---- writer ------------------------------------------------------------------------------

fn writer(flags: &std::collections::HashMap<String, String>) -> Result<(), Error> {
    let ports = addrs(&flag::<String>(flags, "ports", None)?)?;
    let path: String = flag(flags, "acked", None)?;
    let mut out = BufWriter::new(std::fs::File::create(&path)?);
    let stop = stop_on_signal()?;
    let (mut sent, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut longest_gap = Duration::ZERO;
    let mut last_ack = Instant::now();
    let mut connection = None;
    let mut turn = 0;
    let mut n = 0u64;
    let mut replies = std::collections::BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            connection = connect(ports[turn % ports.len()], Duration::from_secs(3)).ok();
            turn += 1;
            if connection.is_none() {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
        }
        let stream = connection.as_mut().expect("connected");
        let (key, value) = (format!("chk:{n}"), n.to_string());
        sent += 1;
        match command(stream, &[b"SET", key.as_bytes(), value.as_bytes()]) {
            Ok(Reply::Status(s)) if s == "OK" => {
                writeln!(out, "{n}")?;
                acked += 1;
                longest_gap = longest_gap.max(last_ack.elapsed());
                last_ack = Instant::now();
            }
            // An error reply: not acknowledged; the next port.
            Ok(reply) => {
                *replies.entry(reply_kind(&reply)).or_insert(0u64) += 1;
                failed += 1;
                connection = None;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                *replies.entry(format!("({})", e.kind())).or_insert(0u64) += 1;
                failed += 1;
                connection = None;
            }
        }
        n += 1;
    }
    out.flush()?;
    println!(
        "writer: {sent} SETs sent, {acked} acknowledged, {failed} failed or unanswered; longest time between two acknowledgements {:.0} ms",
        longest_gap.as_secs_f64() * 1e3
    );
    if !replies.is_empty() {
        let tally: Vec<String> = replies.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        println!("writer: what the failed ones got: {}", tally.join(", "));
    }
    Ok(())
}

/// A reply's kind for the tallies: an error's first word, `(io kind)` for no reply.
fn reply_kind(reply: &Reply) -> String {
    match reply {
        Reply::Error(e) => format!("-{}", e.split(' ').next().unwrap_or_default()),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}

// ---- check -------------------------------------------------------------------------------

fn check(flags: &std::collections::HashMap<String, String>) -> Result<(), Error> {
    let addr: SocketAddr = flag(flags, "addr", None)?;
    let path: String = flag(flags, "acked", None)?;
    let acked: Vec<u64> = std::fs::read_to_string(&path)?
        .lines()
        .map(|l| {
            l.parse()
                .map_err(|_| format!("{path}: not a number: {l:?}"))
        })
        .collect::<Result<_, _>>()?;
    let mut stream = connect(addr, Duration::from_secs(10))?;
    let mut lost = Vec::new();
    for chunk in acked.chunks(1000) {
        let mut request = Vec::new();
        for n in chunk {
            encode(&mut request, &[b"GET", format!("chk:{n}").as_bytes()]);
        }
        stream.get_mut().write_all(&request)?;
        for n in chunk {
            match read_reply(&mut stream)? {
                Reply::Bulk(Some(value)) if value == n.to_string().as_bytes() => {}
                Reply::Error(e) => return Err(format!("GET chk:{n}: {e}").into()),
                _ => lost.push(*n),
            }
        }
    }
    println!(
        "acknowledged writes checked: {}, lost: {}",
        acked.len(),
        lost.len()
    );
    if !lost.is_empty() {
        let some: Vec<String> = lost.iter().take(20).map(|n| format!("chk:{n}")).collect();
        println!("lost, the first ones: {}", some.join(" "));
        std::process::exit(1);
    }
    Ok(())
}

// ---- probe -------------------------------------------------------------------------------

fn probe(flags: &std::collections::HashMap<String, String>) -> Result<(), Error> {
    let since_ns: u128 = flag(flags, "since-ns", None)?;
    let since = UNIX_EPOCH + Duration::from_nanos(since_ns as u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (done_tx, done_rx) = mpsc::channel::<SystemTime>();
    let tally = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    if let Some(sentinel) = flags.get("sentinel") {
        let sentinel: SocketAddr = sentinel.parse().map_err(|_| "--sentinel: not IP:PORT")?;
        let old: u16 = flag(flags, "not", None)?;
        std::thread::spawn(move || loop {
            if sentinel_try(sentinel, old) {
                let _ = done_tx.send(SystemTime::now());
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        });
    } else {
        for port in addrs(&flag::<String>(flags, "ports", None)?)? {
            let (done_tx, tally) = (done_tx.clone(), Arc::clone(&tally));
            std::thread::spawn(move || loop {
                let outcome = connect(port, Duration::from_secs(2))
                    .and_then(|mut s| command(&mut s, &[b"SET", b"failover:probe", b"1"]));
                let kind = match outcome {
                    Ok(Reply::Status(s)) if s == "OK" => {
                        let _ = done_tx.send(SystemTime::now());
                        return;
                    }
                    Ok(reply) => reply_kind(&reply),
                    Err(e) => format!("({})", e.kind()),
                };
                *tally
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(kind)
                    .or_insert(0u64) += 1;
                std::thread::sleep(Duration::from_millis(2));
            });
        }
        drop(done_tx);
    }
    let timeout = deadline.saturating_duration_since(Instant::now());
    let at = done_rx
        .recv_timeout(timeout)
        .map_err(|_| "no write succeeded within 60 s")?;
    let took = at.duration_since(since).unwrap_or_default();
    println!("{:.0}", took.as_secs_f64() * 1e3);
    let tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    if !tally.is_empty() {
        let tally: Vec<String> = tally.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        eprintln!("probe: failed attempts before: {}", tally.join(", "));
    }
    Ok(())
}

/// Whether the Sentinel names a master other than port `old` and a `SET` on it is on a
/// replica within 100 ms.
fn sentinel_try(sentinel: SocketAddr, old: u16) -> bool {
    let Ok(mut s) = connect(sentinel, Duration::from_secs(2)) else {
        return false;
    };
    let Ok(Reply::Array(addr)) =
        command(&mut s, &[b"SENTINEL", b"get-master-addr-by-name", b"bench"])
    else {
        return false;
    };
    let [Reply::Bulk(Some(ip)), Reply::Bulk(Some(port))] = &addr[..] else {
        return false;
    };
    let (Ok(ip), Ok(port)) = (std::str::from_utf8(ip), std::str::from_utf8(port)) else {
        return false;
    };
    let Ok(master) = format!("{ip}:{port}").parse::<SocketAddr>() else {
        return false;
    };
    if master.port() == old {
        return false;
    }
    let Ok(mut m) = connect(master, Duration::from_secs(2)) else {
        return false;
    };
    command(&mut m, &[b"SET", b"failover:probe", b"1"])
        .is_ok_and(|r| r == Reply::Status("OK".into()))
        && matches!(command(&mut m, &[b"WAIT", b"1", b"100"]), Ok(Reply::Int(n)) if n >= 1)
}
