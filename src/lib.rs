//! kproxy: a drop-in replacement for `kubectl proxy`, the authenticating local gateway to the
//! Kubernetes API.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod app;
pub mod auth;
pub mod base;
pub mod cli;
pub mod kube;
pub mod proxy;
pub mod telemetry;
pub mod upstream;
pub mod wire;

pub use base::env;

use std::future::Future;

pub use app::config::{Config, StartupError};
pub use app::server::Listener;
pub use app::{serve, Ops};

/// Runs kproxy on an already-bound listener until `shutdown` completes, then drains within
/// `config.shutdown_grace`. This is the library entry point; tests bind `127.0.0.1:0` and call it.
/// The admin listener, if configured, is bound here too.
pub async fn run(
    config: Config,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let lifecycle = app::config::Lifecycle::new(&config);
    let router = app::config::build_router(&config, &lifecycle)?;
    let ops = Ops::prepare(&config).await?;
    app::serve(config, listener, ops, router, lifecycle, shutdown).await;
    Ok(())
}
