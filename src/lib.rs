//! kproxy: a drop-in replacement for `kubectl proxy`, the authenticating local gateway to the
//! Kubernetes API.
//!
//! # Using it as a library
//! [`Config::from_cli`] validates flags into plain data; [`App::build`] builds the router, binds the
//! listeners and registers signal handlers; [`App::serve`] runs until a shutdown future completes and
//! drains. `main.rs`, [`run`] and every test harness go through that one sequence.
//!
//! # Layers
//! Each folder of `src/` is a layer. A module uses only the layers above it in this list, and within a
//! layer only the modules before it (`tests/layers.rs` fails on any other import, so no cycle can form):
//! 1. `base`: leaves: the environment behind a trait (`env`, so tests inject it), the boxed error type
//!    and error chains, host:port text, the `Lease` of a bounded group, the
//!    single-flight cell behind every shared refresh (exec plugin, OIDC, the shared dial), the bound on
//!    echoed client text (`echo`) and the open-file limit (`fd_limit`).
//! 2. `wire`: HTTP vocabulary: the response body type (allocation-free on the relay path), received
//!    bodies, the hop-by-hop header table (RFC 9110 §7.6.1), Kubernetes `Status` bodies, and the one
//!    way a bodyless request is sent again.
//! 3. `telemetry`: what operators see: hooks that code below reports through (no-ops outside an
//!    observed request), readiness inputs, Prometheus metrics, the access log, `-v` levels, and the
//!    per-request observer.
//! 4. `kube`: the kubeconfig or in-cluster configuration resolved by client-go's rules, and the rustls
//!    material built from it, reloaded when its files change.
//! 5. `upstream`: the connections to the API server: `dial` (client-go's bounds, TLS over the
//!    `egress` route: direct or through an HTTP(S)/SOCKS5 proxy), `shared` (one HTTP/2 connection and its
//!    HTTP/1.1 pool), `lanes` (HTTP/2 connections for watches), and `Upstream::send`, the one
//!    request-level call.
//! 6. `auth`: the user's credential kept fresh (token, token file, basic, exec plugin, OIDC;
//!    docs/credentials.md) and impersonation, applied with client-go's precedence.
//! 7. `proxy`: request handling on the listener: `router` (path cleaning, prefixes), `filter` (kubectl's
//!    regexes), `guard` (who may use the proxy: Origin and CORS, the inbound token, `--read-only`),
//!    `static_files` (`--www`), `forward` (rewrite and relay, streaming both bodies),
//!    `upgrade` (WebSocket/SPDY tunnels), and `error`, mapped once to `Status` answers.
//! 8. [`cli`]: every `kubectl proxy` flag with kubectl's names and defaults, plus kproxy's own.
//! 9. [`app`]: the composition root: validated [`Config`], startup errors and exit codes, building
//!    the router, the contexts served at `/clusters/<key>/` (`clusters`, each built on first use by the
//!    same `build_router`), the kubeconfig written for clients (`client_config`), hot reload (`reload`,
//!    polling the files `watch` names), the listener and drain (`server`), the admin listener (`admin`:
//!    `/healthz`, `/readyz`, `/metrics`), [`App`], and `exec` (`--exec`), which runs an [`App`].
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
pub use base::fd_limit;
pub use telemetry::logging;

/// Internals the crate's own integration tests assert against; not part of the library's API.
#[doc(hidden)]
pub mod internals {
    pub use crate::base::echo::ECHO_LIMIT;
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
