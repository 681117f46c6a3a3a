//! Wires the operational parts around the proxy listener: the admin listener, the configuration
//! reloader and its SIGHUP handler. [`Ops::prepare`] binds and registers everything that can fail or
//! race before the startup line is printed; [`serve`] runs it all until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

pub mod admin;
pub mod config;
pub mod reload;
pub mod server;

use crate::app::config::{Config, Lifecycle, StartupError};
use crate::app::reload::Routers;
use crate::app::server::Listener;
use crate::proxy::router::Router;

/// What [`serve`] runs besides the proxy listener.
#[derive(Debug, Default)]
pub struct Ops {
    /// The bound admin listener, if `--admin-address` is set.
    pub admin: Option<TcpListener>,
    /// SIGHUP, which forces a configuration reload.
    pub hangup: Option<Signal>,
}

impl Ops {
    /// Binds the admin listener and registers SIGHUP. Call before printing the startup line: a bind
    /// failure exits 1 like the proxy listener's, and a SIGHUP that arrives before its handler is
    /// registered would terminate the process.
    pub async fn prepare(config: &Config) -> Result<Ops, StartupError> {
        let admin = match &config.admin_address {
            Some(address) => Some(crate::app::admin::bind(address).await?),
            None => None,
        };
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; reloads happen on file changes only");
                None
            }
        };
        Ok(Ops { admin, hangup })
    }
}

/// Serves the proxy on `listener` with `router` first, plus the admin listener and the reloader, until
/// `shutdown` completes; then drains (see [`server::serve`]) and stops the rest.
pub async fn serve(
    config: Config,
    listener: Listener,
    ops: Ops,
    router: Arc<Router>,
    lifecycle: Lifecycle,
    shutdown: impl Future<Output = ()>,
) {
    let routers = Arc::new(Routers::new(router, &lifecycle));
    // Fired once the proxy has drained: the admin listener keeps answering (readyz: "shutting down")
    // during the drain.
    let stop = CancellationToken::new();
    let reloader = tokio::spawn(reload::run(
        config.clone(),
        lifecycle.clone(),
        routers.clone(),
        ops.hangup,
        stop.clone(),
    ));
    let admin = ops.admin.map(|l| {
        tokio::spawn(crate::app::admin::serve(
            l,
            routers.clone(),
            lifecycle.clone(),
            stop.clone(),
        ))
    });
    server::serve(
        listener,
        routers,
        lifecycle,
        shutdown,
        config.shutdown_grace,
    )
    .await;
    stop.cancel();
    let _ = reloader.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
}
