//! The tunnel's socket beneath TLS, with its writes gathered: what the HTTP/2 connection writes during one run of
//! its task goes out in one socket write when the task yields.
//!
//! h2 writes a DATA frame larger than 256 bytes straight from its payload and flushes before it takes the next
//! frame, and tokio-rustls sends each flush's records to the socket at once. So when a burst of responses comes
//! back from targets, each small answer would cost a TLS record, a `writev` and a wake-up of the peer of its own.
//! [`GatheredWrites::gather_while`] runs the connection's task with the socket's writes held, and sends them
//! together when the task yields; a write too large to hold (bulk data) goes straight through, after what is held.
//! A send that fails ends the task at once with the error, so an idle tunnel learns of a dead socket without
//! waiting for its next write.
//!
//! Reads are untouched, and writes made outside [`GatheredWrites::gather_while`] (the TLS handshake) go straight
//! through.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Most bytes held for one send; a write that would take the held bytes past it sends them first.
const HOLD_BYTES: usize = 64 * 1024;

/// Largest write that is held. A larger one (a full TLS record or more) is bulk data: it goes straight through,
/// after what is held, rather than be copied once more, and its send is not a small one worth saving.
const HOLD_WRITE_BYTES: usize = 16 * 1024;

/// The tunnel's socket: reads from `R` (the socket's read half, buffered and perhaps metered), writes through the
/// shared [`GatheredWrites`].
pub(crate) struct Socket<R> {
    read: R,
    writes: GatheredWrites,
}

/// The write half of a tunnel's socket and the bytes held for it.
#[derive(Clone)]
pub(crate) struct GatheredWrites(Arc<Mutex<Held>>);

struct Held {
    /// Writes are held (the connection's task is running under [`GatheredWrites::gather_while`]).
    holding: bool,
    bytes: Vec<u8>,
    /// Where the held bytes have been sent up to.
    sent: usize,
    half: OwnedWriteHalf,
}

/// Splits `tcp` into its read half, for the caller to wrap, and the [`GatheredWrites`] its writes go through.
pub(crate) fn split(tcp: TcpStream) -> (OwnedReadHalf, GatheredWrites) {
    let (read, half) = tcp.into_split();
    let held = Held {
        holding: false,
        bytes: Vec::new(),
        sent: 0,
        half,
    };
    (read, GatheredWrites(Arc::new(Mutex::new(held))))
}

impl<R> Socket<R> {
    pub(crate) fn new(read: R, writes: GatheredWrites) -> Self {
        Self { read, writes }
    }
}

impl GatheredWrites {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `task` (the future that drives a tunnel's HTTP/2 connection) with the socket's writes held, and sends
    /// them each time it yields.
    ///
    /// # Errors
    /// A send that fails while `task` waits ends it at once (the task is dropped) with the socket's error. When
    /// `task` ends by itself its output is returned, and what is still held is sent only as far as the socket takes
    /// it at once: a connection that closes cleanly has already sent everything, as h2 shuts the socket down
    /// (which sends what is held) when it ends.
    pub(crate) async fn gather_while<F: Future>(&self, task: F) -> io::Result<F::Output> {
        let mut task = std::pin::pin!(task);
        std::future::poll_fn(|cx| {
            self.lock().holding = true;
            let polled = task.as_mut().poll(cx);
            let mut held = self.lock();
            held.holding = false;
            // Pending: the socket wakes this task when it takes more, and the send resumes on that poll.
            let sent = held.poll_send(cx);
            match (polled, sent) {
                (Poll::Ready(output), _) => Poll::Ready(Ok(output)),
                (Poll::Pending, Poll::Ready(Err(err))) => Poll::Ready(Err(err)),
                (Poll::Pending, _) => Poll::Pending,
            }
        })
        .await
    }
}

impl Held {
    /// Sends the held bytes; `Ready(Ok)` once none are left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.bytes.len() {
            let n = ready!(Pin::new(&mut self.half).poll_write(cx, &self.bytes[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.bytes.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.holding
            && len <= HOLD_WRITE_BYTES
            && self.bytes.len() - self.sent + len <= HOLD_BYTES
        {
            // Once per tunnel: what is held then fits without the vector growing.
            if self.bytes.capacity() < HOLD_BYTES {
                self.bytes.reserve_exact(HOLD_BYTES - self.bytes.len());
            }
            for buf in bufs {
                self.bytes.extend_from_slice(buf);
            }
            return Poll::Ready(Ok(len));
        }
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.half).poll_write_vectored(cx, bufs)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Socket<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for Socket<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes.lock().poll_write(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.writes.lock().poll_write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// While held, a flush leaves the bytes for [`GatheredWrites::gather_while`] to send when the task yields.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = self.writes.lock();
        if held.holding {
            return Poll::Ready(Ok(()));
        }
        ready!(held.poll_send(cx))?;
        Pin::new(&mut held.half).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = self.writes.lock();
        ready!(held.poll_send(cx))?;
        Pin::new(&mut held.half).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair on loopback: the gathering socket (reads unbuffered) and its plain peer.
    async fn pair() -> (Socket<OwnedReadHalf>, GatheredWrites, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (read, writes) = split(near.unwrap());
        (Socket::new(read, writes.clone()), writes, far.unwrap().0)
    }

    /// True when bytes are waiting on `peer` (loopback delivers within the `write` call that sent them).
    fn arrived(peer: &TcpStream) -> bool {
        let mut probe = [0u8; 1];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match peer.poll_peek(&mut cx, &mut ReadBuf::new(&mut probe)) {
            Poll::Ready(Ok(n)) => n > 0,
            Poll::Ready(Err(e)) => panic!("peer: {e}"),
            Poll::Pending => false,
        }
    }

    async fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        peer.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn writes_and_flushes_inside_the_task_reach_the_peer_together_when_it_yields() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (mut socket, writes, mut peer) = pair().await;
            let task = async {
                for frame in [b"one ".as_slice(), b"two ", b"three"] {
                    socket.write_all(frame).await.unwrap();
                    socket.flush().await.unwrap();
                    assert!(
                        !arrived(&peer),
                        "a write inside the task went out on its own"
                    );
                }
                // Yield once: everything written so far goes out as the task does.
                tokio::task::yield_now().await;
                assert!(
                    arrived(&peer),
                    "held bytes were not sent when the task yielded"
                );
                socket.write_all(b" four").await.unwrap();
                socket
            };
            let mut socket = writes.gather_while(task).await.unwrap();
            let expected = b"one two three four";
            assert_eq!(read_exactly(&mut peer, expected.len()).await, expected);
            // Outside the task, writes go straight out (the TLS handshake runs so).
            socket.write_all(b"direct").await.unwrap();
            assert!(arrived(&peer));
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_write_too_large_to_hold_goes_out_after_what_is_held_in_order() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (mut socket, writes, mut peer) = pair().await;
            let large: Vec<u8> = (0..3 * HOLD_BYTES).map(|i| (i % 251) as u8).collect();
            let expected = [b"head".as_slice(), &large, b"tail"].concat();
            let reader =
                tokio::spawn(
                    async move { read_exactly(&mut peer, expected.len()).await == expected },
                );
            let task = async {
                socket.write_all(b"head").await.unwrap();
                socket.write_all(&large).await.unwrap();
                socket.write_all(b"tail").await.unwrap();
                socket.flush().await.unwrap();
            };
            writes.gather_while(task).await.unwrap();
            assert!(
                reader.await.unwrap(),
                "bytes arrived out of order or changed"
            );
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_stops_the_writer_without_holding_more_than_the_limit() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (mut socket, writes, mut peer) = pair().await;
            let chunk = [7u8; 1000];
            let written = writes
                .gather_while(std::future::poll_fn(|cx| {
                    let mut written = 0usize;
                    loop {
                        match Pin::new(&mut socket).poll_write(cx, &chunk) {
                            Poll::Ready(Ok(n)) => written += n,
                            Poll::Ready(Err(e)) => panic!("write: {e}"),
                            // The socket is full: the writer is told to wait.
                            Poll::Pending => return Poll::Ready(written),
                        }
                        assert!(writes.lock().bytes.len() <= HOLD_BYTES);
                    }
                }))
                .await
                .unwrap();
            assert!(
                written > HOLD_BYTES,
                "only {written} bytes taken before the socket filled"
            );
            // Once the peer reads, everything the writer was told was written arrives, and nothing more.
            let writes_task = writes.clone();
            let drained = tokio::spawn(async move {
                std::future::poll_fn(|cx| writes_task.lock().poll_send(cx)).await
            });
            let got = read_exactly(&mut peer, written).await;
            assert!(got.iter().all(|&b| b == 7));
            drained.await.unwrap().unwrap();
            assert!(!arrived(&peer));
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_send_that_fails_while_the_task_waits_ends_it_at_once() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (mut socket, writes, peer) = pair().await;
            // A reset connection: the peer closes with unread bytes, so it answers with RST, after which every
            // send on the socket fails.
            socket.write_all(b"unread").await.unwrap();
            drop(peer);
            let mut direct_failed = false;
            for _ in 0..1000 {
                if socket.write_all(b"x").await.is_err() {
                    direct_failed = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert!(
                direct_failed,
                "writes to a reset connection kept succeeding"
            );
            // A task that writes once and then waits for ever (an idle tunnel): the held bytes' send fails, and
            // that ends the task now rather than at a next write that never comes.
            let task = async {
                socket.write_all(b"held").await.unwrap();
                std::future::pending::<()>().await;
            };
            assert!(writes.gather_while(task).await.is_err());
        })
        .await
        .unwrap();
    }
}
