//! The connections that carry requests to the API server: rustls, HTTP/2 negotiated by ALPN, reused
//! across requests, dialled directly or through the proxy [`egress`] chooses. Ordinary requests share
//! one HTTP/2 connection ([`shared`]); [`Upstream`] rebuilds everything when the TLS material changes.
//!
//! Every upstream connection, whatever it carries, is dialled from the same TLS material and route: the
//! shared connection for ordinary requests, the bulk client for large reads, the [`StreamLanes`] for
//! long-running requests, and the upgrade tunnels of [`crate::proxy::upgrade`]. Anything that changes how
//! kproxy reaches the API server (an upstream proxy, TLS settings) belongs in [`Upstream`], so that all
//! four get it.
//!
//! # Bulk reads
//! LISTs, log reads and OpenAPI documents ([`crate::proxy::forward::is_bulk_read`]) can run to megabytes. On the
//! shared HTTP/2 connection such a body is cut into 8–16 KiB DATA frames, each parsed, copied out of the
//! TLS buffer into the frame decoder and flow-controlled, and it queues the small requests behind it on
//! the one TCP connection. Bulk reads therefore go over pooled HTTP/1.1 keep-alive connections of their
//! own, at most [`BULK_CONNECTIONS`] at once (more share the HTTP/2 connection), where hyper relays the
//! decrypted bytes as they come. Measured on the benchmark's upstream (bench/README.md): CPU of proxy
//! plus upstream per 100 MB download 173 → 123 ms, per 1 MB LIST 191 → 152 ms. Small requests keep
//! HTTP/2, which batches many requests per system call.
//!
//! # Long-running requests
//! Watches and followed logs hold an HTTP/2 stream open for minutes to hours, and the API server allows
//! only so many concurrent streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`: Go's default is
//! 250, and a server may set 100 or fewer). On one shared connection the next watch would queue inside
//! the HTTP/2 client, and every ordinary request behind it. So long-running requests do not use the
//! ordinary connection: [`StreamLanes`] spreads them over extra HTTP/2 connections ("lanes"), each
//! filled up to the limit its server announced (at most [`MAX_STREAMS_PER_LANE`]; [`STREAMS_PER_LANE`]
//! until a response has shown the limit), opening a lane when all are full and closing empty ones. The
//! ordinary connection is kept for short requests. A watch then costs one HTTP/2 stream (a few hundred
//! bytes of state, plus whatever the client has not read yet, bounded by the stream window), not a TCP
//! and TLS connection of its own; 1,000 watches use 10 upstream connections against a server that
//! allows 100 streams, 4 against one that allows 250. Against an HTTP/1.1-only
//! upstream (`http://` servers, `DISABLE_HTTP2`) each long-running request needs its own connection
//! anyway; the lanes then only partition the pools.

pub mod egress;
pub mod shared;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use crate::base::lease::Lease;
use crate::kube::tls::TlsState;
use crate::telemetry::metrics::{CountConnections, UpstreamStats};
use crate::wire::body::Body;
use egress::{EgressConnector, Route};
use shared::Shared;

/// The HTTP/1.1 keep-alive pool (bulk reads, and servers without HTTP/2). Its connector counts
/// connections for the metrics.
pub type UpstreamClient = Client<shared::Handoff, Body>;

/// The connector upgrade tunnels dial with (HTTP/1.1 only).
pub type UpgradeConnector = HttpsConnector<EgressConnector>;

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

use crate::base::error::BoxError;

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
    /// The connection for ordinary requests.
    pub client: Shared,
    /// The pooled HTTP/1.1 client for bulk reads (see the module doc), also the ordinary requests' when
    /// the server does not speak HTTP/2.
    pub bulk: UpstreamClient,
    /// The connector for upgrade tunnels.
    pub upgrade: UpgradeConnector,
    /// The clients for long-running requests.
    pub lanes: StreamLanes,
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
    /// The bound on each dial: [`DIAL_TIMEOUT`] outside tests.
    dial_timeout: Duration,
    /// Where the pools count their connections (metrics).
    stats: Arc<UpstreamStats>,
    current: RwLock<Arc<Connectors>>,
    /// Serialises rebuilds so concurrent requests build one new pool, not one each.
    rebuild: Mutex<()>,
    /// Bulk reads in flight over HTTP/1.1, at most [`BULK_CONNECTIONS`], across TLS generations.
    bulk_open: Arc<AtomicUsize>,
}

impl Upstream {
    /// The way to the API server along `route` with `tls`; connections are counted in `stats`, and each
    /// dial is bounded by `dial_timeout`.
    pub fn new(
        tls: Arc<TlsState>,
        route: Route,
        http2: bool,
        upgrade_keepalive: Option<Duration>,
        dial_timeout: Duration,
        stats: Arc<UpstreamStats>,
    ) -> Self {
        let route = Arc::new(route);
        let generation = tls.generation();
        let current = build(
            &tls,
            &route,
            http2,
            upgrade_keepalive,
            dial_timeout,
            &stats,
            generation,
        );
        Self {
            tls,
            route,
            http2,
            upgrade_keepalive,
            dial_timeout,
            stats,
            current: RwLock::new(Arc::new(current)),
            rebuild: Mutex::new(()),
            bulk_open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A place for one more bulk read on its own HTTP/1.1 connection, or `None` when
    /// [`BULK_CONNECTIONS`] are in flight (the read then shares the HTTP/2 connection). Keep the lease
    /// as long as the response body.
    pub fn bulk_slot(&self) -> Option<Lease> {
        self.bulk_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < BULK_CONNECTIONS).then_some(n + 1)
            })
            .ok()
            .map(|_| Lease::counted(&self.bulk_open))
    }

    /// The TLS material.
    pub fn tls(&self) -> &Arc<TlsState> {
        &self.tls
    }

    /// The route connections take.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The bound on each dial (see [`bounded_dial`]).
    pub fn dial_timeout(&self) -> Duration {
        self.dial_timeout
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
            self.dial_timeout,
            &self.stats,
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
    tls: &Arc<TlsState>,
    route: &Arc<Route>,
    http2: bool,
    upgrade_keepalive: Option<Duration>,
    dial_timeout: Duration,
    stats: &Arc<UpstreamStats>,
    generation: u64,
) -> Connectors {
    let config = tls.client_config();
    let server_name = tls.server_name().cloned();
    let dial = Dialler {
        tls: tls.clone(),
        route: route.clone(),
        config: config.clone(),
        server_name: server_name.clone(),
        stats: stats.clone(),
    };
    let client = Shared::new(
        dial.connector(http2),
        dial.connector(false),
        http2,
        dial_timeout,
    );
    // Bulk reads: the ordinary connection's HTTP/1.1 pool, one connection per concurrent read.
    let bulk = client.http1().clone();
    // Long-running requests get connections of their own, dialled exactly like the ordinary one.
    let lanes = StreamLanes::new(move || {
        Shared::new(
            dial.connector(http2),
            dial.connector(false),
            http2,
            dial_timeout,
        )
    });
    // Upgrades speak HTTP/1.1 over a dedicated connection, with the same TLS material and route.
    let upgrade = https(
        &config,
        server_name.as_ref(),
        false,
        egress(tls, route, upgrade_keepalive),
    );
    Connectors {
        generation,
        client,
        bulk,
        upgrade,
        lanes,
    }
}

/// TLS over `dial`, offering HTTP/2 and HTTP/1.1 by ALPN when `http2`, else HTTP/1.1 only.
fn https(
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
struct Dialler {
    tls: Arc<TlsState>,
    route: Arc<Route>,
    config: rustls::ClientConfig,
    server_name: Option<rustls_pki_types::ServerName<'static>>,
    stats: Arc<UpstreamStats>,
}

impl Dialler {
    /// A connector offering HTTP/2 and HTTP/1.1 by ALPN when `http2`, else HTTP/1.1 only.
    fn connector(&self, http2: bool) -> shared::Connector {
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

/// An HTTP/1.1 keep-alive pool dialling with `connector` (its connections never speak HTTP/2, so
/// none of hyper-util's HTTP/2 settings apply).
fn pooled_client(connector: shared::Handoff) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(connector)
}

/// Long-running requests per lane until the lane's server has shown its own limit: below the 100
/// concurrent streams RFC 9113 recommends servers allow, with room for a server configured lower.
pub const STREAMS_PER_LANE: usize = 64;

/// Long-running requests per lane at most, whatever the server allows: Go's default server limit. More
/// streams per connection save connections (about 60 KiB each in kproxy, and a connection on the API
/// server) but put more watches behind one TCP connection's losses.
pub const MAX_STREAMS_PER_LANE: usize = 250;

/// Bulk reads carried at once over HTTP/1.1 connections of their own (see the module doc); more share
/// the HTTP/2 connection. Each such connection costs the API server a TLS handshake and kproxy about
/// 40 KiB; past a few per core they add no throughput.
pub const BULK_CONNECTIONS: usize = 16;

/// The connections that carry long-running requests, each filled up to its server's stream limit (see
/// the module doc).
pub struct StreamLanes {
    /// Builds the client of a new lane; the same constructor as the ordinary client, so lanes dial the
    /// API server exactly as ordinary requests do.
    make: Box<dyn Fn() -> Shared + Send + Sync>,
    lanes: Mutex<Vec<Lane>>,
}

struct Lane {
    client: Arc<Shared>,
    /// Long-running requests on this lane, from dispatch until their response body is dropped.
    open: Arc<AtomicUsize>,
}

impl Lane {
    /// How many long-running requests this lane takes: the server's limit as this lane has seen it, or
    /// as another lane (`known`) has; at most [`MAX_STREAMS_PER_LANE`], and [`STREAMS_PER_LANE`] until
    /// some lane has seen it.
    fn capacity(&self, known: Option<usize>) -> usize {
        self.client
            .stream_limit()
            .or(known)
            .map_or(STREAMS_PER_LANE, |n| n.min(MAX_STREAMS_PER_LANE))
    }
}

impl StreamLanes {
    /// Lanes whose clients come from `make`.
    pub fn new(make: impl Fn() -> Shared + Send + Sync + 'static) -> Self {
        Self {
            make: Box::new(make),
            lanes: Mutex::new(Vec::new()),
        }
    }

    /// A client for one more long-running request, and the lease that counts it. Fills lanes in order,
    /// so few connections are used, and opens a lane when all are full. Lanes left empty at the end of
    /// the list are closed (their connection goes with their pool), except the first.
    pub fn acquire(&self) -> (Arc<Shared>, Lease) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        while lanes.len() > 1
            && lanes
                .last()
                .is_some_and(|l| l.open.load(Ordering::Acquire) == 0)
        {
            lanes.pop();
        }
        // Every lane goes to the same server: a limit one lane has seen holds for the others.
        let known = lanes.iter().find_map(|l| l.client.stream_limit());
        let index = match lanes
            .iter()
            .position(|l| l.open.load(Ordering::Acquire) < l.capacity(known))
        {
            Some(i) => i,
            None => {
                lanes.push(Lane {
                    client: Arc::new((self.make)()),
                    open: Arc::new(AtomicUsize::new(0)),
                });
                lanes.len() - 1
            }
        };
        let lane = &lanes[index];
        (lane.client.clone(), Lease::take(&lane.open))
    }
}
