//! Mutual TLS on the tunnel: who gets in and who does not.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use http::StatusCode;

/// Tries to open a CONNECT stream to `target` over a fresh tunnel with `config`; true if the server let it through.
async fn handshake_failures(health: std::net::SocketAddr) -> u64 {
    metric(health, "fluidity_server_handshake_failures_total")
        .await
        .unwrap() as u64
}

#[tokio::test]
async fn server_admits_only_tls13_clients_with_a_valid_certificate_from_its_ca() {
    within(30, async {
        let pki = TestPki::new();
        let server = spawn_server(server_config(&pki)).await;
        let echo = spawn_echo().await;
        let target = echo.addr.to_string();
        let ca = pki.path("ca.crt");
        let tls13 = &[&rustls::version::TLS13];

        assert!(
            server_accepts(
                server.addr,
                client_config(&ca, Some(&pki.client_tls()), tls13),
                &target
            )
            .await,
            "a client with a certificate from the CA gets in"
        );

        let refusals = [
            ("no client certificate", client_config(&ca, None, tls13)),
            ("a certificate from a foreign CA", {
                let foreign = TestPki::new();
                client_config(&ca, Some(&foreign.client_tls()), tls13)
            }),
            (
                "an expired certificate",
                client_config(&ca, Some(&pki.expired_client()), tls13),
            ),
            (
                "TLS 1.2 only",
                client_config(&ca, Some(&pki.client_tls()), &[&rustls::version::TLS12]),
            ),
        ];
        for (what, config) in refusals {
            let before = handshake_failures(server.health).await;
            assert!(
                !server_accepts(server.addr, config, &target).await,
                "{what} must be refused"
            );
            let health = server.health;
            eventually(5, "the refusal to be counted", || async move {
                handshake_failures(health).await > before
            })
            .await;
        }
    })
    .await;
}

#[tokio::test]
async fn agent_with_a_foreign_certificate_never_reports_the_tunnel_up() {
    within(30, async {
        let pki = TestPki::new();
        let foreign = TestPki::new();
        let server = spawn_server(server_config(&pki)).await;
        // The agent's whole identity comes from another CA (startup refuses a certificate its own CA did not sign).
        let agent = spawn_agent(agent_config(&foreign, server.addr)).await;
        let health = server.health;
        eventually(10, "the tunnel to fail twice", || async move {
            handshake_failures(health).await >= 2
        })
        .await;
        assert_eq!(health_status(agent.addr).await, Some(503));
        let origin = spawn_origin().await;
        let status = echo_status(agent.addr, origin.addr).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    })
    .await;
}

#[tokio::test]
async fn agent_refuses_a_server_whose_certificate_is_from_a_foreign_ca() {
    within(30, async {
        let pki = TestPki::new();
        let foreign = TestPki::new();
        // The server's identity comes from another CA: the agent must not trust it.
        let server = spawn_server(server_config(&foreign)).await;
        let agent = spawn_agent(agent_config(&pki, server.addr)).await;
        let health = server.health;
        eventually(10, "the agent to give up on the handshake", || async move {
            handshake_failures(health).await >= 1
        })
        .await;
        assert_eq!(health_status(agent.addr).await, Some(503));
    })
    .await;
}

#[tokio::test]
async fn startup_names_the_file_that_is_wrong() {
    within(30, async {
        let pki = TestPki::new();
        let server = spawn_server(server_config(&pki)).await;

        let mut config = agent_config(&pki, server.addr);
        config.tls.cert_file = pki.path("missing.crt");
        let err = fluidity::Agent::bind(config).await.err().unwrap();
        assert!(format!("{err:#}").contains("missing.crt"), "{err:#}");

        let mut config = agent_config(&pki, server.addr);
        config.tls = pki.expired_client();
        let err = fluidity::Agent::bind(config).await.err().unwrap();
        assert!(format!("{err:#}").contains("expired.crt"), "{err:#}");

        let mut config = agent_config(&pki, server.addr);
        config.tls.key_file = pki.path("server.key");
        let err = fluidity::Agent::bind(config).await.err().unwrap();
        assert!(format!("{err:#}").contains("server.key"), "{err:#}");

        std::fs::write(pki.path("garbage.crt"), "not a certificate").unwrap();
        let mut config = server_config(&pki);
        config.tls.cert_file = pki.path("garbage.crt");
        let err = fluidity::Server::bind(config).await.err().unwrap();
        assert!(format!("{err:#}").contains("garbage.crt"), "{err:#}");
    })
    .await;
}

#[tokio::test]
async fn revoking_an_agent_and_reloading_closes_its_tunnel_and_refuses_it() {
    within(30, async {
        let pki = TestPki::new();
        // A CRL must exist for the server to start with one: revoke an unrelated certificate first.
        let other = fluidity::certs::issue_into(pki.dir.path(), "other", pki.dir.path(), 30, false)
            .unwrap();
        let crl = fluidity::certs::revoke(pki.dir.path(), &other[0]).unwrap();
        let mut config = server_config(&pki);
        config.crl_file = Some(crl);
        let server = spawn_server(config).await;
        let agent = spawn_agent(agent_config(&pki, server.addr)).await;
        agent.wait_up().await;

        fluidity::certs::revoke(pki.dir.path(), &pki.path("client.crt")).unwrap();
        server.reloader.reload().unwrap();
        let addr = agent.addr;
        eventually(10, "the revoked agent's tunnel to close", || async move {
            health_status(addr).await == Some(503)
        })
        .await;
        let health = server.health;
        let before = handshake_failures(health).await;
        eventually(
            10,
            "the revoked agent's reconnect to be refused",
            || async move { handshake_failures(health).await > before },
        )
        .await;
        assert_eq!(health_status(agent.addr).await, Some(503));
    })
    .await;
}

#[tokio::test]
async fn an_address_failing_many_handshakes_is_refused_before_tls() {
    within(30, async {
        let pki = TestPki::new();
        let server = spawn_server(server_config(&pki)).await;
        for _ in 0..20 {
            // Not TLS at all: the handshake fails at once.
            let _ = raw_request(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        }
        let health = server.health;
        eventually(5, "twenty failures to be counted", || async move {
            handshake_failures(health).await >= 20
        })
        .await;
        let echo = spawn_echo().await;
        let config = client_config(
            &pki.path("ca.crt"),
            Some(&pki.client_tls()),
            &[&rustls::version::TLS13],
        );
        assert!(!server_accepts(server.addr, config, &echo.addr.to_string()).await);
        assert!(
            metric(server.health, "fluidity_server_connections_refused_total").await >= Some(1.0)
        );
        assert_eq!(
            handshake_failures(server.health).await,
            20,
            "refused before any TLS work"
        );
    })
    .await;
}
