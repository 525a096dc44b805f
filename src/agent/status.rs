//! The agent's status page: `GET /` is a self-contained HTML page (no outside assets) that polls `GET /status`, a
//! JSON snapshot of the tunnels, traffic, streams, requests, certificate expiry and the last few failures. The page
//! computes rates from successive snapshots; the agent keeps no history of its own beyond the failures.
//!
//! Both answer only callers allowed to use the proxy: with `proxy_auth`, the same credential as `Authorization`
//! (what a browser sends to a page after a `401`) or `Proxy-Authorization`. And only at an IP address or
//! `localhost` (the `Host` the caller used), so a web page whose name was rebound to the loopback address cannot
//! read them.

use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Shared;
use super::proxy::basic_matches;
use crate::error::{ForwardError, describe_class};
use crate::metrics::{RecentError, StreamKind};
use crate::tunnel::{Body, ERROR_REASON_HEADER, text_response};

/// The page: one file, its script and style inline.
const PAGE: &str = include_str!("status.html");

/// What the page may load: nothing from elsewhere, its own inline script and style, and `/status` from the agent.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /status`.
#[derive(Debug, Serialize)]
struct Status {
    version: &'static str,
    uptime_secs: u64,
    /// The proxy address the agent listens on.
    listen: String,
    tunnels: Vec<TunnelStatus>,
    tunnel_connects: u64,
    tunnel_failures: u64,
    /// Payload bytes relayed since start, caller to target.
    bytes_up: u64,
    /// Payload bytes relayed since start, target to caller.
    bytes_down: u64,
    caller_connections: i64,
    streams_open: BTreeMap<&'static str, i64>,
    /// Requests finished since start, and those of them that failed.
    requests: u64,
    errors: u64,
    /// Seconds until the agent's certificate expires (negative once it has).
    cert_expiry_secs: i64,
    recent_errors: Vec<RecentError>,
}

#[derive(Debug, Serialize)]
struct TunnelStatus {
    state: &'static str,
    /// The server address the tunnel is on; `null` while it is down.
    server: Option<String>,
}

/// Keeps a failure the agent itself met on the way to `target` for the page.
pub(super) fn record_error(shared: &Shared, kind: StreamKind, target: String, err: &ForwardError) {
    shared
        .metrics
        .recent
        .push(kind.as_str(), target, err.to_string());
}

/// Keeps an answer that is a failure for the page: the server's refusals (they carry the failure's class in
/// `fluidity-error`) and a target's own 5xx. Other answers are not failures.
pub(super) fn record_answer<B>(
    shared: &Shared,
    kind: StreamKind,
    target: String,
    answer: &Response<B>,
) {
    let status = answer.status();
    let class = answer
        .headers()
        .get(ERROR_REASON_HEADER)
        .and_then(|value| value.to_str().ok());
    let reason = match class {
        Some(class) => format!("{status} from the server: {}", describe_class(class)),
        None if status.is_server_error() => format!("{status} from the target"),
        None => return,
    };
    shared.metrics.recent.push(kind.as_str(), target, reason);
}

/// Answers `GET /` and `GET /status`; `None` for other paths.
pub(super) fn respond<B>(shared: &Shared, req: &Request<B>) -> Option<Response<Body>> {
    let path = req.uri().path();
    if path != "/" && path != "/status" {
        return None;
    }
    if !local_host(req) {
        return Some(text_response(
            StatusCode::FORBIDDEN,
            "fluidity: the status page answers only at an IP address or localhost",
        ));
    }
    if let Some(auth) = &shared.config.proxy_auth
        && !basic_matches(auth, req.headers().get(header::AUTHORIZATION))
        && !basic_matches(auth, req.headers().get(header::PROXY_AUTHORIZATION))
    {
        let mut response = text_response(
            StatusCode::UNAUTHORIZED,
            "fluidity: the status page needs the proxy credential",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fluidity\""),
        );
        return Some(response);
    }
    let (body, content_type) = if path == "/" {
        (PAGE.to_owned(), "text/html; charset=utf-8")
    } else {
        let json = serde_json::to_string(&snapshot(shared)).unwrap_or_else(|_| "{}".to_owned());
        (json, "application/json")
    };
    let mut response = text_response(StatusCode::OK, body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

/// Whether the caller reached the agent by an IP address or `localhost` (no `Host` at all counts as local: only
/// a browser sends one it was tricked into).
fn local_host<B>(req: &Request<B>) -> bool {
    let Some(host) = req.headers().get(header::HOST) else {
        return true;
    };
    let Some(authority) = host
        .to_str()
        .ok()
        .and_then(|host| host.parse::<http::uri::Authority>().ok())
    else {
        return false;
    };
    let name = authority.host();
    let bare = name
        .strip_prefix('[')
        .and_then(|v6| v6.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<IpAddr>().is_ok()
        || bare.eq_ignore_ascii_case("localhost")
        || bare.eq_ignore_ascii_case("localhost.")
}

fn snapshot(shared: &Shared) -> Status {
    let metrics = &shared.metrics;
    let config = &shared.config;
    let tunnels = shared
        .tunnel
        .servers()
        .into_iter()
        .map(|server| TunnelStatus {
            state: if server.is_some() { "up" } else { "down" },
            server: server.map(|server| server.to_string()),
        })
        .collect();
    let (requests, errors) = metrics.request_totals();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: shared.started.elapsed().as_secs(),
        listen: config.listen.to_string(),
        tunnels,
        tunnel_connects: metrics.tunnel_connects.get(),
        tunnel_failures: metrics.tunnel_failures.get(),
        bytes_up: metrics.bytes.up.get(),
        bytes_down: metrics.bytes.down.get(),
        caller_connections: metrics.caller_connections.get(),
        streams_open: StreamKind::ALL
            .iter()
            .map(|kind| (kind.as_str(), metrics.open_streams(*kind)))
            .collect(),
        requests,
        errors,
        cert_expiry_secs: metrics.cert_expiry_seconds.get(),
        recent_errors: metrics.recent.newest_first(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: Option<&str>) -> Request<()> {
        let mut builder = Request::get("/");
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_ip_literals_and_localhost_are_local() {
        for host in [
            None,
            Some("127.0.0.1:8080"),
            Some("[::1]:8080"),
            Some("localhost:8080"),
            Some("LOCALHOST"),
            Some("192.168.1.5"),
        ] {
            assert!(local_host(&with_host(host)), "{host:?}");
        }
        for host in ["evil.example:8080", "127.0.0.1.nip.io", "", "a b"] {
            assert!(!local_host(&with_host(Some(host))), "{host:?}");
        }
    }
}
