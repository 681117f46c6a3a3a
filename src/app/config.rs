//! Turns the command line and environment into a validated [`Config`]: plain data, loaded once and
//! again on every reload. What is built from it lives in `app::build`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::error::StartupError;
use crate::app::watch::Baseline;
use crate::auth::credentials::PluginEnv;
pub use crate::auth::credentials::Timing;
use crate::base::env::Env;
use crate::cli::{Cli, DEFAULT_PORT};
use crate::kube::kubeconfig::{self, ConfigError, LoadOptions, Overrides, ResolvedConfig};
use crate::proxy::filter::Filter;
use crate::proxy::guard::{self, GuardConfig, InboundToken};
use crate::telemetry::access_log;
use crate::upstream::egress::{ProxyEnv, Route};

/// What to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `--address` and `--port`.
    Tcp {
        /// As given: an IP (bracketed or not) or a host name.
        address: String,
        /// 0 picks a free port.
        port: u16,
    },
    /// `--unix-socket`.
    Unix(PathBuf),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The listener.
    pub listen: Listen,
    /// `--api-prefix`, normalised to start and end with `/`.
    pub(crate) api_prefix: String,
    /// `--www` and `--www-prefix` (normalised).
    pub(crate) www: Option<(PathBuf, String)>,
    /// `None` with `--disable-filter`.
    pub(crate) filter: Option<Filter>,
    /// The API server and credentials.
    pub(crate) cluster: ResolvedConfig,
    /// `--append-server-path`.
    pub(crate) append_server_path: bool,
    /// TCP keep-alive for upgrade connections (`--keepalive`): `None` disables it.
    pub(crate) keepalive: Option<Duration>,
    /// `--shutdown-grace`.
    pub shutdown_grace: Duration,
    /// HTTP/2 to the API server (off when `DISABLE_HTTP2` is set, as in client-go).
    pub(crate) http2: bool,
    /// How connections reach the API server: the cluster's `proxy-url`, else `HTTPS_PROXY` /
    /// `HTTP_PROXY` / `NO_PROXY`, else directly.
    pub(crate) route: Route,
    /// The proxy variables, for requests to an OIDC identity provider.
    pub(crate) proxy_env: ProxyEnv,
    /// The environment exec credential plugins inherit.
    pub(crate) plugin_env: PluginEnv,
    /// Credential and certificate refresh timings: the documented defaults; tests shorten them here.
    pub timing: Timing,
    /// The bound on one upstream dial, TCP plus TLS: `upstream::dial::DIAL_TIMEOUT` (40 s); tests shorten it.
    pub dial_timeout: Duration,
    /// How long a request head may take once its first byte has arrived:
    /// [`crate::app::client_io::HEADER_READ_TIMEOUT`]; tests shorten it.
    pub header_read_timeout: Duration,
    /// The HTTP/2 ping interval to the API server, client-go's 30 s; with `ping_timeout`, also how long
    /// an HTTP/1.1 request may receive nothing (the upstream's `Liveness`). Tests shorten both.
    pub ping_interval: Duration,
    /// How long a ping may go unanswered, client-go's 15 s.
    pub ping_timeout: Duration,
    // ---- operations (admin listener, access log, hot reload) ----
    /// `--admin-address`: where `/healthz`, `/readyz` and `/metrics` are served (`None`: nowhere).
    pub admin_address: Option<String>,
    /// `--access-log`.
    pub(crate) access_log: access_log::Format,
    /// `--config-poll-interval`: how often the files the cluster configuration came from are checked
    /// for changes (`None`: only on SIGHUP).
    pub poll_interval: Option<Duration>,
    /// What `cluster` was loaded from, so a reload can load it again the same way.
    pub(crate) load: LoadOptions,
    /// The environment `cluster` was resolved with, for reloads.
    pub(crate) env: SharedEnv,
    /// The configuration files' contents as they were just before `cluster` was loaded.
    pub(crate) baseline: Baseline,
    // ---- access control (issue 13, docs/security.md) ----
    /// Origin checks, CORS, the inbound token and `--read-only`.
    pub(crate) guard: GuardConfig,
    /// `--allow-uid`: unix-socket peers accepted besides kproxy's own user.
    pub(crate) allow_uids: Vec<u32>,
    /// `--all-contexts`, `--contexts` and `--cluster-alias`: the contexts served at `/clusters/<key>/`
    /// (`None`: no `/clusters` routes). See [`crate::app::clusters`].
    pub(crate) contexts: Option<ContextSelection>,
}

/// Which kubeconfig contexts are served under `/clusters/`, and the keys given to some of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContextSelection {
    /// `--all-contexts`.
    pub(crate) all: bool,
    /// `--contexts`, in the order given.
    pub(crate) names: Vec<String>,
    /// `--cluster-alias KEY=CONTEXT`.
    pub(crate) aliases: Vec<(String, String)>,
}

impl ContextSelection {
    /// The selection the flags ask for, or `None` when they ask for none.
    fn from_cli(cli: &Cli) -> Result<Option<Self>, StartupError> {
        let names: Vec<String> = cli
            .contexts
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        let mut aliases = Vec::new();
        for a in &cli.cluster_alias {
            match a.split_once('=') {
                Some((key, context)) if !key.is_empty() && !context.is_empty() => {
                    aliases.push((key.to_owned(), context.to_owned()))
                }
                _ => {
                    return Err(StartupError::Usage(format!(
                        "--cluster-alias={a:?} is not KEY=CONTEXT: write e.g. --cluster-alias=prod=arn:aws:eks:...:cluster/prod"
                    )))
                }
            }
        }
        if !cli.all_contexts && names.is_empty() {
            if !aliases.is_empty() {
                return Err(StartupError::Usage(
                    "--cluster-alias needs --all-contexts or --contexts: add one of them"
                        .to_owned(),
                ));
            }
            return Ok(None);
        }
        if cli.all_contexts && !names.is_empty() {
            return Err(StartupError::Usage(
                "cannot set --all-contexts and --contexts at the same time: drop one of them"
                    .to_owned(),
            ));
        }
        Ok(Some(Self {
            all: cli.all_contexts,
            names,
            aliases,
        }))
    }
}

/// The environment kept for reloads.
#[derive(Clone)]
pub(crate) struct SharedEnv(pub(crate) Arc<dyn Env>);

impl std::ops::Deref for SharedEnv {
    type Target = dyn Env;
    fn deref(&self) -> &(dyn Env + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for SharedEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Environment values may hold secrets.
        f.write_str("SharedEnv(..)")
    }
}

fn with_slashes(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 2);
    if !prefix.starts_with('/') {
        p.push('/');
    }
    p.push_str(prefix);
    if !p.ends_with('/') {
        p.push('/');
    }
    p
}

impl Config {
    /// Validates the flags and loads the cluster configuration. The environment is kept (cloned) for
    /// reloads.
    pub fn from_cli<E: Env + Clone + 'static>(cli: &Cli, env: &E) -> Result<Config, StartupError> {
        let shared = SharedEnv(Arc::new(env.clone()));
        let env: &dyn Env = env;
        let listen = listen(cli)?;
        let api_prefix = with_slashes(&cli.api_prefix);
        let www = www(cli, &api_prefix)?;
        let filter = filter(cli, &listen)?;

        let (guard, allow_uids) = security_from_cli(cli, &listen, env)?;

        let opts = load_options(cli);
        // ops (hot reload): hash the files before reading them, so a change made meanwhile is seen.
        let baseline = Baseline::before_load(&opts, env);
        let cluster = kubeconfig::load(&opts, env)?;
        let contexts = ContextSelection::from_cli(cli)?;
        let admin_address = admin_address(cli)?;
        if !cluster.server.path.is_empty() && !cli.append_server_path {
            tracing::warn!(
                "Your kube context contains a server path {}, use --append-server-path to automatically append the path to each request",
                cluster.server.path
            );
        }
        let proxy_env = ProxyEnv::from_env(env);
        let route = route_for(&cluster, &proxy_env)?;
        let keepalive = keepalive(cli);
        Ok(Config {
            listen,
            api_prefix,
            www,
            filter,
            cluster,
            append_server_path: cli.append_server_path,
            keepalive,
            shutdown_grace: cli.shutdown_grace.non_negative().unwrap_or_default(),
            http2: env.var("DISABLE_HTTP2").is_none(),
            route,
            proxy_env,
            plugin_env: PluginEnv::capture(env),
            timing: Timing::default(),
            dial_timeout: crate::upstream::dial::DIAL_TIMEOUT,
            header_read_timeout: crate::app::client_io::HEADER_READ_TIMEOUT,
            ping_interval: crate::upstream::Liveness::CLIENT_GO.ping_interval,
            ping_timeout: crate::upstream::Liveness::CLIENT_GO.ping_timeout,
            admin_address,
            access_log: cli.access_log,
            poll_interval: cli
                .config_poll_interval
                .non_negative()
                .filter(|d| !d.is_zero()),
            load: opts,
            env: shared,
            baseline,
            guard,
            allow_uids,
            contexts,
        })
    }
}

/// `--address`/`--port`, or `--unix-socket` (not both).
fn listen(cli: &Cli) -> Result<Listen, StartupError> {
    match &cli.unix_socket {
        Some(_) if cli.port != DEFAULT_PORT => Err(StartupError::Usage(
            "cannot set --unix-socket and --port at the same time: drop one of them".to_owned(),
        )),
        Some(path) => Ok(Listen::Unix(path.clone())),
        None => Ok(Listen::Tcp {
            address: cli.address.clone(),
            port: cli.port,
        }),
    }
}

/// `--www` and its prefix, which must differ from the API prefix.
fn www(cli: &Cli, api_prefix: &str) -> Result<Option<(PathBuf, String)>, StartupError> {
    let www = cli
        .www
        .as_ref()
        .map(|dir| (dir.clone(), with_slashes(&cli.www_prefix)));
    if let Some((_, www_prefix)) = &www {
        if *www_prefix == api_prefix {
            return Err(StartupError::Usage(format!(
                "--www-prefix and --api-prefix are both {api_prefix:?}: give them different values"
            )));
        }
    }
    Ok(www)
}

/// kubectl's request filter, or `None` with `--disable-filter` (warning as kubectl does).
fn filter(cli: &Cli, listen: &Listen) -> Result<Option<Filter>, StartupError> {
    Ok(if cli.disable_filter {
        if !matches!(listen, Listen::Unix(_)) {
            tracing::warn!("Request filter disabled, your proxy is vulnerable to XSRF attacks, please be cautious");
        }
        None
    } else {
        let f = Filter::new(
            &cli.accept_paths,
            &cli.reject_paths,
            &cli.accept_hosts,
            &cli.reject_methods,
        )?;
        if f.relaxed() {
            tracing::warn!("Request filter has been relaxed, your proxy may be vulnerable to attacks, please be cautious");
        }
        Some(f)
    })
}

/// What the cluster configuration is loaded from, and the flags that override it.
fn load_options(cli: &Cli) -> LoadOptions {
    LoadOptions {
        kubeconfig: cli.kubeconfig.clone(),
        context: cli.context.clone(),
        cluster: cli.cluster.clone(),
        user: cli.user.clone(),
        incluster_dir: cli.incluster_dir.clone(),
        overrides: Overrides {
            server: cli.server.clone(),
            token: cli.token.clone(),
            username: cli.username.clone(),
            password: cli.password.clone(),
            certificate_authority: cli.certificate_authority.clone(),
            client_certificate: cli.client_certificate.clone(),
            client_key: cli.client_key.clone(),
            insecure_skip_tls_verify: cli.insecure_skip_tls_verify,
            tls_server_name: cli.tls_server_name.clone(),
            as_user: cli.as_user.clone(),
            as_groups: cli.as_group.clone(),
            as_uid: cli.as_uid.clone(),
            disable_compression: cli.disable_compression,
        },
    }
}

/// `--admin-address`, which needs a port.
fn admin_address(cli: &Cli) -> Result<Option<String>, StartupError> {
    let admin_address = cli.admin_address.clone().filter(|a| !a.is_empty());
    if let Some(a) = &admin_address {
        if !a.contains(':') {
            return Err(StartupError::Usage(format!(
                "--admin-address={a:?} needs a port: use HOST:PORT, e.g. 127.0.0.1:9101"
            )));
        }
    }
    Ok(admin_address)
}

/// TCP keep-alive for upgrade connections (`--keepalive`): `None` disables it.
fn keepalive(cli: &Cli) -> Option<Duration> {
    match cli.keepalive.non_negative() {
        None => None,
        // Go's dialer reads 0 as "the default", 15 s, not "off" as kubectl's help says.
        Some(d) if d.is_zero() => Some(Duration::from_secs(15)),
        Some(d) => Some(d),
    }
}

/// Validates the access-control flags (issue 13). `--auth-token-file=auto` creates its file here and
/// prints its path on stderr (stdout carries only the startup line).
fn security_from_cli(
    cli: &Cli,
    listen: &Listen,
    env: &dyn Env,
) -> Result<(GuardConfig, Vec<u32>), StartupError> {
    let sec = &cli.security;
    let cors_origins = sec
        .cors_allowed_origin
        .iter()
        .map(|o| guard::parse_cors_origin(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartupError::Usage)?;
    let token = match sec.auth_token_file.as_deref() {
        None => None,
        Some("") => {
            return Err(StartupError::Usage(
                "--auth-token-file needs a file name or \"auto\"".to_owned(),
            ))
        }
        Some("auto") => {
            let dir = env
                .non_empty("XDG_RUNTIME_DIR")
                .or_else(|| env.non_empty("TMPDIR"))
                .unwrap_or_else(|| "/tmp".to_owned());
            let token =
                InboundToken::generate(std::path::Path::new(&dir)).map_err(StartupError::Usage)?;
            eprintln!(
                "kproxy: wrote a new token to {} (mode 0600, removed on exit); clients must send it as \"Authorization: Bearer <token>\"",
                token.path().display()
            );
            Some(token)
        }
        Some(path) => {
            Some(InboundToken::from_file(std::path::Path::new(path)).map_err(StartupError::Usage)?)
        }
    };
    if !sec.allow_uid.is_empty() && !matches!(listen, Listen::Unix(_)) {
        return Err(StartupError::Usage(
            "--allow-uid applies to --unix-socket connections only: drop it, or use --auth-token-file for TCP"
                .to_owned(),
        ));
    }
    let config = GuardConfig {
        allow_any_origin: sec.allow_any_origin,
        cors_origins,
        token,
        read_only: sec.read_only,
    };
    Ok((config, sec.allow_uid.clone()))
}

/// How connections reach the cluster's server: its `proxy-url`, else the proxy variables, else directly.
/// Chosen again on every configuration reload.
pub(crate) fn route_for(
    cluster: &ResolvedConfig,
    proxy_env: &ProxyEnv,
) -> Result<Route, StartupError> {
    let target: http::Uri = format!("{}://{}", cluster.server.scheme, cluster.server.authority)
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("server URL: {e}")))?;
    let route = Route::select(cluster.proxy_url.as_deref(), proxy_env, &target)
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    if let Some(proxy) = route.describe() {
        tracing::info!(%proxy, "connecting to the API server through a proxy");
    }
    Ok(route)
}
