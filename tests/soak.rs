//! Bounded soak: many short-lived streams and many concurrent ones leave no descriptors or memory behind.
//! (Alone in its file: it measures the process. Longer runs live in bench/.)

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

async fn echo_once(agent: std::net::SocketAddr, target: &str, message: &[u8]) {
    let mut stream = connect_through(agent, target).await;
    stream.write_all(message).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(&back[..message.len()], message);
}

/// Opens `n` CONNECT streams at once, moves a few bytes on each (tiny DATA frames on every stream at the same
/// moment), checks the echo, closes them all; returns the RSS while they were open.
async fn hold_many(agent: std::net::SocketAddr, target: &str, n: usize) -> u64 {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        open.push(connect_through(agent, target).await);
    }
    for stream in &mut open {
        stream.write_all(b"hold").await.unwrap();
    }
    let mut buf = [0u8; 4];
    for (i, stream) in open.iter_mut().enumerate() {
        if let Err(err) = stream.read_exact(&mut buf).await {
            panic!("stream {i} of {n}: {err}");
        }
        assert_eq!(&buf, b"hold");
    }
    memory_kib().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cycles_and_a_thousand_concurrent_streams_leave_nothing_behind() {
    within(240, async {
        let t = tunnel().await;
        let echo = spawn_echo().await;
        let target = echo.addr.to_string();
        let agent = t.agent.addr;
        // One round first: the allocator keeps what it has touched, so the baseline is taken after a round.
        hold_many(agent, &target, 1000).await;
        let fds_before = open_fds();
        eventually(20, "descriptors to settle", || async move { open_fds() <= fds_before }).await;
        let (rss_before, _) = memory_kib();

        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let target = target.clone();
            workers.spawn(async move {
                for _ in 0..1250 {
                    echo_once(agent, &target, b"cycle").await;
                }
            });
        }
        while let Some(done) = workers.join_next().await {
            done.unwrap();
        }
        let rss_open = hold_many(agent, &target, 1000).await;

        eventually(20, "descriptors to return to the baseline", || async move {
            open_fds() <= fds_before
        })
        .await;
        let (rss_after, _) = memory_kib();
        eprintln!(
            "rss after a first round {rss_before} KiB, with 1000 streams open {rss_open} KiB, after 10 000 cycles and \
             a second round {rss_after} KiB"
        );
        assert!(
            rss_after < rss_before + 16 * 1024,
            "memory grew across rounds: {rss_before} KiB before, {rss_after} KiB after"
        );
    })
    .await;
}
