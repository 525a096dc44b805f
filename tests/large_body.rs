//! Large bodies stream through byte-exact without being buffered whole.
//! The only test in this file, so it runs alone in its process: it measures the process's memory, which a test
//! running beside it would add to (tests/common/memory.rs).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;

#[tokio::test]
async fn large_upload_and_download_stream_byte_exact_without_buffering() {
    assert_alone_in_file(include_str!("large_body.rs"));
    within(120, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let (rss_before, _) = memory_kib();
        let mut client = proxy_client(t.agent.addr).await;

        const UPLOAD: u64 = 100 * 1024 * 1024;
        let response = client
            .send_request(
                Request::post(format!("http://{}/sink", origin.addr))
                    .body(pattern_body(UPLOAD))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "upload arrived intact");
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            UPLOAD.to_string()
        );

        const DOWNLOAD: u64 = 256 * 1024 * 1024;
        let response = send_get(
            &mut client,
            format!("http://{}/bytes/{DOWNLOAD}", origin.addr),
        )
        .await;
        assert_eq!(
            response.headers()["content-length"],
            DOWNLOAD.to_string().as_str()
        );
        assert_eq!(check_pattern(response.into_body()).await, DOWNLOAD);

        let (_, peak) = memory_kib();
        // Client, agent, server and origin all live in this process: if any of them buffered a body, the peak
        // would grow by at least 100 MiB.
        let growth_mib = peak.saturating_sub(rss_before) / 1024;
        assert!(
            growth_mib < 64,
            "peak memory grew by {growth_mib} MiB while moving 356 MiB"
        );
    })
    .await;
}
