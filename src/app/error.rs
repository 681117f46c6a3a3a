//! Why kproxy could not start, and the exit code each reason gives.

use crate::auth::credentials::CredentialError;
use crate::auth::InvalidImpersonation;
use crate::kube::kubeconfig::ConfigError;
use crate::kube::tls::TlsError;
use crate::proxy::filter::InvalidRegex;

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
pub const EXIT_USAGE: u8 = 64;
/// The generic failure code, for problems of the environment (a port in use).
pub const EXIT_FAILURE: u8 = 1;

/// Why kproxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Flags that contradict each other.
    #[error("{0}")]
    Usage(String),
    /// The kubeconfig or in-cluster configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A filter regex.
    #[error(transparent)]
    Filter(#[from] InvalidRegex),
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Credentials.
    #[error("credentials: {0}")]
    Credential(#[from] CredentialError),
    /// Impersonation values.
    #[error(transparent)]
    Impersonation(#[from] InvalidImpersonation),
    /// The listener could not be created.
    #[error("listen {addr}: {source}")]
    Bind {
        /// What was being bound.
        addr: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl StartupError {
    /// The process exit code: 64 for configuration, 1 for the environment.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Bind { .. } => EXIT_FAILURE,
            _ => EXIT_USAGE,
        }
    }
}
