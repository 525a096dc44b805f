//! What the agent and the server agree on: how a caller's request becomes a stream on the tunnel.
//!
//! The tunnel is one TLS 1.3 connection speaking HTTP/2 (RFC 9113). Each caller request becomes one stream:
//!
//! | caller sends the agent (HTTP/1.1)             | stream on the tunnel (HTTP/2)                                  |
//! |-----------------------------------------------|----------------------------------------------------------------|
//! | absolute-form `GET http://host:port/path`     | a request with `:scheme http`, `:authority host:port`, `:path` |
//! | `CONNECT host:port`                           | a `CONNECT` stream to `host:port` (RFC 9113 §8.5)              |
//! | `GET http://host/path` + `Upgrade: websocket` | a `CONNECT` stream to `host:port` that then carries the HTTP/1.1 upgrade request in origin form, the `101`, and the frames (RFC 6455) |
//!
//! Header rules (RFC 9110 §7.6.1): hop-by-hop headers (`Connection` and every header it names, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) and every `Proxy-*` header are removed in both
//! directions on plain requests, and `Host` is dropped in favour of `:authority` (RFC 9112 §3.2.2: a proxy uses the
//! absolute-form authority). The WebSocket path applies the same rules to the upgrade request and its `101`, sets
//! `Host` from the URL's authority, and then puts back what the upgrade needs (`Connection: upgrade`, the `Upgrade`
//! values, `Sec-WebSocket-*`): they travel inside the CONNECT stream as HTTP/1.1, where they are legal, so hop-by-hop
//! removal never breaks the upgrade. An upgrade request announcing a body is refused with `400`.
//!
//! The agent proves the tunnel works with a request to [`PROBE_AUTHORITY`], which the server answers itself with
//! `204` (TLS 1.3 refuses a client certificate only after the handshake, so a finished handshake proves nothing).
//!
//! This module is the bottom layer: it knows nothing of metrics, of the roles or of how failures become statuses
//! (its functions return their own errors). Its I/O is the tunnel's transport ([`transport`]) and the byte
//! splice ([`splice`]); dialing targets is the server's, listening the agent's.

pub(crate) mod authority;
pub(crate) mod gather;
pub(crate) mod headers;
pub(crate) mod splice;
pub(crate) mod stream;
pub(crate) mod transport;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// A boxed error from a dependency, kept for `source()`.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response Fluidity builds or relays.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// `:authority` of the liveness probe. `.invalid` is reserved (RFC 2606) and port 0 is never a target.
pub(crate) const PROBE_AUTHORITY: &str = "fluidity.invalid:0";

/// Request header the agent sets on a CONNECT stream that carries a WebSocket upgrade (`websocket`) or a SOCKS
/// caller's bytes (`socks`), for metrics only.
pub(crate) const STREAM_KIND_HEADER: &str = "fluidity-stream";

/// Response header on every error response Fluidity builds (`error::error_response`): the failure's class
/// (`ForwardError::reason`), so that the agent can tell a SOCKS caller why a stream failed where the status alone
/// (502 for refused, unreachable and DNS alike) does not say.
pub(crate) const ERROR_REASON_HEADER: &str = "fluidity-error";

/// Bytes per direction a spliced stream copies at once: large enough that bulk transfers are not bound by syscalls.
/// A stream starts smaller and grows to this only once a read fills its buffer (`splice::next_capacity`), and gives
/// the buffer back after a second of quiet.
pub(crate) const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// Largest request or response head either role accepts; beyond it the agent answers 431.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The target of an absolute-form `http://` request, recorded in the current (debug) span; `https://` and URLs
/// without a host are refused (HTTPS goes through CONNECT).
///
/// # Errors
/// Why the URL cannot be proxied, as a short reason for a 400.
pub(crate) fn plain_http_target(uri: &http::Uri) -> Result<authority::Target, &'static str> {
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs can be proxied as plain requests; use CONNECT for https");
    }
    let authority = uri.authority().ok_or("URL has no host")?;
    let target = authority::target_of(authority, Some(80)).map_err(|e| e.reason())?;
    tracing::Span::current().record("target", tracing::field::display(&target));
    Ok(target)
}

/// An empty body.
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A plain-text response with a short reason, as used for every error Fluidity produces itself.
pub(crate) fn text_response(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut text = text.into();
    text.push('\n');
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
