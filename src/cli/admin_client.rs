//! The operator commands' HTTP/1.1 client for a node's admin port (`status`, `switchover`):
//! one request per connection (`Connection: close`), a deadline on the whole exchange, a cap
//! on the answer's size, and errors an operator can read in one line ("cannot reach the
//! admin port 127.0.0.1:9000: connection refused").
//!
//! It does not retry: the commands are run by a person or a script that decides that.

use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{AUTHORIZATION, CONNECTION, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::AdminToken;

/// An answer's body, at most. `/status` of a large cluster is a few KiB.
const BODY_BYTES_MAX: usize = 4 << 20;

/// What the admin server answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body's first line, for an error message.
    pub fn body_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.lines().next().unwrap_or("").trim().to_string()
    }
}

/// The admin token of the commands that change state (`switchover`, `pause`, `resume`).
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// A file holding the admin token the nodes run with (their --admin-token-file). Else
    /// the token itself is taken from UNDERSTUDY_ADMIN_TOKEN, if set.
    #[arg(long, value_name = "FILE", env = "UNDERSTUDY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
}

impl TokenArgs {
    /// The token to send, if any.
    pub fn token(&self) -> anyhow::Result<Option<AdminToken>> {
        if let Some(path) = &self.admin_token_file {
            return Ok(Some(AdminToken::load(path)?));
        }
        match std::env::var("UNDERSTUDY_ADMIN_TOKEN") {
            Ok(text) => AdminToken::from_text(&text)
                .map(Some)
                .map_err(|reason| anyhow!("UNDERSTUDY_ADMIN_TOKEN: {reason}")),
            Err(_) => Ok(None),
        }
    }
}

/// Sends `method target` (a path with its query) to the admin port at `addr` (HOST:PORT) and
/// returns the answer, or an error once `timeout` has passed.
pub async fn request(
    addr: &str,
    method: Method,
    target: &str,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    request_with_token(addr, method, target, timeout, None).await
}

/// [`request`] with `Authorization: Bearer <token>` when a token is given.
pub async fn request_with_token(
    addr: &str,
    method: Method,
    target: &str,
    timeout: Duration,
    token: Option<&AdminToken>,
) -> anyhow::Result<Answer> {
    match tokio::time::timeout(timeout, request_exchange(addr, method, target, token)).await {
        Ok(answer) => answer,
        Err(_) => Err(anyhow!(
            "the admin port {addr} did not answer within {} s",
            timeout.as_secs_f64()
        )),
    }
}

async fn request_exchange(
    addr: &str,
    method: Method,
    target: &str,
    token: Option<&AdminToken>,
) -> anyhow::Result<Answer> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow!("cannot reach the admin port {addr}: {}", io_words(&e)))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("admin port {addr}"))?;
    // The connection is driven by its own task; it ends when the server closes it after
    // the answer (we asked for `Connection: close`).
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .header(HOST, addr)
        .header(CONNECTION, "close");
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {}", token.as_str()));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("build the request {target}"))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("the admin port {addr} broke off"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| anyhow!("the admin port {addr} broke off its answer: {e}"))?
        .to_bytes();
    Ok(Answer { status, body })
}

/// A connect error in the words an operator expects ("connection refused"), without the
/// OS error number.
fn io_words(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::TimedOut => "timed out".into(),
        ErrorKind::HostUnreachable => "host unreachable".into(),
        ErrorKind::NetworkUnreachable => "network unreachable".into(),
        ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => error.to_string(),
    }
}
