//! Kubernetes `Status` bodies: every error kproxy itself answers is one, so `kubectl` and client
//! libraries print its message instead of a bare status code.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::wire::body::Body;

/// The media type of every `Status` kproxy writes.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Serialises a `metav1.Status` failure with the given code, `reason` (a `metav1.StatusReason`)
/// and human-readable message.
pub fn status_json(code: StatusCode, reason: &str, message: &str) -> Bytes {
    let value = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut out = serde_json::to_vec(&value).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// A complete response carrying a `Status` body.
pub fn response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let mut resp = Response::new(Body::full(status_json(code, reason, message)));
    *resp.status_mut() = code;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, JSON);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// The `metav1.StatusReason` Kubernetes uses for an HTTP status code.
pub fn reason_for(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        504 => "Timeout",
        503 | 502 => "ServiceUnavailable",
        _ => "InternalError",
    }
}
