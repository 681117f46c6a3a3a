//! The kubeconfig kproxy writes for its clients (`kproxy kubeconfig`, `--write-kubeconfig`, `--exec`):
//! one context per proxied context, each pointing at the proxy (`/clusters/<key>` for the contexts
//! served there, the proxy's root for the default one when it is not among them), the namespace kept,
//! and no credential: the proxy adds those.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::app::clusters::{ClusterSet, PREFIX};
use crate::app::config::{Config, Listen};
use crate::app::error::StartupError;
use crate::kube::kubeconfig::Source;

/// The URL clients reach the proxy at: a wildcard listen address becomes the loopback one (which the
/// default `--accept-hosts` accepts).
pub fn url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// The URL a proxy started with `config` will listen at, for `kproxy kubeconfig` (which does not bind).
pub fn url_from_config(config: &Config) -> Result<String, StartupError> {
    match &config.listen {
        Listen::Unix(_) => Err(StartupError::Usage(
            "a kubeconfig cannot point at a unix socket: drop --unix-socket".to_owned(),
        )),
        Listen::Tcp { port: 0, .. } => Err(StartupError::Usage(
            "kproxy kubeconfig needs the port the proxy listens on: pass --port=PORT (not 0)"
                .to_owned(),
        )),
        Listen::Tcp { address, port } => {
            let host = address
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(address);
            Ok(match host.parse::<IpAddr>() {
                Ok(ip) => url_for(SocketAddr::new(ip, *port)),
                Err(_) => format!("http://{host}:{port}"),
            })
        }
    }
}

/// The kubeconfig for a proxy at `url` (no trailing `/`) serving `config` and `clusters`.
pub fn render(url: &str, config: &Config, clusters: Option<&ClusterSet>) -> String {
    let default_context = match &config.cluster.source {
        Source::Kubeconfig { context, .. } => context.clone(),
        Source::InCluster { .. } => None,
    };
    // (context name, cluster name, server, namespace)
    let mut contexts: Vec<(String, String, String, Option<String>)> = Vec::new();
    let served_default = clusters.is_some_and(|set| {
        set.default_context()
            .is_some_and(|d| set.entries().iter().any(|e| e.context == d))
    });
    if !served_default {
        let name = default_context.unwrap_or_else(|| "kproxy".to_owned());
        contexts.push((
            name,
            "kproxy".to_owned(),
            url.to_owned(),
            config.cluster.namespace.clone(),
        ));
    }
    for e in clusters.map(ClusterSet::entries).unwrap_or_default() {
        contexts.push((
            e.context.clone(),
            e.key.clone(),
            format!("{url}{PREFIX}/{}", e.key),
            e.namespace.clone(),
        ));
    }
    let current = clusters
        .and_then(ClusterSet::default_context)
        .filter(|d| contexts.iter().any(|c| c.0 == *d))
        .map(str::to_owned)
        .or_else(|| contexts.first().map(|c| c.0.clone()))
        .unwrap_or_default();

    // Strings are written JSON-quoted: a JSON string is a valid YAML double-quoted scalar.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = String::from("apiVersion: v1\nkind: Config\npreferences: {}\nclusters:\n");
    for (_, cluster, server, _) in &contexts {
        let _ = write!(
            out,
            "- name: {}\n  cluster:\n    server: {}\n",
            q(cluster),
            q(server)
        );
    }
    out.push_str("contexts:\n");
    for (name, cluster, _, namespace) in &contexts {
        let _ = write!(
            out,
            "- name: {}\n  context:\n    cluster: {}\n    user: \"kproxy\"\n",
            q(name),
            q(cluster)
        );
        if let Some(ns) = namespace {
            let _ = writeln!(out, "    namespace: {}", q(ns));
        }
    }
    let _ = write!(
        out,
        "current-context: {}\nusers:\n- name: \"kproxy\"\n  user: {{}}\n",
        q(&current)
    );
    out
}

/// Writes `contents` to `path` with mode 0600, atomically (a temporary file beside it, renamed).
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kproxy-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
