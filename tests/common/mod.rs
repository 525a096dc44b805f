//! Shared test harness: a fresh PKI per test, in-process server and agent on 127.0.0.1:0, local targets (HTTP
//! origin, TLS origin, TCP echo, WebSocket echo) and proxy clients.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part of the harness"
)]
#![allow(
    clippy::unwrap_used,
    reason = "a harness failure is a test failure: panicking is the point"
)]

use bytes::Bytes;
use fluidity::config::{AgentConfig, ServerConfig, TlsFiles};
use fluidity::{Agent, Server, certs};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Runs a test body with an overall deadline, so a hang fails in seconds.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"))
}

/// Polls `check` every 20 ms until it is true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A server running in this process until dropped or shut down.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub health: SocketAddr,
    pub reloader: fluidity::server::ServerReload,
    token: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl ServerHandle {
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A server config for tests: loopback, free ports, private targets allowed (every target here is on loopback).
pub fn server_config(pki: &TestPki) -> ServerConfig {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), pki.server_tls());
    config.health_addr = "127.0.0.1:0".parse().unwrap();
    config.allow_private_targets = true;
    config
}

pub async fn spawn_server(config: ServerConfig) -> ServerHandle {
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    let health = server.health_addr();
    let reloader = server.reloader();
    let token = CancellationToken::new();
    let task = tokio::spawn(server.run(token.clone()));
    ServerHandle {
        addr,
        health,
        reloader,
        token,
        task: Some(task),
    }
}

/// An agent running in this process until dropped or shut down.
pub struct AgentHandle {
    pub addr: SocketAddr,
    token: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl AgentHandle {
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Waits until `/healthz` says the tunnel is up.
    pub async fn wait_up(&self) {
        let addr = self.addr;
        eventually(10, "the tunnel to come up", || async move {
            health_status(addr).await == Some(200)
        })
        .await;
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub fn agent_config(pki: &TestPki, server: SocketAddr) -> AgentConfig {
    let mut config = AgentConfig::new("127.0.0.1", server.port(), pki.client_tls());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config
}

pub async fn spawn_agent(config: AgentConfig) -> AgentHandle {
    let agent = Agent::bind(config).await.unwrap();
    let addr = agent.local_addr();
    let token = CancellationToken::new();
    let task = tokio::spawn(agent.run(token.clone()));
    AgentHandle {
        addr,
        token,
        task: Some(task),
    }
}

/// A server and an agent with the tunnel up.
pub struct Tunnel {
    pub pki: TestPki,
    pub server: ServerHandle,
    pub agent: AgentHandle,
}

pub async fn tunnel() -> Tunnel {
    tunnel_with(|_| {}, |_| {}).await
}

pub async fn tunnel_with(
    server_tweak: impl FnOnce(&mut ServerConfig),
    agent_tweak: impl FnOnce(&mut AgentConfig),
) -> Tunnel {
    let pki = TestPki::new();
    let mut server_cfg = server_config(&pki);
    server_tweak(&mut server_cfg);
    let server = spawn_server(server_cfg).await;
    let mut agent_cfg = agent_config(&pki, server.addr);
    agent_tweak(&mut agent_cfg);
    let agent = spawn_agent(agent_cfg).await;
    agent.wait_up().await;
    Tunnel { pki, server, agent }
}

/// A server and an agent whose tunnel runs through a [`Relay`], so tests can break the link; the tunnel is up.
pub struct RelayedTunnel {
    pub pki: TestPki,
    pub server: ServerHandle,
    pub relay: Relay,
    pub agent: AgentHandle,
}

pub async fn relayed_tunnel(agent_tweak: impl FnOnce(&mut AgentConfig)) -> RelayedTunnel {
    let pki = TestPki::new();
    let server = spawn_server(server_config(&pki)).await;
    let relay = Relay::start(server.addr).await;
    let mut config = agent_config(&pki, relay.addr);
    agent_tweak(&mut config);
    let agent = spawn_agent(config).await;
    agent.wait_up().await;
    RelayedTunnel {
        pki,
        server,
        relay,
        agent,
    }
}

/// GET `/healthz` on the agent (origin-form); the status, or `None` when it cannot be reached.
pub async fn health_status(agent: SocketAddr) -> Option<u16> {
    let response = raw_request(
        agent,
        b"GET /healthz HTTP/1.1\r\nHost: fluidity\r\nConnection: close\r\n\r\n",
    )
    .await
    .ok()?;
    parse_status(&response)
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

/// The agent's side of a tunnel to `server`, opened by hand: TCP, TLS with `config`, then the HTTP/2 handshake.
/// The connection comes back unpolled: the caller decides whether it is driven (and so answers pings).
pub async fn open_tunnel(
    server: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<
    (
        h2::client::SendRequest<Bytes>,
        h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>>,
    ),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await?;
    Ok(h2::client::handshake(tls).await?)
}

/// Sends raw bytes and reads until the peer closes (bounded to 5 s).
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await {
        Ok(result) => result.map(|_| out),
        Err(_) => Ok(out),
    }
}

/// Sends raw bytes and reads only the status line's code (for answers after which the peer may keep the
/// connection open).
pub async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.write_all(bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < 12 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    parse_status(&got)
}

pub fn parse_status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Reads an HTTP/1.1 response head from `stream` byte by byte (so nothing after the head is consumed).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(
            n > 0,
            "connection closed inside the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Opens a CONNECT tunnel through the agent; returns the stream after a `200`.
pub async fn connect_through(agent: SocketAddr, target: &str) -> TcpStream {
    let mut stream = TcpStream::connect(agent).await.unwrap();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT answered {head:?}"
    );
    stream
}

/// A hyper HTTP/1.1 client connection to the agent; requests with absolute URIs go out in absolute form.
pub async fn proxy_client(agent: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(agent).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty_body() -> TestBody {
    full(Bytes::new())
}

/// A deterministic byte pattern, `len` bytes long, streamed in 64 KiB frames without a length.
pub fn pattern_body(len: u64) -> TestBody {
    let chunk = 64 * 1024u64;
    let stream = futures_util::stream::iter((0..len.div_ceil(chunk)).map(move |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(pattern_chunk(start, end)))
    }));
    StreamBody::new(stream).boxed()
}

/// Byte `i` of the pattern is `i % 251`; this holds the pattern from 0 for 64 KiB plus one period, so that any chunk
/// of up to 64 KiB is a slice of it (cheap even in an unoptimised test build).
static PATTERN: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
    (0..64 * 1024 + 251u64)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
});

/// The pattern bytes `start..end` (at most 64 KiB).
pub fn pattern_chunk(start: u64, end: u64) -> Bytes {
    let from = (start % 251) as usize;
    PATTERN.slice(from..from + (end - start) as usize)
}

/// Whether `data` is the pattern from byte `offset` on.
pub fn is_pattern(offset: u64, data: &[u8]) -> bool {
    data.chunks(64 * 1024).enumerate().all(|(k, piece)| {
        let at = offset + (k * 64 * 1024) as u64;
        piece == pattern_chunk(at, at + piece.len() as u64)
    })
}

/// Reads a body to the end, checking it against the pattern; returns its length.
pub async fn check_pattern(mut body: Incoming) -> u64 {
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            if !is_pattern(offset, data) {
                let i = data
                    .iter()
                    .enumerate()
                    .position(|(i, b)| *b != ((offset + i as u64) % 251) as u8)
                    .unwrap_or(0);
                panic!("byte {} differs", offset + i as u64);
            }
            offset += data.len() as u64;
        }
    }
    offset
}

/// Resident memory of this process (VmRSS) and its peak (VmHWM), in KiB.
pub fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A local HTTP/1.1 origin. Routes:
/// - `/echo`: 200, body = "METHOD path\n" then one "name: value" line per request header;
/// - `/body`: the request body streamed back;
/// - `/sink`: reads the body, answers "LEN" and checks it against the pattern (answers 422 if it differs);
/// - `/bytes/N`: N pattern bytes with a content-length;
/// - `/status/N`: status N (301/302 with `Location: /moved`);
/// - `/multi`: multi-valued headers; `/hop`: hop-by-hop headers in the response;
/// - `/never`: no answer ever; anything else: 404.
pub struct Origin {
    pub addr: SocketAddr,
    pub _task: AbortOnDrop,
}

pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn spawn_origin() -> Origin {
    serve_each(serve_origin_connection).await
}

/// Serves the test origin's routes over HTTP/1.1 (with upgrades) on one accepted connection until it closes.
pub async fn serve_origin_connection(stream: TcpStream) {
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service_fn(origin_route))
        .with_upgrades()
        .await;
}

/// Listens on a fresh loopback port and runs `handle` on a task of its own for every connection accepted there.
pub async fn serve_each<F, Fut>(handle: F) -> Origin
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    Origin {
        addr,
        _task: AbortOnDrop(task),
    }
}

/// An HTTPS origin (certificate for 127.0.0.1 from the test CA) serving the same routes.
pub async fn spawn_tls_origin(pki: &TestPki) -> Origin {
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.origin_server_config());
    serve_each(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service_fn(origin_route))
                .await;
        }
    })
    .await
}

async fn origin_route(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let response = if path == "/echo" {
        let mut text = format!(
            "{} {}\n",
            req.method(),
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        for (name, value) in req.headers() {
            text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
        }
        Response::new(full(text))
    } else if path == "/body" {
        Response::new(req.into_body().map_err(Into::into).boxed())
    } else if path == "/sink" {
        let mut body = req.into_body();
        let mut offset = 0u64;
        let mut intact = true;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                intact = false;
                break;
            };
            if let Some(data) = frame.data_ref() {
                intact &= is_pattern(offset, data);
                offset += data.len() as u64;
            }
        }
        let mut response = Response::new(full(offset.to_string()));
        if !intact {
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        }
        response
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let len: u64 = n.parse().unwrap_or(0);
        let mut response = Response::new(pattern_body(len));
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, len.into());
        response
    } else if let Some(n) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(n.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = Response::new(
            if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                empty_body()
            } else {
                full(format!("status {}", status.as_u16()))
            },
        );
        *response.status_mut() = status;
        if status.is_redirection() {
            response
                .headers_mut()
                .insert(http::header::LOCATION, "/moved".parse().unwrap());
        }
        response
    } else if path == "/multi" {
        let mut response = Response::new(full("multi"));
        let headers = response.headers_mut();
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        headers.append(http::header::SET_COOKIE, "one=1".parse().unwrap());
        headers.append(http::header::SET_COOKIE, "two=2".parse().unwrap());
        response
    } else if path == "/hop" {
        let mut response = Response::new(full("hop"));
        let headers = response.headers_mut();
        headers.insert(http::header::CONNECTION, "x-hop-secret".parse().unwrap());
        headers.insert("x-hop-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-end-to-end", "kept".parse().unwrap());
        response
    } else if path == "/never" {
        std::future::pending::<()>().await;
        unreachable!()
    } else {
        let mut response = Response::new(full("not found"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
    };
    Ok(response)
}

/// A TCP echo target that also reports EOF: after the peer half-closes, it writes "EOF" and closes.
pub async fn spawn_echo() -> Origin {
    serve_each(|mut stream| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => {
                    let _ = stream.write_all(b"EOF").await;
                    let _ = stream.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
    .await
}

/// A WebSocket echo target (plain TCP; wrap it with TLS by passing `tls`).
pub async fn spawn_ws_echo(tls: Option<Arc<rustls::ServerConfig>>) -> Origin {
    use futures_util::{SinkExt, StreamExt};
    async fn echo<S>(stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            let is_data = message.is_text() || message.is_binary();
            if is_data && ws.send(message).await.is_err() {
                return;
            }
        }
    }
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    serve_each(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        echo(tls).await;
                    }
                }
                None => echo(stream).await,
            }
        }
    })
    .await
}

/// A port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Absolute-form GET through the agent with a fresh connection; returns status and body.
/// The status of `GET /echo` on `origin`, asked through the agent at `agent` on a fresh connection.
pub async fn echo_status(agent: SocketAddr, origin: SocketAddr) -> StatusCode {
    get(agent, &format!("http://{origin}/echo")).await.0
}

/// An absolute-form GET on an open proxy client connection.
pub async fn send_get(
    client: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    url: impl AsRef<str>,
) -> Response<Incoming> {
    client
        .send_request(Request::get(url.as_ref()).body(empty_body()).unwrap())
        .await
        .unwrap()
}

pub async fn get(agent: SocketAddr, url: &str) -> (StatusCode, Bytes) {
    let mut client = proxy_client(agent).await;
    let response = send_get(&mut client, url).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

/// A TCP relay between an agent and a server, to break the link on purpose: `cut` closes every connection it
/// carries now; `freeze` makes them go silent (bytes are swallowed, nothing closes). New connections work normally.
pub struct Relay {
    pub addr: SocketAddr,
    /// Each connection remembers the epoch it started in; `cut` and `freeze` act on the epochs before theirs.
    epoch: Arc<std::sync::atomic::AtomicU64>,
    cut_below: Arc<tokio::sync::watch::Sender<u64>>,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
    /// Like `frozen_below`, for the upstream → client direction only.
    frozen_down_below: Arc<std::sync::atomic::AtomicU64>,
    pub _task: AbortOnDrop,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let epoch = Arc::new(AtomicU64::new(0));
        let cut_below = Arc::new(tokio::sync::watch::channel(0u64).0);
        let frozen_below = Arc::new(AtomicU64::new(0));
        let frozen_down_below = Arc::new(AtomicU64::new(0));
        let (epoch_t, cut_t, frozen_t) = (epoch.clone(), cut_below.clone(), frozen_below.clone());
        let frozen_down_t = frozen_down_below.clone();
        let Origin { addr, _task } = relay_loop(upstream, move |inbound, outbound| {
            let mine = epoch_t.load(Ordering::SeqCst);
            let mut cut = cut_t.subscribe();
            let frozen = frozen_t.clone();
            let frozen_down = frozen_down_t.clone();
            tokio::spawn(async move {
                let (a_read, a_write) = inbound.into_split();
                let (b_read, b_write) = outbound.into_split();
                let frozen2 = frozen.clone();
                let up = pump(a_read, b_write, move || {
                    frozen.load(Ordering::SeqCst) > mine
                });
                let down = pump(b_read, a_write, move || {
                    frozen2.load(Ordering::SeqCst) > mine
                        || frozen_down.load(Ordering::SeqCst) > mine
                });
                tokio::select! {
                    () = async { tokio::join!(up, down); } => {}
                    _ = cut.wait_for(|below| *below > mine) => {}
                }
            });
        })
        .await;
        Self {
            addr,
            epoch,
            cut_below,
            frozen_below,
            frozen_down_below,
            _task,
        }
    }

    /// Makes every connection relayed so far one-way: bytes still go upstream, nothing comes back.
    pub fn freeze_downstream(&self) {
        let next = self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.frozen_down_below
            .store(next, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection relayed so far.
    pub fn cut(&self) {
        let next = self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.cut_below.send_replace(next);
    }

    /// Makes every connection relayed so far silent: bytes go in and never come out, nothing is closed.
    pub fn freeze(&self) {
        let next = self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.frozen_below
            .store(next, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    is_frozen: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if is_frozen() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A request body fed through a channel, to control when each part is sent.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| {
            (
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk)),
                rx,
            )
        })
    });
    (tx, StreamBody::new(stream).boxed())
}

/// Reads a counter or gauge from Prometheus text.
pub async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let response = raw_request(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A TCP relay that delivers every byte `delay` after it read it, both ways: a long path on loopback.
pub struct DelayRelay {
    pub addr: SocketAddr,
    pub _task: AbortOnDrop,
}

impl DelayRelay {
    pub async fn start(upstream: SocketAddr, delay: Duration) -> Self {
        let Origin { addr, _task } = relay_loop(upstream, move |inbound, outbound| {
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (a_read, a_write) = inbound.into_split();
            let (b_read, b_write) = outbound.into_split();
            tokio::spawn(delayed(a_read, b_write, delay));
            tokio::spawn(delayed(b_read, a_write, delay));
        })
        .await;
        Self { addr, _task }
    }
}

/// Listens on a fresh loopback port; hands every connection accepted there, with a new connection to `upstream`,
/// to `relay`.
async fn relay_loop(
    upstream: SocketAddr,
    relay: impl Fn(TcpStream, TcpStream) + Send + Sync + 'static,
) -> Origin {
    let relay = Arc::new(relay);
    serve_each(move |inbound| {
        let relay = relay.clone();
        async move {
            if let Ok(outbound) = TcpStream::connect(upstream).await {
                relay(inbound, outbound);
            }
        }
    })
    .await
}

/// One direction of a [`DelayRelay`]: what is read now is written `delay` later, in order.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Bytes)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0
            || tx
                .send((
                    tokio::time::Instant::now() + delay,
                    Bytes::copy_from_slice(&buf[..n]),
                ))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
