//! Prometheus metrics for the admin listener's `/metrics`, rendered in the Prometheus text format
//! (0.0.4) by `prometheus-client`, the official Prometheus client for Rust.
//!
//! The hot path never looks a series up by its labels: every counter a request touches is a plain
//! atomic reached through handles fixed when the router was built ([`UpstreamStats`], one per API
//! server URL, held by the router snapshot). Labels are bounded: `method` is one of [`METHODS`]
//! (`OTHER` for extension methods), `code` is the numeric status, `upstream` is the API server URL of a
//! configuration that was in force (or `none` for answers kproxy gives itself), and `cluster` is the
//! `/clusters/<key>/` key a request came in under: at most one per served context, and absent for
//! requests at `/`, so a kproxy serving one cluster renders the same series it always did. The
//! per-code counters of a method are allocated the first time that method is seen, so an idle kproxy carries a few
//! hundred bytes of metrics. The registry only describes how to render these atomics
//! ([`Collector`]); it is built when the admin listener starts.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use tokio_util::task::TaskTracker;

/// The `method` label values; anything else counts as `OTHER`.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// The `upstream` label of requests kproxy answered without contacting an API server (filter
/// rejections, redirects, 404s, static files).
pub const NO_UPSTREAM: &str = "none";

/// Upper bounds (seconds) of the request-duration histogram: from a loopback round trip to a minute.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// The same bounds in microseconds, for the integer comparison on the hot path.
const LATENCY_BUCKETS_US: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Why kproxy refused a request itself (issue 13: origin checks, inbound authentication, read-only
/// mode): the bounded `reason` label of `kproxy_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// `Origin` neither kproxy's own nor in `--cors-allowed-origin`.
    Origin,
    /// `Sec-Fetch-Site: cross-site` without an allowed `Origin`.
    CrossSite,
    /// `--auth-token-file`: no token, or a wrong one.
    Token,
    /// A unix-socket peer whose uid is neither kproxy's nor in `--allow-uid`.
    PeerUid,
    /// `--read-only`: a write without `dryRun=All`.
    ReadOnlyWrite,
    /// `--read-only`: a protocol upgrade (exec, attach, port-forward, WebSocket watches).
    ReadOnlyUpgrade,
    /// `--read-only`: the `services|pods|nodes/*/proxy` subresources.
    ReadOnlyProxy,
    /// `--read-only`: client `Impersonate-*` headers.
    ReadOnlyImpersonate,
}

impl RefusalReason {
    /// Every reason, in label order.
    pub const ALL: [RefusalReason; 8] = [
        RefusalReason::Origin,
        RefusalReason::CrossSite,
        RefusalReason::Token,
        RefusalReason::PeerUid,
        RefusalReason::ReadOnlyWrite,
        RefusalReason::ReadOnlyUpgrade,
        RefusalReason::ReadOnlyProxy,
        RefusalReason::ReadOnlyImpersonate,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::Origin => "origin",
            RefusalReason::CrossSite => "cross_site",
            RefusalReason::Token => "token",
            RefusalReason::PeerUid => "peer_uid",
            RefusalReason::ReadOnlyWrite => "read_only_write",
            RefusalReason::ReadOnlyUpgrade => "read_only_upgrade",
            RefusalReason::ReadOnlyProxy => "read_only_proxy",
            RefusalReason::ReadOnlyImpersonate => "read_only_impersonate",
        }
    }
}

/// Status codes are counted by their number, 100 to 999 (what `http::StatusCode` allows).
const CODES: usize = 900;

/// A request method's index into [`METHODS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodIndex(u8);

impl MethodIndex {
    /// The index of `method`; extension methods share `OTHER`.
    pub fn of(method: &Method) -> Self {
        let i = match method.as_str() {
            "GET" => 0,
            "HEAD" => 1,
            "POST" => 2,
            "PUT" => 3,
            "PATCH" => 4,
            "DELETE" => 5,
            "OPTIONS" => 6,
            "CONNECT" => 7,
            "TRACE" => 8,
            _ => 9,
        };
        MethodIndex(i)
    }
}

/// A latency histogram of atomics (prometheus-client's own histogram takes a lock per observation).
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket, not cumulative; the last slot is "above the largest bound".
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts); the count is the sum of the buckets read, so the
    /// rendered series stay consistent while requests keep arriving.
    fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            count += n;
            if let Some(&le) = LATENCY_BUCKETS.get(i) {
                buckets.push((le, n));
            }
        }
        (self.sum_us.load(Relaxed) as f64 / 1e6, count, buckets)
    }
}

/// Everything counted per route and API server URL. One exists per distinct (cluster key, URL) pair
/// a configuration has named; a reload back to the same URL continues the same series.
#[derive(Debug)]
pub struct UpstreamStats {
    /// The `cluster` label: the `/clusters/<key>/` key, empty for `/`.
    cluster: String,
    /// The `upstream` label: the server URL, or [`NO_UPSTREAM`].
    label: String,
    /// Per method, per status code (index `code - 100`); allocated on the method's first request.
    requests: [OnceLock<Box<[AtomicU64]>>; METHODS.len()],
    /// Per method; long-running requests and upgrades are left out.
    latency: [Histogram; METHODS.len()],
    /// Request body bytes as declared by `Content-Length`.
    request_bytes: AtomicU64,
    /// Response body bytes relayed to clients.
    response_bytes: AtomicU64,
    /// Upstream connections opened (upgrade tunnels excluded).
    connections_opened: AtomicU64,
    /// Upstream connections currently open (upgrade tunnels excluded).
    connections_open: AtomicI64,
    /// Failed connection attempts (TCP, TLS).
    connect_errors: AtomicU64,
    /// Where the answers kproxy gives itself on the same route are counted (`upstream="none"`, same
    /// `cluster`); `None` for those statistics themselves.
    own: Option<Arc<UpstreamStats>>,
}

impl UpstreamStats {
    fn new(cluster: String, label: String, own: Option<Arc<UpstreamStats>>) -> Self {
        Self {
            own,
            cluster,
            label,
            requests: Default::default(),
            latency: Default::default(),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_open: AtomicI64::new(0),
            connect_errors: AtomicU64::new(0),
        }
    }

    /// The `upstream` label value.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The `cluster` label value: the `/clusters/<key>/` key, empty for requests at `/`.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The statistics of the answers kproxy gives itself on this route, fixed at creation so that
    /// switching to them on the request path looks nothing up.
    pub fn own_answers(self: &Arc<Self>) -> Arc<UpstreamStats> {
        self.own.clone().unwrap_or_else(|| self.clone())
    }

    /// The label set of a series of these statistics: `base`, then `cluster` (when not `/`), then
    /// `upstream`.
    fn labels<'a>(&'a self, base: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut labels = Vec::with_capacity(base.len() + 2);
        labels.extend_from_slice(base);
        if !self.cluster.is_empty() {
            labels.push(("cluster", self.cluster.as_str()));
        }
        labels.push(("upstream", self.label.as_str()));
        labels
    }

    /// Counts one finished request.
    pub fn record(
        &self,
        method: MethodIndex,
        status: u16,
        duration: Option<Duration>,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let row = self.requests[method.0 as usize]
            .get_or_init(|| (0..CODES).map(|_| AtomicU64::new(0)).collect());
        let code = usize::from(status.clamp(100, 999)) - 100;
        row[code].fetch_add(1, Relaxed);
        if let Some(d) = duration {
            self.latency[method.0 as usize].observe(d);
        }
        if bytes_in > 0 {
            self.request_bytes.fetch_add(bytes_in, Relaxed);
        }
        if bytes_out > 0 {
            self.response_bytes.fetch_add(bytes_out, Relaxed);
        }
    }
}

/// All metrics of one kproxy instance.
#[derive(Debug)]
pub struct Metrics {
    /// Per cluster key and API server URL, in order of first use (kproxy's own answers under a
    /// `/clusters/<key>/` prefix too). Looked up only when a router is built and for kproxy's own
    /// answers under a prefix.
    upstreams: Mutex<Vec<Arc<UpstreamStats>>>,
    /// Requests at `/` answered by kproxy itself.
    local: Arc<UpstreamStats>,
    /// Requests received whose response has not finished.
    pub(crate) in_flight: AtomicI64,
    /// Watches and followed logs currently streaming.
    pub(crate) open_watches: AtomicI64,
    /// Credential refreshes (token file re-reads, and whatever refreshing sources report).
    pub(crate) credential_refreshes: AtomicU64,
    /// Failed credential refreshes.
    pub(crate) credential_refresh_failures: AtomicU64,
    /// Requests that could not be given a credential at all.
    pub(crate) credential_errors: AtomicU64,
    /// Configuration reloads that took effect.
    pub(crate) reloads: AtomicU64,
    /// Configuration reloads that failed (the previous configuration stayed in force).
    pub(crate) reload_failures: AtomicU64,
    /// Unix time of the last successful reload (0: none yet).
    pub(crate) last_reload_unix: AtomicU64,
    /// Milliseconds after `started` (plus one) of the last answer from an API server, any status (0:
    /// none yet). Relative, so the hot path reuses readiness's monotonic clock reading.
    pub(crate) last_upstream_answer_ms: AtomicU64,
    /// Requests (and unix-socket connections) kproxy refused, by [`RefusalReason`].
    refusals: [AtomicU64; RefusalReason::ALL.len()],
    /// Upgrade tunnels (exec, attach, port-forward) still open.
    tunnels: TaskTracker,
    /// When this instance started.
    started: SystemTime,
}

impl Metrics {
    /// Metrics that read open tunnels from `tunnels`.
    pub fn new(tunnels: TaskTracker) -> Self {
        Self {
            upstreams: Mutex::new(Vec::new()),
            local: Arc::new(UpstreamStats::new(
                String::new(),
                NO_UPSTREAM.to_owned(),
                None,
            )),
            in_flight: AtomicI64::new(0),
            open_watches: AtomicI64::new(0),
            credential_refreshes: AtomicU64::new(0),
            credential_refresh_failures: AtomicU64::new(0),
            credential_errors: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_reload_unix: AtomicU64::new(0),
            last_upstream_answer_ms: AtomicU64::new(0),
            refusals: Default::default(),
            tunnels,
            started: SystemTime::now(),
        }
    }

    /// The statistics of requests under `cluster` (a `/clusters/<key>/` key, empty for `/`) for the
    /// API server at `url`, created on first use.
    pub fn upstream(&self, cluster: &str, url: &str) -> Arc<UpstreamStats> {
        // Found before the lock below is taken: it takes the same lock.
        let own = (url != NO_UPSTREAM).then(|| self.local_for(cluster));
        let mut all = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = all.iter().find(|s| s.label == url && s.cluster == cluster) {
            return s.clone();
        }
        let s = Arc::new(UpstreamStats::new(cluster.to_owned(), url.to_owned(), own));
        all.push(s.clone());
        s
    }

    /// Counts one refusal.
    pub fn refused(&self, reason: RefusalReason) {
        self.refusals[reason as usize].fetch_add(1, Relaxed);
    }

    /// How many refusals of `reason` were counted.
    pub fn refusals(&self, reason: RefusalReason) -> u64 {
        self.refusals[reason as usize].load(Relaxed)
    }

    /// The statistics of requests at `/` kproxy answered itself.
    pub fn local(&self) -> &Arc<UpstreamStats> {
        &self.local
    }

    /// The statistics of requests under `cluster` (empty for `/`) kproxy answered itself.
    pub fn local_for(&self, cluster: &str) -> Arc<UpstreamStats> {
        if cluster.is_empty() {
            self.local.clone()
        } else {
            self.upstream(cluster, NO_UPSTREAM)
        }
    }

    /// Renders every metric in the Prometheus text format (0.0.4).
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    fn all_upstreams(&self) -> Vec<Arc<UpstreamStats>> {
        let mut all = vec![self.local.clone()];
        all.extend(
            self.upstreams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        all
    }
}

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: V,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    m.encode_gauge(&value)
}

/// One counter family labelled by upstream.
fn per_upstream(
    enc: &mut DescriptorEncoder<'_>,
    all: &[Arc<UpstreamStats>],
    name: &str,
    help: &str,
    metric_type: MetricType,
    value: impl Fn(&UpstreamStats) -> Option<i64>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, metric_type)?;
    for s in all {
        let Some(v) = value(s) else { continue };
        let labels = s.labels(&[]);
        let mut series = m.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => {
                series.encode_counter::<NoLabelSet, _, u64>(&(v.max(0) as u64), None)?
            }
            _ => series.encode_gauge(&v)?,
        }
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let all = self.all_upstreams();
        encode_requests(&mut enc, &all)?;
        encode_traffic(&mut enc, &all)?;
        self.encode_activity(&mut enc)?;
        self.encode_lifecycle(&mut enc)?;
        process::encode(&mut enc)
    }
}

/// `kproxy_requests_total` and `kproxy_request_duration_seconds`, per route and upstream.
fn encode_requests(
    enc: &mut DescriptorEncoder<'_>,
    all: &[Arc<UpstreamStats>],
) -> std::fmt::Result {
    {
        let mut m = enc.encode_descriptor(
            "kproxy_requests",
            "Requests answered, by method, status code, cluster key (requests under /clusters/<key>/) and the API server they were for (\"none\": answered by kproxy itself)",
            None,
            MetricType::Counter,
        )?;
        let mut code_buf = itoa_buf();
        for s in all {
            for (mi, row) in s.requests.iter().enumerate() {
                let Some(row) = row.get() else { continue };
                for (ci, n) in row.iter().enumerate() {
                    let n = n.load(Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let code = fmt_code(&mut code_buf, ci + 100);
                    let labels = s.labels(&[("method", METHODS[mi]), ("code", code)]);
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "kproxy_request_duration_seconds",
            "Time from a request's headers to the end of its response body; watches, followed logs and upgrades are left out",
            None,
            MetricType::Histogram,
        )?;
        for s in all {
            for (mi, h) in s.latency.iter().enumerate() {
                let (sum, count, buckets) = h.read();
                if count == 0 {
                    continue;
                }
                let labels = s.labels(&[("method", METHODS[mi])]);
                m.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
    }
    Ok(())
}

/// Body bytes per route and upstream, and the connections to each API server.
fn encode_traffic(enc: &mut DescriptorEncoder<'_>, all: &[Arc<UpstreamStats>]) -> std::fmt::Result {
    // kproxy's own answers open no connection.
    let real: Vec<_> = all
        .iter()
        .filter(|s| s.label != NO_UPSTREAM)
        .cloned()
        .collect();
    per_upstream(
        enc,
        all,
        "kproxy_request_body_bytes",
        "Request body bytes received from clients, as declared by Content-Length",
        MetricType::Counter,
        |s| Some(s.request_bytes.load(Relaxed) as i64),
    )?;
    per_upstream(
        enc,
        all,
        "kproxy_response_body_bytes",
        "Response body bytes sent to clients",
        MetricType::Counter,
        |s| Some(s.response_bytes.load(Relaxed) as i64),
    )?;
    per_upstream(
        enc,
        &real,
        "kproxy_upstream_connections_opened",
        "Connections kproxy opened to the API server (upgrade tunnels excluded)",
        MetricType::Counter,
        |s| Some(s.connections_opened.load(Relaxed) as i64),
    )?;
    per_upstream(
        enc,
        &real,
        "kproxy_upstream_connections",
        "Connections to the API server that are open now (upgrade tunnels excluded)",
        MetricType::Gauge,
        |s| Some(s.connections_open.load(Relaxed)),
    )?;
    per_upstream(
        enc,
        &real,
        "kproxy_upstream_connect_errors",
        "Failed attempts to connect to the API server (TCP or TLS)",
        MetricType::Counter,
        |s| Some(s.connect_errors.load(Relaxed) as i64),
    )?;
    Ok(())
}

impl Metrics {
    /// What is in flight now, credentials, and refusals.
    fn encode_activity(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        gauge(
            enc,
            "kproxy_requests_in_flight",
            "Requests received whose response has not finished",
            self.in_flight.load(Relaxed),
        )?;
        gauge(
            enc,
            "kproxy_open_watches",
            "Watches and followed logs currently streaming",
            self.open_watches.load(Relaxed),
        )?;
        gauge(
            enc,
            "kproxy_open_upgrades",
            "Upgrade tunnels (exec, attach, port-forward) currently open",
            self.tunnels.len() as i64,
        )?;
        counter(
            enc,
            "kproxy_credential_refreshes",
            "Attempts to refresh the credential (re-read a token file, re-run a plugin)",
            self.credential_refreshes.load(Relaxed),
        )?;
        counter(
            enc,
            "kproxy_credential_refresh_failures",
            "Credential refreshes that failed (the last good credential, if any, stays in use)",
            self.credential_refresh_failures.load(Relaxed),
        )?;
        counter(
            enc,
            "kproxy_credential_errors",
            "Requests kproxy could not give a credential to (answered 401)",
            self.credential_errors.load(Relaxed),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "kproxy_refusals",
                "Requests kproxy refused itself, by rule: origin, cross_site, token (--auth-token-file), peer_uid (unix-socket connections, --allow-uid), read_only_* (--read-only)",
                None,
                MetricType::Counter,
            )?;
            for reason in RefusalReason::ALL {
                let labels = [("reason", reason.label())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&self.refusals(reason), None)?;
            }
        }
        Ok(())
    }

    /// Reloads, the last upstream answer, start time and version.
    fn encode_lifecycle(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        counter(
            enc,
            "kproxy_config_reloads",
            "Configuration reloads that took effect",
            self.reloads.load(Relaxed),
        )?;
        counter(
            enc,
            "kproxy_config_reload_failures",
            "Configuration reloads that failed; the previous configuration stayed in force",
            self.reload_failures.load(Relaxed),
        )?;
        gauge(
            enc,
            "kproxy_config_last_reload_timestamp_seconds",
            "Unix time of the last configuration reload that took effect (0: none since start)",
            self.last_reload_unix.load(Relaxed) as i64,
        )?;
        gauge(
            enc,
            "kproxy_upstream_last_answer_timestamp_seconds",
            "Unix time of the last answer from the API server, any status (0: none since start)",
            match self.last_upstream_answer_ms.load(Relaxed) {
                0 => 0.0,
                ms => unix_secs(self.started) + (ms - 1) as f64 / 1e3,
            },
        )?;
        gauge(
            enc,
            "kproxy_start_time_seconds",
            "Unix time at which kproxy started",
            unix_secs(self.started),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "kproxy_build_info",
                "The kproxy version",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("version", env!("CARGO_PKG_VERSION"))];
            m.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        Ok(())
    }
}

fn itoa_buf() -> [u8; 3] {
    [b'0'; 3]
}

/// Formats a status code (100..=999) without allocating.
fn fmt_code(buf: &mut [u8; 3], code: usize) -> &str {
    buf[0] = b'0' + (code / 100) as u8;
    buf[1] = b'0' + (code / 10 % 10) as u8;
    buf[2] = b'0' + (code % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("000")
}

/// Process metrics read from `/proc/self` at scrape time (Linux; absent elsewhere), with the names the
/// Go and Python clients use so existing dashboards work.
mod process {
    use super::*;

    pub(super) fn encode(enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        if let Some(rss) = resident_bytes() {
            gauge(
                enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss as i64,
            )?;
        }
        if let Some(cpu) = cpu_seconds() {
            let mut m = enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            m.encode_counter::<NoLabelSet, _, f64>(&cpu, None)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                enc,
                "process_open_fds",
                "Number of open file descriptors",
                fds.count() as i64,
            )?;
        }
        Ok(())
    }

    fn resident_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }

    /// utime + stime from `/proc/self/stat`, in clock ticks of 1/100 s (the kernel's USER_HZ on every
    /// Linux architecture kproxy builds for).
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may contain spaces; fields are counted after its closing parenthesis.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split_whitespace();
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some((utime + stime) as f64 / 100.0)
    }
}

// ---------------------------------------------------------------------------------------------------
// Upstream connection counting

/// Wraps an upstream connector to count the connections it opens and holds open.
#[derive(Debug, Clone)]
pub struct CountConnections<C> {
    inner: C,
    stats: Arc<UpstreamStats>,
}

impl<C> CountConnections<C> {
    /// Counts `inner`'s connections into `stats`.
    pub fn new(inner: C, stats: Arc<UpstreamStats>) -> Self {
        Self { inner, stats }
    }
}

use crate::base::error::BoxError;

impl<C> tower::Service<Uri> for CountConnections<C>
where
    C: tower::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = Counted<C::Response>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let stats = self.stats.clone();
        // One allocation per new connection (connections are pooled, so this is rare).
        Box::pin(async move {
            match connecting.await {
                Ok(io) => {
                    stats.connections_opened.fetch_add(1, Relaxed);
                    stats.connections_open.fetch_add(1, Relaxed);
                    Ok(Counted { inner: io, stats })
                }
                Err(e) => {
                    stats.connect_errors.fetch_add(1, Relaxed);
                    Err(e.into())
                }
            }
        })
    }
}

/// A connection counted as open until dropped.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    stats: Arc<UpstreamStats>,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.stats.connections_open.fetch_sub(1, Relaxed);
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_codes_render_with_bounded_labels() {
        let m = Arc::new(Metrics::new(TaskTracker::new()));
        let up = m.upstream("", "https://10.0.0.1:443");
        assert!(Arc::ptr_eq(&up, &m.upstream("", "https://10.0.0.1:443")));
        up.record(
            MethodIndex::of(&Method::GET),
            200,
            Some(Duration::from_millis(3)),
            0,
            10,
        );
        up.record(
            MethodIndex::of(&Method::from_bytes(b"PURGE").unwrap()),
            404,
            None,
            5,
            0,
        );
        m.local()
            .record(MethodIndex::of(&Method::POST), 403, None, 0, 0);
        let text = m.render();
        assert!(
            text.contains(
                r#"kproxy_requests_total{method="GET",code="200",upstream="https://10.0.0.1:443"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"kproxy_requests_total{method="OTHER",code="404",upstream="https://10.0.0.1:443"} 1"#
        ));
        assert!(
            text.contains(r#"kproxy_requests_total{method="POST",code="403",upstream="none"} 1"#)
        );
        assert!(text.contains(
            r#"kproxy_request_duration_seconds_bucket{le="0.005",method="GET",upstream="https://10.0.0.1:443"} 1"#
        ) || text.contains(
            r#"kproxy_request_duration_seconds_bucket{method="GET",upstream="https://10.0.0.1:443",le="0.005"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"kproxy_request_duration_seconds_count{method="GET",upstream="https://10.0.0.1:443"} 1"#
        ));
        assert!(text
            .contains(r#"kproxy_response_body_bytes_total{upstream="https://10.0.0.1:443"} 10"#));
        assert!(text.contains("# TYPE kproxy_open_watches gauge"));
    }

    #[test]
    fn requests_under_a_cluster_prefix_carry_its_key_and_those_at_the_root_do_not() {
        let m = Arc::new(Metrics::new(TaskTracker::new()));
        let url = "https://10.0.0.1:443";
        let root = m.upstream("", url);
        let prod = m.upstream("prod", url);
        assert!(
            !Arc::ptr_eq(&root, &prod),
            "one series per route, not per URL"
        );
        assert!(Arc::ptr_eq(&prod, &m.upstream("prod", url)));
        root.record(MethodIndex::of(&Method::GET), 200, None, 0, 1);
        prod.record(MethodIndex::of(&Method::GET), 200, None, 0, 2);
        m.local_for("prod")
            .record(MethodIndex::of(&Method::GET), 403, None, 0, 0);
        assert!(Arc::ptr_eq(&m.local_for(""), m.local()));
        assert!(Arc::ptr_eq(&prod.own_answers(), &m.local_for("prod")));
        assert!(Arc::ptr_eq(&root.own_answers(), m.local()));
        let text = m.render();
        for series in [
            r#"kproxy_requests_total{method="GET",code="200",upstream="https://10.0.0.1:443"} 1"#,
            r#"kproxy_requests_total{method="GET",code="200",cluster="prod",upstream="https://10.0.0.1:443"} 1"#,
            r#"kproxy_requests_total{method="GET",code="403",cluster="prod",upstream="none"} 1"#,
            r#"kproxy_response_body_bytes_total{cluster="prod",upstream="https://10.0.0.1:443"} 2"#,
            r#"kproxy_upstream_connections_opened_total{cluster="prod",upstream="https://10.0.0.1:443"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        assert!(
            !text.contains(
                r#"kproxy_upstream_connections_opened_total{cluster="prod",upstream="none"}"#
            ),
            "kproxy's own answers open no connection:\n{text}"
        );
    }

    #[test]
    fn codes_format_without_allocation() {
        let mut b = itoa_buf();
        assert_eq!(fmt_code(&mut b, 200), "200");
        assert_eq!(fmt_code(&mut b, 499), "499");
        assert_eq!(fmt_code(&mut b, 100), "100");
    }
}
