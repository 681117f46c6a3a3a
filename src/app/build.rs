//! The composition root's building blocks: the handles that outlive configuration reloads
//! ([`Lifecycle`]) and the router built from a validated [`Config`]: TLS material, upstream
//! connections, credentials, impersonation, the proxy and the static files.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::config::Config;
use crate::app::error::StartupError;
use crate::auth::credentials::{self, Credentials};
use crate::auth::Auth;
use crate::kube::tls::TlsState;
use crate::proxy::forward::Proxy;
use crate::proxy::guard::Guard;
use crate::proxy::router::Router;
use crate::proxy::static_files::StaticFiles;
use crate::proxy::upgrade::Upgrader;
use crate::telemetry::access_log;
use crate::telemetry::observe::Telemetry;
use crate::upstream::Upstream;

/// Handles shared between the router and the server for shutdown. They outlive configuration reloads.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Fired at shutdown: ends watches, followed logs and upgrade tunnels.
    pub streams: CancellationToken,
    /// Upgrade tunnels, awaited at shutdown.
    pub tunnels: TaskTracker,
    /// Metrics, readiness inputs and the access log.
    pub telemetry: Arc<Telemetry>,
}

impl Default for Lifecycle {
    /// A lifecycle that observes nothing.
    fn default() -> Self {
        let tunnels = TaskTracker::new();
        Self {
            streams: CancellationToken::new(),
            telemetry: Arc::new(Telemetry::new(
                false,
                access_log::Format::Off,
                tunnels.clone(),
            )),
            tunnels,
        }
    }
}

impl Lifecycle {
    /// A lifecycle observing requests as `config` asks (admin listener, access log).
    pub fn new(config: &Config) -> Self {
        let tunnels = TaskTracker::new();
        Self {
            streams: CancellationToken::new(),
            telemetry: Arc::new(Telemetry::new(
                config.admin_address.is_some(),
                config.access_log,
                tunnels.clone(),
            )),
            tunnels,
        }
    }
}

/// Loads TLS material and credentials and builds the router for `cluster` (a `/clusters/<key>/` key,
/// empty for `/`; the metrics label its connections carry). Fails on unreadable or mismatched keys.
pub fn build_router(
    config: &Config,
    cluster: &str,
    lifecycle: &Lifecycle,
) -> Result<Arc<Router>, StartupError> {
    let tls = TlsState::new(&config.cluster.tls, config.timing.file_check_period)?;
    // ops: count the pools' connections per API server.
    let stats = lifecycle
        .telemetry
        .metrics
        .upstream(cluster, &config.cluster.server.to_string());
    let upstream = Arc::new(Upstream::new(
        tls.clone(),
        config.route.clone(),
        config.http2,
        config.keepalive,
        config.dial_timeout,
        crate::upstream::Liveness {
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
        },
        stats,
    ));
    let credentials = Credentials::new(
        &config.cluster,
        &credentials::Context {
            timing: config.timing,
            plugin_env: config.plugin_env.clone(),
            proxy_env: config.proxy_env.clone(),
            identity: tls.identity().clone(),
        },
    )?;
    let auth = Auth::new(credentials, &config.cluster.impersonate)?;
    let upgrader = Upgrader::new(
        upstream.clone(),
        lifecycle.tunnels.clone(),
        lifecycle.streams.clone(),
    );
    let proxy = Proxy::new(
        config.cluster.server.clone(),
        config.append_server_path,
        upstream,
        auth,
        upgrader,
        lifecycle.streams.clone(),
    );
    let www = config
        .www
        .as_ref()
        .map(|(dir, prefix)| (prefix.clone(), StaticFiles::new(dir, prefix)));
    // issue 13: origin checks, CORS, the inbound token and --read-only.
    let guard = Guard::new(
        &config.guard,
        lifecycle.telemetry.metrics.clone(),
        config.timing.file_check_period,
    );
    Ok(Arc::new(
        Router::new(config.api_prefix.clone(), www, config.filter.clone(), proxy).with_guard(guard),
    ))
}
