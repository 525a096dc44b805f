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

/// The operating systems whose data folder conventions [`data_dir`] knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Os {
    /// Linux and the other Unix systems that follow the XDG base directory layout.
    Xdg,
    MacOs,
    Windows,
}

impl Os {
    /// The system this binary was built for.
    pub const CURRENT: Os = if cfg!(windows) {
        Os::Windows
    } else if cfg!(target_os = "macos") {
        Os::MacOs
    } else {
        Os::Xdg
    };

    /// The environment variable the data folder is found from, for messages when it is missing.
    pub fn data_dir_var(self) -> &'static str {
        match self {
            Os::Windows => "APPDATA",
            Os::Xdg | Os::MacOs => "HOME",
        }
    }
}

/// The per-user data folder of this system, see [`data_dir`].
pub fn default_dir(env: &HashMap<String, String>) -> Option<PathBuf> {
    data_dir(Os::CURRENT, env)
}

/// The per-user data folder of `os`, from the environment `env`: `$XDG_DATA_HOME/fluidity`, else
/// `$HOME/.local/share/fluidity` (XDG); `$HOME/Library/Application Support/fluidity` (macOS);
/// `%APPDATA%\fluidity` (Windows, a folder only the user can read). `None` when the variable it needs is unset or
/// empty.
pub fn data_dir(os: Os, env: &HashMap<String, String>) -> Option<PathBuf> {
    let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).map(Path::new);
    let base = match os {
        Os::Xdg => var("XDG_DATA_HOME")
            .map(Path::to_path_buf)
            .or_else(|| var("HOME").map(|home| home.join(".local").join("share")))?,
        Os::MacOs => var("HOME")?.join("Library").join("Application Support"),
        Os::Windows => var("APPDATA")?.to_path_buf(),
    };
    Some(base.join("fluidity"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    /// One row of the data folder table: the system, its environment, the folder expected.
    type Case = (Os, &'static [(&'static str, &'static str)], Option<PathBuf>);

    #[test]
    fn data_dir_follows_each_platform_convention() {
        const HOME: &str = "/home/ana";
        let cases: [Case; 11] = [
            (
                Os::Xdg,
                &[("HOME", HOME), ("XDG_DATA_HOME", "/data")],
                Some(Path::new("/data").join("fluidity")),
            ),
            (
                Os::Xdg,
                &[("HOME", HOME)],
                Some(
                    Path::new(HOME)
                        .join(".local")
                        .join("share")
                        .join("fluidity"),
                ),
            ),
            (
                Os::Xdg,
                &[("HOME", HOME), ("XDG_DATA_HOME", "")],
                Some(
                    Path::new(HOME)
                        .join(".local")
                        .join("share")
                        .join("fluidity"),
                ),
            ),
            (Os::Xdg, &[("HOME", "")], None),
            (Os::Xdg, &[("APPDATA", "/appdata")], None),
            (
                Os::MacOs,
                &[("HOME", "/Users/ana"), ("XDG_DATA_HOME", "/data")],
                Some(
                    Path::new("/Users/ana")
                        .join("Library")
                        .join("Application Support")
                        .join("fluidity"),
                ),
            ),
            (Os::MacOs, &[("XDG_DATA_HOME", "/data")], None),
            (
                Os::Windows,
                &[
                    ("APPDATA", r"C:\Users\ana\AppData\Roaming"),
                    ("HOME", HOME),
                    ("XDG_DATA_HOME", "/data"),
                ],
                Some(Path::new(r"C:\Users\ana\AppData\Roaming").join("fluidity")),
            ),
            (Os::Windows, &[("HOME", HOME)], None),
            (Os::Windows, &[("APPDATA", "")], None),
            (Os::Windows, &[], None),
        ];
        for (os, vars, want) in cases {
            assert_eq!(data_dir(os, &env(vars)), want, "{os:?} {vars:?}");
        }
    }

    #[test]
    fn default_dir_is_the_data_dir_of_this_platform() {
        let vars = env(&[("HOME", "/h"), ("XDG_DATA_HOME", "/x"), ("APPDATA", "/a")]);
        let want = if cfg!(windows) {
            Path::new("/a").join("fluidity")
        } else if cfg!(target_os = "macos") {
            Path::new("/h")
                .join("Library")
                .join("Application Support")
                .join("fluidity")
        } else {
            Path::new("/x").join("fluidity")
        };
        assert_eq!(default_dir(&vars), Some(want));
    }
}
