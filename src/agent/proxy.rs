//! The agent's HTTP/1.1 proxy service: one caller request in, one tunnel stream out.
//!
//! Origin-form requests are for the agent itself (`/healthz`, `/metrics`, `/proxy.pac`, the status page `/` and
//! `/status`); absolute-form requests, `CONNECT` and WebSocket upgrades are proxied as described in `tunnel`. It
//! never follows redirects and never retries a request.
//!
//! A target covered by `direct_targets` (see `direct`) is reached by the agent itself on every path, with the same
//! statuses as a tunnel failure: CONNECT and WebSocket over a TCP connection of their own, an absolute-form
//! request over an HTTP/1.1 connection opened for that one request (no pool: direct targets are local, and a
//! connection per request keeps the path small).
//!
//! Upgrades (`Connection: upgrade` + `Upgrade`) get the plain path's header rules, keeping only what the upgrade
//! needs, and a `Host` from the URL. An upgrade request that announces a body (`Content-Length` above 0 or
//! `Transfer-Encoding`) is refused with `400`: RFC 6455 clients never send one, and it is never dropped silently.

use base64::Engine as _;
use bytes::Bytes;
use h2::SendStream;
use h2::client::ResponseFuture;
use http::{Method, Request, Response, StatusCode, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span, field};

use super::Shared;
use super::{direct, pac, status};
use crate::admin::{AdminPath, admin_path, health_response, metrics_response};
use crate::config::ProxyAuth;
use crate::error::{ForwardError, error_response};
use crate::metrics::Counted;
use crate::metrics::{OpenGuard, StreamKind};
use crate::tunnel::authority::{Target, target_of};
use crate::tunnel::headers::{strip_hop_headers, strip_hop_headers_keeping_upgrade, wants_upgrade};
use crate::tunnel::splice;
use crate::tunnel::stream::{TunnelBody, TunnelStream, send_body};
use crate::tunnel::{
    Body, MAX_HEADER_BYTES, STREAM_KIND_HEADER, empty, plain_http_target, text_response,
};

/// Serves one caller request.
pub(super) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if head_len(&req) > MAX_HEADER_BYTES {
        return Ok(refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "fluidity: request head larger than 64 KiB",
            header::CONNECTION,
            "close",
        ));
    }
    if req.method() != Method::CONNECT && req.uri().authority().is_none() {
        return Ok(admin(&shared, &req));
    }
    if let Some(auth) = &shared.config.proxy_auth
        && !authorized(auth, req.headers())
    {
        return Ok(refusal(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "fluidity: proxy authentication required",
            header::PROXY_AUTHENTICATE,
            "Basic realm=\"fluidity\"",
        ));
    }
    let kind = if req.method() == Method::CONNECT {
        StreamKind::Connect
    } else if wants_upgrade(req.headers()) {
        StreamKind::Websocket
    } else {
        StreamKind::Http
    };
    // For the status page's list of recent failures; a reference count, not a copy.
    let authority = req.uri().authority().cloned();
    let span = debug_span!("request", method = %req.method(), target = field::Empty);
    let result = async {
        match kind {
            StreamKind::Connect => connect(&shared, req).await,
            StreamKind::Websocket => websocket(&shared, req).await,
            // `Socks` streams come from `socks_session`, never from an HTTP request.
            StreamKind::Http | StreamKind::Socks => forward(&shared, req).await,
        }
    }
    .instrument(span)
    .await;
    Ok(match result {
        Ok(response) => {
            status::record_answer(&shared, kind, target_text(authority.as_ref()), &response);
            let outcome = if response.status().is_server_error() {
                "error"
            } else {
                "ok"
            };
            shared.metrics.request(kind, outcome);
            response
        }
        Err(err) => {
            shared.metrics.request(kind, err.class());
            debug!(error = %err, class = err.class(), "request failed");
            status::record_error(&shared, kind, target_text(authority.as_ref()), &err);
            error_response(&err)
        }
    })
}

fn target_text(authority: Option<&http::uri::Authority>) -> String {
    authority.map_or_else(String::new, ToString::to_string)
}

/// A short text answer with one header of its own.
fn refusal(
    status: StatusCode,
    text: &'static str,
    name: header::HeaderName,
    value: &'static str,
) -> Response<Body> {
    let mut response = text_response(status, text);
    response
        .headers_mut()
        .insert(name, header::HeaderValue::from_static(value));
    response
}

/// The size of a request head as sent: request line, header lines and the blank line.
fn head_len<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri
        .scheme_str()
        .map_or(0, |scheme| scheme.len() + "://".len())
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(0, |path| path.as_str().len());
    let line = req.method().as_str().len() + " ".len() + target + " HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    line + fields + "\r\n".len()
}

fn admin(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        if req.uri().path() == "/proxy.pac" {
            return proxy_pac(shared, req);
        }
        if let Some(response) = status::respond(shared, req) {
            return response;
        }
    }
    match admin_path(req) {
        Some(AdminPath::Health) => {
            let up = shared.tunnel.is_up();
            health_response(up, health_json(up, &shared.tunnel.servers()))
        }
        Some(AdminPath::Metrics) => metrics_response(shared.metrics.render()),
        None => text_response(
            StatusCode::NOT_FOUND,
            "fluidity: this is a proxy; send absolute-form requests (http://host/path) or CONNECT",
        ),
    }
}

/// The `/healthz` body: `status` and `tunnel` say whether any tunnel is up, and `tunnels` lists each tunnel's
/// state and the server it is on (`null` while down).
fn health_json(up: bool, servers: &[Option<SocketAddr>]) -> String {
    let word = if up { "up" } else { "down" };
    let tunnels: Vec<String> = servers
        .iter()
        .map(|server| match server {
            Some(server) => format!(r#"{{"state":"up","server":"{server}"}}"#),
            None => r#"{"state":"down","server":null}"#.to_owned(),
        })
        .collect();
    format!(
        r#"{{"status":"{word}","tunnel":"{word}","tunnels":[{}]}}"#,
        tunnels.join(",")
    )
}

/// `GET /proxy.pac`: the PAC file for `direct_targets`, naming the address the caller reached the agent at (its
/// `Host`, with port 80 when it names none; the listen address when there is no usable `Host`). Served like
/// `/healthz`, without `proxy_auth`: browsers and operating systems fetch PAC files without proxy credentials, and
/// the file holds only the rules and the proxy address. A query string is ignored (some systems add one to defeat
/// caches), as for the other paths the agent answers itself.
fn proxy_pac(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let proxy = req
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| !host.contains('@'))
        .and_then(|host| host.parse::<http::uri::Authority>().ok())
        .map_or_else(
            || shared.config.listen.to_string(),
            |authority| match authority.port_u16() {
                Some(port) => format!("{}:{port}", authority.host()),
                None => format!("{}:80", authority.host()),
            },
        );
    let mut response = text_response(StatusCode::OK, pac::render(shared.direct.rules(), &proxy));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(pac::CONTENT_TYPE),
    );
    response
}

/// Checks Basic `Proxy-Authorization` against the configured credential.
pub(crate) fn authorized(auth: &ProxyAuth, headers: &http::HeaderMap) -> bool {
    basic_matches(auth, headers.get(header::PROXY_AUTHORIZATION))
}

/// Checks one Basic credential header value (`Proxy-Authorization` or `Authorization`) against the configured
/// credential.
pub(super) fn basic_matches(auth: &ProxyAuth, value: Option<&header::HeaderValue>) -> bool {
    let Some(credential) = value
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, encoded)| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
    else {
        return false;
    };
    // The user holds no ':' (`ProxyAuth::parse`), so the first one ends it.
    let Some(colon) = credential.iter().position(|b| *b == b':') else {
        return false;
    };
    auth.matches(&credential[..colon], &credential[colon + 1..])
}

/// The tunnel's request handle, once it can take a new stream (waits while the server's stream limit is reached).
async fn tunnel_sender(shared: &Shared) -> Result<h2::client::SendRequest<Bytes>, ForwardError> {
    let sender = shared.tunnel.sender().ok_or(ForwardError::TunnelDown)?;
    sender
        .ready()
        .await
        .map_err(|err| ForwardError::Tunnel(err.into()))
}

/// Opens a CONNECT stream to `authority`. The request goes out at once; data written to the returned stream
/// follows it without waiting for the server's answer.
fn open_stream(
    sender: &mut h2::client::SendRequest<Bytes>,
    authority: &str,
    kind: StreamKind,
) -> Result<(ResponseFuture, SendStream<Bytes>), ForwardError> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .body(())
        .map_err(|_| ForwardError::BadRequest("CONNECT needs host:port"))?;
    if matches!(kind, StreamKind::Websocket | StreamKind::Socks) {
        request.headers_mut().insert(
            STREAM_KIND_HEADER,
            header::HeaderValue::from_static(kind.as_str()),
        );
    }
    sender
        .send_request(request, false)
        .map_err(|err| ForwardError::Tunnel(err.into()))
}

/// Waits for the server's answer to a CONNECT stream: the open stream on `200`, otherwise its refusal (403, 502,
/// 504 with the reason) as a response to hand to the caller.
async fn answer(
    response: ResponseFuture,
    send: SendStream<Bytes>,
) -> Result<Result<TunnelStream, Response<Body>>, ForwardError> {
    let response = response
        .await
        .map_err(|err| ForwardError::Tunnel(err.into()))?;
    if response.status() != StatusCode::OK {
        return Ok(Err(
            response.map(|recv| TunnelBody::new(recv).map_err(Into::into).boxed())
        ));
    }
    Ok(Ok(TunnelStream::open(send, response.into_body())))
}

/// A byte stream to a target: a CONNECT stream on the tunnel, or a TCP connection of the agent's own for a
/// `direct_targets` target.
pub(crate) enum ConnectStream {
    Tunnel(TunnelStream),
    Direct(TcpStream),
}

/// What opening a stream to a target gave: the stream, or the server's refusal to hand to the caller as is.
pub(crate) enum Opened {
    Stream(ConnectStream),
    Refused(Response<Body>),
}

/// Opens a byte stream to `target` for `kind` (CONNECT, WebSocket): directly when `direct_targets` covers it,
/// otherwise as a CONNECT stream on the tunnel. With `early` (fast_connect), a tunnel stream is handed back before
/// the server has answered; a direct target is always dialed first (it is local: nothing to save).
///
/// Every path that needs a byte stream to a target goes through here, so each gets `direct_targets` alike.
pub(crate) async fn open_connect(
    shared: &Shared,
    target: &Target,
    kind: StreamKind,
    early: bool,
) -> Result<Opened, ForwardError> {
    if shared.direct.covers(target) {
        let stream = direct::dial(target, shared.config.connect_timeout).await?;
        shared.metrics.direct(kind);
        return Ok(Opened::Stream(ConnectStream::Direct(stream)));
    }
    let mut sender = tunnel_sender(shared).await?;
    let (response, send) = open_stream(&mut sender, &target.to_string(), kind)?;
    if early {
        return Ok(Opened::Stream(ConnectStream::Tunnel(
            TunnelStream::awaiting(send, response),
        )));
    }
    Ok(match answer(response, send).await? {
        Ok(stream) => Opened::Stream(ConnectStream::Tunnel(stream)),
        Err(refusal) => Opened::Refused(refusal),
    })
}

impl AsyncRead for ConnectStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
            Self::Direct(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConnectStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
            Self::Direct(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tunnel(s) => Pin::new(s).poll_flush(cx),
            Self::Direct(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
            Self::Direct(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Relays bytes between the caller's upgraded connection and the stream to the target until both sides are done,
/// the idle limit passes, or shutdown cuts it off.
fn spawn_splice(shared: &Arc<Shared>, caller: OnUpgrade, stream: ConnectStream, guard: OpenGuard) {
    let task_shared = shared.clone();
    shared.drain.tasks.spawn(
        async move {
            match caller.await {
                Ok(caller) => relay(&task_shared, TokioIo::new(caller), stream).await,
                Err(err) => debug!(error = %err, "upgrade failed"),
            }
            drop(guard);
        }
        .in_current_span(),
    );
}

/// Relays bytes between a caller's connection (upgraded from HTTP/1.1, or after a SOCKS handshake) and the stream
/// to its target until both sides are done, the idle limit passes, or shutdown cuts it off; counts the bytes.
pub(super) async fn relay<C>(shared: &Shared, caller: C, stream: ConnectStream)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (idle, kill) = (shared.config.idle_timeout, &shared.drain.kill);
    let moved = match stream {
        ConnectStream::Tunnel(stream) => splice::relay_tunnel(caller, stream, idle, kill).await,
        ConnectStream::Direct(stream) => splice::relay(caller, stream, idle, kill).await,
    };
    // The caller's bytes go up the tunnel; the tunnel's come down to it.
    shared.metrics.bytes.add(moved.a_to_b, moved.b_to_a);
}

/// `CONNECT host:port`: a CONNECT stream on the tunnel. The caller gets `200` once the server has connected, or at
/// once with `fast_connect`, in which case the caller's first bytes travel right behind the CONNECT request (no
/// round trip lost) and a target that fails closes the caller's connection.
async fn connect(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ForwardError> {
    let authority = req
        .uri()
        .authority()
        .cloned()
        .ok_or(ForwardError::BadRequest("CONNECT needs host:port"))?;
    let target = target_of(&authority, None).map_err(|e| ForwardError::BadRequest(e.reason()))?;
    tracing::Span::current().record("target", field::display(&target));
    let caller = hyper::upgrade::on(&mut req);
    let early = shared.config.fast_connect;
    let stream = match open_connect(shared, &target, StreamKind::Connect, early).await? {
        Opened::Stream(stream) => stream,
        Opened::Refused(refusal) => return Ok(refusal),
    };
    let guard = shared.metrics.stream_opened(StreamKind::Connect);
    spawn_splice(shared, caller, stream, guard);
    Ok(Response::new(empty()))
}

/// A `ws://` upgrade: a CONNECT stream to the target that carries the HTTP/1.1 upgrade request in origin form; the
/// target's answer (the `101` or a refusal) goes back to the caller, and then the frames, untouched.
///
/// Headers follow the plain path's rules in both directions, keeping what the upgrade needs
/// ([`strip_hop_headers_keeping_upgrade`]), and `Host` is the URL's authority. An upgrade request that announces a
/// body (`Content-Length` above 0, or `Transfer-Encoding`) is refused with `400` before anything is opened: RFC 6455
/// clients never send one, and relaying a body and then switching protocols on the same connection is a path no
/// caller needs (a generic HTTP/1.1 upgrade that must carry a body can go without `Upgrade`, as a plain request).
async fn websocket(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ForwardError> {
    if !req.body().is_end_stream() {
        return Err(ForwardError::BadRequest(
            "an upgrade request with a body is not supported",
        ));
    }
    let authority = req
        .uri()
        .authority()
        .cloned()
        .ok_or(ForwardError::BadRequest("URL has no host"))?;
    let target =
        target_of(&authority, Some(80)).map_err(|e| ForwardError::BadRequest(e.reason()))?;
    tracing::Span::current().record("target", field::display(&target));
    let caller = hyper::upgrade::on(&mut req);
    let stream = match open_connect(shared, &target, StreamKind::Websocket, false).await? {
        Opened::Stream(stream) => stream,
        Opened::Refused(refusal) => return Ok(refusal),
    };
    let (mut origin, conn) = http1::handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|err| ForwardError::Upstream(err.into()))?;
    let kill = shared.drain.kill.clone();
    shared.drain.tasks.spawn(async move {
        tokio::select! {
            result = conn.with_upgrades() => if let Err(err) = result {
                debug!(error = %err, "websocket origin connection ended");
            },
            () = kill.cancelled() => {}
        }
    });

    let (mut parts, _body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = path
        .parse()
        .map_err(|_| ForwardError::BadRequest("bad request target"))?;
    strip_hop_headers_keeping_upgrade(&mut parts.headers);
    // The URL's authority, without any user information, names the target (RFC 9112 §3.2.2), whatever `Host` the
    // caller sent.
    let host = match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    let host =
        header::HeaderValue::from_str(&host).map_err(|_| ForwardError::BadRequest("bad host"))?;
    parts.headers.insert(header::HOST, host);
    parts.version = Version::HTTP_11;
    let mut response = origin
        .send_request(Request::from_parts(parts, empty()))
        .await
        .map_err(|err| ForwardError::Upstream(err.into()))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_headers(response.headers_mut());
        return Ok(response.map(|body| body.map_err(Into::into).boxed()));
    }
    strip_hop_headers_keeping_upgrade(response.headers_mut());
    let upstream = hyper::upgrade::on(&mut response);
    let guard = shared.metrics.stream_opened(StreamKind::Websocket);
    let task_shared = shared.clone();
    shared.drain.tasks.spawn(
        async move {
            match tokio::try_join!(caller, upstream) {
                Ok((caller, upstream)) => {
                    let moved = splice::relay(
                        TokioIo::new(caller),
                        TokioIo::new(upstream),
                        task_shared.config.idle_timeout,
                        &task_shared.drain.kill,
                    )
                    .await;
                    task_shared.metrics.bytes.add(moved.a_to_b, moved.b_to_a);
                }
                Err(err) => debug!(error = %err, "upgrade failed"),
            }
            drop(guard);
        }
        .in_current_span(),
    );
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, empty()))
}

/// An absolute-form request: an HTTP/2 request on the tunnel with the same method, URL and (end-to-end) headers,
/// bodies streamed both ways.
async fn forward(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    let target = plain_http_target(&parts.uri).map_err(ForwardError::BadRequest)?;
    if shared.direct.covers(&target) {
        return forward_direct(shared, &target, parts, body).await;
    }
    strip_hop_headers(&mut parts.headers);
    parts.headers.remove(header::HOST);
    // hyper has already answered `Expect: 100-continue` to the caller.
    parts.headers.remove(header::EXPECT);
    parts.version = Version::HTTP_2;
    let mut sender = tunnel_sender(shared).await?;
    let no_body = body.is_end_stream();
    let (response, send) = sender
        .send_request(Request::from_parts(parts, ()), no_body)
        .map_err(|err| ForwardError::Tunnel(err.into()))?;
    if !no_body {
        let task_shared = shared.clone();
        shared.drain.tasks.spawn(
            async move {
                tokio::select! {
                    sent = send_body(body, send) => match sent {
                        Ok(bytes) => {
                            task_shared.metrics.bytes.up.inc_by(bytes);
                        }
                        Err(err) => debug!(error = %err, "request body not sent whole"),
                    },
                    () = task_shared.drain.kill.cancelled() => {}
                }
            }
            .in_current_span(),
        );
    }
    let response = response
        .await
        .map_err(|err| ForwardError::Tunnel(err.into()))?;
    let (mut parts, recv) = response.into_parts();
    strip_hop_headers(&mut parts.headers);
    parts.version = Version::HTTP_11;
    let guard = shared.metrics.stream_opened(StreamKind::Http);
    let body = Counted::new(
        TunnelBody::new(recv),
        shared.metrics.bytes.down.clone(),
        Some(guard),
    )
    .map_err(Into::into)
    .boxed();
    Ok(Response::from_parts(parts, body))
}

/// An absolute-form request to a `direct_targets` target: sent by the agent itself in origin form over an
/// HTTP/1.1 connection opened for this request alone (`Connection: close`), headers under the plain path's rules.
async fn forward_direct(
    shared: &Arc<Shared>,
    target: &Target,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Result<Response<Body>, ForwardError> {
    let stream = direct::dial(target, shared.config.connect_timeout).await?;
    shared.metrics.direct(StreamKind::Http);
    let (mut origin, conn) = http1::handshake::<_, Incoming>(TokioIo::new(stream))
        .await
        .map_err(|err| ForwardError::Upstream(err.into()))?;
    let kill = shared.drain.kill.clone();
    shared.drain.tasks.spawn(
        async move {
            tokio::select! {
                result = conn => if let Err(err) = result {
                    debug!(error = %err, "direct connection ended");
                },
                () = kill.cancelled() => {}
            }
        }
        .in_current_span(),
    );
    // The URL's authority, without any user information, names the target (RFC 9112 §3.2.2).
    let host = match parts.uri.authority() {
        Some(authority) => match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_owned(),
        },
        None => return Err(ForwardError::BadRequest("URL has no host")),
    };
    let host =
        header::HeaderValue::from_str(&host).map_err(|_| ForwardError::BadRequest("bad host"))?;
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| ForwardError::BadRequest("bad request target"))?;
    strip_hop_headers(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    parts.headers.insert(header::HOST, host);
    parts.headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    parts.version = Version::HTTP_11;
    let response = origin
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|err| ForwardError::Upstream(err.into()))?;
    let (mut parts, body) = response.into_parts();
    strip_hop_headers(&mut parts.headers);
    let guard = shared.metrics.stream_opened(StreamKind::Http);
    let body = Counted::new(body, shared.metrics.bytes.down.clone(), Some(guard))
        .map_err(Into::into)
        .boxed();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_json_lists_each_tunnel_and_its_server() {
        let first: SocketAddr = "10.0.0.1:8443".parse().unwrap();
        let second: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(
            health_json(true, &[Some(first), None, Some(second)]),
            r#"{"status":"up","tunnel":"up","tunnels":[{"state":"up","server":"10.0.0.1:8443"},{"state":"down","server":null},{"state":"up","server":"[2001:db8::1]:443"}]}"#
        );
        assert_eq!(
            health_json(false, &[None]),
            r#"{"status":"down","tunnel":"down","tunnels":[{"state":"down","server":null}]}"#
        );
    }

    #[test]
    fn proxy_authorization_is_checked() {
        let auth = ProxyAuth::parse("alice:s3cret").unwrap();
        let mut headers = http::HeaderMap::new();
        assert!(!authorized(&auth, &headers));
        let good = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        for (value, expected) in [
            (format!("Basic {good}"), true),
            (format!("basic  {good}"), true),
            (format!("Bearer {good}"), false),
            ("Basic YWxpY2U6d3Jvbmc=".to_string(), false),
            ("Basic !!!".to_string(), false),
        ] {
            headers.insert(header::PROXY_AUTHORIZATION, value.parse().unwrap());
            assert_eq!(authorized(&auth, &headers), expected, "{value}");
        }
    }

    #[test]
    fn head_len_counts_the_head_as_sent() {
        for (req, sent) in [
            (
                Request::get("http://example.com:8080/a?b=c")
                    .header("host", "example.com")
                    .header("x-two", "2")
                    .body(())
                    .unwrap(),
                "GET http://example.com:8080/a?b=c HTTP/1.1\r\nhost: example.com\r\nx-two: 2\r\n\r\n",
            ),
            (
                Request::connect("example.com:443").body(()).unwrap(),
                "CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            ),
        ] {
            assert_eq!(head_len(&req), sent.len(), "{sent}");
        }
    }
}
