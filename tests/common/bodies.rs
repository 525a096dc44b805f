//! Request and response bodies: fixed ones, one fed through a channel, and a deterministic byte pattern that can be
//! streamed at any length and checked byte-exact at the other end without holding it whole.
#![allow(
    dead_code,
    reason = "every test crate compiles the whole harness and each uses a different part of this module"
)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty_body() -> TestBody {
    full(Bytes::new())
}

/// A deterministic byte pattern, `len` bytes long, streamed in 64 KiB frames without a length.
pub fn pattern_body(len: u64) -> TestBody {
    let chunk = 64 * 1024u64;
    let stream = futures_util::stream::iter((0..len.div_ceil(chunk)).map(move |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(pattern_chunk(start, end)))
    }));
    StreamBody::new(stream).boxed()
}

/// Byte `i` of the pattern is `i % 251`; this holds the pattern from 0 for 64 KiB plus one period, so that any chunk
/// of up to 64 KiB is a slice of it (cheap even in an unoptimised test build).
static PATTERN: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
    (0..64 * 1024 + 251u64)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
});

/// The pattern bytes `start..end` (at most 64 KiB).
pub fn pattern_chunk(start: u64, end: u64) -> Bytes {
    let from = (start % 251) as usize;
    PATTERN.slice(from..from + (end - start) as usize)
}

/// Whether `data` is the pattern from byte `offset` on.
pub fn is_pattern(offset: u64, data: &[u8]) -> bool {
    data.chunks(64 * 1024).enumerate().all(|(k, piece)| {
        let at = offset + (k * 64 * 1024) as u64;
        piece == pattern_chunk(at, at + piece.len() as u64)
    })
}

/// Reads a body to the end, checking it against the pattern; returns its length.
pub async fn check_pattern(mut body: Incoming) -> u64 {
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            if !is_pattern(offset, data) {
                let i = data
                    .iter()
                    .enumerate()
                    .position(|(i, b)| *b != ((offset + i as u64) % 251) as u8)
                    .unwrap_or(0);
                panic!("byte {} differs", offset + i as u64);
            }
            offset += data.len() as u64;
        }
    }
    offset
}

/// A request body fed through a channel, to control when each part is sent.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| {
            (
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk)),
                rx,
            )
        })
    });
    (tx, StreamBody::new(stream).boxed())
}
