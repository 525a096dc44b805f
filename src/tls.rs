//! All rustls setup for the tunnel: TLS 1.3 only, mutual authentication against one private CA, ALPN `h2`,
//! with the ring crypto provider chosen explicitly (no process-wide default is used or installed).
//!
//! Does: load PEM certificates, keys, CA and CRL files and check them at startup, so that a bad file is one
//! clear error naming it (missing, unreadable, not PEM, no key, key/certificate mismatch, expired or not yet
//! valid, not signed by the CA); build the server's and the agent's rustls configs; read the peer's common
//! name and certificate expiry.
//! Does not: open sockets, run handshakes or reload on SIGHUP (the roles do that with these configs), or
//! make certificates (that is `certs`). There is no way to turn verification off.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, InconsistentKeys, RootCertStore, ServerConfig};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use time::OffsetDateTime;

/// The only application protocol spoken on the tunnel.
pub const ALPN_H2: &[u8] = b"h2";

/// A file that cannot serve for TLS; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: file not found", path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("{}: not valid PEM: {reason}", path.display())]
    BadPem { path: PathBuf, reason: String },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key found", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{}: no PEM CRL found", path.display())]
    NoCrl { path: PathBuf },
    #[error("{}: certificate cannot be parsed: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: private key is unusable: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{}: CRL is unusable: {reason}", path.display())]
    BadCrl { path: PathBuf, reason: String },
    #[error("{}: private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: certificate expired on {}", path.display(), format_utc(*not_after))]
    Expired {
        path: PathBuf,
        not_after: OffsetDateTime,
    },
    #[error("{}: certificate is not valid until {}", path.display(), format_utc(*not_before))]
    NotYetValid {
        path: PathBuf,
        not_before: OffsetDateTime,
    },
    #[error("{}: certificate is not signed by the CA in {}", path.display(), ca.display())]
    NotSignedByCa { path: PathBuf, ca: PathBuf },
    #[error("{}: certificate is not accepted for this role by the CA in {}: {reason}", path.display(), ca.display())]
    Rejected {
        path: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("{}: CRL is not signed by the CA in {}", path.display(), ca.display())]
    CrlNotFromCa { path: PathBuf, ca: PathBuf },
    #[error("TLS setup failed: {0}")]
    Setup(#[source] rustls::Error),
}

/// A certificate chain and its private key, checked to belong together.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The server's config: its certificate from `cert`/`key`, client certificates required and verified against
/// `ca` only (and against the CRL in `crl` when given), TLS 1.3 only, ALPN exactly `h2`.
pub fn load_server_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
    crl: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let (roots, ca_certs) = load_roots(ca)?;
    let identity = load_identity(cert, key, &provider)?;
    check_server_cert(&identity, cert, ca, &roots, &provider)?;

    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if let Some(crl) = crl {
        verifier = verifier.with_crls(load_crls(crl, ca, &ca_certs)?);
    }
    let verifier = verifier.build().map_err(|e| TlsError::BadCertificate {
        path: ca.to_path_buf(),
        reason: e.to_string(),
    })?;
    let verifier = Arc::new(AuditingVerifier { inner: verifier });

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Setup)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The agent's config: trusts only `ca` for the server, presents the client certificate from
/// `cert`/`key`, TLS 1.3 only, ALPN `h2`.
pub fn load_client_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let (roots, _) = load_roots(ca)?;
    let identity = load_identity(cert, key, &provider)?;
    check_client_cert(&identity, cert, ca, &roots, &provider)?;

    // The server verifier uses the builder's provider for its signature algorithms.
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain, identity.key)
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Wraps the client-certificate verifier to log every refused certificate with its common name and the reason
/// (the audit trail). The log line carries the connection's span, so the source address is there too.
#[derive(Debug)]
struct AuditingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for AuditingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(err) = &verdict {
            let cn = cert_common_name(end_entity).unwrap_or_else(|| "(none)".to_owned());
            tracing::warn!(cn = %cn, reason = %err, "agent certificate refused");
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The serial number of a DER certificate (big-endian bytes, no leading zeros).
pub fn cert_serial(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(trim_serial(cert.raw_serial()))
}

/// The serial numbers revoked by the CRLs in `crl`.
///
/// # Errors
/// The file is missing, unreadable, or holds no parseable CRL.
pub fn revoked_serials(crl: &Path) -> Result<Vec<Vec<u8>>, TlsError> {
    let bytes = read_file(crl)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(crl, e))?;
    let mut serials = Vec::new();
    for der in &crls {
        let (_, parsed) = x509_parser::parse_x509_crl(der).map_err(|e| TlsError::BadCrl {
            path: crl.to_path_buf(),
            reason: e.to_string(),
        })?;
        serials.extend(
            parsed
                .iter_revoked_certificates()
                .map(|revoked| trim_serial(revoked.raw_serial())),
        );
    }
    Ok(serials)
}

fn trim_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

/// The common name of the peer's (the agent's) certificate on an established server connection.
pub fn peer_common_name(conn: &rustls::ServerConnection) -> Option<String> {
    conn.peer_certificates()?
        .first()
        .and_then(|der| cert_common_name(der))
}

/// The first common name in the subject of a DER certificate.
pub fn cert_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_owned())
}

/// Seconds until the first certificate in `cert` expires; negative once it has.
pub fn seconds_to_expiry(cert: &Path) -> Result<i64, TlsError> {
    let chain = load_certs(cert)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: cert.to_path_buf(),
    })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok((parsed.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_seconds())
}

/// The one crypto provider Fluidity uses.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            TlsError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            TlsError::Unreadable {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn bad_pem(path: &Path, err: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::BadPem {
        path: path.to_path_buf(),
        reason: err.to_string(),
    }
}

/// Every certificate in a PEM file; at least one.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => bad_pem(path, other),
    })
}

/// Fails when the certificate cannot be parsed or `now` is outside its validity period.
fn check_validity(path: &Path, der: &[u8]) -> Result<(), TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let now = OffsetDateTime::now_utc();
    let validity = cert.validity();
    let not_before = validity.not_before.to_datetime();
    let not_after = validity.not_after.to_datetime();
    if now < not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_path_buf(),
            not_before,
        });
    }
    if now > not_after {
        return Err(TlsError::Expired {
            path: path.to_path_buf(),
            not_after,
        });
    }
    Ok(())
}

/// The CA file as a root store (its only trust anchors), plus the certificates themselves.
fn load_roots(ca: &Path) -> Result<(Arc<RootCertStore>, Vec<CertificateDer<'static>>), TlsError> {
    let certs = load_certs(ca)?;
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        check_validity(ca, cert)?;
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::BadCertificate {
                path: ca.to_path_buf(),
                reason: e.to_string(),
            })?;
    }
    Ok((Arc::new(roots), certs))
}

/// Certificate chain and key, checked: parseable, key present and matching the leaf, leaf currently valid.
fn load_identity(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Identity, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
            });
        }
        Err(rustls::Error::InvalidCertificate(e)) => {
            return Err(TlsError::BadCertificate {
                path: cert.to_path_buf(),
                reason: e.to_string(),
            });
        }
        Err(e) => {
            return Err(TlsError::BadKey {
                path: key.to_path_buf(),
                reason: e.to_string(),
            });
        }
    }
    check_validity(cert, &chain[0])?;
    Ok(Identity {
        chain,
        key: key_der,
    })
}

/// The server certificate must chain to the CA and carry serverAuth.
fn check_server_cert(
    identity: &Identity,
    cert: &Path,
    ca: &Path,
    roots: &RootCertStore,
    provider: &CryptoProvider,
) -> Result<(), TlsError> {
    let parsed = rustls::server::ParsedCertificate::try_from(&identity.chain[0]).map_err(|e| {
        TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        &identity.chain[1..],
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| untrusted(e, cert, ca))
}

/// The client certificate must chain to the CA and carry clientAuth.
fn check_client_cert(
    identity: &Identity,
    cert: &Path,
    ca: &Path,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<(), TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::BadCertificate {
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    verifier
        .verify_client_cert(&identity.chain[0], &identity.chain[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| untrusted(e, cert, ca))
}

fn untrusted(err: rustls::Error, cert: &Path, ca: &Path) -> TlsError {
    match err {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => TlsError::NotSignedByCa {
            path: cert.to_path_buf(),
            ca: ca.to_path_buf(),
        },
        other => TlsError::Rejected {
            path: cert.to_path_buf(),
            ca: ca.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// Every CRL in a PEM file, each checked to be signed by one of the CA certificates. rustls would
/// otherwise treat a CRL from another CA as "revocation status unknown" and refuse every agent.
fn load_crls(
    path: &Path,
    ca: &Path,
    ca_certs: &[CertificateDer<'static>],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if crls.is_empty() {
        return Err(TlsError::NoCrl {
            path: path.to_path_buf(),
        });
    }
    let ca_parsed = ca_certs
        .iter()
        .filter_map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c)
        })
        .collect::<Vec<_>>();
    for crl in &crls {
        let (_, parsed) = x509_parser::parse_x509_crl(crl).map_err(|e| TlsError::BadCrl {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let signed = ca_parsed.iter().any(|ca_cert| {
            parsed.issuer() == ca_cert.subject()
                && parsed.verify_signature(ca_cert.public_key()).is_ok()
        });
        if !signed {
            return Err(TlsError::CrlNotFromCa {
                path: path.to_path_buf(),
                ca: ca.to_path_buf(),
            });
        }
    }
    Ok(crls)
}

/// `YYYY-MM-DD HH:MM:SS UTC`, for error messages.
fn format_utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{self, Pem};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const TEST_TIMEOUT: Duration = Duration::from_secs(10);
    const AGENT_CN: &str = "agent-test";

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().expect("tempdir");
            certs::init_dir(dir.path(), &[], AGENT_CN, 30, false).expect("init");
            Pki { dir }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn ca(&self) -> PathBuf {
            self.path(certs::CA_CERT_FILE)
        }
        fn server_config(&self, crl: Option<&Path>) -> Arc<ServerConfig> {
            load_server_config(
                &self.path(certs::SERVER_CERT_FILE),
                &self.path(certs::SERVER_KEY_FILE),
                &self.ca(),
                crl,
            )
            .expect("server config")
        }
        fn client_config(&self) -> Arc<ClientConfig> {
            load_client_config(
                &self.path(certs::CLIENT_CERT_FILE),
                &self.path(certs::CLIENT_KEY_FILE),
                &self.ca(),
            )
            .expect("client config")
        }
        /// Writes a PEM pair into the temp dir and returns (cert, key) paths.
        fn write_pair(&self, name: &str, pem: &Pem) -> (PathBuf, PathBuf) {
            let cert = self.path(&format!("{name}.crt"));
            let key = self.path(&format!("{name}.key"));
            fs::write(&cert, &pem.cert).expect("write cert");
            fs::write(&key, &pem.key).expect("write key");
            (cert, key)
        }
        fn ca_pem(&self) -> Pem {
            Pem {
                cert: fs::read_to_string(self.ca()).expect("ca cert"),
                key: fs::read_to_string(self.path(certs::CA_KEY_FILE)).expect("ca key"),
            }
        }
    }

    /// A config the product never builds: trusts `ca` for the server but presents whatever identity (or
    /// none) it is given, without the startup checks. Verification of the server stays on.
    fn unchecked_client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
        let (roots, _) = load_roots(ca).expect("roots");
        let builder = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    load_certs(cert).expect("certs"),
                    load_key(key).expect("key"),
                )
                .expect("client auth"),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(config)
    }

    struct Accepted {
        cn: Option<String>,
        alpn: Option<Vec<u8>>,
        version: Option<rustls::ProtocolVersion>,
    }

    /// One handshake over loopback, then the server writes two bytes and the agent reads them.
    /// Returns the server's accept outcome and the agent's outcome (connect plus first read).
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (
        io::Result<Accepted>,
        io::Result<(Option<Vec<u8>>, Option<rustls::ProtocolVersion>)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let (_, conn) = tls.get_ref();
            let accepted = Accepted {
                cn: peer_common_name(conn),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                version: conn.protocol_version(),
            };
            tls.write_all(b"ok").await?;
            tls.shutdown().await?;
            Ok::<_, io::Error>(accepted)
        });

        let connector = TlsConnector::from(client);
        let client_result = async {
            let tcp = TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, tcp).await?;
            let mut buf = [0u8; 2];
            // In TLS 1.3 a refused client certificate shows up here, not in connect().
            tls.read_exact(&mut buf).await?;
            let (_, conn) = tls.get_ref();
            Ok((
                conn.alpn_protocol().map(<[u8]>::to_vec),
                conn.protocol_version(),
            ))
        }
        .await;
        let server_result = server_task.await.expect("server task");
        (server_result, client_result)
    }

    /// Asserts that the handshake fails on both ends and that the server's error mentions `why`.
    async fn assert_refused(server: Arc<ServerConfig>, client: Arc<ClientConfig>, why: &str) {
        let (server_result, client_result) =
            tokio::time::timeout(TEST_TIMEOUT, handshake(server, client))
                .await
                .expect("timeout");
        match server_result {
            Ok(_) => panic!("server accepted a client it should refuse"),
            Err(e) => assert!(
                e.to_string().contains(why),
                "server error {e:?} lacks {why:?}"
            ),
        }
        assert!(
            client_result.is_err(),
            "client read data over a refused handshake"
        );
    }

    #[test]
    fn configs_load_from_generated_material() {
        let pki = Pki::new();
        let server = pki.server_config(None);
        assert_eq!(server.alpn_protocols, [b"h2".to_vec()]);
        let client = pki.client_config();
        assert_eq!(client.alpn_protocols, [b"h2".to_vec()]);
        let left = seconds_to_expiry(&pki.path(certs::CLIENT_CERT_FILE)).expect("expiry");
        assert!(left > 29 * 86_400 && left <= 30 * 86_400, "{left}");
    }

    #[test]
    fn missing_file_names_it() {
        let pki = Pki::new();
        let absent = pki.path("absent.crt");
        let err = load_server_config(&absent, &pki.path(certs::SERVER_KEY_FILE), &pki.ca(), None)
            .expect_err("missing");
        assert!(matches!(err, TlsError::Missing { .. }));
        assert!(err.to_string().contains("absent.crt"), "{err}");

        let err = load_client_config(
            &pki.path(certs::CLIENT_CERT_FILE),
            &pki.path(certs::CLIENT_KEY_FILE),
            &pki.path("no-ca.crt"),
        )
        .expect_err("missing ca");
        assert!(err.to_string().contains("no-ca.crt"), "{err}");
    }

    #[test]
    fn not_pem_and_no_key_name_the_file() {
        let pki = Pki::new();
        let junk = pki.path("junk.crt");
        fs::write(&junk, "hello, not a certificate\n").expect("write");
        let err = load_client_config(&junk, &pki.path(certs::CLIENT_KEY_FILE), &pki.ca())
            .expect_err("junk");
        assert!(matches!(err, TlsError::NoCertificate { .. }));
        assert!(err.to_string().contains("junk.crt"), "{err}");

        // A certificate where the key should be.
        let cert = pki.path(certs::CLIENT_CERT_FILE);
        let err = load_client_config(&cert, &cert, &pki.ca()).expect_err("no key");
        assert!(matches!(err, TlsError::NoPrivateKey { .. }));
        assert!(err.to_string().contains(certs::CLIENT_CERT_FILE), "{err}");
    }

    #[test]
    fn key_mismatch_names_both_files() {
        let pki = Pki::new();
        let err = load_server_config(
            &pki.path(certs::SERVER_CERT_FILE),
            &pki.path(certs::CLIENT_KEY_FILE),
            &pki.ca(),
            None,
        )
        .expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }));
        let text = err.to_string();
        assert!(
            text.contains(certs::CLIENT_KEY_FILE) && text.contains(certs::SERVER_CERT_FILE),
            "{text}"
        );
    }

    #[test]
    fn expired_and_not_yet_valid_certs_are_refused() {
        let pki = Pki::new();
        let now = OffsetDateTime::now_utc();
        let old = certs::issue_client_with_validity(
            &pki.ca_pem(),
            "old",
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .expect("issue");
        let (cert, key) = pki.write_pair("old", &old);
        let err = load_client_config(&cert, &key, &pki.ca()).expect_err("expired");
        assert!(matches!(err, TlsError::Expired { .. }));
        let text = err.to_string();
        assert!(
            text.contains("old.crt") && text.contains("expired on") && text.contains("UTC"),
            "{text}"
        );

        let future = certs::issue_client_with_validity(
            &pki.ca_pem(),
            "future",
            now + time::Duration::days(1),
            now + time::Duration::days(10),
        )
        .expect("issue");
        let (cert, key) = pki.write_pair("future", &future);
        let err = load_client_config(&cert, &key, &pki.ca()).expect_err("not yet valid");
        assert!(matches!(err, TlsError::NotYetValid { .. }));
        assert!(err.to_string().contains("future.crt"), "{err}");
        assert!(seconds_to_expiry(&pki.path("old.crt")).expect("expiry") < 0);
    }

    #[test]
    fn foreign_ca_and_wrong_role_are_refused() {
        let pki = Pki::new();
        let other = Pki::new();
        let err = load_client_config(
            &other.path(certs::CLIENT_CERT_FILE),
            &other.path(certs::CLIENT_KEY_FILE),
            &pki.ca(),
        )
        .expect_err("foreign");
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&other.path(certs::CLIENT_CERT_FILE).display().to_string()),
            "{text}"
        );

        let err = load_server_config(
            &other.path(certs::SERVER_CERT_FILE),
            &other.path(certs::SERVER_KEY_FILE),
            &pki.ca(),
            None,
        )
        .expect_err("foreign server");
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");

        // A server certificate lacks clientAuth: refused as the agent's identity.
        let err = load_client_config(
            &pki.path(certs::SERVER_CERT_FILE),
            &pki.path(certs::SERVER_KEY_FILE),
            &pki.ca(),
        )
        .expect_err("wrong role");
        assert!(matches!(err, TlsError::Rejected { .. }), "{err}");
    }

    #[test]
    fn crl_from_another_ca_is_refused() {
        let pki = Pki::new();
        let other = Pki::new();
        let crl =
            certs::revoke(other.dir.path(), &other.path(certs::CLIENT_CERT_FILE)).expect("revoke");
        let err = load_server_config(
            &pki.path(certs::SERVER_CERT_FILE),
            &pki.path(certs::SERVER_KEY_FILE),
            &pki.ca(),
            Some(&crl),
        )
        .expect_err("foreign crl");
        assert!(matches!(err, TlsError::CrlNotFromCa { .. }), "{err}");
        let junk = pki.path("junk.pem");
        fs::write(&junk, "nothing").expect("write");
        let err = load_server_config(
            &pki.path(certs::SERVER_CERT_FILE),
            &pki.path(certs::SERVER_KEY_FILE),
            &pki.ca(),
            Some(&junk),
        )
        .expect_err("no crl");
        assert!(matches!(err, TlsError::NoCrl { .. }), "{err}");
    }

    #[test]
    fn common_name_of_der() {
        let pki = Pki::new();
        let der = load_certs(&pki.path(certs::CLIENT_CERT_FILE)).expect("certs");
        assert_eq!(cert_common_name(&der[0]).as_deref(), Some(AGENT_CN));
        assert_eq!(cert_common_name(b"garbage"), None);
    }

    #[tokio::test]
    async fn handshake_with_ca_client_cert_succeeds() {
        let pki = Pki::new();
        let (server_result, client_result) = tokio::time::timeout(
            TEST_TIMEOUT,
            handshake(pki.server_config(None), pki.client_config()),
        )
        .await
        .expect("timeout");
        let accepted = server_result.expect("server accept");
        assert_eq!(accepted.cn.as_deref(), Some(AGENT_CN));
        assert_eq!(accepted.alpn.as_deref(), Some(ALPN_H2));
        assert_eq!(accepted.version, Some(rustls::ProtocolVersion::TLSv1_3));
        let (alpn, version) = client_result.expect("client");
        assert_eq!(alpn.as_deref(), Some(ALPN_H2));
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    }

    #[tokio::test]
    async fn handshake_without_client_cert_fails() {
        let pki = Pki::new();
        assert_refused(
            pki.server_config(None),
            unchecked_client_config(&pki.ca(), None),
            "no certificates",
        )
        .await;
    }

    #[tokio::test]
    async fn handshake_with_foreign_client_cert_fails() {
        let pki = Pki::new();
        let other = Pki::new();
        let client = unchecked_client_config(
            &pki.ca(),
            Some((
                &other.path(certs::CLIENT_CERT_FILE),
                &other.path(certs::CLIENT_KEY_FILE),
            )),
        );
        assert_refused(pki.server_config(None), client, "BadSignature").await;
    }

    #[tokio::test]
    async fn handshake_with_revoked_client_cert_fails() {
        let pki = Pki::new();
        let crl =
            certs::revoke(pki.dir.path(), &pki.path(certs::CLIENT_CERT_FILE)).expect("revoke");
        assert_refused(
            pki.server_config(Some(&crl)),
            pki.client_config(),
            "Revoked",
        )
        .await;

        // Another client of the same CA still gets in with the CRL in place.
        let written =
            certs::issue_into(pki.dir.path(), "laptop", pki.dir.path(), 30, false).expect("issue");
        let client =
            load_client_config(&written[0], &written[1], &pki.ca()).expect("client config");
        let (server_result, client_result) = tokio::time::timeout(
            TEST_TIMEOUT,
            handshake(pki.server_config(Some(&crl)), client),
        )
        .await
        .expect("timeout");
        assert_eq!(
            server_result.expect("server accept").cn.as_deref(),
            Some("laptop")
        );
        client_result.expect("client");
    }
}
