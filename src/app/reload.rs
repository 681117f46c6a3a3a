//! Hot reload: the router in force is an immutable [`Snapshot`] behind a swap cell ([`Routers`]). Each
//! request takes the snapshot current when it arrives and keeps it to the end, so in-flight requests
//! finish on the old configuration and an old snapshot (with its upstream connection pool) is freed
//! when its last request ends. The listener and the [`Lifecycle`] (stream cancellation, tunnel
//! tracking, telemetry) outlive every snapshot.
//!
//! The reloader rebuilds the snapshot when a file the configuration was loaded from changes (kubeconfig
//! files, including ones in `$KUBECONFIG` that do not exist yet, the in-cluster service-account files, CA,
//! client certificate and key, token files), checked by content every `--config-poll-interval` (robust
//! to kubelet's atomic symlink swaps of projected volumes, which inotify watches on the file miss), and
//! when SIGHUP arrives. A configuration that fails to load or build is reported in one log line and the
//! last good one stays in force; the same broken content is not retried until it changes again (or
//! SIGHUP).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::app::build::{self, Lifecycle};
use crate::app::clusters::{self, ClusterSet};
use crate::app::config::{self, Config};
use crate::app::error::StartupError;
use crate::app::watch::{self, Baseline};
use crate::proxy::router::Router;
use crate::telemetry::metrics::UpstreamStats;
use crate::telemetry::observe::{self, ObservedBody, Telemetry};

/// The configuration in force: a router and the statistics of its API server.
pub struct Snapshot {
    /// The router built from the configuration.
    pub router: Arc<Router>,
    /// Metrics of the router's API server.
    pub upstream: Arc<UpstreamStats>,
    /// The contexts served under `/clusters/`, if any.
    pub clusters: Option<Arc<ClusterSet>>,
}

impl Snapshot {
    /// Wraps `router` and the statistics its requests are counted in.
    pub fn new(router: Arc<Router>, clusters: Option<Arc<ClusterSet>>) -> Self {
        let upstream = router.proxy().stats().clone();
        Self {
            router,
            upstream,
            clusters,
        }
    }
}

/// The swap cell holding the current [`Snapshot`]. A std `RwLock<Arc<_>>`: reading it and cloning the
/// `Arc` measured the same as `arc-swap`'s `load_full` here (about 20–35 ns either way), so no extra
/// crate; writers (reloads) are rare and hold the lock only for a pointer swap.
pub struct Routers {
    current: RwLock<Arc<Snapshot>>,
    telemetry: Arc<Telemetry>,
}

impl Routers {
    /// A cell holding `router` (and the `/clusters/` contexts) first.
    pub fn new(
        router: Arc<Router>,
        clusters: Option<Arc<ClusterSet>>,
        lifecycle: &Lifecycle,
    ) -> Self {
        let telemetry = lifecycle.telemetry.clone();
        Self {
            current: RwLock::new(Arc::new(Snapshot::new(router, clusters))),
            telemetry,
        }
    }

    /// The snapshot in force now.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `router` (and the `/clusters/` contexts) in force for new requests.
    pub fn replace(&self, router: Arc<Router>, clusters: Option<Arc<ClusterSet>>) {
        let next = Arc::new(Snapshot::new(router, clusters));
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            next,
        );
        // Dropped outside the lock; requests still holding it keep it alive.
        drop(old);
    }

    /// The telemetry requests are observed with.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Answers one request with the snapshot in force when it arrived.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        remote: Option<SocketAddr>,
    ) -> Response<ObservedBody> {
        let snapshot = self.current();
        if let Some(set) = &snapshot.clusters {
            if clusters::is_prefixed(req.uri().path()) {
                return set
                    .handle(
                        &self.telemetry,
                        &snapshot.router,
                        &snapshot.upstream,
                        req,
                        remote,
                    )
                    .await;
            }
        }
        observe::handle(&self.telemetry, &snapshot.upstream, req, |req| {
            snapshot.router.handle(req, remote)
        })
        .await
    }
}

/// What a reload puts in force: the configuration, its router and the `/clusters/` contexts.
type Rebuilt = (Config, Arc<Router>, Option<Arc<ClusterSet>>);

/// Loads the cluster configuration again with the original flags and environment, and builds a router
/// from it; the `/clusters/` contexts are resolved again too (added and removed contexts take effect).
pub fn rebuild(config: &Config, lifecycle: &Lifecycle) -> Result<Rebuilt, StartupError> {
    let cluster = crate::kube::kubeconfig::load(&config.load, &*config.env)?;
    let next = Config {
        route: config::route_for(&cluster, &config.proxy_env)?,
        cluster,
        baseline: Baseline::default(),
        ..config.clone()
    };
    let router = build::build_router(&next, "", lifecycle)?;
    let clusters = ClusterSet::resolve(&next, lifecycle)?;
    Ok((next, router, clusters))
}

/// What set off a reload check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Poll,
    Hangup,
}

/// Watches for changes and SIGHUP until `stop` fires. `hangup` is the SIGHUP stream, registered before
/// the startup line so a SIGHUP right after it cannot terminate the process.
pub async fn run(
    mut config: Config,
    lifecycle: Lifecycle,
    routers: Arc<Routers>,
    mut hangup: Option<Signal>,
    stop: CancellationToken,
) {
    let interval = config.poll_interval;
    let mut files = watch::watched_files(&config.load, &*config.env, &config.cluster);
    let mut last = config.baseline.hashes_for(&files);
    loop {
        let trigger = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = recv(&mut hangup) => Trigger::Hangup,
            _ = sleep_or_forever(interval) => Trigger::Poll,
        };
        let now = watch::fingerprint(&files);
        if trigger == Trigger::Poll && now == last {
            continue;
        }
        // Remember what was attempted, so a broken file is reported once, not every poll.
        last = now.clone();
        let started = std::time::Instant::now();
        let attempt = {
            let config = config.clone();
            let lifecycle = lifecycle.clone();
            // Reading files, parsing YAML and loading trust roots stay off the request thread.
            tokio::task::spawn_blocking(move || rebuild(&config, &lifecycle)).await
        };
        let metrics = &routers.telemetry().metrics;
        match attempt {
            Ok(Ok((next, router, clusters))) => {
                let server = router.proxy().server().to_string();
                routers.replace(router, clusters);
                let next_files = watch::watched_files(&next.load, &*next.env, &next.cluster);
                if next_files != files {
                    // The new configuration names other files. Files watched before keep the hash
                    // taken before this load read them; new ones are hashed now.
                    let before = Baseline::from_hashes(files.into_iter().zip(now).collect());
                    last = before.hashes_for(&next_files);
                    files = next_files;
                }
                config = next;
                metrics.reloads.fetch_add(1, Relaxed);
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                metrics.last_reload_unix.store(unix, Relaxed);
                tracing::info!(
                    "reloaded the configuration ({}): serving {server} to new requests (took {:?})",
                    if trigger == Trigger::Hangup {
                        "SIGHUP"
                    } else {
                        "files changed"
                    },
                    started.elapsed()
                );
            }
            Ok(Err(e)) => {
                metrics.reload_failures.fetch_add(1, Relaxed);
                tracing::warn!(
                    "configuration reload failed, keeping the last good configuration: {e}"
                );
            }
            Err(e) => {
                metrics.reload_failures.fetch_add(1, Relaxed);
                tracing::warn!(
                    "configuration reload failed, keeping the last good configuration: {e}"
                );
            }
        }
    }
}

async fn recv(signal: &mut Option<Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_or_forever(interval: Option<Duration>) {
    match interval {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
