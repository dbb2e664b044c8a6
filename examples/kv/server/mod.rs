//! The replicated key-value server: RESP connections in, the [`Driver`] and the [`Store`]
//! behind them. `main.rs` parses flags and calls [`run`]; `understudy demo` compiles this
//! module into the `understudy` binary and runs it the same way (a hidden `demo-kv`
//! subcommand); `tests/kv_example.rs` runs [`serve`] in-process against a real cluster.
//!
//! - [`resp`]: the RESP2 request parser and reply encoder.
//! - [`command`]: a request's arguments to a [`Plan`]: an answer, a read or a write.
//! - [`codec`]: the binary record the writes are replicated as.
//! - [`store`]: the state machine, with `apply`, `snapshot`, `capture` and `restore`.
//! - `shards`: the store's map, in shards a snapshot's capture keeps without copying.
//!
//! # What a client is promised
//! - **Writes** are answered with what `apply` returned for them, so only once they are
//!   committed (on enough disks that no failover can lose them) and applied here.
//! - **Reads** on the primary are linearizable, and write nothing: the server asks its
//!   sidecar for a lease read ([`Driver::read_linearizable`]), which answers at once, while
//!   it holds its lease, with the LSN the state must reach, and answers from the state once
//!   that is applied (usually at once). Reads asked for together share one request. Reads
//!   that directly follow writes in the same pipeline need not ask: those writes committed
//!   after the reads arrived, so the state after them is recent enough.
//! - **On a backup** every read and write is answered `-NOTPRIMARY primary is node N at
//!   ADDR`, ADDR being the primary's client port. Clients normally connect through
//!   understudy's client port, which forwards to the primary's server and closes the
//!   connection when the primary changes, so they see this only if they connect here
//!   directly.
//! - `-UNKNOWN` answers a write whose outcome is unknown (the primary changed after taking
//!   it): it may or may not be committed. `-TRYAGAIN` answers a request that was not
//!   carried out and may be retried (a switchover in progress, a read that could not be
//!   confirmed before the primary changed).
//!
//! # Pipelining
//! A connection's requests are handled a pipeline at a time: every complete request in the
//! read buffer (up to [`PIPELINE_REQUESTS_MAX`]). Consecutive writes of a pipeline (with
//! answers that need no state in between) become one record (or several of up to
//! [`RECORD_SPLIT_LEN`]), so `redis-benchmark -P 16` costs one commit per 16 requests; a
//! run of reads shares one lease read. Replies go out in request order. Requests are read
//! again only once the pipeline's replies are written, so a connection's memory is one
//! pipeline's requests and replies. A client that keeps the connection full (a bulk load)
//! is read ahead up to [`PIPELINE_READ_LEN_MAX`] before its pipeline is handled, and the
//! records of a long run of writes are all queued before the first commits: one commit
//! round trip carries as much of the load as is there. At most
//! [`READ_AHEAD_CONNECTIONS_MAX`] connections are read ahead at once (with their records,
//! about 256 MiB in all); the others are read a buffer at a time, as a connection that
//! does not keep its socket full always is.
//!
//! A pipeline's writes are applied in request order, and each is answered for itself. When
//! they span several records, one record can be refused (`-TRYAGAIN`, say while the disk
//! is behind) or end `-UNKNOWN` while a later one commits, as with Redis, where each
//! command of a pipeline succeeds or fails on its own: a client that retries a refused
//! write applies it after the later writes of its pipeline.

pub mod codec;
pub mod command;
pub mod resp;
mod shards;
pub mod store;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};
use understudy::client::clients::Clients;
use understudy::client::{
    BoxError, ClientError, Driver, ProposeError, ReadError, Role, RoleInfo, Submitted,
};
use understudy::{Epoch, Lsn, NodeId};

use codec::{Batch, Op, HEADER_LEN, RECORD_LEN_MAX};
use command::{Plan, Read};
use resp::{ProtocolError, Reply, RequestParser};
pub use store::Store;

/// Requests handled as one pipeline at most; more wait in the buffer for the next.
pub const PIPELINE_REQUESTS_MAX: usize = 1024;

/// A connection's read buffer is filled up to this by reads that do not wait, while the
/// client keeps it full (see `read_ready`).
pub const PIPELINE_READ_LEN_MAX: usize = 8 << 20;

/// Connections whose buffers are read ahead ([`PIPELINE_READ_LEN_MAX`]) at once: a server
/// with many bulk-loading clients holds at most this many read-ahead buffers and the
/// records made of them (a copy: up to 16 MiB a turn, 256 MiB in all), not a pair per
/// connection (10,000 connections would be 160 GiB). A connection keeps its turn until its
/// read-ahead buffer is drained.
pub const READ_AHEAD_CONNECTIONS_MAX: usize = 16;

/// A run of writes becomes records of at most this many bytes (a longer write goes alone,
/// up to [`RECORD_LEN_MAX`]). The sidecar ships a record whole, and whatever it sends a
/// backup after it (the heartbeat that renews the primary's lease) waits behind it on the
/// link: a bulk load read ahead into 8 MiB records cost the primary its lease at a 300 ms
/// failover timeout on a busy 2-core machine. One MiB, a KiB short for the headers, is
/// what the sidecar puts in one append (`Config::append_bytes_max`). The records of a run
/// are all queued before the first commits (`Driver::submit`), so the split costs no
/// round trips.
pub const RECORD_SPLIT_LEN: usize = (1 << 20) - 1024;

/// Client connections served at once by default.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

/// What a connection reads at a time, at least.
const READ_LEN: usize = 16 << 10;

/// A connection's read or write buffer above this is given back once it is empty.
const BUFFER_KEEP_LEN_MAX: usize = 1 << 20;

/// How long to wait before accepting again after `accept` failed (say, out of file
/// descriptors), so the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Limits of the server.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Client connections served at once; more are answered an error and closed.
    pub connections_max: usize,
    /// Take the connections made to the primary's client port from the sidecar and serve
    /// them directly (app API `TakeClients`), rather than through its proxy.
    pub take_clients: bool,
    /// How far this server's wall clock reads from the machine's, in milliseconds: 0 but
    /// in tests of nodes whose clocks disagree. Expiry times count from the wall clock.
    pub clock_offset_ms: i64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            take_clients: true,
            clock_offset_ms: 0,
        }
    }
}

/// How long [`run`] keeps trying to reach the sidecar's socket at startup (the sidecar may
/// be starting at the same time).
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// The whole server: listens on `listen`, connects to the sidecar's app socket (retrying
/// for a while: the sidecar may be starting too), and serves until `shutdown` (then `Ok`)
/// or until the sidecar connection ends (then `Err`: restart the server with its sidecar;
/// it replays the log).
pub async fn run(
    app_socket: &Path,
    listen: SocketAddr,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let driver = Arc::new(connect(app_socket).await?);
    let clients = if config.take_clients {
        match Clients::connect(app_socket).await {
            Ok(clients) => Some(clients),
            Err(error) => {
                warn!(error = %error, "the sidecar does not hand its client port's connections over; they come through its proxy");
                None
            }
        }
    } else {
        None
    };
    let role = driver.role();
    info!(
        node = %driver.node_id(),
        role = ?role.role,
        epoch = %role.epoch,
        %listen,
        "serving"
    );
    serve(listener, driver, clients, config, shutdown).await?;
    info!("shut down");
    Ok(())
}

/// Connects to the sidecar, retrying while its socket is not there yet.
async fn connect(socket: &Path) -> Result<Driver<Store>, ClientError> {
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        match Driver::connect(socket, Store::default()).await {
            Ok(driver) => return Ok(driver),
            Err(ClientError::Connect { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Why [`serve`] stopped before it was told to.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The driver's connection to the sidecar ended; a new driver (and so a new server)
    /// is needed. Until then nothing could be committed or confirmed.
    #[error("lost the connection to the sidecar")]
    SidecarLost(#[source] Arc<ClientError>),
}

/// Serves RESP clients on `listener`, and those the sidecar hands over through `clients`
/// (its client port's connections while this node is primary), until `shutdown` completes
/// (then `Ok`) or the driver loses its sidecar (then `Err`). Either way, every connection
/// is closed before it returns; requests in flight are abandoned (a write already proposed
/// may still commit). A handed-over connection is closed as soon as this node stops being
/// primary, or is primary of a later epoch, as the client port closes the connections it
/// proxies: its client reconnects and finds the new primary.
pub async fn serve(
    listener: TcpListener,
    driver: Arc<Driver<Store>>,
    mut clients: Option<Clients>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.connections_max));
    let read_ahead = Arc::new(Semaphore::new(READ_AHEAD_CONNECTIONS_MAX));
    let sidecar_lost = driver.wait_applied(Lsn(u64::MAX));
    let mut roles = driver.watch_role();
    let mut era = Era::new(&stop, &roles.borrow_and_update());
    tokio::pin!(shutdown, sidecar_lost);
    let result = loop {
        let incoming = tokio::select! {
            () = &mut shutdown => break Ok(()),
            lost = &mut sidecar_lost => {
                let error = lost.err().unwrap_or_else(|| Arc::new(ClientError::Closed));
                break Err(ServeError::SidecarLost(error));
            }
            changed = roles.changed() => {
                if changed.is_ok() {
                    era.update(&stop, &roles.borrow_and_update());
                }
                continue;
            }
            accepted = listener.accept() => Incoming::Accepted(accepted),
            handed = handed(&mut clients) => Incoming::Handed(handed),
        };
        let (stream, peer, stop) = match incoming {
            Incoming::Accepted(Ok((stream, peer))) => (stream, peer, stop.clone()),
            Incoming::Accepted(Err(error)) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
            Incoming::Handed(Ok(Some(stream))) => {
                // Handed over while primary; if this node has stopped being primary since,
                // closing it makes its client reconnect to the new one.
                let Some(era) = era.serving() else {
                    debug!("a handed-over connection arrived after this node stopped being primary; closed");
                    continue;
                };
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                (stream, peer, era)
            }
            Incoming::Handed(Ok(None)) => {
                info!("the sidecar stopped handing its client port's connections over");
                clients = None;
                continue;
            }
            Incoming::Handed(Err(error)) => {
                warn!(error = %error, "taking client connections from the sidecar failed; they come through its proxy");
                clients = None;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            warn!(%peer, limit = config.connections_max, "too many connections; refusing one");
            // Best effort, as Redis does: the socket buffer takes this at once, or never.
            let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
            continue;
        };
        let driver = Arc::clone(&driver);
        let read_ahead = Arc::clone(&read_ahead);
        let clock = WallClock(config.clock_offset_ms);
        let span = tracing::debug_span!("client", %peer);
        connections.spawn(
            async move {
                debug!("connected");
                match serve_connection(stream, &driver, &read_ahead, clock, &stop).await {
                    Ok(()) => debug!("disconnected"),
                    Err(error) => debug!(%error, "connection failed"),
                }
                drop(permit);
            }
            .instrument(span),
        );
    };
    stop.cancel();
    connections.close();
    connections.wait().await;
    if let Err(error) = &result {
        info!(error = %error.to_string(), "stopped serving");
    }
    result
}

/// A connection to serve: accepted from the listener, or handed over by the sidecar.
enum Incoming {
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    Handed(Result<Option<TcpStream>, ClientError>),
}

/// The next connection the sidecar hands over; never, without `clients`.
async fn handed(clients: &mut Option<Clients>) -> Result<Option<TcpStream>, ClientError> {
    match clients {
        Some(clients) => clients.accept().await,
        None => std::future::pending().await,
    }
}

/// The stretch of time in which this node is primary of one epoch: handed-over connections
/// live within it and are closed when it ends.
struct Era {
    token: CancellationToken,
    role: Role,
    epoch: Epoch,
}

impl Era {
    fn new(stop: &CancellationToken, role: &RoleInfo) -> Era {
        Era {
            token: stop.child_token(),
            role: role.role,
            epoch: role.epoch,
        }
    }

    /// A new role report: a change of role or epoch ends the era.
    fn update(&mut self, stop: &CancellationToken, role: &RoleInfo) {
        if (role.role, role.epoch) != (self.role, self.epoch) {
            self.token.cancel();
            *self = Era::new(stop, role);
        }
    }

    /// The token to serve a handed-over connection under, while primary.
    fn serving(&self) -> Option<CancellationToken> {
        (self.role == Role::Primary).then(|| self.token.clone())
    }
}

/// Reads pipelines of requests and answers them, until the client leaves, a protocol error
/// that cannot be recovered from, QUIT, or `stop`.
async fn serve_connection(
    mut stream: TcpStream,
    driver: &Driver<Store>,
    read_ahead: &Arc<Semaphore>,
    clock: WallClock,
    stop: &CancellationToken,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::with_capacity(READ_LEN);
    // While the buffer is read ahead (`read_ready`), its turn of the server's read-ahead
    // budget: its allocation may be megabytes, more than its capacity shows once the parser
    // has taken from it.
    let mut ahead = None;
    let mut out = BytesMut::new();
    loop {
        let mut requests = Vec::new();
        let mut fatal = None;
        while requests.len() < PIPELINE_REQUESTS_MAX {
            match parser.parse(&mut buf) {
                Ok(Some(args)) => requests.push(Ok(args)),
                Ok(None) => break,
                Err(error) if error.recoverable => requests.push(Err(error)),
                Err(error) => {
                    fatal = Some(error);
                    break;
                }
            }
        }
        if requests.is_empty() && fatal.is_none() {
            if buf.is_empty() && (ahead.is_some() || buf.capacity() > BUFFER_KEEP_LEN_MAX) {
                buf = BytesMut::with_capacity(READ_LEN);
                ahead = None;
            }
            buf.reserve(READ_LEN);
            let room = buf.capacity() - buf.len();
            let read = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                read = stream.read_buf(&mut buf) => read?,
            };
            if read == 0 {
                return Ok(());
            }
            if read == room {
                read_ahead_in_turn(&stream, &mut buf, read_ahead, &mut ahead)?;
            }
            continue;
        }
        let quit = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            quit = execute(driver, clock, requests, &mut out) => quit,
        };
        if let Some(error) = &fatal {
            warn!(%error, "protocol error; closing the connection");
            protocol_error(error).encode(&mut out);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            written = stream.write_all(&out) => written?,
        }
        out.clear();
        if out.capacity() > BUFFER_KEEP_LEN_MAX {
            out = BytesMut::new();
        }
        if quit || fatal.is_some() {
            return stream.shutdown().await;
        }
    }
}

/// After a read that filled the buffer's room: reads ahead ([`read_ready`]) if this
/// connection holds a turn of the server's read-ahead budget (`ahead`), or can take one;
/// otherwise leaves the buffer as it is, to be handled a read at a time.
fn read_ahead_in_turn(
    stream: &TcpStream,
    buf: &mut BytesMut,
    budget: &Arc<Semaphore>,
    ahead: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> io::Result<()> {
    if ahead.is_none() {
        *ahead = Arc::clone(budget).try_acquire_owned().ok();
    }
    if ahead.is_some() {
        read_ready(stream, buf)?;
    }
    Ok(())
}

/// After a read that filled the buffer's room (the client is sending faster than one read
/// takes), reads on while more is ready at once, until the buffer holds
/// [`PIPELINE_READ_LEN_MAX`]: a long pipeline such as a bulk load is then handled in large
/// pieces, each one commit, not a read buffer per commit round trip. Never waits; an end
/// of stream is left for the next read to find.
fn read_ready(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    while buf.len() < PIPELINE_READ_LEN_MAX {
        let room = PIPELINE_READ_LEN_MAX - buf.len();
        buf.reserve(buf.len().max(READ_LEN).min(room));
        match stream.try_read_buf(&mut (&mut *buf).limit(room)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn protocol_error(error: &ProtocolError) -> Reply {
    Reply::error(format!("ERR Protocol error: {}", error.message))
}

/// The wall clock this server reads: the machine's, moved by [`Config::clock_offset_ms`].
#[derive(Debug, Clone, Copy)]
struct WallClock(i64);

impl WallClock {
    /// Milliseconds since the UNIX epoch (0 before it).
    fn now_ms(self) -> u64 {
        let machine = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        machine.saturating_add_signed(self.0)
    }
}

/// Handles one pipeline and appends its replies to `out`, in request order. True after
/// QUIT (the requests after it are dropped, as Redis does).
async fn execute(
    driver: &Driver<Store>,
    clock: WallClock,
    requests: Vec<Result<Vec<Bytes>, ProtocolError>>,
    out: &mut BytesMut,
) -> bool {
    // The proposer's clock for this pipeline's writes: never behind the store's, so a
    // relative expiry counts from the time `apply` will judge it by.
    let now_ms = clock.now_ms().max(driver.read(Store::clock_ms));
    let mut pipeline = Pipeline {
        driver,
        clock,
        now_ms,
        replies: Vec::with_capacity(requests.len()),
        writes: Vec::new(),
        reads: Vec::new(),
        fresh: false,
    };
    let mut quit = false;
    for request in requests {
        let plan = match request {
            Ok(args) => command::plan(args, now_ms),
            Err(error) => Plan::Now(protocol_error(&error)),
        };
        let index = pipeline.replies.len();
        pipeline.replies.push(None);
        match plan {
            Plan::Now(reply) => pipeline.replies[index] = Some(reply),
            Plan::Info(sections) => {
                pipeline.replies[index] = Some(info(driver, clock, &sections));
            }
            Plan::Quit => {
                pipeline.replies[index] = Some(Reply::ok());
                quit = true;
                break;
            }
            Plan::Write(op) => {
                pipeline.flush_reads().await;
                pipeline.writes.push((index, op));
            }
            Plan::Read(read) => {
                pipeline.flush_writes().await;
                pipeline.reads.push((index, read));
            }
        }
    }
    pipeline.flush_writes().await;
    pipeline.flush_reads().await;
    for reply in pipeline.replies {
        // Every request was answered above; a missing answer would be a bug here.
        let reply = reply.unwrap_or_else(|| Reply::error("ERR internal error: no reply"));
        reply.encode(out);
    }
    quit
}

/// A pipeline being handled: the replies so far, and the run of writes or reads waiting
/// to be carried out together (one of the two is always empty).
struct Pipeline<'a> {
    driver: &'a Driver<Store>,
    clock: WallClock,
    now_ms: u64,
    replies: Vec<Option<Reply>>,
    writes: Vec<(usize, Op)>,
    reads: Vec<(usize, Read)>,
    /// The last record this pipeline proposed committed, and nothing was read since:
    /// a read now needs no lease read of its own.
    fresh: bool,
}

impl Pipeline<'_> {
    /// Proposes the waiting writes, in records of up to [`RECORD_SPLIT_LEN`], and records
    /// their replies. Every record is queued before the first outcome is awaited, so a
    /// long run of writes (a bulk load) takes one commit round trip, not one per record;
    /// the log has them in request order.
    async fn flush_writes(&mut self) {
        let mut queued = Vec::new();
        let mut record: Vec<(usize, Op)> = Vec::new();
        let mut record_len = HEADER_LEN;
        for (index, op) in std::mem::take(&mut self.writes) {
            let op_len = op.encoded_len();
            if HEADER_LEN + op_len > RECORD_LEN_MAX {
                self.replies[index] = Some(Reply::error(format!(
                    "ERR the write takes {} bytes, above the record limit of {RECORD_LEN_MAX}",
                    HEADER_LEN + op_len
                )));
                continue;
            }
            if !record.is_empty() && record_len + op_len > RECORD_SPLIT_LEN {
                queued.push(self.submit(std::mem::take(&mut record)).await);
                record_len = HEADER_LEN;
            }
            record_len += op_len;
            record.push((index, op));
        }
        if !record.is_empty() {
            queued.push(self.submit(record).await);
        }
        for (indices, submitted) in queued {
            let result = match submitted {
                Ok(outcome) => outcome.await,
                Err(error) => Err(error),
            };
            self.fresh = result.is_ok();
            let replies = match result {
                Ok(replies) if replies.len() == indices.len() => replies,
                Ok(_) => vec![Reply::error(store::NOT_A_COMMAND); indices.len()],
                Err(error) => vec![propose_error_reply(&error); indices.len()],
            };
            for (index, reply) in indices.into_iter().zip(replies) {
                self.replies[index] = Some(reply);
            }
        }
    }

    /// Queues one record of writes; the indices of their replies, and its outcome to come.
    async fn submit(
        &self,
        record: Vec<(usize, Op)>,
    ) -> (Vec<usize>, Result<Submitted<Vec<Reply>>, ProposeError>) {
        let (indices, ops): (Vec<usize>, Vec<Op>) = record.into_iter().unzip();
        let batch = Batch {
            now_ms: self.now_ms,
            ops,
        };
        (indices, self.driver.submit(batch.encode()).await)
    }

    /// Answers the waiting reads with a lease read (the state once it reflects every write
    /// acknowledged before now), or, right after a write of this pipeline committed, from
    /// the state as it is.
    ///
    /// Expiry is judged at `max(wall clock, store clock)`. When a read's answer depends on
    /// this node's wall clock having passed an expiry that no record has reached yet (a
    /// key that expired by this clock and not by the store's), the read is not answered
    /// from it: a later primary whose clock is behind would show the key again. A barrier
    /// record stamped with the wall clock goes first (it moves the store's clock, on every
    /// node), and the reads are answered by the store's clock once it is applied. Under
    /// writes the store's clock follows the wall clock, so that record is rare.
    async fn flush_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.reads);
        let replies = &mut self.replies;
        let clock = self.clock;
        let mut ahead = false;
        let answer = |store: &Store| {
            let store_ms = store.clock_ms();
            let now_ms = clock.now_ms().max(store_ms);
            if now_ms > store_ms
                && reads
                    .iter()
                    .any(|(_, read)| read.expiry_passed_between(store, store_ms, now_ms))
            {
                ahead = true;
                return;
            }
            for (index, read) in &reads {
                replies[*index] = Some(read.answer(store, now_ms));
            }
        };
        let read = if std::mem::take(&mut self.fresh) {
            self.driver.read(answer);
            Ok(())
        } else {
            self.driver.read_linearizable(answer).await
        };
        let read = match read {
            Ok(()) if ahead => self
                .driver
                .propose(Batch::barrier(self.clock.now_ms()).encode())
                .await
                .map(|_| {
                    self.driver.read(|store| {
                        let now_ms = store.clock_ms();
                        for (index, read) in &reads {
                            self.replies[*index] = Some(read.answer(store, now_ms));
                        }
                    });
                })
                .map_err(|error| propose_error_reply(&error)),
            Ok(()) => Ok(()),
            Err(error) => Err(read_error_reply(&error)),
        };
        if let Err(reply) = read {
            for (index, _) in &reads {
                self.replies[*index] = Some(reply.clone());
            }
        }
    }
}

/// The answer to reads whose lease read failed: nothing was read.
fn read_error_reply(error: &ReadError) -> Reply {
    Reply::error(match error {
        ReadError::NotPrimary {
            primary,
            client_addr,
        } => not_primary_message(*primary, *client_addr),
        ReadError::Busy | ReadError::RoleChanged => {
            "TRYAGAIN the read could not be confirmed on the primary; retry".to_owned()
        }
        ReadError::Disconnected => "ERR not connected to the sidecar".to_owned(),
    })
}

/// `-NOTPRIMARY`'s message: where the primary is, as far as this node knows.
fn not_primary_message(primary: Option<NodeId>, client_addr: Option<SocketAddr>) -> String {
    match (primary, client_addr) {
        (Some(primary), Some(addr)) => format!("NOTPRIMARY primary is node {primary} at {addr}"),
        (Some(primary), None) => {
            format!("NOTPRIMARY primary is node {primary} at an unknown address")
        }
        (None, _) => "NOTPRIMARY no primary is known; retry shortly".to_owned(),
    }
}

/// The answer to a write whose proposal failed.
fn propose_error_reply(error: &ProposeError) -> Reply {
    Reply::error(match error {
        ProposeError::NotPrimary {
            primary,
            client_addr,
        } => not_primary_message(*primary, *client_addr),
        ProposeError::Busy => "TRYAGAIN the primary is handing over; retry shortly".to_owned(),
        ProposeError::Unknown => {
            "UNKNOWN the write may or may not be committed; read before retrying".to_owned()
        }
        ProposeError::Failed(message) => format!("ERR this node cannot write: {message}"),
        ProposeError::Disconnected => "ERR not connected to the sidecar".to_owned(),
        ProposeError::TooLarge { len, max } => {
            format!("ERR the write takes {len} bytes, above the record limit of {max}")
        }
    })
}

/// INFO: `server`, `replication` and `keyspace` sections (all three by default). Read from
/// this node's state as it is: a report, not a linearizable read.
fn info(driver: &Driver<Store>, clock: WallClock, sections: &[String]) -> Reply {
    let wants = |name: &str| {
        sections.is_empty()
            || sections
                .iter()
                .any(|s| s == name || s == "all" || s == "default" || s == "everything")
    };
    let mut text = String::new();
    if wants("server") {
        text.push_str("# Server\r\n");
        text.push_str(&format!(
            "understudy_version:{}\r\nnode_id:{}\r\nprocess_id:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            driver.node_id(),
            std::process::id()
        ));
    }
    if wants("replication") {
        let role = driver.role();
        let applied_lsn = driver.applied_lsn();
        text.push_str("# Replication\r\n");
        let role_name = match role.role {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Candidate => "candidate",
        };
        text.push_str(&format!("role:{role_name}\r\n"));
        text.push_str(&format!("node_id:{}\r\n", driver.node_id()));
        text.push_str(&format!("epoch:{}\r\n", role.epoch));
        match role.primary {
            Some(primary) => text.push_str(&format!("primary_node:{primary}\r\n")),
            None => text.push_str("primary_node:none\r\n"),
        }
        if let Some(addr) = role.primary_client_addr {
            text.push_str(&format!("primary_client_addr:{addr}\r\n"));
        }
        // The sidecar reports its commit LSN with role changes, not every commit; what is
        // applied here is committed too, so the larger of the two is the best known.
        text.push_str(&format!(
            "commit_lsn:{}\r\n",
            role.commit_lsn.max(applied_lsn)
        ));
        text.push_str(&format!("applied_lsn:{applied_lsn}\r\n\r\n"));
    }
    if wants("keyspace") {
        let (keys, expires) = driver.read(|store| {
            let now_ms = clock.now_ms().max(store.clock_ms());
            (store.live_count(now_ms), store.expiring_count(now_ms))
        });
        text.push_str("# Keyspace\r\n");
        if keys > 0 {
            text.push_str(&format!("db0:keys={keys},expires={expires}\r\n"));
        }
    }
    Reply::Bulk(Bytes::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client sending more than [`PIPELINE_READ_LEN_MAX`] is read ahead to exactly that
    /// many bytes, in order, whatever sizes the reads come in, and no further.
    #[tokio::test]
    async fn a_full_connection_is_read_ahead_to_the_limit_and_no_further() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent: Vec<u8> = (0..PIPELINE_READ_LEN_MAX + (3 << 20))
            .map(|i| (i % 251) as u8)
            .collect();
        let client = tokio::spawn({
            let sent = sent.clone();
            async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                // Stops with an error once the server has read what it means to and gone.
                let _ = stream.write_all(&sent).await;
            }
        });
        let (stream, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while buf.len() < PIPELINE_READ_LEN_MAX {
            tokio::time::timeout(Duration::from_secs(10), stream.readable())
                .await
                .expect("the client keeps sending")
                .unwrap();
            read_ready(&stream, &mut buf).unwrap();
            assert!(
                buf.len() <= PIPELINE_READ_LEN_MAX,
                "read {} bytes",
                buf.len()
            );
        }
        assert!(
            buf[..] == sent[..PIPELINE_READ_LEN_MAX],
            "the bytes read differ"
        );
        read_ready(&stream, &mut buf).unwrap();
        assert_eq!(buf.len(), PIPELINE_READ_LEN_MAX, "read on past the limit");

        // A buffer a little short of the limit takes exactly what is missing.
        let mut buf = BytesMut::from(&sent[..PIPELINE_READ_LEN_MAX - 1000]);
        while buf.len() < PIPELINE_READ_LEN_MAX {
            stream.readable().await.unwrap();
            read_ready(&stream, &mut buf).unwrap();
            assert!(
                buf.len() <= PIPELINE_READ_LEN_MAX,
                "read {} bytes",
                buf.len()
            );
        }
        drop(stream);
        client.await.unwrap();
    }

    /// Read-ahead takes a turn of the server's budget and keeps it: a connection that finds
    /// every turn taken is not read ahead (its buffer holds what one read brought), and reads
    /// ahead once a turn is given back.
    #[tokio::test]
    async fn a_connection_is_read_ahead_only_in_its_turn_of_the_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = vec![7u8; 4 << 20];
        let client = tokio::spawn({
            let sent = sent.clone();
            async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let _ = stream.write_all(&sent).await;
            }
        });
        let (stream, _) = listener.accept().await.unwrap();
        let budget = Arc::new(Semaphore::new(1));
        let taken = Arc::clone(&budget).try_acquire_owned().unwrap();
        let mut ahead = None;
        // Every turn taken: a buffer of one read stays as it is, however much is waiting.
        let mut buf = BytesMut::with_capacity(READ_LEN);
        while buf.len() < READ_LEN {
            stream.readable().await.unwrap();
            let _ = stream.try_read_buf(&mut buf);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        read_ahead_in_turn(&stream, &mut buf, &budget, &mut ahead).unwrap();
        assert_eq!(buf.len(), READ_LEN, "read ahead without a turn");
        assert!(ahead.is_none());
        // A turn given back: taken, and the buffer read ahead.
        drop(taken);
        read_ahead_in_turn(&stream, &mut buf, &budget, &mut ahead).unwrap();
        assert!(buf.len() > READ_LEN, "not read ahead in its turn");
        assert!(ahead.is_some() && budget.available_permits() == 0);
        // Kept while the connection reads ahead again.
        read_ahead_in_turn(&stream, &mut buf, &budget, &mut ahead).unwrap();
        assert_eq!(budget.available_permits(), 0);
        drop(ahead);
        assert_eq!(budget.available_permits(), 1);
        drop(stream);
        client.await.unwrap();
    }
}
