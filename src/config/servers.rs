//! `server_ip` as a list: the agent's servers in the order it prefers them, each `host`, `host:port`, `v4:port`,
//! `[v6]:port`, `[v6]` or a bare IPv6 literal. An entry without a port takes `server_port`.
//!
//! In YAML the key is one string or a list of strings; on the command line and in `FLUIDITY_SERVER_IP` the
//! entries are separated by commas (the layer declares the key as a comma-delimited list). A YAML string is one
//! entry, as it always was. Parsing an entry is a pure function ([`parse_server`]) so the loaders, the fuzzer and
//! `join` agree on one reading. Nothing here resolves names: a host name is looked up when the agent dials it.

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;

/// One configured server: a host (IP literal or name, without brackets) and the port to dial.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerEndpoint {
    /// IP address or host name, without brackets or port. Also the name the server's certificate is checked
    /// against.
    pub host: String,
    /// The port (never 0).
    pub port: u16,
}

impl ServerEndpoint {
    /// A server at `host:port`; the caller is responsible for a valid host.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

/// `host:port`, with brackets around an IPv6 literal.
impl fmt::Display for ServerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Reads one `server_ip` entry; `default_port` is `server_port`, for an entry without a port of its own.
///
/// # Errors
/// A short reason, without the key (the caller names it): empty, a port that is not 1 to 65535, a character no
/// host has, or a colon that is neither part of an IPv6 literal nor before a port.
pub fn parse_server(raw: &str, default_port: u16) -> Result<ServerEndpoint, String> {
    let entry = raw.trim();
    if entry.is_empty() {
        return Err("an entry is empty".to_owned());
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("`{entry}` has no closing `]`"));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "`{entry}`: only IPv6 addresses go in brackets, as [2001:db8::1]:8443"
            ));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("`{entry}`: expected `:port` after `]`")),
            },
        }
    } else if entry.parse::<IpAddr>().is_ok() {
        // A bare IPv6 literal has colons but no port: `2001:db8::1:8443` is an address, not address and port.
        (entry, None)
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => {
                return Err(format!(
                    "`{entry}` is not an IP address or host name (write an IPv6 address with a port as \
                     [2001:db8::1]:8443)"
                ));
            }
            None => (entry, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(text) if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(format!(
                "`{entry}` is not an IP address or host name with an optional :port"
            ));
        }
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("`{entry}`: the port must be from 1 to 65535")),
        },
    };
    let bad_char = host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/[]@,".contains(c));
    if host.is_empty() || bad_char {
        return Err(format!(
            "`{entry}` is not an IP address or host name with an optional :port"
        ));
    }
    Ok(ServerEndpoint::new(host, port))
}

/// serde for the layer's `server_ip`: one string (one entry) or a list of strings.
pub(crate) mod one_or_many {
    use super::*;

    /// Reads a string as a one-entry list, or a list of strings.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        struct OneOrMany;

        impl<'de> Visitor<'de> for OneOrMany {
            type Value = Option<Vec<String>>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a server address or a list of server addresses")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Some(vec![text.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut servers = Vec::new();
                while let Some(server) = seq.next_element::<String>()? {
                    servers.push(server);
                }
                Ok(Some(servers))
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }

        deserializer.deserialize_any(OneOrMany)
    }

    /// Writes one entry as a string (as `server_ip` always read), several as a list.
    pub(crate) fn serialize<S: Serializer>(
        servers: &Option<Vec<String>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match servers.as_deref() {
            Some([one]) => serializer.serialize_str(one),
            Some(many) => serializer.collect_seq(many),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_with_and_without_ports() {
        let cases = [
            ("example.net", "example.net", 8443),
            (" example.net:9443 ", "example.net", 9443),
            ("192.0.2.1", "192.0.2.1", 8443),
            ("192.0.2.1:1", "192.0.2.1", 1),
            ("2001:db8::1", "2001:db8::1", 8443),
            ("::1", "::1", 8443),
            ("[2001:db8::1]", "2001:db8::1", 8443),
            ("[2001:db8::1]:65535", "2001:db8::1", 65535),
            // A bare IPv6 literal never carries a port: its last group is part of the address.
            ("2001:db8::1:9443", "2001:db8::1:9443", 8443),
            ("1234", "1234", 8443),
        ];
        for (raw, host, port) in cases {
            assert_eq!(
                parse_server(raw, 8443),
                Ok(ServerEndpoint::new(host, port)),
                "{raw}"
            );
        }
    }

    #[test]
    fn bad_entries_say_why() {
        let cases = [
            ("", "empty"),
            ("  ", "empty"),
            ("example.net:0", "port"),
            ("example.net:70000", "port"),
            ("example.net:", "not an IP address"),
            ("example.net:https", "not an IP address"),
            ("[2001:db8::1", "closing"),
            ("[example.net]:1", "brackets"),
            ("[2001:db8::1]8443", "`:port`"),
            ("[2001:db8::1]:x", "not an IP address"),
            ("a:b:c", "not an IP address"),
            ("https://example.net", "not an IP address"),
            ("a b", "not an IP address"),
            ("user@example.net", "not an IP address"),
            ("a,b", "not an IP address"),
            (":8443", "not an IP address"),
        ];
        for (raw, reason) in cases {
            let err = parse_server(raw, 8443).expect_err(raw);
            assert!(err.contains(reason), "{raw}: {err}");
            assert!(!err.contains('\n'), "{raw}: {err}");
        }
    }

    #[test]
    fn display_brackets_ipv6() {
        assert_eq!(
            ServerEndpoint::new("2001:db8::1", 1).to_string(),
            "[2001:db8::1]:1"
        );
        assert_eq!(
            ServerEndpoint::new("a.example", 2).to_string(),
            "a.example:2"
        );
        for shown in ["[2001:db8::1]:1", "a.example:2", "192.0.2.1:3"] {
            let parsed = parse_server(shown, 9).expect(shown);
            assert_eq!(parsed.to_string(), shown);
        }
    }
}
