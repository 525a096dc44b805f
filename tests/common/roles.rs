//! The two roles in this process: [`spawn_server`] and [`spawn_agent`] bind `127.0.0.1:0` and return handles that
//! shut down on drop or on `shutdown().await`; [`tunnel`] and [`relayed_tunnel`] give both with the tunnel up. Also
//! the admin probes (`/healthz`, `/metrics`) and a tunnel opened by hand with h2, to play an agent.
#![allow(
    dead_code,
    reason = "every test crate compiles the whole harness and each uses a different part of this module"
)]

use super::client::{parse_status, raw_request};
use super::eventually;
use super::pki::TestPki;
use super::relays::Relay;
use super::targets::AbortOnDrop;
use bytes::Bytes;
use fluidity::config::{AgentConfig, ServerConfig};
use fluidity::{Agent, Server};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

    /// Waits until `/healthz` says the tunnel is down.
    pub async fn wait_down(&self) {
        let addr = self.addr;
        eventually(10, "the agent to see the tunnel down", || async move {
            health_status(addr).await == Some(503)
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
    // Every test target is on loopback, which the default direct_targets would reach without the tunnel: tests
    // of the tunnel send everything through it. tests/bypass.rs tests the direct path.
    config.direct_targets = Vec::new();
    config
}

pub async fn spawn_agent(config: AgentConfig) -> AgentHandle {
    spawn_bound_agent(Agent::bind(config).await.unwrap())
}

/// Runs an agent already bound (and tuned with its test knobs, such as `failback_after`).
pub fn spawn_bound_agent(agent: Agent) -> AgentHandle {
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

/// The body of the agent's `/healthz` (empty when it cannot be reached).
pub async fn health_body(agent: SocketAddr) -> String {
    let response = raw_request(
        agent,
        b"GET /healthz HTTP/1.1\r\nHost: fluidity\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap_or_default();
    let text = String::from_utf8_lossy(&response);
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
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

/// Opens a CONNECT stream to `target` on `sender`; true when the server answered 200.
pub async fn connect_passes(sender: h2::client::SendRequest<Bytes>, target: &str) -> bool {
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target)
        .body(())
        .unwrap();
    let Ok(mut sender) = sender.ready().await else {
        return false;
    };
    let Ok((response, _send)) = sender.send_request(request, false) else {
        return false;
    };
    matches!(response.await, Ok(response) if response.status() == http::StatusCode::OK)
}

/// Opens a fresh tunnel to `server` with `config` and a CONNECT stream to `target` on it; true when the server let
/// it through.
pub async fn server_accepts(
    server: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    target: &str,
) -> bool {
    let Ok((sender, conn)) = open_tunnel(server, config).await else {
        return false;
    };
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    connect_passes(sender, target).await
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
