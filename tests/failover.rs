//! Several servers in `server_ip`: the agent moves to the next server at once when its tunnel is lost, moves back
//! to the preferred one once that has answered for the failback period, and lets streams on the old tunnel finish.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use fluidity::Agent;
use fluidity::config::ServerEndpoint;
use http::StatusCode;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The failback period of these tests (30 s in production).
const FAILBACK_AFTER: Duration = Duration::from_secs(1);

/// An agent whose `server_ip` lists `servers` in order, moving back to an earlier one after `failback_after`.
async fn agent_for(
    pki: &TestPki,
    servers: Vec<ServerEndpoint>,
    failback_after: Duration,
) -> AgentHandle {
    let mut config = agent_config(pki, "127.0.0.1:1".parse().unwrap());
    config.servers = servers;
    let agent = Agent::bind(config)
        .await
        .unwrap()
        .failback_after(failback_after);
    spawn_bound_agent(agent)
}

fn endpoint(addr: SocketAddr) -> ServerEndpoint {
    ServerEndpoint::new(addr.ip().to_string(), addr.port())
}

/// A server on a port reserved by the test, so that it can stop and come back on the same port.
async fn server_on(pki: &TestPki, port: &ReservedPort) -> ServerHandle {
    let mut config = server_config(pki);
    config.listen = port.addr();
    spawn_server(config).await
}

/// Waits until `/healthz` says the agent's tunnel is on `server`; returns how long that took.
async fn wait_on(agent: SocketAddr, server: SocketAddr, secs: u64) -> Duration {
    let started = Instant::now();
    let expected = format!(r#""tunnels":[{{"state":"up","server":"{server}"}}]"#);
    eventually(secs, &format!("the tunnel to be on {server}"), || {
        let expected = expected.clone();
        async move { health_body(agent).await.contains(&expected) }
    })
    .await;
    started.elapsed()
}

/// HTTP streams the server has carried.
async fn http_streams(server: &ServerHandle) -> f64 {
    metric(
        server.health,
        "fluidity_server_streams_total{kind=\"http\"}",
    )
    .await
    .unwrap()
}

/// Whether the agent's metrics say tunnel 0 is on `server`.
async fn metrics_say_on(agent: SocketAddr, server: SocketAddr) -> bool {
    let name = format!("fluidity_agent_tunnel_server_info{{tunnel=\"0\",server=\"{server}\"}}");
    metric(agent, &name).await == Some(1.0)
}

/// Sends `text` on a CONNECT stream to the echo target and reads it back.
async fn echo_once(stream: &mut TcpStream, text: &[u8]) {
    stream.write_all(text).await.unwrap();
    let mut back = vec![0u8; text.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, text);
}

#[tokio::test]
async fn a_lost_server_is_replaced_at_once_and_the_preferred_one_taken_back_without_dropping_streams()
 {
    within(60, async {
        let pki = TestPki::new();
        let first_port = ReservedPort::new();
        let first = server_on(&pki, &first_port).await;
        let second = spawn_server(server_config(&pki)).await;
        let agent = agent_for(
            &pki,
            vec![endpoint(first.addr), endpoint(second.addr)],
            FAILBACK_AFTER,
        )
        .await;
        agent.wait_up().await;
        wait_on(agent.addr, first.addr, 5).await;
        assert!(metrics_say_on(agent.addr, first.addr).await);
        let origin = spawn_origin().await;
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);
        assert_eq!(http_streams(&first).await, 1.0);
        assert_eq!(http_streams(&second).await, 0.0);

        // The first server goes away: the second takes over without a backoff.
        let first_addr = first.addr;
        first.shutdown().await;
        let failover = wait_on(agent.addr, second.addr, 10).await;
        assert!(
            failover < Duration::from_secs(2),
            "failover took {failover:?}"
        );
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);
        assert_eq!(http_streams(&second).await, 1.0);
        assert!(metrics_say_on(agent.addr, second.addr).await);
        assert!(!metrics_say_on(agent.addr, first_addr).await);

        // A long-lived stream on the second server, open across the move back.
        let echo = spawn_echo().await;
        let mut long = connect_through(agent.addr, &echo.addr.to_string()).await;
        echo_once(&mut long, b"before").await;

        // The first server returns on its port: new streams move back once it has answered for the period.
        let returned = Instant::now();
        let first = server_on(&pki, &first_port).await;
        wait_on(agent.addr, first.addr, 15).await;
        let failback = returned.elapsed();
        assert!(
            failback >= FAILBACK_AFTER,
            "moved back after {failback:?}, before the failback period"
        );
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);
        assert_eq!(http_streams(&first).await, 1.0);
        assert_eq!(http_streams(&second).await, 1.0);
        assert!(metrics_say_on(agent.addr, first.addr).await);
        assert!(!metrics_say_on(agent.addr, second.addr).await);

        // The stream on the old tunnel still works; once it ends, the old tunnel closes.
        echo_once(&mut long, b"after the move").await;
        let second_health = second.health;
        assert_eq!(
            metric(second_health, "fluidity_server_agent_connections").await,
            Some(1.0)
        );
        drop(long);
        eventually(10, "the old tunnel to close", || async move {
            metric(second_health, "fluidity_server_agent_connections").await == Some(0.0)
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn failover_does_not_wait_for_the_backoff_of_earlier_failed_rounds() {
    within(60, async {
        let pki = TestPki::new();
        let first_port = ReservedPort::new();
        let second_port = ReservedPort::new();
        // The second server by name: its address comes from the resolver, its certificate is checked for
        // `localhost`. The failback period is out of reach, so only failover moves the tunnel.
        let agent = agent_for(
            &pki,
            vec![
                endpoint(first_port.addr()),
                ServerEndpoint::new("localhost", second_port.port()),
            ],
            Duration::from_secs(3600),
        )
        .await;
        // Five rounds of two refused dials: the next backoff is at least 1.6 s.
        let addr = agent.addr;
        eventually(20, "five failed rounds", || async move {
            metric(addr, "fluidity_agent_tunnel_failures_total").await >= Some(10.0)
        })
        .await;
        let second = server_on(&pki, &second_port).await;
        wait_on(agent.addr, second.addr, 15).await;

        let first = server_on(&pki, &first_port).await;
        second.shutdown().await;
        let failover = wait_on(agent.addr, first.addr, 10).await;
        assert!(
            failover < Duration::from_millis(1500),
            "failover took {failover:?}: it waited for a backoff"
        );
        let origin = spawn_origin().await;
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);
        assert_eq!(http_streams(&first).await, 1.0);
    })
    .await;
}

#[tokio::test]
async fn healthz_lists_every_tunnel_and_its_server() {
    within(30, async {
        let pki = TestPki::new();
        let server = spawn_server(server_config(&pki)).await;
        let mut config = agent_config(&pki, server.addr);
        config.tunnels = 2;
        let agent = spawn_agent(config).await;
        let on = format!(r#"{{"state":"up","server":"{}"}}"#, server.addr);
        let expected = format!(r#"{{"status":"up","tunnel":"up","tunnels":[{on},{on}]}}"#);
        let addr = agent.addr;
        eventually(10, "both tunnels up", || {
            let expected = expected.clone();
            async move { health_body(addr).await.trim_end() == expected }
        })
        .await;
        server.shutdown().await;
        let down = r#"{"status":"down","tunnel":"down","tunnels":[{"state":"down","server":null},{"state":"down","server":null}]}"#;
        eventually(10, "both tunnels down", || async move {
            health_body(addr).await.trim_end() == down
        })
        .await;
    })
    .await;
}
