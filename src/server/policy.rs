//! The destination policy: which targets the server may dial, decided on the address it actually connects to.
//!
//! Rules come from `deny_targets` and `allow_targets` (their syntax is `crate::rules`, checked when the configuration
//! is loaded); private ranges are refused unless `allow_private_targets`.
//! Checking the resolved address (not the name) keeps a DNS name from smuggling a private address past the check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::rules::{Rule, in_network};

/// True for the addresses an exit must not reach on a caller's behalf: the special-purpose ranges of RFC 6890
/// ([`REFUSED_V4`], [`REFUSED_V6`]), and any IPv6 address that carries such an IPv4 address (IPv4-mapped,
/// IPv4-compatible, NAT64, 6to4, Teredo: see [`carried_ipv4`]), since packets to it end up at that IPv4 address.
pub(crate) fn is_private(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6) || carried_ipv4(v6).into_iter().any(is_private_v4),
    }
}

/// IPv4 ranges refused as targets (RFC 6890's special-purpose registry), each with why.
const REFUSED_V4: [(Ipv4Addr, u8); 14] = [
    // "This network" (RFC 791), the unspecified address among it: Linux dials 0.0.0.0 as the local host.
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    // Private networks (RFC 1918).
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    // Shared address space of carrier-grade NAT (RFC 6598): the provider's own network.
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    // Loopback.
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    // Link local, where clouds serve instance metadata and credentials (169.254.169.254).
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    // IETF protocol assignments (RFC 6890): DS-Lite and NAT64 discovery endpoints of the local network.
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    // Documentation (RFC 5737): never routed on the internet, so in use only inside some network.
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    // Benchmarking (RFC 2544): test networks of a lab, never the internet.
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    // Multicast.
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    // Reserved (RFC 1112), the limited broadcast address 255.255.255.255 among it.
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 ranges refused as targets, each with why. IPv6 forms of IPv4 addresses are judged by what they carry.
const REFUSED_V6: [(Ipv6Addr, u8); 8] = [
    // Unspecified and loopback.
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    // Discard-only (RFC 6666).
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    // Documentation (RFC 3849).
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    // Unique local (RFC 4193), the IPv6 private networks.
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    // Link local.
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    // Site local (deprecated by RFC 3879, still routed inside old networks).
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    // Multicast.
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

fn is_private_v4(v4: Ipv4Addr) -> bool {
    REFUSED_V4
        .iter()
        .any(|(network, prefix)| in_network(IpAddr::V4(v4), IpAddr::V4(*network), *prefix))
}

fn is_private_v6(v6: Ipv6Addr) -> bool {
    REFUSED_V6
        .iter()
        .any(|(network, prefix)| in_network(IpAddr::V6(v6), IpAddr::V6(*network), *prefix))
}

/// The IPv4 addresses an IPv6 address carries, by the schemes that deliver packets for it to an IPv4 address:
/// - IPv4-mapped `::ffff:a.b.c.d` and IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5): the last 32 bits;
/// - NAT64, the well-known prefix `64:ff9b::/96` (RFC 6052): the last 32 bits;
/// - NAT64, the local-use prefix `64:ff9b:1::/48` (RFC 8215): the operator picks a prefix of 48, 56, 64 or 96
///   bits inside it, which moves the IPv4 address (RFC 6052 §2.2); all four places are returned;
/// - 6to4 `2002::/16` (RFC 3056): bits 16 to 48;
/// - Teredo `2001::/32` (RFC 4380): the server at bits 32 to 64, the client in the last 32 bits, inverted.
///
/// Empty for any other address.
fn carried_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = v6.octets();
    let at = |i: [usize; 4]| Ipv4Addr::new(o[i[0]], o[i[1]], o[i[2]], o[i[3]]);
    let last = at([12, 13, 14, 15]);
    let high96 = u128::from(v6) >> 32;
    match v6.segments() {
        _ if high96 == 0xffff || high96 == 0 || high96 == 0x0064_ff9b_0000_0000_0000_0000 => {
            vec![last]
        }
        [0x64, 0xff9b, 1, ..] => vec![
            at([6, 7, 9, 10]),   // a /48 prefix (octet 8 is the reserved "u" octet)
            at([7, 9, 10, 11]),  // /56
            at([9, 10, 11, 12]), // /64
            last,                // /96
        ],
        [0x2002, ..] => vec![at([2, 3, 4, 5])],
        [0x2001, 0, ..] => vec![at([4, 5, 6, 7]), !last],
        _ => Vec::new(),
    }
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
        // A deny rule on an IPv4 network also covers the IPv6 forms of its addresses (NAT64 and the like): on a
        // server behind DNS64 every IPv4 destination resolves to one.
        let carried = match addr {
            IpAddr::V6(v6) => carried_ipv4(v6),
            IpAddr::V4(_) => Vec::new(),
        };
        let denied = |rule: &&Rule| {
            rule.matches(name, port, addr)
                || carried
                    .iter()
                    .any(|v4| rule.matches(name, port, IpAddr::V4(*v4)))
        };
        if let Some(rule) = self.deny.iter().find(denied) {
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
        let cases: &[(&str, bool)] = &[
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("192.0.0.8", true),
            ("192.0.0.170", true),
            ("192.0.2.1", true),
            ("198.18.0.1", true),
            ("198.19.255.255", true),
            ("198.51.100.7", true),
            ("203.0.113.5", true),
            ("224.0.0.1", true),
            ("240.0.0.1", true),
            ("250.1.2.3", true),
            ("255.255.255.255", true),
            ("93.184.216.34", false),
            ("1.1.1.1", false),
            ("100.128.0.1", false),
            ("100.63.255.255", false),
            ("172.32.0.1", false),
            ("192.0.1.1", false),
            ("192.0.3.1", false),
            ("198.17.255.255", false),
            ("198.20.0.1", false),
            ("203.0.114.1", false),
            ("239.255.255.255", true),
            ("223.255.255.255", false),
            ("::1", true),
            ("::", true),
            ("fd00::1", true),
            ("fe80::1", true),
            ("fec0::1", true),
            ("ff02::1", true),
            ("100::1", true),
            ("2001:db8::1", true),
            ("2606:4700::1111", false),
            ("2001:db9::1", false),
            // IPv4-mapped and IPv4-compatible forms.
            ("::ffff:127.0.0.1", true),
            ("::ffff:10.0.0.1", true),
            ("::ffff:1.1.1.1", false),
            ("::127.0.0.1", true),
            ("::10.0.0.1", true),
            ("::1.1.1.1", false),
            // NAT64, well-known prefix.
            ("64:ff9b::7f00:1", true),
            ("64:ff9b::127.0.0.1", true),
            ("64:ff9b::169.254.169.254", true),
            ("64:ff9b::192.168.0.1", true),
            ("64:ff9b::1.1.1.1", false),
            // NAT64, local-use prefix: the IPv4 address at the place of a /48, /56, /64 or /96 prefix.
            ("64:ff9b:1:7f55:5555:155:5555:5555", true), // 127.85.85.1 at /48
            ("64:ff9b:1:550a:5501:203:5555:5555", true), // 10.1.2.3 at /56
            ("64:ff9b:1:5555:550a:102:355:5555", true),  // 10.1.2.3 at /64
            ("64:ff9b:1:5555:5555:5555:c0a8:1", true),   // 192.168.0.1 at /96
            ("64:ff9b:1:5555:5555:5555:5555:5555", false), // 85.85.85.85 everywhere
            // 6to4.
            ("2002:7f00:1::1", true),
            ("2002:a9fe:a9fe::", true),
            ("2002:0101:0101::1", false),
            // Teredo: the server at bits 32-64, the client inverted in the last 32 bits.
            ("2001:0:7f00:1::fefe:fefe", true),
            ("2001:0:0101:0101::80ff:fffe", true),
            ("2001:0:0101:0101::fefe:fefe", false),
        ];
        for (addr, private) in cases {
            assert_eq!(is_private(ip(addr)), *private, "{addr}");
        }
    }

    #[test]
    fn ipv6_forms_carry_their_ipv4_addresses() {
        let cases: &[(&str, &[&str])] = &[
            ("::ffff:10.1.2.3", &["10.1.2.3"]),
            ("::10.1.2.3", &["10.1.2.3"]),
            ("64:ff9b::a01:203", &["10.1.2.3"]),
            (
                "64:ff9b:1:a01:2:300::",
                &["10.1.2.3", "1.2.3.0", "2.3.0.0", "0.0.0.0"],
            ),
            ("2002:a01:203::", &["10.1.2.3"]),
            ("2001:0:a01:203::f5fe:fdfc", &["10.1.2.3", "10.1.2.3"]),
            ("2606:4700::1111", &[]),
            ("2001:db8::1", &[]),
        ];
        for (addr, carried) in cases {
            let IpAddr::V6(v6) = ip(addr) else {
                panic!("{addr} is not IPv6")
            };
            let expected: Vec<Ipv4Addr> = carried.iter().map(|a| a.parse().unwrap()).collect();
            assert_eq!(carried_ipv4(v6), expected, "{addr}");
        }
    }

    #[test]
    fn deny_rules_on_ipv4_networks_cover_their_ipv6_forms() {
        let deny = TargetPolicy::new(true, &["203.0.113.0/24".into()], &[]).unwrap();
        for addr in [
            "203.0.113.9",
            "::ffff:203.0.113.9",
            "64:ff9b::203.0.113.9",
            "2002:cb00:7109::1",
        ] {
            assert!(deny.check("x", 443, ip(addr)).is_err(), "{addr}");
        }
        assert!(deny.check("x", 443, ip("64:ff9b::1.1.1.1")).is_ok());
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
