//! The one place where a failure to relay becomes an HTTP status.
//!
//! Both roles describe what went wrong with [`ForwardError`]; [`status_for`] picks the status and [`error_response`]
//! builds the short plain-text answer, with the failure's class in a `fluidity-error` header (statuses are for
//! HTTP callers; the class is for the agent, which tells SOCKS callers refused from unreachable). Classification
//! walks `source()` and `io::ErrorKind`, never message text.

use http::{Response, StatusCode, header};
use std::error::Error as StdError;
use std::io;
use std::time::Duration;

pub(crate) use crate::tunnel::BoxError;
use crate::tunnel::{Body, ERROR_REASON_HEADER, text_response};

/// Why a request or stream could not be relayed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// The caller's request is malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The target is refused by the server's destination policy; the string names the rule.
    #[error("target refused: {0}")]
    Forbidden(String),
    /// The target's name did not resolve.
    #[error("cannot resolve target")]
    Dns(#[source] io::Error),
    /// The target refused the connection.
    #[error("target refused the connection")]
    Refused(#[source] io::Error),
    /// The target could not be reached (unreachable network, reset, other I/O failure).
    #[error("cannot reach target")]
    Unreachable(#[source] BoxError),
    /// Connecting to the target (or to the server, on the agent) took longer than the connect timeout.
    #[error("connect timed out after {}s", .0.as_secs())]
    ConnectTimeout(Duration),
    /// The target accepted but sent no response within the idle timeout.
    #[error("target sent no response within {}s", .0.as_secs())]
    ResponseTimeout(Duration),
    /// Too many new streams from this agent.
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    /// The agent has no tunnel to the server.
    #[error("tunnel to the server is down")]
    TunnelDown,
    /// The tunnel failed while the stream was being set up.
    #[error("tunnel error")]
    Tunnel(#[source] BoxError),
    /// The target broke the protocol or the exchange.
    #[error("bad response from target")]
    Upstream(#[source] BoxError),
}

impl ForwardError {
    /// A bounded word for metrics and logs.
    pub(crate) fn class(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Forbidden(_) => "forbidden",
            Self::Dns(_) => "dns",
            Self::Refused(_) => "refused",
            Self::Unreachable(_) => "unreachable",
            Self::ConnectTimeout(_) => "connect_timeout",
            Self::ResponseTimeout(_) => "response_timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::TunnelDown => "tunnel_down",
            Self::Tunnel(_) => "tunnel",
            Self::Upstream(_) => "upstream",
        }
    }

    /// [`class`](Self::class), except that an unreachable network (`ENETUNREACH`) is `network_unreachable`: the
    /// word an error response carries in its `fluidity-error` header.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable(err)
                if io_kind(&**err) == Some(io::ErrorKind::NetworkUnreachable) =>
            {
                "network_unreachable"
            }
            _ => self.class(),
        }
    }
}

/// What a `fluidity-error` class word ([`ForwardError::reason`]) means, in the words of the error bodies; an
/// unknown word comes back as it is.
pub(crate) fn describe_class(class: &str) -> &str {
    match class {
        "refused" => "target refused the connection",
        "unreachable" => "cannot reach target",
        "network_unreachable" => "network unreachable",
        "dns" => "cannot resolve target",
        "connect_timeout" => "connect timed out",
        "response_timeout" => "target sent no response in time",
        "forbidden" => "refused by the server's destination policy",
        "rate_limited" => "rate limit exceeded",
        "tunnel_down" | "tunnel" => "tunnel error",
        "upstream" => "bad response from target",
        "bad_request" => "bad request",
        other => other,
    }
}

/// The kind of the first `io::Error` in `err`'s source chain.
fn io_kind(err: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            return Some(io_err.kind());
        }
        current = e.source();
    }
    None
}

/// The HTTP status for a failure: 502 when the target or tunnel could not be reached, 504 for timeouts.
pub(crate) fn status_for(err: &ForwardError) -> StatusCode {
    match err {
        ForwardError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ForwardError::Forbidden(_) => StatusCode::FORBIDDEN,
        ForwardError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ForwardError::ConnectTimeout(_) | ForwardError::ResponseTimeout(_) => {
            StatusCode::GATEWAY_TIMEOUT
        }
        ForwardError::Dns(_)
        | ForwardError::Refused(_)
        | ForwardError::Unreachable(_)
        | ForwardError::TunnelDown
        | ForwardError::Tunnel(_)
        | ForwardError::Upstream(_) => StatusCode::BAD_GATEWAY,
    }
}

/// The response for a failure: its status, a one-line reason, and the class in `fluidity-error`
/// ([`ForwardError::reason`]); `Retry-After` on 429.
pub(crate) fn error_response(err: &ForwardError) -> Response<Body> {
    let mut response = text_response(status_for(err), format!("fluidity: {err}"));
    response.headers_mut().insert(
        ERROR_REASON_HEADER,
        header::HeaderValue::from_static(err.reason()),
    );
    if let ForwardError::RateLimited { retry_after_secs } = err {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(*retry_after_secs),
        );
    }
    response
}

/// Marks an error as a DNS failure, so that classification can find it in a source chain.
#[derive(Debug, thiserror::Error)]
#[error("name did not resolve")]
pub(crate) struct DnsError(#[source] pub(crate) io::Error);

/// Marks a connect that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out")]
pub(crate) struct ConnectTimedOut(pub(crate) Duration);

/// Marks a destination-policy refusal, naming the rule.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct PolicyRefusal(pub(crate) String);

/// Classifies a failure to reach a target by walking its `source()` chain.
pub(crate) fn classify_target_error(err: &(dyn StdError + 'static)) -> ForwardError {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(refusal) = e.downcast_ref::<PolicyRefusal>() {
            return ForwardError::Forbidden(refusal.0.clone());
        }
        if let Some(dns) = e.downcast_ref::<DnsError>() {
            return ForwardError::Dns(io::Error::new(dns.0.kind(), dns.0.to_string()));
        }
        if let Some(timeout) = e.downcast_ref::<ConnectTimedOut>() {
            return ForwardError::ConnectTimeout(timeout.0);
        }
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            let copy = io::Error::new(io_err.kind(), io_err.to_string());
            return match io_err.kind() {
                io::ErrorKind::ConnectionRefused => ForwardError::Refused(copy),
                io::ErrorKind::TimedOut => ForwardError::ConnectTimeout(Duration::ZERO),
                _ => ForwardError::Unreachable(Box::new(copy)),
            };
        }
        current = e.source();
    }
    ForwardError::Upstream(err.to_string().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping_table() {
        let io = |kind| io::Error::new(kind, "x");
        let cases: Vec<(ForwardError, u16)> = vec![
            (ForwardError::BadRequest("x"), 400),
            (ForwardError::Forbidden("private address".into()), 403),
            (
                ForwardError::RateLimited {
                    retry_after_secs: 1,
                },
                429,
            ),
            (ForwardError::Dns(io(io::ErrorKind::Other)), 502),
            (
                ForwardError::Refused(io(io::ErrorKind::ConnectionRefused)),
                502,
            ),
            (ForwardError::Unreachable("x".into()), 502),
            (ForwardError::TunnelDown, 502),
            (ForwardError::Tunnel("x".into()), 502),
            (ForwardError::Upstream("x".into()), 502),
            (ForwardError::ConnectTimeout(Duration::from_secs(10)), 504),
            (ForwardError::ResponseTimeout(Duration::from_secs(10)), 504),
        ];
        for (err, status) in cases {
            assert_eq!(status_for(&err).as_u16(), status, "{err:?}");
        }
    }

    #[test]
    fn classification_walks_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BoxError);

        let refused = Outer(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert!(matches!(
            classify_target_error(&refused),
            ForwardError::Refused(_)
        ));

        let dns = Outer(Box::new(DnsError(io::Error::other("no such host"))));
        assert!(matches!(classify_target_error(&dns), ForwardError::Dns(_)));

        let policy = Outer(Box::new(PolicyRefusal("deny_targets 10.0.0.0/8".into())));
        match classify_target_error(&policy) {
            ForwardError::Forbidden(rule) => assert_eq!(rule, "deny_targets 10.0.0.0/8"),
            other => panic!("unexpected {other:?}"),
        }

        let timeout = Outer(Box::new(ConnectTimedOut(Duration::from_secs(3))));
        assert_eq!(
            status_for(&classify_target_error(&timeout)),
            StatusCode::GATEWAY_TIMEOUT
        );

        let other = Outer("protocol".into());
        assert!(matches!(
            classify_target_error(&other),
            ForwardError::Upstream(_)
        ));
    }

    #[test]
    fn error_responses_name_the_reason() {
        let io = |kind| io::Error::new(kind, "x");
        let cases: Vec<(ForwardError, &str)> = vec![
            (
                ForwardError::Refused(io(io::ErrorKind::ConnectionRefused)),
                "refused",
            ),
            (
                ForwardError::Unreachable(Box::new(io(io::ErrorKind::HostUnreachable))),
                "unreachable",
            ),
            (
                ForwardError::Unreachable(Box::new(io(io::ErrorKind::NetworkUnreachable))),
                "network_unreachable",
            ),
            (ForwardError::Unreachable("x".into()), "unreachable"),
            (ForwardError::Dns(io(io::ErrorKind::Other)), "dns"),
            (
                ForwardError::ConnectTimeout(Duration::from_secs(1)),
                "connect_timeout",
            ),
            (
                ForwardError::Forbidden("private address".into()),
                "forbidden",
            ),
            (ForwardError::TunnelDown, "tunnel_down"),
        ];
        for (err, reason) in cases {
            let response = error_response(&err);
            assert_eq!(response.headers()[ERROR_REASON_HEADER], reason, "{err:?}");
        }
        // The network case is found through a wrapper too, as the server's dialer reports it.
        let wrapped = classify_target_error(&io(io::ErrorKind::NetworkUnreachable));
        assert_eq!(wrapped.reason(), "network_unreachable");
        assert_eq!(wrapped.class(), "unreachable");
    }

    #[test]
    fn rate_limited_response_has_retry_after() {
        let response = error_response(&ForwardError::RateLimited {
            retry_after_secs: 2,
        });
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
