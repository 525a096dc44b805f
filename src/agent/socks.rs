//! The SOCKS handshake as the proxy port speaks it: SOCKS5 (RFC 1928) with username/password authentication
//! (RFC 1929), SOCKS4 and SOCKS4a, as a pure state machine over bytes, and the replies.
//!
//! It does no I/O and knows nothing of tunnels: `socks_session` reads what the caller sends, hands it to
//! [`Handshake::step`], writes the answers and opens the stream the caller asked for. Only CONNECT is served; BIND
//! and UDP ASSOCIATE are refused. A domain name (SOCKS5 address type 3, SOCKS4a) becomes the target's host as
//! given, never resolved here: the server resolves it, as it does for `CONNECT host:port`.
//!
//! Every message has a bounded size, so a caller can never make the agent buffer more than
//! [`MAX_MESSAGE_BYTES`]: a handshake that has not made sense by then is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::ProxyAuth;
use crate::tunnel::authority::{Target, target_of};

/// The first byte of every SOCKS5 message from the caller, except the RFC 1929 credentials.
pub(crate) const VERSION_5: u8 = 0x05;
/// The first byte of a SOCKS4 or SOCKS4a request.
pub(crate) const VERSION_4: u8 = 0x04;

/// The longest message a caller sends during the handshake: a SOCKS4a request with a 255-byte user id and a
/// 255-byte host name, each with its NUL, after the 8 fixed bytes. The other messages are shorter (an RFC 1929
/// request at most 513 bytes, a SOCKS5 request 262, a greeting 257).
pub(crate) const MAX_MESSAGE_BYTES: usize = 8 + 2 * (MAX_FIELD_BYTES + 1);

/// The longest user id or host name a SOCKS4/4a request may carry (SOCKS5 length bytes stop at 255 as well).
const MAX_FIELD_BYTES: usize = 255;

/// RFC 1928 §3 methods.
const METHOD_NO_AUTH: u8 = 0x00;
const METHOD_USER_PASSWORD: u8 = 0x02;
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

/// RFC 1929 §2: the version of the username/password sub-negotiation, and its statuses.
const AUTH_VERSION: u8 = 0x01;
const AUTH_SUCCESS: u8 = 0x00;
const AUTH_FAILURE: u8 = 0x01;

/// RFC 1928 §4 commands (SOCKS4 uses the same numbers for the first two).
const CMD_CONNECT: u8 = 0x01;

/// RFC 1928 §4 address types.
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// SOCKS4 reply codes.
const SOCKS4_GRANTED: u8 = 0x5A;
const SOCKS4_REJECTED: u8 = 0x5B;

/// Which protocol the caller speaks; it decides the form of the final reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// SOCKS4 or SOCKS4a.
    Socks4,
    Socks5,
}

impl Version {
    /// A bounded word for logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Socks4 => "SOCKS4",
            Self::Socks5 => "SOCKS5",
        }
    }
}

/// The outcome a reply carries: RFC 1928 §6 codes. SOCKS4 knows only granted (`Succeeded`) and rejected
/// (everything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    /// The server's destination policy refused the target (its `403`).
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    /// The target is unreachable or its name does not resolve.
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    /// A connect timed out (the closest code RFC 1928 has).
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

impl Reply {
    /// The reply for a failure class, as `ForwardError::reason` words it (and the server sends it in its
    /// `fluidity-error` header); an unknown word is a general failure.
    pub(crate) fn for_reason(reason: &str) -> Self {
        match reason {
            "forbidden" => Self::NotAllowed,
            "network_unreachable" => Self::NetworkUnreachable,
            "unreachable" | "dns" => Self::HostUnreachable,
            "refused" => Self::ConnectionRefused,
            "connect_timeout" | "response_timeout" => Self::TtlExpired,
            _ => Self::GeneralFailure,
        }
    }

    /// The reply for a refusal from a server that did not say why: its `403` and `504`, anything else a general
    /// failure.
    pub(crate) fn for_status(status: u16) -> Self {
        match status {
            403 => Self::NotAllowed,
            504 => Self::TtlExpired,
            _ => Self::GeneralFailure,
        }
    }
}

/// Bytes to send the caller: a method choice, an authentication status or a reply (at most 10 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    bytes: [u8; 10],
    len: u8,
}

impl Answer {
    fn new(bytes: &[u8]) -> Self {
        let mut answer = Self {
            bytes: [0; 10],
            len: 0,
        };
        let len = bytes.len().min(answer.bytes.len());
        answer.bytes[..len].copy_from_slice(&bytes[..len]);
        answer.len = len as u8;
        answer
    }

    /// The bytes as they go on the wire.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Answer({:02x?})", self.as_bytes())
    }
}

/// The final reply to a request in `version`'s form. The bound address is always `0.0.0.0:0`: the agent does not
/// know the address the server connected from, and callers that connect (rather than bind) ignore it.
pub(crate) fn reply(version: Version, reply: Reply) -> Answer {
    match version {
        // VER REP RSV ATYP(IPv4) BND.ADDR(4) BND.PORT(2)
        Version::Socks5 => Answer::new(&[VERSION_5, reply as u8, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0]),
        // VN(0) CD DSTPORT(2) DSTIP(4)
        Version::Socks4 => {
            let code = if reply == Reply::Succeeded {
                SOCKS4_GRANTED
            } else {
                SOCKS4_REJECTED
            };
            Answer::new(&[0, code, 0, 0, 0, 0, 0, 0])
        }
    }
}

/// What to do next with the caller's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The message is not complete: read more, then call [`Handshake::step`] again with every unconsumed byte.
    /// Never returned once [`MAX_MESSAGE_BYTES`] are waiting.
    More,
    /// Send `answer`, drop the first `consumed` bytes, and call again with the rest.
    Answer { consumed: usize, answer: Answer },
    /// The caller asks for a stream to `target`: open it, then send [`reply`] with the outcome. The first
    /// `consumed` bytes were the request; any after them are the caller's first data for the target.
    Connect {
        consumed: usize,
        version: Version,
        target: Target,
    },
    /// Send `answer` (when there is one) and close the connection.
    Close { answer: Option<Answer> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Nothing read yet: the version byte decides.
    Greeting,
    /// SOCKS5, username/password chosen: the RFC 1929 request comes next.
    Credentials,
    /// SOCKS5, authenticated (or no authentication needed): the request comes next.
    Request,
    /// A `Connect` or `Close` was returned; nothing more is read.
    Done,
}

/// One caller's handshake. With `auth`, SOCKS5 callers must authenticate with that credential (RFC 1929) and
/// SOCKS4 callers, which cannot, are refused; without it, SOCKS5 offers "no authentication".
pub(crate) struct Handshake<'a> {
    auth: Option<&'a ProxyAuth>,
    stage: Stage,
}

impl<'a> Handshake<'a> {
    pub(crate) fn new(auth: Option<&'a ProxyAuth>) -> Self {
        Self {
            auth,
            stage: Stage::Greeting,
        }
    }

    /// Reads the next message from `input` (every byte received and not yet consumed). Pure: the same input in
    /// the same stage gives the same step, and a [`Step::More`] leaves the stage as it was.
    ///
    /// # Panics
    /// Never.
    pub(crate) fn step(&mut self, input: &[u8]) -> Step {
        let step = match self.stage {
            Stage::Greeting => self.greeting(input),
            Stage::Credentials => self.credentials(input),
            Stage::Request => request(input),
            Stage::Done => Step::Close { answer: None },
        };
        if matches!(step, Step::Connect { .. } | Step::Close { .. }) {
            self.stage = Stage::Done;
        }
        step
    }

    fn greeting(&mut self, input: &[u8]) -> Step {
        match input.first() {
            None => Step::More,
            Some(&VERSION_5) => self.methods(input),
            Some(&VERSION_4) => self.socks4(input),
            Some(_) => Step::Close { answer: None },
        }
    }

    /// RFC 1928 §3: VER NMETHODS METHODS…; the answer names the chosen method.
    fn methods(&mut self, input: &[u8]) -> Step {
        let Some(&count) = input.get(1) else {
            return Step::More;
        };
        let consumed = 2 + usize::from(count);
        let Some(methods) = input.get(2..consumed) else {
            return Step::More;
        };
        let wanted = if self.auth.is_some() {
            METHOD_USER_PASSWORD
        } else {
            METHOD_NO_AUTH
        };
        if !methods.contains(&wanted) {
            return Step::Close {
                answer: Some(Answer::new(&[VERSION_5, METHOD_NONE_ACCEPTABLE])),
            };
        }
        self.stage = if self.auth.is_some() {
            Stage::Credentials
        } else {
            Stage::Request
        };
        Step::Answer {
            consumed,
            answer: Answer::new(&[VERSION_5, wanted]),
        }
    }

    /// RFC 1929 §2: VER ULEN UNAME PLEN PASSWD; a wrong credential or version gets the failure status and a close.
    fn credentials(&mut self, input: &[u8]) -> Step {
        let failure = Step::Close {
            answer: Some(Answer::new(&[AUTH_VERSION, AUTH_FAILURE])),
        };
        let Some(&version) = input.first() else {
            return Step::More;
        };
        if version != AUTH_VERSION {
            return failure;
        }
        let Some((user, rest)) = length_prefixed(&input[1..]) else {
            return Step::More;
        };
        let Some((password, _)) = length_prefixed(rest) else {
            return Step::More;
        };
        let consumed = 1 + 1 + user.len() + 1 + password.len();
        let Some(auth) = self.auth else {
            return failure;
        };
        if !auth.matches(user, password) {
            return failure;
        }
        self.stage = Stage::Request;
        Step::Answer {
            consumed,
            answer: Answer::new(&[AUTH_VERSION, AUTH_SUCCESS]),
        }
    }

    /// SOCKS4: VN CD DSTPORT(2) DSTIP(4) USERID NUL, and for SOCKS4a (DSTIP 0.0.0.x, x ≠ 0) HOSTNAME NUL. The user
    /// id is not a credential: with `proxy_auth`, every SOCKS4 request is rejected.
    fn socks4(&self, input: &[u8]) -> Step {
        let rejected = Step::Close {
            answer: Some(reply(Version::Socks4, Reply::GeneralFailure)),
        };
        let Some(fixed) = input.get(..8) else {
            return Step::More;
        };
        let Some(user_end) = nul_terminated(&input[8..]) else {
            return if input.len() - 8 > MAX_FIELD_BYTES {
                rejected
            } else {
                Step::More
            };
        };
        let mut consumed = 8 + user_end + 1;
        let port = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ip = Ipv4Addr::new(fixed[4], fixed[5], fixed[6], fixed[7]);
        let host = if ip.octets()[..3] == [0, 0, 0] && ip.octets()[3] != 0 {
            let rest = &input[consumed..];
            let Some(host_end) = nul_terminated(rest) else {
                return if rest.len() > MAX_FIELD_BYTES {
                    rejected
                } else {
                    Step::More
                };
            };
            consumed += host_end + 1;
            match domain_target(&rest[..host_end], port) {
                Some(target) => target,
                None => return rejected,
            }
        } else {
            match ip_target(IpAddr::V4(ip), port) {
                Some(target) => target,
                None => return rejected,
            }
        };
        if fixed[1] != CMD_CONNECT || self.auth.is_some() {
            return rejected;
        }
        Step::Connect {
            consumed,
            version: Version::Socks4,
            target: host,
        }
    }
}

/// RFC 1928 §4: VER CMD RSV ATYP DST.ADDR DST.PORT. Only CONNECT is served; the request is read whole before a
/// refusal when its length is known, so the caller's bytes are all consumed when the connection closes.
fn request(input: &[u8]) -> Step {
    let failure = |code| Step::Close {
        answer: Some(reply(Version::Socks5, code)),
    };
    let Some(head) = input.get(..4) else {
        return Step::More;
    };
    if head[0] != VERSION_5 {
        return failure(Reply::GeneralFailure);
    }
    let (address_len, address_start) = match head[3] {
        ATYP_IPV4 => (4, 4),
        ATYP_IPV6 => (16, 4),
        ATYP_DOMAIN => match input.get(4) {
            Some(&len) => (usize::from(len), 5),
            None => return Step::More,
        },
        _ => return failure(Reply::AddressTypeNotSupported),
    };
    let consumed = address_start + address_len + 2;
    let Some(message) = input.get(..consumed) else {
        return Step::More;
    };
    if head[1] != CMD_CONNECT {
        return failure(Reply::CommandNotSupported);
    }
    let address = &message[address_start..address_start + address_len];
    let port = u16::from_be_bytes([message[consumed - 2], message[consumed - 1]]);
    let target = match head[3] {
        ATYP_IPV4 => <[u8; 4]>::try_from(address)
            .ok()
            .and_then(|octets| ip_target(IpAddr::V4(Ipv4Addr::from(octets)), port)),
        ATYP_IPV6 => <[u8; 16]>::try_from(address)
            .ok()
            .and_then(|octets| ip_target(IpAddr::V6(Ipv6Addr::from(octets)), port)),
        _ => domain_target(address, port),
    };
    match target {
        Some(target) => Step::Connect {
            consumed,
            version: Version::Socks5,
            target,
        },
        None => failure(Reply::GeneralFailure),
    }
}

/// A target from an address literal; `None` for port 0.
fn ip_target(ip: IpAddr, port: u16) -> Option<Target> {
    (port != 0).then(|| Target {
        host: ip.to_string(),
        port,
    })
}

/// A target from a host name as the caller sent it: checked as a CONNECT authority is (the server parses what the
/// agent sends it the same way), with an IP literal taken as the address; `None` when it is no valid host.
fn domain_target(name: &[u8], port: u16) -> Option<Target> {
    let name = std::str::from_utf8(name).ok()?;
    if let Ok(ip) = name.parse::<IpAddr>() {
        return ip_target(ip, port);
    }
    // Without these, `name` could smuggle a port, a user or a bracketed literal into the authority.
    if name.contains([':', '@', '[', ']']) {
        return None;
    }
    let authority = format!("{name}:{port}")
        .parse::<http::uri::Authority>()
        .ok()?;
    target_of(&authority, None).ok()
}

/// A field preceded by its length byte, and what follows it; `None` until it is all there.
fn length_prefixed(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = input.split_first()?;
    let len = usize::from(len);
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Where a NUL-terminated field ends (the NUL's index), looking no further than [`MAX_FIELD_BYTES`].
fn nul_terminated(input: &[u8]) -> Option<usize> {
    input.iter().take(MAX_FIELD_BYTES + 1).position(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.to_owned(),
            port,
        }
    }

    fn connect5(consumed: usize, host: &str, port: u16) -> Step {
        Step::Connect {
            consumed,
            version: Version::Socks5,
            target: target(host, port),
        }
    }

    fn close(bytes: &[u8]) -> Step {
        Step::Close {
            answer: Some(Answer::new(bytes)),
        }
    }

    fn answer(consumed: usize, bytes: &[u8]) -> Step {
        Step::Answer {
            consumed,
            answer: Answer::new(bytes),
        }
    }

    /// Runs a handshake over whole messages: each input is one step.
    fn run(auth: Option<&ProxyAuth>, messages: &[&[u8]]) -> Vec<Step> {
        let mut handshake = Handshake::new(auth);
        messages.iter().map(|m| handshake.step(m)).collect()
    }

    #[test]
    fn socks5_connect_with_each_address_type() {
        let cases: &[(&[u8], Step)] = &[
            (
                &[5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90],
                connect5(10, "127.0.0.1", 8080),
            ),
            (
                &[
                    5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80,
                ],
                connect5(22, "::1", 80),
            ),
            (
                b"\x05\x01\x00\x03\x0bExample.COM\x01\xbb",
                connect5(18, "example.com", 443),
            ),
            // A literal sent as a name is the address.
            (b"\x05\x01\x00\x03\x03::1\x00\x16", connect5(10, "::1", 22)),
            // Not an address, so a name.
            (
                b"\x05\x01\x00\x03\x0910.0.0.1x\x00\x16",
                connect5(16, "10.0.0.1x", 22),
            ),
        ];
        for (request, expected) in cases {
            let steps = run(None, &[&[5, 1, 0], request]);
            assert_eq!(steps[0], answer(3, &[5, 0]));
            assert_eq!(&steps[1], expected, "{request:02x?}");
        }
    }

    #[test]
    fn socks5_refusals_carry_their_codes() {
        let cases: &[(&[u8], &[u8])] = &[
            // BIND and UDP ASSOCIATE: command not supported, after the whole request.
            (
                &[5, 2, 0, 1, 1, 2, 3, 4, 0, 80],
                &[5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
            ),
            (
                &[5, 3, 0, 1, 1, 2, 3, 4, 0, 80],
                &[5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
            ),
            // An address type RFC 1928 does not define.
            (&[5, 1, 0, 9], &[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]),
            // Wrong version in the request.
            (&[4, 1, 0, 1], &[5, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
            // Port 0, an empty name, a name with a port or a user in it.
            (
                &[5, 1, 0, 1, 1, 2, 3, 4, 0, 0],
                &[5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
            ),
            (&[5, 1, 0, 3, 0, 0, 80], &[5, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
            (
                b"\x05\x01\x00\x03\x04a:22\x00\x50",
                &[5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
            ),
            (
                b"\x05\x01\x00\x03\x03a@b\x00\x50",
                &[5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
            ),
            (
                b"\x05\x01\x00\x03\x03a b\x00\x50",
                &[5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
            ),
        ];
        for (request, expected) in cases {
            let steps = run(None, &[&[5, 1, 0], request]);
            assert_eq!(steps[1], close(expected), "{request:02x?}");
        }
    }

    #[test]
    fn methods_follow_proxy_auth() {
        let auth = ProxyAuth::new("alice", "s3cret");
        assert_eq!(run(None, &[&[5, 2, 2, 0]])[0], answer(4, &[5, 0]));
        assert_eq!(run(None, &[&[5, 1, 2]])[0], close(&[5, 0xff]));
        assert_eq!(run(None, &[&[5, 0]])[0], close(&[5, 0xff]));
        assert_eq!(run(Some(&auth), &[&[5, 2, 0, 2]])[0], answer(4, &[5, 2]));
        assert_eq!(run(Some(&auth), &[&[5, 1, 0]])[0], close(&[5, 0xff]));
    }

    #[test]
    fn credentials_are_checked() {
        let auth = ProxyAuth::new("alice", "s3cret");
        let good = b"\x01\x05alice\x06s3cret";
        let steps = run(
            Some(&auth),
            &[&[5, 1, 2], good, &[5, 1, 0, 1, 1, 2, 3, 4, 0, 80]],
        );
        assert_eq!(
            steps,
            [
                answer(3, &[5, 2]),
                answer(good.len(), &[1, 0]),
                connect5(10, "1.2.3.4", 80)
            ]
        );
        for wrong in [
            &b"\x01\x05alice\x06s3creT"[..],
            b"\x01\x05alice\x05s3cre",
            b"\x01\x04alic\x06s3cret",
            b"\x01\x00\x00",
            b"\x02\x05alice\x06s3cret",
        ] {
            let steps = run(Some(&auth), &[&[5, 1, 2], wrong]);
            assert_eq!(steps[1], close(&[1, 1]), "{wrong:?}");
        }
    }

    #[test]
    fn socks4_and_4a() {
        let auth = ProxyAuth::new("alice", "s3cret");
        let four = b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00";
        let four_a = b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00Example.com\x00";
        assert_eq!(
            run(None, &[four]),
            [Step::Connect {
                consumed: four.len(),
                version: Version::Socks4,
                target: target("127.0.0.1", 80)
            }]
        );
        assert_eq!(
            run(None, &[four_a]),
            [Step::Connect {
                consumed: four_a.len(),
                version: Version::Socks4,
                target: target("example.com", 443)
            }]
        );
        let rejected = close(&[0, 0x5b, 0, 0, 0, 0, 0, 0]);
        assert_eq!(run(Some(&auth), &[four]), std::slice::from_ref(&rejected));
        // BIND, port 0, a bad host name.
        for request in [
            &b"\x04\x02\x00\x50\x7f\x00\x00\x01\x00"[..],
            b"\x04\x01\x00\x00\x7f\x00\x00\x01\x00",
            b"\x04\x01\x00\x50\x00\x00\x00\x01\x00a:b\x00",
        ] {
            assert_eq!(
                run(None, &[request]),
                std::slice::from_ref(&rejected),
                "{request:?}"
            );
        }
    }

    #[test]
    fn partial_messages_ask_for_more_and_long_ones_are_refused() {
        let mut handshake = Handshake::new(None);
        for partial in [&[][..], &[5], &[5, 2, 0]] {
            assert_eq!(handshake.step(partial), Step::More, "{partial:?}");
        }
        assert_eq!(handshake.step(&[5, 1, 0]), answer(3, &[5, 0]));
        for partial in [
            &[5, 1, 0][..],
            &[5, 1, 0, 3],
            &[5, 1, 0, 3, 2, b'a', b'b', 0],
        ] {
            assert_eq!(handshake.step(partial), Step::More, "{partial:?}");
        }
        // A SOCKS4 user id or host name that never ends is refused once it is longer than allowed.
        let mut long = b"\x04\x01\x00\x50\x7f\x00\x00\x01".to_vec();
        long.extend(std::iter::repeat_n(b'u', 255));
        assert_eq!(Handshake::new(None).step(&long), Step::More);
        long.push(b'u');
        assert_eq!(
            Handshake::new(None).step(&long),
            close(&[0, 0x5b, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(
            Handshake::new(None).step(b"GET / HTTP/1.1"),
            Step::Close { answer: None }
        );
    }

    #[test]
    fn replies_for_server_refusals() {
        for (reason, code) in [
            ("forbidden", 2),
            ("network_unreachable", 3),
            ("unreachable", 4),
            ("dns", 4),
            ("refused", 5),
            ("connect_timeout", 6),
            ("response_timeout", 6),
            ("tunnel_down", 1),
            ("something new", 1),
        ] {
            assert_eq!(Reply::for_reason(reason) as u8, code, "{reason}");
        }
        for (status, code) in [(403, 2), (504, 6), (502, 1), (429, 1)] {
            assert_eq!(Reply::for_status(status) as u8, code, "{status}");
        }
        assert_eq!(
            reply(Version::Socks4, Reply::Succeeded).as_bytes(),
            [0, 0x5a, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            reply(Version::Socks5, Reply::ConnectionRefused).as_bytes(),
            [5, 5, 0, 1, 0, 0, 0, 0, 0, 0]
        );
    }
}
