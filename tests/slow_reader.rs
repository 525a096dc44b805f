//! A slow reader costs a constant amount of memory: flow control holds the origin back, nothing piles up.
//! The only test in this file, so it runs alone in its process: it measures the process's memory, which a test
//! running beside it would add to (tests/common/memory.rs).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use std::time::Duration;

#[tokio::test]
async fn a_slow_reader_costs_a_constant_amount_of_memory() {
    assert_alone_in_file(include_str!("slow_reader.rs"));
    within(60, async {
        let t = tunnel().await;
        let origin = spawn_origin().await;
        let mut client = proxy_client(t.agent.addr).await;
        let (rss_start, _) = memory_kib();
        let response = send_get(
            &mut client,
            format!("http://{}/bytes/4000000000", origin.addr),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        // Read about 64 KiB per 100 ms while the origin could send gigabytes: everything in between must be held
        // back by flow control, not buffered.
        let mut samples = Vec::new();
        for tick in 0..40 {
            let mut taken = 0;
            while taken < 64 * 1024 {
                let frame = body.frame().await.unwrap().unwrap();
                taken += frame.data_ref().map_or(0, bytes::Bytes::len);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tick % 10 == 9 {
                samples.push(memory_kib().0);
            }
        }
        let growth: Vec<u64> = samples
            .iter()
            .map(|s| s.saturating_sub(rss_start) / 1024)
            .collect();
        eprintln!("memory growth over time (MiB): {growth:?}");
        let last = *growth.last().unwrap();
        assert!(last < 64, "a slow reader grew memory by {last} MiB");
        assert!(
            last <= growth[1] + 4,
            "memory kept growing with a slow reader: {growth:?} MiB"
        );
    })
    .await;
}
