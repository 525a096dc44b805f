//! Dialing targets: resolve, apply the destination policy to each resolved address, then connect with Happy
//! Eyeballs (RFC 8305) under one overall connect timeout.
//!
//! Used for CONNECT streams and for the connections of plain requests (`origin`), so both paths obey the same
//! policy. It does not retry a target that failed.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::policy::TargetPolicy;
use crate::error::{BoxError, ConnectTimedOut, DnsError, PolicyRefusal};
use crate::tunnel::authority::Target;

/// How long one connection attempt runs alone before the next address is tried alongside it (RFC 8305 §5).
const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

/// Opens TCP connections to targets.
#[derive(Debug)]
pub(crate) struct Dialer {
    policy: TargetPolicy,
    connect_timeout: Duration,
}

impl Dialer {
    pub(crate) fn new(policy: TargetPolicy, connect_timeout: Duration) -> Self {
        Self {
            policy,
            connect_timeout,
        }
    }

    /// Connects to `target`. Errors carry [`DnsError`], [`PolicyRefusal`], [`ConnectTimedOut`] or the connect's
    /// `io::Error` in their source chain, for `error::classify_target_error`.
    pub(crate) async fn dial(&self, target: &Target) -> Result<TcpStream, BoxError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let work = async {
            let addrs = self.resolve(target).await?;
            let stream = connect_happy_eyeballs(addrs).await?;
            // Small writes (TLS records, WebSocket frames) must not wait for Nagle.
            stream.set_nodelay(true)?;
            Ok::<_, BoxError>(stream)
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(Box::new(ConnectTimedOut(self.connect_timeout))),
        }
    }

    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, BoxError> {
        let resolved: Vec<SocketAddr> = match target.ip() {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(DnsError)?
                .collect(),
        };
        if resolved.is_empty() {
            return Err(Box::new(DnsError(io::Error::new(
                io::ErrorKind::NotFound,
                "no addresses",
            ))));
        }
        let mut refusal = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(
                |addr| match self.policy.check(&target.host, target.port, addr.ip()) {
                    Ok(()) => true,
                    Err(reason) => {
                        refusal.get_or_insert(reason);
                        false
                    }
                },
            )
            .collect();
        match (allowed.is_empty(), refusal) {
            (true, Some(reason)) => Err(Box::new(PolicyRefusal(reason))),
            _ => Ok(allowed),
        }
    }
}

/// Orders addresses alternating between families, starting with the family the resolver listed first (RFC 8305 §4).
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut preferred, mut other): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    preferred.reverse();
    other.reverse();
    let mut ordered = Vec::with_capacity(preferred.len() + other.len());
    loop {
        match (preferred.pop(), other.pop()) {
            (None, None) => return ordered,
            (a, b) => ordered.extend(a.into_iter().chain(b)),
        }
    }
}

/// Races connection attempts, starting a new one every [`HAPPY_EYEBALLS_DELAY`] or as soon as one fails; the first
/// to succeed wins and the rest are dropped.
async fn connect_happy_eyeballs(addrs: Vec<SocketAddr>) -> io::Result<TcpStream> {
    if let [only] = addrs[..] {
        // One address (an IP literal, or a name with one record): nothing to race.
        return TcpStream::connect(only).await;
    }
    let mut pending = interleave(addrs).into_iter().peekable();
    let mut attempts = JoinSet::new();
    let mut last_error = None;
    loop {
        if attempts.is_empty() {
            match pending.next() {
                Some(addr) => {
                    attempts.spawn(TcpStream::connect(addr));
                }
                None => {
                    return Err(last_error.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "no address to connect to")
                    }));
                }
            }
        }
        let more = pending.peek().is_some();
        tokio::select! {
            Some(joined) = attempts.join_next() => match joined {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(err)) => last_error = Some(err),
                Err(join_err) => last_error = Some(io::Error::other(join_err)),
            },
            () = tokio::time::sleep(HAPPY_EYEBALLS_DELAY), if more => {
                if let Some(addr) = pending.next() {
                    attempts.spawn(TcpStream::connect(addr));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn interleaves_families_starting_with_the_first() {
        let input = vec![
            addr("[::1]:1"),
            addr("[::2]:1"),
            addr("[::3]:1"),
            addr("1.0.0.1:1"),
        ];
        assert_eq!(
            interleave(input),
            vec![
                addr("[::1]:1"),
                addr("1.0.0.1:1"),
                addr("[::2]:1"),
                addr("[::3]:1")
            ]
        );
    }

    #[tokio::test]
    async fn falls_through_a_refused_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // Bound but not listening: a connect is refused, and the number stays ours for the whole test.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = held.local_addr().unwrap();
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            connect_happy_eyeballs(vec![closed, good]),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
    }

    #[tokio::test]
    async fn policy_refuses_loopback_by_default() {
        let dialer = Dialer::new(TargetPolicy::default(), Duration::from_secs(5));
        let target = crate::tunnel::authority::parse_target("127.0.0.1:9", None).unwrap();
        let err = dialer.dial(&target).await.unwrap_err();
        assert!(err.downcast_ref::<PolicyRefusal>().is_some(), "{err}");
    }
}
