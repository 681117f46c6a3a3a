//! Per-request observation for metrics, readiness, the access log and `-v=6` round-trip lines.
//!
//! The server wraps each request in [`handle`]: it notes the start, runs the router inside a task-local
//! scope, and wraps the response body in an [`ObservedBody`] that finishes the record when the body
//! ends (or is dropped: a client that goes away). Code deeper down reports what happened through the
//! free functions [`upstream_answered`], [`credential_failed`] and [`credential_refreshed`], which write
//! into that scope and cost nothing outside one. Nothing here allocates per request; with the admin
//! listener and the access log both off, [`handle`] only adds a branch.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::telemetry::access_log::{self, Format};
use crate::telemetry::health::Health;
use crate::telemetry::hooks::{Outcome, Seen, SCOPE};
use crate::telemetry::metrics::{MethodIndex, Metrics, UpstreamStats};
use crate::wire::body::{Body, BoxError};

/// What observation needs, shared by the server, the router builds and the admin listener.
#[derive(Debug)]
pub struct Telemetry {
    /// Whether requests are observed at all (admin listener or access log on).
    pub enabled: bool,
    /// The Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Inputs to `/readyz`.
    pub health: Health,
    /// `--access-log`.
    pub access_log: Format,
}

impl Telemetry {
    /// Telemetry whose metrics read open tunnels from `tunnels`. Requests are observed only when
    /// `enabled`.
    pub fn new(enabled: bool, access_log: Format, tunnels: tokio_util::task::TaskTracker) -> Self {
        // Created together: the metrics' start time is the readiness clock's epoch.
        Self {
            enabled: enabled || access_log != Format::Off,
            health: Health::default(),
            metrics: Arc::new(Metrics::new(tunnels)),
            access_log,
        }
    }

    /// Applies what a scope saw to readiness and the credential counters.
    pub(crate) fn apply(&self, seen: &Seen) {
        let m = &self.metrics;
        if seen.answered() {
            let at = self.health.upstream_answered();
            m.last_upstream_answer_ms.store(at, Relaxed);
        }
        if seen.refreshes > 0 {
            m.credential_refreshes
                .fetch_add(u64::from(seen.refreshes), Relaxed);
        }
        if seen.refresh_failures > 0 {
            m.credential_refresh_failures
                .fetch_add(u64::from(seen.refresh_failures), Relaxed);
        }
        if seen.credential_failed {
            m.credential_errors.fetch_add(1, Relaxed);
        }
        match (seen.credential_failed, seen.last_refresh) {
            (true, _) | (false, Some(false)) => self.health.credential_failed(),
            (false, Some(true)) => self.health.credential_ok(),
            (false, None) => {}
        }
    }
}

/// Answers `req` with `respond` (the router), observing it when telemetry is enabled; `stats` are the
/// statistics of the API server the router forwards to.
pub async fn handle<F, Fut>(
    telemetry: &Arc<Telemetry>,
    stats: &Arc<UpstreamStats>,
    req: Request<Incoming>,
    respond: F,
) -> Response<ObservedBody>
where
    F: FnOnce(Request<Incoming>) -> Fut,
    Fut: std::future::Future<Output = Response<Body>>,
{
    if !telemetry.enabled {
        return respond(req).await.map(ObservedBody::plain);
    }
    let mut record = Record::start(telemetry, stats, &req);
    // The scope wraps the router's future directly (no extra async layer): each layer would move that
    // large future once more, which measured as the biggest part of observation's cost.
    let scope = SCOPE.scope(Cell::new(Seen::default()), respond(req));
    tokio::pin!(scope);
    let resp = scope.as_mut().await;
    let seen = scope
        .as_mut()
        .take_value()
        .map(Cell::into_inner)
        .unwrap_or_default();
    telemetry.apply(&seen);
    // The proxy already decided which responses are long-running (watches, followed logs).
    record.long_running = resp.body().is_stream();
    record.responded(resp.status().as_u16(), &seen);
    resp.map(|inner| ObservedBody {
        inner,
        record: Some(record),
    })
}

/// One request being observed. Dropped without [`Record::finish`] having run, it finishes itself:
/// with status 499 when no response was produced (the client went away first).
struct Record {
    telemetry: Arc<Telemetry>,
    /// The configured upstream's statistics; swapped for the local ones if kproxy answered itself.
    stats: Arc<UpstreamStats>,
    start: Instant,
    method_index: MethodIndex,
    /// Kept for the access log and the round-trip line (cheap clones: shared bytes).
    method: Method,
    uri: Option<Uri>,
    bytes_in: Option<u64>,
    /// A watch or followed log being relayed (set when the response head is known); counted in the
    /// open-watches gauge until the record finishes.
    long_running: bool,
    /// 0 until the response head is known.
    status: u16,
    proto: Option<&'static str>,
    bytes_out: u64,
    done: bool,
}

impl Record {
    fn start(
        telemetry: &Arc<Telemetry>,
        stats: &Arc<UpstreamStats>,
        req: &Request<Incoming>,
    ) -> Self {
        telemetry.metrics.in_flight.fetch_add(1, Relaxed);
        let uri = req.uri();
        let wants_uri = telemetry.access_log != Format::Off
            || tracing::enabled!(target: ROUND_TRIP, tracing::Level::DEBUG);
        Record {
            telemetry: telemetry.clone(),
            stats: stats.clone(),
            start: Instant::now(),
            method_index: MethodIndex::of(req.method()),
            method: req.method().clone(),
            uri: wants_uri.then(|| uri.clone()),
            bytes_in: http_body::Body::size_hint(req.body()).exact(),
            long_running: false,
            status: 0,
            proto: None,
            bytes_out: 0,
            done: false,
        }
    }

    fn responded(&mut self, status: u16, seen: &Seen) {
        self.status = status;
        self.proto = seen.proto();
        if seen.outcome == Outcome::Local && !seen.credential_failed {
            self.stats = self.stats.own_answers();
        }
        if self.long_running {
            self.telemetry.metrics.open_watches.fetch_add(1, Relaxed);
        }
        if let (Some(uri), Some(proto)) = (&self.uri, self.proto) {
            // kubectl -v=6: `GET https://host/api/v1/pods 200 OK in 1 milliseconds`.
            tracing::debug!(
                target: ROUND_TRIP,
                "{} {}{} {} in {} milliseconds ({proto})",
                self.method,
                self.stats.label(),
                RedactedTarget(uri),
                status,
                self.start.elapsed().as_millis()
            );
        }
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let duration = self.start.elapsed();
        let status = if self.status == 0 { 499 } else { self.status };
        let m = &self.telemetry.metrics;
        m.in_flight.fetch_sub(1, Relaxed);
        if self.long_running {
            m.open_watches.fetch_sub(1, Relaxed);
        }
        let timed = !self.long_running && status != 101;
        self.stats.record(
            self.method_index,
            status,
            timed.then_some(duration),
            self.bytes_in.unwrap_or(0),
            self.bytes_out,
        );
        if let Some(uri) = &self.uri {
            access_log::write(
                self.telemetry.access_log,
                &access_log::Entry {
                    method: &self.method,
                    uri,
                    status,
                    bytes_in: self.bytes_in,
                    bytes_out: self.bytes_out,
                    duration,
                    proto: self.proto,
                    upstream: (self.stats.label() != crate::telemetry::metrics::NO_UPSTREAM)
                        .then(|| self.stats.label()),
                    cluster: (!self.stats.cluster().is_empty()).then(|| self.stats.cluster()),
                },
            );
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The tracing target of kubectl's `-v=6` round-trip lines.
pub const ROUND_TRIP: &str = "kproxy::round_trip";

struct RedactedTarget<'a>(&'a Uri);

impl std::fmt::Display for RedactedTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        access_log::target(&mut s, self.0, false);
        f.write_str(&s)
    }
}

/// The response body the server sends: the router's body, counted, finishing its request's record
/// when it ends.
pub struct ObservedBody {
    inner: Body,
    record: Option<Record>,
}

impl ObservedBody {
    /// A body nobody observes.
    pub fn plain(inner: Body) -> Self {
        Self {
            inner,
            record: None,
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(record) = &mut this.record {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        record.bytes_out += data.len() as u64;
                    }
                }
                Poll::Ready(_) => record.finish(),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
