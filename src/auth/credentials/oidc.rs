//! The `oidc` auth provider (`users[].user.auth-provider`), as client-go's
//! `plugin/pkg/client/auth/oidc/oidc.go` runs it: the `id-token` is sent while it is valid for more than
//! [`OIDC_EXPIRY_LEEWAY`]; after that the `refresh-token` is exchanged at the issuer's token endpoint
//! (found by OIDC discovery, trusting `idp-certificate-authority(-data)` or else the system roots), and the
//! new `id-token` (and a rotated `refresh-token`) is written back into the kubeconfig file that defined
//! the user, as kubectl does. `client-secret` is optional; `extra-scopes` is ignored (client-go sends no
//! scopes when refreshing).
//!
//! Beyond client-go: before refreshing, kproxy re-reads the tokens from that file, so a refresh done
//! meanwhile by kubectl (which may have rotated a single-use refresh token) is picked up instead of
//! failing with `invalid_grant`; and a file that cannot be written is logged, not fatal: the fresh token
//! is still used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rustls::{ClientConfig, RootCertStore};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::auth::credentials::credential::{bearer, Credential, CredentialError, Used};
use crate::base::single_flight::{Begin, SingleFlight, Ticket};
use crate::kube::kubeconfig::PemSource;
use crate::kube::tls;
use crate::upstream::dial::http_connector;
use crate::upstream::egress::{EgressConnector, ProxyEnv, Route};
use crate::wire::headers::basic_auth;

/// An `id-token` is used only while it expires more than this far in the future (client-go's
/// `expiryDelta`, against clock skew).
pub const OIDC_EXPIRY_LEEWAY: Duration = Duration::from_secs(10);

/// The limit for each request to the identity provider (discovery, token).
pub const OIDC_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The most kproxy reads of an identity provider's answer.
const MAX_IDP_RESPONSE: usize = 1 << 20;

/// RFC 3986 unreserved characters stay; everything else is percent-encoded (form values, and the
/// client id and secret in HTTP basic auth, as Go's oauth2 does).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The configured provider and its tokens.
pub(super) struct OidcAuth {
    issuer: String,
    client_id: String,
    client_secret: SecretString,
    idp_roots: Arc<RootCertStore>,
    /// The kubeconfig file that defined the user, and the user's name: where new tokens are written.
    persist: Option<(PathBuf, String)>,
    proxy_env: ProxyEnv,
    state: Mutex<State>,
    /// One refresh at a time, its outcome shared by the requests that waited for it.
    refresh: SingleFlight<CredentialError>,
}

impl std::fmt::Debug for OidcAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuth")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    id_token: Option<SecretString>,
    refresh_token: Option<SecretString>,
    /// The header for `id_token` and its expiry, while it is known to be valid.
    valid: Option<(HeaderValue, SystemTime)>,
    generation: u64,
}

impl State {
    fn usable(&self, now: SystemTime) -> Option<Credential> {
        let (h, exp) = self.valid.as_ref()?;
        (now + OIDC_EXPIRY_LEEWAY < *exp).then(|| Credential {
            authorization: Some(h.clone()),
            used: Used(self.generation),
        })
    }
}

impl OidcAuth {
    /// Checks the provider configuration (client-go fails at startup on the same problems).
    pub(super) fn new(
        config: &HashMap<String, String>,
        persist: Option<(PathBuf, String)>,
        proxy_env: ProxyEnv,
    ) -> Result<Self, CredentialError> {
        let get = |k: &str| config.get(k).filter(|v| !v.is_empty()).cloned();
        let issuer = get("idp-issuer-url")
            .ok_or_else(|| CredentialError::Config("oidc: Must provide idp-issuer-url".into()))?;
        let client_id = get("client-id")
            .ok_or_else(|| CredentialError::Config("oidc: Must provide client-id".into()))?;
        if get("extra-scopes").is_some() {
            tracing::info!(
                "oidc: extra-scopes is deprecated and ignored; refresh requests send no scopes"
            );
        }
        let ca = match (
            get("idp-certificate-authority-data"),
            get("idp-certificate-authority"),
        ) {
            (Some(data), _) => Some(PemSource::Data(
                base64::engine::general_purpose::STANDARD
                    .decode(data.split_ascii_whitespace().collect::<String>())
                    .map_err(|e| {
                        CredentialError::Config(format!(
                            "oidc: idp-certificate-authority-data is not valid base64: {e}"
                        ))
                    })?,
            )),
            (None, Some(file)) => Some(PemSource::File(PathBuf::from(file))),
            (None, None) => None,
        };
        let idp_roots = idp_roots(ca.as_ref())?;
        let mut state = State {
            id_token: get("id-token").map(SecretString::from),
            refresh_token: get("refresh-token").map(SecretString::from),
            generation: 1,
            ..State::default()
        };
        state.valid = state
            .id_token
            .as_ref()
            .and_then(|t| valid_header(t.expose_secret()));
        Ok(Self {
            issuer,
            client_id,
            client_secret: SecretString::from(get("client-secret").unwrap_or_default()),
            idp_roots,
            persist,
            proxy_env,
            state: Mutex::new(state),
            refresh: SingleFlight::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, reason: impl Into<String>) -> CredentialError {
        CredentialError::Oidc {
            issuer: self.issuer.clone(),
            reason: reason.into(),
        }
    }

    /// The `id-token` for the next request, refreshed first when it is about to expire.
    pub(super) async fn current(&self) -> Result<Credential, CredentialError> {
        let ticket = self.refresh.ticket();
        if let Some(c) = self.lock().usable(SystemTime::now()) {
            return Ok(c);
        }
        // Boxed: the refresh (an HTTPS exchange with the identity provider) makes a future of
        // kilobytes, which every request's future would otherwise carry and copy.
        Box::pin(self.renew(ticket)).await
    }

    /// Refreshes the token, unless a refresh ended while this request waited: then it shares that
    /// outcome.
    async fn renew(&self, ticket: Ticket) -> Result<Credential, CredentialError> {
        let flight = match self
            .refresh
            .begin(ticket, || self.lock().usable(SystemTime::now()))
            .await
        {
            Begin::Cached(c) => return Ok(c),
            Begin::Failed(e) => return Err(e),
            Begin::Refresh(flight) => flight,
        };
        let result = self.obtain().await;
        let mut state = self.lock();
        match result {
            Ok((id_token, refresh_token)) => {
                let Some(valid) = valid_header(id_token.expose_secret()) else {
                    let e = self.error("the identity provider returned an id_token that is not a valid, unexpired JWT");
                    tracing::warn!(error = %e.one_line(), "oidc token refresh failed");
                    flight.finish(Some(e.clone()));
                    return Err(e);
                };
                state.id_token = Some(id_token);
                if refresh_token.is_some() {
                    state.refresh_token = refresh_token;
                }
                state.valid = Some(valid);
                state.generation += 1;
                flight.finish(None);
                Ok(state
                    .usable(SystemTime::UNIX_EPOCH)
                    .expect("a token just validated is usable"))
            }
            Err(e) => {
                tracing::warn!(error = %e.one_line(), "oidc credential unavailable");
                flight.finish(Some(e.clone()));
                Err(e)
            }
        }
    }

    /// A valid `id-token` (and the refresh token to keep): the current one, one found in the kubeconfig
    /// file, or a refreshed one.
    async fn obtain(&self) -> Result<(SecretString, Option<SecretString>), CredentialError> {
        let (id_token, mut refresh_token) = {
            let s = self.lock();
            (s.id_token.clone(), s.refresh_token.clone())
        };
        if let Some(t) = &id_token {
            // client-go: an id-token that is not a JWT is an error, not a reason to refresh.
            if expiry(t.expose_secret()).is_none() {
                return Err(self.error("id-token is not a valid JWT"));
            }
        }
        if let Some((path, user)) = &self.persist {
            if let Some(cfg) = read_provider_config(path, user) {
                let file_id = cfg.get("id-token").filter(|t| !t.is_empty());
                if let Some(t) = file_id {
                    if Some(t.as_str()) != id_token.as_ref().map(|s| s.expose_secret())
                        && valid_header(t).is_some()
                    {
                        tracing::info!(path = %path.display(), "oidc: using the id-token another client refreshed into the kubeconfig");
                        let rt = cfg
                            .get("refresh-token")
                            .filter(|t| !t.is_empty())
                            .map(|t| SecretString::from(t.clone()));
                        return Ok((SecretString::from(t.clone()), rt));
                    }
                }
                if let Some(rt) = cfg.get("refresh-token").filter(|t| !t.is_empty()) {
                    refresh_token = Some(SecretString::from(rt.clone()));
                }
            }
        }
        let refresh_token = refresh_token.ok_or_else(|| {
            self.error("No valid id-token, and cannot refresh without refresh-token")
        })?;
        let endpoint = self.token_endpoint().await?;
        let tokens = self.refresh_grant(&endpoint, &refresh_token).await;
        // ops hook (observe): refresh counters, and /readyz fails while the refresh fails.
        crate::telemetry::hooks::credential_refreshed(tokens.is_ok());
        let tokens = tokens?;
        let id_token = tokens.id_token.filter(|t| !t.is_empty()).ok_or_else(|| {
            self.error("token response did not contain an id_token, either the scope \"openid\" wasn't requested upon login, or the provider doesn't support id_tokens as part of the refresh response")
        })?;
        let rotated = tokens
            .refresh_token
            .filter(|t| !t.is_empty() && t != refresh_token.expose_secret());
        if let Some((path, user)) = &self.persist {
            match persist(path, user, &id_token, rotated.as_deref()).await {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "oidc: refreshed the id-token and wrote it back to the kubeconfig")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "oidc: refreshed the id-token but could not persist new tokens; using them in memory")
                }
            }
        }
        Ok((
            SecretString::from(id_token),
            Some(SecretString::from(
                rotated.unwrap_or_else(|| refresh_token.expose_secret().to_owned()),
            )),
        ))
    }

    /// OIDC discovery: the issuer's `token_endpoint`.
    async fn token_endpoint(&self) -> Result<String, CredentialError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let req = Request::get(&url)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.error(format!("bad discovery URL {url}: {e}")))?;
        let (status, body) = self.send(req).await?;
        if status != StatusCode::OK {
            return Err(self.error(format!(
                "oidc: failed to query metadata endpoint {status}: {:?}",
                excerpt(&body)
            )));
        }
        #[derive(Deserialize)]
        struct Metadata {
            token_endpoint: Option<String>,
        }
        let meta: Metadata = serde_json::from_slice(&body).map_err(|e| {
            self.error(format!(
                "oidc: failed to decode provider discovery object: {e}"
            ))
        })?;
        meta.token_endpoint
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.error("oidc: discovery object doesn't contain a token_endpoint"))
    }

    /// The OAuth2 refresh-token grant. Like Go's oauth2 `AuthStyleAutoDetect`: client credentials in a
    /// basic-auth header first, then, if that fails, in the form.
    async fn refresh_grant(
        &self,
        endpoint: &str,
        refresh_token: &SecretString,
    ) -> Result<TokenResponse, CredentialError> {
        let form = |in_params: bool| {
            let mut body = format!(
                "grant_type=refresh_token&refresh_token={}",
                utf8_percent_encode(refresh_token.expose_secret(), FORM)
            );
            if in_params {
                body.push_str(&format!(
                    "&client_id={}",
                    utf8_percent_encode(&self.client_id, FORM)
                ));
                if !self.client_secret.expose_secret().is_empty() {
                    body.push_str(&format!(
                        "&client_secret={}",
                        utf8_percent_encode(self.client_secret.expose_secret(), FORM)
                    ));
                }
            }
            body
        };
        let mut first_error = None;
        for in_params in [false, true] {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(endpoint)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::ACCEPT, "application/json");
            if !in_params {
                let v = basic_auth(
                    &utf8_percent_encode(&self.client_id, FORM).to_string(),
                    &utf8_percent_encode(self.client_secret.expose_secret(), FORM).to_string(),
                )
                .ok_or_else(|| self.error("client-id or client-secret cannot be sent"))?;
                req = req.header(header::AUTHORIZATION, v);
            }
            let req = req
                .body(Full::new(Bytes::from(form(in_params))))
                .map_err(|e| self.error(format!("bad token endpoint {endpoint}: {e}")))?;
            let attempt = match self.send(req).await {
                Ok((status, body)) if status.is_success() => {
                    serde_json::from_slice::<TokenResponse>(&body).map_err(|e| {
                        self.error(format!(
                            "failed to refresh token: cannot decode the token response: {}",
                            e.classify_str()
                        ))
                    })
                }
                Ok((status, body)) => Err(self.error(format!(
                    "failed to refresh token: {}",
                    oauth_error(status, &body)
                ))),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(t) => return Ok(t),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.expect("two attempts were made"))
    }

    /// Sends one request to the identity provider, through the environment's proxy if it applies.
    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), CredentialError> {
        let url = req.uri().to_string();
        let route = Route::select(None, &self.proxy_env, req.uri())
            .map_err(|e| self.error(e.to_string()))?;
        let config = || {
            ClientConfig::builder_with_provider(tls::provider())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default protocol versions")
                .with_root_certificates(self.idp_roots.clone())
                .with_no_client_auth()
        };
        let proxy_tls =
            matches!(&route, Route::Connect { proxy, .. } if proxy.scheme_str() == Some("https"))
                .then(|| {
                    HttpsConnectorBuilder::new()
                        .with_tls_config(config())
                        .https_or_http()
                        .enable_http1()
                        .wrap_connector(http_connector(None))
                });
        let dial = EgressConnector::new(Arc::new(route), http_connector(None), proxy_tls);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(config())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(dial);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let exchange = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| self.error(format!("{url}: {}", crate::base::error::chain(&e))))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_IDP_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.error(format!("{url}: reading the response: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(OIDC_HTTP_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                self.error(format!(
                    "{url}: no answer within {}s",
                    OIDC_HTTP_TIMEOUT.as_secs()
                ))
            })?
    }
}

trait ClassifyStr {
    fn classify_str(&self) -> &'static str;
}

impl ClassifyStr for serde_json::Error {
    /// A serde error without the quoted value (which could be a token).
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected field type",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    refresh_token: Option<String>,
}

/// An OAuth2 error answer as Go's oauth2 renders it: `oauth2: "invalid_grant" "description"`.
fn oauth_error(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct OAuthError {
        error: Option<String>,
        error_description: Option<String>,
    }
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(OAuthError {
            error: Some(code),
            error_description,
        }) => {
            let mut s = format!("oauth2: {:?}", excerpt(code.as_bytes()));
            if let Some(d) = error_description {
                s.push_str(&format!(" {:?}", excerpt(d.as_bytes())));
            }
            s
        }
        _ => format!("oauth2: cannot fetch token: {status}"),
    }
}

/// The first 80 characters of an answer, as client-go quotes them.
fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(80).collect();
    if s.chars().count() > 80 {
        out.push_str("...");
    }
    out
}

fn idp_roots(ca: Option<&PemSource>) -> Result<Arc<RootCertStore>, CredentialError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(source) => {
            let certs = tls::parse_certs("idp-certificate-authority", source)
                .map_err(|e| CredentialError::Config(format!("oidc: {e}")))?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    CredentialError::Config(format!(
                        "oidc: idp-certificate-authority {}: {e}",
                        source.describe()
                    ))
                })?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(Arc::new(roots))
}

/// The `exp` claim of a JWT; `None` when `token` is not a JWT. A missing `exp` is the epoch (expired),
/// as in client-go.
fn expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(Deserialize)]
    struct Claims {
        exp: Option<serde_json::Number>,
    }
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    let secs = match claims.exp {
        None => 0,
        Some(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .unwrap_or(0),
    };
    Some(if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    })
}

/// The header for `token` and its expiry, when it is a JWT valid beyond the leeway.
fn valid_header(token: &str) -> Option<(HeaderValue, SystemTime)> {
    let exp = expiry(token)?;
    if SystemTime::now() + OIDC_EXPIRY_LEEWAY >= exp {
        return None;
    }
    Some((bearer(token).ok()?, exp))
}

/// The `auth-provider.config` of `user` in the kubeconfig `path`, if it can be read.
fn read_provider_config(path: &Path, user: &str) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: serde_json::Value = serde_saphyr::from_str(&text).ok()?;
    let config = provider_config(&doc, user)?;
    Some(
        config
            .as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect(),
    )
}

fn provider_config<'a>(doc: &'a serde_json::Value, user: &str) -> Option<&'a serde_json::Value> {
    doc.get("users")?
        .as_array()?
        .iter()
        .find(|u| u.get("name").and_then(|n| n.as_str()) == Some(user))?
        .get("user")?
        .get("auth-provider")?
        .get("config")
}

/// How long to wait for another writer's `<kubeconfig>.lock`.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Writes the new tokens into `user`'s `auth-provider.config` in the kubeconfig `path`, holding
/// `<path>.lock` like client-go's `clientcmd` (`O_CREATE|O_EXCL`). The file is rewritten in place, so
/// its permissions, owner and any symlink pointing at it are kept; comments and key order are not (kubectl
/// rewrites the file the same way).
async fn persist(
    path: &Path,
    user: &str,
    id_token: &str,
    refresh_token: Option<&str>,
) -> Result<(), String> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock_path)
        {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "{} is held by another writer (remove it if no kubectl is running)",
                        lock_path.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("cannot create {}: {e}", lock_path.display())),
        }
    }
    let result = rewrite(path, user, id_token, refresh_token);
    let _ = std::fs::remove_file(&lock_path);
    result
}

fn rewrite(
    path: &Path,
    user: &str,
    id_token: &str,
    refresh_token: Option<&str>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut doc: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|_| "the file is not a single YAML document kproxy can rewrite".to_owned())?;
    let config = doc
        .get_mut("users")
        .and_then(|u| u.as_array_mut())
        .and_then(|users| {
            users
                .iter_mut()
                .find(|u| u.get("name").and_then(|n| n.as_str()) == Some(user))
        })
        .and_then(|u| u.get_mut("user"))
        .and_then(|u| u.get_mut("auth-provider"))
        .and_then(|p| p.as_object_mut())
        .map(|p| {
            p.entry("config")
                .or_insert_with(|| serde_json::Value::Object(Default::default()))
        })
        .and_then(|c| c.as_object_mut())
        .ok_or_else(|| format!("user {user:?} with an auth-provider is no longer in the file"))?;
    config.insert("id-token".into(), id_token.into());
    if let Some(rt) = refresh_token {
        config.insert("refresh-token".into(), rt.into());
    }
    let yaml = serde_saphyr::to_string(&doc).map_err(|e| e.to_string())?;
    std::fs::write(path, yaml).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: i64) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b(r#"{"alg":"none"}"#),
            b(&format!(r#"{{"exp":{exp},"sub":"x"}}"#))
        )
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn jwt_expiry_with_leeway() {
        assert!(valid_header(&jwt(now() + 3600)).is_some());
        assert!(valid_header(&jwt(now() + 5)).is_none(), "inside the leeway");
        assert!(valid_header(&jwt(now() - 5)).is_none());
        assert!(expiry("not-a-jwt").is_none());
        assert!(expiry("a.b.c.d").is_none());
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let float = format!("x.{}.y", b(&format!(r#"{{"exp":{}.5}}"#, now() + 3600)));
        assert!(valid_header(&float).is_some());
        let no_exp = format!("x.{}.y", b("{}"));
        assert_eq!(expiry(&no_exp), Some(SystemTime::UNIX_EPOCH));
    }

    #[test]
    fn rewrite_updates_only_the_named_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nusers:\n- name: other\n  user:\n    token: \"123\"\n- name: me\n  user:\n    auth-provider:\n      name: oidc\n      config:\n        client-id: kubectl\n        id-token: old\n        refresh-token: r1\n",
        )
        .unwrap();
        rewrite(&path, "me", "new-id", Some("r2")).unwrap();
        let cfg = read_provider_config(&path, "me").unwrap();
        assert_eq!(cfg["id-token"], "new-id");
        assert_eq!(cfg["refresh-token"], "r2");
        assert_eq!(cfg["client-id"], "kubectl");
        let text = std::fs::read_to_string(&path).unwrap();
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let other = kc.auth_infos.iter().find(|u| u.name == "other").unwrap();
        assert_eq!(
            other
                .auth_info
                .as_ref()
                .unwrap()
                .token
                .as_ref()
                .unwrap()
                .expose_secret(),
            "123",
            "a numeric-looking string stays a string: {text}"
        );
        assert!(rewrite(&path, "nobody", "x", None).is_err());
    }

    #[test]
    fn oauth_errors_are_rendered_like_go() {
        assert_eq!(
            oauth_error(
                StatusCode::BAD_REQUEST,
                br#"{"error":"invalid_grant","error_description":"expired"}"#
            ),
            r#"oauth2: "invalid_grant" "expired""#
        );
        assert_eq!(
            oauth_error(StatusCode::BAD_GATEWAY, b"<html>"),
            "oauth2: cannot fetch token: 502 Bad Gateway"
        );
    }
}
