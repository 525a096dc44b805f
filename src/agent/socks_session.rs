//! One SOCKS caller on the proxy port: the handshake (`socks`), read within `header_read_timeout`; then a stream to
//! the target opened exactly as for `CONNECT host:port` ([`proxy::open_connect`]: `direct_targets`, `fast_connect`,
//! the tunnel, metrics as kind `socks`); the outcome as the SOCKS reply; then the bytes, relayed until either side
//! is done.
//!
//! A refusal from the server becomes the reply code its `fluidity-error` header names (refused, unreachable,
//! network unreachable, timeout, not allowed), or, from a server that does not send it, the one its status implies.
//! With `fast_connect` the caller hears "succeeded" before the server has answered, as a CONNECT caller hears
//! `200`, and a target that fails closes the connection. It never serves HTTP: `serve_caller` picks this path
//! by the first byte.

use http::Response;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span, field};

use super::Shared;
use super::proxy::{self, Opened};
use super::socks::{self, Answer, Handshake, Reply, Step, Version};
use super::status;
use crate::config::ProxyAuth;
use crate::metrics::StreamKind;
use crate::tunnel::authority::Target;
use crate::tunnel::{Body, ERROR_REASON_HEADER};

/// After a refusal, how long the agent waits for the caller to close before it closes itself: closing with
/// unread bytes from the caller would send a reset, which can destroy the reply before the caller reads it.
const LINGER: Duration = Duration::from_millis(500);

/// What a finished handshake asks for.
struct Request {
    version: Version,
    target: Target,
    /// Bytes the caller sent after its request, for the target.
    early_data: Vec<u8>,
}

/// Serves one caller whose first byte was a SOCKS version: handshake, stream, relay. Returns when the caller's
/// connection is done; every failure is answered in the protocol's own terms (or by a close) and logged at debug.
pub(super) async fn serve(shared: &Arc<Shared>, mut tcp: TcpStream) {
    let handshake = tokio::time::timeout(
        shared.config.header_read_timeout,
        handshake(shared.config.proxy_auth.as_ref(), &mut tcp),
    );
    let request = tokio::select! {
        result = handshake => match result {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => return linger(tcp).await,
            Ok(Err(err)) => return debug!(error = %err, "socks handshake failed"),
            Err(_) => return debug!("socks handshake timed out"),
        },
        () = shared.drain.graceful.cancelled() => return,
    };
    let span = debug_span!(
        "request",
        method = request.version.as_str(),
        target = field::Empty
    );
    span.record("target", field::display(&request.target));
    connect(shared, tcp, request).instrument(span).await;
}

/// Reads the caller's messages and answers them until it asks for a stream (`Some`) or is refused (`None`, after
/// the refusal is sent).
async fn handshake(auth: Option<&ProxyAuth>, tcp: &mut TcpStream) -> io::Result<Option<Request>> {
    let mut machine = Handshake::new(auth);
    let mut buf = [0u8; socks::MAX_MESSAGE_BYTES];
    let mut filled = 0;
    loop {
        match machine.step(&buf[..filled]) {
            Step::More => {
                // The machine answers before `MAX_MESSAGE_BYTES` are waiting, so there is always room.
                let n = tcp.read(&mut buf[filled..]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                filled += n;
            }
            Step::Answer { consumed, answer } => {
                tcp.write_all(answer.as_bytes()).await?;
                buf.copy_within(consumed..filled, 0);
                filled -= consumed;
            }
            Step::Connect {
                consumed,
                version,
                target,
            } => {
                return Ok(Some(Request {
                    version,
                    target,
                    early_data: buf[consumed..filled].to_vec(),
                }));
            }
            Step::Close { answer } => {
                if let Some(answer) = answer {
                    tcp.write_all(answer.as_bytes()).await?;
                }
                return Ok(None);
            }
        }
    }
}

/// Opens the stream `request` asks for, replies with the outcome, and relays.
async fn connect(shared: &Arc<Shared>, mut tcp: TcpStream, request: Request) {
    let kind = StreamKind::Socks;
    let version = request.version;
    let early = shared.config.fast_connect;
    let opened = tokio::select! {
        opened = proxy::open_connect(shared, &request.target, kind, early) => opened,
        () = shared.drain.kill.cancelled() => return,
    };
    let mut stream = match opened {
        Ok(Opened::Stream(stream)) => {
            shared.metrics.request(kind, "ok");
            stream
        }
        Ok(Opened::Refused(response)) => {
            // Counted as a CONNECT refusal is: the server's 5xx are errors, its 403 and 429 answers.
            let outcome = if response.status().is_server_error() {
                "error"
            } else {
                "ok"
            };
            shared.metrics.request(kind, outcome);
            status::record_answer(shared, kind, request.target.to_string(), &response);
            debug!(status = response.status().as_u16(), "stream refused");
            return refuse(tcp, socks::reply(version, reply_for(&response))).await;
        }
        Err(err) => {
            shared.metrics.request(kind, err.class());
            status::record_error(shared, kind, request.target.to_string(), &err);
            debug!(error = %err, class = err.class(), "request failed");
            return refuse(tcp, socks::reply(version, Reply::for_reason(err.reason()))).await;
        }
    };
    let succeeded = socks::reply(version, Reply::Succeeded);
    if let Err(err) = tcp.write_all(succeeded.as_bytes()).await {
        return debug!(error = %err, "caller gone before the reply");
    }
    if !request.early_data.is_empty()
        && let Err(err) = stream.write_all(&request.early_data).await
    {
        return debug!(error = %err, "stream failed before the relay");
    }
    let guard = shared.metrics.stream_opened(kind);
    shared
        .metrics
        .bytes
        .up
        .inc_by(request.early_data.len() as u64);
    proxy::relay(shared, tcp, stream).await;
    drop(guard);
}

/// The reply for a server's refusal: the reason its `fluidity-error` header names, else what its status implies.
fn reply_for(response: &Response<Body>) -> Reply {
    match response
        .headers()
        .get(ERROR_REASON_HEADER)
        .and_then(|value| value.to_str().ok())
    {
        Some(reason) => Reply::for_reason(reason),
        None => Reply::for_status(response.status().as_u16()),
    }
}

/// Sends a failure reply and closes.
async fn refuse(mut tcp: TcpStream, answer: Answer) {
    if let Err(err) = tcp.write_all(answer.as_bytes()).await {
        return debug!(error = %err, "caller gone before the reply");
    }
    linger(tcp).await;
}

/// Closes the caller's connection after a refusal: half-closes it, then reads (and drops) what the caller still
/// sends until it closes too or [`LINGER`] passes, so that the refusal is not lost to a reset.
async fn linger(mut tcp: TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
