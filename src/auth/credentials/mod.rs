//! Credential sources for the selected user, each yielding the `Authorization` value (or, for exec
//! plugins, possibly a client certificate) for the next request, and each kept fresh:
//!
//! - a static bearer token or basic auth: fixed;
//! - [`token_file`]: `tokenFile` and the in-cluster service-account token, re-read every
//!   [`TOKEN_FILE_PERIOD`] and at once after a 401;
//! - [`exec`]: exec credential plugins, cached until shortly before `expirationTimestamp`, re-run after a
//!   401, one run at a time, with a timeout;
//! - [`oidc`]: the `oidc` auth provider, refreshed through the issuer and written back to the kubeconfig.
//!
//! Precedence is client-go's: `token`/`tokenFile`, then basic auth, then the auth provider, then the exec
//! plugin, which is not used at all when the user has a token, basic auth or a client certificate.
//!
//! Values are sensitive header values and every error names the source, never the secret.

mod credential;
pub mod exec;
pub mod oidc;
mod token_file;

pub use credential::{bearer, Credential, CredentialError, Used};
pub use exec::PluginEnv;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use secrecy::ExposeSecret;

use crate::kube::kubeconfig::ResolvedConfig;
use crate::kube::tls::{ClientIdentity, TLS_FILE_CHECK_PERIOD};
use crate::upstream::egress::ProxyEnv;
use crate::wire::headers::basic_auth;

/// How long a token read from a file is used before the file is read again. client-go uses one minute
/// minus ten seconds of leeway; kubelet rewrites projected service-account tokens at 80% of their TTL,
/// so this is always well inside a token's life.
pub const TOKEN_FILE_PERIOD: Duration = Duration::from_secs(50);

/// The refresh timings. [`Timing::default`] holds the documented constants; tests shorten them through
/// [`crate::Config::timing`] instead of waiting for them (there is no flag: these are not user knobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a token read from a file is used before it is read again (50 s, client-go's one minute
    /// less leeway).
    pub token_file_period: Duration,
    /// How long an exec plugin may run.
    pub exec_timeout: Duration,
    /// How often certificate, CA and `--auth-token-file` files are checked for changes.
    pub file_check_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            token_file_period: TOKEN_FILE_PERIOD,
            exec_timeout: exec::EXEC_TIMEOUT,
            file_check_period: TLS_FILE_CHECK_PERIOD,
        }
    }
}

/// client-go's message for the removed `gcp` provider (`plugin/pkg/client/auth/gcp/gcp_stub.go`).
pub const GCP_REMOVED: &str = "The gcp auth plugin has been removed.\nPlease use the \"gke-gcloud-auth-plugin\" kubectl/client-go credential plugin instead.\nSee https://cloud.google.com/blog/products/containers-kubernetes/kubectl-auth-changes-in-gke for further details";

/// client-go's message for the removed `azure` provider (`plugin/pkg/client/auth/azure/azure_stub.go`).
pub const AZURE_REMOVED: &str = "The azure auth plugin has been removed.\nPlease use the https://github.com/Azure/kubelogin kubectl/client-go credential plugin instead.\nSee https://kubernetes.io/docs/reference/access-authn-authz/authentication/#client-go-credential-plugins for further details";

/// What a credential source needs besides the user entry.
pub struct Context {
    /// The refresh timings.
    pub timing: Timing,
    /// The environment exec plugins inherit.
    pub plugin_env: PluginEnv,
    /// The proxy variables, for OIDC requests to the identity provider.
    pub proxy_env: ProxyEnv,
    /// Where exec plugins' client certificates go.
    pub identity: Arc<ClientIdentity>,
}

/// Produces the credential for upstream requests.
#[derive(Debug)]
pub struct Credentials {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    None,
    Static(HeaderValue),
    File(token_file::TokenFile),
    Exec(Box<exec::ExecAuth>),
    Oidc(Box<oidc::OidcAuth>),
}

impl Credentials {
    /// Builds the source the user entry names. Configuration errors (an unknown or removed auth
    /// provider, a bad exec `apiVersion`, an unreadable token file) fail here, at startup, as in
    /// client-go.
    pub fn new(cfg: &ResolvedConfig, ctx: &Context) -> Result<Self, CredentialError> {
        let auth = &cfg.auth;
        let user = auth.user_name.as_deref().unwrap_or("the user");
        // Built (and so validated) even when a token takes precedence, as client-go does.
        let provider = match &auth.auth_provider {
            None => None,
            Some(p) => match p.name.as_str() {
                "oidc" => Some(oidc::OidcAuth::new(
                    &p.config,
                    auth.user_origin.clone().zip(auth.user_name.clone()),
                    ctx.proxy_env.clone(),
                )?),
                "gcp" => return Err(CredentialError::Config(GCP_REMOVED.to_owned())),
                "azure" => return Err(CredentialError::Config(AZURE_REMOVED.to_owned())),
                other => {
                    return Err(CredentialError::Config(format!(
                        "no Auth Provider found for name {other:?}"
                    )))
                }
            },
        };
        let exec = auth
            .exec
            .as_ref()
            .map(|e| {
                exec::ExecAuth::new(
                    e,
                    user,
                    cfg,
                    ctx.plugin_env.clone(),
                    ctx.identity.clone(),
                    ctx.timing.exec_timeout,
                )
            })
            .transpose()?;

        let inline = auth
            .token
            .as_ref()
            .map(|t| bearer(t.expose_secret()))
            .transpose()?;
        let kind = if let Some(path) = &auth.token_file {
            Kind::File(token_file::TokenFile::new(
                path.clone(),
                inline,
                ctx.timing.token_file_period,
            )?)
        } else if let Some(value) = inline {
            Kind::Static(value)
        } else if let Some((user, pass)) = &auth.basic {
            Kind::Static(
                basic_auth(user, pass.expose_secret())
                    .ok_or(CredentialError::InvalidValue("basic auth credentials"))?,
            )
        } else if let Some(p) = provider {
            Kind::Oidc(Box::new(p))
        } else if let Some(e) = exec {
            if cfg.tls.client_cert.is_some() {
                // client-go's exec `UpdateTransportConfig`: a client certificate takes precedence.
                tracing::info!("the user has a client certificate; its exec plugin is not used");
                Kind::None
            } else {
                Kind::Exec(Box::new(e))
            }
        } else {
            Kind::None
        };
        Ok(Self { kind })
    }

    /// The credential for the next request, if this user has one.
    pub async fn current(&self) -> Result<Option<Credential>, CredentialError> {
        match &self.kind {
            Kind::None => Ok(None),
            Kind::Static(v) => Ok(Some(Credential {
                authorization: Some(v.clone()),
                used: Used(0),
            })),
            Kind::File(f) => f.current().map(Some),
            Kind::Exec(e) => e.current().await.map(Some),
            Kind::Oidc(o) => o.current().await.map(Some),
        }
    }

    /// Reports an upstream 401 to a request that carried credential `used`: rotating sources renew it
    /// before the next request instead of waiting for their period. The OIDC provider, like client-go's,
    /// renews only on expiry.
    pub fn rejected(&self, used: Used) {
        match &self.kind {
            Kind::File(f) => f.rejected(used),
            Kind::Exec(e) => e.rejected(used),
            Kind::None | Kind::Static(_) | Kind::Oidc(_) => {}
        }
    }

    /// Whether a 401 can be answered with a different credential (so a request is worth replaying).
    pub fn renews_on_rejection(&self) -> bool {
        matches!(self.kind, Kind::File(_) | Kind::Exec(_))
    }

    /// Whether the credential can be a client certificate only (an exec plugin), so that a request
    /// without `Authorization` still carried kproxy's credential.
    pub fn may_be_certificate(&self) -> bool {
        matches!(self.kind, Kind::Exec(_))
    }
}
