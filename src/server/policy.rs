//! The destination policy: which targets the server may dial, decided on the address it actually connects to.
//!
//! Rules come from `deny_targets` and `allow_targets`; private ranges are refused unless `allow_private_targets`.
//! Checking the resolved address (not the name) keeps a DNS name from smuggling a private address past the check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One `deny_targets`/`allow_targets` entry: a CIDR or IP, a host name (`*.` for subdomains), a `:port`, or a
/// host/CIDR with a port (`example.com:25`, `10.0.0.0/8:22`, `[fd00::]/8:22`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    text: String,
    host: Option<HostMatch>,
    port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Cidr { network: IpAddr, prefix: u8 },
    Exact(String),
    Subdomains(String),
}

/// A rule that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a CIDR, host name, :port or host:port rule")]
pub(crate) struct BadRule(String);

impl Rule {
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

    fn matches(&self, name: &str, port: u16, addr: IpAddr) -> bool {
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

    fn is_cidr(&self) -> bool {
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

fn in_network(addr: IpAddr, network: IpAddr, prefix: u8) -> bool {
    // `network` is never IPv4-mapped (see `parse_host`).
    match (canonical(addr), network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
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

/// True for loopback, private, shared (CGNAT), link-local (cloud metadata), unique-local, unspecified, broadcast
/// and multicast addresses: the ones an exit must not reach on a caller's behalf.
pub(crate) fn is_private(addr: IpAddr) -> bool {
    match canonical(addr) {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn is_private_v6(v6: Ipv6Addr) -> bool {
    let first = v6.segments()[0];
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link local fe80::/10
}

/// The server's destination policy.
#[derive(Clone, Debug, Default)]
pub(crate) struct TargetPolicy {
    allow_private: bool,
    deny: Vec<Rule>,
    allow: Vec<Rule>,
}

impl TargetPolicy {
    /// Builds the policy; an error names the key and the entry that does not parse.
    pub(crate) fn new(
        allow_private: bool,
        deny: &[String],
        allow: &[String],
    ) -> Result<Self, String> {
        let parse = |key: &str, list: &[String]| {
            list.iter()
                .map(|s| Rule::parse(s).map_err(|e| format!("{key}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allow_private,
            deny: parse("deny_targets", deny)?,
            allow: parse("allow_targets", allow)?,
        })
    }

    /// Decides whether `addr` (what `name:port` resolved to) may be dialed; the error names the reason.
    pub(crate) fn check(&self, name: &str, port: u16, addr: IpAddr) -> Result<(), String> {
        if let Some(rule) = self.deny.iter().find(|r| r.matches(name, port, addr)) {
            return Err(format!("denied by deny_targets rule `{rule}`"));
        }
        let allowed_by = self.allow.iter().find(|r| r.matches(name, port, addr));
        if !self.allow.is_empty() && allowed_by.is_none() {
            return Err("not in allow_targets".to_string());
        }
        let explicitly_allowed = allowed_by.is_some_and(Rule::is_cidr);
        if !self.allow_private && !explicitly_allowed && is_private(addr) {
            return Err("private address (allow_private_targets is false)".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_ranges() {
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip(addr)), "{addr} should be private");
        }
        for addr in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert!(!is_private(ip(addr)), "{addr} should be public");
        }
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

    #[test]
    fn policy_order() {
        let policy = TargetPolicy::default();
        assert!(policy.check("localhost", 80, ip("127.0.0.1")).is_err());
        assert!(policy.check("example.com", 80, ip("93.184.216.34")).is_ok());

        let open = TargetPolicy::new(true, &[], &[]).unwrap();
        assert!(open.check("localhost", 80, ip("127.0.0.1")).is_ok());

        let deny = TargetPolicy::new(true, &[":25".into()], &[]).unwrap();
        let err = deny.check("mx.test", 25, ip("1.1.1.1")).unwrap_err();
        assert!(err.contains(":25"), "{err}");

        let allow =
            TargetPolicy::new(false, &[], &["*.corp.test".into(), "10.1.0.0/16".into()]).unwrap();
        assert!(allow.check("a.corp.test", 443, ip("1.1.1.1")).is_ok());
        assert!(
            allow.check("a.corp.test", 443, ip("10.2.0.1")).is_err(),
            "name allow does not open private ranges"
        );
        assert!(
            allow.check("db", 5432, ip("10.1.0.9")).is_ok(),
            "CIDR allow opens that range"
        );
        assert_eq!(
            allow.check("other.test", 443, ip("1.1.1.1")).unwrap_err(),
            "not in allow_targets"
        );

        let err = TargetPolicy::new(false, &["nope!".into()], &[]).unwrap_err();
        assert!(err.starts_with("deny_targets:"), "{err}");
    }

    /// Found by `cargo fuzz run policy` (fuzz/README.md): a rule with a fully qualified name (trailing dot) escaped
    /// the host-name rules, though it resolves to the same addresses.
    #[test]
    fn trailing_dot_names_match_name_rules() {
        let deny =
            TargetPolicy::new(true, &["example.com".into(), "*.corp.test".into()], &[]).unwrap();
        assert!(
            deny.check("example.com.", 443, ip("93.184.216.34"))
                .is_err()
        );
        assert!(
            deny.check("www.corp.test.", 443, ip("93.184.216.34"))
                .is_err()
        );
        assert!(deny.check("other.test.", 443, ip("93.184.216.34")).is_ok());
    }

    /// Found by `cargo fuzz run policy` (fuzz/README.md): an IPv4-mapped rule (`::ffff:0:9`, or any
    /// `::ffff:a.b.c.d[/n]`) was compared as an IPv4 network with its IPv6 prefix: `32 - 128` overflowed, a panic
    /// in debug builds; in release builds the mask became 0 and the rule matched every IPv4 address (as an allow rule
    /// it opened loopback and 169.254.169.254).
    #[test]
    fn ipv4_mapped_rules_are_ipv4_rules() {
        let policy = TargetPolicy::new(true, &["::ffff:0:9".into()], &[]).unwrap();
        assert!(policy.check("x", 15103, ip("0.0.50.51")).is_ok());
        assert!(policy.check("x", 80, ip("0.0.0.9")).is_err());
        let rule = Rule::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(rule.matches("x", 80, ip("10.1.2.3")));
        assert!(rule.matches("x", 80, ip("::ffff:10.1.2.3")));
        assert!(!rule.matches("x", 80, ip("127.0.0.1")));
        let allow = TargetPolicy::new(false, &[], &["::ffff:203.0.113.5".into()]).unwrap();
        assert!(allow.check("x", 80, ip("203.0.113.5")).is_ok());
        assert!(allow.check("x", 80, ip("169.254.169.254")).is_err());
        assert!(Rule::parse("::ffff:0:0/80").is_err());
    }
}
