//! WebSocket through the agent: `ws://` as an absolute-form Upgrade request, `wss://` through CONNECT.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};

async fn exercise<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    let binary: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(binary));

    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(data) => assert_eq!(&data[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }

    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Library(4000));
            assert_eq!(frame.reason, "bye");
        }
        Some(Ok(other)) => panic!("expected the close echo, got {other:?}"),
        Some(Err(err)) => panic!("websocket error: {err}"),
        None => panic!("closed without a close frame"),
    }
}

#[tokio::test]
async fn ws_upgrade_through_the_agent_relays_text_binary_ping_and_close() {
    within(30, async {
        let t = tunnel().await;
        let target = spawn_ws_echo(None).await;
        let mut stream = tokio::net::TcpStream::connect(t.agent.addr).await.unwrap();
        // tungstenite writes only origin-form request lines, so the proxy request is written by hand.
        let request = format!(
            "GET http://{addr}/chat?room=1 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            addr = target.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        let ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
        exercise(ws).await;
    })
    .await;
}

#[tokio::test]
async fn ws_upgrade_refused_by_the_target_passes_its_answer_back() {
    within(20, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let mut stream = tokio::net::TcpStream::connect(t.agent.addr).await.unwrap();
        let request = format!(
            "GET http://{addr}/nothing-here HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            addr = origin.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    })
    .await;
}

#[tokio::test]
async fn wss_through_connect_relays_text_binary_ping_and_close() {
    within(30, async {
        let t = tunnel().await;
        let target = spawn_ws_echo(Some(t.pki.origin_server_config())).await;
        let stream = connect_through(t.agent.addr, &target.addr.to_string()).await;
        let tls = tokio_rustls::TlsConnector::from(t.pki.origin_client_config())
            .connect("127.0.0.1".try_into().unwrap(), stream)
            .await
            .unwrap();
        let (ws, response) =
            tokio_tungstenite::client_async(format!("wss://{}/chat", target.addr), tls)
                .await
                .unwrap();
        assert_eq!(response.status(), 101);
        exercise(ws).await;
    })
    .await;
}
