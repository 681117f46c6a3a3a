//! The pooled HTTP client that carries requests to the API server: rustls, HTTP/2 negotiated by ALPN,
//! keep-alive connections reused across requests, dialled directly or through the proxy [`egress`]
//! chooses. [`Upstream`] rebuilds the pool when the TLS material changes.

pub mod egress;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::tls::TlsState;
use egress::{EgressConnector, Route};

/// The client type used for upstream requests.
pub type UpstreamClient = Client<HttpsConnector<EgressConnector>, Body>;

/// The connector upgrade tunnels dial with (HTTP/1.1 only).
pub type UpgradeConnector = HttpsConnector<EgressConnector>;

/// client-go's dial timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
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

/// Builds the TCP connector shared by ordinary requests and upgrades.
pub fn http_connector(keepalive: Option<Duration>) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_keepalive(keepalive);
    http
}

/// The connectors of one TLS generation.
pub struct Connectors {
    /// The [`TlsState::generation`] they were built at.
    generation: u64,
    /// The pooled client for ordinary requests.
    pub client: UpstreamClient,
    /// The connector for upgrade tunnels.
    pub upgrade: UpgradeConnector,
}

/// The way to the API server: the egress route, the TLS material, and the connection pool built from
/// them.
///
/// # Retiring connections when the client certificate or CA changes
///
/// The pool is rebuilt, not patched. [`Upstream::connectors`] compares the TLS generation (bumped by a
/// certificate, key or CA file change, or a new certificate from an exec plugin) with the generation its
/// pool was built at; on a mismatch it builds a new client (with a new rustls configuration, so no TLS
/// session of the old identity is resumed) and swaps it in. The old client is dropped once the last
/// request using it ends: its idle connections close with it, and connections carrying in-flight
/// requests (a watch, a log stream) finish those and close instead of returning to a pool. So every
/// request issued after the swap uses a connection made with the new material, and nothing in flight is
/// cut. client-go instead closes every tracked connection (`connrotation.CloseAll`), ending running
/// watches early.
pub struct Upstream {
    tls: Arc<TlsState>,
    route: Arc<Route>,
    /// HTTP/2 allowed (off with `DISABLE_HTTP2`).
    http2: bool,
    /// TCP keep-alive for upgrade connections (`--keepalive`).
    upgrade_keepalive: Option<Duration>,
    current: RwLock<Arc<Connectors>>,
    /// Serialises rebuilds so concurrent requests build one new pool, not one each.
    rebuild: Mutex<()>,
}

impl Upstream {
    /// The way to the API server along `route` with `tls`.
    pub fn new(
        tls: Arc<TlsState>,
        route: Route,
        http2: bool,
        upgrade_keepalive: Option<Duration>,
    ) -> Self {
        let route = Arc::new(route);
        let generation = tls.generation();
        let current = build(&tls, &route, http2, upgrade_keepalive, generation);
        Self {
            tls,
            route,
            http2,
            upgrade_keepalive,
            current: RwLock::new(Arc::new(current)),
            rebuild: Mutex::new(()),
        }
    }

    /// The TLS material.
    pub fn tls(&self) -> &Arc<TlsState> {
        &self.tls
    }

    /// The route connections take.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The connectors for the current TLS material, after checking certificate files if that is due.
    pub fn connectors(&self) -> Arc<Connectors> {
        self.tls.maybe_reload();
        let generation = self.tls.generation();
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.generation == generation {
                return cur.clone();
            }
        }
        let _one = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.generation == generation {
                return cur.clone();
            }
        }
        let new = Arc::new(build(
            &self.tls,
            &self.route,
            self.http2,
            self.upgrade_keepalive,
            generation,
        ));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        tracing::info!("upstream TLS material changed: new connections use it, pooled connections made with the old material are retired");
        new
    }
}

/// The dialler under TLS: direct or through the proxy. An `https://` proxy gets its own TLS session
/// (HTTP/1.1, the cluster's trust settings, the proxy's name), as in Go's transport.
fn egress(tls: &TlsState, route: &Arc<Route>, keepalive: Option<Duration>) -> EgressConnector {
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

fn build(
    tls: &TlsState,
    route: &Arc<Route>,
    http2: bool,
    upgrade_keepalive: Option<Duration>,
    generation: u64,
) -> Connectors {
    let config = tls.client_config();
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config.clone())
        .https_or_http();
    let builder = match tls.server_name() {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    let dial = egress(tls, route, Some(TCP_KEEPALIVE));
    let https = if http2 {
        builder.enable_all_versions().wrap_connector(dial)
    } else {
        builder.enable_http1().wrap_connector(dial)
    };
    let client = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .http2_keep_alive_interval(H2_PING_INTERVAL)
        .http2_keep_alive_timeout(H2_PING_TIMEOUT)
        .http2_keep_alive_while_idle(false)
        // Large LISTs and downloads need more than HTTP/2's 64 KiB default window to run at line rate.
        .http2_adaptive_window(true)
        .build(https);

    // Upgrades speak HTTP/1.1 over a dedicated connection, with the same TLS material and route.
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let builder = match tls.server_name() {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    let upgrade = builder
        .enable_http1()
        .wrap_connector(egress(tls, route, upgrade_keepalive));
    Connectors {
        generation,
        client,
        upgrade,
    }
}
