//! Request-time errors and the one place they become HTTP answers: a Kubernetes `Status` JSON whose
//! message names the cause (kubectl proxy answers plain-text 500s instead).

use http::{Response, StatusCode};

use crate::auth::credentials::CredentialError;
use crate::base::error::chain;
use crate::kube::kubeconfig::Server;
use crate::proxy::filter::Rejection;
use crate::proxy::guard::Refusal;
use crate::upstream::UpstreamError;
use crate::wire::body::Body;
use crate::wire::status;

/// Why kproxy answered a request itself instead of relaying the API server's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request filter turned it away.
    #[error("kproxy rejected {method} {path}: {rejection}")]
    Filtered {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// The rule.
        rejection: Rejection,
    },
    /// No route serves the path.
    #[error("the path {0:?} is not served by this proxy (check --api-prefix and --www-prefix)")]
    NotFound(String),
    /// The API server could not be reached (refused, unreachable, DNS, timeout).
    #[error("cannot reach the API server {upstream}: {cause}")]
    Unreachable {
        /// The server URL.
        upstream: String,
        /// The error chain.
        cause: String,
    },
    /// The connection failed after it was made: TLS, protocol, reset.
    #[error("error talking to the API server {upstream}: {cause}")]
    BadGateway {
        /// The server URL.
        upstream: String,
        /// The error chain.
        cause: String,
    },
    /// The connection to the API server stopped delivering before the response came.
    #[error(
        "no answer from the API server {upstream}: {cause}; the next request uses a new connection"
    )]
    GatewayTimeout {
        /// The server URL.
        upstream: String,
        /// The error chain.
        cause: String,
    },
    /// The credential for the request could not be produced.
    #[error("kproxy could not obtain credentials for the API server: {0}")]
    Credential(#[from] CredentialError),
    /// The request itself is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The guard refused it: origin, inbound token or `--read-only` (see [`crate::proxy::guard`]).
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl ProxyError {
    /// The HTTP status for this error. The single mapping from errors to codes.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Filtered { .. } => StatusCode::FORBIDDEN,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::Unreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Credential(_) => StatusCode::UNAUTHORIZED,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Refused(r) => r.status(),
        }
    }

    /// The answer for a request that got no response from `server`: unreachable (503) when no
    /// connection could be made for a reason other than TLS, a bad gateway (502) otherwise.
    pub fn upstream(server: &Server, err: UpstreamError) -> Self {
        let cause = chain(&err);
        let upstream = server.to_string();
        match err {
            UpstreamError::Dial(_) => ProxyError::Unreachable { upstream, cause },
            UpstreamError::Tls(_) | UpstreamError::Refused(_) | UpstreamError::Broken(_) => {
                ProxyError::BadGateway { upstream, cause }
            }
            UpstreamError::Stalled(_) => ProxyError::GatewayTimeout { upstream, cause },
        }
    }

    /// The `Status` response for this error.
    pub fn into_response(self) -> Response<Body> {
        let code = self.status();
        status::response(code, status::reason_for(code), &self.to_string())
    }
}
