//! The demo's client: a minimal RESP2 client, the writer that SETs one new key after
//! another through a client port and records every acknowledged write with its time, and
//! the read-back that checks each acknowledged key.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an answer may take before the connection is given up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed attempt before the next.
const RETRY_DELAY: Duration = Duration::from_millis(10);
/// Keys per MGET when reading back.
const READ_BACK_CHUNK: usize = 500;
/// Attempts per MGET chunk before the read-back gives up.
const READ_BACK_ATTEMPTS: u32 = 50;

/// A RESP2 value as a server sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// One RESP connection.
pub(super) struct Resp {
    stream: TcpStream,
    buf: BytesMut,
}

impl Resp {
    pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<Resp> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr}: timed out"))?
            .map_err(|e| anyhow!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            stream,
            buf: BytesMut::with_capacity(16 << 10),
        })
    }

    /// Sends one command and reads its answer (an error reply is `Ok(Value::Error)`).
    pub(super) async fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Value> {
        let request = encode(args);
        tokio::time::timeout(REPLY_TIMEOUT, async {
            self.stream.write_all(&request).await?;
            loop {
                if let Some((value, used)) = parse(&self.buf)? {
                    self.buf.advance(used);
                    return Ok(value);
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    bail!("the connection was closed");
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no answer within {} s", REPLY_TIMEOUT.as_secs()))?
    }
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One value from the start of `buf` and the bytes it took, or `None` if it is not all
/// there yet.
fn parse(buf: &[u8]) -> anyhow::Result<Option<(Value, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, rest)) = buf[..end].split_first() else {
        bail!("an empty line where a RESP value should start");
    };
    let line = std::str::from_utf8(rest).map_err(|_| anyhow!("a RESP line is not UTF-8"))?;
    let after = end + 2;
    let number = || -> anyhow::Result<i64> {
        line.parse()
            .map_err(|_| anyhow!("{line:?} is not a RESP length or integer"))
    };
    Ok(match kind {
        b'+' => Some((Value::Simple(line.to_string()), after)),
        b'-' => Some((Value::Error(line.to_string()), after)),
        b':' => Some((Value::Integer(number()?), after)),
        b'$' => match number()? {
            -1 => Some((Value::Bulk(None), after)),
            len => {
                let len = usize::try_from(len).map_err(|_| anyhow!("bulk length {len}"))?;
                if buf.len() < after + len + 2 {
                    return Ok(None);
                }
                let data = buf[after..after + len].to_vec();
                Some((Value::Bulk(Some(data)), after + len + 2))
            }
        },
        b'*' => match number()? {
            -1 => Some((Value::Array(None), after)),
            count => {
                let count = usize::try_from(count).map_err(|_| anyhow!("array length {count}"))?;
                let mut items = Vec::with_capacity(count.min(4096));
                let mut at = after;
                for _ in 0..count {
                    match parse(&buf[at..])? {
                        Some((item, used)) => {
                            items.push(item);
                            at += used;
                        }
                        None => return Ok(None),
                    }
                }
                Some((Value::Array(Some(items)), at))
            }
        },
        other => bail!("a RESP value cannot start with {:?}", char::from(other)),
    })
}

/// The key and value of write number `seq`.
pub(super) fn key_value(seq: u64) -> (String, String) {
    (format!("demo:{seq:07}"), format!("value-{seq}"))
}

/// What the writer has done so far.
#[derive(Debug, Default)]
pub(super) struct Log {
    /// Every acknowledged write: its number and when the acknowledgement arrived, in order.
    pub(super) acks: Vec<(u64, Instant)>,
    /// Attempts that were not acknowledged: an error answer, or the connection cut or
    /// refused before the answer. Their outcome is unknown; the check does not count them.
    pub(super) failed: u64,
    /// Connections opened.
    pub(super) connections: u64,
    /// The last reason an attempt failed.
    pub(super) last_error: Option<String>,
    /// The writer was stopped.
    pub(super) stopped: bool,
}

impl Log {
    /// Acknowledgements in the last second.
    pub(super) fn rate(&self, now: Instant) -> usize {
        let since = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let first = self.acks.partition_point(|(_, at)| *at <= since);
        self.acks.len() - first
    }

    /// The last acknowledgement at or before `at`, and the first after it.
    pub(super) fn around(&self, at: Instant) -> (Option<Instant>, Option<Instant>) {
        let split = self.acks.partition_point(|(_, when)| *when <= at);
        let before = split.checked_sub(1).map(|i| self.acks[i].1);
        let after = self.acks.get(split).map(|(_, when)| *when);
        (before, after)
    }

    /// The longest time between two consecutive acknowledgements from the last one at or
    /// before `from` to the first one after `to`, as (the earlier, the later); `None` until
    /// there is an acknowledgement after `to`.
    pub(super) fn longest_gap_around(
        &self,
        from: Instant,
        to: Instant,
    ) -> Option<(Instant, Instant)> {
        let first = self.acks.partition_point(|(_, when)| *when <= from);
        let last = self.acks.partition_point(|(_, when)| *when <= to);
        if last >= self.acks.len() {
            return None;
        }
        self.acks[first.saturating_sub(1)..=last]
            .windows(2)
            .map(|pair| (pair[0].1, pair[1].1))
            .max_by_key(|(earlier, later)| later.saturating_duration_since(*earlier))
    }

    /// The longest time between two acknowledgements after `from`.
    pub(super) fn longest_gap_since(&self, from: Instant) -> Duration {
        let start = self.acks.partition_point(|(_, when)| *when < from);
        self.acks[start.saturating_sub(1)..]
            .windows(2)
            .map(|pair| pair[1].1.saturating_duration_since(pair[0].1))
            .max()
            .unwrap_or_default()
    }
}

/// Where the writer sends its writes: a node and its client port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) node: u16,
    pub(super) addr: SocketAddr,
}

/// The writer task: one SET at a time through one client port, reconnecting whenever the
/// connection is cut (as the client port does when the primary changes).
pub(super) struct Writer {
    log: Arc<Mutex<Log>>,
    target: watch::Sender<Target>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(target: Target) -> Writer {
        let log = Arc::new(Mutex::new(Log::default()));
        let (target_tx, target_rx) = watch::channel(target);
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_loop(Arc::clone(&log), target_rx, stop.clone()));
        Writer {
            log,
            target: target_tx,
            stop,
            task: Some(task),
        }
    }

    pub(super) fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.log)
    }

    pub(super) fn shared_log(&self) -> Arc<Mutex<Log>> {
        Arc::clone(&self.log)
    }

    pub(super) fn target(&self) -> Target {
        *self.target.borrow()
    }

    /// Follows the writer's target.
    pub(super) fn subscribe(&self) -> watch::Receiver<Target> {
        self.target.subscribe()
    }

    /// Moves the writer to another client port (it reconnects there).
    pub(super) fn retarget(&self, target: Target) {
        self.target.send_replace(target);
    }

    /// Stops writing; a write in flight is abandoned (and not counted as acknowledged).
    pub(super) async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        lock(&self.log).stopped = true;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub(super) fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn write_loop(
    log: Arc<Mutex<Log>>,
    mut target: watch::Receiver<Target>,
    stop: CancellationToken,
) {
    let mut connection: Option<Resp> = None;
    let mut seq = 0u64;
    loop {
        if target.has_changed().unwrap_or(false) {
            target.mark_unchanged();
            connection = None;
        }
        let addr = target.borrow().addr;
        let step = async {
            let mut con = match connection.take() {
                Some(con) => con,
                None => match Resp::connect(addr).await {
                    Ok(con) => {
                        lock(&log).connections += 1;
                        con
                    }
                    Err(error) => {
                        // A refused connect reached no server: it is not a write attempt.
                        lock(&log).last_error = Some(format!("{error:#}"));
                        tokio::time::sleep(RETRY_DELAY).await;
                        return;
                    }
                },
            };
            seq += 1;
            let (key, value) = key_value(seq);
            let answer = con
                .command(&[b"SET", key.as_bytes(), value.as_bytes()])
                .await;
            let now = Instant::now();
            let acknowledged = {
                let mut log = lock(&log);
                match answer {
                    Ok(Value::Simple(ok)) if ok == "OK" => {
                        log.acks.push((seq, now));
                        connection = Some(con);
                        true
                    }
                    Ok(other) => {
                        log.failed += 1;
                        log.last_error = Some(match other {
                            Value::Error(text) => text,
                            other => format!("unexpected answer {other:?}"),
                        });
                        connection = Some(con);
                        false
                    }
                    Err(error) => {
                        log.failed += 1;
                        log.last_error = Some(format!("{error:#}"));
                        false
                    }
                }
            };
            if !acknowledged {
                tokio::time::sleep(RETRY_DELAY).await;
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = step => {}
        }
    }
}

/// Reads every acknowledged key back through `addr` (MGET in chunks, retried on errors and
/// cut connections) and returns the numbers of those missing or with another value.
pub(super) async fn read_back(addr: SocketAddr, seqs: &[u64]) -> anyhow::Result<Vec<u64>> {
    let mut missing = Vec::new();
    let mut connection: Option<Resp> = None;
    for chunk in seqs.chunks(READ_BACK_CHUNK) {
        let keys: Vec<(String, String)> = chunk.iter().map(|&seq| key_value(seq)).collect();
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().map(|(key, _)| key.as_bytes()));
        let mut attempt = 0;
        let values = loop {
            attempt += 1;
            let answer = match connection.take() {
                Some(con) => Ok(con),
                None => Resp::connect(addr).await,
            };
            let error = match answer {
                Ok(mut con) => match con.command(&args).await {
                    Ok(Value::Array(Some(values))) if values.len() == keys.len() => {
                        connection = Some(con);
                        break values;
                    }
                    Ok(other) => {
                        connection = Some(con);
                        format!("MGET answered {other:?}")
                    }
                    Err(error) => format!("{error:#}"),
                },
                Err(error) => format!("{error:#}"),
            };
            if attempt >= READ_BACK_ATTEMPTS {
                bail!("reading back through {addr} failed {attempt} times; the last: {error}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for ((&seq, (_, expected)), value) in chunk.iter().zip(&keys).zip(values) {
            if value != Value::Bulk(Some(expected.clone().into_bytes())) {
                missing.push(seq);
            }
        }
    }
    Ok(missing)
}

/// One field of `INFO replication` from the server at `addr` (a key-value app, directly).
pub(super) async fn info_field(addr: SocketAddr, field: &str) -> anyhow::Result<String> {
    let mut con = Resp::connect(addr).await?;
    let text = match con.command(&[b"INFO", b"replication"]).await? {
        Value::Bulk(Some(text)) => String::from_utf8_lossy(&text).into_owned(),
        other => bail!("INFO answered {other:?}"),
    };
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().to_string())
        .ok_or_else(|| anyhow!("INFO replication has no {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Value::Simple("OK".into()), 5))
        );
        assert_eq!(
            parse(b"-ERR no\r\nrest").unwrap(),
            Some((Value::Error("ERR no".into()), 9))
        );
        assert_eq!(parse(b":42\r\n").unwrap(), Some((Value::Integer(42), 5)));
        assert_eq!(parse(b"$3\r\nab").unwrap(), None);
        assert_eq!(
            parse(b"*2\r\n$1\r\na\r\n$-1\r\n").unwrap(),
            Some((
                Value::Array(Some(vec![
                    Value::Bulk(Some(b"a".to_vec())),
                    Value::Bulk(None)
                ])),
                16
            ))
        );
        assert_eq!(parse(b"*2\r\n$1\r\na\r\n").unwrap(), None);
        assert!(parse(b"?x\r\n").is_err());
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&[b"SET", b"k", b"v1"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n"
        );
    }

    #[test]
    fn the_log_finds_the_pause_around_a_moment() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let log = Log {
            acks: vec![(1, at(0)), (2, at(10)), (4, at(700)), (5, at(705))],
            ..Log::default()
        };
        assert_eq!(log.around(at(100)), (Some(at(10)), Some(at(700))));
        assert_eq!(log.around(at(800)), (Some(at(705)), None));
        assert_eq!(log.longest_gap_since(at(5)), Duration::from_millis(690));
        assert_eq!(
            log.longest_gap_around(at(5), at(10)),
            Some((at(10), at(700)))
        );
        assert_eq!(
            log.longest_gap_around(at(5), at(701)),
            Some((at(10), at(700)))
        );
        assert_eq!(
            log.longest_gap_around(at(702), at(702)),
            Some((at(700), at(705)))
        );
        assert_eq!(log.longest_gap_around(at(5), at(705)), None);
        assert_eq!(log.rate(at(1500)), 2);
    }
}
