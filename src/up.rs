//! `fluidity up`: a server and an agent in one process on this machine, with certificates generated on first run.
//!
//! It is the way to try Fluidity in one command; it composes the two roles and adds nothing to either.

use anyhow::Context as _;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ServerConfig, TlsFiles};
use crate::{Agent, Server, certs};

/// Client name of the certificate `up` generates for its agent.
const UP_CLIENT_CN: &str = "fluidity-up";
/// Validity of generated certificates, in days.
const UP_CERT_DAYS: u32 = 825;

/// The per-user data folder: `$XDG_DATA_HOME/fluidity`, else `$HOME/.local/share/fluidity`.
pub fn default_dir(env: &HashMap<String, String>) -> Option<PathBuf> {
    if let Some(data) = env.get("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Some(Path::new(data).join("fluidity"));
    }
    env.get("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| Path::new(home).join(".local/share/fluidity"))
}

/// A server and an agent, bound and ready to run.
pub struct Up {
    pub server: Server,
    pub agent: Agent,
    /// Where the certificates live.
    pub dir: PathBuf,
    /// True when this run generated the certificates.
    pub generated: bool,
}

impl Up {
    /// Generates certificates into `dir` if it has none, then binds a server on a free loopback port and the agent
    /// on `127.0.0.1:port`.
    ///
    /// # Errors
    /// When the certificates cannot be written or loaded, or a port cannot be bound.
    pub async fn prepare(dir: PathBuf, port: u16) -> anyhow::Result<Self> {
        let generated = !dir.join(certs::CA_CERT_FILE).exists();
        if generated {
            let target = dir.clone();
            tokio::task::spawn_blocking(move || {
                certs::init_dir(&target, &[], UP_CLIENT_CN, UP_CERT_DAYS, false)
            })
            .await
            .context("certificate generation stopped")?
            .with_context(|| format!("cannot create certificates in {}", dir.display()))?;
        }
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut server_config = ServerConfig::new(
            loopback,
            TlsFiles {
                cert_file: dir.join(certs::SERVER_CERT_FILE),
                key_file: dir.join(certs::SERVER_KEY_FILE),
                ca_cert_file: dir.join(certs::CA_CERT_FILE),
            },
        );
        server_config.health_addr = loopback;
        // Server and agent share this machine: local services are as reachable through the tunnel as without it.
        server_config.allow_private_targets = true;
        let server = Server::bind(server_config).await?;
        let mut agent_config = AgentConfig::new(
            "127.0.0.1",
            server.local_addr().port(),
            TlsFiles {
                cert_file: dir.join(certs::CLIENT_CERT_FILE),
                key_file: dir.join(certs::CLIENT_KEY_FILE),
                ca_cert_file: dir.join(certs::CA_CERT_FILE),
            },
        );
        agent_config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let agent = Agent::bind(agent_config).await?;
        Ok(Self {
            server,
            agent,
            dir,
            generated,
        })
    }

    /// What to tell the user once both are listening.
    pub fn instructions(&self) -> String {
        let proxy = self.agent.local_addr();
        let made = if self.generated {
            "generated"
        } else {
            "reused"
        };
        format!(
            "Fluidity is up.\n\
             \n  proxy:        http://{proxy}  (HTTP, HTTPS via CONNECT, WebSocket)\
             \n  tunnel:       mTLS HTTP/2 to the server on {server}\
             \n  health:       http://{proxy}/healthz   metrics: http://{proxy}/metrics\
             \n  certificates: {dir} ({made})\
             \n\nTry it:\n  curl -x http://{proxy} https://example.com/\
             \n\nBrowser: set the HTTP and HTTPS proxy to {ip} port {port} (Firefox: Settings > Network Settings >\
             \nManual proxy configuration; Chrome: --proxy-server=http://{proxy}).\
             \nShell:   export http_proxy=http://{proxy} https_proxy=http://{proxy}\
             \n\nCtrl-C stops both.\n",
            server = self.server.local_addr(),
            dir = self.dir.display(),
            ip = proxy.ip(),
            port = proxy.port(),
        )
    }

    /// Runs both until `shutdown` is cancelled, then drains both.
    ///
    /// # Errors
    /// When either role fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (server, agent) =
            tokio::join!(self.server.run(shutdown.clone()), self.agent.run(shutdown));
        server.and(agent)
    }
}
