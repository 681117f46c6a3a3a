//! The reverse proxy: rewrites a client request for the API server (URL, hop-by-hop headers,
//! `X-Forwarded-For`, credentials), sends it upstream and relays the answer as it
//! streams. Long-running requests (watch, `log?follow`) ride the [`StreamLanes`] instead of the ordinary
//! client, so that hundreds of them neither exhaust one HTTP/2 connection's streams nor queue ordinary
//! requests behind them, and their responses end cleanly at shutdown. Upgrades go to [`Upgrader`].

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::auth::credentials::Used;
use crate::auth::Auth;
use crate::kube::kubeconfig::Server;
use crate::proxy::error::ProxyError;
use crate::proxy::upgrade::Upgrader;
use crate::upstream::{Class, Lease, Upstream};
use crate::wire::body::Body;
use crate::wire::client_body;
use crate::wire::headers::strip_hop_by_hop;
use crate::wire::received::Received;
use crate::wire::replay::Replay;

/// The `User-Agent` sent when the client sends none (kubectl sends its own in that case).
pub const USER_AGENT: &str = concat!("kproxy/", env!("CARGO_PKG_VERSION"));

/// Forwards requests to one API server.
pub struct Proxy {
    server: Server,
    /// The server's path, prepended to every request with `--append-server-path`.
    base_path: String,
    /// The upstream connections, rebuilt when the TLS material changes.
    upstream: std::sync::Arc<Upstream>,
    auth: Auth,
    upgrader: Upgrader,
    /// Fired at shutdown to end long-running responses.
    streams: CancellationToken,
}

impl Proxy {
    /// A proxy to `server`.
    pub fn new(
        server: Server,
        append_server_path: bool,
        upstream: std::sync::Arc<Upstream>,
        auth: Auth,
        upgrader: Upgrader,
        streams: CancellationToken,
    ) -> Self {
        let base_path = if append_server_path {
            server.path.clone()
        } else {
            String::new()
        };
        Self {
            server,
            base_path,
            upstream,
            auth,
            upgrader,
            streams,
        }
    }

    /// The API server this proxy forwards to.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The statistics of this route and API server (metrics).
    pub fn stats(&self) -> &std::sync::Arc<crate::telemetry::metrics::UpstreamStats> {
        self.upstream.stats()
    }

    /// Forwards `req` with its path replaced by `path` (raw, still percent-encoded).
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        path: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        let uri = self.upstream_uri(path, req.uri().query())?;
        let headers = req.headers_mut();
        let upgrade = strip_hop_by_hop_keep_upgrade(headers);
        headers.remove(header::HOST);
        append_forwarded_for(headers, client_ip);
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        }
        // A body-less request answered 401 after kproxy renewed its credential is sent once more with
        // the new one; keep its headers, before credentials are added, for that (issue #3). Requests with
        // a body are never replayed.
        let replay = (upgrade.is_none()
            && self.auth.credentials.renews_on_rejection()
            && hyper::body::Body::is_end_stream(req.body()))
        .then(|| req.headers().clone());
        // ops hook (observe): a request that cannot get a credential makes /readyz fail.
        let used = self
            .auth
            .apply(req.headers_mut())
            .await
            .inspect_err(|_| crate::telemetry::hooks::credential_failed())?;
        if let Some(upgrade) = upgrade {
            // Boxed: the tunnel's future is large and rare; unboxed it would sit in every connection.
            let answer = Box::pin(self.upgrader.tunnel(req, uri, upgrade, &self.server)).await;
            // ops hook (observe): upgrades always speak HTTP/1.1 upstream.
            crate::telemetry::hooks::upstream_answered(
                answer.is_ok().then_some(http::Version::HTTP_11),
            );
            let resp = answer?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                if let Some(used) = used {
                    self.auth.credentials.rejected(used);
                }
            }
            return Ok(resp);
        }
        let class = if is_long_running(path, uri.query()) {
            Class::LongRunning
        } else if is_bulk_read(req.method(), path) {
            Class::Bulk
        } else {
            Class::Ordinary
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        // The connection picks HTTP/1.1 or HTTP/2 per connection; the client's version is irrelevant.
        parts.version = http::Version::HTTP_11;
        let retry =
            replay.map(|headers| Replay::new(parts.method.clone(), parts.uri.clone(), headers));
        // A request body is watched so that a malformed one is answered 400, not blamed on the server.
        let (body, body_failure) = if hyper::body::Body::is_end_stream(&body) {
            (Body::upstream(body), None)
        } else {
            let (body, failure) = client_body::watched(body);
            (body, Some(failure))
        };
        let upstream_req = Request::from_parts(parts, body);
        // A long-running request takes a lane, a bulk read one of the bulk connections; either place is
        // held (through the body) until the response is dropped.
        let (mut resp, mut lease) = self.send(upstream_req, class).await.map_err(|e| {
            match body_failure.as_ref().and_then(|f| f.reason()) {
                Some(reason) => {
                    ProxyError::BadRequest(format!("the request body could not be read: {reason}"))
                }
                None => e,
            }
        })?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            if let Some(used) = used {
                // Boxed: rare, and its futures (a credential refresh, a second `send`) would otherwise
                // be carried, and copied, by every request's future.
                (resp, lease) = Box::pin(self.rejected(used, retry, class, (resp, lease))).await?;
            }
        }
        let (mut parts, body) = resp.into_parts();
        // RFC 9112 §6.3: a response with both `Transfer-Encoding` and `Content-Length` is framed by the
        // former, and the latter must be dropped; relayed, it would cut the body at its length and the
        // response would look complete. (hyper decoded the body as chunked; hop-by-hop stripping
        // removes `Transfer-Encoding`, and the client connection frames the body afresh.)
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(&mut parts.headers);
        // The client connection is HTTP/1.1 whatever the upstream spoke.
        parts.version = http::Version::HTTP_11;
        let body = match (class, lease) {
            (Class::LongRunning, lease) => {
                Body::stream(body, self.streams.clone().cancelled_owned(), lease)
            }
            (_, Some(lease)) => Body::leased(body, lease),
            (_, None) => Body::upstream(body),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The API server answered 401 to credential `used`: the credential source hears of it, and a
    /// bodyless request (`retry`) is sent once more when the source has a new credential by now.
    async fn rejected(
        &self,
        used: Used,
        retry: Option<Replay>,
        class: Class,
        answer: (Response<Received>, Option<Lease>),
    ) -> Result<(Response<Received>, Option<Lease>), ProxyError> {
        self.auth.credentials.rejected(used);
        let Some(mut retry) = retry else {
            return Ok(answer);
        };
        let renewed = self.auth.apply(retry.headers_mut()).await?;
        if renewed.is_none() || renewed == Some(used) {
            return Ok(answer);
        }
        tracing::debug!(
            "401 with a credential kproxy has since renewed: sending the request once more"
        );
        let again = self.send(retry.request(), class).await?;
        if again.0.status() == StatusCode::UNAUTHORIZED {
            if let Some(renewed) = renewed {
                self.auth.credentials.rejected(renewed);
            }
        }
        Ok(again)
    }

    /// Sends one request upstream over the connections its class calls for (see [`crate::upstream`]).
    async fn send(
        &self,
        req: Request<Body>,
        class: Class,
    ) -> Result<(Response<Received>, Option<Lease>), ProxyError> {
        let answer = self.upstream.send(req, class).await;
        // ops hook (observe): readiness, metrics and the access log's protocol field.
        crate::telemetry::hooks::upstream_answered(answer.as_ref().ok().map(|(r, _)| r.version()));
        answer.map_err(|e| ProxyError::upstream(&self.server, e))
    }

    fn upstream_uri(&self, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::try_from(pq)
            .map_err(|e| ProxyError::BadRequest(format!("invalid path: {e}")))?;
        Uri::builder()
            .scheme(self.server.scheme.clone())
            .authority(self.server.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::BadRequest(format!("invalid path: {e}")))
    }
}

impl Proxy {
    /// ops: the admin listener's readiness probe, an authenticated `GET /version` (public on every API
    /// server, and cheap). Returns the status of any answer; the body is read and dropped.
    pub async fn probe(&self) -> Result<StatusCode, ProxyError> {
        use http_body_util::BodyExt as _;
        let uri = self.upstream_uri("/version", None)?;
        let mut req = Request::get(uri)
            .body(Body::empty())
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        let headers = req.headers_mut();
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let used = self
            .auth
            .apply(headers)
            .await
            .inspect_err(|_| crate::telemetry::hooks::credential_failed())?;
        let (resp, _) = self.send(req, Class::Ordinary).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            if let Some(used) = used {
                self.auth.credentials.rejected(used);
            }
        }
        // Reading the (small) body to its end lets an HTTP/1.1 connection go back to the pool.
        let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await;
        Ok(status)
    }
}

/// Removes hop-by-hop headers, but returns the `Upgrade` value when the request asks for an upgrade,
/// because the tunnel must send it on.
///
/// An upgrade to `h2c` alone is not one: `curl --http2 http://...` offers it on every plain request.
/// kubectl proxy hijacks such a request and turns the API server's ordinary 200 into
/// `500 invalid upgrade response`; kproxy declines the offer (as RFC 9110 §7.8 lets a server do, and as
/// the API server itself does over TLS) and proxies the request normally, body included.
fn strip_hop_by_hop_keep_upgrade(headers: &mut http::HeaderMap) -> Option<HeaderValue> {
    let upgrade_value = headers
        .get(header::UPGRADE)
        .filter(|v| !only_h2c(v))
        .cloned();
    let upgrade = strip_hop_by_hop(headers);
    if upgrade {
        upgrade_value
    } else {
        None
    }
}

/// Whether an `Upgrade` value offers nothing but `h2c`.
fn only_h2c(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .all(|t| t.eq_ignore_ascii_case(b"h2c"))
}

/// Appends the client address to `X-Forwarded-For`, as Go's `ReverseProxy` does.
fn append_forwarded_for(headers: &mut http::HeaderMap, client_ip: Option<IpAddr>) {
    let Some(ip) = client_ip else { return };
    let name = http::HeaderName::from_static("x-forwarded-for");
    let mut value = String::with_capacity(48);
    for prior in headers.get_all(&name) {
        if let Ok(s) = prior.to_str() {
            value.push_str(s);
            value.push_str(", ");
        }
    }
    push_ip(&mut value, ip);
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
    }
}

/// Writes `ip` as `Display` does; IPv4 (every request from `127.0.0.1`) without the formatting
/// machinery, which costs more than the rest of the header handling.
fn push_ip(out: &mut String, ip: IpAddr) {
    use std::fmt::Write as _;
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// Whether a request is a read whose answer can run to megabytes, by the API server's URL grammar: a
/// LIST (`GET /api/v1/pods`, `/apis/apps/v1/namespaces/ns/deployments`, `/api/v1/namespaces`), a
/// pod's log (`.../pods/NAME/log`), or an OpenAPI document (`/openapi/...`). Single objects, discovery,
/// subresources other than `log`, and anything that is not a GET are not.
pub fn is_bulk_read(method: &http::Method, path: &str) -> bool {
    if method != http::Method::GET {
        return false;
    }
    // Up to 8 segments; a path with more (e.g. a service proxy's) is not a bulk read.
    let mut seg = [""; 8];
    let mut n = 0;
    for s in path.strip_prefix('/').unwrap_or(path).split('/') {
        if n == seg.len() {
            return false;
        }
        seg[n] = s;
        n += 1;
    }
    let rest = match &seg[..n] {
        ["openapi", ..] => return true,
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return false,
    };
    match rest {
        // A resource name is never empty: `/api/v1/` (discovery) and `/api/v1/pods/` are not LISTs.
        [resource] => !resource.is_empty(),
        ["namespaces", _namespace, resource] => !resource.is_empty(),
        ["namespaces", _namespace, "pods", _name, "log"] => true,
        _ => false,
    }
}

/// Whether a request is long-running in the API server's sense, so that shutdown ends it instead of
/// waiting: watches (`?watch=true`, `/watch/` paths) and followed logs.
pub fn is_long_running(path: &str, query: Option<&str>) -> bool {
    if path.contains("/watch/") {
        return true;
    }
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            // The API server reads these with Go's strconv.ParseBool, so `watch=True` or `follow=t`
            // start a stream too.
            (k == "watch" || k == "follow")
                && matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_reads_follow_the_api_url_grammar() {
        let get = &http::Method::GET;
        for path in [
            "/api/v1/pods",
            "/api/v1/namespaces",
            "/api/v1/namespaces/default/configmaps",
            "/apis/apps/v1/deployments",
            "/apis/apps/v1/namespaces/ns/deployments",
            "/api/v1/namespaces/ns/pods/p/log",
            "/openapi/v2",
            "/openapi/v3/apis/apps/v1",
        ] {
            assert!(is_bulk_read(get, path), "{path}");
        }
        for path in [
            "/version",
            "/api",
            "/api/v1",
            "/api/v1/",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/api/v1/pods/",
            "/api/v1/namespaces/default",
            "/api/v1/namespaces/default/pods/p",
            "/api/v1/namespaces/default/pods/p/status",
            "/api/v1/namespaces/default/pods/p/exec",
            "/api/v1/namespaces/ns/services/s:80/proxy/a/b/c/d",
            "/apis/apps/v1/namespaces/ns/deployments/d/scale",
            "/healthz",
            "",
        ] {
            assert!(!is_bulk_read(get, path), "{path}");
        }
        assert!(!is_bulk_read(
            &http::Method::POST,
            "/api/v1/namespaces/ns/pods"
        ));
        assert!(!is_bulk_read(
            &http::Method::DELETE,
            "/api/v1/namespaces/ns/pods"
        ));
    }

    #[test]
    fn h2c_alone_is_not_an_upgrade() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"),
        );
        assert_eq!(strip_hop_by_hop_keep_upgrade(&mut h), None);
        assert!(h.is_empty(), "{h:?}");

        for value in ["websocket", "SPDY/3.1", "h2c, websocket"] {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static(value));
            assert_eq!(
                strip_hop_by_hop_keep_upgrade(&mut h).unwrap(),
                value,
                "{value}"
            );
        }
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "10.20.255.9",
            "192.168.100.1",
            "::1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
    }

    #[test]
    fn long_running_requests() {
        assert!(is_long_running("/api/v1/pods", Some("watch=true")));
        assert!(is_long_running("/api/v1/pods", Some("a=b&watch=1")));
        assert!(is_long_running("/api/v1/watch/pods", None));
        assert!(is_long_running(
            "/api/v1/namespaces/d/pods/p/log",
            Some("follow=true")
        ));
        assert!(is_long_running("/api/v1/pods", Some("watch=True")));
        assert!(is_long_running("/api/v1/pods", Some("follow=t")));
        assert!(!is_long_running("/api/v1/pods", Some("watch=false")));
        assert!(!is_long_running("/api/v1/pods", Some("watch=yes")));
        assert!(!is_long_running("/api/v1/pods", None));
    }
}
