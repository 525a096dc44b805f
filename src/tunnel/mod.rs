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
//! absolute-form authority). The WebSocket path keeps `Connection`/`Upgrade`: they travel inside the CONNECT stream as
//! HTTP/1.1, where they are legal, so hop-by-hop removal never breaks the upgrade.
//!
//! The agent proves the tunnel works with a request to [`PROBE_AUTHORITY`], which the server answers itself with
//! `204` (TLS 1.3 refuses a client certificate only after the handshake, so a finished handshake proves nothing).
//!
//! This module does no I/O of its own beyond [`splice`]; dialing targets is the server's, listening the agent's.

pub(crate) mod authority;
pub(crate) mod body;
pub(crate) mod cork;
pub(crate) mod headers;
pub(crate) mod splice;
pub(crate) mod stream;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// The body type of every request and response Fluidity builds or relays.
pub(crate) type Body = BoxBody<Bytes, crate::error::BoxError>;

/// `:authority` of the liveness probe. `.invalid` is reserved (RFC 2606) and port 0 is never a target.
pub(crate) const PROBE_AUTHORITY: &str = "fluidity.invalid:0";

/// Request header the agent sets on a CONNECT stream that carries a WebSocket upgrade (for metrics only).
pub(crate) const STREAM_KIND_HEADER: &str = "fluidity-stream";

/// Bytes per direction a spliced stream copies at once: large enough that bulk transfers are not bound by syscalls.
/// A stream starts smaller and grows to this only once a read fills its buffer (`splice::next_capacity`), and gives
/// the buffer back after a second of quiet.
pub(crate) const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// HTTP/2 flow-control windows, both roles: how much one side lets the other have in flight unacknowledged, per
/// stream and per tunnel, and so the most a slow reader makes the receiving side hold. h2 acknowledges received
/// data in batches of half a window, so one stream moves about `window / 2` per round trip: 32 MiB carries
/// ~300 MB/s at 50 ms round trip, level with the best peer in bench/ (8 MiB, tried first, capped it at ~110 MB/s;
/// 64 MiB measured no faster there, the CPU being the limit).
///
/// They are fixed, not hyper's adaptive windows: those start at 64 KiB on a fast link, and h2 sizes its guard
/// against floods of small DATA frames from the tunnel window (half of it), so a burst of small writes on a few
/// hundred streams (interactive sessions) would make the peer close the whole tunnel.
pub(crate) const STREAM_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// The tunnel-wide window: the most one side buffers for the other across all streams.
pub(crate) const CONNECTION_WINDOW_BYTES: u32 = 64 * 1024 * 1024;

/// Largest HTTP/2 frame either role accepts (SETTINGS_MAX_FRAME_SIZE; the default is 16 KiB). One DATA frame then
/// carries a whole copy buffer: h2 writes a frame at a time, so each frame is a socket write and a wake-up of the
/// reader. Against 64 KiB frames, 256 KiB ones cut the server's CPU per GiB of a CONNECT download by 15-20 %
/// (three alternating pairs). A frame is only this large when that much was read at once, that is when the
/// sender has more data than the path takes; a trickle still goes out as it comes.
pub(crate) const MAX_FRAME_BYTES: u32 = 256 * 1024;

/// Bytes the tunnel's TCP socket is read in at once, beneath TLS: rustls reads at most one record (16 KiB) per call,
/// so a bulk transfer would cost a `recv` per record; through this buffer it costs one per 64 KiB (measured: about
/// 7 % less CPU per GiB for agent + server). Allocated once per tunnel connection.
pub(crate) const TLS_READ_BUFFER_BYTES: usize = 64 * 1024;

/// Encrypted bytes TLS may hold for the socket (rustls's default is 64 KiB). rustls takes plaintext only while its
/// output fits under this limit, so with the default a 64 KiB DATA frame plus its 9-byte header went out as two
/// socket writes: four full records, then a record of 9 bytes in a TCP segment of its own. Two frames fit.
const TLS_WRITE_BUFFER_BYTES: usize = 2 * MAX_FRAME_BYTES as usize;

/// The read half of the tunnel's TCP socket with the read buffer TLS runs over.
pub(crate) fn buffered<S: tokio::io::AsyncRead>(read: S) -> tokio::io::BufReader<S> {
    tokio::io::BufReader::with_capacity(TLS_READ_BUFFER_BYTES, read)
}

/// Lets a tunnel's TLS connection hold [`TLS_WRITE_BUFFER_BYTES`] of records for its socket.
pub(crate) fn buffer_tls_writes<D>(tls: &mut rustls::ConnectionCommon<D>) {
    tls.set_buffer_limit(Some(TLS_WRITE_BUFFER_BYTES));
}

/// Streams either side remembers after resetting them (a caller that went away, say), so frames the peer sent
/// before it saw the reset are dropped quietly. h2 remembers 10 by default: with more cancellations in flight, the
/// late frames of the forgotten ones count as protocol errors, and after 1,024 of those h2 closes the tunnel
/// (measured: 32 callers cancelling downloads brought the tunnel down within seconds).
pub(crate) const RESET_STREAMS_REMEMBERED: usize = 4096;

/// Largest request or response head either role accepts; beyond it the agent answers 431.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The target of an absolute-form `http://` request, recorded in the current (debug) span; `https://` and URLs
/// without a host are refused (HTTPS goes through CONNECT).
pub(crate) fn plain_http_target(
    uri: &http::Uri,
) -> Result<authority::Target, crate::error::ForwardError> {
    use crate::error::ForwardError;
    if uri.scheme_str() != Some("http") {
        return Err(ForwardError::BadRequest(
            "only http:// URLs can be proxied as plain requests; use CONNECT for https",
        ));
    }
    let authority = uri
        .authority()
        .ok_or(ForwardError::BadRequest("URL has no host"))?;
    let target = authority::target_of(authority, Some(80))
        .map_err(|e| ForwardError::BadRequest(e.reason()))?;
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
