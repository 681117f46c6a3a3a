//! The pooled HTTP client that carries requests to the API server: rustls, HTTP/2 negotiated by ALPN,
//! keep-alive connections reused across requests.
//!
//! Every upstream connection, whatever it carries, is dialled by a connector from [`connector`]: the
//! pooled client for ordinary requests, the [`StreamLanes`] for long-running requests, and the upgrade
//! tunnels of [`crate::upgrade`]. Anything that changes how kproxy reaches the API server (an upstream
//! proxy, TLS settings) belongs there, so that all three get it.
//!
//! # Long-running requests
//! Watches and followed logs hold an HTTP/2 stream open for minutes to hours, and the API server allows
//! only so many concurrent streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`, 100 on the API
//! servers kproxy targets; Go's default is 250). On one shared connection the 101st watch would queue
//! inside the HTTP/2 client, and every ordinary request behind it. So long-running requests do not use
//! the ordinary client: [`StreamLanes`] spreads them over extra HTTP/2 connections ("lanes"), at most
//! [`STREAMS_PER_LANE`] on each, opening a lane when all are full and closing empty ones. The ordinary
//! client keeps its connection for short requests. A watch then costs one HTTP/2 stream (a few hundred
//! bytes of state, plus whatever the client has not read yet, bounded by the stream window), not a TCP
//! and TLS connection of its own; 1,000 watches use 16 upstream connections. Against an HTTP/1.1-only
//! upstream (`http://` servers, `DISABLE_HTTP2`) each long-running request needs its own connection
//! anyway; the lanes then only partition the pools.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::tls::TlsMaterial;

/// The client type used for upstream requests.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

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

/// The connector type of every upstream connection (see the module doc).
pub type UpstreamConnector = HttpsConnector<HttpConnector>;

/// The HTTP versions a connector offers the API server by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// HTTP/2 or HTTP/1.1, as the server prefers: ordinary and long-running requests.
    Negotiate,
    /// HTTP/1.1 only: upgrades (WebSocket and SPDY need an HTTP/1.1 connection of their own; HTTP/2's
    /// extended CONNECT is not what the API server speaks), and everything when `DISABLE_HTTP2` is set.
    Http1,
}

/// The single constructor of upstream connectors: TLS from `tls` (ALPN from `versions`), TCP keep-alive
/// `keepalive`.
pub fn connector(
    tls: &TlsMaterial,
    versions: Versions,
    keepalive: Option<Duration>,
) -> UpstreamConnector {
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http();
    let builder = match &tls.server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    match versions {
        Versions::Negotiate => builder
            .enable_all_versions()
            .wrap_connector(http_connector(keepalive)),
        Versions::Http1 => builder
            .enable_http1()
            .wrap_connector(http_connector(keepalive)),
    }
}

/// Builds the pooled client. `http2` is false when `DISABLE_HTTP2` is set, as in client-go.
pub fn client(tls: &TlsMaterial, http2: bool) -> UpstreamClient {
    let versions = if http2 {
        Versions::Negotiate
    } else {
        Versions::Http1
    };
    let https = connector(tls, versions, Some(TCP_KEEPALIVE));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .http2_keep_alive_interval(H2_PING_INTERVAL)
        .http2_keep_alive_timeout(H2_PING_TIMEOUT)
        .http2_keep_alive_while_idle(false)
        // Large LISTs and downloads need more than HTTP/2's 64 KiB default window to run at line rate.
        .http2_adaptive_window(true)
        .build(https)
}

/// Long-running requests per lane: below the 100 concurrent streams the API server grants per HTTP/2
/// connection, with room for a server configured lower (see the module doc).
pub const STREAMS_PER_LANE: usize = 64;

/// The pooled clients that carry long-running requests, each with its own HTTP/2 connection and at most
/// [`STREAMS_PER_LANE`] streams on it (see the module doc).
pub struct StreamLanes {
    /// Builds the client of a new lane; the same constructor as the ordinary client, so lanes dial the
    /// API server exactly as ordinary requests do.
    make: Box<dyn Fn() -> UpstreamClient + Send + Sync>,
    lanes: Mutex<Vec<Lane>>,
}

struct Lane {
    client: UpstreamClient,
    /// Long-running requests on this lane, from dispatch until their response body is dropped.
    open: Arc<AtomicUsize>,
}

/// A long-running request's place on a lane, released on drop. Keep it as long as the response body.
#[derive(Debug)]
pub struct LaneLease(Arc<AtomicUsize>);

impl Drop for LaneLease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl StreamLanes {
    /// Lanes whose clients come from `make`.
    pub fn new(make: impl Fn() -> UpstreamClient + Send + Sync + 'static) -> Self {
        Self {
            make: Box::new(make),
            lanes: Mutex::new(Vec::new()),
        }
    }

    /// A client for one more long-running request, and the lease that counts it. Fills lanes in order,
    /// so few connections are used, and opens a lane when all are full. Lanes left empty at the end of
    /// the list are closed (their connection goes with their pool), except the first.
    pub fn acquire(&self) -> (UpstreamClient, LaneLease) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        while lanes.len() > 1
            && lanes
                .last()
                .is_some_and(|l| l.open.load(Ordering::Acquire) == 0)
        {
            lanes.pop();
        }
        let index = match lanes
            .iter()
            .position(|l| l.open.load(Ordering::Acquire) < STREAMS_PER_LANE)
        {
            Some(i) => i,
            None => {
                lanes.push(Lane {
                    client: (self.make)(),
                    open: Arc::new(AtomicUsize::new(0)),
                });
                lanes.len() - 1
            }
        };
        let lane = &lanes[index];
        lane.open.fetch_add(1, Ordering::AcqRel);
        (lane.client.clone(), LaneLease(lane.open.clone()))
    }

    /// Open long-running requests per lane, for tests and diagnostics.
    pub fn occupancy(&self) -> Vec<usize> {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes
            .iter()
            .map(|l| l.open.load(Ordering::Acquire))
            .collect()
    }
}
