//! Adapters between raw HTTP/2 streams of the tunnel (the `h2` crate) and what each side hands on: a byte stream
//! for CONNECT and WebSocket streams, a body for plain requests and responses, and a pump that sends a body.
//!
//! Both roles drive `h2` directly rather than through hyper. The agent needs it so that a CONNECT stream can carry
//! the caller's first bytes before the server has answered (`fast_connect`: one round trip less per new
//! connection); the server, so that the bytes of a CONNECT stream go from the target's socket to the stream
//! without the extra copy and task hop of hyper's upgrade. Flow control is respected both ways: data is sent only
//! as window capacity is granted, and received data is released as it is consumed.

use bytes::{Buf, Bytes};
use h2::client::ResponseFuture;
use h2::{Reason, RecvStream, SendStream};
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::BoxError;

/// Converts an h2 error into an I/O error, keeping it as the source.
fn h2_to_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    io::Error::other(err)
}

/// The receiving side of a CONNECT stream: the server's answer still awaited, or the data flowing.
enum RecvSide {
    Waiting(ResponseFuture),
    Open(RecvStream),
}

/// A CONNECT stream as a byte stream. Writes go out at once, even before the server has answered (they wait in the
/// stream's window); reads first wait for the answer and fail with `ConnectionRefused` unless it is `200`.
///
/// [`split`](Self::split) gives its two halves, which also move data as [`Bytes`] without copying it (what the
/// relay between a socket and the tunnel uses); the `AsyncRead`/`AsyncWrite` impls copy, for callers that need
/// a plain byte stream (hyper's HTTP/1.1 client on the WebSocket path).
pub(crate) struct TunnelStream {
    reader: TunnelReader,
    writer: TunnelWriter,
}

/// The receiving half of a [`TunnelStream`].
pub(crate) struct TunnelReader {
    recv: RecvSide,
    /// The part of a chunk a read had no room for.
    pending: Bytes,
}

/// The sending half of a [`TunnelStream`].
pub(crate) struct TunnelWriter {
    send: SendStream<Bytes>,
    shut: bool,
}

impl TunnelStream {
    /// A stream whose answer has not arrived yet.
    pub(crate) fn awaiting(send: SendStream<Bytes>, response: ResponseFuture) -> Self {
        Self::new(send, RecvSide::Waiting(response))
    }

    /// A stream whose `200` has arrived (or, on the server, that has been answered).
    pub(crate) fn open(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self::new(send, RecvSide::Open(recv))
    }

    fn new(send: SendStream<Bytes>, recv: RecvSide) -> Self {
        Self {
            reader: TunnelReader {
                recv,
                pending: Bytes::new(),
            },
            writer: TunnelWriter { send, shut: false },
        }
    }

    pub(crate) fn split(self) -> (TunnelReader, TunnelWriter) {
        (self.reader, self.writer)
    }
}

impl TunnelReader {
    /// The next chunk as it arrived, after the answer if that is still awaited; `None` at the end. Capacity is
    /// released as soon as the bytes are ours: whoever consumes them applies the back-pressure.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        loop {
            let recv = match &mut self.recv {
                RecvSide::Waiting(response) => {
                    let response = ready!(Pin::new(response).poll(cx)).map_err(h2_to_io)?;
                    if response.status() != StatusCode::OK {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("server answered {}", response.status()),
                        )));
                    }
                    self.recv = RecvSide::Open(response.into_body());
                    continue;
                }
                RecvSide::Open(recv) => recv,
            };
            return match ready!(recv.poll_data(cx)) {
                None => Poll::Ready(Ok(None)),
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    Poll::Ready(Ok(Some(data)))
                }
                Some(Err(err)) if err.reason() == Some(Reason::NO_ERROR) => Poll::Ready(Ok(None)),
                Some(Err(err)) => Poll::Ready(Err(h2_to_io(err))),
            };
        }
    }

    /// The next chunk, as [`poll_chunk`](Self::poll_chunk). Cancel safe.
    pub(crate) async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Copies as much of `data` as fits into `buf` and keeps the rest for the next read.
    fn put(&mut self, mut data: Bytes, buf: &mut ReadBuf<'_>) {
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        data.advance(n);
        self.pending = data;
    }
}

impl AsyncRead for TunnelReader {
    /// Hands over every chunk that has already arrived while `buf` has room (one write to the caller's socket
    /// instead of one per frame); waits only for the first. An end or error met while topping up is met again by
    /// the next read (h2 reports them on every poll).
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(data) = ready!(self.poll_chunk(cx))? else {
            return Poll::Ready(Ok(()));
        };
        self.put(data, buf);
        while buf.remaining() > 0 {
            let Poll::Ready(Ok(Some(data))) = self.poll_chunk(cx) else {
                break;
            };
            self.put(data, buf);
        }
        Poll::Ready(Ok(()))
    }
}

/// Window capacity for up to `wanted` bytes on `send` (at least one byte); the reset's reason once the stream can
/// take no more.
fn poll_granted(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
    wanted: usize,
) -> Poll<io::Result<usize>> {
    // Ask for exactly what is to be sent: nothing is buffered past the window.
    send.reserve_capacity(wanted);
    let closed = match ready!(send.poll_capacity(cx)) {
        Some(Ok(granted)) if granted > 0 => return Poll::Ready(Ok(granted.min(wanted))),
        // A zero grant or an error: the reset poll below tells whether to wait (it registers the waker too).
        Some(_) => false,
        None => true,
    };
    match send.poll_reset(cx) {
        Poll::Ready(Ok(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED)) => {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        Poll::Ready(Ok(reason)) => Poll::Ready(Err(io::Error::other(h2::Error::from(reason)))),
        Poll::Ready(Err(err)) => Poll::Ready(Err(h2_to_io(err))),
        // No longer sendable and no reset to report: never comes back.
        Poll::Pending if closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        Poll::Pending => Poll::Pending,
    }
}

impl TunnelWriter {
    /// Sends `data` itself (no copy), as the window allows.
    pub(crate) async fn send(&mut self, data: Bytes) -> io::Result<()> {
        send_all(&mut self.send, data, false).await
    }

    /// END_STREAM: the other side half-closes the target or caller socket.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if !self.shut {
            self.shut = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Ok(())
    }
}

impl AsyncWrite for TunnelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(poll_granted(&mut self.send, cx, buf.len()))?;
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes frames as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// A body read from a tunnel stream (a response on the agent, a request on the server); capacity is released as
/// frames are handed on.
pub(crate) struct TunnelBody {
    recv: RecvStream,
    data_done: bool,
}

impl TunnelBody {
    pub(crate) fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            data_done: false,
        }
    }
}

impl HttpBody for TunnelBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Sends `data` on `send`, waiting for window capacity as needed; `end` marks its last frame END_STREAM.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> io::Result<()> {
    while !data.is_empty() {
        let n = std::future::poll_fn(|cx| poll_granted(send, cx, data.len())).await?;
        let chunk = data.split_to(n);
        send.send_data(chunk, end && data.is_empty())
            .map_err(h2_to_io)?;
    }
    Ok(())
}

/// Streams a body onto a tunnel stream, trailers included; returns the bytes sent. On failure the stream is reset,
/// so the other side never takes a cut body for a whole one. A reset from the other side ends it at once, even
/// while the body is waiting for its next frame (the source is then dropped, closing a target connection).
pub(crate) async fn send_body<B>(mut body: B, mut send: SendStream<Bytes>) -> Result<u64, BoxError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut sent = 0u64;
    let result = async {
        loop {
            let next = tokio::select! {
                next = body.frame() => next,
                reset = std::future::poll_fn(|cx| send.poll_reset(cx)) => {
                    return Err(match reset {
                        Ok(reason) => BoxError::from(h2::Error::from(reason)),
                        Err(err) => err.into(),
                    });
                }
            };
            let Some(frame) = next else { break };
            let frame = frame.map_err(Into::into)?;
            match frame.into_data() {
                Ok(data) => {
                    sent += data.len() as u64;
                    // END_STREAM rides on the last data frame when the body knows it is done (a known length):
                    // the receiver may drop a stream whose declared length has arrived, and one still open then
                    // is reset, which h2 counts against the connection.
                    let end = body.is_end_stream() && !data.is_empty();
                    send_all(&mut send, data, end).await?;
                    if end {
                        return Ok(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.send_trailers(trailers)?;
                        return Ok(());
                    }
                }
            }
        }
        send.send_data(Bytes::new(), true)?;
        Ok::<_, BoxError>(())
    }
    .await;
    if result.is_err() {
        send.send_reset(Reason::CANCEL);
    }
    result.map(|()| sent)
}
