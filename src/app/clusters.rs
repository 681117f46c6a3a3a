//! Many contexts behind one port (`--all-contexts`, `--contexts`): each selected kubeconfig context is
//! served at `/clusters/<key>/…` by a router of its own, built by the same [`build::build_router`] the
//! default context uses, with its own credentials, TLS, impersonation, `proxy-url` and connections.
//! A context's router is built on its first request, so an unreachable or unauthenticated context costs
//! nothing until it is used. `GET /clusters` lists the keys. `/` keeps serving the default context.
//!
//! Keys: the context name when it matches `^[A-Za-z0-9._-]{1,63}$`, else a deterministic slug (the
//! name's allowed characters, runs of others as `-`, cut to fit, plus `-` and 8 hex digits of a hash
//! of the name), unless `--cluster-alias KEY=CONTEXT` names one.
//!
//! A `Location` the API server sends that points at `/api/…` or `/apis/…` is rewritten to keep the
//! prefix.
//!
//! The override flags (`--server`, `--token`, `--as`, …) apply to `/` only; each `/clusters/<key>/`
//! uses its context as the kubeconfig writes it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::build::{self, Lifecycle};
use crate::app::config::{self, Config};
use crate::app::error::StartupError;
use crate::kube::kubeconfig::{self, LoadOptions};
use crate::proxy::router::Router;
use crate::telemetry::metrics::UpstreamStats;
use crate::telemetry::observe::{self, ObservedBody, Telemetry};
use crate::wire::body::Body;
use crate::wire::status;

/// Where the contexts are served: `/clusters/<key>/…`, and the listing at `/clusters`.
pub const PREFIX: &str = "/clusters";

/// Whether `path` (raw) belongs to the `/clusters` routes. No allocation.
pub fn is_prefixed(path: &str) -> bool {
    match path.strip_prefix(PREFIX) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether `key` can be used as it is: `^[A-Za-z0-9._-]{1,63}$`.
pub fn valid_key(key: &str) -> bool {
    (1..=63).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && key != "."
        && key != ".."
}

/// The key of a context without an alias: its name when valid, else a deterministic slug.
pub fn key_for(context: &str) -> String {
    if valid_key(context) {
        return context.to_owned();
    }
    let mut slug = String::with_capacity(context.len());
    for c in context.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches(|c| c == '-' || c == '.');
    // The hash keeps two names that slug alike apart, and a slug apart from a valid name.
    let hash = fnv1a(context.as_bytes());
    let keep = slug.len().min(63 - 9);
    if keep == 0 {
        return format!("context-{hash:08x}");
    }
    format!("{}-{hash:08x}", &slug[..keep])
}

/// 32-bit FNV-1a: stable across versions and platforms, which is all a key needs.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// One served context.
pub struct Entry {
    /// The path segment after `/clusters/`.
    pub key: String,
    /// The kubeconfig context.
    pub context: String,
    /// The kubeconfig cluster it uses.
    pub cluster: String,
    /// The API server URL (`None` when the context cannot be loaded).
    pub server: Option<String>,
    /// The context's namespace.
    pub namespace: Option<String>,
    /// The configuration its router is built from, or why the context cannot be served.
    config: Result<Box<Config>, String>,
    /// Built on first use.
    built: tokio::sync::OnceCell<(Arc<Router>, Arc<UpstreamStats>)>,
}

impl Entry {
    /// The path this context is served under: `/clusters/<key>/`.
    pub fn path(&self) -> String {
        format!("{PREFIX}/{}/", self.key)
    }

    /// The router, built on first use (off the request thread: it reads files). A failure is not
    /// kept: the next request tries again.
    async fn router(
        &self,
        lifecycle: &Lifecycle,
    ) -> Result<&(Arc<Router>, Arc<UpstreamStats>), String> {
        let config = self.config.as_ref().map_err(Clone::clone)?;
        self.built
            .get_or_try_init(|| async {
                let config = (**config).clone();
                let lifecycle = lifecycle.clone();
                let context = self.context.clone();
                let key = self.key.clone();
                tokio::task::spawn_blocking(move || {
                    let router = build::build_router(&config, &key, &lifecycle)?;
                    let stats = router.proxy().stats().clone();
                    Ok::<_, StartupError>((router, stats))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| {
                    let message = e.to_string();
                    tracing::warn!(context = %context, "cannot serve the context: {message}");
                    message
                })
            })
            .await
    }
}

/// The contexts served under `/clusters/`.
pub struct ClusterSet {
    entries: Vec<Entry>,
    /// The context `/` serves, marked `default` in the listing.
    default_context: Option<String>,
    lifecycle: Lifecycle,
}

impl ClusterSet {
    /// Resolves the contexts `config` selects (nothing is built yet), or `None` when it selects none.
    /// A context named by `--contexts` that cannot be loaded is a startup error; with `--all-contexts`
    /// it is reported once and answers 503 when used.
    pub fn resolve(
        config: &Config,
        lifecycle: &Lifecycle,
    ) -> Result<Option<Arc<ClusterSet>>, StartupError> {
        let Some(selection) = &config.contexts else {
            return Ok(None);
        };
        let own = |prefix: &str| is_prefixed(prefix.trim_end_matches('/'));
        if own(&config.api_prefix) || config.www.as_ref().is_some_and(|(_, p)| own(p)) {
            return Err(StartupError::Usage(format!(
                "{PREFIX}/ is where --all-contexts and --contexts serve the contexts: choose another --api-prefix or --www-prefix"
            )));
        }
        // Read once for every context: with 20 contexts, reading them per context took startup from
        // 2.5 to 10.1 ms (bench/README.md).
        let files = kubeconfig::Kubeconfigs::read(&config.load, &*config.env)?;
        let (all, current) = files.contexts();
        let chosen: Vec<kubeconfig::ContextEntry> = if selection.all {
            if all.is_empty() {
                return Err(StartupError::Usage(
                    "--all-contexts: the kubeconfig defines no context; pass --kubeconfig=FILE with contexts, or drop --all-contexts".to_owned(),
                ));
            }
            all.clone()
        } else {
            let mut chosen = Vec::new();
            for name in &selection.names {
                let entry = all.iter().find(|c| c.name == *name).ok_or_else(|| {
                    StartupError::Usage(format!(
                        "--contexts: context {name:?} not found in kubeconfig: list them with `kubectl config get-contexts`"
                    ))
                })?;
                if !chosen.contains(entry) {
                    chosen.push(entry.clone());
                }
            }
            chosen
        };
        for (key, context) in &selection.aliases {
            if !valid_key(key) {
                return Err(StartupError::Usage(format!(
                    "--cluster-alias: key {key:?} must match ^[A-Za-z0-9._-]{{1,63}}$: choose a shorter or plainer key"
                )));
            }
            if !chosen.iter().any(|c| c.name == *context) {
                return Err(StartupError::Usage(format!(
                    "--cluster-alias: context {context:?} is not served: add it to --contexts (or use --all-contexts)"
                )));
            }
        }
        let default_context = match &config.cluster.source {
            kubeconfig::Source::Kubeconfig { context, .. } => context.clone(),
            kubeconfig::Source::InCluster { .. } => None,
        }
        .or(current);

        let mut entries: Vec<Entry> = Vec::with_capacity(chosen.len());
        for c in chosen {
            let key = selection
                .aliases
                .iter()
                .rev()
                .find(|(_, context)| *context == c.name)
                .map(|(key, _)| key.clone())
                .unwrap_or_else(|| key_for(&c.name));
            if let Some(other) = entries.iter().find(|e| e.key == key) {
                return Err(StartupError::Usage(format!(
                    "contexts {:?} and {:?} both get the key {key:?}: give one another key with --cluster-alias=KEY=CONTEXT",
                    other.context, c.name
                )));
            }
            let resolved = context_config(config, &files, &c.name, &key);
            if let Err(e) = &resolved {
                if !selection.all {
                    return Err(StartupError::Usage(format!(
                        "--contexts: context {:?}: {e}",
                        c.name
                    )));
                }
                tracing::warn!(context = %c.name, "cannot serve the context at {PREFIX}/{key}/: {e}");
            }
            let (server, namespace) = match &resolved {
                Ok(cfg) => (
                    Some(cfg.cluster.server.to_string()),
                    cfg.cluster.namespace.clone(),
                ),
                Err(_) => (None, None),
            };
            entries.push(Entry {
                key,
                context: c.name,
                cluster: c.cluster,
                server,
                namespace,
                config: resolved.map(Box::new),
                built: tokio::sync::OnceCell::new(),
            });
        }
        Ok(Some(Arc::new(ClusterSet {
            entries,
            default_context,
            lifecycle: lifecycle.clone(),
        })))
    }

    /// The served contexts, in kubeconfig (or `--contexts`) order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The context `/` serves.
    pub fn default_context(&self) -> Option<&str> {
        self.default_context.as_deref()
    }

    /// Answers a request whose path [`is_prefixed`]. `local` is the default router, whose checks guard
    /// the answers kproxy gives here itself (the listing, an unknown key, a context it cannot serve), and `local_stats` the statistics answers kproxy gives itself are counted under.
    pub async fn handle(
        &self,
        telemetry: &Arc<Telemetry>,
        local: &Router,
        local_stats: &Arc<UpstreamStats>,
        req: Request<Incoming>,
        remote: Option<SocketAddr>,
    ) -> Response<ObservedBody> {
        let rest = &req.uri().path()[PREFIX.len()..];
        let key = rest
            .strip_prefix('/')
            .map(|r| r.split('/').next().unwrap_or(""))
            .unwrap_or("");
        if key.is_empty() {
            let answer = self.listing(local, &req);
            return observe::handle(telemetry, local_stats, req, |_| async { answer }).await;
        }
        let Some(entry) = self.entries.iter().find(|e| e.key == key) else {
            let answer = local.answer_beside(&req, PREFIX, || {
                status::response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("no cluster has the key {key:?}: GET {PREFIX} lists the keys"),
                )
            });
            return observe::handle(telemetry, local_stats, req, |_| async { answer }).await;
        };
        match entry.router(&self.lifecycle).await {
            Ok((router, stats)) => {
                observe::handle(telemetry, stats, req, |req| async {
                    let mut resp = router.handle(req, remote).await;
                    keep_prefix(&mut resp, &entry.key);
                    resp
                })
                .await
            }
            Err(message) => {
                let answer = local.answer_beside(&req, PREFIX, || {
                    status::response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        &format!("kproxy cannot serve context {:?}: {message}", entry.context),
                    )
                });
                let stats = telemetry.metrics.local_for(&entry.key);
                observe::handle(telemetry, &stats, req, |_| async { answer }).await
            }
        }
    }

    /// `GET /clusters`: the served contexts as JSON, after the checks every API request passes.
    fn listing(&self, local: &Router, req: &Request<Incoming>) -> Response<Body> {
        local.answer_beside(req, PREFIX, || self.list(req))
    }

    fn list(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = status::response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{PREFIX} only answers GET"),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let clusters: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| {
                let mut v = serde_json::json!({
                    "key": e.key,
                    "context": e.context,
                    "cluster": e.cluster,
                    "server": e.server,
                    "namespace": e.namespace,
                    "path": e.path(),
                    "default": self.default_context.as_deref() == Some(e.context.as_str()),
                });
                if let Err(message) = &e.config {
                    v["error"] = serde_json::Value::String(message.clone());
                }
                v
            })
            .collect();
        let mut body = serde_json::to_vec_pretty(&serde_json::json!({ "clusters": clusters }))
            .unwrap_or_default();
        body.push(b'\n');
        let mut resp = Response::new(Body::full(body));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, status::JSON);
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        resp
    }
}

/// Rewrites a `Location` that points at the API without the prefix (`/api/…`, `/apis/…`: the API
/// server's service proxy redirects `…/proxy` to `…/proxy/` so) to keep it: `/clusters/<key>/api/…`.
fn keep_prefix(resp: &mut Response<Body>, key: &str) {
    let Some(location) = resp.headers().get(header::LOCATION) else {
        return;
    };
    let Ok(location) = location.to_str() else {
        return;
    };
    let api = ["/api", "/apis"].iter().any(|p| {
        location
            .strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
    });
    if !api {
        return;
    }
    if let Ok(v) = HeaderValue::try_from(format!("{PREFIX}/{key}{location}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
}

/// The configuration `/clusters/<key>/` is served with: `config`, with the context's own cluster,
/// user and route, under its prefix, without static files and without the override flags.
fn context_config(
    config: &Config,
    files: &kubeconfig::Kubeconfigs,
    context: &str,
    key: &str,
) -> Result<Config, String> {
    let opts = LoadOptions {
        kubeconfig: config.load.kubeconfig.clone(),
        context: Some(context.to_owned()),
        incluster_dir: config.load.incluster_dir.clone(),
        ..LoadOptions::default()
    };
    let cluster = files
        .resolve(&opts, &*config.env)
        .map_err(|e| e.to_string())?;
    let route = config::route_for(&cluster, &config.proxy_env).map_err(|e| e.to_string())?;
    Ok(Config {
        api_prefix: format!("{PREFIX}/{key}/"),
        www: None,
        cluster,
        route,
        load: opts,
        baseline: Default::default(),
        contexts: None,
        admin_address: None,
        ..config.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key_for("prod"), "prod");
        assert_eq!(key_for("kind-kind_1.2"), "kind-kind_1.2");
        let arn = "arn:aws:eks:us-east-1:123456789012:cluster/prod";
        let k = key_for(arn);
        assert!(
            k.starts_with("arn-aws-eks-us-east-1-123456789012-cluster-prod-"),
            "{k}"
        );
        assert!(valid_key(&k), "{k}");
        assert_eq!(k, key_for(arn), "deterministic");
        assert_ne!(key_for("a/b"), key_for("a:b"));
        let long = "x".repeat(100);
        assert!(valid_key(&key_for(&long)));
        assert!(valid_key(&key_for("///")));
        assert!(valid_key(&key_for("..")));
        assert!(!valid_key(""));
        assert!(!valid_key(&"y".repeat(64)));
    }

    #[test]
    fn prefix() {
        assert!(is_prefixed("/clusters"));
        assert!(is_prefixed("/clusters/"));
        assert!(is_prefixed("/clusters/a/api"));
        assert!(!is_prefixed("/clustersx"));
        assert!(!is_prefixed("/api/v1/clusters"));
    }
}
