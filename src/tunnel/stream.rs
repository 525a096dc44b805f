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

/// The receiving side of a CONNECT stream: the server's answer still awaited, the data flowing, or the answer a
/// refusal.
enum RecvSide {
    Waiting(ResponseFuture),
    Open(RecvStream),
    /// The answer was not `200`, or never came. Kept so that every later read fails the same way: h2 gives a
    /// `ResponseFuture`'s outcome once (polled again, it reports a protocol error, waits, or panics when data is
    /// queued behind the answer).
    Refused(io::ErrorKind, String),
}

/// A CONNECT stream as a byte stream. Writes go out at once, even before the server has answered (they wait in the
/// stream's window); reads first wait for the answer and fail with `ConnectionRefused` unless it is `200` (every
/// later read fails the same way).
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
                    let err = match ready!(Pin::new(response).poll(cx)) {
                        Ok(response) if response.status() == StatusCode::OK => {
                            self.recv = RecvSide::Open(response.into_body());
                            continue;
                        }
                        Ok(response) => io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("server answered {}", response.status()),
                        ),
                        Err(err) => h2_to_io(err),
                    };
                    self.recv = RecvSide::Refused(err.kind(), err.to_string());
                    return Poll::Ready(Err(err));
                }
                RecvSide::Refused(kind, message) => {
                    return Poll::Ready(Err(io::Error::new(*kind, message.clone())));
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
    /// the next read: h2 reports them on every poll (pinned by this module's tests).
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

/// `TunnelReader::poll_read` and `splice::pump_out_of_tunnel` top up a read with the chunks that have already
/// arrived and drop an end or error met while doing so; the WebSocket path's `splice::fill` drops an EOF met the
/// same way. They rely on h2 reporting that end or error again on the next poll (`RecvStream::poll_data` gives
/// `None`, or the same error, every time), and `poll_granted` on `SendStream::poll_reset` reporting a reset after
/// `poll_capacity` has already said the stream can take no more. These tests pin that behaviour against h2
/// itself, over a real client and server connection, so an h2 upgrade that changed it fails here. h2 does not
/// repeat a `ResponseFuture`'s outcome, so a refused stream keeps its refusal itself (`RecvSide::Refused`).
#[cfg(test)]
mod tests {
    use super::*;
    use h2::server::SendResponse;
    use http::Request;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::sync::mpsc;

    /// Limit for anything a test awaits: h2 answers on an in-memory pipe at once.
    const WAIT: Duration = Duration::from_secs(5);

    /// What the server side saw of one request.
    type Incoming = (Request<RecvStream>, SendResponse<Bytes>);

    /// A client and a server h2 connection over an in-memory pipe, both driven by tasks; the server's requests
    /// arrive on the channel. Aborting `server` drops its connection and its end of the pipe.
    struct Pair {
        client: h2::client::SendRequest<Bytes>,
        requests: mpsc::UnboundedReceiver<Incoming>,
        server: tokio::task::JoinHandle<()>,
    }

    async fn pair() -> Pair {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let (tx, requests) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            let Ok(mut connection) = h2::server::handshake(server_io).await else {
                return;
            };
            while let Some(Ok(incoming)) = connection.accept().await {
                let _ = tx.send(incoming);
            }
        });
        let (client, connection) = tokio::time::timeout(WAIT, h2::client::handshake(client_io))
            .await
            .unwrap()
            .unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Pair {
            client,
            requests,
            server,
        }
    }

    /// Opens a stream from the client; returns the client's halves and the server's.
    async fn open(
        pair: &mut Pair,
    ) -> (SendStream<Bytes>, RecvStream, RecvStream, SendStream<Bytes>) {
        let request = Request::connect("target.test:443").body(()).unwrap();
        let (response, client_send) = pair.client.send_request(request, false).unwrap();
        let (request, mut respond) = tokio::time::timeout(WAIT, pair.requests.recv())
            .await
            .unwrap()
            .unwrap();
        let server_send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
        (
            client_send,
            response.into_body(),
            request.into_body(),
            server_send,
        )
    }

    /// Polls once, without waiting.
    async fn poll_now<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        std::future::poll_fn(|cx| Poll::Ready(poll(cx))).await
    }

    /// Waits (within [`WAIT`]) past the data for what ends `recv`: `None` or an error.
    async fn data_then_end(recv: &mut RecvStream) -> (Vec<u8>, Option<h2::Error>) {
        let mut data = Vec::new();
        loop {
            let next = tokio::time::timeout(WAIT, std::future::poll_fn(|cx| recv.poll_data(cx)))
                .await
                .unwrap();
            match next {
                Some(Ok(chunk)) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                Some(Err(err)) => return (data, Some(err)),
                None => return (data, None),
            }
        }
    }

    /// The end as the repeat must match it: `None`, or the error's reason and text.
    fn describe(end: Option<&h2::Error>) -> Option<(Option<Reason>, bool, String)> {
        end.map(|err| (err.reason(), err.is_io(), err.to_string()))
    }

    /// Checks that the next polls of `recv` give `end` again at once.
    async fn assert_end_repeats(recv: &mut RecvStream, end: Option<&h2::Error>) {
        for _ in 0..3 {
            match poll_now(|cx| recv.poll_data(cx)).await {
                Poll::Ready(Some(Ok(chunk))) => panic!("data after the end: {chunk:?}"),
                Poll::Ready(again) => {
                    let again = again.map(|result| result.expect_err("an error, as before"));
                    assert_eq!(describe(again.as_ref()), describe(end));
                }
                Poll::Pending => panic!("h2 forgot the end it reported: {:?}", describe(end)),
            }
        }
    }

    #[tokio::test]
    async fn h2_reports_the_end_of_a_stream_on_every_poll() {
        let mut pair = pair().await;
        let (mut client_send, mut client_recv, mut server_recv, mut server_send) =
            open(&mut pair).await;
        // Data and END_STREAM in one go, both ways.
        server_send
            .send_data(Bytes::from_static(b"down"), true)
            .unwrap();
        client_send
            .send_data(Bytes::from_static(b"up"), true)
            .unwrap();
        let (data, end) = data_then_end(&mut client_recv).await;
        assert_eq!(
            (data.as_slice(), describe(end.as_ref())),
            (&b"down"[..], None)
        );
        assert_end_repeats(&mut client_recv, None).await;
        let (data, end) = data_then_end(&mut server_recv).await;
        assert_eq!(
            (data.as_slice(), describe(end.as_ref())),
            (&b"up"[..], None)
        );
        assert_end_repeats(&mut server_recv, None).await;
    }

    #[tokio::test]
    async fn h2_reports_a_reset_on_every_poll_of_both_halves() {
        for reason in [Reason::INTERNAL_ERROR, Reason::CANCEL, Reason::NO_ERROR] {
            let mut pair = pair().await;
            let (mut client_send, mut client_recv, _server_recv, mut server_send) =
                open(&mut pair).await;
            server_send
                .send_data(Bytes::from_static(b"partial"), false)
                .unwrap();
            server_send.send_reset(reason);

            let (_, end) = data_then_end(&mut client_recv).await;
            let end = end.unwrap_or_else(|| panic!("{reason:?}: a reset read as a clean end"));
            assert_eq!(end.reason(), Some(reason));
            assert_end_repeats(&mut client_recv, Some(&end)).await;

            // The sending half: no more capacity, and the reset's reason, each time it is asked.
            for _ in 0..3 {
                client_send.reserve_capacity(1024);
                match poll_now(|cx| client_send.poll_capacity(cx)).await {
                    Poll::Ready(None | Some(Err(_))) => {}
                    other => panic!("{reason:?}: capacity after a reset: {other:?}"),
                }
                match poll_now(|cx| client_send.poll_reset(cx)).await {
                    Poll::Ready(Ok(again)) => assert_eq!(again, reason),
                    other => panic!("{reason:?}: poll_reset after a reset: {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn h2_reports_a_lost_connection_on_every_poll() {
        let mut pair = pair().await;
        let (mut client_send, mut client_recv, _server_recv, _server_send) = open(&mut pair).await;
        pair.server.abort();
        let (_, end) = data_then_end(&mut client_recv).await;
        let end = end.expect("a lost connection is an error, not a clean end");
        assert_end_repeats(&mut client_recv, Some(&end)).await;
        for _ in 0..3 {
            client_send.reserve_capacity(1024);
            assert!(
                matches!(
                    poll_now(|cx| client_send.poll_capacity(cx)).await,
                    Poll::Ready(None | Some(Err(_)))
                ),
                "capacity on a lost connection"
            );
            assert!(
                matches!(
                    poll_now(|cx| client_send.poll_reset(cx)).await,
                    Poll::Ready(_)
                ),
                "poll_reset on a lost connection waits"
            );
        }
    }

    /// An h2 `ResponseFuture` does not report its answer twice (polled again, it waits, or panics when data is
    /// queued), so a stream whose CONNECT was refused keeps the refusal itself and gives it on every read.
    #[tokio::test]
    async fn a_refused_stream_reports_the_refusal_on_every_read() {
        let mut pair = pair().await;
        let request = Request::connect("target.test:443").body(()).unwrap();
        let (response, send) = pair.client.send_request(request, false).unwrap();
        let (_request, mut respond) = tokio::time::timeout(WAIT, pair.requests.recv())
            .await
            .unwrap()
            .unwrap();
        let refusal = http::Response::builder().status(403).body(()).unwrap();
        let mut body = respond.send_response(refusal, false).unwrap();
        body.send_data(Bytes::from_static(b"refused\n"), true)
            .unwrap();
        let (mut reader, _writer) = TunnelStream::awaiting(send, response).split();
        for _ in 0..3 {
            let err = tokio::time::timeout(WAIT, reader.chunk())
                .await
                .expect("the refusal again, at once")
                .expect_err("a refusal");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
            assert!(err.to_string().contains("403"), "{err}");
        }
    }

    /// What the top-up in `TunnelReader::poll_read` relies on, end to end: data and END_STREAM that arrive
    /// together come out as the data, then an EOF on every later read; a reset as the same error every time.
    #[tokio::test]
    async fn a_tunnel_stream_reports_its_end_on_every_read() {
        let mut pair = pair().await;
        let (client_send, client_recv, _server_recv, mut server_send) = open(&mut pair).await;
        server_send
            .send_data(Bytes::from_static(b"last words"), true)
            .unwrap();
        let mut stream = TunnelStream::open(client_send, client_recv);
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"last words");
        for _ in 0..3 {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 0, "EOF again");
        }

        let (client_send, client_recv, _server_recv, mut server_send) = open(&mut pair).await;
        server_send
            .send_data(Bytes::from_static(b"cut"), false)
            .unwrap();
        server_send.send_reset(Reason::INTERNAL_ERROR);
        let (mut reader, _writer) = TunnelStream::open(client_send, client_recv).split();
        let mut got = Vec::new();
        let err = loop {
            match tokio::time::timeout(WAIT, reader.chunk()).await.unwrap() {
                Ok(Some(chunk)) => got.extend_from_slice(&chunk),
                Ok(None) => panic!("a reset read as a clean end"),
                Err(err) => break err,
            }
        };
        assert!(b"cut".starts_with(&got));
        for _ in 0..3 {
            let again = tokio::time::timeout(WAIT, reader.chunk())
                .await
                .unwrap()
                .expect_err("the reset again");
            assert_eq!(
                (again.kind(), again.to_string()),
                (err.kind(), err.to_string())
            );
        }
    }
}
