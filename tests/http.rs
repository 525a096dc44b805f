//! Plain HTTP through the agent: methods, statuses, headers, streamed bodies, keep-alive routing, concurrency and
//! the agent's own endpoints.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;

#[tokio::test]
async fn every_method_reaches_the_origin_with_its_body() {
    within(20, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let mut client = proxy_client(t.agent.addr).await;
        for method in [
            "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND",
        ] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let url = format!("http://{}/echo?q=1", origin.addr);
            let response = client
                .send_request(
                    Request::builder()
                        .method(method.clone())
                        .uri(&url)
                        .body(full("payload"))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{method}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            if method == Method::HEAD {
                assert!(body.is_empty());
                continue;
            }
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(text.starts_with(&format!("{method} /echo?q=1\n")), "{text}");
            assert!(text.contains(&format!("host: {}\n", origin.addr)), "{text}");
        }
        let response = client
            .send_request(
                Request::post(format!("http://{}/body", origin.addr))
                    .body(full("round trip"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "round trip"
        );
    })
    .await;
}

#[tokio::test]
async fn statuses_pass_through_and_redirects_are_not_followed() {
    within(20, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let mut client = proxy_client(t.agent.addr).await;
        for code in [200u16, 201, 204, 301, 302, 304, 404, 418, 500, 503] {
            let response =
                send_get(&mut client, format!("http://{}/status/{code}", origin.addr)).await;
            assert_eq!(response.status().as_u16(), code);
            if code == 301 || code == 302 {
                assert_eq!(response.headers()["location"], "/moved");
            }
            let body = response.into_body().collect().await.unwrap().to_bytes();
            if code != 204 && code != 304 {
                assert_eq!(body, format!("status {code}"));
            }
        }
        let (status, _) = get(t.agent.addr, &format!("http://{}/nowhere", origin.addr)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn headers_keep_multiple_values_and_lose_hop_by_hop_ones() {
    within(20, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let mut client = proxy_client(t.agent.addr).await;
        let request = Request::get(format!("http://{}/echo", origin.addr))
            .header("x-multi", "one")
            .header("x-multi", "two")
            .header("connection", "keep-alive, x-drop-me")
            .header("x-drop-me", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic dXNlcjpwYXNz")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers")
            .header("host", "ignored.example")
            .body(empty_body())
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        let text = String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(text.contains("x-multi: one\nx-multi: two\n"), "{text}");
        for gone in [
            "x-drop-me",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
            "te:",
        ] {
            assert!(!text.contains(gone), "{gone} was forwarded: {text}");
        }
        assert!(
            text.contains(&format!("host: {}\n", origin.addr)),
            "Host must follow the URL: {text}"
        );

        let response = send_get(&mut client, format!("http://{}/multi", origin.addr)).await;
        let multi: Vec<_> = response.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(response.headers().get_all("set-cookie").iter().count(), 2);
        response.into_body().collect().await.unwrap();

        let response = send_get(&mut client, format!("http://{}/hop", origin.addr)).await;
        assert!(response.headers().get("x-hop-secret").is_none());
        assert!(response.headers().get("keep-alive").is_none());
        assert_eq!(response.headers()["x-end-to-end"], "kept");
    })
    .await;
}

#[tokio::test]
async fn one_keep_alive_connection_reaches_two_hosts() {
    within(20, async {
        let t = tunnel().await;
        let first = spawn_origin().await;
        let second = spawn_origin().await;
        let mut client = proxy_client(t.agent.addr).await;
        for origin in [&first, &second, &first] {
            let response = send_get(&mut client, format!("http://{}/echo", origin.addr)).await;
            let text = String::from_utf8(
                response
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap();
            assert!(text.contains(&format!("host: {}\n", origin.addr)), "{text}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_hundred_concurrent_mixed_requests_all_succeed() {
    within(60, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let echo = spawn_echo().await;
        let agent = t.agent.addr;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100u64 {
            let origin = origin.addr;
            let echo = echo.addr;
            tasks.spawn(async move {
                match i % 4 {
                    0 => {
                        let (status, body) =
                            get(agent, &format!("http://{origin}/bytes/{}", 1000 + i)).await;
                        assert_eq!(status, StatusCode::OK);
                        assert_eq!(body.len() as u64, 1000 + i);
                    }
                    1 => {
                        let mut client = proxy_client(agent).await;
                        let response = client
                            .send_request(
                                Request::post(format!("http://{origin}/sink"))
                                    .body(pattern_body(50_000 + i))
                                    .unwrap(),
                            )
                            .await
                            .unwrap();
                        assert_eq!(
                            response.into_body().collect().await.unwrap().to_bytes(),
                            (50_000 + i).to_string()
                        );
                    }
                    2 => {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut stream = connect_through(agent, &echo.to_string()).await;
                        let message = format!("hello {i}");
                        stream.write_all(message.as_bytes()).await.unwrap();
                        stream.shutdown().await.unwrap();
                        let mut back = String::new();
                        stream.read_to_string(&mut back).await.unwrap();
                        assert_eq!(back, format!("{message}EOF"));
                    }
                    _ => {
                        let (status, _) = get(agent, &format!("http://{origin}/status/404")).await;
                        assert_eq!(status, StatusCode::NOT_FOUND);
                    }
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn agent_answers_health_metrics_and_404_but_proxies_absolute_healthz() {
    within(20, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let response = raw_request(
            t.agent.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(r#""tunnel":"up""#), "{text}");

        let response = raw_request(
            t.agent.addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.contains("fluidity_agent_tunnel_up 1"), "{text}");

        let response = raw_request(
            t.agent.addr,
            b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(parse_status(&response), Some(404));

        // The same path on another host is the origin's.
        let (status, body) = get(t.agent.addr, &format!("http://{}/healthz", origin.addr)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, Bytes::from("not found"));
    })
    .await;
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_agent_keeps_serving() {
    within(20, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let cases: [&[u8]; 5] = [
            b"GARBAGE\r\n\r\n",
            b"GET http://[::1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"CONNECT nohostport HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"CONNECT example.com:0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        ];
        for case in cases {
            let response = raw_request(t.agent.addr, case).await.unwrap();
            let status = parse_status(&response).unwrap_or(0);
            assert!(
                (400..500).contains(&status),
                "{:?} answered {status}",
                String::from_utf8_lossy(case)
            );
        }
        // Heads up to about 256 KiB fit hyper's buffer and meet the agent's own limit; larger ones do not fit.
        for kib in [100, 300, 1024] {
            let huge = format!(
                "GET http://{}/echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                origin.addr,
                "a".repeat(kib * 1024)
            );
            assert_eq!(
                raw_status(t.agent.addr, huge.as_bytes()).await,
                Some(431),
                "{kib} KiB head"
            );
        }
        let status = echo_status(t.agent.addr, origin.addr).await;
        assert_eq!(status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn unreachable_targets_get_502_or_504_with_a_reason() {
    within(20, async {
        // A short connect timeout: it also bounds the lookup of an unresolvable name (see below).
        let t = tunnel_with(
            |server| server.connect_timeout = std::time::Duration::from_secs(2),
            |_| {},
        )
        .await;
        let closed = closed_port();
        let (status, body) = get(t.agent.addr, &format!("http://{closed}/")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(
            String::from_utf8_lossy(&body).contains("refused"),
            "{body:?}"
        );
        // 502 or 504, depending on the machine's resolver.
        let (status, body) = get(t.agent.addr, &format!("http://{UNRESOLVABLE_HOST}/")).await;
        assert_unresolvable_answer(status.as_u16(), &String::from_utf8_lossy(&body));
    })
    .await;
}

#[tokio::test]
async fn a_caller_leaving_mid_response_closes_the_origin_connection() {
    within(30, async {
        let t = tunnel().await;
        // The origin sends a head and one chunk of an endless body, then reports when its connection closes.
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        let origin = serve_each(move |mut stream| {
            let closed_tx = closed_tx.clone();
            async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = read_head(&mut stream).await;
                let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                stream.write_all(head.as_bytes()).await.unwrap();
                let mut rest = [0u8; 64];
                while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
                let _ = closed_tx.send(());
            }
        })
        .await;
        let mut caller = tokio::net::TcpStream::connect(t.agent.addr).await.unwrap();
        let request = format!(
            "GET http://{}/stream HTTP/1.1\r\nHost: x\r\n\r\n",
            origin.addr
        );
        tokio::io::AsyncWriteExt::write_all(&mut caller, request.as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut caller).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        drop(caller);
        // The body never ends, so only the caller leaving can close the origin connection.
        closed.recv().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_thousand_downloads_cancelled_midway_keep_one_tunnel() {
    within(120, async {
        let t = tunnel().await;
        // An endless download: a head with a large length, then chunks until the reader goes away.
        let origin = serve_each(|mut stream| async move {
            use tokio::io::AsyncWriteExt;
            let _ = read_head(&mut stream).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = pattern_chunk(0, 16 * 1024);
            while stream.write_all(&chunk).await.is_ok() {}
        })
        .await;
        let agent = t.agent.addr;
        let target = origin.addr;
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..32 {
            callers.spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                for _ in 0..40 {
                    let mut caller = tokio::net::TcpStream::connect(agent).await.unwrap();
                    let request = format!("GET http://{target}/big HTTP/1.1\r\nHost: x\r\n\r\n");
                    caller.write_all(request.as_bytes()).await.unwrap();
                    let head = read_head(&mut caller).await;
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    let mut some = [0u8; 4096];
                    caller.read_exact(&mut some).await.unwrap();
                    // Gone mid-body: the agent resets the stream while the server is still sending.
                }
            });
        }
        while let Some(result) = callers.join_next().await {
            result.unwrap();
        }
        assert_eq!(
            metric(agent, "fluidity_agent_tunnel_connects_total").await,
            Some(1.0),
            "the tunnel was replaced"
        );
    })
    .await;
}

#[tokio::test]
async fn the_server_reuses_origin_connections_across_requests() {
    within(60, async {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let t = tunnel().await;
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let origin = serve_each(move |stream| {
            counter.fetch_add(1, Ordering::SeqCst);
            serve_origin_connection(stream)
        })
        .await;
        let url = format!("http://{}/bytes/1000", origin.addr);
        for _ in 0..20 {
            let (status, body) = get(t.agent.addr, &url).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body.len(), 1000);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one origin connection for 20 requests in a row"
        );
        // Eight callers at once need at most eight, kept for the next round.
        for _ in 0..3 {
            let mut round = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let url = url.clone();
                let agent = t.agent.addr;
                round.spawn(async move { get(agent, &url).await.0 });
            }
            while let Some(status) = round.join_next().await {
                assert_eq!(status.unwrap(), StatusCode::OK);
            }
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!(
            opened <= 8,
            "{opened} origin connections for 8 parallel callers"
        );
    })
    .await;
}
