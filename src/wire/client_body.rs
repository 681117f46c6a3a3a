//! A client's request body, watched: when it fails (malformed chunked framing, a body shorter than its
//! `Content-Length`), the request is the client's fault, and kproxy answers 400 instead of blaming the
//! API server with a 502.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::wire::body::Body;

/// Records why the client's body failed, if it did.
#[derive(Clone, Default)]
pub struct BodyFailure(Arc<OnceLock<String>>);

impl BodyFailure {
    /// Why the client's body failed, once it has.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// `body` as a request body to send upstream, with the record of its failure. Only for bodies that
/// are not empty: an empty one cannot fail and is sent as it is, with no allocation.
pub fn watched(body: Incoming) -> (Body, BodyFailure) {
    let failure = BodyFailure::default();
    let body = Body::boxed(Watched {
        inner: body,
        failure: failure.clone(),
    });
    (body, failure)
}

struct Watched {
    inner: Incoming,
    failure: BodyFailure,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &frame {
            let _ = this.failure.0.set(crate::base::error::chain(e));
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
