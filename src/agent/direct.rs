//! `direct_targets`: the destinations the agent connects to itself instead of through the tunnel.
//!
//! Rules are matched against the name or literal address the caller gave; nothing is resolved to decide (a name
//! that resolves to a private address still goes through the tunnel unless a name rule covers it). A direct
//! target is dialed with the agent's `connect_timeout`, trying each resolved address in order.

use std::io;
use std::time::Duration;
use tokio::net::TcpStream;

use crate::error::ForwardError;
use crate::rules::Rule;
use crate::tunnel::authority::Target;

/// The parsed `direct_targets`.
#[derive(Debug, Default)]
pub(crate) struct Direct {
    rules: Vec<Rule>,
}

impl Direct {
    /// Parses the configured rules (already checked when the configuration loaded; one that does not parse
    /// matches nothing).
    pub(crate) fn new(rules: &[String]) -> Self {
        Self {
            rules: rules.iter().filter_map(|r| Rule::parse(r).ok()).collect(),
        }
    }

    /// The rules, in configuration order.
    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// True when `target` is to be reached directly.
    pub(crate) fn covers(&self, target: &Target) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.matches_given(&target.host, target.port))
    }
}

/// Connects to `target` from the agent itself, each resolved address in turn, all within `timeout`.
///
/// # Errors
/// [`ForwardError::Dns`] when the name does not resolve, [`ForwardError::Refused`] when every address refused,
/// [`ForwardError::Unreachable`] for other failures, [`ForwardError::ConnectTimeout`] when time ran out.
pub(crate) async fn dial(target: &Target, timeout: Duration) -> Result<TcpStream, ForwardError> {
    let attempt = async {
        let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(ForwardError::Dns)?;
        let mut last: Option<io::Error> = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Small writes (a TLS handshake, a request head) should leave at once.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(match last {
            Some(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                ForwardError::Refused(err)
            }
            Some(err) => ForwardError::Unreachable(err.into()),
            None => ForwardError::Dns(io::Error::new(
                io::ErrorKind::NotFound,
                "name resolved to no address",
            )),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ForwardError::ConnectTimeout(timeout))?
}
