//! kproxy: a drop-in replacement for `kubectl proxy`, the authenticating local gateway to the
//! Kubernetes API.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod app;
mod auth;
mod base;
pub mod cli;
mod kube;
mod proxy;
mod telemetry;
mod upstream;
mod wire;

pub use base::env;
pub use telemetry::logging;

/// Internals the crate's own integration tests assert against; not part of the library's API.
#[doc(hidden)]
pub mod internals {
    pub use crate::proxy::forward::is_bulk_read;
    pub use crate::upstream::BULK_CONNECTIONS;
}

use std::future::Future;

pub use app::config::{Config, Listen};
pub use app::error::StartupError;
pub use app::App;
pub use app::Listener;

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
