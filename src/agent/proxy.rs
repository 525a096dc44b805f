//! The agent's HTTP/1.1 proxy service: one caller request in, one tunnel stream out.
//!
//! Origin-form requests are for the agent itself (`/healthz`, `/metrics`); absolute-form requests, `CONNECT` and
//! WebSocket upgrades are proxied as described in `tunnel`. It never follows redirects and never retries a request.

use base64::Engine as _;
use http::{Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::{Instrument, debug, debug_span, field};

use super::Shared;
use crate::admin::{AdminPath, admin_path, health_response, metrics_response};
use crate::config::ProxyAuth;
use crate::error::{ForwardError, error_response};
use crate::metrics::{OpenGuard, StreamKind};
use crate::tunnel::authority::parse_target;
use crate::tunnel::body::Counted;
use crate::tunnel::headers::{strip_hop_headers, strip_proxy_headers, wants_upgrade};
use crate::tunnel::splice::{Moved, splice};
use crate::tunnel::{Body, STREAM_KIND_HEADER, empty, text_response};

/// Serves one caller request.
pub(super) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::CONNECT && req.uri().authority().is_none() {
        return Ok(admin(&shared, &req));
    }
    if let Some(auth) = &shared.config.proxy_auth
        && !authorized(auth, req.headers())
    {
        let mut response = text_response(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "fluidity: proxy authentication required",
        );
        response.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"fluidity\""),
        );
        return Ok(response);
    }
    let kind = if req.method() == Method::CONNECT {
        StreamKind::Connect
    } else if wants_upgrade(req.headers()) {
        StreamKind::Websocket
    } else {
        StreamKind::Http
    };
    let span = debug_span!("request", method = %req.method(), target = field::Empty);
    let result = async {
        let sender = tunnel_sender(&shared)?;
        match kind {
            StreamKind::Connect => connect(&shared, sender, req).await,
            StreamKind::Websocket => websocket(&shared, sender, req).await,
            StreamKind::Http => forward(&shared, sender, req).await,
        }
    }
    .instrument(span)
    .await;
    Ok(match result {
        Ok(response) => {
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
            error_response(&err)
        }
    })
}

fn admin(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    match admin_path(req) {
        Some(AdminPath::Health) => {
            let up = shared.tunnel.borrow().is_up();
            let word = if up { "up" } else { "down" };
            health_response(up, format!(r#"{{"status":"{word}","tunnel":"{word}"}}"#))
        }
        Some(AdminPath::Metrics) => metrics_response(shared.metrics.render()),
        None => text_response(
            StatusCode::NOT_FOUND,
            "fluidity: this is a proxy; send absolute-form requests (http://host/path) or CONNECT",
        ),
    }
}

/// Checks Basic `Proxy-Authorization` against the configured credential.
fn authorized(auth: &ProxyAuth, headers: &http::HeaderMap) -> bool {
    let Some(credential) = headers
        .get(header::PROXY_AUTHORIZATION)
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
    let expected = format!("{}:{}", auth.user(), auth.password());
    constant_time_eq(&credential, expected.as_bytes())
}

/// Compares without an early exit, so response timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn tunnel_sender(shared: &Shared) -> Result<http2::SendRequest<Body>, ForwardError> {
    match &*shared.tunnel.borrow() {
        super::TunnelState::Up(sender) => Ok(sender.clone()),
        super::TunnelState::Down => Err(ForwardError::TunnelDown),
    }
}

/// Opens a CONNECT stream to `authority` on the tunnel. `Err(Ok(response))` carries the server's refusal (403,
/// 502, 504 with its reason) to hand to the caller as it is.
async fn open_stream(
    mut sender: http2::SendRequest<Body>,
    authority: &str,
    kind: StreamKind,
) -> Result<Result<OnUpgrade, Response<Body>>, ForwardError> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .body(empty())
        .map_err(|_| ForwardError::BadRequest("CONNECT needs host:port"))?;
    if kind == StreamKind::Websocket {
        request.headers_mut().insert(
            STREAM_KIND_HEADER,
            header::HeaderValue::from_static("websocket"),
        );
    }
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|err| ForwardError::Tunnel(err.into()))?;
    if response.status() != StatusCode::OK {
        return Ok(Err(response.map(BodyExt::boxed)));
    }
    Ok(Ok(hyper::upgrade::on(&mut response)))
}

/// Relays bytes between the caller's upgraded connection and the tunnel stream until both sides are done, the
/// idle limit passes, or shutdown cuts it off.
fn spawn_splice(shared: &Arc<Shared>, caller: OnUpgrade, stream: OnUpgrade, guard: OpenGuard) {
    let task_shared = shared.clone();
    shared.drain.tasks.spawn(
        async move {
            let (caller, stream) = match tokio::try_join!(caller, stream) {
                Ok(pair) => pair,
                Err(err) => {
                    debug!(error = %err, "upgrade failed");
                    return;
                }
            };
            relay(&task_shared, caller, stream).await;
            drop(guard);
        }
        .in_current_span(),
    );
}

async fn relay(
    shared: &Shared,
    caller: hyper::upgrade::Upgraded,
    stream: hyper::upgrade::Upgraded,
) {
    let moved = Moved::default();
    let result = tokio::select! {
        result = splice(TokioIo::new(caller), TokioIo::new(stream), shared.config.idle_timeout, &moved) => result,
        () = shared.drain.kill.cancelled() => Ok(()),
    };
    shared
        .metrics
        .bytes
        .up
        .inc_by(moved.a_to_b.load(Ordering::Relaxed));
    shared
        .metrics
        .bytes
        .down
        .inc_by(moved.b_to_a.load(Ordering::Relaxed));
    match result {
        Ok(()) => debug!("stream closed"),
        Err(err) => debug!(error = %err, "stream ended"),
    }
}

/// `CONNECT host:port`: a CONNECT stream on the tunnel; the caller gets `200` once the server has connected (or at
/// once with `fast_connect`).
async fn connect(
    shared: &Arc<Shared>,
    sender: http2::SendRequest<Body>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ForwardError> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or(ForwardError::BadRequest("CONNECT needs host:port"))?;
    let target =
        parse_target(&authority, None).map_err(|e| ForwardError::BadRequest(e.reason()))?;
    tracing::Span::current().record("target", field::display(&target));
    let caller = hyper::upgrade::on(&mut req);
    if shared.config.fast_connect {
        // Answer at once; if the target then fails, the caller's connection is closed.
        let task_shared = shared.clone();
        shared.drain.tasks.spawn(
            async move {
                let guard = task_shared.metrics.stream_opened(StreamKind::Connect);
                match open_stream(sender, &authority, StreamKind::Connect).await {
                    Ok(Ok(stream)) => match tokio::try_join!(caller, stream) {
                        Ok((caller, stream)) => relay(&task_shared, caller, stream).await,
                        Err(err) => debug!(error = %err, "upgrade failed"),
                    },
                    Ok(Err(refusal)) => {
                        debug!(status = %refusal.status(), "target refused, closing caller")
                    }
                    Err(err) => debug!(error = %err, "stream failed, closing caller"),
                }
                drop(guard);
            }
            .in_current_span(),
        );
        return Ok(Response::new(empty()));
    }
    let stream = match open_stream(sender, &authority, StreamKind::Connect).await? {
        Ok(stream) => stream,
        Err(refusal) => return Ok(refusal),
    };
    let guard = shared.metrics.stream_opened(StreamKind::Connect);
    spawn_splice(shared, caller, stream, guard);
    Ok(Response::new(empty()))
}

/// A `ws://` upgrade: a CONNECT stream to the target that carries the HTTP/1.1 upgrade request in origin form; the
/// target's answer (the `101` or a refusal) goes back to the caller, and then the frames, untouched.
async fn websocket(
    shared: &Arc<Shared>,
    sender: http2::SendRequest<Body>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ForwardError> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or(ForwardError::BadRequest("URL has no host"))?;
    let target =
        parse_target(&authority, Some(80)).map_err(|e| ForwardError::BadRequest(e.reason()))?;
    tracing::Span::current().record("target", field::display(&target));
    let caller = hyper::upgrade::on(&mut req);
    let stream = match open_stream(sender, &target.to_string(), StreamKind::Websocket).await? {
        Ok(stream) => stream,
        Err(refusal) => return Ok(refusal),
    };
    let io = stream
        .await
        .map_err(|err| ForwardError::Tunnel(err.into()))?;
    let (mut origin, conn) = http1::handshake::<_, Body>(io)
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
    strip_proxy_headers(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST) {
        let host = header::HeaderValue::from_str(&authority)
            .map_err(|_| ForwardError::BadRequest("bad host"))?;
        parts.headers.insert(header::HOST, host);
    }
    parts.version = Version::HTTP_11;
    let mut response = origin
        .send_request(Request::from_parts(parts, empty()))
        .await
        .map_err(|err| ForwardError::Upstream(err.into()))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response.map(BodyExt::boxed));
    }
    let upstream = hyper::upgrade::on(&mut response);
    let guard = shared.metrics.stream_opened(StreamKind::Websocket);
    spawn_splice(shared, caller, upstream, guard);
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, empty()))
}

/// An absolute-form request: an HTTP/2 request on the tunnel with the same method, URL and (end-to-end) headers,
/// bodies streamed both ways.
async fn forward(
    shared: &Arc<Shared>,
    mut sender: http2::SendRequest<Body>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.scheme_str() != Some("http") {
        return Err(ForwardError::BadRequest(
            "only http:// URLs can be proxied as plain requests; use CONNECT for https",
        ));
    }
    let authority = parts
        .uri
        .authority()
        .ok_or(ForwardError::BadRequest("URL has no host"))?;
    let target = parse_target(authority.as_str(), Some(80))
        .map_err(|e| ForwardError::BadRequest(e.reason()))?;
    tracing::Span::current().record("target", field::display(&target));
    strip_hop_headers(&mut parts.headers);
    parts.headers.remove(header::HOST);
    // hyper has already answered `Expect: 100-continue` to the caller.
    parts.headers.remove(header::EXPECT);
    parts.version = Version::HTTP_2;
    let body = Counted::new(body, shared.metrics.bytes.up.clone(), None).boxed();
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|err| ForwardError::Tunnel(err.into()))?;
    let (mut parts, body) = response.into_parts();
    strip_hop_headers(&mut parts.headers);
    parts.version = Version::HTTP_11;
    let guard = shared.metrics.stream_opened(StreamKind::Http);
    let body = Counted::new(body, shared.metrics.bytes.down.clone(), Some(guard)).boxed();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
