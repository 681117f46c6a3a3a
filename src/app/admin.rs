//! The admin listener (`--admin-address`, off by default): `/healthz`, `/readyz` and `/metrics`, for
//! probes and scrapers. It never proxies anything and reveals no credential, so in a pod it may listen
//! on the pod IP (kubelet probes come from there) while the proxy itself stays on `127.0.0.1`.
//!
//! - `/healthz` (also `/livez`): `200 ok` while the process serves requests.
//! - `/metrics`: the Prometheus text format ([`crate::telemetry::metrics`]).
//! - `/readyz`: `200 ok`, or `503` with the reason, by this rule:
//!   1. kproxy is shutting down → not ready;
//!   2. the most recent credential event is a failure (a refresh that failed, or a request that could
//!      not be given a credential) → not ready until a later refresh succeeds;
//!   3. the API server answered a request (any status, 401 and 403 included) within
//!      [`ANSWER_WINDOW`] → ready;
//!   4. otherwise readyz probes the API server itself with an authenticated `GET /version` (at most once
//!      per [`PROBE_INTERVAL`], bounded by [`PROBE_TIMEOUT`]): any HTTP answer → ready, no answer → not
//!      ready.
//!
//!   As on kube-apiserver, `?exclude=NAME` (repeatable) leaves a check out: `credentials` (rule 2) or
//!   `upstream` (rules 3 and 4). `/readyz?exclude=upstream` therefore reflects kproxy's own state only,
//!   so an API-server outage does not take a Pod whose sidecar kproxy is out of its Services
//!   (docs/operations.md weighs the two). Rule 1 always applies.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::build::Lifecycle;
use crate::app::error::StartupError;
use crate::app::reload::Routers;
use crate::wire::body::Body;

/// An upstream answer this recent makes kproxy ready without probing.
pub const ANSWER_WINDOW: Duration = Duration::from_secs(5 * 60);
/// The probe's result is reused for this long, so frequent readiness checks cost at most one upstream
/// request per interval.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long the probe waits for the API server.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Admin connections served at once; probes and scrapes need few.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;

/// The `/readyz` checks a request leaves out (`?exclude=credentials`, `?exclude=upstream`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exclude {
    /// Leave out rule 2 (the credential).
    pub credentials: bool,
    /// Leave out rules 3 and 4 (the API server).
    pub upstream: bool,
}

impl Exclude {
    /// Reads every `exclude=NAME` of a query string; other parameters are ignored. An unknown name is an
    /// error, so a misspelt probe path does not silently keep the check it meant to drop.
    pub fn from_query(query: Option<&str>) -> Result<Exclude, String> {
        let mut exclude = Exclude::default();
        for pair in query.unwrap_or_default().split('&') {
            let Some(name) = pair.strip_prefix("exclude=") else {
                continue;
            };
            match name {
                "credentials" => exclude.credentials = true,
                "upstream" => exclude.upstream = true,
                other => {
                    return Err(format!(
                        "readyz: cannot exclude {other:?}: the checks that can be excluded are \"credentials\" and \"upstream\" (e.g. /readyz?exclude=upstream); shutdown always applies"
                    ))
                }
            }
        }
        Ok(exclude)
    }
}

/// Whether kproxy is ready, and why not, without the checks `exclude` names.
pub async fn readiness(
    routers: &Routers,
    lifecycle: &Lifecycle,
    exclude: Exclude,
) -> Result<(), String> {
    let telemetry = routers.telemetry();
    let health = &telemetry.health;
    if lifecycle.streams.is_cancelled() {
        return Err("kproxy is shutting down".to_owned());
    }
    if !exclude.credentials {
        health.credential_verdict()?;
    }
    if exclude.upstream {
        return Ok(());
    }
    let answered = health.last_answer.load(Relaxed);
    if health.ago(answered).is_some_and(|a| a <= ANSWER_WINDOW) {
        return Ok(());
    }

    let mut probe = health.probe.lock().await;
    let fresh = probe
        .as_ref()
        .is_some_and(|(at, _)| at.elapsed() < PROBE_INTERVAL);
    if !fresh {
        let snapshot = routers.current();
        let (result, seen) = crate::telemetry::hooks::scoped(tokio::time::timeout(
            PROBE_TIMEOUT,
            snapshot.router.proxy().probe(),
        ))
        .await;
        telemetry.apply(&seen);
        let failure = match result {
            Ok(Ok(_status)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        *probe = Some((Instant::now(), failure));
        // The probe may have tried (and failed) to refresh the credential.
        if !exclude.credentials {
            health.credential_verdict()?;
        }
    }
    match probe.as_ref().and_then(|(_, f)| f.clone()) {
        None => Ok(()),
        Some(failure) => {
            let since = match health.ago(answered) {
                Some(a) => format!("for {}s", a.as_secs()),
                None => "since start".to_owned(),
            };
            Err(format!(
                "upstream: no answer from the API server {since}, and GET /version failed: {failure}"
            ))
        }
    }
}

/// Binds the admin listener named by `--admin-address`.
pub async fn bind(address: &str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartupError::Bind {
            addr: format!("admin tcp {address}"),
            source,
        })
}

/// Serves admin requests on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    routers: Arc<Routers>,
    lifecycle: Lifecycle,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let routers = routers.clone();
        let lifecycle = lifecycle.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let routers = routers.clone();
                let lifecycle = lifecycle.clone();
                async move { Ok::<_, Infallible>(answer(req, &routers, &lifecycle).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn answer(
    req: Request<Incoming>,
    routers: &Routers,
    lifecycle: &Lifecycle,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here\n".to_owned(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => {
            let exclude = match Exclude::from_query(req.uri().query()) {
                Ok(e) => e,
                Err(message) => {
                    return crate::wire::status::response(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &message,
                    )
                }
            };
            match readiness(routers, lifecycle, exclude).await {
                Ok(()) => text(StatusCode::OK, "ok\n".to_owned()),
                Err(reason) => {
                    let mut body = String::new();
                    let _ = writeln!(body, "not ready: {reason}");
                    text(StatusCode::SERVICE_UNAVAILABLE, body)
                }
            }
        }
        "/metrics" => {
            let mut resp = text(StatusCode::OK, routers.telemetry().metrics.render());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the admin listener serves /healthz, /readyz and /metrics\n".to_owned(),
        ),
    }
}
