//! Hooks through which code deep in a request (the proxy, credential sources) reports what happened to
//! the request's observer, without knowing about metrics or readiness. Each request runs in a
//! task-local scope ([`scoped`], or the observer's own); outside one the hooks do nothing and cost a
//! task-local lookup.

use std::cell::Cell;

use http::Version;

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Outcome {
    /// By kproxy itself, without contacting the API server.
    #[default]
    Local,
    /// By the API server, over this protocol.
    Upstream(Version),
    /// The API server could not be reached or the exchange failed.
    UpstreamFailed,
}

/// What code under a scope reported; plain values copied out when the scope ends.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    pub(crate) outcome: Outcome,
    pub(crate) credential_failed: bool,
    pub(crate) refreshes: u16,
    pub(crate) refresh_failures: u16,
    /// The result of the most recent refresh.
    pub(crate) last_refresh: Option<bool>,
}

impl Seen {
    pub(crate) fn answered(&self) -> bool {
        matches!(self.outcome, Outcome::Upstream(_))
    }

    pub(crate) fn proto(&self) -> Option<&'static str> {
        match self.outcome {
            Outcome::Upstream(v) if v == Version::HTTP_2 => Some("h2"),
            Outcome::Upstream(v) if v == Version::HTTP_10 => Some("http/1.0"),
            Outcome::Upstream(_) => Some("http/1.1"),
            _ => None,
        }
    }
}

tokio::task_local! {
    pub(crate) static SCOPE: Cell<Seen>;
}

fn update(f: impl FnOnce(&mut Seen)) {
    let _ = SCOPE.try_with(|cell| {
        let mut seen = cell.get();
        f(&mut seen);
        cell.set(seen);
    });
}

/// Hook for the proxy: the API server answered (any status) over `version`, or (`None`) the exchange
/// failed. Outside an observed request this does nothing.
pub fn upstream_answered(version: Option<Version>) {
    update(|s| {
        s.outcome = match version {
            Some(v) => Outcome::Upstream(v),
            None => Outcome::UpstreamFailed,
        }
    });
}

/// Hook for the proxy: no credential could be produced for the request (it is answered 401).
pub fn credential_failed() {
    update(|s| s.credential_failed = true);
}

/// Hook for credential sources: a refresh (re-reading a token file, re-running a plugin) succeeded or
/// failed. Outside an observed request (or the readiness probe) this does nothing.
pub fn credential_refreshed(ok: bool) {
    update(|s| {
        s.refreshes = s.refreshes.saturating_add(1);
        if !ok {
            s.refresh_failures = s.refresh_failures.saturating_add(1);
        }
        s.last_refresh = Some(ok);
    });
}

/// Runs `fut` in a fresh scope and returns what it reported.
pub(crate) async fn scoped<F: std::future::Future>(fut: F) -> (F::Output, Seen) {
    SCOPE
        .scope(Cell::new(Seen::default()), async move {
            let out = fut.await;
            (out, SCOPE.with(Cell::get))
        })
        .await
}
