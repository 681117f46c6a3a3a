//! The response body type every handler returns. An enum rather than a boxed trait object so that the
//! hot path (an upstream body relayed to the client) costs no allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::base::lease::Lease;
use crate::wire::received::Received;

pub use crate::base::error::BoxError;

/// A response body: empty, a buffer, a relayed upstream body, or anything else boxed.
pub struct Body(Kind);

enum Kind {
    Full(Option<Bytes>),
    Upstream(Received),
    /// A relayed upstream body holding a place among the bulk connections until it is dropped.
    Leased {
        inner: Received,
        _lease: Lease,
    },
    /// A long-running response (watch, `log?follow`): relayed like `Upstream`, but ended cleanly, as if
    /// the upstream had finished, once `stop` fires at shutdown. Clients re-establish watches anyway.
    Stream {
        inner: Received,
        stop: Pin<Box<WaitForCancellationFutureOwned>>,
        /// The request's place on an upstream lane, freed when the body is dropped.
        _lease: Option<Lease>,
    },
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body(Kind::Full(None))
    }

    /// A body of exactly these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// An upstream body relayed frame by frame as it arrives.
    pub fn upstream(inner: impl Into<Received>) -> Self {
        Body(Kind::Upstream(inner.into()))
    }

    /// An upstream body relayed like [`Body::upstream`], holding `lease` until it is dropped.
    pub fn leased(inner: Received, lease: Lease) -> Self {
        Body(Kind::Leased {
            inner,
            _lease: lease,
        })
    }

    /// An upstream body that ends cleanly when `stop` fires, holding `lease` until it is dropped.
    pub fn stream(
        inner: Received,
        stop: WaitForCancellationFutureOwned,
        lease: Option<Lease>,
    ) -> Self {
        Body(Kind::Stream {
            inner,
            stop: Box::pin(stop),
            _lease: lease,
        })
    }

    /// Whether this relays a long-running response (watch, followed log) that shutdown ends. ops: the
    /// metrics count these as open watches and keep them out of the latency histogram.
    pub fn is_stream(&self) -> bool {
        matches!(self.0, Kind::Stream { .. })
    }

    /// Any other body.
    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Body(Kind::Boxed(body.map_err(Into::into).boxed_unsync()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(inner) | Kind::Leased { inner, .. } => Pin::new(inner).poll_frame(cx),
            Kind::Stream { inner, stop, .. } => {
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Pin::new(inner).poll_frame(cx)
            }
            Kind::Boxed(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(inner) | Kind::Leased { inner, .. } => inner.is_end_stream(),
            Kind::Stream { inner, .. } => inner.is_end_stream(),
            Kind::Boxed(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(inner) | Kind::Leased { inner, .. } => inner.size_hint(),
            // A stream may be cut short at shutdown, so it never promises a length.
            Kind::Stream { .. } => SizeHint::default(),
            Kind::Boxed(inner) => inner.size_hint(),
        }
    }
}

use std::future::Future as _;
