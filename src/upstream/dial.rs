//! How every upstream connection is made: TCP (directly or through the [`egress`](super::egress)
//! proxy), then TLS with the cluster's material, each dial bounded, every connection counted for the
//! metrics. The bounds are client-go's, named here once.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::base::error::BoxError;
use crate::kube::tls::TlsState;
use crate::telemetry::metrics::{CountConnections, UpstreamStats};
use crate::upstream::egress::{EgressConnector, Route};

/// client-go's dial timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// client-go's TLS handshake timeout.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on making one upstream connection (pooled, lane or upgrade tunnel): TCP (or the egress
/// proxy's tunnel) and TLS. Without it a server that accepts TCP and never answers the TLS handshake
/// would hold the dial, and with it every request waiting for the shared connection, until the client
/// gave up.
pub const DIAL_TIMEOUT: Duration =
    Duration::from_secs(CONNECT_TIMEOUT.as_secs() + TLS_HANDSHAKE_TIMEOUT.as_secs());
/// client-go's TCP keep-alive period for API server connections.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// How long an idle pooled connection is kept (client-go: 90 s).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per host. client-go keeps 25 (and only 2 for `http://` servers, which
/// made kubectl proxy churn through thousands of TIME_WAIT sockets); HTTP/2 needs one.
pub const POOL_MAX_IDLE_PER_HOST: usize = 64;
/// HTTP/2 health checks, as client-go's `HTTP2_READ_IDLE_TIMEOUT_SECONDS` / `HTTP2_PING_TIMEOUT_SECONDS`.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// See [`H2_PING_INTERVAL`].
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(15);

/// How kproxy notices an upstream connection that silently stopped delivering (a NAT entry or a load
/// balancer gone, a VPN dropped: no FIN, no RST, no bytes).
///
/// - HTTP/2 (the shared connection and the watch lanes): a ping every `ping_interval`, and the
///   connection is closed when its pong does not come within `ping_timeout`, as client-go's HTTP/2
///   health check (`ReadIdleTimeout` 30 s, `PingTimeout` 15 s). Its requests then fail (504 before a
///   response head, a cut body after), and the next request dials a new connection.
/// - HTTP/1.1 (the bulk pool, and every request when the server speaks only HTTP/1.1) has no ping:
///   a request that receives nothing for [`Liveness::stall`] (the same 45 s: the longest an HTTP/2
///   request can go without bytes before client-go gives up on its connection) is failed and its
///   connection dropped. A response that keeps delivering bytes is never cut. Long-running requests
///   (watches, followed logs) over HTTP/1.1 are exempt, because a quiet watch is silent by design;
///   TCP keep-alive is all client-go has for them too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// [`H2_PING_INTERVAL`] outside tests.
    pub ping_interval: Duration,
    /// [`H2_PING_TIMEOUT`] outside tests.
    pub ping_timeout: Duration,
}

impl Liveness {
    /// client-go's bounds.
    pub const CLIENT_GO: Liveness = Liveness {
        ping_interval: H2_PING_INTERVAL,
        ping_timeout: H2_PING_TIMEOUT,
    };

    /// How long an HTTP/1.1 request may receive nothing before its connection is taken for dead.
    pub fn stall(&self) -> Duration {
        self.ping_interval + self.ping_timeout
    }
}

/// `dial` (a connector's future), failed after `limit` ([`DIAL_TIMEOUT`] outside tests). Every upstream
/// dial goes through it.
pub(crate) async fn bounded_dial<T, F>(limit: Duration, dial: F) -> Result<T, BoxError>
where
    F: std::future::Future<Output = Result<T, BoxError>>,
{
    tokio::time::timeout(limit, dial).await.unwrap_or_else(|_| {
        Err(format!("no connection after {limit:?} (TCP connect and TLS handshake)").into())
    })
}

/// Builds the TCP connector shared by ordinary requests and upgrades.
pub fn http_connector(keepalive: Option<Duration>) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_keepalive(keepalive);
    http
}

/// The dialler under TLS: direct or through the proxy. An `https://` proxy gets its own TLS session
/// (HTTP/1.1, the cluster's trust settings, the proxy's name), as in Go's transport.
pub(crate) fn egress(
    tls: &TlsState,
    route: &Arc<Route>,
    keepalive: Option<Duration>,
) -> EgressConnector {
    let proxy_tls = match &**route {
        Route::Connect { proxy, .. } if proxy.scheme_str() == Some("https") => Some(
            HttpsConnectorBuilder::new()
                .with_tls_config(tls.client_config())
                .https_or_http()
                .enable_http1()
                .wrap_connector(http_connector(keepalive)),
        ),
        _ => None,
    };
    EgressConnector::new(route.clone(), http_connector(keepalive), proxy_tls)
}

/// TLS over `dial`, offering HTTP/2 and HTTP/1.1 by ALPN when `http2`, else HTTP/1.1 only.
pub(crate) fn https(
    config: &rustls::ClientConfig,
    server_name: Option<&rustls_pki_types::ServerName<'static>>,
    http2: bool,
    dial: EgressConnector,
) -> HttpsConnector<EgressConnector> {
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config.clone())
        .https_or_http();
    let builder = match server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    if http2 {
        builder.enable_all_versions().wrap_connector(dial)
    } else {
        builder.enable_http1().wrap_connector(dial)
    }
}

/// How every pooled connection is made: TLS material, route, counted for the metrics.
pub(crate) struct Dialler {
    pub(crate) tls: Arc<TlsState>,
    pub(crate) route: Arc<Route>,
    pub(crate) config: rustls::ClientConfig,
    pub(crate) server_name: Option<rustls_pki_types::ServerName<'static>>,
    pub(crate) stats: Arc<UpstreamStats>,
}

impl Dialler {
    /// A connector offering HTTP/2 and HTTP/1.1 by ALPN when `http2`, else HTTP/1.1 only.
    pub(crate) fn connector(&self, http2: bool) -> Connector {
        CountConnections::new(
            https(
                &self.config,
                self.server_name.as_ref(),
                http2,
                egress(&self.tls, &self.route, Some(TCP_KEEPALIVE)),
            ),
            self.stats.clone(),
        )
    }
}

/// The dialler [`Shared`](super::shared::Shared) makes its connections with: TLS with ALPN over the
/// egress route, counted.
pub type Connector = CountConnections<HttpsConnector<EgressConnector>>;
