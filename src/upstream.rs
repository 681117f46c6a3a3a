//! The pooled HTTP client that carries requests to the API server: rustls, HTTP/2 negotiated by ALPN,
//! keep-alive connections reused across requests.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::metrics::{CountConnections, UpstreamStats};
use crate::tls::TlsMaterial;

/// The client type used for upstream requests. Its connector counts connections for the metrics.
pub type UpstreamClient = Client<CountConnections<HttpsConnector<HttpConnector>>, Body>;

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

/// Builds the pooled client. `http2` is false when `DISABLE_HTTP2` is set, as in client-go. Its
/// connections are counted in `stats`.
pub fn client(tls: &TlsMaterial, http2: bool, stats: Arc<UpstreamStats>) -> UpstreamClient {
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http();
    let builder = match &tls.server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    let https = if http2 {
        builder
            .enable_all_versions()
            .wrap_connector(http_connector(Some(TCP_KEEPALIVE)))
    } else {
        builder
            .enable_http1()
            .wrap_connector(http_connector(Some(TCP_KEEPALIVE)))
    };
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
        .build(CountConnections::new(https, stats))
}
