//! Callers of the agent: raw byte scripts over `TcpStream` (exact requests, status and head parsing), CONNECT
//! through the agent, and a hyper HTTP/1.1 client that sends absolute-form requests. Bodies live in `bodies`.
#![allow(
    dead_code,
    reason = "every test crate compiles the whole harness and each uses a different part of this module"
)]

use super::bodies::{TestBody, empty_body};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and reads until the peer closes (bounded to 5 s).
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await {
        Ok(result) => result.map(|_| out),
        Err(_) => Ok(out),
    }
}

/// `GET {path}` in origin form (a request for the agent itself) with `Host: {host}` and `extra` header lines (each
/// ending in CRLF); the response split into head and body.
pub async fn get_own(agent: SocketAddr, path: &str, host: &str, extra: &str) -> (String, String) {
    let response = raw_request(
        agent,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// Sends raw bytes and reads only the status line's code (for answers after which the peer may keep the
/// connection open).
pub async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.write_all(bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < 12 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    parse_status(&got)
}

pub fn parse_status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Reads an HTTP/1.1 response head from `stream` byte by byte (so nothing after the head is consumed).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(
            n > 0,
            "connection closed inside the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Opens a CONNECT tunnel through the agent; returns the stream after a `200`.
pub async fn connect_through(agent: SocketAddr, target: &str) -> TcpStream {
    let mut stream = TcpStream::connect(agent).await.unwrap();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT answered {head:?}"
    );
    stream
}

/// A hyper HTTP/1.1 client connection to the agent; requests with absolute URIs go out in absolute form.
pub async fn proxy_client(agent: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(agent).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// The status of `GET /echo` on `origin`, asked through the agent at `agent` on a fresh connection.
pub async fn echo_status(agent: SocketAddr, origin: SocketAddr) -> StatusCode {
    get(agent, &format!("http://{origin}/echo")).await.0
}

/// An absolute-form GET on an open proxy client connection.
pub async fn send_get(
    client: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    url: impl AsRef<str>,
) -> Response<Incoming> {
    client
        .send_request(Request::get(url.as_ref()).body(empty_body()).unwrap())
        .await
        .unwrap()
}

/// Absolute-form GET through the agent with a fresh connection; returns status and body.
pub async fn get(agent: SocketAddr, url: &str) -> (StatusCode, Bytes) {
    let mut client = proxy_client(agent).await;
    let response = send_get(&mut client, url).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}
