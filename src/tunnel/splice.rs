//! Copying bytes both ways between two streams (a caller or target socket and a tunnel stream), with half-close
//! propagated and an optional idle limit.
//!
//! It does not decide what the streams are; callers hand it two ready byte streams.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::COPY_BUFFER_BYTES;
use super::stream::{TunnelReader, TunnelStream, TunnelWriter};
use bytes::{Buf, Bytes};

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
/// Copy buffers exist only while bytes move: a direction that has been quiet for [`BUFFER_RELEASE_AFTER`] gives
/// its buffer back and waits for the next byte with a one-byte read, so an idle tunnel costs almost no memory.
///
/// On idle expiry the error kind is `TimedOut`.
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
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let both = async {
        tokio::try_join!(
            pump(a_read, b_write, &moved.a_to_b, &clock),
            pump(b_read, a_write, &moved.b_to_a, &clock),
        )
        .map(drop)
    };
    until_idle(both, &clock, idle).await
}

/// [`splice`] between a byte stream `a` and a tunnel stream, without copying in between: what is read from `a` goes
/// into the tunnel in the buffer it was read into, and the tunnel's chunks are written to `a` as they arrived.
pub(crate) async fn splice_tunnel<A>(
    a: A,
    tunnel: TunnelStream,
    idle: Option<Duration>,
    moved: &Moved,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Activity::new();
    let (a_read, a_write) = tokio::io::split(a);
    let (t_read, t_write) = tunnel.split();
    let both = async {
        tokio::try_join!(
            pump_into_tunnel(a_read, t_write, &moved.a_to_b, &clock),
            pump_out_of_tunnel(t_read, a_write, &moved.b_to_a, &clock),
        )
        .map(drop)
    };
    until_idle(both, &clock, idle).await
}

/// Runs `both` until it ends or nothing has moved for `idle` (then `TimedOut`).
async fn until_idle(
    both: impl std::future::Future<Output = io::Result<()>>,
    clock: &Activity,
    idle: Option<Duration>,
) -> io::Result<()> {
    match idle {
        None => both.await,
        Some(limit) => {
            tokio::select! {
                result = both => result,
                () = clock.expired(limit) => Err(io::Error::new(io::ErrorKind::TimedOut, "stream idle")),
            }
        }
    }
}

/// The buffer a direction takes when bytes start moving; it grows to [`COPY_BUFFER_BYTES`] once a read fills it.
/// Interactive streams (keystrokes, small WebSocket messages) never need more.
pub(crate) const FIRST_BUFFER_BYTES: usize = 8 * 1024;

/// How long a direction keeps its copy buffer after the last byte it moved.
pub(crate) const BUFFER_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// One direction: read into the buffer, write it all out, until EOF (then shut the writer down).
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    count: &AtomicU64,
    clock: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let n = fill(&mut reader, &mut writer, &mut buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        clock.touch();
        count.fetch_add(n as u64, Ordering::Relaxed);
        writer.write_all(&buf[..n]).await?;
    }
}

/// Chunks gathered for one write to the caller's socket (when several frames have arrived at once).
const CHUNKS_PER_WRITE: usize = 16;

/// Bytes gathered for one write to the caller's socket: several frames, so a bulk download wakes the caller once
/// per several frames rather than once per frame.
const GATHER_BYTES: usize = 4 * COPY_BUFFER_BYTES;

/// Byte stream → tunnel: each buffer read goes into the tunnel as it is, and the next read takes a fresh one.
async fn pump_into_tunnel<R>(
    mut reader: R,
    mut writer: TunnelWriter,
    count: &AtomicU64,
    clock: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let n = fill(&mut reader, &mut writer, &mut buf).await?;
        if n == 0 {
            return writer.finish();
        }
        clock.touch();
        count.fetch_add(n as u64, Ordering::Relaxed);
        let next = next_capacity(n, buf.capacity());
        let chunk = std::mem::replace(&mut buf, Vec::with_capacity(next));
        writer.send(Bytes::from(chunk)).await?;
    }
}

/// Tunnel → byte stream: the chunks that have arrived are written out as they are, several in one vectored write
/// when several are there. Flushes `writer` before waiting.
async fn pump_out_of_tunnel<W>(
    mut reader: TunnelReader,
    mut writer: W,
    count: &AtomicU64,
    clock: &Activity,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut chunks: Vec<Bytes> = Vec::with_capacity(CHUNKS_PER_WRITE);
    loop {
        let next = match poll_once(reader.chunk()).await {
            Some(next) => next?,
            None => {
                writer.flush().await?;
                reader.chunk().await?
            }
        };
        let Some(first) = next else {
            writer.shutdown().await?;
            return Ok(());
        };
        let mut n = first.len();
        chunks.push(first);
        // An end or error met here is met again by the next `chunk`: h2 reports them on every poll (pinned by the
        // tests of `tunnel::stream`).
        while chunks.len() < CHUNKS_PER_WRITE && n < GATHER_BYTES {
            let Some(Ok(Some(more))) = poll_once(reader.chunk()).await else {
                break;
            };
            n += more.len();
            chunks.push(more);
        }
        clock.touch();
        count.fetch_add(n as u64, Ordering::Relaxed);
        write_chunks(&mut writer, &mut chunks).await?;
    }
}

/// Writes every chunk whole, with vectored writes, and empties `chunks`.
async fn write_chunks<W>(writer: &mut W, chunks: &mut Vec<Bytes>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut first = 0;
    while first < chunks.len() {
        let mut slices = [io::IoSlice::new(&[]); CHUNKS_PER_WRITE];
        let live = &chunks[first..];
        for (slice, chunk) in slices.iter_mut().zip(live) {
            *slice = io::IoSlice::new(chunk);
        }
        let mut written = writer
            .write_vectored(&slices[..live.len().min(CHUNKS_PER_WRITE)])
            .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let chunk = &mut chunks[first];
            if written >= chunk.len() {
                written -= chunk.len();
                first += 1;
            } else {
                chunk.advance(written);
                written = 0;
            }
        }
    }
    chunks.clear();
    Ok(())
}

/// The capacity for the next read after one that read `len` bytes into a buffer of `capacity`: a read that filled
/// its buffer means bytes are streaming, so read in large chunks from then on.
fn next_capacity(len: usize, capacity: usize) -> usize {
    if len > 0 && len == capacity && capacity < COPY_BUFFER_BYTES {
        COPY_BUFFER_BYTES
    } else {
        capacity
    }
}

/// Reads the next bytes into `buf` (replacing its contents); 0 at EOF. Flushes `writer` before waiting, and
/// releases the buffer when nothing arrives for [`BUFFER_RELEASE_AFTER`].
async fn fill<R, W>(reader: &mut R, writer: &mut W, buf: &mut Vec<u8>) -> io::Result<usize>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let capacity = next_capacity(buf.len(), buf.capacity());
    if capacity != buf.capacity() {
        *buf = Vec::with_capacity(capacity);
    }
    buf.clear();
    if buf.capacity() > 0 {
        if let Some(read) = poll_once(reader.read_buf(buf)).await {
            return read;
        }
        writer.flush().await?;
        tokio::select! {
            read = reader.read_buf(buf) => return read,
            () = tokio::time::sleep(BUFFER_RELEASE_AFTER) => *buf = Vec::new(),
        }
    } else {
        writer.flush().await?;
    }
    let mut first = [0u8; 1];
    if reader.read(&mut first).await? == 0 {
        return Ok(0);
    }
    buf.reserve_exact(FIRST_BUFFER_BYTES);
    buf.push(first[0]);
    // Whatever else is already there comes along; an EOF here shows on the next call (a socket reports it again,
    // and so does a tunnel stream: see the tests of `tunnel::stream`). An error is not dropped.
    if let Some(read) = poll_once(reader.read_buf(buf)).await {
        read?;
    }
    Ok(buf.len())
}

/// Polls `future` once: its output if it is ready now, `None` if it would wait (the future is then dropped; the
/// reads used here are cancel safe).
async fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// The bytes a relay moved each way, for the caller to count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// Read from `a` and written to `b`.
    pub(crate) a_to_b: u64,
    /// Read from `b` and written to `a`.
    pub(crate) b_to_a: u64,
}

/// Splices `a` and `b` until they finish, go idle for `idle`, or `kill` fires; logs how the stream ended at debug
/// and returns the bytes moved (also when it ended in an error).
pub(crate) async fn relay<A, B>(
    a: A,
    b: B,
    idle: Option<Duration>,
    kill: &tokio_util::sync::CancellationToken,
) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = Moved::default();
    let result = tokio::select! {
        result = splice(a, b, idle, &moved) => result,
        () = kill.cancelled() => Ok(()),
    };
    report(&moved, result)
}

/// [`relay`] between a byte stream `a` and a tunnel stream (`b`), through [`splice_tunnel`].
pub(crate) async fn relay_tunnel<A>(
    a: A,
    tunnel: TunnelStream,
    idle: Option<Duration>,
    kill: &tokio_util::sync::CancellationToken,
) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let moved = Moved::default();
    let result = tokio::select! {
        result = splice_tunnel(a, tunnel, idle, &moved) => result,
        () = kill.cancelled() => Ok(()),
    };
    report(&moved, result)
}

/// Logs how a splice ended, at debug, and what it moved.
fn report(moved: &Moved, result: io::Result<()>) -> Relayed {
    match result {
        Ok(()) => tracing::debug!("stream closed"),
        Err(err) => tracing::debug!(error = %err, "stream ended"),
    }
    Relayed {
        a_to_b: moved.a_to_b.load(Ordering::Relaxed),
        b_to_a: moved.b_to_a.load(Ordering::Relaxed),
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

    #[tokio::test(start_paused = true)]
    async fn bytes_after_a_quiet_spell_still_flow() {
        let (mut left, a) = duplex(1 << 20);
        let (b, mut right) = duplex(1 << 20);
        let moved = Moved::default();
        let talk = async {
            let mut got = vec![0u8; 100_000];
            for round in 0..3u8 {
                let message = vec![round; 100_000];
                left.write_all(&message).await.unwrap();
                right.read_exact(&mut got).await.unwrap();
                assert_eq!(got, message);
                // Longer than the release delay: the buffer is given back and taken again.
                tokio::time::sleep(BUFFER_RELEASE_AFTER * 3).await;
            }
            left.shutdown().await.unwrap();
            right.shutdown().await.unwrap();
        };
        let (result, ()) = tokio::join!(splice(a, b, None, &moved), talk);
        result.unwrap();
        assert_eq!(moved.a_to_b.load(Ordering::Relaxed), 300_000);
    }
}
