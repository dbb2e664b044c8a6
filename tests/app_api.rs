//! The app API server and the client driver against a fake core loop: a test task stands in
//! for the core, answering proposals by writing a real WAL in a temp dir and moving the
//! commit watch, so the server streams real records from a real log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use understudy::client::{
    BoxError, ClientError, Driver, ProposeError, ReadError, Role, StateMachine,
};
use understudy::core;
use understudy::node::app_api::serve;
use understudy::node::{NodeHandle, NodeStatus, ProposeOutcome, ReadOutcome, Request};
use understudy::proto::app::{Frame, FrameReader, RejectReason, FRAME_LEN_MAX, PROTOCOL_VERSION};
use understudy::{Epoch, Lsn, NodeId};
use wal::format::decode_record;
use wal::{RecordKind, Wal};

/// Every wait in these tests ends by this deadline; a hang is a failure, not a slow pass.
const DEADLINE: Duration = Duration::from_secs(5);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn status(
    role: core::Role,
    epoch: u64,
    primary: Option<u16>,
    addr: Option<SocketAddr>,
) -> NodeStatus {
    NodeStatus {
        epoch,
        primary,
        primary_client_addr: addr,
        lease_held: role == core::Role::Primary,
        ..NodeStatus::for_tests(role)
    }
}

/// A sidecar without a core: the app API server over a real WAL, with the core's channels
/// in the test's hands.
struct Sidecar {
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    wal: Arc<Mutex<Wal>>,
    status: watch::Sender<Arc<NodeStatus>>,
    commit: Arc<watch::Sender<Lsn>>,
    requests: Option<mpsc::Receiver<Request>>,
    node: NodeHandle,
}

impl Sidecar {
    fn start() -> Sidecar {
        Sidecar::start_at(Lsn(1))
    }

    /// A sidecar whose log starts at `start_lsn` (as after a snapshot).
    fn start_at(start_lsn: Lsn) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let options = wal::Options {
            start_lsn,
            ..wal::Options::default()
        };
        let (wal, _) = Wal::open(dir.path().join("wal"), options).unwrap();
        let (requests_tx, requests) = mpsc::channel(16);
        let (status, status_rx) = watch::channel(Arc::new(status(
            core::Role::Primary,
            1,
            Some(1),
            Some("127.0.0.1:7001".parse().unwrap()),
        )));
        let (commit, commit_rx) = watch::channel(start_lsn.prev());
        let handle =
            NodeHandle::for_tests(requests_tx, status_rx, commit_rx, wal.reader(), NodeId(1));
        let listener = UnixListener::bind(dir.path().join("app.sock")).unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, handle.clone(), shutdown.clone()));
        Sidecar {
            dir,
            shutdown,
            server,
            wal: Arc::new(Mutex::new(wal)),
            status,
            commit: Arc::new(commit),
            requests: Some(requests),
            node: handle,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("app.sock")
    }

    /// A driver of a [`Log`] connected to this sidecar.
    async fn driver(&self) -> Driver<Log> {
        within("connect", Driver::connect(self.socket(), Log::default()))
            .await
            .unwrap()
    }

    /// Writes records in epoch 1; they are not committed until [`Sidecar::commit_through`].
    fn write(&self, kind: RecordKind, payloads: &[&[u8]]) -> (Lsn, Lsn) {
        write(&self.wal, kind, payloads)
    }

    fn commit_through(&self, lsn: Lsn) {
        self.commit.send_replace(lsn);
    }

    /// Stands in for the core loop: every proposal is written and committed at once.
    /// Returns the count of proposals (`Append`s reaching the core) seen so far.
    fn run_committing_core(&mut self) -> Arc<AtomicUsize> {
        self.run_committing_core_after(None)
    }

    /// As [`Sidecar::run_committing_core`], but the first proposal is answered only once
    /// `gate` says the test is ready.
    fn run_committing_core_after(
        &mut self,
        gate: Option<watch::Receiver<bool>>,
    ) -> Arc<AtomicUsize> {
        let mut gate = gate;
        let mut requests = self.requests.take().expect("the core runs once");
        let wal = Arc::clone(&self.wal);
        let commit = Arc::clone(&self.commit);
        let proposals = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&proposals);
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                let Request::Propose {
                    payloads, reply, ..
                } = request
                else {
                    continue;
                };
                seen.fetch_add(1, Ordering::SeqCst);
                if let Some(mut gate) = gate.take() {
                    let _ = within("the gate", gate.wait_for(|open| *open)).await;
                }
                let payloads: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
                let (first_lsn, last_lsn) = write(&wal, RecordKind::App, &payloads);
                commit.send_replace(last_lsn);
                let _ = reply.send(ProposeOutcome::Committed {
                    first_lsn,
                    last_lsn,
                });
            }
        });
        proposals
    }

    /// Writes a proposal's records, commits them and answers it, as the core would.
    fn commit_proposal(
        &self,
        payloads: &[Bytes],
        reply: tokio::sync::oneshot::Sender<ProposeOutcome>,
    ) {
        let payloads: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        let (first_lsn, last_lsn) = self.write(RecordKind::App, &payloads);
        self.commit_through(last_lsn);
        reply
            .send(ProposeOutcome::Committed {
                first_lsn,
                last_lsn,
            })
            .unwrap();
    }

    /// The next lease read the server asks of the core.
    async fn next_read(&mut self) -> tokio::sync::oneshot::Sender<ReadOutcome> {
        let requests = self.requests.as_mut().expect("no core is running");
        match within("a read", requests.recv()).await {
            Some(Request::Read { reply }) => reply,
            other => panic!("expected a read, got {other:?}"),
        }
    }

    /// The next request the server makes of the core.
    async fn next_proposal(
        &mut self,
    ) -> (Vec<Bytes>, tokio::sync::oneshot::Sender<ProposeOutcome>) {
        let requests = self.requests.as_mut().expect("no core is running");
        match within("a proposal", requests.recv()).await {
            Some(Request::Propose {
                payloads, reply, ..
            }) => (payloads, reply),
            other => panic!("expected a proposal, got {other:?}"),
        }
    }
}

fn write(wal: &Mutex<Wal>, kind: RecordKind, payloads: &[&[u8]]) -> (Lsn, Lsn) {
    let mut wal = wal.lock().unwrap();
    wal.append(Epoch(1), kind, payloads.iter().copied())
        .unwrap()
}

/// A hand-driven app connection speaking raw frames.
struct Raw {
    frames: FrameReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Raw {
    async fn connect(socket: &Path) -> Raw {
        let stream = UnixStream::connect(socket).await.unwrap();
        let (read, write) = stream.into_split();
        Raw {
            frames: FrameReader::new(read),
            write,
        }
    }

    /// Connects and completes the handshake.
    async fn hello(socket: &Path) -> Raw {
        let mut raw = Raw::connect(socket).await;
        raw.send(Frame::Hello {
            version: PROTOCOL_VERSION,
        })
        .await;
        match raw.recv().await {
            Some(Frame::Welcome {
                version, node_id, ..
            }) => {
                assert_eq!(version, PROTOCOL_VERSION);
                assert_eq!(node_id, NodeId(1));
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
        raw
    }

    async fn send(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        self.send_bytes(&buf).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    /// The next frame other than a `Ping`, or `None` once the sidecar closed the connection.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            match within("a frame", self.frames.read_frame()).await.unwrap() {
                Some(Frame::Ping { .. }) => continue,
                other => return other,
            }
        }
    }

    /// Expects an `Error` frame and then the end of the connection.
    async fn expect_error_and_close(&mut self) -> String {
        let message = match self.recv().await {
            Some(Frame::Error { message }) => message,
            other => panic!("expected Error, got {other:?}"),
        };
        assert_eq!(
            self.recv().await,
            None,
            "the connection stays open after Error"
        );
        message
    }

    async fn append(&mut self, request_id: u64, payloads: &[&'static [u8]]) {
        let payloads = payloads.iter().map(|p| Bytes::from_static(p)).collect();
        self.send(Frame::Append {
            request_id,
            payloads,
        })
        .await;
    }

    /// Receives `Records` frames until `last_lsn`, returning `(lsn, kind, payload)` for each
    /// record and checking every record against its CRC.
    async fn records_through(&mut self, last_lsn: Lsn) -> Vec<(Lsn, RecordKind, Vec<u8>)> {
        let mut records = Vec::new();
        while records.last().map(|(lsn, _, _)| *lsn) != Some(last_lsn) {
            let Some(Frame::Records { bytes }) = self.recv().await else {
                panic!("expected Records after {:?}", records.last());
            };
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (record, len) = decode_record(rest).unwrap().unwrap();
                records.push((record.lsn, record.kind, record.payload.to_vec()));
                rest = &rest[len..];
            }
        }
        records
    }
}

/// Remembers every command it applied, in order; outputs how many it has applied.
#[derive(Default)]
struct Log(Vec<(Lsn, Vec<u8>)>);

impl StateMachine for Log {
    type Output = usize;
    fn apply(&mut self, lsn: Lsn, command: &[u8]) -> usize {
        self.0.push((lsn, command.to_vec()));
        self.0.len()
    }
    fn snapshot(&self) -> Vec<u8> {
        (self.0.len() as u64).to_le_bytes().to_vec()
    }
    fn restore(&mut self, lsn: Lsn, snapshot: &[u8]) -> Result<(), BoxError> {
        let count = u64::from_le_bytes(snapshot.try_into()?);
        self.0 = (0..count).map(|_| (lsn, b"restored".to_vec())).collect();
        Ok(())
    }
}

/// An append is answered with the LSNs its records got, once committed.
#[tokio::test]
async fn append_is_answered_with_its_lsn_range_once_committed() {
    let mut sidecar = Sidecar::start();
    sidecar.write(RecordKind::EpochStart, &[b""]);
    sidecar.commit_through(Lsn(1));
    sidecar.run_committing_core();
    let mut app = Raw::hello(&sidecar.socket()).await;
    app.append(7, &[b"a", b"b", b"c"]).await;
    assert_eq!(
        app.recv().await,
        Some(Frame::Appended {
            request_id: 7,
            first_lsn: Lsn(2),
            last_lsn: Lsn(4)
        })
    );
}

/// Appends on one connection are not serialised: the second is answered while the first
/// still waits for the core.
#[tokio::test]
async fn appends_in_flight_are_answered_in_any_order() {
    let mut sidecar = Sidecar::start();
    let mut app = Raw::hello(&sidecar.socket()).await;
    app.append(1, &[b"first"]).await;
    app.append(2, &[b"second"]).await;
    let (first_payloads, first_reply) = sidecar.next_proposal().await;
    let (second_payloads, second_reply) = sidecar.next_proposal().await;
    // Requests reach the core in the order sent.
    assert_eq!(first_payloads, vec![Bytes::from_static(b"first")]);
    assert_eq!(second_payloads, vec![Bytes::from_static(b"second")]);
    second_reply
        .send(ProposeOutcome::Committed {
            first_lsn: Lsn(2),
            last_lsn: Lsn(2),
        })
        .unwrap();
    assert!(matches!(
        app.recv().await,
        Some(Frame::Appended { request_id: 2, .. })
    ));
    first_reply.send(ProposeOutcome::Busy).unwrap();
    assert!(matches!(
        app.recv().await,
        Some(Frame::Rejected {
            request_id: 1,
            reason: RejectReason::Busy,
            ..
        })
    ));
}

/// The stream carries every committed record from the asked LSN, in order, epoch-start
/// records included, and never one above the commit LSN.
#[tokio::test]
async fn subscription_delivers_exactly_the_committed_records_in_order() {
    let sidecar = Sidecar::start();
    sidecar.write(RecordKind::EpochStart, &[b""]);
    let payloads: Vec<Vec<u8>> = (2..=10).map(|i| format!("r{i}").into_bytes()).collect();
    let payload_refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    sidecar.write(RecordKind::App, &payload_refs);
    sidecar.commit_through(Lsn(6));

    let mut app = Raw::hello(&sidecar.socket()).await;
    app.send(Frame::Subscribe { from_lsn: Lsn(1) }).await;
    assert!(matches!(
        app.recv().await,
        Some(Frame::Role {
            commit_lsn: Lsn(6),
            ..
        })
    ));
    let records = app.records_through(Lsn(6)).await;
    let lsns: Vec<u64> = records.iter().map(|(lsn, _, _)| lsn.get()).collect();
    assert_eq!(lsns, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(records[0].1, RecordKind::EpochStart);
    assert_eq!(records[1].2, b"r2");
    assert_eq!(records[5].2, b"r6");

    // Written records above the commit LSN come only once committed, and only as far.
    sidecar.commit_through(Lsn(8));
    let records = app.records_through(Lsn(8)).await;
    let lsns: Vec<u64> = records.iter().map(|(lsn, _, _)| lsn.get()).collect();
    assert_eq!(lsns, vec![7, 8]);

    // A second subscriber may start in the middle.
    let mut late = Raw::hello(&sidecar.socket()).await;
    late.send(Frame::Subscribe { from_lsn: Lsn(5) }).await;
    assert!(matches!(late.recv().await, Some(Frame::Role { .. })));
    let lsns: Vec<u64> = late
        .records_through(Lsn(8))
        .await
        .iter()
        .map(|(lsn, _, _)| lsn.get())
        .collect();
    assert_eq!(lsns, vec![5, 6, 7, 8]);
}

/// A subscription from above the commit LSN waits for the commit LSN to get there.
#[tokio::test]
async fn subscription_from_above_the_commit_lsn_starts_when_it_is_committed() {
    let sidecar = Sidecar::start();
    sidecar.write(RecordKind::App, &[b"a", b"b", b"c"]);
    sidecar.commit_through(Lsn(1));
    let mut app = Raw::hello(&sidecar.socket()).await;
    app.send(Frame::Subscribe { from_lsn: Lsn(3) }).await;
    assert!(matches!(app.recv().await, Some(Frame::Role { .. })));
    sidecar.commit_through(Lsn(3));
    let records = app.records_through(Lsn(3)).await;
    assert_eq!(records, vec![(Lsn(3), RecordKind::App, b"c".to_vec())]);
}

/// A subscription from an LSN the log no longer holds is refused: the app needs a snapshot.
#[tokio::test]
async fn subscription_below_the_log_start_is_refused() {
    let sidecar = Sidecar::start_at(Lsn(10));
    sidecar.write(RecordKind::App, &[b"x"]);
    sidecar.commit_through(Lsn(10));
    let mut app = Raw::hello(&sidecar.socket()).await;
    app.send(Frame::Subscribe { from_lsn: Lsn(1) }).await;
    assert!(matches!(app.recv().await, Some(Frame::Role { .. })));
    let message = app.expect_error_and_close().await;
    assert!(message.contains("snapshot"), "{message}");
}

/// Role frames come at subscribe and on every change of role, epoch or primary, and not
/// for status changes that touch none of them.
#[tokio::test]
async fn role_changes_are_pushed_to_subscribers() {
    let sidecar = Sidecar::start();
    let mut app = Raw::hello(&sidecar.socket()).await;
    app.send(Frame::Subscribe { from_lsn: Lsn(1) }).await;
    assert_eq!(
        app.recv().await,
        Some(Frame::Role {
            role: Role::Primary,
            epoch: Epoch(1),
            primary: Some(NodeId(1)),
            primary_client_addr: "127.0.0.1:7001".to_owned(),
            commit_lsn: Lsn(0),
        })
    );
    let mut same_role = status(
        core::Role::Primary,
        1,
        Some(1),
        Some("127.0.0.1:7001".parse().unwrap()),
    );
    same_role.last_lsn = 5;
    sidecar.status.send_replace(Arc::new(same_role));
    sidecar.status.send_replace(Arc::new(status(
        core::Role::Backup,
        2,
        Some(2),
        Some("127.0.0.1:7002".parse().unwrap()),
    )));
    assert_eq!(
        app.recv().await,
        Some(Frame::Role {
            role: Role::Backup,
            epoch: Epoch(2),
            primary: Some(NodeId(2)),
            primary_client_addr: "127.0.0.1:7002".to_owned(),
            commit_lsn: Lsn(0),
        })
    );
}

/// `Status` is answered with the node's status as JSON.
#[tokio::test]
async fn status_is_answered_with_json() {
    let sidecar = Sidecar::start();
    let mut app = Raw::hello(&sidecar.socket()).await;
    app.send(Frame::Status).await;
    let Some(Frame::StatusReply { json }) = app.recv().await else {
        panic!("expected StatusReply");
    };
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["role"], "primary");
    assert_eq!(status["node_id"], 1);
}

/// A version the sidecar does not speak is refused with an Error frame.
#[tokio::test]
async fn unknown_version_is_refused_with_an_error() {
    let sidecar = Sidecar::start();
    let mut app = Raw::connect(&sidecar.socket()).await;
    app.send(Frame::Hello { version: 99 }).await;
    let message = app.expect_error_and_close().await;
    assert!(message.contains("99"), "{message}");
}

/// Garbage (before and after the handshake) gets an Error and closes that connection only:
/// another connection, opened before, goes on working.
#[tokio::test]
async fn garbage_frames_get_an_error_and_close_only_that_connection() {
    let mut sidecar = Sidecar::start();
    sidecar.run_committing_core();
    let mut good = Raw::hello(&sidecar.socket()).await;

    let mut http = Raw::connect(&sidecar.socket()).await;
    http.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    http.expect_error_and_close().await;

    let mut unknown = Raw::hello(&sidecar.socket()).await;
    unknown.send_bytes(&[1, 0, 0, 0, 0xEE]).await;
    let message = unknown.expect_error_and_close().await;
    assert!(message.contains("0xee"), "{message}");

    let mut short = Raw::hello(&sidecar.socket()).await;
    short.send_bytes(&[4, 0, 0, 0, 0x03, 1, 2, 3]).await;
    short.expect_error_and_close().await;

    let mut backwards = Raw::hello(&sidecar.socket()).await;
    backwards
        .send(Frame::Appended {
            request_id: 1,
            first_lsn: Lsn(1),
            last_lsn: Lsn(1),
        })
        .await;
    backwards.expect_error_and_close().await;

    good.append(1, &[b"still here"]).await;
    assert!(matches!(
        good.recv().await,
        Some(Frame::Appended { request_id: 1, .. })
    ));
}

/// A frame longer than the limit is refused from its length field alone, before its body is
/// sent; other connections are not affected.
#[tokio::test]
async fn oversized_frame_is_refused_before_its_body_arrives() {
    let mut sidecar = Sidecar::start();
    sidecar.run_committing_core();
    let mut good = Raw::hello(&sidecar.socket()).await;
    let mut big = Raw::hello(&sidecar.socket()).await;
    let mut header = ((FRAME_LEN_MAX + 1) as u32).to_le_bytes().to_vec();
    header.push(0x02);
    big.send_bytes(&header).await;
    let message = big.expect_error_and_close().await;
    assert!(message.contains("exceeds"), "{message}");
    good.append(1, &[b"x"]).await;
    assert!(matches!(
        good.recv().await,
        Some(Frame::Appended { request_id: 1, .. })
    ));
}

/// An app that disconnects while its append is with the core loses nothing: the proposal
/// still waits for the core's answer, the record is in the committed log, and the server
/// goes on serving.
#[tokio::test]
async fn client_disconnecting_mid_append_loses_nothing() {
    let mut sidecar = Sidecar::start();
    let mut app = Raw::hello(&sidecar.socket()).await;
    app.append(1, &[b"keep me"]).await;
    drop(app);
    let (payloads, reply) = sidecar.next_proposal().await;
    assert_eq!(payloads, vec![Bytes::from_static(b"keep me")]);
    // The server's append task is still there to take the answer.
    sidecar.commit_proposal(&payloads, reply);

    let mut reader = Raw::hello(&sidecar.socket()).await;
    reader.send(Frame::Subscribe { from_lsn: Lsn(1) }).await;
    assert!(matches!(reader.recv().await, Some(Frame::Role { .. })));
    let records = reader.records_through(Lsn(1)).await;
    assert_eq!(
        records,
        vec![(Lsn(1), RecordKind::App, b"keep me".to_vec())]
    );
}

/// Shutting the server down closes its connections and `serve` returns.
#[tokio::test]
async fn shutdown_closes_connections_and_serve_returns() {
    let sidecar = Sidecar::start();
    let mut app = Raw::hello(&sidecar.socket()).await;
    app.send(Frame::Subscribe { from_lsn: Lsn(1) }).await;
    assert!(matches!(app.recv().await, Some(Frame::Role { .. })));
    sidecar.shutdown.cancel();
    assert_eq!(app.recv().await, None);
    within("serve to return", sidecar.server).await.unwrap();
}

/// The driver replays the committed log into the state machine in LSN order (skipping
/// epoch-start records), and `propose` returns what `apply` returned for the new record.
#[tokio::test]
async fn driver_applies_records_in_order_and_propose_returns_apply_output() {
    let mut sidecar = Sidecar::start();
    sidecar.write(RecordKind::EpochStart, &[b""]);
    sidecar.write(RecordKind::App, &[b"a", b"b"]);
    sidecar.commit_through(Lsn(3));
    sidecar.run_committing_core();

    let driver = sidecar.driver().await;
    assert_eq!(driver.node_id(), NodeId(1));
    let role = driver.role();
    assert_eq!(role.role, Role::Primary);
    assert_eq!(
        role.primary_client_addr,
        Some("127.0.0.1:7001".parse().unwrap())
    );
    within("replay", driver.wait_applied(role.commit_lsn))
        .await
        .unwrap();
    assert_eq!(
        driver.read(|log| log.0.clone()),
        vec![(Lsn(2), b"a".to_vec()), (Lsn(3), b"b".to_vec())]
    );

    let output = within("propose", driver.propose("c")).await.unwrap();
    assert_eq!(output, 3);
    assert_eq!(driver.applied_lsn(), Lsn(4));
    assert_eq!(driver.read(|log| log.0[2].clone()), (Lsn(4), b"c".to_vec()));
}

/// Many proposals in flight at once reach the core in far fewer appends, and each proposer
/// gets the output of its own record. (On several threads, so that proposers race the
/// driver's writer as they do in an application.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_proposals_are_batched_into_few_appends() {
    const PROPOSALS: usize = 200;
    let mut sidecar = Sidecar::start();
    // The core holds its first answer until every proposer has called `propose`, so the
    // driver's window of appends in flight fills whatever the threads' timing.
    let (gate, gate_rx) = watch::channel(false);
    let appends = sidecar.run_committing_core_after(Some(gate_rx));
    let started = Arc::new(AtomicUsize::new(0));
    let driver = Arc::new(sidecar.driver().await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PROPOSALS {
        let driver = Arc::clone(&driver);
        let started = Arc::clone(&started);
        let gate = gate.clone();
        tasks.spawn(async move {
            let command = format!("cmd {i}");
            if started.fetch_add(1, Ordering::SeqCst) + 1 == PROPOSALS {
                gate.send_replace(true);
            }
            let output = driver.propose(command.clone()).await.unwrap();
            (command, output)
        });
    }
    let mut outputs = Vec::new();
    while let Some(joined) = within("proposals", tasks.join_next()).await {
        outputs.push(joined.unwrap());
    }
    let appends = appends.load(Ordering::SeqCst);
    assert!(
        appends * 10 <= PROPOSALS,
        "{PROPOSALS} proposals took {appends} appends"
    );
    // Output n is the n-th command applied: each proposer got its own record's output.
    let applied = driver.read(|log| log.0.clone());
    assert_eq!(applied.len(), PROPOSALS);
    for (command, output) in outputs {
        assert_eq!(applied[output - 1].1, command.into_bytes());
    }
}

/// The driver keeps one append unanswered at a time: proposals made while it is wait in
/// the driver, and go out together in one append once it is answered.
#[tokio::test]
async fn proposals_made_while_an_append_is_unanswered_go_out_together() {
    let mut sidecar = Sidecar::start();
    let driver = Arc::new(sidecar.driver().await);
    let propose = |command: &'static str| {
        let driver = Arc::clone(&driver);
        tokio::spawn(async move { driver.propose(command).await })
    };
    let first = propose("a");
    let (payloads, reply) = sidecar.next_proposal().await;
    assert_eq!(payloads, vec![Bytes::from_static(b"a")]);
    let later = [propose("b"), propose("c")];
    // Long enough for both to be proposed (this runtime has one thread, and it is free
    // while this waits), and for a second append to arrive if the driver sent one.
    let requests = sidecar.requests.as_mut().expect("no core is running");
    let early = tokio::time::timeout(Duration::from_millis(200), requests.recv()).await;
    assert!(
        early.is_err(),
        "a second append reached the core while the first was unanswered: {early:?}"
    );
    sidecar.commit_proposal(&payloads, reply);
    assert_eq!(within("a's output", first).await.unwrap(), Ok(1));
    let (payloads, reply) = sidecar.next_proposal().await;
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")]
    );
    sidecar.commit_proposal(&payloads, reply);
    let [b, c] = later;
    assert_eq!(within("b's output", b).await.unwrap(), Ok(2));
    assert_eq!(within("c's output", c).await.unwrap(), Ok(3));
}

/// One task can have several commands in flight with `submit`: they reach the log in the
/// order they were queued, those queued while an append is unanswered go out together in
/// the next, and each outcome is its own command's.
#[tokio::test]
async fn commands_submitted_by_one_task_are_logged_in_order_and_go_out_together() {
    let mut sidecar = Sidecar::start();
    let driver = sidecar.driver().await;
    let mut outcomes = Vec::new();
    for command in ["a", "b", "c", "d"] {
        outcomes.push(within("submit", driver.submit(command)).await.unwrap());
    }
    // However the driver's writer split them (one append in flight at a time), they arrive
    // in order, in at most two appends.
    let mut sent = Vec::new();
    let mut appends = 0;
    while sent.len() < 4 {
        let (payloads, reply) = sidecar.next_proposal().await;
        appends += 1;
        sent.extend(payloads.iter().cloned());
        sidecar.commit_proposal(&payloads, reply);
    }
    assert_eq!(sent, [&b"a"[..], b"b", b"c", b"d"].map(Bytes::from_static));
    assert!(appends <= 2, "4 queued commands took {appends} appends");
    for (expected, outcome) in (1..).zip(outcomes) {
        assert_eq!(within("an outcome", outcome).await, Ok(expected));
    }
    let too_large = vec![0u8; wal::format::RECORD_PAYLOAD_LEN_MAX + 1];
    assert!(matches!(
        driver.submit(too_large).await,
        Err(ProposeError::TooLarge { .. })
    ));
}

/// A `Submitted` dropped before the driver sent its command withdraws it: the next append
/// carries only the commands still waited for.
#[tokio::test]
async fn a_submitted_command_dropped_before_it_is_sent_is_withdrawn() {
    let mut sidecar = Sidecar::start();
    let driver = sidecar.driver().await;
    let a = within("submit", driver.submit("a")).await.unwrap();
    let (payloads, reply) = sidecar.next_proposal().await;
    assert_eq!(payloads, vec![Bytes::from_static(b"a")]);
    // b and c wait behind a (one append in flight); b's outcome is dropped.
    let b = within("submit", driver.submit("b")).await.unwrap();
    let c = within("submit", driver.submit("c")).await.unwrap();
    drop(b);
    sidecar.commit_proposal(&payloads, reply);
    assert_eq!(within("a", a).await, Ok(1));
    let (payloads, reply) = sidecar.next_proposal().await;
    assert_eq!(payloads, vec![Bytes::from_static(b"c")]);
    sidecar.commit_proposal(&payloads, reply);
    assert_eq!(within("c", c).await, Ok(2));
}

/// Gathering (src/client/driver/gather.rs): when an append of two or more proposals is
/// answered and its proposers propose again at once, as clients that wait for each answer
/// do, the next append waits for them and carries them with what was already waiting,
/// instead of leaving them for the append after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposers_answered_and_back_at_once_join_the_next_append() {
    let mut sidecar = Sidecar::start();
    let driver = Arc::new(sidecar.driver().await);
    // A client that proposes `first`, and `then` as soon as `first` is answered.
    let client = |first: &'static str, then: &'static str| {
        let driver = Arc::clone(&driver);
        tokio::spawn(async move {
            let first = driver.propose(first).await;
            let then = driver.propose(then).await;
            (first, then)
        })
    };
    let lone = {
        let driver = Arc::clone(&driver);
        tokio::spawn(async move { driver.propose("a").await })
    };
    let (payloads, reply) = sidecar.next_proposal().await;
    assert_eq!(payloads, vec![Bytes::from_static(b"a")]);
    let clients = [client("b", "b2"), client("c", "c2")];
    // b and c are queued behind a (one append in flight).
    tokio::time::sleep(Duration::from_millis(50)).await;
    sidecar.commit_proposal(&payloads, reply);
    assert_eq!(within("a's output", lone).await.unwrap(), Ok(1));
    let (payloads, reply) = sidecar.next_proposal().await;
    let mut sent = payloads.clone();
    sent.sort();
    assert_eq!(
        sent,
        vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")]
    );
    // d is waiting when b and c are answered; a round trip of 50 ms allows the longest
    // wait (1 ms) for b and c's clients to come back.
    let d = {
        let driver = Arc::clone(&driver);
        tokio::spawn(async move { driver.propose("d").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    sidecar.commit_proposal(&payloads, reply);
    let (payloads, reply) = sidecar.next_proposal().await;
    let mut sent = payloads.clone();
    sent.sort();
    assert_eq!(
        sent,
        vec![
            Bytes::from_static(b"b2"),
            Bytes::from_static(b"c2"),
            Bytes::from_static(b"d")
        ],
        "the clients answered came back and went out with d, in one append"
    );
    assert_eq!(
        payloads[0],
        Bytes::from_static(b"d"),
        "d waited first, goes first"
    );
    sidecar.commit_proposal(&payloads, reply);
    assert_eq!(within("d's output", d).await.unwrap(), Ok(4));
    for client in clients {
        let (first, then) = within("a client", client).await.unwrap();
        assert!(matches!(first, Ok(2 | 3)), "{first:?}");
        assert!(matches!(then, Ok(5 | 6)), "{then:?}");
    }
}

/// A proposal to a node that is not the primary fails with the primary and its address.
#[tokio::test]
async fn not_primary_rejection_carries_the_primary_and_its_address() {
    let mut sidecar = Sidecar::start();
    let driver = sidecar.driver().await;
    let proposing = tokio::spawn(async move { driver.propose("x").await });
    let (_, reply) = sidecar.next_proposal().await;
    let addr: SocketAddr = "10.0.0.3:7000".parse().unwrap();
    reply
        .send(ProposeOutcome::NotPrimary {
            primary: Some(NodeId(3)),
            client_addr: Some(addr),
        })
        .unwrap();
    assert_eq!(
        within("the rejection", proposing).await.unwrap(),
        Err(ProposeError::NotPrimary {
            primary: Some(NodeId(3)),
            client_addr: Some(addr),
        })
    );
}

/// The driver publishes role changes.
#[tokio::test]
async fn driver_follows_role_changes() {
    let sidecar = Sidecar::start();
    let driver = sidecar.driver().await;
    let mut roles = driver.watch_role();
    sidecar
        .status
        .send_replace(Arc::new(status(core::Role::Backup, 2, Some(2), None)));
    within(
        "the role change",
        roles.wait_for(|role| role.epoch == Epoch(2)),
    )
    .await
    .unwrap();
    let role = driver.role();
    assert_eq!(role.role, Role::Backup);
    assert_eq!(role.primary, Some(NodeId(2)));
    assert_eq!(role.primary_client_addr, None);
}

/// A driver restored from a snapshot follows the log from the record after it.
#[tokio::test]
async fn driver_restored_from_a_snapshot_follows_the_log_after_it() {
    let sidecar = Sidecar::start();
    sidecar.write(RecordKind::App, &[b"a", b"b", b"c", b"d"]);
    sidecar.commit_through(Lsn(4));
    let driver = within(
        "connect",
        Driver::connect_restored(
            sidecar.socket(),
            Log::default(),
            Lsn(2),
            &2u64.to_le_bytes(),
        ),
    )
    .await
    .unwrap();
    within("replay", driver.wait_applied(Lsn(4))).await.unwrap();
    let applied = driver.read(|log| log.0.clone());
    assert_eq!(applied.len(), 4);
    assert_eq!(
        applied[2..],
        [(Lsn(3), b"c".to_vec()), (Lsn(4), b"d".to_vec())]
    );
    let (lsn, snapshot) = driver.snapshot();
    assert_eq!((lsn, snapshot), (Lsn(4), 4u64.to_le_bytes().to_vec()));
}

/// A record that fails its CRC is never applied, and the driver stops following a sidecar
/// that sent it. (The sidecar here is a hand-written fake that sends a damaged record.)
#[tokio::test]
async fn driver_refuses_a_corrupt_record_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, write) = stream.into_split();
        let mut app = Raw {
            frames: FrameReader::new(read),
            write,
        };
        assert!(matches!(app.recv().await, Some(Frame::Hello { .. })));
        app.send(Frame::Welcome {
            version: PROTOCOL_VERSION,
            node_id: NodeId(1),
            frame_len_max: FRAME_LEN_MAX as u32,
            append_count_max: 16,
        })
        .await;
        assert_eq!(
            app.recv().await,
            Some(Frame::Subscribe { from_lsn: Lsn(1) })
        );
        app.send(Frame::Role {
            role: Role::Backup,
            epoch: Epoch(1),
            primary: None,
            primary_client_addr: String::new(),
            commit_lsn: Lsn(2),
        })
        .await;
        let mut records = Vec::new();
        wal::format::encode_record(&mut records, Lsn(1), Epoch(1), RecordKind::App, b"good");
        wal::format::encode_record(&mut records, Lsn(2), Epoch(1), RecordKind::App, b"evil");
        let last = records.len() - 1;
        records[last] ^= 0x10;
        app.send(Frame::Records {
            bytes: Bytes::from(records),
        })
        .await;
        // Hold the connection open until the driver closes it.
        assert_eq!(app.recv().await, None);
    });
    let driver = within("connect", Driver::connect(&socket, Log::default()))
        .await
        .unwrap();
    let failure = within("the failure", driver.wait_applied(Lsn(2)))
        .await
        .unwrap_err();
    assert!(
        matches!(*failure, ClientError::Corrupt { lsn: Lsn(2), .. }),
        "{failure:?}"
    );
    assert_eq!(
        driver.read(|log| log.0.clone()),
        vec![(Lsn(1), b"good".to_vec())]
    );
    assert!(!driver.is_connected());
    assert_eq!(driver.propose("x").await, Err(ProposeError::Disconnected));
    drop(driver);
    within("the fake sidecar", fake).await.unwrap();
}

/// A lease read runs once the state has applied the index the sidecar answered, not before;
/// reads asked for while one is out share the next request.
#[tokio::test]
async fn lease_read_waits_for_its_index_and_reads_asked_together_share_a_request() {
    let mut sidecar = Sidecar::start();
    sidecar.write(RecordKind::EpochStart, &[b""]);
    sidecar.write(RecordKind::App, &[b"a", b"b"]);
    sidecar.commit_through(Lsn(1));
    let driver = Arc::new(sidecar.driver().await);
    within("the replay", driver.wait_applied(Lsn(1)))
        .await
        .unwrap();
    let read = |driver: &Arc<Driver<Log>>| {
        let driver = Arc::clone(driver);
        tokio::spawn(async move { driver.read_linearizable(|log| log.0.len()).await })
    };
    let first = read(&driver);
    let first_reply = sidecar.next_read().await;
    let others: Vec<_> = (0..4).map(|_| read(&driver)).collect();
    // Let the four queue behind the first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    first_reply
        .send(ReadOutcome::Index {
            lsn: Lsn(3),
            epoch: Epoch(1),
        })
        .unwrap();
    sidecar
        .next_read()
        .await
        .send(ReadOutcome::Index {
            lsn: Lsn(3),
            epoch: Epoch(1),
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !first.is_finished(),
        "a read answered before its index is applied"
    );
    sidecar.commit_through(Lsn(3));
    assert_eq!(within("the first read", first).await.unwrap(), Ok(2));
    for other in others {
        assert_eq!(within("a shared read", other).await.unwrap(), Ok(2));
    }
    let requests = sidecar.requests.as_mut().unwrap();
    assert!(
        requests.try_recv().is_err(),
        "five reads took more than two requests"
    );
}

/// A read whose node stops being primary of the read's epoch before its index is applied
/// gives up; a read on a backup is refused with the primary's address.
#[tokio::test]
async fn lease_read_gives_up_on_a_role_change_and_is_refused_on_a_backup() {
    let mut sidecar = Sidecar::start();
    sidecar.write(RecordKind::EpochStart, &[b""]);
    sidecar.commit_through(Lsn(1));
    let driver = Arc::new(sidecar.driver().await);
    let reading = {
        let driver = Arc::clone(&driver);
        tokio::spawn(async move { driver.read_linearizable(|log| log.0.len()).await })
    };
    sidecar
        .next_read()
        .await
        .send(ReadOutcome::Index {
            lsn: Lsn(2),
            epoch: Epoch(1),
        })
        .unwrap();
    sidecar
        .status
        .send_replace(Arc::new(status(core::Role::Backup, 2, Some(2), None)));
    assert_eq!(
        within("the read", reading).await.unwrap(),
        Err(ReadError::RoleChanged)
    );

    let reading = {
        let driver = Arc::clone(&driver);
        tokio::spawn(async move { driver.read_linearizable(|log| log.0.len()).await })
    };
    let addr: SocketAddr = "10.0.0.2:7000".parse().unwrap();
    sidecar
        .next_read()
        .await
        .send(ReadOutcome::NotPrimary {
            primary: Some(NodeId(2)),
            client_addr: Some(addr),
        })
        .unwrap();
    assert_eq!(
        within("the refusal", reading).await.unwrap(),
        Err(ReadError::NotPrimary {
            primary: Some(NodeId(2)),
            client_addr: Some(addr),
        })
    );
}

/// `Read` on the wire: answered `ReadIndex` with the request id; a session of version 2
/// that sends one is refused.
#[tokio::test]
async fn read_frame_is_answered_with_its_index_and_needs_version_3() {
    let mut sidecar = Sidecar::start();
    let mut app = Raw::hello(&sidecar.socket()).await;
    app.send(Frame::Read { request_id: 9 }).await;
    sidecar
        .next_read()
        .await
        .send(ReadOutcome::Index {
            lsn: Lsn(7),
            epoch: Epoch(3),
        })
        .unwrap();
    assert_eq!(
        app.recv().await,
        Some(Frame::ReadIndex {
            request_id: 9,
            lsn: Lsn(7),
            epoch: Epoch(3),
        })
    );

    let mut old = Raw::connect(&sidecar.socket()).await;
    old.send(Frame::Hello { version: 2 }).await;
    assert!(matches!(
        old.recv().await,
        Some(Frame::Welcome { version: 2, .. })
    ));
    old.send(Frame::Read { request_id: 1 }).await;
    let message = old.expect_error_and_close().await;
    assert!(message.contains("version 3"), "{message}");
}

/// `TakeClients` (version 4): the connection that asks is handed each client connection as
/// a socket, which is then the application's alone; a newer one takes over from an older
/// one, whose connection ends; a version-3 session may not ask; and once the taker is gone,
/// connections are declined (the client port proxies them).
#[tokio::test]
async fn client_connections_are_handed_to_the_connection_that_takes_them() {
    use tokio::io::AsyncReadExt;
    use understudy::client::clients::Clients;
    use understudy::node::handoff::HandOver;

    let sidecar = Sidecar::start();
    let takers = sidecar.node.takers().clone();
    assert!(!takers.any());
    let mut older = within("TakeClients", Clients::connect(&sidecar.socket()))
        .await
        .unwrap();
    assert!(takers.any(), "registered before TakingClients is sent");
    // As an application restarted before its old connection's end was noticed.
    let mut clients = within("a newer TakeClients", Clients::connect(&sidecar.socket()))
        .await
        .unwrap();
    let ended = within("the older taker's end", older.accept()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the older taker's connection is closed: {ended:?}"
    );
    assert!(takers.any());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    assert!(matches!(takers.hand_over(accepted), HandOver::Handed));
    let mut handed = within("the handed-over connection", clients.accept())
        .await
        .unwrap()
        .expect("a connection");
    assert_eq!(
        handed.peer_addr().unwrap(),
        client.local_addr().unwrap(),
        "the client's own connection"
    );
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within("the request", handed.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"ping");
    handed.write_all(b"pong").await.unwrap();
    within("the reply", client.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"pong");
    // The sidecar kept no copy: the application's close is the connection's end.
    drop(handed);
    let read = within("the close", client.read(&mut buf)).await.unwrap();
    assert_eq!(read, 0);

    let mut old = Raw::connect(&sidecar.socket()).await;
    old.send(Frame::Hello { version: 3 }).await;
    assert!(matches!(
        old.recv().await,
        Some(Frame::Welcome { version: 3, .. })
    ));
    old.send(Frame::TakeClients).await;
    let message = old.expect_error_and_close().await;
    assert!(message.contains("version 4"), "{message}");

    drop(clients);
    within("the taker gone", async {
        while takers.any() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    assert!(matches!(takers.hand_over(accepted), HandOver::Declined(_)));
}
