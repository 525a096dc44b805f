//! The partial configuration layers: [`AgentLayer`] and [`ServerLayer`].
//!
//! One struct per role, every field an `Option`, parsed unchanged from the YAML file (serde), from `FLUIDITY_*`
//! variables (see `sources`) and from command-line flags (clap): the kebab-case flag is the snake_case YAML key.
//! Also here: each layer's key list, its defaults layer and the field-by-field "first set wins" combinator that the
//! merge is built from. Nothing here validates values beyond their types; that is `resolve`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    DEFAULT_AGENT_CERT_FILE, DEFAULT_AGENT_KEEPALIVE_SECS, DEFAULT_AGENT_KEY_FILE,
    DEFAULT_AGENT_LISTEN_ADDR, DEFAULT_CA_CERT_FILE, DEFAULT_CONNECT_TIMEOUT_SECS,
    DEFAULT_HEADER_READ_TIMEOUT_SECS, DEFAULT_HEALTH_ADDR, DEFAULT_IDLE_TIMEOUT_SECS,
    DEFAULT_LISTEN_PORT, DEFAULT_LOCAL_PROXY_PORT, DEFAULT_LOG_FORMAT, DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_STREAMS_PER_AGENT, DEFAULT_RATE_LIMIT_PER_AGENT,
    DEFAULT_SERVER_CERT_FILE, DEFAULT_SERVER_KEEPALIVE_SECS, DEFAULT_SERVER_KEY_FILE,
    DEFAULT_SERVER_LISTEN_ADDR, DEFAULT_SERVER_PORT, DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
    DEFAULT_TUNNELS, LogFormat, ProxyAuth,
};

/// What the generic loading code (YAML, env, merge, origins) needs to know about a layer.
pub(crate) trait Layer: Default + Serialize + DeserializeOwned {
    /// Every key of the layer, in declaration order. A unit test keeps it in step with the struct.
    const KEYS: &'static [&'static str];
    /// The keys whose values are lists (split on ',' in the environment).
    const LIST_KEYS: &'static [&'static str];
    /// The conventional file name, for messages when no file was given.
    const FILE_NAME: &'static str;

    /// Field by field, the value of `self` where set, else the value of `lower`.
    fn or(self, lower: Self) -> Self;

    /// Joins relative file paths onto `base` (the YAML file's folder).
    fn resolve_paths(&mut self, base: &Path);
}

/// `base/path` when `path` is relative; unchanged otherwise.
fn resolve_path(path: &mut Option<PathBuf>, base: &Path) {
    if let Some(p) = path.as_mut()
        && p.is_relative()
    {
        *p = base.join(&*p);
    }
}

/// Agent settings: one partial layer (YAML file, `FLUIDITY_*` environment or flags).
#[derive(Debug, Default, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentLayer {
    /// Server IP address or host name (required) [env: FLUIDITY_SERVER_IP]
    #[arg(long, value_name = "HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_ip: Option<String>,
    /// Server port [default: 8443] [env: FLUIDITY_SERVER_PORT]
    #[arg(long, value_name = "PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_port: Option<u16>,
    /// Port of the local proxy [default: 8080] [env: FLUIDITY_LOCAL_PROXY_PORT]
    #[arg(long, value_name = "PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_proxy_port: Option<u16>,
    /// Address the local proxy listens on; a non-loopback address needs proxy_auth or allow_open_proxy
    /// [default: 127.0.0.1] [env: FLUIDITY_LISTEN_ADDR]
    #[arg(long, value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<IpAddr>,
    /// Client certificate (PEM) [default: certs/client.crt] [env: FLUIDITY_CERT_FILE]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM) [default: certs/client.key] [env: FLUIDITY_KEY_FILE]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// CA certificate the server must be signed by (PEM) [default: certs/ca.crt] [env: FLUIDITY_CA_CERT_FILE]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert_file: Option<PathBuf>,
    /// Log level (trace, debug, info, warn, error, off) or a tracing filter directive [default: info]
    /// [env: FLUIDITY_LOG_LEVEL]
    #[arg(long, value_name = "LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Log format [default: text] [env: FLUIDITY_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Answer CONNECT at once instead of after the server reached the target (saves a round trip; a failed target
    /// then closes the connection instead of answering 502) [default: false] [env: FLUIDITY_FAST_CONNECT]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_connect: Option<bool>,
    /// Require callers to send Basic Proxy-Authorization with these credentials, as "user:password"
    /// [env: FLUIDITY_PROXY_AUTH]
    #[arg(long, value_name = "USER:PASSWORD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_auth: Option<ProxyAuth>,
    /// Allow a non-loopback listen_addr without proxy_auth (anyone who reaches the port can use the tunnel)
    /// [default: false] [env: FLUIDITY_ALLOW_OPEN_PROXY]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_open_proxy: Option<bool>,
    /// Seconds allowed for reaching the server [default: 10] [env: FLUIDITY_CONNECT_TIMEOUT_SECS]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<u64>,
    /// Close a stream after this many seconds with no bytes moving; 0 = never [default: 600]
    /// [env: FLUIDITY_IDLE_TIMEOUT_SECS]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Ping the server after this many quiet seconds and drop the tunnel if the answer takes as long (a dead link
    /// is noticed within twice this) [default: 5] [env: FLUIDITY_KEEPALIVE_SECS]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_secs: Option<u64>,
    /// Seconds a caller has to send its whole request head, 1 to 300 [default: 30]
    /// [env: FLUIDITY_HEADER_READ_TIMEOUT_SECS]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read_timeout_secs: Option<u64>,
    /// Tunnel connections to the server, 1 to 16, each with a thread of its own for it and the callers it
    /// carries: more use more cores under many parallel requests [default: 1] [env: FLUIDITY_TUNNELS]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnels: Option<usize>,
}

impl AgentLayer {
    /// The built-in defaults as a layer. `server_ip` and `proxy_auth` have none.
    pub(crate) fn defaults() -> Self {
        Self {
            server_ip: None,
            server_port: Some(DEFAULT_SERVER_PORT),
            local_proxy_port: Some(DEFAULT_LOCAL_PROXY_PORT),
            listen_addr: Some(DEFAULT_AGENT_LISTEN_ADDR),
            cert_file: Some(PathBuf::from(DEFAULT_AGENT_CERT_FILE)),
            key_file: Some(PathBuf::from(DEFAULT_AGENT_KEY_FILE)),
            ca_cert_file: Some(PathBuf::from(DEFAULT_CA_CERT_FILE)),
            log_level: Some(DEFAULT_LOG_LEVEL.to_owned()),
            log_format: Some(DEFAULT_LOG_FORMAT),
            fast_connect: Some(false),
            proxy_auth: None,
            allow_open_proxy: Some(false),
            connect_timeout_secs: Some(DEFAULT_CONNECT_TIMEOUT_SECS),
            idle_timeout_secs: Some(DEFAULT_IDLE_TIMEOUT_SECS),
            keepalive_secs: Some(DEFAULT_AGENT_KEEPALIVE_SECS),
            header_read_timeout_secs: Some(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            tunnels: Some(DEFAULT_TUNNELS),
        }
    }
}

impl Layer for AgentLayer {
    const KEYS: &'static [&'static str] = &[
        "server_ip",
        "server_port",
        "local_proxy_port",
        "listen_addr",
        "cert_file",
        "key_file",
        "ca_cert_file",
        "log_level",
        "log_format",
        "fast_connect",
        "proxy_auth",
        "allow_open_proxy",
        "connect_timeout_secs",
        "idle_timeout_secs",
        "keepalive_secs",
        "header_read_timeout_secs",
        "tunnels",
    ];
    const LIST_KEYS: &'static [&'static str] = &[];
    const FILE_NAME: &'static str = "agent.yaml";

    fn or(self, lower: Self) -> Self {
        // Destructured so that a new field fails to compile here until it is merged too.
        let Self {
            server_ip,
            server_port,
            local_proxy_port,
            listen_addr,
            cert_file,
            key_file,
            ca_cert_file,
            log_level,
            log_format,
            fast_connect,
            proxy_auth,
            allow_open_proxy,
            connect_timeout_secs,
            idle_timeout_secs,
            keepalive_secs,
            header_read_timeout_secs,
            tunnels,
        } = self;
        Self {
            server_ip: server_ip.or(lower.server_ip),
            server_port: server_port.or(lower.server_port),
            local_proxy_port: local_proxy_port.or(lower.local_proxy_port),
            listen_addr: listen_addr.or(lower.listen_addr),
            cert_file: cert_file.or(lower.cert_file),
            key_file: key_file.or(lower.key_file),
            ca_cert_file: ca_cert_file.or(lower.ca_cert_file),
            log_level: log_level.or(lower.log_level),
            log_format: log_format.or(lower.log_format),
            fast_connect: fast_connect.or(lower.fast_connect),
            proxy_auth: proxy_auth.or(lower.proxy_auth),
            allow_open_proxy: allow_open_proxy.or(lower.allow_open_proxy),
            connect_timeout_secs: connect_timeout_secs.or(lower.connect_timeout_secs),
            idle_timeout_secs: idle_timeout_secs.or(lower.idle_timeout_secs),
            keepalive_secs: keepalive_secs.or(lower.keepalive_secs),
            header_read_timeout_secs: header_read_timeout_secs.or(lower.header_read_timeout_secs),
            tunnels: tunnels.or(lower.tunnels),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve_path(&mut self.cert_file, base);
        resolve_path(&mut self.key_file, base);
        resolve_path(&mut self.ca_cert_file, base);
    }
}

/// Server settings: one partial layer (YAML file, `FLUIDITY_*` environment or flags).
#[derive(Debug, Default, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLayer {
    /// Address the tunnel port listens on [default: 0.0.0.0] [env: FLUIDITY_LISTEN_ADDR]
    #[arg(long, value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<IpAddr>,
    /// Tunnel port [default: 8443] [env: FLUIDITY_LISTEN_PORT]
    #[arg(long, value_name = "PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Server certificate (PEM) [default: certs/server.crt] [env: FLUIDITY_CERT_FILE]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Server private key (PEM) [default: certs/server.key] [env: FLUIDITY_KEY_FILE]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// CA certificate that agents' client certificates must be signed by (PEM) [default: certs/ca.crt]
    /// [env: FLUIDITY_CA_CERT_FILE]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert_file: Option<PathBuf>,
    /// Log level (trace, debug, info, warn, error, off) or a tracing filter directive [default: info]
    /// [env: FLUIDITY_LOG_LEVEL]
    #[arg(long, value_name = "LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Log format [default: text] [env: FLUIDITY_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Maximum concurrent agent connections [default: 1000] [env: FLUIDITY_MAX_CONNECTIONS]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Address of the health and metrics endpoint [default: 127.0.0.1:8081] [env: FLUIDITY_HEALTH_ADDR]
    #[arg(long, value_name = "IP:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_addr: Option<SocketAddr>,
    /// Allow targets on loopback, private, link-local, unique-local, unspecified or multicast addresses
    /// [default: false] [env: FLUIDITY_ALLOW_PRIVATE_TARGETS]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_private_targets: Option<bool>,
    /// PEM certificate revocation list; revoked client certificates are refused [env: FLUIDITY_CRL_FILE]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<PathBuf>,
    /// Maximum concurrent streams per agent connection [default: 1000] [env: FLUIDITY_MAX_STREAMS_PER_AGENT]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams_per_agent: Option<u32>,
    /// New streams per second per client certificate; 0 = unlimited [default: 0]
    /// [env: FLUIDITY_RATE_LIMIT_PER_AGENT]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_agent: Option<u32>,
    /// New streams allowed at once before rate_limit_per_agent applies [default: rate_limit_per_agent, at least 1]
    /// [env: FLUIDITY_RATE_LIMIT_BURST]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
    /// Targets to refuse: CIDRs, host names (`*.` wildcards) and `:port` rules; repeat or separate with commas
    /// [env: FLUIDITY_DENY_TARGETS, comma-separated]
    #[arg(long, value_name = "RULE", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_targets: Option<Vec<String>>,
    /// If set, only these targets are allowed (same rule syntax as deny_targets)
    /// [env: FLUIDITY_ALLOW_TARGETS, comma-separated]
    #[arg(long, value_name = "RULE", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_targets: Option<Vec<String>>,
    /// Seconds allowed for dialing a target [default: 10] [env: FLUIDITY_CONNECT_TIMEOUT_SECS]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<u64>,
    /// Close a stream after this many seconds with no bytes moving; 0 = never [default: 600]
    /// [env: FLUIDITY_IDLE_TIMEOUT_SECS]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Ping an agent every this many seconds and drop its tunnel if the answer takes as long [default: 20]
    /// [env: FLUIDITY_KEEPALIVE_SECS]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_secs: Option<u64>,
    /// Seconds an agent has to complete the TLS handshake [default: 10]
    /// [env: FLUIDITY_TLS_HANDSHAKE_TIMEOUT_SECS]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_handshake_timeout_secs: Option<u64>,
}

impl ServerLayer {
    /// The built-in defaults as a layer. `crl_file` has none, and `rate_limit_burst` follows
    /// `rate_limit_per_agent` (see `resolve`).
    pub(crate) fn defaults() -> Self {
        Self {
            listen_addr: Some(DEFAULT_SERVER_LISTEN_ADDR),
            listen_port: Some(DEFAULT_LISTEN_PORT),
            cert_file: Some(PathBuf::from(DEFAULT_SERVER_CERT_FILE)),
            key_file: Some(PathBuf::from(DEFAULT_SERVER_KEY_FILE)),
            ca_cert_file: Some(PathBuf::from(DEFAULT_CA_CERT_FILE)),
            log_level: Some(DEFAULT_LOG_LEVEL.to_owned()),
            log_format: Some(DEFAULT_LOG_FORMAT),
            max_connections: Some(DEFAULT_MAX_CONNECTIONS),
            health_addr: Some(DEFAULT_HEALTH_ADDR),
            allow_private_targets: Some(false),
            crl_file: None,
            max_streams_per_agent: Some(DEFAULT_MAX_STREAMS_PER_AGENT),
            rate_limit_per_agent: Some(DEFAULT_RATE_LIMIT_PER_AGENT),
            rate_limit_burst: None,
            deny_targets: Some(Vec::new()),
            allow_targets: Some(Vec::new()),
            connect_timeout_secs: Some(DEFAULT_CONNECT_TIMEOUT_SECS),
            idle_timeout_secs: Some(DEFAULT_IDLE_TIMEOUT_SECS),
            keepalive_secs: Some(DEFAULT_SERVER_KEEPALIVE_SECS),
            tls_handshake_timeout_secs: Some(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS),
        }
    }
}

impl Layer for ServerLayer {
    const KEYS: &'static [&'static str] = &[
        "listen_addr",
        "listen_port",
        "cert_file",
        "key_file",
        "ca_cert_file",
        "log_level",
        "log_format",
        "max_connections",
        "health_addr",
        "allow_private_targets",
        "crl_file",
        "max_streams_per_agent",
        "rate_limit_per_agent",
        "rate_limit_burst",
        "deny_targets",
        "allow_targets",
        "connect_timeout_secs",
        "idle_timeout_secs",
        "keepalive_secs",
        "tls_handshake_timeout_secs",
    ];
    const LIST_KEYS: &'static [&'static str] = &["deny_targets", "allow_targets"];
    const FILE_NAME: &'static str = "server.yaml";

    fn or(self, lower: Self) -> Self {
        // Destructured so that a new field fails to compile here until it is merged too.
        let Self {
            listen_addr,
            listen_port,
            cert_file,
            key_file,
            ca_cert_file,
            log_level,
            log_format,
            max_connections,
            health_addr,
            allow_private_targets,
            crl_file,
            max_streams_per_agent,
            rate_limit_per_agent,
            rate_limit_burst,
            deny_targets,
            allow_targets,
            connect_timeout_secs,
            idle_timeout_secs,
            keepalive_secs,
            tls_handshake_timeout_secs,
        } = self;
        Self {
            listen_addr: listen_addr.or(lower.listen_addr),
            listen_port: listen_port.or(lower.listen_port),
            cert_file: cert_file.or(lower.cert_file),
            key_file: key_file.or(lower.key_file),
            ca_cert_file: ca_cert_file.or(lower.ca_cert_file),
            log_level: log_level.or(lower.log_level),
            log_format: log_format.or(lower.log_format),
            max_connections: max_connections.or(lower.max_connections),
            health_addr: health_addr.or(lower.health_addr),
            allow_private_targets: allow_private_targets.or(lower.allow_private_targets),
            crl_file: crl_file.or(lower.crl_file),
            max_streams_per_agent: max_streams_per_agent.or(lower.max_streams_per_agent),
            rate_limit_per_agent: rate_limit_per_agent.or(lower.rate_limit_per_agent),
            rate_limit_burst: rate_limit_burst.or(lower.rate_limit_burst),
            deny_targets: deny_targets.or(lower.deny_targets),
            allow_targets: allow_targets.or(lower.allow_targets),
            connect_timeout_secs: connect_timeout_secs.or(lower.connect_timeout_secs),
            idle_timeout_secs: idle_timeout_secs.or(lower.idle_timeout_secs),
            keepalive_secs: keepalive_secs.or(lower.keepalive_secs),
            tls_handshake_timeout_secs: tls_handshake_timeout_secs
                .or(lower.tls_handshake_timeout_secs),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve_path(&mut self.cert_file, base);
        resolve_path(&mut self.key_file, base);
        resolve_path(&mut self.ca_cert_file, base);
        resolve_path(&mut self.crl_file, base);
    }
}

/// Precedence for the agent: flag > env > YAML > default, field by field.
pub(crate) fn merge_agent(
    cli: &AgentLayer,
    env: &AgentLayer,
    file: &AgentLayer,
    defaults: &AgentLayer,
) -> AgentLayer {
    cli.clone()
        .or(env.clone())
        .or(file.clone())
        .or(defaults.clone())
}

/// Precedence for the server: flag > env > YAML > default, field by field.
pub(crate) fn merge_server(
    cli: &ServerLayer,
    env: &ServerLayer,
    file: &ServerLayer,
    defaults: &ServerLayer,
) -> ServerLayer {
    cli.clone()
        .or(env.clone())
        .or(file.clone())
        .or(defaults.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Command;
    use yaml_serde::{Mapping, Value};

    /// Every KEYS entry is a field (serde would refuse an unknown key), and every field is in KEYS (clap's argument
    /// ids are the field names), in the same order.
    fn assert_keys_match_fields<L: Layer + Args>() {
        for &key in L::KEYS {
            let mut single = Mapping::new();
            single.insert(Value::String(key.to_owned()), Value::Null);
            let parsed = yaml_serde::from_value::<L>(Value::Mapping(single));
            assert!(parsed.is_ok(), "KEYS has `{key}` but the layer does not");
        }
        let command = L::augment_args(Command::new("test"));
        let fields: Vec<&str> = command
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .collect();
        assert_eq!(fields, L::KEYS);
        for &key in L::LIST_KEYS {
            assert!(L::KEYS.contains(&key), "LIST_KEYS has unknown `{key}`");
        }
    }

    #[test]
    fn agent_keys_match_fields() {
        assert_keys_match_fields::<AgentLayer>();
    }

    #[test]
    fn server_keys_match_fields() {
        assert_keys_match_fields::<ServerLayer>();
    }

    #[test]
    fn defaults_serialize_to_known_keys() {
        let Ok(Value::Mapping(agent)) = yaml_serde::to_value(AgentLayer::defaults()) else {
            panic!("a mapping");
        };
        for key in agent.keys() {
            assert!(AgentLayer::KEYS.contains(&key.as_str().expect("string key")));
        }
        let round: AgentLayer = yaml_serde::from_value(Value::Mapping(agent)).expect("round trip");
        assert_eq!(round, AgentLayer::defaults());
        let server = ServerLayer::defaults();
        let round: ServerLayer =
            yaml_serde::from_value(yaml_serde::to_value(&server).expect("serialize"))
                .expect("round trip");
        assert_eq!(round, server);
    }

    fn agent_port(port: Option<u16>) -> AgentLayer {
        AgentLayer {
            server_port: port,
            ..AgentLayer::default()
        }
    }

    #[test]
    fn agent_precedence_table() {
        // (cli, env, file, expected): defaults give 8443.
        let cases = [
            (None, None, None, 8443),
            (None, None, Some(3), 3),
            (None, Some(2), Some(3), 2),
            (Some(1), Some(2), Some(3), 1),
            (Some(1), None, Some(3), 1),
            (Some(1), None, None, 1),
            (None, Some(2), None, 2),
        ];
        for (cli, env, file, expected) in cases {
            let merged = merge_agent(
                &agent_port(cli),
                &agent_port(env),
                &agent_port(file),
                &AgentLayer::defaults(),
            );
            assert_eq!(
                merged.server_port,
                Some(expected),
                "cli {cli:?} env {env:?} file {file:?}"
            );
        }
    }

    #[test]
    fn precedence_is_per_key() {
        let cli = AgentLayer {
            log_level: Some("debug".into()),
            ..AgentLayer::default()
        };
        let env = AgentLayer {
            server_ip: Some("env.example".into()),
            log_level: Some("warn".into()),
            ..AgentLayer::default()
        };
        let file = AgentLayer {
            server_ip: Some("file.example".into()),
            fast_connect: Some(true),
            ..AgentLayer::default()
        };
        let merged = merge_agent(&cli, &env, &file, &AgentLayer::defaults());
        assert_eq!(merged.log_level.as_deref(), Some("debug"));
        assert_eq!(merged.server_ip.as_deref(), Some("env.example"));
        assert_eq!(merged.fast_connect, Some(true));
        assert_eq!(merged.local_proxy_port, Some(DEFAULT_LOCAL_PROXY_PORT));
        assert_eq!(merged.proxy_auth, None);
    }

    #[test]
    fn server_precedence_table() {
        let layer = |n: Option<usize>| ServerLayer {
            max_connections: n,
            ..ServerLayer::default()
        };
        let cases = [
            (None, None, None, DEFAULT_MAX_CONNECTIONS),
            (None, None, Some(3), 3),
            (None, Some(2), Some(3), 2),
            (Some(1), Some(2), Some(3), 1),
        ];
        for (cli, env, file, expected) in cases {
            let merged = merge_server(
                &layer(cli),
                &layer(env),
                &layer(file),
                &ServerLayer::defaults(),
            );
            assert_eq!(merged.max_connections, Some(expected));
        }
        // A list from a higher layer replaces, rather than extends, a lower one.
        let cli = ServerLayer {
            deny_targets: Some(vec!["a".into()]),
            ..ServerLayer::default()
        };
        let file = ServerLayer {
            deny_targets: Some(vec!["b".into(), "c".into()]),
            ..ServerLayer::default()
        };
        let merged = merge_server(
            &cli,
            &ServerLayer::default(),
            &file,
            &ServerLayer::defaults(),
        );
        assert_eq!(merged.deny_targets, Some(vec!["a".to_owned()]));
    }

    #[test]
    fn relative_paths_join_the_base_once() {
        let mut layer = ServerLayer {
            cert_file: Some("s.crt".into()),
            key_file: Some("/abs/s.key".into()),
            crl_file: Some("sub/crl.pem".into()),
            ..ServerLayer::default()
        };
        layer.resolve_paths(Path::new("/etc/fluidity"));
        assert_eq!(layer.cert_file, Some(PathBuf::from("/etc/fluidity/s.crt")));
        assert_eq!(layer.key_file, Some(PathBuf::from("/abs/s.key")));
        assert_eq!(
            layer.crl_file,
            Some(PathBuf::from("/etc/fluidity/sub/crl.pem"))
        );
        assert_eq!(layer.ca_cert_file, None);
    }
}
