//! Certificates for tests: a fresh CA per test with a server and a client certificate ([`TestPki`]), an expired
//! client certificate, TLS configs for HTTPS origins, and hand-made rustls client configs for the tunnel port (to
//! play a misbehaving agent). Nothing here runs a role or a socket.
#![allow(
    dead_code,
    reason = "every test crate compiles the whole harness and each uses a different part of this module"
)]

use fluidity::certs;
use fluidity::config::TlsFiles;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;

/// A fresh CA with a server and a client certificate in a temporary folder.
pub struct TestPki {
    pub dir: TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = TempDir::new().unwrap();
        certs::init_dir(dir.path(), &[], "test-agent", 30, false).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn server_tls(&self) -> TlsFiles {
        TlsFiles {
            cert_file: self.path("server.crt"),
            key_file: self.path("server.key"),
            ca_cert_file: self.path("ca.crt"),
        }
    }

    pub fn client_tls(&self) -> TlsFiles {
        TlsFiles {
            cert_file: self.path("client.crt"),
            key_file: self.path("client.key"),
            ca_cert_file: self.path("ca.crt"),
        }
    }

    pub fn ca(&self) -> certs::Pem {
        certs::Pem {
            cert: std::fs::read_to_string(self.path("ca.crt")).unwrap(),
            key: std::fs::read_to_string(self.path("ca.key")).unwrap(),
        }
    }

    /// An expired client certificate from this CA, written next to the others.
    pub fn expired_client(&self) -> TlsFiles {
        let now = time::OffsetDateTime::now_utc();
        let pem = certs::issue_client_with_validity(
            &self.ca(),
            "expired-agent",
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
        std::fs::write(self.path("expired.crt"), pem.cert).unwrap();
        std::fs::write(self.path("expired.key"), pem.key).unwrap();
        TlsFiles {
            cert_file: self.path("expired.crt"),
            key_file: self.path("expired.key"),
            ca_cert_file: self.path("ca.crt"),
        }
    }

    /// A rustls client config trusting this CA for HTTPS origins (no client certificate).
    pub fn origin_client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(self.path("ca.crt")).unwrap();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A rustls server config for an HTTPS origin with a certificate for 127.0.0.1 from this CA.
    pub fn origin_server_config(&self) -> Arc<rustls::ServerConfig> {
        let pem = certs::issue_server(&self.ca(), &["127.0.0.1".to_string()], 30).unwrap();
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.cert.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A TLS client for the tunnel port: trusts `ca`, presents `identity` if given, speaks only `versions`.
pub fn client_config(
    ca: &std::path::Path,
    identity: Option<&TlsFiles>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(files) => {
            let chain = CertificateDer::pem_file_iter(&files.cert_file)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&files.key_file).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}
