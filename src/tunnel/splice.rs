//! Copying bytes both ways between two streams (a caller or target socket and a tunnel stream), with half-close
//! propagated and an optional idle limit.
//!
//! It does not decide what the streams are; callers hand it two ready byte streams.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::COPY_BUFFER_BYTES;

/// Bytes moved by a splice, counted as they move (so they are known even when the splice ends in an error).
#[derive(Debug, Default)]
pub(crate) struct Moved {
    /// Bytes read from the first stream and written to the second.
    pub(crate) a_to_b: AtomicU64,
    /// Bytes read from the second stream and written to the first.
    pub(crate) b_to_a: AtomicU64,
}

/// Copies `a` → `b` and `b` → `a` until both directions reach EOF (each EOF is passed on as a write shutdown, so a
/// half-closed TCP connection stays half-open), an error occurs, or no byte moved either way for `idle`.
///
/// Returns the bytes moved each way; on idle expiry the error kind is `TimedOut`.
/// Cancel safety: dropping the future drops both streams (an HTTP/2 stream is then reset).
pub(crate) async fn splice<A, B>(
    a: A,
    b: B,
    idle: Option<Duration>,
    moved: &Moved,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Activity::new();
    let mut a = Watched {
        inner: a,
        clock: &clock,
        count: &moved.a_to_b,
    };
    let mut b = Watched {
        inner: b,
        clock: &clock,
        count: &moved.b_to_a,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut a,
        &mut b,
        COPY_BUFFER_BYTES,
        COPY_BUFFER_BYTES,
    );
    match idle {
        None => copy.await.map(drop),
        Some(limit) => {
            tokio::select! {
                result = copy => result.map(drop),
                () = clock.expired(limit) => Err(io::Error::new(io::ErrorKind::TimedOut, "stream idle")),
            }
        }
    }
}

/// The time of the last byte moved, as milliseconds since `start`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `limit`.
    async fn expired(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records when bytes are read from it and how many.
struct Watched<'a, T> {
    inner: T,
    clock: &'a Activity,
    count: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.clock.touch();
            self.count.fetch_add(read as u64, Ordering::Relaxed);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn copies_both_ways_and_propagates_half_close() {
        let (mut left, a) = duplex(1024);
        let (b, mut right) = duplex(1024);
        let moved = Moved::default();
        let task = async {
            left.write_all(b"ping").await.unwrap();
            left.shutdown().await.unwrap();
            let mut got = Vec::new();
            right.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"ping");
            right.write_all(b"pong!").await.unwrap();
            right.shutdown().await.unwrap();
            let mut back = Vec::new();
            left.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"pong!");
        };
        let (result, ()) = tokio::join!(splice(a, b, None, &moved), task);
        result.unwrap();
        assert_eq!(moved.a_to_b.load(Ordering::Relaxed), 4);
        assert_eq!(moved.b_to_a.load(Ordering::Relaxed), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_stream_times_out() {
        let (_left, a) = duplex(1024);
        let (b, _right) = duplex(1024);
        let moved = Moved::default();
        let started = Instant::now();
        let err = splice(a, b, Some(Duration::from_secs(30)), &moved)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_idle_limit() {
        let (mut left, a) = duplex(1024);
        let (b, mut right) = duplex(1024);
        let moved = Moved::default();
        let started = Instant::now();
        let talker = async {
            let mut buf = [0u8; 1];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                left.write_all(b"x").await.unwrap();
                right.read_exact(&mut buf).await.unwrap();
            }
            // keep both ends open while the idle timer runs out
            tokio::time::sleep(Duration::from_secs(3600)).await;
        };
        tokio::select! {
            result = splice(a, b, Some(Duration::from_secs(30)), &moved) => {
                assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
            }
            () = talker => unreachable!("talker sleeps longer than the idle limit"),
        }
        assert_eq!(started.elapsed(), Duration::from_secs(90));
    }
}
