//! Taking the client port's connections (app API version 4, `TakeClients`).
//!
//! An application that serves clients over TCP can take the connections made to its
//! primary's client port itself, instead of having the sidecar copy their bytes through a
//! proxy (`proto::app`, "Client connections"). [`Clients::connect`] opens a connection to
//! the app socket for it; [`Clients::accept`] yields each client connection as if accepted
//! from a listener. The connections come only while this node is primary; what the
//! application does with them is its own, but it must close them when its node stops being
//! primary (the client port closes the connections it proxies then, so that clients find
//! the new primary), as the key-value example does.
//!
//! The descriptors arrive as `SCM_RIGHTS` ancillary data, which only `recvmsg` receives, so
//! this connection is read with `recvmsg` alone.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::Decoder;

use super::ClientError;
use crate::proto::app::{AppCodec, CodecError, Frame, PROTOCOL_VERSION};

/// Descriptors one `recvmsg` can take at most: the sidecar sends one per message, and the
/// kernel does not merge messages carrying descriptors into one read.
const FDS_PER_READ_MAX: usize = 8;

/// A connection to the sidecar that receives client connections.
pub struct Clients {
    stream: UnixStream,
    buf: BytesMut,
    codec: AppCodec,
    fds: VecDeque<OwnedFd>,
}

impl Clients {
    /// Connects to the app socket at `path` and asks for the client port's connections
    /// (taking them over from an older connection that had them). Fails if the sidecar
    /// speaks an older version ([`ClientError::UnsupportedVersion`] or
    /// [`ClientError::Refused`]).
    pub async fn connect(path: &Path) -> Result<Clients, ClientError> {
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: path.to_owned(),
                    source,
                })?;
        let mut hello = BytesMut::new();
        Frame::Hello {
            version: PROTOCOL_VERSION,
        }
        .encode(&mut hello);
        Frame::TakeClients.encode(&mut hello);
        stream.write_all(&hello).await.map_err(ClientError::Io)?;
        let mut clients = Clients {
            stream,
            buf: BytesMut::with_capacity(256),
            codec: AppCodec::new(),
            fds: VecDeque::new(),
        };
        match clients.next_frame().await? {
            Some(Frame::Welcome { version, .. }) if version == PROTOCOL_VERSION => {}
            Some(Frame::Welcome { version, .. }) => {
                return Err(ClientError::UnsupportedVersion {
                    found: version,
                    supported: PROTOCOL_VERSION,
                })
            }
            other => return Err(unexpected(other, "instead of Welcome")),
        }
        match clients.next_frame().await? {
            Some(Frame::TakingClients) => Ok(clients),
            other => Err(unexpected(other, "instead of TakingClients")),
        }
    }

    /// The next client connection; `Ok(None)` once the sidecar has closed this connection
    /// (it is stopping). Cancel safe: nothing received is lost if the future is dropped.
    pub async fn accept(&mut self) -> Result<Option<TcpStream>, ClientError> {
        match self.next_frame().await? {
            Some(Frame::ClientConnection) => {
                let Some(fd) = self.fds.pop_front() else {
                    return Err(ClientError::Unexpected {
                        frame: "ClientConnection",
                        during: "without a socket attached",
                    });
                };
                let stream = std::net::TcpStream::from(fd);
                stream.set_nonblocking(true).map_err(ClientError::Io)?;
                TcpStream::from_std(stream)
                    .map(Some)
                    .map_err(ClientError::Io)
            }
            None => Ok(None),
            other => Err(unexpected(other, "on a connection taking clients")),
        }
    }

    /// The next frame, receiving with `recvmsg` (and keeping the descriptors that come).
    async fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(CodecError::Decode(error)) => return Err(ClientError::Decode(error)),
                Err(CodecError::Io(error)) => return Err(ClientError::Io(error)),
            }
            self.stream.readable().await.map_err(ClientError::Io)?;
            let fd = self.stream.as_raw_fd();
            let mut chunk = [0u8; 256];
            let received = self.stream.try_io(Interest::READABLE, || {
                recvmsg_fds(fd, &mut chunk, &mut self.fds)
            });
            match received {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(ClientError::Io(error)),
            }
        }
    }
}

/// What an unexpected answer (or the end of the connection) means.
fn unexpected(frame: Option<Frame>, during: &'static str) -> ClientError {
    match frame {
        Some(Frame::Error { message }) => ClientError::Refused { message },
        Some(frame) => ClientError::Unexpected {
            frame: frame.name(),
            during,
        },
        None => ClientError::Closed,
    }
}

/// One non-blocking `recvmsg` into `buf`; descriptors received are pushed onto `fds`
/// (close-on-exec). A truncated control message (more descriptors than room) is an error:
/// the kernel closed the ones that did not fit, and with them clients' connections.
fn recvmsg_fds(socket: i32, buf: &mut [u8], fds: &mut VecDeque<OwnedFd>) -> io::Result<usize> {
    let fd_len = std::mem::size_of::<i32>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((fd_len * FDS_PER_READ_MAX) as u32) } as usize;
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at live buffers of the stated lengths.
    let received = unsafe {
        libc::recvmsg(
            socket,
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `control` up to `msg_controllen` with well-formed headers;
    // CMSG_FIRSTHDR/CMSG_NXTHDR stay within it, and each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / 4 descriptors, now ours.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let count = ((*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / fd_len;
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i * fd_len).cast::<i32>());
                    fds.push_back(OwnedFd::from_raw_fd(raw));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "client connections arrived beyond the room for them and were lost",
        ));
    }
    Ok(received as usize)
}
