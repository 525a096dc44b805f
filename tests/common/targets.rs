//! Local targets on `127.0.0.1:0`, each stopped when its handle drops: the HTTP origin with its routes (plain and
//! HTTPS), a TCP echo and a WebSocket echo.
#![allow(
    dead_code,
    reason = "every test crate compiles the whole harness and each uses a different part of this module"
)]

use super::bodies::{TestBody, empty_body, full, is_pattern, pattern_body};
use super::pki::TestPki;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A local HTTP/1.1 origin. Routes:
/// - `/echo`: 200, body = "METHOD path\n" then one "name: value" line per request header;
/// - `/body`: the request body streamed back;
/// - `/sink`: reads the body, answers "LEN" and checks it against the pattern (answers 422 if it differs);
/// - `/bytes/N`: N pattern bytes with a content-length;
/// - `/status/N`: status N (301/302 with `Location: /moved`);
/// - `/multi`: multi-valued headers; `/hop`: hop-by-hop headers in the response;
/// - `/never`: no answer ever; anything else: 404.
pub struct Origin {
    pub addr: SocketAddr,
    pub _task: AbortOnDrop,
}

pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn spawn_origin() -> Origin {
    serve_each(serve_origin_connection).await
}

/// Serves the test origin's routes over HTTP/1.1 (with upgrades) on one accepted connection until it closes.
pub async fn serve_origin_connection(stream: TcpStream) {
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service_fn(origin_route))
        .with_upgrades()
        .await;
}

/// Listens on a fresh loopback port and runs `handle` on a task of its own for every connection accepted there.
pub async fn serve_each<F, Fut>(handle: F) -> Origin
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    Origin {
        addr,
        _task: AbortOnDrop(task),
    }
}

/// An HTTPS origin (certificate for 127.0.0.1 from the test CA) serving the same routes.
pub async fn spawn_tls_origin(pki: &TestPki) -> Origin {
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.origin_server_config());
    serve_each(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service_fn(origin_route))
                .await;
        }
    })
    .await
}

async fn origin_route(req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let response = if path == "/echo" {
        let mut text = format!(
            "{} {}\n",
            req.method(),
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        for (name, value) in req.headers() {
            text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
        }
        Response::new(full(text))
    } else if path == "/body" {
        Response::new(req.into_body().map_err(Into::into).boxed())
    } else if path == "/sink" {
        let mut body = req.into_body();
        let mut offset = 0u64;
        let mut intact = true;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                intact = false;
                break;
            };
            if let Some(data) = frame.data_ref() {
                intact &= is_pattern(offset, data);
                offset += data.len() as u64;
            }
        }
        let mut response = Response::new(full(offset.to_string()));
        if !intact {
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        }
        response
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let len: u64 = n.parse().unwrap_or(0);
        let mut response = Response::new(pattern_body(len));
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, len.into());
        response
    } else if let Some(n) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(n.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = Response::new(
            if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                empty_body()
            } else {
                full(format!("status {}", status.as_u16()))
            },
        );
        *response.status_mut() = status;
        if status.is_redirection() {
            response
                .headers_mut()
                .insert(http::header::LOCATION, "/moved".parse().unwrap());
        }
        response
    } else if path == "/multi" {
        let mut response = Response::new(full("multi"));
        let headers = response.headers_mut();
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        headers.append(http::header::SET_COOKIE, "one=1".parse().unwrap());
        headers.append(http::header::SET_COOKIE, "two=2".parse().unwrap());
        response
    } else if path == "/hop" {
        let mut response = Response::new(full("hop"));
        let headers = response.headers_mut();
        headers.insert(http::header::CONNECTION, "x-hop-secret".parse().unwrap());
        headers.insert("x-hop-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-end-to-end", "kept".parse().unwrap());
        response
    } else if path == "/never" {
        std::future::pending::<()>().await;
        unreachable!()
    } else {
        let mut response = Response::new(full("not found"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
    };
    Ok(response)
}

/// A TCP echo target that also reports EOF: after the peer half-closes, it writes "EOF" and closes.
pub async fn spawn_echo() -> Origin {
    serve_each(|mut stream| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => {
                    let _ = stream.write_all(b"EOF").await;
                    let _ = stream.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
    .await
}

/// A WebSocket echo target (plain TCP; wrap it with TLS by passing `tls`).
pub async fn spawn_ws_echo(tls: Option<Arc<rustls::ServerConfig>>) -> Origin {
    use futures_util::{SinkExt, StreamExt};
    async fn echo<S>(stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            let is_data = message.is_text() || message.is_binary();
            if is_data && ws.send(message).await.is_err() {
                return;
            }
        }
    }
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    serve_each(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        echo(tls).await;
                    }
                }
                None => echo(stream).await,
            }
        }
    })
    .await
}

/// A host name that does not resolve: `.invalid` is reserved never to exist (RFC 6761 §6.4).
pub const UNRESOLVABLE_HOST: &str = "no-such-host.invalid";

/// Checks the answer to a request for [`UNRESOLVABLE_HOST`]. The server has only the system resolver, and a test
/// cannot control its answer without a network mock, so both outcomes a machine can produce are accepted, each
/// with the reason it names:
/// - 502 "cannot resolve target": the resolver answered that the name does not exist, or there is no resolver to
///   ask (both fail at once);
/// - 504 "connect timed out": a resolver is configured but does not answer (a machine without network), and the
///   server's `connect_timeout`, which bounds the lookup and the connect together, ran out first. Tests that use
///   the name set a short `connect_timeout`, so that this case ends well within their deadline.
pub fn assert_unresolvable_answer(status: u16, body: &str) {
    match status {
        502 => assert!(
            body.contains("cannot resolve"),
            "502 for another reason: {body:?}"
        ),
        504 => assert!(
            body.contains("timed out"),
            "504 for another reason: {body:?}"
        ),
        _ => panic!("an unresolvable name answered {status}: {body:?}"),
    }
}
