//! What every credential source produces and how it fails: the vocabulary the sources
//! ([`super::token_file`], [`super::exec`], [`super::oidc`]) share with the
//! [`Credentials`](super::Credentials) that picks among them.

use std::path::PathBuf;

use http::HeaderValue;

/// A credential could not be produced; the message names the source, never the secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    /// A token file could not be read and no usable token exists.
    #[error("cannot read token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An exec plugin failed: not found, exit status, timeout, malformed output.
    #[error("exec plugin {command:?}: {reason}")]
    Exec {
        /// The configured command.
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// The OIDC auth provider could not produce a valid id-token.
    #[error("oidc auth provider (issuer {issuer}): {reason}")]
    Oidc {
        /// `idp-issuer-url`.
        issuer: String,
        /// What went wrong.
        reason: String,
    },
    /// The credential configuration cannot work (reported at startup).
    #[error("{0}")]
    Config(String),
    /// The credential contains bytes that cannot go in an HTTP header.
    #[error("{0} is not a valid HTTP header value (control characters?)")]
    InvalidValue(&'static str),
}

impl CredentialError {
    /// The message on one line, for the log (install hints and client-go's texts span several).
    pub fn one_line(&self) -> String {
        self.to_string()
            .split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The credential one request carries.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The `Authorization` value; `None` when an exec plugin returned only a client certificate (which
    /// the TLS layer presents).
    pub authorization: Option<HeaderValue>,
    /// Which credential this is, to report a 401 against it.
    pub used: Used,
}

/// Identifies one credential value of a source (a generation that changes when the value does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used(pub(crate) u64);

/// `Bearer <token>` as a sensitive header value.
pub fn bearer(token: &str) -> Result<HeaderValue, CredentialError> {
    let mut v = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| CredentialError::InvalidValue("bearer token"))?;
    v.set_sensitive(true);
    Ok(v)
}
