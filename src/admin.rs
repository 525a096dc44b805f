//! `/healthz` and `/metrics`: the HTTP server on the server's `health_addr`, the response helpers the agent uses
//! for the same paths on its proxy port, and the client side of `fluidity health` (one GET, so a container's
//! health check needs no shell or curl).

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, debug_span, warn};

use crate::shutdown::Drain;
use crate::tunnel::{Body, text_response};

/// The admin paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminPath {
    Health,
    Metrics,
}

/// Which admin endpoint a request names, if any.
pub(crate) fn admin_path(req: &Request<Incoming>) -> Option<AdminPath> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    match req.uri().path() {
        "/healthz" => Some(AdminPath::Health),
        "/metrics" => Some(AdminPath::Metrics),
        _ => None,
    }
}

/// A Prometheus text response.
pub(crate) fn metrics_response(text: String) -> Response<Body> {
    let mut response = text_response(StatusCode::OK, text);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// A small JSON health answer.
pub(crate) fn health_response(healthy: bool, json: String) -> Response<Body> {
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = text_response(status, json);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves admin requests on `listener` until `drain` says stop. `respond` answers each request.
pub(crate) async fn serve<F>(listener: TcpListener, respond: F, drain: Drain)
where
    F: Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    loop {
        let (stream, peer) = tokio::select! {
            () = drain.graceful.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let respond = respond.clone();
        let graceful = drain.graceful.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let response = respond(&req);
            async move { Ok::<_, Infallible>(response) }
        });
        drain.tasks.spawn(
            async move {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = graceful.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(err) = result {
                    debug!(error = %err, "admin connection ended");
                }
            }
            .instrument(debug_span!("admin", %peer)),
        );
    }
}

/// How long `fluidity health` waits for the whole check: connect, request and response head.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `fluidity health` found the endpoint unhealthy; each reads as one line.
#[derive(Debug, thiserror::Error)]
pub enum HealthCheckError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("{url}: not an http:// URL ({reason})")]
    BadUrl { url: String, reason: &'static str },
    /// The host did not resolve, or nothing accepted the connection.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    /// The request failed on the connection.
    #[error("request failed: {0}")]
    Http(#[source] hyper::Error),
    /// No complete answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The endpoint answered, but not 200.
    #[error("answered {0}")]
    Status(StatusCode),
}

/// The URL `fluidity health` checks for a `health_addr`: `/healthz` on that address, with an unspecified address
/// (`0.0.0.0`, `::`) replaced by the loopback of its family, since a listener on every address answers there.
pub fn health_url(health_addr: SocketAddr) -> String {
    let ip = match health_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, health_addr.port()))
}

/// `GET url` with HTTP/1.1: `Ok` when it answers 200 within `timeout`.
///
/// # Errors
/// A [`HealthCheckError`] saying why not: a bad URL, no connection, a failed request, a timeout or another status.
pub async fn check_health(url: &str, timeout: Duration) -> Result<(), HealthCheckError> {
    let uri: http::Uri = url.parse().map_err(|_| HealthCheckError::BadUrl {
        url: url.to_owned(),
        reason: "cannot be parsed",
    })?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
        return Err(HealthCheckError::BadUrl {
            url: url.to_owned(),
            reason: "the scheme must be http",
        });
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(HealthCheckError::BadUrl {
            url: url.to_owned(),
            reason: "no host",
        });
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(header::USER_AGENT, "fluidity-health")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|_| HealthCheckError::BadUrl {
            url: url.to_owned(),
            reason: "not a valid request target",
        })?;

    let exchange = async {
        let stream =
            TcpStream::connect((host, port))
                .await
                .map_err(|source| HealthCheckError::Connect {
                    authority: authority.to_string(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(HealthCheckError::Http)?;
        // The connection is driven beside the request; it ends when the response is in and the sender dropped.
        let driver = tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(HealthCheckError::Http);
        driver.abort();
        response
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HealthCheckError::Timeout(timeout))??;
    match response.status() {
        StatusCode::OK => Ok(()),
        status => Err(HealthCheckError::Status(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_url_uses_loopback_for_an_unspecified_address() {
        let cases = [
            ("0.0.0.0:8081", "http://127.0.0.1:8081/healthz"),
            ("[::]:9000", "http://[::1]:9000/healthz"),
            ("10.1.2.3:8081", "http://10.1.2.3:8081/healthz"),
            ("127.0.0.1:8081", "http://127.0.0.1:8081/healthz"),
        ];
        for (addr, url) in cases {
            assert_eq!(health_url(addr.parse().unwrap()), url, "{addr}");
        }
    }

    #[tokio::test]
    async fn check_health_refuses_urls_it_cannot_use() {
        for url in [
            "https://127.0.0.1:1/healthz",
            "127.0.0.1:8081",
            "http://",
            "not a url",
        ] {
            let err = check_health(url, HEALTH_CHECK_TIMEOUT).await.unwrap_err();
            assert!(
                matches!(err, HealthCheckError::BadUrl { .. }),
                "{url}: {err}"
            );
        }
    }
}
