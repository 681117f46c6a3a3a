//! Exec credential plugins (`users[].user.exec`): `aws eks get-token`, `gke-gcloud-auth-plugin`,
//! `kubelogin` and friends, run the way client-go runs them
//! (`plugin/pkg/client/auth/exec/exec.go`).
//!
//! - Input: kproxy's environment, then the kubeconfig `env` entries, then `KUBERNETES_EXEC_INFO` (later
//!   entries win), with `spec.cluster` when `provideClusterInfo` is set. stderr is inherited, so prompts
//!   and errors reach the user; stdin is passed only when the plugin may be interactive and kproxy's
//!   stdin is a terminal (`interactiveMode`).
//! - Output: an `ExecCredential` (JSON, or YAML as client-go's decoder also accepts) whose `apiVersion`
//!   equals the configured one, with a token, a client certificate and key, or both.
//! - Caching: the result is used until shortly before `expirationTimestamp` (see [`refresh_at`]), or for
//!   the process lifetime without one. A 401 to a request that carried it marks it stale.
//! - One run at a time: concurrent requests that find no usable credential wait for the same run and
//!   share its result, success or failure (client-go serialises runs with a mutex; kproxy also shares a
//!   failure instead of re-running the plugin once per waiting request).
//! - A run that takes longer than the timeout is killed and reported.
//!
//! Error messages name the command, never the plugin's output: a malformed `ExecCredential` is described
//! by position only, because serde's messages quote the offending value, which may be the token.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http::HeaderValue;
use kube::config::{ExecConfig, ExecInteractiveMode};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::auth::credentials::credential::{bearer, Credential, CredentialError, Used};
use crate::base::env::Env;
use crate::base::single_flight::{Begin, SingleFlight, Ticket};
use crate::kube::kubeconfig::{PemSource, ResolvedConfig};
use crate::kube::tls::{self, ClientIdentity};

/// The `ExecCredential` API versions client-go accepts (v1alpha1 was removed).
pub const API_VERSIONS: [&str; 2] = [
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
];

/// How long a plugin may run before it is killed. client-go has no limit, so a hung plugin hangs every
/// request; one minute is far above what token plugins take (about a second) and bounds the damage.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// The limit when the plugin has the terminal: an interactive login (device code, browser, MFA prompt)
/// waits for a person.
pub const EXEC_INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How long before `expirationTimestamp` a credential is renewed, so that no request leaves with a token
/// that expires on the way. client-go uses none; see [`refresh_at`].
pub const EXEC_REFRESH_LEEWAY: Duration = Duration::from_secs(10);

/// The most plugin output kproxy reads (a certificate chain and key are a few KiB).
const MAX_OUTPUT: u64 = 1 << 20;

/// The text client-go prints when the command is missing, before the kubeconfig's `installHint`.
const INSTALL_HINT_HELP: &str = "It looks like you are trying to use a client-go credential plugin that is not installed.\n\nTo learn more about this feature, consult the documentation available at:\n      https://kubernetes.io/docs/reference/access-authn-authz/authentication/#client-go-credential-plugins";

/// The environment exec plugins inherit (client-go passes `os.Environ()`), captured through
/// [`Env::vars`] so tests control it. Its `Debug` shows only the count: values may be secrets.
#[derive(Clone, Default)]
pub struct PluginEnv(Arc<Vec<(OsString, OsString)>>);

impl PluginEnv {
    /// Captures every variable of `env`.
    pub fn capture(env: &dyn Env) -> Self {
        Self(Arc::new(env.vars()))
    }

    /// The variables.
    pub fn vars(&self) -> &[(OsString, OsString)] {
        &self.0
    }
}

impl std::fmt::Debug for PluginEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginEnv({} variables)", self.0.len())
    }
}

/// When a credential expiring at `expiry`, obtained at `obtained`, is renewed: [`EXEC_REFRESH_LEEWAY`]
/// early, but never earlier than half its lifetime, so a plugin that hands out a token with a few seconds
/// left (from its own cache) is not re-run for every request.
pub fn refresh_at(obtained: SystemTime, expiry: SystemTime, leeway: Duration) -> SystemTime {
    let life = expiry.duration_since(obtained).unwrap_or(Duration::ZERO);
    expiry - leeway.min(life / 2)
}

/// A configured plugin and its cached credential.
pub(super) struct ExecAuth {
    plugin: Plugin,
    identity: Arc<ClientIdentity>,
    timeout: Duration,
    state: Mutex<State>,
    /// One run at a time; requests that waited for a run share its outcome.
    run: SingleFlight<CredentialError>,
}

impl std::fmt::Debug for ExecAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecAuth")
            .field("command", &self.plugin.command)
            .finish_non_exhaustive()
    }
}

struct Plugin {
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    base_env: PluginEnv,
    api_version: String,
    mode: ExecInteractiveMode,
    install_hint: Option<String>,
    /// `spec.cluster` of `KUBERNETES_EXEC_INFO`, with `provideClusterInfo`.
    cluster: Option<serde_json::Value>,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// The API server rejected `current`.
    stale: bool,
    /// Bumped when the credential's content changes.
    generation: u64,
}

struct Cached {
    authorization: Option<HeaderValue>,
    refresh_at: Option<SystemTime>,
    generation: u64,
}

impl State {
    fn usable(&self, now: SystemTime) -> Option<Credential> {
        let c = self.current.as_ref()?;
        if self.stale || c.refresh_at.is_some_and(|t| now >= t) {
            return None;
        }
        Some(Credential {
            authorization: c.authorization.clone(),
            used: Used(c.generation),
        })
    }
}

/// What one successful run produced.
struct Output {
    authorization: Option<HeaderValue>,
    cert: Option<Arc<CertifiedKey>>,
    expiry: Option<SystemTime>,
}

impl ExecAuth {
    /// Checks the configuration (client-go fails at startup on a bad `apiVersion` too).
    pub(super) fn new(
        exec: &ExecConfig,
        user: &str,
        cfg: &ResolvedConfig,
        base_env: PluginEnv,
        identity: Arc<ClientIdentity>,
        timeout: Duration,
    ) -> Result<Self, CredentialError> {
        let command = exec.command.clone().unwrap_or_default();
        let api_version = exec.api_version.clone().unwrap_or_default();
        if !API_VERSIONS.contains(&api_version.as_str()) {
            return Err(CredentialError::Config(format!(
                "exec plugin of {user}: invalid apiVersion {api_version:?}: use {} or {}",
                API_VERSIONS[0], API_VERSIONS[1]
            )));
        }
        let mode = match &exec.interactive_mode {
            Some(m) => m.clone(),
            // clientcmd defaults it for v1beta1 only; v1 configs are rejected by validation.
            None if api_version.ends_with("/v1beta1") => ExecInteractiveMode::IfAvailable,
            None => {
                return Err(CredentialError::Config(format!(
                    "interactiveMode must be specified for {user} to use exec authentication plugin"
                )))
            }
        };
        let mut env = Vec::new();
        for entry in exec.env.iter().flatten() {
            let name = entry.get("name").cloned().unwrap_or_default();
            if name.is_empty() {
                return Err(CredentialError::Config(format!(
                    "env variable name must be specified for {user} to use exec authentication plugin"
                )));
            }
            env.push((name, entry.get("value").cloned().unwrap_or_default()));
        }
        let cluster = exec
            .provide_cluster_info
            .then(|| cluster_info(cfg))
            .transpose()?;
        Ok(Self {
            plugin: Plugin {
                command,
                args: exec.args.clone().unwrap_or_default(),
                env,
                base_env,
                api_version,
                mode,
                install_hint: exec.install_hint.clone().filter(|h| !h.is_empty()),
                cluster,
            },
            identity,
            timeout,
            state: Mutex::new(State::default()),
            run: SingleFlight::default(),
        })
    }

    /// The credential for the next request: the cached one while usable, else the result of a run.
    pub(super) async fn current(&self) -> Result<Credential, CredentialError> {
        let ticket = self.run.ticket();
        if let Some(c) = self.lock().usable(SystemTime::now()) {
            return Ok(c);
        }
        // Boxed: a run (the process, its pipes, the timeout) makes a future of kilobytes, and every
        // request's future would carry, and copy, that room for what happens once an hour.
        Box::pin(self.renew(ticket)).await
    }

    /// Runs the plugin, unless a run ended while this request waited: then it shares that outcome.
    async fn renew(&self, ticket: Ticket) -> Result<Credential, CredentialError> {
        let flight = match self
            .run
            .begin(ticket, || self.lock().usable(SystemTime::now()))
            .await
        {
            Begin::Cached(c) => return Ok(c),
            Begin::Failed(e) => return Err(e),
            Begin::Refresh(flight) => flight,
        };
        let result = self.plugin.run(self.timeout).await;
        // ops hook (observe): refresh counters, and /readyz fails while the plugin fails.
        crate::telemetry::hooks::credential_refreshed(result.is_ok());
        let mut state = self.lock();
        match result {
            Ok(out) => {
                let changed = state
                    .current
                    .as_ref()
                    .is_none_or(|c| c.authorization != out.authorization);
                // A new certificate retires the pooled connections made with the old one.
                let cert_changed = self.identity.set(out.cert);
                if changed || cert_changed {
                    state.generation += 1;
                }
                let now = SystemTime::now();
                match out.expiry {
                    Some(t) => {
                        tracing::info!(command = %self.plugin.command, expires = %humanize(t, now), "exec plugin returned a credential")
                    }
                    None => {
                        tracing::info!(command = %self.plugin.command, "exec plugin returned a credential without expiry; it is kept until rejected")
                    }
                }
                // Even a credential that arrives expired is used for this request (client-go would);
                // the next request runs the plugin again.
                let credential = Credential {
                    authorization: out.authorization.clone(),
                    used: Used(state.generation),
                };
                state.current = Some(Cached {
                    authorization: out.authorization,
                    refresh_at: out.expiry.map(|t| refresh_at(now, t, EXEC_REFRESH_LEEWAY)),
                    generation: state.generation,
                });
                state.stale = false;
                flight.finish(None);
                Ok(credential)
            }
            Err(e) => {
                tracing::warn!(error = %e.one_line(), "exec credential plugin failed");
                flight.finish(Some(e.clone()));
                Err(e)
            }
        }
    }

    /// The API server answered 401 to credential `used`: the next request runs the plugin again, unless
    /// another request already replaced the credential (client-go's `maybeRefreshCreds`).
    pub(super) fn rejected(&self, used: Used) {
        let mut state = self.lock();
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.generation == used.0)
        {
            state.stale = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn humanize(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(d) => format!("in {}s", d.as_secs()),
        Err(e) => format!("{}s ago", e.duration().as_secs()),
    }
}

/// `spec.cluster` for `provideClusterInfo` (client-go's `rest.ConfigToExecCluster`): the CA is sent as
/// data, read from its file if need be.
fn cluster_info(cfg: &ResolvedConfig) -> Result<serde_json::Value, CredentialError> {
    let mut obj = serde_json::Map::new();
    let cluster = cfg.cluster.clone().unwrap_or_default();
    obj.insert(
        "server".into(),
        cluster.server.clone().unwrap_or_default().into(),
    );
    if let Some(n) = &cfg.tls.server_name {
        obj.insert("tls-server-name".into(), n.clone().into());
    }
    if cfg.tls.insecure {
        obj.insert("insecure-skip-tls-verify".into(), true.into());
    }
    if let Some(ca) = &cfg.tls.ca {
        let bytes = ca.load().map_err(|e| {
            CredentialError::Config(format!(
                "exec plugin cluster info: cannot read certificate-authority {}: {e}",
                ca.describe()
            ))
        })?;
        obj.insert(
            "certificate-authority-data".into(),
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into(),
        );
    }
    if let Some(p) = &cfg.proxy_url {
        obj.insert("proxy-url".into(), p.clone().into());
    }
    if cfg.disable_compression {
        obj.insert("disable-compression".into(), true.into());
    }
    if let Some(ext) = cluster
        .extensions
        .iter()
        .flatten()
        .find(|e| e.name == "client.authentication.k8s.io/exec")
    {
        obj.insert("config".into(), ext.extension.clone());
    }
    Ok(serde_json::Value::Object(obj))
}

#[derive(Deserialize)]
struct ExecCredential {
    kind: Option<String>,
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    status: Option<ExecCredentialStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecCredentialStatus {
    expiration_timestamp: Option<String>,
    token: Option<String>,
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
}

impl Plugin {
    fn error(&self, reason: impl Into<String>) -> CredentialError {
        CredentialError::Exec {
            command: self.command.clone(),
            reason: reason.into(),
        }
    }

    /// client-go's `isInteractive`.
    fn interactive(&self) -> Result<bool, CredentialError> {
        let tty = std::io::stdin().is_terminal();
        match self.mode {
            ExecInteractiveMode::Never => Ok(false),
            ExecInteractiveMode::IfAvailable => Ok(tty),
            ExecInteractiveMode::Always if tty => Ok(true),
            ExecInteractiveMode::Always => Err(self.error(
                "exec plugin cannot support interactive mode: standard input is not a terminal",
            )),
        }
    }

    async fn run(&self, timeout: Duration) -> Result<Output, CredentialError> {
        let interactive = self.interactive()?;
        let mut spec = serde_json::Map::new();
        if let Some(c) = &self.cluster {
            spec.insert("cluster".into(), c.clone());
        }
        spec.insert("interactive".into(), interactive.into());
        let info = serde_json::json!({
            "kind": "ExecCredential",
            "apiVersion": self.api_version,
            "spec": spec,
        });
        let mut cmd = tokio::process::Command::new(&self.command);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.base_env.vars().iter().cloned())
            .envs(
                self.env
                    .iter()
                    .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            )
            .env("KUBERNETES_EXEC_INFO", info.to_string())
            .stdin(if interactive {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                let mut msg = format!(
                    "exec: executable {} not found\n\n{INSTALL_HINT_HELP}",
                    self.command
                );
                if let Some(hint) = &self.install_hint {
                    msg.push_str("\n\n");
                    msg.push_str(&strip_control(hint));
                }
                self.error(msg)
            }
            _ => self.error(format!("exec: cannot run executable {}: {e}", self.command)),
        })?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let limit = if interactive {
            timeout.max(EXEC_INTERACTIVE_TIMEOUT)
        } else {
            timeout
        };
        let finished = tokio::time::timeout(limit, async {
            let mut out = Vec::new();
            (&mut stdout)
                .take(MAX_OUTPUT + 1)
                .read_to_end(&mut out)
                .await?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, out))
        })
        .await;
        let (status, out) = match finished {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(self.error(format!("exec: reading plugin output: {e}"))),
            Err(_) => {
                // `kill_on_drop` ends the child as it goes out of scope.
                return Err(self.error(format!(
                    "exec: executable {} did not finish within {}s and was killed",
                    self.command,
                    limit.as_secs()
                )));
            }
        };
        if !status.success() {
            return Err(self.error(match status.code() {
                Some(code) => format!(
                    "exec: executable {} failed with exit code {code}",
                    self.command
                ),
                None => format!("exec: executable {} was killed by a signal", self.command),
            }));
        }
        if out.len() as u64 > MAX_OUTPUT {
            return Err(self.error("exec: plugin output is larger than 1 MiB"));
        }
        self.decode(&out)
    }

    /// client-go's checks on the plugin's answer.
    fn decode(&self, out: &[u8]) -> Result<Output, CredentialError> {
        let cred: ExecCredential = parse(out).map_err(|where_| {
            self.error(format!(
                "decoding stdout: not a valid ExecCredential ({where_})"
            ))
        })?;
        let kind = cred.kind.unwrap_or_default();
        if kind != "ExecCredential" {
            return Err(self.error(format!(
                "decoding stdout: kind is {:?}, expected \"ExecCredential\"",
                clip(&kind)
            )));
        }
        let got = cred.api_version.unwrap_or_default();
        if got != self.api_version {
            return Err(self.error(format!(
                "exec plugin is configured to use API version {}, plugin returned version {}",
                self.api_version,
                clip(&got)
            )));
        }
        let status = cred
            .status
            .ok_or_else(|| self.error("exec plugin didn't return a status field"))?;
        let token = status.token.filter(|t| !t.is_empty());
        let cert = status.client_certificate_data.filter(|c| !c.is_empty());
        let key = status.client_key_data.filter(|k| !k.is_empty());
        if token.is_none() && cert.is_none() && key.is_none() {
            return Err(self.error("exec plugin didn't return a token or cert/key pair"));
        }
        if cert.is_some() != key.is_some() {
            return Err(self.error("exec plugin returned only certificate or key, not both"));
        }
        let expiry = status
            .expiration_timestamp
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<jiff::Timestamp>()
                    .map(SystemTime::from)
                    .map_err(|_| {
                        self.error(format!(
                            "decoding stdout: expirationTimestamp {:?} is not an RFC 3339 time",
                            clip(&t)
                        ))
                    })
            })
            .transpose()?;
        let authorization = token
            .map(|t| bearer(&t))
            .transpose()
            .map_err(|_| self.error("the token contains characters not allowed in a header"))?;
        let cert = match (cert, key) {
            (Some(c), Some(k)) => Some(Arc::new(
                tls::load_identity(
                    &tls::provider(),
                    &PemSource::Data(c.into_bytes()),
                    &PemSource::Data(k.into_bytes()),
                )
                .map_err(|e| self.error(format!("failed parsing client key/certificate: {e}")))?,
            )),
            _ => None,
        };
        Ok(Output {
            authorization,
            cert,
            expiry,
        })
    }
}

/// Parses JSON, or YAML when the output is not JSON. The error says where, never what.
fn parse(out: &[u8]) -> Result<ExecCredential, String> {
    match serde_json::from_slice(out) {
        Ok(c) => Ok(c),
        Err(e) => {
            let text = String::from_utf8_lossy(out);
            if !text.trim_start().starts_with('{') {
                if let Ok(c) = serde_saphyr::from_str::<ExecCredential>(&text) {
                    return Ok(c);
                }
            }
            let what = match e.classify() {
                serde_json::error::Category::Io => "unreadable",
                serde_json::error::Category::Syntax => "invalid JSON",
                serde_json::error::Category::Data => "unexpected field type",
                serde_json::error::Category::Eof => "truncated JSON",
            };
            Err(format!("{what} at line {} column {}", e.line(), e.column()))
        }
    }
}

/// A plugin-chosen string in an error message: short, printable.
fn clip(s: &str) -> String {
    strip_control(&s.chars().take(64).collect::<String>())
}

/// Drops control characters (ANSI colour sequences in install hints) except newlines and tabs.
fn strip_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c.is_control() && c != '\n' && c != '\t' {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> Plugin {
        Plugin {
            command: "p".into(),
            args: vec![],
            env: vec![],
            base_env: PluginEnv::default(),
            api_version: API_VERSIONS[0].into(),
            mode: ExecInteractiveMode::Never,
            install_hint: None,
            cluster: None,
        }
    }

    #[test]
    fn refresh_leeway_is_capped_at_half_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let l = Duration::from_secs(10);
        assert_eq!(
            refresh_at(t0, t0 + Duration::from_secs(900), l),
            t0 + Duration::from_secs(890)
        );
        assert_eq!(
            refresh_at(t0, t0 + Duration::from_secs(8), l),
            t0 + Duration::from_secs(4)
        );
        assert_eq!(
            refresh_at(t0, t0 - Duration::from_secs(5), l),
            t0 - Duration::from_secs(5)
        );
    }

    #[test]
    fn decode_checks_like_client_go() {
        let p = plugin();
        let ok = p
            .decode(br#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":{"token":"tok","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#)
            .unwrap();
        assert_eq!(ok.authorization.unwrap(), "Bearer tok");
        assert!(ok.expiry.is_some());
        let yaml = "kind: ExecCredential\napiVersion: client.authentication.k8s.io/v1\nstatus:\n  token: tok\n";
        assert!(p.decode(yaml.as_bytes()).is_ok());
        let err = |s: &str| p.decode(s.as_bytes()).err().unwrap().to_string();
        assert!(err(r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","status":{"token":"t"}}"#).contains("plugin returned version client.authentication.k8s.io/v1beta1"));
        assert!(
            err(r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1"}"#)
                .contains("didn't return a status")
        );
        assert!(err(r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":{}}"#).contains("token or cert/key"));
        assert!(err(r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":{"clientCertificateData":"x"}}"#).contains("only certificate or key"));
        // serde would quote the value; the message must not.
        let e = err(
            r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":"SECRET-abc"}"#,
        );
        assert!(!e.contains("SECRET"), "{e}");
        let e = err(r#"{"kind":"ExecCredential","status":{"token":"SECRET-abc"}"#);
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn ansi_is_stripped_from_hints() {
        assert_eq!(
            strip_control("\u{1b}[1;31minstall\u{1b}[0m it\n\u{7}now"),
            "install it\nnow"
        );
    }
}
