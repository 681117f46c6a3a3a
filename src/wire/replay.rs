//! The one way kproxy sends a request again: only a request without a body (kproxy streams bodies and
//! keeps none), rebuilt from a copy of its head. Used after the API server refused a stream unprocessed
//! ([`crate::upstream::shared`]) and after a 401 to a credential kproxy has since renewed
//! ([`crate::proxy::forward`]).

use http::{HeaderMap, Method, Request, Uri};

use crate::wire::body::Body;

/// A bodyless request's method, URI and headers, kept to send it again.
pub struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// A copy of `req`'s head.
    pub fn of<B>(req: &Request<B>) -> Self {
        Self::new(
            req.method().clone(),
            req.uri().clone(),
            req.headers().clone(),
        )
    }

    /// A head from its parts.
    pub fn new(method: Method, uri: Uri, headers: HeaderMap) -> Self {
        Self {
            method,
            uri,
            headers,
        }
    }

    /// The headers, to change before sending again (a renewed credential).
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// A bodyless request with this head.
    pub fn request(&self) -> Request<Body> {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}
