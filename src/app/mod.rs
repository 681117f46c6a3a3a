//! The composition root: [`App::build`] turns a validated [`Config`] into a running proxy (router,
//! listeners, signal handlers); [`App::serve`] serves until shutdown and drains. `main.rs`, the library
//! entry point [`crate::run`] and every test harness start kproxy through it, so the startup sequence
//! exists once.

mod admin;
mod build;
pub mod client_config;
mod client_io;
pub mod clusters;
pub mod config;
pub mod error;
pub mod exec;
mod reload;
mod server;
mod watch;

pub use server::Listener;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::app::build::Lifecycle;
use crate::app::clusters::ClusterSet;
use crate::app::config::Config;
use crate::app::error::StartupError;
use crate::app::reload::Routers;

use crate::proxy::router::Router;

/// `kproxy kubeconfig`: the kubeconfig [`App::client_kubeconfig`] would give for `config`, without
/// building or binding anything (the proxy it points at may be running already).
pub fn client_kubeconfig(config: &Config) -> Result<String, StartupError> {
    let url = client_config::url_from_config(config)?;
    let clusters = ClusterSet::resolve(config, &Lifecycle::default())?;
    Ok(client_config::render(&url, config, clusters.as_deref()))
}

/// What [`App::router`] builds.
type Built = (Lifecycle, Arc<Router>, Option<Arc<ClusterSet>>);

/// kproxy, built and bound, ready to serve.
pub struct App {
    config: Config,
    listener: Listener,
    /// The bound admin listener, if `--admin-address` is set.
    admin: Option<TcpListener>,
    /// SIGHUP, which forces a configuration reload.
    hangup: Option<Signal>,
    lifecycle: Lifecycle,
    router: Arc<Router>,
    /// The contexts served under `/clusters/`, if any.
    clusters: Option<Arc<ClusterSet>>,
}

impl App {
    /// Builds everything `config` asks for, in the order that decides which error a broken setup
    /// reports: TLS material, credentials and the router first (unreadable or mismatched keys exit 64
    /// before anything is bound), then the proxy listener, the admin listener and the SIGHUP handler.
    /// Everything that can fail or race happens here, before the caller prints the startup line: a bind
    /// failure exits 1, and a SIGHUP that arrived before its handler was registered would terminate
    /// the process.
    pub async fn build(config: Config) -> Result<App, StartupError> {
        let built = Self::router(&config)?;
        let listener = Listener::bind(&config.listen).await?;
        Self::assemble(config, listener, built).await
    }

    /// [`App::build`] on a listener the caller has bound already (`config.listen` is not used).
    pub async fn with_listener(config: Config, listener: Listener) -> Result<App, StartupError> {
        let built = Self::router(&config)?;
        Self::assemble(config, listener, built).await
    }

    /// The lifecycle, the default router and the `/clusters/` contexts (resolved; each context's
    /// router is built on its first request).
    fn router(config: &Config) -> Result<Built, StartupError> {
        let lifecycle = Lifecycle::new(config);
        let router = build::build_router(config, "", &lifecycle)?;
        let clusters = ClusterSet::resolve(config, &lifecycle)?;
        Ok((lifecycle, router, clusters))
    }

    async fn assemble(
        config: Config,
        listener: Listener,
        (lifecycle, router, clusters): Built,
    ) -> Result<App, StartupError> {
        let admin = match &config.admin_address {
            Some(address) => Some(admin::bind(address).await?),
            None => None,
        };
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; reloads happen on file changes only");
                None
            }
        };
        Ok(App {
            config,
            listener,
            admin,
            hangup,
            lifecycle,
            router,
            clusters,
        })
    }

    /// What the startup line prints: `127.0.0.1:8001`, `[::1]:8001`, or the socket path.
    pub fn display_addr(&self) -> String {
        self.listener.display_addr()
    }

    /// The proxy's TCP address, when it listens on TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr()
    }

    /// The URL clients reach the proxy at (`http://127.0.0.1:PORT`), when it listens on TCP.
    pub fn url(&self) -> Option<String> {
        self.local_addr().map(client_config::url_for)
    }

    /// A kubeconfig (no credentials) with one context per proxied context, each pointing at this
    /// proxy, when it listens on TCP.
    pub fn client_kubeconfig(&self) -> Option<String> {
        let url = self.url()?;
        Some(client_config::render(
            &url,
            &self.config,
            self.clusters.as_deref(),
        ))
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves the proxy, the admin listener and the reloader until `shutdown` completes; then drains
    /// (see `server::serve`) and stops the rest.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let App {
            config,
            listener,
            admin,
            hangup,
            lifecycle,
            router,
            clusters,
        } = self;
        // issue 13 hook: unix-socket peers besides kproxy's own user.
        let mut listener = listener;
        listener.allow_uids(&config.allow_uids);
        let routers = Arc::new(Routers::new(router, clusters, &lifecycle));
        // Fired once the proxy has drained: the admin listener keeps answering (readyz: "shutting
        // down") during the drain.
        let stop = CancellationToken::new();
        let reloader = tokio::spawn(reload::run(
            config.clone(),
            lifecycle.clone(),
            routers.clone(),
            hangup,
            stop.clone(),
        ));
        let admin = admin.map(|l| {
            tokio::spawn(admin::serve(
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
            server::Timeouts {
                grace: config.shutdown_grace,
                header_read: config.header_read_timeout,
            },
        )
        .await;
        stop.cancel();
        let _ = reloader.await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
    }
}
