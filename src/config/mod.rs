//! Layered configuration for both roles: built-in defaults, a YAML file, `FLUIDITY_*` environment variables and
//! command-line flags, merged with the precedence flag > env > YAML > default, then validated into
//! [`AgentConfig`] or [`ServerConfig`].
//!
//! Layout:
//! - `layers`: the partial layers [`AgentLayer`] and [`ServerLayer`] (also the clap flags), their key lists and
//!   the pure merge functions;
//! - `sources`: reading the YAML file (unknown keys, type errors, relative paths) and the environment map, and the
//!   `--save` write-back;
//! - `resolve`: the validation pass and the conversion into the typed configs.
//!
//! Every error is one line that names the key and where the value came from (file, variable or flag).
//! Relative certificate paths from the YAML file are resolved against the file's folder, once, here; paths from the
//! environment or flags are left relative to the current directory.
//!
//! This module does not read the process environment (callers pass it in as a map), open certificate files, bind
//! sockets or set up logging; it only produces validated values.

mod layers;
mod resolve;
mod servers;
mod sources;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub(crate) use layers::annotate_help;
pub use layers::{AgentLayer, ServerLayer};
pub use servers::{ServerEndpoint, parse_server};

use layers::{Layer, merge};
use sources::{Provenance, env_layer, read_file_layer, save_layer};

/// Agent: default server port (`server_port`).
pub const DEFAULT_SERVER_PORT: u16 = 8443;
/// Agent: default port of the local proxy (`local_proxy_port`).
pub const DEFAULT_LOCAL_PROXY_PORT: u16 = 8080;
/// Agent: default `listen_addr` (loopback only).
pub const DEFAULT_AGENT_LISTEN_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Agent: default client certificate.
pub const DEFAULT_AGENT_CERT_FILE: &str = "certs/client.crt";
/// Agent: default client private key.
pub const DEFAULT_AGENT_KEY_FILE: &str = "certs/client.key";
/// Both: default CA certificate.
pub const DEFAULT_CA_CERT_FILE: &str = "certs/ca.crt";
/// Agent: default `header_read_timeout_secs`.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Agent: the largest accepted `header_read_timeout_secs`.
pub const MAX_HEADER_READ_TIMEOUT_SECS: u64 = 300;
/// Agent: default `tunnels`.
pub const DEFAULT_TUNNELS: usize = 1;
/// Agent: the most `tunnels` accepted.
pub const MAX_TUNNELS: usize = 16;
/// Agent: default `direct_targets`, destinations the server could not reach anyway: loopback, the private and
/// link-local ranges (IPv4 and IPv6), `localhost` and mDNS `.local` names.
pub const DEFAULT_DIRECT_TARGETS: &[&str] = &[
    "127.0.0.0/8",
    "::1",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
    "169.254.0.0/16",
    "fe80::/10",
    "localhost",
    "*.local",
];

/// Server: default `listen_addr` (all IPv4 interfaces).
pub const DEFAULT_SERVER_LISTEN_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Server: default tunnel port (`listen_port`).
pub const DEFAULT_LISTEN_PORT: u16 = 8443;
/// Server: default certificate.
pub const DEFAULT_SERVER_CERT_FILE: &str = "certs/server.crt";
/// Server: default private key.
pub const DEFAULT_SERVER_KEY_FILE: &str = "certs/server.key";
/// Server: default `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Server: default `health_addr`.
pub const DEFAULT_HEALTH_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8081));
/// Server: default `max_streams_per_agent`.
pub const DEFAULT_MAX_STREAMS_PER_AGENT: u32 = 1000;
/// Server: default `rate_limit_per_agent` (0 = off).
pub const DEFAULT_RATE_LIMIT_PER_AGENT: u32 = 0;
/// Server: default `tls_handshake_timeout_secs`.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

/// Both: default `log_level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Both: default `log_format`.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
/// Both: default `connect_timeout_secs`.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Agent: default `keepalive_secs` (ping interval and answer deadline on the tunnel).
pub const DEFAULT_AGENT_KEEPALIVE_SECS: u64 = 5;
/// Server: default `keepalive_secs`.
pub const DEFAULT_SERVER_KEEPALIVE_SECS: u64 = 20;
/// Both: default `idle_timeout_secs` (0 = off).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;

/// `certs init`/`certs issue`: default validity in days.
pub const DEFAULT_CERT_DAYS: u32 = 825;
/// `certs init`: default common name of the client certificate.
pub const DEFAULT_CLIENT_CN: &str = "fluidity-agent";

/// The certificate, private key and CA files of one role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate (PEM).
    pub cert_file: PathBuf,
    /// This side's private key (PEM).
    pub key_file: PathBuf,
    /// The CA the peer's certificate must chain to (PEM).
    pub ca_cert_file: PathBuf,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings of one role.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// A level word (`info`) or a tracing filter directive (`fluidity=debug,h2=warn`), already validated.
    pub level: String,
    /// Text or JSON.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            format: DEFAULT_LOG_FORMAT,
        }
    }
}

/// Dependencies whose logs are noise at `info`; they stay at `warn` unless the filter names them.
const QUIET_DEPENDENCIES: [&str; 4] = ["h2", "hyper", "hyper_util", "rustls"];

/// The tracing filter a `log_level` value stands for: the value itself, plus `warn` for the noisy dependencies it
/// does not name. The loaders check `log_level` with it and the binary builds its subscriber with it, so a value
/// that loads is never dropped for a default later.
///
/// # Errors
/// tracing's [`ParseError`](tracing_subscriber::filter::ParseError) when a directive does not parse (`h2=loud`).
pub fn log_filter(
    level: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    let mut directives = level.to_owned();
    for dependency in QUIET_DEPENDENCIES {
        if !directives.contains(dependency) {
            directives.push_str(&format!(",{dependency}=warn"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(directives)
}

/// Credentials callers must present to the agent (Basic `Proxy-Authorization`).
///
/// Written as `"user:password"` in YAML, env and flags. `Debug` redacts the password, and there is deliberately no
/// `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyAuth {
    user: String,
    password: String,
}

impl ProxyAuth {
    /// Credentials from parts. The caller is responsible for a non-empty `user` without ':'.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }

    /// Parses `"user:password"` (split at the first ':'; the password may contain ':').
    /// Returns `None` without a ':' or with an empty user.
    pub fn parse(s: &str) -> Option<Self> {
        let (user, password) = s.split_once(':')?;
        (!user.is_empty()).then(|| Self::new(user, password))
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// True when `user` and `password` are this credential. Both are compared whole, without an early exit, so
    /// the answer's timing does not reveal how much of a guess was right.
    pub(crate) fn matches(&self, user: &[u8], password: &[u8]) -> bool {
        let user_ok = constant_time_eq(user, self.user.as_bytes());
        let password_ok = constant_time_eq(password, self.password.as_bytes());
        user_ok & password_ok
    }
}

/// Compares without an early exit over the bytes (the lengths are not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The message for a malformed `proxy_auth`; it never contains the value.
const PROXY_AUTH_FORMAT: &str = "expected \"user:password\" with a non-empty user";

impl FromStr for ProxyAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| PROXY_AUTH_FORMAT.to_owned())
    }
}

impl Serialize for ProxyAuth {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}:{}", self.user, self.password))
    }
}

impl<'de> Deserialize<'de> for ProxyAuth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than `String::deserialize` then parse: an error raised inside the deserializer's call
        // gets the key, line and column attached by yaml_serde.
        struct ProxyAuthVisitor;

        impl serde::de::Visitor<'_> for ProxyAuthVisitor {
            type Value = ProxyAuth;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"user:password\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ProxyAuth, E> {
                ProxyAuth::parse(text).ok_or_else(|| E::custom(PROXY_AUTH_FORMAT))
            }
        }

        deserializer.deserialize_str(ProxyAuthVisitor)
    }
}

/// Validated agent settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The servers in order of preference (at least one): `server_ip`'s entries, each with its port (an entry's
    /// own, else `server_port`).
    pub servers: Vec<ServerEndpoint>,
    /// Where the local proxy listens: `listen_addr:local_proxy_port`.
    pub listen: SocketAddr,
    /// Client certificate, key and the CA the server must chain to.
    pub tls: TlsFiles,
    /// Logging.
    pub log: LogSettings,
    /// Answer CONNECT before the server reached the target.
    pub fast_connect: bool,
    /// Credentials callers must send, if any.
    pub proxy_auth: Option<ProxyAuth>,
    /// A non-loopback `listen` without `proxy_auth` was explicitly allowed.
    pub allow_open_proxy: bool,
    /// Limit for reaching the server.
    pub connect_timeout: Duration,
    /// Close a stream with no bytes moving for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Ping interval on the tunnel, and how long an answer may take.
    pub keepalive: Duration,
    /// Limit for a caller to send its request head.
    pub header_read_timeout: Duration,
    /// Tunnel connections to keep to the server, each on a thread of its own.
    pub tunnels: usize,
    /// Rules (`crate::rules` syntax, checked) for targets the agent connects to itself instead of tunnelling.
    pub direct_targets: Vec<String>,
}

impl AgentConfig {
    /// Agent settings for one server with every other field at its default (listening on 127.0.0.1:8080), for
    /// tests and `up`.
    pub fn new(server_host: impl Into<String>, server_port: u16, tls: TlsFiles) -> Self {
        Self {
            servers: vec![ServerEndpoint::new(server_host, server_port)],
            listen: SocketAddr::new(DEFAULT_AGENT_LISTEN_ADDR, DEFAULT_LOCAL_PROXY_PORT),
            tls,
            log: LogSettings::default(),
            fast_connect: false,
            proxy_auth: None,
            allow_open_proxy: false,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
            idle_timeout: idle_timeout(DEFAULT_IDLE_TIMEOUT_SECS),
            keepalive: Duration::from_secs(DEFAULT_AGENT_KEEPALIVE_SECS),
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            tunnels: DEFAULT_TUNNELS,
            direct_targets: default_direct_targets(),
        }
    }
}

/// [`DEFAULT_DIRECT_TARGETS`] as owned rules.
pub(crate) fn default_direct_targets() -> Vec<String> {
    DEFAULT_DIRECT_TARGETS
        .iter()
        .map(|r| (*r).to_owned())
        .collect()
}

/// Validated server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the tunnel port listens: `listen_addr:listen_port`.
    pub listen: SocketAddr,
    /// Server certificate, key and the CA client certificates must chain to.
    pub tls: TlsFiles,
    /// Logging.
    pub log: LogSettings,
    /// Maximum concurrent agent connections (> 0).
    pub max_connections: usize,
    /// Where `/healthz` and `/metrics` are served.
    pub health_addr: SocketAddr,
    /// Allow targets on loopback, private and similar addresses.
    pub allow_private_targets: bool,
    /// PEM CRL of revoked client certificates, if any.
    pub crl_file: Option<PathBuf>,
    /// Maximum concurrent streams per agent connection (> 0).
    pub max_streams_per_agent: u32,
    /// New streams per second per client certificate; 0 = off.
    pub rate_limit_per_agent: u32,
    /// New streams allowed at once before the rate applies (>= 1).
    pub rate_limit_burst: u32,
    /// Target rules to refuse (unparsed: CIDRs, host names, `:port`).
    pub deny_targets: Vec<String>,
    /// If not empty, only targets matching these rules are allowed.
    pub allow_targets: Vec<String>,
    /// Limit for dialing a target.
    pub connect_timeout: Duration,
    /// Close a stream with no bytes moving for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Ping interval on agent tunnels, and how long an answer may take.
    pub keepalive: Duration,
    /// Limit for an agent's TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl ServerConfig {
    /// Server settings with every other field at its default, for tests and `up`.
    pub fn new(listen: SocketAddr, tls: TlsFiles) -> Self {
        Self {
            listen,
            tls,
            log: LogSettings::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            health_addr: DEFAULT_HEALTH_ADDR,
            allow_private_targets: false,
            crl_file: None,
            max_streams_per_agent: DEFAULT_MAX_STREAMS_PER_AGENT,
            rate_limit_per_agent: DEFAULT_RATE_LIMIT_PER_AGENT,
            rate_limit_burst: rate_limit_burst(DEFAULT_RATE_LIMIT_PER_AGENT, None),
            deny_targets: Vec::new(),
            allow_targets: Vec::new(),
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
            idle_timeout: idle_timeout(DEFAULT_IDLE_TIMEOUT_SECS),
            keepalive: Duration::from_secs(DEFAULT_SERVER_KEEPALIVE_SECS),
            tls_handshake_timeout: Duration::from_secs(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS),
        }
    }
}

/// `idle_timeout_secs` as a duration; 0 means no idle timeout.
fn idle_timeout(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// The burst: as given, else one second's worth of the rate, and never below 1.
fn rate_limit_burst(rate: u32, burst: Option<u32>) -> u32 {
    burst.unwrap_or(rate).max(1)
}

/// A configuration that cannot be used. `Display` is one line naming the key and where its value came from.
///
/// Underlying I/O and YAML errors are part of the message rather than `source()`, so reporting the error alone
/// (or with an anyhow chain) never prints them twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML file could not be read.
    #[error("cannot read {}: {}", one_line(file.display()), one_line(error))]
    Read {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// The YAML file could not be written (`--save`).
    #[error("cannot write {}: {}", one_line(file.display()), one_line(error))]
    Write {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// The YAML file does not parse, or a value has the wrong type (serde names the key, line and column).
    #[error("{}: {}", one_line(file.display()), one_line(error))]
    Yaml {
        /// The file.
        file: PathBuf,
        /// The parser's error, with its location.
        error: yaml_serde::Error,
    },
    /// The YAML file's top level is not a mapping of keys to values.
    #[error("{}: expected a mapping of keys to values at the top level", one_line(file.display()))]
    NotAMapping {
        /// The file.
        file: PathBuf,
    },
    /// The YAML file has a key the role does not know.
    #[error("{}: unknown key `{}` ({})", one_line(file.display()), one_line(key), unknown_key_hint(suggestion.as_deref(), valid))]
    UnknownKey {
        /// The file.
        file: PathBuf,
        /// The key as written.
        key: String,
        /// The nearest valid key, when it looks like a typo.
        suggestion: Option<String>,
        /// All valid keys, comma-separated.
        valid: String,
    },
    /// A `FLUIDITY_*` variable has a value of the wrong type.
    #[error("{var}: {}", one_line(error))]
    Env {
        /// The variable, e.g. `FLUIDITY_SERVER_PORT`.
        var: String,
        /// The deserializer's error.
        error: yaml_serde::Error,
    },
    /// A required key is set nowhere.
    #[error(
        "{key} is required (set it in {}, {} or {})",
        one_line(file),
        sources::env_var_name(key),
        sources::flag_name(key)
    )]
    Missing {
        /// The key.
        key: &'static str,
        /// The config file given, or the conventional name.
        file: String,
    },
    /// A value has the right type but is not acceptable.
    #[error("{}: {key}: {}", one_line(from), one_line(message))]
    Invalid {
        /// Where the value came from: the file, `FLUIDITY_KEY`, `--key` or `default`.
        from: String,
        /// The key.
        key: &'static str,
        /// Why it is refused.
        message: String,
    },
}

/// `text` with its control characters (line breaks included) escaped, so that a message stays one line whatever
/// value, key or path it quotes.
fn one_line(text: impl fmt::Display) -> String {
    text.to_string()
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The parenthesised part of an unknown-key message.
fn unknown_key_hint(suggestion: Option<&str>, valid: &str) -> String {
    match suggestion {
        Some(key) => format!("did you mean `{key}`?"),
        None => format!("valid keys: {valid}"),
    }
}

/// Loads the agent configuration: `config_file` (if any), then `env`, then `cli`, over the defaults; validated.
///
/// `env` is the process environment as a map (`std::env::vars().collect()`); only `FLUIDITY_*` entries are read.
///
/// # Errors
/// Any [`ConfigError`]: the file cannot be read or parsed, an unknown key, a wrong type in the file or the
/// environment, `server_ip` missing, or a value out of range (including a non-loopback `listen_addr` without
/// `proxy_auth` or `allow_open_proxy`).
pub fn load_agent(
    config_file: Option<&Path>,
    cli: &AgentLayer,
    env: &HashMap<String, String>,
) -> Result<AgentConfig, ConfigError> {
    let file = load_file_layer(config_file)?;
    let env = env_layer::<AgentLayer>(env)?;
    let merged = merge(
        cli,
        &env,
        &file,
        &beside_file(AgentLayer::defaults(), config_file),
    );
    resolve::resolve_agent(merged, &Provenance::new(cli, &env, &file, config_file))
}

/// Loads the server configuration: `config_file` (if any), then `env`, then `cli`, over the defaults; validated.
///
/// `env` is the process environment as a map (`std::env::vars().collect()`); only `FLUIDITY_*` entries are read.
///
/// # Errors
/// Any [`ConfigError`]: the file cannot be read or parsed, an unknown key, a wrong type in the file or the
/// environment, or a value out of range.
pub fn load_server(
    config_file: Option<&Path>,
    cli: &ServerLayer,
    env: &HashMap<String, String>,
) -> Result<ServerConfig, ConfigError> {
    let file = load_file_layer(config_file)?;
    let env = env_layer::<ServerLayer>(env)?;
    let merged = merge(
        cli,
        &env,
        &file,
        &beside_file(ServerLayer::defaults(), config_file),
    );
    resolve::resolve_server(merged, &Provenance::new(cli, &env, &file, config_file))
}

/// The defaults layer; with a config file, its default certificate paths sit next to that file (like every
/// relative path the file names), so `certs/` beside agent.yaml is found from any working directory.
fn beside_file<L: Layer>(mut defaults: L, config_file: Option<&Path>) -> L {
    if let Some(folder) = config_file.and_then(Path::parent) {
        defaults.resolve_paths(folder);
    }
    defaults
}

/// The file layer, or an empty one without a file.
fn load_file_layer<L: Layer>(config_file: Option<&Path>) -> Result<L, ConfigError> {
    config_file.map_or_else(|| Ok(L::default()), read_file_layer)
}

/// `--save`: write the keys set in `cli` into the YAML file (creating it if missing), keeping every other key and
/// the key order. New keys go at the end.
///
/// **Comments and formatting in the file are lost**: it is parsed and written back as a YAML mapping.
/// Relative paths given on the command line are relative to the current directory, while paths in the file are
/// relative to the file's folder; so when the file is not in the current directory they are written as absolute
/// paths. Values are not validated here: call [`load_agent`] first.
///
/// The file is replaced whole (written beside it, then renamed over it) and keeps its mode, and its owner and group
/// where the process may set them; a file created here is 0600 on Unix, as it may hold `proxy_auth`.
///
/// # Errors
/// [`ConfigError::Read`]/[`ConfigError::Write`] for I/O failures, [`ConfigError::Yaml`] or
/// [`ConfigError::NotAMapping`] if the existing file is not a YAML mapping.
pub fn save_agent(config_file: &Path, cli: &AgentLayer) -> Result<(), ConfigError> {
    let folder = config_file.parent().unwrap_or_else(|| Path::new(""));
    let mut layer = cli.clone();
    if !(folder.as_os_str().is_empty() || folder == Path::new(".")) {
        let cwd = std::env::current_dir().map_err(|error| ConfigError::Write {
            file: config_file.to_owned(),
            error,
        })?;
        layer.resolve_paths(&cwd);
    }
    save_layer(config_file, &layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn proxy_auth_debug_redacts_the_password() {
        let auth = ProxyAuth::new("alice", "s3cret-pw");
        let shown = format!("{auth:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        let layer = AgentLayer {
            proxy_auth: Some(auth.clone()),
            ..AgentLayer::default()
        };
        assert!(!format!("{layer:?}").contains("s3cret-pw"));
        let mut config = AgentConfig::new("example.net", 8443, test_tls());
        config.proxy_auth = Some(auth);
        assert!(!format!("{config:?}").contains("s3cret-pw"));
    }

    #[test]
    fn proxy_auth_parse() {
        let auth = ProxyAuth::parse("bob:pa:ss").expect("valid");
        assert_eq!((auth.user(), auth.password()), ("bob", "pa:ss"));
        let auth = ProxyAuth::parse("bob:").expect("empty password is allowed");
        assert_eq!(auth.password(), "");
        assert!(ProxyAuth::parse("bob").is_none());
        assert!(ProxyAuth::parse(":pw").is_none());
    }

    fn test_tls() -> TlsFiles {
        TlsFiles {
            cert_file: "c.crt".into(),
            key_file: "c.key".into(),
            ca_cert_file: "ca.crt".into(),
        }
    }

    #[test]
    fn constructors_use_the_defaults() {
        let agent = AgentConfig::new("example.net", 9443, test_tls());
        assert_eq!(agent.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(agent.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(agent.header_read_timeout, Duration::from_secs(30));
        let server = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), test_tls());
        assert_eq!(server.health_addr, "127.0.0.1:8081".parse().expect("addr"));
        assert_eq!(server.rate_limit_burst, 1);
        assert_eq!(server.max_connections, 1000);
    }

    #[test]
    fn load_agent_from_all_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        fs::write(
            &file,
            "server_ip: file.example\nserver_port: 1111\nlocal_proxy_port: 2222\ncert_file: c.crt\n",
        )
        .expect("write");
        let cli = AgentLayer {
            local_proxy_port: Some(3333),
            ..AgentLayer::default()
        };
        let env = env(&[
            ("FLUIDITY_SERVER_PORT", "4444"),
            ("FLUIDITY_LOCAL_PROXY_PORT", "5555"),
            ("FLUIDITY_IDLE_TIMEOUT_SECS", "0"),
            ("UNRELATED", "x"),
        ]);
        let config = load_agent(Some(&file), &cli, &env).expect("valid");
        assert_eq!(config.servers, [ServerEndpoint::new("file.example", 4444)]);
        assert_eq!(config.listen, "127.0.0.1:3333".parse().expect("addr"));
        assert_eq!(config.tls.cert_file, dir.path().join("c.crt"));
        // Defaults sit beside the YAML file, like the paths it names.
        assert_eq!(config.tls.key_file, dir.path().join("certs/client.key"));
        assert_eq!(config.idle_timeout, None);
        assert_eq!(config.log.format, LogFormat::Text);
    }

    #[test]
    fn load_agent_without_file_needs_server_ip() {
        let err = load_agent(None, &AgentLayer::default(), &HashMap::new())
            .expect_err("server_ip missing");
        assert_eq!(
            err.to_string(),
            "server_ip is required (set it in agent.yaml, FLUIDITY_SERVER_IP or --server-ip)"
        );
        let config = load_agent(
            None,
            &AgentLayer::default(),
            &env(&[("FLUIDITY_SERVER_IP", "192.0.2.1")]),
        )
        .expect("valid");
        assert_eq!(
            config.servers,
            [ServerEndpoint::new("192.0.2.1", DEFAULT_SERVER_PORT)]
        );
    }

    #[test]
    fn load_agent_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        let err = load_agent(Some(&file), &AgentLayer::default(), &HashMap::new())
            .expect_err("no such file");
        assert!(matches!(err, ConfigError::Read { .. }));
        let message = err.to_string();
        assert!(message.starts_with("cannot read "), "{message}");
        assert!(message.contains("agent.yaml"), "{message}");
    }

    #[test]
    fn load_server_from_all_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("server.yaml");
        fs::write(
            &file,
            "listen_port: 9443\ncrl_file: crl.pem\ndeny_targets: [\"10.0.0.0/8\"]\nrate_limit_per_agent: 5\n",
        )
        .expect("write");
        let env = env(&[
            ("FLUIDITY_ALLOW_TARGETS", "a.example, b.example"),
            ("FLUIDITY_ALLOW_PRIVATE_TARGETS", "true"),
        ]);
        let cli = ServerLayer {
            listen_addr: Some("127.0.0.1".parse().expect("ip")),
            ..ServerLayer::default()
        };
        let config = load_server(Some(&file), &cli, &env).expect("valid");
        assert_eq!(config.listen, "127.0.0.1:9443".parse().expect("addr"));
        assert_eq!(config.crl_file, Some(dir.path().join("crl.pem")));
        assert_eq!(config.deny_targets, vec!["10.0.0.0/8".to_owned()]);
        assert_eq!(
            config.allow_targets,
            vec!["a.example".to_owned(), "b.example".to_owned()]
        );
        assert!(config.allow_private_targets);
        assert_eq!(config.rate_limit_per_agent, 5);
        assert_eq!(config.rate_limit_burst, 5);
        assert_eq!(config.tls.cert_file, dir.path().join("certs/server.crt"));
    }

    #[test]
    fn empty_file_is_an_empty_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("server.yaml");
        fs::write(&file, "# nothing here yet\n").expect("write");
        let config =
            load_server(Some(&file), &ServerLayer::default(), &HashMap::new()).expect("defaults");
        assert_eq!(config.listen, "0.0.0.0:8443".parse().expect("addr"));
    }

    #[test]
    fn save_then_load_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        fs::write(&file, "server_ip: old.example\nlog_level: debug\n").expect("write");
        let cli = AgentLayer {
            server_ip: Some(vec!["new.example".into()]),
            proxy_auth: ProxyAuth::parse("u:p w"),
            fast_connect: Some(true),
            tunnels: Some(3),
            ..AgentLayer::default()
        };
        save_agent(&file, &cli).expect("saved");
        let config =
            load_agent(Some(&file), &AgentLayer::default(), &HashMap::new()).expect("valid");
        assert_eq!(config.servers, [ServerEndpoint::new("new.example", 8443)]);
        assert_eq!(config.log.level, "debug");
        assert!(config.fast_connect);
        assert_eq!(config.tunnels, 3);
        let auth = config.proxy_auth.expect("saved auth");
        assert_eq!((auth.user(), auth.password()), ("u", "p w"));
    }

    /// `--save` used to write a fresh file with the default mode: an agent.yaml at 0600 holding `proxy_auth` came
    /// back world-readable.
    #[cfg(unix)]
    #[test]
    fn save_keeps_the_mode_of_the_file_and_creates_new_files_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode =
            |file: &Path| fs::metadata(file).expect("metadata").permissions().mode() & 0o7777;
        let dir = tempfile::tempdir().expect("tempdir");
        let cli = AgentLayer {
            proxy_auth: ProxyAuth::parse("u:secret"),
            ..AgentLayer::default()
        };
        for kept in [0o600, 0o640, 0o644, 0o400] {
            let file = dir.path().join(format!("agent-{kept:o}.yaml"));
            fs::write(&file, "server_ip: old.example\n").expect("write");
            fs::set_permissions(&file, fs::Permissions::from_mode(kept)).expect("chmod");
            save_agent(&file, &cli).expect("saved");
            assert_eq!(mode(&file), kept, "{}", file.display());
            let text = fs::read_to_string(&file).expect("read");
            assert!(
                text.contains("secret") && text.contains("old.example"),
                "{text}"
            );
        }
        // The owner is kept where the process may set it (as root; others can only give files away as root).
        let owned = dir.path().join("owned.yaml");
        fs::write(&owned, "server_ip: old.example\n").expect("write");
        if std::os::unix::fs::chown(&owned, Some(65534), Some(65534)).is_ok() {
            use std::os::unix::fs::MetadataExt as _;
            save_agent(&owned, &cli).expect("saved");
            let metadata = fs::metadata(&owned).expect("metadata");
            assert_eq!((metadata.uid(), metadata.gid()), (65534, 65534));
        }
        let new = dir.path().join("new.yaml");
        save_agent(&new, &cli).expect("saved");
        assert_eq!(mode(&new), 0o600);
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn save_makes_cli_paths_absolute_for_a_file_elsewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        let cli = AgentLayer {
            cert_file: Some("mine.crt".into()),
            ..AgentLayer::default()
        };
        save_agent(&file, &cli).expect("saved");
        let text = fs::read_to_string(&file).expect("read");
        let cwd = std::env::current_dir().expect("cwd");
        assert!(
            text.contains(&cwd.join("mine.crt").display().to_string()),
            "{text}"
        );
    }

    #[test]
    fn several_servers_from_yaml_flag_and_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        fs::write(
            &file,
            "server_ip:\n  - a.example\n  - \"192.0.2.1:1\"\n  - \"[2001:db8::1]:2\"\n  - 2001:db8::3\nserver_port: 9443\n",
        )
        .expect("write");
        let config =
            load_agent(Some(&file), &AgentLayer::default(), &HashMap::new()).expect("list");
        assert_eq!(
            config.servers,
            [
                ServerEndpoint::new("a.example", 9443),
                ServerEndpoint::new("192.0.2.1", 1),
                ServerEndpoint::new("2001:db8::1", 2),
                ServerEndpoint::new("2001:db8::3", 9443),
            ]
        );
        // A comma-separated variable replaces the file's list; the flag (already split by clap) beats both.
        let env = env(&[("FLUIDITY_SERVER_IP", "b.example:7, [::1]:8 ,c.example")]);
        let config = load_agent(Some(&file), &AgentLayer::default(), &env).expect("env");
        assert_eq!(
            config.servers,
            [
                ServerEndpoint::new("b.example", 7),
                ServerEndpoint::new("::1", 8),
                ServerEndpoint::new("c.example", 9443),
            ]
        );
        let cli = AgentLayer {
            server_ip: Some(vec!["d.example".into(), "e.example:5".into()]),
            ..AgentLayer::default()
        };
        let config = load_agent(Some(&file), &cli, &env).expect("flag");
        assert_eq!(
            config.servers,
            [
                ServerEndpoint::new("d.example", 9443),
                ServerEndpoint::new("e.example", 5),
            ]
        );
    }

    #[test]
    fn bad_server_entries_name_the_key_and_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        for (yaml, expected) in [
            (
                "server_ip: [a.example, \"b.example:0\"]\n",
                "server_ip: `b.example:0`: the port must be from 1 to 65535",
            ),
            ("server_ip: []\n", "server_ip: must not be empty"),
            (
                "server_ip: \"a.example, b.example\"\n",
                "server_ip: `a.example, b.example`",
            ),
            (
                "server_ip: [a.example, [b]]\n",
                "server_ip[1]: invalid type: sequence",
            ),
            ("server_ip: {a: b}\n", "server_ip: invalid type: map"),
        ] {
            fs::write(&file, yaml).expect("write");
            let err = load_agent(Some(&file), &AgentLayer::default(), &HashMap::new())
                .expect_err(yaml)
                .to_string();
            assert!(err.starts_with(&file.display().to_string()), "{err}");
            assert!(err.contains(expected), "{yaml}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let env = env(&[("FLUIDITY_SERVER_IP", "a.example,b c")]);
        let err = load_agent(None, &AgentLayer::default(), &env).expect_err("space");
        assert_eq!(
            err.to_string(),
            "FLUIDITY_SERVER_IP: server_ip: `b c` is not an IP address or host name with an optional :port"
        );
    }

    #[test]
    fn save_writes_one_server_as_a_string_and_several_as_a_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        let cli = AgentLayer {
            server_ip: Some(vec!["a.example".into()]),
            ..AgentLayer::default()
        };
        save_agent(&file, &cli).expect("saved");
        assert_eq!(
            fs::read_to_string(&file).expect("read"),
            "server_ip: a.example\n"
        );
        let cli = AgentLayer {
            server_ip: Some(vec!["a.example".into(), "[::1]:2".into()]),
            ..AgentLayer::default()
        };
        save_agent(&file, &cli).expect("saved");
        let config =
            load_agent(Some(&file), &AgentLayer::default(), &HashMap::new()).expect("valid");
        assert_eq!(
            config.servers,
            [
                ServerEndpoint::new("a.example", 8443),
                ServerEndpoint::new("::1", 2)
            ]
        );
    }

    /// Found by `cargo fuzz run config_yaml` and `cargo fuzz run config_env` (fuzz/README.md): a key or value with a
    /// line break was quoted as it is, so the one-line error message spanned several lines.
    #[test]
    fn errors_stay_on_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        let mut errors = Vec::new();
        for text in ["{i\"\r\r'}", "? 2\n\n *"] {
            fs::write(&file, text).expect("write");
            errors.push(
                load_agent(Some(&file), &AgentLayer::default(), &HashMap::new()).expect_err(text),
            );
        }
        for (var, value) in [
            ("FLUIDITY_LOG_LEVEL", "\n*"),
            ("FLUIDITY_SERVER_IP", "]\n\0"),
            ("FLUIDITY_LOG_FORMAT", "\n@"),
        ] {
            let env = env(&[("FLUIDITY_SERVER_IP", "example.net"), (var, value)]);
            errors.push(load_agent(None, &AgentLayer::default(), &env).expect_err(value));
        }
        for error in errors {
            let message = error.to_string();
            assert!(!message.contains(['\n', '\r']), "{message:?}");
        }
    }
}
