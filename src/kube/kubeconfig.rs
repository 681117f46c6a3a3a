//! Finding, merging and resolving kubeconfig files the way client-go's `clientcmd` does, plus the
//! in-cluster service-account fallback. The output is a [`ResolvedConfig`]: plain data naming the server,
//! the TLS material and the credentials, with nothing loaded into a connector yet.
//!
//! `kube` (config feature) parses the YAML and resolves relative paths; the rules around it are ours,
//! because `kube` differs from client-go on missing files, fallbacks and validation
//! (shared/reference/credentials.md §B4).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use kube::config::{AuthInfo, AuthProviderConfig, Cluster, ExecConfig, Kubeconfig};
use secrecy::{ExposeSecret, SecretString};

use crate::base::env::Env;
use crate::base::host::join_host_port;

/// The in-cluster service-account directory kubelet mounts.
pub const DEFAULT_INCLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where the configuration comes from and which overrides apply, mirroring kubectl's global flags.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--kubeconfig`: used alone, no merge, and it must exist.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `--cluster`.
    pub cluster: Option<String>,
    /// `--user`.
    pub user: Option<String>,
    /// Flag overrides applied on top of the selected entries.
    pub overrides: Overrides,
    /// `--incluster-dir`; falls back to `$KPROXY_INCLUSTER_DIR`, then [`DEFAULT_INCLUSTER_DIR`].
    pub incluster_dir: Option<PathBuf>,
}

/// kubectl's override flags.
#[derive(Clone, Default)]
pub struct Overrides {
    /// `--server`.
    pub server: Option<String>,
    /// `--token`.
    pub token: Option<String>,
    /// `--username`.
    pub username: Option<String>,
    /// `--password`.
    pub password: Option<String>,
    /// `--certificate-authority`.
    pub certificate_authority: Option<PathBuf>,
    /// `--client-certificate`.
    pub client_certificate: Option<PathBuf>,
    /// `--client-key`.
    pub client_key: Option<PathBuf>,
    /// `--insecure-skip-tls-verify`.
    pub insecure_skip_tls_verify: Option<bool>,
    /// `--tls-server-name`.
    pub tls_server_name: Option<String>,
    /// `--as`.
    pub as_user: Option<String>,
    /// `--as-group` (repeatable).
    pub as_groups: Vec<String>,
    /// `--as-uid`.
    pub as_uid: Option<String>,
    /// `--disable-compression`.
    pub disable_compression: Option<bool>,
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// PEM material given inline (`*-data`) or as a file path.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A file, re-readable when it rotates.
    File(PathBuf),
    /// Decoded bytes from a `*-data` field.
    Data(Vec<u8>),
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(p) => write!(f, "File({})", p.display()),
            PemSource::Data(d) => write!(f, "Data({} bytes)", d.len()),
        }
    }
}

impl PemSource {
    /// Reads the material.
    pub fn load(&self) -> std::io::Result<Vec<u8>> {
        match self {
            PemSource::File(p) => std::fs::read(p),
            PemSource::Data(d) => Ok(d.clone()),
        }
    }

    /// A description for error messages that never includes the material itself.
    pub fn describe(&self) -> String {
        match self {
            PemSource::File(p) => p.display().to_string(),
            PemSource::Data(_) => "inline data".to_owned(),
        }
    }
}

/// The API server to proxy to.
#[derive(Debug, Clone)]
pub struct Server {
    /// `https` or `http`.
    pub scheme: http::uri::Scheme,
    /// `host[:port]`, brackets kept for IPv6.
    pub authority: http::uri::Authority,
    /// The server URL's path without a trailing `/` (empty for none): Rancher-style prefixes.
    pub path: String,
}

impl Server {
    /// Whether credentials may be sent (client-go sends them only over TLS).
    pub fn is_https(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

/// How to verify the server and which client certificate to present.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// The CA bundle; `None` means the system roots.
    pub ca: Option<PemSource>,
    /// `insecure-skip-tls-verify`.
    pub insecure: bool,
    /// `tls-server-name`: the name sent as SNI and verified in the certificate.
    pub server_name: Option<String>,
    /// The client certificate chain.
    pub client_cert: Option<PemSource>,
    /// The client private key (RSA, EC or PKCS#8).
    pub client_key: Option<PemSource>,
}

/// Impersonation headers to add (`--as`, `as-groups`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Impersonation {
    /// `Impersonate-User`.
    pub user: Option<String>,
    /// `Impersonate-Uid`.
    pub uid: Option<String>,
    /// One `Impersonate-Group` each.
    pub groups: Vec<String>,
    /// One `Impersonate-Extra-<key>` per value, sorted by key for stable output.
    pub extra: Vec<(String, Vec<String>)>,
}

/// The credentials of the selected user.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// The user entry's name, for messages.
    pub user_name: Option<String>,
    /// The kubeconfig file that defined the user (where OIDC writes refreshed tokens back).
    pub user_origin: Option<PathBuf>,
    /// A static bearer token.
    pub token: Option<SecretString>,
    /// A token file, re-read as it rotates; wins over `token` while readable.
    pub token_file: Option<PathBuf>,
    /// Basic auth.
    pub basic: Option<(String, SecretString)>,
    /// An exec credential plugin.
    pub exec: Option<ExecConfig>,
    /// An auth provider (`oidc`; `gcp`/`azure` are rejected).
    pub auth_provider: Option<AuthProviderConfig>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("user_name", &self.user_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("basic", &self.basic.as_ref().map(|(u, _)| u))
            .field("exec", &self.exec.as_ref().and_then(|e| e.command.clone()))
            .field(
                "auth_provider",
                &self.auth_provider.as_ref().map(|p| p.name.clone()),
            )
            .finish()
    }
}

/// Where the resolved configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Kubeconfig files (possibly none, with `--server`), and the context used.
    Kubeconfig {
        /// Files read, in precedence order.
        files: Vec<PathBuf>,
        /// The context, when one was used.
        context: Option<String>,
    },
    /// The pod's service account.
    InCluster {
        /// The service-account directory.
        dir: PathBuf,
    },
}

/// Everything needed to reach and authenticate to the API server.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// Where it came from.
    pub source: Source,
    /// The server.
    pub server: Server,
    /// TLS verification and client certificate.
    pub tls: TlsSettings,
    /// Credentials (empty for `http://` servers).
    pub auth: AuthConfig,
    /// Impersonation (empty for `http://` servers).
    pub impersonate: Impersonation,
    /// The cluster's `proxy-url`.
    pub proxy_url: Option<String>,
    /// `disable-compression`.
    pub disable_compression: bool,
    /// The selected cluster entry, for exec plugins' `provideClusterInfo`.
    pub cluster: Option<Cluster>,
    /// The namespace of the context or service account, resolved as client-go does: the kubeconfig
    /// kproxy writes for its clients (`kproxy kubeconfig`, `--exec`) keeps it.
    pub namespace: Option<String>,
}

/// A configuration problem; each message names the problem and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--kubeconfig` names a file that does not exist.
    #[error("kubeconfig {0} does not exist: pass an existing file to --kubeconfig")]
    MissingFile(PathBuf),
    /// A kubeconfig could not be read.
    #[error("cannot read kubeconfig {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A kubeconfig is not valid YAML for its schema.
    #[error("cannot parse kubeconfig {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's text, which may hold secrets).
        message: String,
    },
    /// No kubeconfig and no in-cluster environment.
    #[error("no Kubernetes configuration found: {looked}; pass --kubeconfig=FILE or --server=URL, or run inside a pod")]
    NoConfig {
        /// What was looked at.
        looked: String,
    },
    /// A named entry does not exist.
    #[error("{kind} {name:?} not found in kubeconfig{hint}")]
    NotFound {
        /// `context`, `cluster` or `user`.
        kind: &'static str,
        /// The missing name.
        name: String,
        /// Where to look.
        hint: &'static str,
    },
    /// The configuration is unusable as a whole.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// In-cluster files are missing or unreadable.
    #[error("in-cluster configuration: {0}")]
    InCluster(String),
}

/// Loads and resolves the configuration.
pub fn load(opts: &LoadOptions, env: &dyn Env) -> Result<ResolvedConfig, ConfigError> {
    Kubeconfigs::read(opts, env)?.resolve(opts, env)
}

/// The kubeconfig files, read and merged once: what [`load`] resolves, and what every context of
/// `--all-contexts` is resolved from without reading and parsing the files again per context.
pub struct Kubeconfigs {
    files: Vec<(PathBuf, bool)>,
    merged: Kubeconfig,
    origins: Origins,
    read: Vec<PathBuf>,
}

impl Kubeconfigs {
    /// Reads and merges the files `opts` and `env` name (first definition wins, as in client-go).
    pub fn read(opts: &LoadOptions, env: &dyn Env) -> Result<Kubeconfigs, ConfigError> {
        let files = kubeconfig_files(opts, env)?;
        let mut merged = Kubeconfig::default();
        let mut origins = Origins::default();
        let mut read = Vec::new();
        for (path, required) in &files {
            let kc = match read_file(path, *required)? {
                Some(kc) => kc,
                None => continue,
            };
            origins.record(&kc, path);
            merged = merged.merge(kc).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
            read.push(path.clone());
        }
        Ok(Kubeconfigs {
            files,
            merged,
            origins,
            read,
        })
    }

    /// Resolves the context, cluster and user `opts` select (the in-cluster configuration when the
    /// files define nothing and nothing was asked for).
    pub fn resolve(
        &self,
        opts: &LoadOptions,
        env: &dyn Env,
    ) -> Result<ResolvedConfig, ConfigError> {
        let merged = &self.merged;
        let is_empty = merged.clusters.is_empty()
            && merged.auth_infos.is_empty()
            && merged.contexts.is_empty()
            && merged.current_context.as_deref().unwrap_or("").is_empty();
        if is_empty && opts.overrides.server.is_none() && opts.context.is_none() {
            if let Some(dir) = incluster_possible(opts, env) {
                return incluster(dir, opts, env);
            }
            let looked = if self.read.is_empty() {
                match self.files.first() {
                    Some((p, _)) if self.files.len() == 1 => {
                        format!("{} does not exist", p.display())
                    }
                    Some(_) => "no file in $KUBECONFIG exists".to_owned(),
                    None => "$HOME is not set".to_owned(),
                }
            } else {
                "the kubeconfig defines no cluster".to_owned()
            };
            return Err(ConfigError::NoConfig {
                looked: format!("{looked} and KUBERNETES_SERVICE_HOST is not set"),
            });
        }
        resolve(merged, &self.origins, self.read.clone(), opts)
    }

    /// The named contexts in file order, and the current context.
    pub fn contexts(&self) -> (Vec<ContextEntry>, Option<String>) {
        let entries = self
            .merged
            .contexts
            .iter()
            .filter(|c| !c.name.is_empty())
            .map(|c| ContextEntry {
                name: c.name.clone(),
                cluster: c
                    .context
                    .as_ref()
                    .map(|x| x.cluster.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let current = self
            .merged
            .current_context
            .clone()
            .filter(|c| !c.is_empty());
        (entries, current)
    }
}

/// Files in precedence order, each with whether it must exist. Also what the reloader watches.
pub fn kubeconfig_files(
    opts: &LoadOptions,
    env: &dyn Env,
) -> Result<Vec<(PathBuf, bool)>, ConfigError> {
    if let Some(path) = &opts.kubeconfig {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.clone()));
        }
        return Ok(vec![(path.clone(), true)]);
    }
    if let Some(list) = env.non_empty("KUBECONFIG") {
        let mut seen = HashSet::new();
        return Ok(std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .filter(|p| seen.insert(p.clone()))
            .map(|p| (p, false))
            .collect());
    }
    Ok(env
        .home_dir()
        .map(|home| vec![(home.join(".kube").join("config"), false)])
        .unwrap_or_default())
}

fn read_file(path: &Path, required: bool) -> Result<Option<Kubeconfig>, ConfigError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
        Ok(m) if m.is_dir() => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source: std::io::Error::other("is a directory"),
            })
        }
        Ok(_) => {}
    }
    // Relative paths are made absolute against the file's directory; make the directory absolute
    // first, as client-go does (`filepath.Abs`), so the result does not depend on the working directory.
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let bytes = std::fs::read(&abs).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    // Read as client-go reads it (first document, nameless entries, duplicate names, strict types);
    // the message never quotes the file (a rendered snippet could show a token).
    crate::kube::kubeconfig_file::parse(&abs, &bytes)
        .map(Some)
        .map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
}

/// Which file first defined each user (first wins, as in the merge).
#[derive(Default)]
struct Origins {
    users: Vec<(String, PathBuf)>,
}

impl Origins {
    fn record(&mut self, kc: &Kubeconfig, path: &Path) {
        for u in &kc.auth_infos {
            if !self.users.iter().any(|(n, _)| *n == u.name) {
                self.users.push((u.name.clone(), path.to_owned()));
            }
        }
    }
    fn user(&self, name: &str) -> Option<PathBuf> {
        self.users
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    }
}

fn resolve(
    kc: &Kubeconfig,
    origins: &Origins,
    files: Vec<PathBuf>,
    opts: &LoadOptions,
) -> Result<ResolvedConfig, ConfigError> {
    let context_name = opts
        .context
        .clone()
        .or_else(|| kc.current_context.clone())
        .filter(|c| !c.is_empty());
    let context = match &context_name {
        Some(name) => Some(
            kc.contexts
                .iter()
                .find(|c| &c.name == name)
                .ok_or_else(|| ConfigError::NotFound {
                    kind: "context",
                    name: name.clone(),
                    hint: ": list them with `kubectl config get-contexts` and pass one with --context",
                })?
                .context
                .clone()
                .unwrap_or_default(),
        ),
        None => None,
    };
    let cluster_name = opts
        .cluster
        .clone()
        .or_else(|| context.as_ref().map(|c| c.cluster.clone()))
        .filter(|c| !c.is_empty());
    let user_name = opts
        .user
        .clone()
        .or_else(|| context.as_ref().and_then(|c| c.user.clone()))
        .filter(|c| !c.is_empty());

    let mut cluster = match &cluster_name {
        Some(name) => kc
            .clusters
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| ConfigError::NotFound {
                kind: "cluster",
                name: name.clone(),
                hint: ": check the context's cluster or --cluster",
            })?
            .cluster
            .clone()
            .unwrap_or_default(),
        None => Cluster::default(),
    };
    // A missing user is reported after the cluster's own problems: client-go validates the cluster
    // first (and then, having no user, prompts for a password), so kubectl names those first.
    let (mut user, missing_user) = match &user_name {
        Some(name) => match kc.auth_infos.iter().find(|u| &u.name == name) {
            Some(u) => (u.auth_info.clone().unwrap_or_default(), None),
            None => (
                AuthInfo::default(),
                Some(ConfigError::NotFound {
                    kind: "user",
                    name: name.clone(),
                    hint: ": check the context's user or --user",
                }),
            ),
        },
        None => (AuthInfo::default(), None),
    };
    apply_overrides(&mut cluster, &mut user, &opts.overrides);

    let label = cluster_name.as_deref().unwrap_or("(none)");
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if set(&cluster.certificate_authority) && set(&cluster.certificate_authority_data) {
        // client-go's validation of the selected cluster, word for word.
        return Err(ConfigError::Invalid(format!(
            "certificate-authority-data and certificate-authority are both specified for {label}. certificate-authority-data will override."
        )));
    }
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| match &context_name {
            Some(ctx) => ConfigError::Invalid(format!(
                "no server found for cluster {label:?} of context {ctx:?}: set clusters[].cluster.server or pass --server"
            )),
            None => ConfigError::Invalid(
                "no current-context is set: pass --context=NAME (see `kubectl config get-contexts`) or --server=URL"
                    .to_owned(),
            ),
        })?;
    let (tls, auth, impersonate) = user_material(&cluster, &user, user_name.clone())?;
    let server = parse_server(&server, &tls)?;
    if let Some(missing) = missing_user {
        return Err(missing);
    }
    let auth = AuthConfig {
        user_origin: user_name.as_deref().and_then(|n| origins.user(n)),
        ..auth
    };
    finish(
        Source::Kubeconfig {
            files,
            context: context_name,
        },
        server,
        tls,
        auth,
        impersonate,
        &cluster,
        context.and_then(|c| c.namespace),
    )
}

fn apply_overrides(cluster: &mut Cluster, user: &mut AuthInfo, o: &Overrides) {
    if let Some(server) = &o.server {
        cluster.server = Some(server.clone());
        // client-go: a new server invalidates the kubeconfig's tls-server-name.
        cluster.tls_server_name = None;
    }
    if let Some(name) = &o.tls_server_name {
        cluster.tls_server_name = Some(name.clone());
    }
    // --insecure-skip-tls-verify and --certificate-authority replace the CA/insecure pair as a unit.
    if o.insecure_skip_tls_verify.is_some() || o.certificate_authority.is_some() {
        cluster.insecure_skip_tls_verify = o.insecure_skip_tls_verify;
        cluster.certificate_authority = o
            .certificate_authority
            .as_ref()
            .map(|p| p.display().to_string());
        cluster.certificate_authority_data = None;
    }
    if let Some(v) = o.disable_compression {
        cluster.disable_compression = Some(v);
    }
    if let Some(token) = &o.token {
        user.token = Some(SecretString::from(token.clone()));
        user.token_file = None;
        user.exec = None;
        user.auth_provider = None;
    }
    if o.username.is_some() || o.password.is_some() {
        if let Some(u) = &o.username {
            user.username = Some(u.clone());
        }
        if let Some(p) = &o.password {
            user.password = Some(SecretString::from(p.clone()));
        }
    }
    if let Some(c) = &o.client_certificate {
        user.client_certificate = Some(c.display().to_string());
        user.client_certificate_data = None;
    }
    if let Some(k) = &o.client_key {
        user.client_key = Some(k.display().to_string());
        user.client_key_data = None;
    }
    if let Some(a) = &o.as_user {
        user.impersonate = Some(a.clone());
    }
    if !o.as_groups.is_empty() {
        user.impersonate_groups = Some(o.as_groups.clone());
    }
    if let Some(uid) = &o.as_uid {
        user.impersonate_uid = Some(uid.clone());
    }
}

fn decode_data(field: &str, owner: &str, data: &str) -> Result<Vec<u8>, ConfigError> {
    // The one decoder of `*-data` fields; parsing already refused every field it would refuse.
    crate::kube::kubeconfig_file::decode_data(data).map_err(|why| {
        ConfigError::Invalid(format!("{field} of {owner} is not valid base64: {why}"))
    })
}

fn pem_source(
    field: &str,
    owner: &str,
    file: Option<&String>,
    data: Option<&str>,
) -> Result<Option<PemSource>, ConfigError> {
    match (
        file.filter(|f| !f.is_empty()),
        data.filter(|d| !d.is_empty()),
    ) {
        (_, Some(d)) => Ok(Some(PemSource::Data(decode_data(
            &format!("{field}-data"),
            owner,
            d,
        )?))),
        (Some(f), None) => Ok(Some(PemSource::File(PathBuf::from(f)))),
        (None, None) => Ok(None),
    }
}

type Material = (TlsSettings, AuthConfig, Impersonation);

/// Validates the cluster and user entries as client-go's `ConfirmUsable` does and extracts the material,
/// each check in client-go's order (so the first problem reported is the one kubectl reports).
fn user_material(
    cluster: &Cluster,
    user: &AuthInfo,
    user_name: Option<String>,
) -> Result<Material, ConfigError> {
    let who = user_name.clone().unwrap_or_else(|| "the user".to_owned());
    let (ca, insecure) = cluster_trust(cluster)?;
    let (client_cert, client_key) = client_certificate(user, &who)?;
    let auth = auth_config(user, &who, user_name)?;
    let impersonation = impersonation(user, &who)?;
    let tls = TlsSettings {
        ca,
        insecure,
        server_name: cluster.tls_server_name.clone().filter(|s| !s.is_empty()),
        client_cert,
        client_key,
    };
    Ok((tls, auth, impersonation))
}

/// The cluster's CA and `insecure-skip-tls-verify` (never both), and a supported `proxy-url` scheme.
fn cluster_trust(cluster: &Cluster) -> Result<(Option<PemSource>, bool), ConfigError> {
    let ca = pem_source(
        "certificate-authority",
        "the cluster",
        cluster.certificate_authority.as_ref(),
        cluster.certificate_authority_data.as_deref(),
    )?;
    let insecure = cluster.insecure_skip_tls_verify.unwrap_or(false);
    if insecure && ca.is_some() {
        return Err(ConfigError::Invalid(
            "specifying a root certificates file with the insecure flag is not allowed: drop insecure-skip-tls-verify or the certificate-authority".to_owned(),
        ));
    }
    if let Some(PemSource::File(p)) = &ca {
        std::fs::metadata(p).map_err(|e| {
            ConfigError::Invalid(format!(
                "unable to read certificate-authority {}: {e}",
                p.display()
            ))
        })?;
    }
    if let Some(proxy) = cluster.proxy_url.as_deref().filter(|p| !p.is_empty()) {
        let scheme = proxy.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !matches!(scheme, "http" | "https" | "socks5") {
            return Err(ConfigError::Invalid(format!(
                "proxy-url {proxy:?} must use the http, https or socks5 scheme"
            )));
        }
    }
    Ok((ca, insecure))
}

/// The user's client certificate and key: both or neither, each as a file or inline data (not both), the
/// files readable.
fn client_certificate(
    user: &AuthInfo,
    who: &str,
) -> Result<(Option<PemSource>, Option<PemSource>), ConfigError> {
    if user
        .client_certificate
        .as_deref()
        .is_some_and(|s| !s.is_empty())
        && user
            .client_certificate_data
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        return Err(ConfigError::Invalid(format!(
            "client-cert-data and client-cert are both specified for {who}: keep one"
        )));
    }
    if user.client_key.as_deref().is_some_and(|s| !s.is_empty())
        && user
            .client_key_data
            .as_ref()
            .is_some_and(|s| !s.expose_secret().is_empty())
    {
        return Err(ConfigError::Invalid(format!(
            "client-key-data and client-key are both specified for {who}: keep one"
        )));
    }
    let client_cert = pem_source(
        "client-certificate",
        who,
        user.client_certificate.as_ref(),
        user.client_certificate_data.as_deref(),
    )?;
    let client_key = pem_source(
        "client-key",
        who,
        user.client_key.as_ref(),
        user.client_key_data.as_ref().map(|s| s.expose_secret()),
    )?;
    match (&client_cert, &client_key) {
        (Some(_), None) => {
            return Err(ConfigError::Invalid(format!(
                "client-key-data or client-key must be specified for {who} to use the clientCert authentication method"
            )))
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid(format!(
                "client-cert-data or client-cert must be specified for {who} to use the clientCert authentication method"
            )))
        }
        _ => {}
    }
    for (path, field) in [
        (&client_cert, "client-certificate"),
        (&client_key, "client-key"),
    ] {
        if let Some(PemSource::File(p)) = path {
            std::fs::metadata(p).map_err(|e| {
                ConfigError::Invalid(format!(
                    "unable to read {field} {} for {who}: {e}",
                    p.display()
                ))
            })?;
        }
    }

    Ok((client_cert, client_key))
}

/// The user's bearer token, token file, basic auth, exec plugin and auth provider, with client-go's rules
/// on which may be combined.
fn auth_config(
    user: &AuthInfo,
    who: &str,
    user_name: Option<String>,
) -> Result<AuthConfig, ConfigError> {
    let token = user.token.clone().filter(|t| !t.expose_secret().is_empty());
    let token_file = user
        .token_file
        .clone()
        .filter(|t| !t.is_empty())
        .map(PathBuf::from);
    let basic = match (&user.username, &user.password) {
        (Some(u), p) if !u.is_empty() => Some((
            u.clone(),
            p.clone().unwrap_or_else(|| SecretString::from("")),
        )),
        _ => None,
    };
    if (token.is_some() || token_file.is_some()) && basic.is_some() {
        return Err(ConfigError::Invalid(format!(
            "more than one authentication method found for {who}; found [token basicAuth], only one is allowed"
        )));
    }
    if let Some(tf) = &token_file {
        std::fs::metadata(tf).map_err(|e| {
            ConfigError::Invalid(format!(
                "unable to read tokenFile {} for {who}: {e}",
                tf.display()
            ))
        })?;
    }
    if let Some(exec) = &user.exec {
        if exec.command.as_deref().unwrap_or("").is_empty() {
            return Err(ConfigError::Invalid(format!(
                "exec plugin of {who}: command must be specified"
            )));
        }
        if exec.api_version.as_deref().unwrap_or("").is_empty() {
            return Err(ConfigError::Invalid(format!(
                "exec plugin of {who}: apiVersion must be specified"
            )));
        }
        if user.auth_provider.is_some() {
            return Err(ConfigError::Invalid(format!(
                "authProvider cannot be provided in combination with an exec plugin for {who}"
            )));
        }
        if exec
            .env
            .iter()
            .flatten()
            .any(|e| e.get("name").is_none_or(|n| n.is_empty()))
        {
            return Err(ConfigError::Invalid(format!(
                "env variable name must be specified for {who} to use exec authentication plugin"
            )));
        }
        // clientcmd defaults interactiveMode to IfAvailable for v1beta1 only (`SetDefaults_ExecConfig`).
        let defaulted = exec.api_version.as_deref() == Some("client.authentication.k8s.io/v1beta1")
            || exec.api_version.as_deref() == Some("client.authentication.k8s.io/v1alpha1");
        if exec.interactive_mode.is_none() && !defaulted {
            return Err(ConfigError::Invalid(format!(
                "interactiveMode must be specified for {who} to use exec authentication plugin"
            )));
        }
    }
    Ok(AuthConfig {
        user_name,
        user_origin: None,
        token,
        token_file,
        basic,
        exec: user.exec.clone(),
        auth_provider: user.auth_provider.clone(),
    })
}

/// The user's impersonation settings: uid, groups and extra only together with a user to impersonate.
fn impersonation(user: &AuthInfo, who: &str) -> Result<Impersonation, ConfigError> {
    let has_impersonation_extras = user
        .impersonate_uid
        .as_deref()
        .is_some_and(|s| !s.is_empty())
        || user
            .impersonate_groups
            .as_ref()
            .is_some_and(|g| !g.is_empty())
        || user
            .impersonate_user_extra
            .as_ref()
            .is_some_and(|e| !e.is_empty());
    let as_user = user.impersonate.clone().filter(|s| !s.is_empty());
    if as_user.is_none() && has_impersonation_extras {
        return Err(ConfigError::Invalid(format!(
            "requesting uid, groups or user-extra for {who} without impersonating a user: add --as"
        )));
    }
    let mut extra: Vec<(String, Vec<String>)> = user
        .impersonate_user_extra
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    extra.sort();
    Ok(Impersonation {
        user: as_user,
        uid: user.impersonate_uid.clone().filter(|s| !s.is_empty()),
        groups: user.impersonate_groups.clone().unwrap_or_default(),
        extra,
    })
}

/// Parses the server URL as client-go does: a missing scheme is `https` when TLS material is configured,
/// else `http`; query and fragment are dropped; a path is kept as a prefix.
fn parse_server(raw: &str, tls: &TlsSettings) -> Result<Server, ConfigError> {
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        let tls_configured = tls.ca.is_some() || tls.insecure || tls.client_cert.is_some();
        format!("{}://{raw}", if tls_configured { "https" } else { "http" })
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("server {raw:?} is not a valid URL: {e}")))?;
    let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTPS);
    if scheme != http::uri::Scheme::HTTPS && scheme != http::uri::Scheme::HTTP {
        return Err(ConfigError::Invalid(format!(
            "server {raw:?} must be an http:// or https:// URL"
        )));
    }
    let authority = uri
        .authority()
        .cloned()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| ConfigError::Invalid(format!("server {raw:?} has no host")))?;
    if authority.as_str().contains('@') {
        return Err(ConfigError::Invalid(
            "server URL must not carry user information; use the user entry's credentials instead"
                .to_owned(),
        ));
    }
    let path = uri.path().trim_end_matches('/').to_owned();
    Ok(Server {
        scheme,
        authority,
        path,
    })
}

fn finish(
    source: Source,
    server: Server,
    tls: TlsSettings,
    mut auth: AuthConfig,
    impersonate: Impersonation,
    cluster: &Cluster,
    namespace: Option<String>,
) -> Result<ResolvedConfig, ConfigError> {
    let mut tls = tls;
    // client-go merges the user's credentials only for TLS servers. Impersonation is not a credential:
    // kubectl v1.32 sends `Impersonate-*` (from the kubeconfig or --as) to http:// servers too, observed
    // side by side in tests/kubectl_compat.rs.
    if !server.is_https() {
        let had = auth.token.is_some()
            || auth.token_file.is_some()
            || auth.basic.is_some()
            || auth.exec.is_some()
            || auth.auth_provider.is_some()
            || tls.client_cert.is_some();
        if had {
            tracing::warn!(
                server = %server,
                "credentials are only sent to https:// servers, as in kubectl; they are ignored for this server"
            );
        }
        let user_name = auth.user_name.take();
        auth = AuthConfig {
            user_name,
            ..AuthConfig::default()
        };
        tls.client_cert = None;
        tls.client_key = None;
    }
    Ok(ResolvedConfig {
        source,
        server,
        tls,
        auth,
        impersonate,
        proxy_url: cluster.proxy_url.clone().filter(|p| !p.is_empty()),
        disable_compression: cluster.disable_compression.unwrap_or(false),
        cluster: Some(cluster.clone()),
        namespace,
    })
}

/// The service-account directory in-cluster configuration is read from.
pub fn incluster_dir(opts: &LoadOptions, env: &dyn Env) -> PathBuf {
    opts.incluster_dir
        .clone()
        .or_else(|| env.non_empty("KPROXY_INCLUSTER_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INCLUSTER_DIR))
}

/// client-go's `inClusterClientConfig.Possible()`: both service variables set and a token file present.
fn incluster_possible(opts: &LoadOptions, env: &dyn Env) -> Option<PathBuf> {
    env.non_empty("KUBERNETES_SERVICE_HOST")?;
    env.non_empty("KUBERNETES_SERVICE_PORT")?;
    let dir = incluster_dir(opts, env);
    std::fs::metadata(dir.join("token"))
        .ok()
        .filter(|m| !m.is_dir())
        .map(|_| dir)
}

fn incluster(
    dir: PathBuf,
    opts: &LoadOptions,
    env: &dyn Env,
) -> Result<ResolvedConfig, ConfigError> {
    let host = env.non_empty("KUBERNETES_SERVICE_HOST").unwrap_or_default();
    let port = env.non_empty("KUBERNETES_SERVICE_PORT").unwrap_or_default();
    let host_port = join_host_port(&host, &port);
    let token_path = dir.join("token");
    let token = std::fs::read_to_string(&token_path).map_err(|e| {
        ConfigError::InCluster(format!(
            "cannot read service-account token {}: {e}",
            token_path.display()
        ))
    })?;
    if token.trim().is_empty() {
        return Err(ConfigError::InCluster(format!(
            "service-account token {} is empty",
            token_path.display()
        )));
    }
    let ca_path = dir.join("ca.crt");
    let ca = if ca_path.exists() {
        Some(PemSource::File(ca_path))
    } else {
        tracing::warn!(dir = %dir.display(), "no ca.crt in the service-account directory; using the system roots");
        None
    };
    let namespace = env.non_empty("POD_NAMESPACE").or_else(|| {
        std::fs::read_to_string(dir.join("namespace"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    });
    let mut cluster = Cluster {
        server: Some(format!("https://{host_port}")),
        ..Cluster::default()
    };
    let mut user = AuthInfo {
        token_file: Some(token_path.display().to_string()),
        ..AuthInfo::default()
    };
    if let Some(PemSource::File(p)) = &ca {
        cluster.certificate_authority = Some(p.display().to_string());
    }
    apply_overrides(&mut cluster, &mut user, &opts.overrides);
    let (tls, auth, impersonate) = user_material(
        &cluster,
        &user,
        Some("in-cluster service account".to_owned()),
    )?;
    let server = parse_server(cluster.server.as_deref().unwrap_or_default(), &tls)?;
    finish(
        Source::InCluster { dir },
        server,
        tls,
        auth,
        impersonate,
        &cluster,
        namespace,
    )
}

/// One context of the merged kubeconfig, as `--all-contexts` and `--contexts` list them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// The context's name.
    pub name: String,
    /// The name of the cluster it uses.
    pub cluster: String,
}
