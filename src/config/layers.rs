//! The partial configuration layers: [`AgentLayer`] and [`ServerLayer`].
//!
//! One struct per role, every field an `Option`, parsed unchanged from the YAML file (serde), from `FLUIDITY_*`
//! variables (see `sources`) and from command-line flags (clap): the kebab-case flag is the snake_case YAML key.
//! Each layer is declared once, by [`layer!`]: a key's doc comment, attributes, type and default. Its key list, its
//! defaults layer, the key-by-key "first set wins" merge, the path resolution and the `[default: …]` and
//! `[env: …]` notes of `--help` are derived from that declaration. Nothing here validates values beyond their
//! types; that is `resolve`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::{Args, Command};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use yaml_serde::{Mapping, Value};

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

/// What the generic loading code (YAML, env, merge, where a value came from) needs to know about a layer. Written
/// by [`layer!`]; the key list, the defaults, the merge and the path resolution all come from the one field list.
pub(crate) trait Layer: Default + Serialize + DeserializeOwned + Args {
    /// Every key of the layer, in declaration order.
    const KEYS: &'static [&'static str];
    /// The conventional file name, for messages when no file was given.
    const FILE_NAME: &'static str;

    /// The built-in defaults as a layer (a key without a default stays unset).
    fn defaults() -> Self;

    /// Field by field, the value of `self` where set, else the value of `lower`.
    fn or(self, lower: Self) -> Self;

    /// Joins relative file paths onto `base` (the YAML file's folder).
    fn resolve_paths(&mut self, base: &Path);
}

/// A value a key can hold. Only file paths change when a layer's relative paths are resolved.
pub(crate) trait KeyValue {
    /// Makes a relative path `base/path`; every other value stays as it is.
    fn resolve_against(&mut self, _base: &Path) {}
}

impl KeyValue for PathBuf {
    fn resolve_against(&mut self, base: &Path) {
        if self.is_relative() {
            *self = base.join(&*self);
        }
    }
}

impl KeyValue for String {}
impl KeyValue for bool {}
impl KeyValue for u16 {}
impl KeyValue for u32 {}
impl KeyValue for u64 {}
impl KeyValue for usize {}
impl KeyValue for IpAddr {}
impl KeyValue for SocketAddr {}
impl KeyValue for LogFormat {}
impl KeyValue for ProxyAuth {}
impl KeyValue for Vec<String> {}

/// Declares a layer from one list of keys: each key's doc comment (its `--help` text), its clap and serde
/// attributes, its type and its default (`None` for a key without one). Adding a key is one entry here; the flag,
/// the `FLUIDITY_*` variable, the YAML key, the merge and the help's `[default: …]` and `[env: …]` follow from it.
macro_rules! layer {
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $file:literal {
            $(
                $(#[$key_meta:meta])*
                $key:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, PartialEq, Args, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[$key_meta])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $key: Option<$ty>,
            )*
        }

        impl Layer for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];
            const FILE_NAME: &'static str = $file;

            fn defaults() -> Self {
                Self { $($key: $default,)* }
            }

            fn or(self, lower: Self) -> Self {
                Self { $($key: self.$key.or(lower.$key),)* }
            }

            fn resolve_paths(&mut self, base: &Path) {
                $(
                    if let Some(value) = self.$key.as_mut() {
                        KeyValue::resolve_against(value, base);
                    }
                )*
            }
        }
    };
}

layer! {
    /// Agent settings: one partial layer (YAML file, `FLUIDITY_*` environment or flags).
    pub struct AgentLayer in "agent.yaml" {
        /// Server IP address or host name (required); several servers, in order of preference, as a YAML list
        /// or separated by commas: the first that works is used. Each may name its own port (host:port,
        /// [v6]:port)
        #[arg(long, value_name = "HOST[:PORT]", value_delimiter = ',')]
        #[serde(default, with = "super::servers::one_or_many")]
        server_ip: Vec<String> = None,
        /// Server port, for server_ip entries without a port of their own
        #[arg(long, value_name = "PORT")]
        server_port: u16 = Some(DEFAULT_SERVER_PORT),
        /// Port of the local proxy
        #[arg(long, value_name = "PORT")]
        local_proxy_port: u16 = Some(DEFAULT_LOCAL_PROXY_PORT),
        /// Address the local proxy listens on; a non-loopback address needs proxy_auth or allow_open_proxy
        #[arg(long, value_name = "IP")]
        listen_addr: IpAddr = Some(DEFAULT_AGENT_LISTEN_ADDR),
        /// Client certificate (PEM)
        #[arg(long, value_name = "FILE")]
        cert_file: PathBuf = Some(PathBuf::from(DEFAULT_AGENT_CERT_FILE)),
        /// Client private key (PEM)
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf = Some(PathBuf::from(DEFAULT_AGENT_KEY_FILE)),
        /// CA certificate the server must be signed by (PEM)
        #[arg(long, value_name = "FILE")]
        ca_cert_file: PathBuf = Some(PathBuf::from(DEFAULT_CA_CERT_FILE)),
        /// Log level (trace, debug, info, warn, error, off) or a tracing filter directive
        #[arg(long, value_name = "LEVEL")]
        log_level: String = Some(DEFAULT_LOG_LEVEL.to_owned()),
        /// Log format
        #[arg(long, value_name = "FORMAT")]
        log_format: LogFormat = Some(DEFAULT_LOG_FORMAT),
        /// Answer CONNECT at once instead of after the server reached the target (saves a round trip; a failed target
        /// then closes the connection instead of answering 502)
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        fast_connect: bool = Some(false),
        /// Require callers to send Basic Proxy-Authorization with these credentials, as "user:password"
        #[arg(long, value_name = "USER:PASSWORD")]
        proxy_auth: ProxyAuth = None,
        /// Allow a non-loopback listen_addr without proxy_auth (anyone who reaches the port can use the tunnel)
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        allow_open_proxy: bool = Some(false),
        /// Seconds allowed for reaching the server
        #[arg(long, value_name = "SECS")]
        connect_timeout_secs: u64 = Some(DEFAULT_CONNECT_TIMEOUT_SECS),
        /// Close a stream after this many seconds with no bytes moving; 0 = never
        #[arg(long, value_name = "SECS")]
        idle_timeout_secs: u64 = Some(DEFAULT_IDLE_TIMEOUT_SECS),
        /// Ping the server after this many quiet seconds and drop the tunnel if the answer takes as long (a dead link
        /// is noticed within twice this)
        #[arg(long, value_name = "SECS")]
        keepalive_secs: u64 = Some(DEFAULT_AGENT_KEEPALIVE_SECS),
        /// Seconds a caller has to send its whole request head, 1 to 300
        #[arg(long, value_name = "SECS")]
        header_read_timeout_secs: u64 = Some(DEFAULT_HEADER_READ_TIMEOUT_SECS),
        /// Tunnel connections to the server, 1 to 16, each with a thread of its own for it and the callers it
        /// carries: more use more cores under many parallel requests
        #[arg(long, value_name = "N")]
        tunnels: usize = Some(DEFAULT_TUNNELS),
        /// Targets the agent connects to itself instead of through the tunnel (same rule syntax as the server's
        /// deny_targets, matched against the name or address the caller gave, never resolved); repeat or separate
        /// with commas; '' (or [] in YAML) tunnels everything
        #[arg(long, value_name = "RULE", value_delimiter = ',')]
        direct_targets: Vec<String> = Some(super::default_direct_targets()),
    }
}

layer! {
    /// Server settings: one partial layer (YAML file, `FLUIDITY_*` environment or flags).
    pub struct ServerLayer in "server.yaml" {
        /// Address the tunnel port listens on
        #[arg(long, value_name = "IP")]
        listen_addr: IpAddr = Some(DEFAULT_SERVER_LISTEN_ADDR),
        /// Tunnel port
        #[arg(long, value_name = "PORT")]
        listen_port: u16 = Some(DEFAULT_LISTEN_PORT),
        /// Server certificate (PEM)
        #[arg(long, value_name = "FILE")]
        cert_file: PathBuf = Some(PathBuf::from(DEFAULT_SERVER_CERT_FILE)),
        /// Server private key (PEM)
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf = Some(PathBuf::from(DEFAULT_SERVER_KEY_FILE)),
        /// CA certificate that agents' client certificates must be signed by (PEM)
        #[arg(long, value_name = "FILE")]
        ca_cert_file: PathBuf = Some(PathBuf::from(DEFAULT_CA_CERT_FILE)),
        /// Log level (trace, debug, info, warn, error, off) or a tracing filter directive
        #[arg(long, value_name = "LEVEL")]
        log_level: String = Some(DEFAULT_LOG_LEVEL.to_owned()),
        /// Log format
        #[arg(long, value_name = "FORMAT")]
        log_format: LogFormat = Some(DEFAULT_LOG_FORMAT),
        /// Maximum concurrent agent connections
        #[arg(long, value_name = "N")]
        max_connections: usize = Some(DEFAULT_MAX_CONNECTIONS),
        /// Address of the health and metrics endpoint
        #[arg(long, value_name = "IP:PORT")]
        health_addr: SocketAddr = Some(DEFAULT_HEALTH_ADDR),
        /// Allow targets on loopback, private, link-local, unique-local, unspecified or multicast addresses
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        allow_private_targets: bool = Some(false),
        /// PEM certificate revocation list; revoked client certificates are refused
        #[arg(long, value_name = "FILE")]
        crl_file: PathBuf = None,
        /// Maximum concurrent streams per agent connection
        #[arg(long, value_name = "N")]
        max_streams_per_agent: u32 = Some(DEFAULT_MAX_STREAMS_PER_AGENT),
        /// New streams per second per client certificate; 0 = unlimited
        #[arg(long, value_name = "N")]
        rate_limit_per_agent: u32 = Some(DEFAULT_RATE_LIMIT_PER_AGENT),
        /// New streams allowed at once before rate_limit_per_agent applies (default: rate_limit_per_agent, at
        /// least 1)
        #[arg(long, value_name = "N")]
        rate_limit_burst: u32 = None,
        /// Targets to refuse: CIDRs, host names (`*.` wildcards) and `:port` rules; repeat or separate with commas
        #[arg(long, value_name = "RULE", value_delimiter = ',')]
        deny_targets: Vec<String> = Some(Vec::new()),
        /// If set, only these targets are allowed (same rule syntax as deny_targets)
        #[arg(long, value_name = "RULE", value_delimiter = ',')]
        allow_targets: Vec<String> = Some(Vec::new()),
        /// Seconds allowed for dialing a target
        #[arg(long, value_name = "SECS")]
        connect_timeout_secs: u64 = Some(DEFAULT_CONNECT_TIMEOUT_SECS),
        /// Close a stream after this many seconds with no bytes moving; 0 = never
        #[arg(long, value_name = "SECS")]
        idle_timeout_secs: u64 = Some(DEFAULT_IDLE_TIMEOUT_SECS),
        /// Ping an agent every this many seconds and drop its tunnel if the answer takes as long
        #[arg(long, value_name = "SECS")]
        keepalive_secs: u64 = Some(DEFAULT_SERVER_KEEPALIVE_SECS),
        /// Seconds an agent has to complete the TLS handshake
        #[arg(long, value_name = "SECS")]
        tls_handshake_timeout_secs: u64 = Some(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS),
    }
}

/// Whether `key` of layer `L` takes a list (comma-separated in the environment, as on the command line).
pub(crate) fn is_list_key<L: Layer>(key: &str) -> bool {
    L::augment_args(Command::new("fluidity"))
        .get_arguments()
        .any(|arg| arg.get_id() == key && arg.get_value_delimiter() == Some(','))
}

/// The flags of layer `L` in `command` with each help text followed by the key's default (from
/// [`Layer::defaults`]) and its `FLUIDITY_*` variable, so that neither is typed by hand.
pub(crate) fn annotate_help<L: Layer>(command: Command) -> Command {
    let defaults = match yaml_serde::to_value(L::defaults()) {
        Ok(Value::Mapping(defaults)) => defaults,
        _ => Mapping::new(),
    };
    L::KEYS.iter().fold(command, |command, &key| {
        let mut notes = String::new();
        if let Some(default) = defaults.get(key).and_then(render_default) {
            notes.push_str(&format!(" [default: {default}]"));
        }
        let list = if is_list_key::<L>(key) {
            ", comma-separated"
        } else {
            ""
        };
        notes.push_str(&format!(
            " [env: {}{list}]",
            super::sources::env_var_name(key)
        ));
        command.mut_arg(key, |arg| {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let arg = arg.help(format!("{help}{notes}"));
            match arg.get_long_help().map(ToString::to_string) {
                Some(long) => arg.long_help(format!("{long}{notes}")),
                None => arg,
            }
        })
    })
}

/// A default as the help shows it; `None` for an empty list (nothing to show).
fn render_default(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => Some(number.to_string()),
        Value::Sequence(items) if !items.is_empty() => Some(
            items
                .iter()
                .filter_map(render_default)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

/// Precedence: flag > env > YAML > default, key by key.
pub(crate) fn merge<L: Layer + Clone>(cli: &L, env: &L, file: &L, defaults: &L) -> L {
    cli.clone()
        .or(env.clone())
        .or(file.clone())
        .or(defaults.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn list_keys_are_the_comma_separated_flags() {
        let lists: Vec<&str> = ServerLayer::KEYS
            .iter()
            .copied()
            .filter(|key| is_list_key::<ServerLayer>(key))
            .collect();
        assert_eq!(lists, ["deny_targets", "allow_targets"]);
        let agent_lists: Vec<&str> = AgentLayer::KEYS
            .iter()
            .copied()
            .filter(|key| is_list_key::<AgentLayer>(key))
            .collect();
        assert_eq!(agent_lists, ["server_ip", "direct_targets"]);
    }

    /// The help text of `key`'s flag once annotated.
    fn help_of<L: Layer>(key: &str) -> String {
        let command = annotate_help::<L>(L::augment_args(Command::new("fluidity")));
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == key)
            .expect("a flag per key");
        arg.get_help().expect("every flag has help").to_string()
    }

    #[test]
    fn help_shows_each_default_and_variable_from_the_one_declaration() {
        let cases = [
            ("server_port", Some("8443")),
            ("listen_addr", Some("127.0.0.1")),
            ("cert_file", Some("certs/client.crt")),
            ("log_format", Some("text")),
            ("fast_connect", Some("false")),
            ("tunnels", Some("1")),
            ("server_ip", None),
            ("proxy_auth", None),
        ];
        for (key, default) in cases {
            let help = help_of::<AgentLayer>(key);
            let list = if is_list_key::<AgentLayer>(key) {
                ", comma-separated"
            } else {
                ""
            };
            let env = format!("[env: FLUIDITY_{}{list}]", key.to_ascii_uppercase());
            assert!(help.ends_with(&env), "{key}: {help}");
            match default {
                Some(value) => assert!(
                    help.contains(&format!("[default: {value}]")),
                    "{key}: {help}"
                ),
                None => assert!(!help.contains("[default:"), "{key}: {help}"),
            }
        }
        let deny = help_of::<ServerLayer>("deny_targets");
        assert!(
            deny.ends_with("[env: FLUIDITY_DENY_TARGETS, comma-separated]"),
            "{deny}"
        );
        assert!(help_of::<ServerLayer>("health_addr").contains("[default: 127.0.0.1:8081]"));
    }

    #[test]
    fn no_help_text_types_a_default_or_variable_by_hand() {
        fn check<L: Layer>() {
            for arg in L::augment_args(Command::new("fluidity")).get_arguments() {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                let long = arg
                    .get_long_help()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                for text in [help, long] {
                    assert!(
                        !text.contains("[default:") && !text.contains("[env:"),
                        "{}: {text}",
                        arg.get_id()
                    );
                }
            }
        }
        check::<AgentLayer>();
        check::<ServerLayer>();
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
            let merged = merge(
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
            server_ip: Some(vec!["env.example".into()]),
            log_level: Some("warn".into()),
            ..AgentLayer::default()
        };
        let file = AgentLayer {
            server_ip: Some(vec!["file.example".into()]),
            fast_connect: Some(true),
            ..AgentLayer::default()
        };
        let merged = merge(&cli, &env, &file, &AgentLayer::defaults());
        assert_eq!(merged.log_level.as_deref(), Some("debug"));
        assert_eq!(merged.server_ip, Some(vec!["env.example".to_owned()]));
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
            let merged = merge(
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
        let merged = merge(
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
