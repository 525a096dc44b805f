//! The target rule syntax: one entry of a rule list such as the server's `deny_targets`/`allow_targets`, parsed
//! once and matched against a target's name, port and the address it resolved to.
//!
//! Kept apart from either role so that configuration can check rules before anything starts (a bad rule is a
//! configuration error, exit 2) and both roles can use the same syntax. What a match means (refuse, allow) is the
//! caller's; this module knows nothing of policies, DNS or private ranges.

use std::fmt;
use std::net::IpAddr;

/// One rule: a CIDR or IP, a host name (`*.` for subdomains), a `:port`, or a host/CIDR with a port
/// (`example.com:25`, `10.0.0.0/8:22`, `[fd00::]/8:22`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    text: String,
    host: Option<HostMatch>,
    port: Option<u16>,
}

/// What a rule says about the host: a network, one name, or the names under a domain (lower case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostMatch {
    Cidr { network: IpAddr, prefix: u8 },
    Exact(String),
    Subdomains(String),
}

/// A rule that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a CIDR, host name, :port or host:port rule")]
pub(crate) struct BadRule(String);

impl Rule {
    /// Parses one rule; surrounding whitespace is ignored.
    ///
    /// # Errors
    /// [`BadRule`] quoting the text when it is none of the forms above (a port of 0 included).
    pub(crate) fn parse(text: &str) -> Result<Self, BadRule> {
        let bad = || BadRule(text.to_string());
        let trimmed = text.trim();
        let (host_part, port_part) = split_port(trimmed).ok_or_else(bad)?;
        let port = match port_part {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
            None => None,
        };
        let host = if host_part.is_empty() {
            None
        } else {
            Some(parse_host(host_part).ok_or_else(bad)?)
        };
        if host.is_none() && port.is_none() {
            return Err(bad());
        }
        Ok(Self {
            text: trimmed.to_string(),
            host,
            port,
        })
    }

    /// True when the rule covers `name:port` at the address `addr` it resolved to: a host-name rule looks at
    /// `name` (case and a trailing dot ignored), a CIDR rule at `addr`, a port at `port`.
    pub(crate) fn matches(&self, name: &str, port: u16, addr: IpAddr) -> bool {
        // `example.com.` (fully qualified) names the same host as `example.com`.
        let name = name.strip_suffix('.').unwrap_or(name);
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.host {
            None => true,
            Some(HostMatch::Cidr { network, prefix }) => in_network(addr, *network, *prefix),
            Some(HostMatch::Exact(host)) => name.eq_ignore_ascii_case(host),
            Some(HostMatch::Subdomains(suffix)) => {
                let name = name.to_ascii_lowercase();
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
        }
    }

    /// True when the rule covers `host:port` as a caller gave it, without resolving anything: a CIDR rule matches
    /// only a literal address (`[v6]` brackets allowed), a host-name rule only a name.
    pub(crate) fn matches_given(&self, host: &str, port: u16) -> bool {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match literal.parse::<IpAddr>() {
            Ok(addr) => self.matches("", port, addr),
            Err(_) if self.is_cidr() => false,
            // No address to judge: a CIDR rule is ruled out above, so the address is never looked at.
            Err(_) => self.matches(host, port, IpAddr::from([0, 0, 0, 0])),
        }
    }

    /// The host part, if the rule has one (`None` for a bare `:port`).
    pub(crate) fn host(&self) -> Option<&HostMatch> {
        self.host.as_ref()
    }

    /// The port, if the rule has one.
    pub(crate) fn port(&self) -> Option<u16> {
        self.port
    }

    /// True for a CIDR or IP rule (with or without a port).
    pub(crate) fn is_cidr(&self) -> bool {
        matches!(self.host, Some(HostMatch::Cidr { .. }))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits `host[:port]`; `None` for a malformed bracket.
fn split_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        // `[fd00::]/8` keeps its prefix length with the address
        let (prefix, after) = match after.strip_prefix('/') {
            Some(tail) => match tail.split_once(':') {
                Some((len, port)) => (Some(len), Some(port)),
                None => (Some(tail), None),
            },
            None => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None if after.is_empty() => (None, None),
                None => return None,
            },
        };
        let host_len = 1 + inside.len() + 1 + prefix.map_or(0, |p| p.len() + 1);
        return Some((&text[..host_len], after));
    }
    match text.matches(':').count() {
        0 => Some((text, None)),
        1 => text.split_once(':').map(|(h, p)| (h, Some(p))),
        _ => Some((text, None)), // a bare IPv6 address or network
    }
}

fn parse_host(text: &str) -> Option<HostMatch> {
    let unbracketed: String = text.chars().filter(|c| *c != '[' && *c != ']').collect();
    let (addr, prefix) = match unbracketed.split_once('/') {
        Some((addr, len)) => (addr.to_string(), Some(len.parse::<u8>().ok()?)),
        None => (unbracketed.clone(), None),
    };
    if let Ok(ip) = addr.parse::<IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        // Addresses are judged as IPv4 when IPv4-mapped, so a mapped network is the IPv4 network it carries, its
        // prefix counted in IPv4 bits. A mapped network shorter than /96 reaches beyond the mapped range: refused.
        let (network, prefix) = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
                Some(_) => return None,
                None => (ip, prefix),
            },
            IpAddr::V4(_) => (ip, prefix),
        };
        return Some(HostMatch::Cidr { network, prefix });
    }
    if prefix.is_some() || text.contains('[') {
        return None;
    }
    let name = text.to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    match name.strip_prefix("*.") {
        Some(suffix) if valid(suffix) => Some(HostMatch::Subdomains(suffix.to_string())),
        Some(_) => None,
        None if valid(&name) => Some(HostMatch::Exact(name)),
        None => None,
    }
}

/// True when `addr` (IPv4-mapped addresses as IPv4) is inside `network/prefix`. `prefix` counts bits of the
/// network's own family; one longer than the family's address matches nothing. `network` is not IPv4-mapped
/// (`Rule::parse` turns such a network into the IPv4 one).
pub(crate) fn in_network(addr: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (canonical(addr), network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => 32u32.checked_sub(prefix.into()).is_some_and(|shift| {
            let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }),
        (IpAddr::V6(a), IpAddr::V6(n)) => 128u32.checked_sub(prefix.into()).is_some_and(|shift| {
            let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }),
        _ => false,
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are judged as the IPv4 address they carry.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_match() {
        let cases: &[(&str, &str, u16, &str, bool)] = &[
            ("10.0.0.0/8", "x", 80, "10.9.9.9", true),
            ("10.0.0.0/8", "x", 80, "11.0.0.1", false),
            ("1.2.3.4", "x", 80, "1.2.3.4", true),
            ("fd00::/8", "x", 80, "fd12::1", true),
            ("[fd00::]/8:22", "x", 22, "fd12::1", true),
            ("[fd00::]/8:22", "x", 23, "fd12::1", false),
            ("[::1]:22", "x", 22, "::1", true),
            ("example.com", "EXAMPLE.com", 443, "1.1.1.1", true),
            ("example.com", "www.example.com", 443, "1.1.1.1", false),
            ("*.example.com", "www.example.com", 443, "1.1.1.1", true),
            ("*.example.com", "example.com", 443, "1.1.1.1", false),
            ("*.example.com", "badexample.com", 443, "1.1.1.1", false),
            (":25", "mail.test", 25, "1.1.1.1", true),
            (":25", "mail.test", 587, "1.1.1.1", false),
            ("example.com:25", "example.com", 25, "1.1.1.1", true),
            ("example.com:25", "example.com", 80, "1.1.1.1", false),
            ("10.0.0.0/8:22", "x", 22, "10.0.0.1", true),
            ("0.0.0.0/0", "x", 1, "8.8.8.8", true),
            ("10.0.0.0/8", "x", 80, "::ffff:10.0.0.1", true),
        ];
        for (rule, name, port, addr, expected) in cases {
            let parsed = Rule::parse(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
            assert_eq!(
                parsed.matches(name, *port, ip(addr)),
                *expected,
                "{rule} vs {name}:{port} at {addr}"
            );
        }
        let given: &[(&str, &str, u16, bool)] = &[
            ("10.0.0.0/8", "10.1.2.3", 80, true),
            ("10.0.0.0/8", "ten.example", 80, false),
            ("0.0.0.0/0", "example.com", 80, false),
            ("::1", "[::1]", 443, true),
            ("fc00::/7", "fd00::5", 443, true),
            ("localhost", "LOCALHOST", 80, true),
            ("localhost", "127.0.0.1", 80, false),
            ("*.local", "printer.local", 631, true),
            ("*.local", "local", 631, false),
            (":22", "example.com", 22, true),
            ("example.com:25", "example.com", 80, false),
        ];
        for (rule, host, port, expected) in given {
            let parsed = Rule::parse(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
            assert_eq!(
                parsed.matches_given(host, *port),
                *expected,
                "{rule} vs {host}:{port}"
            );
        }
        for bad in [
            "",
            ":",
            ":0",
            ":x",
            "10.0.0.0/40",
            "exa mple.com",
            "*.",
            "[::1",
            "a:b:c:d:z/8",
            "host:99999",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
