//! Credential sources for the selected user: a static bearer token, a token file that rotates (the
//! in-cluster service-account token among them), and basic auth. Each yields the `Authorization` value for
//! the next request; values are marked sensitive so they never reach a debug print.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;
use secrecy::ExposeSecret;

use crate::kubeconfig::AuthConfig;

/// How long a token read from a file is used before the file is read again. client-go uses one minute
/// minus ten seconds of leeway; kubelet rewrites projected service-account tokens at 80% of their TTL,
/// so this is always well inside a token's life.
pub const TOKEN_FILE_PERIOD: Duration = Duration::from_secs(50);

/// A credential could not be produced; the message names the source, never the secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    /// A token file could not be read and no earlier token exists.
    #[error("cannot read token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The credential contains bytes that cannot go in an HTTP header.
    #[error("{0} is not a valid HTTP header value (control characters?)")]
    InvalidValue(&'static str),
    /// The configured credential mechanism is not available.
    #[error("{0}")]
    Unsupported(String),
}

/// Produces the `Authorization` header for upstream requests.
#[derive(Debug)]
pub struct Credentials {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    None,
    Static(HeaderValue),
    File(TokenFile),
}

impl Credentials {
    /// Credentials that add nothing.
    pub fn none() -> Self {
        Self { kind: Kind::None }
    }

    /// Builds the sources the user entry names. Exec plugins and auth providers are reported as
    /// unsupported by this build.
    pub fn from_config(auth: &AuthConfig) -> Result<Self, CredentialError> {
        if let Some(provider) = &auth.auth_provider {
            return Err(CredentialError::Unsupported(format!(
                "auth-provider {:?} is not supported yet",
                provider.name
            )));
        }
        if auth.exec.is_some()
            && auth.token.is_none()
            && auth.token_file.is_none()
            && auth.basic.is_none()
        {
            return Err(CredentialError::Unsupported(
                "exec credential plugins are not supported yet".to_owned(),
            ));
        }
        let inline = auth
            .token
            .as_ref()
            .map(|t| bearer(t.expose_secret()))
            .transpose()?;
        let kind = if let Some(path) = &auth.token_file {
            Kind::File(TokenFile::new(path.clone(), inline)?)
        } else if let Some(value) = inline {
            Kind::Static(value)
        } else if let Some((user, pass)) = &auth.basic {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", pass.expose_secret()));
            let mut v = HeaderValue::try_from(format!("Basic {encoded}"))
                .map_err(|_| CredentialError::InvalidValue("basic auth credentials"))?;
            v.set_sensitive(true);
            Kind::Static(v)
        } else {
            Kind::None
        };
        Ok(Self { kind })
    }

    /// The `Authorization` value for the next request, if this user has one.
    pub async fn authorization(&self) -> Result<Option<HeaderValue>, CredentialError> {
        match &self.kind {
            Kind::None => Ok(None),
            Kind::Static(v) => Ok(Some(v.clone())),
            Kind::File(f) => f.current().map(Some),
        }
    }

    /// Reports an upstream 401 for a request that carried our credential: rotating sources are re-read
    /// before the next request instead of waiting for their period.
    pub fn unauthorized(&self) {
        if let Kind::File(f) = &self.kind {
            f.expire();
        }
    }

    /// Whether this user sends any credential of its own.
    pub fn is_some(&self) -> bool {
        !matches!(self.kind, Kind::None)
    }
}

/// `Bearer <token>` as a sensitive header value.
pub fn bearer(token: &str) -> Result<HeaderValue, CredentialError> {
    let mut v = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| CredentialError::InvalidValue("bearer token"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// A token file re-read every [`TOKEN_FILE_PERIOD`] and after a 401, trimmed of surrounding whitespace
/// (kubernetes/kubernetes#52919). While the file is unreadable the last good token is kept, and before
/// any was read the inline `token` is used, as client-go does.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    inline: Option<HeaderValue>,
    state: Mutex<TokenState>,
}

#[derive(Debug)]
struct TokenState {
    value: Option<HeaderValue>,
    /// When the file is next due to be read.
    due: Instant,
}

impl TokenFile {
    fn new(path: PathBuf, inline: Option<HeaderValue>) -> Result<Self, CredentialError> {
        let value = read_token(&path)?;
        Ok(Self {
            path,
            inline,
            state: Mutex::new(TokenState {
                value: Some(value),
                due: Instant::now() + TOKEN_FILE_PERIOD,
            }),
        })
    }

    fn current(&self) -> Result<HeaderValue, CredentialError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now >= state.due {
            state.due = now + TOKEN_FILE_PERIOD;
            // A token file is a few hundred bytes on a local (usually tmpfs) mount: reading it inline once
            // a period is cheaper than a hop to the blocking pool on every request.
            let read = read_token(&self.path);
            // ops hook (observe): refresh counters, and /readyz fails while re-reading fails.
            crate::observe::credential_refreshed(read.is_ok());
            match read {
                Ok(v) => state.value = Some(v),
                Err(e) => tracing::warn!(error = %e, "keeping the last token read"),
            }
        }
        state
            .value
            .clone()
            .or_else(|| self.inline.clone())
            .ok_or_else(|| CredentialError::TokenFile {
                path: self.path.clone(),
                reason: "no token has been read".to_owned(),
            })
    }

    fn expire(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).due = Instant::now();
    }
}

fn read_token(path: &std::path::Path) -> Result<HeaderValue, CredentialError> {
    let err = |reason: String| CredentialError::TokenFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("the file is empty".to_owned()));
    }
    bearer(token)
        .map_err(|_| err("the token contains characters not allowed in a header".to_owned()))
}
