//! Client connections handed to the application (app API version 4, `TakeClients`).
//!
//! The primary's client port forwards each connection to the local application through a
//! proxy that copies every byte both ways: one more read and one more write per request in
//! each direction, a quarter of the throughput of a CPU-bound key-value server
//! (`benches/README.md`). An application that takes its clients itself gets the accepted
//! socket instead, passed over a Unix socket as `SCM_RIGHTS` ancillary data
//! (`proto::app`, "Client connections"), and from then on the sidecar is out of the
//! connection's path.
//!
//! [`Takers`] is where the app API registers the one connection that takes clients and the
//! client port finds it. A hand-over is a `try_send` into a bounded queue: when no
//! application takes clients, or its queue is full, the client port forwards the
//! connection as before. The app API's task for that connection ([`serve`]) sends each
//! queued socket with one `sendmsg`, then closes its own descriptor: the sidecar keeps no
//! copy, so the application's closing of the connection is what closes it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::proto::app::{Frame, FRAME_HEADER_LEN};

/// Sockets queued for the application at most; beyond that the client port forwards.
const QUEUE_LEN: usize = 64;

/// The application connection taking clients, if any.
#[derive(Debug, Clone, Default)]
pub struct Takers {
    slot: Arc<Mutex<Option<Taker>>>,
}

#[derive(Debug)]
struct Taker {
    id: u64,
    queue: mpsc::Sender<std::net::TcpStream>,
}

/// What [`Takers::hand_over`] did with a connection.
pub enum HandOver {
    /// Queued for the application.
    Handed,
    /// No application takes clients now (or its queue is full): forward it.
    Declined(tokio::net::TcpStream),
}

impl Takers {
    fn lock(&self) -> MutexGuard<'_, Option<Taker>> {
        // A panic while holding this lock leaves an `Option` that is always valid.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether an application connection takes clients now.
    pub fn any(&self) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|taker| !taker.queue.is_closed())
    }

    /// Registers a connection as the one taking clients. One registered before is
    /// replaced: its queue's sender is dropped, so its task ends and closes that connection
    /// (what it had queued still goes out first). The newest wins so that an application
    /// restarted in a hurry takes the connections over even before its old connection's end
    /// has been noticed; there is one application per sidecar.
    fn register(&self, id: u64) -> mpsc::Receiver<std::net::TcpStream> {
        let (queue, receiver) = mpsc::channel(QUEUE_LEN);
        if let Some(old) = self.lock().replace(Taker { id, queue }) {
            info!(
                old = old.id,
                "a newer app connection takes the client connections over"
            );
        }
        receiver
    }

    fn unregister(&self, id: u64) {
        let mut slot = self.lock();
        if slot.as_ref().is_some_and(|taker| taker.id == id) {
            *slot = None;
        }
    }

    /// Queues `stream` for the application, or gives it back.
    pub fn hand_over(&self, stream: tokio::net::TcpStream) -> HandOver {
        let Some(queue) = self.lock().as_ref().map(|taker| taker.queue.clone()) else {
            return HandOver::Declined(stream);
        };
        // Out of this runtime's reactor: the descriptor moves to another thread and process.
        let std_stream = match stream.into_std() {
            Ok(std_stream) => std_stream,
            Err(error) => {
                // `into_std` fails only if deregistering does; the stream is gone with it.
                warn!(%error, "cannot detach a client connection to hand it over");
                return HandOver::Handed;
            }
        };
        match queue.try_send(std_stream) {
            Ok(()) => HandOver::Handed,
            Err(
                mpsc::error::TrySendError::Full(std_stream)
                | mpsc::error::TrySendError::Closed(std_stream),
            ) => match tokio::net::TcpStream::from_std(std_stream) {
                Ok(stream) => HandOver::Declined(stream),
                Err(error) => {
                    warn!(%error, "cannot take back a client connection; closing it");
                    HandOver::Handed
                }
            },
        }
    }
}

/// Serves an application connection that sent `TakeClients` (after `Welcome`, which is
/// already written): sends it each client connection queued for it, until it closes the
/// connection, a send fails, a newer connection takes clients instead, or `closing` is
/// cancelled.
pub async fn serve(stream: UnixStream, takers: &Takers, id: u64, closing: &CancellationToken) {
    let mut queue = takers.register(id);
    info!("the application takes the client port's connections");
    let mut taking = bytes::BytesMut::new();
    Frame::TakingClients.encode(&mut taking);
    let result = match send_all(&stream, &taking).await {
        Ok(()) => take_loop(&stream, &mut queue, closing).await,
        Err(error) => Err(error),
    };
    takers.unregister(id);
    // Connections still queued are closed: their clients reconnect.
    queue.close();
    match result {
        Ok(()) => info!("the application no longer takes client connections"),
        Err(error) => {
            info!(%error, "handing client connections over failed; forwarding them again")
        }
    }
}

async fn take_loop(
    stream: &UnixStream,
    queue: &mut mpsc::Receiver<std::net::TcpStream>,
    closing: &CancellationToken,
) -> io::Result<()> {
    let mut frame = bytes::BytesMut::new();
    Frame::ClientConnection.encode(&mut frame);
    assert_eq!(
        frame.len(),
        FRAME_HEADER_LEN,
        "ClientConnection has no body"
    );
    let mut probe = [0u8; 1];
    loop {
        let client = tokio::select! {
            () = closing.cancelled() => return Ok(()),
            client = queue.recv() => match client {
                Some(client) => client,
                None => return Ok(()),
            },
            // The application sends nothing on this connection: readable means closed
            // (or a protocol error, which ends it as well).
            readable = stream.readable() => {
                readable?;
                match stream.try_read(&mut probe) {
                    Ok(0) => return Ok(()),
                    Ok(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "the application sent bytes after TakeClients")),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) => return Err(error),
                }
            }
        };
        send_with_fd(stream, &frame, &client).await?;
        debug!(peer = ?client.peer_addr().ok(), "client connection handed to the application");
        // Our descriptor closes here; the application's copy keeps the connection open.
        drop(client);
    }
}

async fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Sends `frame` (a few bytes) with `client`'s descriptor attached, in one `sendmsg`. On a
/// stream socket the kernel attaches the descriptor to the first byte sent; a short send
/// is finished with plain writes (the descriptor went with the first part).
async fn send_with_fd(
    stream: &UnixStream,
    frame: &[u8],
    client: &std::net::TcpStream,
) -> io::Result<()> {
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            sendmsg_fd(stream.as_raw_fd(), frame, client.as_raw_fd())
        }) {
            Ok(sent) => break sent,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    };
    send_all(stream, &frame[sent..]).await
}

/// `sendmsg(socket, bytes, SCM_RIGHTS [fd])`, non-blocking.
fn sendmsg_fd(socket: i32, bytes: &[u8], fd: i32) -> io::Result<usize> {
    assert!(
        !bytes.is_empty(),
        "a descriptor travels with at least one byte"
    );
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `control` is CMSG_SPACE(4) bytes, room for one header and one descriptor, so
    // CMSG_FIRSTHDR is non-null and CMSG_DATA points inside it.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        assert!(!header.is_null());
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<i32>(), fd);
    }
    // SAFETY: `msg` points at live buffers of the stated lengths.
    let sent = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}
