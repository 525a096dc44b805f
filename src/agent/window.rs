//! Receive windows that follow the path: the agent grows the windows it grants the server when one round trip
//! carries half a stream window, so a download over a long fat path is not held to `window / RTT`.
//!
//! The measure is the one HTTP/2 offers (as hyper's BDP estimator does): a PING's round trip, and the bytes that
//! arrived from the server while it was out, scaled to the path's round trip (the shortest ping seen, the first
//! one on the quiet new tunnel), so that a round trip stretched by queues does not pass for a long path. A stream
//! that keeps half its window in flight per round trip is window-bound, so the stream window doubles (the tunnel
//! window stays twice the stream window), up to [`MAX_STREAM_WINDOW_BYTES`]. Windows start at [`STREAM_WINDOW_BYTES`] and never shrink while the tunnel lasts.
//!
//! Only the agent's windows grow: they bound what the user's own laptop may buffer for a slow reader. The
//! server's windows (what an agent may make the shared server hold) stay fixed.
//!
//! The same PINGs keep the tunnel alive: one every `keepalive` while the tunnel is quiet, and one per sample while
//! bytes arrive and the windows can still grow, never more than one per [`SAMPLE_GAP`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::keeper::TunnelLost;
use crate::tunnel::STREAM_WINDOW_BYTES;

/// The largest stream window the agent grants (the tunnel window is twice this): covers 64 MiB in flight, e.g.
/// 5 Gbit/s at 100 ms.
pub(crate) const MAX_STREAM_WINDOW_BYTES: u32 = 64 * 1024 * 1024;

/// Shortest pause between two samples while bytes arrive.
pub(crate) const SAMPLE_GAP: Duration = Duration::from_millis(100);

/// Bytes read from the tunnel's socket, and a wake-up for the pinger when they start arriving.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    received: AtomicU64,
    arrived: Notify,
}

impl Traffic {
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// The tunnel's transport with its received bytes counted into [`Traffic`].
pub(crate) struct Metered<S> {
    inner: S,
    traffic: Arc<Traffic>,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, traffic: Arc<Traffic>) -> Self {
        Self { inner, traffic }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.traffic.received.fetch_add(n as u64, Ordering::Relaxed);
            self.traffic.arrived.notify_one();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The agent's current stream window, and when to grow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Windows {
    pub(crate) stream: u32,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            stream: STREAM_WINDOW_BYTES,
        }
    }
}

impl Windows {
    /// The tunnel-wide window that goes with the stream window.
    pub(crate) fn connection(self) -> u32 {
        self.stream.saturating_mul(2)
    }

    /// Whether the windows can still grow.
    pub(crate) fn can_grow(self) -> bool {
        self.stream < MAX_STREAM_WINDOW_BYTES
    }

    /// The windows to grant after `bytes` arrived during one round trip: doubled when that is at least half the
    /// stream window, else `None`.
    pub(crate) fn after_round_trip(self, bytes: u64) -> Option<Self> {
        if self.can_grow() && bytes >= u64::from(self.stream / 2) {
            Some(Self {
                stream: self.stream.saturating_mul(2).min(MAX_STREAM_WINDOW_BYTES),
            })
        } else {
            None
        }
    }
}

/// The tunnel's PINGs: keep-alive and path samples in one.
pub(crate) struct Pinger {
    pings: h2::PingPong,
    every: Duration,
    traffic: Arc<Traffic>,
    /// Whether bytes arrived during the last PING.
    flowing: bool,
    /// The shortest round trip seen; `None` until the first PING, sent on the quiet new tunnel.
    path_rtt: Option<Duration>,
    /// When the last PING went out.
    sent: tokio::time::Instant,
}

impl Pinger {
    pub(crate) fn new(pings: h2::PingPong, every: Duration, traffic: Arc<Traffic>) -> Self {
        Self {
            pings,
            every,
            traffic,
            flowing: false,
            path_rtt: None,
            sent: tokio::time::Instant::now(),
        }
    }

    /// Pings the server until a round trip sees bytes arrive, and returns them scaled to the path's round trip
    /// (see [`bytes_per_path_rtt`]). It pings every `every` while the tunnel is quiet, and, while `can_grow`, as
    /// soon as bytes arrive and then once per round trip while they keep arriving, never more than once per
    /// [`SAMPLE_GAP`]. Fails when a PING goes unanswered for `every` (a link that went silent) or the connection
    /// fails. Cancel safe between PINGs only: the caller keeps the future until it completes.
    pub(crate) async fn next_sample(&mut self, can_grow: bool) -> Result<u64, TunnelLost> {
        loop {
            if self.path_rtt.is_none() {
                // First a ping on the quiet new tunnel: the path's own round trip.
            } else if self.flowing && can_grow {
                tokio::time::sleep_until(self.sent + SAMPLE_GAP).await;
            } else {
                tokio::select! {
                    () = tokio::time::sleep(self.every) => {}
                    () = self.traffic.arrived.notified(), if can_grow => {
                        // Sparse traffic (a message now and then) must not draw a ping per message.
                        tokio::time::sleep_until(self.sent + SAMPLE_GAP).await;
                    }
                }
            }
            let before = self.traffic.received();
            self.sent = tokio::time::Instant::now();
            match tokio::time::timeout(self.every, self.pings.ping(h2::Ping::opaque())).await {
                Ok(Ok(_pong)) => {}
                Ok(Err(err)) => return Err(TunnelLost::Connection(err)),
                Err(_) => return Err(TunnelLost::PingTimeout),
            }
            let rtt = self.sent.elapsed();
            let during = self.traffic.received() - before;
            let path = self.path_rtt.map_or(rtt, |p| p.min(rtt));
            self.path_rtt = Some(path);
            self.flowing = during > 0;
            if self.flowing {
                return Ok(bytes_per_path_rtt(during, rtt, path));
            }
        }
    }
}

/// Bytes that arrived during a ping's round trip `rtt`, scaled to the path's round trip `path` (the shortest seen):
/// the bandwidth-delay product. A round trip stretched by queues (bytes waiting in the agent's own buffers while it
/// is busy) then does not pass for a long path.
pub(crate) fn bytes_per_path_rtt(bytes: u64, rtt: Duration, path: Duration) -> u64 {
    if rtt.is_zero() {
        return bytes;
    }
    let scaled = u128::from(bytes) * path.as_nanos() / rtt.as_nanos();
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn windows_double_when_a_round_trip_carries_half_of_one_up_to_the_cap() {
        let start = Windows::default();
        assert_eq!(start.stream, STREAM_WINDOW_BYTES);
        assert_eq!(start.connection(), 2 * STREAM_WINDOW_BYTES);
        let half = u64::from(STREAM_WINDOW_BYTES / 2);
        assert_eq!(start.after_round_trip(0), None);
        assert_eq!(start.after_round_trip(half - 1), None);
        let grown = start.after_round_trip(half).unwrap();
        assert_eq!(grown.stream, 2 * STREAM_WINDOW_BYTES);
        let mut w = grown;
        while let Some(next) = w.after_round_trip(u64::MAX) {
            assert!(next.stream > w.stream);
            w = next;
        }
        assert_eq!(w.stream, MAX_STREAM_WINDOW_BYTES);
        assert!(!w.can_grow());
    }

    #[test]
    fn samples_scale_to_the_path_round_trip() {
        let ms = Duration::from_millis;
        assert_eq!(bytes_per_path_rtt(1000, ms(50), ms(50)), 1000);
        // A ping held up 100x by queues: a hundredth of its bytes per path round trip.
        assert_eq!(
            bytes_per_path_rtt(20_000_000, ms(10), ms(0) + Duration::from_micros(100)),
            200_000
        );
        assert_eq!(bytes_per_path_rtt(7, Duration::ZERO, Duration::ZERO), 7);
        assert_eq!(bytes_per_path_rtt(u64::MAX, ms(1), ms(2)), u64::MAX);
    }

    #[tokio::test]
    async fn metered_counts_what_is_read_and_passes_writes_through() {
        let traffic = Arc::new(Traffic::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut metered = Metered::new(a, traffic.clone());
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let n = metered.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(traffic.received(), 5);
        // The reader was told that bytes arrived (a permit is stored for the next wait).
        tokio::time::timeout(Duration::from_secs(5), traffic.arrived.notified())
            .await
            .unwrap();
        metered.write_all(b"back").await.unwrap();
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"back");
        assert_eq!(traffic.received(), 5);
    }
}
