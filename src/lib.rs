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

pub use app::config::{Config, Listen};
pub use app::error::StartupError;
pub use app::server::Listener;
pub use app::App;

/// Runs kproxy on an already-bound listener until `shutdown` completes, then drains within
/// `config.shutdown_grace`. The library entry point for embedding; the admin listener, if configured,
/// is bound here too.
pub async fn run(
    config: Config,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    App::with_listener(config, listener)
        .await?
        .serve(shutdown)
        .await;
    Ok(())
}
