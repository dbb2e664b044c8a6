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

/// `--tls-ca`: what an `https://` admin address's certificate must be signed by.
static TLS_CA: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Sets `--tls-ca` for this process's admin requests (once, before any).
pub fn set_tls_ca(ca: Option<std::path::PathBuf>) {
    let _ = TLS_CA.set(ca);
}

/// An admin address as given: `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`.
/// Returns whether it is HTTPS and the `HOST:PORT`.
fn split_scheme(addr: &str) -> (bool, &str) {
    if let Some(rest) = addr.strip_prefix("https://") {
        (true, rest.trim_end_matches('/'))
    } else if let Some(rest) = addr.strip_prefix("http://") {
        (false, rest.trim_end_matches('/'))
    } else {
        (false, addr)
    }
}

/// `addr` (an admin address a node announced, `HOST:PORT`) with the scheme of `reference`
/// (the address the operator gave): the nodes of a cluster all serve HTTPS, or none does.
pub fn same_scheme(reference: &str, addr: &str) -> String {
    let (_, bare) = split_scheme(addr);
    if split_scheme(reference).0 {
        format!("https://{bare}")
    } else {
        bare.to_string()
    }
}

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
    let (https, host_port) = split_scheme(addr);
    let stream = TcpStream::connect(host_port)
        .await
        .map_err(|e| anyhow!("cannot reach the admin port {addr}: {}", io_words(&e)))?;
    let stream = if https {
        let Some(ca) = TLS_CA.get().and_then(Option::as_ref) else {
            return Err(anyhow!(
                "{addr}: an https:// admin address needs --tls-ca (the cluster's CA certificate; or UNDERSTUDY_TLS_CA)"
            ));
        };
        let config = crate::tls::admin_client_config(ca)?;
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| anyhow!("{addr}: {host:?} is not a host name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| anyhow!("the admin port {addr}: {}", crate::tls::describe(&e)))?;
        tokio_util::either::Either::Right(stream)
    } else {
        tokio_util::either::Either::Left(stream)
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("admin port {addr}"))?;
    // The connection is driven by its own task; it ends when the server closes it after
    // the answer (we asked for `Connection: close`).
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .header(HOST, host_port)
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
