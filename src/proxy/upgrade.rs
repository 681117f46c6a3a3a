//! Protocol upgrades: WebSocket (`v4.channel.k8s.io`, `v5.channel.k8s.io`, `SPDY/3.1+portforward.k8s.io`
//! and any other subprotocol) and SPDY/3.1, which carry exec, attach, port-forward and cp.
//!
//! Each upgrade gets a connection of its own to the API server, dialled by the same connector as
//! ordinary requests ([`crate::upstream::Upstream`]: same TLS, client certificate and upstream proxy)
//! but offering only HTTP/1.1 by ALPN, because the API server upgrades only HTTP/1.1
//! requests. The request arrives here already rewritten like any other (path, `X-Forwarded-For`,
//! credentials, impersonation), with its hop-by-hop headers removed; `Connection: Upgrade` and the
//! client's `Upgrade` value are put back, and its body (normally empty) is sent on.
//!
//! The API server's answer decides:
//! - `101 Switching Protocols`: relayed with all its headers (`Upgrade`, `Connection`,
//!   `Sec-WebSocket-Accept`, `Sec-WebSocket-Protocol`, `X-Stream-Protocol-Version`, ...), then the two
//!   connections are spliced. Bytes are copied both ways in order, with nothing added or held back (bytes
//!   either side sent right behind the handshake are kept by hyper and delivered first). When one side
//!   finishes sending (EOF), the other side's write half is shut down (TCP FIN, or TLS `close_notify` then
//!   FIN) and the opposite direction keeps flowing until it too ends: half-close is honoured, unlike
//!   kubectl proxy, which closes both connections as soon as either direction ends. An error in either
//!   direction closes both.
//! - anything else: relayed as an ordinary response, status, headers and body (a `403` Status from the
//!   API server reaches the client as is). kubectl proxy turns statuses below 400 into
//!   `500 invalid upgrade response`; relaying them is more useful and loses nothing.
//!
//! Tunnels are tracked in a [`TaskTracker`] and ended at shutdown by the streams [`CancellationToken`]:
//! a tunnel has no natural end a drain could wait for.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::base::error::chain;
use crate::kube::kubeconfig::Server;
use crate::proxy::error::ProxyError;
use crate::upstream::Upstream;
use crate::wire::body::Body;
use crate::wire::headers::strip_hop_by_hop;

/// Opens upgrade tunnels and keeps track of them for shutdown.
#[derive(Clone)]
pub struct Upgrader {
    /// Dials with the same route (proxy) and TLS material as ordinary requests, HTTP/1.1 only.
    upstream: std::sync::Arc<Upstream>,
    tunnels: TaskTracker,
    /// Fired at shutdown to end every tunnel.
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
        // Any failure to connect, TLS included, is "unreachable" here, as it always was for tunnels.
        let io =
            self.upstream
                .dial_upgrade(uri.clone())
                .await
                .map_err(|e| ProxyError::Unreachable {
                    upstream: upstream.clone(),
                    cause: chain(&e),
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

        // Taken before the request is consumed: the client side of the tunnel, once the 101 is written.
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (parts, body) = req.into_parts();
        let mut out = Request::builder()
            .method(parts.method)
            .uri(uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/"))
            .version(http::Version::HTTP_11)
            .body(Body::upstream(body))
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        *out.headers_mut() = parts.headers;
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
            // Each direction ends on EOF by shutting down the other side's write half, and the tunnel
            // ends when both have (or on the first error).
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut server) => match r {
                    Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
                    Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
                },
                _ = stop.cancelled() => {}
            }
        });
        // The 101 goes to the client exactly as the API server sent it: hyper writes `Connection` and
        // `Upgrade` as given, and the client needs them (and `Sec-WebSocket-*`) to accept the switch.
        let (parts, _) = resp.into_parts();
        Ok(Response::from_parts(parts, Body::empty()))
    }
}
