//! Readiness inputs: when the API server last answered, and whether the last credential event
//! succeeded. Observed requests write them; the admin listener's `/readyz` reads them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Readiness inputs, updated by observed requests and read by `/readyz`. Times are milliseconds since
/// `epoch` plus one, so 0 means "never".
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    pub(crate) last_answer: AtomicU64,
    last_credential_ok: AtomicU64,
    last_credential_failure: AtomicU64,
    /// The last active probe: when, and its failure (`None`: it got an answer). The lock also keeps
    /// concurrent readiness checks from probing twice.
    pub(crate) probe: tokio::sync::Mutex<Option<(Instant, Option<String>)>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_answer: AtomicU64::new(0),
            last_credential_ok: AtomicU64::new(0),
            last_credential_failure: AtomicU64::new(0),
            probe: tokio::sync::Mutex::new(None),
        }
    }
}

impl Health {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// The API server answered a request. Returns the time stored (ms since the epoch, plus one).
    pub fn upstream_answered(&self) -> u64 {
        let now = self.now();
        self.last_answer.store(now, Relaxed);
        now
    }

    /// A credential refresh succeeded.
    pub fn credential_ok(&self) {
        self.last_credential_ok.store(self.now(), Relaxed);
    }

    /// A credential refresh failed, or a request could not be given a credential.
    pub fn credential_failed(&self) {
        self.last_credential_failure.store(self.now(), Relaxed);
    }

    /// Rule 2: fails while the most recent credential event is a failure.
    pub(crate) fn credential_verdict(&self) -> Result<(), String> {
        let failed = self.last_credential_failure.load(Relaxed);
        if failed > self.last_credential_ok.load(Relaxed) {
            return Err(format!(
                "credentials: the last attempt to obtain or refresh the credential failed {}s ago (the log says why); waiting for a refresh to succeed",
                self.ago(failed).unwrap_or_default().as_secs()
            ));
        }
        Ok(())
    }

    pub(crate) fn ago(&self, t: u64) -> Option<Duration> {
        (t > 0).then(|| Duration::from_millis(self.now().saturating_sub(t)))
    }
}
