//! The tunnel's transport, set up once for both roles: TCP with Nagle off, the socket's reads buffered beneath TLS,
//! its writes gathered ([`gather`](super::gather)), TLS 1.3 allowed to hold two full frames of records, and HTTP/2
//! with the tunnel's windows, frame size, header limit and reset memory. The agent connects and the server accepts,
//! each through the functions here, so no setting can differ between the two ends.
//!
//! The roles keep what is theirs: the agent its window growth and probe (`agent::keeper`), the server its
//! handshake limits and stream service (`server`). Writes are gathered only while the connection's task runs
//! inside [`GatheredWrites::gather_while`], which each role calls where it spawns or awaits that task.

use bytes::Bytes;
use rustls::pki_types::ServerName;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::MAX_HEADER_BYTES;
use super::gather::{self, GatheredWrites};

/// HTTP/2 flow-control windows, both roles: how much one side lets the other have in flight unacknowledged, per
/// stream and per tunnel, and so the most a slow reader makes the receiving side hold. h2 acknowledges received
/// data in batches of half a window, so one stream moves about `window / 2` per round trip: 32 MiB carries a
/// fast link at tens of milliseconds of round trip (the bench's distance rows; smaller windows capped it there,
/// larger ones were no faster, the CPU being the limit).
///
/// They are fixed, not hyper's adaptive windows: those start at 64 KiB on a fast link, and h2 sizes its guard
/// against floods of small DATA frames from the tunnel window (half of it), so a burst of small writes on a few
/// hundred streams (interactive sessions) would make the peer close the whole tunnel.
pub(crate) const STREAM_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// The tunnel-wide window: the most one side buffers for the other across all streams.
pub(crate) const CONNECTION_WINDOW_BYTES: u32 = 64 * 1024 * 1024;

/// Largest HTTP/2 frame either role accepts (SETTINGS_MAX_FRAME_SIZE; the default is 16 KiB). One DATA frame then
/// carries a whole copy buffer: h2 writes a frame at a time, so each frame is a socket write and a wake-up of the
/// reader, and larger frames cost less CPU per byte (bench/results/HISTORY.md). A frame is only this large when
/// that much was read at once, that is when the sender has more data than the path takes; a trickle still goes
/// out as it comes.
pub(crate) const MAX_FRAME_BYTES: u32 = 256 * 1024;

/// Streams either side remembers after resetting them (a caller that went away, say), so frames the peer sent
/// before it saw the reset are dropped quietly. h2 remembers 10 by default: with more cancellations in flight, the
/// late frames of the forgotten ones count as protocol errors, and after 1,024 of those h2 closes the tunnel (a
/// few dozen callers cancelling downloads brought it down).
pub(crate) const RESET_STREAMS_REMEMBERED: usize = 4096;

/// Bytes the tunnel's TCP socket is read in at once, beneath TLS: rustls reads at most one record (16 KiB) per call,
/// so a bulk transfer would cost a `recv` per record; through this buffer it costs one per 64 KiB. Allocated once
/// per tunnel connection.
const TLS_READ_BUFFER_BYTES: usize = 64 * 1024;

/// Encrypted bytes TLS may hold for the socket (rustls's default is 64 KiB). rustls takes plaintext only while its
/// output fits under this limit, so with the default a 64 KiB DATA frame plus its 9-byte header went out as two
/// socket writes: four full records, then a record of 9 bytes in a TCP segment of its own. Two frames fit.
const TLS_WRITE_BUFFER_BYTES: usize = 2 * MAX_FRAME_BYTES as usize;

/// The socket TLS runs over: reads through `R`, writes gathered.
pub(crate) type Socket<R> = gather::Socket<R>;

/// Prepares a connected TCP socket to carry a tunnel: Nagle off, the read half buffered for TLS and passed through
/// `wrap_read` (the agent meters what arrives; the server takes it as it is), writes gathered through the returned
/// [`GatheredWrites`].
pub(crate) fn socket<R>(
    tcp: TcpStream,
    wrap_read: impl FnOnce(BufReader<OwnedReadHalf>) -> R,
) -> (Socket<R>, GatheredWrites) {
    // Only fails on a socket that is already gone; the handshake then reports it.
    let _ = tcp.set_nodelay(true);
    let (read, writes) = gather::split(tcp);
    let read = wrap_read(BufReader::with_capacity(TLS_READ_BUFFER_BYTES, read));
    (Socket::new(read, writes.clone()), writes)
}

/// The agent's side of the TLS handshake.
///
/// # Errors
/// The handshake's I/O or TLS error (with TLS 1.3 a refused client certificate shows only at the first request).
pub(crate) async fn connect_tls<R: AsyncRead + Unpin>(
    config: Arc<rustls::ClientConfig>,
    server: ServerName<'static>,
    socket: Socket<R>,
) -> io::Result<client::TlsStream<Socket<R>>> {
    let mut tls = TlsConnector::from(config).connect(server, socket).await?;
    tls.get_mut()
        .1
        .set_buffer_limit(Some(TLS_WRITE_BUFFER_BYTES));
    Ok(tls)
}

/// The server's side of the TLS handshake.
///
/// # Errors
/// The handshake's I/O or TLS error (a client certificate that does not verify, say).
pub(crate) async fn accept_tls<R: AsyncRead + Unpin>(
    acceptor: &TlsAcceptor,
    socket: Socket<R>,
) -> io::Result<server::TlsStream<Socket<R>>> {
    let mut tls = acceptor.accept(socket).await?;
    tls.get_mut()
        .1
        .set_buffer_limit(Some(TLS_WRITE_BUFFER_BYTES));
    Ok(tls)
}

/// The agent's HTTP/2 handshake on an established TLS stream.
///
/// # Errors
/// The handshake's error (the server closed the connection, say).
pub(crate) async fn h2_client<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
) -> Result<
    (
        h2::client::SendRequest<Bytes>,
        h2::client::Connection<T, Bytes>,
    ),
    h2::Error,
> {
    h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
        .handshake(io)
        .await
}

/// The server's HTTP/2 handshake on an established TLS stream; `max_streams` bounds the agent's concurrent streams.
///
/// # Errors
/// The handshake's error (the agent sent no valid preface, say).
pub(crate) async fn h2_server<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    max_streams: u32,
) -> Result<h2::server::Connection<T, Bytes>, h2::Error> {
    h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_concurrent_streams(max_streams)
        .max_frame_size(MAX_FRAME_BYTES)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
        .handshake(io)
        .await
}
