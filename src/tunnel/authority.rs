//! Parsing of `host:port` targets, for CONNECT (port required) and absolute-form URLs (port defaulted).
//!
//! It checks syntax only; whether a target may be dialed is the server's policy.

use http::uri::Authority;
use std::fmt;
use std::net::IpAddr;

/// A target as named by the caller: a host name or IP literal and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// Host name, or IP literal without brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    /// The host as an IP address, when it is a literal.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl BadTarget {
    /// The reason as a static string, for error responses.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Syntax => "target must be host:port",
            Self::MissingPort => "target needs a port",
            Self::ZeroPort => "target port 0 is not valid",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a `host:port` was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadTarget {
    #[error("target must be host:port")]
    Syntax,
    #[error("target needs a port")]
    MissingPort,
    #[error("target port 0 is not valid")]
    ZeroPort,
}

/// [`target_of`] from text (tests and fuzzing; requests reach Fluidity with their authority already parsed).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn parse_target(
    authority: &str,
    default_port: Option<u16>,
) -> Result<Target, BadTarget> {
    let authority = authority
        .parse::<Authority>()
        .map_err(|_| BadTarget::Syntax)?;
    target_of(&authority, default_port)
}

/// The target `host:port` names; `default_port` applies when the port is absent (absolute-form URLs), `None`
/// requires it (CONNECT, RFC 9110 §9.3.6).
pub(crate) fn target_of(
    authority: &Authority,
    default_port: Option<u16>,
) -> Result<Target, BadTarget> {
    // The http crate checks the characters; the structure is checked here, because `Authority` accepts a '[' that
    // does not start the host and text between ']' and the port, and reads a port of "+80" as 80.
    let authority = authority.as_str();
    if authority.contains('@') {
        return Err(BadTarget::Syntax);
    }
    let (host, port_text) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(BadTarget::Syntax)?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(BadTarget::Syntax);
        }
        match after {
            "" => (inside, None),
            _ => (
                inside,
                Some(after.strip_prefix(':').ok_or(BadTarget::Syntax)?),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(['[', ']']) {
        return Err(BadTarget::Syntax);
    }
    let port = match port_text {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().map_err(|_| BadTarget::Syntax)?)
        }
        Some(_) => return Err(BadTarget::Syntax),
        None => None,
    };
    let port = match (port, default_port) {
        (Some(port), _) => port,
        (None, Some(port)) => port,
        (None, None) => return Err(BadTarget::MissingPort),
    };
    if port == 0 {
        return Err(BadTarget::ZeroPort);
    }
    Ok(Target {
        host: host.to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        type Case = (
            &'static str,
            Option<u16>,
            Result<(&'static str, u16), BadTarget>,
        );
        let cases: &[Case] = &[
            ("example.com:443", None, Ok(("example.com", 443))),
            ("Example.COM:80", None, Ok(("example.com", 80))),
            ("127.0.0.1:8080", None, Ok(("127.0.0.1", 8080))),
            ("[::1]:443", None, Ok(("::1", 443))),
            ("example.com", Some(80), Ok(("example.com", 80))),
            ("example.com", None, Err(BadTarget::MissingPort)),
            ("example.com:0", None, Err(BadTarget::ZeroPort)),
            ("example.com:99999", None, Err(BadTarget::Syntax)),
            ("user@example.com:443", None, Err(BadTarget::Syntax)),
            (":443", None, Err(BadTarget::Syntax)),
            ("[zz]:443", None, Err(BadTarget::Syntax)),
            ("", None, Err(BadTarget::Syntax)),
            ("a b:80", None, Err(BadTarget::Syntax)),
        ];
        for (input, default_port, expected) in cases {
            let got = parse_target(input, *default_port);
            let expected = expected.map(|(host, port)| Target {
                host: host.to_string(),
                port,
            });
            assert_eq!(got, expected, "input {input:?}");
        }
    }

    #[test]
    fn displays_ipv6_with_brackets() {
        let target = parse_target("[::1]:443", None).unwrap();
        assert_eq!(target.to_string(), "[::1]:443");
        assert_eq!(target.ip(), Some("::1".parse().unwrap()));
    }

    /// Found by `cargo fuzz run authority` (fuzz/README.md): authorities that were read as some other target, with
    /// part of the text ignored, instead of being refused.
    #[test]
    fn refuses_authorities_it_cannot_read_whole() {
        for input in [
            "1[*:0]1",
            ".3[636:556:6J]3$",
            "v:*[]",
            "8:T[]0T8:5",
            "[::]f+",
            "[::1]x:80",
            "5:+7",
        ] {
            for default_port in [None, Some(80)] {
                assert_eq!(
                    parse_target(input, default_port),
                    Err(BadTarget::Syntax),
                    "{input:?} with default port {default_port:?}"
                );
            }
        }
    }
}
