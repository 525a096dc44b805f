//! The server's destination policy: private ranges refused by default, `deny_targets` and `allow_targets`.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn private_targets_are_refused_with_403_unless_allowed() {
    within(20, async {
        let t = tunnel_with(|server| server.allow_private_targets = false, |_| {}).await;
        let origin = spawn_origin().await;
        let port = origin.addr.port();
        for url in [
            format!("http://127.0.0.1:{port}/echo"),
            format!("http://localhost:{port}/echo"),
            format!("http://[::1]:{port}/echo"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "http://10.0.0.1/".to_string(),
        ] {
            let (status, body) = get(t.agent.addr, &url).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{url}");
            assert!(
                String::from_utf8_lossy(&body).contains("private address"),
                "{url}: {body:?}"
            );
        }
        let response = raw_request(
            t.agent.addr,
            format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(parse_status(&response), Some(403));

        let open = tunnel().await;
        let (status, _) = get(open.agent.addr, &format!("http://localhost:{port}/echo")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "allow_private_targets: true lets it through"
        );
    })
    .await;
}

#[tokio::test]
async fn deny_and_allow_rules_apply_to_the_resolved_target() {
    within(20, async {
        let origin = spawn_origin().await;
        let other = spawn_origin().await;
        let t = tunnel_with(
            |server| server.deny_targets = vec![format!(":{}", other.addr.port())],
            |_| {},
        )
        .await;
        let status = echo_status(t.agent.addr, origin.addr).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = get(t.agent.addr, &format!("http://{}/echo", other.addr)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(
            String::from_utf8_lossy(&body).contains(&format!(":{}", other.addr.port())),
            "{body:?}"
        );

        let t = tunnel_with(
            |server| {
                server.allow_private_targets = false;
                server.allow_targets = vec!["127.0.0.0/8".to_string()];
            },
            |_| {},
        )
        .await;
        let status = echo_status(t.agent.addr, origin.addr).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a CIDR allow rule opens that private range"
        );
        let (status, body) = get(t.agent.addr, "http://192.0.2.1/").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(
            String::from_utf8_lossy(&body).contains("allow_targets"),
            "{body:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn ipv6_forms_of_private_ipv4_addresses_are_refused_with_403() {
    within(20, async {
        let t = tunnel_with(|server| server.allow_private_targets = false, |_| {}).await;
        let origin = spawn_origin().await;
        let port = origin.addr.port();
        // NAT64, 6to4 and IPv4-compatible forms of 127.0.0.1, and NAT64 forms of cloud metadata and a reserved
        // range: each reaches the IPv4 address it carries, so each is as private as that address.
        for host in [
            "[64:ff9b::7f00:1]",
            "[64:ff9b::169.254.169.254]",
            "[2002:7f00:1::1]",
            "[::127.0.0.1]",
            "[64:ff9b::198.18.0.1]",
        ] {
            let response = raw_request(
                t.agent.addr,
                format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(parse_status(&response), Some(403), "CONNECT {host}");
            assert!(
                String::from_utf8_lossy(&response).contains("private address"),
                "{host}: {:?}",
                String::from_utf8_lossy(&response)
            );
            let (status, body) = get(t.agent.addr, &format!("http://{host}:{port}/echo")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "GET {host}");
            assert!(
                String::from_utf8_lossy(&body).contains("private address"),
                "{host}: {body:?}"
            );
        }
        for url in [
            "http://240.0.0.1/",
            "http://192.0.0.8/",
            "http://203.0.113.9/",
        ] {
            let (status, _) = get(t.agent.addr, url).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{url}");
        }
    })
    .await;
}
