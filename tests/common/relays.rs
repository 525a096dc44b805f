//! TCP relays to put between an agent and a server: [`Relay`] breaks the link on purpose (cut, freeze, one-way),
//! [`DelayRelay`] makes loopback a long path.
#![allow(
    dead_code,
    reason = "every test crate compiles the whole harness and each uses a different part of this module"
)]

use super::targets::{AbortOnDrop, Origin, serve_each};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TCP relay between an agent and a server, to break the link on purpose: `cut` closes every connection it
/// carries now; `freeze` makes them go silent (bytes are swallowed, nothing closes). New connections work normally.
pub struct Relay {
    pub addr: SocketAddr,
    /// Each connection remembers the epoch it started in; `cut` and `freeze` act on the epochs before theirs.
    epoch: Arc<std::sync::atomic::AtomicU64>,
    cut_below: Arc<tokio::sync::watch::Sender<u64>>,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
    /// Like `frozen_below`, for the upstream → client direction only.
    frozen_down_below: Arc<std::sync::atomic::AtomicU64>,
    pub _task: AbortOnDrop,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let epoch = Arc::new(AtomicU64::new(0));
        let cut_below = Arc::new(tokio::sync::watch::channel(0u64).0);
        let frozen_below = Arc::new(AtomicU64::new(0));
        let frozen_down_below = Arc::new(AtomicU64::new(0));
        let (epoch_t, cut_t, frozen_t) = (epoch.clone(), cut_below.clone(), frozen_below.clone());
        let frozen_down_t = frozen_down_below.clone();
        let Origin { addr, _task } = relay_loop(upstream, move |inbound, outbound| {
            let mine = epoch_t.load(Ordering::SeqCst);
            let mut cut = cut_t.subscribe();
            let frozen = frozen_t.clone();
            let frozen_down = frozen_down_t.clone();
            tokio::spawn(async move {
                let (a_read, a_write) = inbound.into_split();
                let (b_read, b_write) = outbound.into_split();
                let frozen2 = frozen.clone();
                let up = pump(a_read, b_write, move || {
                    frozen.load(Ordering::SeqCst) > mine
                });
                let down = pump(b_read, a_write, move || {
                    frozen2.load(Ordering::SeqCst) > mine
                        || frozen_down.load(Ordering::SeqCst) > mine
                });
                tokio::select! {
                    () = async { tokio::join!(up, down); } => {}
                    _ = cut.wait_for(|below| *below > mine) => {}
                }
            });
        })
        .await;
        Self {
            addr,
            epoch,
            cut_below,
            frozen_below,
            frozen_down_below,
            _task,
        }
    }

    /// Makes every connection relayed so far one-way: bytes still go upstream, nothing comes back.
    pub fn freeze_downstream(&self) {
        let next = self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.frozen_down_below
            .store(next, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection relayed so far.
    pub fn cut(&self) {
        let next = self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.cut_below.send_replace(next);
    }

    /// Makes every connection relayed so far silent: bytes go in and never come out, nothing is closed.
    pub fn freeze(&self) {
        let next = self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.frozen_below
            .store(next, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    is_frozen: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if is_frozen() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP relay that delivers every byte `delay` after it read it, both ways: a long path on loopback.
pub struct DelayRelay {
    pub addr: SocketAddr,
    pub _task: AbortOnDrop,
}

impl DelayRelay {
    pub async fn start(upstream: SocketAddr, delay: Duration) -> Self {
        let Origin { addr, _task } = relay_loop(upstream, move |inbound, outbound| {
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (a_read, a_write) = inbound.into_split();
            let (b_read, b_write) = outbound.into_split();
            tokio::spawn(delayed(a_read, b_write, delay));
            tokio::spawn(delayed(b_read, a_write, delay));
        })
        .await;
        Self { addr, _task }
    }
}

/// Listens on a fresh loopback port; hands every connection accepted there, with a new connection to `upstream`,
/// to `relay`.
async fn relay_loop(
    upstream: SocketAddr,
    relay: impl Fn(TcpStream, TcpStream) + Send + Sync + 'static,
) -> Origin {
    let relay = Arc::new(relay);
    serve_each(move |inbound| {
        let relay = relay.clone();
        async move {
            if let Ok(outbound) = TcpStream::connect(upstream).await {
                relay(inbound, outbound);
            }
        }
    })
    .await
}

/// One direction of a [`DelayRelay`]: what is read now is written `delay` later, in order.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Bytes)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0
            || tx
                .send((
                    tokio::time::Instant::now() + delay,
                    Bytes::copy_from_slice(&buf[..n]),
                ))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
