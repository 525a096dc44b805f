//! CONNECT through the agent: HTTPS to a local TLS origin, raw TCP with half-close, failures, and `fast_connect`.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn https_through_connect_reaches_a_tls_origin_trusted_by_the_test_ca() {
    within(20, async {
        let t = tunnel().await;
        let origin = spawn_tls_origin(&t.pki).await;
        let stream = connect_through(t.agent.addr, &origin.addr.to_string()).await;
        let tls = tokio_rustls::TlsConnector::from(t.pki.origin_client_config())
            .connect("127.0.0.1".try_into().unwrap(), stream)
            .await
            .unwrap();
        let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let response = client
                .send_request(
                    Request::get("/echo")
                        .header("host", "127.0.0.1")
                        .body(empty_body())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let text = response.into_body().collect().await.unwrap().to_bytes();
            assert!(text.starts_with(b"GET /echo\n"));
        }
        let response = client
            .send_request(
                Request::get("/bytes/5000000")
                    .header("host", "127.0.0.1")
                    .body(empty_body())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(check_pattern(response.into_body()).await, 5_000_000);
    })
    .await;
}

#[tokio::test]
async fn connect_relays_bytes_both_ways_and_propagates_half_close() {
    within(20, async {
        let t = tunnel().await;
        let echo = spawn_echo().await;
        let mut stream = connect_through(t.agent.addr, &echo.addr.to_string()).await;
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let (mut read, mut write) = stream.split();
        let writer = async {
            write.write_all(&payload).await.unwrap();
            // Half-close: the echo target sees EOF, answers "EOF" and closes its side.
            write.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let reader = read.read_to_end(&mut back);
        let ((), read_result) = tokio::join!(writer, reader);
        read_result.unwrap();
        assert_eq!(back.len(), payload.len() + 3);
        assert_eq!(&back[..payload.len()], &payload[..]);
        assert_eq!(&back[payload.len()..], b"EOF");
    })
    .await;
}

#[tokio::test]
async fn connect_failures_answer_502_and_504_with_a_reason() {
    within(30, async {
        let t = tunnel_with(
            |server| server.connect_timeout = std::time::Duration::from_secs(1),
            |_| {},
        )
        .await;
        let closed = closed_port();
        let response = raw_request(
            t.agent.addr,
            format!("CONNECT {closed} HTTP/1.1\r\nHost: {closed}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 502"), "{text}");
        assert!(text.contains("refused"), "{text}");

        // 502 or 504 depending on the machine's resolver; the 1 s connect timeout bounds the lookup too.
        let response = raw_request(
            t.agent.addr,
            format!(
                "CONNECT {UNRESOLVABLE_HOST}:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let status = parse_status(&response).unwrap();
        assert_unresolvable_answer(status, &String::from_utf8_lossy(&response));

        // A listener whose backlog is full never completes the handshake: the connect times out.
        let blackhole = blackhole_target().await;
        let started = std::time::Instant::now();
        let response = raw_request(
            t.agent.addr,
            format!(
                "CONNECT {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                blackhole.0
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 504"), "{text}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    })
    .await;
}

/// A target that accepts TCP connections but never answers, for response-timeout tests; and the address of a
/// non-routable-in-practice connect (a full backlog) for connect-timeout tests.
async fn blackhole_target() -> (std::net::SocketAddr, Vec<std::net::TcpStream>) {
    // A listener with backlog 1 that never accepts: once the queue is full, further SYNs are dropped.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    std::mem::forget(listener);
    (addr, fillers)
}

#[tokio::test]
async fn fast_connect_answers_at_once_and_closes_the_caller_when_the_target_fails() {
    within(20, async {
        let t = tunnel_with(|_| {}, |agent| agent.fast_connect = true).await;
        let echo = spawn_echo().await;
        let mut stream = connect_through(t.agent.addr, &echo.addr.to_string()).await;
        stream.write_all(b"early bytes").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"early bytesEOF");

        let closed = closed_port();
        let mut stream = connect_through(t.agent.addr, &closed.to_string()).await;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.unwrap_or(0);
        assert_eq!(
            n, 0,
            "the caller's connection is closed when the target fails"
        );
    })
    .await;
}

#[tokio::test]
async fn fast_connect_sends_the_first_bytes_before_the_server_has_answered() {
    within(20, async {
        let RelayedTunnel {
            relay,
            agent,
            server: _server,
            pki: _pki,
        } = relayed_tunnel(|config| config.fast_connect = true).await;

        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let received = tokio::spawn(async move {
            let (mut socket, _) = target.accept().await.unwrap();
            let mut got = [0u8; 5];
            socket.read_exact(&mut got).await.unwrap();
            got
        });
        // From now on nothing from the server reaches the agent: not the CONNECT's 200, not anything else. Bytes
        // the caller sends can only reach the target if they travel without waiting for that answer.
        relay.freeze_downstream();
        let mut stream = connect_through(agent.addr, &target_addr.to_string()).await;
        stream.write_all(b"hello").await.unwrap();
        assert_eq!(&received.await.unwrap(), b"hello");
    })
    .await;
}
