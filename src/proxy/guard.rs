//! Who may use the proxy (issue 13), checked before kubectl's filter:
//!
//! - **Origin** (on by default; `--allow-any-origin` turns it off, as kubectl proxy has no such check):
//!   browsers mark every request a page makes with `Origin` (always on WebSockets, which CORS does not
//!   protect) and `Sec-Fetch-Site`. A request whose `Origin` is neither kproxy's own (`http://` plus the
//!   `Host` it was reached by) nor in `--cors-allowed-origin`, or that says `Sec-Fetch-Site: cross-site`
//!   without an allowed `Origin`, is refused with a 403. Clients that are not browsers (kubectl, curl,
//!   client libraries) send neither header and are not affected.
//! - **CORS** (opt-in, `--cors-allowed-origin`, exact origins only): kproxy answers the preflights of
//!   those origins itself, adds `Access-Control-Allow-Origin` to their answers (never
//!   `Access-Control-Allow-Credentials`), and drops every `Access-Control-*` header the API server sent on
//!   any request that carried an `Origin`, so the API server's own CORS settings never widen kproxy's.
//! - **Inbound token** (opt-in, `--auth-token-file`): `Authorization: Bearer <token>` or the WebSocket
//!   subprotocol `base64url.bearer.authorization.k8s.io.<base64url(token)>`, as the API server accepts it
//!   (k8s.io/apiserver `pkg/authentication/request/websocket/protocol.go`). Compared in constant time and
//!   removed before the request goes upstream, where kproxy's own credential is added as usual.
//! - **Read-only** (opt-in, `--read-only`): reads and watches pass; upgrades, proxy subresources, client
//!   impersonation and writes do not, except the access-review APIs and writes that are dry runs.
//!
//! The checks allocate nothing when the headers they look at are absent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::kube::tls::TLS_FILE_CHECK_PERIOD;
use crate::telemetry::metrics::{Metrics, RefusalReason};
use crate::wire::body::Body;

const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
const SEC_WEBSOCKET_PROTOCOL: HeaderName = HeaderName::from_static("sec-websocket-protocol");
/// The WebSocket subprotocol prefix that carries a bearer token, as the API server reads it.
pub const BEARER_PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// The most of a refused `Origin` that is repeated in the answer and the log (real origins are short).
const MAX_ECHOED_ORIGIN: usize = 256;
/// How long a browser may cache kproxy's answer to a preflight.
const PREFLIGHT_MAX_AGE: HeaderValue = HeaderValue::from_static("600");
/// The methods a CORS preflight is told it may use.
const CORS_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE");

/// The guard's settings, validated at startup.
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    /// `--allow-any-origin`: no Origin / `Sec-Fetch-Site` check (kubectl proxy's behaviour).
    pub allow_any_origin: bool,
    /// `--cors-allowed-origin`, each normalised by [`parse_cors_origin`].
    pub cors_origins: Vec<String>,
    /// `--auth-token-file`.
    pub token: Option<InboundToken>,
    /// `--read-only`.
    pub read_only: bool,
}

/// The token clients must present (`--auth-token-file`). Never printed: its `Debug` is redacted and it
/// appears in no message. A file the user gave is checked for a new token at most once a second on the
/// request path (a Secret volume rotates it in place); a file that cannot be read or holds no valid
/// token keeps the last good one, with one warning, as client-go does with its token files.
#[derive(Clone)]
pub struct InboundToken {
    /// Shared by every configuration built from the same flags, so a reload keeps what was re-read.
    state: Arc<Mutex<TokenState>>,
    /// The file it came from (named in messages), removed at exit when kproxy created it.
    file: Arc<TokenFile>,
}

#[derive(Debug)]
struct TokenState {
    secret: Box<[u8]>,
    /// The file's bytes when last read, so that an unchanged file is not parsed again.
    seen: Vec<u8>,
    /// When the file is next read (never, for a token kproxy generated).
    due: Option<Instant>,
    period: Duration,
    /// The current unusable-file streak was logged already.
    logged: bool,
}

impl std::fmt::Debug for InboundToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundToken")
            .field("file", &self.file.path)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug)]
struct TokenFile {
    path: std::path::PathBuf,
    /// Created by kproxy (`auto`), so removed when the last configuration holding it is dropped.
    owned: bool,
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The token in a `--auth-token-file`'s bytes: surrounding whitespace trimmed, not empty, printable.
fn parse_token<'a>(path: &std::path::Path, bytes: &'a [u8]) -> Result<&'a [u8], String> {
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(format!(
            "--auth-token-file={}: the file is empty: put a token in it, or use --auth-token-file=auto",
            path.display()
        ));
    }
    if token.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "--auth-token-file={}: the token must be printable ASCII without spaces (it travels in an HTTP header)",
            path.display()
        ));
    }
    Ok(token)
}

impl InboundToken {
    /// Reads the token from `path` (surrounding whitespace trimmed; it must not be empty).
    pub fn from_file(path: &std::path::Path) -> Result<InboundToken, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("--auth-token-file={}: {e}", path.display()))?;
        let token = parse_token(path, &bytes)?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "--auth-token-file={} can be read by other users (mode {:o}): chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
        }
        Ok(InboundToken {
            state: Arc::new(Mutex::new(TokenState {
                secret: Box::from(token),
                seen: bytes.clone(),
                due: Some(Instant::now() + TLS_FILE_CHECK_PERIOD),
                period: TLS_FILE_CHECK_PERIOD,
                logged: false,
            })),
            file: Arc::new(TokenFile {
                path: path.to_owned(),
                owned: false,
            }),
        })
    }

    /// `auto`: 32 random bytes (from `/dev/urandom`), hex-encoded, written to a new file readable by the
    /// owner only (mode 0600, created exclusively) in `dir`. The file is removed when kproxy exits.
    pub fn generate(dir: &std::path::Path) -> Result<InboundToken, String> {
        use std::io::{Read as _, Write as _};
        use std::os::unix::fs::OpenOptionsExt as _;
        let err = |what: &str, e: std::io::Error| format!("--auth-token-file=auto: {what}: {e}");
        let mut random = [0u8; 40];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(|e| err("reading /dev/urandom", e))?;
        let mut token = String::with_capacity(64);
        for b in &random[..32] {
            token.push(char::from(HEX[usize::from(b >> 4)]));
            token.push(char::from(HEX[usize::from(b & 15)]));
        }
        let suffix: String = random[32..]
            .iter()
            .map(|b| char::from(HEX[usize::from(b & 15)]))
            .collect();
        let path = dir.join(format!("kproxy-{}-{suffix}.token", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err(&format!("creating {}", path.display()), e))?;
        let file_guard = TokenFile { path, owned: true };
        file.write_all(token.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .map_err(|e| err(&format!("writing {}", file_guard.path.display()), e))?;
        Ok(InboundToken {
            state: Arc::new(Mutex::new(TokenState {
                secret: Box::from(token.as_bytes()),
                seen: Vec::new(),
                due: None,
                period: TLS_FILE_CHECK_PERIOD,
                logged: false,
            })),
            file: Arc::new(file_guard),
        })
    }

    /// The file the token is in.
    pub fn path(&self) -> &std::path::Path {
        &self.file.path
    }

    /// Sets how often the file is checked: `Timing::file_check_period`, the period of the TLS files
    /// ([`TLS_FILE_CHECK_PERIOD`] outside tests), for the same reason: an idle kproxy does no work,
    /// and the first request after a rotation already sees the new token.
    pub(crate) fn set_check_period(&self, period: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(due) = &mut state.due {
            *due = Instant::now() + period;
        }
        state.period = period;
    }

    /// Whether `candidate` is the token in force (the file re-read first when due), in time
    /// independent of where they differ. The lock is held for the comparison: no copy of the secret.
    fn matches(&self, candidate: &[u8]) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if state.due.is_some_and(|due| now >= due) {
            state.due = Some(now + state.period);
            let path = &self.file.path;
            let read = std::fs::read(path)
                .map_err(|e| format!("--auth-token-file={}: {e}", path.display()));
            match read {
                Ok(bytes) if bytes == state.seen => state.logged = false,
                Ok(bytes) => match parse_token(path, &bytes) {
                    Ok(token) => {
                        state.secret = Box::from(token);
                        state.seen = bytes;
                        state.logged = false;
                        tracing::info!(
                            "--auth-token-file={}: a new token is in force",
                            path.display()
                        );
                    }
                    Err(why) => Self::keep(&mut state, &why),
                },
                Err(why) => Self::keep(&mut state, &why),
            }
        }
        constant_time_eq(&state.secret, candidate)
    }

    /// The file is unusable (being rewritten, or removed): the last good token stays, said once.
    fn keep(state: &mut TokenState, why: &str) {
        if !state.logged {
            state.logged = true;
            tracing::warn!("{why}; the token read before stays in force");
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Compares two byte strings without stopping at the first difference (the length is not secret: a
/// generated token always has 64 characters).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Checks a `--cors-allowed-origin` value and returns it as browsers send it: `scheme://host[:port]`,
/// lower case, without a default port. Patterns are refused: no `*`, no regex, no path (a wildcard
/// origin list is how CVE-2022-1996 happened).
pub fn parse_cors_origin(value: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!("--cors-allowed-origin={value:?}: {why}; give one exact origin per flag, e.g. --cors-allowed-origin=http://localhost:3000")
    };
    if value.contains('*') {
        return Err(bad("wildcards are not accepted"));
    }
    let lower = value.to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or_else(|| bad("not an origin (scheme://host[:port])"))?;
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return Err(bad("the scheme must be http or https")),
    };
    if rest.is_empty()
        || rest.bytes().any(|b| {
            matches!(
                b,
                b'/' | b'?' | b'#' | b'@' | b'\\' | b'^' | b'$' | b'|' | b'(' | b')' | b'+'
            ) || !b.is_ascii_graphic()
        })
    {
        return Err(bad(
            "an origin has no path, query, user or pattern characters",
        ));
    }
    let authority: http::uri::Authority = rest.parse().map_err(|_| bad("invalid host or port"))?;
    if authority.host().is_empty() {
        return Err(bad("the host is empty"));
    }
    let host_port = authority
        .as_str()
        .strip_suffix(default_port)
        .unwrap_or(authority.as_str());
    Ok(format!("{scheme}://{host_port}"))
}

/// What the origin check decided about a request it let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No `Origin`: nothing to add or remove.
    None,
    /// An `Origin` that is not a CORS origin (kproxy's own, or any with `--allow-any-origin`): the API
    /// server's `Access-Control-*` headers are removed.
    Strip,
    /// An origin from `--cors-allowed-origin`: the API server's headers are removed and kproxy's added.
    Allow(HeaderValue),
}

/// How a request passed the inbound-token check.
#[derive(Debug)]
pub enum Accepted {
    /// No token is required.
    Open,
    /// The token came as `Authorization`, which must go.
    Authorization,
    /// The token came as a WebSocket subprotocol: `Sec-WebSocket-Protocol` becomes this value.
    Protocol(HeaderValue),
}

impl Accepted {
    /// Removes the token from the request headers.
    pub fn strip(self, headers: &mut HeaderMap) {
        match self {
            Accepted::Open => {}
            Accepted::Authorization => {
                headers.remove(header::AUTHORIZATION);
            }
            Accepted::Protocol(rest) => {
                headers.insert(SEC_WEBSOCKET_PROTOCOL, rest);
            }
        }
    }
}

/// What [`Guard::screen`] decided.
pub enum Screened {
    /// Route the request; decorate the answer as [`Cors`] says.
    Pass(Cors),
    /// A CORS preflight, answered here.
    Preflight(Response<Body>),
}

/// Why the guard refused a request; its `Display` is the message of the `Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An `Origin` that is not allowed.
    #[error("kproxy refused a request from the web page at origin {origin:?}: only pages served by kproxy itself ({own}) may use it from a browser. To let that page use the API, start kproxy with --cors-allowed-origin={origin} (or --allow-any-origin to turn this check off, as kubectl proxy has none)")]
    Origin {
        /// The `Origin` as sent (lossy UTF-8).
        origin: String,
        /// kproxy's own origin for this request.
        own: String,
    },
    /// `Sec-Fetch-Site: cross-site` without an allowed origin.
    #[error("kproxy refused a cross-site browser request (Sec-Fetch-Site: cross-site): a page on another site made it. Open kproxy's URL directly, list the page's origin in --cors-allowed-origin, or start kproxy with --allow-any-origin to turn this check off")]
    CrossSite,
    /// No inbound token.
    #[error("kproxy requires its token (--auth-token-file={file}): send \"Authorization: Bearer <token>\", or on a WebSocket the subprotocol base64url.bearer.authorization.k8s.io.<token in unpadded base64url>")]
    NoToken {
        /// The token file.
        file: String,
    },
    /// A token that is not kproxy's.
    #[error("kproxy rejected the token sent: it is not the one in --auth-token-file={file}")]
    WrongToken {
        /// The token file.
        file: String,
    },
    /// The token subprotocol is malformed, repeated or alone.
    #[error("kproxy rejected the WebSocket token subprotocol: {0}")]
    BadTokenProtocol(&'static str),
    /// A rule of `--read-only`.
    #[error("kproxy --read-only refused {method} {path}: {rule}")]
    ReadOnly {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// Which rule.
        rule: ReadOnlyRule,
    },
}

/// The rules of `--read-only` that refuse requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadOnlyRule {
    /// A write without `dryRun=All`.
    #[error("only reads (GET, HEAD, OPTIONS), the access-review APIs (self subject access/rules reviews, self subject reviews, subject access reviews) and dry runs (?dryRun=All, every dryRun value All; a DELETE also without a body) may pass; restart kproxy without --read-only to write")]
    Write,
    /// A protocol upgrade.
    #[error("upgrades (exec, attach, port-forward, cp, WebSocket watches) are refused in read-only mode; watch over plain HTTP instead (?watch=true)")]
    Upgrade,
    /// A proxy subresource.
    #[error("the services/pods/nodes proxy subresources reach into workloads, whose answers to any method may change state, so they count as writes in read-only mode")]
    Proxy,
    /// `serviceaccounts/*/token`: even a dry run may return a token.
    #[error("TokenRequests (serviceaccounts/NAME/token) are refused in read-only mode, dry run or not: they hand out credentials")]
    TokenRequest,
    /// A client `Impersonate-*` header.
    #[error("client Impersonate-* headers are refused in read-only mode (impersonation could reach rights the proxy user does not have); kubeconfig --as still applies")]
    Impersonate,
}

impl Refusal {
    /// 401 for a missing or wrong token, else 403.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NoToken { .. } | Refusal::WrongToken { .. } | Refusal::BadTokenProtocol(_) => {
                StatusCode::UNAUTHORIZED
            }
            _ => StatusCode::FORBIDDEN,
        }
    }

    /// The metrics label.
    pub fn reason(&self) -> RefusalReason {
        match self {
            Refusal::Origin { .. } => RefusalReason::Origin,
            Refusal::CrossSite => RefusalReason::CrossSite,
            Refusal::NoToken { .. } | Refusal::WrongToken { .. } | Refusal::BadTokenProtocol(_) => {
                RefusalReason::Token
            }
            Refusal::ReadOnly { rule, .. } => match rule {
                ReadOnlyRule::Write | ReadOnlyRule::TokenRequest => RefusalReason::ReadOnlyWrite,
                ReadOnlyRule::Upgrade => RefusalReason::ReadOnlyUpgrade,
                ReadOnlyRule::Proxy => RefusalReason::ReadOnlyProxy,
                ReadOnlyRule::Impersonate => RefusalReason::ReadOnlyImpersonate,
            },
        }
    }
}

/// The checks, built once per router from [`GuardConfig`].
#[derive(Debug)]
pub struct Guard {
    allow_any_origin: bool,
    cors_origins: Box<[String]>,
    token: Option<InboundToken>,
    read_only: bool,
    metrics: Arc<Metrics>,
}

impl Guard {
    /// A guard counting its refusals in `metrics`.
    pub fn new(config: &GuardConfig, metrics: Arc<Metrics>, token_check_period: Duration) -> Guard {
        if let Some(token) = &config.token {
            token.set_check_period(token_check_period);
        }
        Guard {
            allow_any_origin: config.allow_any_origin,
            cors_origins: config.cors_origins.clone().into_boxed_slice(),
            token: config.token.clone(),
            read_only: config.read_only,
            metrics,
        }
    }

    fn refuse(&self, refusal: Refusal) -> Refusal {
        self.metrics.refused(refusal.reason());
        tracing::info!("{refusal}");
        refusal
    }

    /// The origin check and CORS preflights, for every request (static files included).
    pub fn screen<B>(&self, req: &Request<B>) -> Result<Screened, Refusal> {
        let headers = req.headers();
        let Some(origin) = headers.get(header::ORIGIN) else {
            if !self.allow_any_origin
                && headers
                    .get(SEC_FETCH_SITE)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
            {
                return Err(self.refuse(Refusal::CrossSite));
            }
            return Ok(Screened::Pass(Cors::None));
        };
        if self
            .cors_origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
        {
            if req.method() == Method::OPTIONS
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            {
                return Ok(Screened::Preflight(preflight(origin, headers)));
            }
            return Ok(Screened::Pass(Cors::Allow(origin.clone())));
        }
        if self.allow_any_origin {
            return Ok(Screened::Pass(Cors::Strip));
        }
        let host = request_host(req);
        let cross_site = headers
            .get(SEC_FETCH_SITE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        if is_own_origin(origin.as_bytes(), host.as_bytes()) {
            if cross_site {
                return Err(self.refuse(Refusal::CrossSite));
            }
            return Ok(Screened::Pass(Cors::Strip));
        }
        Err(self.refuse(Refusal::Origin {
            // Any page chooses this text: bounded, so a huge header cannot make a huge answer or log line.
            origin: String::from_utf8_lossy(
                &origin.as_bytes()[..origin.len().min(MAX_ECHOED_ORIGIN)],
            )
            .into_owned(),
            own: format!("http://{host}"),
        }))
    }

    /// The inbound token, on requests to the API: checks it and says how to remove it from the
    /// headers ([`Accepted::strip`]), which the caller does once it no longer borrows the request.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Accepted, Refusal> {
        let Some(token) = &self.token else {
            return Ok(Accepted::Open);
        };
        let file = || token.path().display().to_string();
        // The WebSocket subprotocol first: a browser cannot set `Authorization` on a WebSocket, and a
        // client that uses the subprotocol for kproxy may still send its own `Authorization` upstream.
        if headers.contains_key(&SEC_WEBSOCKET_PROTOCOL) {
            match protocol_token(headers) {
                Ok(None) => {}
                Ok(Some((candidate, rest))) if token.matches(&candidate) => {
                    return Ok(Accepted::Protocol(rest))
                }
                Ok(Some(_)) => return Err(self.refuse(Refusal::WrongToken { file: file() })),
                Err(why) => return Err(self.refuse(Refusal::BadTokenProtocol(why))),
            }
        }
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(self.refuse(Refusal::NoToken { file: file() }));
        };
        let bytes = value.as_bytes();
        let candidate = match bytes.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => bytes[7..].trim_ascii(),
            _ => return Err(self.refuse(Refusal::NoToken { file: file() })),
        };
        if !token.matches(candidate) {
            return Err(self.refuse(Refusal::WrongToken { file: file() }));
        }
        Ok(Accepted::Authorization)
    }

    /// `--read-only`, on requests to the API. `path` is the decoded, cleaned path the filter sees.
    pub fn check_read_only<B: http_body::Body>(
        &self,
        req: &Request<B>,
        path: &str,
    ) -> Result<(), Refusal> {
        if !self.read_only {
            return Ok(());
        }
        let rule = read_only_rule(req, path);
        match rule {
            None => Ok(()),
            Some(rule) => Err(self.refuse(Refusal::ReadOnly {
                method: req.method().to_string(),
                path: path.to_owned(),
                rule,
            })),
        }
    }
}

/// The `Host` the request was addressed to: the absolute-form authority, else the `Host` header.
pub(super) fn request_host<B>(req: &Request<B>) -> &str {
    match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    }
}

/// Whether `origin` is `http://` plus `host` (ASCII case ignored; port 80 may be implied on either).
fn is_own_origin(origin: &[u8], host: &[u8]) -> bool {
    let Some(rest) = origin
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case(b"http://"))
        .map(|_| &origin[7..])
    else {
        return false;
    };
    if host.is_empty() {
        return false;
    }
    let implied = |s: &'_ [u8]| -> usize { s.len() - if s.ends_with(b":80") { 3 } else { 0 } };
    rest.eq_ignore_ascii_case(host)
        || rest[..implied(rest)].eq_ignore_ascii_case(&host[..implied(host)])
}

/// kproxy's answer to a CORS preflight from an allowed origin.
fn preflight(origin: &HeaderValue, headers: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let out = resp.headers_mut();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, CORS_METHODS);
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE);
    out.insert(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    );
    resp
}

/// Applies [`Cors`] to an answer: removes the API server's `Access-Control-*` headers when the request
/// had an `Origin`, and for an allowed CORS origin adds `Access-Control-Allow-Origin` and `Vary: Origin`.
pub fn decorate(headers: &mut HeaderMap, cors: Cors) {
    if cors == Cors::None {
        return;
    }
    let theirs: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in theirs {
        headers.remove(name);
    }
    if let Cors::Allow(origin) = cors {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Finds the bearer-token subprotocol in `Sec-WebSocket-Protocol`: the decoded token and the header's
/// value without it. As the API server: at most one token protocol, and at least one other protocol
/// must remain (the server has to echo one back).
fn protocol_token(headers: &HeaderMap) -> Result<Option<(Vec<u8>, HeaderValue)>, &'static str> {
    let mut token = None;
    let mut rest = String::new();
    for value in headers.get_all(&SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else {
            return Err("Sec-WebSocket-Protocol is not text");
        };
        for protocol in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match protocol.strip_prefix(BEARER_PROTOCOL_PREFIX) {
                Some(encoded) => {
                    if token.is_some() {
                        return Err("more than one token subprotocol");
                    }
                    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(encoded)
                        .map_err(|_| "the token is not unpadded base64url")?;
                    token = Some(decoded);
                }
                None => {
                    if !rest.is_empty() {
                        rest.push_str(", ");
                    }
                    rest.push_str(protocol);
                }
            }
        }
    }
    let Some(token) = token else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Err("it needs another subprotocol beside it for the server to accept");
    }
    let rest = HeaderValue::try_from(rest).map_err(|_| "invalid subprotocols")?;
    Ok(Some((token, rest)))
}

/// The POST endpoints `--read-only` lets through: the access-review APIs. They answer a question about
/// permissions and store nothing. Matched exactly (after the API prefix; no trailing slash).
pub const REVIEW_PATHS: [&str; 4] = [
    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
    "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
    "/apis/authentication.k8s.io/v1/selfsubjectreviews",
];

/// Which `--read-only` rule refuses a request, if any.
fn read_only_rule<B: http_body::Body>(req: &Request<B>, path: &str) -> Option<ReadOnlyRule> {
    let headers = req.headers();
    if is_upgrade(headers) {
        return Some(ReadOnlyRule::Upgrade);
    }
    if headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
    {
        return Some(ReadOnlyRule::Impersonate);
    }
    if is_proxy_subresource(path) {
        return Some(ReadOnlyRule::Proxy);
    }
    let method = req.method();
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return None;
    }
    if is_token_request(path) {
        return Some(ReadOnlyRule::TokenRequest);
    }
    if method == Method::POST && (REVIEW_PATHS.contains(&path) || is_local_review(path)) {
        return None;
    }
    let writes = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    if writes.contains(method) && all_dry_run(req.uri().query()) {
        // The API server reads a DELETE's options from its body when it has one, and then ignores the
        // query: only a body-less DELETE is sure to be a dry run.
        if method != Method::DELETE || req.body().is_end_stream() {
            return None;
        }
    }
    Some(ReadOnlyRule::Write)
}

/// An upgrade other than an `h2c`-only offer (which kproxy declines and proxies as a plain request).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(|t| t.trim_ascii())
            .any(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"h2c"))
    })
}

/// `/api/v1/namespaces/NS/{services,pods}/NAME/proxy[/...]`, `/api/v1/nodes/NAME/proxy[/...]` and the
/// old `/api/v1/proxy/...` form.
fn is_proxy_subresource(path: &str) -> bool {
    let mut seg = path.strip_prefix('/').unwrap_or(path).split('/');
    if seg.next() != Some("api") || seg.next().is_none() {
        return false;
    }
    match seg.next() {
        Some("proxy") => true,
        Some("nodes") => seg.nth(1) == Some("proxy"),
        Some("namespaces") => {
            let _namespace = seg.next();
            matches!(seg.next(), Some("services" | "pods")) && seg.nth(1) == Some("proxy")
        }
        _ => false,
    }
}

/// `/api/v1/namespaces/NS/serviceaccounts/NAME/token`.
fn is_token_request(path: &str) -> bool {
    let seg: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        seg.as_slice(),
        ["", "api", _, "namespaces", _, "serviceaccounts", _, "token"]
    )
}

/// `/apis/authorization.k8s.io/v1/namespaces/NS/localsubjectaccessreviews`.
fn is_local_review(path: &str) -> bool {
    let seg: Vec<&str> = path.split('/').collect();
    matches!(
        seg.as_slice(),
        ["", "apis", "authorization.k8s.io", "v1", "namespaces", ns, "localsubjectaccessreviews"] if !ns.is_empty()
    )
}

/// Whether the query has at least one `dryRun` and every `dryRun` value is exactly `All`. Keys and
/// values are compared as sent: an encoded spelling (`dry%52un`, `%41ll`) is not recognised, which can
/// only refuse a dry run, never pass a write (the API server rejects any dryRun value but `All`).
fn all_dry_run(query: Option<&str>) -> bool {
    let Some(query) = query else { return false };
    let mut seen = false;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "dryRun" {
            if v != "All" {
                return false;
            }
            seen = true;
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_exact() {
        assert_eq!(
            parse_cors_origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(
            parse_cors_origin("HTTPS://UI.Example.com:443").unwrap(),
            "https://ui.example.com"
        );
        assert_eq!(
            parse_cors_origin("http://[::1]:80").unwrap(),
            "http://[::1]"
        );
        for bad in [
            "*",
            "http://*.example.com",
            "https://example.com/",
            "https://example.com/app",
            "example.com",
            "ftp://example.com",
            "https://",
            "null",
            "^https://.*$",
            "https://a.example.com|https://b.example.com",
            "https://user@example.com",
        ] {
            assert!(parse_cors_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_origin() {
        assert!(is_own_origin(b"http://127.0.0.1:8001", b"127.0.0.1:8001"));
        assert!(is_own_origin(b"HTTP://LOCALHOST:8001", b"localhost:8001"));
        assert!(is_own_origin(b"http://localhost", b"localhost:80"));
        assert!(is_own_origin(b"http://localhost:80", b"localhost"));
        assert!(is_own_origin(b"http://[::1]:8001", b"[::1]:8001"));
        assert!(!is_own_origin(b"https://127.0.0.1:8001", b"127.0.0.1:8001"));
        assert!(!is_own_origin(b"http://127.0.0.1:8002", b"127.0.0.1:8001"));
        assert!(!is_own_origin(b"http://127.0.0.1:8001", b""));
        assert!(!is_own_origin(b"null", b"127.0.0.1:8001"));
        assert!(!is_own_origin(b"http://127.0.0.1", b"127.0.0.1:8001"));
    }

    #[test]
    fn proxy_subresources() {
        for p in [
            "/api/v1/namespaces/ns/services/s:80/proxy",
            "/api/v1/namespaces/ns/services/https:s:443/proxy/a/b",
            "/api/v1/namespaces/ns/pods/p/proxy/",
            "/api/v1/nodes/n/proxy/metrics",
            "/api/v1/proxy/namespaces/ns/pods/p",
        ] {
            assert!(is_proxy_subresource(p), "{p}");
        }
        for p in [
            "/api/v1/namespaces/ns/services/s",
            "/api/v1/namespaces/proxy/configmaps/proxy",
            "/api/v1/namespaces/ns/configmaps/proxy",
            "/api/v1/nodes/n",
            "/apis/apps/v1/namespaces/ns/pods/p/proxy",
            "/api",
        ] {
            assert!(!is_proxy_subresource(p), "{p}");
        }
    }

    #[test]
    fn dry_run_queries() {
        assert!(all_dry_run(Some("dryRun=All")));
        assert!(all_dry_run(Some(
            "fieldManager=kubectl&dryRun=All&dryRun=All"
        )));
        assert!(!all_dry_run(None));
        assert!(!all_dry_run(Some("")));
        assert!(!all_dry_run(Some("dryRun=All&dryRun=")));
        assert!(!all_dry_run(Some("dryRun=all")));
        assert!(!all_dry_run(Some("dryRun=%41ll")));
        assert!(!all_dry_run(Some("dryRun=All;")));
        assert!(!all_dry_run(Some("dryrun=All")));
        assert!(!all_dry_run(Some("dryRun")));
    }

    #[test]
    fn review_and_token_paths() {
        assert!(is_local_review(
            "/apis/authorization.k8s.io/v1/namespaces/ns/localsubjectaccessreviews"
        ));
        assert!(!is_local_review(
            "/apis/authorization.k8s.io/v1/namespaces//localsubjectaccessreviews"
        ));
        assert!(is_token_request(
            "/api/v1/namespaces/ns/serviceaccounts/default/token"
        ));
        assert!(!is_token_request(
            "/api/v1/namespaces/ns/serviceaccounts/default"
        ));
    }

    #[test]
    fn token_subprotocol() {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("s3cret");
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::try_from(format!(
                "v5.channel.k8s.io, {BEARER_PROTOCOL_PREFIX}{encoded},v4.channel.k8s.io"
            ))
            .unwrap(),
        );
        let (token, rest) = protocol_token(&h).unwrap().unwrap();
        assert_eq!(token, b"s3cret");
        assert_eq!(rest, "v5.channel.k8s.io, v4.channel.k8s.io");
        let mut alone = HeaderMap::new();
        alone.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::try_from(format!("{BEARER_PROTOCOL_PREFIX}{encoded}")).unwrap(),
        );
        assert!(protocol_token(&alone).is_err());
        let mut plain = HeaderMap::new();
        plain.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io"),
        );
        assert!(protocol_token(&plain).unwrap().is_none());
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
