//! `tokenFile` and the in-cluster service-account token: a file re-read as it rotates.
//!
//! client-go (`transport/token_source.go`): the content is whitespace-trimmed
//! (kubernetes/kubernetes#52919); it is cached for a minute minus ten seconds of leeway, so re-read about
//! every 50 s; a read error keeps the last good token; a 401 resets the cache so the next request
//! re-reads. With `token` also set, the inline token is used only until the file was first read.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::auth::credentials::credential::{bearer, Credential, CredentialError, Used};

/// A rotating token file.
#[derive(Debug)]
pub(super) struct TokenFile {
    path: PathBuf,
    inline: Option<HeaderValue>,
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The last good token.
    value: Option<HeaderValue>,
    /// Bumped whenever `value` changes.
    generation: u64,
    /// When the file is next due to be read.
    due: Instant,
    /// The API server answered 401 to `value`: if the file is now unreadable there is no usable token,
    /// and that is reported instead of sending a token known to be rejected.
    rejected: bool,
    /// The current read-error streak was logged already.
    logged: bool,
}

impl TokenFile {
    /// Reads the file once: a missing or empty file at startup is an error, as in client-go.
    pub(super) fn new(
        path: PathBuf,
        inline: Option<HeaderValue>,
        period: Duration,
    ) -> Result<Self, CredentialError> {
        let value = read_token(&path).map_err(|reason| CredentialError::TokenFile {
            path: path.clone(),
            reason,
        })?;
        Ok(Self {
            path,
            inline,
            period,
            state: Mutex::new(State {
                value: Some(value),
                generation: 1,
                due: Instant::now() + period,
                rejected: false,
                logged: false,
            }),
        })
    }

    /// The token for the next request, re-reading the file when due.
    pub(super) fn current(&self) -> Result<Credential, CredentialError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now >= state.due {
            state.due = now + self.period;
            // A token file is a few hundred bytes on a local (usually tmpfs) mount: reading it inline once
            // a period is cheaper than a hop to the blocking pool on every request.
            let read = read_token(&self.path);
            // ops hook (observe): refresh counters, and /readyz fails while re-reading fails.
            crate::telemetry::hooks::credential_refreshed(read.is_ok());
            match read {
                Ok(v) => {
                    state.logged = false;
                    if state.value.as_ref() != Some(&v) {
                        state.value = Some(v);
                        state.generation += 1;
                        state.rejected = false;
                        tracing::info!(path = %self.path.display(), "token file changed; using the new token");
                    }
                }
                Err(e) if state.rejected => {
                    // Re-read at once next time too: the file may come back.
                    state.due = now;
                    let err = CredentialError::TokenFile {
                        path: self.path.clone(),
                        reason: format!(
                            "{e}; the last token read from it was rejected by the API server"
                        ),
                    };
                    if !state.logged {
                        state.logged = true;
                        tracing::warn!(error = %err, "no usable token");
                    }
                    return Err(err);
                }
                Err(e) => {
                    if !state.logged {
                        state.logged = true;
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot re-read the token file; keeping the last token read");
                    }
                }
            }
        }
        let value = state
            .value
            .clone()
            .or_else(|| self.inline.clone())
            .ok_or_else(|| CredentialError::TokenFile {
                path: self.path.clone(),
                reason: "no token has been read".to_owned(),
            })?;
        Ok(Credential {
            authorization: Some(value),
            used: Used(state.generation),
        })
    }

    /// The API server rejected the token of generation `used`: re-read the file before the next
    /// request.
    pub(super) fn rejected(&self, used: Used) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation == used.0 {
            state.rejected = true;
            state.due = Instant::now();
        }
    }
}

/// The trimmed token as a header value, or why not (never quoting the content).
fn read_token(path: &Path) -> Result<HeaderValue, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("the file is empty".to_owned());
    }
    bearer(token).map_err(|_| "the token contains characters not allowed in a header".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_caches_rereads_and_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  one\n").unwrap();
        let long = TokenFile::new(path.clone(), None, Duration::from_secs(3600)).unwrap();
        let zero = TokenFile::new(path.clone(), None, Duration::ZERO).unwrap();
        let auth = |f: &TokenFile| f.current().unwrap().authorization.unwrap();
        assert_eq!(auth(&long), "Bearer one");

        std::fs::write(&path, "two").unwrap();
        assert_eq!(auth(&long), "Bearer one", "cached within the period");
        assert_eq!(auth(&zero), "Bearer two");
        let used = long.current().unwrap().used;
        long.rejected(used);
        let after = long.current().unwrap();
        assert_eq!(
            after.authorization.unwrap(),
            "Bearer two",
            "re-read after a 401"
        );
        assert_ne!(after.used, used);

        std::fs::remove_file(&path).unwrap();
        assert_eq!(auth(&zero), "Bearer two", "last good token kept");
        let used = zero.current().unwrap().used;
        zero.rejected(used);
        let err = zero.current().unwrap_err().to_string();
        assert!(err.contains("rejected") && !err.contains("two"), "{err}");
        std::fs::write(&path, "three").unwrap();
        assert_eq!(auth(&zero), "Bearer three");
    }

    #[test]
    fn missing_or_empty_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert!(TokenFile::new(path.clone(), None, Duration::ZERO).is_err());
        std::fs::write(&path, " \n").unwrap();
        let err = TokenFile::new(path, None, Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
