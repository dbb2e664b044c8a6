//! A throwaway CA and node certificates (rcgen) for TLS clusters.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A CA: its certificate (PEM, written to `ca.pem` in the dir) and what signs with it.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub pem_path: PathBuf,
}

pub fn make_ca(dir: &Path, name: &str) -> Ca {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let cert = params.self_signed(&key).expect("a self-signed CA");
    let pem_path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&pem_path, cert.pem()).expect("write the CA");
    Ca {
        cert,
        key,
        pem_path,
    }
}

/// A certificate for node `id` signed by `ca` (names `understudy-node-<id>`, `localhost`
/// and 127.0.0.1); returns the certificate and key files (the key private).
pub fn make_node_cert(dir: &Path, ca: &Ca, id: u16, tag: &str) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("a node key");
    let mut params = CertificateParams::new(vec![
        format!("understudy-node-{id}"),
        "localhost".to_string(),
    ])
    .expect("node params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("node {id}"));
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("a signed node certificate");
    let cert_path = dir.join(format!("node{id}-{tag}.pem"));
    let key_path = dir.join(format!("node{id}-{tag}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
    super::secret_file(dir, &format!("node{id}-{tag}.key"), &key.serialize_pem());
    (cert_path, key_path)
}

pub fn tls_flags(cert: &Path, key: &Path, ca: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--tls-ca".into(),
        ca.display().to_string(),
    ]
}

/// Gives every node of `cluster` its own certificate from a new CA; returns the CA.
pub fn secure(cluster: &mut super::Cluster) -> Ca {
    let dir = cluster.dir.path().to_owned();
    let ca = make_ca(&dir, "cluster");
    for node in &mut cluster.nodes {
        let (cert, key) = make_node_cert(&dir, &ca, node.id, "a");
        node.extra.extend(tls_flags(&cert, &key, &ca.pem_path));
    }
    ca
}
