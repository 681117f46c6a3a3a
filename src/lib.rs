//! kproxy: a drop-in replacement for `kubectl proxy`, the authenticating local gateway to the
//! Kubernetes API.
//!
//! # Layout
//! A request flows top to bottom through these modules:
//! - [`cli`]: the command line, every `kubectl proxy` flag with kubectl's names and defaults.
//! - [`env`]: environment variables behind a trait, so tests inject them.
//! - [`config`]: validates flags into a [`config::Config`], builds the router, owns exit codes.
//! - [`kubeconfig`]: finds, merges and resolves kubeconfig files (client-go rules) or in-cluster config.
//! - [`credentials`]: the selected user's credential, kept fresh: tokens, rotating token files, basic
//!   auth, exec plugins, OIDC (docs/credentials.md).
//! - [`tls`]: rustls configuration: trust roots, insecure mode, server name, client certificate;
//!   certificate and CA files reloaded when they change.
//! - [`upstream`]: the connections to the API server (one shared HTTP/2 connection for ordinary
//!   requests, HTTP/1.1 for bulk reads, HTTP/2 lanes for watches), rebuilt when the TLS material
//!   changes, dialling directly or through an HTTP(S)/SOCKS5 proxy ([`upstream::egress`]).
//! - [`server`]: listener (TCP or unix socket), accept loop, connection limits, graceful drain.
//! - [`router`]: path cleaning, prefix routing between the API and static files.
//! - [`filter`]: kubectl's regex filter on path, method and Host.
//! - [`static_files`]: `--www` static files, confined to their directory.
//! - [`proxy`]: rewrites and relays a request, streaming both bodies.
//! - [`auth`]: applies credentials and impersonation with client-go's precedence.
//! - [`upgrade`]: WebSocket/SPDY upgrade tunnels for exec, attach and port-forward.
//! - [`headers`]: the hop-by-hop header table (RFC 9110 §7.6.1).
//! - [`error`] and [`status`]: request errors, mapped once to Kubernetes `Status` JSON.
//! - [`body`]: the response body type, allocation-free on the relay path.
//!
//! Operations (docs/operations.md), around that flow:
//! - [`ops`]: wires the admin listener, the reloader and SIGHUP around the proxy listener.
//! - [`reload`]: the swap cell holding the router in force, and the reloader that rebuilds it.
//! - [`observe`]: per-request observation feeding metrics, readiness and the access log.
//! - [`metrics`]: Prometheus metrics on atomics, rendered by `prometheus-client`.
//! - [`admin`]: the admin listener: `/healthz`, `/readyz` (and its rule), `/metrics`.
//! - [`access_log`]: the access-log line formats.
//! - [`logging`]: `-v` levels mapped onto `tracing` filters.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod env;
pub mod error;
pub mod filter;
pub mod headers;
pub mod kubeconfig;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod ops;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod static_files;
pub mod status;
pub mod tls;
pub mod upgrade;
pub mod upstream;

use std::future::Future;

pub use config::{Config, StartupError};
pub use ops::{serve, Ops};
pub use server::Listener;

/// Runs kproxy on an already-bound listener until `shutdown` completes, then drains within
/// `config.shutdown_grace`. This is the library entry point; tests bind `127.0.0.1:0` and call it.
/// The admin listener, if configured, is bound here too.
pub async fn run(
    config: Config,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let lifecycle = config::Lifecycle::new(&config);
    let router = config::build_router(&config, &lifecycle)?;
    let ops = Ops::prepare(&config).await?;
    ops::serve(config, listener, ops, router, lifecycle, shutdown).await;
    Ok(())
}
