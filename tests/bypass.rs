//! `direct_targets`: targets the agent reaches itself, on the plain HTTP, CONNECT and WebSocket paths, with the
//! server refusing private targets (so a request that went through the tunnel would get `403`) and with the server
//! gone; and `direct_targets: []` sending everything through the tunnel.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use fluidity::config::DEFAULT_DIRECT_TARGETS;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A tunnel whose server refuses private targets and whose agent has the default `direct_targets`.
async fn bypassing() -> Tunnel {
    tunnel_with(
        |server| server.allow_private_targets = false,
        |agent| {
            agent.direct_targets = DEFAULT_DIRECT_TARGETS
                .iter()
                .map(|r| (*r).to_owned())
                .collect();
        },
    )
    .await
}

/// CONNECT to the echo target, a round trip of bytes, and the half-close answered with "EOF".
async fn connect_round_trip(agent: SocketAddr, target: &str) {
    let mut stream = connect_through(agent, target).await;
    stream.write_all(b"ping").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"pingEOF");
}

/// A WebSocket upgrade in absolute form to the ws echo target, and one text message echoed.
async fn websocket_round_trip(agent: SocketAddr, target: SocketAddr) {
    let mut stream = tokio::net::TcpStream::connect(agent).await.unwrap();
    let request = format!(
        "GET http://{target}/chat HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    ws.send(Message::text("hello")).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "hello"),
        other => panic!("expected the echo, got {other:?}"),
    }
}

async fn metrics(agent: SocketAddr) -> String {
    let response = raw_request(
        agent,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn direct_targets_are_reached_by_the_agent_on_every_path() {
    within(30, async {
        let t = bypassing().await;
        let origin = spawn_origin().await;
        let port = origin.addr.port();
        for url in [
            format!("http://127.0.0.1:{port}/echo"),
            format!("http://localhost:{port}/echo"),
        ] {
            let (status, body) = get(t.agent.addr, &url).await;
            assert_eq!(status, StatusCode::OK, "{url}: {body:?}");
            assert!(body.starts_with(b"GET /echo\n"), "{url}: {body:?}");
        }
        let echo = spawn_echo().await;
        connect_round_trip(t.agent.addr, &echo.addr.to_string()).await;
        let ws = spawn_ws_echo(None).await;
        websocket_round_trip(t.agent.addr, ws.addr).await;

        let text = metrics(t.agent.addr).await;
        for line in [
            "fluidity_agent_direct_requests_total{kind=\"http\"} 2",
            "fluidity_agent_direct_requests_total{kind=\"connect\"} 1",
            "fluidity_agent_direct_requests_total{kind=\"websocket\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    })
    .await;
}

#[tokio::test]
async fn direct_targets_work_while_the_server_is_down() {
    within(30, async {
        let t = bypassing().await;
        let Tunnel { server, agent, .. } = t;
        server.shutdown().await;
        agent.wait_down().await;
        let origin = spawn_origin().await;
        let (status, _) = get(agent.addr, &format!("http://{}/echo", origin.addr)).await;
        assert_eq!(status, StatusCode::OK);
        let echo = spawn_echo().await;
        connect_round_trip(agent.addr, &echo.addr.to_string()).await;
        let ws = spawn_ws_echo(None).await;
        websocket_round_trip(agent.addr, ws.addr).await;
        // A target outside direct_targets still needs the tunnel.
        let (status, _) = get(agent.addr, "http://example.invalid/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    })
    .await;
}

#[tokio::test]
async fn a_refused_direct_target_answers_502() {
    within(20, async {
        let t = bypassing().await;
        let closed = closed_port();
        let response = raw_request(
            t.agent.addr,
            format!("CONNECT {closed} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(parse_status(&response), Some(502));
        let (status, body) = get(t.agent.addr, &format!("http://{closed}/")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    })
    .await;
}

#[tokio::test]
async fn empty_direct_targets_send_loopback_through_the_tunnel() {
    within(20, async {
        // The test agent's direct_targets is empty: the server's private-target refusal shows the tunnel was used.
        let t = tunnel_with(|server| server.allow_private_targets = false, |_| {}).await;
        let origin = spawn_origin().await;
        let (status, body) = get(t.agent.addr, &format!("http://{}/echo", origin.addr)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
        assert!(String::from_utf8_lossy(&body).contains("private address"));
        let response = raw_request(
            t.agent.addr,
            format!(
                "CONNECT {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                origin.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(parse_status(&response), Some(403));
        let text = metrics(t.agent.addr).await;
        for line in [
            "fluidity_agent_direct_requests_total{kind=\"http\"} 0",
            "fluidity_agent_direct_requests_total{kind=\"connect\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    })
    .await;
}
