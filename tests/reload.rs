//! Certificate rotation without a restart: both roles reload their TLS material when its files change on disk, with
//! no signal; material that does not load leaves the old in use; a CRL that changes closes the revoked agent's
//! tunnel. Each role here looks at its files every [`POLL`] instead of every 2 s.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use fluidity::certs;
use fluidity::config::{AgentConfig, ServerConfig, TlsFiles};
use http::StatusCode;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How often the roles under test look at their files.
const POLL: Duration = Duration::from_millis(50);
const DAY_SECS: f64 = 86_400.0;

/// A role started with the short poll; stops when dropped.
struct Running {
    addr: SocketAddr,
    /// The server's `health_addr`; the agent serves `/healthz` and `/metrics` on `addr`.
    health: SocketAddr,
    token: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn start_server(config: ServerConfig) -> Running {
    let server = fluidity::Server::bind(config)
        .await
        .unwrap()
        .poll_files_every(POLL);
    let (addr, health) = (server.local_addr(), server.health_addr());
    let token = CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    Running {
        addr,
        health,
        token,
    }
}

async fn start_agent(config: AgentConfig) -> Running {
    let agent = fluidity::Agent::bind(config)
        .await
        .unwrap()
        .poll_files_every(POLL);
    let addr = agent.local_addr();
    let token = CancellationToken::new();
    tokio::spawn(agent.run(token.clone()));
    let agent = Running {
        addr,
        health: addr,
        token,
    };
    eventually(10, "the tunnel to come up", || async move {
        health_status(addr).await == Some(200)
    })
    .await;
    agent
}

/// A server with a CRL (revoking an unrelated certificate, since the CRL must exist for the server to start).
fn server_config_with_crl(pki: &TestPki) -> ServerConfig {
    let other = certs::issue_into(pki.dir.path(), "other", pki.dir.path(), 30, false).unwrap();
    let crl = certs::revoke(pki.dir.path(), &other[0]).unwrap();
    let mut config = server_config(pki);
    config.crl_file = Some(crl);
    config
}

/// What identifies a certificate here: its serial and its `notAfter` (Unix seconds).
#[derive(Debug, PartialEq)]
struct Seen {
    serial: Vec<u8>,
    not_after: i64,
}

fn seen(der: &[u8]) -> Seen {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    Seen {
        serial: fluidity::tls::cert_serial(der).unwrap(),
        not_after: cert.validity().not_after.timestamp(),
    }
}

fn seen_in_pem(pem: &str) -> Seen {
    seen(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
}

/// Handshakes with the server as an agent with `pki`'s client certificate would (a fresh client config each time,
/// so no session is resumed) and returns the certificate the server presented.
async fn served(server: SocketAddr, pki: &TestPki) -> Seen {
    let config = client_config(
        &pki.path("ca.crt"),
        Some(&pki.client_tls()),
        &[&rustls::version::TLS13],
    );
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let chain = tls.get_ref().1.peer_certificates().unwrap();
    seen(&chain[0])
}

/// Opens a fresh tunnel with `identity` and a CONNECT stream to `target` on it; true when the server let it through.
async fn accepts_identity(
    server: SocketAddr,
    pki: &TestPki,
    identity: &TlsFiles,
    target: &str,
) -> bool {
    let config = client_config(
        &pki.path("ca.crt"),
        Some(identity),
        &[&rustls::version::TLS13],
    );
    server_accepts(server, config, target).await
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Replaces the file at `path` whole (written beside it, then renamed over it), so the role never sees it empty
/// while it is being written: what it sees is exactly `contents`, half a key included.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A folder laid out as the kubelet mounts a Secret: each `NAME` is a symlink to `..data/NAME`, and `..data` a
/// symlink to a timestamped folder; an update writes a new folder and swaps `..data` in one rename.
#[cfg(unix)]
struct SecretMount {
    dir: tempfile::TempDir,
    version: u32,
}

#[cfg(unix)]
impl SecretMount {
    fn new(files: &[(&str, &str)]) -> Self {
        let mut mount = Self {
            dir: tempfile::TempDir::new().unwrap(),
            version: 0,
        };
        mount.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), mount.path(name)).unwrap();
        }
        mount
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let folder = format!("..2026_12_02_00_00_{:02}.{}", self.version, self.version);
        std::fs::create_dir(self.path(&folder)).unwrap();
        for (name, contents) in files {
            std::fs::write(self.path(&folder).join(name), contents).unwrap();
        }
        std::os::unix::fs::symlink(&folder, self.path("..data_tmp")).unwrap();
        std::fs::rename(self.path("..data_tmp"), self.path("..data")).unwrap();
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_renewed_certificate_swapped_into_a_mounted_secret_is_served_without_a_signal() {
    within(30, async {
        let pki = TestPki::new();
        let ca = read(&pki.path("ca.crt"));
        let mut secret = SecretMount::new(&[
            ("tls.crt", &read(&pki.path("server.crt"))),
            ("tls.key", &read(&pki.path("server.key"))),
            ("ca.crt", &ca),
        ]);
        let mut config = server_config(&pki);
        config.tls = TlsFiles {
            cert_file: secret.path("tls.crt"),
            key_file: secret.path("tls.key"),
            ca_cert_file: secret.path("ca.crt"),
        };
        let server = start_server(config).await;
        let old = served(server.addr, &pki).await;
        assert_eq!(old, seen_in_pem(&read(&pki.path("server.crt"))));

        // A tunnel opened before the rotation, its connection driven.
        let config = client_config(
            &pki.path("ca.crt"),
            Some(&pki.client_tls()),
            &[&rustls::version::TLS13],
        );
        let (sender, conn) = open_tunnel(server.addr, config).await.unwrap();
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));

        let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
        let renewed = certs::issue_server(&pki.ca(), &sans, 90).unwrap();
        let expected = seen_in_pem(&renewed.cert);
        assert_ne!(expected.serial, old.serial);
        assert!(expected.not_after > old.not_after);
        secret.update(&[
            ("tls.crt", &renewed.cert),
            ("tls.key", &renewed.key),
            ("ca.crt", &ca),
        ]);

        let (addr, pki_ref, expected_ref) = (server.addr, &pki, &expected);
        eventually(10, "the renewed certificate to be served", || async move {
            served(addr, pki_ref).await == *expected_ref
        })
        .await;
        let gauge = metric(server.health, "fluidity_server_cert_expiry_seconds")
            .await
            .unwrap();
        assert!(gauge > 60.0 * DAY_SECS, "the expiry gauge follows: {gauge}");

        let echo = spawn_echo().await;
        assert!(
            connect_passes(sender, &echo.addr.to_string()).await,
            "the tunnel opened before the rotation stays up"
        );
    })
    .await;
}

#[tokio::test]
async fn a_crl_changed_on_disk_closes_the_revoked_agents_tunnel_and_refuses_it() {
    within(30, async {
        let pki = TestPki::new();
        let server = start_server(server_config_with_crl(&pki)).await;
        let agent = start_agent(agent_config(&pki, server.addr)).await;
        let echo = spawn_echo().await;
        let target = echo.addr.to_string();
        assert!(accepts_identity(server.addr, &pki, &pki.client_tls(), &target).await);

        // Rewrites crl.pem (through a rename, as cert-manager and editors do); no signal, no reload call.
        certs::revoke(pki.dir.path(), &pki.path("client.crt")).unwrap();

        let addr = agent.addr;
        eventually(10, "the revoked agent's tunnel to close", || async move {
            health_status(addr).await == Some(503)
        })
        .await;
        let health = server.health;
        eventually(
            10,
            "the revoked agent's reconnect to be refused",
            || async move {
                metric(health, "fluidity_server_handshake_failures_total").await >= Some(1.0)
            },
        )
        .await;
        assert_eq!(health_status(agent.addr).await, Some(503));
        assert!(
            !accepts_identity(server.addr, &pki, &pki.client_tls(), &target).await,
            "a new handshake with the revoked certificate is refused"
        );
    })
    .await;
}

/// Log lines of the current thread, kept for the test to read.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    /// Captures this thread's logs at debug and above (the roles' reload tasks run on the test's runtime thread).
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let log = Self::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("fluidity=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }
}

const FAILED: &str = "reload after a file change failed, keeping";
const FAILED_AGAIN: &str = "reload after a file change failed again";

#[tokio::test]
async fn a_mismatched_or_half_written_key_keeps_the_old_certificate_in_use() {
    let (log, _guard) = Log::capture();
    within(30, async {
        let pki = TestPki::new();
        let server = start_server(server_config(&pki)).await;
        let agent = start_agent(agent_config(&pki, server.addr)).await;
        let origin = spawn_origin().await;
        let old = served(server.addr, &pki).await;
        let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
        let renewed = certs::issue_server(&pki.ca(), &sans, 90).unwrap();
        let (cert, key) = (pki.path("server.crt"), pki.path("server.key"));

        // The certificate is copied over first; the key that matches it has not come yet.
        replace(&cert, &renewed.cert);
        let log_ref = &log;
        eventually(10, "the mismatch to be warned about", || async move {
            log_ref.count(FAILED) == 1
        })
        .await;
        assert_eq!(log.count("does not match the certificate"), 1);
        assert_eq!(
            served(server.addr, &pki).await,
            old,
            "the old pair stays in use"
        );
        assert!(
            accepts_identity(
                server.addr,
                &pki,
                &pki.client_tls(),
                &origin.addr.to_string()
            )
            .await
        );
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);

        // The same failure again (the certificate written once more) is not warned about twice.
        replace(&cert, &renewed.cert);
        eventually(10, "the second try to fail the same way", || async move {
            log_ref.count(FAILED_AGAIN) == 1
        })
        .await;
        assert_eq!(log.count(FAILED), 1);

        // Half of the key arrives: another failure, warned about once.
        replace(&key, &renewed.key[..renewed.key.len() / 2]);
        eventually(
            10,
            "the half-written key to be warned about",
            || async move { log_ref.count(FAILED) == 2 },
        )
        .await;
        assert_eq!(
            served(server.addr, &pki).await,
            old,
            "the old pair stays in use"
        );
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);

        // The rest of the key: the renewed pair loads.
        replace(&key, &renewed.key);
        let (addr, pki_ref, expected) = (server.addr, &pki, &seen_in_pem(&renewed.cert));
        eventually(10, "the renewed certificate to be served", || async move {
            served(addr, pki_ref).await == *expected
        })
        .await;
        assert_eq!(log.count(FAILED), 2, "no warning once it loads");
        assert_eq!(
            health_status(agent.addr).await,
            Some(200),
            "the agent's tunnel stayed up"
        );
    })
    .await;
}

#[tokio::test]
async fn the_agent_uses_a_renewed_client_certificate_for_its_next_tunnel() {
    within(30, async {
        let pki = TestPki::new();
        let server = start_server(server_config_with_crl(&pki)).await;
        let agent = start_agent(agent_config(&pki, server.addr)).await;
        let origin = spawn_origin().await;
        let old_cert = pki.path("old-client.crt");
        std::fs::copy(pki.path("client.crt"), &old_cert).unwrap();
        let connects = metric(agent.addr, "fluidity_agent_tunnel_connects_total")
            .await
            .unwrap();

        // The operator copies the renewed pair over the old one, key first: two writes.
        let renewed = certs::issue_client(&pki.ca(), "test-agent", 90).unwrap();
        std::fs::write(pki.path("client.key"), &renewed.key).unwrap();
        std::fs::write(pki.path("client.crt"), &renewed.cert).unwrap();
        let addr = agent.addr;
        eventually(
            10,
            "the agent to load the renewed certificate",
            || async move {
                metric(addr, "fluidity_agent_cert_expiry_seconds").await > Some(60.0 * DAY_SECS)
            },
        )
        .await;
        assert_eq!(
            echo_status(agent.addr, origin.addr).await,
            StatusCode::OK,
            "the tunnel opened with the old certificate stays up"
        );

        // Revoking the old certificate closes that tunnel; only the renewed certificate gets back in.
        certs::revoke(pki.dir.path(), &old_cert).unwrap();
        eventually(
            10,
            "a new tunnel with the renewed certificate",
            || async move {
                metric(addr, "fluidity_agent_tunnel_connects_total").await > Some(connects)
                    && health_status(addr).await == Some(200)
            },
        )
        .await;
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);
    })
    .await;
}
