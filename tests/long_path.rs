//! A long fat path: the agent's receive windows grow with the bandwidth-delay product. (Alone in its file: the
//! delay relay holds a window's worth of bytes, which would upset the memory measures of other tests.)
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn receive_windows_grow_on_a_long_fat_path_and_the_download_stays_whole() {
    within(120, async {
        let pki = TestPki::new();
        let server = spawn_server(server_config(&pki)).await;
        // 150 ms each way: a 300 ms round trip, so the first 32 MiB stream window holds the download to about
        // 110 MB/s, and a round trip that carries 16 MiB (half of it) shows the window is what limits it.
        let relay = DelayRelay::start(server.addr, std::time::Duration::from_millis(150)).await;
        let agent = spawn_agent(agent_config(&pki, relay.addr)).await;
        agent.wait_up().await;
        let window = "fluidity_agent_stream_window_bytes";
        assert_eq!(
            metric(agent.addr, window).await,
            Some(32.0 * 1024.0 * 1024.0)
        );
        let origin = spawn_origin().await;
        let mut client = proxy_client(agent.addr).await;
        let size: u64 = 256 * 1024 * 1024;
        let response = send_get(&mut client, format!("http://{}/bytes/{size}", origin.addr)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(check_pattern(response.into_body()).await, size);
        let grown = metric(agent.addr, window).await.unwrap();
        assert!(
            grown >= 64.0 * 1024.0 * 1024.0,
            "the stream window stayed at {grown} bytes"
        );
    })
    .await;
}
