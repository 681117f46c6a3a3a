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
}

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
            Received::Http2(b) => b.recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Hyper(inner) => inner.size_hint(),
            Received::Http2(b) => match b.remaining {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}
