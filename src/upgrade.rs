//! Protocol upgrades (WebSocket and SPDY/3.1 for exec, attach, port-forward): the request goes to the API
//! server over a dedicated HTTP/1.1 connection, the 101 answer is relayed with its headers, and then bytes
//! are copied both ways until each side has closed, honouring half-close. A non-101 answer is relayed as
//! an ordinary response.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::body::Body;
use crate::error::{chain, ProxyError};
use crate::headers::strip_hop_by_hop;
use crate::kubeconfig::Server;
use crate::upstream::Upstream;

/// Opens upgrade tunnels and keeps track of them for shutdown.
#[derive(Clone)]
pub struct Upgrader {
    /// Dials with the same route (proxy) and TLS material as ordinary requests, HTTP/1.1 only.
    upstream: std::sync::Arc<Upstream>,
    tunnels: TaskTracker,
    stop: CancellationToken,
}

impl Upgrader {
    /// An upgrader dialling through `upstream` (its upgrade connector speaks HTTP/1.1 and uses the
    /// `--keepalive` period).
    pub fn new(
        upstream: std::sync::Arc<Upstream>,
        tunnels: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            upstream,
            tunnels,
            stop,
        }
    }

    /// Sends the upgrade request (already rewritten and authenticated, hop-by-hop headers removed) and,
    /// on 101, splices the two connections.
    pub async fn tunnel(
        &self,
        mut req: Request<Incoming>,
        uri: Uri,
        upgrade: HeaderValue,
        server: &Server,
    ) -> Result<Response<Body>, ProxyError> {
        let upstream = server.to_string();
        let io = self
            .upstream
            .connectors()
            .upgrade
            .clone()
            .call(uri.clone())
            .await
            .map_err(|e| ProxyError::Unreachable {
                upstream: upstream.clone(),
                cause: chain(&*e),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Body>(io)
            .await
            .map_err(|e| ProxyError::BadGateway {
                upstream: upstream.clone(),
                cause: chain(&e),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upgrade connection ended");
            }
        });

        let mut out = Request::builder()
            .method(req.method().clone())
            .uri(uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/"))
            .version(http::Version::HTTP_11)
            .body(Body::empty())
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        *out.headers_mut() = req.headers().clone();
        let host = HeaderValue::from_str(uri.authority().map(|a| a.as_str()).unwrap_or_default())
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        let h = out.headers_mut();
        h.insert(header::HOST, host);
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, upgrade);

        let mut resp = sender
            .send_request(out)
            .await
            .map_err(|e| ProxyError::BadGateway {
                upstream: upstream.clone(),
                cause: chain(&e),
            })?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.version = http::Version::HTTP_11;
            return Ok(Response::from_parts(parts, Body::upstream(body)));
        }

        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let client_upgrade = hyper::upgrade::on(&mut req);
        let stop = self.stop.clone();
        self.tunnels.spawn(async move {
            let (client, server) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut server = TokioIo::new(server);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut server) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "tunnel ended with an error");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
        let (parts, _) = resp.into_parts();
        Ok(Response::from_parts(parts, Body::empty()))
    }
}
