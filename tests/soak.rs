//! Bounded soak: many short-lived streams and many concurrent ones leave no descriptors or memory behind.
//! The only test in this file, so it runs alone in its process: it measures the process's memory, which a test
//! running beside it would add to (tests/common/memory.rs). Longer runs live in bench/.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The allocator the `fluidity` binary ships with, so the memory measured is what users' processes would keep.
/// With glibc's malloc here, RSS rose by 8-16 MiB from a first round of held streams to a second and settled after
/// the fourth (a new arena per thread that served them), which said nothing about Fluidity.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// `n` CONNECT streams opened, echoed once and closed, eight at a time.
async fn cycles(agent: std::net::SocketAddr, target: &str, n: usize) {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let target = target.to_owned();
        workers.spawn(async move {
            for _ in 0..n / 8 {
                echo_once(agent, &target, b"cycle").await;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
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

/// A thousand streams held at once, then 10 000 opened and closed (eight at a time): memory the held streams freed
/// is given back as the threads that held them work on. Returns the RSS while the thousand were open and at the end.
async fn round(agent: std::net::SocketAddr, target: &str) -> (u64, u64) {
    let open = hold_many(agent, target, 1000).await;
    cycles(agent, target, 10_000).await;
    (open, memory_kib().0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cycles_and_a_thousand_concurrent_streams_leave_nothing_behind() {
    assert_alone_in_file(include_str!("soak.rs"));
    within(240, async {
        let t = tunnel().await;
        let echo = spawn_echo().await;
        let target = echo.addr.to_string();
        let agent = t.agent.addr;
        let fds_before = open_fds();
        // The same round twice: the allocator keeps what it has touched, so the baseline is taken after the first.
        let (_, rss_before) = round(agent, &target).await;
        let (rss_open, rss_after) = round(agent, &target).await;
        eventually(20, "descriptors to return to the baseline", || async move {
            open_fds() <= fds_before
        })
        .await;
        eprintln!(
            "rss after a first round {rss_before} KiB; in the second, with 1000 streams open {rss_open} KiB, after \
             they closed and 10 000 cycles {rss_after} KiB"
        );
        assert!(
            rss_after < rss_before + 4 * 1024,
            "memory grew across rounds: {rss_before} KiB before, {rss_after} KiB after"
        );
    })
    .await;
}
