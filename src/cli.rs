//! Command-line flags: every `kubectl proxy` flag with kubectl's names, short forms and defaults, the
//! kubeconfig flags kubectl accepts globally, and kproxy's own additions (marked "kproxy:" in `--help`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};

use crate::proxy::filter;

/// kubectl's default port.
pub const DEFAULT_PORT: u16 = 8001;

/// The parsed command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kproxy",
    version,
    about = "Creates a proxy server or application-level gateway between localhost and the Kubernetes API server.\n\
             A drop-in replacement for `kubectl proxy`.",
    override_usage = "kproxy [--port=PORT] [--www=static-dir] [--www-prefix=prefix] [--api-prefix=prefix] [options]",
    // A flag given twice: the last one wins, as with kubectl's pflag (and so a container's `args` can
    // override flags its entrypoint sets).
    args_override_self = true
)]
pub struct Cli {
    /// The port on which to run the proxy. Set to 0 to pick a random port.
    #[arg(short = 'p', long, default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// The IP address on which to serve on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,

    /// Unix socket on which to run the proxy.
    #[arg(short = 'u', long = "unix-socket")]
    pub unix_socket: Option<PathBuf>,

    /// Prefix to serve the proxied API under.
    #[arg(long = "api-prefix", default_value = "/")]
    pub api_prefix: String,

    /// Also serve static files from the given directory under the specified prefix.
    #[arg(short = 'w', long)]
    pub www: Option<PathBuf>,

    /// Prefix to serve static files under, if static file directory is specified.
    #[arg(short = 'P', long = "www-prefix", default_value = "/static/")]
    pub www_prefix: String,

    /// Regular expression for hosts that the proxy should accept.
    #[arg(long = "accept-hosts", default_value = filter::DEFAULT_ACCEPT_HOSTS)]
    pub accept_hosts: String,

    /// Regular expression for paths that the proxy should accept.
    #[arg(long = "accept-paths", default_value = filter::DEFAULT_ACCEPT_PATHS)]
    pub accept_paths: String,

    /// Regular expression for paths that the proxy should reject. Paths specified here will be rejected
    /// even accepted by --accept-paths.
    #[arg(long = "reject-paths", default_value = filter::DEFAULT_REJECT_PATHS)]
    pub reject_paths: String,

    /// Regular expression for HTTP methods that the proxy should reject (example --reject-methods='POST,PUT,PATCH').
    #[arg(long = "reject-methods", default_value = filter::DEFAULT_REJECT_METHODS)]
    pub reject_methods: String,

    /// If true, disable request filtering in the proxy. This is dangerous, and can leave you vulnerable
    /// to XSRF attacks, when used with an accessible port.
    #[arg(long = "disable-filter", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub disable_filter: bool,

    /// TCP keep-alive period for upgrade connections (exec, attach, port-forward) to the API server. 0 means
    /// Go's default of 15s, which is what kubectl does despite its help text; a negative value disables it.
    #[arg(long, default_value = "0s", value_parser = parse_go_duration)]
    pub keepalive: GoDuration,

    /// If true, enables automatic path appending of the kube context server path to each request.
    #[arg(long = "append-server-path", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub append_server_path: bool,

    // ---- kubeconfig and connection flags (kubectl global flags) ----
    /// Path to the kubeconfig file to use for CLI requests.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// The name of the kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,

    /// The name of the kubeconfig cluster to use.
    #[arg(long)]
    pub cluster: Option<String>,

    /// The name of the kubeconfig user to use.
    #[arg(long)]
    pub user: Option<String>,

    /// The address and port of the Kubernetes API server.
    #[arg(short = 's', long)]
    pub server: Option<String>,

    /// Bearer token for authentication to the API server.
    #[arg(long)]
    pub token: Option<String>,

    /// Username for basic authentication to the API server.
    #[arg(long)]
    pub username: Option<String>,

    /// Password for basic authentication to the API server.
    #[arg(long)]
    pub password: Option<String>,

    /// Path to a cert file for the certificate authority.
    #[arg(long = "certificate-authority")]
    pub certificate_authority: Option<PathBuf>,

    /// Path to a client certificate file for TLS.
    #[arg(long = "client-certificate")]
    pub client_certificate: Option<PathBuf>,

    /// Path to a client key file for TLS.
    #[arg(long = "client-key")]
    pub client_key: Option<PathBuf>,

    /// If true, the server's certificate will not be checked for validity. This will make your HTTPS
    /// connections insecure.
    #[arg(long = "insecure-skip-tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub insecure_skip_tls_verify: Option<bool>,

    /// Server name to use for server certificate validation. If it is not provided, the hostname used to
    /// contact the server is used.
    #[arg(long = "tls-server-name")]
    pub tls_server_name: Option<String>,

    /// Username to impersonate for the operation. User could be a regular user or a service account in a namespace.
    #[arg(long = "as")]
    pub as_user: Option<String>,

    /// Group to impersonate for the operation, this flag can be repeated to specify multiple groups.
    #[arg(long = "as-group")]
    pub as_group: Vec<String>,

    /// UID to impersonate for the operation.
    #[arg(long = "as-uid")]
    pub as_uid: Option<String>,

    /// If true, opt-out of response compression for all requests to the server.
    #[arg(long = "disable-compression", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub disable_compression: Option<bool>,

    /// Accepted for compatibility; like kubectl proxy, kproxy puts no timeout on proxied requests.
    #[arg(long = "request-timeout", default_value = "0")]
    pub request_timeout: String,

    /// Accepted for compatibility; the proxy does not use a namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Accepted for compatibility; unused by the proxy.
    #[arg(long = "match-server-version", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, hide = true)]
    pub match_server_version: Option<bool>,

    /// Accepted for compatibility; unused by the proxy.
    #[arg(long = "cache-dir", hide = true)]
    pub cache_dir: Option<PathBuf>,

    /// Number for the log level verbosity (kubectl's klog levels: 3 logs filter decisions, 6 one line per
    /// upstream request, 8 and above headers without credentials).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,

    // ---- kproxy additions ----
    /// kproxy: on SIGINT/SIGTERM, how long in-flight requests may take to finish (watches and other
    /// long-running streams are ended at once).
    #[arg(long = "shutdown-grace", default_value = "5s", value_parser = parse_go_duration)]
    pub shutdown_grace: GoDuration,

    /// kproxy: the service-account directory for in-cluster credentials (token, ca.crt, namespace).
    /// Default: $KPROXY_INCLUSTER_DIR, else /var/run/secrets/kubernetes.io/serviceaccount.
    #[arg(long = "incluster-dir")]
    pub incluster_dir: Option<PathBuf>,

    // ---- kproxy operations (docs/operations.md) ----
    /// kproxy: serve /healthz, /readyz and /metrics (Prometheus) on this HOST:PORT, e.g. 127.0.0.1:9101.
    /// Off by default. It proxies nothing, so in a pod it may listen on 0.0.0.0 for kubelet's probes.
    /// /readyz?exclude=upstream ignores the API server: the readiness for a native sidecar.
    #[arg(long = "admin-address")]
    pub admin_address: Option<String>,

    /// kproxy: write one line per request to stderr: off, text or json. Never includes header values.
    #[arg(long = "access-log", value_enum, default_value = "off", num_args = 0..=1, require_equals = true, default_missing_value = "text")]
    pub access_log: crate::telemetry::access_log::Format,

    /// kproxy: how often to check the kubeconfig (or in-cluster) files for changes and reload them; 0
    /// checks only on SIGHUP.
    #[arg(long = "config-poll-interval", default_value = "2s", value_parser = parse_go_duration)]
    pub config_poll_interval: GoDuration,

    // ---- kproxy: many contexts and scripting (README "Many clusters, one port") ----
    /// kproxy: also serve every kubeconfig context at /clusters/<key>/ (GET /clusters lists the keys);
    /// / keeps serving the current (or --context) context.
    #[arg(long = "all-contexts", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub all_contexts: bool,

    /// kproxy: also serve these kubeconfig contexts (comma-separated) at /clusters/<key>/.
    #[arg(long = "contexts", value_delimiter = ',')]
    pub contexts: Vec<String>,

    /// kproxy: serve context CONTEXT at /clusters/KEY/ instead of its default key (repeatable).
    #[arg(long = "cluster-alias", value_name = "KEY=CONTEXT")]
    pub cluster_alias: Vec<String>,

    /// kproxy: once serving, write a kubeconfig (0600, no credentials) with one context per proxied
    /// context, each pointing at this proxy. `kproxy kubeconfig [FLAGS]` prints it instead of serving.
    #[arg(long = "write-kubeconfig", value_name = "FILE")]
    pub write_kubeconfig: Option<PathBuf>,

    /// kproxy: once serving, write the proxy's URL to this file (atomically); removed at exit.
    #[arg(long = "ready-file", value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// kproxy: run `-- CMD [ARGS]` against the proxy (on a free port unless --port is given) with
    /// KUBECONFIG and KPROXY_URL set, then exit with its status.
    #[arg(long = "exec", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub exec: bool,

    /// The command --exec runs, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,

    // ---- kproxy access control (issue 13, docs/security.md) ----
    #[command(flatten)]
    #[allow(missing_docs)]
    pub security: Security,
}

/// The flags of issue 13 (docs/security.md): who may use the proxy.
#[derive(Debug, Clone, clap::Args)]
pub struct Security {
    /// kproxy: turn off the browser Origin check and accept requests from web pages of any origin, as
    /// kubectl proxy does. Without it, a request whose Origin is not kproxy's own (or listed in
    /// --cors-allowed-origin), or that says Sec-Fetch-Site: cross-site, is refused (403): otherwise any
    /// web page open in your browser could read and change the cluster through the proxy.
    #[arg(long = "allow-any-origin", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub allow_any_origin: bool,

    /// kproxy: let web pages of this exact origin (scheme://host[:port], e.g. http://localhost:3000) use
    /// the proxy through CORS, WebSockets included. Repeatable; no wildcards or patterns. Preflights are
    /// answered by kproxy; credentials mode is never allowed.
    #[arg(long = "cors-allowed-origin", value_name = "ORIGIN")]
    pub cors_allowed_origin: Vec<String>,

    /// kproxy: require every API request to carry this token, as "Authorization: Bearer TOKEN" or as
    /// the WebSocket subprotocol base64url.bearer.authorization.k8s.io.<base64url TOKEN>, so that other
    /// local users and processes cannot borrow your credentials. PATH is a file holding the token;
    /// "auto" writes a new random token to a new 0600 file and prints its path on stderr. A PATH is
    /// re-read when it changes (checked at most once a second).
    #[arg(long = "auth-token-file", value_name = "PATH|auto")]
    pub auth_token_file: Option<String>,

    /// kproxy: with --unix-socket, also accept connections from this user id (repeatable). By default
    /// only the user kproxy runs as may connect (checked with SO_PEERCRED).
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uid: Vec<u32>,

    /// kproxy: refuse everything that could change the cluster: only GET/HEAD/OPTIONS (watches
    /// included), access reviews (SelfSubjectAccessReview, SelfSubjectRulesReview, SelfSubjectReview,
    /// (Local)SubjectAccessReview) and dry runs (dryRun=All) pass; upgrades (exec, attach,
    /// port-forward), services/pods/nodes proxy and client Impersonate-* headers are refused.
    #[arg(long = "read-only", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub read_only: bool,
}

/// A Go `time.Duration` flag value, which may be negative (`--keepalive=-1s` disables keep-alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration {
    /// Whether the value was negative.
    pub negative: bool,
    /// The magnitude.
    pub magnitude: Duration,
}

impl GoDuration {
    /// The value as a non-negative duration, or `None` when it was negative.
    pub fn non_negative(self) -> Option<Duration> {
        (!self.negative).then_some(self.magnitude)
    }
}

/// Parses Go's duration syntax: `0`, `300ms`, `1.5h`, `1m30s`, `-1s`; units ns, us, µs, ms, s, m, h.
pub fn parse_go_duration(s: &str) -> Result<GoDuration, String> {
    let err = || format!("invalid duration {s:?}: use Go syntax such as 30s, 1m30s or 500ms");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(GoDuration {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_end == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| err())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Ok(GoDuration {
        negative,
        magnitude: Duration::try_from_secs_f64(total).map_err(|_| err())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s).unwrap();
        assert_eq!(d("0").magnitude, Duration::ZERO);
        assert_eq!(d("0s").magnitude, Duration::ZERO);
        assert_eq!(d("1m30s").magnitude, Duration::from_secs(90));
        assert_eq!(d("500ms").magnitude, Duration::from_millis(500));
        assert_eq!(d("1.5h").magnitude, Duration::from_secs(5400));
        assert!(d("-1s").negative);
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("1x").is_err());
    }

    #[test]
    fn kubectl_flag_spellings() {
        let cli = Cli::try_parse_from([
            "kproxy",
            "-p",
            "0",
            "--address=::1",
            "--disable-filter",
            "--api-prefix",
            "/k8s",
            "--as-group=a",
            "--as-group",
            "b",
            "--insecure-skip-tls-verify=false",
            "-v=6",
        ])
        .unwrap();
        assert_eq!(cli.port, 0);
        assert_eq!(cli.address, "::1");
        assert!(cli.disable_filter);
        assert_eq!(cli.api_prefix, "/k8s");
        assert_eq!(cli.as_group, ["a", "b"]);
        assert_eq!(cli.insecure_skip_tls_verify, Some(false));
        assert_eq!(cli.verbosity, 6);
        let cli = Cli::try_parse_from(["kproxy", "--disable-filter=false"]).unwrap();
        assert!(!cli.disable_filter);
    }

    #[test]
    fn the_last_of_a_repeated_flag_wins() {
        let cli = Cli::try_parse_from([
            "kproxy",
            "--address=127.0.0.1",
            "--address=0.0.0.0",
            "-p",
            "1",
            "--port=2",
            "--as-group=a",
            "--as-group=b",
        ])
        .unwrap();
        assert_eq!(cli.address, "0.0.0.0");
        assert_eq!(cli.port, 2);
        assert_eq!(cli.as_group, ["a", "b"], "repeatable flags still collect");
    }
}
