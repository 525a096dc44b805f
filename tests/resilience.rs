//! Faults on the tunnel: the server going away and coming back, a link cut or gone silent mid-stream, and graceful
//! shutdown with work in flight.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::time::Duration;

#[tokio::test]
async fn tunnel_loss_answers_503_and_502_then_recovers_when_the_server_returns() {
    within(40, async {
        let pki = TestPki::new();
        // The server comes back on the same port: the port stays this test's while no server listens on it.
        let port = ReservedPort::new();
        let mut config = server_config(&pki);
        config.listen = port.addr();
        let server = spawn_server(config.clone()).await;
        let agent = spawn_agent(agent_config(&pki, port.addr())).await;
        agent.wait_up().await;
        let origin = spawn_origin().await;
        let url = format!("http://{}/echo", origin.addr);
        assert_eq!(get(agent.addr, &url).await.0, StatusCode::OK);

        server.shutdown().await;
        let addr = agent.addr;
        eventually(10, "/healthz to report the tunnel down", || async move {
            health_status(addr).await == Some(503)
        })
        .await;
        let (status, body) = get(agent.addr, &url).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(
            String::from_utf8_lossy(&body).contains("tunnel"),
            "{body:?}"
        );

        let _server = spawn_server(config).await;
        agent.wait_up().await;
        assert_eq!(get(agent.addr, &url).await.0, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn requests_in_flight_when_the_link_is_cut_end_with_502_and_the_agent_reconnects() {
    within(40, async {
        // Every field is bound: a field left to `..` would be dropped here, shutting the server down.
        let RelayedTunnel {
            server,
            relay,
            agent,
            pki: _pki,
        } = relayed_tunnel(|_| {}).await;
        let origin = spawn_origin().await;
        let agent_addr = agent.addr;
        let mut pending = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let url = format!("http://{}/never", origin.addr);
            pending.spawn(async move { get(agent_addr, &url).await.0 });
        }
        let server_health = server.health;
        eventually(10, "20 streams to be open on the server", || async move {
            metric(server_health, "fluidity_server_streams_open{kind=\"http\"}").await == Some(20.0)
        })
        .await;
        relay.cut();
        while let Some(status) = pending.join_next().await {
            assert_eq!(status.unwrap(), StatusCode::BAD_GATEWAY);
        }
        agent.wait_up().await;
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);
        assert_eq!(
            metric(agent.addr, "fluidity_agent_tunnel_connects_total").await,
            Some(2.0)
        );
    })
    .await;
}

#[tokio::test]
async fn a_download_cut_mid_body_is_reported_as_truncated_not_complete() {
    within(40, async {
        // Every field is bound: a field left to `..` would be dropped here, shutting the server down.
        let RelayedTunnel {
            server: _server,
            relay,
            agent,
            pki: _pki,
        } = relayed_tunnel(|_| {}).await;
        let origin = spawn_origin().await;
        let mut client = proxy_client(agent.addr).await;
        let response = send_get(
            &mut client,
            format!("http://{}/bytes/1000000000", origin.addr),
        )
        .await;
        let mut body = response.into_body();
        let mut received = 0usize;
        while received < 1_000_000 {
            let frame = body.frame().await.unwrap().unwrap();
            received += frame.data_ref().map_or(0, Bytes::len);
        }
        relay.cut();
        let ended_in_error = loop {
            match body.frame().await {
                None => break false,
                Some(Err(_)) => break true,
                Some(Ok(_)) => {}
            }
        };
        assert!(
            ended_in_error,
            "a cut body must end in an error, not a clean end of stream"
        );
    })
    .await;
}

#[tokio::test]
async fn a_silent_link_is_detected_by_keepalive_and_replaced() {
    within(40, async {
        let RelayedTunnel {
            relay,
            agent,
            server: _server,
            pki: _pki,
        } = relayed_tunnel(|config| config.keepalive = Duration::from_secs(1)).await;
        relay.freeze();
        let started = std::time::Instant::now();
        let addr = agent.addr;
        // A ping every second, a second to answer: the dead link is noticed within about 2 s and replaced.
        eventually(20, "a second tunnel", || async move {
            metric(addr, "fluidity_agent_tunnel_connects_total").await == Some(2.0)
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let origin = spawn_origin().await;
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_upload_finish_and_refuses_new_callers() {
    within(30, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let mut client = proxy_client(t.agent.addr).await;
        let (tx, body) = channel_body();
        let response = tokio::spawn(
            client.send_request(
                Request::post(format!("http://{}/body", origin.addr))
                    .body(body)
                    .unwrap(),
            ),
        );
        tx.send(Bytes::from_static(b"first half, ")).await.unwrap();
        let agent_addr = t.agent.addr;
        let Tunnel {
            agent,
            server,
            pki: _pki,
        } = t;
        let shutdown = tokio::spawn(agent.shutdown());
        eventually(5, "the agent to stop accepting", || async move {
            tokio::net::TcpStream::connect(agent_addr).await.is_err()
        })
        .await;
        tx.send(Bytes::from_static(b"second half")).await.unwrap();
        drop(tx);
        let response = response.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echoed = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed, "first half, second half");
        shutdown.await.unwrap();
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn server_shutdown_lets_an_in_flight_stream_finish() {
    within(30, async {
        let t = tunnel().await;
        let echo = spawn_echo().await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = connect_through(t.agent.addr, &echo.addr.to_string()).await;
        stream.write_all(b"before ").await.unwrap();
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.unwrap();
        let Tunnel {
            agent: _agent,
            server,
            pki: _pki,
        } = t;
        let health = server.health;
        let shutdown = tokio::spawn(server.shutdown());
        eventually(5, "the server to stop serving health", || async move {
            tokio::net::TcpStream::connect(health).await.is_err()
        })
        .await;
        stream.write_all(b"after").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"afterEOF");
        shutdown.await.unwrap();
    })
    .await;
}

/// A target that answers with a head and part of the body, then resets the connection.
async fn spawn_resetting_origin() -> Origin {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    serve_each(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            .await;
        let _ = stream.write_all(&[7u8; 10_000]).await;
        // Linger 0: closing sends RST instead of FIN.
        let _ = stream.set_zero_linger();
        drop(stream);
    })
    .await
}

#[tokio::test]
async fn an_origin_reset_mid_body_reaches_the_caller_as_an_error() {
    within(20, async {
        let t = tunnel().await;
        let origin = spawn_resetting_origin().await;
        let mut client = proxy_client(t.agent.addr).await;
        // Depending on how far the head got before the reset, the caller sees a cut response (no head flushed
        // yet) or a 200 whose body ends in an error; never a body that looks complete.
        let outcome = client
            .send_request(
                Request::get(format!("http://{}/", origin.addr))
                    .body(empty_body())
                    .unwrap(),
            )
            .await;
        if let Ok(response) = outcome {
            let status = response.status();
            let collected = response.into_body().collect().await;
            assert!(
                status == StatusCode::BAD_GATEWAY || collected.is_err(),
                "a body cut by the origin must not look complete ({status})"
            );
        }
        // The tunnel is unharmed.
        let healthy = spawn_origin().await;
        assert_eq!(
            echo_status(t.agent.addr, healthy.addr).await,
            StatusCode::OK
        );
    })
    .await;
}

#[tokio::test]
async fn a_hundred_busy_streams_survive_a_server_restart_with_an_answer_or_502() {
    within(60, async {
        let pki = TestPki::new();
        // The restarted server takes the same port: the port stays this test's while no server listens on it.
        let port = ReservedPort::new();
        let mut config = server_config(&pki);
        config.listen = port.addr();
        let server = spawn_server(config.clone()).await;
        let relay = Relay::start(port.addr()).await;
        let agent = spawn_agent(agent_config(&pki, relay.addr)).await;
        agent.wait_up().await;
        let origin = spawn_origin().await;
        let agent_addr = agent.addr;
        let mut busy = tokio::task::JoinSet::new();
        for i in 0..100u64 {
            let url = format!("http://{}/bytes/{}", origin.addr, 4_000_000 + i);
            busy.spawn(async move {
                let mut client = proxy_client(agent_addr).await;
                let request = Request::get(url).body(empty_body()).unwrap();
                // A stream whose response head had reached the agent, but none of its body, when the link was cut
                // ends with the caller connection closed before the head went out (hyper buffers a head until the
                // first body bytes, and closes without flushing when the body fails): the caller sees an error,
                // as for a body cut midway.
                let Ok(response) = client.send_request(request).await else {
                    return 0;
                };
                if response.status() != StatusCode::OK {
                    return response.status().as_u16();
                }
                match response
                    .into_body()
                    .collect()
                    .await
                    .map(|body| body.to_bytes().len() as u64)
                {
                    Ok(len) if len == 4_000_000 + i => 200,
                    Ok(len) => panic!("a short body ({len} bytes) was passed off as complete"),
                    Err(_) => 0, // cut mid-body: the caller saw an error
                }
            });
        }
        let server_health = server.health;
        eventually(20, "streams to be busy on the server", || async move {
            metric(server_health, "fluidity_server_streams_open{kind=\"http\"}").await >= Some(50.0)
        })
        .await;
        // The server process dies (its connections drop at once) and a new one starts on the same port.
        relay.cut();
        drop(server);
        let _restarted = loop {
            // The old listener closes when its task sees the cancellation; until then the port is in use.
            match fluidity::Server::bind(config.clone()).await {
                Ok(bound) => {
                    let token = tokio_util::sync::CancellationToken::new();
                    tokio::spawn(bound.run(token.clone()));
                    break token.drop_guard();
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        let mut outcomes = std::collections::BTreeMap::new();
        while let Some(outcome) = busy.join_next().await {
            *outcomes.entry(outcome.unwrap()).or_insert(0) += 1;
        }
        assert!(
            outcomes.keys().all(|status| [0, 200, 502].contains(status)),
            "{outcomes:?}"
        );
        assert_eq!(outcomes.values().sum::<i32>(), 100);
        agent.wait_up().await;
        assert_eq!(echo_status(agent.addr, origin.addr).await, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn the_server_closes_a_tunnel_whose_agent_stops_answering_pings() {
    within(30, async {
        let pki = TestPki::new();
        let mut config = server_config(&pki);
        config.keepalive = Duration::from_secs(1);
        let server = spawn_server(config).await;
        let tls = client_config(
            &pki.path("ca.crt"),
            Some(&pki.client_tls()),
            &[&rustls::version::TLS13],
        );
        // One agent keeps its connection polled (it answers pings), the other never reads again.
        let (live_sender, live_conn) = open_tunnel(server.addr, tls.clone()).await.unwrap();
        let live = AbortOnDrop(tokio::spawn(async move {
            let _ = live_conn.await;
        }));
        let (_silent_sender, silent_conn) = open_tunnel(server.addr, tls).await.unwrap();
        let health = server.health;
        let agents = "fluidity_server_agent_connections";
        eventually(10, "both tunnels to be up", || async move {
            metric(health, agents).await == Some(2.0)
        })
        .await;

        eventually(10, "the silent tunnel to be closed", || async move {
            metric(health, agents).await == Some(1.0)
        })
        .await;
        drop(silent_conn);
        // Three ping intervals later the answering one is still up and serving.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(metric(health, agents).await, Some(1.0));
        let probe = Request::get("http://fluidity.invalid:0/").body(()).unwrap();
        let mut sender = live_sender.ready().await.unwrap();
        let (response, _) = sender.send_request(probe, true).unwrap();
        assert_eq!(response.await.unwrap().status(), StatusCode::NO_CONTENT);
        drop(live);
    })
    .await;
}

/// Opens `count` proxy connections, keeps them all open (so each new one goes to the tunnel serving the fewest),
/// and sends one GET for `url` on each, all at once; the statuses come back in order.
async fn get_on_held_connections(
    agent: std::net::SocketAddr,
    count: usize,
    url: &str,
) -> Vec<StatusCode> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut client = proxy_client(agent).await;
        // One answered request first: the agent has placed the connection before the next one arrives. Its body
        // is read to the end, so that the connection is ready for the next request.
        let response = send_get(&mut client, url).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
        clients.push(client);
    }
    let requests = clients.iter_mut().map(|client| async move {
        let response = send_get(client, url).await;
        let status = response.status();
        response.into_body().collect().await.unwrap();
        status
    });
    futures_util::future::join_all(requests).await
}

#[tokio::test]
async fn several_tunnels_come_up_carry_callers_and_shut_down() {
    within(30, async {
        let t = tunnel_with(|_| {}, |config| config.tunnels = 3).await;
        let (agent, health) = (t.agent.addr, t.server.health);
        eventually(10, "three tunnels up", || async move {
            metric(agent, "fluidity_agent_tunnel_up").await == Some(3.0)
                && metric(health, "fluidity_server_agent_connections").await == Some(3.0)
        })
        .await;
        let origin = spawn_origin().await;
        let url = format!("http://{}/echo", origin.addr);
        let statuses = get_on_held_connections(agent, 6, &url).await;
        assert_eq!(statuses, vec![StatusCode::OK; 6]);
        t.agent.shutdown().await;
        eventually(10, "the server to see the tunnels go", || async move {
            metric(health, "fluidity_server_agent_connections").await == Some(0.0)
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn callers_of_a_tunnel_that_is_down_use_one_that_is_up() {
    within(30, async {
        let pki = TestPki::new();
        let server = spawn_server(server_config(&pki)).await;
        // A path to the server that carries the first connection only: one of the two tunnels never comes up.
        let upstream = server.addr;
        let passed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = serve_each(move |mut inbound| {
            let first = !passed.swap(true, std::sync::atomic::Ordering::SeqCst);
            async move {
                if first {
                    let mut outbound = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            }
        })
        .await;
        let mut config = agent_config(&pki, gate.addr);
        config.tunnels = 2;
        let agent = spawn_agent(config).await;
        agent.wait_up().await;
        let addr = agent.addr;
        assert_eq!(metric(addr, "fluidity_agent_tunnel_up").await, Some(1.0));
        let origin = spawn_origin().await;
        let url = format!("http://{}/echo", origin.addr);
        // Four callers spread over both tunnels' threads; those next to the tunnel that is down borrow the other.
        let statuses = get_on_held_connections(addr, 4, &url).await;
        assert_eq!(statuses, vec![StatusCode::OK; 4]);
        assert_eq!(health_status(addr).await, Some(200));
        eventually(10, "the other tunnel to have failed", || async move {
            metric(addr, "fluidity_agent_tunnel_failures_total").await >= Some(1.0)
        })
        .await;
        agent.shutdown().await;
    })
    .await;
}
