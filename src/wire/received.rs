//! A body received from a peer, relayed as it arrives: by hyper (HTTP/1.1 responses from the pool, a
//! client's request body) or from one of the shared HTTP/2 connection's streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::base::error::BoxError;

/// A body received from a peer: by hyper (HTTP/1.1 responses from the pool, a client's request body)
/// or from one of [`Shared`]'s HTTP/2 streams.
pub enum Received {
    /// Received by hyper.
    Hyper(Incoming),
    /// From an HTTP/2 stream.
    Http2(H2Body),
    /// Received by hyper on an HTTP/1.1 connection with no other liveness check: failed when nothing
    /// arrives for a while (see [`Watched`]).
    Watched(Watched),
}

/// An HTTP/1.1 response body that fails with [`Stalled`] when no frame arrives for `stall`: the
/// connection has silently stopped delivering. A body that keeps delivering is never cut. The cost is
/// one clock read per frame and one timer per wait for data.
pub struct Watched {
    inner: Incoming,
    stall: std::time::Duration,
    last: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Watched {
    /// Watches `inner`, counting from now.
    pub fn new(inner: Incoming, stall: std::time::Duration) -> Self {
        Self {
            inner,
            stall,
            last: tokio::time::Instant::now(),
            timer: None,
        }
    }
}

/// Nothing arrived from the API server for this long: the connection stopped delivering.
#[derive(Debug, thiserror::Error)]
#[error("the API server's connection delivered nothing for {0:?}; kproxy dropped it as dead")]
pub struct Stalled(pub std::time::Duration);

impl From<Incoming> for Received {
    fn from(body: Incoming) -> Self {
        Received::Hyper(body)
    }
}

/// An HTTP/2 response body. Received data is released to the flow-control window as the reader takes
/// it, as hyper does: the server sends more only as fast as the client reads.
pub struct H2Body {
    recv: h2::RecvStream,
    /// Bytes still expected by `content-length`, for the size hint.
    remaining: Option<u64>,
    data_done: bool,
}

impl H2Body {
    /// The body of a response with these headers. The size hint comes from `content-length`, as in
    /// hyper's own body type: the client side uses it to choose between `content-length` and chunked
    /// framing.
    pub(crate) fn new(recv: h2::RecvStream, headers: &HeaderMap) -> Self {
        let data_done = recv.is_end_stream();
        let remaining = if data_done {
            Some(0)
        } else {
            headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        Self {
            recv,
            remaining,
            data_done,
        }
    }
}

impl http_body::Body for Received {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Received::Hyper(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            Received::Watched(w) => match Pin::new(&mut w.inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    w.last = tokio::time::Instant::now();
                    Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                }
                Poll::Pending => {
                    use std::future::Future as _;
                    let deadline = w.last + w.stall;
                    let timer = w
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(w.stall))))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
            Received::Http2(b) => {
                if !b.data_done {
                    match std::task::ready!(b.recv.poll_data(cx)) {
                        Some(Ok(data)) => {
                            let _ = b.recv.flow_control().release_capacity(data.len());
                            if let Some(r) = &mut b.remaining {
                                *r = r.saturating_sub(data.len() as u64);
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => b.data_done = true,
                    }
                }
                match std::task::ready!(b.recv.poll_trailers(cx)) {
                    Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Received::Hyper(inner) => inner.is_end_stream(),
            Received::Watched(w) => w.inner.is_end_stream(),
            Received::Http2(b) => b.recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Hyper(inner) => inner.size_hint(),
            Received::Watched(w) => w.inner.size_hint(),
            Received::Http2(b) => match b.remaining {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}
