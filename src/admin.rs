//! `/healthz` and `/metrics`: the HTTP server on the server's `health_addr`, and the response helpers the agent uses
//! for the same paths on its proxy port.

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
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
