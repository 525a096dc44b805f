//! WebSocket through the agent: `ws://` as an absolute-form Upgrade request, `wss://` through CONNECT.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// A target that reads the request head of each connection it accepts, hands it over, and answers with `answer`;
/// then it echoes whatever comes after the head.
async fn spawn_head_catcher(
    answer: &'static str,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    AbortOnDrop,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(answer.as_bytes()).await;
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    (addr, rx, AbortOnDrop(task))
}

/// The header lines of a head, lower-cased, without the request or status line.
fn header_lines(head: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter(|line| !line.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

#[tokio::test]
async fn ws_upgrade_forwards_the_plain_paths_headers_and_what_the_upgrade_needs() {
    within(20, async {
        let t = tunnel().await;
        let (target, mut heads, _task) = spawn_head_catcher(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Back\r\n\
             X-Back: 1\r\nKeep-Alive: timeout=5\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .await;

        // A body announced on an upgrade request is refused before anything reaches the target.
        for framing in [
            "Content-Length: 5\r\n\r\nhello",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            let request = format!(
                "GET http://{target}/with-body HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n{framing}"
            );
            assert_eq!(
                raw_status(t.agent.addr, request.as_bytes()).await,
                Some(400),
                "{framing}"
            );
        }

        let mut stream = tokio::net::TcpStream::connect(t.agent.addr).await.unwrap();
        let request = format!(
            "GET http://{target}/chat?room=1 HTTP/1.1\r\nHost: evil.example\r\n\
             Connection: Upgrade, Keep-Alive, X-Hop\r\nUpgrade: websocket\r\nKeep-Alive: timeout=5\r\n\
             X-Hop: 1\r\nProxy-Authorization: Basic YWxpY2U6czNjcmV0\r\nProxy-Foo: bar\r\nTE: trailers\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: http://example.com\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_head(&mut stream).await;

        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("GET /chat?room=1 HTTP/1.1\r\n"), "{head}");
        let mut lines = header_lines(&head);
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "connection: upgrade".to_string(),
                format!("host: {target}"),
                "origin: http://example.com".to_string(),
                "sec-websocket-key: dghlihnhbxbszsbub25jzq==".to_string(),
                "sec-websocket-version: 13".to_string(),
                "upgrade: websocket".to_string(),
            ],
            "{head}"
        );

        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        // hyper adds its own `Date`.
        let mut lines = header_lines(&answer);
        lines.retain(|line| !line.starts_with("date: "));
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "connection: upgrade",
                "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=",
                "upgrade: websocket",
            ],
            "{answer}"
        );

        // The upgrade holds: bytes flow both ways after it.
        stream.write_all(b"after the upgrade").await.unwrap();
        let mut echoed = [0u8; 17];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"after the upgrade");
        assert!(
            heads.try_recv().is_err(),
            "the refused requests reached the target"
        );
    })
    .await;
}
