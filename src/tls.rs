//! TLS for the peer links and the admin server (`--tls-cert`, `--tls-key`, `--tls-ca`).
//!
//! - **Peer links** use mutual TLS: each side presents its certificate and verifies that the
//!   other's is signed by the cluster's CA (`--tls-ca`). A certificate may name the node it
//!   belongs to with a DNS name `understudy-node-<ID>` among its subject alternative names;
//!   a peer whose certificate names nodes but not the one it says it is (in the handshake's
//!   `Hello`, or the one dialled) is refused. Host names are not checked: peers are reached
//!   at addresses (often IP addresses, or names that move) and the CA is the cluster's own,
//!   so what it signed is a member. The cluster secret's challenge-response runs inside the
//!   TLS session as before: it tells one cluster from another where a CA signs for several,
//!   and a stolen certificate alone does not let anyone in.
//! - **The admin server** serves HTTPS with the same certificate and key, without asking
//!   clients for a certificate (mutating requests carry the admin token instead). The
//!   operator commands verify its certificate against `--tls-ca` the same way.
//! - **The client port** stays a plain TCP proxy: the application's protocol decides its own
//!   TLS, and the proxy passes its bytes through untouched.
//!
//! The files are read at start and again on SIGHUP ([`Tls::reload`]): a connection set up
//! after the reload uses the new certificate, established ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::NodeId;

/// The prefix of the DNS name by which a certificate names its node.
pub const NODE_NAME_PREFIX: &str = "understudy-node-";

/// Why the TLS files cannot be used. Each names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {path}: {reason}")]
    Pem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--tls-ca {path}: no usable CA certificate in it ({reason})")]
    Ca { path: PathBuf, reason: String },
    #[error("{0}")]
    NotPrivate(#[from] crate::config::ConfigError),
    #[error("--tls-cert {cert} with --tls-key {key}: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Missing(String),
}

/// The three files, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// All three flags or none: TLS with a part missing is refused in one line.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                ca: ca.to_owned(),
            })),
            _ => {
                let missing: Vec<&str> = [
                    ("--tls-cert", cert.is_none()),
                    ("--tls-key", key.is_none()),
                    ("--tls-ca", ca.is_none()),
                ]
                .iter()
                .filter(|(_, missing)| *missing)
                .map(|(flag, _)| *flag)
                .collect();
                Err(TlsError::Missing(format!(
                    "TLS needs --tls-cert, --tls-key and --tls-ca together; {} missing",
                    missing.join(" and ")
                )))
            }
        }
    }
}

/// The rustls configurations built from one reading of the files.
struct Configs {
    peer_server: Arc<ServerConfig>,
    peer_client: Arc<ClientConfig>,
    admin_server: Arc<ServerConfig>,
}

/// A node's TLS material, re-read on [`Tls::reload`].
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<Configs>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads and checks the files: the key readable by its owner only, the certificate and
    /// key a pair, the CA a certificate.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let configs = build(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(configs)),
        })
    }

    /// Reads the files again. On an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = Arc::new(build(&self.files)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = configs;
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn configs(&self) -> Arc<Configs> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The acceptor of peer connections (client certificates required).
    pub fn peer_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.configs().peer_server))
    }

    /// The connector of peer connections (this node's certificate presented).
    pub fn peer_connector(&self) -> TlsConnector {
        TlsConnector::from(Arc::clone(&self.configs().peer_client))
    }

    /// The admin server's acceptor (no client certificate asked for).
    pub fn admin_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.configs().admin_server))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &TlsFiles) -> Result<Configs, TlsError> {
    let certs = read_certs("--tls-cert", &files.cert)?;
    let key = read_key(&files.key)?;
    let roots = Arc::new(read_roots(&files.ca)?);
    let provider = provider();
    let pair = |e: rustls::Error| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    };
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Ca {
                path: files.ca.clone(),
                reason: e.to_string(),
            })?;
    let peer_server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(pair)?;
    let peer_client = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterCa::new(roots, &provider)))
        .with_client_auth_cert(certs.clone(), key.clone_key())
        .map_err(pair)?;
    let admin_server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(pair)?;
    Ok(Configs {
        peer_server: Arc::new(peer_server),
        peer_client: Arc::new(peer_client),
        admin_server: Arc::new(admin_server),
    })
}

fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // Read first, so that a missing file is reported as such.
    let text = std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            flag,
            path: path.to_owned(),
            reason: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            flag,
            path: path.to_owned(),
            reason: "holds no certificate (a PEM file with BEGIN CERTIFICATE)".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = std::fs::read(path).map_err(|source| TlsError::Read {
        flag: "--tls-key",
        path: path.to_owned(),
        source,
    })?;
    crate::config::check_private("--tls-key", path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| TlsError::Pem {
        flag: "--tls-key",
        path: path.to_owned(),
        reason: format!("holds no private key in PEM ({e})"),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("--tls-ca", path)? {
        roots.add(cert).map_err(|e| TlsError::Ca {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A client configuration that trusts `--tls-ca` (the operator commands' HTTPS client).
pub fn admin_client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = Arc::new(read_roots(ca)?);
    let provider = provider();
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Ca {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterCa::new(roots, &provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Verifies a server's certificate chain against the cluster's CA, without a host name
/// check (module docs): peers are told apart by the node names their certificates carry.
#[derive(Debug)]
struct ClusterCa {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClusterCa {
    fn new(roots: Arc<RootCertStore>, provider: &CryptoProvider) -> ClusterCa {
        ClusterCa {
            roots,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The node ids a certificate names (`understudy-node-<ID>` DNS names), ascending.
pub fn named_nodes(cert: &CertificateDer<'_>) -> Vec<NodeId> {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    let mut ids: Vec<NodeId> = cert
        .valid_dns_names()
        .filter_map(|name| name.strip_prefix(NODE_NAME_PREFIX))
        .filter_map(|id| id.parse::<u16>().ok())
        .filter(|&id| id > 0)
        .map(NodeId)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Checks that a peer's certificate, if it names nodes, names `expected`.
pub fn check_node_name(
    certs: Option<&[CertificateDer<'_>]>,
    expected: NodeId,
) -> Result<(), String> {
    let Some(end_entity) = certs.and_then(<[_]>::first) else {
        return Ok(());
    };
    let named = named_nodes(end_entity);
    if named.is_empty() || named.contains(&expected) {
        return Ok(());
    }
    let list: Vec<String> = named.iter().map(ToString::to_string).collect();
    Err(format!(
        "its TLS certificate names node {}, not node {expected}",
        list.join(", ")
    ))
}

/// A TLS handshake's failure in an operator's words: which side refused what.
pub fn describe(error: &std::io::Error) -> String {
    if let Some(words) = tls_words(error) {
        return words;
    }
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        "TLS handshake: the peer closed the connection (is it running without TLS, or with another CA?)".into()
    } else {
        format!("TLS handshake: {error}")
    }
}

/// [`describe`] for an error that TLS raised (a refused certificate, an alert from the
/// peer), `None` for any other.
pub fn tls_words(error: &std::io::Error) -> Option<String> {
    use rustls::{AlertDescription, CertificateError};
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())?;
    Some(match tls {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "TLS: the peer's certificate is not signed by this node's --tls-ca".into(),
        rustls::Error::InvalidCertificate(CertificateError::Expired) => {
            "TLS: the peer's certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidYet) => {
            "TLS: the peer's certificate is not valid yet (check the clocks)".into()
        }
        rustls::Error::NoCertificatesPresented => {
            "TLS: the peer presented no certificate (peer links need mutual TLS)".into()
        }
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown,
        ) => "TLS: the peer refused this node's certificate (is it signed by the CA the peer trusts?)"
            .into(),
        rustls::Error::InvalidMessage(_) => {
            "TLS: the peer does not speak TLS (is it running without --tls-cert?)".into()
        }
        other => format!("TLS: {other}"),
    })
}
