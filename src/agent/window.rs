//! Receive windows that follow the path: the agent grows the windows it grants the server when one round trip
//! carries half a stream window, so a download over a long fat path is not held to `window / RTT`.
//!
//! The measure is the one HTTP/2 offers (as hyper's BDP estimator does): a PING's round trip, and the bytes that
//! arrived from the server while it was out, scaled to the path's round trip (the shortest ping seen, the first
//! one on the quiet new tunnel), so that a round trip stretched by queues does not pass for a long path. A stream
//! that keeps half its window in flight per round trip is window-bound, so the stream window doubles (the tunnel
//! window stays twice the stream window), up to [`MAX_STREAM_WINDOW_BYTES`]. Windows start at
//! [`STREAM_WINDOW_BYTES`] and never shrink while the tunnel lasts.
//!
//! Only the agent's windows grow: they bound what the user's own laptop may buffer for a slow reader. The
//! server's windows (what an agent may make the shared server hold) stay fixed.
//!
//! The same PINGs keep the tunnel alive: one every `keepalive` while the tunnel is quiet, and one per sample while
//! traffic arrives and the windows can still grow, never more than one per [`SAMPLE_GAP`]. A PING's own answer
//! is not traffic ([`CHATTER_BYTES`]), so a tunnel gone quiet goes back to keep-alive PINGs.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::tunnel::transport::STREAM_WINDOW_BYTES;

/// The largest stream window the agent grants (the tunnel window is twice this): covers 64 MiB in flight, e.g.
/// 5 Gbit/s at 100 ms.
pub(crate) const MAX_STREAM_WINDOW_BYTES: u32 = 64 * 1024 * 1024;

/// Shortest pause between two samples while bytes arrive.
pub(crate) const SAMPLE_GAP: Duration = Duration::from_millis(100);

/// Bytes a PING's round trip may bring without counting as traffic: its own answer and the odd other control frame
/// (each under 100 bytes on the wire). Windows only matter when megabytes arrive per round trip.
pub(crate) const CHATTER_BYTES: u64 = 1024;

/// Why an established tunnel ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelLost {
    #[error("{0}")]
    Connection(#[source] h2::Error),
    #[error("no answer to a keep-alive ping in time")]
    PingTimeout,
    #[error("cannot write to the server: {0}")]
    Socket(#[source] io::Error),
}

/// Bytes read from the tunnel's socket, and a wake-up for the pinger when more than chatter has arrived.
#[derive(Debug)]
pub(crate) struct Traffic {
    received: AtomicU64,
    /// The `received` total at which to wake the pinger; `u64::MAX` when it is not waiting for traffic.
    wake_at: AtomicU64,
    arrived: Notify,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            received: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            arrived: Notify::new(),
        }
    }
}

impl Traffic {
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes read, and wakes the pinger (once) when they reach its mark.
    fn add(&self, n: u64) {
        let total = self.received.fetch_add(n, Ordering::Relaxed) + n;
        let at = self.wake_at.load(Ordering::Relaxed);
        if total >= at
            && self
                .wake_at
                .compare_exchange(at, u64::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.arrived.notify_one();
        }
    }

    /// Asks for one wake-up once more than `bytes` have arrived from now on.
    fn wake_after(&self, bytes: u64) {
        self.wake_at
            .store(self.received().saturating_add(bytes + 1), Ordering::Relaxed);
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
            self.traffic.add(n as u64);
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

    /// Pings the server until a round trip sees more than [`CHATTER_BYTES`] arrive, and returns them scaled to the
    /// path's round trip (see [`bytes_per_path_rtt`]). It pings every `every` while the tunnel is quiet, and, while
    /// `can_grow`, as soon as more than chatter arrives and then once per round trip while it keeps arriving, never
    /// more than once per [`SAMPLE_GAP`]. Fails when a PING goes unanswered for `every` (a link that went silent)
    /// or the connection fails. Cancel safe between PINGs only: the caller keeps the future until it completes.
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
            // The PONG itself is not traffic: counted as such, every PONG would draw the next PING.
            self.flowing = during > CHATTER_BYTES;
            if self.flowing {
                return Ok(bytes_per_path_rtt(during, rtt, path));
            }
            self.traffic.wake_after(CHATTER_BYTES);
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

    /// Whether the pinger's wake-up is there (a stored permit); waits 5 s of paused time for it.
    async fn woken(traffic: &Traffic) -> bool {
        let wait = Duration::from_secs(5);
        tokio::time::timeout(wait, traffic.arrived.notified())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn metered_counts_what_is_read_wakes_once_past_the_mark_and_passes_writes_through() {
        let traffic = Arc::new(Traffic::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut metered = Metered::new(a, traffic.clone());
        let mut buf = [0u8; 16];
        let mut pass = async |bytes: &[u8]| {
            b.write_all(bytes).await.unwrap();
            let n = metered.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], bytes);
        };
        // No mark set: bytes are counted, nobody is woken.
        pass(b"hello").await;
        assert_eq!(traffic.received(), 5);
        assert!(!woken(&traffic).await);
        // Once more than 3 bytes have arrived: not by 3, then once by the fourth, and no more after it.
        traffic.wake_after(3);
        pass(b"abc").await;
        assert!(!woken(&traffic).await);
        pass(b"d").await;
        assert!(woken(&traffic).await);
        pass(b"efgh").await;
        assert!(!woken(&traffic).await);
        assert_eq!(traffic.received(), 13);
        metered.write_all(b"back").await.unwrap();
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"back");
        assert_eq!(traffic.received(), 13);
    }

    /// A tunnel that carried a download and then went quiet is pinged once per keep-alive period, not once per
    /// answer: a PONG counted as traffic drew the next PING, ten a second for as long as the tunnel lasted.
    #[tokio::test(start_paused = true)]
    async fn a_tunnel_gone_quiet_gets_keepalive_pings_only() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut server = h2::server::handshake(server_io).await.unwrap();
            while let Some(Ok((_request, mut respond))) = server.accept().await {
                let mut body = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                body.send_data(bytes::Bytes::from(vec![7u8; 256 * 1024]), true)
                    .unwrap();
            }
        });
        let traffic = Arc::new(Traffic::default());
        let (mut client, mut connection) =
            h2::client::handshake(Metered::new(client_io, traffic.clone()))
                .await
                .unwrap();
        let pings = connection.ping_pong().unwrap();
        tokio::spawn(connection);

        let request = http::Request::get("http://origin/").body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let mut downloaded = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            downloaded += chunk.len();
            body.flow_control().release_capacity(chunk.len()).unwrap();
        }
        assert_eq!(downloaded, 256 * 1024);

        let every = Duration::from_secs(30);
        let mut pinger = Pinger::new(pings, every, traffic.clone());
        let before = traffic.received();
        let quiet = tokio::time::timeout(every * 10, pinger.next_sample(true)).await;
        assert!(quiet.is_err(), "a quiet tunnel gave a sample: {quiet:?}");
        // A PONG is 17 bytes here (no TLS): the path PING and at most ten keep-alive ones.
        let answers = traffic.received() - before;
        assert!(
            answers > 0 && answers <= 11 * 17,
            "{answers} bytes of answers"
        );
    }
}
