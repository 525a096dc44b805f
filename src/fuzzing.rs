//! Entry points for the cargo-fuzz targets in `fuzz/`; compiled with the `fuzzing` feature and in unit tests, not an
//! API.
//!
//! Each property function feeds an input to one of the parsers Fluidity wrote itself (authorities, header rules,
//! destination rules, the configuration layers, `Proxy-Authorization`, certificate names, the SOCKS handshake) and
//! asserts the properties the rest of the code relies on. Any panic, in the parser or in an assertion here, is a
//! finding.
//!
//! [`TARGETS`] names every fuzz target with its entry point, which reads the fuzzer's raw bytes in a small text
//! format (one per target, documented on each `*_input` function; `socks` takes the caller's binary bytes, as the
//! protocol is binary) and calls the property function. Text keeps the committed seeds in `fuzz/seeds/TARGET/`
//! readable, and lets the unit test here run every target's property over its seeds under a plain `cargo test`,
//! so neither the properties nor the entry points can rot unseen. See `fuzz/README.md` for how to fuzz.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use yaml_serde::{Mapping, Value};

use crate::config::{self, AgentConfig, AgentLayer, ConfigError, ProxyAuth, ServerConfig};
use crate::rules::Rule;
use crate::server::policy::{TargetPolicy, is_private};
use crate::tunnel::authority::parse_target;
use crate::tunnel::headers::{strip_hop_headers, strip_hop_headers_keeping_upgrade, wants_upgrade};

/// `parse_target` with no default port (CONNECT) and with the defaults of absolute-form URLs; and the whole
/// request target of a plain request (`plain_http_target`), when the input is a URI.
pub fn authority(input: &str) {
    if let Ok(uri) = input.parse::<http::Uri>()
        && let Ok(target) = crate::tunnel::plain_http_target(&uri)
    {
        let authority = uri.authority().map(http::uri::Authority::as_str);
        assert_eq!(
            authority.map(|a| parse_target(a, Some(80))),
            Some(Ok(target)),
            "{input:?}"
        );
    }
    for default_port in [None, Some(80), Some(443)] {
        let Ok(target) = parse_target(input, default_port) else {
            continue;
        };
        assert!(!target.host.is_empty(), "{input:?}: empty host");
        assert_ne!(target.port, 0, "{input:?}: port 0");
        assert_eq!(
            target.host,
            target.host.to_ascii_lowercase(),
            "{input:?}: host not lower-cased"
        );
        if default_port.is_none() {
            assert_eq!(
                parse_target(input, Some(80)),
                Ok(target.clone()),
                "{input:?}: an explicit port must win over the default"
            );
        }
        // The agent sends `target.to_string()` as the CONNECT authority of a WebSocket stream and the server parses
        // it again without a default port: it must come back as the same target.
        let shown = target.to_string();
        assert_eq!(
            parse_target(&shown, None),
            Ok(target.clone()),
            "{input:?} is displayed as {shown:?}"
        );
        // Nothing of the input is ignored: it is the host as displayed (brackets only around an IPv6 literal), then
        // either nothing (the default port) or ':' and the port's digits.
        let lower = input.to_ascii_lowercase();
        let host_shown = shown
            .rsplit_once(':')
            .map_or(shown.as_str(), |(host, _)| host);
        let rest = lower.strip_prefix(host_shown);
        let port_ok = match rest {
            Some("") => default_port == Some(target.port),
            Some(port) => port
                .strip_prefix(':')
                .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
                .is_some_and(|digits| digits.parse::<u16>() == Ok(target.port)),
            None => false,
        };
        assert!(port_ok, "{input:?} read as {shown:?}");
        // Display brackets every host with a ':', which is only right for an IPv6 literal.
        if target.host.contains(':') {
            assert!(
                matches!(target.ip(), Some(IpAddr::V6(_))),
                "{input:?}: host {:?} has a ':' but is no IPv6 address",
                target.host
            );
        }
    }
}

/// `strip_hop_headers`, `strip_hop_headers_keeping_upgrade` and `wants_upgrade` on a header map built from `(name, value)` pairs;
/// pairs that are not a valid header name or value are skipped, as hyper would refuse them.
pub fn headers(pairs: &[(&[u8], &[u8])]) {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    let _ = wants_upgrade(&map);

    // Every name a Connection value lists, read as the field's bytes (RFC 9110 §7.6.1: each connection-option).
    let named: Vec<HeaderName> = map
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        .collect();
    let hop = |name: &HeaderName| {
        matches!(
            name.as_str(),
            "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
        ) || name.as_str().starts_with("proxy-")
            || named.contains(name)
    };

    let mut stripped = map.clone();
    strip_hop_headers(&mut stripped);
    for name in stripped.keys() {
        assert!(
            !hop(name),
            "{name} survived strip_hop_headers; input {map:?}, left {stripped:?}"
        );
    }
    for name in map.keys().filter(|name| !hop(name)) {
        let before: Vec<&HeaderValue> = map.get_all(name).iter().collect();
        let after: Vec<&HeaderValue> = stripped.get_all(name).iter().collect();
        assert_eq!(before, after, "end-to-end header {name} changed");
    }
    assert!(!wants_upgrade(&stripped), "an upgrade survived stripping");
    let mut again = stripped.clone();
    strip_hop_headers(&mut again);
    assert_eq!(again, stripped, "strip_hop_headers is not idempotent");

    // The upgrade path: the same removals, then `Connection: upgrade`, the `Upgrade` values and `Sec-WebSocket-*`.
    let kept_for_upgrade = |name: &HeaderName| {
        matches!(name.as_str(), "connection" | "upgrade")
            || name.as_str().starts_with("sec-websocket-")
    };
    let mut upgrade = map.clone();
    strip_hop_headers_keeping_upgrade(&mut upgrade);
    for name in upgrade.keys() {
        assert!(
            !hop(name) || kept_for_upgrade(name),
            "{name} survived strip_hop_headers_keeping_upgrade; input {map:?}, left {upgrade:?}"
        );
    }
    for name in map
        .keys()
        .filter(|name| !hop(name) || name.as_str().starts_with("sec-websocket-"))
    {
        let before: Vec<&HeaderValue> = map.get_all(name).iter().collect();
        let after: Vec<&HeaderValue> = upgrade.get_all(name).iter().collect();
        assert_eq!(before, after, "{name} changed on the upgrade path");
    }
    let upgrades: Vec<&HeaderValue> = map.get_all(header::UPGRADE).iter().collect();
    assert_eq!(
        upgrade.get_all(header::UPGRADE).iter().collect::<Vec<_>>(),
        upgrades,
        "Upgrade values changed"
    );
    let connection: Vec<&HeaderValue> = upgrade.get_all(header::CONNECTION).iter().collect();
    if upgrades.is_empty() {
        assert!(
            connection.is_empty(),
            "Connection without Upgrade: {upgrade:?}"
        );
    } else {
        assert_eq!(connection, ["upgrade"], "Connection on the upgrade path");
    }
    let mut again = upgrade.clone();
    strip_hop_headers_keeping_upgrade(&mut again);
    assert_eq!(
        again, upgrade,
        "strip_hop_headers_keeping_upgrade is not idempotent"
    );
}

/// One destination rule through `Rule::parse`: accepted rules display as written (trimmed) and re-parse alike, and
/// matching what a caller gave (the agent's `direct_targets`) never takes a CIDR rule for a name or the reverse.
pub fn rule(text: &str) {
    let Ok(rule) = Rule::parse(text) else {
        return;
    };
    let shown = rule.to_string();
    assert_eq!(shown, text.trim(), "{text:?}: display");
    assert_eq!(Rule::parse(&shown), Ok(rule.clone()), "{text:?}: re-parse");
    let port = rule.port().unwrap_or(80);
    for host in [
        "localhost",
        "a.local",
        "10.0.0.1",
        "[::1]",
        "::ffff:127.0.0.1",
        "",
        "[",
        "]",
    ] {
        let given = rule.matches_given(host, port);
        if given && rule.is_cidr() {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            assert!(
                bare.parse::<std::net::IpAddr>().is_ok(),
                "{text:?}: CIDR matched name {host:?}"
            );
        }
    }
}

/// A destination policy from rule lists, asked about `name:port` resolving to `addr`, and about names derived from
/// the rules themselves (so that host-name rules get matching queries).
pub fn policy(
    allow_private: bool,
    deny: &[String],
    allow: &[String],
    name: &str,
    port: u16,
    addr: IpAddr,
) {
    for text in deny.iter().chain(allow) {
        rule(text);
    }
    // A NAT64 address (64:ff9b::/96) reaches the IPv4 address it carries, so it is exactly as private.
    if let IpAddr::V4(v4) = addr {
        let nat64 = IpAddr::V6(std::net::Ipv6Addr::from(
            (0x64_ff9b_u128 << 96) | u128::from(u32::from(v4)),
        ));
        assert_eq!(is_private(nat64), is_private(addr), "{addr} and {nat64}");
    }
    let Ok(policy) = TargetPolicy::new(allow_private, deny, allow) else {
        assert!(
            deny.iter()
                .chain(allow)
                .any(|text| Rule::parse(text).is_err()),
            "TargetPolicy::new refused rules that all parse"
        );
        return;
    };
    let mut names = vec![name.to_ascii_lowercase()];
    for text in deny.iter().chain(allow) {
        let host = text
            .trim()
            .rsplit_once(':')
            .map_or(text.trim(), |(host, _)| host);
        if let Some(suffix) = host.strip_prefix("*.") {
            names.push(format!("www.{suffix}"));
        } else if !host.is_empty() {
            names.push(host.to_ascii_lowercase());
        }
    }
    for name in &names {
        // Names reach the policy as `parse_target` left them: lower-cased, never empty.
        if name.is_empty() || name.contains(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        let verdict = policy.check(name, port, addr);
        if !allow_private && allow.is_empty() && is_private(addr) {
            assert!(verdict.is_err(), "private {addr} allowed for {name}:{port}");
        }
        // IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
        if let IpAddr::V4(v4) = addr {
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            assert_eq!(
                policy.check(name, port, mapped),
                verdict,
                "{name}:{port}: {addr} and {mapped} judged differently"
            );
        }
        // A fully qualified name with its trailing dot resolves to the same addresses, so it must be judged alike.
        if !name.ends_with('.') {
            let absolute = format!("{name}.");
            assert_eq!(
                policy.check(&absolute, port, addr),
                verdict,
                "{name}:{port} and {absolute}:{port} at {addr} judged differently"
            );
        }
    }
}

/// `ProxyAuth::parse` on a configured credential, then the agent's `Proxy-Authorization` check on a header value.
pub fn proxy_auth(credential: &str, header_value: &[u8]) {
    let Some(auth) = ProxyAuth::parse(credential) else {
        assert!(
            credential
                .split_once(':')
                .is_none_or(|(user, _)| user.is_empty()),
            "{credential:?} refused"
        );
        return;
    };
    assert!(!auth.user().is_empty() && !auth.user().contains(':'));
    assert_eq!(format!("{}:{}", auth.user(), auth.password()), credential);
    assert_eq!(credential.parse::<ProxyAuth>().ok(), Some(auth.clone()));

    let check = |value: &[u8]| {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(header::PROXY_AUTHORIZATION, value);
        }
        crate::agent::proxy::authorized(&auth, &headers)
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(credential);
    assert!(
        check(format!("Basic {encoded}").as_bytes()),
        "own credential refused"
    );
    assert!(
        check(format!(" bAsIc  {encoded} ").as_bytes()),
        "own credential refused"
    );
    let wrong = base64::engine::general_purpose::STANDARD.encode(format!("{credential}x"));
    assert!(
        !check(format!("Basic {wrong}").as_bytes()),
        "wrong password accepted"
    );
    if check(header_value) {
        let text = std::str::from_utf8(header_value).expect("accepted values are text");
        let (scheme, token) = text.trim().split_once(' ').expect("scheme and token");
        assert!(scheme.eq_ignore_ascii_case("basic"), "{text:?} accepted");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .expect("accepted tokens are base64");
        assert_eq!(decoded, credential.as_bytes(), "{text:?} accepted");
    }
}

/// The SOCKS handshake (`agent::socks::Handshake`) over `caller`'s bytes, as `socks_session` runs it: with
/// `proxy_auth` set to `alice:s3cret` when `auth`, else without. The bytes arrive all at once and then one at a
/// time, and both runs must take the same steps: the machine reads messages, not reads.
pub fn socks(auth: bool, caller: &[u8]) {
    use crate::agent::socks::{Handshake, MAX_MESSAGE_BYTES, Step, Version};

    let credential = ProxyAuth::new("alice", "s3cret");
    let auth = auth.then_some(&credential);
    // The steps taken, each with the bytes of the message it consumed.
    let run = |chunk: usize| {
        let mut machine = Handshake::new(auth);
        let mut steps: Vec<(Step, Vec<u8>)> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut rest = caller;
        loop {
            match machine.step(&buf) {
                Step::More => {
                    assert!(
                        buf.len() < MAX_MESSAGE_BYTES,
                        "more wanted with {} bytes waiting",
                        buf.len()
                    );
                    if rest.is_empty() {
                        return steps;
                    }
                    let room = MAX_MESSAGE_BYTES - buf.len();
                    let (now, later) = rest.split_at(chunk.min(rest.len()).min(room));
                    buf.extend_from_slice(now);
                    rest = later;
                }
                step @ Step::Answer { consumed, .. } => {
                    assert!((1..=buf.len()).contains(&consumed), "{step:?} of {buf:?}");
                    let message = buf.drain(..consumed).collect();
                    steps.push((step, message));
                }
                step @ Step::Connect { consumed, .. } => {
                    assert!((1..=buf.len()).contains(&consumed), "{step:?} of {buf:?}");
                    let message = buf[..consumed].to_vec();
                    steps.push((step, message));
                    return steps;
                }
                step @ Step::Close { .. } => {
                    steps.push((step, Vec::new()));
                    return steps;
                }
            }
        }
    };
    let steps = run(usize::MAX);
    assert_eq!(run(1), steps, "steps depend on how the bytes arrived");

    let mut authenticated = false;
    for (step, message) in &steps {
        match step {
            Step::More => unreachable!("not recorded"),
            Step::Answer { answer, .. } => match answer.as_bytes() {
                [5, 0] => assert!(auth.is_none(), "no authentication offered with proxy_auth"),
                [5, 2] => assert!(auth.is_some(), "authentication asked without proxy_auth"),
                [1, 0] => {
                    assert_eq!(
                        message, b"\x01\x05alice\x06s3cret",
                        "accepted a wrong credential"
                    );
                    authenticated = true;
                }
                other => panic!("unexpected answer {other:02x?}"),
            },
            Step::Close { answer: None } => {}
            Step::Close {
                answer: Some(answer),
            } => match answer.as_bytes() {
                [5, 0xff] | [1, 1] | [0, 0x5b, 0, 0, 0, 0, 0, 0] => {}
                [5, code, 0, 1, 0, 0, 0, 0, 0, 0] => {
                    assert!((1..=8).contains(code), "refusal with code {code}");
                }
                other => panic!("unexpected refusal {other:02x?}"),
            },
            Step::Connect {
                version, target, ..
            } => {
                if auth.is_some() {
                    assert_eq!(*version, Version::Socks5, "SOCKS4 served with proxy_auth");
                    assert!(authenticated, "a stream without authentication");
                }
                assert!(!target.host.is_empty() && target.port != 0, "{target:?}");
                assert_eq!(target.host, target.host.to_ascii_lowercase());
                // The agent sends the target to the server as a CONNECT authority, which the server parses.
                assert_eq!(
                    parse_target(&target.to_string(), None).as_ref(),
                    Ok(target),
                    "{target:?} does not survive the trip to the server"
                );
            }
        }
    }
}

/// A scratch folder for this process (one per fuzzing job), for the config file the loaders read.
fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fluidity-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

/// Every configuration error is one line (README: "a one-line message naming the key and the file").
fn assert_one_line(error: &ConfigError) {
    let message = error.to_string();
    assert!(!message.contains('\n'), "multi-line error: {message:?}");
}

/// The promises of a validated agent configuration (`config::resolve`).
fn check_agent(config: &AgentConfig) {
    assert!(!config.servers.is_empty(), "no server");
    for server in &config.servers {
        let host = &server.host;
        assert!(!host.is_empty(), "empty server host");
        assert!(
            !host.contains(|c: char| c.is_whitespace() || "/[]@,".contains(c)),
            "server host {host:?}"
        );
        assert!(
            !host.contains(':') || host.parse::<IpAddr>().is_ok(),
            "server host {host:?} has a port"
        );
        assert_ne!(server.port, 0);
        // What the agent shows and logs reads back as the same server.
        assert_eq!(
            config::parse_server(&server.to_string(), 1).as_ref(),
            Ok(server),
            "{server}"
        );
    }
    assert!(
        config.listen.ip().is_loopback() || config.proxy_auth.is_some() || config.allow_open_proxy,
        "open proxy on {}",
        config.listen
    );
    assert!(!config.connect_timeout.is_zero());
    assert!(!config.keepalive.is_zero());
    assert!(config.idle_timeout.is_none_or(|t| !t.is_zero()));
    assert!(
        (1..=config::MAX_HEADER_READ_TIMEOUT_SECS).contains(&config.header_read_timeout.as_secs())
    );
}

/// The promises of a validated server configuration (`config::resolve`).
fn check_server(config: &ServerConfig) {
    assert!(config.max_connections > 0);
    assert!(config.max_streams_per_agent > 0);
    assert!(config.rate_limit_burst >= 1);
    assert!(!config.connect_timeout.is_zero());
    assert!(!config.tls_handshake_timeout.is_zero());
    assert!(!config.keepalive.is_zero());
    assert!(config.idle_timeout.is_none_or(|t| !t.is_zero()));
    // Rules are checked when the configuration loads, so the server never refuses them at startup.
    assert!(
        TargetPolicy::new(
            config.allow_private_targets,
            &config.deny_targets,
            &config.allow_targets,
        )
        .is_ok(),
        "a loaded configuration has target rules the server refuses"
    );
}

/// A YAML config file through the public loaders of both roles (written to a scratch file, as they read files), and
/// then `--save` of one flag into it.
pub fn config_yaml(text: &[u8]) {
    let dir = scratch_dir();
    let file = dir.join("fuzz.yaml");
    std::fs::write(&file, text).expect("write the scratch config");
    let env = HashMap::new();

    let agent = config::load_agent(Some(&file), &AgentLayer::default(), &env);
    match &agent {
        Ok(config) => check_agent(config),
        Err(error) => assert_one_line(error),
    }
    match config::load_server(Some(&file), &config::ServerLayer::default(), &env) {
        Ok(config) => check_server(&config),
        Err(error) => assert_one_line(&error),
    }

    // `--save` rewrites the file as a YAML mapping: every other key keeps its value, the saved key is added, and a
    // configuration that loaded before still loads the same apart from that key.
    let flag = AgentLayer {
        server_port: Some(9443),
        ..AgentLayer::default()
    };
    let document = match std::str::from_utf8(text).map(yaml_serde::from_str::<Value>) {
        Ok(Ok(Value::Null)) => Some(Mapping::new()),
        Ok(Ok(Value::Mapping(mapping))) => Some(mapping),
        _ => None,
    };
    match config::save_agent(&file, &flag) {
        Ok(()) => {
            let Some(mut expected) = document else {
                panic!("--save wrote over a file that is not a YAML mapping");
            };
            expected.insert(Value::from("server_port"), Value::from(9443));
            let written = std::fs::read_to_string(&file).expect("read the saved config");
            match yaml_serde::from_str::<Value>(&written) {
                Ok(Value::Mapping(saved)) => assert_eq!(
                    saved, expected,
                    "--save changed other keys; it wrote {written:?}"
                ),
                other => panic!("--save wrote {written:?}, which reads back as {other:?}"),
            }
            if let Ok(before) = &agent {
                let after = config::load_agent(Some(&file), &AgentLayer::default(), &env)
                    .expect("a config that loaded still loads after --save");
                assert_eq!(after.servers.len(), before.servers.len());
                for (before, after) in before.servers.iter().zip(&after.servers) {
                    assert_eq!(before.host, after.host);
                    // An entry's own port stays; the others take the saved server_port.
                    assert!(after.port == before.port || after.port == 9443);
                }
                assert_eq!(before.listen, after.listen);
                assert_eq!(before.proxy_auth, after.proxy_auth);
                assert_eq!(before.tls, after.tls);
                assert_eq!(before.log.level, after.log.level);
            }
        }
        Err(error) => {
            assert_one_line(&error);
            assert!(
                document.is_none() || matches!(error, ConfigError::Write { .. }),
                "--save refused a mapping: {error}"
            );
        }
    }
}

/// Every `FLUIDITY_*` variable of both roles (and two that are not); the `config_env` seeds name each of them.
pub const ENV_VARS: [&str; 29] = [
    "FLUIDITY_SERVER_IP",
    "FLUIDITY_SERVER_PORT",
    "FLUIDITY_LOCAL_PROXY_PORT",
    "FLUIDITY_LISTEN_ADDR",
    "FLUIDITY_CERT_FILE",
    "FLUIDITY_KEY_FILE",
    "FLUIDITY_CA_CERT_FILE",
    "FLUIDITY_LOG_LEVEL",
    "FLUIDITY_LOG_FORMAT",
    "FLUIDITY_FAST_CONNECT",
    "FLUIDITY_PROXY_AUTH",
    "FLUIDITY_ALLOW_OPEN_PROXY",
    "FLUIDITY_CONNECT_TIMEOUT_SECS",
    "FLUIDITY_IDLE_TIMEOUT_SECS",
    "FLUIDITY_HEADER_READ_TIMEOUT_SECS",
    "FLUIDITY_KEEPALIVE_SECS",
    "FLUIDITY_LISTEN_PORT",
    "FLUIDITY_HEALTH_ADDR",
    "FLUIDITY_MAX_CONNECTIONS",
    "FLUIDITY_ALLOW_PRIVATE_TARGETS",
    "FLUIDITY_CRL_FILE",
    "FLUIDITY_MAX_STREAMS_PER_AGENT",
    "FLUIDITY_RATE_LIMIT_PER_AGENT",
    "FLUIDITY_RATE_LIMIT_BURST",
    "FLUIDITY_DENY_TARGETS",
    "FLUIDITY_ALLOW_TARGETS",
    "FLUIDITY_TLS_HANDSHAKE_TIMEOUT_SECS",
    "FLUIDITY_UNKNOWN_KEY",
    "SERVER_PORT",
];

/// The environment layer of both roles, without a config file.
pub fn config_env(vars: &[(String, String)]) {
    let env: HashMap<String, String> = vars.iter().cloned().collect();
    match config::load_agent(None, &AgentLayer::default(), &env) {
        Ok(config) => check_agent(&config),
        Err(error) => assert_one_line(&error),
    }
    match config::load_server(None, &config::ServerLayer::default(), &env) {
        Ok(config) => check_server(&config),
        Err(error) => assert_one_line(&error),
    }
}

/// The certificate names of `certs init --server-san` and `certs issue NAME`: what is accepted is issued, and the
/// issued certificate carries the name as its common name.
pub fn cert_names(name: &str) {
    static CA: OnceLock<crate::certs::Pem> = OnceLock::new();
    let ca = CA.get_or_init(|| crate::certs::generate_ca("fuzz CA", 30).expect("CA"));
    let common_name = |pem: &crate::certs::Pem| {
        let der = <rustls_pki_types::CertificateDer<'_> as rustls_pki_types::pem::PemObject>::from_pem_slice(
            pem.cert.as_bytes(),
        )
        .expect("issued PEM");
        crate::tls::cert_common_name(&der)
    };
    if let Ok(server) = crate::certs::issue_server(ca, &[name.to_owned()], 30) {
        assert_eq!(
            common_name(&server).as_deref(),
            Some(name),
            "server SAN {name:?}"
        );
    }
    if let Ok(client) = crate::certs::issue_client(ca, name, 30) {
        assert_eq!(
            common_name(&client).as_deref(),
            Some(name),
            "client name {name:?}"
        );
    }
}

/// The invite file of `fluidity join`: parsing and checking never panic; what parses encodes to a file that parses
/// back to the same name and servers; a sealed file's header reads without panicking and, with few enough rounds
/// to try, opens or is refused cleanly; any text sealed with a passphrase opens with it again to the same bytes.
pub fn invite(data: &[u8]) {
    /// Rounds cheap enough to try on every input.
    const ROUNDS: u32 = 2;
    if let Ok(parsed) = crate::invite::parse(data) {
        let _ = crate::invite::check(&parsed, time::OffsetDateTime::now_utc());
        let again = crate::invite::parse(crate::invite::encode(&parsed).as_bytes())
            .expect("an encoded invite parses");
        assert_eq!(
            (&again.name, &again.servers),
            (&parsed.name, &parsed.servers)
        );
    }
    if let Ok(parts) = crate::invite::sealed_parts(data)
        && parts.iterations <= ROUNDS
    {
        let _ = crate::invite::open(data, "fuzz").map(|plain| crate::invite::parse(&plain));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let sealed = crate::invite::seal(text, "fuzz", ROUNDS).expect("any text seals");
        assert!(crate::invite::is_sealed(sealed.as_bytes()));
        assert_eq!(
            crate::invite::open(sealed.as_bytes(), "fuzz").as_deref(),
            Ok(data)
        );
        assert_eq!(
            crate::invite::open(sealed.as_bytes(), "fuzz!"),
            Err(crate::invite::InviteError::WrongPassphrase)
        );
    }
}

/// A fuzz target's name (`fuzz/fuzz_targets/NAME.rs`, `fuzz/seeds/NAME/`) and its entry point, which takes the
/// fuzzer's bytes as they come.
pub type FuzzTarget = (&'static str, fn(&[u8]));

/// Every fuzz target.
pub const TARGETS: [FuzzTarget; 10] = [
    ("authority", authority_input),
    ("headers", headers_input),
    ("rule", rule_input),
    ("policy", policy_input),
    ("proxy_auth", proxy_auth_input),
    ("config_yaml", config_yaml_input),
    ("config_env", config_env_input),
    ("cert_names", cert_names_input),
    ("invite", invite_input),
    ("socks", socks_input),
];

/// [`authority`] on the input as text (input that is not UTF-8 is skipped: requests reach the parser as text).
pub fn authority_input(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        authority(text);
    }
}

/// [`headers`] on one field per line, `name: value` (split at the first `:`, white space around the value
/// dropped, as HTTP/1.1 reads it). The value may hold any byte but a line break, as in a header block.
pub fn headers_input(data: &[u8]) {
    let pairs: Vec<(&[u8], &[u8])> = lines(data)
        .map(|line| match line.iter().position(|b| *b == b':') {
            Some(colon) => (&line[..colon], line[colon + 1..].trim_ascii()),
            None => (line, &[][..]),
        })
        .collect();
    headers(&pairs);
}

/// [`rule`] on the input as text.
pub fn rule_input(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        rule(text);
    }
}

/// [`policy`] on lines of text: `private` (allow private targets), `deny RULE`, `allow RULE` (the rest of the
/// line, as written in the config), and `check NAME PORT ADDRESS`, one query each. Other lines are skipped. Without
/// a `check` line the policy is asked once about no name at `127.0.0.1:80`: [`policy`] still asks about the names
/// in the rules.
pub fn policy_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (mut allow_private, mut deny, mut allow, mut queries) = (false, vec![], vec![], vec![]);
    for line in text.lines() {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "private" => allow_private = true,
            "deny" => deny.push(rest.to_owned()),
            "allow" => allow.push(rest.to_owned()),
            "check" => {
                let mut fields = rest.split(' ');
                if let (Some(name), Some(Ok(port)), Some(Ok(addr)), None) = (
                    fields.next(),
                    fields.next().map(str::parse::<u16>),
                    fields.next().map(str::parse::<IpAddr>),
                    fields.next(),
                ) {
                    queries.push((name, port, addr));
                }
            }
            _ => {}
        }
    }
    if queries.is_empty() {
        queries.push(("", 80, IpAddr::from([127, 0, 0, 1])));
    }
    for (name, port, addr) in queries {
        policy(allow_private, &deny, &allow, name, port, addr);
    }
}

/// [`proxy_auth`] on the first line as the configured credential (skipped unless UTF-8: it comes from a config)
/// and the rest of the input as the `Proxy-Authorization` value.
pub fn proxy_auth_input(data: &[u8]) {
    let (credential, header_value) = match data.iter().position(|b| *b == b'\n') {
        Some(end) => (&data[..end], &data[end + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(credential) = std::str::from_utf8(credential) {
        proxy_auth(credential, header_value);
    }
}

/// [`config_yaml`] on the input as a config file.
pub fn config_yaml_input(data: &[u8]) {
    config_yaml(data);
}

/// [`config_env`] on one variable per line, `NAME=value`; in the value `\n`, `\r`, `\0` and `\\` stand for a line
/// feed, a carriage return, a NUL and a backslash (values with line breaks were findings). Lines without `=` or
/// that are not UTF-8 are skipped.
pub fn config_env_input(data: &[u8]) {
    let vars: Vec<(String, String)> = lines(data)
        .filter_map(|line| std::str::from_utf8(line).ok()?.split_once('='))
        .map(|(name, value)| (name.to_owned(), unescape(value)))
        .collect();
    config_env(&vars);
}

/// [`cert_names`] on the input as text.
pub fn cert_names_input(data: &[u8]) {
    if let Ok(name) = std::str::from_utf8(data) {
        cert_names(name);
    }
}

/// [`invite`] on the bytes of an invite file.
pub fn invite_input(data: &[u8]) {
    invite(data);
}

/// [`socks`] on the caller's bytes as sent (binary, as SOCKS is); a first line `auth` sets `proxy_auth`.
pub fn socks_input(data: &[u8]) {
    match data.strip_prefix(b"auth\n") {
        Some(caller) => socks(true, caller),
        None => socks(false, data),
    }
}

/// The lines of `data`, split at `\n`, each without a trailing `\r`; an empty last line is no line.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    (!data.is_empty())
        .then(|| data.split(|b| *b == b'\n'))
        .into_iter()
        .flatten()
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

/// Undoes the escapes of [`config_env_input`]; any other backslash stays as it is.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }

    /// The files in `dir`, sorted.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        files
    }

    /// Every target's property holds on each of its committed seeds (`fuzz/seeds/TARGET/*`): the fuzzer's
    /// starting corpus, which holds the inputs of its past findings.
    #[test]
    fn every_fuzz_target_holds_on_its_seeds() {
        let mut failed = Vec::new();
        for (name, run) in TARGETS {
            let seeds = files(&fuzz_dir().join("seeds").join(name));
            assert!(seeds.len() >= 10, "{name}: only {} seeds", seeds.len());
            for seed in seeds {
                let data = std::fs::read(&seed).expect("read a seed");
                // The panic message is printed by the hook; collect the seeds so that one run names them all.
                if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                    failed.push(seed.display().to_string());
                }
            }
        }
        let _ = std::fs::remove_dir_all(scratch_dir());
        assert!(failed.is_empty(), "properties failed on {failed:#?}");
    }

    /// `fuzz/fuzz_targets/` and [`TARGETS`] name the same targets, and each target file calls its entry point.
    #[test]
    fn every_fuzz_target_file_has_an_entry_point() {
        let mut files: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
            .iter()
            .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
            .collect();
        files.sort();
        let mut names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        assert_eq!(files, names);
        for name in names {
            let path = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
            let source = std::fs::read_to_string(&path).expect("read a fuzz target");
            assert!(
                source.contains(&format!("fluidity::fuzzing::{name}_input(")),
                "{} does not call {name}_input",
                path.display()
            );
        }
    }

    /// A new configuration key gets a seed: the `config_env` seeds set every variable of [`ENV_VARS`].
    #[test]
    fn config_env_seeds_set_every_variable() {
        let seeds: String = files(&fuzz_dir().join("seeds/config_env"))
            .iter()
            .map(|path| std::fs::read_to_string(path).unwrap_or_default())
            .collect();
        for var in ENV_VARS {
            assert!(
                seeds
                    .lines()
                    .any(|line| line.starts_with(&format!("{var}="))),
                "no config_env seed sets {var}"
            );
        }
    }

    #[test]
    fn input_formats_read_as_documented() {
        assert_eq!(lines(b"").count(), 0);
        assert_eq!(
            lines(b"a: 1\r\n\nb\n").collect::<Vec<_>>(),
            [&b"a: 1"[..], b"", b"b"]
        );
        assert_eq!(unescape(r"a\nb\r\0\\\x\"), "a\nb\r\0\\\\x\\");
    }
}
