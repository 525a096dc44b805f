//! A body wrapper that counts the bytes it passes on, so bytes relayed on plain requests show in the metrics.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::OpenGuard;

/// Passes frames through unchanged and adds the length of each data frame to `counter`.
pub(crate) struct Counted<B> {
    inner: B,
    counter: Counter,
    /// Held until the body is dropped, so an "open streams" gauge covers the whole exchange.
    _guard: Option<OpenGuard>,
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, counter: Counter, guard: Option<OpenGuard>) -> Self {
        Self {
            inner,
            counter,
            _guard: guard,
        }
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
