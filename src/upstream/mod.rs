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

pub mod dial;
pub mod egress;
mod lanes;
pub mod shared;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use tower::ServiceExt as _;

pub use crate::base::lease::Lease;
use crate::kube::tls::TlsState;
use crate::telemetry::metrics::UpstreamStats;
use crate::wire::received::Received;
pub use dial::Liveness;
use dial::{bounded_dial, egress, https, Dialler};
use egress::{EgressConnector, EgressStream, Route};
use lanes::StreamLanes;

use shared::{SendError, Shared, UpstreamClient};

/// The connector upgrade tunnels dial with (HTTP/1.1 only).
type UpgradeConnector = HttpsConnector<EgressConnector>;

/// A connection made for an upgrade tunnel: TLS (or plain TCP for `http://` servers) over the route.
pub type UpgradeIo = MaybeHttpsStream<EgressStream>;

/// Bulk reads carried at once over HTTP/1.1 connections of their own (see the module doc); more share
/// the HTTP/2 connection. Each such connection costs the API server a TLS handshake and kproxy about
/// 40 KiB; past a few per core they add no throughput.
pub const BULK_CONNECTIONS: usize = 16;

/// Which connections carry a request (see the module doc). The caller decides, from the request's
/// URL: [`Upstream`] does not parse Kubernetes paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Short requests: the shared HTTP/2 connection.
    Ordinary,
    /// LISTs, log reads, OpenAPI documents: pooled HTTP/1.1 connections, up to [`BULK_CONNECTIONS`].
    Bulk,
    /// Watches and followed logs: the HTTP/2 lanes.
    LongRunning,
}

/// Why a request got no response from the API server, by what failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (DNS, TCP, the egress proxy, the dial bound), for a reason other than
    /// TLS: the server is unreachable.
    #[error(transparent)]
    Dial(SendError),
    /// The TLS handshake failed: a certificate the kubeconfig does not trust, a rejected client
    /// certificate, no common protocol.
    #[error(transparent)]
    Tls(SendError),
    /// The server refused the request's stream unprocessed (`REFUSED_STREAM`, `GOAWAY`) more times than
    /// it is sent again.
    #[error(transparent)]
    Refused(SendError),
    /// The connection failed after it was made: a reset, a protocol error.
    #[error(transparent)]
    Broken(SendError),
    /// The connection silently stopped delivering before the response head came
    /// ([`dial::Liveness`]).
    #[error(transparent)]
    Stalled(SendError),
}

impl UpstreamError {
    fn classify(err: SendError) -> Self {
        if matches!(err, SendError::Stalled(_)) {
            UpstreamError::Stalled(err)
        } else if err.is_refused() {
            UpstreamError::Refused(err)
        } else if is_tls_error(&err) {
            UpstreamError::Tls(err)
        } else if err.is_connect() {
            UpstreamError::Dial(err)
        } else {
            UpstreamError::Broken(err)
        }
    }
}

/// Whether a rustls error (a certificate the kubeconfig does not trust, a handshake failure) is the cause.
/// The connector nests it in `io::Error`s (`Other` around `InvalidData` around the rustls error), and
/// `io::Error::source` skips the wrapped error, so each `io::Error` is unwrapped through `get_ref`.
fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// The connectors of one TLS generation.
struct Connectors {
    /// The [`TlsState::generation`] they were built at.
    generation: u64,
    /// The connection for ordinary requests.
    client: Shared,
    /// The pooled HTTP/1.1 client for bulk reads (see the module doc), also the ordinary requests' when
    /// the server does not speak HTTP/2.
    bulk: UpstreamClient,
    /// The connector for upgrade tunnels.
    upgrade: UpgradeConnector,
    /// The clients for long-running requests.
    lanes: StreamLanes,
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
    /// How dead connections are noticed: [`Liveness::CLIENT_GO`] outside tests.
    liveness: Liveness,
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
        liveness: Liveness,
        stats: Arc<UpstreamStats>,
    ) -> Self {
        let route = Arc::new(route);
        let generation = tls.generation();
        let current = build(
            &tls,
            &route,
            http2,
            upgrade_keepalive,
            (dial_timeout, liveness),
            &stats,
            generation,
        );
        Self {
            tls,
            route,
            http2,
            upgrade_keepalive,
            dial_timeout,
            liveness,
            stats,
            current: RwLock::new(Arc::new(current)),
            rebuild: Mutex::new(()),
            bulk_open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The statistics its connections, and the requests sent through it, are counted in.
    pub fn stats(&self) -> &Arc<UpstreamStats> {
        &self.stats
    }

    /// Sends `req` (absolute URI) over the connections `class` calls for and returns the response head,
    /// with the lease that holds the request's place on a lane or among the bulk connections: keep it
    /// as long as the response body.
    pub async fn send(
        &self,
        req: Request<crate::wire::body::Body>,
        class: Class,
    ) -> Result<(Response<Received>, Option<Lease>), UpstreamError> {
        let connectors = self.connectors();
        let (resp, lease) = match class {
            Class::LongRunning => {
                let (lane, lease) = connectors.lanes.acquire();
                (lane.request(req).await, Some(lease))
            }
            // Past BULK_CONNECTIONS bulk reads in flight, the next shares the HTTP/2 connection.
            Class::Bulk => match self.bulk_slot() {
                Some(lease) => (
                    shared::http1_request(&connectors.bulk, req, Some(self.liveness.stall())).await,
                    Some(lease),
                ),
                None => (connectors.client.request(req).await, None),
            },
            Class::Ordinary => (connectors.client.request(req).await, None),
        };
        Ok((resp.map_err(UpstreamError::classify)?, lease))
    }

    /// A connection of its own for an upgrade tunnel to `uri`: the same route and TLS material as every
    /// other request, HTTP/1.1 only (the API server upgrades only HTTP/1.1 requests), TCP keep-alive
    /// as `--keepalive` says, bounded like every dial.
    pub async fn dial_upgrade(&self, uri: Uri) -> Result<UpgradeIo, UpstreamError> {
        let dial = self.connectors().upgrade.clone().oneshot(uri);
        bounded_dial(self.dial_timeout, dial)
            .await
            .map_err(|e| UpstreamError::classify(SendError::Tunnel(e)))
    }

    /// A place for one more bulk read on its own HTTP/1.1 connection, or `None` when
    /// [`BULK_CONNECTIONS`] are in flight (the read then shares the HTTP/2 connection).
    fn bulk_slot(&self) -> Option<Lease> {
        self.bulk_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < BULK_CONNECTIONS).then_some(n + 1)
            })
            .ok()
            .map(|_| Lease::counted(&self.bulk_open))
    }

    /// The connectors for the current TLS material, after checking certificate files if that is due.
    fn connectors(&self) -> Arc<Connectors> {
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
            (self.dial_timeout, self.liveness),
            &self.stats,
            generation,
        ));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        tracing::info!("upstream TLS material changed: new connections use it, pooled connections made with the old material are retired");
        new
    }
}

fn build(
    tls: &Arc<TlsState>,
    route: &Arc<Route>,
    http2: bool,
    upgrade_keepalive: Option<Duration>,
    (dial_timeout, liveness): (Duration, Liveness),
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
        liveness,
        false,
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
            liveness,
            true,
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
