//! SOCKS5 and SOCKS4/4a on the agent's proxy port, beside HTTP: real callers (curl, Python `requests` through
//! PySocks), and byte scripts for every reply code and for malformed, unsupported, truncated and stalled input.
//! Each test also checks that the agent still serves HTTP and SOCKS afterwards.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use fluidity::config::{DEFAULT_DIRECT_TARGETS, ProxyAuth};
use http::StatusCode;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The SOCKS5 "no authentication" greeting and its answer.
const GREETING: &[u8] = &[5, 1, 0];
const NO_AUTH: [u8; 2] = [5, 0];

/// A SOCKS5 reply with `code` and the bound address `0.0.0.0:0`, as the agent sends every reply.
fn reply(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// A SOCKS5 CONNECT request for an address literal.
fn request_for(addr: SocketAddr) -> Vec<u8> {
    let mut request = vec![5, 1, 0];
    match addr {
        SocketAddr::V4(v4) => {
            request.push(1);
            request.extend_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            request.push(4);
            request.extend_from_slice(&v6.ip().octets());
        }
    }
    request.extend_from_slice(&addr.port().to_be_bytes());
    request
}

/// A SOCKS5 CONNECT request for a host name, sent as a name (address type 3).
fn request_for_name(name: &str, port: u16) -> Vec<u8> {
    let mut request = vec![5, 1, 0, 3, u8::try_from(name.len()).unwrap()];
    request.extend_from_slice(name.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    request
}

/// Reads exactly `n` bytes, failing the test after 5 s.
async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .expect("the agent answered within 5 s")
        .expect("the agent answered in full");
    buf
}

/// Reads until the agent closes (bounded to 5 s): what it sent, and whether it closed.
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await {
        Ok(Ok(_)) => (out, true),
        Ok(Err(_)) => (out, true),
        Err(_) => (out, false),
    }
}

/// Greets without authentication and sends `request`; returns the stream and the reply.
async fn socks5(agent: SocketAddr, request: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(agent).await.unwrap();
    stream.write_all(GREETING).await.unwrap();
    assert_eq!(read_n(&mut stream, 2).await, NO_AUTH);
    stream.write_all(request).await.unwrap();
    let reply = read_n(&mut stream, 10).await;
    (stream, reply)
}

/// Sends "ping", half-closes, and expects the echo target's "pingEOF".
async fn echo_round_trip(mut stream: TcpStream) {
    stream.write_all(b"ping").await.unwrap();
    stream.shutdown().await.unwrap();
    let (back, closed) = read_to_close(&mut stream).await;
    assert!(closed, "the stream did not end");
    assert_eq!(back, b"pingEOF");
}

/// A SOCKS5 round trip to the echo target at `echo`, by address.
async fn socks5_round_trip(agent: SocketAddr, echo: SocketAddr) {
    let (stream, reply_bytes) = socks5(agent, &request_for(echo)).await;
    assert_eq!(reply_bytes, reply(0));
    echo_round_trip(stream).await;
}

/// Sends raw bytes on a fresh connection and returns everything the agent sent before it closed.
async fn answer_to(agent: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(agent).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let (out, closed) = read_to_close(&mut stream).await;
    assert!(
        closed,
        "the agent kept the connection open after {out:02x?}"
    );
    out
}

/// The HTTP proxy on the same port still works.
async fn http_still_works(agent: SocketAddr) {
    let origin = spawn_origin().await;
    assert_eq!(echo_status(agent, origin.addr).await, StatusCode::OK);
}

/// The agent's `/metrics` text.
async fn metrics(agent: SocketAddr) -> String {
    let response = raw_request(
        agent,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// Runs a command to completion off the runtime; its status, stdout and stderr.
async fn run(mut command: Command) -> (bool, String, String) {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the command runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// True when `program --version` runs; otherwise prints why the test is skipped.
fn installed(program: &str, test: &str) -> bool {
    let found = Command::new(program).arg("--version").output().is_ok();
    if !found {
        eprintln!("skipping {test}: {program} is not installed (.ci/run installs it)");
    }
    found
}

/// `curl` through the agent with `args` (the proxy flags) to `url`; the body, after asserting success.
async fn curl(args: &[&str], url: &str) -> String {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--noproxy", ""])
        .args(args)
        .arg(url)
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("http_proxy");
    let (ok, stdout, all) = run(command).await;
    assert!(ok, "curl {args:?} {url} failed: {all}");
    stdout
}

#[tokio::test]
async fn curl_reaches_targets_with_every_socks_flavour_beside_http() {
    within(60, async {
        if !installed(
            "curl",
            "curl_reaches_targets_with_every_socks_flavour_beside_http",
        ) {
            return;
        }
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let port = origin.addr.port();
        let proxy = t.agent.addr.to_string();
        for flag in ["--socks5-hostname", "--socks5", "--socks4a", "--socks4"] {
            for host in ["localhost", "127.0.0.1"] {
                let url = format!("http://{host}:{port}/echo");
                let body = curl(&[flag, &proxy], &url).await;
                assert!(body.starts_with("GET /echo\n"), "{flag} {url}: {body:?}");
            }
        }
        http_still_works(t.agent.addr).await;
        let text = metrics(t.agent.addr).await;
        assert!(
            text.contains("fluidity_agent_requests_total{kind=\"socks\",outcome=\"ok\"} 8"),
            "{text}"
        );
    })
    .await;
}

#[tokio::test]
async fn python_requests_uses_socks5h() {
    within(60, async {
        // Debian's python3-socks and python3-requests are under /usr/bin/python3; another python3 on PATH may
        // lack them.
        let python = ["python3", "/usr/bin/python3"].into_iter().find(|python| {
            Command::new(python)
                .args(["-c", "import requests, socks"])
                .output()
                .is_ok_and(|out| out.status.success())
        });
        let Some(python) = python else {
            eprintln!(
                "skipping python_requests_uses_socks5h: no python3 with requests and PySocks \
                 (.ci/run installs python3-requests and python3-socks)"
            );
            return;
        };
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let script = "import sys, requests\n\
             proxies = {'http': 'socks5h://' + sys.argv[1]}\n\
             r = requests.get(sys.argv[2], proxies=proxies, timeout=10)\n\
             print(r.status_code)\n\
             print(r.text, end='')\n";
        let mut command = Command::new(python);
        command
            .args(["-c", script])
            .arg(t.agent.addr.to_string())
            .arg(format!("http://localhost:{}/echo", origin.addr.port()));
        let (ok, stdout, all) = run(command).await;
        assert!(ok, "python failed: {all}");
        assert!(stdout.starts_with("200\nGET /echo\n"), "{stdout:?}");
        http_still_works(t.agent.addr).await;
    })
    .await;
}

#[tokio::test]
async fn socks5_connects_to_ipv4_ipv6_and_names_and_sends_names_unresolved() {
    within(30, async {
        // The server refuses the name `localhost`, not its address: a refusal proves the name reached the server
        // as a name.
        let t = tunnel_with(
            |server| server.deny_targets = vec!["localhost".into()],
            |_| {},
        )
        .await;
        let echo = spawn_echo().await;
        socks5_round_trip(t.agent.addr, echo.addr).await;

        let (_, reply_bytes) = socks5(
            t.agent.addr,
            &request_for_name("localhost", echo.addr.port()),
        )
        .await;
        assert_eq!(
            reply_bytes,
            reply(2),
            "the server's 403 is 'not allowed by ruleset'"
        );

        let (stream, reply_bytes) = socks5(
            t.agent.addr,
            &request_for_name("127.0.0.1", echo.addr.port()),
        )
        .await;
        assert_eq!(reply_bytes, reply(0));
        echo_round_trip(stream).await;

        match TcpListener::bind("[::1]:0").await {
            Ok(listener) => {
                let addr = listener.local_addr().unwrap();
                let served = tokio::spawn(async move {
                    let (mut conn, _) = listener.accept().await.unwrap();
                    let mut got = [0u8; 4];
                    conn.read_exact(&mut got).await.unwrap();
                    conn.write_all(&got).await.unwrap();
                });
                let (mut stream, reply_bytes) = socks5(t.agent.addr, &request_for(addr)).await;
                assert_eq!(reply_bytes, reply(0));
                stream.write_all(b"six!").await.unwrap();
                assert_eq!(read_n(&mut stream, 4).await, b"six!");
                served.await.unwrap();
            }
            Err(err) => eprintln!("skipping the IPv6 target: cannot listen on [::1]: {err}"),
        }
        http_still_works(t.agent.addr).await;
    })
    .await;
}

#[tokio::test]
async fn socks_failures_carry_the_servers_reason() {
    within(30, async {
        let t = tunnel_with(|server| server.deny_targets = vec![":9".into()], |_| {}).await;
        let closed = closed_port();
        let (mut stream, reply_bytes) = socks5(t.agent.addr, &request_for(closed.addr)).await;
        assert_eq!(
            reply_bytes,
            reply(5),
            "a closed port is 'connection refused'"
        );
        assert!(
            read_to_close(&mut stream).await.1,
            "closed after the refusal"
        );

        let (_, reply_bytes) =
            socks5(t.agent.addr, &request_for("127.0.0.1:9".parse().unwrap())).await;
        assert_eq!(
            reply_bytes,
            reply(2),
            "deny_targets is 'not allowed by ruleset'"
        );

        // The `.invalid` top-level domain never resolves (RFC 6761).
        let (_, reply_bytes) = socks5(t.agent.addr, &request_for_name("nowhere.invalid", 80)).await;
        assert_eq!(
            reply_bytes,
            reply(4),
            "a name that does not resolve is 'host unreachable'"
        );

        let four = [
            &[4, 1][..],
            &closed.addr.port().to_be_bytes(),
            &[127, 0, 0, 1],
            b"me\0",
        ]
        .concat();
        assert_eq!(
            answer_to(t.agent.addr, &four).await,
            [0, 0x5b, 0, 0, 0, 0, 0, 0]
        );

        let text = metrics(t.agent.addr).await;
        assert!(
            text.contains("fluidity_agent_requests_total{kind=\"socks\",outcome=\"error\"} 3"),
            "{text}"
        );
        http_still_works(t.agent.addr).await;
    })
    .await;
}

#[tokio::test]
async fn socks_with_the_tunnel_down_is_a_general_failure() {
    within(30, async {
        let t = tunnel().await;
        let Tunnel { server, agent, .. } = t;
        server.shutdown().await;
        agent.wait_down().await;
        let (_, reply_bytes) =
            socks5(agent.addr, &request_for("127.0.0.1:80".parse().unwrap())).await;
        assert_eq!(reply_bytes, reply(1));
        let text = metrics(agent.addr).await;
        assert!(
            text.contains(
                "fluidity_agent_requests_total{kind=\"socks\",outcome=\"tunnel_down\"} 1"
            ),
            "{text}"
        );
    })
    .await;
}

#[tokio::test]
async fn fast_connect_replies_before_the_server_answers() {
    within(30, async {
        let t = tunnel_with(|_| {}, |agent| agent.fast_connect = true).await;
        let echo = spawn_echo().await;
        socks5_round_trip(t.agent.addr, echo.addr).await;
        // A target that refuses: "succeeded" at once, then the connection closes.
        let closed = closed_port();
        let (mut stream, reply_bytes) = socks5(t.agent.addr, &request_for(closed.addr)).await;
        assert_eq!(reply_bytes, reply(0));
        let (rest, ended) = read_to_close(&mut stream).await;
        assert!(ended && rest.is_empty(), "{rest:?}");
    })
    .await;
}

#[tokio::test]
async fn direct_targets_apply_to_socks() {
    within(30, async {
        // The server refuses private targets, so only a direct connection from the agent reaches the echo target.
        let t = tunnel_with(
            |server| server.allow_private_targets = false,
            |agent| {
                agent.direct_targets = DEFAULT_DIRECT_TARGETS
                    .iter()
                    .map(|r| (*r).to_owned())
                    .collect();
            },
        )
        .await;
        let echo = spawn_echo().await;
        socks5_round_trip(t.agent.addr, echo.addr).await;
        let (stream, reply_bytes) = socks5(
            t.agent.addr,
            &request_for_name("localhost", echo.addr.port()),
        )
        .await;
        assert_eq!(reply_bytes, reply(0));
        echo_round_trip(stream).await;
        let four = [
            &[4, 1][..],
            &echo.addr.port().to_be_bytes(),
            &[127, 0, 0, 1],
            b"\0",
        ]
        .concat();
        let mut stream = TcpStream::connect(t.agent.addr).await.unwrap();
        stream.write_all(&four).await.unwrap();
        assert_eq!(read_n(&mut stream, 8).await, [0, 0x5a, 0, 0, 0, 0, 0, 0]);
        echo_round_trip(stream).await;

        let text = metrics(t.agent.addr).await;
        assert!(
            text.contains("fluidity_agent_direct_requests_total{kind=\"socks\"} 3"),
            "{text}"
        );
        // Through the tunnel, the same target is refused by the server.
        let (_, reply_bytes) =
            socks5(t.agent.addr, &request_for("192.0.2.1:80".parse().unwrap())).await;
        assert_eq!(reply_bytes, reply(2));
    })
    .await;
}

#[tokio::test]
async fn proxy_auth_requires_the_credential_from_socks5_and_refuses_socks4() {
    within(60, async {
        let t = tunnel_with(
            |_| {},
            |agent| agent.proxy_auth = Some(ProxyAuth::new("alice", "s3cret")),
        )
        .await;
        let echo = spawn_echo().await;
        let agent = t.agent.addr;

        // No "username/password" among the methods: none acceptable.
        assert_eq!(answer_to(agent, GREETING).await, [5, 0xff]);
        // A wrong password: the RFC 1929 failure, then a close.
        let wrong = [&[5, 1, 2][..], b"\x01\x05alice\x06s3creT"].concat();
        assert_eq!(answer_to(agent, &wrong).await, [5, 2, 1, 1]);
        // The right one, then a stream.
        let mut stream = TcpStream::connect(agent).await.unwrap();
        stream.write_all(&[5, 2, 0, 2]).await.unwrap();
        assert_eq!(read_n(&mut stream, 2).await, [5, 2]);
        stream.write_all(b"\x01\x05alice\x06s3cret").await.unwrap();
        assert_eq!(read_n(&mut stream, 2).await, [1, 0]);
        stream.write_all(&request_for(echo.addr)).await.unwrap();
        assert_eq!(read_n(&mut stream, 10).await, reply(0));
        echo_round_trip(stream).await;
        // SOCKS4 cannot authenticate.
        let four = [
            &[4, 1][..],
            &echo.addr.port().to_be_bytes(),
            &[127, 0, 0, 1],
            b"alice\0",
        ]
        .concat();
        assert_eq!(answer_to(agent, &four).await, [0, 0x5b, 0, 0, 0, 0, 0, 0]);

        if installed(
            "curl",
            "the curl part of proxy_auth_requires_the_credential_from_socks5_and_refuses_socks4",
        ) {
            let origin = spawn_origin().await;
            let url = format!("http://localhost:{}/echo", origin.addr.port());
            let proxy = agent.to_string();
            let body = curl(
                &["--socks5-hostname", &proxy, "--proxy-user", "alice:s3cret"],
                &url,
            )
            .await;
            assert!(body.starts_with("GET /echo\n"), "{body:?}");
            let mut command = Command::new("curl");
            command.args([
                "-sS",
                "--max-time",
                "10",
                "--socks5-hostname",
                &proxy,
                "--proxy-user",
                "alice:nope",
                &url,
            ]);
            let (ok, _, all) = run(command).await;
            assert!(!ok, "curl with a wrong password got through: {all}");
        }
        // HTTP on the same port: 407 without the credential.
        let origin = spawn_origin().await;
        let (status, _) = get(agent, &format!("http://{}/echo", origin.addr)).await;
        assert_eq!(status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    })
    .await;
}

#[tokio::test]
async fn malformed_and_unsupported_requests_get_the_protocols_answer() {
    within(30, async {
        let t = tunnel().await;
        let agent = t.agent.addr;
        let refused4 = vec![0, 0x5b, 0, 0, 0, 0, 0, 0];
        let after_greeting = |code: u8| [&NO_AUTH[..], &reply(code)].concat();
        let request = |bytes: &[u8]| [GREETING, bytes].concat();
        // (what, bytes sent, the agent's whole answer)
        let answered: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            (
                "BIND",
                request(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]),
                after_greeting(7),
            ),
            (
                "UDP ASSOCIATE",
                request(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]),
                after_greeting(7),
            ),
            (
                "an unknown command",
                request(&[5, 9, 0, 1, 127, 0, 0, 1, 0, 80]),
                after_greeting(7),
            ),
            ("address type 9", request(&[5, 1, 0, 9]), after_greeting(8)),
            (
                "a request of another version",
                request(&[4, 1, 0, 1, 127, 0, 0, 1, 0, 80]),
                after_greeting(1),
            ),
            (
                "port 0",
                request(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 0]),
                after_greeting(1),
            ),
            (
                "an empty name",
                request(&[5, 1, 0, 3, 0, 0, 80]),
                after_greeting(1),
            ),
            (
                "a name with a port in it",
                request(&request_for_name("a.b:22", 80)),
                after_greeting(1),
            ),
            ("no methods", vec![5, 0], vec![5, 0xff]),
            ("only GSSAPI", vec![5, 1, 1], vec![5, 0xff]),
            (
                "SOCKS4 BIND",
                [&[4, 2, 0, 80, 127, 0, 0, 1][..], b"\0"].concat(),
                refused4.clone(),
            ),
            (
                "a SOCKS4a name that is no host",
                [&[4, 1, 0, 80, 0, 0, 0, 1][..], b"\0a b\0"].concat(),
                refused4.clone(),
            ),
            (
                "a SOCKS4 user id that never ends",
                [&[4, 1, 0, 80, 127, 0, 0, 1][..], &[b'u'; 300]].concat(),
                refused4,
            ),
        ];
        for (what, sent, expected) in &answered {
            assert_eq!(&answer_to(agent, sent).await, expected, "{what}");
        }
        // Truncated: the caller half-closes mid-message; the agent closes after what it had answered.
        let truncated: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            ("a truncated greeting", vec![5, 3, 0], vec![]),
            (
                "a truncated request",
                request(&[5, 1, 0, 3, 20, b'a']),
                NO_AUTH.to_vec(),
            ),
            ("a truncated SOCKS4 request", vec![4, 1, 0, 80, 127], vec![]),
        ];
        for (what, sent, expected) in &truncated {
            let mut stream = TcpStream::connect(agent).await.unwrap();
            stream.write_all(sent).await.unwrap();
            stream.shutdown().await.unwrap();
            let (got, closed) = read_to_close(&mut stream).await;
            assert!(closed, "{what}: the agent kept the connection open");
            assert_eq!(&got, expected, "{what}");
        }
        let echo = spawn_echo().await;
        socks5_round_trip(agent, echo.addr).await;
        http_still_works(agent).await;
    })
    .await;
}

#[tokio::test]
async fn a_stalled_socks_caller_is_dropped_after_the_header_read_timeout() {
    within(30, async {
        let t = tunnel_with(
            |_| {},
            |agent| agent.header_read_timeout = Duration::from_secs(1),
        )
        .await;
        let agent = t.agent.addr;
        let started = Instant::now();
        let mut stalled = Vec::new();
        for partial in [&[5][..], &[5, 1, 0, 5, 1, 0, 3], &[4, 1, 0, 80, 127, 0]] {
            let mut stream = TcpStream::connect(agent).await.unwrap();
            stream.write_all(partial).await.unwrap();
            stalled.push(stream);
        }
        // While they stall, others are served.
        let echo = spawn_echo().await;
        socks5_round_trip(agent, echo.addr).await;
        http_still_works(agent).await;
        for mut stream in stalled {
            let (got, closed) = read_to_close(&mut stream).await;
            assert!(closed, "a stalled caller was kept");
            assert!(got.is_empty() || got == NO_AUTH, "{got:?}");
        }
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(4),
            "dropped only after {waited:?}"
        );
    })
    .await;
}
