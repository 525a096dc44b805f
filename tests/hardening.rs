//! Limits on the proxy port and the tunnel: proxy authentication, timeouts, rate limits.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use base64::Engine as _;
use common::*;
use fluidity::config::ProxyAuth;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn proxy_auth_requires_basic_credentials_and_never_forwards_them() {
    within(20, async {
        let t = tunnel_with(|_| {}, |agent| agent.proxy_auth = ProxyAuth::parse("alice:s3cret")).await;
        let origin = spawn_origin().await;
        let url = format!("http://{}/echo", origin.addr);

        let mut client = proxy_client(t.agent.addr).await;
        let response = send_get(&mut client, &url).await;
        assert_eq!(response.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert_eq!(response.headers()["proxy-authenticate"], "Basic realm=\"fluidity\"");
        response.into_body().collect().await.unwrap();

        let wrong = base64::engine::general_purpose::STANDARD.encode("alice:guess");
        let response = client
            .send_request(Request::get(&url).header("proxy-authorization", format!("Basic {wrong}")).body(empty_body()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        response.into_body().collect().await.unwrap();

        let right = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let response = client
            .send_request(Request::get(&url).header("proxy-authorization", format!("Basic {right}")).body(empty_body()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&text).contains("proxy-authorization"), "credential forwarded: {text:?}");

        let echo = spawn_echo().await;
        let response = raw_request(
            t.agent.addr,
            format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n", echo.addr).as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(parse_status(&response), Some(407));
        let mut stream = tokio::net::TcpStream::connect(t.agent.addr).await.unwrap();
        stream
            .write_all(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\nProxy-Authorization: Basic {right}\r\n\r\n", echo.addr).as_bytes())
            .await
            .unwrap();
        assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 200"));
    })
    .await;
}

#[tokio::test]
async fn idle_tunnels_are_closed_and_silent_targets_get_504() {
    within(30, async {
        let t = tunnel_with(
            |server| server.idle_timeout = Some(Duration::from_secs(1)),
            |agent| agent.idle_timeout = Some(Duration::from_secs(1)),
        )
        .await;
        let echo = spawn_echo().await;
        let mut stream = connect_through(t.agent.addr, &echo.addr.to_string()).await;
        stream.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "closed after {waited:?}"
        );

        let origin = spawn_origin().await;
        let started = Instant::now();
        let (status, body) = get(t.agent.addr, &format!("http://{}/never", origin.addr)).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await;
}

#[tokio::test]
async fn a_caller_dribbling_its_request_head_is_dropped_and_others_are_served() {
    within(20, async {
        let t = tunnel_with(
            |_| {},
            |agent| agent.header_read_timeout = Duration::from_secs(1),
        )
        .await;
        let origin = spawn_origin().await;
        let mut slow = tokio::net::TcpStream::connect(t.agent.addr).await.unwrap();
        slow.write_all(b"GET http://").await.unwrap();
        let status = echo_status(t.agent.addr, origin.addr).await;
        assert_eq!(status, StatusCode::OK, "other callers are served meanwhile");
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = String::from_utf8_lossy(&rest);
        assert!(
            rest.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    })
    .await;
}

#[tokio::test]
async fn streams_beyond_the_rate_limit_get_429_with_retry_after() {
    within(20, async {
        let t = tunnel_with(
            |server| {
                server.rate_limit_per_agent = 1;
                server.rate_limit_burst = 3;
            },
            |_| {},
        )
        .await;
        let origin = spawn_origin().await;
        let url = format!("http://{}/echo", origin.addr);
        let mut client = proxy_client(t.agent.addr).await;
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for _ in 0..6 {
            let response = send_get(&mut client, &url).await;
            statuses.push(response.status().as_u16());
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                retry_after = response.headers().get("retry-after").cloned();
            }
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
        assert!(statuses[3..].contains(&429), "{statuses:?}");
        let retry_after: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry_after));
    })
    .await;
}
