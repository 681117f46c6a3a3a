//! The reverse proxy: rewrites a client request for the API server (URL, hop-by-hop headers,
//! `X-Forwarded-For`, credentials), sends it through the pooled client and relays the answer as it
//! streams. Long-running responses (watch, `log?follow`) are tagged so shutdown can end them cleanly.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::body::Body;
use crate::error::{chain, ProxyError};
use crate::headers::strip_hop_by_hop;
use crate::kubeconfig::Server;
use crate::upgrade::Upgrader;
use crate::upstream::UpstreamClient;

/// The `User-Agent` sent when the client sends none (kubectl sends its own in that case).
pub const USER_AGENT: &str = concat!("kproxy/", env!("CARGO_PKG_VERSION"));

/// Forwards requests to one API server.
pub struct Proxy {
    server: Server,
    /// The server's path, prepended to every request with `--append-server-path`.
    base_path: String,
    client: UpstreamClient,
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
        client: UpstreamClient,
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
            client,
            auth,
            upgrader,
            streams,
        }
    }

    /// The API server this proxy forwards to.
    pub fn server(&self) -> &Server {
        &self.server
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
        // ops hook (observe): a request that cannot get a credential makes /readyz fail.
        let ours = self
            .auth
            .apply(headers)
            .await
            .inspect_err(|_| crate::observe::credential_failed())?;
        if let Some(upgrade) = upgrade {
            let answer = self.upgrader.tunnel(req, uri, upgrade, &self.server).await;
            // ops hook (observe): upgrades always speak HTTP/1.1 upstream.
            crate::observe::upstream_answered(answer.is_ok().then_some(http::Version::HTTP_11));
            return answer;
        }
        let long_running = is_long_running(path, uri.query());
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        // The pooled client picks HTTP/1.1 or HTTP/2 per connection; the client's version is irrelevant.
        parts.version = http::Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, Body::upstream(body));
        let resp = self.client.request(upstream_req).await;
        // ops hook (observe): readiness, metrics and the access log's protocol field.
        crate::observe::upstream_answered(resp.as_ref().ok().map(|r| r.version()));
        let resp = resp.map_err(|e| self.classify(e))?;
        if resp.status() == StatusCode::UNAUTHORIZED && ours {
            self.auth.credentials.unauthorized();
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The client connection is HTTP/1.1 whatever the upstream spoke.
        parts.version = http::Version::HTTP_11;
        let body = if long_running {
            Body::stream(body, self.streams.clone().cancelled_owned())
        } else {
            Body::upstream(body)
        };
        Ok(Response::from_parts(parts, body))
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

    fn classify(&self, err: hyper_util::client::legacy::Error) -> ProxyError {
        let cause = chain(&err);
        let upstream = self.server.to_string();
        if err.is_connect() && !is_tls_error(&err) {
            ProxyError::Unreachable { upstream, cause }
        } else {
            ProxyError::BadGateway { upstream, cause }
        }
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
        let ours = self
            .auth
            .apply(headers)
            .await
            .inspect_err(|_| crate::observe::credential_failed())?;
        let resp = self.client.request(req).await;
        crate::observe::upstream_answered(resp.as_ref().ok().map(|r| r.version()));
        let resp = resp.map_err(|e| self.classify(e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED && ours {
            self.auth.credentials.unauthorized();
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
fn strip_hop_by_hop_keep_upgrade(headers: &mut http::HeaderMap) -> Option<HeaderValue> {
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    let upgrade = strip_hop_by_hop(headers);
    if upgrade {
        upgrade_value
    } else {
        None
    }
}

fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// Appends the client address to `X-Forwarded-For`, as Go's `ReverseProxy` does.
fn append_forwarded_for(headers: &mut http::HeaderMap, client_ip: Option<IpAddr>) {
    let Some(ip) = client_ip else { return };
    let name = http::HeaderName::from_static("x-forwarded-for");
    let mut value = String::new();
    for prior in headers.get_all(&name) {
        if let Ok(s) = prior.to_str() {
            value.push_str(s);
            value.push_str(", ");
        }
    }
    value.push_str(&ip.to_string());
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
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
            (k == "watch" || k == "follow") && (v == "true" || v == "1")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_running_requests() {
        assert!(is_long_running("/api/v1/pods", Some("watch=true")));
        assert!(is_long_running("/api/v1/pods", Some("a=b&watch=1")));
        assert!(is_long_running("/api/v1/watch/pods", None));
        assert!(is_long_running(
            "/api/v1/namespaces/d/pods/p/log",
            Some("follow=true")
        ));
        assert!(!is_long_running("/api/v1/pods", Some("watch=false")));
        assert!(!is_long_running("/api/v1/pods", None));
    }
}
