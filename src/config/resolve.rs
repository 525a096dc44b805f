//! The validation pass: turns a merged layer into an [`AgentConfig`] or [`ServerConfig`], refusing values that
//! have the right type but cannot work (zero limits, bad log levels, target rules that do not parse, an open proxy
//! by accident).
//!
//! It runs before anything binds. Every error names the key and the layer its value came from. It does not check
//! that files exist or parse (that is `tls`, at startup and on reload).

use std::net::SocketAddr;
use std::time::Duration;

use super::sources::Provenance;
use super::{
    AgentConfig, AgentLayer, ConfigError, LogSettings, MAX_HEADER_READ_TIMEOUT_SECS, MAX_TUNNELS,
    ServerConfig, ServerEndpoint, ServerLayer, TlsFiles, idle_timeout, log_filter, parse_server,
    rate_limit_burst,
};
use crate::rules::Rule;

/// The level words tracing's filter accepts on their own.
const LOG_LEVEL_WORDS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// The value, or the "is required" error naming every layer that could set it.
fn required<T>(
    value: Option<T>,
    key: &'static str,
    provenance: &Provenance,
) -> Result<T, ConfigError> {
    value.ok_or_else(|| provenance.missing(key))
}

/// A required number of seconds that must be greater than 0, as a duration.
fn positive_secs(
    value: Option<u64>,
    key: &'static str,
    provenance: &Provenance,
) -> Result<Duration, ConfigError> {
    let secs = required(value, key, provenance)?;
    check_positive(secs, key, provenance)?;
    Ok(Duration::from_secs(secs))
}

/// A level word, or a filter (`target=level`, or a list) that tracing parses: checked with [`log_filter`], the
/// parser the subscriber is built with, so nothing that passes here falls back to a default later. A lone word
/// that is not a level would parse as a target name (logging nothing else), so it is refused as a typo.
fn check_log_level(level: &str, provenance: &Provenance) -> Result<(), ConfigError> {
    let word = LOG_LEVEL_WORDS
        .iter()
        .any(|w| w.eq_ignore_ascii_case(level.trim()));
    if !(word || level.contains('=') || level.contains(',')) {
        return Err(provenance.invalid(
            "log_level",
            format!(
                "`{level}` is not a level: use trace, debug, info, warn, error, off or a filter such as \
                 fluidity=debug,h2=warn"
            ),
        ));
    }
    log_filter(level).map(drop).map_err(|err| {
        provenance.invalid(
            "log_level",
            format!("`{level}` is not a valid filter ({err}): use a level or target=level, comma-separated"),
        )
    })
}

/// A value that must be greater than zero.
fn check_positive(
    value: u64,
    key: &'static str,
    provenance: &Provenance,
) -> Result<(), ConfigError> {
    if value == 0 {
        Err(provenance.invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

/// A required value from 1 to `max`.
fn from_one_to<T>(
    max: T,
    value: Option<T>,
    key: &'static str,
    provenance: &Provenance,
) -> Result<T, ConfigError>
where
    T: PartialOrd + From<u8> + std::fmt::Display,
{
    let value = required(value, key, provenance)?;
    if value < T::from(1) || value > max {
        return Err(provenance.invalid(key, format!("must be between 1 and {max}")));
    }
    Ok(value)
}

/// `server_ip`'s entries as servers, each with its own port or `default_port`. At least one; an empty list (`[]`,
/// or `--server-ip ''`) is refused like an empty entry.
fn check_servers(
    entries: Vec<String>,
    default_port: u16,
    provenance: &Provenance,
) -> Result<Vec<ServerEndpoint>, ConfigError> {
    let none = match entries.as_slice() {
        [] => true,
        [only] => only.trim().is_empty(),
        _ => false,
    };
    if none {
        return Err(provenance.invalid("server_ip", "must not be empty"));
    }
    entries
        .iter()
        .map(|entry| {
            parse_server(entry, default_port)
                .map_err(|reason| provenance.invalid("server_ip", reason))
        })
        .collect()
}

/// Validates the merged agent layer and converts it.
///
/// # Errors
/// [`ConfigError::Missing`] for `server_ip`, [`ConfigError::Invalid`] for a refused value.
pub(crate) fn resolve_agent(
    merged: AgentLayer,
    provenance: &Provenance,
) -> Result<AgentConfig, ConfigError> {
    let AgentLayer {
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
        direct_targets,
    } = merged;

    let server_ip = required(server_ip, "server_ip", provenance)?;
    let server_port = required(server_port, "server_port", provenance)?;
    if server_port == 0 {
        return Err(provenance.invalid("server_port", "must not be 0"));
    }
    let servers = check_servers(server_ip, server_port, provenance)?;
    let log_level = required(log_level, "log_level", provenance)?;
    check_log_level(&log_level, provenance)?;
    let connect_timeout_secs = required(connect_timeout_secs, "connect_timeout_secs", provenance)?;
    check_positive(connect_timeout_secs, "connect_timeout_secs", provenance)?;
    let header_read_timeout_secs = from_one_to(
        MAX_HEADER_READ_TIMEOUT_SECS,
        header_read_timeout_secs,
        "header_read_timeout_secs",
        provenance,
    )?;
    let tunnels = from_one_to(MAX_TUNNELS, tunnels, "tunnels", provenance)?;
    let mut direct_targets = required(direct_targets, "direct_targets", provenance)?;
    // `--direct-targets ''` (one empty value) is how a flag says "none": tunnel everything, as `[]` in YAML.
    if matches!(direct_targets.as_slice(), [only] if only.trim().is_empty()) {
        direct_targets.clear();
    }
    check_rules("direct_targets", &direct_targets, provenance)?;
    let listen_addr = required(listen_addr, "listen_addr", provenance)?;
    let allow_open_proxy = required(allow_open_proxy, "allow_open_proxy", provenance)?;
    if !listen_addr.is_loopback() && proxy_auth.is_none() && !allow_open_proxy {
        return Err(provenance.invalid(
            "listen_addr",
            format!(
                "{listen_addr} is not loopback: set proxy_auth or allow_open_proxy: true \
                 (otherwise anyone who can reach the port can use your tunnel)"
            ),
        ));
    }

    Ok(AgentConfig {
        servers,
        listen: SocketAddr::new(
            listen_addr,
            required(local_proxy_port, "local_proxy_port", provenance)?,
        ),
        tls: TlsFiles {
            cert_file: required(cert_file, "cert_file", provenance)?,
            key_file: required(key_file, "key_file", provenance)?,
            ca_cert_file: required(ca_cert_file, "ca_cert_file", provenance)?,
        },
        log: LogSettings {
            level: log_level,
            format: required(log_format, "log_format", provenance)?,
        },
        fast_connect: required(fast_connect, "fast_connect", provenance)?,
        proxy_auth,
        allow_open_proxy,
        connect_timeout: Duration::from_secs(connect_timeout_secs),
        idle_timeout: idle_timeout(required(
            idle_timeout_secs,
            "idle_timeout_secs",
            provenance,
        )?),
        keepalive: positive_secs(keepalive_secs, "keepalive_secs", provenance)?,
        header_read_timeout: Duration::from_secs(header_read_timeout_secs),
        tunnels,
        direct_targets,
    })
}

/// Refuses an empty rule or one that does not parse, naming `key`.
fn check_rules(
    key: &'static str,
    rules: &[String],
    provenance: &Provenance,
) -> Result<(), ConfigError> {
    if rules.iter().any(|rule| rule.trim().is_empty()) {
        return Err(provenance.invalid(key, "contains an empty rule"));
    }
    if let Some(bad) = rules.iter().find_map(|rule| Rule::parse(rule).err()) {
        return Err(provenance.invalid(key, bad.to_string()));
    }
    Ok(())
}

/// Validates the merged server layer and converts it.
///
/// # Errors
/// [`ConfigError::Invalid`] for a refused value.
pub(crate) fn resolve_server(
    merged: ServerLayer,
    provenance: &Provenance,
) -> Result<ServerConfig, ConfigError> {
    let ServerLayer {
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
        rate_limit_burst: burst,
        deny_targets,
        allow_targets,
        connect_timeout_secs,
        idle_timeout_secs,
        keepalive_secs,
        tls_handshake_timeout_secs,
    } = merged;

    let log_level = required(log_level, "log_level", provenance)?;
    check_log_level(&log_level, provenance)?;
    let max_connections = required(max_connections, "max_connections", provenance)?;
    if max_connections == 0 {
        return Err(provenance.invalid("max_connections", "must be greater than 0"));
    }
    let max_streams_per_agent =
        required(max_streams_per_agent, "max_streams_per_agent", provenance)?;
    check_positive(
        max_streams_per_agent.into(),
        "max_streams_per_agent",
        provenance,
    )?;
    let connect_timeout_secs = required(connect_timeout_secs, "connect_timeout_secs", provenance)?;
    check_positive(connect_timeout_secs, "connect_timeout_secs", provenance)?;
    let tls_handshake_timeout_secs = required(
        tls_handshake_timeout_secs,
        "tls_handshake_timeout_secs",
        provenance,
    )?;
    check_positive(
        tls_handshake_timeout_secs,
        "tls_handshake_timeout_secs",
        provenance,
    )?;
    if burst == Some(0) {
        return Err(provenance.invalid("rate_limit_burst", "must be at least 1"));
    }
    let rate_limit_per_agent = required(rate_limit_per_agent, "rate_limit_per_agent", provenance)?;
    let deny_targets = required(deny_targets, "deny_targets", provenance)?;
    let allow_targets = required(allow_targets, "allow_targets", provenance)?;
    check_rules("deny_targets", &deny_targets, provenance)?;
    check_rules("allow_targets", &allow_targets, provenance)?;

    Ok(ServerConfig {
        listen: SocketAddr::new(
            required(listen_addr, "listen_addr", provenance)?,
            required(listen_port, "listen_port", provenance)?,
        ),
        tls: TlsFiles {
            cert_file: required(cert_file, "cert_file", provenance)?,
            key_file: required(key_file, "key_file", provenance)?,
            ca_cert_file: required(ca_cert_file, "ca_cert_file", provenance)?,
        },
        log: LogSettings {
            level: log_level,
            format: required(log_format, "log_format", provenance)?,
        },
        max_connections,
        health_addr: required(health_addr, "health_addr", provenance)?,
        allow_private_targets: required(
            allow_private_targets,
            "allow_private_targets",
            provenance,
        )?,
        crl_file,
        max_streams_per_agent,
        rate_limit_per_agent,
        rate_limit_burst: rate_limit_burst(rate_limit_per_agent, burst),
        deny_targets,
        allow_targets,
        connect_timeout: Duration::from_secs(connect_timeout_secs),
        idle_timeout: idle_timeout(required(
            idle_timeout_secs,
            "idle_timeout_secs",
            provenance,
        )?),
        keepalive: positive_secs(keepalive_secs, "keepalive_secs", provenance)?,
        tls_handshake_timeout: Duration::from_secs(tls_handshake_timeout_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyAuth;
    use crate::config::layers::Layer;
    use std::path::Path;

    fn agent(file: AgentLayer) -> Result<AgentConfig, ConfigError> {
        let cli = AgentLayer::default();
        let env = AgentLayer::default();
        let provenance = Provenance::new(&cli, &env, &file, Some(Path::new("agent.yaml")));
        let merged = super::super::merge(&cli, &env, &file, &AgentLayer::defaults());
        resolve_agent(merged, &provenance)
    }

    fn server(file: ServerLayer) -> Result<ServerConfig, ConfigError> {
        let cli = ServerLayer::default();
        let env = ServerLayer::default();
        let provenance = Provenance::new(&cli, &env, &file, Some(Path::new("server.yaml")));
        let merged = super::super::merge(&cli, &env, &file, &ServerLayer::defaults());
        resolve_server(merged, &provenance)
    }

    fn with_host(layer: AgentLayer) -> AgentLayer {
        AgentLayer {
            server_ip: Some(vec!["example.net".into()]),
            ..layer
        }
    }

    #[test]
    fn direct_targets_default_and_explicitly_empty() {
        let config = agent(with_host(AgentLayer::default())).expect("defaults");
        assert_eq!(
            config.direct_targets,
            crate::config::default_direct_targets()
        );
        for rule in &config.direct_targets {
            assert!(Rule::parse(rule).is_ok(), "{rule}");
        }
        let empty = agent(with_host(AgentLayer {
            direct_targets: Some(Vec::new()),
            ..AgentLayer::default()
        }))
        .expect("empty list");
        assert!(empty.direct_targets.is_empty(), "[] must tunnel everything");
        let flag_empty = agent(with_host(AgentLayer {
            direct_targets: Some(vec![String::new()]),
            ..AgentLayer::default()
        }))
        .expect("--direct-targets ''");
        assert!(
            flag_empty.direct_targets.is_empty(),
            "'' must tunnel everything"
        );
    }

    #[test]
    fn missing_server_ip() {
        let err = agent(AgentLayer::default()).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "server_ip is required (set it in agent.yaml, FLUIDITY_SERVER_IP or --server-ip)"
        );
    }

    #[test]
    fn open_proxy_is_refused_unless_allowed_or_authenticated() {
        let open = with_host(AgentLayer {
            listen_addr: Some("0.0.0.0".parse().expect("ip")),
            ..AgentLayer::default()
        });
        let err = agent(open.clone()).expect_err("open proxy");
        assert_eq!(
            err.to_string(),
            "agent.yaml: listen_addr: 0.0.0.0 is not loopback: set proxy_auth or allow_open_proxy: true \
             (otherwise anyone who can reach the port can use your tunnel)"
        );
        let allowed = AgentLayer {
            allow_open_proxy: Some(true),
            ..open.clone()
        };
        assert!(agent(allowed).is_ok());
        let authenticated = AgentLayer {
            proxy_auth: ProxyAuth::parse("u:p"),
            ..open
        };
        assert!(agent(authenticated).is_ok());
        let loopback_v6 = with_host(AgentLayer {
            listen_addr: Some("::1".parse().expect("ip")),
            ..AgentLayer::default()
        });
        assert!(agent(loopback_v6).is_ok());
    }

    #[test]
    fn agent_defaults() {
        let config = agent(with_host(AgentLayer::default())).expect("valid");
        assert_eq!(config.servers, [ServerEndpoint::new("example.net", 8443)]);
        assert_eq!(config.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(config.tls.ca_cert_file, Path::new("certs/ca.crt"));
        assert_eq!(config.log.level, "info");
        assert!(!config.fast_connect && !config.allow_open_proxy);
        assert!(config.proxy_auth.is_none());
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(config.header_read_timeout, Duration::from_secs(30));
    }

    #[test]
    fn server_forms() {
        let servers = |entries: &[&str], port: Option<u16>| {
            agent(AgentLayer {
                server_ip: Some(entries.iter().map(|e| (*e).to_owned()).collect()),
                server_port: port,
                ..AgentLayer::default()
            })
            .map(|config| config.servers)
        };
        let one = |host: &str, port| ServerEndpoint::new(host, port);
        let cases: [(&[&str], Option<u16>, Vec<ServerEndpoint>); 6] = [
            (&["example.net"], None, vec![one("example.net", 8443)]),
            (&[" 192.0.2.1 "], Some(9443), vec![one("192.0.2.1", 9443)]),
            (&["2001:db8::1"], None, vec![one("2001:db8::1", 8443)]),
            (&["[2001:db8::1]"], None, vec![one("2001:db8::1", 8443)]),
            (&["example.net:1"], Some(2), vec![one("example.net", 1)]),
            (
                &["a.example", "192.0.2.1:1", "[2001:db8::1]:2", "::1"],
                Some(3),
                vec![
                    one("a.example", 3),
                    one("192.0.2.1", 1),
                    one("2001:db8::1", 2),
                    one("::1", 3),
                ],
            ),
        ];
        for (entries, port, expected) in cases {
            assert_eq!(
                servers(entries, port).expect("valid"),
                expected,
                "{entries:?}"
            );
        }
        let bad: [&[&str]; 7] = [
            &[],
            &[""],
            &["a.example", ""],
            &["example.net:0"],
            &["a.example", "https://example.net"],
            &["a b"],
            &["[example.net]:1"],
        ];
        for entries in bad {
            let err = servers(entries, None).expect_err("refused");
            let message = err.to_string();
            assert!(
                message.starts_with("agent.yaml: server_ip: "),
                "{entries:?}: {message}"
            );
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn agent_range_checks_name_key_and_source() {
        let cases = [
            (
                AgentLayer {
                    log_level: Some("verbose".into()),
                    ..AgentLayer::default()
                },
                "agent.yaml: log_level: `verbose` is not a level",
            ),
            (
                AgentLayer {
                    connect_timeout_secs: Some(0),
                    ..AgentLayer::default()
                },
                "agent.yaml: connect_timeout_secs: must be greater than 0",
            ),
            (
                AgentLayer {
                    header_read_timeout_secs: Some(0),
                    ..AgentLayer::default()
                },
                "agent.yaml: header_read_timeout_secs: must be between 1 and 300",
            ),
            (
                AgentLayer {
                    header_read_timeout_secs: Some(301),
                    ..AgentLayer::default()
                },
                "agent.yaml: header_read_timeout_secs: must be between 1 and 300",
            ),
            (
                AgentLayer {
                    server_port: Some(0),
                    ..AgentLayer::default()
                },
                "agent.yaml: server_port: must not be 0",
            ),
            (
                AgentLayer {
                    direct_targets: Some(vec!["10.0.0.0/40".into()]),
                    ..AgentLayer::default()
                },
                "agent.yaml: direct_targets: `10.0.0.0/40` is not a CIDR, host name, :port or host:port rule",
            ),
            (
                AgentLayer {
                    direct_targets: Some(vec!["localhost".into(), " ".into()]),
                    ..AgentLayer::default()
                },
                "agent.yaml: direct_targets: contains an empty rule",
            ),
            (
                AgentLayer {
                    tunnels: Some(0),
                    ..AgentLayer::default()
                },
                "agent.yaml: tunnels: must be between 1 and 16",
            ),
            (
                AgentLayer {
                    tunnels: Some(17),
                    ..AgentLayer::default()
                },
                "agent.yaml: tunnels: must be between 1 and 16",
            ),
        ];
        for (layer, expected) in cases {
            let err = agent(with_host(layer)).expect_err(expected);
            assert!(err.to_string().starts_with(expected), "{err}");
        }
    }

    #[test]
    fn log_level_forms() {
        for ok in [
            "trace",
            "DEBUG",
            "off",
            "fluidity=debug",
            "info,h2=warn",
            "info,fluidity::server=trace",
            "warn,fluidity[request]=debug",
        ] {
            let layer = with_host(AgentLayer {
                log_level: Some(ok.into()),
                ..AgentLayer::default()
            });
            assert!(agent(layer).is_ok(), "{ok}");
            assert!(log_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "verbose",
            "info,h2=notalevel",
            "fluidity=loud",
            "info,[unclosed=debug",
            "!!!,info",
        ] {
            let layer = with_host(AgentLayer {
                log_level: Some(bad.into()),
                ..AgentLayer::default()
            });
            let err = agent(layer).expect_err(bad).to_string();
            assert!(err.starts_with("agent.yaml: log_level: `"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn server_checks() {
        let config = server(ServerLayer::default()).expect("defaults");
        assert_eq!(config.listen, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(config.rate_limit_burst, 1);
        assert_eq!(config.tls_handshake_timeout, Duration::from_secs(10));
        let burst = server(ServerLayer {
            rate_limit_per_agent: Some(20),
            ..ServerLayer::default()
        })
        .expect("valid");
        assert_eq!(burst.rate_limit_burst, 20);
        let explicit = server(ServerLayer {
            rate_limit_per_agent: Some(20),
            rate_limit_burst: Some(50),
            ..ServerLayer::default()
        })
        .expect("valid");
        assert_eq!(explicit.rate_limit_burst, 50);

        let cases = [
            (
                ServerLayer {
                    max_connections: Some(0),
                    ..ServerLayer::default()
                },
                "server.yaml: max_connections: must be greater than 0",
            ),
            (
                ServerLayer {
                    max_streams_per_agent: Some(0),
                    ..ServerLayer::default()
                },
                "server.yaml: max_streams_per_agent: must be greater than 0",
            ),
            (
                ServerLayer {
                    connect_timeout_secs: Some(0),
                    ..ServerLayer::default()
                },
                "server.yaml: connect_timeout_secs: must be greater than 0",
            ),
            (
                ServerLayer {
                    tls_handshake_timeout_secs: Some(0),
                    ..ServerLayer::default()
                },
                "server.yaml: tls_handshake_timeout_secs: must be greater than 0",
            ),
            (
                ServerLayer {
                    rate_limit_burst: Some(0),
                    ..ServerLayer::default()
                },
                "server.yaml: rate_limit_burst: must be at least 1",
            ),
            (
                ServerLayer {
                    deny_targets: Some(vec![String::new()]),
                    ..ServerLayer::default()
                },
                "server.yaml: deny_targets: contains an empty rule",
            ),
            (
                ServerLayer {
                    deny_targets: Some(vec!["10.0.0.0/8".into(), "10.0.0.0/40".into()]),
                    ..ServerLayer::default()
                },
                "server.yaml: deny_targets: `10.0.0.0/40` is not a CIDR, host name, :port or host:port rule",
            ),
            (
                ServerLayer {
                    allow_targets: Some(vec!["exa mple.com".into()]),
                    ..ServerLayer::default()
                },
                "server.yaml: allow_targets: `exa mple.com` is not a CIDR",
            ),
            (
                ServerLayer {
                    log_level: Some("loud".into()),
                    ..ServerLayer::default()
                },
                "server.yaml: log_level: `loud` is not a level",
            ),
        ];
        for (layer, expected) in cases {
            let err = server(layer).expect_err(expected);
            assert!(err.to_string().starts_with(expected), "{err}");
        }
    }
}
