//! The agent's status page: `GET /status` (JSON) reports the tunnels, traffic, requests and recent failures; `GET /`
//! is a self-contained page that headless Chromium loads and fills from `/status`; both need the proxy credential
//! when `proxy_auth` is set and answer only at an IP address or `localhost`.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use fluidity::config::ProxyAuth;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

async fn status_json(agent: SocketAddr) -> serde_json::Value {
    let (head, body) = get_own(agent, "/status", &agent.to_string(), "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn status_reports_the_tunnel_traffic_requests_and_the_last_failures() {
    within(30, async {
        let t = tunnel().await;
        let agent = t.agent.addr;
        let before = status_json(agent).await;
        assert_eq!(before["requests"], 0, "{before}");
        assert_eq!(before["recent_errors"].as_array().unwrap().len(), 0);

        let origin = spawn_origin().await;
        assert_eq!(echo_status(agent, origin.addr).await, 200);
        let closed = closed_port();
        let (status, _) = get(agent, &format!("http://{}/", closed.addr)).await;
        assert_eq!(status, 502);

        let now = status_json(agent).await;
        assert_eq!(now["tunnels"][0]["state"], "up", "{now}");
        assert_eq!(
            now["tunnels"][0]["server"],
            format!("127.0.0.1:{}", t.server.addr.port()),
            "{now}"
        );
        assert_eq!(now["requests"], 2, "{now}");
        assert_eq!(now["errors"], 1, "{now}");
        assert!(now["bytes_down"].as_u64().unwrap() > 0, "{now}");
        assert!(now["tunnel_connects"].as_u64().unwrap() >= 1, "{now}");
        assert!(now["cert_expiry_secs"].as_i64().unwrap() > 86_400, "{now}");
        assert_eq!(now["listen"], agent.to_string());
        for kind in ["http", "connect", "websocket", "socks"] {
            assert_eq!(now["streams_open"][kind], 0, "{now}");
        }
        let errors = now["recent_errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{now}");
        assert_eq!(errors[0]["kind"], "http");
        assert_eq!(errors[0]["target"], closed.addr.to_string());
        assert_eq!(
            errors[0]["reason"], "502 Bad Gateway from the server: target refused the connection",
            "{now}"
        );

        // An open CONNECT stream is counted while it relays.
        let echo = spawn_echo().await;
        let stream = connect_through(agent, &echo.addr.to_string()).await;
        eventually(10, "the CONNECT stream to show as open", || async {
            status_json(agent).await["streams_open"]["connect"] == 1
        })
        .await;
        drop(stream);
    })
    .await;
}

#[tokio::test]
async fn the_page_and_its_data_need_the_proxy_credential_and_a_local_host() {
    within(30, async {
        let t = tunnel_with(
            |_| {},
            |agent| agent.proxy_auth = ProxyAuth::parse("alice:s3cret"),
        )
        .await;
        let agent = t.agent.addr;
        let host = agent.to_string();
        // alice:s3cret and alice:wrong in Base64.
        let good = "YWxpY2U6czNjcmV0";
        let bad = "YWxpY2U6d3Jvbmc=";
        for path in ["/", "/status"] {
            let (head, _) = get_own(agent, path, &host, "").await;
            assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
            assert!(
                head.contains("www-authenticate: Basic realm=\"fluidity\""),
                "{path}: {head}"
            );
            let (head, _) = get_own(
                agent,
                path,
                &host,
                &format!("Authorization: Basic {bad}\r\n"),
            )
            .await;
            assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
            for name in ["Authorization", "Proxy-Authorization"] {
                let (head, _) =
                    get_own(agent, path, &host, &format!("{name}: Basic {good}\r\n")).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{path} {name}: {head}");
            }
            // A name rebound to the loopback address is not the agent's own page.
            let (head, _) = get_own(
                agent,
                path,
                "rebound.example:8080",
                &format!("Authorization: Basic {good}\r\n"),
            )
            .await;
            assert!(head.starts_with("HTTP/1.1 403"), "{path}: {head}");
        }
        let (head, page) = get_own(
            agent,
            "/",
            "localhost",
            &format!("Authorization: Basic {good}\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/html"), "{head}");
        assert!(
            lower.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
        // No outside assets: nothing is loaded from anywhere but the agent's own /status.
        for outside in ["src=", "href=", "@import", "url(", "http://", "https://"] {
            assert!(!page.contains(outside), "the page names {outside}");
        }
    })
    .await;
}

/// Loads `url` in headless Chromium, lets its scripts run and returns the DOM.
fn chromium_dom(url: &str) -> String {
    let profile = tempfile::TempDir::new().unwrap();
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-proxy-server",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(err) => panic!(
            "this test needs Chromium (`chromium`) to load the status page: {err}; install it with \
             `apt-get install -y chromium`"
        ),
    };
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_the_tunnel_its_server_and_the_last_failure() {
    within(60, async {
        let t = tunnel().await;
        let agent = t.agent.addr;
        let closed = closed_port();
        let (status, _) = get(agent, &format!("http://{}/", closed.addr)).await;
        assert_eq!(status, 502);

        let url = format!("http://{agent}/");
        let dom = tokio::task::spawn_blocking(move || chromium_dom(&url))
            .await
            .unwrap();
        assert!(dom.contains(r#"class="badge up">tunnel up<"#), "{dom}");
        let server = format!("<td>127.0.0.1:{}</td>", t.server.addr.port());
        assert!(dom.contains(&server), "{dom}");
        assert!(dom.contains(&format!("<td>{}</td>", closed.addr)), "{dom}");
        assert!(
            dom.contains("502 Bad Gateway from the server: target refused the connection"),
            "{dom}"
        );
        assert!(dom.contains("1 failed"), "{dom}");
        assert!(
            !dom.contains(r#"id="offline" style="display: block"#),
            "{dom}"
        );
    })
    .await;
}
