//! One stream on an agent's tunnel: the probe, a CONNECT to a target, or a plain request forwarded with the
//! pooled client. Errors become responses through `error::error_response`.

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span, field};

use super::Shared;
use crate::admin::{AdminPath, admin_path, health_response, metrics_response};
use crate::error::{ForwardError, classify_target_error, error_response};
use crate::metrics::Counted;
use crate::metrics::StreamKind;
use crate::tunnel::authority::target_of;
use crate::tunnel::headers::strip_hop_headers;
use crate::tunnel::splice;
use crate::tunnel::stream::{TunnelBody, TunnelStream, send_body};
use crate::tunnel::{
    Body, PROBE_AUTHORITY, STREAM_KIND_HEADER, empty, plain_http_target, text_response,
};

/// Answers `/healthz` and `/metrics` on `health_addr`.
pub(super) fn admin(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    match admin_path(req) {
        Some(AdminPath::Health) => health_response(true, r#"{"status":"ok"}"#.to_string()),
        Some(AdminPath::Metrics) => metrics_response(shared.metrics.render()),
        None => text_response(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serves one stream of an agent's tunnel: answers it, then streams the body or relays the CONNECT bytes.
pub(super) async fn handle_stream(
    shared: Arc<Shared>,
    agent: Arc<str>,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str() == PROBE_AUTHORITY)
    {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        reply(respond, response).await;
        return;
    }
    let span = debug_span!("stream", method = %req.method(), target = field::Empty);
    async move {
        let result = match check_rate(&shared, &agent) {
            Err(err) => Err(err),
            Ok(()) if req.method() == Method::CONNECT => match connect(&shared, &req).await {
                Ok((socket, kind)) => {
                    relay(&shared, req.into_body(), respond, socket, kind);
                    return;
                }
                Err(err) => Err(err),
            },
            // Boxed: its state (the target connection's) would otherwise enlarge every stream's task, which is
            // moved whole when spawned.
            Ok(()) => Box::pin(forward(&shared, req)).await,
        };
        let response = result.unwrap_or_else(|err| {
            shared.metrics.error(err.class());
            debug!(error = %err, class = err.class(), "stream failed");
            error_response(&err)
        });
        reply(respond, response).await;
    }
    .instrument(span)
    .await;
}

/// Sends `response` on the stream: the head, then the body as the window allows (a failed body resets the stream).
async fn reply(mut respond: SendResponse<Bytes>, response: Response<Body>) {
    let (parts, body) = response.into_parts();
    let end = body.is_end_stream();
    let send = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(send) => send,
        Err(err) => {
            debug!(error = %err, "response not sent");
            return;
        }
    };
    if !end && let Err(err) = send_body(body, send).await {
        debug!(error = %err, "response body not sent whole");
    }
}

fn check_rate(shared: &Shared, agent: &Arc<str>) -> Result<(), ForwardError> {
    let Some(limiter) = &shared.limiter else {
        return Ok(());
    };
    limiter.check_key(agent).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ForwardError::RateLimited {
            retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        }
    })
}

/// CONNECT: dials the target; the stream is answered once the socket is open.
async fn connect(
    shared: &Arc<Shared>,
    req: &Request<RecvStream>,
) -> Result<(TcpStream, StreamKind), ForwardError> {
    let authority = req
        .uri()
        .authority()
        .ok_or(ForwardError::BadRequest("CONNECT needs host:port"))?;
    let target = target_of(authority, None).map_err(|e| ForwardError::BadRequest(e.reason()))?;
    tracing::Span::current().record("target", field::display(&target));
    let kind = match req.headers().get(STREAM_KIND_HEADER) {
        Some(value) if value == "websocket" => StreamKind::Websocket,
        Some(value) if value == "socks" => StreamKind::Socks,
        _ => StreamKind::Connect,
    };
    let socket = shared
        .dialer
        .dial(&target)
        .await
        .map_err(|err| classify_target_error(&*err))?;
    Ok((socket, kind))
}

/// Answers a CONNECT stream with `200` and splices it with the target's socket in a task of its own.
fn relay(
    shared: &Arc<Shared>,
    recv: RecvStream,
    mut respond: SendResponse<Bytes>,
    socket: TcpStream,
    kind: StreamKind,
) {
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(err) => {
            debug!(error = %err, "CONNECT stream gone before its answer");
            return;
        }
    };
    let guard = shared.metrics.stream_opened(kind);
    let idle = shared.config.idle_timeout;
    let task_shared = shared.clone();
    shared.drain.tasks.spawn(
        async move {
            let task = &task_shared;
            let moved = splice::relay_tunnel(
                socket,
                TunnelStream::open(send, recv),
                idle,
                &task.drain.kill,
            )
            .await;
            // Bytes from the target travel down to the agent; bytes to it came up.
            task.metrics.bytes.add(moved.b_to_a, moved.a_to_b);
            drop(guard);
        }
        .in_current_span(),
    );
}

/// A plain request: forwarded to the target over HTTP/1.1 on a kept-open connection (`target_pool`); the response,
/// redirects included, goes back as it came.
async fn forward(
    shared: &Arc<Shared>,
    req: Request<RecvStream>,
) -> Result<Response<Body>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    let target = plain_http_target(&parts.uri).map_err(ForwardError::BadRequest)?;
    strip_hop_headers(&mut parts.headers);
    let host = host_header(&parts.uri).ok_or(ForwardError::BadRequest("URL has no host"))?;
    parts.headers.insert(header::HOST, host);
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    let guard = shared.metrics.stream_opened(StreamKind::Http);
    let body = Counted::new(TunnelBody::new(body), shared.metrics.bytes.up.clone(), None)
        .map_err(Into::into)
        .boxed();
    let pending = shared
        .targets
        .send(&target, Request::from_parts(parts, body));
    let response = match shared.config.idle_timeout {
        Some(limit) => tokio::time::timeout(limit, pending)
            .await
            .map_err(|_| ForwardError::ResponseTimeout(limit))??,
        None => pending.await?,
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_headers(&mut parts.headers);
    let body = Counted::new(body, shared.metrics.bytes.down.clone(), Some(guard))
        .map_err(Into::into)
        .boxed();
    Ok(Response::from_parts(parts, body))
}

/// The request target a server expects from a client (RFC 9112 §3.2.1): the path and query, `/` when empty.
fn origin_form(uri: &http::Uri) -> http::Uri {
    uri.path_and_query()
        .map_or_else(|| http::Uri::from_static("/"), |path| path.clone().into())
}

/// `Host` for a plain request: the URL's authority (RFC 9112 §3.2.2: the absolute-form authority wins over the
/// caller's `Host`), without the port when it is 80.
fn host_header(uri: &http::Uri) -> Option<header::HeaderValue> {
    let host = match uri.port_u16() {
        Some(80) => uri.host(),
        _ => uri.authority().map(http::uri::Authority::as_str),
    }?;
    header::HeaderValue::from_str(host).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_follows_the_url_without_the_default_port() {
        for (url, host) in [
            ("http://example.com/x", Some("example.com")),
            ("http://example.com:80/x", Some("example.com")),
            ("http://Example.com:8080/x", Some("Example.com:8080")),
            ("http://[::1]:80/", Some("[::1]")),
            ("http://[::1]:8080/", Some("[::1]:8080")),
            ("/x", None),
        ] {
            let uri: http::Uri = url.parse().unwrap();
            assert_eq!(
                host_header(&uri).as_ref().map(|v| v.to_str().unwrap()),
                host,
                "{url}"
            );
        }
    }
}
